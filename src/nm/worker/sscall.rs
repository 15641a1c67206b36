//! The name server's small calls to storage servers (`JobKind::SsCall` other than SS_MOVE),
//! on connections kept between calls.
//!
//! # Kept connections
//!
//! Opening a TCP connection per call costs both servers more CPU than a small call itself
//! (the storage server accepts it, hands it to a thread, sets its options and tears it down
//! after one answer). So the workers of a pool share [`KeptConns`]: per storage-server
//! address, at most [`MAX_KEPT_PER_SERVER`] connections that answered their last call, each
//! taken by one worker for one call and handed back after a whole answer. The one handed
//! back last is taken first, so those a burst opened and a calmer load does not need stay
//! idle; one idle for [`KEPT_IDLE_MS`] (well under a storage server's default idle timeout)
//! is closed here rather than reused. A storage server may still close a kept connection
//! first (its `--idle-timeout-s`, a restart): before use each is looked at without
//! blocking (`protocol::kept`), and one found closed is dropped.
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

use super::{connect, Env};
use crate::auth::{ClusterKey, Grant};
use crate::nm::core::mono_ms;
use crate::protocol::frame::{ConnError, Frame};
use crate::protocol::{kept, Connection, Message, Ticket, WireError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most connections kept to one storage server (per worker pool): enough for the calls that
/// many concurrent clients' creates make at once, few beside a server's connection cap.
pub const MAX_KEPT_PER_SERVER: usize = 16;
/// A kept connection idle this long is closed rather than reused.
pub const KEPT_IDLE_MS: u64 = 20_000;

/// Connections to storage servers kept between calls, shared by a pool's workers (module
/// docs).
#[derive(Default)]
pub struct KeptConns {
    by_addr: Mutex<HashMap<String, Vec<(Connection, Instant)>>>,
}

impl KeptConns {
    /// An empty set.
    pub fn new() -> KeptConns {
        KeptConns::default()
    }

    /// A kept connection to `addr` that is still open and holds nothing unread, if any; those
    /// found closed, or idle too long, are closed on the way.
    fn take(&self, addr: &str) -> Option<Connection> {
        loop {
            let (mut c, at) = {
                let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
                let list = map.get_mut(addr)?;
                let last = list.pop();
                if list.is_empty() {
                    map.remove(addr);
                }
                last?
            };
            // Looked at outside the lock: a system call per connection.
            if at.elapsed() < Duration::from_millis(KEPT_IDLE_MS) && kept::reusable(&mut c) {
                return Some(c);
            }
        }
    }

    /// Keeps `c`, which answered its last call whole, for the next call to `addr` (closes it
    /// when `addr` has enough kept already). Connections to any server idle too long are
    /// closed here, so a server no longer called holds none for long.
    fn put(&self, addr: &str, c: Connection) {
        let now = Instant::now();
        let idle = Duration::from_millis(KEPT_IDLE_MS);
        let mut closed = Vec::new();
        {
            let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
            for list in map.values_mut() {
                // Oldest first: those past the limit are at the front.
                let old = list
                    .iter()
                    .take_while(|(_, at)| now.duration_since(*at) >= idle)
                    .count();
                closed.extend(list.drain(..old));
            }
            map.retain(|_, list| !list.is_empty());
            let list = map.entry(addr.to_string()).or_default();
            if list.len() < MAX_KEPT_PER_SERVER {
                list.push((c, now));
            } else {
                closed.push((c, now));
            }
        }
        // Closed outside the lock.
        drop(closed);
    }

    /// How many connections are kept to `addr`.
    #[cfg(test)]
    fn count(&self, addr: &str) -> usize {
        let map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        map.get(addr).map_or(0, Vec::len)
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
        return call_new(addr, msg, None);
    }
    let Some(mut c) = conns.take(addr) else {
        return call_new(addr, msg, Some(conns));
    };
    match exchange(&mut c, msg) {
        Ok(f) => return answer(addr, c, f, conns),
        Err(NoAnswer::Unanswered(e)) => {
            log::debug!(
                "the kept connection to {addr} closed before answering {} ({e}); sending it again on a new one",
                msg.op_name()
            );
        }
        Err(NoAnswer::Failed(e)) => return Err(e.into()),
    }
    call_new(addr, &with_fresh_ticket(msg, key, env), Some(conns))
}

/// Makes call `msg` on a new connection, which is kept afterwards when `conns` is given.
fn call_new(addr: &str, msg: &Message, conns: Option<&KeptConns>) -> Result<Frame, WireError> {
    let mut c = connect(addr)?;
    match exchange(&mut c, msg) {
        Ok(f) => match conns {
            Some(conns) => answer(addr, c, f, conns),
            None => Ok(Frame {
                msg: f.msg.into_result()?,
                body: f.body,
            }),
        },
        Err(NoAnswer::Unanswered(e) | NoAnswer::Failed(e)) => Err(e.into()),
    }
}

/// The answer `f` that came on `c`; `c` is kept unless the answer is an ERR (the server may
/// close the connection after some refusals).
fn answer(addr: &str, c: Connection, f: Frame, conns: &KeptConns) -> Result<Frame, WireError> {
    let msg = f.msg.into_result()?;
    conns.put(addr, c);
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
    let fresh = |t: &Ticket| {
        let grant = Grant {
            user: &t.user,
            file: &t.file,
            op: t.op,
            ss: &t.ss,
            min_version: t.min_version,
            epoch: t.epoch,
        };
        env.mint(key, &grant, mono_ms())
    };
    let mut again = msg.clone();
    match &mut again {
        Message::SsCreate { ticket, .. }
        | Message::SsDelete { ticket, .. }
        | Message::SsMkdir { ticket, .. }
        | Message::CheckFiles { ticket, .. } => *ticket = fresh(ticket),
        _ => {}
    }
    again
}

#[cfg(test)]
mod tests;
