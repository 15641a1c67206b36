//! Tests of folders and MOVE (`core/folders.rs`).

use super::*;

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
    let version = c.ns.files["a.txt"].version;
    c.take_batch();
    c.on_job_result(job.id, Ok(JobOutput::MoveUnsettled("lost".into())), 6);
    assert_eq!(code(only_reply(c.take_effects())), ErrorCode::Unavailable);
    assert!(c.ns.moves.contains_key("a.txt"), "the intent stays");
    assert!(!c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
    assert!(c.ops.is_busy("a.txt") && c.ops.is_busy("d/a.txt"));
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
    assert!(c.ns.moves.is_empty());
    assert!(!c.ns.files.contains_key("a.txt") && c.ns.files.contains_key("d/a.txt"));
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
        let mut rec = c.ns.files["a.txt"].clone();
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
        assert!(c.ns.moves.is_empty() && c.ops.none_busy());
        assert!(c.ns.files.contains_key("a.txt") && !c.ns.files.contains_key("d/a.txt"));
        if backup_current {
            // ss1, which may have renamed the file, is owed the old name back and the
            // new name's removal.
            assert!(matches!(
                c.q.table()[&job_key("ss1", "a.txt")].want,
                Want::Content { .. }
            ));
            assert_eq!(c.q.table()[&job_key("ss1", "d/a.txt")].want, Want::Delete);
        } else {
            // ss1's copy may be the only one: nothing is set aside.
            assert!(c.ns.files["a.txt"].holds(Member::Primary));
            assert!(!c.q.table().contains_key(&job_key("ss1", "a.txt")));
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
    let before = c.ns.files["a.txt"].clone();
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
    assert!(!c.ns.files.contains_key("a.txt"));
    assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
    assert!(c.ns.moves.is_empty());
    let after = &c.ns.files["d/a.txt"];
    assert_eq!(
        (&after.owner, &after.access, after.version),
        (&before.owner, &before.access, before.version)
    );
    // The backup is owed the old name's removal and the file under its new name.
    assert_eq!(
        c.q.table()[&job_key("ss1_backup", "a.txt")].want,
        Want::Delete
    );
    assert_eq!(
        c.q.table()[&job_key("ss1_backup", "d/a.txt")].want,
        Want::Content {
            version: after.version
        }
    );
}

#[test]
fn a_move_left_unsettled_is_settled_by_what_its_server_registers_with() {
    let mut rec = FileRecord {
        unconfirmed: None,
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
    assert!(!c.ns.files.contains_key("a.txt"));
    assert_eq!(c.ns.files["d/a.txt"].access, rec.access);
    assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
    assert!(c.ns.moves.is_empty() && !c.ops.is_busy("a.txt"));
    // Not renamed: the record stays, both names are free.
    let mut c = restarted();
    register(&mut c, 1, "ss1", vec![st("a.txt", 3, Some("alice"))]);
    assert_eq!(c.ns.files["a.txt"], rec);
    assert!(!c.ns.files.contains_key("d/a.txt"));
    assert!(c.ns.moves.is_empty() && c.ops.none_busy());
    assert!(!create_new_name(&mut c).is_empty(), "the new name is free");
    // Neither name: not credited; the record stays (its copy is owed from the backup).
    let mut c = restarted();
    register(&mut c, 1, "ss1", vec![]);
    assert!(c.ns.moves.is_empty() && c.ops.none_busy());
    assert_eq!(c.ns.files["a.txt"].access, rec.access);
    assert!(!c.ns.files.contains_key("d/a.txt"));
    // The new name at an older version, or at the record's version with other bytes, is
    // not this move's rename: not credited.
    let mut other_bytes = st("d/a.txt", 3, Some("alice"));
    other_bytes.checksum ^= 1;
    for listed in [st("d/a.txt", 2, Some("alice")), other_bytes] {
        let mut c = restarted();
        register(&mut c, 1, "ss1", vec![listed]);
        assert!(c.ns.moves.is_empty() && c.ops.none_busy());
        assert_eq!(c.ns.files["a.txt"].access, rec.access);
    }
    // At a later version (a write the server committed before the move): credited.
    let mut c = restarted();
    register(&mut c, 1, "ss1", vec![st("d/a.txt", 9, Some("alice"))]);
    assert_eq!(c.ns.files["d/a.txt"].access, rec.access);
    assert!(!c.ns.files.contains_key("a.txt"));
    // The pair changes writers before ss1 is back (what `advance_pairs` reports at each
    // new epoch): forgotten, both names free, so the new writer serves the old name.
    let mut c = restarted();
    c.take_batch();
    c.forget_moves_before("ss1", "ss1_backup", EPOCH, 5);
    assert!(!c.ns.moves.is_empty(), "the move's own epoch keeps it");
    c.forget_moves_before("ss1", "ss1_backup", EPOCH + 1, 5);
    assert!(c.ns.moves.is_empty() && c.ops.none_busy());
    assert!(c.take_batch().contains(&StoreOp::DelMove("a.txt".into())));
    assert!(
        !create_new_name(&mut c).is_empty(),
        "the new name is free again"
    );
}
