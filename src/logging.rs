//! The JSON log line format and the fixed set of event names. This is the one place both are
//! specified.
//!
//! Servers log one JSON object per line on standard output:
//!
//! ```text
//! {"ts":"2026-11-22T10:00:00.123Z","level":"INFO","event":"nm_listen","msg":"listening on 127.0.0.1:5000","addr":"127.0.0.1:5000"}
//! ```
//!
//! A call site names its event as the log target and adds typed fields as key-values:
//!
//! ```ignore
//! log::info!(target: ev::NM_LISTEN, addr = addr.to_string(); "listening on {addr}");
//! ```
//!
//! Records from other crates (whose target is not one of ours) are logged with event `log`.
//! `RUST_LOG` sets the level (default `info`).

use log::kv::{Key, Value, VisitSource};
use std::io::Write;

/// The fixed set of event names. Keep the origin design's names for the same moments.
pub mod ev {
    /// A server's listener is bound (field `addr`).
    pub const NM_LISTEN: &str = "nm_listen";
    /// A storage server's client listener is bound (field `addr`).
    pub const SS_LISTEN: &str = "ss_listen";
    /// A storage server registered with the name server.
    pub const NM_SS_REGISTER: &str = "nm_ss_register";
    /// A heartbeat arrived (logged at debug level).
    pub const NM_HEARTBEAT: &str = "nm_heartbeat";
    /// A pair was formed: msg `Paired ss1 → ss1_backup`.
    pub const REPLICATION_ASSIGN: &str = "replication_assign";
    /// The name server looked at whether a change needs replicating.
    pub const NM_REPLICATION_CHECK: &str = "nm_replication_check";
    /// A replication job was queued (create, delete, metadata).
    pub const NM_REPLICATION_QUEUED: &str = "nm_replication_queued";
    /// A replication job was queued after a write.
    pub const NM_WRITE_REPLICATION_QUEUED: &str = "nm_write_replication_queued";
    /// A worker took a job into its queue.
    pub const REPLICATION_WORKER_QUEUED: &str = "replication_worker_queued";
    /// A worker started a job.
    pub const REPLICATION_WORKER_PROCESS: &str = "replication_worker_process";
    /// A worker fetched content from the source.
    pub const REPLICATION_WORKER_FETCHED: &str = "replication_worker_fetched";
    /// A worker finished a transfer.
    pub const REPLICATION_WORKER_SUCCESS: &str = "replication_worker_success";
    /// A worker finished a delete.
    pub const REPLICATION_WORKER_DELETE_SUCCESS: &str = "replication_worker_delete_success";
    /// A job attempt failed.
    pub const REPLICATION_WORKER_ERROR: &str = "replication_worker_error";
    /// A stale copy was caught up by delta (fields `file`, `ss`, `bytes` = op stream and
    /// history sent to the target, `size` = the file's size, `signature` = its bytes,
    /// `signature_ms` = the time the target took to make it, `ms`).
    pub const REPLICATION_DELTA: &str = "replication_delta";
    /// A copy was installed from the upload staged on its target while it arrived, so only
    /// its history went (fields `file`, `ss`, `version`, `bytes` = history sent, `size`,
    /// `ms`); or, at WARN, the staged copy could not be used and the file is sent whole.
    pub const REPLICATION_STAGED: &str = "replication_staged";
    /// A delta transfer failed and the copy is sent whole instead (fields `file`, `ss`).
    pub const REPLICATION_DELTA_FALLBACK: &str = "replication_delta_fallback";
    /// A server missed its heartbeats or its connection closed.
    pub const HEARTBEAT_MONITOR_FAILURE: &str = "heartbeat_monitor_failure";
    /// A pair's writer is down: nobody takes its changes until that writer's lease has
    /// surely ended (fields `pair`, `ss` = the writer, `epoch`, `switch_at_ms`).
    pub const FAILOVER_START: &str = "failover_start";
    /// The other member writes in a new epoch, or the writer came back first (fields
    /// `pair`, `ss` = the new writer, `epoch`).
    pub const FAILOVER_COMPLETE: &str = "failover_complete";
    /// A failed server came back and its files are compared with the records; a copy found
    /// with unacknowledged changes (fields `file`, `ss`, `version`); the handback began.
    pub const NM_SS_RECOVERY: &str = "nm_ss_recovery";
    /// Recovery sync jobs were queued (fields `ss`, `queued`, `quarantined`; or `file` for
    /// one owed copy).
    pub const NM_RECOVERY_SYNC_QUEUED: &str = "nm_recovery_sync_queued";
    /// A pair is whole again and the original primary writes again (fields `pair`, `ss`,
    /// `epoch`).
    pub const REPLICATION_RECOVER: &str = "replication_recover";
    /// A client session started (field `user`).
    pub const NM_CLIENT_CONNECT: &str = "nm_client_connect";
    /// A user name was bound to its first key, a session was refused for proving another key
    /// or none, or an operator reset the user (fields `user`, `outcome`: `bound`, `refused`
    /// or `reset`).
    pub const NM_USER_KEY: &str = "nm_user_key";
    /// A client request was answered with an error (fields `user`, `code`).
    pub const NM_REQUEST_ERROR: &str = "nm_request_error";
    /// A file was created, deleted, undone or changed (fields `file`, `version`).
    pub const NM_FILE_CHANGE: &str = "nm_file_change";
    /// The name server's durable store committed a batch (debug; fields `batch`, `ms`).
    pub const NM_STORE_COMMIT: &str = "nm_store_commit";
    /// The name server's database, written by an earlier release with redb 2, was copied
    /// into the current format at startup (fields `from`, `tables`, `rows`, `backup` = where
    /// the old file is kept).
    pub const NM_STORE_MIGRATED: &str = "nm_store_migrated";
    /// EXEC ran a script (fields `file`, `user`, `exit`, `ms`).
    pub const NM_EXEC: &str = "nm_exec";
    /// How EXEC scripts are isolated, logged once at startup (field `mode`; at WARN with field
    /// `missing` when isolation is incomplete).
    pub const NM_EXEC_ISOLATION: &str = "nm_exec_isolation";
    /// A storage server adopted a file created or edited by hand.
    pub const SS_ADOPT: &str = "ss_adopt";
    /// A storage server narrowed its storage directory's mode to 0700 at startup (fields
    /// `dir`, `was`).
    pub const SS_STORAGE_MODE: &str = "ss_storage_mode";
    /// A storage server's startup scan finished (fields `files`, `ms`).
    pub const SS_SCAN: &str = "ss_scan";
    /// A storage server committed a change to a file (an UPLOAD's line also says where its
    /// time went: `recv_ms`, `sync_ms`, `stage_wait_ms`, `install_ms`, `staged`).
    pub const SS_COMMIT: &str = "ss_commit";
    /// A source sent a file as delta ops (fields `file`, `bytes`, `copied`, `literal`).
    pub const SS_DELTA_SENT: &str = "ss_delta_sent";
    /// A storage server's link to the name server came up or went down.
    pub const SS_NM_LINK: &str = "ss_nm_link";
    /// A request was refused (bad ticket, malformed frame, limit).
    pub const SS_REFUSED: &str = "ss_refused";
    /// A server is shutting down on a signal.
    pub const SHUTDOWN: &str = "shutdown";
    /// Accepting failed for want of file descriptors (EMFILE/ENFILE); logged once per burst
    /// (fields `server`, `refused` = connections closed unserved so far in the burst).
    pub const ACCEPT_FD_EXHAUSTED: &str = "accept_fd_exhausted";
    /// A connection was closed for idling or for not finishing a frame in time (fields
    /// `reason` = `idle` | `frame_deadline` | `reserve`, `idle_ms`).
    pub const CONN_DROPPED: &str = "conn_dropped";
    /// The connection cap chosen at start, from `--max-connections` and the descriptor limit
    /// (fields `max_connections`, `nofile`).
    pub const CONN_LIMIT: &str = "conn_limit";
    /// A server listens beyond loopback without `--tls-dir`: its links are plain TCP (fields
    /// `server`, `addr`). Logged once at start.
    pub const TLS_OFF: &str = "tls_off";

    /// Every event name above, for documentation and tests.
    pub const ALL: &[&str] = &[
        TLS_OFF,
        NM_LISTEN,
        SS_LISTEN,
        NM_SS_REGISTER,
        NM_HEARTBEAT,
        REPLICATION_ASSIGN,
        NM_REPLICATION_CHECK,
        NM_REPLICATION_QUEUED,
        NM_WRITE_REPLICATION_QUEUED,
        REPLICATION_WORKER_QUEUED,
        REPLICATION_WORKER_PROCESS,
        REPLICATION_WORKER_FETCHED,
        REPLICATION_WORKER_SUCCESS,
        REPLICATION_WORKER_DELETE_SUCCESS,
        REPLICATION_WORKER_ERROR,
        REPLICATION_DELTA,
        REPLICATION_DELTA_FALLBACK,
        REPLICATION_STAGED,
        HEARTBEAT_MONITOR_FAILURE,
        FAILOVER_START,
        FAILOVER_COMPLETE,
        NM_SS_RECOVERY,
        NM_RECOVERY_SYNC_QUEUED,
        REPLICATION_RECOVER,
        NM_CLIENT_CONNECT,
        NM_USER_KEY,
        NM_REQUEST_ERROR,
        NM_FILE_CHANGE,
        NM_STORE_COMMIT,
        NM_STORE_MIGRATED,
        NM_EXEC,
        NM_EXEC_ISOLATION,
        SS_ADOPT,
        SS_STORAGE_MODE,
        SS_SCAN,
        SS_COMMIT,
        SS_DELTA_SENT,
        SS_NM_LINK,
        SS_REFUSED,
        SHUTDOWN,
        ACCEPT_FD_EXHAUSTED,
        CONN_DROPPED,
        CONN_LIMIT,
    ];
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            serde_json::Value::from(n)
        } else if let Some(n) = value.to_i64() {
            serde_json::Value::from(n)
        } else if let Some(b) = value.to_bool() {
            serde_json::Value::from(b)
        } else {
            serde_json::Value::from(value.to_string())
        };
        self.0.insert(key.as_str().to_string(), v);
        Ok(())
    }
}

/// Renders one record as a JSON line (without the newline).
pub fn render(record: &log::Record<'_>) -> String {
    let mut map = serde_json::Map::new();
    let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    map.insert("ts".into(), ts.into());
    map.insert("level".into(), record.level().as_str().into());
    let event = if ev::ALL.contains(&record.target()) {
        record.target()
    } else {
        "log"
    };
    map.insert("event".into(), event.into());
    map.insert("msg".into(), record.args().to_string().into());
    let _ = record.key_values().visit(&mut JsonFields(&mut map));
    serde_json::Value::Object(map).to_string()
}

/// Installs the JSON logger on standard output (servers). `RUST_LOG` sets the level.
pub fn init_server() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| writeln!(buf, "{}", render(record)))
        .target(env_logger::Target::Stdout)
        .try_init();
}

/// Installs the JSON logger on standard error, silent unless `RUST_LOG` is set (the client,
/// whose standard output is for humans only).
pub fn init_client() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .format(|buf, record| writeln!(buf, "{}", render(record)))
        .target(env_logger::Target::Stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_json_with_fields() {
        let kvs: &[(&str, &dyn log::kv::ToValue)] = &[("file", &"a\"b.txt"), ("bytes", &12u64)];
        let record = log::Record::builder()
            .target(ev::NM_LISTEN)
            .level(log::Level::Info)
            .args(format_args!("line \"one\"\nline two"))
            .key_values(&kvs)
            .build();
        let line = render(&record);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "nm_listen");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["file"], "a\"b.txt");
        assert_eq!(v["bytes"], 12);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
