//! The name server's small calls to storage servers (`JobKind::SsCall` other than SS_MOVE),
//! on connections kept between calls.
//!
//! # Kept connections
//!
//! Opening a TCP connection per call costs both servers more CPU than a small call itself
//! (the storage server accepts it, hands it to a thread, sets its options and tears it down
//! after one answer). So the workers of a pool share [`KeptConns`]: per storage-server
//! address, at most [`MAX_KEPT_PER_SERVER`] connections that answered their last call, each
//! taken by one worker for one call and handed back after a whole answer.
//!
//! A kept connection holds one of the storage server's connection slots and a thread there,
//! so connections are kept only while calls to that server are frequent: a call's
//! connection is kept when another call to the server runs as it ends, or began within
//! [`BUSY_WINDOW_MS`] before; a lone call closes its connection as before. The one handed
//! back last is taken first, so those a burst opened and a calmer load does not need stay
//! idle, and one idle for [`KEPT_IDLE_MS`] is closed: by the next call's end, or by a
//! worker that waited that long for a job ([`KeptConns::sweep`]; workers wait so only while
//! any connection is kept, so an idle name server's workers sleep until a job comes).
//! Should every other worker have begun its wait before the connection was kept, and the
//! worker that kept it take a long job (EXEC), the connection stays until the next call's
//! end or the storage server's `--idle-timeout-s` closes it. A storage server may still
//! close a kept connection first (its `--idle-timeout-s`, a restart): before use each is
//! looked at without blocking (`protocol::kept`), and one found closed is dropped.
//!
//! # Which calls go on them, and the one repeat
//!
//! A close may also race with the request: the server closes just as it is sent, and the
//! call fails although the server never read it. A call made on a kept connection is
//! therefore sent once more, on a new connection and with a fresh ticket (each is single
//! use), when it failed before any byte of an answer arrived: the send failed, or the
//! connection ended or was reset with nothing of an answer read. A silence until the call
//! timeout, a partial or malformed answer, or any failure on a new connection is reported
//! as before, never repeated. Because the server may after all have acted on the first
//! request (it may have read it before closing), only calls whose repeat is safe go on kept
//! connections ([`repeatable`]); the others open their own connection per call, as before:
//!
//! * SS_CREATE: the storage server answers a repeat that finds the file exactly as that
//!   create made it (its first version, its owner, empty, untouched) with the file's state,
//!   as the first would have; anything else there stays EXISTS. The name server's create
//!   intent (`core::creates`) is written before the first send and settled by the answer,
//!   whichever send it came from.
//! * SS_DELETE: a repeat that finds the file gone answers NOT_FOUND, which the name server
//!   takes as the delete done (the record follows the copy); its intent (`core::deletes`)
//!   is durable before the first send and settled by the answer as before.
//! * SS_MKDIR: making folders that exist already succeeds.
//! * CHECK_FILES: reads only (a hand edit it finds is adopted once; a repeat finds it
//!   adopted).
//!
//! Not repeated, so never on a kept connection: SS_UNDO (a repeat would undo a second
//! change), SS_CHECKPOINT (a repeat is refused as an existing tag though the first made
//! it), SS_REVERT (a repeat makes one more version), and SS_MOVE, whose lost answer has its
//! own handling (`worker::run_move`). EXEC's fetch and replication open their own
//! connections too.

use super::{connect, fresh_ticket, Env};
use crate::auth::ClusterKey;
use crate::protocol::frame::{ConnError, Frame};
use crate::protocol::{kept, Connection, Message, WireError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most connections kept to one storage server (per worker pool): enough for the calls that
/// many concurrent clients' creates make at once, few beside a server's connection cap.
pub const MAX_KEPT_PER_SERVER: usize = 16;
/// A kept connection idle this long is closed (by the next call's end, or by an idle worker,
/// [`KeptConns::sweep`]) rather than reused.
pub const KEPT_IDLE_MS: u64 = 1_000;
/// A call's connection is kept only when calls to its server are frequent: another one runs
/// as it ends, or another one began at most this long before.
pub const BUSY_WINDOW_MS: u64 = 100;

/// Connections to storage servers kept between calls, shared by a pool's workers (module
/// docs).
pub struct KeptConns {
    by_addr: Mutex<HashMap<String, Server>>,
    /// [`KEPT_IDLE_MS`].
    idle: Duration,
    /// [`BUSY_WINDOW_MS`].
    busy_window: Duration,
}

/// The calls to one storage server, and the connections kept to it.
#[derive(Default)]
struct Server {
    /// Connections that answered their last call whole, and since when each is idle; the
    /// last one is taken first.
    idle: Vec<(Connection, Instant)>,
    /// Calls that may keep their connection running now.
    running: usize,
    /// When the last two such calls began, the latest first.
    began: [Option<Instant>; 2],
}

impl Server {
    /// Closes (by handing them to `closed`) the connections idle since before `now - idle`.
    fn sweep(&mut self, now: Instant, idle: Duration, closed: &mut Vec<(Connection, Instant)>) {
        // Oldest first: those past the limit are at the front.
        let old = self
            .idle
            .iter()
            .take_while(|(_, at)| now.duration_since(*at) >= idle)
            .count();
        closed.extend(self.idle.drain(..old));
    }

    /// Whether this entry says nothing any more: no connection, no call, none recent.
    fn unused(&self, now: Instant, busy_window: Duration) -> bool {
        self.idle.is_empty()
            && self.running == 0
            && self.began[0].is_none_or(|t| now.duration_since(t) >= busy_window)
    }
}

impl Default for KeptConns {
    fn default() -> KeptConns {
        KeptConns::new()
    }
}

impl KeptConns {
    /// An empty set.
    pub fn new() -> KeptConns {
        KeptConns::with_limits(
            Duration::from_millis(KEPT_IDLE_MS),
            Duration::from_millis(BUSY_WINDOW_MS),
        )
    }

    /// An empty set closing connections idle for `idle`, and keeping one only when another
    /// call began within `busy_window` (or runs).
    fn with_limits(idle: Duration, busy_window: Duration) -> KeptConns {
        KeptConns {
            by_addr: Mutex::default(),
            idle,
            busy_window,
        }
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Server>> {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a call to `addr` beginning now; returns when it began, for [`KeptConns::end`].
    fn begin(&self, addr: &str) -> Instant {
        let now = Instant::now();
        let mut map = self.servers();
        let s = map.entry(addr.to_string()).or_default();
        s.running += 1;
        s.began = [Some(now), s.began[0]];
        now
    }

    /// A kept connection to `addr` that is still open and holds nothing unread, if any; those
    /// found closed, or idle too long, are closed on the way.
    fn take(&self, addr: &str) -> Option<Connection> {
        loop {
            let (mut c, at) = self.servers().get_mut(addr)?.idle.pop()?;
            // Looked at outside the lock: a system call per connection.
            if at.elapsed() < self.idle && kept::reusable(&mut c) {
                return Some(c);
            }
        }
    }

    /// The call to `addr` that began at `began` ended, leaving `c` when it answered whole:
    /// `c` is kept for the next call when calls to `addr` are frequent ([`BUSY_WINDOW_MS`])
    /// and fewer than [`MAX_KEPT_PER_SERVER`] are kept, else closed. A lone call keeps none,
    /// so a server near its connection cap does not lose a slot to a connection the name
    /// server may not use again soon. Connections idle too long are closed too.
    fn end(&self, addr: &str, began: Instant, c: Option<Connection>) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut map = self.servers();
            if let Some(s) = map.get_mut(addr) {
                s.running = s.running.saturating_sub(1);
                let other = if s.began[0] == Some(began) {
                    s.began[1]
                } else {
                    s.began[0]
                };
                let busy = s.running > 0
                    || other.is_some_and(|t| now.saturating_duration_since(t) < self.busy_window);
                if let Some(c) = c {
                    if busy && s.idle.len() < MAX_KEPT_PER_SERVER {
                        s.idle.push((c, now));
                    } else {
                        closed.push((c, now));
                    }
                }
            }
            for s in map.values_mut() {
                s.sweep(now, self.idle, &mut closed);
            }
            map.retain(|_, s| !s.unused(now, self.busy_window));
        }
        // Closed outside the lock.
        drop(closed);
    }

    /// Closes the connections idle for [`KEPT_IDLE_MS`] or more: a worker with no job calls
    /// it, so a server no longer called holds none for long.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut map = self.servers();
            if map.is_empty() {
                return;
            }
            for s in map.values_mut() {
                s.sweep(now, self.idle, &mut closed);
            }
            map.retain(|_, s| !s.unused(now, self.busy_window));
        }
        drop(closed);
    }

    /// Whether any connection is kept (to any server).
    pub fn holds_any(&self) -> bool {
        self.servers().values().any(|s| !s.idle.is_empty())
    }

    /// How many connections are kept to `addr`.
    #[cfg(test)]
    fn count(&self, addr: &str) -> usize {
        self.servers().get(addr).map_or(0, |s| s.idle.len())
    }
}

/// Whether `msg` is a call whose repeat is safe, and so may go on a kept connection (module
/// docs).
pub fn repeatable(msg: &Message) -> bool {
    matches!(
        msg,
        Message::SsCreate { .. }
            | Message::SsDelete { .. }
            | Message::SsMkdir { .. }
            | Message::CheckFiles { .. }
    )
}

/// How one try of a call on a connection ended when it brought no answer.
enum NoAnswer {
    /// It failed before any byte of an answer arrived, and not by a timeout: on a kept
    /// connection, the server closed it as the request went out, and the call may be made
    /// once more.
    Unanswered(ConnError),
    /// Anything else: the call fails with this.
    Failed(ConnError),
}

/// Makes call `msg` to the storage server at `addr` and returns its answer (an ERR answer
/// becomes `Err`): on a kept connection when the call may be repeated and one is kept, else
/// on a new one (module docs).
pub fn call(
    addr: &str,
    msg: &Message,
    conns: &KeptConns,
    key: &ClusterKey,
    env: &Env,
) -> Result<Frame, WireError> {
    if !repeatable(msg) {
        let mut c = connect(addr)?;
        return match exchange(&mut c, msg) {
            Ok(f) => answer(f),
            Err(NoAnswer::Unanswered(e) | NoAnswer::Failed(e)) => Err(e.into()),
        };
    }
    let began = conns.begin(addr);
    let (r, c) = call_kept(addr, msg, conns, key, env);
    conns.end(addr, began, c);
    r
}

/// [`call`] of a [`repeatable`] `msg`; also returns the connection when it may be kept.
fn call_kept(
    addr: &str,
    msg: &Message,
    conns: &KeptConns,
    key: &ClusterKey,
    env: &Env,
) -> (Result<Frame, WireError>, Option<Connection>) {
    let fresh;
    let mut msg = msg;
    if let Some(mut c) = conns.take(addr) {
        match exchange(&mut c, msg) {
            Ok(f) => return kept_after(f, c),
            Err(NoAnswer::Unanswered(e)) => {
                log::debug!(
                    "the kept connection to {addr} closed before answering {} ({e}); sending it again on a new one",
                    msg.op_name()
                );
            }
            Err(NoAnswer::Failed(e)) => return (Err(e.into()), None),
        }
        fresh = with_fresh_ticket(msg, key, env);
        msg = &fresh;
    }
    let mut c = match connect(addr) {
        Ok(c) => c,
        Err(e) => return (Err(e), None),
    };
    match exchange(&mut c, msg) {
        Ok(f) => kept_after(f, c),
        Err(NoAnswer::Unanswered(e) | NoAnswer::Failed(e)) => (Err(e.into()), None),
    }
}

/// A call's outcome from answer `f` on `c`, with `c` when it may be kept: an ERR answer
/// becomes `Err`, and its connection is not kept (the server may close it after some
/// refusals).
fn kept_after(f: Frame, c: Connection) -> (Result<Frame, WireError>, Option<Connection>) {
    match answer(f) {
        Ok(f) => (Ok(f), Some(c)),
        Err(e) => (Err(e), None),
    }
}

/// The answer `f`; an ERR becomes `Err`.
fn answer(f: Frame) -> Result<Frame, WireError> {
    let msg = f.msg.into_result()?;
    Ok(Frame { msg, body: f.body })
}

/// Sends `msg` on `c` and reads the first frame of the answer.
fn exchange(c: &mut Connection, msg: &Message) -> Result<Frame, NoAnswer> {
    if let Err(e) = c.send(msg, &[]) {
        let e = ConnError::Io(e);
        return Err(if e.timed_out() {
            NoAnswer::Failed(e)
        } else {
            NoAnswer::Unanswered(e)
        });
    }
    match c.recv() {
        Ok(Some(f)) => Ok(f),
        // A clean end of stream between frames: nothing of an answer was read.
        Ok(None) => Err(NoAnswer::Unanswered(ConnError::Closed)),
        Err(e @ ConnError::Io(_)) if !e.timed_out() && !c.has_buffered_input() => {
            Err(NoAnswer::Unanswered(e))
        }
        Err(e) => Err(NoAnswer::Failed(e)),
    }
}

/// `msg` (a [`repeatable`] call) with a fresh ticket for the same grant: the first may have
/// been spent by a server that read the request before it closed.
fn with_fresh_ticket(msg: &Message, key: &ClusterKey, env: &Env) -> Message {
    let mut again = msg.clone();
    match &mut again {
        Message::SsCreate { ticket, .. }
        | Message::SsDelete { ticket, .. }
        | Message::SsMkdir { ticket, .. }
        | Message::CheckFiles { ticket, .. } => *ticket = fresh_ticket(ticket, key, env),
        _ => {}
    }
    again
}

#[cfg(test)]
mod tests;
