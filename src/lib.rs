//! Response and function caching for [tower] and [axum] services, on [Valkey] or in memory.
//!
//! - [`CacheLayer`] caches a route's responses, keyed by templates over the path, path
//!   parameters, query and headers ([`key`]).
//! - [`Cache`] is the shared handle: a [`Store`](store::Store) ([`ValkeyStore`] or
//!   [`MemoryStore`]), a namespace, defaults, a circuit breaker and [`Stats`]. A Valkey store
//!   is a single server ([`ValkeyStore::new`]) or a Valkey Cluster ([`ValkeyStore::cluster`]).
//! - An optional in-process [L1 tier](l1) ([`CacheBuilder::l1`]) answers hits without a network
//!   call, kept coherent across instances through Valkey pub/sub.
//! - Every store operation has a timeout; when the store fails, requests are served by the
//!   handler as if there were no cache.
//! - Observability: [`Cache::stats`] counters, `tracing` spans per request and per store
//!   operation (keys hashed), and OpenTelemetry metrics with the `metrics` feature (on by
//!   default; see the `metrics` module for the table of instruments).
//! - Entries can be stored compressed (feature `compression`) and encrypted under application
//!   keys with rotation (feature `encryption`): see [`seal`].
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
//!
//! let cache = Cache::builder(MemoryStore::new()).namespace("demo").build();
//! let app: Router = Router::new().route(
//!     "/hello",
//!     get(|| async { "hello" }).route_layer(CacheLayer::new(cache).ttl(Duration::from_secs(5))),
//! );
//! ```
//!
//! [tower]: https://docs.rs/tower
//! [axum]: https://docs.rs/axum
//! [Valkey]: https://valkey.io

#![deny(missing_docs, unsafe_code, unreachable_pub)]
#![warn(rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
pub mod entry;
pub mod eviction;
pub mod function;
mod headers;
pub mod invalidate;
pub mod key;
pub mod l1;
pub mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod outcome;
pub mod seal;
mod stats;
pub mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use cache::{Cache, CacheBuilder, Invalidation};
pub use invalidate::InvalidateLayer;
pub use layer::CacheLayer;
pub use outcome::{Outcome, PendingStore};
#[cfg(feature = "compression")]
pub use seal::Compression;
#[cfg(feature = "encryption")]
pub use seal::Keyring;
pub use stats::Stats;
pub use store::{MemoryStore, ValkeyConfig, ValkeyStore};

/// Entry points for the fuzz targets in `fuzz/` (built only under `cargo fuzz`, which sets
/// `--cfg fuzzing`); not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz {
    /// The header parsers' checks on arbitrary bytes (`src/headers/check.rs`).
    pub fn headers(data: &[u8]) {
        crate::headers::check::check_parsers(data);
    }
}
