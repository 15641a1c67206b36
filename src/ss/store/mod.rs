//! The storage server's on-disk layout and every change to it. This module is the one place
//! the layout is specified:
//!
//! ```text
//! DIR/files/<canonical name>        content, exactly the file's bytes
//! DIR/meta/<canonical name>         bookkeeping JSON (see [`Meta`]); the same relative path as
//!                                  the content, so a name maps to exactly one record and no
//!                                  file name can collide with another's record
//! DIR/undo/<blob id>                earlier contents referenced by undo stacks
//! DIR/checkpoints/<file hash>/      a file's checkpoints (see `checkpoints`): `index.json`
//!                                  (tag, creator, created, size, checksum of each) and one
//!                                  file per tag holding that checkpoint's bytes
//! DIR/tmp/                          temp files for atomic replacement; emptied at startup
//! DIR/journal/<n>.log               the write-ahead journal of small changes (see `journal`):
//!                                   redone at startup in numeric order; each checkpoint
//!                                   rotates to the next (made ahead) and removes the old
//! DIR/quarantine/<canonical name>.<epoch>-<counter>
//!                                   a copy set aside because it holds changes the cluster
//!                                   never acknowledged; `<epoch>-<counter>` is its version
//!                                   (0-0 when it had no record). A nested name keeps its
//!                                   folders as directories. Never served, never overwritten
//!                                   (a second copy at the same version is not set aside
//!                                   twice), never scanned or adopted; FSCK lists it.
//! DIR/quarantine/<canonical name>.<epoch>-<counter>.meta
//!                                   its bookkeeping JSON (see [`Meta`]) plus `file`, its
//!                                   full name. A leaf over 188 bytes (too long to take the
//!                                   suffix within 255 bytes) is cut on a char boundary and
//!                                   given `~<file hash>` ([`quarantine_base`]); its `.meta`
//!                                   is always written, so listings show the full name
//! ```
//!
//! The file hash is the first 16 hex digits of SHA-256 of the canonical name ([`file_hash`]):
//! a name maps to one directory whatever its folders, and no name can collide with another's.
//!
//! A copy is quarantined (see [`Store::quarantine`]) by renaming its content into
//! `quarantine/` (same file system, so nothing is copied and a crash leaves it in one place
//! or the other), writing the bookkeeping beside it durably, then removing the record under
//! `meta/`; the name server then installs the current copy as for any missing file.
//!
//! A history entry (undo blob) holds the content its file had at some version, and is named
//! after that version: `<file hash>-<epoch>.<counter>-<crc32c hex>`, where the file hash is
//! the first 16 hex digits of SHA-256 of the canonical name (see [`blob_id`]). Both copies of
//! a replicated file therefore name its history alike, and a target can say which entries it
//! already holds (PEEK_FILE) so a transfer sends only the missing ones.
//!
//! A content change (1) hard-links the current content into `undo/<new blob id>` (the old
//! inode survives the rename, so nothing is copied), (2) replaces the content atomically,
//! (3) replaces the record atomically. A crash between (2) and (3) leaves content whose size
//! or mtime disagrees with its bookkeeping, which the startup scan adopts as a new version, like
//! a hand edit. CREATE places the record first, then the empty content; a record without
//! content is an unfinished create and the scan removes it. Undo blobs referenced by no record
//! are removed too.
//!
//! So nothing is lost and no mix is ever visible: a reader sees the old version or the new
//! one, never part of each. A replicated copy (one, or a batch of them) is installed
//! checkpoints first, then history entries and content, then record, the record only once its
//! content, history entries and their directories are durable (see `install.rs`); a crash in
//! between is the same case
//! as a crash between (2) and (3) above.
//!
//! A CREATE and a small commit (`write_content`, new and old content each at most
//! [`JOURNAL_MAX_CONTENT`]) go through the write-ahead journal (see `journal`, which gives
//! the crash-safety argument): the new content and record are staged in `tmp/` unsynced (a
//! commit's record excepted, below), ONE journal entry holding everything needed to redo
//! the change (the record, the new content, and for a commit the old content and its
//! history entry's id) is appended and made durable by one `fdatasync` of the log shared
//! with every change appending meanwhile, and only then are the old content linked into
//! `undo/` and the staged files renamed into place, without any fsync (a commit's record, when
//! it has room, is overwritten in place instead of staged, so a commit allocates one inode,
//! not two; readers of a record hold its file's lock). A checkpoint (every
//! `--journal-checkpoint-ms`, when the log is large, at clean shutdown, and before any
//! other change of a file with an entry in the log) rotates to a spare log made durably
//! ahead of time, holding the journal's gate only for the swap; then, while changes append
//! to the new log, it fsyncs every path the sealed log's changes touched and each directory
//! once, and removes the sealed log durably; startup redoes every complete entry of every
//! log, in order, durably before the scan. Every other change first settles its file
//! ([`Store::settle`], under the file's lock), so no redo overwrites a newer state.
//!
//! Without the journal (a large commit, an upload, undo, revert; and CREATE while the
//! journal is closed after a failed sync) a change makes its durable calls as one job of
//! the store's group commit (see `batch`): CREATEs made at the same time share a batch, a
//! content change runs its job alone on its own thread. The change first writes, without
//! syncing, its new content (a CREATE: an empty file) and its new record to temp files in
//! `tmp/` (the record carries the content's mtime, which the rename keeps) and, for a content
//! change, links the old content into `undo/`. Then, in order: the temp files are fsynced,
//! then `undo/`; the first rename is made (a content change: the content over
//! `files/<name>`; a CREATE: the record over `meta/<name>`) and its directory fsynced; then
//! the second (the record; a CREATE: the content) and its directory fsynced. CREATEs batched
//! together share each of those fsyncs' journal commits and each directory fsync. The
//! change's reply waits for its last fsync. Other replacements (adoption, quarantine,
//! checkpoints) are [`Fs::replace_with`]: a temp file written and fsynced, renamed over the
//! target, and the target's directory fsynced. All of them go through the store's [`Fs`]
//! (see [`vfs`]), which a test backend can record or fault.
//!
//! Callers that combine several steps (a commit reads, edits and writes) hold the file's mutex
//! from [`Store::file_lock`] for the whole sequence; the methods that say so require it.
//!
//! Modules: `layout` (paths and names), `record` ([`Meta`] and reading a file with it),
//! `change` (the change protocol above: content changes, CREATE, DELETE, history entries),
//! `batch` (the group commit of changes), `journal` (the write-ahead journal of small
//! changes),
//! `install` (received copies and stages), `scan` (adoption, the startup scan, verification),
//! `quarantine`, `checkpoints` and `moves` (folders and MOVE).

// These imports serve the child modules too: each takes them, and the items below, with
// `use super::*`.
use crate::durable;
use crate::logging::ev;
use crate::names;
use crate::protocol::{
    err, CheckpointInfo, FileState, HeldCopy, QuarantineEntry, UndoDesc, Version, WireError,
};
use crate::ss::textcount::TextCount;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod batch;
mod change;
mod checkpoints;
mod install;
mod journal;
#[cfg(test)]
mod journal_tests;
mod layout;
mod moves;
mod quarantine;
mod record;
mod scan;
#[cfg(test)]
mod tests;
pub mod vfs;

pub use change::Made;
pub use checkpoints::MAX_CHECKPOINTS;
pub use install::{Basis, CopyIn, TempFile, Transfer};
pub use journal::{JOURNAL_CHECKPOINT_BYTES, JOURNAL_CHECKPOINT_MS, JOURNAL_MAX_CONTENT};
pub use layout::{
    blob_id, file_hash, parse_blob_id, parse_quarantine_name, quarantine_base, quarantine_rel,
};
pub use record::{copy_counting, ContentCounter, ContentFacts, Meta};
pub use vfs::{Fs, OsFs};
// What the submodules take from their siblings.
use change::{content_saved, place, place_unsynced, Change, RecordPut, Source};
use layout::{is_cut_base, leaf_of, tighten_root, walk};
use record::mtime_ns;

/// Most undo steps kept per file (SPEC asks for at least 10).
pub const UNDO_DEPTH: usize = 16;

/// Errors of the store, mapped to wire errors at the server boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file does not exist here.
    #[error("file {0} not found")]
    NotFound(String),
    /// CREATE of a file that exists.
    #[error("file {0} already exists")]
    Exists(String),
    /// UNDO with an empty stack.
    #[error("nothing to undo for {0}")]
    NoUndo(String),
    /// The disk (or quota) is full; the old content is intact.
    #[error("disk full on {ss}; {file} is unchanged")]
    DiskFull {
        /// This server.
        ss: String,
        /// The file whose change failed.
        file: String,
    },
    /// Editing a file whose content is not UTF-8.
    #[error("file is not text")]
    NotText,
    /// A transfer lacks history entries this copy does not hold either.
    #[error("transfer of {0} is missing history entries")]
    Incomplete(String),
    /// CHECKPOINT with a tag the file already has.
    #[error("checkpoint '{tag}' already exists for {file}")]
    CheckpointExists {
        /// The file.
        file: String,
        /// The tag.
        tag: String,
    },
    /// A tag the file has no checkpoint for.
    #[error("no checkpoint '{tag}' for {file}")]
    NoCheckpoint {
        /// The file.
        file: String,
        /// The tag.
        tag: String,
    },
    /// The file holds the most checkpoints allowed.
    #[error("{0} already has {MAX_CHECKPOINTS} checkpoints")]
    TooManyCheckpoints(String),
    /// Any other local I/O failure.
    #[error("storage i/o on {file}: {source}")]
    Io {
        /// The file concerned (or a directory).
        file: String,
        /// The cause.
        source: io::Error,
    },
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> WireError {
        let msg = e.to_string();
        match e {
            StoreError::NotFound(_) => err::not_found(msg),
            StoreError::Exists(_) => err::conflict(msg),
            StoreError::NoUndo(_) => err::no_undo(msg),
            StoreError::CheckpointExists { .. } => err::conflict(msg),
            StoreError::NoCheckpoint { .. } => err::not_found(msg),
            StoreError::TooManyCheckpoints(_) => err::limit(msg),
            StoreError::DiskFull { .. } => err::limit(msg),
            StoreError::NotText | StoreError::Incomplete(_) => err::invalid(msg),
            StoreError::Io { .. } => err::internal(msg),
        }
    }
}

/// The storage directory and the per-file mutexes that serialise changes.
pub struct Store {
    name: String,
    files: PathBuf,
    meta: PathBuf,
    undo: PathBuf,
    ckpt: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    epoch: Arc<AtomicU64>,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Where the file-system calls go (see [`vfs`]), through the journal's guard.
    fs: Arc<dyn Fs>,
    /// The group commit of changes (see `batch`).
    batch: batch::Batcher,
    /// The write-ahead journal of small changes (see `journal`); None only in tests of the
    /// direct path.
    journal: Option<Arc<journal::Journal>>,
}

impl Store {
    /// Opens (creating if needed) the layout under `root` for server `name`, and empties
    /// `tmp/`. Does not scan; call [`Store::scan`].
    pub fn open(root: &Path, name: &str) -> Result<Store, StoreError> {
        Store::open_on(Arc::new(OsFs), root, name)
    }

    /// [`Store::open`] with its file-system calls going to `fs`. Empties `tmp/`, then redoes
    /// every complete entry of the journal (see `journal`) before returning.
    pub fn open_on(fs: Arc<dyn Fs>, root: &Path, name: &str) -> Result<Store, StoreError> {
        Store::open_with(fs, root, name, true)
    }

    /// [`Store::open_on`] without a journal: every change takes the direct path (`batch`).
    #[cfg(test)]
    pub(crate) fn open_unjournaled(
        fs: Arc<dyn Fs>,
        root: &Path,
        name: &str,
    ) -> Result<Store, StoreError> {
        Store::open_with(fs, root, name, false)
    }

    fn open_with(
        fs: Arc<dyn Fs>,
        root: &Path,
        name: &str,
        journaled: bool,
    ) -> Result<Store, StoreError> {
        let io_err = |source| StoreError::Io {
            file: root.display().to_string(),
            source,
        };
        let guard = Arc::new(journal::Guard {
            inner: fs,
            files: root.join("files"),
            meta: root.join("meta"),
            journal: std::sync::OnceLock::new(),
        });
        let mut s = Store {
            name: name.to_string(),
            files: root.join("files"),
            meta: root.join("meta"),
            undo: root.join("undo"),
            ckpt: root.join("checkpoints"),
            tmp: root.join("tmp"),
            quarantine: root.join("quarantine"),
            epoch: Arc::new(AtomicU64::new(1)),
            locks: Mutex::new(HashMap::new()),
            fs: guard.clone(),
            batch: batch::Batcher::default(),
            journal: None,
        };
        s.fs.create_dirs_durable(root).map_err(io_err)?;
        tighten_root(root).map_err(io_err)?;
        for d in [&s.files, &s.meta, &s.undo, &s.ckpt, &s.tmp] {
            s.fs.create_dirs_durable(d).map_err(io_err)?;
        }
        for e in s.fs.read_dir(&s.tmp).map_err(io_err)? {
            let p = e.map_err(io_err)?.path();
            if s.fs.is_dir(&p) {
                let _ = s.fs.remove_dir_all(&p);
            } else {
                let _ = s.fs.remove_file(&p);
            }
        }
        if journaled {
            let (j, entries, old) =
                journal::Journal::open(&*s.fs, &root.join("journal")).map_err(io_err)?;
            for e in &entries {
                s.redo(e)?;
            }
            if !entries.is_empty() {
                log::info!(target: ev::SS_SCAN, entries = entries.len() as u64;
                    "redid {} journal entries", entries.len());
            }
            j.forget_old(&*s.fs, &old).map_err(io_err)?;
            let j = Arc::new(j);
            let _ = guard.journal.set(j.clone());
            s.journal = Some(j);
        }
        Ok(s)
    }

    /// The epoch new versions are stamped with; the name server link updates it.
    pub fn epoch(&self) -> &Arc<AtomicU64> {
        &self.epoch
    }

    /// The directory holding file content (`DIR/files`).
    pub fn content_dir(&self) -> &Path {
        &self.files
    }

    /// This server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mutex serialising changes of `file`. Entries are dropped on delete.
    pub fn file_lock(&self, file: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(file.to_string()).or_default().clone()
    }

    fn io(&self, file: &str, source: io::Error) -> StoreError {
        if durable::is_disk_full(&source) {
            StoreError::DiskFull {
                ss: self.name.clone(),
                file: names::display(file),
            }
        } else {
            StoreError::Io {
                file: file.to_string(),
                source,
            }
        }
    }

    /// Maps an I/O error on `file` to a store error (disk full becomes [`StoreError::DiskFull`]).
    pub fn io_error(&self, file: &str, e: io::Error) -> StoreError {
        self.io(file, e)
    }
}
