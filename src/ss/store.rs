//! The storage server's on-disk layout and every change to it. This module is the one place
//! the layout is specified:
//!
//! ```text
//! DIR/files/<canonical name>        content, exactly the file's bytes
//! DIR/meta/<canonical name>         bookkeeping JSON (see [`Meta`]); the same relative path as
//!                                  the content, so a name maps to exactly one record and no
//!                                  file name can collide with another's record
//! DIR/undo/<blob id>                earlier contents referenced by undo stacks
//! DIR/tmp/                          temp files for atomic replacement; emptied at startup
//! ```
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
use crate::protocol::{err, FileState, Version, WireError};
use crate::ss::document;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
            StoreError::DiskFull { .. } => err::limit(msg),
            StoreError::NotText => err::invalid(msg),
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
struct ContentFacts {
    checksum: u32,
    size: u64,
    mtime_ns: i128,
    words: u64,
    chars: u64,
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
    tmp: PathBuf,
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
            tmp: root.join("tmp"),
            epoch: Arc::new(AtomicU64::new(1)),
            locks: Mutex::new(HashMap::new()),
        };
        for d in [&s.files, &s.meta, &s.undo, &s.tmp] {
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
            fs::write(&tmp, &bytes)?;
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&tmp, &target)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map_err(|e| self.io(file, e))
    }

    /// Reads the content and computes checksum and counts (what adoption and commits record).
    fn facts(&self, file: &str) -> Result<ContentFacts, StoreError> {
        let path = self.content_path(file);
        let mut f = File::open(&path).map_err(|e| self.io(file, e))?;
        let md = f.metadata().map_err(|e| self.io(file, e))?;
        let mut bytes = Vec::with_capacity(md.len() as usize);
        f.read_to_end(&mut bytes).map_err(|e| self.io(file, e))?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(ContentFacts {
            checksum: crc32c::crc32c(&bytes),
            size: bytes.len() as u64,
            mtime_ns: mtime_ns(&md),
            words: document::count_words(&text),
            chars: document::count_chars(&text),
        })
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
        self.write_with(file, old, Some(bytes), None)
    }

    /// The common path of commits and undo: `push_undo` saves the old content first; `pop`
    /// (undo) takes the new content from the newest blob and removes it afterwards.
    fn write_with(
        &self,
        file: &str,
        old: Meta,
        bytes: Option<&[u8]>,
        pop: Option<String>,
    ) -> Result<Meta, StoreError> {
        let target = self.content_path(file);
        let mut undo = old.undo.clone();
        let mut new_blob = None;
        if let Some(bytes) = bytes {
            let blob = crate::auth::random_hex(12);
            fs::hard_link(&target, self.undo.join(&blob)).map_err(|e| self.io(file, e))?;
            durable::fsync_dir(&self.undo).map_err(|e| self.io(file, e))?;
            let res = durable::replace(&self.tmp, &target, bytes);
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
        let facts = match self.facts(file) {
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

/// Collects the regular files under `dir` as `/`-joined paths relative to `base`.
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
}
