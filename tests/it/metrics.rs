//! `GET /metrics` on the name server and on a storage server started with `--http-port`,
//! parsed with a Prometheus exposition-format parser; and the HTTP endpoint serving `/`,
//! `/status` and `/metrics` promptly while a slow client holds a connection.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (for endpoints whose port 0 means "off").
pub fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

/// The `host:port` a process logged as `<prefix>http://ADDR/...`.
pub fn logged_http_addr(c: &Cluster, proc_name: &str, prefix: &str) -> String {
    let v = c.wait_event(
        proc_name,
        "log",
        |v| v["msg"].as_str().is_some_and(|m| m.starts_with(prefix)),
        WAIT,
    );
    let rest = v["msg"].as_str().unwrap().trim_start_matches(prefix);
    let rest = rest.trim_start_matches("http://");
    rest.split('/').next().unwrap().to_string()
}

/// The name server's HTTP address.
pub fn nm_http(c: &Cluster) -> String {
    logged_http_addr(c, "nm", "status HTTP endpoint on ")
}

/// Status line and body of `GET path`.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

pub fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample named `metric` whose labels include `labels` (0 when absent).
pub fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map_or(0.0, |x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric} is not a number: {other:?}"),
        })
}

fn has(s: &prometheus_parse::Scrape, metric: &str) -> bool {
    s.samples.iter().any(|x| x.metric == metric)
}

/// A started pair whose name server serves HTTP on a free port, and that endpoint's address.
fn pair_with_http() -> (Cluster, String) {
    let port = free_port();
    let c = Cluster::builder()
        .pair()
        .nm_args(&["--http-port", &port])
        .start();
    let addr = nm_http(&c);
    (c, addr)
}

#[test]
fn name_server_metrics_count_operations_and_servers() {
    let (c, addr) = pair_with_http();
    c.client("alice").run("VIEW\n").assert_code(0);
    let before = scrape(&addr);
    c.client("alice")
        .run("CREATE m1.txt\nCREATE m2.txt\nCREATE m3.txt\n")
        .assert_code(0);
    let after = scrape(&addr);
    let creates = |s| value(s, "pairfs_ops_total", &[("op", "CREATE")]);
    assert_eq!(creates(&after) - creates(&before), 3.0);
    for m in [
        "pairfs_op_duration_seconds",
        "pairfs_replication_lag_seconds",
        "pairfs_replication_queue_depth",
        "pairfs_replication_bytes_total",
        "pairfs_storage_servers_up",
        "pairfs_failovers_total",
        "pairfs_heartbeat_misses_total",
    ] {
        assert!(has(&after, m), "no {m} in the scrape");
    }
    // The gauges follow the published snapshot (about once a second).
    assert!(poll_until(WAIT, || {
        value(&scrape(&addr), "pairfs_storage_servers_up", &[]) == 2.0
    }));
    // A killed backup is a heartbeat miss or a closed link; a killed writer is a failover.
    let mut c = c;
    wait_file_replicated(&c, "ss1", "ss1_backup", "m3.txt");
    let lag = after
        .samples
        .iter()
        .any(|x| x.metric == "pairfs_replication_lag_seconds");
    assert!(lag);
    c.kill9("ss1");
    assert!(poll_until(WAIT, || {
        let s = scrape(&addr);
        value(&s, "pairfs_failovers_total", &[]) >= 1.0
            && value(&s, "pairfs_storage_servers_up", &[]) == 1.0
    }));
}

#[test]
fn storage_server_metrics_report_what_it_stores() {
    let port = free_port();
    let c = Cluster::builder()
        .server_args("ss1", &["--http-port", &port])
        .start();
    let addr = logged_http_addr(&c, "ss1", "metrics HTTP endpoint on ");
    c.client("alice")
        .run("CREATE s.txt\nWRITE s.txt 0\n0 Twelve bytes\nETIRW\n")
        .assert_code(0);
    let s = scrape(&addr);
    assert!(value(&s, "pairfs_ss_files_stored", &[]) >= 1.0);
    assert!(value(&s, "pairfs_ss_bytes_stored", &[]) >= 12.0);
    assert!(value(&s, "pairfs_ss_disk_free_bytes", &[]) > 0.0);
    assert!(value(&s, "pairfs_ss_disk_used_bytes", &[]) > 0.0);
    let (status, _) = http_get(&addr, "/status");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn page_status_and_metrics_answer_while_a_slow_client_holds_a_connection() {
    let port = free_port();
    let c = Cluster::builder().nm_args(&["--http-port", &port]).start();
    let addr = nm_http(&c);
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /met").unwrap();
    for (path, needle) in [
        ("/", "<title>pairfs status</title>"),
        ("/status", "\"pairs\""),
        ("/metrics", "pairfs_ops_total"),
    ] {
        let t = Instant::now();
        let (status, body) = http_get(&addr, path);
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
        assert!(body.contains(needle), "{path}: {body}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{path}: {:?}",
            t.elapsed()
        );
        let _ = slow.write_all(b"r");
    }
}

/// Every replication job a change makes due is handed to the workers by the loop's pump
/// right after the change, never left for a later wake-up (a deadline, a periodic tick): the
/// name server counts each time it went idle with such a job waiting, and concurrent
/// writers' changes leave that count at zero.
#[test]
fn every_change_is_dispatched_by_its_own_wake_up() {
    let (c, addr) = pair_with_http();
    let (writers, writes) = (4, 8);
    std::thread::scope(|s| {
        for w in 0..writers {
            let c = &c;
            s.spawn(move || {
                let mut script = format!("CREATE wake{w}.txt\n");
                for i in 0..writes {
                    script.push_str(&format!("WRITE wake{w}.txt {i}\n0 Change {i}.\nETIRW\n"));
                }
                c.client("alice").run(&script).assert_code(0);
            });
        }
    });
    for w in 0..writers {
        let bytes = wait_file_replicated(&c, "ss1", "ss1_backup", &format!("wake{w}.txt"));
        assert!(bytes.ends_with(format!("Change {}.", writes - 1).as_bytes()));
    }
    let s = scrape(&addr);
    assert!(has(&s, "pairfs_replication_missed_wakeups_total"));
    assert_eq!(
        value(&s, "pairfs_replication_missed_wakeups_total", &[]),
        0.0,
        "replication jobs waited for a later wake-up; nm log:\n{}",
        c.log("nm").tail()
    );
}
