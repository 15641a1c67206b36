//! The client port: one thread per connection (at most `max_connections`), each serving
//! READ, STREAM, write sessions, UPLOAD, the name server's SS_CREATE / SS_DELETE / SS_UNDO,
//! and replication: PEEK_FILE and PUT_FILE_CONTENT on a target, GET_FILE_CONTENT on a source.
//!
//! It also serves checkpoints (READ_CHECKPOINT, LIST_CHECKPOINTS, SS_CHECKPOINT, SS_REVERT),
//! SS_MOVE and SS_MKDIR (allowed on a backup too: it is how folders reach every copy).
//!
//! While the name server says this server is a backup, client writes (WRITE_BEGIN, UPLOAD,
//! SS_CREATE, SS_UNDO, SS_CHECKPOINT, SS_REVERT, SS_MOVE) are refused; reads, deletes and
//! replication stay allowed.
//!
//! A request whose body follows in CHUNK frames (UPLOAD, PUT_FILE_CONTENT) is always read to
//! its END before it is answered, even when it is refused, so the connection stays in step.
//!
//! A connection idle past `--idle-timeout-s` between requests is closed (a write session is
//! governed by `--lock-timeout-ms` instead, and a stream keeps its connection busy); each
//! frame must arrive whole within that time too, and a new connection's first one within
//! [`FIRST_FRAME_TIMEOUT_MS`]. Large frame bodies draw on one budget shared by all connections
//! (`protocol::frame::FrameBudget`): a connection waits, unread, for its body's budget, so
//! many half-sent large frames hold at most [`crate::protocol::frame::FRAME_BUDGET_BYTES`]
//! plus a small buffer each. When accept runs out of descriptors it waits
//! [`ACCEPT_RETRY_MS`] and tries again, logging `accept_fd_exhausted` once per burst.
//!
//! Every request carries a ticket checked here; nothing else about the peer is trusted.
//! Malformed input gets an ERR where possible and the connection is closed; a request that
//! fails for a reason of its own (a missing file, a locked sentence) gets an ERR and the
//! connection stays usable.
//!
//! Modules: `dispatch` accepts, runs each connection's loop and routes a frame by its family
//! (with the ticket and state checks the handlers share); `client` serves client operations,
//! `nm` the commands only a name server sends, `send` the source end of replication and
//! `recv` the target end (with `delta` for delta transfers and [`staging`] for uploads
//! staged by the partner).

// These imports serve the child modules too: each takes them, and the items below, with
// `use super::*`.
use crate::auth::TicketChecker;
use crate::durable;
use crate::logging::ev;
use crate::names;
use crate::protocol::frame::{ConnError, CHUNK_BYTES};
use crate::protocol::{
    err, CheckpointInfo, Connection, FileState, Message, Ticket, TicketOp, UndoDesc, Version,
    WireError,
};
use crate::ss::document::{Document, EditBuffer};
use crate::ss::nmlink::NmLink;
use crate::ss::sessions::Sessions;
use crate::ss::store::{
    Basis, ContentCounter, CopyIn, Made, Store, StoreError, TempFile, MAX_CHECKPOINTS, UNDO_DEPTH,
};
use crate::ss::textcount::TextCount;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod client;
mod delta;
mod direct;
mod dispatch;
mod nm;
mod recv;
mod send;
pub mod staging;
#[cfg(test)]
mod tests;

pub use dispatch::accept_loop;
pub use nm::{MAX_CHECK_FILES, MAX_CHECK_QUARANTINE};
pub use recv::MAX_BATCH_COPIES;
// What the child modules take from their siblings.
use dispatch::{
    authorise, authorise_change, check_fresh, may_change, refuse_if_writing, report_adopted,
    unexpected, vanished,
};
use recv::{recv_part, start_writeback, verify, Keep, Received, SyncBy, WRITEBACK_BYTES};
use send::send_part;

/// How long a new connection has to deliver its whole first request (at most the idle
/// timeout).
pub const FIRST_FRAME_TIMEOUT_MS: u64 = 5_000;
/// Pause before accepting again after running out of descriptors.
pub const ACCEPT_RETRY_MS: u64 = 50;
/// How long a commit waits for the name server's acknowledgement.
pub const CHANGED_ACK_TIMEOUT_MS: u64 = 10_000;
/// Longest piece of a single token STREAM sends in one WORD frame.
pub const MAX_STREAM_WORD_BYTES: usize = 16 * 1024;
/// Delay between two streamed words.
pub const STREAM_WORD_INTERVAL_MS: u64 = 100;
/// Largest sentence a write session may open or build, in bytes: the sentence travels in one
/// frame body (WRITE_OPENED, SENTENCE), so it is the body limit.
pub const MAX_SENTENCE_BYTES: usize = crate::protocol::frame::MAX_BODY_BYTES;

/// The error for a sentence of `n` bytes over [`MAX_SENTENCE_BYTES`], in the user's terms.
fn sentence_too_long(n: usize) -> WireError {
    err::limit(format!(
        "sentence too long: {n} bytes, limit {MAX_SENTENCE_BYTES}"
    ))
}

/// Everything the connection threads share.
pub struct Shared {
    /// The storage directory.
    pub store: Arc<Store>,
    /// Sentence locks.
    pub sessions: Sessions,
    /// Ticket verification and replay protection.
    pub checker: TicketChecker,
    /// Reports to the name server.
    pub link: NmLink,
    /// Idle limit of a write session, after which its lock is released.
    pub lock_timeout_ms: u64,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Idle limit between requests (and for one frame to arrive).
    pub idle_timeout_ms: u64,
    /// Memory for large frame bodies, shared by all connections.
    pub budget: Arc<crate::protocol::frame::FrameBudget>,
    /// Connections being served now.
    pub conns: AtomicUsize,
    /// Commits (and undos, deletes) in progress; shutdown waits for them.
    pub inflight: AtomicUsize,
    /// Set when the server is stopping.
    pub stop: Arc<AtomicBool>,
    /// Test hook (`PAIRFS_FAULT_FLIP_PUT`): while set, the next PUT_FILE_CONTENT carrying any
    /// bytes gets one byte flipped before verification, so it must be rejected.
    pub fault_flip_put: AtomicBool,
    /// Uploads staged here by this server's partner while they arrived.
    pub stages: staging::Stages,
}

/// Why a request ended badly: answer with an ERR and go on, or close the connection.
enum Fail {
    Reply(WireError),
    /// The peer broke the protocol mid-stream: answer, then close (its stream cannot be
    /// followed any further).
    ReplyClose(WireError),
    Close,
}

impl From<WireError> for Fail {
    fn from(e: WireError) -> Fail {
        Fail::Reply(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Reply(e.into())
    }
}

impl From<io::Error> for Fail {
    fn from(_: io::Error) -> Fail {
        Fail::Close
    }
}

/// Counts one connection for as long as it lives.
struct ConnSlot(Arc<Shared>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one change in progress.
struct Inflight<'a>(&'a AtomicUsize);

impl<'a> Inflight<'a> {
    fn new(n: &'a AtomicUsize) -> Inflight<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Inflight(n)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
