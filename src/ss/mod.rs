//! The storage server: durable file content, sentence editing, and its link to the name server.

pub mod document;
pub mod store;
pub mod sessions;
pub mod nmlink;
