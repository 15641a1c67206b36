//! Kept connections and the one repeat, against a storage server played by the test: it
//! answers, closes a kept connection just as a request arrives, or breaks off an answer.

use super::*;
use crate::auth::Grant;
use crate::nm::core::mono_ms;
use crate::protocol::{FileState, Ticket, TicketOp, Version};
use std::net::{TcpListener, TcpStream};
use std::thread;

fn key() -> ClusterKey {
    ClusterKey::from_bytes(b"sscall test key")
}

fn ticket(env: &Env, file: &str, op: TicketOp) -> Ticket {
    let grant = Grant {
        user: crate::auth::NM_USER,
        file,
        op,
        ss: "ss1",
        min_version: None,
        epoch: Some(1),
    };
    env.mint(&key(), &grant, mono_ms())
}

fn create(env: &Env, file: &str) -> Message {
    Message::SsCreate {
        file: file.to_string(),
        owner: "alice".to_string(),
        epoch: 1,
        counter: None,
        ticket: ticket(env, file, TicketOp::Create),
    }
}

fn state(file: &str) -> Message {
    Message::FileStateReply {
        state: FileState {
            file: file.to_string(),
            version: Version::first(1, None),
            checksum: crc32c::crc32c(b""),
            size: 0,
            words: 0,
            chars: 0,
            modified_ms: 1,
            owner: Some("alice".to_string()),
        },
    }
}

/// What the played server does with the request it reads.
enum Then {
    /// Answers it.
    Answer,
    /// Closes the connection without answering.
    Close,
    /// Sends part of an answer, then closes.
    Half,
}

/// The storage server played: accepts a connection per entry of `script` (a list of what
/// to do with each request read on it) and returns the requests it read, per connection.
fn played(listener: TcpListener, script: Vec<Vec<Then>>) -> thread::JoinHandle<Vec<Vec<Message>>> {
    thread::spawn(move || {
        let mut seen = Vec::new();
        for steps in script {
            let (s, _) = listener.accept().expect("accept");
            let mut c = Connection::new(s);
            c.set_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut got = Vec::new();
            for step in steps {
                let f = c.recv_some().expect("a request");
                let Message::SsCreate { file, .. } = &f.msg else {
                    panic!("unexpected {}", f.msg.op_name());
                };
                let file = file.clone();
                got.push(f.msg);
                match step {
                    Then::Answer => c.send(&state(&file), &[]).expect("answer"),
                    Then::Close => break,
                    Then::Half => {
                        let bytes = crate::protocol::encode(&state(&file), &[]);
                        use std::io::Write;
                        let mut s = c.stream();
                        s.write_all(&bytes[..bytes.len() / 2]).expect("half");
                        break;
                    }
                }
            }
            seen.push(got);
        }
        seen
    })
}

fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    (l, addr)
}

fn nonce(m: &Message) -> String {
    match m {
        Message::SsCreate { ticket, .. } => ticket.nonce.clone(),
        other => panic!("unexpected {}", other.op_name()),
    }
}

/// Kept connections as in a name server, but calls count as frequent for a minute: a test
/// paused by a loaded machine sees the same connections kept.
fn conns() -> KeptConns {
    KeptConns::with_limits(Duration::from_millis(KEPT_IDLE_MS), Duration::from_secs(60))
}

#[test]
fn frequent_calls_share_one_kept_connection_and_a_lone_call_keeps_none() {
    let (l, addr) = listen();
    let server = played(
        l,
        vec![
            vec![Then::Answer],
            vec![Then::Answer, Then::Answer, Then::Answer],
        ],
    );
    let (env, conns) = (Env::seeded(1, 1), conns());
    for (i, f) in ["a.txt", "b.txt", "c.txt", "d.txt"].into_iter().enumerate() {
        let got = call(&addr, &create(&env, f), &conns, &key(), &env).expect("answered");
        assert!(matches!(got.msg, Message::FileStateReply { .. }));
        // The first call is alone: nothing began before it.
        assert_eq!(conns.count(&addr), usize::from(i > 0));
    }
    drop(conns);
    let seen = server.join().expect("server");
    assert_eq!(
        seen.len(),
        2,
        "a connection for the lone call, one for the three after"
    );
    assert_eq!(seen[1].len(), 3);

    // With no window at all, a call after the last ended keeps nothing.
    let (l, addr) = listen();
    let server = played(l, vec![vec![Then::Answer], vec![Then::Answer]]);
    let conns = KeptConns::with_limits(Duration::from_secs(60), Duration::ZERO);
    call(&addr, &create(&env, "e.txt"), &conns, &key(), &env).expect("answered");
    call(&addr, &create(&env, "f.txt"), &conns, &key(), &env).expect("answered");
    assert_eq!(conns.count(&addr), 0);
    assert_eq!(server.join().expect("server").len(), 2);
}

#[test]
fn a_kept_connection_closed_as_the_request_arrives_is_called_again_on_a_new_one() {
    let (l, addr) = listen();
    let server = played(
        l,
        vec![
            vec![Then::Answer],
            vec![Then::Answer, Then::Close],
            vec![Then::Answer],
        ],
    );
    let (env, conns) = (Env::seeded(1, 2), conns());
    call(&addr, &create(&env, "a.txt"), &conns, &key(), &env).expect("first");
    call(&addr, &create(&env, "b.txt"), &conns, &key(), &env).expect("second");
    assert_eq!(conns.count(&addr), 1);
    let got = call(&addr, &create(&env, "c.txt"), &conns, &key(), &env)
        .expect("the repeat is answered, the caller sees no error");
    assert!(matches!(got.msg, Message::FileStateReply { .. }));
    assert_eq!(conns.count(&addr), 1, "the new connection is kept");
    drop(conns);
    let seen = server.join().expect("server");
    assert_eq!(seen.len(), 3);
    let (cut, again) = (&seen[1][1], &seen[2][0]);
    assert_eq!(
        crate::protocol::encode(&with_nonce(cut, ""), &[]),
        crate::protocol::encode(&with_nonce(again, ""), &[]),
        "the same request, but for its ticket"
    );
    assert_ne!(nonce(cut), nonce(again), "a fresh single-use ticket");
}

/// `m` with its ticket's nonce and MAC (and expiry) blanked, to compare requests.
fn with_nonce(m: &Message, n: &str) -> Message {
    let mut m = m.clone();
    if let Message::SsCreate { ticket, .. } = &mut m {
        ticket.nonce = n.to_string();
        ticket.mac = String::new();
        ticket.exp_ms = 0;
    }
    m
}

#[test]
fn a_partial_answer_on_a_kept_connection_is_not_repeated() {
    let (l, addr) = listen();
    let server = played(l, vec![vec![Then::Answer], vec![Then::Answer, Then::Half]]);
    let (env, conns) = (Env::seeded(1, 3), conns());
    call(&addr, &create(&env, "a.txt"), &conns, &key(), &env).expect("first");
    call(&addr, &create(&env, "b.txt"), &conns, &key(), &env).expect("second");
    let e = call(&addr, &create(&env, "c.txt"), &conns, &key(), &env)
        .expect_err("an answer broken off fails the call");
    assert_eq!(e.code, crate::protocol::ErrorCode::Unavailable, "{e:?}");
    assert_eq!(conns.count(&addr), 0);
    let seen = server.join().expect("server");
    assert_eq!(seen.len(), 2, "no third connection");
}

#[test]
fn a_call_on_a_new_connection_is_not_repeated() {
    let (l, addr) = listen();
    let server = played(l, vec![vec![Then::Close]]);
    let (env, conns) = (Env::seeded(1, 4), conns());
    let e = call(&addr, &create(&env, "a.txt"), &conns, &key(), &env)
        .expect_err("a new connection closed unanswered fails the call");
    assert_eq!(e.code, crate::protocol::ErrorCode::Unavailable, "{e:?}");
    assert_eq!(server.join().expect("server").len(), 1);
}

#[test]
fn only_calls_safe_to_repeat_are_kept() {
    let env = Env::seeded(1, 5);
    let t = |op| ticket(&env, "a.txt", op);
    assert!(repeatable(&create(&env, "a.txt")));
    assert!(repeatable(&Message::SsDelete {
        file: "a.txt".into(),
        ticket: t(TicketOp::Delete),
    }));
    assert!(!repeatable(&Message::SsUndo {
        file: "a.txt".into(),
        epoch: 1,
        ticket: t(TicketOp::Undo),
    }));
    assert!(!repeatable(&Message::SsRevert {
        file: "a.txt".into(),
        tag: "v1".into(),
        epoch: 1,
        ticket: t(TicketOp::Revert),
    }));
    // A call not safe to repeat opens its own connection and leaves none kept.
    let (l, addr) = listen();
    let server = thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        let mut c = Connection::new(s);
        let f = c.recv_some().expect("request");
        assert!(matches!(f.msg, Message::SsUndo { .. }));
        c.send(&state("a.txt"), &[]).expect("answer");
    });
    let conns = conns();
    let undo = Message::SsUndo {
        file: "a.txt".into(),
        epoch: 1,
        ticket: t(TicketOp::Undo),
    };
    call(&addr, &undo, &conns, &key(), &env).expect("answered");
    assert_eq!(conns.count(&addr), 0);
    server.join().expect("server");
}

/// A connection to a fresh listener, and the accepted end.
fn pair() -> (Connection, TcpStream) {
    let (l, addr) = listen();
    let c = connect(&addr).expect("connect");
    let (s, _) = l.accept().expect("accept");
    (c, s)
}

/// Keeps `c` as a call to `addr` ending while another runs would.
fn keep(conns: &KeptConns, addr: &str, c: Connection) {
    let other = conns.begin(addr);
    let began = conns.begin(addr);
    conns.end(addr, began, Some(c));
    conns.end(addr, other, None);
}

#[test]
fn a_connection_its_server_closed_is_not_taken() {
    let conns = conns();
    let (c, s) = pair();
    let addr = c.stream().peer_addr().expect("peer").to_string();
    drop(s);
    // The close reaches this end within a moment on loopback.
    let by = Instant::now() + Duration::from_secs(5);
    while !kept::peer_closed(&c) && Instant::now() < by {
        thread::yield_now();
    }
    keep(&conns, &addr, c);
    assert_eq!(conns.count(&addr), 1);
    assert!(conns.take(&addr).is_none(), "found closed, dropped");
    assert_eq!(conns.count(&addr), 0);
}

#[test]
fn at_most_the_cap_is_kept_per_server() {
    let conns = conns();
    let (l, addr) = listen();
    let mut ends = Vec::new();
    for _ in 0..MAX_KEPT_PER_SERVER + 2 {
        let c = connect(&addr).expect("connect");
        ends.push(l.accept().expect("accept").0);
        keep(&conns, &addr, c);
    }
    assert_eq!(conns.count(&addr), MAX_KEPT_PER_SERVER);
    for _ in 0..MAX_KEPT_PER_SERVER {
        assert!(conns.take(&addr).is_some());
    }
    assert!(conns.take(&addr).is_none());
}

#[test]
fn an_idle_connection_is_closed_by_a_sweep() {
    let conns = KeptConns::with_limits(Duration::from_millis(50), Duration::from_secs(60));
    let (c, s) = pair();
    let addr = c.stream().peer_addr().expect("peer").to_string();
    assert!(!conns.holds_any());
    keep(&conns, &addr, c);
    assert_eq!(conns.count(&addr), 1);
    assert!(conns.holds_any(), "the workers sweep while one is kept");
    let by = Instant::now() + Duration::from_secs(5);
    while conns.count(&addr) > 0 && Instant::now() < by {
        thread::sleep(Duration::from_millis(10));
        conns.sweep();
    }
    assert_eq!(conns.count(&addr), 0, "swept");
    assert!(!conns.holds_any());
    // Closed, not only forgotten: the server's end reads the end of stream.
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    use std::io::Read;
    assert_eq!((&s).read(&mut [0u8; 1]).expect("end of stream"), 0);
}
