//! Crashes and restarts (SPEC §4, §7): SIGKILL a storage server again and again during writes
//! of large files; SIGKILL the name server; a storage server with 10,000 files.

use crate::harness::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// Builds `file` as `sentences` sentences of `words` words each, through the protocol, and
/// returns its content.
fn build_large(c: &Cluster, user: &str, file: &str, sentences: u64, words: usize) -> String {
    raw_create(c.nm_addr(), user, file).unwrap();
    let mut all = Vec::new();
    for s in 0..sentences {
        let stem = file.replace('.', "_");
        let w: Vec<String> = (0..words).map(|i| format!("{stem}s{s}w{i}")).collect();
        let sentence = format!("{}.", w.join(" "));
        raw_write(c.nm_addr(), user, file, s, &[(0, &sentence)]).unwrap();
        all.push(sentence);
    }
    all.join(" ")
}

/// True if `content` is `base` with zero or more `m<n>` words prepended, each followed by one
/// space: exactly the versions the crash test's writers commit.
fn is_whole_version(content: &str, base: &str) -> bool {
    let Some(prefix) = content.strip_suffix(base) else {
        return false;
    };
    prefix.split_terminator(' ').all(|w| {
        w.strip_prefix('m')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }) && (prefix.is_empty() || prefix.ends_with(' '))
}

#[test]
fn storage_server_sigkill_during_large_writes_leaves_old_or_new() {
    let mut c = Cluster::start();
    let files = ["big0.txt", "big1.txt", "big2.txt"];
    // About 300 KB each, in sentences that fit one frame.
    let bases: Vec<String> = files
        .iter()
        .map(|f| build_large(&c, "alice", f, 10, 2500))
        .collect();
    for b in &bases {
        assert!(b.len() > 250_000, "{} bytes", b.len());
    }
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 0..5 {
        let since = c.mark("ss1");
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = files
            .iter()
            .map(|f| {
                let (addr, f, stop, counter) = (
                    c.nm_addr().to_string(),
                    f.to_string(),
                    stop.clone(),
                    counter.clone(),
                );
                thread::spawn(move || {
                    // Write until the server dies under us (or we are told to stop).
                    while !stop.load(Ordering::Relaxed) {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        if raw_write(&addr, "alice", &f, 0, &[(0, &format!("m{n}"))]).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        // Let a few commits land, so the kill falls among writes in flight.
        let commits = 2 + round;
        assert!(
            c.log("ss1")
                .wait_count(since, "ss_commit", &|_| true, commits, WAIT),
            "round {round}: writers made no progress:\n{}",
            c.log("ss1").tail()
        );
        c.kill9("ss1");
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        // On disk, with the server dead: every file wholly some version, nothing else there.
        let dir = c.storage("ss1").join("files");
        let names: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let want: BTreeSet<String> = files.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            names, want,
            "round {round}: unexpected entries under files/"
        );
        let mut on_disk = Vec::new();
        for (f, base) in files.iter().zip(&bases) {
            let got = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(
                is_whole_version(&got, base),
                "round {round}: {f} is torn ({} bytes, starts {:?})",
                got.len(),
                &got[..got.len().min(80)]
            );
            on_disk.push(got);
        }
        c.restart("ss1");
        // After restart the server serves what is on disk, or a whole later version: a change
        // whose journal entry was durable when the server died is redone at restart.
        for ((f, disk), base) in files.iter().zip(&on_disk).zip(&bases) {
            let got = raw_read(c.nm_addr(), "alice", f)
                .unwrap_or_else(|e| panic!("round {round}: READ {f} after restart: {e}"));
            let got = String::from_utf8(got).unwrap();
            assert!(
                got == *disk || (is_whole_version(&got, base) && got.len() > disk.len()),
                "round {round}: {f} served {} bytes, {} on disk",
                got.len(),
                disk.len()
            );
        }
    }
    // And the files are still writable.
    for f in files {
        raw_write(c.nm_addr(), "alice", f, 0, &[(0, "final")]).unwrap();
    }
}

#[test]
fn name_server_sigkill_loses_nothing() {
    let mut c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run(concat!(
            "CREATE a.txt\nWRITE a.txt 0\n0 Kept across crashes.\nETIRW\n",
            "CREATE b.txt\nADDACCESS -R a.txt bob\nADDACCESS -W b.txt carol\n",
        ))
        .assert_code(0);
    c.client("bob").run("VIEW\n").assert_code(0);
    c.client("dave").run("VIEW\n").assert_code(0);
    c.kill9("nm");
    // restart() waits until ss1 has registered again by itself.
    c.restart("nm");
    let out = c.client("erin").run("LIST\n");
    // carol was granted access but never connected, so LIST does not know her.
    for u in ["alice", "bob", "dave", "erin"] {
        out.assert_contains(&format!("--> {u}\n"));
    }
    c.client("alice")
        .run("VIEW\nREAD a.txt\nINFO a.txt\n")
        .assert_contains("--> a.txt\n--> b.txt\n")
        .assert_contains("Kept across crashes.\n")
        .assert_contains("Owner: alice")
        .assert_contains("Access: alice (RW), bob (R)")
        .assert_code(0);
    c.client("bob")
        .run("READ a.txt\n")
        .assert_lines(&["Kept across crashes."]);
    c.client("bob")
        .run("WRITE a.txt 0\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    c.client("carol")
        .run("WRITE b.txt 0\n0 Carol.\nETIRW\nREAD b.txt\n")
        .assert_contains("Carol.\n")
        .assert_code(0);
    // A second crash right after a change: the acknowledged change survives.
    c.client("alice").run("DELETE b.txt\n").assert_code(0);
    c.kill9("nm");
    c.restart("nm");
    c.client("alice").run("VIEW\n").assert_lines(&["--> a.txt"]);
}

#[test]
fn storage_server_restart_keeps_everything() {
    let mut c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 One.\nETIRW\nWRITE a.txt 1\n0 Two.\nETIRW\n")
        .assert_code(0);
    c.kill9("ss1");
    c.client("alice")
        .run("READ a.txt\n")
        .assert_contains("ERROR [UNAVAILABLE]:")
        .assert_code(1);
    c.restart("ss1");
    c.client("alice")
        .run("READ a.txt\nUNDO a.txt\nREAD a.txt\n")
        .assert_lines(&["One. Two.", "Undo Successful!", "One."]);
}

#[test]
fn a_silent_storage_server_is_declared_down_and_comes_back() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Alive.\nETIRW\n")
        .assert_code(0);
    let since = c.mark("nm");
    // Frozen, its connection stays open: only the missed heartbeats can tell.
    c.signal("ss1", libc::SIGSTOP);
    c.wait_event_since(
        "nm",
        since,
        "heartbeat_monitor_failure",
        |v| mentions(v, "ss1"),
        WAIT,
    );
    c.client("alice")
        .run("READ a.txt\n")
        .assert_contains("ERROR [UNAVAILABLE]:")
        .assert_code(1);
    let back = c.mark("nm");
    c.signal("ss1", libc::SIGCONT);
    c.wait_registered("ss1", back);
    c.client("alice")
        .run("READ a.txt\n")
        .assert_lines(&["Alive."]);
}

#[test]
fn a_killed_storage_server_is_declared_down_at_once() {
    let mut c = Cluster::start();
    c.client("alice").run("CREATE a.txt\n").assert_code(0);
    let since = c.mark("nm");
    c.kill9("ss1");
    c.wait_event_since(
        "nm",
        since,
        "heartbeat_monitor_failure",
        |v| mentions(v, "ss1"),
        WAIT,
    );
    c.client("alice")
        .run("READ a.txt\nCREATE b.txt\n")
        .assert_contains("ERROR [UNAVAILABLE]: no live copy of a.txt")
        .assert_contains("ERROR [UNAVAILABLE]: no storage server available")
        .assert_code(1);
}

#[test]
fn ten_thousand_hand_placed_files_are_adopted_and_listed() {
    let n = 10_000;
    // Adopting and registering 10,000 files keeps a loaded 2-core machine busy for a while;
    // a missed heartbeat here would say nothing about what this test checks.
    let mut b = Cluster::builder().nm_args(&["--heartbeat-timeout-ms", "10000"]);
    let mut want = Vec::new();
    for i in 0..n {
        let name = format!("f{i:05}.txt");
        b = b.seed("ss1", &name, format!("file {i}.").as_bytes());
        want.push(format!("--> {name}"));
    }
    let c = b.start();
    // Registration carried every file (the name server logs how many the server holds).
    let reg = c.wait_registered("ss1", Mark(0));
    if let Some(files) = reg["files"].as_u64() {
        assert_eq!(files, n as u64, "registration: {reg}");
    }
    c.client("admin")
        .run("READ f09999.txt\nINFO f00000.txt\n")
        .assert_contains("file 9999.\n")
        .assert_contains("Owner: admin")
        .assert_contains("Words: 2")
        .assert_code(0);
    let out = c.client("admin").run("VIEW -a\n");
    out.assert_code(0);
    let got: Vec<&str> = out.lines();
    assert_eq!(got.len(), n, "VIEW -a listed {} files", got.len());
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
}
