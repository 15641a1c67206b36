//! A deterministic simulation of a whole cluster on the real code (see `pairfs_sim`).

pub mod disk;
