//! What the core asks of the event loop: replies, closes and worker jobs ([`Effect`]), the
//! blocking work itself ([`JobKind`]) and what it produced ([`JobOutput`]).

use super::*;

/// Blocking work for the worker pool.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Send `msg` (SS_CREATE, SS_DELETE, SS_UNDO or CHECK_FILES) to the storage server at
    /// `addr`.
    SsCall {
        /// `host:port` of the storage server.
        addr: String,
        /// The request.
        msg: Message,
    },
    /// Fetch the file with `msg` (a READ) from `addr` and run it as a script.
    Exec {
        /// `host:port` of the storage server.
        addr: String,
        /// The READ request.
        msg: Message,
    },
    /// Copy a file to a backup, or delete it there (runs on the replication workers).
    Replicate(Transfer),
}

/// A job for the worker pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Correlates the result.
    pub id: JobId,
    /// What to do.
    pub kind: JobKind,
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutput {
    /// The storage server answered with a file's state.
    State(FileState),
    /// The storage server answered DONE.
    Done,
    /// A replication job finished.
    Replicated(Outcome),
    /// A storage server answered an FSCK check (CHECKED).
    Checked {
        /// One entry per file asked about.
        copies: Vec<crate::protocol::CopyCheck>,
        /// Quarantined copies of files the server does not hold.
        orphans: Vec<crate::protocol::QuarantineEntry>,
        /// Further such copies not listed.
        more_orphans: u64,
    },
    /// An SS_MOVE's answer was lost, and so were its repeats': the storage server may have
    /// renamed the file or not (why, for the client).
    MoveUnsettled(String),
    /// EXEC ran.
    Exec {
        /// Combined output (capped).
        output: Vec<u8>,
        /// Exit code, if `sh` exited.
        exit_code: Option<i32>,
        /// Whether the cap cut the output.
        truncated: bool,
    },
}

/// What the loop must do after the core handled something.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a frame to a connection once everything before it is durable.
    Reply {
        /// Target connection.
        conn: ConnId,
        /// The message.
        msg: Message,
        /// Raw body (EXEC output).
        body: Vec<u8>,
    },
    /// Close a connection after its queued replies are sent.
    Close {
        /// Target connection.
        conn: ConnId,
    },
    /// Run a job on the worker pool.
    Job(Job),
    /// Run a job on the worker pool once everything before it is durable (a MOVE's or
    /// DELETE's intent must be on disk before the storage server renames or removes the file).
    DurableJob(Job),
}
