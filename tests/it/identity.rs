//! User identity through the real binaries: a user name binds its first key, only that key
//! opens sessions afterwards, `bin_nm --reset-user` forgets it, and the binding survives a
//! crash of the name server. Also: a sentence of a megabyte is editable, and names with
//! format, bidi or control characters are refused.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const OTHER_KEY: &str =
    "ERROR [UNAUTHORIZED]: alice is registered with another key (reset it with bin_nm --reset-user alice)";

/// A fresh config directory (another OS account, as far as keys go).
fn config_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn key_file(config: &Path, user: &str) -> std::path::PathBuf {
    config.join(format!("pairfs/users/{user}.key"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `bin_nm --reset-user user --data <the cluster's nm data>` (with the name server's port and
/// `key_file` for a reset through a running name server): exit status and output.
fn reset_user(c: &Cluster, user: &str, key_file: &Path) -> (Option<i32>, String) {
    let port = c.nm_addr().rsplit_once(':').unwrap().1.to_string();
    let out = Command::new(bin("bin_nm"))
        .args(["--reset-user", user, "--data", path(&c.dir().join("nm"))])
        .args(["--port", &port, "--cluster-key-file", path(key_file)])
        .output()
        .expect("run bin_nm --reset-user");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn first_use_binds_a_private_key_and_the_same_key_works_again() {
    let c = Cluster::start();
    let home = config_dir();
    let alice = c.client("alice").env("XDG_CONFIG_HOME", path(home.path()));
    let m = c.mark("nm");
    alice
        .run("CREATE a.txt\n")
        .assert_lines(&["File Created Successfully!"])
        .assert_code(0);
    c.wait_event_since(
        "nm",
        m,
        "nm_user_key",
        |v| v["user"] == "alice" && v["outcome"] == "bound",
        WAIT,
    );
    let key = key_file(home.path(), "alice");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(key.parent().unwrap()), 0o700);
    let before = std::fs::read(&key).unwrap();
    // Piped again from the same account: no prompt, no setup, exit 0, same key.
    alice
        .run("WRITE a.txt 0\n0 Hi there.\nETIRW\nREAD a.txt\n")
        .assert_contains("Hi there.\n")
        .assert_code(0);
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // --user-key-file points anywhere.
    let elsewhere = home.path().join("k/bob.key");
    c.client("bob")
        .arg("--user-key-file")
        .arg(path(&elsewhere))
        .run("LIST\n")
        .assert_contains("alice")
        .assert_contains("bob")
        .assert_code(0);
    assert_eq!(mode(&elsewhere), 0o600);
}

#[test]
fn another_key_is_refused_until_the_user_is_reset() {
    let mut c = Cluster::start();
    let alice = c.client("alice");
    alice.run("CREATE a.txt\n").assert_code(0);
    let other_home = config_dir();
    let impostor = c
        .client("alice")
        .env("XDG_CONFIG_HOME", path(other_home.path()));
    let out = impostor.run("CREATE b.txt\nDELETE a.txt\nLIST\n");
    out.assert_lines(&[OTHER_KEY]).assert_code(2);
    // It did nothing.
    alice
        .run("VIEW -a\nINFO a.txt\n")
        .assert_lacks("b.txt")
        .assert_contains("a.txt")
        .assert_code(0);

    // While the name server runs, the reset goes through it and needs the cluster key.
    let wrong_key = c.dir().join("wrong.key");
    let (code, text) = reset_user(&c, "alice", &wrong_key);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("UNAUTHORIZED"), "{text}");
    impostor
        .run("LIST\n")
        .assert_lines(&[OTHER_KEY])
        .assert_code(2);
    let (code, text) = reset_user(&c, "nobody", c.key_file());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no user nobody"), "{text}");
    let m = c.mark("nm");
    let (code, text) = reset_user(&c, "alice", c.key_file());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("user alice reset"), "{text}");
    c.wait_event_since(
        "nm",
        m,
        "nm_user_key",
        |v| v["user"] == "alice" && v["outcome"] == "reset",
        WAIT,
    );

    // The next session binds its key; from then on the old key is the stranger.
    impostor
        .run("VIEW -a\n")
        .assert_contains("a.txt")
        .assert_code(0);
    alice
        .run("LIST\n")
        .assert_lines(&[OTHER_KEY])
        .assert_code(2);

    // On a stopped name server the reset changes the store itself.
    c.term("nm").expect("nm exits on SIGTERM");
    let (code, text) = reset_user(&c, "nobody", c.key_file());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no user nobody"), "{text}");
    let (code, text) = reset_user(&c, "alice", c.key_file());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("user alice reset"), "{text}");
    c.restart("nm");
    alice
        .run("VIEW -a\n")
        .assert_contains("a.txt")
        .assert_code(0);
    impostor
        .run("LIST\n")
        .assert_lines(&[OTHER_KEY])
        .assert_code(2);
}

#[test]
fn many_user_names_from_one_account_each_get_a_key() {
    let c = Cluster::start();
    let home = config_dir();
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    for u in &users {
        c.client(u)
            .env("XDG_CONFIG_HOME", path(home.path()))
            .run(&format!("CREATE {u}.txt\n"))
            .assert_code(0);
    }
    let out = c
        .client("user0")
        .env("XDG_CONFIG_HOME", path(home.path()))
        .run("LIST\n");
    out.assert_code(0);
    for u in &users {
        out.assert_contains(&format!("--> {u}\n"));
        assert!(key_file(home.path(), u).exists(), "no key for {u}");
    }
    let keys: std::collections::BTreeSet<Vec<u8>> = users
        .iter()
        .map(|u| std::fs::read(key_file(home.path(), u)).unwrap())
        .collect();
    assert_eq!(keys.len(), users.len(), "user names share a key");
}

#[test]
fn concurrent_first_use_of_a_new_name_agrees_on_one_key() {
    let c = Cluster::start();
    let home = config_dir();
    let m = c.mark("nm");
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let cl = c.client("carol").env("XDG_CONFIG_HOME", path(home.path()));
            std::thread::spawn(move || cl.run(&format!("CREATE c{i}.txt\n")))
        })
        .collect();
    for t in clients {
        t.join()
            .unwrap()
            .assert_lines(&["File Created Successfully!"])
            .assert_code(0);
    }
    let dir = key_file(home.path(), "carol")
        .parent()
        .unwrap()
        .to_path_buf();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["carol.key"], "temp files left behind or keys split");
    let log = c.log("nm");
    assert_eq!(
        log.count(m, "nm_user_key", &|v| v["user"] == "carol"
            && v["outcome"] == "bound"),
        1
    );
    assert_eq!(
        log.count(m, "nm_user_key", &|v| v["outcome"] == "refused"),
        0
    );
}

#[test]
fn a_binding_survives_a_name_server_crash() {
    let mut c = Cluster::start();
    let alice = c.client("alice");
    alice.run("CREATE a.txt\n").assert_code(0);
    c.kill9("nm");
    c.restart("nm");
    let other_home = config_dir();
    c.client("alice")
        .env("XDG_CONFIG_HOME", path(other_home.path()))
        .run("LIST\n")
        .assert_lines(&[OTHER_KEY])
        .assert_code(2);
    alice.run("INFO a.txt\n").assert_code(0);
}

#[test]
fn storage_servers_and_raw_sessions_keep_working() {
    // Storage servers register with the cluster key (no user key); a raw protocol session
    // proves its user's key the way bin_client does.
    let c = Cluster::start();
    raw_create(c.nm_addr(), "dave", "d.txt").unwrap();
    c.client("dave").run("INFO d.txt\n").assert_code(0);
    // A HELLO answered with a forged proof is refused and the connection closed.
    let mut nm = c.nm_conn();
    let f = call_raw(
        &mut nm,
        &pairfs::protocol::Message::Hello {
            user: "dave".into(),
        },
    );
    let pairfs::protocol::Message::Challenge { nonce } = f.msg else {
        panic!("HELLO answered {:?}", f.msg);
    };
    let thief = pairfs::identity::UserKey::from_seed([9; 32]);
    let f = call_raw(
        &mut nm,
        &pairfs::protocol::Message::Prove {
            key: user_key("dave").public_hex(),
            sig: thief.prove("dave", &nonce),
        },
    );
    assert!(
        matches!(
            f.msg,
            pairfs::protocol::Message::Err {
                code: pairfs::protocol::ErrorCode::Unauthorized,
                ..
            }
        ),
        "{:?}",
        f.msg
    );
}

/// A text of one sentence of about `bytes` bytes: words and no delimiter until the final `.`.
fn one_sentence(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 16);
    let mut i = 0u64;
    while s.len() < bytes {
        s.push_str(&format!("w{i} "));
        i += 1;
    }
    s.push_str("end.");
    s
}

#[test]
fn a_one_megabyte_sentence_is_written_read_and_edited() {
    let c = Cluster::start();
    let alice = c.client("alice");
    let local = c.dir().join("big.txt");
    let text = one_sentence(1_000_000);
    std::fs::write(&local, &text).unwrap();
    alice
        .run(&format!("UPLOAD {} big.txt\n", local.display()))
        .assert_contains("Upload Successful!")
        .assert_code(0);
    let out = alice.run_timeout(
        "WRITE big.txt 0\n1 inserted\nETIRW\nREAD big.txt\n",
        Duration::from_secs(60),
    );
    out.assert_contains("Write Successful!").assert_code(0);
    assert!(
        out.stdout.contains("\nw0 inserted w1 w2 "),
        "edit not read back"
    );
    // Edited again, and an edit line of a megabyte travels too.
    let long_edit = one_sentence(1_000_000).replace('.', "");
    let out = alice.run_timeout(
        &format!("WRITE big.txt 0\n0 {long_edit}\nETIRW\n"),
        Duration::from_secs(60),
    );
    out.assert_contains("Write Successful!").assert_code(0);
    let raw = raw_read(c.nm_addr(), "alice", "big.txt").unwrap();
    assert_eq!(
        raw.len(),
        text.len() + "inserted ".len() + long_edit.len() + 1
    );

    // An edit that alone passes the limit is refused in the same terms; the session goes on.
    let too_long = "x".repeat((4 << 20) + 1);
    alice
        .run_timeout(
            &format!("WRITE big.txt 0\n0 {too_long}\n0 fine\nETIRW\n"),
            Duration::from_secs(60),
        )
        .assert_contains(&format!(
            "ERROR [LIMIT]: sentence too long: the edit alone is {} bytes, limit {}\n",
            too_long.len(),
            4 << 20
        ))
        .assert_contains("Write Successful!")
        .assert_code(1);
    // An edit that makes the sentence pass the limit is refused by the storage server.
    let near = "y".repeat((4 << 20) - 10);
    alice
        .run_timeout(
            &format!("WRITE big.txt 0\n0 {near}\nETIRW\n"),
            Duration::from_secs(60),
        )
        .assert_contains("ERROR [LIMIT]: sentence too long: ")
        .assert_contains(&format!("bytes, limit {}\n", 4 << 20))
        .assert_code(1);

    // Delimiters count as the sentence renders them: 3 MiB of dots become 6 MiB (`. . .`),
    // past the limit, though the edit's own bytes are not.
    let dots = ".".repeat(3 << 20);
    alice
        .run_timeout(
            &format!("WRITE big.txt 0\n0 {dots}\nETIRW\n"),
            Duration::from_secs(60),
        )
        .assert_contains("ERROR [LIMIT]: sentence too long: ")
        .assert_contains(&format!("bytes, limit {}\n", 4 << 20))
        .assert_code(1);

    // Past the limit, WRITE says how long the sentence is and what the limit is.
    let huge = one_sentence(5 << 20);
    std::fs::write(&local, &huge).unwrap();
    alice
        .run(&format!("UPLOAD {} huge.txt\n", local.display()))
        .assert_code(0);
    alice
        .run("WRITE huge.txt 0\n")
        .assert_contains(&format!(
            "ERROR [LIMIT]: sentence too long: {} bytes, limit {}",
            huge.len(),
            4 << 20
        ))
        .assert_code(1);
}

#[test]
fn names_with_format_bidi_or_control_characters_are_refused() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice.run("CREATE ok.txt\n").assert_code(0);
    let local = c.dir().join("up.txt");
    std::fs::write(&local, "Uploaded.").unwrap();
    for (ch, code) in [
        ('\u{202E}', "U+202E"),
        ('\u{200B}', "U+200B"),
        ('\u{1}', "U+0001"),
    ] {
        let file = format!("evil{ch}txt.exe");
        let folder = format!("/dir{ch}x");
        for cmd in [
            format!("CREATE {file}\n"),
            format!("CREATEFOLDER {folder}\n"),
            format!("MOVE ok.txt {folder}\n"),
            format!("UPLOAD {} {file}\n", local.display()),
        ] {
            let out = alice.run(&cmd);
            out.assert_code(1);
            assert!(
                out.stdout.starts_with("ERROR [INVALID]: ") && out.stdout.contains(code),
                "{cmd:?} answered {:?}",
                out.stdout
            );
        }
    }
    alice
        .run("VIEW -a\n")
        .assert_contains("ok.txt")
        .assert_lacks("evil")
        .assert_code(0);
}
