//! Access requests (SPEC §2, issue 5) through the real binaries: RACC / REQUESTACCESS,
//! VIEWACCR / VIEWACCESSREQUESTS, APPROVEACCR and DISACCR, with their refusals, exact grants,
//! and ids that are never reused, across a name-server SIGKILL too.

use crate::harness::*;

#[test]
fn request_view_approve_and_refuse() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Hi.\nETIRW\nCREATE b.txt\n")
        .assert_code(0);
    c.client("bob")
        .run("RACC a.txt R\nREQUESTACCESS b.txt W\n")
        .assert_lines(&[
            "Access request created with ID #1",
            "Access request created with ID #2",
        ]);
    c.client("carol")
        .run("racc a.txt rw\n")
        .assert_lines(&["Access request created with ID #3"]);
    let out = alice.run("VIEWACCR\n");
    let lines = out.lines();
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert!(
        lines[1].contains("| ID ")
            && lines[1].contains("| Requester ")
            && lines[1].contains("| File ")
            && lines[1].contains("| Type ")
            && lines[1].contains("| Date "),
        "{lines:?}"
    );
    assert!(
        lines[3].starts_with("| #1 | bob ")
            && lines[3].contains("| a.txt ")
            && lines[3].contains("| R "),
        "{lines:?}"
    );
    assert!(
        lines[4].starts_with("| #2 | bob ")
            && lines[4].contains("| b.txt ")
            && lines[4].contains("| W "),
        "{lines:?}"
    );
    assert!(
        lines[5].starts_with("| #3 | carol ") && lines[5].contains("| RW "),
        "{lines:?}"
    );
    // Only the owner sees and answers them.
    c.client("bob")
        .run("VIEWACCESSREQUESTS\nAPPROVEACCR 1\n")
        .assert_lines(&[
            "No pending access requests.",
            "ERROR [UNAUTHORIZED]: Only the owner of a.txt can answer access request #1",
        ]);
    alice
        .run("APPROVEACCR 1\nAPPROVEACCR #2\nDISACCR 3\nVIEWACCR\nAPPROVEACCR 3\n")
        .assert_lines(&[
            "Access request #1 approved; access granted successfully!",
            "Access request #2 approved; access granted successfully!",
            "Access request #3 denied.",
            "No pending access requests.",
            "ERROR [NOT_FOUND]: No pending access request #3",
        ]);
    // R grants read only; W grants read and write; a refusal grants nothing.
    c.client("bob")
        .run("READ a.txt\nWRITE a.txt 1\n0 No.\nETIRW\nWRITE b.txt 0\n0 Yes.\nETIRW\nREAD b.txt\n")
        .assert_lines(&[
            "Hi.",
            // The refused WRITE's edit lines are skipped, not run as commands.
            "ERROR [UNAUTHORIZED]: User bob has no write access to a.txt",
            "Sentence: Yes.",
            "Write Successful!",
            "Yes.",
        ]);
    c.client("carol")
        .run("READ a.txt\n")
        .assert_lines(&["ERROR [UNAUTHORIZED]: User carol has no read access to a.txt"]);
    alice
        .run("INFO a.txt\nINFO b.txt\n")
        .assert_contains("Access: alice (RW), bob (R)\n")
        .assert_contains("Access: alice (RW), bob (RW)\n");
}

#[test]
fn request_refusals() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nADDACCESS -W a.txt dave\n")
        .assert_code(0);
    c.client("alice")
        .run("RACC a.txt R\n")
        .assert_lines(&["ERROR [INVALID]: You own a.txt and already have read and write access"])
        .assert_code(1);
    c.client("bob")
        .run("RACC a.txt RW\nRACC a.txt R\nRACC nope.txt R\nRACC a.txt X\nAPPROVEACCR x\n")
        .assert_lines(&[
            "Access request created with ID #1",
            "ERROR [CONFLICT]: Access request #1 for a.txt is already pending",
            "ERROR [NOT_FOUND]: File not found: nope.txt",
            "ERROR [INVALID]: usage: RACC <file> R|W|RW",
            "ERROR [INVALID]: usage: APPROVEACCR <id>",
        ])
        .assert_code(1);
    c.client("dave")
        .run("RACC a.txt W\n")
        .assert_lines(&["ERROR [CONFLICT]: User dave already has RW access to a.txt"]);
}

#[test]
fn requests_and_ids_survive_a_name_server_kill() {
    let mut c = Cluster::start();
    c.client("alice").run("CREATE a.txt\n").assert_code(0);
    c.client("bob")
        .run("RACC a.txt R\n")
        .assert_lines(&["Access request created with ID #1"]);
    c.client("alice").run("DISACCR 1\n").assert_code(0);
    c.client("carol")
        .run("RACC a.txt R\n")
        .assert_lines(&["Access request created with ID #2"]);
    c.kill9("nm");
    c.restart("nm");
    c.client("alice")
        .run("VIEWACCR\n")
        .assert_contains("| #2 | carol ")
        .assert_lacks("#1");
    // Ids are never reused, even for an answered request.
    c.client("bob")
        .run("RACC a.txt RW\n")
        .assert_lines(&["Access request created with ID #3"]);
    // A deleted file takes its pending requests with it.
    c.client("alice")
        .run("DELETE a.txt\nVIEWACCR\n")
        .assert_lines(&["File deleted successfully!", "No pending access requests."]);
}
