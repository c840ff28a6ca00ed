//! Response caching middleware: [`CacheLayer`].
//!
//! Put a `CacheLayer` on a route and its responses are stored in the [`Cache`](crate::Cache)'s
//! store and answered from there until they expire:
//!
//! ```
//! use std::time::Duration;
//! use axum::{extract::Path, routing::get, Router};
//! use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
//!
//! async fn user(Path(id): Path<u32>) -> String {
//!     format!("user {id}")
//! }
//!
//! let cache = Cache::new(MemoryStore::new());
//! let app: Router = Router::new().route(
//!     "/users/{id}",
//!     get(user).route_layer(CacheLayer::new(cache).key("user:{id}").ttl(Duration::from_secs(60))),
//! );
//! ```
//!
//! # What happens to a request
//!
//! 1. Methods other than those configured (GET and HEAD by default) pass through
//!    (`Cache-Status: ...; fwd=method`).
//! 2. Requests with `Cache-Control: no-store`, and requests carrying `Authorization` or `Cookie`
//!    on a route whose key does not identify the caller, pass through (`fwd=bypass`).
//! 3. The key is derived ([`key`](crate::key)); a template that does not fit the route is logged
//!    once and the request is served uncached (`fwd=bypass; detail=key-error`).
//! 4. A fresh entry is a hit (`hit; ttl=N`, with `Age`); HEAD is answered from the GET entry.
//! 5. Otherwise the handler runs. Its response is stored if its status is configured (200 by
//!    default) and it has no `Set-Cookie`, no `Cache-Control: private | no-store | no-cache` and
//!    no `Vary`. Bodies over `max_body_bytes` stream through unstored; bodies of unknown length
//!    stream to the client while a copy is kept, and are stored once complete.
//! 6. When the store fails or is slow (every operation has a timeout), the handler answers
//!    (`fwd=miss; detail=store-unavailable`); after repeated failures a circuit breaker skips the
//!    store for a cool-down, so a dead Valkey adds no latency.
//!
//! A fill is stored only if nothing invalidated its key while the handler ran, so a write that
//! lands during a slow read is never overwritten by the read's old data.

mod body;
mod conditional;
#[allow(clippy::module_inception)]
mod layer;
mod policy;
mod service;
mod status;

pub use body::CacheBody;
pub use layer::CacheLayer;
pub use service::{CacheService, ResponseFuture};
