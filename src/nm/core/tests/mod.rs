//! Shared helpers of the core's unit tests (a core, a registered server, a session), and
//! the tests of the core's request handling.

use super::*;
use crate::protocol::ErrorCode;

mod failover;
mod jobindex;

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

#[test]
fn a_user_binds_its_first_key_and_only_that_key_opens_sessions() {
    let mut c = core();
    let alice = user_key("alice");
    hello(&mut c, 1, "alice");
    assert!(c
        .take_batch()
        .contains(&StoreOp::PutUserKey("alice".into(), alice.public_hex())));
    // The same key again: welcome, nothing new to store.
    hello(&mut c, 2, "alice");
    assert!(c.take_batch().is_empty());
    // Another key: refused with the reset hint, and the connection closed.
    let e = hello_with(&mut c, 3, "alice", &user_key("mallory"));
    match &e[..] {
        [Effect::Reply {
            msg: Message::Err { code, msg },
            ..
        }, Effect::Close { conn: 3 }] => {
            assert_eq!(*code, ErrorCode::Unauthorized);
            assert_eq!(
                msg,
                "alice is registered with another key (reset it with bin_nm --reset-user alice)"
            );
        }
        other => panic!("{other:?}"),
    }
    // A signature over another nonce is refused too.
    c.on_connect(4, 0);
    send(
        &mut c,
        4,
        Message::Hello {
            user: "alice".into(),
        },
        0,
    );
    let e = send(
        &mut c,
        4,
        Message::Prove {
            key: alice.public_hex(),
            sig: alice.prove("alice", "not-the-nonce"),
        },
        0,
    );
    assert!(matches!(
        &e[..],
        [
            Effect::Reply {
                msg: Message::Err {
                    code: ErrorCode::Unauthorized,
                    ..
                },
                ..
            },
            Effect::Close { .. }
        ]
    ));
    // A request before PROVE is refused.
    c.on_connect(5, 0);
    send(&mut c, 5, Message::Hello { user: "bob".into() }, 0);
    let e = send(&mut c, 5, Message::ListUsers {}, 0);
    assert!(matches!(
        &e[..],
        [
            Effect::Reply {
                msg: Message::Err {
                    code: ErrorCode::Invalid,
                    ..
                },
                ..
            },
            Effect::Close { .. }
        ]
    ));
}

/// Replication jobs, and the folder pushes that go with them, no client waits for.
fn is_repl(e: &Effect) -> bool {
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

fn mkdirs(e: &[Effect]) -> Vec<(String, Vec<String>, u64)> {
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

#[test]
fn folders_reach_every_server_now_and_at_registration() {
    let mut c = core();
    register_as(&mut c, 1, "ss1", None, vec![]);
    register_as(&mut c, 2, "ss1_backup", None, vec![]);
    hello(&mut c, 10, "alice");
    let e = send(
        &mut c,
        10,
        Message::CreateFolder {
            folder: "/d".into(),
        },
        5,
    );
    let pushed: Vec<(String, Vec<String>)> =
        mkdirs(&e).into_iter().map(|(s, f, _)| (s, f)).collect();
    assert_eq!(
        pushed,
        vec![
            ("ss1".to_string(), vec!["d".to_string()]),
            ("ss1_backup".to_string(), vec!["d".to_string()]),
        ]
    );
    // No client waits for the pushes: their results produce nothing.
    for (_, _, id) in mkdirs(&e) {
        c.on_job_result(id, Err(err::unavailable("down")), 6);
    }
    assert!(c.take_effects().is_empty());
    send(
        &mut c,
        10,
        Message::CreateFolder {
            folder: "/d/e".into(),
        },
        7,
    );
    // A server registering again gets every folder, parents first.
    c.on_close(2, 8);
    c.take_effects();
    let e = register_as(&mut c, 3, "ss1_backup", None, vec![]);
    let pushed: Vec<(String, Vec<String>)> =
        mkdirs(&e).into_iter().map(|(s, f, _)| (s, f)).collect();
    assert_eq!(
        pushed,
        vec![(
            "ss1_backup".to_string(),
            vec!["d".to_string(), "d/e".to_string()]
        )]
    );
}

/// Replication jobs are checked by the tests that mean to; others look past them.
fn only_reply(e: Vec<Effect>) -> Message {
    let e: Vec<Effect> = e.into_iter().filter(|x| !is_repl(x)).collect();
    match &e[..] {
        [Effect::Reply { msg, .. }] => msg.clone(),
        other => panic!("expected one reply, got {other:?}"),
    }
}

fn only_job(e: Vec<Effect>) -> Job {
    let e: Vec<Effect> = e.into_iter().filter(|x| !is_repl(x)).collect();
    match &e[..] {
        [Effect::Job(j)] => j.clone(),
        other => panic!("expected one job, got {other:?}"),
    }
}

fn code(m: Message) -> ErrorCode {
    match m {
        Message::Err { code, .. } => code,
        other => panic!("expected ERR, got {other:?}"),
    }
}

/// Creates `file` as `user` through the whole job round trip.
fn create(c: &mut Core, conn: ConnId, file: &str) -> String {
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

#[test]
fn placement_picks_the_live_primary_with_fewest_files() {
    let mut c = core();
    assert_eq!(
        only_reply(register(&mut c, 1, "ss1", vec![st("x.txt", 1, None)])),
        Message::Registered {
            epoch: 1,
            heartbeat_interval_ms: 100,
            backup: false,
            lease_ms: 200,
        }
    );
    register(&mut c, 2, "ss2", vec![]);
    register(&mut c, 3, "ss2_backup", vec![]);
    hello(&mut c, 10, "alice");
    assert_eq!(create(&mut c, 10, "a.txt"), "ss2");
    // ss1 and ss2 hold one each now; the tie goes to the first name.
    assert_eq!(create(&mut c, 10, "b.txt"), "ss1");
    c.on_close(1, 30);
    c.on_close(2, 30);
    let m = only_reply(send(
        &mut c,
        10,
        Message::Create {
            file: "c.txt".into(),
        },
        40,
    ));
    assert_eq!(
        code(m),
        ErrorCode::Unavailable,
        "backups never get new files"
    );
}

#[test]
fn create_refuses_duplicates_and_folders() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    hello(&mut c, 10, "alice");
    create(&mut c, 10, "a.txt");
    let m = only_reply(send(
        &mut c,
        10,
        Message::Create {
            file: "a.txt".into(),
        },
        0,
    ));
    assert_eq!(code(m), ErrorCode::Conflict);
    let m = only_reply(send(
        &mut c,
        10,
        Message::Create {
            file: "/d/a.txt".into(),
        },
        0,
    ));
    assert_eq!(code(m), ErrorCode::NotFound);
    let m = only_reply(send(
        &mut c,
        10,
        Message::Create {
            file: "../a".into(),
        },
        0,
    ));
    assert_eq!(code(m), ErrorCode::Invalid);
    assert!(c
        .take_batch()
        .iter()
        .any(|o| matches!(o, StoreOp::PutFile(f, _) if f == "a.txt")));
}

#[test]
fn access_rules() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    hello(&mut c, 10, "alice");
    hello(&mut c, 11, "bob");
    create(&mut c, 10, "a.txt");
    let locate = |mode| Message::Locate {
        avoid: None,
        file: "a.txt".into(),
        mode,
    };
    assert_eq!(
        code(only_reply(send(&mut c, 11, locate(AccessMode::Read), 0))),
        ErrorCode::Unauthorized
    );
    let m = only_reply(send(
        &mut c,
        11,
        Message::Info {
            file: "nope".into(),
        },
        0,
    ));
    assert_eq!(code(m), ErrorCode::NotFound);
    // Only the owner changes access, and never their own.
    let add = |user: &str, write| Message::AddAccess {
        file: "a.txt".into(),
        user: user.into(),
        write,
    };
    assert_eq!(
        code(only_reply(send(&mut c, 11, add("bob", true), 0))),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(only_reply(send(&mut c, 10, add("alice", true), 0))),
        ErrorCode::Invalid
    );
    assert_eq!(
        only_reply(send(&mut c, 10, add("bob", false), 0)),
        Message::AccessGranted { new_user: false }
    );
    assert_eq!(
        only_reply(send(&mut c, 10, add("carol", false), 0)),
        Message::AccessGranted { new_user: true }
    );
    // Read but not write.
    assert!(matches!(
        only_reply(send(&mut c, 11, locate(AccessMode::Read), 50)),
        Message::Located { .. }
    ));
    assert_eq!(
        code(only_reply(send(&mut c, 11, locate(AccessMode::Write), 0))),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(only_reply(send(
            &mut c,
            11,
            Message::Undo {
                file: "a.txt".into()
            },
            0
        ))),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(only_reply(send(
            &mut c,
            11,
            Message::Delete {
                file: "a.txt".into()
            },
            0
        ))),
        ErrorCode::Unauthorized
    );
    // INFO lists the owner first, then the others by name; the last access is recorded.
    let Message::InfoReply { info } = only_reply(send(
        &mut c,
        11,
        Message::Info {
            file: "a.txt".into(),
        },
        0,
    )) else {
        panic!()
    };
    let who: Vec<(&str, bool)> = info
        .access
        .iter()
        .map(|a| (a.user.as_str(), a.write))
        .collect();
    assert_eq!(who, vec![("alice", true), ("bob", false), ("carol", false)]);
    assert_eq!(info.accessed_by.as_deref(), Some("bob"));
    assert_eq!(info.replicas[0].state, "current");
    // bob sees the file in VIEW; a stranger sees it only with -a.
    hello(&mut c, 12, "dave");
    let view = |all| Message::View { all, long: false };
    let Message::FileList { files, .. } = only_reply(send(&mut c, 12, view(false), 0)) else {
        panic!()
    };
    assert!(files.is_empty());
    let Message::FileList { files, .. } = only_reply(send(&mut c, 12, view(true), 0)) else {
        panic!()
    };
    assert_eq!(files.len(), 1);
    // Removing.
    let rem = |user: &str| Message::RemAccess {
        file: "a.txt".into(),
        user: user.into(),
    };
    assert_eq!(
        code(only_reply(send(&mut c, 10, rem("alice"), 0))),
        ErrorCode::Invalid
    );
    assert_eq!(
        code(only_reply(send(&mut c, 10, rem("dave"), 0))),
        ErrorCode::NotFound
    );
    assert_eq!(
        only_reply(send(&mut c, 10, rem("bob"), 0)),
        Message::Done {}
    );
    assert_eq!(
        code(only_reply(send(&mut c, 11, locate(AccessMode::Read), 0))),
        ErrorCode::Unauthorized
    );
    let Message::Users { users, .. } = only_reply(send(&mut c, 12, Message::ListUsers {}, 0))
    else {
        panic!()
    };
    assert_eq!(users, vec!["alice", "bob", "dave"]);
}

#[test]
fn down_server_means_no_live_copy() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 3, Some("alice"))]);
    hello(&mut c, 10, "alice");
    c.tick(299);
    assert!(c.take_effects().is_empty());
    assert_eq!(c.next_deadline_ms(), Some(300));
    c.tick(300);
    assert_eq!(c.take_effects(), vec![Effect::Close { conn: 1 }]);
    let m = only_reply(send(
        &mut c,
        10,
        Message::Locate {
            avoid: None,
            file: "a.txt".into(),
            mode: AccessMode::Read,
        },
        400,
    ));
    assert_eq!(code(m), ErrorCode::Unavailable);
    let Message::InfoReply { info } = only_reply(send(
        &mut c,
        10,
        Message::Info {
            file: "a.txt".into(),
        },
        0,
    )) else {
        panic!()
    };
    assert_eq!(info.replicas[0].state, "down");
    // It comes back and registers again.
    c.on_close(1, 400);
    register(&mut c, 2, "ss1", vec![st("a.txt", 3, Some("alice"))]);
    assert!(matches!(
        only_reply(send(
            &mut c,
            10,
            Message::Locate {
                avoid: None,
                file: "a.txt".into(),
                mode: AccessMode::Read
            },
            500
        )),
        Message::Located { .. }
    ));
}

#[test]
fn registration_reconciles_the_index() {
    let mut c = core();
    register(
        &mut c,
        1,
        "ss1",
        vec![
            st("keep.txt", 2, Some("alice")),
            st("gone.txt", 1, Some("alice")),
        ],
    );
    c.on_close(1, 10);
    c.take_batch();
    // Back with keep.txt newer, gone.txt absent, and a file nobody knew.
    register(
        &mut c,
        2,
        "ss1",
        vec![st("keep.txt", 5, Some("alice")), st("new.txt", 1, None)],
    );
    assert_eq!(c.files["keep.txt"].version.counter, 5);
    // A file the server no longer lists is kept, marked missing, never deleted.
    assert!(c.files["gone.txt"].primary_missing);
    assert_eq!(c.files["gone.txt"].owner, "alice");
    assert_eq!(c.files["new.txt"].owner, ADOPTED_OWNER);
    let batch = c.take_batch();
    assert!(!batch.contains(&StoreOp::DelFile("gone.txt".into())));
    // An older copy never rolls the record back.
    c.on_close(2, 20);
    register(
        &mut c,
        3,
        "ss1",
        vec![st("keep.txt", 4, None), st("new.txt", 1, None)],
    );
    assert_eq!(c.files["keep.txt"].version.counter, 5);
    // The missing record still counts as placed on ss1.
    assert_eq!(c.servers["ss1"].files, 3);
    // When the server lists the file again (the right disk is back), it is no longer missing.
    c.on_close(3, 30);
    register(
        &mut c,
        4,
        "ss1",
        vec![
            st("keep.txt", 5, None),
            st("new.txt", 1, None),
            st("gone.txt", 1, None),
        ],
    );
    assert!(!c.files["gone.txt"].primary_missing);
}

#[test]
fn registration_needs_the_key_and_a_free_name() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    c.on_connect(2, 0);
    let claim = |name| RegisterClaim {
        name,
        host: "h",
        client_port: 1,
        backup_of: None,
    };
    let proof = ClusterKey::from_bytes(b"some other key 0123456").proof(&claim("ss2"));
    let reg = |name: &str, proof| Message::Register {
        name: name.into(),
        host: "h".into(),
        client_port: 1,
        backup_of: None,
        proof,
        file_count: 0,
    };
    let e = send(&mut c, 2, reg("ss2", proof), 0);
    assert_eq!(e.len(), 2);
    assert!(matches!(
        &e[0],
        Effect::Reply {
            msg: Message::Err {
                code: ErrorCode::Unauthorized,
                ..
            },
            ..
        }
    ));
    assert_eq!(e[1], Effect::Close { conn: 2 });
    c.on_connect(3, 0);
    let e = send(
        &mut c,
        3,
        reg("ss1", ClusterKey::from_bytes(KEY).proof(&claim("ss1"))),
        0,
    );
    assert!(matches!(
        &e[0],
        Effect::Reply {
            msg: Message::Err {
                code: ErrorCode::Conflict,
                ..
            },
            ..
        }
    ));
}

#[test]
fn silent_new_connections_are_closed() {
    let mut c = core();
    c.on_connect(5, 1000);
    hello(&mut c, 6, "alice");
    assert_eq!(c.next_deadline_ms(), Some(1000 + INTRODUCTION_TIMEOUT_MS));
    c.tick(1000 + INTRODUCTION_TIMEOUT_MS);
    let e = c.take_effects();
    assert!(matches!(
        &e[0],
        Effect::Reply {
            conn: 5,
            msg: Message::Err {
                code: ErrorCode::Timeout,
                ..
            },
            ..
        }
    ));
    assert_eq!(e[1], Effect::Close { conn: 5 });
    assert_eq!(c.next_deadline_ms(), None);
}

#[test]
fn changed_and_removed_update_the_record() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    let e = send(
        &mut c,
        1,
        Message::Changed {
            staged: None,
            id: 7,
            state: st("a.txt", 2, None),
        },
        5,
    );
    assert_eq!(
        only_reply(e),
        Message::ChangedAck {
            id: 7,
            copies: None
        }
    );
    assert_eq!(c.files["a.txt"].version.counter, 2);
    assert_eq!(c.files["a.txt"].owner, "alice");
    let e = send(
        &mut c,
        1,
        Message::Removed {
            id: 8,
            file: "a.txt".into(),
        },
        5,
    );
    assert_eq!(
        only_reply(e),
        Message::ChangedAck {
            id: 8,
            copies: None
        }
    );
    assert!(c.files.is_empty());
    let e = send(
        &mut c,
        1,
        Message::Heartbeat {
            seq: 3,
            writer: false,
        },
        250,
    );
    assert_eq!(
        only_reply(e),
        Message::HeartbeatAck {
            partner: None,
            seq: 3,
            epoch: 1,
            writer: true,
            lease_ms: 200
        }
    );
    assert_eq!(c.next_deadline_ms(), Some(550));
}

#[test]
fn operations_on_one_file_are_serialised() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    hello(&mut c, 10, "alice");
    hello(&mut c, 11, "bob");
    // Two creates race: the second waits, then finds the name taken.
    let j1 = only_job(send(
        &mut c,
        10,
        Message::Create {
            file: "a.txt".into(),
        },
        0,
    ));
    assert!(c.is_busy(10));
    assert!(send(
        &mut c,
        11,
        Message::Create {
            file: "a.txt".into()
        },
        0
    )
    .is_empty());
    assert!(c.is_busy(11));
    // Other files are not held up.
    hello(&mut c, 12, "carol");
    let other = only_job(send(
        &mut c,
        12,
        Message::Create {
            file: "b.txt".into(),
        },
        0,
    ));
    assert!(matches!(other.kind, JobKind::SsCall { .. }));
    c.on_job_result(j1.id, Ok(JobOutput::State(st("a.txt", 1, None))), 1);
    let e = c.take_effects();
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        e[0],
        Effect::Reply {
            conn: 10,
            msg: Message::Done {},
            body: vec![]
        }
    );
    assert!(matches!(
        &e[1],
        Effect::Reply {
            conn: 11,
            msg: Message::Err {
                code: ErrorCode::Conflict,
                ..
            },
            ..
        }
    ));
    assert!(!c.is_busy(11));
    // A delete waits behind an undo and runs after it.
    let undo = only_job(send(
        &mut c,
        10,
        Message::Undo {
            file: "a.txt".into(),
        },
        2,
    ));
    hello(&mut c, 13, "alice");
    assert!(send(
        &mut c,
        13,
        Message::Delete {
            file: "a.txt".into()
        },
        2
    )
    .is_empty());
    c.on_job_result(undo.id, Err(err::no_undo("nothing to undo")), 3);
    let e = c.take_effects();
    assert!(matches!(
        &e[0],
        Effect::Reply {
            conn: 10,
            msg: Message::Err {
                code: ErrorCode::NoUndo,
                ..
            },
            ..
        }
    ));
    let Effect::Job(del) = &e[1] else {
        panic!("{e:?}")
    };
    c.on_job_result(del.id, Ok(JobOutput::Done), 4);
    assert_eq!(only_reply(c.take_effects()), Message::Done {});
    assert!(c.files.is_empty());
    assert!(!c.busy_files.contains_key("a.txt"));
}

#[test]
fn exec_is_a_job_unless_disabled() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("s.sh", 1, Some("alice"))]);
    hello(&mut c, 10, "alice");
    let j = only_job(send(
        &mut c,
        10,
        Message::Exec {
            file: "s.sh".into(),
        },
        0,
    ));
    assert!(matches!(j.kind, JobKind::Exec { .. }));
    c.on_job_result(
        j.id,
        Ok(JobOutput::Exec {
            output: b"hi\n".to_vec(),
            exit_code: Some(0),
            truncated: false,
        }),
        5,
    );
    match &c.take_effects()[..] {
        [Effect::Reply {
            msg: Message::ExecOutput {
                exit_code: Some(0), ..
            },
            body,
            ..
        }] => {
            assert_eq!(body, b"hi\n")
        }
        other => panic!("{other:?}"),
    }
    c.cfg.exec_enabled = false;
    let m = only_reply(send(
        &mut c,
        10,
        Message::Exec {
            file: "s.sh".into(),
        },
        0,
    ));
    assert_eq!(code(m), ErrorCode::Unauthorized);
}

// ----- replication -----

fn register_as(
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

fn repl_jobs(e: &[Effect]) -> Vec<(JobId, Transfer)> {
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

fn sync_core() -> Core {
    let mut c = core();
    c.cfg.replication = "sync";
    c
}

fn copied(file: &str, counter: u64) -> Result<JobOutput, WireError> {
    Ok(JobOutput::Replicated(Outcome::Copied {
        state: st(file, counter, None),
        skipped: false,
        bytes: counter,
    }))
}

#[test]
fn pairing_works_in_both_start_orders() {
    // Backup first, by name.
    let mut c = core();
    let e = register(&mut c, 1, "ss1_backup", vec![]);
    assert!(matches!(
        only_reply(e),
        Message::Registered { backup: true, .. }
    ));
    assert!(c
        .take_batch()
        .contains(&StoreOp::PutPair("ss1".into(), "ss1_backup".into())));
    let e = register(&mut c, 2, "ss1", vec![]);
    assert!(matches!(
        only_reply(e),
        Message::Registered { backup: false, .. }
    ));
    assert_eq!(c.pairs.get("ss1").map(String::as_str), Some("ss1_backup"));
    // Primary first, backup by flag.
    let mut c = core();
    register(&mut c, 1, "alpha", vec![]);
    let e = register_as(&mut c, 2, "beta", Some("alpha"), vec![]);
    assert!(matches!(
        only_reply(e),
        Message::Registered { backup: true, .. }
    ));
    assert_eq!(c.pairs.get("alpha").map(String::as_str), Some("beta"));
    // New files go to the primary only; a lone primary is UNPAIRED in STATUS.
    register(&mut c, 3, "gamma", vec![]);
    hello(&mut c, 10, "alice");
    assert_eq!(create(&mut c, 10, "a.txt"), "alpha");
    assert_eq!(create(&mut c, 10, "b.txt"), "gamma");
    assert_eq!(create(&mut c, 10, "c.txt"), "alpha");
    let Message::StatusReply { pairs, servers, .. } =
        only_reply(send(&mut c, 10, Message::Status {}, 50))
    else {
        panic!()
    };
    let states: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.primary.as_str(), p.state.as_str()))
        .collect();
    assert_eq!(states, vec![("alpha", "SYNCING"), ("gamma", "UNPAIRED")]);
    let beta = servers.iter().find(|s| s.name == "beta").unwrap();
    assert_eq!((beta.role.as_str(), beta.files), ("backup", 2));
}

#[test]
fn jobs_coalesce_per_file_and_carry_the_latest_version() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, Some("alice"))]);
    assert!(c.repl.is_empty(), "the backup already holds a.txt");
    // Fill the in-flight cap with other files so a.txt's job waits in the table.
    c.cfg.max_repl_in_flight = 1;
    c.take_batch();
    for n in 2..=11 {
        let e = send(
            &mut c,
            1,
            Message::Changed {
                staged: None,
                id: n,
                state: st("a.txt", n, None),
            },
            100 + n,
        );
        assert!(e.iter().any(|x| matches!(
            x,
            Effect::Reply {
                msg: Message::ChangedAck { copies: None, .. },
                ..
            }
        )));
    }
    assert_eq!(c.repl.len(), 1);
    let job = &c.repl[&job_key("ss1_backup", "a.txt")];
    assert_eq!(
        job.want,
        Want::Content {
            version: st("a.txt", 11, None).version
        }
    );
    assert_eq!(job.since_ms, 102, "lag counts from the oldest owed change");
    let puts = c
        .take_batch()
        .iter()
        .filter(|o| matches!(o, StoreOp::PutJob(_)))
        .count();
    assert_eq!(puts, 10, "every change writes its job in its own batch");
    c.tick(200);
    let jobs = repl_jobs(&c.take_effects());
    assert_eq!(jobs.len(), 1);
    let (id, t) = &jobs[0];
    assert_eq!(t.source.as_ref().unwrap().0, "ss1");
    assert_eq!(t.target.0, "ss1_backup");
    // A write lands while the copy runs: the job stays for the newer version.
    send(
        &mut c,
        1,
        Message::Changed {
            staged: None,
            id: 99,
            state: st("a.txt", 12, None),
        },
        210,
    );
    c.on_job_result(*id, copied("a.txt", 11), 220);
    assert_eq!(
        c.files["a.txt"].backup_version,
        Some(st("a.txt", 11, None).version)
    );
    let jobs = repl_jobs(&c.take_effects());
    assert_eq!(jobs.len(), 1, "the newer version is sent next");
    c.on_job_result(jobs[0].0, copied("a.txt", 12), 230);
    assert!(c.repl.is_empty());
    assert!(c
        .take_batch()
        .contains(&StoreOp::DelJob(job_key("ss1_backup", "a.txt"))));
}

#[test]
fn status_lists_a_bounded_number_of_failed_jobs_and_counts_them_all() {
    let mut c = core();
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    let n = 3000;
    let files: Vec<FileState> = (0..n)
        .map(|i| {
            st(
                &format!("file-with-a-longish-name-{i:05}.txt"),
                1,
                Some("alice"),
            )
        })
        .collect();
    register(&mut c, 1, "ss1", files);
    register(&mut c, 2, "ss1_backup", vec![]);
    assert_eq!(c.repl.len(), n);
    // Every copy ran out of attempts, each with a long error.
    for key in c.repl.keys_for("ss1_backup") {
        c.repl.update(&key, |j| {
            j.state = JobState::Failed;
            j.attempts = replication::MAX_ATTEMPTS;
            j.last_error = Some("no space left on device ".repeat(40));
        });
    }
    hello(&mut c, 10, "alice");
    let reply = only_reply(send(&mut c, 10, Message::Status {}, 50));
    // The reply is one frame a client can read.
    let mut wire = frame::encode(&reply, &[]);
    assert!(frame::decode(&mut wire).unwrap().is_some());
    let Message::StatusReply {
        failed,
        failed_total,
        queue_depth,
        pairs,
        ..
    } = reply
    else {
        panic!()
    };
    assert_eq!(failed_total, n as u64);
    assert_eq!(failed.len(), STATUS_FAILED_SHOWN);
    assert!(failed
        .iter()
        .all(|f| f.error.len() <= STATUS_ERROR_BYTES + '…'.len_utf8()));
    assert!(failed[0].error.ends_with('…'));
    assert_eq!(queue_depth, 0);
    let p = pairs.iter().find(|p| p.primary == "ss1").unwrap();
    assert_eq!(p.lag_jobs, n as u64);
}

#[test]
fn failed_attempts_back_off_then_fail_then_retry_when_the_target_returns() {
    let mut c = core();
    // Backoff runs for minutes of simulated time; heartbeats are not under test here.
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    let mut jobs = repl_jobs(&register(&mut c, 2, "ss1_backup", vec![]));
    let key = job_key("ss1_backup", "a.txt");
    let mut now = 10;
    for attempt in 1..=replication::MAX_ATTEMPTS {
        assert_eq!(jobs.len(), 1, "attempt {attempt}");
        c.on_job_result(jobs[0].0, Err(err::unavailable("refused")), now);
        let j = c.repl[&key].clone();
        assert_eq!(j.attempts, attempt);
        if attempt < replication::MAX_ATTEMPTS {
            assert_eq!(j.next_ms, now + replication::backoff_ms(attempt));
            // Not due before its time.
            c.tick(j.next_ms - 1);
            assert!(repl_jobs(&c.take_effects()).is_empty());
            now = j.next_ms;
            c.tick(now);
            jobs = repl_jobs(&c.take_effects());
        }
    }
    let j = c.repl[&key].clone();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.last_error.as_deref(), Some("refused"));
    c.tick(now + 100_000);
    assert!(repl_jobs(&c.take_effects()).is_empty());
    assert_eq!(c.next_repl_deadline_ms(), None);
    hello(&mut c, 10, "alice");
    let Message::StatusReply { failed, .. } = only_reply(send(&mut c, 10, Message::Status {}, now))
    else {
        panic!()
    };
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error, "refused");
    // The target comes back: the job is PENDING again and runs.
    c.on_close(2, now);
    let e = register(&mut c, 3, "ss1_backup", vec![]);
    let jobs = repl_jobs(&e);
    assert_eq!(jobs.len(), 1);
    assert_eq!(c.repl[&key].state, JobState::Pending);
    c.on_job_result(jobs[0].0, copied("a.txt", 1), now);
    assert!(c.repl.is_empty());
}

#[test]
fn a_joining_backup_is_reconciled_with_its_primary() {
    let mut c = core();
    register(
        &mut c,
        1,
        "ss1",
        vec![
            st("same.txt", 2, Some("alice")),
            st("stale.txt", 3, Some("alice")),
            st("missing.txt", 1, Some("alice")),
        ],
    );
    c.take_batch();
    let e = register(
        &mut c,
        2,
        "ss1_backup",
        vec![
            st("same.txt", 2, None),
            st("stale.txt", 2, None),
            st("stray.txt", 1, None),
        ],
    );
    let mut owed: Vec<(String, Want)> = c.repl.values().map(|j| (j.file.clone(), j.want)).collect();
    owed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        owed,
        vec![
            (
                "missing.txt".into(),
                Want::Content {
                    version: st("x", 1, None).version
                }
            ),
            (
                "stale.txt".into(),
                Want::Content {
                    version: st("x", 3, None).version
                }
            ),
            ("stray.txt".into(), Want::Delete),
        ]
    );
    assert_eq!(repl_jobs(&e).len(), 3);
    assert!(
        !c.files.contains_key("stray.txt"),
        "a backup's files are never adopted"
    );
    assert_eq!(
        c.files["same.txt"].backup_version,
        Some(st("x", 2, None).version)
    );
    hello(&mut c, 10, "alice");
    let info = |c: &mut Core, f: &str| {
        let Message::InfoReply { info } =
            only_reply(send(c, 10, Message::Info { file: f.into() }, 0))
        else {
            panic!()
        };
        info.replicas
            .iter()
            .map(|r| format!("{}:{}", r.ss, r.state))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(info(&mut c, "same.txt"), "ss1:current ss1_backup:current");
    assert_eq!(
        info(&mut c, "missing.txt"),
        "ss1:current ss1_backup:missing"
    );
    c.on_close(2, 5);
    assert_eq!(info(&mut c, "same.txt"), "ss1:current ss1_backup:down");
}

#[test]
fn sync_mode_answers_after_the_backup_or_degraded() {
    let mut c = sync_core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, None)]);
    c.take_effects();
    // CHANGED waits for the backup's copy.
    let e = send(
        &mut c,
        1,
        Message::Changed {
            staged: None,
            id: 5,
            state: st("a.txt", 2, None),
        },
        10,
    );
    assert!(e.iter().all(|x| !matches!(x, Effect::Reply { .. })));
    c.tick(10);
    let jobs = repl_jobs(&c.take_effects());
    c.on_job_result(jobs[0].0, copied("a.txt", 2), 20);
    assert_eq!(
        only_reply(c.take_effects()),
        Message::ChangedAck {
            id: 5,
            copies: None
        }
    );
    // A failed attempt answers degraded; the job stays owed.
    send(
        &mut c,
        1,
        Message::Changed {
            staged: None,
            id: 6,
            state: st("a.txt", 3, None),
        },
        30,
    );
    c.tick(30);
    let jobs = repl_jobs(&c.take_effects());
    c.on_job_result(jobs[0].0, Err(err::unavailable("disk full")), 40);
    assert_eq!(
        only_reply(c.take_effects()),
        Message::ChangedAck {
            id: 6,
            copies: Some(1)
        }
    );
    assert_eq!(c.repl.len(), 1);
    // A client's CREATE waits too, and is released degraded when the backup goes down.
    hello(&mut c, 10, "alice");
    let job = only_job(send(
        &mut c,
        10,
        Message::Create {
            file: "b.txt".into(),
        },
        50,
    ));
    c.on_job_result(job.id, Ok(JobOutput::State(st("b.txt", 1, None))), 60);
    assert!(c
        .take_effects()
        .iter()
        .all(|x| !matches!(x, Effect::Reply { .. })));
    assert!(c.is_busy(10));
    c.on_close(2, 70);
    assert_eq!(
        only_reply(c.take_effects()),
        Message::DoneDegraded {
            copies: 1,
            total: 2
        }
    );
    assert!(!c.is_busy(10));
    // With the backup down a DELETE is answered degraded at once; the delete is owed.
    let job = only_job(send(
        &mut c,
        10,
        Message::Delete {
            file: "b.txt".into(),
        },
        80,
    ));
    c.on_job_result(job.id, Ok(JobOutput::Done), 90);
    assert_eq!(
        only_reply(c.take_effects()),
        Message::DoneDegraded {
            copies: 1,
            total: 2
        }
    );
    assert_eq!(c.repl[&job_key("ss1_backup", "b.txt")].want, Want::Delete);
}

#[test]
fn a_slow_backup_gets_a_degraded_sync_answer_in_bounded_time() {
    let mut c = sync_core();
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, None)]);
    let e = send(
        &mut c,
        1,
        Message::Changed {
            staged: None,
            id: 9,
            state: st("a.txt", 2, None),
        },
        100,
    );
    assert!(e.iter().all(|x| !matches!(x, Effect::Reply { .. })));
    assert_eq!(c.next_deadline_ms(), Some(100), "the job is due now");
    c.tick(100);
    let jobs = repl_jobs(&c.take_effects());
    assert_eq!(jobs.len(), 1);
    assert_eq!(c.next_deadline_ms(), Some(100 + SYNC_WAIT_MS));
    c.tick(100 + SYNC_WAIT_MS);
    assert_eq!(
        only_reply(c.take_effects()),
        Message::ChangedAck {
            id: 9,
            copies: Some(1)
        }
    );
    // The copy still completes and clears the job.
    c.on_job_result(jobs[0].0, copied("a.txt", 2), 100 + SYNC_WAIT_MS + 1);
    assert!(c.repl.is_empty());
}

#[test]
fn upload_creates_a_missing_file_then_locates_it() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    register(&mut c, 2, "ss1_backup", vec![]);
    hello(&mut c, 10, "alice");
    hello(&mut c, 11, "bob");
    let up = |f: &str| Message::Locate {
        avoid: None,
        file: f.into(),
        mode: AccessMode::Upload,
    };
    let job = only_job(send(&mut c, 10, up("u.bin"), 5));
    c.on_job_result(job.id, Ok(JobOutput::State(st("u.bin", 1, None))), 6);
    let Message::Located { ss, ticket, .. } = only_reply(c.take_effects()) else {
        panic!()
    };
    assert_eq!((ss.as_str(), ticket.op), ("ss1", TicketOp::Upload));
    assert_eq!(c.files["u.bin"].owner, "alice");
    // Existing file: located at once; write access needed.
    assert!(matches!(
        only_reply(send(&mut c, 10, up("u.bin"), 7)),
        Message::Located { .. }
    ));
    assert_eq!(
        code(only_reply(send(&mut c, 11, up("u.bin"), 7))),
        ErrorCode::Unauthorized
    );
}

fn folder(c: &mut Core, conn: ConnId, f: &str) -> Message {
    only_reply(send(c, conn, Message::CreateFolder { folder: f.into() }, 5))
}

fn listing(c: &mut Core, conn: ConnId, f: &str) -> Result<Vec<(String, bool)>, ErrorCode> {
    match only_reply(send(c, conn, Message::ViewFolder { folder: f.into() }, 5)) {
        Message::FolderList { entries, more } => {
            assert!(!more);
            Ok(entries.into_iter().map(|e| (e.name, e.dir)).collect())
        }
        other => Err(code(other)),
    }
}

fn entry(name: &str, dir: bool) -> (String, bool) {
    (name.to_string(), dir)
}

#[test]
fn a_folder_cannot_take_the_name_of_a_file_being_created() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    hello(&mut c, 10, "alice");
    hello(&mut c, 11, "bob");
    let job = only_job(send(&mut c, 10, Message::Create { file: "x".into() }, 10));
    assert_eq!(code(folder(&mut c, 11, "/x")), ErrorCode::Locked);
    c.on_job_result(job.id, Ok(JobOutput::State(st("x", 1, None))), 20);
    assert_eq!(only_reply(c.take_effects()), Message::Done {});
    assert_eq!(code(folder(&mut c, 11, "/x")), ErrorCode::Conflict);
}

#[test]
fn folders_nest_need_their_parent_and_list_one_level() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    hello(&mut c, 10, "alice");
    assert_eq!(folder(&mut c, 10, "/d"), Message::Done {});
    assert_eq!(code(folder(&mut c, 10, "/d/")), ErrorCode::Conflict);
    assert_eq!(code(folder(&mut c, 10, "/x/y")), ErrorCode::NotFound);
    assert_eq!(code(folder(&mut c, 10, "/")), ErrorCode::Conflict);
    assert_eq!(code(folder(&mut c, 10, "/a/../b")), ErrorCode::Invalid);
    assert_eq!(folder(&mut c, 10, "/d/s"), Message::Done {});
    assert!(c
        .take_batch()
        .iter()
        .any(|op| matches!(op, StoreOp::PutFolder(f, r) if f == "d/s" && r.owner == "alice")));
    create(&mut c, 10, "/d/a.txt");
    create(&mut c, 10, "/d/s/deep.txt");
    create(&mut c, 10, "top.txt");
    // A file needs its folder; a folder and a file never share a name.
    let m = only_reply(send(
        &mut c,
        10,
        Message::Create {
            file: "/x/a".into(),
        },
        5,
    ));
    assert_eq!(code(m), ErrorCode::NotFound);
    let m = only_reply(send(
        &mut c,
        10,
        Message::Create {
            file: "/d/s".into(),
        },
        5,
    ));
    assert_eq!(code(m), ErrorCode::Conflict);
    assert_eq!(code(folder(&mut c, 10, "/d/a.txt")), ErrorCode::Conflict);
    assert_eq!(
        listing(&mut c, 10, "/d/"),
        Ok(vec![entry("s", true), entry("a.txt", false)])
    );
    assert_eq!(listing(&mut c, 10, "/d"), listing(&mut c, 10, "/d/"));
    assert_eq!(
        listing(&mut c, 10, "/"),
        Ok(vec![entry("d", true), entry("top.txt", false)])
    );
    assert_eq!(
        listing(&mut c, 10, "/d/s"),
        Ok(vec![entry("deep.txt", false)])
    );
    assert_eq!(folder(&mut c, 10, "/e"), Message::Done {});
    assert_eq!(listing(&mut c, 10, "/e"), Ok(vec![]));
    assert_eq!(listing(&mut c, 10, "/nope"), Err(ErrorCode::NotFound));
}

#[test]
fn adopted_files_bring_their_folders() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a/b/c.txt", 1, Some("bob"))]);
    hello(&mut c, 10, "alice");
    assert_eq!(listing(&mut c, 10, "/a"), Ok(vec![entry("b", true)]));
    assert_eq!(listing(&mut c, 10, "/a/b"), Ok(vec![entry("c.txt", false)]));
}

/// A pair ss1 / ss1_backup (heartbeats not under test) with alice's `a.txt` and a folder
/// `/d`, alice connected as 10.
fn pair_with_file_and_folder() -> Core {
    let mut c = core();
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    register_as(&mut c, 1, "ss1", None, vec![]);
    register_as(&mut c, 2, "ss1_backup", None, vec![]);
    hello(&mut c, 10, "alice");
    create(&mut c, 10, "a.txt");
    assert_eq!(folder(&mut c, 10, "/d"), Message::Done {});
    c
}

#[test]
fn a_move_whose_outcome_is_unknown_keeps_its_names_until_its_server_registers() {
    let mut c = pair_with_file_and_folder();
    let mv = Message::Move {
        file: "a.txt".into(),
        folder: "/d".into(),
    };
    let job = match &send(&mut c, 10, mv, 5)[..] {
        [Effect::DurableJob(j)] => j.clone(),
        other => panic!("expected one held job, got {other:?}"),
    };
    let version = c.files["a.txt"].version;
    c.take_batch();
    c.on_job_result(job.id, Ok(JobOutput::MoveUnsettled("lost".into())), 6);
    assert_eq!(code(only_reply(c.take_effects())), ErrorCode::Unavailable);
    assert!(c.moves.contains_key("a.txt"), "the intent stays");
    assert!(!c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
    assert!(c.busy_files.contains_key("a.txt") && c.busy_files.contains_key("d/a.txt"));
    // Both names stay reserved: a CREATE of the new name waits.
    let create_new = Message::Create {
        file: "/d/a.txt".into(),
    };
    assert!(send(&mut c, 10, create_new, 7).is_empty());
    // ss1 registers again holding the new name: the move is credited, the CREATE refused.
    c.on_close(1, 8);
    let mut moved = st("d/a.txt", version.counter, None);
    moved.version = version;
    let e = register_as(&mut c, 3, "ss1", None, vec![moved]);
    assert!(c.moves.is_empty());
    assert!(!c.files.contains_key("a.txt") && c.files.contains_key("d/a.txt"));
    let refused = e.iter().any(|x| {
        matches!(
            x,
            Effect::Reply {
                conn: 10,
                msg: Message::Err {
                    code: ErrorCode::Conflict,
                    ..
                },
                ..
            }
        )
    });
    assert!(refused, "{e:?}");
}

#[test]
fn an_unsettled_move_given_up_at_a_new_epoch_repairs_its_server() {
    // `backup_current`: whether the other member holds the record's version to repair
    // ss1's copies from.
    for backup_current in [true, false] {
        let mut c = pair_with_file_and_folder();
        let mut rec = c.files["a.txt"].clone();
        let v = rec.version;
        rec.set_held(Member::Backup, backup_current.then_some(v));
        c.put_file("a.txt", rec);
        let mv = Message::Move {
            file: "a.txt".into(),
            folder: "/d".into(),
        };
        let [Effect::DurableJob(job)] = &send(&mut c, 10, mv, 5)[..] else {
            panic!("expected one held job");
        };
        c.on_job_result(job.id, Ok(JobOutput::MoveUnsettled("lost".into())), 6);
        c.take_effects();
        // The pair takes a new epoch: the move is given up and both names are free.
        c.forget_moves_before("ss1", "ss1_backup", EPOCH + 1, 7);
        assert!(c.moves.is_empty() && c.busy_files.is_empty());
        assert!(c.files.contains_key("a.txt") && !c.files.contains_key("d/a.txt"));
        if backup_current {
            // ss1, which may have renamed the file, is owed the old name back and the
            // new name's removal.
            assert!(matches!(
                c.repl[&job_key("ss1", "a.txt")].want,
                Want::Content { .. }
            ));
            assert_eq!(c.repl[&job_key("ss1", "d/a.txt")].want, Want::Delete);
        } else {
            // ss1's copy may be the only one: nothing is set aside.
            assert!(c.files["a.txt"].holds(Member::Primary));
            assert!(!c.repl.contains_key(&job_key("ss1", "a.txt")));
        }
    }
}

#[test]
fn move_checks_rights_folder_and_name_then_follows_the_rename() {
    let mut c = core();
    register_as(&mut c, 1, "ss1", None, vec![]);
    register_as(&mut c, 2, "ss1_backup", None, vec![]);
    hello(&mut c, 10, "alice");
    hello(&mut c, 11, "bob");
    create(&mut c, 10, "a.txt");
    create(&mut c, 10, "b.txt");
    assert_eq!(folder(&mut c, 10, "/d"), Message::Done {});
    create(&mut c, 10, "/d/b.txt");
    let mv = |file: &str, folder: &str| Message::Move {
        file: file.into(),
        folder: folder.into(),
    };
    let add = Message::AddAccess {
        file: "a.txt".into(),
        user: "bob".into(),
        write: false,
    };
    only_reply(send(&mut c, 10, add, 5));
    for (user, file, to, want) in [
        (11, "a.txt", "/d", ErrorCode::Unauthorized),
        (10, "a.txt", "/nope", ErrorCode::NotFound),
        (10, "a.txt", "/", ErrorCode::Conflict),
        (10, "b.txt", "/d/", ErrorCode::Conflict),
        (10, "gone.txt", "/d", ErrorCode::NotFound),
    ] {
        let m = only_reply(send(&mut c, user, mv(file, to), 5));
        assert_eq!(code(m), want, "MOVE {file} {to}");
    }
    c.take_batch();
    // The call waits for the move's intent to be durable.
    let job = match &send(&mut c, 10, mv("a.txt", "/d/"), 5)[..] {
        [Effect::DurableJob(j)] => j.clone(),
        other => panic!("expected one job held for the store, got {other:?}"),
    };
    assert!(
        c.take_batch()
            .iter()
            .any(|op| matches!(op, StoreOp::PutMove(f, m) if f == "a.txt" && m.to == "d/a.txt")),
        "no intent written"
    );
    let JobKind::SsCall {
        msg: Message::SsMove {
            file, to, ticket, ..
        },
        ..
    } = &job.kind
    else {
        panic!("not an SS_MOVE: {job:?}");
    };
    assert_eq!((file.as_str(), to.as_str()), ("a.txt", "d/a.txt"));
    assert_eq!(ticket.file, names::move_subject("a.txt", "d/a.txt"));
    assert_eq!(ticket.op, TicketOp::Move);
    // The new name is taken while the move runs: a CREATE of it waits, then conflicts.
    assert!(send(
        &mut c,
        11,
        Message::Create {
            file: "/d/a.txt".into()
        },
        6
    )
    .is_empty());
    let before = c.files["a.txt"].clone();
    c.on_job_result(job.id, Ok(JobOutput::Done), 7);
    let e = c.take_effects();
    let replies: Vec<&Message> = e
        .iter()
        .filter_map(|x| match x {
            Effect::Reply { msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 2, "{e:?}");
    assert_eq!(replies[0], &Message::Done {});
    assert_eq!(code(replies[1].clone()), ErrorCode::Conflict);
    assert!(!c.files.contains_key("a.txt"));
    assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
    assert!(c.moves.is_empty());
    let after = &c.files["d/a.txt"];
    assert_eq!(
        (&after.owner, &after.access, after.version),
        (&before.owner, &before.access, before.version)
    );
    // The backup is owed the old name's removal and the file under its new name.
    assert_eq!(c.repl[&job_key("ss1_backup", "a.txt")].want, Want::Delete);
    assert_eq!(
        c.repl[&job_key("ss1_backup", "d/a.txt")].want,
        Want::Content {
            version: after.version
        }
    );
}

#[test]
fn a_move_left_unsettled_is_settled_by_what_its_server_registers_with() {
    let mut rec = FileRecord {
        owner: "alice".into(),
        ss: "ss1".into(),
        version: Version {
            epoch: EPOCH,
            counter: 3,
        },
        checksum: 3,
        size: 3,
        words: 1,
        chars: 3,
        created_ms: 1,
        modified_ms: 2,
        access: BTreeMap::from([("bob".to_string(), false)]),
        accessed_ms: None,
        accessed_by: None,
        primary_missing: false,
        backup_version: None,
        primary_held: None,
        epoch_base: None,
    };
    rec.held_only_by(Member::Primary, rec.version);
    let intent = MoveIntent {
        to: "d/a.txt".into(),
        ss: "ss1".into(),
        epoch: EPOCH,
        record: rec.clone(),
    };
    let restarted = || {
        let mut loaded = Loaded::default();
        loaded.files.insert("a.txt".into(), rec.clone());
        loaded.moves.insert("a.txt".into(), intent.clone());
        loaded.folders.insert(
            "d".into(),
            FolderRecord {
                owner: "alice".into(),
                created_ms: 1,
            },
        );
        let mut c = Core::new(core().cfg.clone(), ClusterKey::from_bytes(KEY), loaded);
        hello(&mut c, 10, "alice");
        c
    };
    let create_new_name = |c: &mut Core| {
        send(
            c,
            10,
            Message::Create {
                file: "/d/a.txt".into(),
            },
            5,
        )
    };
    // Renamed: the record moves whole, and the intent goes in the same batch.
    let mut c = restarted();
    assert!(
        create_new_name(&mut c).is_empty(),
        "the new name is reserved"
    );
    register(&mut c, 1, "ss1", vec![st("d/a.txt", 3, Some("alice"))]);
    assert!(!c.files.contains_key("a.txt"));
    assert_eq!(c.files["d/a.txt"].access, rec.access);
    assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
    assert!(c.moves.is_empty() && !c.busy_files.contains_key("a.txt"));
    // Not renamed: the record stays, both names are free.
    let mut c = restarted();
    register(&mut c, 1, "ss1", vec![st("a.txt", 3, Some("alice"))]);
    assert_eq!(c.files["a.txt"], rec);
    assert!(!c.files.contains_key("d/a.txt"));
    assert!(c.moves.is_empty() && c.busy_files.is_empty());
    assert!(!create_new_name(&mut c).is_empty(), "the new name is free");
    // Neither name: not credited; the record stays (its copy is owed from the backup).
    let mut c = restarted();
    register(&mut c, 1, "ss1", vec![]);
    assert!(c.moves.is_empty() && c.busy_files.is_empty());
    assert_eq!(c.files["a.txt"].access, rec.access);
    assert!(!c.files.contains_key("d/a.txt"));
    // The new name at an older version, or at the record's version with other bytes, is
    // not this move's rename: not credited.
    let mut other_bytes = st("d/a.txt", 3, Some("alice"));
    other_bytes.checksum ^= 1;
    for listed in [st("d/a.txt", 2, Some("alice")), other_bytes] {
        let mut c = restarted();
        register(&mut c, 1, "ss1", vec![listed]);
        assert!(c.moves.is_empty() && c.busy_files.is_empty());
        assert_eq!(c.files["a.txt"].access, rec.access);
    }
    // At a later version (a write the server committed before the move): credited.
    let mut c = restarted();
    register(&mut c, 1, "ss1", vec![st("d/a.txt", 9, Some("alice"))]);
    assert_eq!(c.files["d/a.txt"].access, rec.access);
    assert!(!c.files.contains_key("a.txt"));
    // The pair changes writers before ss1 is back (what `advance_pairs` reports at each
    // new epoch): forgotten, both names free, so the new writer serves the old name.
    let mut c = restarted();
    c.take_batch();
    c.forget_moves_before("ss1", "ss1_backup", EPOCH, 5);
    assert!(!c.moves.is_empty(), "the move's own epoch keeps it");
    c.forget_moves_before("ss1", "ss1_backup", EPOCH + 1, 5);
    assert!(c.moves.is_empty() && c.busy_files.is_empty());
    assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
    assert!(
        !create_new_name(&mut c).is_empty(),
        "the new name is free again"
    );
}

#[test]
fn checkpoint_and_revert_need_write_access_and_a_valid_tag() {
    let mut c = core();
    register_as(&mut c, 1, "ss1", None, vec![]);
    register_as(&mut c, 2, "ss1_backup", None, vec![]);
    hello(&mut c, 10, "alice");
    hello(&mut c, 11, "bob");
    create(&mut c, 10, "a.txt");
    let add = Message::AddAccess {
        file: "a.txt".into(),
        user: "bob".into(),
        write: false,
    };
    only_reply(send(&mut c, 10, add, 5));
    let cp = |tag: &str| Message::Checkpoint {
        file: "a.txt".into(),
        tag: tag.into(),
    };
    let rv = |tag: &str| Message::Revert {
        file: "a.txt".into(),
        tag: tag.into(),
    };
    assert_eq!(
        code(only_reply(send(&mut c, 11, cp("v1"), 5))),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        code(only_reply(send(&mut c, 11, rv("v1"), 5))),
        ErrorCode::Unauthorized
    );
    for bad in ["a b", "", "x/y", &"t".repeat(65)] {
        assert_eq!(
            code(only_reply(send(&mut c, 10, cp(bad), 5))),
            ErrorCode::Invalid
        );
    }
    let job = only_job(send(&mut c, 10, cp("v1"), 5));
    assert!(matches!(
        &job.kind,
        JobKind::SsCall { msg: Message::SsCheckpoint { tag, creator, .. }, .. }
            if tag == "v1" && creator == "alice"
    ));
    c.on_job_result(job.id, Ok(JobOutput::State(st("a.txt", 2, None))), 8);
    assert_eq!(only_reply(c.take_effects()), Message::Done {});
    let v = c.files["a.txt"].version;
    assert_eq!(v.counter, 2);
    // The checkpoint is a new version: the ordinary content job carries it.
    assert_eq!(
        c.repl[&job_key("ss1_backup", "a.txt")].want,
        Want::Content { version: v }
    );
    let job = only_job(send(&mut c, 10, rv("v1"), 9));
    assert!(matches!(
        &job.kind,
        JobKind::SsCall { msg: Message::SsRevert { tag, .. }, .. } if tag == "v1"
    ));
    c.on_job_result(job.id, Ok(JobOutput::State(st("a.txt", 3, None))), 10);
    assert_eq!(only_reply(c.take_effects()), Message::Done {});
    // REVERT changes content only: bob keeps exactly his read access.
    assert_eq!(c.files["a.txt"].access.get("bob"), Some(&false));
}

#[test]
fn access_requests_grant_exactly_what_was_asked_and_ids_never_repeat() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    hello(&mut c, 10, "alice");
    hello(&mut c, 11, "bob");
    hello(&mut c, 12, "carol");
    hello(&mut c, 13, "dave");
    create(&mut c, 10, "a.txt");
    let racc = |kind| Message::RequestAccess {
        file: "a.txt".into(),
        kind,
    };
    let answer = |id, approve| Message::AnswerRequest { id, approve };
    use crate::protocol::AccessKind;
    assert_eq!(
        only_reply(send(&mut c, 11, racc(AccessKind::R), 5)),
        Message::RequestCreated { id: 1 }
    );
    assert_eq!(
        code(only_reply(send(&mut c, 11, racc(AccessKind::RW), 5))),
        ErrorCode::Conflict,
        "a second pending request of the same user"
    );
    assert_eq!(
        code(only_reply(send(&mut c, 10, racc(AccessKind::R), 5))),
        ErrorCode::Invalid,
        "the owner cannot request"
    );
    let m = only_reply(send(
        &mut c,
        12,
        Message::RequestAccess {
            file: "nope".into(),
            kind: AccessKind::R,
        },
        5,
    ));
    assert_eq!(code(m), ErrorCode::NotFound);
    assert_eq!(
        only_reply(send(&mut c, 12, racc(AccessKind::W), 6)),
        Message::RequestCreated { id: 2 }
    );
    assert_eq!(
        only_reply(send(&mut c, 13, racc(AccessKind::RW), 6)),
        Message::RequestCreated { id: 3 }
    );
    let pending = |c: &mut Core, conn| match only_reply(send(c, conn, Message::ViewRequests {}, 7))
    {
        Message::Requests { requests, .. } => requests
            .into_iter()
            .map(|r| (r.id, r.user, r.kind))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert!(pending(&mut c, 11).is_empty(), "bob owns nothing");
    assert_eq!(
        pending(&mut c, 10),
        vec![
            (1, "bob".to_string(), AccessKind::R),
            (2, "carol".to_string(), AccessKind::W),
            (3, "dave".to_string(), AccessKind::RW),
        ]
    );
    assert_eq!(
        code(only_reply(send(&mut c, 11, answer(1, true), 8))),
        ErrorCode::Unauthorized
    );
    for id in [1, 2] {
        assert_eq!(
            only_reply(send(&mut c, 10, answer(id, true), 8)),
            Message::Done {}
        );
    }
    assert_eq!(
        only_reply(send(&mut c, 10, answer(3, false), 8)),
        Message::Done {}
    );
    let access = &c.files["a.txt"].access;
    assert_eq!(access.get("bob"), Some(&false), "R grants read only");
    assert_eq!(access.get("carol"), Some(&true), "W grants read and write");
    assert_eq!(access.get("dave"), None, "a refused request grants nothing");
    assert_eq!(
        code(only_reply(send(&mut c, 10, answer(1, true), 8))),
        ErrorCode::NotFound,
        "an answered request is gone"
    );
    assert_eq!(
        code(only_reply(send(&mut c, 11, racc(AccessKind::R), 9))),
        ErrorCode::Conflict,
        "bob already has read access"
    );
    assert_eq!(
        only_reply(send(&mut c, 11, racc(AccessKind::RW), 9)),
        Message::RequestCreated { id: 4 }
    );
    assert!(c.take_batch().contains(&StoreOp::PutNextRequest(5)));
    // A restarted core continues the counter from what was stored.
    let loaded = Loaded {
        requests: c.requests.clone(),
        next_request: 5,
        ..Loaded::default()
    };
    let mut c2 = Core::new(c.cfg.clone(), ClusterKey::from_bytes(KEY), loaded);
    assert_eq!(c2.next_request, 5);
    c2.drop_requests_for("a.txt");
    assert!(c2.requests.is_empty());
}
