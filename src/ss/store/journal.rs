//! The write-ahead journal: a CREATE, a small content change or the install of a small
//! replicated copy costs one flush.
//!
//! A journaled change (CREATE, a commit's `write_content` whose new and old content are each
//! at most [`JOURNAL_MAX_CONTENT`], and the install of a small copy on the backup, see
//! `install`) appends ONE entry to `DIR/journal/<n>.log` holding
//! everything needed to redo it: the file name, the new [`Meta`] (version, checksum, mtime,
//! undo list...), the new content, and for a content change the old content and the id of
//! the history entry it becomes. The entry is framed as `length (u32 LE)`, `crc32c (u32 LE)`
//! of the payload, payload; a frame that is short or fails its checksum ends the log (a torn
//! tail: it was never acknowledged). An install writes its entry the same way: the installed
//! record (the source's version, owner and history ids), the received content, and for a
//! file held the content held with the id of the history entry the copy brings for it
//! (whose bytes are those of the content held; an install needing more takes the direct
//! path). The entry is made durable by one `fdatasync` of the log,
//! shared by every change appending meanwhile (leader/follower, as in `batch`; the copies of
//! one PUT_BATCH installed through the journal write their entries, then wait once,
//! [`Journal::write`]); a commit reports its change to the name server between the write
//! and that flush (`change::Made::Written`, so the two flushes overlap; a flush failing after
//! such a report fails the journal, [`Journal::unsynced`]), and only once the flush returned
//! does the change touch the file system: the old content is hard-linked into `undo/`, the
//! staged content and record (temp files in `tmp/`, written before the append) are renamed
//! into place (by exchange when they replace files: `change::place_unsynced`), all WITHOUT
//! any fsync; a held file's record is not staged but, when it has room, overwritten in
//! place through a handle opened before the append (`Store::prepare_record`: no inode made
//! or freed, nothing after the entry needing space or a handle), its readers holding the
//! file's lock as the change does. The change returns once its entry is durable and its
//! renames are made.
//!
//! A checkpoint makes the journaled changes durable in place and retires their log, without
//! stopping appends while it syncs. A spare next log, `<n+1>.log`, is kept made durably
//! ahead of time (created, fsynced, the journal directory fsynced), outside the gate: at the
//! end of each checkpoint, and at the start of one if none is ready. The checkpoint then:
//!
//! 1. takes the gate EXCLUSIVELY only to rotate: the current log, its path, the files with an
//!    entry in it, the paths and directories its changes touched (tracked in memory) and its
//!    `syncfs` window are sealed (moved aside); the spare becomes the current log, empty; a
//!    new window is opened. No I/O but opening the window's directory is done under it; it
//!    waits for the changes inside the gate to leave (each holds it from staging its temp
//!    files, through its entry's `fdatasync`, to its renames; see below), and changes
//!    arriving meanwhile wait for it;
//! 2. releases the gate and, while changes append to the new log, fsyncs every sealed path,
//!    then each sealed directory once. When many paths were touched and the kernel's `syncfs`
//!    reports every write-back error (Linux 5.17 and later), one `syncfs` through the SEALED
//!    window (opened at the rotation before, so it saw every one of their writes) replaces
//!    the per-file fsyncs (the directories are still fsynced): the store may share its file
//!    system with other programs, whose dirty data `syncfs` also waits for, so small
//!    checkpoints fsync their paths;
//! 3. removes the sealed log and fsyncs the journal directory, before it returns;
//! 4. makes the next spare.
//!
//! Log numbers only grow: a spare takes the next number even when an earlier attempt failed.
//! A file with an entry in the sealed log still counts as having one ([`Journal::is_pending`],
//! the [`Guard`]) until the sealed log's removal is durable. When the spare cannot be made (a
//! full disk, a failed sync; a warning is logged, the store does not fail), the next
//! checkpoint tries again at its start, and if that fails too it falls back to emptying the
//! current log in place: everything above under the gate, then the log truncated and the
//! truncation fsynced. A checkpoint runs every `--journal-checkpoint-ms` (a thread of the
//! storage server), when the log passes [`JOURNAL_CHECKPOINT_BYTES`] (the change that
//! appended runs it once it has left the gate), at clean shutdown, and whenever a file with
//! an entry in either log is about to be changed by anything but a journaled change
//! ([`Store::settle`]). One checkpoint runs at a time: a settle finding its file only in the
//! sealed log waits for the checkpoint under way, then finds it settled and does nothing;
//! one finding it in the current log rotates again.
//!
//! At open, before the scan, every complete entry of every log is redone in numeric order of
//! the logs (so a sealed log before the one after it), each durably through the ordinary slow
//! path (history entry from the old bytes, content with the journaled mtime, record), then a
//! new empty log numbered past them is made durably and the old ones removed.
//!
//! # Why no acknowledged change is lost, and no newer state is overwritten
//!
//! * Append first, file system second: an entry is durable before any file-system change of
//!   its change is made. A power cut before its `fdatasync` returned leaves the file system as
//!   it was (nothing was renamed yet; staged temp files are in `tmp/`, emptied at open) and
//!   the change unacknowledged; a torn entry is ignored. After it, whatever subset of the
//!   unsynced renames, links and bytes survived (another change's directory fsync may even
//!   have made a rename durable whose bytes were not; a record overwritten in place may hold
//!   its old bytes, its new ones or a mix), the redo rewrites the history entry,
//!   the content and the record from the entry, durably, so the acknowledged state is
//!   reached. Redone entries are applied in log order, so the last entry of a file wins.
//!   An install is no different: its FILE_STATE_REPLY (the name server's proof the backup
//!   holds the copy) is sent only after its entry's `fdatasync` returned; a power cut before
//!   leaves the old copy (its record, content and history untouched), and the job is
//!   retried. The history entries its record names besides the one in its entry are already
//!   in `undo/` (the install checks), durable or themselves redone from an earlier entry.
//! * Redo is idempotent: it only writes whole files from the entry (each an atomic, durable
//!   replace) and the logs are removed only after every entry was redone, so a power cut
//!   during the redo redoes it again.
//! * Appends and the rotation never race: a journaled change holds the journal's gate
//!   (shared) from before it stages its temp files, through writing its frame and waiting
//!   for its `fdatasync`, until its renames are made and its paths are tracked; the rotation
//!   holds it exclusively. So a change's `write` and its `wait` go to the same log, no change
//!   is half in one log and half in the other, and every entry in the sealed log belongs to a
//!   change whose renames are made and whose paths are in the sealed set; every entry in the
//!   new log to a change that entered the gate after the rotation, so it comes later in its
//!   file's order (the file's lock orders its changes) and the new window covers its writes.
//! * A power cut at any point of a checkpoint redoes the right entries in the right order:
//!   - before the rotation: as without a checkpoint; a spare made meanwhile is an empty log,
//!     which redoes nothing (so is a spare whose creation was cut short);
//!   - after the rotation, during the sealed syncs: both logs are on disk (the spare was made
//!     durable before any entry went into it, so an entry acknowledged there survives) and
//!     are redone old then new, so the last entry of a file wins. Renames of later changes
//!     that a sealed directory fsync made durable without their bytes are covered by their
//!     entries in the new log, redone after (a sealed entry redone first over such a later
//!     content keeps it as a hand edit, below, and the later entry then rewrites both);
//!   - after the sealed log's removal but before the directory fsync: the removal may be
//!     lost and the sealed log redone again, then the new one. Its entries only rewrite
//!     states already durable in place, and nothing but a journaled change (whose entry is in
//!     the new log, redone after) can have changed their files since, since the files count
//!     as pending until that fsync returned;
//!   - after it: only the new log is redone.
//! * No redo overwrites a newer durable state: every other change of a file (DELETE, MOVE,
//!   quarantine, installs the journal cannot carry, checkpoints, REVERT, UNDO, UPLOAD, a
//!   large write, adoption, the removal of a vanished file) first calls [`Store::settle`]
//!   under the file's lock, which checkpoints (or waits for the checkpoint under way) while
//!   the file has an entry in either log, and returns only once that entry's log is durably
//!   gone; the file's lock keeps a new entry from appearing before that change is made. The
//!   store's file-system calls go through a guard ([`Guard`]) that refuses a rename, removal
//!   or link of a file's content or record while the file has an entry in either log, unless
//!   the calling thread is applying a journaled change: a forgotten settle fails loudly
//!   instead of leaving a redo that would undo it.
//! * A failed `fdatasync` of the log fails the changes waiting for it (their outcome is then
//!   unknown: the entry may or may not be durable, and a restart may redo it; the name server
//!   then meets a version it never acknowledged and sets it aside, as any change a dying
//!   writer saved) and closes the journal: changes take the direct path (`batch`) until a
//!   checkpoint has made everything durable and retired the log: a rotation of a closed
//!   journal keeps it closed (nothing goes into the new log) until the sealed set is durable
//!   and the sealed log's removal too. A sync of the new log failing during the sealed syncs
//!   closes it again, and only a later checkpoint, sealing that log, opens it. A failed
//!   append (a full disk) cuts the log back to where the frame began, so no part of it is
//!   left for a redo to read on into.
//! * A checkpoint whose sync failed (a sealed path or directory, or the sealed log's removal)
//!   is not retried, and neither is a change whose entry is
//!   durable but whose renames failed (its caller is told the change is saved but not in
//!   place): after a write-back error Linux may drop the pages and mark them clean, so a
//!   second fsync would answer Ok over lost bytes and the removal would throw away the
//!   log, the only copy known good. The journal fails instead (fail-stop, as a database does
//!   on a failed fsync): every change and checkpoint is refused, the storage server's
//!   checkpoint thread ends the process (its page cache survives, as after a crash; the
//!   partner takes over), and the next start redoes the logs durably before it serves. So no
//!   state is ever rewritten while readers are about, and no entry is applied twice.
//! * A redo keeps content it finds edited by hand (while the server was down) only when its
//!   bytes are neither the change's nor those it replaced AND its mtime is later than the
//!   change's; either alone would take a power cut's leftovers (the change's name without its
//!   bytes), or older content carrying a later mtime, for an edit and lose the change.

use super::*;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, RwLock, RwLockReadGuard};

/// Largest new or old content a content change may carry in a journal entry; larger changes
/// take the direct path.
pub const JOURNAL_MAX_CONTENT: u64 = 1 << 20;
/// Log size past which the change that appended checkpoints.
pub const JOURNAL_CHECKPOINT_BYTES: u64 = 64 << 20;
/// Default checkpoint period of a storage server.
pub const JOURNAL_CHECKPOINT_MS: u64 = 1000;
/// Paths tracked beyond which a checkpoint uses one `syncfs` rather than an fsync each.
const SYNCFS_ABOVE: usize = 64;
/// Bytes of a frame's header: length and crc32c.
const FRAME_HEAD: usize = 8;
/// Largest payload a frame may declare (two contents and a header); a larger one is torn.
const MAX_PAYLOAD: u64 = 2 * JOURNAL_MAX_CONTENT + (1 << 20);

/// What a journal entry says about its change, besides the bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Head {
    /// The canonical file name.
    pub file: String,
    /// The record after the change.
    pub meta: Meta,
    /// A content change: the history entry the old content becomes. None for a CREATE.
    pub blob: Option<String>,
    /// Bytes of new content following the head.
    pub new_len: u64,
    /// Bytes of old content following the new (0 for a CREATE).
    pub old_len: u64,
}

/// One decoded entry.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub head: Head,
    pub new: Vec<u8>,
    pub old: Vec<u8>,
}

/// The frame of an entry: length, crc32c, then the payload (head length (u32 LE), head JSON,
/// new content, old content).
pub(super) fn encode(head: &Head, new: &[u8], old: &[u8]) -> io::Result<Vec<u8>> {
    let h = serde_json::to_vec(head).map_err(io::Error::other)?;
    let payload_len = 4 + h.len() + new.len() + old.len();
    let mut out = Vec::with_capacity(FRAME_HEAD + payload_len);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(new);
    out.extend_from_slice(old);
    let crc = crc32c::crc32c(&out[FRAME_HEAD..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The complete entries of a log, in order, up to the first torn or damaged frame.
pub(super) fn decode(log: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while log.len() - at >= FRAME_HEAD {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(log[at + 4..at + 8].try_into().unwrap_or_default());
        let start = at + FRAME_HEAD;
        if len as u64 > MAX_PAYLOAD || log.len() - start < len {
            break;
        }
        let payload = &log[start..start + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        match parse_payload(payload) {
            Some(e) => out.push(e),
            None => break,
        }
        at = start + len;
    }
    out
}

fn parse_payload(p: &[u8]) -> Option<Entry> {
    let hl = u32::from_le_bytes(p.get(..4)?.try_into().ok()?) as usize;
    let head: Head = serde_json::from_slice(p.get(4..4 + hl)?).ok()?;
    let rest = p.get(4 + hl..)?;
    let (nl, ol) = (
        usize::try_from(head.new_len).ok()?,
        usize::try_from(head.old_len).ok()?,
    );
    if rest.len() != nl.checked_add(ol)? {
        return None;
    }
    Some(Entry {
        new: rest[..nl].to_vec(),
        old: rest[nl..].to_vec(),
        head,
    })
}

thread_local! {
    /// Whether this thread is applying a journaled change (see [`Guard`]).
    static APPLYING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as applying a journaled change while it lives.
pub(super) struct Applying(());

impl Applying {
    pub(super) fn begin() -> Applying {
        APPLYING.with(|a| a.set(true));
        Applying(())
    }
}

impl Drop for Applying {
    fn drop(&mut self) {
        APPLYING.with(|a| a.set(false));
    }
}

struct State {
    /// The current log, its path, and the bytes written to it / known durable.
    log: Arc<File>,
    path: PathBuf,
    len: u64,
    synced: u64,
    syncing: bool,
    /// A sync of the log failed: nothing more is appended until a checkpoint has made
    /// everything durable.
    broken: bool,
    /// A checkpoint's sync failed, a change's entry is durable but not in place, a reported
    /// change's flush failed, or a removal's sync failed: nothing more is appended or
    /// checkpointed; the storage server stops, and its restart redoes the logs (see the
    /// module docs).
    failed: bool,
    /// Files with an entry in the current log.
    pending: HashSet<String>,
    /// Files with an entry in the sealed log of the checkpoint under way, until that log's
    /// removal is durable.
    sealed: HashSet<String>,
    /// Paths and directories touched by journaled changes since the last rotation.
    paths: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    /// The `syncfs` window opened at the last rotation, if this kernel's `syncfs` reports
    /// every error.
    window: Option<durable::FsSync>,
    /// The next log, made durably ahead of the rotation that makes it current.
    spare: Option<(Arc<File>, PathBuf)>,
    /// The number the next log made takes (log numbers only grow).
    next: u64,
}

impl State {
    /// Whether `file` has an entry in the current log or in the sealed one.
    fn has_entry(&self, file: &str) -> bool {
        self.pending.contains(file) || self.sealed.contains(file)
    }
}

/// A removal or sync of a path that is gone already (removed since, or with the whole
/// store): nothing is left to make durable.
fn gone_is_done(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// What a rotation moved aside: the log and what its entries' changes touched.
struct Sealed {
    log: Arc<File>,
    path: PathBuf,
    paths: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    window: Option<durable::FsSync>,
    /// The log's sync had failed: the journal stays closed until these are durable.
    broken: bool,
}

/// The journal of a store (see the module docs).
pub(super) struct Journal {
    dir: PathBuf,
    st: Mutex<State>,
    wake: Condvar,
    /// Shared by changes from staging to tracking, exclusive to a checkpoint's rotation.
    gate: RwLock<()>,
    /// One checkpoint at a time.
    ckpt: Mutex<()>,
}

/// How an append ended.
pub(super) enum Appended {
    /// The entry is durable.
    Durable,
    /// The journal is closed after a failed sync; nothing was written: take the direct path.
    Closed,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the journal under `dir` (made durably if missing): returns it, with a new empty
    /// log made durable, and the complete entries of the logs found, in order, for the caller
    /// to redo; the old logs are removed by [`Journal::forget_old`] once they are redone.
    pub(super) fn open(fs: &dyn Fs, dir: &Path) -> io::Result<(Journal, Vec<Entry>, Vec<PathBuf>)> {
        fs.create_dirs_durable(dir)?;
        let mut logs: BTreeMap<u64, PathBuf> = BTreeMap::new();
        for e in fs.read_dir(dir)? {
            let p = e?.path();
            let n = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok());
            match n {
                Some(n) => {
                    logs.insert(n, p);
                }
                // Not a log (a leftover of something else): ignored.
                None => continue,
            }
        }
        let mut entries = Vec::new();
        for p in logs.values() {
            entries.extend(decode(&fs.read(p)?));
        }
        let next = logs.keys().next_back().map_or(0, |n| n + 1);
        let path = dir.join(format!("{next}.log"));
        let f = fs.create_new(&path)?;
        fs.sync_file(&f)?;
        fs.sync_dir(dir)?;
        let window = durable::FsSync::begin(dir).ok().flatten();
        let j = Journal {
            dir: dir.to_path_buf(),
            st: Mutex::new(State {
                log: Arc::new(f),
                path,
                len: 0,
                synced: 0,
                syncing: false,
                broken: false,
                failed: false,
                pending: HashSet::new(),
                sealed: HashSet::new(),
                paths: BTreeSet::new(),
                dirs: BTreeSet::new(),
                window,
                spare: None,
                next: next + 1,
            }),
            wake: Condvar::new(),
            gate: RwLock::new(()),
            ckpt: Mutex::new(()),
        };
        Ok((j, entries, logs.into_values().collect()))
    }

    /// Removes the logs redone at open, durably.
    pub(super) fn forget_old(&self, fs: &dyn Fs, old: &[PathBuf]) -> io::Result<()> {
        // Oldest first, each removal durable before the next: a power cut between two
        // removals must not leave an older log to be redone without the newer ones.
        for p in old {
            fs.remove_file(p)?;
            fs.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Enters the gate for one journaled change (see the module docs).
    pub(super) fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The error of a change whose entry is durable but whose renames failed (`e`): the
    /// journal fails, so the storage server stops and its restart puts the change in place.
    pub(super) fn unplaced(&self, file: &str, e: StoreError) -> StoreError {
        self.fail_for(
            file,
            "the change is saved in the journal but could not be put in place",
            &e,
            "its restart puts it in place",
        )
    }

    /// The error of a change whose entry's flush failed (`e`) after the change was reported
    /// as written (`change::Made::Written`): whether the entry survives is unknown, so
    /// the journal fails, the storage server stops, and its restart (which redoes the entry
    /// if it survived) lets the name server settle the report at registration.
    pub(super) fn unsynced(&self, file: &str, e: StoreError) -> StoreError {
        self.fail_for(
            file,
            "the change was reported once written to the journal but could not be flushed",
            &e,
            "its restart settles whether it was made",
        )
    }

    /// The error of a removal made whose directory sync failed (`e`): the journal fails, so
    /// the storage server stops (see `Store::delete`).
    pub(super) fn removal_unsynced(&self, file: &str, e: StoreError) -> StoreError {
        self.fail_for(
            file,
            "removed, but the removal could not be made durable",
            &e,
            "its restart settles whether the file is gone",
        )
    }

    /// Fails the journal because of `file`, whose change met `e` (the storage server stops):
    /// logs it, and answers "`what` (`e`); the storage server stops, and `then`".
    fn fail_for(&self, file: &str, what: &str, e: &StoreError, then: &str) -> StoreError {
        self.lock().failed = true;
        log::error!(target: ev::SS_SCAN, file = file;
            "{file}: {what} ({e}); the journal has failed");
        StoreError::Io {
            file: file.to_string(),
            source: io::Error::other(format!(
                "{what} ({e}); the storage server stops, and {then}"
            )),
        }
    }

    /// Whether the journal has failed (see [`State::failed`]).
    pub(super) fn has_failed(&self) -> bool {
        self.lock().failed
    }

    /// The error every change and checkpoint gets once the journal has failed.
    fn failed_error() -> io::Error {
        io::Error::other(
            "the storage server's journal has failed; the server stops, and its restart redoes \
             the journal",
        )
    }

    /// Whether `file` has an entry in the current log, or in the sealed log of a checkpoint
    /// under way whose removal is not yet durable.
    pub(super) fn is_pending(&self, file: &str) -> bool {
        self.lock().has_entry(file)
    }

    /// The path of the current log.
    #[cfg(test)]
    pub(super) fn log_path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    /// Bytes in the current log.
    #[cfg(test)]
    pub(super) fn log_len(&self) -> u64 {
        self.lock().len
    }

    /// How many files have an entry in the current log.
    #[cfg(test)]
    pub(super) fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    /// Whether the log has grown past [`JOURNAL_CHECKPOINT_BYTES`].
    pub(super) fn is_full(&self) -> bool {
        self.lock().len >= JOURNAL_CHECKPOINT_BYTES
    }

    /// Appends `frame` for `file`, whose change will touch `paths`, and returns once it is
    /// durable. The caller holds the gate (from [`Journal::enter`]) and the file's lock.
    pub(super) fn append(
        &self,
        fs: &dyn Fs,
        gate: &RwLockReadGuard<'_, ()>,
        file: &str,
        frame: &[u8],
        paths: &[PathBuf],
    ) -> io::Result<Appended> {
        match self.write(gate, file, frame, paths)? {
            None => Ok(Appended::Closed),
            Some(upto) => self.wait(fs, upto).map(|()| Appended::Durable),
        }
    }

    /// Writes `frame` for `file` (see [`Journal::append`]) without waiting for it to be
    /// durable: returns the log length [`Journal::wait`] must see synced, or None when the
    /// journal is closed (nothing was written). Several changes made under one hold of the
    /// gate (a batch of installs) write their frames and then wait once.
    pub(super) fn write(
        &self,
        _gate: &RwLockReadGuard<'_, ()>,
        file: &str,
        frame: &[u8],
        paths: &[PathBuf],
    ) -> io::Result<Option<u64>> {
        let mut st = self.lock();
        if st.failed {
            return Err(Self::failed_error());
        }
        if st.broken {
            return Ok(None);
        }
        let at = st.len;
        if let Err(e) = st.log.write_all_at(frame, at) {
            // Part of the frame may be written: cut it off, or a later, shorter frame would
            // leave its tail behind for the redo to read on. If even that fails, nothing more
            // is appended until a checkpoint has retired the log.
            if st.log.set_len(at).is_err() {
                st.broken = true;
            }
            return Err(e);
        }
        st.len = at + frame.len() as u64;
        st.pending.insert(file.to_string());
        for p in paths {
            st.paths.insert(p.clone());
            if let Some(d) = p.parent() {
                st.dirs.insert(d.to_path_buf());
            }
        }
        Ok(Some(st.len))
    }

    /// Returns once the log is durable up to `target` (from [`Journal::write`], under the
    /// same hold of the gate): one `fdatasync` shared by every change waiting meanwhile.
    pub(super) fn wait(&self, fs: &dyn Fs, target: u64) -> io::Result<()> {
        let mut st = self.lock();
        loop {
            if st.synced >= target {
                return Ok(());
            }
            if st.broken {
                return Err(io::Error::other(
                    "the journal could not be synced; the change may or may not survive a \
                     restart",
                ));
            }
            if !st.syncing {
                st.syncing = true;
                let upto = st.len;
                let log = st.log.clone();
                drop(st);
                let r = fs.sync_data(&log);
                st = self.lock();
                st.syncing = false;
                match r {
                    Ok(()) => st.synced = st.synced.max(upto),
                    Err(_) => st.broken = true,
                }
                self.wake.notify_all();
                continue;
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The checkpoint (see the module docs). Takes no file lock, so a caller may hold some.
    pub(super) fn checkpoint(&self, fs: &dyn Fs) -> io::Result<()> {
        self.checkpoint_for(fs, None)
    }

    /// [`Journal::checkpoint`]; with `files`, nothing more once none of them has an entry in
    /// either log (a checkpoint under way when called, waited for, made them durable).
    pub(super) fn checkpoint_for(&self, fs: &dyn Fs, files: Option<&[&str]>) -> io::Result<()> {
        let one = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_holding(fs, files, one)
    }

    /// [`Journal::checkpoint`] if the log is full, checked again once any checkpoint under
    /// way is done: the changes that all found the log full run one checkpoint, not one each.
    pub(super) fn checkpoint_if_full(&self, fs: &dyn Fs) -> io::Result<()> {
        if !self.is_full() {
            return Ok(());
        }
        let one = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_full() {
            return Ok(());
        }
        self.checkpoint_holding(fs, None, one)
    }

    /// The checkpoint, `ckpt` held (`_one`).
    fn checkpoint_holding(
        &self,
        fs: &dyn Fs,
        files: Option<&[&str]>,
        _one: std::sync::MutexGuard<'_, ()>,
    ) -> io::Result<()> {
        let spare = {
            let st = self.lock();
            if st.failed {
                return Err(Self::failed_error());
            }
            if files.is_some_and(|f| !f.iter().any(|f| st.has_entry(f))) {
                return Ok(());
            }
            st.spare.is_some()
        };
        // Made lazily when the last checkpoint could not, outside the gate; if it fails
        // again, this checkpoint empties the current log in place.
        if !spare {
            if let Err(e) = self.make_spare(fs) {
                log::warn!(target: ev::SS_SCAN,
                    "the journal's next log could not be made ({e}); \
                     this checkpoint empties the current log in place");
            }
        }
        let began = Instant::now();
        let excl = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let entered = began.elapsed();
        let mut st = self.lock();
        if st.failed {
            return Err(Self::failed_error());
        }
        if st.len == 0 && !st.broken && st.paths.is_empty() && st.dirs.is_empty() {
            return Ok(());
        }
        let Some((log, path)) = st.spare.take() else {
            return self.checkpoint_in_place(fs, st);
        };
        // The rotation: the current log and what its entries touched are sealed, the spare
        // becomes the current log, and a new window covers every byte a later change writes.
        let sealed = Sealed {
            log: std::mem::replace(&mut st.log, log),
            path: std::mem::replace(&mut st.path, path),
            paths: std::mem::take(&mut st.paths),
            dirs: std::mem::take(&mut st.dirs),
            window: st.window.take(),
            broken: st.broken,
        };
        st.sealed = std::mem::take(&mut st.pending);
        st.len = 0;
        st.synced = 0;
        st.window = durable::FsSync::begin(&self.dir).ok().flatten();
        drop(st);
        drop(excl);
        let held = began.elapsed() - entered;
        // Without the gate: the sealed set made durable in place, then its log removed,
        // durably.
        let done = Self::sync_set(fs, &self.dir, &sealed.paths, &sealed.dirs, &sealed.window)
            .and_then(|()| {
                drop(sealed.log);
                // Gone already, or the whole directory with it (the store removed from under
                // the server, as sealed paths and directories may be): nothing to redo is left.
                gone_is_done(fs.remove_file(&sealed.path))?;
                gone_is_done(fs.sync_dir(&self.dir))
            });
        let mut st = self.lock();
        if let Err(e) = done {
            return Err(Self::fail(&mut st, e));
        }
        st.sealed.clear();
        // Closed since before the rotation, so nothing was appended since: all is durable.
        if sealed.broken {
            st.broken = false;
        }
        drop(st);
        if let Err(e) = self.make_spare(fs) {
            log::warn!(target: ev::SS_SCAN,
                "the journal's next log could not be made ({e}); the next checkpoint tries again");
        }
        log::debug!(target: ev::SS_SCAN,
            "journal checkpoint: gate held exclusively {} us (after {} us waiting for it), \
             {} us in all",
            held.as_micros(), entered.as_micros(), began.elapsed().as_micros());
        Ok(())
    }

    /// The checkpoint without a spare log: everything under the gate, and the log emptied in
    /// place.
    fn checkpoint_in_place(
        &self,
        fs: &dyn Fs,
        mut st: std::sync::MutexGuard<'_, State>,
    ) -> io::Result<()> {
        let paths = std::mem::take(&mut st.paths);
        let dirs = std::mem::take(&mut st.dirs);
        let window = st.window.take();
        let log = st.log.clone();
        drop(st);
        let done = Self::sync_set(fs, &self.dir, &paths, &dirs, &window).and_then(|()| {
            // Every entry's change is durable in place: the log is emptied, durably.
            log.set_len(0)?;
            fs.sync_file(&log)
        });
        let mut st = self.lock();
        if let Err(e) = done {
            return Err(Self::fail(&mut st, e));
        }
        st.len = 0;
        st.synced = 0;
        st.broken = false;
        st.pending.clear();
        // Opened while the gate is held: it covers every byte a later change writes.
        st.window = durable::FsSync::begin(&self.dir).ok().flatten();
        Ok(())
    }

    /// Makes `paths` durable (an fsync each, or one `syncfs` through `window` when many),
    /// then `dirs`.
    fn sync_set(
        fs: &dyn Fs,
        dir: &Path,
        paths: &BTreeSet<PathBuf>,
        dirs: &BTreeSet<PathBuf>,
        window: &Option<durable::FsSync>,
    ) -> io::Result<()> {
        match (window, paths.len() > SYNCFS_ABOVE) {
            (Some(w), true) => fs.sync_fs_window(w, dir)?,
            _ => {
                let mut open = Vec::with_capacity(paths.len());
                for p in paths {
                    match fs.open(p) {
                        Ok(f) => open.push(f),
                        // Removed since (a removal settles first, so it is durable).
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                let refs: Vec<&File> = open.iter().collect();
                for r in fs.sync_files(&refs) {
                    r?;
                }
            }
        }
        for d in dirs {
            gone_is_done(fs.sync_dir(d))?;
        }
        Ok(())
    }

    /// A checkpoint's sync failed: the journal fails. Not retried: after a write-back error
    /// Linux may drop the pages and mark them clean, so a second fsync would answer Ok over
    /// lost bytes, and the log, the only copy known good, would be emptied. The server stops
    /// instead and its restart redoes the logs (see the module docs).
    fn fail(st: &mut State, e: io::Error) -> io::Error {
        st.failed = true;
        log::error!(target: ev::SS_SCAN, "journal checkpoint failed ({e}); the journal has failed");
        e
    }

    /// Makes the next log durably (the file, then its directory entry) unless one is
    /// ready. Called under `ckpt`, outside the gate.
    fn make_spare(&self, fs: &dyn Fs) -> io::Result<()> {
        let n = {
            let mut st = self.lock();
            if st.spare.is_some() {
                return Ok(());
            }
            st.next += 1;
            st.next - 1
        };
        let path = self.dir.join(format!("{n}.log"));
        let f = fs.create_new(&path)?;
        if let Err(e) = fs.sync_file(&f) {
            // A fresh, empty inode: nothing is lost, and an empty log left behind redoes
            // nothing.
            drop(f);
            let _ = fs.remove_file(&path);
            return Err(e);
        }
        if let Err(e) = fs.sync_dir(&self.dir) {
            // Not retried, as every failed sync of the journal's directory: a later fsync of
            // it might answer Ok over an entry the disk never got, and a log whose name is not
            // durable would lose what is appended to it.
            drop(f);
            let _ = fs.remove_file(&path);
            return Err(Self::fail(&mut self.lock(), e));
        }
        self.lock().spare = Some((Arc::new(f), path));
        Ok(())
    }
}

/// The store's file-system calls, refusing to rename, remove or link a file's content or
/// record while the file has an entry in the journal, unless the calling thread is applying a
/// journaled change (see the module docs): every other change must [`Store::settle`] first.
pub(super) struct Guard {
    pub inner: Arc<dyn Fs>,
    pub files: PathBuf,
    pub meta: PathBuf,
    pub journal: std::sync::OnceLock<Arc<Journal>>,
}

impl Guard {
    /// The file `path` is the content or record of, if any.
    fn file_of(&self, path: &Path) -> Option<String> {
        let rel = path
            .strip_prefix(&self.files)
            .or_else(|_| path.strip_prefix(&self.meta))
            .ok()?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect();
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    fn check(&self, paths: &[&Path]) -> io::Result<()> {
        if APPLYING.with(|a| a.get()) {
            return Ok(());
        }
        let Some(j) = self.journal.get() else {
            return Ok(());
        };
        for p in paths {
            if let Some(file) = self.file_of(p) {
                if j.is_pending(&file) {
                    debug_assert!(false, "{file} changed with a journal entry not settled");
                    return Err(io::Error::other(format!(
                        "{file} has a journal entry not settled; refusing to change it"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Fs for Guard {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.inner.create_new(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.inner.open(path)
    }
    // Opening changes nothing: a journaled change opens its record before its entry, while
    // an earlier entry of the file may be pending, and writes it only while applying.
    fn open_write(&self, path: &Path) -> io::Result<File> {
        self.inner.open_write(path)
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.inner.sync_file(f)
    }
    fn sync_data(&self, f: &File) -> io::Result<()> {
        self.inner.sync_data(f)
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        self.inner.sync_files(files)
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_fs(dir)
    }
    fn sync_fs_window(&self, w: &durable::FsSync, dir: &Path) -> io::Result<()> {
        self.inner.sync_fs_window(w, dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(&[from, to])?;
        self.inner.rename(from, to)
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.check(&[a, b])?;
        self.inner.exchange(a, b)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(&[from, to])?;
        self.inner.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(&[path])?;
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        self.inner.metadata(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<fs::ReadDir> {
        self.inner.read_dir(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
}

impl Store {
    /// Makes sure no journal entry of `file` is left to redo, checkpointing if there is one,
    /// so the change the caller is about to make cannot be undone by a redo. Caller holds
    /// `file`'s lock (so no new entry appears) and is not inside a journaled change.
    pub(super) fn settle(&self, file: &str) -> Result<(), StoreError> {
        self.settle_all(&[file])
    }

    /// [`Store::settle`] for several files (one checkpoint at most).
    ///
    /// Once the journal has failed it refuses: the server is about to stop, and no change
    /// outside the journal is made meanwhile on a disk whose state is in doubt (a DELETE
    /// repeated after one whose removal's sync failed would otherwise find the file gone).
    pub(super) fn settle_all(&self, files: &[&str]) -> Result<(), StoreError> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let first = files.first().copied().unwrap_or("journal/");
        if j.has_failed() {
            return Err(self.io(first, Journal::failed_error()));
        }
        if files.iter().any(|f| j.is_pending(f)) {
            j.checkpoint_for(&*self.fs, Some(files))
                .map_err(|e| self.io(first, e))?;
        }
        Ok(())
    }

    /// One checkpoint of `j`.
    fn run_checkpoint(&self, j: &Journal) -> io::Result<()> {
        j.checkpoint(&*self.fs)
    }

    /// Whether the journal has failed: a checkpoint's sync, putting a durable change in
    /// place, a reported change's flush or a removal's sync failed. Every change is then refused; the storage server must stop, and its
    /// restart redoes the journal (see the module docs).
    pub fn journal_failed(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| j.has_failed())
    }

    /// Makes every journaled change durable in place and retires its log (the storage
    /// server's checkpoint thread, and clean shutdown); changes appended meanwhile stay in the
    /// new log, redone at the next start.
    pub fn checkpoint_journal(&self) -> Result<(), StoreError> {
        match &self.journal {
            Some(j) => self.run_checkpoint(j).map_err(|e| self.io("journal/", e)),
            None => Ok(()),
        }
    }

    /// Checkpoints when the log has grown past its size; called by a change once it has left
    /// the gate.
    pub(super) fn checkpoint_if_full(&self) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.checkpoint_if_full(&*self.fs) {
                log::warn!(target: ev::SS_SCAN, "journal checkpoint failed: {e}");
            }
        }
    }

    /// Redoes one entry found at open, durably through the ordinary slow path.
    pub(super) fn redo(&self, e: &Entry) -> Result<(), StoreError> {
        let file = e.head.file.as_str();
        if names::canonical_file(file).ok().as_deref() != Some(file) {
            return Err(self.io(file, io::Error::other("journal entry names no valid file")));
        }
        if let Some(blob) = &e.head.blob {
            self.fs
                .replace(&self.tmp, &self.undo.join(blob), &e.old)
                .map_err(|err| self.io(file, err))?;
        }
        let mut meta = e.head.meta.clone();
        // Content edited by hand after the change (while the server was down) is kept, and
        // the scan adopts it on top of the redone record, as any hand edit. It is told by two
        // things at once: its bytes are neither the change's nor those it replaced, and its
        // mtime is later than the change's. Either alone is not enough: a power cut may leave
        // the change's name with none of its bytes (other bytes, the change's mtime), and
        // content from before the change may carry a later mtime (copied in with its times
        // from a host whose clock runs ahead); both must be redone.
        let path = self.content_path(file);
        if let Ok(md) = self.fs.metadata(&path) {
            if md.is_file() && mtime_ns(&md) > meta.mtime_ns {
                let now = self.fs.read(&path).map_err(|err| self.io(file, err))?;
                if now != e.new && (e.head.blob.is_none() || now != e.old) {
                    log::info!(target: ev::SS_ADOPT, file = file;
                        "{file} was edited by hand after its journaled change; keeping the edit");
                    return self.write_meta(file, &meta);
                }
            }
        }
        let mtime = u64::try_from(meta.mtime_ns)
            .ok()
            .filter(|n| *n > 0)
            .map(|n| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(n));
        let mut got = 0i128;
        self.fs
            .replace_with(&self.tmp, &path, &mut |f| {
                f.write_all(&e.new)?;
                if let Some(t) = mtime {
                    f.set_modified(t)?;
                }
                got = mtime_ns(&f.metadata()?);
                Ok(())
            })
            .map_err(|err| self.io(file, err))?;
        // The record must match the content's mtime, or the scan would adopt it anew.
        meta.mtime_ns = got;
        self.write_meta(file, &meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(file: &str, n: u64) -> Head {
        Head {
            file: file.into(),
            meta: Meta {
                version: Version {
                    epoch: 1,
                    counter: n,
                },
                checksum: 0,
                size: 0,
                mtime_ns: 0,
                words: 0,
                chars: 0,
                modified_ms: 0,
                owner: None,
                undo: Vec::new(),
            },
            blob: None,
            new_len: 3,
            old_len: 2,
        }
    }

    #[test]
    fn frames_round_trip_and_a_torn_or_damaged_tail_ends_the_log() {
        let mut log = encode(&head("a", 1), b"new", b"ol").unwrap();
        log.extend(encode(&head("b", 2), b"xyz", b"pq").unwrap());
        let got = decode(&log);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[1].head.file.as_str(), &got[1].new[..]),
            ("b", &b"xyz"[..])
        );
        assert_eq!(got[0].old, b"ol");
        let third = encode(&head("c", 3), b"new", b"ol").unwrap();
        for cut in 0..third.len() {
            let mut torn = log.clone();
            torn.extend_from_slice(&third[..cut]);
            assert_eq!(decode(&torn).len(), 2, "cut at {cut}");
        }
        let mut bad = log.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(decode(&bad).len(), 1);
        assert!(decode(&[0xff; 8]).is_empty());
    }
}
