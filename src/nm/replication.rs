//! Replication jobs: what the name server owes a backup, how a failed attempt backs off, and the
//! blocking relay a worker runs to copy one file from a primary to its backup.
//!
//! The `jobs` table (see `store.rs`) is the truth, as in garage's resync queue: one row per
//! (target, file), holding the latest thing the target must reach. Coalescing is the key
//! itself: ten writes to one file overwrite one row, and one transfer carries the latest
//! content. The worker channel only dispatches rows that are due; a full channel leaves them
//! in the table.

use crate::auth::{ClusterKey, NM_USER};
use crate::logging::ev;
use crate::protocol::{
    err, Connection, ErrorCode, FileState, Message, TicketOp, Version, WireError,
};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

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
    /// Unix milliseconds before which the job is not dispatched.
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
    let ticket = key.mint(NM_USER, &t.file, TicketOp::Store, tname, None);
    let held = dst.call(
        &Message::PeekFile {
            file: t.file.clone(),
            ticket,
        },
        &[],
    )?;
    let (have, blobs, have_checkpoints) = match held.msg {
        Message::Held {
            state,
            blobs,
            checkpoints,
        } => (state, blobs, checkpoints),
        other => return Err(unexpected(tname, &other)),
    };
    if let Some(st) = have {
        if st.version >= version {
            return Ok(Outcome::Copied {
                state: st,
                skipped: true,
                bytes: 0,
            });
        }
    }
    // 2. Ask the source for the content and the history entries the target lacks.
    let mut src = connect(saddr)?;
    let ticket = key.mint(NM_USER, &t.file, TicketOp::Fetch, sname, None);
    let head = src.call(
        &Message::GetFileContent {
            file: t.file.clone(),
            have: blobs,
            have_checkpoints,
            ticket,
        },
        &[],
    )?;
    let (state, undo, sent, checkpoints, sent_checkpoints) = match head.msg {
        Message::FileContent {
            state,
            undo,
            sent,
            checkpoints,
            sent_checkpoints,
        } => (state, undo, sent, checkpoints, sent_checkpoints),
        other => return Err(unexpected(sname, &other)),
    };
    if sent.len() > MAX_HISTORY_ENTRIES
        || undo.len() > MAX_HISTORY_ENTRIES
        || checkpoints.len() > MAX_HISTORY_ENTRIES
    {
        return Err(err::limit("transfer carries too many history entries"));
    }
    // 3. Open the target's install stream and relay every frame as it arrives.
    let ticket = key.mint(NM_USER, &t.file, TicketOp::Store, tname, None);
    let put = Message::PutFileContent {
        file: t.file.clone(),
        state: state.clone(),
        undo,
        sent: sent.clone(),
        checkpoints,
        sent_checkpoints: sent_checkpoints.clone(),
        ticket,
    };
    dst.send(&put, &[])
        .map_err(|e| err::unavailable(format!("sending to {tname}: {e}")))?;
    let mut bytes = 0u64;
    // The content, then each history entry, then each checkpoint the target lacks.
    let extra_parts = sent.len() + sent_checkpoints.len();
    let mut streams_left = 1 + extra_parts;
    while streams_left > 0 {
        let f = src.recv_some()?;
        match f.msg.into_result()? {
            Message::Chunk {} => {
                bytes += f.body.len() as u64;
                dst.send(&Message::Chunk {}, &f.body)
                    .map_err(|e| err::unavailable(format!("sending to {tname}: {e}")))?;
            }
            Message::End {} => {
                streams_left -= 1;
                dst.send(&Message::End {}, &[])
                    .map_err(|e| err::unavailable(format!("sending to {tname}: {e}")))?;
                if streams_left == extra_parts {
                    log::info!(target: ev::REPLICATION_WORKER_FETCHED, file = t.file.as_str(),
                        ss = sname.as_str(), version = state.version.to_string(), bytes = bytes;
                        "file={} size={bytes} from {sname}", t.file);
                }
            }
            other => return Err(unexpected(sname, &other)),
        }
    }
    drop(src);
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
