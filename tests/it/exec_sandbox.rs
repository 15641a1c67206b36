//! What a hostile EXEC script can reach (SPEC §8), and the permissions of the cluster key and
//! of stored data: the key file must be private, and everything a storage server stores is its
//! user's only.
//!
//! The sandbox tests need namespaces (root, or unprivileged user namespaces); where the name
//! server logs `nm_exec_isolation` with mode `limits_only` they print `SKIPPED` and return.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The isolation mode the name server logged at startup.
fn isolation(c: &Cluster) -> String {
    let v = c.wait_event("nm", "nm_exec_isolation", |_| true, WAIT);
    v["mode"].as_str().unwrap_or_default().to_string()
}

/// Whether this process may create the namespaces the sandbox uses (as root, or inside an
/// unprivileged user namespace), found by trying it in a child.
fn namespaces_possible() -> bool {
    use std::os::unix::process::CommandExt;
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET;
    if !nix::unistd::geteuid().is_root() {
        flags |= libc::CLONE_NEWUSER;
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 0"]);
    // SAFETY: unshare(2) is a single system call, async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.status().is_ok_and(|s| s.success())
}

/// True (after printing why) where namespaces cannot be created; otherwise asserts that the
/// name server isolates scripts with them.
fn skip_without_namespaces(c: &Cluster) -> bool {
    let mode = isolation(c);
    if !namespaces_possible() {
        println!("SKIPPED: this process cannot create namespaces (name server mode {mode})");
        return true;
    }
    assert_ne!(mode, "limits_only", "{}", c.log("nm").tail());
    false
}

/// Uploads `script` as `name` (byte for byte) and runs it with EXEC as alice.
fn exec(c: &Cluster, name: &str, script: &str) -> Output {
    let local = c.dir().join(format!("{name}.local"));
    std::fs::write(&local, script).unwrap();
    c.client("alice")
        .run(&format!("UPLOAD {} {name}\n", local.display()))
        .assert_contains("Upload Successful!");
    c.client("alice")
        .run_timeout(&format!("EXEC {name}\n"), Duration::from_secs(20))
}

#[test]
fn exec_cannot_read_the_cluster_key_the_storage_or_shadow() {
    let c = Cluster::start();
    if skip_without_namespaces(&c) {
        return;
    }
    let key_text = std::fs::read_to_string(c.key_file()).unwrap();
    let key_hex = key_text.trim();
    let storage = c.storage("ss1");
    let script = format!(
        "cat {key} || echo no-key\n\
         cat /etc/shadow || echo no-shadow\n\
         ls {storage} || echo no-storage\n\
         ls {dir} || echo no-cluster-dir\n",
        key = c.key_file().display(),
        storage = storage.display(),
        dir = c.dir().display(),
    );
    let out = exec(&c, "steal.sh", &script);
    out.assert_code(0);
    for want in ["no-key", "no-shadow", "no-storage", "no-cluster-dir"] {
        assert!(
            out.lines().contains(&want),
            "{want} missing:\n{}",
            out.stdout
        );
    }
    out.assert_lacks(key_hex).assert_lacks("files");
}

#[test]
fn exec_has_no_network() {
    let c = Cluster::start();
    if skip_without_namespaces(&c) {
        return;
    }
    let port = c.nm_addr().rsplit(':').next().unwrap().to_string();
    // Interfaces: the header lines of /proc/net/dev, then one line per interface.
    let mut script = String::from(
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sed 's/^/if=/'\n\
         echo ipv6=$(wc -l < /proc/net/if_inet6)\n",
    );
    if Path::new("/bin/bash").exists() {
        script.push_str(&format!(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo connected || \
             echo no-connect\n"
        ));
    }
    let out = exec(&c, "net.sh", &script);
    out.assert_code(0);
    let ifs: Vec<&str> = out
        .lines()
        .into_iter()
        .filter_map(|l| l.strip_prefix("if="))
        .collect();
    assert_eq!(ifs, ["lo"], "{}", out.stdout);
    // A loopback that is up has ::1; a down one has no address at all.
    out.assert_contains("ipv6=0\n");
    out.assert_lacks("connected\n");
    if Path::new("/bin/bash").exists() {
        out.assert_contains("no-connect\n");
    }
}

#[test]
fn exec_cannot_write_outside_its_tmp_dir() {
    let c = Cluster::start();
    if skip_without_namespaces(&c) {
        return;
    }
    let escape = c.dir().join("escape");
    let script = format!(
        "for f in {escape} /usr/escape /etc/escape /escape /dev/escape; do\n\
         echo x > $f 2>/dev/null && echo wrote $f\n\
         done\n\
         echo x > ok && cat ok && pwd && echo uid=$(id -u)\n",
        escape = escape.display()
    );
    let out = exec(&c, "write.sh", &script);
    out.assert_code(0).assert_lacks("wrote");
    out.assert_contains("x\n/tmp\n");
    assert!(!escape.exists());
    if nix::unistd::geteuid().is_root() {
        // Dropped to the unprivileged exec user.
        out.assert_lacks("uid=0\n");
    }
}

/// Host pids of processes with `arg` among their arguments.
fn pids_with_arg(arg: &str) -> Vec<i32> {
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// True once `pid` is gone or a zombie (waits up to 5 s).
fn wait_dead(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        if matches!(state, None | Some("Z") | Some("X")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn exec_timeout_kills_processes_that_left_the_session() {
    let c = Cluster::builder()
        .nm_args(&["--exec-timeout-s", "1"])
        .start();
    if skip_without_namespaces(&c) {
        return;
    }
    // A sleep whose argument no other process on the host has.
    let marker = format!("1000.{}", std::process::id());
    let script = format!("setsid sleep {marker} >/dev/null 2>&1 &\nsleep 30\n");
    let local = c.dir().join("escape.local");
    std::fs::write(&local, &script).unwrap();
    c.client("alice")
        .run(&format!("UPLOAD {} escape.sh\n", local.display()))
        .assert_contains("Upload Successful!");
    let client = c.client("alice");
    let runner =
        std::thread::spawn(move || client.run_timeout("EXEC escape.sh\n", Duration::from_secs(20)));
    // The escaped sleep runs (seen by host pid) while the script does.
    let deadline = Instant::now() + WAIT;
    let pids = loop {
        let p = pids_with_arg(&marker);
        if !p.is_empty() {
            break p;
        }
        assert!(Instant::now() < deadline, "the setsid sleep never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    runner
        .join()
        .unwrap()
        .assert_lines(&["ERROR [TIMEOUT]: EXEC terminated after 1 s (timeout)"]);
    for pid in pids {
        assert!(
            wait_dead(pid),
            "setsid sleep {pid} outlived the EXEC timeout"
        );
    }
}

#[test]
fn exec_isolation_is_logged_once_at_startup() {
    let c = Cluster::start();
    let mode = isolation(&c);
    if namespaces_possible() {
        let want = if nix::unistd::geteuid().is_root() {
            "namespaces"
        } else {
            "user_namespace"
        };
        assert_eq!(mode, want);
    }
    assert!(
        ["namespaces", "user_namespace", "limits_only"].contains(&mode.as_str()),
        "{mode}"
    );
    exec(&c, "a.sh", "echo hi\n").assert_lines(&["hi"]);
    exec(&c, "b.sh", "echo hi\n").assert_lines(&["hi"]);
    assert_eq!(
        c.log("nm").count(Mark(0), "nm_exec_isolation", &|_| true),
        1
    );
}

/// Runs `bin` with `args`; its exit code and stderr, failing if it is still running after
/// `WAIT`.
fn run_to_exit(bin_name: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin(bin_name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin_name} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn key_file_open_to_group_or_others_is_refused_by_both_servers() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    pairfs::auth::ClusterKey::load_or_create(&key).unwrap();
    let key_s = key.to_str().unwrap();
    let nm_data = dir.path().join("nm");
    let storage = dir.path().join("ss1");
    for mode in [0o644, 0o666] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let want = format!(
            "cluster key file {key_s} has mode {mode:04o}: it must not be accessible by group \
             or others; run: chmod 600 {key_s}"
        );
        let nm_args = [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--http-port",
            "0",
            "--data",
            nm_data.to_str().unwrap(),
            "--cluster-key-file",
            key_s,
        ];
        let ss_args = [
            "--host",
            "127.0.0.1",
            "--client-port",
            "0",
            "--nm-host",
            "127.0.0.1",
            "--nm-port",
            "1",
            "--storage",
            storage.to_str().unwrap(),
            "--cluster-key-file",
            key_s,
        ];
        for (b, args) in [("bin_nm", &nm_args[..]), ("bin_ss", &ss_args[..])] {
            let (code, err) = run_to_exit(b, args);
            assert_eq!(code, Some(2), "{b} with a {mode:o} key: {err}");
            assert!(err.contains(&want), "{b}: {err}");
        }
    }
    // Fixed as told, the same file is accepted.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = Cluster::start();
    let mode = std::fs::metadata(c.key_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the key file a name server creates");
    drop(c);
    pairfs::auth::ClusterKey::load_or_create(&key).unwrap();
}

/// Every path under `root` with a mode other than 0600 (files) or 0700 (directories).
fn loose_modes(root: &Path) -> Vec<String> {
    let mut bad = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let mode = md.permissions().mode() & 0o7777;
        let want = if md.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            bad.push(format!("{} {mode:04o}", p.display()));
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    bad
}

#[test]
fn stored_files_are_0600_and_directories_0700() {
    let c = Cluster::builder().pair().start();
    let alice = c.client("alice");
    alice
        .run(
            "CREATE a.txt\nWRITE a.txt 0\n0 Hello there.\nETIRW\n\
             WRITE a.txt 0\n0 Again.\nETIRW\nUNDO a.txt\nCHECKPOINT a.txt v1\n\
             CREATEFOLDER docs\nCREATE docs/b.txt\nWRITE docs/b.txt 0\n0 Inside.\nETIRW\n",
        )
        .assert_code(0);
    // The backup holds its copies once replication is done.
    let deadline = Instant::now() + WAIT;
    while !c.storage("ss1_backup").join("files/docs/b.txt").exists() {
        assert!(Instant::now() < deadline, "backup never got docs/b.txt");
        std::thread::sleep(Duration::from_millis(20));
    }
    for ss in ["ss1", "ss1_backup"] {
        let root = c.storage(ss);
        assert!(root.join("files/a.txt").exists());
        let bad = loose_modes(&root);
        assert!(bad.is_empty(), "{ss}: {bad:#?}");
    }
    // The name server's database too.
    let bad = loose_modes(&c.dir().join("nm"));
    assert!(bad.is_empty(), "nm: {bad:#?}");
}

#[test]
fn storage_dir_of_an_older_version_is_tightened_at_startup() {
    // A file placed by hand leaves the storage directory with the test's own (wide) modes.
    let c = Cluster::builder()
        .seed("ss1", "old.txt", b"Old file.")
        .start();
    let root = c.storage("ss1");
    let v = c.wait_event("ss1", "ss_storage_mode", |_| true, WAIT);
    assert_eq!(v["dir"], root.to_str().unwrap());
    let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    c.client("admin")
        .run("READ old.txt\n")
        .assert_contains("Old file.");
}

#[test]
fn unknown_or_root_exec_user_is_refused_at_startup() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: --exec-user is used only by a name server running as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nm_data = dir.path().join("nm");
    let key = dir.path().join("cluster.key");
    for (user, want) in [
        ("no_such_user_x", "--exec-user no_such_user_x: no such user"),
        ("root", "--exec-user root: scripts must not run as root"),
    ] {
        let (code, err) = run_to_exit(
            "bin_nm",
            &[
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--http-port",
                "0",
                "--data",
                nm_data.to_str().unwrap(),
                "--cluster-key-file",
                key.to_str().unwrap(),
                "--exec-user",
                user,
            ],
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(want), "{err}");
    }
}
