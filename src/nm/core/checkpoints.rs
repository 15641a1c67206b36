//! CHECKPOINT and REVERT as the name server decides them (a child module of `core.rs`).
//!
//! A tag is `[A-Za-z0-9_-]{1,64}`. VIEWCHECKPOINT and LISTCHECKPOINTS are reads: LOCATE (mode
//! `read`) then READ_CHECKPOINT (framed like READ) or LIST_CHECKPOINTS on the storage server,
//! with the read ticket. DELETE also removes the file's pending access requests here, and its
//! undo entries and checkpoints on each copy, so a later file of the same name starts clean.
//!
//! Checkpoints live on the storage servers beside each file's bookkeeping; the name server
//! checks rights and the tag, then asks the pair's current writer (the primary, or the
//! promoted backup during a failover) with a change ticket carrying the pair's epoch, as for
//! UNDO ([`Core::change_call`]). Both answers are a new version (a checkpoint changes the
//! file's bookkeeping, a revert its content), so the ordinary content job carries them to the
//! backup, and a retried or reordered job stays idempotent.

use super::*;

impl Core {
    /// CHECKPOINT f tag: write access and a valid tag.
    pub(super) fn start_checkpoint(
        &self,
        canon: &str,
        p: &Pending,
    ) -> Result<(JobKind, Purpose), WireError> {
        let Message::Checkpoint { tag, .. } = &p.msg else {
            return Err(err::internal("not a CHECKPOINT"));
        };
        names::validate_tag(tag)?;
        let (addr, epoch, ticket) = self.change_call(canon, &p.user, TicketOp::Checkpoint)?;
        let msg = Message::SsCheckpoint {
            file: canon.to_string(),
            tag: tag.clone(),
            creator: p.user.clone(),
            epoch,
            ticket,
        };
        Ok((JobKind::SsCall { addr, msg }, Purpose::Checkpoint))
    }

    /// REVERT f tag: write access; the content changes, access rights do not.
    pub(super) fn start_revert(
        &self,
        canon: &str,
        p: &Pending,
    ) -> Result<(JobKind, Purpose), WireError> {
        let Message::Revert { tag, .. } = &p.msg else {
            return Err(err::internal("not a REVERT"));
        };
        names::validate_tag(tag)?;
        let (addr, epoch, ticket) = self.change_call(canon, &p.user, TicketOp::Revert)?;
        let msg = Message::SsRevert {
            file: canon.to_string(),
            tag: tag.clone(),
            epoch,
            ticket,
        };
        Ok((JobKind::SsCall { addr, msg }, Purpose::Revert))
    }
}
