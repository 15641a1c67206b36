//! Delta catch-up (issue 4): a large file changed while its backup was away reaches the
//! returning backup as ops against its old copy, byte for byte, with far fewer bytes sent
//! than the file holds; a delta that does not verify falls back to sending the file whole.
//!
//! Every test runs through the real binaries.

use crate::harness::*;
use pairfs::auth::NM_USER;
use pairfs::protocol::{Message, TicketOp, UndoDesc, Version};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";
/// The large file's size: above the delta threshold (1 MiB), quick to move.
const SIZE: usize = 8 << 20;

fn upload(c: &Cluster, bytes: &[u8], name: &str) {
    let local = c.dir().join(format!("{name}.local"));
    std::fs::write(&local, bytes).unwrap();
    c.client("alice")
        .run_timeout(
            &format!("UPLOAD {} {name}\n", local.display()),
            Duration::from_secs(60),
        )
        .assert_contains("Upload Successful!")
        .assert_code(0);
}

/// A pair holding `big.bin` on both members; then the backup is killed and the file
/// re-uploaded with 4 KiB changed in the middle and a sentence inserted near the end.
/// Returns the new content.
fn stale_backup() -> (Cluster, Vec<u8>) {
    stale_backup_by(1)
}

/// [`stale_backup`] with `changes` re-uploads while the backup is down, each after the first
/// changing 4 KiB somewhere else.
fn stale_backup_by(changes: usize) -> (Cluster, Vec<u8>) {
    let mut c = Cluster::builder().pair().start();
    let old = blob(SIZE, 42);
    upload(&c, &old, "big.bin");
    let ok = poll_until(WAIT, || {
        file_on_disk(&c, BACKUP, "big.bin").is_some_and(|b| b == old)
    });
    assert!(ok, "the backup never held the first big.bin");
    c.kill9(BACKUP);
    let mut new = old;
    new[SIZE / 2..SIZE / 2 + 4096].copy_from_slice(&blob(4096, 7));
    new.splice(
        SIZE - 100_000..SIZE - 100_000,
        b"An inserted sentence.".iter().copied(),
    );
    upload(&c, &new, "big.bin");
    for k in 1..changes {
        let at = SIZE / 8 * k;
        new[at..at + 4096].copy_from_slice(&blob(4096, 100 + k as u64));
        upload(&c, &new, "big.bin");
    }
    (c, new)
}

/// The backup holds `new` and serves big.bin as the primary does.
fn assert_caught_up(c: &Cluster, new: &[u8]) {
    let ok = poll_until(WAIT, || {
        file_on_disk(c, BACKUP, "big.bin").is_some_and(|b| b == new)
    });
    assert!(ok, "the backup's big.bin never matched the primary's");
    let (p, p_blobs) = held(c, PRIMARY, "big.bin");
    let (b, b_blobs) = held(c, BACKUP, "big.bin");
    let (p, b) = (p.unwrap(), b.unwrap());
    assert_eq!(
        (p.version, p.checksum, p.size),
        (b.version, b.checksum, b.size)
    );
    assert_eq!(p_blobs, b_blobs, "undo history differs");
    // The entries' bytes too: each one is what its name (version and checksum) says, and
    // what the primary holds under that name.
    let (p, b) = (history_entries(c, PRIMARY), history_entries(c, BACKUP));
    for (name, bytes) in &b {
        let crc = u32::from_str_radix(name.rsplit('-').next().unwrap(), 16).unwrap();
        assert_eq!(
            crc32c::crc32c(bytes),
            crc,
            "history entry {name} on the backup"
        );
        if let Some(pb) = p.get(name) {
            assert!(
                pb == bytes,
                "history entry {name} differs from the primary's"
            );
        }
    }
}

/// Every history entry under `<storage of ss>/undo/`, by name, with its bytes.
fn history_entries(c: &Cluster, ss: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(c.storage(ss).join("undo"))
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Replaces a file's bytes with `bytes` of the same length and puts its mtime back, as bit
/// rot would leave it.
fn rot(path: &Path, bytes: &[u8]) {
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(before.len(), bytes.len() as u64, "rot keeps the size");
    let mtime = before.modified().unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn a_stale_copy_with_bit_rot_is_not_taken_as_the_history_entry_of_its_version() {
    let (mut c, new) = stale_backup();
    // A flipped bit in the backup's old copy, where the new content changed: the rebuilt
    // content would verify, but the old copy is no longer the version its record names.
    let path = c.storage(BACKUP).join("files").join("big.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[SIZE / 2 + 100] ^= 0x40;
    rot(&path, &bytes);
    let m = c.mark("nm");
    c.restart(BACKUP);
    c.wait_event_since(
        "nm",
        m,
        "replication_delta_fallback",
        |v| mentions(v, "big.bin"),
        WAIT,
    );
    assert_caught_up(&c, &new);
}

#[test]
fn a_large_file_changed_while_its_backup_was_down_is_caught_up_by_delta() {
    let (mut c, new) = stale_backup();
    let m = c.mark("nm");
    c.restart(BACKUP);
    let ev = c.wait_event_since(
        "nm",
        m,
        "replication_delta",
        |v| mentions(v, "big.bin"),
        WAIT,
    );
    assert_caught_up(&c, &new);
    let bytes = ev["bytes"].as_u64().unwrap();
    // The changed chunks (two or three of ~32 KiB each), not the 8 MiB file nor the old
    // version's history entry, which the backup's old copy provides.
    assert!(bytes < 256 << 10, "{bytes} bytes sent for an 8 MiB file");
    assert!(bytes >= 4096, "{bytes} bytes cannot carry the change");
    // The old content is the history entry: UNDO on the backup's copy would restore it.
    let (_, blobs) = held(&c, BACKUP, "big.bin");
    assert!(!blobs.is_empty());
    assert_eq!(
        c.log("nm")
            .count(m, "replication_delta_fallback", &|_| true),
        0
    );
}

#[test]
fn a_delta_that_does_not_verify_falls_back_to_the_whole_file() {
    let (mut c, new) = stale_backup();
    let m = c.mark("nm");
    // The hook flips one rebuilt byte of the first copy the backup receives: the delta.
    c.restart_with_env(BACKUP, "PAIRFS_FAULT_FLIP_PUT", "1");
    c.wait_event_since(
        "nm",
        m,
        "replication_delta_fallback",
        |v| mentions(v, "big.bin"),
        WAIT,
    );
    let ok = c.wait_event_since(
        "nm",
        m,
        "replication_worker_success",
        |v| mentions(v, "big.bin"),
        WAIT,
    );
    assert_caught_up(&c, &new);
    // Sent whole: the content and the old version's history entry.
    assert!(ok["bytes"].as_u64().unwrap() >= SIZE as u64);
    assert_eq!(c.log("nm").count(m, "replication_delta", &|_| true), 0);
}

#[test]
fn several_changes_while_away_send_each_version_by_delta() {
    // Three versions the backup lacks: the current content and two history entries, each
    // rebuilt from the backup's old copy.
    let (mut c, new) = stale_backup_by(3);
    let m = c.mark("nm");
    c.restart(BACKUP);
    let ev = c.wait_event_since(
        "nm",
        m,
        "replication_delta",
        |v| mentions(v, "big.bin"),
        WAIT,
    );
    assert_caught_up(&c, &new);
    let bytes = ev["bytes"].as_u64().unwrap();
    assert!(
        bytes < 1 << 20,
        "{bytes} bytes sent for three 8 MiB versions"
    );
    let (_, blobs) = held(&c, BACKUP, "big.bin");
    assert!(blobs.len() >= 3, "history on the backup: {blobs:?}");
}

/// A PUT_FILE_DELTA to the backup against its copy of big.bin (or the copy with
/// `basis_checksum`) whose content part is `ops`, declaring a new version of `size` bytes
/// whose checksum is the old one's with bits `flip` flipped; returns the answer.
fn put_delta(
    c: &Cluster,
    ops: &[u8],
    size: u64,
    basis_checksum: Option<u32>,
    flip: u32,
) -> Message {
    let (Some(st), _) = held(c, BACKUP, "big.bin") else {
        panic!("the backup holds no big.bin")
    };
    let mut state = st.clone();
    state.version.counter += 10;
    state.size = size;
    state.checksum ^= flip;
    let ticket = c
        .key()
        .mint(NM_USER, "big.bin", TicketOp::Store, BACKUP, None);
    let mut conn = c.ss_conn(BACKUP);
    let head = Message::PutFileDelta {
        file: "big.bin".into(),
        state,
        undo: vec![],
        sent: vec![],
        checkpoints: vec![],
        sent_checkpoints: vec![],
        basis: st.version,
        basis_checksum: basis_checksum.unwrap_or(st.checksum),
        ticket,
    };
    conn.send(&head, &[]).unwrap();
    conn.send(&Message::Chunk {}, ops).unwrap();
    conn.send(&Message::End {}, &[]).unwrap();
    conn.recv_some().unwrap().msg
}

fn copy_op(offset: u64, len: u64) -> Vec<u8> {
    let mut op = vec![1u8];
    op.extend_from_slice(&offset.to_le_bytes());
    op.extend_from_slice(&len.to_le_bytes());
    op
}

/// The head of the primary's answer to a GET_FILE_DELTA of big.bin against an (empty)
/// signature of a copy at `basis`: the history it describes and the entries it sends.
fn delta_head(c: &Cluster, basis: Version, basis_checksum: u32) -> (Vec<UndoDesc>, Vec<Version>) {
    let ticket = c
        .key()
        .mint(NM_USER, "big.bin", TicketOp::Fetch, PRIMARY, None);
    let mut conn = c.ss_conn(PRIMARY);
    let get = Message::GetFileDelta {
        file: "big.bin".into(),
        have: vec![],
        basis,
        basis_checksum,
        have_checkpoints: vec![],
        avg_bits: 15,
        count: 0,
        ticket,
    };
    conn.send(&get, &[]).unwrap();
    match conn.recv_some().unwrap().msg {
        Message::FileContent { undo, sent, .. } => (undo, sent),
        other => panic!("GET_FILE_DELTA answered {other:?}"),
    }
}

#[test]
fn the_source_sends_the_entry_of_the_basis_version_unless_its_checksum_matches() {
    let (c, _) = stale_backup();
    let (undo, sent) = delta_head(&c, Version::default(), 0);
    let v = undo.last().expect("the primary holds history").clone();
    assert!(sent.contains(&v.version), "{sent:?}");
    // The target's copy of that version is those bytes: not sent.
    let (_, sent) = delta_head(&c, v.version, v.checksum);
    assert!(!sent.contains(&v.version), "{sent:?}");
    // A copy of that version with other bytes: sent (as ops) like any entry.
    let (_, sent) = delta_head(&c, v.version, v.checksum ^ 1);
    assert!(sent.contains(&v.version), "{sent:?}");
}

#[test]
fn a_copy_sent_whole_without_the_entry_of_the_version_held_is_incomplete() {
    // Only a delta's verified basis stands for a history entry not sent: a PUT_FILE_CONTENT
    // naming the backup's own version in its history without sending it is refused.
    let c = Cluster::builder().pair().start();
    let old = blob(2 << 20, 5);
    upload(&c, &old, "big.bin");
    let ok = poll_until(WAIT, || {
        file_on_disk(&c, BACKUP, "big.bin").is_some_and(|b| b == old)
    });
    assert!(ok, "the backup never held big.bin");
    let before = held(&c, BACKUP, "big.bin");
    let st = before.0.clone().unwrap();
    let new = blob(2 << 20, 6);
    let mut state = st.clone();
    state.version.counter += 10;
    state.checksum = crc32c::crc32c(&new);
    let ticket = c
        .key()
        .mint(NM_USER, "big.bin", TicketOp::Store, BACKUP, None);
    let mut conn = c.ss_conn(BACKUP);
    let head = Message::PutFileContent {
        basis: None,
        staged: None,
        file: "big.bin".into(),
        state,
        undo: vec![UndoDesc {
            version: st.version,
            size: st.size,
            checksum: st.checksum,
        }],
        sent: vec![],
        checkpoints: vec![],
        sent_checkpoints: vec![],
        ticket,
    };
    conn.send(&head, &[]).unwrap();
    for part in new.chunks(1 << 20) {
        conn.send(&Message::Chunk {}, part).unwrap();
    }
    conn.send(&Message::End {}, &[]).unwrap();
    match conn.recv_some().unwrap().msg {
        Message::Err { msg, .. } => assert!(msg.contains("missing history entries"), "{msg}"),
        other => panic!("an incomplete copy answered {other:?}"),
    }
    assert_eq!(file_on_disk(&c, BACKUP, "big.bin").unwrap(), old);
    assert_eq!(held(&c, BACKUP, "big.bin"), before);
    let v = format!(
        "-{}.{}-{:08x}",
        st.version.epoch, st.version.counter, st.checksum
    );
    assert!(
        !history_entries(&c, BACKUP).keys().any(|n| n.ends_with(&v)),
        "the copy held was linked in as a history entry"
    );
}

#[test]
fn malformed_or_mismatched_delta_streams_are_refused_and_change_nothing() {
    let c = Cluster::builder().pair().start();
    let old = blob(2 << 20, 5);
    upload(&c, &old, "big.bin");
    let ok = poll_until(WAIT, || {
        file_on_disk(&c, BACKUP, "big.bin").is_some_and(|b| b == old)
    });
    assert!(ok, "the backup never held big.bin");
    let size = old.len() as u64;
    let before = held(&c, BACKUP, "big.bin");
    let refused = |m: &Message, needle: &str| match m {
        Message::Err { msg, .. } => assert!(msg.contains(needle), "{msg}"),
        other => panic!("a bad delta answered {other:?}"),
    };
    // A copy reaching past the old copy.
    refused(
        &put_delta(&c, &copy_op(size - 10, 11), size + 1, None, 0),
        "past the old copy",
    );
    // An offset that overflows.
    refused(
        &put_delta(&c, &copy_op(u64::MAX, 2), 2, None, 0),
        "past the old copy",
    );
    // More bytes than declared.
    refused(
        &put_delta(&c, &copy_op(0, 100), 50, None, 0),
        "more than the 50 bytes",
    );
    // A length that overflows the bytes counted so far (a literal byte, then a copy of
    // u64::MAX bytes) is more than declared, not a wrapped count.
    let mut ops = vec![2u8, 1, 0, 0, 0, b'x'];
    ops.extend_from_slice(&copy_op(0, u64::MAX));
    refused(&put_delta(&c, &ops, 2, None, 0), "more than the 2 bytes");
    // An unknown op, and a literal cut short.
    refused(&put_delta(&c, &[9, 9, 9], 3, None, 0), "unknown or cut op");
    refused(
        &put_delta(&c, &[2, 10, 0, 0, 0, b'x'], 10, None, 0),
        "runs past its frame",
    );
    // Ops against a copy this server does not hold (another checksum): nothing installed.
    refused(
        &put_delta(&c, &copy_op(0, size), size, Some(0xdead_beef), 0),
        "the transfer names as its basis",
    );
    // Well-formed ops whose result does not match the declared checksum.
    refused(&put_delta(&c, &copy_op(0, size), size, None, 1), "checksum");
    assert_eq!(file_on_disk(&c, BACKUP, "big.bin").unwrap(), old);
    assert_eq!(held(&c, BACKUP, "big.bin"), before);
}
