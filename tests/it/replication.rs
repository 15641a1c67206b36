//! Replication (SPEC §5, issue 3): pairing in both start orders, every replicated operation
//! reaching the backup byte for byte with the metadata it would serve, initial sync of a late
//! backup, read-only backups, a durable queue across a name-server SIGKILL, corrupted transfers
//! rejected and retried, coalescing, sync mode, STATUS, and bounded memory for a large file.
//!
//! Every test runs through the real binaries.

use crate::harness::*;
use pairfs::protocol::{ErrorCode, Message, TicketOp};
use std::time::Duration;

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";

/// Asserts the backup would serve `file` exactly as the primary does: same bytes on disk, same
/// version, checksum, size and owner, same undo history.
fn assert_same_copy(c: &Cluster, file: &str) {
    let bytes = wait_file_replicated(c, PRIMARY, BACKUP, file);
    let (p, p_blobs) = held(c, PRIMARY, file);
    let (b, b_blobs) = held(c, BACKUP, file);
    let p = p.unwrap_or_else(|| panic!("{PRIMARY} holds no {file}"));
    let b = b.unwrap_or_else(|| panic!("{BACKUP} holds no {file}"));
    assert_eq!(p.size, bytes.len() as u64);
    assert_eq!(
        (p.version, p.checksum, p.size, &p.owner, p.words, p.chars),
        (b.version, b.checksum, b.size, &b.owner, b.words, b.chars),
        "{file}: backup state differs from the primary's"
    );
    assert_eq!(p_blobs, b_blobs, "{file}: undo history differs");
}

/// Writes `text` as a new sentence `i` of `file` through the client.
fn write_sentence(c: &Cluster, user: &str, file: &str, i: u64, text: &str) {
    c.client(user)
        .run(&format!("WRITE {file} {i}\n0 {text}\nETIRW\n"))
        .assert_contains("Write Successful!")
        .assert_code(0);
}

/// A pair whose members both registered and were paired.
fn pair_cluster() -> Cluster {
    let c = Cluster::builder().pair().start();
    wait_paired(&c);
    c
}

fn wait_paired(c: &Cluster) {
    c.wait_event(
        "nm",
        "replication_assign",
        |v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("Paired ss1 → ss1_backup"))
        },
        WAIT,
    );
}

/// Binary bytes of every value, for UPLOAD.
fn binary_blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn every_replicated_operation_reaches_the_backup() {
    let c = pair_cluster();
    let alice = c.client("alice");

    let m = c.mark("nm");
    alice.run("CREATE a.txt\n").assert_code(0);
    wait_replicated(&c, m, "a.txt");
    assert_same_copy(&c, "a.txt");

    let m = c.mark("nm");
    write_sentence(&c, "alice", "a.txt", 0, "Hello replicated world.");
    wait_replicated(&c, m, "a.txt");
    write_sentence(&c, "alice", "a.txt", 1, "Second sentence here.");
    assert_same_copy(&c, "a.txt");
    assert_eq!(
        file_on_disk(&c, BACKUP, "a.txt").unwrap(),
        b"Hello replicated world. Second sentence here."
    );

    let m = c.mark("nm");
    alice
        .run("UNDO a.txt\n")
        .assert_lines(&["Undo Successful!"]);
    wait_replicated(&c, m, "a.txt");
    assert_same_copy(&c, "a.txt");
    assert_eq!(
        file_on_disk(&c, BACKUP, "a.txt").unwrap(),
        b"Hello replicated world."
    );

    // UPLOAD of binary bytes, to a new file (created by the upload) and over an existing one.
    let local = c.dir().join("blob.bin");
    std::fs::write(&local, binary_blob(300_000)).unwrap();
    let m = c.mark("nm");
    alice
        .run(&format!("UPLOAD {} b.bin\n", local.display()))
        .assert_contains("Upload Successful!")
        .assert_code(0);
    wait_replicated(&c, m, "b.bin");
    assert_same_copy(&c, "b.bin");
    assert_eq!(
        file_on_disk(&c, BACKUP, "b.bin").unwrap(),
        binary_blob(300_000)
    );
    let m = c.mark("nm");
    alice
        .run(&format!("UPLOAD {} a.txt\n", local.display()))
        .assert_contains("Upload Successful!");
    wait_replicated(&c, m, "a.txt");
    assert_same_copy(&c, "a.txt");

    // An access change reaches the backup's record too (it must serve bob as the primary does).
    alice.run("ADDACCESS -R b.bin bob\n").assert_code(0);
    alice
        .run("INFO a.txt\n")
        .assert_contains("Replicas: ss1 (current), ss1_backup (current)");

    let m = c.mark("nm");
    alice
        .run("DELETE b.bin\n")
        .assert_lines(&["File deleted successfully!"]);
    c.wait_event_since(
        "nm",
        m,
        "replication_worker_delete_success",
        |v| mentions(v, "b.bin"),
        WAIT,
    );
    wait_file_absent(&c, BACKUP, "b.bin");
    wait_trees_equal(&c, PRIMARY, BACKUP);
    assert_eq!(files_tree(&c, BACKUP).len(), 1);
}

#[test]
fn pairing_with_the_primary_first() {
    let c = Cluster::builder().servers(&[PRIMARY, BACKUP]).start();
    wait_paired(&c);
    c.client("alice").run("CREATE a.txt\n").assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
}

#[test]
fn pairing_with_the_backup_first() {
    let c = Cluster::builder().servers(&[BACKUP, PRIMARY]).start();
    wait_paired(&c);
    c.client("alice").run("CREATE a.txt\n").assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
}

#[test]
fn pairing_by_flag_and_durable_across_restart() {
    // `--backup-of` pairs a server with any name; the pairing survives a name-server restart.
    let mut c = Cluster::builder()
        .servers(&["ss1", "mirror"])
        .server_args("mirror", &["--backup-of", "ss1"])
        .start();
    c.wait_event(
        "nm",
        "replication_assign",
        |v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("ss1 → mirror"))
        },
        WAIT,
    );
    c.kill9("nm");
    c.restart("nm");
    for i in 0..5 {
        c.client("alice")
            .run(&format!("CREATE f{i}.txt\n"))
            .assert_code(0);
        assert!(file_on_disk(&c, "ss1", &format!("f{i}.txt")).is_some());
    }
    wait_trees_equal(&c, "ss1", "mirror");
}

#[test]
fn a_late_backup_gets_every_file() {
    let mut c = Cluster::builder().servers(&[PRIMARY]).start();
    for i in 0..20 {
        c.client("alice")
            .run(&format!("CREATE f{i:02}.txt\n"))
            .assert_code(0);
    }
    for i in 0..5 {
        write_sentence(
            &c,
            "alice",
            &format!("f{i:02}.txt"),
            0,
            &format!("Content {i}."),
        );
    }
    let since = c.mark("nm");
    c.add_ss(BACKUP);
    c.wait_registered(BACKUP, since);
    wait_paired(&c);
    wait_trees_equal(&c, PRIMARY, BACKUP);
    assert_eq!(files_tree(&c, BACKUP).len(), 20);
    for i in 0..5 {
        assert_same_copy(&c, &format!("f{i:02}.txt"));
    }
}

#[test]
fn new_files_never_land_on_a_backup() {
    // The backup starts first and is the only server for a moment: still no file goes there.
    let c = Cluster::builder().servers(&[BACKUP, PRIMARY]).start();
    wait_paired(&c);
    for i in 0..20 {
        let f = format!("n{i:02}.txt");
        c.client("alice")
            .run(&format!("CREATE {f}\nINFO {f}\n"))
            .assert_contains("Replicas: ss1")
            .assert_code(0);
        // The primary has it as soon as CREATE answered; the backup only through replication.
        assert!(
            file_on_disk(&c, PRIMARY, &f).is_some(),
            "{f} not on {PRIMARY}"
        );
    }
    wait_trees_equal(&c, PRIMARY, BACKUP);
    let s = status(&c);
    let backup =
        s.0.iter()
            .find(|s| s.name == BACKUP)
            .expect("backup in STATUS");
    assert_eq!(backup.role, "backup");
}

#[test]
fn a_backup_refuses_client_writes() {
    let c = pair_cluster();
    c.client("alice").run("CREATE a.txt\n").assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
    let key = c.key();

    // A validly signed write ticket for the backup is still refused: backups are read-only.
    let t = key.mint("alice", "a.txt", TicketOp::Write, BACKUP, None);
    let mut conn = c.ss_conn(BACKUP);
    let f = call_raw(
        &mut conn,
        &Message::WriteBegin {
            file: "a.txt".into(),
            sentence: 0,
            ticket: t,
        },
    );
    match f.msg {
        Message::Err { code, .. } => assert_eq!(code, ErrorCode::Unauthorized),
        other => panic!("WRITE_BEGIN on the backup answered {other:?}"),
    }
    // An empty upload: the header, then END at once (a server may answer only after END).
    let t = key.mint("alice", "a.txt", TicketOp::Upload, BACKUP, None);
    let mut conn = c.ss_conn(BACKUP);
    let head = Message::Upload {
        file: "a.txt".into(),
        size: 0,
        checksum: 0,
        ticket: t,
    };
    conn.send(&head, &[]).unwrap();
    let f = call_raw(&mut conn, &Message::End {});
    assert!(
        matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "UPLOAD on the backup answered {:?}",
        f.msg
    );
    // Reads from the backup stay allowed, and its copy is untouched.
    let t = key.mint("alice", "a.txt", TicketOp::Read, BACKUP, None);
    assert_eq!(
        read_with_ticket(c.ss_addr(BACKUP), "a.txt", t).unwrap(),
        b""
    );
    // The name server never hands out a write ticket for the backup.
    let mut nm = hello(c.nm_addr(), "alice").unwrap();
    let (addr, _) = locate(&mut nm, "a.txt", pairfs::protocol::AccessMode::Write).unwrap();
    assert_eq!(addr, c.ss_addr(PRIMARY));
}

#[test]
fn nm_sigkill_with_the_backup_down_loses_no_job() {
    let mut c = pair_cluster();
    let alice = c.client("alice");
    for f in ["a.txt", "b.txt", "c.txt"] {
        alice.run(&format!("CREATE {f}\n")).assert_code(0);
    }
    wait_trees_equal(&c, PRIMARY, BACKUP);

    c.kill9(BACKUP);
    write_sentence(&c, "alice", "a.txt", 0, "Owed to the backup.");
    alice.run("CREATE d.txt\nDELETE c.txt\n").assert_code(0);
    write_sentence(&c, "alice", "d.txt", 0, "New while down.");
    let local = c.dir().join("up.bin");
    std::fs::write(&local, binary_blob(100_000)).unwrap();
    alice
        .run(&format!("UPLOAD {} b.txt\n", local.display()))
        .assert_code(0);

    // Jobs are queued (the backup is down); the name server dies without warning.
    c.kill9("nm");
    c.restart("nm");
    c.restart(BACKUP);
    wait_trees_equal(&c, PRIMARY, BACKUP);
    assert!(file_on_disk(&c, BACKUP, "c.txt").is_none());
    for f in ["a.txt", "b.txt", "d.txt"] {
        assert_same_copy(&c, f);
    }
}

#[test]
fn a_corrupted_transfer_is_rejected_and_retried() {
    // The file exists (with content) before the backup joins, so the first transfer the
    // backup receives, the one the fault hook corrupts, carries bytes.
    let mut c = Cluster::builder().servers(&[PRIMARY]).start();
    c.client("alice").run("CREATE a.txt\n").assert_code(0);
    write_sentence(&c, "alice", "a.txt", 0, "Bytes that must arrive intact.");
    let m = c.mark("nm");
    c.add_ss_with(BACKUP, &[], &[("PAIRFS_FAULT_FLIP_PUT", "1")]);
    c.wait_registered(BACKUP, m);
    c.wait_event_since(
        "nm",
        m,
        "replication_worker_error",
        |v| mentions(v, "a.txt"),
        WAIT,
    );
    c.wait_event_since(
        "nm",
        m,
        "replication_worker_success",
        |v| mentions(v, "a.txt"),
        WAIT,
    );
    assert_same_copy(&c, "a.txt");
}

#[test]
fn ten_quick_writes_coalesce() {
    let mut c = pair_cluster();
    c.client("alice").run("CREATE a.txt\n").assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
    // With the backup down the ten changes wait as owed jobs for one file.
    c.kill9(BACKUP);
    let m = c.mark("nm");
    let mut script = String::new();
    for i in 0..10 {
        script.push_str(&format!("WRITE a.txt {i}\n0 Change {i}.\nETIRW\n"));
    }
    let out = c.client("alice").run(&script);
    out.assert_code(0);
    assert_eq!(
        out.stdout.matches("Write Successful!").count(),
        10,
        "{}",
        out.stdout
    );
    c.restart(BACKUP);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
    assert_same_copy(&c, "a.txt");
    let transfers = c
        .log("nm")
        .count(m, "replication_worker_fetched", &|v| mentions(v, "a.txt"));
    assert!(
        (1..10).contains(&transfers),
        "{transfers} transfers for ten writes"
    );
}

#[test]
fn sync_mode_counts_copies() {
    let mut c = Cluster::builder()
        .nm_args(&["--replication", "sync"])
        .pair()
        .start();
    wait_paired(&c);
    let alice = c.client("alice");
    alice
        .run("CREATE a.txt\n")
        .assert_lines(&["File Created Successfully!"]);
    // Answered only once both copies are durable: no waiting needed.
    assert_eq!(file_on_disk(&c, BACKUP, "a.txt").as_deref(), Some(&b""[..]));
    alice
        .run("WRITE a.txt 0\n0 Both sides.\nETIRW\n")
        .assert_contains("Write Successful!\n")
        .assert_lacks("of 2 copies");
    assert_eq!(file_on_disk(&c, BACKUP, "a.txt").unwrap(), b"Both sides.");

    let m = c.mark("nm");
    c.kill9(BACKUP);
    c.wait_event_since(
        "nm",
        m,
        "heartbeat_monitor_failure",
        |v| mentions(v, BACKUP),
        WAIT,
    );
    alice
        .run("CREATE b.txt\n")
        .assert_lines(&["File Created Successfully! (1 of 2 copies)"]);
    alice
        .run("WRITE a.txt 1\n0 Only one.\nETIRW\n")
        .assert_contains("Write Successful! (1 of 2 copies)");
    let local = c.dir().join("u.bin");
    std::fs::write(&local, binary_blob(10_000)).unwrap();
    alice
        .run(&format!("UPLOAD {} b.txt\n", local.display()))
        .assert_contains("(1 of 2 copies)")
        .assert_code(0);
    alice
        .run("DELETE a.txt\n")
        .assert_lines(&["File deleted successfully! (1 of 2 copies)"]);

    c.restart(BACKUP);
    wait_trees_equal(&c, PRIMARY, BACKUP);
    assert_same_copy(&c, "b.txt");
    alice
        .run("CREATE c.txt\n")
        .assert_lines(&["File Created Successfully!"]);
}

/// STATUS through the protocol: servers, pairs, queue depth, failed jobs, mode.
type StatusParts = (
    Vec<pairfs::protocol::ServerStatus>,
    Vec<pairfs::protocol::PairStatus>,
    u64,
    Vec<pairfs::protocol::FailedJob>,
    String,
);

fn status(c: &Cluster) -> StatusParts {
    let mut nm = c.nm_session("alice");
    match call_raw(&mut nm, &Message::Status {}).msg {
        Message::StatusReply {
            servers,
            pairs,
            queue_depth,
            failed,
            replication,
            ..
        } => (servers, pairs, queue_depth, failed, replication),
        other => panic!("STATUS answered {other:?}"),
    }
}

#[test]
fn status_shows_the_pair_its_lag_and_the_queue() {
    let mut c = Cluster::builder()
        .servers(&[PRIMARY, BACKUP, "ss2"])
        .start();
    wait_paired(&c);
    let (servers, pairs, _, failed, mode) = status(&c);
    assert_eq!(mode, "async");
    assert!(failed.is_empty());
    assert!(servers.iter().all(|s| s.up), "{servers:?}");
    let p = pairs.iter().find(|p| p.primary == PRIMARY).expect("pair");
    assert_eq!(p.backup.as_deref(), Some(BACKUP));
    assert_eq!(p.state, "ACTIVE");
    let lone = pairs.iter().find(|p| p.primary == "ss2").expect("ss2");
    assert_eq!(lone.state, "UNPAIRED");

    // With the backup down, what it is owed shows as lag.
    c.kill9(BACKUP);
    let alice = c.client("alice");
    alice.run("CREATE a.txt\n").assert_code(0);
    write_sentence(&c, "alice", "a.txt", 0, "Lagging behind.");
    let owed = poll_until(WAIT, || {
        let (servers, pairs, _, _, _) = status(&c);
        let down = servers.iter().any(|s| s.name == BACKUP && !s.up);
        let p = pairs.iter().find(|p| p.primary == PRIMARY).unwrap().clone();
        down && p.state == "BACKUP_DOWN" && p.lag_jobs >= 1 && p.lag_bytes >= 15
    });
    assert!(owed, "STATUS never showed the lag: {:?}", status(&c).1);

    let out = alice.run("STATUS\n");
    out.assert_code(0)
        .assert_contains("Storage servers:")
        .assert_contains("Pairs:")
        .assert_contains("ss1_backup")
        .assert_contains("DOWN")
        .assert_contains("BACKUP_DOWN")
        .assert_contains("unpaired")
        .assert_contains("Replication: async, queue depth");

    c.restart(BACKUP);
    wait_trees_equal(&c, PRIMARY, BACKUP);
    let caught_up = poll_until(WAIT, || {
        let (_, pairs, _, _, _) = status(&c);
        let p = pairs.iter().find(|p| p.primary == PRIMARY).unwrap().clone();
        p.state == "ACTIVE" && p.lag_jobs == 0 && p.lag_bytes == 0
    });
    assert!(caught_up, "pair never caught up: {:?}", status(&c).1);
}

/// Streams two files side by side and says whether their bytes are equal (neither is held
/// whole: the test must not itself take the memory the servers may not).
fn same_bytes(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

#[test]
fn a_large_file_replicates_with_bounded_memory() {
    // Large enough that holding the file (or any sizeable part of it) would show, yet quick
    // to move on a busy machine.
    const SIZE: usize = 256 << 20;
    // The peak resident memory each of the name server and both storage servers may reach:
    // a few tens of MiB (buffers of a few MiB per stream, the counting and staging queues,
    // the database's cache), far below the file's size.
    const PEAK_RSS_MIB: u64 = 48;
    let mut c = pair_cluster();
    c.wait_event(PRIMARY, "ss_nm_link", |v| v["partner"] == BACKUP, WAIT);
    let local = c.dir().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&local).unwrap());
        let block = binary_blob(1 << 20);
        for i in 0..SIZE / block.len() {
            f.write_all(&block).unwrap();
            f.write_all(&(i as u64).to_le_bytes()).unwrap();
        }
        f.flush().unwrap();
    }
    let size = std::fs::metadata(&local).unwrap().len();
    // Both ways a large upload reaches the backup: staged there while it arrives, and (the
    // stage lost) relayed whole through the name server's worker afterwards.
    for (name, relayed) in [("big.bin", false), ("big2.bin", true)] {
        if relayed {
            let p = c.mark(PRIMARY);
            c.term(BACKUP);
            let m = c.mark("nm");
            c.restart_with_env(BACKUP, "PAIRFS_FAULT_STAGE", "forget");
            c.wait_registered(BACKUP, m);
            // The writer hears of its partner again (it heard it go down first).
            c.wait_event_since(PRIMARY, p, "ss_nm_link", |v| v["partner"] == "", WAIT);
            c.wait_event_since(PRIMARY, p, "ss_nm_link", |v| v["partner"] == BACKUP, WAIT);
        }
        let m = c.mark("nm");
        c.client("alice")
            .run_timeout(
                &format!("UPLOAD {} {name}\n", local.display()),
                Duration::from_secs(300),
            )
            .assert_contains("Upload Successful!")
            .assert_code(0);
        // UPLOAD creates the file first, so an empty copy replicates before the content
        // does: wait until the backup holds every byte (installed by rename).
        let backup = c.storage(BACKUP).join("files").join(name);
        let arrived = poll_until(Duration::from_secs(300), || {
            std::fs::metadata(&backup).is_ok_and(|m| m.len() == size)
        });
        assert!(arrived, "the backup never held all of {name}");
        if relayed {
            // Staged, then forgotten by the backup: the job sent the file whole.
            c.wait_event_since(
                "nm",
                m,
                "replication_staged",
                |v| mentions(v, name) && v["level"] == "WARN",
                WAIT,
            );
        }
        let (event, bytes) = if relayed {
            ("replication_worker_fetched", size)
        } else {
            ("replication_staged", 0)
        };
        c.wait_event_since(
            "nm",
            m,
            event,
            |v| mentions(v, name) && v["level"] == "INFO" && v["bytes"].as_u64() == Some(bytes),
            WAIT,
        );
        assert!(
            same_bytes(&local, &backup),
            "backup bytes of {name} differ from the upload"
        );
        let (p, _) = held(&c, PRIMARY, name);
        let (b, _) = held(&c, BACKUP, name);
        assert_eq!(p.unwrap().checksum, b.unwrap().checksum);
    }
    for who in ["nm", PRIMARY, BACKUP] {
        let hwm_kib = vm_hwm_kib(c.proc(who).pid());
        assert!(
            hwm_kib < PEAK_RSS_MIB * 1024,
            "{who} peaked at {hwm_kib} KiB while moving {size}-byte files (limit {PEAK_RSS_MIB} MiB)"
        );
    }
}
