//! `pairfs_bench`: how fast pairfs makes changes durable, compared with the disk itself.
//!
//! It measures a baseline first (the raw durable write every pairfs change is built on: temp
//! file, 64 bytes, fsync, rename, fsync of the directory), then starts its own cluster (one name
//! server, one storage server, release binaries, temp dirs under `$TMPDIR`) and drives CREATE and
//! WRITE through the wire protocol exactly as the client does (each client keeps its connection
//! to the storage server from one READ or WRITE to the next, as `bin_client` does). Every row
//! runs a fixed number of operations per writer (`--ops`) inside a wall-clock budget
//! (`--row-budget-s`), so the whole run stays bounded. The small-op rows (the raw baselines,
//! CREATE, WRITE, READ) run in `--rounds` rounds, each measuring every baseline and every pairfs row once, so the baselines
//! share the machine's state with the figures compared with them; each figure printed is the
//! median of the rounds, with the spread (lowest and highest). The ratio column divides a
//! row's throughput by its baseline from the same rounds: the 1-writer raw durable write for a
//! change, the raw read (`pread` of a file as small, as many readers) for a READ, so numbers
//! from different machines compare. A last row gives the sync calls per CREATE, WRITE and
//! READ, counted by the servers themselves (`pairfs_sync_calls_total` on both servers'
//! `/metrics`, scraped before and after; servers without the counter show `n/a`). Another
//! gives the CPU each cluster row cost per operation on each server and in the clients, and
//! how many of the machine's cores were busy meanwhile: a row with every core busy is bound
//! by CPU, not by the disk, and only less CPU per operation makes it faster.
//!
//! A second table follows with the replication rows (see `replication.rs`): a large UPLOAD
//! until the backup holds it against `cp` and `rsync`, replication lag, and a backup's catch-up.
//! `--quick` shrinks those rows for a short run.
//!
//! The servers are stopped by PID when the program ends, also on error or panic.

mod http_load;
mod replication;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use pairfs::protocol::{AccessMode, Connection, ErrorCode, FileState, Message, Ticket};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// Most operations one writer may be asked for, so a typo cannot start an hour-long run.
const MAX_OPS: u64 = 100_000;
/// How long a server gets to print its listen line, or the name server to see the storage server.
const START_TIMEOUT_MS: u64 = 30_000;
/// How long a stopping server gets after SIGTERM before it is killed.
const STOP_TIMEOUT_MS: u64 = 5_000;
/// Connect and read/write timeout of every protocol connection.
const IO_TIMEOUT_MS: u64 = 30_000;
/// Bytes written per raw durable write.
const RAW_WRITE_BYTES: usize = 64;
/// Operations of each kind the sync-call row counts.
const SYNC_ROW_OPS: u64 = 20;
/// How long the sync row waits after each kind of operation before counting again: longer
/// than a storage server's journal checkpoint period (`--journal-checkpoint-ms`, 1 s).
const CHECKPOINT_WAIT_MS: u64 = 1_500;
/// Server log events forwarded to the waiting bench; others are only written to the log file.
const WATCHED_EVENTS: [&str; 3] = ["nm_listen", "ss_listen", "nm_ss_register"];
/// Capacity of each server's watched-event channel; the reader drops events beyond it rather
/// than stop draining the server's stdout.
const EVENT_QUEUE_CAP: usize = 64;

/// Flags.
#[derive(Parser, Debug)]
#[command(
    name = "pairfs_bench",
    about = "Benchmark pairfs against a raw durable write"
)]
struct Args {
    /// Operations per writer or client in each row.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=MAX_OPS))]
    ops: u64,
    /// Wall-clock budget of one row in seconds; a row that runs out stops early and says so.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    row_budget_s: u64,
    /// Directory holding the bin_nm and bin_ss binaries (default: this program's directory,
    /// i.e. target/release when run by `make bench`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Rounds of the small-op rows; each figure is the median of the rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    rounds: u64,
    /// Measure only the raw durable-write baseline, without starting a cluster.
    #[arg(long)]
    raw_only: bool,
    /// Size of the file the replication UPLOAD row sends, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=16_384))]
    repl_upload_mib: u64,
    /// Rounds of the replication UPLOAD and catch-up rows; each of their figures is the median
    /// of the rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    repl_rounds: u64,
    /// Writes in each replication-lag row (made at 100 writes/s overall).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_OPS))]
    repl_lag_writes: u64,
    /// 4 KiB files owed to the returning backup in the catch-up row.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_OPS))]
    repl_catchup_files: u64,
    /// Size of the file the delta catch-up row changes while its backup is down, in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..=16_384))]
    repl_delta_mib: u64,
    /// Shrink the replication rows for a quick run: 64 MiB, 200 writes, 1,000 files.
    #[arg(long)]
    quick: bool,
    /// Skip the replication table.
    #[arg(long)]
    no_replication: bool,
    /// Keep the temp directory (server logs and data) and print its path.
    #[arg(long)]
    keep: bool,
    /// Only the replication table: skip the CREATE / WRITE rows (the raw baseline still runs).
    #[arg(long)]
    replication_only: bool,
    /// Which replication rows to run, comma-separated: upload, lag, catchup, delta (default:
    /// all).
    #[arg(long, value_delimiter = ',', default_values_t = [ReplRowKind::Upload, ReplRowKind::Lag, ReplRowKind::Catchup, ReplRowKind::Delta])]
    repl_rows: Vec<ReplRowKind>,
    /// Only CREATE with 16 clients without and with a scraper of `/`, `/status`, `/metrics`.
    #[arg(long)]
    http_load: bool,
}

/// The kinds of replication rows `--repl-rows` selects.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReplRowKind {
    /// (a) the large UPLOAD against cp and rsync.
    Upload,
    /// (b) replication lag with 1 and 16 writers.
    Lag,
    /// (c) the returning backup's catch-up against rsync.
    Catchup,
    /// (d) a large file changed while its backup was down: delta catch-up against sending it
    /// whole.
    Delta,
}

impl std::fmt::Display for ReplRowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplRowKind::Upload => "upload",
            ReplRowKind::Lag => "lag",
            ReplRowKind::Catchup => "catchup",
            ReplRowKind::Delta => "delta",
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pairfs_bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs every row and prints the table; returns false when some operation failed.
fn run(args: &Args) -> Result<bool> {
    let mut tmp = TempDir::new()?;
    if args.http_load {
        let budget = Duration::from_secs(args.row_budget_s);
        return http_load::run(&bin_dir(args)?, tmp.path(), args.ops, budget);
    }
    let mut rows = Vec::new();
    let mut syncs = None;
    let result = run_rows(args, tmp.path(), &mut rows, &mut syncs);
    print_table(args, &rows);
    print_cpu(&rows);
    if let Some(s) = &syncs {
        print_syncs(s);
    }
    let mut clean = rows.iter().flatten().all(|r| r.errors == 0);
    if result.is_ok() && !args.raw_only && !args.no_replication {
        let sizes = if args.quick {
            replication::Sizes {
                upload_mib: args.repl_upload_mib.min(64),
                rounds: 1,
                lag_writes: args.repl_lag_writes.min(200),
                catchup_files: args.repl_catchup_files.min(1000),
                delta_mib: args.repl_delta_mib.min(64),
                rows: args.repl_rows.clone(),
            }
        } else {
            replication::Sizes {
                upload_mib: args.repl_upload_mib,
                rounds: args.repl_rounds,
                lag_writes: args.repl_lag_writes,
                catchup_files: args.repl_catchup_files,
                delta_mib: args.repl_delta_mib,
                rows: args.repl_rows.clone(),
            }
        };
        let mut repl = Vec::new();
        clean &= replication::run(&bin_dir(args)?, tmp.path(), &sizes, &mut repl);
        replication::print_table(&repl);
    }
    if result.is_err() || !clean || args.keep {
        tmp.keep = true;
        eprintln!("pairfs_bench: logs kept in {}", tmp.path().display());
    }
    result.map(|()| clean)
}

/// Fills `rows` (one entry per row, holding its rounds) as it goes, so a failure half-way
/// still prints what was measured.
fn run_rows(
    args: &Args,
    tmp: &Path,
    rows: &mut Vec<Vec<Row>>,
    syncs: &mut Option<SyncRow>,
) -> Result<()> {
    let budget = Duration::from_secs(args.row_budget_s);
    let raw_dir = tmp.join("raw");
    fs::create_dir_all(raw_dir.join("tmp")).context("creating the raw-write directory")?;
    let only_raw = args.raw_only || args.replication_only;
    let cluster = if only_raw {
        None
    } else {
        Some(Cluster::start(&bin_dir(args)?, tmp)?)
    };
    let rounds = if args.replication_only {
        1
    } else {
        args.rounds
    };
    // Sync calls of the 16-client CREATE and WRITE rows, summed over the rounds.
    let mut crowd = Crowd::default();
    for round in 0..rounds {
        let mut this = Vec::new();
        for writers in [1, 16] {
            this.push(raw_row(&raw_dir, writers, args.ops, budget));
        }
        for readers in [1, 16] {
            this.push(raw_read_row(&raw_dir, readers, args.ops, budget));
        }
        if let Some(c) = &cluster {
            for clients in [1, 4, 16] {
                let before = c.sync_calls();
                let row = with_cpu(c, || {
                    create_row(&c.nm_addr, round, clients, args.ops, budget)
                })?;
                if clients == 16 {
                    crowd.add("CREATE", before, c.sync_calls(), row.lat_us.len());
                }
                this.push(row);
            }
            for clients in [1, 4, 16] {
                let before = c.sync_calls();
                let row = with_cpu(c, || {
                    write_row(&c.nm_addr, round, clients, args.ops, budget)
                })?;
                if clients == 16 {
                    crowd.add("WRITE", before, c.sync_calls(), row.lat_us.len());
                }
                this.push(row);
            }
            for clients in [1, 16] {
                this.push(with_cpu(c, || {
                    read_row(&c.nm_addr, round, clients, args.ops, budget)
                })?);
            }
        }
        if rows.is_empty() {
            rows.extend(this.into_iter().map(|r| vec![r]));
        } else {
            for (all, r) in rows.iter_mut().zip(this) {
                all.push(r);
            }
        }
    }
    if let Some(c) = &cluster {
        let mut row = sync_row(c)?;
        row.crowd = crowd.per_op();
        row.steps = steps_row(c, &raw_dir, args.ops)?;
        *syncs = Some(row);
    }
    drop(cluster);
    Ok(())
}

/// The directory holding the server binaries.
fn bin_dir(args: &Args) -> Result<PathBuf> {
    match &args.bin_dir {
        Some(d) => Ok(d.clone()),
        None => std::env::current_exe()
            .context("finding this program's path")?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("this program's path has no parent directory")),
    }
}

// ----- measurement -----

/// One line of the table.
struct Row {
    /// What was measured.
    what: &'static str,
    /// Concurrent writers or clients.
    workers: usize,
    /// Latency of every completed operation, in microseconds, sorted.
    lat_us: Vec<u64>,
    /// Wall time from the common start to the last worker's end.
    wall: Duration,
    /// Failed operations (each ends its worker).
    errors: u64,
    /// The first failure, for the note under the table.
    first_error: Option<String>,
    /// Whether some worker stopped because the row's budget ran out.
    out_of_budget: bool,
    /// CPU seconds the servers and the clients used during the row (cluster rows only).
    cpu: Option<Cpu>,
}

/// CPU seconds (user + system, every thread) used during one row.
#[derive(Clone, Copy)]
struct Cpu {
    nm: f64,
    ss: f64,
    /// This process: the clients' threads, and the two threads copying the servers' log
    /// lines to their files (which a server writing its log to a file would not cost).
    clients: f64,
}

impl Cpu {
    /// The CPU used so far by both servers and this process.
    fn now(c: &Cluster) -> Result<Cpu> {
        let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .context("getrusage")?;
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Ok(Cpu {
            nm: c._nm.cpu_s()?,
            ss: c._ss.cpu_s()?,
            clients: secs(u.user_time()) + secs(u.system_time()),
        })
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            nm: self.nm - before.nm,
            ss: self.ss - before.ss,
            clients: self.clients - before.clients,
        }
    }
}

/// Runs `row` and records the CPU the servers and the clients used meanwhile.
fn with_cpu(c: &Cluster, row: impl FnOnce() -> Row) -> Result<Row> {
    let before = Cpu::now(c)?;
    let mut row = row();
    row.cpu = Some(Cpu::now(c)?.since(before));
    Ok(row)
}

impl Row {
    fn ops_per_s(&self) -> f64 {
        let s = self.wall.as_secs_f64();
        if s > 0.0 {
            self.lat_us.len() as f64 / s
        } else {
            0.0
        }
    }

    /// The p-th percentile latency in milliseconds (nearest rank).
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.lat_us.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.lat_us.len()) - 1;
        self.lat_us[idx] as f64 / 1000.0
    }
}

/// What one worker thread reports.
#[derive(Default)]
struct WorkerReport {
    lat_us: Vec<u64>,
    error: Option<String>,
    out_of_budget: bool,
}

/// Runs `workers` threads; each runs `setup` (not timed), waits for the others, then runs `op`
/// up to `ops` times until the budget ends or an op fails.
fn measure<S, Setup, Op>(
    what: &'static str,
    workers: usize,
    ops: u64,
    budget: Duration,
    setup: Setup,
    op: Op,
) -> Row
where
    Setup: Fn(usize) -> Result<S> + Sync,
    Op: Fn(&mut S, usize, u64) -> Result<()> + Sync,
{
    let barrier = Barrier::new(workers + 1);
    let (reports, wall) = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (barrier, setup, op) = (&barrier, &setup, &op);
                scope.spawn(move || {
                    let state = setup(w);
                    // Every thread reaches the barrier, even after a failed setup, so none waits
                    // forever.
                    barrier.wait();
                    let mut report = WorkerReport {
                        lat_us: Vec::with_capacity(ops as usize),
                        ..WorkerReport::default()
                    };
                    let mut state = match state {
                        Ok(s) => s,
                        Err(e) => {
                            report.error = Some(format!("setup: {e:#}"));
                            return report;
                        }
                    };
                    let deadline = Instant::now() + budget;
                    for j in 0..ops {
                        let t0 = Instant::now();
                        if t0 >= deadline {
                            report.out_of_budget = true;
                            break;
                        }
                        if let Err(e) = op(&mut state, w, j) {
                            report.error = Some(format!("{e:#}"));
                            break;
                        }
                        report.lat_us.push(t0.elapsed().as_micros() as u64);
                    }
                    report
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let reports: Vec<WorkerReport> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| WorkerReport {
                    error: Some("worker panicked".into()),
                    ..WorkerReport::default()
                })
            })
            .collect();
        (reports, start.elapsed())
    });
    let mut row = Row {
        what,
        workers,
        lat_us: Vec::new(),
        wall,
        errors: 0,
        first_error: None,
        out_of_budget: false,
        cpu: None,
    };
    for r in reports {
        row.lat_us.extend(r.lat_us);
        row.out_of_budget |= r.out_of_budget;
        if let Some(e) = r.error {
            row.errors += 1;
            row.first_error.get_or_insert(e);
        }
    }
    row.lat_us.sort_unstable();
    row
}

/// The baseline: each writer durably replaces its own file, as a storage server does per change.
fn raw_row(dir: &Path, writers: usize, ops: u64, budget: Duration) -> Row {
    let tmp_dir = dir.join("tmp");
    let payload = [b'x'; RAW_WRITE_BYTES];
    measure(
        "raw durable write (64 B)",
        writers,
        ops,
        budget,
        |w| Ok(dir.join(format!("raw{writers}_{w}"))),
        |target, _, _| {
            pairfs::durable::replace(&tmp_dir, target, &payload)
                .with_context(|| format!("durable write of {}", target.display()))
        },
    )
}

/// The baseline of a READ: each reader `pread`s its own small file (as large as the files
/// the READ rows read), opened once.
fn raw_read_row(dir: &Path, readers: usize, ops: u64, budget: Duration) -> Row {
    use std::os::unix::fs::FileExt;
    let content = "Sentence number 0.";
    measure(
        "raw read (pread, 18 B)",
        readers,
        ops,
        budget,
        |w| {
            let path = dir.join(format!("read{readers}_{w}"));
            fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            File::open(&path).with_context(|| format!("opening {}", path.display()))
        },
        |f, _, _| {
            let mut buf = [0u8; 64];
            let n = f.read_at(&mut buf, 0).context("pread")?;
            if n != content.len() {
                bail!("pread gave {n} bytes, not {}", content.len());
            }
            Ok(())
        },
    )
}

/// CREATE of a fresh file per op, each client on its own name-server connection.
fn create_row(nm_addr: &str, round: u64, clients: usize, ops: u64, budget: Duration) -> Row {
    measure(
        "CREATE",
        clients,
        ops,
        budget,
        |w| nm_session(nm_addr, &format!("bench{w}")),
        move |nm, w, j| create(nm, &format!("c{round}_{clients}_{w}_{j}.txt")),
    )
}

/// One sentence appended per op (LOCATE, WRITE_BEGIN, EDIT, COMMIT), each client on its own file.
fn write_row(nm_addr: &str, round: u64, clients: usize, ops: u64, budget: Duration) -> Row {
    measure(
        "WRITE (append 1 sentence)",
        clients,
        ops,
        budget,
        |w| {
            let mut nm = nm_session(nm_addr, &format!("bench{w}"))?;
            let file = format!("w{round}_{clients}_{w}.txt");
            create(&mut nm, &file)?;
            Ok((nm, None, file))
        },
        |(nm, kept, file), _, j| append_sentence(nm, kept, file, j).map(|_| ()),
    )
}

/// A READ per op (LOCATE for reading, then READ from the storage server) of the client's own
/// file, which holds one sentence as small as the raw read's file.
fn read_row(nm_addr: &str, round: u64, clients: usize, ops: u64, budget: Duration) -> Row {
    measure(
        "READ (18 B)",
        clients,
        ops,
        budget,
        |w| {
            let mut nm = nm_session(nm_addr, &format!("bench{w}"))?;
            let file = format!("r{round}_{clients}_{w}.txt");
            create(&mut nm, &file)?;
            let mut kept = None;
            append_sentence(&mut nm, &mut kept, &file, 0)?;
            Ok((nm, kept, file))
        },
        |(nm, kept, file), _, _| read(nm, kept, file).map(|_| ()),
    )
}

/// Sync calls per operation, counted by the servers (`None` where a server has no counter).
struct SyncRow {
    /// (operation, name server's, storage server's) calls per operation, one client, counted
    /// as the operations end.
    per_op: Vec<(&'static str, Option<f64>, Option<f64>)>,
    /// The same counted [`CHECKPOINT_WAIT_MS`] later, so a background checkpoint is included.
    later_per_op: Vec<(&'static str, Option<f64>, Option<f64>)>,
    /// The same for the 16-client CREATE and WRITE rows (group commit shares the calls).
    crowd: Vec<(&'static str, Option<f64>, Option<f64>)>,
    /// Where a lone client's time goes: (step, p50 ms), and last the raw durable write's p50
    /// measured between the same operations.
    steps: Vec<(&'static str, f64)>,
}

/// Steps of a lone client's CREATE and WRITE, each timed on its own.
const STEPS: [&str; 6] = [
    "CREATE (name server commit, then the storage server's create)",
    "WRITE: LOCATE at the name server",
    "WRITE: connect to the storage server (kept from the last WRITE after the first)",
    "WRITE: WRITE_BEGIN",
    "WRITE: EDIT",
    "WRITE: COMMIT (the storage server's change, CHANGED to the name server, its commit, the ack)",
];

/// Times each step of `ops` lone CREATEs and WRITEs, a raw durable write after each WRITE
/// (so the baseline meets the same disk at the same moments). Returns the p50 of each step,
/// the raw write's last.
fn steps_row(c: &Cluster, raw_dir: &Path, ops: u64) -> Result<Vec<(&'static str, f64)>> {
    let mut nm = nm_session(&c.nm_addr, "bench_steps")?;
    let file = "steps_w.txt";
    create(&mut nm, file)?;
    let mut took: Vec<Vec<u64>> = vec![Vec::new(); STEPS.len() + 1];
    let mut lap = |i: usize, t: &mut Instant| {
        took[i].push(t.elapsed().as_micros() as u64);
        *t = Instant::now();
    };
    let (raw_tmp, raw_target) = (raw_dir.join("tmp"), raw_dir.join("steps_raw"));
    let mut kept: Kept = None;
    for j in 0..ops {
        let mut t = Instant::now();
        create(&mut nm, &format!("steps_c{j}.txt"))?;
        lap(0, &mut t);
        let locate = Message::Locate {
            avoid: None,
            file: file.into(),
            mode: AccessMode::Write,
        };
        let (addr, ticket) = match nm.call(&locate, &[])?.msg {
            Message::Located { addr, ticket, .. } => (addr, ticket),
            other => bail!("LOCATE {file} answered with {}", other.op_name()),
        };
        lap(1, &mut t);
        let mut ss = ss_connection(&mut kept, &addr)?;
        lap(2, &mut t);
        let begin = Message::WriteBegin {
            file: file.into(),
            sentence: j,
            ticket,
        };
        if !matches!(ss.call(&begin, &[])?.msg, Message::WriteOpened { .. }) {
            bail!("WRITE_BEGIN {file} {j} refused");
        }
        lap(3, &mut t);
        let edit = Message::Edit { word_index: 0 };
        let words = format!("Sentence number {j}.");
        if !matches!(
            ss.call(&edit, words.as_bytes())?.msg,
            Message::Sentence { .. }
        ) {
            bail!("EDIT refused");
        }
        lap(4, &mut t);
        if !matches!(
            ss.call(&Message::Commit {}, &[])?.msg,
            Message::Committed { .. }
        ) {
            bail!("COMMIT refused");
        }
        kept = Some((addr, ss));
        lap(5, &mut t);
        pairfs::durable::replace(&raw_tmp, &raw_target, &[b'x'; RAW_WRITE_BYTES])?;
        lap(STEPS.len(), &mut t);
    }
    let p50 = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0) as f64 / 1000.0
    };
    let mut out: Vec<(&'static str, f64)> = Vec::new();
    for (i, v) in took.iter_mut().enumerate() {
        out.push((STEPS.get(i).copied().unwrap_or("raw durable write"), p50(v)));
    }
    Ok(out)
}

/// Both servers' sync calls, read around the 16-client rows.
type Counts = (Option<u64>, Option<u64>);

/// Sync calls and completed operations of the 16-client rows, per operation kind.
#[derive(Default)]
struct Crowd {
    seen: Vec<(&'static str, Counts, usize)>,
}

impl Crowd {
    /// Adds one row's counts: the servers' counters before and after it, and its completed ops.
    fn add(&mut self, what: &'static str, before: Counts, after: Counts, ops: usize) {
        let d = |b: Option<u64>, a: Option<u64>| Some(a?.saturating_sub(b?));
        let delta = (d(before.0, after.0), d(before.1, after.1));
        match self.seen.iter_mut().find(|(w, _, _)| *w == what) {
            Some((_, sum, n)) => {
                sum.0 = sum.0.zip(delta.0).map(|(a, b)| a + b);
                sum.1 = sum.1.zip(delta.1).map(|(a, b)| a + b);
                *n += ops;
            }
            None => self.seen.push((what, delta, ops)),
        }
    }

    /// Calls per operation, per kind.
    fn per_op(&self) -> Vec<(&'static str, Option<f64>, Option<f64>)> {
        let per = |c: Option<u64>, n: usize| c.filter(|_| n > 0).map(|c| c as f64 / n as f64);
        self.seen
            .iter()
            .map(|(w, c, n)| (*w, per(c.0, *n), per(c.1, *n)))
            .collect()
    }
}

/// Counts the sync calls of [`SYNC_ROW_OPS`] CREATEs, then as many WRITEs, then as many READs,
/// one client, by scraping both servers' counters before and after each.
fn sync_row(c: &Cluster) -> Result<SyncRow> {
    let mut nm = nm_session(&c.nm_addr, "bench_sync")?;
    let file = "sync_w.txt";
    create(&mut nm, file)?;
    let mut per_op = Vec::new();
    let mut later_per_op = Vec::new();
    let n = SYNC_ROW_OPS as f64;
    let mut phase = |what: &'static str, op: &mut dyn FnMut(u64) -> Result<()>| -> Result<()> {
        let before = c.sync_calls();
        for j in 0..SYNC_ROW_OPS {
            op(j)?;
        }
        let after = c.sync_calls();
        let per = |b: Option<u64>, a: Option<u64>| Some(a?.saturating_sub(b?) as f64 / n);
        per_op.push((what, per(before.0, after.0), per(before.1, after.1)));
        // A storage server with a journal makes the changes durable in place later, in its
        // background checkpoint: counted once that has run.
        thread::sleep(Duration::from_millis(CHECKPOINT_WAIT_MS));
        let later = c.sync_calls();
        later_per_op.push((what, per(before.0, later.0), per(before.1, later.1)));
        Ok(())
    };
    let mut nm2 = nm_session(&c.nm_addr, "bench_sync")?;
    phase("CREATE", &mut |j| {
        create(&mut nm2, &format!("sync_c{j}.txt"))
    })?;
    let (mut kept, mut kept2) = (None, None);
    phase("WRITE", &mut |j| {
        append_sentence(&mut nm, &mut kept, file, j).map(|_| ())
    })?;
    phase("READ", &mut |_| {
        read(&mut nm2, &mut kept2, file).map(|_| ())
    })?;
    Ok(SyncRow {
        per_op,
        later_per_op,
        crowd: Vec::new(),
        steps: Vec::new(),
    })
}

/// The sum of `pairfs_sync_calls_total` over its kinds on the server whose HTTP endpoint is
/// `addr`; `None` when it cannot be scraped or has no such counter.
fn sync_calls(addr: &str) -> Option<u64> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(io_timeout())).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let values: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("pairfs_sync_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

// ----- protocol -----

fn io_timeout() -> Duration {
    Duration::from_millis(IO_TIMEOUT_MS)
}

/// Connects to the name server and says HELLO.
fn nm_session(addr: &str, user: &str) -> Result<Connection> {
    nm_session_tls(addr, user, None)
}

/// Connects to `addr`, over TLS with `tls` (a cluster started with `--tls-dir`).
fn dial(addr: &str, tls: Option<&pairfs::tls::Tls>) -> std::io::Result<Connection> {
    match tls {
        Some(t) => Connection::connect_tls(addr, io_timeout(), t.client_config(), &t.ca_path()),
        None => Connection::connect(addr, io_timeout()),
    }
}

/// [`nm_session`] over TLS with `tls`, if given.
fn nm_session_tls(addr: &str, user: &str, tls: Option<&pairfs::tls::Tls>) -> Result<Connection> {
    let mut c =
        dial(addr, tls).with_context(|| format!("connecting to the name server at {addr}"))?;
    c.set_timeout(Some(io_timeout()))?;
    let key = pairfs::identity::UserKey::load_or_create(&pairfs::identity::default_key_path(user))?;
    pairfs::identity::handshake(&mut c, user, &key)?;
    Ok(c)
}

fn create(nm: &mut Connection, file: &str) -> Result<()> {
    match nm.call(&Message::Create { file: file.into() }, &[])?.msg {
        Message::Done {} => Ok(()),
        other => bail!("CREATE {file} answered with {}", other.op_name()),
    }
}

/// The storage-server connection a client kept from its last READ or WRITE, with the
/// server's address: `bin_client` sends its next command to that server on it.
type Kept = Option<(String, Connection)>;

/// LOCATEs `file` for `mode` and connects to the storage server it names (or takes the
/// connection `kept` for it); returns the server's address, the connection and the ticket.
fn locate_and_connect(
    nm: &mut Connection,
    kept: &mut Kept,
    file: &str,
    mode: AccessMode,
) -> Result<(String, Connection, Ticket)> {
    let locate = Message::Locate {
        avoid: None,
        file: file.into(),
        mode,
    };
    let (addr, ticket) = match nm.call(&locate, &[])?.msg {
        Message::Located { addr, ticket, .. } => (addr, ticket),
        other => bail!("LOCATE {file} answered with {}", other.op_name()),
    };
    let ss = ss_connection(kept, &addr)?;
    Ok((addr, ss, ticket))
}

/// The connection `kept` for the storage server at `addr`, else a new one to it.
fn ss_connection(kept: &mut Kept, addr: &str) -> Result<Connection> {
    if let Some((_, ss)) = kept.take().filter(|(a, _)| a == addr) {
        return Ok(ss);
    }
    let ss = Connection::connect(addr, io_timeout())
        .with_context(|| format!("connecting to the storage server at {addr}"))?;
    ss.set_timeout(Some(io_timeout()))?;
    Ok(ss)
}

/// READs `file` (LOCATE for reading, then the storage server's READ_OK, chunks and END) and
/// returns its bytes.
fn read(nm: &mut Connection, kept: &mut Kept, file: &str) -> Result<Vec<u8>> {
    let (addr, mut ss, ticket) = locate_and_connect(nm, kept, file, AccessMode::Read)?;
    let size = match ss
        .call(
            &Message::Read {
                file: file.into(),
                ticket,
            },
            &[],
        )?
        .msg
    {
        Message::ReadOk { size, .. } => size,
        other => bail!("READ {file} answered with {}", other.op_name()),
    };
    let mut bytes = Vec::new();
    loop {
        let f = ss.recv_some().map_err(|e| anyhow!("READ {file}: {e}"))?;
        match f.msg {
            Message::Chunk {} => bytes.extend_from_slice(&f.body),
            Message::End {} => break,
            other => bail!("READ {file} sent {}", other.op_name()),
        }
    }
    if bytes.len() as u64 != size {
        bail!("READ {file} gave {} bytes of {size}", bytes.len());
    }
    *kept = Some((addr, ss));
    Ok(bytes)
}

/// Appends sentence `j` (the file holds exactly `j` finished sentences before the call) and
/// returns the committed state.
fn append_sentence(nm: &mut Connection, kept: &mut Kept, file: &str, j: u64) -> Result<FileState> {
    let (addr, mut ss, ticket) = locate_and_connect(nm, kept, file, AccessMode::Write)?;
    let begin = Message::WriteBegin {
        file: file.into(),
        sentence: j,
        ticket,
    };
    match ss.call(&begin, &[])?.msg {
        Message::WriteOpened { .. } => {}
        other => bail!("WRITE_BEGIN {file} {j} answered with {}", other.op_name()),
    }
    let edit = Message::Edit { word_index: 0 };
    match ss
        .call(&edit, format!("Sentence number {j}.").as_bytes())?
        .msg
    {
        Message::Sentence { .. } => {}
        other => bail!("EDIT answered with {}", other.op_name()),
    }
    match ss.call(&Message::Commit {}, &[])?.msg {
        Message::Committed { state, .. } => {
            *kept = Some((addr, ss));
            Ok(state)
        }
        other => bail!("COMMIT answered with {}", other.op_name()),
    }
}

// ----- cluster -----

/// A name server and a storage server started for this run; dropping it stops both by PID.
struct Cluster {
    /// Fields drop in order: the storage server stops first, so it never sees its name server
    /// vanish; both are held only to be stopped.
    _ss: Server,
    _nm: Server,
    nm_addr: String,
    /// `host:port` of the name server's and the storage server's HTTP endpoints (`/metrics`).
    nm_http: String,
    ss_http: String,
}

/// A TCP port free on 127.0.0.1 a moment ago (for `--http-port`, where 0 means off).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    /// Both servers' sync calls so far (name server's, storage server's).
    fn sync_calls(&self) -> Counts {
        (sync_calls(&self.nm_http), sync_calls(&self.ss_http))
    }

    fn start(bin_dir: &Path, tmp: &Path) -> Result<Cluster> {
        let nm_bin = bin_dir.join("bin_nm");
        let ss_bin = bin_dir.join("bin_ss");
        for b in [&nm_bin, &ss_bin] {
            if !b.is_file() {
                bail!(
                    "{} not found: build the release binaries first (cargo build --release)",
                    b.display()
                );
            }
        }
        let key = tmp.join("cluster.key");
        let (nm_http_port, ss_http_port) = (free_port()?, free_port()?);
        let mut nm = Server::spawn(
            "nm",
            tmp,
            Command::new(&nm_bin)
                .args(["--host", "127.0.0.1", "--port", "0", "--http-port"])
                .arg(nm_http_port.to_string())
                .arg("--data")
                .arg(tmp.join("nm_data"))
                .arg("--cluster-key-file")
                .arg(&key),
        )?;
        let nm_addr = nm.wait_event("nm_listen")?;
        let (nm_host, nm_port) = nm_addr
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("nm_listen address {nm_addr:?} has no port"))?;
        let mut ss = Server::spawn(
            "ss",
            tmp,
            Command::new(&ss_bin)
                .args(["--nm-host", nm_host, "--nm-port", nm_port])
                .args(["--host", "127.0.0.1", "--client-port", "0"])
                .args(["--username", "ss1"])
                .arg("--http-port")
                .arg(ss_http_port.to_string())
                .arg("--storage")
                .arg(tmp.join("storage_ss1"))
                .arg("--cluster-key-file")
                .arg(&key),
        )?;
        let cluster_result = ss
            .wait_event("ss_listen")
            .and_then(|_| nm.wait_event("nm_ss_register"));
        let cluster = Cluster {
            _ss: ss,
            _nm: nm,
            nm_addr,
            nm_http: format!("127.0.0.1:{nm_http_port}"),
            ss_http: format!("127.0.0.1:{ss_http_port}"),
        };
        cluster_result?;
        cluster.warm_up()?;
        Ok(cluster)
    }

    /// Creates one file, retrying while the name server still reports no storage server, so
    /// the first measured op does not pay for registration finishing.
    fn warm_up(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let mut nm = nm_session(&self.nm_addr, "bench")?;
        loop {
            let reply = nm.call(
                &Message::Create {
                    file: "warmup.txt".into(),
                },
                &[],
            );
            match reply {
                Ok(_) => return Ok(()),
                Err(e) if e.code == ErrorCode::Unavailable && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(anyhow!("warm-up CREATE failed: {e}")),
            }
        }
    }
}

/// A child server whose stdout log lines are copied to a file and whose watched events are
/// forwarded to the bench.
struct Server {
    name: &'static str,
    child: Child,
    events: Receiver<(String, String)>,
    log_path: PathBuf,
}

impl Server {
    /// CPU time (user + system, all threads) the process has used so far, in seconds, from
    /// /proc/PID/stat.
    fn cpu_s(&self) -> Result<f64> {
        let pid = self.child.id();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat of {}", self.name))?;
        // The fields after the command name (which may hold spaces) start after its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(u), Some(s)) = (ticks(11), ticks(12)) else {
            bail!("no utime/stime in /proc/{pid}/stat of {}", self.name);
        };
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&hz| hz > 0)
            .unwrap_or(100);
        Ok((u + s) as f64 / hz as f64)
    }

    /// The last line of this server's log with `event` whose message starts with `msg`, as
    /// JSON (None if there is none yet).
    fn last_logged(&self, event: &str, msg: &str) -> Option<serde_json::Value> {
        let text = fs::read_to_string(&self.log_path).ok()?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v.get("event").and_then(|e| e.as_str()) == Some(event)
                    && v.get("msg")
                        .and_then(|m| m.as_str())
                        .is_some_and(|m| m.starts_with(msg))
            })
    }

    /// Peak resident set size so far (`VmHWM` in /proc/PID/status), in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.child.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status of {}", self.name))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmHWM for {}", self.name))
    }

    fn spawn(name: &'static str, tmp: &Path, cmd: &mut Command) -> Result<Server> {
        let log_path = tmp.join(format!("{name}.log"));
        let err_path = tmp.join(format!("{name}.stderr"));
        let log = File::create(&log_path)?;
        let stderr = File::create(&err_path)?;
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name} has no stdout pipe"))?;
        let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE_CAP);
        thread::Builder::new()
            .name(format!("{name}-log"))
            .spawn(move || forward_log(stdout, log, tx))
            .context("starting the log reader")?;
        Ok(Server {
            name,
            child,
            events: rx,
            log_path,
        })
    }

    /// Waits for the next `event` line and returns its `addr` field (empty if absent).
    fn wait_event(&mut self, event: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((e, addr)) if e == event => return Ok(addr),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "{} did not log {event} within {START_TIMEOUT_MS} ms; see {}",
                    self.name,
                    self.log_path.display()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.exit_status_within(Duration::from_millis(STOP_TIMEOUT_MS));
                    bail!(
                        "{} closed its output before logging {event} ({}); see {}",
                        self.name,
                        status.map_or("still running".to_string(), |s| s.to_string()),
                        self.log_path.display()
                    );
                }
            }
        }
    }

    /// The child's exit status if it exits within `wait`.
    fn exit_status_within(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }
}

impl Drop for Server {
    /// SIGTERM by PID, then SIGKILL by PID if it has not exited in time.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if self
            .exit_status_within(Duration::from_millis(STOP_TIMEOUT_MS))
            .is_some()
        {
            return;
        }
        eprintln!("pairfs_bench: {} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies every stdout line to the log file and forwards watched events; keeps draining until
/// the server closes stdout, so the server never blocks on a full pipe.
fn forward_log(stdout: impl std::io::Read, mut log: File, tx: SyncSender<(String, String)>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let _ = log.write_all(&line);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        let event = v.get("event").and_then(|e| e.as_str()).unwrap_or_default();
        if WATCHED_EVENTS.contains(&event) {
            let addr = v.get("addr").and_then(|a| a.as_str()).unwrap_or_default();
            let _ = tx.try_send((event.to_string(), addr.to_string()));
        }
    }
}

/// A unique directory under `$TMPDIR`, removed at the end unless kept for its logs.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "pairfs-bench-{}-{}",
            std::process::id(),
            pairfs::auth::random_hex(4)
        ));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ----- output -----

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The median throughput of a row's rounds.
fn median_ops(rounds: &[Row]) -> f64 {
    median(rounds.iter().map(Row::ops_per_s).collect())
}

fn print_table(args: &Args, rows: &[Vec<Row>]) {
    let find = |prefix: &str, workers: usize| {
        rows.iter()
            .find(|r| r[0].what.starts_with(prefix) && r[0].workers == workers)
            .map(|r| median_ops(r))
            .filter(|b| *b > 0.0)
    };
    let raw_write = find("raw durable", 1);
    println!(
        "pairfs_bench: {} ops per writer/client, row budget {} s, median of {} rounds, temp dir under {}",
        args.ops,
        args.row_budget_s,
        rows.first().map_or(0, Vec::len),
        std::env::temp_dir().display()
    );
    println!();
    println!("| what | writers/clients | ops/s (median) | ops/s spread (min–max) | p50 ms | p99 ms | ratio | vs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for all in rows {
        let r = &all[0];
        let ops = median_ops(all);
        let ops_each: Vec<f64> = all.iter().map(Row::ops_per_s).collect();
        let lo = ops_each.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ops_each.iter().copied().fold(0.0, f64::max);
        let p50 = median(all.iter().map(|r| r.percentile_ms(50.0)).collect());
        let p99 = median(all.iter().map(|r| r.percentile_ms(99.0)).collect());
        let (base, vs) = if r.what.starts_with("READ") || r.what.starts_with("raw read") {
            (
                find("raw read", r.workers),
                format!("raw read x{}", r.workers),
            )
        } else {
            (raw_write, "raw durable write x1".to_string())
        };
        let ratio = base.map_or("-".to_string(), |b| format!("{:.3}", ops / b));
        println!(
            "| {} | {} | {:.0} | {:.0}–{:.0} | {:.3} | {:.3} | {} | {} |",
            r.what, r.workers, ops, lo, hi, p50, p99, ratio, vs
        );
    }
    for r in rows.iter().flatten() {
        if r.out_of_budget {
            println!(
                "note: {} x{} ran out of its budget after {} ops",
                r.what,
                r.workers,
                r.lat_us.len()
            );
        }
        if let Some(e) = &r.first_error {
            println!(
                "note: {} x{}: {} of {} workers failed; first error: {e}",
                r.what, r.workers, r.errors, r.workers
            );
        }
    }
}

/// Prints the CPU each cluster row cost per operation, and how many of the machine's cores
/// were busy: a row whose cores are all busy is bound by CPU, not by the disk.
fn print_cpu(rows: &[Vec<Row>]) {
    let rows: Vec<&Vec<Row>> = rows.iter().filter(|r| r[0].cpu.is_some()).collect();
    if rows.is_empty() {
        return;
    }
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    // The servers' CPU comes from /proc in clock ticks: one tick spread over a row's ops.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100) as f64;
    let tick_per_op = |r: &Row| 1e6 / hz / r.lat_us.len().max(1) as f64;
    println!();
    println!("CPU per op in µs (user + system, every thread; median of the rounds) and cores busy during the row, of {cores}:");
    println!("| what | clients | name server | storage server (with its checkpoints) | clients (with the log readers) | total | cores busy |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for all in &rows {
        let per_op = |f: &dyn Fn(&Cpu) -> f64| {
            median(
                all.iter()
                    .filter(|r| !r.lat_us.is_empty())
                    .filter_map(|r| r.cpu.map(|c| f(&c) / r.lat_us.len() as f64 * 1e6))
                    .collect(),
            )
        };
        let busy = median(
            all.iter()
                .filter(|r| r.wall.as_secs_f64() > 0.0)
                .filter_map(|r| {
                    r.cpu
                        .map(|c| (c.nm + c.ss + c.clients) / r.wall.as_secs_f64())
                })
                .collect(),
        );
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            all[0].what,
            all[0].workers,
            per_op(&|c| c.nm),
            per_op(&|c| c.ss),
            per_op(&|c| c.clients),
            per_op(&|c| c.nm + c.ss + c.clients),
            busy
        );
    }
    let coarsest = rows
        .iter()
        .map(|all| tick_per_op(&all[0]))
        .fold(0.0, f64::max);
    println!(
        "(a server's CPU is counted in ticks of {:.0} ms: up to ±{coarsest:.0} µs per op in the rows with fewest ops)",
        1e3 / hz
    );
}

/// Prints the sync calls per operation the servers counted.
fn print_syncs(s: &SyncRow) {
    let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
    println!();
    println!(
        "sync calls per op ({SYNC_ROW_OPS} of each with 1 client, and the 16-client rows; pairfs_sync_calls_total of both servers):"
    );
    println!(
        "| op | name server | storage server | total | total with the background checkpoint |"
    );
    println!("|---|---:|---:|---:|---:|");
    for ((what, nm, ss), (_, nm_l, ss_l)) in s.per_op.iter().zip(&s.later_per_op) {
        let total = nm.zip(*ss).map(|(a, b)| a + b);
        let later = nm_l.zip(*ss_l).map(|(a, b)| a + b);
        println!(
            "| {what} | {} | {} | {} | {} |",
            show(*nm),
            show(*ss),
            show(total),
            show(later)
        );
    }
    for (what, nm, ss) in &s.crowd {
        let total = nm.zip(*ss).map(|(a, b)| a + b);
        println!(
            "| {what}, 16 clients (checkpoints run during the row) | {} | {} | {} | |",
            show(*nm),
            show(*ss),
            show(total)
        );
    }
    if let Some((_, raw)) = s.steps.last().copied() {
        println!();
        println!("where a lone client's time goes (p50 of each step; raw durable write {raw:.3} ms between the same operations):");
        println!("| step | p50 ms | ÷ raw durable write |");
        println!("|---|---:|---:|");
        for (what, ms) in &s.steps[..s.steps.len() - 1] {
            let ratio = if raw > 0.0 { ms / raw } else { 0.0 };
            println!("| {what} | {ms:.3} | {ratio:.2} |");
        }
    }
}
