//! Tests of STATUS (`core/status.rs`).

use super::*;

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
    assert_eq!(c.q.table().len(), n);
    // Every copy ran out of attempts, each with a long error.
    for key in c.q.table().keys_for("ss1_backup") {
        c.q.table_mut().update(&key, |j| {
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
