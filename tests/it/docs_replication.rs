//! Folders, checkpoints, history and access requests replicated (issue 5): a scenario builds
//! them on a pair, checks the backup's storage directory holds exactly what the primary
//! would serve, SIGKILLs the primary, and checks every one of them through the backup: its
//! own client port, then a fresh name server over a copy of its storage directory (which
//! must serve VIEWFOLDER, LISTCHECKPOINTS, VIEWCHECKPOINT, REVERT and UNDO alike). A second
//! scenario runs the same commands through the client while the backup is promoted, and
//! checks the returning primary receives every change made there.

use crate::harness::*;
use pairfs::auth::NM_USER;
use pairfs::names::move_subject;
use pairfs::protocol::{CheckpointInfo, ErrorCode, Message, TicketOp};
use std::collections::BTreeMap;
use std::path::Path;

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";

/// Every regular file under `<storage of ss>/<sub>/`, by relative path, with its bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What a server would serve of `file` to a replication peer: PEEK_FILE's answer.
fn peek(c: &Cluster, ss: &str, file: &str) -> String {
    let ticket = c.key().mint(NM_USER, file, TicketOp::Store, ss, None);
    let mut conn = c.ss_conn(ss);
    let f = call_raw(
        &mut conn,
        &Message::PeekFile {
            file: file.into(),
            ticket,
        },
    );
    format!("{:?}", f.msg)
}

/// A checkpoint's bytes read straight from `ss` (VIEWCHECKPOINT's storage-server request).
fn checkpoint_on(c: &Cluster, ss: &str, file: &str, tag: &str) -> Vec<u8> {
    let ticket = c.key().mint("alice", file, TicketOp::Read, ss, None);
    let mut conn = c.ss_conn(ss);
    let req = Message::ReadCheckpoint {
        file: file.into(),
        tag: tag.into(),
        ticket,
    };
    let size = match call_raw(&mut conn, &req).msg {
        Message::ReadOk { size, .. } => size,
        other => panic!("READ_CHECKPOINT on {ss} answered {other:?}"),
    };
    let mut bytes = Vec::new();
    loop {
        let f = conn.recv_some().unwrap();
        match f.msg {
            Message::Chunk {} => bytes.extend_from_slice(&f.body),
            Message::End {} => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(bytes.len() as u64, size);
    bytes
}

fn checkpoints_on(c: &Cluster, ss: &str, file: &str) -> Vec<CheckpointInfo> {
    let ticket = c.key().mint("alice", file, TicketOp::Read, ss, None);
    let mut conn = c.ss_conn(ss);
    let req = Message::ListCheckpoints {
        file: file.into(),
        ticket,
    };
    match call_raw(&mut conn, &req).msg {
        Message::CheckpointList { checkpoints } => checkpoints,
        other => panic!("LIST_CHECKPOINTS on {ss} answered {other:?}"),
    }
}

/// Waits until both copies agree: `files/`, `undo/` and `checkpoints/` byte for byte, and
/// PEEK_FILE (state, history versions, checkpoint tags) for every file.
fn wait_same(c: &Cluster, files: &[&str]) {
    let agree = || {
        ["files", "undo", "checkpoints"]
            .iter()
            .all(|sub| tree(&c.storage(PRIMARY).join(sub)) == tree(&c.storage(BACKUP).join(sub)))
            && files
                .iter()
                .all(|f| peek(c, PRIMARY, f) == peek(c, BACKUP, f))
    };
    assert!(
        poll_until(WAIT, agree),
        "the copies differ after {WAIT:?}: {:?} vs {:?}; nm log:\n{}",
        tree(&c.storage(PRIMARY)).into_keys().collect::<Vec<_>>(),
        tree(&c.storage(BACKUP)).into_keys().collect::<Vec<_>>(),
        c.log("nm").tail()
    );
}

#[test]
fn folders_checkpoints_history_and_requests_survive_the_primary() {
    let mut c = Cluster::builder().pair().start();
    c.wait_event(
        "nm",
        "replication_assign",
        |v| v["msg"].as_str().is_some_and(|m| m.contains("Paired ss1")),
        WAIT,
    );
    let alice = c.client("alice");
    alice
        .run(
            "CREATEFOLDER /docs\nCREATEFOLDER /docs/sub\nCREATE /docs/a.txt\n\
             WRITE /docs/a.txt 0\n0 Draft one.\nETIRW\nCHECKPOINT /docs/a.txt v1\n\
             WRITE /docs/a.txt 1\n0 Draft two.\nETIRW\nCHECKPOINT /docs/a.txt v2\n\
             WRITE /docs/a.txt 2\n0 Three.\nETIRW\nREVERT /docs/a.txt v1\n\
             CREATE b.txt\nWRITE b.txt 0\n0 Bee.\nETIRW\nCHECKPOINT b.txt b0\nMOVE b.txt /docs/sub/\n",
        )
        .assert_code(0);
    c.client("bob")
        .run("RACC /docs/a.txt RW\n")
        .assert_lines(&["Access request created with ID #1"]);
    c.client("carol")
        .run("REQUESTACCESS /docs/sub/b.txt R\n")
        .assert_lines(&["Access request created with ID #2"]);
    wait_same(&c, &["docs/a.txt", "docs/sub/b.txt"]);
    wait_file_absent(&c, BACKUP, "b.txt");
    assert_eq!(
        file_on_disk(&c, BACKUP, "docs/a.txt").unwrap(),
        b"Draft one."
    );
    assert_eq!(file_on_disk(&c, BACKUP, "docs/sub/b.txt").unwrap(), b"Bee.");
    alice
        .run("INFO /docs/a.txt\n")
        .assert_contains("Replicas: ss1 (current), ss1_backup (current)");
    // While it is a backup, its copy changes only through replication.
    let key = c.key();
    let f = "docs/a.txt";
    for msg in [
        Message::SsCheckpoint {
            file: f.into(),
            tag: "x".into(),
            creator: "alice".into(),
            epoch: 1,
            ticket: key.mint(NM_USER, f, TicketOp::Checkpoint, BACKUP, None),
        },
        Message::SsRevert {
            file: f.into(),
            tag: "v1".into(),
            epoch: 1,
            ticket: key.mint(NM_USER, f, TicketOp::Revert, BACKUP, None),
        },
        Message::SsMove {
            file: f.into(),
            to: "z.txt".into(),
            version: None,
            ticket: key.mint(
                NM_USER,
                &move_subject(f, "z.txt"),
                TicketOp::Move,
                BACKUP,
                None,
            ),
        },
    ] {
        match call_raw(&mut c.ss_conn(BACKUP), &msg).msg {
            Message::Err { code, .. } => assert_eq!(code, ErrorCode::Unauthorized, "{msg:?}"),
            other => panic!("the backup accepted {msg:?}: {other:?}"),
        }
    }

    c.kill9(PRIMARY);
    // Requests are name-server state: losing the primary loses none of them.
    alice
        .run("VIEWACCR\n")
        .assert_contains("| #1 | bob ")
        .assert_contains("| #2 | carol ");
    // The backup serves the checkpoints itself.
    assert_eq!(
        checkpoint_on(&c, BACKUP, "docs/a.txt", "v2"),
        b"Draft one. Draft two."
    );
    assert_eq!(checkpoint_on(&c, BACKUP, "docs/sub/b.txt", "b0"), b"Bee.");
    let tags: Vec<String> = checkpoints_on(&c, BACKUP, "docs/a.txt")
        .into_iter()
        .map(|c| c.tag)
        .collect();
    assert_eq!(tags, vec!["v1", "v2"]);
    alice
        .run("APPROVEACCR 1\n")
        .assert_lines(&["Access request #1 approved; access granted successfully!"]);

    // The backup's storage directory, served by a fresh name server as a primary, has the
    // folders, checkpoints and history: REVERT and UNDO work there.
    c.kill9(BACKUP);
    let mut fresh = Cluster::builder().servers(&[]).start();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(c.storage(BACKUP))
        .arg(fresh.storage("promoted"))
        .status()
        .unwrap();
    assert!(status.success());
    let since = fresh.mark("nm");
    fresh.add_ss("promoted");
    fresh.wait_registered("promoted", since);
    fresh
        .client("alice")
        .run(
            "VIEWFOLDER /docs\nVIEWFOLDER /docs/sub\nREAD /docs/a.txt\nVIEWCHECKPOINT /docs/sub/b.txt b0\n\
             REVERT /docs/a.txt v2\nREAD /docs/a.txt\nUNDO /docs/a.txt\nREAD /docs/a.txt\n\
             UNDO /docs/a.txt\nREAD /docs/a.txt\n",
        )
        .assert_lines(&[
            "[DIR] sub",
            "--> a.txt",
            "--> b.txt",
            "Draft one.",
            "Bee.",
            "Reverted to checkpoint 'v2' successfully!",
            "Draft one. Draft two.",
            "Undo Successful!",
            "Draft one.",
            "Undo Successful!",
            "Draft one. Draft two. Three.",
        ])
        .assert_code(0);
    fresh
        .client("alice")
        .run("LISTCHECKPOINTS /docs/a.txt\n")
        .assert_contains("| v1 ")
        .assert_contains("| v2 ");
}

#[test]
fn every_copy_holds_every_folder_even_empty_ones() {
    let mut c = Cluster::builder().pair().start();
    let dir = |c: &Cluster, ss: &str, f: &str| c.storage(ss).join("files").join(f).is_dir();
    c.client("alice")
        .run("CREATEFOLDER /e\nCREATEFOLDER /e/f\n")
        .assert_code(0);
    assert!(
        poll_until(WAIT, || [PRIMARY, BACKUP]
            .iter()
            .all(|ss| dir(&c, ss, "e/f"))),
        "/e/f is not a directory on both copies; nm log:\n{}",
        c.log("nm").tail()
    );
    // A server that was down when a folder was made gets it when it registers again.
    c.kill9(BACKUP);
    c.client("alice").run("CREATEFOLDER /g\n").assert_code(0);
    assert!(poll_until(WAIT, || dir(&c, PRIMARY, "g")));
    assert!(!dir(&c, BACKUP, "g"));
    c.restart(BACKUP);
    assert!(
        poll_until(WAIT, || dir(&c, BACKUP, "g")),
        "/g did not reach the returning backup; nm log:\n{}",
        c.log("nm").tail()
    );
}

/// Issue 5 after issue 4: with the primary SIGKILLed, every folder, checkpoint and access
/// request command works through the client on the promoted backup, and what changed there
/// (a revert and its undo, a new checkpoint, a new folder, a move, an approval) reaches the
/// original primary when it returns, which then takes such changes again itself.
#[test]
fn folders_checkpoints_and_requests_fail_over_and_come_back() {
    let mut c = Cluster::builder().pair().start();
    c.wait_event(
        "nm",
        "replication_assign",
        |v| v["msg"].as_str().is_some_and(|m| m.contains("Paired ss1")),
        WAIT,
    );
    let alice = c.client("alice");
    alice
        .run(
            "CREATEFOLDER /docs\nCREATEFOLDER /docs/sub\nCREATE /docs/a.txt\n\
             WRITE /docs/a.txt 0\n0 Draft one.\nETIRW\nCHECKPOINT /docs/a.txt v1\n\
             WRITE /docs/a.txt 1\n0 Draft two.\nETIRW\nCHECKPOINT /docs/a.txt v2\n\
             REVERT /docs/a.txt v1\n\
             CREATE b.txt\nWRITE b.txt 0\n0 Bee.\nETIRW\nCHECKPOINT b.txt b0\nMOVE b.txt /docs/sub\n\
             CREATE /docs/del.txt\nWRITE /docs/del.txt 0\n0 Doomed.\nETIRW\n",
        )
        .assert_code(0);
    c.client("bob")
        .run("RACC /docs/a.txt RW\n")
        .assert_lines(&["Access request created with ID #1"]);
    wait_same(&c, &["docs/a.txt", "docs/sub/b.txt", "docs/del.txt"]);

    c.kill_and_promote(PRIMARY);
    alice
        .run(
            "VIEWFOLDER /docs\nVIEWCHECKPOINT /docs/a.txt v2\nREVERT /docs/a.txt v2\n\
             READ /docs/a.txt\nUNDO /docs/a.txt\nREAD /docs/a.txt\nCHECKPOINT /docs/a.txt v3\n\
             CREATEFOLDER /docs/new\nMOVE /docs/sub/b.txt /docs/new/\nVIEWFOLDER /docs/new\n\
             VIEWCHECKPOINT /docs/new/b.txt b0\nAPPROVEACCR 1\nDELETE /docs/del.txt\n",
        )
        .assert_lines(&[
            "[DIR] sub",
            "--> a.txt",
            "--> del.txt",
            "Draft one. Draft two.",
            "Reverted to checkpoint 'v2' successfully!",
            "Draft one. Draft two.",
            "Undo Successful!",
            "Draft one.",
            "Checkpoint 'v3' created successfully!",
            "Folder created successfully!",
            "File moved successfully!",
            "--> b.txt",
            "Bee.",
            "Access request #1 approved; access granted successfully!",
            "File deleted successfully!",
        ])
        .assert_code(0);
    c.client("bob")
        .run("WRITE /docs/a.txt 1\n0 Bob was here.\nETIRW\n")
        .assert_contains("Write Successful!")
        .assert_code(0);

    // The primary returns and receives everything the promoted backup took.
    let since = c.mark("nm");
    c.restart(PRIMARY);
    c.wait_event_since(
        "nm",
        since,
        "replication_recover",
        |v| v["pair"] == PRIMARY,
        WAIT,
    );
    wait_same(&c, &["docs/a.txt", "docs/new/b.txt"]);
    wait_file_absent(&c, PRIMARY, "docs/sub/b.txt");
    wait_file_absent(&c, PRIMARY, "docs/del.txt");
    // What was moved away or deleted while it was down is removed, not set aside: those
    // changes were acknowledged.
    assert!(
        tree(&c.storage(PRIMARY).join("quarantine")).is_empty(),
        "{:?}",
        tree(&c.storage(PRIMARY).join("quarantine"))
            .into_keys()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        file_on_disk(&c, PRIMARY, "docs/a.txt").unwrap(),
        b"Draft one. Bob was here."
    );
    assert_eq!(
        file_on_disk(&c, PRIMARY, "docs/new/b.txt").unwrap(),
        b"Bee."
    );
    assert!(c.storage(PRIMARY).join("files/docs/new").is_dir());
    let tags: Vec<String> = checkpoints_on(&c, PRIMARY, "docs/a.txt")
        .into_iter()
        .map(|c| c.tag)
        .collect();
    assert_eq!(tags, vec!["v1", "v2", "v3"]);
    assert_eq!(
        checkpoint_on(&c, PRIMARY, "docs/a.txt", "v3"),
        b"Draft one."
    );

    // Writing again on the original primary: a checkpoint and a revert there replicate back.
    alice
        .run("CHECKPOINT /docs/a.txt v4\nREVERT /docs/a.txt v2\nREAD /docs/a.txt\n")
        .assert_lines(&[
            "Checkpoint 'v4' created successfully!",
            "Reverted to checkpoint 'v2' successfully!",
            "Draft one. Draft two.",
        ])
        .assert_code(0);
    wait_same(&c, &["docs/a.txt", "docs/new/b.txt"]);
    assert_eq!(
        file_on_disk(&c, BACKUP, "docs/a.txt").unwrap(),
        b"Draft one. Draft two."
    );
}
