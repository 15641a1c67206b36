//! The client port: one thread per connection (at most `max_connections`), each serving
//! READ, STREAM, write sessions and the name server's SS_CREATE / SS_DELETE / SS_UNDO.
//!
//! Every request carries a ticket checked here; nothing else about the peer is trusted.
//! Malformed input gets an ERR where possible and the connection is closed; a request that
//! fails for a reason of its own (a missing file, a locked sentence) gets an ERR and the
//! connection stays usable.

use crate::auth::TicketChecker;
use crate::logging::ev;
use crate::names;
use crate::protocol::frame::{ConnError, CHUNK_BYTES};
use crate::protocol::{err, Connection, FileState, Message, Ticket, TicketOp, WireError};
use crate::ss::document::{Document, EditBuffer};
use crate::ss::nmlink::NmLink;
use crate::ss::sessions::Sessions;
use crate::ss::store::{Store, StoreError};
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Idle time allowed between requests outside a write session.
pub const IDLE_TIMEOUT_MS: u64 = 60_000;
/// How long a new connection has to deliver its whole first request.
pub const FIRST_FRAME_TIMEOUT_MS: u64 = 5_000;
/// How long a commit waits for the name server's acknowledgement.
pub const CHANGED_ACK_TIMEOUT_MS: u64 = 10_000;
/// Longest piece of a single token STREAM sends in one WORD frame.
pub const MAX_STREAM_WORD_BYTES: usize = 16 * 1024;
/// Delay between two streamed words.
pub const STREAM_WORD_INTERVAL_MS: u64 = 100;
/// Largest sentence a write session may build, in bytes.
pub const MAX_SENTENCE_BYTES: usize = 1024 * 1024;

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
    /// Connections being served now.
    pub conns: AtomicUsize,
    /// Commits (and undos, deletes) in progress; shutdown waits for them.
    pub inflight: AtomicUsize,
    /// Set when the server is stopping.
    pub stop: Arc<AtomicBool>,
}

/// Why a request ended badly: answer with an ERR and go on, or close the connection.
enum Fail {
    Reply(WireError),
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
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!(target: ev::SS_REFUSED, "accept failed: {e}");
                continue;
            }
        };
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
    // A new connection must deliver its first (ticketed) request quickly: a peer that opens
    // sockets and trickles bytes cannot keep connection slots from real clients for long.
    let mut frame_ms = FIRST_FRAME_TIMEOUT_MS;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if conn
            .set_timeout(Some(Duration::from_millis(IDLE_TIMEOUT_MS)))
            .is_err()
        {
            break;
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(frame_ms);
        frame_ms = IDLE_TIMEOUT_MS;
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
            Err(Fail::Close) => break,
        }
    }
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
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The header is out; the peer sees a short read and an END-less close.
            Err(_) => return Err(Fail::Close),
        };
        conn.send(&Message::Chunk {}, &buf[..n])?;
    }
    conn.send(&Message::End {}, &[])?;
    Ok(())
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
        conn.send(&Message::Word { word: w }, &[])?;
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
        let id = shared.sessions.open(file, i)?;
        (id, doc.words(i))
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
    conn.send(&Message::WriteOpened { text: buf.text() }, &[])?;
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
            Message::Edit { word_index, text } => {
                let used: usize = buf.words().iter().map(|w| w.len() + 1).sum();
                let res = if used + text.len() > MAX_SENTENCE_BYTES {
                    Err(err::limit(format!(
                        "a sentence may hold at most {MAX_SENTENCE_BYTES} bytes"
                    )))
                } else {
                    let k = usize::try_from(word_index).unwrap_or(usize::MAX);
                    buf.insert(k, &text)
                };
                let reply = match res {
                    Ok(()) => Message::Sentence { text: buf.text() },
                    Err(e) => Message::err(e),
                };
                conn.send(&reply, &[])?;
            }
            Message::Commit {} => {
                let res = commit(shared, file, id, &base, &buf);
                drop(guard);
                let reply = match res {
                    Ok(state) => Message::Committed {
                        state,
                        copies: None,
                    },
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

/// Applies a session's sentence to the file's current content, durably, then reports it.
///
/// `base` is the sentence's words when the session opened. While the session held its lock,
/// another session's commit may have left its own sentence without a final delimiter, and its
/// tail then joined the front of this sentence (see document.rs). Those joined words are kept:
/// the sentence becomes `joined ++ edited`, never just `edited`, so no committed word is lost.
fn commit(
    shared: &Shared,
    file: &str,
    id: u64,
    base: &[String],
    buf: &EditBuffer,
) -> Result<FileState, WireError> {
    let _inflight = Inflight::new(&shared.inflight);
    let state = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
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
            return Ok(meta.state(file));
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
    shared
        .link
        .changed(state.clone(), Duration::from_millis(CHANGED_ACK_TIMEOUT_MS))?;
    Ok(state)
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
    let _inflight = Inflight::new(&shared.inflight);
    {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if shared.sessions.any_open(file) {
            return Err(err::locked(format!(
                "{} is being written; try again when the write session ends",
                names::display(file)
            ))
            .into());
        }
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
    let _inflight = Inflight::new(&shared.inflight);
    let meta = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if shared.sessions.any_open(file) {
            return Err(err::locked(format!(
                "{} is being written; try again when the write session ends",
                names::display(file)
            ))
            .into());
        }
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
