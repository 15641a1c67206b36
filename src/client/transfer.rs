//! Local-file side of UPLOAD and DOWNLOAD: opening and checksumming the file to send, the
//! temporary file a download lands in, and the progress bar.
//!
//! Nothing here holds a whole file: both directions go through one buffer of
//! `frame::CHUNK_BYTES`. A download is written to a temporary file beside its target and
//! renamed into place only after its size and checksum were verified and it was fsynced, so a
//! failed download leaves an existing file untouched and no partial file behind.

use crate::protocol::{err, frame, WireError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Attempts at picking an unused temporary file name before giving up.
const TEMP_NAME_ATTEMPTS: u32 = 16;

/// A path as error messages show it (quoted, escaped, shortened).
pub fn show(path: &Path) -> String {
    format!("'{}'", crate::names::show(&path.to_string_lossy()))
}

/// Opens a local file to upload: a missing file is NOT_FOUND, anything else that is not a
/// readable regular file is INVALID, both naming the path.
pub fn open_local(path: &Path) -> Result<File, WireError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => err::not_found(format!("local file {} not found", show(path))),
        _ => err::invalid(format!("cannot read local file {}: {e}", show(path))),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| err::invalid(format!("cannot read local file {}: {e}", show(path))))?;
    if !meta.is_file() {
        return Err(err::invalid(format!(
            "local path {} is not a regular file",
            show(path)
        )));
    }
    Ok(file)
}

/// The error for a local file that could not be read part-way.
pub fn read_failed(path: &Path, e: io::Error) -> WireError {
    err::invalid(format!("cannot read local file {}: {e}", show(path)))
}

/// Reads into `buf` until it is full or the file ends; returns the bytes read.
pub fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What [`scan`] found: the size and CRC32C of the bytes, and the CRC32C of each
/// `frame::CHUNK_BYTES` of them in turn (the last one shorter).
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes.
    pub size: u64,
    /// CRC32C of all of them.
    pub checksum: u32,
    /// CRC32C of each chunk.
    pub chunks: Vec<u32>,
}

/// Size and CRC32C of everything from the file's current position to its end, in one pass
/// through a chunk-sized buffer. Each byte is checksummed once: the whole file's CRC32C is
/// joined from the chunks' (kept, so sending the chunks later needs no second checksum of its
/// own to tell whether the file changed, see `Session::upload`).
pub fn scan(file: &mut File) -> io::Result<Scanned> {
    let mut buf = vec![0u8; frame::CHUNK_BYTES];
    let mut join = frame::CrcJoin::default();
    let mut scanned = Scanned {
        size: 0,
        checksum: 0,
        chunks: Vec::new(),
    };
    loop {
        let n = read_full(file, &mut buf)?;
        if n == 0 {
            return Ok(scanned);
        }
        let crc = crc32c::crc32c(&buf[..n]);
        scanned.checksum = join.join(scanned.checksum, crc, n);
        scanned.chunks.push(crc);
        scanned.size += n as u64;
    }
}

/// A temporary file beside a download's target, removed on drop unless persisted.
pub struct TempFile {
    path: PathBuf,
    file: File,
    persisted: bool,
}

impl TempFile {
    /// Creates a fresh temporary file in the directory of `target`. A target that is a
    /// directory is INVALID; a missing directory is NOT_FOUND.
    pub fn beside(target: &Path) -> Result<TempFile, WireError> {
        if target.is_dir() {
            return Err(err::invalid(format!(
                "local path {} is a directory",
                show(target)
            )));
        }
        let name = target
            .file_name()
            .ok_or_else(|| err::invalid(format!("local path {} names no file", show(target))))?;
        let dir = parent_dir(target);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = None;
        for attempt in 0..TEMP_NAME_ATTEMPTS {
            let tmp_name = format!(
                ".{}.{}-{}-{attempt}.part",
                name.to_string_lossy(),
                std::process::id(),
                nanos
            );
            let path = dir.join(tmp_name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(err::not_found(format!(
                        "local directory {} not found",
                        show(&dir)
                    )))
                }
                Err(e) => return Err(write_failed(target, e)),
            }
        }
        let e = last.unwrap_or_else(|| io::Error::other("no free temporary name"));
        Err(write_failed(target, e))
    }

    /// Appends bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    /// Makes the content durable and renames it onto `target` (then syncs the directory, so
    /// the new name survives a crash too).
    pub fn persist(mut self, target: &Path) -> Result<(), WireError> {
        self.file.sync_all().map_err(|e| write_failed(target, e))?;
        fs::rename(&self.path, target).map_err(|e| write_failed(target, e))?;
        self.persisted = true;
        crate::durable::fsync_dir(&parent_dir(target)).map_err(|e| write_failed(target, e))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: the temporary file is ours and useless after a failed download.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The directory a path lives in (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The error for a local file that could not be written.
pub fn write_failed(path: &Path, e: io::Error) -> WireError {
    let msg = format!("cannot write local file {}: {e}", show(path));
    if crate::durable::is_disk_full(&e) {
        err::limit(msg)
    } else {
        err::internal(msg)
    }
}

/// A byte-count progress bar on standard error, drawn only when standard error is a terminal
/// (a pipe or file gets nothing). Dropping it clears the bar.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `total` bytes, labelled `label`.
    pub fn new(total: u64, label: &str) -> Progress {
        if !io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        Progress { bar }
    }

    /// Counts `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // The success or error line goes to standard output; the bar must not linger above it.
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;

    #[test]
    fn scan_gives_size_and_crc() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        let bytes: Vec<u8> = (0..(frame::CHUNK_BYTES * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(&p, &bytes).unwrap();
        let mut f = open_local(&p).unwrap();
        let chunks = bytes
            .chunks(frame::CHUNK_BYTES)
            .map(crc32c::crc32c)
            .collect();
        assert_eq!(
            scan(&mut f).unwrap(),
            Scanned {
                size: bytes.len() as u64,
                checksum: crc32c::crc32c(&bytes),
                chunks,
            }
        );
    }

    #[test]
    fn open_local_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = open_local(&missing).unwrap_err();
        assert_eq!(e.code, crate::protocol::ErrorCode::NotFound);
        assert!(e.msg.contains("nope"), "{e}");
        let e = open_local(dir.path()).unwrap_err();
        assert_eq!(e.code, crate::protocol::ErrorCode::Invalid);
    }

    #[test]
    fn temp_file_is_removed_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        fs::write(&target, b"old").unwrap();
        let mut t = TempFile::beside(&target).unwrap();
        t.write_all(b"new").unwrap();
        drop(t);
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut t = TempFile::beside(&target).unwrap();
        t.write_all(b"new").unwrap();
        t.persist(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let e = TempFile::beside(dir.path()).err().unwrap();
        assert_eq!(e.code, crate::protocol::ErrorCode::Invalid);
        let e = TempFile::beside(&dir.path().join("no/such/x"))
            .err()
            .unwrap();
        assert_eq!(e.code, crate::protocol::ErrorCode::NotFound);
    }
}
