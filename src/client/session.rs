//! The client's I/O: one connection to the name server (reconnected on demand) and
//! connections to storage servers, the last one kept for the next command to the same server
//! (see [`super::sslink`]).
//!
//! Every wait has a limit: connects, replies and streamed words all carry timeouts (the
//! constants below), so a stalled server turns into an error line, never a hung client.
//!
//! # Riding through a failover
//!
//! A change that meets a pair between writers waits (one note on stderr, doubling pauses from
//! [`FAILOVER_FIRST_PAUSE_MS`] to [`FAILOVER_MAX_PAUSE_MS`], or an eighth of the lease when
//! that is shorter) and is tried again, for at most
//! [`failover_bound`] of the lease length the name server announced in WELCOME, or the
//! user's `--wait-s`. A retry never applies a change twice; the rule per command:
//!
//! * CREATE, DELETE, UNDO, REVERT, CHECKPOINT, MOVE, CREATEFOLDER, ADDACCESS, REMACCESS,
//!   APPROVE/DISAPPROVE: sent again only when the name server answered that the pair is moving
//!   its writer ([`crate::protocol::MOVING_WRITER`]): it refused before touching any copy, so
//!   the earlier try did nothing; or that the pair changed writers while the change ran
//!   ([`crate::protocol::NOT_APPLIED_TRY_AGAIN`]): the copy it reached was set aside and
//!   nothing was applied. Any other answer ends the command as before; a connection to
//!   the name server lost mid-request is reported, not retried (the change may have been made;
//!   for CREATE a retry would meet CONFLICT for a file that is ours, for UNDO it would undo
//!   twice), and the user sees the state with INFO.
//! * UPLOAD: LOCATE is retried while the pair moves its writer, and a writer that cannot be
//!   reached before any byte was sent is asked for again. A connection lost while the bytes
//!   go out is reported (nothing was stored: the content is whole or absent, never mixed). An
//!   answer lost after END is looked up in the name server's record: a version other than the
//!   ticket's holding this content's checksum means it landed (reported as done); otherwise it
//!   is sent again (at most [`MAX_UPLOAD_TRIES`] times in all).
//! * WRITE: opening the sentence (LOCATE, connect, WRITE_BEGIN) changes nothing, so it is
//!   retried on every UNAVAILABLE from the pair. An open session survives its writer's death
//!   (see [`WriteSession`]): edits are replayed on the new writer, and a commit whose answer
//!   was lost is recognised from the file's version and the sentence's text, never repeated.

use super::parse::Command;
use super::render;
use super::sslink::{peer_closed, Kept, SsLink};
use super::transfer::{self, Progress};
use crate::identity::{self, UserKey};
use crate::protocol::frame::{self, ConnError};
use crate::protocol::{err, AccessMode, Connection, ErrorCode, Frame, Message, Ticket, WireError};
use std::fmt;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one TCP connect may take.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How long the name server may take to answer an ordinary request.
pub const NM_REPLY_TIMEOUT_MS: u64 = 60_000;
/// How long the name server may take to answer EXEC (it runs the script first; its own
/// wall-clock limit, `--exec-timeout-s`, is normally far below this).
pub const EXEC_REPLY_TIMEOUT_MS: u64 = 600_000;
/// How long one FSCK page may take: the name server waits for every copy to be read (each
/// server's check is bounded by the name server's call timeout).
pub const FSCK_PAGE_TIMEOUT_MS: u64 = 120_000;
/// How long a storage server may stay silent (between chunks, words or replies).
pub const SS_REPLY_TIMEOUT_MS: u64 = 30_000;
/// How long a storage server may take to answer COMMIT or the end of an UPLOAD: it makes the
/// change durable and, in sync mode, waits for the backup, which for a large upload means
/// the whole file's replication.
pub const COMMIT_REPLY_TIMEOUT_MS: u64 = 600_000;
/// How long to wait for a storage server's refusal after a send to it failed.
pub(super) const REFUSAL_WAIT_MS: u64 = 1_000;
/// How long the next command keeps trying to reconnect after the name server went away.
pub const RECONNECT_WINDOW_MS: u64 = 5_000;
/// First pause between reconnect attempts; it doubles up to [`RECONNECT_MAX_PAUSE_MS`].
pub const RECONNECT_FIRST_PAUSE_MS: u64 = 100;
/// Longest pause between reconnect attempts.
pub const RECONNECT_MAX_PAUSE_MS: u64 = 1_000;
/// First pause between tries of a change while a pair moves its writer; it doubles up to
/// [`FAILOVER_MAX_PAUSE_MS`].
pub const FAILOVER_FIRST_PAUSE_MS: u64 = 100;
/// Longest pause between tries of a change while a pair moves its writer (an eighth of the
/// lease, when that is shorter).
pub const FAILOVER_MAX_PAUSE_MS: u64 = 1_000;
/// The longest pause is never made shorter than this, however short the lease.
pub const FAILOVER_MIN_PAUSE_MS: u64 = 25;
/// How long a change waits for a failover when the name server did not say its lease length.
pub const DEFAULT_FAILOVER_WAIT_MS: u64 = 30_000;
/// Room over the failover bound for the promotion itself (register, catch-up, new lease).
const FAILOVER_SLACK_MS: u64 = 2_000;

/// How long one failover can keep a pair from taking changes, from the lease length the name
/// server announced: detecting the dead writer takes up to the heartbeat timeout (1.5 leases:
/// the lease is two thirds of it), the old lease must then have ended (one more lease), and
/// the promotion takes a moment.
pub fn failover_bound(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms.saturating_mul(5) / 2 + FAILOVER_SLACK_MS)
}

/// A failed command: the exact line to print, and whether it was a connection failure (which
/// makes the client exit with status 2 rather than 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    /// The line to print (without newline).
    pub text: String,
    /// True when the name server could not be reached or the connection to it broke.
    pub connection: bool,
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<WireError> for CmdError {
    fn from(e: WireError) -> CmdError {
        CmdError {
            text: e.to_string(),
            connection: false,
        }
    }
}

impl From<io::Error> for CmdError {
    /// Only output errors reach this conversion (network errors are mapped where they occur).
    fn from(e: io::Error) -> CmdError {
        err::internal(format!("cannot write output: {e}")).into()
    }
}

impl CmdError {
    fn lost_nm() -> CmdError {
        CmdError {
            text: render::LOST_NM.to_string(),
            connection: true,
        }
    }

    fn text(text: &str) -> CmdError {
        CmdError {
            text: text.to_string(),
            connection: false,
        }
    }
}

/// Why HELLO failed: worth retrying (the server is not there) or not (it refused us).
enum HelloError {
    Unreachable(CmdError),
    Refused(CmdError),
}

impl HelloError {
    fn into_inner(self) -> CmdError {
        match self {
            HelloError::Unreachable(e) | HelloError::Refused(e) => e,
        }
    }
}

/// A client's session with the name server as one user.
pub struct Session {
    nm_addr: String,
    user: String,
    /// The user's key, proved at every (re)connect (see `crate::identity`).
    key: UserKey,
    nm: Option<Connection>,
    /// The lease length the name server announced in WELCOME.
    lease_ms: Option<u64>,
    /// How long a change waits out a failover, when set by the user (`--wait-s`).
    wait: Option<Duration>,
    /// The storage-server connection kept from the last command that ended cleanly.
    kept: Kept,
}

impl Session {
    /// Connects to the name server at `host:port` and says HELLO as `user`, proving the key
    /// in its default key file (created on first use; one attempt).
    pub fn connect(host: &str, port: u16, user: &str) -> Result<Session, CmdError> {
        crate::names::validate_user(user)?;
        let key = UserKey::load_or_create(&identity::default_key_path(user))?;
        Session::connect_with_key(host, port, user, key)
    }

    /// [`Session::connect`] proving `key`.
    pub fn connect_with_key(
        host: &str,
        port: u16,
        user: &str,
        key: UserKey,
    ) -> Result<Session, CmdError> {
        let mut s = Session {
            nm_addr: crate::addr::join(host, port),
            user: user.to_string(),
            key,
            nm: None,
            lease_ms: None,
            wait: None,
            kept: Kept::default(),
        };
        let (conn, lease_ms) = s.hello().map_err(HelloError::into_inner)?;
        s.nm = Some(conn);
        s.lease_ms = lease_ms;
        Ok(s)
    }

    /// Sets how long a change waits out a failover (`None`: one failover with the cluster's
    /// own settings, from WELCOME; zero: fail at once).
    pub fn set_failover_wait(&mut self, wait: Option<Duration>) {
        self.wait = wait;
    }

    /// A failover wait for one change: bounded by [`Session::failover_wait`], its pauses
    /// growing to at most an eighth of the lease (within [`FAILOVER_MIN_PAUSE_MS`] and
    /// [`FAILOVER_MAX_PAUSE_MS`]), so a cluster with short heartbeats is tried again soon
    /// after its promotion rather than up to a second later.
    fn new_failover_wait(&self) -> FailoverWait {
        let max_ms = self.lease_ms.map_or(FAILOVER_MAX_PAUSE_MS, |l| {
            (l / 8).clamp(FAILOVER_MIN_PAUSE_MS, FAILOVER_MAX_PAUSE_MS)
        });
        FailoverWait::new(self.failover_wait(), Duration::from_millis(max_ms))
    }

    /// How long a change waits out a failover.
    fn failover_wait(&self) -> Duration {
        self.wait.unwrap_or_else(|| match self.lease_ms {
            Some(l) => failover_bound(l),
            None => Duration::from_millis(DEFAULT_FAILOVER_WAIT_MS),
        })
    }

    /// One connect and HELLO, CHALLENGE, PROVE, WELCOME exchange; the connection and the
    /// announced lease length.
    fn hello(&self) -> Result<(Connection, Option<u64>), HelloError> {
        let cannot = |reason: String| {
            HelloError::Unreachable(CmdError {
                text: err::unavailable(format!(
                    "cannot connect to name server at {} ({reason})",
                    self.nm_addr
                ))
                .to_string(),
                connection: true,
            })
        };
        let mut c = Connection::connect(&self.nm_addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
            .map_err(|e| cannot(e.to_string()))?;
        c.set_timeout(Some(Duration::from_millis(NM_REPLY_TIMEOUT_MS)))
            .map_err(|e| cannot(e.to_string()))?;
        match identity::handshake(&mut c, &self.user, &self.key) {
            Ok(lease_ms) => Ok((c, lease_ms)),
            // The name server refused us (a bad user name, another key): retrying will not
            // help.
            Err(e) if e.code != crate::protocol::ErrorCode::Unavailable => {
                Err(HelloError::Refused(CmdError {
                    text: e.to_string(),
                    connection: true,
                }))
            }
            Err(e) => Err(cannot(e.msg)),
        }
    }

    /// The live name-server connection, reconnecting (with retries for a few seconds) when
    /// there is none or the server closed the old one while we were idle. When an idle
    /// connection turns out closed and no new one comes up, the command reports the lost
    /// connection; the next command tries again and reports "cannot connect" if it fails.
    fn nm(&mut self) -> Result<&mut Connection, CmdError> {
        let mut dropped = false;
        if self.nm.as_ref().is_some_and(peer_closed) {
            self.nm = None;
            dropped = true;
        }
        if self.nm.is_none() {
            match self.reconnect() {
                Ok((c, lease_ms)) => {
                    self.nm = Some(c);
                    self.lease_ms = lease_ms.or(self.lease_ms);
                }
                // The connection this command would have used is gone and no new one came up.
                Err(HelloError::Unreachable(_)) if dropped => return Err(CmdError::lost_nm()),
                Err(e) => return Err(e.into_inner()),
            }
        }
        self.nm.as_mut().ok_or_else(CmdError::lost_nm)
    }

    /// Connects and says HELLO again, retrying for [`RECONNECT_WINDOW_MS`] with backoff while
    /// the name server is unreachable (it may be restarting).
    fn reconnect(&self) -> Result<(Connection, Option<u64>), HelloError> {
        let deadline = Instant::now() + Duration::from_millis(RECONNECT_WINDOW_MS);
        let mut pause = Duration::from_millis(RECONNECT_FIRST_PAUSE_MS);
        loop {
            match self.hello() {
                Ok(c) => return Ok(c),
                Err(e @ HelloError::Refused(_)) => return Err(e),
                Err(e) => {
                    if Instant::now() + pause > deadline {
                        return Err(e);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(RECONNECT_MAX_PAUSE_MS));
                }
            }
        }
    }

    /// Sends one request to the name server and reads its reply. A broken connection is
    /// dropped (the next command reconnects) and reported as lost.
    fn call_nm(&mut self, msg: &Message, timeout_ms: u64) -> Result<Frame, CmdError> {
        let conn = self.nm()?;
        let _ = conn.set_timeout(Some(Duration::from_millis(timeout_ms)));
        if conn.send(msg, b"").is_err() {
            self.nm = None;
            return Err(CmdError::lost_nm());
        }
        self.recv_nm(timeout_ms)
    }

    /// Reads the next frame of a reply from the name server (the first one after
    /// [`Session::call_nm`], or a further page of a paged listing).
    fn recv_nm(&mut self, timeout_ms: u64) -> Result<Frame, CmdError> {
        // The rest of a reply comes on the connection the request went out on, never a new one.
        let conn = self.nm.as_mut().ok_or_else(CmdError::lost_nm)?;
        let _ = conn.set_timeout(Some(Duration::from_millis(timeout_ms)));
        let result: Result<Frame, CmdError> = match conn.recv_some() {
            Ok(f) => Ok(f),
            Err(ConnError::Frame(e)) => Err(WireError::from(e).into()),
            Err(e) if e.timed_out() => {
                Err(err::timeout("the name server did not answer in time").into())
            }
            Err(_) => Err(CmdError::lost_nm()),
        };
        match result {
            Ok(f) => {
                let msg = f.msg.into_result()?;
                Ok(Frame { msg, body: f.body })
            }
            Err(e) => {
                // After a failed exchange the stream may hold half a reply: never reuse it.
                self.nm = None;
                Err(e)
            }
        }
    }

    /// Sends a request whose answer comes in pages (VIEW, LIST) and gathers every page.
    /// `page` takes a reply apart into its rows and whether more pages follow, or hands back a
    /// reply of the wrong kind.
    fn paged<T>(
        &mut self,
        req: &Message,
        timeout_ms: u64,
        page: impl Fn(Message) -> Result<(Vec<T>, bool), Box<Message>>,
    ) -> Result<Vec<T>, CmdError> {
        let mut reply = self.call_nm(req, timeout_ms)?.msg;
        let mut rows = Vec::new();
        loop {
            match page(reply) {
                Ok((part, more)) => {
                    rows.extend(part);
                    if !more {
                        return Ok(rows);
                    }
                }
                Err(m) => return Err(unexpected(&m, "the name server").into()),
            }
            reply = self.recv_nm(timeout_ms)?.msg;
        }
    }

    /// Runs one name-server or storage-server command and writes its output to `out`.
    /// `WRITE`, `HELP`, `EXIT` and unsupported commands are handled by the caller.
    pub fn execute(&mut self, cmd: &Command, out: &mut dyn Write) -> Result<(), CmdError> {
        let t = NM_REPLY_TIMEOUT_MS;
        match cmd {
            Command::Create { file } => {
                let copies = self.expect_done(&Message::Create { file: file.clone() })?;
                writeln!(out, "{}", render::with_copies(render::CREATED, copies))?;
            }
            Command::Undo { file } => {
                let copies = self.expect_done(&Message::Undo { file: file.clone() })?;
                writeln!(out, "{}", render::with_copies(render::UNDONE, copies))?;
            }
            Command::Delete { file } => {
                let copies = self.expect_done(&Message::Delete { file: file.clone() })?;
                writeln!(out, "{}", render::with_copies(render::DELETED, copies))?;
            }
            Command::RemAccess { file, user } => {
                let copies = self.expect_done(&Message::RemAccess {
                    file: file.clone(),
                    user: user.clone(),
                })?;
                writeln!(out, "{}", render::with_copies(render::REMOVED, copies))?;
            }
            Command::Info { file } => {
                match self.call_nm(&Message::Info { file: file.clone() }, t)?.msg {
                    Message::InfoReply { info } => out.write_all(render::info(&info).as_bytes())?,
                    m => return Err(unexpected(&m, "the name server").into()),
                }
            }
            Command::View { all, long } => {
                let req = Message::View {
                    all: *all,
                    long: *long,
                };
                let files = self.paged(&req, t, |m| match m {
                    Message::FileList { files, more } => Ok((files, more)),
                    m => Err(Box::new(m)),
                })?;
                out.write_all(render::view(&files, *long).as_bytes())?
            }
            Command::List => {
                let users = self.paged(&Message::ListUsers {}, t, |m| match m {
                    Message::Users { users, more } => Ok((users, more)),
                    m => Err(Box::new(m)),
                })?;
                out.write_all(render::arrows(users.iter().map(String::as_str)).as_bytes())?
            }
            Command::AddAccess { file, user, write } => {
                let req = Message::AddAccess {
                    file: file.clone(),
                    user: user.clone(),
                    write: *write,
                };
                match self.call_change(&req)?.msg {
                    Message::AccessGranted { new_user } => {
                        writeln!(out, "{}", render::GRANTED)?;
                        if new_user {
                            writeln!(out, "{}", render::new_user_note(user))?;
                        }
                    }
                    m => return Err(unexpected(&m, "the name server").into()),
                }
            }
            Command::Exec { file } => {
                let f =
                    self.call_nm(&Message::Exec { file: file.clone() }, EXEC_REPLY_TIMEOUT_MS)?;
                match f.msg {
                    Message::ExecOutput { truncated, .. } => {
                        out.write_all(&render::exec_output(&f.body))?;
                        if truncated {
                            writeln!(out, "(output truncated)")?;
                        }
                    }
                    m => return Err(unexpected(&m, "the name server").into()),
                }
            }
            Command::Status => match self.call_nm(&Message::Status {}, t)?.msg {
                Message::StatusReply {
                    servers,
                    pairs,
                    queue_depth,
                    failed,
                    failed_total,
                    replication,
                } => {
                    let view = render::StatusView {
                        servers: &servers,
                        pairs: &pairs,
                        queue_depth,
                        failed: &failed,
                        failed_total,
                        replication: &replication,
                    };
                    out.write_all(render::status(&view, now_ms()).as_bytes())?
                }
                m => return Err(unexpected(&m, "the name server").into()),
            },
            Command::Fsck { file } => self.fsck(file.as_deref(), out)?,
            Command::Recover { ss } => {
                match self.call_nm(&Message::Recover { ss: ss.clone() }, t)?.msg {
                    Message::RecoverQueued { queued } => {
                        writeln!(out, "{}", render::recover_queued(ss, queued))?
                    }
                    m => return Err(unexpected(&m, "the name server").into()),
                }
            }
            Command::CreateFolder { folder } => {
                let req = Message::CreateFolder {
                    folder: folder.clone(),
                };
                let copies = self.expect_done(&req)?;
                writeln!(
                    out,
                    "{}",
                    render::with_copies(render::FOLDER_CREATED, copies)
                )?;
            }
            Command::ViewFolder { folder } => {
                let req = Message::ViewFolder {
                    folder: folder.clone(),
                };
                let entries = self.paged(&req, t, |m| match m {
                    Message::FolderList { entries, more } => Ok((entries, more)),
                    m => Err(Box::new(m)),
                })?;
                out.write_all(render::folder(&entries).as_bytes())?
            }
            Command::Move { file, folder } => {
                let req = Message::Move {
                    file: file.clone(),
                    folder: folder.clone(),
                };
                let copies = self.expect_done(&req)?;
                writeln!(out, "{}", render::with_copies(render::MOVED, copies))?;
            }
            Command::Checkpoint { file, tag } => {
                let req = Message::Checkpoint {
                    file: file.clone(),
                    tag: tag.clone(),
                };
                let copies = self.expect_done(&req)?;
                let line = render::checkpoint_created(tag);
                writeln!(out, "{}", render::with_copies(&line, copies))?;
            }
            Command::Revert { file, tag } => {
                let req = Message::Revert {
                    file: file.clone(),
                    tag: tag.clone(),
                };
                let copies = self.expect_done(&req)?;
                writeln!(
                    out,
                    "{}",
                    render::with_copies(&render::reverted(tag), copies)
                )?;
            }
            Command::ViewCheckpoint { file, tag } => self.read_from(file, Some(tag), out)?,
            Command::ListCheckpoints { file } => {
                let (mut link, ticket) = self.locate(file, AccessMode::Read)?;
                let req = Message::ListCheckpoints {
                    file: ticket.file.clone(),
                    ticket,
                };
                match link.call(&req)? {
                    Message::CheckpointList { checkpoints } => {
                        out.write_all(render::checkpoints(&checkpoints).as_bytes())?
                    }
                    m => return Err(unexpected(&m, &link.describe()).into()),
                }
            }
            Command::RequestAccess { file, kind } => {
                let req = Message::RequestAccess {
                    file: file.clone(),
                    kind: *kind,
                };
                match self.call_nm(&req, t)?.msg {
                    Message::RequestCreated { id } => {
                        writeln!(out, "{}", render::request_created(id))?
                    }
                    m => return Err(unexpected(&m, "the name server").into()),
                }
            }
            Command::ViewRequests => {
                let requests = self.paged(&Message::ViewRequests {}, t, |m| match m {
                    Message::Requests { requests, more } => Ok((requests, more)),
                    m => Err(Box::new(m)),
                })?;
                out.write_all(render::requests(&requests).as_bytes())?
            }
            Command::AnswerRequest { id, approve } => {
                let req = Message::AnswerRequest {
                    id: *id,
                    approve: *approve,
                };
                self.expect_done(&req)?;
                writeln!(out, "{}", render::request_answered(*id, *approve))?;
            }
            Command::Upload { local, file } => self.upload(Path::new(local), file, out)?,
            Command::Download { file, local } => self.download(file, Path::new(local), out)?,
            Command::Read { file } => self.read_from(file, None, out)?,
            Command::Stream { file } => self.stream(file, out)?,
            Command::Write { .. } | Command::Help | Command::Exit => {
                return Err(err::internal("command not handled by the session").into())
            }
        }
        Ok(())
    }

    /// FSCK: asks for the report page by page (the name server checks one page of files at a
    /// time), printing each line as it arrives, then the summary. A missing, stale, corrupt or
    /// quarantined copy makes the command fail with the summary as its error line.
    fn fsck(&mut self, file: Option<&str>, out: &mut dyn Write) -> Result<(), CmdError> {
        let mut tally = render::FsckTally::default();
        let mut after: Option<String> = None;
        let mut any = false;
        loop {
            let req = Message::Fsck {
                file: file.map(str::to_string),
                after: after.take(),
            };
            let mut reply = self.call_nm(&req, FSCK_PAGE_TIMEOUT_MS)?.msg;
            let next = loop {
                match reply {
                    Message::FsckPage {
                        files,
                        more,
                        unlisted_quarantined,
                        next,
                    } => {
                        for f in &files {
                            any = true;
                            tally.add(f);
                            writeln!(out, "{}", render::fsck_line(f))?;
                        }
                        if unlisted_quarantined > 0 {
                            tally.add_quarantined(unlisted_quarantined);
                            writeln!(out, "{}", render::fsck_unlisted(unlisted_quarantined))?;
                        }
                        if !more {
                            break next;
                        }
                    }
                    m => return Err(unexpected(&m, "the name server").into()),
                }
                reply = self.recv_nm(FSCK_PAGE_TIMEOUT_MS)?.msg;
            };
            match next {
                Some(cursor) if file.is_none() => after = Some(cursor),
                _ => break,
            }
        }
        if !any {
            writeln!(out, "{}", render::NO_FILES)?;
        }
        if tally.failed() {
            return Err(CmdError::text(&tally.summary()));
        }
        writeln!(out, "{}", tally.summary())?;
        Ok(())
    }

    /// Sends a change and reads its success: `None` for DONE, `Some((copies, total))` for
    /// DONE_DEGRADED (sync mode with the backup down: still a success).
    fn expect_done(&mut self, req: &Message) -> Result<Option<(u32, u32)>, CmdError> {
        match self.call_change(req)?.msg {
            Message::Done {} => Ok(None),
            Message::DoneDegraded { copies, total } => Ok(Some((copies, total))),
            m => Err(unexpected(&m, "the name server").into()),
        }
    }

    /// Sends a change to the name server, waiting out a failover: an answer that the pair is
    /// moving its writer means nothing was applied, so the same request is sent again (with
    /// backoff) until it is answered otherwise or the wait is spent.
    fn call_change(&mut self, req: &Message) -> Result<Frame, CmdError> {
        let mut wait = self.new_failover_wait();
        loop {
            match self.call_nm(req, NM_REPLY_TIMEOUT_MS) {
                Err(e) if moving_writer(&e.text) && wait.pause(&pair_in(&e.text)) => {}
                r => return r,
            }
        }
    }

    /// LOCATE for a change (WRITE, UPLOAD), connected, waiting out a failover within `wait`:
    /// the pair moving its writer, or its writer unreachable before anything was sent to it,
    /// means nothing was applied, so the client asks again. Any other answer ends the wait.
    fn locate_change(
        &mut self,
        file: &str,
        mode: AccessMode,
        wait: &mut FailoverWait,
    ) -> Result<(SsLink, Ticket), CmdError> {
        loop {
            let (ss, addr, ticket) = self.locate_writer(file, mode, wait)?;
            match SsLink::connect(&ss, &addr) {
                Ok(link) => return Ok((link, ticket)),
                Err(e) if wait.pause(&format!("storage server {ss}")) => log::debug!("{e}"),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `req` (one that changes nothing until answered, on a ticket from a fresh LOCATE)
    /// to storage server `ss` at `addr` and reads the first frame of its answer: on the kept
    /// connection to that server when there is one, else on a new one. `None` when the kept
    /// connection was lost before an answer: the caller LOCATEs again, for a fresh ticket,
    /// and that try goes on a new connection (see [`super::sslink`]).
    fn first_reply(
        &mut self,
        ss: &str,
        addr: &str,
        req: &Message,
    ) -> Option<Result<(SsLink, Frame), WireError>> {
        if let Some(link) = self.kept.take(ss, addr) {
            return link.first_reply_kept(req).map(Ok);
        }
        Some(SsLink::connect(ss, addr).and_then(|mut link| {
            let f = link.first_reply(req)?;
            Ok((link, f))
        }))
    }

    /// Closes the storage-server connection kept from the last command, if any.
    pub fn drop_kept(&mut self) {
        self.kept.clear();
    }

    /// Keeps `link`, whose command ended cleanly, for the next command to its server.
    fn keep(&mut self, link: SsLink) {
        if link
            .conn
            .set_timeout(Some(Duration::from_millis(SS_REPLY_TIMEOUT_MS)))
            .is_ok()
        {
            self.kept.keep(link);
        }
    }

    /// LOCATE for a change, asked again while the pair moves its writer (within `wait`).
    fn locate_writer(
        &mut self,
        file: &str,
        mode: AccessMode,
        wait: &mut FailoverWait,
    ) -> Result<(String, String, Ticket), CmdError> {
        loop {
            match self.locate_avoiding(file, mode, None) {
                Err(e) if moving_writer(&e.text) && wait.pause(&pair_in(&e.text)) => {}
                r => return r,
            }
        }
    }

    /// LOCATE: where the file lives and a ticket to use it there, already connected.
    fn locate(&mut self, file: &str, mode: AccessMode) -> Result<(SsLink, Ticket), CmdError> {
        let (ss, addr, ticket) = self.locate_avoiding(file, mode, None)?;
        Ok((SsLink::connect(&ss, &addr)?, ticket))
    }

    /// LOCATE, asking for a copy other than `avoid` (one that just failed this client).
    fn locate_avoiding(
        &mut self,
        file: &str,
        mode: AccessMode,
        avoid: Option<String>,
    ) -> Result<(String, String, Ticket), CmdError> {
        let req = Message::Locate {
            file: file.to_string(),
            mode,
            avoid,
        };
        match self.call_nm(&req, NM_REPLY_TIMEOUT_MS)?.msg {
            Message::Located { ss, addr, ticket } => Ok((ss, addr, ticket)),
            m => Err(unexpected(&m, "the name server").into()),
        }
    }

    /// Opens a read of `file` (READ, DOWNLOAD, STREAM): LOCATE, connect, send the request
    /// `make` builds and read the first reply. A copy that cannot be reached or refuses as
    /// UNAVAILABLE (down, or stale: behind the name server's record) is never read silently;
    /// the client asks once for the other copy, and reports UNAVAILABLE if there is none. A
    /// copy whose server refuses with LIMIT (all its connection slots taken) is treated the
    /// same way.
    fn open_read(
        &mut self,
        file: &str,
        mode: AccessMode,
        make: impl Fn(Ticket) -> Message,
    ) -> Result<(SsLink, Frame), CmdError> {
        let mut avoid: Option<String> = None;
        let mut full: Option<WireError> = None;
        loop {
            let retry = avoid.is_none();
            let (ss, addr, ticket) = match self.locate_avoiding(file, mode, avoid.clone()) {
                Ok(x) => x,
                // No other copy to try: "that server is full" says more than "no other copy".
                Err(e) => return Err(full.map_or(e, CmdError::from)),
            };
            let Some(opened) = self.first_reply(&ss, &addr, &make(ticket)) else {
                continue;
            };
            let opened = opened.and_then(|(link, first)| match first.msg {
                Message::Err { code, msg } => Err(WireError { code, msg }),
                _ => Ok((link, first)),
            });
            match opened {
                Ok(x) => return Ok(x),
                // LIMIT: that copy's server has no free connection slot; the other may.
                Err(e) if retry && matches!(e.code, ErrorCode::Unavailable | ErrorCode::Limit) => {
                    if e.code == ErrorCode::Limit {
                        full = Some(e);
                    }
                    avoid = Some(ss)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// UPLOAD local f: one pass for the size and CRC32C (of the file and of each chunk), then
    /// LOCATE, UPLOAD and the chunks again, each checked against the first pass and sent with
    /// that CRC32C, then END; a file that changed meanwhile is abandoned before END.
    fn upload(&mut self, local: &Path, file: &str, out: &mut dyn Write) -> Result<(), CmdError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.upload_once(local, file, out)? {
                Uploaded::Done => return Ok(()),
                Uploaded::Lost(e) if tries >= MAX_UPLOAD_TRIES => return Err(e.into()),
                Uploaded::Lost(_) => {}
            }
        }
    }

    /// One UPLOAD. Its answer lost with the writer, the name server's record tells whether it
    /// landed: a version other than the ticket's with this content's checksum means it did
    /// (reported as done, never sent again); otherwise nothing was recorded and it is
    /// [`Uploaded::Lost`], for the caller to send again.
    fn upload_once(
        &mut self,
        local: &Path,
        file: &str,
        out: &mut dyn Write,
    ) -> Result<Uploaded, CmdError> {
        let mut f = transfer::open_local(local)?;
        let scan = transfer::scan(&mut f).map_err(|e| transfer::read_failed(local, e))?;
        let (size, checksum) = (scan.size, scan.checksum);
        let mut wait = self.new_failover_wait();
        let (mut link, ticket) = self.locate_change(file, AccessMode::Upload, &mut wait)?;
        let start = ticket.min_version;
        let req = Message::Upload {
            file: ticket.file.clone(),
            size,
            checksum,
            ticket,
        };
        if let Err(e) = link.conn.send(&req, b"") {
            return Err(link.refused_or_broken(e).into());
        }
        f.seek(SeekFrom::Start(0))
            .map_err(|e| transfer::read_failed(local, e))?;
        let progress = Progress::new(size, "upload");
        let mut buf = vec![0u8; frame::CHUNK_BYTES];
        let mut sent = 0u64;
        // A file that shrank, grew or changed is not the file announced in UPLOAD.
        for want_crc in &scan.chunks {
            let want = (size - sent).min(buf.len() as u64) as usize;
            let n = transfer::read_full(&mut f, &mut buf[..want])
                .map_err(|e| transfer::read_failed(local, e))?;
            let crc = crc32c::crc32c(&buf[..n]);
            if n != want || crc != *want_crc {
                return Err(changed_while_uploading(local).into());
            }
            if let Err(e) = link.conn.send_with_crc(&Message::Chunk {}, &buf[..n], crc) {
                return Err(link.refused_or_broken(e).into());
            }
            sent += n as u64;
            progress.inc(n as u64);
        }
        let grew = transfer::read_full(&mut f, &mut buf[..1])
            .map_err(|e| transfer::read_failed(local, e))?;
        if grew > 0 {
            return Err(changed_while_uploading(local).into());
        }
        if let Err(e) = link.conn.send(&Message::End {}, b"") {
            return Err(link.refused_or_broken(e).into());
        }
        let _ = link
            .conn
            .set_timeout(Some(Duration::from_millis(COMMIT_REPLY_TIMEOUT_MS)));
        let copies = match link.recv() {
            Ok(f) => match f.msg.into_result()? {
                Message::Committed { copies, .. } => copies.map(|c| (c, render::PAIR_COPIES)),
                m => return Err(unexpected(&m, &link.describe()).into()),
            },
            Err(e) if e.code == ErrorCode::Unavailable => {
                let info = match self
                    .call_nm(
                        &Message::Info {
                            file: file.to_string(),
                        },
                        NM_REPLY_TIMEOUT_MS,
                    )?
                    .msg
                {
                    Message::InfoReply { info } => info,
                    m => return Err(unexpected(&m, "the name server").into()),
                };
                if start.is_some_and(|v| v == info.version) || info.checksum != checksum {
                    return Ok(Uploaded::Lost(e));
                }
                None
            }
            Err(e) => return Err(e.into()),
        };
        drop(progress);
        writeln!(
            out,
            "{}",
            render::with_copies(&render::uploaded(size), copies)
        )?;
        Ok(Uploaded::Done)
    }

    /// DOWNLOAD f local: READ into a temporary file beside `local`, checked against READ_OK's
    /// size and checksum, fsynced and renamed into place. On any failure the temporary file is
    /// removed and an existing `local` is left as it was.
    fn download(&mut self, file: &str, local: &Path, out: &mut dyn Write) -> Result<(), CmdError> {
        let mut tmp = transfer::TempFile::beside(local)?;
        let (mut link, first) = self.open_read(file, AccessMode::Read, |ticket| Message::Read {
            file: ticket.file.clone(),
            ticket,
        })?;
        let (size, checksum) = match first.msg {
            Message::ReadOk { size, checksum, .. } => (size, checksum),
            m => return Err(unexpected(&m, &link.describe()).into()),
        };
        let progress = Progress::new(size, "download");
        let (mut got, mut crc) = (0u64, 0u32);
        loop {
            let f = link.recv()?;
            match f.msg {
                Message::Chunk {} => {
                    got += f.body.len() as u64;
                    if got > size {
                        return Err(failed_check(&link.ss, got, size).into());
                    }
                    crc = crc32c::crc32c_append(crc, &f.body);
                    tmp.write_all(&f.body)
                        .map_err(|e| transfer::write_failed(local, e))?;
                    progress.inc(f.body.len() as u64);
                }
                Message::End {} => break,
                Message::Err { code, msg } => return Err(WireError { code, msg }.into()),
                m => return Err(unexpected(&m, &link.describe()).into()),
            }
        }
        if got != size || crc != checksum {
            return Err(failed_check(&link.ss, got, size).into());
        }
        self.keep(link);
        tmp.persist(local)?;
        drop(progress);
        writeln!(out, "{}", render::downloaded(size))?;
        Ok(())
    }

    /// READ (or, with a tag, VIEWCHECKPOINT): the bytes exactly, then a newline; the whole
    /// content's CRC is checked at the end. A copy that is down or behind is left for the
    /// pair's other member (see [`Session::open_read`]).
    fn read_from(
        &mut self,
        file: &str,
        tag: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<(), CmdError> {
        let (mut link, first) = self.open_read(file, AccessMode::Read, |ticket| match tag {
            None => Message::Read {
                file: ticket.file.clone(),
                ticket,
            },
            Some(tag) => Message::ReadCheckpoint {
                file: ticket.file.clone(),
                tag: tag.to_string(),
                ticket,
            },
        })?;
        let (size, checksum) = match first.msg {
            Message::ReadOk { size, checksum, .. } => (size, checksum),
            m => return Err(unexpected(&m, &link.describe()).into()),
        };
        let mut got: u64 = 0;
        let mut crc: u32 = 0;
        let outcome = loop {
            match link.recv() {
                Ok(f) => match f.msg {
                    Message::Chunk {} => {
                        out.write_all(&f.body)?;
                        crc = crc32c::crc32c_append(crc, &f.body);
                        got += f.body.len() as u64;
                    }
                    Message::End {} => break Ok(()),
                    Message::Err { code, msg } => break Err(WireError { code, msg }),
                    m => break Err(unexpected(&m, &link.describe())),
                },
                Err(e) => break Err(e),
            }
        };
        if got > 0 || outcome.is_ok() {
            out.write_all(b"\n")?;
        }
        outcome?;
        if got != size || crc != checksum {
            return Err(failed_check(&link.ss, got, size).into());
        }
        self.keep(link);
        Ok(())
    }

    /// STREAM: each word as it arrives, space-separated and flushed, then a newline.
    fn stream(&mut self, file: &str, out: &mut dyn Write) -> Result<(), CmdError> {
        let (mut link, first) =
            self.open_read(file, AccessMode::Stream, |ticket| Message::Stream {
                file: ticket.file.clone(),
                ticket,
            })?;
        let mut words = 0u64;
        let mut first = Some(first);
        let outcome = loop {
            let next = match first.take() {
                Some(f) => Ok(Some(f)),
                None => link.conn.recv(),
            };
            match next {
                Ok(Some(f)) => match f.msg {
                    Message::Word {} => {
                        if words > 0 {
                            out.write_all(b" ")?;
                        }
                        out.write_all(&f.body)?;
                        out.flush()?;
                        words += 1;
                    }
                    Message::End {} => break Ok(()),
                    Message::Err { code, msg } => break Err(WireError { code, msg }.into()),
                    m => break Err(unexpected(&m, &link.describe()).into()),
                },
                Ok(None) | Err(_) => break Err(CmdError::text(render::STREAM_BROKEN)),
            }
        };
        if words > 0 || outcome.is_ok() {
            out.write_all(b"\n")?;
        }
        if outcome.is_ok() {
            self.keep(link);
        }
        outcome
    }

    /// WRITE f i: opens a write session on the writer of `file`'s pair, waiting out a failover.
    pub fn begin_write(&mut self, file: &str, sentence: u64) -> Result<WriteSession, CmdError> {
        let opened = self.open_sentence(file, sentence)?;
        Ok(WriteSession {
            file: file.to_string(),
            sentence,
            text: opened.text.clone(),
            version: opened.version,
            link: Some(opened.link),
            edits: Vec::new(),
        })
    }

    /// LOCATE and WRITE_BEGIN, tried again while the pair moves its writer: opening a sentence
    /// changes nothing, so a writer that is unreachable, drops the connection or answers
    /// UNAVAILABLE is simply asked again (through a fresh LOCATE) until the wait is spent.
    fn open_sentence(&mut self, file: &str, sentence: u64) -> Result<Opened, CmdError> {
        let mut wait = self.new_failover_wait();
        loop {
            let (ss, addr, ticket) = self.locate_writer(file, AccessMode::Write, &mut wait)?;
            let version = ticket.min_version;
            let req = Message::WriteBegin {
                file: ticket.file.clone(),
                sentence,
                ticket,
            };
            let Some(opened) = self.first_reply(&ss, &addr, &req) else {
                continue;
            };
            let opened = opened.and_then(|(link, f)| Ok((f.msg.into_result()?, f.body, link)));
            match opened {
                Ok((Message::WriteOpened {}, body, link)) => {
                    return Ok(Opened {
                        link,
                        text: body_text(body),
                        version,
                    })
                }
                Ok((m, _, link)) => return Err(unexpected(&m, &link.describe()).into()),
                Err(e)
                    if e.code == ErrorCode::Unavailable
                        && wait.pause(&format!("storage server {ss}")) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How often one UPLOAD is sent when its answers are lost with their writers.
const MAX_UPLOAD_TRIES: u32 = 3;

/// What one UPLOAD came to.
enum Uploaded {
    /// Stored, and reported.
    Done,
    /// The answer was lost and the name server has not recorded the content: not stored.
    Lost(WireError),
}

/// A sentence opened for writing: the connection holding its lock, its text, and the file's
/// version the name server recorded when the ticket was minted.
struct Opened {
    link: SsLink,
    text: String,
    version: Option<crate::protocol::Version>,
}

/// True when `text` (a printed error) says a pair is between writers and nothing was
/// applied: the pair is moving its writer, or it changed writers while the change ran.
///
/// The first answer ends `pair <server> is moving its writer (epoch <n>)`, after the file's
/// name; the second begins `pair <server> changed writers while` and ends
/// [`crate::protocol::NOT_APPLIED_TRY_AGAIN`]. Only those shapes count, so a file name that
/// happens to hold the words in some other answer is never taken for them.
fn moving_writer(text: &str) -> bool {
    let Some(msg) = text.strip_prefix(&format!("ERROR [{}]: ", ErrorCode::Unavailable)) else {
        return false;
    };
    let changed_writers = msg
        .strip_prefix("pair ")
        .and_then(|m| m.split_once(' '))
        .is_some_and(|(server, rest)| {
            !server.is_empty()
                && rest.starts_with("changed writers while ")
                && rest.ends_with(crate::protocol::NOT_APPLIED_TRY_AGAIN)
        });
    changed_writers
        || msg.rsplit_once(": pair ").is_some_and(|(_, tail)| {
            tail.split_once(' ').is_some_and(|(server, rest)| {
                !server.is_empty()
                    && rest
                        .strip_prefix(crate::protocol::MOVING_WRITER)
                        .and_then(|r| r.strip_prefix(" (epoch "))
                        .and_then(|r| r.strip_suffix(')'))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
}

/// The pair named in a "pair p is moving its writer" answer (for the note on stderr).
fn pair_in(text: &str) -> String {
    let head = match text.split_once(" changed writers while ") {
        Some((head, _)) => head,
        None => text
            .split(crate::protocol::MOVING_WRITER)
            .next()
            .unwrap_or(text),
    };
    head.rsplit_once("pair ")
        .map(|(_, p)| format!("pair {}", p.trim()))
        .unwrap_or_else(|| "the storage pair".to_string())
}

/// The wait of one change for a failover: a deadline, a doubling pause, and the one note on
/// stderr (standard output carries only the command's own result, so scripts keep theirs).
pub struct FailoverWait {
    deadline: Instant,
    pause: Duration,
    max_pause: Duration,
    noted: bool,
}

impl FailoverWait {
    /// A wait of at most `bound` whose pauses double up to `max_pause`; a zero bound never
    /// waits.
    pub fn new(bound: Duration, max_pause: Duration) -> FailoverWait {
        FailoverWait {
            deadline: Instant::now() + bound,
            pause: Duration::from_millis(FAILOVER_FIRST_PAUSE_MS).min(max_pause),
            max_pause,
            noted: false,
        }
    }

    /// Sleeps before the next try, noting once on stderr who is awaited; false (without
    /// sleeping) when the wait is spent.
    pub fn pause(&mut self, who: &str) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        if !self.noted {
            self.noted = true;
            eprintln!("waiting for {who} to finish failover…");
        }
        std::thread::sleep(self.pause.min(self.deadline - now));
        self.pause = (self.pause * 2).min(self.max_pause);
        true
    }
}

/// Sentence text from a frame body (storage servers send UTF-8; anything else is shown lossily).
fn body_text(body: Vec<u8>) -> String {
    String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Content from a storage server that does not match the size and checksum it announced.
fn failed_check(ss: &str, got: u64, size: u64) -> WireError {
    err::internal(format!(
        "the content from {ss} failed its check ({got} of {size} bytes)"
    ))
}

/// The local file is no longer the one whose size and checksum UPLOAD announced.
fn changed_while_uploading(local: &Path) -> WireError {
    err::conflict(format!(
        "local file {} changed while it was being uploaded; nothing was stored",
        transfer::show(local)
    ))
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unexpected(m: &Message, from: &str) -> WireError {
    err::internal(format!("unexpected reply {} from {from}", m.op_name()))
}

/// Why an EDIT failed.
#[derive(Debug)]
pub enum EditError {
    /// The storage server refused this edit; the session goes on.
    Refused(CmdError),
    /// The session is over: its connection broke and it could not be opened again.
    Broken(CmdError),
}

/// How often one session opens its sentence again after losing its writer.
const MAX_REOPENS: u32 = 4;

/// An open write session on one sentence. Dropping it closes the connection, which abandons
/// the session and releases the sentence lock on the storage server.
///
/// The session keeps every accepted edit with the sentence it produced, so a writer lost
/// before the commit costs nothing: [`WriteSession::edit`] and [`WriteSession::commit`] open
/// the same sentence on the pair's new writer (waiting out the failover), check that it
/// still reads as it did when the session began, and replay the edits, each of which must
/// produce the sentence it produced before. A sentence changed meanwhile ends the session with
/// CONFLICT and nothing applied. A writer lost after COMMIT was sent leaves the outcome
/// unknown; the client then looks at the file: the name server's version unchanged since the
/// session began, or the sentence still reading as it began, means the commit did not land
/// and it is replayed; the sentence reading as committed means it landed (reported as
/// written, never committed again); anything else is CONFLICT.
pub struct WriteSession {
    file: String,
    sentence: u64,
    link: Option<SsLink>,
    /// The sentence's text when the session opened (empty for a new sentence slot).
    text: String,
    /// The file's version recorded by the name server when the session opened.
    version: Option<crate::protocol::Version>,
    /// Accepted edits: word index, text, and the sentence as it read after the edit.
    edits: Vec<(u64, String, String)>,
}

impl WriteSession {
    /// The sentence's text when the session opened (empty for a new sentence slot).
    pub fn opened_text(&self) -> &str {
        &self.text
    }

    /// Inserts `text` before word `word_index`; returns the sentence as edited so far. A lost
    /// writer is replaced (see the type's docs) and the edit sent again. This is the one way
    /// an edit line reaches a storage server: the text travels in the frame body, so an edit
    /// is limited only by the sentence limit the storage server names.
    pub fn edit(
        &mut self,
        session: &mut Session,
        word_index: u64,
        text: &str,
    ) -> Result<String, EditError> {
        // One frame body carries the edit; the storage server could only refuse it by closing.
        if text.len() > frame::MAX_BODY_BYTES {
            return Err(EditError::Refused(
                err::limit(format!(
                    "sentence too long: the edit alone is {} bytes, limit {}",
                    text.len(),
                    frame::MAX_BODY_BYTES
                ))
                .into(),
            ));
        }
        let mut reopens = 0;
        loop {
            let sent = match self.link.as_mut() {
                Some(link) => send_edit(link, word_index, text),
                None => Err(err::unavailable("the session has no writer")),
            };
            match sent {
                Ok(Ok(sentence)) => {
                    self.edits
                        .push((word_index, text.to_string(), sentence.clone()));
                    return Ok(sentence);
                }
                Ok(Err(refused)) => return Err(EditError::Refused(refused.into())),
                Err(e) if e.code == ErrorCode::Unavailable && reopens < MAX_REOPENS => {
                    reopens += 1;
                    self.link = None;
                    let opened = self.reopen(session).map_err(EditError::Broken)?;
                    self.replay(opened).map_err(EditError::Broken)?;
                }
                Err(e) => return Err(EditError::Broken(e.into())),
            }
        }
    }

    /// ETIRW: commits the session (consumes it whatever the outcome). Returns the sync-mode
    /// copy count `(copies, total)` when the change reached fewer than all copies.
    pub fn commit(mut self, session: &mut Session) -> Result<Option<(u32, u32)>, CmdError> {
        let mut reopens = 0;
        loop {
            let link = match self.link.as_mut() {
                Some(link) => link,
                None => {
                    let opened = self.reopen(session)?;
                    self.replay(opened)?;
                    continue;
                }
            };
            let _ = link
                .conn
                .set_timeout(Some(Duration::from_millis(COMMIT_REPLY_TIMEOUT_MS)));
            let answer = match link.conn.send(&Message::Commit {}, b"") {
                Ok(()) => link.recv(),
                Err(e) => Err(link.broken(ConnError::Io(e))),
            };
            match answer {
                Ok(f) => {
                    return match f.msg.into_result()? {
                        Message::Committed { copies, .. } => {
                            if let Some(link) = self.link.take() {
                                session.keep(link);
                            }
                            Ok(copies.map(|c| (c, render::PAIR_COPIES)))
                        }
                        m => Err(unexpected(&m, &link.describe()).into()),
                    }
                }
                // The answer is lost: the commit may or may not have landed.
                Err(e) if e.code == ErrorCode::Unavailable && reopens < MAX_REOPENS => {
                    reopens += 1;
                    self.link = None;
                    let opened = self.reopen(session)?;
                    if self.landed(&opened)? {
                        return Ok(None);
                    }
                    self.replay(opened)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens the session's sentence again on the pair's current writer.
    fn reopen(&self, session: &mut Session) -> Result<Opened, CmdError> {
        session
            .open_sentence(&self.file, self.sentence)
            .map_err(|e| match e.text.split_once("]: ") {
                // The sentence is gone or taken: it changed under the session.
                Some((code, why))
                    if code.ends_with(ErrorCode::Invalid.as_str())
                        || code.ends_with(ErrorCode::Locked.as_str()) =>
                {
                    self.conflict(why).into()
                }
                _ => e,
            })
    }

    /// Whether a commit whose answer was lost landed, judged on the sentence just opened
    /// again (see the type's docs). Err CONFLICT when it cannot be told, so the session is
    /// never committed twice.
    ///
    /// The name server's version is the authority: unchanged since the session opened, it
    /// holds no record of the commit, so the cluster's copy does not have it (a copy the dead
    /// writer saved without reporting it is set aside by recovery) and replaying is right.
    /// Changed, something was committed; the sentence's text then says whether it was this
    /// session. A commit whose first sentence reads as the sentence did before (an edit that
    /// added whole sentences after it) leaves that text unchanged either way: that case is
    /// refused, not guessed.
    fn landed(&self, opened: &Opened) -> Result<bool, CmdError> {
        if opened.version.is_some() && opened.version == self.version {
            return Ok(false);
        }
        let committed = self
            .edits
            .last()
            .map_or(self.text.as_str(), |(_, _, s)| s.as_str());
        // The committed sentence may have split in several; the reopened one is the first.
        let first = crate::ss::document::Document::parse(committed)
            .words(0)
            .join(" ");
        if opened.text == self.text {
            if first == self.text {
                return Err(self
                    .conflict(
                        "the commit's answer was lost and the sentence reads the same whether                          or not it landed; nothing was sent again: READ the file to check",
                    )
                    .into());
            }
            return Ok(false);
        }
        if opened.text == first || opened.text.starts_with(committed) {
            return Ok(true);
        }
        Err(self
            .conflict("it reads differently now and the commit's answer was lost")
            .into())
    }

    /// Replays the session's edits on a sentence opened again; each must give the sentence it
    /// gave before.
    fn replay(&mut self, opened: Opened) -> Result<(), CmdError> {
        if opened.text != self.text {
            return Err(self.conflict("another writer changed it").into());
        }
        let mut link = opened.link;
        for (k, text, before) in &self.edits {
            match send_edit(&mut link, *k, text) {
                Ok(Ok(now)) if now == *before => {}
                Ok(_) => return Err(self.conflict("an edit no longer applies").into()),
                Err(e) => return Err(e.into()),
            }
        }
        self.link = Some(link);
        Ok(())
    }

    /// The error that ends a session whose sentence changed while its writer failed over.
    fn conflict(&self, why: &str) -> WireError {
        err::conflict(format!(
            "sentence {} of {} changed while its writer failed over ({why}); this session's edits were not applied",
            self.sentence, self.file
        ))
    }
}

/// Sends one EDIT and reads its answer: Ok(Ok(sentence)), Ok(Err(refusal)), or Err when the
/// connection broke.
fn send_edit(
    link: &mut SsLink,
    word_index: u64,
    text: &str,
) -> Result<Result<String, WireError>, WireError> {
    let req = Message::Edit { word_index };
    if let Err(e) = link.conn.send(&req, text.as_bytes()) {
        return Err(link.refused_or_broken(e));
    }
    let reply = link.recv()?;
    match reply.msg {
        Message::Sentence {} => Ok(Ok(body_text(reply.body))),
        Message::Err { code, msg } => Ok(Err(WireError { code, msg })),
        m => Err(unexpected(&m, &link.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_name_servers_moving_writer_answer_is_waited_out() {
        let m = crate::protocol::MOVING_WRITER;
        assert!(moving_writer(&format!(
            "ERROR [UNAVAILABLE]: a.txt cannot take changes for a moment: pair ss1 {m} (epoch 2)"
        )));
        // The words inside a file name in another answer, or another code, are not it.
        assert!(!moving_writer(&format!(
            "ERROR [UNAVAILABLE]: the move of x: pair b {m} may or may not have been made"
        )));
        assert!(!moving_writer(&format!(
            "ERROR [CONFLICT]: a.txt cannot take changes for a moment: pair ss1 {m} (epoch 2)"
        )));
        assert!(!moving_writer("ERROR [UNAVAILABLE]: no live copy of a.txt"));
        let not_applied = format!(
            "ERROR [UNAVAILABLE]: pair ss1 changed writers while the change to a.txt ran; {}",
            crate::protocol::NOT_APPLIED_TRY_AGAIN
        );
        assert!(moving_writer(&not_applied));
        assert_eq!(pair_in(&not_applied), "pair ss1");
        assert_eq!(
            pair_in(&format!(
                "ERROR [UNAVAILABLE]: a.txt cannot take changes for a moment: pair ss1 {m} (epoch 2)"
            )),
            "pair ss1"
        );
    }
}
