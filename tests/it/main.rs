//! End-to-end tests through the real binaries: one test binary (one link) whose modules each
//! cover one area of the behaviour contract (SPEC.md). `harness.rs` starts the processes.

mod harness;
