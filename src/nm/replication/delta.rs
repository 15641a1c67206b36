//! The worker's side of a delta transfer (see `crate::delta`): the target's signature of its
//! stale copy, relayed to the source inside GET_FILE_DELTA, whose op stream is relayed into a
//! PUT_FILE_DELTA. Any failure is the caller's cue to send the copy whole.

use super::{
    connect, relay_reply, reply, sending, unexpected, Lacks, Outcome, PutAs, Transfer,
    FRAME_TIMEOUT_MS,
};
use crate::auth::{ClusterKey, NM_USER};
use crate::delta::{Params, ENTRY_BYTES, MAX_SIGNATURE_ENTRIES};
use crate::logging::ev;
use crate::protocol::{err, Connection, FileState, Message, TicketOp, WireError};
use std::time::{Duration, Instant};

/// Whether a target's stale copy is large enough to be caught up by delta.
pub(super) fn worth_it(held: &FileState) -> bool {
    crate::delta::worth_it(held.size)
}

/// Copies `t` to its target (connected as `dst`, which holds the older copy `held` and the
/// history in `lacks`) by delta from the source `src` (name, address).
pub(super) fn copy(
    t: &Transfer,
    key: &ClusterKey,
    dst: &mut Connection,
    src: (&str, &str),
    held: &FileState,
    lacks: &Lacks,
) -> Result<Outcome, WireError> {
    let start = Instant::now();
    let (tname, (sname, saddr)) = (t.target.0.as_str(), src);
    let p = Params::for_size(held.size);
    // The target reads its copy whole before SIGNED and again (the basis check) before it
    // takes the first op: the wait on it grows with the copy (bounded, see DELTA_MAX_BYTES).
    let wait_ms = FRAME_TIMEOUT_MS + crate::delta::read_wait_ms(held.size);
    dst.set_timeout(Some(Duration::from_millis(wait_ms)))
        .map_err(|e| err::internal(e.to_string()))?;
    // 1. The target's signature of the copy it holds.
    let ask = Message::Signature {
        file: t.file.clone(),
        avg_bits: p.avg_bits,
        ticket: key.mint(NM_USER, &t.file, TicketOp::Store, tname, None),
    };
    dst.send(&ask, &[]).map_err(|e| sending(tname, e))?;
    let f = dst.recv_some()?;
    let (basis, count) = match f.msg.into_result()? {
        Message::Signed {
            state,
            avg_bits,
            count,
        } if avg_bits == p.avg_bits => (state, count),
        other => return Err(unexpected(tname, &other)),
    };
    let signature_ms = start.elapsed().as_millis() as u64;
    if count > MAX_SIGNATURE_ENTRIES as u64 || f.body.len() as u64 != count * ENTRY_BYTES as u64 {
        return Err(err::invalid(format!("{tname} sent a malformed signature")));
    }
    // 2. The source's op stream against it, relayed into the target's install. The copy the
    // target holds is the history entry of its own version if the source's entry has its
    // checksum, so that is not sent either.
    let get = Message::GetFileDelta {
        file: t.file.clone(),
        have: lacks.blobs.clone(),
        basis: basis.version,
        basis_checksum: basis.checksum,
        have_checkpoints: lacks.checkpoints.clone(),
        avg_bits: p.avg_bits,
        count,
        ticket: key.mint(NM_USER, &t.file, TicketOp::Fetch, sname, None),
    };
    let mut src = connect(saddr)?;
    src.send(&get, &f.body).map_err(|e| sending(sname, e))?;
    let bytes = relay_reply(t, key, &mut src, sname, dst, tname, PutAs::Delta(&basis))?;
    drop(src);
    // 3. The target verified the rebuilt content as it verifies any copy.
    match reply(dst)?? {
        Message::FileStateReply { state } => {
            log::info!(target: ev::REPLICATION_DELTA, file = t.file.as_str(), ss = tname,
                version = state.version.to_string(), bytes = bytes, size = state.size,
                signature = f.body.len() as u64, signature_ms = signature_ms,
                ms = start.elapsed().as_millis() as u64;
                "file={} caught up on {tname} by delta: {bytes} bytes sent for {} (signature {} bytes)",
                t.file, state.size, f.body.len());
            Ok(Outcome::Copied {
                state,
                skipped: false,
                bytes,
            })
        }
        other => Err(unexpected(tname, &other)),
    }
}
