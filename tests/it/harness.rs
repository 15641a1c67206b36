//! The end-to-end test harness: starts the real `bin_nm`, `bin_ss` and `bin_client` binaries
//! in a temp dir, follows their JSON logs, and lets a test read like a scenario:
//!
//! ```ignore
//! let c = Cluster::start();
//! let out = c.client("alice").run("CREATE a.txt\nREAD a.txt\n");
//! out.assert_lines(&["File Created Successfully!", ""]);
//! ```
//!
//! Every wait has a deadline and panics with the last log lines of the process concerned.
//! Processes are stopped by PID only; dropping the `Cluster` SIGKILLs whatever is left.

#![allow(dead_code)]

pub use crate::netns::Hosts;
use pairfs::protocol::{AccessMode, FileState, Ticket, WireError};
use pairfs::protocol::{Connection, Frame, Message};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The default deadline for a server to become ready or an event to appear.
pub const WAIT: Duration = Duration::from_secs(20);
/// The default deadline for one piped client run.
pub const CLIENT_WAIT: Duration = Duration::from_secs(30);
/// Heartbeat interval the harness gives every server, in ms.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Heartbeat timeout the harness gives the name server, in ms.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 1000;
/// How many log lines a failure message shows.
const TAIL_LINES: usize = 25;
/// Most log lines kept per process (older ones are dropped; marks stay valid).
const MAX_LOG_LINES: usize = 200_000;

/// A binary built by cargo for this package.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "bin_nm" => PathBuf::from(env!("CARGO_BIN_EXE_bin_nm")),
        "bin_ss" => PathBuf::from(env!("CARGO_BIN_EXE_bin_ss")),
        "bin_client" => PathBuf::from(env!("CARGO_BIN_EXE_bin_client")),
        other => panic!("unknown binary {other}"),
    }
}

/// The JSON lines one process wrote, shared with the thread reading its stdout. It survives
/// restarts of the process, so a [`Mark`] taken before a restart stays meaningful.
#[derive(Default)]
pub struct Log {
    state: Mutex<LogState>,
    cv: Condvar,
}

#[derive(Default)]
struct LogState {
    /// Index of `lines[0]` in the whole history (lines before it were dropped).
    first: usize,
    lines: Vec<Value>,
    /// Lines on stdout that were not JSON objects (the servers must print none).
    non_json: Vec<String>,
    /// Standard error, kept for failure messages.
    stderr: Vec<String>,
    /// Readers currently attached (one per incarnation's stdout).
    open_readers: usize,
}

impl LogState {
    fn end(&self) -> usize {
        self.first + self.lines.len()
    }
}

/// A position in a process's log: waits "since" a mark see only later lines.
#[derive(Debug, Clone, Copy)]
pub struct Mark(pub usize);

impl Log {
    fn push(&self, v: Value) {
        let mut s = self.state.lock().unwrap();
        s.lines.push(v);
        if s.lines.len() > MAX_LOG_LINES {
            let drop = s.lines.len() - MAX_LOG_LINES / 2;
            s.lines.drain(..drop);
            s.first += drop;
        }
        self.cv.notify_all();
    }

    /// The current end of the log.
    pub fn mark(&self) -> Mark {
        Mark(self.state.lock().unwrap().end())
    }

    /// Every parsed line from `since` on.
    pub fn lines_since(&self, since: Mark) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        let from = since.0.saturating_sub(s.first).min(s.lines.len());
        s.lines[from..].to_vec()
    }

    /// Lines of stdout that were not JSON.
    pub fn non_json(&self) -> Vec<String> {
        self.state.lock().unwrap().non_json.clone()
    }

    /// The last lines (stdout and stderr) for a failure message.
    pub fn tail(&self) -> String {
        let s = self.state.lock().unwrap();
        let mut out = String::new();
        let from = s.lines.len().saturating_sub(TAIL_LINES);
        for l in &s.lines[from..] {
            out.push_str(&format!("    {l}\n"));
        }
        let from = s.stderr.len().saturating_sub(10);
        for l in &s.stderr[from..] {
            out.push_str(&format!("    stderr: {l}\n"));
        }
        for l in s.non_json.iter().rev().take(5) {
            out.push_str(&format!("    non-JSON stdout: {l}\n"));
        }
        out
    }

    /// Waits for a line with `event` at or after `since` that satisfies `pred`; returns it or
    /// `None` when `timeout` passes first.
    pub fn find(
        &self,
        since: Mark,
        event: &str,
        pred: &dyn Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().unwrap();
        let mut next = since.0;
        loop {
            let from = next.saturating_sub(s.first).min(s.lines.len());
            if let Some(v) = s.lines[from..]
                .iter()
                .find(|v| v["event"] == event && pred(v))
            {
                return Some(v.clone());
            }
            next = s.end();
            let now = Instant::now();
            // A process whose stdout is closed logs nothing more: fail now, not at the deadline.
            if now >= deadline || s.open_readers == 0 {
                return None;
            }
            s = self.cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Waits until at least `n` lines with `event` satisfying `pred` exist at or after `since`.
    pub fn wait_count(
        &self,
        since: Mark,
        event: &str,
        pred: &dyn Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().unwrap();
        loop {
            let from = since.0.saturating_sub(s.first).min(s.lines.len());
            let have = s.lines[from..]
                .iter()
                .filter(|v| v["event"] == event && pred(v))
                .count();
            if have >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || s.open_readers == 0 {
                return false;
            }
            s = self.cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// How many lines with `event` satisfying `pred` exist at or after `since`.
    pub fn count(&self, since: Mark, event: &str, pred: &dyn Fn(&Value) -> bool) -> usize {
        self.lines_since(since)
            .iter()
            .filter(|v| v["event"] == event && pred(v))
            .count()
    }
}

/// True if a log line names `who` in its `ss`, `name`, `user` or `file` field, or as a whole
/// word of its message (so `ss1` does not match `ss10`).
pub fn mentions(v: &Value, who: &str) -> bool {
    for k in ["ss", "name", "server", "user", "file"] {
        if v[k] == who {
            return true;
        }
    }
    let msg = v["msg"].as_str().unwrap_or("");
    msg.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '/'))
        .any(|w| w == who || w.trim_end_matches('.') == who)
}

/// True if a name-server log line says `ss` registered (refusals share the event name but are
/// logged at WARN or ERROR).
pub fn registered(v: &Value, ss: &str) -> bool {
    v["event"] == "nm_ss_register" && v["level"] == "INFO" && mentions(v, ss)
}

/// One server process (name server or storage server) and how to start it again.
pub struct Proc {
    /// `nm`, `ss1`, ...
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    /// Extra environment variables of every incarnation (test hooks).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// The network namespace (test host) it runs in, if any (`crate::netns`).
    netns: Option<String>,
    /// The log across all incarnations.
    pub log: Arc<Log>,
    /// The bound address of the current incarnation (`host:port`).
    pub addr: String,
}

impl Proc {
    fn spawn_env(
        name: &str,
        bin: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        netns: Option<String>,
        log: Arc<Log>,
    ) -> Proc {
        let mut p = Proc {
            name: name.to_string(),
            bin,
            args,
            env,
            child: None,
            netns,
            log,
            addr: String::new(),
        };
        p.launch();
        p
    }

    fn launch(&mut self) {
        let mut cmd = in_netns(self.netns.as_deref(), &self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({:?}): {e}", self.name, self.bin));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        self.log.state.lock().unwrap().open_readers += 1;
        let log = self.log.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => log.push(v),
                    _ => {
                        log.state.lock().unwrap().non_json.push(line);
                        log.cv.notify_all();
                    }
                }
            }
            log.state.lock().unwrap().open_readers -= 1;
            log.cv.notify_all();
        });
        let log = self.log.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = log.state.lock().unwrap();
                if s.stderr.len() < 10_000 {
                    s.stderr.push(line);
                }
            }
        });
        self.child = Some(child);
    }

    /// The PID of the running incarnation.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .id()
    }

    /// True if a process was started and has not been reaped yet.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
        }
    }

    /// Sends `sig` to the process by PID.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) with a PID we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Waits (bounded) for the process to exit and returns its exit code (`None` if killed by
    /// a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(timeout) {
            Ok(status) => status.expect("wait").code(),
            Err(_) => {
                // SAFETY: the PID is still ours: the waiting thread has not reaped it.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                panic!(
                    "{} (pid {pid}) did not exit within {timeout:?}; last log lines:\n{}",
                    self.name,
                    self.log.tail()
                );
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_exit(WAIT);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Kill by PID (our own child), then reap so no zombie is left behind.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How to build a cluster.
pub struct Builder {
    storage_servers: Vec<String>,
    nm_args: Vec<String>,
    ss_args: Vec<String>,
    seeds: Vec<(String, String, Vec<u8>)>,
    wait_register: bool,
    per_ss_args: BTreeMap<String, Vec<String>>,
    per_ss_env: BTreeMap<String, Vec<(String, String)>>,
    hosts: Option<Hosts>,
    tls: bool,
}

impl Builder {
    /// Runs the cluster with TLS: `bin_nm --init-tls` makes `<dir>/tls`, and every process
    /// started (clients included) gets `--tls-dir` pointing at it.
    pub fn tls(mut self) -> Builder {
        self.tls = true;
        self
    }

    /// Runs every process on a test host of its own (`crate::netns`): the name server and
    /// each storage server listen on `0.0.0.0` of their own host and are reached at its
    /// address, and clients run on a host of their own. Raw connections from the test process
    /// ([`Cluster::nm_conn`], [`Cluster::ss_conn`]) cannot reach them.
    pub fn on_hosts(mut self, hosts: Hosts) -> Builder {
        self.hosts = Some(hosts);
        self
    }

    /// Storage servers to start, by name (default `ss1`).
    pub fn servers(mut self, names: &[&str]) -> Builder {
        self.storage_servers = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Extra flags for the name server.
    pub fn nm_args(mut self, args: &[&str]) -> Builder {
        self.nm_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Extra flags for every storage server.
    pub fn ss_args(mut self, args: &[&str]) -> Builder {
        self.ss_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// One primary/backup pair: `ss1` and `ss1_backup`, started in that order.
    pub fn pair(self) -> Builder {
        self.servers(&["ss1", "ss1_backup"])
    }

    /// Extra flags for storage server `ss` only (after the flags every server gets).
    pub fn server_args(mut self, ss: &str, args: &[&str]) -> Builder {
        self.per_ss_args
            .entry(ss.to_string())
            .or_default()
            .extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// An environment variable for storage server `ss` only (e.g. a test fault hook); it is
    /// kept across restarts.
    pub fn server_env(mut self, ss: &str, key: &str, value: &str) -> Builder {
        self.per_ss_env
            .entry(ss.to_string())
            .or_default()
            .push((key.to_string(), value.to_string()));
        self
    }

    /// A file put under `<storage>/files/` of `ss` by hand before it starts (to be adopted).
    pub fn seed(mut self, ss: &str, rel: &str, bytes: &[u8]) -> Builder {
        self.seeds
            .push((ss.to_string(), rel.to_string(), bytes.to_vec()));
        self
    }

    /// Do not wait for the storage servers to register (for tests of refusals).
    pub fn no_register_wait(mut self) -> Builder {
        self.wait_register = false;
        self
    }

    /// Starts the name server, then every storage server, and waits until all are registered.
    pub fn start(self) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pairfs-it-")
            .tempdir()
            .expect("temp dir");
        let key_file = dir.path().join("cluster.key");
        let nm_log = Arc::new(Log::default());
        let mut nm_args: Vec<String> = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--http-port".into(),
            "0".into(),
            "--data".into(),
            path_str(&dir.path().join("nm")),
            "--cluster-key-file".into(),
            path_str(&key_file),
            "--heartbeat-interval-ms".into(),
            HEARTBEAT_INTERVAL_MS.to_string(),
            "--heartbeat-timeout-ms".into(),
            HEARTBEAT_TIMEOUT_MS.to_string(),
        ];
        let tls_dir = self.tls.then(|| {
            let d = dir.path().join("tls");
            let out = Command::new(bin("bin_nm"))
                .arg("--init-tls")
                .arg(&d)
                .output()
                .expect("run bin_nm --init-tls");
            assert!(
                out.status.success(),
                "bin_nm --init-tls failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            nm_args.extend(["--tls-dir".to_string(), path_str(&d)]);
            d
        });
        nm_args.extend(self.nm_args.iter().cloned());
        let mut hosts = self.hosts;
        let nm_netns = hosts.as_mut().map(|h| {
            h.add("nm");
            // Every interface of its own host, as a server other machines reach would be.
            nm_args.extend(["--host".to_string(), "0.0.0.0".to_string()]);
            h.netns("nm")
        });
        let mut nm = Proc::spawn_env("nm", bin("bin_nm"), nm_args, vec![], nm_netns, nm_log);
        nm.addr = reachable(
            hosts.as_ref(),
            "nm",
            &wait_listen(&nm, Mark(0), "nm_listen"),
        );
        let client_netns = hosts.as_mut().map(|h| {
            h.add("client");
            h.netns("client")
        });
        // Pin the port for restarts, so storage servers and clients find the name server again.
        let port = port_of(&nm.addr);
        let i = nm.args.iter().position(|a| a == "--port").unwrap();
        nm.args[i + 1] = port.to_string();

        let mut c = Cluster {
            dir,
            key_file,
            nm,
            ss: BTreeMap::new(),
            ss_args: self.ss_args.clone(),
            per_ss_args: self.per_ss_args.clone(),
            per_ss_env: self.per_ss_env.clone(),
            hosts,
            client_netns,
            tls_dir,
        };
        for (ss, rel, bytes) in &self.seeds {
            let p = c.storage(ss).join("files").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
        let since = c.nm.log.mark();
        for name in &self.storage_servers {
            c.add_ss(name);
        }
        if self.wait_register {
            for name in &self.storage_servers {
                c.wait_registered(name, since);
            }
        }
        c
    }
}

/// A running cluster in its own temp dir.
pub struct Cluster {
    key_file: PathBuf,
    /// The name server.
    pub nm: Proc,
    /// Storage servers by name.
    pub ss: BTreeMap<String, Proc>,
    ss_args: Vec<String>,
    per_ss_args: BTreeMap<String, Vec<String>>,
    per_ss_env: BTreeMap<String, Vec<(String, String)>>,
    /// The test hosts every process runs on, if the cluster spans several (dropped after the
    /// processes: fields drop in order).
    hosts: Option<Hosts>,
    /// The client's own host's namespace, with `hosts`.
    client_netns: Option<String>,
    /// The cluster's TLS directory when it runs with TLS.
    tls_dir: Option<PathBuf>,
    /// Declared last so it is removed only after every process was killed (fields drop in
    /// order).
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A cluster with a name server and one storage server `ss1`.
    pub fn start() -> Cluster {
        Cluster::builder().start()
    }

    /// A builder (default: one storage server `ss1`).
    pub fn builder() -> Builder {
        Builder {
            storage_servers: vec!["ss1".into()],
            nm_args: vec![],
            ss_args: vec![],
            seeds: vec![],
            wait_register: true,
            per_ss_args: BTreeMap::new(),
            per_ss_env: BTreeMap::new(),
            hosts: None,
            tls: false,
        }
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster key file all servers use.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The cluster key itself (for minting tickets in protocol tests).
    pub fn key(&self) -> pairfs::auth::ClusterKey {
        pairfs::auth::ClusterKey::load_or_create(&self.key_file).expect("cluster key")
    }

    /// The storage directory of `ss` (whether or not it runs).
    pub fn storage(&self, ss: &str) -> PathBuf {
        self.dir.path().join(ss)
    }

    /// The name server's `host:port`.
    pub fn nm_addr(&self) -> &str {
        &self.nm.addr
    }

    /// The client port address of `ss`.
    pub fn ss_addr(&self, ss: &str) -> &str {
        &self.proc(ss).addr
    }

    /// Starts storage server `name` with extra flags and environment variables of its own
    /// (waits for `ss_listen`, not for registration).
    pub fn add_ss_with(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) {
        self.per_ss_args
            .entry(name.to_string())
            .or_default()
            .extend(args.iter().map(|s| s.to_string()));
        self.per_ss_env
            .entry(name.to_string())
            .or_default()
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.add_ss(name);
    }

    /// Starts storage server `name` (waits for `ss_listen`, not for registration).
    pub fn add_ss(&mut self, name: &str) {
        let key = self.key_file.clone();
        self.add_ss_with_key(name, &key);
    }

    /// Starts storage server `name` with its own cluster key file (waits for `ss_listen`).
    pub fn add_ss_with_key(&mut self, name: &str, key_file: &Path) {
        let mut args: Vec<String> = vec![
            "--username".into(),
            name.into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--client-port".into(),
            "0".into(),
            "--nm-host".into(),
            "127.0.0.1".into(),
            "--nm-port".into(),
            port_of(&self.nm.addr).to_string(),
            "--storage".into(),
            path_str(&self.storage(name)),
            "--cluster-key-file".into(),
            path_str(key_file),
            "--heartbeat-interval-ms".into(),
            HEARTBEAT_INTERVAL_MS.to_string(),
        ];
        if let Some(d) = &self.tls_dir {
            args.extend(["--tls-dir".to_string(), path_str(d)]);
        }
        let netns = self.hosts.as_mut().map(|h| {
            h.add(name);
            let nm_host = h.addr("nm");
            args.extend([
                "--host".into(),
                "0.0.0.0".into(),
                "--nm-host".into(),
                nm_host,
            ]);
            h.netns(name)
        });
        args.extend(self.ss_args.iter().cloned());
        args.extend(self.per_ss_args.get(name).into_iter().flatten().cloned());
        let env = self.per_ss_env.get(name).cloned().unwrap_or_default();
        let log = Arc::new(Log::default());
        let mut p = Proc::spawn_env(name, bin("bin_ss"), args, env, netns, log);
        p.addr = reachable(
            self.hosts.as_ref(),
            name,
            &wait_listen(&p, Mark(0), "ss_listen"),
        );
        self.ss.insert(name.to_string(), p);
    }

    /// The process called `name` (`nm` or a storage server).
    pub fn proc(&self, name: &str) -> &Proc {
        if name == "nm" {
            return &self.nm;
        }
        self.ss
            .get(name)
            .unwrap_or_else(|| panic!("no process called {name}"))
    }

    fn proc_mut(&mut self, name: &str) -> &mut Proc {
        if name == "nm" {
            return &mut self.nm;
        }
        self.ss
            .get_mut(name)
            .unwrap_or_else(|| panic!("no process called {name}"))
    }

    /// The log of `name`.
    pub fn log(&self, name: &str) -> &Log {
        &self.proc(name).log
    }

    /// The current end of `name`'s log.
    pub fn mark(&self, name: &str) -> Mark {
        self.log(name).mark()
    }

    /// Waits for `event` from `name` (any time since it first started) matching `pred`.
    pub fn wait_event(
        &self,
        name: &str,
        event: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        self.wait_event_since(name, Mark(0), event, pred, timeout)
    }

    /// Waits for `event` from `name` logged at or after `since`, matching `pred`.
    pub fn wait_event_since(
        &self,
        name: &str,
        since: Mark,
        event: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let log = self.log(name);
        log.find(since, event, &pred, timeout).unwrap_or_else(|| {
            panic!(
                "{name} logged no matching {event} within {timeout:?} (or exited first); last log lines:\n{}",
                log.tail()
            )
        })
    }

    /// Waits for the name server to log that `ss` registered (at or after `since`).
    pub fn wait_registered(&self, ss: &str, since: Mark) -> Value {
        self.wait_event_since("nm", since, "nm_ss_register", |v| registered(v, ss), WAIT)
    }

    /// SIGKILL `name` and reap it.
    pub fn kill9(&mut self, name: &str) {
        self.proc_mut(name).kill9();
    }

    /// Sends `sig` (e.g. SIGSTOP, SIGCONT) to `name` by PID.
    pub fn signal(&self, name: &str, sig: i32) {
        self.proc(name).signal(sig);
    }

    /// SIGTERM `name` and wait (bounded) for it to exit; returns its exit code.
    pub fn term(&mut self, name: &str) -> Option<i32> {
        let p = self.proc_mut(name);
        p.signal(libc::SIGTERM);
        p.wait_exit(WAIT)
    }

    /// SIGKILLs the primary `primary` and waits until the name server has promoted its
    /// backup (`failover_complete` for its pair).
    pub fn kill_and_promote(&mut self, primary: &str) {
        let since = self.mark("nm");
        self.kill9(primary);
        self.wait_event_since(
            "nm",
            since,
            "failover_complete",
            |v| v["pair"] == primary,
            WAIT,
        );
    }

    /// Waits (up to 10 s) until `user` can READ `file`, as after a failover; panics if never.
    pub fn wait_readable(&self, user: &str, file: &str) {
        let read = poll_until(Duration::from_secs(10), || {
            self.client(user).run(&format!("READ {file}\n")).code == Some(0)
        });
        assert!(read, "READ {file} never succeeded");
    }

    /// Starts `name` again with the same flags (it must have exited) and waits until it is
    /// ready: the name server logs `nm_listen` and every running storage server has registered
    /// again; a storage server logs `ss_listen` and has registered.
    pub fn restart(&mut self, name: &str) {
        let nm_since = self.nm.log.mark();
        let p = self.proc_mut(name);
        assert!(!p.is_running(), "restart({name}) while it is still running");
        let since = p.log.mark();
        p.launch();
        let event = if name == "nm" {
            "nm_listen"
        } else {
            "ss_listen"
        };
        let addr = wait_listen(p, since, event);
        p.addr = addr;
        let addr = reachable(self.hosts.as_ref(), name, &self.proc(name).addr);
        self.proc_mut(name).addr = addr;
        if name == "nm" {
            let names: Vec<String> = self.ss.keys().cloned().collect();
            for ss in names {
                if self.ss.get_mut(&ss).unwrap().is_running() {
                    self.wait_registered(&ss, nm_since);
                }
            }
        } else {
            self.wait_registered(name, nm_since);
        }
    }

    /// Like [`Cluster::restart`], with an environment variable added for this and every later
    /// incarnation (a test hook).
    pub fn restart_with_env(&mut self, name: &str, key: &str, value: &str) {
        self.proc_mut(name)
            .env
            .push((key.to_string(), value.to_string()));
        self.restart(name);
    }

    /// Forgets the environment variable `key` of `name` for its later incarnations (a test
    /// hook set by [`Cluster::restart_with_env`]).
    pub fn clear_env(&mut self, name: &str, key: &str) {
        self.proc_mut(name).env.retain(|(k, _)| k != key);
    }

    /// A client for `user` (with `--tls-dir` when the cluster runs with TLS).
    pub fn client(&self, user: &str) -> Client {
        let c = self.plain_client(user);
        match &self.tls_dir {
            Some(d) => c.arg("--tls-dir").arg(&path_str(d)),
            None => c,
        }
    }

    /// A client for `user` without `--tls-dir`, whatever the cluster runs.
    pub fn plain_client(&self, user: &str) -> Client {
        Client {
            nm_addr: self.nm.addr.clone(),
            user: user.to_string(),
            extra: vec![],
            netns: self.client_netns.clone(),
            env: vec![],
        }
    }

    /// The cluster's TLS directory, when it runs with TLS.
    pub fn tls_dir(&self) -> Option<&Path> {
        self.tls_dir.as_deref()
    }

    /// A raw protocol connection to the name server (5 s timeouts).
    pub fn nm_conn(&self) -> Connection {
        raw_conn(&self.nm.addr)
    }

    /// A raw protocol connection to storage server `ss` (5 s timeouts).
    pub fn ss_conn(&self, ss: &str) -> Connection {
        raw_conn(self.ss_addr(ss))
    }

    /// A raw name-server session that said HELLO as `user` and proved its key.
    pub fn nm_session(&self, user: &str) -> Connection {
        let mut c = self.nm_conn();
        pairfs::identity::handshake(&mut c, user, &user_key(user)).expect("HELLO");
        c
    }
}

/// The config directory (`XDG_CONFIG_HOME`) every client of the test process uses, under
/// cargo's temp dir for tests: user keys never go to the real home, and a user name has one
/// key in every test (each cluster's name server binds it afresh). A test that needs another
/// key for a name gives that client its own directory with [`Client::env`].
pub fn config_home() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("it-config");
    std::fs::create_dir_all(&dir).expect("test config dir");
    dir
}

/// `user`'s key in [`config_home`], the one its `bin_client` runs prove (created on first use).
pub fn user_key(user: &str) -> pairfs::identity::UserKey {
    let path = config_home()
        .join("pairfs")
        .join("users")
        .join(format!("{user}.key"));
    pairfs::identity::UserKey::load_or_create(&path).expect("user key")
}

/// A blocking connection with 5 s timeouts.
pub fn raw_conn(addr: &str) -> Connection {
    let c = Connection::connect(addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Sends a request on a raw connection and returns the reply frame (ERR included).
pub fn call_raw(c: &mut Connection, msg: &Message) -> Frame {
    c.send(msg, &[]).expect("send");
    c.recv_some().expect("reply")
}

/// A command that runs `program` in network namespace `netns` (`ip netns exec`, which execs,
/// so the child's PID is the program's), or directly.
fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The address peers use for process `name` that logged `bound`: with test hosts, its host's
/// address and the bound port (it listens on a wildcard); otherwise `bound` itself.
fn reachable(hosts: Option<&Hosts>, name: &str, bound: &str) -> String {
    match hosts {
        Some(h) => pairfs::addr::join(&h.addr(name), port_of(bound)),
        None => bound.to_string(),
    }
}

fn wait_listen(p: &Proc, since: Mark, event: &str) -> String {
    let v = p
        .log
        .find(since, event, &|v| v["addr"].is_string(), WAIT)
        .unwrap_or_else(|| {
            panic!(
                "{} did not log {event} with an addr within {WAIT:?} (or exited first); last log lines:\n{}",
                p.name,
                p.log.tail()
            )
        });
    v["addr"].as_str().unwrap().to_string()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

/// A `bin_client` invocation for one user.
pub struct Client {
    nm_addr: String,
    user: String,
    extra: Vec<String>,
    /// The test host it runs on, when the cluster spans several.
    netns: Option<String>,
    env: Vec<(String, String)>,
}

/// What a piped client run produced.
#[derive(Debug)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status (`None` if killed by a signal).
    pub code: Option<i32>,
}

impl Output {
    /// The stdout lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Asserts stdout is exactly these lines.
    pub fn assert_lines(&self, expected: &[&str]) -> &Output {
        assert_eq!(
            self.lines(),
            expected,
            "client output differs; stderr:\n{}",
            self.stderr
        );
        self
    }

    /// Asserts stdout contains `needle`.
    pub fn assert_contains(&self, needle: &str) -> &Output {
        assert!(
            self.stdout.contains(needle),
            "client stdout lacks {needle:?}; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts stdout does not contain `needle`.
    pub fn assert_lacks(&self, needle: &str) -> &Output {
        assert!(
            !self.stdout.contains(needle),
            "client stdout has {needle:?}; stdout:\n{}",
            self.stdout
        );
        self
    }

    /// Asserts the exit status.
    pub fn assert_code(&self, code: i32) -> &Output {
        assert_eq!(
            self.code,
            Some(code),
            "exit status; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl Client {
    /// Adds raw command-line flags (replacing none of the defaults).
    pub fn arg(mut self, a: &str) -> Client {
        self.extra.push(a.to_string());
        self
    }

    /// Sets an environment variable of the client (e.g. another `XDG_CONFIG_HOME`).
    pub fn env(mut self, key: &str, value: &str) -> Client {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn command(&self) -> Command {
        let (host, port) = self.nm_addr.rsplit_once(':').unwrap();
        let mut cmd = in_netns(self.netns.as_deref(), &bin("bin_client"));
        cmd.args([
            "--nm-host",
            host,
            "--nm-port",
            port,
            "--username",
            &self.user,
        ])
        .args(&self.extra)
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", config_home())
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    }

    /// Runs the client with `input` piped to stdin and waits (bounded) for it to exit.
    pub fn run(&self, input: &str) -> Output {
        self.run_timeout(input, CLIENT_WAIT)
    }

    /// Like [`Client::run`] with an explicit deadline.
    pub fn run_timeout(&self, input: &str, timeout: Duration) -> Output {
        let mut child = self.command().spawn().expect("start bin_client");
        let pid = child.id();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_string();
        thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(out) => {
                let out = out.expect("client output");
                Output {
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    code: out.status.code(),
                }
            }
            Err(_) => {
                // SAFETY: our own child, not reaped yet (its waiter is still blocked).
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                panic!(
                    "bin_client ({}) did not finish within {timeout:?}",
                    self.user
                );
            }
        }
    }

    /// Starts an interactive (piped) client whose output is read line by line.
    pub fn spawn(&self) -> Session {
        let mut child = self.command().spawn().expect("start bin_client");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new((Mutex::new(SessionOut::default()), Condvar::new()));
        let l2 = lines.clone();
        let reader = thread::spawn(move || {
            let mut r = out;
            let mut buf = [0u8; 8192];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut o = l2.0.lock().unwrap();
                        o.raw.push_str(&String::from_utf8_lossy(&buf[..n]));
                        while let Some(i) = o.raw[o.cut..].find('\n') {
                            let line = o.raw[o.cut..o.cut + i].to_string();
                            o.lines.push(line);
                            o.cut += i + 1;
                        }
                        l2.1.notify_all();
                    }
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        Session {
            child: Some(child),
            stdin,
            lines,
            seen: 0,
            reader: Some(reader),
        }
    }
}

/// What an interactive client printed so far.
#[derive(Default)]
struct SessionOut {
    /// Everything, including a last line without its newline yet (STREAM words).
    raw: String,
    /// Complete lines.
    lines: Vec<String>,
    /// Byte offset in `raw` after the last complete line.
    cut: usize,
}

/// A client kept running, fed line by line (for concurrent write sessions).
pub struct Session {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Arc<(Mutex<SessionOut>, Condvar)>,
    seen: usize,
    reader: Option<thread::JoinHandle<()>>,
}

impl Session {
    /// Sends one line.
    pub fn send(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin already closed");
        writeln!(s, "{line}").expect("write to client");
        s.flush().unwrap();
    }

    /// Waits for the next output line not yet consumed that satisfies `pred` (lines before it
    /// are consumed too) and returns it.
    pub fn expect(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + CLIENT_WAIT;
        let (m, cv) = &*self.lines;
        let mut out = m.lock().unwrap();
        loop {
            while self.seen < out.lines.len() {
                let l = out.lines[self.seen].clone();
                self.seen += 1;
                if pred(&l) {
                    return l;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "client printed no {what} within {CLIENT_WAIT:?}; output:\n{}",
                    out.raw
                );
            }
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Waits until the raw output (complete lines or not) contains `needle`.
    pub fn expect_raw(&mut self, needle: &str) {
        let deadline = Instant::now() + CLIENT_WAIT;
        let (m, cv) = &*self.lines;
        let mut out = m.lock().unwrap();
        while !out.raw.contains(needle) {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "client printed no {needle:?} within {CLIENT_WAIT:?}; output:\n{}",
                    out.raw
                );
            }
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Waits for a line starting with `prefix`.
    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        self.expect(|l| l.starts_with(prefix), prefix)
    }

    /// Closes stdin and waits (bounded) for the exit status; returns every output line.
    pub fn finish(mut self) -> (Option<i32>, Vec<String>) {
        drop(self.stdin.take());
        let mut child = self.child.take().expect("client already finished");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let code = match rx.recv_timeout(CLIENT_WAIT) {
            Ok(s) => s.expect("wait client").code(),
            Err(_) => {
                // SAFETY: our own child, not reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                panic!("interactive client did not exit after end of input");
            }
        };
        // The process is gone, so its stdout is at EOF and the reader ends.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let raw = self.lines.0.lock().unwrap().raw.clone();
        (code, raw.lines().map(str::to_string).collect())
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.0.lock().unwrap().raw.clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw name-server session for `user` at `nm_addr` (HELLO answered by WELCOME).
pub fn hello(nm_addr: &str, user: &str) -> Result<Connection, WireError> {
    let mut c = Connection::connect(nm_addr, Duration::from_secs(5))
        .map_err(|e| WireError::new(pairfs::protocol::ErrorCode::Unavailable, e.to_string()))?;
    c.set_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| WireError::new(pairfs::protocol::ErrorCode::Unavailable, e.to_string()))?;
    pairfs::identity::handshake(&mut c, user, &user_key(user))?;
    Ok(c)
}

/// LOCATE on an open name-server session: the storage server's address and a ticket.
pub fn locate(
    nm: &mut Connection,
    file: &str,
    mode: AccessMode,
) -> Result<(String, Ticket), WireError> {
    let f = nm.call(
        &Message::Locate {
            avoid: None,
            file: file.into(),
            mode,
        },
        &[],
    )?;
    match f.msg {
        Message::Located { addr, ticket, .. } => Ok((addr, ticket)),
        other => panic!("LOCATE answered {other:?}"),
    }
}

/// READ through the protocol (LOCATE, then READ at the storage server): the whole content.
pub fn raw_read(nm_addr: &str, user: &str, file: &str) -> Result<Vec<u8>, WireError> {
    let mut nm = hello(nm_addr, user)?;
    let (addr, ticket) = locate(&mut nm, file, AccessMode::Read)?;
    read_with_ticket(&addr, file, ticket)
}

/// READ at a storage server with a given ticket.
pub fn read_with_ticket(addr: &str, file: &str, ticket: Ticket) -> Result<Vec<u8>, WireError> {
    let mut ss = Connection::connect(addr, Duration::from_secs(5))
        .map_err(|e| WireError::new(pairfs::protocol::ErrorCode::Unavailable, e.to_string()))?;
    ss.set_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| WireError::new(pairfs::protocol::ErrorCode::Unavailable, e.to_string()))?;
    let f = ss.call(
        &Message::Read {
            file: file.into(),
            ticket,
        },
        &[],
    )?;
    let Message::ReadOk { size, .. } = f.msg else {
        panic!("READ answered {:?}", f.msg);
    };
    let mut content = Vec::with_capacity(size as usize);
    loop {
        let f = ss.recv_some().map_err(WireError::from)?;
        match f.msg.into_result()? {
            Message::Chunk {} => content.extend_from_slice(&f.body),
            Message::End {} => break,
            other => panic!("READ stream carried {other:?}"),
        }
    }
    assert_eq!(content.len() as u64, size, "READ_OK size vs bytes sent");
    Ok(content)
}

/// One WRITE session through the protocol: open sentence `sentence`, apply `edits`, commit.
pub fn raw_write(
    nm_addr: &str,
    user: &str,
    file: &str,
    sentence: u64,
    edits: &[(u64, &str)],
) -> Result<FileState, WireError> {
    let mut nm = hello(nm_addr, user)?;
    let (addr, ticket) = locate(&mut nm, file, AccessMode::Write)?;
    let mut ss = Connection::connect(&addr, Duration::from_secs(5))
        .map_err(|e| WireError::new(pairfs::protocol::ErrorCode::Unavailable, e.to_string()))?;
    ss.set_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| WireError::new(pairfs::protocol::ErrorCode::Unavailable, e.to_string()))?;
    ss.call(
        &Message::WriteBegin {
            file: file.into(),
            sentence,
            ticket,
        },
        &[],
    )?;
    for (k, text) in edits {
        ss.call(&Message::Edit { word_index: *k }, text.as_bytes())?;
    }
    match ss.call(&Message::Commit {}, &[])?.msg {
        Message::Committed { state, .. } => Ok(state),
        other => panic!("COMMIT answered {other:?}"),
    }
}

/// CREATE through the protocol.
pub fn raw_create(nm_addr: &str, user: &str, file: &str) -> Result<(), WireError> {
    let mut nm = hello(nm_addr, user)?;
    nm.call(&Message::Create { file: file.into() }, &[])?;
    Ok(())
}

/// The bytes of `<storage of ss>/files/<file>`, or `None` if it is not there.
/// What `ss` holds of `file` as a replication peer sees it (PEEK_FILE): its state and the
/// versions of the history entries it holds.
pub fn held(
    c: &Cluster,
    ss: &str,
    file: &str,
) -> (Option<FileState>, Vec<pairfs::protocol::Version>) {
    let ticket = c.key().mint(
        pairfs::auth::NM_USER,
        file,
        pairfs::protocol::TicketOp::Store,
        ss,
        None,
    );
    let f = call_raw(
        &mut c.ss_conn(ss),
        &Message::PeekFile {
            file: file.into(),
            ticket,
        },
    );
    match f.msg {
        Message::Held { state, blobs, .. } => (state, blobs),
        other => panic!("PEEK_FILE on {ss} answered {other:?}"),
    }
}

/// `len` pseudo-random bytes (xorshift from `seed`; no two chunks alike).
pub fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

pub fn file_on_disk(c: &Cluster, ss: &str, file: &str) -> Option<Vec<u8>> {
    std::fs::read(c.storage(ss).join("files").join(file)).ok()
}

/// Every regular file under `<storage of ss>/files/`, by path relative to it, with its bytes.
pub fn files_tree(c: &Cluster, ss: &str) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, bytes);
            }
        }
    }
    let root = c.storage(ss).join("files");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// Polls (files on disk have no event of their own) until `cond` holds or `timeout` passes.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `file` on `backup`'s disk holds exactly the bytes it holds on `primary`'s
/// (present on the primary). Panics with both sizes and the name server's log tail.
pub fn wait_file_replicated(c: &Cluster, primary: &str, backup: &str, file: &str) -> Vec<u8> {
    let ok = poll_until(WAIT, || {
        let p = file_on_disk(c, primary, file);
        p.is_some() && p == file_on_disk(c, backup, file)
    });
    let p = file_on_disk(c, primary, file);
    let b = file_on_disk(c, backup, file);
    assert!(
        ok,
        "{file}: {backup} does not match {primary} within {WAIT:?} (primary {:?} bytes, backup {:?} bytes); nm log:\n{}",
        p.as_ref().map(Vec::len),
        b.as_ref().map(Vec::len),
        c.log("nm").tail()
    );
    p.unwrap()
}

/// Waits until `file` is gone from `ss`'s disk.
pub fn wait_file_absent(c: &Cluster, ss: &str, file: &str) {
    assert!(
        poll_until(WAIT, || file_on_disk(c, ss, file).is_none()),
        "{file} still on {ss} after {WAIT:?}; nm log:\n{}",
        c.log("nm").tail()
    );
}

/// Waits until the two storage servers' `files/` trees are equal byte for byte.
pub fn wait_trees_equal(c: &Cluster, primary: &str, backup: &str) {
    let ok = poll_until(WAIT, || files_tree(c, primary) == files_tree(c, backup));
    if !ok {
        let p: Vec<String> = files_tree(c, primary).into_keys().collect();
        let b: Vec<String> = files_tree(c, backup).into_keys().collect();
        panic!(
            "files/ of {primary} and {backup} differ after {WAIT:?}: {p:?} vs {b:?}; nm log:\n{}",
            c.log("nm").tail()
        );
    }
}

/// Waits for the name server's `replication_worker_success` for `file` at or after `since`
/// (the event a change's arrival on the backup is logged with), then checks the disks agree.
pub fn wait_replicated(c: &Cluster, since: Mark, file: &str) -> Vec<u8> {
    c.wait_event_since(
        "nm",
        since,
        "replication_worker_success",
        |v| mentions(v, file),
        WAIT,
    );
    wait_file_replicated(c, "ss1", "ss1_backup", file)
}

/// Peak resident set size (`VmHWM`) of a process in KiB, from `/proc/<pid>/status`.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}
