//! Tests of client requests, placement, rights and LOCATE (`core/namespace.rs`).

use super::*;

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
    assert_eq!(c.ns.files["u.bin"].owner, "alice");
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
