//! End-to-end tests through the real binaries: one test binary (one link) whose modules each
//! cover one area of the behaviour contract (SPEC.md). `harness.rs` starts the processes.

// Tests fail loudly by design: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

mod harness;
mod netns;

mod access_times;
mod auth;
mod checkpoints;
mod cluster_script;
mod commands;
mod crash;
mod delta;
mod docs_replication;
mod exec_sandbox;
mod failover;
mod folders;
mod fsck;
mod hosts;
mod identity;
mod metrics;
mod migration;
mod multihost;
mod overload;
mod replication;
mod requests;
mod ride_through;
mod robustness;
mod staging;
mod status_page;
mod terminal;
mod tls;
mod write;
