//! The crash-safe change protocol (see the parent module): a content change (commit, upload,
//! undo), CREATE and DELETE, and the history entries (undo blobs) they keep.

use super::*;

/// The error of a copy whose content is in place but whose record is not: the next access or
/// scan adopts the content, so the error must not claim the file is unchanged.
pub(super) fn content_saved(file: &str, e: StoreError) -> StoreError {
    StoreError::Io {
        file: file.to_string(),
        source: io::Error::other(format!(
            "content saved but its bookkeeping was not ({e}); it is adopted on next access"
        )),
    }
}

/// Where a content change takes its new bytes from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// Bytes in memory (a commit's edited text).
    Bytes(&'a [u8]),
    /// A temp file in `tmp/` already written and synced (an upload or a transfer).
    Temp(&'a Path, &'a ContentFacts),
}

/// Renames a synced temp file over `target` and makes the rename durable.
pub(super) fn install_temp(fs: &dyn Fs, tmp: &Path, target: &Path) -> io::Result<()> {
    fs.sync_dir(&place(fs, tmp, target)?)
}

/// Renames a synced temp file over `target`, creating its folders durably, and returns the
/// directory whose sync makes the rename durable (left to the caller, so a batch syncs each
/// directory once).
pub(super) fn place(fs: &dyn Fs, tmp: &Path, target: &Path) -> io::Result<PathBuf> {
    let parent = target.parent().unwrap_or_else(|| Path::new("."));
    fs.create_dirs_durable(parent)?;
    fs.rename(tmp, target)?;
    Ok(parent.to_path_buf())
}

impl Store {
    /// Replaces the content of `file` (whose bookkeeping is `old`) with `bytes` as a new
    /// version, saving the old content as an undo step. Caller holds the lock.
    pub fn write_content(&self, file: &str, old: Meta, bytes: &[u8]) -> Result<Meta, StoreError> {
        self.write_with(file, old, Some(Source::Bytes(bytes)), None)
    }

    /// Saves the current content of `file` (at `old.version`) as a history entry by hard
    /// link: the old inode survives the rename that follows, so nothing is copied.
    pub(super) fn link_history(&self, file: &str, old: &Meta) -> Result<String, StoreError> {
        let blob = blob_id(file, old.version, old.checksum);
        let path = self.undo.join(&blob);
        match self.fs.hard_link(&self.content_path(file), &path) {
            Ok(()) => {}
            // A leftover of a change that failed after linking: the same version's content.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = self.fs.remove_file(&path);
                self.fs
                    .hard_link(&self.content_path(file), &path)
                    .map_err(|e| self.io(file, e))?;
            }
            Err(e) => return Err(self.io(file, e)),
        }
        self.fs.sync_dir(&self.undo).map_err(|e| self.io(file, e))?;
        Ok(blob)
    }

    /// The common path of commits, uploads and undo: a `source` of new content saves the old
    /// content as a history entry first; `pop`
    /// (undo) takes the new content from the newest blob and removes it afterwards.
    pub(super) fn write_with(
        &self,
        file: &str,
        old: Meta,
        source: Option<Source<'_>>,
        pop: Option<String>,
    ) -> Result<Meta, StoreError> {
        let target = self.content_path(file);
        let mut undo = old.undo.clone();
        let mut new_blob = None;
        if let Some(source) = source {
            let blob = self.link_history(file, &old)?;
            let res = match source {
                Source::Bytes(bytes) => self.fs.replace(&self.tmp, &target, bytes),
                Source::Temp(tmp, _) => install_temp(&*self.fs, tmp, &target),
            };
            if let Err(e) = res {
                let _ = self.fs.remove_file(&self.undo.join(&blob));
                return Err(self.io(file, e));
            }
            undo.push(blob.clone());
            new_blob = Some(blob);
        } else if let Some(blob) = &pop {
            let src = self.undo.join(blob);
            self.fs
                .replace_with(&self.tmp, &target, &mut |out| {
                    let mut inp = self.fs.open(&src)?;
                    io::copy(&mut inp, out).map(|_| ())
                })
                .map_err(|e| self.io(file, e))?;
            undo.retain(|b| b != blob);
        }
        let dropped: Vec<String> = if undo.len() > UNDO_DEPTH {
            undo.drain(..undo.len() - UNDO_DEPTH).collect()
        } else {
            Vec::new()
        };
        // Facts counted while the bytes arrived are not counted again, only the mtime.
        let known = match &source {
            Some(Source::Temp(_, facts)) => Some(*facts),
            _ => None,
        };
        let facts = match known {
            Some(f) => self
                .fs
                .metadata(&target)
                .map(|md| ContentFacts {
                    mtime_ns: mtime_ns(&md),
                    ..f.clone()
                })
                .map_err(|e| self.io(file, e)),
            None => self.facts(file),
        };
        let facts = match facts {
            Ok(f) => f,
            Err(e) => {
                if let Some(b) = new_blob {
                    let _ = self.fs.remove_file(&self.undo.join(b));
                }
                return Err(e);
            }
        };
        let meta = Meta {
            version: self.next_version(Some(&old)),
            checksum: facts.checksum,
            size: facts.size,
            mtime_ns: facts.mtime_ns,
            words: facts.words,
            chars: facts.chars,
            modified_ms: crate::auth::now_ms(),
            owner: old.owner,
            undo,
        };
        // Should this fail, the content already changed: the next access or scan adopts it,
        // so the error must not claim the file is unchanged.
        self.write_meta(file, &meta).map_err(|e| StoreError::Io {
            file: file.to_string(),
            source: io::Error::other(format!(
                "content saved but its bookkeeping was not ({e}); it is adopted on next access"
            )),
        })?;
        for b in dropped.iter().chain(pop.iter()) {
            let _ = self.fs.remove_file(&self.undo.join(b));
        }
        Ok(meta)
    }

    /// CREATE: bookkeeping first, then the empty content, both durable.
    pub fn create(&self, file: &str, owner: &str, epoch: u64) -> Result<Meta, StoreError> {
        self.create_at(file, owner, Version { epoch, counter: 1 })
    }

    /// CREATE with a first version other than `(epoch, 1)`: the name server starts a file
    /// above every version an earlier file of the same name had in that epoch.
    pub fn create_at(&self, file: &str, owner: &str, first: Version) -> Result<Meta, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.content_path(file);
        if self.fs.exists(&target) {
            return Err(StoreError::Exists(names::display(file)));
        }
        let mut meta = Meta {
            version: first,
            checksum: crc32c::crc32c(b""),
            size: 0,
            mtime_ns: 0,
            words: 0,
            chars: 0,
            modified_ms: crate::auth::now_ms(),
            owner: Some(owner.to_string()),
            undo: Vec::new(),
        };
        self.write_meta(file, &meta)?;
        self.fs
            .replace(&self.tmp, &target, b"")
            .map_err(|e| self.io(file, e))?;
        let md = self.fs.metadata(&target).map_err(|e| self.io(file, e))?;
        meta.mtime_ns = mtime_ns(&md);
        self.write_meta(file, &meta)?;
        Ok(meta)
    }

    /// DELETE: content, bookkeeping and undo blobs. Caller holds the lock.
    pub fn delete(&self, file: &str) -> Result<(), StoreError> {
        let meta = self.read_meta(file);
        let existed = self
            .fs
            .remove(&self.content_path(file))
            .map_err(|e| self.io(file, e))?;
        self.fs
            .remove(&self.meta_path(file))
            .map_err(|e| self.io(file, e))?;
        for b in meta.map(|m| m.undo).unwrap_or_default() {
            let _ = self.fs.remove_file(&self.undo.join(b));
        }
        // A later file of the same name starts clean: no history, no checkpoints.
        self.remove_checkpoints(file);
        if !existed {
            return Err(StoreError::NotFound(names::display(file)));
        }
        // Forget the file's mutex only when nobody but the map and this caller holds it, so
        // two callers never serialise on different mutexes for one name.
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(file).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(file);
        }
        Ok(())
    }

    /// UNDO: the newest undo blob becomes the content as a new version. Caller holds the lock.
    pub fn undo(&self, file: &str, epoch: u64) -> Result<Meta, StoreError> {
        self.epoch.fetch_max(epoch, Ordering::SeqCst);
        let (meta, _) = self.current(file)?;
        let Some(blob) = meta.undo.last().cloned() else {
            return Err(StoreError::NoUndo(names::display(file)));
        };
        self.write_with(file, meta, None, Some(blob))
    }

    /// Replaces `file`'s content with an uploaded temp file whose facts were counted as it
    /// arrived; the old content becomes a history entry. A file this server does not hold is
    /// created, owned by `owner`.
    pub fn upload(
        &self,
        file: &str,
        owner: &str,
        tmp: &Path,
        facts: &ContentFacts,
    ) -> Result<Meta, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.current(file) {
            Ok((old, _)) => self.write_with(file, old, Some(Source::Temp(tmp, facts)), None),
            Err(StoreError::NotFound(_)) => {
                let target = self.content_path(file);
                install_temp(&*self.fs, tmp, &target).map_err(|e| self.io(file, e))?;
                let md = self.fs.metadata(&target).map_err(|e| self.io(file, e))?;
                let meta = Meta {
                    version: self.next_version(None),
                    checksum: facts.checksum,
                    size: facts.size,
                    mtime_ns: mtime_ns(&md),
                    words: facts.words,
                    chars: facts.chars,
                    modified_ms: crate::auth::now_ms(),
                    owner: Some(owner.to_string()),
                    undo: Vec::new(),
                };
                self.write_meta(file, &meta)?;
                Ok(meta)
            }
            Err(e) => Err(e),
        }
    }
}
