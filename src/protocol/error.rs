//! The closed set of error codes every pairfs component speaks on the wire and prints.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The one closed set of error codes (SPEC §2). The client prints `ERROR [CODE]: message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Malformed input: a bad name, index, flag or frame.
    Invalid,
    /// The user lacks the right for this operation, or a ticket/key check failed.
    Unauthorized,
    /// No such file, folder, user, request or server.
    NotFound,
    /// The target already exists or the request contradicts current state.
    Conflict,
    /// A sentence (or the whole file) is locked by a write session.
    Locked,
    /// No live server can serve the request right now.
    Unavailable,
    /// A deadline expired (EXEC wall clock, an unanswered peer).
    Timeout,
    /// A bound was hit: size, count, connections, queue, disk space.
    Limit,
    /// UNDO with no history left.
    NoUndo,
    /// A bug or an unexpected local failure (I/O error other than the above).
    Internal,
}

impl ErrorCode {
    /// The wire and display spelling, e.g. `NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Locked => "LOCKED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Limit => "LIMIT",
            ErrorCode::NoUndo => "NO_UNDO",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it crosses the wire: a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("ERROR [{code}]: {msg}")]
pub struct WireError {
    /// Which of the closed set of codes.
    pub code: ErrorCode,
    /// A sentence for a human; never parsed by programs.
    pub msg: String,
}

impl WireError {
    /// Builds an error from a code and anything printable.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        WireError {
            code,
            msg: msg.into(),
        }
    }
}

/// The words in an UNAVAILABLE answer that say a pair is between writers and the change was
/// not applied: a client waits out the failover and tries again (see `client::session`).
pub const MOVING_WRITER: &str = "is moving its writer";

/// How an UNAVAILABLE answer ends when a change reached a writer whose epoch ended while it
/// ran: the name server set that copy aside and applied nothing, so a client tries again
/// (the answer begins `pair <name> changed writers while ...`).
pub const NOT_APPLIED_TRY_AGAIN: &str = "it was not applied: try again";

/// Shorthand constructors, so call sites read `err::not_found("...")`.
pub mod err {
    use super::{ErrorCode, WireError};

    /// `INVALID`.
    pub fn invalid(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Invalid, m)
    }
    /// `UNAUTHORIZED`.
    pub fn unauthorized(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Unauthorized, m)
    }
    /// `NOT_FOUND`.
    pub fn not_found(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::NotFound, m)
    }
    /// `CONFLICT`.
    pub fn conflict(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Conflict, m)
    }
    /// `LOCKED`.
    pub fn locked(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Locked, m)
    }
    /// `UNAVAILABLE`.
    pub fn unavailable(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Unavailable, m)
    }
    /// `TIMEOUT`.
    pub fn timeout(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Timeout, m)
    }
    /// `LIMIT`.
    pub fn limit(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Limit, m)
    }
    /// `NO_UNDO`.
    pub fn no_undo(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::NoUndo, m)
    }
    /// `INTERNAL`.
    pub fn internal(m: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Internal, m)
    }
}
