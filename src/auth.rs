//! The cluster key and the tickets signed with it.
//!
//! The key is 32 random bytes kept hex-encoded in a file. With no `--cluster-key-file`, every
//! server uses the per-user default `$HOME/.pairfs/cluster.key` (like Erlang's cookie): the
//! first server that finds none creates it with mode 0600, atomically, so servers started at the
//! same moment agree on one key. A cluster spread over several hosts copies that one file.
//!
//! A key file that group or others may read or write is refused at startup
//! ([`KeyFileError::Unprotected`]), with the `chmod` that fixes it.

use crate::protocol::{err, KeyProof, Ticket, TicketOp, Version, WireError};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// How long a ticket minted by the name server stays valid.
pub const TICKET_TTL_MS: u64 = 30_000;
/// Accepted clock difference for a registration proof.
pub const PROOF_SKEW_MS: u64 = 5 * 60 * 1000;
/// The user name tickets carry when the name server itself acts.
pub const NM_USER: &str = "@nm";

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `n` random bytes, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // getrandom only fails when the OS has no entropy source at all.
    if getrandom::fill(&mut b).is_err() {
        let t = now_ms().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % 8] ^ (i as u8);
        }
    }
    hex::encode(b)
}

/// The `file` a CHECK_FILES ticket carries: a digest of the request's names and flag, so a
/// ticket minted for one page cannot authorise a check of another list.
pub fn check_scope(files: &[String], orphans: bool) -> String {
    use sha2::Digest;
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_bytes());
        h.update(b"\n");
    }
    h.update(if orphans { "orphans" } else { "files" });
    format!("@check:{}", hex::encode(&h.finalize()[..16]))
}

/// The default key file: `$HOME/.pairfs/cluster.key`.
pub fn default_key_path() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".pairfs").join("cluster.key")
}

/// Why a cluster key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Group or others may read or write the file.
    #[error(
        "cluster key file {path} has mode {mode:04o}: it must not be accessible by group or \
         others; run: chmod 600 {path}"
    )]
    Unprotected {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a usable key.
    #[error("cluster key file {path} {what}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// Reading or creating the file failed.
    #[error("cluster key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// What a ticket authorises: `op` on `file` at storage server `ss` for `user`, from
/// `min_version` on, in the pair's `epoch` (a change's ticket) or any (`None`).
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// Who acts.
    pub user: &'a str,
    /// The file (or a CHECK_FILES scope).
    pub file: &'a str,
    /// The operation.
    pub op: TicketOp,
    /// The storage server the ticket is for.
    pub ss: &'a str,
    /// The oldest version the server may serve.
    pub min_version: Option<Version>,
    /// The pair's epoch a change is bound to.
    pub epoch: Option<u64>,
}

/// The shared secret of a cluster.
#[derive(Clone)]
pub struct ClusterKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A key from raw bytes (tests).
    pub fn from_bytes(key: &[u8]) -> ClusterKey {
        ClusterKey { key: key.to_vec() }
    }

    /// Reads the key at `path`, creating it (mode 0600, atomically; a missing directory is
    /// created 0700) if it does not exist. A key file that group or others may read or write is
    /// refused, like ssh refuses an unprotected private key: whoever holds the key can mint
    /// tickets for every file of the cluster.
    pub fn load_or_create(path: &Path) -> Result<ClusterKey, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        match Self::read(path) {
            Ok(k) => return Ok(k),
            Err(KeyFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Another server may create it at the same moment; everyone reads the one linked.
        let text = format!("{}\n", random_hex(32));
        crate::durable::create_secret_once(path, text.as_bytes()).map_err(io)?;
        Self::read(path)
    }

    fn read(path: &Path) -> Result<ClusterKey, KeyFileError> {
        let shown = || path.display().to_string();
        let io = |source| KeyFileError::Io {
            path: shown(),
            source,
        };
        let text = crate::durable::read_secret(path, 4096).map_err(|e| match e {
            crate::durable::SecretError::Unprotected(mode) => KeyFileError::Unprotected {
                path: shown(),
                mode,
            },
            crate::durable::SecretError::Io(e) => io(e),
        })?;
        let invalid = |what: &str| KeyFileError::Invalid {
            path: shown(),
            what: what.to_string(),
        };
        let key = hex::decode(text.trim()).map_err(|_| invalid("is not a hex cluster key"))?;
        if key.len() < 16 {
            return Err(invalid("holds a cluster key shorter than 16 bytes"));
        }
        Ok(ClusterKey { key })
    }

    /// Hex HMAC-SHA256 of `data`.
    pub fn mac_hex(&self, data: &[u8]) -> String {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        m.update(data);
        hex::encode(m.finalize().into_bytes())
    }

    /// Constant-time check of a hex MAC over `data`.
    pub fn verify_hex(&self, data: &[u8], mac_hex: &str) -> bool {
        let Ok(mac) = hex::decode(mac_hex) else {
            return false;
        };
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        m.update(data);
        m.verify_slice(&mac).is_ok()
    }

    /// Mints a single-use ticket valid for [`TICKET_TTL_MS`] (from the wall clock, with a
    /// nonce from the OS).
    pub fn mint(
        &self,
        user: &str,
        file: &str,
        op: TicketOp,
        ss: &str,
        min_version: Option<Version>,
    ) -> Ticket {
        let grant = Grant {
            user,
            file,
            op,
            ss,
            min_version,
            epoch: None,
        };
        self.mint_at(&grant, now_ms(), random_hex(16))
    }

    /// Mints `grant` as a ticket valid for [`TICKET_TTL_MS`] after `wall_ms` (Unix ms: the
    /// storage server checks the expiry on its own clock), carrying `nonce`. The caller
    /// supplies both, so a caller that owns its clock and randomness mints reproducibly.
    pub fn mint_at(&self, grant: &Grant<'_>, wall_ms: u64, nonce: String) -> Ticket {
        let mut t = Ticket {
            user: grant.user.to_string(),
            file: grant.file.to_string(),
            op: grant.op,
            ss: grant.ss.to_string(),
            exp_ms: wall_ms + TICKET_TTL_MS,
            nonce,
            min_version: grant.min_version,
            epoch: grant.epoch,
            mac: String::new(),
        };
        t.mac = self.mac_hex(t.signing_string().as_bytes());
        t
    }

    /// A registration proof for `claim`: the MAC covers everything the registration asserts,
    /// so a captured proof cannot register the name at another address or in another role.
    pub fn proof(&self, claim: &RegisterClaim<'_>) -> KeyProof {
        let ts_ms = now_ms();
        let nonce = random_hex(16);
        let mac = self.mac_hex(claim.signing_string(ts_ms, &nonce).as_bytes());
        KeyProof { ts_ms, nonce, mac }
    }

    /// Checks a registration proof's MAC and age (replay is the caller's [`NonceMemory`]).
    pub fn check_proof(&self, claim: &RegisterClaim<'_>, p: &KeyProof) -> Result<(), WireError> {
        if now_ms().abs_diff(p.ts_ms) > PROOF_SKEW_MS {
            return Err(err::unauthorized(
                "registration proof too old or from the future",
            ));
        }
        if !self.verify_hex(claim.signing_string(p.ts_ms, &p.nonce).as_bytes(), &p.mac) {
            return Err(err::unauthorized("server does not hold this cluster's key"));
        }
        Ok(())
    }
}

/// What a storage server asserts when it registers; the registration proof signs all of it.
#[derive(Debug, Clone, Copy)]
pub struct RegisterClaim<'a> {
    /// Server name.
    pub name: &'a str,
    /// Host clients connect to.
    pub host: &'a str,
    /// Port clients connect to.
    pub client_port: u16,
    /// The primary it backs up, if any.
    pub backup_of: Option<&'a str>,
}

impl RegisterClaim<'_> {
    fn signing_string(&self, ts_ms: u64, nonce: &str) -> String {
        format!(
            "register\n{}\n{}\n{}\n{}\n{ts_ms}\n{nonce}",
            self.name,
            self.host,
            self.client_port,
            self.backup_of.unwrap_or("-")
        )
    }
}

/// Nonces seen recently, each kept until its expiry: the memory that makes tickets and
/// registration proofs single-use. Bounded: expired nonces are pruned as the set grows, and a
/// flood beyond `max_live` live nonces is refused with LIMIT rather than remembered.
pub struct NonceMemory {
    seen: Mutex<HashMap<String, u64>>,
    max_live: usize,
}

impl NonceMemory {
    /// A memory holding at most `max_live` unexpired nonces.
    pub fn new(max_live: usize) -> NonceMemory {
        NonceMemory {
            seen: Mutex::new(HashMap::new()),
            max_live,
        }
    }

    /// Records `nonce` (valid until `exp_ms`) the first time; refuses it after that.
    pub fn use_once(&self, nonce: &str, exp_ms: u64, what: &str) -> Result<(), WireError> {
        self.use_once_at(nonce, exp_ms, what, now_ms())
    }

    /// [`NonceMemory::use_once`] with the wall clock reading `now` (Unix ms).
    pub fn use_once_at(
        &self,
        nonce: &str,
        exp_ms: u64,
        what: &str,
        now: u64,
    ) -> Result<(), WireError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= self.max_live / 2 {
            seen.retain(|_, exp| *exp >= now);
        }
        if seen.len() >= self.max_live {
            return Err(err::limit(format!("too many live {what}s")));
        }
        if seen.insert(nonce.to_string(), exp_ms).is_some() {
            return Err(err::unauthorized(format!("{what} already used (replay)")));
        }
        Ok(())
    }
}

/// The storage server's ticket checker: verifies MAC, expiry, server, file and op, and refuses
/// a nonce seen before (until the ticket would have expired anyway). Bounded: nonces are pruned
/// as they expire, and a flood beyond `max_live` live nonces is refused with LIMIT.
pub struct TicketChecker {
    key: ClusterKey,
    ss: String,
    nonces: NonceMemory,
}

impl TicketChecker {
    /// A checker for server `ss`.
    pub fn new(key: ClusterKey, ss: &str) -> TicketChecker {
        TicketChecker {
            key,
            ss: ss.to_string(),
            nonces: NonceMemory::new(1_000_000),
        }
    }

    /// The cluster key (a writer mints the tickets it stages uploads on its partner with).
    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// Accepts the ticket once for `file` and `op`, or says why not.
    pub fn check(&self, t: &Ticket, file: &str, op: TicketOp) -> Result<(), WireError> {
        self.check_at(t, file, op, now_ms())
    }

    /// [`TicketChecker::check`] with this server's wall clock reading `now` (Unix ms).
    pub fn check_at(
        &self,
        t: &Ticket,
        file: &str,
        op: TicketOp,
        now: u64,
    ) -> Result<(), WireError> {
        if !self.key.verify_hex(t.signing_string().as_bytes(), &t.mac) {
            return Err(err::unauthorized("invalid ticket signature"));
        }
        if t.exp_ms < now {
            return Err(err::unauthorized("ticket expired"));
        }
        if t.ss != self.ss {
            return Err(err::unauthorized("ticket is for another storage server"));
        }
        if t.file != file || t.op != op {
            return Err(err::unauthorized("ticket does not cover this request"));
        }
        self.nonces.use_once_at(&t.nonce, t.exp_ms, "ticket", now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ticket_is_single_use_and_bound() {
        let k = ClusterKey::from_bytes(b"0123456789abcdef0123");
        let c = TicketChecker::new(k.clone(), "ss1");
        let t = k.mint("alice", "a.txt", TicketOp::Read, "ss1", None);
        assert!(c.check(&t, "b.txt", TicketOp::Read).is_err());
        assert!(c.check(&t, "a.txt", TicketOp::Write).is_err());
        assert!(c.check(&t, "a.txt", TicketOp::Read).is_ok());
        assert!(c.check(&t, "a.txt", TicketOp::Read).is_err(), "replay");
        let mut forged = k.mint("alice", "a.txt", TicketOp::Read, "ss1", None);
        forged.user = "mallory".into();
        assert!(c.check(&forged, "a.txt", TicketOp::Read).is_err());
        let other = ClusterKey::from_bytes(b"another key 0123456789");
        let t2 = other.mint("alice", "a.txt", TicketOp::Read, "ss1", None);
        assert!(c.check(&t2, "a.txt", TicketOp::Read).is_err());
    }

    #[test]
    fn check_scope_binds_the_list() {
        let a = vec!["a.txt".to_string(), "b.txt".to_string()];
        let b = vec!["a.txt".to_string()];
        assert_ne!(check_scope(&a, false), check_scope(&b, false));
        assert_ne!(check_scope(&a, false), check_scope(&a, true));
        assert_eq!(check_scope(&a, true), check_scope(&a.clone(), true));
    }

    #[test]
    fn key_file_created_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let a = ClusterKey::load_or_create(&p).unwrap();
        let b = ClusterKey::load_or_create(&p).unwrap();
        assert_eq!(a.key, b.key);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn missing_key_directory_is_created_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("home/.pairfs/cluster.key");
        ClusterKey::load_or_create(&p).unwrap();
        for (path, want) in [(p.parent().unwrap(), 0o700), (p.as_path(), 0o600)] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "{}", path.display());
        }
    }

    #[test]
    fn key_file_open_to_group_or_others_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        ClusterKey::load_or_create(&p).unwrap();
        for mode in [0o644, 0o666, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = ClusterKey::load_or_create(&p).unwrap_err();
            assert!(
                matches!(e, KeyFileError::Unprotected { .. }),
                "{mode:o}: {e}"
            );
            let shown = p.display();
            assert_eq!(
                e.to_string(),
                format!(
                    "cluster key file {shown} has mode {mode:04o}: it must not be accessible by \
                     group or others; run: chmod 600 {shown}"
                )
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            ClusterKey::load_or_create(&p).unwrap();
        }
    }
}
