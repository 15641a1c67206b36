//! A deterministic simulation of a whole cluster on the real code, power loss included
//! (`pairfs_sim`, in the manner of TigerBeetle's VOPR and FoundationDB's simulation): one
//! seed drives one generator, one thread steps simulated time, and the same seed replays
//! the same run (the trace's digest says so).
//!
//! # What is real and what is simulated
//!
//! Real code: the name server's [`crate::nm::core::Core`] (the state machine `bin_nm` runs,
//! driven only through its public entry points, with a simulated monotonic clock, a
//! simulated wall clock and seeded [`crate::nm::core::Entropy`] in its `Env`); the storage
//! server's [`crate::ss::store::Store`] (create, the change protocol of a commit, delete,
//! undo, quarantine, folders, the startup scan, and replication installs through
//! `open_transfer` on the source and `install_copies` on the target; its journal, with the
//! redo at open and a checkpoint every 250 simulated ms as `bin_ss`'s thread runs it) over
//! [`disk::SimDisk`];
//! the write lease [`crate::ss::nmlink::Lease`] on a simulated clock and its admission rule
//! [`crate::ss::nmlink::write_allowed`]; the ticket checks
//! ([`crate::auth::TicketChecker::check_at`], on the server's simulated wall clock); the
//! registration proof; FSCK's verdict [`crate::nm::core::judge_copy`].
//!
//! Adapters (simulated, written here): the storage server's connection handlers and its
//! name-server link are replaced by `world.rs` calling the same store, lease and ticket
//! functions in the same order (REGISTERED and HEARTBEAT_ACK applied as `nmlink` applies
//! them; a commit checks ticket, lease and freshness, then `write_content_over`, then
//! CHANGED, marked `pending` when the change went through the journal: the real commit sends
//! it once its journal entry is written, before the flush and the renames, but holds the
//! file's lock until they are made and answers its client only after both, so no other step
//! can see the difference, except a flush that fails: the report has reached the name
//! server, and the server exits with its journal failed, after a power loss half the time,
//! so its registration finds the change made or not and the record must follow);
//! the name server's event loop and worker pool by the world applying the core's effects
//! (a store batch is applied to an in-memory [`crate::nm::core::Loaded`], the copy of what
//! `nm::store` persists, and replies are released only after their batch commits);
//! replication's PEEK/PUT wire exchange by direct calls into both stores; clients by a
//! workload of CREATE, WRITE (LOCATE, commit, CHANGED_ACK), READ, DELETE and UNDO. Clients
//! reach the name server without network faults. MOVE, checkpoints, staging and the sync
//! replication mode are not exercised.
//!
//! # Fault model
//!
//! Each fault may hit the name server or either storage server: **crash** (the process dies
//! and restarts later; its disk keeps everything, the page cache survives), **power loss**
//! (the same, and the disk drops every write and directory entry not fsynced, see
//! [`disk`]; the name server loses the batches not committed), **partition** (a storage
//! server is cut off from everyone until healed; at the heal its connection is found broken),
//! **message** (a message lost: on TCP the connection breaks, both ends see it closed),
//! **clock jump** (a process's wall clock jumps up to an hour either way), and **sync
//! error** (a storage server's next one or two syncs fail with EIO; a retried sync of a file
//! whose sync failed then answers Ok without making it durable, as Linux may, see [`disk`]; a
//! server whose journal checkpoint fails exits, as `bin_ss` does, and restarts later). A plain
//! worker job (SS_CREATE, a copy) may run before the batch it was produced with commits, as
//! `bin_nm` dispatches it at once; replies and intent-first jobs wait for it. Messages are
//! delayed 1-20 ms, in order on one connection and reordered between connections; each
//! process's monotonic clock runs at a rate within 2% of true time.
//!
//! # Invariants
//!
//! Checked at every step: never two storage servers holding a live write lease at one
//! simulated instant; no stale read (a READ served a version older than the latest
//! acknowledged before the read began); no silent fork (one file's version served with two
//! checksums). After the run everything is healed (all processes up, partitions healed,
//! queue drained), then every copy is judged by FSCK's `judge_copy` against the committed
//! index and must be ok, and every acknowledged change must be held by a copy (as its
//! version or in its history) with the index at or past it.

pub mod disk;
pub mod world;

pub use world::{Config, Failure, Report, World, FAULT_KINDS};

/// SplitMix64: the one generator every choice of a run comes from.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Runs one seed.
pub fn run(cfg: Config) -> std::io::Result<Report> {
    Ok(World::new(cfg)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64, steps: u64, plant: bool) -> Config {
        Config {
            seed,
            steps,
            plant_skip_dir_fsync: plant,
            verbose: false,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_digest() {
        let a = run(cfg(4, 600, false)).unwrap();
        let b = run(cfg(4, 600, false)).unwrap();
        let c = run(cfg(5, 600, false)).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.faults, b.faults);
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn skipping_the_directory_fsync_after_a_rename_is_caught_under_power_loss() {
        let seeds = 4..25;
        for seed in seeds.clone() {
            let r = run(cfg(seed, 1500, false)).unwrap();
            assert!(r.failure.is_none(), "seed {seed}: {:?}", r.failure);
        }
        let caught: Vec<u64> = seeds
            .filter(|s| run(cfg(*s, 1500, true)).unwrap().failure.is_some())
            .collect();
        assert!(!caught.is_empty(), "the planted bug went unnoticed");
    }
}
