//! Folders and MOVE on a storage server (a child module of `store`). A folder is a
//! directory under `files/`, made durably when the name server pushes it (SS_MKDIR). A MOVE
//! is a rename of the content with its bookkeeping, history entries and checkpoints
//! following it.
//!
//! Steps, each durable before the next: (1) the history entries are hard-linked under the new
//! name's ids and the checkpoints under the new name's directory, (2) the record is written
//! under the new name, (3) the content is renamed (one atomic rename), (4) the old record,
//! links and checkpoint directory are removed. A crash before (3) leaves the file whole under
//! its old name and a record without content under the new one, which the scan removes with
//! the unreferenced links; after (3) it leaves the file whole under its new name and leftovers
//! of the old one, which the scan removes too. Renaming keeps the content's mtime, so the
//! moved record still matches its content and nothing is adopted.

use super::*;

impl Store {
    /// Creates the directories of canonical `folders` under `files/` (existing ones are fine).
    /// A file's own name in the way is refused: the index never has a file and a folder of
    /// one name, so such a file was placed by hand.
    pub fn make_folders(&self, folders: &[String]) -> Result<(), StoreError> {
        for f in folders {
            let dir = self.files.join(f);
            if self.fs.is_file(&dir) {
                return Err(StoreError::Exists(names::display(f)));
            }
            self.fs
                .create_dirs_durable(&dir)
                .map_err(|e| self.io(f, e))?;
        }
        Ok(())
    }

    /// Whether a move of `from` to `to` of the file at `version` has been made already: no
    /// `from`, and `to` at exactly that version (the name server reserves `to` while its move
    /// is unsettled, and sends `version` only when it repeats a move). Caller holds both
    /// files' locks.
    pub fn moved_already(
        &self,
        from: &str,
        to: &str,
        version: Version,
    ) -> Result<bool, StoreError> {
        Ok(self.record_locked(from)?.is_none()
            && self
                .record_locked(to)?
                .is_some_and(|m| m.version == version))
    }

    /// Renames `from` to `to` (canonical names). Caller holds both files' locks.
    pub fn move_file(&self, from: &str, to: &str) -> Result<Meta, StoreError> {
        self.settle_all(&[from, to])?;
        let (meta, _) = self.current(from)?;
        if self.fs.exists(&self.content_path(to)) || self.fs.exists(&self.meta_path(to)) {
            return Err(StoreError::Exists(names::display(to)));
        }
        let mut ids = Vec::with_capacity(meta.undo.len());
        let mut linked = Vec::new();
        for id in &meta.undo {
            let new_id = match parse_blob_id(id) {
                Some((v, crc)) => blob_id(to, v, crc),
                None => id.clone(),
            };
            if new_id != *id {
                let dst = self.undo.join(&new_id);
                let _ = self.fs.remove_file(&dst);
                self.fs
                    .hard_link(&self.undo.join(id), &dst)
                    .map_err(|e| self.io(from, e))?;
                linked.push((id.clone(), new_id.clone()));
            }
            ids.push(new_id);
        }
        if !linked.is_empty() {
            self.fs.sync_dir(&self.undo).map_err(|e| self.io(from, e))?;
        }
        self.link_checkpoints(from, to)?;
        let moved = Meta {
            undo: ids,
            ..meta.clone()
        };
        let undo_links = |s: &Store| {
            for (_, new_id) in &linked {
                let _ = self.fs.remove_file(&s.undo.join(new_id));
            }
        };
        if let Err(e) = self.write_meta(to, &moved) {
            undo_links(self);
            self.remove_checkpoints(to);
            return Err(e);
        }
        let src = self.content_path(from);
        let dst = self.content_path(to);
        let renamed = (|| {
            let parent = dst.parent().unwrap_or_else(|| Path::new("."));
            self.fs.create_dirs_durable(parent)?;
            self.fs.rename(&src, &dst)?;
            self.fs.sync_dir(parent)?;
            self.fs
                .sync_dir(src.parent().unwrap_or_else(|| Path::new(".")))
        })();
        if let Err(e) = renamed {
            if !self.fs.exists(&dst) {
                let _ = self.fs.remove(&self.meta_path(to));
                undo_links(self);
                self.remove_checkpoints(to);
            }
            return Err(self.io(from, e));
        }
        let _ = self.fs.remove(&self.meta_path(from));
        for (old_id, _) in &linked {
            let _ = self.fs.remove_file(&self.undo.join(old_id));
        }
        self.remove_checkpoints(from);
        Ok(moved)
    }
}
