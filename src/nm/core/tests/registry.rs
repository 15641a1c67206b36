//! Tests of registration, pairing and storage-server reports (`core/registry.rs`).

use super::*;

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
    assert_eq!(c.ns.files["keep.txt"].version.counter, 5);
    // A file the server no longer lists is kept, marked missing, never deleted.
    assert!(c.ns.files["gone.txt"].primary_missing);
    assert_eq!(c.ns.files["gone.txt"].owner, "alice");
    assert_eq!(c.ns.files["new.txt"].owner, ADOPTED_OWNER);
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
    assert_eq!(c.ns.files["keep.txt"].version.counter, 5);
    // The missing record still counts as placed on ss1.
    assert_eq!(c.reg.server("ss1").unwrap().files, 3);
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
    assert!(!c.ns.files["gone.txt"].primary_missing);
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
fn changed_and_removed_update_the_record() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    let e = send(
        &mut c,
        1,
        Message::Changed {
            staged: None,
            pending: false,
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
    assert_eq!(c.ns.files["a.txt"].version.counter, 2);
    assert_eq!(c.ns.files["a.txt"].owner, "alice");
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
    assert!(c.ns.files.is_empty());
    let e = send(
        &mut c,
        1,
        Message::Heartbeat {
            seq: 3,
            writer: false,
            disk: None,
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
    assert_eq!(c.reg.backup_of("ss1"), Some("ss1_backup"));
    // Primary first, backup by flag.
    let mut c = core();
    register(&mut c, 1, "alpha", vec![]);
    let e = register_as(&mut c, 2, "beta", Some("alpha"), vec![]);
    assert!(matches!(
        only_reply(e),
        Message::Registered { backup: true, .. }
    ));
    assert_eq!(c.reg.backup_of("alpha"), Some("beta"));
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

/// The CHANGED of a commit that preceded a DELETE can arrive after the DELETE was recorded
/// (the report and SS_DELETE travel on different connections): it must not bring the file
/// back. A name no removal touched is still adopted when a CHANGED reports it.
#[test]
fn a_change_reported_after_its_file_was_deleted_brings_nothing_back() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    hello(&mut c, 10, "alice");
    let job = only_job(send(
        &mut c,
        10,
        Message::Delete {
            file: "a.txt".into(),
        },
        10,
    ));
    c.on_job_result(job.id, Ok(JobOutput::Done), 20);
    assert_eq!(only_reply(c.take_effects()), Message::Done {});
    assert!(!c.ns.files.contains_key("a.txt"));
    let late = Message::Changed {
        staged: None,
        pending: false,
        id: 7,
        state: st("a.txt", 2, Some("alice")),
    };
    assert_eq!(
        only_reply(send(&mut c, 1, late.clone(), 30)),
        Message::ChangedAck {
            id: 7,
            copies: None
        },
        "the commit preceded the delete, so it is acknowledged"
    );
    assert!(
        !c.ns.files.contains_key("a.txt"),
        "a late report does not recreate a deleted file"
    );
    let other = Message::Changed {
        staged: None,
        pending: false,
        id: 8,
        state: st("b.txt", 1, Some("alice")),
    };
    send(&mut c, 1, other, 40);
    assert!(
        c.ns.files.contains_key("b.txt"),
        "a file no removal touched is still adopted"
    );
    // A new link starts with nothing remembered: what it reports is adopted as before.
    c.on_close(1, 50);
    register(&mut c, 2, "ss1", vec![st("b.txt", 1, Some("alice"))]);
    send(&mut c, 2, late, 60);
    assert!(c.ns.files.contains_key("a.txt"));
}

/// A CHANGED of `a.txt` at `counter`, reported before (`pending`) or after its flush.
fn changed(id: u64, counter: u64, pending: bool) -> Message {
    Message::Changed {
        staged: None,
        pending,
        id,
        state: st("a.txt", counter, None),
    }
}

#[test]
fn a_change_reported_before_its_flush_is_rolled_back_when_its_writer_returns_without_it() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, Some("alice"))]);
    c.take_batch();
    let e = send(&mut c, 1, changed(7, 2, true), 5);
    assert!(e.iter().any(|x| matches!(
        x,
        Effect::Reply {
            msg: Message::ChangedAck { id: 7, .. },
            ..
        }
    )));
    // It counts as the current version, and the record says it is unconfirmed, durably.
    let rec = &c.ns.files["a.txt"];
    assert_eq!(rec.version.counter, 2);
    let u = rec.unconfirmed.as_ref().expect("unconfirmed");
    assert_eq!((u.member, u.prior.version.counter), (Member::Primary, 1));
    assert!(c
        .take_batch()
        .iter()
        .any(|o| matches!(o, StoreOp::PutFile(f, r) if f == "a.txt" && r.unconfirmed.is_some())));
    assert!(c.q.get(&job_key("ss1_backup", "a.txt")).is_some());
    // The writer loses power before the flush and comes back holding version 1: the change
    // was never made; nothing is quarantined and the backup, at version 1, is owed nothing.
    c.on_close(1, 10);
    register(&mut c, 3, "ss1", vec![st("a.txt", 1, None)]);
    let rec = &c.ns.files["a.txt"];
    assert_eq!((rec.version.counter, rec.checksum, rec.size), (1, 1, 1));
    assert!(rec.unconfirmed.is_none());
    assert!(rec.holds(Member::Primary) && rec.holds(Member::Backup));
    assert!(c.q.table().is_empty(), "{:?}", c.q.table());
    assert_eq!(rec.owner, "alice");
}

#[test]
fn a_change_reported_before_its_flush_is_confirmed_by_its_writer_listing_it_a_copy_or_a_later_change(
) {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, Some("alice"))]);
    // The writer comes back holding it (a crash after the flush, or the journal redone).
    send(&mut c, 1, changed(7, 2, true), 5);
    c.on_close(1, 10);
    register(&mut c, 3, "ss1", vec![st("a.txt", 2, None)]);
    let rec = &c.ns.files["a.txt"];
    assert_eq!(rec.version.counter, 2);
    assert!(rec.unconfirmed.is_none());
    // The backup installs a copy of it: the writer served it, so it was durable.
    send(&mut c, 3, changed(8, 3, true), 20);
    assert!(c.ns.files["a.txt"].unconfirmed.is_some());
    c.tick(50);
    let jobs = repl_jobs(&c.take_effects());
    let (id, _) = jobs
        .iter()
        .find(|(_, t)| t.target.0 == "ss1_backup")
        .expect("a copy to the backup");
    c.on_job_result(*id, copied("a.txt", 3), 60);
    assert!(c.ns.files["a.txt"].unconfirmed.is_none());
    // A later report of the writer implies the one before was flushed: only the last can be
    // rolled back, to the version before it, not further.
    send(&mut c, 3, changed(9, 4, true), 70);
    send(&mut c, 3, changed(10, 5, true), 80);
    let u = c.ns.files["a.txt"]
        .unconfirmed
        .clone()
        .expect("unconfirmed");
    assert_eq!(u.prior.version.counter, 4);
    c.on_close(3, 90);
    register(&mut c, 4, "ss1", vec![st("a.txt", 4, None)]);
    let rec = &c.ns.files["a.txt"];
    assert_eq!(rec.version.counter, 4);
    assert!(rec.unconfirmed.is_none());
    // The backup holds 3: it is owed 4.
    let job = c.q.get(&job_key("ss1_backup", "a.txt")).expect("owed");
    assert_eq!(
        job.want,
        Want::Content {
            version: st("a.txt", 4, None).version
        }
    );
    // A report after the flush is confirmed at once; a listing that is neither the version
    // nor the one before it rolls nothing back.
    send(&mut c, 4, changed(11, 6, false), 100);
    assert!(c.ns.files["a.txt"].unconfirmed.is_none());
    send(&mut c, 4, changed(12, 7, true), 110);
    c.on_close(4, 120);
    register(&mut c, 5, "ss1", vec![st("a.txt", 5, None)]);
    assert_eq!(c.ns.files["a.txt"].version.counter, 7);
}

#[test]
fn a_pending_report_of_a_file_the_index_does_not_hold_adopts_nothing() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    let e = send(&mut c, 1, changed(7, 2, true), 5);
    assert!(matches!(only_reply(e), Message::ChangedAck { id: 7, .. }));
    assert!(c.ns.files.is_empty());
}

#[test]
fn an_unpaired_writer_back_without_its_pending_change_is_rolled_back_and_one_back_with_it_confirms_it(
) {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    send(&mut c, 1, changed(7, 2, true), 5);
    assert!(c.ns.files["a.txt"].unconfirmed.is_some());
    // Power lost before the flush.
    c.on_close(1, 10);
    register(&mut c, 2, "ss1", vec![st("a.txt", 1, None)]);
    let rec = &c.ns.files["a.txt"];
    assert_eq!((rec.version.counter, rec.checksum), (1, 1));
    assert!(rec.unconfirmed.is_none() && !rec.primary_missing);
    // Flushed before the crash: confirmed.
    send(&mut c, 2, changed(8, 2, true), 20);
    c.on_close(2, 30);
    register(&mut c, 3, "ss1", vec![st("a.txt", 2, None)]);
    let rec = &c.ns.files["a.txt"];
    assert_eq!(rec.version.counter, 2);
    assert!(rec.unconfirmed.is_none());
}
