//! Durable, atomic file replacement: temp file -> fsync -> rename -> fsync(dir).
//!
//! Temp files live in a separate directory on the same file system as the target (for a
//! storage server, `<storage>/tmp/`), so no temp file is ever visible beside the real ones.
//! A crash at any instant leaves the target either wholly old or wholly new.
//!
//! Everything created here is private to the server's user: files 0600, directories 0700
//! (stored data is no other local account's business).
//!
//! Every sync call the servers make goes through here ([`fsync_file`], [`fsync_dir`],
//! [`syncfs`]), through the store's `Fs` trait (whose real backend calls these), or through
//! the name server's database, which reports each durable commit with
//! [`count_store_commit`]. Each is counted in a process-wide atomic by kind ([`sync_counts`]),
//! shown on `/metrics` as
//! `pairfs_sync_calls_total{kind="file"|"dir"|"data"|"fs"|"store_commit"}`,
//! so the flushes an operation costs are measured by the servers themselves.

use crate::ss::store::{Fs, OsFs};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

static SYNC_FILE: AtomicU64 = AtomicU64::new(0);
static SYNC_DIR: AtomicU64 = AtomicU64::new(0);
static SYNC_DATA: AtomicU64 = AtomicU64::new(0);
static SYNC_FS: AtomicU64 = AtomicU64::new(0);
static STORE_COMMIT: AtomicU64 = AtomicU64::new(0);

/// Sync calls this process has made since it started, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// File fsyncs (`fsync` of a regular file).
    pub file: u64,
    /// Directory fsyncs.
    pub dir: u64,
    /// `fdatasync` calls (the storage server's journal).
    pub data: u64,
    /// `syncfs` calls.
    pub fs: u64,
    /// Durable commits of the name server's database (each flushes the disk).
    pub store_commit: u64,
}

impl SyncCounts {
    /// The counts as `(kind label, value)` pairs, in the order `/metrics` shows them.
    pub fn by_kind(&self) -> [(&'static str, u64); 5] {
        [
            ("file", self.file),
            ("dir", self.dir),
            ("data", self.data),
            ("fs", self.fs),
            ("store_commit", self.store_commit),
        ]
    }
}

/// The sync calls made so far by this process.
pub fn sync_counts() -> SyncCounts {
    SyncCounts {
        file: SYNC_FILE.load(Ordering::Relaxed),
        dir: SYNC_DIR.load(Ordering::Relaxed),
        data: SYNC_DATA.load(Ordering::Relaxed),
        fs: SYNC_FS.load(Ordering::Relaxed),
        store_commit: STORE_COMMIT.load(Ordering::Relaxed),
    }
}

/// Counts one durable commit of the name server's database (made by the database itself).
pub fn count_store_commit() {
    STORE_COMMIT.fetch_add(1, Ordering::Relaxed);
}

/// Makes a file's content and metadata durable (`fsync`), counted.
pub fn fsync_file(f: &File) -> io::Result<()> {
    SYNC_FILE.fetch_add(1, Ordering::Relaxed);
    f.sync_all()
}

/// Makes a file's content durable, and of its metadata what reading it back needs (its
/// size): `fdatasync`, counted.
pub fn fdatasync_file(f: &File) -> io::Result<()> {
    SYNC_DATA.fetch_add(1, Ordering::Relaxed);
    f.sync_data()
}

/// Makes every write on the file system holding `f` durable (`syncfs`), counted.
fn syncfs_of(f: &File) -> io::Result<()> {
    SYNC_FS.fetch_add(1, Ordering::Relaxed);
    nix::unistd::syncfs(f).map_err(io::Error::from)
}

/// Makes every write on the file system holding `dir` durable (`syncfs`), counted.
pub fn syncfs(dir: &Path) -> io::Result<()> {
    syncfs_of(&File::open(dir)?)
}

/// Mode of every file the servers create (before the umask, which can only narrow it).
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the servers create.
pub const DIR_MODE: u32 = 0o700;

/// What [`read_secret`] found wrong with a secret file.
#[derive(Debug)]
pub enum SecretError {
    /// Group or others may use the file: it holds these permission bits.
    Unprotected(u32),
    /// Opening or reading it failed (`NotFound` when there is none).
    Io(io::Error),
}

/// Reads a secret file (a key) of at most `max` bytes, refusing one that group or others may
/// read or write, as ssh refuses an unprotected private key. The mode checked is that of the
/// file actually opened, so nothing can swap it between the check and the read.
pub fn read_secret(path: &Path, max: u64) -> Result<String, SecretError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let f = File::open(path).map_err(SecretError::Io)?;
    let mode = f.metadata().map_err(SecretError::Io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Unprotected(mode));
    }
    let mut text = String::new();
    (&f).take(max)
        .read_to_string(&mut text)
        .map_err(SecretError::Io)?;
    Ok(text)
}

/// Creates the secret file `path` holding `contents` unless it exists: missing directories
/// 0700, the file exactly 0600, whole and synced before it appears (a temp file hard-linked
/// into place), and its name synced into the directory. `link` fails when another process
/// won the race, which is success here: every caller then reads the one file that exists.
pub fn create_secret_once(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", crate::auth::random_hex(6)));
    let written = (|| {
        let mut f = create_new(&tmp)?;
        // The mode given to open is filtered by the umask; 0600 is meant exactly.
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        f.write_all(contents)?;
        fsync_file(&f)?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    // The new name must survive a crash, or a peer could hold a key its owner has lost.
    fsync_dir(dir.unwrap_or(Path::new(".")))
}

/// Creates a new file for writing with [`FILE_MODE`]; fails if `path` exists.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates directory `dir` (not its parents) with [`DIR_MODE`].
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(dir)
}

/// Creates `dir` and missing parents with [`DIR_MODE`], without fsync.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// A fresh, unique temp path inside `tmp_dir`: this process's id and a random salt drawn
/// once (a later process given the same id draws another), then a sequence number. A child
/// forked later would repeat its parent's names; no process that forks makes temp files.
pub fn temp_path(tmp_dir: &Path) -> PathBuf {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix =
        PREFIX.get_or_init(|| format!("t{}-{}", std::process::id(), crate::auth::random_hex(4)));
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    tmp_dir.join(format!("{prefix}-{n}"))
}

/// Swaps the names `a` and `b`, both existing, atomically: `renameat2(RENAME_EXCHANGE)` where
/// the C library has it; unsupported elsewhere.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(io::Error::from)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (a, b);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Fsyncs a directory, making renames and unlinks inside it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    SYNC_DIR.fetch_add(1, Ordering::Relaxed);
    d.sync_all()
}

/// Atomically replaces `target` with the bytes `write` produces, durably, using a temp file in
/// `tmp_dir` (same file system). Creates `target`'s parent directories if needed. On error the
/// target is untouched and the temp file is removed. The sequence is
/// [`crate::ss::store::Fs::replace_with`], run on the real file system.
pub fn replace_with<F>(tmp_dir: &Path, target: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    let mut write = Some(write);
    OsFs.replace_with(tmp_dir, target, &mut |f| match write.take() {
        Some(w) => w(f),
        None => Ok(()),
    })
}

/// [`replace_with`] for a byte slice.
pub fn replace(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    OsFs.replace(tmp_dir, target, bytes)
}

/// Removes `path` (if present) and fsyncs its directory. Returns whether it existed.
pub fn remove(path: &Path) -> io::Result<bool> {
    OsFs.remove(path)
}

/// Creates `dir` and missing parents, fsyncing each parent whose entry list changed.
pub fn create_dirs_durable(dir: &Path) -> io::Result<()> {
    OsFs.create_dirs_durable(dir)
}

/// Most files [`sync_files`] syncs in turn on the calling thread; more go to threads.
const IN_TURN_MAX: usize = 8;

/// Fsyncs every file in turn on the calling thread, having first started the write-back of
/// them all (`sync_file_range`, which makes nothing durable by itself): their blocks are then
/// allocated in one journal transaction, so the first fsync commits it for all of them and
/// the others mostly find their changes committed already, without a thread per file and
/// without concurrent fsyncs splitting the files over several commits. For a few small
/// files (a lone copy, a batch of CREATEs). One result per file, in order.
fn sync_files_in_turn(files: &[&File]) -> Vec<io::Result<()>> {
    if files.len() > 1 {
        for f in files {
            // Only a hint: an error here surfaces again in the fsync below.
            // SAFETY: the descriptor is open for the borrow of `f`; the call reads no memory.
            unsafe {
                libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }
    files.iter().map(|f| fsync_file(f)).collect()
}

/// Most threads [`sync_files`] uses.
const SYNC_THREADS: usize = 32;

/// Fsyncs every file: a few ([`IN_TURN_MAX`]) in turn on the calling thread (see
/// `sync_files_in_turn`), more a few at a time on threads of their own: a journaling file
/// system commits concurrent fsyncs together, so many small files become durable in far fewer
/// disk flushes than one after another. One result per file, in order.
pub fn sync_files<'a>(files: impl IntoIterator<Item = &'a File>) -> Vec<io::Result<()>> {
    let files: Vec<&File> = files.into_iter().collect();
    if files.len() <= IN_TURN_MAX {
        return sync_files_in_turn(&files);
    }
    let per = files.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|part| {
                let h = std::thread::Builder::new()
                    .name("sync".into())
                    .spawn_scoped(scope, move || {
                        part.iter().map(|f| fsync_file(f)).collect::<Vec<_>>()
                    });
                (part, h)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(part, h)| match h.map(|h| h.join()) {
                Ok(Ok(r)) => r,
                // No thread to be had (or it died): sync that part here.
                _ => part.iter().map(|f| fsync_file(f)).collect(),
            })
            .collect()
    })
}

/// A window in which every write to one file system is made durable by one `syncfs(2)`
/// instead of an fsync per file (a storage server's batched install of replicated copies
/// uses it; the store's install docs give the order). Begun (its descriptor opened) before
/// the first byte it must cover is written: the kernel reports to `syncfs` every write-back
/// error on the file system since the descriptor was opened, so an error on any file written
/// inside the window, by the time [`FsSync::sync`] returns, fails that call.
///
/// Why this is as durable as the fsyncs it replaces:
///
/// * `syncfs` writes back every dirty page of the file system and waits, so every byte
///   written before the call is on disk when it returns 0: a superset of the per-file
///   fsyncs (a storage server's `tmp/`, `files/`, `meta/` and `undo/` are on one file
///   system, since renames between them must be).
/// * Errors are not lost. Since Linux 5.8 a page write-back error is also recorded in the
///   super block (`s_wb_err`), and `syncfs` reports every such error since its descriptor
///   was opened. The window is per batch, so one batch's `syncfs` consuming an error cannot
///   hide it from another batch in flight. An error on an unrelated file of the same file
///   system may fail a batch needlessly; it is then retried.
/// * Renames are made durable by directory fsyncs, not by `syncfs`: until Linux 5.17
///   `syncfs` dropped the file system's own `->sync_fs` result (the journal commit that
///   holds the renames), so only a directory fsync reports a rename that failed to reach
///   the disk.
///
/// The cost: `syncfs` also waits for every other dirty file on the disk, so a single copy
/// (a lone change, where lag matters) still fsyncs its own files, and a batch on a disk
/// shared with heavy writers waits for their dirty pages too.
pub struct FsSync(File);

impl FsSync {
    /// Begins a window on the file system holding `dir`, or `None` when this kernel's
    /// `syncfs` may not report every error (before Linux 5.17: 5.8 added page write-back
    /// errors, 5.17 the file system's own sync result): the caller then fsyncs each file.
    pub fn begin(dir: &Path) -> io::Result<Option<FsSync>> {
        if !syncfs_reports_errors() {
            return Ok(None);
        }
        File::open(dir).map(|f| Some(FsSync(f)))
    }

    /// Writes back every dirty page of the file system and waits: every byte written before
    /// the call is durable when it returns `Ok`. Renames are not counted on: before Linux
    /// 5.17 `syncfs` dropped the result of the file system's journal commit, so the caller
    /// makes them durable by fsyncing their directories.
    pub fn sync(&self) -> io::Result<()> {
        syncfs_of(&self.0)
    }
}

/// Whether `syncfs(2)` reports write-back errors: Linux 5.17 and later (5.8 reports page write-back errors, 5.17 also the file system's own sync result).
fn syncfs_reports_errors() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| kernel_at_least(&r, (5, 17)))
            .unwrap_or(false)
    })
}

/// Whether a kernel release string (`6.1.0-13-amd64`) is at least `(major, minor)`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= want)
}

/// True for the error a full disk (or quota) gives, so callers can answer LIMIT.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_whole_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let target = d.path().join("files/x/y.txt");
        replace(&tmp, &target, b"one").unwrap();
        replace(&tmp, &target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        let failed = replace_with(&tmp, &target, |_| Err(io::Error::other("boom")));
        assert!(failed.is_err());
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert!(remove(&target).unwrap());
        assert!(!remove(&target).unwrap());
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert_eq!(kernel_at_least("5.8.0", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("6.1.0-13-amd64", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.4.0-150-generic", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("4.19.0", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("5.10", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("weird", (5, 8)), None);
    }

    #[test]
    fn a_window_syncs_its_file_system() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"x").unwrap();
        if let Some(w) = FsSync::begin(d.path()).unwrap() {
            w.sync().unwrap();
        }
    }

    #[test]
    fn a_relative_single_component_directory_is_created() {
        let name = format!("pairfs-durable-{}", std::process::id());
        let rel = Path::new(&name).join("files");
        // Relative to the current directory, as `--storage s1` is.
        let abs = std::env::current_dir().unwrap().join(&name);
        let _cleanup = Cleanup(abs.clone());
        create_dirs_durable(&rel).unwrap();
        assert!(abs.join("files").is_dir());
    }

    struct Cleanup(PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
