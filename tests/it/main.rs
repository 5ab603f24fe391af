//! The integration tests: one binary, each module a feature seen from outside (HTTP and
//! the CLI) against real `aether` processes on loopback ports.

mod api;
mod bench;
mod cli;
mod cluster;
mod disk;
mod durability;
mod healing;
mod hostile;
mod metrics;
mod newcomer;
mod operations;
mod ops;
mod s3;
mod s3clients;
mod security;
mod tidy;
mod ui;
mod uploads;
mod volume;
