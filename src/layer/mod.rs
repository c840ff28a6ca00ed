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
//!    (`Cache-Status: ...; fwd=method`); so do methods other than GET and HEAD unless
//!    [`key_body`](CacheLayer::key_body) keys them by their body (a body over its bound, or that
//!    fails, passes through with `fwd=bypass; detail=body-too-large | body-error`, intact).
//! 2. Requests with `Cache-Control: no-store` (or a `Cache-Control` / `Pragma` that does not
//!    parse), requests carrying `Authorization` or `Cookie` on a route whose key does not
//!    identify the caller, and requests carrying `Range` on a route whose key does not include it
//!    (`{header.range}`) or that does not serve ranges from stored `200`s
//!    ([`serve_ranges`](CacheLayer::serve_ranges)), pass through (`fwd=bypass`).
//! 3. The key is derived ([`key`](crate::key)); a template that does not fit the route is logged
//!    once and the request is served uncached (`fwd=bypass; detail=key-error`), and so is a
//!    request holding a value its handler would reject: a typed hole (`{id:u64}`) that does not
//!    parse, an extractor key ([keys from extractors](crate::key#keys-from-extractors), feature `axum`)
//!    whose extractor rejects
//!    (`fwd=bypass; detail=key-rejected`).
//! 4. A fresh entry is a hit (`hit; ttl=N`, with `Age`); HEAD is answered from the GET entry.
//! 5. Otherwise the handler runs. Its response is stored if its status is configured (200 by
//!    default; a `206` only under a key that includes `Range`) and it has no `Set-Cookie`, no
//!    `Cache-Control: private | no-store | no-cache` and is not `Vary: *` (a `Vary` list is
//!    stored per variant, see [below](#vary)). Header fields are parsed from their bytes and fail
//!    closed: a `Cache-Control`, `Vary` or tag header line that does not parse is not stored
//!    (`detail=unparsable-cache-control | unparsable-vary | unparsable-tags`). Bodies over
//!    `max_body_bytes` stream through unstored; bodies of unknown length stream to the client
//!    while a copy is kept, and are stored once complete.
//! 6. When the store fails or is slow (every operation has a timeout), the handler answers
//!    (`fwd=miss; detail=store-unavailable`); after repeated failures a circuit breaker skips the
//!    store for a cool-down, so a dead Valkey adds no latency.
//!
//! A fill is stored only if nothing invalidated its key while the handler ran, so a write that
//! lands during a slow read is never overwritten by the read's old data.
//!
//! In front of an origin you do not control, [`CacheLayer::http_cache`] makes the layer a shared
//! HTTP cache (RFC 9111: freshness from the response, revalidation, ranges); each of its
//! behaviours is also an option of its own.
//!
//! # Vary
//!
//! A response's `Vary` makes the request headers it names part of its key. Nothing is
//! configured: the first response that says `Vary: Accept-Language` turns the route's key `K`
//! into a *variant marker* (the normalised header names and a random generation), and the
//! response itself is stored at `K#vary:GENERATION:HASH`, the hash covering the request's values
//! of those headers. A lookup that finds a marker reads the variant the request selects: two
//! reads for a varied resource, one for the others.
//!
//! ```
//! use axum::{http::HeaderMap, response::IntoResponse, routing::get, Router};
//! use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
//!
//! async fn greeting(headers: HeaderMap) -> impl IntoResponse {
//!     let fr = headers.get("accept-language").is_some_and(|v| v.as_bytes().starts_with(b"fr"));
//!     ([("vary", "Accept-Language")], if fr { "bonjour" } else { "hello" })
//! }
//!
//! let cache = Cache::new(MemoryStore::new());
//! let app: Router = Router::new().route(
//!     "/greeting",
//!     // gzip and br only, e.g. behind a compression layer that serves those.
//!     get(greeting).route_layer(CacheLayer::new(cache).served_encodings(["gzip", "br"])),
//! );
//! ```
//!
//! - Header names are case-insensitive and sorted; values are trimmed, inner white space
//!   collapsed, several fields joined as one list. An absent header is a different variant from
//!   an empty one.
//! - `Accept-Encoding` is reduced to the codings of
//!   [`served_encodings`](CacheLayer::served_encodings) it accepts (`q=0` refuses, `*` stands
//!   for the rest), or `identity`: `gzip, deflate, br` and `br;q=1, gzip, deflate` share a
//!   variant.
//! - `Vary: *` is never stored (`detail=vary`).
//! - Invalidating `K` (by key, by a pattern matching it, or by a tag: the marker carries the
//!   route's tags) makes every variant unreachable at once; they expire by their TTL. How the
//!   marker, its generations and single-flight per variant keep that exact under races:
//!   ARCHITECTURE.md › Variants.
//! - The number of variants per key is not bounded: it is the number of distinct normalised
//!   values clients send. Vary on headers with few values (`Accept-Language` as the clients of a
//!   site send it, `Accept-Encoding` after reduction), not on `User-Agent`; a bounded
//!   namespace ([`eviction`](CacheLayer::eviction)) caps the total.
//!

mod body;
mod bounds;
mod conditional;
mod config;
mod freshness;
mod future;
mod invalidation;
#[allow(clippy::module_inception)]
mod layer;
mod lookup;
mod miss;
mod policy;
mod range;
mod refresh;
mod request_body;
mod response;
mod revalidate;
mod service;
mod status;
mod vary;

#[cfg(any(test, fuzzing))]
pub(crate) use policy::storable_200;

pub use body::CacheBody;
pub use future::ResponseFuture;
pub use layer::CacheLayer;
pub use request_body::CacheRequestBody;
pub use service::CacheService;
