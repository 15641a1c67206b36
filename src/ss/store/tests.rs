//! Unit tests of the store: changes, history, adoption, quarantine, checkpoints, moves and
//! installs of received copies.

use super::layout::QUARANTINE_UNCUT_MAX;
use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path(), "ss1").unwrap();
    (d, s)
}

fn commit(s: &Store, f: &str, text: &str) -> Meta {
    let (_, meta, _) = s.load_text(f).unwrap();
    s.write_content(f, meta, text.as_bytes()).unwrap()
}

#[test]
fn create_write_undo_delete() {
    let (d, s) = store();
    let m = s.create("docs/a.txt", "alice", 3).unwrap();
    assert_eq!(
        m.version,
        Version {
            epoch: 3,
            counter: 1
        }
    );
    assert!(matches!(
        s.create("docs/a.txt", "bob", 3),
        Err(StoreError::Exists(_))
    ));
    let m1 = commit(&s, "docs/a.txt", "one.");
    let m2 = commit(&s, "docs/a.txt", "one. two.");
    assert!(m2.version > m1.version);
    assert_eq!(m2.words, 2);
    assert_eq!(m2.undo.len(), 2);
    assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 2);
    let u = s.undo("docs/a.txt", 3).unwrap();
    assert!(u.version > m2.version, "versions only go up");
    assert_eq!(
        fs::read_to_string(s.content_path("docs/a.txt")).unwrap(),
        "one."
    );
    s.undo("docs/a.txt", 3).unwrap();
    assert_eq!(
        fs::read_to_string(s.content_path("docs/a.txt")).unwrap(),
        ""
    );
    assert!(matches!(
        s.undo("docs/a.txt", 3),
        Err(StoreError::NoUndo(_))
    ));
    assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 0);
    commit(&s, "docs/a.txt", "x.");
    s.delete("docs/a.txt").unwrap();
    assert!(matches!(
        s.delete("docs/a.txt"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 0);
    assert!(s.scan().unwrap().is_empty());
}

/// A create made again is answered as the first was only while the file is exactly what it
/// made: that version, that owner, empty, untouched.
fn a_repeated_create_is_answered_as_the_first_only_while_the_file_is_as_it_made_it(s: &Store) {
    let v = Version {
        epoch: 2,
        counter: 5,
    };
    let first = s.create_at("a.txt", "alice", v).unwrap();
    let again = s.create_at("a.txt", "alice", v).unwrap();
    assert_eq!(again.version, first.version);
    assert_eq!(again.mtime_ns, first.mtime_ns);
    assert_eq!(again.owner.as_deref(), Some("alice"));
    let exists = |r: Result<Meta, StoreError>| matches!(r, Err(StoreError::Exists(_)));
    assert!(exists(s.create_at("a.txt", "bob", v)), "another owner");
    let other = Version {
        epoch: 2,
        counter: 1,
    };
    assert!(
        exists(s.create_at("a.txt", "alice", other)),
        "another version"
    );
    commit(s, "a.txt", "one.");
    assert!(exists(s.create_at("a.txt", "alice", v)), "written since");
    // Emptied again by an undo: a later version with history, not the file the create made.
    s.undo("a.txt", 2).unwrap();
    assert!(exists(s.create_at("a.txt", "alice", v)), "undone since");
    // Rewritten by hand, still empty: the mtime is not the one recorded.
    s.create_at("b.txt", "alice", v).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
    fs::File::options()
        .write(true)
        .open(s.content_path("b.txt"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert!(exists(s.create_at("b.txt", "alice", v)), "edited by hand");
}

#[test]
fn a_repeated_create_through_the_journal() {
    let (_d, s) = store();
    a_repeated_create_is_answered_as_the_first_only_while_the_file_is_as_it_made_it(&s);
}

#[test]
fn a_repeated_create_without_the_journal() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().canonicalize().unwrap();
    let s = Store::open_unjournaled(Recording::on(&root), &root, "ss1").unwrap();
    a_repeated_create_is_answered_as_the_first_only_while_the_file_is_as_it_made_it(&s);
}

#[test]
fn undo_depth_is_bounded() {
    let (d, s) = store();
    s.create("a", "alice", 1).unwrap();
    for i in 0..(UNDO_DEPTH + 5) {
        commit(&s, "a", &format!("v{i}."));
    }
    let (m, _) = s.current("a").unwrap();
    assert_eq!(m.undo.len(), UNDO_DEPTH);
    assert_eq!(
        fs::read_dir(d.path().join("undo")).unwrap().count(),
        UNDO_DEPTH
    );
    s.undo("a", 1).unwrap();
    let last = UNDO_DEPTH + 3;
    assert_eq!(
        fs::read_to_string(s.content_path("a")).unwrap(),
        format!("v{last}.")
    );
}

#[test]
fn verify_tells_bit_rot_from_a_hand_edit() {
    let (_d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    let m = commit(&s, "a.txt", "hello world.");
    let (h, _, adopted) = s.verify("a.txt").unwrap().unwrap();
    assert!(!adopted);
    assert_eq!(
        (h.version, h.checksum, h.actual),
        (m.version, m.checksum, m.checksum)
    );
    // Bit rot: one byte flipped, size and mtime as before.
    let p = s.content_path("a.txt");
    let mtime = fs::metadata(&p).unwrap().modified().unwrap();
    fs::write(&p, "hello World.").unwrap();
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (h, _, adopted) = s.verify("a.txt").unwrap().unwrap();
    assert!(!adopted, "same size and mtime is not a hand edit");
    assert_eq!(h.version, m.version);
    assert_eq!(h.checksum, m.checksum);
    assert_eq!(h.actual, crc32c::crc32c(b"hello World."));
    // A hand edit (new size): adopted as a new version, consistent with its bytes.
    fs::write(&p, "hello there world.").unwrap();
    let (h, _, adopted) = s.verify("a.txt").unwrap().unwrap();
    assert!(adopted);
    assert!(h.version > m.version);
    assert_eq!(h.checksum, h.actual);
    assert!(s.verify("nothing").unwrap().is_none());
}

#[test]
fn quarantine_entries_are_listed_per_file_and_as_orphans() {
    let (d, s) = store();
    assert!(s.quarantined("a.txt").unwrap().is_empty());
    assert_eq!(s.quarantine_orphans(10).unwrap(), (Vec::new(), 0));
    s.create("a.txt", "alice", 1).unwrap();
    let q = d.path().join("quarantine");
    fs::create_dir_all(q.join("docs")).unwrap();
    fs::write(q.join("a.txt.1-3"), "x").unwrap();
    fs::write(q.join("a.txt.1-3.meta"), "{}").unwrap();
    fs::write(q.join("a.txt.2-1"), "y").unwrap();
    fs::write(q.join("a.txt.1-3.x"), "not an entry").unwrap();
    fs::write(q.join("docs/b.md.1-7"), "z").unwrap();
    let v = |epoch, counter| Version { epoch, counter };
    assert_eq!(s.quarantined("a.txt").unwrap(), vec![v(1, 3), v(2, 1)]);
    assert_eq!(s.quarantined("docs/b.md").unwrap(), vec![v(1, 7)]);
    assert!(s.quarantined("a").unwrap().is_empty());
    // a.txt is held here, so only docs/b.md's entry is an orphan.
    let (orphans, more) = s.quarantine_orphans(10).unwrap();
    assert_eq!(more, 0);
    assert_eq!(
        orphans,
        vec![QuarantineEntry {
            file: "docs/b.md".into(),
            version: v(1, 7)
        }]
    );
    assert_eq!(s.quarantine_orphans(0).unwrap().1, 1);
    assert_eq!(parse_quarantine_name("a.txt.1-3.meta"), None);
    assert_eq!(parse_quarantine_name(".1-3"), None);
}

#[test]
fn a_long_name_is_quarantined_under_a_name_that_fits() {
    let (d, s) = store();
    // 250 bytes, multi-byte characters across the cut: "é" is two bytes.
    let leaf = format!("{}{}.txt", "é".repeat(100), "x".repeat(46));
    assert_eq!(leaf.len(), 250);
    for file in [leaf.clone(), format!("docs/{leaf}")] {
        s.create(&file, "alice", 1).unwrap();
        commit(&s, &file, "unacknowledged.");
        let v = s.read_meta(&file).unwrap().version;
        let rel = s.quarantine(&file, None).unwrap().expect("set aside");
        let leaf_on_disk = rel.rsplit('/').next().unwrap();
        assert!(leaf_on_disk.len() + ".meta".len() <= 255, "{rel}");
        assert!(d.path().join(&rel).is_file(), "{rel}");
        let meta = fs::read(d.path().join(format!("{rel}.meta"))).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(doc["file"], file.as_str());
        // Listed under the original name, per file and as an orphan.
        assert_eq!(s.quarantined(&file).unwrap(), vec![v]);
        let (orphans, _) = s.quarantine_orphans(10).unwrap();
        assert!(
            orphans.contains(&QuarantineEntry {
                file: file.clone(),
                version: v
            }),
            "{orphans:?}"
        );
        // A later file of that name set aside too: both listed.
        s.create(&file, "alice", 1).unwrap();
        assert!(s.quarantine(&file, None).unwrap().is_some());
        assert_eq!(s.quarantined(&file).unwrap().len(), 2);
    }
    // Short names keep their plain form.
    let v2 = Version {
        epoch: 2,
        counter: 3,
    };
    assert_eq!(quarantine_rel("docs/a.txt", v2), "docs/a.txt.2-3");
    // Two long names that share their first 190 bytes do not share entries.
    let other = format!("{}{}.md", "é".repeat(100), "x".repeat(47));
    assert_ne!(quarantine_base(&leaf), quarantine_base(&other));
    // A file named like another's cut name (which it can only be if no longer than a
    // cut name) is cut itself, so it never sees the other file's entries.
    let mimic = quarantine_base(&leaf);
    assert!(mimic.len() <= names::MAX_COMPONENT_BYTES);
    assert_ne!(quarantine_base(&mimic), mimic);
    s.create(&mimic, "mallory", 1).unwrap();
    assert_eq!(s.quarantined(&mimic).unwrap(), vec![]);
    // Every whole leaf kept is shorter than any cut base.
    assert!(QUARANTINE_UNCUT_MAX < mimic.len());
}

#[test]
fn scan_adopts_hand_edits_and_cleans_up() {
    let (d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    let m = commit(&s, "a.txt", "hello world.");
    // A clean stop (a redo would otherwise rewrite the journaled content over the hand edit).
    s.checkpoint_journal().unwrap();
    drop(s);
    // A hand-placed file, a hand edit, an unfinished create, a stray blob and a temp file.
    fs::write(d.path().join("files/new.txt"), "by hand").unwrap();
    fs::write(d.path().join("files/a.txt"), "edited by hand, longer.").unwrap();
    fs::write(d.path().join("meta/ghost.txt"), "{}").unwrap();
    fs::write(d.path().join("undo/stray"), "x").unwrap();
    fs::write(d.path().join("tmp/t1"), "x").unwrap();
    let s = Store::open(d.path(), "ss1").unwrap();
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    let mut list = s.scan().unwrap();
    list.sort_by(|a, b| a.file.cmp(&b.file));
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].file, "a.txt");
    assert!(list[0].version > m.version);
    assert_eq!(list[0].owner.as_deref(), Some("alice"));
    assert_eq!(list[0].words, 4);
    assert_eq!(list[1].file, "new.txt");
    assert_eq!(list[1].owner, None);
    assert!(!d.path().join("meta/ghost.txt").exists());
    assert!(!d.path().join("undo/stray").exists());
    assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 1);
    // A second scan finds nothing new: versions stay.
    let again = s.scan().unwrap();
    let a = again.iter().find(|f| f.file == "a.txt").unwrap();
    assert_eq!(a.version, list[0].version);
}

#[test]
fn live_listing_leaves_blobs_and_metas_alone() {
    let (d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    // What a commit or create in progress looks like from outside: a blob not yet
    // referenced, a meta whose content is not written yet.
    fs::write(d.path().join("undo/inflight"), "x").unwrap();
    fs::write(d.path().join("meta/b.txt.meta"), "{}").unwrap();
    assert_eq!(s.list().unwrap().len(), 1);
    assert!(d.path().join("undo/inflight").exists());
    assert!(d.path().join("meta/b.txt.meta").exists());
}

#[test]
fn a_file_removed_by_hand_is_forgotten() {
    let (d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    commit(&s, "a.txt", "one.");
    assert!(!s.forget_vanished("a.txt"));
    fs::remove_file(s.content_path("a.txt")).unwrap();
    assert!(matches!(s.current("a.txt"), Err(StoreError::NotFound(_))));
    assert!(s.forget_vanished("a.txt"));
    assert!(!s.forget_vanished("a.txt"));
    assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(d.path().join("meta")).unwrap().count(), 0);
}

#[test]
fn access_adopts_a_changed_file() {
    let (_d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    fs::write(s.content_path("a.txt"), "changed.").unwrap();
    let (m, adopted) = s.current("a.txt").unwrap();
    assert!(adopted);
    assert_eq!(m.size, 8);
    let (_, adopted) = s.current("a.txt").unwrap();
    assert!(!adopted);
}

#[test]
fn snapshot_sees_old_content_after_replace() {
    let (_d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    commit(&s, "a.txt", "old.");
    let (mut f, _, _) = s.snapshot("a.txt").unwrap();
    commit(&s, "a.txt", "new content.");
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    assert_eq!(text, "old.");
}

proptest::proptest! {
    #[test]
    fn counter_matches_whole_content_counts(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ascii in proptest::collection::vec(0u8..4, 0..300),
        cut in 0usize..300,
        cut2 in 0usize..300,
    ) {
        // Mix raw bytes with spaces and multi-byte text so cut sequences are common.
        let mut content = Vec::new();
        for (k, b) in bytes.iter().enumerate() {
            match ascii.get(k) {
                Some(0) => content.push(b' '),
                Some(1) => content.extend_from_slice("é€".as_bytes()),
                // Non-ASCII whitespace, a four-byte char, and a lead byte left dangling.
                Some(2) if b % 4 == 0 => content.extend_from_slice("\u{3000}\u{a0}".as_bytes()),
                Some(2) if b % 4 == 1 => content.extend_from_slice("𝄞".as_bytes()),
                Some(2) => content.extend_from_slice(&"𝄞".as_bytes()[..(*b as usize % 3) + 1]),
                _ => content.push(*b),
            }
        }
        let cut = cut.min(content.len());
        let cut2 = cut2.clamp(cut, content.len());
        let mut c = ContentCounter::new();
        c.update(&content[..cut]);
        c.update(&content[cut..cut2]);
        c.update(&content[cut2..]);
        let f = c.finish(0);
        let text = String::from_utf8_lossy(&content);
        proptest::prop_assert_eq!(f.words, crate::ss::document::count_words(&text));
        proptest::prop_assert_eq!(f.chars, crate::ss::document::count_chars(&text));
        proptest::prop_assert_eq!(f.checksum, crc32c::crc32c(&content));
        proptest::prop_assert_eq!(f.size, content.len() as u64);
        // Parts whose CRC32C is known (verified frames) give the same facts.
        let mut k = ContentCounter::new();
        for part in [&content[..cut], &content[cut..cut2], &content[cut2..]] {
            k.update_known(part, crc32c::crc32c(part));
        }
        let g = k.finish(0);
        proptest::prop_assert_eq!((g.checksum, g.size, g.words, g.chars), (f.checksum, f.size, f.words, f.chars));
    }
}

#[test]
fn history_entries_are_named_by_version() {
    let (_d, s) = store();
    let created = s.create("a", "alice", 1).unwrap();
    commit(&s, "a", "one.");
    let (m, _) = s.current("a").unwrap();
    assert_eq!(
        m.undo,
        vec![blob_id("a", created.version, created.checksum)]
    );
    assert_eq!(
        parse_blob_id(&m.undo[0]),
        Some((created.version, created.checksum))
    );
    assert_ne!(
        blob_id("a", created.version, 0),
        blob_id("b", created.version, 0)
    );
    let (held, blobs) = s.held("a").unwrap().unwrap();
    assert_eq!(held, m);
    assert_eq!(blobs, vec![created.version]);
    assert!(s.held("nope").unwrap().is_none());
}

fn text(s: &Store, f: &str) -> String {
    fs::read_to_string(s.content_path(f)).unwrap()
}

#[test]
fn checkpoints_are_kept_listed_reverted_and_deleted_with_the_file() {
    let (d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    let m1 = commit(&s, "a.txt", "one.");
    let c1 = s.checkpoint("a.txt", "v1", "bob", 1).unwrap();
    assert!(c1.version > m1.version, "a checkpoint is a new version");
    assert_eq!(c1.checksum, m1.checksum);
    assert!(matches!(
        s.checkpoint("a.txt", "v1", "bob", 1),
        Err(StoreError::CheckpointExists { .. })
    ));
    commit(&s, "a.txt", "one. two.");
    let (list, _, _) = s.checkpoints("a.txt").unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].tag.as_str(), list[0].creator.as_str()),
        ("v1", "bob")
    );
    assert_eq!(list[0].size, 4);
    let (mut f, info, _, _) = s.open_checkpoint("a.txt", "v1").unwrap();
    let mut got = String::new();
    f.read_to_string(&mut got).unwrap();
    assert_eq!((got.as_str(), info.checksum), ("one.", m1.checksum));
    assert!(matches!(
        s.open_checkpoint("a.txt", "nope"),
        Err(StoreError::NoCheckpoint { .. })
    ));
    // REVERT is a content change like any other: a new version, undoable.
    let before = s.current("a.txt").unwrap().0;
    let r = s.revert("a.txt", "v1", 1).unwrap();
    assert!(r.version > before.version);
    assert_eq!(text(&s, "a.txt"), "one.");
    s.undo("a.txt", 1).unwrap();
    assert_eq!(text(&s, "a.txt"), "one. two.");
    // The checkpoint's bytes did not change when the content did.
    let (mut f, _, _, _) = s.open_checkpoint("a.txt", "v1").unwrap();
    got.clear();
    f.read_to_string(&mut got).unwrap();
    assert_eq!(got, "one.");
    assert!(s.scan().unwrap().len() == 1);
    assert_eq!(held_tags(&s, "a.txt"), vec!["v1".to_string()]);
    // DELETE takes history and checkpoints; a new file of that name starts clean.
    s.delete("a.txt").unwrap();
    assert_eq!(
        fs::read_dir(d.path().join("checkpoints")).unwrap().count(),
        0
    );
    s.create("a.txt", "carol", 1).unwrap();
    assert!(s.checkpoints("a.txt").unwrap().0.is_empty());
    assert!(matches!(s.undo("a.txt", 1), Err(StoreError::NoUndo(_))));
}

#[test]
fn at_least_64_checkpoints_per_file_then_a_limit() {
    let (_d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    for i in 0..MAX_CHECKPOINTS {
        s.checkpoint("a.txt", &format!("t{i}"), "alice", 1).unwrap();
    }
    const { assert!(MAX_CHECKPOINTS >= 64) };
    assert!(matches!(
        s.checkpoint("a.txt", "one-more", "alice", 1),
        Err(StoreError::TooManyCheckpoints(_))
    ));
}

#[test]
fn move_renames_content_record_history_and_checkpoints() {
    let (d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    commit(&s, "a.txt", "one.");
    s.checkpoint("a.txt", "v1", "alice", 1).unwrap();
    let before = commit(&s, "a.txt", "one. two.");
    s.create("d/b.txt", "alice", 1).unwrap();
    assert!(matches!(
        s.move_file("a.txt", "d/b.txt"),
        Err(StoreError::Exists(_))
    ));
    let moved = s.move_file("a.txt", "d/a.txt").unwrap();
    assert_eq!(
        (moved.version, moved.checksum, &moved.owner),
        (before.version, before.checksum, &before.owner)
    );
    assert!(!s.content_path("a.txt").exists());
    assert_eq!(text(&s, "d/a.txt"), "one. two.");
    let (meta, adopted) = s.current("d/a.txt").unwrap();
    assert!(!adopted, "a rename keeps the content's mtime");
    assert_eq!(meta.undo.len(), 2);
    assert!(meta
        .undo
        .iter()
        .all(|id| id.starts_with(&file_hash("d/a.txt"))));
    assert_eq!(fs::read_dir(d.path().join("undo")).unwrap().count(), 2);
    assert_eq!(held_tags(&s, "d/a.txt"), vec!["v1".to_string()]);
    assert!(s.held_checkpoints("a.txt").is_empty());
    s.undo("d/a.txt", 1).unwrap();
    assert_eq!(text(&s, "d/a.txt"), "one.");
    let names: Vec<String> = s.scan().unwrap().into_iter().map(|f| f.file).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        fs::read_dir(d.path().join("checkpoints")).unwrap().count(),
        1
    );
}

#[test]
fn folders_are_directories_under_files() {
    let (_d, s) = store();
    s.make_folders(&["p".into(), "p/q".into()]).unwrap();
    s.make_folders(&["p".into()]).unwrap();
    assert!(s.content_path("p/q").is_dir());
    s.create("x", "alice", 1).unwrap();
    assert!(matches!(
        s.make_folders(&["x".into()]),
        Err(StoreError::Exists(_))
    ));
    // Empty folders are not files: the scan lists only x.
    assert_eq!(s.scan().unwrap().len(), 1);
}

/// The tags of a copy's held checkpoints (PEEK_FILE adds each one's checksum).
fn held_tags(s: &Store, file: &str) -> Vec<String> {
    s.held_checkpoints(file)
        .into_iter()
        .map(|h| h.split_once(':').map_or(h.clone(), |(t, _)| t.to_string()))
        .collect()
}

#[test]
fn a_tag_made_again_for_other_bytes_is_sent_again() {
    let (_a, src) = store();
    let (_b, dst) = store();
    for s in [&src, &dst] {
        s.create("a.txt", "alice", 1).unwrap();
        commit(s, "a.txt", "old bytes.");
        s.checkpoint("a.txt", "v1", "alice", 1).unwrap();
    }
    let held = dst.held_checkpoints("a.txt");
    assert_eq!(src.held_checkpoints("a.txt"), held);
    // Held with the same bytes: not sent.
    let tr = src.open_transfer("a.txt", &[], &held).unwrap();
    assert!(tr.checkpoint_files.is_empty());
    drop(tr);
    // Deleted and made again while the target was away, tagged v1 again.
    src.delete("a.txt").unwrap();
    src.create("a.txt", "alice", 2).unwrap();
    commit(&src, "a.txt", "new bytes!");
    src.checkpoint("a.txt", "v1", "alice", 2).unwrap();
    let tr = src.open_transfer("a.txt", &[], &held).unwrap();
    let sent: Vec<&str> = tr
        .checkpoint_files
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(sent, vec!["v1"], "the target's v1 holds other bytes");
    // And a target never takes a list naming its old v1 as the new one without the bytes.
    assert!(matches!(
        dst.check_checkpoints_complete("a.txt", &tr.checkpoints, &[]),
        Err(StoreError::Incomplete(_))
    ));
}

#[test]
fn a_delta_basis_stands_for_its_entry_only_verified_and_is_unlinked_if_the_install_fails() {
    let (d, s) = store();
    s.create("a.txt", "alice", 1).unwrap();
    let held = commit(&s, "a.txt", "one.");
    let basis = (held.version, held.checksum);
    let path = s.content_path("a.txt");
    let set_bytes = |b: &[u8]| {
        // Bit rot keeps the size and the mtime: the record still matches.
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, b).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    };
    set_bytes(b"onE.");
    let (_, _, r) = s.open_basis("a.txt", basis).unwrap();
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("does not match its checksum"));
    set_bytes(b"one.");
    let (_, _, r) = s.open_basis("a.txt", basis).unwrap();
    let (_, verified) = r.unwrap();
    let mut state = held.state("a.txt");
    state.version.counter += 5;
    state.checksum = crc32c::crc32c(b"one. two.");
    state.size = 9;
    let undo = [UndoDesc {
        version: held.version,
        size: held.size,
        checksum: held.checksum,
    }];
    let entry = d
        .path()
        .join("undo")
        .join(blob_id("a.txt", held.version, held.checksum));
    fn copy<'a>(
        state: &'a FileState,
        undo: &'a [UndoDesc],
        content: &'a Path,
        basis: Option<Basis>,
    ) -> CopyIn<'a> {
        CopyIn {
            state,
            undo,
            content,
            entries: &[],
            checkpoints: &[],
            checkpoint_files: &[],
            unsynced: &[],
            basis,
        }
    }
    // An install that fails after the link (its content a directory, which cannot be
    // renamed over the file) leaves no entry behind.
    let dir = d.path().join("tmp").join("a-directory");
    fs::create_dir_all(&dir).unwrap();
    assert!(s.install_copies(&[copy(&state, &undo, &dir, Some(verified))], None)[0].is_err());
    assert!(!entry.exists(), "an orphan history entry was left");
    let (t, mut f) = s.temp_file("a.txt").unwrap();
    f.write_all(b"one. two.").unwrap();
    f.sync_all().unwrap();
    // A copy without the verified basis (sent whole) must carry the entry.
    assert!(matches!(
        s.install_copies(&[copy(&state, &undo, t.path(), None)], None)[0],
        Err(StoreError::Incomplete(_))
    ));
    assert!(!entry.exists());
    let (meta, installed) = s
        .install_copies(&[copy(&state, &undo, t.path(), Some(verified))], None)
        .pop()
        .unwrap()
        .unwrap();
    assert!(installed && meta.version == state.version);
    assert_eq!(fs::read(&entry).unwrap(), b"one.");
    assert_eq!(fs::read(&path).unwrap(), b"one. two.");
}

#[test]
fn a_copy_carries_checkpoints_and_refuses_when_one_is_missing() {
    let (_a, src) = store();
    let (_b, dst) = store();
    src.create("d/a.txt", "alice", 1).unwrap();
    commit(&src, "d/a.txt", "one.");
    src.checkpoint("d/a.txt", "v1", "alice", 1).unwrap();
    commit(&src, "d/a.txt", "one. two.");
    let mut tr = src.open_transfer("d/a.txt", &[], &[]).unwrap();
    // What the network would carry, written into the target's tmp/ as put_content does.
    let to_temp = |f: &mut File| {
        let (t, mut out) = dst.temp_file("d/a.txt").unwrap();
        io::copy(f, &mut out).unwrap();
        out.sync_all().unwrap();
        t
    };
    let content = to_temp(&mut tr.content);
    let entries: Vec<(Version, TempFile)> = tr
        .entries
        .iter_mut()
        .map(|(v, f)| (*v, to_temp(f)))
        .collect();
    let ckpts: Vec<(String, TempFile)> = tr
        .checkpoint_files
        .iter_mut()
        .map(|(t, f)| (t.clone(), to_temp(f)))
        .collect();
    let entry_paths: Vec<(Version, PathBuf)> = entries
        .iter()
        .map(|(v, t)| (*v, t.path().to_path_buf()))
        .collect();
    let ckpt_paths: Vec<(String, PathBuf)> = ckpts
        .iter()
        .map(|(tag, t)| (tag.clone(), t.path().to_path_buf()))
        .collect();
    let state = tr.meta.state("d/a.txt");
    // A list naming a checkpoint that was neither sent nor held installs nothing.
    let mut bogus = tr.checkpoints.clone();
    bogus.push(CheckpointInfo {
        tag: "ghost".into(),
        ..bogus[0].clone()
    });
    assert!(matches!(
        dst.install_copy(
            &state,
            &tr.undo,
            content.path(),
            &entry_paths,
            &bogus,
            &ckpt_paths
        ),
        Err(StoreError::Incomplete(_))
    ));
    assert!(dst.held("d/a.txt").unwrap().is_none());
    let (meta, installed) = dst
        .install_copy(
            &state,
            &tr.undo,
            content.path(),
            &entry_paths,
            &tr.checkpoints,
            &ckpt_paths,
        )
        .unwrap();
    assert!(installed);
    assert_eq!(meta.version, state.version);
    assert_eq!(held_tags(&dst, "d/a.txt"), vec!["v1".to_string()]);
    let (mut f, info, _, _) = dst.open_checkpoint("d/a.txt", "v1").unwrap();
    let mut got = String::new();
    f.read_to_string(&mut got).unwrap();
    assert_eq!((got.as_str(), &info), ("one.", &tr.checkpoints[0]));
    // The copy's history works too: UNDO there restores what UNDO on the source would.
    dst.undo("d/a.txt", 1).unwrap();
    assert_eq!(text(&dst, "d/a.txt"), "one.");
}

/// A batch of copies with history, in two folders, installed with a `syncfs` window and
/// (as on kernels before 5.17) without one: every copy lands with its record and history,
/// and a store opened afresh (as after a restart) serves the same.
#[test]
fn a_batch_installs_alike_with_and_without_a_syncfs_window() {
    let (_a, src) = store();
    let files = ["p/a.txt", "q/r/b.txt", "c.txt"];
    for f in files {
        src.create(f, "alice", 1).unwrap();
        commit(&src, f, "one.");
        commit(&src, f, &format!("one. {f}."));
    }
    for windowed in [true, false] {
        let (b, dst) = store();
        let window = if windowed {
            let w = dst.sync_window().unwrap();
            assert!(
                w.is_some(),
                "this kernel's syncfs reports write-back errors"
            );
            w
        } else {
            None
        };
        let mut held = Vec::new();
        for f in files {
            let mut tr = src.open_transfer(f, &[], &[]).unwrap();
            // Written into tmp/ as a PUT_BATCH does: left open and unsynced without a
            // window, closed with one.
            let to_temp = |from: &mut File, open: &mut Vec<File>| {
                let (t, mut out) = dst.temp_file(f).unwrap();
                io::copy(from, &mut out).unwrap();
                if !windowed {
                    open.push(out);
                }
                t
            };
            let mut open = Vec::new();
            let content = to_temp(&mut tr.content, &mut open);
            let entries: Vec<(Version, TempFile)> = tr
                .entries
                .iter_mut()
                .map(|(v, e)| (*v, to_temp(e, &mut open)))
                .collect();
            assert_eq!(entries.len(), 2, "{f} sends its history");
            held.push((tr, content, entries, open));
        }
        let paths: Vec<(PathBuf, Vec<(Version, PathBuf)>)> = held
            .iter()
            .map(|(_, c, es, _)| {
                let es = es.iter().map(|(v, t)| (*v, t.path().to_path_buf()));
                (c.path().to_path_buf(), es.collect())
            })
            .collect();
        let states: Vec<FileState> = files
            .iter()
            .zip(&held)
            .map(|(f, (tr, ..))| tr.meta.state(f))
            .collect();
        let unsynced: Vec<Vec<&File>> = held
            .iter()
            .map(|(.., open)| open.iter().collect())
            .collect();
        let copies: Vec<CopyIn<'_>> = held
            .iter()
            .enumerate()
            .map(|(i, (tr, ..))| CopyIn {
                state: &states[i],
                undo: &tr.undo,
                content: &paths[i].0,
                entries: &paths[i].1,
                checkpoints: &[],
                checkpoint_files: &[],
                unsynced: &unsynced[i],
                basis: None,
            })
            .collect();
        let results = dst.install_copies(&copies, window.as_ref());
        assert_eq!(results.len(), files.len());
        for r in results {
            assert!(r.unwrap().1, "installed");
        }
        drop(copies);
        drop(held);
        let again = Store::open(b.path(), "ss1").unwrap();
        for f in files {
            assert_eq!(text(&again, f), format!("one. {f}."));
            let (meta, adopted) = again.current(f).unwrap();
            assert!(!adopted, "{f} has its record");
            assert_eq!(meta.version, src.current(f).unwrap().0.version);
            assert_eq!(meta.undo.len(), 2);
            again.undo(f, 1).unwrap();
            assert_eq!(text(&again, f), "one.");
        }
        assert_eq!(fs::read_dir(b.path().join("tmp")).unwrap().count(), 0);
    }
}

/// A file system that records, relative to the storage directory, the calls that decide what
/// survives a power cut (temp files are all `tmp`, history entries all `undo/*`).
struct Recording {
    root: PathBuf,
    log: Mutex<Vec<String>>,
    /// While true, every file sync waits (after being logged) until it is set false again.
    hold: (Mutex<bool>, std::sync::Condvar),
}

impl Recording {
    /// A recorder of the durable calls made under `root`.
    fn on(root: &Path) -> Arc<Recording> {
        Arc::new(Recording {
            root: root.to_path_buf(),
            log: Mutex::new(Vec::new()),
            hold: Default::default(),
        })
    }

    fn rel(&self, p: &Path) -> String {
        let r = p.strip_prefix(&self.root).unwrap_or(p).to_string_lossy();
        if r.starts_with("tmp/") {
            "tmp".into()
        } else if r.starts_with("undo/") {
            "undo/*".into()
        } else {
            r.into_owned()
        }
    }
    fn note(&self, what: String) {
        self.log.lock().unwrap().push(what);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Fs for Recording {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.note(format!("create {}", self.rel(path)));
        OsFs.create_new(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        OsFs.open(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        self.note(format!("open {} to write", self.rel(path)));
        OsFs.open_write(path)
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.note("sync file".into());
        let (held, turn) = &self.hold;
        let mut h = held.lock().unwrap();
        while *h {
            h = turn.wait(h).unwrap();
        }
        OsFs.sync_file(f)
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        files.iter().map(|f| self.sync_file(f)).collect()
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.note("sync fs".into());
        OsFs.sync_fs(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.note(format!("rename {} -> {}", self.rel(from), self.rel(to)));
        OsFs.rename(from, to)
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.note(format!("exchange {} <-> {}", self.rel(a), self.rel(b)));
        OsFs.exchange(a, b)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.note(format!("sync dir {}", self.rel(dir)));
        OsFs.sync_dir(dir)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.note(format!("link {} -> {}", self.rel(from), self.rel(to)));
        OsFs.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.note(format!("remove {}", self.rel(path)));
        OsFs.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.note(format!("remove dir {}", self.rel(dir)));
        OsFs.remove_dir_all(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        OsFs.read(path)
    }
    fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        OsFs.metadata(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<fs::ReadDir> {
        OsFs.read_dir(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.note(format!("mkdir {}", self.rel(dir)));
        OsFs.create_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsFs.create_dir_all(dir)
    }
}

#[test]
fn without_the_journal_create_and_a_content_change_make_the_durable_calls_in_order() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().canonicalize().unwrap();
    let rec = Recording::on(&root);
    let s = Store::open_unjournaled(rec.clone(), &root, "ss1").unwrap();
    rec.take();

    // CREATE: the empty content and the record staged, both synced, the record renamed into
    // place and meta/ synced, then the content and files/ synced.
    s.create("a", "alice", 1).unwrap();
    let want: Vec<String> = [
        "create tmp",
        "create tmp",
        "sync file",
        "sync file",
        "rename tmp -> meta/a",
        "sync dir meta",
        "rename tmp -> files/a",
        "sync dir files",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(rec.take(), want);

    // A content change: the old content linked into undo/, the content and record staged;
    // both synced while undo/ is; then the content renamed and files/ synced, then the
    // record renamed and meta/ synced.
    let lock = s.file_lock("a");
    let _g = lock.lock().unwrap();
    let (m, _) = s.current("a").unwrap();
    assert!(rec.take().is_empty(), "reading the record changes nothing");
    s.write_content("a", m, b"Hello.").unwrap();
    let mut got = rec.take();
    assert_eq!(got.len(), 10, "{got:?}");
    // The syncs of round 0 run at once, in any order.
    got[3..6].sort();
    let want: Vec<String> = [
        "link files/a -> undo/*",
        "create tmp",
        "create tmp",
        "sync dir undo",
        "sync file",
        "sync file",
        "rename tmp -> files/a",
        "sync dir files",
        "rename tmp -> meta/a",
        "sync dir meta",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(got, want);
    assert_eq!(text(&s, "a"), "Hello.");
}

#[test]
fn through_the_journal_a_change_syncs_only_its_entry_and_the_checkpoint_syncs_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().canonicalize().unwrap();
    let rec = Recording::on(&root);
    let s = Store::open_on(rec.clone(), &root, "ss1").unwrap();
    rec.take();
    // CREATE: both files staged, the entry synced, then both renamed without a sync.
    s.create("a", "alice", 1).unwrap();
    let want: Vec<String> = [
        "create tmp",
        "create tmp",
        "sync file",
        "rename tmp -> meta/a",
        "rename tmp -> files/a",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(rec.take(), want);
    // A content change: the new content staged, the entry synced, then the old content
    // linked into undo/ and the new one put in place without a sync, by exchange rather than
    // a rename over the old file (which on ext4 would start writing the new data at once);
    // the record is overwritten in place through a handle opened before the entry, so no
    // inode is made or freed for it and nothing after the entry needs a handle or space.
    let lock = s.file_lock("a");
    let g = lock.lock().unwrap();
    let (m, _) = s.current("a").unwrap();
    s.write_content("a", m, b"Hello.").unwrap();
    drop(g);
    let want: Vec<String> = [
        "create tmp",
        "open meta/a to write",
        "sync file",
        "link files/a -> undo/*",
        "exchange tmp <-> files/a",
        "remove tmp",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(rec.take(), want);
    // The checkpoint: the next log made durably (the first time, lazily), the rotation to
    // it, then the three paths touched, each directory once, the sealed log removed, and the
    // log after the next made.
    s.checkpoint_journal().unwrap();
    let want: Vec<String> = [
        "create journal/1.log",
        "sync file",
        "sync dir journal",
        "sync file",
        "sync file",
        "sync file",
        "sync dir files",
        "sync dir meta",
        "sync dir undo",
        "remove journal/0.log",
        "sync dir journal",
        "create journal/2.log",
        "sync file",
        "sync dir journal",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(rec.take(), want);
    // The next one finds its next log made.
    s.create("b", "alice", 1).unwrap();
    rec.take();
    s.checkpoint_journal().unwrap();
    let want: Vec<String> = [
        "sync file",
        "sync file",
        "sync dir files",
        "sync dir meta",
        "remove journal/1.log",
        "sync dir journal",
        "create journal/3.log",
        "sync file",
        "sync dir journal",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(rec.take(), want);
    s.checkpoint_journal().unwrap();
    assert!(rec.take().is_empty(), "an empty journal costs nothing");
    assert_eq!(text(&s, "a"), "Hello.");
}

/// A simulated disk whose power can be cut between any two file-system calls while other
/// threads are changing the store: once it is off, every call fails.
struct Gate {
    disk: Arc<crate::sim::disk::SimDisk>,
    off: std::sync::RwLock<bool>,
}

impl Gate {
    fn on<T>(&self, f: impl FnOnce(&crate::sim::disk::SimDisk) -> io::Result<T>) -> io::Result<T> {
        let off = self.off.read().unwrap();
        if *off {
            return Err(io::Error::other("the power is off"));
        }
        f(&self.disk)
    }
    fn cut(&self) {
        let mut off = self.off.write().unwrap();
        *off = true;
        self.disk.power_cut().unwrap();
    }
}

impl Fs for Gate {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.on(|d| d.create_new(path))
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        self.on(|d| d.open(path))
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        self.on(|d| d.open_write(path))
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.on(|d| d.sync_file(f))
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        match self.on(|d| Ok(d.sync_files(files))) {
            Ok(r) => r,
            Err(e) => files
                .iter()
                .map(|_| Err(io::Error::other(e.to_string())))
                .collect(),
        }
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.sync_fs(dir))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.on(|d| d.rename(from, to))
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.on(|d| d.exchange(a, b))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.sync_dir(dir))
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.on(|d| d.hard_link(from, to))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.on(|d| d.remove_file(path))
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.remove_dir_all(dir))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.on(|d| d.read(path))
    }
    fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        self.on(|d| d.metadata(path))
    }
    fn read_dir(&self, dir: &Path) -> io::Result<fs::ReadDir> {
        self.on(|d| d.read_dir(dir))
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.create_dir(dir))
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.on(|d| d.create_dir_all(dir))
    }
}

#[test]
fn concurrent_changes_share_syncs_and_a_power_cut_loses_none_they_returned() {
    const THREADS: usize = 8;
    for round in 0..6u64 {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(crate::sim::disk::SimDisk::new(d.path()));
        let gate = Arc::new(Gate {
            disk: disk.clone(),
            off: std::sync::RwLock::new(false),
        });
        let root = d.path().join("ss");
        let s = Store::open_on(gate.clone(), &root, "ss1").unwrap();
        s.scan().unwrap();
        // What each thread's calls returned: (text, version, previous text in its history)
        // of its file's last change.
        type Acked = Option<(String, Version, Option<String>)>;
        let acked: Vec<Mutex<Acked>> = (0..THREADS).map(|_| Mutex::new(None)).collect();
        let start = std::sync::Barrier::new(THREADS + 1);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for (t, slot) in acked.iter().enumerate() {
                let (s, start) = (&s, &start);
                scope.spawn(move || {
                    start.wait();
                    let file = format!("d{}/f{t}.txt", t % 3);
                    let Ok(mut m) = s.create(&file, "alice", 1) else {
                        return;
                    };
                    *slot.lock().unwrap() = Some((String::new(), m.version, None));
                    // The content and the history as the store should hold them.
                    let (mut now, mut history) = (String::new(), Vec::<String>::new());
                    for k in 1.. {
                        let text = format!("{t} {k}");
                        let lock = s.file_lock(&file);
                        let _g = lock.lock().unwrap();
                        let res = if k % 4 == 0 {
                            s.undo(&file, 1)
                        } else {
                            s.write_content(&file, m.clone(), text.as_bytes())
                        };
                        let Ok(next) = res else { return };
                        if k % 4 == 0 {
                            now = history.pop().unwrap_or_default();
                        } else {
                            history.push(std::mem::replace(&mut now, text));
                            if history.len() > UNDO_DEPTH {
                                history.remove(0);
                            }
                        }
                        *slot.lock().unwrap() =
                            Some((now.clone(), next.version, history.last().cloned()));
                        m = next;
                    }
                });
            }
            // Journal checkpoints run meanwhile, so the cut may fall inside one.
            let stop = &stop;
            let s2 = &s;
            scope.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if s2.checkpoint_journal().is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            });
            start.wait();
            // Let the changes run for a while (longer each round), then cut the power
            // between two calls, whatever the threads are doing.
            let until = Instant::now() + std::time::Duration::from_millis(20 + 15 * round);
            while Instant::now() < until {
                std::thread::yield_now();
            }
            gate.cut();
            stop.store(true, Ordering::SeqCst);
        });
        drop(s);
        let (file_syncs, _) = disk.syncs();
        let s = Store::open_on(disk.clone(), &root, "ss1").unwrap();
        s.scan().unwrap();
        let mut changes = 0;
        for (t, slot) in acked.iter().enumerate() {
            let file = format!("d{}/f{t}.txt", t % 3);
            let Some((text, version, previous)) = slot.lock().unwrap().clone() else {
                continue;
            };
            changes += 1;
            let (now, meta, _) = s.load_text(&file).unwrap_or_else(|e| {
                panic!("round {round}: {file}, returned at {version}, is gone: {e}")
            });
            // The last change returned is there, or a later one that was under way.
            assert!(
                meta.version >= version,
                "round {round}: {file} at {} after {version} was returned",
                meta.version
            );
            if meta.version == version {
                assert_eq!(now, text, "round {round}: {file}");
                // Its history too: the step before it comes back by UNDO.
                if let Some(previous) = previous {
                    let lock = s.file_lock(&file);
                    let _g = lock.lock().unwrap();
                    s.undo(&file, 1).unwrap_or_else(|e| {
                        panic!("round {round}: {file}: undo of {version}: {e}")
                    });
                    assert_eq!(s.load_text(&file).unwrap().0, previous, "round {round}");
                }
            }
        }
        assert!(changes > 0 && file_syncs > 0, "round {round}: nothing ran");
    }
}

/// Waits (up to 10 s) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let until = Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn without_the_journal_creates_queued_behind_a_batch_share_the_next_one() {
    const N: usize = 8;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().canonicalize().unwrap();
    let rec = Recording::on(&root);
    let s = Store::open_unjournaled(rec.clone(), &root, "ss1").unwrap();
    s.create("first.txt", "alice", 1).unwrap();
    rec.take();
    *rec.hold.0.lock().unwrap() = true;
    std::thread::scope(|scope| {
        let s = &s;
        // The first CREATE leads a batch of its own and stops in its first file sync.
        let lead = scope.spawn(move || s.create("lead.txt", "alice", 1));
        wait_until("the first CREATE syncs", || {
            rec.log.lock().unwrap().iter().any(|l| l == "sync file")
        });
        let others: Vec<_> = (0..N)
            .map(|i| scope.spawn(move || s.create(&format!("f{i}.txt"), "alice", 1)))
            .collect();
        wait_until("every other CREATE is queued", || s.batch.queued() == N);
        *rec.hold.0.lock().unwrap() = false;
        rec.hold.1.notify_all();
        lead.join().unwrap().unwrap();
        for o in others {
            o.join().unwrap().unwrap();
        }
    });
    let log = rec.take();
    let count = |what: &str| log.iter().filter(|l| l.starts_with(what)).count();
    // One at a time, each CREATE syncs meta/ and files/; the eight queued ones share a batch.
    assert_eq!(count("sync dir meta"), 2, "{log:#?}");
    assert_eq!(count("sync dir files"), 2, "{log:#?}");
    assert_eq!(count("sync file"), 2 * (N + 1), "{log:#?}");
    for i in 0..N {
        let (text, meta, _) = s.load_text(&format!("f{i}.txt")).unwrap();
        assert_eq!((text.as_str(), meta.owner.as_deref()), ("", Some("alice")));
    }
}

/// The OS file system without `renameat2(RENAME_EXCHANGE)`.
struct NoExchange;

impl Fs for NoExchange {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        OsFs.create_new(path)
    }
    fn open(&self, path: &Path) -> io::Result<File> {
        OsFs.open(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<File> {
        OsFs.open_write(path)
    }
    fn sync_file(&self, f: &File) -> io::Result<()> {
        OsFs.sync_file(f)
    }
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        OsFs.sync_files(files)
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        OsFs.sync_fs(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFs.rename(from, to)
    }
    fn exchange(&self, _: &Path, _: &Path) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.sync_dir(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.create_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsFs.create_dir_all(dir)
    }
}

#[test]
fn an_unsynced_change_is_exchanged_into_place_or_renamed_where_it_cannot_be() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().canonicalize().unwrap();
    let (tmp, target) = (root.join("tmp/t"), root.join("files/dir/f"));
    fs::create_dir_all(root.join("tmp")).unwrap();
    let rec = Recording::on(&root);
    let ls = |p: &Path| fs::read_dir(p).unwrap().count();
    // A new file: renamed, its folders made durably.
    fs::write(&tmp, "one").unwrap();
    let dir = change::place_unsynced(&*rec, &tmp, &target).unwrap();
    assert_eq!(dir, root.join("files/dir"));
    assert_eq!(fs::read_to_string(&target).unwrap(), "one");
    let got = rec.take();
    assert_eq!(
        got.iter().filter(|c| c.starts_with("rename")).count(),
        1,
        "{got:?}"
    );
    // Replacing it: exchanged, and the old file's name left in tmp/ removed; a second name
    // of the old file (a history link) keeps its bytes.
    fs::hard_link(&target, root.join("kept")).unwrap();
    fs::write(&tmp, "two").unwrap();
    change::place_unsynced(&*rec, &tmp, &target).unwrap();
    assert_eq!(
        rec.take(),
        vec![
            "exchange tmp <-> files/dir/f".to_string(),
            "remove tmp".to_string()
        ]
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "two");
    assert_eq!(fs::read_to_string(root.join("kept")).unwrap(), "one");
    assert_eq!(ls(&root.join("tmp")), 0);
    // A file system that cannot exchange: renamed over it.
    fs::write(&tmp, "three").unwrap();
    change::place_unsynced(&NoExchange, &tmp, &target).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "three");
    assert_eq!(ls(&root.join("tmp")), 0);
    // A staged file gone: the error, and the target untouched.
    assert!(change::place_unsynced(&*rec, &tmp, &target).is_err());
    assert_eq!(fs::read_to_string(&target).unwrap(), "three");
}
