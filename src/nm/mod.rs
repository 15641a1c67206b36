//! The name server: namespace, users, access rights, placement, and (later) replication.
