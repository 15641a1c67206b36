//! Failure handling (SPEC §6, issue 4) through the real binaries: detection, promotion of the
//! backup with every command following it, both members down, leases fencing a primary cut
//! off by SIGSTOP, recovery with the original primary resuming, quarantine of a copy with
//! changes the cluster never acknowledged, RECOVER, and STATUS.

use crate::harness::*;
use pairfs::protocol::{AccessMode, ErrorCode, Message};
use std::time::{Duration, Instant};

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";

/// A pair, paired, holding `a.txt` with one sentence on both members.
fn pair_with_a_file() -> Cluster {
    pair_with_a_file_on(Cluster::builder())
}

fn pair_with_a_file_on(b: Builder) -> Cluster {
    let c = b.pair().start();
    c.wait_event("nm", "replication_assign", |v| mentions(v, BACKUP), WAIT);
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Before the failure.\nETIRW\n")
        .assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
    // The bytes land before the name server hears the job succeeded; wait for that too.
    assert!(
        poll_until(WAIT, || pair_line(&c).contains("ACTIVE")),
        "the pair never became ACTIVE: {}",
        pair_line(&c)
    );
    c
}

/// Waits for the name server to log `event` for pair ss1 since `since`.
fn wait_pair_event(c: &Cluster, since: Mark, event: &str) -> serde_json::Value {
    c.wait_event_since("nm", since, event, |v| v["pair"] == PRIMARY, WAIT)
}

fn status(c: &Cluster) -> String {
    let out = c.client("alice").run("STATUS\n");
    out.assert_code(0);
    out.stdout.clone()
}

fn pair_line(c: &Cluster) -> String {
    status(c)
        .lines()
        .find(|l| l.contains("ss1 -> ss1_backup"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_killed_primary_fails_over_every_command_to_the_backup_and_resumes_after_recovery() {
    let mut c = pair_with_a_file();
    let since = c.mark("nm");
    let killed = Instant::now();
    c.kill9(PRIMARY);
    c.wait_event_since(
        "nm",
        since,
        "heartbeat_monitor_failure",
        |v| mentions(v, PRIMARY),
        WAIT,
    );
    wait_pair_event(&c, since, "failover_start");
    let done = wait_pair_event(&c, since, "failover_complete");
    assert_eq!(done["ss"], BACKUP, "{done}");
    // The first READ after the kill that succeeds, and how long it took.
    let mut read_ms = None;
    poll_until(Duration::from_secs(10), || {
        let out = c.client("alice").run("READ a.txt\n");
        if out.code == Some(0) {
            read_ms = Some(killed.elapsed().as_millis());
        }
        out.code == Some(0)
    });
    let read_ms = read_ms.expect("READ through the backup never succeeded");
    println!("READ succeeded {read_ms} ms after SIGKILL of the primary");
    assert!(read_ms < 3_000 * 3, "READ took {read_ms} ms");
    c.client("alice")
        .run("READ a.txt\n")
        .assert_lines(&["Before the failure."]);
    assert!(pair_line(&c).contains("PRIMARY_DOWN"), "{}", pair_line(&c));
    assert!(pair_line(&c).contains("epoch 2"), "{}", pair_line(&c));
    assert!(
        pair_line(&c).contains("writer ss1_backup"),
        "{}",
        pair_line(&c)
    );

    // Every command works through the promoted backup.
    let local = c.dir().join("up.bin");
    std::fs::write(&local, b"uploaded during failover\x00\xff").unwrap();
    let down = c.dir().join("down.bin");
    c.client("alice")
        .run(&format!(
            "WRITE a.txt 1\n0 During the failover.\nETIRW\n\
             INFO a.txt\n\
             ADDACCESS -R a.txt bob\n\
             CREATE b.txt\n\
             WRITE b.txt 0\n0 echo new file.\nETIRW\n\
             UNDO b.txt\n\
             WRITE b.txt 0\n0 echo failover.\nETIRW\n\
             UPLOAD {} c.bin\n\
             DOWNLOAD c.bin {}\n\
             CREATE gone.txt\n\
             DELETE gone.txt\n\
             EXEC b.txt\n",
            local.display(),
            down.display()
        ))
        .assert_contains("Write Successful!")
        .assert_contains("Replicas: ss1 (down), ss1_backup (current)")
        .assert_contains("Access granted successfully!")
        .assert_contains("Undo Successful!")
        .assert_contains("Upload Successful!")
        .assert_contains("Download Successful!")
        .assert_contains("File deleted successfully!")
        .assert_contains("failover.")
        .assert_code(0);
    assert_eq!(
        std::fs::read(&down).unwrap(),
        std::fs::read(&local).unwrap()
    );
    c.client("bob")
        .run("READ a.txt\nSTREAM a.txt\n")
        .assert_lines(&[
            "Before the failure. During the failover.",
            "Before the failure. During the failover.",
        ])
        .assert_code(0);

    // The primary returns: it gets what it missed, then writes again in a new epoch.
    let since = c.mark("nm");
    c.restart(PRIMARY);
    wait_pair_event(&c, since, "replication_recover");
    wait_trees_equal(&c, PRIMARY, BACKUP);
    assert_eq!(
        file_on_disk(&c, PRIMARY, "a.txt").unwrap(),
        b"Before the failure. During the failover."
    );
    assert_eq!(
        file_on_disk(&c, PRIMARY, "c.bin").unwrap(),
        std::fs::read(&local).unwrap()
    );
    assert!(file_on_disk(&c, PRIMARY, "gone.txt").is_none());
    let line = pair_line(&c);
    assert!(
        line.contains("ACTIVE") && line.contains("epoch 3") && line.contains("writer ss1 "),
        "{line}"
    );
    c.client("alice")
        .run("WRITE a.txt 2\n0 After recovery.\nETIRW\nINFO a.txt\n")
        .assert_contains("Write Successful!")
        .assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
}

#[test]
fn both_members_down_means_no_live_copy_and_nothing_is_lost() {
    let mut c = pair_with_a_file();
    let since = c.mark("nm");
    c.kill9(BACKUP);
    c.kill9(PRIMARY);
    c.wait_event_since(
        "nm",
        since,
        "heartbeat_monitor_failure",
        |v| mentions(v, PRIMARY),
        WAIT,
    );
    c.wait_event_since(
        "nm",
        since,
        "heartbeat_monitor_failure",
        |v| mentions(v, BACKUP),
        WAIT,
    );
    let out = c.client("alice").run("READ a.txt\nWRITE a.txt 0\n");
    out.assert_contains("ERROR [UNAVAILABLE]: no live copy of a.txt");
    assert_eq!(out.code, Some(1));
    assert!(pair_line(&c).contains("DOWN"), "{}", pair_line(&c));
    c.restart(PRIMARY);
    c.client("alice")
        .run("READ a.txt\n")
        .assert_lines(&["Before the failure."])
        .assert_code(0);
}

#[test]
fn a_primary_cut_off_by_sigstop_loses_its_lease_and_its_old_ticket_is_refused() {
    let c = pair_with_a_file();
    // A write ticket for the primary, taken before it is cut off.
    let mut nm = hello(c.nm_addr(), "alice").unwrap();
    let (addr, ticket) = locate(&mut nm, "a.txt", AccessMode::Write).unwrap();
    assert_eq!(ticket.ss, PRIMARY);
    assert_eq!(ticket.epoch, Some(1));
    let since = c.mark("nm");
    c.signal(PRIMARY, libc::SIGSTOP);
    wait_pair_event(&c, since, "failover_complete");
    // The promoted backup takes writes in epoch 2.
    c.client("alice")
        .run("WRITE a.txt 1\n0 Written on the backup.\nETIRW\n")
        .assert_contains("Write Successful!")
        .assert_code(0);
    // Woken up, the old primary's lease has run out: the old ticket cannot change anything.
    let since_ss = c.mark(PRIMARY);
    c.signal(PRIMARY, libc::SIGCONT);
    let mut ss = raw_conn(&addr);
    let f = call_raw(
        &mut ss,
        &Message::WriteBegin {
            file: "a.txt".into(),
            sentence: 1,
            ticket,
        },
    );
    match f.msg {
        Message::Err { code, msg } => {
            assert!(
                matches!(code, ErrorCode::Unavailable | ErrorCode::Unauthorized),
                "{code:?}: {msg}"
            )
        }
        other => panic!("the deposed primary opened a write session: {other:?}"),
    }
    // It re-registers and catches up; then the roles return.
    c.wait_event_since(
        PRIMARY,
        since_ss,
        "ss_nm_link",
        |v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("registered"))
        },
        WAIT,
    );
    wait_pair_event(&c, since, "replication_recover");
    wait_trees_equal(&c, PRIMARY, BACKUP);
    assert_eq!(
        file_on_disk(&c, PRIMARY, "a.txt").unwrap(),
        b"Before the failure. Written on the backup."
    );
}

#[test]
fn a_copy_with_changes_never_acknowledged_is_quarantined_not_overwritten() {
    let port = crate::metrics::free_port();
    let mut c = pair_with_a_file_on(Cluster::builder().nm_args(&["--http-port", &port]));
    let since = c.mark("nm");
    c.kill9(PRIMARY);
    wait_pair_event(&c, since, "failover_complete");
    c.client("alice")
        .run("WRITE a.txt 1\n0 Acknowledged on the backup.\nETIRW\n")
        .assert_contains("Write Successful!");
    // While the old primary is down, its copy is edited by hand: a change nobody else has,
    // made against the epoch the backup has moved past.
    let path = c.storage(PRIMARY).join("files/a.txt");
    std::fs::write(&path, b"Edited on the old primary while it was down.").unwrap();
    let since = c.mark("nm");
    c.restart(PRIMARY);
    wait_pair_event(&c, since, "replication_recover");
    wait_trees_equal(&c, PRIMARY, BACKUP);
    assert_eq!(
        file_on_disk(&c, PRIMARY, "a.txt").unwrap(),
        b"Before the failure. Acknowledged on the backup."
    );
    let q = c.storage(PRIMARY).join("quarantine");
    let kept: Vec<_> = std::fs::read_dir(&q)
        .unwrap_or_else(|e| panic!("no {}: {e}", q.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let content = kept
        .iter()
        .find(|n| n.starts_with("a.txt.1-") && !n.ends_with(".meta"))
        .unwrap_or_else(|| panic!("no quarantined a.txt in {kept:?}"));
    assert_eq!(
        std::fs::read(q.join(content)).unwrap(),
        b"Edited on the old primary while it was down."
    );
    assert!(kept.contains(&format!("{content}.meta")), "{kept:?}");
    // Never served: reads give the acknowledged content.
    c.client("alice")
        .run("READ a.txt\n")
        .assert_lines(&["Before the failure. Acknowledged on the backup."]);
    // The status page's events (its snapshot is published about once a second) say which
    // server's copy of which file was set aside, and why.
    let http = crate::metrics::nm_http(&c);
    let events = || -> Vec<serde_json::Value> {
        let (_, body) = crate::metrics::http_get(&http, "/status");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["events"].as_array().unwrap().clone()
    };
    assert!(
        poll_until(WAIT, || events().iter().any(|e| e["kind"] == "QUARANTINE")),
        "no QUARANTINE event in {:?}",
        events()
    );
    let events = events();
    let q = events.iter().find(|e| e["kind"] == "QUARANTINE").unwrap();
    assert_eq!(q["subject"], PRIMARY, "{q}");
    assert_eq!(q["files"], serde_json::json!(["a.txt"]), "{q}");
    assert!(q["at_ms"].as_u64().unwrap() > 0, "{q}");
    assert!(!q["text"].as_str().unwrap().is_empty(), "{q}");
}

#[test]
fn recover_answers_with_what_it_queued_and_refuses_down_or_unknown_servers() {
    let c = pair_with_a_file();
    c.client("alice")
        .run("RECOVER ss1_backup\n")
        .assert_lines(&["Recovery of ss1_backup started: 0 transfer(s) queued"])
        .assert_code(0);
    let mut c = c;
    let since = c.mark("nm");
    c.kill9(BACKUP);
    c.wait_event_since(
        "nm",
        since,
        "heartbeat_monitor_failure",
        |v| mentions(v, BACKUP),
        WAIT,
    );
    c.client("alice")
        .run("RECOVER ss1_backup\n")
        .assert_lines(&[
            "ERROR [UNAVAILABLE]: ss1_backup is down; it is recovered when it registers again",
        ])
        .assert_code(1);
    c.client("alice")
        .run("RECOVER nosuch\n")
        .assert_lines(&["ERROR [NOT_FOUND]: No storage server named nosuch"])
        .assert_code(1);
}
