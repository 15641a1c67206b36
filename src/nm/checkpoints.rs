//! CHECKPOINT and REVERT as the name server decides them (a child module of `core.rs`).
//!
//! Checkpoints live on the storage servers beside each file's bookkeeping; the name server
//! checks rights and the tag, then asks the file's primary. Both answers are a new version
//! (a checkpoint changes the file's bookkeeping, a revert its content), so the ordinary
//! content job carries them to the backup, and a retried or reordered job stays idempotent.

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
        let rec = self.files.get(canon).ok_or_else(|| not_found(canon))?;
        Self::need_write(rec, &p.user, canon)?;
        let addr = self.live_addr(rec, canon)?;
        let ticket = self
            .key
            .mint(NM_USER, canon, TicketOp::Checkpoint, &rec.ss, None);
        let msg = Message::SsCheckpoint {
            file: canon.to_string(),
            tag: tag.clone(),
            creator: p.user.clone(),
            epoch: EPOCH,
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
        let rec = self.files.get(canon).ok_or_else(|| not_found(canon))?;
        Self::need_write(rec, &p.user, canon)?;
        let addr = self.live_addr(rec, canon)?;
        let ticket = self
            .key
            .mint(NM_USER, canon, TicketOp::Revert, &rec.ss, None);
        let msg = Message::SsRevert {
            file: canon.to_string(),
            tag: tag.clone(),
            epoch: EPOCH,
            ticket,
        };
        Ok((JobKind::SsCall { addr, msg }, Purpose::Revert))
    }
}
