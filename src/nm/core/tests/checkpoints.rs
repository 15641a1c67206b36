//! Tests of CHECKPOINT and REVERT (`core/checkpoints.rs`).

use super::*;

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
    let v = c.ns.files["a.txt"].version;
    assert_eq!(v.counter, 2);
    // The checkpoint is a new version: the ordinary content job carries it.
    assert_eq!(
        c.q.table()[&job_key("ss1_backup", "a.txt")].want,
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
    assert_eq!(c.ns.files["a.txt"].access.get("bob"), Some(&false));
}
