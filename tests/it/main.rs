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
#[cfg(all(feature = "testing", feature = "axum"))]
mod cancellation;
mod cluster;
#[cfg(all(feature = "axum", feature = "testing"))]
mod composition;
#[cfg(feature = "testing")]
mod conformance;
mod eviction;
mod flight;
mod function;
mod glob;
mod headers;
mod http_semantics;
mod invalidate;
#[cfg(feature = "axum")]
mod l1;
mod l1_lag;
mod layer;
mod layout;
mod lost_state;
#[cfg(feature = "macros")]
mod macros;
#[cfg(all(feature = "opentelemetry", feature = "axum"))]
mod observability;
#[cfg(feature = "testing")]
mod owed;
#[cfg(all(feature = "testing", feature = "axum"))]
mod owed_reads;
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
mod shared_cache;
#[cfg(feature = "axum")]
mod spans;
mod stampede;
mod tag_scale;
#[cfg(feature = "testing")]
mod testing;
mod vary;
mod write_paths;
