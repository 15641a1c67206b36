//! The pair state machine under a fake clock: scripted failover, recovery and quarantine, and
//! a seeded simulation that kills and revives members at random while a client writes,
//! checking after every step that at most one member takes changes at a time (and per
//! epoch), and that every acknowledged change is on every copy a read may be sent to.
//! A failing seed is printed; `PAIRFS_SIM_SEED=<seed>` replays it.

use super::*;
use crate::protocol::Ticket;

/// Heartbeat interval and timeout of the simulated cluster (lease: 200 ms).
const HB_MS: u64 = 100;
const TIMEOUT_MS: u64 = 300;

/// The simulated wall clock at monotonic time 0 (any fixed value: runs must not depend on it).
const SIM_WALL_BASE_MS: u64 = 1_700_000_000_000;

/// The seeds a run without `PAIRFS_SIM_SEED` tries: fixed, so every run tries the same ones.
const SIM_SEED_BASE: u64 = 0x5eed_f0a1_1000_0001;

/// A core whose wall clock and randomness come from `seed` alone.
fn sim_core(replication: &'static str, seed: u64) -> Core {
    Core::with_env(
        CoreConfig {
            heartbeat_interval_ms: HB_MS,
            heartbeat_timeout_ms: TIMEOUT_MS,
            exec_enabled: false,
            replication,
            max_repl_in_flight: 8,
            started_ms: 0,
        },
        ClusterKey::from_bytes(KEY),
        Loaded::default(),
        Env::seeded(SIM_WALL_BASE_MS, seed),
    )
}

/// xorshift64*: small, deterministic, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One copy of a file on a simulated storage server: its version and the chain of versions
/// its content went through (so "contains change v" is exact, not a version comparison).
#[derive(Clone, Debug, PartialEq)]
struct Copy {
    version: Version,
    chain: Vec<Version>,
}

impl Copy {
    fn state(&self, file: &str) -> FileState {
        FileState {
            file: file.into(),
            version: self.version,
            checksum: (self.version.epoch * 1000 + self.version.counter) as u32,
            size: self.chain.len() as u64,
            words: 1,
            chars: 1,
            modified_ms: 1,
            owner: Some("alice".into()),
        }
    }
}

/// A simulated storage server, obeying the same rules as `ss::server` and `ss::nmlink`.
struct SimSs {
    name: &'static str,
    alive: bool,
    /// Connected and registered (false after a close until it registers again).
    linked: bool,
    /// Cut off from the name server: alive, but its heartbeats never arrive.
    partitioned: bool,
    conn: ConnId,
    port: u16,
    epoch: u64,
    writer: bool,
    lease_until: u64,
    next_hb: u64,
    seq: u64,
    sent: HashMap<u64, u64>,
    files: BTreeMap<String, Copy>,
    quarantined: Vec<(String, Copy)>,
}

impl SimSs {
    fn may_write(&self, now: u64, ticket_epoch: Option<u64>) -> bool {
        self.alive && self.writer && now < self.lease_until && ticket_epoch == Some(self.epoch)
    }
}

struct Sim {
    c: Core,
    now: u64,
    rng: Rng,
    ss: Vec<SimSs>,
    next_conn: ConnId,
    client: ConnId,
    /// Changes acknowledged to the client: file -> versions.
    acked: BTreeMap<String, Vec<Version>>,
    /// Writers seen per epoch (must be one).
    epoch_writer: BTreeMap<u64, &'static str>,
    /// Replication jobs handed out and not yet run.
    jobs: Vec<(JobId, Transfer)>,
    /// CHANGED reports waiting for their ack: id -> (file, version).
    waiting: HashMap<(ConnId, u64), (String, Version)>,
    next_id: u64,
    log: Vec<String>,
}

impl Sim {
    fn new(seed: u64, replication: &'static str) -> Sim {
        let mut s = Sim {
            c: sim_core(replication, seed),
            now: 1_000,
            rng: Rng(seed | 1),
            ss: Vec::new(),
            next_conn: 1,
            client: 0,
            acked: BTreeMap::new(),
            epoch_writer: BTreeMap::new(),
            jobs: Vec::new(),
            waiting: HashMap::new(),
            next_id: 1,
            log: Vec::new(),
        };
        for name in ["ss1", "ss1_backup"] {
            s.ss.push(SimSs {
                name,
                alive: true,
                linked: false,
                partitioned: false,
                conn: 0,
                port: 0,
                epoch: 1,
                writer: false,
                lease_until: 0,
                next_hb: 0,
                seq: 0,
                sent: HashMap::new(),
                files: BTreeMap::new(),
                quarantined: Vec::new(),
            });
        }
        s.client = s.conn();
        hello(&mut s.c, s.client, "alice");
        s.c.take_effects();
        for i in 0..2 {
            s.register(i);
        }
        s
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    fn frame(&mut self, conn: ConnId, msg: Message) {
        self.c.on_frame(conn, Frame { msg, body: vec![] }, self.now);
        self.pump();
    }

    fn register(&mut self, i: usize) {
        // A restarted server breaks the connections of transfers in flight to or from it.
        let name = self.ss[i].name;
        let broken: Vec<usize> = (0..self.jobs.len())
            .rev()
            .filter(|k| {
                let t = &self.jobs[*k].1;
                t.target.0 == name || t.source.as_ref().is_some_and(|s| s.0 == name)
            })
            .collect();
        for k in broken {
            let (id, _) = self.jobs.remove(k);
            self.c
                .on_job_result(id, Err(err::unavailable("connection reset")), self.now);
        }
        self.pump();
        let conn = self.conn();
        let port = 7000 + conn as u16;
        let name = self.ss[i].name;
        self.ss[i].conn = conn;
        self.ss[i].port = port;
        self.ss[i].linked = true;
        self.ss[i].partitioned = false;
        self.ss[i].seq = 0;
        self.ss[i].sent.clear();
        self.ss[i].next_hb = self.now;
        let files: Vec<FileState> = self.ss[i].files.iter().map(|(f, c)| c.state(f)).collect();
        self.c.on_connect(conn, self.now);
        let proof = ClusterKey::from_bytes(KEY).proof(&RegisterClaim {
            name,
            host: "127.0.0.1",
            client_port: port,
            backup_of: None,
        });
        let n = files.len() as u64;
        self.frame(
            conn,
            Message::Register {
                name: name.into(),
                host: "127.0.0.1".into(),
                client_port: port,
                backup_of: None,
                proof,
                file_count: n,
            },
        );
        if !files.is_empty() {
            self.frame(conn, Message::FileBatch { files });
        }
        // The lease REGISTERED grants counts from here.
        self.ss[i].sent.insert(0, self.now);
        self.frame(conn, Message::RegisterEnd {});
        self.log.push(format!("{} {name} registers", self.now));
    }

    fn by_conn(&self, conn: ConnId) -> Option<usize> {
        self.ss.iter().position(|s| s.linked && s.conn == conn)
    }

    fn by_name(&self, name: &str) -> Option<usize> {
        self.ss.iter().position(|s| s.name == name)
    }

    /// Applies every effect the core produced, until none are left.
    fn pump(&mut self) {
        loop {
            let effects = self.c.take_effects();
            if effects.is_empty() {
                return;
            }
            for e in effects {
                match e {
                    Effect::Reply { conn, msg, .. } => self.deliver(conn, msg),
                    Effect::Close { conn } => {
                        if let Some(i) = self.by_conn(conn) {
                            // The server's link broke: it drops its lease at once.
                            self.ss[i].linked = false;
                            self.ss[i].writer = false;
                            self.ss[i].lease_until = 0;
                            self.c.on_close(conn, self.now);
                        }
                    }
                    Effect::Job(Job {
                        id,
                        kind: JobKind::Replicate(t),
                    }) => self.jobs.push((id, t)),
                    // The simulated store is always durable: a held job runs at once.
                    Effect::Job(Job {
                        id,
                        kind: JobKind::SsCall { addr, msg },
                    })
                    | Effect::DurableJob(Job {
                        id,
                        kind: JobKind::SsCall { addr, msg },
                    }) => {
                        let r = self.ss_call(&addr, msg);
                        self.c.on_job_result(id, r, self.now);
                    }
                    Effect::Job(other) | Effect::DurableJob(other) => {
                        panic!("unexpected job {other:?}")
                    }
                }
            }
        }
    }

    fn deliver(&mut self, conn: ConnId, msg: Message) {
        let Some(i) = self.by_conn(conn) else {
            return;
        };
        if self.ss[i].partitioned {
            return;
        }
        let now = self.now;
        let s = &mut self.ss[i];
        match msg {
            Message::Registered {
                epoch,
                backup,
                lease_ms,
                ..
            } => {
                s.epoch = s.epoch.max(epoch);
                s.writer = !backup;
                s.lease_until = if backup { 0 } else { s.sent[&0] + lease_ms };
            }
            Message::HeartbeatAck {
                partner: _,
                seq,
                epoch,
                writer,
                lease_ms,
            } => {
                if epoch > 0 {
                    s.epoch = s.epoch.max(epoch);
                }
                s.writer = writer;
                if writer {
                    if let Some(t) = s.sent.get(&seq) {
                        s.lease_until = s.lease_until.max(t + lease_ms);
                    }
                } else {
                    s.lease_until = 0;
                }
            }
            Message::ChangedAck { id, copies } => {
                if let Some((file, v)) = self.waiting.remove(&(conn, id)) {
                    if copies != Some(0) {
                        self.acked.entry(file).or_default().push(v);
                    }
                }
            }
            Message::Err { .. } => {}
            other => panic!("{now}: unexpected {other:?} to a storage server"),
        }
    }

    /// The server listening at `addr` (a restarted server listens elsewhere: `None`).
    fn addr_to(&self, addr: &str) -> Option<usize> {
        self.ss
            .iter()
            .position(|s| addr.ends_with(&format!(":{}", s.port)))
    }

    /// A name-server call (SS_CREATE, SS_MKDIR and SS_MOVE in this simulation).
    fn ss_call(&mut self, addr: &str, msg: Message) -> Result<JobOutput, WireError> {
        let Some(i) = self.addr_to(addr) else {
            return Err(err::unavailable("nobody listens there"));
        };
        let now = self.now;
        let s = &mut self.ss[i];
        if !s.alive {
            return Err(err::unavailable("down"));
        }
        match msg {
            Message::SsCreate {
                file,
                counter,
                ticket,
                ..
            } => {
                if !s.may_write(now, ticket.epoch) {
                    return Err(err::unavailable("no lease"));
                }
                if s.files.contains_key(&file) {
                    return Err(err::conflict("exists"));
                }
                let v = Version {
                    epoch: s.epoch,
                    counter: counter.unwrap_or(1),
                };
                let name = s.name;
                let w = *self.epoch_writer.entry(s.epoch).or_insert(name);
                assert_eq!(w, name, "two writers in epoch {}", s.epoch);
                let copy = Copy {
                    version: v,
                    chain: vec![v],
                };
                let st = copy.state(&file);
                self.ss[i].files.insert(file, copy);
                Ok(JobOutput::State(st))
            }
            Message::SsMkdir { .. } => Ok(JobOutput::Done),
            Message::SsMove {
                file, to, ticket, ..
            } => {
                if !s.may_write(now, ticket.epoch) {
                    return Err(err::unavailable("no lease"));
                }
                if s.files.contains_key(&to) {
                    return Err(err::conflict("exists"));
                }
                let Some(copy) = s.files.remove(&file) else {
                    return Err(err::not_found("no such file"));
                };
                s.files.insert(to, copy);
                Ok(JobOutput::Done)
            }
            other => panic!("unexpected call {other:?}"),
        }
    }

    /// Runs one replication job the way `replication::run` does.
    fn run_job(&mut self, k: usize) {
        let (id, t) = self.jobs.remove(k);
        let ti = self.by_name(&t.target.0).expect("known target");
        if !self.ss[ti].alive || self.ss[ti].partitioned {
            return self
                .c
                .on_job_result(id, Err(err::unavailable("target down")), self.now);
        }
        if t.quarantine {
            let keep = match t.want {
                Want::Content { version } => Some(version),
                Want::Delete => None,
            };
            if let Some(c) = self.ss[ti].files.get(&t.file).cloned() {
                if Some(c.version) != keep {
                    self.ss[ti].files.remove(&t.file);
                    self.ss[ti].quarantined.push((t.file.clone(), c));
                }
            }
        }
        let r = match t.want {
            Want::Delete => {
                self.ss[ti].files.remove(&t.file);
                Ok(JobOutput::Replicated(Outcome::Deleted))
            }
            Want::Content { version } => {
                let Some((sname, _)) = t.source.clone() else {
                    panic!("content job without a source");
                };
                let si = self.by_name(&sname).expect("known source");
                let src = self.ss[si].files.get(&t.file).cloned();
                match src {
                    _ if !self.ss[si].alive || self.ss[si].partitioned => {
                        Err(err::unavailable("source down"))
                    }
                    None => Err(err::not_found("source lacks it")),
                    Some(c) => {
                        let have = self.ss[ti].files.get(&t.file).map(|c| c.version);
                        if !matches!(have, Some(h) if h >= c.version) {
                            self.ss[ti].files.insert(t.file.clone(), c.clone());
                        }
                        let now = self.ss[ti].files[&t.file].clone();
                        let _ = version;
                        Ok(JobOutput::Replicated(Outcome::Copied {
                            state: now.state(&t.file),
                            skipped: false,
                            bytes: 1,
                        }))
                    }
                }
            }
        };
        self.c.on_job_result(id, r, self.now);
    }

    /// A client writes `file`: LOCATE for writing, then the commit on the server the ticket
    /// names, then CHANGED from that server.
    fn write(&mut self, file: &str) {
        let client = self.client;
        self.c.on_frame(
            client,
            Frame {
                msg: Message::Locate {
                    file: file.into(),
                    mode: AccessMode::Write,
                    avoid: None,
                },
                body: vec![],
            },
            self.now,
        );
        let located = self.c.take_effects().into_iter().find_map(|e| match e {
            Effect::Reply {
                msg: Message::Located { addr, ticket, .. },
                conn,
                ..
            } if conn == client => Some((addr, ticket)),
            _ => None,
        });
        self.pump();
        let Some((addr, ticket)) = located else {
            return;
        };
        self.commit_on(&addr, file, &ticket);
    }

    fn commit_on(&mut self, addr: &str, file: &str, ticket: &Ticket) {
        let Some(i) = self.addr_to(addr) else {
            return;
        };
        let now = self.now;
        let s = &mut self.ss[i];
        if !s.may_write(now, ticket.epoch) {
            return;
        }
        let Some(cur) = s.files.get(file).cloned() else {
            return;
        };
        if ticket.min_version.is_some_and(|m| m > cur.version) {
            return;
        }
        let v = cur.version.next(s.epoch);
        let mut chain = cur.chain.clone();
        chain.push(v);
        let name = s.name;
        let w = *self.epoch_writer.entry(s.epoch).or_insert(name);
        assert_eq!(w, name, "two writers in epoch {}: {w} and {name}", s.epoch);
        let copy = Copy { version: v, chain };
        let st = copy.state(file);
        s.files.insert(file.to_string(), copy);
        self.log.push(format!("{now} {name} commits {file} {v}"));
        if !s.linked || s.partitioned {
            return;
        }
        let conn = s.conn;
        self.next_id += 1;
        let id = self.next_id;
        self.waiting.insert((conn, id), (file.to_string(), v));
        self.frame(
            conn,
            Message::Changed {
                staged: None,
                pending: false,
                id,
                state: st,
            },
        );
    }

    fn create(&mut self, file: &str) {
        let client = self.client;
        self.frame(client, Message::Create { file: file.into() });
    }

    /// Heartbeats due, then the core's timers.
    fn heartbeats(&mut self) {
        for i in 0..self.ss.len() {
            let s = &self.ss[i];
            if !s.alive || !s.linked || self.now < s.next_hb {
                continue;
            }
            let (conn, partitioned) = (s.conn, s.partitioned);
            let s = &mut self.ss[i];
            s.seq += 1;
            s.next_hb = self.now + HB_MS;
            let seq = s.seq;
            s.sent.insert(seq, self.now);
            if !partitioned {
                // Like `Lease::stepped_down`: false once a `writer: false` ack was applied.
                let writer = self.ss[i].writer;
                self.frame(
                    conn,
                    Message::Heartbeat {
                        seq,
                        writer,
                        disk: None,
                    },
                );
            }
        }
        self.c.tick(self.now);
        self.pump();
    }

    /// Every invariant that must hold at any instant.
    fn check(&self) {
        let writers: Vec<&str> = self
            .ss
            .iter()
            .filter(|s| s.alive && s.writer && self.now < s.lease_until)
            .map(|s| s.name)
            .collect();
        assert!(
            writers.len() <= 1,
            "two members hold write leases: {writers:?}"
        );
        for (file, versions) in &self.acked {
            let Some(rec) = self.c.ns.files.get(file) else {
                panic!("acknowledged {file} has no record");
            };
            let Some(&last) = versions.iter().max() else {
                continue;
            };
            assert!(
                rec.version >= last,
                "{file}: record {} behind ack {last}",
                rec.version
            );
            // Wherever a read may go, every acknowledged change is there.
            if let Ok((name, _)) = self.c.reader_for(rec, file, None) {
                let i = self.by_name(&name).expect("known server");
                let copy = self.ss[i].files.get(file);
                let Some(copy) = copy else {
                    panic!("{file}: read sent to {name}, which lacks it");
                };
                // Newer is a commit whose CHANGED is still on its way; older would be stale.
                assert!(
                    copy.version >= rec.version,
                    "{file}: stale read from {name}"
                );
                for v in versions {
                    assert!(
                        copy.chain.contains(v),
                        "{file}: acknowledged {v} lost on {name}"
                    );
                }
            }
        }
    }

    /// One random event, then time moves on.
    fn step(&mut self, files: &[String]) {
        match self.rng.below(20) {
            0 => {
                // SIGKILL: the connection closes at once.
                let i = self.rng.below(2) as usize;
                if self.ss[i].alive {
                    self.log
                        .push(format!("{} kill {}", self.now, self.ss[i].name));
                    self.ss[i].alive = false;
                    self.ss[i].writer = false;
                    self.ss[i].lease_until = 0;
                    if self.ss[i].linked {
                        self.ss[i].linked = false;
                        let conn = self.ss[i].conn;
                        self.c.on_close(conn, self.now);
                        self.pump();
                    }
                }
            }
            1 => {
                // A partition: heartbeats stop arriving; the server keeps its lease until it
                // runs out, and clients holding tickets may still reach it.
                let i = self.rng.below(2) as usize;
                if self.ss[i].alive && self.ss[i].linked && !self.ss[i].partitioned {
                    self.log
                        .push(format!("{} partition {}", self.now, self.ss[i].name));
                    self.ss[i].partitioned = true;
                }
            }
            2 | 3 => {
                for i in 0..2 {
                    let s = &self.ss[i];
                    if !s.alive || (s.partitioned && !s.linked) {
                        self.log.push(format!("{} revive {}", self.now, s.name));
                        self.ss[i].alive = true;
                        self.register(i);
                    }
                }
            }
            4..=11 => {
                let f = files[self.rng.below(files.len() as u64) as usize].clone();
                self.write(&f);
            }
            _ => {
                if !self.jobs.is_empty() {
                    let k = self.rng.below(self.jobs.len() as u64) as usize;
                    self.run_job(k);
                }
            }
        }
        self.now += 10 + self.rng.below(50);
        self.heartbeats();
        self.check();
    }

    /// Everything revived and healed; runs until replication is done and the pair is whole.
    fn settle(&mut self) {
        for i in 0..2 {
            if !self.ss[i].alive || self.ss[i].partitioned || !self.ss[i].linked {
                self.ss[i].alive = true;
                if self.ss[i].linked {
                    let conn = self.ss[i].conn;
                    self.ss[i].linked = false;
                    self.c.on_close(conn, self.now);
                    self.pump();
                }
                self.register(i);
            }
        }
        for _ in 0..10_000 {
            while !self.jobs.is_empty() {
                self.run_job(0);
            }
            self.now += 50;
            self.heartbeats();
            self.check();
            let st = &self.c.pairs.get("ss1").unwrap();
            if self.jobs.is_empty()
                && self.c.q.table().is_empty()
                && st.phase == Phase::Serving
                && st.writer == Member::Primary
            {
                return;
            }
        }
        panic!(
            "the pair never settled: {:?}\njobs {:?}\nrecords {:?}\ncopies {:?}",
            self.c.pairs.get("ss1").unwrap(),
            self.c.q.table().values().collect::<Vec<_>>(),
            self.c.ns.files,
            self.ss
                .iter()
                .map(|s| (s.name, &s.files))
                .collect::<Vec<_>>()
        );
    }
}

fn run_sim(seed: u64, replication: &'static str, steps: usize) {
    let mut sim = Sim::new(seed, replication);
    let files: Vec<String> = (0..4).map(|i| format!("f{i}.txt")).collect();
    for f in &files {
        sim.create(f);
    }
    while !sim.jobs.is_empty() {
        sim.run_job(0);
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..steps {
            sim.step(&files);
        }
        sim.settle();
        // Whole again: both copies hold every acknowledged change, at the record's version.
        for (file, versions) in &sim.acked {
            let rec = &sim.c.ns.files[file];
            for s in &sim.ss {
                let copy = &s.files[file];
                assert_eq!(copy.version, rec.version, "{file} on {}", s.name);
                for v in versions {
                    assert!(copy.chain.contains(v), "{file}: {v} lost on {}", s.name);
                }
            }
        }
    }));
    if let Err(e) = outcome {
        let tail: Vec<&String> = sim.log.iter().rev().take(30).collect();
        eprintln!(
            "simulation failed: seed {seed} ({replication}); replay with PAIRFS_SIM_SEED={seed}"
        );
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
        std::panic::resume_unwind(e);
    }
}

#[test]
fn seeded_simulation_keeps_one_writer_and_every_acknowledged_change() {
    let seeds: Vec<u64> = match std::env::var("PAIRFS_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("PAIRFS_SIM_SEED is a number")],
        Err(_) => (0..40)
            .map(|i| SIM_SEED_BASE.wrapping_add(i * 7919))
            .collect(),
    };
    for seed in seeds {
        println!("simulation seed {seed}");
        run_sim(seed, "async", 400);
        run_sim(seed, "sync", 400);
    }
}

#[test]
fn a_fixed_seed_replays_the_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(seed, "async");
        let files = vec!["a.txt".to_string()];
        sim.create("a.txt");
        for _ in 0..200 {
            sim.step(&files);
        }
        (sim.log.clone(), sim.c.pairs.get("ss1").unwrap().epoch)
    };
    assert_eq!(run(42), run(42));
}

impl Sim {
    /// SIGKILL of member `i`: its connection closes at once.
    fn kill(&mut self, i: usize) {
        self.ss[i].alive = false;
        self.ss[i].writer = false;
        self.ss[i].lease_until = 0;
        self.ss[i].linked = false;
        let conn = self.ss[i].conn;
        self.c.on_close(conn, self.now);
        self.pump();
    }

    /// Lets `ms` pass in heartbeat-sized steps.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 10).min(end);
            self.heartbeats();
            self.check();
        }
    }

    fn run_jobs(&mut self) {
        while !self.jobs.is_empty() {
            self.run_job(0);
        }
    }

    /// LOCATE as the client: the server named, or the error code.
    fn locate(&mut self, file: &str, mode: AccessMode) -> Result<(String, Ticket), ErrorCode> {
        let client = self.client;
        self.c.on_frame(
            client,
            Frame {
                msg: Message::Locate {
                    file: file.into(),
                    mode,
                    avoid: None,
                },
                body: vec![],
            },
            self.now,
        );
        let r = self.c.take_effects().into_iter().find_map(|e| match e {
            Effect::Reply { conn, msg, .. } if conn == client => Some(msg),
            _ => None,
        });
        self.pump();
        match r {
            Some(Message::Located { ss, ticket, .. }) => Ok((ss, ticket)),
            Some(Message::Err { code, .. }) => Err(code),
            other => panic!("LOCATE answered {other:?}"),
        }
    }

    fn pair(&self) -> PairRecord {
        self.c.pairs.get("ss1").unwrap().clone()
    }
}

/// A pair holding `a.txt` on both members, the primary writing in epoch 1.
fn settled_pair() -> Sim {
    let mut sim = Sim::new(7, "async");
    sim.create("a.txt");
    sim.run_jobs();
    sim.advance(200);
    assert_eq!(sim.pair().writer, Member::Primary);
    assert!(sim.c.ns.files["a.txt"].holds(Member::Backup));
    sim
}

#[test]
fn a_wall_clock_jump_moves_no_lease() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut sim = settled_pair();
    let jump = std::sync::Arc::new(AtomicU64::new(0));
    let j = jump.clone();
    sim.c.env = std::sync::Arc::new(Env::new(
        Box::new(move |mono| SIM_WALL_BASE_MS + mono + j.load(Ordering::Relaxed)),
        Entropy::from_seed(7),
    ));
    // The writer's heartbeats stop arriving and the wall clock jumps an hour ahead, while
    // less than a lease of monotonic time passes: the writer keeps its lease.
    sim.ss[0].partitioned = true;
    jump.store(3_600_000, Ordering::Relaxed);
    sim.advance(150);
    assert!(sim.c.reg.is_up("ss1"));
    let st = sim.pair();
    assert_eq!(
        (st.phase, st.epoch, st.writer),
        (Phase::Serving, 1, Member::Primary)
    );
    let (ss, ticket) = sim.locate("a.txt", AccessMode::Write).unwrap();
    assert_eq!(ss, "ss1");
    // Tickets expire on the storage servers' wall clocks, so they follow the jump.
    assert_eq!(
        ticket.exp_ms,
        SIM_WALL_BASE_MS + sim.now + 3_600_000 + crate::auth::TICKET_TTL_MS
    );
    // Only the monotonic time moves the failover: a timeout and a lease later, the backup
    // writes in a new epoch.
    sim.advance(TIMEOUT_MS + 200);
    let st = sim.pair();
    assert_eq!(
        (st.phase, st.epoch, st.writer),
        (Phase::Serving, 2, Member::Backup)
    );
}

#[test]
fn promotion_waits_for_the_old_writer_lease_then_raises_the_epoch() {
    let mut sim = settled_pair();
    let killed = sim.now;
    sim.kill(0);
    let st = sim.pair();
    assert_eq!(st.phase, Phase::FailingOver);
    // The last lease ss1 was granted ends at most one lease after its last heartbeat.
    assert!(
        st.switch_at_ms > killed && st.switch_at_ms <= killed + 200,
        "{st:?}"
    );
    // Reads go on from the backup at once; changes wait for the switch.
    assert_eq!(
        sim.locate("a.txt", AccessMode::Read).unwrap().0,
        "ss1_backup"
    );
    assert_eq!(
        sim.locate("a.txt", AccessMode::Write).unwrap_err(),
        ErrorCode::Unavailable
    );
    sim.advance(st.switch_at_ms - sim.now - 1);
    assert_eq!(sim.pair().phase, Phase::FailingOver);
    sim.advance(20);
    let st = sim.pair();
    assert_eq!(
        (st.phase, st.epoch, st.writer),
        (Phase::Serving, 2, Member::Backup)
    );
    let (ss, ticket) = sim.locate("a.txt", AccessMode::Write).unwrap();
    assert_eq!((ss.as_str(), ticket.epoch), ("ss1_backup", Some(2)));
    sim.write("a.txt");
    let v = sim.acked["a.txt"].last().copied().unwrap();
    assert_eq!(v.epoch, 2, "the promoted backup stamps the new epoch");
    // The change is owed to the primary, which returns, catches up and resumes.
    assert!(sim.c.q.table().contains_key(&job_key("ss1", "a.txt")));
    sim.ss[0].alive = true;
    sim.register(0);
    sim.run_jobs();
    sim.advance(300);
    let st = sim.pair();
    assert_eq!(
        (st.phase, st.epoch, st.writer),
        (Phase::Serving, 3, Member::Primary)
    );
    assert_eq!(sim.ss[0].files["a.txt"].version, v);
}

#[test]
fn a_file_the_promoted_backup_lacks_is_unavailable_never_stale() {
    let mut sim = settled_pair();
    sim.write("a.txt");
    // The copy to the backup never ran; then the primary dies.
    assert!(!sim.c.ns.files["a.txt"].holds(Member::Backup));
    sim.jobs.clear();
    sim.kill(0);
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Backup);
    assert_eq!(
        sim.locate("a.txt", AccessMode::Read).unwrap_err(),
        ErrorCode::Unavailable
    );
    assert_eq!(
        sim.locate("a.txt", AccessMode::Write).unwrap_err(),
        ErrorCode::Unavailable
    );
    // New files still go to the pair's live member.
    sim.create("new.txt");
    assert!(sim.ss[1].files.contains_key("new.txt"));
    // The primary returns with the only current copy: readable again at once.
    sim.ss[0].alive = true;
    sim.register(0);
    assert_eq!(sim.locate("a.txt", AccessMode::Read).unwrap().0, "ss1");
}

#[test]
fn a_change_from_a_deposed_writer_is_refused_and_its_copy_quarantined() {
    let mut sim = settled_pair();
    sim.kill(0);
    sim.advance(400);
    sim.write("a.txt");
    sim.ss[0].alive = true;
    sim.register(0);
    sim.run_jobs();
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Primary);
    // The old writer reports a commit it made in its epoch: not acknowledged.
    let rec = sim.c.ns.files["a.txt"].clone();
    let stale = Copy {
        version: Version {
            epoch: 2,
            counter: rec.version.counter + 1,
        },
        chain: vec![],
    };
    let conn = sim.ss[1].conn;
    sim.c.on_frame(
        conn,
        Frame {
            msg: Message::Changed {
                staged: None,
                pending: false,
                id: 99,
                state: stale.state("a.txt"),
            },
            body: vec![],
        },
        sim.now,
    );
    let e = sim.c.take_effects();
    assert!(e.iter().any(|e| matches!(
        e,
        Effect::Reply {
            msg: Message::ChangedAck {
                id: 99,
                copies: Some(0)
            },
            ..
        }
    )));
    let job = &sim.c.q.table()[&job_key("ss1_backup", "a.txt")];
    assert!(job.quarantine, "{job:?}");
    let now = &sim.c.ns.files["a.txt"];
    assert_eq!(
        (now.version, now.checksum),
        (rec.version, rec.checksum),
        "the record keeps its version"
    );
    // Its copy is not the record's any more: no read goes there until it is repaired.
    assert!(!now.holds(Member::Backup), "{now:?}");
}

#[test]
fn a_change_answered_after_its_epoch_ended_is_not_credited_to_the_new_writer() {
    let mut sim = settled_pair();
    let rec = sim.c.ns.files["a.txt"].clone();
    // UNDO is sent to the primary in epoch 1; its answer is held back.
    let client = sim.client;
    sim.c.on_frame(
        client,
        Frame {
            msg: Message::Undo {
                file: "a.txt".into(),
            },
            body: vec![],
        },
        sim.now,
    );
    let (id, ticket_epoch) = sim
        .c
        .take_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::Job(Job {
                id,
                kind:
                    JobKind::SsCall {
                        msg: Message::SsUndo { ticket, .. },
                        ..
                    },
            }) => Some((id, ticket.epoch)),
            _ => None,
        })
        .expect("UNDO became a storage-server call");
    assert_eq!(ticket_epoch, Some(1));
    // The primary is lost and the backup promoted before the answer arrives.
    sim.kill(0);
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Backup);
    assert_eq!(sim.pair().epoch, 2);
    let made = Copy {
        version: Version {
            epoch: 1,
            counter: rec.version.counter + 1,
        },
        chain: vec![],
    };
    sim.c
        .on_job_result(id, Ok(JobOutput::State(made.state("a.txt"))), sim.now);
    let answer = sim.c.take_effects().into_iter().find_map(|e| match e {
        Effect::Reply { conn, msg, .. } if conn == client => Some(msg),
        _ => None,
    });
    let Some(Message::Err { code, msg }) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(code, ErrorCode::Unavailable);
    assert_eq!(
        msg,
        "pair ss1 changed writers while the change to a.txt ran; it was not applied: try again"
    );
    let now = &sim.c.ns.files["a.txt"];
    assert_eq!(now.version, rec.version, "the record keeps its version");
    assert!(
        now.holds(Member::Backup),
        "the promoted backup stays current"
    );
    assert!(
        !now.holds(Member::Primary),
        "the primary is not current until repaired"
    );
    let job = &sim.c.q.table()[&job_key("ss1", "a.txt")];
    assert!(job.quarantine, "{job:?}");
}

#[test]
fn a_file_created_again_before_its_removal_reached_the_backup_replaces_the_old_copy() {
    let mut sim = settled_pair();
    let client = sim.client;
    // Two changes, so the backup's copy of the old file is ahead of a new file's first version.
    sim.write("a.txt");
    sim.run_jobs();
    // The primary deletes it (the simulated servers know no SS_DELETE: answered here).
    sim.c.on_frame(
        client,
        Frame {
            msg: Message::Delete {
                file: "a.txt".into(),
            },
            body: vec![],
        },
        sim.now,
    );
    let id = sim
        .c
        .take_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::DurableJob(Job {
                id,
                kind:
                    JobKind::SsCall {
                        msg: Message::SsDelete { .. },
                        ..
                    },
            }) => Some(id),
            _ => None,
        })
        .expect("DELETE became a storage-server call");
    sim.ss[0].files.remove("a.txt");
    sim.acked.remove("a.txt");
    sim.c.on_job_result(id, Ok(JobOutput::Done), sim.now);
    sim.pump();
    let key = job_key("ss1_backup", "a.txt");
    assert_eq!(sim.c.q.table()[&key].want, Want::Delete);
    sim.create("a.txt");
    let job = &sim.c.q.table()[&key];
    assert!(
        matches!(job.want, Want::Content { .. }) && job.quarantine,
        "the old copy must be set aside for the new file: {job:?}"
    );
    sim.run_jobs();
    sim.advance(200);
    sim.run_jobs();
    let rec = &sim.c.ns.files["a.txt"];
    assert!(
        rec.holds(Member::Backup),
        "{rec:?} {:?} {:?} {:?}",
        sim.c.q.table(),
        sim.ss[1].files,
        sim.log
    );
}

impl Sim {
    /// DELETE of `file` by the client, answered by the writer at once (the simulated servers
    /// know no SS_DELETE, so it is applied here).
    fn delete(&mut self, file: &str) {
        let client = self.client;
        self.c.on_frame(
            client,
            Frame {
                msg: Message::Delete { file: file.into() },
                body: vec![],
            },
            self.now,
        );
        let (id, addr) = self
            .c
            .take_effects()
            .into_iter()
            .find_map(|e| match e {
                Effect::DurableJob(Job {
                    id,
                    kind:
                        JobKind::SsCall {
                            addr,
                            msg: Message::SsDelete { .. },
                        },
                }) => Some((id, addr)),
                _ => None,
            })
            .expect("DELETE became a storage-server call");
        let i = self.addr_to(&addr).expect("a live writer");
        self.ss[i].files.remove(file);
        self.acked.remove(file);
        self.c.on_job_result(id, Ok(JobOutput::Done), self.now);
        self.pump();
    }
}

impl Sim {
    /// Waits for the removal of `file` owed to the backup to be dispatched and fails it as a
    /// lost answer would (the removal itself is applied).
    fn lose_removal_answer(&mut self, file: &str) {
        for _ in 0..1000 {
            if let Some(k) = self.jobs.iter().position(|(_, t)| t.file == file) {
                let (id, t) = self.jobs.remove(k);
                assert_eq!(t.want, Want::Delete);
                self.ss[1].files.remove(file);
                self.c
                    .on_job_result(id, Err(err::unavailable("connection reset")), self.now);
                self.pump();
                return;
            }
            self.advance(10);
        }
        panic!("the removal of {file} was never dispatched");
    }
}

#[test]
fn an_old_removal_owed_to_a_promoted_backup_never_removes_a_file_created_there() {
    let mut sim = settled_pair();
    sim.delete("a.txt");
    let key = job_key("ss1_backup", "a.txt");
    assert_eq!(sim.c.q.table()[&key].want, Want::Delete);
    // The removal reaches the backup three times but its answers are lost: the row waits in
    // backoff (800 ms now).
    for _ in 0..3 {
        sim.lose_removal_answer("a.txt");
    }
    assert_eq!(sim.c.q.table()[&key].attempts, 3);
    // The primary dies; the backup is promoted and a new a.txt is created on it.
    sim.kill(0);
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Backup);
    assert!(sim.jobs.is_empty(), "{:?}", sim.jobs);
    // The CREATE waits for the old removal, which runs at once; the retry makes the file.
    assert!(
        matches!(
            sim.create_answer("a.txt"),
            Some(Message::Err {
                code: ErrorCode::Locked,
                ..
            })
        ),
        "{:?}",
        sim.c.q.table()
    );
    sim.run_jobs();
    sim.create("a.txt");
    assert!(sim.ss[1].files.contains_key("a.txt"));
    // Long past the old row's backoff, the new file is still there.
    for _ in 0..10 {
        sim.advance(500);
        sim.run_jobs();
    }
    assert!(
        sim.ss[1].files.contains_key("a.txt"),
        "the new a.txt was removed by the old row"
    );
    assert!(!sim.c.q.table().contains_key(&key), "{:?}", sim.c.q.table());
}

#[test]
fn a_create_waits_for_an_old_removal_running_on_its_writer() {
    let mut sim = settled_pair();
    sim.delete("a.txt");
    sim.lose_removal_answer("a.txt");
    sim.kill(0);
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Backup);
    // The retried removal is on its way to the promoted backup when the CREATE comes.
    let key = job_key("ss1_backup", "a.txt");
    assert!(
        sim.jobs.iter().any(|(_, t)| t.file == "a.txt"),
        "{:?}",
        sim.c.q.table()
    );
    let client = sim.client;
    sim.c.on_frame(
        client,
        Frame {
            msg: Message::Create {
                file: "a.txt".into(),
            },
            body: vec![],
        },
        sim.now,
    );
    let answer = sim.c.take_effects().into_iter().find_map(|e| match e {
        Effect::Reply { conn, msg, .. } if conn == client => Some(msg),
        _ => None,
    });
    assert!(
        matches!(
            answer,
            Some(Message::Err {
                code: ErrorCode::Locked,
                ..
            })
        ),
        "{answer:?}"
    );
    sim.run_jobs();
    assert!(!sim.c.q.table().contains_key(&key));
    sim.create("a.txt");
    sim.advance(2000);
    sim.run_jobs();
    assert!(sim.ss[1].files.contains_key("a.txt"));
}

#[test]
fn a_promoted_backup_returning_with_a_removed_file_does_not_bring_it_back() {
    let mut sim = settled_pair();
    sim.delete("a.txt");
    // The removal never reaches the backup.
    let (id, _) = sim.jobs.remove(0);
    sim.c
        .on_job_result(id, Err(err::unavailable("connection refused")), sim.now);
    sim.kill(0);
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Backup);
    // The promoted backup restarts, still holding the removed file, and registers as writer.
    sim.kill(1);
    sim.ss[1].alive = true;
    sim.register(1);
    assert!(
        !sim.c.ns.files.contains_key("a.txt"),
        "a removed file was adopted again"
    );
    sim.advance(2000);
    sim.run_jobs();
    assert!(!sim.ss[1].files.contains_key("a.txt"));
}

impl Sim {
    /// CREATE of `file` by the client: the client's answer.
    fn create_answer(&mut self, file: &str) -> Option<Message> {
        self.ask(Message::Create { file: file.into() })
    }

    /// A serialised request from the client: its answer.
    fn ask(&mut self, msg: Message) -> Option<Message> {
        let client = self.client;
        self.c
            .on_frame(client, Frame { msg, body: vec![] }, self.now);
        let mut answer = None;
        // Storage-server calls are answered (and their replies read) as `pump` would.
        loop {
            let effects = self.c.take_effects();
            if effects.is_empty() {
                return answer;
            }
            for e in effects {
                match e {
                    Effect::Reply { conn, msg, .. } if conn == client => answer = Some(msg),
                    Effect::Reply { conn, msg, .. } => self.deliver(conn, msg),
                    Effect::Job(Job {
                        id,
                        kind: JobKind::Replicate(t),
                    }) => self.jobs.push((id, t)),
                    // The simulated store is always durable: a held job runs at once.
                    Effect::Job(Job {
                        id,
                        kind: JobKind::SsCall { addr, msg },
                    })
                    | Effect::DurableJob(Job {
                        id,
                        kind: JobKind::SsCall { addr, msg },
                    }) => {
                        let r = self.ss_call(&addr, msg);
                        self.c.on_job_result(id, r, self.now);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    /// Waits for the removal of `file` owed to the backup to be dispatched and fails it
    /// without applying it (the backup could not remove it).
    fn fail_removal(&mut self, file: &str) {
        for _ in 0..10_000 {
            if let Some(k) = self.jobs.iter().position(|(_, t)| t.file == file) {
                let (id, t) = self.jobs.remove(k);
                assert_eq!(t.want, Want::Delete);
                self.c
                    .on_job_result(id, Err(err::internal("disk error")), self.now);
                self.pump();
                return;
            }
            self.advance(10);
        }
        panic!("the removal of {file} was never dispatched");
    }
}

/// DELETE while the backup is down leaves a removal owed to it; it returns still holding the
/// old copy and the removal fails `failures` times there, then the primary dies and the
/// backup is promoted. A CREATE of that name meets the old copy on the promoted backup: it
/// must answer LOCKED and run the removal at once, never EXISTS, and the retry must make
/// the file.
fn create_on_a_promoted_backup_owed_a_waiting_removal(failures: u32) {
    let mut sim = settled_pair();
    sim.kill(1);
    sim.delete("a.txt");
    let key = job_key("ss1_backup", "a.txt");
    assert_eq!(sim.c.q.table()[&key].want, Want::Delete);
    sim.ss[1].alive = true;
    sim.register(1);
    for _ in 0..failures {
        sim.fail_removal("a.txt");
    }
    let j = &sim.c.q.table()[&key];
    assert_eq!(j.attempts, failures, "{j:?}");
    sim.kill(0);
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Backup);
    assert!(
        sim.jobs.is_empty(),
        "the removal must still be waiting: {:?}",
        sim.jobs
    );
    assert!(
        sim.ss[1].files.contains_key("a.txt"),
        "the old copy is there"
    );
    let answer = sim.create_answer("a.txt");
    assert!(
        matches!(
            answer,
            Some(Message::Err {
                code: ErrorCode::Locked,
                ..
            })
        ),
        "{answer:?} {:?}",
        sim.c.q.table()
    );
    // The removal was made due and dispatched at once.
    assert_eq!(sim.c.q.table()[&key].state, JobState::Pending);
    assert!(
        sim.jobs.iter().any(|(_, t)| t.file == "a.txt"),
        "{:?}",
        sim.c.q.table()
    );
    sim.run_jobs();
    assert!(!sim.c.q.table().contains_key(&key), "{:?}", sim.c.q.table());
    assert!(!sim.ss[1].files.contains_key("a.txt"));
    let answer = sim.create_answer("a.txt");
    assert!(matches!(answer, Some(Message::Done {})), "{answer:?}");
    let epoch = sim.pair().epoch;
    let copy = &sim.ss[1].files["a.txt"];
    assert_eq!(copy.version.epoch, epoch, "a new file, not the old bytes");
    assert!(sim.c.ns.files.contains_key("a.txt"));
}

#[test]
fn a_create_runs_an_old_removal_waiting_in_backoff_on_its_writer() {
    // Three failures: the row waits 800 ms, past the promotion.
    create_on_a_promoted_backup_owed_a_waiting_removal(3);
}

#[test]
fn a_create_runs_an_old_removal_that_failed_on_its_writer() {
    create_on_a_promoted_backup_owed_a_waiting_removal(replication::MAX_ATTEMPTS);
}

#[test]
fn a_move_onto_a_name_its_writer_is_owed_the_removal_of_runs_that_removal_first() {
    let mut sim = settled_pair();
    let ok = sim.ask(Message::CreateFolder {
        folder: "/d".into(),
    });
    assert!(matches!(ok, Some(Message::Done {})), "{ok:?}");
    sim.create("d/a.txt");
    sim.run_jobs();
    assert!(sim.ss[1].files.contains_key("d/a.txt"));
    // d/a.txt is deleted while the backup is down; its removal fails there three times.
    sim.kill(1);
    sim.delete("d/a.txt");
    sim.ss[1].alive = true;
    sim.register(1);
    for _ in 0..3 {
        sim.fail_removal("d/a.txt");
    }
    sim.kill(0);
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Backup);
    assert!(sim.jobs.is_empty(), "{:?}", sim.jobs);
    let mv = || Message::Move {
        file: "a.txt".into(),
        folder: "/d".into(),
    };
    let answer = sim.ask(mv());
    assert!(
        matches!(
            answer,
            Some(Message::Err {
                code: ErrorCode::Locked,
                ..
            })
        ),
        "{answer:?} {:?}",
        sim.c.q.table()
    );
    sim.run_jobs();
    let key = job_key("ss1_backup", "d/a.txt");
    assert!(!sim.c.q.table().contains_key(&key), "{:?}", sim.c.q.table());
    let answer = sim.ask(mv());
    assert!(matches!(answer, Some(Message::Done {})), "{answer:?}");
    assert!(sim.c.ns.files.contains_key("d/a.txt") && !sim.c.ns.files.contains_key("a.txt"));
    assert!(sim.ss[1].files.contains_key("d/a.txt") && !sim.ss[1].files.contains_key("a.txt"));
}

#[test]
fn deleting_a_file_drops_the_parked_copy_its_writer_was_owed() {
    let mut sim = settled_pair();
    sim.write("a.txt");
    // The copy to the backup fails; then the primary dies and the backup is promoted, owed
    // the copy with no source up: the row is parked.
    for _ in 0..100 {
        if !sim.jobs.is_empty() {
            break;
        }
        sim.advance(10);
    }
    assert!(!sim.jobs.is_empty(), "the copy was never dispatched");
    let (id, _) = sim.jobs.remove(0);
    sim.c
        .on_job_result(id, Err(err::unavailable("connection reset")), sim.now);
    sim.pump();
    sim.kill(0);
    sim.advance(400);
    assert_eq!(sim.pair().writer, Member::Backup);
    let key = job_key("ss1_backup", "a.txt");
    assert!(sim.c.q.table().contains_key(&key));
    assert_eq!(sim.c.q.table().owed_to("ss1_backup"), 1);
    assert!(
        sim.c.next_repl_deadline_ms().is_none(),
        "{:?}",
        sim.c.q.table()
    );
    // The file is deleted: nothing is owed to the writer any more, at once.
    sim.delete("a.txt");
    assert!(!sim.c.q.table().contains_key(&key), "{:?}", sim.c.q.table());
    assert_eq!(sim.c.q.table().owed_to("ss1_backup"), 0);
    assert!(sim.c.q.table().contains_key(&job_key("ss1", "a.txt")));
}
