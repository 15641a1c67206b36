//! Access times (INFO's `Last Accessed`): shown at once, written lazily. A READ commits
//! nothing to the name server's database; the access is written with the next change, or
//! once `--access-flush-ms` passed, or at clean shutdown; a SIGKILL loses only what was not
//! written yet.

use crate::harness::*;
use crate::metrics::{free_port, nm_http, scrape, value};
use std::time::Instant;

/// Durable commits of the name server's database so far.
fn store_commits(http: &str) -> f64 {
    value(
        &scrape(http),
        "pairfs_sync_calls_total",
        &[("kind", "store_commit")],
    )
}

/// INFO's `Last Accessed:` line of `file`, as `user` sees it.
fn last_accessed(c: &Cluster, user: &str, file: &str) -> String {
    let out = c.client(user).run(&format!("INFO {file}\n"));
    out.assert_code(0);
    out.lines()
        .into_iter()
        .find(|l| l.starts_with("Last Accessed: "))
        .unwrap_or_else(|| panic!("no Last Accessed line:\n{}", out.stdout))
        .to_string()
}

/// A cluster of one storage server whose name server writes access times after `flush_ms`;
/// `a.txt` holds a sentence readable by bob and carol, who have each said HELLO once (binding a
/// user's key is a commit of its own).
fn cluster(flush_ms: &str) -> (Cluster, String) {
    let port = free_port();
    let c = Cluster::builder()
        .nm_args(&["--http-port", &port, "--access-flush-ms", flush_ms])
        .start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Hello there.\nETIRW\nADDACCESS -R a.txt bob\nADDACCESS -R a.txt carol\n")
        .assert_code(0);
    c.client("bob").run("VIEW\n").assert_code(0);
    c.client("carol").run("VIEW\n").assert_code(0);
    let http = nm_http(&c);
    (c, http)
}

#[test]
fn a_read_is_shown_at_once_commits_nothing_and_rides_on_the_next_change() {
    let (mut c, http) = cluster("3600000");
    let before = store_commits(&http);
    c.client("bob")
        .run("READ a.txt\n")
        .assert_code(0)
        .assert_contains("Hello there.");
    assert!(last_accessed(&c, "alice", "a.txt").ends_with(" by bob"));
    assert_eq!(
        store_commits(&http),
        before,
        "a READ committed to the database"
    );
    // The next change is committed anyway: the access is written with it.
    c.client("alice").run("CREATE b.txt\n").assert_code(0);
    assert!(store_commits(&http) > before);
    c.kill9("nm");
    c.restart("nm");
    assert!(last_accessed(&c, "alice", "a.txt").ends_with(" by bob"));
    // An access not written yet is all a SIGKILL loses.
    c.client("carol").run("READ a.txt\n").assert_code(0);
    assert!(last_accessed(&c, "alice", "a.txt").ends_with(" by carol"));
    c.kill9("nm");
    c.restart("nm");
    assert!(last_accessed(&c, "alice", "a.txt").ends_with(" by bob"));
    c.client("alice")
        .run("READ a.txt\n")
        .assert_contains("Hello there.");
}

#[test]
fn a_clean_shutdown_writes_the_access_times() {
    let (mut c, _http) = cluster("3600000");
    c.client("bob").run("READ a.txt\n").assert_code(0);
    assert_eq!(c.term("nm"), Some(0));
    c.restart("nm");
    assert!(last_accessed(&c, "alice", "a.txt").ends_with(" by bob"));
}

#[test]
fn access_times_are_written_within_the_flush_interval() {
    let (mut c, http) = cluster("300");
    let before = store_commits(&http);
    let t0 = Instant::now();
    c.client("bob").run("READ a.txt\n").assert_code(0);
    assert!(poll_until(WAIT, || store_commits(&http) > before));
    let took = t0.elapsed();
    // 300 ms plus a client's start and a loaded machine's scheduling.
    assert!(took.as_millis() < 3_000, "written after {took:?}");
    c.kill9("nm");
    c.restart("nm");
    assert!(last_accessed(&c, "alice", "a.txt").ends_with(" by bob"));
}
