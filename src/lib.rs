//! AetherStore: a distributed, S3-style object store. Datanodes keep immutable objects
//! durably on local disk; a master keeps metadata (nodes, objects, replicas) in SQLite.
//! See ARCHITECTURE.md for the map of this crate.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod datanode;
pub mod dev;
pub mod http;
pub mod locations;
pub mod lock;
pub mod log;
pub mod master;
pub mod node_client;
pub mod proto;

/// What this binary is: the package version and the git commit it was built from, e.g.
/// `0.1.0 (27a3cbf1e2)`; `unknown` for a build outside a git checkout.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("AETHER_GIT_COMMIT"), ")");
