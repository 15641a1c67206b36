//! A simulated disk: an [`Fs`] backend over a real directory that remembers what was made
//! durable, so a simulated power cut can drop everything else.
//!
//! At each file fsync ([`Fs::sync_file`], [`Fs::sync_files`]) it records the file's bytes and
//! mtime as that inode's durable content; at each directory fsync ([`Fs::sync_dir`]) it
//! records the directory's entries (name -> inode, or a subdirectory) as durable. A
//! [`SimDisk::power_cut`] rebuilds the whole tree from those records: every directory holds
//! exactly its durable entries (a directory never fsynced comes back empty), every file its
//! inode's durable content (an inode never fsynced comes back empty), and names that were
//! links to one inode come back as links to one file. A process crash needs nothing: the
//! page cache survives it, so the directory is left as it is.
//!
//! Inodes are named by an id the disk hands out at each [`Fs::create_new`] (the OS may reuse
//! an inode number once a file is gone, and an unsynced removal must still find the old
//! content). Listings the disk takes are sorted, and nothing here reads a clock or the OS's
//! randomness, so a run is reproducible.
//!
//! A failing sync ([`SimDisk::fail_next_syncs`]) answers EIO and makes nothing durable. As
//! Linux may after a write-back error (the dirty pages dropped and marked clean), a later
//! sync of a file whose sync failed answers Ok WITHOUT making it durable while the file still
//! holds the bytes it had then: a program that retries the sync is told a lie, and the next
//! power cut shows it. Bytes written to the file since are made durable again.
//!
//! The planted bug [`SimDisk::plant_skip_dir_fsync`] makes the disk ignore a directory fsync
//! that follows a rename into that directory: what a store skipping that fsync would do.

use crate::ss::store::Fs;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One durable directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

/// An inode's durable content and mtime (ns since the epoch).
#[derive(Debug, Clone, Default)]
struct Durable {
    bytes: Vec<u8>,
    mtime_ns: i128,
}

#[derive(Default)]
struct State {
    /// Real inode number -> simulated inode id.
    ids: HashMap<u64, u64>,
    next_id: u64,
    /// Durable content per simulated inode.
    content: HashMap<u64, Durable>,
    /// Durable entries per directory (relative to the root; "" is the root).
    dirs: BTreeMap<PathBuf, BTreeMap<String, Node>>,
    /// Directories renamed into since their last fsync (for the planted bug).
    renamed_into: BTreeSet<PathBuf>,
    plant_skip_dir_fsync: bool,
    /// Sync calls still to fail with EIO.
    fail_syncs: u32,
    /// Inodes whose sync failed, with the bytes they held then (see the module docs).
    lost: HashMap<u64, Vec<u8>>,
    /// A sync failed since the last `sync_fs` (which reports it, as `syncfs` does).
    failed_since_fs: bool,
    /// Durable calls seen: file fsyncs, directory fsyncs.
    file_syncs: u64,
    dir_syncs: u64,
}

/// The simulated disk. See the module docs.
pub struct SimDisk {
    root: PathBuf,
    st: Mutex<State>,
}

impl SimDisk {
    /// A disk whose durable tree starts as `root`, which must exist and be empty.
    pub fn new(root: &Path) -> SimDisk {
        let mut st = State::default();
        st.dirs.insert(PathBuf::new(), BTreeMap::new());
        SimDisk {
            root: root.to_path_buf(),
            st: Mutex::new(st),
        }
    }

    /// From now on, ignore a directory fsync that follows a rename into that directory.
    pub fn plant_skip_dir_fsync(&self) {
        self.lock().plant_skip_dir_fsync = true;
    }

    /// The next `n` sync calls (of a file, files, a directory or the file system) fail.
    pub fn fail_next_syncs(&self, n: u32) {
        self.lock().fail_syncs += n;
    }

    /// Sync calls still due to fail no longer fail (the fault has passed).
    pub fn heal(&self) {
        self.lock().fail_syncs = 0;
    }

    /// Whether a sync fails now (then counted off); the files given lose their dirty bytes.
    fn sync_fails(st: &mut State, files: &[&File]) -> io::Result<bool> {
        if st.fail_syncs == 0 {
            return Ok(false);
        }
        st.fail_syncs -= 1;
        st.failed_since_fs = true;
        for f in files {
            let id = Self::id_of(st, f.metadata()?.ino());
            let bytes = fs::read(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
            st.lost.insert(id, bytes);
        }
        Ok(true)
    }

    /// File and directory fsyncs seen so far.
    pub fn syncs(&self) -> (u64, u64) {
        let st = self.lock();
        (st.file_syncs, st.dir_syncs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn renamed_into_clear(&self, d: &Path) {
        let rel = self.rel(d);
        self.lock().renamed_into.remove(&rel);
    }

    fn rel(&self, p: &Path) -> PathBuf {
        p.strip_prefix(&self.root).unwrap_or(p).to_path_buf()
    }

    fn id_of(st: &mut State, ino: u64) -> u64 {
        if let Some(id) = st.ids.get(&ino) {
            return *id;
        }
        st.next_id += 1;
        let id = st.next_id;
        st.ids.insert(ino, id);
        id
    }

    fn record_file(st: &mut State, f: &File) -> io::Result<()> {
        let md = f.metadata()?;
        // Reopened through /proc: the handle may be write-only.
        let bytes = fs::read(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
        let id = Self::id_of(st, md.ino());
        if st.lost.get(&id) == Some(&bytes) {
            // Its pages were dropped at the failed sync: Ok, and nothing made durable.
            return Ok(());
        }
        st.lost.remove(&id);
        let mtime_ns = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
        st.content.insert(id, Durable { bytes, mtime_ns });
        st.file_syncs += 1;
        Ok(())
    }

    /// A power cut: the tree is rebuilt from what was durable (see the module docs).
    pub fn power_cut(&self) -> io::Result<()> {
        let mut st = self.lock();
        for e in sorted_entries(&self.root)? {
            let p = self.root.join(&e);
            if fs::symlink_metadata(&p)?.is_dir() {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
        }
        st.ids.clear();
        st.renamed_into.clear();
        st.lost.clear();
        st.fail_syncs = 0;
        st.failed_since_fs = false;
        let mut placed: HashMap<u64, PathBuf> = HashMap::new();
        let mut reachable = BTreeSet::new();
        let mut todo = vec![PathBuf::new()];
        while let Some(dir) = todo.pop() {
            reachable.insert(dir.clone());
            let entries = st.dirs.get(&dir).cloned().unwrap_or_default();
            for (name, node) in entries {
                let rel = dir.join(&name);
                let p = self.root.join(&rel);
                match node {
                    Node::Dir => {
                        crate::durable::create_dir(&p)?;
                        todo.push(rel);
                    }
                    Node::File(id) => {
                        if let Some(first) = placed.get(&id) {
                            fs::hard_link(first, &p)?;
                            continue;
                        }
                        let d = st.content.get(&id).cloned().unwrap_or_default();
                        fs::write(&p, &d.bytes)?;
                        let f = fs::OpenOptions::new().write(true).open(&p)?;
                        if d.mtime_ns > 0 {
                            let t = UNIX_EPOCH + Duration::from_nanos(d.mtime_ns as u64);
                            f.set_modified(t)?;
                        } else {
                            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))?;
                        }
                        let ino = f.metadata()?.ino();
                        st.ids.insert(ino, id);
                        placed.insert(id, p);
                    }
                }
            }
        }
        st.dirs.retain(|d, _| reachable.contains(d));
        let live: BTreeSet<u64> = placed.keys().copied().collect();
        st.content.retain(|id, _| live.contains(id));
        Ok(())
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EIO)
}

/// The names in `dir`, sorted.
fn sorted_entries(dir: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

impl Fs for SimDisk {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        let f = crate::durable::create_new(path)?;
        let ino = f.metadata()?.ino();
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        st.ids.insert(ino, id);
        Ok(f)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        File::options().write(true).open(path)
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        f.sync_all()?;
        let mut st = self.lock();
        if Self::sync_fails(&mut st, &[f])? {
            return Err(eio());
        }
        Self::record_file(&mut st, f)
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        let mut st = self.lock();
        files
            .iter()
            .map(|f| {
                if Self::sync_fails(&mut st, &[f])? {
                    return Err(eio());
                }
                Self::record_file(&mut st, f)
            })
            .collect()
    }
    fn sync_fs(&self, _dir: &Path) -> io::Result<()> {
        {
            let mut st = self.lock();
            // A write-back error since the last call is reported once, as `syncfs` reports
            // errors seen since the descriptor it is given was opened.
            if Self::sync_fails(&mut st, &[])? || std::mem::take(&mut st.failed_since_fs) {
                return Err(eio());
            }
        }
        // Everything under the root: every directory's entries, every file's content.
        let mut todo = vec![self.root.clone()];
        while let Some(d) = todo.pop() {
            for name in sorted_entries(&d)? {
                let p = d.join(&name);
                if fs::symlink_metadata(&p)?.is_dir() {
                    todo.push(p);
                } else {
                    let f = File::open(&p)?;
                    Self::record_file(&mut self.lock(), &f)?;
                }
            }
            self.renamed_into_clear(&d);
            self.sync_dir(&d)?;
        }
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        if let Some(parent) = to.parent() {
            let rel = self.rel(parent);
            self.lock().renamed_into.insert(rel);
        }
        Ok(())
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        crate::durable::exchange(a, b)?;
        let mut st = self.lock();
        for p in [a, b] {
            if let Some(parent) = p.parent() {
                st.renamed_into.insert(self.rel(parent));
            }
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let rel = self.rel(dir);
        let mut st = self.lock();
        if Self::sync_fails(&mut st, &[])? {
            return Err(eio());
        }
        st.dir_syncs += 1;
        let renamed = st.renamed_into.remove(&rel);
        if renamed && st.plant_skip_dir_fsync {
            return Ok(());
        }
        let mut entries = BTreeMap::new();
        for name in sorted_entries(dir)? {
            let md = fs::symlink_metadata(dir.join(&name))?;
            let node = if md.is_dir() {
                Node::Dir
            } else {
                Node::File(Self::id_of(&mut st, md.ino()))
            };
            entries.insert(name, node);
        }
        st.dirs.insert(rel, entries);
        Ok(())
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        crate::durable::create_dir(dir)?;
        // A new directory has no durable entries, whatever an earlier one of its name had.
        let rel = self.rel(dir);
        self.lock().dirs.insert(rel, BTreeMap::new());
        Ok(())
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories made here are not durable until their parents are synced; the ones
        // that already had durable entries keep them.
        let mut missing = Vec::new();
        let mut d = dir.to_path_buf();
        while !d.exists() && d.starts_with(&self.root) {
            missing.push(self.rel(&d));
            if !d.pop() {
                break;
            }
        }
        crate::durable::create_dir_all(dir)?;
        let mut st = self.lock();
        for rel in missing {
            st.dirs.insert(rel, BTreeMap::new());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn disk() -> (tempfile::TempDir, SimDisk) {
        let d = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(d.path());
        (d, disk)
    }

    fn write_synced(disk: &SimDisk, p: &Path, bytes: &[u8]) {
        let mut f = disk.create_new(p).unwrap();
        f.write_all(bytes).unwrap();
        disk.sync_file(&f).unwrap();
    }

    #[test]
    fn a_sync_retried_after_it_failed_lies_until_the_file_is_written_again() {
        let (d, disk) = disk();
        let r = d.path();
        write_synced(&disk, &r.join("a"), b"one");
        disk.sync_dir(r).unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(r.join("a"))
            .unwrap();
        f.write_all(b" two").unwrap();
        disk.fail_next_syncs(1);
        assert_eq!(
            disk.sync_file(&f).unwrap_err().raw_os_error(),
            Some(nix::libc::EIO)
        );
        disk.sync_file(&f).expect("the retry is told Ok");
        assert!(disk.sync_fs(r).is_err(), "syncfs reports the error once");
        disk.sync_fs(r).unwrap();
        disk.power_cut().unwrap();
        assert_eq!(fs::read(r.join("a")).unwrap(), b"one", "the retry lied");
        // Written again: the next sync makes it durable.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(r.join("a"))
            .unwrap();
        disk.fail_next_syncs(1);
        assert!(disk.sync_file(&f).is_err());
        f.write_all(b" three").unwrap();
        disk.sync_file(&f).unwrap();
        disk.power_cut().unwrap();
        assert_eq!(fs::read(r.join("a")).unwrap(), b"one three");
    }

    #[test]
    fn a_power_cut_drops_what_was_not_synced() {
        let (d, disk) = disk();
        let r = d.path();
        // Synced content and synced entry: survives.
        write_synced(&disk, &r.join("a"), b"alpha");
        // Synced content, entry never synced: gone.
        disk.sync_dir(r).unwrap();
        write_synced(&disk, &r.join("b"), b"beta");
        // Entry synced, content never synced: comes back empty.
        let mut f = disk.create_new(&r.join("c")).unwrap();
        f.write_all(b"gamma").unwrap();
        disk.sync_dir(r).unwrap();
        // Written after the sync: the synced bytes come back.
        f.write_all(b" more").unwrap();
        drop(f);
        disk.power_cut().unwrap();
        assert_eq!(fs::read(r.join("a")).unwrap(), b"alpha");
        assert_eq!(fs::read(r.join("c")).unwrap(), b"");
        assert!(r.join("b").exists(), "b's entry was synced with c's");
        assert_eq!(fs::read(r.join("b")).unwrap(), b"beta");
    }

    #[test]
    fn an_unsynced_rename_and_removal_are_undone_and_links_stay_links() {
        let (d, disk) = disk();
        let r = d.path();
        disk.create_dir(&r.join("sub")).unwrap();
        disk.sync_dir(r).unwrap();
        let sub = r.join("sub");
        write_synced(&disk, &sub.join("x"), b"old");
        disk.hard_link(&sub.join("x"), &sub.join("y")).unwrap();
        disk.sync_dir(&sub).unwrap();
        write_synced(&disk, &sub.join("t"), b"new");
        disk.rename(&sub.join("t"), &sub.join("x")).unwrap();
        disk.remove_file(&sub.join("y")).unwrap();
        assert_eq!(fs::read(sub.join("x")).unwrap(), b"new");
        disk.power_cut().unwrap();
        assert_eq!(fs::read(sub.join("x")).unwrap(), b"old");
        assert!(!sub.join("t").exists());
        let (x, y) = (
            fs::metadata(sub.join("x")).unwrap(),
            fs::metadata(sub.join("y")).unwrap(),
        );
        assert_eq!(x.ino(), y.ino(), "a link comes back as a link");
        // A synced rename survives.
        write_synced(&disk, &sub.join("t"), b"newer");
        disk.rename(&sub.join("t"), &sub.join("x")).unwrap();
        disk.sync_dir(&sub).unwrap();
        disk.power_cut().unwrap();
        assert_eq!(fs::read(sub.join("x")).unwrap(), b"newer");
        assert_eq!(fs::read(sub.join("y")).unwrap(), b"old");
    }

    #[test]
    fn a_directory_never_synced_into_its_parent_is_gone_and_mtime_is_kept() {
        let (d, disk) = disk();
        let r = d.path();
        disk.create_dir(&r.join("keep")).unwrap();
        disk.sync_dir(r).unwrap();
        write_synced(&disk, &r.join("keep").join("f"), b"1");
        disk.sync_dir(&r.join("keep")).unwrap();
        let before = fs::metadata(r.join("keep").join("f")).unwrap().mtime_nsec();
        disk.create_dir(&r.join("lost")).unwrap();
        write_synced(&disk, &r.join("lost").join("g"), b"2");
        disk.sync_dir(&r.join("lost")).unwrap();
        disk.power_cut().unwrap();
        assert!(!r.join("lost").exists());
        let md = fs::metadata(r.join("keep").join("f")).unwrap();
        assert_eq!(md.mtime_nsec(), before);
    }

    #[test]
    fn the_planted_bug_loses_a_rename_the_store_synced() {
        let (d, disk) = disk();
        let r = d.path();
        disk.plant_skip_dir_fsync();
        write_synced(&disk, &r.join("t"), b"v");
        disk.rename(&r.join("t"), &r.join("x")).unwrap();
        disk.sync_dir(r).unwrap();
        disk.power_cut().unwrap();
        assert!(!r.join("x").exists());
    }

    fn store_on(root: &Path, disk: &std::sync::Arc<SimDisk>) -> crate::ss::store::Store {
        let fs: std::sync::Arc<dyn Fs> = disk.clone();
        let s = crate::ss::store::Store::open_on(fs, &root.join("ss"), "ss1").unwrap();
        s.scan().unwrap();
        s
    }

    #[test]
    fn the_store_keeps_every_change_it_returned_across_a_power_cut() {
        let d = tempfile::tempdir().unwrap();
        let disk = std::sync::Arc::new(SimDisk::new(d.path()));
        let s = store_on(d.path(), &disk);
        let m = s.create("a.txt", "alice", 1).unwrap();
        let m = s.write_content("a.txt", m, b"one two").unwrap();
        let m2 = s.write_content("a.txt", m.clone(), b"three").unwrap();
        drop(s);
        disk.power_cut().unwrap();
        let s = store_on(d.path(), &disk);
        let (text, meta, _) = s.load_text("a.txt").unwrap();
        assert_eq!((text.as_str(), meta.version), ("three", m2.version));
        let back = s.undo("a.txt", 1).unwrap();
        assert_eq!(back.checksum, m.checksum);
    }

    #[test]
    fn with_the_planted_bug_the_store_loses_a_change_it_returned() {
        let d = tempfile::tempdir().unwrap();
        let disk = std::sync::Arc::new(SimDisk::new(d.path()));
        let s = store_on(d.path(), &disk);
        let m = s.create("a.txt", "alice", 1).unwrap();
        disk.plant_skip_dir_fsync();
        let m = s.write_content("a.txt", m, b"lost").unwrap();
        // The journal's checkpoint is where the rename is made durable by a directory fsync.
        s.checkpoint_journal().unwrap();
        drop(s);
        disk.power_cut().unwrap();
        let s = store_on(d.path(), &disk);
        let got = s.load_text("a.txt").map(|(t, meta, _)| (t, meta.version));
        assert!(
            !matches!(got, Ok((ref t, v)) if t == "lost" && v == m.version),
            "{got:?}"
        );
    }
}
