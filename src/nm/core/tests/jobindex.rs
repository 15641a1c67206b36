//! What job rows owed to a down backup cost the event loop: events per second (a heartbeat,
//! the tick, the next deadline; what the loop does per event) with no rows and with many,
//! from the same run. A printed figure, not a timed assertion:
//! `PAIRFS_JOB_ROWS=100000 cargo test --release --lib jobindex -- --ignored --nocapture`.

use super::*;
use std::time::Instant;

/// Core with pair ss1 → ss1_backup, the backup down, and `rows` files owed to it.
fn owing(rows: usize) -> (Core, ConnId) {
    let mut c = core();
    register(&mut c, 1, "ss1", vec![]);
    register(&mut c, 2, "ss1_backup", vec![]);
    c.on_close(2, 1);
    c.take_effects();
    c.on_close(1, 1);
    c.take_effects();
    let files: Vec<FileState> = (0..rows)
        .map(|i| st(&format!("f{i:06}.txt"), 1, Some("alice")))
        .collect();
    register(&mut c, 3, "ss1", files);
    c.take_effects();
    c.take_batch();
    assert_eq!(c.q.table().len(), rows);
    (c, 3)
}

/// Events per second over `events` heartbeats from the live primary.
fn rate(c: &mut Core, conn: ConnId, events: u64) -> f64 {
    let start = Instant::now();
    for seq in 1..=events {
        let now = 10 + seq / 100;
        c.on_frame(
            conn,
            Frame {
                msg: Message::Heartbeat {
                    seq,
                    writer: true,
                    disk: None,
                },
                body: vec![],
            },
            now,
        );
        c.tick(now);
        std::hint::black_box(c.next_deadline_ms());
        c.take_effects();
        c.take_batch();
    }
    events as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn events_per_second_with_many_rows_owed_to_a_down_backup() {
    let rows: usize = std::env::var("PAIRFS_JOB_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (mut base, bconn) = owing(0);
    let (mut many, mconn) = owing(rows);
    let events: u64 = std::env::var("PAIRFS_JOB_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // Alternating rounds, the median of each (the machine is shared and noisy).
    let (mut r0, mut r1) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        r0.push(rate(&mut base, bconn, events));
        r1.push(rate(&mut many, mconn, events));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r0, r1) = (median(r0), median(r1));
    println!("| rows owed to a down backup | events/s | vs 0 rows |");
    println!("|---:|---:|---:|");
    println!("| 0 | {r0:.0} | 1.00 |");
    println!("| {rows} | {r1:.0} | {:.3} |", r1 / r0);
}

fn replicate_jobs(e: &[Effect]) -> usize {
    e.iter()
        .filter(|x| {
            matches!(
                x,
                Effect::Job(Job {
                    kind: JobKind::Replicate(_),
                    ..
                })
            )
        })
        .count()
}

#[test]
fn rows_without_a_source_wait_out_of_the_index_until_it_registers() {
    let (mut c, conn) = owing(3);
    // The primary goes; the backup returns: its rows are due but have no source.
    c.on_close(conn, 20);
    c.take_effects();
    register(&mut c, 4, "ss1_backup", vec![]);
    c.tick(30);
    assert_eq!(replicate_jobs(&c.take_effects()), 0);
    assert_eq!(
        c.next_repl_deadline_ms(),
        None,
        "parked rows set no deadline"
    );
    // The primary registers again with the files: every row is dispatched.
    let files: Vec<FileState> = (0..3)
        .map(|i| st(&format!("f{i:06}.txt"), 1, Some("alice")))
        .collect();
    let e = register(&mut c, 5, "ss1", files);
    assert_eq!(replicate_jobs(&e), 3, "{e:?}");
}
