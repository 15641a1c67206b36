//! PUT_BATCH: a batch of replicated copies installed on a backup, each answered in order,
//! with their checkpoints.

use super::*;

/// Sends one PUT_FILE_CONTENT of a batch (its head and stream), without reading an answer.
fn put_in_batch(dst: &Peer, c: &mut Connection, state: &FileState, bytes: &[u8]) {
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
}

#[test]
fn a_batch_installs_each_good_copy_and_answers_each_in_order() {
    let cl = cluster(60_000);
    let dst = peer(&cl, "ss1_backup", false);
    let mut c = dst.conn();
    let held = state_of("held.txt", 5, b"five.");
    assert!(put(&dst, &mut c, &held, b"five.").is_ok());
    let a = state_of("a.txt", 1, b"alpha.");
    let nested = state_of("d/e/b.txt", 2, b"beta.");
    let bad = state_of("bad.txt", 1, b"good bytes.");
    let older = state_of("held.txt", 3, b"three.");
    c.send(&Message::PutBatch {}, &[]).unwrap();
    put_in_batch(&dst, &mut c, &a, b"alpha.");
    put_in_batch(&dst, &mut c, &bad, b"bad bytes!!");
    put_in_batch(&dst, &mut c, &nested, b"beta.");
    put_in_batch(&dst, &mut c, &older, b"three.");
    // A copy whose ticket is for another file is refused on its own, after its stream.
    c.send(
        &Message::PutFileContent {
            basis: None,
            staged: None,
            file: "x.txt".into(),
            state: state_of("x.txt", 1, b"x"),
            undo: Vec::new(),
            sent: Vec::new(),
            checkpoints: Vec::new(),
            sent_checkpoints: Vec::new(),
            ticket: dst.ticket("y.txt", TicketOp::Store),
        },
        &[],
    )
    .unwrap();
    c.send(&Message::Chunk {}, b"x").unwrap();
    c.send(&Message::End {}, &[]).unwrap();
    c.send(&Message::End {}, &[]).unwrap();
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(c.recv().unwrap().unwrap().msg.into_result());
    }
    assert!(matches!(&replies[0], Ok(Message::FileStateReply { state }) if *state == a));
    assert_eq!(replies[1].as_ref().unwrap_err().code, ErrorCode::Invalid);
    assert!(
        matches!(&replies[2], Ok(Message::FileStateReply { state }) if *state == nested),
        "{:?}",
        replies[2]
    );
    assert!(
        matches!(&replies[3], Ok(Message::FileStateReply { state }) if *state == held),
        "an older copy is answered with the newer one held"
    );
    assert_eq!(
        replies[4].as_ref().unwrap_err().code,
        ErrorCode::Unauthorized
    );
    let root = dst.root();
    assert_eq!(std::fs::read(root.join("files/a.txt")).unwrap(), b"alpha.");
    assert_eq!(
        std::fs::read(root.join("files/d/e/b.txt")).unwrap(),
        b"beta."
    );
    assert_eq!(
        std::fs::read(root.join("files/held.txt")).unwrap(),
        b"five."
    );
    assert!(!root.join("files/bad.txt").exists());
    assert!(!root.join("files/x.txt").exists());
    assert_eq!(peek(&dst, "a.txt").0.unwrap(), a);
    assert_eq!(peek(&dst, "d/e/b.txt").0.unwrap(), nested);
    assert!(
        dir_names(&root.join("tmp")).is_empty(),
        "temp files left behind"
    );
    // The connection goes on after the batch.
    let v2 = state_of("a.txt", 2, b"alpha two.");
    assert!(put(&dst, &mut c, &v2, b"alpha two.").is_ok());
}

#[test]
fn a_batch_refuses_anything_but_copies_and_is_bounded() {
    let cl = cluster(60_000);
    let dst = peer(&cl, "ss1_backup", false);
    let mut c = dst.conn();
    c.send(&Message::PutBatch {}, &[]).unwrap();
    c.send(&Message::Status {}, &[]).unwrap();
    let e = c.recv().unwrap().unwrap().msg.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    let mut c = dst.conn();
    c.send(&Message::PutBatch {}, &[]).unwrap();
    for i in 0..crate::ss::server::MAX_BATCH_COPIES {
        let st = state_of(&format!("f{i}"), 1, b"z");
        put_in_batch(&dst, &mut c, &st, b"z");
    }
    // One copy too many: its head alone is refused (the server stops reading there).
    let st = state_of("last", 1, b"z");
    c.send(
        &Message::PutFileContent {
            basis: None,
            staged: None,
            file: st.file.clone(),
            state: st.clone(),
            undo: Vec::new(),
            sent: Vec::new(),
            checkpoints: Vec::new(),
            sent_checkpoints: Vec::new(),
            ticket: dst.ticket(&st.file, TicketOp::Store),
        },
        &[],
    )
    .unwrap();
    let e = c.recv().unwrap().unwrap().msg.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::Limit);
    assert!(dir_names(&dst.root().join("files")).is_empty());
}

/// Sends one PUT_FILE_CONTENT of a batch that lists `checkpoints` and streams the bytes of
/// those in `sent` after the content, without reading an answer.
fn put_with_checkpoints_in_batch(
    dst: &Peer,
    c: &mut Connection,
    state: &FileState,
    bytes: &[u8],
    checkpoints: &[CheckpointInfo],
    sent: &[(&str, &[u8])],
) {
    c.send(
        &Message::PutFileContent {
            basis: None,
            staged: None,
            file: state.file.clone(),
            state: state.clone(),
            undo: Vec::new(),
            sent: Vec::new(),
            checkpoints: checkpoints.to_vec(),
            sent_checkpoints: sent.iter().map(|(tag, _)| tag.to_string()).collect(),
            ticket: dst.ticket(&state.file, TicketOp::Store),
        },
        &[],
    )
    .unwrap();
    for part in std::iter::once(bytes).chain(sent.iter().map(|(_, b)| *b)) {
        for piece in part.chunks(1000) {
            c.send(&Message::Chunk {}, piece).unwrap();
        }
        c.send(&Message::End {}, &[]).unwrap();
    }
}

fn ckpt(tag: &str, bytes: &[u8]) -> CheckpointInfo {
    CheckpointInfo {
        tag: tag.into(),
        creator: "bob".into(),
        created_ms: 1,
        size: bytes.len() as u64,
        checksum: crc32c::crc32c(bytes),
    }
}

/// The tags of the checkpoints PEEK_FILE says `dst` holds of `file`.
fn peek_checkpoints(dst: &Peer, file: &str) -> Vec<String> {
    let mut c = dst.conn();
    let ticket = dst.ticket(file, TicketOp::Store);
    match ask(
        &mut c,
        Message::PeekFile {
            file: file.into(),
            ticket,
        },
    )
    .unwrap()
    {
        // Each held checkpoint is `<tag>:<checksum>`; the tags are what these tests check.
        Message::Held { checkpoints, .. } => checkpoints
            .into_iter()
            .map(|h| h.split_once(':').map_or(h.clone(), |(t, _)| t.to_string()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Answers `n` copies of a batch whose END was sent.
fn batch_replies(c: &mut Connection, n: usize) -> Vec<Result<Message, WireError>> {
    (0..n)
        .map(|_| c.recv().unwrap().unwrap().msg.into_result())
        .collect()
}

#[test]
fn a_batch_installs_each_copys_checkpoints_too() {
    let cl = cluster(60_000);
    let dst = peer(&cl, "ss1_backup", false);
    let root = dst.root();
    let ckpt_file = |file: &str, tag: &str| {
        root.join("checkpoints")
            .join(crate::ss::store::file_hash(file))
            .join(tag)
    };
    let mut c = dst.conn();
    let a = state_of("d/a.txt", 3, b"one. two.");
    let plain = state_of("b.txt", 1, b"bee.");
    let ghost = state_of("g.txt", 2, b"ghost.");
    let (v0, v1) = (ckpt("v0", b"zero."), ckpt("v1", b"one."));
    c.send(&Message::PutBatch {}, &[]).unwrap();
    put_with_checkpoints_in_batch(
        &dst,
        &mut c,
        &a,
        b"one. two.",
        &[v0.clone(), v1.clone()],
        &[("v0", b"zero."), ("v1", b"one.")],
    );
    put_in_batch(&dst, &mut c, &plain, b"bee.");
    // A list naming a checkpoint neither sent nor held here installs nothing of that copy.
    put_with_checkpoints_in_batch(&dst, &mut c, &ghost, b"ghost.", &[ckpt("boo", b"!")], &[]);
    c.send(&Message::End {}, &[]).unwrap();
    let replies = batch_replies(&mut c, 3);
    assert!(
        matches!(&replies[0], Ok(Message::FileStateReply { state }) if *state == a),
        "{:?}",
        replies[0]
    );
    assert!(matches!(&replies[1], Ok(Message::FileStateReply { state }) if *state == plain));
    assert_eq!(replies[2].as_ref().unwrap_err().code, ErrorCode::Invalid);
    assert_eq!(peek_checkpoints(&dst, "d/a.txt"), vec!["v0", "v1"]);
    assert_eq!(std::fs::read(ckpt_file("d/a.txt", "v0")).unwrap(), b"zero.");
    assert_eq!(std::fs::read(ckpt_file("d/a.txt", "v1")).unwrap(), b"one.");
    assert!(peek_checkpoints(&dst, "b.txt").is_empty());
    assert!(peek(&dst, "g.txt").0.is_none());
    assert!(!root.join("files/g.txt").exists());
    assert!(!root
        .join("checkpoints")
        .join(crate::ss::store::file_hash("g.txt"))
        .exists());

    // The next copy lists v1 (held here, so not sent again) and a new v2; v0 is gone at the
    // source, so it goes here too.
    let a4 = state_of("d/a.txt", 4, b"one. two. three.");
    let v2 = ckpt("v2", b"one. two.");
    c.send(&Message::PutBatch {}, &[]).unwrap();
    put_with_checkpoints_in_batch(
        &dst,
        &mut c,
        &a4,
        b"one. two. three.",
        &[v1, v2],
        &[("v2", b"one. two.")],
    );
    c.send(&Message::End {}, &[]).unwrap();
    let replies = batch_replies(&mut c, 1);
    assert!(
        matches!(&replies[0], Ok(Message::FileStateReply { state }) if *state == a4),
        "{:?}",
        replies[0]
    );
    assert_eq!(peek_checkpoints(&dst, "d/a.txt"), vec!["v1", "v2"]);
    assert_eq!(std::fs::read(ckpt_file("d/a.txt", "v1")).unwrap(), b"one.");
    assert_eq!(
        std::fs::read(ckpt_file("d/a.txt", "v2")).unwrap(),
        b"one. two."
    );
    assert!(!ckpt_file("d/a.txt", "v0").exists());
    assert_eq!(
        std::fs::read(root.join("files/d/a.txt")).unwrap(),
        b"one. two. three."
    );
    assert!(
        dir_names(&root.join("tmp")).is_empty(),
        "temp files left behind"
    );
}
