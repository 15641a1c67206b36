//! Client operations: READ, STREAM, write sessions and their commits, UPLOAD, the
//! client-initiated changes the name server relays (SS_CREATE, SS_DELETE, SS_UNDO), and
//! reading checkpoints (READ_CHECKPOINT, LIST_CHECKPOINTS).

use super::*;
use crate::protocol::frame::Frame;
use std::time::Instant;

/// Routes a client operation to its handler. Called by `dispatch::serve` with the frames it routes here.
pub(super) fn handle(shared: &Shared, conn: &mut Connection, frame: Frame) -> Result<(), Fail> {
    match frame.msg {
        Message::Read { file, ticket } => read(shared, conn, &file, &ticket),
        Message::Stream { file, ticket } => stream_words(shared, conn, &file, &ticket),
        Message::WriteBegin {
            file,
            sentence,
            ticket,
        } => write_session(shared, conn, &file, sentence, &ticket),
        Message::SsCreate {
            file,
            owner,
            epoch,
            counter,
            ticket,
        } => create(
            shared,
            conn,
            &file,
            &owner,
            Version::first(epoch, counter),
            &ticket,
        ),
        Message::SsDelete { file, ticket } => delete(shared, conn, &file, &ticket),
        Message::SsUndo {
            file,
            epoch,
            ticket,
        } => undo(shared, conn, &file, epoch, &ticket),
        Message::ReadCheckpoint { file, tag, ticket } => {
            read_checkpoint(shared, conn, &file, &tag, &ticket)
        }
        Message::ListCheckpoints { file, ticket } => list_checkpoints(shared, conn, &file, &ticket),
        Message::Upload {
            file,
            size,
            checksum,
            ticket,
        } => upload(shared, conn, &file, size, checksum, &ticket),
        other => Err(unexpected(&other)),
    }
}

pub(super) fn read(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    t: &Ticket,
) -> Result<(), Fail> {
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

pub(super) fn stream_words(
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
pub(super) struct SessionGuard<'a> {
    pub(super) sessions: &'a Sessions,
    pub(super) file: &'a str,
    pub(super) id: u64,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.sessions.close(self.file, self.id);
    }
}

pub(super) fn write_session(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    sentence: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise_change(shared, file, t, TicketOp::Write)?;
    let i = usize::try_from(sentence).map_err(|_| err::invalid("Sentence index out of range"))?;
    // A hand edit adopted here is reported under the file's lock but its ack awaited after:
    // the name server may fetch a copy from this server (which takes the lock) before it acks.
    let mut adoption = None;
    let opened = {
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
        if adopted {
            let wait = Duration::from_millis(CHANGED_ACK_TIMEOUT_MS);
            adoption = Some(shared.link.report(meta.state(file), None, wait));
        }
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
        Ok::<_, Fail>((id, words))
    };
    if let Some(r) = adoption {
        let _ = r.wait(&shared.link);
    }
    let (id, words) = opened?;
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
pub(super) fn joined_len(words: &[String]) -> usize {
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
pub(super) fn fault_hook() -> Option<&'static str> {
    static HOOK: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOOK.get_or_init(|| std::env::var("PAIRFS_FAULT_SS").ok())
        .as_deref()
}

/// Applies a session's sentence to the file's current content, durably, and reports it.
///
/// `base` is the sentence's words when the session opened. While the session held its lock,
/// another session's commit may have left its own sentence without a final delimiter, and its
/// tail then joined the front of this sentence (see document.rs). Those joined words are kept:
/// the sentence becomes `joined ++ edited`, never just `edited`, so no committed word is lost.
///
/// The report (CHANGED) leaves as soon as the change's journal entry is written, marked
/// pending, so the name server's commit runs while the entry is flushed here (see
/// [`Store::write_content_over`]); the renames, the history trim and any checkpoint run
/// after the flush, still overlapping it. The file's lock is held until the change is durable
/// and in place, so a reader or a copy the name server directs to the new version waits for
/// it; the client is answered only once the change is durable and the ack came.
/// Returns the new state and the copy count the name server's ack carried.
pub(super) fn commit(
    shared: &Shared,
    file: &str,
    id: u64,
    base: &[String],
    buf: &EditBuffer,
    t: &Ticket,
) -> Result<(FileState, Option<u32>), WireError> {
    let _inflight = Inflight::new(&shared.inflight);
    let wait = Duration::from_millis(CHANGED_ACK_TIMEOUT_MS);
    let mut report = None;
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
        let meta = shared.store.write_content_over(
            file,
            meta,
            Some(text.as_bytes()),
            new.as_bytes(),
            &mut |m, made| {
                let state = m.state(file);
                report = Some(match made {
                    Made::Written => shared.link.report_written(state, wait),
                    Made::Durable => shared.link.report(state, None, wait),
                })
            },
        )?;
        if i < count {
            shared.sessions.shift_after(file, id, i, n);
        }
        shared.sessions.close(file, id);
        log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), bytes = meta.size;
            "committed {file} version {}", meta.version);
        meta.state(file)
    };
    let report = report.unwrap_or_else(|| shared.link.report(state.clone(), None, wait));
    let copies = report.wait(&shared.link)?;
    Ok((state, copies))
}

/// The words a session's sentence should end up with, given the words the sentence holds now
/// (`current`), held when the session opened (`base`), and the session's edited words.
/// Under the sentence lock the only change others can make is joining words onto the front.
pub(super) fn rebase(
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

/// SS_CREATE: the empty file at the first version named, owned by `owner`, durable before the
/// answer. The same SS_CREATE made again (the name server repeats one whose connection closed
/// before any answer, with a fresh ticket) is answered with the file's state as a success
/// when the file is exactly what that create made and untouched since (see
/// `Store::create_at`); any other file at the name is refused as existing.
pub(super) fn create(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    owner: &str,
    first: Version,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise_change(shared, file, t, TicketOp::Create)?;
    names::validate_user(owner)?;
    let _inflight = Inflight::new(&shared.inflight);
    let meta = shared.store.create_at(file, owner, first)?;
    log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(); "created {file}");
    conn.send(
        &Message::FileStateReply {
            state: meta.state(file),
        },
        &[],
    )?;
    Ok(())
}

pub(super) fn delete(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    t: &Ticket,
) -> Result<(), Fail> {
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

pub(super) fn undo(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    epoch: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise_change(shared, file, t, TicketOp::Undo)?;
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

/// UPLOAD: `size` bytes into a temp file, counted and checked as they arrive, then installed
/// as a new version (the old content becomes a history entry) and confirmed by the name
/// server before COMMITTED.
pub(super) fn upload(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    size: u64,
    checksum: u32,
    t: &Ticket,
) -> Result<(), Fail> {
    let began = Instant::now();
    let head = authorise_change(shared, file, t, TicketOp::Upload)
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
    // Where the upload's time went, in its log line: receiving (and writing) the bytes, the
    // fsync of this copy, the wait for the partner's stage, the install.
    let received = began.elapsed();
    let mut r = r;
    verify(&mut r, &names::display(file), size, checksum)?;
    let temp = r.temp.ok_or_else(|| err::internal("no temp file"))?;
    let facts = r.counter.finish(0);
    // The partner synced its stage while this copy was synced: its answer comes now, before
    // the install, so the change is reported the moment it is installed.
    let staged_at = Instant::now();
    let staged = tee.and_then(staging::Tee::finish);
    let stage_wait = staged_at.elapsed();
    let state = {
        let _inflight = Inflight::new(&shared.inflight);
        // The body may have taken long to arrive: the lease must still hold now.
        may_change(shared, t)?;
        let installed_at = Instant::now();
        let meta = shared.store.upload(file, &t.user, temp.path(), &facts)?;
        let ms = |d: Duration| d.as_millis() as u64;
        log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), bytes = meta.size,
            recv_ms = ms(received.saturating_sub(r.synced_in)), sync_ms = ms(r.synced_in),
            stage_wait_ms = ms(stage_wait), install_ms = ms(installed_at.elapsed()),
            staged = staged.is_some();
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
pub(super) fn upload_fresh(shared: &Shared, file: &str, t: &Ticket) -> Result<(), WireError> {
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
pub(super) fn read_checkpoint(
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
pub(super) fn list_checkpoints(
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
