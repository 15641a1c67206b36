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
    Basis, ContentCounter, CopyIn, Store, StoreError, TempFile, MAX_CHECKPOINTS, UNDO_DEPTH,
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

/// Accepts connections until `shared.stop` is set (the caller then connects once to wake it).
pub fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections refused for want of descriptors in the current burst (0: none).
    let mut fd_refused = 0u64;
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) if crate::limits::is_fd_exhaustion(&e) => {
                if fd_refused == 0 {
                    log::warn!(target: ev::ACCEPT_FD_EXHAUSTED, server = "ss", error = e.to_string();
                        "cannot accept: {e}; retrying every {ACCEPT_RETRY_MS} ms");
                }
                fd_refused += 1;
                // The connection stays queued; accept blocks, so waiting is no busy loop.
                thread::sleep(Duration::from_millis(ACCEPT_RETRY_MS));
                continue;
            }
            Err(e) => {
                log::warn!(target: ev::SS_REFUSED, "accept failed: {e}");
                continue;
            }
        };
        if fd_refused > 0 {
            log::info!(target: ev::ACCEPT_FD_EXHAUSTED, server = "ss", refused = fd_refused;
                "descriptors available again after {fd_refused} failed accepts");
            fd_refused = 0;
        }
        if shared.conns.fetch_add(1, Ordering::SeqCst) >= shared.max_connections {
            shared.conns.fetch_sub(1, Ordering::SeqCst);
            refuse_busy(stream, shared.max_connections);
            continue;
        }
        let slot = ConnSlot(shared.clone());
        let spawned = thread::Builder::new()
            .name("ss-conn".into())
            .spawn(move || serve(stream, slot));
        if let Err(e) = spawned {
            log::warn!(target: ev::SS_REFUSED, "cannot start a connection thread: {e}");
        }
    }
}

fn refuse_busy(stream: TcpStream, max: usize) {
    log::warn!(target: ev::SS_REFUSED, reason = "connections"; "refusing a connection: {max} already open");
    let mut conn = Connection::new(stream);
    let _ = conn.set_timeout(Some(Duration::from_millis(1_000)));
    let e = err::limit(format!(
        "too many connections (limit {max}); try again later"
    ));
    let _ = conn.send(&Message::err(e), &[]);
}

fn serve(stream: TcpStream, slot: ConnSlot) {
    let shared = &slot.0;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut conn = Connection::new(stream);
    conn.set_budget(shared.budget.clone());
    let idle_ms = shared.idle_timeout_ms;
    // A new connection must deliver its first (ticketed) request quickly: a peer that opens
    // sockets and trickles bytes cannot keep connection slots from real clients for long.
    let mut frame_ms = FIRST_FRAME_TIMEOUT_MS.min(idle_ms);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if conn
            .set_timeout(Some(Duration::from_millis(idle_ms)))
            .is_err()
        {
            break;
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(frame_ms);
        frame_ms = idle_ms;
        let frame = match conn.recv_by(deadline) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(ConnError::Frame(fe)) => {
                log::warn!(target: ev::SS_REFUSED, peer = peer.as_str(), reason = "frame"; "malformed input from {peer}: {fe}");
                let _ = conn.send(&Message::err(fe.into()), &[]);
                break;
            }
            Err(_) => break,
        };
        let result = match frame.msg {
            Message::Read { file, ticket } => read(shared, &mut conn, &file, &ticket),
            Message::Stream { file, ticket } => stream_words(shared, &mut conn, &file, &ticket),
            Message::WriteBegin {
                file,
                sentence,
                ticket,
            } => write_session(shared, &mut conn, &file, sentence, &ticket),
            Message::SsCreate {
                file,
                owner,
                epoch,
                ticket,
            } => create(shared, &mut conn, &file, &owner, epoch, &ticket),
            Message::SsDelete { file, ticket } => delete(shared, &mut conn, &file, &ticket),
            Message::SsUndo {
                file,
                epoch,
                ticket,
            } => undo(shared, &mut conn, &file, epoch, &ticket),
            Message::PeekFile { file, ticket } => peek(shared, &mut conn, &file, &ticket),
            Message::SsQuarantine { file, keep, ticket } => {
                quarantine(shared, &mut conn, &file, keep, &ticket)
            }
            Message::GetFileContent {
                file,
                have,
                have_checkpoints,
                staged,
                basis,
                ticket,
            } => get_content(
                shared,
                &mut conn,
                &file,
                &have,
                &have_checkpoints,
                Ask::Whole {
                    staged,
                    basis: basis.map(|b| (b.version, b.checksum)),
                },
                &ticket,
            ),
            Message::GetFileDelta {
                file,
                have,
                have_checkpoints,
                avg_bits,
                count,
                basis,
                basis_checksum,
                ticket,
            } => delta::parse_request(avg_bits, count, &frame.body).and_then(|(p, index)| {
                let ask = DeltaAsk {
                    params: p,
                    index: &index,
                    basis: (basis, basis_checksum),
                };
                get_content(
                    shared,
                    &mut conn,
                    &file,
                    &have,
                    &have_checkpoints,
                    Ask::Delta(ask),
                    &ticket,
                )
            }),
            Message::Signature {
                file,
                avg_bits,
                ticket,
            } => delta::signature(shared, &mut conn, &file, avg_bits, &ticket),
            Message::PutFileDelta {
                file,
                state,
                undo,
                sent,
                checkpoints,
                sent_checkpoints,
                basis,
                basis_checksum,
                ticket,
            } => {
                let head = PutHead {
                    file: &file,
                    state: &state,
                    undo: &undo,
                    sent: &sent,
                    checkpoints: &checkpoints,
                    sent_checkpoints: &sent_checkpoints,
                    basis: Some((basis, basis_checksum)),
                    ops: true,
                    staged: None,
                };
                put_content(shared, &mut conn, &head, &ticket)
            }
            Message::PutFileContent {
                file,
                state,
                undo,
                sent,
                checkpoints,
                sent_checkpoints,
                staged,
                basis,
                ticket,
            } => {
                let head = PutHead {
                    file: &file,
                    state: &state,
                    undo: &undo,
                    sent: &sent,
                    checkpoints: &checkpoints,
                    sent_checkpoints: &sent_checkpoints,
                    basis: basis.map(|b| (b.version, b.checksum)),
                    ops: false,
                    staged: staged.as_deref(),
                };
                put_content(shared, &mut conn, &head, &ticket)
            }
            Message::ReadCheckpoint { file, tag, ticket } => {
                read_checkpoint(shared, &mut conn, &file, &tag, &ticket)
            }
            Message::ListCheckpoints { file, ticket } => {
                list_checkpoints(shared, &mut conn, &file, &ticket)
            }
            Message::SsCheckpoint {
                file,
                tag,
                creator,
                epoch,
                ticket,
            } => checkpoint(shared, &mut conn, &file, &tag, &creator, epoch, &ticket),
            Message::SsRevert {
                file,
                tag,
                epoch,
                ticket,
            } => revert(shared, &mut conn, &file, &tag, epoch, &ticket),
            Message::SsMove {
                file,
                to,
                version,
                ticket,
            } => move_file(shared, &mut conn, &file, &to, version, &ticket),
            Message::SsMkdir { folders, ticket } => mkdir(shared, &mut conn, &folders, &ticket),
            Message::Upload {
                file,
                size,
                checksum,
                ticket,
            } => upload(shared, &mut conn, &file, size, checksum, &ticket),
            Message::StageUpload {
                file,
                size,
                checksum,
                ticket,
            } => staging::stage_upload(shared, &mut conn, &file, size, checksum, &ticket),
            Message::CheckFiles {
                files,
                orphans,
                ticket,
            } => check_files(shared, &mut conn, &files, orphans, &ticket),
            Message::PutBatch {} => put_batch(shared, &mut conn),
            other => Err(Fail::Reply(err::invalid(format!(
                "unexpected {} on a storage server's client port",
                other.op_name()
            )))),
        };
        match result {
            Ok(()) => {}
            Err(Fail::Reply(e)) => {
                if conn.send(&Message::err(e), &[]).is_err() {
                    break;
                }
            }
            Err(Fail::ReplyClose(e)) => {
                let _ = conn.send(&Message::err(e), &[]);
                break;
            }
            Err(Fail::Close) => break,
        }
    }
}

/// Refuses a change unless this server is its pair's writer, holds a live write lease, and
/// is on the epoch the ticket was minted for (see `NmLink::check_write`).
fn may_change(shared: &Shared, t: &Ticket) -> Result<(), WireError> {
    shared.link.check_write(t.epoch, shared.store.epoch())
}

/// A name-server change of `file` (DELETE, UNDO, REVERT, MOVE, quarantine) is refused with
/// LOCKED while a write session is open on it; called with the file's lock held.
fn refuse_if_writing(shared: &Shared, file: &str) -> Result<(), WireError> {
    if shared.sessions.any_open(file) {
        return Err(err::locked(format!(
            "{} is being written; try again when the write session ends",
            names::display(file)
        )));
    }
    Ok(())
}

/// Checks the name and the ticket for one request.
fn authorise(shared: &Shared, file: &str, t: &Ticket, op: TicketOp) -> Result<(), WireError> {
    let canonical = names::canonical_file(file)?;
    if canonical != file {
        return Err(err::invalid(format!(
            "'{file}' is not a canonical file name"
        )));
    }
    shared.checker.check(t, file, op).inspect_err(|e| {
        log::warn!(target: ev::SS_REFUSED, file = file, user = t.user.as_str(), reason = e.msg.as_str();
            "refused {op:?} of {file} by {}: {}", t.user, e.msg);
    })
}

/// A file deleted by hand is reported to the name server when an access finds it gone.
fn vanished<'a>(shared: &'a Shared, file: &'a str) -> impl FnOnce(StoreError) -> Fail + 'a {
    move |e| {
        if matches!(e, StoreError::NotFound(_)) && shared.store.forget_vanished(file) {
            shared.link.removed_nowait(file);
        }
        Fail::from(e)
    }
}

/// A hand edit found on access is a new version the name server must hear about, and hear
/// about before the access is answered: a client that reads the adopted bytes and then asks
/// INFO must see the same version. If the name server does not confirm in time the access
/// still proceeds; the adoption is on disk and is reconciled when this server re-registers.
fn report_adopted(shared: &Shared, adopted: bool, state: impl FnOnce() -> FileState) {
    if adopted {
        let _ = shared
            .link
            .changed(state(), Duration::from_millis(CHANGED_ACK_TIMEOUT_MS));
    }
}

fn check_fresh(
    shared: &Shared,
    t: &Ticket,
    have: crate::protocol::Version,
) -> Result<(), WireError> {
    match t.min_version {
        Some(min) if min > have => Err(err::unavailable(format!(
            "stale copy on {}: version {have}, need {min}",
            shared.store.name()
        ))),
        _ => Ok(()),
    }
}

fn read(shared: &Shared, conn: &mut Connection, file: &str, t: &Ticket) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Read)?;
    let (mut f, meta, adopted) = shared
        .store
        .snapshot(file)
        .map_err(vanished(shared, file))?;
    report_adopted(shared, adopted, || meta.state(file));
    check_fresh(shared, t, meta.version)?;
    conn.send(
        &Message::ReadOk {
            size: meta.size,
            version: meta.version,
            checksum: meta.checksum,
        },
        &[],
    )?;
    send_part(conn, &mut f, meta.size)
}

fn stream_words(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Stream)?;
    let (mut f, meta, adopted) = shared
        .store
        .snapshot(file)
        .map_err(vanished(shared, file))?;
    report_adopted(shared, adopted, || meta.state(file));
    check_fresh(shared, t, meta.version)?;
    // Words are cut from the file as it is read, so a large file streams in bounded memory.
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(&mut f);
    let mut word: Vec<u8> = Vec::new();
    let mut sent_any = false;
    let mut send_word = |conn: &mut Connection, word: &mut Vec<u8>| -> Result<(), Fail> {
        if word.is_empty() {
            return Ok(());
        }
        if sent_any {
            thread::sleep(Duration::from_millis(STREAM_WORD_INTERVAL_MS));
        }
        sent_any = true;
        let w = String::from_utf8_lossy(word).into_owned();
        word.clear();
        conn.send(&Message::Word {}, w.as_bytes())?;
        Ok(())
    };
    loop {
        let chunk = reader
            .fill_buf()
            .map_err(|e| err::internal(format!("reading {file}: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        for &b in chunk {
            if b.is_ascii_whitespace() {
                send_word(conn, &mut word)?;
            } else {
                word.push(b);
                // A WORD frame must fit under the header cap: an endless token goes in pieces
                // (cut at a character boundary where the bytes are UTF-8).
                if word.len() >= MAX_STREAM_WORD_BYTES && (b & 0xC0) != 0x80 {
                    let last = word.pop();
                    send_word(conn, &mut word)?;
                    word.extend(last);
                }
            }
        }
        reader.consume(n);
    }
    send_word(conn, &mut word)?;
    conn.send(&Message::End {}, &[])?;
    Ok(())
}

/// Releases a session's lock however the session ends.
struct SessionGuard<'a> {
    sessions: &'a Sessions,
    file: &'a str,
    id: u64,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.sessions.close(self.file, self.id);
    }
}

fn write_session(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    sentence: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Write)?;
    may_change(shared, t)?;
    let i = usize::try_from(sentence).map_err(|_| err::invalid("Sentence index out of range"))?;
    let (id, words) = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (text, meta, adopted) = match shared.store.load_text(file) {
            Ok(loaded) => loaded,
            Err(e) => {
                // forget_vanished takes the file lock itself.
                drop(_g);
                return Err(vanished(shared, file)(e));
            }
        };
        report_adopted(shared, adopted, || meta.state(file));
        // A stale copy must not take writes either (the name server may set min_version).
        check_fresh(shared, t, meta.version)?;
        let doc = Document::parse(&text);
        doc.check_open(i)?;
        let words = doc.words(i);
        let n = joined_len(&words);
        if n > MAX_SENTENCE_BYTES {
            return Err(sentence_too_long(n).into());
        }
        let id = shared.sessions.open(file, i)?;
        (id, words)
    };
    let guard = SessionGuard {
        sessions: &shared.sessions,
        file,
        id,
    };
    // The sentence as it stood when the session opened: at commit it tells which words other
    // sessions' commits have since joined onto the front of this sentence.
    let base = words.clone();
    let mut buf = EditBuffer::new(words);
    conn.send(&Message::WriteOpened {}, buf.text().as_bytes())?;
    conn.set_timeout(Some(Duration::from_millis(shared.lock_timeout_ms.max(1))))?;
    loop {
        let frame = match conn.recv() {
            Ok(Some(f)) => f,
            Ok(None) => return Err(Fail::Close),
            Err(ConnError::Frame(fe)) => {
                let _ = conn.send(&Message::err(fe.into()), &[]);
                return Err(Fail::Close);
            }
            Err(ConnError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let ms = shared.lock_timeout_ms;
                // Release before answering, so the sentence is free once the writer hears.
                drop(guard);
                log::info!(target: ev::SS_REFUSED, file = file, reason = "idle"; "write session on {file} idle for {ms} ms; lock released");
                let e = err::timeout(format!("write session idle for {ms} ms; the sentence lock was released and nothing was written"));
                let _ = conn.send(&Message::err(e), &[]);
                return Err(Fail::Close);
            }
            Err(_) => return Err(Fail::Close),
        };
        match frame.msg {
            Message::Edit { word_index } => {
                let res = match std::str::from_utf8(&frame.body) {
                    Err(_) => Err(err::invalid("edit text is not valid UTF-8")),
                    Ok(text) => {
                        // The sentence after this edit: its words joined by single spaces,
                        // counted as the insert splits them (a delimiter inside a token
                        // starts a new word, so `...` renders as `. . .`).
                        let grown = (buf.words().iter().map(String::len))
                            .chain(crate::ss::document::split_words(text).map(|w| w.len()))
                            .map(|n| n + 1)
                            .sum::<usize>()
                            .saturating_sub(1);
                        if grown > MAX_SENTENCE_BYTES {
                            Err(sentence_too_long(grown))
                        } else {
                            let k = usize::try_from(word_index).unwrap_or(usize::MAX);
                            buf.insert(k, text)
                        }
                    }
                };
                match res {
                    Ok(()) => conn.send(&Message::Sentence {}, buf.text().as_bytes())?,
                    Err(e) => conn.send(&Message::err(e), &[])?,
                }
            }
            Message::Commit {} => {
                let res = commit(shared, file, id, &base, &buf, t);
                drop(guard);
                if res.is_ok() && fault_hook() == Some("exit-after-commit") {
                    log::warn!(target: ev::SS_REFUSED, file = file, reason = "fault";
                        "test hook PAIRFS_FAULT_SS=exit-after-commit: exiting before answering the commit of {file}");
                    std::process::exit(1);
                }
                let reply = match res {
                    Ok((state, copies)) => Message::Committed { state, copies },
                    Err(e) => Message::err(e),
                };
                conn.send(&reply, &[])?;
                return Ok(());
            }
            other => {
                let e = err::invalid(format!(
                    "only EDIT or COMMIT may follow WRITE_BEGIN, not {}",
                    other.op_name()
                ));
                conn.send(&Message::err(e), &[])?;
            }
        }
    }
}

/// Bytes of `words` joined by single spaces (the sentence as WRITE_OPENED and SENTENCE carry it).
fn joined_len(words: &[String]) -> usize {
    words
        .iter()
        .map(|w| w.len() + 1)
        .sum::<usize>()
        .saturating_sub(1)
}

/// Test hook (`PAIRFS_FAULT_SS` of `bin_ss`): with `exit-after-commit` (a WRITE session's
/// commit) or `exit-after-upload` (an UPLOAD), the server exits once the change is durable
/// (and, in sync mode, on the backup) but before it answers the client, so a client's
/// handling of a lost answer can be tested end to end.
fn fault_hook() -> Option<&'static str> {
    static HOOK: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOOK.get_or_init(|| std::env::var("PAIRFS_FAULT_SS").ok())
        .as_deref()
}

/// Applies a session's sentence to the file's current content, durably, then reports it.
///
/// `base` is the sentence's words when the session opened. While the session held its lock,
/// another session's commit may have left its own sentence without a final delimiter, and its
/// tail then joined the front of this sentence (see document.rs). Those joined words are kept:
/// the sentence becomes `joined ++ edited`, never just `edited`, so no committed word is lost.
/// Returns the new state and the copy count the name server's ack carried.
fn commit(
    shared: &Shared,
    file: &str,
    id: u64,
    base: &[String],
    buf: &EditBuffer,
    t: &Ticket,
) -> Result<(FileState, Option<u32>), WireError> {
    let _inflight = Inflight::new(&shared.inflight);
    let state = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        // The session may have been opened long ago: the lease and epoch must still hold now.
        may_change(shared, t)?;
        let (text, meta, _) = shared.store.load_text(file)?;
        let i = shared
            .sessions
            .index(file, id)
            .ok_or_else(|| err::internal("write session lost its lock"))?;
        let doc = Document::parse(&text);
        let count = doc.sentence_count();
        if i > count {
            return Err(err::invalid("Sentence index out of range"));
        }
        let words = rebase(&doc.words(i), base, buf.words())?;
        let (new, n) = doc.replace(i, &words);
        if new == text {
            // Nothing changed: no new version, no undo step.
            return Ok((meta.state(file), None));
        }
        let meta = shared.store.write_content(file, meta, new.as_bytes())?;
        if i < count {
            shared.sessions.shift_after(file, id, i, n);
        }
        shared.sessions.close(file, id);
        log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), bytes = meta.size;
            "committed {file} version {}", meta.version);
        meta.state(file)
    };
    let copies = shared
        .link
        .changed(state.clone(), Duration::from_millis(CHANGED_ACK_TIMEOUT_MS))?;
    Ok((state, copies))
}

/// The words a session's sentence should end up with, given the words the sentence holds now
/// (`current`), held when the session opened (`base`), and the session's edited words.
/// Under the sentence lock the only change others can make is joining words onto the front.
fn rebase(
    current: &[String],
    base: &[String],
    edited: &[String],
) -> Result<Vec<String>, WireError> {
    if current == base {
        return Ok(edited.to_vec());
    }
    match current.len().checked_sub(base.len()) {
        Some(joined) if current[joined..] == *base => {
            let mut words = current[..joined].to_vec();
            words.extend_from_slice(edited);
            Ok(words)
        }
        _ => Err(err::conflict(
            "the sentence changed under this write session; nothing was written",
        )),
    }
}

fn create(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    owner: &str,
    epoch: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Create)?;
    may_change(shared, t)?;
    names::validate_user(owner)?;
    let _inflight = Inflight::new(&shared.inflight);
    let meta = shared.store.create(file, owner, epoch)?;
    log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(); "created {file}");
    conn.send(
        &Message::FileStateReply {
            state: meta.state(file),
        },
        &[],
    )?;
    Ok(())
}

fn delete(shared: &Shared, conn: &mut Connection, file: &str, t: &Ticket) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Delete)?;
    // A client's delete carries the epoch; a replication delete (no epoch) follows the writer.
    if t.epoch.is_some() {
        may_change(shared, t)?;
    }
    let _inflight = Inflight::new(&shared.inflight);
    {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        refuse_if_writing(shared, file)?;
        shared.store.delete(file)?;
    }
    log::info!(target: ev::SS_COMMIT, file = file; "deleted {file}");
    conn.send(&Message::Done {}, &[])?;
    Ok(())
}

fn undo(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    epoch: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Undo)?;
    may_change(shared, t)?;
    let _inflight = Inflight::new(&shared.inflight);
    let meta = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        refuse_if_writing(shared, file)?;
        // The lease may have ended while the lock was awaited: check again just before the
        // change, so a writer that lost its epoch meanwhile makes none.
        may_change(shared, t)?;
        shared.store.undo(file, epoch)?
    };
    log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(); "undid the last change of {file}");
    conn.send(
        &Message::FileStateReply {
            state: meta.state(file),
        },
        &[],
    )?;
    Ok(())
}

/// SS_QUARANTINE: sets this server's copy of `file` aside into `quarantine/` unless it is at
/// `keep`. Refused with LOCKED while a write session is open on the file.
fn quarantine(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    keep: Option<Version>,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Quarantine)?;
    let _inflight = Inflight::new(&shared.inflight);
    let moved = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        refuse_if_writing(shared, file)?;
        shared.store.quarantine(file, keep)?
    };
    if let Some(path) = moved {
        log::warn!(target: ev::SS_COMMIT, file = file, path = path.as_str();
            "{file} set aside as {path}: it holds changes the cluster never acknowledged");
    }
    conn.send(&Message::Done {}, &[])?;
    Ok(())
}

/// Most history entries a transfer may describe (a copy keeps [`UNDO_DEPTH`]; a little slack
/// lets a peer with a deeper history still be understood, its oldest entries dropped).
const MAX_TRANSFER_UNDO: usize = 4 * UNDO_DEPTH;

/// Most files one CHECK_FILES may name (the name server sends pages of at most 100).
pub const MAX_CHECK_FILES: usize = 1_000;
/// Most quarantine entries one file's check lists, and most orphans one reply lists; the
/// header of the reply stays under its cap.
pub const MAX_CHECK_QUARANTINE: usize = 100;

/// CHECK_FILES (FSCK): for each file, the bookkeeping's version and checksum and the checksum
/// recomputed from disk, and its quarantined versions. A hand edit found here is adopted and
/// reported like any access; a missing file is only reported (FSCK never changes records).
fn check_files(
    shared: &Shared,
    conn: &mut Connection,
    files: &[String],
    orphans: bool,
    t: &Ticket,
) -> Result<(), Fail> {
    if files.len() > MAX_CHECK_FILES {
        return Err(err::limit(format!("more than {MAX_CHECK_FILES} files in one check")).into());
    }
    if t.user != crate::auth::NM_USER {
        return Err(err::unauthorized("only the name server may run a check").into());
    }
    for f in files {
        if names::canonical_file(f).ok().as_deref() != Some(f.as_str()) {
            return Err(
                err::invalid(format!("'{}' is not a canonical file name", names::show(f))).into(),
            );
        }
    }
    let scope = crate::auth::check_scope(files, orphans);
    shared
        .checker
        .check(t, &scope, TicketOp::Check)
        .inspect_err(|e| {
            log::warn!(target: ev::SS_REFUSED, user = t.user.as_str(), reason = e.msg.as_str();
            "refused a check by {}: {}", t.user, e.msg);
        })?;
    let mut copies = Vec::with_capacity(files.len());
    for file in files {
        let (held, unreadable) = match shared.store.verify(file) {
            Ok(Some((held, meta, adopted))) => {
                report_adopted(shared, adopted, || meta.state(file));
                (Some(held), None)
            }
            Ok(None) => (None, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let mut quarantined = shared.store.quarantined(file)?;
        quarantined.truncate(MAX_CHECK_QUARANTINE);
        copies.push(crate::protocol::CopyCheck {
            file: file.clone(),
            held,
            unreadable,
            quarantined,
        });
    }
    let (orphans, more_orphans) = if orphans {
        shared.store.quarantine_orphans(MAX_CHECK_QUARANTINE)?
    } else {
        (Vec::new(), 0)
    };
    conn.send(
        &Message::Checked {
            copies,
            orphans,
            more_orphans,
        },
        &[],
    )?;
    Ok(())
}

/// PEEK_FILE: what this copy holds of a file, so a transfer sends only what is missing.
fn peek(shared: &Shared, conn: &mut Connection, file: &str, t: &Ticket) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Store)?;
    let held = shared.store.held(file)?;
    let (state, blobs, checkpoints) = match held {
        Some((meta, blobs)) => (
            Some(meta.state(file)),
            blobs,
            shared.store.held_checkpoints(file),
        ),
        None => (None, Vec::new(), Vec::new()),
    };
    conn.send(
        &Message::Held {
            state,
            blobs,
            checkpoints,
        },
        &[],
    )?;
    Ok(())
}

/// Sends what `from` yields, at most `limit` bytes, as CHUNK frames and an END.
fn send_part(conn: &mut Connection, from: &mut File, limit: u64) -> Result<(), Fail> {
    let mut from = from.take(limit);
    // No bigger than the part: a catch-up sends thousands of small files, and zeroing a whole
    // chunk's buffer for each cost more than sending it.
    let mut buf =
        vec![0u8; usize::try_from(limit).map_or(CHUNK_BYTES, |l| l.clamp(1, CHUNK_BYTES))];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The header is out; the peer sees an END-less close and retries.
            Err(_) => return Err(Fail::Close),
        };
        conn.send(&Message::Chunk {}, &buf[..n])?;
    }
    conn.send(&Message::End {}, &[])?;
    Ok(())
}

/// GET_FILE_CONTENT: the content and the history entries the target lacks, from fds opened
/// under the file lock, so one consistent version goes out even if a commit follows.
fn get_content(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    have: &[Version],
    have_checkpoints: &[String],
    ask: Ask<'_>,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Fetch)?;
    let (delta, staged, basis) = match ask {
        Ask::Whole { staged, basis } => (None, staged, basis),
        Ask::Delta(d) => (Some(d), None, Some(d.basis)),
    };
    let mut tr = shared
        .store
        .open_transfer(file, have, have_checkpoints)
        .map_err(vanished(shared, file))?;
    // The target's old copy stands for the history entry of its version only if this
    // server's entry of that version is the same bytes (the same checksum); else it is sent
    // (as ops) like any other.
    if let Some((v, crc)) = basis {
        if tr.undo.iter().any(|d| d.version == v && d.checksum == crc) {
            tr.entries.retain(|(e, _)| *e != v);
        }
    }
    let ops = delta.map(|d| (d.params, d.index));
    report_adopted(shared, tr.adopted, || tr.meta.state(file));
    check_fresh(shared, t, tr.meta.version)?;
    let sent: Vec<Version> = tr.entries.iter().map(|(v, _)| *v).collect();
    let sent_checkpoints: Vec<String> =
        tr.checkpoint_files.iter().map(|(t, _)| t.clone()).collect();
    // The target holds this very version's content staged: it is not sent again.
    let content_staged = staged == Some(tr.meta.version);
    conn.send(
        &Message::FileContent {
            state: tr.meta.state(file),
            undo: tr.undo.clone(),
            sent,
            checkpoints: tr.checkpoints.clone(),
            sent_checkpoints,
            content_staged,
        },
        &[],
    )?;
    if !content_staged {
        send_any(conn, file, &mut tr.content, tr.meta.size, ops)?;
    }
    for (v, f) in tr.entries.iter_mut() {
        let size = tr
            .undo
            .iter()
            .find(|d| d.version == *v)
            .map_or(0, |d| d.size);
        send_any(conn, file, f, size, ops)?;
    }
    for (tag, f) in tr.checkpoint_files.iter_mut() {
        let size = tr
            .checkpoints
            .iter()
            .find(|c| c.tag == *tag)
            .map_or(0, |c| c.size);
        send_any(conn, file, f, size, ops)?;
    }
    log::info!(target: ev::SS_COMMIT, file = file, version = tr.meta.version.to_string(), bytes = tr.meta.size, entries = tr.entries.len() as u64;
        "sent {file} version {} for replication", tr.meta.version);
    Ok(())
}

/// How a GET asks for the file's parts.
#[derive(Clone, Copy)]
enum Ask<'a> {
    /// GET_FILE_CONTENT: each part whole, but the content left out when the target holds
    /// this version staged, and the history entry of the target's own copy (`basis`) left
    /// out when it is the same bytes.
    Whole {
        staged: Option<Version>,
        basis: Option<(Version, u32)>,
    },
    /// GET_FILE_DELTA: each part as ops.
    Delta(DeltaAsk<'a>),
}

/// What a GET_FILE_DELTA asks beyond a GET_FILE_CONTENT.
#[derive(Clone, Copy)]
struct DeltaAsk<'a> {
    /// How the signature was cut.
    params: crate::delta::Params,
    /// The signature of the target's old copy.
    index: &'a crate::delta::Index,
    /// That copy's version and checksum.
    basis: (Version, u32),
}

/// Sends one part whole, or (`ops`, a GET_FILE_DELTA) as the ops that rebuild it from the
/// target's old copy: the content and the history entries and checkpoints alike, since the
/// versions between the target's and the current one are mostly the same bytes.
fn send_any(
    conn: &mut Connection,
    file: &str,
    f: &mut File,
    size: u64,
    ops: Option<(crate::delta::Params, &crate::delta::Index)>,
) -> Result<(), Fail> {
    match ops {
        Some((p, index)) => delta::send_ops(conn, file, f, size, p, index),
        None => send_part(conn, f, size),
    }
}

/// One received part of a stream (CHUNK* END).
struct Received {
    /// The temp file holding the bytes (None when they were only drained).
    temp: Option<TempFile>,
    /// The temp file still open when its sync was left to the caller (a batch syncs all its
    /// files together).
    unsynced: Option<File>,
    /// Checksum and size (and counts, when asked for) of the bytes.
    counter: ContentCounter,
    /// A local failure (disk full, ...) met while storing; the part was still read to END.
    error: Option<StoreError>,
}

/// Parts at least this large have their words and characters counted on a thread of their
/// own, beside the thread that receives and writes them (counting is the costliest step of
/// an upload of binary content; smaller parts are not worth a thread).
const COUNT_THREAD_MIN_BYTES: u64 = 4 << 20;
/// Chunks that may wait for the counting thread: bounds the memory an upload takes when the
/// counter is slower than the network.
const COUNT_QUEUE_CHUNKS: usize = 4;
/// After this many bytes written to a temp file, their writeback is started, so the final
/// fsync finds little left to write and the disk works while the network does.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// How [`recv_part`] treats the bytes it receives.
#[derive(Clone, Copy)]
struct Keep {
    /// Store them in a temp file (else only count them).
    store: bool,
    /// Who makes that file durable.
    sync: SyncBy,
}

/// Who makes a received temp file durable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncBy {
    /// [`recv_part`], with an fsync before it returns.
    Now,
    /// The caller, with the file left open ([`Received::unsynced`]) for an fsync.
    Caller,
    /// The caller, with one `syncfs` for the whole batch ([`durable::FsSync`]): the file is
    /// closed at once, so a batch holds no descriptor per file.
    FileSystem,
}

/// Reads one part (CHUNK* END) of at most `limit` bytes, into a temp file when `keep.store`
/// (made durable as `keep.sync` says), else only counting. `flip` is the fault hook: it flips the first
/// byte it sees. Each chunk also goes to `tee` when given (an upload staged on the partner).
#[allow(clippy::too_many_arguments)]
fn recv_part(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    limit: u64,
    keep: Keep,
    mut counter: ContentCounter,
    flip: &mut bool,
    tee: Option<&mut staging::Tee>,
) -> Result<Received, Fail> {
    let text = if limit >= COUNT_THREAD_MIN_BYTES {
        counter.take_text()
    } else {
        None
    };
    let Some(mut text) = text else {
        return recv_into(shared, conn, file, limit, keep, counter, flip, None, tee);
    };
    thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(COUNT_QUEUE_CHUNKS);
        let counting =
            thread::Builder::new()
                .name("ss-count".into())
                .spawn_scoped(scope, move || {
                    for body in rx {
                        text.update(&body);
                    }
                    text
                });
        let counting = match counting {
            Ok(h) => h,
            // No thread to be had: count on this one.
            Err(_) => {
                counter.put_text(TextCount::new());
                return recv_into(shared, conn, file, limit, keep, counter, flip, None, tee);
            }
        };
        let r = recv_into(
            shared,
            conn,
            file,
            limit,
            keep,
            counter,
            flip,
            Some(tx),
            tee,
        );
        // The sender is gone (dropped with `recv_into`), so the thread ends after the last
        // chunk; it counted while the temp file was being synced.
        let text = counting
            .join()
            .map_err(|_| Fail::Reply(err::internal("the counting thread failed")))?;
        r.map(|mut r| {
            r.counter.put_text(text);
            r
        })
    })
}

/// The receive loop of [`recv_part`]; each chunk also goes to `count` and `tee` when given.
#[allow(clippy::too_many_arguments)]
fn recv_into(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    limit: u64,
    keep: Keep,
    mut counter: ContentCounter,
    flip: &mut bool,
    count: Option<std::sync::mpsc::SyncSender<Arc<Vec<u8>>>>,
    mut tee: Option<&mut staging::Tee>,
) -> Result<Received, Fail> {
    let mut temp = None;
    let mut out: Option<File> = None;
    let mut error = None;
    if keep.store {
        match shared.store.temp_file(file) {
            Ok((t, f)) => {
                temp = Some(t);
                out = Some(f);
            }
            Err(e) => error = Some(e),
        }
    }
    let mut written = 0u64;
    let mut flushed = 0u64;
    loop {
        let frame = match conn.recv() {
            Ok(Some(f)) => f,
            Err(ConnError::Frame(fe)) => return Err(Fail::ReplyClose(fe.into())),
            Ok(None) | Err(_) => return Err(Fail::Close),
        };
        match frame.msg {
            Message::Chunk {} => {
                let mut body = frame.body;
                // The frame was verified against this CRC32C: the partner's relay sends it on
                // rather than reading the bytes again (the fault hook, which changes the
                // bytes, is for PUT_FILE_CONTENT only, which has no relay).
                let crc = conn.body_crc();
                if *flip && !body.is_empty() {
                    body[0] ^= 0x01;
                    *flip = false;
                    log::warn!(target: ev::SS_REFUSED, file = file, reason = "fault";
                        "test hook PAIRFS_FAULT_FLIP_PUT: flipped one byte of {file}");
                }
                if counter.size() + body.len() as u64 > limit {
                    return Err(Fail::ReplyClose(err::invalid(format!(
                        "more than the {limit} bytes declared for {}",
                        names::display(file)
                    ))));
                }
                counter.update(&body);
                if let Some(f) = out.as_mut() {
                    match f.write_all(&body) {
                        Ok(()) => {
                            written += body.len() as u64;
                            if written - flushed >= WRITEBACK_BYTES {
                                start_writeback(f, flushed, written - flushed);
                                flushed = written;
                            }
                        }
                        Err(e) => {
                            error = Some(shared.store.io_error(file, e));
                            out = None;
                        }
                    }
                }
                if count.is_none() && tee.is_none() {
                    continue;
                }
                // Shared, not copied, with the counting thread and the partner's relay.
                let body = Arc::new(body);
                if let Some(t) = tee.as_deref_mut() {
                    t.push(&body, crc);
                }
                if let Some(tx) = &count {
                    if tx.send(body).is_err() {
                        return Err(Fail::Reply(err::internal("the counting thread failed")));
                    }
                }
            }
            Message::End {} => {
                if let Some(t) = tee.as_deref_mut() {
                    t.end();
                }
                break;
            }
            other => {
                return Err(Fail::ReplyClose(err::invalid(format!(
                    "expected CHUNK or END, not {}",
                    other.op_name()
                ))))
            }
        }
    }
    drop(count);
    Ok(Received::settle(
        shared, file, temp, out, keep.sync, counter, error,
    ))
}

impl Received {
    /// No part at all (a staged content that is not installed).
    fn nothing() -> Received {
        Received {
            temp: None,
            unsynced: None,
            counter: ContentCounter::bytes_only(),
            error: None,
        }
    }

    /// A part read to its END: its temp file `out` (if one was written) made durable as
    /// `sync` says, unless storing it already failed (then nothing of it is installed).
    fn settle(
        shared: &Shared,
        file: &str,
        temp: Option<TempFile>,
        out: Option<File>,
        sync: SyncBy,
        counter: ContentCounter,
        mut error: Option<StoreError>,
    ) -> Received {
        let mut unsynced = None;
        if let Some(f) = out.filter(|_| error.is_none()) {
            match sync {
                SyncBy::Caller => unsynced = Some(f),
                SyncBy::FileSystem => {}
                SyncBy::Now => {
                    if let Err(e) = f.sync_all() {
                        error = Some(shared.store.io_error(file, e));
                    }
                }
            }
        }
        Received {
            temp,
            unsynced,
            counter,
            error,
        }
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `f` to disk, without waiting:
/// only a hint (the fsync at the end is what makes the bytes durable), so a failure is ignored.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; `f` keeps the fd open for
    // the duration of the call.
    let _ =
        unsafe { libc::sync_file_range(f.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Checks a received part against the size and checksum it was declared with.
fn verify(r: &mut Received, what: &str, size: u64, checksum: u32) -> Result<(), WireError> {
    if let Some(e) = r.error.take() {
        return Err(e.into());
    }
    if r.counter.size() != size || r.counter.checksum() != checksum {
        return Err(err::invalid(format!(
            "{what}: received {} bytes with checksum {:08x}, declared {size} bytes with checksum {checksum:08x}; nothing was installed",
            r.counter.size(),
            r.counter.checksum()
        )));
    }
    Ok(())
}

/// The head of a PUT_FILE_CONTENT.
struct PutHead<'a> {
    file: &'a str,
    state: &'a FileState,
    undo: &'a [UndoDesc],
    sent: &'a [Version],
    checkpoints: &'a [CheckpointInfo],
    sent_checkpoints: &'a [String],
    /// The version and checksum of this server's copy that stands for the history entry of
    /// its version (verified before it is linked in): the copy a delta's ops refer to
    /// (PUT_FILE_DELTA), or the one a staged upload replaces.
    basis: Option<(Version, u32)>,
    /// The parts are ops against the basis (PUT_FILE_DELTA), not bytes.
    ops: bool,
    /// The id of the upload staged here that is the content (no content part follows).
    staged: Option<&'a str>,
}

/// Checks the head of a PUT_FILE_CONTENT before its stream is read.
fn check_put(shared: &Shared, h: &PutHead<'_>, t: &Ticket) -> Result<(), WireError> {
    let PutHead {
        file,
        state,
        undo,
        sent,
        ..
    } = *h;
    authorise(shared, file, t, TicketOp::Store)?;
    if h.checkpoints.len() > MAX_CHECKPOINTS {
        return Err(err::limit(format!(
            "a transfer may describe at most {MAX_CHECKPOINTS} checkpoints"
        )));
    }
    for c in h.checkpoints {
        names::validate_tag(&c.tag)?;
    }
    if h.sent_checkpoints
        .iter()
        .any(|tag| !h.checkpoints.iter().any(|c| c.tag == *tag))
    {
        return Err(err::invalid("a sent checkpoint is not in the list"));
    }
    if state.file != file {
        return Err(err::invalid("PUT_FILE_CONTENT names two different files"));
    }
    if undo.len() > MAX_TRANSFER_UNDO {
        return Err(err::limit(format!(
            "a transfer may describe at most {MAX_TRANSFER_UNDO} history entries"
        )));
    }
    if sent.iter().any(|v| !undo.iter().any(|d| d.version == *v)) {
        return Err(err::invalid("a sent history entry is not in the history"));
    }
    Ok(())
}

mod delta;
pub mod staging;
#[cfg(test)]
mod tests;

/// Most copies one PUT_BATCH may carry (bounds the temp files and open files it holds).
pub const MAX_BATCH_COPIES: usize = 64;

/// A copy received by PUT_FILE_CONTENT, read to its END.
enum Arrived {
    /// This server holds that version or a newer one already: its state.
    Held(FileState),
    /// The received parts, still to be verified and installed (boxed: a batch holds many
    /// answers that are only a state).
    Staged(Box<Staged>),
}

/// The parts of a received copy.
struct Staged {
    state: FileState,
    undo: Vec<UndoDesc>,
    content: Received,
    entries: Vec<(Version, Received)>,
    /// Every checkpoint of the file at the source.
    checkpoints: Vec<CheckpointInfo>,
    /// The checkpoints sent, by tag.
    ckpts: Vec<(String, Received)>,
    /// A verified basis (a delta's, or a staged upload's): the content held now, the history entry of its version.
    basis: Option<Basis>,
}

/// Reads a PUT_FILE_CONTENT's stream (content, then each sent history entry, then each sent
/// checkpoint) into `tmp/`, synced when `sync`. A refused head still has its stream read, so
/// the connection stays in step; the refusal is then a [`Fail::Reply`].
fn receive_copy(
    shared: &Shared,
    conn: &mut Connection,
    h: &PutHead<'_>,
    t: &Ticket,
    sync: SyncBy,
) -> Result<Arrived, Fail> {
    let PutHead {
        file,
        state,
        undo,
        sent,
        ..
    } = *h;
    let mut head = check_put(shared, h, t);
    // A copy already this new only needs the stream drained (jobs may be retried or
    // reordered); install_copies checks again under the lock.
    let held = match &head {
        Ok(()) => shared.store.record(file).ok().flatten(),
        Err(_) => None,
    };
    let newer_here = held.as_ref().is_some_and(|m| m.version >= state.version);
    // Content staged here while it was uploaded to the source stands for the content part.
    let mut staged = None;
    if let (Some(id), Ok(()), false) = (h.staged, &head, newer_here) {
        match shared.stages.take(id, file, state.size, state.checksum) {
            Ok(r) => staged = Some(r),
            Err(e) => head = Err(e),
        }
    }
    let mut keep = Keep {
        store: head.is_ok() && !newer_here,
        sync,
    };
    // A delta's ops refer to this server's copy at the basis, opened and verified once for
    // all its parts; a copy that is not refuses the delta (the first part carries why). A
    // copy sent whole with a basis (a staged upload) only links that copy in as its history
    // entry, and a basis that does not verify refuses the copy.
    let (mut old, mut refused) = (None, None);
    if let (Some(b), true) = (h.basis, keep.store) {
        match delta::open_basis(shared, file, b) {
            Ok(o) => old = Some(o),
            Err(e) if h.ops => refused = Some(e),
            Err(e) => {
                head = Err(e.into());
                keep.store = false;
            }
        }
    }
    let mut flip = keep.store && shared.fault_flip_put.swap(false, Ordering::SeqCst);
    let basis = old.as_ref().map(|o| o.basis);
    // One part sent whole, or (PUT_FILE_DELTA) as ops against the old copy.
    let mut recv_any = |conn: &mut Connection, limit: u64, keep: Keep, flip: &mut bool| {
        if h.ops {
            delta::recv_ops(
                shared,
                conn,
                file,
                limit,
                old.as_ref(),
                refused.take(),
                keep,
                flip,
            )
        } else {
            recv_part(
                shared,
                conn,
                file,
                limit,
                keep,
                ContentCounter::bytes_only(),
                flip,
                None,
            )
        }
    };
    let content = match staged {
        Some(r) => r,
        // A staged content that is not installed (refused, or a copy this new is held
        // already) has no part in the stream.
        None if h.staged.is_some() => Received::nothing(),
        None => recv_any(conn, state.size, keep, &mut flip)?,
    };
    let mut entries = Vec::with_capacity(sent.len());
    for v in sent {
        let limit = undo.iter().find(|d| d.version == *v).map_or(0, |d| d.size);
        let r = recv_any(conn, limit, keep, &mut flip)?;
        entries.push((*v, r));
    }
    // A file may send up to MAX_CHECKPOINTS checkpoints: in a batch, leaving each open until
    // the install could hold thousands of files open, so each is synced as it arrives (the
    // install syncs their directory per file anyway).
    let ckpt_keep = Keep {
        sync: SyncBy::Now,
        ..keep
    };
    let mut ckpts = Vec::with_capacity(h.sent_checkpoints.len());
    for tag in h.sent_checkpoints {
        let limit = h
            .checkpoints
            .iter()
            .find(|c| c.tag == *tag)
            .map_or(0, |c| c.size);
        let r = recv_any(conn, limit, ckpt_keep, &mut flip)?;
        ckpts.push((tag.clone(), r));
    }
    if flip {
        // Nothing to flip in this transfer: keep the hook armed for the next one.
        shared.fault_flip_put.store(true, Ordering::SeqCst);
    }
    head?;
    if let Some(meta) = held.filter(|_| newer_here) {
        return Ok(Arrived::Held(meta.state(file)));
    }
    Ok(Arrived::Staged(Box::new(Staged {
        state: state.clone(),
        undo: undo.to_vec(),
        content,
        entries,
        checkpoints: h.checkpoints.to_vec(),
        ckpts,
        basis,
    })))
}

/// The temp files of one staged copy, as [`Store::install_copies`] takes them.
struct TempPaths<'a> {
    /// The copy's index among the staged ones.
    i: usize,
    content: PathBuf,
    entries: Vec<(Version, PathBuf)>,
    ckpts: Vec<(String, PathBuf)>,
    /// Those still to be synced.
    unsynced: Vec<&'a File>,
}

/// Verifies every part of each staged copy against the size and checksum it was declared
/// with, syncs the temp files left unsynced (all together), and installs the copies that
/// verified, in one [`Store::install_copies`]. Nothing of a copy is installed unless all of
/// it verified. One result per copy, in order.
fn install_staged(
    shared: &Shared,
    staged: &mut [Staged],
    window: Option<&durable::FsSync>,
) -> Vec<Result<FileState, WireError>> {
    let mut results: Vec<Option<Result<FileState, WireError>>> =
        staged.iter().map(|_| None).collect();
    for (i, st) in staged.iter_mut().enumerate() {
        if let Err(e) = check_staged(st) {
            if e.code != crate::protocol::ErrorCode::Internal {
                log::warn!(target: ev::SS_REFUSED, file = st.state.file.as_str(), reason = "checksum";
                    "refused a copy of {}: {}", st.state.file, e.msg);
            }
            results[i] = Some(Err(e));
        }
    }
    // The temp files left unsynced are synced by the install, together with its records.
    let mut paths: Vec<TempPaths<'_>> = Vec::new();
    for (i, st) in staged.iter().enumerate() {
        if results[i].is_some() {
            continue;
        }
        let (Some(content), Some(entries), Some(ckpts)) = (
            st.content.temp.as_ref().map(|t| t.path().to_path_buf()),
            st.entries
                .iter()
                .map(|(v, r)| r.temp.as_ref().map(|t| (*v, t.path().to_path_buf())))
                .collect::<Option<Vec<_>>>(),
            st.ckpts
                .iter()
                .map(|(tag, r)| {
                    r.temp
                        .as_ref()
                        .map(|t| (tag.clone(), t.path().to_path_buf()))
                })
                .collect::<Option<Vec<_>>>(),
        ) else {
            results[i] = Some(Err(err::internal("no temp file")));
            continue;
        };
        let unsynced = std::iter::once(&st.content)
            .chain(st.entries.iter().map(|(_, r)| r))
            .chain(st.ckpts.iter().map(|(_, r)| r))
            .filter_map(|r| r.unsynced.as_ref())
            .collect();
        paths.push(TempPaths {
            i,
            content,
            entries,
            ckpts,
            unsynced,
        });
    }
    let copies: Vec<CopyIn<'_>> = paths
        .iter()
        .map(|p| CopyIn {
            state: &staged[p.i].state,
            undo: &staged[p.i].undo,
            content: &p.content,
            entries: &p.entries,
            checkpoints: &staged[p.i].checkpoints,
            checkpoint_files: &p.ckpts,
            unsynced: &p.unsynced,
            basis: staged[p.i].basis,
        })
        .collect();
    let installed = {
        let _inflight = Inflight::new(&shared.inflight);
        shared.store.install_copies(&copies, window)
    };
    for (p, r) in paths.iter().zip(installed) {
        let file = staged[p.i].state.file.as_str();
        results[p.i] = Some(match r {
            Ok((meta, installed)) => {
                if installed {
                    log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), bytes = meta.size, entries = p.entries.len() as u64;
                        "installed a copy of {file} version {}", meta.version);
                }
                Ok(meta.state(file))
            }
            Err(e) => Err(e.into()),
        });
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(err::internal("copy left undecided"))))
        .collect()
}

/// The local errors and checksum checks of one staged copy's parts.
fn check_staged(st: &mut Staged) -> Result<(), WireError> {
    let file = st.state.file.as_str();
    verify(
        &mut st.content,
        &names::display(file),
        st.state.size,
        st.state.checksum,
    )?;
    for (v, r) in st.entries.iter_mut() {
        let d = st.undo.iter().find(|d| d.version == *v);
        let (size, crc) = d.map_or((0, 0), |d| (d.size, d.checksum));
        verify(
            r,
            &format!("history entry {v} of {}", names::display(file)),
            size,
            crc,
        )?;
    }
    for (tag, r) in st.ckpts.iter_mut() {
        let c = st.checkpoints.iter().find(|c| c.tag == *tag);
        let (size, crc) = c.map_or((0, 0), |c| (c.size, c.checksum));
        verify(
            r,
            &format!("checkpoint '{tag}' of {}", names::display(file)),
            size,
            crc,
        )?;
    }
    Ok(())
}

/// PUT_FILE_CONTENT: receives a copy into `tmp/`, verifies every checksum and size, and
/// installs it unless this copy is already at that version or newer. Nothing is installed
/// unless everything verified; a cut stream leaves no temp file (the guards remove them).
fn put_content(
    shared: &Shared,
    conn: &mut Connection,
    h: &PutHead<'_>,
    t: &Ticket,
) -> Result<(), Fail> {
    let state = match receive_copy(shared, conn, h, t, SyncBy::Now)? {
        Arrived::Held(state) => state,
        Arrived::Staged(st) => install_staged(shared, &mut [*st], None)
            .pop()
            .unwrap_or_else(|| Err(err::internal("copy left undecided")))?,
    };
    conn.send(&Message::FileStateReply { state }, &[])?;
    Ok(())
}

/// PUT_BATCH: PUT_FILE_CONTENT copies until END, installed together (see
/// [`Store::install_copies`]): many small files cost a few syncs each instead of four, and
/// one connection. Answered with one FILE_STATE_REPLY or ERR per copy, in order, after all
/// are installed.
fn put_batch(shared: &Shared, conn: &mut Connection) -> Result<(), Fail> {
    // Begun before the first copy is written, so its one sync covers (and reports the
    // write-back errors of) every file of the batch.
    let window = match shared.store.sync_window() {
        Ok(w) => w,
        Err(e) => {
            log::warn!(target: ev::SS_REFUSED, reason = "sync";
                "no syncfs window for a batch ({e}); its files are synced one by one");
            None
        }
    };
    let sync_by = if window.is_some() {
        SyncBy::FileSystem
    } else {
        SyncBy::Caller
    };
    let mut arrived: Vec<Result<Arrived, WireError>> = Vec::new();
    loop {
        let frame = match conn.recv() {
            Ok(Some(f)) => f,
            Err(ConnError::Frame(fe)) => return Err(Fail::ReplyClose(fe.into())),
            Ok(None) | Err(_) => return Err(Fail::Close),
        };
        match frame.msg {
            Message::PutFileContent {
                file,
                state,
                undo,
                sent,
                checkpoints,
                sent_checkpoints,
                staged,
                basis,
                ticket,
            } => {
                if arrived.len() >= MAX_BATCH_COPIES {
                    return Err(Fail::ReplyClose(err::limit(format!(
                        "a PUT_BATCH may carry at most {MAX_BATCH_COPIES} copies"
                    ))));
                }
                let head = PutHead {
                    file: &file,
                    state: &state,
                    undo: &undo,
                    sent: &sent,
                    checkpoints: &checkpoints,
                    sent_checkpoints: &sent_checkpoints,
                    basis: basis.map(|b| (b.version, b.checksum)),
                    ops: false,
                    staged: staged.as_deref(),
                };
                match receive_copy(shared, conn, &head, &ticket, sync_by) {
                    Ok(a) => arrived.push(Ok(a)),
                    Err(Fail::Reply(e)) => arrived.push(Err(e)),
                    Err(other) => return Err(other),
                }
            }
            Message::End {} => break,
            other => {
                return Err(Fail::ReplyClose(err::invalid(format!(
                    "expected PUT_FILE_CONTENT or END in a PUT_BATCH, not {}",
                    other.op_name()
                ))))
            }
        }
    }
    // Each copy's answer: known now (held already, refused), or from the install (None).
    let mut staged = Vec::new();
    let mut slots = Vec::with_capacity(arrived.len());
    for a in arrived {
        slots.push(match a {
            Ok(Arrived::Staged(st)) => {
                staged.push(*st);
                None
            }
            Ok(Arrived::Held(state)) => Some(Ok(state)),
            Err(e) => Some(Err(e)),
        });
    }
    let mut installed = install_staged(shared, &mut staged, window.as_ref()).into_iter();
    // Temp files of refused copies go before the answers do.
    drop(staged);
    for slot in slots {
        let reply = match slot {
            Some(r) => r,
            None => installed
                .next()
                .unwrap_or_else(|| Err(err::internal("copy left undecided"))),
        };
        let msg = match reply {
            Ok(state) => Message::FileStateReply { state },
            Err(e) => Message::err(e),
        };
        conn.send(&msg, &[])?;
    }
    Ok(())
}

/// UPLOAD: `size` bytes into a temp file, counted and checked as they arrive, then installed
/// as a new version (the old content becomes a history entry) and confirmed by the name
/// server before COMMITTED.
fn upload(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    size: u64,
    checksum: u32,
    t: &Ticket,
) -> Result<(), Fail> {
    let head = authorise(shared, file, t, TicketOp::Upload)
        .and_then(|()| may_change(shared, t))
        .and_then(|()| upload_fresh(shared, file, t));
    // The partner writes its copy while this one arrives (see `staging.rs`).
    let mut tee = head
        .is_ok()
        .then(|| staging::Tee::start(shared, file, size, checksum, &t.user))
        .flatten();
    let r = recv_part(
        shared,
        conn,
        file,
        size,
        Keep {
            store: head.is_ok(),
            sync: SyncBy::Now,
        },
        ContentCounter::new(),
        &mut false,
        tee.as_mut(),
    )?;
    head?;
    let mut r = r;
    verify(&mut r, &names::display(file), size, checksum)?;
    let temp = r.temp.ok_or_else(|| err::internal("no temp file"))?;
    let facts = r.counter.finish(0);
    // The partner synced its stage while this copy was synced: its answer comes now, before
    // the install, so the change is reported the moment it is installed.
    let staged = tee.and_then(staging::Tee::finish);
    let state = {
        let _inflight = Inflight::new(&shared.inflight);
        // The body may have taken long to arrive: the lease must still hold now.
        may_change(shared, t)?;
        let meta = shared.store.upload(file, &t.user, temp.path(), &facts)?;
        log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), bytes = meta.size;
            "uploaded {file} version {}", meta.version);
        meta.state(file)
    };
    let copies = shared.link.changed_staged(
        state.clone(),
        staged,
        Duration::from_millis(CHANGED_ACK_TIMEOUT_MS),
    )?;
    if fault_hook() == Some("exit-after-upload") {
        log::warn!(target: ev::SS_REFUSED, file = file, reason = "fault";
            "test hook PAIRFS_FAULT_SS=exit-after-upload: exiting before answering the upload of {file}");
        std::process::exit(1);
    }
    conn.send(&Message::Committed { state, copies }, &[])?;
    Ok(())
}

/// A stale copy must not take an upload either: the name server's recorded version (the
/// ticket's `min_version`) must be here, or the file must be new to both.
fn upload_fresh(shared: &Shared, file: &str, t: &Ticket) -> Result<(), WireError> {
    let Some(min) = t.min_version else {
        return Ok(());
    };
    match shared.store.record(file)? {
        Some(meta) => check_fresh(shared, t, meta.version),
        None => Err(err::unavailable(format!(
            "stale copy on {}: {} is missing, need version {min}",
            shared.store.name(),
            names::display(file)
        ))),
    }
}

/// VIEWCHECKPOINT: the checkpoint's bytes, framed like READ.
fn read_checkpoint(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    tag: &str,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Read)?;
    names::validate_tag(tag)?;
    let (mut f, info, meta, adopted) = shared
        .store
        .open_checkpoint(file, tag)
        .map_err(vanished(shared, file))?;
    report_adopted(shared, adopted, || meta.state(file));
    check_fresh(shared, t, meta.version)?;
    conn.send(
        &Message::ReadOk {
            size: info.size,
            version: meta.version,
            checksum: info.checksum,
        },
        &[],
    )?;
    send_part(conn, &mut f, info.size)
}

/// LISTCHECKPOINTS: the file's checkpoints, oldest first.
fn list_checkpoints(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Read)?;
    let (checkpoints, meta, adopted) = shared
        .store
        .checkpoints(file)
        .map_err(vanished(shared, file))?;
    report_adopted(shared, adopted, || meta.state(file));
    check_fresh(shared, t, meta.version)?;
    conn.send(&Message::CheckpointList { checkpoints }, &[])?;
    Ok(())
}

/// SS_CHECKPOINT: a checkpoint of the committed content (open write sessions do not matter:
/// their edits are not in the file until they commit).
fn checkpoint(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    tag: &str,
    creator: &str,
    epoch: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Checkpoint)?;
    may_change(shared, t)?;
    names::validate_tag(tag)?;
    names::validate_user(creator)?;
    let _inflight = Inflight::new(&shared.inflight);
    let meta = shared.store.checkpoint(file, tag, creator, epoch)?;
    log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), tag = tag;
        "checkpoint '{tag}' of {file}");
    conn.send(
        &Message::FileStateReply {
            state: meta.state(file),
        },
        &[],
    )?;
    Ok(())
}

/// SS_REVERT: refused while a write session is open, like UNDO.
fn revert(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    tag: &str,
    epoch: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Revert)?;
    may_change(shared, t)?;
    names::validate_tag(tag)?;
    let _inflight = Inflight::new(&shared.inflight);
    let meta = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        refuse_if_writing(shared, file)?;
        may_change(shared, t)?;
        shared.store.revert(file, tag, epoch)?
    };
    log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), tag = tag;
        "reverted {file} to checkpoint '{tag}'");
    conn.send(
        &Message::FileStateReply {
            state: meta.state(file),
        },
        &[],
    )?;
    Ok(())
}

/// SS_MOVE: both names canonical, the ticket minted for exactly this pair, no open write
/// session on the file. The two locks are taken in name order, so two moves never deadlock.
fn move_file(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    to: &str,
    version: Option<Version>,
    t: &Ticket,
) -> Result<(), Fail> {
    for name in [file, to] {
        if names::canonical_file(name)? != name {
            return Err(err::invalid(format!("'{name}' is not a canonical file name")).into());
        }
    }
    shared
        .checker
        .check(t, &names::move_subject(file, to), TicketOp::Move)
        .inspect_err(|e| {
            log::warn!(target: ev::SS_REFUSED, file = file, user = t.user.as_str(), reason = e.msg.as_str();
                "refused MOVE of {file} to {to}: {}", e.msg);
        })?;
    may_change(shared, t)?;
    let _inflight = Inflight::new(&shared.inflight);
    {
        let (first, second) = if file < to { (file, to) } else { (to, file) };
        let l1 = shared.store.file_lock(first);
        let _g1 = l1.lock().unwrap_or_else(|p| p.into_inner());
        let l2 = shared.store.file_lock(second);
        let _g2 = l2.lock().unwrap_or_else(|p| p.into_inner());
        // A repeat of a move made already (only a repeat carries `version`) changes nothing:
        // it is answered before the write-session check, under the lease checked above.
        if version.is_some_and(|v| shared.store.moved_already(file, to, v).unwrap_or(false)) {
            log::info!(target: ev::SS_COMMIT, file = file, to = to;
                "{file} was moved to {to} already: the name server repeated a move whose answer it lost");
            conn.send(&Message::Done {}, &[])?;
            return Ok(());
        }
        refuse_if_writing(shared, file)?;
        may_change(shared, t)?;
        shared.store.move_file(file, to)?;
    }
    log::info!(target: ev::SS_COMMIT, file = file, to = to; "moved {file} to {to}");
    conn.send(&Message::Done {}, &[])?;
    Ok(())
}

/// SS_MKDIR: the name server's folders as directories under `files/`, on primaries and
/// backups alike (every copy holds every folder).
fn mkdir(
    shared: &Shared,
    conn: &mut Connection,
    folders: &[String],
    t: &Ticket,
) -> Result<(), Fail> {
    for f in folders {
        if f.is_empty() || names::canonical_folder(f)? != *f {
            return Err(err::invalid(format!(
                "'{}' is not a canonical folder name",
                names::show(f)
            ))
            .into());
        }
    }
    shared
        .checker
        .check(t, &names::mkdir_subject(folders), TicketOp::Mkdir)
        .inspect_err(|e| {
            log::warn!(target: ev::SS_REFUSED, user = t.user.as_str(), reason = e.msg.as_str();
                "refused SS_MKDIR: {}", e.msg);
        })?;
    shared.store.make_folders(folders)?;
    log::info!(target: ev::SS_COMMIT, folders = folders.len() as u64; "created {} folder(s)", folders.len());
    conn.send(&Message::Done {}, &[])?;
    Ok(())
}
