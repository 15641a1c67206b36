//! In-process tests of the storage server against a tiny fake name server.

use super::*;
use crate::protocol::{
    Connection, ErrorCode, FileState, Message, Ticket, TicketOp, Version, WireError,
};
use crossbeam_channel::{unbounded, Receiver};
use std::io::Write;
use std::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// A fake name server: registers every storage server at epoch 7, acks heartbeats and reports,
/// and hands the registered lists and reported states to the test.
struct FakeNm {
    addr: String,
    registered: Receiver<Vec<FileState>>,
    changed: Receiver<FileState>,
    removed: Receiver<String>,
}

fn fake_nm() -> FakeNm {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (reg_tx, registered) = unbounded();
    let (ch_tx, changed) = unbounded();
    let (rm_tx, removed) = unbounded();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let (reg_tx, ch_tx, rm_tx) = (reg_tx.clone(), ch_tx.clone(), rm_tx.clone());
            thread::spawn(move || {
                let mut c = Connection::new(s);
                let mut list = Vec::new();
                while let Ok(Some(f)) = c.recv() {
                    let reply = match f.msg {
                        Message::FileBatch { files } => {
                            list.extend(files);
                            None
                        }
                        Message::RegisterEnd {} => {
                            let _ = reg_tx.send(std::mem::take(&mut list));
                            Some(Message::Registered {
                                epoch: 7,
                                heartbeat_interval_ms: 50,
                                backup: false,
                            })
                        }
                        Message::Heartbeat { seq } => Some(Message::HeartbeatAck { seq }),
                        Message::Changed { id, state } => {
                            let _ = ch_tx.send(state);
                            Some(Message::ChangedAck { id, copies: None })
                        }
                        Message::Removed { id, file } => {
                            let _ = rm_tx.send(file);
                            Some(Message::ChangedAck { id, copies: None })
                        }
                        _ => None,
                    };
                    if let Some(m) = reply {
                        if c.send(&m, &[]).is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    FakeNm {
        addr,
        registered,
        changed,
        removed,
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    nm: FakeNm,
    key: ClusterKey,
    ss: Running,
}

fn config(dir: &std::path::Path, nm_addr: &str, key: &ClusterKey) -> Config {
    Config {
        nm_addr: nm_addr.to_string(),
        host: "127.0.0.1".into(),
        client_port: 0,
        storage: dir.join("s"),
        name: "ss1".into(),
        backup_of: None,
        heartbeat_interval_ms: 50,
        key: key.clone(),
        lock_timeout_ms: 60_000,
        max_connections: 16,
        fault_flip_put: false,
    }
}

fn test_key() -> ClusterKey {
    ClusterKey::from_bytes(b"test cluster key 0123456789")
}

fn cluster(lock_timeout_ms: u64) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let nm = fake_nm();
    let key = test_key();
    let ss = start(Config {
        lock_timeout_ms,
        ..config(dir.path(), &nm.addr, &key)
    })
    .unwrap();
    nm.registered.recv_timeout(WAIT).unwrap();
    Cluster {
        _dir: dir,
        nm,
        key,
        ss,
    }
}

impl Cluster {
    fn conn(&self) -> Connection {
        let c = Connection::connect(&self.ss.addr().to_string(), WAIT).unwrap();
        c.set_timeout(Some(WAIT)).unwrap();
        c
    }

    fn ticket(&self, file: &str, op: TicketOp) -> Ticket {
        self.key.mint("alice", file, op, "ss1", None)
    }

    fn ask(&self, c: &mut Connection, m: Message) -> Result<Message, WireError> {
        c.send(&m, &[]).unwrap();
        c.recv().unwrap().unwrap().msg.into_result()
    }

    fn create(&self, file: &str) -> FileState {
        let mut c = self.conn();
        let t = self.ticket(file, TicketOp::Create);
        let m = Message::SsCreate {
            file: file.into(),
            owner: "alice".into(),
            epoch: 7,
            ticket: t,
        };
        match self.ask(&mut c, m).unwrap() {
            Message::FileStateReply { state } => state,
            other => panic!("{other:?}"),
        }
    }

    fn begin(&self, file: &str, i: u64) -> (Connection, Result<Message, WireError>) {
        let mut c = self.conn();
        let ticket = self.ticket(file, TicketOp::Write);
        let r = self.ask(
            &mut c,
            Message::WriteBegin {
                file: file.into(),
                sentence: i,
                ticket,
            },
        );
        (c, r)
    }

    fn edit(&self, c: &mut Connection, k: u64, text: &str) -> Result<Message, WireError> {
        self.ask(
            c,
            Message::Edit {
                word_index: k,
                text: text.into(),
            },
        )
    }

    fn commit(&self, c: &mut Connection) -> FileState {
        match self.ask(c, Message::Commit {}).unwrap() {
            Message::Committed { state, .. } => state,
            other => panic!("{other:?}"),
        }
    }

    fn write(&self, file: &str, i: u64, k: u64, text: &str) -> FileState {
        let (mut c, r) = self.begin(file, i);
        r.unwrap();
        self.edit(&mut c, k, text).unwrap();
        self.commit(&mut c)
    }

    fn read_with(&self, file: &str, t: Ticket) -> Result<(String, Version), WireError> {
        let mut c = self.conn();
        let (size, version) = match self.ask(
            &mut c,
            Message::Read {
                file: file.into(),
                ticket: t,
            },
        )? {
            Message::ReadOk { size, version, .. } => (size, version),
            other => panic!("{other:?}"),
        };
        let mut body = Vec::new();
        loop {
            let f = c.recv().unwrap().unwrap();
            match f.msg {
                Message::Chunk {} => body.extend(f.body),
                Message::End {} => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(body.len() as u64, size);
        Ok((String::from_utf8(body).unwrap(), version))
    }

    fn read(&self, file: &str) -> Result<String, WireError> {
        self.read_with(file, self.ticket(file, TicketOp::Read))
            .map(|r| r.0)
    }
}

#[test]
fn read_write_undo_delete_through_the_client_port() {
    let cl = cluster(60_000);
    let created = cl.create("docs/a.txt");
    assert_eq!(
        created.version,
        Version {
            epoch: 7,
            counter: 1
        }
    );
    assert_eq!(cl.read("docs/a.txt").unwrap(), "");

    let s = cl.write("docs/a.txt", 0, 0, "Hello world.");
    assert_eq!(cl.nm.changed.recv_timeout(WAIT).unwrap(), s);
    cl.write("docs/a.txt", 1, 0, "Second one.");
    assert_eq!(cl.read("docs/a.txt").unwrap(), "Hello world. Second one.");

    // Two sessions on different sentences of one file; a third on a held sentence is refused.
    let (mut a, r) = cl.begin("docs/a.txt", 0);
    assert_eq!(
        r.unwrap(),
        Message::WriteOpened {
            text: "Hello world.".into()
        }
    );
    let (mut b, r) = cl.begin("docs/a.txt", 1);
    r.unwrap();
    let (_c, r) = cl.begin("docs/a.txt", 0);
    assert_eq!(r.unwrap_err().code, ErrorCode::Locked);
    assert_eq!(
        cl.edit(&mut a, 9, "x").unwrap_err().code,
        ErrorCode::Invalid
    );
    let m = cl.edit(&mut a, 1, "big. Very").unwrap();
    assert_eq!(
        m,
        Message::Sentence {
            text: "Hello big. Very world.".into()
        }
    );
    cl.edit(&mut b, 0, "Really,").unwrap();
    cl.commit(&mut a);
    let last = cl.commit(&mut b);
    assert_eq!(
        cl.read("docs/a.txt").unwrap(),
        "Hello big. Very world. Really, Second one."
    );
    assert_eq!(last.words, 7);

    // A copy behind the name server's record refuses to serve.
    let mut t = cl.ticket("docs/a.txt", TicketOp::Read);
    t.min_version = Some(Version {
        epoch: 99,
        counter: 1,
    });
    t.mac = cl.key.mac_hex(t.signing_string().as_bytes());
    assert_eq!(
        cl.read_with("docs/a.txt", t).unwrap_err().code,
        ErrorCode::Unavailable
    );

    // Undo restores the content before the last commit as a newer version.
    let mut c = cl.conn();
    let undo = Message::SsUndo {
        file: "docs/a.txt".into(),
        epoch: 7,
        ticket: cl.ticket("docs/a.txt", TicketOp::Undo),
    };
    match cl.ask(&mut c, undo).unwrap() {
        Message::FileStateReply { state } => assert!(state.version > last.version),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cl.read("docs/a.txt").unwrap(),
        "Hello big. Very world. Second one."
    );

    // DELETE is refused while a session is open, and works once it ends.
    let (held, r) = cl.begin("docs/a.txt", 0);
    r.unwrap();
    let delete = |cl: &Cluster| {
        let mut c = cl.conn();
        let m = Message::SsDelete {
            file: "docs/a.txt".into(),
            ticket: cl.ticket("docs/a.txt", TicketOp::Delete),
        };
        cl.ask(&mut c, m)
    };
    assert_eq!(delete(&cl).unwrap_err().code, ErrorCode::Locked);
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        match delete(&cl) {
            Ok(m) => {
                assert_eq!(m, Message::Done {});
                break;
            }
            Err(e) if e.code == ErrorCode::Locked && Instant::now() < deadline => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(cl.read("docs/a.txt").unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(delete(&cl).unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn tickets_are_checked() {
    let cl = cluster(60_000);
    cl.create("a.txt");
    let t = cl.ticket("a.txt", TicketOp::Read);
    cl.read_with("a.txt", t.clone()).unwrap();
    let replay = cl.read_with("a.txt", t).unwrap_err();
    assert_eq!(replay.code, ErrorCode::Unauthorized);
    let mut forged = cl.ticket("a.txt", TicketOp::Read);
    forged.user = "mallory".into();
    assert_eq!(
        cl.read_with("a.txt", forged).unwrap_err().code,
        ErrorCode::Unauthorized
    );
    let other_file = cl.ticket("b.txt", TicketOp::Read);
    let e = cl.read_with("a.txt", other_file).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthorized);
    let wrong_op = cl.ticket("a.txt", TicketOp::Write);
    assert_eq!(
        cl.read_with("a.txt", wrong_op).unwrap_err().code,
        ErrorCode::Unauthorized
    );
    let escape = cl.ticket("../x", TicketOp::Read);
    assert_eq!(
        cl.read_with("../x", escape).unwrap_err().code,
        ErrorCode::Invalid
    );
}

#[test]
fn garbage_is_refused_without_harm() {
    let cl = cluster(60_000);
    cl.create("a.txt");
    let mut keep = cl.conn();
    let expect_err = |bytes: &[u8], code: ErrorCode| {
        let c = cl.conn();
        let mut s = c.stream().try_clone().unwrap();
        let _ = s.write_all(bytes);
        let mut c = c;
        let f = c.recv().unwrap().unwrap();
        assert_eq!(f.msg.into_result().unwrap_err().code, code);
        assert!(
            matches!(c.recv(), Ok(None) | Err(_)),
            "closed after the error"
        );
    };
    expect_err(b"\x00\xff\x13garbage\xfe\n", ErrorCode::Invalid);
    expect_err(&vec![b'x'; 70 * 1024], ErrorCode::Limit);
    expect_err(
        b"{\"v\":1,\"op\":\"CHUNK\",\"len\":999999999,\"crc\":1}\n",
        ErrorCode::Limit,
    );
    // An unexpected but well-formed message is an error; the connection goes on.
    let e = cl.ask(&mut keep, Message::Commit {}).unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    let t = cl.ticket("a.txt", TicketOp::Read);
    let r = cl.ask(
        &mut keep,
        Message::Read {
            file: "a.txt".into(),
            ticket: t,
        },
    );
    assert!(matches!(r, Ok(Message::ReadOk { .. })));
}

#[test]
fn idle_session_releases_its_lock() {
    let cl = cluster(200);
    cl.create("a.txt");
    let (mut idle, r) = cl.begin("a.txt", 0);
    r.unwrap();
    let f = idle.recv().unwrap().unwrap();
    assert_eq!(f.msg.into_result().unwrap_err().code, ErrorCode::Timeout);
    let s = cl.write("a.txt", 0, 0, "Mine now.");
    assert_eq!(s.size, 9);
}

#[test]
fn stream_sends_words_then_end() {
    let cl = cluster(60_000);
    cl.create("a.txt");
    cl.write("a.txt", 0, 0, "one two three.");
    let mut c = cl.conn();
    c.send(
        &Message::Stream {
            file: "a.txt".into(),
            ticket: cl.ticket("a.txt", TicketOp::Stream),
        },
        &[],
    )
    .unwrap();
    let mut words = Vec::new();
    loop {
        match c.recv().unwrap().unwrap().msg {
            Message::Word { word } => words.push(word),
            Message::End {} => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(words, ["one", "two", "three."]);
}

#[test]
fn hand_edits_are_adopted_on_access_and_reported() {
    let cl = cluster(60_000);
    cl.create("a.txt");
    std::fs::write(cl._dir.path().join("s/files/a.txt"), "edited by hand.").unwrap();
    assert_eq!(cl.read("a.txt").unwrap(), "edited by hand.");
    let adopted = cl.nm.changed.recv_timeout(WAIT).unwrap();
    assert_eq!(adopted.file, "a.txt");
    assert_eq!(adopted.words, 3);
    assert!(
        adopted.version
            > Version {
                epoch: 7,
                counter: 1
            }
    );
}

#[test]
fn concurrent_sessions_on_one_file_all_commit() {
    let cl = Arc::new(cluster(60_000));
    cl.create("a.txt");
    const N: u64 = 8;
    for i in 0..N {
        cl.write("a.txt", i, 0, &format!("s{i}."));
    }
    let mut sessions = Vec::new();
    for i in 0..N {
        let (mut c, r) = cl.begin("a.txt", i);
        r.unwrap();
        // Every other session splits its sentence in two, shifting the ones after it.
        let text = if i % 2 == 0 {
            format!("x{i}. y{i}")
        } else {
            format!("z{i}")
        };
        cl.edit(&mut c, 0, &text).unwrap();
        sessions.push(c);
    }
    let barrier = Arc::new(std::sync::Barrier::new(N as usize));
    let handles: Vec<_> = sessions
        .into_iter()
        .map(|mut c| {
            let (cl, barrier) = (cl.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                cl.commit(&mut c)
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let text = cl.read("a.txt").unwrap();
    let want: Vec<String> = (0..N)
        .map(|i| {
            if i % 2 == 0 {
                format!("x{i}. y{i} s{i}.")
            } else {
                format!("z{i} s{i}.")
            }
        })
        .collect();
    assert_eq!(text, want.join(" "));
}

#[test]
fn commit_without_the_name_server_is_saved_but_unconfirmed() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nobody listening: the link stays down.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let nm_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let key = test_key();
    let ss = start(config(dir.path(), &nm_addr, &key)).unwrap();
    let cl = Cluster {
        _dir: dir,
        nm: fake_nm(),
        key,
        ss,
    };
    cl.create("a.txt");
    let (mut c, r) = cl.begin("a.txt", 0);
    r.unwrap();
    cl.edit(&mut c, 0, "Kept.").unwrap();
    let e = cl.ask(&mut c, Message::Commit {}).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(
        e.msg
            .starts_with("change saved on ss1 but not yet confirmed"),
        "{}",
        e.msg
    );
    assert_eq!(cl.read("a.txt").unwrap(), "Kept.");
}

#[test]
fn restart_registers_every_file_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("s/files/docs");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..250 {
        std::fs::write(files.join(format!("f{i}.txt")), format!("file {i}.")).unwrap();
    }
    let nm = fake_nm();
    let key = test_key();
    let ss = start(config(dir.path(), &nm.addr, &key)).unwrap();
    let list = nm.registered.recv_timeout(WAIT).unwrap();
    assert_eq!(list.len(), 250);
    assert!(list.iter().all(|f| f.owner.is_none() && f.words == 2));
    let first = list
        .iter()
        .find(|f| f.file == "docs/f7.txt")
        .unwrap()
        .clone();
    ss.shutdown();
    let ss = start(config(dir.path(), &nm.addr, &key)).unwrap();
    let again = nm.registered.recv_timeout(WAIT).unwrap();
    assert_eq!(again.len(), 250);
    let same = again.iter().find(|f| f.file == "docs/f7.txt").unwrap();
    assert_eq!(
        same.version, first.version,
        "an unchanged file keeps its version"
    );
    drop(ss);
}

#[test]
fn connections_beyond_the_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nm = fake_nm();
    let key = test_key();
    let ss = start(Config {
        max_connections: 2,
        ..config(dir.path(), &nm.addr, &key)
    })
    .unwrap();
    let addr = ss.addr().to_string();
    let _a = Connection::connect(&addr, WAIT).unwrap();
    let _b = Connection::connect(&addr, WAIT).unwrap();
    let mut c = Connection::connect(&addr, WAIT).unwrap();
    c.set_timeout(Some(WAIT)).unwrap();
    let f = c.recv().unwrap().unwrap();
    assert_eq!(f.msg.into_result().unwrap_err().code, ErrorCode::Limit);
}

#[test]
fn a_file_removed_by_hand_is_reported_on_access() {
    let cl = cluster(60_000);
    cl.create("gone.txt");
    std::fs::remove_file(cl._dir.path().join("s/files/gone.txt")).unwrap();
    assert_eq!(cl.read("gone.txt").unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(cl.nm.removed.recv_timeout(WAIT).unwrap(), "gone.txt");
}
