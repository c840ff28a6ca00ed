//! The integration tests, in one binary (one link instead of one per file): each module is a
//! former test file, and [`support`] is the shared harness (throw-away `valkey-server`s, a shared
//! local Valkey Cluster, the `Backend` a scenario runs on, HTTP helpers).
//!
//! Run one module with `cargo test --all-features --test it layer::`, one test with its full
//! path (`cargo test --all-features --test it layer::valkey::key_escaping`).

mod support;

#[cfg(all(feature = "admin", feature = "testing"))]
mod admin;
mod breaker;
mod cluster;
#[cfg(all(feature = "axum", feature = "testing"))]
mod composition;
#[cfg(feature = "testing")]
mod conformance;
mod eviction;
mod function;
mod glob;
mod headers;
mod http_semantics;
mod invalidate;
#[cfg(feature = "axum")]
mod l1;
mod layer;
#[cfg(feature = "macros")]
mod macros;
#[cfg(all(feature = "opentelemetry", feature = "axum"))]
mod observability;
mod post_body;
mod properties;
#[cfg(all(
    feature = "compression",
    feature = "encryption",
    feature = "axum",
    feature = "postcard"
))]
mod seal;
mod security;
#[cfg(feature = "axum")]
mod spans;
mod stampede;
#[cfg(feature = "testing")]
mod testing;
mod vary;
