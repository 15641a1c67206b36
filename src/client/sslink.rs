//! Connections to storage servers, and the one a client keeps between commands.
//!
//! A READ, STREAM, DOWNLOAD or write session opens a connection to a storage server. When the
//! command ends cleanly (END read, COMMITTED received) the connection is kept ([`Kept`]) and
//! the next command to the same server sends its request there: a pipe of WRITEs or READs
//! then costs one TCP connection, not one per command, on the client and on the server, which
//! serves any number of requests on a connection.
//!
//! A kept connection may be closed by its server meanwhile: a storage server closes
//! connections idle past its `--idle-timeout-s`, and a restarted one has lost them. It is
//! looked at first, without blocking ([`kept::reusable`]). A close that races with the request,
//! or a server gone silent (its host powered off: no close ever arrives), shows as the
//! connection ending, failing, or giving no answer within a new connection's connect timeout;
//! the command then asks the name server again (for a fresh single-use ticket) and goes on a
//! new connection. That is safe because only requests that change nothing until they are
//! answered go on a kept connection: READ, STREAM, DOWNLOAD's read and WRITE_BEGIN (whose
//! sentence lock ends with its connection). UPLOAD, whose request is followed by the file's
//! bytes, always opens its own. An interactive client closes its kept connection before it
//! waits for the person's next line: a connection slot and a thread on the server are worth
//! more than the client's next connect.

use crate::protocol::frame::ConnError;
use crate::protocol::kept;
pub(super) use crate::protocol::kept::peer_closed;
use crate::protocol::{err, Connection, Frame, Message, WireError};
use std::io;
use std::time::{Duration, Instant};

use super::session::{CONNECT_TIMEOUT_MS, REFUSAL_WAIT_MS, SS_REPLY_TIMEOUT_MS};

/// A connection to one storage server.
pub(super) struct SsLink {
    pub(super) ss: String,
    pub(super) addr: String,
    pub(super) conn: Connection,
}

impl SsLink {
    pub(super) fn connect(ss: &str, addr: &str) -> Result<SsLink, WireError> {
        let conn =
            Connection::connect(addr, Duration::from_millis(CONNECT_TIMEOUT_MS)).map_err(|e| {
                err::unavailable(format!(
                    "cannot connect to storage server {ss} at {addr} ({e})"
                ))
            })?;
        conn.set_timeout(Some(Duration::from_millis(SS_REPLY_TIMEOUT_MS)))
            .map_err(|e| err::unavailable(format!("storage server {ss}: {e}")))?;
        Ok(SsLink {
            ss: ss.to_string(),
            addr: addr.to_string(),
            conn,
        })
    }

    pub(super) fn describe(&self) -> String {
        format!("storage server {} at {}", self.ss, self.addr)
    }

    pub(super) fn broken(&self, e: ConnError) -> WireError {
        match e {
            ConnError::Frame(f) => f.into(),
            e if e.timed_out() => {
                err::timeout(format!("{} did not answer in time", self.describe()))
            }
            _ => err::unavailable(format!("lost connection to {}", self.describe())),
        }
    }

    /// After a failed send: the storage server may have refused the request and closed; its
    /// ERR (if one arrived) says why better than the broken pipe does.
    pub(super) fn refused_or_broken(&mut self, e: io::Error) -> WireError {
        let _ = self
            .conn
            .set_timeout(Some(Duration::from_millis(REFUSAL_WAIT_MS)));
        match self.conn.recv() {
            Ok(Some(Frame {
                msg: Message::Err { code, msg },
                ..
            })) => WireError { code, msg },
            _ => self.broken(ConnError::Io(e)),
        }
    }

    /// Reads one frame; end of stream is an error here.
    pub(super) fn recv(&mut self) -> Result<Frame, WireError> {
        match self.conn.recv_some() {
            Ok(f) => Ok(f),
            Err(e) => Err(self.broken(e)),
        }
    }

    /// Sends a request and reads one reply; ERR becomes `Err`.
    pub(super) fn call(&mut self, msg: &Message) -> Result<Message, WireError> {
        let f = self.first_reply(msg)?;
        f.msg.into_result()
    }

    /// Sends `req` and reads the first frame of the answer as it came (an ERR included).
    pub(super) fn first_reply(&mut self, req: &Message) -> Result<Frame, WireError> {
        if let Err(e) = self.conn.send(req, b"") {
            return Err(self.refused_or_broken(e));
        }
        self.recv()
    }

    /// Sends `req` on this kept connection and reads the first frame of the answer, waiting
    /// no longer than a new connection's connect may take. `None` when the connection ended,
    /// failed or stayed silent that long: the caller asks again on a new one.
    pub(super) fn first_reply_kept(mut self, req: &Message) -> Option<(SsLink, Frame)> {
        let by = Instant::now() + Duration::from_millis(CONNECT_TIMEOUT_MS);
        let answer = match self.conn.send(req, b"") {
            Ok(()) => self.conn.recv_by(by),
            Err(e) => Err(e.into()),
        };
        match answer {
            Ok(Some(f)) => Some((self, f)),
            Ok(None) => {
                log::debug!("{} closed the kept connection", self.describe());
                None
            }
            Err(e) => {
                log::debug!("{} lost the kept connection: {e}", self.describe());
                None
            }
        }
    }
}

/// The storage-server connection kept from the last command that ended cleanly.
#[derive(Default)]
pub(super) struct Kept(Option<SsLink>);

impl Kept {
    /// Keeps `link` for the next command (replacing, and so closing, any kept before).
    pub(super) fn keep(&mut self, link: SsLink) {
        self.0 = Some(link);
    }

    /// Closes the kept connection, if any.
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    /// The kept connection to storage server `ss` at `addr`, if there is one that is still
    /// open and holds nothing unread.
    pub(super) fn take(&mut self, ss: &str, addr: &str) -> Option<SsLink> {
        let mut link = self.0.take().filter(|l| l.ss == ss && l.addr == addr)?;
        kept::reusable(&mut link.conn).then_some(link)
    }
}
