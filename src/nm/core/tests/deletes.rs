//! DELETE's durable intent and its settlement at registration; versions of a name deleted
//! and created again.

use super::*;

fn record(counter: u64) -> FileRecord {
    let mut rec = FileRecord {
        unconfirmed: None,
        owner: "alice".into(),
        ss: "ss1".into(),
        version: Version {
            epoch: EPOCH,
            counter,
        },
        checksum: counter as u32,
        size: counter,
        words: 1,
        chars: counter,
        created_ms: 1,
        modified_ms: 2,
        access: BTreeMap::new(),
        accessed_ms: None,
        accessed_by: None,
        primary_missing: false,
        backup_version: None,
        primary_held: None,
        epoch_base: None,
    };
    rec.held_only_by(Member::Primary, rec.version);
    rec
}

fn intent(counter: u64) -> DeleteIntent {
    DeleteIntent {
        ss: "ss1".into(),
        epoch: EPOCH,
        version: Version {
            epoch: EPOCH,
            counter,
        },
        checksum: counter as u32,
    }
}

/// A name server restarted from a store holding `rec` as `a.txt` of pair ss1 / ss1_backup
/// and the intent of a DELETE of it sent to ss1 (the batch removing the record was lost).
fn restarted(rec: FileRecord, state: Option<PairRecord>) -> Core {
    let mut loaded = Loaded::default();
    loaded.files.insert("a.txt".into(), rec);
    loaded.deletes.insert("a.txt".into(), intent(3));
    loaded.pairs.insert("ss1".into(), "ss1_backup".into());
    if let Some(st) = state {
        loaded.pair_states.insert("ss1".into(), st);
    }
    let mut c = Core::new(core().cfg.clone(), ClusterKey::from_bytes(KEY), loaded);
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    c
}

#[test]
fn a_delete_is_sent_only_once_its_intent_is_durable_and_settled_in_one_batch() {
    let mut c = pair_with_file_and_folder();
    c.take_batch();
    let job = match &send(
        &mut c,
        10,
        Message::Delete {
            file: "a.txt".into(),
        },
        5,
    )[..]
    {
        [Effect::DurableJob(j)] => j.clone(),
        other => panic!("expected one job held for the store, got {other:?}"),
    };
    let rec = c.ns.files["a.txt"].clone();
    assert!(c.take_batch().contains(&StoreOp::PutDelete(
        "a.txt".into(),
        DeleteIntent {
            ss: "ss1".into(),
            epoch: EPOCH,
            version: rec.version,
            checksum: rec.checksum,
        }
    )));
    c.on_job_result(job.id, Ok(JobOutput::Done), 6);
    let batch = c.take_batch();
    assert!(batch.contains(&StoreOp::DelFile("a.txt".into())));
    assert!(batch.contains(&StoreOp::DelDelete("a.txt".into())));
    assert!(c.ns.deletes.is_empty());
    c.take_effects();
    // A refusal leaves the file and drops the intent.
    create(&mut c, 10, "b.txt");
    let job = only_job(send(
        &mut c,
        10,
        Message::Delete {
            file: "b.txt".into(),
        },
        7,
    ));
    c.on_job_result(job.id, Err(err::locked("a write session is open")), 8);
    assert!(c.ns.files.contains_key("b.txt"));
    assert!(c.ns.deletes.is_empty());
    assert!(c.take_batch().contains(&StoreOp::DelDelete("b.txt".into())));
}

#[test]
fn a_delete_without_an_answer_keeps_its_intent_until_its_server_registers() {
    let mut c = pair_with_file_and_folder();
    c.take_batch();
    let job = only_job(send(
        &mut c,
        10,
        Message::Delete {
            file: "a.txt".into(),
        },
        5,
    ));
    // The connection broke after SS_DELETE went out: the server may have removed the file.
    c.on_job_result(job.id, Err(err::unavailable("connection reset")), 6);
    assert!(c.ns.files.contains_key("a.txt"));
    assert!(c.ns.deletes.contains_key("a.txt"), "the intent stays");
    assert!(!c.take_batch().contains(&StoreOp::DelDelete("a.txt".into())));
    // Its link drops and it registers again without the file: the delete it made is credited.
    c.on_close(1, 7);
    c.take_effects();
    register_as(&mut c, 21, "ss1", None, vec![]);
    assert!(
        !c.ns.files.contains_key("a.txt"),
        "the record follows the delete"
    );
    assert!(c.ns.deletes.is_empty());
    let batch = c.take_batch();
    assert!(batch.contains(&StoreOp::DelFile("a.txt".into())));
    assert!(batch.contains(&StoreOp::DelDelete("a.txt".into())));
}

#[test]
fn a_delete_left_unsettled_is_settled_by_what_its_server_registers_with() {
    // Gone from the server: the delete completes, the backup is owed the removal.
    let mut c = restarted(record(3), None);
    register_as(&mut c, 2, "ss1_backup", None, vec![st("a.txt", 2, None)]);
    register_as(&mut c, 1, "ss1", None, vec![]);
    assert!(
        !c.ns.files.contains_key("a.txt"),
        "the record follows the delete"
    );
    assert!(c.ns.deletes.is_empty());
    assert_eq!(
        c.q.table()[&job_key("ss1_backup", "a.txt")].want,
        Want::Delete
    );
    let batch = c.take_batch();
    assert!(batch.contains(&StoreOp::DelFile("a.txt".into())));
    assert!(batch.contains(&StoreOp::DelDelete("a.txt".into())));
    // A CREATE of the name again starts above the deleted file's versions.
    hello(&mut c, 10, "alice");
    let job = only_job(send(
        &mut c,
        10,
        Message::Create {
            file: "a.txt".into(),
        },
        10,
    ));
    assert!(matches!(
        job.kind,
        JobKind::SsCall {
            msg: Message::SsCreate {
                counter: Some(4),
                ..
            },
            ..
        }
    ));

    // Still there: the delete did not happen; the record stays as it was.
    let mut c = restarted(record(3), None);
    register_as(&mut c, 1, "ss1", None, vec![st("a.txt", 3, Some("alice"))]);
    assert_eq!(c.ns.files["a.txt"], record(3));
    assert!(c.ns.deletes.is_empty());

    // The record moved on since the intent (not the file the delete was asked for): the
    // missing copy is not taken for a delete.
    let mut c = restarted(record(4), None);
    register_as(&mut c, 1, "ss1", None, vec![]);
    assert!(c.ns.files.contains_key("a.txt"));
    assert!(c.ns.deletes.is_empty());

    // The pair changed writers since, and the backup holds the record's version: a removal
    // made in the ended epoch is not credited; ss1 is owed the file again.
    let mut rec = record(3);
    rec.backup_version = Some(rec.version);
    let mut moved = PairRecord::new();
    moved.epoch = EPOCH + 1;
    moved.writer = Member::Backup;
    let mut c = restarted(rec.clone(), Some(moved.clone()));
    register_as(&mut c, 2, "ss1_backup", None, vec![st("a.txt", 3, None)]);
    register_as(&mut c, 1, "ss1", None, vec![]);
    assert!(c.ns.files.contains_key("a.txt"));
    assert!(c.ns.deletes.is_empty());
    assert!(c.q.table().contains_key(&job_key("ss1", "a.txt")));

    // The pair changed writers but no other copy holds the record: nothing could have
    // changed the file since, so the removal stands.
    let mut c = restarted(record(3), Some(moved));
    register_as(&mut c, 1, "ss1", None, vec![]);
    assert!(!c.ns.files.contains_key("a.txt"));
}

#[test]
fn a_name_deleted_and_created_again_never_reuses_a_version_even_across_a_restart() {
    let mut c = pair_with_file_and_folder();
    // a.txt reaches 1.5 on the primary.
    let changed = Message::Changed {
        id: 1,
        state: st("a.txt", 5, None),
        staged: None,
        pending: false,
    };
    let _ = send(&mut c, 1, changed, 3);
    assert_eq!(c.ns.files["a.txt"].version.counter, 5);
    let job = only_job(send(
        &mut c,
        10,
        Message::Delete {
            file: "a.txt".into(),
        },
        5,
    ));
    c.on_job_result(job.id, Ok(JobOutput::Done), 6);
    c.take_effects();
    let counter_of = |e: Vec<Effect>| match only_job(e).kind {
        JobKind::SsCall {
            msg: Message::SsCreate { counter, .. },
            ..
        } => counter,
        other => panic!("not an SS_CREATE: {other:?}"),
    };
    let create_again = |c: &mut Core| {
        send(
            c,
            10,
            Message::Create {
                file: "a.txt".into(),
            },
            7,
        )
    };
    assert_eq!(counter_of(create_again(&mut c)), Some(6));
    // The floor is durable: a name server restarted from what was committed starts there too.
    let mut loaded = Loaded::default();
    for op in c.take_batch() {
        loaded.apply(op);
    }
    let mut c = Core::new(core().cfg.clone(), ClusterKey::from_bytes(KEY), loaded);
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    register_as(&mut c, 1, "ss1", None, vec![]);
    register_as(&mut c, 2, "ss1_backup", None, vec![]);
    hello(&mut c, 10, "alice");
    assert_eq!(counter_of(create_again(&mut c)), Some(6));
    // Another file of the pair created in the same epoch starts above it too; a new epoch
    // starts afresh.
    let mut st = c.pairs.get("ss1").unwrap().clone();
    st.epoch += 1;
    c.pairs.put("ss1", st, &mut Vec::new());
    let e = send(
        &mut c,
        10,
        Message::Create {
            file: "b.txt".into(),
        },
        8,
    );
    assert_eq!(counter_of(e), None);
}
