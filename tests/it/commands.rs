//! Every client command's success and error paths (SPEC §2), and the client's exit codes.

use crate::harness::*;

#[test]
fn create_write_read_round_trip() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Hello world.\nETIRW\nREAD a.txt\n")
        .assert_contains("File Created Successfully!\n")
        .assert_contains("Sentence: Hello world.\n")
        .assert_contains("Write Successful!\n")
        .assert_contains("Hello world.\n")
        .assert_code(0);
}

#[test]
fn create_twice_is_conflict_and_read_of_missing_is_not_found() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice.run("CREATE a.txt\n").assert_code(0);
    alice
        .run("CREATE a.txt\n")
        .assert_contains("ERROR [CONFLICT]:")
        .assert_code(1);
    alice
        .run("READ nope.txt\n")
        .assert_contains("ERROR [NOT_FOUND]:")
        .assert_code(1);
    c.client("bob")
        .run("CREATE a.txt\n")
        .assert_contains("ERROR [CONFLICT]:");
}

#[test]
fn empty_file_reads_as_one_empty_line() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE e.txt\nREAD e.txt\n")
        .assert_lines(&["File Created Successfully!", ""])
        .assert_code(0);
}

#[test]
fn command_words_are_case_insensitive() {
    let c = Cluster::start();
    c.client("alice")
        .run("create a.txt\nwrite a.txt 0\n0 Hi there.\netirw\nread a.txt\nview\n")
        .assert_contains("File Created Successfully!")
        .assert_contains("Write Successful!")
        .assert_contains("Hi there.\n")
        .assert_contains("--> a.txt")
        .assert_code(0);
}

#[test]
fn strangers_are_unauthorized() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Secret words.\nETIRW\n")
        .assert_code(0);
    let bob = c.client("bob");
    bob.run("READ a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:")
        .assert_lacks("Secret")
        .assert_code(1);
    bob.run("WRITE a.txt 0\n0 Mine.\nETIRW\n")
        .assert_contains("ERROR [UNAUTHORIZED]:")
        .assert_lacks("Write Successful!");
    bob.run("STREAM a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:")
        .assert_lacks("Secret");
    bob.run("INFO a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    bob.run("UNDO a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    bob.run("DELETE a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:")
        .assert_code(1);
    bob.run("EXEC a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    bob.run("ADDACCESS -R a.txt bob\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    c.client("alice")
        .run("READ a.txt\n")
        .assert_contains("Secret words.\n");
}

#[test]
fn addaccess_and_remaccess_rules() {
    let c = Cluster::start();
    let alice = c.client("alice");
    let bob = c.client("bob");
    alice
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Shared text.\nETIRW\n")
        .assert_code(0);
    // bob has never connected: granted anyway, with a note so a typo is visible.
    alice
        .run("ADDACCESS -R a.txt bob\n")
        .assert_contains("Access granted successfully!")
        .assert_contains("Note: user 'bob' has not connected yet")
        .assert_code(0);
    bob.run("READ a.txt\n")
        .assert_contains("Shared text.\n")
        .assert_code(0);
    bob.run("WRITE a.txt 0\n0 Bob\nETIRW\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    bob.run("UNDO a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    // A reader is not an owner.
    bob.run("ADDACCESS -W a.txt bob\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    bob.run("REMACCESS a.txt alice\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    // bob is known now: no note. -W means read and write.
    alice
        .run("ADDACCESS -W a.txt bob\n")
        .assert_contains("Access granted successfully!")
        .assert_lacks("Note:")
        .assert_code(0);
    bob.run("WRITE a.txt 0\n0 Bob's\nETIRW\nREAD a.txt\n")
        .assert_contains("Write Successful!")
        .assert_contains("Bob's Shared text.\n")
        .assert_code(0);
    // A writer may not delete.
    bob.run("DELETE a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    alice
        .run("INFO a.txt\n")
        .assert_contains("Access: alice (RW), bob (RW)");
    alice
        .run("REMACCESS a.txt bob\n")
        .assert_contains("Access removed successfully!")
        .assert_code(0);
    bob.run("READ a.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    alice
        .run("REMACCESS a.txt bob\n")
        .assert_contains("ERROR [NOT_FOUND]:")
        .assert_code(1);
    alice
        .run("REMACCESS a.txt alice\n")
        .assert_contains("ERROR [INVALID]:")
        .assert_code(1);
    alice
        .run("ADDACCESS -R a.txt alice\n")
        .assert_contains("ERROR [INVALID]:");
    alice
        .run("ADDACCESS -R nope.txt bob\n")
        .assert_contains("ERROR [NOT_FOUND]:");
}

#[test]
fn view_flags_and_empty_view() {
    let c = Cluster::start();
    let alice = c.client("alice");
    let bob = c.client("bob");
    bob.run("VIEW\n")
        .assert_lines(&["No files found."])
        .assert_code(0);
    alice
        .run("CREATE b.txt\nCREATE a.txt\nWRITE a.txt 0\n0 One two three.\nETIRW\n")
        .assert_code(0);
    alice
        .run("VIEW\n")
        .assert_lines(&["--> a.txt", "--> b.txt"]);
    bob.run("VIEW\n").assert_lines(&["No files found."]);
    bob.run("VIEW -a\n")
        .assert_lines(&["--> a.txt", "--> b.txt"]);
    for flag in ["-l", "-al", "-la"] {
        let out = alice.run(&format!("VIEW {flag}\n"));
        out.assert_code(0)
            .assert_contains("a.txt")
            .assert_contains("b.txt")
            .assert_contains("alice");
        // Counts are current: a.txt has 3 words and 14 characters.
        let row = out
            .lines()
            .into_iter()
            .find(|l| l.contains("a.txt"))
            .unwrap()
            .to_string();
        assert!(row.contains(" 3 ") && row.contains(" 14 "), "row: {row}");
    }
    bob.run("VIEW -l\n").assert_contains("No files found.");
    bob.run("VIEW -al\n").assert_contains("a.txt");
    alice.run("ADDACCESS -R b.txt bob\n").assert_code(0);
    bob.run("VIEW\n").assert_lines(&["--> b.txt"]);
}

#[test]
fn list_shows_every_user_ever_seen() {
    let c = Cluster::start();
    c.client("alice").run("VIEW\n").assert_code(0);
    c.client("bob").run("VIEW\n").assert_code(0);
    let out = c.client("carol").run("LIST\n");
    out.assert_code(0);
    for u in ["alice", "bob", "carol"] {
        assert!(
            out.lines().contains(&format!("--> {u}").as_str()),
            "{out:?}"
        );
    }
}

#[test]
fn info_fields() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Hello world.\nETIRW\nADDACCESS -R a.txt bob\n")
        .assert_code(0);
    c.client("bob").run("READ a.txt\n").assert_code(0);
    let out = alice.run("INFO a.txt\n");
    out.assert_code(0)
        .assert_contains("File: a.txt\n")
        .assert_contains("Owner: alice\n")
        .assert_contains("Size: 12 bytes\n")
        .assert_contains("Words: 2\n")
        .assert_contains("Characters: 12\n")
        .assert_contains("Access: alice (RW), bob (R)\n")
        .assert_contains("Replicas: ss1 (current)");
    for prefix in ["Created: ", "Last Modified: ", "Version: "] {
        assert!(
            out.lines().iter().any(|l| l.starts_with(prefix)),
            "no {prefix:?} line:\n{}",
            out.stdout
        );
    }
    let accessed = out
        .lines()
        .into_iter()
        .find(|l| l.starts_with("Last Accessed: "))
        .unwrap_or_else(|| panic!("no Last Accessed line:\n{}", out.stdout))
        .to_string();
    assert!(accessed.ends_with("by bob"), "{accessed}");
    alice
        .run("INFO nope.txt\n")
        .assert_contains("ERROR [NOT_FOUND]:");
}

#[test]
fn undo_goes_back_ten_steps_then_no_undo() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE u.txt\nUNDO u.txt\n")
        .assert_contains("ERROR [NO_UNDO]:")
        .assert_code(1);
    // Eleven commits, each appending sentence i.
    let mut script = String::new();
    for i in 0..11 {
        script.push_str(&format!("WRITE u.txt {i}\n0 S{i}.\nETIRW\n"));
    }
    alice.run(&script).assert_code(0);
    let content = |n: usize| -> String {
        (0..n)
            .map(|i| format!("S{i}."))
            .collect::<Vec<_>>()
            .join(" ")
    };
    alice
        .run("READ u.txt\n")
        .assert_lines(&[content(11).as_str()]);
    // A reader may not undo.
    alice.run("ADDACCESS -R u.txt bob\n").assert_code(0);
    c.client("bob")
        .run("UNDO u.txt\n")
        .assert_contains("ERROR [UNAUTHORIZED]:");
    for n in (0..11).rev() {
        let out = alice.run("UNDO u.txt\nREAD u.txt\n");
        out.assert_code(0)
            .assert_lines(&["Undo Successful!", content(n).as_str()]);
    }
    alice
        .run("UNDO u.txt\n")
        .assert_contains("ERROR [NO_UNDO]:")
        .assert_code(1);
}

#[test]
fn undo_reverts_another_users_change() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Mine.\nETIRW\nADDACCESS -W a.txt bob\n")
        .assert_code(0);
    c.client("bob")
        .run("WRITE a.txt 1\n0 Bob's.\nETIRW\n")
        .assert_code(0);
    c.client("alice")
        .run("UNDO a.txt\nREAD a.txt\n")
        .assert_lines(&["Undo Successful!", "Mine."]);
}

#[test]
fn delete_by_owner() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE d.txt\nDELETE d.txt\n")
        .assert_contains("File deleted successfully!")
        .assert_code(0);
    alice
        .run("READ d.txt\n")
        .assert_contains("ERROR [NOT_FOUND]:");
    alice.run("VIEW\n").assert_lines(&["No files found."]);
    alice
        .run("DELETE d.txt\n")
        .assert_contains("ERROR [NOT_FOUND]:")
        .assert_code(1);
    // The name is free again.
    alice
        .run("CREATE d.txt\n")
        .assert_contains("File Created Successfully!");
}

#[test]
fn exec_runs_the_file_as_a_script() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice
        .run("CREATE s.sh\nWRITE s.sh 0\n0 echo hello; echo $USER-end\nETIRW\n")
        .assert_code(0);
    // The environment is cleared: USER is unset inside the script.
    alice
        .run("EXEC s.sh\n")
        .assert_lines(&["hello", "-end"])
        .assert_code(0);
    alice
        .run("EXEC nope.sh\n")
        .assert_contains("ERROR [NOT_FOUND]:");
}

#[test]
fn exec_timeout_and_no_exec() {
    let c = Cluster::builder()
        .nm_args(&["--exec-timeout-s", "1"])
        .start();
    let alice = c.client("alice");
    alice
        .run("CREATE slow.sh\nWRITE slow.sh 0\n0 sleep 30\nETIRW\n")
        .assert_code(0);
    alice
        .run_timeout("EXEC slow.sh\n", std::time::Duration::from_secs(15))
        .assert_lines(&["ERROR [TIMEOUT]: EXEC terminated after 1 s (timeout)"])
        .assert_code(1);

    let c = Cluster::builder().nm_args(&["--no-exec"]).start();
    let out = c
        .client("alice")
        .run("CREATE s.sh\nWRITE s.sh 0\n0 echo hi\nETIRW\nEXEC s.sh\n");
    out.assert_contains("ERROR [UNAUTHORIZED]: EXEC is disabled")
        .assert_code(1);
    assert!(
        !out.lines().contains(&"hi"),
        "the script ran: {}",
        out.stdout
    );
}

#[test]
fn stream_prints_the_words() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE w.txt\nWRITE w.txt 0\n0 one two three. four\nETIRW\n")
        .assert_code(0);
    c.client("alice")
        .run("STREAM w.txt\n")
        .assert_lines(&["one two three. four"])
        .assert_code(0);
}

#[test]
fn stream_reports_a_storage_server_dying() {
    let mut c = Cluster::start();
    let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    c.client("alice")
        .run(&format!(
            "CREATE w.txt\nWRITE w.txt 0\n0 {}\nETIRW\n",
            words.join(" ")
        ))
        .assert_code(0);
    let mut s = c.client("alice").spawn();
    s.send("STREAM w.txt");
    s.expect_raw("w2 ");
    c.kill9("ss1");
    s.expect(
        |l| l.contains("Error: Connection closed unexpectedly"),
        "closed-connection error",
    );
    let (code, _) = s.finish();
    assert_eq!(code, Some(1));
}

#[test]
fn exit_codes_and_usage_errors() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice.run("VIEW\nLIST\n").assert_code(0);
    alice.run("").assert_code(0);
    alice.run("VIEW\nREAD nope\nVIEW\n").assert_code(1);
    alice
        .run("FROB x\n")
        .assert_contains("ERROR [INVALID]: unknown command 'FROB'")
        .assert_code(1);
    alice
        .run("READ\n")
        .assert_contains("ERROR [INVALID]: usage:")
        .assert_code(1);
    alice
        .run("CREATE ../escape.txt\n")
        .assert_contains("ERROR [INVALID]:")
        .assert_code(1);
    // Commands after EXIT are not run.
    alice
        .run("EXIT\nCREATE late.txt\n")
        .assert_lacks("File Created")
        .assert_code(0);
    alice.run("HELP\n").assert_contains("CREATE").assert_code(0);
    c.client("alice").arg("--bogus-flag").run("").assert_code(2);
    // A closed port: a connection error is exit status 2 with one clear line.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = std::process::Command::new(bin("bin_client"))
        .args(["--nm-port", &port.to_string(), "--username", "alice"])
        .env("XDG_CONFIG_HOME", config_home())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ERROR [UNAVAILABLE]: cannot connect"),
        "{out:?}"
    );
}

#[test]
fn bad_server_flags_exit_2() {
    for b in ["bin_nm", "bin_ss"] {
        let out = std::process::Command::new(bin(b))
            .arg("--no-such-flag")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{b}: {out:?}");
        let help = std::process::Command::new(bin(b))
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(help.status.code(), Some(0), "{b} --help");
        assert!(String::from_utf8_lossy(&help.stdout).contains("--cluster-key-file"));
    }
}
