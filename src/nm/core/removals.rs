//! The one rule for removals owed to a pair member: **a removal owed to a member never takes
//! a file newer than the one it removes.**
//!
//! A removal is owed as a replication row (`Want::Delete`) after a DELETE (to the member that
//! is not the writer), after a MOVE (the old name, likewise), and after a failover or fence
//! (a member's copy of a file the record no longer has). The row can outlive the file it was
//! written for: a new file of the same name may be created, moved in, or adopted before the
//! row runs. Every place that could let the row meet such a file asks [`Core::removal_owed`]
//! and applies one of these, so the invariant holds whichever happens first:
//! * content owed over an owed removal (`upsert_job_q`): the row is rewritten to the content
//!   with the target's copy set aside first, since a new file's versions start again at 1
//!   and would look older than the copy the target holds;
//! * a CREATE or MOVE onto a writer owed the removal ([`Core::refuse_if_removing`]): refused
//!   with LOCKED and the removal made due now, so a retry finds the name free;
//! * a registering writer holding a file without a record while a removal of it is owed
//!   (`reconcile_member`): the copy is not adopted, the row removes it;
//! * a removal that comes due on a member holding a record of that name again
//!   ([`Core::removal_moot`]): the row is dropped, never run.

use super::*;

impl Core {
    /// Whether a row owes `target` the removal of `file` (waiting, running or FAILED).
    pub(super) fn removal_owed(&self, target: &str, file: &str) -> bool {
        self.q
            .repl
            .get(&job_key(target, file))
            .is_some_and(|j| j.want == Want::Delete)
    }

    /// Whether a removal owed to `job.target` is moot: its pair holds a record of that name
    /// again and the target holds that file. Every change rewrites the row owed to the
    /// member that is not the writer, so a Delete row survives a new file of its name only
    /// on the writer (a backup promoted while the removal waited in backoff), where the
    /// file was made by a CREATE or MOVE that succeeded only because the old copy was gone.
    /// Applying the row then would remove the new file. No allocation.
    pub(super) fn removal_moot(&self, job: &ReplJob) -> bool {
        self.job_member(job)
            .is_some_and(|(rec, m)| rec.held(m).is_some())
    }

    /// A LOCKED error when `writer` is owed the removal of an older `file` (a backup promoted
    /// before its removal landed): a CREATE or MOVE of that name there must wait for it. While
    /// the removal runs, it would take the new file if it arrived second; while it waits (in
    /// backoff, or FAILED until the member registers again) the old copy is still there and
    /// the storage server would answer EXISTS. A waiting removal is made due now (a FAILED
    /// one with its attempts reset), so it runs at once and a retry finds the name free.
    pub(super) fn refuse_if_removing(
        &mut self,
        writer: &str,
        file: &str,
        now_ms: u64,
    ) -> Result<(), WireError> {
        let key = job_key(writer, file);
        let running = self.q.repl.is_running(&key);
        let waiting = !running && self.removal_owed(writer, file);
        if !running && !waiting {
            return Ok(());
        }
        if waiting {
            let j = self.q.repl.update(&key, |j| {
                if j.state == JobState::Failed {
                    j.state = JobState::Pending;
                    j.attempts = 0;
                }
                j.next_ms = j.next_ms.min(now_ms);
            });
            if let Some(j) = j {
                log::info!(target: ev::REPLICATION_WORKER_QUEUED, file = file, ss = writer;
                    "file={file} is made again on {writer}: the removal of the older file it is owed runs now");
                self.batch.push(StoreOp::PutJob(j));
            }
        }
        Err(err::locked(format!(
            "an older {} is still being removed from {writer}; try again",
            names::display(file)
        )))
    }
}
