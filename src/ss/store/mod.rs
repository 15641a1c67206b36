//! The storage server's on-disk layout and every change to it. This module is the one place
//! the layout is specified:
//!
//! ```text
//! DIR/files/<canonical name>        content, exactly the file's bytes
//! DIR/meta/<canonical name>         bookkeeping JSON (see [`Meta`]); the same relative path as
//!                                  the content, so a name maps to exactly one record and no
//!                                  file name can collide with another's record
//! DIR/undo/<blob id>                earlier contents referenced by undo stacks
//! DIR/checkpoints/<file hash>/      a file's checkpoints (see `checkpoints.rs`): `index.json`
//!                                  (tag, creator, created, size, checksum of each) and one
//!                                  file per tag holding that checkpoint's bytes
//! DIR/tmp/                          temp files for atomic replacement; emptied at startup
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
//! a hand edit. CREATE writes the record first; a record without content is an unfinished
//! create and the scan removes it. Undo blobs referenced by no record are removed too.
//!
//! Callers that combine several steps (a commit reads, edits and writes) hold the file's mutex
//! from [`Store::file_lock`] for the whole sequence; the methods that say so require it.

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
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod checkpoints;
mod moves;

pub use checkpoints::MAX_CHECKPOINTS;

/// Threads a scan uses to adopt files.
const SCAN_THREADS: usize = 4;
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

/// Per-file bookkeeping, stored as JSON in `meta/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Current version.
    pub version: Version,
    /// CRC32C of the content.
    pub checksum: u32,
    /// Content size in bytes, as last recorded.
    pub size: u64,
    /// Content mtime in nanoseconds, as last recorded; a mismatch means a hand edit.
    pub mtime_ns: i128,
    /// Whitespace-separated words.
    pub words: u64,
    /// Unicode scalar values.
    pub chars: u64,
    /// Unix milliseconds of the last content change.
    pub modified_ms: u64,
    /// Owner, if known (absent for hand-placed files).
    #[serde(default)]
    pub owner: Option<String>,
    /// Undo blob ids, newest last.
    #[serde(default)]
    pub undo: Vec<String>,
}

impl Meta {
    /// The wire form of this record for `file`.
    pub fn state(&self, file: &str) -> FileState {
        FileState {
            file: file.to_string(),
            version: self.version,
            checksum: self.checksum,
            size: self.size,
            words: self.words,
            chars: self.chars,
            modified_ms: self.modified_ms,
            owner: self.owner.clone(),
        }
    }
}

/// Facts about content computed from its bytes.
#[derive(Debug, Clone)]
pub struct ContentFacts {
    /// CRC32C of the content.
    pub checksum: u32,
    /// Bytes.
    pub size: u64,
    /// Mtime of the file the facts were taken from, in nanoseconds (0 for a stream).
    pub mtime_ns: i128,
    /// Whitespace-separated words.
    pub words: u64,
    /// Characters of the content read as UTF-8, invalid sequences counting one each.
    pub chars: u64,
}

/// Checksum, size, words and characters of content computed as its bytes stream past, so no
/// file is ever held whole in memory. The counts equal `document::count_words` and
/// `document::count_chars` over `String::from_utf8_lossy` of the whole content, so text and
/// binary content are counted alike however the bytes are split into chunks (see
/// [`TextCount`]).
#[derive(Debug, Default)]
pub struct ContentCounter {
    crc: u32,
    size: u64,
    /// None when only checksum and size are wanted (a replicated copy carries its counts), or
    /// while the text is being counted elsewhere (see [`ContentCounter::take_text`]).
    text: Option<TextCount>,
}

impl ContentCounter {
    /// A counter that has seen nothing.
    pub fn new() -> ContentCounter {
        ContentCounter {
            text: Some(TextCount::new()),
            ..ContentCounter::default()
        }
    }

    /// A counter of checksum and size only, for content whose counts are known already.
    pub fn bytes_only() -> ContentCounter {
        ContentCounter::default()
    }

    /// A counter standing for content of `size` bytes with `checksum` that was counted
    /// and verified when it arrived (an upload staged by the partner).
    pub fn known(size: u64, checksum: u32) -> ContentCounter {
        ContentCounter {
            crc: checksum,
            size,
            text: None,
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// CRC32C of the bytes seen so far.
    pub fn checksum(&self) -> u32 {
        self.crc
    }

    /// Takes the next bytes of the content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.size += bytes.len() as u64;
        if let Some(t) = self.text.as_mut() {
            t.update(bytes);
        }
    }

    /// Takes the word and character counting out, so another thread can do it while this one
    /// receives and writes (the caller feeds it the same bytes and puts it back).
    pub fn take_text(&mut self) -> Option<TextCount> {
        self.text.take()
    }

    /// Puts back the counting taken by [`ContentCounter::take_text`].
    pub fn put_text(&mut self, text: TextCount) {
        self.text = Some(text);
    }

    /// The facts of everything seen (an unfinished sequence at the end counts as one char).
    pub fn finish(self, mtime_ns: i128) -> ContentFacts {
        let (words, chars) = self.text.as_ref().map_or((0, 0), TextCount::finish);
        ContentFacts {
            checksum: self.crc,
            size: self.size,
            mtime_ns,
            words,
            chars,
        }
    }
}

/// The name of the history entry holding `file`'s content at `version` with `checksum`: a
/// hash of the name keeps entries of different files apart in the one `undo/` directory, the
/// version and checksum make the name the same on every copy of the file.
pub fn blob_id(file: &str, version: Version, checksum: u32) -> String {
    format!(
        "{}-{}.{}-{checksum:08x}",
        file_hash(file),
        version.epoch,
        version.counter
    )
}

/// The first 16 hex digits of SHA-256 of a canonical name: how history entries and the
/// checkpoint directory of a file are named.
pub fn file_hash(file: &str) -> String {
    let h = Sha256::digest(file.as_bytes());
    hex::encode(&h[..8])
}

/// The version and checksum a history entry's name says it holds (None for names of another
/// form, such as entries written before entries were named by version).
pub fn parse_blob_id(id: &str) -> Option<(Version, u32)> {
    let mut parts = id.split('-');
    let _hash = parts.next()?;
    let (epoch, counter) = parts.next()?.split_once('.')?;
    let crc = u32::from_str_radix(parts.next()?, 16).ok()?;
    if parts.next().is_some() {
        return None;
    }
    let version = Version {
        epoch: epoch.parse().ok()?,
        counter: counter.parse().ok()?,
    };
    Some((version, crc))
}

/// Largest piece [`copy_counting`] reads at once.
const COPY_BUF_BYTES: usize = 256 * 1024;

/// Copies `from` into `to` in bounded pieces, feeding each piece to `counter`. `size_hint`
/// (the expected length) keeps the buffer small for small files: a scan adopts thousands.
pub fn copy_counting(
    from: &mut impl Read,
    to: &mut impl Write,
    counter: &mut ContentCounter,
    size_hint: u64,
) -> io::Result<()> {
    let len = usize::try_from(size_hint).map_or(COPY_BUF_BYTES, |n| n.clamp(1, COPY_BUF_BYTES));
    let mut buf = vec![0u8; len];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        counter.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
}

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

/// Makes the storage root 0700 when group or others may enter it (a directory created by an
/// older version, or by hand, with 0755): that alone puts everything under it out of their
/// reach, whatever the modes of the files inside.
fn tighten_root(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(root)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(durable::DIR_MODE))?;
        log::warn!(target: crate::logging::ev::SS_STORAGE_MODE,
            dir = root.display().to_string(), was = format!("{mode:04o}");
            "storage directory {} had mode {mode:04o}; changed to 0700 so that only this \
             server's user can reach the stored files", root.display());
    }
    Ok(())
}

fn mtime_ns(md: &fs::Metadata) -> i128 {
    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
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
}

impl Store {
    /// Opens (creating if needed) the layout under `root` for server `name`, and empties
    /// `tmp/`. Does not scan; call [`Store::scan`].
    pub fn open(root: &Path, name: &str) -> Result<Store, StoreError> {
        let io_err = |source| StoreError::Io {
            file: root.display().to_string(),
            source,
        };
        let s = Store {
            name: name.to_string(),
            files: root.join("files"),
            meta: root.join("meta"),
            undo: root.join("undo"),
            ckpt: root.join("checkpoints"),
            tmp: root.join("tmp"),
            quarantine: root.join("quarantine"),
            epoch: Arc::new(AtomicU64::new(1)),
            locks: Mutex::new(HashMap::new()),
        };
        durable::create_dirs_durable(root).map_err(io_err)?;
        tighten_root(root).map_err(io_err)?;
        for d in [&s.files, &s.meta, &s.undo, &s.ckpt, &s.tmp] {
            durable::create_dirs_durable(d).map_err(io_err)?;
        }
        for e in fs::read_dir(&s.tmp).map_err(io_err)? {
            let p = e.map_err(io_err)?.path();
            if p.is_dir() {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
        Ok(s)
    }

    /// The epoch new versions are stamped with; the name server link updates it.
    pub fn epoch(&self) -> &Arc<AtomicU64> {
        &self.epoch
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

    /// Path of the content of a canonical file name.
    pub fn content_path(&self, file: &str) -> PathBuf {
        self.files.join(file)
    }

    fn meta_path(&self, file: &str) -> PathBuf {
        self.meta.join(file)
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

    fn read_meta(&self, file: &str) -> Option<Meta> {
        let bytes = fs::read(self.meta_path(file)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_meta(&self, file: &str, meta: &Meta) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| self.io(file, io::Error::other(e)))?;
        durable::replace(&self.tmp, &self.meta_path(file), &bytes).map_err(|e| self.io(file, e))
    }

    /// Writes bookkeeping atomically but without fsync. Scans use it: adopting 10,000 files
    /// with two fsyncs each takes far too long, and losing such a record in a crash only
    /// means the file is adopted again. The scan syncs the file system once at its end.
    fn write_meta_relaxed(&self, file: &str, meta: &Meta) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| self.io(file, io::Error::other(e)))?;
        let target = self.meta_path(file);
        let tmp = durable::temp_path(&self.tmp);
        let res = (|| {
            durable::create_new(&tmp)?.write_all(&bytes)?;
            if let Some(parent) = target.parent() {
                durable::create_dir_all(parent)?;
            }
            fs::rename(&tmp, &target)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map_err(|e| self.io(file, e))
    }

    /// Reads the content in bounded pieces and computes checksum and counts (what adoption
    /// and commits record).
    fn facts(&self, file: &str) -> Result<ContentFacts, StoreError> {
        let path = self.content_path(file);
        let mut f = File::open(&path).map_err(|e| self.io(file, e))?;
        let md = f.metadata().map_err(|e| self.io(file, e))?;
        let mut counter = ContentCounter::new();
        copy_counting(&mut f, &mut io::sink(), &mut counter, md.len() + 1)
            .map_err(|e| self.io(file, e))?;
        Ok(counter.finish(mtime_ns(&md)))
    }

    fn next_version(&self, old: Option<&Meta>) -> Version {
        let epoch = self.epoch.load(Ordering::SeqCst);
        match old {
            Some(m) => m.version.next(epoch),
            None => Version { epoch, counter: 1 },
        }
    }

    /// Takes content that disagrees with its bookkeeping (or has none) as a new version.
    fn adopt(&self, file: &str, old: Option<Meta>, durable: bool) -> Result<Meta, StoreError> {
        let f = self.facts(file)?;
        let meta = Meta {
            version: self.next_version(old.as_ref()),
            checksum: f.checksum,
            size: f.size,
            mtime_ns: f.mtime_ns,
            words: f.words,
            chars: f.chars,
            modified_ms: crate::auth::now_ms(),
            owner: old.as_ref().and_then(|m| m.owner.clone()),
            undo: old.map(|m| m.undo).unwrap_or_default(),
        };
        // A scan may adopt thousands of files: it logs them per file at debug level and
        // once in summary; an access logs its one adoption at info.
        let level = if durable {
            self.write_meta(file, &meta)?;
            log::Level::Info
        } else {
            self.write_meta_relaxed(file, &meta)?;
            log::Level::Debug
        };
        log::log!(target: ev::SS_ADOPT, level, file = file, version = meta.version.to_string();
            "adopted {file} as version {}", meta.version);
        Ok(meta)
    }

    /// The current bookkeeping of `file`, adopting the content first if it was changed by
    /// hand. Returns whether it adopted (the caller reports the change). Caller holds the lock.
    pub fn current(&self, file: &str) -> Result<(Meta, bool), StoreError> {
        self.current_with(file, true)
    }

    /// [`Store::current`], with the adopted record written durably or not (scans).
    fn current_with(&self, file: &str, durable: bool) -> Result<(Meta, bool), StoreError> {
        let md = match fs::metadata(self.content_path(file)) {
            Ok(md) if md.is_file() => md,
            Ok(_) => return Err(StoreError::NotFound(names::display(file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(names::display(file)))
            }
            Err(e) => return Err(self.io(file, e)),
        };
        match self.read_meta(file) {
            Some(m) if m.size == md.len() && m.mtime_ns == mtime_ns(&md) => Ok((m, false)),
            old => Ok((self.adopt(file, old, durable)?, true)),
        }
    }

    /// Opens the content for reading together with its bookkeeping, under the file lock, so
    /// the reader sees one whole version even if a commit replaces the file meanwhile.
    pub fn snapshot(&self, file: &str) -> Result<(File, Meta, bool), StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (meta, adopted) = self.current(file)?;
        let f = File::open(self.content_path(file)).map_err(|e| self.io(file, e))?;
        Ok((f, meta, adopted))
    }

    /// The content as text with its bookkeeping. Caller holds the lock.
    pub fn load_text(&self, file: &str) -> Result<(String, Meta, bool), StoreError> {
        let (meta, adopted) = self.current(file)?;
        let bytes = fs::read(self.content_path(file)).map_err(|e| self.io(file, e))?;
        let text = String::from_utf8(bytes).map_err(|_| StoreError::NotText)?;
        Ok((text, meta, adopted))
    }

    /// Replaces the content of `file` (whose bookkeeping is `old`) with `bytes` as a new
    /// version, saving the old content as an undo step. Caller holds the lock.
    pub fn write_content(&self, file: &str, old: Meta, bytes: &[u8]) -> Result<Meta, StoreError> {
        self.write_with(file, old, Some(Source::Bytes(bytes)), None)
    }

    /// Saves the current content of `file` (at `old.version`) as a history entry by hard
    /// link: the old inode survives the rename that follows, so nothing is copied.
    fn link_history(&self, file: &str, old: &Meta) -> Result<String, StoreError> {
        let blob = blob_id(file, old.version, old.checksum);
        let path = self.undo.join(&blob);
        match fs::hard_link(self.content_path(file), &path) {
            Ok(()) => {}
            // A leftover of a change that failed after linking: the same version's content.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(&path);
                fs::hard_link(self.content_path(file), &path).map_err(|e| self.io(file, e))?;
            }
            Err(e) => return Err(self.io(file, e)),
        }
        durable::fsync_dir(&self.undo).map_err(|e| self.io(file, e))?;
        Ok(blob)
    }

    /// The common path of commits, uploads and undo: a `source` of new content saves the old
    /// content as a history entry first; `pop`
    /// (undo) takes the new content from the newest blob and removes it afterwards.
    fn write_with(
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
                Source::Bytes(bytes) => durable::replace(&self.tmp, &target, bytes),
                Source::Temp(tmp, _) => install_temp(tmp, &target),
            };
            if let Err(e) = res {
                let _ = fs::remove_file(self.undo.join(&blob));
                return Err(self.io(file, e));
            }
            undo.push(blob.clone());
            new_blob = Some(blob);
        } else if let Some(blob) = &pop {
            let src = self.undo.join(blob);
            durable::replace_with(&self.tmp, &target, |out| {
                let mut inp = File::open(&src)?;
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
            Some(f) => fs::metadata(&target)
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
                    let _ = fs::remove_file(self.undo.join(b));
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
            let _ = fs::remove_file(self.undo.join(b));
        }
        Ok(meta)
    }

    /// CREATE: bookkeeping first, then the empty content, both durable.
    pub fn create(&self, file: &str, owner: &str, epoch: u64) -> Result<Meta, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.content_path(file);
        if target.exists() {
            return Err(StoreError::Exists(names::display(file)));
        }
        let mut meta = Meta {
            version: Version { epoch, counter: 1 },
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
        durable::replace(&self.tmp, &target, b"").map_err(|e| self.io(file, e))?;
        let md = fs::metadata(&target).map_err(|e| self.io(file, e))?;
        meta.mtime_ns = mtime_ns(&md);
        self.write_meta(file, &meta)?;
        Ok(meta)
    }

    /// DELETE: content, bookkeeping and undo blobs. Caller holds the lock.
    pub fn delete(&self, file: &str) -> Result<(), StoreError> {
        let meta = self.read_meta(file);
        let existed = durable::remove(&self.content_path(file)).map_err(|e| self.io(file, e))?;
        durable::remove(&self.meta_path(file)).map_err(|e| self.io(file, e))?;
        for b in meta.map(|m| m.undo).unwrap_or_default() {
            let _ = fs::remove_file(self.undo.join(b));
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

    /// Sets this copy of `file` aside into `quarantine/` unless it is at version `keep`.
    /// Returns the quarantined content's path relative to the storage directory, or `None`
    /// when there was nothing to set aside. Caller holds the lock.
    pub fn quarantine(
        &self,
        file: &str,
        keep: Option<Version>,
    ) -> Result<Option<String>, StoreError> {
        let meta = self.read_meta(file);
        let content = self.content_path(file);
        let has_content = content.exists();
        if !has_content && meta.is_none() {
            return Ok(None);
        }
        if meta.as_ref().is_some_and(|m| Some(m.version) == keep) && has_content {
            return Ok(None);
        }
        let v = meta.as_ref().map_or(
            Version {
                epoch: 0,
                counter: 0,
            },
            |m| m.version,
        );
        let rel = quarantine_rel(file, v);
        let dest = self.quarantine.join(&rel);
        let dir = dest
            .parent()
            .map_or_else(|| self.quarantine.clone(), Path::to_path_buf);
        durable::create_dirs_durable(&dir).map_err(|e| self.io(file, e))?;
        // The same version was set aside before (a retried job): that entry and its
        // bookkeeping are kept as they are.
        let kept = has_content && dest.exists();
        let meta_dest = self.quarantine.join(format!("{rel}.meta"));
        // The bookkeeping first, with the file's full name (a long leaf is cut in the entry's
        // name): a crash before the content moves leaves the entry's name known.
        let shortened = quarantine_base(file) != leaf_of(file);
        if (meta.is_some() || shortened) && !(kept && meta_dest.exists()) {
            let mut doc = match &meta {
                Some(m) => serde_json::to_value(m),
                None => Ok(serde_json::Value::Object(Default::default())),
            }
            .map_err(|e| self.io(file, io::Error::other(e)))?;
            if let Some(o) = doc.as_object_mut() {
                o.insert("file".into(), serde_json::Value::String(file.to_string()));
            }
            let bytes = serde_json::to_vec(&doc).map_err(|e| self.io(file, io::Error::other(e)))?;
            durable::replace(&self.tmp, &meta_dest, &bytes).map_err(|e| self.io(file, e))?;
        }
        if kept {
            durable::remove(&content).map_err(|e| self.io(file, e))?;
        } else if has_content {
            fs::rename(&content, &dest).map_err(|e| self.io(file, e))?;
            durable::fsync_dir(&dir).map_err(|e| self.io(file, e))?;
            if let Some(parent) = content.parent() {
                durable::fsync_dir(parent).map_err(|e| self.io(file, e))?;
            }
        }
        durable::remove(&self.meta_path(file)).map_err(|e| self.io(file, e))?;
        Ok(Some(format!("quarantine/{rel}")))
    }

    /// Drops the bookkeeping of a file whose content vanished (deleted by hand). Returns
    /// whether there was any, i.e. whether the name server should hear about it.
    pub fn forget_vanished(&self, file: &str) -> bool {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.content_path(file).exists() {
            return false;
        }
        let Some(meta) = self.read_meta(file) else {
            return false;
        };
        let _ = durable::remove(&self.meta_path(file));
        for b in meta.undo {
            let _ = fs::remove_file(self.undo.join(b));
        }
        self.remove_checkpoints(file);
        log::info!(target: ev::SS_ADOPT, file = file; "{file} was removed by hand; forgetting it");
        true
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

    /// A fresh temp file in `tmp/` for content arriving from the network; the returned guard
    /// removes it unless it was installed.
    /// `file` names what the bytes are for, in errors.
    pub fn temp_file(&self, file: &str) -> Result<(TempFile, File), StoreError> {
        let path = durable::temp_path(&self.tmp);
        let f = durable::create_new(&path).map_err(|e| self.io(file, e))?;
        Ok((TempFile(path), f))
    }

    /// A `syncfs` window on the file system holding this store (see [`durable::FsSync`]),
    /// for a batch of copies to begin before it writes any of them; `None` where `syncfs`
    /// cannot report write-back errors.
    pub fn sync_window(&self) -> io::Result<Option<durable::FsSync>> {
        durable::FsSync::begin(&self.tmp)
    }

    /// Maps an I/O error on `file` to a store error (disk full becomes [`StoreError::DiskFull`]).
    pub fn io_error(&self, file: &str, e: io::Error) -> StoreError {
        self.io(file, e)
    }

    /// What this copy holds of `file` (PEEK_FILE): its record, if any, and the versions of
    /// the history entries it holds.
    pub fn held(&self, file: &str) -> Result<Option<(Meta, Vec<Version>)>, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(meta) = self.record_locked(file)? else {
            return Ok(None);
        };
        let blobs = meta
            .undo
            .iter()
            .filter(|id| self.undo.join(id).is_file())
            .filter_map(|id| parse_blob_id(id).map(|(v, _)| v))
            .collect();
        Ok(Some((meta, blobs)))
    }

    /// `file`'s record as [`Store::held`] finds it, without looking at its history entries.
    pub fn record(&self, file: &str) -> Result<Option<Meta>, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.record_locked(file)
    }

    /// [`Store::record`] with the file's lock held by the caller.
    fn record_locked(&self, file: &str) -> Result<Option<Meta>, StoreError> {
        match self.current(file) {
            Ok((m, _)) => Ok(Some(m)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
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
        let content = File::open(self.content_path(file)).map_err(|e| self.io(file, e))?;
        let mut undo = Vec::new();
        let mut entries = Vec::new();
        for id in &meta.undo {
            // Entries of an older naming cannot be described by version; they stay local.
            let Some((version, checksum)) = parse_blob_id(id) else {
                continue;
            };
            let Ok(f) = File::open(self.undo.join(id)) else {
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
    /// always made durable by directory fsyncs (see ARCHITECTURE.md, "Batched installs").
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
                let _ = fs::remove_file(path);
            }
        }
        results
    }

    /// The body of [`Store::install_copies`], which holds every file's lock; `linked`
    /// collects the history entries linked to a delta's basis (copy index, path).
    fn install_copies_linking(
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
        // 1. Decide per file: already as new here, incomplete, or to install with this record
        // (staged in a temp file; renaming keeps the content's mtime, so it is known now).
        let mut plans: Vec<Planned> = Vec::new();
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
                Ok(Plan::Install(old, ids, link)) => {
                    match self.stage_record(c, old.as_ref(), ids) {
                        Ok((meta, temp, f)) => plans.push(Planned {
                            i,
                            old,
                            meta,
                            temp,
                            file: f,
                            link,
                        }),
                        Err(e) => results[i] = Some(Err(e)),
                    }
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // 2. Every temp file of the batch synced at once.
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
        for (i, r) in owners.into_iter().zip(durable::sync_files(open)) {
            if let Err(e) = r {
                if results[i].is_none() {
                    results[i] = Some(Err(self.io(&copies[i].state.file, e)));
                }
            }
        }
        plans.retain(|p| results[p.i].is_none());
        // 3. History entries (and a verified basis, linked), then one sync of
        // `undo/`.
        let mut renamed = false;
        plans.retain(|p| {
            let c = &copies[p.i];
            if let Some(id) = &p.link {
                let path = self.undo.join(id);
                if let Err(e) = fs::hard_link(self.content_path(&c.state.file), &path) {
                    results[p.i] = Some(Err(self.io(&c.state.file, e)));
                    return false;
                }
                linked.push((p.i, path));
                renamed = true;
            }
            let keep = c.undo.len().saturating_sub(UNDO_DEPTH);
            for (d, id) in c.undo[keep..].iter().zip(&p.meta.undo) {
                if let Some((_, tmp)) = c.entries.iter().find(|(v, _)| *v == d.version) {
                    if let Err(e) = fs::rename(tmp, self.undo.join(id)) {
                        results[p.i] = Some(Err(self.io(&c.state.file, e)));
                        return false;
                    }
                    renamed = true;
                }
            }
            true
        });
        // Only a rename changed the directory; with none there is nothing to make durable.
        if renamed {
            if let Err(e) = durable::fsync_dir(&self.undo) {
                return self.fail_rest(copies, results, e);
            }
        }
        // 4. Each copy's checkpoints (found complete in step 1), before its content as for a
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
        // 5. Contents, then one sync of each directory they went to.
        let mut dirs = BTreeSet::new();
        plans.retain(|p| {
            let c = &copies[p.i];
            match place(c.content, &self.content_path(&c.state.file)) {
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
        let synced = dirs.iter().try_for_each(|d| durable::fsync_dir(d));
        if let Err(e) = synced {
            return self.fail_rest(copies, results, e);
        }
        // 6. Records, then one sync of each directory they went to.
        let mut meta_dirs = BTreeSet::new();
        plans.retain(|p| {
            let file = copies[p.i].state.file.as_str();
            match place(p.temp.path(), &self.meta_path(file)) {
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
        let dir_sync = meta_dirs.iter().try_for_each(|d| durable::fsync_dir(d));
        for p in plans {
            let file = copies[p.i].state.file.as_str();
            if let Err(e) = &dir_sync {
                let e = io::Error::new(e.kind(), e.to_string());
                results[p.i] = Some(Err(content_saved(file, self.io(file, e))));
                continue;
            }
            // 7. History entries the new record no longer names.
            for b in p.old.iter().flat_map(|m| m.undo.iter()) {
                if !p.meta.undo.contains(b) {
                    let _ = fs::remove_file(self.undo.join(b));
                }
            }
            results[p.i] = Some(Ok((p.meta, true)));
        }
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
    fn stage_record(
        &self,
        c: &CopyIn<'_>,
        old: Option<&Meta>,
        ids: Vec<String>,
    ) -> Result<(Meta, TempFile, File), StoreError> {
        let file = c.state.file.as_str();
        let md = fs::metadata(c.content).map_err(|e| self.io(file, e))?;
        let meta = Meta {
            version: c.state.version,
            checksum: c.state.checksum,
            size: c.state.size,
            mtime_ns: mtime_ns(&md),
            words: c.state.words,
            chars: c.state.chars,
            modified_ms: c.state.modified_ms,
            owner: c
                .state
                .owner
                .clone()
                .or_else(|| old.and_then(|m| m.owner.clone())),
            undo: ids,
        };
        let bytes = serde_json::to_vec(&meta).map_err(|e| self.io(file, io::Error::other(e)))?;
        let (tmp, mut f) = self.temp_file(file)?;
        f.write_all(&bytes).map_err(|e| self.io(file, e))?;
        Ok((meta, tmp, f))
    }

    /// What installing `c` takes (caller holds the file's lock): nothing if this copy is as new
    /// already, else the old record and the names of the history entries the new one lists.
    fn plan_copy(&self, c: &CopyIn<'_>) -> Result<Plan, StoreError> {
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
            if !sent && !self.undo.join(id).is_file() {
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
    fn basis_in_place(&self, file: &str, old: Option<&Meta>, b: &Basis) -> bool {
        old.is_some_and(|m| (m.version, m.checksum) == (b.version, b.checksum))
            && fs::metadata(self.content_path(file))
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
    fn verify_basis(
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
        let f = File::open(self.content_path(file)).map_err(|e| self.io(file, e))?;
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
    fn fail_rest(
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
                install_temp(tmp, &target).map_err(|e| self.io(file, e))?;
                let md = fs::metadata(&target).map_err(|e| self.io(file, e))?;
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

    /// FSCK of one copy: adopts a hand edit first (size or mtime changed: a new version, not
    /// corruption), then reads the bytes and recomputes their checksum, so bit rot (same size
    /// and mtime, other bytes) shows as a checksum differing from the bookkeeping's. `None`
    /// when this server holds no copy. Also says whether it adopted (the caller reports it).
    pub fn verify(&self, file: &str) -> Result<Option<(HeldCopy, Meta, bool)>, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (meta, adopted) = match self.current(file) {
            Ok(x) => x,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut f = match File::open(self.content_path(file)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(file, e)),
        };
        let mut counter = ContentCounter::bytes_only();
        copy_counting(&mut f, &mut io::sink(), &mut counter, meta.size + 1)
            .map_err(|e| self.io(file, e))?;
        let held = HeldCopy {
            version: meta.version,
            checksum: meta.checksum,
            actual: counter.checksum(),
            size: counter.size(),
        };
        Ok(Some((held, meta, adopted)))
    }

    /// Versions of `file` set aside under `quarantine/`, oldest first. The quarantine
    /// directory may not exist (nothing was ever set aside).
    pub fn quarantined(&self, file: &str) -> Result<Vec<Version>, StoreError> {
        let path = self.quarantine.join(file);
        let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
            return Ok(Vec::new());
        };
        let base = base.to_string_lossy();
        let short = quarantine_base(file);
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(file, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| self.io(file, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Some((b, v)) = parse_quarantine_name(&name) {
                // `base`: an entry named before long leaves were cut, unless it has the form
                // of another file's cut name.
                let ours = b == short || (b == base && !is_cut_base(b));
                if ours && e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    out.push(v);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Quarantine entries of files this server holds no copy of (FSCK lists them apart from
    /// any file's line), at most `cap`, sorted; plus how many more there are.
    pub fn quarantine_orphans(
        &self,
        cap: usize,
    ) -> Result<(Vec<QuarantineEntry>, u64), StoreError> {
        let mut names = Vec::new();
        match walk(&self.quarantine, &self.quarantine, &mut names) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(self.io("quarantine/", e)),
        }
        let mut entries: Vec<QuarantineEntry> = names
            .iter()
            .filter_map(|rel| {
                let (dir, leaf) = match rel.rsplit_once('/') {
                    Some((d, l)) => (Some(d), l),
                    None => (None, rel.as_str()),
                };
                let (base, version) = parse_quarantine_name(leaf)?;
                let file = match dir {
                    Some(d) => format!("{d}/{base}"),
                    None => base.to_string(),
                };
                // A cut leaf: the full name is in the entry's bookkeeping.
                let file = match is_cut_base(base) {
                    true => self
                        .quarantined_name(rel)
                        .filter(|f| quarantine_rel(f, version) == *rel)
                        .unwrap_or(file),
                    false => file,
                };
                let canonical = names::canonical_file(&file).ok()? == file;
                (canonical && !self.content_path(&file).is_file())
                    .then_some(QuarantineEntry { file, version })
            })
            .collect();
        entries.sort_by(|a, b| (&a.file, a.version).cmp(&(&b.file, b.version)));
        let more = entries.len().saturating_sub(cap) as u64;
        entries.truncate(cap);
        Ok((entries, more))
    }

    /// The full file name a quarantine entry's bookkeeping (`<rel>.meta`) records.
    fn quarantined_name(&self, rel: &str) -> Option<String> {
        let bytes = fs::read(self.quarantine.join(format!("{rel}.meta"))).ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        doc.get("file")?.as_str().map(str::to_string)
    }

    /// The startup scan: walks `files/` and `meta/`, adopts new or changed content, removes
    /// unfinished creates and unreferenced undo blobs, and returns the state of every file.
    /// Stats every file but reads only those whose size or mtime changed. Run it before
    /// serving: the clean-up would race with creates and commits in progress.
    pub fn scan(&self) -> Result<Vec<FileState>, StoreError> {
        let started = Instant::now();
        let out = self.walk_states(true)?;
        let ms = started.elapsed().as_millis() as u64;
        log::info!(target: ev::SS_SCAN, files = out.len() as u64, ms = ms;
            "scanned {} files in {ms} ms", out.len());
        Ok(out)
    }

    /// The state of every file (adopting hand edits), without the clean-up, so it is safe
    /// while serving (registration after a reconnect uses it).
    pub fn list(&self) -> Result<Vec<FileState>, StoreError> {
        self.walk_states(false)
    }

    /// The bookkeeping of each of `files`, adopting as needed (relaxed; see the walk).
    fn states_of(&self, files: &[String]) -> Vec<(String, Meta, bool)> {
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            let lock = self.file_lock(file);
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            match self.current_with(file, false) {
                Ok((meta, adopted)) => out.push((file.clone(), meta, adopted)),
                Err(e) => {
                    log::warn!(target: ev::SS_SCAN, file = file.as_str(); "cannot scan {file}: {e}")
                }
            }
        }
        out
    }

    fn walk_states(&self, cleanup: bool) -> Result<Vec<FileState>, StoreError> {
        let mut out = Vec::new();
        let mut referenced = HashSet::new();
        let mut names_seen = HashSet::new();
        let mut adopted_count = 0u64;
        let mut content = Vec::new();
        walk(&self.files, &self.files, &mut content).map_err(|e| self.io("files/", e))?;
        content.retain(|file| {
            let ok = names::canonical_file(file).ok().as_deref() == Some(file.as_str());
            if !ok {
                log::warn!(target: ev::SS_ADOPT, file = file.as_str(); "ignoring {file}: not a valid file name");
            }
            ok
        });
        // Adopting means creating a record per file, which is latency-bound on a busy disk:
        // a few threads overlap those waits.
        let per_thread = content.len().div_ceil(SCAN_THREADS).max(1);
        // A thread that died must fail the scan: a short list would make the name server
        // forget files this server holds.
        let results: Option<Vec<Vec<(String, Meta, bool)>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = content
                .chunks(per_thread)
                .map(|chunk| scope.spawn(move || self.states_of(chunk)))
                .collect();
            handles.into_iter().map(|h| h.join().ok()).collect()
        });
        let results =
            results.ok_or_else(|| self.io("files/", io::Error::other("a scan thread failed")))?;
        for (file, meta, adopted) in results.into_iter().flatten() {
            adopted_count += u64::from(adopted);
            referenced.extend(meta.undo.iter().cloned());
            out.push(meta.state(&file));
            names_seen.insert(file);
        }
        if adopted_count > 0 {
            log::info!(target: ev::SS_ADOPT, files = adopted_count;
                "adopted {adopted_count} files that were new or changed on disk");
            // One sync for every record the walk wrote (see write_meta_relaxed).
            let synced = File::open(&self.meta)
                .and_then(|d| nix::unistd::syncfs(d.as_raw_fd()).map_err(io::Error::from));
            synced.map_err(|e| self.io("meta/", e))?;
        }
        if !cleanup {
            return Ok(out);
        }
        let mut metas = Vec::new();
        walk(&self.meta, &self.meta, &mut metas).map_err(|e| self.io("meta/", e))?;
        for m in metas {
            let file = m.as_str();
            if !names_seen.contains(file) && !self.content_path(file).exists() {
                let _ = durable::remove(&self.meta.join(&m));
            }
        }
        let hashes: HashSet<String> = names_seen.iter().map(|f| file_hash(f)).collect();
        self.remove_stray_checkpoints(&hashes);
        if let Ok(rd) = fs::read_dir(&self.undo) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !referenced.contains(&name) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(out)
    }
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
struct Planned {
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

/// What installing one copy takes.
enum Plan {
    /// This copy is as new already: its record.
    Held(Meta),
    /// Install over the old record (if any), listing these history entries, one of which
    /// (a delta transfer's verified basis) is the content held now, linked in at step 3.
    Install(Option<Meta>, Vec<String>, Option<String>),
}

/// The error of a copy whose content is in place but whose record is not: the next access or
/// scan adopts the content, so the error must not claim the file is unchanged.
fn content_saved(file: &str, e: StoreError) -> StoreError {
    StoreError::Io {
        file: file.to_string(),
        source: io::Error::other(format!(
            "content saved but its bookkeeping was not ({e}); it is adopted on next access"
        )),
    }
}

/// Where a content change takes its new bytes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Bytes in memory (a commit's edited text).
    Bytes(&'a [u8]),
    /// A temp file in `tmp/` already written and synced (an upload or a transfer).
    Temp(&'a Path, &'a ContentFacts),
}

/// Renames a synced temp file over `target` and makes the rename durable.
fn install_temp(tmp: &Path, target: &Path) -> io::Result<()> {
    durable::fsync_dir(&place(tmp, target)?)
}

/// Renames a synced temp file over `target`, creating its folders durably, and returns the
/// directory whose sync makes the rename durable (left to the caller, so a batch syncs each
/// directory once).
fn place(tmp: &Path, target: &Path) -> io::Result<PathBuf> {
    let parent = target.parent().unwrap_or_else(|| Path::new("."));
    durable::create_dirs_durable(parent)?;
    fs::rename(tmp, target)?;
    Ok(parent.to_path_buf())
}

/// Collects the regular files under `dir` as `/`-joined paths relative to `base`.
/// Bytes a quarantine entry's name may add to its file's leaf: `.<epoch>-<counter>.meta` with
/// both numbers at their longest (20 digits each).
const QUARANTINE_SUFFIX_MAX: usize = 47;

fn leaf_of(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// The base name of `file`'s quarantine entries: its leaf, or, when the leaf is longer than
/// [`QUARANTINE_UNCUT_MAX`] (about what the longest suffix leaves of a component's 255
/// bytes), the leaf cut on a char boundary, `~` and the
/// file hash (so two long names never share entries; the `.meta` keeps the full name).
pub fn quarantine_base(file: &str) -> String {
    let leaf = leaf_of(file);
    if leaf.len() <= QUARANTINE_UNCUT_MAX {
        return leaf.to_string();
    }
    let mut cut = names::MAX_COMPONENT_BYTES - QUARANTINE_SUFFIX_MAX - 17;
    while !leaf.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{}", &leaf[..cut], file_hash(file))
}

/// Longest leaf kept whole in a quarantine entry's name. A cut base is its leaf's first
/// 188–191 bytes (cut on a char boundary) plus `~` and 16 hex digits, so it is always longer
/// than this: no file's whole leaf can equal another file's cut base.
const QUARANTINE_UNCUT_MAX: usize = names::MAX_COMPONENT_BYTES - QUARANTINE_SUFFIX_MAX - 17 - 3;

/// Whether a quarantine base name is a cut one (see [`quarantine_base`]).
fn is_cut_base(base: &str) -> bool {
    base.len() > QUARANTINE_UNCUT_MAX
        && base.len() <= names::MAX_COMPONENT_BYTES - QUARANTINE_SUFFIX_MAX
        && base.as_bytes()[base.len() - 17] == b'~'
        && base[base.len() - 16..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// Where `file`'s copy at `v` is set aside, relative to `quarantine/`: its folders, then
/// `<base>.<epoch>-<counter>` (see [`quarantine_base`]).
pub fn quarantine_rel(file: &str, v: Version) -> String {
    let base = quarantine_base(file);
    match file.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{base}.{}-{}", v.epoch, v.counter),
        None => format!("{base}.{}-{}", v.epoch, v.counter),
    }
}

/// Splits a quarantine entry's leaf name `<base>.<epoch>-<counter>` into its file's base name
/// and version; `None` for bookkeeping (`.meta`) and anything else.
pub fn parse_quarantine_name(leaf: &str) -> Option<(&str, Version)> {
    let (base, v) = leaf.rsplit_once('.')?;
    let (e, c) = v.split_once('-')?;
    let all_digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if base.is_empty() || !all_digits(e) || !all_digits(c) {
        return None;
    }
    Some((
        base,
        Version {
            epoch: e.parse().ok()?,
            counter: c.parse().ok()?,
        },
    ))
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        let p = e.path();
        if ft.is_dir() {
            walk(base, &p, out)?;
        } else if ft.is_file() {
            if let Ok(rel) = p.strip_prefix(base) {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "ss1").unwrap();
        (d, s)
    }

    fn commit(s: &Store, f: &str, text: &str) -> Meta {
        let (_, meta, _) = s.load_text(f).unwrap();
        s.write_content(f, meta, text.as_bytes()).unwrap()
    }

    #[test]
    fn create_write_undo_delete() {
        let (d, s) = store();
        let m = s.create("docs/a.txt", "alice", 3).unwrap();
        assert_eq!(
            m.version,
            Version {
                epoch: 3,
                counter: 1
            }
        );
        assert!(matches!(
            s.create("docs/a.txt", "bob", 3),
            Err(StoreError::Exists(_))
        ));
        let m1 = commit(&s, "docs/a.txt", "one.");
        let m2 = commit(&s, "docs/a.txt", "one. two.");
        assert!(m2.version > m1.version);
        assert_eq!(m2.words, 2);
        assert_eq!(m2.undo.len(), 2);
        assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 2);
        let u = s.undo("docs/a.txt", 3).unwrap();
        assert!(u.version > m2.version, "versions only go up");
        assert_eq!(
            fs::read_to_string(s.content_path("docs/a.txt")).unwrap(),
            "one."
        );
        s.undo("docs/a.txt", 3).unwrap();
        assert_eq!(
            fs::read_to_string(s.content_path("docs/a.txt")).unwrap(),
            ""
        );
        assert!(matches!(
            s.undo("docs/a.txt", 3),
            Err(StoreError::NoUndo(_))
        ));
        assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 0);
        commit(&s, "docs/a.txt", "x.");
        s.delete("docs/a.txt").unwrap();
        assert!(matches!(
            s.delete("docs/a.txt"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 0);
        assert!(s.scan().unwrap().is_empty());
    }

    #[test]
    fn undo_depth_is_bounded() {
        let (d, s) = store();
        s.create("a", "alice", 1).unwrap();
        for i in 0..(UNDO_DEPTH + 5) {
            commit(&s, "a", &format!("v{i}."));
        }
        let (m, _) = s.current("a").unwrap();
        assert_eq!(m.undo.len(), UNDO_DEPTH);
        assert_eq!(
            fs::read_dir(d.path().join("undo")).unwrap().count(),
            UNDO_DEPTH
        );
        s.undo("a", 1).unwrap();
        let last = UNDO_DEPTH + 3;
        assert_eq!(
            fs::read_to_string(s.content_path("a")).unwrap(),
            format!("v{last}.")
        );
    }

    #[test]
    fn verify_tells_bit_rot_from_a_hand_edit() {
        let (_d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        let m = commit(&s, "a.txt", "hello world.");
        let (h, _, adopted) = s.verify("a.txt").unwrap().unwrap();
        assert!(!adopted);
        assert_eq!(
            (h.version, h.checksum, h.actual),
            (m.version, m.checksum, m.checksum)
        );
        // Bit rot: one byte flipped, size and mtime as before.
        let p = s.content_path("a.txt");
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        fs::write(&p, "hello World.").unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let (h, _, adopted) = s.verify("a.txt").unwrap().unwrap();
        assert!(!adopted, "same size and mtime is not a hand edit");
        assert_eq!(h.version, m.version);
        assert_eq!(h.checksum, m.checksum);
        assert_eq!(h.actual, crc32c::crc32c(b"hello World."));
        // A hand edit (new size): adopted as a new version, consistent with its bytes.
        fs::write(&p, "hello there world.").unwrap();
        let (h, _, adopted) = s.verify("a.txt").unwrap().unwrap();
        assert!(adopted);
        assert!(h.version > m.version);
        assert_eq!(h.checksum, h.actual);
        assert!(s.verify("nothing").unwrap().is_none());
    }

    #[test]
    fn quarantine_entries_are_listed_per_file_and_as_orphans() {
        let (d, s) = store();
        assert!(s.quarantined("a.txt").unwrap().is_empty());
        assert_eq!(s.quarantine_orphans(10).unwrap(), (Vec::new(), 0));
        s.create("a.txt", "alice", 1).unwrap();
        let q = d.path().join("quarantine");
        fs::create_dir_all(q.join("docs")).unwrap();
        fs::write(q.join("a.txt.1-3"), "x").unwrap();
        fs::write(q.join("a.txt.1-3.meta"), "{}").unwrap();
        fs::write(q.join("a.txt.2-1"), "y").unwrap();
        fs::write(q.join("a.txt.1-3.x"), "not an entry").unwrap();
        fs::write(q.join("docs/b.md.1-7"), "z").unwrap();
        let v = |epoch, counter| Version { epoch, counter };
        assert_eq!(s.quarantined("a.txt").unwrap(), vec![v(1, 3), v(2, 1)]);
        assert_eq!(s.quarantined("docs/b.md").unwrap(), vec![v(1, 7)]);
        assert!(s.quarantined("a").unwrap().is_empty());
        // a.txt is held here, so only docs/b.md's entry is an orphan.
        let (orphans, more) = s.quarantine_orphans(10).unwrap();
        assert_eq!(more, 0);
        assert_eq!(
            orphans,
            vec![QuarantineEntry {
                file: "docs/b.md".into(),
                version: v(1, 7)
            }]
        );
        assert_eq!(s.quarantine_orphans(0).unwrap().1, 1);
        assert_eq!(parse_quarantine_name("a.txt.1-3.meta"), None);
        assert_eq!(parse_quarantine_name(".1-3"), None);
    }

    #[test]
    fn a_long_name_is_quarantined_under_a_name_that_fits() {
        let (d, s) = store();
        // 250 bytes, multi-byte characters across the cut: "é" is two bytes.
        let leaf = format!("{}{}.txt", "é".repeat(100), "x".repeat(46));
        assert_eq!(leaf.len(), 250);
        for file in [leaf.clone(), format!("docs/{leaf}")] {
            s.create(&file, "alice", 1).unwrap();
            commit(&s, &file, "unacknowledged.");
            let v = s.read_meta(&file).unwrap().version;
            let rel = s.quarantine(&file, None).unwrap().expect("set aside");
            let leaf_on_disk = rel.rsplit('/').next().unwrap();
            assert!(leaf_on_disk.len() + ".meta".len() <= 255, "{rel}");
            assert!(d.path().join(&rel).is_file(), "{rel}");
            let meta = fs::read(d.path().join(format!("{rel}.meta"))).unwrap();
            let doc: serde_json::Value = serde_json::from_slice(&meta).unwrap();
            assert_eq!(doc["file"], file.as_str());
            // Listed under the original name, per file and as an orphan.
            assert_eq!(s.quarantined(&file).unwrap(), vec![v]);
            let (orphans, _) = s.quarantine_orphans(10).unwrap();
            assert!(
                orphans.contains(&QuarantineEntry {
                    file: file.clone(),
                    version: v
                }),
                "{orphans:?}"
            );
            // A later file of that name set aside too: both listed.
            s.create(&file, "alice", 1).unwrap();
            assert!(s.quarantine(&file, None).unwrap().is_some());
            assert_eq!(s.quarantined(&file).unwrap().len(), 2);
        }
        // Short names keep their plain form.
        let v2 = Version {
            epoch: 2,
            counter: 3,
        };
        assert_eq!(quarantine_rel("docs/a.txt", v2), "docs/a.txt.2-3");
        // Two long names that share their first 190 bytes do not share entries.
        let other = format!("{}{}.md", "é".repeat(100), "x".repeat(47));
        assert_ne!(quarantine_base(&leaf), quarantine_base(&other));
        // A file named like another's cut name (which it can only be if no longer than a
        // cut name) is cut itself, so it never sees the other file's entries.
        let mimic = quarantine_base(&leaf);
        assert!(mimic.len() <= names::MAX_COMPONENT_BYTES);
        assert_ne!(quarantine_base(&mimic), mimic);
        s.create(&mimic, "mallory", 1).unwrap();
        assert_eq!(s.quarantined(&mimic).unwrap(), vec![]);
        // Every whole leaf kept is shorter than any cut base.
        assert!(QUARANTINE_UNCUT_MAX < mimic.len());
    }

    #[test]
    fn scan_adopts_hand_edits_and_cleans_up() {
        let (d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        let m = commit(&s, "a.txt", "hello world.");
        drop(s);
        // A hand-placed file, a hand edit, an unfinished create, a stray blob and a temp file.
        fs::write(d.path().join("files/new.txt"), "by hand").unwrap();
        fs::write(d.path().join("files/a.txt"), "edited by hand, longer.").unwrap();
        fs::write(d.path().join("meta/ghost.txt"), "{}").unwrap();
        fs::write(d.path().join("undo/stray"), "x").unwrap();
        fs::write(d.path().join("tmp/t1"), "x").unwrap();
        let s = Store::open(d.path(), "ss1").unwrap();
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
        let mut list = s.scan().unwrap();
        list.sort_by(|a, b| a.file.cmp(&b.file));
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].file, "a.txt");
        assert!(list[0].version > m.version);
        assert_eq!(list[0].owner.as_deref(), Some("alice"));
        assert_eq!(list[0].words, 4);
        assert_eq!(list[1].file, "new.txt");
        assert_eq!(list[1].owner, None);
        assert!(!d.path().join("meta/ghost.txt").exists());
        assert!(!d.path().join("undo/stray").exists());
        assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 1);
        // A second scan finds nothing new: versions stay.
        let again = s.scan().unwrap();
        let a = again.iter().find(|f| f.file == "a.txt").unwrap();
        assert_eq!(a.version, list[0].version);
    }

    #[test]
    fn live_listing_leaves_blobs_and_metas_alone() {
        let (d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        // What a commit or create in progress looks like from outside: a blob not yet
        // referenced, a meta whose content is not written yet.
        fs::write(d.path().join("undo/inflight"), "x").unwrap();
        fs::write(d.path().join("meta/b.txt.meta"), "{}").unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
        assert!(d.path().join("undo/inflight").exists());
        assert!(d.path().join("meta/b.txt.meta").exists());
    }

    #[test]
    fn a_file_removed_by_hand_is_forgotten() {
        let (d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        commit(&s, "a.txt", "one.");
        assert!(!s.forget_vanished("a.txt"));
        fs::remove_file(s.content_path("a.txt")).unwrap();
        assert!(matches!(s.current("a.txt"), Err(StoreError::NotFound(_))));
        assert!(s.forget_vanished("a.txt"));
        assert!(!s.forget_vanished("a.txt"));
        assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(d.path().join("meta")).unwrap().count(), 0);
    }

    #[test]
    fn access_adopts_a_changed_file() {
        let (_d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        fs::write(s.content_path("a.txt"), "changed.").unwrap();
        let (m, adopted) = s.current("a.txt").unwrap();
        assert!(adopted);
        assert_eq!(m.size, 8);
        let (_, adopted) = s.current("a.txt").unwrap();
        assert!(!adopted);
    }

    #[test]
    fn snapshot_sees_old_content_after_replace() {
        let (_d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        commit(&s, "a.txt", "old.");
        let (mut f, _, _) = s.snapshot("a.txt").unwrap();
        commit(&s, "a.txt", "new content.");
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, "old.");
    }

    proptest::proptest! {
        #[test]
        fn counter_matches_whole_content_counts(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            ascii in proptest::collection::vec(0u8..4, 0..300),
            cut in 0usize..300,
            cut2 in 0usize..300,
        ) {
            // Mix raw bytes with spaces and multi-byte text so cut sequences are common.
            let mut content = Vec::new();
            for (k, b) in bytes.iter().enumerate() {
                match ascii.get(k) {
                    Some(0) => content.push(b' '),
                    Some(1) => content.extend_from_slice("é€".as_bytes()),
                    // Non-ASCII whitespace, a four-byte char, and a lead byte left dangling.
                    Some(2) if b % 4 == 0 => content.extend_from_slice("\u{3000}\u{a0}".as_bytes()),
                    Some(2) if b % 4 == 1 => content.extend_from_slice("𝄞".as_bytes()),
                    Some(2) => content.extend_from_slice(&"𝄞".as_bytes()[..(*b as usize % 3) + 1]),
                    _ => content.push(*b),
                }
            }
            let cut = cut.min(content.len());
            let cut2 = cut2.clamp(cut, content.len());
            let mut c = ContentCounter::new();
            c.update(&content[..cut]);
            c.update(&content[cut..cut2]);
            c.update(&content[cut2..]);
            let f = c.finish(0);
            let text = String::from_utf8_lossy(&content);
            proptest::prop_assert_eq!(f.words, crate::ss::document::count_words(&text));
            proptest::prop_assert_eq!(f.chars, crate::ss::document::count_chars(&text));
            proptest::prop_assert_eq!(f.checksum, crc32c::crc32c(&content));
            proptest::prop_assert_eq!(f.size, content.len() as u64);
        }
    }

    #[test]
    fn history_entries_are_named_by_version() {
        let (_d, s) = store();
        let created = s.create("a", "alice", 1).unwrap();
        commit(&s, "a", "one.");
        let (m, _) = s.current("a").unwrap();
        assert_eq!(
            m.undo,
            vec![blob_id("a", created.version, created.checksum)]
        );
        assert_eq!(
            parse_blob_id(&m.undo[0]),
            Some((created.version, created.checksum))
        );
        assert_ne!(
            blob_id("a", created.version, 0),
            blob_id("b", created.version, 0)
        );
        let (held, blobs) = s.held("a").unwrap().unwrap();
        assert_eq!(held, m);
        assert_eq!(blobs, vec![created.version]);
        assert!(s.held("nope").unwrap().is_none());
    }

    fn text(s: &Store, f: &str) -> String {
        fs::read_to_string(s.content_path(f)).unwrap()
    }

    #[test]
    fn checkpoints_are_kept_listed_reverted_and_deleted_with_the_file() {
        let (d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        let m1 = commit(&s, "a.txt", "one.");
        let c1 = s.checkpoint("a.txt", "v1", "bob", 1).unwrap();
        assert!(c1.version > m1.version, "a checkpoint is a new version");
        assert_eq!(c1.checksum, m1.checksum);
        assert!(matches!(
            s.checkpoint("a.txt", "v1", "bob", 1),
            Err(StoreError::CheckpointExists { .. })
        ));
        commit(&s, "a.txt", "one. two.");
        let (list, _, _) = s.checkpoints("a.txt").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].tag.as_str(), list[0].creator.as_str()),
            ("v1", "bob")
        );
        assert_eq!(list[0].size, 4);
        let (mut f, info, _, _) = s.open_checkpoint("a.txt", "v1").unwrap();
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!((got.as_str(), info.checksum), ("one.", m1.checksum));
        assert!(matches!(
            s.open_checkpoint("a.txt", "nope"),
            Err(StoreError::NoCheckpoint { .. })
        ));
        // REVERT is a content change like any other: a new version, undoable.
        let before = s.current("a.txt").unwrap().0;
        let r = s.revert("a.txt", "v1", 1).unwrap();
        assert!(r.version > before.version);
        assert_eq!(text(&s, "a.txt"), "one.");
        s.undo("a.txt", 1).unwrap();
        assert_eq!(text(&s, "a.txt"), "one. two.");
        // The checkpoint's bytes did not change when the content did.
        let (mut f, _, _, _) = s.open_checkpoint("a.txt", "v1").unwrap();
        got.clear();
        f.read_to_string(&mut got).unwrap();
        assert_eq!(got, "one.");
        assert!(s.scan().unwrap().len() == 1);
        assert_eq!(held_tags(&s, "a.txt"), vec!["v1".to_string()]);
        // DELETE takes history and checkpoints; a new file of that name starts clean.
        s.delete("a.txt").unwrap();
        assert_eq!(
            fs::read_dir(d.path().join("checkpoints")).unwrap().count(),
            0
        );
        s.create("a.txt", "carol", 1).unwrap();
        assert!(s.checkpoints("a.txt").unwrap().0.is_empty());
        assert!(matches!(s.undo("a.txt", 1), Err(StoreError::NoUndo(_))));
    }

    #[test]
    fn at_least_64_checkpoints_per_file_then_a_limit() {
        let (_d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        for i in 0..MAX_CHECKPOINTS {
            s.checkpoint("a.txt", &format!("t{i}"), "alice", 1).unwrap();
        }
        const { assert!(MAX_CHECKPOINTS >= 64) };
        assert!(matches!(
            s.checkpoint("a.txt", "one-more", "alice", 1),
            Err(StoreError::TooManyCheckpoints(_))
        ));
    }

    #[test]
    fn move_renames_content_record_history_and_checkpoints() {
        let (d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        commit(&s, "a.txt", "one.");
        s.checkpoint("a.txt", "v1", "alice", 1).unwrap();
        let before = commit(&s, "a.txt", "one. two.");
        s.create("d/b.txt", "alice", 1).unwrap();
        assert!(matches!(
            s.move_file("a.txt", "d/b.txt"),
            Err(StoreError::Exists(_))
        ));
        let moved = s.move_file("a.txt", "d/a.txt").unwrap();
        assert_eq!(
            (moved.version, moved.checksum, &moved.owner),
            (before.version, before.checksum, &before.owner)
        );
        assert!(!s.content_path("a.txt").exists());
        assert_eq!(text(&s, "d/a.txt"), "one. two.");
        let (meta, adopted) = s.current("d/a.txt").unwrap();
        assert!(!adopted, "a rename keeps the content's mtime");
        assert_eq!(meta.undo.len(), 2);
        assert!(meta
            .undo
            .iter()
            .all(|id| id.starts_with(&file_hash("d/a.txt"))));
        assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 2);
        assert_eq!(held_tags(&s, "d/a.txt"), vec!["v1".to_string()]);
        assert!(s.held_checkpoints("a.txt").is_empty());
        s.undo("d/a.txt", 1).unwrap();
        assert_eq!(text(&s, "d/a.txt"), "one.");
        let names: Vec<String> = s.scan().unwrap().into_iter().map(|f| f.file).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(
            fs::read_dir(d.path().join("checkpoints")).unwrap().count(),
            1
        );
    }

    #[test]
    fn folders_are_directories_under_files() {
        let (_d, s) = store();
        s.make_folders(&["p".into(), "p/q".into()]).unwrap();
        s.make_folders(&["p".into()]).unwrap();
        assert!(s.content_path("p/q").is_dir());
        s.create("x", "alice", 1).unwrap();
        assert!(matches!(
            s.make_folders(&["x".into()]),
            Err(StoreError::Exists(_))
        ));
        // Empty folders are not files: the scan lists only x.
        assert_eq!(s.scan().unwrap().len(), 1);
    }

    /// The tags of a copy's held checkpoints (PEEK_FILE adds each one's checksum).
    fn held_tags(s: &Store, file: &str) -> Vec<String> {
        s.held_checkpoints(file)
            .into_iter()
            .map(|h| h.split_once(':').map_or(h.clone(), |(t, _)| t.to_string()))
            .collect()
    }

    #[test]
    fn a_tag_made_again_for_other_bytes_is_sent_again() {
        let (_a, src) = store();
        let (_b, dst) = store();
        for s in [&src, &dst] {
            s.create("a.txt", "alice", 1).unwrap();
            commit(s, "a.txt", "old bytes.");
            s.checkpoint("a.txt", "v1", "alice", 1).unwrap();
        }
        let held = dst.held_checkpoints("a.txt");
        assert_eq!(src.held_checkpoints("a.txt"), held);
        // Held with the same bytes: not sent.
        let tr = src.open_transfer("a.txt", &[], &held).unwrap();
        assert!(tr.checkpoint_files.is_empty());
        drop(tr);
        // Deleted and made again while the target was away, tagged v1 again.
        src.delete("a.txt").unwrap();
        src.create("a.txt", "alice", 2).unwrap();
        commit(&src, "a.txt", "new bytes!");
        src.checkpoint("a.txt", "v1", "alice", 2).unwrap();
        let tr = src.open_transfer("a.txt", &[], &held).unwrap();
        let sent: Vec<&str> = tr
            .checkpoint_files
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(sent, vec!["v1"], "the target's v1 holds other bytes");
        // And a target never takes a list naming its old v1 as the new one without the bytes.
        assert!(matches!(
            dst.check_checkpoints_complete("a.txt", &tr.checkpoints, &[]),
            Err(StoreError::Incomplete(_))
        ));
    }

    #[test]
    fn a_delta_basis_stands_for_its_entry_only_verified_and_is_unlinked_if_the_install_fails() {
        let (d, s) = store();
        s.create("a.txt", "alice", 1).unwrap();
        let held = commit(&s, "a.txt", "one.");
        let basis = (held.version, held.checksum);
        let path = s.content_path("a.txt");
        let set_bytes = |b: &[u8]| {
            // Bit rot keeps the size and the mtime: the record still matches.
            let mtime = fs::metadata(&path).unwrap().modified().unwrap();
            fs::write(&path, b).unwrap();
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        };
        set_bytes(b"onE.");
        let (_, _, r) = s.open_basis("a.txt", basis).unwrap();
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("does not match its checksum"));
        set_bytes(b"one.");
        let (_, _, r) = s.open_basis("a.txt", basis).unwrap();
        let (_, verified) = r.unwrap();
        let mut state = held.state("a.txt");
        state.version.counter += 5;
        state.checksum = crc32c::crc32c(b"one. two.");
        state.size = 9;
        let undo = [UndoDesc {
            version: held.version,
            size: held.size,
            checksum: held.checksum,
        }];
        let entry = d
            .path()
            .join("undo")
            .join(blob_id("a.txt", held.version, held.checksum));
        fn copy<'a>(
            state: &'a FileState,
            undo: &'a [UndoDesc],
            content: &'a Path,
            basis: Option<Basis>,
        ) -> CopyIn<'a> {
            CopyIn {
                state,
                undo,
                content,
                entries: &[],
                checkpoints: &[],
                checkpoint_files: &[],
                unsynced: &[],
                basis,
            }
        }
        // An install that fails after the link (its content a directory, which cannot be
        // renamed over the file) leaves no entry behind.
        let dir = d.path().join("tmp").join("a-directory");
        fs::create_dir_all(&dir).unwrap();
        assert!(s.install_copies(&[copy(&state, &undo, &dir, Some(verified))], None)[0].is_err());
        assert!(!entry.exists(), "an orphan history entry was left");
        let (t, mut f) = s.temp_file("a.txt").unwrap();
        f.write_all(b"one. two.").unwrap();
        f.sync_all().unwrap();
        // A copy without the verified basis (sent whole) must carry the entry.
        assert!(matches!(
            s.install_copies(&[copy(&state, &undo, t.path(), None)], None)[0],
            Err(StoreError::Incomplete(_))
        ));
        assert!(!entry.exists());
        let (meta, installed) = s
            .install_copies(&[copy(&state, &undo, t.path(), Some(verified))], None)
            .pop()
            .unwrap()
            .unwrap();
        assert!(installed && meta.version == state.version);
        assert_eq!(fs::read(&entry).unwrap(), b"one.");
        assert_eq!(fs::read(&path).unwrap(), b"one. two.");
    }

    #[test]
    fn a_copy_carries_checkpoints_and_refuses_when_one_is_missing() {
        let (_a, src) = store();
        let (_b, dst) = store();
        src.create("d/a.txt", "alice", 1).unwrap();
        commit(&src, "d/a.txt", "one.");
        src.checkpoint("d/a.txt", "v1", "alice", 1).unwrap();
        commit(&src, "d/a.txt", "one. two.");
        let mut tr = src.open_transfer("d/a.txt", &[], &[]).unwrap();
        // What the network would carry, written into the target's tmp/ as put_content does.
        let to_temp = |f: &mut File| {
            let (t, mut out) = dst.temp_file("d/a.txt").unwrap();
            io::copy(f, &mut out).unwrap();
            out.sync_all().unwrap();
            t
        };
        let content = to_temp(&mut tr.content);
        let entries: Vec<(Version, TempFile)> = tr
            .entries
            .iter_mut()
            .map(|(v, f)| (*v, to_temp(f)))
            .collect();
        let ckpts: Vec<(String, TempFile)> = tr
            .checkpoint_files
            .iter_mut()
            .map(|(t, f)| (t.clone(), to_temp(f)))
            .collect();
        let entry_paths: Vec<(Version, PathBuf)> = entries
            .iter()
            .map(|(v, t)| (*v, t.path().to_path_buf()))
            .collect();
        let ckpt_paths: Vec<(String, PathBuf)> = ckpts
            .iter()
            .map(|(tag, t)| (tag.clone(), t.path().to_path_buf()))
            .collect();
        let state = tr.meta.state("d/a.txt");
        // A list naming a checkpoint that was neither sent nor held installs nothing.
        let mut bogus = tr.checkpoints.clone();
        bogus.push(CheckpointInfo {
            tag: "ghost".into(),
            ..bogus[0].clone()
        });
        assert!(matches!(
            dst.install_copy(
                &state,
                &tr.undo,
                content.path(),
                &entry_paths,
                &bogus,
                &ckpt_paths
            ),
            Err(StoreError::Incomplete(_))
        ));
        assert!(dst.held("d/a.txt").unwrap().is_none());
        let (meta, installed) = dst
            .install_copy(
                &state,
                &tr.undo,
                content.path(),
                &entry_paths,
                &tr.checkpoints,
                &ckpt_paths,
            )
            .unwrap();
        assert!(installed);
        assert_eq!(meta.version, state.version);
        assert_eq!(held_tags(&dst, "d/a.txt"), vec!["v1".to_string()]);
        let (mut f, info, _, _) = dst.open_checkpoint("d/a.txt", "v1").unwrap();
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!((got.as_str(), &info), ("one.", &tr.checkpoints[0]));
        // The copy's history works too: UNDO there restores what UNDO on the source would.
        dst.undo("d/a.txt", 1).unwrap();
        assert_eq!(text(&dst, "d/a.txt"), "one.");
    }

    /// A batch of copies with history, in two folders, installed with a `syncfs` window and
    /// (as on kernels before 5.17) without one: every copy lands with its record and history,
    /// and a store opened afresh (as after a restart) serves the same.
    #[test]
    fn a_batch_installs_alike_with_and_without_a_syncfs_window() {
        let (_a, src) = store();
        let files = ["p/a.txt", "q/r/b.txt", "c.txt"];
        for f in files {
            src.create(f, "alice", 1).unwrap();
            commit(&src, f, "one.");
            commit(&src, f, &format!("one. {f}."));
        }
        for windowed in [true, false] {
            let (b, dst) = store();
            let window = if windowed {
                let w = dst.sync_window().unwrap();
                assert!(
                    w.is_some(),
                    "this kernel's syncfs reports write-back errors"
                );
                w
            } else {
                None
            };
            let mut held = Vec::new();
            for f in files {
                let mut tr = src.open_transfer(f, &[], &[]).unwrap();
                // Written into tmp/ as a PUT_BATCH does: left open and unsynced without a
                // window, closed with one.
                let to_temp = |from: &mut File, open: &mut Vec<File>| {
                    let (t, mut out) = dst.temp_file(f).unwrap();
                    io::copy(from, &mut out).unwrap();
                    if !windowed {
                        open.push(out);
                    }
                    t
                };
                let mut open = Vec::new();
                let content = to_temp(&mut tr.content, &mut open);
                let entries: Vec<(Version, TempFile)> = tr
                    .entries
                    .iter_mut()
                    .map(|(v, e)| (*v, to_temp(e, &mut open)))
                    .collect();
                assert_eq!(entries.len(), 2, "{f} sends its history");
                held.push((tr, content, entries, open));
            }
            let paths: Vec<(PathBuf, Vec<(Version, PathBuf)>)> = held
                .iter()
                .map(|(_, c, es, _)| {
                    let es = es.iter().map(|(v, t)| (*v, t.path().to_path_buf()));
                    (c.path().to_path_buf(), es.collect())
                })
                .collect();
            let states: Vec<FileState> = files
                .iter()
                .zip(&held)
                .map(|(f, (tr, ..))| tr.meta.state(f))
                .collect();
            let unsynced: Vec<Vec<&File>> = held
                .iter()
                .map(|(.., open)| open.iter().collect())
                .collect();
            let copies: Vec<CopyIn<'_>> = held
                .iter()
                .enumerate()
                .map(|(i, (tr, ..))| CopyIn {
                    state: &states[i],
                    undo: &tr.undo,
                    content: &paths[i].0,
                    entries: &paths[i].1,
                    checkpoints: &[],
                    checkpoint_files: &[],
                    unsynced: &unsynced[i],
                    basis: None,
                })
                .collect();
            let results = dst.install_copies(&copies, window.as_ref());
            assert_eq!(results.len(), files.len());
            for r in results {
                assert!(r.unwrap().1, "installed");
            }
            drop(copies);
            drop(held);
            let again = Store::open(b.path(), "ss1").unwrap();
            for f in files {
                assert_eq!(text(&again, f), format!("one. {f}."));
                let (meta, adopted) = again.current(f).unwrap();
                assert!(!adopted, "{f} has its record");
                assert_eq!(meta.version, src.current(f).unwrap().0.version);
                assert_eq!(meta.undo.len(), 2);
                again.undo(f, 1).unwrap();
                assert_eq!(text(&again, f), "one.");
            }
            assert_eq!(fs::read_dir(b.path().join("tmp")).unwrap().count(), 0);
        }
    }
}
