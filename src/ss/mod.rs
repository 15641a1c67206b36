//! The storage server: durable file content, sentence editing, and its link to the name server.
//!
//! [`start`] opens the storage directory, scans it, binds the client port, starts the name
//! server link and the accept thread, and returns a [`Running`] handle; [`run`] does the same
//! and then waits for a shutdown flag (set by a signal), as `bin_ss` needs.

pub mod document;
pub mod nmlink;
pub mod server;
pub mod sessions;
pub mod store;
pub mod textcount;

use crate::auth::{ClusterKey, TicketChecker};
use crate::logging::ev;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long shutdown waits for commits in progress.
pub const SHUTDOWN_WAIT_MS: u64 = 10_000;
/// Descriptors kept free for everything but client connections.
const SS_FD_HEADROOM: u64 = 64;
/// Descriptors one client connection may use: its socket and the files it reads or writes.
const SS_FDS_PER_CONN: u64 = 3;

/// How often [`run`] looks at its shutdown flag.
const SHUTDOWN_POLL_MS: u64 = 50;

/// Everything a storage server is started with (the flags of `bin_ss`).
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the name server.
    pub nm_addr: String,
    /// Host to listen on for clients.
    pub host: String,
    /// Host to advertise to the name server (which hands it to clients and the partner);
    /// `None` advertises `host`. A wildcard advertised is replaced by the name server with
    /// the address the registration comes from (`crate::addr`).
    pub advertise_host: Option<String>,
    /// Client port; 0 picks a free one.
    pub client_port: u16,
    /// The storage directory.
    pub storage: PathBuf,
    /// This server's name.
    pub name: String,
    /// The primary this server backs up, if any.
    pub backup_of: Option<String>,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// The cluster key.
    pub key: ClusterKey,
    /// Idle limit of a write session before its lock is released.
    pub lock_timeout_ms: u64,
    /// Most client connections served at once (lowered at start to fit the descriptor limit).
    pub max_connections: usize,
    /// Idle time allowed between requests outside a write session or stream, and the time a
    /// frame may take to arrive, before the connection is closed.
    pub idle_timeout_ms: u64,
    /// Test hook: flip one byte of the first PUT_FILE_CONTENT received, before verification,
    /// so the rejection and retry of a corrupted transfer can be tested end to end.
    /// `bin_ss` sets it from the environment variable `PAIRFS_FAULT_FLIP_PUT=1`.
    pub fault_flip_put: bool,
    /// Test hook for staged uploads received from the partner (`PAIRFS_FAULT_STAGE=forget`,
    /// `cut` or `refuse` for `bin_ss`; see [`server::staging::StageFault`]).
    pub fault_stage: Option<server::staging::StageFault>,
    /// Period of the store journal's checkpoint (see `store::journal`): at most this long
    /// after a small change its journal entry is replaced by the change made durable in place.
    pub journal_checkpoint_ms: u64,
}

/// Why a storage server could not start.
#[derive(Debug, thiserror::Error)]
pub enum SsError {
    /// The storage directory could not be opened or scanned.
    #[error("storage: {0}")]
    Store(#[from] store::StoreError),
    /// The client port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// A started storage server.
pub struct Running {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    accept: Option<JoinHandle<()>>,
    /// The journal's checkpoint thread, joined at stop, so that no checkpoint runs on the
    /// storage directory once the server has stopped.
    journal: Option<JoinHandle<()>>,
}

impl Running {
    /// The bound client address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the name server link is registered right now.
    pub fn is_registered(&self) -> bool {
        self.shared.link.is_registered()
    }

    /// Stops accepting, waits (bounded) for commits in progress, and stops the link.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Some(h) = self.journal.take() {
            let _ = h.join();
        }
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_WAIT_MS);
        while self.shared.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        // A clean stop leaves the journal empty (every change has ended by now).
        if let Err(e) = self.shared.store.checkpoint_journal() {
            log::warn!(target: ev::SHUTDOWN, "journal checkpoint at shutdown failed: {e}");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop();
        }
    }
}

/// Starts a storage server and returns once its client port is listening.
pub fn start(cfg: Config) -> Result<Running, SsError> {
    let store = Arc::new(store::Store::open(&cfg.storage, &cfg.name)?);
    store.scan()?;
    let want = crate::addr::join(&cfg.host, cfg.client_port);
    let listener = TcpListener::bind(&want).map_err(|source| SsError::Listen {
        addr: want.clone(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| SsError::Listen {
        addr: want.clone(),
        source,
    })?;
    crate::tls::warn_if_plain("storage server", addr);
    let stop = Arc::new(AtomicBool::new(false));
    let link = nmlink::NmLink::start(
        nmlink::LinkConfig {
            nm_addr: cfg.nm_addr.clone(),
            name: cfg.name.clone(),
            host: crate::addr::bare(cfg.advertise_host.as_deref().unwrap_or(&cfg.host)).to_string(),
            client_port: addr.port(),
            backup_of: cfg.backup_of.clone(),
            key: cfg.key.clone(),
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        },
        store.clone(),
        stop.clone(),
    );
    let shared = Arc::new(server::Shared {
        store,
        sessions: sessions::Sessions::new(),
        checker: TicketChecker::new(cfg.key.clone(), &cfg.name),
        link,
        lock_timeout_ms: cfg.lock_timeout_ms,
        // Each connection may hold a file or two open besides its socket; the rest of the
        // process (store, link, logs, stages) gets a fixed headroom.
        max_connections: crate::limits::cap_connections(
            "storage server",
            cfg.max_connections.max(1),
            crate::limits::raise_nofile(),
            SS_FD_HEADROOM,
            SS_FDS_PER_CONN,
        ),
        idle_timeout_ms: cfg.idle_timeout_ms.max(1),
        budget: crate::protocol::frame::FrameBudget::new(
            crate::protocol::frame::FRAME_BUDGET_BYTES,
        ),
        conns: AtomicUsize::new(0),
        inflight: AtomicUsize::new(0),
        stop,
        fault_flip_put: AtomicBool::new(cfg.fault_flip_put),
        stages: server::staging::Stages::new(cfg.fault_stage),
    });
    let s3 = shared.clone();
    thread::Builder::new()
        .name("ss-stage-sweep".into())
        .spawn(move || {
            let every = Duration::from_millis(server::staging::STAGE_SWEEP_MS);
            let mut last = Instant::now();
            while !s3.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(SHUTDOWN_POLL_MS));
                if last.elapsed() >= every {
                    s3.stages.sweep();
                    last = Instant::now();
                }
            }
        })
        .map_err(SsError::Thread)?;
    let s4 = shared.clone();
    let period = Duration::from_millis(cfg.journal_checkpoint_ms.max(1));
    let journal = thread::Builder::new()
        .name("ss-journal".into())
        .spawn(move || {
            let mut last = Instant::now();
            while !s4.stop.load(Ordering::SeqCst) {
                thread::sleep(period.min(Duration::from_millis(SHUTDOWN_POLL_MS)));
                if last.elapsed() >= period {
                    if let Err(e) = s4.store.checkpoint_journal() {
                        log::warn!(target: ev::SS_SCAN, "journal checkpoint failed: {e}");
                    }
                    last = Instant::now();
                }
                // Fail-stop: changes the journal holds could not be made durable in place, and
                // retrying the same fsync cannot be trusted. The process ends here (its page
                // cache survives, as after a crash); the next start redoes the journal
                // durably before it serves, and meanwhile the partner takes over.
                if s4.store.journal_failed() {
                    log::error!(target: ev::SHUTDOWN,
                        "the journal has failed; stopping so that a restart redoes it");
                    log::logger().flush();
                    std::process::exit(3);
                }
            }
        })
        .map_err(SsError::Thread)?;
    let s2 = shared.clone();
    let accept = thread::Builder::new()
        .name("ss-accept".into())
        .spawn(move || server::accept_loop(listener, s2))
        .map_err(SsError::Thread)?;
    log::info!(target: ev::SS_LISTEN, addr = addr.to_string(), ss = cfg.name.as_str();
        "storage server {} listening on {addr}", cfg.name);
    Ok(Running {
        addr,
        shared,
        accept: Some(accept),
        journal: Some(journal),
    })
}

/// Runs a storage server until `shutdown` is set, then stops it cleanly.
pub fn run(cfg: Config, shutdown: Arc<AtomicBool>) -> Result<(), SsError> {
    let running = start(cfg)?;
    while !shutdown.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(SHUTDOWN_POLL_MS));
    }
    log::info!(target: ev::SHUTDOWN, "stopping: no new connections; finishing commits in progress");
    running.shutdown();
    log::info!(target: ev::SHUTDOWN, "stopped");
    Ok(())
}
