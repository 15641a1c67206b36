//! The storage server's link to the name server: registration with the full file list,
//! heartbeats, and CHANGED/REMOVED reports from committers.
//!
//! After registration one I/O thread owns the connection: a TLS stream cannot be split into
//! a reading and a writing half, so the same thread writes and reads. It waits in `poll(2)` on
//! the socket and on a wake-up socket pair; the link thread hands it heartbeats and reports
//! through a channel and wakes it, so a frame leaves at once and is never queued behind a
//! wait for an ack. Committers talk to the link thread through a bounded channel; each report
//! carries its own reply channel, matched to the `CHANGED_ACK` by id. On any failure the link logs `ss_nm_link`, drops the waiting reports
//! (their committers are told at once; the re-registration carries every file's state anyway),
//! and reconnects with backoff from 100 ms to 2 s, forever.
//!
//! The link also holds this server's write lease. Each HEARTBEAT_ACK says whether the server
//! is its pair's writer, the pair's epoch, and the lease length; a writer may take changes
//! until (the moment it SENT the acknowledged heartbeat) + lease. The lease ends early when
//! an ack says `writer: false` or the link fails, so a primary cut off from the name server
//! stops taking changes on its own, at the latest one lease after its last acknowledged
//! heartbeat, which is before the name server lets the other member write.

use crate::auth::ClusterKey;
use crate::auth::RegisterClaim;
use crate::logging::ev;
use crate::protocol::frame::FILE_BATCH_MAX;
use crate::protocol::{
    err, Connection, DiskUsage, FileState, Message, Partner, StagedRef, WireError,
};
use crate::ss::store::Store;
use crossbeam_channel::{bounded, select, Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Reports that may wait for the link at once; beyond it committers get UNAVAILABLE.
pub const REPORT_QUEUE_CAP: usize = 1024;
/// How long connecting, registering and single writes may take.
const IO_TIMEOUT_MS: u64 = 30_000;
/// First and largest reconnect delay.
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 2_000;
/// How often the writer looks at the stop flag while idle.
const STOP_POLL_MS: u64 = 200;
/// Send times remembered for heartbeats not yet acknowledged (older ones cannot renew).
const SENT_HEARTBEATS_MAX: usize = 64;
/// How long a change waits for a lease (or epoch) the name server is about to grant: a
/// ticket can arrive a moment before the REGISTERED or the ack that makes this server the
/// writer is read off the link.
pub const LEASE_WAIT_MS: u64 = 1_000;
/// How often that wait looks again.
const LEASE_POLL_MS: u64 = 5;

/// A monotonic clock in milliseconds (since any fixed origin) that the lease counts on.
pub type MonoClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The write lease: whether the name server made this server its pair's writer, and until
/// when (monotonic, on the clock it was given) that holds without a renewal.
pub struct Lease {
    clock: MonoClock,
    /// Milliseconds on `clock` until which changes are accepted; 0: no lease.
    until_ms: AtomicU64,
    writer: AtomicBool,
    /// Set when the name server said `writer: false` and that was applied. Acks arrive in
    /// order on one connection, so no earlier grant can renew the lease after it; this, not
    /// a lease that merely ran out, is what the next heartbeat reports as stepped down.
    stepped_down: AtomicBool,
}

impl Lease {
    /// A lease on this process's monotonic clock (the storage server's).
    fn new() -> Lease {
        let base = Instant::now();
        Lease::with_clock(Arc::new(move || base.elapsed().as_millis() as u64))
    }

    /// A lease counting on `clock` (a simulation drives it with simulated time).
    pub fn with_clock(clock: MonoClock) -> Lease {
        Lease {
            clock,
            until_ms: AtomicU64::new(0),
            writer: AtomicBool::new(false),
            stepped_down: AtomicBool::new(false),
        }
    }

    /// The lease clock's time now.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Renews (or ends, with `writer` false) the lease from heartbeat send time `sent_ms`
    /// (on the lease's clock).
    pub fn grant(&self, writer: bool, sent_ms: u64, lease_ms: u64) {
        if writer && lease_ms > 0 {
            let until = sent_ms + lease_ms;
            self.until_ms.fetch_max(until, Ordering::SeqCst);
            self.writer.store(true, Ordering::SeqCst);
            self.stepped_down.store(false, Ordering::SeqCst);
        } else {
            self.end();
            self.stepped_down.store(true, Ordering::SeqCst);
        }
    }

    /// Ends the lease at once.
    pub fn end(&self) {
        self.writer.store(false, Ordering::SeqCst);
        self.until_ms.store(0, Ordering::SeqCst);
    }

    /// Whether a lease is held right now.
    pub fn live(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::SeqCst)
    }

    /// Whether the last answer applied said `writer: false` (what the next heartbeat
    /// reports).
    pub fn stepped_down(&self) -> bool {
        self.stepped_down.load(Ordering::SeqCst)
    }

    /// Until when (on the lease's clock) the lease holds; 0 when none is held.
    pub fn until_ms(&self) -> u64 {
        self.until_ms.load(Ordering::SeqCst)
    }
}

/// The rule a change is admitted by: server `ss` (told it is a backup or not) must hold a
/// live lease, and a ticket minted for an epoch must be for `epoch`, the one it stamps.
pub fn write_allowed(
    ss: &str,
    backup: bool,
    lease: &Lease,
    ticket_epoch: Option<u64>,
    epoch: u64,
) -> Result<(), WireError> {
    if backup {
        return Err(err::unauthorized(format!(
            "{ss} is a backup; writes go to its primary"
        )));
    }
    if !lease.live() {
        return Err(err::unavailable(format!(
            "{ss} holds no write lease from the name server right now (it may be cut off); try again"
        )));
    }
    match ticket_epoch {
        Some(e) if e != epoch => Err(err::unavailable(format!(
            "{ss} is on epoch {epoch}; the request was authorised for epoch {e}; try again"
        ))),
        _ => Ok(()),
    }
}

/// What the link needs to know about its server.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `host:port` of the name server.
    pub nm_addr: String,
    /// This server's name.
    pub name: String,
    /// Host clients connect to.
    pub host: String,
    /// The bound client port.
    pub client_port: u16,
    /// The primary this server backs up, if any.
    pub backup_of: Option<String>,
    /// The cluster key (for the registration proof).
    pub key: ClusterKey,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u64,
}

enum Report {
    Changed(FileState, Option<StagedRef>),
    Removed(String),
}

struct Queued {
    report: Report,
    reply: Option<Sender<Option<u32>>>,
}

/// Reports waiting for their ack, by id; the ack carries the sync-mode copy count.
type Pending = Arc<Mutex<HashMap<u64, Sender<Option<u32>>>>>;

/// The handle committers use; cheap to share.
pub struct NmLink {
    tx: Sender<Queued>,
    name: String,
    registered: Arc<AtomicBool>,
    /// Whether the name server said this server is not its pair's writer.
    backup: Arc<AtomicBool>,
    lease: Arc<Lease>,
    /// The pair's other member while this server writes and it is up (from heartbeat acks).
    partner: Partnered,
}

/// Where the partner is, as the latest heartbeat ack said.
type Partnered = Arc<Mutex<Option<Partner>>>;

impl NmLink {
    /// Starts the link thread. It stops when `stop` is set.
    pub fn start(cfg: LinkConfig, store: Arc<Store>, stop: Arc<AtomicBool>) -> NmLink {
        let (tx, rx) = bounded(REPORT_QUEUE_CAP);
        let registered = Arc::new(AtomicBool::new(false));
        let backup = Arc::new(AtomicBool::new(false));
        let lease = Arc::new(Lease::new());
        let partner: Partnered = Arc::new(Mutex::new(None));
        let name = cfg.name.clone();
        let flags = Flags {
            registered: registered.clone(),
            backup: backup.clone(),
            lease: lease.clone(),
            partner: partner.clone(),
        };
        let spawned = thread::Builder::new()
            .name("nm-link".into())
            .spawn(move || link_loop(cfg, store, rx, stop, flags));
        if let Err(e) = spawned {
            log::error!(target: ev::SS_NM_LINK, "cannot start the name server link: {e}");
        }
        NmLink {
            tx,
            name,
            registered,
            backup,
            lease,
            partner,
        }
    }

    /// The pair's other member, while this server is the writer and the name server last
    /// said that member is up.
    pub fn partner(&self) -> Option<Partner> {
        // Set only from an ack that made this server the writer, and cleared by the next ack
        // that did not and whenever the link is down.
        self.partner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this server may take a change minted for `ticket_epoch` now: it must be its
    /// pair's writer with a live lease, on that epoch (`epoch` is the one it stamps).
    pub fn check_write(
        &self,
        ticket_epoch: Option<u64>,
        epoch: &AtomicU64,
    ) -> Result<(), WireError> {
        let deadline = Instant::now() + Duration::from_millis(LEASE_WAIT_MS);
        loop {
            let r = self.check_write_now(ticket_epoch, epoch.load(Ordering::SeqCst));
            // Only a lease or epoch still to come is waited for; a ticket for an older epoch
            // never becomes good.
            let may_come = match &r {
                Ok(()) => false,
                Err(_) => !matches!(ticket_epoch, Some(e) if e < epoch.load(Ordering::SeqCst)),
            };
            if !may_come || Instant::now() >= deadline {
                return r;
            }
            thread::sleep(Duration::from_millis(LEASE_POLL_MS));
        }
    }

    fn check_write_now(&self, ticket_epoch: Option<u64>, epoch: u64) -> Result<(), WireError> {
        write_allowed(
            &self.name,
            self.is_backup(),
            &self.lease,
            ticket_epoch,
            epoch,
        )
    }

    /// Whether the name server said, at the last registration, that this server is a backup
    /// (it then refuses client writes).
    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::SeqCst)
    }

    /// Whether the link is registered right now.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
    }

    /// Reports a file's new state and waits up to `wait` for the name server to make it
    /// durable. On failure the change stays on disk and is reconciled at re-registration.
    /// Returns the copy count the ack carried (sync mode with the backup down).
    pub fn changed(&self, state: FileState, wait: Duration) -> Result<Option<u32>, WireError> {
        self.changed_staged(state, None, wait)
    }

    /// [`NmLink::changed`] for content also staged on the partner (see `server/staging.rs`).
    pub fn changed_staged(
        &self,
        state: FileState,
        staged: Option<StagedRef>,
        wait: Duration,
    ) -> Result<Option<u32>, WireError> {
        let deadline = Instant::now() + wait;
        let file = crate::names::display(&state.file);
        let (reply, ack) = bounded(1);
        let q = Queued {
            report: Report::Changed(state, staged),
            reply: Some(reply),
        };
        let copies = match self.tx.send_deadline(q, deadline) {
            Ok(()) => ack.recv_deadline(deadline).ok(),
            Err(_) => None,
        };
        if copies == Some(Some(0)) {
            let ss = &self.name;
            return Err(err::unavailable(format!(
                "the name server refused the change of {file}: {ss} is no longer its pair's writer; the copy is set aside and replaced by the current one"
            )));
        }
        if let Some(copies) = copies {
            Ok(copies)
        } else {
            let ss = &self.name;
            Err(err::unavailable(format!(
                "change saved on {ss} but not yet confirmed by the name server; it is reconciled when {ss} re-registers ({file})"
            )))
        }
    }

    /// Reports that a file vanished from disk, without waiting.
    pub fn removed_nowait(&self, file: &str) {
        let _ = self.tx.try_send(Queued {
            report: Report::Removed(file.to_string()),
            reply: None,
        });
    }
}

/// What the link thread tells the handles about the current registration.
struct Flags {
    registered: Arc<AtomicBool>,
    backup: Arc<AtomicBool>,
    lease: Arc<Lease>,
    partner: Partnered,
}

fn link_loop(
    cfg: LinkConfig,
    store: Arc<Store>,
    rx: Receiver<Queued>,
    stop: Arc<AtomicBool>,
    flags: Flags,
) {
    let mut backoff_ms = BACKOFF_MIN_MS;
    // Failures in a row; only the first of a streak is logged at WARN, so a name server that
    // stays down does not flood the log.
    let mut failures = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut was_registered = false;
        let res = session(&cfg, &store, &rx, &stop, &flags, &mut was_registered);
        flags.registered.store(false, Ordering::SeqCst);
        // Cut off from the name server: no more changes until it grants a lease again.
        flags.lease.end();
        *flags.partner.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if was_registered {
            backoff_ms = BACKOFF_MIN_MS;
            failures = 0;
        }
        match res {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                let level = if failures == 1 {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                log::log!(target: ev::SS_NM_LINK, level, nm = cfg.nm_addr.as_str(), retry_ms = backoff_ms, failures = failures;
                    "name server link down: {e}; retrying in {backoff_ms} ms");
            }
        }
        // Wait out the backoff, answering reports at once: they cannot be delivered now.
        let until = Instant::now() + Duration::from_millis(backoff_ms);
        while let Ok(q) = rx.recv_deadline(until) {
            drop(q);
        }
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}

/// One connection's life: register, then heartbeats and reports until something fails.
fn session(
    cfg: &LinkConfig,
    store: &Store,
    rx: &Receiver<Queued>,
    stop: &AtomicBool,
    flags: &Flags,
    was_registered: &mut bool,
) -> Result<(), WireError> {
    let io_timeout = Duration::from_millis(IO_TIMEOUT_MS);
    let mut conn = Connection::connect(&cfg.nm_addr, Duration::from_millis(2_000))
        .map_err(|e| err::unavailable(format!("connect to {}: {e}", cfg.nm_addr)))?;
    conn.set_timeout(Some(io_timeout)).map_err(io_err)?;
    let files = store.list()?;
    conn.send(
        &Message::Register {
            name: cfg.name.clone(),
            host: cfg.host.clone(),
            client_port: cfg.client_port,
            backup_of: cfg.backup_of.clone(),
            proof: cfg.key.proof(&RegisterClaim {
                name: &cfg.name,
                host: &cfg.host,
                client_port: cfg.client_port,
                backup_of: cfg.backup_of.as_deref(),
            }),
            file_count: files.len() as u64,
        },
        &[],
    )
    .map_err(io_err)?;
    for batch in files.chunks(FILE_BATCH_MAX) {
        conn.send(
            &Message::FileBatch {
                files: batch.to_vec(),
            },
            &[],
        )
        .map_err(io_err)?;
    }
    // A writer's first lease counts from here, before the name server could have granted it.
    let register_sent = flags.lease.now_ms();
    conn.send(&Message::RegisterEnd {}, &[]).map_err(io_err)?;
    let reply = conn
        .recv()?
        .ok_or_else(|| err::unavailable("name server closed the link during registration"))?;
    let (epoch, nm_interval_ms, backup, lease_ms) = match reply.msg.into_result()? {
        Message::Registered {
            epoch,
            heartbeat_interval_ms,
            backup,
            lease_ms,
        } => (epoch, heartbeat_interval_ms, backup, lease_ms),
        other => {
            return Err(err::invalid(format!(
                "unexpected {} to REGISTER",
                other.op_name()
            )))
        }
    };
    store.epoch().store(epoch, Ordering::SeqCst);
    flags.backup.store(backup, Ordering::SeqCst);
    flags.lease.grant(!backup, register_sent, lease_ms);
    flags.registered.store(true, Ordering::SeqCst);
    *was_registered = true;
    log::info!(target: ev::SS_NM_LINK, nm = cfg.nm_addr.as_str(), epoch = epoch, files = files.len() as u64, backup = backup;
        "registered with the name server at {} (epoch {epoch}, {} files)", cfg.nm_addr, files.len());

    // Heartbeat at the shorter of our own interval and the one the name server expects, so a
    // name server with a short timeout never declares a healthy server down.
    let interval_ms = match nm_interval_ms {
        0 => cfg.heartbeat_interval_ms,
        nm => cfg.heartbeat_interval_ms.min(nm),
    }
    .max(1);
    let interval = Duration::from_millis(interval_ms);
    let read_timeout = Duration::from_millis((interval_ms * 3).max(2_000));
    let stream = conn.stream().try_clone().map_err(io_err)?;
    stream
        .set_read_timeout(Some(read_timeout))
        .map_err(io_err)?;
    let (wake_rx, wake_tx) = UnixStream::pair().map_err(io_err)?;
    wake_rx.set_nonblocking(true).map_err(io_err)?;
    wake_tx.set_nonblocking(true).map_err(io_err)?;
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Message>();
    let send = |msg: Message| -> Result<(), WireError> {
        out_tx
            .send(msg)
            .map_err(|_| err::unavailable("name server link: the I/O thread stopped"))?;
        // A full wake-up pipe already has a wake-up waiting.
        let _ = (&wake_tx).write(&[1]);
        Ok(())
    };
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let sent: Sent = Arc::new(Mutex::new(VecDeque::new()));
    let (dead_tx, dead_rx) = bounded::<String>(1);
    let grants = Grants {
        pending: pending.clone(),
        sent: sent.clone(),
        lease: flags.lease.clone(),
        backup: flags.backup.clone(),
        epoch: store.epoch().clone(),
        partner: flags.partner.clone(),
    };
    let io = LinkIo {
        out: out_rx,
        wake: wake_rx,
        read_timeout,
    };
    thread::Builder::new()
        .name("nm-link-io".into())
        .spawn(move || io.run(conn, grants, dead_tx))
        .map_err(io_err)?;

    let result = (|| {
        let mut seq = 0u64;
        let mut next_id = 0u64;
        let mut next_hb = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_hb {
                seq += 1;
                {
                    // Recorded before sending, so the ack always finds its send time.
                    let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                    if sent.len() >= SENT_HEARTBEATS_MAX {
                        sent.pop_front();
                    }
                    sent.push_back((seq, flags.lease.now_ms()));
                }
                let writer = !flags.lease.stepped_down();
                let disk = crate::metrics::disk_free_used(store.content_dir())
                    .map(|(free, used)| DiskUsage { free, used });
                send(Message::Heartbeat { seq, writer, disk })?;
                next_hb = now + interval;
            }
            let wait = next_hb
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(STOP_POLL_MS));
            select! {
                recv(rx) -> q => {
                    let Ok(q) = q else { return Ok(()) };
                    next_id += 1;
                    if let Some(reply) = q.reply {
                        pending.lock().unwrap_or_else(|p| p.into_inner()).insert(next_id, reply);
                    }
                    let msg = match q.report {
                        Report::Changed(state, staged) => Message::Changed { id: next_id, state, staged },
                        Report::Removed(file) => Message::Removed { id: next_id, file },
                    };
                    send(msg)?;
                }
                recv(dead_rx) -> why => {
                    return Err(err::unavailable(why.unwrap_or_else(|_| "reader stopped".into())));
                }
                default(wait) => {}
            }
        }
    })();
    let _ = stream.shutdown(Shutdown::Both);
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    result
}

/// Heartbeat sequence numbers with their send times.
type Sent = Arc<Mutex<VecDeque<(u64, u64)>>>;

/// What the reader updates from acknowledgements.
struct Grants {
    pending: Pending,
    sent: Sent,
    lease: Arc<Lease>,
    backup: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
    partner: Partnered,
}

/// The I/O thread's inputs besides the connection.
struct LinkIo {
    /// Frames to send.
    out: Receiver<Message>,
    /// Readable when `out` got frames.
    wake: UnixStream,
    /// Silence from the name server after which the link is dead.
    read_timeout: Duration,
}

impl LinkIo {
    /// Sends what the link thread queues and takes acknowledgements off the link until it
    /// fails (or the link thread shuts the socket), then says why on `dead`.
    fn run(self, mut conn: Connection, g: Grants, dead: Sender<String>) {
        let why = self.serve(&mut conn, &g).err().unwrap_or_default();
        let _ = dead.try_send(why);
    }

    fn serve(&self, conn: &mut Connection, g: &Grants) -> Result<(), String> {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let mut heard = Instant::now();
        loop {
            while let Ok(msg) = self.out.try_recv() {
                conn.send(&msg, &[])
                    .map_err(|e| format!("link write failed: {e}"))?;
            }
            // Frames already received (buffered here or decrypted by TLS) are taken first:
            // the socket's readiness does not show them.
            while conn.has_buffered_input() {
                on_frame(conn.recv(), g)?;
                heard = Instant::now();
            }
            let left = self.read_timeout.saturating_sub(heard.elapsed());
            if left.is_zero() {
                return Err("link read failed: the name server sent nothing in time".into());
            }
            let (sock_ready, woken) = {
                let mut fds = [
                    PollFd::new(conn.stream().as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
                ];
                let ms = PollTimeout::try_from(left.as_millis().max(1) as u64)
                    .unwrap_or(PollTimeout::MAX);
                match nix::poll::poll(&mut fds, ms) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(format!("link poll failed: {e}")),
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if woken {
                let mut sink = [0u8; 256];
                while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
            }
            if sock_ready {
                on_frame(conn.recv(), g)?;
                heard = Instant::now();
            }
        }
    }
}

/// Applies one frame read off the link; `Err` says why the link is over.
fn on_frame(
    got: Result<Option<crate::protocol::Frame>, crate::protocol::frame::ConnError>,
    g: &Grants,
) -> Result<(), String> {
    {
        match got {
            Ok(Some(f)) => match f.msg {
                Message::ChangedAck { id, copies } => {
                    let reply = g
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(r) = reply {
                        let _ = r.send(copies);
                    }
                }
                Message::HeartbeatAck {
                    seq,
                    epoch,
                    writer,
                    lease_ms,
                    partner,
                } => {
                    let partner = partner.filter(|_| writer);
                    let mut known = g.partner.lock().unwrap_or_else(|p| p.into_inner());
                    if *known != partner {
                        match &partner {
                            Some(p) => {
                                log::info!(target: ev::SS_NM_LINK, partner = p.name.as_str(), addr = p.addr.as_str();
                                "partner {} is up at {}: large uploads are staged there as they arrive", p.name, p.addr)
                            }
                            None => log::info!(target: ev::SS_NM_LINK, partner = "";
                                "no partner to stage uploads on"),
                        }
                        *known = partner;
                    }
                    drop(known);
                    let sent_at = g
                        .sent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map(|(_, t)| *t);
                    if epoch > 0 {
                        // Set before the lease, so a new writer never stamps the old epoch.
                        g.epoch.fetch_max(epoch, Ordering::SeqCst);
                    }
                    g.backup.store(!writer, Ordering::SeqCst);
                    match sent_at {
                        Some(t) => g.lease.grant(writer, t, lease_ms),
                        None if !writer => g.lease.grant(false, g.lease.now_ms(), 0),
                        None => {}
                    }
                }
                Message::Err { code, msg } => {
                    return Err(format!("name server said {code}: {msg}"))
                }
                other => {
                    log::debug!(target: ev::SS_NM_LINK, "ignoring {} on the link", other.op_name())
                }
            },
            Ok(None) => return Err("name server closed the link".to_string()),
            Err(e) => return Err(format!("link read failed: {e}")),
        }
    }
    Ok(())
}

fn io_err(e: std::io::Error) -> WireError {
    err::unavailable(format!("name server link: {e}"))
}
