//! The target end of replication: PUT_FILE_CONTENT, PUT_FILE_DELTA and PUT_BATCH, reading
//! a body to its END (`recv_part`, `recv_into`), verifying it, and installing it through the
//! store.

use super::*;
use crate::protocol::frame::Frame;
use std::time::Instant;

/// Routes a transfer into this server (or its source's SIGNATURE request) to its handler. Called by `dispatch::serve` with the frames it routes here.
pub(super) fn handle(shared: &Shared, conn: &mut Connection, frame: Frame) -> Result<(), Fail> {
    match frame.msg {
        Message::Signature {
            file,
            avg_bits,
            ticket,
        } => delta::signature(shared, conn, &file, avg_bits, &ticket),
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
            put_content(shared, conn, &head, &ticket)
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
            put_content(shared, conn, &head, &ticket)
        }
        Message::StageUpload {
            file,
            size,
            checksum,
            ticket,
        } => staging::stage_upload(shared, conn, &file, size, checksum, &ticket),
        Message::PutBatch {} => put_batch(shared, conn),
        other => Err(unexpected(&other)),
    }
}

/// Most history entries a transfer may describe (a copy keeps [`UNDO_DEPTH`]; a little slack
/// lets a peer with a deeper history still be understood, its oldest entries dropped).
pub(super) const MAX_TRANSFER_UNDO: usize = 4 * UNDO_DEPTH;

/// One received part of a stream (CHUNK* END).
pub(super) struct Received {
    /// The temp file holding the bytes (None when they were only drained).
    pub(super) temp: Option<TempFile>,
    /// The temp file still open when its sync was left to the caller (a batch syncs all its
    /// files together).
    pub(super) unsynced: Option<File>,
    /// Checksum and size (and counts, when asked for) of the bytes.
    pub(super) counter: ContentCounter,
    /// A local failure (disk full, ...) met while storing; the part was still read to END.
    pub(super) error: Option<StoreError>,
    /// How long making the temp file durable took here ([`SyncBy::Now`]; zero otherwise).
    pub(super) synced_in: Duration,
}

/// Parts at least this large have their words and characters counted on a thread of their
/// own, beside the thread that receives and writes them (counting binary content byte by byte
/// was the costliest step of an upload; with AVX-512 it costs less than checking the frames'
/// CRC32C, but on a processor without it the table still counts; smaller parts are not worth
/// a thread).
pub(super) const COUNT_THREAD_MIN_BYTES: u64 = 4 << 20;
/// Chunks that may wait for the counting thread: bounds the memory an upload takes when the
/// counter is slower than the network.
pub(super) const COUNT_QUEUE_CHUNKS: usize = 4;
/// Chunks handed to other threads that the receive loop follows to take their memory back.
const MAX_SHARED_BODIES: usize = 32;
/// After this many bytes written to a temp file, their writeback is started, so the final
/// fsync finds little left to write and the disk works while the network does.
pub(super) const WRITEBACK_BYTES: u64 = 8 << 20;

/// How [`recv_part`] treats the bytes it receives.
#[derive(Clone, Copy)]
pub(super) struct Keep {
    /// Store them in a temp file (else only count them).
    pub(super) store: bool,
    /// Who makes that file durable.
    pub(super) sync: SyncBy,
}

/// Who makes a received temp file durable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncBy {
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
///
/// A part of at least [`COUNT_THREAD_MIN_BYTES`] whose words are counted has them counted on
/// a thread of its own; a stored part of at least [`direct::DIRECT_MIN_BYTES`] is written by
/// a thread of its own (see `direct.rs`). This thread then only receives, checks and hands on,
/// and takes back the buffers of chunks the other threads are done with, for later chunks
/// ([`Connection::recycle`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn recv_part(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    limit: u64,
    keep: Keep,
    mut counter: ContentCounter,
    flip: &mut bool,
    tee: Option<&mut staging::Tee>,
) -> Result<Received, Fail> {
    let (temp, out, error) = if keep.store {
        match shared.store.temp_file(file) {
            Ok((t, f)) => (Some(t), Some(f), None),
            Err(e) => (None, None, Some(e)),
        }
    } else {
        (None, None, None)
    };
    let text = if limit >= COUNT_THREAD_MIN_BYTES {
        counter.take_text()
    } else {
        None
    };
    let write_thread = limit >= direct::DIRECT_MIN_BYTES && out.is_some();
    let received = thread::scope(|scope| -> Result<_, Fail> {
        let mut sink = Sink {
            file: out.as_ref(),
            error,
            count: None,
            write: None,
        };
        let mut counting = None;
        if let Some(mut text) = text {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(COUNT_QUEUE_CHUNKS);
            let spawned =
                thread::Builder::new()
                    .name("ss-count".into())
                    .spawn_scoped(scope, move || {
                        for body in rx {
                            text.update(&body);
                        }
                        text
                    });
            match spawned {
                Ok(h) => {
                    sink.count = Some(tx);
                    counting = Some(h);
                }
                // No thread to be had: count on this one.
                Err(_) => counter.put_text(TextCount::new()),
            }
        }
        let mut writing = None;
        if let (true, Some(t), Some(f)) = (write_thread, temp.as_ref(), out.as_ref()) {
            let (tx, rx) =
                std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(direct::WRITE_QUEUE_CHUNKS);
            let path = t.path();
            let spawned = thread::Builder::new()
                .name("ss-write".into())
                .spawn_scoped(scope, move || direct::write_all(path, f, rx));
            // No thread to be had: this one writes in place.
            if let Ok(h) = spawned {
                sink.file = None;
                sink.write = Some(tx);
                writing = Some(h);
            }
        }
        let r = recv_into(shared, conn, file, limit, counter, flip, sink, tee);
        // The senders are gone (dropped with `recv_into`), so the threads end after the last
        // chunk; they counted and wrote while this one received.
        let written = writing.map(|h| h.join());
        let text = counting.map(|h| h.join());
        let (mut counter, mut error) = r?;
        if let Some(text) = text {
            let text =
                text.map_err(|_| Fail::Reply(err::internal("the counting thread failed")))?;
            counter.put_text(text);
        }
        match written {
            None | Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                error = error.or_else(|| Some(shared.store.io_error(file, e)));
            }
            Some(Err(_)) => return Err(Fail::Reply(err::internal("the writing thread failed"))),
        }
        Ok((counter, error))
    });
    let (counter, error) = received?;
    Ok(Received::settle(
        shared, file, temp, out, keep.sync, counter, error,
    ))
}

/// Where [`recv_into`] puts the chunks it receives.
pub(super) struct Sink<'a> {
    /// The temp file, written in place (None when a writer thread writes it, or nothing is
    /// stored).
    pub(super) file: Option<&'a File>,
    /// A local failure (disk full, ...) met while storing; the part is still read to END.
    pub(super) error: Option<StoreError>,
    /// The counting thread.
    pub(super) count: Option<std::sync::mpsc::SyncSender<Arc<Vec<u8>>>>,
    /// The writer thread.
    pub(super) write: Option<std::sync::mpsc::SyncSender<Arc<Vec<u8>>>>,
}

/// The receive loop of [`recv_part`]: each chunk goes to `sink` and `tee`; returns the
/// counter and the first local failure.
#[allow(clippy::too_many_arguments)]
pub(super) fn recv_into(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    limit: u64,
    mut counter: ContentCounter,
    flip: &mut bool,
    mut sink: Sink<'_>,
    mut tee: Option<&mut staging::Tee>,
) -> Result<(ContentCounter, Option<StoreError>), Fail> {
    let mut written = 0u64;
    let mut flushed = 0u64;
    // The checksum and size are kept here and handed back in the counter at the end; the
    // words and characters, when this thread counts them, go on in `text`.
    let mut text = counter.take_text();
    let (mut sum, mut size) = (counter.checksum(), counter.size());
    let mut join = crate::protocol::frame::CrcJoin::default();
    // Chunks handed to other threads, oldest first, to take back for later chunks.
    let mut shared_bodies: std::collections::VecDeque<Arc<Vec<u8>>> = Default::default();
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
                let flipped = *flip && !body.is_empty();
                if flipped {
                    body[0] ^= 0x01;
                    *flip = false;
                    log::warn!(target: ev::SS_REFUSED, file = file, reason = "fault";
                        "test hook PAIRFS_FAULT_FLIP_PUT: flipped one byte of {file}");
                }
                if size + body.len() as u64 > limit {
                    return Err(Fail::ReplyClose(err::invalid(format!(
                        "more than the {limit} bytes declared for {}",
                        names::display(file)
                    ))));
                }
                // The frame's verified CRC32C extends the running checksum: the bytes are
                // not read once more for it (unless the fault hook changed them).
                sum = if flipped {
                    crc32c::crc32c_append(sum, &body)
                } else {
                    join.join(sum, crc, body.len())
                };
                size += body.len() as u64;
                if let Some(t) = text.as_mut() {
                    t.update(&body);
                }
                if let Some(mut f) = sink.file {
                    match f.write_all(&body) {
                        Ok(()) => {
                            written += body.len() as u64;
                            if written - flushed >= WRITEBACK_BYTES {
                                start_writeback(f, flushed, written - flushed);
                                flushed = written;
                            }
                        }
                        Err(e) => {
                            sink.error = Some(shared.store.io_error(file, e));
                            sink.file = None;
                        }
                    }
                }
                if sink.count.is_none() && sink.write.is_none() && tee.is_none() {
                    conn.recycle(body);
                    continue;
                }
                // Shared, not copied, with the writer and counting threads and the partner's
                // relay; once they are all done with it, its memory takes a later chunk.
                let body = Arc::new(body);
                while let Some(done) = shared_bodies.pop_front() {
                    match Arc::try_unwrap(done) {
                        Ok(b) => conn.recycle(b),
                        Err(busy) => {
                            shared_bodies.push_front(busy);
                            break;
                        }
                    }
                }
                if shared_bodies.len() >= MAX_SHARED_BODIES {
                    shared_bodies.pop_front();
                }
                shared_bodies.push_back(body.clone());
                if let Some(tx) = &sink.write {
                    if tx.send(body.clone()).is_err() {
                        return Err(Fail::Reply(err::internal("the writing thread failed")));
                    }
                }
                if let Some(t) = tee.as_deref_mut() {
                    t.push(&body, crc);
                }
                if let Some(tx) = &sink.count {
                    if tx.send(body).is_err() {
                        return Err(Fail::Reply(err::internal("the counting thread failed")));
                    }
                }
            }
            Message::End {} => {
                if let Some(t) = tee.as_deref_mut() {
                    t.end();
                }
                conn.drop_spares();
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
    let mut counter = ContentCounter::known(size, sum);
    if let Some(t) = text {
        counter.put_text(t);
    }
    Ok((counter, sink.error))
}

impl Received {
    /// No part at all (a staged content that is not installed).
    pub(super) fn nothing() -> Received {
        Received {
            temp: None,
            unsynced: None,
            counter: ContentCounter::bytes_only(),
            error: None,
            synced_in: Duration::ZERO,
        }
    }

    /// A part read to its END: its temp file `out` (if one was written) made durable as
    /// `sync` says, unless storing it already failed (then nothing of it is installed).
    pub(super) fn settle(
        shared: &Shared,
        file: &str,
        temp: Option<TempFile>,
        out: Option<File>,
        sync: SyncBy,
        counter: ContentCounter,
        mut error: Option<StoreError>,
    ) -> Received {
        let mut unsynced = None;
        let mut synced_in = Duration::ZERO;
        if let Some(f) = out.filter(|_| error.is_none()) {
            match sync {
                SyncBy::Caller => unsynced = Some(f),
                SyncBy::FileSystem => {}
                SyncBy::Now => {
                    let began = Instant::now();
                    if let Err(e) = f.sync_all() {
                        error = Some(shared.store.io_error(file, e));
                    }
                    synced_in = began.elapsed();
                }
            }
        }
        Received {
            temp,
            unsynced,
            counter,
            error,
            synced_in,
        }
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `f` to disk, without waiting:
/// only a hint (the fsync at the end is what makes the bytes durable), so a failure is ignored.
pub(super) fn start_writeback(f: &File, offset: u64, len: u64) {
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
pub(super) fn verify(
    r: &mut Received,
    what: &str,
    size: u64,
    checksum: u32,
) -> Result<(), WireError> {
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
pub(super) struct PutHead<'a> {
    pub(super) file: &'a str,
    pub(super) state: &'a FileState,
    pub(super) undo: &'a [UndoDesc],
    pub(super) sent: &'a [Version],
    pub(super) checkpoints: &'a [CheckpointInfo],
    pub(super) sent_checkpoints: &'a [String],
    /// The version and checksum of this server's copy that stands for the history entry of
    /// its version (verified before it is linked in): the copy a delta's ops refer to
    /// (PUT_FILE_DELTA), or the one a staged upload replaces.
    pub(super) basis: Option<(Version, u32)>,
    /// The parts are ops against the basis (PUT_FILE_DELTA), not bytes.
    pub(super) ops: bool,
    /// The id of the upload staged here that is the content (no content part follows).
    pub(super) staged: Option<&'a str>,
}

/// Checks the head of a PUT_FILE_CONTENT before its stream is read.
pub(super) fn check_put(shared: &Shared, h: &PutHead<'_>, t: &Ticket) -> Result<(), WireError> {
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

/// Most copies one PUT_BATCH may carry (bounds the temp files and open files it holds).
pub const MAX_BATCH_COPIES: usize = 64;

/// A copy received by PUT_FILE_CONTENT, read to its END.
pub(super) enum Arrived {
    /// This server holds that version or a newer one already: its state.
    Held(FileState),
    /// The received parts, still to be verified and installed (boxed: a batch holds many
    /// answers that are only a state).
    Staged(Box<Staged>),
}

/// The parts of a received copy.
pub(super) struct Staged {
    pub(super) state: FileState,
    pub(super) undo: Vec<UndoDesc>,
    pub(super) content: Received,
    pub(super) entries: Vec<(Version, Received)>,
    /// Every checkpoint of the file at the source.
    pub(super) checkpoints: Vec<CheckpointInfo>,
    /// The checkpoints sent, by tag.
    pub(super) ckpts: Vec<(String, Received)>,
    /// A verified basis (a delta's, or a staged upload's): the content held now, the history entry of its version.
    pub(super) basis: Option<Basis>,
}

/// Reads a PUT_FILE_CONTENT's stream (content, then each sent history entry, then each sent
/// checkpoint) into `tmp/`, synced when `sync`. A refused head still has its stream read, so
/// the connection stays in step; the refusal is then a [`Fail::Reply`].
pub(super) fn receive_copy(
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
pub(super) struct TempPaths<'a> {
    /// The copy's index among the staged ones.
    pub(super) i: usize,
    pub(super) content: PathBuf,
    pub(super) entries: Vec<(Version, PathBuf)>,
    pub(super) ckpts: Vec<(String, PathBuf)>,
    /// Those still to be synced.
    pub(super) unsynced: Vec<&'a File>,
}

/// Verifies every part of each staged copy against the size and checksum it was declared
/// with, syncs the temp files left unsynced (all together), and installs the copies that
/// verified, in one [`Store::install_copies`]. Nothing of a copy is installed unless all of
/// it verified. One result per copy, in order.
pub(super) fn install_staged(
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
pub(super) fn check_staged(st: &mut Staged) -> Result<(), WireError> {
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
pub(super) fn put_content(
    shared: &Shared,
    conn: &mut Connection,
    h: &PutHead<'_>,
    t: &Ticket,
) -> Result<(), Fail> {
    // Left unsynced: a small copy goes through the store's journal, which syncs none of
    // them; any other is synced by the install together with its record.
    let state = match receive_copy(shared, conn, h, t, SyncBy::Caller)? {
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
pub(super) fn put_batch(shared: &Shared, conn: &mut Connection) -> Result<(), Fail> {
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
