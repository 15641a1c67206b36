//! Accepting connections, the connection loop, routing each frame to its handler, and the
//! ticket and state checks the handlers share.

use super::*;

/// Accepts connections until `shared.stop` is set (the caller then connects once to wake it).
/// Each connection is served by a thread of its own: a parked one when there is one (see
/// [`Parked`]), else a new one.
pub fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections refused for want of descriptors in the current burst (0: none).
    let mut fd_refused = 0u64;
    let parked = Arc::new(Parked::new(Duration::from_millis(PARK_MS)));
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
        if parked.claim() {
            // A parked thread is waiting (or about to): it takes this one at once.
            let _ = parked.tx.send((stream, slot));
            continue;
        }
        let parked = parked.clone();
        let spawned = thread::Builder::new()
            .name("ss-conn".into())
            .spawn(move || {
                serve(stream, slot);
                parked.serve_next(|(stream, slot)| serve(stream, slot));
            });
        if let Err(e) = spawned {
            log::warn!(target: ev::SS_REFUSED, "cannot start a connection thread: {e}");
        }
    }
}

/// Connection threads kept between connections. The name server opens a connection per
/// operation (a client keeps its own between commands, but a new client opens a new one), so
/// starting a thread for each (its stack mapped, then unmapped) would add that cost to every
/// such request's latency and CPU; a thread that finished a connection parks instead and is
/// handed the next one.
///
/// `idle` counts the parked threads no connection was handed to yet. The accept loop claims
/// one (`idle - 1`, never below 0) before it sends a connection, so a sent connection always
/// has a thread bound to take it: it never waits behind a long session. A parked thread that
/// waited `park` leaves only if it can take itself off the count; if it cannot, a connection
/// is on its way to it, and it takes it.
struct Parked<T> {
    tx: crossbeam_channel::Sender<T>,
    rx: crossbeam_channel::Receiver<T>,
    idle: AtomicUsize,
    park: Duration,
}

/// How long a parked connection thread waits for a connection before it ends.
const PARK_MS: u64 = 10_000;
/// At most this many threads park; more end after their connection.
const MAX_PARKED: usize = 32;

impl<T> Parked<T> {
    fn new(park: Duration) -> Parked<T> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Parked {
            tx,
            rx,
            idle: AtomicUsize::new(0),
            park,
        }
    }

    /// Takes one parked thread off the count, if there is one.
    fn claim(&self) -> bool {
        self.idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Parks the calling thread and hands each connection sent to it to `serve`, until it has
    /// waited `park` for one, or too many threads are parked.
    fn serve_next(&self, serve: impl Fn(T)) {
        loop {
            if self.idle.fetch_add(1, Ordering::SeqCst) >= MAX_PARKED {
                if self.claim() {
                    return;
                }
                // Claimed meanwhile: a connection is on its way.
            } else {
                match self.rx.recv_timeout(self.park) {
                    Ok(next) => {
                        serve(next);
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) if self.claim() => {
                        return;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            }
            // The count says a connection was handed to a parked thread: take it.
            match self.rx.recv() {
                Ok(next) => serve(next),
                Err(_) => return,
            }
        }
    }
}

fn refuse_busy(stream: TcpStream, max: usize) {
    log::warn!(target: ev::SS_REFUSED, reason = "connections"; "refusing a connection: {max} already open");
    let mut conn = Connection::new(stream);
    let _ = conn.set_timeout(Some(Duration::from_millis(1_000)));
    let e = err::limit(format!(
        "too many connections (limit {max}); try again later"
    ));
    let _ = conn.send(&Message::err(e), &[]);
}

/// Serves one connection until it closes, fails, idles out or the server stops: each frame
/// goes to the handler of its family, and a failure is answered as [`Fail`] says.
fn serve(stream: TcpStream, slot: ConnSlot) {
    let shared = &slot.0;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let idle_ms = shared.idle_timeout_ms;
    let first_ms = Duration::from_millis(FIRST_FRAME_TIMEOUT_MS.min(idle_ms));
    let Ok(mut conn) = Connection::accept(stream, first_ms, "storage server") else {
        return;
    };
    conn.set_budget(shared.budget.clone());
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
        let result = match &frame.msg {
            Message::Read { .. }
            | Message::Stream { .. }
            | Message::WriteBegin { .. }
            | Message::Upload { .. }
            | Message::ReadCheckpoint { .. }
            | Message::ListCheckpoints { .. }
            | Message::SsCreate { .. }
            | Message::SsDelete { .. }
            | Message::SsUndo { .. } => client::handle(shared, &mut conn, frame),
            Message::PeekFile { .. }
            | Message::SsQuarantine { .. }
            | Message::CheckFiles { .. }
            | Message::SsCheckpoint { .. }
            | Message::SsRevert { .. }
            | Message::SsMove { .. }
            | Message::SsMkdir { .. } => nm::handle(shared, &mut conn, frame),
            Message::GetFileContent { .. } | Message::GetFileDelta { .. } => {
                send::handle(shared, &mut conn, frame)
            }
            Message::Signature { .. }
            | Message::PutFileContent { .. }
            | Message::PutFileDelta { .. }
            | Message::PutBatch { .. }
            | Message::StageUpload { .. } => recv::handle(shared, &mut conn, frame),
            other => Err(unexpected(other)),
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

/// Checks the name and the ticket of a change, then that this server may take it now
/// ([`may_change`]).
pub(super) fn authorise_change(
    shared: &Shared,
    file: &str,
    t: &Ticket,
    op: TicketOp,
) -> Result<(), WireError> {
    authorise(shared, file, t, op)?;
    may_change(shared, t)
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

/// The answer to a message a storage server's client port does not serve.
pub(super) fn unexpected(m: &Message) -> Fail {
    Fail::Reply(err::invalid(format!(
        "unexpected {} on a storage server's client port",
        m.op_name()
    )))
}

#[cfg(test)]
mod parked_tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_parked_thread_serves_every_later_connection_and_leaves_when_idle() {
        let parked: Arc<Parked<u32>> = Arc::new(Parked::new(Duration::from_millis(300)));
        assert!(!parked.claim(), "nobody is parked yet");
        let served = Arc::new(Mutex::new(Vec::new()));
        let (p, s) = (parked.clone(), served.clone());
        let serve = move |n: u32| s.lock().unwrap().push((n, thread::current().id()));
        let t = thread::spawn(move || {
            serve(0);
            p.serve_next(serve);
        });
        for n in 1..=50u32 {
            // The one thread parks again after each: it is claimed, never a new one.
            let t0 = std::time::Instant::now();
            while !parked.claim() {
                assert!(t0.elapsed() < Duration::from_secs(5), "the thread parks");
                thread::yield_now();
            }
            parked.tx.send(n).unwrap();
        }
        t.join().unwrap();
        let served = served.lock().unwrap();
        assert_eq!(served.len(), 51);
        assert!(served.iter().all(|(_, id)| *id == served[0].1));
        assert_eq!(parked.idle.load(Ordering::SeqCst), 0, "it left the count");
    }

    #[test]
    fn a_claimed_thread_takes_its_connection_even_after_its_wait_ran_out() {
        // Claimed during its 1 ms wait, then sent its connection only after the wait ran out:
        // the count is 0, so it must not leave. A thread whose wait ran out before this one
        // could claim it (a busy machine) left as it should, and the try is made again.
        for _ in 0..100 {
            let parked: Arc<Parked<u32>> = Arc::new(Parked::new(Duration::from_millis(1)));
            let got = Arc::new(Mutex::new(Vec::new()));
            let (p, g) = (parked.clone(), got.clone());
            let t = thread::spawn(move || p.serve_next(move |n| g.lock().unwrap().push(n)));
            while !parked.claim() {
                if t.is_finished() {
                    break;
                }
                thread::yield_now();
            }
            if t.is_finished() {
                t.join().unwrap();
                assert!(got.lock().unwrap().is_empty());
                continue;
            }
            thread::sleep(Duration::from_millis(20));
            parked.tx.send(7).unwrap();
            t.join().unwrap();
            assert_eq!(*got.lock().unwrap(), vec![7]);
            return;
        }
        panic!("the thread was never claimed while it waited");
    }
}
