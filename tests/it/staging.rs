//! Staged uploads (issue 3): a large UPLOAD reaches the backup while it arrives at the
//! primary, and the replication job that follows installs that staged copy instead of sending
//! the file again. A stage that is lost, or a backup that dies mid-stream, costs only time:
//! the upload still commits and the job sends the file whole.
//!
//! Every test runs through the real binaries.

use crate::harness::*;
use pairfs::auth::NM_USER;
use pairfs::protocol::{ErrorCode, FileState, Message, TicketOp, UndoDesc, Version};
use std::time::Duration;

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";
/// Above the staging threshold (1 MiB), quick to move.
const SIZE: usize = 3 << 20;

fn upload(c: &Cluster, bytes: &[u8], name: &str) -> Output {
    let local = c.dir().join(format!("{name}.local"));
    std::fs::write(&local, bytes).unwrap();
    let out = c.client("alice").run_timeout(
        &format!("UPLOAD {} {name}\n", local.display()),
        Duration::from_secs(60),
    );
    out.assert_contains("Upload Successful!").assert_code(0);
    out
}

fn paired(c: &Cluster) {
    c.wait_event(
        "nm",
        "replication_assign",
        |v| v["msg"].as_str().is_some_and(|m| m.contains("Paired")),
        WAIT,
    );
}

/// The primary learns its partner from a heartbeat ack once the backup is up.
fn partnered(c: &Cluster) {
    paired(c);
    c.wait_event(PRIMARY, "ss_nm_link", |v| v["partner"] == BACKUP, WAIT);
}

/// The backup holds `bytes` as `file` and would serve it exactly as the primary does.
fn assert_same(c: &Cluster, file: &str, bytes: &[u8]) {
    let ok = poll_until(WAIT, || {
        file_on_disk(c, BACKUP, file).is_some_and(|b| b == bytes)
    });
    assert!(ok, "the backup's {file} never matched the upload");
    let (p, p_blobs) = held(c, PRIMARY, file);
    let (b, b_blobs) = held(c, BACKUP, file);
    let (p, b) = (p.unwrap(), b.unwrap());
    assert_eq!(
        (p.version, p.checksum, p.size, &p.owner, p.words, p.chars),
        (b.version, b.checksum, b.size, &b.owner, b.words, b.chars),
        "{file}: the backup's state differs from the primary's"
    );
    assert_eq!(p_blobs, b_blobs, "{file}: undo history differs");
}

#[test]
fn a_large_upload_is_staged_on_the_backup_and_not_sent_again() {
    let c = Cluster::builder().pair().start();
    partnered(&c);
    let m = c.mark("nm");
    let m_ss = c.mark(PRIMARY);
    let first = blob(SIZE, 1);
    upload(&c, &first, "big.bin");
    // The writer's log line says where the upload's time went, and that it was staged.
    let said = c.wait_event_since(
        PRIMARY,
        m_ss,
        "ss_commit",
        |v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("uploaded big.bin"))
        },
        WAIT,
    );
    for field in ["recv_ms", "sync_ms", "stage_wait_ms", "install_ms"] {
        assert!(said[field].is_u64(), "no {field} in {said}");
    }
    assert_eq!(said["staged"].as_bool(), Some(true), "{said}");
    let staged = c.wait_event_since(
        "nm",
        m,
        "replication_staged",
        |v| mentions(v, "big.bin") && v["level"] == "INFO",
        WAIT,
    );
    assert_eq!(staged["size"].as_u64(), Some(SIZE as u64));
    // Only the history went: the empty first version UPLOAD created.
    assert_eq!(staged["bytes"].as_u64(), Some(0), "{staged}");
    assert_same(&c, "big.bin", &first);
    // Nothing was relayed whole for it.
    let fetched = c.log("nm").count(m, "replication_worker_fetched", &|v| {
        mentions(v, "big.bin") && v["bytes"].as_u64() == Some(SIZE as u64)
    });
    assert_eq!(fetched, 0, "big.bin was sent again after its stage");

    // Over an existing file: the old content becomes a history entry on both copies, and the
    // backup serves UNDO as the primary would.
    // The backup's own copy stands for that entry (verified, then linked in), so nothing
    // of the file crosses again.
    let m = c.mark("nm");
    let second = blob(SIZE + 17, 2);
    upload(&c, &second, "big.bin");
    let staged = c.wait_event_since(
        "nm",
        m,
        "replication_staged",
        |v| mentions(v, "big.bin") && v["level"] == "INFO",
        WAIT,
    );
    assert_eq!(staged["bytes"].as_u64(), Some(0), "{staged}");
    assert_same(&c, "big.bin", &second);
    c.client("alice").run("UNDO big.bin\n").assert_code(0);
    assert_same(&c, "big.bin", &first);
    assert!(
        std::fs::read_dir(c.storage(BACKUP).join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the claimed stage left a file in the backup's tmp/"
    );
}

#[test]
fn a_forgotten_stage_is_sent_whole() {
    let c = Cluster::builder()
        .pair()
        .server_env(BACKUP, "PAIRFS_FAULT_STAGE", "forget")
        .start();
    partnered(&c);
    let m = c.mark("nm");
    let bytes = blob(SIZE, 3);
    upload(&c, &bytes, "big.bin");
    c.wait_event_since(
        "nm",
        m,
        "replication_staged",
        |v| mentions(v, "big.bin") && v["level"] == "WARN",
        WAIT,
    );
    c.wait_event_since(
        "nm",
        m,
        "replication_worker_fetched",
        |v| mentions(v, "big.bin") && v["bytes"].as_u64() == Some(SIZE as u64),
        WAIT,
    );
    assert_same(&c, "big.bin", &bytes);
}

#[test]
fn a_backup_that_drops_the_stage_midway_does_not_fail_the_upload() {
    let c = Cluster::builder()
        .pair()
        .server_env(BACKUP, "PAIRFS_FAULT_STAGE", "cut")
        .start();
    partnered(&c);
    let m = c.mark(PRIMARY);
    let bytes = blob(SIZE, 4);
    upload(&c, &bytes, "big.bin");
    c.wait_event_since(
        PRIMARY,
        m,
        "ss_refused",
        |v| mentions(v, "big.bin") && v["reason"] == "stage",
        WAIT,
    );
    assert_same(&c, "big.bin", &bytes);
}

#[test]
fn a_backup_that_refuses_the_stage_is_dropped_at_once_and_says_why() {
    let c = Cluster::builder()
        .pair()
        .server_env(BACKUP, "PAIRFS_FAULT_STAGE", "refuse")
        .start();
    partnered(&c);
    let m = c.mark(PRIMARY);
    let bytes = blob(SIZE, 6);
    upload(&c, &bytes, "big.bin");
    let refused = c.wait_event_since(
        PRIMARY,
        m,
        "ss_refused",
        |v| mentions(v, "big.bin") && v["reason"] == "stage",
        WAIT,
    );
    let msg = refused["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("already receiving"), "{msg}");
    assert_same(&c, "big.bin", &bytes);
}

#[test]
fn sync_mode_answers_a_staged_upload_with_both_copies_durable() {
    let c = Cluster::builder()
        .nm_args(&["--replication", "sync"])
        .pair()
        .start();
    partnered(&c);
    let bytes = blob(SIZE, 5);
    let m = c.mark("nm");
    upload(&c, &bytes, "big.bin").assert_lacks("of 2 copies");
    // Answered once both copies are durable: no waiting.
    assert_eq!(
        file_on_disk(&c, BACKUP, "big.bin").as_deref(),
        Some(&bytes[..])
    );
    c.wait_event_since(
        "nm",
        m,
        "replication_staged",
        |v| mentions(v, "big.bin") && v["level"] == "INFO",
        WAIT,
    );
}

/// Stages `bytes` of `file` on the backup through the wire protocol: its id.
fn stage_raw(c: &Cluster, file: &str, bytes: &[u8]) -> String {
    let mut conn = c.ss_conn(BACKUP);
    let head = Message::StageUpload {
        file: file.into(),
        size: bytes.len() as u64,
        checksum: crc32c::crc32c(bytes),
        ticket: c.key().mint("alice", file, TicketOp::Stage, BACKUP, None),
    };
    conn.send(&head, &[]).unwrap();
    conn.send(&Message::Chunk {}, bytes).unwrap();
    conn.send(&Message::End {}, &[]).unwrap();
    match conn.recv_some().unwrap().msg {
        Message::Staged { id } => id,
        other => panic!("STAGE_UPLOAD answered {other:?}"),
    }
}

/// A PUT_FILE_CONTENT of `state` naming stage `id`, with the history entry of the version
/// before it (`entry`'s bytes) sent after it; the answer.
fn put_staged(
    c: &Cluster,
    conn: &mut pairfs::protocol::Connection,
    state: &FileState,
    id: &str,
    entry: &[u8],
) -> Message {
    let v = Version {
        epoch: state.version.epoch,
        counter: state.version.counter - 1,
    };
    let put = Message::PutFileContent {
        file: state.file.clone(),
        state: state.clone(),
        undo: vec![UndoDesc {
            version: v,
            size: entry.len() as u64,
            checksum: crc32c::crc32c(entry),
        }],
        sent: vec![v],
        checkpoints: vec![],
        sent_checkpoints: vec![],
        staged: Some(id.into()),
        basis: None,
        ticket: c
            .key()
            .mint(NM_USER, &state.file, TicketOp::Store, BACKUP, None),
    };
    conn.send(&put, &[]).unwrap();
    conn.send(&Message::Chunk {}, entry).unwrap();
    conn.send(&Message::End {}, &[]).unwrap();
    conn.recv_some().unwrap().msg
}

/// PEEK_FILE on `conn`: the version the backup holds.
fn peek_on(c: &Cluster, conn: &mut pairfs::protocol::Connection, file: &str) -> Option<Version> {
    let ticket = c.key().mint(NM_USER, file, TicketOp::Store, BACKUP, None);
    match call_raw(
        conn,
        &Message::PeekFile {
            file: file.into(),
            ticket,
        },
    )
    .msg
    {
        Message::Held { state, .. } => state.map(|s| s.version),
        other => panic!("PEEK answered {other:?}"),
    }
}

#[test]
fn a_stage_must_match_the_copy_it_stands_for() {
    let c = Cluster::builder().pair().start();
    paired(&c);
    c.client("alice").run("CREATE a.txt\n").assert_code(0);
    wait_file_replicated(&c, PRIMARY, BACKUP, "a.txt");
    let state = held(&c, PRIMARY, "a.txt").0.unwrap();
    let content = b"staged content".to_vec();
    let newer = FileState {
        version: Version {
            epoch: state.version.epoch,
            counter: state.version.counter + 5,
        },
        size: content.len() as u64,
        checksum: crc32c::crc32c(&content),
        ..state.clone()
    };
    // A PUT naming a stage the server never made is refused, its history part is still read
    // (the connection stays in step: the next request on it is answered), and nothing is
    // installed.
    let mut conn = c.ss_conn(BACKUP);
    match put_staged(
        &c,
        &mut conn,
        &newer,
        "0123456789abcdef0123456789abcdef",
        b"old",
    ) {
        Message::Err { code, msg } => {
            assert_eq!(code, ErrorCode::NotFound, "{msg}");
            assert!(msg.contains("no staged upload"), "{msg}");
        }
        other => panic!("a PUT naming an unknown stage answered {other:?}"),
    }
    assert_eq!(peek_on(&c, &mut conn, "a.txt"), Some(state.version));

    // A stage of other bytes, or of another file, cannot stand for the content.
    let other = stage_raw(&c, "a.txt", b"other bytes!!!");
    match put_staged(&c, &mut conn, &newer, &other, b"old") {
        Message::Err { code, msg } => assert_eq!(code, ErrorCode::Invalid, "{msg}"),
        other => panic!("a PUT naming a stage of other bytes answered {other:?}"),
    }
    let elsewhere = stage_raw(&c, "b.txt", &content);
    match put_staged(&c, &mut conn, &newer, &elsewhere, b"old") {
        Message::Err { code, msg } => assert_eq!(code, ErrorCode::Invalid, "{msg}"),
        other => panic!("a PUT naming a stage of another file answered {other:?}"),
    }
    assert_eq!(peek_on(&c, &mut conn, "a.txt"), Some(state.version));

    // The right stage installs, with the history entry sent beside it; it is used once.
    let id = stage_raw(&c, "a.txt", &content);
    match put_staged(&c, &mut conn, &newer, &id, b"old") {
        Message::FileStateReply { state } => assert_eq!(state.version, newer.version),
        other => panic!("a PUT naming its stage answered {other:?}"),
    }
    assert_eq!(file_on_disk(&c, BACKUP, "a.txt").unwrap(), content);
    let newest = FileState {
        version: Version {
            counter: newer.version.counter + 1,
            ..newer.version
        },
        ..newer.clone()
    };
    match put_staged(&c, &mut conn, &newest, &id, &content) {
        Message::Err { code, .. } => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("a stage used twice answered {other:?}"),
    }

    // A stage is only made with a ticket for this very server: refused at once.
    let mut conn = c.ss_conn(BACKUP);
    let head = Message::StageUpload {
        file: "a.txt".into(),
        size: 3,
        checksum: crc32c::crc32c(b"abc"),
        ticket: c
            .key()
            .mint("alice", "a.txt", TicketOp::Stage, PRIMARY, None),
    };
    match call_raw(&mut conn, &head).msg {
        Message::Err { code, .. } => assert_eq!(code, ErrorCode::Unauthorized),
        other => panic!("a stage with another server's ticket answered {other:?}"),
    }
    // With its own ticket, but bytes that are not what was declared: refused, nothing kept.
    let mut conn = c.ss_conn(BACKUP);
    let head = Message::StageUpload {
        file: "a.txt".into(),
        size: 3,
        checksum: crc32c::crc32c(b"abd"),
        ticket: c
            .key()
            .mint("alice", "a.txt", TicketOp::Stage, BACKUP, None),
    };
    conn.send(&head, &[]).unwrap();
    conn.send(&Message::Chunk {}, b"abc").unwrap();
    conn.send(&Message::End {}, &[]).unwrap();
    match conn.recv_some().unwrap().msg {
        Message::Err { code, .. } => assert_eq!(code, ErrorCode::Invalid),
        other => panic!("a stage with a wrong checksum answered {other:?}"),
    }
}
