//! The storage server's link to the name server: registration with the full file list,
//! heartbeats, and CHANGED/REMOVED reports from committers.
//!
//! After registration one I/O thread reads the connection. It waits in `poll(2)` on the
//! socket and on a wake-up socket pair. Over plain TCP a frame is then written by its sender
//! (a committer, or the `nm-link` thread's heartbeats) straight to the socket when nothing
//! waits before it: under one writer lock taken without waiting (`Door::direct`), with a
//! send that does not wait, so a commit's report usually leaves with no thread hand-off;
//! what the socket does not take (the tail) the I/O thread writes. Otherwise (the lock
//! busy, frames queued, a tail left), over TLS (a TLS stream cannot be split into a reading
//! and a writing half) and while the server registers, frames reach the I/O thread through
//! the session's outbox: a channel of frames plus a wake-up byte, so a frame leaves at once
//! and is never queued behind a wait for an ack. A wake-up byte is written only when none is
//! on its way already (the `armed` flag, cleared by the I/O thread before it drains the
//! channel); the I/O thread writes the tail and what it drains under the writer lock when
//! there is one, so frames never interleave and leave in the order they were sent. No
//! sender ever waits for the socket.
//!
//! From the moment a session's connection is up (so a report made while the server
//! registers waits in the channel and goes out after the registration), the [`NmLink`]
//! handle reaches its outbox: under the outbox lock the committer takes the next report id
//! and puts the answering end of its ack ([`AckTx`]) in the outbox's `pending` map, then it
//! sends the frame outside that lock. A failed write shuts the socket (under the writer
//! lock), which ends the session like any link failure. A committer reports as soon as its
//! change's journal entry is written (marked pending, [`NmLink::report_written`]; a direct
//! change once it is durable, [`NmLink::report`]) and waits for the ack once the change is
//! durable and in place ([`Report::wait`]). The I/O thread matches each `CHANGED_ACK` to
//! `pending` by id, under the outbox lock. Ids are never reused, not even by a later session,
//! so a late ack from an old link cannot answer a new report. The `nm-link` thread only
//! registers, sends heartbeats through the same outbox (heartbeats and reports may
//! interleave in any order: acks are matched by id and seq) and reconnects.
//!
//! No report waits forever. When a session ends, the `nm-link` thread takes the outbox away
//! and drops its `pending` map, both under the outbox lock. A committer that queued before
//! that is in `pending` and is answered, or its ack is dropped then and it hears at
//! once that its change is not yet confirmed; a committer that comes after finds no outbox and
//! hears the same at once. Either way it never waits for the rest of its deadline on a dead
//! link. A committer whose deadline passes takes its own entry out of `pending`.
//!
//! The bound: at most [`REPORT_QUEUE_CAP`] reports await their ack in `pending` at once (each
//! has a committer waiting); beyond it a committer is told at once that its change is not yet
//! confirmed (UNAVAILABLE). A removal has no committer waiting and is dropped when that many
//! frames already wait for the I/O thread; the re-registration carries every file's state, so
//! a dropped or unconfirmed report is reconciled then. On any failure the link logs
//! `ss_nm_link` and reconnects with backoff from 100 ms to 2 s, forever.
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
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use nix::sys::socket::MsgFlags;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Reports that may await their ack at once; beyond it committers get UNAVAILABLE at once.
/// Also the most frames that may wait for the I/O thread before a removal is dropped.
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

/// Committers waiting for their report's ack, by report id; the ack carries the sync-mode copy
/// count.
type Pending = HashMap<u64, AckTx>;

/// Where a committer's ack lands: answered once by the I/O thread, or closed when its entry
/// in `pending` is dropped unanswered (the session ended). A mutex and a condition variable
/// rather than a channel: a channel's receive spins and yields the CPU a few times before it
/// sleeps (about three `sched_yield` calls per commit on a busy server), for a wait that lasts
/// the name server's flush.
struct AckCell {
    state: Mutex<AckState>,
    changed: Condvar,
}

enum AckState {
    Waiting,
    Answered(Option<u32>),
    Closed,
}

/// The I/O thread's end of an ack; dropping it unanswered closes the ack.
struct AckTx(Arc<AckCell>);

/// The committer's end of an ack.
struct AckRx(Arc<AckCell>);

/// A new ack, both ends.
fn ack_pair() -> (AckTx, AckRx) {
    let cell = Arc::new(AckCell {
        state: Mutex::new(AckState::Waiting),
        changed: Condvar::new(),
    });
    (AckTx(cell.clone()), AckRx(cell))
}

impl AckTx {
    /// Answers the ack with the copy count it carried.
    fn send(self, copies: Option<u32>) {
        self.settle(AckState::Answered(copies));
    }

    fn settle(&self, to: AckState) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*st, AckState::Waiting) {
            *st = to;
            self.0.changed.notify_all();
        }
    }
}

impl Drop for AckTx {
    fn drop(&mut self) {
        self.settle(AckState::Closed);
    }
}

impl AckRx {
    /// The copy count, once answered; `None` if closed unanswered or `deadline` passes first.
    fn wait_until(&self, deadline: Instant) -> Option<Option<u32>> {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match *st {
                AckState::Answered(copies) => return Some(copies),
                AckState::Closed => return None,
                AckState::Waiting => {}
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self
                .0
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// How frames leave a session: over plain TCP once registered, written at once by the
/// sender when the socket takes them without waiting ([`Door::direct`]); otherwise through a
/// channel the I/O thread drains and a wake-up it polls.
#[derive(Clone)]
struct Door {
    out: Sender<Message>,
    /// The write end of the wake-up socket pair (non-blocking).
    wake: Arc<UnixStream>,
    /// Set when a wake-up byte is written; the I/O thread clears it before it drains `out`.
    armed: Arc<AtomicBool>,
    /// Plain TCP, once the registration is answered: the connection's socket, written under
    /// this lock by senders and by the I/O thread alike, so no two frames interleave. `None`
    /// before, and always over TLS.
    direct: Arc<Mutex<Option<Direct>>>,
}

/// The socket senders write to directly, and what of a frame is still to be written.
struct Direct {
    stream: TcpStream,
    /// The rest of a frame a sender could not write without waiting: the I/O thread writes
    /// it before anything else, and until then every frame goes through the channel.
    tail: Vec<u8>,
}

impl Door {
    /// Sends `msg`. When the link writes directly and nothing waits before it (no frame in
    /// the channel, no tail, the lock free), the sender writes it without waiting
    /// (`MSG_DONTWAIT`): what the socket does not take becomes the tail, which the I/O thread
    /// writes. Otherwise `msg` is queued for the I/O thread, which is woken. So a sender never
    /// waits for the socket (a committer holds its file's lock and the journal's gate), and
    /// frames leave in the order they were sent. Fails once the link is over.
    fn send(&self, msg: Message) -> Result<(), WireError> {
        if let Some(sent) = self.send_direct(&msg) {
            return sent;
        }
        self.out
            .send(msg)
            .map_err(|_| err::unavailable("name server link: the I/O thread stopped"))?;
        self.wake_io();
        Ok(())
    }

    /// The direct write of [`Door::send`]; `None` when `msg` must be queued instead.
    fn send_direct(&self, msg: &Message) -> Option<Result<(), WireError>> {
        let mut direct = self.direct.try_lock().ok()?;
        let d = direct
            .as_mut()
            .filter(|d| d.tail.is_empty() && self.out.is_empty())?;
        let bytes = crate::protocol::frame::encode(msg, &[]);
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let n = match nix::sys::socket::send(d.stream.as_raw_fd(), &bytes, flags) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                let _ = d.stream.shutdown(Shutdown::Both);
                return Some(Err(err::unavailable(format!(
                    "name server link: write failed: {e}"
                ))));
            }
        };
        if n < bytes.len() {
            d.tail = bytes[n..].to_vec();
            drop(direct);
            self.wake_io();
        }
        Some(Ok(()))
    }

    /// Wakes the I/O thread to write a tail and drain the channel.
    fn wake_io(&self) {
        // While `armed` is set a byte is on its way and the I/O thread has yet to clear the
        // flag and drain `out`: another byte is not needed. A full wake-up socket also has a
        // byte waiting, so a failed write changes nothing.
        if !self.armed.swap(true, Ordering::SeqCst) {
            let _ = (&*self.wake).write(&[1]);
        }
    }
}

/// What a session lends committers, from the moment its connection is up.
struct Outbox {
    door: Door,
    pending: Pending,
}

/// The current session's outbox, if a session's connection is up, and the report ids.
struct Slot {
    outbox: Option<Outbox>,
    /// The last report id given. Never reset: an ack read late off an old session's link
    /// cannot match a report of a later session.
    last_id: u64,
}

/// Shared by the handle (committers), the `nm-link` thread and the I/O thread.
type OutboxSlot = Arc<Mutex<Slot>>;

/// The handle committers use; cheap to share.
pub struct NmLink {
    slot: OutboxSlot,
    /// Most reports awaiting their ack at once ([`REPORT_QUEUE_CAP`]).
    cap: usize,
    /// Set when the handle is dropped: the link thread then stops.
    closed: Arc<AtomicBool>,
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

impl Drop for NmLink {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

impl NmLink {
    /// Starts the link thread. It stops when `stop` is set (or the handle is dropped).
    pub fn start(cfg: LinkConfig, store: Arc<Store>, stop: Arc<AtomicBool>) -> NmLink {
        NmLink::start_capped(cfg, store, stop, REPORT_QUEUE_CAP)
    }

    /// [`NmLink::start`] with at most `cap` reports awaiting their ack at once.
    fn start_capped(
        cfg: LinkConfig,
        store: Arc<Store>,
        stop: Arc<AtomicBool>,
        cap: usize,
    ) -> NmLink {
        let slot: OutboxSlot = Arc::new(Mutex::new(Slot {
            outbox: None,
            last_id: 0,
        }));
        let closed = Arc::new(AtomicBool::new(false));
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
        let halt = Halt {
            stop,
            closed: closed.clone(),
        };
        let s2 = slot.clone();
        let spawned = thread::Builder::new()
            .name("nm-link".into())
            .spawn(move || link_loop(cfg, store, s2, halt, flags));
        if let Err(e) = spawned {
            log::error!(target: ev::SS_NM_LINK, "cannot start the name server link: {e}");
        }
        NmLink {
            slot,
            cap: cap.max(1),
            closed,
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
        self.report(state, staged, wait).wait(self)
    }

    /// Queues the report of a file's new state without waiting for its ack: a committer
    /// reports as soon as its change is durable and puts the change in place while the name
    /// server commits, then [`Report::wait`]s (see `server/client.rs`). The `wait` for the
    /// ack runs from now.
    pub fn report(&self, state: FileState, staged: Option<StagedRef>, wait: Duration) -> Report {
        self.post_report(state, staged, false, wait)
    }

    /// [`NmLink::report`] for a change whose journal entry is written but not yet flushed
    /// (`store::Made::Written`): the CHANGED says `pending`, and the name server records the
    /// version as unconfirmed until this server shows it holds it. The committer answers its
    /// client only once the entry is durable AND the ack came.
    pub fn report_written(&self, state: FileState, wait: Duration) -> Report {
        self.post_report(state, None, true, wait)
    }

    fn post_report(
        &self,
        state: FileState,
        staged: Option<StagedRef>,
        pending: bool,
        wait: Duration,
    ) -> Report {
        let deadline = Instant::now() + wait;
        let file = crate::names::display(&state.file);
        let (reply, ack) = ack_pair();
        let id = self.post(
            |id| Message::Changed {
                id,
                state,
                staged,
                pending,
            },
            Some(reply),
        );
        Report {
            id,
            ack,
            deadline,
            file,
        }
    }

    /// Reports that a file vanished from disk, without waiting.
    pub fn removed_nowait(&self, file: &str) {
        let file = file.to_string();
        let _ = self.post(|id| Message::Removed { id, file }, None);
    }

    /// Sends the report `frame(id)` on the registered session: under the outbox lock gives it
    /// the next id and, when a committer waits for the ack on `reply`, an entry in `pending`;
    /// then sends it outside that lock (the I/O thread takes that lock to match acks, and
    /// the ack may come back before the send returns). Returns the id, or `None` when no
    /// session is connected, the bound is reached (see the module docs) or the send failed.
    fn post(&self, frame: impl FnOnce(u64) -> Message, reply: Option<AckTx>) -> Option<u64> {
        let (id, door) = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            let slot = &mut *slot;
            let outbox = slot.outbox.as_mut()?;
            let full = match reply {
                Some(_) => outbox.pending.len() >= self.cap,
                None => outbox.door.out.len() >= self.cap,
            };
            if full {
                return None;
            }
            slot.last_id += 1;
            let id = slot.last_id;
            if let Some(reply) = reply {
                outbox.pending.insert(id, reply);
            }
            (id, outbox.door.clone())
        };
        if door.send(frame(id)).is_err() {
            self.forget(id);
            return None;
        }
        Some(id)
    }

    /// Takes report `id` out of `pending`: its committer no longer waits.
    fn forget(&self, id: u64) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outbox) = slot.outbox.as_mut() {
            outbox.pending.remove(&id);
        }
    }
}

/// A report queued by [`NmLink::report`], whose ack is still to be awaited.
#[must_use = "a report's ack says whether the name server recorded the change"]
pub struct Report {
    /// The report's id, or `None` when it could not be queued (no session, or the bound).
    id: Option<u64>,
    ack: AckRx,
    deadline: Instant,
    /// The file's name as messages show it.
    file: String,
}

impl Report {
    /// Waits until the report's deadline for the name server to make it durable. On failure
    /// the change stays on disk and is reconciled at re-registration. Returns the copy count
    /// the ack carried (sync mode with the backup down).
    pub fn wait(self, link: &NmLink) -> Result<Option<u32>, WireError> {
        let Report {
            id,
            ack,
            deadline,
            file,
        } = self;
        let copies = id.and_then(|id| match ack.wait_until(deadline) {
            Some(copies) => Some(copies),
            None => {
                // Out of time (or the session ended and dropped the entry already).
                link.forget(id);
                None
            }
        });
        let ss = &link.name;
        match copies {
            Some(Some(0)) => Err(err::unavailable(format!(
                "the name server refused the change of {file}: {ss} is no longer its pair's writer; the copy is set aside and replaced by the current one"
            ))),
            Some(copies) => Ok(copies),
            None => Err(err::unavailable(format!(
                "change saved on {ss} but not yet confirmed by the name server; it is reconciled when {ss} re-registers ({file})"
            ))),
        }
    }
}

/// What stops the link thread: the server stopping, or the handle dropped.
struct Halt {
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Halt {
    fn now(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst)
    }
}

/// What the link thread tells the handles about the current registration.
struct Flags {
    registered: Arc<AtomicBool>,
    backup: Arc<AtomicBool>,
    lease: Arc<Lease>,
    partner: Partnered,
}

fn link_loop(cfg: LinkConfig, store: Arc<Store>, slot: OutboxSlot, halt: Halt, flags: Flags) {
    let mut backoff_ms = BACKOFF_MIN_MS;
    // Failures in a row; only the first of a streak is logged at WARN, so a name server that
    // stays down does not flood the log.
    let mut failures = 0u64;
    while !halt.now() {
        let mut was_registered = false;
        let res = session(&cfg, &store, &slot, &halt, &flags, &mut was_registered);
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
        // Wait out the backoff. Reports meanwhile find no outbox and are answered at once.
        let until = Instant::now() + Duration::from_millis(backoff_ms);
        while !halt.now() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            thread::sleep(left.min(Duration::from_millis(STOP_POLL_MS)));
        }
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}

/// One connection's life: register, then heartbeats and reports until something fails.
fn session(
    cfg: &LinkConfig,
    store: &Store,
    slot: &OutboxSlot,
    halt: &Halt,
    flags: &Flags,
    was_registered: &mut bool,
) -> Result<(), WireError> {
    let io_timeout = Duration::from_millis(IO_TIMEOUT_MS);
    let mut conn = Connection::connect(&cfg.nm_addr, Duration::from_millis(2_000))
        .map_err(|e| err::unavailable(format!("connect to {}: {e}", cfg.nm_addr)))?;
    conn.set_timeout(Some(io_timeout)).map_err(io_err)?;
    // Committers reach the link from here on: a report made while this server registers
    // (after its file list was taken) waits in the outbox and goes out once the I/O thread
    // runs. The guard takes the outbox away on every way out of this function.
    let (wake_rx, wake_tx) = UnixStream::pair().map_err(io_err)?;
    wake_rx.set_nonblocking(true).map_err(io_err)?;
    wake_tx.set_nonblocking(true).map_err(io_err)?;
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Message>();
    let armed = Arc::new(AtomicBool::new(false));
    let direct = Arc::new(Mutex::new(None));
    let door = Door {
        out: out_tx,
        wake: Arc::new(wake_tx),
        armed: armed.clone(),
        direct: direct.clone(),
    };
    let _outbox = OutboxGuard::install(slot, door.clone());
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
    let sent: Sent = Arc::new(Mutex::new(VecDeque::new()));
    let (dead_tx, dead_rx) = bounded::<String>(1);
    let grants = Grants {
        slot: slot.clone(),
        sent: sent.clone(),
        lease: flags.lease.clone(),
        backup: flags.backup.clone(),
        epoch: store.epoch().clone(),
        partner: flags.partner.clone(),
    };
    // From here frames over plain TCP are written by their senders: a commit's report then
    // leaves without waking the I/O thread first (one thread hand-off fewer on its path).
    // Frames queued meanwhile go first: a sender finding the channel non-empty queues too.
    if !conn.is_tls() {
        *direct.lock().unwrap_or_else(|p| p.into_inner()) = Some(Direct {
            stream: conn.stream().try_clone().map_err(io_err)?,
            tail: Vec::new(),
        });
    }
    let io = LinkIo {
        out: out_rx,
        wake: wake_rx,
        armed,
        direct,
        read_timeout,
    };
    thread::Builder::new()
        .name("nm-link-io".into())
        .spawn(move || io.run(conn, grants, dead_tx))
        .map_err(io_err)?;

    store.epoch().store(epoch, Ordering::SeqCst);
    flags.backup.store(backup, Ordering::SeqCst);
    flags.lease.grant(!backup, register_sent, lease_ms);
    flags.registered.store(true, Ordering::SeqCst);
    *was_registered = true;
    log::info!(target: ev::SS_NM_LINK, nm = cfg.nm_addr.as_str(), epoch = epoch, files = files.len() as u64, backup = backup;
        "registered with the name server at {} (epoch {epoch}, {} files)", cfg.nm_addr, files.len());

    let result = (|| {
        let mut seq = 0u64;
        let mut next_hb = Instant::now();
        loop {
            if halt.now() {
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
                door.send(Message::Heartbeat { seq, writer, disk })?;
                next_hb = now + interval;
            }
            let wait = next_hb
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(STOP_POLL_MS));
            match dead_rx.recv_timeout(wait) {
                Ok(why) => return Err(err::unavailable(why)),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(err::unavailable("name server link: the I/O thread stopped"))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    })();
    drop(_outbox);
    let _ = stream.shutdown(Shutdown::Both);
    result
}

/// A session's outbox, installed in the slot while the session lives.
struct OutboxGuard<'a> {
    slot: &'a OutboxSlot,
}

impl<'a> OutboxGuard<'a> {
    /// Puts a new outbox sending through `door` in `slot`.
    fn install(slot: &'a OutboxSlot, door: Door) -> OutboxGuard<'a> {
        slot.lock().unwrap_or_else(|p| p.into_inner()).outbox = Some(Outbox {
            door,
            pending: HashMap::new(),
        });
        OutboxGuard { slot }
    }
}

impl Drop for OutboxGuard<'_> {
    fn drop(&mut self) {
        // The outbox goes first, so no report joins `pending` after this; then `pending` is
        // dropped, under the same lock, and every committer still waiting hears at once.
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).outbox = None;
    }
}

/// Heartbeat sequence numbers with their send times.
type Sent = Arc<Mutex<VecDeque<(u64, u64)>>>;

/// What the reader updates from acknowledgements.
struct Grants {
    slot: OutboxSlot,
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
    /// Cleared before `out` is drained (see [`Door::send`]).
    armed: Arc<AtomicBool>,
    /// The senders' writer ([`Door::direct`]): the I/O thread writes a tail and the frames
    /// queued through it, waiting for the socket as it must, under its lock.
    direct: Arc<Mutex<Option<Direct>>>,
    /// Silence from the name server after which the link is dead.
    read_timeout: Duration,
}

impl LinkIo {
    /// Sends what the link thread queues and takes acknowledgements off the link until it
    /// fails (or the link thread shuts the socket), then says why on `dead`.
    fn run(self, mut conn: Connection, g: Grants, dead: Sender<String>) {
        let why = self.serve(&mut conn, &g).err().unwrap_or_default();
        // The socket outlives this thread in the writer's clone: shut it, so the link is
        // over for every sender at once.
        let _ = conn.stream().shutdown(Shutdown::Both);
        let _ = dead.try_send(why);
    }

    fn serve(&self, conn: &mut Connection, g: &Grants) -> Result<(), String> {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let mut heard = Instant::now();
        loop {
            // Cleared before draining, so a frame queued after this writes a byte and wakes
            // the poll below. A swap, not a store: reading the flag makes every frame whose
            // sender skipped the byte (it found the flag set) visible to the drain.
            self.armed.swap(false, Ordering::SeqCst);
            {
                // Under the writer lock, so no sender writes between the tail and the frames
                // queued after it.
                let mut direct = self.direct.lock().unwrap_or_else(|p| p.into_inner());
                let failed = |e: io::Error| format!("link write failed: {e}");
                // A write that fails may have left part of a frame: the socket is shut before
                // the lock is let go, so no sender appends a frame to it.
                let write = |d: &mut Direct, bytes: &[u8]| {
                    d.stream.write_all(bytes).map_err(|e| {
                        let _ = d.stream.shutdown(Shutdown::Both);
                        failed(e)
                    })
                };
                if let Some(d) = direct.as_mut() {
                    let tail = std::mem::take(&mut d.tail);
                    write(d, &tail)?;
                }
                while let Ok(msg) = self.out.try_recv() {
                    match direct.as_mut() {
                        Some(d) => write(d, &crate::protocol::frame::encode(&msg, &[]))?,
                        None => conn.send(&msg, &[]).map_err(failed)?,
                    }
                }
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
                        .slot
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .outbox
                        .as_mut()
                        .and_then(|o| o.pending.remove(&id));
                    if let Some(r) = reply {
                        r.send(copies);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, Version};
    use std::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(10);

    /// A name server that registers the link, acks heartbeats and removals, and answers a
    /// CHANGED by the file's name: `ack-N` gets an ack with N copies, `hold` no answer,
    /// `stall` no answer and nothing read for 5 s, and `kill` closes the link. While `down` is set it closes new connections at once.
    struct FakeNm {
        addr: String,
        down: Arc<AtomicBool>,
        /// While set, REGISTERED waits (the registration is seen on `registered` first).
        hold_registered: Arc<AtomicBool>,
        /// The number of each connection that registered (from 1).
        registered: Receiver<usize>,
        /// Every CHANGED and REMOVED received: connection number, report id, file.
        reports: Receiver<(usize, u64, String)>,
    }

    fn fake_nm() -> FakeNm {
        fake_nm_with(None)
    }

    /// [`fake_nm`] whose connections have a receive buffer of `rcvbuf` bytes (so a stalled
    /// name server's buffers fill quickly).
    fn fake_nm_with(rcvbuf: Option<usize>) -> FakeNm {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        if let Some(n) = rcvbuf {
            nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::RcvBuf, &n).unwrap();
        }
        let addr = l.local_addr().unwrap().to_string();
        let (reg_tx, registered) = crossbeam_channel::unbounded();
        let (rep_tx, reports) = crossbeam_channel::unbounded();
        let down = Arc::new(AtomicBool::new(false));
        let down2 = down.clone();
        let hold_registered = Arc::new(AtomicBool::new(false));
        let hold = hold_registered.clone();
        thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(s) = s else { break };
                if down2.load(Ordering::SeqCst) {
                    continue;
                }
                let (reg_tx, rep_tx) = (reg_tx.clone(), rep_tx.clone());
                let hold = hold.clone();
                thread::spawn(move || {
                    let n = n + 1;
                    let mut c = Connection::new(s);
                    while let Ok(Some(f)) = c.recv() {
                        let reply = match f.msg {
                            Message::RegisterEnd {} => {
                                let _ = reg_tx.send(n);
                                while hold.load(Ordering::SeqCst) {
                                    thread::sleep(Duration::from_millis(5));
                                }
                                Some(Message::Registered {
                                    epoch: 7,
                                    heartbeat_interval_ms: 50,
                                    backup: false,
                                    lease_ms: 60_000,
                                })
                            }
                            Message::Heartbeat { seq, .. } => Some(Message::HeartbeatAck {
                                partner: None,
                                seq,
                                epoch: 0,
                                writer: true,
                                lease_ms: 60_000,
                            }),
                            Message::Changed { id, state, .. } => {
                                let _ = rep_tx.send((n, id, state.file.clone()));
                                match state.file.as_str() {
                                    "kill" => return,
                                    "hold" => None,
                                    // Stops reading the link for a while: its buffers fill.
                                    "stall" => {
                                        thread::sleep(Duration::from_secs(5));
                                        None
                                    }
                                    f => {
                                        let copies =
                                            f.strip_prefix("ack-").and_then(|c| c.parse().ok());
                                        Some(Message::ChangedAck { id, copies })
                                    }
                                }
                            }
                            Message::Removed { id, file } => {
                                let _ = rep_tx.send((n, id, file));
                                Some(Message::ChangedAck { id, copies: None })
                            }
                            _ => None,
                        };
                        if let Some(m) = reply {
                            if c.send(&m, &[]).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        FakeNm {
            addr,
            down,
            hold_registered,
            registered,
            reports,
        }
    }

    /// A link of server `ss1` to `nm_addr` with at most `cap` reports awaiting their ack.
    struct Link {
        link: NmLink,
        stop: Arc<AtomicBool>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Link {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn link(nm_addr: &str, cap: usize) -> Link {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), "ss1").unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = LinkConfig {
            nm_addr: nm_addr.to_string(),
            name: "ss1".into(),
            host: "127.0.0.1".into(),
            client_port: 1,
            backup_of: None,
            key: ClusterKey::from_bytes(b"test cluster key 0123456789"),
            heartbeat_interval_ms: 50,
        };
        let link = NmLink::start_capped(cfg, store, stop.clone(), cap);
        Link {
            link,
            stop,
            _dir: dir,
        }
    }

    /// Waits until `l` has registered (its outbox is in place).
    fn wait_registered(l: &NmLink) {
        let deadline = Instant::now() + WAIT;
        while !l.is_registered() {
            assert!(Instant::now() < deadline, "never registered");
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn state(file: &str) -> FileState {
        FileState {
            file: file.into(),
            version: Version {
                epoch: 7,
                counter: 1,
            },
            checksum: 0,
            size: 0,
            words: 0,
            chars: 0,
            modified_ms: 1,
            owner: None,
        }
    }

    /// Reports `file` with `wait`; the result and how long it took.
    fn report(
        l: &NmLink,
        file: &str,
        wait: Duration,
    ) -> (Result<Option<u32>, WireError>, Duration) {
        let t = Instant::now();
        let r = l.changed(state(file), wait);
        (r, t.elapsed())
    }

    fn assert_unconfirmed(r: Result<Option<u32>, WireError>) {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.msg.contains("not yet confirmed"), "{}", e.msg);
    }

    #[test]
    fn a_report_without_a_session_fails_at_once() {
        // A port with nobody listening: no session ever registers.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let l = link(&addr, REPORT_QUEUE_CAP);
        let (r, took) = report(&l.link, "ack-1", WAIT);
        assert_unconfirmed(r);
        assert!(took < Duration::from_secs(2), "took {took:?}");
        l.link.removed_nowait("gone");
    }

    #[test]
    fn a_report_made_while_the_server_registers_goes_out_after_it() {
        let nm = fake_nm();
        nm.hold_registered.store(true, Ordering::SeqCst);
        let l = Arc::new(link(&nm.addr, REPORT_QUEUE_CAP));
        // The file list has gone out; REGISTERED has not come back yet.
        assert_eq!(nm.registered.recv_timeout(WAIT).unwrap(), 1);
        assert!(!l.link.is_registered());
        l.link.removed_nowait("gone");
        let l2 = l.clone();
        let committer = thread::spawn(move || report(&l2.link, "ack-1", WAIT).0);
        let waiting = || {
            let slot = l.link.slot.lock().unwrap();
            slot.outbox.as_ref().map_or(0, |o| o.pending.len())
        };
        let deadline = Instant::now() + WAIT;
        while waiting() == 0 {
            assert!(
                Instant::now() < deadline,
                "the report never reached the outbox"
            );
            thread::sleep(Duration::from_millis(2));
        }
        assert!(!l.link.is_registered());
        nm.hold_registered.store(false, Ordering::SeqCst);
        assert_eq!(committer.join().unwrap().unwrap(), Some(1));
        let files: Vec<String> = nm.reports.iter().take(2).map(|(_, _, f)| f).collect();
        assert_eq!(files, ["gone", "ack-1"]);
    }

    #[test]
    fn each_ack_reaches_its_own_committer() {
        let nm = fake_nm();
        let l = Arc::new(link(&nm.addr, REPORT_QUEUE_CAP));
        wait_registered(&l.link);
        let committers: Vec<_> = (1..=16u32)
            .map(|n| {
                let l = l.clone();
                thread::spawn(move || report(&l.link, &format!("ack-{n}"), WAIT).0)
            })
            .collect();
        for (n, c) in (1..=16u32).zip(committers) {
            assert_eq!(c.join().unwrap().unwrap(), Some(n));
        }
        // An ack with no copies: the name server no longer takes this server's changes.
        let e = report(&l.link, "ack-0", WAIT).0.unwrap_err();
        assert!(e.msg.contains("no longer its pair's writer"), "{}", e.msg);
        l.link.removed_nowait("gone");
        let ids: Vec<u64> = nm.reports.iter().take(18).map(|(_, id, _)| id).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "ids given twice: {ids:?}");
    }

    #[test]
    fn committers_writing_their_reports_at_once_never_interleave_their_frames() {
        // Over plain TCP each committer writes its own frame (heartbeats go out meanwhile):
        // a frame cut by another's bytes would break the link and fail reports.
        let nm = fake_nm();
        let l = Arc::new(link(&nm.addr, REPORT_QUEUE_CAP));
        wait_registered(&l.link);
        let committers: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                thread::spawn(move || {
                    (0..200)
                        .map(|_| report(&l.link, "ack-2", WAIT).0)
                        .filter(|r| matches!(r, Ok(Some(2))))
                        .count()
                })
            })
            .collect();
        let acked: usize = committers.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(acked, 1600);
        assert_eq!(nm.registered.try_iter().count(), 1, "the link never broke");
    }

    #[test]
    fn a_name_server_that_stops_reading_never_makes_a_sender_wait_for_the_socket() {
        let nm = fake_nm_with(Some(4096));
        let l = Arc::new(link(&nm.addr, usize::MAX));
        wait_registered(&l.link);
        let short = Duration::from_millis(200);
        assert_unconfirmed(report(&l.link, "stall", short).0);
        // Far more than the socket buffers hold (about 12 MB; the send buffer may grow to
        // 4 MB): the writes the socket does not take wait in the channel for the I/O thread,
        // and no sender waits.
        let l2 = l.clone();
        let filler = thread::spawn(move || {
            let t = Instant::now();
            let long = "x".repeat(200);
            for n in 0..50_000 {
                l2.link.removed_nowait(&format!("{long}-{n:08}.txt"));
            }
            t.elapsed()
        });
        let took = filler.join().unwrap();
        assert!(took < Duration::from_secs(3), "removals waited {took:?}");
        // A committer hears at its own deadline that its report is not confirmed.
        let (r, took) = report(&l.link, "ack-1", short);
        assert_unconfirmed(r);
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn a_report_in_flight_when_the_link_dies_fails_promptly() {
        let nm = fake_nm();
        let l = Arc::new(link(&nm.addr, REPORT_QUEUE_CAP));
        wait_registered(&l.link);
        let l2 = l.clone();
        let held = thread::spawn(move || report(&l2.link, "hold", WAIT));
        let (conn, held_id, file) = nm.reports.recv_timeout(WAIT).unwrap();
        assert_eq!((conn, file.as_str()), (1, "hold"));
        // The name server closes the link on this one, and stays down: both reports are in
        // flight then, and no later session can answer them.
        nm.down.store(true, Ordering::SeqCst);
        let (r, took) = report(&l.link, "kill", WAIT);
        assert_unconfirmed(r);
        assert!(took < WAIT / 2, "took {took:?}");
        let (r, took) = held.join().unwrap();
        assert_unconfirmed(r);
        assert!(took < WAIT / 2, "the held report waited {took:?}");
        // Back up: the link registers again and reports flow on the new session, with new ids.
        nm.down.store(false, Ordering::SeqCst);
        assert_eq!(nm.registered.recv_timeout(WAIT).unwrap(), 1);
        assert_eq!(nm.registered.recv_timeout(WAIT).unwrap(), 2);
        wait_registered(&l.link);
        assert_eq!(report(&l.link, "ack-3", WAIT).0.unwrap(), Some(3));
        let (_, kill_id, _) = nm.reports.recv_timeout(WAIT).unwrap();
        let (conn, id, file) = nm.reports.recv_timeout(WAIT).unwrap();
        assert_eq!((conn, file.as_str()), (2, "ack-3"));
        assert!(id > held_id.max(kill_id), "id {id} given again");
    }

    #[test]
    fn reports_beyond_the_cap_are_refused_at_once() {
        let nm = fake_nm();
        let l = Arc::new(link(&nm.addr, 2));
        wait_registered(&l.link);
        let hold = Duration::from_secs(3);
        let held: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                thread::spawn(move || report(&l.link, "hold", hold))
            })
            .collect();
        for _ in 0..2 {
            assert_eq!(nm.reports.recv_timeout(WAIT).unwrap().2, "hold");
        }
        // Two reports await their ack: a third is refused without waiting or being sent.
        let (r, took) = report(&l.link, "ack-1", WAIT);
        assert_unconfirmed(r);
        assert!(took < hold / 2, "took {took:?}");
        for h in held {
            let (r, took) = h.join().unwrap();
            assert_unconfirmed(r);
            assert!(took >= hold, "a held report gave up after {took:?}");
        }
        // The held reports' committers gave up and took them out: there is room again.
        assert_eq!(report(&l.link, "ack-2", WAIT).0.unwrap(), Some(2));
        assert_eq!(nm.reports.recv_timeout(WAIT).unwrap().2, "ack-2");
    }

    #[test]
    fn an_ack_is_answered_once_closed_when_dropped_unanswered_and_waited_for_until_a_deadline() {
        let soon = || Instant::now() + Duration::from_millis(50);
        // Answered before or while the committer waits; a drop after the answer changes nothing.
        let (tx, rx) = ack_pair();
        tx.send(Some(1));
        assert_eq!(rx.wait_until(soon()), Some(Some(1)));
        let (tx, rx) = ack_pair();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send(None);
        });
        assert_eq!(rx.wait_until(Instant::now() + WAIT), Some(None));
        t.join().unwrap();
        // Dropped unanswered (the session ended): the committer hears at once.
        let (tx, rx) = ack_pair();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            drop(tx);
        });
        let start = Instant::now();
        assert_eq!(rx.wait_until(start + WAIT), None);
        assert!(start.elapsed() < WAIT / 2);
        t.join().unwrap();
        // Nobody answers: the wait ends at its deadline, not before.
        let (_tx, rx) = ack_pair();
        let start = Instant::now();
        assert_eq!(rx.wait_until(start + Duration::from_millis(30)), None);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
