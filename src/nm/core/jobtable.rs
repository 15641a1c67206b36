//! The `jobs` table in memory, indexed for the event loop. Every event asks which rows are
//! due (`Core::pump_replication`) and when the next one is (`Core::next_repl_deadline_ms`);
//! with 10^5 rows owed to a down backup a scan of every row per event slowed the loop to a
//! crawl. Rows are indexed by target, then by `(next_ms, key)`, holding only the rows that
//! could be dispatched: pending, not running, not parked. A pump then visits only the up
//! targets' rows that are due, and the next deadline is the first entry of each up target:
//! O(targets + log n + dispatched) per event.
//!
//! A content row whose file has no source up is *parked* (left out of the index) when a pump
//! finds it so; it is put back when any server registers, or when its file's record changes
//! (`Core::put_file`), the two things that can give it a source, or goes (`Core::del_file`),
//! so the pump drops it at once instead of counting it as owed.
//!
//! A moot row (its file gone, or its target already current) owed to a down target is left
//! in the table until the target registers (the pump never visits it). That is harmless: the
//! only rows a change leaves owed to a member are the non-writer's, which every change
//! rewrites (a DELETE or MOVE turns it into a removal, which is never moot there), and the
//! writer's, which is up when the change is made, so the pump drops its moot row at once. A
//! down member's count only feeds STATUS lag and the handback, which waits for that member
//! to be up, and its registration reconciles and prunes before the handback can start.
//!
//! 100,000 rows owed to a down backup leave the event loop at about 0.95x its speed with
//! none (14 events/s before this index; `cargo test --release --lib jobindex -- --ignored
//! --nocapture`).

use super::replication::{JobState, ReplJob};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Index;

#[derive(Debug, Default)]
pub(super) struct JobTable {
    rows: BTreeMap<String, ReplJob>,
    /// By target: `(next_ms, key)` of every row that could be dispatched.
    due: BTreeMap<String, BTreeSet<(u64, String)>>,
    /// The `next_ms` each indexed key is filed under in `due`.
    filed: HashMap<String, u64>,
    /// Pending rows waiting for a source (left out of `due`).
    parked: HashSet<String>,
    /// Keys handed to a worker (left out of `due`; never dispatched twice at once).
    running: HashSet<String>,
    /// Rows per target.
    per_target: HashMap<String, u64>,
}

impl JobTable {
    pub(super) fn new(rows: impl IntoIterator<Item = ReplJob>) -> JobTable {
        let mut t = JobTable::default();
        for j in rows {
            t.insert(j.key(), j);
        }
        t
    }

    pub(super) fn get(&self, key: &str) -> Option<&ReplJob> {
        self.rows.get(key)
    }

    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.rows.contains_key(key)
    }

    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &ReplJob> {
        self.rows.values()
    }

    /// Rows owed to `target` (pending or failed).
    pub(super) fn owed_to(&self, target: &str) -> u64 {
        self.per_target.get(target).copied().unwrap_or(0)
    }

    /// Keys of rows owed to `target`, without a scan of the others.
    pub(super) fn keys_for(&self, target: &str) -> Vec<String> {
        let from = format!("{target}\n");
        self.rows
            .range::<String, _>(from.clone()..)
            .take_while(|(k, _)| k.starts_with(&from))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub(super) fn insert(&mut self, key: String, job: ReplJob) {
        if !self.rows.contains_key(&key) {
            *self.per_target.entry(job.target.clone()).or_default() += 1;
        }
        self.rows.insert(key.clone(), job);
        self.parked.remove(&key);
        self.refile(&key);
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<ReplJob> {
        let job = self.rows.remove(key)?;
        self.unfile(key);
        self.parked.remove(key);
        if let Some(n) = self.per_target.get_mut(&job.target) {
            *n -= 1;
            if *n == 0 {
                self.per_target.remove(&job.target);
            }
        }
        Some(job)
    }

    /// Changes a row in place and files it again; returns the row as it is now.
    pub(super) fn update(&mut self, key: &str, f: impl FnOnce(&mut ReplJob)) -> Option<ReplJob> {
        let j = self.rows.get_mut(key)?;
        f(j);
        let j = j.clone();
        self.refile(key);
        Some(j)
    }

    pub(super) fn is_running(&self, key: &str) -> bool {
        self.running.contains(key)
    }

    /// Whether a job owed to `target` is running.
    pub(super) fn running_for(&self, target: &str) -> bool {
        self.running
            .iter()
            .any(|k| k.split_once('\n').is_some_and(|(t, _)| t == target))
    }

    pub(super) fn set_running(&mut self, key: &str, running: bool) {
        if running {
            self.running.insert(key.to_string());
        } else {
            self.running.remove(key);
        }
        self.refile(key);
    }

    /// Leaves a row without a source out of the index until [`JobTable::unpark`].
    pub(super) fn park(&mut self, key: &str) {
        if self.rows.contains_key(key) {
            self.parked.insert(key.to_string());
            self.unfile(key);
        }
    }

    /// Whether any row is parked.
    pub(super) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Puts a parked row back in the index.
    pub(super) fn unpark(&mut self, key: &str) {
        if self.parked.remove(key) {
            self.refile(key);
        }
    }

    /// Puts every parked row back in the index.
    pub(super) fn unpark_all(&mut self) {
        let keys: Vec<String> = self.parked.drain().collect();
        for k in keys {
            self.refile(&k);
        }
    }

    /// Targets with rows that could be dispatched.
    pub(super) fn targets(&self) -> impl Iterator<Item = &String> {
        self.due.keys()
    }

    /// `target`'s dispatchable rows due at `now_ms`, earliest first.
    pub(super) fn due_for<'a>(
        &'a self,
        target: &str,
        now_ms: u64,
    ) -> impl Iterator<Item = &'a String> + 'a {
        self.due
            .get(target)
            .into_iter()
            .flat_map(|s| s.iter())
            .take_while(move |(t, _)| *t <= now_ms)
            .map(|(_, k)| k)
    }

    /// The earliest `next_ms` among `target`'s dispatchable rows.
    pub(super) fn first_due(&self, target: &str) -> Option<u64> {
        self.due.get(target)?.first().map(|(t, _)| *t)
    }

    fn unfile(&mut self, key: &str) {
        let Some(t) = self.filed.remove(key) else {
            return;
        };
        let target = key.split_once('\n').map_or(key, |(t, _)| t);
        if let Some(set) = self.due.get_mut(target) {
            set.remove(&(t, key.to_string()));
            if set.is_empty() {
                self.due.remove(target);
            }
        }
    }

    /// Files `key` under its row's `next_ms` if it could be dispatched, else leaves it out.
    fn refile(&mut self, key: &str) {
        self.unfile(key);
        let Some(j) = self.rows.get(key) else {
            return;
        };
        if j.state != JobState::Pending || self.running.contains(key) || self.parked.contains(key) {
            return;
        }
        self.due
            .entry(j.target.clone())
            .or_default()
            .insert((j.next_ms, key.to_string()));
        self.filed.insert(key.to_string(), j.next_ms);
    }
}

impl Index<&String> for JobTable {
    type Output = ReplJob;

    fn index(&self, key: &String) -> &ReplJob {
        &self.rows[key]
    }
}
