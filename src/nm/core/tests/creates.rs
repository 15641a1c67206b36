//! CREATE's record written ahead with its intent, and the intent's settlement at
//! registration (`core/creates.rs`).

use super::*;

/// A pair ss1 / ss1_backup, alice in session 10, and the SS_CREATE of `a.txt` sent; the
/// batch shipped with it taken.
fn create_sent() -> (Core, Job, Vec<StoreOp>) {
    let mut c = core();
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    register_as(&mut c, 1, "ss1", None, vec![]);
    register_as(&mut c, 2, "ss1_backup", None, vec![]);
    hello(&mut c, 10, "alice");
    c.take_batch();
    let e = send(
        &mut c,
        10,
        Message::Create {
            file: "a.txt".into(),
        },
        10,
    );
    let job = match &e[..] {
        [Effect::Job(j)] => j.clone(),
        other => panic!("expected the call sent at once, got {other:?}"),
    };
    let ahead = c.take_batch();
    (c, job, ahead)
}

/// What ss1 answers a create of `a.txt` with: empty, at the first version.
fn empty_state() -> FileState {
    FileState {
        file: "a.txt".into(),
        version: Version {
            epoch: EPOCH,
            counter: 1,
        },
        checksum: crc32c::crc32c(b""),
        size: 0,
        words: 0,
        chars: 0,
        modified_ms: 77,
        owner: Some("alice".into()),
    }
}

#[test]
fn a_create_commits_its_record_while_the_server_creates_and_answers_without_another_commit() {
    let (mut c, job, ahead) = create_sent();
    let written = ahead.iter().find_map(|op| match op {
        StoreOp::PutFile(f, rec) if f == "a.txt" => Some(rec.clone()),
        _ => None,
    });
    let written = written.expect("the record is written ahead");
    assert_eq!(written.owner, "alice");
    assert_eq!(written.version, empty_state().version);
    assert!(ahead.contains(&StoreOp::PutCreate(
        "a.txt".into(),
        CreateIntent {
            ss: "ss1".into(),
            epoch: EPOCH,
            version: empty_state().version,
            owner: "alice".into(),
            created_ms: written.created_ms,
        }
    )));
    assert!(
        !c.ns.files.contains_key("a.txt"),
        "nobody is sent to the file before the server made it"
    );
    c.on_job_result(job.id, Ok(JobOutput::State(empty_state())), 11);
    assert_eq!(only_reply(c.take_effects()), Message::Done {});
    assert_eq!(c.ns.files["a.txt"].modified_ms, 77);
    assert!(
        c.take_batch().is_empty(),
        "the answer's bookkeeping waits for the next batch"
    );
    // It rides on the next change, in order before it.
    create(&mut c, 10, "b.txt");
    let batch = c.take_batch();
    let pos = |want: &StoreOp| batch.iter().position(|op| op == want);
    let intent_gone = pos(&StoreOp::DelCreate("a.txt".into())).expect("a.txt's intent goes");
    assert!(batch.iter().any(
        |op| matches!(op, StoreOp::PutJob(j) if j.file == "a.txt" && j.target == "ss1_backup")
    ));
    let b_written = batch
        .iter()
        .position(|op| matches!(op, StoreOp::PutFile(f, _) if f == "b.txt"))
        .expect("b.txt's record");
    assert!(intent_gone < b_written);
    assert!(c.ns.creates.is_empty());
}

#[test]
fn waiting_bookkeeping_is_shipped_alone_within_the_access_time_bound() {
    let (mut c, job, _) = create_sent();
    c.on_job_result(job.id, Ok(JobOutput::State(empty_state())), 11);
    c.take_effects();
    assert!(c.take_batch().is_empty());
    let due = c.access_due_ms().expect("a flush is due");
    c.flush_due_access_times(due - 1);
    assert!(c.take_batch().is_empty());
    c.flush_due_access_times(due);
    assert!(c.take_batch().contains(&StoreOp::DelCreate("a.txt".into())));
}

#[test]
fn a_refused_or_unanswered_create_takes_back_the_record_written_ahead() {
    for e in [
        err::conflict("File already exists"),
        err::unavailable("connection reset"),
    ] {
        let (mut c, job, _) = create_sent();
        c.on_job_result(job.id, Err(e.clone()), 11);
        assert_eq!(code(only_reply(c.take_effects())), e.code);
        let batch = c.take_batch();
        assert!(batch.contains(&StoreOp::DelFile("a.txt".into())));
        assert!(batch.contains(&StoreOp::DelCreate("a.txt".into())));
        assert!(!c.ns.files.contains_key("a.txt"));
        assert!(c.ns.creates.is_empty());
    }
}

#[test]
fn an_answer_unlike_the_record_written_ahead_is_recorded_before_the_reply() {
    let (mut c, job, _) = create_sent();
    let mut other = empty_state();
    other.version.counter = 5;
    c.on_job_result(job.id, Ok(JobOutput::State(other)), 11);
    let batch = c.take_batch();
    assert!(batch
        .iter()
        .any(|op| matches!(op, StoreOp::PutFile(f, r) if f == "a.txt" && r.version.counter == 5)));
    assert!(batch.contains(&StoreOp::DelCreate("a.txt".into())));
}

/// A name server restarted from a store holding the record a create of `a.txt` on ss1
/// wrote ahead, and its intent (the batch removing it was lost).
fn restarted() -> Core {
    let (mut c, _, ahead) = create_sent();
    let mut loaded = Loaded::default();
    loaded.pairs.insert("ss1".into(), "ss1_backup".into());
    loaded.users.insert("alice".into());
    for op in ahead {
        loaded.apply(op);
    }
    assert_eq!(loaded.creates.len(), 1);
    c = Core::new(c.cfg.clone(), ClusterKey::from_bytes(KEY), loaded);
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    c
}

#[test]
fn a_create_left_unsettled_is_settled_by_what_its_server_registers_with() {
    // The server holds the file: the create happened; the record stays, the intent goes.
    let mut c = restarted();
    register_as(&mut c, 1, "ss1", None, vec![empty_state()]);
    assert!(c.ns.files.contains_key("a.txt"));
    assert!(!c.ns.files["a.txt"].primary_missing);
    assert!(c.ns.creates.is_empty());
    assert!(c.take_batch().contains(&StoreOp::DelCreate("a.txt".into())));

    // It does not: the create never happened, and its record goes instead of being marked
    // missing forever.
    let mut c = restarted();
    register_as(&mut c, 2, "ss1_backup", None, vec![]);
    assert!(
        c.ns.files.contains_key("a.txt"),
        "settled by the server it was sent to"
    );
    register_as(&mut c, 1, "ss1", None, vec![]);
    assert!(!c.ns.files.contains_key("a.txt"));
    assert!(c.ns.creates.is_empty());
    let batch = c.take_batch();
    assert!(batch.contains(&StoreOp::DelFile("a.txt".into())));
    assert!(batch.contains(&StoreOp::DelCreate("a.txt".into())));
}

#[test]
fn a_create_meeting_a_removal_still_owed_records_its_answer_before_the_reply() {
    let (mut c, job, _) = create_sent();
    c.upsert_job("ss1_backup", "a.txt", Want::Delete, 10);
    c.take_batch();
    c.on_job_result(job.id, Ok(JobOutput::State(empty_state())), 11);
    let batch = c.take_batch();
    assert!(batch.contains(&StoreOp::DelCreate("a.txt".into())));
    assert!(batch.iter().any(
        |op| matches!(op, StoreOp::PutJob(j) if j.file == "a.txt" && j.target == "ss1_backup")
    ));
}

#[test]
fn an_intent_left_over_never_takes_a_later_record_of_the_name_for_its_own() {
    // The record written ahead is deleted by its owner, and the name taken again by another
    // record of the same version (a MOVE onto it): the leftover intent went with the first.
    let mut c = restarted();
    let mut later = c.ns.files["a.txt"].clone();
    c.del_file("a.txt");
    assert!(c.take_batch().contains(&StoreOp::DelCreate("a.txt".into())));
    later.owner = "bob".into();
    c.put_file("a.txt", later);
    register_as(&mut c, 1, "ss1", None, vec![]);
    assert_eq!(c.ns.files["a.txt"].owner, "bob", "the later record stays");

    // A record of the name that is not the one written ahead (another owner) is never taken
    // for it, even with the intent still there.
    let mut c = restarted();
    let mut rec = c.ns.files["a.txt"].clone();
    rec.owner = "bob".into();
    c.ns.files.insert("a.txt".into(), rec);
    register_as(&mut c, 1, "ss1", None, vec![]);
    assert!(c.ns.files.contains_key("a.txt"));
    assert!(c.ns.creates.is_empty());
}

#[test]
fn a_name_recorded_meanwhile_makes_the_answer_recorded_before_the_reply() {
    // While the create runs, the name gets a record from elsewhere (adopted from another
    // server): the durable record is no longer the one written ahead.
    let (mut c, job, _) = create_sent();
    let other = FileRecord::first(
        "bob".into(),
        "ss9",
        Member::Primary,
        &st("a.txt", 3, Some("bob")),
        1,
        1,
    );
    c.ns.files.insert("a.txt".into(), other);
    c.on_job_result(job.id, Ok(JobOutput::State(empty_state())), 11);
    let batch = c.take_batch();
    assert!(batch
        .iter()
        .any(|op| matches!(op, StoreOp::PutFile(f, r) if f == "a.txt" && r.owner == "alice")));
}
