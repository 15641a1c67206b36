//! `pairfs_attack`: replays hostile socket and input patterns against a local cluster of the
//! real binaries and says, per attack, whether the cluster held.
//!
//! Every attack starts its own cluster (127.0.0.1, free ports, a temp dir; processes stopped
//! by PID) and prints one line `<attack>: held|FAILED (<figure>)`; the last line is
//! `attack: N held, M failed`, and the exit status is 1 if any failed. Every loop is bounded
//! in count and time.
//!
//! ```text
//! cargo build --release && target/release/pairfs_attack [--bins DIR] [--only a,c] [--frames N]
//! ```

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use pairfs::identity::UserKey;
use pairfs::protocol::{Connection, ErrorCode, Message};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Replays the attacks on a local cluster; exit status 1 if any was not held.
#[derive(Parser, Debug)]
#[command(name = "pairfs_attack", version)]
struct Args {
    /// Directory holding bin_nm, bin_ss and bin_client (default: this program's own).
    #[arg(long)]
    bins: Option<PathBuf>,
    /// Run only these attacks (letters a-i, comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Half-sent 4 MiB frames sent to the name server in attack (c) (a quarter of it to a
    /// storage server).
    #[arg(long, default_value_t = 1000)]
    frames: usize,
}

/// RSS above which a flood of half-sent frames counts as not held: the README's bound for
/// unfinished frames (64 MiB budget + 68 KiB per connection, ~132 MiB at 1,024 connections)
/// plus the process's own working set.
const RSS_LIMIT_MIB: u64 = 256;
/// How long a client command may take (or keep being retried) before it counts as locked out.
const LOCKOUT_LIMIT: Duration = Duration::from_secs(20);
/// The idle timeout given to servers in attack (b), when they know the flag.
const ATTACK_IDLE_S: &str = "5";
/// Cap on the time one step of waiting for a log line takes.
const WAIT: Duration = Duration::from_secs(20);

/// A started server process and the lines it logged.
struct Proc {
    name: String,
    child: Option<Child>,
    program: PathBuf,
    args: Vec<String>,
    nofile: Option<u64>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(name: &str, program: PathBuf, args: Vec<String>, nofile: Option<u64>) -> Result<Proc> {
        let mut p = Proc {
            name: name.to_string(),
            child: None,
            program,
            args,
            nofile,
            lines: Arc::new(Mutex::new(Vec::new())),
        };
        p.launch()?;
        Ok(p)
    }

    fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = self.nofile {
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", self.program.display()))?;
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = self.lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
                    if l.len() < 200_000 {
                        l.push(line);
                    }
                }
            });
        }
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn mark(&self) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits for a JSON line with `event` after `since` matching `pred`.
    fn wait(
        &mut self,
        since: usize,
        event: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
                for line in l.iter().skip(since) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                        if v["event"] == event && pred(&v) {
                            return Ok(v);
                        }
                    }
                }
            }
            if self.exited() || Instant::now() >= deadline {
                let tail: Vec<String> = self
                    .lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .rev()
                    .take(3)
                    .cloned()
                    .collect();
                bail!("{} logged no {event} ({})", self.name, tail.join(" | "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// SIGTERM by PID, then SIGKILL if it lingers; reaps it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its PID.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Options for one cluster.
#[derive(Default, Clone)]
struct Opts {
    nm_args: Vec<String>,
    nm_nofile: Option<u64>,
    pair: bool,
    ss_args: Vec<String>,
    key_mode: Option<u32>,
}

/// A name server and storage servers in a temp dir of their own.
struct Cluster {
    bins: PathBuf,
    dir: PathBuf,
    key: PathBuf,
    nm: Proc,
    nm_addr: String,
    http_addr: String,
    ss: Vec<(String, Proc, String)>,
}

impl Cluster {
    fn start(bins: &Path, o: &Opts) -> Result<Cluster> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("pairfs-attack-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("cluster.key");
        std::fs::write(&key, "0123456789abcdef".repeat(4))?;
        std::fs::set_permissions(
            &key,
            std::os::unix::fs::PermissionsExt::from_mode(o.key_mode.unwrap_or(0o600)),
        )?;
        let http = free_port()?;
        let mut args = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--http-port".into(),
            http.to_string(),
            "--data".into(),
            dir.join("nm").display().to_string(),
            "--cluster-key-file".into(),
            key.display().to_string(),
            "--heartbeat-interval-ms".into(),
            "200".into(),
            "--heartbeat-timeout-ms".into(),
            "3000".into(),
        ];
        args.extend(o.nm_args.iter().cloned());
        let mut nm = Proc::start("nm", bins.join("bin_nm"), args, o.nm_nofile)?;
        let v = nm.wait(0, "nm_listen", |v| v["addr"].is_string())?;
        let nm_addr = v["addr"].as_str().unwrap_or_default().to_string();
        let mut c = Cluster {
            bins: bins.to_path_buf(),
            dir,
            key,
            nm,
            nm_addr,
            http_addr: format!("127.0.0.1:{http}"),
            ss: Vec::new(),
        };
        let names: &[&str] = if o.pair {
            &["ss1", "ss1_backup"]
        } else {
            &["ss1"]
        };
        for name in names {
            c.add_ss(name, &o.ss_args)?;
        }
        Ok(c)
    }

    fn add_ss(&mut self, name: &str, extra: &[String]) -> Result<()> {
        let since = self.nm.mark();
        let port = self
            .nm_addr
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut args = vec![
            "--nm-host".into(),
            "127.0.0.1".into(),
            "--nm-port".into(),
            port,
            "--host".into(),
            "127.0.0.1".into(),
            "--client-port".into(),
            "0".into(),
            "--storage".into(),
            self.dir.join(name).display().to_string(),
            "--username".into(),
            name.to_string(),
            "--heartbeat-interval-ms".into(),
            "200".into(),
            "--cluster-key-file".into(),
            self.key.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let mut p = Proc::start(name, self.bins.join("bin_ss"), args, None)?;
        let v = p.wait(0, "ss_listen", |v| v["addr"].is_string())?;
        let addr = v["addr"].as_str().unwrap_or_default().to_string();
        let n = name.to_string();
        self.nm.wait(since, "nm_ss_register", move |v| {
            v["ss"] == n.as_str() || v["name"] == n.as_str()
        })?;
        self.ss.push((name.to_string(), p, addr));
        Ok(())
    }

    fn ss_addr(&self, name: &str) -> String {
        self.ss
            .iter()
            .find(|s| s.0 == name)
            .map(|s| s.2.clone())
            .unwrap_or_default()
    }

    /// Runs `bin_client` as `user` with `input` on stdin; its stdout+stderr, and whether it
    /// exited 0, or an error if it did not finish within `timeout`.
    fn client(&self, user: &str, input: &str, timeout: Duration) -> Result<(bool, String)> {
        self.client_env(user, input, timeout, &[])
    }

    fn client_env(
        &self,
        user: &str,
        input: &str,
        timeout: Duration,
        env: &[(&str, String)],
    ) -> Result<(bool, String)> {
        let (host, port) = self.nm_addr.rsplit_once(':').unwrap_or(("127.0.0.1", "0"));
        let mut cmd = Command::new(self.bins.join("bin_client"));
        cmd.args(["--nm-host", host, "--nm-port", port, "--username", user])
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("start bin_client")?;
        if let Some(mut stdin) = child.stdin.take() {
            let input = input.to_string();
            std::thread::spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
        }
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                let text = reader.join().unwrap_or_default();
                return Ok((status.success(), text));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("bin_client did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.ss {
            s.1.stop();
        }
        self.nm.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `bin` lists `flag` in its --help (older binaries lack the newer flags).
fn knows_flag(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

fn connect(addr: &str, timeout: Duration) -> Option<TcpStream> {
    let sa: SocketAddr = addr.parse().ok()?;
    TcpStream::connect_timeout(&sa, timeout).ok()
}

/// Retries `VIEW` until it succeeds or `limit` passes; the time it took, or None.
fn time_until_served(c: &Cluster, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        let left = limit
            .saturating_sub(t.elapsed())
            .max(Duration::from_secs(1));
        if let Ok((true, _)) = c.client("probe", "VIEW\n", left) {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// An attack's outcome: held or not, and the figure that says so.
type Outcome = Result<(bool, String)>;

/// An attack: its letter, its name, and how to run it.
type Attack<'a> = (&'static str, &'static str, Box<dyn Fn() -> Outcome + 'a>);

/// (a) 1,200 connections opened and closed against a name server whose descriptor limit is
/// 256 and whose --max-connections is above it; then a client command must succeed.
fn burst(bins: &Path) -> Outcome {
    let c = Cluster::start(
        bins,
        &Opts {
            nm_args: vec!["--max-connections".into(), "1024".into()],
            nm_nofile: Some(256),
            ..Opts::default()
        },
    )?;
    let t = Instant::now();
    let mut socks = Vec::new();
    for _ in 0..1200 {
        if t.elapsed() > Duration::from_secs(15) {
            break;
        }
        if let Some(s) = connect(&c.nm_addr, Duration::from_millis(300)) {
            socks.push(s);
        }
    }
    let opened = socks.len();
    drop(socks);
    match time_until_served(&c, LOCKOUT_LIMIT) {
        Some(d) => Ok((
            true,
            format!(
                "{opened} connections; served again after {:.1} s",
                d.as_secs_f64()
            ),
        )),
        None => Ok((
            false,
            format!(
                "{opened} connections; clients locked out for over {} s",
                LOCKOUT_LIMIT.as_secs()
            ),
        )),
    }
}

/// (b) idle HELLO sockets up to the limit: a client command and a storage server's
/// restart and registration must succeed; then ss1's slots filled with silent sockets, and
/// READ must still succeed (other member or after the idle drop).
fn idle(bins: &Path) -> Outcome {
    let mut opts = Opts {
        pair: true,
        ..Opts::default()
    };
    if knows_flag(&bins.join("bin_nm"), "--idle-timeout-s") {
        opts.nm_args = vec!["--idle-timeout-s".into(), ATTACK_IDLE_S.into()];
        opts.ss_args = vec!["--idle-timeout-s".into(), ATTACK_IDLE_S.into()];
    }
    let mut c = Cluster::start(bins, &opts)?;
    let (ok, out) = c.client(
        "alice",
        "CREATE idle.txt\nWRITE idle.txt 0\n0 Still readable.\nETIRW\n",
        LOCKOUT_LIMIT,
    )?;
    if !ok {
        bail!("setup failed: {}", out.trim());
    }
    let t = Instant::now();
    let mut idle = Vec::new();
    let mut refused = false;
    for i in 0..1100 {
        if t.elapsed() > Duration::from_secs(20) {
            break;
        }
        let Ok(mut conn) = Connection::connect(&c.nm_addr, Duration::from_millis(500)) else {
            break;
        };
        let _ = conn.set_timeout(Some(Duration::from_secs(2)));
        match conn.call(
            &Message::Hello {
                user: format!("idle{i}"),
            },
            &[],
        ) {
            Ok(_) => idle.push(conn),
            Err(e) if e.code == ErrorCode::Limit => {
                refused = true;
                break;
            }
            Err(_) => break,
        }
    }
    let filled = idle.len();
    // A storage server restarts and must register while the client slots are taken.
    let since = c.nm.mark();
    let (name, mut p, _) = c.ss.remove(1);
    p.stop();
    p.launch()?;
    let registered =
        c.nm.wait(since, "nm_ss_register", |v| v["ss"] == "ss1_backup")
            .is_ok();
    let served = time_until_served(&c, LOCKOUT_LIMIT);
    c.ss.push((name, p, String::new()));
    // A storage server's slots filled with silent sockets; READ must still be served.
    let ss1 = c.ss_addr("ss1");
    let mut silent = Vec::new();
    for _ in 0..300 {
        match connect(&ss1, Duration::from_millis(300)) {
            Some(s) => silent.push(s),
            None => break,
        }
    }
    let t = Instant::now();
    let mut read_ok = None;
    while t.elapsed() < LOCKOUT_LIMIT {
        if let Ok((true, out)) = c.client("alice", "READ idle.txt\n", LOCKOUT_LIMIT) {
            if out.contains("Still readable.") {
                read_ok = Some(t.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    drop(silent);
    let held = registered && served.is_some() && read_ok.is_some();
    let secs = |d: Option<Duration>| {
        d.map_or(format!(">{}", LOCKOUT_LIMIT.as_secs()), |d| {
            format!("{:.1}", d.as_secs_f64())
        })
    };
    Ok((
        held,
        format!(
            "{filled} idle sessions{}; client locked out {} s; registration {}; READ with ss1 full after {} s",
            if refused { " (limit reached)" } else { "" },
            secs(served),
            if registered { "ok" } else { "failed" },
            secs(read_ok)
        ),
    ))
}

/// Says who it is on `s` as `user` (HELLO, then PROVE when challenged), so the frame that
/// follows is an introduced client's and may be granted frame budget; a name server that
/// welcomes at once (an older release) is fine too.
fn introduce(s: &TcpStream, user: &str, key: &UserKey) -> Result<()> {
    let mut conn = Connection::new(s.try_clone()?);
    conn.set_timeout(Some(Duration::from_secs(5)))?;
    let hello = Message::Hello { user: user.into() };
    let reply = conn.call(&hello, b"").map_err(|e| anyhow!("HELLO: {e}"))?;
    if let Message::Challenge { nonce } = reply.msg {
        let prove = Message::Prove {
            key: key.public_hex(),
            sig: key.prove(user, &nonce),
        };
        conn.call(&prove, b"").map_err(|e| anyhow!("PROVE: {e}"))?;
    }
    Ok(())
}

/// Opens `n` connections to `addr`, each sending a 4 MiB frame's header and as much of its
/// body (short of its end) as the socket takes without waiting; with `key`, each first
/// introduces itself as a user of its own.
fn half_sent(addr: &str, n: usize, key: Option<&UserKey>) -> Vec<TcpStream> {
    let header = format!(
        "{{\"v\":1,\"op\":\"CHUNK\",\"len\":{},\"crc\":1}}\n",
        4 * 1024 * 1024
    );
    let body = vec![b'x'; 4 * 1024 * 1024 - 1];
    let t = Instant::now();
    let mut held = Vec::new();
    for _ in 0..n {
        if t.elapsed() > Duration::from_secs(30) {
            break;
        }
        let Some(mut s) = connect(addr, Duration::from_millis(300)) else {
            continue;
        };
        if let Some(key) = key {
            if introduce(&s, &format!("flood{}", held.len()), key).is_err() {
                continue;
            }
        }
        if s.write_all(header.as_bytes()).is_err() || s.set_nonblocking(true).is_err() {
            continue;
        }
        let mut sent = 0;
        for _ in 0..64 {
            match s.write(&body[sent..]) {
                Ok(k) if k > 0 && sent + k < body.len() => sent += k,
                _ => break,
            }
        }
        held.push(s);
    }
    held
}

/// Largest RSS of `pid` over `span`.
fn peak_rss(pid: u32, span: Duration) -> u64 {
    let t = Instant::now();
    let mut peak = 0;
    while t.elapsed() < span {
        peak = peak.max(rss_mib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    peak
}

/// (c) half-sent 4 MiB frames: `frames` to the name server, a quarter to a storage server;
/// both must stay under [`RSS_LIMIT_MIB`].
fn frames(bins: &Path, frames: usize) -> Outcome {
    let c = Cluster::start(bins, &Opts::default())?;
    let nm_pid = c.nm.pid();
    let ss_pid = c.ss.first().map_or(0, |s| s.1.pid());
    let before = rss_mib(nm_pid);
    // Introduced clients: a stranger's large frame is refused at once, so only users who
    // proved a key can hold frame budget at all.
    let key = UserKey::from_seed([7; 32]);
    let held_nm = half_sent(&c.nm_addr, frames, Some(&key));
    let nm_peak = peak_rss(nm_pid, Duration::from_secs(2));
    let served = time_until_served(&c, LOCKOUT_LIMIT).is_some();
    drop(held_nm);
    let n_ss = frames / 4;
    let held_ss = half_sent(&c.ss_addr("ss1"), n_ss, None);
    let ss_peak = peak_rss(ss_pid, Duration::from_secs(2));
    drop(held_ss);
    Ok((
        nm_peak < RSS_LIMIT_MIB && ss_peak < RSS_LIMIT_MIB && served,
        format!(
            "name server RSS {before} -> {nm_peak} MiB under {frames}, storage server {ss_peak} MiB under {n_ss}; limit {RSS_LIMIT_MIB} MiB{}",
            if served { "" } else { "; clients not served meanwhile" }
        ),
    ))
}

/// One GET of `path`; the answer and how long it took.
fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(String, Duration)> {
    let t = Instant::now();
    let mut s = connect(addr, timeout).ok_or_else(|| anyhow!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok((out, t.elapsed()))
}

/// (d) one byte every 1.5 s on one HTTP connection; `/health` on others within 1 s.
fn slow_http(bins: &Path) -> Outcome {
    let c = Cluster::start(bins, &Opts::default())?;
    let mut slow =
        connect(&c.http_addr, Duration::from_secs(1)).ok_or_else(|| anyhow!("no HTTP port"))?;
    let mut worst = Duration::ZERO;
    let mut failures = 0;
    for i in 0..4 {
        let _ = slow.write_all(&b"GET /"[i % 5..i % 5 + 1]);
        match http_get(&c.http_addr, "/health", Duration::from_secs(3)) {
            Ok((out, d)) if out.ends_with("ok\n") => worst = worst.max(d),
            _ => {
                failures += 1;
                worst = worst.max(Duration::from_secs(3));
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    Ok((
        failures == 0 && worst < Duration::from_secs(1),
        format!(
            "slowest /health {:.2} s while a reader trickled{}",
            worst.as_secs_f64(),
            if failures > 0 {
                format!("; {failures} unanswered")
            } else {
                String::new()
            }
        ),
    ))
}

/// (e) a script run with EXEC prints the cluster key file.
fn exec_key(bins: &Path) -> Outcome {
    let c = Cluster::start(bins, &Opts::default())?;
    let local = c.dir.join("steal.sh");
    std::fs::write(&local, format!("cat {}\n", c.key.display()))?;
    let (_, out) = c.client(
        "alice",
        &format!("UPLOAD {} steal.sh\nEXEC steal.sh\n", local.display()),
        LOCKOUT_LIMIT,
    )?;
    let key = std::fs::read_to_string(&c.key)?;
    let leaked = out.contains(key.trim());
    Ok((
        !leaked,
        if leaked {
            "EXEC output contains the cluster key".into()
        } else {
            "the key did not appear in EXEC output".into()
        },
    ))
}

/// (f) a second OS account (another HOME, so another user key) claims `alice`.
fn claim_user(bins: &Path) -> Outcome {
    let c = Cluster::start(bins, &Opts::default())?;
    let home = |n: &str| -> Result<Vec<(&'static str, String)>> {
        let h = c.dir.join(n);
        std::fs::create_dir_all(h.join(".config"))?;
        Ok(vec![
            ("HOME", h.display().to_string()),
            ("XDG_CONFIG_HOME", h.join(".config").display().to_string()),
        ])
    };
    let (ok1, out1) = c.client_env("alice", "VIEW\n", LOCKOUT_LIMIT, &home("home_a")?)?;
    if !ok1 {
        bail!("first login failed: {}", out1.trim());
    }
    let (_, out2) = c.client_env("alice", "VIEW\n", LOCKOUT_LIMIT, &home("home_b")?)?;
    let refused = out2.contains("UNAUTHORIZED");
    Ok((
        refused,
        if refused {
            "refused with UNAUTHORIZED".into()
        } else {
            format!(
                "second key accepted as alice ({})",
                out2.lines().next().unwrap_or("").trim()
            )
        },
    ))
}

/// (g) a 100 KB single sentence uploaded, then edited in a write session.
fn long_sentence(bins: &Path) -> Outcome {
    let c = Cluster::start(bins, &Opts::default())?;
    let local = c.dir.join("long.txt");
    // 34,000 words of 3 bytes: about 100 KB, past the 64 KiB a frame header may hold.
    let text: String = (0..34_000).map(|i| format!("w{} ", i % 10)).collect();
    std::fs::write(&local, format!("{}end.", text))?;
    let (_, out) = c.client(
        "alice",
        &format!(
            "UPLOAD {} long.txt\nWRITE long.txt 0\n0 word\nETIRW\n",
            local.display()
        ),
        LOCKOUT_LIMIT,
    )?;
    let ok = out.contains("Write Successful");
    Ok((
        ok,
        if ok {
            "a 100 KB sentence committed".into()
        } else {
            format!(
                "not committed: {}",
                out.lines()
                    .find(|l| l.contains("ERROR"))
                    .unwrap_or("no answer")
                    .chars()
                    .take(120)
                    .collect::<String>()
            )
        },
    ))
}

/// (h) a cluster key file readable by others is refused at start; stored files are 0600.
fn modes(bins: &Path) -> Outcome {
    let refused = match Cluster::start(
        bins,
        &Opts {
            key_mode: Some(0o666),
            ..Opts::default()
        },
    ) {
        Err(_) => true,
        Ok(mut c) => {
            std::thread::sleep(Duration::from_millis(300));
            c.nm.exited()
        }
    };
    let c = Cluster::start(bins, &Opts::default())?;
    let (ok, out) = c.client(
        "alice",
        "CREATE m.txt\nWRITE m.txt 0\n0 Private.\nETIRW\n",
        LOCKOUT_LIMIT,
    )?;
    if !ok {
        bail!("setup failed: {}", out.trim());
    }
    let mut loose = Vec::new();
    let mut stack = vec![c.dir.join("ss1")];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > 10_000 {
                break;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0 {
                loose.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    Ok((
        refused && loose.is_empty(),
        format!(
            "0666 key {}; {} stored files readable by others{}",
            if refused { "refused" } else { "accepted" },
            loose.len(),
            loose
                .first()
                .map(|f| format!(" (e.g. {f})"))
                .unwrap_or_default()
        ),
    ))
}

/// (i) a file name with U+202E (right-to-left override).
fn bidi_name(bins: &Path) -> Outcome {
    let c = Cluster::start(bins, &Opts::default())?;
    let (_, out) = c.client("alice", "CREATE evil\u{202E}txt.sh\n", LOCKOUT_LIMIT)?;
    let refused = out.contains("ERROR");
    Ok((
        refused,
        if refused {
            "refused".into()
        } else {
            "created".into()
        },
    ))
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let bins = args.bins.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("target/release"))
    });
    // The attacks open well over a thousand sockets from here.
    pairfs::limits::raise_nofile();
    let frames_n = args.frames.clamp(1, 5_000);
    let attacks: Vec<Attack<'_>> = vec![
        ("a", "connection burst", Box::new(|| burst(&bins))),
        ("b", "idle sockets", Box::new(|| idle(&bins))),
        (
            "c",
            "half-sent frames",
            Box::new(|| frames(&bins, frames_n)),
        ),
        ("d", "slow HTTP reader", Box::new(|| slow_http(&bins))),
        (
            "e",
            "EXEC reads the cluster key",
            Box::new(|| exec_key(&bins)),
        ),
        (
            "f",
            "username claimed by another key",
            Box::new(|| claim_user(&bins)),
        ),
        (
            "g",
            "sentence over 64 KiB",
            Box::new(|| long_sentence(&bins)),
        ),
        ("h", "key and file permissions", Box::new(|| modes(&bins))),
        (
            "i",
            "bidi control in a file name",
            Box::new(|| bidi_name(&bins)),
        ),
    ];
    let (mut held, mut failed) = (0, 0);
    for (letter, name, run) in attacks {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == letter) {
            continue;
        }
        let (ok, figure) = match run() {
            Ok(x) => x,
            Err(e) => (false, format!("error: {e:#}")),
        };
        if ok {
            held += 1;
        } else {
            failed += 1;
        }
        println!(
            "({letter}) {name}: {} ({figure})",
            if ok { "held" } else { "FAILED" }
        );
    }
    println!("attack: {held} held, {failed} failed");
    std::process::exit(i32::from(failed > 0));
}
