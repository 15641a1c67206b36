//! The simulated cluster: one name server (the real [`Core`]), two storage servers (the real
//! [`Store`] over a [`SimDisk`], the real [`Lease`], [`write_allowed`] and ticket checks),
//! clients, a network and faults, all driven by one seeded generator over simulated time.
//! See the module docs of [`crate::sim`] for what is real and what is simulated.

use super::disk::SimDisk;
use super::Rng;
use crate::auth::{ClusterKey, RegisterClaim, TicketChecker};
use crate::identity::UserKey;
use crate::nm::core::{
    judge_copy, Core, CoreConfig, Effect, Env, Job, JobKind, JobOutput, Lineage, Loaded, Seen,
    StoreOp,
};
use crate::nm::replication::{Outcome, Transfer, Want};
use crate::protocol::{
    err, AccessMode, CopyState, FileState, Frame, Message, Ticket, TicketOp, Version, WireError,
};
use crate::ss::nmlink::{write_allowed, Lease};
use crate::ss::store::{parse_blob_id, CopyIn, Fs, Made, Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod clients;

/// Heartbeat interval and timeout of the simulated cluster (lease: two thirds of the timeout).
const HB_MS: u64 = 100;
const TIMEOUT_MS: u64 = 300;
/// Period of a storage server's journal checkpoint (its background thread in `bin_ss`).
const CHECKPOINT_MS: u64 = 250;
/// The simulated wall clock at time 0.
const WALL_BASE_MS: u64 = 1_700_000_000_000;
const KEY: &[u8] = b"pairfs simulated cluster key 0123";
const USERS: [&str; 1] = ["alice"];
const FILES: usize = 5;

/// The kinds of fault injected, in the order the summary lists them.
pub const FAULT_KINDS: [&str; 6] = [
    "crash",
    "power loss",
    "partition",
    "message",
    "clock jump",
    "sync error",
];

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Everything flows from it.
    pub seed: u64,
    /// Simulated steps.
    pub steps: u64,
    /// Skip the directory fsync after a rename (the planted bug).
    pub plant_skip_dir_fsync: bool,
    /// Print every trace line to stderr as it happens.
    pub verbose: bool,
}

/// A violated invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The step it was seen at.
    pub step: u64,
    /// Which invariant, and how.
    pub invariant: String,
    /// The last trace lines.
    pub trace: Vec<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Steps run.
    pub steps: u64,
    /// Faults injected by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Client operations acknowledged (creates, commits, deletes, undos) and reads served.
    pub acked: u64,
    /// Reads served.
    pub reads: u64,
    /// SHA-256 of the whole trace, hex.
    pub digest: String,
    /// The first invariant violated, if any.
    pub failure: Option<Failure>,
}

/// A simulated process's monotonic clock: ms since its boot at a rate within 2%.
#[derive(Clone)]
struct Clock {
    boot: u64,
    rate_ppm: u64,
}

impl Clock {
    fn at(&self, now: u64) -> u64 {
        (now.saturating_sub(self.boot)) * self.rate_ppm / 1_000_000
    }
}

struct InFlight {
    at: u64,
    seq: u64,
    conn: usize,
    to_nm: bool,
    msg: Message,
}

struct Ss {
    name: &'static str,
    root: PathBuf,
    disk: Arc<SimDisk>,
    store: Option<Arc<Store>>,
    lease: Arc<Lease>,
    mono: Arc<AtomicU64>,
    clock: Clock,
    wall_skew: i64,
    checker: TicketChecker,
    up: bool,
    power_due: bool,
    restart_at: u64,
    conn: Option<usize>,
    port: u16,
    backup: bool,
    registered: bool,
    seq: u64,
    sent: VecDeque<(u64, u64)>,
    next_hb: u64,
    next_checkpoint: u64,
    reconnect_at: u64,
    register_sent: u64,
    heard: u64,
    /// CHANGED reports waiting for their ack: id -> (client, file, version, generation).
    waiting: BTreeMap<u64, (usize, String, Version, u64)>,
    next_id: u64,
}

#[derive(Clone)]
enum Op {
    Create(String),
    Write(String),
    Read(String, Option<Version>),
    Delete(String),
    Undo(String),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Create(file) => write!(f, "create {file}"),
            Op::Write(file) => write!(f, "write {file}"),
            Op::Read(file, Some(v)) => write!(f, "read {file} (acknowledged {v})"),
            Op::Read(file, None) => write!(f, "read {file}"),
            Op::Delete(file) => write!(f, "delete {file}"),
            Op::Undo(file) => write!(f, "undo {file}"),
        }
    }
}

struct Client {
    user: &'static str,
    conn: Option<usize>,
    /// Whether the session was welcomed.
    welcomed: bool,
    /// The operation in flight and when it was sent.
    op: Option<(Op, u64)>,
}

struct Nm {
    core: Option<Core>,
    clock: Clock,
    wall_skew: i64,
    restart_at: u64,
    /// What the name server's store holds: every committed batch applied.
    persisted: Loaded,
    /// Batches not committed yet, with the effects that wait for them.
    pending: Vec<(Vec<StoreOp>, Vec<Effect>)>,
}

/// The whole simulated cluster.
pub struct World {
    cfg: Config,
    rng: Rng,
    now: u64,
    step: u64,
    _dir: TempDir,
    nm: Nm,
    ss: Vec<Ss>,
    clients: Vec<Client>,
    net: Vec<InFlight>,
    net_seq: u64,
    last_at: BTreeMap<(usize, bool), u64>,
    next_conn: usize,
    /// Partitioned from everyone else: by server index.
    cut: Vec<bool>,
    repl: Vec<(u64, Transfer)>,
    /// Latest acknowledged version per file (dropped when a delete or undo is sent).
    acked: BTreeMap<String, Version>,
    /// Deletes and undos sent per file: a commit acknowledged after one of them may have been
    /// undone or deleted, and is not counted.
    generation: BTreeMap<String, u64>,
    /// Checksums served per (file, version).
    served: BTreeMap<(String, Version), u32>,
    trace: Vec<String>,
    hasher: Sha256,
    report: Report,
}

fn fault(r: &mut Report, kind: &'static str) {
    *r.faults.entry(kind).or_default() += 1;
}

impl World {
    /// A cluster for `cfg`, with its files under a fresh temp directory.
    pub fn new(cfg: Config) -> std::io::Result<World> {
        let dir = TempDir::new(cfg.seed)?;
        let mut rng = Rng::new(cfg.seed);
        let mut ss = Vec::new();
        for (i, name) in ["ss1", "ss1_backup"].into_iter().enumerate() {
            let root = dir.path().join(name);
            std::fs::create_dir(&root)?;
            let disk = Arc::new(SimDisk::new(&root));
            if cfg.plant_skip_dir_fsync {
                disk.plant_skip_dir_fsync();
            }
            let mono = Arc::new(AtomicU64::new(0));
            let m = mono.clone();
            let lease = Arc::new(Lease::with_clock(Arc::new(move || {
                m.load(Ordering::SeqCst)
            })));
            ss.push(Ss {
                name,
                root,
                disk,
                store: None,
                lease,
                mono,
                clock: Clock {
                    boot: 0,
                    rate_ppm: 980_000 + rng.below(40_000),
                },
                wall_skew: 0,
                checker: TicketChecker::new(ClusterKey::from_bytes(KEY), name),
                up: false,
                power_due: false,
                restart_at: 0,
                conn: None,
                port: 7000 + i as u16,
                backup: false,
                registered: false,
                seq: 0,
                sent: VecDeque::new(),
                next_hb: 0,
                next_checkpoint: 0,
                reconnect_at: 0,
                register_sent: 0,
                heard: 0,
                waiting: BTreeMap::new(),
                next_id: 0,
            });
        }
        let nm = Nm {
            core: None,
            clock: Clock {
                boot: 0,
                rate_ppm: 980_000 + rng.below(40_000),
            },
            wall_skew: 0,
            restart_at: 0,
            persisted: Loaded::default(),
            pending: Vec::new(),
        };
        let clients = (0..3)
            .map(|i| Client {
                user: USERS[i % USERS.len()],
                conn: None,
                welcomed: false,
                op: None,
            })
            .collect();
        let mut w = World {
            cfg,
            rng,
            now: 1_000,
            step: 0,
            _dir: dir,
            nm,
            ss,
            clients,
            net: Vec::new(),
            net_seq: 0,
            last_at: BTreeMap::new(),
            next_conn: 0,
            cut: vec![false; 2],
            repl: Vec::new(),
            acked: BTreeMap::new(),
            served: BTreeMap::new(),
            generation: BTreeMap::new(),
            trace: Vec::new(),
            hasher: Sha256::new(),
            report: Report::default(),
        };
        w.start_nm();
        for i in 0..w.ss.len() {
            w.start_ss(i, false);
        }
        Ok(w)
    }

    fn log(&mut self, line: String) {
        let line = format!("{} [{}] {line}", self.now, self.step);
        if self.cfg.verbose {
            eprintln!("{line}");
        }
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.trace.push(line);
        if self.trace.len() > 200 {
            self.trace.drain(..100);
        }
    }

    fn fail(&mut self, invariant: String) {
        if self.report.failure.is_some() {
            return;
        }
        self.log(format!("INVARIANT VIOLATED: {invariant}"));
        let n = self.trace.len();
        self.report.failure = Some(Failure {
            step: self.step,
            invariant,
            trace: self.trace[n.saturating_sub(30)..].to_vec(),
        });
    }

    fn conn(&mut self) -> usize {
        self.next_conn += 1;
        self.next_conn
    }

    fn nm_mono(&self) -> u64 {
        self.nm.clock.at(self.now)
    }

    fn wall(&self, skew: i64) -> u64 {
        (WALL_BASE_MS + self.now).saturating_add_signed(skew)
    }

    // ---- the name server ----

    fn start_nm(&mut self) {
        self.nm.clock.boot = self.now;
        let wall = Arc::new(AtomicU64::new(self.wall(self.nm.wall_skew)));
        let seed = self.rng.next_u64();
        let w2 = wall.clone();
        let env = Env::new(
            Box::new(move |_| w2.load(Ordering::SeqCst)),
            crate::nm::core::Entropy::from_seed(seed),
        );
        let cfg = CoreConfig {
            heartbeat_interval_ms: HB_MS,
            heartbeat_timeout_ms: TIMEOUT_MS,
            exec_enabled: false,
            replication: "async",
            max_repl_in_flight: 8,
            started_ms: 0,
        };
        let core = Core::with_env(
            cfg,
            ClusterKey::from_bytes(KEY),
            self.nm.persisted.clone(),
            env,
        );
        self.nm.core = Some(core);
        NM_WALL.with(|c| *c.borrow_mut() = Some(wall));
        let files: Vec<String> = self
            .nm
            .persisted
            .files
            .iter()
            .map(|(f, r)| format!("{f}@{}", r.version))
            .collect();
        self.log(format!("nm starts with {}", files.join(" ")));
    }

    fn sync_nm_wall(&self) {
        let w = self.wall(self.nm.wall_skew);
        NM_WALL.with(|c| {
            if let Some(a) = &*c.borrow() {
                a.store(w, Ordering::SeqCst)
            }
        });
    }

    /// Takes the core's effects and store batch; commits at once unless the disk is slow.
    /// A plain job may run before its batch is durable, as `bin_nm` dispatches it at once (a
    /// CREATE's call overlaps the commit of the record it writes ahead).
    fn nm_pump(&mut self) {
        loop {
            let Some(core) = self.nm.core.as_mut() else {
                return;
            };
            let effects = core.take_effects();
            let batch = core.take_batch();
            if effects.is_empty() && batch.is_empty() {
                break;
            }
            let early = self.rng.below(2) == 0;
            let (now, effects): (Vec<Effect>, Vec<Effect>) = effects
                .into_iter()
                .partition(|e| early && matches!(e, Effect::Job(_)));
            self.nm.pending.push((batch, effects));
            for e in now {
                self.effect(e);
            }
            if self.rng.below(4) != 0 {
                self.nm_commit();
            }
        }
    }

    /// Commits every pending batch, then releases the effects that waited for it.
    fn nm_commit(&mut self) {
        // Every batch taken is applied before any effect runs: an effect feeds the core,
        // whose new batches must land after these.
        let pending = std::mem::take(&mut self.nm.pending);
        let mut released = Vec::new();
        for (batch, effects) in pending {
            for op in batch {
                self.nm.persisted.apply(op);
            }
            released.extend(effects);
        }
        for e in released {
            self.effect(e);
        }
    }

    fn effect(&mut self, e: Effect) {
        match e {
            Effect::Reply { conn, msg, .. } => {
                if let Some(i) = self.ss.iter().position(|s| s.conn == Some(conn)) {
                    self.send(conn, false, msg);
                    let _ = i;
                } else if let Some(c) = self.clients.iter().position(|c| c.conn == Some(conn)) {
                    self.client_reply(c, msg);
                }
            }
            Effect::Close { conn } => {
                if let Some(i) = self.ss.iter().position(|s| s.conn == Some(conn)) {
                    self.link_broken(i, "closed by the name server");
                } else if let Some(c) = self.clients.iter().position(|c| c.conn == Some(conn)) {
                    self.clients[c].conn = None;
                    self.clients[c].op = None;
                    self.core_do(|c, now| c.on_close(conn, now));
                }
            }
            Effect::Job(Job { id, kind }) | Effect::DurableJob(Job { id, kind }) => match kind {
                JobKind::Replicate(t) => self.repl.push((id, t)),
                JobKind::SsCall { addr, msg } => {
                    let r = self.ss_call(&addr, msg);
                    let what = match &r {
                        Ok(_) => "ok".to_string(),
                        Err(e) => format!("{}: {}", e.code, e.msg),
                    };
                    self.log(format!("nm call {id} -> {what}"));
                    self.core_do(|c, now| c.on_job_result(id, r, now));
                }
                JobKind::Exec { .. } => {
                    let r = Err(err::invalid("no exec in the simulation"));
                    self.core_do(|c, now| c.on_job_result(id, r, now));
                }
            },
        }
    }

    fn core_do(&mut self, f: impl FnOnce(&mut Core, u64)) {
        let now = self.nm_mono();
        self.sync_nm_wall();
        if let Some(c) = self.nm.core.as_mut() {
            f(c, now);
        }
        self.nm_pump();
    }

    fn nm_frame(&mut self, conn: usize, msg: Message) {
        self.core_do(|c, now| c.on_frame(conn, Frame { msg, body: vec![] }, now));
    }

    fn nm_down(&mut self, power: bool) {
        self.log(format!("nm {}", if power { "power loss" } else { "crash" }));
        self.nm.core = None;
        self.nm.pending.clear();
        self.repl.clear();
        for i in 0..self.ss.len() {
            if self.ss[i].conn.is_some() {
                self.link_broken(i, "name server gone");
            }
        }
        for c in &mut self.clients {
            c.conn = None;
            c.op = None;
        }
        self.nm.restart_at = self.now + 50 + self.rng.below(400);
    }

    // ---- the network ----

    fn send(&mut self, conn: usize, to_nm: bool, msg: Message) {
        let i = self.ss.iter().position(|s| s.conn == Some(conn));
        if i.is_some_and(|i| self.cut[i]) {
            return;
        }
        let delay = 1 + self.rng.below(20);
        let last = self.last_at.get(&(conn, to_nm)).copied().unwrap_or(0);
        let at = (self.now + delay).max(last);
        self.last_at.insert((conn, to_nm), at);
        self.net_seq += 1;
        self.net.push(InFlight {
            at,
            seq: self.net_seq,
            conn,
            to_nm,
            msg,
        });
    }

    fn deliver_due(&mut self) {
        loop {
            let due = self
                .net
                .iter()
                .enumerate()
                .filter(|(_, m)| m.at <= self.now)
                .min_by_key(|(_, m)| (m.at, m.seq))
                .map(|(k, _)| k);
            let Some(k) = due else { return };
            let m = self.net.remove(k);
            let Some(i) = self.ss.iter().position(|s| s.conn == Some(m.conn)) else {
                continue;
            };
            if m.to_nm {
                self.nm_frame(m.conn, m.msg);
            } else {
                self.ss_frame(i, m.msg);
            }
        }
    }

    /// The link of server `i` broke: both ends see it closed.
    fn link_broken(&mut self, i: usize, why: &str) {
        let Some(conn) = self.ss[i].conn.take() else {
            return;
        };
        let name = self.ss[i].name;
        self.log(format!("{name} link breaks: {why}"));
        self.net.retain(|m| m.conn != conn);
        // The storage server drops its lease when its link fails (as `nmlink::link_loop`).
        self.ss[i].lease.end();
        self.ss[i].registered = false;
        for (_, (c, _, _, _)) in std::mem::take(&mut self.ss[i].waiting) {
            self.clients[c].op = None;
        }
        self.ss[i].reconnect_at = self.now + 100 + self.rng.below(200);
        self.core_do(|c, now| c.on_close(conn, now));
    }

    // ---- storage servers ----

    fn start_ss(&mut self, i: usize, power: bool) {
        let s = &mut self.ss[i];
        if power {
            if let Err(e) = s.disk.power_cut() {
                let msg = format!("power cut of {}: {e}", s.name);
                self.fail(msg);
                return;
            }
        }
        s.clock.boot = self.now;
        s.mono.store(0, Ordering::SeqCst);
        s.lease.end();
        let fs: Arc<dyn Fs> = s.disk.clone();
        let store = Store::open_on(fs, &s.root.join("data"), s.name).and_then(|st| {
            st.scan()?;
            Ok(st)
        });
        match store {
            Ok(st) => {
                s.store = Some(Arc::new(st));
                s.up = true;
                s.reconnect_at = self.now;
                s.checker = TicketChecker::new(ClusterKey::from_bytes(KEY), s.name);
                let name = s.name;
                self.log(format!("{name} starts"));
            }
            Err(e) => {
                let msg = format!("{} cannot open its store: {e}", s.name);
                self.fail(msg);
            }
        }
    }

    fn ss_down(&mut self, i: usize, power: bool) {
        let name = self.ss[i].name;
        self.log(format!(
            "{name} {}",
            if power { "power loss" } else { "crash" }
        ));
        self.link_broken(i, "process gone");
        let s = &mut self.ss[i];
        // A write-back fault passes while the server is down.
        s.disk.heal();
        s.up = false;
        s.store = None;
        s.lease.end();
        s.restart_at = self.now + 50 + self.rng.below(500);
        // The disk loses its unsynced state when the server comes back.
        s.power_due = power;
    }

    fn register(&mut self, i: usize) {
        let Some(store) = self.ss[i].store.clone() else {
            return;
        };
        let conn = self.conn();
        let name = self.ss[i].name;
        let files = match store.list() {
            Ok(f) => f,
            Err(e) => {
                self.fail(format!("{name} cannot list its store: {e}"));
                return;
            }
        };
        let s = &mut self.ss[i];
        s.conn = Some(conn);
        s.seq = 0;
        s.sent.clear();
        s.next_hb = self.now + HB_MS;
        s.heard = self.now;
        s.register_sent = s.lease.now_ms();
        let port = s.port;
        let proof = ClusterKey::from_bytes(KEY).proof(&RegisterClaim {
            name,
            host: "127.0.0.1",
            client_port: port,
            backup_of: None,
        });
        self.log(format!("{name} registers with {} files", files.len()));
        self.core_do(|c, now| c.on_connect(conn, now));
        self.send(
            conn,
            true,
            Message::Register {
                name: name.into(),
                host: "127.0.0.1".into(),
                client_port: port,
                backup_of: None,
                proof,
                file_count: files.len() as u64,
            },
        );
        if !files.is_empty() {
            self.send(conn, true, Message::FileBatch { files });
        }
        self.send(conn, true, Message::RegisterEnd {});
    }

    /// A frame from the name server to server `i` (as `nmlink::on_frame`).
    fn ss_frame(&mut self, i: usize, msg: Message) {
        let s = &mut self.ss[i];
        s.heard = self.now;
        let epoch_cell = match &s.store {
            Some(st) => st.epoch().clone(),
            None => return,
        };
        match msg {
            Message::Registered {
                epoch,
                backup,
                lease_ms,
                ..
            } => {
                epoch_cell.fetch_max(epoch, Ordering::SeqCst);
                s.backup = backup;
                s.registered = true;
                s.lease.grant(!backup, s.register_sent, lease_ms);
                let name = s.name;
                self.log(format!("{name} registered epoch {epoch} backup {backup}"));
            }
            Message::HeartbeatAck {
                seq,
                epoch,
                writer,
                lease_ms,
                ..
            } => {
                let sent_at = s.sent.iter().find(|(q, _)| *q == seq).map(|(_, t)| *t);
                if epoch > 0 {
                    epoch_cell.fetch_max(epoch, Ordering::SeqCst);
                }
                s.backup = !writer;
                match sent_at {
                    Some(t) => s.lease.grant(writer, t, lease_ms),
                    None if !writer => s.lease.grant(false, s.lease.now_ms(), 0),
                    None => {}
                }
            }
            Message::ChangedAck { id, copies } => {
                if let Some((c, file, v, gen)) = s.waiting.remove(&id) {
                    let now_gen = self.generation.get(&file).copied().unwrap_or(0);
                    if gen != now_gen {
                        self.clients[c].op = None;
                        self.log(format!("ack write {file} {v} (since deleted or undone)"));
                    } else if copies == Some(0) {
                        self.clients[c].op = None;
                        self.log(format!("commit {file} {v} refused by the name server"));
                    } else {
                        self.clients[c].op = None;
                        self.acked.insert(file.clone(), v);
                        self.report.acked += 1;
                        self.log(format!("ack write {file} {v}"));
                    }
                }
            }
            Message::Err { code, msg } => {
                self.link_broken(i, &format!("{code}: {msg}"));
            }
            other => {
                let name = s.name;
                self.log(format!("{name} ignores {}", other.op_name()));
            }
        }
    }

    fn ss_by_addr(&self, addr: &str) -> Option<usize> {
        self.ss
            .iter()
            .position(|s| s.up && addr.ends_with(&format!(":{}", s.port)))
    }

    fn ss_by_name(&self, name: &str) -> Option<usize> {
        self.ss.iter().position(|s| s.name == name)
    }

    fn ss_wall(&self, i: usize) -> u64 {
        self.wall(self.ss[i].wall_skew)
    }

    fn checked(
        &self,
        i: usize,
        t: &Ticket,
        file: &str,
        op: TicketOp,
    ) -> Result<Arc<Store>, WireError> {
        let s = &self.ss[i];
        let store = s.store.clone().ok_or_else(|| err::unavailable("down"))?;
        s.checker.check_at(t, file, op, self.ss_wall(i))?;
        Ok(store)
    }

    fn may_write(&self, i: usize, t: &Ticket, store: &Store) -> Result<(), WireError> {
        let s = &self.ss[i];
        write_allowed(
            s.name,
            s.backup,
            &s.lease,
            t.epoch,
            store.epoch().load(Ordering::SeqCst),
        )
    }

    /// A name-server call on the server at `addr` (as `ss::server::client` and `::nm`).
    fn ss_call(&mut self, addr: &str, msg: Message) -> Result<JobOutput, WireError> {
        let Some(i) = self.ss_by_addr(addr) else {
            return Err(err::unavailable("nobody listens there"));
        };
        if self.cut[i] {
            return Err(err::unavailable("unreachable"));
        }
        let wire = |e: StoreError| -> WireError { e.into() };
        match msg {
            Message::SsCreate {
                file,
                owner,
                epoch,
                counter,
                ticket,
            } => {
                let st = self.checked(i, &ticket, &file, TicketOp::Create)?;
                self.may_write(i, &ticket, &st)?;
                let first = Version::first(epoch, counter);
                let m = st.create_at(&file, &owner, first).map_err(wire)?;
                Ok(JobOutput::State(m.state(&file)))
            }
            Message::SsDelete { file, ticket } => {
                let st = self.checked(i, &ticket, &file, TicketOp::Delete)?;
                self.may_write(i, &ticket, &st)?;
                let lock = st.file_lock(&file);
                let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
                st.delete(&file).map_err(wire)?;
                Ok(JobOutput::Done)
            }
            Message::SsUndo {
                file,
                epoch,
                ticket,
            } => {
                let st = self.checked(i, &ticket, &file, TicketOp::Undo)?;
                self.may_write(i, &ticket, &st)?;
                let lock = st.file_lock(&file);
                let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
                let m = st.undo(&file, epoch).map_err(wire)?;
                Ok(JobOutput::State(m.state(&file)))
            }
            Message::SsQuarantine { file, keep, ticket } => {
                let st = self.checked(i, &ticket, &file, TicketOp::Quarantine)?;
                st.quarantine(&file, keep).map_err(wire)?;
                Ok(JobOutput::Done)
            }
            Message::SsMkdir { folders, .. } => {
                let st = self.ss[i]
                    .store
                    .clone()
                    .ok_or_else(|| err::unavailable("down"))?;
                st.make_folders(&folders).map_err(wire)?;
                Ok(JobOutput::Done)
            }
            other => Err(err::invalid(format!("{} not simulated", other.op_name()))),
        }
    }

    /// Runs replication job `k` (as `nm::replication::run`: PEEK, content, install).
    fn run_repl(&mut self, k: usize) {
        let (id, t) = self.repl.remove(k);
        let r = self.transfer(&t);
        let what = match &r {
            Ok(Outcome::Copied { state, .. }) => format!("copied {}", state.version),
            Ok(Outcome::Deleted) => "deleted".into(),
            Err(e) => format!("{}: {}", e.code, e.msg),
        };
        self.log(format!("repl {id} {} -> {} {what}", t.file, t.target.0));
        let r = r.map(JobOutput::Replicated);
        self.core_do(|c, now| c.on_job_result(id, r, now));
    }

    fn transfer(&mut self, t: &Transfer) -> Result<Outcome, WireError> {
        let ti = self
            .ss_by_name(&t.target.0)
            .ok_or_else(|| err::unavailable("unknown target"))?;
        if !self.ss[ti].up || self.cut[ti] || self.ss_by_addr(&t.target.1) != Some(ti) {
            return Err(err::unavailable("target unreachable"));
        }
        let target = self.ss[ti]
            .store
            .clone()
            .ok_or_else(|| err::unavailable("down"))?;
        let wire = |e: StoreError| -> WireError { e.into() };
        if t.quarantine {
            let keep = match t.want {
                Want::Content { version } => Some(version),
                Want::Delete => None,
            };
            target.quarantine(&t.file, keep).map_err(wire)?;
        }
        match t.want {
            Want::Delete => {
                let lock = target.file_lock(&t.file);
                let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
                match target.delete(&t.file) {
                    Ok(()) | Err(StoreError::NotFound(_)) => Ok(Outcome::Deleted),
                    Err(e) => Err(e.into()),
                }
            }
            Want::Content { .. } => {
                let (sname, saddr) = t.source.clone().ok_or_else(|| err::invalid("no source"))?;
                let si = self
                    .ss_by_name(&sname)
                    .ok_or_else(|| err::unavailable("unknown source"))?;
                if !self.ss[si].up || self.cut[si] || self.ss_by_addr(&saddr) != Some(si) {
                    return Err(err::unavailable("source unreachable"));
                }
                let source = self.ss[si]
                    .store
                    .clone()
                    .ok_or_else(|| err::unavailable("down"))?;
                let have: Vec<Version> = match target.held(&t.file).map_err(wire)? {
                    Some((_, hist)) => hist,
                    None => Vec::new(),
                };
                let mut tr = source.open_transfer(&t.file, &have, &[]).map_err(wire)?;
                let state = tr.meta.state(&t.file);
                let io = |e: std::io::Error| err::internal(e.to_string());
                let (content_tmp, mut cf) = target.temp_file(&t.file).map_err(wire)?;
                let mut body = Vec::new();
                tr.content.read_to_end(&mut body).map_err(io)?;
                // The target verifies what it received, as `ss/server/recv.rs` does.
                if body.len() as u64 != state.size || crc32c::crc32c(&body) != state.checksum {
                    return Err(err::internal(format!(
                        "{}: received {} bytes (crc {:08x}), the state says {} (crc {:08x})",
                        t.file,
                        body.len(),
                        crc32c::crc32c(&body),
                        state.size,
                        state.checksum
                    )));
                }
                cf.write_all(&body).map_err(io)?;
                let bytes = body.len() as u64;
                cf.flush().map_err(io)?;
                let mut entry_tmps = Vec::new();
                let mut files = vec![cf];
                for (v, f) in tr.entries.iter_mut() {
                    let (tmp, mut out) = target.temp_file(&t.file).map_err(wire)?;
                    std::io::copy(f, &mut out).map_err(io)?;
                    entry_tmps.push((*v, tmp));
                    files.push(out);
                }
                let entries: Vec<(Version, PathBuf)> = entry_tmps
                    .iter()
                    .map(|(v, tmp)| (*v, tmp.path().to_path_buf()))
                    .collect();
                let unsynced: Vec<&std::fs::File> = files.iter().collect();
                let copy = CopyIn {
                    state: &state,
                    undo: &tr.undo,
                    content: content_tmp.path(),
                    entries: &entries,
                    checkpoints: &[],
                    checkpoint_files: &[],
                    unsynced: &unsynced,
                    basis: None,
                };
                let r = target
                    .install_copies(&[copy], None)
                    .pop()
                    .unwrap_or_else(|| Err(StoreError::Incomplete(t.file.clone())));
                let (meta, installed) = r.map_err(wire)?;
                Ok(Outcome::Copied {
                    state: meta.state(&t.file),
                    skipped: !installed,
                    bytes,
                })
            }
        }
    }

    // ---- time, faults, invariants ----

    fn tick_processes(&mut self) {
        for i in 0..self.ss.len() {
            let m = self.ss[i].clock.at(self.now);
            self.ss[i].mono.store(m, Ordering::SeqCst);
        }
        if self.nm.core.is_none() && self.now >= self.nm.restart_at {
            self.start_nm();
        }
        for i in 0..self.ss.len() {
            if !self.ss[i].up && self.now >= self.ss[i].restart_at {
                let power = std::mem::take(&mut self.ss[i].power_due);
                self.start_ss(i, power);
            }
            let s = &self.ss[i];
            if s.up
                && s.conn.is_none()
                && !self.cut[i]
                && self.nm.core.is_some()
                && self.now >= s.reconnect_at
            {
                self.register(i);
            }
            let s = &self.ss[i];
            if s.up && s.conn.is_some() && self.now >= s.next_hb {
                let conn = s.conn.unwrap_or(0);
                let s = &mut self.ss[i];
                s.seq += 1;
                s.next_hb = self.now + HB_MS;
                let seq = s.seq;
                let at = s.lease.now_ms();
                s.sent.push_back((seq, at));
                if s.sent.len() > 64 {
                    s.sent.pop_front();
                }
                let writer = !s.lease.stepped_down();
                self.send(
                    conn,
                    true,
                    Message::Heartbeat {
                        seq,
                        writer,
                        disk: None,
                    },
                );
            }
            // bin_ss's journal thread ends the process once its journal failed (a removal's
            // or a reported change's sync failed, or a durable change could not be placed).
            if self.ss[i]
                .store
                .as_ref()
                .is_some_and(|st| st.journal_failed())
            {
                let msg = format!("{}: the journal failed; it exits", self.ss[i].name);
                self.log(msg);
                self.ss_down(i, false);
                continue;
            }
            let s = &mut self.ss[i];
            if let (true, Some(store)) = (self.now >= s.next_checkpoint, &s.store) {
                s.next_checkpoint = self.now + CHECKPOINT_MS;
                if let Err(e) = store.checkpoint_journal() {
                    // bin_ss's checkpoint thread ends the process (fail-stop): its page cache
                    // survives, and the restart redoes the journal.
                    let msg = format!("{}: journal checkpoint failed: {e}; it exits", s.name);
                    self.log(msg);
                    self.ss_down(i, false);
                    continue;
                }
            }
            // The link's read timeout: nothing heard for a while breaks it.
            let s = &self.ss[i];
            if s.conn.is_some() && self.now > s.heard + 3 * TIMEOUT_MS {
                self.link_broken(i, "nothing heard");
            }
        }
        self.core_do(|c, now| c.tick(now));
    }

    fn inject(&mut self) {
        let roll = self.rng.below(1000);
        let n = self.ss.len() as u64;
        match roll {
            0..=5 => {
                fault(&mut self.report, "crash");
                let who = self.rng.below(n + 1) as usize;
                if who == self.ss.len() {
                    if self.nm.core.is_some() {
                        self.nm_down(false);
                    }
                } else if self.ss[who].up {
                    self.ss_down(who, false);
                }
            }
            6..=10 => {
                fault(&mut self.report, "power loss");
                let who = self.rng.below(n + 1) as usize;
                if who == self.ss.len() {
                    if self.nm.core.is_some() {
                        self.nm_down(true);
                    }
                } else if self.ss[who].up {
                    self.ss_down(who, true);
                }
            }
            11..=14 => {
                let who = self.rng.below(n) as usize;
                if !self.cut[who] {
                    fault(&mut self.report, "partition");
                    self.cut[who] = true;
                    let conn = self.ss[who].conn;
                    self.net.retain(|m| Some(m.conn) != conn);
                    let name = self.ss[who].name;
                    self.log(format!("partition {name}"));
                }
            }
            15..=30 => {
                let who = self.rng.below(n) as usize;
                if self.cut[who] {
                    self.cut[who] = false;
                    let name = self.ss[who].name;
                    self.log(format!("heal {name}"));
                    self.link_broken(who, "partition healed");
                }
            }
            31..=36 => {
                // A message lost: on TCP the connection breaks.
                let live: Vec<usize> = (0..self.ss.len())
                    .filter(|i| self.ss[*i].conn.is_some())
                    .collect();
                if !live.is_empty() {
                    fault(&mut self.report, "message");
                    let who = live[self.rng.below(live.len() as u64) as usize];
                    self.link_broken(who, "message lost");
                }
            }
            41..=42 => {
                // A disk write-back error: the next sync calls fail (see `SimDisk`).
                let who = self.rng.below(n) as usize;
                if self.ss[who].up {
                    fault(&mut self.report, "sync error");
                    let k = 1 + self.rng.below(2) as u32;
                    self.ss[who].disk.fail_next_syncs(k);
                    let name = self.ss[who].name;
                    self.log(format!("{name}: the next {k} sync(s) fail"));
                }
            }
            37..=40 => {
                fault(&mut self.report, "clock jump");
                // A jump of up to an hour either way, or (when already off) back to true time.
                let who = self.rng.below(n + 1) as usize;
                let off = if who == self.ss.len() {
                    self.nm.wall_skew
                } else {
                    self.ss[who].wall_skew
                };
                let jump = if off != 0 {
                    -off
                } else {
                    (self.rng.below(7_200_000) as i64) - 3_600_000
                };
                if who == self.ss.len() {
                    self.nm.wall_skew += jump;
                    self.log(format!("nm wall clock jumps {jump} ms"));
                } else {
                    self.ss[who].wall_skew += jump;
                    let name = self.ss[who].name;
                    self.log(format!("{name} wall clock jumps {jump} ms"));
                }
            }
            _ => {}
        }
    }

    /// At most one live write lease at this instant.
    fn check_leases(&mut self) {
        let holders: Vec<&str> = self
            .ss
            .iter()
            .filter(|s| s.up && !s.backup && s.lease.live())
            .map(|s| s.name)
            .collect();
        if holders.len() > 1 {
            self.fail(format!("two write leases at once: {holders:?}"));
        }
    }

    /// One step: faults, client operations, replication, the network, time.
    pub fn step(&mut self) {
        self.step += 1;
        self.inject();
        if self.rng.below(3) == 0 {
            let c = self.rng.below(self.clients.len() as u64) as usize;
            self.client_start(c);
        }
        if !self.repl.is_empty() && self.rng.below(2) == 0 {
            let k = self.rng.below(self.repl.len() as u64) as usize;
            self.run_repl(k);
        }
        if self.rng.below(3) == 0 {
            self.nm_commit();
        }
        self.now += 1 + self.rng.below(15);
        self.deliver_due();
        self.tick_processes();
        self.check_leases();
    }

    /// Heals everything and runs until the queue is drained, then checks every copy.
    pub fn heal_and_judge(&mut self) {
        self.log("heal everything".into());
        for i in 0..self.ss.len() {
            if self.cut[i] {
                self.cut[i] = false;
                self.link_broken(i, "partition healed");
            }
            self.ss[i].wall_skew = 0;
        }
        self.nm.wall_skew = 0;
        for _ in 0..3000 {
            if self.report.failure.is_some() {
                return;
            }
            self.nm_commit();
            while !self.repl.is_empty() {
                self.run_repl(0);
                self.nm_commit();
            }
            self.now += 10;
            self.deliver_due();
            self.tick_processes();
            self.check_leases();
            let settled = self.nm.core.is_some()
                && self.ss.iter().all(|s| s.up && s.registered)
                && self.repl.is_empty()
                && self.net.is_empty()
                && self.nm.pending.is_empty()
                && self.nm.persisted.jobs.is_empty();
            if settled {
                break;
            }
        }
        self.judge();
    }

    /// FSCK's judgement of every copy against the committed index, and no acknowledged
    /// change lost.
    fn judge(&mut self) {
        let files = self.nm.persisted.files.clone();
        for (file, rec) in &files {
            for i in 0..self.ss.len() {
                let name = self.ss[i].name;
                let Some(st) = self.ss[i].store.clone() else {
                    continue;
                };
                let held = match st.verify(file) {
                    Ok(h) => h.map(|(h, _, _)| h),
                    Err(e) => {
                        self.fail(format!("fsck: {name} cannot read {file}: {e}"));
                        continue;
                    }
                };
                let lineage = Lineage {
                    epoch_base: rec.epoch_base,
                    adopts_newer: false,
                };
                let r = judge_copy(
                    name,
                    Seen::Held(held.as_ref()),
                    rec.version,
                    rec.version,
                    rec.checksum,
                    lineage,
                );
                self.log(format!(
                    "fsck {file} on {name}: {:?} {:?}",
                    r.state, r.version
                ));
                if r.state != CopyState::Ok {
                    self.fail(format!(
                        "fsck after healing: {file} on {name} is {:?} ({:?}, recorded {})",
                        r.state, r.detail, rec.version
                    ));
                }
            }
        }
        let acked = self.acked.clone();
        for (file, v) in acked {
            let Some(rec) = files.get(&file) else {
                self.fail(format!("acknowledged {file} {v} has no record"));
                continue;
            };
            let mut found = false;
            for s in &self.ss {
                let Some(st) = &s.store else { continue };
                if let Ok(Some((m, _))) = st.held(&file) {
                    let in_history = m
                        .undo
                        .iter()
                        .any(|id| parse_blob_id(id).is_some_and(|(hv, _)| hv == v));
                    if m.version == v || in_history {
                        found = true;
                    }
                }
            }
            if !found || rec.version < v {
                self.fail(format!(
                    "acknowledged {file} {v} lost (record {})",
                    rec.version
                ));
            }
        }
    }

    /// Runs the whole simulation and reports.
    pub fn run(mut self) -> Report {
        for _ in 0..self.cfg.steps {
            self.step();
            if self.report.failure.is_some() {
                break;
            }
        }
        if self.report.failure.is_none() {
            self.heal_and_judge();
        }
        self.report.steps = self.step;
        self.report.digest = hex::encode(&self.hasher.clone().finalize()[..16]);
        self.report
    }
}

/// A directory removed when the run ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(seed: u64) -> std::io::Result<TempDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("pairfs-sim-{}-{seed}-{n}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    /// The running name server's wall clock (the core reads it through its `Env`).
    static NM_WALL: std::cell::RefCell<Option<Arc<AtomicU64>>> = const { std::cell::RefCell::new(None) };
}
