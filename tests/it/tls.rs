//! TLS on every link (`--tls-dir`, README "Running on several hosts"): a pair whose every
//! process, clients included, speaks only TLS serves, replicates (the staging tee between the
//! pair's members and the name server's relay), and fails over; a peer without `--tls-dir`
//! gets a clear error at once, and so does a TLS client of a plain cluster.

use crate::harness::*;
use std::time::{Duration, Instant};

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";
/// Above the staging threshold, so the upload is teed to the backup as it arrives.
const SIZE: usize = 3 << 20;

#[test]
fn a_tls_pair_serves_replicates_and_fails_over() {
    let mut c = Cluster::builder().pair().tls().start();
    c.wait_event(
        "nm",
        "replication_assign",
        |v| v["msg"].as_str().is_some_and(|m| m.contains("Paired")),
        WAIT,
    );
    c.wait_event(PRIMARY, "ss_nm_link", |v| v["partner"] == BACKUP, WAIT);
    let big = blob(SIZE, 7);
    let local = c.dir().join("big.local");
    std::fs::write(&local, &big).unwrap();
    let m = c.mark("nm");
    c.client("alice")
        .run_timeout(
            &format!(
                "CREATE a.txt\nWRITE a.txt 0\n0 Sealed in transit.\nETIRW\nREAD a.txt\nUPLOAD {} big.bin\n",
                local.display()
            ),
            Duration::from_secs(60),
        )
        .assert_code(0)
        .assert_contains("Sealed in transit.")
        .assert_contains("Upload Successful!");
    // The large upload reached the backup through the primary's TLS tee.
    c.wait_event_since(
        "nm",
        m,
        "replication_staged",
        |v| mentions(v, "big.bin") && v["level"] == "INFO",
        WAIT,
    );
    // The small file through the name server's replication workers.
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
    assert_eq!(wait_file_replicated(&c, PRIMARY, BACKUP, "big.bin"), big);

    c.kill_and_promote(PRIMARY);
    c.wait_readable("alice", "a.txt");
    let down = c.dir().join("big.down");
    c.client("alice")
        .run_timeout(
            &format!("READ a.txt\nDOWNLOAD big.bin {}\n", down.display()),
            Duration::from_secs(60),
        )
        .assert_code(0)
        .assert_contains("Sealed in transit.");
    assert!(std::fs::read(&down).unwrap() == big, "download differs");
    for p in ["nm", BACKUP] {
        assert_eq!(c.log(p).count(Mark(0), "tls_off", &|_| true), 0);
    }
}

#[test]
fn a_plain_client_of_a_tls_cluster_is_told_to_use_tls_at_once() {
    let c = Cluster::builder().tls().start();
    let t0 = Instant::now();
    let out = c.plain_client("alice").run("VIEW\n");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("ERROR [UNAVAILABLE]") && text.contains("TLS:") && text.contains("--tls-dir"),
        "{text}"
    );
    assert_ne!(out.code, Some(0), "{text}");
    // The same client with the cluster's CA gets through.
    c.client("alice").run("VIEW\n").assert_code(0);
}

#[test]
fn a_tls_client_of_a_plain_cluster_is_told_the_server_runs_without_tls() {
    let c = Cluster::start();
    let dir = c.dir().join("other-tls");
    pairfs::tls::init_dir(&dir, &[]).unwrap();
    let t0 = Instant::now();
    let out = c
        .client("alice")
        .arg("--tls-dir")
        .arg(dir.to_str().unwrap())
        .run("VIEW\n");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("TLS:") && text.contains("without --tls-dir"),
        "{text}"
    );
    assert_ne!(out.code, Some(0), "{text}");
}

#[test]
fn a_certificate_from_another_ca_is_refused_naming_the_ca_file() {
    let c = Cluster::builder().tls().start();
    let dir = c.dir().join("other-ca");
    pairfs::tls::init_dir(&dir, &[]).unwrap();
    let out = c
        .plain_client("alice")
        .arg("--tls-dir")
        .arg(dir.to_str().unwrap())
        .run("VIEW\n");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("not accepted") && text.contains(&dir.join("ca.pem").display().to_string()),
        "{text}"
    );
    assert_ne!(out.code, Some(0), "{text}");
}

#[test]
fn a_server_listening_beyond_loopback_without_tls_warns_once() {
    let c = Cluster::builder().nm_args(&["--host", "0.0.0.0"]).start();
    let v = c.wait_event("nm", "tls_off", |_| true, WAIT);
    assert_eq!(v["level"], "WARN");
    assert!(
        v["msg"].as_str().is_some_and(|m| m.contains("--tls-dir")),
        "{v}"
    );
    assert_eq!(c.log("nm").count(Mark(0), "tls_off", &|_| true), 1);
    // A storage server on loopback has nothing to warn about.
    assert_eq!(c.log("ss1").count(Mark(0), "tls_off", &|_| true), 0);
}
