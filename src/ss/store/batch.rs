//! Group commit: concurrent changes to different files share their fsyncs.
//!
//! A change (a commit, an upload, an undo, a revert, a CREATE) is prepared by its caller under
//! its file's lock without any sync: the new content and the new record are written to temp
//! files in `tmp/` (the record already carries the content's mtime, which a rename keeps), and
//! a content change hard-links the old content into `undo/`. What is left is a [`Job`]: the
//! temp files to make durable, the directories whose new entries must be durable before any
//! rename (`undo/` after that link), and the renames, in order.
//!
//! The caller hands the job to [`Batcher::commit`] and waits. The first waiter finding no
//! batch in progress becomes the leader: it takes every job queued so far (its own included)
//! and runs them as one batch, in rounds:
//!
//! 0. every temp file of every job is fsynced, then each directory the jobs name (`undo/`)
//!    is fsynced once, by `durable::sync_files`: a few files in turn on the leader's thread,
//!    the write-back of every one started first, so a journaling file system allocates them
//!    all in one transaction, which also holds the jobs' `undo/` links; the first fsync
//!    commits it and the later ones, the directory's included, mostly find their changes
//!    committed (fsyncs of a few files run at the same time on threads of their own, the
//!    directory's among them, were measured slower: they split the same changes over more
//!    journal commits); many files on threads;
//! 1. every job's first rename is made, then each directory renamed into is fsynced once;
//! 2. every job's second rename is made (only for jobs whose first rename is durable), then
//!    each directory renamed into is fsynced once.
//!
//! Once round 0 is done the leader steps down, so a waiter whose job arrived meanwhile leads
//! the next batch and syncs its files while this one renames; when the rounds are done the
//! leader hands each job its outcome and wakes the waiters. A lone change therefore leads at
//! once and pays no wait, and under load a batch forms from the jobs that queued while the
//! previous one was syncing its files.
//!
//! # Why this is as crash-safe as one change at a time
//!
//! The order each change needs is kept; only syncs of different files' steps are merged:
//!
//! * No rename happens before the fsync that makes the renamed bytes durable has returned
//!   (round 0 precedes every rename), and no content replaces the old before the old content's
//!   history entry is durable under `undo/` (its directory is fsynced in round 0).
//! * A job's second rename is made only after the directory fsync that makes its first
//!   rename durable has returned, so a crash never leaves the second without the first. For a
//!   content change the first is the content and the second the record (a crash between them
//!   leaves content the next scan adopts, as before); for a CREATE the record comes first and
//!   the empty content second (a record without content is an unfinished create, removed).
//! * A directory fsync makes every entry of that directory durable, whoever renamed it: a
//!   rename of another job made durable early is one its own order allows (its temp file was
//!   synced in round 0 of its batch), so merging the fsyncs never makes durable a state a
//!   single change could not have reached.
//! * Batches overlap only in that order: a batch's round 0 may run while an earlier batch
//!   renames. A directory fsync of either batch then makes durable renames of the other,
//!   each of which its own job's order already allowed (the point above).
//! * Every reply waits for its own job's outcome, which is decided only after its last
//!   directory fsync returned; a failure of any step fails that job (and every job renamed
//!   into a directory whose fsync failed), and the caller undoes what it can, as before.
//!
//! # Which changes are batched
//!
//! A CREATE normally goes through the journal (see `journal`) and comes here only while
//! the journal is closed after a failed sync; then it is batched. A content change taking
//! the direct path (a large commit, upload, undo, revert) runs its job alone on its own
//! thread ([`commit_alone`]): the same rounds and order, so everything above holds for it as
//! a batch of one, but no queue. Batched, WRITE with many clients came out slower than
//! one change at a time: a batch's members all wait for its slowest sync and its renames,
//! whereas changes syncing on their own threads overlap every step and the journaling file
//! system still merges their concurrent fsyncs into shared commits.
//!
//! Jobs of one batch are of different files: each caller holds its file's lock while it
//! waits, so two changes of one file never meet in a batch.

use super::*;
use std::collections::BTreeMap;
use std::sync::Condvar;

/// One change's durable steps (see the module docs).
pub(super) struct Job {
    /// Temp files written but not synced.
    pub sync: Vec<File>,
    /// Directories whose new entries must be durable before any rename.
    pub dirs: Vec<PathBuf>,
    /// Renames (temp file, target), in order: each only once the one before is durable.
    pub renames: Vec<(PathBuf, PathBuf)>,
}

/// What became of a [`Job`].
#[derive(Debug)]
pub(super) struct Outcome {
    /// How many of its renames were made (durable or not).
    pub placed: usize,
    /// The first error, if any; `None` means every rename was made and is durable.
    pub error: Option<io::Error>,
}

impl Outcome {
    fn failed(placed: usize, e: &io::Error) -> Outcome {
        Outcome {
            placed,
            error: Some(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

#[derive(Default)]
struct Queue {
    next_id: u64,
    pending: Vec<(u64, Job)>,
    leading: bool,
    done: HashMap<u64, Outcome>,
}

/// The leader/follower queue of jobs (see the module docs).
#[derive(Default)]
pub(super) struct Batcher {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Batcher {
    /// Queues `job` and returns once it is durable (or failed): leads a batch when none is in
    /// progress, else waits for the leader.
    pub fn commit(&self, fs: &dyn Fs, job: Job) -> Outcome {
        let lock = || self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut q = lock();
        let id = q.next_id;
        q.next_id += 1;
        q.pending.push((id, job));
        loop {
            if let Some(o) = q.done.remove(&id) {
                return o;
            }
            if !q.leading {
                q.leading = true;
                let batch = std::mem::take(&mut q.pending);
                drop(q);
                let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
                let jobs: Vec<Job> = batch.into_iter().map(|(_, j)| j).collect();
                let mut released = false;
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut out = sync_round(fs, &jobs);
                    // The next batch may sync its files while this one renames.
                    self.release();
                    released = true;
                    rename_rounds(fs, &jobs, &mut out);
                    out
                }));
                let outcomes = ran.unwrap_or_else(|_| {
                    let e = io::Error::other("a batch of changes failed");
                    // A panic after a rename is taken as having placed everything, so the
                    // caller neither removes the content nor claims the file unchanged.
                    ids.iter()
                        .map(|_| Outcome::failed(usize::MAX, &e))
                        .collect()
                });
                q = lock();
                if !released {
                    q.leading = false;
                }
                q.done.extend(ids.into_iter().zip(outcomes));
                self.wake.notify_all();
                continue;
            }
            q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Batcher {
    /// Jobs waiting for the next batch.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .len()
    }

    /// Ends this leader's turn: a waiter whose job is queued may lead the next batch.
    fn release(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.leading = false;
        self.wake.notify_all();
    }
}

/// Runs `job` on the caller's thread as a batch of its own: the same rounds, the same
/// order, no queue (see the module docs for which changes take this path).
pub(super) fn commit_alone(fs: &dyn Fs, job: Job) -> Outcome {
    let jobs = [job];
    let mut out = sync_round(fs, &jobs);
    rename_rounds(fs, &jobs, &mut out);
    out.pop().unwrap_or(Outcome {
        placed: 0,
        error: Some(io::Error::other("a change had no outcome")),
    })
}

/// Round 0 of a batch: its temp files, then the directories named. One outcome per
/// job, in order.
fn sync_round(fs: &dyn Fs, jobs: &[Job]) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = jobs
        .iter()
        .map(|_| Outcome {
            placed: 0,
            error: None,
        })
        .collect();
    // Round 0: the temp files, then the directories named.
    let files: Vec<(usize, &File)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(i, j)| j.sync.iter().map(move |f| (i, f)))
        .collect();
    let dirs: BTreeSet<&PathBuf> = jobs.iter().flat_map(|j| j.dirs.iter()).collect();
    let handles: Vec<&File> = files.iter().map(|(_, f)| *f).collect();
    // The files first, then the directories: the files' fsyncs commit the journal
    // transaction that also holds the directories' new entries (the `undo/` links), so the
    // directory fsyncs that follow mostly find them committed; run at the same time they
    // would split them over more commits.
    let synced = fs.sync_files(&handles);
    let dirs_synced: Vec<(&PathBuf, io::Result<()>)> =
        dirs.iter().map(|d| (*d, fs.sync_dir(d))).collect();
    for ((i, _), r) in files.iter().zip(synced) {
        if let (Err(e), None) = (r, &out[*i].error) {
            out[*i] = Outcome::failed(0, &e);
        }
    }
    for (d, r) in dirs_synced {
        if let Err(e) = r {
            for (i, j) in jobs.iter().enumerate() {
                if j.dirs.contains(d) && out[i].error.is_none() {
                    out[i] = Outcome::failed(0, &e);
                }
            }
        }
    }
    out
}

/// The rename rounds of a batch whose round 0 is done.
fn rename_rounds(fs: &dyn Fs, jobs: &[Job], out: &mut [Outcome]) {
    let rounds = jobs.iter().map(|j| j.renames.len()).max().unwrap_or(0);
    for r in 0..rounds {
        let mut touched: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        for (i, j) in jobs.iter().enumerate() {
            let Some((tmp, target)) = j.renames.get(r) else {
                continue;
            };
            if out[i].error.is_some() {
                continue;
            }
            match change::place(fs, tmp, target) {
                Ok(dir) => {
                    out[i].placed = r + 1;
                    touched.entry(dir).or_default().push(i);
                }
                Err(e) => out[i] = Outcome::failed(r, &e),
            }
        }
        for (dir, who) in touched {
            if let Err(e) = fs.sync_dir(&dir) {
                for i in who {
                    out[i] = Outcome::failed(r + 1, &e);
                }
            }
        }
    }
}
