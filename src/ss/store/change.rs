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

/// Renames a synced temp file over `target`, creating its folders durably, and returns the
/// directory whose sync makes the rename durable (left to the caller, so a batch syncs each
/// directory once).
pub(super) fn place(fs: &dyn Fs, tmp: &Path, target: &Path) -> io::Result<PathBuf> {
    let parent = target.parent().unwrap_or_else(|| Path::new("."));
    fs.create_dirs_durable(parent)?;
    fs.rename(tmp, target)?;
    Ok(parent.to_path_buf())
}

/// [`place`] for a change made durable by the journal, whose temp file is NOT synced: the two
/// names are exchanged ([`Fs::exchange`]) and the old file's name, now in `tmp/`, removed (a
/// replaced content is kept by its history link; a replaced record goes). A rename over an
/// existing file would do both in one call, but on ext4 it also starts writing the new
/// file's data at once (the replace-by-rename heuristic, `auto_da_alloc`): a block write and
/// about 100 µs of CPU per change that the checkpoint would make anyway, and often for
/// content replaced again before it runs. A new `target`, or a file system that cannot
/// exchange, takes [`place`]; a name left in `tmp/` is removed at the next open.
pub(super) fn place_unsynced(fs: &dyn Fs, tmp: &Path, target: &Path) -> io::Result<PathBuf> {
    match fs.exchange(tmp, target) {
        // `target` existed, so its folders do.
        Ok(()) => {
            let _ = fs.remove_file(tmp);
            Ok(target
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .to_path_buf())
        }
        // No file to exchange with (ENOENT), or no exchange here (EINVAL, ENOSYS).
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            place(fs, tmp, target)
        }
        Err(e) => Err(e),
    }
}

/// What a content change puts in place of the current content.
#[derive(Clone, Copy)]
pub(super) enum Change<'a> {
    /// New bytes; the current content becomes a history entry.
    New(Source<'a>),
    /// The history entry of this id (undo), which is removed once the change is durable.
    Pop(&'a str),
}

/// Drops the oldest history ids past [`UNDO_DEPTH`] from `undo` and returns them (their
/// entries are removed once the change is made).
fn trim_history(undo: &mut Vec<String>) -> Vec<String> {
    let over = undo.len().saturating_sub(UNDO_DEPTH);
    undo.drain(..over).collect()
}

/// How a journaled change puts its record in place once its entry is durable (see
/// [`Store::prepare_record`]).
pub(super) enum RecordPut {
    /// Staged in this temp file, put in place by exchange or rename.
    Staged(PathBuf),
    /// These bytes written over the record's file, opened before the entry, which has room.
    InPlace(File, Vec<u8>),
}

impl RecordPut {
    /// The temp files to remove should the change fail: `content_tmp` and a staged record.
    pub(super) fn staged(&self, content_tmp: PathBuf) -> Vec<PathBuf> {
        match self {
            RecordPut::Staged(tmp) => vec![content_tmp, tmp.clone()],
            RecordPut::InPlace(..) => vec![content_tmp],
        }
    }
}

/// When [`Store::write_content_over`] reports a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// Its journal entry is written, not yet durable: the change is made unless the server
    /// loses power (or its flush fails) before the entry's `fdatasync` returns.
    Written,
    /// Durable, and in place.
    Durable,
}

impl Store {
    /// The record of a content change of a file whose record was `old`: the next version, the
    /// new content's `facts`, the owner kept, and `undo` as its history.
    fn changed_meta(&self, old: &Meta, facts: &ContentFacts, undo: Vec<String>) -> Meta {
        Meta {
            version: self.next_version(Some(old)),
            checksum: facts.checksum,
            size: facts.size,
            mtime_ns: facts.mtime_ns,
            words: facts.words,
            chars: facts.chars,
            modified_ms: crate::auth::now_ms(),
            owner: old.owner.clone(),
            undo,
        }
    }

    /// Replaces the content of `file` (whose bookkeeping is `old`) with `bytes` as a new
    /// version, saving the old content as an undo step. Caller holds the lock.
    pub fn write_content(&self, file: &str, old: Meta, bytes: &[u8]) -> Result<Meta, StoreError> {
        self.write_content_over(file, old, None, bytes, &mut |_, _| {})
    }

    /// [`Store::write_content`] for a caller that has read the current content (`current`,
    /// under the same hold of the lock), which a journaled change then need not read again,
    /// and that reports the change as early as it may.
    ///
    /// `report` is called with the new record exactly once when the change will be made:
    ///
    /// * [`Made::Written`]: a journaled change calls it once its entry is WRITTEN to the log
    ///   and before the entry's `fdatasync`, so the caller's report (and the name server's
    ///   commit of it) overlaps the flush. The change is not durable yet: a power cut before
    ///   the flush returns loses it, so the report must say so (the name server keeps such a
    ///   change unconfirmed and rolls it back if the server comes back without it, see
    ///   `nm::core::records::Unconfirmed`). A flush that fails after this call fails the
    ///   journal ([`Journal::unsynced`]): the server stops, and its restart finds the change
    ///   made or not, which its registration settles. The change returns Ok only once the
    ///   entry is durable and the renames are made.
    /// * [`Made::Durable`]: the direct path (a change too large for the journal, or the
    ///   journal closed) calls it once the change is durable and in place.
    ///
    /// Readers and copies take the file's lock, which the caller holds until this returns, so
    /// none sees the file before the change is durable and in place. A change whose renames
    /// fail after its entry is durable fails the journal too: the server stops and its
    /// restart puts the change in place (`Journal::unplaced`). `report` is never called for a
    /// change that fails before its entry is written.
    pub fn write_content_over(
        &self,
        file: &str,
        old: Meta,
        current: Option<&[u8]>,
        bytes: &[u8],
        report: &mut dyn FnMut(&Meta, Made),
    ) -> Result<Meta, StoreError> {
        if old.size <= JOURNAL_MAX_CONTENT && bytes.len() as u64 <= JOURNAL_MAX_CONTENT {
            if let Some(done) = self.write_journaled(file, &old, current, bytes, report) {
                return done;
            }
        }
        let meta = self.write_with(file, old, Change::New(Source::Bytes(bytes)))?;
        report(&meta, Made::Durable);
        Ok(meta)
    }

    /// A small content change through the journal (see `journal`): the new content and record
    /// staged, one entry written, reported ([`Made::Written`]) and made durable, then the old
    /// content linked into `undo/` and the staged files renamed into place, none of it
    /// synced. None when the journal is closed or the content on disk is not the one `old`
    /// describes: the caller takes the direct path. Caller holds the lock.
    fn write_journaled(
        &self,
        file: &str,
        old: &Meta,
        current: Option<&[u8]>,
        bytes: &[u8],
        report: &mut dyn FnMut(&Meta, Made),
    ) -> Option<Result<Meta, StoreError>> {
        let j = self.journal.as_ref()?;
        let gate = j.enter();
        let target = self.content_path(file);
        let read;
        let old_bytes: &[u8] = match current {
            Some(b) => b,
            None => {
                read = self.fs.read(&target).ok()?;
                &read
            }
        };
        if old_bytes.len() as u64 != old.size {
            return None;
        }
        let blob = blob_id(file, old.version, old.checksum);
        let mut undo = old.undo.clone();
        undo.push(blob.clone());
        let dropped = trim_history(&mut undo);
        let (content_tmp, cf) = match self.stage(file, &mut |f| f.write_all(bytes)) {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let staged = (|| {
            let md = cf.metadata().map_err(|e| self.io(file, e))?;
            let mut counter = ContentCounter::new();
            counter.update(bytes);
            let meta = self.changed_meta(old, &counter.finish(mtime_ns(&md)), undo);
            let record = self.prepare_record(file, &meta, true)?;
            Ok::<_, StoreError>((meta, record))
        })();
        drop(cf);
        let (meta, record) = match staged {
            Ok(x) => x,
            Err(e) => {
                self.unstage(&[content_tmp], None);
                return Some(Err(e));
            }
        };
        let head = journal::Head {
            file: file.to_string(),
            meta: meta.clone(),
            blob: Some(blob.clone()),
            new_len: bytes.len() as u64,
            old_len: old_bytes.len() as u64,
        };
        let paths = [target.clone(), self.meta_path(file), self.undo.join(&blob)];
        let written = journal::encode(&head, bytes, old_bytes)
            .and_then(|frame| j.write(&gate, file, &frame, &paths));
        let upto = match written {
            Ok(Some(upto)) => upto,
            Ok(None) => {
                self.unstage(&record.staged(content_tmp), None);
                return None;
            }
            Err(e) => {
                self.unstage(&record.staged(content_tmp), None);
                return Some(Err(self.io(file, e)));
            }
        };
        report(&meta, Made::Written);
        if let Err(e) = j.wait(&*self.fs, upto) {
            self.unstage(&record.staged(content_tmp), None);
            return Some(Err(j.unsynced(file, self.io(file, e))));
        }
        let applied = {
            let _a = journal::Applying::begin();
            let r = self
                .link_history(file, old)
                .and_then(|_| {
                    place_unsynced(&*self.fs, &content_tmp, &target).map_err(|e| self.io(file, e))
                })
                .and_then(|_| self.put_record(file, &record));
            if r.is_ok() {
                for b in &dropped {
                    let _ = self.fs.remove_file(&self.undo.join(b));
                }
            }
            r
        };
        drop(gate);
        if let Err(e) = applied {
            self.unstage(&record.staged(content_tmp), None);
            return Some(Err(j.unplaced(file, e)));
        }
        self.checkpoint_if_full();
        Some(Ok(meta))
    }

    /// Saves the current content of `file` (at `old.version`) as a history entry by hard
    /// link: the old inode survives the rename that follows, so nothing is copied. The link
    /// is made durable by the caller's batch (`undo/` is one of its directories).
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
        Ok(blob)
    }

    /// A fresh temp file in `tmp/` holding what `write` writes, not synced (a batch syncs
    /// it); removed again if writing fails.
    pub(super) fn stage(
        &self,
        file: &str,
        write: &mut dyn FnMut(&mut File) -> io::Result<()>,
    ) -> Result<(PathBuf, File), StoreError> {
        let tmp = durable::temp_path(&self.tmp);
        let mut created = false;
        let res = (|| {
            let mut f = self.fs.create_new(&tmp)?;
            created = true;
            write(&mut f)?;
            f.flush()?;
            Ok(f)
        })();
        match res {
            Ok(f) => Ok((tmp, f)),
            Err(e) => {
                if created {
                    let _ = self.fs.remove_file(&tmp);
                }
                Err(self.io(file, e))
            }
        }
    }

    /// [`Store::stage`] for a record.
    pub(super) fn stage_meta(
        &self,
        file: &str,
        meta: &Meta,
    ) -> Result<(PathBuf, File), StoreError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| self.io(file, io::Error::other(e)))?;
        self.stage(file, &mut |f| f.write_all(&bytes))
    }

    /// Prepares, before a journaled change's entry is appended, how its record `meta` will be
    /// put in place once the entry is durable (the entry redoes it after a crash). When the
    /// file has a record (`held`) that opens for writing and already holds room for the new
    /// bytes, they will be written over it in place: a commit or an install then makes and
    /// frees no inode for its record (on ext4 without a journal, making an inode scans past
    /// every inode of its group freed in the last 30 s, which was most of a busy server's
    /// CPU), and what runs after the entry needs no new handle and no new space, so a full
    /// disk or a full file table fails the change before its entry, never after. Otherwise
    /// the record is staged in a temp file now, as before. Readers read a record under the
    /// file's lock, which the caller holds throughout. Caller holds the lock.
    pub(super) fn prepare_record(
        &self,
        file: &str,
        meta: &Meta,
        held: bool,
    ) -> Result<RecordPut, StoreError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| self.io(file, io::Error::other(e)))?;
        let over = held
            .then(|| self.fs.open_write(&self.meta_path(file)).ok())
            .flatten()
            .filter(|f| {
                f.metadata()
                    .is_ok_and(|md| md.is_file() && md.blocks() * 512 >= bytes.len() as u64)
            });
        match over {
            Some(f) => Ok(RecordPut::InPlace(f, bytes)),
            None => Ok(RecordPut::Staged(
                self.stage(file, &mut |f| f.write_all(&bytes))?.0,
            )),
        }
    }

    /// Puts a record prepared by [`Store::prepare_record`] in place, once the change's entry
    /// is durable, without syncing. Caller holds the lock and applies a journaled change.
    pub(super) fn put_record(&self, file: &str, put: &RecordPut) -> Result<(), StoreError> {
        let res = match put {
            RecordPut::Staged(tmp) => {
                place_unsynced(&*self.fs, tmp, &self.meta_path(file)).map(drop)
            }
            // Never cut to zero: ext4 would then flush the file at close (`auto_da_alloc`).
            RecordPut::InPlace(f, bytes) => std::os::unix::fs::FileExt::write_all_at(f, bytes, 0)
                .and_then(|()| f.set_len(bytes.len() as u64)),
        };
        res.map_err(|e| self.io(file, e))
    }

    /// The common path of commits, uploads, reverts and undo: new content saves the old
    /// content as a history entry first; a pop (undo) takes the new content from a history
    /// entry and removes it afterwards. The content and the record are staged in `tmp/` and
    /// made durable by one job run alone (see `batch`): content renamed first, record second.
    pub(super) fn write_with(
        &self,
        file: &str,
        old: Meta,
        change: Change<'_>,
    ) -> Result<Meta, StoreError> {
        self.settle(file)?;
        let target = self.content_path(file);
        let mut undo = old.undo.clone();
        // What this call staged, removed should the change fail; the history entry it linked.
        let mut staged: Vec<PathBuf> = Vec::new();
        let mut new_blob = None;
        let mut sync = Vec::new();
        let mut dirs = Vec::new();
        let prepared = (|| {
            let (content_tmp, facts) = match change {
                Change::New(source) => {
                    let blob = self.link_history(file, &old)?;
                    new_blob = Some(blob.clone());
                    undo.push(blob);
                    dirs.push(self.undo.clone());
                    match source {
                        Source::Bytes(bytes) => {
                            let (p, f) = self.stage(file, &mut |f| f.write_all(bytes))?;
                            staged.push(p.clone());
                            let md = f.metadata().map_err(|e| self.io(file, e))?;
                            sync.push(f);
                            let mut counter = ContentCounter::new();
                            counter.update(bytes);
                            (p, counter.finish(mtime_ns(&md)))
                        }
                        // Facts counted while the bytes arrived are not counted again.
                        Source::Temp(tmp, known) => {
                            let md = self.fs.metadata(tmp).map_err(|e| self.io(file, e))?;
                            let facts = ContentFacts {
                                mtime_ns: mtime_ns(&md),
                                ..known.clone()
                            };
                            (tmp.to_path_buf(), facts)
                        }
                    }
                }
                Change::Pop(blob) => {
                    let src = self.undo.join(blob);
                    let mut counter = ContentCounter::new();
                    let (p, f) = self.stage(file, &mut |out| {
                        let mut inp = self.fs.open(&src)?;
                        let hint = inp.metadata()?.len() + 1;
                        copy_counting(&mut inp, out, &mut counter, hint)
                    })?;
                    staged.push(p.clone());
                    let md = f.metadata().map_err(|e| self.io(file, e))?;
                    sync.push(f);
                    undo.retain(|b| b != blob);
                    (p, std::mem::take(&mut counter).finish(mtime_ns(&md)))
                }
            };
            let dropped = trim_history(&mut undo);
            let meta = self.changed_meta(&old, &facts, std::mem::take(&mut undo));
            let (rp, rf) = self.stage_meta(file, &meta)?;
            staged.push(rp.clone());
            sync.push(rf);
            Ok::<_, StoreError>((meta, dropped, content_tmp, rp))
        })();
        let (meta, dropped, content_tmp, record_tmp) = match prepared {
            Ok(x) => x,
            Err(e) => {
                self.unstage(&staged, new_blob.as_deref());
                return Err(e);
            }
        };
        let job = batch::Job {
            sync,
            dirs,
            renames: vec![(content_tmp, target), (record_tmp, self.meta_path(file))],
        };
        let done = batch::commit_alone(&*self.fs, job);
        if let Some(e) = done.error {
            if done.placed == 0 {
                self.unstage(&staged, new_blob.as_deref());
                return Err(self.io(file, e));
            }
            // The content already changed: the next access or scan adopts it, so the error
            // must not claim the file is unchanged.
            self.unstage(&staged, None);
            return Err(content_saved(file, self.io(file, e)));
        }
        let popped = match change {
            Change::Pop(blob) => Some(blob.to_string()),
            Change::New(_) => None,
        };
        for b in dropped.iter().chain(popped.iter()) {
            let _ = self.fs.remove_file(&self.undo.join(b));
        }
        Ok(meta)
    }

    /// Removes the temp files a failed change staged (those renamed away are gone already)
    /// and the history entry it linked, if any.
    pub(super) fn unstage(&self, staged: &[PathBuf], blob: Option<&str>) {
        for p in staged {
            let _ = self.fs.remove_file(p);
        }
        if let Some(b) = blob {
            let _ = self.fs.remove_file(&self.undo.join(b));
        }
    }

    /// CREATE with the first version `(epoch, 1)` (see [`Store::create_at`]).
    pub fn create(&self, file: &str, owner: &str, epoch: u64) -> Result<Meta, StoreError> {
        self.create_at(file, owner, Version { epoch, counter: 1 })
    }

    /// CREATE with a given first version (the name server may start a file above every
    /// version an earlier file of the same name had in that epoch). The record and the empty
    /// content are staged and made durable by one batch (see `batch`), the record renamed
    /// into place first: a record without content is an unfinished create, which the scan
    /// removes.
    ///
    /// The same create made again is answered as the first was: a file that exists already
    /// and is exactly what a create of it by `owner` at `first` made, untouched since
    /// (`created_already`), is returned as created, so a caller whose answer was
    /// lost may repeat the request. Anything else at the name is [`StoreError::Exists`].
    pub fn create_at(&self, file: &str, owner: &str, first: Version) -> Result<Meta, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Held from before the staging (see `journal`); None without a journal.
        let gate = self.journal.as_ref().map(|j| (j, j.enter()));
        let target = self.content_path(file);
        if self.fs.exists(&target) {
            return self
                .created_already(file, owner, first)
                .ok_or_else(|| StoreError::Exists(names::display(file)));
        }
        let (content_tmp, cf) = self.stage(file, &mut |_| Ok(()))?;
        let staged = (|| {
            // A rename keeps the mtime, so the record can carry it now.
            let md = cf.metadata().map_err(|e| self.io(file, e))?;
            let meta = Meta {
                version: first,
                checksum: crc32c::crc32c(b""),
                size: 0,
                mtime_ns: mtime_ns(&md),
                words: 0,
                chars: 0,
                modified_ms: crate::auth::now_ms(),
                owner: Some(owner.to_string()),
                undo: Vec::new(),
            };
            let (rp, rf) = self.stage_meta(file, &meta)?;
            Ok::<_, StoreError>((meta, rp, rf))
        })();
        let (meta, record_tmp, rf) = match staged {
            Ok(x) => x,
            Err(e) => {
                self.unstage(&[content_tmp], None);
                return Err(e);
            }
        };
        if let Some((j, gate)) = gate {
            // One journal entry, then both renames unsynced (see `journal`).
            let head = journal::Head {
                file: file.to_string(),
                meta: meta.clone(),
                blob: None,
                new_len: 0,
                old_len: 0,
            };
            let paths = [target.clone(), self.meta_path(file)];
            let appended = journal::encode(&head, b"", b"")
                .and_then(|frame| j.append(&*self.fs, &gate, file, &frame, &paths));
            match appended {
                Ok(journal::Appended::Durable) => {
                    let applied = {
                        let _a = journal::Applying::begin();
                        place(&*self.fs, &record_tmp, &self.meta_path(file))
                            .and_then(|_| place(&*self.fs, &content_tmp, &target))
                    };
                    drop(gate);
                    if let Err(e) = applied {
                        self.unstage(&[record_tmp, content_tmp], None);
                        return Err(j.unplaced(file, self.io(file, e)));
                    }
                    self.checkpoint_if_full();
                    return Ok(meta);
                }
                // Closed after a failed sync: the direct path below.
                Ok(journal::Appended::Closed) => drop(gate),
                Err(e) => {
                    self.unstage(&[record_tmp, content_tmp], None);
                    return Err(self.io(file, e));
                }
            }
        }
        if let Err(e) = self.settle(file) {
            self.unstage(&[record_tmp, content_tmp], None);
            return Err(e);
        }
        let job = batch::Job {
            // The empty content is synced too: its inode (and mtime) must be durable before
            // its name is.
            sync: vec![rf, cf],
            dirs: Vec::new(),
            renames: vec![
                (record_tmp.clone(), self.meta_path(file)),
                (content_tmp.clone(), target.clone()),
            ],
        };
        let done = self.batch.commit(&*self.fs, job);
        if let Some(e) = done.error {
            self.unstage(&[record_tmp, content_tmp], None);
            if done.placed >= 2 {
                let _ = self.fs.remove(&target);
            }
            if done.placed >= 1 {
                let _ = self.fs.remove(&self.meta_path(file));
            }
            return Err(self.io(file, e));
        }
        Ok(meta)
    }

    /// The record of `file` when the file is exactly what a create by `owner` at version
    /// `first` made: that version and owner, empty, no history, its content untouched since
    /// (the size and mtime the record holds; a hand edit is not adopted here). A completed
    /// create was durable before its lock was released, so such a file needs nothing more.
    /// Caller holds the lock.
    fn created_already(&self, file: &str, owner: &str, first: Version) -> Option<Meta> {
        let md = self
            .fs
            .metadata(&self.content_path(file))
            .ok()
            .filter(|md| md.is_file())?;
        let m = self.read_meta(file)?;
        let untouched = md.len() == 0 && m.size == 0 && m.mtime_ns == mtime_ns(&md);
        let as_created = m.version == first
            && m.owner.as_deref() == Some(owner)
            && m.checksum == crc32c::crc32c(b"")
            && m.words == 0
            && m.chars == 0
            && m.undo.is_empty();
        (untouched && as_created).then_some(m)
    }

    /// DELETE: content, bookkeeping and undo blobs. Caller holds the lock.
    ///
    /// A removal made whose directory sync then fails leaves the file gone now and perhaps
    /// back after a power cut, and the same sync retried cannot be trusted: the store fails
    /// (as the journal does, [`Store::journal_failed`]), so the server stops and its next
    /// registration settles the name server's delete intent by what its disk then holds.
    pub fn delete(&self, file: &str) -> Result<(), StoreError> {
        self.settle(file)?;
        let meta = self.read_meta(file);
        let existed = self.remove_durably(file, &self.content_path(file))?;
        self.remove_durably(file, &self.meta_path(file))?;
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

    /// [`Fs::remove`] of `path` (of `file`): whether it existed. A failure that leaves the
    /// path gone came from the directory's sync, after the removal: see [`Store::delete`].
    fn remove_durably(&self, file: &str, path: &Path) -> Result<bool, StoreError> {
        self.fs.remove(path).map_err(|e| {
            let e = self.io(file, e);
            match &self.journal {
                Some(j) if !self.fs.exists(path) => j.removal_unsynced(file, e),
                _ => e,
            }
        })
    }

    /// UNDO: the newest undo blob becomes the content as a new version. Caller holds the lock.
    pub fn undo(&self, file: &str, epoch: u64) -> Result<Meta, StoreError> {
        self.epoch.fetch_max(epoch, Ordering::SeqCst);
        let (meta, _) = self.current(file)?;
        let Some(blob) = meta.undo.last().cloned() else {
            return Err(StoreError::NoUndo(names::display(file)));
        };
        self.write_with(file, meta, Change::Pop(&blob))
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
        self.settle(file)?;
        match self.current(file) {
            Ok((old, _)) => self.write_with(file, old, Change::New(Source::Temp(tmp, facts))),
            Err(StoreError::NotFound(_)) => {
                let target = self.content_path(file);
                let md = self.fs.metadata(tmp).map_err(|e| self.io(file, e))?;
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
                // Content first, then the record, in one job run alone (see `batch`); the uploaded
                // temp file was synced as it arrived.
                let (record_tmp, rf) = self.stage_meta(file, &meta)?;
                let job = batch::Job {
                    sync: vec![rf],
                    dirs: Vec::new(),
                    renames: vec![
                        (tmp.to_path_buf(), target),
                        (record_tmp.clone(), self.meta_path(file)),
                    ],
                };
                let done = batch::commit_alone(&*self.fs, job);
                match done.error {
                    None => Ok(meta),
                    Some(e) => {
                        self.unstage(&[record_tmp], None);
                        if done.placed == 0 {
                            Err(self.io(file, e))
                        } else {
                            Err(content_saved(file, self.io(file, e)))
                        }
                    }
                }
            }
            Err(e) => Err(e),
        }
    }
}
