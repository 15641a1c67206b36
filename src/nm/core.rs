//! The name server's state and every decision it makes, with no I/O.
//!
//! The event loop (`server.rs`) hands the core frames, connection closes, worker results and
//! the current time; the core answers with [`Effect`]s (replies, closes, worker jobs) and a
//! batch of [`StoreOp`]s that must be durable before any reply produced alongside it is sent.
//! Keeping every decision here means tests drive the name server without sockets or disks.

#[path = "checkpoints.rs"]
mod checkpoints;
#[path = "folders.rs"]
mod folders;
#[path = "requests.rs"]
mod requests;

pub use folders::{FolderRecord, MoveIntent};

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

mod clock;
mod fsck;
mod jobtable;
pub use clock::{mono_ms, Entropy, Env, WallClock};
pub use fsck::{judge_copy, Lineage, Seen};

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

/// Everything the name server records about one file (stored as JSON in the `files` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The owner: full rights, the only one who may delete or change access.
    pub owner: String,
    /// The storage server holding the file.
    pub ss: String,
    /// Current version.
    pub version: Version,
    /// CRC32C of the current content.
    pub checksum: u32,
    /// Bytes.
    pub size: u64,
    /// Words.
    pub words: u64,
    /// Characters.
    pub chars: u64,
    /// Unix milliseconds of creation.
    pub created_ms: u64,
    /// Unix milliseconds of the last content change.
    pub modified_ms: u64,
    /// Users other than the owner with access; `true` means read and write.
    #[serde(default)]
    pub access: BTreeMap<String, bool>,
    /// Unix milliseconds of the last READ/STREAM/WRITE.
    #[serde(default)]
    pub accessed_ms: Option<u64>,
    /// Who accessed last.
    #[serde(default)]
    pub accessed_by: Option<String>,
    /// The owning server registered without this file (a hand deletion, or a server started
    /// on the wrong or an empty `--storage`). The record and its access rights are kept, and
    /// nothing is deleted from the backup: only the owner's DELETE removes a record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub primary_missing: bool,
    /// The version the pair's backup is known to hold (`None`: not known to hold it).
    #[serde(default)]
    pub backup_version: Option<Version>,
    /// Set while the primary is behind (the promoted backup took changes it misses): the
    /// version the primary is known to hold. `None` with `primary_missing` false: the
    /// primary holds `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_held: Option<Version>,
    /// The last version of an earlier epoch, kept when the first change of a newer epoch
    /// lands: a returning member holding a copy of that earlier epoch newer than this has
    /// changes the cluster never acknowledged, and the copy is quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_base: Option<Version>,
}

impl FileRecord {
    fn apply_state(&mut self, s: &FileState) {
        self.primary_missing = false;
        self.version = s.version;
        self.checksum = s.checksum;
        self.size = s.size;
        self.words = s.words;
        self.chars = s.chars;
        self.modified_ms = s.modified_ms;
    }

    /// The version `member` is known to hold, if any.
    fn held(&self, member: Member) -> Option<Version> {
        match member {
            Member::Primary if self.primary_missing => None,
            Member::Primary => Some(self.primary_held.unwrap_or(self.version)),
            Member::Backup => self.backup_version,
        }
    }

    /// Whether `member` holds the current version.
    fn holds(&self, member: Member) -> bool {
        self.held(member) == Some(self.version)
    }

    /// Records that `member` holds `v` (or nothing).
    fn set_held(&mut self, member: Member, v: Option<Version>) {
        match member {
            Member::Primary => {
                self.primary_missing = v.is_none();
                self.primary_held = v.filter(|v| *v != self.version);
            }
            Member::Backup => self.backup_version = v,
        }
    }

    /// Only `member` holds a copy, at `v` (a new file, an adopted one, a moved one).
    fn held_only_by(&mut self, member: Member, v: Version) {
        self.set_held(member, Some(v));
        self.set_held(member.other(), None);
    }

    /// A change `s` made by `writer`: the writer holds it, the other member keeps what it held.
    fn apply_change(&mut self, writer: Member, s: &FileState) {
        let other = writer.other();
        let other_held = self.held(other);
        if s.version.epoch > self.version.epoch {
            self.epoch_base = Some(self.version);
        }
        self.apply_state(s);
        self.set_held(writer, Some(s.version));
        self.set_held(other, other_held);
    }

    fn can_read(&self, user: &str) -> bool {
        self.owner == user || self.access.contains_key(user)
    }

    fn can_write(&self, user: &str) -> bool {
        self.owner == user || self.access.get(user).copied().unwrap_or(false)
    }
}

/// One member of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Member {
    /// The server named by the pair (files are placed on it).
    Primary,
    /// Its backup.
    Backup,
}

impl Member {
    /// The other member of the pair.
    pub fn other(self) -> Member {
        match self {
            Member::Primary => Member::Backup,
            Member::Backup => Member::Primary,
        }
    }
}

/// Where a pair stands in its writer's life; the state STATUS shows is this combined with
/// which members are up (see [`Core::pair_state_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// The writer takes changes (while it is up); the other member follows.
    Serving,
    /// The writer is down: nobody takes changes until its last lease has surely expired,
    /// then the other member becomes the writer in a new epoch.
    FailingOver,
    /// The promoted backup is stepping down for the returning primary, which holds every
    /// change: no new leases; once the backup's last lease expired (and nothing is owed to
    /// the primary) the primary writes again in a new epoch.
    Handback,
}

/// The durable state of one pair (the `pair_states` table, keyed by the primary's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRecord {
    /// The writer's phase.
    pub phase: Phase,
    /// The pair's epoch: versions written by this writer carry it; tickets for changes carry
    /// it and a server on another epoch refuses them. At most one member writes per epoch.
    pub epoch: u64,
    /// The member that takes changes in this epoch.
    pub writer: Member,
    /// Monotonic ms (this run's clock, see [`clock`]) before which the writer may not change
    /// (FAILING_OVER, HANDBACK): by then the last lease the old writer was granted has ended.
    /// Stored, but meaningless to a later run: loading re-derives it from the boot.
    #[serde(default)]
    pub switch_at_ms: u64,
    /// Progress of the current catch-up: transfers owed since the pair was last in step
    /// (kept in memory only; a restarted name server counts afresh).
    #[serde(skip)]
    pub sync_total: u64,
    /// See `sync_total`.
    #[serde(skip)]
    pub sync_done: u64,
}

impl PairRecord {
    fn new() -> PairRecord {
        PairRecord {
            phase: Phase::Serving,
            epoch: EPOCH,
            writer: Member::Primary,
            switch_at_ms: 0,
            sync_total: 0,
            sync_done: 0,
        }
    }
}

/// The durable part of a storage server's registration (the `servers` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Host clients connect to.
    pub host: String,
    /// Client port.
    pub client_port: u16,
    /// The primary this server backs up, if any.
    #[serde(default)]
    pub backup_of: Option<String>,
}

impl ServerRecord {
    fn addr(&self) -> String {
        addr::join(&self.host, self.client_port)
    }
}

/// A change to the durable state; the store applies a batch of them in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Record a user (a no-op for one already recorded, so it never drops a bound key).
    PutUser(String),
    /// Record a user bound to a public key (hex).
    PutUserKey(String, String),
    /// Forget the key a user is bound to (it binds again at its next session).
    ResetUserKey(String),
    /// Insert or replace a file record.
    PutFile(String, FileRecord),
    /// Remove a file record.
    DelFile(String),
    /// Insert or replace a server record.
    PutServer(String, ServerRecord),
    /// Record a pair: primary, backup.
    PutPair(String, String),
    /// Insert or replace a pair's state (keyed by the primary).
    PutPairState(String, PairRecord),
    /// Insert or replace a replication job (keyed by [`ReplJob::key`]).
    PutJob(ReplJob),
    /// Remove a replication job by key.
    DelJob(String),
    /// Insert or replace a folder record.
    PutFolder(String, FolderRecord),
    /// Insert or replace a pending access request.
    PutRequest(AccessRequest),
    /// Remove an access request (answered, or its file deleted).
    DelRequest(u64),
    /// The next access-request id (the counter only rises).
    PutNextRequest(u64),
    /// Record a MOVE about to be sent, keyed by the file's old name.
    PutMove(String, MoveIntent),
    /// Remove a MOVE's intent (settled: moved, refused, or found not to have happened).
    DelMove(String),
}

/// The durable state as loaded at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Every user ever seen.
    pub users: BTreeSet<String>,
    /// The public key each bound user proved at first use (see `crate::identity`); users
    /// recorded without one bind at their next session.
    pub user_keys: BTreeMap<String, String>,
    /// The file index by canonical name.
    pub files: BTreeMap<String, FileRecord>,
    /// Storage servers ever registered.
    pub servers: BTreeMap<String, ServerRecord>,
    /// Pairs: primary name to backup name.
    pub pairs: BTreeMap<String, String>,
    /// Pair states by primary name.
    pub pair_states: BTreeMap<String, PairRecord>,
    /// Replication jobs by key.
    pub jobs: BTreeMap<String, ReplJob>,
    /// Folders by canonical name.
    pub folders: BTreeMap<String, FolderRecord>,
    /// Pending access requests by id.
    pub requests: BTreeMap<u64, AccessRequest>,
    /// The next access-request id (0 when none was ever given).
    pub next_request: u64,
    /// MOVEs not settled when the name server stopped, by the file's old name.
    pub moves: BTreeMap<String, MoveIntent>,
}

/// Blocking work for the worker pool.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Send `msg` (SS_CREATE, SS_DELETE, SS_UNDO or CHECK_FILES) to the storage server at
    /// `addr`.
    SsCall {
        /// `host:port` of the storage server.
        addr: String,
        /// The request.
        msg: Message,
    },
    /// Fetch the file with `msg` (a READ) from `addr` and run it as a script.
    Exec {
        /// `host:port` of the storage server.
        addr: String,
        /// The READ request.
        msg: Message,
    },
    /// Copy a file to a backup, or delete it there (runs on the replication workers).
    Replicate(Transfer),
}

/// A job for the worker pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Correlates the result.
    pub id: JobId,
    /// What to do.
    pub kind: JobKind,
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutput {
    /// The storage server answered with a file's state.
    State(FileState),
    /// The storage server answered DONE.
    Done,
    /// A replication job finished.
    Replicated(Outcome),
    /// A storage server answered an FSCK check (CHECKED).
    Checked {
        /// One entry per file asked about.
        copies: Vec<crate::protocol::CopyCheck>,
        /// Quarantined copies of files the server does not hold.
        orphans: Vec<crate::protocol::QuarantineEntry>,
        /// Further such copies not listed.
        more_orphans: u64,
    },
    /// An SS_MOVE's answer was lost, and so were its repeats': the storage server may have
    /// renamed the file or not (why, for the client).
    MoveUnsettled(String),
    /// EXEC ran.
    Exec {
        /// Combined output (capped).
        output: Vec<u8>,
        /// Exit code, if `sh` exited.
        exit_code: Option<i32>,
        /// Whether the cap cut the output.
        truncated: bool,
    },
}

/// What the loop must do after the core handled something.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a frame to a connection once everything before it is durable.
    Reply {
        /// Target connection.
        conn: ConnId,
        /// The message.
        msg: Message,
        /// Raw body (EXEC output).
        body: Vec<u8>,
    },
    /// Close a connection after its queued replies are sent.
    Close {
        /// Target connection.
        conn: ConnId,
    },
    /// Run a job on the worker pool.
    Job(Job),
    /// Run a job on the worker pool once everything before it is durable (a MOVE's intent
    /// must be on disk before the storage server renames the file).
    DurableJob(Job),
}

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
    /// The wall clock and randomness (see [`clock`]).
    env: Env,
    /// The latest monotonic time the core was given.
    now_ms: u64,
    /// Registration proofs already used: a captured REGISTER cannot be replayed.
    proof_nonces: NonceMemory,
    users: BTreeSet<String>,
    /// Bound users' public keys (durable; see `crate::identity`).
    user_keys: HashMap<String, String>,
    files: BTreeMap<String, FileRecord>,
    servers: BTreeMap<String, ServerLive>,
    peers: HashMap<ConnId, Peer>,
    /// Files with an NM-initiated operation in flight, and the requests waiting behind it.
    busy_files: HashMap<String, VecDeque<Pending>>,
    jobs: HashMap<JobId, InFlight>,
    /// Connections that have not finished HELLO or registration, with their deadline.
    introducing: HashMap<ConnId, u64>,
    /// The address each connection came from (set by the event loop after `on_connect`).
    origins: HashMap<ConnId, addr::Origin>,
    next_job: JobId,
    out: Vec<Effect>,
    batch: Vec<StoreOp>,
    /// Pairs: primary name to backup name (durable).
    pairs: BTreeMap<String, String>,
    /// Replication jobs by key (durable; the channel only dispatches them).
    repl: jobtable::JobTable,
    /// Replication jobs handed to the workers: job id to key and what was dispatched (their
    /// keys are marked running in `repl`, so one key is never dispatched twice at once).
    running: HashMap<JobId, (String, Want)>,
    /// Sync-mode answers waiting for a job, by job key.
    sync_waits: HashMap<String, Vec<SyncWait>>,
    /// Uploads staged on a job's target while they arrived, by job key: the version staged
    /// and the stage's id there (see `ss/server/staging.rs`; memory only).
    stages: HashMap<String, (Version, String)>,
    /// FSCK pages waiting for their servers' checks.
    fsck: fsck::Runs,
    /// Pair states by primary (durable).
    pair_states: BTreeMap<String, PairRecord>,
    /// Folders by canonical name (durable); with `files`, the namespace's ordered index.
    folders: BTreeMap<String, FolderRecord>,
    /// Pending access requests by id (durable).
    requests: BTreeMap<u64, AccessRequest>,
    /// The next access-request id (durable; only rises).
    next_request: u64,
    /// MOVEs sent (or about to be) and not yet settled, by the file's old name (durable).
    moves: BTreeMap<String, MoveIntent>,
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
        let mut pair_states = loaded.pair_states;
        for p in loaded.pairs.keys() {
            pair_states.entry(p.clone()).or_insert_with(PairRecord::new);
        }
        // A switch the last run waited for was timed on its monotonic clock: every lease that
        // run granted has ended by one lease length after this boot.
        for st in pair_states.values_mut() {
            if st.phase != Phase::Serving {
                st.switch_at_ms = boot_lease_until;
            }
        }
        // Likewise a job's retry time: what the last run left owed is due now.
        let started_ms = cfg.started_ms;
        let jobs = loaded.jobs.into_values().map(move |mut j| {
            j.next_ms = started_ms;
            j
        });
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
        // A MOVE the last run left unsettled keeps both names reserved until the server it
        // was sent to registers and shows whether it renamed the file.
        let mut busy_files: HashMap<String, VecDeque<Pending>> = HashMap::new();
        for (from, m) in &loaded.moves {
            busy_files.entry(from.clone()).or_default();
            busy_files.entry(m.to.clone()).or_default();
        }
        Core {
            now_ms: cfg.started_ms,
            env,
            moves: loaded.moves,
            folders: loaded.folders,
            requests: loaded.requests,
            next_request,
            cfg,
            key,
            proof_nonces: NonceMemory::new(MAX_LIVE_PROOFS),
            users: loaded.users,
            user_keys: loaded.user_keys.into_iter().collect(),
            files: loaded.files,
            servers,
            peers: HashMap::new(),
            busy_files,
            jobs: HashMap::new(),
            introducing: HashMap::new(),
            origins: HashMap::new(),
            next_job: 1,
            out: Vec::new(),
            batch: Vec::new(),
            pairs: loaded.pairs,
            repl: jobtable::JobTable::new(jobs),
            running: HashMap::new(),
            sync_waits: HashMap::new(),
            stages: HashMap::new(),
            fsck: fsck::Runs::default(),
            pair_states,
        }
    }

    /// Effects produced since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// Durable changes produced since the last call.
    pub fn take_batch(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.batch)
    }

    /// True while a client's request is being worked on; its next frame must wait, so replies
    /// stay in request order.
    pub fn is_busy(&self, conn: ConnId) -> bool {
        matches!(self.peers.get(&conn), Some(Peer::Client { busy: true, .. }))
    }

    /// True once `conn` proved who it is: a client past WELCOME, or a storage server whose
    /// registration proof was checked. Only such peers may hold frame budget.
    pub fn is_introduced(&self, conn: ConnId) -> bool {
        matches!(
            self.peers.get(&conn),
            Some(Peer::Client { .. } | Peer::Registering(_) | Peer::Server { .. })
        )
    }

    /// True for a registered storage server's connection: its liveness is judged by its
    /// heartbeats, never by idling.
    pub fn is_storage_server(&self, conn: ConnId) -> bool {
        matches!(self.peers.get(&conn), Some(Peer::Server { .. }))
    }

    /// Jobs handed out and not yet answered.
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// A new connection was accepted.
    pub fn on_connect(&mut self, conn: ConnId, now_ms: u64) {
        self.at(now_ms);
        self.peers.insert(conn, Peer::Unknown);
        self.introducing
            .insert(conn, now_ms + INTRODUCTION_TIMEOUT_MS);
    }

    /// Where a new connection came from and which of this server's addresses it reached. A storage server that
    /// listens on a wildcard address is reached at the address its registration came from
    /// (`crate::addr::reachable_host`).
    pub fn on_peer_addr(&mut self, conn: ConnId, origin: addr::Origin) {
        self.origins.insert(conn, origin);
    }

    /// A connection closed (by the peer, an error, or us).
    pub fn on_close(&mut self, conn: ConnId, now_ms: u64) {
        self.at(now_ms);
        self.introducing.remove(&conn);
        self.origins.remove(&conn);
        self.forget_waiter(conn);
        self.fsck.forget(conn);
        if let Some(Peer::Server { name }) = self.peers.remove(&conn) {
            let mut went_down = false;
            if let Some(s) = self.servers.get_mut(&name) {
                if s.conn == Some(conn) {
                    s.conn = None;
                    if s.up {
                        s.up = false;
                        went_down = true;
                        log::warn!(target: ev::HEARTBEAT_MONITOR_FAILURE, ss = name.as_str();
                            "storage server {name} is down (connection closed)");
                    }
                }
            }
            if went_down {
                self.target_down(&name);
                self.advance_pairs(now_ms);
            }
        }
    }

    /// The earliest time [`Core::tick`] has something to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let heartbeats = self
            .servers
            .values()
            .filter(|s| s.up)
            .filter_map(|s| s.last_heartbeat_ms)
            .map(|t| t + self.cfg.heartbeat_timeout_ms);
        let switches = self
            .pair_states
            .values()
            .filter(|p| p.phase != Phase::Serving)
            .map(|p| p.switch_at_ms);
        heartbeats
            .chain(switches)
            .chain(self.introducing.values().copied())
            .chain(self.next_repl_deadline_ms())
            .chain(
                self.sync_waits
                    .values()
                    .flat_map(|w| w.iter().map(|x| x.deadline_ms)),
            )
            .min()
    }

    /// Declares down every server silent for longer than the heartbeat timeout, and closes its
    /// link so it must register again.
    pub fn tick(&mut self, now_ms: u64) {
        self.at(now_ms);
        let late: Vec<ConnId> = self
            .introducing
            .iter()
            .filter(|(_, d)| now_ms >= **d)
            .map(|(c, _)| *c)
            .collect();
        for conn in late {
            self.introducing.remove(&conn);
            self.refuse_and_close(
                conn,
                err::timeout("no HELLO or registration in time; closing"),
            );
        }
        let timeout = self.cfg.heartbeat_timeout_ms;
        let mut down = Vec::new();
        for (name, s) in self.servers.iter_mut() {
            let silent = s.last_heartbeat_ms.is_some_and(|t| now_ms >= t + timeout);
            if s.up && silent {
                s.up = false;
                down.push(name.clone());
                log::warn!(target: ev::HEARTBEAT_MONITOR_FAILURE, ss = name.as_str(), ms = timeout;
                    "storage server {name} is down (no heartbeat for {timeout} ms)");
                if let Some(c) = s.conn.take() {
                    self.out.push(Effect::Close { conn: c });
                }
            }
        }
        for name in down {
            self.target_down(&name);
        }
        self.advance_pairs(now_ms);
        self.expire_waits(now_ms);
        self.pump_replication(now_ms);
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
        self.key
            .mint_at(grant, self.wall_ms(), self.env.random_hex(16))
    }

    fn reply(&mut self, conn: ConnId, msg: Message) {
        self.out.push(Effect::Reply {
            conn,
            msg,
            body: Vec::new(),
        });
    }

    fn fail(&mut self, conn: ConnId, e: WireError) {
        if let Some(Peer::Client { user, .. }) = self.peers.get(&conn) {
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
        if let Some(Peer::Client { busy, .. }) = self.peers.get_mut(&conn) {
            *busy = value;
        }
    }

    fn add_user(&mut self, user: &str) {
        if names::validate_user(user).is_ok() && self.users.insert(user.to_string()) {
            self.batch.push(StoreOp::PutUser(user.to_string()));
        }
    }

    fn put_file(&mut self, file: &str, rec: FileRecord) {
        let old_ss = self.files.get(file).map(|r| r.ss.clone());
        if old_ss.as_deref() != Some(rec.ss.as_str()) {
            if let Some(s) = old_ss.and_then(|o| self.servers.get_mut(&o)) {
                s.files = s.files.saturating_sub(1);
            }
            if let Some(s) = self.servers.get_mut(&rec.ss) {
                s.files += 1;
            }
        }
        // The change may give a parked job of this file a source.
        self.unpark_file(&rec.ss, file);
        self.batch
            .push(StoreOp::PutFile(file.to_string(), rec.clone()));
        self.files.insert(file.to_string(), rec);
    }

    /// Puts the parked job rows of `file` (owed to either member of `pair`) back in the job
    /// index. Free when nothing is parked, as on every READ's access-time update.
    fn unpark_file(&mut self, pair: &str, file: &str) {
        if !self.repl.has_parked() {
            return;
        }
        for m in [Member::Primary, Member::Backup] {
            if let Some(n) = self.member_name(pair, m) {
                self.repl.unpark(&job_key(&n, file));
            }
        }
    }

    fn del_file(&mut self, file: &str) {
        if let Some(rec) = self.files.remove(file) {
            if let Some(s) = self.servers.get_mut(&rec.ss) {
                s.files = s.files.saturating_sub(1);
            }
            // A parked content row of the file is moot now: back in the index, the pump drops
            // it at once instead of counting it as owed until a server registers.
            self.unpark_file(&rec.ss, file);
            self.batch.push(StoreOp::DelFile(file.to_string()));
        }
    }

    fn new_job(&mut self, kind: JobKind, flight: InFlight) {
        let id = self.next_job;
        self.next_job += 1;
        let durable_first = matches!(flight.purpose, Purpose::Move { .. });
        self.jobs.insert(id, flight);
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
        let msg = frame.msg;
        let peer = self.peers.remove(&conn).unwrap_or(Peer::Unknown);
        match peer {
            Peer::Unknown => {
                self.peers.insert(conn, Peer::Unknown);
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
                            self.proof_nonces.use_once(
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
                        let from = self.origins.get(&conn).copied();
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
                        if self
                            .servers
                            .get(&name)
                            .is_some_and(|s| s.up && s.conn.is_some())
                        {
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
                        self.peers.insert(conn, Peer::Registering(Box::new(reg)));
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
                self.peers.insert(conn, Peer::Unknown);
                match msg {
                    Message::Prove { key, sig } => self.prove(conn, user, &nonce, key, &sig),
                    other => self.refuse_and_close(
                        conn,
                        err::invalid(format!("expected PROVE, got {}", other.op_name())),
                    ),
                }
            }
            Peer::Client { user, busy } => {
                self.peers.insert(
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
                        self.peers.insert(conn, Peer::Registering(reg));
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
                self.peers.insert(conn, Peer::Server { name: name.clone() });
                self.server_message(conn, &name, msg, now_ms);
            }
        }
    }

    /// HELLO: the user must now prove its key (see `crate::identity`).
    fn hello(&mut self, conn: ConnId, user: String) {
        if let Err(e) = names::validate_user(&user) {
            return self.refuse_and_close(conn, e);
        }
        let nonce = self.env.random_hex(identity::NONCE_BYTES);
        self.peers.insert(
            conn,
            Peer::Challenged {
                user,
                nonce: nonce.clone(),
            },
        );
        self.reply(conn, Message::Challenge { nonce });
    }

    /// RESET_USER from an operator holding the cluster key: the user's next session binds
    /// a new key. Answered (after the change is durable) and closed either way.
    fn reset_user(&mut self, conn: ConnId, user: &str, proof: &crate::protocol::KeyProof) {
        let checked = names::validate_user(user)
            .and_then(|()| identity::check_reset_proof(&self.key, user, proof))
            .and_then(|()| {
                self.proof_nonces
                    .use_once(&proof.nonce, proof.ts_ms + PROOF_SKEW_MS, "reset proof")
            })
            .and_then(|()| {
                if self.users.contains(user) {
                    Ok(())
                } else {
                    Err(err::not_found(format!("no user {user}")))
                }
            });
        if let Err(e) = checked {
            return self.refuse_and_close(conn, e);
        }
        self.introducing.remove(&conn);
        if self.user_keys.remove(user).is_some() {
            self.batch.push(StoreOp::ResetUserKey(user.to_string()));
        }
        log::info!(target: ev::NM_USER_KEY, user = user, outcome = "reset";
            "user {user} reset: its next session binds a new key");
        self.reply(conn, Message::Done {});
        self.out.push(Effect::Close { conn });
    }

    /// PROVE: checks the signature, binds a user with no key yet (trust on first use, made
    /// durable before the WELCOME goes out, as every reply waits for the batch before it),
    /// and refuses a key other than the bound one.
    fn prove(&mut self, conn: ConnId, user: String, nonce: &str, key: String, sig: &str) {
        if !identity::verify(&key, &user, nonce, sig) {
            log::warn!(target: ev::NM_USER_KEY, user = user.as_str(), outcome = "refused";
                "refused {user}: the proof of its key does not verify");
            return self.refuse_and_close(
                conn,
                err::unauthorized(format!("the proof of {user}'s key does not verify")),
            );
        }
        match self.user_keys.get(&user) {
            Some(bound) if *bound == key => {}
            Some(_) => {
                log::warn!(target: ev::NM_USER_KEY, user = user.as_str(), outcome = "refused";
                    "refused {user}: another key than the one it is bound to");
                return self.refuse_and_close(conn, identity::other_key(&user));
            }
            None => {
                self.users.insert(user.clone());
                self.user_keys.insert(user.clone(), key.clone());
                self.batch.push(StoreOp::PutUserKey(user.clone(), key));
                log::info!(target: ev::NM_USER_KEY, user = user.as_str(), outcome = "bound";
                    "user {user} bound to its first key");
            }
        }
        self.introducing.remove(&conn);
        self.add_user(&user);
        log::info!(target: ev::NM_CLIENT_CONNECT, user = user.as_str(); "client {user} connected");
        self.peers.insert(
            conn,
            Peer::Client {
                user: user.clone(),
                busy: false,
            },
        );
        let lease_ms = Some(self.cfg.lease_ms());
        self.reply(conn, Message::Welcome { user, lease_ms });
    }

    // ----- storage servers -----

    fn finish_register(&mut self, conn: ConnId, reg: Registering, now_ms: u64) {
        let Registering {
            name, rec, files, ..
        } = reg;
        if self
            .servers
            .get(&name)
            .is_some_and(|s| s.up && s.conn.is_some())
        {
            return self.refuse_and_close(
                conn,
                err::conflict(format!(
                    "a storage server named {name} is already connected"
                )),
            );
        }
        let known = self.servers.get(&name).map(|s| s.rec.clone());
        if known.as_ref() != Some(&rec) {
            self.batch
                .push(StoreOp::PutServer(name.clone(), rec.clone()));
        }
        let files_before = self.servers.get(&name).map(|s| s.files).unwrap_or(0);
        let was_down = self.servers.get(&name).is_some_and(|s| !s.up);
        let lease_until_ms = self
            .servers
            .get(&name)
            .map_or(self.cfg.started_ms + self.cfg.lease_ms(), |s| {
                s.lease_until_ms
            });
        self.servers.insert(
            name.clone(),
            ServerLive {
                rec: rec.clone(),
                up: true,
                last_heartbeat_ms: Some(now_ms),
                conn: Some(conn),
                files: files_before,
                last_seq: 0,
                lease_until_ms,
            },
        );
        self.introducing.remove(&conn);
        if let Some(p) = Self::declared_primary(&name, &rec) {
            self.pair_up(&p, &name);
        } else {
            let partner = self
                .servers
                .iter()
                .find(|(n, s)| Self::declared_primary(n, &s.rec).as_deref() == Some(name.as_str()))
                .map(|(n, _)| n.clone());
            if let Some(b) = partner {
                self.pair_up(&name, &b);
            }
        }
        let released = self.resolve_moves(&name, &files, now_ms);
        let (adopted, updated, removed) = match self.membership(&name) {
            Some((p, m)) => {
                if was_down {
                    log::info!(target: ev::NM_SS_RECOVERY, ss = name.as_str(), pair = p.as_str();
                        "{name} is back; comparing its files with the records of pair {p}");
                }
                self.reconcile_member(&p, m, files, now_ms);
                (0, 0, 0)
            }
            None if self.is_backup(&name) => (0, 0, 0),
            None => self.reconcile(&name, files, now_ms),
        };
        let epoch = self.epoch_of(&name);
        let writer = self.may_write(&name);
        if writer {
            // REGISTERED grants the first lease, counted by the server from before it sent
            // REGISTER_END.
            if let Some(s) = self.servers.get_mut(&name) {
                s.lease_until_ms = s.lease_until_ms.max(now_ms + self.cfg.lease_ms());
            }
        }
        self.peers.insert(conn, Peer::Server { name: name.clone() });
        let held = self.servers.get(&name).map(|s| s.files).unwrap_or(0);
        log::info!(target: ev::NM_SS_REGISTER, ss = name.as_str(), addr = rec.addr(),
            files = held, adopted = adopted, updated = updated, removed = removed;
            "storage server {name} registered at {} with {held} files", rec.addr());
        self.reply(
            conn,
            Message::Registered {
                epoch,
                heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
                backup: !writer,
                lease_ms: self.cfg.lease_ms(),
            },
        );
        // A server empties its `tmp/` at start: no stage noted for it survives.
        let prefix = job_key(&name, "");
        self.stages.retain(|k, _| !k.starts_with(&prefix));
        self.push_partner(&name);
        self.advance_pairs(now_ms);
        self.push_all_folders(&name);
        // A server is up again: jobs parked for want of a source may have one now.
        self.repl.unpark_all();
        for f in released {
            self.next_for_file(&f, now_ms);
        }
        self.pump_replication(now_ms);
    }

    /// Brings the index in line with a registering server's file list. Returns counts of
    /// adopted, updated, and newly missing records.
    fn reconcile(&mut self, ss: &str, list: Vec<FileState>, now_ms: u64) -> (u64, u64, u64) {
        let (mut adopted, mut updated, mut removed) = (0, 0, 0);
        let mut present = BTreeSet::new();
        for st in list {
            let Ok(file) = names::canonical_file(&st.file) else {
                continue;
            };
            present.insert(file.clone());
            match self.files.get(&file) {
                Some(rec) if rec.ss == ss => {
                    if st.version > rec.version {
                        let mut rec = rec.clone();
                        rec.apply_state(&st);
                        self.put_file(&file, rec);
                        self.owe(&file, true, now_ms);
                        updated += 1;
                    } else if rec.primary_missing {
                        let mut rec = rec.clone();
                        rec.primary_missing = false;
                        self.put_file(&file, rec);
                    }
                }
                // Another server holds the record; pairs will decide which copy wins.
                Some(_) => {}
                None => {
                    self.adopt(ss, Member::Primary, &file, &st);
                    self.owe(&file, false, now_ms);
                    adopted += 1;
                }
            }
        }
        let gone: Vec<String> = self
            .files
            .iter()
            .filter(|(f, r)| r.ss == ss && !present.contains(*f))
            .map(|(f, _)| f.clone())
            .collect();
        // A file the server no longer lists is marked missing, never deleted: an unmounted disk
        // or a mistyped `--storage` must not erase the index, access rights, or the backup's
        // copy. Only the owner's DELETE removes a record.
        for f in gone {
            if let Some(rec) = self.files.get(&f) {
                if !rec.primary_missing {
                    let mut rec = rec.clone();
                    rec.primary_missing = true;
                    self.put_file(&f, rec);
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            log::warn!(target: ev::NM_SS_REGISTER, ss = ss, missing = removed;
                "{ss} registered without {removed} file(s) the index places on it; they are marked missing, not deleted");
        }
        (adopted, updated, removed)
    }

    /// Records a file the index did not know, found on `member` of the pair (or unpaired
    /// server) `ss`.
    fn adopt(&mut self, ss: &str, member: Member, file: &str, st: &FileState) {
        let owner = st
            .owner
            .clone()
            .filter(|o| names::validate_user(o).is_ok())
            .unwrap_or_else(|| ADOPTED_OWNER.to_string());
        self.add_user(&owner);
        let created_ms = if st.modified_ms > 0 {
            st.modified_ms
        } else {
            self.wall_ms()
        };
        let mut rec = FileRecord {
            owner,
            ss: ss.to_string(),
            version: st.version,
            checksum: st.checksum,
            size: st.size,
            words: st.words,
            chars: st.chars,
            created_ms,
            modified_ms: st.modified_ms,
            access: BTreeMap::new(),
            accessed_ms: None,
            accessed_by: None,
            backup_version: None,
            primary_missing: false,
            primary_held: None,
            epoch_base: None,
        };
        rec.apply_state(st);
        rec.held_only_by(member, st.version);
        // A file found in a folder the index does not know brings its folders with it, so
        // every file's parent exists.
        let owner = rec.owner.clone();
        self.ensure_folders(names::parent(file), &owner);
        self.put_file(file, rec);
    }

    fn server_message(&mut self, conn: ConnId, name: &str, msg: Message, now_ms: u64) {
        match msg {
            Message::Heartbeat { seq, writer } => {
                if let Some(s) = self.servers.get_mut(name) {
                    s.last_heartbeat_ms = Some(now_ms);
                    s.last_seq = seq;
                }
                log::debug!(target: ev::NM_HEARTBEAT, ss = name, seq = seq; "heartbeat from {name}");
                if !writer {
                    self.stepped_down(name, now_ms);
                }
                self.ack_heartbeat(conn, name, seq, now_ms);
            }
            Message::Changed { id, state, staged } => {
                let waiter = Waiter::Changed(conn, id);
                let Ok(file) = names::canonical_file(&state.file) else {
                    return self.release(waiter, true);
                };
                let Some((primary, member)) = self.home_of(name) else {
                    return self.release(waiter, true);
                };
                let writer = self.writer_member(&primary);
                if writer != member {
                    // Not this pair's writer (a plain backup adopting a hand edit, or a writer
                    // deposed while a commit was in flight): the change is not acknowledged,
                    // and the copy is set aside before the current one replaces it.
                    log::warn!(target: ev::NM_FILE_CHANGE, file = file.as_str(), ss = name;
                        "refused a change of {file} from {name}, which is not its pair's writer");
                    if let Some(rec) = self.files.get(&file).filter(|r| r.ss == primary) {
                        // Its copy is no longer the record's: reads must not go there until
                        // the job has set it aside and installed the current one (unless it
                        // is the only copy left descending from the record, as in recovery).
                        if rec.holds(member.other()) && rec.held(member).is_some() {
                            let mut rec = rec.clone();
                            rec.set_held(member, None);
                            self.put_file(&file, rec);
                        }
                        self.owe_to(&file, name, true, now_ms);
                    }
                    return self.reply(
                        conn,
                        Message::ChangedAck {
                            id,
                            copies: Some(0),
                        },
                    );
                }
                match self.files.get(&file) {
                    Some(rec) if rec.ss == primary && state.version >= rec.version => {
                        let mut rec = rec.clone();
                        rec.apply_change(member, &state);
                        self.put_file(&file, rec);
                        log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(),
                            version = state.version.to_string(); "{file} changed on {name}");
                    }
                    Some(_) => return self.release(waiter, true),
                    None => self.adopt(&primary, member, &file, &state),
                }
                let target = self.owe(&file, true, now_ms);
                let version = self.files.get(&file).map_or(state.version, |r| r.version);
                if let (Some(t), Some(s)) = (&target, staged) {
                    self.note_stage(t, &file, state.version, s);
                }
                self.answer_change(waiter, &file, target, Want::Content { version }, now_ms);
            }
            Message::Removed { id, file } => {
                let waiter = Waiter::Changed(conn, id);
                let Ok(file) = names::canonical_file(&file) else {
                    return self.release(waiter, true);
                };
                let Some((primary, member)) = self.home_of(name) else {
                    return self.release(waiter, true);
                };
                let Some(rec) = self.files.get(&file).filter(|r| r.ss == primary) else {
                    return self.release(waiter, true);
                };
                if self.writer_member(&primary) == member {
                    // The writer's copy vanished (a hand deletion): the file is gone, as on an
                    // unpaired server, and its pending access requests go with it.
                    self.drop_requests_for(&file);
                    self.del_file(&file);
                    log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str();
                        "{file} vanished from {name}");
                    let target = self.owe_delete(&primary, &file, now_ms);
                    return self.answer_change(waiter, &file, target, Want::Delete, now_ms);
                }
                // A member lost its copy while the other holds the current one: it is owed
                // the copy again.
                let mut rec = rec.clone();
                rec.set_held(member, None);
                self.put_file(&file, rec);
                self.owe_to(&file, name, false, now_ms);
                self.release(waiter, true);
            }
            other => self.refuse_and_close(
                conn,
                err::invalid(format!(
                    "unexpected {} from a storage server",
                    other.op_name()
                )),
            ),
        }
    }

    // ----- clients -----

    fn client_request(&mut self, conn: ConnId, user: String, msg: Message, now_ms: u64) {
        match msg {
            Message::Create { .. }
            | Message::Delete { .. }
            | Message::Undo { .. }
            | Message::Move { .. }
            | Message::Checkpoint { .. }
            | Message::Revert { .. } => self.serialised(conn, user, msg, now_ms),
            Message::CreateFolder { folder } => match self.create_folder(&user, &folder) {
                Ok(()) => self.reply(conn, Message::Done {}),
                Err(e) => self.fail(conn, e),
            },
            Message::ViewFolder { folder } => match self.view_folder(&folder) {
                Ok(entries) => {
                    let pages = frame::paginate(entries, |e| 2 * e.name.len() + 32);
                    let last = pages.len() - 1;
                    for (i, entries) in pages.into_iter().enumerate() {
                        let more = i < last;
                        self.reply(conn, Message::FolderList { entries, more });
                    }
                }
                Err(e) => self.fail(conn, e),
            },
            Message::RequestAccess { file, kind } => {
                match self.request_access(&user, &file, kind) {
                    Ok(id) => self.reply(conn, Message::RequestCreated { id }),
                    Err(e) => self.fail(conn, e),
                }
            }
            Message::ViewRequests {} => {
                let requests = self.view_requests(&user);
                let pages = frame::paginate(requests, |r| 2 * (r.user.len() + r.file.len()) + 96);
                let last = pages.len() - 1;
                for (i, requests) in pages.into_iter().enumerate() {
                    let more = i < last;
                    self.reply(conn, Message::Requests { requests, more });
                }
            }
            Message::AnswerRequest { id, approve } => {
                match self.answer_request(&user, id, approve) {
                    Ok(()) => self.reply(conn, Message::Done {}),
                    Err(e) => self.fail(conn, e),
                }
            }
            Message::Locate {
                mode: AccessMode::Upload,
                ..
            } => self.serialised(conn, user, msg, now_ms),
            Message::Recover { ss } => match self.recover(&ss, now_ms) {
                Ok(queued) => self.reply(conn, Message::RecoverQueued { queued }),
                Err(e) => self.fail(conn, e),
            },
            Message::Status {} => {
                let m = self.status_reply(now_ms);
                self.reply(conn, m);
            }
            Message::Fsck { file, after } => {
                if let Err(e) = self.fsck(conn, file, after) {
                    self.fail(conn, e);
                }
            }
            Message::Exec { file } => match self.exec(conn, &user, &file, now_ms) {
                Ok(()) => {}
                Err(e) => self.fail(conn, e),
            },
            Message::Info { file } => match self.info(&user, &file) {
                Ok(info) => self.reply(conn, Message::InfoReply { info }),
                Err(e) => self.fail(conn, e),
            },
            Message::View { all, .. } => {
                let mut files: Vec<FileSummary> = self
                    .files
                    .iter()
                    .filter(|(_, r)| all || r.can_read(&user))
                    .map(|(f, r)| FileSummary {
                        file: names::display(f),
                        owner: r.owner.clone(),
                        words: r.words,
                        chars: r.chars,
                        accessed_ms: r.accessed_ms,
                        accessed_by: r.accessed_by.clone(),
                    })
                    .collect();
                files.sort_by(|a, b| a.file.cmp(&b.file));
                // JSON escaping at most doubles a string; 160 bytes cover keys and numbers.
                let pages = frame::paginate(files, |f| {
                    2 * (f.file.len()
                        + f.owner.len()
                        + f.accessed_by.as_ref().map_or(0, String::len))
                        + 160
                });
                let last = pages.len() - 1;
                for (i, files) in pages.into_iter().enumerate() {
                    let more = i < last;
                    self.reply(conn, Message::FileList { files, more });
                }
            }
            Message::ListUsers {} => {
                let users: Vec<String> = self.users.iter().cloned().collect();
                let pages = frame::paginate(users, |u| 2 * u.len() + 4);
                let last = pages.len() - 1;
                for (i, users) in pages.into_iter().enumerate() {
                    let more = i < last;
                    self.reply(conn, Message::Users { users, more });
                }
            }
            Message::AddAccess {
                file,
                user: grantee,
                write,
            } => match self.add_access(&user, &file, &grantee, write) {
                Ok(new_user) => self.reply(conn, Message::AccessGranted { new_user }),
                Err(e) => self.fail(conn, e),
            },
            Message::RemAccess { file, user: target } => {
                match self.rem_access(&user, &file, &target) {
                    Ok(()) => self.reply(conn, Message::Done {}),
                    Err(e) => self.fail(conn, e),
                }
            }
            Message::Locate { file, mode, avoid } => {
                match self.locate(&user, &file, mode, avoid.as_deref()) {
                    Ok(m) => self.reply(conn, m),
                    Err(e) => self.fail(conn, e),
                }
            }
            Message::Hello { .. } | Message::Prove { .. } => {
                self.fail(conn, err::invalid("already introduced"))
            }
            other => self.fail(
                conn,
                err::invalid(format!("{} is not a name server request", other.op_name())),
            ),
        }
    }

    /// Looks up a file the user names, with the existence check before the rights check.
    fn lookup(&self, file: &str) -> Result<(String, &FileRecord), WireError> {
        let canon = names::canonical_file(file)?;
        match self.files.get(&canon) {
            Some(r) => Ok((canon, r)),
            None => Err(not_found(&canon)),
        }
    }

    fn need_read(rec: &FileRecord, user: &str, file: &str) -> Result<(), WireError> {
        if rec.can_read(user) {
            Ok(())
        } else {
            Err(err::unauthorized(format!(
                "User {user} has no read access to {}",
                names::display(file)
            )))
        }
    }

    fn need_write(rec: &FileRecord, user: &str, file: &str) -> Result<(), WireError> {
        if rec.can_write(user) {
            Ok(())
        } else {
            Err(err::unauthorized(format!(
                "User {user} has no write access to {}",
                names::display(file)
            )))
        }
    }

    fn need_owner(rec: &FileRecord, user: &str, what: &str) -> Result<(), WireError> {
        if rec.owner == user {
            Ok(())
        } else {
            Err(err::unauthorized(what.to_string()))
        }
    }

    /// The live address of server `name`, or UNAVAILABLE for `file`.
    fn live_addr_of(&self, name: &str, file: &str) -> Result<String, WireError> {
        match self.servers.get(name) {
            Some(s) if s.up => Ok(s.rec.addr()),
            _ => Err(no_live_copy(file)),
        }
    }

    /// The member that takes changes of `rec`'s file now: (name, address, epoch). With
    /// `need_current` it must also hold the current version (a promoted backup that never
    /// received a file's latest change cannot take changes of it: that would fork it).
    fn writer_for(
        &self,
        rec: &FileRecord,
        file: &str,
        need_current: bool,
    ) -> Result<(String, String, u64), WireError> {
        let p = rec.ss.as_str();
        let Some(st) = self
            .pair_states
            .get(p)
            .filter(|_| self.pairs.contains_key(p))
        else {
            return Ok((p.to_string(), self.live_addr_of(p, file)?, EPOCH));
        };
        let Some(w) = self.member_name(p, st.writer) else {
            return Err(no_live_copy(file));
        };
        if !self.is_up(&w)
            && !self
                .member_name(p, st.writer.other())
                .is_some_and(|o| self.is_up(&o))
        {
            return Err(no_live_copy(file));
        }
        if st.phase != Phase::Serving || !self.is_up(&w) {
            return Err(err::unavailable(format!(
                "{} cannot take changes for a moment: pair {p} {} (epoch {})",
                names::display(file),
                crate::protocol::MOVING_WRITER,
                st.epoch
            )));
        }
        if need_current && !rec.holds(st.writer) {
            return Err(no_live_copy(file));
        }
        let addr = self.live_addr_of(&w, file)?;
        Ok((w, addr, st.epoch))
    }

    /// A live member holding `rec`'s current version, the writer first, never `avoid`.
    fn reader_for(
        &self,
        rec: &FileRecord,
        file: &str,
        avoid: Option<&str>,
    ) -> Result<(String, String), WireError> {
        let p = rec.ss.as_str();
        if !self.pairs.contains_key(p) {
            if avoid == Some(p) {
                return Err(no_live_copy(file));
            }
            return Ok((p.to_string(), self.live_addr_of(p, file)?));
        }
        let first = self.writer_member(p);
        for m in [first, first.other()] {
            let Some(name) = self.member_name(p, m) else {
                continue;
            };
            if Some(name.as_str()) == avoid || !rec.holds(m) {
                continue;
            }
            if let Ok(addr) = self.live_addr_of(&name, file) {
                return Ok((name, addr));
            }
        }
        Err(no_live_copy(file))
    }

    fn info(&self, user: &str, file: &str) -> Result<FileInfo, WireError> {
        let (canon, rec) = self.lookup(file)?;
        Self::need_read(rec, user, &canon)?;
        let mut access = vec![AccessEntry {
            user: rec.owner.clone(),
            write: true,
        }];
        access.extend(
            rec.access
                .iter()
                .filter(|(u, _)| **u != rec.owner)
                .map(|(u, w)| AccessEntry {
                    user: u.clone(),
                    write: *w,
                }),
        );
        let mut replicas = Vec::new();
        for m in [Member::Primary, Member::Backup] {
            let Some(name) = self.member_name(&rec.ss, m) else {
                continue;
            };
            let state = if !self.is_up(&name) {
                "down"
            } else {
                match rec.held(m) {
                    Some(v) if v == rec.version => "current",
                    Some(_) => "stale",
                    None => "missing",
                }
            };
            replicas.push(ReplicaInfo {
                ss: name,
                state: state.to_string(),
            });
        }
        Ok(FileInfo {
            file: names::display(&canon),
            owner: rec.owner.clone(),
            created_ms: rec.created_ms,
            modified_ms: rec.modified_ms,
            size: rec.size,
            words: rec.words,
            chars: rec.chars,
            access,
            accessed_ms: rec.accessed_ms,
            accessed_by: rec.accessed_by.clone(),
            version: rec.version,
            checksum: rec.checksum,
            replicas,
        })
    }

    fn add_access(
        &mut self,
        user: &str,
        file: &str,
        grantee: &str,
        write: bool,
    ) -> Result<bool, WireError> {
        names::validate_user(grantee)?;
        let (canon, rec) = self.lookup(file)?;
        let shown = names::display(&canon);
        Self::need_owner(
            rec,
            user,
            &format!("Only the owner can change access to {shown}"),
        )?;
        if grantee == rec.owner {
            return Err(err::invalid(format!(
                "{grantee} owns {shown} and already has read and write access"
            )));
        }
        let mut rec = rec.clone();
        rec.access.insert(grantee.to_string(), write);
        self.put_file(&canon, rec);
        Ok(!self.users.contains(grantee))
    }

    fn rem_access(&mut self, user: &str, file: &str, target: &str) -> Result<(), WireError> {
        let (canon, rec) = self.lookup(file)?;
        let shown = names::display(&canon);
        Self::need_owner(
            rec,
            user,
            &format!("Only the owner can change access to {shown}"),
        )?;
        if target == rec.owner {
            return Err(err::invalid(format!(
                "{target} owns {shown}; the owner's access cannot be removed"
            )));
        }
        if !rec.access.contains_key(target) {
            return Err(err::not_found(format!(
                "User {} has no access to {shown}",
                names::show(target)
            )));
        }
        let mut rec = rec.clone();
        rec.access.remove(target);
        self.put_file(&canon, rec);
        Ok(())
    }

    fn locate(
        &mut self,
        user: &str,
        file: &str,
        mode: AccessMode,
        avoid: Option<&str>,
    ) -> Result<Message, WireError> {
        let (canon, rec) = self.lookup(file)?;
        let op = match mode {
            AccessMode::Read => {
                Self::need_read(rec, user, &canon)?;
                TicketOp::Read
            }
            AccessMode::Stream => {
                Self::need_read(rec, user, &canon)?;
                TicketOp::Stream
            }
            AccessMode::Upload => {
                Self::need_write(rec, user, &canon)?;
                TicketOp::Upload
            }
            AccessMode::Write => {
                Self::need_write(rec, user, &canon)?;
                TicketOp::Write
            }
        };
        let (ss, addr, ticket) = match op {
            TicketOp::Read | TicketOp::Stream => {
                let (ss, addr) = self.reader_for(rec, &canon, avoid)?;
                let ticket = self.mint(user, &canon, op, &ss, Some(rec.version));
                (ss, addr, ticket)
            }
            _ => {
                let (ss, addr, epoch) = self.writer_for(rec, &canon, true)?;
                let ticket = self.mint_change(user, &canon, op, &ss, Some(rec.version), epoch);
                (ss, addr, ticket)
            }
        };
        let mut rec = rec.clone();
        rec.accessed_ms = Some(self.wall_ms());
        rec.accessed_by = Some(user.to_string());
        self.put_file(&canon, rec);
        Ok(Message::Located { ss, addr, ticket })
    }

    fn exec(&mut self, conn: ConnId, user: &str, file: &str, now_ms: u64) -> Result<(), WireError> {
        let (canon, rec) = self.lookup(file)?;
        Self::need_read(rec, user, &canon)?;
        if !self.cfg.exec_enabled {
            return Err(err::unauthorized("EXEC is disabled on this name server"));
        }
        let (ss, addr) = self.reader_for(rec, &canon, None)?;
        let ticket = self.mint(NM_USER, &canon, TicketOp::Read, &ss, Some(rec.version));
        let msg = Message::Read {
            file: canon.clone(),
            ticket,
        };
        self.set_busy(conn, true);
        self.new_job(
            JobKind::Exec { addr, msg },
            InFlight {
                conn,
                file: canon,
                purpose: Purpose::Exec {
                    user: user.to_string(),
                    started_ms: now_ms,
                },
                serialised: false,
                fence: None,
            },
        );
        Ok(())
    }

    /// CREATE, DELETE and UNDO: one NM-initiated operation per file at a time; later ones wait
    /// in a small bounded queue and are decided when their turn comes.
    fn serialised(&mut self, conn: ConnId, user: String, msg: Message, now_ms: u64) {
        let file = match &msg {
            Message::Create { file }
            | Message::Delete { file }
            | Message::Undo { file }
            | Message::Move { file, .. }
            | Message::Checkpoint { file, .. }
            | Message::Revert { file, .. }
            | Message::Locate { file, .. } => file.clone(),
            _ => return,
        };
        let canon = match names::canonical_file(&file) {
            Ok(c) => c,
            Err(e) => return self.fail(conn, e),
        };
        if let Some(q) = self.busy_files.get_mut(&canon) {
            if q.len() >= MAX_WAITING_PER_FILE {
                return self.fail(
                    conn,
                    err::limit(format!(
                        "too many operations waiting on {}",
                        names::display(&canon)
                    )),
                );
            }
            q.push_back(Pending { conn, user, msg });
            self.set_busy(conn, true);
            return;
        }
        self.start_serialised(&canon, Pending { conn, user, msg }, now_ms);
    }

    /// Decides a serialised request now; if it needs a storage server, the file becomes busy.
    fn start_serialised(&mut self, canon: &str, p: Pending, now_ms: u64) {
        if let Message::Locate { mode, .. } = &p.msg {
            if self.files.contains_key(canon) {
                // UPLOAD of an existing file needs no storage-server call first.
                let r = self.locate(&p.user, canon, *mode, None);
                self.set_busy(p.conn, false);
                return match r {
                    Ok(m) => self.reply(p.conn, m),
                    Err(e) => self.fail(p.conn, e),
                };
            }
        }
        let started = match &p.msg {
            Message::Create { .. } | Message::Locate { .. } => self.start_create(canon, &p, now_ms),
            Message::Delete { .. } => self.start_delete(canon, &p),
            Message::Undo { .. } => self.start_undo(canon, &p),
            Message::Move { .. } => self.start_move(canon, &p, now_ms),
            Message::Checkpoint { .. } => self.start_checkpoint(canon, &p),
            Message::Revert { .. } => self.start_revert(canon, &p),
            _ => Err(err::internal("not a serialised request")),
        };
        match started {
            Ok((kind, purpose)) => {
                self.busy_files.entry(canon.to_string()).or_default();
                if let Purpose::Move { to } = &purpose {
                    // The new name is taken while the move runs: a CREATE of it waits.
                    self.busy_files.entry(to.clone()).or_default();
                }
                self.set_busy(p.conn, true);
                let fence = change_fence(&kind);
                self.new_job(
                    kind,
                    InFlight {
                        conn: p.conn,
                        file: canon.to_string(),
                        purpose,
                        serialised: true,
                        fence,
                    },
                );
            }
            Err(e) => {
                let locked = e.code == crate::protocol::ErrorCode::Locked;
                self.set_busy(p.conn, false);
                self.fail(p.conn, e);
                if locked {
                    // An old removal in the way may have been made due now.
                    self.pump_replication(now_ms);
                }
            }
        }
    }

    fn start_create(
        &mut self,
        canon: &str,
        p: &Pending,
        now_ms: u64,
    ) -> Result<(JobKind, Purpose), WireError> {
        if self.files.contains_key(canon) {
            return Err(err::conflict("File already exists"));
        }
        self.check_new_file_name(canon)?;
        // Pairs are named by their primaries; a pair takes the file if its writer may take
        // changes now (so CREATE goes on while a pair has one live member).
        let pick = self
            .servers
            .iter()
            .filter(|(n, _)| !self.is_backup(n))
            .filter_map(|(n, s)| {
                let (w, epoch) = self.live_writer(n)?;
                let addr = self.servers.get(&w)?.rec.addr();
                Some(((s.files, n.clone()), (n.clone(), w, addr, epoch)))
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, v)| v);
        let Some((ss, writer, addr, epoch)) = pick else {
            return Err(err::unavailable("no storage server available"));
        };
        self.refuse_if_removing(&writer, canon, now_ms)?;
        let ticket = self.mint_change(NM_USER, canon, TicketOp::Create, &writer, None, epoch);
        let msg = Message::SsCreate {
            file: canon.to_string(),
            owner: p.user.clone(),
            epoch,
            ticket,
        };
        let member = self.membership(&writer).map_or(Member::Primary, |(_, m)| m);
        Ok((
            JobKind::SsCall { addr, msg },
            Purpose::Create {
                owner: p.user.clone(),
                ss,
                member,
                then_upload: matches!(p.msg, Message::Locate { .. }),
            },
        ))
    }

    fn start_delete(&self, canon: &str, p: &Pending) -> Result<(JobKind, Purpose), WireError> {
        let rec = self.files.get(canon).ok_or_else(|| not_found(canon))?;
        Self::need_owner(
            rec,
            &p.user,
            &format!("Only the owner can delete {}", names::display(canon)),
        )?;
        let (ss, addr, epoch) = self.writer_for(rec, canon, false)?;
        let ticket = self.mint_change(NM_USER, canon, TicketOp::Delete, &ss, None, epoch);
        let msg = Message::SsDelete {
            file: canon.to_string(),
            ticket,
        };
        Ok((JobKind::SsCall { addr, msg }, Purpose::Delete))
    }

    /// A change of `canon` by `user` (write access needed) that its pair's writer must make
    /// on the current version: the writer's address, the epoch, and a change ticket for `op`.
    fn change_call(
        &self,
        canon: &str,
        user: &str,
        op: TicketOp,
    ) -> Result<(String, u64, crate::protocol::Ticket), WireError> {
        let rec = self.files.get(canon).ok_or_else(|| not_found(canon))?;
        Self::need_write(rec, user, canon)?;
        let (ss, addr, epoch) = self.writer_for(rec, canon, true)?;
        let ticket = self.mint_change(NM_USER, canon, op, &ss, None, epoch);
        Ok((addr, epoch, ticket))
    }

    fn start_undo(&self, canon: &str, p: &Pending) -> Result<(JobKind, Purpose), WireError> {
        let (addr, epoch, ticket) = self.change_call(canon, &p.user, TicketOp::Undo)?;
        let msg = Message::SsUndo {
            file: canon.to_string(),
            epoch,
            ticket,
        };
        Ok((JobKind::SsCall { addr, msg }, Purpose::Undo))
    }

    /// A worker finished (or the job could not be queued).
    pub fn on_job_result(&mut self, id: JobId, result: Result<JobOutput, WireError>, now_ms: u64) {
        self.at(now_ms);
        if let Some((key, sent)) = self.running.remove(&id) {
            self.on_repl_result(key, sent, result, now_ms);
            return self.pump_replication(now_ms);
        }
        let Some(flight) = self.jobs.remove(&id) else {
            return;
        };
        if let Purpose::Fsck { run, ss } = flight.purpose {
            return self.fsck_result(run, ss, result);
        }
        if let Purpose::Mkdir { ss } = &flight.purpose {
            return Self::mkdir_done(ss, result);
        }
        if let Some((ss, epoch)) = &flight.fence {
            let moved_on = self
                .membership(ss)
                .and_then(|(p, m)| Some((self.pair_states.get(&p)?, m)))
                .filter(|(st, _)| st.epoch != *epoch);
            // Set aside only while the other member holds the record's version; were it the
            // only copy descending from the record, it is kept and credited as usual.
            let other_current = moved_on.is_some() && self.partner_holds_record(ss, &flight.file);
            if other_current && result.is_ok() {
                return self.fenced_result(flight, now_ms);
            }
        }
        let conn = flight.conn;
        let file = flight.file.clone();
        let moved_to = match &flight.purpose {
            Purpose::Move { to } => Some(to.clone()),
            _ => None,
        };
        // A change owed to a backup: (target, what it must reach), answered by answer_change.
        let mut change: Option<(Option<String>, Want)> = None;
        // A MOVE whose outcome is not known keeps its names reserved.
        let mut unsettled = false;
        let reply: Result<(Message, Vec<u8>), WireError> = match (flight.purpose, result) {
            (
                Purpose::Create {
                    owner,
                    ss,
                    member,
                    then_upload,
                },
                Ok(JobOutput::State(st)),
            ) => {
                let wall_ms = self.wall_ms();
                let mut rec = FileRecord {
                    owner,
                    ss: ss.clone(),
                    version: st.version,
                    checksum: st.checksum,
                    size: st.size,
                    words: st.words,
                    chars: st.chars,
                    created_ms: wall_ms,
                    modified_ms: if st.modified_ms > 0 {
                        st.modified_ms
                    } else {
                        wall_ms
                    },
                    access: BTreeMap::new(),
                    accessed_ms: None,
                    accessed_by: None,
                    backup_version: None,
                    primary_missing: false,
                    primary_held: None,
                    epoch_base: None,
                };
                rec.held_only_by(member, st.version);
                self.put_file(&file, rec);
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(), ss = ss.as_str(),
                    version = st.version.to_string(); "created {file} on {ss}");
                let target = self.owe(&file, false, now_ms);
                if then_upload {
                    let user = match self.peers.get(&conn) {
                        Some(Peer::Client { user, .. }) => user.clone(),
                        _ => String::new(),
                    };
                    self.locate(&user, &file, AccessMode::Upload, None)
                        .map(|m| (m, Vec::new()))
                } else {
                    change = Some((
                        target,
                        Want::Content {
                            version: st.version,
                        },
                    ));
                    Ok((Message::Done {}, Vec::new()))
                }
            }
            (Purpose::Move { .. }, Ok(JobOutput::MoveUnsettled(why))) => {
                // Renamed or not, only the server knows: the intent and both names' reservations
                // stay until it registers again and lists what it holds (`resolve_moves`), or
                // its pair takes a new epoch (`forget_moves_before`). If that epoch has come
                // already, the move is given up now.
                let epoch_moved = self
                    .moves
                    .get(&file)
                    .is_some_and(|m| self.epoch_of(&m.ss) != m.epoch);
                if epoch_moved {
                    self.abandon_move(&file, now_ms);
                } else {
                    unsettled = true;
                }
                log::warn!(target: ev::NM_FILE_CHANGE, file = file.as_str();
                    "the move of {file} is unsettled: {why}");
                Err(err::unavailable(format!(
                    "the move of {} may or may not have been made ({why}); it is settled when its storage server registers again",
                    names::display(&file)
                )))
            }
            (Purpose::Move { to }, Ok(_)) => {
                let target = self.finish_move(&file, &to, now_ms);
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(), to = to.as_str();
                    "moved {file} to {to}");
                let version = self.files.get(&to).map(|r| r.version).unwrap_or_default();
                change = Some((target, Want::Content { version }));
                Ok((Message::Done {}, Vec::new()))
            }
            (Purpose::Delete, Ok(_)) => {
                let ss = self.files.get(&file).map(|r| r.ss.clone());
                self.drop_requests_for(&file);
                self.del_file(&file);
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(); "deleted {file}");
                let target = ss.and_then(|ss| self.owe_delete(&ss, &file, now_ms));
                change = Some((target, Want::Delete));
                Ok((Message::Done {}, Vec::new()))
            }
            (Purpose::Delete, Err(e)) if e.code == crate::protocol::ErrorCode::NotFound => {
                // The copy is already gone; the record follows it.
                let ss = self.files.get(&file).map(|r| r.ss.clone());
                self.drop_requests_for(&file);
                self.del_file(&file);
                let target = ss.and_then(|ss| self.owe_delete(&ss, &file, now_ms));
                change = Some((target, Want::Delete));
                Ok((Message::Done {}, Vec::new()))
            }
            (
                p @ (Purpose::Undo | Purpose::Checkpoint | Purpose::Revert),
                Ok(JobOutput::State(st)),
            ) => {
                let what = match p {
                    Purpose::Checkpoint => "checkpointed",
                    Purpose::Revert => "reverted",
                    _ => "undid the last change of",
                };
                if let Some(rec) = self.files.get(&file) {
                    let mut rec = rec.clone();
                    if st.version >= rec.version {
                        let writer = self.writer_member(&rec.ss);
                        rec.apply_change(writer, &st);
                        self.put_file(&file, rec);
                    }
                }
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(),
                    version = st.version.to_string(); "{what} {file}");
                let target = self.owe(&file, true, now_ms);
                let version = self.files.get(&file).map_or(st.version, |r| r.version);
                change = Some((target, Want::Content { version }));
                Ok((Message::Done {}, Vec::new()))
            }
            (
                Purpose::Exec { user, started_ms },
                Ok(JobOutput::Exec {
                    output,
                    exit_code,
                    truncated,
                }),
            ) => {
                let ms = now_ms.saturating_sub(started_ms);
                log::info!(target: ev::NM_EXEC, file = file.as_str(), user = user.as_str(),
                    exit = exit_code.map(i64::from).unwrap_or(-1), ms = ms;
                    "{user} ran {file}");
                Ok((
                    Message::ExecOutput {
                        exit_code,
                        truncated,
                    },
                    output,
                ))
            }
            (Purpose::Move { .. }, Err(e)) => {
                // The storage server refused (or could not be reached): the file stays.
                self.drop_move_intent(&file);
                Err(e)
            }
            (Purpose::Exec { user, .. }, Err(e)) => {
                log::info!(target: ev::NM_EXEC, file = file.as_str(), user = user.as_str();
                    "EXEC of {file} failed: {}", e.msg);
                Err(e)
            }
            (_, Err(e)) => Err(e),
            (_, Ok(other)) => Err(err::internal(format!(
                "unexpected answer from the storage server: {other:?}"
            ))),
        };
        match (reply, change) {
            (Ok(_), Some((target, want))) => {
                self.answer_change(Waiter::Client(conn), &file, target, want, now_ms)
            }
            (Ok((msg, body)), None) => {
                self.set_busy(conn, false);
                self.out.push(Effect::Reply { conn, msg, body })
            }
            (Err(e), _) => {
                self.set_busy(conn, false);
                self.fail(conn, e)
            }
        }
        if flight.serialised && !unsettled {
            self.next_for_file(&file, now_ms);
            if let Some(to) = moved_to {
                self.next_for_file(&to, now_ms);
            }
        }
        self.pump_replication(now_ms);
    }

    /// Starts the next waiting request on a file whose operation just finished.
    /// A change a member made under an epoch that has since ended (its answer arrived after
    /// a failover or handback moved the writer): crediting it to whoever writes now would
    /// record a version that member lacks. The client hears it was not applied, the record
    /// stays as it was, and the member that made it is owed the record's state with its own
    /// copy set aside first (it holds a change the cluster never acknowledged).
    /// Whether the other member of `ss`'s pair holds the record's version of `file` (or
    /// there is no record), so `ss`'s copy can be repaired from it.
    pub(super) fn partner_holds_record(&self, ss: &str, file: &str) -> bool {
        self.membership(ss).is_some_and(|(_, m)| {
            self.files
                .get(file)
                .map_or(true, |rec| rec.holds(m.other()))
        })
    }

    /// `ss` may hold changes to `files` the cluster never took (made in an epoch that has
    /// ended): its copies are not current until repaired, and it is owed the record's state
    /// of each (or its removal), with its own copy set aside first.
    pub(super) fn set_aside_on(&mut self, ss: &str, files: &[String], now_ms: u64) {
        let member = self.membership(ss).map(|(_, m)| m);
        for f in files {
            let want = match self.files.get(f).cloned() {
                Some(mut rec) => {
                    // Not current there until the job has repaired it.
                    if let Some(m) = member {
                        rec.set_held(m, None);
                        self.put_file(f, rec.clone());
                    }
                    Want::Content {
                        version: rec.version,
                    }
                }
                None => Want::Delete,
            };
            self.upsert_job_q(ss, f, want, true, now_ms);
        }
    }

    fn fenced_result(&mut self, flight: InFlight, now_ms: u64) {
        let Some((ss, epoch)) = flight.fence.clone() else {
            return;
        };
        let mut touched = vec![flight.file.clone()];
        if let Purpose::Move { to } = &flight.purpose {
            touched.push(to.clone());
            self.drop_move_intent(&flight.file);
        }
        log::warn!(target: ev::NM_SS_RECOVERY, file = flight.file.as_str(), ss = ss.as_str(), epoch = epoch;
            "{ss} answered a change of {} made in epoch {epoch}, which has ended; it is not applied and that copy is set aside",
            flight.file);
        self.set_aside_on(&ss, &touched, now_ms);
        self.set_busy(flight.conn, false);
        let pair = self.membership(&ss).map_or_else(|| ss.clone(), |(p, _)| p);
        self.fail(
            flight.conn,
            err::unavailable(format!(
                "pair {pair} changed writers while the change to {} ran; {}",
                names::display(&flight.file),
                crate::protocol::NOT_APPLIED_TRY_AGAIN
            )),
        );
        if flight.serialised {
            for f in &touched {
                self.next_for_file(f, now_ms);
            }
        }
        self.pump_replication(now_ms);
    }

    fn next_for_file(&mut self, file: &str, now_ms: u64) {
        let mut waiting = self.busy_files.remove(file).unwrap_or_default();
        while let Some(p) = waiting.pop_front() {
            if !self.peers.contains_key(&p.conn) {
                continue;
            }
            self.start_serialised(file, p, now_ms);
            if let Some(q) = self.busy_files.get_mut(file) {
                // A job started: the rest wait for it.
                q.extend(waiting);
                return;
            }
        }
    }

    /// A JSON snapshot for `GET /status`: servers and totals.
    pub fn status_json(&self, now_ms: u64) -> String {
        let servers: Vec<serde_json::Value> = self
            .servers
            .iter()
            .map(|(n, s)| {
                serde_json::json!({
                    "name": n,
                    "addr": s.rec.addr(),
                    "backup_of": s.rec.backup_of,
                    "state": if s.up { "UP" } else { "DOWN" },
                    "files": s.files,
                    "last_heartbeat_ms": s.last_heartbeat_ms.map(|t| self.wall_at(now_ms, t)),
                    "last_heartbeat_age_ms": s.last_heartbeat_ms.map(|t| now_ms.saturating_sub(t)),
                })
            })
            .collect();
        let (pairs, queue_depth, failed, failed_total, roles) = match self.status_reply(now_ms) {
            Message::StatusReply {
                pairs,
                queue_depth,
                failed,
                failed_total,
                servers,
                ..
            } => (pairs, queue_depth, failed, failed_total, servers),
            _ => (Vec::new(), 0, Vec::new(), 0, Vec::new()),
        };
        serde_json::json!({
            "replication": self.cfg.replication,
            "servers": servers,
            "roles": roles,
            "pairs": pairs,
            "queue_depth": queue_depth,
            "replication_in_flight": self.running.len(),
            "failed": failed,
            "failed_total": failed_total,
            "totals": {
                "files": self.files.len(),
                "users": self.users.len(),
                "servers_up": self.servers.values().filter(|s| s.up).count(),
                "servers": self.servers.len(),
                "jobs_in_flight": self.jobs.len(),
            }
        })
        .to_string()
    }
}

// ----- pairs and replication -----

impl Core {
    fn sync_mode(&self) -> bool {
        self.cfg.replication == "sync"
    }

    fn is_up(&self, name: &str) -> bool {
        self.servers.get(name).is_some_and(|s| s.up)
    }

    /// The primary `name` backs up, from its flag or its `_backup` name.
    fn declared_primary(name: &str, rec: &ServerRecord) -> Option<String> {
        rec.backup_of
            .clone()
            .or_else(|| name.strip_suffix("_backup").map(str::to_string))
            .filter(|p| !p.is_empty() && p != name)
    }

    /// True for a server that is (or declares itself) some primary's backup.
    fn is_backup(&self, name: &str) -> bool {
        self.pairs.values().any(|b| b == name)
            || self
                .servers
                .get(name)
                .is_some_and(|s| Self::declared_primary(name, &s.rec).is_some())
            || name.ends_with("_backup")
    }

    /// The backup of the primary holding `file`, if the pair has one.
    fn backup_for(&self, primary: &str) -> Option<String> {
        self.pairs.get(primary).cloned()
    }

    /// The pair `name` belongs to (named by its primary) and its role in it; `None` when
    /// it is in no pair.
    fn membership(&self, name: &str) -> Option<(String, Member)> {
        if self.pairs.contains_key(name) {
            return Some((name.to_string(), Member::Primary));
        }
        self.pairs
            .iter()
            .find(|(_, b)| *b == name)
            .map(|(p, _)| (p.clone(), Member::Backup))
    }

    /// Like [`Core::membership`], but a server with no pair that is no backup is the primary
    /// of its own one-member pair.
    fn home_of(&self, name: &str) -> Option<(String, Member)> {
        self.membership(name).or_else(|| {
            (!self.is_backup(name) && self.servers.contains_key(name))
                .then(|| (name.to_string(), Member::Primary))
        })
    }

    /// The name of member `m` of the pair of `primary`.
    fn member_name(&self, primary: &str, m: Member) -> Option<String> {
        match m {
            Member::Primary => Some(primary.to_string()),
            Member::Backup => self.pairs.get(primary).cloned(),
        }
    }

    /// The member of `primary`'s pair that writes in the current epoch.
    fn writer_member(&self, primary: &str) -> Member {
        if !self.pairs.contains_key(primary) {
            return Member::Primary;
        }
        self.pair_states
            .get(primary)
            .map_or(Member::Primary, |p| p.writer)
    }

    /// The epoch server `name` stamps on new versions.
    fn epoch_of(&self, name: &str) -> u64 {
        self.membership(name)
            .and_then(|(p, _)| self.pair_states.get(&p))
            .map_or(EPOCH, |p| p.epoch)
    }

    /// The writer of the pair named `primary` if it may take changes now: (name, epoch).
    fn live_writer(&self, primary: &str) -> Option<(String, u64)> {
        if !self.pairs.contains_key(primary) {
            return self.is_up(primary).then(|| (primary.to_string(), EPOCH));
        }
        let st = self.pair_states.get(primary)?;
        let w = self.member_name(primary, st.writer)?;
        (st.phase == Phase::Serving && self.is_up(&w)).then_some((w, st.epoch))
    }

    /// Whether server `name` may take changes now (its heartbeat acks renew its lease).
    fn may_write(&self, name: &str) -> bool {
        match self.membership(name) {
            Some((p, _)) => self.live_writer(&p).is_some_and(|(w, _)| w == name),
            None => !self.is_backup(name) && self.is_up(name),
        }
    }

    /// Answers a heartbeat: the epoch, and a renewed lease while the server is its pair's
    /// writer. The lease the server then holds ends before `now + lease` (it counts from
    /// when it sent the heartbeat), which is the bound recorded here.
    fn ack_heartbeat(&mut self, conn: ConnId, name: &str, seq: u64, now_ms: u64) {
        let writer = self.may_write(name);
        let lease_ms = self.cfg.lease_ms();
        if writer {
            if let Some(s) = self.servers.get_mut(name) {
                s.lease_until_ms = s.lease_until_ms.max(now_ms + lease_ms);
            }
        }
        let epoch = self.epoch_of(name);
        // A writer stages its large uploads on its partner while they arrive.
        let partner = writer.then(|| self.partner_of(name)).flatten();
        self.reply(
            conn,
            Message::HeartbeatAck {
                seq,
                epoch,
                writer,
                lease_ms,
                partner,
            },
        );
    }

    /// The name of the other member of `name`'s pair.
    fn partner_name(&self, name: &str) -> Option<String> {
        let (primary, member) = self.membership(name)?;
        self.member_name(&primary, member.other())
    }

    /// The other member of `name`'s pair, if it is up.
    fn partner_of(&self, name: &str) -> Option<crate::protocol::Partner> {
        let other = self.partner_name(name)?;
        let s = self.servers.get(&other).filter(|s| s.up)?;
        Some(crate::protocol::Partner {
            addr: s.rec.addr(),
            name: other,
        })
    }

    /// Tells a member at once (unsolicited ack of its latest heartbeat) that it became, or
    /// stopped being, the writer, instead of waiting for its next heartbeat.
    fn push_role(&mut self, name: &str) {
        let Some((conn, seq, last_ms)) = self
            .servers
            .get(name)
            .filter(|s| s.up)
            .and_then(|s| Some((s.conn?, s.last_seq, s.last_heartbeat_ms?)))
        else {
            return;
        };
        if seq == 0 {
            return;
        }
        // The lease counts from when heartbeat `seq` was sent, which was before it arrived.
        self.ack_heartbeat(conn, name, seq, last_ms);
    }

    fn put_pair_state(&mut self, primary: &str, st: PairRecord) {
        self.batch
            .push(StoreOp::PutPairState(primary.to_string(), st.clone()));
        self.pair_states.insert(primary.to_string(), st);
    }

    /// Jobs owed to `target` (pending or failed), and whether one of them is running.
    fn owed_to(&self, target: &str) -> (u64, bool) {
        (self.repl.owed_to(target), self.repl.running_for(target))
    }

    /// The pair state machine: moves every pair whose members' liveness calls for it.
    ///
    /// * SERVING with the writer down → FAILING_OVER (`failover_start`): no member takes
    ///   changes until the writer's last lease has surely ended.
    /// * FAILING_OVER: the writer came back first → SERVING, same epoch (nobody else
    ///   wrote). Past the lease bound with the other member up → that member writes in a
    ///   new epoch (`failover_complete`).
    /// * SERVING by the promoted backup with the primary up and owed nothing →
    ///   HANDBACK: the backup's lease is not renewed.
    /// * HANDBACK past the backup's lease bound, nothing owed to the primary → the primary
    ///   writes in a new epoch (`replication_recover`). The backup failing meanwhile, the
    ///   primary takes over at the same bound as any failover.
    pub fn advance_pairs(&mut self, now_ms: u64) {
        self.at(now_ms);
        let primaries: Vec<String> = self.pairs.keys().cloned().collect();
        for p in primaries {
            let Some(b) = self.pairs.get(&p).cloned() else {
                continue;
            };
            let Some(mut st) = self.pair_states.get(&p).cloned() else {
                continue;
            };
            let before = st.clone();
            let name_of = |m: Member| {
                if m == Member::Primary {
                    p.clone()
                } else {
                    b.clone()
                }
            };
            let w = name_of(st.writer);
            let o = name_of(st.writer.other());
            let lease_end = |c: &Core, n: &str| c.servers.get(n).map_or(0, |s| s.lease_until_ms);
            let mut pushes: Vec<String> = Vec::new();
            match st.phase {
                // A writer never registered (a backup that started first) has no lease and
                // no files to fail over.
                Phase::Serving if !self.is_up(&w) && self.servers.contains_key(&w) => {
                    st.phase = Phase::FailingOver;
                    // After a restart, members get one heartbeat timeout to register again
                    // before anyone is promoted.
                    let boot_grace = self.cfg.started_ms + self.cfg.heartbeat_timeout_ms;
                    st.switch_at_ms = lease_end(self, &w).max(now_ms).max(boot_grace);
                    log::warn!(target: ev::FAILOVER_START, pair = p.as_str(), ss = w.as_str(),
                        epoch = st.epoch, switch_at_ms = st.switch_at_ms;
                        "pair {p}: writer {w} is down; {o} takes over once {w}'s lease has ended (in {} ms)",
                        st.switch_at_ms - now_ms);
                }
                Phase::Serving if !self.is_up(&w) => {}
                Phase::Serving if st.writer == Member::Backup && self.is_up(&p) => {
                    let (owed, running) = self.owed_to(&p);
                    if owed == 0 && !running {
                        st.phase = Phase::Handback;
                        st.switch_at_ms = lease_end(self, &w).max(now_ms);
                        pushes.push(w.clone());
                        log::info!(target: ev::NM_SS_RECOVERY, pair = p.as_str(), ss = p.as_str();
                            "pair {p}: {p} holds every change; {b} stops taking changes, {p} resumes once {b}'s lease has ended");
                    }
                }
                Phase::Serving => {}
                Phase::FailingOver if self.is_up(&w) => {
                    st.phase = Phase::Serving;
                    log::info!(target: ev::FAILOVER_COMPLETE, pair = p.as_str(), ss = w.as_str(), epoch = st.epoch;
                        "pair {p}: {w} came back before the switch and goes on writing (epoch {})", st.epoch);
                }
                Phase::FailingOver if now_ms >= st.switch_at_ms && self.is_up(&o) => {
                    st.phase = Phase::Serving;
                    st.epoch += 1;
                    st.writer = st.writer.other();
                    pushes.push(o.clone());
                    let role = if st.writer == Member::Backup {
                        "promoted backup"
                    } else {
                        "primary"
                    };
                    log::warn!(target: ev::FAILOVER_COMPLETE, pair = p.as_str(), ss = o.as_str(), epoch = st.epoch;
                        "pair {p}: {o} ({role}) takes changes in epoch {}", st.epoch);
                }
                Phase::FailingOver => {}
                Phase::Handback if !self.is_up(&w) => {
                    // The promoted backup failed during the handback: the primary takes
                    // over once that lease has ended, as in any failover.
                    st.phase = Phase::FailingOver;
                    log::warn!(target: ev::FAILOVER_START, pair = p.as_str(), ss = w.as_str(), epoch = st.epoch;
                        "pair {p}: writer {w} is down during the handback");
                }
                Phase::Handback if !self.is_up(&o) => {
                    st.phase = Phase::Serving;
                    pushes.push(w.clone());
                    log::warn!(target: ev::NM_SS_RECOVERY, pair = p.as_str(), ss = o.as_str();
                        "pair {p}: {o} failed during the handback; {w} goes on writing");
                }
                Phase::Handback if now_ms >= st.switch_at_ms => {
                    let (owed, running) = self.owed_to(&o);
                    if owed == 0 && !running {
                        st.phase = Phase::Serving;
                        st.epoch += 1;
                        st.writer = Member::Primary;
                        pushes.push(p.clone());
                        pushes.push(b.clone());
                        log::info!(target: ev::REPLICATION_RECOVER, pair = p.as_str(), ss = p.as_str(), epoch = st.epoch;
                            "pair {p}: {p} is the primary again (epoch {}); {b} backs it up", st.epoch);
                    }
                }
                Phase::Handback => {}
            }
            if st != before {
                let epoch = (st.epoch != before.epoch).then_some(st.epoch);
                self.put_pair_state(&p, st);
                for n in pushes {
                    self.push_role(&n);
                }
                if let Some(epoch) = epoch {
                    self.forget_moves_before(&p, &b, epoch, now_ms);
                }
            }
        }
    }

    /// A handing-back writer says it holds no lease any more: its lease bound is now, so the
    /// primary need not wait for the lease to run out. (A change it committed just before
    /// may still be on its way; if it arrives after the switch it is refused, unacknowledged,
    /// and the copy is quarantined, so nothing acknowledged depends on this shortcut.)
    fn stepped_down(&mut self, name: &str, now_ms: u64) {
        let Some((p, m)) = self.membership(name) else {
            return;
        };
        let Some(st) = self.pair_states.get_mut(&p) else {
            return;
        };
        if st.phase != Phase::Handback || st.writer != m || st.switch_at_ms <= now_ms {
            return;
        }
        st.switch_at_ms = now_ms;
        if let Some(s) = self.servers.get_mut(name) {
            s.lease_until_ms = now_ms;
        }
        self.advance_pairs(now_ms);
    }

    /// RECOVER ss: compares what `ss` holds, as the name server knows it, with the records of
    /// its pair and owes it every file it lacks, due now (failed jobs retried at once).
    /// Returns the jobs owed to it.
    fn recover(&mut self, ss: &str, now_ms: u64) -> Result<u64, WireError> {
        names::validate_user(ss)?;
        if !self.servers.contains_key(ss) {
            return Err(err::not_found(format!(
                "No storage server named {}",
                names::show(ss)
            )));
        }
        let Some((p, m)) = self.membership(ss) else {
            return Err(err::invalid(format!(
                "{ss} is in no pair: there is no other copy to recover from"
            )));
        };
        if !self.is_up(ss) {
            return Err(err::unavailable(format!(
                "{ss} is down; it is recovered when it registers again"
            )));
        }
        for k in self.repl.keys_for(ss) {
            self.retry_job_now(&k, now_ms);
        }
        let files: Vec<String> = self
            .files
            .iter()
            .filter(|(_, r)| r.ss == p && !r.holds(m))
            .map(|(f, _)| f.clone())
            .collect();
        for f in &files {
            self.owe_to(f, ss, false, now_ms);
        }
        let (owed, _) = self.owed_to(ss);
        log::info!(target: ev::NM_RECOVERY_SYNC_QUEUED, ss = ss, queued = owed;
            "RECOVER {ss}: {owed} transfers owed to it");
        self.pump_replication(now_ms);
        Ok(owed)
    }

    /// Records `primary → backup` unless the primary already has a backup.
    fn pair_up(&mut self, primary: &str, backup: &str) {
        match self.pairs.get(primary) {
            Some(b) if b == backup => {}
            Some(b) => {
                log::warn!(target: ev::REPLICATION_ASSIGN, ss = backup;
                    "{backup} wants to back up {primary}, which already has {b}; left unpaired");
            }
            None => {
                self.pairs.insert(primary.to_string(), backup.to_string());
                self.batch
                    .push(StoreOp::PutPair(primary.to_string(), backup.to_string()));
                if !self.pair_states.contains_key(primary) {
                    self.put_pair_state(primary, PairRecord::new());
                }
                log::info!(target: ev::REPLICATION_ASSIGN, ss = backup;
                    "Paired {primary} → {backup}");
            }
        }
    }

    /// Writes (or rewrites) the job owing `want` of `file` to `target`; the row goes into the
    /// same batch as the change it follows.
    fn upsert_job(&mut self, target: &str, file: &str, want: Want, now_ms: u64) {
        self.upsert_job_q(target, file, want, false, now_ms);
    }

    /// [`Core::upsert_job`], optionally setting the target's copy aside first (a quarantine
    /// still owed stays owed when the row is rewritten).
    fn upsert_job_q(
        &mut self,
        target: &str,
        file: &str,
        want: Want,
        quarantine: bool,
        now_ms: u64,
    ) {
        let key = job_key(target, file);
        // A staged upload stands only for the change that reported it (noted after this).
        self.stages.remove(&key);
        let old = self
            .repl
            .get(&key)
            .map(|j| (j.since_ms, j.want, j.quarantine));
        let since_ms = old.map_or(self.wall_ms(), |(since, ..)| since);
        // A new file's versions start again at 1: content owed where the removal of an older
        // file of that name is still owed would look older than the copy the target holds and
        // be skipped. The target's copy is set aside first, so the new content installs.
        let replaces_removal =
            matches!(want, Want::Content { .. }) && old.is_some_and(|(_, w, _)| w == Want::Delete);
        let quarantine = quarantine || replaces_removal || old.is_some_and(|(.., q)| q);
        if old.is_none() {
            if let Some((p, _)) = self.membership(target) {
                if let Some(st) = self.pair_states.get_mut(&p) {
                    if st.sync_done >= st.sync_total {
                        st.sync_done = 0;
                        st.sync_total = 0;
                    }
                    st.sync_total += 1;
                }
            }
        }
        let job = ReplJob {
            quarantine,
            target: target.to_string(),
            file: file.to_string(),
            want,
            attempts: 0,
            next_ms: now_ms,
            last_error: None,
            state: JobState::Pending,
            since_ms,
        };
        self.batch.push(StoreOp::PutJob(job.clone()));
        self.repl.insert(key, job);
    }

    /// Owes member `target` of `file`'s pair the file's current content (with `quarantine`,
    /// its own copy is set aside first).
    fn owe_to(&mut self, file: &str, target: &str, quarantine: bool, now_ms: u64) {
        let Some(rec) = self.files.get(file) else {
            return;
        };
        let version = rec.version;
        log::info!(target: ev::NM_RECOVERY_SYNC_QUEUED, file = file, ss = target,
            version = version.to_string(), quarantine = quarantine;
            "file={file} owed to {target}{}", if quarantine { " (its copy is quarantined first)" } else { "" });
        self.upsert_job_q(target, file, Want::Content { version }, quarantine, now_ms);
    }

    /// Owes the member of `file`'s pair that is not the writer the file's current content.
    /// Returns that member.
    fn owe(&mut self, file: &str, write: bool, now_ms: u64) -> Option<String> {
        let rec = self.files.get(file)?;
        let version = rec.version;
        let pair = rec.ss.clone();
        self.backup_for(&pair)?;
        let follower = self.writer_member(&pair).other();
        let target = self.member_name(&pair, follower)?;
        let primary = self.member_name(&pair, follower.other())?;
        log::info!(target: ev::NM_REPLICATION_CHECK, file = file, ss = target.as_str();
            "file={file} primary={primary} replica={target}");
        if rec.held(follower) == Some(version) {
            return Some(target);
        }
        self.upsert_job(&target, file, Want::Content { version }, now_ms);
        let depth = self.repl.len() as u64;
        if write {
            log::info!(target: ev::NM_WRITE_REPLICATION_QUEUED, file = file, ss = target.as_str(),
                version = version.to_string(), queued = depth;
                "file={file} op=WRITE primary={primary} replica={target}");
        } else {
            log::info!(target: ev::NM_REPLICATION_QUEUED, file = file, ss = target.as_str(),
                version = version.to_string(), queued = depth;
                "file={file} op=COPY primary={primary} replica={target}");
        }
        Some(target)
    }

    /// Owes the member of `primary`'s pair that is not the writer the removal of `file`.
    /// Returns that member.
    fn owe_delete(&mut self, primary: &str, file: &str, now_ms: u64) -> Option<String> {
        self.backup_for(primary)?;
        let target = self.member_name(primary, self.writer_member(primary).other())?;
        self.upsert_job(&target, file, Want::Delete, now_ms);
        log::info!(target: ev::NM_REPLICATION_QUEUED, file = file, ss = target.as_str();
            "file={file} op=DELETE primary={primary} replica={target}");
        Some(target)
    }

    /// Answers a change: at once in async mode (or without a backup); in sync mode once the
    /// backup's job succeeds, or degraded if the backup is down or its attempt fails.
    fn answer_change(
        &mut self,
        waiter: Waiter,
        file: &str,
        target: Option<String>,
        want: Want,
        now_ms: u64,
    ) {
        match target {
            Some(t) if self.sync_mode() => {
                let key = job_key(&t, file);
                let owed = self.repl.get(&key).map(|j| j.state);
                if owed.is_none() {
                    // The backup already holds it.
                    self.release(waiter, true);
                } else if !self.is_up(&t) || owed == Some(JobState::Failed) {
                    self.release(waiter, false);
                } else {
                    self.sync_waits.entry(key).or_default().push(SyncWait {
                        waiter,
                        want,
                        deadline_ms: now_ms + SYNC_WAIT_MS,
                    });
                }
            }
            _ => self.release(waiter, true),
        }
    }

    fn release(&mut self, waiter: Waiter, both: bool) {
        match waiter {
            Waiter::Client(conn) => {
                self.set_busy(conn, false);
                let msg = if both {
                    Message::Done {}
                } else {
                    Message::DoneDegraded {
                        copies: 1,
                        total: 2,
                    }
                };
                self.reply(conn, msg);
            }
            Waiter::Changed(conn, id) => {
                let copies = if both { None } else { Some(1) };
                self.reply(conn, Message::ChangedAck { id, copies });
            }
        }
    }

    /// Releases the sync waiters of `key` that `achieved` satisfies (`None`: the file is gone
    /// from the target); with `failed`, every waiter is answered degraded.
    fn settle_waits(&mut self, key: &str, achieved: Option<Option<Version>>, failed: bool) {
        let Some(waits) = self.sync_waits.remove(key) else {
            return;
        };
        let mut keep = Vec::new();
        for w in waits {
            let ok = match (w.want, achieved) {
                (Want::Content { version }, Some(Some(v))) => v >= version,
                (Want::Delete, Some(None)) => true,
                _ => false,
            };
            if ok {
                self.release(w.waiter, true);
            } else if failed {
                self.release(w.waiter, false);
            } else {
                keep.push(w);
            }
        }
        if !keep.is_empty() {
            self.sync_waits.insert(key.to_string(), keep);
        }
    }

    /// A server went down: sync waiters owed to it are answered degraded.
    fn target_down(&mut self, name: &str) {
        let prefix = format!("{name}\n");
        let keys: Vec<String> = self
            .sync_waits
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in keys {
            self.settle_waits(&k, None, true);
        }
        self.push_partner(name);
    }

    /// Tells the other member of `name`'s pair at once that `name` came up or went down, so
    /// a writer stages its uploads on a partner only while that partner is up.
    fn push_partner(&mut self, name: &str) {
        if let Some(other) = self.partner_name(name) {
            self.push_role(&other);
        }
    }

    /// Sync waiters past their deadline are answered degraded; their jobs go on.
    fn expire_waits(&mut self, now_ms: u64) {
        let mut late = Vec::new();
        for waits in self.sync_waits.values_mut() {
            waits.retain(|w| {
                let keep = w.deadline_ms > now_ms;
                if !keep {
                    late.push(w.waiter);
                }
                keep
            });
        }
        self.sync_waits.retain(|_, w| !w.is_empty());
        for w in late {
            self.release(w, false);
        }
    }

    /// Sync waiters on a connection that closed are forgotten.
    fn forget_waiter(&mut self, conn: ConnId) {
        for waits in self.sync_waits.values_mut() {
            waits.retain(|w| match w.waiter {
                Waiter::Client(c) | Waiter::Changed(c, _) => c != conn,
            });
        }
        self.sync_waits.retain(|_, w| !w.is_empty());
    }

    /// Whether a pending job's servers are up (no allocation: this runs over every row).
    fn ready(&self, job: &ReplJob) -> bool {
        if !self.is_up(&job.target) {
            return false;
        }
        match job.want {
            Want::Delete => true,
            Want::Content { .. } => self.source_for(job).is_some(),
        }
    }

    /// Makes a job row due now with a fresh count of attempts (RECOVER, or a FAILED row whose
    /// target registered again), durably.
    fn retry_job_now(&mut self, key: &str, now_ms: u64) {
        let j = self.repl.update(key, |j| {
            j.state = JobState::Pending;
            j.attempts = 0;
            j.next_ms = now_ms;
        });
        if let Some(j) = j {
            self.batch.push(StoreOp::PutJob(j));
        }
    }

    /// Whether a content job's target already holds the file's current version (the job is
    /// then done; a quarantine it asked for is moot). No allocation.
    fn target_holds_current(&self, job: &ReplJob) -> bool {
        self.job_member(job).is_some_and(|(rec, m)| rec.holds(m))
    }

    /// The record of a job's file and which member of its pair the job's target is, if the
    /// target belongs to that pair. No allocation.
    fn job_member(&self, job: &ReplJob) -> Option<(&FileRecord, Member)> {
        let rec = self.files.get(&job.file)?;
        let m = if job.target == rec.ss {
            Member::Primary
        } else if self.pairs.get(&rec.ss) == Some(&job.target) {
            Member::Backup
        } else {
            return None;
        };
        Some((rec, m))
    }

    /// Whether a removal owed to `job.target` is moot: its pair holds a record of that name
    /// again and the target holds that file. Every change rewrites the row owed to the
    /// member that is not the writer, so a Delete row survives a new file of its name only
    /// on the writer (a backup promoted while the removal waited in backoff), where the
    /// file was made by a CREATE or MOVE that succeeded only because the old copy was gone.
    /// Applying the row then would remove the new file. No allocation.
    fn removal_moot(&self, job: &ReplJob) -> bool {
        self.job_member(job)
            .is_some_and(|(rec, m)| rec.held(m).is_some())
    }

    /// A LOCKED error when `writer` is owed the removal of an older `file` (a backup promoted
    /// before its removal landed): a CREATE or MOVE of that name there must wait for it. While
    /// the removal runs, it would take the new file if it arrived second; while it waits (in
    /// backoff, or FAILED until the member registers again) the old copy is still there and
    /// the storage server would answer EXISTS. A waiting removal is made due now (a FAILED
    /// one with its attempts reset), so it runs at once and a retry finds the name free.
    fn refuse_if_removing(
        &mut self,
        writer: &str,
        file: &str,
        now_ms: u64,
    ) -> Result<(), WireError> {
        let key = job_key(writer, file);
        let running = self.repl.is_running(&key);
        let waiting = !running && self.repl.get(&key).is_some_and(|j| j.want == Want::Delete);
        if !running && !waiting {
            return Ok(());
        }
        if waiting {
            let j = self.repl.update(&key, |j| {
                if j.state == JobState::Failed {
                    j.state = JobState::Pending;
                    j.attempts = 0;
                }
                j.next_ms = j.next_ms.min(now_ms);
            });
            if let Some(j) = j {
                log::info!(target: ev::REPLICATION_WORKER_QUEUED, file = file, ss = writer;
                    "file={file} is made again on {writer}: the removal of the older file it is owed runs now");
                self.batch.push(StoreOp::PutJob(j));
            }
        }
        Err(err::locked(format!(
            "an older {} is still being removed from {writer}; try again",
            names::display(file)
        )))
    }

    /// The member a content job copies from: up, holding the current version, not the
    /// target. No allocation when there is none (this runs over every row).
    fn source_for(&self, job: &ReplJob) -> Option<(&str, &ServerLive)> {
        let rec = self.files.get(&job.file)?;
        let p = rec.ss.as_str();
        let candidates = [
            (Member::Primary, Some(p)),
            (Member::Backup, self.pairs.get(p).map(String::as_str)),
        ];
        candidates.into_iter().find_map(|(m, n)| {
            let n = n?;
            let s = self.servers.get(n)?;
            (n != job.target && s.up && rec.holds(m)).then_some((n, s))
        })
    }

    /// Remembers that the content of `file` at `version` is staged on `target` as `s`, for
    /// the job that owes exactly that version there. Kept in memory only: without it the job
    /// sends the content, as it always could.
    fn note_stage(
        &mut self,
        target: &str,
        file: &str,
        version: Version,
        s: crate::protocol::StagedRef,
    ) {
        let key = job_key(target, file);
        let owed = self
            .repl
            .get(&key)
            .is_some_and(|j| j.want == Want::Content { version });
        if s.ss != target || !owed {
            return;
        }
        if self.stages.len() >= MAX_STAGE_HINTS {
            self.stages.clear();
        }
        self.stages.insert(key, (version, s.id));
    }

    /// The transfer a ready job describes.
    fn transfer_for(&self, job: &ReplJob) -> Option<Transfer> {
        let t = self.servers.get(&job.target).filter(|s| s.up)?;
        let target = (job.target.clone(), t.rec.addr());
        let source = match job.want {
            Want::Delete => None,
            Want::Content { .. } => {
                let (n, s) = self.source_for(job)?;
                Some((n.to_string(), s.rec.addr()))
            }
        };
        let stage = self
            .stages
            .get(&job.key())
            .filter(|(v, _)| job.want == Want::Content { version: *v })
            .map(|(_, id)| id.clone());
        Some(Transfer {
            file: job.file.clone(),
            want: job.want,
            source,
            target,
            quarantine: job.quarantine,
            stage,
        })
    }

    /// Hands due jobs to the workers, up to the in-flight cap; drops content jobs whose file
    /// no longer exists (a delete job replaces them when the record goes). Visits only the
    /// due rows of targets that are up (see `jobtable.rs`), so rows owed to a down server
    /// cost nothing here (and a moot one waits for its server to register to be dropped).
    pub fn pump_replication(&mut self, now_ms: u64) {
        self.at(now_ms);
        let cap = self.cfg.max_repl_in_flight.max(1);
        if self.running.len() >= cap {
            return;
        }
        let mut picked = Vec::new();
        let mut obsolete = Vec::new();
        let mut sourceless = Vec::new();
        let mut later = Vec::new();
        let targets: Vec<&String> = self.repl.targets().filter(|t| self.is_up(t)).collect();
        'targets: for target in targets {
            for k in self.repl.due_for(target, now_ms) {
                if self.running.len() + picked.len() >= cap {
                    break 'targets;
                }
                let Some(j) = self.repl.get(k) else {
                    continue;
                };
                let moot = match j.want {
                    Want::Content { .. } => {
                        !self.files.contains_key(&j.file) || self.target_holds_current(j)
                    }
                    Want::Delete => self.removal_moot(j),
                };
                if moot {
                    obsolete.push(k.clone());
                } else if j.want == Want::Delete && self.busy_files.contains_key(&j.file) {
                    // A CREATE or MOVE of that name may be on its way to the target: the
                    // removal waits for it, then is moot if it made the name again there.
                    later.push(k.clone());
                } else if self.ready(j) {
                    picked.push(k.clone());
                } else {
                    sourceless.push(k.clone());
                }
            }
        }
        for k in sourceless {
            self.repl.park(&k);
        }
        for k in later {
            self.repl.update(&k, |j| {
                j.next_ms = now_ms + replication::CHANNEL_FULL_RETRY_MS;
            });
        }
        for k in obsolete {
            let Some(j) = self.repl.remove(&k) else {
                continue;
            };
            self.batch.push(StoreOp::DelJob(k.clone()));
            match (j.want, self.files.get(&j.file).map(|r| r.version)) {
                (Want::Delete, _) => {
                    log::info!(target: ev::REPLICATION_WORKER_PROCESS, file = j.file.as_str(), ss = j.target.as_str();
                        "file={} was made again on {}: the removal of the older file is moot", j.file, j.target);
                    self.job_done(&j.target);
                    self.settle_waits(&k, Some(None), false);
                }
                (_, Some(v)) => {
                    self.job_done(&j.target);
                    self.settle_waits(&k, Some(Some(v)), false);
                }
                (_, None) => self.settle_waits(&k, Some(None), true),
            }
        }
        for k in picked {
            let Some(t) = self.repl.get(&k).and_then(|j| self.transfer_for(j)) else {
                continue;
            };
            let id = self.next_job;
            self.next_job += 1;
            log::info!(target: ev::REPLICATION_WORKER_QUEUED, file = t.file.as_str(),
                ss = t.target.0.as_str(), queued = self.running.len() as u64 + 1;
                "file={} replica={} queued={}", t.file, t.target.0, self.running.len() + 1);
            self.running.insert(id, (k.clone(), t.want));
            self.repl.set_running(&k, true);
            self.out.push(Effect::Job(Job {
                id,
                kind: JobKind::Replicate(t),
            }));
        }
    }

    /// The earliest time a waiting job becomes due (only jobs whose target is up).
    fn next_repl_deadline_ms(&self) -> Option<u64> {
        if self.running.len() >= self.cfg.max_repl_in_flight.max(1) {
            return None;
        }
        self.repl
            .targets()
            .filter(|t| self.is_up(t))
            .filter_map(|t| self.repl.first_due(t))
            .min()
    }

    /// The worker channel had no room for a replication job: it waits in the table and is
    /// dispatched again shortly, without counting as an attempt. False if `id` is not one.
    pub fn on_dispatch_full(&mut self, id: JobId, now_ms: u64) -> bool {
        self.at(now_ms);
        let Some((key, _)) = self.running.remove(&id) else {
            return false;
        };
        self.repl.update(&key, |j| {
            j.next_ms = now_ms + replication::CHANNEL_FULL_RETRY_MS;
        });
        self.repl.set_running(&key, false);
        true
    }

    /// A replication job came back.
    fn on_repl_result(
        &mut self,
        key: String,
        sent: Want,
        result: Result<JobOutput, WireError>,
        now_ms: u64,
    ) {
        self.repl.set_running(&key, false);
        // A stage is used by one attempt (which falls back to sending the content itself).
        if self
            .stages
            .get(&key)
            .is_some_and(|(v, _)| sent == Want::Content { version: *v })
        {
            self.stages.remove(&key);
        }
        let Some(job) = self.repl.get(&key).cloned() else {
            return;
        };
        match result {
            Ok(JobOutput::Replicated(Outcome::Copied { state, .. })) => {
                if let Some(rec) = self.files.get(&job.file) {
                    if let Some((_, m)) = self.job_member(&job) {
                        if rec.held(m) != Some(state.version) && state.version <= rec.version {
                            let mut rec = rec.clone();
                            rec.set_held(m, Some(state.version));
                            self.put_file(&job.file, rec);
                        }
                    }
                }
                match job.want {
                    Want::Content { version } if state.version >= version => {
                        self.repl.remove(&key);
                        self.batch.push(StoreOp::DelJob(key.clone()));
                        self.job_done(&job.target);
                        self.settle_waits(&key, Some(Some(state.version)), false);
                    }
                    // A newer change landed while the copy ran: the row owes it, due now.
                    Want::Content { .. } if sent != job.want => {
                        self.settle_waits(&key, Some(Some(state.version)), false);
                    }
                    Want::Content { version } => self.repl_failed(
                        &key,
                        format!(
                            "target holds {} after the copy, {version} is owed",
                            state.version
                        ),
                        now_ms,
                    ),
                    // Deleted while the copy ran: the row already owes the delete.
                    Want::Delete => {}
                }
            }
            Ok(JobOutput::Replicated(Outcome::Deleted)) => match job.want {
                Want::Delete => {
                    self.repl.remove(&key);
                    self.batch.push(StoreOp::DelJob(key.clone()));
                    self.job_done(&job.target);
                    self.settle_waits(&key, Some(None), false);
                }
                // Created again while the delete ran: the row already owes the content.
                Want::Content { .. } => {}
            },
            Ok(other) => self.repl_failed(&key, format!("unexpected result {other:?}"), now_ms),
            Err(e) => self.repl_failed(&key, e.msg, now_ms),
        }
    }

    /// Counts a finished transfer in its pair's recovery progress.
    fn job_done(&mut self, target: &str) {
        if let Some((p, _)) = self.membership(target) {
            if let Some(st) = self.pair_states.get_mut(&p) {
                st.sync_done = (st.sync_done + 1).min(st.sync_total);
            }
        }
    }

    fn repl_failed(&mut self, key: &str, error: String, now_ms: u64) {
        let j = self.repl.update(key, |j| {
            j.attempts += 1;
            j.last_error = Some(error);
            if j.attempts >= replication::MAX_ATTEMPTS {
                j.state = JobState::Failed;
                log::warn!(target: ev::REPLICATION_WORKER_ERROR, file = j.file.as_str(),
                    ss = j.target.as_str(); "file={} to {} FAILED after {} attempts",
                    j.file, j.target, j.attempts);
            } else {
                j.next_ms = now_ms + replication::backoff_ms(j.attempts);
            }
        });
        if let Some(j) = j {
            self.batch.push(StoreOp::PutJob(j));
        }
        self.settle_waits(key, None, true);
    }

    /// Member `m` of the pair named `primary` (re)registered with `list`. Each file of the
    /// pair is classified against the record:
    ///
    /// * current (version and checksum match): nothing to do;
    /// * newer, on the writer, in the pair's epoch: a commit whose CHANGED never arrived,
    ///   adopted as the current version and owed to the other member;
    /// * diverged (changes the cluster never acknowledged: newer than the record on a
    ///   non-writer, or from an earlier epoch yet newer than that epoch's last recorded
    ///   version, or the same version with other bytes): quarantined, then owed the
    ///   current copy;
    /// * stale or missing: owed the current copy from the member holding it;
    /// * unknown to the index: adopted on the writer; set aside (quarantine) on the other.
    ///
    /// FAILED jobs of the member are retried at once.
    fn reconcile_member(&mut self, primary: &str, m: Member, list: Vec<FileState>, now_ms: u64) {
        let Some(name) = self.member_name(primary, m) else {
            return;
        };
        let failed: Vec<String> = self
            .repl
            .keys_for(&name)
            .into_iter()
            .filter(|k| {
                self.repl
                    .get(k)
                    .is_some_and(|j| j.state == JobState::Failed)
            })
            .collect();
        for k in failed {
            self.retry_job_now(&k, now_ms);
        }
        let writer = self.writer_member(primary) == m;
        let held: HashMap<String, FileState> = list
            .into_iter()
            .filter_map(|st| names::canonical_file(&st.file).ok().map(|f| (f, st)))
            .collect();
        let mine: Vec<String> = self
            .files
            .iter()
            .filter(|(_, r)| r.ss == primary)
            .map(|(f, _)| f.clone())
            .collect();
        let (mut queued, mut quarantined, mut adopted) = (0u64, 0u64, 0u64);
        let mut missing = 0u64;
        for f in &mine {
            let Some(rec) = self.files.get(f).cloned() else {
                continue;
            };
            let key = job_key(&name, f);
            let Some(st) = held.get(f) else {
                // Never deleted because a server forgot it (an unmounted disk must not erase
                // the index); the copy is owed to it again.
                if rec.held(m).is_some() {
                    let mut r = rec.clone();
                    r.set_held(m, None);
                    self.put_file(f, r);
                    missing += 1;
                }
                if self.source_exists(&rec, m) {
                    self.owe_to(f, &name, false, now_ms);
                    queued += 1;
                }
                continue;
            };
            let current = st.version == rec.version && st.checksum == rec.checksum;
            if current {
                if rec.held(m) != Some(rec.version) {
                    let mut r = rec.clone();
                    r.set_held(m, Some(rec.version));
                    self.put_file(f, r);
                }
                if self.repl.contains_key(&key) && !self.repl.is_running(&key) {
                    self.repl.remove(&key);
                    self.batch.push(StoreOp::DelJob(key));
                }
                continue;
            }
            // A change is only ever made to a copy at the record's version (tickets carry it
            // as min_version), and the record only moves on by acknowledged changes; so a
            // copy above the record descends from it: it holds every acknowledged change,
            // plus commits whose CHANGED never arrived. It becomes the current copy on the
            // writer (as on an unpaired server), or when it is the only one left holding
            // the record's changes; otherwise those unacknowledged commits are set aside.
            let newer = st.version > rec.version;
            if newer && (writer || !rec.holds(m.other())) {
                let mut r = rec.clone();
                r.apply_change(m, st);
                self.put_file(f, r);
                if self.repl.contains_key(&key) && !self.repl.is_running(&key) {
                    self.repl.remove(&key);
                    self.batch.push(StoreOp::DelJob(key));
                }
                if let Some(other) = self.member_name(primary, m.other()) {
                    self.owe_to(f, &other, false, now_ms);
                }
                adopted += 1;
                continue;
            }
            // Older than the record yet from an earlier epoch past the last version that
            // epoch ended with: a fork the cluster never acknowledged.
            let diverged = newer
                || (st.version == rec.version && st.checksum != rec.checksum)
                || (st.version.epoch < rec.version.epoch
                    && rec.epoch_base.is_some_and(|b| st.version > b));
            let mut r = rec.clone();
            r.set_held(m, if diverged { None } else { Some(st.version) });
            if r != rec {
                self.put_file(f, r);
            }
            if diverged {
                log::warn!(target: ev::NM_SS_RECOVERY, file = f.as_str(), ss = name.as_str(),
                    version = st.version.to_string(), current = rec.version.to_string();
                    "{name} holds {f} at {} with changes the cluster never acknowledged (current {}): it is quarantined",
                    st.version, rec.version);
                quarantined += 1;
            }
            self.owe_to(f, &name, diverged, now_ms);
            queued += 1;
        }
        let mine: HashSet<String> = mine.into_iter().collect();
        for (f, st) in &held {
            if mine.contains(f) {
                continue;
            }
            match self.files.get(f) {
                // Another pair holds that name; which copy wins is not decided here.
                Some(_) => {}
                // An acknowledged DELETE made while this member was the backup, owed to it
                // still: the row removes the copy; adopting it would bring the file back.
                None if writer
                    && self
                        .repl
                        .get(&job_key(&name, f))
                        .is_some_and(|j| j.want == Want::Delete) =>
                {
                    queued += 1;
                }
                None if writer => {
                    self.adopt(primary, m, f, st);
                    self.owe(f, false, now_ms);
                    adopted += 1;
                }
                None => {
                    // An acknowledged DELETE or MOVE made while this member was away left a
                    // row owing it the removal: that row does it. Otherwise the copy was never
                    // acknowledged: set aside, never silently removed.
                    let owed = self
                        .repl
                        .get(&job_key(&name, f))
                        .is_some_and(|j| j.want == Want::Delete && !j.quarantine);
                    if !owed {
                        self.upsert_job_q(&name, f, Want::Delete, true, now_ms);
                    }
                    queued += 1;
                }
            }
        }
        if missing > 0 {
            log::warn!(target: ev::NM_SS_REGISTER, ss = name.as_str(), missing = missing;
                "{name} registered without {missing} file(s) of pair {primary}; they are owed to it again, never deleted");
        }
        log::info!(target: ev::NM_RECOVERY_SYNC_QUEUED, ss = name.as_str(), queued = queued,
            quarantined = quarantined, adopted = adopted;
            "{queued} files queued to bring {name} in line with pair {primary} ({quarantined} quarantined first, {adopted} adopted)");
    }

    /// Whether the member other than `m` holds `rec`'s current version (the job waits for it
    /// to be up).
    fn source_exists(&self, rec: &FileRecord, m: Member) -> bool {
        rec.holds(m.other())
    }

    /// The state STATUS shows for a pair: its phase combined with which members are up.
    ///
    /// | phase | members | shown |
    /// |---|---|---|
    /// | SERVING, primary writes | both up, nothing owed | `ACTIVE` (`SYNCING` while owed) |
    /// | SERVING, primary writes | backup down | `BACKUP_DOWN` |
    /// | SERVING, promoted backup writes | primary down | `PRIMARY_DOWN` |
    /// | SERVING, promoted backup writes | primary up (being caught up) | `RECOVERING` |
    /// | FAILING_OVER | writer down | `FAILING_OVER` |
    /// | HANDBACK | both up | `HANDBACK` |
    /// | any | both down | `DOWN` |
    pub fn pair_state_name(&self, p: &str, b: &str, st: &PairRecord, owed: bool) -> &'static str {
        let (pu, bu) = (self.is_up(p), self.is_up(b));
        if !pu && !bu {
            return "DOWN";
        }
        match (st.phase, st.writer) {
            (Phase::FailingOver, _) => "FAILING_OVER",
            (Phase::Handback, _) => "HANDBACK",
            (Phase::Serving, Member::Primary) if !bu => "BACKUP_DOWN",
            (Phase::Serving, Member::Primary) if owed => "SYNCING",
            (Phase::Serving, Member::Primary) => "ACTIVE",
            (Phase::Serving, Member::Backup) if !pu => "PRIMARY_DOWN",
            (Phase::Serving, Member::Backup) => "RECOVERING",
        }
    }

    fn status_reply(&self, now_ms: u64) -> Message {
        // One pass over the files and one over the owed jobs, whatever the number of servers.
        let mut files_of: HashMap<&str, u64> = HashMap::new();
        for r in self.files.values() {
            *files_of.entry(r.ss.as_str()).or_default() += 1;
        }
        let mut owed_to: HashMap<&str, Owed> = HashMap::new();
        let (mut queue_depth, mut failed_total, mut failed) = (0u64, 0u64, Vec::new());
        for j in self.repl.values() {
            let o = owed_to.entry(j.target.as_str()).or_default();
            o.jobs += 1;
            if matches!(j.want, Want::Content { .. }) {
                o.bytes += self.files.get(&j.file).map_or(0, |r| r.size);
            }
            o.oldest_ms = Some(o.oldest_ms.map_or(j.since_ms, |t| t.min(j.since_ms)));
            match j.state {
                JobState::Pending => queue_depth += 1,
                JobState::Failed => {
                    failed_total += 1;
                    if failed.len() < STATUS_FAILED_SHOWN {
                        failed.push(FailedJob {
                            file: j.file.clone(),
                            target: j.target.clone(),
                            attempts: j.attempts,
                            error: clip(j.last_error.as_deref().unwrap_or_default()),
                        });
                    }
                }
            }
        }
        let files_of = |primary: &str| files_of.get(primary).copied().unwrap_or(0);
        let servers = self
            .servers
            .iter()
            .map(|(n, s)| {
                let primary = self.pairs.iter().find(|(_, b)| *b == n).map(|(p, _)| p);
                let (role, files) = match primary {
                    Some(p) if self.writer_member(p) == Member::Backup => {
                        ("backup (promoted)", files_of(p))
                    }
                    Some(p) => ("backup", files_of(p)),
                    None if self.is_backup(n) => ("backup", 0),
                    None if self.pairs.contains_key(n) => ("primary", s.files),
                    None => ("unpaired", s.files),
                };
                ServerStatus {
                    name: n.clone(),
                    addr: s.rec.addr(),
                    up: s.up,
                    role: role.to_string(),
                    files,
                    last_heartbeat_ms: s.last_heartbeat_ms.map(|t| self.wall_at(now_ms, t)),
                }
            })
            .collect();
        let pairs = self
            .servers
            .keys()
            .filter(|n| !self.is_backup(n) || self.pairs.contains_key(*n))
            .map(|p| {
                let backup = self.pairs.get(p).cloned();
                // Jobs owed to either member.
                let owed = match &backup {
                    Some(b) => [p.as_str(), b.as_str()]
                        .iter()
                        .filter_map(|m| owed_to.get(m))
                        .fold(Owed::default(), |a, o| a.plus(o)),
                    None => Owed::default(),
                };
                let st = self
                    .pair_states
                    .get(p)
                    .cloned()
                    .unwrap_or_else(PairRecord::new);
                let state = match &backup {
                    None => "UNPAIRED",
                    Some(b) => self.pair_state_name(p, b, &st, owed.jobs > 0),
                };
                let writer = backup.as_ref().and_then(|_| self.member_name(p, st.writer));
                PairStatus {
                    primary: p.clone(),
                    backup,
                    state: state.to_string(),
                    epoch: st.epoch,
                    lag_jobs: owed.jobs,
                    lag_bytes: owed.bytes,
                    lag_ms: owed
                        .oldest_ms
                        .map_or(0, |t| self.env.wall_ms(now_ms).saturating_sub(t)),
                    writer,
                    sync_done: st.sync_done,
                    sync_total: st.sync_total,
                }
            })
            .collect();
        Message::StatusReply {
            servers,
            pairs,
            queue_depth,
            failed,
            failed_total,
            replication: self.cfg.replication.to_string(),
        }
    }
}

/// Most FAILED jobs one STATUS lists (it counts them all), so its reply stays one frame.
pub const STATUS_FAILED_SHOWN: usize = 20;
/// Most bytes of a FAILED job's error that STATUS shows.
const STATUS_ERROR_BYTES: usize = 200;

/// The replication jobs owed to one server, as STATUS sums them.
#[derive(Default)]
struct Owed {
    jobs: u64,
    /// Bytes of the content they carry.
    bytes: u64,
    /// When the oldest change among them was made.
    oldest_ms: Option<u64>,
}

impl Owed {
    fn plus(self, o: &Owed) -> Owed {
        Owed {
            jobs: self.jobs + o.jobs,
            bytes: self.bytes + o.bytes,
            oldest_ms: match (self.oldest_ms, o.oldest_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// `error` cut to at most [`STATUS_ERROR_BYTES`] (at a character boundary), marked with `…`
/// when cut.
fn clip(error: &str) -> String {
    if error.len() <= STATUS_ERROR_BYTES {
        return error.to_string();
    }
    let mut end = STATUS_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    mod failover;
    mod jobindex;

    pub(super) const KEY: &[u8] = b"0123456789abcdef0123";

    /// A core whose wall clock reads the monotonic time it is given (so recorded times are
    /// the test's times) and whose randomness is seeded.
    pub(super) fn core() -> Core {
        Core::with_env(
            CoreConfig {
                heartbeat_interval_ms: 100,
                heartbeat_timeout_ms: 300,
                exec_enabled: true,
                replication: "async",
                max_repl_in_flight: 8,
                started_ms: 0,
            },
            ClusterKey::from_bytes(KEY),
            Loaded::default(),
            Env::seeded(0, 0),
        )
    }

    pub(super) fn send(c: &mut Core, conn: ConnId, msg: Message, now: u64) -> Vec<Effect> {
        c.on_frame(conn, Frame { msg, body: vec![] }, now);
        c.take_effects()
    }

    pub(super) fn st(file: &str, counter: u64, owner: Option<&str>) -> FileState {
        FileState {
            file: file.into(),
            version: Version { epoch: 1, counter },
            checksum: counter as u32,
            size: counter,
            words: 1,
            chars: counter,
            modified_ms: 5,
            owner: owner.map(str::to_string),
        }
    }

    pub(super) fn register(
        c: &mut Core,
        conn: ConnId,
        name: &str,
        files: Vec<FileState>,
    ) -> Vec<Effect> {
        c.on_connect(conn, 0);
        let proof = ClusterKey::from_bytes(KEY).proof(&RegisterClaim {
            name,
            host: "127.0.0.1",
            client_port: 7000 + conn as u16,
            backup_of: None,
        });
        let e = send(
            c,
            conn,
            Message::Register {
                name: name.into(),
                host: "127.0.0.1".into(),
                client_port: 7000 + conn as u16,
                backup_of: None,
                proof,
                file_count: files.len() as u64,
            },
            0,
        );
        assert!(e.is_empty());
        for chunk in files.chunks(frame::FILE_BATCH_MAX) {
            let files = chunk.to_vec();
            assert!(send(c, conn, Message::FileBatch { files }, 0).is_empty());
        }
        send(c, conn, Message::RegisterEnd {}, 0)
    }

    /// The key a test user proves: one per name, so names never share a binding.
    pub(super) fn user_key(user: &str) -> identity::UserKey {
        let mut seed = [0u8; 32];
        for (i, b) in user.bytes().enumerate() {
            seed[i % 32] ^= b.wrapping_add(i as u8);
        }
        identity::UserKey::from_seed(seed)
    }

    /// HELLO, then PROVE with `key`: the effects of the PROVE.
    pub(super) fn hello_with(
        c: &mut Core,
        conn: ConnId,
        user: &str,
        key: &identity::UserKey,
    ) -> Vec<Effect> {
        c.on_connect(conn, 0);
        let e = send(c, conn, Message::Hello { user: user.into() }, 0);
        let nonce = match &e[..] {
            [Effect::Reply {
                msg: Message::Challenge { nonce },
                ..
            }] => nonce.clone(),
            other => panic!("HELLO answered {other:?}"),
        };
        let prove = Message::Prove {
            key: key.public_hex(),
            sig: key.prove(user, &nonce),
        };
        send(c, conn, prove, 0)
    }

    pub(super) fn hello(c: &mut Core, conn: ConnId, user: &str) {
        let e = hello_with(c, conn, user, &user_key(user));
        assert!(matches!(
            &e[..],
            [Effect::Reply {
                msg: Message::Welcome { .. },
                ..
            }]
        ));
    }

    #[test]
    fn a_user_binds_its_first_key_and_only_that_key_opens_sessions() {
        let mut c = core();
        let alice = user_key("alice");
        hello(&mut c, 1, "alice");
        assert!(c
            .take_batch()
            .contains(&StoreOp::PutUserKey("alice".into(), alice.public_hex())));
        // The same key again: welcome, nothing new to store.
        hello(&mut c, 2, "alice");
        assert!(c.take_batch().is_empty());
        // Another key: refused with the reset hint, and the connection closed.
        let e = hello_with(&mut c, 3, "alice", &user_key("mallory"));
        match &e[..] {
            [Effect::Reply {
                msg: Message::Err { code, msg },
                ..
            }, Effect::Close { conn: 3 }] => {
                assert_eq!(*code, ErrorCode::Unauthorized);
                assert_eq!(
                    msg,
                    "alice is registered with another key (reset it with bin_nm --reset-user alice)"
                );
            }
            other => panic!("{other:?}"),
        }
        // A signature over another nonce is refused too.
        c.on_connect(4, 0);
        send(
            &mut c,
            4,
            Message::Hello {
                user: "alice".into(),
            },
            0,
        );
        let e = send(
            &mut c,
            4,
            Message::Prove {
                key: alice.public_hex(),
                sig: alice.prove("alice", "not-the-nonce"),
            },
            0,
        );
        assert!(matches!(
            &e[..],
            [
                Effect::Reply {
                    msg: Message::Err {
                        code: ErrorCode::Unauthorized,
                        ..
                    },
                    ..
                },
                Effect::Close { .. }
            ]
        ));
        // A request before PROVE is refused.
        c.on_connect(5, 0);
        send(&mut c, 5, Message::Hello { user: "bob".into() }, 0);
        let e = send(&mut c, 5, Message::ListUsers {}, 0);
        assert!(matches!(
            &e[..],
            [
                Effect::Reply {
                    msg: Message::Err {
                        code: ErrorCode::Invalid,
                        ..
                    },
                    ..
                },
                Effect::Close { .. }
            ]
        ));
    }

    /// Replication jobs, and the folder pushes that go with them, no client waits for.
    fn is_repl(e: &Effect) -> bool {
        matches!(
            e,
            Effect::Job(Job {
                kind: JobKind::Replicate(_),
                ..
            }) | Effect::Job(Job {
                kind: JobKind::SsCall {
                    msg: Message::SsMkdir { .. },
                    ..
                },
                ..
            })
        )
    }

    fn mkdirs(e: &[Effect]) -> Vec<(String, Vec<String>, u64)> {
        e.iter()
            .filter_map(|x| match x {
                Effect::Job(Job {
                    id,
                    kind:
                        JobKind::SsCall {
                            msg: Message::SsMkdir { folders, ticket },
                            ..
                        },
                }) => {
                    assert_eq!(ticket.file, names::mkdir_subject(folders));
                    assert_eq!(ticket.op, TicketOp::Mkdir);
                    Some((ticket.ss.clone(), folders.clone(), *id))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn folders_reach_every_server_now_and_at_registration() {
        let mut c = core();
        register_as(&mut c, 1, "ss1", None, vec![]);
        register_as(&mut c, 2, "ss1_backup", None, vec![]);
        hello(&mut c, 10, "alice");
        let e = send(
            &mut c,
            10,
            Message::CreateFolder {
                folder: "/d".into(),
            },
            5,
        );
        let pushed: Vec<(String, Vec<String>)> =
            mkdirs(&e).into_iter().map(|(s, f, _)| (s, f)).collect();
        assert_eq!(
            pushed,
            vec![
                ("ss1".to_string(), vec!["d".to_string()]),
                ("ss1_backup".to_string(), vec!["d".to_string()]),
            ]
        );
        // No client waits for the pushes: their results produce nothing.
        for (_, _, id) in mkdirs(&e) {
            c.on_job_result(id, Err(err::unavailable("down")), 6);
        }
        assert!(c.take_effects().is_empty());
        send(
            &mut c,
            10,
            Message::CreateFolder {
                folder: "/d/e".into(),
            },
            7,
        );
        // A server registering again gets every folder, parents first.
        c.on_close(2, 8);
        c.take_effects();
        let e = register_as(&mut c, 3, "ss1_backup", None, vec![]);
        let pushed: Vec<(String, Vec<String>)> =
            mkdirs(&e).into_iter().map(|(s, f, _)| (s, f)).collect();
        assert_eq!(
            pushed,
            vec![(
                "ss1_backup".to_string(),
                vec!["d".to_string(), "d/e".to_string()]
            )]
        );
    }

    /// Replication jobs are checked by the tests that mean to; others look past them.
    fn only_reply(e: Vec<Effect>) -> Message {
        let e: Vec<Effect> = e.into_iter().filter(|x| !is_repl(x)).collect();
        match &e[..] {
            [Effect::Reply { msg, .. }] => msg.clone(),
            other => panic!("expected one reply, got {other:?}"),
        }
    }

    fn only_job(e: Vec<Effect>) -> Job {
        let e: Vec<Effect> = e.into_iter().filter(|x| !is_repl(x)).collect();
        match &e[..] {
            [Effect::Job(j)] => j.clone(),
            other => panic!("expected one job, got {other:?}"),
        }
    }

    fn code(m: Message) -> ErrorCode {
        match m {
            Message::Err { code, .. } => code,
            other => panic!("expected ERR, got {other:?}"),
        }
    }

    /// Creates `file` as `user` through the whole job round trip.
    fn create(c: &mut Core, conn: ConnId, file: &str) -> String {
        let job = only_job(send(c, conn, Message::Create { file: file.into() }, 10));
        let JobKind::SsCall {
            msg: Message::SsCreate { ticket, .. },
            ..
        } = &job.kind
        else {
            panic!("not an SS_CREATE: {job:?}");
        };
        let ss = ticket.ss.clone();
        c.on_job_result(job.id, Ok(JobOutput::State(st(file, 1, None))), 20);
        assert_eq!(only_reply(c.take_effects()), Message::Done {});
        ss
    }

    #[test]
    fn placement_picks_the_live_primary_with_fewest_files() {
        let mut c = core();
        assert_eq!(
            only_reply(register(&mut c, 1, "ss1", vec![st("x.txt", 1, None)])),
            Message::Registered {
                epoch: 1,
                heartbeat_interval_ms: 100,
                backup: false,
                lease_ms: 200,
            }
        );
        register(&mut c, 2, "ss2", vec![]);
        register(&mut c, 3, "ss2_backup", vec![]);
        hello(&mut c, 10, "alice");
        assert_eq!(create(&mut c, 10, "a.txt"), "ss2");
        // ss1 and ss2 hold one each now; the tie goes to the first name.
        assert_eq!(create(&mut c, 10, "b.txt"), "ss1");
        c.on_close(1, 30);
        c.on_close(2, 30);
        let m = only_reply(send(
            &mut c,
            10,
            Message::Create {
                file: "c.txt".into(),
            },
            40,
        ));
        assert_eq!(
            code(m),
            ErrorCode::Unavailable,
            "backups never get new files"
        );
    }

    #[test]
    fn create_refuses_duplicates_and_folders() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        hello(&mut c, 10, "alice");
        create(&mut c, 10, "a.txt");
        let m = only_reply(send(
            &mut c,
            10,
            Message::Create {
                file: "a.txt".into(),
            },
            0,
        ));
        assert_eq!(code(m), ErrorCode::Conflict);
        let m = only_reply(send(
            &mut c,
            10,
            Message::Create {
                file: "/d/a.txt".into(),
            },
            0,
        ));
        assert_eq!(code(m), ErrorCode::NotFound);
        let m = only_reply(send(
            &mut c,
            10,
            Message::Create {
                file: "../a".into(),
            },
            0,
        ));
        assert_eq!(code(m), ErrorCode::Invalid);
        assert!(c
            .take_batch()
            .iter()
            .any(|o| matches!(o, StoreOp::PutFile(f, _) if f == "a.txt")));
    }

    #[test]
    fn access_rules() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        hello(&mut c, 10, "alice");
        hello(&mut c, 11, "bob");
        create(&mut c, 10, "a.txt");
        let locate = |mode| Message::Locate {
            avoid: None,
            file: "a.txt".into(),
            mode,
        };
        assert_eq!(
            code(only_reply(send(&mut c, 11, locate(AccessMode::Read), 0))),
            ErrorCode::Unauthorized
        );
        let m = only_reply(send(
            &mut c,
            11,
            Message::Info {
                file: "nope".into(),
            },
            0,
        ));
        assert_eq!(code(m), ErrorCode::NotFound);
        // Only the owner changes access, and never their own.
        let add = |user: &str, write| Message::AddAccess {
            file: "a.txt".into(),
            user: user.into(),
            write,
        };
        assert_eq!(
            code(only_reply(send(&mut c, 11, add("bob", true), 0))),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(only_reply(send(&mut c, 10, add("alice", true), 0))),
            ErrorCode::Invalid
        );
        assert_eq!(
            only_reply(send(&mut c, 10, add("bob", false), 0)),
            Message::AccessGranted { new_user: false }
        );
        assert_eq!(
            only_reply(send(&mut c, 10, add("carol", false), 0)),
            Message::AccessGranted { new_user: true }
        );
        // Read but not write.
        assert!(matches!(
            only_reply(send(&mut c, 11, locate(AccessMode::Read), 50)),
            Message::Located { .. }
        ));
        assert_eq!(
            code(only_reply(send(&mut c, 11, locate(AccessMode::Write), 0))),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(only_reply(send(
                &mut c,
                11,
                Message::Undo {
                    file: "a.txt".into()
                },
                0
            ))),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(only_reply(send(
                &mut c,
                11,
                Message::Delete {
                    file: "a.txt".into()
                },
                0
            ))),
            ErrorCode::Unauthorized
        );
        // INFO lists the owner first, then the others by name; the last access is recorded.
        let Message::InfoReply { info } = only_reply(send(
            &mut c,
            11,
            Message::Info {
                file: "a.txt".into(),
            },
            0,
        )) else {
            panic!()
        };
        let who: Vec<(&str, bool)> = info
            .access
            .iter()
            .map(|a| (a.user.as_str(), a.write))
            .collect();
        assert_eq!(who, vec![("alice", true), ("bob", false), ("carol", false)]);
        assert_eq!(info.accessed_by.as_deref(), Some("bob"));
        assert_eq!(info.replicas[0].state, "current");
        // bob sees the file in VIEW; a stranger sees it only with -a.
        hello(&mut c, 12, "dave");
        let view = |all| Message::View { all, long: false };
        let Message::FileList { files, .. } = only_reply(send(&mut c, 12, view(false), 0)) else {
            panic!()
        };
        assert!(files.is_empty());
        let Message::FileList { files, .. } = only_reply(send(&mut c, 12, view(true), 0)) else {
            panic!()
        };
        assert_eq!(files.len(), 1);
        // Removing.
        let rem = |user: &str| Message::RemAccess {
            file: "a.txt".into(),
            user: user.into(),
        };
        assert_eq!(
            code(only_reply(send(&mut c, 10, rem("alice"), 0))),
            ErrorCode::Invalid
        );
        assert_eq!(
            code(only_reply(send(&mut c, 10, rem("dave"), 0))),
            ErrorCode::NotFound
        );
        assert_eq!(
            only_reply(send(&mut c, 10, rem("bob"), 0)),
            Message::Done {}
        );
        assert_eq!(
            code(only_reply(send(&mut c, 11, locate(AccessMode::Read), 0))),
            ErrorCode::Unauthorized
        );
        let Message::Users { users, .. } = only_reply(send(&mut c, 12, Message::ListUsers {}, 0))
        else {
            panic!()
        };
        assert_eq!(users, vec!["alice", "bob", "dave"]);
    }

    #[test]
    fn down_server_means_no_live_copy() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("a.txt", 3, Some("alice"))]);
        hello(&mut c, 10, "alice");
        c.tick(299);
        assert!(c.take_effects().is_empty());
        assert_eq!(c.next_deadline_ms(), Some(300));
        c.tick(300);
        assert_eq!(c.take_effects(), vec![Effect::Close { conn: 1 }]);
        let m = only_reply(send(
            &mut c,
            10,
            Message::Locate {
                avoid: None,
                file: "a.txt".into(),
                mode: AccessMode::Read,
            },
            400,
        ));
        assert_eq!(code(m), ErrorCode::Unavailable);
        let Message::InfoReply { info } = only_reply(send(
            &mut c,
            10,
            Message::Info {
                file: "a.txt".into(),
            },
            0,
        )) else {
            panic!()
        };
        assert_eq!(info.replicas[0].state, "down");
        // It comes back and registers again.
        c.on_close(1, 400);
        register(&mut c, 2, "ss1", vec![st("a.txt", 3, Some("alice"))]);
        assert!(matches!(
            only_reply(send(
                &mut c,
                10,
                Message::Locate {
                    avoid: None,
                    file: "a.txt".into(),
                    mode: AccessMode::Read
                },
                500
            )),
            Message::Located { .. }
        ));
    }

    #[test]
    fn registration_reconciles_the_index() {
        let mut c = core();
        register(
            &mut c,
            1,
            "ss1",
            vec![
                st("keep.txt", 2, Some("alice")),
                st("gone.txt", 1, Some("alice")),
            ],
        );
        c.on_close(1, 10);
        c.take_batch();
        // Back with keep.txt newer, gone.txt absent, and a file nobody knew.
        register(
            &mut c,
            2,
            "ss1",
            vec![st("keep.txt", 5, Some("alice")), st("new.txt", 1, None)],
        );
        assert_eq!(c.files["keep.txt"].version.counter, 5);
        // A file the server no longer lists is kept, marked missing, never deleted.
        assert!(c.files["gone.txt"].primary_missing);
        assert_eq!(c.files["gone.txt"].owner, "alice");
        assert_eq!(c.files["new.txt"].owner, ADOPTED_OWNER);
        let batch = c.take_batch();
        assert!(!batch.contains(&StoreOp::DelFile("gone.txt".into())));
        // An older copy never rolls the record back.
        c.on_close(2, 20);
        register(
            &mut c,
            3,
            "ss1",
            vec![st("keep.txt", 4, None), st("new.txt", 1, None)],
        );
        assert_eq!(c.files["keep.txt"].version.counter, 5);
        // The missing record still counts as placed on ss1.
        assert_eq!(c.servers["ss1"].files, 3);
        // When the server lists the file again (the right disk is back), it is no longer missing.
        c.on_close(3, 30);
        register(
            &mut c,
            4,
            "ss1",
            vec![
                st("keep.txt", 5, None),
                st("new.txt", 1, None),
                st("gone.txt", 1, None),
            ],
        );
        assert!(!c.files["gone.txt"].primary_missing);
    }

    #[test]
    fn registration_needs_the_key_and_a_free_name() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        c.on_connect(2, 0);
        let claim = |name| RegisterClaim {
            name,
            host: "h",
            client_port: 1,
            backup_of: None,
        };
        let proof = ClusterKey::from_bytes(b"some other key 0123456").proof(&claim("ss2"));
        let reg = |name: &str, proof| Message::Register {
            name: name.into(),
            host: "h".into(),
            client_port: 1,
            backup_of: None,
            proof,
            file_count: 0,
        };
        let e = send(&mut c, 2, reg("ss2", proof), 0);
        assert_eq!(e.len(), 2);
        assert!(matches!(
            &e[0],
            Effect::Reply {
                msg: Message::Err {
                    code: ErrorCode::Unauthorized,
                    ..
                },
                ..
            }
        ));
        assert_eq!(e[1], Effect::Close { conn: 2 });
        c.on_connect(3, 0);
        let e = send(
            &mut c,
            3,
            reg("ss1", ClusterKey::from_bytes(KEY).proof(&claim("ss1"))),
            0,
        );
        assert!(matches!(
            &e[0],
            Effect::Reply {
                msg: Message::Err {
                    code: ErrorCode::Conflict,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn silent_new_connections_are_closed() {
        let mut c = core();
        c.on_connect(5, 1000);
        hello(&mut c, 6, "alice");
        assert_eq!(c.next_deadline_ms(), Some(1000 + INTRODUCTION_TIMEOUT_MS));
        c.tick(1000 + INTRODUCTION_TIMEOUT_MS);
        let e = c.take_effects();
        assert!(matches!(
            &e[0],
            Effect::Reply {
                conn: 5,
                msg: Message::Err {
                    code: ErrorCode::Timeout,
                    ..
                },
                ..
            }
        ));
        assert_eq!(e[1], Effect::Close { conn: 5 });
        assert_eq!(c.next_deadline_ms(), None);
    }

    #[test]
    fn changed_and_removed_update_the_record() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
        let e = send(
            &mut c,
            1,
            Message::Changed {
                staged: None,
                id: 7,
                state: st("a.txt", 2, None),
            },
            5,
        );
        assert_eq!(
            only_reply(e),
            Message::ChangedAck {
                id: 7,
                copies: None
            }
        );
        assert_eq!(c.files["a.txt"].version.counter, 2);
        assert_eq!(c.files["a.txt"].owner, "alice");
        let e = send(
            &mut c,
            1,
            Message::Removed {
                id: 8,
                file: "a.txt".into(),
            },
            5,
        );
        assert_eq!(
            only_reply(e),
            Message::ChangedAck {
                id: 8,
                copies: None
            }
        );
        assert!(c.files.is_empty());
        let e = send(
            &mut c,
            1,
            Message::Heartbeat {
                seq: 3,
                writer: false,
            },
            250,
        );
        assert_eq!(
            only_reply(e),
            Message::HeartbeatAck {
                partner: None,
                seq: 3,
                epoch: 1,
                writer: true,
                lease_ms: 200
            }
        );
        assert_eq!(c.next_deadline_ms(), Some(550));
    }

    #[test]
    fn operations_on_one_file_are_serialised() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        hello(&mut c, 10, "alice");
        hello(&mut c, 11, "bob");
        // Two creates race: the second waits, then finds the name taken.
        let j1 = only_job(send(
            &mut c,
            10,
            Message::Create {
                file: "a.txt".into(),
            },
            0,
        ));
        assert!(c.is_busy(10));
        assert!(send(
            &mut c,
            11,
            Message::Create {
                file: "a.txt".into()
            },
            0
        )
        .is_empty());
        assert!(c.is_busy(11));
        // Other files are not held up.
        hello(&mut c, 12, "carol");
        let other = only_job(send(
            &mut c,
            12,
            Message::Create {
                file: "b.txt".into(),
            },
            0,
        ));
        assert!(matches!(other.kind, JobKind::SsCall { .. }));
        c.on_job_result(j1.id, Ok(JobOutput::State(st("a.txt", 1, None))), 1);
        let e = c.take_effects();
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0],
            Effect::Reply {
                conn: 10,
                msg: Message::Done {},
                body: vec![]
            }
        );
        assert!(matches!(
            &e[1],
            Effect::Reply {
                conn: 11,
                msg: Message::Err {
                    code: ErrorCode::Conflict,
                    ..
                },
                ..
            }
        ));
        assert!(!c.is_busy(11));
        // A delete waits behind an undo and runs after it.
        let undo = only_job(send(
            &mut c,
            10,
            Message::Undo {
                file: "a.txt".into(),
            },
            2,
        ));
        hello(&mut c, 13, "alice");
        assert!(send(
            &mut c,
            13,
            Message::Delete {
                file: "a.txt".into()
            },
            2
        )
        .is_empty());
        c.on_job_result(undo.id, Err(err::no_undo("nothing to undo")), 3);
        let e = c.take_effects();
        assert!(matches!(
            &e[0],
            Effect::Reply {
                conn: 10,
                msg: Message::Err {
                    code: ErrorCode::NoUndo,
                    ..
                },
                ..
            }
        ));
        let Effect::Job(del) = &e[1] else {
            panic!("{e:?}")
        };
        c.on_job_result(del.id, Ok(JobOutput::Done), 4);
        assert_eq!(only_reply(c.take_effects()), Message::Done {});
        assert!(c.files.is_empty());
        assert!(!c.busy_files.contains_key("a.txt"));
    }

    #[test]
    fn exec_is_a_job_unless_disabled() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("s.sh", 1, Some("alice"))]);
        hello(&mut c, 10, "alice");
        let j = only_job(send(
            &mut c,
            10,
            Message::Exec {
                file: "s.sh".into(),
            },
            0,
        ));
        assert!(matches!(j.kind, JobKind::Exec { .. }));
        c.on_job_result(
            j.id,
            Ok(JobOutput::Exec {
                output: b"hi\n".to_vec(),
                exit_code: Some(0),
                truncated: false,
            }),
            5,
        );
        match &c.take_effects()[..] {
            [Effect::Reply {
                msg:
                    Message::ExecOutput {
                        exit_code: Some(0), ..
                    },
                body,
                ..
            }] => {
                assert_eq!(body, b"hi\n")
            }
            other => panic!("{other:?}"),
        }
        c.cfg.exec_enabled = false;
        let m = only_reply(send(
            &mut c,
            10,
            Message::Exec {
                file: "s.sh".into(),
            },
            0,
        ));
        assert_eq!(code(m), ErrorCode::Unauthorized);
    }

    // ----- replication -----

    fn register_as(
        c: &mut Core,
        conn: ConnId,
        name: &str,
        backup_of: Option<&str>,
        files: Vec<FileState>,
    ) -> Vec<Effect> {
        c.on_connect(conn, 0);
        let proof = ClusterKey::from_bytes(KEY).proof(&RegisterClaim {
            name,
            host: "127.0.0.1",
            client_port: 7000 + conn as u16,
            backup_of,
        });
        let reg = Message::Register {
            name: name.into(),
            host: "127.0.0.1".into(),
            client_port: 7000 + conn as u16,
            backup_of: backup_of.map(str::to_string),
            proof,
            file_count: files.len() as u64,
        };
        assert!(send(c, conn, reg, 0).is_empty());
        if !files.is_empty() {
            assert!(send(c, conn, Message::FileBatch { files }, 0).is_empty());
        }
        send(c, conn, Message::RegisterEnd {}, 0)
    }

    fn repl_jobs(e: &[Effect]) -> Vec<(JobId, Transfer)> {
        e.iter()
            .filter_map(|x| match x {
                Effect::Job(Job {
                    id,
                    kind: JobKind::Replicate(t),
                }) => Some((*id, t.clone())),
                _ => None,
            })
            .collect()
    }

    fn sync_core() -> Core {
        let mut c = core();
        c.cfg.replication = "sync";
        c
    }

    fn copied(file: &str, counter: u64) -> Result<JobOutput, WireError> {
        Ok(JobOutput::Replicated(Outcome::Copied {
            state: st(file, counter, None),
            skipped: false,
            bytes: counter,
        }))
    }

    #[test]
    fn pairing_works_in_both_start_orders() {
        // Backup first, by name.
        let mut c = core();
        let e = register(&mut c, 1, "ss1_backup", vec![]);
        assert!(matches!(
            only_reply(e),
            Message::Registered { backup: true, .. }
        ));
        assert!(c
            .take_batch()
            .contains(&StoreOp::PutPair("ss1".into(), "ss1_backup".into())));
        let e = register(&mut c, 2, "ss1", vec![]);
        assert!(matches!(
            only_reply(e),
            Message::Registered { backup: false, .. }
        ));
        assert_eq!(c.pairs.get("ss1").map(String::as_str), Some("ss1_backup"));
        // Primary first, backup by flag.
        let mut c = core();
        register(&mut c, 1, "alpha", vec![]);
        let e = register_as(&mut c, 2, "beta", Some("alpha"), vec![]);
        assert!(matches!(
            only_reply(e),
            Message::Registered { backup: true, .. }
        ));
        assert_eq!(c.pairs.get("alpha").map(String::as_str), Some("beta"));
        // New files go to the primary only; a lone primary is UNPAIRED in STATUS.
        register(&mut c, 3, "gamma", vec![]);
        hello(&mut c, 10, "alice");
        assert_eq!(create(&mut c, 10, "a.txt"), "alpha");
        assert_eq!(create(&mut c, 10, "b.txt"), "gamma");
        assert_eq!(create(&mut c, 10, "c.txt"), "alpha");
        let Message::StatusReply { pairs, servers, .. } =
            only_reply(send(&mut c, 10, Message::Status {}, 50))
        else {
            panic!()
        };
        let states: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.primary.as_str(), p.state.as_str()))
            .collect();
        assert_eq!(states, vec![("alpha", "SYNCING"), ("gamma", "UNPAIRED")]);
        let beta = servers.iter().find(|s| s.name == "beta").unwrap();
        assert_eq!((beta.role.as_str(), beta.files), ("backup", 2));
    }

    #[test]
    fn jobs_coalesce_per_file_and_carry_the_latest_version() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
        register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, Some("alice"))]);
        assert!(c.repl.is_empty(), "the backup already holds a.txt");
        // Fill the in-flight cap with other files so a.txt's job waits in the table.
        c.cfg.max_repl_in_flight = 1;
        c.take_batch();
        for n in 2..=11 {
            let e = send(
                &mut c,
                1,
                Message::Changed {
                    staged: None,
                    id: n,
                    state: st("a.txt", n, None),
                },
                100 + n,
            );
            assert!(e.iter().any(|x| matches!(
                x,
                Effect::Reply {
                    msg: Message::ChangedAck { copies: None, .. },
                    ..
                }
            )));
        }
        assert_eq!(c.repl.len(), 1);
        let job = &c.repl[&job_key("ss1_backup", "a.txt")];
        assert_eq!(
            job.want,
            Want::Content {
                version: st("a.txt", 11, None).version
            }
        );
        assert_eq!(job.since_ms, 102, "lag counts from the oldest owed change");
        let puts = c
            .take_batch()
            .iter()
            .filter(|o| matches!(o, StoreOp::PutJob(_)))
            .count();
        assert_eq!(puts, 10, "every change writes its job in its own batch");
        c.tick(200);
        let jobs = repl_jobs(&c.take_effects());
        assert_eq!(jobs.len(), 1);
        let (id, t) = &jobs[0];
        assert_eq!(t.source.as_ref().unwrap().0, "ss1");
        assert_eq!(t.target.0, "ss1_backup");
        // A write lands while the copy runs: the job stays for the newer version.
        send(
            &mut c,
            1,
            Message::Changed {
                staged: None,
                id: 99,
                state: st("a.txt", 12, None),
            },
            210,
        );
        c.on_job_result(*id, copied("a.txt", 11), 220);
        assert_eq!(
            c.files["a.txt"].backup_version,
            Some(st("a.txt", 11, None).version)
        );
        let jobs = repl_jobs(&c.take_effects());
        assert_eq!(jobs.len(), 1, "the newer version is sent next");
        c.on_job_result(jobs[0].0, copied("a.txt", 12), 230);
        assert!(c.repl.is_empty());
        assert!(c
            .take_batch()
            .contains(&StoreOp::DelJob(job_key("ss1_backup", "a.txt"))));
    }

    #[test]
    fn status_lists_a_bounded_number_of_failed_jobs_and_counts_them_all() {
        let mut c = core();
        c.cfg.heartbeat_timeout_ms = 1 << 40;
        let n = 3000;
        let files: Vec<FileState> = (0..n)
            .map(|i| {
                st(
                    &format!("file-with-a-longish-name-{i:05}.txt"),
                    1,
                    Some("alice"),
                )
            })
            .collect();
        register(&mut c, 1, "ss1", files);
        register(&mut c, 2, "ss1_backup", vec![]);
        assert_eq!(c.repl.len(), n);
        // Every copy ran out of attempts, each with a long error.
        for key in c.repl.keys_for("ss1_backup") {
            c.repl.update(&key, |j| {
                j.state = JobState::Failed;
                j.attempts = replication::MAX_ATTEMPTS;
                j.last_error = Some("no space left on device ".repeat(40));
            });
        }
        hello(&mut c, 10, "alice");
        let reply = only_reply(send(&mut c, 10, Message::Status {}, 50));
        // The reply is one frame a client can read.
        let mut wire = frame::encode(&reply, &[]);
        assert!(frame::decode(&mut wire).unwrap().is_some());
        let Message::StatusReply {
            failed,
            failed_total,
            queue_depth,
            pairs,
            ..
        } = reply
        else {
            panic!()
        };
        assert_eq!(failed_total, n as u64);
        assert_eq!(failed.len(), STATUS_FAILED_SHOWN);
        assert!(failed
            .iter()
            .all(|f| f.error.len() <= STATUS_ERROR_BYTES + '…'.len_utf8()));
        assert!(failed[0].error.ends_with('…'));
        assert_eq!(queue_depth, 0);
        let p = pairs.iter().find(|p| p.primary == "ss1").unwrap();
        assert_eq!(p.lag_jobs, n as u64);
    }

    #[test]
    fn failed_attempts_back_off_then_fail_then_retry_when_the_target_returns() {
        let mut c = core();
        // Backoff runs for minutes of simulated time; heartbeats are not under test here.
        c.cfg.heartbeat_timeout_ms = 1 << 40;
        register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
        let mut jobs = repl_jobs(&register(&mut c, 2, "ss1_backup", vec![]));
        let key = job_key("ss1_backup", "a.txt");
        let mut now = 10;
        for attempt in 1..=replication::MAX_ATTEMPTS {
            assert_eq!(jobs.len(), 1, "attempt {attempt}");
            c.on_job_result(jobs[0].0, Err(err::unavailable("refused")), now);
            let j = c.repl[&key].clone();
            assert_eq!(j.attempts, attempt);
            if attempt < replication::MAX_ATTEMPTS {
                assert_eq!(j.next_ms, now + replication::backoff_ms(attempt));
                // Not due before its time.
                c.tick(j.next_ms - 1);
                assert!(repl_jobs(&c.take_effects()).is_empty());
                now = j.next_ms;
                c.tick(now);
                jobs = repl_jobs(&c.take_effects());
            }
        }
        let j = c.repl[&key].clone();
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.last_error.as_deref(), Some("refused"));
        c.tick(now + 100_000);
        assert!(repl_jobs(&c.take_effects()).is_empty());
        assert_eq!(c.next_repl_deadline_ms(), None);
        hello(&mut c, 10, "alice");
        let Message::StatusReply { failed, .. } =
            only_reply(send(&mut c, 10, Message::Status {}, now))
        else {
            panic!()
        };
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].error, "refused");
        // The target comes back: the job is PENDING again and runs.
        c.on_close(2, now);
        let e = register(&mut c, 3, "ss1_backup", vec![]);
        let jobs = repl_jobs(&e);
        assert_eq!(jobs.len(), 1);
        assert_eq!(c.repl[&key].state, JobState::Pending);
        c.on_job_result(jobs[0].0, copied("a.txt", 1), now);
        assert!(c.repl.is_empty());
    }

    #[test]
    fn a_joining_backup_is_reconciled_with_its_primary() {
        let mut c = core();
        register(
            &mut c,
            1,
            "ss1",
            vec![
                st("same.txt", 2, Some("alice")),
                st("stale.txt", 3, Some("alice")),
                st("missing.txt", 1, Some("alice")),
            ],
        );
        c.take_batch();
        let e = register(
            &mut c,
            2,
            "ss1_backup",
            vec![
                st("same.txt", 2, None),
                st("stale.txt", 2, None),
                st("stray.txt", 1, None),
            ],
        );
        let mut owed: Vec<(String, Want)> =
            c.repl.values().map(|j| (j.file.clone(), j.want)).collect();
        owed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            owed,
            vec![
                (
                    "missing.txt".into(),
                    Want::Content {
                        version: st("x", 1, None).version
                    }
                ),
                (
                    "stale.txt".into(),
                    Want::Content {
                        version: st("x", 3, None).version
                    }
                ),
                ("stray.txt".into(), Want::Delete),
            ]
        );
        assert_eq!(repl_jobs(&e).len(), 3);
        assert!(
            !c.files.contains_key("stray.txt"),
            "a backup's files are never adopted"
        );
        assert_eq!(
            c.files["same.txt"].backup_version,
            Some(st("x", 2, None).version)
        );
        hello(&mut c, 10, "alice");
        let info = |c: &mut Core, f: &str| {
            let Message::InfoReply { info } =
                only_reply(send(c, 10, Message::Info { file: f.into() }, 0))
            else {
                panic!()
            };
            info.replicas
                .iter()
                .map(|r| format!("{}:{}", r.ss, r.state))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(info(&mut c, "same.txt"), "ss1:current ss1_backup:current");
        assert_eq!(
            info(&mut c, "missing.txt"),
            "ss1:current ss1_backup:missing"
        );
        c.on_close(2, 5);
        assert_eq!(info(&mut c, "same.txt"), "ss1:current ss1_backup:down");
    }

    #[test]
    fn sync_mode_answers_after_the_backup_or_degraded() {
        let mut c = sync_core();
        register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
        register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, None)]);
        c.take_effects();
        // CHANGED waits for the backup's copy.
        let e = send(
            &mut c,
            1,
            Message::Changed {
                staged: None,
                id: 5,
                state: st("a.txt", 2, None),
            },
            10,
        );
        assert!(e.iter().all(|x| !matches!(x, Effect::Reply { .. })));
        c.tick(10);
        let jobs = repl_jobs(&c.take_effects());
        c.on_job_result(jobs[0].0, copied("a.txt", 2), 20);
        assert_eq!(
            only_reply(c.take_effects()),
            Message::ChangedAck {
                id: 5,
                copies: None
            }
        );
        // A failed attempt answers degraded; the job stays owed.
        send(
            &mut c,
            1,
            Message::Changed {
                staged: None,
                id: 6,
                state: st("a.txt", 3, None),
            },
            30,
        );
        c.tick(30);
        let jobs = repl_jobs(&c.take_effects());
        c.on_job_result(jobs[0].0, Err(err::unavailable("disk full")), 40);
        assert_eq!(
            only_reply(c.take_effects()),
            Message::ChangedAck {
                id: 6,
                copies: Some(1)
            }
        );
        assert_eq!(c.repl.len(), 1);
        // A client's CREATE waits too, and is released degraded when the backup goes down.
        hello(&mut c, 10, "alice");
        let job = only_job(send(
            &mut c,
            10,
            Message::Create {
                file: "b.txt".into(),
            },
            50,
        ));
        c.on_job_result(job.id, Ok(JobOutput::State(st("b.txt", 1, None))), 60);
        assert!(c
            .take_effects()
            .iter()
            .all(|x| !matches!(x, Effect::Reply { .. })));
        assert!(c.is_busy(10));
        c.on_close(2, 70);
        assert_eq!(
            only_reply(c.take_effects()),
            Message::DoneDegraded {
                copies: 1,
                total: 2
            }
        );
        assert!(!c.is_busy(10));
        // With the backup down a DELETE is answered degraded at once; the delete is owed.
        let job = only_job(send(
            &mut c,
            10,
            Message::Delete {
                file: "b.txt".into(),
            },
            80,
        ));
        c.on_job_result(job.id, Ok(JobOutput::Done), 90);
        assert_eq!(
            only_reply(c.take_effects()),
            Message::DoneDegraded {
                copies: 1,
                total: 2
            }
        );
        assert_eq!(c.repl[&job_key("ss1_backup", "b.txt")].want, Want::Delete);
    }

    #[test]
    fn a_slow_backup_gets_a_degraded_sync_answer_in_bounded_time() {
        let mut c = sync_core();
        c.cfg.heartbeat_timeout_ms = 1 << 40;
        register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
        register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, None)]);
        let e = send(
            &mut c,
            1,
            Message::Changed {
                staged: None,
                id: 9,
                state: st("a.txt", 2, None),
            },
            100,
        );
        assert!(e.iter().all(|x| !matches!(x, Effect::Reply { .. })));
        assert_eq!(c.next_deadline_ms(), Some(100), "the job is due now");
        c.tick(100);
        let jobs = repl_jobs(&c.take_effects());
        assert_eq!(jobs.len(), 1);
        assert_eq!(c.next_deadline_ms(), Some(100 + SYNC_WAIT_MS));
        c.tick(100 + SYNC_WAIT_MS);
        assert_eq!(
            only_reply(c.take_effects()),
            Message::ChangedAck {
                id: 9,
                copies: Some(1)
            }
        );
        // The copy still completes and clears the job.
        c.on_job_result(jobs[0].0, copied("a.txt", 2), 100 + SYNC_WAIT_MS + 1);
        assert!(c.repl.is_empty());
    }

    #[test]
    fn upload_creates_a_missing_file_then_locates_it() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        register(&mut c, 2, "ss1_backup", vec![]);
        hello(&mut c, 10, "alice");
        hello(&mut c, 11, "bob");
        let up = |f: &str| Message::Locate {
            avoid: None,
            file: f.into(),
            mode: AccessMode::Upload,
        };
        let job = only_job(send(&mut c, 10, up("u.bin"), 5));
        c.on_job_result(job.id, Ok(JobOutput::State(st("u.bin", 1, None))), 6);
        let Message::Located { ss, ticket, .. } = only_reply(c.take_effects()) else {
            panic!()
        };
        assert_eq!((ss.as_str(), ticket.op), ("ss1", TicketOp::Upload));
        assert_eq!(c.files["u.bin"].owner, "alice");
        // Existing file: located at once; write access needed.
        assert!(matches!(
            only_reply(send(&mut c, 10, up("u.bin"), 7)),
            Message::Located { .. }
        ));
        assert_eq!(
            code(only_reply(send(&mut c, 11, up("u.bin"), 7))),
            ErrorCode::Unauthorized
        );
    }

    fn folder(c: &mut Core, conn: ConnId, f: &str) -> Message {
        only_reply(send(c, conn, Message::CreateFolder { folder: f.into() }, 5))
    }

    fn listing(c: &mut Core, conn: ConnId, f: &str) -> Result<Vec<(String, bool)>, ErrorCode> {
        match only_reply(send(c, conn, Message::ViewFolder { folder: f.into() }, 5)) {
            Message::FolderList { entries, more } => {
                assert!(!more);
                Ok(entries.into_iter().map(|e| (e.name, e.dir)).collect())
            }
            other => Err(code(other)),
        }
    }

    fn entry(name: &str, dir: bool) -> (String, bool) {
        (name.to_string(), dir)
    }

    #[test]
    fn a_folder_cannot_take_the_name_of_a_file_being_created() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        hello(&mut c, 10, "alice");
        hello(&mut c, 11, "bob");
        let job = only_job(send(&mut c, 10, Message::Create { file: "x".into() }, 10));
        assert_eq!(code(folder(&mut c, 11, "/x")), ErrorCode::Locked);
        c.on_job_result(job.id, Ok(JobOutput::State(st("x", 1, None))), 20);
        assert_eq!(only_reply(c.take_effects()), Message::Done {});
        assert_eq!(code(folder(&mut c, 11, "/x")), ErrorCode::Conflict);
    }

    #[test]
    fn folders_nest_need_their_parent_and_list_one_level() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        hello(&mut c, 10, "alice");
        assert_eq!(folder(&mut c, 10, "/d"), Message::Done {});
        assert_eq!(code(folder(&mut c, 10, "/d/")), ErrorCode::Conflict);
        assert_eq!(code(folder(&mut c, 10, "/x/y")), ErrorCode::NotFound);
        assert_eq!(code(folder(&mut c, 10, "/")), ErrorCode::Conflict);
        assert_eq!(code(folder(&mut c, 10, "/a/../b")), ErrorCode::Invalid);
        assert_eq!(folder(&mut c, 10, "/d/s"), Message::Done {});
        assert!(c
            .take_batch()
            .iter()
            .any(|op| matches!(op, StoreOp::PutFolder(f, r) if f == "d/s" && r.owner == "alice")));
        create(&mut c, 10, "/d/a.txt");
        create(&mut c, 10, "/d/s/deep.txt");
        create(&mut c, 10, "top.txt");
        // A file needs its folder; a folder and a file never share a name.
        let m = only_reply(send(
            &mut c,
            10,
            Message::Create {
                file: "/x/a".into(),
            },
            5,
        ));
        assert_eq!(code(m), ErrorCode::NotFound);
        let m = only_reply(send(
            &mut c,
            10,
            Message::Create {
                file: "/d/s".into(),
            },
            5,
        ));
        assert_eq!(code(m), ErrorCode::Conflict);
        assert_eq!(code(folder(&mut c, 10, "/d/a.txt")), ErrorCode::Conflict);
        assert_eq!(
            listing(&mut c, 10, "/d/"),
            Ok(vec![entry("s", true), entry("a.txt", false)])
        );
        assert_eq!(listing(&mut c, 10, "/d"), listing(&mut c, 10, "/d/"));
        assert_eq!(
            listing(&mut c, 10, "/"),
            Ok(vec![entry("d", true), entry("top.txt", false)])
        );
        assert_eq!(
            listing(&mut c, 10, "/d/s"),
            Ok(vec![entry("deep.txt", false)])
        );
        assert_eq!(folder(&mut c, 10, "/e"), Message::Done {});
        assert_eq!(listing(&mut c, 10, "/e"), Ok(vec![]));
        assert_eq!(listing(&mut c, 10, "/nope"), Err(ErrorCode::NotFound));
    }

    #[test]
    fn adopted_files_bring_their_folders() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("a/b/c.txt", 1, Some("bob"))]);
        hello(&mut c, 10, "alice");
        assert_eq!(listing(&mut c, 10, "/a"), Ok(vec![entry("b", true)]));
        assert_eq!(listing(&mut c, 10, "/a/b"), Ok(vec![entry("c.txt", false)]));
    }

    /// A pair ss1 / ss1_backup (heartbeats not under test) with alice's `a.txt` and a folder
    /// `/d`, alice connected as 10.
    fn pair_with_file_and_folder() -> Core {
        let mut c = core();
        c.cfg.heartbeat_timeout_ms = 1 << 40;
        register_as(&mut c, 1, "ss1", None, vec![]);
        register_as(&mut c, 2, "ss1_backup", None, vec![]);
        hello(&mut c, 10, "alice");
        create(&mut c, 10, "a.txt");
        assert_eq!(folder(&mut c, 10, "/d"), Message::Done {});
        c
    }

    #[test]
    fn a_move_whose_outcome_is_unknown_keeps_its_names_until_its_server_registers() {
        let mut c = pair_with_file_and_folder();
        let mv = Message::Move {
            file: "a.txt".into(),
            folder: "/d".into(),
        };
        let job = match &send(&mut c, 10, mv, 5)[..] {
            [Effect::DurableJob(j)] => j.clone(),
            other => panic!("expected one held job, got {other:?}"),
        };
        let version = c.files["a.txt"].version;
        c.take_batch();
        c.on_job_result(job.id, Ok(JobOutput::MoveUnsettled("lost".into())), 6);
        assert_eq!(code(only_reply(c.take_effects())), ErrorCode::Unavailable);
        assert!(c.moves.contains_key("a.txt"), "the intent stays");
        assert!(!c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
        assert!(c.busy_files.contains_key("a.txt") && c.busy_files.contains_key("d/a.txt"));
        // Both names stay reserved: a CREATE of the new name waits.
        let create_new = Message::Create {
            file: "/d/a.txt".into(),
        };
        assert!(send(&mut c, 10, create_new, 7).is_empty());
        // ss1 registers again holding the new name: the move is credited, the CREATE refused.
        c.on_close(1, 8);
        let mut moved = st("d/a.txt", version.counter, None);
        moved.version = version;
        let e = register_as(&mut c, 3, "ss1", None, vec![moved]);
        assert!(c.moves.is_empty());
        assert!(!c.files.contains_key("a.txt") && c.files.contains_key("d/a.txt"));
        let refused = e.iter().any(|x| {
            matches!(
                x,
                Effect::Reply {
                    conn: 10,
                    msg: Message::Err {
                        code: ErrorCode::Conflict,
                        ..
                    },
                    ..
                }
            )
        });
        assert!(refused, "{e:?}");
    }

    #[test]
    fn an_unsettled_move_given_up_at_a_new_epoch_repairs_its_server() {
        // `backup_current`: whether the other member holds the record's version to repair
        // ss1's copies from.
        for backup_current in [true, false] {
            let mut c = pair_with_file_and_folder();
            let mut rec = c.files["a.txt"].clone();
            let v = rec.version;
            rec.set_held(Member::Backup, backup_current.then_some(v));
            c.put_file("a.txt", rec);
            let mv = Message::Move {
                file: "a.txt".into(),
                folder: "/d".into(),
            };
            let [Effect::DurableJob(job)] = &send(&mut c, 10, mv, 5)[..] else {
                panic!("expected one held job");
            };
            c.on_job_result(job.id, Ok(JobOutput::MoveUnsettled("lost".into())), 6);
            c.take_effects();
            // The pair takes a new epoch: the move is given up and both names are free.
            c.forget_moves_before("ss1", "ss1_backup", EPOCH + 1, 7);
            assert!(c.moves.is_empty() && c.busy_files.is_empty());
            assert!(c.files.contains_key("a.txt") && !c.files.contains_key("d/a.txt"));
            if backup_current {
                // ss1, which may have renamed the file, is owed the old name back and the
                // new name's removal.
                assert!(matches!(
                    c.repl[&job_key("ss1", "a.txt")].want,
                    Want::Content { .. }
                ));
                assert_eq!(c.repl[&job_key("ss1", "d/a.txt")].want, Want::Delete);
            } else {
                // ss1's copy may be the only one: nothing is set aside.
                assert!(c.files["a.txt"].holds(Member::Primary));
                assert!(!c.repl.contains_key(&job_key("ss1", "a.txt")));
            }
        }
    }

    #[test]
    fn move_checks_rights_folder_and_name_then_follows_the_rename() {
        let mut c = core();
        register_as(&mut c, 1, "ss1", None, vec![]);
        register_as(&mut c, 2, "ss1_backup", None, vec![]);
        hello(&mut c, 10, "alice");
        hello(&mut c, 11, "bob");
        create(&mut c, 10, "a.txt");
        create(&mut c, 10, "b.txt");
        assert_eq!(folder(&mut c, 10, "/d"), Message::Done {});
        create(&mut c, 10, "/d/b.txt");
        let mv = |file: &str, folder: &str| Message::Move {
            file: file.into(),
            folder: folder.into(),
        };
        let add = Message::AddAccess {
            file: "a.txt".into(),
            user: "bob".into(),
            write: false,
        };
        only_reply(send(&mut c, 10, add, 5));
        for (user, file, to, want) in [
            (11, "a.txt", "/d", ErrorCode::Unauthorized),
            (10, "a.txt", "/nope", ErrorCode::NotFound),
            (10, "a.txt", "/", ErrorCode::Conflict),
            (10, "b.txt", "/d/", ErrorCode::Conflict),
            (10, "gone.txt", "/d", ErrorCode::NotFound),
        ] {
            let m = only_reply(send(&mut c, user, mv(file, to), 5));
            assert_eq!(code(m), want, "MOVE {file} {to}");
        }
        c.take_batch();
        // The call waits for the move's intent to be durable.
        let job = match &send(&mut c, 10, mv("a.txt", "/d/"), 5)[..] {
            [Effect::DurableJob(j)] => j.clone(),
            other => panic!("expected one job held for the store, got {other:?}"),
        };
        assert!(
            c.take_batch().iter().any(
                |op| matches!(op, StoreOp::PutMove(f, m) if f == "a.txt" && m.to == "d/a.txt")
            ),
            "no intent written"
        );
        let JobKind::SsCall {
            msg: Message::SsMove {
                file, to, ticket, ..
            },
            ..
        } = &job.kind
        else {
            panic!("not an SS_MOVE: {job:?}");
        };
        assert_eq!((file.as_str(), to.as_str()), ("a.txt", "d/a.txt"));
        assert_eq!(ticket.file, names::move_subject("a.txt", "d/a.txt"));
        assert_eq!(ticket.op, TicketOp::Move);
        // The new name is taken while the move runs: a CREATE of it waits, then conflicts.
        assert!(send(
            &mut c,
            11,
            Message::Create {
                file: "/d/a.txt".into()
            },
            6
        )
        .is_empty());
        let before = c.files["a.txt"].clone();
        c.on_job_result(job.id, Ok(JobOutput::Done), 7);
        let e = c.take_effects();
        let replies: Vec<&Message> = e
            .iter()
            .filter_map(|x| match x {
                Effect::Reply { msg, .. } => Some(msg),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 2, "{e:?}");
        assert_eq!(replies[0], &Message::Done {});
        assert_eq!(code(replies[1].clone()), ErrorCode::Conflict);
        assert!(!c.files.contains_key("a.txt"));
        assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
        assert!(c.moves.is_empty());
        let after = &c.files["d/a.txt"];
        assert_eq!(
            (&after.owner, &after.access, after.version),
            (&before.owner, &before.access, before.version)
        );
        // The backup is owed the old name's removal and the file under its new name.
        assert_eq!(c.repl[&job_key("ss1_backup", "a.txt")].want, Want::Delete);
        assert_eq!(
            c.repl[&job_key("ss1_backup", "d/a.txt")].want,
            Want::Content {
                version: after.version
            }
        );
    }

    #[test]
    fn a_move_left_unsettled_is_settled_by_what_its_server_registers_with() {
        let mut rec = FileRecord {
            owner: "alice".into(),
            ss: "ss1".into(),
            version: Version {
                epoch: EPOCH,
                counter: 3,
            },
            checksum: 3,
            size: 3,
            words: 1,
            chars: 3,
            created_ms: 1,
            modified_ms: 2,
            access: BTreeMap::from([("bob".to_string(), false)]),
            accessed_ms: None,
            accessed_by: None,
            primary_missing: false,
            backup_version: None,
            primary_held: None,
            epoch_base: None,
        };
        rec.held_only_by(Member::Primary, rec.version);
        let intent = MoveIntent {
            to: "d/a.txt".into(),
            ss: "ss1".into(),
            epoch: EPOCH,
            record: rec.clone(),
        };
        let restarted = || {
            let mut loaded = Loaded::default();
            loaded.files.insert("a.txt".into(), rec.clone());
            loaded.moves.insert("a.txt".into(), intent.clone());
            loaded.folders.insert(
                "d".into(),
                FolderRecord {
                    owner: "alice".into(),
                    created_ms: 1,
                },
            );
            let mut c = Core::new(core().cfg.clone(), ClusterKey::from_bytes(KEY), loaded);
            hello(&mut c, 10, "alice");
            c
        };
        let create_new_name = |c: &mut Core| {
            send(
                c,
                10,
                Message::Create {
                    file: "/d/a.txt".into(),
                },
                5,
            )
        };
        // Renamed: the record moves whole, and the intent goes in the same batch.
        let mut c = restarted();
        assert!(
            create_new_name(&mut c).is_empty(),
            "the new name is reserved"
        );
        register(&mut c, 1, "ss1", vec![st("d/a.txt", 3, Some("alice"))]);
        assert!(!c.files.contains_key("a.txt"));
        assert_eq!(c.files["d/a.txt"].access, rec.access);
        assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
        assert!(c.moves.is_empty() && !c.busy_files.contains_key("a.txt"));
        // Not renamed: the record stays, both names are free.
        let mut c = restarted();
        register(&mut c, 1, "ss1", vec![st("a.txt", 3, Some("alice"))]);
        assert_eq!(c.files["a.txt"], rec);
        assert!(!c.files.contains_key("d/a.txt"));
        assert!(c.moves.is_empty() && c.busy_files.is_empty());
        assert!(!create_new_name(&mut c).is_empty(), "the new name is free");
        // Neither name: not credited; the record stays (its copy is owed from the backup).
        let mut c = restarted();
        register(&mut c, 1, "ss1", vec![]);
        assert!(c.moves.is_empty() && c.busy_files.is_empty());
        assert_eq!(c.files["a.txt"].access, rec.access);
        assert!(!c.files.contains_key("d/a.txt"));
        // The new name at an older version, or at the record's version with other bytes, is
        // not this move's rename: not credited.
        let mut other_bytes = st("d/a.txt", 3, Some("alice"));
        other_bytes.checksum ^= 1;
        for listed in [st("d/a.txt", 2, Some("alice")), other_bytes] {
            let mut c = restarted();
            register(&mut c, 1, "ss1", vec![listed]);
            assert!(c.moves.is_empty() && c.busy_files.is_empty());
            assert_eq!(c.files["a.txt"].access, rec.access);
        }
        // At a later version (a write the server committed before the move): credited.
        let mut c = restarted();
        register(&mut c, 1, "ss1", vec![st("d/a.txt", 9, Some("alice"))]);
        assert_eq!(c.files["d/a.txt"].access, rec.access);
        assert!(!c.files.contains_key("a.txt"));
        // The pair changes writers before ss1 is back (what `advance_pairs` reports at each
        // new epoch): forgotten, both names free, so the new writer serves the old name.
        let mut c = restarted();
        c.take_batch();
        c.forget_moves_before("ss1", "ss1_backup", EPOCH, 5);
        assert!(!c.moves.is_empty(), "the move's own epoch keeps it");
        c.forget_moves_before("ss1", "ss1_backup", EPOCH + 1, 5);
        assert!(c.moves.is_empty() && c.busy_files.is_empty());
        assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
        assert!(
            !create_new_name(&mut c).is_empty(),
            "the new name is free again"
        );
    }

    #[test]
    fn checkpoint_and_revert_need_write_access_and_a_valid_tag() {
        let mut c = core();
        register_as(&mut c, 1, "ss1", None, vec![]);
        register_as(&mut c, 2, "ss1_backup", None, vec![]);
        hello(&mut c, 10, "alice");
        hello(&mut c, 11, "bob");
        create(&mut c, 10, "a.txt");
        let add = Message::AddAccess {
            file: "a.txt".into(),
            user: "bob".into(),
            write: false,
        };
        only_reply(send(&mut c, 10, add, 5));
        let cp = |tag: &str| Message::Checkpoint {
            file: "a.txt".into(),
            tag: tag.into(),
        };
        let rv = |tag: &str| Message::Revert {
            file: "a.txt".into(),
            tag: tag.into(),
        };
        assert_eq!(
            code(only_reply(send(&mut c, 11, cp("v1"), 5))),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(only_reply(send(&mut c, 11, rv("v1"), 5))),
            ErrorCode::Unauthorized
        );
        for bad in ["a b", "", "x/y", &"t".repeat(65)] {
            assert_eq!(
                code(only_reply(send(&mut c, 10, cp(bad), 5))),
                ErrorCode::Invalid
            );
        }
        let job = only_job(send(&mut c, 10, cp("v1"), 5));
        assert!(matches!(
            &job.kind,
            JobKind::SsCall { msg: Message::SsCheckpoint { tag, creator, .. }, .. }
                if tag == "v1" && creator == "alice"
        ));
        c.on_job_result(job.id, Ok(JobOutput::State(st("a.txt", 2, None))), 8);
        assert_eq!(only_reply(c.take_effects()), Message::Done {});
        let v = c.files["a.txt"].version;
        assert_eq!(v.counter, 2);
        // The checkpoint is a new version: the ordinary content job carries it.
        assert_eq!(
            c.repl[&job_key("ss1_backup", "a.txt")].want,
            Want::Content { version: v }
        );
        let job = only_job(send(&mut c, 10, rv("v1"), 9));
        assert!(matches!(
            &job.kind,
            JobKind::SsCall { msg: Message::SsRevert { tag, .. }, .. } if tag == "v1"
        ));
        c.on_job_result(job.id, Ok(JobOutput::State(st("a.txt", 3, None))), 10);
        assert_eq!(only_reply(c.take_effects()), Message::Done {});
        // REVERT changes content only: bob keeps exactly his read access.
        assert_eq!(c.files["a.txt"].access.get("bob"), Some(&false));
    }

    #[test]
    fn access_requests_grant_exactly_what_was_asked_and_ids_never_repeat() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        hello(&mut c, 10, "alice");
        hello(&mut c, 11, "bob");
        hello(&mut c, 12, "carol");
        hello(&mut c, 13, "dave");
        create(&mut c, 10, "a.txt");
        let racc = |kind| Message::RequestAccess {
            file: "a.txt".into(),
            kind,
        };
        let answer = |id, approve| Message::AnswerRequest { id, approve };
        use crate::protocol::AccessKind;
        assert_eq!(
            only_reply(send(&mut c, 11, racc(AccessKind::R), 5)),
            Message::RequestCreated { id: 1 }
        );
        assert_eq!(
            code(only_reply(send(&mut c, 11, racc(AccessKind::RW), 5))),
            ErrorCode::Conflict,
            "a second pending request of the same user"
        );
        assert_eq!(
            code(only_reply(send(&mut c, 10, racc(AccessKind::R), 5))),
            ErrorCode::Invalid,
            "the owner cannot request"
        );
        let m = only_reply(send(
            &mut c,
            12,
            Message::RequestAccess {
                file: "nope".into(),
                kind: AccessKind::R,
            },
            5,
        ));
        assert_eq!(code(m), ErrorCode::NotFound);
        assert_eq!(
            only_reply(send(&mut c, 12, racc(AccessKind::W), 6)),
            Message::RequestCreated { id: 2 }
        );
        assert_eq!(
            only_reply(send(&mut c, 13, racc(AccessKind::RW), 6)),
            Message::RequestCreated { id: 3 }
        );
        let pending =
            |c: &mut Core, conn| match only_reply(send(c, conn, Message::ViewRequests {}, 7)) {
                Message::Requests { requests, .. } => requests
                    .into_iter()
                    .map(|r| (r.id, r.user, r.kind))
                    .collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            };
        assert!(pending(&mut c, 11).is_empty(), "bob owns nothing");
        assert_eq!(
            pending(&mut c, 10),
            vec![
                (1, "bob".to_string(), AccessKind::R),
                (2, "carol".to_string(), AccessKind::W),
                (3, "dave".to_string(), AccessKind::RW),
            ]
        );
        assert_eq!(
            code(only_reply(send(&mut c, 11, answer(1, true), 8))),
            ErrorCode::Unauthorized
        );
        for id in [1, 2] {
            assert_eq!(
                only_reply(send(&mut c, 10, answer(id, true), 8)),
                Message::Done {}
            );
        }
        assert_eq!(
            only_reply(send(&mut c, 10, answer(3, false), 8)),
            Message::Done {}
        );
        let access = &c.files["a.txt"].access;
        assert_eq!(access.get("bob"), Some(&false), "R grants read only");
        assert_eq!(access.get("carol"), Some(&true), "W grants read and write");
        assert_eq!(access.get("dave"), None, "a refused request grants nothing");
        assert_eq!(
            code(only_reply(send(&mut c, 10, answer(1, true), 8))),
            ErrorCode::NotFound,
            "an answered request is gone"
        );
        assert_eq!(
            code(only_reply(send(&mut c, 11, racc(AccessKind::R), 9))),
            ErrorCode::Conflict,
            "bob already has read access"
        );
        assert_eq!(
            only_reply(send(&mut c, 11, racc(AccessKind::RW), 9)),
            Message::RequestCreated { id: 4 }
        );
        assert!(c.take_batch().contains(&StoreOp::PutNextRequest(5)));
        // A restarted core continues the counter from what was stored.
        let loaded = Loaded {
            requests: c.requests.clone(),
            next_request: 5,
            ..Loaded::default()
        };
        let mut c2 = Core::new(c.cfg.clone(), ClusterKey::from_bytes(KEY), loaded);
        assert_eq!(c2.next_request, 5);
        c2.drop_requests_for("a.txt");
        assert!(c2.requests.is_empty());
    }
}
