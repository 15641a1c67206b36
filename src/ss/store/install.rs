//! Installing received copies: a single PUT_FILE_CONTENT, a PUT_BATCH, a stage (see
//! `server::staging`) or a delta's rebuilt content (see `crate::delta`).
//!
//! # A small copy: one journal entry
//!
//! A copy the journal can express is installed as a journaled change (see `journal`), like a
//! small `write_content`: its content is staged again from the received bytes under the
//! journal's gate, its record staged beside it, ONE entry written to the log (the new record,
//! the new content, and for a file held, the content held with the id of the history entry
//! it becomes), the log made durable by one `fdatasync` shared with every change appending
//! meanwhile (and with every copy of the same PUT_BATCH without a `syncfs` window: their
//! entries are written first, then waited for once), and only then is the content held
//! hard-linked into `undo/` and the staged content and record renamed (or exchanged) into
//! place, none of it synced: the checkpoint makes them durable in place, the redo at open
//! rewrites them from the entry. Its
//! FILE_STATE_REPLY is sent after that `fdatasync` returned and the renames were made. Such a
//! copy is one ([`Store::journal_fit`]):
//!
//! * whose content, and the content held, are each at most `JOURNAL_MAX_CONTENT`;
//! * with no checkpoints (none listed, none sent, none held here) and no delta basis to link;
//! * that brings no history entry (a new file: nothing held, no entry sent into the history
//!   it keeps), or exactly one: the entry of the version held here, whose bytes are those of
//!   the content held (so the entry's old content is at once the history entry it writes and
//!   what the redo tells a hand edit from, as for a `write_content`). This is every copy of a
//!   backup that kept up: a small write replicated brings the previous version's entry.
//!
//! A PUT_BATCH with a `syncfs` window (Linux 5.17 and later, below) installs every copy by
//! the direct path: its one `syncfs` already serves all 64 copies, and through the journal
//! each copy's bytes would be written twice (the log, then in place at the checkpoint); the
//! catch-up row (10,000 copies of 4 KiB) measured no faster that way (median 3.45 s against
//! 2.94 s, alternating sittings on a busy machine). A batch without a window (an older
//! kernel, whose direct path fsyncs every file) journals what it can, one `fdatasync` for
//! all.
//!
//! Every other copy (history entries the target lacks besides that one, checkpoints, a basis,
//! large content, a copy of a version the target fell behind) takes the direct path below,
//! after [`Store::settle`] of its file, so no redo of an earlier entry can undo it. A copy
//! taking the journal does not settle: its entry follows the file's earlier ones in the log
//! and the redo applies them in order. A version not newer than the copy held is ignored
//! before either path is chosen, so a retried or reordered job writes no entry.
//!
//! # The direct path: one copy
//!
//! Any other replicated copy is installed checkpoints first, then history entries and content (made
//! durable together), then record, the record only once its content, history entries and
//! their directories are durable; a
//! crash in between is the same case as a crash between content and record of a local
//! change (the scan adopts the new content as a new version). A version not newer than the
//! copy held is ignored, so jobs are idempotent and may be reordered or retried.
//!
//! # The direct path of a batch: each kind of sync done once
//!
//! The target verifies each copy of a PUT_BATCH as a single transfer, installs those the
//! journal can carry as above (only without a `syncfs` window), then the rest with each kind
//! of sync done once:
//!
//! 1. the records are staged in `tmp/` and made durable together with the copies' temp files
//!    (contents, history entries, records);
//! 2. history entries are renamed;
//! 3. each copy's checkpoints are installed (their temp files were synced as they arrived, so
//!    a batch never holds hundreds open; a file with none costs no sync there);
//! 4. contents are renamed, then `undo/` and each content directory made durable (once each);
//! 5. only then are the records renamed and each record directory made durable.
//!
//! A history entry and the content are made durable by the same round of directory syncs: a
//! crash may keep the new content without the entry, but the record naming the entry is
//! renamed only after both syncs returned, so no record ever names a missing entry (the new
//! content without its record is the case above, adopted by the scan). A lone copy thus
//! waits for three rounds of syncs (its temp files, in turn on its thread with their
//! write-back started together; `undo/` and its content directory; its record directory), not
//! four.
//!
//! Every file's lock is held throughout, taken in name order. It answers one
//! FILE_STATE_REPLY or ERR per copy, in order; a copy counts as replicated only after the
//! record directories' fsyncs returned, when its FILE_STATE_REPLY is sent.
//!
//! # Batched installs: one `syncfs` for the data
//!
//! On Linux 5.17 and later step 1 is one `syncfs(2)` of the storage server's file system
//! (`durable::FsSync`), not an fsync per temp file; the temp files are closed as soon as they
//! are written. The rename steps keep their directory fsyncs (`undo/` and each content directory
//! once, then each record directory), one per directory per batch. A
//! backup catching up on 10,000 small files pays one `syncfs` and a few directory syncs per
//! 64 files instead of two file syncs per file. Why durability is unchanged (the general
//! argument is on `durable::FsSync`):
//!
//! * `syncfs` is a superset of the per-file fsyncs it replaces.
//! * The window's descriptor is opened when the PUT_BATCH begins, before any of its bytes is
//!   written, so a failed write-back of any file of the batch fails the `syncfs`, and then
//!   every copy of the batch not installed yet fails (it cannot say which file it was) and
//!   its job is retried.
//! * Renames are made durable by directory fsyncs, never by `syncfs`.
//! * The order is the one the fsyncs gave: no rename happens before the sync that makes the
//!   renamed bytes durable returns, and no record is renamed before its content's rename is
//!   durable; a crash between steps leaves each file old, or new content that the next scan
//!   adopts.
//!
//! On an older kernel (before 5.17, whose `syncfs` may not report every error) the batch
//! fsyncs its temp files together on a few threads. A single PUT_FILE_CONTENT (a lone change,
//! where lag matters) still fsyncs its own files: `syncfs` would also wait for every other
//! dirty file on the disk. The same is the cost of a batch on a disk shared with heavy
//! writers: its `syncfs` waits for their dirty pages too.

use super::*;

/// A file's content and history opened under its lock, ready to be sent to another copy.
pub struct Transfer {
    /// The content.
    pub content: File,
    /// The record the content belongs to.
    pub meta: Meta,
    /// Whether opening it adopted a hand edit (the name server must hear of it).
    pub adopted: bool,
    /// The whole history, oldest first.
    pub undo: Vec<UndoDesc>,
    /// The open entries to send, in the order of `undo`.
    pub entries: Vec<(Version, File)>,
    /// Every checkpoint of the file.
    pub checkpoints: Vec<CheckpointInfo>,
    /// The open checkpoints to send (those the target lacks), in the order of `checkpoints`.
    pub checkpoint_files: Vec<(String, File)>,
}

/// A temp file in `tmp/`, removed when dropped (a no-op once it has been renamed into place),
/// so a transfer that fails or is cut leaves nothing behind.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// One received copy for [`Store::install_copies`]: its state, history and checkpoints as
/// the source described them, and the temp files holding its content and the entries and
/// checkpoints sent.
pub struct CopyIn<'a> {
    /// The state of the content.
    pub state: &'a FileState,
    /// The whole history, oldest first.
    pub undo: &'a [UndoDesc],
    /// The temp file holding the content.
    pub content: &'a Path,
    /// The temp files holding the history entries that were sent.
    pub entries: &'a [(Version, PathBuf)],
    /// Every checkpoint of the file at the source.
    pub checkpoints: &'a [CheckpointInfo],
    /// The temp files holding the checkpoints that were sent, by tag.
    pub checkpoint_files: &'a [(String, PathBuf)],
    /// The temp files among these not synced yet (the install syncs them with its own).
    pub unsynced: &'a [&'a File],
    /// The basis of a delta or of a staged upload, verified by [`Store::open_basis`]: the
    /// content held now is the history entry of its version when none was sent. None for a
    /// copy that must carry every entry the target lacks.
    pub basis: Option<Basis>,
}

/// The copy a delta transfer was rebuilt from, verified by [`Store::open_basis`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basis {
    /// Its version.
    pub version: Version,
    /// Its checksum (verified against its bytes).
    pub checksum: u32,
    /// The device and inode it was read from, so the install links that file only.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

/// A copy [`Store::install_copies`] is installing.
pub(super) struct Planned {
    /// Its index among the copies.
    i: usize,
    /// The record it replaces.
    old: Option<Meta>,
    /// The record it installs.
    meta: Meta,
    /// That record's temp file, and the file open for syncing.
    temp: TempFile,
    file: File,
    /// The history entry to link to the content held now (a verified basis).
    link: Option<String>,
}

/// A copy [`Store::install_copies`] has decided to install, before its record is staged.
pub(super) struct Todo {
    /// Its index among the copies.
    pub(super) i: usize,
    /// The record it replaces.
    pub(super) old: Option<Meta>,
    /// The history ids its record lists.
    pub(super) ids: Vec<String>,
    /// The history entry to link to the content held now (a verified basis).
    pub(super) link: Option<String>,
}

/// The record `c` installs over `old` (whose owner it keeps when the copy names none), with
/// `ids` as its history and its content's mtime.
pub(super) fn record_of(c: &CopyIn<'_>, old: Option<&Meta>, ids: Vec<String>, mtime: i128) -> Meta {
    Meta {
        version: c.state.version,
        checksum: c.state.checksum,
        size: c.state.size,
        mtime_ns: mtime,
        words: c.state.words,
        chars: c.state.chars,
        modified_ms: c.state.modified_ms,
        owner: c
            .state
            .owner
            .clone()
            .or_else(|| old.and_then(|m| m.owner.clone())),
        undo: ids,
    }
}

/// A copy whose journal entry is written, staged for its renames.
struct Logged {
    t: Todo,
    /// The record it installs.
    meta: Meta,
    content_tmp: PathBuf,
    /// Its record, staged or to be written in place.
    record: RecordPut,
    /// Whether the content held becomes a history entry (linked in).
    blob: bool,
}

/// What installing one copy takes.
pub(super) enum Plan {
    /// This copy is as new already: its record.
    Held(Meta),
    /// Install over the old record (if any), listing these history entries, one of which
    /// (a delta transfer's verified basis) is the content held now, linked in at step 3.
    Install(Option<Meta>, Vec<String>, Option<String>),
}

impl Store {
    /// A fresh temp file in `tmp/` for content arriving from the network; the returned guard
    /// removes it unless it was installed.
    /// `file` names what the bytes are for, in errors.
    pub fn temp_file(&self, file: &str) -> Result<(TempFile, File), StoreError> {
        let path = durable::temp_path(&self.tmp);
        let f = self.fs.create_new(&path).map_err(|e| self.io(file, e))?;
        Ok((TempFile(path), f))
    }

    /// A `syncfs` window on the file system holding this store (see [`durable::FsSync`]),
    /// for a batch of copies to begin before it writes any of them; `None` where `syncfs`
    /// cannot report write-back errors.
    pub fn sync_window(&self) -> io::Result<Option<durable::FsSync>> {
        durable::FsSync::begin(&self.tmp)
    }

    /// Opens `file`'s content and the history entries whose versions are not in `have`, under
    /// the file lock, so what is sent is one consistent version even if a commit follows.
    /// Checkpoints listed in `have_checkpoints` (`<tag>:<checksum hex>`) are described but
    /// not opened.
    pub fn open_transfer(
        &self,
        file: &str,
        have: &[Version],
        have_checkpoints: &[String],
    ) -> Result<Transfer, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (meta, adopted) = self.current(file)?;
        let content = self
            .fs
            .open(&self.content_path(file))
            .map_err(|e| self.io(file, e))?;
        let mut undo = Vec::new();
        let mut entries = Vec::new();
        for id in &meta.undo {
            // Entries of an older naming cannot be described by version; they stay local.
            let Some((version, checksum)) = parse_blob_id(id) else {
                continue;
            };
            let Ok(f) = self.fs.open(&self.undo.join(id)) else {
                continue;
            };
            let size = f.metadata().map_err(|e| self.io(file, e))?.len();
            undo.push(UndoDesc {
                version,
                size,
                checksum,
            });
            if !have.contains(&version) {
                entries.push((version, f));
            }
        }
        let (checkpoints, checkpoint_files) = self.open_checkpoints(file, have_checkpoints)?;
        Ok(Transfer {
            content,
            meta,
            adopted,
            undo,
            entries,
            checkpoints,
            checkpoint_files,
        })
    }

    /// Installs a copy received from another server (PUT_FILE_CONTENT): the history entries,
    /// then the checkpoints, then the content (atomic replace), then the record, all durable. The temp files were
    /// written, verified and synced by the caller. A copy already at `state.version` or newer
    /// is left alone (jobs may be retried or reordered); returns the record now held and
    /// whether anything was installed.
    /// `checkpoints` is the source's whole list; `checkpoint_files` the received ones. The
    /// server itself installs through [`Store::install_copies`]; this is the tests' shorthand.
    #[cfg(test)]
    pub fn install_copy(
        &self,
        state: &FileState,
        undo: &[UndoDesc],
        content: &Path,
        entries: &[(Version, PathBuf)],
        checkpoints: &[CheckpointInfo],
        checkpoint_files: &[(String, PathBuf)],
    ) -> Result<(Meta, bool), StoreError> {
        let copy = CopyIn {
            state,
            undo,
            content,
            entries,
            checkpoints,
            checkpoint_files,
            unsynced: &[],
            basis: None,
        };
        self.install_copies(&[copy], None)
            .pop()
            .unwrap_or_else(|| Err(StoreError::Incomplete(names::display(&state.file))))
    }

    /// [`Store::install_copy`] for many files at once (PUT_BATCH), with the same guarantees per
    /// file but each kind of sync done once for all: every record is written to a temp file,
    /// and those and the copies' unsynced temp files are synced together; then the history
    /// entries are renamed and `undo/` synced once, each copy's checkpoints installed (only a
    /// file that has some costs syncs of its own), every content renamed and each content
    /// directory synced once, and only then the records renamed and each record directory
    /// synced once. A record is renamed into place only after its content is durable, so a
    /// crash leaves each file old, or new content that the next scan adopts (as after a crash
    /// between content and record of a single change). Every file's lock is held throughout,
    /// taken in name order. One result per copy, in order; a failure of one file leaves the
    /// others unaffected unless a shared directory could not be synced.
    ///
    /// With a `window` (begun before any of the copies' temp files was written, which the
    /// caller then left closed and unsynced), the temp files and records are made durable by
    /// one `syncfs` of the store's file system instead of an fsync each; a failed `syncfs`
    /// fails every copy not decided yet (it cannot say which file it was). The renames are
    /// always made durable by directory fsyncs (see [`durable::FsSync`]).
    pub fn install_copies(
        &self,
        copies: &[CopyIn<'_>],
        window: Option<&durable::FsSync>,
    ) -> Vec<Result<(Meta, bool), StoreError>> {
        let mut linked = Vec::new();
        let results = self.install_copies_linking(copies, window, &mut linked);
        // A basis linked in for a copy that failed before its record was renamed into place
        // is named by no record: removed, so it does not pin the old content's space.
        for (i, path) in linked {
            if !results.get(i).is_some_and(|r| r.is_ok()) {
                let _ = self.fs.remove_file(&path);
            }
        }
        results
    }

    /// The body of [`Store::install_copies`], which holds every file's lock; `linked`
    /// collects the history entries linked to a delta's basis (copy index, path).
    pub(super) fn install_copies_linking(
        &self,
        copies: &[CopyIn<'_>],
        window: Option<&durable::FsSync>,
        linked: &mut Vec<(usize, PathBuf)>,
    ) -> Vec<Result<(Meta, bool), StoreError>> {
        let mut order: Vec<&str> = copies.iter().map(|c| c.state.file.as_str()).collect();
        order.sort_unstable();
        order.dedup();
        let locks: Vec<Arc<Mutex<()>>> = order.iter().map(|f| self.file_lock(f)).collect();
        let _guards: Vec<_> = locks
            .iter()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let mut results: Vec<Option<Result<(Meta, bool), StoreError>>> =
            copies.iter().map(|_| None).collect();
        // 1. Decide per file: already as new here, incomplete, or to install.
        let mut todo: Vec<Todo> = Vec::new();
        for (i, c) in copies.iter().enumerate() {
            let file = c.state.file.as_str();
            // A name repeated in one batch installs only its first copy; the next would need
            // the first one's record, which is not written yet.
            if copies[..i].iter().any(|p| p.state.file == file) {
                results[i] = Some(Err(StoreError::Incomplete(names::display(file))));
                continue;
            }
            match self.plan_copy(c) {
                Ok(Plan::Held(m)) => results[i] = Some(Ok((m, false))),
                Ok(Plan::Install(old, ids, link)) => todo.push(Todo { i, old, ids, link }),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // 2. Small copies through the journal (see `journal`); the rest below. A batch with a
        // `syncfs` window takes the direct path: see the module docs.
        let todo = match window {
            Some(_) => todo,
            None => self.install_journaled(copies, todo, &mut results),
        };
        // A journaled change of any of the rest is made durable first, or a redo could undo
        // the install.
        let rest: Vec<&str> = todo
            .iter()
            .map(|t| copies[t.i].state.file.as_str())
            .collect();
        if let Err(e) = self.settle_all(&rest) {
            let msg = e.to_string();
            for t in &todo {
                let file = copies[t.i].state.file.as_str();
                results[t.i] = Some(Err(self.io(file, io::Error::other(msg.clone()))));
            }
            return Self::decided(results);
        }
        // 3. The record each installs, staged in a temp file (renaming keeps the content's
        // mtime, so it is known now).
        let mut plans: Vec<Planned> = Vec::new();
        for t in todo {
            match self.stage_record(&copies[t.i], t.old.as_ref(), t.ids) {
                Ok((meta, temp, f)) => plans.push(Planned {
                    i: t.i,
                    old: t.old,
                    meta,
                    temp,
                    file: f,
                    link: t.link,
                }),
                Err(e) => results[t.i] = Some(Err(e)),
            }
        }
        // 4. Every temp file of the batch synced at once.
        if let Some(w) = window.filter(|_| !plans.is_empty()) {
            if let Err(e) = w.sync() {
                return self.fail_rest(copies, results, e);
            }
        }
        let mut owners = Vec::new();
        let mut open: Vec<&File> = Vec::new();
        for p in plans.iter().filter(|_| window.is_none()) {
            for f in copies[p.i]
                .unsynced
                .iter()
                .copied()
                .chain(std::iter::once(&p.file))
            {
                owners.push(p.i);
                open.push(f);
            }
        }
        for (i, r) in owners.into_iter().zip(self.fs.sync_files(&open)) {
            if let Err(e) = r {
                if results[i].is_none() {
                    results[i] = Some(Err(self.io(&copies[i].state.file, e)));
                }
            }
        }
        plans.retain(|p| results[p.i].is_none());
        // 5. History entries (and a verified basis, linked); `undo/` is synced with the
        // contents' directories in step 7.
        let mut renamed = false;
        plans.retain(|p| {
            let c = &copies[p.i];
            if let Some(id) = &p.link {
                let path = self.undo.join(id);
                if let Err(e) = self.fs.hard_link(&self.content_path(&c.state.file), &path) {
                    results[p.i] = Some(Err(self.io(&c.state.file, e)));
                    return false;
                }
                linked.push((p.i, path));
                renamed = true;
            }
            let keep = c.undo.len().saturating_sub(UNDO_DEPTH);
            for (d, id) in c.undo[keep..].iter().zip(&p.meta.undo) {
                if let Some((_, tmp)) = c.entries.iter().find(|(v, _)| *v == d.version) {
                    if let Err(e) = self.fs.rename(tmp, &self.undo.join(id)) {
                        results[p.i] = Some(Err(self.io(&c.state.file, e)));
                        return false;
                    }
                    renamed = true;
                }
            }
            true
        });
        // 6. Each copy's checkpoints (found complete in step 1), before its content as for a
        // single copy: one whose checkpoints cannot be installed keeps its old content.
        plans.retain(|p| {
            let c = &copies[p.i];
            let file = c.state.file.as_str();
            match self.install_checkpoints(file, c.checkpoints, c.checkpoint_files) {
                Ok(()) => true,
                Err(e) => {
                    results[p.i] = Some(Err(e));
                    false
                }
            }
        });
        // 7. Contents, then one sync of each directory they went to and of `undo/` (only a
        // rename changed it; with none there is nothing to make durable there).
        let mut dirs = BTreeSet::new();
        if renamed {
            dirs.insert(self.undo.clone());
        }
        plans.retain(|p| {
            let c = &copies[p.i];
            match place(&*self.fs, c.content, &self.content_path(&c.state.file)) {
                Ok(parent) => {
                    dirs.insert(parent);
                    true
                }
                Err(e) => {
                    results[p.i] = Some(Err(self.io(&c.state.file, e)));
                    false
                }
            }
        });
        let synced = dirs.iter().try_for_each(|d| self.fs.sync_dir(d));
        if let Err(e) = synced {
            return self.fail_rest(copies, results, e);
        }
        // 8. Records, then one sync of each directory they went to.
        let mut meta_dirs = BTreeSet::new();
        plans.retain(|p| {
            let file = copies[p.i].state.file.as_str();
            match place(&*self.fs, p.temp.path(), &self.meta_path(file)) {
                Ok(parent) => {
                    meta_dirs.insert(parent);
                    // The record in place names the linked basis: it stays, whatever the
                    // directory sync below answers.
                    linked.retain(|(i, _)| *i != p.i);
                    true
                }
                Err(e) => {
                    results[p.i] = Some(Err(content_saved(file, self.io(file, e))));
                    false
                }
            }
        });
        let dir_sync = meta_dirs.iter().try_for_each(|d| self.fs.sync_dir(d));
        for p in plans {
            let file = copies[p.i].state.file.as_str();
            if let Err(e) = &dir_sync {
                let e = io::Error::new(e.kind(), e.to_string());
                results[p.i] = Some(Err(content_saved(file, self.io(file, e))));
                continue;
            }
            // 9. History entries the new record no longer names.
            for b in p.old.iter().flat_map(|m| m.undo.iter()) {
                if !p.meta.undo.contains(b) {
                    let _ = self.fs.remove_file(&self.undo.join(b));
                }
            }
            results[p.i] = Some(Ok((p.meta, true)));
        }
        Self::decided(results)
    }

    /// Installs the copies of `todo` the journal can carry (see [`Store::journal_fit`]) as
    /// journaled changes: each copy's content and record staged under the journal's gate and
    /// its entry written (new record, new content, and the content held now with the id of
    /// the history entry it becomes, as a journaled `write_content` writes it), then ONE wait
    /// for the log's `fdatasync` for all of them, then each copy's history link and renames,
    /// none of them synced; the checkpoint makes them durable in place. Sets the results of
    /// those and returns the rest, for the direct path (all of them while the journal is
    /// closed). Caller holds every file's lock.
    fn install_journaled(
        &self,
        copies: &[CopyIn<'_>],
        todo: Vec<Todo>,
        results: &mut [Option<Result<(Meta, bool), StoreError>>],
    ) -> Vec<Todo> {
        let Some(j) = &self.journal else {
            return todo;
        };
        if !todo.iter().any(|t| self.journal_fit_cheap(&copies[t.i], t)) {
            return todo;
        }
        let mut rest = Vec::new();
        let mut logged: Vec<Logged> = Vec::new();
        let mut upto = None;
        let gate = j.enter();
        let mut closed = false;
        for t in todo {
            let c = &copies[t.i];
            let file = c.state.file.as_str();
            let fit = (!closed && self.journal_fit_cheap(c, &t))
                .then(|| self.journal_fit(c, &t))
                .flatten();
            let Some((new, held)) = fit else {
                rest.push(t);
                continue;
            };
            let staged = self.stage_journaled(c, &t, &new);
            let (meta, content_tmp, record) = match staged {
                Ok(x) => x,
                Err(e) => {
                    results[t.i] = Some(Err(e));
                    continue;
                }
            };
            let blob = held
                .as_ref()
                .and(t.old.as_ref())
                .map(|m| blob_id(file, m.version, m.checksum));
            let old_bytes = held.as_deref().unwrap_or_default();
            let head = journal::Head {
                file: file.to_string(),
                meta: meta.clone(),
                blob: blob.clone(),
                new_len: new.len() as u64,
                old_len: old_bytes.len() as u64,
            };
            let mut paths = vec![self.content_path(file), self.meta_path(file)];
            paths.extend(blob.iter().map(|b| self.undo.join(b)));
            let written = journal::encode(&head, &new, old_bytes)
                .and_then(|frame| j.write(&gate, file, &frame, &paths));
            match written {
                Ok(Some(at)) => {
                    upto = Some(at);
                    logged.push(Logged {
                        t,
                        meta,
                        content_tmp,
                        record,
                        blob: blob.is_some(),
                    });
                }
                // Closed after a failed sync: this copy and the next take the direct path.
                Ok(None) => {
                    self.unstage(&record.staged(content_tmp), None);
                    closed = true;
                    rest.push(t);
                }
                Err(e) => {
                    self.unstage(&record.staged(content_tmp), None);
                    results[t.i] = Some(Err(self.io(file, e)));
                }
            }
        }
        // One fdatasync of the log for every entry of the batch: each copy is durable once it
        // returns, and only then does any of them touch the file system.
        if let Some(Err(e)) = upto.map(|at| j.wait(&*self.fs, at)) {
            for l in logged {
                let file = copies[l.t.i].state.file.as_str();
                self.unstage(&l.record.staged(l.content_tmp), None);
                let e = io::Error::new(e.kind(), e.to_string());
                results[l.t.i] = Some(Err(self.io(file, e)));
            }
            return rest;
        }
        let any = !logged.is_empty();
        for l in logged {
            let file = copies[l.t.i].state.file.as_str();
            let applied = {
                let _a = journal::Applying::begin();
                let linked = match (&l.t.old, l.blob) {
                    (Some(old), true) => self.link_history(file, old).map(|_| ()),
                    _ => Ok(()),
                };
                linked
                    .and_then(|()| {
                        place_unsynced(&*self.fs, &l.content_tmp, &self.content_path(file))
                            .map_err(|e| self.io(file, e))
                    })
                    .and_then(|_| self.put_record(file, &l.record))
            };
            results[l.t.i] = Some(match applied {
                Ok(_) => {
                    // History entries the new record no longer names.
                    for b in l.t.old.iter().flat_map(|m| m.undo.iter()) {
                        if !l.meta.undo.contains(b) {
                            let _ = self.fs.remove_file(&self.undo.join(b));
                        }
                    }
                    Ok((l.meta, true))
                }
                Err(e) => {
                    self.unstage(&l.record.staged(l.content_tmp), None);
                    Err(j.unplaced(file, e))
                }
            });
        }
        drop(gate);
        if any {
            self.checkpoint_if_full();
        }
        rest
    }

    /// The checks of [`Store::journal_fit`] that read no file: no basis to link, no
    /// checkpoints, content small enough, and at most one history entry sent (into the
    /// record's history) exactly when the file is held, for its held version.
    fn journal_fit_cheap(&self, c: &CopyIn<'_>, t: &Todo) -> bool {
        if t.link.is_some()
            || !c.checkpoints.is_empty()
            || !c.checkpoint_files.is_empty()
            || c.state.size > JOURNAL_MAX_CONTENT
        {
            return false;
        }
        let keep = c.undo.len().saturating_sub(UNDO_DEPTH);
        let mut sent = c.undo[keep..]
            .iter()
            .filter(|d| c.entries.iter().any(|(v, _)| *v == d.version));
        match (&t.old, sent.next(), sent.next()) {
            (None, None, _) => true,
            (Some(m), Some(d), None) => {
                (d.version, d.checksum) == (m.version, m.checksum)
                    && m.size <= JOURNAL_MAX_CONTENT
                    && d.size == m.size
            }
            _ => false,
        }
    }

    /// Whether the journal can carry the install of `c` as it carries a content change or a
    /// CREATE (see `journal`): [`Store::journal_fit_cheap`], no checkpoints held here, and
    /// the one history entry sent has the bytes of the content held (so the entry's old
    /// content is both the history entry and what the install replaces). Returns the new
    /// content's bytes and, for a file held, the content held now. Caller holds the lock.
    fn journal_fit(&self, c: &CopyIn<'_>, t: &Todo) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let file = c.state.file.as_str();
        if self.fs.exists(&self.ckpt_dir(file)) {
            return None;
        }
        let new = self.fs.read(c.content).ok()?;
        // Read back from an unsynced temp file: bytes a failed write-back dropped must not be
        // journaled under the copy's checksum (the direct path's fsync would have failed).
        if new.len() as u64 != c.state.size || crc32c::crc32c(&new) != c.state.checksum {
            return None;
        }
        // A new file: nothing may stand at its name, and its folders are made durably now,
        // or the rename (or a mkdir on a full disk) would fail after the entry is durable
        // (and fail the journal) where the direct path only fails the copy.
        let Some(m) = &t.old else {
            let (content, record) = (self.content_path(file), self.meta_path(file));
            for dir in [&content, &record].iter().filter_map(|p| p.parent()) {
                self.fs.create_dirs_durable(dir).ok()?;
            }
            return (!self.fs.exists(&content)).then_some((new, None));
        };
        let (_, sent) = c.entries.iter().find(|(v, _)| *v == m.version)?;
        let held = self.fs.read(&self.content_path(file)).ok()?;
        (held.len() as u64 == m.size && self.fs.read(sent).ok()? == held)
            .then_some((new, Some(held)))
    }

    /// Stages a journaled install's content (`new`, in a fresh temp file written under the
    /// gate, as a journaled change stages its bytes) and makes its record (with that file's
    /// mtime), ready to be put in place once the entry is durable ([`Store::prepare_record`]:
    /// everything that takes space or a handle is done before the entry, so a full disk fails
    /// the copy, not the journal). Returns the record, the temp file and how the record is
    /// put in place.
    fn stage_journaled(
        &self,
        c: &CopyIn<'_>,
        t: &Todo,
        new: &[u8],
    ) -> Result<(Meta, PathBuf, RecordPut), StoreError> {
        let file = c.state.file.as_str();
        let (content_tmp, cf) = self.stage(file, &mut |f| f.write_all(new))?;
        let staged = (|| {
            let md = cf.metadata().map_err(|e| self.io(file, e))?;
            let meta = record_of(c, t.old.as_ref(), t.ids.clone(), mtime_ns(&md));
            let record = self.prepare_record(file, &meta, t.old.is_some())?;
            Ok::<_, StoreError>((meta, record))
        })();
        drop(cf);
        match staged {
            Ok((meta, record)) => Ok((meta, content_tmp, record)),
            Err(e) => {
                self.unstage(&[content_tmp], None);
                Err(e)
            }
        }
    }

    /// The results of [`Store::install_copies`], one per copy ("left undecided" should a
    /// copy have none).
    fn decided(
        results: Vec<Option<Result<(Meta, bool), StoreError>>>,
    ) -> Vec<Result<(Meta, bool), StoreError>> {
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Io {
                        file: String::new(),
                        source: io::Error::other("copy left undecided"),
                    })
                })
            })
            .collect()
    }

    /// The record a copy installs, written (not yet synced) to a temp file.
    pub(super) fn stage_record(
        &self,
        c: &CopyIn<'_>,
        old: Option<&Meta>,
        ids: Vec<String>,
    ) -> Result<(Meta, TempFile, File), StoreError> {
        let file = c.state.file.as_str();
        let md = self.fs.metadata(c.content).map_err(|e| self.io(file, e))?;
        let meta = record_of(c, old, ids, mtime_ns(&md));
        let bytes = serde_json::to_vec(&meta).map_err(|e| self.io(file, io::Error::other(e)))?;
        let (tmp, mut f) = self.temp_file(file)?;
        f.write_all(&bytes).map_err(|e| self.io(file, e))?;
        Ok((meta, tmp, f))
    }

    /// What installing `c` takes (caller holds the file's lock): nothing if this copy is as new
    /// already, else the old record and the names of the history entries the new one lists.
    pub(super) fn plan_copy(&self, c: &CopyIn<'_>) -> Result<Plan, StoreError> {
        let file = c.state.file.as_str();
        let old = match self.current(file) {
            Ok((m, _)) => Some(m),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(m) = &old {
            if m.version >= c.state.version {
                return Ok(Plan::Held(m.clone()));
            }
        }
        let keep = c.undo.len().saturating_sub(UNDO_DEPTH);
        let undo = &c.undo[keep..];
        let ids: Vec<String> = undo
            .iter()
            .map(|d| blob_id(file, d.version, d.checksum))
            .collect();
        // Check before changing anything: every entry is either sent or already here, or
        // (a delta or a staged upload, with a basis) is the copy held now, whose bytes the
        // caller verified against its checksum: step 3 links it in.
        let mut link = None;
        for (d, id) in undo.iter().zip(&ids) {
            let sent = c.entries.iter().any(|(v, _)| *v == d.version);
            if !sent && !self.fs.is_file(&self.undo.join(id)) {
                match c.basis {
                    Some(b)
                        if (b.version, b.checksum) == (d.version, d.checksum)
                            && self.basis_in_place(file, old.as_ref(), &b) =>
                    {
                        link = Some(id.clone());
                    }
                    _ => return Err(StoreError::Incomplete(names::display(file))),
                }
            }
        }
        self.check_checkpoints_complete(file, c.checkpoints, c.checkpoint_files)?;
        Ok(Plan::Install(old, ids, link))
    }

    /// Whether the content of `file` (whose record is `old`) is still the copy `b` was
    /// verified from: the same record and the same inode.
    pub(super) fn basis_in_place(&self, file: &str, old: Option<&Meta>, b: &Basis) -> bool {
        old.is_some_and(|m| (m.version, m.checksum) == (b.version, b.checksum))
            && self
                .fs
                .metadata(&self.content_path(file))
                .is_ok_and(|md| (md.dev(), md.ino()) == (b.dev, b.ino))
    }

    /// Opens the copy of `file` a transfer names as its basis (a delta's ops refer to it, a
    /// staged upload links it in as a history entry), under the file lock, and verifies it
    /// is at `basis` (version and checksum) by its record and by a whole read of
    /// its bytes: a copy with bit rot must neither rebuild content nor become the history
    /// entry of its version (which UNDO would restore and peers would refuse). Returns the
    /// record held and whether it adopted a hand edit, even when the copy does not verify.
    #[allow(clippy::type_complexity)]
    pub fn open_basis(
        &self,
        file: &str,
        basis: (Version, u32),
    ) -> Result<(Meta, bool, Result<(File, Basis), StoreError>), StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (meta, adopted) = self.current(file)?;
        let opened = self.verify_basis(file, &meta, basis);
        Ok((meta, adopted, opened))
    }

    /// The check of [`Store::open_basis`] (caller holds the lock).
    pub(super) fn verify_basis(
        &self,
        file: &str,
        meta: &Meta,
        basis: (Version, u32),
    ) -> Result<(File, Basis), StoreError> {
        let mismatch = |what: String| StoreError::Io {
            file: file.to_string(),
            source: io::Error::other(what),
        };
        if (meta.version, meta.checksum) != basis {
            return Err(mismatch(format!(
                "the copy here is at version {} (checksum {:08x}), not at version {} \
                 (checksum {:08x}) the transfer names as its basis",
                meta.version, meta.checksum, basis.0, basis.1
            )));
        }
        let f = self
            .fs
            .open(&self.content_path(file))
            .map_err(|e| self.io(file, e))?;
        let md = f.metadata().map_err(|e| self.io(file, e))?;
        let mut counter = ContentCounter::bytes_only();
        copy_counting(&mut &f, &mut io::sink(), &mut counter, meta.size + 1)
            .map_err(|e| self.io(file, e))?;
        let (crc, at) = (counter.checksum(), counter.size());
        if at != meta.size || crc != meta.checksum {
            return Err(mismatch(format!(
                "the copy here does not match its checksum ({crc:08x}, {at} bytes; its record \
                 says {:08x}, {} bytes)",
                meta.checksum, meta.size
            )));
        }
        let b = Basis {
            version: meta.version,
            checksum: meta.checksum,
            dev: md.dev(),
            ino: md.ino(),
        };
        Ok((f, b))
    }

    /// Ends [`Store::install_copies`] after a directory sync failed: every copy not decided
    /// yet fails with that error.
    pub(super) fn fail_rest(
        &self,
        copies: &[CopyIn<'_>],
        results: Vec<Option<Result<(Meta, bool), StoreError>>>,
        e: io::Error,
    ) -> Vec<Result<(Meta, bool), StoreError>> {
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Some(r) => r,
                None => {
                    let file = copies[i].state.file.as_str();
                    Err(self.io(file, io::Error::new(e.kind(), e.to_string())))
                }
            })
            .collect()
    }
}
