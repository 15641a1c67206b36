//! The client loop against scripted name and storage servers on loopback: exact output lines,
//! exit statuses, write sessions, streams and reconnects.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use super::*;
use crate::protocol::*;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

/// Frames to send in answer to one request.
type Replies = Vec<(Message, Vec<u8>)>;

/// Replies to one request, and whether to close the connection after sending them.
type Handler = dyn Fn(&Message, &[u8]) -> (Replies, bool) + Send + Sync;

/// Serves connections one after another with `handler` until the test process ends.
fn serve(handler: Box<Handler>) -> u16 {
    serve_counted(handler).0
}

/// [`serve`], also counting the connections accepted.
fn serve_counted(handler: Box<Handler>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut c = Connection::new(stream);
            while let Ok(Some(f)) = c.recv() {
                let (replies, close) = handler(&f.msg, &f.body);
                for (m, body) in replies {
                    let _ = c.send(&m, &body);
                }
                if close {
                    break;
                }
            }
        }
    });
    (port, accepted)
}

fn ticket(file: &str) -> Ticket {
    Ticket {
        user: "alice".into(),
        file: file.into(),
        op: TicketOp::Read,
        ss: "ss1".into(),
        exp_ms: 0,
        nonce: "00".into(),
        min_version: None,
        epoch: None,
        mac: "00".into(),
    }
}

fn one(m: Message) -> (Replies, bool) {
    (vec![(m, Vec::new())], false)
}

fn close() -> (Replies, bool) {
    (Vec::new(), true)
}

fn wire_err(code: ErrorCode, msg: &str) -> (Replies, bool) {
    one(Message::Err {
        code,
        msg: msg.into(),
    })
}

/// A name server that knows one storage server at `ss_port` (0: none).
fn fake_nm(ss_port: u16) -> u16 {
    serve(Box::new(nm_reply(ss_port)))
}

/// How [`fake_nm`] answers one request.
fn nm_reply(ss_port: u16) -> impl Fn(&Message, &[u8]) -> (Replies, bool) + Send + Sync {
    move |m, _| match m {
        Message::Hello { .. } => one(Message::Challenge { nonce: "00".into() }),
        Message::Prove { .. } => one(Message::Welcome {
            user: "alice".into(),
            lease_ms: None,
        }),
        Message::Create { file } if file == "dup" => wire_err(ErrorCode::Conflict, "dup exists"),
        Message::Create { file } | Message::Delete { file } if file == "deg" => {
            one(Message::DoneDegraded {
                copies: 1,
                total: 2,
            })
        }
        Message::Status {} => one(status_reply()),
        Message::Create { .. } | Message::Delete { .. } | Message::RemAccess { .. } => {
            one(Message::Done {})
        }
        Message::Undo { .. } => wire_err(ErrorCode::NoUndo, "nothing to undo"),
        Message::AddAccess { user, .. } => one(Message::AccessGranted {
            new_user: user == "newbie",
        }),
        Message::ListUsers {} => one(Message::Users {
            users: vec!["alice".into(), "bob".into()],
            more: false,
        }),
        Message::View { .. } => one(Message::FileList {
            files: vec![],
            more: false,
        }),
        Message::Exec { .. } => (
            vec![(
                Message::ExecOutput {
                    exit_code: Some(0),
                    truncated: false,
                },
                b"hi".to_vec(),
            )],
            false,
        ),
        Message::Info { file } if file == "gone" => close(),
        Message::Locate { file, .. } => one(Message::Located {
            ss: "ss1".into(),
            addr: format!("127.0.0.1:{ss_port}"),
            ticket: ticket(file),
        }),
        _ => wire_err(ErrorCode::Invalid, "unexpected"),
    }
}

/// A STATUS_REPLY with one pair and one unpaired primary.
fn status_reply() -> Message {
    let server = |name: &str, role: &str| ServerStatus {
        name: name.into(),
        addr: "127.0.0.1:1".into(),
        up: true,
        role: role.into(),
        files: 1,
        last_heartbeat_ms: None,
    };
    let pair = |primary: &str, backup: Option<&str>| PairStatus {
        primary: primary.into(),
        backup: backup.map(str::to_string),
        state: if backup.is_some() {
            "ACTIVE"
        } else {
            "UNPAIRED"
        }
        .into(),
        epoch: 1,
        lag_jobs: 0,
        lag_bytes: 0,
        lag_ms: 0,
        writer: None,
        sync_done: 0,
        sync_total: 0,
    };
    Message::StatusReply {
        servers: vec![
            server("ss1", "primary"),
            server("ss1_backup", "backup"),
            server("ss2", "unpaired"),
        ],
        pairs: vec![pair("ss1", Some("ss1_backup")), pair("ss2", None)],
        queue_depth: 0,
        failed: vec![],
        failed_total: 0,
        replication: "sync".into(),
    }
}

/// Binary content of `n` bytes (every byte value occurs).
fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 256) as u8).collect()
}

/// Size of the file `big` on the fake storage server: more than two chunks.
const BIG_BYTES: usize = frame::CHUNK_BYTES * 2 + 3;

/// READ's answer for `content`, cut into CHUNK frames; `crc` overrides the announced checksum.
fn read_replies(content: &[u8], crc: Option<u32>) -> Replies {
    let ok = Message::ReadOk {
        size: content.len() as u64,
        version: Version::default(),
        checksum: crc.unwrap_or_else(|| crc32c::crc32c(content)),
    };
    let mut r = vec![(ok, vec![])];
    for c in content.chunks(frame::CHUNK_BYTES) {
        r.push((Message::Chunk {}, c.to_vec()));
    }
    r.push((Message::End {}, vec![]));
    r
}

/// A storage server holding `hello world.` in every file; file `cut` breaks streams, `big`
/// is binary and several chunks long, `bad` fails its checksum.
fn fake_ss() -> u16 {
    serve(Box::new(ss_reply))
}

/// How [`fake_ss`] answers one request.
fn ss_reply(m: &Message, body: &[u8]) -> (Replies, bool) {
    match m {
        Message::Read { file, .. } if file == "big" => {
            (read_replies(&binary(BIG_BYTES), None), false)
        }
        Message::Read { file, .. } if file == "bad" => (read_replies(b"corrupt", Some(1)), false),
        Message::Read { .. } => {
            let content = b"hello world.";
            let ok = Message::ReadOk {
                size: content.len() as u64,
                version: Version::default(),
                checksum: crc32c::crc32c(content),
            };
            let replies = vec![
                (ok, vec![]),
                (Message::Chunk {}, content[..5].to_vec()),
                (Message::Chunk {}, content[5..].to_vec()),
                (Message::End {}, vec![]),
            ];
            (replies, false)
        }
        Message::Stream { file, .. } => {
            let mut r: Replies = ["hello", "world."]
                .iter()
                .map(|w| (Message::Word {}, w.as_bytes().to_vec()))
                .collect();
            if file == "cut" {
                // One word, then the connection drops without END.
                r.truncate(1);
                return (r, true);
            }
            r.push((Message::End {}, vec![]));
            (r, false)
        }
        Message::WriteBegin { .. } => one(Message::WriteOpened {}),
        Message::Edit { word_index } => {
            if *word_index > 0 {
                wire_err(ErrorCode::Invalid, "Word index out of range")
            } else {
                (vec![(Message::Sentence {}, body.to_vec())], false)
            }
        }
        Message::Commit {} => one(Message::Committed {
            state: FileState {
                file: "a".into(),
                version: Version::default(),
                checksum: 0,
                size: 0,
                words: 0,
                chars: 0,
                modified_ms: 0,
                owner: None,
            },
            copies: None,
        }),
        _ => close(),
    }
}

/// What an upload storage server received: the bytes of each completed upload, and how many
/// uploads were abandoned before END.
#[derive(Default)]
struct Uploads {
    done: Vec<Vec<u8>>,
    abandoned: usize,
}

/// A storage server taking UPLOADs; it answers COMMITTED with `copies: Some(1)` for `deg`.
fn fake_upload_ss(uploads: std::sync::Arc<std::sync::Mutex<Uploads>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut c = Connection::new(stream);
            let Ok(Some(Frame {
                msg:
                    Message::Upload {
                        file,
                        size,
                        checksum,
                        ..
                    },
                ..
            })) = c.recv()
            else {
                continue;
            };
            let mut got = Vec::new();
            let ended = loop {
                match c.recv() {
                    Ok(Some(f)) if f.msg == (Message::Chunk {}) => got.extend(f.body),
                    Ok(Some(f)) if f.msg == (Message::End {}) => break true,
                    _ => break false,
                }
            };
            if !ended {
                uploads.lock().unwrap().abandoned += 1;
                continue;
            }
            assert_eq!((got.len() as u64, crc32c::crc32c(&got)), (size, checksum));
            uploads.lock().unwrap().done.push(got);
            let state = FileState {
                file: file.clone(),
                version: Version::default(),
                checksum,
                size,
                words: 0,
                chars: 0,
                modified_ms: 0,
                owner: None,
            };
            let copies = (file == "deg").then_some(1);
            let _ = c.send(&Message::Committed { state, copies }, b"");
        }
    });
    port
}

fn opts(port: u16, key_dir: &std::path::Path) -> Options {
    Options {
        nm_host: "127.0.0.1".into(),
        nm_port: port,
        username: "alice".into(),
        user_key_file: Some(key_dir.join("alice.key")),
        wait: None,
    }
}

fn run_script(port: u16, script: &str) -> (String, i32) {
    let mut input = PipedLines::new(script.as_bytes());
    let mut out = Vec::new();
    let keys = tempfile::tempdir().unwrap();
    let status = run_with(&opts(port, keys.path()), &mut input, &mut out);
    (String::from_utf8(out).unwrap(), status)
}

#[test]
fn name_server_commands_print_the_contract_lines() {
    let nm = fake_nm(0);
    let (out, status) = run_script(
        nm,
        "create a.txt\n\nADDACCESS -W a.txt bob\nADDACCESS -R a.txt newbie\n\
         REMACCESS a.txt bob\nDELETE a.txt\nLIST\nVIEW -l\nEXEC s.sh\nEXIT\nLIST\n",
    );
    assert_eq!(
        out,
        "File Created Successfully!\n\
         Access granted successfully!\n\
         Access granted successfully!\n\
         Note: user 'newbie' has not connected yet; the grant applies when they do.\n\
         Access removed successfully!\n\
         File deleted successfully!\n\
         --> alice\n--> bob\n\
         No files found.\n\
         hi\n"
    );
    assert_eq!(status, 0);
}

#[test]
fn failures_print_errors_and_exit_1() {
    let nm = fake_nm(0);
    let (out, status) = run_script(nm, "CREATE dup\nUNDO a\nfoo\nREAD\n");
    assert_eq!(
        out,
        "ERROR [CONFLICT]: dup exists\n\
         ERROR [NO_UNDO]: nothing to undo\n\
         ERROR [INVALID]: unknown command 'foo' (type HELP)\n\
         ERROR [INVALID]: usage: READ <file>\n"
    );
    assert_eq!(status, 1);
}

#[test]
fn read_and_stream_go_to_the_storage_server() {
    let nm = fake_nm(fake_ss());
    let (out, status) = run_script(nm, "READ a\nSTREAM a\n");
    assert_eq!(out, "hello world.\nhello world.\n");
    assert_eq!(status, 0);
}

#[test]
fn commands_to_one_storage_server_share_a_kept_connection() {
    let (ss, accepted) = serve_counted(Box::new(ss_reply));
    let nm = fake_nm(ss);
    let (out, status) = run_script(
        nm,
        "READ a\nWRITE a 0\n0 Hello.\nETIRW\nREAD a\nSTREAM a\nWRITE a 0\n0 Bye.\nETIRW\n",
    );
    assert_eq!(
        out,
        "hello world.\nSentence: Hello.\nWrite Successful!\nhello world.\nhello world.\n\
         Sentence: Bye.\nWrite Successful!\n"
    );
    assert_eq!(status, 0);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn a_kept_connection_its_server_closed_is_replaced() {
    // The server closes every connection once it has answered one request.
    let (ss, accepted) = serve_counted(Box::new(|m, body| (ss_reply(m, body).0, true)));
    let nm = fake_nm(ss);
    let (out, status) = run_script(nm, "READ a\nREAD a\nSTREAM a\n");
    assert_eq!(out, "hello world.\nhello world.\nhello world.\n");
    assert_eq!(status, 0);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn a_request_lost_with_a_kept_connection_is_located_again_and_sent_on_a_new_one() {
    // Each connection serves one command; the request opening a second one is read and the
    // connection closed without an answer, as by a server whose idle timeout ran out then.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ss = listener.local_addr().unwrap().port();
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = served.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let mut c = Connection::new(stream.unwrap());
            let mut opened = 0;
            while let Ok(Some(f)) = c.recv() {
                if matches!(f.msg, Message::Read { .. } | Message::WriteBegin { .. }) {
                    opened += 1;
                    if opened > 1 {
                        break;
                    }
                }
                for (m, body) in ss_reply(&f.msg, &f.body).0 {
                    c.send(&m, &body).unwrap();
                }
            }
            log.lock().unwrap().push(opened);
        }
    });
    // Records each LOCATE's `avoid`: a lost kept connection is no reason to avoid a copy.
    let locates = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = locates.clone();
    let answer = nm_reply(ss);
    let nm = serve(Box::new(move |m, body| {
        if let Message::Locate { avoid, .. } = m {
            seen.lock().unwrap().push(avoid.clone());
        }
        answer(m, body)
    }));
    let (out, status) = run_script(nm, "READ a\nWRITE a 0\n0 Hi.\nETIRW\nREAD a\n");
    assert_eq!(
        out,
        "hello world.\nSentence: Hi.\nWrite Successful!\nhello world.\n"
    );
    assert_eq!(status, 0);
    // The first two connections each lost the request opening their second command.
    let done = served.lock().unwrap().clone();
    assert_eq!(
        done[..2],
        [2, 2],
        "commands opened per closed connection: {done:?}"
    );
    // One LOCATE per command, and one more (a fresh ticket) for each lost request.
    assert_eq!(*locates.lock().unwrap(), vec![None; 5]);
}

#[test]
fn a_stream_cut_short_reports_the_broken_connection() {
    let nm = fake_nm(fake_ss());
    let (out, status) = run_script(nm, "STREAM cut\n");
    assert_eq!(out, "hello\nError: Connection closed unexpectedly\n");
    assert_eq!(status, 1);
}

#[test]
fn write_session_edits_and_commits() {
    let nm = fake_nm(fake_ss());
    let (out, status) = run_script(
        nm,
        "WRITE a 0\n0 Hello there.\nnonsense\n3 x\netirw\nREAD a\n",
    );
    assert_eq!(
        out,
        "Sentence: Hello there.\n\
         ERROR [INVALID]: expected '<word_index> <text>' or ETIRW\n\
         ERROR [INVALID]: Word index out of range\n\
         Write Successful!\n\
         hello world.\n"
    );
    assert_eq!(status, 1);
}

#[test]
fn end_of_input_inside_a_write_session_abandons_it() {
    let nm = fake_nm(fake_ss());
    let (out, status) = run_script(nm, "WRITE a 0\n0 Hello.\n");
    assert_eq!(
        out,
        "Sentence: Hello.\n\
         ERROR [INVALID]: input ended inside a WRITE session; the edits were abandoned\n"
    );
    assert_eq!(status, 1);
}

#[test]
fn no_name_server_exits_2() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (out, status) = run_script(port, "LIST\n");
    assert!(
        out.starts_with(&format!(
            "ERROR [UNAVAILABLE]: cannot connect to name server at 127.0.0.1:{port} ("
        )),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1);
    assert_eq!(status, 2);
}

#[test]
fn a_dropped_connection_fails_one_command_and_the_next_reconnects() {
    let nm = fake_nm(0);
    let (out, status) = run_script(nm, "INFO gone\nLIST\n");
    assert_eq!(
        out,
        "ERROR [UNAVAILABLE]: lost connection to the name server\n--> alice\n--> bob\n"
    );
    assert_eq!(status, 2);
}

#[test]
fn over_long_lines_are_refused_and_skipped() {
    let nm = fake_nm(0);
    let script = format!("{}\nLIST\n", "x".repeat(MAX_LINE_BYTES + 10));
    let (out, status) = run_script(nm, &script);
    assert_eq!(
        out,
        format!("ERROR [LIMIT]: line too long: more than {MAX_LINE_BYTES} bytes, the limit; it was skipped\n--> alice\n--> bob\n")
    );
    assert_eq!(status, 1);
}

#[test]
fn sync_mode_answers_show_the_copy_count() {
    let nm = fake_nm(0);
    let (out, status) = run_script(nm, "CREATE deg\nDELETE deg\nCREATE a\n");
    assert_eq!(
        out,
        "File Created Successfully! (1 of 2 copies)\n\
         File deleted successfully! (1 of 2 copies)\n\
         File Created Successfully!\n"
    );
    assert_eq!(status, 0);
}

#[test]
fn status_renders_the_reply() {
    let nm = fake_nm(0);
    let (out, status) = run_script(nm, "STATUS\n");
    assert_eq!(
        out,
        "Storage servers:\n\
         \x20 ss1         UP  primary   1 files  heartbeat never\n\
         \x20 ss1_backup  UP  backup    1 files  heartbeat never\n\
         \x20 ss2         UP  unpaired  1 files  heartbeat never\n\
         Pairs:\n\
         \x20 ss1 -> ss1_backup  ACTIVE  epoch 1  writer ss1  lag 0 jobs, 0 bytes, 0.0 s\n\
         \x20 ss2 (unpaired: 1 copy)  epoch 1\n\
         Replication: sync, queue depth 0\n\
         Failed jobs: none\n"
    );
    assert_eq!(status, 0);
}

#[test]
fn upload_streams_a_binary_file_in_chunks() {
    let uploads = std::sync::Arc::new(std::sync::Mutex::new(Uploads::default()));
    let nm = fake_nm(fake_upload_ss(uploads.clone()));
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("in.bin");
    let bytes = binary(frame::CHUNK_BYTES + 5);
    std::fs::write(&local, &bytes).unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let l = local.display();
    let e = empty.display();
    let missing = dir.path().join("missing");
    let (out, status) = run_script(
        nm,
        &format!(
            "UPLOAD {l} a.bin\nUPLOAD {l} deg\nUPLOAD {e} e\nUPLOAD {} a\nUPLOAD {} a\n",
            missing.display(),
            dir.path().display()
        ),
    );
    let n = bytes.len();
    assert_eq!(
        out,
        format!(
            "Upload Successful! ({n} bytes)\n\
             Upload Successful! ({n} bytes) (1 of 2 copies)\n\
             Upload Successful! (0 bytes)\n\
             ERROR [NOT_FOUND]: local file '{}' not found\n\
             ERROR [INVALID]: local path '{}' is not a regular file\n",
            missing.display(),
            dir.path().display()
        )
    );
    assert_eq!(status, 1);
    let u = uploads.lock().unwrap();
    assert_eq!(u.done, vec![bytes.clone(), bytes, Vec::new()]);
    assert_eq!(u.abandoned, 0);
}

#[test]
fn a_local_file_that_changes_after_its_checksum_is_not_uploaded() {
    let uploads = std::sync::Arc::new(std::sync::Mutex::new(Uploads::default()));
    let ss = fake_upload_ss(uploads.clone());
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("in.bin");
    let bytes = binary(2 * frame::CHUNK_BYTES + 5);
    // The name server changes the local file as it answers LOCATE: after the client read it
    // for its checksum, before it sends it.
    let path = local.clone();
    let nm = serve(Box::new(move |m, _| match m {
        Message::Hello { .. } => one(Message::Challenge { nonce: "00".into() }),
        Message::Prove { .. } => one(Message::Welcome {
            user: "alice".into(),
            lease_ms: None,
        }),
        Message::Locate { file, .. } => {
            let mut now = std::fs::read(&path).unwrap();
            match file.as_str() {
                // The last chunk, the first, the length either way.
                "last" => *now.last_mut().unwrap() ^= 1,
                "first" => now[0] ^= 1,
                "grew" => now.push(0),
                "shrank" => now.truncate(frame::CHUNK_BYTES),
                _ => {}
            }
            std::fs::write(&path, &now).unwrap();
            one(Message::Located {
                ss: "ss1".into(),
                addr: format!("127.0.0.1:{ss}"),
                ticket: ticket(file),
            })
        }
        _ => wire_err(ErrorCode::Invalid, "unexpected"),
    }));
    let mut out = String::new();
    for name in ["last", "first", "grew", "shrank", "same"] {
        std::fs::write(&local, &bytes).unwrap();
        let (o, _) = run_script(nm, &format!("UPLOAD {} {name}\n", local.display()));
        out.push_str(&o);
    }
    let changed = format!(
        "ERROR [CONFLICT]: local file '{}' changed while it was being uploaded; nothing was stored\n",
        local.display()
    );
    let n = bytes.len();
    assert_eq!(
        out,
        format!("{}Upload Successful! ({n} bytes)\n", changed.repeat(4))
    );
    let u = uploads.lock().unwrap();
    assert_eq!(u.done, vec![bytes]);
    assert_eq!(u.abandoned, 4);
}

#[test]
fn download_saves_a_checked_copy_and_keeps_the_old_file_on_failure() {
    let nm = fake_nm(fake_ss());
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let kept = dir.path().join("kept.txt");
    std::fs::write(&kept, b"old").unwrap();
    let (out, status) = run_script(
        nm,
        &format!(
            "DOWNLOAD big {}\nDOWNLOAD bad {}\nDOWNLOAD a {}\n",
            big.display(),
            kept.display(),
            dir.path().join("no/dir/x").display()
        ),
    );
    assert_eq!(
        out,
        format!(
            "Download Successful! ({BIG_BYTES} bytes)\n\
             ERROR [INTERNAL]: the content from ss1 failed its check (7 of 7 bytes)\n\
             ERROR [NOT_FOUND]: local directory '{}' not found\n",
            dir.path().join("no/dir").display()
        )
    );
    assert_eq!(status, 1);
    assert_eq!(std::fs::read(&big).unwrap(), binary(BIG_BYTES));
    assert_eq!(std::fs::read(&kept).unwrap(), b"old");
    // No temporary file is left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["big.bin", "kept.txt"]);
}

/// A name server whose pair is between writers for the first `refusals` CREATEs.
fn failing_over_nm(refusals: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let creates = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = creates.clone();
    let port = serve(Box::new(move |m, _| match m {
        Message::Hello { .. } => one(Message::Challenge { nonce: "00".into() }),
        Message::Prove { .. } => one(Message::Welcome {
            user: "alice".into(),
            lease_ms: Some(100),
        }),
        Message::Create { .. } if seen.fetch_add(1, Ordering::SeqCst) < refusals => wire_err(
            ErrorCode::Unavailable,
            &format!("a.txt cannot take changes for a moment: pair ss1 {MOVING_WRITER} (epoch 2)"),
        ),
        Message::Create { .. } => one(Message::Done {}),
        Message::Delete { .. } => wire_err(ErrorCode::Unavailable, "no live copy of a.txt"),
        _ => close(),
    }));
    (port, creates)
}

#[test]
fn a_change_refused_during_a_failover_is_sent_again_until_it_is_taken() {
    let (nm, creates) = failing_over_nm(3);
    let (out, status) = run_script(nm, "CREATE a.txt\n");
    assert_eq!(out, "File Created Successfully!\n");
    assert_eq!(status, 0);
    assert_eq!(creates.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[test]
fn a_change_the_name_server_did_not_apply_across_a_writer_change_is_sent_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let undos = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = undos.clone();
    let nm = serve(Box::new(move |m, _| match m {
        Message::Hello { .. } => one(Message::Challenge { nonce: "00".into() }),
        Message::Prove { .. } => one(Message::Welcome {
            user: "alice".into(),
            lease_ms: Some(100),
        }),
        Message::Undo { .. } if seen.fetch_add(1, Ordering::SeqCst) == 0 => wire_err(
            ErrorCode::Unavailable,
            &format!(
                "pair ss1 changed writers while the change to a.txt ran; {}",
                crate::protocol::NOT_APPLIED_TRY_AGAIN
            ),
        ),
        Message::Undo { .. } => one(Message::Done {}),
        _ => close(),
    }));
    let (out, status) = run_script(nm, "UNDO a.txt\n");
    assert_eq!(out, "Undo Successful!\n");
    assert_eq!(status, 0);
    assert_eq!(undos.load(Ordering::SeqCst), 2);
}

#[test]
fn other_unavailable_answers_and_a_spent_wait_fail_at_once() {
    // "No live copy" is not a failover: one try.
    let (nm, _) = failing_over_nm(0);
    let (out, status) = run_script(nm, "DELETE a.txt\n");
    assert_eq!(out, "ERROR [UNAVAILABLE]: no live copy of a.txt\n");
    assert_eq!(status, 1);
    // The lease of 100 ms bounds the wait at 2.25 s; a pair that never finishes fails.
    let (nm, creates) = failing_over_nm(usize::MAX);
    let started = std::time::Instant::now();
    let (out, status) = run_script(nm, "CREATE a.txt\n");
    assert!(out.contains(MOVING_WRITER), "{out}");
    assert_eq!(status, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(creates.load(std::sync::atomic::Ordering::SeqCst) > 1);
    // A zero wait fails at once.
    let (nm, creates) = failing_over_nm(1);
    let keys = tempfile::tempdir().unwrap();
    let mut o = opts(nm, keys.path());
    o.wait = Some(std::time::Duration::ZERO);
    let mut input = PipedLines::new("CREATE a.txt\n".as_bytes());
    let mut out = Vec::new();
    assert_eq!(run_with(&o, &mut input, &mut out), 1);
    assert_eq!(creates.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn the_failover_bound_covers_detection_the_old_lease_and_slack() {
    use super::session::failover_bound;
    // Defaults: a 15 s heartbeat timeout gives a 10 s lease.
    assert_eq!(
        failover_bound(10_000),
        std::time::Duration::from_millis(27_000)
    );
    assert_eq!(failover_bound(0), std::time::Duration::from_millis(2_000));
}
