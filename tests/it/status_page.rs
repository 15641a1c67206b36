//! The status page at `/`, rendered by a real headless Chromium driven over the DevTools
//! protocol (`--remote-debugging-pipe`: NUL-separated JSON messages on descriptors 3 and 4).
//! One page session stays open: after a primary is SIGKILLed, the page must show its pair
//! failing within 3 s without being reloaded; when it returns with a copy edited by hand, the
//! events list the failover, the quarantine of that copy and the recovery. At 1280x800 (a
//! laptop) and 390x844 (a phone) nothing on the page scrolls sideways. Screenshots at both
//! sizes land in the test's temp directory (and, when `PAIRFS_SCREENS_DIR` is set, are copied
//! there).
//!
//! Without Chromium (`scripts/deps.sh` installs it where apt is available) the test prints
//! SKIPPED with the reason.

use crate::harness::*;
use crate::metrics::{free_port, nm_http};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Chromium binary on `PATH`, if any.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A pipe whose two ends are close-on-exec and numbered above 9 (so that placing them on
/// descriptors 3 and 4 in the child never overwrites one with the other).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let high = |fd: RawFd| {
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(h >= 10);
        unsafe { libc::close(fd) };
        unsafe { OwnedFd::from_raw_fd(h) }
    };
    (high(fds[0]), high(fds[1]))
}

/// A headless Chromium with one page open, driven over the DevTools pipe.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(bin: &Path, url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (cmd_r, cmd_w) = pipe();
        let (out_r, out_w) = pipe();
        let (cr, ow) = (cmd_r.as_raw_fd(), out_w.as_raw_fd());
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(cr, 3) < 0 || libc::dup2(ow, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop((cmd_r, out_w));
        let mut b = Browser {
            child,
            to: std::fs::File::from(cmd_w),
            from: BufReader::new(std::fs::File::from(out_r)),
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let t = b.call(None, "Target.createTarget", json!({ "url": url }));
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = b.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = a["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends one command and returns its result (events and other answers are skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "Chromium closed its DevTools pipe");
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let s = self.session.clone();
        let r = self.call(
            Some(&s),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// What the rendered page shows: pair states by primary, server names, and its text.
    fn shown(&mut self) -> Value {
        self.eval(
            "JSON.stringify({\
               pairs: Object.fromEntries([...document.querySelectorAll('[data-pair]')]\
                 .map(e => [e.dataset.pair, e.dataset.state])),\
               servers: [...document.querySelectorAll('[data-server]')].map(e => e.dataset.server),\
               banner: document.getElementById('banner').textContent,\
               events: [...document.querySelectorAll('[data-event]')]\
                 .map(e => ({ kind: e.dataset.event, text: e.innerText })),\
               text: document.body.innerText })",
        )
        .as_str()
        .map(|s| serde_json::from_str(s).unwrap())
        .unwrap_or(Value::Null)
    }

    /// Polls the rendered page until `ok` holds; returns what it showed then.
    fn wait_shown(&mut self, within: Duration, ok: &impl Fn(&Value) -> bool) -> Option<Value> {
        let t = Instant::now();
        loop {
            let v = self.shown();
            if ok(&v) {
                return Some(v);
            }
            if t.elapsed() > within {
                eprintln!("page showed: {v}");
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Lays the page out as a `width` x `height` viewport (a phone's when `mobile`).
    fn resize(&mut self, width: u32, height: u32, mobile: bool) {
        let s = self.session.clone();
        self.call(
            Some(&s),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        );
    }

    /// Boxes wider than what they show (the page itself, and each table's scroll box), as
    /// `[what, scrollWidth, clientWidth]`.
    fn overflowing(&mut self) -> Value {
        let v = self.eval(
            "JSON.stringify([['page', document.documentElement.scrollWidth, window.innerWidth]]\
               .concat([...document.querySelectorAll('.scroll')]\
                 .map(e => [e.closest('section').querySelector('h2').textContent,\
                            e.scrollWidth, e.clientWidth]))\
               .filter(([, sw, cw]) => sw > cw))",
        );
        serde_json::from_str(v.as_str().unwrap()).unwrap()
    }

    /// Screenshots of the viewport at 1280x800 and 390x844 as `{name}_1280.png` and
    /// `{name}_390.png` (and of the whole phone page as `{name}_390_full.png` when `full`),
    /// once the page shows what `ok` accepts at each size; nothing may scroll sideways.
    fn shots(&mut self, dir: &Path, name: &str, full: bool, ok: impl Fn(&Value) -> bool) {
        for (w, h, mobile) in [(1280, 800, false), (390, 844, true)] {
            self.resize(w, h, mobile);
            self.wait_shown(WAIT, &ok)
                .unwrap_or_else(|| panic!("{name} at {w}x{h}: the page stopped showing it"));
            let wide = self.overflowing();
            assert_eq!(wide, json!([]), "{name} at {w}x{h}: scrolls sideways");
            self.screenshot(&dir.join(format!("{name}_{w}.png")), false);
            if full && mobile {
                self.screenshot(&dir.join(format!("{name}_{w}_full.png")), true);
            }
        }
    }

    fn screenshot(&mut self, to: &Path, whole_page: bool) {
        let s = self.session.clone();
        let r = self.call(
            Some(&s),
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": whole_page }),
        );
        std::fs::write(to, base64_decode(r["data"].as_str().unwrap())).unwrap();
        println!("screenshot: {}", to.display());
        if let Some(dir) = std::env::var_os("PAIRFS_SCREENS_DIR") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(to, Path::new(&dir).join(to.file_name().unwrap()));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= u32::from(b) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn base64_decodes_padding() {
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("aGV5"), b"hey");
    assert_eq!(base64_decode("YQ=="), b"a");
}

#[test]
fn status_page_shows_servers_pairs_and_a_failing_pair_without_reload() {
    let Some(bin) = chromium() else {
        println!("SKIPPED: no chromium on PATH (scripts/deps.sh installs it with apt-get)");
        return;
    };
    let port = free_port();
    let mut c = Cluster::builder()
        .servers(&["ss1", "ss1_backup", "ss2", "ss2_backup"])
        .nm_args(&["--http-port", &port])
        .start();
    let addr = nm_http(&c);
    c.client("alice")
        .run("CREATE page.txt\nWRITE page.txt 0\n0 Shown on the page.\nETIRW\n")
        .assert_code(0);
    let mut b = Browser::open(&bin, &format!("http://{addr}/"));
    let dir = c.dir().to_path_buf();
    let both_active = |v: &Value| {
        v["pairs"]["ss1"] == "ACTIVE"
            && v["pairs"]["ss2"] == "ACTIVE"
            && v["servers"].as_array().is_some_and(|s| s.len() == 4)
    };
    let healthy = b
        .wait_shown(WAIT, &both_active)
        .expect("the page never showed both pairs ACTIVE and four servers");
    for s in ["ss1", "ss1_backup", "ss2", "ss2_backup"] {
        assert!(healthy["servers"].as_array().unwrap().contains(&json!(s)));
    }
    assert_eq!(healthy["banner"], "");
    b.shots(&dir, "status_healthy", false, both_active);

    // Back at the laptop's size, a primary fails.
    b.resize(1280, 800, false);
    c.kill9("ss1");
    let t = Instant::now();
    let is_failing = |v: &Value| {
        matches!(
            v["pairs"]["ss1"].as_str(),
            Some("FAILING_OVER" | "PRIMARY_DOWN")
        )
    };
    let failing = b
        .wait_shown(Duration::from_secs(3), &is_failing)
        .unwrap_or_else(|| panic!("no failing pair shown within 3 s ({:?})", t.elapsed()));
    assert_eq!(failing["pairs"]["ss2"], "ACTIVE");
    assert!(
        failing["banner"].as_str().unwrap().contains("ss1"),
        "{failing}"
    );
    b.shots(&dir, "status_failing", false, is_failing);
    // The failover completes and the event list says so.
    let failed_over = |v: &Value| {
        v["pairs"]["ss1"] == "PRIMARY_DOWN" && v["text"].as_str().unwrap().contains("FAILOVER")
    };
    b.wait_shown(WAIT, &failed_over)
        .expect("the page never showed the completed failover");
    b.shots(&dir, "status_failed_over", false, failed_over);

    // A change acknowledged on the promoted backup; the old primary's copy is edited by hand
    // while it is down, so it returns with changes nobody acknowledged: that copy is set
    // aside, the primary catches up and takes over again, and the events say all of it.
    c.client("alice")
        .run("WRITE page.txt 1\n0 Written on the backup.\nETIRW\n")
        .assert_contains("Write Successful!");
    std::fs::write(
        c.storage("ss1").join("files/page.txt"),
        b"Edited on the old primary while it was down.",
    )
    .unwrap();
    c.restart("ss1");
    let kinds = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|x| x["kind"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let recovered = |v: &Value| {
        let k = kinds(v);
        v["pairs"]["ss1"] == "ACTIVE"
            && ["FAILOVER", "QUARANTINE", "SERVER_UP", "RECOVERED"]
                .iter()
                .all(|w| k.iter().any(|x| x == w))
    };
    let shown = b
        .wait_shown(WAIT, &recovered)
        .expect("the page never listed the quarantine and the recovery");
    let q = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "QUARANTINE")
        .unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(q.contains("ss1:") && q.contains("page.txt"), "{q}");
    // Newest first: the recovery is listed above the quarantine, which is above the failover.
    let k = kinds(&shown);
    let at = |w: &str| k.iter().position(|x| x == w).unwrap();
    assert!(
        at("RECOVERED") < at("QUARANTINE") && at("QUARANTINE") < at("FAILOVER"),
        "{k:?}"
    );
    b.shots(&dir, "status_recovered", true, recovered);
}
