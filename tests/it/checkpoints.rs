//! Checkpoints (SPEC §2, issue 5) through the real binaries: CHECKPOINT, VIEWCHECKPOINT,
//! LISTCHECKPOINTS and REVERT with their rights and errors, REVERT as an undoable content
//! change that keeps access rights, and DELETE leaving a later file of the same name clean.

use crate::harness::*;

#[test]
fn checkpoint_view_list_revert_and_undo() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE a.txt\nWRITE a.txt 0\n0 First draft.\nETIRW\nCHECKPOINT a.txt v1\n")
        .assert_lines(&[
            "File Created Successfully!",
            "Sentence: First draft.",
            "Write Successful!",
            "Checkpoint 'v1' created successfully!",
        ]);
    alice
        .run("WRITE a.txt 1\n0 Second.\nETIRW\nCHECKPOINT a.txt v_2-b\nVIEWCHECKPOINT a.txt v1\nREAD a.txt\n")
        .assert_lines(&[
            "Sentence: Second.",
            "Write Successful!",
            "Checkpoint 'v_2-b' created successfully!",
            "First draft.",
            "First draft. Second.",
        ]);
    let out = alice.run("LISTCHECKPOINTS a.txt\n");
    out.assert_code(0);
    let lines = out.lines();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(
        lines[1].starts_with("| Tag ")
            && lines[1].contains("| Creator ")
            && lines[1].contains("| Created ")
            && lines[1].contains("| Size |"),
        "{lines:?}"
    );
    assert!(
        lines[3].starts_with("| v1 ")
            && lines[3].contains("| alice ")
            && lines[3].ends_with(" 12 |"),
        "{lines:?}"
    );
    assert!(
        lines[4].starts_with("| v_2-b ") && lines[4].ends_with(" 20 |"),
        "{lines:?}"
    );
    alice
        .run("REVERT a.txt v1\nREAD a.txt\nUNDO a.txt\nREAD a.txt\n")
        .assert_lines(&[
            "Reverted to checkpoint 'v1' successfully!",
            "First draft.",
            "Undo Successful!",
            "First draft. Second.",
        ])
        .assert_code(0);
    // Checkpoints are bookkeeping, never under files/.
    assert_eq!(
        files_tree(&c, "ss1").into_keys().collect::<Vec<_>>(),
        vec!["a.txt"]
    );
}

#[test]
fn checkpoint_errors_and_rights() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE a.txt\nCHECKPOINT a.txt v1\nADDACCESS -R a.txt bob\n")
        .assert_code(0);
    let long = "t".repeat(65);
    alice
        .run(&format!(
            "CHECKPOINT a.txt v1\nCHECKPOINT a.txt bad/tag\nCHECKPOINT a.txt {long}\n\
             VIEWCHECKPOINT a.txt nope\nREVERT a.txt nope\nLISTCHECKPOINTS nope.txt\nCHECKPOINT a.txt\n"
        ))
        .assert_lines(&[
            "ERROR [CONFLICT]: checkpoint 'v1' already exists for a.txt",
            "ERROR [INVALID]: checkpoint tag 'bad/tag' must be 1 to 64 letters, digits, '_' or '-'",
            &format!("ERROR [INVALID]: checkpoint tag '{long}' must be 1 to 64 letters, digits, '_' or '-'"),
            "ERROR [NOT_FOUND]: no checkpoint 'nope' for a.txt",
            "ERROR [NOT_FOUND]: no checkpoint 'nope' for a.txt",
            "ERROR [NOT_FOUND]: File not found: nope.txt",
            "ERROR [INVALID]: usage: CHECKPOINT <file> <tag>",
        ])
        .assert_code(1);
    // Read access views and lists; only write access checkpoints and reverts.
    let bob = c.client("bob");
    bob.run("VIEWCHECKPOINT a.txt v1\n")
        .assert_lines(&[""])
        .assert_code(0);
    bob.run("LISTCHECKPOINTS a.txt\n")
        .assert_contains("| v1 ")
        .assert_code(0);
    bob.run("CHECKPOINT a.txt v2\nREVERT a.txt v1\n")
        .assert_lines(&[
            "ERROR [UNAUTHORIZED]: User bob has no write access to a.txt",
            "ERROR [UNAUTHORIZED]: User bob has no write access to a.txt",
        ]);
    c.client("carol")
        .run("VIEWCHECKPOINT a.txt v1\nLISTCHECKPOINTS a.txt\n")
        .assert_lines(&[
            "ERROR [UNAUTHORIZED]: User carol has no read access to a.txt",
            "ERROR [UNAUTHORIZED]: User carol has no read access to a.txt",
        ]);
}

#[test]
fn revert_keeps_access_rights() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE a.txt\nCHECKPOINT a.txt empty\nADDACCESS -W a.txt bob\nADDACCESS -R a.txt carol\n")
        .assert_code(0);
    c.client("bob")
        .run("WRITE a.txt 0\n0 Bob wrote this.\nETIRW\nREVERT a.txt empty\nREAD a.txt\n")
        .assert_lines(&[
            "Sentence: Bob wrote this.",
            "Write Successful!",
            "Reverted to checkpoint 'empty' successfully!",
            "",
        ]);
    alice
        .run("INFO a.txt\n")
        .assert_contains("Access: alice (RW), bob (RW), carol (R)\n");
}

#[test]
fn delete_removes_checkpoints_and_history() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Old.\nETIRW\nCHECKPOINT a.txt v1\nDELETE a.txt\nCREATE a.txt\n")
        .assert_code(0);
    alice
        .run("LISTCHECKPOINTS a.txt\nVIEWCHECKPOINT a.txt v1\nUNDO a.txt\n")
        .assert_lines(&[
            "No checkpoints.",
            "ERROR [NOT_FOUND]: no checkpoint 'v1' for a.txt",
            "ERROR [NO_UNDO]: nothing to undo for a.txt",
        ]);
    // Nothing of the old file is left in the bookkeeping either.
    let n = std::fs::read_dir(c.storage("ss1").join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(n, 0);
    assert_eq!(
        std::fs::read_dir(c.storage("ss1").join("undo"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn checkpoints_follow_a_moved_file() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATEFOLDER /p\nCREATE a.txt\nWRITE a.txt 0\n0 Kept.\nETIRW\nCHECKPOINT a.txt k\nMOVE a.txt /p\n")
        .assert_code(0);
    alice
        .run("VIEWCHECKPOINT /p/a.txt k\nLISTCHECKPOINTS a.txt\n")
        .assert_lines(&["Kept.", "ERROR [NOT_FOUND]: File not found: a.txt"]);
}
