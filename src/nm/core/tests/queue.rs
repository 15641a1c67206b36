//! Tests of the replication queue and sync-mode waits (`core/queue.rs`).

use super::*;

#[test]
fn jobs_coalesce_per_file_and_carry_the_latest_version() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![st("a.txt", 1, Some("alice"))]);
    register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1, Some("alice"))]);
    assert!(c.q.table().is_empty(), "the backup already holds a.txt");
    // Fill the in-flight cap with other files so a.txt's job waits in the table.
    c.cfg.max_repl_in_flight = 1;
    c.take_batch();
    for n in 2..=11 {
        let e = send(
            &mut c,
            1,
            Message::Changed {
                staged: None,
                pending: false,
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
    assert_eq!(c.q.table().len(), 1);
    let job = &c.q.table()[&job_key("ss1_backup", "a.txt")];
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
            pending: false,
            id: 99,
            state: st("a.txt", 12, None),
        },
        210,
    );
    c.on_job_result(*id, copied("a.txt", 11), 220);
    assert_eq!(
        c.ns.files["a.txt"].backup_version,
        Some(st("a.txt", 11, None).version)
    );
    let jobs = repl_jobs(&c.take_effects());
    assert_eq!(jobs.len(), 1, "the newer version is sent next");
    c.on_job_result(jobs[0].0, copied("a.txt", 12), 230);
    assert!(c.q.table().is_empty());
    assert!(c
        .take_batch()
        .contains(&StoreOp::DelJob(job_key("ss1_backup", "a.txt"))));
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
        let j = c.q.table()[&key].clone();
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
    let j = c.q.table()[&key].clone();
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
    assert_eq!(c.q.table()[&key].state, JobState::Pending);
    c.on_job_result(jobs[0].0, copied("a.txt", 1), now);
    assert!(c.q.table().is_empty());
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
    let mut owed: Vec<(String, Want)> =
        c.q.table()
            .values()
            .map(|j| (j.file.clone(), j.want))
            .collect();
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
        !c.ns.files.contains_key("stray.txt"),
        "a backup's files are never adopted"
    );
    assert_eq!(
        c.ns.files["same.txt"].backup_version,
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
            pending: false,
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
            pending: false,
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
    assert_eq!(c.q.table().len(), 1);
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
    assert_eq!(
        c.q.table()[&job_key("ss1_backup", "b.txt")].want,
        Want::Delete
    );
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
            pending: false,
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
    assert!(c.q.table().is_empty());
}
