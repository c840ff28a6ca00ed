//! Response and function caching for [tower] and [axum] services, on [Valkey] or in memory.
//!
//! - [`CacheLayer`] caches a route's responses, keyed by templates over the path, path
//!   parameters, query and headers ([`key`]).
//! - [`Cache`] is the shared handle: a [`Store`](store::Store) ([`ValkeyStore`] or
//!   [`MemoryStore`]), a namespace, defaults, a circuit breaker and [`Stats`].
//! - Every store operation has a timeout; when the store fails, requests are served by the
//!   handler as if there were no cache.
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

mod breaker;
mod cache;
pub mod entry;
mod flight;
pub mod function;
pub mod invalidate;
pub mod key;
pub mod layer;
mod stats;
pub mod store;

pub use cache::{Cache, CacheBuilder};
pub use invalidate::InvalidateLayer;
pub use layer::CacheLayer;
pub use stats::Stats;
pub use store::{MemoryStore, ValkeyConfig, ValkeyStore};
