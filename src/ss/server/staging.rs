//! Staging: a large upload reaches the pair's other member while it arrives, so the backup's
//! copy is written at the same time as the writer's instead of after it (replicating an upload
//! after it was answered writes the two copies one after the other; staging writes them at
//! once, as a chained write does).
//!
//! # The writer's side
//!
//! The writer learns its partner from the name server: every HEARTBEAT_ACK carries `partner`
//! while the partner is up, and the name server pushes an ack at once when the partner
//! registers or goes down (the writer logs `ss_nm_link` with `partner`). While an UPLOAD of at
//! least [`STAGE_MIN_BYTES`] arrives, the writer hands each chunk, as it hands it to the thread
//! that writes its own temp file (see `direct.rs`; shared, not copied), to a `Tee` thread that
//! streams it to the partner as STAGE_UPLOAD (a ticket of
//! op `stage` the writer mints itself with the cluster key, for the partner's name),
//! re-sending each chunk with the CRC32C its frame arrived with. When the upload's END
//! arrives the relay sends END too, so the partner verifies size and CRC32C and fsyncs while
//! the writer fsyncs its own copy. The writer waits for STAGED (at most
//! [`TEE_FINISH_WAIT_MS`]) before it installs its copy, so its CHANGED still follows the
//! install at once, and reports the stage id with the CHANGED (`staged`).
//!
//! # The partner's side
//!
//! The partner writes the bytes into its `tmp/`, verifies them, makes them durable and
//! answers STAGED with an id. The stage changes nothing the partner serves: it sits in
//! [`Stages`], served to nobody, until claimed or expired. A partner keeps at most
//! [`MAX_STAGES`] stages and [`MAX_STAGED_BYTES`] of them (a new one evicts the oldest),
//! receives at most [`MAX_RECEIVING`] at once (more are refused), and removes a stage not
//! claimed within [`STAGE_TTL_MS`] (checked every [`STAGE_SWEEP_MS`]); `tmp/` is emptied at
//! every start.
//!
//! # The job, unchanged
//!
//! Nothing about replication's guarantees moves here. The job's row is written in the same
//! batch as the change, as always; the name server only remembers the stage id in memory
//! beside it, and forgets it whenever that row is rewritten or its target registers again.
//! When the job runs, the worker sends GET_FILE_CONTENT with `staged` = the version, and with
//! `basis` = the target's own older copy if it holds one. A source still at exactly that
//! version leaves the content out (`FILE_CONTENT.content_staged`), leaves out the history
//! entry of the basis version when its bytes have the basis checksum, and sends only the
//! other history entries and checkpoints the target lacks. The worker relays them into a
//! PUT_FILE_CONTENT naming the stage (`staged`, no content part) and, where the entry was
//! left out, the basis. The target takes the stage, checks it is the same file with the
//! state's size and checksum, verifies the basis by a whole read under the file lock as a
//! delta does (else it refuses the copy), and installs exactly as a received copy, linking
//! its old copy in as that history entry (`replication_staged`, `bytes` = history sent: 0 for
//! an upload over a file the backup held current).
//!
//! # A missing stage costs time, never correctness
//!
//! A partner that is down or unreachable is not staged on. One that refuses (it answers at
//! once and closes), errs, cuts the stream, takes no chunk for [`TEE_STALL_MS`], or makes the
//! upload wait for it over [`TEE_STALL_MS`] in all and over a quarter of the upload's time (it
//! is slower than the writer's disk) is dropped, its socket cut, and the upload goes on alone
//! (`ss_refused` `reason=stage` on the writer). So the backup can slow an upload by at most
//! about a quarter, never stop it; a partner slower than that is replicated afterwards, as
//! for any change. Short of that, a partner slower than the writer's own disk slows the
//! upload to its pace (bounded by the [`TEE_QUEUE_CHUNKS`] chunks in flight), as in any
//! chained replication. In async mode the upload's answer therefore also waits for the
//! staged copy to be durable, which is written at the same time as the writer's.
//!
//! A stage the target no longer holds (it restarted, the stage expired, the name server
//! restarted and forgot the id) makes the PUT fail with NOT_FOUND, logged
//! `replication_staged` at WARN, and the same job sends the file whole (the history entries
//! it had relayed cross again).

use super::{authorise, recv_part, verify, Fail, Keep, Received, Shared, SyncBy};
use crate::logging::ev;
use crate::names;
use crate::protocol::{err, Connection, Message, StagedRef, Ticket, TicketOp, WireError};
use crate::ss::store::{ContentCounter, TempFile};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Uploads at least this large are staged on the partner while they arrive; smaller ones
/// replicate about as fast after the upload as the stage would take to set up.
pub const STAGE_MIN_BYTES: u64 = 1 << 20;
/// Chunks handed to the tee thread and not yet sent to the partner.
pub const TEE_QUEUE_CHUNKS: usize = 8;
/// How long the upload waits for room in the tee's queue before dropping the partner; a
/// partner the upload has waited for this long in all, and for over a quarter of its time, is
/// dropped too (it is slower than this server's disk and the upload is better off alone).
pub const TEE_STALL_MS: u64 = 2_000;
/// How long the writer waits, after its own copy is installed, for the partner to confirm
/// its stage durable before reporting the upload without it.
pub const TEE_FINISH_WAIT_MS: u64 = 10_000;
/// Time allowed to connect to the partner.
pub const TEE_CONNECT_MS: u64 = 1_000;
/// Time allowed for one frame to or from the partner.
pub const TEE_FRAME_MS: u64 = 30_000;
/// How long a relay whose send failed waits for the partner's refusal to read.
const REFUSAL_READ_MS: u64 = 200;
/// Stages a server keeps at once; a new one evicts the oldest.
pub const MAX_STAGES: usize = 8;
/// Bytes of stages a server keeps at once; a new one evicts the oldest (the newest is kept
/// whatever its size).
pub const MAX_STAGED_BYTES: u64 = 8 << 30;
/// How often unclaimed stages past their time are removed.
pub const STAGE_SWEEP_MS: u64 = 5_000;
/// Stages a server receives at once; more are refused (the uploads replicate afterwards).
pub const MAX_RECEIVING: usize = 4;
/// A stage not claimed within this long is removed (its job, if it runs later, sends the file
/// whole).
pub const STAGE_TTL_MS: u64 = 5 * 60 * 1000;

/// Test hooks of the receiving side (`PAIRFS_FAULT_STAGE` of `bin_ss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageFault {
    /// Answer STAGED but keep nothing, as if the server had restarted since.
    Forget,
    /// Close the connection after the first chunk, as if the server had died mid-stream.
    Cut,
    /// Refuse every stage at once, as a server receiving too many does.
    Refuse,
}

impl StageFault {
    /// The hook named by `PAIRFS_FAULT_STAGE` (`forget`, `cut` or `refuse`).
    pub fn from_env(v: Option<&str>) -> Option<StageFault> {
        match v {
            Some("forget") => Some(StageFault::Forget),
            Some("cut") => Some(StageFault::Cut),
            Some("refuse") => Some(StageFault::Refuse),
            _ => None,
        }
    }
}

/// One upload staged here.
struct Stage {
    file: String,
    size: u64,
    checksum: u32,
    /// The durable temp file; dropping the stage removes it.
    temp: TempFile,
    at: Instant,
}

/// The uploads staged on this server, by id.
pub struct Stages {
    kept: Mutex<HashMap<String, Stage>>,
    receiving: AtomicUsize,
    fault: Option<StageFault>,
}

/// A receiving slot; dropping it frees the slot.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Stages {
    /// No stages, with the test hook `fault`.
    pub fn new(fault: Option<StageFault>) -> Stages {
        Stages {
            kept: Mutex::new(HashMap::new()),
            receiving: AtomicUsize::new(0),
            fault,
        }
    }

    fn admit(&self) -> Result<Slot<'_>, WireError> {
        let n = self.receiving.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(&self.receiving);
        if n >= MAX_RECEIVING || self.fault == Some(StageFault::Refuse) {
            return Err(err::limit(format!(
                "already receiving {MAX_RECEIVING} staged uploads"
            )));
        }
        Ok(slot)
    }

    /// The stages, those not claimed in time removed (their files with them).
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stage>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|_, s| s.at.elapsed() < Duration::from_millis(STAGE_TTL_MS));
        kept
    }

    /// Removes the stages not claimed in time (their files with them).
    pub fn sweep(&self) {
        drop(self.live());
    }

    /// Keeps a verified, durable stage; returns its id.
    fn keep(&self, file: &str, size: u64, checksum: u32, temp: TempFile) -> String {
        let id = crate::auth::random_hex(16);
        let mut kept = self.live();
        let bytes = |kept: &HashMap<String, Stage>| kept.values().map(|s| s.size).sum::<u64>();
        while !kept.is_empty()
            && (kept.len() >= MAX_STAGES || bytes(&kept).saturating_add(size) > MAX_STAGED_BYTES)
        {
            let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, s)| s.at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            kept.remove(&oldest);
        }
        if self.fault != Some(StageFault::Forget) {
            let stage = Stage {
                file: file.to_string(),
                size,
                checksum,
                temp,
                at: Instant::now(),
            };
            kept.insert(id.clone(), stage);
        }
        id
    }

    /// Takes stage `id` as the content of `file` with `size` and `checksum`, or says why it
    /// cannot stand for it (a stage that does not match is removed all the same).
    pub(super) fn take(
        &self,
        id: &str,
        file: &str,
        size: u64,
        checksum: u32,
    ) -> Result<Received, WireError> {
        let stage = self.live().remove(id);
        let Some(s) = stage else {
            return Err(err::not_found(format!(
                "no staged upload {id} of {} here",
                names::display(file)
            )));
        };
        if s.file != file || s.size != size || s.checksum != checksum {
            return Err(err::invalid(format!(
                "staged upload {id} holds {} bytes of {} with checksum {:08x}, not {size} bytes of {} with checksum {checksum:08x}",
                s.size,
                names::display(&s.file),
                s.checksum,
                names::display(file)
            )));
        }
        Ok(Received {
            temp: Some(s.temp),
            unsynced: None,
            counter: ContentCounter::known(size, checksum),
            error: None,
            synced_in: Duration::ZERO,
        })
    }
}

/// STAGE_UPLOAD: receives `size` bytes into `tmp/`, verifies and syncs them, and keeps them
/// as a stage. A refused request is answered at once and the connection closed.
pub(super) fn stage_upload(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    size: u64,
    checksum: u32,
    t: &Ticket,
) -> Result<(), Fail> {
    // Refused at once, and the connection closed: the writer's relay sees it on its next
    // chunk and the upload goes on alone rather than at this server's pace for nothing.
    let slot = authorise(shared, file, t, TicketOp::Stage)
        .and_then(|()| shared.stages.admit())
        .map_err(Fail::ReplyClose)?;
    if shared.stages.fault == Some(StageFault::Cut) {
        let _ = conn.recv();
        log::warn!(target: ev::SS_REFUSED, file = file, reason = "fault";
            "test hook PAIRFS_FAULT_STAGE=cut: closed the stage of {file}");
        return Err(Fail::Close);
    }
    let keep = Keep {
        store: true,
        sync: SyncBy::Now,
    };
    let mut r = recv_part(
        shared,
        conn,
        file,
        size,
        keep,
        ContentCounter::bytes_only(),
        &mut false,
        None,
    )?;
    drop(slot);
    verify(&mut r, &names::display(file), size, checksum)?;
    let temp = r.temp.ok_or_else(|| err::internal("no temp file"))?;
    let id = shared.stages.keep(file, size, checksum, temp);
    log::info!(target: ev::SS_COMMIT, file = file, bytes = size;
        "staged {size} bytes of {file} (stage {id}) from {}", t.user);
    conn.send(&Message::Staged { id }, &[])?;
    Ok(())
}

enum TeeMsg {
    /// A chunk and its CRC32C.
    Chunk(Arc<Vec<u8>>, u32),
    End,
}

/// The relay of one upload to the partner, on a thread of its own.
pub(super) struct Tee {
    tx: Option<Sender<TeeMsg>>,
    /// The relay's socket once connected, so giving up can cut it at once.
    socket: Arc<Mutex<Option<std::net::TcpStream>>>,
    started: Instant,
    /// Time the upload spent waiting for room in the queue.
    waited: Duration,
    /// The whole upload was handed on, END included.
    ended: bool,
    done: Receiver<Result<String, WireError>>,
    partner: String,
    file: String,
}

impl Tee {
    /// Starts relaying an upload of `file` (`size` bytes with `checksum`, by `user`) to the
    /// partner, if it is large enough and this server has a partner that is up.
    pub(super) fn start(
        shared: &Shared,
        file: &str,
        size: u64,
        checksum: u32,
        user: &str,
    ) -> Option<Tee> {
        if size < STAGE_MIN_BYTES {
            return None;
        }
        let partner = shared.link.partner()?;
        let ticket = shared
            .checker
            .key()
            .mint(user, file, TicketOp::Stage, &partner.name, None);
        let head = Message::StageUpload {
            file: file.to_string(),
            size,
            checksum,
            ticket,
        };
        let (tx, rx) = bounded(TEE_QUEUE_CHUNKS);
        let (done_tx, done) = bounded(1);
        let addr = partner.addr.clone();
        let socket = Arc::new(Mutex::new(None));
        let sock = socket.clone();
        let spawned = thread::Builder::new()
            .name("ss-stage".into())
            .spawn(move || {
                let _ = done_tx.send(relay(&addr, &head, &rx, &sock));
            });
        if let Err(e) = spawned {
            log::warn!(target: ev::SS_NM_LINK, file = file;
                "cannot start the stage relay of {file}: {e}; it replicates after the upload");
            return None;
        }
        Some(Tee {
            tx: Some(tx),
            socket,
            started: Instant::now(),
            waited: Duration::ZERO,
            ended: false,
            done,
            partner: partner.name,
            file: file.to_string(),
        })
    }

    /// Hands on one chunk (with its CRC32C), already written here. A partner that failed,
    /// or has not taken a chunk for [`TEE_STALL_MS`], is dropped.
    pub(super) fn push(&mut self, body: &Arc<Vec<u8>>, crc: u32) {
        let Some(tx) = &self.tx else { return };
        let before = Instant::now();
        let sent = tx.send_timeout(
            TeeMsg::Chunk(body.clone(), crc),
            Duration::from_millis(TEE_STALL_MS),
        );
        self.waited += before.elapsed();
        let slow = self.waited > Duration::from_millis(TEE_STALL_MS)
            && self.waited > self.started.elapsed() / 4;
        if sent.is_err() || slow {
            let why = match self.done.try_recv() {
                Ok(Err(e)) => e.msg,
                _ if sent.is_err() => format!("it took no bytes for {TEE_STALL_MS} ms"),
                _ => format!(
                    "it is slower than this server (the upload waited {} ms for it)",
                    self.waited.as_millis()
                ),
            };
            self.give_up(&why);
        }
    }

    /// Stops relaying: the queue is dropped and the socket cut, so the relay thread ends at
    /// once and the partner discards what it received.
    fn abandon(&mut self) {
        self.tx = None;
        if let Some(s) = self
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The upload's END arrived: the partner may verify and sync its copy now, while this
    /// server syncs its own.
    pub(super) fn end(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        if tx
            .send_timeout(TeeMsg::End, Duration::from_millis(TEE_STALL_MS))
            .is_ok()
        {
            self.ended = true;
        } else {
            self.give_up(&format!("it took no bytes for {TEE_STALL_MS} ms"));
        }
    }

    /// Waits (at most [`TEE_FINISH_WAIT_MS`]) for the partner to confirm the stage durable:
    /// its reference, or None if the stage did not make it.
    pub(super) fn finish(mut self) -> Option<StagedRef> {
        if !self.ended {
            return None;
        }
        let result = self
            .done
            .recv_timeout(Duration::from_millis(TEE_FINISH_WAIT_MS))
            .unwrap_or_else(|_| {
                Err(err::timeout(format!(
                    "no answer within {TEE_FINISH_WAIT_MS} ms"
                )))
            });
        match result {
            Ok(id) => Some(StagedRef {
                ss: self.partner.clone(),
                id,
            }),
            Err(e) => {
                self.give_up(&e.msg);
                None
            }
        }
    }

    /// Drops the partner from this upload and says why.
    fn give_up(&mut self, why: &str) {
        self.abandon();
        log::warn!(target: ev::SS_REFUSED, file = self.file.as_str(), ss = self.partner.as_str(), reason = "stage";
            "the upload of {} is not staged on {}: {why}; it replicates after the upload",
            self.file, self.partner);
    }
}

impl Drop for Tee {
    /// An upload that ends without [`Tee::finish`] (refused, cut short) cuts its stage too.
    fn drop(&mut self) {
        self.abandon();
    }
}

/// The tee thread: STAGE_UPLOAD to `addr`, then every chunk handed on, then END and the
/// answer. A stream the upload abandons (the channel closes without END) is cut, so the
/// partner discards it.
fn relay(
    addr: &str,
    head: &Message,
    rx: &Receiver<TeeMsg>,
    socket: &Mutex<Option<std::net::TcpStream>>,
) -> Result<String, WireError> {
    let mut conn = Connection::connect(addr, Duration::from_millis(TEE_CONNECT_MS))
        .map_err(|e| err::unavailable(format!("cannot reach {addr}: {e}")))?;
    conn.set_timeout(Some(Duration::from_millis(TEE_FRAME_MS)))
        .map_err(|e| err::internal(e.to_string()))?;
    *socket.lock().unwrap_or_else(|p| p.into_inner()) = conn.stream().try_clone().ok();
    match stream(&mut conn, head, rx) {
        Ok(true) => {}
        Ok(false) => return Err(err::unavailable("the upload ended before its END")),
        // A partner that refuses answers ERR and closes: a send that fails then reports its
        // answer (if one arrived) rather than the broken pipe.
        Err(e) => {
            let _ = conn.set_timeout(Some(Duration::from_millis(REFUSAL_READ_MS)));
            return Err(match conn.recv() {
                Ok(Some(f)) => match f.msg.into_result() {
                    Err(refused) => refused,
                    Ok(m) => err::internal(format!("{addr} answered {}", m.op_name())),
                },
                _ => err::unavailable(format!("sending to {addr}: {e}")),
            });
        }
    }
    match conn.recv_some()?.msg.into_result()? {
        Message::Staged { id } => Ok(id),
        other => Err(err::internal(format!(
            "{addr} answered {} to STAGE_UPLOAD",
            other.op_name()
        ))),
    }
}

/// Sends the head, every chunk handed on and END: false if the upload ended without END.
fn stream(conn: &mut Connection, head: &Message, rx: &Receiver<TeeMsg>) -> std::io::Result<bool> {
    conn.send(head, &[])?;
    loop {
        match rx.recv() {
            Ok(TeeMsg::Chunk(body, crc)) => conn.send_with_crc(&Message::Chunk {}, &body, crc)?,
            Ok(TeeMsg::End) => break,
            Err(_) => return Ok(false),
        }
    }
    conn.send(&Message::End {}, &[])?;
    Ok(true)
}
