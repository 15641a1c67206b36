//! `pairfs_chaos`: a seeded fault-injection run against a real cluster.
//!
//! It starts a name server and two pairs (`ss1`/`ss1_backup`, `ss2`/`ss2_backup`) from the
//! release binaries beside it, with millisecond heartbeats, in a temp dir, and runs one
//! workload thread per pair: UPLOADs of self-verifying payloads (each names its file and
//! sequence number and carries the CRC32C of its body) and READs that check what they get,
//! through the library's client session (the code `bin_client` runs). Each round injects one
//! fault chosen from the seed, waits for the name server to detect it
//! (`heartbeat_monitor_failure`), keeps it a little longer (`--hold-ms`), heals it, waits by
//! condition until the cluster has settled (every server UP, no replication owed), then pauses
//! the workload and checks that every acknowledged write is readable with its content, and
//! runs FSCK, which must find every copy (the backups' too) current and intact; copies set
//! aside in `quarantine/` (changes no client was told of) are counted, not failed.
//!
//! Beside them, one thread per pair holds WRITE sessions across the faults: each session
//! inserts a unique token, waits [`SESSION_HOLD_MS`], finishes its sentence and commits, so a
//! fault often strikes an open session and the client replays it on the new writer. At the
//! end every token is counted in its file: sessions committed, failed clearly (an error line),
//! and applied twice (a token found more than once), which must be 0.
//!
//! Fault kinds: SIGKILL of a primary, of a backup, of the name server; SIGSTOP of a storage
//! server until it is declared down, then SIGCONT; and a network partition between `ss2` and
//! the name server: `ss2` runs in its own network namespace joined to the host by a veth pair,
//! and the partition takes the veth down. If namespaces cannot be made (not root, no `ip`),
//! the program prints `SKIPPED partition: <reason>` and draws from the other kinds.
//!
//! It prints its seed first; `--seed N` replays the same faults on the same targets. At the
//! end it prints one table per fault kind and exits 1 if any acknowledged write was lost in
//! sync mode, any payload read back wrong, FSCK found a bad copy, a fault was not detected or
//! the cluster did not settle; 2 if the cluster could not be started. Every process is stopped by PID at the end,
//! also on error or panic, and the namespace is removed.
//!
//! # How it waits, counts and cleans up
//!
//! The main thread draws each round's fault and target from a SplitMix64 sequence seeded by
//! `--seed`. Waits are on conditions with deadlines: each server's stdout is followed by a
//! thread that keeps the watched events, so a fault's detection is the name server's
//! `heartbeat_monitor_failure` line and a restart's end is `nm_ss_register`; "settled" is a
//! STATUS in which every server is UP, both pairs are formed and no job is owed. The only
//! sleeps are the experiment's own durations (how long a fault is held, how long the workload
//! runs between rounds). A write's sequence number is acknowledged or recorded as failed;
//! since writes to one file are sequential, the acknowledged writes lost are those
//! acknowledged after the sequence the file reads back.
//!
//! The partition runs `ss2` under `ip netns exec` (which execs, so its PID is the server's);
//! the name server listens on the host end's address, which the other servers and the
//! workload reach locally, and the partition sets the namespace's end down. Every child is
//! stopped by PID when the program ends (also on error or panic, through `Drop`), the
//! namespace is deleted after them, and namespaces left by a killed run (whose PID is gone)
//! are removed at the next start.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use pairfs::client::parse::Command as Cmd;
use pairfs::client::session::{EditError, Session, WriteSession};
use pairfs::protocol::{Connection, Message, PairStatus, ServerStatus};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server gets to print its listen line and register.
const START_TIMEOUT_MS: u64 = 30_000;
/// How long the cluster gets to settle after a fault is healed.
const SETTLE_TIMEOUT_MS: u64 = 60_000;
/// Slack beyond the heartbeat timeout for the name server to report a failure.
const DETECT_SLACK_MS: u64 = 5_000;
/// How long a stopping server gets after SIGTERM before it is killed.
const STOP_TIMEOUT_MS: u64 = 5_000;
/// How long the workload threads get to finish their operation in flight when paused.
const PAUSE_TIMEOUT_MS: u64 = 90_000;
/// How long the round-end check may retry one READ.
const VERIFY_READ_TIMEOUT_MS: u64 = 30_000;
/// Connect and read timeout of the STATUS connection.
const STATUS_TIMEOUT_MS: u64 = 5_000;
/// Most operation records kept per round (a bound; further ones are counted, not kept).
const MAX_OPS_PER_ROUND: usize = 1_000_000;
/// Most watched log events kept (the oldest half is dropped beyond it).
const MAX_EVENTS: usize = 100_000;
/// Log events the program waits for; every line also goes to the process's log file.
const WATCHED: [&str; 4] = [
    "nm_listen",
    "ss_listen",
    "nm_ss_register",
    "heartbeat_monitor_failure",
];
/// How long a WRITE session of the workload stays open between its two edits.
const SESSION_HOLD_MS: u64 = 150;

/// The user every workload session acts as (the owner of the workload's files).
const USER: &str = "chaos";
/// Every this many writes of a file is large (over a MiB), so some uploads are staged on the
/// backup while they arrive and faults strike staging too.
const LARGE_EVERY: u64 = 8;
/// Words of a large payload (about 1.3 MiB).
const LARGE_WORDS: u64 = 200_000;
/// The storage server placed in its own network namespace for the partition fault.
const PARTITIONED: &str = "ss2";
/// The pairs, primary first.
const PAIRS: [[&str; 2]; 2] = [["ss1", "ss1_backup"], ["ss2", "ss2_backup"]];

/// Flags.
#[derive(Parser, Debug)]
#[command(
    name = "pairfs_chaos",
    about = "Seeded fault injection against a real pairfs cluster; prints RPO/RTO per fault kind"
)]
struct Args {
    /// Seed of the fault sequence (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Rounds, one fault each.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    rounds: u64,
    /// The name server's replication mode.
    #[arg(long, default_value = "sync", value_parser = ["sync", "async"])]
    replication: String,
    /// Heartbeat interval of every server, in ms.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    heartbeat_interval_ms: u64,
    /// The name server's heartbeat timeout, in ms (must exceed the interval).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(20..=60_000))]
    heartbeat_timeout_ms: u64,
    /// How long a fault is kept after it was detected, in ms.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    hold_ms: u64,
    /// How long the workload runs between rounds before the next fault, in ms.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    run_ms: u64,
    /// Pause of each workload thread between two operations, in ms.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    op_interval_ms: u64,
    /// Files per pair the workload writes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    files_per_pair: u64,
    /// Directory holding bin_nm and bin_ss (default: this program's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the temp dir (logs, storage) even when the run passes.
    #[arg(long)]
    keep: bool,
}

// ----- seeded choices -----

/// SplitMix64: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The fault kinds, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    KillPrimary,
    KillBackup,
    KillNm,
    StopServer,
    Partition,
}

const KINDS: [Kind; 5] = [
    Kind::KillPrimary,
    Kind::KillBackup,
    Kind::KillNm,
    Kind::StopServer,
    Kind::Partition,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::KillPrimary => "sigkill_primary",
            Kind::KillBackup => "sigkill_backup",
            Kind::KillNm => "sigkill_nm",
            Kind::StopServer => "sigstop_server",
            Kind::Partition => "partition",
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone)]
struct Fault {
    kind: Kind,
    /// The process hit (`nm` for the name server).
    target: String,
}

/// The whole fault sequence for a seed: the first rounds cover every available kind once in a
/// seeded order, later rounds draw freely, so even a short run exercises each kind.
fn plan(seed: u64, rounds: u64, kinds: &[Kind]) -> Vec<Fault> {
    let mut rng = Rng(seed);
    let mut order: Vec<Kind> = kinds.to_vec();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    (0..rounds as usize)
        .map(|r| {
            let kind = match order.get(r) {
                Some(k) => *k,
                None => kinds[rng.below(kinds.len() as u64) as usize],
            };
            let pair = PAIRS[rng.below(2) as usize];
            let target = match kind {
                Kind::KillPrimary => pair[0].to_string(),
                Kind::KillBackup => pair[1].to_string(),
                Kind::KillNm => "nm".to_string(),
                Kind::StopServer => pair[rng.below(2) as usize].to_string(),
                Kind::Partition => PARTITIONED.to_string(),
            };
            Fault { kind, target }
        })
        .collect()
}

// ----- processes and their logs -----

/// A watched log event.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    proc_name: String,
    event: String,
    ss: Option<String>,
    addr: Option<String>,
}

/// Watched events of every process, with a condvar for waiting.
#[derive(Default)]
struct Events {
    list: Mutex<Vec<Event>>,
    cv: Condvar,
}

impl Events {
    fn push(&self, e: Event) {
        let mut l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() >= MAX_EVENTS {
            l.drain(..MAX_EVENTS / 2);
        }
        l.push(e);
        self.cv.notify_all();
    }

    /// Waits for the first event `event` from `proc_name` (about `ss`, if given) at or after
    /// `since`; `None` when `timeout` passes first.
    fn wait(
        &self,
        proc_name: &str,
        event: &str,
        ss: Option<&str>,
        since: Instant,
        timeout: Duration,
    ) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut l = self.list.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let hit = l.iter().find(|e| {
                e.at >= since
                    && e.proc_name == proc_name
                    && e.event == event
                    && ss.is_none_or(|s| e.ss.as_deref() == Some(s))
            });
            if let Some(e) = hit {
                return Some(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            l = self
                .cv
                .wait_timeout(l, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// One server process: how to start it, its child, its log file.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    /// Network namespace to run in (`ip netns exec`, which execs, so the PID is the server's).
    netns: Option<String>,
    child: Option<Child>,
    log_path: PathBuf,
    events: Arc<Events>,
}

impl Proc {
    fn launch(&mut self) -> Result<()> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut child = cmd
            .args(&self.args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of {}", self.name))?;
        let (name, events) = (self.name.clone(), self.events.clone());
        thread::spawn(move || follow(stdout, log, &name, &events));
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's PID; no memory is involved.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    fn stop(&mut self) {
        // A stopped process cannot act on SIGTERM.
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        let Some(mut c) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Replaces the value of `flag` (the port pinned after the first start).
    fn set_arg(&mut self, flag: &str, value: &str) {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            if let Some(v) = self.args.get_mut(i + 1) {
                *v = value.to_string();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies a server's log lines to its log file and records the watched events.
fn follow(stdout: impl std::io::Read, mut log: File, name: &str, events: &Events) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let event = v["event"].as_str().unwrap_or_default();
        if WATCHED.contains(&event) {
            events.push(Event {
                at: Instant::now(),
                proc_name: name.to_string(),
                event: event.to_string(),
                ss: v["ss"].as_str().map(str::to_string),
                addr: v["addr"].as_str().map(str::to_string),
            });
        }
    }
}

/// The network namespace `ss2` runs in, joined to the host by a veth pair.
struct Netns {
    ns: String,
    /// The veth end inside the namespace (taken down for a partition).
    inner: String,
    /// The host side's address (the name server listens on it).
    host_ip: String,
    /// The namespace side's address (`ss2` listens on it).
    ns_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes namespaces left by earlier runs that were killed before they could clean up
/// (their PID, in the name, is gone).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("pfschaos")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 only checks that the PID exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Netns {
    fn create() -> Result<Netns> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let n = Netns {
            ns: format!("pfschaos{pid}"),
            inner: format!("pfc{pid}b"),
            host_ip: format!("10.231.{}.{}", pid % 256, 4 * ((pid / 256) % 60) + 1),
            ns_ip: format!("10.231.{}.{}", pid % 256, 4 * ((pid / 256) % 60) + 2),
        };
        let outer = format!("pfc{pid}a");
        ip(&["netns", "add", &n.ns])?;
        let steps = || -> Result<()> {
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &n.inner,
            ])?;
            ip(&["link", "set", &n.inner, "netns", &n.ns])?;
            ip(&["addr", "add", &format!("{}/30", n.host_ip), "dev", &outer])?;
            ip(&["link", "set", &outer, "up"])?;
            n.exec(&["addr", "add", &format!("{}/30", n.ns_ip), "dev", &n.inner])?;
            n.exec(&["link", "set", &n.inner, "up"])?;
            n.exec(&["link", "set", "lo", "up"])
        };
        if let Err(e) = steps() {
            let _ = ip(&["link", "del", &outer]);
            drop(n);
            return Err(e);
        }
        Ok(n)
    }

    fn exec(&self, args: &[&str]) -> Result<()> {
        let mut a = vec!["netns", "exec", self.ns.as_str(), "ip"];
        a.extend_from_slice(args);
        ip(&a)
    }

    fn partition(&self) -> Result<()> {
        self.exec(&["link", "set", &self.inner, "down"])
    }

    fn heal(&self) -> Result<()> {
        self.exec(&["link", "set", &self.inner, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth end inside it, and with it its peer.
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

// ----- the cluster -----

struct Cluster {
    nm_addr: String,
    /// Storage servers by name, then the name server; dropped (stopped) before the netns.
    procs: BTreeMap<String, Proc>,
    events: Arc<Events>,
    net: Option<Netns>,
}

impl Cluster {
    fn start(args: &Args, dir: &Path, bins: &Path, net: Option<Netns>) -> Result<Cluster> {
        let events = Arc::new(Events::default());
        let key = dir.join("cluster.key");
        let nm_host = net
            .as_ref()
            .map_or("127.0.0.1".to_string(), |n| n.host_ip.clone());
        let hb = args.heartbeat_interval_ms.to_string();
        let mut procs = BTreeMap::new();
        let mut nm = Proc {
            name: "nm".into(),
            program: bins.join("bin_nm"),
            args: [
                "--host",
                nm_host.as_str(),
                "--port",
                "0",
                "--http-port",
                "0",
                "--data",
                path_str(&dir.join("nm_data"))?.as_str(),
                "--cluster-key-file",
                path_str(&key)?.as_str(),
                "--heartbeat-interval-ms",
                hb.as_str(),
                "--heartbeat-timeout-ms",
                args.heartbeat_timeout_ms.to_string().as_str(),
                "--replication",
                args.replication.as_str(),
            ]
            .map(str::to_string)
            .to_vec(),
            netns: None,
            child: None,
            log_path: dir.join("nm.log"),
            events: events.clone(),
        };
        let since = Instant::now();
        nm.launch()?;
        let listen = events
            .wait("nm", "nm_listen", None, since, ms(START_TIMEOUT_MS))
            .ok_or_else(|| {
                anyhow!(
                    "the name server did not start (see {})",
                    nm.log_path.display()
                )
            })?;
        let nm_addr = listen
            .addr
            .ok_or_else(|| anyhow!("nm_listen without an address"))?;
        let port = nm_addr
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .ok_or_else(|| anyhow!("bad nm address {nm_addr}"))?;
        // Pinned, so a restarted name server is found again by servers and clients.
        nm.set_arg("--port", &port);
        procs.insert("nm".to_string(), nm);
        for name in PAIRS.iter().flatten() {
            let in_ns = net.as_ref().filter(|_| *name == PARTITIONED);
            let host = in_ns.map_or("127.0.0.1".to_string(), |n| n.ns_ip.clone());
            let mut ss = Proc {
                name: name.to_string(),
                program: bins.join("bin_ss"),
                args: [
                    "--nm-host",
                    nm_host.as_str(),
                    "--nm-port",
                    port.as_str(),
                    "--host",
                    host.as_str(),
                    "--client-port",
                    "0",
                    "--storage",
                    path_str(&dir.join(format!("storage_{name}")))?.as_str(),
                    "--username",
                    name,
                    "--heartbeat-interval-ms",
                    hb.as_str(),
                    "--cluster-key-file",
                    path_str(&key)?.as_str(),
                ]
                .map(str::to_string)
                .to_vec(),
                netns: in_ns.map(|n| n.ns.clone()),
                child: None,
                log_path: dir.join(format!("{name}.log")),
                events: events.clone(),
            };
            let since = Instant::now();
            ss.launch()?;
            let l = events
                .wait(name, "ss_listen", None, since, ms(START_TIMEOUT_MS))
                .ok_or_else(|| anyhow!("{name} did not start (see {})", ss.log_path.display()))?;
            if let Some(p) = l.addr.as_deref().and_then(|a| a.rsplit_once(':')) {
                ss.set_arg("--client-port", p.1);
            }
            events
                .wait(
                    "nm",
                    "nm_ss_register",
                    Some(name),
                    since,
                    ms(START_TIMEOUT_MS),
                )
                .ok_or_else(|| anyhow!("{name} did not register"))?;
            procs.insert(name.to_string(), ss);
        }
        let c = Cluster {
            nm_addr,
            procs,
            events,
            net,
        };
        c.settle(Instant::now())
            .context("the new cluster did not settle")?;
        Ok(c)
    }

    fn proc_mut(&mut self, name: &str) -> Result<&mut Proc> {
        self.procs
            .get_mut(name)
            .ok_or_else(|| anyhow!("no process {name}"))
    }

    /// One STATUS through the wire protocol.
    fn status(&self) -> Result<(Vec<ServerStatus>, Vec<PairStatus>, u64)> {
        let mut c = Connection::connect(&self.nm_addr, ms(STATUS_TIMEOUT_MS))?;
        c.set_timeout(Some(ms(STATUS_TIMEOUT_MS)))?;
        let key = pairfs::identity::UserKey::load_or_create(&pairfs::identity::default_key_path(
            "chaos",
        ))?;
        pairfs::identity::handshake(&mut c, "chaos", &key)?;
        match c.call(&Message::Status {}, &[])?.msg {
            Message::StatusReply {
                servers,
                pairs,
                queue_depth,
                ..
            } => Ok((servers, pairs, queue_depth)),
            other => bail!("STATUS answered {}", other.op_name()),
        }
    }

    /// Waits until every server is UP, both pairs are formed and nothing is owed to a backup;
    /// returns when that first held.
    fn settle(&self, since: Instant) -> Result<Instant> {
        let deadline = since + ms(SETTLE_TIMEOUT_MS);
        let mut last = String::from("no STATUS answer");
        while Instant::now() < deadline {
            match self.status() {
                Ok((servers, pairs, depth)) => {
                    let up = PAIRS
                        .iter()
                        .flatten()
                        .all(|n| servers.iter().any(|s| s.name == *n && s.up));
                    let paired = PAIRS.iter().all(|[p, b]| {
                        pairs.iter().any(|x| {
                            x.primary == *p && x.backup.as_deref() == Some(*b) && x.lag_jobs == 0
                        })
                    });
                    if up && paired && depth == 0 {
                        return Ok(Instant::now());
                    }
                    last = format!(
                        "servers up: {:?}; pairs: {:?}; queue depth {depth}",
                        servers
                            .iter()
                            .filter(|s| s.up)
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>(),
                        pairs
                            .iter()
                            .map(|p| (p.primary.as_str(), p.state.as_str(), p.lag_jobs))
                            .collect::<Vec<_>>()
                    );
                }
                Err(e) => last = e.to_string(),
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("not settled after {SETTLE_TIMEOUT_MS} ms: {last}")
    }

    /// The largest replication lag over the pairs now: (jobs, ms).
    fn lag(&self) -> (u64, u64) {
        match self.status() {
            Ok((_, pairs, _)) => pairs
                .iter()
                .fold((0, 0), |(j, m), p| (j.max(p.lag_jobs), m.max(p.lag_ms))),
            Err(_) => (0, 0),
        }
    }

    /// Restarts `name` (which must have exited) and waits until it serves again.
    fn restart(&mut self, name: &str) -> Result<()> {
        let since = Instant::now();
        self.proc_mut(name)?.launch()?;
        let events = self.events.clone();
        if name == "nm" {
            events
                .wait("nm", "nm_listen", None, since, ms(START_TIMEOUT_MS))
                .ok_or_else(|| anyhow!("the name server did not restart"))?;
            for ss in PAIRS.iter().flatten() {
                events
                    .wait(
                        "nm",
                        "nm_ss_register",
                        Some(ss),
                        since,
                        ms(START_TIMEOUT_MS),
                    )
                    .ok_or_else(|| anyhow!("{ss} did not register with the restarted nm"))?;
            }
        } else {
            events
                .wait(
                    "nm",
                    "nm_ss_register",
                    Some(name),
                    since,
                    ms(START_TIMEOUT_MS),
                )
                .ok_or_else(|| anyhow!("{name} did not register after its restart"))?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Storage servers first, then the name server; the namespace after every process.
        let names: Vec<String> = self.procs.keys().filter(|n| *n != "nm").cloned().collect();
        for n in names {
            if let Some(mut p) = self.procs.remove(&n) {
                p.stop();
            }
        }
        if let Some(mut nm) = self.procs.remove("nm") {
            nm.stop();
        }
        self.net.take();
    }
}

mod chaos_workload;
use chaos_workload::{Op, OpRec, Slot, Workload};

// ----- rounds and the table -----

/// What one round measured.
#[derive(Debug, Clone, Default)]
struct RoundResult {
    acked: u64,
    lost: u64,
    stale_reads: u64,
    read_gap_ms: u64,
    write_gap_ms: u64,
    detect_ms: Option<u64>,
    catch_up_ms: u64,
    lag_jobs: u64,
    lag_ms: u64,
    /// FSCK's report when it found a copy missing, stale, corrupt or down.
    fsck: Option<String>,
    /// Copies FSCK found in `quarantine/` (cumulative: they stay there).
    quarantined: u64,
}

/// The longest stretch without a successful `op` on `pairs` from the last success before
/// `t0` to `end` (a stretch still open at `end` counts up to `end`).
fn longest_gap(ops: &[OpRec], pairs: &[usize], op: Op, t0: Instant, end: Instant) -> u64 {
    let mut ok: Vec<Instant> = ops
        .iter()
        .filter(|r| r.ok && r.op == op && pairs.contains(&r.pair))
        .map(|r| r.at)
        .collect();
    ok.sort();
    let start = ok.iter().rev().find(|t| **t <= t0).copied().unwrap_or(t0);
    let mut prev = start;
    let mut gap = Duration::ZERO;
    for t in ok.iter().filter(|t| **t > start) {
        gap = gap.max(t.saturating_duration_since(prev));
        prev = *t;
    }
    gap = gap.max(end.saturating_duration_since(prev));
    gap.as_millis() as u64
}

fn pair_of(target: &str) -> Option<usize> {
    PAIRS.iter().position(|p| p.contains(&target))
}

fn run_round(c: &mut Cluster, w: &Workload, f: &Fault, args: &Args) -> Result<RoundResult> {
    let mut r = RoundResult::default();
    (r.lag_jobs, r.lag_ms) = c.lag();
    let t0 = Instant::now();
    let timeout = ms(args.heartbeat_timeout_ms + DETECT_SLACK_MS);
    let detect = |c: &Cluster| {
        c.events
            .wait(
                "nm",
                "heartbeat_monitor_failure",
                Some(&f.target),
                t0,
                timeout,
            )
            .map(|e| e.at.saturating_duration_since(t0).as_millis() as u64)
    };
    let heal_at;
    match f.kind {
        Kind::KillPrimary | Kind::KillBackup => {
            c.proc_mut(&f.target)?.kill9();
            r.detect_ms = detect(c);
            thread::sleep(ms(args.hold_ms));
            heal_at = Instant::now();
            c.restart(&f.target)?;
        }
        Kind::KillNm => {
            c.proc_mut("nm")?.kill9();
            thread::sleep(ms(args.hold_ms));
            heal_at = Instant::now();
            c.restart("nm")?;
        }
        Kind::StopServer => {
            c.proc_mut(&f.target)?.signal(libc::SIGSTOP);
            r.detect_ms = detect(c);
            thread::sleep(ms(args.hold_ms));
            heal_at = Instant::now();
            c.proc_mut(&f.target)?.signal(libc::SIGCONT);
        }
        Kind::Partition => {
            let net = c
                .net
                .as_ref()
                .ok_or_else(|| anyhow!("partition planned without a namespace"))?;
            net.partition()?;
            r.detect_ms = detect(c);
            thread::sleep(ms(args.hold_ms));
            heal_at = Instant::now();
            c.net
                .as_ref()
                .ok_or_else(|| anyhow!("namespace gone"))?
                .heal()?;
        }
    }
    let settled = c.settle(heal_at)?;
    r.catch_up_ms = settled.saturating_duration_since(heal_at).as_millis() as u64;
    w.pause()?;
    let end = Instant::now();
    let pairs: Vec<usize> = match pair_of(&f.target) {
        Some(p) => vec![p],
        None => (0..PAIRS.len()).collect(),
    };
    {
        let mut ops = w.ops.lock().unwrap_or_else(|p| p.into_inner());
        r.read_gap_ms = longest_gap(&ops, &pairs, Op::Read, t0, end);
        r.write_gap_ms = longest_gap(&ops, &pairs, Op::Write, t0, end);
        ops.clear();
    }
    r.lost = w.verify()?;
    (r.fsck, r.quarantined) = w.fsck()?;
    r.acked = w.acked_round.swap(0, Ordering::SeqCst);
    r.stale_reads = w.stale_reads.swap(0, Ordering::SeqCst);
    w.resume();
    Ok(r)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
}

/// Creates the workload's files until each pair holds `per_pair` of them (the name server
/// places each new file on the pair with fewer files); returns them by pair.
fn create_files(host: &str, port: u16, per_pair: u64) -> Result<Vec<Vec<String>>> {
    let mut s = Session::connect(host, port, USER).map_err(|e| anyhow!("{e}"))?;
    let mut by_pair = vec![Vec::new(); PAIRS.len()];
    for i in 0..(per_pair * PAIRS.len() as u64 * 4) {
        if by_pair
            .iter()
            .all(|v: &Vec<String>| v.len() as u64 >= per_pair)
        {
            break;
        }
        let name = format!("chaos_{i:03}.txt");
        s.execute(&Cmd::Create { file: name.clone() }, &mut std::io::sink())
            .map_err(|e| anyhow!("CREATE {name}: {e}"))?;
        let mut out = Vec::new();
        s.execute(&Cmd::Info { file: name.clone() }, &mut out)
            .map_err(|e| anyhow!("INFO {name}: {e}"))?;
        let text = String::from_utf8_lossy(&out);
        let primary = text
            .lines()
            .find_map(|l| l.strip_prefix("Replicas: "))
            .and_then(|r| r.split(' ').next())
            .ok_or_else(|| anyhow!("INFO {name} names no replica"))?;
        let p = pair_of(primary).ok_or_else(|| anyhow!("{name} placed on {primary}"))?;
        if (by_pair[p].len() as u64) < per_pair {
            by_pair[p].push(name);
        }
    }
    if by_pair.iter().any(|v| (v.len() as u64) < per_pair) {
        bail!("could not place {per_pair} files on each pair: {by_pair:?}");
    }
    Ok(by_pair)
}

/// Creates one file per WRITE-session thread.
fn create_session_files(host: &str, port: u16) -> Result<Vec<String>> {
    let mut s = Session::connect(host, port, USER).map_err(|e| anyhow!("{e}"))?;
    (0..PAIRS.len())
        .map(|t| {
            let name = format!("chaos_sessions_{t}.txt");
            s.execute(&Cmd::Create { file: name.clone() }, &mut std::io::sink())
                .map_err(|e| anyhow!("CREATE {name}: {e}"))?;
            Ok(name)
        })
        .collect()
}

#[derive(Default)]
struct Row {
    rounds: u64,
    acked: u64,
    lost: u64,
    stale_reads: u64,
    read_gap_ms: u64,
    write_gap_ms: u64,
    detect: Vec<u64>,
    undetected: u64,
    catch_up_ms: u64,
    lag_jobs: u64,
    lag_ms: u64,
}

fn print_table(rows: &BTreeMap<Kind, Row>, skipped: &[String], mode: &str) {
    println!();
    println!("per fault kind (RTO and catch-up: worst round; detection: mean and worst):");
    println!(
        "{:<16} {:>6} {:>7} {:>5} {:>6} {:>11} {:>12} {:>15} {:>11} {:>14}",
        "fault",
        "rounds",
        "acked",
        "lost",
        "stale",
        "read RTO ms",
        "write RTO ms",
        "detect ms",
        "catch-up ms",
        "lag before"
    );
    for (k, r) in rows {
        let detect = if r.detect.is_empty() {
            "n/a".to_string()
        } else {
            let mean = r.detect.iter().sum::<u64>() / r.detect.len() as u64;
            let max = r.detect.iter().max().copied().unwrap_or(0);
            format!("{mean} / {max}")
        };
        let detect = if r.undetected > 0 {
            format!("{detect} ({} missed)", r.undetected)
        } else {
            detect
        };
        println!(
            "{:<16} {:>6} {:>7} {:>5} {:>6} {:>11} {:>12} {:>15} {:>11} {:>14}",
            k.name(),
            r.rounds,
            r.acked,
            r.lost,
            r.stale_reads,
            r.read_gap_ms,
            r.write_gap_ms,
            detect,
            r.catch_up_ms,
            format!("{} jobs/{} ms", r.lag_jobs, r.lag_ms),
        );
    }
    for s in skipped {
        println!("{s}");
    }
    println!(
        "replication {mode}: acked = acknowledged writes; lost = acknowledged writes not readable \
         after the fault healed; stale = reads older than an acknowledged write; RTO = longest \
         stretch without a successful read/write on the affected pair(s); lag before = \
         replication lag just before the fault"
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.heartbeat_timeout_ms <= args.heartbeat_interval_ms {
        eprintln!("--heartbeat-timeout-ms must exceed --heartbeat-interval-ms");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            % 1_000_000
    });
    println!(
        "pairfs chaos: seed {seed} (replay with --seed {seed}), {} rounds, replication {}",
        args.rounds, args.replication
    );
    match run(&args, seed) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            println!("chaos: cannot run: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the whole program; `Ok(false)` when a check failed.
fn run(args: &Args, seed: u64) -> Result<bool> {
    let bins = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory of this program"))?
            .to_path_buf(),
    };
    for b in ["bin_nm", "bin_ss"] {
        if !bins.join(b).is_file() {
            bail!(
                "{} not found (build with cargo build --release)",
                bins.join(b).display()
            );
        }
    }
    let dir = std::env::temp_dir().join(format!("pairfs-chaos-{}-{seed}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let mut skipped = Vec::new();
    let net = match Netns::create() {
        Ok(n) => Some(n),
        Err(e) => {
            let line = format!("SKIPPED partition: cannot create a network namespace: {e:#}");
            println!("{line}");
            skipped.push(line);
            None
        }
    };
    let kinds: Vec<Kind> = KINDS
        .iter()
        .copied()
        .filter(|k| *k != Kind::Partition || net.is_some())
        .collect();
    let faults = plan(seed, args.rounds, &kinds);
    let mut cluster = Cluster::start(args, &dir, &bins, net)?;
    let (host, port) = cluster
        .nm_addr
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or(0)))
        .ok_or_else(|| anyhow!("bad nm address"))?;
    let files = create_files(&host, port, args.files_per_pair)?;
    let session_files = create_session_files(&host, port)?;
    let work = Arc::new(Workload {
        host,
        port,
        dir: dir.clone(),
        op_interval_ms: args.op_interval_ms,
        slots: files
            .into_iter()
            .map(|v| {
                v.into_iter()
                    .map(|name| Slot {
                        name,
                        attempted: AtomicU64::new(0),
                        acked: AtomicU64::new(0),
                        failed: Mutex::new(Vec::new()),
                        reported_lost: AtomicU64::new(0),
                    })
                    .collect()
            })
            .collect(),
        stop: AtomicBool::new(false),
        pause: AtomicBool::new(false),
        idle: (0..2 * PAIRS.len())
            .map(|_| AtomicBool::new(false))
            .collect(),
        ops: Mutex::new(Vec::new()),
        acked_round: AtomicU64::new(0),
        stale_reads: AtomicU64::new(0),
        bad: Mutex::new(Vec::new()),
        sessions: (0..session_files.len())
            .map(|_| Mutex::new(Vec::new()))
            .collect(),
        session_files,
    });
    let mut threads: Vec<_> = (0..PAIRS.len())
        .map(|p| {
            let w = work.clone();
            thread::spawn(move || w.run(p, seed))
        })
        .collect();
    threads.extend((0..PAIRS.len()).map(|t| {
        let w = work.clone();
        thread::spawn(move || w.run_sessions(t))
    }));
    let mut rows: BTreeMap<Kind, Row> = BTreeMap::new();
    let mut quarantined = 0;
    let mut ok = true;
    let started = Instant::now();
    for (i, f) in faults.iter().enumerate() {
        // The workload runs unfaulted for a moment, so every round starts from successes.
        thread::sleep(ms(args.run_ms));
        let r = match run_round(&mut cluster, &work, f, args) {
            Ok(r) => r,
            Err(e) => {
                println!(
                    "round {}: {} {}: FAILED: {e:#}",
                    i + 1,
                    f.kind.name(),
                    f.target
                );
                ok = false;
                break;
            }
        };
        if let Some(report) = &r.fsck {
            println!(
                "round {}: FSCK found bad copies after the cluster settled:\n{report}",
                i + 1
            );
            ok = false;
        }
        let detect = match (f.kind, r.detect_ms) {
            (Kind::KillNm, _) => "n/a".to_string(),
            (_, Some(d)) => format!("{d} ms"),
            (_, None) => {
                ok = false;
                "NOT DETECTED".to_string()
            }
        };
        println!(
            "round {:>3}: {:<16} {:<11} detect {:>8}  read RTO {:>5} ms  write RTO {:>5} ms  \
             catch-up {:>5} ms  acked {:>4}  lost {}",
            i + 1,
            f.kind.name(),
            f.target,
            detect,
            r.read_gap_ms,
            r.write_gap_ms,
            r.catch_up_ms,
            r.acked,
            r.lost
        );
        quarantined = r.quarantined;
        let row = rows.entry(f.kind).or_default();
        row.rounds += 1;
        row.acked += r.acked;
        row.lost += r.lost;
        row.stale_reads += r.stale_reads;
        row.read_gap_ms = row.read_gap_ms.max(r.read_gap_ms);
        row.write_gap_ms = row.write_gap_ms.max(r.write_gap_ms);
        row.catch_up_ms = row.catch_up_ms.max(r.catch_up_ms);
        row.lag_jobs = row.lag_jobs.max(r.lag_jobs);
        row.lag_ms = row.lag_ms.max(r.lag_ms);
        match r.detect_ms {
            Some(d) => row.detect.push(d),
            None if f.kind != Kind::KillNm => row.undetected += 1,
            None => {}
        }
    }
    work.stop.store(true, Ordering::SeqCst);
    work.resume();
    for t in threads {
        let _ = t.join();
    }
    print_table(&rows, &skipped, &args.replication);
    match work.count_sessions() {
        Ok((committed, failed, twice, missing)) => {
            println!(
                "write sessions held across faults: {committed} committed, {failed} failed \
                 clearly, {twice} applied twice, {missing} committed but missing"
            );
            if twice > 0 {
                println!("FAIL: {twice} write session(s) applied twice");
                ok = false;
            }
            if args.replication == "sync" && missing > 0 {
                println!("FAIL: {missing} committed write session(s) lost in sync mode");
                ok = false;
            }
        }
        Err(e) => {
            println!("FAIL: the write sessions could not be counted: {e:#}");
            ok = false;
        }
    }
    println!(
        "quarantined copies at the end: {quarantined} (changes a dying writer saved but no client \
         was told of, set aside by recovery; see FSCK)"
    );
    let lost: u64 = rows.values().map(|r| r.lost).sum();
    let stale: u64 = rows.values().map(|r| r.stale_reads).sum();
    let bad = work.bad.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if args.replication == "sync" && (lost > 0 || stale > 0) {
        println!("FAIL: {lost} acknowledged write(s) lost, {stale} stale read(s) in sync mode");
        ok = false;
    }
    if !bad.is_empty() {
        println!(
            "FAIL: {} payload(s) read back wrong, first: {}",
            bad.len(),
            bad[0]
        );
        ok = false;
    }
    drop(cluster);
    let kept = !ok || args.keep;
    if !kept {
        let _ = fs::remove_dir_all(&dir);
    }
    println!(
        "chaos: {} in {:.1} s (seed {seed}); {}",
        if ok { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64(),
        if kept {
            format!("logs and storage kept in {}", dir.display())
        } else {
            "temp dir removed (--keep keeps it)".to_string()
        }
    );
    Ok(ok)
}

/// The number FSCK's summary line gives for `state` (`…, 3 stale, …`); 0 when absent.
fn fsck_count(summary: &str, state: &str) -> u64 {
    summary
        .split([',', ':'])
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            let n = words.next()?.parse::<u64>().ok()?;
            (words.next() == Some(state)).then_some(n)
        })
        .sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::chaos_workload::{check_payload, payload};

    #[test]
    fn fsck_counts_come_from_the_summary() {
        let line = "ERROR [CONFLICT]: FSCK: 8 files: 16 ok, 0 stale, 2 missing, 0 corrupt, 0 diverged, 0 down, 1 quarantined";
        assert_eq!(super::fsck_count(line, "quarantined"), 1);
        assert_eq!(super::fsck_count(line, "missing"), 2);
        assert_eq!(super::fsck_count(line, "stale"), 0);
        assert_eq!(super::fsck_count(line, "ok"), 16);
        assert_eq!(super::fsck_count("FSCK: 0 files", "corrupt"), 0);
    }

    use super::*;

    #[test]
    fn a_seed_replays_the_same_faults_and_covers_every_kind_first() {
        let a = plan(7, 12, &KINDS);
        let b = plan(7, 12, &KINDS);
        let show = |p: &[Fault]| -> Vec<(Kind, String)> {
            p.iter().map(|f| (f.kind, f.target.clone())).collect()
        };
        assert_eq!(show(&a), show(&b));
        assert_ne!(show(&a), show(&plan(8, 12, &KINDS)));
        let mut first: Vec<Kind> = a[..KINDS.len()].iter().map(|f| f.kind).collect();
        first.sort();
        assert_eq!(first, KINDS.to_vec());
        for f in &a {
            match f.kind {
                Kind::KillPrimary => assert!(f.target == "ss1" || f.target == "ss2"),
                Kind::KillBackup => assert!(f.target.ends_with("_backup")),
                Kind::KillNm => assert_eq!(f.target, "nm"),
                Kind::StopServer => assert!(pair_of(&f.target).is_some()),
                Kind::Partition => assert_eq!(f.target, PARTITIONED),
            }
        }
        let without: Vec<Kind> = KINDS
            .iter()
            .copied()
            .filter(|k| *k != Kind::Partition)
            .collect();
        assert!(plan(7, 50, &without)
            .iter()
            .all(|f| f.kind != Kind::Partition));
    }

    #[test]
    fn payloads_verify_themselves() {
        let p = payload("a.txt", 12, 99);
        assert_eq!(check_payload(&p, "a.txt"), Ok(12));
        let large = payload("a.txt", LARGE_EVERY, 99);
        assert!(large.len() > 1 << 20, "{} bytes", large.len());
        assert_eq!(check_payload(&large, "a.txt"), Ok(LARGE_EVERY));
        assert_eq!(check_payload(b"", "a.txt"), Ok(0));
        assert!(check_payload(&p, "b.txt")
            .unwrap_err()
            .contains("payload of a.txt"));
        let mut flipped = p.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert!(check_payload(&flipped, "a.txt")
            .unwrap_err()
            .contains("own checksum"));
        assert!(check_payload(b"garbage", "a.txt").is_err());
    }

    #[test]
    fn lost_writes_are_the_acknowledged_ones_after_what_reads_back() {
        let s = Slot {
            name: "a".into(),
            attempted: AtomicU64::new(10),
            acked: AtomicU64::new(10),
            failed: Mutex::new(vec![4, 8]),
            reported_lost: AtomicU64::new(0),
        };
        assert_eq!(s.acked_after(10), 0);
        assert_eq!(s.acked_after(7), 2, "9 and 10; 8 was never acknowledged");
        assert_eq!(s.acked_after(3), 5);
    }

    #[test]
    fn the_longest_gap_runs_from_the_last_success_before_the_fault() {
        let t0 = Instant::now() + ms(1_000);
        let at = |d: i64| {
            if d >= 0 {
                t0 + ms(d as u64)
            } else {
                t0 - ms((-d) as u64)
            }
        };
        let rec = |d, pair, op, ok| OpRec {
            at: at(d),
            pair,
            op,
            ok,
        };
        let ops = vec![
            rec(-50, 0, Op::Write, true),
            rec(-10, 0, Op::Write, true),
            rec(100, 0, Op::Write, false),
            rec(400, 0, Op::Write, true),
            rec(420, 0, Op::Write, true),
            rec(200, 1, Op::Write, true),
            rec(300, 0, Op::Read, true),
        ];
        assert_eq!(longest_gap(&ops, &[0], Op::Write, t0, at(500)), 410);
        assert_eq!(longest_gap(&ops, &[0], Op::Write, t0, at(1_000)), 580);
        // No success after the fault: the gap runs to the end.
        assert_eq!(longest_gap(&ops, &[1], Op::Read, t0, at(700)), 700);
    }
}
