//! pairfs: a small replicated file system.
//!
//! A name server (`nm`) owns the namespace, users, access rights and placement; storage servers
//! (`ss`) hold file content durably; a client (`client`) speaks to both. See ARCHITECTURE.md
//! for the bird's-eye view and the invariants.

#![deny(missing_docs)]

pub mod addr;
pub mod auth;
pub mod client;
pub mod delta;
pub mod durable;
pub mod http;
pub mod identity;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod nm;
pub mod protocol;
pub mod sim;
pub mod ss;
pub mod tls;
