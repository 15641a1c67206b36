//! Tests of access requests (`core/requests.rs`).

use super::*;

#[test]
fn access_requests_grant_exactly_what_was_asked_and_ids_never_repeat() {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    hello(&mut c, 10, "alice");
    hello(&mut c, 11, "bob");
    hello(&mut c, 12, "carol");
    hello(&mut c, 13, "dave");
    create(&mut c, 10, "a.txt");
    let racc = |kind| Message::RequestAccess {
        file: "a.txt".into(),
        kind,
    };
    let answer = |id, approve| Message::AnswerRequest { id, approve };
    use crate::protocol::AccessKind;
    assert_eq!(
        only_reply(send(&mut c, 11, racc(AccessKind::R), 5)),
        Message::RequestCreated { id: 1 }
    );
    assert_eq!(
        code(only_reply(send(&mut c, 11, racc(AccessKind::RW), 5))),
        ErrorCode::Conflict,
        "a second pending request of the same user"
    );
    assert_eq!(
        code(only_reply(send(&mut c, 10, racc(AccessKind::R), 5))),
        ErrorCode::Invalid,
        "the owner cannot request"
    );
    let m = only_reply(send(
        &mut c,
        12,
        Message::RequestAccess {
            file: "nope".into(),
            kind: AccessKind::R,
        },
        5,
    ));
    assert_eq!(code(m), ErrorCode::NotFound);
    assert_eq!(
        only_reply(send(&mut c, 12, racc(AccessKind::W), 6)),
        Message::RequestCreated { id: 2 }
    );
    assert_eq!(
        only_reply(send(&mut c, 13, racc(AccessKind::RW), 6)),
        Message::RequestCreated { id: 3 }
    );
    let pending = |c: &mut Core, conn| match only_reply(send(c, conn, Message::ViewRequests {}, 7))
    {
        Message::Requests { requests, .. } => requests
            .into_iter()
            .map(|r| (r.id, r.user, r.kind))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert!(pending(&mut c, 11).is_empty(), "bob owns nothing");
    assert_eq!(
        pending(&mut c, 10),
        vec![
            (1, "bob".to_string(), AccessKind::R),
            (2, "carol".to_string(), AccessKind::W),
            (3, "dave".to_string(), AccessKind::RW),
        ]
    );
    assert_eq!(
        code(only_reply(send(&mut c, 11, answer(1, true), 8))),
        ErrorCode::Unauthorized
    );
    for id in [1, 2] {
        assert_eq!(
            only_reply(send(&mut c, 10, answer(id, true), 8)),
            Message::Done {}
        );
    }
    assert_eq!(
        only_reply(send(&mut c, 10, answer(3, false), 8)),
        Message::Done {}
    );
    let access = &c.ns.files["a.txt"].access;
    assert_eq!(access.get("bob"), Some(&false), "R grants read only");
    assert_eq!(access.get("carol"), Some(&true), "W grants read and write");
    assert_eq!(access.get("dave"), None, "a refused request grants nothing");
    assert_eq!(
        code(only_reply(send(&mut c, 10, answer(1, true), 8))),
        ErrorCode::NotFound,
        "an answered request is gone"
    );
    assert_eq!(
        code(only_reply(send(&mut c, 11, racc(AccessKind::R), 9))),
        ErrorCode::Conflict,
        "bob already has read access"
    );
    assert_eq!(
        only_reply(send(&mut c, 11, racc(AccessKind::RW), 9)),
        Message::RequestCreated { id: 4 }
    );
    assert!(c.take_batch().contains(&StoreOp::PutNextRequest(5)));
    // A restarted core continues the counter from what was stored.
    let loaded = Loaded {
        requests: c.ns.requests.clone(),
        next_request: 5,
        ..Loaded::default()
    };
    let mut c2 = Core::new(c.cfg.clone(), ClusterKey::from_bytes(KEY), loaded);
    assert_eq!(c2.ns.next_request, 5);
    c2.drop_requests_for("a.txt");
    assert!(c2.ns.requests.is_empty());
}
