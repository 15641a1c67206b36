//! The whole story on several hosts (README "Running on several hosts"): the name server,
//! both members of a pair and the client each on a test host of its own (a network namespace
//! with its own address, `crate::netns`), every server listening on `0.0.0.0`, every link over
//! TLS (`--tls-dir` on every process, clients included). Pairing, every
//! command, a SIGKILL of the primary, reads and writes through the backup, the primary's
//! return. Needs root; prints SKIPPED with the reason elsewhere.

use crate::harness::*;

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";

/// A pair on hosts of their own, or `None` (after printing why) where hosts cannot be made.
fn cluster_on_hosts() -> Option<Cluster> {
    let hosts = match Hosts::create() {
        Ok(h) => h,
        Err(why) => {
            println!("SKIPPED: {why}");
            return None;
        }
    };
    let c = Cluster::builder().pair().tls().on_hosts(hosts).start();
    c.wait_event("nm", "replication_assign", |v| mentions(v, BACKUP), WAIT);
    // Listening beyond loopback with TLS on: no server warns that its links are plain.
    for p in ["nm", PRIMARY, BACKUP] {
        assert_eq!(c.log(p).count(Mark(0), "tls_off", &|_| true), 0, "{p}");
    }
    Some(c)
}

#[test]
fn a_pair_on_three_hosts_serves_a_client_on_a_fourth_through_a_failover() {
    let Some(mut c) = cluster_on_hosts() else {
        return;
    };
    // Each member listens on every interface of its host and is reached at its address.
    for ss in [PRIMARY, BACKUP] {
        let v = c.wait_event(
            "nm",
            "nm_ss_register",
            |v| v["ss"] == ss && v["advertised"] == "0.0.0.0",
            WAIT,
        );
        let host = v["host"].as_str().unwrap_or_default();
        assert!(
            c.ss_addr(ss).starts_with(&format!("{host}:")),
            "{ss} registered as {host}, reachable at {}",
            c.ss_addr(ss)
        );
    }

    let local = c.dir().join("up.bin");
    std::fs::write(&local, b"bytes from another host\x00\xff").unwrap();
    let down = c.dir().join("down.bin");
    c.client("alice")
        .run(&format!(
            "CREATE a.txt\n\
             WRITE a.txt 0\n0 Written from the client host.\nETIRW\n\
             READ a.txt\n\
             STREAM a.txt\n\
             INFO a.txt\n\
             CHECKPOINT a.txt v1\n\
             WRITE a.txt 1\n0 A second sentence.\nETIRW\n\
             UNDO a.txt\n\
             ADDACCESS -R a.txt bob\n\
             CREATEFOLDER /docs\n\
             CREATE b.txt\n\
             MOVE b.txt /docs\n\
             UPLOAD {} c.bin\n\
             DOWNLOAD c.bin {}\n\
             VIEW -l\n\
             LIST\n",
            local.display(),
            down.display()
        ))
        .assert_code(0)
        .assert_contains("Written from the client host.")
        .assert_contains("Checkpoint 'v1' created successfully!")
        .assert_contains("File moved successfully!");
    assert_eq!(
        std::fs::read(&down).unwrap(),
        std::fs::read(&local).unwrap()
    );
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
    wait_file_replicated(&c, PRIMARY, BACKUP, "c.bin");
    c.client("alice")
        .run("FSCK\n")
        .assert_code(0)
        .assert_contains("0 stale, 0 missing, 0 corrupt");

    // The primary's host loses its server: reads and writes go through the backup's host.
    c.kill_and_promote(PRIMARY);
    c.wait_readable("alice", "a.txt");
    c.client("alice")
        .run("READ a.txt\nWRITE a.txt 1\n0 During the failover.\nETIRW\nREAD a.txt\nCREATE d.txt\n")
        .assert_code(0)
        .assert_contains("Written from the client host. During the failover.")
        .assert_contains("File Created Successfully!");
    c.client("bob")
        .run("READ a.txt\n")
        .assert_code(0)
        .assert_contains("During the failover.");

    // The primary comes back on its host, catches up, and resumes.
    let since = c.mark("nm");
    c.restart(PRIMARY);
    c.wait_event_since(
        "nm",
        since,
        "replication_recover",
        |v| v["pair"] == PRIMARY,
        WAIT,
    );
    let active = poll_until(WAIT, || {
        let s = c.client("alice").run("STATUS\n").stdout;
        s.lines().any(|l| {
            l.contains("ss1 -> ss1_backup") && l.contains("ACTIVE") && l.contains("writer ss1 ")
        })
    });
    assert!(
        active,
        "the pair never became ACTIVE with ss1 writing again: {}",
        c.client("alice").run("STATUS\n").stdout
    );
    c.client("alice")
        .run("READ a.txt\nREAD d.txt\nFSCK\n")
        .assert_code(0)
        .assert_contains("Written from the client host. During the failover.");
}

#[test]
fn a_server_advertising_loopback_from_another_host_is_refused_with_the_fix() {
    let Some(mut c) = cluster_on_hosts() else {
        return;
    };
    let since = c.mark("nm");
    c.add_ss_with("ss9", &["--advertise-host", "127.0.0.1"], &[]);
    let v = c.wait_event_since(
        "nm",
        since,
        "nm_ss_register",
        |v| v["ss"] == "ss9" && v["level"] == "WARN",
        WAIT,
    );
    let msg = v["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("loopback"), "{v}");
    assert!(msg.contains("--advertise-host"), "{v}");
    // The server hears why, and is never handed to clients.
    c.wait_event(
        "ss9",
        "ss_nm_link",
        |v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("--advertise-host"))
        },
        WAIT,
    );
    let status = c.client("alice").run("STATUS\n");
    status.assert_code(0).assert_lacks("ss9");
}
