//! Socket patterns that must neither wedge nor bloat a server: a connection burst past the
//! descriptor limit, idle sockets, full connection slots, half-sent large frames, and a slow
//! reader of the HTTP status endpoint.

use crate::harness::*;
use pairfs::protocol::{ErrorCode, Message};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Sets `RLIMIT_NOFILE` (soft and hard) of the running process `pid` (our own child).
fn set_nofile(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain syscall on our own child with a valid rlimit; no old value requested.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Resident memory of `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn connect(addr: &str) -> Option<TcpStream> {
    let sa: SocketAddr = addr.parse().unwrap();
    TcpStream::connect_timeout(&sa, Duration::from_millis(500)).ok()
}

/// Reads until the peer closes (true) or `within` passes (false).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_burst_past_the_descriptor_limit_does_not_wedge_the_name_server() {
    let c = Cluster::start();
    let pid = c.nm.pid();
    // Leave the name server a few descriptors beyond what it holds: the burst runs it out.
    set_nofile(pid, fd_count(pid) + 12);
    let since = c.mark("nm");
    let mut socks = Vec::new();
    for _ in 0..300 {
        if let Some(s) = connect(c.nm_addr()) {
            socks.push(s);
        }
    }
    c.wait_event_since("nm", since, "accept_fd_exhausted", |_| true, WAIT);
    drop(socks);
    // Closing them frees the descriptors; nothing else wakes the loop, yet it serves again.
    // Until the name server has read every closed socket's end, a CREATE may still find no
    // descriptor for its call to the storage server (a clear error, not a wedge), so it is
    // tried until it is taken; a try whose answer was lost leaves CONFLICT for our own file.
    let created = poll_until(Duration::from_secs(20), || {
        let out = c.client("alice").run("CREATE burst.txt\n");
        out.code == Some(0) || out.stdout.contains("ERROR [CONFLICT]")
    });
    assert!(created, "the name server never served a CREATE again");
    c.client("alice")
        .run_timeout("VIEW\n", Duration::from_secs(20))
        .assert_contains("burst.txt")
        .assert_code(0);
}

#[test]
fn idle_sockets_are_closed_but_write_sessions_and_servers_are_kept() {
    let c = Cluster::builder()
        .pair()
        .nm_args(&["--idle-timeout-s", "0.3"])
        .ss_args(&["--idle-timeout-s", "0.3"])
        .start();
    let since = c.mark("nm");
    c.client("alice").run("CREATE idle.txt\n").assert_code(0);
    // A client that says HELLO and then nothing is told why and closed.
    let mut idle = c.nm_session("bob");
    let f = idle.recv_some().expect("a notice before the close");
    assert!(
        matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Timeout,
                ..
            }
        ),
        "{f:?}"
    );
    assert!(idle.recv().map(|f| f.is_none()).unwrap_or(true));
    c.wait_event_since(
        "nm",
        since,
        "conn_dropped",
        |v| v["idle"].as_u64() > Some(0),
        WAIT,
    );
    // A silent socket on a storage server is closed too.
    let mut s = connect(c.ss_addr("ss1")).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)));

    // A writer who pauses longer than the idle timeout between edits keeps the session, and
    // the client's next command reconnects to the name server without a word.
    let mut w = c.client("alice").spawn();
    w.send("WRITE idle.txt 0");
    let pause = Duration::from_millis(900);
    std::thread::sleep(pause);
    w.send("0 Slowly");
    w.expect_prefix("Sentence: Slowly");
    std::thread::sleep(pause);
    w.send("1 typed.");
    w.expect_prefix("Sentence: Slowly typed.");
    std::thread::sleep(pause);
    w.send("ETIRW");
    w.expect_prefix("Write Successful!");
    std::thread::sleep(pause);
    w.send("READ idle.txt");
    w.expect(|l| l == "Slowly typed.", "the written sentence");
    let (code, lines) = w.finish();
    assert_eq!(code, Some(0), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("ERROR")), "{lines:?}");

    // Registered storage servers heartbeat on connections that are never idle-dropped.
    assert_eq!(
        c.log("nm")
            .count(since, "heartbeat_monitor_failure", &|_| true),
        0,
        "a storage server was dropped:\n{}",
        c.log("nm").tail()
    );
    assert_eq!(c.log("nm").count(since, "nm_ss_register", &|_| true), 0);
}

#[test]
fn storage_servers_register_while_client_slots_are_full() {
    let mut c = Cluster::builder()
        .nm_args(&["--max-connections", "3"])
        .start();
    let gone = c.mark("nm");
    c.term("ss1");
    c.wait_event_since(
        "nm",
        gone,
        "heartbeat_monitor_failure",
        |v| mentions(v, "ss1"),
        WAIT,
    );
    // Every client slot taken by sessions that say HELLO and nothing more.
    let full: Vec<_> = (0..3).map(|i| c.nm_session(&format!("u{i}"))).collect();
    // A further client lands in a slot kept for storage servers, and is refused there.
    let mut extra = c.nm_conn();
    let f = call_raw(
        &mut extra,
        &Message::Hello {
            user: "late".into(),
        },
    );
    assert!(
        matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Limit,
                ..
            }
        ),
        "{f:?}"
    );
    // The storage server still registers (restart waits for it) and keeps heartbeating:
    // well past the heartbeat timeout it is still up.
    c.restart("ss1");
    let hb = c.mark("nm");
    std::thread::sleep(Duration::from_millis(3 * HEARTBEAT_TIMEOUT_MS));
    assert_eq!(
        c.log("nm")
            .count(hb, "heartbeat_monitor_failure", &|_| true),
        0
    );
    drop(full);
    assert!(
        poll_until(WAIT, || hello(c.nm_addr(), "alice").is_ok()),
        "client slots never freed"
    );
    c.client("alice").run("CREATE after.txt\n").assert_code(0);
}

/// The header of a frame declaring a 4 MiB body, which is then only partly sent.
fn big_header() -> Vec<u8> {
    format!(
        "{{\"v\":1,\"op\":\"CHUNK\",\"len\":{},\"crc\":1}}\n",
        4 * 1024 * 1024
    )
    .into_bytes()
}

/// Opens `n` connections to `addr`, each sending a 4 MiB frame's header and as much of the
/// body (short of its end) as the socket takes without waiting; with `users`, each first
/// proves a user of its own to the name server (only introduced peers may hold budget).
fn half_sent_frames(addr: &str, n: usize, users: bool) -> Vec<TcpStream> {
    let body = vec![b'x'; 4 * 1024 * 1024 - 1];
    let mut held = Vec::new();
    for i in 0..n {
        let Some(mut s) = connect(addr) else { continue };
        if users {
            let user = format!("flood{i}");
            let mut conn = pairfs::protocol::Connection::new(s.try_clone().unwrap());
            pairfs::identity::handshake(&mut conn, &user, &user_key(&user)).unwrap();
        }
        s.write_all(&big_header()).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut sent = 0;
        // Bounded: the socket stops taking bytes once the server stops reading.
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

#[test]
fn half_sent_large_frames_stay_within_the_budget() {
    let c = Cluster::start();
    let nm_pid = c.nm.pid();
    let ss_pid = c.proc("ss1").pid();
    let held = half_sent_frames(c.nm_addr(), 150, true);
    let held_ss = half_sent_frames(c.ss_addr("ss1"), 60, false);
    // The servers read what they were sent in their own time: take the largest figure seen
    // over a second. Unmetered, 150 (and 60) half-sent 4 MiB frames would hold well over
    // 300 (200) MiB.
    let (mut nm_rss, mut ss_rss) = (0, 0);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        nm_rss = nm_rss.max(rss_kib(nm_pid) / 1024);
        ss_rss = ss_rss.max(rss_kib(ss_pid) / 1024);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(nm_rss < 160, "name server RSS {nm_rss} MiB");
    assert!(ss_rss < 160, "storage server RSS {ss_rss} MiB");
    // Others are still served while the flood is held.
    c.client("alice")
        .run("CREATE budget.txt\nWRITE budget.txt 0\n0 Served.\nETIRW\nREAD budget.txt\n")
        .assert_contains("Served.\n")
        .assert_code(0);
    drop(held);
    drop(held_ss);
}

#[test]
fn a_stranger_cannot_hold_frame_budget() {
    let c = Cluster::start();
    // Before HELLO completes, a frame larger than a connection buffers freely is refused at
    // once: frame budget is only for peers that proved who they are.
    let mut s = connect(c.nm_addr()).unwrap();
    let header = big_header();
    s.write_all(&header).unwrap();
    // Exactly what the server buffers before it must ask for budget: nothing is left unread
    // when it closes, so its answer is not lost to a reset.
    let free = pairfs::nm::server::FREE_INPUT_BYTES - header.len();
    s.write_all(&vec![b'x'; free]).unwrap();
    let mut conn = pairfs::protocol::Connection::new(s);
    let f = conn.recv_some().expect("an answer before the close");
    assert!(
        matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Limit,
                ..
            }
        ),
        "{f:?}"
    );
    // An introduced client's large frames still get budget (the rest of the cluster works).
    c.client("alice")
        .run("CREATE s.txt\nREAD s.txt\n")
        .assert_code(0);
}

/// Takes all `slots` of storage server `ss` with silent sockets and returns them once a new
/// connection is answered with LIMIT. A connection an earlier command left behind may still
/// hold a slot for a moment, so a socket of ours can be the one refused: then every socket is
/// dropped and the slots are taken again.
fn fill(c: &Cluster, ss: &str, slots: usize) -> Vec<std::net::TcpStream> {
    let mut held = Vec::new();
    let full = poll_until(Duration::from_secs(20), || {
        held = (0..slots).filter_map(|_| connect(c.ss_addr(ss))).collect();
        let mut p = raw_conn(c.ss_addr(ss));
        let _ = p.set_timeout(Some(Duration::from_secs(1)));
        let refused = matches!(
            p.recv(),
            Ok(Some(pairfs::protocol::Frame {
                msg: Message::Err {
                    code: ErrorCode::Limit,
                    ..
                },
                ..
            }))
        );
        // The server is full, but perhaps of a connection on its way out (a client's that just
        // closed) while one of ours was refused: ours were accepted before the probe, so a
        // refusal of one has arrived by now (a LIMIT frame, then the close).
        refused && held.iter().all(still_held)
    });
    assert!(full, "{ss} did not fill up");
    held
}

/// Whether the server still holds `s` open without having said anything on it.
fn still_held(s: &std::net::TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let quiet =
        matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let _ = s.set_nonblocking(false);
    quiet
}

#[test]
fn read_uses_the_other_copy_when_a_storage_server_is_full() {
    let c = Cluster::builder()
        .pair()
        .server_args("ss1", &["--max-connections", "2"])
        .start();
    c.client("alice")
        .run("CREATE full.txt\nWRITE full.txt 0\n0 From the other copy.\nETIRW\n")
        .assert_code(0);
    wait_file_replicated(&c, "ss1", "ss1_backup", "full.txt");
    // The backup's disk holds it before the name server has settled the job; only then does
    // it offer the backup's copy.
    let settled = poll_until(WAIT, || {
        c.client("alice")
            .run("STATUS\n")
            .stdout
            .contains("queue depth 0")
    });
    assert!(settled, "the copy of full.txt was never settled");
    // Take both of ss1's slots with silent sockets (each may stay for the first-frame time).
    let _held = fill(&c, "ss1", 2);
    c.client("alice")
        .run("READ full.txt\n")
        .assert_lines(&["From the other copy."])
        .assert_code(0);
}

/// The HTTP status endpoint's address, from the name server's log.
fn http_addr(c: &Cluster) -> String {
    let v = c.wait_event(
        "nm",
        "log",
        |v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("status HTTP endpoint on http://"))
        },
        WAIT,
    );
    let msg = v["msg"].as_str().unwrap();
    msg.trim_start_matches("status HTTP endpoint on http://")
        .trim_end_matches("/status")
        .to_string()
}

#[test]
fn a_trickling_http_reader_delays_nobody_and_is_cut_off() {
    // Port 0 turns the endpoint off: take a free port for it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let c = Cluster::builder().nm_args(&["--http-port", &port]).start();
    let addr = http_addr(&c);
    let mut slow = connect(&addr).unwrap();
    slow.write_all(b"G").unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let mut s = connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("\r\n\r\nok\n"), "{out}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // The slow reader goes on trickling meanwhile.
        let _ = slow.write_all(b"E");
    }
    // The trickler is cut off by its deadline, however steadily it sends.
    let t = Instant::now();
    let mut cut = false;
    while t.elapsed() < Duration::from_secs(12) {
        if slow.write_all(b"x").is_err() || closed_within(&mut slow, Duration::from_millis(700)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "the trickling connection was never closed");
}

#[test]
fn read_from_a_full_server_without_a_partner_says_limit() {
    let c = Cluster::builder()
        .ss_args(&["--max-connections", "1"])
        .start();
    c.client("alice").run("CREATE solo.txt\n").assert_code(0);
    // The one slot is free again once the name server's SS_CREATE connection has closed; a
    // WRITE refused with LIMIT before that changed nothing.
    let written = poll_until(Duration::from_secs(20), || {
        c.client("alice")
            .run("WRITE solo.txt 0\n0 Alone.\nETIRW\n")
            .code
            == Some(0)
    });
    assert!(written, "the WRITE never found the slot free");
    let _held = fill(&c, "ss1", 1);
    c.client("alice")
        .run("READ solo.txt\n")
        .assert_contains("ERROR [LIMIT]: too many connections")
        .assert_code(1);
}

#[test]
fn creates_and_deletes_go_on_when_a_storage_server_closes_the_name_server_s_idle_connections() {
    // The name server keeps its connections to a storage server between calls; the storage
    // server closes them once idle for 0.2 s, between the calls that follow.
    let c = Cluster::builder()
        .ss_args(&["--idle-timeout-s", "0.2"])
        .start();
    let alice = c.client("alice");
    let idle = Duration::from_millis(500);
    for i in 0..3 {
        let out = alice.run(&format!("CREATE kept{i}a.txt\nCREATE kept{i}b.txt\n"));
        out.assert_code(0);
        assert_eq!(
            out.stdout.matches("File Created Successfully!").count(),
            2,
            "{}",
            out.stdout
        );
        assert!(!out.stdout.contains("ERROR"), "{}", out.stdout);
        // Longer than the storage server's idle timeout: the kept connections are closed.
        std::thread::sleep(idle);
    }
    let out = alice.run("DELETE kept0a.txt\n");
    out.assert_code(0);
    assert!(!out.stdout.contains("ERROR"), "{}", out.stdout);
    std::thread::sleep(idle);
    let out = alice.run("DELETE kept0b.txt\nVIEW\n");
    assert!(!out.stdout.contains("ERROR"), "{}", out.stdout);
    out.assert_contains("kept2b.txt");
    assert!(!out.stdout.contains("kept0"), "{}", out.stdout);
}
