//! `bin_client`: the pairfs command-line client. Flags, logging, and a call into the library.

use clap::Parser;
use pairfs::client::{self, Options};

/// The pairfs client: reads commands from a terminal (with a prompt) or a pipe and prints the
/// results. Exit status: 0 all commands succeeded, 1 some failed, 2 usage or connection error.
#[derive(Parser, Debug)]
#[command(name = "bin_client", version, args_override_self = true)]
struct Args {
    /// Name server host.
    #[arg(long, default_value = "127.0.0.1")]
    nm_host: String,
    /// Name server port.
    #[arg(long, default_value_t = 5000)]
    nm_port: u16,
    /// User to act as (default: the OS user).
    #[arg(long)]
    username: Option<String>,
    /// The user's key file (default: $XDG_CONFIG_HOME/pairfs/users/<user>.key, else
    /// $HOME/.config/pairfs/users/<user>.key; created on first use).
    #[arg(long, value_name = "PATH")]
    user_key_file: Option<std::path::PathBuf>,
    /// How long (seconds) a change waits for a storage pair to finish a failover before it
    /// fails; 0 fails at once. Default: one failover with the cluster's own settings.
    #[arg(long)]
    wait_s: Option<u64>,
    /// Speak only TLS, verifying servers against the cluster's ca.pem in DIR (default:
    /// $PAIRFS_TLS_DIR when set). Needed when the cluster runs with --tls-dir.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,
}

/// The OS user: `$USER`, else the passwd entry of the real uid, else `user`.
fn os_user() -> String {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "user".to_string())
}

fn main() {
    pairfs::logging::init_client();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // One clear line for a bad flag or value, as for every pairfs binary.
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("bad arguments"));
            std::process::exit(2);
        }
    };
    let tls_dir = args.tls_dir.clone().or_else(|| {
        std::env::var_os(pairfs::tls::TLS_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    });
    if let Some(dir) = tls_dir {
        match pairfs::tls::Tls::load_client(&dir) {
            Ok(t) => {
                pairfs::tls::install(t);
            }
            Err(e) => {
                eprintln!("ERROR [INVALID]: TLS: {e}");
                std::process::exit(2);
            }
        }
    }
    let opts = Options {
        nm_host: args.nm_host,
        nm_port: args.nm_port,
        username: args.username.unwrap_or_else(os_user),
        user_key_file: args.user_key_file,
        wait: args.wait_s.map(std::time::Duration::from_secs),
    };
    std::process::exit(client::run(&opts));
}
