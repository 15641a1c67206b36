//! In-process tests of the storage server against a tiny fake name server.

use super::*;
use crate::protocol::{
    CheckpointInfo, Connection, ErrorCode, FileState, Message, Ticket, TicketOp, Version, WireError,
};
use crate::ss::*;
use crossbeam_channel::{unbounded, Receiver};
use std::io::Write;
use std::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

mod batch;

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
                let mut backup = false;
                while let Ok(Some(f)) = c.recv() {
                    let reply = match f.msg {
                        Message::Register { name, .. } => {
                            // Like the real name server's naming rule: X_backup backs up X.
                            backup = name.ends_with("_backup");
                            None
                        }
                        Message::FileBatch { files } => {
                            list.extend(files);
                            None
                        }
                        Message::RegisterEnd {} => {
                            let _ = reg_tx.send(std::mem::take(&mut list));
                            Some(Message::Registered {
                                epoch: 7,
                                heartbeat_interval_ms: 50,
                                backup,
                                lease_ms: 60_000,
                            })
                        }
                        Message::Heartbeat { seq, .. } => Some(Message::HeartbeatAck {
                            partner: None,
                            seq,
                            epoch: 0,
                            writer: !backup,
                            lease_ms: 60_000,
                        }),
                        Message::Changed {
                            staged: _,
                            pending: _,
                            id,
                            state,
                        } => {
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

/// Fields drop in order: the server stops before its directory is removed.
struct Cluster {
    ss: Running,
    nm: FakeNm,
    key: ClusterKey,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path, nm_addr: &str, key: &ClusterKey) -> Config {
    Config {
        nm_addr: nm_addr.to_string(),
        host: "127.0.0.1".into(),
        advertise_host: None,
        client_port: 0,
        storage: dir.join("s"),
        name: "ss1".into(),
        backup_of: None,
        heartbeat_interval_ms: 50,
        key: key.clone(),
        lock_timeout_ms: 60_000,
        max_connections: 16,
        idle_timeout_ms: 60_000,
        fault_flip_put: false,
        fault_stage: None,
        journal_checkpoint_ms: 20,
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
    // Changes need the lease REGISTERED grants; wait until the link has taken it.
    let deadline = std::time::Instant::now() + WAIT;
    while !ss.is_registered() {
        assert!(std::time::Instant::now() < deadline, "never registered");
        std::thread::sleep(Duration::from_millis(2));
    }
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
            counter: None,
            ticket: t,
        };
        match self.ask(&mut c, m).unwrap() {
            Message::FileStateReply { state } => state,
            other => panic!("{other:?}"),
        }
    }

    /// Sends `m` with `body`; the reply and its body as text.
    fn ask_text(
        &self,
        c: &mut Connection,
        m: Message,
        body: &[u8],
    ) -> Result<(Message, String), WireError> {
        c.send(&m, body).unwrap();
        let f = c.recv().unwrap().unwrap();
        Ok((f.msg.into_result()?, String::from_utf8(f.body).unwrap()))
    }

    /// WRITE_BEGIN: the sentence's text as WRITE_OPENED carries it.
    fn begin(&self, file: &str, i: u64) -> (Connection, Result<String, WireError>) {
        let mut c = self.conn();
        let ticket = self.ticket(file, TicketOp::Write);
        let r = self.ask_text(
            &mut c,
            Message::WriteBegin {
                file: file.into(),
                sentence: i,
                ticket,
            },
            &[],
        );
        let r = r.map(|(m, text)| {
            assert_eq!(m, Message::WriteOpened {});
            text
        });
        (c, r)
    }

    /// EDIT: the sentence as SENTENCE carries it.
    fn edit(&self, c: &mut Connection, k: u64, text: &str) -> Result<String, WireError> {
        let (m, text) = self.ask_text(c, Message::Edit { word_index: k }, text.as_bytes())?;
        assert_eq!(m, Message::Sentence {});
        Ok(text)
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
    assert_eq!(r.unwrap(), "Hello world.");
    let (mut b, r) = cl.begin("docs/a.txt", 1);
    r.unwrap();
    let (_c, r) = cl.begin("docs/a.txt", 0);
    assert_eq!(r.unwrap_err().code, ErrorCode::Locked);
    assert_eq!(
        cl.edit(&mut a, 9, "x").unwrap_err().code,
        ErrorCode::Invalid
    );
    let m = cl.edit(&mut a, 1, "big. Very").unwrap();
    assert_eq!(m, "Hello big. Very world.");
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
fn a_repeated_ss_create_is_answered_as_the_first_only_while_the_file_is_as_it_made_it() {
    let cl = cluster(60_000);
    let first = cl.create("a.txt");
    let again = |owner: &str, counter: Option<u64>| {
        let m = Message::SsCreate {
            file: "a.txt".into(),
            owner: owner.into(),
            epoch: 7,
            counter,
            ticket: cl.ticket("a.txt", TicketOp::Create),
        };
        cl.ask(&mut cl.conn(), m)
    };
    match again("alice", None).unwrap() {
        Message::FileStateReply { state } => assert_eq!(state, first),
        other => panic!("{other:?}"),
    }
    assert_eq!(again("bob", None).unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(
        again("alice", Some(3)).unwrap_err().code,
        ErrorCode::Conflict
    );
    cl.write("a.txt", 0, 0, "Hello.");
    assert_eq!(again("alice", None).unwrap_err().code, ErrorCode::Conflict);
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
        let f = c.recv().unwrap().unwrap();
        match f.msg {
            Message::Word {} => words.push(String::from_utf8(f.body).unwrap()),
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
fn a_server_cut_off_from_the_name_server_takes_no_changes() {
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
    // Without a lease from the name server nothing may change here: another member may be
    // writing this pair's files in a newer epoch.
    let mut c = cl.conn();
    let m = Message::SsCreate {
        file: "a.txt".into(),
        owner: "alice".into(),
        epoch: 7,
        counter: None,
        ticket: cl.ticket("a.txt", TicketOp::Create),
    };
    let e = cl.ask(&mut c, m).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.msg.contains("holds no write lease"), "{}", e.msg);
    assert!(!dir_has(&cl, "a.txt"));
}

fn dir_has(cl: &Cluster, file: &str) -> bool {
    cl._dir.path().join("s/files").join(file).exists()
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

// ----- replication and upload -----

/// A second storage server on the same fake name server and key.
struct Peer {
    ss: Running,
    name: String,
    key: ClusterKey,
    dir: tempfile::TempDir,
}

fn peer(cl: &Cluster, name: &str, fault_flip_put: bool) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let ss = start(Config {
        name: name.into(),
        fault_flip_put,
        ..config(dir.path(), &cl.nm.addr, &cl.key)
    })
    .unwrap();
    cl.nm.registered.recv_timeout(WAIT).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !ss.is_registered() {
        assert!(
            std::time::Instant::now() < deadline,
            "peer never registered"
        );
        thread::yield_now();
    }
    Peer {
        dir,
        name: name.into(),
        key: cl.key.clone(),
        ss,
    }
}

impl Peer {
    fn conn(&self) -> Connection {
        let c = Connection::connect(&self.ss.addr().to_string(), WAIT).unwrap();
        c.set_timeout(Some(WAIT)).unwrap();
        c
    }

    fn ticket(&self, file: &str, op: TicketOp) -> Ticket {
        let user = if matches!(op, TicketOp::Store | TicketOp::Fetch) {
            "@nm"
        } else {
            "alice"
        };
        self.key.mint(user, file, op, &self.name, None)
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("s")
    }
}

fn ask(c: &mut Connection, m: Message) -> Result<Message, WireError> {
    c.send(&m, &[]).unwrap();
    c.recv().unwrap().unwrap().msg.into_result()
}

fn peek(dst: &Peer, file: &str) -> (Option<FileState>, Vec<Version>) {
    let mut c = dst.conn();
    let t = dst.ticket(file, TicketOp::Store);
    match ask(
        &mut c,
        Message::PeekFile {
            file: file.into(),
            ticket: t,
        },
    )
    .unwrap()
    {
        Message::Held { state, blobs, .. } => (state, blobs),
        other => panic!("{other:?}"),
    }
}

/// What a replication worker does: PEEK the target, GET from the source with what the target
/// has, and relay the stream frame by frame into PUT on the target. Returns the entries sent
/// and the target's answer.
fn relay(
    cl: &Cluster,
    dst: &Peer,
    file: &str,
) -> (Vec<Version>, usize, Result<FileState, WireError>) {
    let (_, have) = peek(dst, file);
    let mut src = cl.conn();
    let t = cl.key.mint("@nm", file, TicketOp::Fetch, "ss1", None);
    let (state, undo, sent) = match ask(
        &mut src,
        Message::GetFileContent {
            basis: None,
            staged: None,
            file: file.into(),
            have,
            have_checkpoints: Vec::new(),
            ticket: t,
        },
    )
    .unwrap()
    {
        Message::FileContent {
            state, undo, sent, ..
        } => (state, undo, sent),
        other => panic!("{other:?}"),
    };
    let mut out = dst.conn();
    out.send(
        &Message::PutFileContent {
            basis: None,
            staged: None,
            file: file.into(),
            state,
            undo,
            sent: sent.clone(),
            checkpoints: Vec::new(),
            sent_checkpoints: Vec::new(),
            ticket: dst.ticket(file, TicketOp::Store),
        },
        &[],
    )
    .unwrap();
    let mut chunks = 0;
    for _ in 0..=sent.len() {
        loop {
            let f = src.recv().unwrap().unwrap();
            assert!(f.body.len() <= crate::protocol::frame::CHUNK_BYTES);
            let end = matches!(f.msg, Message::End {});
            chunks += usize::from(!end);
            out.send(&f.msg, &f.body).unwrap();
            if end {
                break;
            }
        }
    }
    let reply = out.recv().unwrap().unwrap().msg.into_result();
    let reply = reply.map(|m| match m {
        Message::FileStateReply { state } => state,
        other => panic!("{other:?}"),
    });
    (sent, chunks, reply)
}

fn upload(c: &mut Connection, file: &str, bytes: &[u8], t: Ticket) -> Result<Message, WireError> {
    c.send(
        &Message::Upload {
            file: file.into(),
            size: bytes.len() as u64,
            checksum: crc32c::crc32c(bytes),
            ticket: t,
        },
        &[],
    )
    .unwrap();
    for piece in bytes.chunks(crate::protocol::frame::CHUNK_BYTES) {
        c.send(&Message::Chunk {}, piece).unwrap();
    }
    c.send(&Message::End {}, &[]).unwrap();
    c.recv().unwrap().unwrap().msg.into_result()
}

fn dir_names(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

fn big_text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(format!("word{i} é ").as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

#[test]
fn replication_relays_content_and_missing_history_only() {
    let cl = cluster(60_000);
    let dst = peer(&cl, "ss1_backup", false);
    let src_root = cl._dir.path().join("s");
    cl.create("a.txt");
    cl.write("a.txt", 0, 0, "one.");
    cl.write("a.txt", 1, 0, "two.");
    let big = big_text(5 * 1024 * 1024 + 123);
    let mut c = cl.conn();
    let up = upload(&mut c, "a.txt", &big, cl.ticket("a.txt", TicketOp::Upload)).unwrap();
    let Message::Committed { state: up, .. } = up else {
        panic!("{up:?}")
    };
    assert_eq!(peek(&dst, "a.txt"), (None, Vec::new()));

    let (sent, chunks, got) = relay(&cl, &dst, "a.txt");
    assert_eq!(sent.len(), 3, "create, one, two: all missing");
    assert!(
        chunks >= 6,
        "several MiB travel as several chunks ({chunks})"
    );
    let got = got.unwrap();
    assert_eq!(got, up, "the backup serves the primary's state");
    assert_eq!(
        std::fs::read(dst.root().join("files/a.txt")).unwrap(),
        big,
        "content byte for byte"
    );
    assert_eq!(
        dir_names(&dst.root().join("undo")),
        dir_names(&src_root.join("undo"))
    );
    assert!(dir_names(&dst.root().join("tmp")).is_empty());

    // Again: idempotent, nothing new sent.
    let (sent, _, again) = relay(&cl, &dst, "a.txt");
    assert!(sent.is_empty());
    assert_eq!(again.unwrap(), up);

    // One more change: only its one new history entry travels.
    let mut c = cl.conn();
    let small = b"small again.".to_vec();
    upload(
        &mut c,
        "a.txt",
        &small,
        cl.ticket("a.txt", TicketOp::Upload),
    )
    .unwrap();
    let (sent, _, got) = relay(&cl, &dst, "a.txt");
    assert_eq!(sent, vec![up.version]);
    let got = got.unwrap();
    assert_eq!(
        std::fs::read(dst.root().join("files/a.txt")).unwrap(),
        small
    );
    assert_eq!(
        dir_names(&dst.root().join("undo")),
        dir_names(&src_root.join("undo"))
    );

    // The backup's history works like the primary's once it is promoted (here: read it).
    let (held, blobs) = peek(&dst, "a.txt");
    assert_eq!(held.unwrap(), got);
    assert_eq!(blobs.len(), 4);
}

fn put(
    dst: &Peer,
    c: &mut Connection,
    state: &FileState,
    bytes: &[u8],
) -> Result<Message, WireError> {
    c.send(
        &Message::PutFileContent {
            basis: None,
            staged: None,
            file: state.file.clone(),
            state: state.clone(),
            undo: Vec::new(),
            sent: Vec::new(),
            checkpoints: Vec::new(),
            sent_checkpoints: Vec::new(),
            ticket: dst.ticket(&state.file, TicketOp::Store),
        },
        &[],
    )
    .unwrap();
    for piece in bytes.chunks(1000) {
        c.send(&Message::Chunk {}, piece).unwrap();
    }
    c.send(&Message::End {}, &[]).unwrap();
    c.recv().unwrap().unwrap().msg.into_result()
}

fn state_of(file: &str, counter: u64, bytes: &[u8]) -> FileState {
    let text = String::from_utf8_lossy(bytes);
    FileState {
        file: file.into(),
        version: Version { epoch: 7, counter },
        checksum: crc32c::crc32c(bytes),
        size: bytes.len() as u64,
        words: crate::ss::document::count_words(&text),
        chars: crate::ss::document::count_chars(&text),
        modified_ms: 1,
        owner: Some("alice".into()),
    }
}

#[test]
fn put_ignores_older_versions_and_rejects_corruption() {
    let cl = cluster(60_000);
    let dst = peer(&cl, "ss1_backup", false);
    let mut c = dst.conn();
    let v5 = state_of("b.txt", 5, b"version five.");
    let Message::FileStateReply { state } = put(&dst, &mut c, &v5, b"version five.").unwrap()
    else {
        panic!()
    };
    assert_eq!(state, v5);
    // An older version arriving late is drained and answered with what is held.
    let v3 = state_of("b.txt", 3, b"three.");
    let Message::FileStateReply { state } = put(&dst, &mut c, &v3, b"three.").unwrap() else {
        panic!()
    };
    assert_eq!(state, v5);
    assert_eq!(
        std::fs::read(dst.root().join("files/b.txt")).unwrap(),
        b"version five."
    );
    // A stream whose bytes disagree with its checksum installs nothing; the connection stays
    // usable for the retry.
    let v6 = state_of("b.txt", 6, b"six!");
    let e = put(&dst, &mut c, &v6, b"sIx!").unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    let e = put(&dst, &mut c, &state_of("b.txt", 6, b"sixty"), b"six").unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid, "short stream");
    assert_eq!(peek(&dst, "b.txt").0.unwrap(), v5);
    assert!(dir_names(&dst.root().join("tmp")).is_empty());
    let Message::FileStateReply { state } = put(&dst, &mut c, &v6, b"six!").unwrap() else {
        panic!()
    };
    assert_eq!(state, v6);
}

#[test]
fn fault_hook_corrupts_only_the_first_put() {
    let cl = cluster(60_000);
    let dst = peer(&cl, "ss1_backup", true);
    let mut c = dst.conn();
    let v1 = state_of("c.txt", 1, b"hello.");
    let e = put(&dst, &mut c, &v1, b"hello.").unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    assert!(peek(&dst, "c.txt").0.is_none());
    let Message::FileStateReply { state } = put(&dst, &mut c, &v1, b"hello.").unwrap() else {
        panic!()
    };
    assert_eq!(state, v1);
}

#[test]
fn a_transfer_cut_mid_body_leaves_nothing() {
    let cl = cluster(60_000);
    let dst = peer(&cl, "ss1_backup", false);
    let body = vec![b'x'; 3 * 1024 * 1024];
    let st = state_of("d.txt", 2, &body);
    {
        let mut c = dst.conn();
        c.send(
            &Message::PutFileContent {
                basis: None,
                staged: None,
                file: "d.txt".into(),
                state: st.clone(),
                undo: Vec::new(),
                sent: Vec::new(),
                checkpoints: Vec::new(),
                sent_checkpoints: Vec::new(),
                ticket: dst.ticket("d.txt", TicketOp::Store),
            },
            &[],
        )
        .unwrap();
        c.send(&Message::Chunk {}, &body[..1024 * 1024]).unwrap();
        // Wait until the temp file exists, then die.
        let deadline = std::time::Instant::now() + WAIT;
        while dir_names(&dst.root().join("tmp")).is_empty() {
            assert!(std::time::Instant::now() < deadline);
            thread::yield_now();
        }
    }
    let deadline = std::time::Instant::now() + WAIT;
    while !dir_names(&dst.root().join("tmp")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "temp file left behind"
        );
        thread::yield_now();
    }
    assert!(peek(&dst, "d.txt").0.is_none());
    assert!(!dst.root().join("files/d.txt").exists());
}

#[test]
fn upload_takes_binary_bytes_and_keeps_history() {
    let cl = cluster(60_000);
    cl.create("bin.dat");
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    bytes.extend_from_slice(&[0xe2, 0x82]); // a cut UTF-8 sequence at the very end
    let mut c = cl.conn();
    let r = upload(
        &mut c,
        "bin.dat",
        &bytes,
        cl.ticket("bin.dat", TicketOp::Upload),
    )
    .unwrap();
    let Message::Committed { state, copies } = r else {
        panic!("{r:?}")
    };
    assert_eq!(copies, None);
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(state.size, bytes.len() as u64);
    assert_eq!(state.checksum, crc32c::crc32c(&bytes));
    assert_eq!(state.words, crate::ss::document::count_words(&text));
    assert_eq!(state.chars, crate::ss::document::count_chars(&text));
    assert_eq!(cl.nm.changed.recv_timeout(WAIT).unwrap(), state);
    assert_eq!(
        std::fs::read(cl._dir.path().join("s/files/bin.dat")).unwrap(),
        bytes
    );
    // A bad checksum changes nothing, and the connection goes on.
    let mut wrong = bytes.clone();
    wrong[0] ^= 1;
    c.send(
        &Message::Upload {
            file: "bin.dat".into(),
            size: wrong.len() as u64,
            checksum: crc32c::crc32c(&bytes),
            ticket: cl.ticket("bin.dat", TicketOp::Upload),
        },
        &[],
    )
    .unwrap();
    c.send(&Message::Chunk {}, &wrong).unwrap();
    c.send(&Message::End {}, &[]).unwrap();
    let e = c.recv().unwrap().unwrap().msg.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    // A copy older than the name server's record takes no upload (the bytes are drained).
    let ahead = Version {
        epoch: 7,
        counter: state.version.counter + 1,
    };
    let t = cl
        .key
        .mint("alice", "bin.dat", TicketOp::Upload, "ss1", Some(ahead));
    let e = upload(&mut c, "bin.dat", b"late", t).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    // Upload of a file the server does not hold yet creates it, owned by the uploader.
    let r = upload(
        &mut c,
        "new.bin",
        b"\x00\x01",
        cl.ticket("new.bin", TicketOp::Upload),
    );
    let Message::Committed { state, .. } = r.unwrap() else {
        panic!()
    };
    assert_eq!(state.owner.as_deref(), Some("alice"));
    // UNDO goes back to the empty file the upload replaced.
    let mut c = cl.conn();
    let t = cl.ticket("bin.dat", TicketOp::Undo);
    let r = cl.ask(
        &mut c,
        Message::SsUndo {
            file: "bin.dat".into(),
            epoch: 7,
            ticket: t,
        },
    );
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(cl.read("bin.dat").unwrap(), "");
}

#[test]
fn a_backup_refuses_client_writes() {
    let cl = cluster(60_000);
    let dst = peer(&cl, "ss1_backup", false);
    let mut c = dst.conn();
    let v1 = state_of("e.txt", 1, b"held.");
    put(&dst, &mut c, &v1, b"held.").unwrap();
    let refused = |r: Result<Message, WireError>| {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert_eq!(e.msg, "ss1_backup is a backup; writes go to its primary");
    };
    refused(ask(
        &mut c,
        Message::WriteBegin {
            file: "e.txt".into(),
            sentence: 0,
            ticket: dst.ticket("e.txt", TicketOp::Write),
        },
    ));
    refused(upload(
        &mut c,
        "e.txt",
        b"new bytes",
        dst.ticket("e.txt", TicketOp::Upload),
    ));
    refused(ask(
        &mut c,
        Message::SsCreate {
            file: "f.txt".into(),
            owner: "alice".into(),
            epoch: 7,
            counter: None,
            ticket: dst.ticket("f.txt", TicketOp::Create),
        },
    ));
    refused(ask(
        &mut c,
        Message::SsUndo {
            file: "e.txt".into(),
            epoch: 7,
            ticket: dst.ticket("e.txt", TicketOp::Undo),
        },
    ));
    // Reads and deletes stay allowed.
    let r = ask(
        &mut c,
        Message::Read {
            file: "e.txt".into(),
            ticket: dst.ticket("e.txt", TicketOp::Read),
        },
    );
    assert!(matches!(r, Ok(Message::ReadOk { size: 5, .. })), "{r:?}");
    let mut c = dst.conn();
    let r = ask(
        &mut c,
        Message::SsDelete {
            file: "e.txt".into(),
            ticket: dst.ticket("e.txt", TicketOp::Delete),
        },
    );
    assert!(matches!(r, Ok(Message::Done {})), "{r:?}");
}

/// Bytes in the store's journal logs under a test cluster's directory.
fn journal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("s/journal"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn the_store_journal_is_checkpointed_in_the_background_and_at_shutdown() {
    // Every 20 ms (the tests' period): a CREATE's entry is gone soon after.
    let cl = cluster(60_000);
    cl.create("j.txt");
    let deadline = std::time::Instant::now() + WAIT;
    while journal_bytes(cl._dir.path()) > 0 {
        assert!(std::time::Instant::now() < deadline, "never checkpointed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // With a period longer than the test, the clean stop empties it.
    let dir = tempfile::tempdir().unwrap();
    let nm = fake_nm();
    let key = test_key();
    let ss = start(Config {
        journal_checkpoint_ms: 3_600_000,
        ..config(dir.path(), &nm.addr, &key)
    })
    .unwrap();
    nm.registered.recv_timeout(WAIT).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !ss.is_registered() {
        assert!(std::time::Instant::now() < deadline, "never registered");
        std::thread::sleep(Duration::from_millis(2));
    }
    let cl = Cluster {
        _dir: dir,
        nm,
        key,
        ss,
    };
    cl.create("k.txt");
    assert!(journal_bytes(cl._dir.path()) > 0);
    let Cluster { _dir: dir, ss, .. } = cl;
    ss.shutdown();
    assert_eq!(journal_bytes(dir.path()), 0);
}
