//! User identity: each user name is bound, on first use, to a key, and every later session of
//! that name must prove it holds the key.
//!
//! * **The key.** An ed25519 signing key, kept as its 32-byte seed, hex-encoded, in
//!   `$XDG_CONFIG_HOME/pairfs/users/<user>.key` (else `$HOME/.config/pairfs/users/<user>.key`;
//!   the client's `--user-key-file` overrides). The client creates it the first time a name is
//!   used from an OS account: directories 0700, file 0600, written to a temp file and
//!   hard-linked into place, so two clients starting at once for the same new name end up with
//!   the one key that won the link. A key file that others may read is refused, as ssh does.
//! * **The handshake.** `HELLO {user}` is answered by `CHALLENGE {nonce}` (32 random bytes);
//!   the client answers `PROVE {key, sig}`: its public key and an ed25519 signature over
//!   [`signed_bytes`] (a context string, the user name and the nonce), then the name server
//!   answers `WELCOME` or `ERR [UNAUTHORIZED]` and closes. The secret never leaves the client.
//! * **Trust on first use.** A name with no key recorded (new, or recorded by a release that
//!   kept none) is bound to the key of the first session that proves it, durably before the
//!   WELCOME is sent; from then on only that key is accepted. The name server stores only
//!   public keys, which is why ed25519 is used rather than an HMAC: a copy of the name server's
//!   database lets nobody act as a user.
//! * **Reset.** `bin_nm --reset-user NAME --data DIR` forgets the name's key; the next session
//!   binds a new one. On a stopped name server it changes the store directly; while a name
//!   server holds the store (redb's lock says so) it sends RESET_USER, proved with the
//!   cluster key, to the name server at `--host`/`--port`.
//!
//! What this does not protect against: anyone who can read a user's key file (the OS account
//! itself, root) can act as that user; traffic is not encrypted.

use crate::auth::ClusterKey;
use crate::protocol::{err, Connection, KeyProof, Message, WireError};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::path::{Path, PathBuf};

/// Bytes in a challenge nonce.
pub const NONCE_BYTES: usize = 32;

/// What a proof signs, so a signature made for a pairfs login cannot be replayed as anything
/// else, nor for another user or another challenge.
pub fn signed_bytes(user: &str, nonce: &str) -> Vec<u8> {
    format!("pairfs-user-proof-v1\n{user}\n{nonce}").into_bytes()
}

/// The default key file of `user`: `$XDG_CONFIG_HOME/pairfs/users/<user>.key`, else
/// `$HOME/.config/pairfs/users/<user>.key` (user names hold no `/`, see
/// `names::validate_user`).
pub fn default_key_path(user: &str) -> PathBuf {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        // The XDG spec ignores a relative value.
        Some(x) if Path::new(&x).is_absolute() => PathBuf::from(x),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".config")
        }
    };
    base.join("pairfs")
        .join("users")
        .join(format!("{user}.key"))
}

/// A user's secret key.
pub struct UserKey {
    key: SigningKey,
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserKey({})", self.public_hex())
    }
}

impl UserKey {
    /// A key from a 32-byte seed (tests).
    pub fn from_seed(seed: [u8; 32]) -> UserKey {
        UserKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Reads the key at `path`, creating it first if there is none (directories 0700, file
    /// 0600, atomically: concurrent creators all end up reading the one that was linked).
    pub fn load_or_create(path: &Path) -> Result<UserKey, WireError> {
        match Self::read(path) {
            Ok(k) => return Ok(k),
            Err(ReadError::Missing) => {}
            Err(ReadError::Bad(e)) => return Err(e),
        }
        let fail = |what: &str, e: std::io::Error| {
            err::internal(format!(
                "cannot {what} user key file {}: {e}",
                path.display()
            ))
        };
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| err::internal(format!("no randomness for a user key: {e}")))?;
        // Another client may create it at the same moment; everyone reads the one linked.
        let text = format!("{}\n", hex::encode(seed));
        crate::durable::create_secret_once(path, text.as_bytes()).map_err(|e| fail("create", e))?;
        Self::read(path).map_err(|e| match e {
            ReadError::Missing => fail("read", std::io::ErrorKind::NotFound.into()),
            ReadError::Bad(e) => e,
        })
    }

    fn read(path: &Path) -> Result<UserKey, ReadError> {
        let bad = |why: String| ReadError::Bad(err::invalid(format!("{}: {why}", path.display())));
        let text = match crate::durable::read_secret(path, 1024) {
            Ok(text) => text,
            Err(crate::durable::SecretError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReadError::Missing)
            }
            Err(crate::durable::SecretError::Io(e)) => {
                return Err(ReadError::Bad(err::internal(format!(
                    "cannot read user key file {}: {e}",
                    path.display()
                ))))
            }
            Err(crate::durable::SecretError::Unprotected(mode)) => {
                return Err(bad(format!(
                    "user key file is accessible by others (mode {mode:04o}); run chmod 600 on it"
                )))
            }
        };
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("not a pairfs user key (64 hex digits)".into()))?;
        Ok(UserKey::from_seed(seed))
    }

    /// The public key, hex-encoded (what the name server records).
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The hex signature proving this key for `user` against the challenge `nonce`.
    pub fn prove(&self, user: &str, nonce: &str) -> String {
        hex::encode(self.key.sign(&signed_bytes(user, nonce)).to_bytes())
    }
}

enum ReadError {
    Missing,
    Bad(WireError),
}

/// Whether `public_hex` is a well-formed ed25519 public key.
pub fn valid_public(public_hex: &str) -> bool {
    parse_public(public_hex).is_some()
}

fn parse_public(public_hex: &str) -> Option<VerifyingKey> {
    let b: [u8; 32] = hex::decode(public_hex).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&b).ok()
}

/// Checks a PROVE: `sig_hex` is `public_hex`'s signature of [`signed_bytes`]`(user, nonce)`.
pub fn verify(public_hex: &str, user: &str, nonce: &str, sig_hex: &str) -> bool {
    let Some(key) = parse_public(public_hex) else {
        return false;
    };
    let Some(sig) = hex::decode(sig_hex)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    key.verify(&signed_bytes(user, nonce), &Signature::from_bytes(&sig))
        .is_ok()
}

/// What the cluster-key MAC of a RESET_USER covers.
pub fn reset_signing_string(user: &str, ts_ms: u64, nonce: &str) -> String {
    format!("reset-user\n{user}\n{ts_ms}\n{nonce}")
}

/// A RESET_USER proof for `user`, made with the cluster key.
pub fn reset_proof(key: &ClusterKey, user: &str) -> KeyProof {
    let ts_ms = crate::auth::now_ms();
    let nonce = crate::auth::random_hex(16);
    let mac = key.mac_hex(reset_signing_string(user, ts_ms, &nonce).as_bytes());
    KeyProof { ts_ms, nonce, mac }
}

/// Checks a RESET_USER proof's MAC and age (replay is the caller's `NonceMemory`).
pub fn check_reset_proof(key: &ClusterKey, user: &str, p: &KeyProof) -> Result<(), WireError> {
    if crate::auth::now_ms().abs_diff(p.ts_ms) > crate::auth::PROOF_SKEW_MS {
        return Err(err::unauthorized("reset proof too old or from the future"));
    }
    if !key.verify_hex(
        reset_signing_string(user, p.ts_ms, &p.nonce).as_bytes(),
        &p.mac,
    ) {
        return Err(err::unauthorized(
            "resetting a user needs this cluster's key",
        ));
    }
    Ok(())
}

/// Asks the name server at `addr` to forget `user`'s key, proving `key`.
pub fn reset_online(addr: &str, key: &ClusterKey, user: &str) -> Result<(), WireError> {
    let timeout = std::time::Duration::from_secs(10);
    let mut c = Connection::connect(addr, timeout).map_err(|e| {
        err::unavailable(format!("cannot connect to the name server at {addr} ({e})"))
    })?;
    c.set_timeout(Some(timeout))
        .map_err(|e| err::unavailable(e.to_string()))?;
    let msg = Message::ResetUser {
        user: user.into(),
        proof: reset_proof(key, user),
    };
    c.call(&msg, b"").map(|_| ())
}

/// The refusal a session gets when `user` is bound to another key.
pub fn other_key(user: &str) -> WireError {
    err::unauthorized(format!(
        "{user} is registered with another key (reset it with bin_nm --reset-user {user})"
    ))
}

/// Says HELLO as `user` on `conn` and proves `key`: HELLO, CHALLENGE, PROVE, WELCOME; returns
/// the lease length WELCOME announces (what a client waits out in a failover). Any refusal
/// comes back as the name server's error; a broken connection as UNAVAILABLE.
pub fn handshake(
    conn: &mut Connection,
    user: &str,
    key: &UserKey,
) -> Result<Option<u64>, WireError> {
    let hello = Message::Hello { user: user.into() };
    let nonce = match conn.call(&hello, b"")?.msg {
        Message::Challenge { nonce } => nonce,
        other => {
            return Err(err::internal(format!(
                "unexpected reply {} to HELLO",
                other.op_name()
            )))
        }
    };
    let prove = Message::Prove {
        key: key.public_hex(),
        sig: key.prove(user, &nonce),
    };
    match conn.call(&prove, b"")?.msg {
        Message::Welcome { lease_ms, .. } => Ok(lease_ms),
        other => Err(err::internal(format!(
            "unexpected reply {} to PROVE",
            other.op_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn proofs_bind_key_user_and_nonce() {
        let k = UserKey::from_seed([1; 32]);
        let other = UserKey::from_seed([2; 32]);
        let sig = k.prove("alice", "n1");
        assert!(verify(&k.public_hex(), "alice", "n1", &sig));
        assert!(!verify(&k.public_hex(), "bob", "n1", &sig));
        assert!(!verify(&k.public_hex(), "alice", "n2", &sig));
        assert!(!verify(&other.public_hex(), "alice", "n1", &sig));
        assert!(!verify("zz", "alice", "n1", &sig));
        assert!(!verify(&k.public_hex(), "alice", "n1", "00"));
        assert!(valid_public(&k.public_hex()));
    }

    #[test]
    fn key_files_are_private_and_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/pairfs/users/alice.key");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || UserKey::load_or_create(&p).unwrap().public_hex())
            })
            .collect();
        let keys: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = UserKey::load_or_create(&path).unwrap_err();
        assert!(e.msg.contains("chmod 600"), "{}", e.msg);
    }
}
