//! The client on a terminal (a pseudo-terminal here): lines that arrive together, as a paste
//! or typing ahead while a command runs, all run in order.

use crate::harness::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A pseudo-terminal: (master, slave).
fn openpty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: out-pointers to two ints; no name, settings or window size are passed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened for us and are owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn lines_pasted_at_once_on_a_terminal_all_run() {
    let c = Cluster::start();
    let (mut master, slave) = openpty();
    let addr = c.nm_addr();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bin_client"))
        .args(["--nm-host", host, "--nm-port", port, "--username", "alice"])
        .env("TERM", "xterm")
        .env("XDG_CONFIG_HOME", config_home())
        .env_remove("RUST_LOG")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("start bin_client");
    // Everything the client writes to the terminal, as it comes.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut reader = master.try_clone().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<u8>| {
        let deadline = Instant::now() + CLIENT_WAIT;
        while !String::from_utf8_lossy(seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(b) => seen.extend(b),
                Err(_) => panic!(
                    "the terminal never showed {needle:?}; it showed:\n{}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    };
    wait_for("> ", &mut seen);
    // Four lines in one write, as a paste delivers them.
    master
        .write_all(b"CREATE p.txt\rCREATE q.txt\rWRITE p.txt 0\r0 Pasted.\rETIRW\rEXIT\r")
        .unwrap();
    master.flush().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let pid = child.id();
    thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = match done_rx.recv_timeout(CLIENT_WAIT) {
        Ok(s) => s.unwrap(),
        Err(_) => {
            // SAFETY: our own child, not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            while let Ok(b) = rx.try_recv() {
                seen.extend(b);
            }
            panic!(
                "the client did not run every pasted line; the terminal showed:\n{}",
                String::from_utf8_lossy(&seen)
            );
        }
    };
    assert_eq!(status.code(), Some(0));
    c.client("alice").run("VIEW\nREAD p.txt\n").assert_lines(&[
        "--> p.txt",
        "--> q.txt",
        "Pasted.",
    ]);
}
