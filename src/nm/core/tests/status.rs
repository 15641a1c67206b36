//! Tests of STATUS (`core/status.rs`).

use super::*;
use crate::nm::core::status::{Events, EVENTS_KEPT, QUARANTINE_BURST_MS, QUARANTINE_FILES_NAMED};

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

fn events_of(c: &Core) -> Vec<serde_json::Value> {
    c.status_json(0)["events"].as_array().unwrap().clone()
}

#[test]
fn the_event_ring_names_a_quarantine_and_folds_a_burst_into_one_event() {
    let mut ev = Events::default();
    let why = SetAside::Diverged {
        held: Version {
            epoch: 1,
            counter: 3,
        },
        current: Version {
            epoch: 2,
            counter: 2,
        },
    };
    ev.note(1_000, "FAILOVER", "ss1", "ss1_backup takes changes".into());
    ev.quarantine(2_000, "ss1", "docs/a.txt", why);
    let e = ev.list().back().unwrap().clone();
    assert_eq!(
        (e.at_ms, e.kind, e.subject.as_str()),
        (2_000, "QUARANTINE", "ss1")
    );
    assert!(e.text.contains("/docs/a.txt"), "{}", e.text);
    assert!(e.text.contains("never acknowledged"), "{}", e.text);
    assert!(
        e.text.contains("1.3") && e.text.contains("2.2"),
        "{}",
        e.text
    );
    // A thousand more for the same server and reason, as one registration finds them: one
    // event naming the first files and counting the rest.
    for i in 0..1000 {
        ev.quarantine(2_100, "ss1", &format!("f{i}.txt"), why);
    }
    assert_eq!(ev.list().len(), 2, "{:?}", ev.list());
    let e = ev.list().back().unwrap();
    assert_eq!(e.files_total, Some(1001));
    assert_eq!(e.files.len(), QUARANTINE_FILES_NAMED);
    assert!(
        e.text.starts_with(
            "1001 copies set aside in quarantine (/docs/a.txt, f0.txt, f1.txt and 998 more)"
        ),
        "{}",
        e.text
    );
    assert_eq!(e.at_ms, 2_000, "the burst keeps the time it began");
    assert_eq!(
        ev.list()[0].kind,
        "FAILOVER",
        "the failover is still listed"
    );
    // Another server, another reason, a later time, or an event in between: a new event.
    ev.quarantine(2_200, "ss2", "b.txt", why);
    ev.quarantine(2_300, "ss2", "c.txt", SetAside::NotWriter);
    ev.quarantine(
        2_300 + QUARANTINE_BURST_MS + 1,
        "ss2",
        "d.txt",
        SetAside::NotWriter,
    );
    ev.note(9_000, "SERVER_DOWN", "ss2", "ss2 is down".into());
    ev.quarantine(9_001, "ss2", "e.txt", SetAside::NotWriter);
    let kinds: Vec<(&str, &str)> = ev
        .list()
        .iter()
        .map(|e| (e.kind, e.subject.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("FAILOVER", "ss1"),
            ("QUARANTINE", "ss1"),
            ("QUARANTINE", "ss2"),
            ("QUARANTINE", "ss2"),
            ("QUARANTINE", "ss2"),
            ("SERVER_DOWN", "ss2"),
            ("QUARANTINE", "ss2"),
        ]
    );
    assert!(ev.list()[3].text.contains("not its pair's writer"));
    // The ring stays bounded.
    for i in 0..200 {
        ev.note(10_000 + i, "SERVER_DOWN", "ss3", String::new());
    }
    assert_eq!(ev.list().len(), EVENTS_KEPT);
}

#[test]
fn a_member_registering_with_copies_set_aside_shows_a_quarantine_event() {
    let mut c = core();
    c.cfg.heartbeat_timeout_ms = 1 << 40;
    register_as(&mut c, 1, "ss1", None, vec![st("a.txt", 2, Some("alice"))]);
    // The backup holds a.txt at the same version with other bytes, and a file the index does
    // not know.
    let mut forked = st("a.txt", 2, Some("alice"));
    forked.checksum = 999;
    register_as(
        &mut c,
        2,
        "ss1_backup",
        Some("ss1"),
        vec![forked, st("stray.txt", 1, Some("bob"))],
    );
    let q: Vec<serde_json::Value> = events_of(&c)
        .into_iter()
        .filter(|e| e["kind"] == "QUARANTINE")
        .collect();
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(q[0]["subject"], "ss1_backup");
    assert_eq!(q[0]["files"], serde_json::json!(["a.txt"]));
    assert!(q[0]["text"]
        .as_str()
        .unwrap()
        .contains("changes the cluster never acknowledged"));
    assert_eq!(q[1]["files"], serde_json::json!(["stray.txt"]));
    assert!(q[1]["text"]
        .as_str()
        .unwrap()
        .contains("index does not know"));
    // The job is rewritten (a retry, the server registering again): noted once.
    c.on_close(2, 10);
    register_as(&mut c, 3, "ss1_backup", Some("ss1"), vec![]);
    let kinds: Vec<String> = events_of(&c)
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "QUARANTINE").count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"SERVER_DOWN".to_string()), "{kinds:?}");
    assert_eq!(kinds.last().unwrap(), "SERVER_UP", "{kinds:?}");
}
