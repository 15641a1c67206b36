//! Changes ride through a failover (SPEC §6, last bullet) through the real binaries: a change
//! sent just after the primary is killed waits and succeeds, a WRITE session open when its
//! writer dies is replayed on the promoted backup and commits once, a session whose sentence
//! changed meanwhile ends with CONFLICT, a commit whose answer is lost is never applied twice,
//! and a WRITE that cannot open skips its edit lines.

use crate::harness::*;
use std::time::{Duration, Instant};

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";
const NOTE: &str = "waiting for pair ss1 to finish failover";

/// A pair, paired and ACTIVE, holding `a.txt` with one sentence on both members; set up with
/// UPLOAD, so a hook on WRITE's commit is not triggered.
fn pair_with_a_file(b: Builder) -> Cluster {
    let c = b.pair().start();
    c.wait_event("nm", "replication_assign", |v| mentions(v, BACKUP), WAIT);
    let local = c.dir().join("a.local");
    std::fs::write(&local, "Before the failure.").unwrap();
    c.client("alice")
        .run(&format!("UPLOAD {} a.txt\n", local.display()))
        .assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
    assert!(
        poll_until(WAIT, || {
            let out = c.client("alice").run("STATUS\n");
            out.stdout
                .lines()
                .any(|l| l.contains("ss1 -> ss1_backup") && l.contains("ACTIVE"))
        }),
        "the pair never became ACTIVE"
    );
    c
}

fn read_a(c: &Cluster) -> String {
    let out = c.client("alice").run("READ a.txt\n");
    out.assert_code(0);
    out.stdout
}

/// An interactive alice with sentence `i` of a.txt open and `text` inserted at word 0.
fn open_with_an_edit(c: &Cluster, i: u64, text: &str) -> Session {
    let mut s = c.client("alice").spawn();
    s.send(&format!("WRITE a.txt {i}"));
    s.send(&format!("0 {text}"));
    s.expect_prefix(&format!("Sentence: {text}"));
    s
}

#[test]
fn a_write_sent_right_after_a_kill_waits_out_the_failover() {
    let mut c = pair_with_a_file(Cluster::builder());
    let since = c.mark("nm");
    let killed = Instant::now();
    c.kill9(PRIMARY);
    let out = c.client("alice").run("WRITE a.txt 1\n0 After it.\nETIRW\n");
    let ms = killed.elapsed().as_millis();
    println!("WRITE succeeded {ms} ms after SIGKILL of the primary");
    // The note is on stderr only; stdout is what it would be without a failover.
    assert!(out.stderr.contains(NOTE), "stderr: {}", out.stderr);
    assert!(!out.stdout.contains("waiting"), "stdout: {}", out.stdout);
    assert_eq!(out.stdout, "Sentence: After it.\nWrite Successful!\n");
    c.wait_event_since(
        "nm",
        since,
        "failover_complete",
        |v| v["pair"] == PRIMARY,
        WAIT,
    );
    assert_eq!(read_a(&c), "Before the failure. After it.\n");
    out.assert_code(0);
}

#[test]
fn a_write_after_a_kill_succeeds_with_exit_status_zero() {
    let mut c = pair_with_a_file(Cluster::builder());
    c.kill9(PRIMARY);
    let out = c
        .client("alice")
        .run("WRITE a.txt 1\n0 Once.\nETIRW\nUNDO a.txt\nWRITE a.txt 1\n0 Twice.\nETIRW\n");
    out.assert_code(0);
    assert_eq!(
        out.stdout,
        "Sentence: Once.\nWrite Successful!\nUndo Successful!\nSentence: Twice.\nWrite Successful!\n"
    );
    assert_eq!(read_a(&c), "Before the failure. Twice.\n");
}

#[test]
fn wait_zero_fails_at_once_during_a_failover() {
    // A long heartbeat timeout keeps the pair between writers for seconds after the kill.
    let mut c = pair_with_a_file(Cluster::builder().nm_args(&["--heartbeat-timeout-ms", "6000"]));
    let since = c.mark("nm");
    c.kill9(PRIMARY);
    c.wait_event_since(
        "nm",
        since,
        "failover_start",
        |v| v["pair"] == PRIMARY,
        WAIT,
    );
    let started = Instant::now();
    let out = c
        .client("alice")
        .arg("--wait-s")
        .arg("0")
        .run("WRITE a.txt 1\n0 x.\nETIRW\nVIEW\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    out.assert_contains("ERROR [UNAVAILABLE]: a.txt cannot take changes for a moment: pair ss1 is moving its writer")
        .assert_code(1);
    // The refused WRITE's lines were skipped, not run as commands.
    assert!(!out.stdout.contains("unknown command"), "{}", out.stdout);
    assert!(!out.stdout.contains("ETIRW"), "{}", out.stdout);
    out.assert_contains("--> a.txt");
    assert!(!out.stderr.contains(NOTE), "stderr: {}", out.stderr);
}

#[test]
fn a_write_session_open_when_its_writer_dies_commits_once_on_the_backup() {
    let mut c = pair_with_a_file(Cluster::builder());
    let mut s = open_with_an_edit(&c, 1, "Typed");
    c.kill9(PRIMARY);
    s.send("1 before and after.");
    s.expect(
        |l| l == "Sentence: Typed before and after.",
        "the edit replayed on the new writer",
    );
    s.send("ETIRW");
    s.expect(|l| l == "Write Successful!", "the commit");
    let (code, lines) = s.finish();
    assert_eq!(code, Some(0), "{lines:?}");
    assert_eq!(read_a(&c), "Before the failure. Typed before and after.\n");
}

#[test]
fn a_writer_lost_just_before_etirw_commits_once() {
    let mut c = pair_with_a_file(Cluster::builder());
    let mut s = open_with_an_edit(&c, 1, "Only once.");
    c.kill9(PRIMARY);
    s.send("ETIRW");
    s.expect(|l| l == "Write Successful!", "the commit");
    assert_eq!(s.finish().0, Some(0));
    assert_eq!(read_a(&c), "Before the failure. Only once.\n");
}

#[test]
fn a_sentence_changed_during_the_failover_ends_the_session_with_conflict() {
    let mut c = pair_with_a_file(Cluster::builder());
    let mut s = open_with_an_edit(&c, 0, "Mine:");
    c.kill_and_promote(PRIMARY);
    // The lock died with the old writer: another writer takes the sentence on the new one.
    c.client("alice")
        .run("WRITE a.txt 0\n0 Theirs:\nETIRW\n")
        .assert_contains("Write Successful!")
        .assert_code(0);
    s.send("ETIRW");
    let line = s.expect(|l| l.starts_with("ERROR"), "the conflict");
    assert!(
        line.starts_with("ERROR [CONFLICT]: sentence 0 of a.txt changed"),
        "{line}"
    );
    assert_eq!(s.finish().0, Some(1));
    assert_eq!(read_a(&c), "Theirs: Before the failure.\n");
}

/// Runs `input` as alice against a pair (sync replication) whose primary exits once a
/// change is durable on both members but before it answers: the commit's answer is lost.
fn with_the_commit_answer_lost(input: &str) -> (Cluster, Output) {
    let c = pair_with_a_file(
        Cluster::builder()
            .nm_args(&["--replication", "sync"])
            .server_env(PRIMARY, "PAIRFS_FAULT_SS", "exit-after-commit"),
    );
    let since = c.mark(PRIMARY);
    let out = c.client("alice").run(input);
    c.wait_event_since(
        PRIMARY,
        since,
        "ss_refused",
        |v| v["reason"] == "fault",
        WAIT,
    );
    (c, out)
}

#[test]
fn a_commit_whose_answer_is_lost_is_applied_once() {
    let (c, out) = with_the_commit_answer_lost("WRITE a.txt 1\n0 Exactly once.\nETIRW\n");
    out.assert_code(0);
    assert_eq!(out.stdout, "Sentence: Exactly once.\nWrite Successful!\n");
    assert_eq!(read_a(&c), "Before the failure. Exactly once.\n");
}

#[test]
fn a_lost_commit_answer_that_cannot_be_told_is_never_committed_again() {
    // The edit adds a whole sentence after sentence 0: committed, sentence 0 still reads as
    // it did, so its text cannot tell whether the commit landed. The client must not replay.
    let (c, out) = with_the_commit_answer_lost("WRITE a.txt 0\n3 Added once.\nETIRW\n");
    out.assert_code(1);
    assert!(out.stdout.contains("ERROR [CONFLICT]"), "{}", out.stdout);
    assert!(out.stdout.contains("READ the file"), "{}", out.stdout);
    assert_eq!(read_a(&c), "Before the failure. Added once.\n");
}

#[test]
fn an_upload_whose_answer_is_lost_is_applied_once() {
    let c = Cluster::builder()
        .pair()
        .nm_args(&["--replication", "sync"])
        .server_env(PRIMARY, "PAIRFS_FAULT_SS", "exit-after-upload")
        .start();
    c.wait_event("nm", "replication_assign", |v| mentions(v, BACKUP), WAIT);
    c.client("alice").run("CREATE u.txt\n").assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "u.txt");
    let local = c.dir().join("u.local");
    std::fs::write(&local, "Uploaded once.").unwrap();
    let since = c.mark(PRIMARY);
    let out = c
        .client("alice")
        .run(&format!("UPLOAD {} u.txt\n", local.display()));
    c.wait_event_since(
        PRIMARY,
        since,
        "ss_refused",
        |v| v["reason"] == "fault",
        WAIT,
    );
    out.assert_code(0);
    assert_eq!(out.stdout, "Upload Successful! (14 bytes)\n");
    // One change in the history: one UNDO reaches the empty file, a second has nothing left.
    let undo = c
        .client("alice")
        .run("READ u.txt\nUNDO u.txt\nREAD u.txt\nUNDO u.txt\n");
    // (UNDO may report `(1 of 2 copies)`: the old primary is down in sync mode.)
    let lines = undo.lines();
    assert_eq!(lines[0], "Uploaded once.", "{}", undo.stdout);
    assert!(lines[1].starts_with("Undo Successful!"), "{}", undo.stdout);
    assert_eq!(lines[2], "", "{}", undo.stdout);
    assert!(lines[3].starts_with("ERROR [NO_UNDO]"), "{}", undo.stdout);
}

#[test]
fn a_write_that_cannot_open_skips_its_edit_lines() {
    let c = Cluster::start();
    let out = c
        .client("alice")
        .run("CREATE m.txt\nWRITE m.txt 9\n0 x\n1 y\nETIRW\nVIEW\nWRITE nope.txt 0\n0 z\n");
    assert_eq!(
        out.stdout,
        "File Created Successfully!\n\
         ERROR [INVALID]: Sentence index out of range\n\
         --> m.txt\n\
         ERROR [NOT_FOUND]: File not found: nope.txt\n",
    );
    out.assert_code(1);
}
