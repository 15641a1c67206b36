//! Tests of operations started on a storage server (`core/ops.rs`).

use super::*;

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
    let Effect::DurableJob(del) = &e[1] else {
        panic!("{e:?}")
    };
    c.on_job_result(del.id, Ok(JobOutput::Done), 4);
    assert_eq!(only_reply(c.take_effects()), Message::Done {});
    assert!(c.ns.files.is_empty());
    assert!(!c.ops.is_busy("a.txt"));
}
