//! Checkpoints on a storage server (a child module of `store`, whose layout section says
//! where they live): `DIR/checkpoints/<file hash>/` holds `index.json` and one file per tag.
//!
//! A checkpoint is a hard link to the content as it was: content is only ever replaced by a
//! rename, never rewritten in place, so the linked inode keeps the checkpoint's bytes and
//! nothing is copied. Making one (1) links the content under the tag, fsyncs the directory,
//! (2) replaces `index.json` durably, (3) writes the file's record with a new version (same
//! content), so the name server records a change and replication carries the checkpoint to
//! the backup. A crash after (1) leaves a tag file no index names; the next checkpoint of
//! that tag replaces it. Checkpoints of names that no longer exist are removed by the scan.
//!
//! A file holds at most 256 checkpoints (LIMIT beyond). REVERT copies the checkpoint's bytes
//! into a temp file, verifies its checksum, and installs them like any content change: a new
//! version whose old content is an undo entry, so UNDO takes it back (access rights are the
//! name server's and are not touched).
//!
//! DELETE removes the file's undo entries and checkpoint directory on each copy, so a later
//! file of the same name starts clean. A member away during that may still hold the old
//! file's checkpoints; PEEK_FILE therefore names each held checkpoint as `<tag>:<checksum>`,
//! a transfer skips only one held with the same tag and bytes, and a target refuses a list
//! naming a tag it holds with other bytes unless they are sent.

use super::*;

/// Most checkpoints one file may hold (SPEC asks for at least 64).
pub const MAX_CHECKPOINTS: usize = 256;
/// The index file in a checkpoint directory.
const INDEX: &str = "index.json";

/// A file's checkpoints, and those of them opened to be sent, by tag.
type OpenCheckpoints = (Vec<CheckpointInfo>, Vec<(String, File)>);

/// `index.json`: the checkpoints of one file, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    checkpoints: Vec<CheckpointInfo>,
}

impl Store {
    pub(super) fn ckpt_dir(&self, file: &str) -> PathBuf {
        self.ckpt.join(file_hash(file))
    }

    fn read_index(&self, file: &str) -> Vec<CheckpointInfo> {
        self.fs
            .read(&self.ckpt_dir(file).join(INDEX))
            .ok()
            .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
            .map(|i| i.checkpoints)
            .unwrap_or_default()
    }

    fn write_index(&self, file: &str, checkpoints: &[CheckpointInfo]) -> Result<(), StoreError> {
        let index = Index {
            checkpoints: checkpoints.to_vec(),
        };
        let bytes = serde_json::to_vec(&index).map_err(|e| self.io(file, io::Error::other(e)))?;
        self.fs
            .replace(&self.tmp, &self.ckpt_dir(file).join(INDEX), &bytes)
            .map_err(|e| self.io(file, e))
    }

    /// LISTCHECKPOINTS: the file's checkpoints, oldest first, with its record (adopting a
    /// hand edit first, like every access).
    pub fn checkpoints(&self, file: &str) -> Result<(Vec<CheckpointInfo>, Meta, bool), StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (meta, adopted) = self.current(file)?;
        Ok((self.read_index(file), meta, adopted))
    }

    /// CHECKPOINT: saves the current content under `tag`; the record gets a new version.
    pub fn checkpoint(
        &self,
        file: &str,
        tag: &str,
        creator: &str,
        epoch: u64,
    ) -> Result<Meta, StoreError> {
        self.epoch.fetch_max(epoch, Ordering::SeqCst);
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        // The checkpoint links the content as it is in place: it must be durable first.
        self.settle(file)?;
        let (meta, _) = self.current(file)?;
        let mut list = self.read_index(file);
        if list.iter().any(|c| c.tag == tag) {
            return Err(StoreError::CheckpointExists {
                file: names::display(file),
                tag: tag.to_string(),
            });
        }
        if list.len() >= MAX_CHECKPOINTS {
            return Err(StoreError::TooManyCheckpoints(names::display(file)));
        }
        let dir = self.ckpt_dir(file);
        self.fs
            .create_dirs_durable(&dir)
            .map_err(|e| self.io(file, e))?;
        let path = dir.join(tag);
        match self.fs.hard_link(&self.content_path(file), &path) {
            Ok(()) => {}
            // Left by a checkpoint that crashed before its index was written.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.fs.remove_file(&path).map_err(|e| self.io(file, e))?;
                self.fs
                    .hard_link(&self.content_path(file), &path)
                    .map_err(|e| self.io(file, e))?;
            }
            Err(e) => return Err(self.io(file, e)),
        }
        self.fs.sync_dir(&dir).map_err(|e| self.io(file, e))?;
        list.push(CheckpointInfo {
            tag: tag.to_string(),
            creator: creator.to_string(),
            created_ms: crate::auth::now_ms(),
            size: meta.size,
            checksum: meta.checksum,
        });
        self.write_index(file, &list)?;
        let meta = Meta {
            version: self.next_version(Some(&meta)),
            ..meta
        };
        self.write_meta(file, &meta)?;
        Ok(meta)
    }

    /// VIEWCHECKPOINT: the checkpoint's bytes opened under the file lock, its description,
    /// and the file's record.
    pub fn open_checkpoint(
        &self,
        file: &str,
        tag: &str,
    ) -> Result<(File, CheckpointInfo, Meta, bool), StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (meta, adopted) = self.current(file)?;
        let info = self.find_checkpoint(file, tag)?;
        let f = self
            .fs
            .open(&self.ckpt_dir(file).join(tag))
            .map_err(|e| self.io(file, e))?;
        Ok((f, info, meta, adopted))
    }

    fn find_checkpoint(&self, file: &str, tag: &str) -> Result<CheckpointInfo, StoreError> {
        self.read_index(file)
            .into_iter()
            .find(|c| c.tag == tag)
            .ok_or_else(|| StoreError::NoCheckpoint {
                file: names::display(file),
                tag: tag.to_string(),
            })
    }

    /// REVERT: the checkpoint's bytes become the content as a new version; the old content
    /// becomes a history entry, so UNDO takes the revert back. Caller holds the lock.
    pub fn revert(&self, file: &str, tag: &str, epoch: u64) -> Result<Meta, StoreError> {
        self.epoch.fetch_max(epoch, Ordering::SeqCst);
        let (meta, _) = self.current(file)?;
        let info = self.find_checkpoint(file, tag)?;
        let (tmp, mut out) = self.temp_file(file)?;
        let mut counter = ContentCounter::new();
        let copied = self
            .fs
            .open(&self.ckpt_dir(file).join(tag))
            .and_then(|mut from| {
                copy_counting(&mut from, &mut out, &mut counter, info.size)?;
                self.fs.sync_file(&out)
            });
        copied.map_err(|e| self.io(file, e))?;
        drop(out);
        let facts = counter.finish(0);
        if facts.size != info.size || facts.checksum != info.checksum {
            return Err(self.io(
                file,
                io::Error::other(format!("checkpoint '{tag}' is corrupt on {}", self.name)),
            ));
        }
        self.write_with(file, meta, Change::New(Source::Temp(tmp.path(), &facts)))
    }

    /// Removes every checkpoint of `file` (DELETE, a file gone by hand).
    pub(super) fn remove_checkpoints(&self, file: &str) {
        let dir = self.ckpt_dir(file);
        if self.fs.exists(&dir) && self.fs.remove_dir_all(&dir).is_ok() {
            let _ = self.fs.sync_dir(&self.ckpt);
        }
    }

    /// The scan's clean-up: checkpoint directories of no file present.
    pub(super) fn remove_stray_checkpoints(&self, hashes: &HashSet<String>) {
        let Ok(rd) = self.fs.read_dir(&self.ckpt) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !hashes.contains(&name) {
                let _ = self.fs.remove_dir_all(&e.path());
            }
        }
    }

    /// The checkpoints this copy holds (PEEK_FILE), each as `<tag>:<checksum hex>`: a file
    /// deleted and made again may reuse a tag for other bytes, so a transfer skips only a
    /// checkpoint held with the same tag *and* checksum (tags have no `:`).
    pub fn held_checkpoints(&self, file: &str) -> Vec<String> {
        let dir = self.ckpt_dir(file);
        self.read_index(file)
            .into_iter()
            .filter(|c| self.fs.is_file(&dir.join(&c.tag)))
            .map(|c| held_entry(&c))
            .collect()
    }

    /// The file's checkpoints, and those not in `have` opened for a transfer. Caller holds
    /// the lock.
    pub(super) fn open_checkpoints(
        &self,
        file: &str,
        have: &[String],
    ) -> Result<OpenCheckpoints, StoreError> {
        let dir = self.ckpt_dir(file);
        let mut list = Vec::new();
        let mut open = Vec::new();
        // A checkpoint whose bytes are gone (removed by hand) is left out rather than
        // failing every transfer of the file: the copy gets every checkpoint that exists.
        for c in self.read_index(file) {
            if have.contains(&held_entry(&c)) {
                list.push(c);
                continue;
            }
            match self.fs.open(&dir.join(&c.tag)) {
                Ok(f) => {
                    open.push((c.tag.clone(), f));
                    list.push(c);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(file, e)),
            }
        }
        Ok((list, open))
    }

    /// Before a copy is installed: every checkpoint is either received or already here.
    pub(super) fn check_checkpoints_complete(
        &self,
        file: &str,
        list: &[CheckpointInfo],
        received: &[(String, PathBuf)],
    ) -> Result<(), StoreError> {
        let dir = self.ckpt_dir(file);
        let here = self.read_index(file);
        for c in list {
            let sent = received.iter().any(|(t, _)| *t == c.tag);
            let held = here
                .iter()
                .any(|h| h.tag == c.tag && h.checksum == c.checksum)
                && self.fs.is_file(&dir.join(&c.tag));
            if !sent && !held {
                return Err(StoreError::Incomplete(names::display(file)));
            }
        }
        Ok(())
    }

    /// Installs a copy's checkpoints: the received files under their tags, then the source's
    /// index; tags the source does not have are removed. Caller holds the lock and checked
    /// completeness.
    pub(super) fn install_checkpoints(
        &self,
        file: &str,
        list: &[CheckpointInfo],
        received: &[(String, PathBuf)],
    ) -> Result<(), StoreError> {
        let dir = self.ckpt_dir(file);
        if list.is_empty() {
            self.remove_checkpoints(file);
            return Ok(());
        }
        self.fs
            .create_dirs_durable(&dir)
            .map_err(|e| self.io(file, e))?;
        for (tag, tmp) in received {
            self.fs
                .rename(tmp, &dir.join(tag))
                .map_err(|e| self.io(file, e))?;
        }
        if !received.is_empty() {
            self.fs.sync_dir(&dir).map_err(|e| self.io(file, e))?;
        }
        self.write_index(file, list)?;
        if let Ok(rd) = self.fs.read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name != INDEX && !list.iter().any(|c| c.tag == name) {
                    let _ = self.fs.remove_file(&e.path());
                }
            }
        }
        Ok(())
    }

    /// MOVE's part: hard-links `from`'s checkpoints into `to`'s directory (the old one is
    /// removed once the content has moved). Caller holds both locks.
    pub(super) fn link_checkpoints(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let old = self.ckpt_dir(from);
        let new = self.ckpt_dir(to);
        if !self.fs.is_dir(&old) {
            return Ok(());
        }
        if self.fs.exists(&new) {
            self.fs.remove_dir_all(&new).map_err(|e| self.io(to, e))?;
        }
        self.fs
            .create_dirs_durable(&new)
            .map_err(|e| self.io(to, e))?;
        for e in self.fs.read_dir(&old).map_err(|e| self.io(from, e))? {
            let e = e.map_err(|e| self.io(from, e))?;
            self.fs
                .hard_link(&e.path(), &new.join(e.file_name()))
                .map_err(|e| self.io(to, e))?;
        }
        self.fs.sync_dir(&new).map_err(|e| self.io(to, e))
    }
}

/// How PEEK_FILE names a held checkpoint: `<tag>:<checksum hex>`.
fn held_entry(c: &CheckpointInfo) -> String {
    format!("{}:{:08x}", c.tag, c.checksum)
}
