//! The name server: namespace, users, access rights, placement, pairs and replication.
//!
//! `core` decides, `store` makes decisions durable, `server` runs the mio event loop, `worker`
//! makes blocking calls to storage servers (two pools, each fed by a `--queue-cap` channel:
//! [`CLIENT_CALL_WORKERS`] threads for client operations and EXEC, `--workers` threads for
//! replication),
//! `replication` holds the job rows and the relay a replication worker runs, `exec` runs EXEC
//! scripts; [`crate::http`] serves the status page (`page.html`), `/status` and `/metrics`.
//! [`start`] wires them together; `bin_nm` parses flags and calls [`run`].
//!
//! Choices made where the behaviour contract is silent:
//!
//! * A client's requests are answered strictly in order: while one waits on a storage server
//!   (CREATE, DELETE, UNDO, EXEC), the connection's next frame stays unread in its buffer.
//! * Granting access to a user never seen does not make them "seen": `LIST` shows users who
//!   said HELLO (and owners of adopted files), so a mistyped grantee does not appear there.
//! * A file adopted from a storage server that does not know its owner belongs to `admin`.
//! * A storage server silent for `--heartbeat-timeout-ms` is marked down and its link is
//!   closed, so it must register again (and be reconciled) before it serves anything.
//! * A DELETE whose copy is already gone from the storage server (NOT_FOUND) still removes
//!   the record: the user's intent is met.
//! * Until folders exist, files can only be created in the root; a nested name is NOT_FOUND
//!   with a message saying so.
//! * A pair is recorded when its backup first registers (named `X_backup` or with
//!   `--backup-of X`), or when `X` registers while such a server is known; a primary keeps its
//!   first backup. A backup's own file list never creates records: it is compared with its
//!   primary's records and owed what it lacks (and the removal of what the pair does not know).
//! * Replication jobs owe a backup what the name server records; access rights, owners of
//!   records and the namespace live on the name server and need no job. A job's row is written
//!   in the same batch as the change it follows, so a crash never loses an owed change.
//! * In sync mode a change waits for the backup's job; a failed attempt or a backup going down
//!   answers at once, degraded (`1 of 2 copies`), with the job still owed. UPLOAD's implicit
//!   create answers with the upload's location, not a sync wait: the upload is the change.

pub mod core;
pub mod exec;
pub mod migrate;
pub mod replication;
pub mod server;
pub mod store;
pub mod transport;
pub mod worker;

use crate::auth::ClusterKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The operator's status page served at `/`: one self-contained file that polls `/status`.
const STATUS_PAGE: &str = include_str!("page.html");

/// Batches the store channel holds before the loop keeps them in its own backlog.
pub const STORE_CHANNEL_CAP: usize = 1024;

/// How changes reach a pair's backup (recorded now, acted on once pairs exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// Answer once the primary has the change.
    Async,
    /// Answer once both copies are durable.
    Sync,
}

/// Threads making client-initiated calls to storage servers (CREATE, DELETE, UNDO, EXEC's
/// fetch and run). Each call mostly waits on a storage server's fsyncs, so concurrent clients
/// need many in flight at once: with only a handful, 16 creating clients queue behind each
/// other. `--workers` sizes the replication pool, as the behaviour contract says.
pub const CLIENT_CALL_WORKERS: usize = 32;

/// Everything `bin_nm`'s flags set.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub host: String,
    /// Address peers reach this server at, when `host` is not one (a wildcard); only logged.
    pub advertise_host: Option<String>,
    /// Port (0 = any free port).
    pub port: u16,
    /// Directory of the durable state.
    pub data_dir: PathBuf,
    /// Status HTTP port (0 = off).
    pub http_port: u16,
    /// Heartbeat interval storage servers are told to use.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a storage server is down.
    pub heartbeat_timeout_ms: u64,
    /// Replication mode.
    pub replication: ReplicationMode,
    /// Worker threads.
    pub workers: usize,
    /// Job queue capacity.
    pub queue_cap: usize,
    /// EXEC wall-clock limit in seconds.
    pub exec_timeout_s: u64,
    /// Whether EXEC is allowed.
    pub exec_enabled: bool,
    /// The account EXEC scripts run as when the server runs as root (default `nobody`).
    pub exec_user: Option<String>,
    /// The cluster key file (created if missing).
    pub cluster_key_file: PathBuf,
    /// Most simultaneous connections (lowered at start to fit the descriptor limit).
    pub max_connections: usize,
    /// Idle time (and time for one frame to arrive) after which a connection is closed;
    /// registered storage servers are exempt (see [`server`]).
    pub idle_timeout_ms: u64,
    /// Longest time a file's last access stays only in memory before it is written (see
    /// `core/access.rs`; a crash loses at most this much of the access times).
    pub access_flush_ms: u64,
    /// Test hook: exit around a MOVE's storage-server call (`PAIRFS_FAULT_NM` of `bin_nm`;
    /// see [`worker::NmFault`]).
    pub fault: Option<worker::NmFault>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: "127.0.0.1".into(),
            advertise_host: None,
            port: 5000,
            data_dir: PathBuf::from("./nm_data"),
            http_port: 5080,
            heartbeat_interval_ms: 5000,
            heartbeat_timeout_ms: 15000,
            replication: ReplicationMode::Async,
            workers: 4,
            queue_cap: 1000,
            exec_timeout_s: 10,
            exec_enabled: true,
            exec_user: None,
            cluster_key_file: crate::auth::default_key_path(),
            max_connections: 1024,
            idle_timeout_ms: server::DEFAULT_IDLE_TIMEOUT_MS,
            access_flush_ms: core::ACCESS_FLUSH_MS,
            fault: None,
        }
    }
}

/// Why the name server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NmError {
    /// Binding, key file or thread start-up failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The durable store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The cluster key file is missing and cannot be created, unreadable, or open to others.
    #[error(transparent)]
    Key(#[from] crate::auth::KeyFileError),
    /// The EXEC sandbox could not be prepared (`--exec-user`).
    #[error(transparent)]
    Sandbox(#[from] exec::SandboxError),
    /// The loop stopped on an error.
    #[error(transparent)]
    Server(#[from] server::ServerError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NmError {
    let what = what.into();
    move |source| NmError::Io { what, source }
}

impl NmError {
    /// The exit status for this failure: 2 for a configuration the operator must fix (an
    /// unprotected key file, a bad `--exec-user`), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            NmError::Key(crate::auth::KeyFileError::Unprotected { .. }) | NmError::Sandbox(_) => 2,
            _ => 1,
        }
    }
}

/// A started name server, not yet running its loop.
pub struct Started {
    /// The bound client/server address.
    pub addr: SocketAddr,
    /// The bound HTTP address, if enabled.
    pub http_addr: Option<SocketAddr>,
    /// Stops the loop cleanly.
    pub shutdown: server::Shutdown,
    /// The loop; call [`server::Server::run`].
    pub server: server::Server,
}

/// Opens the store, binds the listeners and starts the store thread and worker pool.
pub fn start(cfg: &Config) -> Result<Started, NmError> {
    let t0 = Instant::now();
    let key = ClusterKey::load_or_create(&cfg.cluster_key_file)?;
    // Decided before any thread starts, and logged once.
    let sandbox = if cfg.exec_enabled {
        exec::Sandbox::probe(cfg.exec_user.as_deref())?
    } else {
        exec::Sandbox::disabled()
    };
    let db = store::Store::open(&cfg.data_dir)?;
    let loaded = db.load()?;
    let mut core = core::Core::with_env(
        core::CoreConfig {
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            exec_enabled: cfg.exec_enabled,
            replication: match cfg.replication {
                ReplicationMode::Async => "async",
                ReplicationMode::Sync => "sync",
            },
            max_repl_in_flight: cfg.queue_cap.max(1) + cfg.workers.max(1),
            started_ms: core::mono_ms(),
        },
        key.clone(),
        loaded,
        core::Env::system(),
    );
    core.set_access_flush_ms(cfg.access_flush_ms);
    let host = crate::addr::bare(&cfg.host);
    let listener = std::net::TcpListener::bind((host, cfg.port)).map_err(io_err(format!(
        "listen on {}",
        crate::addr::join(host, cfg.port)
    )))?;
    let addr = listener.local_addr().map_err(io_err("local address"))?;
    crate::tls::warn_if_plain("name server", addr);
    let (snapshot, http_addr) = if cfg.http_port != 0 {
        let l = std::net::TcpListener::bind((host, cfg.http_port)).map_err(io_err(format!(
            "HTTP listen on {}",
            crate::addr::join(host, cfg.http_port)
        )))?;
        let a = l.local_addr().map_err(io_err("local address"))?;
        let snap = Arc::new(Mutex::new(String::from("{}")));
        let published = snap.clone();
        let routes: crate::http::Routes = Arc::new(move |path: &str| {
            use crate::http::Page;
            match path {
                "/" | "/index.html" => Some(Page {
                    content_type: "text/html; charset=utf-8",
                    body: STATUS_PAGE.to_string(),
                }),
                "/status" => Some(Page {
                    content_type: "application/json",
                    body: published.lock().map(|g| g.clone()).unwrap_or_default(),
                }),
                "/metrics" => Some(Page {
                    content_type: crate::metrics::CONTENT_TYPE,
                    body: crate::metrics::nm().text(),
                }),
                _ => None,
            }
        });
        crate::http::spawn(l, "nm-http", routes).map_err(io_err("start HTTP thread"))?;
        log::info!("status HTTP endpoint on http://{a}/status");
        (Some(snap), Some(a))
    } else {
        (None, None)
    };
    // Descriptors besides connections: the store, every worker's storage-server sockets,
    // EXEC's pipes, the HTTP endpoint's connections, log output, and the reserve slots.
    let headroom = 32
        + CLIENT_CALL_WORKERS as u64
        + 2 * cfg.workers as u64
        + crate::http::MAX_CONNECTIONS as u64
        + server::SERVER_RESERVE_SLOTS as u64;
    let max_connections = crate::limits::cap_connections(
        "name server",
        cfg.max_connections,
        crate::limits::raise_nofile(),
        headroom,
        1,
    );
    let env = core.env();
    let mut srv = server::Server::new(listener, core, max_connections, snapshot)
        .map_err(io_err("event loop"))?;
    srv.set_idle_timeout_ms(cfg.idle_timeout_ms);
    let waker = srv.waker();
    let (store_tx, store_rx, store_thread) =
        server::spawn_store(db, waker.clone(), STORE_CHANNEL_CAP)
            .map_err(io_err("start store thread"))?;
    let queue_cap = cfg.queue_cap.max(1);
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(queue_cap);
    let (repl_tx, repl_rx) = crossbeam_channel::bounded(queue_cap);
    // Room for one result per queued or running job of both pools.
    let (results_tx, results_rx) =
        crossbeam_channel::bounded(2 * (queue_cap + cfg.workers.max(1)) + 2);
    let w = waker.clone();
    let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let _ = w.wake();
    });
    let pool = worker::Pool {
        name: "worker",
        workers: CLIENT_CALL_WORKERS,
        exec_timeout_s: cfg.exec_timeout_s,
        sandbox: Arc::new(sandbox),
        fault: cfg.fault,
    };
    worker::spawn(
        pool.clone(),
        jobs_rx,
        results_tx.clone(),
        key.clone(),
        env.clone(),
        notify.clone(),
    )
    .map_err(io_err("start workers"))?;
    let pool = worker::Pool {
        name: "replicator",
        workers: cfg.workers,
        fault: None,
        ..pool
    };
    worker::spawn(pool, repl_rx, results_tx, key, env, notify)
        .map_err(io_err("start replication workers"))?;
    srv.attach(server::Links {
        store_tx,
        store_rx,
        jobs_tx,
        repl_tx,
        results_rx,
        store_thread: Some(store_thread),
    });
    server::log_listen(addr, cfg.advertise_host.as_deref(), t0);
    Ok(Started {
        addr,
        http_addr,
        shutdown: srv.shutdown_handle(),
        server: srv,
    })
}

/// Runs a name server until SIGTERM or SIGINT (a second signal exits at once).
pub fn run(cfg: &Config) -> Result<(), NmError> {
    // Handlers first: a signal sent as soon as `nm_listen` is logged is a clean stop, never
    // the default action.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(io_err("install signal handlers"))?;
    let started = start(cfg)?;
    let shutdown = started.shutdown.clone();
    std::thread::Builder::new()
        .name("nm-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    log::info!(target: crate::logging::ev::SHUTDOWN, signal = sig; "signal {sig}: stopping");
                    shutdown.trigger();
                } else {
                    std::process::exit(1);
                }
            }
        })
        .map_err(io_err("start signal thread"))?;
    started.server.run()?;
    Ok(())
}
