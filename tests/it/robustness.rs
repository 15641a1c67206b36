//! Bad input on both server ports (SPEC §8): garbage, an endless line, a huge declared body, a
//! peer that stops mid-body. None of it may crash or wedge a server; others keep being served.
//! Also: clean shutdown on SIGTERM, and servers print only JSON lines.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Opens a plain socket to `addr`.
fn sock(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes `bytes` (ignoring a reset: the server may close early) and reads whatever comes back
/// until the server closes the connection. A server that neither answers nor closes fails the
/// read timeout.
fn send_and_drain(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = sock(addr);
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("server at {addr} neither answered nor closed: {e}"),
        }
    }
    out
}

/// The client still works end to end (name server and storage server both serve).
fn still_serving(c: &Cluster, file: &str) {
    c.client("alice")
        .run(&format!(
            "CREATE {file}\nWRITE {file} 0\n0 Still alive.\nETIRW\nREAD {file}\n"
        ))
        .assert_contains("Still alive.\n")
        .assert_code(0);
}

fn abuse(c: &Cluster, addr: &str, tag: &str) {
    for seed in 1..=5u64 {
        // Deterministic bytes (xorshift), the seed printed on failure.
        let mut bytes = blob(3000, seed);
        bytes.push(b'\n');
        send_and_drain(addr, &bytes);
    }
    // Valid JSON, not a message; a wrong protocol version; a body with a bad checksum.
    let reply = send_and_drain(addr, b"{\"v\":1,\"op\":\"NO_SUCH_OP\"}\n");
    assert!(
        reply.is_empty() || String::from_utf8_lossy(&reply).contains("ERR"),
        "{tag}: unexpected reply {reply:?}"
    );
    send_and_drain(addr, b"{\"v\":99,\"op\":\"DONE\"}\n");
    send_and_drain(
        addr,
        b"{\"v\":1,\"op\":\"CHUNK\",\"len\":5,\"crc\":1}\nhello",
    );
    // An endless line: far past the header cap, never a newline.
    let endless = vec![b'a'; 1024 * 1024];
    let reply = send_and_drain(addr, &endless);
    assert!(
        reply.is_empty() || String::from_utf8_lossy(&reply).contains("ERR"),
        "{tag}: endless line answered {:?}",
        String::from_utf8_lossy(&reply)
    );
    // A header declaring a huge body.
    let reply = send_and_drain(
        addr,
        b"{\"v\":1,\"op\":\"CHUNK\",\"len\":999999999999,\"crc\":1}\n",
    );
    assert!(
        reply.is_empty() || String::from_utf8_lossy(&reply).contains("LIMIT"),
        "{tag}: huge body answered {:?}",
        String::from_utf8_lossy(&reply)
    );
    still_serving(c, &format!("{tag}-after-abuse.txt"));
}

#[test]
fn name_server_survives_bad_input() {
    let c = Cluster::start();
    let addr = c.nm_addr().to_string();
    abuse(&c, &addr, "nm");
    // A client that HELLOs and then sends garbage loses only its own connection.
    let mut s = sock(&addr);
    s.write_all(b"{\"v\":1,\"op\":\"HELLO\",\"user\":\"mallory\"}\n\x00\x01\x02garbage\n")
        .unwrap();
    still_serving(&c, "nm-after-hello.txt");
    // A bad user name is refused.
    let mut nm = c.nm_conn();
    let f = call_raw(
        &mut nm,
        &pairfs::protocol::Message::Hello {
            user: "../x\n".into(),
        },
    );
    assert!(
        matches!(
            f.msg,
            pairfs::protocol::Message::Err {
                code: pairfs::protocol::ErrorCode::Invalid,
                ..
            }
        ),
        "{:?}",
        f.msg
    );
}

#[test]
fn storage_server_survives_bad_input() {
    let c = Cluster::start();
    let addr = c.ss_addr("ss1").to_string();
    abuse(&c, &addr, "ss");
}

#[test]
fn stalled_peers_block_nobody() {
    let c = Cluster::start();
    let since = c.mark("nm");
    let mut stalled = Vec::new();
    for addr in [c.nm_addr().to_string(), c.ss_addr("ss1").to_string()] {
        // Stops mid-body: declares 1000 bytes, sends 10, then says nothing.
        let mut s = sock(&addr);
        s.write_all(b"{\"v\":1,\"op\":\"CHUNK\",\"len\":1000,\"crc\":1}\n0123456789")
            .unwrap();
        stalled.push(s);
        // Stops mid-header.
        let mut s = sock(&addr);
        s.write_all(b"{\"v\":1,\"op\":\"HEL").unwrap();
        stalled.push(s);
        // Connects and never speaks.
        stalled.push(sock(&addr));
    }
    for i in 0..3 {
        still_serving(&c, &format!("stall{i}.txt"));
    }
    // Heartbeats kept flowing: the storage server was never declared failed.
    assert_eq!(
        c.log("nm")
            .count(since, "heartbeat_monitor_failure", &|_| true),
        0,
        "a stalled peer delayed heartbeats:\n{}",
        c.log("nm").tail()
    );
    drop(stalled);
    still_serving(&c, "after-stall.txt");
}

#[test]
fn sigterm_stops_servers_cleanly() {
    let mut c = Cluster::start();
    still_serving(&c, "a.txt");
    assert_eq!(c.term("ss1"), Some(0), "ss1 exit status after SIGTERM");
    assert_eq!(c.term("nm"), Some(0), "nm exit status after SIGTERM");
    // Nothing was lost.
    c.restart("nm");
    c.restart("ss1");
    c.client("alice")
        .run("READ a.txt\n")
        .assert_lines(&["Still alive."]);
}

#[test]
fn servers_log_only_json_with_known_events() {
    let mut c = Cluster::start();
    still_serving(&c, "a.txt");
    c.client("alice").run("READ nope\n");
    c.term("ss1");
    c.term("nm");
    for name in ["nm", "ss1"] {
        let log = c.log(name);
        assert!(
            log.non_json().is_empty(),
            "{name} printed non-JSON lines on stdout: {:?}",
            log.non_json()
        );
        for line in log.lines_since(Mark(0)) {
            for field in ["ts", "level", "event", "msg"] {
                assert!(line[field].is_string(), "{name}: no {field} in {line}");
            }
            let ev = line["event"].as_str().unwrap();
            assert!(
                pairfs::logging::ev::ALL.contains(&ev) || ev == "log",
                "{name}: unknown event {ev}"
            );
        }
    }
}

#[test]
fn client_prints_no_log_lines() {
    let c = Cluster::start();
    let out = c.client("alice").run("CREATE a.txt\nREAD a.txt\n");
    out.assert_lines(&["File Created Successfully!", ""]);
    assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
}

/// Retries `f` until it returns true or `WAIT` passes (for conditions only the server knows,
/// such as having noticed closed connections).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn connection_caps_refuse_the_excess_and_recover() {
    let c = Cluster::builder()
        .nm_args(&["--max-connections", "8"])
        .ss_args(&["--max-connections", "3"])
        .start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Capped.\nETIRW\n")
        .assert_code(0);
    let ss = c.ss_addr("ss1").to_string();
    let held: Vec<TcpStream> = (0..3).map(|_| sock(&ss)).collect();
    // The fourth is answered with LIMIT (or closed) rather than left hanging.
    eventually(
        "a connection over the storage server's cap is refused",
        || {
            let reply = send_and_drain(&ss, b"");
            reply.is_empty() || String::from_utf8_lossy(&reply).contains("LIMIT")
        },
    );
    drop(held);
    eventually(
        "the storage server serves again once connections close",
        || raw_read(c.nm_addr(), "alice", "a.txt").is_ok(),
    );
    // The name server: a flood of idle connections beyond its cap leaves it serving once
    // they are gone, and the storage server's link (opened first) is never dropped.
    let nm = c.nm_addr().to_string();
    let flood: Vec<TcpStream> = (0..20)
        .filter_map(|_| TcpStream::connect(&nm).ok())
        .collect();
    drop(flood);
    eventually("the name server serves again after a flood", || {
        raw_read(c.nm_addr(), "alice", "a.txt").is_ok()
    });
    assert_eq!(
        c.log("nm")
            .count(Mark(0), "heartbeat_monitor_failure", &|_| true),
        0
    );
}
