//! The source end of replication: GET_FILE_CONTENT and GET_FILE_DELTA, sending the content,
//! its history entries and checkpoints in CHUNK frames.

use super::*;
use crate::protocol::frame::Frame;

/// Routes a request for a copy (this server is the source) to its handler. Called by `dispatch::serve` with the frames it routes here.
pub(super) fn handle(shared: &Shared, conn: &mut Connection, frame: Frame) -> Result<(), Fail> {
    match frame.msg {
        Message::GetFileContent {
            file,
            have,
            have_checkpoints,
            staged,
            basis,
            ticket,
        } => get_content(
            shared,
            conn,
            &file,
            &have,
            &have_checkpoints,
            Ask::Whole {
                staged,
                basis: basis.map(|b| (b.version, b.checksum)),
            },
            &ticket,
        ),
        Message::GetFileDelta {
            file,
            have,
            have_checkpoints,
            avg_bits,
            count,
            basis,
            basis_checksum,
            ticket,
        } => delta::parse_request(avg_bits, count, &frame.body).and_then(|(p, index)| {
            let ask = DeltaAsk {
                params: p,
                index: &index,
                basis: (basis, basis_checksum),
            };
            get_content(
                shared,
                conn,
                &file,
                &have,
                &have_checkpoints,
                Ask::Delta(ask),
                &ticket,
            )
        }),
        other => Err(unexpected(&other)),
    }
}

/// Sends what `from` yields, at most `limit` bytes, as CHUNK frames and an END.
pub(super) fn send_part(conn: &mut Connection, from: &mut File, limit: u64) -> Result<(), Fail> {
    let mut from = from.take(limit);
    // No bigger than the part: a catch-up sends thousands of small files, and zeroing a whole
    // chunk's buffer for each cost more than sending it.
    let mut buf =
        vec![0u8; usize::try_from(limit).map_or(CHUNK_BYTES, |l| l.clamp(1, CHUNK_BYTES))];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The header is out; the peer sees an END-less close and retries.
            Err(_) => return Err(Fail::Close),
        };
        conn.send(&Message::Chunk {}, &buf[..n])?;
    }
    conn.send(&Message::End {}, &[])?;
    Ok(())
}

/// GET_FILE_CONTENT: the content and the history entries the target lacks, from fds opened
/// under the file lock, so one consistent version goes out even if a commit follows.
pub(super) fn get_content(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    have: &[Version],
    have_checkpoints: &[String],
    ask: Ask<'_>,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Fetch)?;
    let (delta, staged, basis) = match ask {
        Ask::Whole { staged, basis } => (None, staged, basis),
        Ask::Delta(d) => (Some(d), None, Some(d.basis)),
    };
    let mut tr = shared
        .store
        .open_transfer(file, have, have_checkpoints)
        .map_err(vanished(shared, file))?;
    // The target's old copy stands for the history entry of its version only if this
    // server's entry of that version is the same bytes (the same checksum); else it is sent
    // (as ops) like any other.
    if let Some((v, crc)) = basis {
        if tr.undo.iter().any(|d| d.version == v && d.checksum == crc) {
            tr.entries.retain(|(e, _)| *e != v);
        }
    }
    let ops = delta.map(|d| (d.params, d.index));
    report_adopted(shared, tr.adopted, || tr.meta.state(file));
    check_fresh(shared, t, tr.meta.version)?;
    let sent: Vec<Version> = tr.entries.iter().map(|(v, _)| *v).collect();
    let sent_checkpoints: Vec<String> =
        tr.checkpoint_files.iter().map(|(t, _)| t.clone()).collect();
    // The target holds this very version's content staged: it is not sent again.
    let content_staged = staged == Some(tr.meta.version);
    conn.send(
        &Message::FileContent {
            state: tr.meta.state(file),
            undo: tr.undo.clone(),
            sent,
            checkpoints: tr.checkpoints.clone(),
            sent_checkpoints,
            content_staged,
        },
        &[],
    )?;
    if !content_staged {
        send_any(conn, file, &mut tr.content, tr.meta.size, ops)?;
    }
    for (v, f) in tr.entries.iter_mut() {
        let size = tr
            .undo
            .iter()
            .find(|d| d.version == *v)
            .map_or(0, |d| d.size);
        send_any(conn, file, f, size, ops)?;
    }
    for (tag, f) in tr.checkpoint_files.iter_mut() {
        let size = tr
            .checkpoints
            .iter()
            .find(|c| c.tag == *tag)
            .map_or(0, |c| c.size);
        send_any(conn, file, f, size, ops)?;
    }
    log::info!(target: ev::SS_COMMIT, file = file, version = tr.meta.version.to_string(), bytes = tr.meta.size, entries = tr.entries.len() as u64;
        "sent {file} version {} for replication", tr.meta.version);
    Ok(())
}

/// How a GET asks for the file's parts.
#[derive(Clone, Copy)]
pub(super) enum Ask<'a> {
    /// GET_FILE_CONTENT: each part whole, but the content left out when the target holds
    /// this version staged, and the history entry of the target's own copy (`basis`) left
    /// out when it is the same bytes.
    Whole {
        staged: Option<Version>,
        basis: Option<(Version, u32)>,
    },
    /// GET_FILE_DELTA: each part as ops.
    Delta(DeltaAsk<'a>),
}

/// What a GET_FILE_DELTA asks beyond a GET_FILE_CONTENT.
#[derive(Clone, Copy)]
pub(super) struct DeltaAsk<'a> {
    /// How the signature was cut.
    pub(super) params: crate::delta::Params,
    /// The signature of the target's old copy.
    pub(super) index: &'a crate::delta::Index,
    /// That copy's version and checksum.
    pub(super) basis: (Version, u32),
}

/// Sends one part whole, or (`ops`, a GET_FILE_DELTA) as the ops that rebuild it from the
/// target's old copy: the content and the history entries and checkpoints alike, since the
/// versions between the target's and the current one are mostly the same bytes.
pub(super) fn send_any(
    conn: &mut Connection,
    file: &str,
    f: &mut File,
    size: u64,
    ops: Option<(crate::delta::Params, &crate::delta::Index)>,
) -> Result<(), Fail> {
    match ops {
        Some((p, index)) => delta::send_ops(conn, file, f, size, p, index),
        None => send_part(conn, f, size),
    }
}
