//! Tests of HELLO/PROVE sessions and the introduction deadline (`core/sessions.rs`).

use super::*;

#[test]
fn a_user_binds_its_first_key_and_only_that_key_opens_sessions() {
    let mut c = core();
    let alice = user_key("alice");
    hello(&mut c, 1, "alice");
    assert!(c
        .take_batch()
        .contains(&StoreOp::PutUserKey("alice".into(), alice.public_hex())));
    // The same key again: welcome, nothing new to store.
    hello(&mut c, 2, "alice");
    assert!(c.take_batch().is_empty());
    // Another key: refused with the reset hint, and the connection closed.
    let e = hello_with(&mut c, 3, "alice", &user_key("mallory"));
    match &e[..] {
        [Effect::Reply {
            msg: Message::Err { code, msg },
            ..
        }, Effect::Close { conn: 3 }] => {
            assert_eq!(*code, ErrorCode::Unauthorized);
            assert_eq!(
                msg,
                "alice is registered with another key (reset it with bin_nm --reset-user alice)"
            );
        }
        other => panic!("{other:?}"),
    }
    // A signature over another nonce is refused too.
    c.on_connect(4, 0);
    send(
        &mut c,
        4,
        Message::Hello {
            user: "alice".into(),
        },
        0,
    );
    let e = send(
        &mut c,
        4,
        Message::Prove {
            key: alice.public_hex(),
            sig: alice.prove("alice", "not-the-nonce"),
        },
        0,
    );
    assert!(matches!(
        &e[..],
        [
            Effect::Reply {
                msg: Message::Err {
                    code: ErrorCode::Unauthorized,
                    ..
                },
                ..
            },
            Effect::Close { .. }
        ]
    ));
    // A request before PROVE is refused.
    c.on_connect(5, 0);
    send(&mut c, 5, Message::Hello { user: "bob".into() }, 0);
    let e = send(&mut c, 5, Message::ListUsers {}, 0);
    assert!(matches!(
        &e[..],
        [
            Effect::Reply {
                msg: Message::Err {
                    code: ErrorCode::Invalid,
                    ..
                },
                ..
            },
            Effect::Close { .. }
        ]
    ));
}

#[test]
fn silent_new_connections_are_closed() {
    let mut c = core();
    c.on_connect(5, 1000);
    hello(&mut c, 6, "alice");
    assert_eq!(c.next_deadline_ms(), Some(1000 + INTRODUCTION_TIMEOUT_MS));
    c.tick(1000 + INTRODUCTION_TIMEOUT_MS);
    let e = c.take_effects();
    assert!(matches!(
        &e[0],
        Effect::Reply {
            conn: 5,
            msg: Message::Err {
                code: ErrorCode::Timeout,
                ..
            },
            ..
        }
    ));
    assert_eq!(e[1], Effect::Close { conn: 5 });
    assert_eq!(c.next_deadline_ms(), None);
}
