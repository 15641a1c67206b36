//! Folders and MOVE (SPEC §2, issue 5) through the real binaries: nested folders whose
//! parents must exist, listings, MOVE into folders (`/p` and `/p/` alike) keeping owner,
//! access, version and history, and every refusal.

use crate::harness::*;

#[test]
fn folders_nest_and_list_their_entries() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run(
            "CREATEFOLDER /docs\nCREATEFOLDER /docs/sub/\nCREATE /docs/a.txt\nCREATE /docs/sub/b.txt\n\
             CREATE top.txt\nCREATEFOLDER /empty\nVIEWFOLDER /docs\nVIEWFOLDER /docs/\nVIEWFOLDER /\n\
             VIEWFOLDER /empty\nVIEWFOLDER /docs/sub\n",
        )
        .assert_lines(&[
            "Folder created successfully!",
            "Folder created successfully!",
            "File Created Successfully!",
            "File Created Successfully!",
            "File Created Successfully!",
            "Folder created successfully!",
            "[DIR] sub",
            "--> a.txt",
            "[DIR] sub",
            "--> a.txt",
            "[DIR] docs",
            "[DIR] empty",
            "--> top.txt",
            "(empty)",
            "--> b.txt",
        ])
        .assert_code(0);
    // The content lives at the folder's path on the storage server.
    assert_eq!(file_on_disk(&c, "ss1", "docs/sub/b.txt"), Some(Vec::new()));
    // Anyone may list a folder; VIEW shows nested files with their folder.
    c.client("bob")
        .run("VIEWFOLDER /docs\nVIEW -a\n")
        .assert_lines(&[
            "[DIR] sub",
            "--> a.txt",
            "--> /docs/a.txt",
            "--> /docs/sub/b.txt",
            "--> top.txt",
        ]);
}

#[test]
fn folder_errors_are_clear() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice.run("CREATEFOLDER /d\nCREATE f.txt\n").assert_code(0);
    let out = alice.run(
        "CREATEFOLDER /x/y\nCREATEFOLDER /d\nCREATEFOLDER /f.txt\nCREATEFOLDER /a/../b\n\
         CREATE /nope/a.txt\nCREATE /d\nVIEWFOLDER /nope\nCREATEFOLDER\n",
    );
    out.assert_lines(&[
        "ERROR [NOT_FOUND]: Parent folder not found: /x (create it first)",
        "ERROR [CONFLICT]: Folder already exists: /d",
        "ERROR [CONFLICT]: a file named f.txt exists",
        "ERROR [INVALID]: '/a/../b': '.' and '..' are not allowed",
        "ERROR [NOT_FOUND]: Folder not found: /nope (create it with CREATEFOLDER first)",
        "ERROR [CONFLICT]: /d is a folder",
        "ERROR [NOT_FOUND]: Folder not found: /nope",
        "ERROR [INVALID]: usage: CREATEFOLDER /<folder>",
    ])
    .assert_code(1);
}

#[test]
fn move_keeps_owner_access_version_and_history() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run(
            "CREATEFOLDER /p\nCREATE a.txt\nWRITE a.txt 0\n0 One.\nETIRW\nWRITE a.txt 1\n0 Two.\nETIRW\n\
             ADDACCESS -R a.txt bob\n",
        )
        .assert_code(0);
    let info = |file: &str| {
        let out = alice.run(&format!("INFO {file}\n"));
        out.assert_code(0);
        out.lines()
            .into_iter()
            .filter(|l| {
                l.starts_with("Owner:") || l.starts_with("Access:") || l.starts_with("Version:")
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = info("a.txt");
    // `/p` and `/p/` name the same folder.
    alice
        .run("MOVE a.txt /p/\nREAD a.txt\nREAD /p/a.txt\n")
        .assert_lines(&[
            "File moved successfully!",
            "ERROR [NOT_FOUND]: File not found: a.txt",
            "One. Two.",
        ]);
    assert_eq!(info("/p/a.txt"), before);
    assert_eq!(file_on_disk(&c, "ss1", "a.txt"), None);
    assert_eq!(
        file_on_disk(&c, "ss1", "p/a.txt"),
        Some(b"One. Two.".to_vec())
    );
    c.client("bob")
        .run("READ /p/a.txt\n")
        .assert_lines(&["One. Two."]);
    // The history followed the file.
    alice
        .run("UNDO /p/a.txt\nREAD /p/a.txt\nMOVE /p/a.txt /\nREAD a.txt\n")
        .assert_lines(&[
            "Undo Successful!",
            "One.",
            "File moved successfully!",
            "One.",
        ])
        .assert_code(0);
}

#[test]
fn move_refusals() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATEFOLDER /p\nCREATE a.txt\nCREATE /p/a.txt\nCREATE b.txt\nADDACCESS -R b.txt bob\n")
        .assert_code(0);
    alice
        .run("MOVE a.txt /missing\nMOVE a.txt /p\nMOVE /p/a.txt /p\nMOVE nope.txt /p\nMOVE a.txt\n")
        .assert_lines(&[
            "ERROR [NOT_FOUND]: Folder not found: /missing",
            "ERROR [CONFLICT]: /p/a.txt already exists",
            "ERROR [CONFLICT]: /p/a.txt is already in /p",
            "ERROR [NOT_FOUND]: File not found: nope.txt",
            "ERROR [INVALID]: usage: MOVE <file> /<folder>",
        ])
        .assert_code(1);
    c.client("bob")
        .run("MOVE b.txt /p\n")
        .assert_lines(&["ERROR [UNAUTHORIZED]: User bob has no write access to b.txt"]);
    // Nothing moved.
    assert!(file_on_disk(&c, "ss1", "a.txt").is_some());
    assert!(file_on_disk(&c, "ss1", "b.txt").is_some());
}

#[test]
fn a_file_being_written_cannot_move() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice.run("CREATEFOLDER /p\nCREATE a.txt\n").assert_code(0);
    let mut w = alice.spawn();
    w.send("WRITE a.txt 0");
    w.send("0 Held.");
    w.expect_prefix("Sentence:");
    alice
        .run("MOVE a.txt /p\n")
        .assert_contains("ERROR [LOCKED]:")
        .assert_code(1);
    w.send("ETIRW");
    w.expect_prefix("Write Successful!");
    drop(w.finish());
    alice
        .run("MOVE a.txt /p\nREAD /p/a.txt\n")
        .assert_lines(&["File moved successfully!", "Held."]);
}

#[test]
fn folders_survive_a_name_server_restart() {
    let mut c = Cluster::start();
    c.client("alice")
        .run("CREATEFOLDER /p\nCREATEFOLDER /p/q\nCREATE /p/q/a.txt\n")
        .assert_code(0);
    c.kill9("nm");
    c.restart("nm");
    c.client("alice")
        .run("VIEWFOLDER /p\nVIEWFOLDER /p/q\n")
        .assert_lines(&["[DIR] q", "--> a.txt"]);
}

/// alice's `a.txt` ("Kept whole.", readable by bob) beside an empty folder `/p`.
fn a_shared_file_and_a_folder(c: &Cluster) {
    c.client("alice")
        .run("CREATEFOLDER /p\nCREATE a.txt\nWRITE a.txt 0\n0 Kept whole.\nETIRW\nADDACCESS -R a.txt bob\n")
        .assert_code(0);
}

/// The file of [`a_shared_file_and_a_folder`] is named `at` with its owner and access, and
/// `gone` names nothing.
fn assert_record_at(c: &Cluster, at: &str, gone: &str) {
    let alice = c.client("alice");
    alice
        .run(&format!("INFO {at}\n"))
        .assert_contains("Owner: alice\n")
        .assert_contains("Access: alice (RW), bob (R)\n");
    alice
        .run(&format!("INFO {gone}\n"))
        .assert_lines(&[format!("ERROR [NOT_FOUND]: File not found: {gone}").as_str()]);
    c.client("bob")
        .run(&format!("READ {at}\n"))
        .assert_lines(&["Kept whole."]);
}

/// A name server killed at `hook` (a `PAIRFS_FAULT_NM` value) while it moves `a.txt`, owned by
/// alice, readable by bob, with carol's access request pending, from the root of a pair into
/// `/p`; restarted without the hook, with both members registered again. Returns the cluster.
fn move_cut_by_a_name_server_crash(hook: &str) -> Cluster {
    let mut c = Cluster::builder().pair().start();
    a_shared_file_and_a_folder(&c);
    let alice = c.client("alice");
    c.client("carol")
        .run("RACC a.txt R\n")
        .assert_lines(&["Access request created with ID #1"]);
    wait_file_replicated(&c, "ss1", "ss1_backup", "a.txt");
    c.kill9("nm");
    c.restart_with_env("nm", "PAIRFS_FAULT_NM", hook);
    // The client hears nothing useful: the name server dies under it.
    alice
        .run("MOVE a.txt /p\n")
        .assert_lacks("File moved successfully!");
    assert_eq!(c.nm.wait_exit(WAIT), Some(86), "{}", c.log("nm").tail());
    c.clear_env("nm", "PAIRFS_FAULT_NM");
    c.restart("nm");
    c
}

#[test]
fn a_move_renamed_before_the_name_server_died_keeps_owner_and_access() {
    let c = move_cut_by_a_name_server_crash("exit-after-ss-move");
    // The storage server had renamed it: the move completes with the whole record.
    assert_record_at(&c, "/p/a.txt", "a.txt");
    let alice = c.client("alice");
    alice
        .run("VIEWACCR\n")
        .assert_contains("| #1 | carol ")
        .assert_contains("| /p/a.txt ");
    // The backup follows: the file under its new name only.
    wait_file_absent(&c, "ss1_backup", "a.txt");
    wait_trees_equal(&c, "ss1", "ss1_backup");
    assert_eq!(
        file_on_disk(&c, "ss1_backup", "p/a.txt"),
        Some(b"Kept whole.".to_vec())
    );
    // The new name is settled: it moves on as any file.
    alice
        .run("MOVE /p/a.txt /\n")
        .assert_lines(&["File moved successfully!"]);
}

#[test]
fn a_move_whose_answer_is_lost_is_sent_again_and_completes() {
    let mut c = Cluster::builder().pair().start();
    a_shared_file_and_a_folder(&c);
    let alice = c.client("alice");
    wait_file_replicated(&c, "ss1", "ss1_backup", "a.txt");
    c.kill9("nm");
    c.restart_with_env("nm", "PAIRFS_FAULT_NM", "cut-after-ss-move-sent");
    let since = c.log("ss1").mark();
    // The first SS_MOVE's answer is lost; the repeat finds the move made and says so.
    alice
        .run("MOVE a.txt /p\n")
        .assert_lines(&["File moved successfully!"]);
    // Whichever of the two calls took the locks second saw the move made.
    let repeated = c.log("ss1").find(
        since,
        "ss_commit",
        &|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.contains("was moved to p/a.txt already"))
        },
        WAIT,
    );
    assert!(
        repeated.is_some(),
        "no repeated SS_MOVE: {}",
        c.log("ss1").tail()
    );
    assert_record_at(&c, "/p/a.txt", "a.txt");
    wait_file_absent(&c, "ss1_backup", "a.txt");
    wait_trees_equal(&c, "ss1", "ss1_backup");
}

#[test]
fn a_move_cut_before_the_storage_server_renamed_leaves_the_file_in_place() {
    let c = move_cut_by_a_name_server_crash("exit-before-ss-move");
    assert_record_at(&c, "a.txt", "/p/a.txt");
    let alice = c.client("alice");
    alice
        .run("VIEWACCR\n")
        .assert_contains("| #1 | carol ")
        .assert_contains("| a.txt ");
    // Both names are free again (a CREATE of a reserved name would wait): the new name can be
    // made and removed, and the move made.
    alice
        .run("CREATE /p/a.txt\nDELETE /p/a.txt\nMOVE a.txt /p\n")
        .assert_lines(&[
            "File Created Successfully!",
            "File deleted successfully!",
            "File moved successfully!",
        ]);
    wait_file_absent(&c, "ss1_backup", "a.txt");
    wait_trees_equal(&c, "ss1", "ss1_backup");
}
