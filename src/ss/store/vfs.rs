//! The file-system calls of the storage server's store, behind a small trait ([`Fs`]), so a
//! backend other than the real disk (one that counts durable calls, or simulates a disk that
//! loses what was not synced at a power cut) can stand in for it.
//!
//! A backend implements the primitives only: create a temp file, open (to read, or to write
//! in place), fsync a file, rename, exchange two names, fsync a directory, hard link,
//! remove a file or a directory tree, read, metadata, list and create a directory. The
//! crash-safe sequences built from them are provided methods of the trait ([`Fs::replace_with`],
//! [`Fs::replace`], [`Fs::remove`], [`Fs::create_dirs_durable`]) and are written once, here:
//! `crate::durable`'s functions of the same names run them on [`OsFs`]. A backend must not
//! override them, or it no longer sees what the store does.
//!
//! The store holds an `Arc<dyn Fs>` rather than being generic over its backend: `Store` is
//! shared by every connection thread, the name server link and the staging code, and a type
//! parameter would spread through all of them for no gain, since each call is a system call
//! whose cost dwarfs one indirect call. [`OsFs`] is a zero-sized set of direct calls to std
//! and `crate::durable`.
//!
//! Bytes are written to the `File` a backend returns, not through the trait; a backend that
//! simulates lost writes tracks files by the paths it opened them at. Large streamed
//! transfers (a received copy's content, history entries and checkpoints written while they
//! arrive, and the content sent or counted) read and write their `File`s directly, and a
//! batch of installs is made durable by one `syncfs` (`durable::FsSync`): passing each chunk
//! through the trait would cost a copy or a call per chunk for nothing. Only the steps that
//! make those files durable and put them in place (rename, directory fsync) matter to a
//! power cut, and those go through the trait where the change protocol performs them, as do
//! the fsync of a batch's files ([`Fs::sync_files`]) and the scan's one `syncfs`
//! ([`Fs::sync_fs`]). The calls made directly are the batch installs' `syncfs` window (a
//! backend that simulates power loss is driven without it), the removal of a dropped [`super::TempFile`], and narrowing the storage root's mode at
//! open.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// The file-system primitives the store uses. See the module docs for what goes through it.
/// Links, removals, reads, metadata and listings default to the OS; a backend overrides only
/// what it must see (the durable calls, at least).
pub trait Fs: Send + Sync {
    /// Creates a new file for writing, private to this user; fails if `path` exists.
    fn create_new(&self, path: &Path) -> io::Result<File>;
    /// Opens a file for reading.
    fn open(&self, path: &Path) -> io::Result<File>;
    /// Opens an existing file for writing in place: neither created nor truncated.
    fn open_write(&self, path: &Path) -> io::Result<File>;
    /// Makes a file's content durable (fsync).
    fn sync_file(&self, f: &File) -> io::Result<()>;
    /// Makes a file's content (and the size needed to read it) durable: `fdatasync`, the
    /// journal's flush. By default [`Fs::sync_file`].
    fn sync_data(&self, f: &File) -> io::Result<()> {
        self.sync_file(f)
    }
    /// Makes several files' content durable (fsync each); one result per file, in order.
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>>;
    /// Makes everything written on the file system holding `dir` durable (`syncfs`).
    fn sync_fs(&self, dir: &Path) -> io::Result<()>;
    /// Makes everything written on the file system holding `dir` durable through a window
    /// opened before those writes (so every write-back error since is reported; see
    /// `durable::FsSync`). By default [`Fs::sync_fs`].
    fn sync_fs_window(&self, w: &crate::durable::FsSync, dir: &Path) -> io::Result<()> {
        let _ = w;
        self.sync_fs(dir)
    }
    /// Renames `from` to `to` atomically, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Swaps the names `a` and `b`, both existing, atomically (`renameat2` with
    /// `RENAME_EXCHANGE`; see `change::place_unsynced` for why). A backend that cannot
    /// answers `Unsupported`, and the caller renames instead.
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (renames, links, removals) durable (fsync).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes `to` a second name of `from`.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)
    }
    /// Removes a file's name.
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    /// Removes a directory and everything under it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }
    /// Reads a whole (small) file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    /// The metadata of `path`, following symbolic links.
    fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        fs::metadata(path)
    }
    /// Lists a directory.
    fn read_dir(&self, dir: &Path) -> io::Result<fs::ReadDir> {
        fs::read_dir(dir)
    }
    /// Creates directory `dir` (not its parents), private to this user.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates `dir` and missing parents, private to this user, without fsync.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Whether `path` exists (following symbolic links), as `Path::exists`.
    fn exists(&self, path: &Path) -> bool {
        self.metadata(path).is_ok()
    }

    /// Whether `path` is a regular file (following symbolic links), as `Path::is_file`.
    fn is_file(&self, path: &Path) -> bool {
        self.metadata(path).is_ok_and(|m| m.is_file())
    }

    /// Whether `path` is a directory (following symbolic links), as `Path::is_dir`.
    fn is_dir(&self, path: &Path) -> bool {
        self.metadata(path).is_ok_and(|m| m.is_dir())
    }

    /// Atomically replaces `target` with the bytes `write` produces, durably: a temp file in
    /// `tmp_dir` (same file system) is written and fsynced, `target`'s folders are made
    /// durably if missing, the temp file is renamed over `target`, and `target`'s directory is
    /// fsynced. On error the target is untouched and the temp file is removed.
    fn replace_with(
        &self,
        tmp_dir: &Path,
        target: &Path,
        write: &mut dyn FnMut(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        let tmp = crate::durable::temp_path(tmp_dir);
        let result = (|| {
            let mut f = self.create_new(&tmp)?;
            write(&mut f)?;
            f.flush()?;
            self.sync_file(&f)?;
            drop(f);
            let parent = target.parent().unwrap_or_else(|| Path::new("."));
            self.create_dirs_durable(parent)?;
            self.rename(&tmp, target)?;
            self.sync_dir(parent)
        })();
        if result.is_err() {
            let _ = self.remove_file(&tmp);
        }
        result
    }

    /// [`Fs::replace_with`] for a byte slice.
    fn replace(&self, tmp_dir: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
        self.replace_with(tmp_dir, target, &mut |f| f.write_all(bytes))
    }

    /// Removes `path` (if present) and fsyncs its directory. Returns whether it existed.
    fn remove(&self, path: &Path) -> io::Result<bool> {
        match self.remove_file(path) {
            Ok(()) => {
                self.sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates `dir` and missing parents, fsyncing each parent whose entry list changed.
    fn create_dirs_durable(&self, dir: &Path) -> io::Result<()> {
        // A relative name's last parent is "", which means the current directory. The root
        // and the current directory are taken as there (a backend failing every call must
        // end the walk up, not loop on ".").
        if dir.as_os_str().is_empty() || dir == Path::new(".") || dir == Path::new("/") {
            return Ok(());
        }
        if self.is_dir(dir) {
            return Ok(());
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        self.create_dirs_durable(parent)?;
        match self.create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        }
        self.sync_dir(parent)
    }
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFs;

impl Fs for OsFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        crate::durable::create_new(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        File::options().write(true).open(path)
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        crate::durable::fsync_file(f)
    }
    fn sync_data(&self, f: &File) -> io::Result<()> {
        crate::durable::fdatasync_file(f)
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        crate::durable::sync_files(files.iter().copied())
    }
    fn sync_fs_window(&self, w: &crate::durable::FsSync, _dir: &Path) -> io::Result<()> {
        w.sync()
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        crate::durable::syncfs(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        crate::durable::exchange(a, b)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        crate::durable::fsync_dir(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        crate::durable::create_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        crate::durable::create_dir_all(dir)
    }
}
