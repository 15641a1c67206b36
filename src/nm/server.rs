//! The name server's event loop: one mio `Poll`, one `Waker`, the core, and nothing blocking.
//!
//! The loop owns the core (`core`), a state machine with no I/O: it is handed requests, worker
//! results and the time, and returns effects (replies, store batches, worker jobs), so it is
//! tested directly. The loop never blocks: store commits run on the store thread (one redb
//! write transaction per batch of concurrent changes, see `store.rs`), calls to storage
//! servers and EXEC run on the worker pools (`worker.rs`), and both report back over crossbeam
//! channels plus the loop's `Waker`. It does no disk I/O and no blocking network I/O.
//!
//! Replies are ordered behind durability: every reply is tagged with the store sequence
//! number current when it was produced and leaves only once that sequence is committed, so no
//! client ever sees state a crash could take back. A job that needs its batch durable before
//! it runs (a MOVE's intent before SS_MOVE is sent: `Effect::DurableJob`) is held the same way.
//!
//! Due replication rows are indexed in memory (`core/jobtable.rs`): 100,000 rows owed to a down
//! backup leave the loop at about 0.95x its speed with none (`cargo test --release --lib
//! jobindex -- --ignored --nocapture`). Access times are written lazily (`core/access.rs`).
//!
//! No socket pattern may wedge or bloat the loop:
//!
//! * Accepting never loses its readiness event. When `accept` fails for want of descriptors
//!   (EMFILE/ENFILE), a spare descriptor kept for the purpose is closed, the pending
//!   connection is accepted, told `ERROR [LIMIT]` and closed, and the spare is reopened, until
//!   the queue is empty; if even that fails, accepting is retried on a timer (part of the
//!   loop's next deadline, never a busy loop). Each burst is logged once (`accept_fd_exhausted`).
//! * A connection idle past `--idle-timeout-s` is closed, as is one whose frame has not
//!   arrived whole within that time of its first byte. "Idle" means no bytes from the peer
//!   while no request of its own is being worked on. A registered storage server is never
//!   idle-dropped (its heartbeats and `--heartbeat-timeout-ms` judge it). A client's idle
//!   connection being closed costs it nothing: the client notices the close before its next
//!   command and reconnects transparently.
//! * Beyond `--max-connections` there are [`SERVER_RESERVE_SLOTS`] more slots that only a
//!   storage server may keep: a connection accepted into one must send REGISTER (proving the
//!   cluster key) as its first frame within [`RESERVE_FIRST_FRAME_MS`], or it is told
//!   `ERROR [LIMIT]` and closed. So idle or abusive clients cannot keep a storage server from
//!   registering and heartbeating.
//! * Each connection buffers up to [`FREE_INPUT_BYTES`] freely (any header, small bodies);
//!   a larger frame is read on only once the shared [`FRAME_BUDGET_BYTES`] budget grants its
//!   whole size, which comes back when the frame is decoded or the connection closes. A
//!   connection that cannot get budget is not read until it can (backpressure) and is
//!   dropped by its frame deadline if it never completes. Unfinished frames therefore hold at
//!   most `FRAME_BUDGET_BYTES + connections × FREE_INPUT_BYTES` (about 132 MiB at 1,024
//!   connections).

use super::core::{ConnId, Core, Effect, Job, StoreOp};
use super::store::{Batch, Committed, Store};
use super::transport::Transport;
use super::worker::JobResult;
use crate::limits;
use crate::logging::ev;
use crate::protocol::frame::{FrameBudget, FRAME_BUDGET_BYTES};
use crate::protocol::{decode, encode, err, frame, Message, WireError};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Input a connection may buffer without asking the frame budget: a largest header plus a
/// little, so requests without large bodies never wait for budget.
pub const FREE_INPUT_BYTES: usize = frame::MAX_HEADER_BYTES + 4 * 1024;
/// Slots beyond `--max-connections` kept for storage servers (see the module docs).
pub const SERVER_RESERVE_SLOTS: usize = 16;
/// How long a connection in a reserve slot has to send its REGISTER.
pub const RESERVE_FIRST_FRAME_MS: u64 = 5_000;
/// Default for `--idle-timeout-s`, in milliseconds.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Pause before accepting again when descriptors ran out and no spare could be used.
pub const ACCEPT_RETRY_MS: u64 = 50;
/// Longest pause between two sweeps for idle connections.
const MAX_SWEEP_EVERY_MS: u64 = 1_000;
/// An emptied input buffer above this capacity is given back: idle connections hold little.
const KEEP_INPUT_CAPACITY: usize = 16 * 1024;
/// Most output queued for one connection before it is dropped as stalled.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
/// Unsent reply bytes above which a connection's further requests wait.
pub const PAUSE_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// Batches waiting for room in the store channel before the loop stops reading new requests.
pub const MAX_BACKLOG_BATCHES: usize = 4096;
/// How long shutdown waits for in-flight jobs before giving up on them.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// How often the status snapshot is refreshed.
pub const SNAPSHOT_EVERY_MS: u64 = 1_000;

/// Asks a running loop to stop; cheap to clone and safe to use from a signal thread.
#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Shutdown {
    /// Requests a clean stop.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

struct Conn {
    stream: Transport,
    input: Vec<u8>,
    /// Replies waiting for their sequence number to become durable.
    held: VecDeque<(u64, Vec<u8>)>,
    /// Bytes in `held`.
    held_bytes: usize,
    output: Vec<u8>,
    written: usize,
    /// Close once everything released has been written.
    closing: bool,
    /// Reading stopped because the input buffer is full; resume when it drains.
    read_paused: bool,
    /// Last time bytes arrived (or a request of its own was being worked on).
    active_ms: u64,
    /// When the unfinished frame at the front of `input` began arriving.
    frame_started_ms: Option<u64>,
    /// Encoded size of the front frame when it exceeds [`FREE_INPUT_BYTES`] (0 otherwise or
    /// not yet known).
    want: usize,
    /// Bytes of the frame budget granted to the front frame (0 or `want`).
    granted: usize,
    /// Accepted into a storage-server reserve slot and not yet registered.
    reserve: bool,
    /// The client request being answered and when it arrived (for its duration metric).
    op_started: Option<(&'static str, Instant)>,
}

/// The channels and threads the loop talks to.
pub struct Links {
    /// Batches to the store thread.
    pub store_tx: Sender<Batch>,
    /// Commit reports from the store thread.
    pub store_rx: Receiver<Committed>,
    /// Jobs to the worker pool.
    pub jobs_tx: Sender<Job>,
    /// Replication jobs to the replication workers (`--queue-cap`).
    pub repl_tx: Sender<Job>,
    /// Results from the worker pool.
    pub results_rx: Receiver<JobResult>,
    /// The store thread, joined at shutdown so the last batch is flushed.
    pub store_thread: Option<std::thread::JoinHandle<()>>,
}

/// The event loop and everything it owns.
pub struct Server {
    poll: Poll,
    waker: Arc<Waker>,
    listener: Option<TcpListener>,
    core: Core,
    conns: HashMap<ConnId, Conn>,
    next_conn: usize,
    max_connections: usize,
    /// Connections in reserve slots (a subset of `conns`).
    reserve_conns: usize,
    idle_timeout_ms: u64,
    budget: Arc<FrameBudget>,
    /// A descriptor held only to be closed when accept runs out of them.
    spare_fd: Option<std::fs::File>,
    /// Connections refused for want of descriptors in the current burst (0: none).
    fd_refused: u64,
    /// When to try accepting again after running out of descriptors.
    accept_retry_ms: Option<u64>,
    assigned_seq: u64,
    committed_seq: u64,
    backlog: VecDeque<Batch>,
    /// Jobs that wait for the batch sequence they were produced with to be durable.
    held_jobs: VecDeque<(u64, Job)>,
    stop: Arc<AtomicBool>,
    snapshot: Option<Arc<Mutex<String>>>,
    links: Option<Links>,
    /// TLS for accepted connections (`None`: plain TCP).
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Errors that end the loop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A socket or poll failure.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The store could not commit; continuing would answer clients with non-durable state.
    #[error("store failed: {0}")]
    Store(String),
}

/// The core's time: monotonic ms since startup (leases and timeouts must not follow the
/// wall clock; see the core's `clock` module).
fn now_ms() -> u64 {
    super::core::mono_ms()
}

impl Server {
    /// A loop around a bound listener; `links` are attached with [`Server::attach`].
    pub fn new(
        listener: std::net::TcpListener,
        core: Core,
        max_connections: usize,
        snapshot: Option<Arc<Mutex<String>>>,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            poll,
            waker,
            listener: Some(listener),
            core,
            conns: HashMap::new(),
            next_conn: FIRST_CONN,
            max_connections,
            reserve_conns: 0,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            budget: FrameBudget::new(FRAME_BUDGET_BYTES),
            spare_fd: open_spare(),
            fd_refused: 0,
            accept_retry_ms: None,
            assigned_seq: 0,
            committed_seq: 0,
            backlog: VecDeque::new(),
            held_jobs: VecDeque::new(),
            stop: Arc::new(AtomicBool::new(false)),
            snapshot,
            links: None,
            tls: crate::tls::installed().and_then(|t| t.server_config()),
        })
    }

    /// Serves only TLS with `config` (`None`: plain TCP). By default the process's TLS
    /// settings apply ([`crate::tls::installed`]).
    pub fn set_tls(&mut self, config: Option<Arc<rustls::ServerConfig>>) {
        self.tls = config;
    }

    /// Sets how long a connection may idle (and a frame may take to arrive) before it is
    /// closed.
    pub fn set_idle_timeout_ms(&mut self, ms: u64) {
        self.idle_timeout_ms = ms.max(1);
    }

    /// The loop's waker, for threads reporting back.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// A handle that stops the loop cleanly.
    pub fn shutdown_handle(&self) -> Shutdown {
        Shutdown {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Connects the loop to the store thread and worker pool.
    pub fn attach(&mut self, links: Links) {
        self.links = Some(links);
    }

    /// Runs until shutdown is requested, then flushes the store.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        let mut next_snapshot_ms = 0u64;
        let mut stop_deadline: Option<u64> = None;
        let sweep_every = (self.idle_timeout_ms / 4).clamp(1, MAX_SWEEP_EVERY_MS);
        let mut next_sweep_ms = now_ms() + sweep_every;
        loop {
            let now = now_ms();
            if self.snapshot.is_some() && now >= next_snapshot_ms {
                self.publish_snapshot(now);
                next_snapshot_ms = now + SNAPSHOT_EVERY_MS;
            }
            if now >= next_sweep_ms {
                self.sweep_idle(now);
                next_sweep_ms = now + sweep_every;
            }
            if self.accept_retry_ms.is_some_and(|t| now >= t) {
                self.accept();
            }
            let snapshot_ms = self.snapshot.as_ref().map(|_| next_snapshot_ms);
            let deadline = [self.accept_retry_ms, snapshot_ms, stop_deadline]
                .into_iter()
                .flatten()
                .chain(self.core.next_deadline_ms())
                .fold(next_sweep_ms, u64::min);
            let timeout = Some(Duration::from_millis(deadline.saturating_sub(now_ms()) + 1));
            self.core.going_idle();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(t);
                        }
                        if event.is_writable() {
                            self.flush(t);
                        }
                    }
                }
            }
            self.drain_threads()?;
            self.core.tick(now_ms());
            self.pump_all();
            self.settle();

            if self.stop.load(Ordering::SeqCst) && stop_deadline.is_none() {
                log::info!(target: ev::SHUTDOWN, "shutting down: no new connections");
                self.core.flush_access_times();
                self.settle();
                if let Some(mut l) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                stop_deadline = Some(now_ms() + SHUTDOWN_GRACE_MS);
            }
            if let Some(d) = stop_deadline {
                let idle = self.core.jobs_in_flight() == 0
                    && self.backlog.is_empty()
                    && self.committed_seq >= self.assigned_seq;
                if idle || now_ms() >= d {
                    break;
                }
            }
        }
        self.finish()
    }

    /// Flushes the store and releases what can be released before returning.
    fn finish(mut self) -> Result<(), ServerError> {
        if let Some(mut links) = self.links.take() {
            while let Some(b) = self.backlog.pop_front() {
                if links.store_tx.send(b).is_err() {
                    break;
                }
            }
            let (tx, _) = crossbeam_channel::bounded(1);
            drop(std::mem::replace(&mut links.store_tx, tx));
            if let Some(h) = links.store_thread.take() {
                let _ = h.join();
            }
            for c in links.store_rx.try_iter() {
                if let Committed::Upto { seq, .. } = c {
                    self.committed_seq = self.committed_seq.max(seq);
                }
            }
        }
        self.release_all();
        log::info!(target: ev::SHUTDOWN, seq = self.committed_seq; "name server stopped; store flushed");
        Ok(())
    }

    fn publish_snapshot(&mut self, now: u64) {
        if let Some(s) = &self.snapshot {
            let json = crate::metrics::nm().publish(self.core.status_json(now));
            *s.lock().unwrap_or_else(|p| p.into_inner()) = json;
        }
    }

    /// Accepts until the queue is empty. Running out of descriptors never leaves a
    /// connection queued without a retry: see the module docs.
    fn accept(&mut self) {
        self.accept_retry_ms = None;
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if self.fd_refused > 0 && self.spare_fd.is_some() {
                        log::info!(target: ev::ACCEPT_FD_EXHAUSTED, server = "nm", refused = self.fd_refused;
                            "descriptors available again; {} connections were refused", self.fd_refused);
                        self.fd_refused = 0;
                    }
                    self.admit(stream, peer.ip());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if limits::is_fd_exhaustion(&e) => {
                    if self.fd_refused == 0 {
                        log::warn!(target: ev::ACCEPT_FD_EXHAUSTED, server = "nm", error = e.to_string();
                            "cannot accept: {e}; refusing connections until descriptors free up");
                    }
                    if !self.shed_one() {
                        self.accept_retry_ms = Some(now_ms() + ACCEPT_RETRY_MS);
                        return;
                    }
                }
                Err(e) => {
                    log::warn!(target: ev::ACCEPT_FD_EXHAUSTED, server = "nm", error = e.to_string();
                        "accept failed: {e}; retrying");
                    self.accept_retry_ms = Some(now_ms() + ACCEPT_RETRY_MS);
                    return;
                }
            }
        }
    }

    /// Out of descriptors: closes the spare to accept one pending connection, tells it why
    /// and closes it, then takes the spare back. False when no connection could be taken.
    fn shed_one(&mut self) -> bool {
        self.fd_refused += 1;
        if self.spare_fd.take().is_none() {
            self.spare_fd = open_spare();
            return false;
        }
        let accepted = self.listener.as_ref().map(|l| l.accept());
        let took = match accepted {
            Some(Ok((mut stream, _))) => {
                tell(
                    &mut stream,
                    err::limit("the name server is out of file descriptors; try again shortly"),
                );
                true
            }
            _ => false,
        };
        self.spare_fd = open_spare();
        took
    }

    /// Takes an accepted connection into a client slot, a storage-server reserve slot, or
    /// refuses it with LIMIT.
    fn admit(&mut self, mut stream: TcpStream, peer: std::net::IpAddr) {
        let origin = stream.local_addr().ok().map(|local| crate::addr::Origin {
            peer,
            local: local.ip(),
        });
        let normal = self.conns.len() - self.reserve_conns;
        let reserve = if normal < self.max_connections {
            false
        } else if self.reserve_conns < SERVER_RESERVE_SLOTS {
            true
        } else {
            tell(&mut stream, too_many(self.max_connections));
            return;
        };
        let _ = stream.set_nodelay(true);
        let id = self.next_conn;
        self.next_conn += 1;
        let mut stream = Transport::new(stream, self.tls.clone());
        if self
            .poll
            .registry()
            .register(
                stream.sock_mut(),
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return;
        }
        let now = now_ms();
        self.conns.insert(
            id,
            Conn {
                stream,
                input: Vec::new(),
                held: VecDeque::new(),
                held_bytes: 0,
                output: Vec::new(),
                written: 0,
                closing: false,
                read_paused: false,
                active_ms: now,
                frame_started_ms: None,
                want: 0,
                granted: 0,
                reserve,
                op_started: None,
            },
        );
        if reserve {
            self.reserve_conns += 1;
        }
        self.core.on_connect(id, now);
        if let Some(origin) = origin {
            self.core.on_peer_addr(id, origin);
        }
    }

    /// Closes connections idle past the timeout, or whose frame is overdue (module docs).
    fn sweep_idle(&mut self, now: u64) {
        let idle = self.idle_timeout_ms;
        let mut drop_idle = Vec::new();
        let mut drop_frame = Vec::new();
        let mut drop_reserve = Vec::new();
        for (&id, c) in self.conns.iter_mut() {
            if self.core.is_storage_server(id) {
                continue;
            }
            if self.core.is_busy(id) || !c.held.is_empty() {
                // Its own request is being worked on: that is not idling.
                c.active_ms = now;
                continue;
            }
            let limit = if c.reserve {
                idle.min(RESERVE_FIRST_FRAME_MS)
            } else {
                idle
            };
            if c.frame_started_ms
                .is_some_and(|t| now.saturating_sub(t) >= limit)
            {
                drop_frame.push(id);
            } else if now.saturating_sub(c.active_ms) >= limit {
                if c.reserve {
                    drop_reserve.push(id);
                } else {
                    drop_idle.push(id);
                }
            }
        }
        if drop_idle.is_empty() && drop_frame.is_empty() && drop_reserve.is_empty() {
            return;
        }
        log::info!(target: ev::CONN_DROPPED, idle = drop_idle.len() as u64,
            frame_deadline = drop_frame.len() as u64, reserve = drop_reserve.len() as u64, idle_ms = idle;
            "closed {} idle connections, {} with an overdue frame, {} unregistered in reserve slots",
            drop_idle.len(), drop_frame.len(), drop_reserve.len());
        let notices = [
            (
                drop_idle,
                err::timeout(format!("connection idle for {idle} ms; closed")),
            ),
            (
                drop_frame,
                err::timeout(format!(
                    "a frame did not arrive whole within {idle} ms; closed"
                )),
            ),
            (
                drop_reserve,
                err::limit("too many connections: only a storage server may use this slot"),
            ),
        ];
        for (ids, e) in notices {
            let bytes = encode(&Message::err(e), &[]);
            for id in ids {
                if let Some(c) = self.conns.get_mut(&id) {
                    // Best effort: the peer learns why, if its socket has room.
                    if c.written == c.output.len() {
                        let _ = c.stream.write(&bytes);
                    }
                }
                self.drop_conn(id);
            }
        }
    }

    /// Reads until WouldBlock or the input cap; EOF or an error closes the connection. The
    /// cap is [`FREE_INPUT_BYTES`], or the front frame's size once the budget granted it.
    fn read(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 64 * 1024];
        let now = now_ms();
        let alive = loop {
            let cap = if c.granted > 0 {
                c.granted
            } else {
                FREE_INPUT_BYTES
            };
            if c.input.len() >= cap {
                c.read_paused = true;
                if c.granted > 0 {
                    break true;
                }
                if c.want == 0 {
                    c.want = match frame::front_frame_size(&c.input) {
                        Ok(Some(total)) if total > c.input.len() => total,
                        // A whole frame or a bad header is buffered: decoding comes first.
                        _ => break true,
                    };
                }
                if !self.core.is_introduced(id) {
                    // Budget is for peers that proved who they are: a stranger holding it
                    // with half-sent frames would starve everyone's large frames.
                    let e = err::limit(format!(
                        "a frame of {} bytes before HELLO or REGISTER completed (at most {FREE_INPUT_BYTES})",
                        c.want
                    ));
                    tell(&mut c.stream, e);
                    break false;
                }
                if !self.budget.try_take(c.want) {
                    // Not read until budget frees: its bytes wait in the kernel, not here.
                    break true;
                }
                c.granted = c.want;
                c.input.reserve_exact(c.granted - c.input.len());
                continue;
            }
            if c.input.capacity() == 0 {
                c.input.reserve_exact(FREE_INPUT_BYTES);
            }
            let room = (cap - c.input.len()).min(chunk.len());
            match c.stream.read(&mut chunk[..room]) {
                Ok(0) => break false,
                Ok(n) => {
                    c.input.extend_from_slice(&chunk[..n]);
                    c.active_ms = now;
                    if c.frame_started_ms.is_none() {
                        c.frame_started_ms = Some(now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.read_paused = false;
                    break true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break false,
            }
        };
        if !alive {
            self.drop_conn(id);
        }
    }

    /// After a frame was taken off `c.input`: returns the front frame's budget and memory
    /// the buffer no longer needs, and restarts the frame clock for what remains.
    fn after_frame(budget: &FrameBudget, c: &mut Conn, now: u64) {
        budget.give(c.granted);
        c.granted = 0;
        c.want = 0;
        if c.input.is_empty() {
            c.frame_started_ms = None;
            if c.input.capacity() > KEEP_INPUT_CAPACITY {
                c.input = Vec::new();
            }
        } else {
            c.frame_started_ms = Some(now);
            if c.input.capacity() > 2 * FREE_INPUT_BYTES && c.input.len() <= FREE_INPUT_BYTES {
                c.input.shrink_to(FREE_INPUT_BYTES);
            }
        }
    }

    fn drop_conn(&mut self, id: ConnId) {
        if let Some(mut c) = self.conns.remove(&id) {
            self.budget.give(c.granted);
            if c.reserve {
                self.reserve_conns -= 1;
            }
            let _ = self.poll.registry().deregister(c.stream.sock_mut());
            self.core.on_close(id, now_ms());
        }
    }

    /// Feeds buffered frames to the core for every connection that is not waiting on a job.
    fn pump_all(&mut self) {
        if self.backlog.len() >= MAX_BACKLOG_BATCHES {
            // The store is behind: stop taking new requests until it catches up.
            return;
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.pump(id);
        }
        // Rows those requests made due go to the workers now, not at the next wake-up.
        self.core.pump_replication(now_ms());
    }

    fn pump(&mut self, id: ConnId) {
        loop {
            if self.core.is_busy(id) {
                return;
            }
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.closing {
                return;
            }
            if c.held_bytes + (c.output.len() - c.written) > PAUSE_OUTPUT_BYTES {
                // The peer is not reading its answers: stop producing more until it does.
                return;
            }
            match decode(&mut c.input) {
                Ok(Some(f)) => {
                    let now = now_ms();
                    Self::after_frame(&self.budget, c, now);
                    if c.reserve {
                        if !matches!(f.msg, Message::Register { .. }) {
                            // A reserve slot is for storage servers only.
                            let bytes = encode(&Message::err(too_many(self.max_connections)), &[]);
                            c.held_bytes += bytes.len();
                            c.held.push_back((self.assigned_seq, bytes));
                            c.closing = true;
                            return;
                        }
                        // Registering proves the cluster key (or is refused and closed);
                        // the slot then stays its own, idle rules of a server apply.
                        c.reserve = false;
                        self.reserve_conns -= 1;
                    }
                    c.op_started = crate::metrics::nm().request(&f.msg);
                    self.core.on_frame(id, f, now);
                }
                Ok(None) => {
                    if c.read_paused {
                        self.read(id);
                        if self
                            .conns
                            .get(&id)
                            .is_some_and(|c| c.read_paused || c.input.is_empty())
                        {
                            return;
                        }
                        continue;
                    }
                    return;
                }
                Err(e) => {
                    c.input.clear();
                    let we: WireError = e.into();
                    let seq = self.assigned_seq;
                    let bytes = encode(&Message::err(we), &[]);
                    c.held_bytes += bytes.len();
                    c.held.push_back((seq, bytes));
                    c.closing = true;
                    return;
                }
            }
        }
    }

    /// Collects commit reports and job results.
    fn drain_threads(&mut self) -> Result<(), ServerError> {
        let Some(links) = self.links.as_ref() else {
            return Ok(());
        };
        let reports: Vec<Committed> = links.store_rx.try_iter().collect();
        let results: Vec<JobResult> = links.results_rx.try_iter().collect();
        for r in reports {
            match r {
                Committed::Upto { seq, .. } => self.committed_seq = self.committed_seq.max(seq),
                Committed::Failed(msg) => {
                    log::error!(target: ev::NM_STORE_COMMIT, "store commit failed: {msg}");
                    return Err(ServerError::Store(msg));
                }
            }
        }
        let now = now_ms();
        for (id, out) in results {
            self.core.on_job_result(id, out, now);
        }
        Ok(())
    }

    /// Applies effects until none are left, ships the batch, releases durable replies.
    fn settle(&mut self) {
        loop {
            while self
                .held_jobs
                .front()
                .is_some_and(|(s, _)| *s <= self.committed_seq)
            {
                if let Some((_, job)) = self.held_jobs.pop_front() {
                    self.dispatch(job);
                }
            }
            let batch = self.core.take_batch();
            if !batch.is_empty() {
                self.ship(batch);
            }
            let effects = self.core.take_effects();
            let ready = self
                .held_jobs
                .front()
                .is_some_and(|(s, _)| *s <= self.committed_seq);
            if effects.is_empty() && !ready {
                break;
            }
            let mut busy_changed = false;
            for e in effects {
                match e {
                    Effect::Reply { conn, msg, body } => {
                        busy_changed = true;
                        if let Some(c) = self.conns.get_mut(&conn) {
                            crate::metrics::nm().answered(c.op_started.take());
                            let bytes = encode_bounded(&msg, &body);
                            c.held_bytes += bytes.len();
                            c.held.push_back((self.assigned_seq, bytes));
                        }
                    }
                    Effect::Close { conn } => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.closing = true;
                        }
                    }
                    Effect::Job(job) => self.dispatch(job),
                    Effect::DurableJob(job) => self.held_jobs.push_back((self.assigned_seq, job)),
                }
            }
            if busy_changed {
                self.pump_all();
            }
        }
        self.push_backlog();
        self.release_all();
    }

    fn ship(&mut self, ops: Vec<StoreOp>) {
        self.assigned_seq += 1;
        self.backlog.push_back(Batch {
            seq: self.assigned_seq,
            ops,
        });
        self.push_backlog();
    }

    fn push_backlog(&mut self) {
        let Some(links) = self.links.as_ref() else {
            // No store attached (tests of the loop alone): treat batches as durable.
            if let Some(b) = self.backlog.back() {
                self.committed_seq = b.seq;
            }
            self.backlog.clear();
            return;
        };
        while let Some(b) = self.backlog.pop_front() {
            match links.store_tx.try_send(b) {
                Ok(()) => {}
                Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                    self.backlog.push_front(b);
                    return;
                }
            }
        }
    }

    fn dispatch(&mut self, job: Job) {
        let id = job.id;
        let replicate = matches!(job.kind, super::core::JobKind::Replicate(_));
        let refused = match self.links.as_ref() {
            Some(l) if replicate => match l.repl_tx.try_send(job) {
                Ok(()) => None,
                // Backpressure: the job stays in the table and is dispatched again shortly.
                Err(_) => {
                    self.core.on_dispatch_full(id, now_ms());
                    None
                }
            },
            Some(l) => match l.jobs_tx.try_send(job) {
                Ok(()) => None,
                Err(TrySendError::Full(_)) => Some(err::limit(
                    "the name server is busy: job queue full, try again",
                )),
                Err(TrySendError::Disconnected(_)) => {
                    Some(err::unavailable("the name server is shutting down"))
                }
            },
            None => Some(err::internal("no worker pool")),
        };
        if let Some(e) = refused {
            self.core.on_job_result(id, Err(e), now_ms());
        }
    }

    fn release_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        let committed = self.committed_seq;
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                while c.held.front().is_some_and(|(s, _)| *s <= committed) {
                    if let Some((_, bytes)) = c.held.pop_front() {
                        c.held_bytes -= bytes.len();
                        c.output.extend_from_slice(&bytes);
                    }
                }
            }
            self.flush(id);
        }
    }

    /// Writes what is buffered until WouldBlock; closes a finished closing connection.
    fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match c.stream.flush_tls() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.drop_conn(id);
                return;
            }
        }
        while c.written < c.output.len() {
            match c.stream.write(&c.output[c.written..]) {
                Ok(0) => {
                    self.drop_conn(id);
                    return;
                }
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(id);
                    return;
                }
            }
        }
        if c.written == c.output.len() {
            c.output.clear();
            c.written = 0;
            // Under TLS the last records may still wait for the socket.
            if c.closing && c.held.is_empty() && !c.stream.has_pending_output() {
                self.drop_conn(id);
            }
        } else if c.output.len() - c.written > MAX_OUTPUT_BYTES {
            // A peer that stopped reading is not allowed to pin unbounded memory.
            self.drop_conn(id);
        }
    }
}

/// A descriptor to give up when accept runs out of them (`/dev/null`, opened read-only).
fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Encodes a reply; one whose header would exceed what a peer accepts becomes a LIMIT error,
/// so the peer gets a clear answer rather than a frame it must refuse.
fn encode_bounded(msg: &Message, body: &[u8]) -> Vec<u8> {
    let bytes = encode(msg, body);
    if bytes.len() - body.len() > frame::MAX_HEADER_BYTES {
        let e = err::limit(format!(
            "the answer to this request is larger than the {} byte frame limit",
            frame::MAX_HEADER_BYTES
        ));
        return encode(&Message::err(e), &[]);
    }
    bytes
}

/// Starts the store thread for `store`, returning its channels.
pub fn spawn_store(
    store: Store,
    waker: Arc<Waker>,
    cap: usize,
) -> io::Result<(
    Sender<Batch>,
    Receiver<Committed>,
    std::thread::JoinHandle<()>,
)> {
    let (btx, brx) = crossbeam_channel::bounded(cap);
    let (rtx, rrx) = crossbeam_channel::bounded(cap + 8);
    let h = std::thread::Builder::new()
        .name("nm-store".into())
        .spawn(move || {
            store.run(brx, rtx, || {
                let _ = waker.wake();
            })
        })?;
    Ok((btx, rrx, h))
}

/// The answer to a connection beyond the cap of `max` connections.
fn too_many(max: usize) -> WireError {
    err::limit(format!("too many connections (limit {max})"))
}

/// Tells a peer about to be closed why, best effort: one non-blocking write of an ERR frame
/// (if its socket has no room, it learns only that it was closed).
fn tell(stream: &mut impl Write, e: WireError) {
    let _ = stream.write(&encode(&Message::err(e), &[]));
}

/// Logs the bound address so tests and scripts can find the server, and the address peers
/// should use (`--advertise-host`): a wildcard bind is no address a peer can connect to.
pub fn log_listen(addr: std::net::SocketAddr, advertise: Option<&str>, started: Instant) {
    let ms = started.elapsed().as_millis() as u64;
    match advertise {
        Some(host) => {
            let reach = crate::addr::join(host, addr.port());
            log::info!(target: ev::NM_LISTEN, addr = addr.to_string(), advertise = reach.as_str(), ms = ms;
                "name server listening on {addr}; peers reach it at {reach}");
        }
        None if addr.ip().is_unspecified() => {
            log::info!(target: ev::NM_LISTEN, addr = addr.to_string(), ms = ms;
                "name server listening on {addr} (every interface); peers reach it at this machine's address (--nm-host), --advertise-host names it");
        }
        None => {
            log::info!(target: ev::NM_LISTEN, addr = addr.to_string(), ms = ms;
                "name server listening on {addr}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::auth::ClusterKey;
    use crate::nm::{start, Config};
    use crate::protocol::{
        AccessMode, Connection, ErrorCode, FileState, Message, Version, WireError,
    };
    use std::net::TcpListener;
    use std::time::Duration;

    fn state(file: &str, counter: u64, owner: Option<String>) -> FileState {
        FileState {
            file: file.into(),
            version: Version { epoch: 1, counter },
            checksum: 0,
            size: 0,
            words: 0,
            chars: 0,
            modified_ms: 1,
            owner,
        }
    }

    /// A storage server that answers the name server's requests from memory.
    fn fake_ss(script: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Each connection is served on its own thread, as a storage server does: the name
        // server may keep one open between calls while it opens another.
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut c = Connection::new(s.unwrap());
                std::thread::spawn(move || {
                    while let Ok(Some(f)) = c.recv() {
                        match f.msg {
                            Message::SsCreate { file, owner, .. } => {
                                let st = state(&file, 1, Some(owner));
                                c.send(&Message::FileStateReply { state: st }, &[]).unwrap();
                            }
                            Message::SsDelete { .. } => c.send(&Message::Done {}, &[]).unwrap(),
                            Message::Read { .. } => {
                                let ok = Message::ReadOk {
                                    size: script.len() as u64,
                                    version: Version::default(),
                                    checksum: 0,
                                };
                                c.send(&ok, &[]).unwrap();
                                c.send(&Message::Chunk {}, script).unwrap();
                                c.send(&Message::End {}, &[]).unwrap();
                            }
                            _ => c.send(&Message::Done {}, &[]).unwrap(),
                        }
                    }
                });
            }
        });
        port
    }

    fn client(addr: std::net::SocketAddr, user: &str) -> Connection {
        let mut c = Connection::connect(&addr.to_string(), Duration::from_secs(5)).unwrap();
        c.set_timeout(Some(Duration::from_secs(20))).unwrap();
        let key = crate::identity::UserKey::from_seed([user.len() as u8; 32]);
        crate::identity::handshake(&mut c, user, &key).unwrap();
        c
    }

    fn call(c: &mut Connection, m: Message) -> Result<Message, WireError> {
        c.call(&m, &[]).map(|f| f.msg)
    }

    #[test]
    fn end_to_end_with_a_fake_storage_server_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            port: 0,
            http_port: 0,
            data_dir: dir.path().join("nm"),
            cluster_key_file: dir.path().join("key"),
            heartbeat_interval_ms: 50,
            heartbeat_timeout_ms: 60_000,
            ..Config::default()
        };
        let ss_port = fake_ss(b"echo hi\n");
        let started = start(&cfg).unwrap();
        let addr = started.addr;
        let shutdown = started.shutdown.clone();
        let loop_thread = std::thread::spawn(move || started.server.run());

        let key = ClusterKey::load_or_create(&cfg.cluster_key_file).unwrap();
        let mut ss = Connection::connect(&addr.to_string(), Duration::from_secs(5)).unwrap();
        ss.set_timeout(Some(Duration::from_secs(20))).unwrap();
        let reg = Message::Register {
            name: "ss1".into(),
            host: "127.0.0.1".into(),
            client_port: ss_port,
            backup_of: None,
            proof: key.proof(&crate::auth::RegisterClaim {
                name: "ss1",
                host: "127.0.0.1",
                client_port: ss_port,
                backup_of: None,
            }),
            file_count: 1,
        };
        ss.send(&reg, &[]).unwrap();
        let files = vec![state("old.txt", 4, None)];
        ss.send(&Message::FileBatch { files }, &[]).unwrap();
        let r = call(&mut ss, Message::RegisterEnd {}).unwrap();
        assert!(matches!(r, Message::Registered { epoch: 1, .. }));
        let r = call(
            &mut ss,
            Message::Heartbeat {
                seq: 1,
                writer: false,
                disk: None,
            },
        )
        .unwrap();
        assert!(matches!(
            r,
            Message::HeartbeatAck {
                seq: 1,
                writer: true,
                ..
            }
        ));

        let mut alice = client(addr, "alice");
        assert_eq!(
            call(
                &mut alice,
                Message::Create {
                    file: "a.txt".into()
                }
            )
            .unwrap(),
            Message::Done {}
        );
        assert_eq!(
            call(
                &mut alice,
                Message::Create {
                    file: "s.sh".into()
                }
            )
            .unwrap(),
            Message::Done {}
        );
        let e = call(
            &mut alice,
            Message::Create {
                file: "a.txt".into(),
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        let r = call(
            &mut alice,
            Message::Locate {
                avoid: None,
                file: "a.txt".into(),
                mode: AccessMode::Write,
            },
        )
        .unwrap();
        let Message::Located {
            ss: name,
            addr: ss_addr,
            ticket,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!((name.as_str(), ticket.file.as_str()), ("ss1", "a.txt"));
        assert_eq!(ss_addr, format!("127.0.0.1:{ss_port}"));
        alice
            .send(
                &Message::Exec {
                    file: "s.sh".into(),
                },
                &[],
            )
            .unwrap();
        let f = alice.recv_some().unwrap();
        assert!(
            matches!(
                f.msg,
                Message::ExecOutput {
                    exit_code: Some(0),
                    ..
                }
            ),
            "{f:?}"
        );
        assert_eq!(f.body, b"hi\n");
        assert_eq!(
            call(
                &mut alice,
                Message::Delete {
                    file: "s.sh".into()
                }
            )
            .unwrap(),
            Message::Done {}
        );
        let mut bob = client(addr, "bob");
        let e = call(
            &mut bob,
            Message::Delete {
                file: "a.txt".into(),
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        let r = call(
            &mut alice,
            Message::AddAccess {
                file: "a.txt".into(),
                user: "bob".into(),
                write: false,
            },
        )
        .unwrap();
        assert_eq!(r, Message::AccessGranted { new_user: false });
        // A malformed frame gets an ERR and the connection closes; others are unaffected.
        let mut junk = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut junk, b"not json\n").unwrap();
        let mut junk = Connection::new(junk);
        let f = junk.recv_some().unwrap();
        assert!(matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Invalid,
                ..
            }
        ));
        assert!(junk.recv().unwrap().is_none());

        shutdown.trigger();
        loop_thread.join().unwrap().unwrap();

        // Everything durable survives a restart.
        let started = start(&cfg).unwrap();
        let addr = started.addr;
        let shutdown = started.shutdown.clone();
        let loop_thread = std::thread::spawn(move || started.server.run());
        let mut bob = client(addr, "bob");
        let Message::FileList { files, .. } = call(
            &mut bob,
            Message::View {
                all: true,
                long: false,
            },
        )
        .unwrap() else {
            panic!()
        };
        let names: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(names, vec!["a.txt", "old.txt"]);
        let Message::InfoReply { info } = call(
            &mut bob,
            Message::Info {
                file: "a.txt".into(),
            },
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(info.owner, "alice");
        assert_eq!(
            info.replicas[0].state, "down",
            "servers start down until they register"
        );
        assert_eq!(info.accessed_by.as_deref(), Some("alice"));
        let Message::Users { users, .. } = call(&mut bob, Message::ListUsers {}).unwrap() else {
            panic!()
        };
        assert_eq!(users, vec!["admin", "alice", "bob"]);
        shutdown.trigger();
        loop_thread.join().unwrap().unwrap();
    }

    type Disk =
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (FileState, Vec<u8>)>>>;

    /// A storage server that serves and installs replication transfers from memory, and
    /// reports every installed file on `installed`.
    fn repl_ss(disk: Disk, installed: crossbeam_channel::Sender<FileState>) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let disk = disk.clone();
                let installed = installed.clone();
                std::thread::spawn(move || {
                    let mut c = Connection::new(s.unwrap());
                    while let Ok(Some(f)) = c.recv() {
                        match f.msg {
                            Message::PeekFile { file, .. } => {
                                let state = disk.lock().unwrap().get(&file).map(|x| x.0.clone());
                                c.send(
                                    &Message::Held {
                                        state,
                                        blobs: vec![],
                                        checkpoints: vec![],
                                    },
                                    &[],
                                )
                                .unwrap();
                            }
                            Message::GetFileContent { file, .. } => {
                                let (state, bytes) = disk.lock().unwrap()[&file].clone();
                                let head = Message::FileContent {
                                    content_staged: false,
                                    state,
                                    undo: vec![],
                                    sent: vec![],
                                    checkpoints: vec![],
                                    sent_checkpoints: vec![],
                                };
                                c.send(&head, &[]).unwrap();
                                for piece in bytes.chunks(3) {
                                    c.send(&Message::Chunk {}, piece).unwrap();
                                }
                                c.send(&Message::End {}, &[]).unwrap();
                            }
                            Message::PutFileContent { file, state, .. } => {
                                let mut bytes = Vec::new();
                                loop {
                                    let f = c.recv_some().unwrap();
                                    match f.msg {
                                        Message::Chunk {} => bytes.extend_from_slice(&f.body),
                                        _ => break,
                                    }
                                }
                                disk.lock().unwrap().insert(file, (state.clone(), bytes));
                                c.send(
                                    &Message::FileStateReply {
                                        state: state.clone(),
                                    },
                                    &[],
                                )
                                .unwrap();
                                installed.send(state).unwrap();
                            }
                            Message::SsDelete { file, .. } => {
                                disk.lock().unwrap().remove(&file);
                                c.send(&Message::Done {}, &[]).unwrap();
                                installed.send(state(&file, 0, None)).unwrap();
                            }
                            // A batch's copies are answered one by one as they arrive, which
                            // is the order the worker reads the answers in after the END.
                            Message::PutBatch {} | Message::End {} => {}
                            _ => c.send(&Message::Done {}, &[]).unwrap(),
                        }
                    }
                });
            }
        });
        port
    }

    fn register_fake(
        addr: std::net::SocketAddr,
        key: &ClusterKey,
        name: &str,
        port: u16,
        files: Vec<FileState>,
    ) -> Connection {
        let mut ss = Connection::connect(&addr.to_string(), Duration::from_secs(5)).unwrap();
        ss.set_timeout(Some(Duration::from_secs(20))).unwrap();
        let reg = Message::Register {
            name: name.into(),
            host: "127.0.0.1".into(),
            client_port: port,
            backup_of: None,
            proof: key.proof(&crate::auth::RegisterClaim {
                name,
                host: "127.0.0.1",
                client_port: port,
                backup_of: None,
            }),
            file_count: files.len() as u64,
        };
        ss.send(&reg, &[]).unwrap();
        if !files.is_empty() {
            ss.send(&Message::FileBatch { files }, &[]).unwrap();
        }
        let r = call(&mut ss, Message::RegisterEnd {}).unwrap();
        assert!(matches!(r, Message::Registered { .. }), "{r:?}");
        ss
    }

    #[test]
    fn workers_relay_content_to_the_backup_and_jobs_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            port: 0,
            http_port: 0,
            data_dir: dir.path().join("nm"),
            cluster_key_file: dir.path().join("key"),
            heartbeat_interval_ms: 50,
            heartbeat_timeout_ms: 60_000,
            ..Config::default()
        };
        let key = ClusterKey::load_or_create(&cfg.cluster_key_file).unwrap();
        let primary: Disk = Default::default();
        let backup: Disk = Default::default();
        let a1 = state("a.txt", 1, Some("alice".into()));
        primary
            .lock()
            .unwrap()
            .insert("a.txt".into(), (a1.clone(), b"hello world".to_vec()));
        let (ptx, _prx) = crossbeam_channel::unbounded();
        let (btx, brx) = crossbeam_channel::unbounded();
        let p_port = repl_ss(primary.clone(), ptx);
        let b_port = repl_ss(backup.clone(), btx);

        let started = start(&cfg).unwrap();
        let addr = started.addr;
        let shutdown = started.shutdown.clone();
        let loop_thread = std::thread::spawn(move || started.server.run());
        let _p = register_fake(addr, &key, "ss1", p_port, vec![a1.clone()]);
        // The backup joins later and gets a full initial sync, streamed in pieces.
        let _b = register_fake(addr, &key, "ss1_backup", b_port, vec![]);
        let got = brx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(got.version, a1.version);
        assert_eq!(backup.lock().unwrap()["a.txt"].1, b"hello world");
        let mut alice = client(addr, "alice");
        let Message::StatusReply { pairs, .. } = call(&mut alice, Message::Status {}).unwrap()
        else {
            panic!()
        };
        assert_eq!(pairs[0].backup.as_deref(), Some("ss1_backup"));
        shutdown.trigger();
        loop_thread.join().unwrap().unwrap();
        drop(_b);
        drop(_p);

        // Restart without the backup; a change is owed to it durably; the backup returns.
        let started = start(&cfg).unwrap();
        let addr = started.addr;
        let shutdown = started.shutdown.clone();
        let loop_thread = std::thread::spawn(move || started.server.run());
        let a2 = state("a.txt", 2, Some("alice".into()));
        primary
            .lock()
            .unwrap()
            .insert("a.txt".into(), (a2.clone(), b"second".to_vec()));
        let mut p = register_fake(addr, &key, "ss1", p_port, vec![a1.clone()]);
        let r = call(
            &mut p,
            Message::Changed {
                staged: None,
                pending: false,
                id: 1,
                state: a2.clone(),
            },
        )
        .unwrap();
        assert_eq!(
            r,
            Message::ChangedAck {
                id: 1,
                copies: None
            }
        );
        let mut alice = client(addr, "alice");
        let Message::StatusReply {
            pairs, queue_depth, ..
        } = call(&mut alice, Message::Status {}).unwrap()
        else {
            panic!()
        };
        assert_eq!((pairs[0].state.as_str(), queue_depth), ("BACKUP_DOWN", 1));
        shutdown.trigger();
        loop_thread.join().unwrap().unwrap();
        drop(p);

        let started = start(&cfg).unwrap();
        let addr = started.addr;
        let shutdown = started.shutdown.clone();
        let loop_thread = std::thread::spawn(move || started.server.run());
        let _p = register_fake(addr, &key, "ss1", p_port, vec![a2.clone()]);
        let _b = register_fake(addr, &key, "ss1_backup", b_port, vec![a1.clone()]);
        let got = brx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(got.version, a2.version);
        assert_eq!(backup.lock().unwrap()["a.txt"].1, b"second");
        shutdown.trigger();
        loop_thread.join().unwrap().unwrap();
    }
}
