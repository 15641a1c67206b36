//! The one rule for removals owed to a pair member: **a removal owed to a member never takes
//! a file newer than the one it removes.**
//!
//! A removal is owed as a replication row (`Want::Delete`) after a DELETE (to the member that
//! is not the writer), after a MOVE (the old name, likewise), and after a failover or fence
//! (a member's copy of a file the record no longer has). The row can outlive the file it was
//! written for: a new file of the same name may be created, moved in, or adopted before the
//! row runs. [`Core::owed_removal`] is the one place that decides what such a row means for a
//! (member, file), and every site where the row could meet a newer file asks it with the
//! situation it is in ([`Meets`]); the answer ([`Removal`]) is one of:
//! * [`Removal::SetAside`] — new content owed over the removal (`upsert_job_q`): the row is
//!   rewritten to the content with the target's copy set aside first, since a new file's
//!   versions start again at 1 and would look older than the copy the target holds;
//! * [`Removal::Refuse`] — a CREATE or MOVE onto a writer owed the removal
//!   ([`Core::refuse_if_removing`]): refused with LOCKED and a waiting removal made due now,
//!   so a retry finds the name free;
//! * [`Removal::Run`] — a member registering with a copy that has no record while a removal
//!   of it is owed (`reconcile_member`): the copy is neither adopted (on the writer) nor
//!   quarantined again (on the other member); the row removes it plainly. Also a due row
//!   with nothing in its way;
//! * [`Removal::Wait`] — a due row whose name is busy: a CREATE or MOVE of that name may be
//!   on its way to the member, so the row waits for it;
//! * [`Removal::Moot`] — a due row on a member holding a record of that name again
//!   (`dispatch`): the row is dropped, never run.
//!
//! Why the invariant holds, whichever happens first. A newer file reaches a member only by
//! (a) content replicated to it, (b) a CREATE or MOVE on it as writer, or (c) adoption of an
//! unrecorded copy at registration; and a removal takes a file only when its row is
//! dispatched. (a) rewrites the row to content, so no removal is left to run; the set-aside
//! keeps the newer content from being skipped as older. (b) is refused while a removal is
//! owed or running there, so the file is made only after the row is gone (a running row is
//! answered first; a waiting one runs at once). (c) is not done while a removal is owed, so
//! nothing newer exists for the row to take. At dispatch, a row whose member holds a record
//! of the name again can only be left from before a promotion (every change rewrites the row
//! owed to the member that is not the writer), and dropping it takes nothing; a row whose
//! name is busy waits, so it never races the call that is making the name there.
//!
//! Why a row left on the writer is moot when its member holds the name again: every change
//! rewrites the row owed to the member that is not the writer (content replacing an owed
//! removal sets the old copy aside first), so a removal row outlives a new file of its name
//! only on the writer, a backup promoted while the removal waited in backoff. There the new
//! file exists only because a CREATE or MOVE succeeded, and a storage server's CREATE refuses
//! a name it holds, so the old copy was gone already.
//!
//! Why the refusal covers every state of the row: while it runs, the removal would take the
//! new file if it arrived second; while it waits in backoff, or is FAILED (retried otherwise
//! only when the member registers again), the old copy is still there and the storage server
//! would answer EXISTS. The refusal makes the row due now (a FAILED one with its attempts
//! reset), so the removal runs at once and a retried CREATE succeeds.

use super::*;

/// The situation in which an owed removal of (member, file) is looked at.
#[derive(Clone, Copy)]
pub(super) enum Meets<'a> {
    /// New content of `file` is owed to `member`.
    Content { member: &'a str, file: &'a str },
    /// A CREATE or MOVE would make `file` on `member`, its pair's writer.
    NewName { member: &'a str, file: &'a str },
    /// `member` registered holding a copy of `file` that has no record.
    Unrecorded { member: &'a str, file: &'a str },
    /// The row comes due for dispatch (no allocation: this runs over every due row).
    Due(&'a ReplJob),
}

/// What an owed removal means in the situation it meets (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Removal {
    /// No removal is owed there (or, for a running row, none is in the way): go on.
    None,
    /// The row runs (or stays to run) and removes the member's copy plainly.
    Run,
    /// The row waits: the name is busy with a call that may make it on the member.
    Wait,
    /// The member holds a record of that name again: the row is dropped, never run.
    Moot,
    /// The new change is refused with LOCKED; `waiting`: the row is not running yet and is
    /// made due now.
    Refuse { waiting: bool },
    /// The content replaces the row, with the member's copy set aside first.
    SetAside,
}

impl Core {
    /// Decides what a removal owed to a member means where it meets a change, a registration
    /// or its own dispatch. The only place that reads an owed removal.
    pub(super) fn owed_removal(&self, meets: Meets<'_>) -> Removal {
        let owed = |member: &str, file: &str| {
            self.q
                .get(&job_key(member, file))
                .is_some_and(|j| j.want == Want::Delete)
        };
        match meets {
            Meets::Content { member, file } if owed(member, file) => Removal::SetAside,
            Meets::Content { .. } => Removal::None,
            Meets::NewName { member, file } => {
                // Any row running to the writer is answered before a new name is made there.
                if self.q.is_running(&job_key(member, file)) {
                    Removal::Refuse { waiting: false }
                } else if owed(member, file) {
                    Removal::Refuse { waiting: true }
                } else {
                    Removal::None
                }
            }
            Meets::Unrecorded { member, file } if owed(member, file) => Removal::Run,
            Meets::Unrecorded { .. } => Removal::None,
            Meets::Due(job) if job.want != Want::Delete => Removal::None,
            Meets::Due(job) => {
                if self
                    .job_member(job)
                    .is_some_and(|(rec, m)| rec.held(m).is_some())
                {
                    Removal::Moot
                } else if self.ops.is_busy(&job.file) {
                    Removal::Wait
                } else {
                    Removal::Run
                }
            }
        }
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
        let waiting = match self.owed_removal(Meets::NewName {
            member: writer,
            file,
        }) {
            Removal::Refuse { waiting } => waiting,
            _ => return Ok(()),
        };
        if waiting {
            if let Some(j) = self.q.due_now(&job_key(writer, file), now_ms) {
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
