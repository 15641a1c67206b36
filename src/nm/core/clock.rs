//! The two clocks and the randomness the core decides with, all given to it.
//!
//! **Monotonic time** (`now_ms` on [`super::Core::tick`] and every `on_*`: milliseconds since
//! this process started, [`mono_ms`]) times everything that must not move when someone sets
//! the machine's clock: write leases, heartbeat timeouts, a failover's or handback's switch,
//! sync-mode waits, replication back-off, the introduction deadline. Storage servers count
//! their leases on their own monotonic clock, so a jump of the name server's wall clock can
//! never promote a backup while the old writer still holds its lease.
//!
//! A restart starts the count again: every lease granted by an earlier run is treated as
//! running until one lease length after boot (`CoreConfig::started_ms` + lease), and the
//! times stored in the state as monotonic (a pair's `switch_at_ms`, a replication job's
//! `next_ms`) are re-derived from the boot when the state is loaded.
//!
//! **Wall-clock time** ([`Env::wall_ms`], Unix milliseconds) is only recorded and shown:
//! files' created/accessed times, folders' and access requests' times, how long a
//! replication job has been owed (STATUS's lag, stored with the job), STATUS's last
//! heartbeat times, and tickets' expiry, which a storage server checks on its own wall clock.
//!
//! **Randomness** ([`Entropy`]): challenge and ticket nonces come from a generator seeded
//! once (from the OS at startup, from a fixed seed in simulations), so a simulated run is
//! reproducible from its seed alone.
//!
//! **Tickets** the core grants are minted in one place, [`Env::mint`], on this wall clock
//! and randomness; so is the fresh ticket of an SS_MOVE a worker repeats after its answer
//! was lost: the workers are handed the core's `Env` ([`super::Core::env`]).

use crate::auth::{ClusterKey, Grant};
use crate::protocol::Ticket;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since this process first asked (the name server asks at startup): the
/// monotonic time the event loop hands the core.
pub fn mono_ms() -> u64 {
    static BOOT: OnceLock<Instant> = OnceLock::new();
    BOOT.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A stream of random bytes: HMAC-SHA256 of a counter under a 32-byte seed, so nonces are
/// unpredictable without the seed and never repeat within one run (the counter is shared by
/// every thread drawing from it).
pub struct Entropy {
    seed: [u8; 32],
    counter: AtomicU64,
}

impl Entropy {
    /// Seeded from the operating system.
    pub fn from_os() -> Entropy {
        let mut seed = [0u8; 32];
        let hex = crate::auth::random_hex(32);
        if let Ok(b) = hex::decode(hex) {
            seed.copy_from_slice(&b);
        }
        Entropy::from_bytes(seed)
    }

    /// Seeded from `seed` alone (simulations and tests: the same seed, the same nonces).
    pub fn from_seed(seed: u64) -> Entropy {
        Entropy::from_bytes(Sha256::digest(seed.to_le_bytes()).into())
    }

    fn from_bytes(seed: [u8; 32]) -> Entropy {
        Entropy {
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// `n` fresh random bytes, hex-encoded.
    pub fn hex(&self, n: usize) -> String {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let i = self.counter.fetch_add(1, Ordering::Relaxed);
            let mut m =
                Hmac::<Sha256>::new_from_slice(&self.seed).expect("HMAC accepts any key length");
            m.update(&i.to_le_bytes());
            out.extend_from_slice(&m.finalize().into_bytes());
        }
        out.truncate(n);
        hex::encode(out)
    }
}

/// The wall clock as a function of the monotonic time the core was last given.
pub type WallClock = Box<dyn Fn(u64) -> u64 + Send + Sync>;

/// What the core takes from outside besides events: the wall clock and randomness.
pub struct Env {
    wall: WallClock,
    entropy: Entropy,
}

impl Env {
    /// The machine's wall clock and randomness seeded from the OS (the name server).
    pub fn system() -> Env {
        Env::new(Box::new(|_| crate::auth::now_ms()), Entropy::from_os())
    }

    /// A given wall clock (a function of the monotonic time) and randomness.
    pub fn new(wall: WallClock, entropy: Entropy) -> Env {
        Env { wall, entropy }
    }

    /// A wall clock that reads `base + monotonic time`, randomness from `seed`: a run
    /// reproducible from its seed.
    pub fn seeded(base_wall_ms: u64, seed: u64) -> Env {
        Env::new(
            Box::new(move |mono| base_wall_ms + mono),
            Entropy::from_seed(seed),
        )
    }

    /// Unix ms at monotonic time `mono_ms`.
    pub fn wall_ms(&self, mono_ms: u64) -> u64 {
        (self.wall)(mono_ms)
    }

    /// `n` random bytes, hex-encoded.
    pub fn random_hex(&self, n: usize) -> String {
        self.entropy.hex(n)
    }

    /// `grant` as a ticket under `key`, valid from the wall time at monotonic time `mono_ms`
    /// and carrying a fresh nonce: how the core and a worker repeating its call mint.
    pub fn mint(&self, key: &ClusterKey, grant: &Grant<'_>, mono_ms: u64) -> Ticket {
        key.mint_at(grant, self.wall_ms(mono_ms), self.random_hex(16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_nonces_and_nonces_do_not_repeat() {
        let a = Entropy::from_seed(7);
        let b = Entropy::from_seed(7);
        let xs: Vec<String> = (0..4).map(|_| a.hex(16)).collect();
        let ys: Vec<String> = (0..4).map(|_| b.hex(16)).collect();
        assert_eq!(xs, ys);
        assert_eq!(xs[0].len(), 32);
        let mut uniq = xs.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), xs.len());
        assert_ne!(Entropy::from_seed(8).hex(16), xs[0]);
        assert_eq!(a.hex(40).len(), 80);
    }
}
