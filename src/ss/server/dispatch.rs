//! Accepting connections, the connection loop, routing each frame to its handler, and the
//! ticket and state checks the handlers share.

use super::*;

/// Accepts connections until `shared.stop` is set (the caller then connects once to wake it).
pub fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections refused for want of descriptors in the current burst (0: none).
    let mut fd_refused = 0u64;
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) if crate::limits::is_fd_exhaustion(&e) => {
                if fd_refused == 0 {
                    log::warn!(target: ev::ACCEPT_FD_EXHAUSTED, server = "ss", error = e.to_string();
                        "cannot accept: {e}; retrying every {ACCEPT_RETRY_MS} ms");
                }
                fd_refused += 1;
                // The connection stays queued; accept blocks, so waiting is no busy loop.
                thread::sleep(Duration::from_millis(ACCEPT_RETRY_MS));
                continue;
            }
            Err(e) => {
                log::warn!(target: ev::SS_REFUSED, "accept failed: {e}");
                continue;
            }
        };
        if fd_refused > 0 {
            log::info!(target: ev::ACCEPT_FD_EXHAUSTED, server = "ss", refused = fd_refused;
                "descriptors available again after {fd_refused} failed accepts");
            fd_refused = 0;
        }
        if shared.conns.fetch_add(1, Ordering::SeqCst) >= shared.max_connections {
            shared.conns.fetch_sub(1, Ordering::SeqCst);
            refuse_busy(stream, shared.max_connections);
            continue;
        }
        let slot = ConnSlot(shared.clone());
        let spawned = thread::Builder::new()
            .name("ss-conn".into())
            .spawn(move || serve(stream, slot));
        if let Err(e) = spawned {
            log::warn!(target: ev::SS_REFUSED, "cannot start a connection thread: {e}");
        }
    }
}

pub(super) fn refuse_busy(stream: TcpStream, max: usize) {
    log::warn!(target: ev::SS_REFUSED, reason = "connections"; "refusing a connection: {max} already open");
    let mut conn = Connection::new(stream);
    let _ = conn.set_timeout(Some(Duration::from_millis(1_000)));
    let e = err::limit(format!(
        "too many connections (limit {max}); try again later"
    ));
    let _ = conn.send(&Message::err(e), &[]);
}

pub(super) fn serve(stream: TcpStream, slot: ConnSlot) {
    let shared = &slot.0;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut conn = Connection::new(stream);
    conn.set_budget(shared.budget.clone());
    let idle_ms = shared.idle_timeout_ms;
    // A new connection must deliver its first (ticketed) request quickly: a peer that opens
    // sockets and trickles bytes cannot keep connection slots from real clients for long.
    let mut frame_ms = FIRST_FRAME_TIMEOUT_MS.min(idle_ms);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if conn
            .set_timeout(Some(Duration::from_millis(idle_ms)))
            .is_err()
        {
            break;
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(frame_ms);
        frame_ms = idle_ms;
        let frame = match conn.recv_by(deadline) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(ConnError::Frame(fe)) => {
                log::warn!(target: ev::SS_REFUSED, peer = peer.as_str(), reason = "frame"; "malformed input from {peer}: {fe}");
                let _ = conn.send(&Message::err(fe.into()), &[]);
                break;
            }
            Err(_) => break,
        };
        let result = match frame.msg {
            Message::Read { file, ticket } => read(shared, &mut conn, &file, &ticket),
            Message::Stream { file, ticket } => stream_words(shared, &mut conn, &file, &ticket),
            Message::WriteBegin {
                file,
                sentence,
                ticket,
            } => write_session(shared, &mut conn, &file, sentence, &ticket),
            Message::SsCreate {
                file,
                owner,
                epoch,
                ticket,
            } => create(shared, &mut conn, &file, &owner, epoch, &ticket),
            Message::SsDelete { file, ticket } => delete(shared, &mut conn, &file, &ticket),
            Message::SsUndo {
                file,
                epoch,
                ticket,
            } => undo(shared, &mut conn, &file, epoch, &ticket),
            Message::PeekFile { file, ticket } => peek(shared, &mut conn, &file, &ticket),
            Message::SsQuarantine { file, keep, ticket } => {
                quarantine(shared, &mut conn, &file, keep, &ticket)
            }
            Message::GetFileContent {
                file,
                have,
                have_checkpoints,
                staged,
                basis,
                ticket,
            } => get_content(
                shared,
                &mut conn,
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
                    &mut conn,
                    &file,
                    &have,
                    &have_checkpoints,
                    Ask::Delta(ask),
                    &ticket,
                )
            }),
            Message::Signature {
                file,
                avg_bits,
                ticket,
            } => delta::signature(shared, &mut conn, &file, avg_bits, &ticket),
            Message::PutFileDelta {
                file,
                state,
                undo,
                sent,
                checkpoints,
                sent_checkpoints,
                basis,
                basis_checksum,
                ticket,
            } => {
                let head = PutHead {
                    file: &file,
                    state: &state,
                    undo: &undo,
                    sent: &sent,
                    checkpoints: &checkpoints,
                    sent_checkpoints: &sent_checkpoints,
                    basis: Some((basis, basis_checksum)),
                    ops: true,
                    staged: None,
                };
                put_content(shared, &mut conn, &head, &ticket)
            }
            Message::PutFileContent {
                file,
                state,
                undo,
                sent,
                checkpoints,
                sent_checkpoints,
                staged,
                basis,
                ticket,
            } => {
                let head = PutHead {
                    file: &file,
                    state: &state,
                    undo: &undo,
                    sent: &sent,
                    checkpoints: &checkpoints,
                    sent_checkpoints: &sent_checkpoints,
                    basis: basis.map(|b| (b.version, b.checksum)),
                    ops: false,
                    staged: staged.as_deref(),
                };
                put_content(shared, &mut conn, &head, &ticket)
            }
            Message::ReadCheckpoint { file, tag, ticket } => {
                read_checkpoint(shared, &mut conn, &file, &tag, &ticket)
            }
            Message::ListCheckpoints { file, ticket } => {
                list_checkpoints(shared, &mut conn, &file, &ticket)
            }
            Message::SsCheckpoint {
                file,
                tag,
                creator,
                epoch,
                ticket,
            } => checkpoint(shared, &mut conn, &file, &tag, &creator, epoch, &ticket),
            Message::SsRevert {
                file,
                tag,
                epoch,
                ticket,
            } => revert(shared, &mut conn, &file, &tag, epoch, &ticket),
            Message::SsMove {
                file,
                to,
                version,
                ticket,
            } => move_file(shared, &mut conn, &file, &to, version, &ticket),
            Message::SsMkdir { folders, ticket } => mkdir(shared, &mut conn, &folders, &ticket),
            Message::Upload {
                file,
                size,
                checksum,
                ticket,
            } => upload(shared, &mut conn, &file, size, checksum, &ticket),
            Message::StageUpload {
                file,
                size,
                checksum,
                ticket,
            } => staging::stage_upload(shared, &mut conn, &file, size, checksum, &ticket),
            Message::CheckFiles {
                files,
                orphans,
                ticket,
            } => check_files(shared, &mut conn, &files, orphans, &ticket),
            Message::PutBatch {} => put_batch(shared, &mut conn),
            other => Err(Fail::Reply(err::invalid(format!(
                "unexpected {} on a storage server's client port",
                other.op_name()
            )))),
        };
        match result {
            Ok(()) => {}
            Err(Fail::Reply(e)) => {
                if conn.send(&Message::err(e), &[]).is_err() {
                    break;
                }
            }
            Err(Fail::ReplyClose(e)) => {
                let _ = conn.send(&Message::err(e), &[]);
                break;
            }
            Err(Fail::Close) => break,
        }
    }
}

/// Refuses a change unless this server is its pair's writer, holds a live write lease, and
/// is on the epoch the ticket was minted for (see `NmLink::check_write`).
pub(super) fn may_change(shared: &Shared, t: &Ticket) -> Result<(), WireError> {
    shared.link.check_write(t.epoch, shared.store.epoch())
}

/// A name-server change of `file` (DELETE, UNDO, REVERT, MOVE, quarantine) is refused with
/// LOCKED while a write session is open on it; called with the file's lock held.
pub(super) fn refuse_if_writing(shared: &Shared, file: &str) -> Result<(), WireError> {
    if shared.sessions.any_open(file) {
        return Err(err::locked(format!(
            "{} is being written; try again when the write session ends",
            names::display(file)
        )));
    }
    Ok(())
}

/// Checks the name and the ticket for one request.
pub(super) fn authorise(
    shared: &Shared,
    file: &str,
    t: &Ticket,
    op: TicketOp,
) -> Result<(), WireError> {
    let canonical = names::canonical_file(file)?;
    if canonical != file {
        return Err(err::invalid(format!(
            "'{file}' is not a canonical file name"
        )));
    }
    shared.checker.check(t, file, op).inspect_err(|e| {
        log::warn!(target: ev::SS_REFUSED, file = file, user = t.user.as_str(), reason = e.msg.as_str();
            "refused {op:?} of {file} by {}: {}", t.user, e.msg);
    })
}

/// A file deleted by hand is reported to the name server when an access finds it gone.
pub(super) fn vanished<'a>(
    shared: &'a Shared,
    file: &'a str,
) -> impl FnOnce(StoreError) -> Fail + 'a {
    move |e| {
        if matches!(e, StoreError::NotFound(_)) && shared.store.forget_vanished(file) {
            shared.link.removed_nowait(file);
        }
        Fail::from(e)
    }
}

/// A hand edit found on access is a new version the name server must hear about, and hear
/// about before the access is answered: a client that reads the adopted bytes and then asks
/// INFO must see the same version. If the name server does not confirm in time the access
/// still proceeds; the adoption is on disk and is reconciled when this server re-registers.
pub(super) fn report_adopted(shared: &Shared, adopted: bool, state: impl FnOnce() -> FileState) {
    if adopted {
        let _ = shared
            .link
            .changed(state(), Duration::from_millis(CHANGED_ACK_TIMEOUT_MS));
    }
}

pub(super) fn check_fresh(
    shared: &Shared,
    t: &Ticket,
    have: crate::protocol::Version,
) -> Result<(), WireError> {
    match t.min_version {
        Some(min) if min > have => Err(err::unavailable(format!(
            "stale copy on {}: version {have}, need {min}",
            shared.store.name()
        ))),
        _ => Ok(()),
    }
}
