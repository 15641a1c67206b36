//! Replication jobs: what the name server owes a pair's other member, how a failed attempt
//! backs off, and the blocking relay a worker runs to copy files from one member to the other.
//!
//! # Jobs are rows, the channel only dispatches
//!
//! The `jobs` table (see `store.rs`) is the truth, as in garage's resync queue: one row
//! ([`ReplJob`]) per (target, file), holding the latest thing the target must reach
//! ([`Want`]: a version, or the file gone), the attempts, the next attempt time, the last
//! error, [`JobState`] (PENDING/FAILED), and when the oldest change it owes happened. A change
//! the other member must follow writes its row in the SAME store batch as the change itself,
//! so a name-server SIGKILL never loses an owed change. Coalescing is the key itself: ten
//! writes to one file overwrite one row, and one transfer carries the latest content.
//!
//! Due rows are dispatched over a bounded crossbeam channel (`--queue-cap`) to `--workers`
//! replication threads; a full channel leaves them in the table (backpressure, never a drop;
//! retried after [`CHANNEL_FULL_RETRY_MS`]). A failed attempt backs off ([`BACKOFF_BASE_MS`]
//! doubling to [`BACKOFF_MAX_MS`], [`MAX_ATTEMPTS`] attempts, [`backoff_ms`]), then the row is
//! FAILED and shown by STATUS; a target's FAILED rows go back to PENDING when it registers
//! again. `RECOVER ss` retries every row owed to `ss` at once and queues every file the name
//! server does not know it to hold current; it does not re-read the server's disk (a
//! re-registration does). STATUS shows a catch-up as `sync done/total` (in memory only).
//!
//! # A transfer is a relay
//!
//! [`run`] asks the target what it holds (PEEK_FILE: version, checksum, the history entries
//! and the checkpoints as `<tag>:<checksum hex>`), asks the source for the content and the
//! history entries and checkpoints the target lacks (GET_FILE_CONTENT), and relays that stream
//! frame by frame into PUT_FILE_CONTENT: no process holds a whole file, and the name server
//! writes none of it to disk. This relay (with PUT_BATCH and the delta messages) and EXEC are
//! the only places content passes through the name server. The target receives into `tmp/`,
//! verifies every CRC32C and size, ignores a version not newer than its own (so jobs are
//! idempotent and may be reordered or retried), then installs history entries, checkpoints,
//! content and record, each durably (the order and its crash analysis are the storage
//! server's store's). History entries are named by the version whose content they hold, so
//! both copies name them alike and PEEK_FILE can say which are held. A checkpoint tag made
//! again for other bytes is sent again; the target refuses a list naming a tag it holds with
//! other bytes unless they are sent (a member away during a DELETE may still hold the old
//! file's checkpoints). The source is the member holding the current copy: the primary, or
//! during a failover the promoted backup (changes on it are rows owed to the primary, same
//! table, same relay).
//!
//! A job with `quarantine: true` first sends SS_QUARANTINE (keep = the wanted version, so a
//! retry never sets the current copy aside), which moves the target's copy to `quarantine/`,
//! then installs the current copy; such a job always runs alone. Two ways the bytes may not
//! cross: a large upload was staged on the target while it arrived (the PUT names the stage,
//! see `crate::ss::server::staging`), or the target holds a large stale copy, caught up by
//! delta (`replication/delta.rs`, see [`crate::delta`]). Either failing, the same job sends
//! the file whole.
//!
//! # Many small copies travel in batches
//!
//! A worker that takes a copy job while at least [`BATCH_MIN_WAITING`] more wait in the
//! channel (a backlog, such as a returning backup's catch-up) also takes the copy jobs waiting
//! between the same two servers ([`batchable`]; up to [`BATCH_MAX`] in all). Nothing is ever
//! held back to wait for others: a few changes are copied one by one by idle workers in
//! parallel. [`run_batch`] uses two connections: every PEEK_FILE at once, every
//! GET_FILE_CONTENT at once, and each answer relayed into one PUT_BATCH (the copies'
//! PUT_FILE_CONTENT frames until an END, each with its checkpoints as a single transfer
//! carries them). The target verifies each copy as a single transfer and installs the batch
//! with each kind of sync done once (one `syncfs` on Linux 5.17+; the store's install module
//! gives the order and why durability is unchanged). It answers one FILE_STATE_REPLY or ERR
//! per copy, in order, and each job's row is settled by its own answer. Jobs whose target
//! holds a large stale copy leave the batch: the worker hands in the batch's results first,
//! then runs each of them by delta on its own.
//!
//! # Sync mode
//!
//! `--replication sync` answers a change once the other member holds it; if that member is
//! down or its copy fails (or takes over 5 s) the answer says `(1 of 2 copies)` and the row
//! carries the debt.
//!
//! # What replicates how
//!
//! * A checkpoint and a revert are new versions, so the ordinary content job owes them; a
//!   transfer carries the checkpoints the target lacks after the history entries, and
//!   PUT_FILE_CONTENT installs them (verified, renamed, then the source's index) before the
//!   content.
//! * A MOVE is owed as two rows: a removal of the old name and the whole file (content,
//!   history, checkpoints, owner, version) under the new one. Both are the usual idempotent
//!   kinds, so a retried or reordered job converges on the writer's state; the price is that
//!   a move re-sends the file's bytes, and that until both rows ran the target holds the file
//!   under the old name, the new one, or (briefly) both.
//! * Folders reach every copy by push, not by rows: SS_MKDIR is idempotent and each
//!   registration repeats the whole list, so nothing needs to be owed durably.
//! * Access rights, owners, folders and access requests live only on the name server (the
//!   authority every ticket is minted from); storage servers' records carry content,
//!   versions, history, checkpoints and owner. A storage server's failover changes which copy
//!   serves a file, never who may use it. (Surviving the name server's own disk is a
//!   different failure, outside this design.)

use crate::auth::{ClusterKey, NM_USER};
use crate::logging::ev;
use crate::protocol::{
    err, Connection, CopyRef, ErrorCode, FileState, Message, TicketOp, Version, WireError,
};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

mod delta;

/// Delay before the second attempt of a failed job; each further failure doubles it.
pub const BACKOFF_BASE_MS: u64 = 200;
/// Longest delay between attempts.
pub const BACKOFF_MAX_MS: u64 = 30_000;
/// Attempts before a job is marked FAILED (it is retried again when its target re-registers).
pub const MAX_ATTEMPTS: u32 = 8;
/// Delay before re-dispatching a due job the worker channel had no room for.
pub const CHANNEL_FULL_RETRY_MS: u64 = 20;
/// Time allowed to connect to a storage server.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Time allowed for one frame to arrive during a transfer.
pub const FRAME_TIMEOUT_MS: u64 = 30_000;
/// Most history entries one transfer may carry (bounds a malformed header's effect).
pub const MAX_HISTORY_ENTRIES: usize = 10_000;
/// Most copies a worker sends in one PUT_BATCH (the storage server takes at most 64). A
/// batch holds each of its files' results until all are installed, so it is kept modest.
pub const BATCH_MAX: usize = 64;
/// Jobs that must be waiting in the worker channel before a worker batches them: fewer are
/// copied sooner one by one by the idle workers.
pub const BATCH_MIN_WAITING: usize = 16;

/// What the target of a job must end up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Want {
    /// The file at this version (or newer).
    Content {
        /// The version the name server recorded when the job was written.
        version: Version,
    },
    /// The file gone.
    Delete,
}

/// Whether a job is still being tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Waiting for its next attempt (or running).
    Pending,
    /// Out of attempts; waits for its target to register again.
    Failed,
}

/// One row of the `jobs` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplJob {
    /// The server that must receive the change (a backup).
    pub target: String,
    /// Canonical file name.
    pub file: String,
    /// What the target must reach.
    pub want: Want,
    /// Failed attempts since the job last changed.
    pub attempts: u32,
    /// Monotonic ms (the name server's run, see `core::clock`) before which the job is not
    /// dispatched. Stored, but meaningless to a later run: loading makes the job due at boot.
    pub next_ms: u64,
    /// The last error, if an attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// PENDING or FAILED.
    pub state: JobState,
    /// Unix milliseconds of the oldest change this job owes (for lag reporting).
    pub since_ms: u64,
    /// The target's copy holds changes the cluster never acknowledged: it is moved into the
    /// target's `quarantine/` before the job's content (or removal) is applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantine: bool,
}

impl ReplJob {
    /// The table key: target and file joined by a newline, which no name may contain.
    pub fn key(&self) -> String {
        job_key(&self.target, &self.file)
    }
}

/// The `jobs` table key of (target, file).
pub fn job_key(target: &str, file: &str) -> String {
    format!("{target}\n{file}")
}

/// Delay after the `attempts`-th failure: 200 ms doubling, capped at 30 s.
pub fn backoff_ms(attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(20);
    (BACKOFF_BASE_MS << shift).min(BACKOFF_MAX_MS)
}

/// A replication job as it travels to a worker: everything needed, no lookups.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// Canonical file.
    pub file: String,
    /// What to do.
    pub want: Want,
    /// Source server name and client address (content jobs).
    pub source: Option<(String, String)>,
    /// Target server name and client address.
    pub target: (String, String),
    /// Set the target's copy aside first (see [`ReplJob::quarantine`]).
    pub quarantine: bool,
    /// The id of the upload staged on the target while it arrived, when that is the
    /// wanted version (see `ss/server/staging.rs`): the content need not be sent.
    pub stage: Option<String>,
}

/// What a finished transfer achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The target now holds this state (it already did if `skipped`).
    Copied {
        /// The target's state after the transfer.
        state: FileState,
        /// True when PEEK showed the target already had the version.
        skipped: bool,
        /// Bytes relayed.
        bytes: u64,
    },
    /// The target no longer holds the file.
    Deleted,
}

fn connect(addr: &str) -> Result<Connection, WireError> {
    let conn = Connection::connect(addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
        .map_err(|e| err::unavailable(format!("cannot reach storage server at {addr}: {e}")))?;
    conn.set_timeout(Some(Duration::from_millis(FRAME_TIMEOUT_MS)))
        .map_err(|e| err::internal(e.to_string()))?;
    Ok(conn)
}

fn unexpected(who: &str, m: &Message) -> WireError {
    err::internal(format!("{who} answered {} unexpectedly", m.op_name()))
}

/// Runs one job, blocking: PEEK, GET and PUT relayed chunk by chunk for content, SS_DELETE for
/// a delete. Logs the worker events with `file`, `ss`, `version`, `bytes`, `ms`.
pub fn run(t: &Transfer, key: &ClusterKey) -> Result<Outcome, WireError> {
    let start = Instant::now();
    let (tname, taddr) = (&t.target.0, &t.target.1);
    log::info!(target: ev::REPLICATION_WORKER_PROCESS, file = t.file.as_str(), ss = tname.as_str();
        "file={} target={tname} want={:?}", t.file, t.want);
    let res = quarantine(t, key).and_then(|()| match t.want {
        Want::Delete => delete(t, key),
        Want::Content { .. } => copy(t, key),
    });
    let ms = start.elapsed().as_millis() as u64;
    match &res {
        Ok(Outcome::Deleted) => {
            log::info!(target: ev::REPLICATION_WORKER_DELETE_SUCCESS, file = t.file.as_str(),
                ss = tname.as_str(), ms = ms; "file={} deleted from {tname}", t.file);
        }
        Ok(Outcome::Copied { state, bytes, .. }) => {
            log::info!(target: ev::REPLICATION_WORKER_SUCCESS, file = t.file.as_str(),
                ss = tname.as_str(), version = state.version.to_string(), bytes = *bytes, ms = ms;
                "file={} replicated to {tname}", t.file);
        }
        Err(e) => {
            log::warn!(target: ev::REPLICATION_WORKER_ERROR, file = t.file.as_str(),
                ss = tname.as_str(), ms = ms; "file={} to {tname} ({taddr}): {}", t.file, e.msg);
        }
    }
    res
}

/// SS_QUARANTINE on the target when the job asks for it. The wanted version is kept, so a
/// retry after a copy that landed does not set the current copy aside.
fn quarantine(t: &Transfer, key: &ClusterKey) -> Result<(), WireError> {
    if !t.quarantine {
        return Ok(());
    }
    let (tname, taddr) = (&t.target.0, &t.target.1);
    let mut conn = connect(taddr)?;
    let ticket = key.mint(NM_USER, &t.file, TicketOp::Quarantine, tname, None);
    let keep = match t.want {
        Want::Content { version } => Some(version),
        Want::Delete => None,
    };
    let msg = Message::SsQuarantine {
        file: t.file.clone(),
        keep,
        ticket,
    };
    conn.call(&msg, &[])?;
    log::warn!(target: ev::REPLICATION_WORKER_PROCESS, file = t.file.as_str(), ss = tname.as_str();
        "file={} quarantined on {tname}", t.file);
    Ok(())
}

fn delete(t: &Transfer, key: &ClusterKey) -> Result<Outcome, WireError> {
    let (tname, taddr) = (&t.target.0, &t.target.1);
    let mut conn = connect(taddr)?;
    let ticket = key.mint(NM_USER, &t.file, TicketOp::Delete, tname, None);
    let msg = Message::SsDelete {
        file: t.file.clone(),
        ticket,
    };
    match conn.call(&msg, &[]) {
        Ok(_) => Ok(Outcome::Deleted),
        Err(e) if e.code == ErrorCode::NotFound => Ok(Outcome::Deleted),
        Err(e) => Err(e),
    }
}

fn copy(t: &Transfer, key: &ClusterKey) -> Result<Outcome, WireError> {
    let Want::Content { version } = t.want else {
        return Err(err::internal("not a content job"));
    };
    let (tname, taddr) = (&t.target.0, &t.target.1);
    let Some((sname, saddr)) = &t.source else {
        return Err(err::unavailable("no source for the copy"));
    };
    // 1. What does the target hold already? The same connection later carries the install,
    // so a job opens two connections, not three.
    let mut dst = connect(taddr)?;
    dst.send(&peek_msg(t, key), &[])
        .map_err(|e| sending(tname, e))?;
    let lacks = match held_reply(&mut dst, tname, version)?? {
        Held::Current(state) => {
            return Ok(Outcome::Copied {
                state,
                skipped: true,
                bytes: 0,
            })
        }
        Held::Lacks(lacks) => lacks,
    };
    // The upload staged on the target while it arrived: send only the history with it.
    if let Some(id) = t.stage.as_deref() {
        match staged_copy(t, key, &mut dst, (sname, saddr), version, id, lacks.clone()) {
            Ok(outcome) => return Ok(outcome),
            Err(e) => {
                log::warn!(target: ev::REPLICATION_STAGED, file = t.file.as_str(), ss = tname.as_str();
                    "file={} to {tname}: the staged upload could not be used ({}); sending it whole", t.file, e.msg);
                dst = connect(taddr)?;
            }
        }
    }
    // A large stale copy: try sending only what changed, else send it whole.
    if let Some(basis) = lacks.held.as_ref().filter(|h| delta::worth_it(h)) {
        match delta::copy(t, key, &mut dst, (sname, saddr), basis, &lacks) {
            Ok(outcome) => return Ok(outcome),
            Err(e) => {
                log::warn!(target: ev::REPLICATION_DELTA_FALLBACK, file = t.file.as_str(), ss = tname.as_str();
                    "file={} to {tname}: delta failed ({}); sending it whole", t.file, e.msg);
                dst = connect(taddr)?;
            }
        }
    }
    // 2. Ask the source for the content and the history entries the target lacks, and
    // 3. relay every frame into the target's install stream as it arrives.
    let mut src = connect(saddr)?;
    let bytes = relay(t, key, &mut src, sname, &mut dst, tname, lacks)?;
    drop(src);
    installed(&mut dst, tname, bytes)
}

/// Reads the target's answer to a PUT_FILE_CONTENT: the copy it now holds.
fn installed(dst: &mut Connection, tname: &str, bytes: u64) -> Result<Outcome, WireError> {
    let reply = dst.recv_some()?;
    match reply.msg.into_result()? {
        Message::FileStateReply { state } => Ok(Outcome::Copied {
            state,
            skipped: false,
            bytes,
        }),
        other => Err(unexpected(tname, &other)),
    }
}

/// Copies `t` to a target holding its content staged as `id` (the upload of `version`):
/// the source sends the history entries and checkpoints the target lacks, and its content
/// only if the file has moved on since.
fn staged_copy(
    t: &Transfer,
    key: &ClusterKey,
    dst: &mut Connection,
    (sname, saddr): (&str, &str),
    version: Version,
    id: &str,
    lacks: Lacks,
) -> Result<Outcome, WireError> {
    let start = Instant::now();
    let tname = t.target.0.as_str();
    let mut src = connect(saddr)?;
    // An older copy the target holds (an upload over a file it has) stands for the history
    // entry of its version, as in a delta: the staged upload replaces it there.
    let held = lacks
        .held
        .clone()
        .filter(|h| !lacks.blobs.contains(&h.version));
    if let Some(h) = &held {
        // The target reads that copy whole (the basis check) before it answers.
        let wait_ms = FRAME_TIMEOUT_MS + crate::delta::read_wait_ms(h.size);
        dst.set_timeout(Some(Duration::from_millis(wait_ms)))
            .map_err(|e| err::internal(e.to_string()))?;
    }
    let mut get = get_msg(t, key, sname, lacks);
    if let Message::GetFileContent { staged, basis, .. } = &mut get {
        *staged = Some(version);
        *basis = held.as_ref().map(|h| CopyRef {
            version: h.version,
            checksum: h.checksum,
        });
    }
    src.send(&get, &[]).map_err(|e| sending(sname, e))?;
    let stage = Staging {
        id,
        basis: held.as_ref(),
    };
    let bytes = relay_reply(t, key, &mut src, sname, dst, tname, PutAs::Staged(stage))?;
    drop(src);
    let outcome = installed(dst, tname, bytes)?;
    if let Outcome::Copied { state, .. } = &outcome {
        log::info!(target: ev::REPLICATION_STAGED, file = t.file.as_str(), ss = tname,
            version = state.version.to_string(), bytes = bytes, size = state.size,
            ms = start.elapsed().as_millis() as u64;
            "file={} installed on {tname} from the upload staged there", t.file);
    }
    Ok(outcome)
}

/// What a GET that may leave parts out for a staged upload asked (see [`staged_copy`]).
#[derive(Clone, Copy)]
struct Staging<'a> {
    /// The stage's id on the target.
    id: &'a str,
    /// The target's older copy the GET offered as the history entry of its version.
    basis: Option<&'a FileState>,
}

/// What PEEK_FILE said the target holds.
enum Held {
    /// The wanted version or a newer one.
    Current(FileState),
    /// Something older (or nothing): what it holds that a copy need not send again.
    Lacks(Lacks),
}

/// What a target that lacks the wanted version holds already, so the source sends only the
/// rest.
#[derive(Clone)]
struct Lacks {
    /// The state of the older copy it holds, if any.
    held: Option<FileState>,
    /// The history versions it holds.
    blobs: Vec<Version>,
    /// The checkpoints it holds, as `<tag>:<checksum hex>`.
    checkpoints: Vec<String>,
}

fn peek_msg(t: &Transfer, key: &ClusterKey) -> Message {
    Message::PeekFile {
        file: t.file.clone(),
        ticket: key.mint(NM_USER, &t.file, TicketOp::Store, &t.target.0, None),
    }
}

fn sending(who: &str, e: std::io::Error) -> WireError {
    err::unavailable(format!("sending to {who}: {e}"))
}

/// Reads one reply: the outer error means the connection is broken (nothing more can be read
/// from it), the inner one is an ERR answering this request alone.
fn reply(conn: &mut Connection) -> Result<Result<Message, WireError>, WireError> {
    let f = conn.recv_some()?;
    Ok(f.msg.into_result())
}

/// Reads one HELD reply and compares it with the wanted `version` (errors as [`reply`]).
fn held_reply(
    dst: &mut Connection,
    tname: &str,
    version: Version,
) -> Result<Result<Held, WireError>, WireError> {
    Ok(match reply(dst)? {
        Ok(Message::Held {
            state: Some(st), ..
        }) if st.version >= version => Ok(Held::Current(st)),
        Ok(Message::Held {
            state,
            blobs,
            checkpoints,
        }) => Ok(Held::Lacks(Lacks {
            held: state,
            blobs,
            checkpoints,
        })),
        Ok(other) => return Err(unexpected(tname, &other)),
        Err(e) => Err(e),
    })
}

/// Why a relay failed: the source refused the file before anything went to the target (both
/// connections stay in step), or a connection broke (or the stream went wrong) midway.
enum RelayFail {
    Refused(WireError),
    Broken(WireError),
}

impl From<RelayFail> for WireError {
    fn from(f: RelayFail) -> WireError {
        match f {
            RelayFail::Refused(e) | RelayFail::Broken(e) => e,
        }
    }
}

/// The GET_FILE_CONTENT asking the source for `t`'s content and the history entries and
/// checkpoints the target lacks (it holds those in `lacks`).
fn get_msg(t: &Transfer, key: &ClusterKey, sname: &str, lacks: Lacks) -> Message {
    Message::GetFileContent {
        file: t.file.clone(),
        have: lacks.blobs,
        have_checkpoints: lacks.checkpoints,
        staged: None,
        basis: None,
        ticket: key.mint(NM_USER, &t.file, TicketOp::Fetch, sname, None),
    }
}

/// GET_FILE_CONTENT from the source, relayed frame by frame into a PUT_FILE_CONTENT to the
/// target (whose answer the caller reads). Returns the content bytes relayed.
fn relay(
    t: &Transfer,
    key: &ClusterKey,
    src: &mut Connection,
    sname: &str,
    dst: &mut Connection,
    tname: &str,
    lacks: Lacks,
) -> Result<u64, RelayFail> {
    src.send(&get_msg(t, key, sname, lacks), &[])
        .map_err(|e| RelayFail::Broken(sending(sname, e)))?;
    relay_reply(t, key, src, sname, dst, tname, PutAs::Whole)
}

/// What the GET whose answer is relayed asked for, and so how the PUT goes.
#[derive(Clone, Copy)]
enum PutAs<'a> {
    /// Every part whole (PUT_FILE_CONTENT).
    Whole,
    /// The answer to a GET_FILE_DELTA: every part is ops against the target's copy at this
    /// state (PUT_FILE_DELTA).
    Delta(&'a FileState),
    /// The GET asked to leave out content staged on the target (see [`staged_copy`]).
    Staged(Staging<'a>),
}

/// Reads the source's answer to a GET_FILE_CONTENT already sent and relays it frame by frame
/// into a PUT to the target, as `put` says. An error before the PUT went out leaves both
/// connections in step (the source refused); one after it does not. A source that left out
/// staged content has the PUT name the stage.
fn relay_reply(
    t: &Transfer,
    key: &ClusterKey,
    src: &mut Connection,
    sname: &str,
    dst: &mut Connection,
    tname: &str,
    put: PutAs<'_>,
) -> Result<u64, RelayFail> {
    use RelayFail::{Broken, Refused};
    let (state, undo, sent, checkpoints, sent_checkpoints, content_staged) =
        match reply(src).map_err(Broken)?.map_err(Refused)? {
            Message::FileContent {
                state,
                undo,
                sent,
                checkpoints,
                sent_checkpoints,
                content_staged,
            } => (
                state,
                undo,
                sent,
                checkpoints,
                sent_checkpoints,
                content_staged,
            ),
            other => return Err(Broken(unexpected(sname, &other))),
        };
    let staged = match (content_staged, put) {
        (false, _) => None,
        (true, PutAs::Staged(s)) => Some(s.id.to_string()),
        (true, _) => {
            return Err(Broken(err::internal(format!(
                "{sname} left out content it was not asked to"
            ))))
        }
    };
    // The source left out the history entry of the target's own copy when it is the same
    // bytes: the target then links that copy in (after verifying it).
    let offered = match put {
        PutAs::Staged(s) => s.basis,
        _ => None,
    };
    let link = offered
        .filter(|b| {
            !sent.contains(&b.version)
                && undo
                    .iter()
                    .any(|d| d.version == b.version && d.checksum == b.checksum)
        })
        .map(|b| CopyRef {
            version: b.version,
            checksum: b.checksum,
        });
    if sent.len() > MAX_HISTORY_ENTRIES
        || undo.len() > MAX_HISTORY_ENTRIES
        || checkpoints.len() > MAX_HISTORY_ENTRIES
    {
        // The source is about to stream what this side will not read.
        return Err(Broken(err::limit(
            "transfer carries too many history entries",
        )));
    }
    let ticket = key.mint(NM_USER, &t.file, TicketOp::Store, tname, None);
    let msg = match put {
        PutAs::Whole | PutAs::Staged(_) => Message::PutFileContent {
            file: t.file.clone(),
            state: state.clone(),
            undo,
            sent: sent.clone(),
            checkpoints,
            sent_checkpoints: sent_checkpoints.clone(),
            staged: staged.clone(),
            basis: link,
            ticket,
        },
        PutAs::Delta(b) => Message::PutFileDelta {
            file: t.file.clone(),
            state: state.clone(),
            undo,
            sent: sent.clone(),
            checkpoints,
            sent_checkpoints: sent_checkpoints.clone(),
            basis: b.version,
            basis_checksum: b.checksum,
            ticket,
        },
    };
    dst.send(&msg, &[]).map_err(|e| Broken(sending(tname, e)))?;
    let mut bytes = 0u64;
    // The content, then each history entry, then each checkpoint the target lacks.
    let extra_parts = sent.len() + sent_checkpoints.len();
    let mut streams_left = usize::from(staged.is_none()) + extra_parts;
    while streams_left > 0 {
        let f = src.recv_some().map_err(|e| Broken(e.into()))?;
        match f.msg.into_result().map_err(Broken)? {
            Message::Chunk {} => {
                bytes += f.body.len() as u64;
                // Relayed with the checksum it arrived with (verified), not recomputed.
                dst.send_with_crc(&Message::Chunk {}, &f.body, src.body_crc())
                    .map_err(|e| Broken(sending(tname, e)))?;
            }
            Message::End {} => {
                streams_left -= 1;
                dst.send(&Message::End {}, &[])
                    .map_err(|e| Broken(sending(tname, e)))?;
                if streams_left == extra_parts {
                    log::info!(target: ev::REPLICATION_WORKER_FETCHED, file = t.file.as_str(),
                        ss = sname, version = state.version.to_string(), bytes = bytes;
                        "file={} size={bytes} from {sname}", t.file);
                }
            }
            other => return Err(Broken(unexpected(sname, &other))),
        }
    }
    Ok(bytes)
}

/// Whether two jobs can share one batch: both plain copies between the same two servers. A
/// job that must set the target's copy aside first runs on its own, so its SS_QUARANTINE is
/// answered before any of its content is sent.
pub fn batchable(a: &Transfer, b: &Transfer) -> bool {
    matches!(a.want, Want::Content { .. })
        && matches!(b.want, Want::Content { .. })
        && !a.quarantine
        && !b.quarantine
        && a.stage.is_none()
        && b.stage.is_none()
        && a.source.is_some()
        && a.source == b.source
        && a.target == b.target
}

/// Runs many content jobs between one source and one target (see [`batchable`]) over two
/// connections: every PEEK_FILE sent at once, then the copies the target lacks relayed one
/// after another inside one PUT_BATCH, which the target installs together. Logs the worker
/// events of each file as [`run`] does; one result per job, in order. A failure of the
/// connection fails every job not decided yet (each is retried on its own schedule). A job
/// whose target holds a large stale copy is left out (None): the caller runs it on its own
/// with [`run`], by delta, after handing in the batch's results, so the batch's small files
/// do not wait behind it.
pub fn run_batch(ts: &[Transfer], key: &ClusterKey) -> Vec<Option<Result<Outcome, WireError>>> {
    let start = Instant::now();
    for t in ts {
        log::info!(target: ev::REPLICATION_WORKER_PROCESS, file = t.file.as_str(), ss = t.target.0.as_str();
            "file={} target={} want={:?} (batch of {})", t.file, t.target.0, t.want, ts.len());
    }
    let mut results: Vec<Option<Result<Outcome, WireError>>> = ts.iter().map(|_| None).collect();
    let mut deferred = Vec::new();
    let bytes = batch(ts, key, &mut results, &mut deferred);
    let ms = start.elapsed().as_millis() as u64;
    let results: Vec<Option<Result<Outcome, WireError>>> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            if deferred.contains(&i) {
                None
            } else {
                Some(r.unwrap_or_else(|| Err(err::internal("job left undecided"))))
            }
        })
        .collect();
    for ((t, r), b) in ts.iter().zip(&results).zip(bytes) {
        let tname = t.target.0.as_str();
        let Some(r) = r else { continue };
        match r {
            Ok(Outcome::Copied { state, .. }) => {
                log::info!(target: ev::REPLICATION_WORKER_SUCCESS, file = t.file.as_str(),
                    ss = tname, version = state.version.to_string(), bytes = b, ms = ms;
                    "file={} replicated to {tname}", t.file);
            }
            Ok(Outcome::Deleted) => {}
            Err(e) => {
                log::warn!(target: ev::REPLICATION_WORKER_ERROR, file = t.file.as_str(),
                    ss = tname, ms = ms; "file={} to {tname} ({}): {}", t.file, t.target.1, e.msg);
            }
        }
    }
    results
}

/// What a job left for after the batch holds until then.
const DEFERRED: &str = "deferred to a delta transfer";

/// The body of [`run_batch`]: fills `results`, returns the bytes relayed per job. The jobs
/// whose target holds a large stale copy are left to [`run`] (their indices in `deferred`).
fn batch(
    ts: &[Transfer],
    key: &ClusterKey,
    results: &mut [Option<Result<Outcome, WireError>>],
    deferred: &mut Vec<usize>,
) -> Vec<u64> {
    let mut bytes = vec![0u64; ts.len()];
    let fail_rest = |results: &mut [Option<Result<Outcome, WireError>>], e: &WireError| {
        for r in results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(Err(e.clone()));
        }
    };
    let (Some(first), Some((sname, saddr))) =
        (ts.first(), ts.first().and_then(|t| t.source.as_ref()))
    else {
        fail_rest(results, &err::unavailable("no source for the copy"));
        return bytes;
    };
    let (tname, taddr) = (&first.target.0, &first.target.1);
    let mut dst = match connect(taddr) {
        Ok(c) => c,
        Err(e) => {
            fail_rest(results, &e);
            return bytes;
        }
    };
    // 1. Every PEEK at once: replies are small (a bounded batch of them fits the socket
    // buffers), so the target never waits for us to read while we still write.
    for t in ts {
        if let Err(e) = dst.send(&peek_msg(t, key), &[]) {
            fail_rest(results, &sending(tname, e));
            return bytes;
        }
    }
    let mut lacks = Vec::new();
    for (i, t) in ts.iter().enumerate() {
        let Want::Content { version } = t.want else {
            results[i] = Some(Err(err::internal("not a content job")));
            continue;
        };
        match held_reply(&mut dst, tname, version) {
            Ok(Ok(Held::Current(state))) => {
                results[i] = Some(Ok(Outcome::Copied {
                    state,
                    skipped: true,
                    bytes: 0,
                }))
            }
            // A large stale copy goes by delta on its own after the batch.
            Ok(Ok(Held::Lacks(l))) if l.held.as_ref().is_some_and(delta::worth_it) => {
                results[i] = Some(Err(err::internal(DEFERRED)));
                deferred.push(i);
            }
            Ok(Ok(Held::Lacks(l))) => lacks.push((i, l)),
            // An ERR answers one PEEK; the connection goes on.
            Ok(Err(e)) => results[i] = Some(Err(e)),
            Err(e) => {
                fail_rest(results, &e);
                return bytes;
            }
        }
    }
    if lacks.is_empty() {
        return bytes;
    }
    // 2. The copies, relayed one after another into one PUT_BATCH.
    let mut src = match connect(saddr) {
        Ok(c) => c,
        Err(e) => {
            fail_rest(results, &e);
            return bytes;
        }
    };
    if let Err(e) = dst.send(&Message::PutBatch {}, &[]) {
        fail_rest(results, &sending(tname, e));
        return bytes;
    }
    // Every GET at once too (requests are small, so they never wait for us to read), then
    // each answer relayed as it comes: the source streams one file after another without
    // waiting for a round trip per file.
    let mut asked = Vec::with_capacity(lacks.len());
    for (i, l) in lacks {
        if let Err(e) = src.send(&get_msg(&ts[i], key, sname, l), &[]) {
            fail_rest(results, &sending(sname, e));
            return bytes;
        }
        asked.push(i);
    }
    let mut put = Vec::new();
    for i in asked {
        match relay_reply(&ts[i], key, &mut src, sname, &mut dst, tname, PutAs::Whole) {
            Ok(n) => {
                bytes[i] = n;
                put.push(i);
            }
            // The source refused this file before anything went to the target: go on.
            Err(RelayFail::Refused(e)) => results[i] = Some(Err(e)),
            Err(RelayFail::Broken(e)) => {
                fail_rest(results, &e);
                return bytes;
            }
        }
    }
    drop(src);
    if let Err(e) = dst.send(&Message::End {}, &[]) {
        fail_rest(results, &sending(tname, e));
        return bytes;
    }
    // 3. One answer per copy sent, in order.
    for i in put {
        match reply(&mut dst) {
            Ok(Ok(Message::FileStateReply { state })) => {
                results[i] = Some(Ok(Outcome::Copied {
                    state,
                    skipped: false,
                    bytes: bytes[i],
                }))
            }
            Ok(Ok(other)) => {
                fail_rest(results, &unexpected(tname, &other));
                return bytes;
            }
            Ok(Err(e)) => results[i] = Some(Err(e)),
            Err(e) => {
                fail_rest(results, &e);
                return bytes;
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1), 200);
        assert_eq!(backoff_ms(2), 400);
        assert_eq!(backoff_ms(8), 25_600);
        assert_eq!(backoff_ms(9), 30_000);
        assert_eq!(backoff_ms(60), 30_000);
    }
}
