//! The storage server's side of a delta transfer (see `crate::delta`): SIGNATURE on the
//! target, the op stream of GET_FILE_DELTA on the source, and rebuilding the content of a
//! PUT_FILE_DELTA from the old copy on the target.

use super::{
    authorise, report_adopted, start_writeback, Fail, Keep, Received, Shared, SyncBy,
    WRITEBACK_BYTES,
};
use crate::delta::{self, Index, Op, Params, SigError, ENTRY_BYTES};
use crate::logging::ev;
use crate::names;
use crate::protocol::frame::{ConnError, CHUNK_BYTES};
use crate::protocol::{err, Connection, Message, Ticket, TicketOp, Version};
use crate::ss::store::Basis;
use crate::ss::store::{ContentCounter, StoreError};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

/// SIGNATURE: the signature of the copy held, cut as asked, with the state it describes.
pub(super) fn signature(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    avg_bits: u32,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Store)?;
    let p = params(avg_bits)?;
    let (f, meta, adopted) = shared.store.snapshot(file)?;
    report_adopted(shared, adopted, || meta.state(file));
    let sig = delta::signature(&mut f.take(meta.size), p).map_err(|e| match e {
        SigError::TooLarge => err::limit(e.to_string()),
        SigError::Malformed(_) => err::invalid(e.to_string()),
        SigError::Io(e) => shared.store.io_error(file, e).into(),
    })?;
    let count = (sig.len() / ENTRY_BYTES) as u64;
    conn.send(
        &Message::Signed {
            state: meta.state(file),
            avg_bits,
            count,
        },
        &sig,
    )?;
    Ok(())
}

/// The chunking a peer asked for, if this server supports it.
fn params(avg_bits: u32) -> Result<Params, Fail> {
    Params::from_wire(avg_bits)
        .ok_or_else(|| err::invalid(format!("unsupported average chunk size 2^{avg_bits}")).into())
}

/// The signature a GET_FILE_DELTA carries as its body, read.
pub(super) fn parse_request(
    avg_bits: u32,
    count: u64,
    body: &[u8],
) -> Result<(Params, Index), Fail> {
    let p = params(avg_bits)?;
    let index = Index::parse(body, count).map_err(|e| err::invalid(e.to_string()))?;
    Ok((p, index))
}

/// Sends the ops that rebuild what `from` yields (at most `limit` bytes) from the old copy
/// `index` describes, as CHUNK frames and an END.
pub(super) fn send_ops(
    conn: &mut Connection,
    file: &str,
    from: &mut File,
    limit: u64,
    p: Params,
    index: &Index,
) -> Result<(), Fail> {
    let stats = delta::encode(&mut from.take(limit), p, index, |b| {
        conn.send(&Message::Chunk {}, b)
    })
    // The head is out; the peer sees an END-less close and falls back.
    .map_err(|_| Fail::Close)?;
    conn.send(&Message::End {}, &[])?;
    log::info!(target: ev::SS_DELTA_SENT, file = file, bytes = stats.wire, copied = stats.copied, literal = stats.literal;
        "sent {file} as ops: {} bytes copied from the old copy, {} literal, {} on the wire",
        stats.copied, stats.literal, stats.wire);
    Ok(())
}

/// This server's copy a PUT_FILE_DELTA's ops refer to, verified at its basis.
pub(super) struct OldCopy {
    /// The copy, open (opened under the file lock with its record).
    file: File,
    /// Its size.
    size: u64,
    /// What was verified, for the install.
    pub(super) basis: Basis,
}

/// Opens and verifies (record and a whole read of its bytes, see [`Store::open_basis`]) the
/// copy a PUT_FILE_DELTA names as its basis. A hand edit found on the way is reported as on
/// any access.
///
/// [`Store::open_basis`]: crate::ss::store::Store::open_basis
pub(super) fn open_basis(
    shared: &Shared,
    file: &str,
    basis: (Version, u32),
) -> Result<OldCopy, StoreError> {
    let (meta, adopted, opened) = shared.store.open_basis(file, basis)?;
    report_adopted(shared, adopted, || meta.state(file));
    let (f, basis) = opened?;
    Ok(OldCopy {
        file: f,
        size: meta.size,
        basis,
    })
}

/// Reads one part of a PUT_FILE_DELTA (ops, CHUNK* END) and rebuilds it into a temp file
/// from `old`, this server's copy at the basis. Without one (`refused` says why, for the
/// first part) the stream is still read, so the connection stays in step, and the failure
/// is reported in [`Received::error`]; ops that do not fit the old copy or the declared size
/// break the protocol. `flip` is the fault hook of PUT_FILE_CONTENT, applied to the rebuilt
/// bytes.
#[allow(clippy::too_many_arguments)]
pub(super) fn recv_ops(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    limit: u64,
    old: Option<&OldCopy>,
    refused: Option<StoreError>,
    keep: Keep,
    flip: &mut bool,
) -> Result<Received, Fail> {
    let mut counter = ContentCounter::bytes_only();
    let mut error = refused;
    let mut old = old.map(|o| (&o.file, o.size));
    let mut temp = None;
    let mut out: Option<File> = None;
    if keep.store && old.is_some() && error.is_none() {
        match shared.store.temp_file(file) {
            Ok((t, f)) => {
                temp = Some(t);
                out = Some(f);
            }
            Err(e) => error = Some(e),
        }
    }
    let mut buf = Vec::new();
    let mut flushed = 0u64;
    let bad = |what: &str| {
        Fail::ReplyClose(err::invalid(format!(
            "delta of {}: {what}",
            names::display(file)
        )))
    };
    loop {
        let frame = match conn.recv() {
            Ok(Some(f)) => f,
            Err(ConnError::Frame(fe)) => return Err(Fail::ReplyClose(fe.into())),
            Ok(None) | Err(_) => return Err(Fail::Close),
        };
        match frame.msg {
            Message::Chunk {} => {
                for op in delta::decode(&frame.body) {
                    let op = op.map_err(bad)?;
                    let len = match &op {
                        Op::Copy { len, .. } => *len,
                        Op::Literal(d) => d.len() as u64,
                    };
                    // `len` is the peer's: an overflow is more than declared too.
                    if counter
                        .size()
                        .checked_add(len)
                        .is_none_or(|end| end > limit)
                    {
                        return Err(bad(&format!("more than the {limit} bytes declared")));
                    }
                    match op {
                        Op::Literal(d) => {
                            if let Err(e) =
                                emit(d, &mut counter, &mut out, &mut flushed, flip, file)
                            {
                                error = Some(shared.store.io_error(file, e));
                                out = None;
                            }
                        }
                        Op::Copy { offset, len } => {
                            let Some((f, size)) = old.as_ref() else {
                                // Only draining.
                                continue;
                            };
                            if offset.checked_add(len).is_none_or(|end| end > *size) {
                                return Err(bad("a copy reaches past the old copy"));
                            }
                            let mut at = offset;
                            let end = offset + len;
                            while at < end {
                                let n = (end - at).min(CHUNK_BYTES as u64) as usize;
                                buf.resize(n, 0);
                                let r = f.read_exact_at(&mut buf, at).and_then(|()| {
                                    emit(&buf, &mut counter, &mut out, &mut flushed, flip, file)
                                });
                                if let Err(e) = r {
                                    error = Some(shared.store.io_error(file, e));
                                    old = None;
                                    out = None;
                                    break;
                                }
                                at += n as u64;
                            }
                        }
                    }
                }
            }
            Message::End {} => break,
            other => {
                return Err(Fail::ReplyClose(err::invalid(format!(
                    "expected CHUNK or END, not {}",
                    other.op_name()
                ))))
            }
        }
    }
    // A delta is never part of a batch's syncfs window: synced here unless the caller syncs
    // it, so no path can leave a rebuilt copy unsynced.
    let sync = match keep.sync {
        SyncBy::Caller => SyncBy::Caller,
        SyncBy::FileSystem | SyncBy::Now => SyncBy::Now,
    };
    Ok(Received::settle(
        shared, file, temp, out, sync, counter, error,
    ))
}

/// Counts rebuilt bytes and writes them to the temp file, if any, starting their writeback
/// every few MiB as a full transfer does (`flushed`: the bytes whose writeback started).
fn emit(
    bytes: &[u8],
    counter: &mut ContentCounter,
    out: &mut Option<File>,
    flushed: &mut u64,
    flip: &mut bool,
    file: &str,
) -> io::Result<()> {
    let flipped;
    let bytes = if *flip && !bytes.is_empty() {
        *flip = false;
        let mut b = bytes.to_vec();
        b[0] ^= 0x01;
        log::warn!(target: ev::SS_REFUSED, file = file, reason = "fault";
            "test hook PAIRFS_FAULT_FLIP_PUT: flipped one rebuilt byte of {file}");
        flipped = b;
        &flipped[..]
    } else {
        bytes
    };
    counter.update(bytes);
    let Some(f) = out.as_mut() else {
        return Ok(());
    };
    f.write_all(bytes)?;
    let written = counter.size();
    if written - *flushed >= WRITEBACK_BYTES {
        start_writeback(f, *flushed, written - *flushed);
        *flushed = written;
    }
    Ok(())
}
