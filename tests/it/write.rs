//! WRITE semantics (SPEC §3): sentences, word indexes, locks, concurrent sessions, atomic
//! visibility to readers.

use crate::harness::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

#[test]
fn delimiters_inside_tokens_split_sentences() {
    let c = Cluster::start();
    let alice = c.client("alice");
    // Every delimiter ends a sentence and the edited sentence is rendered with single spaces.
    alice
        .run("CREATE a.txt\nWRITE a.txt 0\n0 e.g. wow\nETIRW\nREAD a.txt\n")
        .assert_contains("Sentence: e. g. wow\n")
        .assert_contains("\ne. g. wow\n")
        .assert_code(0);
    // Three sentences now: `e.`, `g.`, and the unfinished `wow`.
    alice
        .run("WRITE a.txt 1\n1 hmm\nETIRW\nREAD a.txt\n")
        .assert_contains("Sentence: g. hmm\n")
        .assert_contains("Write Successful!\n")
        .assert_contains("\ne. g. hmm wow\n");
    alice
        .run("WRITE a.txt 2\n0 x\nETIRW\nREAD a.txt\n")
        .assert_contains("Sentence: x hmm wow\n")
        .assert_contains("\ne. g. x hmm wow\n");
    // The last sentence is unfinished, so index == count is out of range.
    alice
        .run("WRITE a.txt 3\n")
        .assert_contains("ERROR [INVALID]: Sentence index out of range")
        .assert_code(1);
    // `?` and `!` inside a token end sentences too; word indexes count the split words.
    alice
        .run("CREATE q.txt\nWRITE q.txt 0\n0 Really?Yes!No.\n1 so\nETIRW\nREAD q.txt\n")
        .assert_contains("Sentence: Really? Yes! No.\n")
        .assert_contains("Sentence: Really? so Yes! No.\n")
        .assert_contains("\nReally? so Yes! No.\n")
        .assert_code(0);
}

#[test]
fn editing_either_half_of_a_stored_token_sets_the_halves_apart() {
    let c = Cluster::start();
    let alice = c.client("alice");
    // UPLOAD stores bytes as they are, so `e.g.` stays glued until a sentence of it is edited.
    let local = c.dir().join("eg.local");
    std::fs::write(&local, "e.g. done.\n").unwrap();
    alice
        .run(&format!(
            "UPLOAD {} a.txt\nUPLOAD {} b.txt\n",
            local.display(),
            local.display()
        ))
        .assert_code(0);
    alice
        .run("WRITE a.txt 1\n0 X\nETIRW\nREAD a.txt\n")
        .assert_contains("Sentence: X g.\n")
        .assert_contains("\ne. X g. done.\n")
        .assert_code(0);
    alice
        .run("WRITE b.txt 0\n1 X\nETIRW\nREAD b.txt\n")
        .assert_contains("Sentence: e. X\n")
        .assert_contains("\ne. X g. done.\n")
        .assert_code(0);
}

#[test]
fn sentence_index_rules() {
    let c = Cluster::start();
    let alice = c.client("alice");
    alice.run("CREATE a.txt\n").assert_code(0);
    // An empty file has exactly one slot, index 0.
    alice
        .run("WRITE a.txt 1\n")
        .assert_lines(&["ERROR [INVALID]: Sentence index out of range"])
        .assert_code(1);
    alice
        .run("WRITE a.txt 0\n0 Hello world.\nETIRW\n")
        .assert_code(0);
    // Appending at index == count after a finished sentence.
    alice
        .run("WRITE a.txt 1\n0 Second one!\nETIRW\nREAD a.txt\n")
        .assert_contains("Hello world. Second one!\n")
        .assert_code(0);
    alice
        .run("WRITE a.txt 5\n")
        .assert_contains("ERROR [INVALID]: Sentence index out of range");
    // Inserting in the middle and at the end of an existing sentence.
    alice
        .run("WRITE a.txt 0\n1 big\n3 again\nETIRW\nREAD a.txt\n")
        .assert_contains("Sentence: Hello big world.\n")
        .assert_contains("Sentence: Hello big world. again\n")
        .assert_contains("Hello big world. again Second one!\n");
}

#[test]
fn bad_word_index_keeps_the_session() {
    let c = Cluster::start();
    let out = c
        .client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 One two.\n5 nope\nx y\n2 three\nETIRW\nREAD a.txt\n");
    out.assert_contains("ERROR [INVALID]: Word index out of range\n")
        .assert_contains("ERROR [INVALID]: expected '<word_index> <text>' or ETIRW")
        .assert_contains("Sentence: One two. three\n")
        .assert_contains("Write Successful!\n")
        .assert_contains("One two. three\n");
}

#[test]
fn newlines_and_spacing_outside_the_sentence_are_kept() {
    let text = "Line one.\nLine   two.\n\n  Line three.\n";
    let c = Cluster::builder()
        .seed("ss1", "n.txt", text.as_bytes())
        .start();
    // A hand-placed file is adopted; its owner is `admin`.
    c.client("admin")
        .run("WRITE n.txt 1\n0 Big\nETIRW\n")
        .assert_code(0);
    let got = raw_read(c.nm_addr(), "admin", "n.txt").expect("read");
    assert_eq!(
        String::from_utf8(got).unwrap(),
        "Line one.\nBig Line two.\n\n  Line three.\n"
    );
    assert_eq!(
        std::fs::read_to_string(c.storage("ss1").join("files/n.txt")).unwrap(),
        "Line one.\nBig Line two.\n\n  Line three.\n"
    );
}

#[test]
fn words_joined_onto_a_locked_sentence_survive_its_commit() {
    // X writes after the delimiter of sentence 0, so on commit its tail joins the front of
    // sentence 1, which Y holds. Y's later commit must keep those words.
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE m.txt\nWRITE m.txt 0\n0 A one. B two. C three.\nETIRW\n")
        .assert_code(0);
    let mut x = c.client("alice").spawn();
    x.send("WRITE m.txt 0");
    let mut y = c.client("alice").spawn();
    y.send("WRITE m.txt 1");
    y.send("0 x");
    y.expect_prefix("Sentence: x B two.");
    x.send("2 foo");
    x.expect_prefix("Sentence: A one. foo");
    x.send("ETIRW");
    x.expect_prefix("Write Successful!");
    c.client("alice")
        .run("READ m.txt\n")
        .assert_lines(&["A one. foo B two. C three."]);
    y.send("ETIRW");
    y.expect_prefix("Write Successful!");
    assert_eq!(x.finish().0, Some(0));
    assert_eq!(y.finish().0, Some(0));
    c.client("alice")
        .run("READ m.txt\n")
        .assert_lines(&["A one. foo x B two. C three."]);
}

#[test]
fn locked_sentence_other_sentences_writable_and_both_commit() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 First.\nETIRW\nWRITE a.txt 1\n0 Second.\nETIRW\nADDACCESS -W a.txt bob\n")
        .assert_code(0);
    let mut a = c.client("alice").spawn();
    a.send("WRITE a.txt 0");
    a.send("0 Alice's");
    a.expect_prefix("Sentence: Alice's First.");
    // Same sentence: locked. The lock holder's other work is unaffected.
    c.client("bob")
        .run("WRITE a.txt 0\n")
        .assert_contains("ERROR [LOCKED]: Sentence is locked by another writer")
        .assert_code(1);
    // The owner cannot delete or undo under an open session either.
    c.client("alice")
        .run("DELETE a.txt\n")
        .assert_contains("ERROR [LOCKED]:");
    c.client("alice")
        .run("UNDO a.txt\n")
        .assert_contains("ERROR [LOCKED]:");
    // Readers see the committed content, not the session's private copy.
    c.client("bob")
        .run("READ a.txt\n")
        .assert_lines(&["First. Second."]);
    // Another sentence is writable, in a session open at the same time.
    let mut b = c.client("bob").spawn();
    b.send("WRITE a.txt 1");
    b.send("0 Bob's");
    b.expect_prefix("Sentence: Bob's Second.");
    b.send("ETIRW");
    b.expect_prefix("Write Successful!");
    a.send("ETIRW");
    a.expect_prefix("Write Successful!");
    assert_eq!(a.finish().0, Some(0));
    assert_eq!(b.finish().0, Some(0));
    c.client("alice")
        .run("READ a.txt\n")
        .assert_lines(&["Alice's First. Bob's Second."]);
    // The lock is released by ETIRW.
    c.client("bob")
        .run("WRITE a.txt 0\n0 Now\nETIRW\n")
        .assert_code(0);
}

#[test]
fn abandoned_session_releases_the_lock_and_writes_nothing() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Keep.\nETIRW\n")
        .assert_code(0);
    let mut a = c.client("alice").spawn();
    a.send("WRITE a.txt 0");
    a.send("0 Lost");
    a.expect_prefix("Sentence: Lost Keep.");
    // End of input inside a session abandons it (a failure).
    assert_eq!(a.finish().0, Some(1));
    c.client("alice")
        .run("READ a.txt\nWRITE a.txt 0\n0 Yes\nETIRW\n")
        .assert_contains("Keep.\n")
        .assert_contains("Write Successful!")
        .assert_code(0);
}

#[test]
fn concurrent_sessions_on_different_sentences_all_commit() {
    let c = Cluster::start();
    let n = 6u64;
    raw_create(c.nm_addr(), "alice", "m.txt").unwrap();
    for i in 0..n {
        raw_write(c.nm_addr(), "alice", "m.txt", i, &[(0, &format!("S{i}."))]).unwrap();
    }
    // Every session opens before any commits, then they commit in reverse order.
    let mut sessions = Vec::new();
    for i in 0..n {
        let mut s = c.client("alice").spawn();
        s.send(&format!("WRITE m.txt {i}"));
        s.send(&format!("0 edit{i}"));
        s.expect_prefix(&format!("Sentence: edit{i} S{i}."));
        sessions.push(s);
    }
    // Commit in an order that is neither the opening order nor its reverse.
    let order: Vec<usize> = (0..n as usize)
        .step_by(2)
        .chain((1..n as usize).step_by(2))
        .collect();
    for i in order {
        sessions[i].send("ETIRW");
        sessions[i].expect_prefix("Write Successful!");
    }
    for s in sessions {
        assert_eq!(s.finish().0, Some(0));
    }
    let want: Vec<String> = (0..n).map(|i| format!("edit{i} S{i}.")).collect();
    let got = String::from_utf8(raw_read(c.nm_addr(), "alice", "m.txt").unwrap()).unwrap();
    assert_eq!(got, want.join(" "));
}

#[test]
fn concurrent_commits_from_threads_lose_nothing() {
    let c = Cluster::start();
    let n = 8u64;
    raw_create(c.nm_addr(), "alice", "t.txt").unwrap();
    for i in 0..n {
        raw_write(c.nm_addr(), "alice", "t.txt", i, &[(0, &format!("S{i}."))]).unwrap();
    }
    let addr = c.nm_addr().to_string();
    let rounds = 5;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let addr = addr.clone();
            thread::spawn(move || {
                for r in 0..rounds {
                    raw_write(&addr, "alice", "t.txt", i, &[(0, &format!("r{r}"))])
                        .unwrap_or_else(|e| panic!("writer {i} round {r}: {e}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let got = String::from_utf8(raw_read(&addr, "alice", "t.txt").unwrap()).unwrap();
    let prefix: Vec<String> = (0..rounds).rev().map(|r| format!("r{r}")).collect();
    let want: Vec<String> = (0..n)
        .map(|i| format!("{} S{i}.", prefix.join(" ")))
        .collect();
    assert_eq!(got, want.join(" "));
}

#[test]
fn readers_see_old_or_new_never_a_mix() {
    let c = Cluster::start();
    raw_create(c.nm_addr(), "alice", "big.txt").unwrap();
    // About 200 KB in sentences of about 20 KB, so every commit rewrites a large file.
    let mut base = Vec::new();
    for s in 0..10 {
        let words: Vec<String> = (0..2500).map(|w| format!("s{s}w{w}")).collect();
        let sentence = format!("{}.", words.join(" "));
        raw_write(c.nm_addr(), "alice", "big.txt", s, &[(0, &sentence)]).unwrap();
        base.push(sentence);
    }
    let base = base.join(" ");
    let commits = 20;
    let mut versions = HashSet::new();
    versions.insert(base.clone());
    // Versions after each commit: the writer prepends k0, then k1 before it, ...
    let mut cur = base.clone();
    for k in 0..commits {
        cur = format!("k{k} {cur}");
        versions.insert(cur.clone());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let addr = c.nm_addr().to_string();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            let stop = stop.clone();
            let versions = versions.clone();
            thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let got = raw_read(&addr, "alice", "big.txt").expect("read");
                    let got = String::from_utf8(got).expect("utf-8");
                    assert!(
                        versions.contains(&got),
                        "a read returned content that is no committed version ({} bytes, starts {:?})",
                        got.len(),
                        &got[..got.len().min(60)]
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for k in 0..commits {
        raw_write(&addr, "alice", "big.txt", 0, &[(0, &format!("k{k}"))]).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let got = String::from_utf8(raw_read(&addr, "alice", "big.txt").unwrap()).unwrap();
    assert_eq!(got, cur);
}

#[test]
fn an_idle_session_loses_its_lock() {
    let c = Cluster::builder()
        .ss_args(&["--lock-timeout-ms", "300"])
        .start();
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Base.\nETIRW\n")
        .assert_code(0);
    let since = c.mark("ss1");
    let mut a = c.client("alice").spawn();
    a.send("WRITE a.txt 0");
    a.send("0 Idle");
    a.expect_prefix("Sentence: Idle Base.");
    // The storage server says when it released the idle lock.
    c.wait_event_since(
        "ss1",
        since,
        "ss_refused",
        |v| v["reason"] == "idle" || v["msg"].as_str().unwrap_or("").contains("idle"),
        WAIT,
    );
    c.client("alice")
        .run("WRITE a.txt 0\n0 Fresh\nETIRW\n")
        .assert_contains("Write Successful!")
        .assert_code(0);
    // The idle session's commit fails; its edits never reach the file.
    a.send("ETIRW");
    a.expect_prefix("ERROR [");
    drop(a);
    c.client("alice")
        .run("READ a.txt\n")
        .assert_lines(&["Fresh Base."]);
}

#[test]
fn a_hand_edit_is_adopted_at_access() {
    let c = Cluster::start();
    c.client("alice")
        .run("CREATE h.txt\nWRITE h.txt 0\n0 Before.\nETIRW\n")
        .assert_code(0);
    std::fs::write(
        c.storage("ss1").join("files/h.txt"),
        "Edited by hand, longer now.",
    )
    .unwrap();
    c.client("alice")
        .run("READ h.txt\nINFO h.txt\n")
        .assert_contains("Edited by hand, longer now.\n")
        .assert_contains("Size: 27 bytes")
        .assert_contains("Words: 5")
        .assert_code(0);
    // And it is editable like any other version.
    c.client("alice")
        .run("WRITE h.txt 1\n0 Yes.\nETIRW\nREAD h.txt\n")
        .assert_contains("Edited by hand, longer now. Yes.\n")
        .assert_code(0);
}
