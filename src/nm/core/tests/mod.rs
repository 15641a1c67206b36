//! Shared helpers of the core's unit tests (a core, a registered server, a session), and
//! the tests of the core's request handling.

use super::*;
use crate::protocol::ErrorCode;

mod checkpoints;
mod creates;
mod deletes;
mod failover;
mod folders;
mod jobindex;
mod namespace;
mod ops;
mod queue;
mod registry;
mod requests;
mod sessions;
mod status;

pub(super) const KEY: &[u8] = b"0123456789abcdef0123";

/// A core whose wall clock reads the monotonic time it is given (so recorded times are
/// the test's times) and whose randomness is seeded.
pub(super) fn core() -> Core {
    Core::with_env(
        CoreConfig {
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 300,
            exec_enabled: true,
            replication: "async",
            max_repl_in_flight: 8,
            started_ms: 0,
        },
        ClusterKey::from_bytes(KEY),
        Loaded::default(),
        Env::seeded(0, 0),
    )
}

pub(super) fn send(c: &mut Core, conn: ConnId, msg: Message, now: u64) -> Vec<Effect> {
    c.on_frame(conn, Frame { msg, body: vec![] }, now);
    c.take_effects()
}

pub(super) fn st(file: &str, counter: u64, owner: Option<&str>) -> FileState {
    FileState {
        file: file.into(),
        version: Version { epoch: 1, counter },
        checksum: counter as u32,
        size: counter,
        words: 1,
        chars: counter,
        modified_ms: 5,
        owner: owner.map(str::to_string),
    }
}

pub(super) fn register(
    c: &mut Core,
    conn: ConnId,
    name: &str,
    files: Vec<FileState>,
) -> Vec<Effect> {
    c.on_connect(conn, 0);
    let proof = ClusterKey::from_bytes(KEY).proof(&RegisterClaim {
        name,
        host: "127.0.0.1",
        client_port: 7000 + conn as u16,
        backup_of: None,
    });
    let e = send(
        c,
        conn,
        Message::Register {
            name: name.into(),
            host: "127.0.0.1".into(),
            client_port: 7000 + conn as u16,
            backup_of: None,
            proof,
            file_count: files.len() as u64,
        },
        0,
    );
    assert!(e.is_empty());
    for chunk in files.chunks(frame::FILE_BATCH_MAX) {
        let files = chunk.to_vec();
        assert!(send(c, conn, Message::FileBatch { files }, 0).is_empty());
    }
    send(c, conn, Message::RegisterEnd {}, 0)
}

/// The key a test user proves: one per name, so names never share a binding.
pub(super) fn user_key(user: &str) -> identity::UserKey {
    let mut seed = [0u8; 32];
    for (i, b) in user.bytes().enumerate() {
        seed[i % 32] ^= b.wrapping_add(i as u8);
    }
    identity::UserKey::from_seed(seed)
}

/// HELLO, then PROVE with `key`: the effects of the PROVE.
pub(super) fn hello_with(
    c: &mut Core,
    conn: ConnId,
    user: &str,
    key: &identity::UserKey,
) -> Vec<Effect> {
    c.on_connect(conn, 0);
    let e = send(c, conn, Message::Hello { user: user.into() }, 0);
    let nonce = match &e[..] {
        [Effect::Reply {
            msg: Message::Challenge { nonce },
            ..
        }] => nonce.clone(),
        other => panic!("HELLO answered {other:?}"),
    };
    let prove = Message::Prove {
        key: key.public_hex(),
        sig: key.prove(user, &nonce),
    };
    send(c, conn, prove, 0)
}

pub(super) fn hello(c: &mut Core, conn: ConnId, user: &str) {
    let e = hello_with(c, conn, user, &user_key(user));
    assert!(matches!(
        &e[..],
        [Effect::Reply {
            msg: Message::Welcome { .. },
            ..
        }]
    ));
}

/// Replication jobs, and the folder pushes that go with them, no client waits for.
pub(super) fn is_repl(e: &Effect) -> bool {
    matches!(
        e,
        Effect::Job(Job {
            kind: JobKind::Replicate(_),
            ..
        }) | Effect::Job(Job {
            kind: JobKind::SsCall {
                msg: Message::SsMkdir { .. },
                ..
            },
            ..
        })
    )
}

pub(super) fn mkdirs(e: &[Effect]) -> Vec<(String, Vec<String>, u64)> {
    e.iter()
        .filter_map(|x| match x {
            Effect::Job(Job {
                id,
                kind:
                    JobKind::SsCall {
                        msg: Message::SsMkdir { folders, ticket },
                        ..
                    },
            }) => {
                assert_eq!(ticket.file, names::mkdir_subject(folders));
                assert_eq!(ticket.op, TicketOp::Mkdir);
                Some((ticket.ss.clone(), folders.clone(), *id))
            }
            _ => None,
        })
        .collect()
}

/// Replication jobs are checked by the tests that mean to; others look past them.
pub(super) fn only_reply(e: Vec<Effect>) -> Message {
    let e: Vec<Effect> = e.into_iter().filter(|x| !is_repl(x)).collect();
    match &e[..] {
        [Effect::Reply { msg, .. }] => msg.clone(),
        other => panic!("expected one reply, got {other:?}"),
    }
}

/// The one job of `e` (held until its batch is durable, or not), replication aside.
pub(super) fn only_job(e: Vec<Effect>) -> Job {
    let e: Vec<Effect> = e.into_iter().filter(|x| !is_repl(x)).collect();
    match &e[..] {
        [Effect::Job(j)] | [Effect::DurableJob(j)] => j.clone(),
        other => panic!("expected one job, got {other:?}"),
    }
}

pub(super) fn code(m: Message) -> ErrorCode {
    match m {
        Message::Err { code, .. } => code,
        other => panic!("expected ERR, got {other:?}"),
    }
}

/// Creates `file` as `user` through the whole job round trip.
pub(super) fn create(c: &mut Core, conn: ConnId, file: &str) -> String {
    let job = only_job(send(c, conn, Message::Create { file: file.into() }, 10));
    let JobKind::SsCall {
        msg: Message::SsCreate { ticket, .. },
        ..
    } = &job.kind
    else {
        panic!("not an SS_CREATE: {job:?}");
    };
    let ss = ticket.ss.clone();
    c.on_job_result(job.id, Ok(JobOutput::State(st(file, 1, None))), 20);
    assert_eq!(only_reply(c.take_effects()), Message::Done {});
    ss
}

// ----- replication -----

pub(super) fn register_as(
    c: &mut Core,
    conn: ConnId,
    name: &str,
    backup_of: Option<&str>,
    files: Vec<FileState>,
) -> Vec<Effect> {
    c.on_connect(conn, 0);
    let proof = ClusterKey::from_bytes(KEY).proof(&RegisterClaim {
        name,
        host: "127.0.0.1",
        client_port: 7000 + conn as u16,
        backup_of,
    });
    let reg = Message::Register {
        name: name.into(),
        host: "127.0.0.1".into(),
        client_port: 7000 + conn as u16,
        backup_of: backup_of.map(str::to_string),
        proof,
        file_count: files.len() as u64,
    };
    assert!(send(c, conn, reg, 0).is_empty());
    if !files.is_empty() {
        assert!(send(c, conn, Message::FileBatch { files }, 0).is_empty());
    }
    send(c, conn, Message::RegisterEnd {}, 0)
}

pub(super) fn repl_jobs(e: &[Effect]) -> Vec<(JobId, Transfer)> {
    e.iter()
        .filter_map(|x| match x {
            Effect::Job(Job {
                id,
                kind: JobKind::Replicate(t),
            }) => Some((*id, t.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn sync_core() -> Core {
    let mut c = core();
    c.cfg.replication = "sync";
    c
}

pub(super) fn copied(file: &str, counter: u64) -> Result<JobOutput, WireError> {
    Ok(JobOutput::Replicated(Outcome::Copied {
        state: st(file, counter, None),
        skipped: false,
        bytes: counter,
    }))
}

pub(super) fn folder(c: &mut Core, conn: ConnId, f: &str) -> Message {
    only_reply(send(c, conn, Message::CreateFolder { folder: f.into() }, 5))
}

pub(super) fn listing(
    c: &mut Core,
    conn: ConnId,
    f: &str,
) -> Result<Vec<(String, bool)>, ErrorCode> {
    match only_reply(send(c, conn, Message::ViewFolder { folder: f.into() }, 5)) {
        Message::FolderList { entries, more } => {
            assert!(!more);
            Ok(entries.into_iter().map(|e| (e.name, e.dir)).collect())
        }
        other => Err(code(other)),
    }
}

pub(super) fn entry(name: &str, dir: bool) -> (String, bool) {
    (name.to_string(), dir)
}

/// A pair ss1 / ss1_backup (heartbeats not under test) with alice's `a.txt` and a folder
/// `/d`, alice connected as 10.
pub(super) fn pair_with_file_and_folder() -> Core {
    let mut c = core();
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    register_as(&mut c, 1, "ss1", None, vec![]);
    register_as(&mut c, 2, "ss1_backup", None, vec![]);
    hello(&mut c, 10, "alice");
    create(&mut c, 10, "a.txt");
    assert_eq!(folder(&mut c, 10, "/d"), Message::Done {});
    c
}
