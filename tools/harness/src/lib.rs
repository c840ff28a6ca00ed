//! The process-level machinery shared by tower-valkey-cache's integration tests
//! (`tests/it/support`) and its tools (`tools/bench`): things that start, stop and poke at
//! processes and sockets, and need none of the crate's types.
//!
//! - [`ValkeyServer`]: a throw-away `valkey-server` on a free loopback port (start, stop,
//!   restart, pause, resume; raw commands; `KEYS`), killed when dropped;
//! - [`ValkeyCluster`]: a local Valkey Cluster joined with `valkey-cli --cluster create`, and
//!   [`ValkeyCluster::shared`], one 3 + 3 cluster per process cleaned up by a watchdog;
//! - [`free_port`];
//! - [`DelayProxy`]: a TCP proxy that delays what a server sends;
//! - [`memory_pressure`]: `maxmemory` at the memory in use while another tenant writes.
//!
//! It does not depend on `tower-valkey-cache`, so the crate can dev-depend on it without a
//! dependency cycle. `valkey-server` and `valkey-cli` must be installed
//! (`scripts/install-valkey`).

#![warn(missing_docs, rust_2018_idioms)]

mod cluster;
mod pressure;
mod proxy;
mod server;

pub use cluster::ValkeyCluster;
pub use pressure::{info_field, memory_pressure, Tenant};
pub use proxy::DelayProxy;
pub use server::{free_port, ValkeyServer};
