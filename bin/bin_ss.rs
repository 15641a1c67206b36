//! `bin_ss`: a pairfs storage server. Parses flags, sets up logging and signals, and runs
//! `pairfs::ss::run` until SIGTERM or SIGINT.

use clap::Parser;
use pairfs::{auth, logging, ss};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A pairfs storage server: holds file content durably and serves it to clients.
#[derive(Parser, Debug)]
#[command(name = "bin_ss", version, args_override_self = true)]
struct Args {
    /// Host of the name server.
    #[arg(long, default_value = "127.0.0.1")]
    nm_host: String,
    /// Port of the name server.
    #[arg(long, default_value_t = 5000)]
    nm_port: u16,
    /// Host to listen on for clients (also advertised to the name server unless
    /// --advertise-host is given; a wildcard such as 0.0.0.0 is replaced by the address the
    /// name server sees this server register from).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Address clients and the partner reach this server at, when --host is not one.
    #[arg(long)]
    advertise_host: Option<String>,
    /// Port to listen on for clients; 0 picks any free port.
    #[arg(long, default_value_t = 6001)]
    client_port: u16,
    /// Storage directory (content under files/, bookkeeping beside it).
    #[arg(long, default_value = "./storage_ss1")]
    storage: PathBuf,
    /// This server's name; a name ending in `_backup` is the backup of the name before it.
    #[arg(long, default_value = "ss1")]
    username: String,
    /// Name of the primary server this one backs up.
    #[arg(long)]
    backup_of: Option<String>,
    /// Milliseconds between heartbeats to the name server.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_interval_ms: u64,
    /// Cluster key file (created with mode 0600 if missing); default ~/.pairfs/cluster.key.
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
    /// Milliseconds a write session may stay idle before its sentence lock is released.
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    lock_timeout_ms: u64,
    /// Most client connections served at once (lowered at start to fit the descriptor limit,
    /// whose soft value is raised to the hard one).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_connections: u64,
    /// Seconds a connection may stay idle between requests (outside a write session, which
    /// --lock-timeout-ms governs) or take to deliver one frame, before it is closed;
    /// fractions allowed (e.g. 0.3).
    #[arg(long, default_value = "60", value_parser = pairfs::limits::parse_seconds_ms)]
    idle_timeout_s: u64,
    /// Serve and dial only TLS, with the cluster's ca.pem, server.pem and server.key (0600)
    /// in DIR (made by bin_nm --init-tls on the name server's machine).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://HOST:PORT/metrics` (off unless given; 0 picks a
    /// free port).
    #[arg(long)]
    http_port: Option<u16>,
    /// How often the store's journal of small changes is checkpointed: at most this long
    /// after a CREATE or a small WRITE it is durable in place and its journal entry dropped.
    #[arg(long, default_value_t = pairfs::ss::store::JOURNAL_CHECKPOINT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    journal_checkpoint_ms: u64,
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            if e.use_stderr() {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                eprintln!("bin_ss: {first}");
                std::process::exit(2);
            }
            let _ = e.print();
            std::process::exit(0);
        }
    };
    // Whatever this server creates (stored files, records, its database, a default key) is
    // for its own user only: files 0600, directories 0700.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    logging::init_server();
    if let Some(dir) = &args.tls_dir {
        match pairfs::tls::Tls::load_server(dir) {
            Ok(t) => {
                pairfs::tls::install(t);
            }
            Err(e) => {
                log::error!(target: logging::ev::SHUTDOWN, "storage server failed: TLS: {e}");
                eprintln!("bin_ss: TLS: {e}");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = serve(args) {
        log::error!(target: logging::ev::SHUTDOWN, "storage server failed: {e:#}");
        // A key file open to others is the operator's to fix: say how, and exit 2.
        if let Some(k @ auth::KeyFileError::Unprotected { .. }) = e.downcast_ref() {
            eprintln!("bin_ss: {k}");
            std::process::exit(2);
        }
        std::process::exit(1);
    }
}

fn serve(args: Args) -> anyhow::Result<()> {
    pairfs::names::validate_user(&args.username)
        .map_err(|e| anyhow::anyhow!("--username: {}", e.msg))?;
    let key_path = args.cluster_key_file.unwrap_or_else(auth::default_key_path);
    let key = auth::ClusterKey::load_or_create(&key_path)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in signal_hook::consts::TERM_SIGNALS {
        // A second signal while the first is being handled exits at once.
        signal_hook::flag::register_conditional_shutdown(*sig, 1, Arc::clone(&shutdown))?;
        signal_hook::flag::register(*sig, Arc::clone(&shutdown))?;
    }
    if let Some(port) = args.http_port {
        let host = pairfs::addr::bare(&args.host);
        let l = std::net::TcpListener::bind((host, port)).map_err(|e| {
            anyhow::anyhow!("HTTP listen on {}: {e}", pairfs::addr::join(host, port))
        })?;
        let a = l.local_addr()?;
        let storage = args.storage.clone();
        let routes: pairfs::http::Routes = Arc::new(move |path: &str| {
            (path == "/metrics").then(|| pairfs::http::Page {
                content_type: pairfs::metrics::CONTENT_TYPE,
                body: pairfs::metrics::ss_text(&storage),
            })
        });
        pairfs::http::spawn(l, "ss-http", routes)?;
        log::info!("metrics HTTP endpoint on http://{a}/metrics");
    }
    let cfg = ss::Config {
        nm_addr: pairfs::addr::join(&args.nm_host, args.nm_port),
        host: args.host,
        advertise_host: args.advertise_host,
        client_port: args.client_port,
        storage: args.storage,
        name: args.username,
        backup_of: args.backup_of,
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        key,
        lock_timeout_ms: args.lock_timeout_ms,
        max_connections: args.max_connections as usize,
        idle_timeout_ms: args.idle_timeout_s,
        // Test hook only (see ss::Config::fault_flip_put); read once, at start.
        fault_flip_put: std::env::var("PAIRFS_FAULT_FLIP_PUT").is_ok_and(|v| v == "1"),
        fault_stage: pairfs::ss::server::staging::StageFault::from_env(
            std::env::var("PAIRFS_FAULT_STAGE").ok().as_deref(),
        ),
        journal_checkpoint_ms: args.journal_checkpoint_ms,
    };
    ss::run(cfg, shutdown)?;
    Ok(())
}
