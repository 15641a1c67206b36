//! `bin_nm`: the pairfs name server. Parses flags and runs `pairfs::nm::run`.

use clap::{Parser, ValueEnum};
use pairfs::nm::{self, Config, ReplicationMode};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Replication {
    /// Answer once the primary has the change; the backup follows.
    Async,
    /// Answer once both copies are durable.
    Sync,
}

/// The pairfs name server: namespace, access rights, placement and storage-server liveness.
#[derive(Parser, Debug)]
#[command(name = "bin_nm", version, about, args_override_self = true)]
struct Cli {
    /// Address to listen on for clients and storage servers.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Address clients and storage servers reach this server at, when --host is a wildcard
    /// (0.0.0.0, ::) or not reachable as given; logged with nm_listen.
    #[arg(long)]
    advertise_host: Option<String>,
    /// Port to listen on (0 picks any free port; the bound address is logged as nm_listen).
    #[arg(long, default_value_t = 5000)]
    port: u16,
    /// Directory holding the name server's durable state.
    #[arg(long, default_value = "./nm_data")]
    data: PathBuf,
    /// Port of the HTTP endpoint (/ status page, /status JSON, /metrics Prometheus, /health); 0 turns it off.
    #[arg(long, default_value_t = 5080)]
    http_port: u16,
    /// Heartbeat interval storage servers are told to use, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_interval_ms: u64,
    /// Silence after which a storage server is declared down, in milliseconds.
    #[arg(long, default_value_t = 15000, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_timeout_ms: u64,
    /// Replication mode: async answers after the primary, sync after both copies.
    #[arg(long, value_enum, default_value_t = Replication::Async)]
    replication: Replication,
    /// Worker threads for calls to storage servers and EXEC, and as many replication workers.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: u64,
    /// Capacity of each worker job queue (replication jobs beyond it wait in the database).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    queue_cap: u64,
    /// Wall-clock limit of an EXEC script, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    exec_timeout_s: u64,
    /// Longest time a file's last access (INFO's Last Accessed) stays only in memory before it
    /// is written to the database, in milliseconds; a crash loses at most this much of them.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    access_flush_ms: u64,
    /// Refuse EXEC.
    #[arg(long)]
    no_exec: bool,
    /// Account EXEC scripts run as when the server runs as root (default: nobody).
    #[arg(long)]
    exec_user: Option<String>,
    /// Cluster key file (default: $HOME/.pairfs/cluster.key, created if missing).
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
    /// Most simultaneous client connections (lowered at start to fit the descriptor limit,
    /// whose soft value is raised to the hard one); 16 more slots are kept for storage servers.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_connections: u64,
    /// Seconds a connection may stay idle, or take to deliver one frame, before it is closed;
    /// fractions allowed (e.g. 0.3). Registered storage servers are exempt; the client
    /// reconnects transparently on its next command.
    #[arg(long, default_value = "60", value_parser = pairfs::limits::parse_seconds_ms)]
    idle_timeout_s: u64,
    /// Stale copies at least this large are caught up by delta (only the changed chunks
    /// travel); smaller ones are sent whole. 0 sends every copy whole.
    #[arg(long, default_value_t = pairfs::delta::DELTA_MIN_BYTES)]
    delta_min_bytes: u64,
    /// Forget the key user NAME is bound to (its next session binds a new one), then exit.
    /// Changes the store under --data directly when no name server holds it; otherwise asks
    /// the name server at --host/--port, proving the cluster key.
    #[arg(long, value_name = "NAME")]
    reset_user: Option<String>,
    /// Serve and dial only TLS, with the cluster CA and server certificate in DIR (ca.pem,
    /// server.pem, server.key 0600) made by --init-tls.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Make a cluster CA and a server certificate in DIR (created 0700), then exit. Refuses
    /// a DIR that already holds a CA.
    #[arg(long, value_name = "DIR")]
    init_tls: Option<PathBuf>,
    /// Extra name (DNS name or IP address) for the server certificate made by --init-tls;
    /// repeatable. Peers verify the fixed cluster name, so none is needed.
    #[arg(long, value_name = "NAME")]
    tls_san: Vec<String>,
}

/// `--init-tls`: makes the cluster's TLS files in `dir`; the exit status.
fn init_tls(dir: &std::path::Path, names: &[String]) -> i32 {
    use pairfs::tls;
    match tls::init_dir(dir, names) {
        Ok(()) => {
            let d = dir.display();
            println!(
                "made a cluster CA and a server certificate in {d} (name {}):",
                tls::CLUSTER_NAME
            );
            println!(
                "  {d}/{}  every client and server (--tls-dir on each)",
                tls::CA_FILE
            );
            println!(
                "  {d}/{} + {d}/{}  every server (keep the key 0600)",
                tls::SERVER_CERT_FILE,
                tls::SERVER_KEY_FILE
            );
            println!(
                "  {d}/{}  issues certificates: keep it off the other machines",
                tls::CA_KEY_FILE
            );
            0
        }
        Err(e) => {
            eprintln!("ERROR [INVALID]: TLS: {e}");
            1
        }
    }
}

/// `--reset-user`: unbinds `user`'s key in the store under `cli.data`, or through the name
/// server holding it; the exit status.
fn reset_user(cli: &Cli, user: &str) -> i32 {
    let data = cli.data.as_path();
    use pairfs::nm::store::{Store, StoreError, DB_FILE};
    if let Err(e) = pairfs::names::validate_user(user) {
        eprintln!("bin_nm: {}", e.msg);
        return 2;
    }
    if !data.join(DB_FILE).exists() {
        eprintln!("bin_nm: no name server store under {}", data.display());
        return 1;
    }
    let store = match Store::open(data) {
        Ok(s) => s,
        Err(StoreError::InUse(_)) => {
            // A running name server holds the store: it makes the change itself.
            let key_file = cli
                .cluster_key_file
                .clone()
                .unwrap_or_else(pairfs::auth::default_key_path);
            let key = match pairfs::auth::ClusterKey::load_or_create(&key_file) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("bin_nm: cluster key {}: {e}", key_file.display());
                    return 1;
                }
            };
            let addr = format!("{}:{}", cli.host, cli.port);
            return match pairfs::identity::reset_online(&addr, &key, user) {
                Ok(()) => {
                    println!("user {user} reset by the name server at {addr}: its next session binds a new key");
                    0
                }
                Err(e) => {
                    eprintln!("bin_nm: the store under {} is in use by a running name server, which refused the reset: {e}", data.display());
                    1
                }
            };
        }
        Err(e) => {
            eprintln!("bin_nm: {e}");
            return 1;
        }
    };
    match store.reset_user(user) {
        Ok(true) => {
            println!("user {user} reset: its next session binds a new key");
            0
        }
        Ok(false) => {
            eprintln!("bin_nm: no user {user} in {}", data.display());
            1
        }
        Err(e) => {
            eprintln!("bin_nm: {e}");
            1
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("bin_nm: {}", line.trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    if cli.heartbeat_timeout_ms <= cli.heartbeat_interval_ms {
        eprintln!(
            "bin_nm: --heartbeat-timeout-ms ({}) must be longer than --heartbeat-interval-ms ({})",
            cli.heartbeat_timeout_ms, cli.heartbeat_interval_ms
        );
        std::process::exit(2);
    }
    // Whatever this server creates (stored files, records, its database, a default key) is
    // for its own user only: files 0600, directories 0700.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    if let Some(dir) = &cli.init_tls {
        std::process::exit(init_tls(dir, &cli.tls_san));
    }
    if let Some(dir) = &cli.tls_dir {
        match pairfs::tls::Tls::load_server(dir) {
            Ok(t) => {
                pairfs::tls::install(t);
            }
            Err(e) => {
                eprintln!("bin_nm: TLS: {e}");
                std::process::exit(2);
            }
        }
    }
    if let Some(user) = &cli.reset_user {
        std::process::exit(reset_user(&cli, user));
    }
    pairfs::logging::init_server();
    pairfs::delta::set_min_bytes(cli.delta_min_bytes);
    let cfg = Config {
        host: cli.host,
        advertise_host: cli.advertise_host,
        port: cli.port,
        data_dir: cli.data,
        http_port: cli.http_port,
        heartbeat_interval_ms: cli.heartbeat_interval_ms,
        heartbeat_timeout_ms: cli.heartbeat_timeout_ms,
        replication: match cli.replication {
            Replication::Async => ReplicationMode::Async,
            Replication::Sync => ReplicationMode::Sync,
        },
        workers: cli.workers as usize,
        queue_cap: cli.queue_cap as usize,
        exec_timeout_s: cli.exec_timeout_s,
        exec_enabled: !cli.no_exec,
        exec_user: cli.exec_user,
        cluster_key_file: cli
            .cluster_key_file
            .unwrap_or_else(pairfs::auth::default_key_path),
        max_connections: cli.max_connections as usize,
        idle_timeout_ms: cli.idle_timeout_s,
        access_flush_ms: cli.access_flush_ms,
        // Test hook only (see nm::worker::NmFault); read once, at start.
        fault: nm::worker::NmFault::from_env(std::env::var("PAIRFS_FAULT_NM").ok().as_deref()),
    };
    if let Err(e) = nm::run(&cfg) {
        log::error!(target: pairfs::logging::ev::SHUTDOWN, "name server failed: {e}");
        eprintln!("bin_nm: {e}");
        std::process::exit(e.exit_code());
    }
}
