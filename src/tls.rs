//! TLS on every pairfs link (rustls, TLS 1.3 only, ring as the crypto provider).
//!
//! A cluster has its own certificate authority, made once by `bin_nm --init-tls DIR`:
//!
//! | file         | who needs it                   | mode |
//! |--------------|--------------------------------|------|
//! | `ca.pem`     | every client and server        | 0644 |
//! | `server.pem` | servers (name + storage)       | 0644 |
//! | `server.key` | servers                        | 0600 |
//! | `ca.key`     | nobody at run time; keep it off the other machines (it issues certificates) | 0600 |
//!
//! The server certificate names the fixed cluster name [`CLUSTER_NAME`] (plus any
//! `--tls-san` names), and every peer verifies that name against `ca.pem`, whatever address it
//! dialled: wildcard binds, advertised addresses and IPv6 all work with one certificate. All
//! servers share it: TLS proves "a server of this cluster" and hides the traffic; which server
//! it is (the cluster-key HMAC on REGISTER and tickets) and which user (ed25519 proofs) stay
//! proved at the application level, as without TLS.
//!
//! Settings are process-wide: a binary started with `--tls-dir` loads the directory once and
//! [`install`]s it before any connection is made (like the logger). Every blocking
//! [`crate::protocol::Connection`] then dials and accepts only TLS, and the name server's
//! event loop accepts only TLS. Without `--tls-dir` links are plain TCP. Explicit
//! configurations ([`Tls::client_config`], [`Tls::server_config`]) serve tests.
//!
//! A mismatch never hangs: a TLS record starts with byte [`HANDSHAKE_BYTE`] and a pairfs
//! frame with `{`, so a plain server refuses a TLS hello at once, and a TLS server answers a
//! plain frame with a plain `ERROR [UNAVAILABLE]: TLS: ...` frame naming `--tls-dir`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The DNS name every server certificate carries and every peer verifies.
pub const CLUSTER_NAME: &str = "pairfs.cluster";
/// The cluster CA certificate.
pub const CA_FILE: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// The servers' certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The servers' private key.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The first byte of a TLS handshake record (a ClientHello); never the first byte of a frame.
pub const HANDSHAKE_BYTE: u8 = 0x16;
/// Environment variable a client reads its TLS directory from when `--tls-dir` is absent.
pub const TLS_DIR_ENV: &str = "PAIRFS_TLS_DIR";
/// How long certificates made by [`init_dir`] stay valid, in years.
pub const VALID_YEARS: i32 = 10;

/// Why TLS files could not be made or loaded; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A private key that group or others may use.
    #[error("{path} may be used by group or others (mode {mode:o}); run chmod 600 {path}")]
    Unprotected {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A file that does not hold what it should.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// `--init-tls` found a CA already there.
    #[error("{path} already exists: refusing to replace the cluster CA (certificates it issued would stop working); use another directory")]
    Exists {
        /// The existing file.
        path: String,
    },
    /// Making a key or certificate failed.
    #[error("cannot make certificates: {0}")]
    Generate(String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes a cluster CA and one server certificate signed by it in `dir` (created 0700):
/// `ca.pem`, `ca.key` (0600), `server.pem`, `server.key` (0600). The certificate names
/// [`CLUSTER_NAME`] and `extra_names` (DNS names or IP addresses). Refuses to touch a
/// directory that already holds a CA.
pub fn init_dir(dir: &Path, extra_names: &[String]) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    for f in [CA_FILE, CA_KEY_FILE] {
        let p = dir.join(f);
        if p.exists() {
            return Err(TlsError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    crate::durable::create_dir_all(dir).map_err(io_at(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_at(dir))?;

    let year = this_year();
    let not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    let not_after = rcgen::date_time_ymd(year + VALID_YEARS, 1, 1);
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pairfs cluster CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = rcgen::KeyPair::generate().map_err(generate)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate)?;
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);

    let mut names = vec![CLUSTER_NAME.to_string()];
    names.extend(extra_names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names).map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CLUSTER_NAME);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;

    // The CA key first: once it exists the directory counts as initialised.
    let ca_key_path = dir.join(CA_KEY_FILE);
    crate::durable::create_secret_once(&ca_key_path, ca_key.serialize_pem().as_bytes())
        .map_err(io_at(&ca_key_path))?;
    let key_path = dir.join(SERVER_KEY_FILE);
    crate::durable::create_secret_once(&key_path, key.serialize_pem().as_bytes())
        .map_err(io_at(&key_path))?;
    for (name, pem) in [(CA_FILE, ca_cert.pem()), (SERVER_CERT_FILE, cert.pem())] {
        let p = dir.join(name);
        std::fs::write(&p, pem).map_err(io_at(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).map_err(io_at(&p))?;
    }
    Ok(())
}

/// The current calendar year (close enough: certificates start a year early).
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

/// A loaded TLS directory: what a client needs (always) and what a server needs (when loaded
/// with [`Tls::load_server`]).
#[derive(Clone)]
pub struct Tls {
    dir: PathBuf,
    client: Arc<ClientConfig>,
    server: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({})", self.dir.display())
    }
}

/// ring, chosen to keep builds light (no cmake, no aws-lc). rustls marks it deprecated
/// because it has no post-quantum key exchange; X25519 and the NIST curves remain.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = std::fs::read(path).map_err(io_at(path))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.display().to_string(),
            what: format!("not a PEM certificate ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.display().to_string(),
            what: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = || path.display().to_string();
    let text = crate::durable::read_secret(path, 64 * 1024).map_err(|e| match e {
        crate::durable::SecretError::Unprotected(mode) => TlsError::Unprotected {
            path: shown(),
            mode,
        },
        crate::durable::SecretError::Io(e) => io_at(path)(e),
    })?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| TlsError::Invalid {
        path: shown(),
        what: format!("not a PEM private key ({e})"),
    })
}

impl Tls {
    /// Loads what a client needs from `dir`: `ca.pem`.
    pub fn load_client(dir: &Path) -> Result<Tls, TlsError> {
        let ca_path = dir.join(CA_FILE);
        let mut roots = RootCertStore::empty();
        for c in load_certs(&ca_path)? {
            roots.add(c).map_err(|e| TlsError::Invalid {
                path: ca_path.display().to_string(),
                what: format!("not a usable CA certificate ({e})"),
            })?;
        }
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Generate(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            dir: dir.to_path_buf(),
            client: Arc::new(client),
            server: None,
        })
    }

    /// Loads what a server needs from `dir`: `ca.pem`, `server.pem` and `server.key` (which
    /// must not be open to group or others).
    pub fn load_server(dir: &Path) -> Result<Tls, TlsError> {
        let mut tls = Tls::load_client(dir)?;
        let cert_path = dir.join(SERVER_CERT_FILE);
        let key_path = dir.join(SERVER_KEY_FILE);
        let certs = load_certs(&cert_path)?;
        let key = load_key(&key_path)?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Generate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Invalid {
                path: key_path.display().to_string(),
                what: format!("does not go with {} ({e})", cert_path.display()),
            })?;
        // No resumption: nothing would use it, and a ticket arriving unasked could look like
        // a frame on its way to a reader that polls the socket.
        let mut server = server;
        server.send_tls13_tickets = 0;
        tls.server = Some(Arc::new(server));
        Ok(tls)
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the CA certificate peers are verified against lives.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }

    /// The configuration for dialling a server.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The configuration for accepting connections (`None` when loaded for a client).
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.server.clone()
    }
}

static INSTALLED: OnceLock<Tls> = OnceLock::new();

/// Makes `tls` this process's TLS settings (module docs). Only the first call counts; false
/// when settings were installed already.
pub fn install(tls: Tls) -> bool {
    INSTALLED.set(tls).is_ok()
}

/// This process's TLS settings, if it runs with TLS.
pub fn installed() -> Option<&'static Tls> {
    INSTALLED.get()
}

/// Logs [`crate::logging::ev::TLS_OFF`] once when `server` listens on `addr` beyond loopback
/// without TLS.
pub fn warn_if_plain(server: &str, addr: std::net::SocketAddr) {
    if installed().is_none() && !addr.ip().is_loopback() {
        log::warn!(target: crate::logging::ev::TLS_OFF, server = server, addr = addr.to_string().as_str();
            "{server} listens on {addr} without TLS: every link is plain TCP; start it with --tls-dir DIR (made by bin_nm --init-tls DIR)");
    }
}

/// The name every certificate is verified against.
pub fn cluster_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(CLUSTER_NAME)
            .expect("the cluster name is a valid DNS name")
            .to_owned(),
    )
}

/// The message a peer that speaks plain TCP gets from a server that accepts only TLS.
pub fn plain_refused(server: &str) -> crate::protocol::WireError {
    crate::protocol::err::unavailable(format!(
        "TLS: this {server} accepts only TLS connections; start this program with --tls-dir DIR (DIR holding the cluster's ca.pem)"
    ))
}

/// Explains a failed TLS handshake with `peer` (`ca` is the CA file used to verify it).
pub fn describe_handshake(e: &std::io::Error, peer: &str, ca: &Path) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => format!(
            "TLS: the certificate of {peer} is not accepted ({c:?}): it is not one issued by the cluster CA in {}",
            ca.display()
        ),
        Some(rustls::Error::InvalidMessage(_)) => format!(
            "TLS: {peer} answered without TLS: it runs without --tls-dir (start it with --tls-dir, or drop --tls-dir here), or it refused this connection before TLS (at its connection limit)"
        ),
        Some(other) => format!("TLS: handshake with {peer} failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof
            || e.kind() == std::io::ErrorKind::ConnectionReset =>
        {
            format!("TLS: {peer} closed the connection during the TLS handshake (does it run with --tls-dir?)")
        }
        None => format!("TLS: handshake with {peer} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_output_loads_and_is_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("tls");
        init_dir(&dir, &["10.0.0.1".into(), "nm.example".into()]).unwrap();
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(SERVER_KEY_FILE), 0o600);
        assert_eq!(mode(CA_FILE), 0o644);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let t = Tls::load_server(&dir).unwrap();
        assert!(t.server_config().is_some());
        assert!(Tls::load_client(&dir).unwrap().server_config().is_none());
    }

    #[test]
    fn init_refuses_an_existing_ca() {
        let d = tempfile::tempdir().unwrap();
        init_dir(d.path(), &[]).unwrap();
        let before = std::fs::read(d.path().join(CA_FILE)).unwrap();
        let e = init_dir(d.path(), &[]).unwrap_err();
        assert!(matches!(e, TlsError::Exists { .. }), "{e}");
        assert!(e.to_string().contains("refusing to replace"), "{e}");
        assert_eq!(std::fs::read(d.path().join(CA_FILE)).unwrap(), before);
    }

    #[test]
    fn an_unprotected_key_and_a_missing_ca_are_named() {
        let d = tempfile::tempdir().unwrap();
        init_dir(d.path(), &[]).unwrap();
        let key = d.path().join(SERVER_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Tls::load_server(d.path()).unwrap_err();
        assert!(matches!(e, TlsError::Unprotected { .. }), "{e}");
        assert!(e.to_string().contains("server.key"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = Tls::load_client(empty.path()).unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
        std::fs::write(empty.path().join(CA_FILE), "junk").unwrap();
        let e = Tls::load_client(empty.path()).unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }
}
