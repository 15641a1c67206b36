//! The name server's state and every decision it makes, with no I/O.
//!
//! The event loop (`server.rs`) hands the core frames, connection closes, worker results and
//! the current time; the core answers with [`Effect`]s (replies, closes, worker jobs) and a
//! batch of [`StoreOp`]s that must be durable before any reply produced alongside it is sent.
//! Keeping every decision here means tests drive the name server without sockets or disks.

use crate::auth::{ClusterKey, NM_USER};
use crate::logging::ev;
use crate::names;
use crate::protocol::frame;
use crate::protocol::{
    err, AccessEntry, AccessMode, FileInfo, FileState, FileSummary, Frame, Message, ReplicaInfo,
    TicketOp, Version, WireError,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Identifies one connection to the name server (the loop's mio token).
pub type ConnId = usize;
/// Identifies one worker job.
pub type JobId = u64;

/// The epoch stamped on new versions until pairs and failover raise it.
pub const EPOCH: u64 = 1;
/// Requests waiting behind an in-flight operation on one file; more are refused with LIMIT.
pub const MAX_WAITING_PER_FILE: usize = 32;
/// Most files a registering server may announce (bounds the registration buffer).
pub const MAX_REGISTER_FILES: u64 = 10_000_000;
/// Time a new connection has to say HELLO or finish registering before it is closed, so idle
/// sockets cannot hold connection slots.
pub const INTRODUCTION_TIMEOUT_MS: u64 = 60_000;
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
}

impl FileRecord {
    fn apply_state(&mut self, s: &FileState) {
        self.version = s.version;
        self.checksum = s.checksum;
        self.size = s.size;
        self.words = s.words;
        self.chars = s.chars;
        self.modified_ms = s.modified_ms;
    }

    fn can_read(&self, user: &str) -> bool {
        self.owner == user || self.access.contains_key(user)
    }

    fn can_write(&self, user: &str) -> bool {
        self.owner == user || self.access.get(user).copied().unwrap_or(false)
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
        format!("{}:{}", self.host, self.client_port)
    }
}

/// A change to the durable state; the store applies a batch of them in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Record a user.
    PutUser(String),
    /// Insert or replace a file record.
    PutFile(String, FileRecord),
    /// Remove a file record.
    DelFile(String),
    /// Insert or replace a server record.
    PutServer(String, ServerRecord),
}

/// The durable state as loaded at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Every user ever seen.
    pub users: BTreeSet<String>,
    /// The file index by canonical name.
    pub files: BTreeMap<String, FileRecord>,
    /// Storage servers ever registered.
    pub servers: BTreeMap<String, ServerRecord>,
}

/// Blocking work for the worker pool.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Send `msg` (SS_CREATE, SS_DELETE or SS_UNDO) to the storage server at `addr`.
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
}

/// Settings the core decides with.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Interval storage servers are told to heartbeat at.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a server is declared down.
    pub heartbeat_timeout_ms: u64,
    /// Whether EXEC is allowed.
    pub exec_enabled: bool,
    /// The `--replication` mode, reported in status until pairs act on it.
    pub replication: &'static str,
}

/// Runtime state of a storage server.
#[derive(Debug, Clone)]
struct ServerLive {
    rec: ServerRecord,
    up: bool,
    last_heartbeat_ms: Option<u64>,
    conn: Option<ConnId>,
    files: u64,
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
    Client { user: String, busy: bool },
    Registering(Box<Registering>),
    Server { name: String },
}

/// A client request that needs a storage server, possibly waiting for its file.
#[derive(Debug, Clone)]
struct Pending {
    conn: ConnId,
    user: String,
    msg: Message,
}

#[derive(Debug, Clone)]
enum Purpose {
    Create { owner: String, ss: String },
    Delete,
    Undo,
    Exec { user: String, started_ms: u64 },
}

#[derive(Debug, Clone)]
struct InFlight {
    conn: ConnId,
    file: String,
    purpose: Purpose,
    /// Whether this job holds its file's per-file slot.
    serialised: bool,
}

/// The name server's state machine.
pub struct Core {
    cfg: CoreConfig,
    key: ClusterKey,
    users: BTreeSet<String>,
    files: BTreeMap<String, FileRecord>,
    servers: BTreeMap<String, ServerLive>,
    peers: HashMap<ConnId, Peer>,
    /// Files with an NM-initiated operation in flight, and the requests waiting behind it.
    busy_files: HashMap<String, VecDeque<Pending>>,
    jobs: HashMap<JobId, InFlight>,
    /// Connections that have not finished HELLO or registration, with their deadline.
    introducing: HashMap<ConnId, u64>,
    next_job: JobId,
    out: Vec<Effect>,
    batch: Vec<StoreOp>,
}

fn not_found(file: &str) -> WireError {
    err::not_found(format!("File not found: {}", names::display(file)))
}

fn no_live_copy(file: &str) -> WireError {
    err::unavailable(format!("no live copy of {}", names::display(file)))
}

impl Core {
    /// A core over the state loaded from the store; every server starts down.
    pub fn new(cfg: CoreConfig, key: ClusterKey, loaded: Loaded) -> Core {
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
                };
                (n, live)
            })
            .collect();
        for f in loaded.files.values() {
            if let Some(s) = servers.get_mut(&f.ss) {
                s.files += 1;
            }
        }
        Core {
            cfg,
            key,
            users: loaded.users,
            files: loaded.files,
            servers,
            peers: HashMap::new(),
            busy_files: HashMap::new(),
            jobs: HashMap::new(),
            introducing: HashMap::new(),
            next_job: 1,
            out: Vec::new(),
            batch: Vec::new(),
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

    /// Jobs handed out and not yet answered.
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// A new connection was accepted.
    pub fn on_connect(&mut self, conn: ConnId, now_ms: u64) {
        self.peers.insert(conn, Peer::Unknown);
        self.introducing
            .insert(conn, now_ms + INTRODUCTION_TIMEOUT_MS);
    }

    /// A connection closed (by the peer, an error, or us).
    pub fn on_close(&mut self, conn: ConnId, now_ms: u64) {
        let _ = now_ms;
        self.introducing.remove(&conn);
        if let Some(Peer::Server { name }) = self.peers.remove(&conn) {
            if let Some(s) = self.servers.get_mut(&name) {
                if s.conn == Some(conn) {
                    s.conn = None;
                    if s.up {
                        s.up = false;
                        log::warn!(target: ev::HEARTBEAT_MONITOR_FAILURE, ss = name.as_str();
                            "storage server {name} is down (connection closed)");
                    }
                }
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
        heartbeats.chain(self.introducing.values().copied()).min()
    }

    /// Declares down every server silent for longer than the heartbeat timeout, and closes its
    /// link so it must register again.
    pub fn tick(&mut self, now_ms: u64) {
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
        for (name, s) in self.servers.iter_mut() {
            let silent = s.last_heartbeat_ms.is_some_and(|t| now_ms >= t + timeout);
            if s.up && silent {
                s.up = false;
                log::warn!(target: ev::HEARTBEAT_MONITOR_FAILURE, ss = name.as_str(), ms = timeout;
                    "storage server {name} is down (no heartbeat for {timeout} ms)");
                if let Some(c) = s.conn.take() {
                    self.out.push(Effect::Close { conn: c });
                }
            }
        }
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
        self.batch
            .push(StoreOp::PutFile(file.to_string(), rec.clone()));
        self.files.insert(file.to_string(), rec);
    }

    fn del_file(&mut self, file: &str) {
        if let Some(rec) = self.files.remove(file) {
            if let Some(s) = self.servers.get_mut(&rec.ss) {
                s.files = s.files.saturating_sub(1);
            }
            self.batch.push(StoreOp::DelFile(file.to_string()));
        }
    }

    fn new_job(&mut self, kind: JobKind, flight: InFlight) {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(id, flight);
        self.out.push(Effect::Job(Job { id, kind }));
    }

    /// Handles one frame from a connection.
    pub fn on_frame(&mut self, conn: ConnId, frame: Frame, now_ms: u64) {
        let msg = frame.msg;
        let peer = self.peers.remove(&conn).unwrap_or(Peer::Unknown);
        match peer {
            Peer::Unknown => {
                self.peers.insert(conn, Peer::Unknown);
                match msg {
                    Message::Hello { user } => self.hello(conn, user),
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
                        if let Err(e) = self.key.check_proof(&name, &proof) {
                            log::warn!(target: ev::NM_SS_REGISTER, ss = name.as_str();
                                "refused registration of {name}: {}", e.msg);
                            return self.refuse_and_close(conn, e);
                        }
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

    fn hello(&mut self, conn: ConnId, user: String) {
        if let Err(e) = names::validate_user(&user) {
            return self.refuse_and_close(conn, e);
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
        self.reply(conn, Message::Welcome { user });
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
        self.servers.insert(
            name.clone(),
            ServerLive {
                rec: rec.clone(),
                up: true,
                last_heartbeat_ms: Some(now_ms),
                conn: Some(conn),
                files: files_before,
            },
        );
        self.introducing.remove(&conn);
        let (adopted, updated, removed) = self.reconcile(&name, files, now_ms);
        self.peers.insert(conn, Peer::Server { name: name.clone() });
        let held = self.servers.get(&name).map(|s| s.files).unwrap_or(0);
        log::info!(target: ev::NM_SS_REGISTER, ss = name.as_str(), addr = rec.addr(),
            files = held, adopted = adopted, updated = updated, removed = removed;
            "storage server {name} registered at {} with {held} files", rec.addr());
        self.reply(
            conn,
            Message::Registered {
                epoch: EPOCH,
                heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
                backup: false,
            },
        );
    }

    /// Brings the index in line with a registering server's file list. Returns counts of
    /// adopted, updated and removed records.
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
                        updated += 1;
                    }
                }
                // Another server holds the record; pairs will decide which copy wins.
                Some(_) => {}
                None => {
                    self.adopt(ss, &file, &st, now_ms);
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
        for f in gone {
            if self.busy_files.contains_key(&f) {
                continue;
            }
            self.del_file(&f);
            removed += 1;
        }
        (adopted, updated, removed)
    }

    fn adopt(&mut self, ss: &str, file: &str, st: &FileState, now_ms: u64) {
        let owner = st
            .owner
            .clone()
            .filter(|o| names::validate_user(o).is_ok())
            .unwrap_or_else(|| ADOPTED_OWNER.to_string());
        self.add_user(&owner);
        let created_ms = if st.modified_ms > 0 {
            st.modified_ms
        } else {
            now_ms
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
        };
        rec.apply_state(st);
        self.put_file(file, rec);
    }

    fn server_message(&mut self, conn: ConnId, name: &str, msg: Message, now_ms: u64) {
        match msg {
            Message::Heartbeat { seq } => {
                if let Some(s) = self.servers.get_mut(name) {
                    s.last_heartbeat_ms = Some(now_ms);
                }
                log::debug!(target: ev::NM_HEARTBEAT, ss = name, seq = seq; "heartbeat from {name}");
                self.reply(conn, Message::HeartbeatAck { seq });
            }
            Message::Changed { id, state } => {
                if let Ok(file) = names::canonical_file(&state.file) {
                    match self.files.get(&file) {
                        Some(rec) => {
                            if rec.ss == name && state.version >= rec.version {
                                let mut rec = rec.clone();
                                rec.apply_state(&state);
                                self.put_file(&file, rec);
                                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(),
                                    version = state.version.to_string(); "{file} changed on {name}");
                            }
                        }
                        None => self.adopt(name, &file, &state, now_ms),
                    }
                }
                self.reply(conn, Message::ChangedAck { id, copies: None });
            }
            Message::Removed { id, file } => {
                if let Ok(file) = names::canonical_file(&file) {
                    if self.files.get(&file).is_some_and(|r| r.ss == name) {
                        self.del_file(&file);
                        log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str();
                            "{file} vanished from {name}");
                    }
                }
                self.reply(conn, Message::ChangedAck { id, copies: None });
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
            Message::Create { .. } | Message::Delete { .. } | Message::Undo { .. } => {
                self.serialised(conn, user, msg, now_ms)
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
            Message::Locate { file, mode } => match self.locate(&user, &file, mode, now_ms) {
                Ok(m) => self.reply(conn, m),
                Err(e) => self.fail(conn, e),
            },
            Message::Hello { .. } => self.fail(conn, err::invalid("already introduced")),
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

    /// The live address of the server holding `rec`, or UNAVAILABLE.
    fn live_addr(&self, rec: &FileRecord, file: &str) -> Result<String, WireError> {
        match self.servers.get(&rec.ss) {
            Some(s) if s.up => Ok(s.rec.addr()),
            _ => Err(no_live_copy(file)),
        }
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
        let up = self.servers.get(&rec.ss).is_some_and(|s| s.up);
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
            replicas: vec![ReplicaInfo {
                ss: rec.ss.clone(),
                state: if up { "current" } else { "down" }.to_string(),
            }],
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
        now_ms: u64,
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
                return Err(err::unavailable(
                    "UPLOAD is not supported by this cluster yet",
                ));
            }
            AccessMode::Write => {
                Self::need_write(rec, user, &canon)?;
                TicketOp::Write
            }
        };
        let addr = self.live_addr(rec, &canon)?;
        let ss = rec.ss.clone();
        let ticket = self.key.mint(user, &canon, op, &ss, Some(rec.version));
        let mut rec = rec.clone();
        rec.accessed_ms = Some(now_ms);
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
        let addr = self.live_addr(rec, &canon)?;
        let ticket = self
            .key
            .mint(NM_USER, &canon, TicketOp::Read, &rec.ss, Some(rec.version));
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
            },
        );
        Ok(())
    }

    /// CREATE, DELETE and UNDO: one NM-initiated operation per file at a time; later ones wait
    /// in a small bounded queue and are decided when their turn comes.
    fn serialised(&mut self, conn: ConnId, user: String, msg: Message, now_ms: u64) {
        let file = match &msg {
            Message::Create { file } | Message::Delete { file } | Message::Undo { file } => {
                file.clone()
            }
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
        let _ = now_ms;
        let started = match &p.msg {
            Message::Create { .. } => self.start_create(canon, &p),
            Message::Delete { .. } => self.start_delete(canon, &p),
            Message::Undo { .. } => self.start_undo(canon, &p),
            _ => Err(err::internal("not a serialised request")),
        };
        match started {
            Ok((kind, purpose)) => {
                self.busy_files.entry(canon.to_string()).or_default();
                self.set_busy(p.conn, true);
                self.new_job(
                    kind,
                    InFlight {
                        conn: p.conn,
                        file: canon.to_string(),
                        purpose,
                        serialised: true,
                    },
                );
            }
            Err(e) => {
                self.set_busy(p.conn, false);
                self.fail(p.conn, e);
            }
        }
    }

    fn start_create(&self, canon: &str, p: &Pending) -> Result<(JobKind, Purpose), WireError> {
        if self.files.contains_key(canon) {
            return Err(err::conflict("File already exists"));
        }
        let folder = names::parent(canon);
        if !folder.is_empty() {
            return Err(err::not_found(format!(
                "Folder not found: /{folder} (folders are not supported yet; create files in the root)"
            )));
        }
        let ss = self
            .servers
            .iter()
            .filter(|(n, s)| s.up && s.rec.backup_of.is_none() && !n.ends_with("_backup"))
            .min_by_key(|(n, s)| (s.files, (*n).clone()))
            .map(|(n, s)| (n.clone(), s.rec.addr()));
        let Some((ss, addr)) = ss else {
            return Err(err::unavailable("no storage server available"));
        };
        let ticket = self.key.mint(NM_USER, canon, TicketOp::Create, &ss, None);
        let msg = Message::SsCreate {
            file: canon.to_string(),
            owner: p.user.clone(),
            epoch: EPOCH,
            ticket,
        };
        Ok((
            JobKind::SsCall { addr, msg },
            Purpose::Create {
                owner: p.user.clone(),
                ss,
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
        let addr = self.live_addr(rec, canon)?;
        let ticket = self
            .key
            .mint(NM_USER, canon, TicketOp::Delete, &rec.ss, None);
        let msg = Message::SsDelete {
            file: canon.to_string(),
            ticket,
        };
        Ok((JobKind::SsCall { addr, msg }, Purpose::Delete))
    }

    fn start_undo(&self, canon: &str, p: &Pending) -> Result<(JobKind, Purpose), WireError> {
        let rec = self.files.get(canon).ok_or_else(|| not_found(canon))?;
        Self::need_write(rec, &p.user, canon)?;
        let addr = self.live_addr(rec, canon)?;
        let ticket = self.key.mint(NM_USER, canon, TicketOp::Undo, &rec.ss, None);
        let msg = Message::SsUndo {
            file: canon.to_string(),
            epoch: EPOCH,
            ticket,
        };
        Ok((JobKind::SsCall { addr, msg }, Purpose::Undo))
    }

    /// A worker finished (or the job could not be queued).
    pub fn on_job_result(&mut self, id: JobId, result: Result<JobOutput, WireError>, now_ms: u64) {
        let Some(flight) = self.jobs.remove(&id) else {
            return;
        };
        let conn = flight.conn;
        let file = flight.file.clone();
        let reply: Result<(Message, Vec<u8>), WireError> = match (flight.purpose, result) {
            (Purpose::Create { owner, ss }, Ok(JobOutput::State(st))) => {
                let rec = FileRecord {
                    owner,
                    ss: ss.clone(),
                    version: st.version,
                    checksum: st.checksum,
                    size: st.size,
                    words: st.words,
                    chars: st.chars,
                    created_ms: now_ms,
                    modified_ms: if st.modified_ms > 0 {
                        st.modified_ms
                    } else {
                        now_ms
                    },
                    access: BTreeMap::new(),
                    accessed_ms: None,
                    accessed_by: None,
                };
                self.put_file(&file, rec);
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(), ss = ss.as_str(),
                    version = st.version.to_string(); "created {file} on {ss}");
                Ok((Message::Done {}, Vec::new()))
            }
            (Purpose::Delete, Ok(_)) => {
                self.del_file(&file);
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(); "deleted {file}");
                Ok((Message::Done {}, Vec::new()))
            }
            (Purpose::Delete, Err(e)) if e.code == crate::protocol::ErrorCode::NotFound => {
                // The copy is already gone; the record follows it.
                self.del_file(&file);
                Ok((Message::Done {}, Vec::new()))
            }
            (Purpose::Undo, Ok(JobOutput::State(st))) => {
                if let Some(rec) = self.files.get(&file) {
                    let mut rec = rec.clone();
                    if st.version >= rec.version {
                        rec.apply_state(&st);
                        self.put_file(&file, rec);
                    }
                }
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(),
                    version = st.version.to_string(); "undid the last change of {file}");
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
        self.set_busy(conn, false);
        match reply {
            Ok((msg, body)) => self.out.push(Effect::Reply { conn, msg, body }),
            Err(e) => self.fail(conn, e),
        }
        if flight.serialised {
            self.next_for_file(&file, now_ms);
        }
    }

    /// Starts the next waiting request on a file whose operation just finished.
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
                    "last_heartbeat_ms": s.last_heartbeat_ms,
                    "last_heartbeat_age_ms": s.last_heartbeat_ms.map(|t| now_ms.saturating_sub(t)),
                })
            })
            .collect();
        serde_json::json!({
            "replication": self.cfg.replication,
            "servers": servers,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    const KEY: &[u8] = b"0123456789abcdef0123";

    fn core() -> Core {
        Core::new(
            CoreConfig {
                heartbeat_interval_ms: 100,
                heartbeat_timeout_ms: 300,
                exec_enabled: true,
                replication: "async",
            },
            ClusterKey::from_bytes(KEY),
            Loaded::default(),
        )
    }

    fn send(c: &mut Core, conn: ConnId, msg: Message, now: u64) -> Vec<Effect> {
        c.on_frame(conn, Frame { msg, body: vec![] }, now);
        c.take_effects()
    }

    fn st(file: &str, counter: u64, owner: Option<&str>) -> FileState {
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

    fn register(c: &mut Core, conn: ConnId, name: &str, files: Vec<FileState>) -> Vec<Effect> {
        c.on_connect(conn, 0);
        let proof = ClusterKey::from_bytes(KEY).proof(name);
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
        if !files.is_empty() {
            assert!(send(c, conn, Message::FileBatch { files }, 0).is_empty());
        }
        send(c, conn, Message::RegisterEnd {}, 0)
    }

    fn hello(c: &mut Core, conn: ConnId, user: &str) {
        c.on_connect(conn, 0);
        let e = send(c, conn, Message::Hello { user: user.into() }, 0);
        assert!(matches!(
            &e[..],
            [Effect::Reply {
                msg: Message::Welcome { .. },
                ..
            }]
        ));
    }

    fn only_reply(e: Vec<Effect>) -> Message {
        match &e[..] {
            [Effect::Reply { msg, .. }] => msg.clone(),
            other => panic!("expected one reply, got {other:?}"),
        }
    }

    fn only_job(e: Vec<Effect>) -> Job {
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
        assert!(!c.files.contains_key("gone.txt"));
        assert_eq!(c.files["new.txt"].owner, ADOPTED_OWNER);
        let batch = c.take_batch();
        assert!(batch.contains(&StoreOp::DelFile("gone.txt".into())));
        // An older copy never rolls the record back.
        c.on_close(2, 20);
        register(
            &mut c,
            3,
            "ss1",
            vec![st("keep.txt", 4, None), st("new.txt", 1, None)],
        );
        assert_eq!(c.files["keep.txt"].version.counter, 5);
        assert_eq!(c.servers["ss1"].files, 2);
    }

    #[test]
    fn registration_needs_the_key_and_a_free_name() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![]);
        c.on_connect(2, 0);
        let proof = ClusterKey::from_bytes(b"some other key 0123456").proof("ss2");
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
            reg("ss1", ClusterKey::from_bytes(KEY).proof("ss1")),
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
        let e = send(&mut c, 1, Message::Heartbeat { seq: 3 }, 250);
        assert_eq!(only_reply(e), Message::HeartbeatAck { seq: 3 });
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
}
