//! `scripts/cluster.sh` (what `make cluster` and `make stop` run), in a temporary run
//! directory on free ports, so a cluster a developer runs in ./run is never touched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The script run with its environment pointing at `run` and these ports.
struct Script {
    run: PathBuf,
    bin: PathBuf,
    nm_port: u16,
    http_port: u16,
    servers: String,
}

impl Script {
    fn new(run: &Path) -> Script {
        let bin = Path::new(env!("CARGO_BIN_EXE_bin_nm"))
            .parent()
            .unwrap()
            .to_path_buf();
        let mut script = Script {
            run: run.to_path_buf(),
            bin,
            nm_port: 0,
            http_port: 0,
            servers: String::new(),
        };
        script.pick_ports();
        script
    }

    /// Free ports for every server. A port found free can be taken by another test before
    /// the script binds it; then the ports are picked again.
    fn pick_ports(&mut self) {
        self.servers = ["ss1", "ss1_backup", "ss2", "ss2_backup"]
            .iter()
            .map(|n| format!("{n}:{}", free_port()))
            .collect::<Vec<_>>()
            .join(" ");
        self.nm_port = free_port();
        self.http_port = free_port();
    }

    /// `start`, with new ports when another process took one of them in the meantime.
    fn start(&mut self) -> Output {
        let mut started = self.call("start");
        for _ in 0..3 {
            if started.status.success()
                || !String::from_utf8_lossy(&started.stderr).contains("Address already in use")
            {
                break;
            }
            self.call("stop");
            self.pick_ports();
            started = self.call("start");
        }
        started
    }

    fn call(&self, what: &str) -> Output {
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"))
            .arg(what)
            .env("PAIRFS_RUN_DIR", &self.run)
            .env("PAIRFS_BIN_DIR", &self.bin)
            .env("PAIRFS_NM_PORT", self.nm_port.to_string())
            .env("PAIRFS_NM_HTTP_PORT", self.http_port.to_string())
            .env("PAIRFS_SERVERS", &self.servers)
            .env_remove("RUST_LOG")
            .output()
            .expect("run scripts/cluster.sh")
    }
}

impl Drop for Script {
    /// Stops whatever this test started (by the PIDs in its own run directory).
    fn drop(&mut self) {
        let _ = self.call("stop");
    }
}

/// Busy threads beside the script, as on a loaded machine; they stop when dropped.
struct Hog(Arc<AtomicBool>, Vec<thread::JoinHandle<()>>);

impl Hog {
    fn start(threads: usize) -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        Hog(stop, handles)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for h in self.1.drain(..) {
            let _ = h.join();
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn cluster_script_starts_and_stops_three_times_on_a_loaded_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut script = Script::new(&dir.path().join("run"));
    let _hog = Hog::start(2);
    for round in 0..3 {
        let started = script.start();
        assert!(
            started.status.success()
                && String::from_utf8_lossy(&started.stdout).contains("pairfs is running"),
            "round {round}: start failed: {}",
            text(&started)
        );
        let client = Command::new(env!("CARGO_BIN_EXE_bin_client"))
            .args([
                "--nm-port",
                &script.nm_port.to_string(),
                "--username",
                "alice",
            ])
            .env("XDG_CONFIG_HOME", crate::harness::config_home())
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(client.status.success(), "round {round}: {}", text(&client));
        // A second start sees the running cluster and leaves it alone.
        let again = script.call("start");
        assert!(
            String::from_utf8_lossy(&again.stdout).contains("already running"),
            "round {round}: {}",
            text(&again)
        );
        let stopped = script.call("stop");
        let out = String::from_utf8_lossy(&stopped.stdout).to_string();
        assert!(
            stopped.status.success()
                && out.contains("stopped nm")
                && out.contains("stopped ss2_backup"),
            "round {round}: stop failed: {}",
            text(&stopped)
        );
        let left: Vec<_> = std::fs::read_dir(&script.run)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .collect();
        assert!(left.is_empty(), "round {round}: pid files left: {left:?}");
    }
}
