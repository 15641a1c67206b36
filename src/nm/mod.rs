//! The name server: namespace, users, access rights, placement, and (later) replication.

pub mod exec;
