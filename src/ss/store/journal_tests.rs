//! Tests of the journal on the simulated disk: a power cut after every step of journaled
//! CREATEs and WRITEs, of a checkpoint and of a redo; a torn tail; every other change of a
//! journaled file settling it first; the flushes a change costs.

use super::*;
use crate::sim::disk::SimDisk;
use std::sync::atomic::AtomicBool;

/// A simulated disk whose power is cut before its `n`-th call (counting from 0) once armed;
/// every call after the cut fails.
struct Cutter {
    disk: Arc<SimDisk>,
    left: Mutex<Option<u64>>,
    off: AtomicBool,
    calls: AtomicU64,
}

impl Cutter {
    fn new(disk: &Arc<SimDisk>, cut_at: Option<u64>) -> Arc<Cutter> {
        Arc::new(Cutter {
            disk: disk.clone(),
            left: Mutex::new(cut_at),
            off: AtomicBool::new(false),
            calls: AtomicU64::new(0),
        })
    }

    fn step<T>(&self, f: impl FnOnce(&SimDisk) -> io::Result<T>) -> io::Result<T> {
        let mut left = self.left.lock().unwrap();
        if self.off.load(Ordering::SeqCst) {
            return Err(io::Error::other("the power is off"));
        }
        if let Some(n) = left.as_mut() {
            if *n == 0 {
                self.off.store(true, Ordering::SeqCst);
                self.disk.power_cut().unwrap();
                return Err(io::Error::other("the power is off"));
            }
            *n -= 1;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        f(&self.disk)
    }
}

impl Fs for Cutter {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.step(|d| d.create_new(path))
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.step(|d| d.open(path))
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        self.step(|d| d.open_write(path))
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.step(|d| d.sync_file(f))
    }
    fn sync_data(&self, f: &File) -> io::Result<()> {
        self.step(|d| d.sync_data(f))
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        files.iter().map(|f| self.sync_file(f)).collect()
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.step(|d| d.sync_fs(dir))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step(|d| d.rename(from, to))
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.step(|d| d.exchange(a, b))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step(|d| d.sync_dir(dir))
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step(|d| d.hard_link(from, to))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.step(|d| d.remove_file(path))
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.step(|d| d.remove_dir_all(dir))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.step(|d| d.read(path))
    }
    fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        self.step(|d| d.metadata(path))
    }
    fn read_dir(&self, dir: &Path) -> io::Result<fs::ReadDir> {
        self.step(|d| d.read_dir(dir))
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.step(|d| d.create_dir(dir))
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.step(|d| d.create_dir_all(dir))
    }
}

/// What the store returned for one file: its text, version and history (oldest first).
#[derive(Debug, Clone, Default)]
struct Acked {
    text: String,
    version: Option<Version>,
    history: Vec<String>,
}

const FILE: &str = "d/a.txt";

/// CREATE, three WRITEs with a checkpoint after the second, and a second CREATE; records
/// what each call returned. Stops at the first error (the power is off).
fn scenario(s: &Store) -> Acked {
    let mut a = Acked::default();
    let Ok(m) = s.create(FILE, "alice", 1) else {
        return a;
    };
    a.version = Some(m.version);
    for (k, text) in ["one.", "two.", "three."].iter().enumerate() {
        let lock = s.file_lock(FILE);
        let _g = lock.lock().unwrap();
        let Ok((_, meta, _)) = s.load_text(FILE) else {
            return a;
        };
        let Ok(next) = s.write_content(FILE, meta, text.as_bytes()) else {
            return a;
        };
        a.history
            .push(std::mem::replace(&mut a.text, text.to_string()));
        a.version = Some(next.version);
        if k == 1 && s.checkpoint_journal().is_err() {
            return a;
        }
    }
    let _ = s.create("b.txt", "bob", 1);
    a
}

/// Opens the store on the bare disk and checks that what was returned is there, with its
/// history (taken back by UNDO).
fn check(root: &Path, disk: &Arc<SimDisk>, a: &Acked, what: &str) {
    let s = Store::open_on(disk.clone(), root, "ss1").unwrap_or_else(|e| panic!("{what}: {e}"));
    s.scan().unwrap();
    let Some(v) = a.version else {
        return;
    };
    let lock = s.file_lock(FILE);
    let _g = lock.lock().unwrap();
    let (text, meta, adopted) = s
        .load_text(FILE)
        .unwrap_or_else(|e| panic!("{what}: {FILE} returned at {v} is gone: {e}"));
    assert!(meta.version >= v, "{what}: {} after {v}", meta.version);
    if meta.version > v {
        // A change under way when the power went is there whole, or not at all.
        return;
    }
    assert!(!adopted, "{what}: the record does not match its content");
    assert_eq!(text, a.text, "{what}");
    for old in a.history.iter().rev() {
        s.undo(FILE, 1)
            .unwrap_or_else(|e| panic!("{what}: undo to {old:?}: {e}"));
        assert_eq!(s.load_text(FILE).unwrap().0, *old, "{what}: history");
    }
}

fn fresh() -> (tempfile::TempDir, Arc<SimDisk>, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let disk = Arc::new(SimDisk::new(d.path()));
    let root = d.path().join("ss");
    (d, disk, root)
}

#[test]
fn a_power_cut_after_any_step_of_journaled_changes_and_a_checkpoint_loses_nothing_returned() {
    // How many calls the scenario makes, counted on a run without a cut.
    let (_d, disk, root) = fresh();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    let counter = Cutter::new(&disk, None);
    drop(s);
    let s = Store::open_on(counter.clone(), &root, "ss1").unwrap();
    let opened = counter.calls.load(Ordering::SeqCst);
    let full = scenario(&s);
    assert_eq!(full.text, "three.");
    let total = counter.calls.load(Ordering::SeqCst) - opened;
    assert!(total > 20, "{total}");
    for cut in 0..=total {
        let (_d, disk, root) = fresh();
        drop(Store::open_on(disk.clone(), &root, "ss1").unwrap());
        let cutter = Cutter::new(&disk, None);
        let s = Store::open_on(cutter.clone(), &root, "ss1").unwrap();
        *cutter.left.lock().unwrap() = Some(cut);
        let a = scenario(&s);
        drop(s);
        if !cutter.off.load(Ordering::SeqCst) {
            disk.power_cut().unwrap();
        }
        check(
            &root,
            &disk,
            &a,
            &format!("cut before call {cut} of {total}"),
        );
    }
}

#[test]
fn a_power_cut_during_the_redo_redoes_again() {
    // The journal holds the last WRITE and the second CREATE when the power goes.
    let (_d, disk, root) = fresh();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    let a = scenario(&s);
    drop(s);
    disk.power_cut().unwrap();
    let log_bytes: usize = fs::read_dir(root.join("journal"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap().len())
        .sum();
    assert!(log_bytes > 0, "the journal is empty: nothing to redo");
    // How many calls a whole redo makes.
    let snapshot = tempfile::tempdir().unwrap();
    copy_tree(&root, snapshot.path());
    let counter = Cutter::new(&disk, None);
    drop(Store::open_on(counter.clone(), &root, "ss1").unwrap());
    let total = counter.calls.load(Ordering::SeqCst);
    for cut in 0..total {
        let (_d2, disk2, root2) = fresh();
        // The same durable state as `disk` after the cut: a store redone on the copy.
        copy_tree(snapshot.path(), &root2);
        sync_all(&disk2, &root2);
        let cutter = Cutter::new(&disk2, Some(cut));
        let _ = Store::open_on(cutter.clone(), &root2, "ss1");
        if !cutter.off.load(Ordering::SeqCst) {
            disk2.power_cut().unwrap();
        }
        check(
            &root2,
            &disk2,
            &a,
            &format!("redo cut before call {cut} of {total}"),
        );
    }
}

/// Copies the tree at `from` into `to` (plain files and directories).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            fs::copy(e.path(), &t).unwrap();
            let mtime = fs::metadata(e.path()).unwrap().modified().unwrap();
            File::options()
                .write(true)
                .open(&t)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
    }
}

/// Makes everything under `root` durable on `disk` (its parents included).
fn sync_all(disk: &SimDisk, root: &Path) {
    let mut d = root.to_path_buf();
    while d.pop() {
        let _ = disk.sync_dir(&d);
    }
    disk.sync_fs(root).unwrap();
}

#[test]
fn a_torn_last_entry_is_ignored() {
    let (_d, disk, root) = fresh();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    let a = scenario(&s);
    drop(s);
    // Half an entry more at the end of the log, durable.
    let log = fs::read_dir(root.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let frame = journal::encode(
        &journal::Head {
            file: FILE.into(),
            meta: s_meta(),
            blob: None,
            new_len: 5,
            old_len: 0,
        },
        b"torn!",
        b"",
    )
    .unwrap();
    let mut f = File::options().append(true).open(&log).unwrap();
    f.write_all(&frame[..frame.len() - 3]).unwrap();
    disk.sync_file(&f).unwrap();
    drop(f);
    disk.power_cut().unwrap();
    check(&root, &disk, &a, "torn tail");
}

fn s_meta() -> Meta {
    Meta {
        version: Version {
            epoch: 9,
            counter: 9,
        },
        checksum: crc32c::crc32c(b"torn!"),
        size: 5,
        mtime_ns: 0,
        words: 1,
        chars: 5,
        modified_ms: 0,
        owner: None,
        undo: Vec::new(),
    }
}

/// A store with FILE created and written twice through the journal (its entries not yet
/// checkpointed).
fn journaled() -> (tempfile::TempDir, Arc<SimDisk>, PathBuf, Store) {
    let (d, disk, root) = fresh();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.create(FILE, "alice", 1).unwrap();
    for text in ["one.", "two."] {
        let (_, meta, _) = s.load_text(FILE).unwrap();
        s.write_content(FILE, meta, text.as_bytes()).unwrap();
    }
    assert!(s.journal.as_ref().unwrap().is_pending(FILE));
    (d, disk, root, s)
}

/// Cuts the power under `s` and opens the store again.
fn after_cut(disk: &Arc<SimDisk>, root: &Path, s: Store) -> Store {
    drop(s);
    disk.power_cut().unwrap();
    let s = Store::open_on(disk.clone(), root, "ss1").unwrap();
    s.scan().unwrap();
    s
}

#[test]
fn a_delete_whose_removal_is_made_but_not_synced_fails_the_journal() {
    let (_d, disk, root, s) = journaled();
    s.checkpoint_journal().unwrap();
    // The removal of the content is made; the sync of its directory fails.
    disk.fail_next_syncs(1);
    let e = s.delete(FILE).unwrap_err();
    assert!(e.to_string().contains("could not be made durable"), "{e}");
    assert!(s.journal_failed(), "the server must stop");
    assert!(!root.join("files").join(FILE).exists(), "removed now");
    // Until it stops, the server makes no other change outside the journal: a repeated
    // DELETE does not find the file gone.
    assert!(!matches!(
        s.delete(FILE),
        Err(StoreError::NotFound(_)) | Ok(())
    ));
    // Whatever the disk then holds is what the restart lists (here the removal was lost).
    let s = after_cut(&disk, &root, s);
    assert_eq!(text_of(&s, FILE), "two.");
    // A delete that finds no content to remove fails (NOT_FOUND) and the server runs on.
    let (_d, _disk, root, s) = journaled();
    s.checkpoint_journal().unwrap();
    fs::remove_file(root.join("files").join(FILE)).unwrap();
    assert!(matches!(s.delete(FILE), Err(StoreError::NotFound(_))));
    assert!(!s.journal_failed());
}

#[test]
fn a_delete_after_a_journaled_write_is_not_undone_by_the_redo() {
    let (_d, disk, root, s) = journaled();
    s.delete(FILE).unwrap();
    let s = after_cut(&disk, &root, s);
    assert!(matches!(s.load_text(FILE), Err(StoreError::NotFound(_))));
    assert!(!root.join("meta").join(FILE).exists());
}

#[test]
fn every_other_change_of_a_journaled_file_settles_it_first() {
    // The guard refuses a change made behind the journal's back.
    let (_d, _disk, _root, s) = journaled();
    assert!(s.fs.remove_file(&s.content_path(FILE)).is_err());
    s.checkpoint_journal().unwrap();
    assert!(!s.journal.as_ref().unwrap().is_pending(FILE));

    // MOVE.
    let (_d, disk, root, s) = journaled();
    s.move_file(FILE, "d/b.txt").unwrap();
    let s = after_cut(&disk, &root, s);
    assert!(s.load_text(FILE).is_err());
    assert_eq!(s.load_text("d/b.txt").unwrap().0, "two.");

    // UNDO.
    let (_d, disk, root, s) = journaled();
    s.undo(FILE, 1).unwrap();
    let s = after_cut(&disk, &root, s);
    assert_eq!(s.load_text(FILE).unwrap().0, "one.");

    // CHECKPOINT, then REVERT.
    let (_d, disk, root, s) = journaled();
    s.checkpoint(FILE, "t", "alice", 1).unwrap();
    let s = after_cut(&disk, &root, s);
    let (_, info, _, _) = s.open_checkpoint(FILE, "t").unwrap();
    assert_eq!(info.checksum, crc32c::crc32c(b"two."));
    {
        let (_, meta, _) = s.load_text(FILE).unwrap();
        s.write_content(FILE, meta, b"three.").unwrap();
    }
    s.revert(FILE, "t", 1).unwrap();
    let s = after_cut(&disk, &root, s);
    assert_eq!(s.load_text(FILE).unwrap().0, "two.");

    // UPLOAD.
    let (_d, disk, root, s) = journaled();
    let (t, mut f) = s.temp_file(FILE).unwrap();
    f.write_all(b"uploaded.").unwrap();
    disk.sync_file(&f).unwrap();
    let mut counter = ContentCounter::new();
    counter.update(b"uploaded.");
    s.upload(FILE, "alice", t.path(), &counter.finish(0))
        .unwrap();
    let s = after_cut(&disk, &root, s);
    assert_eq!(s.load_text(FILE).unwrap().0, "uploaded.");

    // Quarantine.
    let (_d, disk, root, s) = journaled();
    s.quarantine(FILE, None).unwrap();
    let s = after_cut(&disk, &root, s);
    assert!(s.load_text(FILE).is_err());
    assert_eq!(s.quarantined(FILE).unwrap().len(), 1);

    // An install of a newer copy from the partner.
    let (_d, disk, root, s) = journaled();
    let partner_dir = tempfile::tempdir().unwrap();
    let partner = Store::open(partner_dir.path(), "ss2").unwrap();
    let newer = partner.create(FILE, "alice", 2).unwrap();
    let (t, f) = s.temp_file(FILE).unwrap();
    disk.sync_file(&f).unwrap();
    let state = newer.state(FILE);
    let (_, installed) = s
        .install_copy(&state, &[], t.path(), &[], &[], &[])
        .unwrap();
    assert!(installed);
    let s = after_cut(&disk, &root, s);
    let (text, meta, _) = s.load_text(FILE).unwrap();
    assert_eq!((text.as_str(), meta.version), ("", newer.version));

    // A large write takes the direct path.
    let (_d, disk, root, s) = journaled();
    let big = vec![b'x'; JOURNAL_MAX_CONTENT as usize + 1];
    let (_, meta, _) = s.load_text(FILE).unwrap();
    let m = s.write_content(FILE, meta, &big).unwrap();
    let s = after_cut(&disk, &root, s);
    let (_, meta, _) = s.load_text(FILE).unwrap();
    assert_eq!((meta.version, meta.size), (m.version, big.len() as u64));

    // Adoption of a hand edit.
    let (_d, _disk, _root, s) = journaled();
    fs::write(s.content_path(FILE), b"by hand.").unwrap();
    let (text, _, adopted) = s.load_text(FILE).unwrap();
    assert!(adopted && text == "by hand.");

    // A file removed by hand is forgotten.
    let (_d, _disk, _root, s) = journaled();
    fs::remove_file(s.content_path(FILE)).unwrap();
    assert!(s.forget_vanished(FILE));
}

#[test]
fn a_lone_change_costs_one_flush_and_concurrent_ones_share_them() {
    let (_d, disk, root) = fresh();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    let before = disk.syncs();
    s.create("flat.txt", "alice", 1).unwrap();
    let after = disk.syncs();
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 0), "CREATE");
    let (_, meta, _) = s.load_text("flat.txt").unwrap();
    s.write_content("flat.txt", meta, b"one.").unwrap();
    let again = disk.syncs();
    assert_eq!((again.0 - after.0, again.1 - after.1), (1, 0), "WRITE");

    // CREATEs arriving while the log is being synced share the next sync.
    const N: usize = 8;
    let hold = Arc::new(Holding {
        disk: disk.clone(),
        held: Mutex::new(true),
        wake: std::sync::Condvar::new(),
        syncs: AtomicU64::new(0),
    });
    drop(s);
    let s = Store::open_on(hold.clone(), &root, "ss1").unwrap();
    let j = s.journal.as_ref().unwrap().clone();
    std::thread::scope(|scope| {
        let s = &s;
        let lead = scope.spawn(move || s.create("lead.txt", "alice", 1));
        while hold.syncs.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let others: Vec<_> = (0..N)
            .map(|i| scope.spawn(move || s.create(&format!("c{i}.txt"), "alice", 1)))
            .collect();
        while j.pending_count() < N + 1 {
            std::thread::yield_now();
        }
        *hold.held.lock().unwrap() = false;
        hold.wake.notify_all();
        lead.join().unwrap().unwrap();
        for o in others {
            o.join().unwrap().unwrap();
        }
    });
    assert_eq!(
        hold.syncs.load(Ordering::SeqCst),
        2,
        "the queued CREATEs share one sync"
    );
    let s = after_cut(&disk, &root, s);
    for i in 0..N {
        assert_eq!(s.load_text(&format!("c{i}.txt")).unwrap().0, "");
    }
}

/// The simulated disk, with the journal's syncs held while `held` is set.
struct Holding {
    disk: Arc<SimDisk>,
    held: Mutex<bool>,
    wake: std::sync::Condvar,
    syncs: AtomicU64,
}

impl Fs for Holding {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.disk.create_new(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.disk.open(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        self.disk.open_write(path)
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.disk.sync_file(f)
    }
    fn sync_data(&self, f: &File) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.wake.wait(held).unwrap();
        }
        drop(held);
        self.disk.sync_data(f)
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        self.disk.sync_files(files)
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.disk.sync_fs(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.rename(from, to)
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.disk.exchange(a, b)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.sync_dir(dir)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.disk.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.remove_dir_all(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir_all(dir)
    }
}

#[test]
fn a_hand_edit_made_while_the_server_was_down_is_kept_not_redone_over() {
    let (_d, disk, root, s) = journaled();
    let (_, before, _) = s.load_text(FILE).unwrap();
    // A crash (the page cache survives), then the content edited by hand.
    drop(s);
    let path = root.join("files").join(FILE);
    fs::write(&path, b"by hand.").unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.scan().unwrap();
    let (text, meta, _) = s.load_text(FILE).unwrap();
    assert_eq!(text, "by hand.");
    assert!(meta.version > before.version, "adopted as a new version");
}

#[test]
fn content_from_before_a_change_with_a_later_mtime_is_redone_over_not_kept() {
    let (_d, disk, root) = fresh();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.create(FILE, "alice", 1).unwrap();
    {
        let (_, meta, _) = s.load_text(FILE).unwrap();
        s.write_content(FILE, meta, b"old.").unwrap();
    }
    s.checkpoint_journal().unwrap();
    // Content whose mtime is ahead of this clock (copied in with cp -p from a skewed host,
    // or an NTP step back): adopted as usual.
    let p = root.join("files").join(FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    let _ = s.load_text(FILE).unwrap();
    sync_all(&disk, &root);
    let lock = s.file_lock(FILE);
    let acked = {
        let _g = lock.lock().unwrap();
        let (_, meta, _) = s.load_text(FILE).unwrap();
        s.write_content(FILE, meta, b"new, acknowledged.").unwrap()
    };
    drop(lock);
    drop(s);
    disk.power_cut().unwrap();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.scan().unwrap();
    let (text, meta, _) = s.load_text(FILE).unwrap();
    assert!(meta.version >= acked.version);
    assert_eq!(text, "new, acknowledged.");
}

/// A file system acting as Linux does after a write-back error: the failing fsync reports EIO
/// once, the dirty pages are marked clean (never written), and a later fsync of the inode
/// returns Ok.
struct Eio {
    disk: Arc<SimDisk>,
    armed: AtomicBool,
    lost: Mutex<HashSet<u64>>,
}
impl Eio {
    fn ino(f: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().ino()
    }
}
impl Fs for Eio {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.disk.create_new(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.disk.open(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        self.disk.open_write(path)
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.disk.sync_file(f)
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        files
            .iter()
            .map(|f| {
                let ino = Self::ino(f);
                let content = f.metadata().unwrap().len() == 18; // the acknowledged new content
                if self.lost.lock().unwrap().contains(&ino) {
                    return Ok(());
                }
                if content && self.armed.swap(false, Ordering::SeqCst) {
                    self.lost.lock().unwrap().insert(ino);
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                self.disk.sync_files(&[f]).pop().unwrap()
            })
            .collect()
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.disk.sync_fs(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.rename(from, to)
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.disk.exchange(a, b)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.sync_dir(dir)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.disk.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.remove_dir_all(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir_all(dir)
    }
}

#[test]
fn a_failed_checkpoint_sync_fails_the_journal_and_the_restart_redoes_it() {
    let (_d, disk, root) = fresh();
    let eio = Arc::new(Eio {
        disk: disk.clone(),
        armed: AtomicBool::new(false),
        lost: Mutex::new(HashSet::new()),
    });
    let s = Store::open_on(eio.clone(), &root, "ss1").unwrap();
    s.create(FILE, "alice", 1).unwrap();
    s.checkpoint_journal().unwrap();
    let acked = {
        let (_, meta, _) = s.load_text(FILE).unwrap();
        s.write_content(FILE, meta, b"new, acknowledged.").unwrap()
    };
    eio.armed.store(true, Ordering::SeqCst);
    assert!(
        s.checkpoint_journal().is_err(),
        "the first checkpoint sees EIO"
    );
    // No retry trusts a second fsync of the same pages (Linux answers Ok): the journal has
    // failed, every change and checkpoint is refused, and the server stops.
    assert!(s.journal_failed());
    assert!(s.checkpoint_journal().is_err());
    let (_, meta, _) = s.load_text(FILE).unwrap();
    assert!(s.write_content(FILE, meta, b"refused.").is_err());
    drop(s);
    disk.power_cut().unwrap();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.scan().unwrap();
    let got = s.load_text(FILE);
    let (text, meta, _) = got.unwrap();
    assert_eq!(
        (text.as_str(), meta.version),
        ("new, acknowledged.", acked.version)
    );
}

#[test]
fn after_a_failed_checkpoint_the_restart_puts_each_file_at_its_last_entry_with_its_history() {
    let (_d, disk, root) = fresh();
    let eio = Arc::new(Eio {
        disk: disk.clone(),
        armed: AtomicBool::new(false),
        lost: Mutex::new(HashSet::new()),
    });
    let s = Store::open_on(eio.clone(), &root, "ss1").unwrap();
    s.create(FILE, "alice", 1).unwrap();
    s.checkpoint_journal().unwrap();
    // Two entries of one file in the log; the second's content (18 bytes) fails its sync.
    let (_, meta, _) = s.load_text(FILE).unwrap();
    let first = s.write_content(FILE, meta, b"first one.").unwrap();
    let acked = s
        .write_content(FILE, first.clone(), b"new, acknowledged.")
        .unwrap();
    eio.armed.store(true, Ordering::SeqCst);
    assert!(s.checkpoint_journal().is_err());
    assert!(s.journal_failed());
    drop(s);
    disk.power_cut().unwrap();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.scan().unwrap();
    let (text, meta, _) = s.load_text(FILE).unwrap();
    assert_eq!(
        (text.as_str(), meta.version),
        ("new, acknowledged.", acked.version)
    );
    let lock = s.file_lock(FILE);
    let _g = lock.lock().unwrap();
    s.undo(FILE, 1).unwrap();
    drop(_g);
    assert_eq!(s.load_text(FILE).unwrap().0, "first one.");
}

/// Sends `file` from `src` to `dst` as a replication job does: `dst`'s history is asked for
/// (PEEK_FILE), the content, the entries it lacks and the checkpoints are written unsynced
/// into its `tmp/` (as PUT_FILE_CONTENT receives them) and installed.
fn replicate(src: &Store, dst: &Store, file: &str) -> Result<(Meta, bool), StoreError> {
    let have: Vec<Version> = dst
        .open_transfer(file, &[], &[])
        .map(|t| t.undo.iter().map(|d| d.version).collect())
        .unwrap_or_default();
    let mut tr = src.open_transfer(file, &have, &[])?;
    let to_temp = |f: &mut File| -> Result<(TempFile, File), StoreError> {
        let (t, mut out) = dst.temp_file(file)?;
        io::copy(f, &mut out).map_err(|e| dst.io(file, e))?;
        Ok((t, out))
    };
    let content = to_temp(&mut tr.content)?;
    let mut entries = Vec::new();
    for (v, f) in tr.entries.iter_mut() {
        entries.push((*v, to_temp(f)?));
    }
    let mut ckpts = Vec::new();
    for (tag, f) in tr.checkpoint_files.iter_mut() {
        ckpts.push((tag.clone(), to_temp(f)?));
    }
    let entry_paths: Vec<(Version, PathBuf)> = entries
        .iter()
        .map(|(v, (t, _))| (*v, t.path().to_path_buf()))
        .collect();
    let ckpt_paths: Vec<(String, PathBuf)> = ckpts
        .iter()
        .map(|(tag, (t, _))| (tag.clone(), t.path().to_path_buf()))
        .collect();
    let unsynced: Vec<&File> = std::iter::once(&content.1)
        .chain(entries.iter().map(|(_, (_, f))| f))
        .chain(ckpts.iter().map(|(_, (_, f))| f))
        .collect();
    let state = tr.meta.state(file);
    let copy = CopyIn {
        state: &state,
        undo: &tr.undo,
        content: content.0.path(),
        entries: &entry_paths,
        checkpoints: &tr.checkpoints,
        checkpoint_files: &ckpt_paths,
        unsynced: &unsynced,
        basis: None,
    };
    dst.install_copies(&[copy], None).pop().unwrap()
}

/// The text of `file` in `s`, with its record matching its content.
fn text_of(s: &Store, file: &str) -> String {
    let (text, _, adopted) = s.load_text(file).unwrap();
    assert!(!adopted, "{file}: the record does not match its content");
    text
}

#[test]
fn a_small_copy_is_installed_by_one_journal_entry_and_redone_with_its_history() {
    let (_a, src) = {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "ss1").unwrap();
        (d, s)
    };
    let (_d, disk, root) = fresh();
    let dst = Store::open_on(disk.clone(), &root, "ss2").unwrap();
    let j = dst.journal.as_ref().unwrap().clone();
    src.create(FILE, "alice", 1).unwrap();
    let before = disk.syncs();
    let (first, installed) = replicate(&src, &dst, FILE).unwrap();
    assert!(installed);
    // (Its new folder is made durably, as for any change: only file syncs are counted.)
    assert_eq!(disk.syncs().0 - before.0, 1, "a new file: one flush");
    assert!(j.is_pending(FILE));
    let mut versions = vec![first.version];
    for text in ["one.", "one. two.", "one. two. three."] {
        let (_, meta, _) = src.load_text(FILE).unwrap();
        src.write_content(FILE, meta, text.as_bytes()).unwrap();
        let before = disk.syncs();
        let (meta, installed) = replicate(&src, &dst, FILE).unwrap();
        assert!(installed);
        assert_eq!(
            (disk.syncs().0 - before.0, disk.syncs().1 - before.1),
            (1, 0),
            "a small write: one flush, no directory sync"
        );
        versions.push(meta.version);
        assert_eq!(text_of(&dst, FILE), text);
    }
    // The same copy again (a retried job) is ignored: no entry, no flush.
    let (before, log_len) = (disk.syncs(), j.log_len());
    let (held, installed) = replicate(&src, &dst, FILE).unwrap();
    assert!(!installed);
    assert_eq!(held.version, versions[3]);
    assert_eq!((disk.syncs(), j.log_len()), (before, log_len));
    // A power cut before any checkpoint: the redo at open gives the installed state, and
    // its history is the source's.
    let dst = after_cut(&disk, &root, dst);
    assert_eq!(text_of(&dst, FILE), "one. two. three.");
    let (_, meta, _) = dst.load_text(FILE).unwrap();
    assert_eq!(meta.version, versions[3]);
    assert_eq!(meta.owner.as_deref(), Some("alice"));
    assert_eq!(meta.undo, src.load_text(FILE).unwrap().1.undo);
    let lock = dst.file_lock(FILE);
    let _g = lock.lock().unwrap();
    for old in ["one. two.", "one.", ""] {
        dst.undo(FILE, 1).unwrap();
        assert_eq!(text_of(&dst, FILE), old);
    }
}

/// Installs the current copies of `files` from `src` on `dst` in one batch (as a PUT_BATCH
/// does, their temp files written and not synced); one result per file.
fn install_batch(
    src: &Store,
    dst: &Store,
    files: &[&str],
) -> Vec<Result<(Meta, bool), StoreError>> {
    let mut trs: Vec<Transfer> = files
        .iter()
        .map(|f| src.open_transfer(f, &[], &[]).unwrap())
        .collect();
    let temps: Vec<TempFile> = files
        .iter()
        .zip(trs.iter_mut())
        .map(|(f, tr)| {
            let (t, mut out) = dst.temp_file(f).unwrap();
            io::copy(&mut tr.content, &mut out).unwrap();
            t
        })
        .collect();
    let states: Vec<FileState> = files
        .iter()
        .zip(&trs)
        .map(|(f, tr)| tr.meta.state(f))
        .collect();
    let copies: Vec<CopyIn<'_>> = (0..files.len())
        .map(|i| CopyIn {
            state: &states[i],
            undo: &trs[i].undo,
            content: temps[i].path(),
            entries: &[],
            checkpoints: &[],
            checkpoint_files: &[],
            unsynced: &[],
            basis: None,
        })
        .collect();
    dst.install_copies(&copies, None)
}

#[test]
fn a_batch_of_small_copies_shares_one_flush() {
    let d = tempfile::tempdir().unwrap();
    let src = Store::open(d.path(), "ss1").unwrap();
    let files = ["p/a.txt", "q/r/b.txt", "c.txt"];
    for f in files {
        src.create(f, "alice", 1).unwrap();
    }
    let (_d, disk, root) = fresh();
    let dst = Store::open_on(disk.clone(), &root, "ss2").unwrap();
    // (New folders are made durably first, as for any change: only file syncs are counted.)
    let before = disk.syncs();
    let results = install_batch(&src, &dst, &files);
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|(_, i)| *i)));
    assert_eq!(
        disk.syncs().0 - before.0,
        1,
        "one flush for the whole batch"
    );
    let dst = after_cut(&disk, &root, dst);
    for f in files {
        assert_eq!(text_of(&dst, f), "");
        assert_eq!(dst.load_text(f).unwrap().1.owner.as_deref(), Some("alice"));
    }
}

#[test]
fn a_power_cut_at_any_step_of_a_journaled_install_keeps_the_old_copy_or_the_new() {
    // The source at "one." and at "one. two." (the same versions and history ids).
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (src1, src2) = (
        Store::open(d1.path(), "ss1").unwrap(),
        Store::open(d2.path(), "ss1").unwrap(),
    );
    for (s, texts) in [(&src1, &["one."][..]), (&src2, &["one.", "one. two."][..])] {
        s.create(FILE, "alice", 1).unwrap();
        for t in texts {
            let (_, meta, _) = s.load_text(FILE).unwrap();
            s.write_content(FILE, meta, t.as_bytes()).unwrap();
        }
    }
    let base = |disk: &Arc<SimDisk>, root: &Path| {
        let dst = Store::open_on(disk.clone(), root, "ss2").unwrap();
        replicate(&src1, &dst, FILE).unwrap();
        dst.checkpoint_journal().unwrap();
    };
    // How many calls the install makes, counted on a run without a cut.
    let (_d, disk, root) = fresh();
    base(&disk, &root);
    let counter = Cutter::new(&disk, None);
    let dst = Store::open_on(counter.clone(), &root, "ss2").unwrap();
    let opened = counter.calls.load(Ordering::SeqCst);
    let before = disk.syncs();
    let (meta, installed) = replicate(&src2, &dst, FILE).unwrap();
    assert!(installed);
    assert_eq!(disk.syncs().0 - before.0, 1, "journaled: one flush");
    let total = counter.calls.load(Ordering::SeqCst) - opened;
    for cut in 0..=total {
        let (_d, disk, root) = fresh();
        base(&disk, &root);
        let cutter = Cutter::new(&disk, None);
        let dst = Store::open_on(cutter.clone(), &root, "ss2").unwrap();
        *cutter.left.lock().unwrap() = Some(cut);
        let got = replicate(&src2, &dst, FILE);
        drop(dst);
        if !cutter.off.load(Ordering::SeqCst) {
            disk.power_cut().unwrap();
        }
        let what = format!("cut before call {cut} of {total}");
        let dst = Store::open_on(disk.clone(), &root, "ss2").unwrap();
        dst.scan().unwrap();
        let (text, held, adopted) = dst.load_text(FILE).unwrap();
        assert!(!adopted, "{what}: the record does not match its content");
        if got.is_ok() || held.version == meta.version {
            assert_eq!(
                (text.as_str(), held.version),
                ("one. two.", meta.version),
                "{what}"
            );
            let lock = dst.file_lock(FILE);
            let _g = lock.lock().unwrap();
            dst.undo(FILE, 1).unwrap();
            assert_eq!(dst.load_text(FILE).unwrap().0, "one.", "{what}: history");
        } else {
            assert_eq!(text, "one.", "{what}: the old copy");
        }
    }
}

#[test]
fn an_install_the_journal_cannot_carry_settles_the_files_entry_first() {
    let d = tempfile::tempdir().unwrap();
    let src = Store::open(d.path(), "ss1").unwrap();
    let (_d, disk, root) = fresh();
    let dst = Store::open_on(disk.clone(), &root, "ss2").unwrap();
    let j = dst.journal.as_ref().unwrap().clone();
    src.create(FILE, "alice", 1).unwrap();
    replicate(&src, &dst, FILE).unwrap();
    let (_, meta, _) = src.load_text(FILE).unwrap();
    src.write_content(FILE, meta, b"one.").unwrap();
    // Journaled twice, then a copy carrying a checkpoint (the direct path).
    replicate(&src, &dst, FILE).unwrap();
    assert!(j.is_pending(FILE));
    src.checkpoint(FILE, "v1", "alice", 1).unwrap();
    let (_, meta, _) = src.load_text(FILE).unwrap();
    src.write_content(FILE, meta, b"one. two.").unwrap();
    let (meta, installed) = replicate(&src, &dst, FILE).unwrap();
    assert!(installed);
    assert!(!j.is_pending(FILE), "settled by a checkpoint first");
    let dst = after_cut(&disk, &root, dst);
    assert_eq!(text_of(&dst, FILE), "one. two.");
    assert_eq!(dst.load_text(FILE).unwrap().1.version, meta.version);
}

#[test]
fn a_failed_flush_fails_every_copy_of_its_batch_and_later_copies_take_the_direct_path() {
    let d = tempfile::tempdir().unwrap();
    let src = Store::open(d.path(), "ss1").unwrap();
    let files = ["a.txt", "b.txt", "c.txt"];
    for f in files {
        src.create(f, "alice", 1).unwrap();
    }
    let (_d, disk, root) = fresh();
    let dst = Store::open_on(disk.clone(), &root, "ss2").unwrap();
    // The log's flush fails: no copy of the batch is acknowledged, none is put in place.
    disk.fail_next_syncs(1);
    let results = install_batch(&src, &dst, &files[..2]);
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    for f in &files[..2] {
        assert!(dst.load_text(f).is_err(), "{f} must not be in place");
    }
    // The journal is closed: the next copy is installed by the direct path, durably.

    let results = install_batch(&src, &dst, &files[2..]);
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|(_, i)| *i)));
    let j = dst.journal.as_ref().unwrap();
    assert!(!j.is_pending("c.txt"), "installed by the direct path");
    let dst = after_cut(&disk, &root, dst);
    assert_eq!(text_of(&dst, "c.txt"), "");
    for f in &files[..2] {
        assert!(dst.load_text(f).is_err(), "{f} was never acknowledged");
    }
}

#[test]
fn a_file_deleted_by_hand_while_its_change_is_in_the_journal_comes_back_at_the_restart() {
    let (_d, disk, root, s) = journaled();
    let content = s.content_path(FILE);
    // The process dies (its page cache survives) before the checkpoint; the file is deleted
    // by hand while it is down.
    drop(s);
    std::fs::remove_file(&content).unwrap();
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.scan().unwrap();
    assert_eq!(
        text_of(&s, FILE),
        "two.",
        "the acknowledged change is redone"
    );
}

/// The simulated disk, where the next fsync of a set of files (a checkpoint's fsync of the
/// paths its sealed log's entries touched), or with `at_dir` the journal directory's fsync
/// that follows a log's removal, can be held, and whose power can be cut so that every call after
/// fails: at once ([`Stall::cut`]), or at the journal directory's fsync that follows a log's
/// removal (`cut_after_unlink`). Logs cannot be created while `no_log` is set.
struct Stall {
    disk: Arc<SimDisk>,
    /// The next fsync of a set of files is to be held (1), or is held (2).
    hold: Mutex<u8>,
    wake: std::sync::Condvar,
    off: AtomicBool,
    cut_after_unlink: AtomicBool,
    unlinked: AtomicBool,
    no_log: AtomicBool,
    at_dir: AtomicBool,
}

/// A store on a [`Stall`] over a fresh simulated disk, holding [`FILE`] with one sentence
/// ("one.") written through the journal.
fn stalled() -> (tempfile::TempDir, Arc<SimDisk>, PathBuf, Arc<Stall>, Store) {
    let (d, disk, root) = fresh();
    let stall = Stall::new(&disk);
    let s = Store::open_on(stall.clone(), &root, "ss1").unwrap();
    s.create(FILE, "alice", 1).unwrap();
    write(&s, "one.").unwrap();
    (d, disk, root, stall, s)
}

impl Stall {
    fn new(disk: &Arc<SimDisk>) -> Arc<Stall> {
        Arc::new(Stall {
            disk: disk.clone(),
            hold: Mutex::new(0),
            wake: std::sync::Condvar::new(),
            off: AtomicBool::new(false),
            cut_after_unlink: AtomicBool::new(false),
            unlinked: AtomicBool::new(false),
            no_log: AtomicBool::new(false),
            at_dir: AtomicBool::new(false),
        })
    }

    fn on<T>(&self, f: impl FnOnce(&SimDisk) -> io::Result<T>) -> io::Result<T> {
        if self.off.load(Ordering::SeqCst) {
            return Err(io::Error::other("the power is off"));
        }
        f(&self.disk)
    }

    fn cut(&self) {
        self.off.store(true, Ordering::SeqCst);
        self.disk.power_cut().unwrap();
    }

    /// Holds the next fsync of a set of files.
    fn arm(&self) {
        *self.hold.lock().unwrap() = 1;
    }

    /// Returns once the fsync armed for is held. The hold ends when the guard returned drops,
    /// also when an assertion fails meanwhile, so a failing test fails instead of hanging.
    fn held(&self) -> Held<'_> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut h = self.hold.lock().unwrap();
        while *h != 2 {
            let left = deadline
                .checked_duration_since(std::time::Instant::now())
                .expect("the armed fsync is reached within 20 s");
            h = self.wake.wait_timeout(h, left).unwrap().0;
        }
        Held(self)
    }

    /// Holds the calling thread here if a hold is armed.
    fn stop_here(&self) {
        let mut h = self.hold.lock().unwrap();
        if *h == 1 {
            *h = 2;
            self.wake.notify_all();
            while *h == 2 {
                h = self.wake.wait(h).unwrap();
            }
        }
    }

    fn release(&self) {
        *self.hold.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        self.wake.notify_all();
    }

    fn is_log(path: &Path) -> bool {
        path.extension().is_some_and(|e| e == "log")
    }
}

/// A held fsync of a [`Stall`], released when dropped.
struct Held<'a>(&'a Stall);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Fs for Stall {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        if Self::is_log(path) && self.no_log.load(Ordering::SeqCst) {
            return Err(io::Error::other("no space left for a log"));
        }
        self.on(|d| d.create_new(path))
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.on(|d| d.open(path))
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        self.on(|d| d.open_write(path))
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.on(|d| d.sync_file(f))
    }
    fn sync_data(&self, f: &File) -> io::Result<()> {
        self.on(|d| d.sync_data(f))
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        if !self.at_dir.load(Ordering::SeqCst) {
            self.stop_here();
        }
        match self.on(|_| Ok(())) {
            Ok(()) => self.disk.sync_files(files),
            Err(_) => files
                .iter()
                .map(|_| Err(io::Error::other("the power is off")))
                .collect(),
        }
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.sync_fs(dir))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.on(|d| d.rename(from, to))
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.on(|d| d.exchange(a, b))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if dir.ends_with("journal") && self.unlinked.load(Ordering::SeqCst) {
            if self.at_dir.load(Ordering::SeqCst) {
                self.stop_here();
            }
            if self.cut_after_unlink.load(Ordering::SeqCst) {
                self.cut();
            }
        }
        self.on(|d| d.sync_dir(dir))
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.on(|d| d.hard_link(from, to))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let r = self.on(|d| d.remove_file(path));
        if r.is_ok() && Self::is_log(path) {
            self.unlinked.store(true, Ordering::SeqCst);
        }
        r
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.remove_dir_all(dir))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.on(|d| d.read(path))
    }
    fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        self.on(|d| d.metadata(path))
    }
    fn read_dir(&self, dir: &Path) -> io::Result<fs::ReadDir> {
        self.on(|d| d.read_dir(dir))
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.create_dir(dir))
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.create_dir_all(dir))
    }
}

/// The numbers of the logs in `root`'s journal, in order.
fn logs(root: &Path) -> Vec<u64> {
    let mut n: Vec<u64> = fs::read_dir(root.join("journal"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    n.sort();
    n
}

/// Writes `text` as the next content of FILE.
fn write(s: &Store, text: &str) -> Result<Meta, StoreError> {
    let lock = s.file_lock(FILE);
    let _g = lock.lock().unwrap();
    let (_, meta, _) = s.load_text(FILE)?;
    s.write_content(FILE, meta, text.as_bytes())
}

/// Checks FILE is at `text` and `version`, with `history` (newest first) behind it.
fn check_history(s: &Store, text: &str, version: Version, history: &[&str], what: &str) {
    let (got, meta, adopted) = s.load_text(FILE).unwrap();
    assert!(!adopted, "{what}: the record does not match its content");
    assert_eq!((got.as_str(), meta.version), (text, version), "{what}");
    let lock = s.file_lock(FILE);
    let _g = lock.lock().unwrap();
    for old in history {
        s.undo(FILE, 1).unwrap();
        assert_eq!(s.load_text(FILE).unwrap().0, *old, "{what}: history");
    }
}

#[test]
fn journaled_changes_proceed_while_a_checkpoint_syncs_what_its_sealed_log_touched() {
    let (_d, disk, root, stall, s) = stalled();
    let j = s.journal.as_ref().unwrap().clone();
    s.create("b.txt", "bob", 1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let acked = std::thread::scope(|scope| {
        let s = &s;
        stall.arm();
        let ckpt = scope.spawn(move || s.checkpoint_journal());
        let held = stall.held();
        // The checkpoint is inside its fsync of the sealed paths. A file with an entry only
        // in the sealed log is still guarded.
        assert!(j.is_pending("b.txt"));
        // A debug build stops at the guard's assertion instead.
        if cfg!(not(debug_assertions)) {
            assert!(s.fs.remove_file(&s.content_path("b.txt")).is_err());
        }
        // Journaled changes, one of a file whose earlier entries are sealed, complete
        // meanwhile.
        scope.spawn(move || {
            let r = s.create("c.txt", "carol", 1).and_then(|_| write(s, "two."));
            tx.send(r).unwrap();
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(20));
        // A DELETE of a file whose entry is sealed settles it: done once the checkpoint
        // under way has made it durable.
        let delete = scope.spawn(move || s.delete("b.txt"));
        drop(held);
        ckpt.join().unwrap().unwrap();
        delete.join().unwrap().unwrap();
        let done = done.expect("a journaled change waited for the checkpoint's syncs");
        done.unwrap()
    });
    assert!(j.is_pending(FILE), "its last entry is in the current log");
    assert!(!j.is_pending("b.txt") && j.is_pending("c.txt"));
    let s = after_cut(&disk, &root, s);
    check_history(&s, "two.", acked.version, &["one.", ""], "after the cut");
    assert_eq!(text_of(&s, "c.txt"), "");
    assert!(s.load_text("b.txt").is_err(), "b.txt was deleted");
}

#[test]
fn a_power_cut_after_the_rotation_redoes_both_logs_in_order() {
    let (_d, disk, root, stall, s) = stalled();
    let acked = std::thread::scope(|scope| {
        let s = &s;
        stall.arm();
        let ckpt = scope.spawn(move || s.checkpoint_journal());
        let held = stall.held();
        // The last entry of FILE goes to the new log; the power goes before the sealed
        // paths are durable.
        let acked = write(s, "two.").unwrap();
        stall.cut();
        drop(held);
        assert!(ckpt.join().unwrap().is_err());
        acked
    });
    drop(s);
    assert_eq!(logs(&root), [0, 1], "the sealed log and the current one");
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.scan().unwrap();
    check_history(&s, "two.", acked.version, &["one.", ""], "both logs redone");
}

#[test]
fn a_power_cut_after_the_sealed_logs_removal_before_its_directory_sync_redoes_both() {
    let (_d, disk, root, stall, s) = stalled();
    s.create("b.txt", "bob", 1).unwrap();
    let acked = std::thread::scope(|scope| {
        let s = &s;
        stall.arm();
        let ckpt = scope.spawn(move || s.checkpoint_journal());
        let held = stall.held();
        let acked = write(s, "two.").unwrap();
        stall.cut_after_unlink.store(true, Ordering::SeqCst);
        drop(held);
        assert!(ckpt.join().unwrap().is_err());
        acked
    });
    assert!(stall.unlinked.load(Ordering::SeqCst));
    drop(s);
    assert_eq!(
        logs(&root),
        [0, 1],
        "the sealed log's removal was not durable"
    );
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.scan().unwrap();
    check_history(&s, "two.", acked.version, &["one.", ""], "both logs redone");
    assert_eq!(text_of(&s, "b.txt"), "");
}

#[test]
fn a_failed_sync_of_the_sealed_paths_fails_the_journal_and_the_restart_redoes_both_logs() {
    let (_d, disk, root, stall, s) = stalled();
    s.create("b.txt", "bob", 1).unwrap();
    let acked = std::thread::scope(|scope| {
        let s = &s;
        stall.arm();
        let ckpt = scope.spawn(move || s.checkpoint_journal());
        let held = stall.held();
        let acked = write(s, "two.").unwrap();
        disk.fail_next_syncs(1);
        drop(held);
        assert!(ckpt.join().unwrap().is_err());
        acked
    });
    // Fail-stop: no retry, every change and checkpoint refused.
    assert!(s.journal_failed());
    assert!(s.checkpoint_journal().is_err());
    assert!(s.create("c.txt", "carol", 1).is_err());
    assert!(write(&s, "refused.").is_err());
    drop(s);
    disk.power_cut().unwrap();
    assert_eq!(logs(&root), [0, 1]);
    let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
    s.scan().unwrap();
    check_history(&s, "two.", acked.version, &["one.", ""], "both logs redone");
    assert_eq!(text_of(&s, "b.txt"), "");
    assert!(s.load_text("c.txt").is_err());
}

#[test]
fn without_a_next_log_the_checkpoint_empties_the_log_in_place_and_the_next_one_rotates() {
    let (_d, disk, root, stall, s) = stalled();
    let j = s.journal.as_ref().unwrap().clone();
    stall.no_log.store(true, Ordering::SeqCst);
    s.checkpoint_journal().unwrap();
    assert!(!s.journal_failed());
    assert_eq!((logs(&root), j.log_len()), (vec![0], 0), "emptied in place");
    assert!(!j.is_pending(FILE));
    // Changes are still journaled, and the next checkpoint makes its next log.
    let acked = write(&s, "two.").unwrap();
    assert!(j.is_pending(FILE));
    stall.no_log.store(false, Ordering::SeqCst);
    s.checkpoint_journal().unwrap();
    assert!(!j.is_pending(FILE));
    assert_eq!(logs(&root), [2, 3], "rotated, and the next log made");
    assert_eq!(j.log_path(), root.join("journal").join("2.log"));
    let s = after_cut(&disk, &root, s);
    check_history(&s, "two.", acked.version, &["one.", ""], "after the cut");
}

#[test]
fn a_file_counts_as_pending_until_its_sealed_logs_removal_is_durable() {
    let (_d, disk, root, stall, s) = stalled();
    let j = s.journal.as_ref().unwrap().clone();
    s.create("b.txt", "bob", 1).unwrap();
    std::thread::scope(|scope| {
        let s = &s;
        stall.at_dir.store(true, Ordering::SeqCst);
        stall.arm();
        let ckpt = scope.spawn(move || s.checkpoint_journal());
        let held = stall.held();
        // The sealed log is removed, the removal not yet durable: its files are guarded.
        assert!(!root.join("journal").join("0.log").exists());
        assert!(j.is_pending("b.txt"));
        // A debug build stops at the guard's assertion instead.
        if cfg!(not(debug_assertions)) {
            assert!(s.fs.remove_file(&s.content_path("b.txt")).is_err());
        }
        // FILE has entries in both logs: a DELETE of it waits for the checkpoint under way,
        // then rotates again.
        write(s, "two.").unwrap();
        let delete = scope.spawn(move || s.delete(FILE));
        drop(held);
        ckpt.join().unwrap().unwrap();
        delete.join().unwrap().unwrap();
    });
    assert!(!j.is_pending(FILE) && !j.is_pending("b.txt"));
    let s = after_cut(&disk, &root, s);
    assert!(s.load_text(FILE).is_err(), "FILE was deleted");
    assert_eq!(text_of(&s, "b.txt"), "");
}

#[test]
fn a_store_removed_from_under_the_server_does_not_fail_the_journal() {
    let (_d, _disk, root, s) = journaled();
    // The next log is made, so the checkpoint rotates.
    s.checkpoint_journal().unwrap();
    write(&s, "three.").unwrap();
    fs::remove_dir_all(&root).unwrap();
    s.checkpoint_journal().unwrap();
    assert!(!s.journal_failed());
}

/// One change of FILE (created empty first) to `text` through `s`, the power cut when it is
/// reported if `cut_when_reported`: returns the record reported with when it was reported
/// and whether the content was in place then, if it was, and whether the change returned Ok.
fn reported_change(
    s: &Store,
    cutter: &Cutter,
    root: &Path,
    text: &[u8],
    cut_when_reported: bool,
) -> (Option<(Meta, Made, bool)>, bool) {
    let lock = s.file_lock(FILE);
    let _g = lock.lock().unwrap();
    let Ok((old, meta, _)) = s.load_text(FILE) else {
        return (None, false);
    };
    let mut reported = None;
    let res = s.write_content_over(FILE, meta, Some(old.as_bytes()), text, &mut |m, made| {
        assert!(reported.is_none(), "reported twice");
        let on_disk = fs::read(root.join("files").join(FILE)).unwrap();
        reported = Some((m.clone(), made, on_disk == text));
        if cut_when_reported {
            cutter.off.store(true, Ordering::SeqCst);
            cutter.disk.power_cut().unwrap();
        }
    });
    (reported, res.is_ok())
}

#[test]
fn a_change_is_reported_once_written_and_what_returned_ok_or_was_reported_durable_survives_a_power_cut(
) {
    // A small change is reported once its entry is written, before its flush and renames
    // (Written); a large one (the direct path) once it is durable and in place (Durable).
    let large = vec![b'x'; JOURNAL_MAX_CONTENT as usize + 1];
    for (what, text, journaled) in [("journaled", &b"two."[..], true), ("direct", &large, false)] {
        // The power cut the moment the change is reported.
        let (_d, disk, root) = fresh();
        let cutter = Cutter::new(&disk, None);
        let s = Store::open_on(cutter.clone(), &root, "ss1").unwrap();
        s.create(FILE, "alice", 1).unwrap();
        let created = s.load_text(FILE).unwrap().1.version;
        let (reported, ok) = reported_change(&s, &cutter, &root, text, true);
        let (m, made, in_place) = reported.unwrap_or_else(|| panic!("{what}: not reported"));
        assert_eq!(
            made,
            if journaled {
                Made::Written
            } else {
                Made::Durable
            },
            "{what}"
        );
        assert_eq!(in_place, !journaled, "{what}: reported before its renames");
        // The journaled change's flush fails after the cut: the journal fails, and the change
        // does not return Ok.
        assert_eq!(ok, !journaled, "{what}");
        assert_eq!(s.journal_failed(), journaled, "{what}");
        drop(s);
        let s = after_cut(
            &disk,
            &root,
            Store::open_on(disk.clone(), &root, "ss1").unwrap(),
        );
        let (_, back, _) = s.load_text(FILE).unwrap();
        if journaled {
            // Written, never flushed: the server comes back at the version before it, which
            // is what lets the name server roll the report back.
            assert_eq!(back.version, created, "{what}");
            assert_eq!(text_of(&s, FILE), "", "{what}");
        } else {
            assert_eq!(back.version, m.version, "{what}");
            assert!(
                text_of(&s, FILE).as_bytes() == text,
                "{what}: the reported content"
            );
        }

        // The power cut before each call of the change instead.
        let (_d, disk, root) = fresh();
        let counter = Cutter::new(&disk, None);
        let s = Store::open_on(counter.clone(), &root, "ss1").unwrap();
        s.create(FILE, "alice", 1).unwrap();
        let before = counter.calls.load(Ordering::SeqCst);
        let _ = reported_change(&s, &counter, &root, text, false);
        let total = counter.calls.load(Ordering::SeqCst) - before;
        for cut in 0..=total {
            let (_d, disk, root) = fresh();
            let cutter = Cutter::new(&disk, None);
            let s = Store::open_on(cutter.clone(), &root, "ss1").unwrap();
            s.create(FILE, "alice", 1).unwrap();
            let created = s.load_text(FILE).unwrap().1.version;
            *cutter.left.lock().unwrap() = Some(cut);
            let (reported, ok) = reported_change(&s, &cutter, &root, text, false);
            assert!(
                !ok || reported.is_some(),
                "{what}, cut {cut}: Ok but not reported"
            );
            drop(s);
            if !cutter.off.load(Ordering::SeqCst) {
                disk.power_cut().unwrap();
            }
            let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
            s.scan().unwrap();
            let now = text_of(&s, FILE);
            let (_, back, _) = s.load_text(FILE).unwrap();
            match reported {
                // Returned Ok, or reported durable: it survives.
                Some((m, made, _)) if ok || made == Made::Durable => {
                    assert_eq!(back.version, m.version, "{what}, cut {cut} of {total}");
                    assert!(
                        now.as_bytes() == text,
                        "{what}, cut {cut}: reported, then lost"
                    );
                }
                // Reported written, then the power went: made or not, nothing else.
                Some((m, _, _)) => assert!(
                    (back.version == m.version && now.as_bytes() == text)
                        || (back.version == created && now.is_empty()),
                    "{what}, cut {cut}: neither the change nor the state before it"
                ),
                // Not reported: a journaled change is not made; the direct path's rename may
                // be durable before a later step of it failed (the content is then adopted
                // at the next access, as before the journal).
                None => assert!(
                    (back.version == created && now.is_empty())
                        || (!journaled && now.as_bytes() == text),
                    "{what}, cut {cut}: changed without a report"
                ),
            }
        }
    }
}

/// A simulated disk that fills up: once armed with `n`, the first `n` files it creates are
/// made and every later one fails with ENOSPC (as a full disk, or one out of inodes); with
/// `opens` set, each file opened to write counts as one too, and fails with EMFILE (a full
/// file table) once they are used up.
struct Filling {
    disk: Arc<SimDisk>,
    left: Mutex<Option<u64>>,
    creates: AtomicU64,
    opens: AtomicBool,
}

impl Fs for Filling {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        if let Some(n) = self.left.lock().unwrap().as_mut() {
            if *n == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            *n -= 1;
        }
        self.disk.create_new(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.disk.open(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        if self.opens.load(Ordering::SeqCst) {
            if let Some(n) = self.left.lock().unwrap().as_mut() {
                if *n == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EMFILE));
                }
                *n -= 1;
            }
        }
        self.disk.open_write(path)
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.disk.sync_file(f)
    }
    fn sync_data(&self, f: &File) -> io::Result<()> {
        self.disk.sync_data(f)
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        self.disk.sync_files(files)
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.disk.sync_fs(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.rename(from, to)
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.disk.exchange(a, b)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.sync_dir(dir)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.disk.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.remove_dir_all(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.disk.read(path)
    }
    fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        self.disk.metadata(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<fs::ReadDir> {
        self.disk.read_dir(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir_all(dir)
    }
}

#[test]
fn a_disk_filling_up_during_a_journaled_install_of_a_new_file_fails_the_copy_not_the_journal() {
    // The direct path only fails the copy when the disk is full; the journaled one must
    // make everything it needs space for before its entry is durable, or a full disk stops
    // the server (and its restart must write the same files again).
    let d = tempfile::tempdir().unwrap();
    let src = Store::open(d.path(), "ss1").unwrap();
    src.create(FILE, "alice", 1).unwrap();
    let tr = src.open_transfer(FILE, &[], &[]).unwrap();
    let state = tr.meta.state(FILE);
    let mut n = 0;
    loop {
        let (_d, disk, root) = fresh();
        let full = Arc::new(Filling {
            disk: disk.clone(),
            left: Mutex::new(None),
            creates: AtomicU64::new(0),
            opens: AtomicBool::new(false),
        });
        let dst = Store::open_on(full.clone(), &root, "ss2").unwrap();
        let (content, _f) = dst.temp_file(FILE).unwrap();
        let before = full.creates.load(Ordering::SeqCst);
        *full.left.lock().unwrap() = Some(n);
        let copy = CopyIn {
            state: &state,
            undo: &tr.undo,
            content: content.path(),
            entries: &[],
            checkpoints: &[],
            checkpoint_files: &[],
            unsynced: &[],
            basis: None,
        };
        let res = dst.install_copies(&[copy], None).pop().unwrap();
        assert!(
            !dst.journal_failed(),
            "the disk full after {n} new files: the journal failed ({res:?})"
        );
        if res.is_ok() && full.creates.load(Ordering::SeqCst) - before <= n {
            break;
        }
        n += 1;
        assert!(n < 20, "the install never succeeds");
    }
}

#[test]
fn a_full_disk_or_file_table_during_a_journaled_commit_fails_the_commit_not_the_journal() {
    // Whatever a commit needs a new file or handle for is made before its entry: running
    // out of either there fails the commit and leaves the file as it was; after the entry
    // nothing can run out. `n` counts the files made and opened before they run out.
    let mut n = 0;
    loop {
        let (_d, disk, root) = fresh();
        let full = Arc::new(Filling {
            disk: disk.clone(),
            left: Mutex::new(None),
            creates: AtomicU64::new(0),
            opens: AtomicBool::new(true),
        });
        let s = Store::open_on(full.clone(), &root, "ss1").unwrap();
        s.create(FILE, "alice", 1).unwrap();
        write(&s, "one.").unwrap();
        *full.left.lock().unwrap() = Some(n);
        let res = write(&s, "two.");
        *full.left.lock().unwrap() = None;
        let what = format!("out of files and handles after {n}");
        assert!(!s.journal_failed(), "{what}: the journal failed ({res:?})");
        let s = after_cut(&disk, &root, s);
        let want = if res.is_ok() { "two." } else { "one." };
        assert_eq!(text_of(&s, FILE), want, "{what}");
        if res.is_ok() {
            break;
        }
        n += 1;
        assert!(n < 10, "{what}: the commit never succeeds");
    }
}
