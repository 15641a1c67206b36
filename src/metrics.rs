//! Prometheus metrics (`GET /metrics`, OpenMetrics text) for the name server and storage
//! servers.
//!
//! The name server's metrics live in one process-wide [`Nm`] registry: counters and
//! histograms are atomics updated where the events already happen (the event loop when a
//! request arrives or is answered, the core when a failover switches or a heartbeat is
//! missed or a replication job lands); gauges are set when the loop publishes its status
//! snapshot, about once a second. No lock is held across I/O: encoding for a scrape runs on
//! the HTTP connection's thread and only reads the atomics.
//!
//! A storage server's metrics ([`ss_text`]) are computed on the HTTP thread, away from its
//! loops. Free and used space come from one `statvfs` per scrape. The files and bytes stored
//! come from a walk of `files/` that is cached: a scrape walks only when the last walk is
//! older than [`USAGE_MAX_AGE_MS`] and no other scrape is walking, so however often it is
//! scraped a server walks its files at most once per that period, and every other scrape
//! costs O(1) in the number of files (the gauges may be that much behind). The cache rather
//! than counting every change as it lands: a count kept by the store would have to follow
//! every path that adds, replaces or removes a file (commits, uploads, replication, moves,
//! quarantine, hand edits found at start) and would drift silently if one were missed; the
//! walk is right by construction and its cost is bounded by the period.
//!
//! Both servers show `pairfs_sync_calls_total{kind}`: the fsyncs, directory fsyncs, `syncfs`
//! calls and durable database commits the process has made (counted in `crate::durable`,
//! read at scrape time by [`SyncCalls`]).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label of per-operation metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// The request's `op` spelling.
    pub op: &'static str,
}

type HistogramFamily = Family<OpLabel, Histogram, fn() -> Histogram>;

/// The label of the sync-call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Encodes `pairfs_sync_calls_total{kind}` from the process's counts at each scrape.
#[derive(Debug, Default)]
pub struct SyncCalls;

impl Collector for SyncCalls {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = crate::durable::sync_counts();
        let mut family = encoder.encode_descriptor(
            "pairfs_sync_calls",
            "Sync calls made by this process: file fsyncs, directory fsyncs, syncfs, durable database commits",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (kind, v) in counts.by_kind() {
            let label = KindLabel { kind };
            ConstCounter::new(v).encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}

fn op_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The name server's metrics.
pub struct Nm {
    registry: Registry,
    /// Client requests received, by operation.
    pub ops: Family<OpLabel, Counter>,
    /// Time from a request's arrival to its first answer, by operation.
    pub op_duration: HistogramFamily,
    /// Time from a change being recorded (COMMITTED on the primary) to the backup holding it.
    pub replication_lag: Histogram,
    /// Replication jobs waiting to run.
    pub queue_depth: Gauge,
    /// Content bytes the replication jobs delivered to backups.
    pub replication_bytes: Counter,
    /// Times the loop went idle with a replication job still undispatched that a request
    /// it had handled made due (its dispatch then waited for a later wake-up).
    pub replication_missed_wakeups: Counter,
    /// Storage servers up.
    pub servers_up: Gauge,
    /// Writer switches from one member of a pair to the other.
    pub failovers: Counter,
    /// Storage servers marked down for missing their heartbeats.
    pub heartbeat_misses: Counter,
}

impl Nm {
    fn new() -> Nm {
        let mut registry = Registry::default();
        let ops = Family::<OpLabel, Counter>::default();
        let op_duration: HistogramFamily = Family::new_with_constructor(op_histogram);
        let replication_lag = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let queue_depth = Gauge::default();
        let replication_bytes = Counter::default();
        let servers_up = Gauge::default();
        let replication_missed_wakeups = Counter::default();
        let failovers = Counter::default();
        let heartbeat_misses = Counter::default();
        registry.register("pairfs_ops", "Client requests received", ops.clone());
        registry.register(
            "pairfs_op_duration_seconds",
            "Time from a request's arrival to its first answer",
            op_duration.clone(),
        );
        registry.register(
            "pairfs_replication_lag_seconds",
            "Time from a change being committed to the backup holding it",
            replication_lag.clone(),
        );
        registry.register(
            "pairfs_replication_queue_depth",
            "Replication jobs waiting to run",
            queue_depth.clone(),
        );
        registry.register(
            "pairfs_replication_bytes",
            "Content bytes delivered to backups by replication",
            replication_bytes.clone(),
        );
        registry.register(
            "pairfs_replication_missed_wakeups",
            "Times the name server went idle with a replication job due since a request it handled",
            replication_missed_wakeups.clone(),
        );
        registry.register(
            "pairfs_storage_servers_up",
            "Storage servers up",
            servers_up.clone(),
        );
        registry.register(
            "pairfs_failovers",
            "Writer switches between the members of a pair",
            failovers.clone(),
        );
        registry.register(
            "pairfs_heartbeat_misses",
            "Storage servers marked down for missing heartbeats",
            heartbeat_misses.clone(),
        );
        registry.register_collector(Box::new(SyncCalls));
        Nm {
            registry,
            ops,
            op_duration,
            replication_lag,
            queue_depth,
            replication_bytes,
            replication_missed_wakeups,
            servers_up,
            failovers,
            heartbeat_misses,
        }
    }

    /// The exposition text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a frame that is a client request; returns its label and arrival time.
    pub fn request(&self, msg: &crate::protocol::Message) -> Option<(&'static str, Instant)> {
        let op = request_op(msg)?;
        self.ops.get_or_create(&OpLabel { op }).inc();
        Some((op, Instant::now()))
    }

    /// Observes the duration of a request answered now (`started` from [`Nm::request`]).
    pub fn answered(&self, started: Option<(&'static str, Instant)>) {
        if let Some((op, at)) = started {
            self.op_duration
                .get_or_create(&OpLabel { op })
                .observe(at.elapsed().as_secs_f64());
        }
    }

    /// Sets the gauges from a status snapshot, adds the request total to it (the page
    /// derives operations per second from it) and returns it as JSON text.
    pub fn publish(&self, mut snapshot: serde_json::Value) -> String {
        let total = self.ops_total(REQUEST_OPS);
        if let Some(o) = snapshot.as_object_mut() {
            o.insert("ops_total".into(), total.into());
            let depth = o.get("queue_depth").and_then(|d| d.as_i64());
            self.queue_depth.set(depth.unwrap_or(0));
            let up = o.get("totals").and_then(|t| t.get("servers_up"));
            self.servers_up
                .set(up.and_then(|d| d.as_i64()).unwrap_or(0));
        }
        snapshot.to_string()
    }

    /// Total client requests counted so far (for the status snapshot's ops per second).
    pub fn ops_total(&self, ops: &[&'static str]) -> u64 {
        ops.iter()
            .map(|op| self.ops.get_or_create(&OpLabel { op }).get())
            .sum()
    }
}

/// The process's name server metrics.
pub fn nm() -> &'static Nm {
    static NM: OnceLock<Nm> = OnceLock::new();
    NM.get_or_init(Nm::new)
}

/// The name of a client request as its metric label, `None` for frames that are not client
/// requests (storage-server traffic, replies).
pub fn request_op(msg: &crate::protocol::Message) -> Option<&'static str> {
    use crate::protocol::Message as M;
    Some(match msg {
        M::Hello { .. } => "HELLO",
        M::Prove { .. } => "PROVE",
        M::ResetUser { .. } => "RESET_USER",
        M::Create { .. } => "CREATE",
        M::Delete { .. } => "DELETE",
        M::Undo { .. } => "UNDO",
        M::Info { .. } => "INFO",
        M::View { .. } => "VIEW",
        M::ListUsers { .. } => "LIST_USERS",
        M::AddAccess { .. } => "ADD_ACCESS",
        M::RemAccess { .. } => "REM_ACCESS",
        M::Exec { .. } => "EXEC",
        M::Locate { .. } => "LOCATE",
        M::Recover { .. } => "RECOVER",
        M::Status { .. } => "STATUS",
        M::Fsck { .. } => "FSCK",
        M::CreateFolder { .. } => "CREATE_FOLDER",
        M::ViewFolder { .. } => "VIEW_FOLDER",
        M::Move { .. } => "MOVE",
        M::Checkpoint { .. } => "CHECKPOINT",
        M::Revert { .. } => "REVERT",
        M::RequestAccess { .. } => "REQUEST_ACCESS",
        M::ViewRequests { .. } => "VIEW_REQUESTS",
        M::AnswerRequest { .. } => "ANSWER_REQUEST",
        M::ListCheckpoints { .. } => "LIST_CHECKPOINTS",
        M::ReadCheckpoint { .. } => "READ_CHECKPOINT",
        M::Upload { .. } => "UPLOAD",
        _ => return None,
    })
}

/// Every label [`request_op`] gives.
pub const REQUEST_OPS: &[&str] = &[
    "HELLO",
    "PROVE",
    "RESET_USER",
    "CREATE",
    "DELETE",
    "UNDO",
    "INFO",
    "VIEW",
    "LIST_USERS",
    "ADD_ACCESS",
    "REM_ACCESS",
    "EXEC",
    "LOCATE",
    "RECOVER",
    "STATUS",
    "FSCK",
    "CREATE_FOLDER",
    "VIEW_FOLDER",
    "MOVE",
    "CHECKPOINT",
    "REVERT",
    "REQUEST_ACCESS",
    "VIEW_REQUESTS",
    "ANSWER_REQUEST",
    "LIST_CHECKPOINTS",
    "READ_CHECKPOINT",
    "UPLOAD",
];

/// Most time a storage server's files/bytes gauges may lag its disk: the longest a walk of
/// `files/` is reused.
pub const USAGE_MAX_AGE_MS: u64 = 5_000;

/// One walk of a storage directory's `files/`.
struct Walk {
    dir: PathBuf,
    at: Instant,
    /// Files and bytes found.
    found: (u64, u64),
}

/// The last walk of a storage directory's `files/`.
struct UsageCache {
    last: Mutex<Option<Walk>>,
    /// Set while a scrape walks; the others take the last figures meanwhile.
    walking: AtomicBool,
}

/// Files and bytes under `dir`, from a walk at most [`USAGE_MAX_AGE_MS`] old (one walk at a
/// time; a scrape arriving during a walk is answered from the previous one when there is one).
fn cached_usage(dir: &Path, max_age: Duration) -> (u64, u64) {
    static CACHE: UsageCache = UsageCache {
        last: Mutex::new(None),
        walking: AtomicBool::new(false),
    };
    let previous = {
        let last = CACHE.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some(w) if w.dir == dir => {
                if w.at.elapsed() < max_age {
                    return w.found;
                }
                Some(w.found)
            }
            _ => None,
        }
    };
    let won = CACHE
        .walking
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if !won {
        if let Some(v) = previous {
            return v;
        }
    }
    let v = usage(dir);
    *CACHE.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Walk {
        dir: dir.to_path_buf(),
        at: Instant::now(),
        found: v,
    });
    if won {
        CACHE.walking.store(false, Ordering::Release);
    }
    v
}

/// Walks of `files/` made so far by this process (for tests of the cache).
#[cfg(test)]
static WALKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Files and bytes under `dir`, recursively (symbolic links are not followed).
fn usage(dir: &Path) -> (u64, u64) {
    #[cfg(test)]
    WALKS.fetch_add(1, Ordering::SeqCst);
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files += 1;
                bytes += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    (files, bytes)
}

/// Bytes free (for an unprivileged user) and in use on the file system holding `path`.
pub fn disk_free_used(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    let free = s.blocks_available() as u64 * frsize;
    let used = (s.blocks() as u64).saturating_sub(s.blocks_free() as u64) * frsize;
    Some((free, used))
}

/// A storage server's exposition: files and bytes stored under `storage/files` (from a walk
/// at most [`USAGE_MAX_AGE_MS`] old), and the file system's free and used bytes.
pub fn ss_text(storage: &Path) -> String {
    let mut registry = Registry::default();
    let (files, bytes) = cached_usage(
        &storage.join("files"),
        Duration::from_millis(USAGE_MAX_AGE_MS),
    );
    let (free, used) = disk_free_used(storage).unwrap_or((0, 0));
    for (name, help, v) in [
        ("pairfs_ss_files_stored", "Files stored", files),
        (
            "pairfs_ss_bytes_stored",
            "Bytes of file content stored",
            bytes,
        ),
        (
            "pairfs_ss_disk_free_bytes",
            "Bytes free on the storage directory's file system",
            free,
        ),
        (
            "pairfs_ss_disk_used_bytes",
            "Bytes in use on the storage directory's file system",
            used,
        ),
    ] {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        registry.register(name, help, g);
    }
    registry.register_collector(Box::new(SyncCalls));
    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gauge(text: &str, name: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap()
    }

    #[test]
    fn storage_gauges_walk_at_most_once_per_period_however_often_scraped() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir_all(files.join("docs")).unwrap();
        std::fs::write(files.join("a.txt"), b"12345").unwrap();
        std::fs::write(files.join("docs/b.txt"), b"123").unwrap();
        let before = WALKS.load(Ordering::SeqCst);
        let t = Instant::now();
        let first = ss_text(dir.path());
        assert_eq!(gauge(&first, "pairfs_ss_files_stored"), 2, "{first}");
        assert_eq!(gauge(&first, "pairfs_ss_bytes_stored"), 8, "{first}");
        // A new file, then many scrapes within the period: answered from the one walk.
        std::fs::write(files.join("c.txt"), b"1").unwrap();
        for _ in 0..200 {
            let again = ss_text(dir.path());
            if t.elapsed() < Duration::from_millis(USAGE_MAX_AGE_MS) {
                assert_eq!(gauge(&again, "pairfs_ss_files_stored"), 2);
            }
        }
        if t.elapsed() < Duration::from_millis(USAGE_MAX_AGE_MS) {
            assert_eq!(WALKS.load(Ordering::SeqCst) - before, 1);
        }
        // Past the period (none here), the next scrape walks again and sees the new file.
        let (n, _) = cached_usage(&files, Duration::ZERO);
        assert_eq!(n, 3);
        // Another directory is walked at once, not answered from the first one's figures.
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("files")).unwrap();
        assert_eq!(gauge(&ss_text(other.path()), "pairfs_ss_files_stored"), 0);
    }

    /// The value of `pairfs_sync_calls_total{kind}` in an exposition.
    fn sync_calls(text: &str, kind: &str) -> u64 {
        let prefix = format!("pairfs_sync_calls_total{{kind=\"{kind}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&prefix));
        let line = line.unwrap_or_else(|| panic!("no {prefix} in {text}"));
        line[prefix.len()..].trim().parse().unwrap()
    }

    #[test]
    fn both_servers_show_the_sync_calls_the_process_made() {
        let d = tempfile::tempdir().unwrap();
        let before = ss_text(d.path());
        let nm_before = nm().text();
        crate::durable::fsync_dir(d.path()).unwrap();
        crate::durable::replace(d.path(), &d.path().join("x"), b"x").unwrap();
        crate::durable::syncfs(d.path()).unwrap();
        crate::durable::count_store_commit();
        let after = ss_text(d.path());
        let nm_after = nm().text();
        // Other tests of this process may sync too: at least ours are counted.
        for (b, a) in [(&before, &after), (&nm_before, &nm_after)] {
            assert!(sync_calls(a, "dir") >= sync_calls(b, "dir") + 2);
            assert!(sync_calls(a, "file") > sync_calls(b, "file"));
            assert!(sync_calls(a, "fs") > sync_calls(b, "fs"));
            assert!(sync_calls(a, "store_commit") > sync_calls(b, "store_commit"));
        }
        assert!(
            after.contains("# TYPE pairfs_sync_calls counter"),
            "{after}"
        );
    }
}
