//! Authorisation at the storage server (SPEC §8): only tickets the name server signed, once,
//! for the right file, operation and server; registration only with the cluster key.

use crate::harness::*;
use pairfs::auth::{ClusterKey, RegisterClaim};
use pairfs::protocol::{AccessMode, ErrorCode, Message, TicketOp};

fn setup() -> Cluster {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Top secret.\nETIRW\nCREATE b.txt\n")
        .assert_code(0);
    c
}

fn refused(r: Result<Vec<u8>, pairfs::protocol::WireError>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.code, ErrorCode::Unauthorized, "{what}: {e}"),
        Ok(b) => panic!("{what}: served {:?}", String::from_utf8_lossy(&b)),
    }
}

#[test]
fn a_ticket_is_single_use() {
    let c = setup();
    let mut nm = hello(c.nm_addr(), "alice").unwrap();
    let (addr, ticket) = locate(&mut nm, "a.txt", AccessMode::Read).unwrap();
    let got = read_with_ticket(&addr, "a.txt", ticket.clone()).unwrap();
    assert_eq!(got, b"Top secret.");
    refused(read_with_ticket(&addr, "a.txt", ticket), "replayed ticket");
}

#[test]
fn forged_tickets_are_refused() {
    let c = setup();
    let mut nm = hello(c.nm_addr(), "alice").unwrap();
    let addr = c.ss_addr("ss1").to_string();

    // A ticket for b.txt used on a.txt.
    let (_, t) = locate(&mut nm, "b.txt", AccessMode::Read).unwrap();
    refused(
        read_with_ticket(&addr, "a.txt", t),
        "ticket for another file",
    );

    // A real ticket with its file changed (the MAC no longer matches).
    let (_, mut t) = locate(&mut nm, "b.txt", AccessMode::Read).unwrap();
    t.file = "a.txt".into();
    refused(read_with_ticket(&addr, "a.txt", t), "edited ticket");

    // A ticket signed with another key.
    let other = ClusterKey::from_bytes(b"not the cluster key at all 0123");
    let t = other.mint("alice", "a.txt", TicketOp::Read, "ss1", None);
    refused(
        read_with_ticket(&addr, "a.txt", t),
        "ticket signed with another key",
    );

    // A ticket for another storage server.
    let t = c.key().mint("alice", "a.txt", TicketOp::Read, "ss9", None);
    refused(
        read_with_ticket(&addr, "a.txt", t),
        "ticket for another server",
    );

    // An expired ticket.
    let mut t = c.key().mint("alice", "a.txt", TicketOp::Read, "ss1", None);
    t.exp_ms = pairfs::auth::now_ms() - 1000;
    t.mac = c.key().mac_hex(t.signing_string().as_bytes());
    refused(read_with_ticket(&addr, "a.txt", t), "expired ticket");

    // A stream ticket used for READ.
    let (_, t) = locate(&mut nm, "a.txt", AccessMode::Stream).unwrap();
    refused(
        read_with_ticket(&addr, "a.txt", t),
        "stream ticket for READ",
    );

    // A read ticket cannot delete.
    let (_, t) = locate(&mut nm, "a.txt", AccessMode::Read).unwrap();
    let mut ss = raw_conn(&addr);
    let f = call_raw(
        &mut ss,
        &Message::SsDelete {
            file: "a.txt".into(),
            ticket: t,
        },
    );
    assert!(
        matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "SS_DELETE with a read ticket answered {:?}",
        f.msg
    );

    // The storage server logged its refusals, and the file is intact.
    c.wait_event("ss1", "ss_refused", |_| true, WAIT);
    assert_eq!(
        raw_read(c.nm_addr(), "alice", "a.txt").unwrap(),
        b"Top secret."
    );
}

#[test]
fn a_write_ticket_is_single_use_too() {
    let c = setup();
    let mut nm = hello(c.nm_addr(), "alice").unwrap();
    let (addr, ticket) = locate(&mut nm, "a.txt", AccessMode::Write).unwrap();
    let begin = Message::WriteBegin {
        file: "a.txt".into(),
        sentence: 0,
        ticket,
    };
    let mut ss = raw_conn(&addr);
    let f = call_raw(&mut ss, &begin);
    assert!(matches!(f.msg, Message::WriteOpened { .. }), "{:?}", f.msg);
    drop(ss);
    let mut ss = raw_conn(&addr);
    let f = call_raw(&mut ss, &begin);
    assert!(
        matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "replayed WRITE_BEGIN answered {:?}",
        f.msg
    );
}

#[test]
fn registration_needs_the_cluster_key() {
    let c = Cluster::start();
    let wrong = ClusterKey::from_bytes(b"an impostor's key, not the real one");
    let mut nm = c.nm_conn();
    let f = call_raw(
        &mut nm,
        &Message::Register {
            name: "evil".into(),
            host: "127.0.0.1".into(),
            client_port: 1,
            backup_of: None,
            proof: wrong.proof(&claim("evil", 1)),
            file_count: 0,
        },
    );
    assert!(
        matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "REGISTER with a wrong key answered {:?}",
        f.msg
    );
    // A proof made for another name does not transfer either.
    let mut nm = c.nm_conn();
    let f = call_raw(
        &mut nm,
        &Message::Register {
            name: "evil".into(),
            host: "127.0.0.1".into(),
            client_port: 1,
            backup_of: None,
            proof: c.key().proof(&claim("ss1", 1)),
            file_count: 0,
        },
    );
    assert!(matches!(f.msg, Message::Err { .. }), "{:?}", f.msg);
    // Nor does a proof for another address: it signs the host and port it was made for.
    let mut nm = c.nm_conn();
    let f = call_raw(
        &mut nm,
        &Message::Register {
            name: "ss9".into(),
            host: "127.0.0.1".into(),
            client_port: 2,
            backup_of: None,
            proof: c.key().proof(&claim("ss9", 1)),
            file_count: 0,
        },
    );
    assert!(matches!(f.msg, Message::Err { .. }), "{:?}", f.msg);
    // A captured, valid REGISTER cannot be replayed: its proof is single-use.
    let reg = Message::Register {
        name: "ss9".into(),
        host: "127.0.0.1".into(),
        client_port: 1,
        backup_of: None,
        proof: c.key().proof(&claim("ss9", 1)),
        file_count: 0,
    };
    let mut first = c.nm_conn();
    first.send(&reg, &[]).unwrap();
    first.send(&Message::RegisterEnd {}, &[]).unwrap();
    let f = first.recv_some().unwrap();
    assert!(matches!(f.msg, Message::Registered { .. }), "{:?}", f.msg);
    drop(first);
    let mut replay = c.nm_conn();
    let f = call_raw(&mut replay, &reg);
    assert!(
        matches!(
            f.msg,
            Message::Err {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "replayed REGISTER answered {:?}",
        f.msg
    );
    c.client("alice")
        .run("VIEW -a\n")
        .assert_lines(&["No files found."]);
}

/// What a test registration claims: the proof signs all of it.
fn claim(name: &str, client_port: u16) -> RegisterClaim<'_> {
    RegisterClaim {
        name,
        host: "127.0.0.1",
        client_port,
        backup_of: None,
    }
}

#[test]
fn storage_server_with_another_key_is_not_registered() {
    let mut c = Cluster::start();
    // ss2 gets its own key file: it must never appear among the registered servers.
    let other_key = c.dir().join("other.key");
    c.add_ss_with_key("ss2", &other_key);
    // ss2 is refused (it logs the link outage once, then keeps retrying quietly).
    let log = c.log("ss2");
    assert!(
        log.wait_count(Mark(0), "ss_nm_link", &|_| true, 1, WAIT),
        "ss2 logged no link outage:\n{}",
        log.tail()
    );
    // Placement never picks it.
    for i in 0..5 {
        c.client("alice")
            .run(&format!("CREATE f{i}.txt\nINFO f{i}.txt\n"))
            .assert_contains("Replicas: ss1")
            .assert_lacks("ss2");
    }
    assert_eq!(
        c.log("nm")
            .count(Mark(0), "nm_ss_register", &|v| registered(v, "ss2")),
        0
    );
}
