//! The replication queue: the `jobs` rows owing a pair member a file's content or its removal
//! (see `nm::replication` for the row, the relay and backoff), dispatching them to the
//! workers, their results, sync-mode waits, and reconciling a member that registers with
//! what its pair's records say it must hold.
//!
//! # The part
//!
//! [`Queue`] owns the rows (the job table), the jobs handed to the workers, the sync-mode
//! waits and the staged uploads, and decides everything that reads only them: writing a row,
//! which due rows a pump visits, a dispatch, a retry, a failure's backoff, which waiters a
//! result or a timeout releases. It writes its durable changes into the store batch it is
//! handed and returns the waiters to answer; the core decides, per row, what the other parts
//! say of it (the file's record, the members' liveness, an owed removal) and routes the
//! answers (`Core::release`) and the recovery progress (`pairs::Pairs`).
//!
//! The rows' in-memory index (by target, then `(next_ms, key)`, only dispatchable rows;
//! parked rows; why a moot row owed to a down server may wait for its registration; the
//! measured cost) is described in `jobtable.rs`. Invariants:
//! * one row per (target, file), coalescing every change: the row carries the latest want;
//! * a key is never dispatched twice at once (it is marked running in the table);
//! * a removal owed to a member never takes a newer file of the same name (the one rule and
//!   its proof, in `removals.rs`);
//! * retry times (`next_ms`) are monotonic; a job's `since_ms` (STATUS's lag) is wall-clock.

use super::*;

/// The replication queue's state.
pub(super) struct Queue {
    /// Replication jobs by key (durable; the channel only dispatches them).
    repl: jobtable::JobTable,
    /// Replication jobs handed to the workers: job id to key and what was dispatched (their
    /// keys are marked running in `repl`, so one key is never dispatched twice at once).
    running: HashMap<JobId, (String, Want)>,
    /// Sync-mode answers waiting for a job, by job key.
    sync_waits: HashMap<String, Vec<SyncWait>>,
    /// Uploads staged on a job's target while they arrived, by job key: the version staged
    /// and the stage's id there (see `ss/server/staging.rs`; memory only).
    stages: HashMap<String, (Version, String)>,
}

/// A sync waiter the queue is done with, and whether the backup holds the change (else it is
/// answered degraded).
pub(super) type Release = (Waiter, bool);

/// What a due row is, as the core judges it from the other parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Its file is gone or its target already current (a removal: the name is back): dropped.
    Moot,
    /// A removal whose name is busy with a call: retried shortly.
    Later,
    /// Its servers are up: dispatched.
    Ready,
    /// No member holding the content is up: parked until one may be.
    Sourceless,
}

/// The due rows a pump visited, by what is done with them.
#[derive(Default)]
pub(super) struct DueRows {
    pub(super) picked: Vec<String>,
    pub(super) moot: Vec<String>,
    pub(super) sourceless: Vec<String>,
    pub(super) later: Vec<String>,
}

impl Queue {
    /// The rows loaded from the store, none running. A row's retry time was on the last run's
    /// monotonic clock: what that run left owed is due at `started_ms`.
    pub(super) fn load(rows: impl IntoIterator<Item = ReplJob>, started_ms: u64) -> Queue {
        let rows = rows.into_iter().map(move |mut j| {
            j.next_ms = started_ms;
            j
        });
        Queue {
            repl: jobtable::JobTable::new(rows),
            running: HashMap::new(),
            sync_waits: HashMap::new(),
            stages: HashMap::new(),
        }
    }

    /// The row of `key`.
    pub(super) fn get(&self, key: &str) -> Option<&ReplJob> {
        self.repl.get(key)
    }

    /// Every row (pending or failed).
    pub(super) fn rows(&self) -> impl Iterator<Item = &ReplJob> {
        self.repl.values()
    }

    /// How many rows are owed.
    pub(super) fn len(&self) -> usize {
        self.repl.len()
    }

    /// Whether the row of `key` is with a worker.
    pub(super) fn is_running(&self, key: &str) -> bool {
        self.repl.is_running(key)
    }

    /// Keys of rows owed to `target`.
    pub(super) fn keys_for(&self, target: &str) -> Vec<String> {
        self.repl.keys_for(target)
    }

    /// Keys of `target`'s FAILED rows.
    pub(super) fn failed_keys_for(&self, target: &str) -> Vec<String> {
        self.repl
            .keys_for(target)
            .into_iter()
            .filter(|k| {
                self.repl
                    .get(k)
                    .is_some_and(|j| j.state == JobState::Failed)
            })
            .collect()
    }

    /// Rows owed to `target` (pending or failed), and whether one of them is running.
    pub(super) fn owed_to(&self, target: &str) -> (u64, bool) {
        (self.repl.owed_to(target), self.repl.running_for(target))
    }

    /// Jobs with the workers.
    pub(super) fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Writes (or rewrites) the row owing `want` of `file` to `target`, due at `now_ms`, into
    /// `batch`. A rewritten row keeps the wall time it has been owed since (else `wall_ms`)
    /// and a quarantine it still owes. Returns whether the row is new.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn upsert(
        &mut self,
        target: &str,
        file: &str,
        want: Want,
        quarantine: bool,
        now_ms: u64,
        wall_ms: u64,
        batch: &mut Vec<StoreOp>,
    ) -> bool {
        let key = job_key(target, file);
        // A staged upload stands only for the change that reported it (noted after this).
        self.stages.remove(&key);
        let old = self.repl.get(&key).map(|j| (j.since_ms, j.quarantine));
        let job = ReplJob {
            quarantine: quarantine || old.is_some_and(|(_, q)| q),
            target: target.to_string(),
            file: file.to_string(),
            want,
            attempts: 0,
            next_ms: now_ms,
            last_error: None,
            state: JobState::Pending,
            since_ms: old.map_or(wall_ms, |(since, _)| since),
        };
        batch.push(StoreOp::PutJob(job.clone()));
        self.repl.insert(key, job);
        old.is_none()
    }

    /// Makes a row due now with a fresh count of attempts (RECOVER, or a FAILED row whose
    /// target registered again), durably.
    pub(super) fn retry_now(&mut self, key: &str, now_ms: u64, batch: &mut Vec<StoreOp>) {
        let j = self.repl.update(key, |j| {
            j.state = JobState::Pending;
            j.attempts = 0;
            j.next_ms = now_ms;
        });
        if let Some(j) = j {
            batch.push(StoreOp::PutJob(j));
        }
    }

    /// Makes a waiting row due by `now_ms` (a FAILED one with its attempts reset); returns
    /// the row as it is now, to be written.
    pub(super) fn due_now(&mut self, key: &str, now_ms: u64) -> Option<ReplJob> {
        self.repl.update(key, |j| {
            if j.state == JobState::Failed {
                j.state = JobState::Pending;
                j.attempts = 0;
            }
            j.next_ms = j.next_ms.min(now_ms);
        })
    }

    /// Removes the row of `key`, durably; returns it.
    pub(super) fn drop_row(&mut self, key: &str, batch: &mut Vec<StoreOp>) -> Option<ReplJob> {
        let j = self.repl.remove(key)?;
        batch.push(StoreOp::DelJob(key.to_string()));
        Some(j)
    }

    /// Removes the row of `key` unless it is with a worker (its result settles it), durably.
    pub(super) fn drop_idle(&mut self, key: &str, batch: &mut Vec<StoreOp>) {
        if self.repl.contains_key(key) && !self.repl.is_running(key) {
            self.drop_row(key, batch);
        }
    }

    /// Counts a failed attempt of `key`: backoff, or FAILED after the last attempt, durably.
    pub(super) fn failed(
        &mut self,
        key: &str,
        error: String,
        now_ms: u64,
        batch: &mut Vec<StoreOp>,
    ) {
        let j = self.repl.update(key, |j| {
            j.attempts += 1;
            j.last_error = Some(error);
            if j.attempts >= replication::MAX_ATTEMPTS {
                j.state = JobState::Failed;
                log::warn!(target: ev::REPLICATION_WORKER_ERROR, file = j.file.as_str(),
                    ss = j.target.as_str(); "file={} to {} FAILED after {} attempts",
                    j.file, j.target, j.attempts);
            } else {
                j.next_ms = now_ms + replication::backoff_ms(j.attempts);
            }
        });
        if let Some(j) = j {
            batch.push(StoreOp::PutJob(j));
        }
    }

    /// Whether any row is parked.
    pub(super) fn has_parked(&self) -> bool {
        self.repl.has_parked()
    }

    /// Puts the parked row of `key` back in the index.
    pub(super) fn unpark(&mut self, key: &str) {
        self.repl.unpark(key);
    }

    /// Puts every parked row back in the index (a server is up again).
    pub(super) fn unpark_all(&mut self) {
        self.repl.unpark_all();
    }

    /// The due rows of up targets at `now_ms`, sorted by `judge`, until `cap` jobs would be
    /// with the workers. Visits only the due rows of targets that are up (see `jobtable.rs`).
    pub(super) fn due_rows(
        &self,
        now_ms: u64,
        cap: usize,
        up: impl Fn(&str) -> bool,
        judge: impl Fn(&ReplJob) -> Due,
    ) -> DueRows {
        let mut d = DueRows::default();
        if self.running.len() >= cap {
            return d;
        }
        let targets: Vec<&String> = self.repl.targets().filter(|t| up(t)).collect();
        'targets: for target in targets {
            for k in self.repl.due_for(target, now_ms) {
                if self.running.len() + d.picked.len() >= cap {
                    break 'targets;
                }
                let Some(j) = self.repl.get(k) else {
                    continue;
                };
                let list = match judge(j) {
                    Due::Moot => &mut d.moot,
                    Due::Later => &mut d.later,
                    Due::Ready => &mut d.picked,
                    Due::Sourceless => &mut d.sourceless,
                };
                list.push(k.clone());
            }
        }
        d
    }

    /// Leaves a row without a source out of the index until something may give it one.
    pub(super) fn park(&mut self, key: &str) {
        self.repl.park(key);
    }

    /// Makes a row due again shortly, without counting an attempt.
    pub(super) fn delay(&mut self, key: &str, now_ms: u64) {
        self.repl.update(key, |j| {
            j.next_ms = now_ms + replication::CHANNEL_FULL_RETRY_MS;
        });
    }

    /// The earliest time a waiting row of an up target becomes due, unless the workers are
    /// full.
    pub(super) fn next_due_ms(&self, cap: usize, up: impl Fn(&str) -> bool) -> Option<u64> {
        if self.running.len() >= cap {
            return None;
        }
        self.repl
            .targets()
            .filter(|t| up(t))
            .filter_map(|t| self.repl.first_due(t))
            .min()
    }

    /// Notes the row of `key` handed to the workers as job `id`, sending `want`.
    pub(super) fn dispatch(&mut self, id: JobId, key: &str, want: Want) {
        self.running.insert(id, (key.to_string(), want));
        self.repl.set_running(key, true);
    }

    /// The worker channel had no room for job `id`: its row waits and is dispatched again
    /// shortly. False if `id` is not a replication job.
    pub(super) fn channel_full(&mut self, id: JobId, now_ms: u64) -> bool {
        let Some((key, _)) = self.running.remove(&id) else {
            return false;
        };
        self.delay(&key, now_ms);
        self.repl.set_running(&key, false);
        true
    }

    /// The key and the want dispatched of replication job `id`, if it is one (it is no longer
    /// with the workers).
    pub(super) fn take_running(&mut self, id: JobId) -> Option<(String, Want)> {
        self.running.remove(&id)
    }

    /// The row of `key` came back from the workers having sent `sent`: no longer running, its
    /// stage used. Returns the row as it is now (None: it was dropped meanwhile).
    pub(super) fn returned(&mut self, key: &str, sent: Want) -> Option<ReplJob> {
        self.repl.set_running(key, false);
        // A stage is used by one attempt (which falls back to sending the content itself).
        if self
            .stages
            .get(key)
            .is_some_and(|(v, _)| sent == Want::Content { version: *v })
        {
            self.stages.remove(key);
        }
        self.repl.get(key).cloned()
    }

    /// Remembers that the content of `file` at `version` is staged on `target` as `s`, for
    /// the row that owes exactly that version there. Kept in memory only: without it the job
    /// sends the content, as it always could.
    pub(super) fn note_stage(
        &mut self,
        target: &str,
        file: &str,
        version: Version,
        s: crate::protocol::StagedRef,
    ) {
        let key = job_key(target, file);
        let owed = self
            .repl
            .get(&key)
            .is_some_and(|j| j.want == Want::Content { version });
        if s.ss != target || !owed {
            return;
        }
        if self.stages.len() >= MAX_STAGE_HINTS {
            self.stages.clear();
        }
        self.stages.insert(key, (version, s.id));
    }

    /// The stage a row's transfer may install from.
    pub(super) fn stage_for(&self, job: &ReplJob) -> Option<String> {
        self.stages
            .get(&job.key())
            .filter(|(v, _)| job.want == Want::Content { version: *v })
            .map(|(_, id)| id.clone())
    }

    /// Forgets the stages noted on `target` (a server empties its `tmp/` at start).
    pub(super) fn forget_stages_on(&mut self, target: &str) {
        let prefix = job_key(target, "");
        self.stages.retain(|k, _| !k.starts_with(&prefix));
    }

    /// Makes `w` wait for the row of `key`.
    pub(super) fn wait(&mut self, key: String, w: SyncWait) {
        self.sync_waits.entry(key).or_default().push(w);
    }

    /// The earliest deadline of a sync wait.
    pub(super) fn next_wait_ms(&self) -> Option<u64> {
        self.sync_waits
            .values()
            .flat_map(|w| w.iter().map(|x| x.deadline_ms))
            .min()
    }

    /// The waiters of `key` that `achieved` satisfies (`None`: the file is gone from the
    /// target), released with both copies; with `failed`, every other one is released
    /// degraded; the rest keep waiting.
    pub(super) fn settle_waits(
        &mut self,
        key: &str,
        achieved: Option<Option<Version>>,
        failed: bool,
    ) -> Vec<Release> {
        let Some(waits) = self.sync_waits.remove(key) else {
            return Vec::new();
        };
        let mut released = Vec::new();
        let mut keep = Vec::new();
        for w in waits {
            let ok = match (w.want, achieved) {
                (Want::Content { version }, Some(Some(v))) => v >= version,
                (Want::Delete, Some(None)) => true,
                _ => false,
            };
            if ok {
                released.push((w.waiter, true));
            } else if failed {
                released.push((w.waiter, false));
            } else {
                keep.push(w);
            }
        }
        if !keep.is_empty() {
            self.sync_waits.insert(key.to_string(), keep);
        }
        released
    }

    /// Every waiter on a row owed to `target` (which went down), released degraded.
    pub(super) fn fail_waits_on(&mut self, target: &str) -> Vec<Waiter> {
        let prefix = job_key(target, "");
        let keys: Vec<String> = self
            .sync_waits
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        let mut released = Vec::new();
        for k in keys {
            if let Some(waits) = self.sync_waits.remove(&k) {
                released.extend(waits.into_iter().map(|w| w.waiter));
            }
        }
        released
    }

    /// Waiters past their deadline at `now_ms`, released degraded (their rows go on).
    pub(super) fn expire_waits(&mut self, now_ms: u64) -> Vec<Waiter> {
        let mut late = Vec::new();
        for waits in self.sync_waits.values_mut() {
            waits.retain(|w| {
                let keep = w.deadline_ms > now_ms;
                if !keep {
                    late.push(w.waiter);
                }
                keep
            });
        }
        self.sync_waits.retain(|_, w| !w.is_empty());
        late
    }

    /// Forgets the waiters on a connection that closed.
    pub(super) fn forget_waiter(&mut self, conn: ConnId) {
        for waits in self.sync_waits.values_mut() {
            waits.retain(|w| match w.waiter {
                Waiter::Client(c) | Waiter::Changed(c, _) => c != conn,
            });
        }
        self.sync_waits.retain(|_, w| !w.is_empty());
    }

    /// The job table itself, for tests that look at or age its rows.
    #[cfg(test)]
    pub(super) fn table(&self) -> &jobtable::JobTable {
        &self.repl
    }

    #[cfg(test)]
    pub(super) fn table_mut(&mut self) -> &mut jobtable::JobTable {
        &mut self.repl
    }
}

impl Core {
    /// Writes (or rewrites) the job owing `want` of `file` to `target`; the row goes into the
    /// same batch as the change it follows.
    pub(super) fn upsert_job(&mut self, target: &str, file: &str, want: Want, now_ms: u64) {
        self.upsert_job_q(target, file, want, None, now_ms);
    }

    /// [`Core::upsert_job`], optionally setting the target's copy aside first, for the reason
    /// given (a quarantine still owed stays owed when the row is rewritten). A quarantine not
    /// owed before is noted in the status page's events.
    pub(super) fn upsert_job_q(
        &mut self,
        target: &str,
        file: &str,
        want: Want,
        set_aside: Option<SetAside>,
        now_ms: u64,
    ) {
        // A new file's versions start again at 1: content owed where the removal of an older
        // file of that name is still owed would look older than the copy the target holds and
        // be skipped. The target's copy is set aside first, so the new content installs.
        let replaces_removal = matches!(want, Want::Content { .. })
            && self.owed_removal(Meets::Content {
                member: target,
                file,
            }) == Removal::SetAside;
        let owed_before = self
            .q
            .get(&job_key(target, file))
            .is_some_and(|j| j.quarantine);
        let why = set_aside.or(replaces_removal.then_some(SetAside::ReplacesRemoval));
        if let Some(why) = why.filter(|_| !owed_before) {
            let at = self.wall_ms();
            self.events.quarantine(at, target, file, why);
        }
        let wall_ms = self.wall_ms();
        let new = self.q.upsert(
            target,
            file,
            want,
            why.is_some(),
            now_ms,
            wall_ms,
            &mut self.batch,
        );
        if new {
            if let Some((p, _)) = self.reg.membership(target) {
                self.pairs.sync_owed(&p);
            }
        }
    }

    /// Owes member `target` of `file`'s pair the file's current content (with `set_aside`,
    /// its own copy is set aside first, for that reason).
    pub(super) fn owe_to(
        &mut self,
        file: &str,
        target: &str,
        set_aside: Option<SetAside>,
        now_ms: u64,
    ) {
        let Some(rec) = self.ns.files.get(file) else {
            return;
        };
        let version = rec.version;
        log::info!(target: ev::NM_RECOVERY_SYNC_QUEUED, file = file, ss = target,
            version = version.to_string(), quarantine = set_aside.is_some();
            "file={file} owed to {target}{}", if set_aside.is_some() { " (its copy is quarantined first)" } else { "" });
        self.upsert_job_q(target, file, Want::Content { version }, set_aside, now_ms);
    }

    /// Owes the member of `file`'s pair that is not the writer the file's current content.
    /// Returns that member.
    pub(super) fn owe(&mut self, file: &str, write: bool, now_ms: u64) -> Option<String> {
        let rec = self.ns.files.get(file)?;
        let version = rec.version;
        let pair = rec.ss.clone();
        self.reg.backup_for(&pair)?;
        let follower = self.writer_member(&pair).other();
        let target = self.reg.member_name(&pair, follower)?;
        let primary = self.reg.member_name(&pair, follower.other())?;
        log::info!(target: ev::NM_REPLICATION_CHECK, file = file, ss = target.as_str();
            "file={file} primary={primary} replica={target}");
        if rec.held(follower) == Some(version) {
            return Some(target);
        }
        self.upsert_job(&target, file, Want::Content { version }, now_ms);
        let depth = self.q.len() as u64;
        if write {
            log::info!(target: ev::NM_WRITE_REPLICATION_QUEUED, file = file, ss = target.as_str(),
                version = version.to_string(), queued = depth;
                "file={file} op=WRITE primary={primary} replica={target}");
        } else {
            log::info!(target: ev::NM_REPLICATION_QUEUED, file = file, ss = target.as_str(),
                version = version.to_string(), queued = depth;
                "file={file} op=COPY primary={primary} replica={target}");
        }
        Some(target)
    }

    /// Owes the member of `primary`'s pair that is not the writer the removal of `file`.
    /// Returns that member.
    pub(super) fn owe_delete(&mut self, primary: &str, file: &str, now_ms: u64) -> Option<String> {
        self.reg.backup_for(primary)?;
        let target = self
            .reg
            .member_name(primary, self.writer_member(primary).other())?;
        self.upsert_job(&target, file, Want::Delete, now_ms);
        log::info!(target: ev::NM_REPLICATION_QUEUED, file = file, ss = target.as_str();
            "file={file} op=DELETE primary={primary} replica={target}");
        Some(target)
    }

    /// Answers a change: at once in async mode (or without a backup); in sync mode once the
    /// backup's job succeeds, or degraded if the backup is down or its attempt fails.
    pub(super) fn answer_change(
        &mut self,
        waiter: Waiter,
        file: &str,
        target: Option<String>,
        want: Want,
        now_ms: u64,
    ) {
        match target {
            Some(t) if self.sync_mode() => {
                let key = job_key(&t, file);
                let owed = self.q.get(&key).map(|j| j.state);
                if owed.is_none() {
                    // The backup already holds it.
                    self.release(waiter, true);
                } else if !self.reg.is_up(&t) || owed == Some(JobState::Failed) {
                    self.release(waiter, false);
                } else {
                    let deadline_ms = now_ms + SYNC_WAIT_MS;
                    self.q.wait(
                        key,
                        SyncWait {
                            waiter,
                            want,
                            deadline_ms,
                        },
                    );
                }
            }
            _ => self.release(waiter, true),
        }
    }

    pub(super) fn release(&mut self, waiter: Waiter, both: bool) {
        match waiter {
            Waiter::Client(conn) => {
                self.set_busy(conn, false);
                let msg = if both {
                    Message::Done {}
                } else {
                    Message::DoneDegraded {
                        copies: 1,
                        total: 2,
                    }
                };
                self.reply(conn, msg);
            }
            Waiter::Changed(conn, id) => {
                let copies = if both { None } else { Some(1) };
                self.reply(conn, Message::ChangedAck { id, copies });
            }
        }
    }

    /// Answers the sync waiters of `key` that `achieved` satisfies (`None`: the file is gone
    /// from the target); with `failed`, every waiter is answered degraded
    /// ([`Queue::settle_waits`]).
    pub(super) fn settle_waits(
        &mut self,
        key: &str,
        achieved: Option<Option<Version>>,
        failed: bool,
    ) {
        for (w, both) in self.q.settle_waits(key, achieved, failed) {
            self.release(w, both);
        }
    }

    /// A server went down: sync waiters owed to it are answered degraded, and its partner is
    /// told.
    pub(super) fn target_down(&mut self, name: &str) {
        for w in self.q.fail_waits_on(name) {
            self.release(w, false);
        }
        self.push_partner(name);
    }

    /// Tells the other member of `name`'s pair at once that `name` came up or went down, so
    /// a writer stages its uploads on a partner only while that partner is up.
    pub(super) fn push_partner(&mut self, name: &str) {
        if let Some(other) = self.reg.partner_name(name) {
            self.push_role(&other);
        }
    }

    /// Sync waiters past their deadline are answered degraded; their jobs go on.
    pub(super) fn expire_waits(&mut self, now_ms: u64) {
        for w in self.q.expire_waits(now_ms) {
            self.release(w, false);
        }
    }

    /// Whether a pending job's servers are up (no allocation: this runs over every row).
    pub(super) fn ready(&self, job: &ReplJob) -> bool {
        if !self.reg.is_up(&job.target) {
            return false;
        }
        match job.want {
            Want::Delete => true,
            Want::Content { .. } => self.source_for(job).is_some(),
        }
    }

    /// Whether a content job's target already holds the file's current version (the job is
    /// then done; a quarantine it asked for is moot). No allocation.
    pub(super) fn target_holds_current(&self, job: &ReplJob) -> bool {
        self.job_member(job).is_some_and(|(rec, m)| rec.holds(m))
    }

    /// The record of a job's file and which member of its pair the job's target is, if the
    /// target belongs to that pair. No allocation.
    pub(super) fn job_member(&self, job: &ReplJob) -> Option<(&FileRecord, Member)> {
        let rec = self.ns.files.get(&job.file)?;
        let m = if job.target == rec.ss {
            Member::Primary
        } else if self.reg.backup_of(&rec.ss) == Some(job.target.as_str()) {
            Member::Backup
        } else {
            return None;
        };
        Some((rec, m))
    }

    /// The member a content job copies from: up, holding the current version, not the
    /// target. No allocation when there is none (this runs over every row).
    pub(super) fn source_for(&self, job: &ReplJob) -> Option<(&str, &ServerLive)> {
        let rec = self.ns.files.get(&job.file)?;
        let p = rec.ss.as_str();
        let candidates = [
            (Member::Primary, Some(p)),
            (Member::Backup, self.reg.backup_of(p)),
        ];
        candidates.into_iter().find_map(|(m, n)| {
            let n = n?;
            let s = self.reg.server(n)?;
            (n != job.target && s.up && rec.holds(m)).then_some((n, s))
        })
    }

    /// The transfer a ready job describes.
    pub(super) fn transfer_for(&self, job: &ReplJob) -> Option<Transfer> {
        let t = self.reg.live_server(&job.target)?;
        let target = (job.target.clone(), t.rec.addr());
        let source = match job.want {
            Want::Delete => None,
            Want::Content { .. } => {
                let (n, s) = self.source_for(job)?;
                Some((n.to_string(), s.rec.addr()))
            }
        };
        let stage = self.q.stage_for(job);
        Some(Transfer {
            file: job.file.clone(),
            want: job.want,
            source,
            target,
            quarantine: job.quarantine,
            stage,
        })
    }

    /// Hands due jobs to the workers, up to the in-flight cap; drops content jobs whose file
    /// no longer exists (a delete job replaces them when the record goes). Visits only the
    /// due rows of targets that are up ([`Queue::due_rows`]), so rows owed to a down server
    /// cost nothing here (and a moot one waits for its server to register to be dropped).
    pub fn pump_replication(&mut self, now_ms: u64) {
        self.at(now_ms);
        let cap = self.cfg.max_repl_in_flight.max(1);
        let due = self
            .q
            .due_rows(now_ms, cap, |t| self.reg.is_up(t), |j| self.judge_due(j));
        for k in due.sourceless {
            self.q.park(&k);
        }
        for k in due.later {
            self.q.delay(&k, now_ms);
        }
        for k in due.moot {
            let Some(j) = self.q.drop_row(&k, &mut self.batch) else {
                continue;
            };
            match (j.want, self.ns.files.get(&j.file).map(|r| r.version)) {
                (Want::Delete, _) => {
                    log::info!(target: ev::REPLICATION_WORKER_PROCESS, file = j.file.as_str(), ss = j.target.as_str();
                        "file={} was made again on {}: the removal of the older file is moot", j.file, j.target);
                    self.job_done(&j.target);
                    self.settle_waits(&k, Some(None), false);
                }
                (_, Some(v)) => {
                    self.job_done(&j.target);
                    self.settle_waits(&k, Some(Some(v)), false);
                }
                (_, None) => self.settle_waits(&k, Some(None), true),
            }
        }
        for k in due.picked {
            let Some(t) = self.q.get(&k).and_then(|j| self.transfer_for(j)) else {
                continue;
            };
            let id = self.ops.next_id();
            let queued = self.q.in_flight() + 1;
            log::info!(target: ev::REPLICATION_WORKER_QUEUED, file = t.file.as_str(),
                ss = t.target.0.as_str(), queued = queued as u64;
                "file={} replica={} queued={queued}", t.file, t.target.0);
            self.q.dispatch(id, &k, t.want);
            self.out.push(Effect::Job(Job {
                id,
                kind: JobKind::Replicate(t),
            }));
        }
    }

    /// What a due row is, from its file's record, the owed removal it is, and its servers.
    fn judge_due(&self, j: &ReplJob) -> Due {
        let removal = self.owed_removal(Meets::Due(j));
        let moot = match j.want {
            Want::Content { .. } => {
                !self.ns.files.contains_key(&j.file) || self.target_holds_current(j)
            }
            Want::Delete => removal == Removal::Moot,
        };
        if moot {
            Due::Moot
        } else if removal == Removal::Wait {
            Due::Later
        } else if self.ready(j) {
            Due::Ready
        } else {
            Due::Sourceless
        }
    }

    /// The earliest time a waiting job becomes due (only jobs whose target is up).
    pub fn next_repl_deadline_ms(&self) -> Option<u64> {
        let cap = self.cfg.max_repl_in_flight.max(1);
        self.q.next_due_ms(cap, |t| self.reg.is_up(t))
    }

    /// The worker channel had no room for a replication job: it waits in the table and is
    /// dispatched again shortly, without counting as an attempt. False if `id` is not one.
    pub fn on_dispatch_full(&mut self, id: JobId, now_ms: u64) -> bool {
        self.at(now_ms);
        self.q.channel_full(id, now_ms)
    }

    /// A replication job came back.
    pub(super) fn on_repl_result(
        &mut self,
        key: String,
        sent: Want,
        result: Result<JobOutput, WireError>,
        now_ms: u64,
    ) {
        let Some(job) = self.q.returned(&key, sent) else {
            return;
        };
        match result {
            Ok(JobOutput::Replicated(Outcome::Copied { state, .. })) => {
                if let Some(rec) = self.ns.files.get(&job.file) {
                    if let Some((_, m)) = self.job_member(&job) {
                        if rec.held(m) != Some(state.version) && state.version <= rec.version {
                            let mut rec = rec.clone();
                            rec.set_held(m, Some(state.version));
                            self.put_file(&job.file, rec);
                        }
                    }
                }
                match job.want {
                    Want::Content { version } if state.version >= version => {
                        let m = crate::metrics::nm();
                        m.replication_bytes.inc_by(state.size);
                        m.replication_lag.observe(
                            self.env.wall_ms(now_ms).saturating_sub(job.since_ms) as f64 / 1000.0,
                        );
                        self.q.drop_row(&key, &mut self.batch);
                        self.job_done(&job.target);
                        self.settle_waits(&key, Some(Some(state.version)), false);
                    }
                    // A newer change landed while the copy ran: the row owes it, due now.
                    Want::Content { .. } if sent != job.want => {
                        self.settle_waits(&key, Some(Some(state.version)), false);
                    }
                    Want::Content { version } => self.repl_failed(
                        &key,
                        format!(
                            "target holds {} after the copy, {version} is owed",
                            state.version
                        ),
                        now_ms,
                    ),
                    // Deleted while the copy ran: the row already owes the delete.
                    Want::Delete => {}
                }
            }
            Ok(JobOutput::Replicated(Outcome::Deleted)) => match job.want {
                Want::Delete => {
                    crate::metrics::nm().replication_lag.observe(
                        self.env.wall_ms(now_ms).saturating_sub(job.since_ms) as f64 / 1000.0,
                    );
                    self.q.drop_row(&key, &mut self.batch);
                    self.job_done(&job.target);
                    self.settle_waits(&key, Some(None), false);
                }
                // Created again while the delete ran: the row already owes the content.
                Want::Content { .. } => {}
            },
            Ok(other) => self.repl_failed(&key, format!("unexpected result {other:?}"), now_ms),
            Err(e) => self.repl_failed(&key, e.msg, now_ms),
        }
    }

    /// Counts a finished transfer in its pair's recovery progress.
    pub(super) fn job_done(&mut self, target: &str) {
        if let Some((p, _)) = self.reg.membership(target) {
            self.pairs.sync_done(&p);
        }
    }

    /// An attempt of `key` failed ([`Queue::failed`]): its sync waiters are answered degraded.
    pub(super) fn repl_failed(&mut self, key: &str, error: String, now_ms: u64) {
        self.q.failed(key, error, now_ms, &mut self.batch);
        self.settle_waits(key, None, true);
    }

    /// Member `m` of the pair named `primary` (re)registered with `list`. Each file of the
    /// pair is classified against the record:
    ///
    /// * the version before an [`Unconfirmed`](super::records::Unconfirmed) one this member
    ///   reported before its flush, none other holding that version: the change was never
    ///   made, and the record is rolled back to it (then current);
    /// * current (version and checksum match): nothing to do (an unconfirmed version is
    ///   confirmed);
    /// * newer, on the writer, in the pair's epoch: a commit whose CHANGED never arrived,
    ///   adopted as the current version and owed to the other member;
    /// * diverged (changes the cluster never acknowledged: newer than the record on a
    ///   non-writer, or from an earlier epoch yet newer than that epoch's last recorded
    ///   version, or the same version with other bytes): quarantined, then owed the
    ///   current copy;
    /// * stale or missing: owed the current copy from the member holding it;
    /// * unknown to the index: adopted on the writer; set aside (quarantine) on the other.
    ///
    /// FAILED jobs of the member are retried at once.
    pub(super) fn reconcile_member(
        &mut self,
        primary: &str,
        m: Member,
        list: Vec<FileState>,
        now_ms: u64,
    ) {
        let Some(name) = self.reg.member_name(primary, m) else {
            return;
        };
        for k in self.q.failed_keys_for(&name) {
            self.q.retry_now(&k, now_ms, &mut self.batch);
        }
        let writer = self.writer_member(primary) == m;
        let held: HashMap<String, FileState> = list
            .into_iter()
            .filter_map(|st| names::canonical_file(&st.file).ok().map(|f| (f, st)))
            .collect();
        let mine: Vec<String> = self
            .ns
            .files
            .iter()
            .filter(|(_, r)| r.ss == primary)
            .map(|(f, _)| f.clone())
            .collect();
        let (mut queued, mut quarantined, mut adopted) = (0u64, 0u64, 0u64);
        let mut missing = 0u64;
        for f in &mine {
            let Some(rec) = self.ns.files.get(f).cloned() else {
                continue;
            };
            let key = job_key(&name, f);
            let Some(st) = held.get(f) else {
                // Never deleted because a server forgot it (an unmounted disk must not erase
                // the index); the copy is owed to it again.
                if rec.held(m).is_some() {
                    let mut r = rec.clone();
                    r.set_held(m, None);
                    self.put_file(f, r);
                    missing += 1;
                }
                if self.source_exists(&rec, m) {
                    self.owe_to(f, &name, None, now_ms);
                    queued += 1;
                }
                continue;
            };
            // A change this member reported before its flush, which it came back without:
            // never durable, never acknowledged; the record goes back to what it holds.
            let rec = if rec.never_made(m, st) {
                let r = self.roll_back_unmade(f, &name, &rec);
                // The other member's row owed the version that was never made: dropped if it
                // holds the record's version again, else (or if a copy is running, whose
                // return then finds the row changed and runs it again) it owes that version.
                if let Some(other) = self.reg.member_name(primary, m.other()) {
                    let key = job_key(&other, f);
                    if r.holds(m.other()) {
                        self.q.drop_idle(&key, &mut self.batch);
                    }
                    if !r.holds(m.other()) || self.q.get(&key).is_some() {
                        self.owe_to(f, &other, None, now_ms);
                    }
                }
                r
            } else {
                rec
            };
            let current = st.version == rec.version && st.checksum == rec.checksum;
            if current {
                // (Holding it confirms a version its writer reported before the flush.)
                if rec.held(m) != Some(rec.version) || rec.unconfirmed.is_some() {
                    let mut r = rec.clone();
                    r.set_held(m, Some(rec.version));
                    self.put_file(f, r);
                }
                self.q.drop_idle(&key, &mut self.batch);
                continue;
            }
            // A change is only ever made to a copy at the record's version (tickets carry it
            // as min_version), and the record only moves on by acknowledged changes; so a
            // copy above the record descends from it: it holds every acknowledged change,
            // plus commits whose CHANGED never arrived. It becomes the current copy on the
            // writer (as on an unpaired server), or when it is the only one left holding
            // the record's changes; otherwise those unacknowledged commits are set aside.
            let newer = st.version > rec.version;
            if newer && (writer || !rec.holds(m.other())) {
                let mut r = rec.clone();
                r.apply_change(m, st);
                self.put_file(f, r);
                self.q.drop_idle(&key, &mut self.batch);
                if let Some(other) = self.reg.member_name(primary, m.other()) {
                    self.owe_to(f, &other, None, now_ms);
                }
                adopted += 1;
                continue;
            }
            // Older than the record yet from an earlier epoch past the last version that
            // epoch ended with: a fork the cluster never acknowledged.
            let diverged = newer
                || (st.version == rec.version && st.checksum != rec.checksum)
                || (st.version.epoch < rec.version.epoch
                    && rec.epoch_base.is_some_and(|b| st.version > b));
            let mut r = rec.clone();
            r.set_held(m, if diverged { None } else { Some(st.version) });
            if r != rec {
                self.put_file(f, r);
            }
            if diverged {
                log::warn!(target: ev::NM_SS_RECOVERY, file = f.as_str(), ss = name.as_str(),
                    version = st.version.to_string(), current = rec.version.to_string();
                    "{name} holds {f} at {} with changes the cluster never acknowledged (current {}): it is quarantined",
                    st.version, rec.version);
                quarantined += 1;
            }
            let why = diverged.then_some(SetAside::Diverged {
                held: st.version,
                current: rec.version,
            });
            self.owe_to(f, &name, why, now_ms);
            queued += 1;
        }
        let mine: HashSet<String> = mine.into_iter().collect();
        for (f, st) in &held {
            if mine.contains(f) {
                continue;
            }
            match self.ns.files.get(f) {
                // Another pair holds that name; which copy wins is not decided here.
                Some(_) => {}
                // An acknowledged DELETE or MOVE made while this member was away (or the
                // backup) left a row owing it the removal: that row removes the copy plainly;
                // adopting it would bring the file back.
                None if self.owed_removal(Meets::Unrecorded {
                    member: &name,
                    file: f,
                }) == Removal::Run =>
                {
                    queued += 1;
                }
                None if writer => {
                    self.adopt(primary, m, f, st);
                    self.owe(f, false, now_ms);
                    adopted += 1;
                }
                None => {
                    // The copy was never acknowledged: set aside, never silently removed.
                    self.upsert_job_q(&name, f, Want::Delete, Some(SetAside::Unrecorded), now_ms);
                    queued += 1;
                }
            }
        }
        if missing > 0 {
            log::warn!(target: ev::NM_SS_REGISTER, ss = name.as_str(), missing = missing;
                "{name} registered without {missing} file(s) of pair {primary}; they are owed to it again, never deleted");
        }
        log::info!(target: ev::NM_RECOVERY_SYNC_QUEUED, ss = name.as_str(), queued = queued,
            quarantined = quarantined, adopted = adopted;
            "{queued} files queued to bring {name} in line with pair {primary} ({quarantined} quarantined first, {adopted} adopted)");
    }

    /// Whether the member other than `m` holds `rec`'s current version (the job waits for it
    /// to be up).
    pub(super) fn source_exists(&self, rec: &FileRecord, m: Member) -> bool {
        rec.holds(m.other())
    }
}
