//! Invalidation middleware: [`InvalidateLayer`] for routes that change data.
//!
//! When the wrapped handler answers with a success status (2xx by default), the layer removes the
//! entries the write made wrong **before the response goes out**, so the caller's next read sees
//! the write. Three ways to name them, each a template over the same request data as
//! [`CacheLayer`](crate::CacheLayer) keys:
//!
//! ```
//! use axum::{routing::{get, put}, Router};
//! use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, MemoryStore};
//!
//! let cache = Cache::new(MemoryStore::new());
//! let app: Router = Router::new().route(
//!     "/users/{id}",
//!     get(|| async { "user" })
//!         .route_layer(CacheLayer::new(cache.clone()).key("user:{id}").tags(["user:{id}"]))
//!         .merge(put(|| async { "updated" }).route_layer(
//!             InvalidateLayer::new(cache)
//!                 .keys(["user:{id}"])
//!                 .patterns(["user_{id}_posts:*"])
//!                 .tags(["user:{id}"]),
//!         )),
//! );
//! ```
//!
//! (`route_layer` wraps every method registered before it, so build each method's router with its
//! own layer and `merge` them: the GET caches, the PUT invalidates.)
//!
//! # Keys, patterns or tags
//!
//! | | keys | patterns | tags |
//! |---|---|---|---|
//! | names | exact entries | every key matching a glob | every entry stored with the tag |
//! | Valkey round trips | 1 (one script for all keys) | 1 + one per `SCAN` step (`COUNT` 1000) + one `UNLINK` per batch | 1, + one per further batch of 256 members ([`invalidation_batch`](crate::ValkeyConfig::invalidation_batch)) |
//! | blocks Valkey | no (O(keys)) | no: `SCAN` steps, never `KEYS` | no: the tombstone first, then one short script per batch of members |
//! | cost grows with | keys named | the **whole namespace** (every key is scanned) | entries carrying the tag |
//! | Valkey Cluster | one script on the namespace's primary (`{ns}` hash tag) | `SCAN` on every primary, `UNLINK` by slot | the same steps, on the namespace's primary |
//! | use when | you know the keys | keys follow a naming scheme you cannot enumerate, rarely | one write touches many entries (a user's pages, lists) |
//!
//! Prefer keys and tags on hot paths; keep patterns for rare, administrative invalidation. Tags
//! and patterns run on the store's bulk connection, within
//! [`bulk_timeout`](crate::CacheBuilder::bulk_timeout) (30 s), not the per-operation timeout of
//! hits; the count they return is exact (each step counts what it removed). The request waits
//! for them, unless [`invalidation_wait`](crate::CacheBuilder::invalidation_wait) bounds the
//! wait: one still running then carries on in its task, owed (this process reads around the
//! cache until it lands; other processes may read what it has not removed yet), and the request
//! is answered without waiting longer.
//! `CacheLayer` records tags from its [`tags`](crate::CacheLayer::tags) templates and from the
//! response's `Surrogate-Key` (space-separated) or `Cache-Tag` (comma-separated) header, which it
//! removes before the response leaves. Tag sets expire with their longest-lived entry, and dead
//! members are pruned as new ones are added, so they do not grow without bound.
//!
//! # Consistency guarantee
//!
//! After an invalidation is acknowledged (the write's response has been sent), no read that starts
//! afterwards is served an entry stored before it, in any process sharing the store (with L1,
//! in the other processes within a bound: below); and a fill whose handler started before the
//! invalidation is never stored (it was read before the write). (An invalidation answered
//! with an error is owed: below. One still running past an opt-in
//! [`invalidation_wait`](crate::CacheBuilder::invalidation_wait) is owed the same way: exact in
//! this process, while other processes may read what it has not removed yet until it lands.)
//! Each miss reads the namespace's invalidation clock with the entry; each invalidation advances
//! the clock and leaves a tombstone on its keys, tags or pattern for the
//! [invalidation window](crate::CacheBuilder::invalidation_window); the fill is written by a script
//! that refuses it if a tombstone newer than its clock covers it. Fills that outlive the window
//! are not stored. **When the store is unreachable** the write's response is still the handler's;
//! the invalidation is owed to the store and retried in the background (by target: a key written
//! many times is one retry), and until it lands this process serves every request from the
//! handler. It is never dropped: when the retry queue is full, or a retry still fails after
//! `give_up_after`, one namespace-wide invalidation replaces what is owed and is held until it
//! lands ([`invalidation_retry`](crate::CacheBuilder::invalidation_retry)). Other processes keep
//! serving what they cached until the store is back (they cannot read it meanwhile either, so in
//! practice they serve from their handlers too) and at worst until the entry's TTL.
//!
//! **When the store loses its state** (restarted empty, failed over to a replica that had not
//! received the latest writes) a fill that read the clock before the loss is refused: the clock
//! follows the server's time, so it never restarts below a value it handed out, and a fill whose
//! clock is ahead of the store's or older than the clock's origin is not stored (see
//! [`store`](crate::store#the-invalidation-clock)). What no cache can recover is an invalidation
//! the old primary acknowledged and a failover lost with asynchronous replication: the promoted
//! replica may still hold that entry until its TTL.
//!
//! **With the [L1 tier](crate::l1)** the guarantee holds at once in the process that ran the
//! invalidation (it drops its own copies before the call returns), and in the other instances
//! when its announcement reaches them (measured on a loaded machine: p99 23 ms, max 414 ms after
//! the invalidation returned, BENCHMARKS.md), and never later than
//! [`l1_max_lag`](crate::CacheBuilder::l1_max_lag) (1 s by default), because an instance that
//! cannot confirm it is within that bound reads the store instead of its L1 (see
//! [the bound](crate::l1#the-bound-across-instances)). With
//! [`l1_strict`](crate::CacheBuilder::l1_strict) it holds everywhere when the call returns `Ok`:
//! the invalidation waits out the bound first.

mod layer;
mod service;

pub use layer::InvalidateLayer;
pub use service::{InvalidateFuture, InvalidateService};
