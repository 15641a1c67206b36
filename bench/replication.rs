//! The replication rows of `pairfs_bench` (issue 3), printed as a second table:
//!
//! * (a) UPLOAD of one large file (default 1 GiB) through the wire protocol, timed until the
//!   backup's `files/` holds all of it, against `cp` + fsync of the same file,
//!   `rsync -a --fsync` to an rsync daemon on 127.0.0.1 that the bench starts and stops by PID,
//!   and the floor for the two durable copies pairfs makes (two `cp` + fsync of the file, one
//!   after the other and both at once, whichever is faster; primary and backup share a disk),
//!   in rounds (default 3) that take turns on the disk, each figure the median of its rounds
//!   and each ratio one of medians, with the CPU time each storage server spent, the highest
//!   peak RSS of any round, and where ss1 says its part went (its `ss_commit` line's
//!   `recv_ms`: receiving and writing the bytes; `sync_ms`: the fsync of its copy); each round
//!   then uploads the file once more to a pair whose every link runs over TLS (`--tls-dir`),
//!   printed beside the plain figure with the ratio;
//! * (b) replication lag, from the writer's COMMITTED (the moment the client prints
//!   `Write Successful!`) to the backup holding the bytes, p50/p99 at 100 writes/s overall with
//!   1 and 16 writers, beside a raw durable write made 100 times a second on the same disk
//!   during the row (a stall of the disk shows in both; a tail of pairfs's own does not);
//! * (c) catch-up: many 4 KiB files (default 10,000) owed to a backup that was down, timed from
//!   its restart until it holds them all, against `rsync -a --fsync` of the same directory,
//!   with the bytes sent to the backup ÷ the bytes of the files it lacked, in rounds as (a);
//! * (d) delta catch-up: a large file (default 256 MiB) re-uploaded with 4 KiB changed in the
//!   middle while its backup was down, timed from the backup's restart until the name server
//!   logs the copy installed, with the bytes sent ÷ the bytes changed, against the same
//!   catch-up on a second pair whose name server sends stale copies whole
//!   (`--delta-min-bytes 0`).
//!
//! "The backup holds the bytes" is read from the backup's disk: a storage server installs a
//! copy by atomic rename, so a file under `files/` with the expected size is complete (writes
//! in (b) only append, so the size names the version).

use super::{dial, io_timeout, nm_session_tls, ReplRowKind, Server, START_TIMEOUT_MS};
use anyhow::{anyhow, bail, Context, Result};
use pairfs::protocol::{frame::CHUNK_BYTES, AccessMode, Connection, FileState, Message};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Overall write rate of the lag rows, per second.
const LAG_WRITES_PER_S: u64 = 100;
/// Longest a single write may take to reach the backup before the row counts it as failed.
const LAG_DEADLINE_MS: u64 = 10_000;
/// Raw durable writes per second the lag rows' disk probe makes beside them.
const PROBE_WRITES_PER_S: u64 = 100;
/// Pause between two looks at the backup's disk while timing lag, in microseconds.
const LAG_POLL_US: u64 = 100;
/// Pause between two looks at the backup's disk for the bulk rows, in ms.
const BULK_POLL_MS: u64 = 5;
/// How long the upload row waits for ss1's `ss_commit` line to reach its log file.
const LOG_LINE_WAIT_MS: u64 = 2_000;
/// Size of each catch-up file.
const CATCHUP_FILE_BYTES: usize = 4096;
/// Slowest throughput the bulk rows wait for before giving up, in bytes per second.
const MIN_BYTES_PER_S: u64 = 2 << 20;

/// Sizes of the replication rows.
pub(crate) struct Sizes {
    /// Size of the uploaded file in MiB.
    pub(crate) upload_mib: u64,
    /// Rounds of the upload and catch-up rows (baselines and pairfs in turn); each figure is
    /// their median.
    pub(crate) rounds: u64,
    /// Writes in each lag row.
    pub(crate) lag_writes: u64,
    /// Files owed to the returning backup.
    pub(crate) catchup_files: u64,
    /// Size of the delta row's file in MiB.
    pub(crate) delta_mib: u64,
    /// The rows to run.
    pub(crate) rows: Vec<ReplRowKind>,
}

/// One line of the replication table.
pub(crate) struct ReplRow {
    what: String,
    pairfs: String,
    baseline: String,
    ratio: String,
    target: &'static str,
}

impl ReplRow {
    fn failed(what: String, target: &'static str, e: &anyhow::Error) -> ReplRow {
        ReplRow {
            what,
            pairfs: format!("error: {e:#}"),
            baseline: "-".into(),
            ratio: "-".into(),
            target,
        }
    }
}

/// Runs the three kinds of rows; a failing row is printed as such and the others still run.
/// Returns false when some row failed.
pub(crate) fn run(bin_dir: &Path, tmp: &Path, sizes: &Sizes, rows: &mut Vec<ReplRow>) -> bool {
    let mut clean = true;
    let rsync = match RsyncDaemon::start(tmp) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("pairfs_bench: no rsync baseline: {e:#}");
            None
        }
    };
    let what = format!(
        "(a) UPLOAD {} MiB until the backup holds it",
        sizes.upload_mib
    );
    if sizes.rows.contains(&ReplRowKind::Upload) {
        match upload_row(bin_dir, tmp, sizes, rsync.as_ref()) {
            Ok(r) => rows.push(r),
            Err(e) => {
                clean = false;
                rows.push(ReplRow::failed(what, "≥ 0.8× rsync", &e));
            }
        }
    }
    if sizes.rows.contains(&ReplRowKind::Lag) {
        match lag_rows(bin_dir, tmp, sizes.lag_writes) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                clean = false;
                rows.push(ReplRow::failed(
                    "(b) replication lag".into(),
                    "p99 ≤ 5 ms",
                    &e,
                ));
            }
        }
    }
    let what = format!("(c) catch-up of {} × 4 KiB", sizes.catchup_files);
    if sizes.rows.contains(&ReplRowKind::Catchup) {
        match catchup_row(bin_dir, tmp, sizes, rsync.as_ref()) {
            Ok(r) => rows.push(r),
            Err(e) => {
                clean = false;
                rows.push(ReplRow::failed(what, "faster than rsync", &e));
            }
        }
    }
    if sizes.rows.contains(&ReplRowKind::Delta) {
        match delta_row(bin_dir, tmp, sizes.delta_mib) {
            Ok(r) => rows.push(r),
            Err(e) => {
                clean = false;
                let what = format!("(d) delta catch-up of {} MiB", sizes.delta_mib);
                rows.push(ReplRow::failed(what, DELTA_TARGET, &e));
            }
        }
    }
    clean
}

/// Prints the second table.
pub(crate) fn print_table(rows: &[ReplRow]) {
    println!();
    println!("| replication | pairfs | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.pairfs, r.baseline, r.ratio, r.target
        );
    }
}

// ----- rows -----

fn upload_row(
    bin_dir: &Path,
    tmp: &Path,
    sizes: &Sizes,
    rsync: Option<&RsyncDaemon>,
) -> Result<ReplRow> {
    let dir = tmp.join("upload");
    fs::create_dir_all(&dir)?;
    let mib = sizes.upload_mib;
    let size = mib << 20;
    let src = dir.join("big.bin");
    let checksum = make_file(&src, size)?;
    let mut rounds = Vec::new();
    for round in 0..sizes.rounds {
        rounds.push(upload_round(
            bin_dir,
            &dir.join(format!("round{round}")),
            &src,
            checksum,
            rsync,
        )?);
    }
    // Each figure is the median of its rounds: the baselines and pairfs take turns on the
    // same disk, so a noisy neighbour slows both rather than one.
    let med = |f: fn(&UploadRound) -> f64| median(rounds.iter().map(f).collect());
    let (cp_s, two_seq_s, two_par_s) =
        (med(|r| r.cp_s), med(|r| r.two_seq_s), med(|r| r.two_par_s));
    let floor_s = two_seq_s.min(two_par_s);
    let total_s = med(|r| r.total_s);
    let upload_s = med(|r| r.upload_s);
    let (recv_s, sync_s) = (med(|r| r.ss1_recv_s), med(|r| r.ss1_sync_s));
    let (cpu_ss1, cpu_backup) = (med(|r| r.cpu_ss1_s), med(|r| r.cpu_backup_s));
    let (tls_s, tls_cpu) = (med(|r| r.tls_total_s), med(|r| r.tls_cpu_s));
    // The highest peak of any round.
    let mut rss_mib = [0.0f64; 3];
    for r in &rounds {
        for (peak, m) in rss_mib.iter_mut().zip(r.rss_mib) {
            *peak = peak.max(m);
        }
    }
    fs::remove_file(&src)?;
    let spread = rounds_note(&rounds.iter().map(|r| r.total_s).collect::<Vec<_>>());

    let mb_s = |s: f64| size as f64 / (1 << 20) as f64 / s;
    let mut baseline = format!(
        "cp+fsync {cp_s:.2} s ({:.0} MiB/s); two copies (floor) {floor_s:.2} s (one after the other {two_seq_s:.2} s, at once {two_par_s:.2} s)",
        mb_s(cp_s)
    );
    let mut ratio = format!("{:.2}× the two-copy floor", floor_s / total_s);
    if let Some(r) = rsync.map(|_| med(|r| r.rsync_s.unwrap_or(f64::NAN))) {
        baseline.push_str(&format!("; rsync {r:.2} s ({:.0} MiB/s)", mb_s(r)));
        ratio = format!(
            "{:.2}× rsync; {ratio}; the floor itself is {:.2}× rsync",
            r / total_s,
            r / floor_s
        );
    }
    Ok(ReplRow {
        what: format!("(a) UPLOAD {mib} MiB until the backup holds it"),
        pairfs: format!(
            "{total_s:.2} s{spread} ({:.0} MiB/s; upload answered at {upload_s:.2} s, ss1 receiving {recv_s:.2} s then syncing its copy {sync_s:.2} s; CPU ss1 {cpu_ss1:.2} s, ss1_backup {cpu_backup:.2} s; peak RSS: nm {:.1} MiB, ss1 {:.1} MiB, ss1_backup {:.1} MiB); with TLS on every link {tls_s:.2} s ({:.0} MiB/s, {:.2}× the plain time; CPU of both servers {tls_cpu:.2} s vs {:.2} s plain)",
            mb_s(total_s),
            rss_mib[0],
            rss_mib[1],
            rss_mib[2],
            mb_s(tls_s),
            tls_s / total_s,
            cpu_ss1 + cpu_backup,
        ),
        baseline,
        ratio,
        target: "≥ 0.8× rsync",
    })
}

/// One round of row (a): the baselines, then pairfs, each on the same cached source file.
struct UploadRound {
    cp_s: f64,
    two_seq_s: f64,
    two_par_s: f64,
    rsync_s: Option<f64>,
    /// From the start of the UPLOAD to the backup holding the file.
    total_s: f64,
    /// From the start of the UPLOAD to its answer.
    upload_s: f64,
    /// Where ss1 says its part of the upload went (its `ss_commit` line): receiving and
    /// writing the bytes, then the fsync of its copy; NaN where it did not say.
    ss1_recv_s: f64,
    ss1_sync_s: f64,
    /// CPU time (user + system) the two storage servers spent meanwhile.
    cpu_ss1_s: f64,
    cpu_backup_s: f64,
    /// Peak RSS of nm, ss1 and ss1_backup, in MiB.
    rss_mib: [f64; 3],
    /// `total_s` with every link over TLS.
    tls_total_s: f64,
    /// CPU time of both storage servers meanwhile, with TLS.
    tls_cpu_s: f64,
}

fn upload_round(
    bin_dir: &Path,
    dir: &Path,
    src: &Path,
    checksum: u32,
    rsync: Option<&RsyncDaemon>,
) -> Result<UploadRound> {
    fs::create_dir_all(dir)?;
    let size = fs::metadata(src)?.len();
    // Every contender reads the source from the page cache, the first as much as the last.
    io::copy(&mut File::open(src)?, &mut io::sink())?;
    let cp_dst = dir.join("cp_copy.bin");
    let cp_s = timed(|| cp_fsync(src, &cp_dst))?;
    fs::remove_file(&cp_dst)?;
    // The floor for two durable copies on this disk (primary and backup share it here): two
    // cp + fsync of the file, one after the other and both at once; the faster counts.
    let (c1, c2) = (dir.join("cp_copy1.bin"), dir.join("cp_copy2.bin"));
    let two_seq_s = timed(|| cp_fsync(src, &c1).and_then(|()| cp_fsync(src, &c2)))?;
    fs::remove_file(&c1)?;
    fs::remove_file(&c2)?;
    let two_par_s = timed(|| {
        thread::scope(|scope| {
            let other = scope.spawn(|| cp_fsync(src, &c1));
            let mine = cp_fsync(src, &c2);
            other
                .join()
                .unwrap_or_else(|_| Err(anyhow!("cp thread panicked")))
                .and(mine)
        })
    })?;
    fs::remove_file(&c1)?;
    fs::remove_file(&c2)?;
    let rsync_s = match rsync {
        Some(d) => Some(d.push_fresh(src, "upload")?),
        None => None,
    };
    if let Some(d) = rsync {
        d.remove(src, "upload")?;
    }

    let pair = Pair::start(bin_dir, dir, &[])?;
    let cpu = |s: &Option<Server>| s.as_ref().map_or(Ok(0.0), Server::cpu_s);
    let (cpu_ss1, cpu_backup) = (cpu(&pair.ss1)?, cpu(&pair.backup)?);
    let t = Instant::now();
    upload(&pair, "big.bin", src, size, checksum)?;
    let upload_s = t.elapsed().as_secs_f64();
    let backup_file = pair.backup_files().join("big.bin");
    wait_for(bulk_budget(size), "the backup to hold big.bin", || {
        fs::metadata(&backup_file).is_ok_and(|m| m.len() == size)
    })?;
    let total_s = t.elapsed().as_secs_f64();
    let (cpu_ss1_s, cpu_backup_s) = (cpu(&pair.ss1)? - cpu_ss1, cpu(&pair.backup)? - cpu_backup);
    // ss1 logged the line before it answered, but the bench's reader of its output may not
    // have copied it to the log file yet.
    // A line still missing then leaves this round's figures NaN, not the row failed.
    let mut said = None;
    if let Some(s) = &pair.ss1 {
        let _ = wait_for(
            Duration::from_millis(LOG_LINE_WAIT_MS),
            "ss1's upload line",
            || {
                said = s.last_logged("ss_commit", "uploaded big.bin");
                said.is_some()
            },
        );
    }
    let said_s = |field: &str| {
        said.as_ref()
            .and_then(|v| v.get(field))
            .and_then(|v| v.as_f64())
            .map_or(f64::NAN, |ms| ms / 1000.0)
    };
    let (ss1_recv_s, ss1_sync_s) = (said_s("recv_ms"), said_s("sync_ms"));
    let rss = |s: &Option<Server>| s.as_ref().map_or(Ok(0), Server::peak_rss_kib);
    let kib_mib = |kib: u64| kib as f64 / 1024.0;
    let rss_mib = [
        kib_mib(pair.nm.peak_rss_kib()?),
        kib_mib(rss(&pair.ss1)?),
        kib_mib(rss(&pair.backup)?),
    ];
    drop(pair);
    // The next round starts on an empty disk again.
    fs::remove_dir_all(dir)?;

    // The same upload with every link over TLS, on an empty disk of its own.
    fs::create_dir_all(dir)?;
    let pair = Pair::start_with(bin_dir, dir, &[], true)?;
    let (tls_ss1, tls_backup) = (cpu(&pair.ss1)?, cpu(&pair.backup)?);
    let t = Instant::now();
    upload(&pair, "big.bin", src, size, checksum)?;
    let backup_file = pair.backup_files().join("big.bin");
    wait_for(
        bulk_budget(size),
        "the backup to hold big.bin (TLS)",
        || fs::metadata(&backup_file).is_ok_and(|m| m.len() == size),
    )?;
    let tls_total_s = t.elapsed().as_secs_f64();
    let tls_cpu_s = cpu(&pair.ss1)? - tls_ss1 + cpu(&pair.backup)? - tls_backup;
    drop(pair);
    fs::remove_dir_all(dir)?;
    Ok(UploadRound {
        tls_total_s,
        tls_cpu_s,
        cp_s,
        two_seq_s,
        two_par_s,
        rsync_s,
        total_s,
        upload_s,
        ss1_recv_s,
        ss1_sync_s,
        cpu_ss1_s,
        cpu_backup_s,
        rss_mib,
    })
}

/// `, median of N rounds (lo–hi s)` for the times of several rounds; nothing for one.
fn rounds_note(times: &[f64]) -> String {
    if times.len() < 2 {
        return String::new();
    }
    let lo = times.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = times.iter().copied().fold(0.0, f64::max);
    format!(", median of {} rounds ({lo:.2}–{hi:.2} s)", times.len())
}

/// The median of `v` (the mean of the middle two for an even count); NaN for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn lag_rows(bin_dir: &Path, tmp: &Path, writes: u64) -> Result<Vec<ReplRow>> {
    let dir = tmp.join("lag");
    fs::create_dir_all(&dir)?;
    let pair = Pair::start(bin_dir, &dir, &[])?;
    let mut rows = Vec::new();
    for writers in [1usize, 16] {
        let probe_dir = dir.join(format!("probe{writers}"));
        fs::create_dir_all(probe_dir.join("tmp"))?;
        let (lat_us, probe_us) = lag_measure(&pair, writers, writes, &probe_dir)?;
        let pct = |v: &[u64], p: f64| {
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1] as f64 / 1000.0
        };
        let (p99, raw_p99) = (pct(&lat_us, 99.0), pct(&probe_us, 99.0));
        rows.push(ReplRow {
            what: format!(
                "(b) lag, COMMITTED → backup holds it, {LAG_WRITES_PER_S} writes/s, {writers} writer(s)"
            ),
            pairfs: format!(
                "p50 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms ({} writes)",
                pct(&lat_us, 50.0),
                pct(&lat_us, 100.0),
                lat_us.len()
            ),
            baseline: format!(
                "raw durable write at {PROBE_WRITES_PER_S}/s during the row: p50 {:.2} ms, p99 {raw_p99:.2} ms, max {:.2} ms",
                pct(&probe_us, 50.0),
                pct(&probe_us, 100.0)
            ),
            ratio: if raw_p99 > 0.0 {
                format!("p99 {:.1}× raw", p99 / raw_p99)
            } else {
                "-".into()
            },
            target: "p99 ≤ 5 ms",
        });
    }
    Ok(rows)
}

/// Each writer appends sentences to its own file on the schedule that makes `writes` writes at
/// [`LAG_WRITES_PER_S`] overall, and times each until the backup's copy has the new size.
/// Meanwhile a probe makes a raw durable write (temp file, fsync, rename, directory fsync)
/// every `1 / PROBE_WRITES_PER_S` s in `probe_dir` on the same disk, so a disk that stalls
/// during the row shows in the baseline too. Returns the lags and the probe's latencies, both
/// in microseconds and sorted.
fn lag_measure(
    pair: &Pair,
    writers: usize,
    writes: u64,
    probe_dir: &Path,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let per_writer = (writes / writers as u64).max(1);
    let backup = pair.backup_files();
    let start = Instant::now() + Duration::from_millis(200);
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut probe_us: Vec<u64> = Vec::new();
    let results: Vec<Result<Vec<u64>>> = thread::scope(|scope| {
        let (done, probe_us) = (&done, &mut probe_us);
        scope.spawn(move || {
            let target = probe_dir.join("probe");
            let every = Duration::from_micros(1_000_000 / PROBE_WRITES_PER_S);
            let mut next = start;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
                next += every;
                let t = Instant::now();
                if pairfs::durable::replace(&probe_dir.join("tmp"), &target, b"probe").is_ok() {
                    probe_us.push(t.elapsed().as_micros() as u64);
                }
            }
        });
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let backup = &backup;
                let nm_addr = &pair.nm_addr;
                scope.spawn(move || -> Result<Vec<u64>> {
                    let file = format!("lag{writers}_{w}.txt");
                    let mut nm = nm_session_tls(nm_addr, &format!("lag{w}"), None)?;
                    let mut kept = None;
                    super::create(&mut nm, &file)?;
                    let on_backup = backup.join(&file);
                    let mut lat = Vec::with_capacity(per_writer as usize);
                    for k in 0..per_writer {
                        let slot = k * writers as u64 + w as u64;
                        let due = start + Duration::from_micros(slot * 1_000_000 / LAG_WRITES_PER_S);
                        if let Some(d) = due.checked_duration_since(Instant::now()) {
                            thread::sleep(d);
                        }
                        let state = super::append_sentence(&mut nm, &mut kept, &file, k)?;
                        let t = Instant::now();
                        let deadline = t + Duration::from_millis(LAG_DEADLINE_MS);
                        while !fs::metadata(&on_backup).is_ok_and(|m| m.len() == state.size) {
                            if Instant::now() >= deadline {
                                bail!("{file} version {} not on the backup after {LAG_DEADLINE_MS} ms", state.version);
                            }
                            thread::sleep(Duration::from_micros(LAG_POLL_US));
                        }
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    Ok(lat)
                })
            })
            .collect();
        let results = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("writer panicked"))))
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        results
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort_unstable();
    probe_us.sort_unstable();
    if all.is_empty() || probe_us.is_empty() {
        bail!("no write completed");
    }
    Ok((all, probe_us))
}

fn catchup_row(
    bin_dir: &Path,
    tmp: &Path,
    sizes: &Sizes,
    rsync: Option<&RsyncDaemon>,
) -> Result<ReplRow> {
    let files = sizes.catchup_files;
    let mut rounds = Vec::new();
    for round in 0..sizes.rounds {
        let dir = tmp.join(format!("catchup{round}"));
        rounds.push(catchup_round(bin_dir, &dir, files, rsync, round)?);
        fs::remove_dir_all(&dir)?;
    }
    // As in row (a): medians of rounds in which rsync and pairfs take turns.
    let pairfs_s = median(rounds.iter().map(|r| r.pairfs_s).collect());
    let sent = rounds.last().map_or((0, 0), |r| r.sent);
    let owed = files * CATCHUP_FILE_BYTES as u64;
    let (baseline, ratio) = match rsync {
        Some(_) => {
            let r = median(rounds.iter().filter_map(|r| r.rsync_s).collect());
            (
                format!("rsync -a --fsync {r:.2} s"),
                format!("{:.2}× rsync's speed", r / pairfs_s),
            )
        }
        None => ("rsync not run".into(), "-".into()),
    };
    let spread = rounds_note(&rounds.iter().map(|r| r.pairfs_s).collect::<Vec<_>>());
    Ok(ReplRow {
        what: format!("(c) catch-up of {files} × 4 KiB owed to a returning backup"),
        pairfs: format!(
            "{pairfs_s:.2} s{spread} ({:.0} files/s); bytes sent ÷ bytes owed: {} ÷ {owed} = {:.2} ({} copies logged)",
            files as f64 / pairfs_s,
            sent.1,
            sent.1 as f64 / owed as f64,
            sent.0
        ),
        baseline,
        ratio,
        target: "faster than rsync",
    })
}

/// One round of row (c).
struct CatchupRound {
    pairfs_s: f64,
    rsync_s: Option<f64>,
    /// Copies and bytes the worker logged.
    sent: (u64, u64),
}

fn catchup_round(
    bin_dir: &Path,
    dir: &Path,
    files: u64,
    rsync: Option<&RsyncDaemon>,
    round: u64,
) -> Result<CatchupRound> {
    fs::create_dir_all(dir)?;
    let mut pair = Pair::start(bin_dir, dir, &[])?;
    // The backup goes down; while it is down the primary comes to hold `files` files (placed
    // by hand while the primary is stopped, then adopted at its startup scan), all owed.
    pair.backup = None;
    pair.ss1 = None;
    let primary_files = dir.join("ss1/files");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; CATCHUP_FILE_BYTES];
    for i in 0..files {
        fill(&mut block, &mut seed);
        fs::write(primary_files.join(format!("c{i:05}.bin")), &block)?;
    }
    pair.ss1 = Some(pair.spawn_ss("ss1")?);
    pair.wait_registered()?;
    // A destination of its own each round: rsync sends nothing to a copy that is current.
    let rsync_s = match rsync {
        Some(d) => Some(d.push_dir(&primary_files, &format!("catchup{round}/"))?),
        None => None,
    };
    if let Some(d) = rsync {
        fs::remove_dir_all(d.root.join(format!("catchup{round}")))?;
    }

    let since = log_len(&pair.nm.log_path);
    let t = Instant::now();
    pair.backup = Some(pair.spawn_ss("ss1_backup")?);
    let backup_files = pair.backup_files();
    let want = files + 1; // and the warm-up file
    let budget = bulk_budget(files * CATCHUP_FILE_BYTES as u64).max(Duration::from_secs(120));
    wait_for(budget, "the backup to hold every owed file", || {
        count_files(&backup_files) >= want
    })?;
    let pairfs_s = t.elapsed().as_secs_f64();
    // The worker logs each copy once its target answered, just after the rename we saw.
    let mut sent = (0, 0);
    let _ = wait_for(
        Duration::from_secs(10),
        "the worker to log every copy",
        || {
            sent = copies_logged(&pair.nm.log_path, since, |f| f.starts_with('c'));
            sent.0 >= files
        },
    );
    drop(pair);
    Ok(CatchupRound {
        pairfs_s,
        rsync_s,
        sent,
    })
}

/// What row (d) aims at: a catch-up sends about what changed, not the file.
const DELTA_TARGET: &str = "bytes sent ÷ changed ≪ size ÷ changed";
/// Bytes row (d) changes in the middle of its file.
const DELTA_CHANGED_BYTES: u64 = 4096;

fn delta_row(bin_dir: &Path, tmp: &Path, mib: u64) -> Result<ReplRow> {
    let size = mib << 20;
    let delta = delta_round(bin_dir, &tmp.join("delta"), size, &[], true)?;
    let whole = delta_round(
        bin_dir,
        &tmp.join("delta_off"),
        size,
        &["--delta-min-bytes", "0"],
        false,
    )?;
    let per = |b: u64| b as f64 / DELTA_CHANGED_BYTES as f64;
    Ok(ReplRow {
        what: format!(
            "(d) catch-up of a {mib} MiB file re-uploaded with {DELTA_CHANGED_BYTES} bytes changed while its backup was down"
        ),
        pairfs: format!(
            "delta: {:.3} s from restart (the copy itself {} ms, of which the signature {} ms), {} bytes sent ({:.1}× the bytes changed; signature {} bytes)",
            delta.secs, delta.job_ms, delta.signature_ms, delta.bytes, per(delta.bytes), delta.signature
        ),
        baseline: format!(
            "sent whole: {:.3} s (the copy itself {} ms), {} bytes ({:.0}× the bytes changed)",
            whole.secs,
            whole.job_ms,
            whole.bytes,
            per(whole.bytes)
        ),
        ratio: format!(
            "{:.1}× faster from restart ({:.1}× for the copy), {:.0}× fewer bytes",
            whole.secs / delta.secs,
            whole.job_ms as f64 / delta.job_ms.max(1) as f64,
            whole.bytes as f64 / delta.bytes.max(1) as f64
        ),
        target: DELTA_TARGET,
    })
}

/// What one catch-up of row (d) took.
struct Round {
    /// From the backup's restart until the copy was logged installed.
    secs: f64,
    /// The worker's own time for the copy (the job, not the restart and registration).
    job_ms: u64,
    bytes: u64,
    signature: u64,
    /// The target's time to make the signature.
    signature_ms: u64,
}

/// A pair holding a `size`-byte file; the backup stops, the file is re-uploaded with
/// [`DELTA_CHANGED_BYTES`] changed in the middle, the backup restarts: timed until the name
/// server logs the copy installed, whose bytes it reports. Checks the backup's copy after,
/// and that it went by delta exactly when `by_delta` (a delta that fell back would report a
/// whole copy's figures as the delta's).
fn delta_round(
    bin_dir: &Path,
    dir: &Path,
    size: u64,
    nm_flags: &[&str],
    by_delta: bool,
) -> Result<Round> {
    use std::os::unix::fs::FileExt;
    fs::create_dir_all(dir)?;
    let src = dir.join("big.bin");
    let checksum = make_file(&src, size)?;
    let budget = bulk_budget(size);
    let mut pair = Pair::start(bin_dir, dir, nm_flags)?;
    upload(&pair, "big.bin", &src, size, checksum)?;
    let backup_file = pair.backup_files().join("big.bin");
    wait_for(budget, "the backup to hold big.bin", || {
        fs::metadata(&backup_file).is_ok_and(|m| m.len() == size)
    })?;
    pair.backup = None;
    let mut patch = vec![0u8; DELTA_CHANGED_BYTES as usize];
    fill(&mut patch, &mut 0x5151_u64);
    File::options()
        .write(true)
        .open(&src)?
        .write_all_at(&patch, size / 2)?;
    let checksum = crc_of(&src)?;
    upload(&pair, "big.bin", &src, size, checksum)?;
    let since = log_len(&pair.nm.log_path);
    let t = Instant::now();
    pair.backup = Some(pair.spawn_ss("ss1_backup")?);
    let mut done = None;
    wait_for(budget, "the worker to log big.bin installed", || {
        done = log_events(&pair.nm.log_path, since)
            .into_iter()
            .find(|v| v["event"] == "replication_worker_success" && v["file"] == "big.bin");
        done.is_some()
    })?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = done.as_ref().and_then(|v| v["bytes"].as_u64()).unwrap_or(0);
    let job_ms = done.as_ref().and_then(|v| v["ms"].as_u64()).unwrap_or(0);
    let delta_ev = log_events(&pair.nm.log_path, since)
        .into_iter()
        .find(|v| v["event"] == "replication_delta" && v["file"] == "big.bin");
    match (&delta_ev, by_delta) {
        (None, true) => {
            bail!("no replication_delta event for big.bin: the delta round sent it whole")
        }
        (Some(_), false) => bail!("the whole-copy round went by delta"),
        _ => {}
    }
    let field = |k: &str| delta_ev.as_ref().and_then(|v| v[k].as_u64()).unwrap_or(0);
    let (signature, signature_ms) = (field("signature"), field("signature_ms"));
    let got = crc_of(&backup_file)?;
    if got != checksum {
        bail!("the backup's big.bin has checksum {got:08x}, not {checksum:08x}");
    }
    drop(pair);
    fs::remove_dir_all(dir)?;
    Ok(Round {
        secs,
        job_ms,
        bytes,
        signature,
        signature_ms,
    })
}

/// CRC32C of a file, read 1 MiB at a time.
fn crc_of(path: &Path) -> Result<u32> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut crc = 0u32;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
}

/// The length of a server's log so far (a mark to read events after).
fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The JSON events a server logged after the mark `since`.
fn log_events(path: &Path, since: u64) -> Vec<serde_json::Value> {
    use std::io::{BufRead, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(since)).is_err() {
        return Vec::new();
    }
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// The copies the workers logged after `since` for files `which` picks, and the bytes they
/// sent to their targets.
fn copies_logged(path: &Path, since: u64, which: impl Fn(&str) -> bool) -> (u64, u64) {
    log_events(path, since)
        .iter()
        .filter(|v| v["event"] == "replication_worker_success")
        .filter(|v| v["file"].as_str().is_some_and(&which))
        .fold((0, 0), |(n, b), v| {
            (n + 1, b + v["bytes"].as_u64().unwrap_or(0))
        })
}

// ----- helpers -----

/// Seconds `f` takes.
fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// `cp src dst`, then an fsync of `dst` and of its directory.
fn cp_fsync(src: &Path, dst: &Path) -> Result<()> {
    let st = Command::new("cp").arg(src).arg(dst).status()?;
    if !st.success() {
        bail!("cp failed: {st}");
    }
    File::open(dst)?.sync_all()?;
    File::open(dst.parent().unwrap_or_else(|| Path::new(".")))?.sync_all()?;
    Ok(())
}

/// A deadline for moving `bytes` at no less than [`MIN_BYTES_PER_S`].
fn bulk_budget(bytes: u64) -> Duration {
    Duration::from_secs(30 + bytes / MIN_BYTES_PER_S)
}

/// Polls `cond` (a file on disk has no event to wait for) until it holds or `budget` passes.
fn wait_for(budget: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + budget;
    while !cond() {
        if Instant::now() >= deadline {
            bail!("gave up waiting {budget:?} for {what}");
        }
        thread::sleep(Duration::from_millis(BULK_POLL_MS));
    }
    Ok(())
}

fn count_files(dir: &Path) -> u64 {
    fs::read_dir(dir).map_or(0, |rd| rd.flatten().count() as u64)
}

/// Fills `buf` with xorshift bytes (incompressible, cheap).
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Writes `size` pseudo-random bytes to `path` (1 MiB at a time) and returns their CRC32C.
fn make_file(path: &Path, size: u64) -> Result<u32> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut block = vec![0u8; CHUNK_BYTES];
    let mut crc = 0u32;
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        fill(&mut block[..n], &mut seed);
        crc = crc32c::crc32c_append(crc, &block[..n]);
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(crc)
}

/// UPLOAD as the client does it: LOCATE for upload, then UPLOAD, the bytes in CHUNK frames,
/// END, and COMMITTED.
fn upload(pair: &Pair, file: &str, src: &Path, size: u64, checksum: u32) -> Result<FileState> {
    let mut nm = nm_session_tls(&pair.nm_addr, "bench", pair.tls.as_ref())?;
    let locate = Message::Locate {
        avoid: None,
        file: file.into(),
        mode: AccessMode::Upload,
    };
    let (addr, ticket) = match nm.call(&locate, &[])?.msg {
        Message::Located { addr, ticket, .. } => (addr, ticket),
        other => bail!("LOCATE for upload answered with {}", other.op_name()),
    };
    let mut ss = dial(&addr, pair.tls.as_ref())
        .with_context(|| format!("connecting to the storage server at {addr}"))?;
    ss.set_timeout(Some(io_timeout()))?;
    let head = Message::Upload {
        file: file.into(),
        size,
        checksum,
        ticket,
    };
    ss.send(&head, &[])?;
    let mut f = File::open(src)?;
    let mut block = vec![0u8; CHUNK_BYTES];
    loop {
        let n = f.read(&mut block)?;
        if n == 0 {
            break;
        }
        ss.send(&Message::Chunk {}, &block[..n])?;
    }
    ss.send(&Message::End {}, &[])?;
    let reply = ss.recv_some().map_err(|e| anyhow!("UPLOAD reply: {e}"))?;
    match reply
        .msg
        .into_result()
        .map_err(|e| anyhow!("UPLOAD: {e}"))?
    {
        Message::Committed { state, .. } => Ok(state),
        other => bail!("UPLOAD answered with {}", other.op_name()),
    }
}

/// A name server with one pair `ss1` / `ss1_backup`; dropping it stops all three by PID.
struct Pair {
    /// Fields drop in order: the storage servers stop before their name server.
    backup: Option<Server>,
    ss1: Option<Server>,
    nm: Server,
    nm_addr: String,
    dir: PathBuf,
    ss_bin: PathBuf,
    /// The cluster's TLS settings when every link runs over TLS.
    tls: Option<pairfs::tls::Tls>,
}

impl Pair {
    fn start(bin_dir: &Path, dir: &Path, nm_flags: &[&str]) -> Result<Pair> {
        Pair::start_with(bin_dir, dir, nm_flags, false)
    }

    /// [`Pair::start`], with every link over TLS when `tls` (a CA made in `dir/tls`).
    fn start_with(bin_dir: &Path, dir: &Path, nm_flags: &[&str], tls: bool) -> Result<Pair> {
        let tls = if tls {
            let d = dir.join("tls");
            pairfs::tls::init_dir(&d, &[])?;
            Some(pairfs::tls::Tls::load_client(&d)?)
        } else {
            None
        };
        let tls_args: Vec<std::ffi::OsString> = match &tls {
            Some(t) => vec!["--tls-dir".into(), t.dir().into()],
            None => vec![],
        };
        let nm_bin = bin_dir.join("bin_nm");
        let ss_bin = bin_dir.join("bin_ss");
        for b in [&nm_bin, &ss_bin] {
            if !b.is_file() {
                bail!(
                    "{} not found: build the release binaries first",
                    b.display()
                );
            }
        }
        let mut nm = Server::spawn(
            "nm",
            dir,
            Command::new(&nm_bin)
                .args(["--host", "127.0.0.1", "--port", "0", "--http-port", "0"])
                .args([
                    "--heartbeat-interval-ms",
                    "200",
                    "--heartbeat-timeout-ms",
                    "2000",
                ])
                .args(nm_flags)
                .args(&tls_args)
                .arg("--data")
                .arg(dir.join("nm_data"))
                .arg("--cluster-key-file")
                .arg(dir.join("cluster.key")),
        )?;
        let nm_addr = nm.wait_event("nm_listen")?;
        let mut pair = Pair {
            backup: None,
            ss1: None,
            nm,
            nm_addr,
            dir: dir.to_path_buf(),
            ss_bin,
            tls,
        };
        pair.ss1 = Some(pair.spawn_ss("ss1")?);
        pair.wait_registered()?;
        pair.backup = Some(pair.spawn_ss("ss1_backup")?);
        pair.wait_registered()?;
        pair.wait_active()?;
        super::create(&mut pair.session()?, "warmup.txt")?;
        Ok(pair)
    }

    fn spawn_ss(&self, name: &'static str) -> Result<Server> {
        let (host, port) = self
            .nm_addr
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("nm address {:?} has no port", self.nm_addr))?;
        fs::create_dir_all(self.dir.join(name).join("files"))?;
        let mut ss = Server::spawn(
            name,
            &self.dir,
            Command::new(&self.ss_bin)
                .args(["--nm-host", host, "--nm-port", port])
                .args(["--host", "127.0.0.1", "--client-port", "0"])
                .args(["--username", name, "--heartbeat-interval-ms", "200"])
                .arg("--storage")
                .arg(self.dir.join(name))
                .arg("--cluster-key-file")
                .arg(self.dir.join("cluster.key"))
                .args(
                    self.tls
                        .iter()
                        .flat_map(|t| [std::ffi::OsString::from("--tls-dir"), t.dir().into()]),
                ),
        )?;
        ss.wait_event("ss_listen")?;
        Ok(ss)
    }

    fn wait_registered(&mut self) -> Result<()> {
        self.nm.wait_event("nm_ss_register").map(|_| ())
    }

    /// Waits until STATUS shows the pair ACTIVE with nothing owed.
    fn wait_active(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let mut nm = self.session()?;
        loop {
            let reply = nm.call(&Message::Status {}, &[]);
            if let Ok(Message::StatusReply { pairs, .. }) = reply.map(|f| f.msg) {
                if pairs.iter().any(|p| {
                    p.primary == "ss1"
                        && p.backup.as_deref() == Some("ss1_backup")
                        && p.state == "ACTIVE"
                }) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("the pair ss1 → ss1_backup was not ACTIVE within {START_TIMEOUT_MS} ms");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A name-server session as the bench user.
    fn session(&self) -> Result<Connection> {
        nm_session_tls(&self.nm_addr, "bench", self.tls.as_ref())
    }

    fn backup_files(&self) -> PathBuf {
        self.dir.join("ss1_backup/files")
    }
}

/// An rsync daemon on 127.0.0.1 with one writable module, stopped by PID when dropped.
struct RsyncDaemon {
    child: Child,
    port: u16,
    /// The module's directory.
    root: PathBuf,
}

impl RsyncDaemon {
    fn start(tmp: &Path) -> Result<RsyncDaemon> {
        let root = tmp.join("rsync_dst");
        fs::create_dir_all(root.join("upload"))?;
        // A free port: bind to port 0, note it, release it for the daemon.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = tmp.join("rsyncd.conf");
        fs::write(
            &conf,
            format!(
                "use chroot = no\nuid = {}\ngid = {}\npid file = {}\n[bench]\n    path = {}\n    read only = false\n",
                nix::unistd::getuid(),
                nix::unistd::getgid(),
                tmp.join("rsyncd.pid").display(),
                root.display()
            ),
        )?;
        let child = Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address", "127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--log-file={}", tmp.join("rsyncd.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "starting the rsync daemon (is rsync installed? scripts/deps.sh installs it)",
            )?;
        let d = RsyncDaemon { child, port, root };
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                bail!("the rsync daemon did not listen on port {port}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// `rsync -a --fsync src rsync://127.0.0.1:port/bench/<dest>`; returns seconds taken.
    fn push(&self, src: &Path, dest: &str) -> Result<f64> {
        let t = Instant::now();
        let st = Command::new("rsync")
            .args(["-a", "--fsync"])
            .arg(src)
            .arg(format!("rsync://127.0.0.1:{}/bench/{dest}", self.port))
            .stdout(Stdio::null())
            .status()
            .context("running rsync")?;
        if !st.success() {
            bail!("rsync failed: {st}");
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// [`RsyncDaemon::push`] of one file into `dest/`, with any copy an earlier push left there
    /// removed first (else rsync would find it current and send nothing).
    fn push_fresh(&self, src: &Path, dest: &str) -> Result<f64> {
        self.remove(src, dest)?;
        self.push(src, &format!("{dest}/"))
    }

    /// Removes the copy of `src` a push left in `dest/`, if any.
    fn remove(&self, src: &Path, dest: &str) -> Result<()> {
        if let Some(name) = src.file_name() {
            let old = self.root.join(dest).join(name);
            if old.exists() {
                fs::remove_file(&old)?;
            }
        }
        Ok(())
    }

    /// Like [`RsyncDaemon::push`] for a directory's contents.
    fn push_dir(&self, dir: &Path, dest: &str) -> Result<f64> {
        let mut src = dir.as_os_str().to_owned();
        src.push("/");
        self.push(Path::new(&src), dest)
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_millis(super::STOP_TIMEOUT_MS);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
