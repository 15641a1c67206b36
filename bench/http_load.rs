//! `pairfs_bench --http-load`: whether serving the operator endpoints costs the name server's
//! event loop anything measurable.
//!
//! One name server (with `--http-port`) and one storage server; CREATE with 16 clients, each
//! on its own connection, measured without and with a scraper that fetches `/`, `/status` and
//! `/metrics` in turn at [`FETCHES_PER_S`] while a slow client holds a connection open with an
//! unfinished request (reopened whenever the endpoint's deadline closes it). The two take turns
//! (the order swaps every round) for [`ROUNDS`] rounds; each figure is the median of the rounds
//! with their spread (min–max), because the machine may be busy with other work.

use super::{create, measure, nm_session, Cluster, Row};
use anyhow::{anyhow, bail, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Rounds of each row; figures are their medians.
const ROUNDS: usize = 3;
/// CREATE clients.
const CLIENTS: usize = 16;
/// The scraper's pace over all three paths together.
const FETCHES_PER_S: u64 = 20;
/// The paths the scraper fetches in turn.
const PATHS: [&str; 3] = ["/", "/status", "/metrics"];
/// How long the bench waits for the name server's HTTP endpoint to answer.
const HTTP_WAIT_MS: u64 = 10_000;

/// What the scraper saw during one row.
#[derive(Default)]
struct Scraped {
    fetches: u64,
    failures: u64,
    /// Latency of each successful fetch, microseconds.
    lat_us: Vec<u64>,
    /// Connections the slow client opened.
    slow_opened: u64,
    first_error: Option<String>,
}

/// Runs the row pair and prints its table; returns false when some operation failed.
pub(super) fn run(bin_dir: &Path, tmp: &Path, ops: u64, budget: Duration) -> Result<bool> {
    let (cluster, http) = start(bin_dir, tmp)?;
    let mut without: Vec<Row> = Vec::new();
    let mut with: Vec<(Row, Scraped)> = Vec::new();
    for round in 0..ROUNDS {
        let scraped_first = round % 2 == 1;
        for scraped in [scraped_first, !scraped_first] {
            let tag = format!("h{round}{}", if scraped { "s" } else { "n" });
            if scraped {
                let stop = AtomicBool::new(false);
                let (row, seen) = thread::scope(|s| {
                    let scraper = s.spawn(|| scrape(&http, &stop));
                    let row = create_row(&cluster.nm_addr, &tag, ops, budget);
                    stop.store(true, Ordering::SeqCst);
                    let seen = scraper.join().unwrap_or_else(|_| Scraped {
                        first_error: Some("scraper panicked".into()),
                        failures: 1,
                        ..Scraped::default()
                    });
                    (row, seen)
                });
                with.push((row, seen));
            } else {
                without.push(create_row(&cluster.nm_addr, &tag, ops, budget));
            }
        }
    }
    drop(cluster);
    print_table(&without, &with);
    let clean = without.iter().all(|r| r.errors == 0)
        && with.iter().all(|(r, s)| r.errors == 0 && s.failures == 0);
    Ok(clean)
}

/// CREATE of a fresh file per op by [`CLIENTS`] clients; `tag` keeps each row's names apart.
fn create_row(nm_addr: &str, tag: &str, ops: u64, budget: Duration) -> Row {
    measure(
        "CREATE",
        CLIENTS,
        ops,
        budget,
        |w| nm_session(nm_addr, &format!("bench{w}")),
        |nm, w, j| create(nm, &format!("{tag}_{w}_{j}.txt")),
    )
}

/// The main table's cluster (its name server serves HTTP on a free port); returns it and
/// the endpoint's address once the endpoint answers.
fn start(bin_dir: &Path, tmp: &Path) -> Result<(Cluster, String)> {
    let cluster = Cluster::start(bin_dir, tmp)?;
    let http = cluster.nm_http.clone();
    let deadline = Instant::now() + Duration::from_millis(HTTP_WAIT_MS);
    while let Err(e) = get(&http, "/health") {
        if Instant::now() >= deadline {
            bail!("the name server's HTTP endpoint {http} did not answer: {e:#}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok((cluster, http))
}

/// Fetches the paths in turn at [`FETCHES_PER_S`] until `stop`, with a slow client holding a
/// connection open beside it.
fn scrape(addr: &str, stop: &AtomicBool) -> Scraped {
    let mut seen = Scraped::default();
    let mut slow: Option<TcpStream> = None;
    let period = Duration::from_micros(1_000_000 / FETCHES_PER_S);
    let mut next = Instant::now();
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        // The slow client: a request head never finished; reopened once the server cuts it.
        let alive = slow.as_mut().is_some_and(still_open);
        if !alive {
            slow = TcpStream::connect(addr).ok().and_then(|mut s| {
                s.write_all(b"GET /met").ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s)
            });
            seen.slow_opened += 1;
        }
        let path = PATHS[i % PATHS.len()];
        i += 1;
        let t0 = Instant::now();
        match get(addr, path) {
            Ok(()) => seen.lat_us.push(t0.elapsed().as_micros() as u64),
            Err(e) => {
                seen.failures += 1;
                seen.first_error.get_or_insert(format!("GET {path}: {e:#}"));
            }
        }
        seen.fetches += 1;
        next += period;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    seen.lat_us.sort_unstable();
    seen
}

/// Whether the server still holds the slow connection open (a non-blocking peek).
fn still_open(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// One `GET path`, read to its end; an answer other than 200 is an error.
fn get(addr: &str, path: &str) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    if !out.starts_with(b"HTTP/1.1 200 ") {
        let head = String::from_utf8_lossy(&out[..out.len().min(40)]).to_string();
        return Err(anyhow!("answered {head:?}"));
    }
    Ok(())
}

/// Median and min–max of `v` (not empty).
fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn print_table(without: &[Row], with: &[(Row, Scraped)]) {
    println!();
    println!(
        "CREATE with {CLIENTS} clients, without and with a scraper of /, /status and /metrics at \
         {FETCHES_PER_S} fetches/s plus a slow client holding a connection (median of {ROUNDS} \
         alternating rounds, [min–max])"
    );
    println!();
    println!("| row | ops/s | p50 ms | p99 ms | scraper fetches (failed) | fetch p50 / max ms |");
    println!("|---|---|---|---|---|---|");
    let fig = |rows: &[&Row]| {
        let f = |g: &dyn Fn(&Row) -> f64| {
            let (m, lo, hi) = median_spread(rows.iter().map(|r| g(r)).collect());
            format!("{m:.1} [{lo:.1}–{hi:.1}]")
        };
        (
            f(&|r| r.ops_per_s()),
            f(&|r| r.percentile_ms(50.0)),
            f(&|r| r.percentile_ms(99.0)),
        )
    };
    if !without.is_empty() {
        let (ops, p50, p99) = fig(&without.iter().collect::<Vec<_>>());
        println!("| without scraper | {ops} | {p50} | {p99} | – | – |");
    }
    if !with.is_empty() {
        let rows: Vec<&Row> = with.iter().map(|(r, _)| r).collect();
        let (ops, p50, p99) = fig(&rows);
        let fetches: u64 = with.iter().map(|(_, s)| s.fetches).sum();
        let failed: u64 = with.iter().map(|(_, s)| s.failures).sum();
        let mut lat: Vec<u64> = with.iter().flat_map(|(_, s)| s.lat_us.clone()).collect();
        lat.sort_unstable();
        let ms = |us: Option<&u64>| us.map_or(f64::NAN, |u| *u as f64 / 1000.0);
        println!(
            "| with scraper | {ops} | {p50} | {p99} | {fetches} ({failed}) | {:.1} / {:.1} |",
            ms(lat.get(lat.len() / 2)),
            ms(lat.last())
        );
        let slow: u64 = with.iter().map(|(_, s)| s.slow_opened).sum();
        println!();
        println!(
            "slow-client connections opened: {slow} (each held until the endpoint's deadline)"
        );
    }
    println!();
    println!("each round's ops/s (without / with):");
    for (i, (n, (w, _))) in without.iter().zip(with).enumerate() {
        println!(
            "  round {}: {:.1} / {:.1}{}",
            i + 1,
            n.ops_per_s(),
            w.ops_per_s(),
            if i % 2 == 1 { " (with first)" } else { "" }
        );
    }
    let notes = without
        .iter()
        .chain(with.iter().map(|(r, _)| r))
        .filter_map(|r| r.first_error.as_deref())
        .chain(with.iter().filter_map(|(_, s)| s.first_error.as_deref()));
    for e in notes.take(3) {
        println!("error: {e}");
    }
}
