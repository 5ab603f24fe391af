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
pub mod log;
pub mod master;
pub mod node_client;
pub mod proto;
