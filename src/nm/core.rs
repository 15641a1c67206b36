//! The name server's state and every decision it makes, with no I/O.
//!
//! The event loop (`server.rs`) hands the core frames, connection closes, worker results and
//! the current time; the core answers with [`Effect`]s (replies, closes, worker jobs) and a
//! batch of [`StoreOp`]s that must be durable before any reply produced alongside it is sent.
//! Keeping every decision here means tests drive the name server without sockets or disks.
//!
//! The core is given everything it decides with: the monotonic time on each event, and a
//! wall clock and randomness in its [`Env`] (see [`clock`]), so a run is reproducible.
//!
//! This file holds the state ([`Core`]), the entry points the event loop calls, and the
//! buffers every part writes to (effects and the store batch). `Core` owns the parts and
//! routes the flows that cross them (a failover: the pairs part decides, the queue rewrites
//! rows, the registry tells servers). The decisions live by area:
//! [`records`] (what is persisted), [`access`] (access times, written lazily), [`sessions`] (HELLO/PROVE), [`registry`] (storage servers,
//! connections and the pair topology, owned by `registry::Registry`), [`namespace`] (client requests, rights, LOCATE), [`folders`],
//! [`requests`] and [`checkpoints`], [`ops`] (operations started on a storage server and
//! their results), [`pairs`] (the pair states and their transitions, owned by
//! `pairs::Pairs`), [`queue`] (replication jobs), [`removals`] (the one decision on what a
//! removal owed to a member means, so it never takes a newer file), [`fsck`] (pages owned
//! by `fsck::Runs`), and [`status`].

mod access;
mod checkpoints;
mod clock;
mod creates;
mod deletes;
mod effects;
mod folders;
mod fsck;
mod jobtable;
mod namespace;
mod ops;
mod pairs;
mod queue;
mod records;
mod registry;
mod removals;
mod requests;
mod sessions;
mod status;

pub use access::ACCESS_FLUSH_MS;
pub use clock::{mono_ms, Entropy, Env, WallClock};
pub use effects::{Effect, Job, JobKind, JobOutput};
pub use fsck::{judge_copy, Lineage, Seen};
pub use records::{
    CreateIntent, DeleteIntent, FileRecord, FolderRecord, Loaded, Member, MoveIntent, PairRecord,
    Phase, ServerRecord, StoreOp, Unconfirmed,
};
use removals::{Meets, Removal};
use status::SetAside;
#[cfg(test)]
use status::STATUS_ERROR_BYTES;
pub use status::STATUS_FAILED_SHOWN;

use super::replication::{self, job_key, JobState, Outcome, ReplJob, Transfer, Want};
use crate::addr;
use crate::auth::{ClusterKey, Grant, NonceMemory, RegisterClaim, NM_USER, PROOF_SKEW_MS};
use crate::identity;
use crate::logging::ev;
use crate::names;
use crate::protocol::frame;
use crate::protocol::{
    err, AccessEntry, AccessMode, AccessRequest, FailedJob, FileInfo, FileState, FileSummary,
    FolderEntry, Frame, Message, PairStatus, ReplicaInfo, ServerStatus, Ticket, TicketOp, Version,
    WireError,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Identifies one connection to the name server (the loop's mio token).
pub type ConnId = usize;
/// Identifies one worker job.
pub type JobId = u64;

/// The first epoch of every pair (and the only one of an unpaired server); each change of a
/// pair's writer (promotion of the backup, return of the primary) raises the pair's epoch.
pub const EPOCH: u64 = 1;
/// Requests waiting behind an in-flight operation on one file; more are refused with LIMIT.
pub const MAX_WAITING_PER_FILE: usize = 32;
/// Most files a registering server may announce (bounds the registration buffer).
pub const MAX_REGISTER_FILES: u64 = 10_000_000;
/// Time a new connection has to say HELLO or finish registering before it is closed, so idle
/// sockets cannot hold connection slots.
pub const INTRODUCTION_TIMEOUT_MS: u64 = 60_000;
/// Longest a sync-mode answer waits for the backup's copy before it is sent degraded (the job
/// goes on); below the storage server's 10 s wait for CHANGED_ACK, so a writer is never told
/// its committed change failed only because the backup is slow.
pub const SYNC_WAIT_MS: u64 = 5_000;
/// Owner given to files adopted from a storage server that does not know their owner.
pub const ADOPTED_OWNER: &str = "admin";

/// Registration proofs remembered at once (each for its few minutes of validity).
const MAX_LIVE_PROOFS: usize = 100_000;
/// Staged uploads remembered at once; more are forgotten (their jobs send the content).
const MAX_STAGE_HINTS: usize = 1_024;

/// Settings the core decides with.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Interval storage servers are told to heartbeat at.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a server is declared down.
    pub heartbeat_timeout_ms: u64,
    /// Whether EXEC is allowed.
    pub exec_enabled: bool,
    /// The `--replication` mode: `async` or `sync`.
    pub replication: &'static str,
    /// Most replication jobs handed to the workers at once (queue capacity plus workers).
    pub max_repl_in_flight: usize,
    /// Monotonic ms when this name server started (see [`clock`]): a lease granted by an
    /// earlier run of it has surely ended one lease length later.
    pub started_ms: u64,
}

impl CoreConfig {
    /// How long a write lease lasts: two thirds of the heartbeat timeout. A storage server
    /// counts it from the moment it sent the heartbeat that was acknowledged, so it ends no
    /// later than (when the name server received that heartbeat) + lease; the name server
    /// declares a server down only a whole timeout after its last heartbeat, and moves the
    /// writer only after that bound, so two members never hold a lease at once. The third
    /// left over absorbs clock-rate differences and scheduling delay.
    pub fn lease_ms(&self) -> u64 {
        (self.heartbeat_timeout_ms * 2 / 3).max(1)
    }
}

/// Runtime state of a storage server.
#[derive(Debug, Clone)]
struct ServerLive {
    rec: ServerRecord,
    up: bool,
    last_heartbeat_ms: Option<u64>,
    conn: Option<ConnId>,
    files: u64,
    /// The latest heartbeat sequence received (an unsolicited ack names it).
    last_seq: u64,
    /// No lease this server was granted lasts beyond this (monotonic ms, see [`clock`]).
    lease_until_ms: u64,
    /// The storage file system's free and used bytes, from the latest heartbeat reporting it.
    disk: Option<crate::protocol::DiskUsage>,
}

/// A registration in progress on a connection.
#[derive(Debug)]
struct Registering {
    name: String,
    rec: ServerRecord,
    expected: u64,
    files: Vec<FileState>,
}

#[derive(Debug)]
enum Peer {
    Unknown,
    /// Said HELLO; must answer the challenge `nonce` with a PROVE.
    Challenged {
        user: String,
        nonce: String,
    },
    Client {
        user: String,
        busy: bool,
    },
    Registering(Box<Registering>),
    Server {
        name: String,
    },
}

/// A client request that needs a storage server, possibly waiting for its file.
#[derive(Debug, Clone)]
struct Pending {
    conn: ConnId,
    user: String,
    msg: Message,
}

/// Who waits for a change to reach the backup in sync mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    /// A client's CREATE, UNDO or DELETE.
    Client(ConnId),
    /// A storage server's CHANGED or REMOVED.
    Changed(ConnId, u64),
}

#[derive(Debug, Clone)]
struct SyncWait {
    waiter: Waiter,
    want: Want,
    deadline_ms: u64,
}

#[derive(Debug, Clone)]
enum Purpose {
    Create {
        owner: String,
        /// The pair (its primary's name).
        ss: String,
        /// The member that created it (the pair's writer).
        member: Member,
        /// UPLOAD of a missing file: answer with LOCATED instead of DONE.
        then_upload: bool,
    },
    Delete,
    Undo,
    Checkpoint,
    Revert,
    Move {
        to: String,
    },
    /// Folder directories pushed to a storage server; no client waits.
    Mkdir {
        ss: String,
    },
    Exec {
        user: String,
        started_ms: u64,
    },
    /// One server's check for an FSCK page.
    Fsck {
        run: u64,
        ss: String,
    },
}

#[derive(Debug, Clone)]
struct InFlight {
    conn: ConnId,
    file: String,
    purpose: Purpose,
    /// Whether this job holds its file's per-file slot.
    serialised: bool,
    /// For a change sent to a pair member: that server and the epoch its ticket carries. A
    /// result that arrives after the pair's epoch moved on is not credited (see
    /// [`Core::fenced_result`]).
    fence: Option<(String, u64)>,
}

/// The name server's state machine.
pub struct Core {
    cfg: CoreConfig,
    key: ClusterKey,
    /// The wall clock and randomness (see [`clock`]), shared with the workers that mint.
    env: Arc<Env>,
    /// The latest monotonic time the core was given.
    now_ms: u64,
    /// When the latest request or report since the loop last went idle arrived (see
    /// [`Core::going_idle`]).
    frame_since_idle_ms: Option<u64>,
    /// Storage servers, connections and pairs.
    reg: registry::Registry,
    /// Users, files, folders, access requests and unsettled moves and deletes (durable).
    ns: namespace::Namespace,
    /// Operations in flight: busy files and their waiting requests, worker jobs.
    ops: ops::InFlightOps,
    out: Vec<Effect>,
    batch: Vec<StoreOp>,
    /// How many ops of `batch` may wait for a later batch (see [`Core::lazily`]).
    lazy_ops: usize,
    /// The replication queue: durable jobs, those running, sync waits, staged uploads.
    q: queue::Queue,
    /// FSCK pages waiting for their servers' checks.
    fsck: fsck::Runs,
    /// The pairs' states by primary (durable) and their transitions.
    pairs: pairs::Pairs,
    /// The most recent failovers, recoveries, servers going down or up and quarantines, for
    /// `GET /status`.
    events: status::Events,
    /// Access times newer in memory than in the store (see [`access`]).
    access: access::AccessTimes,
}

fn not_found(file: &str) -> WireError {
    err::not_found(format!("File not found: {}", names::display(file)))
}

/// The server and epoch a change call's ticket was minted for (tickets of unpaired servers
/// carry no epoch and need no fence).
fn change_fence(kind: &JobKind) -> Option<(String, u64)> {
    let JobKind::SsCall { msg, .. } = kind else {
        return None;
    };
    let t = match msg {
        Message::SsCreate { ticket, .. }
        | Message::SsDelete { ticket, .. }
        | Message::SsUndo { ticket, .. }
        | Message::SsCheckpoint { ticket, .. }
        | Message::SsRevert { ticket, .. }
        | Message::SsMove { ticket, .. } => ticket,
        _ => return None,
    };
    t.epoch.map(|e| (t.ss.clone(), e))
}

fn no_live_copy(file: &str) -> WireError {
    err::unavailable(format!("no live copy of {}", names::display(file)))
}

impl Core {
    /// A core over the state loaded from the store, on the machine's wall clock and
    /// randomness from the OS; every server starts down.
    pub fn new(cfg: CoreConfig, key: ClusterKey, loaded: Loaded) -> Core {
        Core::with_env(cfg, key, loaded, Env::system())
    }

    /// A core over the state loaded from the store, taking its wall clock and randomness from
    /// `env`; every server starts down.
    pub fn with_env(cfg: CoreConfig, key: ClusterKey, loaded: Loaded, env: Env) -> Core {
        let boot_lease_until = cfg.started_ms + cfg.lease_ms();
        let pairs = pairs::Pairs::load(loaded.pair_states, &loaded.pairs, boot_lease_until);
        let mut servers: BTreeMap<String, ServerLive> = loaded
            .servers
            .into_iter()
            .map(|(n, rec)| {
                let live = ServerLive {
                    rec,
                    up: false,
                    last_heartbeat_ms: None,
                    conn: None,
                    files: 0,
                    last_seq: 0,
                    lease_until_ms: boot_lease_until,
                    disk: None,
                };
                (n, live)
            })
            .collect();
        for f in loaded.files.values() {
            if let Some(s) = servers.get_mut(&f.ss) {
                s.files += 1;
            }
        }
        let next_request = loaded
            .requests
            .keys()
            .next_back()
            .map_or(1, |id| id + 1)
            .max(loaded.next_request)
            .max(1);
        let ops = ops::InFlightOps::load(&loaded.moves);
        let q = queue::Queue::load(loaded.jobs.into_values(), cfg.started_ms);
        Core {
            now_ms: cfg.started_ms,
            frame_since_idle_ms: None,
            env: Arc::new(env),
            ns: namespace::Namespace {
                users: loaded.users,
                user_keys: loaded.user_keys.into_iter().collect(),
                files: loaded.files,
                folders: loaded.folders,
                requests: loaded.requests,
                next_request,
                moves: loaded.moves,
                deletes: loaded.deletes,
                creates: loaded.creates,
            },
            cfg,
            key,
            reg: registry::Registry::load(servers, loaded.pairs),
            ops,
            out: Vec::new(),
            batch: Vec::new(),
            lazy_ops: 0,
            q,
            fsck: fsck::Runs::default(),
            pairs,
            events: status::Events::default(),
            access: access::AccessTimes::default(),
        }
    }

    /// The wall clock and randomness the core mints tickets with, for a worker that must
    /// mint a fresh one (a repeated SS_MOVE): every ticket comes from [`Env::mint`].
    pub fn env(&self) -> Arc<Env> {
        self.env.clone()
    }

    /// Effects produced since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// Durable changes produced since the last call. Unwritten access times, and changes
    /// that may wait (see [`creates`]), ride along on a batch that is shipped anyway: a batch
    /// of nothing else is kept until one is, or until they are due (see [`access`]).
    pub fn take_batch(&mut self) -> Vec<StoreOp> {
        if self.batch.len() == self.lazy_ops {
            return Vec::new();
        }
        self.flush_access_times();
        self.lazy_ops = 0;
        std::mem::take(&mut self.batch)
    }

    /// True while a client's request is being worked on; its next frame must wait, so replies
    /// stay in request order.
    pub fn is_busy(&self, conn: ConnId) -> bool {
        matches!(self.reg.peer(conn), Some(Peer::Client { busy: true, .. }))
    }

    /// True once `conn` proved who it is: a client past WELCOME, or a storage server whose
    /// registration proof was checked. Only such peers may hold frame budget.
    pub fn is_introduced(&self, conn: ConnId) -> bool {
        matches!(
            self.reg.peer(conn),
            Some(Peer::Client { .. } | Peer::Registering(_) | Peer::Server { .. })
        )
    }

    /// True for a registered storage server's connection: its liveness is judged by its
    /// heartbeats, never by idling.
    pub fn is_storage_server(&self, conn: ConnId) -> bool {
        matches!(self.reg.peer(conn), Some(Peer::Server { .. }))
    }

    /// Jobs handed out and not yet answered.
    pub fn jobs_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// A new connection was accepted.
    pub fn on_connect(&mut self, conn: ConnId, now_ms: u64) {
        self.at(now_ms);
        self.reg.connect(conn, now_ms + INTRODUCTION_TIMEOUT_MS);
    }

    /// Where a new connection came from and which of this server's addresses it reached. A storage server that
    /// listens on a wildcard address is reached at the address its registration came from
    /// (`crate::addr::reachable_host`).
    pub fn on_peer_addr(&mut self, conn: ConnId, origin: addr::Origin) {
        self.reg.set_origin(conn, origin);
    }

    /// A connection closed (by the peer, an error, or us).
    pub fn on_close(&mut self, conn: ConnId, now_ms: u64) {
        self.at(now_ms);
        self.q.forget_waiter(conn);
        self.fsck.forget(conn);
        if let Some(name) = self.reg.close(conn) {
            self.events.note(
                self.env.wall_ms(now_ms),
                "SERVER_DOWN",
                &name,
                format!("{name} is down: its connection closed"),
            );
            self.target_down(&name);
            self.advance_pairs(now_ms);
        }
    }

    /// The earliest time [`Core::tick`] has something to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.reg
            .heartbeat_deadlines(self.cfg.heartbeat_timeout_ms)
            .chain(self.pairs.next_switch_ms())
            .chain(self.reg.introduction_deadlines())
            .chain(self.next_repl_deadline_ms())
            .chain(self.access_due_ms())
            .chain(self.q.next_wait_ms())
            .min()
    }

    /// Declares down every server silent for longer than the heartbeat timeout, and closes its
    /// link so it must register again.
    pub fn tick(&mut self, now_ms: u64) {
        self.at(now_ms);
        self.flush_due_access_times(now_ms);
        for conn in self.reg.take_late_introductions(now_ms) {
            self.refuse_and_close(
                conn,
                err::timeout("no HELLO or registration in time; closing"),
            );
        }
        let timeout = self.cfg.heartbeat_timeout_ms;
        let silent = self.reg.take_silent(now_ms, timeout);
        let mut down = Vec::new();
        for (name, conn) in silent {
            if let Some(c) = conn {
                self.out.push(Effect::Close { conn: c });
            }
            down.push(name);
        }
        for name in down {
            crate::metrics::nm().heartbeat_misses.inc();
            self.events.note(
                self.env.wall_ms(now_ms),
                "SERVER_DOWN",
                &name,
                format!("{name} is down: no heartbeat for {timeout} ms"),
            );
            self.target_down(&name);
        }
        self.advance_pairs(now_ms);
        self.expire_waits(now_ms);
        self.pump_replication(now_ms);
    }

    /// The loop is about to wait for its next event. A replication row due since a request
    /// handled before now (a CHANGED it owed, a retry it made due) should have been
    /// dispatched by the pump that follows the requests; one still waiting would sit until
    /// the loop's next deadline or periodic wake-up instead, and is counted
    /// (`pairfs_replication_missed_wakeups`). Rows that fell due later by their own timer
    /// are not: the loop's deadline wakes it for them.
    pub fn going_idle(&mut self) {
        let Some(frame_ms) = self.frame_since_idle_ms.take() else {
            return;
        };
        if self.next_repl_deadline_ms().is_some_and(|d| d <= frame_ms) {
            crate::metrics::nm().replication_missed_wakeups.inc();
        }
    }

    /// Notes the monotonic time an event arrived at (it never runs backwards).
    fn at(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Unix ms now: only for what is recorded or shown (see [`clock`]).
    fn wall_ms(&self) -> u64 {
        self.env.wall_ms(self.now_ms)
    }

    /// Unix ms at the monotonic time `t`, as seen at monotonic time `now_ms` (a past event,
    /// for STATUS).
    fn wall_at(&self, now_ms: u64, t: u64) -> u64 {
        self.env
            .wall_ms(now_ms)
            .saturating_sub(now_ms.saturating_sub(t))
    }

    /// A ticket for `op` on `file` at `ss`, minted on the core's wall clock and randomness.
    fn mint(
        &self,
        user: &str,
        file: &str,
        op: TicketOp,
        ss: &str,
        min_version: Option<Version>,
    ) -> Ticket {
        self.mint_grant(&Grant {
            user,
            file,
            op,
            ss,
            min_version,
            epoch: None,
        })
    }

    /// A ticket for a change, bound to the pair's `epoch`.
    fn mint_change(
        &self,
        user: &str,
        file: &str,
        op: TicketOp,
        ss: &str,
        min_version: Option<Version>,
        epoch: u64,
    ) -> Ticket {
        self.mint_grant(&Grant {
            user,
            file,
            op,
            ss,
            min_version,
            epoch: Some(epoch),
        })
    }

    fn mint_grant(&self, grant: &Grant<'_>) -> Ticket {
        self.env.mint(&self.key, grant, self.now_ms)
    }

    fn reply(&mut self, conn: ConnId, msg: Message) {
        self.out.push(Effect::Reply {
            conn,
            msg,
            body: Vec::new(),
        });
    }

    fn fail(&mut self, conn: ConnId, e: WireError) {
        if let Some(Peer::Client { user, .. }) = self.reg.peer(conn) {
            log::info!(target: ev::NM_REQUEST_ERROR, user = user.as_str(), code = e.code.as_str();
                "{}", e.msg);
        }
        self.reply(conn, Message::err(e));
    }

    fn refuse_and_close(&mut self, conn: ConnId, e: WireError) {
        self.reply(conn, Message::err(e));
        self.out.push(Effect::Close { conn });
    }

    fn set_busy(&mut self, conn: ConnId, value: bool) {
        self.reg.set_busy(conn, value);
    }

    fn add_user(&mut self, user: &str) {
        if names::validate_user(user).is_ok() && self.ns.users.insert(user.to_string()) {
            self.batch.push(StoreOp::PutUser(user.to_string()));
        }
    }

    fn put_file(&mut self, file: &str, rec: FileRecord) {
        let old_ss = self.ns.files.get(file).map(|r| r.ss.clone());
        if old_ss.as_deref() != Some(rec.ss.as_str()) {
            self.reg
                .count_file_move(old_ss.as_deref(), Some(rec.ss.as_str()));
        }
        // The change may give a parked job of this file a source.
        self.unpark_file(&rec.ss, file);
        self.forget_create_of(file);
        self.batch
            .push(StoreOp::PutFile(file.to_string(), rec.clone()));
        self.ns.files.insert(file.to_string(), rec);
    }

    /// Puts the parked job rows of `file` (owed to either member of `pair`) back in the job
    /// index. Free when nothing is parked.
    fn unpark_file(&mut self, pair: &str, file: &str) {
        if !self.q.has_parked() {
            return;
        }
        for m in [Member::Primary, Member::Backup] {
            if let Some(n) = self.reg.member_name(pair, m) {
                self.q.unpark(&job_key(&n, file));
            }
        }
    }

    fn del_file(&mut self, file: &str) {
        self.forget_create_of(file);
        if let Some(rec) = self.ns.files.remove(file) {
            self.reg.count_file_move(Some(rec.ss.as_str()), None);
            // A parked content row of the file is moot now: back in the index, the pump drops
            // it at once instead of counting it as owed until a server registers.
            self.unpark_file(&rec.ss, file);
            self.batch.push(StoreOp::DelFile(file.to_string()));
        }
    }

    fn new_job(&mut self, kind: JobKind, flight: InFlight) {
        let durable_first = matches!(flight.purpose, Purpose::Move { .. } | Purpose::Delete);
        let id = self.ops.start(flight);
        let job = Job { id, kind };
        self.out.push(if durable_first {
            Effect::DurableJob(job)
        } else {
            Effect::Job(job)
        });
    }

    /// Handles one frame from a connection.
    pub fn on_frame(&mut self, conn: ConnId, frame: Frame, now_ms: u64) {
        self.at(now_ms);
        self.frame_since_idle_ms = Some(now_ms);
        let msg = frame.msg;
        let peer = self.reg.take_peer(conn).unwrap_or(Peer::Unknown);
        match peer {
            Peer::Unknown => {
                self.reg.set_peer(conn, Peer::Unknown);
                match msg {
                    Message::Hello { user } => self.hello(conn, user),
                    Message::ResetUser { user, proof } => self.reset_user(conn, &user, &proof),
                    Message::Register {
                        name,
                        host,
                        client_port,
                        backup_of,
                        proof,
                        file_count,
                    } => {
                        if let Err(e) = names::validate_user(&name) {
                            return self.refuse_and_close(conn, e);
                        }
                        let claim = RegisterClaim {
                            name: &name,
                            host: &host,
                            client_port,
                            backup_of: backup_of.as_deref(),
                        };
                        let checked = self.key.check_proof(&claim, &proof).and_then(|()| {
                            self.reg.use_proof(
                                &proof.nonce,
                                proof.ts_ms + PROOF_SKEW_MS,
                                "registration proof",
                            )
                        });
                        if let Err(e) = checked {
                            log::warn!(target: ev::NM_SS_REGISTER, ss = name.as_str();
                                "refused registration of {name}: {}", e.msg);
                            return self.refuse_and_close(conn, e);
                        }
                        let from = self.reg.origin(conn);
                        let host = match addr::reachable_host(&name, &host, from) {
                            addr::Reachable::AsGiven => host,
                            addr::Reachable::Corrected(seen) => {
                                log::info!(target: ev::NM_SS_REGISTER, ss = name.as_str(), advertised = host.as_str(), host = seen.as_str();
                                    "{name} advertises {host}; clients will reach it at {seen}, the address its registration came from");
                                seen
                            }
                            addr::Reachable::Refused(why) => {
                                log::warn!(target: ev::NM_SS_REGISTER, ss = name.as_str(), advertised = host.as_str();
                                    "refused registration of {name}: {why}");
                                return self.refuse_and_close(conn, err::invalid(why));
                            }
                        };
                        if self.reg.is_connected(&name) {
                            return self.refuse_and_close(
                                conn,
                                err::conflict(format!(
                                    "a storage server named {name} is already connected"
                                )),
                            );
                        }
                        if file_count > MAX_REGISTER_FILES {
                            return self.refuse_and_close(
                                conn,
                                err::limit(format!("more than {MAX_REGISTER_FILES} files")),
                            );
                        }
                        let reg = Registering {
                            name,
                            rec: ServerRecord {
                                host,
                                client_port,
                                backup_of,
                            },
                            expected: file_count,
                            files: Vec::new(),
                        };
                        self.reg.set_peer(conn, Peer::Registering(Box::new(reg)));
                    }
                    other => self.refuse_and_close(
                        conn,
                        err::invalid(format!(
                            "expected HELLO or REGISTER first, got {}",
                            other.op_name()
                        )),
                    ),
                }
            }
            Peer::Challenged { user, nonce } => {
                self.reg.set_peer(conn, Peer::Unknown);
                match msg {
                    Message::Prove { key, sig } => self.prove(conn, user, &nonce, key, &sig),
                    other => self.refuse_and_close(
                        conn,
                        err::invalid(format!("expected PROVE, got {}", other.op_name())),
                    ),
                }
            }
            Peer::Client { user, busy } => {
                self.reg.set_peer(
                    conn,
                    Peer::Client {
                        user: user.clone(),
                        busy,
                    },
                );
                self.client_request(conn, user, msg, now_ms);
            }
            Peer::Registering(mut reg) => match msg {
                Message::FileBatch { files } => {
                    if reg.files.len() as u64 + files.len() as u64 > reg.expected {
                        self.refuse_and_close(
                            conn,
                            err::invalid("more files than REGISTER announced"),
                        );
                    } else {
                        reg.files.extend(files);
                        self.reg.set_peer(conn, Peer::Registering(reg));
                    }
                }
                Message::RegisterEnd {} => self.finish_register(conn, *reg, now_ms),
                other => self.refuse_and_close(
                    conn,
                    err::invalid(format!(
                        "expected FILE_BATCH or REGISTER_END, got {}",
                        other.op_name()
                    )),
                ),
            },
            Peer::Server { name } => {
                self.reg.set_peer(conn, Peer::Server { name: name.clone() });
                self.server_message(conn, &name, msg, now_ms);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
