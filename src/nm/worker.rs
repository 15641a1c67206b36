//! The worker pool: threads that make the name server's blocking calls to storage servers (and
//! run EXEC), so the event loop never blocks.
//!
//! Jobs arrive over a bounded channel (`--queue-cap`); each result goes back over a channel and
//! the loop's `Waker`. The result channel never fills: it holds at most one result per queued
//! or running job.
//!
//! A pool's workers share the connections they keep to storage servers for the small calls
//! whose repeat is safe (SS_CREATE, SS_DELETE, SS_MKDIR, CHECK_FILES): see `sscall` for which
//! calls go on them and when one is sent again.

use super::core::{mono_ms, Env, Job, JobId, JobKind, JobOutput};
use super::exec::{self, ExecLimits};
use super::replication;
use crate::auth::{ClusterKey, Grant};
use crate::protocol::frame::ConnError;
use crate::protocol::{err, Connection, Message, Ticket, WireError};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

mod sscall;

pub use sscall::KeptConns;

/// Time allowed to connect to a storage server.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Time allowed for a storage server to answer one frame.
pub const CALL_TIMEOUT_MS: u64 = 15_000;
/// Largest script EXEC fetches.
pub const MAX_SCRIPT_BYTES: u64 = 1024 * 1024;
/// Output cap for EXEC.
pub const EXEC_OUTPUT_BYTES: usize = 1024 * 1024;
/// Process cap for EXEC.
pub const EXEC_MAX_PROCESSES: u64 = 64;

/// What EXEC jobs run under: the limits and the sandbox chosen at startup.
#[derive(Debug, Clone)]
pub struct ExecSetup {
    /// Resource and time limits.
    pub limits: ExecLimits,
    /// How scripts are isolated.
    pub sandbox: Arc<exec::Sandbox>,
}

/// A job's result as it returns to the loop.
pub type JobResult = (JobId, Result<JobOutput, WireError>);

/// Test hooks that kill the name server around a MOVE's storage-server call
/// (`PAIRFS_FAULT_NM` of `bin_nm`), so the recovery of its durable intent can be tested end to
/// end at the instants that matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NmFault {
    /// Exit just before SS_MOVE is sent (the intent is durable, nothing renamed).
    ExitBeforeSsMove,
    /// Exit just after SS_MOVE succeeded, before the loop hears of it (renamed, nothing
    /// committed on the name server).
    ExitAfterSsMove,
    /// Close the connection as soon as SS_MOVE is sent, as if its answer were lost, the
    /// first time only.
    CutAfterSsMoveSent,
}

impl NmFault {
    /// The hook named by `PAIRFS_FAULT_NM` (`exit-before-ss-move` or `exit-after-ss-move`).
    pub fn from_env(v: Option<&str>) -> Option<NmFault> {
        match v {
            Some("exit-before-ss-move") => Some(NmFault::ExitBeforeSsMove),
            Some("exit-after-ss-move") => Some(NmFault::ExitAfterSsMove),
            Some("cut-after-ss-move-sent") => Some(NmFault::CutAfterSsMoveSent),
            _ => None,
        }
    }

    /// Exits the process (status 86) when `fault` is the hook for instant `at` of a MOVE.
    fn exit_at(fault: Option<NmFault>, at: NmFault, msg: &Message) {
        let Message::SsMove { file, .. } = msg else {
            return;
        };
        if fault == Some(at) {
            log::warn!(target: crate::logging::ev::NM_FILE_CHANGE, file = file.as_str();
                "test hook PAIRFS_FAULT_NM={at:?}: exiting at the SS_MOVE of {file}");
            log::logger().flush();
            std::process::exit(86);
        }
    }
}

/// The shape of one worker pool.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Names its threads (`nm-<name>-<i>`).
    pub name: &'static str,
    /// Threads.
    pub workers: usize,
    /// EXEC wall-clock limit in seconds.
    pub exec_timeout_s: u64,
    /// How EXEC scripts are isolated (decided once at startup).
    pub sandbox: Arc<exec::Sandbox>,
    /// The test hook its calls obey, if any.
    pub fault: Option<NmFault>,
}

/// Starts `pool.workers` threads taking jobs from `jobs`; each result is sent on `results` and
/// then `notify` is called. A ticket a worker mints comes from the core's `env`.
pub fn spawn(
    pool: Pool,
    jobs: Receiver<Job>,
    results: Sender<JobResult>,
    key: ClusterKey,
    env: Arc<Env>,
    notify: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<()> {
    let Pool {
        name,
        workers,
        exec_timeout_s,
        sandbox,
        fault,
    } = pool;
    let conns = Arc::new(KeptConns::new());
    let setup = ExecSetup {
        limits: ExecLimits {
            timeout: Duration::from_secs(exec_timeout_s),
            max_output_bytes: EXEC_OUTPUT_BYTES,
            cpu_seconds: exec_timeout_s.max(1),
            max_processes: EXEC_MAX_PROCESSES,
            ..ExecLimits::default()
        },
        sandbox,
    };
    for i in 0..workers.max(1) {
        let jobs = jobs.clone();
        let results = results.clone();
        let notify = notify.clone();
        let setup = setup.clone();
        let key = key.clone();
        let env = env.clone();
        let conns = conns.clone();
        std::thread::Builder::new()
            .name(format!("nm-{name}-{i}"))
            .spawn(move || {
                loop {
                    // While connections are kept, a worker waits no longer than one may
                    // stay idle, and closes those that did; else it waits for a job alone.
                    let job = if conns.holds_any() {
                        match jobs.recv_timeout(Duration::from_millis(sscall::KEPT_IDLE_MS)) {
                            Ok(job) => job,
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                conns.sweep();
                                continue;
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                        }
                    } else {
                        match jobs.recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        }
                    };
                    let ctx = Ctx {
                        setup: &setup,
                        key: &key,
                        env: &env,
                        conns: &conns,
                        fault,
                    };
                    let (done, alone) = run_some(job, &jobs, &ctx);
                    for (id, out) in done {
                        if results.send((id, out)).is_err() {
                            return;
                        }
                    }
                    notify();
                    // A batch's large stale copies, by delta, each answered as it ends.
                    for (id, t) in alone {
                        let out = replication::run(&t, &key).map(JobOutput::Replicated);
                        if results.send((id, out)).is_err() {
                            return;
                        }
                        notify();
                    }
                }
            })?;
    }
    Ok(())
}

/// Runs `first` and, when it is a copy that may be batched (see [`replication::batchable`]) and
/// at least [`replication::BATCH_MIN_WAITING`] jobs are waiting behind it, up to
/// [`replication::BATCH_MAX`] - 1 of them: copies between the same two servers go in one batch
/// (a backup catching up on thousands of small files pays a few syncs per file instead of
/// four, and two connections per batch instead of per file); the others run one by one. Only
/// jobs that are waiting anyway are taken, so a lone change is never delayed. Returns the
/// results, and the batch's jobs left to run on their own after those are handed in (see
/// [`replication::run_batch`]).
fn run_some(
    first: Job,
    jobs: &Receiver<Job>,
    ctx: &Ctx<'_>,
) -> (Vec<JobResult>, Vec<(JobId, replication::Transfer)>) {
    let key = ctx.key;
    let JobKind::Replicate(lead) = &first.kind else {
        return (vec![(first.id, run(&first.kind, ctx))], vec![]);
    };
    let mut batch: Vec<(JobId, replication::Transfer)> = Vec::new();
    let mut others = Vec::new();
    // A batch answers all its jobs at its end: worth it for a backlog, not for a few changes
    // that other workers can copy at once, in parallel.
    let backlog = jobs.len() >= replication::BATCH_MIN_WAITING;
    if backlog && replication::batchable(lead, lead) {
        batch.push((first.id, lead.clone()));
        while batch.len() + others.len() < replication::BATCH_MAX {
            let Ok(next) = jobs.try_recv() else { break };
            match next.kind {
                JobKind::Replicate(t) if replication::batchable(lead, &t) => {
                    batch.push((next.id, t))
                }
                _ => others.push(next),
            }
        }
    } else {
        others.push(first);
    }
    let mut out = Vec::with_capacity(batch.len() + others.len());
    let mut alone = Vec::new();
    if batch.len() == 1 {
        let (id, t) = &batch[0];
        out.push((*id, replication::run(t, key).map(JobOutput::Replicated)));
    } else if !batch.is_empty() {
        let ts: Vec<replication::Transfer> = batch.iter().map(|(_, t)| t.clone()).collect();
        let rs = replication::run_batch(&ts, key);
        for ((id, t), r) in batch.iter().zip(rs) {
            match r {
                Some(r) => out.push((*id, r.map(JobOutput::Replicated))),
                None => alone.push((*id, t.clone())),
            }
        }
    }
    for job in others {
        out.push((job.id, run(&job.kind, ctx)));
    }
    (out, alone)
}

/// What a worker runs its jobs with.
pub struct Ctx<'a> {
    /// EXEC's limits and sandbox.
    pub setup: &'a ExecSetup,
    /// Mints the fresh ticket of a repeated call.
    pub key: &'a ClusterKey,
    /// The clock and randomness tickets are minted with.
    pub env: &'a Env,
    /// The connections the pool keeps to storage servers.
    pub conns: &'a KeptConns,
    /// The test hook its calls obey, if any.
    pub fault: Option<NmFault>,
}

/// Runs one job, blocking.
pub fn run(kind: &JobKind, ctx: &Ctx<'_>) -> Result<JobOutput, WireError> {
    let Ctx {
        setup,
        key,
        env,
        conns,
        fault,
    } = *ctx;
    match kind {
        JobKind::Replicate(t) => replication::run(t, key).map(JobOutput::Replicated),
        JobKind::SsCall {
            addr,
            msg: msg @ Message::SsMove { .. },
        } => run_move(addr, msg, key, env, fault),
        JobKind::SsCall { addr, msg } => match sscall::call(addr, msg, conns, key, env)?.msg {
            Message::FileStateReply { state } => Ok(JobOutput::State(state)),
            Message::Done {} => Ok(JobOutput::Done),
            Message::Checked {
                copies,
                orphans,
                more_orphans,
            } => Ok(JobOutput::Checked {
                copies,
                orphans,
                more_orphans,
            }),
            other => Err(err::internal(format!(
                "storage server answered {} unexpectedly",
                other.op_name()
            ))),
        },
        JobKind::Exec { addr, msg } => {
            let script = fetch(addr, msg)?;
            let r = exec::run_script(&script, &setup.limits, &setup.sandbox)?;
            Ok(JobOutput::Exec {
                output: r.output,
                exit_code: r.exit_code,
                truncated: r.truncated,
            })
        }
    }
}

/// Times an SS_MOVE whose answer was lost is sent again, and the pause before each.
const MOVE_REPEATS: u32 = 3;
const MOVE_REPEAT_PAUSE_MS: u64 = 300;

/// SS_MOVE. A refusal (ERR) or a failed connect means nothing was renamed. A lost answer
/// (the connection failed after the request went out) means the server may have renamed the
/// file: the move is sent again with a fresh ticket, which the server answers DONE if it
/// made it already; if no answer comes, [`JobOutput::MoveUnsettled`] leaves the move to be
/// settled by what the server lists when it registers again.
fn run_move(
    addr: &str,
    msg: &Message,
    key: &ClusterKey,
    env: &Env,
    fault: Option<NmFault>,
) -> Result<JobOutput, WireError> {
    static CUT_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Message::SsMove {
        file,
        to,
        version,
        ticket: t,
    } = msg
    else {
        return Err(err::internal(format!(
            "{} is not an SS_MOVE",
            msg.op_name()
        )));
    };
    // Only a repeat names the version: a first call that found the file already gone must
    // not take some other file at the new name for this move's rename.
    let ss_move = |version, ticket| Message::SsMove {
        file: file.clone(),
        to: to.clone(),
        version,
        ticket,
    };
    let mut conn = connect(addr)?;
    NmFault::exit_at(fault, NmFault::ExitBeforeSsMove, msg);
    let first = conn
        .send(&ss_move(None, t.clone()), &[])
        .map_err(ConnError::from)
        .and_then(|()| {
            if fault == Some(NmFault::CutAfterSsMoveSent)
                && !CUT_ONCE.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                log::warn!(target: crate::logging::ev::NM_FILE_CHANGE,
                "test hook PAIRFS_FAULT_NM=cut-after-ss-move-sent: closing the SS_MOVE connection");
                return Err(ConnError::Closed);
            }
            conn.recv_some()
        });
    let mut lost = match first {
        Ok(f) => return move_answer(f.msg, fault, msg),
        Err(e) => e.to_string(),
    };
    drop(conn);
    for attempt in 1..=MOVE_REPEATS {
        std::thread::sleep(Duration::from_millis(
            MOVE_REPEAT_PAUSE_MS * u64::from(attempt),
        ));
        let ticket = fresh_ticket(t, key, env);
        let again = ss_move(*version, ticket);
        let answer = connect(addr).and_then(|mut c| {
            c.send(&again, &[])
                .map_err(ConnError::from)
                .and_then(|()| c.recv_some())
                .map_err(|e| err::unavailable(e.to_string()))
        });
        match answer.map(|f| f.msg) {
            Ok(Message::Done {}) => return move_answer(Message::Done {}, fault, msg),
            // A refusal of a repeat says nothing of what the first call did (it may have
            // renamed the file at a version the repeat does not know, or the server's lease
            // may have lapsed for a moment): the next repeat may still hear DONE.
            Ok(Message::Err { code, msg: why }) => {
                lost = format!("a repeat was refused ({code:?}: {why})");
            }
            Ok(other) => lost = format!("unexpected {}", other.op_name()),
            Err(e) => lost = e.msg,
        }
    }
    Ok(JobOutput::MoveUnsettled(format!(
        "the answer to SS_MOVE was lost and none of {MOVE_REPEATS} repeats was answered DONE ({lost})"
    )))
}

/// The storage server's answer to an SS_MOVE: DONE, or its refusal.
fn move_answer(
    answer: Message,
    fault: Option<NmFault>,
    msg: &Message,
) -> Result<JobOutput, WireError> {
    match answer.into_result()? {
        Message::Done {} => {
            NmFault::exit_at(fault, NmFault::ExitAfterSsMove, msg);
            Ok(JobOutput::Done)
        }
        other => Err(err::internal(format!(
            "storage server answered {} to SS_MOVE",
            other.op_name()
        ))),
    }
}

/// A new ticket with the grant of `t` (each ticket is single use), for a call sent again: same
/// user, file, operation, server, minimum version and epoch.
fn fresh_ticket(t: &Ticket, key: &ClusterKey, env: &Env) -> Ticket {
    let grant = Grant {
        user: &t.user,
        file: &t.file,
        op: t.op,
        ss: &t.ss,
        min_version: t.min_version,
        epoch: t.epoch,
    };
    env.mint(key, &grant, mono_ms())
}

fn connect(addr: &str) -> Result<Connection, WireError> {
    let conn = Connection::connect(addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
        .map_err(|e| err::unavailable(format!("cannot reach storage server at {addr}: {e}")))?;
    conn.set_timeout(Some(Duration::from_millis(CALL_TIMEOUT_MS)))
        .map_err(|e| err::internal(e.to_string()))?;
    Ok(conn)
}

/// Reads a whole (small) file with a READ request.
fn fetch(addr: &str, msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut conn = connect(addr)?;
    let size = match conn.call(msg, &[])?.msg {
        Message::ReadOk { size, .. } => size,
        other => {
            return Err(err::internal(format!(
                "storage server answered {} to READ",
                other.op_name()
            )))
        }
    };
    if size > MAX_SCRIPT_BYTES {
        return Err(err::limit(format!(
            "script of {size} bytes exceeds the EXEC limit of {MAX_SCRIPT_BYTES} bytes"
        )));
    }
    let mut script = Vec::with_capacity(size as usize);
    loop {
        let f = conn.recv_some()?;
        match f.msg.into_result()? {
            Message::Chunk {} => {
                if script.len() as u64 + f.body.len() as u64 > size {
                    return Err(err::internal(
                        "storage server sent more bytes than announced",
                    ));
                }
                script.extend_from_slice(&f.body);
            }
            Message::End {} => return Ok(script),
            other => {
                return Err(err::internal(format!(
                    "storage server sent {} inside a READ",
                    other.op_name()
                )))
            }
        }
    }
}
