//! The [`Store`] contract as executable checks: run them on your own store (or a wrapper of one)
//! to learn whether a [`Cache`](crate::Cache) can rely on it.
//!
//! The crate's own tests run exactly these checks on [`ValkeyStore`](crate::ValkeyStore) (one
//! server and a Valkey Cluster) and on [`MemoryStore`](crate::MemoryStore): this module is the
//! one home of the contract. Each check runs in namespaces of its own (under a prefix unique to
//! the run, see [`Conformance::namespace`]), so checks never see each other's data and a store
//! holding other data is left alone. The checks, by name ([`CHECKS`]):
//!
//! | check | what a store must do |
//! |---|---|
//! | `read_write` | [`Store::read`] returns the value written (any bytes) **and** the namespace's invalidation clock, which writes do not move; an overwrite replaces the value; a value is gone once its TTL passed; [`Store::ping`] answers |
//! | `namespaces` | namespaces share nothing: values, invalidations (key, tag, pattern) and the clock of one never reach another |
//! | `lost_state` | a guarded write is refused when the store lost its state since the clock was read: the clock it read is ahead of the store's (restarted empty, failed over to a lagging replica), or from before the namespace's first invalidation (the clock began then); see [the invalidation clock](crate::store#the-invalidation-clock) |
//! | `guarded_writes` | a write with [`Write::since`] is refused ([`Written::Superseded`], nothing stored) when its key, one of its tags or a pattern matching its key was invalidated after that clock; it is stored when the invalidation covered something else or came before the clock; every invalidation advances the clock; an unguarded write is always stored |
//! | `tags` | a write records its tags; invalidating a tag removes exactly the entries carrying it, and leaves the others |
//! | `batch` | [`Store::read_many`] answers in the order of the keys (misses and repeats included) with the clock; [`Store::write_many`] answers one [`Written`] per write in order, guards each as [`Store::write`] does and records its tags |
//! | `invalidate_counts` | [`Store::invalidate`] returns how many live entries it removed: a key listed twice or an entry carrying two of the tags counts once, absent and expired entries count zero, `*` is the whole namespace |
//! | `fill_locks` | [`Store::try_lock`] takes a free lock and refuses a held one (per key and namespace); [`Store::unlock`] releases only with the holder's token; a lease that ran out frees the lock, and the old holder's unlock leaves the new holder's lock alone |
//! | `ranked_policies` | with [`Store::ranked`]: each built-in policy (FIFO, LIFO, LRU, MRU, LFU) evicts the entry it names from a full small namespace, lists the keys in eviction order, counts, deletes and clears |
//! | `ranked_route` | with [`Store::ranked`]: a bounded route's read returns what [`Store::read`] returns (entry and clock), recording ranks written entries and evicts past capacity, and an invalidation removes the ranks of the entries it removes |
//! | `bus` | with [`Store::bus`]: a publication reaches the subscribers of its channel and no other (before `publish` returns on a [local](InvalidationBus::is_local) bus) |
//!
//! A store without a capability ([`Store::ranked`] or [`Store::bus`] is `None`) skips its checks;
//! [`Passed::skipped`] names them.
//!
//! # Example: check a store, and see a broken one fail
//!
//! ```
//! use tower_valkey_cache::testing::conformance::{self, Conformance};
//! use tower_valkey_cache::testing::{FaultyStore, Op};
//! use tower_valkey_cache::MemoryStore;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! // A wrapper that forwards every operation and capability passes every check.
//! let store = FaultyStore::new(MemoryStore::new());
//! let passed = conformance::check(store.clone()).await.unwrap();
//! assert!(passed.skipped.is_empty(), "MemoryStore has bounded namespaces and a bus");
//!
//! // A store whose unlock fails cannot release fill locks: the check says so.
//! store.faults().fail(Op::Unlock);
//! let failures = Conformance::new(store).run().await.unwrap_err();
//! assert_eq!(failures.len(), 1);
//! assert_eq!(failures[0].check, "fill_locks");
//! println!("{}", failures[0]); // fill_locks: unlock failed: cache store Unavailable: ...
//! # });
//! ```
//!
//! The checks need a Tokio runtime with timers (they sleep past TTLs and leases, and bound every
//! check in time). A full run takes a few seconds, most of it waiting for short TTLs and leases
//! to pass.

use crate::store::bus::{BusSink, InvalidationBus};
use crate::store::ranked::{RankedSpace, RankedStore, Scoring, Spec, STAMP_BITS};
use crate::store::{KeySpace, Lookup, Store, StoreFuture, Target, Write, Written};
use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every check, in the order [`Conformance::run`] runs them.
pub const CHECKS: &[&str] = &[
    "read_write",
    "namespaces",
    "lost_state",
    "guarded_writes",
    "tags",
    "batch",
    "invalidate_counts",
    "fill_locks",
    "ranked_policies",
    "ranked_route",
    "bus",
];

/// How long tombstones live in the checks' key spaces: far longer than any check.
const TOMBSTONES: Duration = Duration::from_secs(120);
/// The TTL of entries a check expects to stay.
const LONG: Duration = Duration::from_secs(120);
/// The TTL (and lease) of entries a check waits out...
const SHORT: Duration = Duration::from_millis(100);
/// ...by sleeping this long (Valkey expires in milliseconds; a loaded machine is slow).
const PAST_SHORT: Duration = Duration::from_millis(500);

/// A check that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failure {
    /// The check's name (one of [`CHECKS`]).
    pub check: &'static str,
    /// What the store did instead (the first thing that went wrong in the check).
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

impl std::error::Error for Failure {}

/// A run in which every check held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Passed {
    /// The checks that ran (and held).
    pub ran: Vec<&'static str>,
    /// The checks of capabilities the store does not have ([`Store::ranked`], [`Store::bus`]).
    pub skipped: Vec<&'static str>,
}

/// Runs every check on `store` with the default settings: [`Conformance::new`]`(store).run()`.
pub async fn check(store: impl Store) -> Result<Passed, Vec<Failure>> {
    Conformance::new(store).run().await
}

/// The checks over one store, with their settings.
#[derive(Debug)]
pub struct Conformance<S> {
    store: S,
    prefix: String,
    wait: Duration,
    limit: Duration,
}

impl<S: Store> Conformance<S> {
    /// The checks over `store`, in namespaces under a prefix unique to this value
    /// (`conformance-PID-N-RANDOM-`), waiting up to 10 s for a subscription or a publication
    /// and up to 60 s for a whole check.
    pub fn new(store: S) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "conformance-{}-{}-{:08x}-",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        Self {
            store,
            prefix,
            wait: Duration::from_secs(10),
            limit: Duration::from_secs(60),
        }
    }

    /// The prefix of every namespace the checks use (each check appends its own name). Choose
    /// one no other client of the store uses: the checks invalidate `*` in their namespaces.
    pub fn namespace(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long the `bus` check waits for a subscription to be established and for a
    /// publication to arrive (10 s by default).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How long one check may take before it fails as hung (60 s by default).
    pub fn limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// Runs every check, one after another; `Err` lists each check that did not hold.
    pub async fn run(&self) -> Result<Passed, Vec<Failure>> {
        let cx = Cx {
            store: &self.store,
            prefix: &self.prefix,
            wait: self.wait,
        };
        let ranked = self.store.ranked();
        let bus = self.store.bus();
        let mut passed = Passed::default();
        let mut failures = Vec::new();
        for &name in CHECKS {
            let run = match name {
                "read_write" => Some(boxed(read_write(cx))),
                "namespaces" => Some(boxed(namespaces(cx))),
                "lost_state" => Some(boxed(lost_state(cx))),
                "guarded_writes" => Some(boxed(guarded_writes(cx))),
                "tags" => Some(boxed(tags(cx))),
                "batch" => Some(boxed(batch(cx))),
                "invalidate_counts" => Some(boxed(invalidate_counts(cx))),
                "fill_locks" => Some(boxed(fill_locks(cx))),
                "ranked_policies" => ranked.clone().map(|r| boxed(ranked_policies(cx, r))),
                "ranked_route" => ranked.clone().map(|r| boxed(ranked_route(cx, r))),
                "bus" => bus.clone().map(|b| boxed(bus_check(cx, b))),
                // A name in CHECKS without its arm here: fail loudly rather than pass silently.
                other => Some(boxed(std::future::ready(Err(format!(
                    "no such check: {other}"
                ))))),
            };
            let Some(run) = run else {
                passed.skipped.push(name);
                continue;
            };
            match tokio::time::timeout(self.limit, run).await {
                Ok(Ok(())) => passed.ran.push(name),
                Ok(Err(message)) => failures.push(Failure {
                    check: name,
                    message,
                }),
                Err(_) => failures.push(Failure {
                    check: name,
                    message: format!("did not finish within {:?}", self.limit),
                }),
            }
        }
        if failures.is_empty() {
            Ok(passed)
        } else {
            Err(failures)
        }
    }
}

/// A check's result: the first thing that went wrong.
type Outcome = Result<(), String>;

/// A check, running.
type Running<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

fn boxed<'a>(f: impl Future<Output = Outcome> + Send + 'a) -> Running<'a> {
    Box::pin(f)
}

/// `Err(message)` unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// `Err` naming `what`, the expected and the actual value, unless they are equal.
macro_rules! expect_eq {
    ($got:expr, $want:expr, $($what:tt)+) => {{
        let (got, want) = (&$got, &$want);
        if got != want {
            return Err(format!("{}: expected {:?}, got {:?}", format!($($what)+), want, got));
        }
    }};
}

/// What every check works with.
#[derive(Clone, Copy)]
struct Cx<'s> {
    store: &'s dyn Store,
    prefix: &'s str,
    wait: Duration,
}

/// `Some(bytes)` of a text value, to compare with what a read returns.
fn val(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Awaits a store operation; its error becomes the check's failure.
async fn op<T>(what: &str, f: StoreFuture<'_, T>) -> Result<T, String> {
    f.await.map_err(|e| format!("{what} failed: {e}"))
}

impl Cx<'_> {
    /// The key space of namespace `name` (under the run's prefix), hash-tagged when the store
    /// needs it, as a [`Cache`](crate::Cache) builds it.
    fn space(&self, name: &str) -> KeySpace {
        let ns = format!("{}{name}", self.prefix);
        if self.store.needs_hash_tags() {
            KeySpace::hash_tagged(&ns, TOMBSTONES)
        } else {
            KeySpace::new(&ns, TOMBSTONES)
        }
    }

    async fn get(&self, space: &KeySpace, key: &str) -> Result<Option<Bytes>, String> {
        Ok(self.lookup(space, key).await?.value)
    }

    /// The namespace's clock, as a read reports it.
    async fn clock(&self, space: &KeySpace) -> Result<u64, String> {
        Ok(self.lookup(space, "clock-probe").await?.clock)
    }

    /// A read; for a store that answers [`Store::read_now`], also that one, which must say
    /// exactly what the read says (every check's reads hold it to that).
    async fn lookup(&self, space: &KeySpace, key: &str) -> Result<Lookup, String> {
        let read = op(&format!("read {key:?}"), self.store.read(space, key)).await?;
        if let Some(now) = self.store.read_now(space, key) {
            let now = now.map_err(|e| format!("read_now {key:?} failed: {e}"))?;
            ensure!(
                now.value == read.value && now.clock == read.clock,
                "read_now {key:?} answered {now:?}, read answered {read:?}"
            );
        }
        Ok(read)
    }

    /// A write of `value` at `key` with `tags`, guarded by `since` when it is `Some`.
    async fn write(
        &self,
        space: &KeySpace,
        key: &str,
        value: &str,
        tags: &[&str],
        ttl: Duration,
        since: Option<u64>,
    ) -> Result<Written, String> {
        let tags = strings(tags);
        let w = Write {
            key,
            value: Bytes::copy_from_slice(value.as_bytes()),
            ttl,
            tags: &tags,
            since,
        };
        op(&format!("write {key:?}"), self.store.write(space, w)).await
    }

    /// An unguarded write that must be stored (value `key` itself), living [`LONG`].
    async fn put(&self, space: &KeySpace, key: &str, tags: &[&str]) -> Outcome {
        self.put_for(space, key, tags, LONG).await
    }

    async fn put_for(&self, space: &KeySpace, key: &str, tags: &[&str], ttl: Duration) -> Outcome {
        let w = self.write(space, key, key, tags, ttl, None).await?;
        expect_eq!(w, Written::Stored, "an unguarded write of {key:?}");
        Ok(())
    }

    async fn invalidate(&self, space: &KeySpace, target: Target<'_>) -> Result<u64, String> {
        op(
            &format!("invalidate {target:?}"),
            self.store.invalidate(space, target),
        )
        .await
    }

    /// Which of `present` / `absent` hold an entry (the entry's value is its key, as
    /// [`put`](Self::put) writes it).
    async fn present(&self, space: &KeySpace, present: &[&str], absent: &[&str]) -> Outcome {
        for k in present {
            expect_eq!(self.get(space, k).await?, val(k), "the entry at {k:?}");
        }
        for k in absent {
            expect_eq!(self.get(space, k).await?, None, "the entry at {k:?}");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------- the checks

async fn read_write(cx: Cx<'_>) -> Outcome {
    let s = cx.space("read_write");
    op("ping", cx.store.ping()).await?;
    let first = op("read", cx.store.read(&s, "a")).await?;
    expect_eq!(first.value, None, "a read of a key never written");
    let clock = first.clock;

    cx.put(&s, "a", &[]).await?;
    let after = op("read", cx.store.read(&s, "a")).await?;
    expect_eq!(after.value, val("a"), "a read after a write");
    expect_eq!(
        after.clock,
        clock,
        "the clock after a write (writes do not move it)"
    );

    let w = cx.write(&s, "a", "second", &[], LONG, None).await?;
    expect_eq!(w, Written::Stored, "an overwrite");
    expect_eq!(
        cx.get(&s, "a").await?,
        val("second"),
        "a read after an overwrite"
    );

    // Values are bytes, keys are opaque text.
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let key = "k:ü {x} *?[]\\|:";
    let w = Write {
        key,
        value: Bytes::from(every_byte.clone()),
        ttl: LONG,
        tags: &[],
        since: None,
    };
    expect_eq!(
        op("write", cx.store.write(&s, w)).await?,
        Written::Stored,
        "a write of every byte value"
    );
    expect_eq!(
        cx.get(&s, key).await?,
        Some(Bytes::from(every_byte)),
        "a read of every byte value at {key:?}"
    );
    expect_eq!(
        cx.get(&s, "k:ü").await?,
        None,
        "a read of a prefix of {key:?}"
    );

    cx.put_for(&s, "short", &[], SHORT).await?;
    tokio::time::sleep(PAST_SHORT).await;
    expect_eq!(
        cx.get(&s, "short").await?,
        None,
        "a read {PAST_SHORT:?} after a write with a TTL of {SHORT:?}"
    );
    Ok(())
}

async fn namespaces(cx: Cx<'_>) -> Outcome {
    let (a, b) = (cx.space("namespaces-a"), cx.space("namespaces-b"));
    for (space, value) in [(&a, "in a"), (&b, "in b")] {
        let w = cx.write(space, "k", value, &["t"], LONG, None).await?;
        expect_eq!(w, Written::Stored, "an unguarded write of {value:?}");
    }
    expect_eq!(cx.get(&a, "k").await?, val("in a"), "namespace a's entry");
    expect_eq!(cx.get(&b, "k").await?, val("in b"), "namespace b's entry");
    let b_clock = cx.clock(&b).await?;
    let keys = strings(&["k"]);
    let tag = strings(&["t"]);
    for (what, target) in [
        ("key", Target::Keys(&keys)),
        ("tag", Target::Tags(&tag)),
        ("pattern `*`", Target::Pattern("*")),
    ] {
        let w = cx.write(&a, "k", "in a", &["t"], LONG, None).await?;
        expect_eq!(w, Written::Stored, "an unguarded write in namespace a");
        let removed = cx.invalidate(&a, target).await?;
        expect_eq!(
            removed,
            1,
            "entries a {what} invalidation in namespace a removed"
        );
        expect_eq!(
            cx.get(&a, "k").await?,
            None,
            "namespace a's entry after its {what} invalidation"
        );
        expect_eq!(
            cx.get(&b, "k").await?,
            val("in b"),
            "namespace b's entry after a {what} invalidation in namespace a"
        );
        expect_eq!(
            cx.clock(&b).await?,
            b_clock,
            "namespace b's clock after a {what} invalidation in namespace a"
        );
    }
    let w = cx
        .write(&b, "k", "b again", &["t"], LONG, Some(b_clock))
        .await?;
    expect_eq!(
        w,
        Written::Stored,
        "a guarded write in namespace b after namespace a's invalidations of the same key, tag and `*`"
    );
    Ok(())
}

/// Starts `space`'s clock (an invalidation of a key no check uses): the first invalidation of a
/// namespace refuses the writes guarded by a clock read before it (`lost_state`), which the
/// checks of the guard's other rules must not trip over.
async fn start_clock(cx: &Cx<'_>, space: &KeySpace) -> Outcome {
    cx.invalidate(space, Target::Keys(&strings(&["clock-start"])))
        .await?;
    Ok(())
}

async fn lost_state(cx: Cx<'_>) -> Outcome {
    let s = cx.space("lost_state");
    // One guarded write through `write` and one through `write_many`, which must agree.
    let both = async |since: u64, what: &str| -> Result<Written, String> {
        let one = cx.write(&s, "k", "k", &[], LONG, Some(since)).await?;
        let many = op(
            "write_many",
            cx.store
                .write_many(&s, vec![batch_write("k", &[], Some(since))]),
        )
        .await?;
        expect_eq!(many, vec![one], "write_many of {what} (as write answered)");
        Ok(one)
    };
    let zero = cx.clock(&s).await?;
    expect_eq!(zero, 0, "the clock of a namespace never invalidated");
    expect_eq!(
        both(0, "a write guarded by clock 0, nothing invalidated yet").await?,
        Written::Stored,
        "a write guarded by clock 0 in a namespace never invalidated"
    );
    start_clock(&cx, &s).await?;
    let c = cx.clock(&s).await?;
    ensure!(
        c > 0,
        "the clock did not start on the first invalidation ({c})"
    );
    expect_eq!(
        both(
            0,
            "a write guarded by clock 0 read before the first invalidation"
        )
        .await?,
        Written::Superseded,
        "a write guarded by clock 0, read before the namespace's first invalidation"
    );
    expect_eq!(
        both(c, "a write guarded by the current clock").await?,
        Written::Stored,
        "a write guarded by the current clock ({c})"
    );
    for ahead in [c + 1, c.saturating_add(1 << 40)] {
        expect_eq!(
            both(ahead, "a write guarded by a clock ahead of the store's").await?,
            Written::Superseded,
            "a write guarded by clock {ahead}, ahead of the store's {c} (the store lost its state since)"
        );
    }
    Ok(())
}

async fn guarded_writes(cx: Cx<'_>) -> Outcome {
    let s = cx.space("guarded_writes");
    start_clock(&cx, &s).await?;
    let keys = strings(&["k:1"]);
    let tags = strings(&["t1"]);
    // Each kind of invalidation, and a write (key, tags) it covers and one it does not.
    type Covered<'a> = (&'a str, &'a [&'a str]);
    let kinds: [(&str, Target<'_>, Covered<'_>, Covered<'_>); 4] = [
        ("key", Target::Keys(&keys), ("k:1", &[]), ("k:2", &[])),
        (
            "tag",
            Target::Tags(&tags),
            ("t:1", &["t1"]),
            ("t:2", &["t2"]),
        ),
        (
            "tag",
            Target::Tags(&tags),
            ("t:3", &["t2", "t1"]),
            ("t:4", &[]),
        ),
        (
            "pattern",
            Target::Pattern("p:*"),
            ("p:1", &[]),
            ("q:p:1", &[]),
        ),
    ];
    for (kind, target, (covered, covered_tags), (other, other_tags)) in kinds {
        cx.put(&s, covered, covered_tags).await?;
        let before = cx.clock(&s).await?;
        cx.invalidate(&s, target).await?;
        let after = cx.clock(&s).await?;
        ensure!(
            after > before,
            "the clock did not advance on a {kind} invalidation ({before} before, {after} after)"
        );
        let w = cx
            .write(&s, covered, covered, covered_tags, LONG, Some(before))
            .await?;
        expect_eq!(
            w,
            Written::Superseded,
            "a write of {covered:?} (tags {covered_tags:?}) guarded by the clock before a {kind} invalidation covering it"
        );
        expect_eq!(
            cx.get(&s, covered).await?,
            None,
            "the refused write's entry {covered:?}"
        );
        let w = cx
            .write(&s, other, other, other_tags, LONG, Some(before))
            .await?;
        expect_eq!(
            w,
            Written::Stored,
            "a write of {other:?} (tags {other_tags:?}) guarded by the clock before a {kind} invalidation not covering it"
        );
        expect_eq!(
            cx.get(&s, other).await?,
            val(other),
            "the stored write's entry {other:?}"
        );
        let w = cx
            .write(&s, covered, covered, covered_tags, LONG, Some(after))
            .await?;
        expect_eq!(
            w,
            Written::Stored,
            "a write of {covered:?} guarded by the clock read after the {kind} invalidation"
        );
        cx.invalidate(&s, target).await?;
        let w = cx
            .write(&s, covered, covered, covered_tags, LONG, None)
            .await?;
        expect_eq!(
            w,
            Written::Stored,
            "an unguarded write of {covered:?} after a {kind} invalidation"
        );
        expect_eq!(
            cx.get(&s, covered).await?,
            val(covered),
            "the unguarded write's entry"
        );
    }
    Ok(())
}

async fn tags(cx: Cx<'_>) -> Outcome {
    let s = cx.space("tags");
    cx.put(&s, "x:1", &["t1"]).await?;
    cx.put(&s, "x:2", &["t1", "t2"]).await?;
    cx.put(&s, "x:3", &["t2"]).await?;
    cx.put(&s, "x:4", &[]).await?;
    cx.put(&s, "x:5", &["tü:*?[x]"]).await?;
    let removed = cx.invalidate(&s, Target::Tags(&strings(&["t1"]))).await?;
    expect_eq!(
        removed,
        2,
        "entries removed by invalidating tag t1 (x:1, x:2)"
    );
    cx.present(&s, &["x:3", "x:4", "x:5"], &["x:1", "x:2"])
        .await?;
    let removed = cx.invalidate(&s, Target::Tags(&strings(&["t2"]))).await?;
    expect_eq!(
        removed,
        1,
        "entries removed by invalidating tag t2 (x:3 left)"
    );
    let removed = cx
        .invalidate(&s, Target::Tags(&strings(&["tü:*?[x]"])))
        .await?;
    expect_eq!(removed, 1, "entries removed by invalidating tag `tü:*?[x]`");
    cx.present(&s, &["x:4"], &["x:3", "x:5"]).await?;
    // A tag invalidated is recorded again by the next write carrying it.
    cx.put(&s, "x:1", &["t1"]).await?;
    let removed = cx.invalidate(&s, Target::Tags(&strings(&["t1"]))).await?;
    expect_eq!(
        removed,
        1,
        "entries removed by invalidating tag t1 a second time"
    );
    cx.present(&s, &["x:4"], &["x:1"]).await
}

async fn batch(cx: Cx<'_>) -> Outcome {
    let s = cx.space("batch");
    start_clock(&cx, &s).await?;
    cx.put(&s, "a", &[]).await?;
    cx.put(&s, "c", &[]).await?;
    let clock = cx.clock(&s).await?;
    let many = op(
        "read_many",
        cx.store.read_many(&s, &strings(&["a", "b", "c", "a"])),
    )
    .await?;
    expect_eq!(
        many.values,
        vec![val("a"), None, val("c"), val("a")],
        "read_many of a, b (absent), c, a"
    );
    let mut clocks = Vec::new();
    for k in ["a", "b", "c", "a"] {
        clocks.push(cx.lookup(&s, k).await?.clock);
    }
    expect_eq!(
        many.clocks,
        clocks,
        "read_many's clocks (each key's, as read answers)"
    );
    if s.shard_count() == 1 {
        expect_eq!(
            many.clocks,
            vec![clock; 4],
            "read_many's clocks (the namespace's)"
        );
    }
    let none = op("read_many", cx.store.read_many(&s, &[])).await?;
    expect_eq!(
        none.values,
        Vec::<Option<Bytes>>::new(),
        "read_many of no keys"
    );

    let before = cx.clock(&s).await?;
    cx.invalidate(&s, Target::Keys(&strings(&["w:2"]))).await?;
    cx.invalidate(&s, Target::Tags(&strings(&["dead"]))).await?;
    let (live, dead) = (strings(&["live"]), strings(&["dead"]));
    let writes = vec![
        batch_write("w:1", &[], Some(before)),
        batch_write("w:2", &[], Some(before)),
        batch_write("w:3", &live, Some(before)),
        batch_write("w:4", &dead, Some(before)),
        batch_write("w:5", &[], None),
    ];
    let written = op("write_many", cx.store.write_many(&s, writes)).await?;
    use Written::{Stored, Superseded};
    expect_eq!(
        written,
        vec![Stored, Superseded, Stored, Superseded, Stored],
        "write_many of w:1, w:2 (key invalidated), w:3 (tag live), w:4 (tag invalidated), w:5 (unguarded)"
    );
    let many = op(
        "read_many",
        cx.store
            .read_many(&s, &strings(&["w:1", "w:2", "w:3", "w:4", "w:5"])),
    )
    .await?;
    expect_eq!(
        many.values,
        vec![val("w:1"), None, val("w:3"), None, val("w:5")],
        "read_many after write_many"
    );
    let removed = cx.invalidate(&s, Target::Tags(&live)).await?;
    expect_eq!(
        removed,
        1,
        "entries removed by the tag a write_many recorded"
    );
    cx.present(&s, &["w:1", "w:5"], &["w:3"]).await?;
    let none = op("write_many", cx.store.write_many(&s, Vec::new())).await?;
    expect_eq!(none, Vec::<Written>::new(), "write_many of no writes");
    Ok(())
}

/// A write of `key` (its own value) for [`LONG`].
fn batch_write<'a>(key: &'a str, tags: &'a [String], since: Option<u64>) -> Write<'a> {
    Write {
        key,
        value: Bytes::copy_from_slice(key.as_bytes()),
        ttl: LONG,
        tags,
        since,
    }
}

async fn invalidate_counts(cx: Cx<'_>) -> Outcome {
    let (s, other) = (cx.space("counts"), cx.space("counts-other"));
    let n = |v: &[&str]| strings(v);

    for k in ["a:1", "a:2", "a:3", "b:1"] {
        cx.put(&s, k, &[]).await?;
    }
    expect_eq!(
        cx.invalidate(&s, Target::Keys(&n(&["a:1"]))).await?,
        1,
        "key a:1"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Keys(&n(&["a:1"]))).await?,
        0,
        "key a:1 again"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Keys(&n(&["nope"]))).await?,
        0,
        "an absent key"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Keys(&n(&["a:2", "a:3", "a:2", "zz"])))
            .await?,
        2,
        "keys a:2, a:3, a:2, zz (absent)"
    );
    expect_eq!(cx.invalidate(&s, Target::Keys(&[])).await?, 0, "no keys");
    cx.present(&s, &["b:1"], &["a:1", "a:2", "a:3"]).await?;

    cx.put(&s, "x:1", &["t1"]).await?;
    cx.put(&s, "x:2", &["t1", "t2"]).await?;
    cx.put(&s, "x:3", &["t2"]).await?;
    cx.put(&s, "x:4", &["t3"]).await?;
    cx.put(&s, "x:5", &["t4", "t5"]).await?;
    cx.put(&s, "x:6", &["keep"]).await?;
    cx.put(&other, "x:1", &["t1"]).await?;
    expect_eq!(
        cx.invalidate(&s, Target::Tags(&n(&["t1"]))).await?,
        2,
        "tag t1"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Tags(&n(&["t1"]))).await?,
        0,
        "tag t1 again"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Tags(&n(&["t2", "t3"]))).await?,
        2,
        "tags t2, t3"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Tags(&n(&["t4", "t5"]))).await?,
        1,
        "tags t4, t5 (one entry carrying both)"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Tags(&n(&["none"]))).await?,
        0,
        "an unused tag"
    );
    expect_eq!(cx.invalidate(&s, Target::Tags(&[])).await?, 0, "no tags");
    cx.present(&s, &["b:1", "x:6"], &["x:1", "x:2", "x:3", "x:4", "x:5"])
        .await?;
    cx.present(&other, &["x:1"], &[]).await?;

    for k in ["p:1", "p:2", "p:3", "pp:1", "q:p:1"] {
        cx.put(&s, k, &[]).await?;
    }
    cx.put(&other, "p:1", &[]).await?;
    expect_eq!(
        cx.invalidate(&s, Target::Pattern("p:*")).await?,
        3,
        "pattern `p:*`"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Pattern("p:*")).await?,
        0,
        "pattern `p:*` again"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Pattern("p?:1")).await?,
        1,
        "pattern `p?:1`"
    );
    cx.present(&s, &["q:p:1", "b:1", "x:6"], &["p:1", "pp:1"])
        .await?;
    expect_eq!(
        cx.invalidate(&s, Target::Pattern("*")).await?,
        3,
        "pattern `*` (q:p:1, b:1, x:6)"
    );
    cx.present(&s, &[], &["q:p:1", "b:1", "x:6"]).await?;
    cx.present(&other, &["x:1", "p:1"], &[]).await?;

    // Entries that expired on their own are not counted as removed.
    cx.put_for(&s, "e:1", &["et"], SHORT).await?;
    cx.put_for(&s, "e:2", &["et"], SHORT).await?;
    cx.put_for(&s, "e:3", &[], SHORT).await?;
    cx.put_for(&s, "e:4", &[], SHORT).await?;
    tokio::time::sleep(PAST_SHORT).await;
    expect_eq!(
        cx.invalidate(&s, Target::Keys(&n(&["e:3"]))).await?,
        0,
        "an expired key"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Tags(&n(&["et"]))).await?,
        0,
        "a tag of expired entries"
    );
    expect_eq!(
        cx.invalidate(&s, Target::Pattern("e:*")).await?,
        0,
        "a pattern of an expired entry"
    );
    Ok(())
}

async fn fill_locks(cx: Cx<'_>) -> Outcome {
    let (s, other) = (cx.space("locks"), cx.space("locks-other"));
    let lock =
        |space, key, token, lease| op("try_lock", cx.store.try_lock(space, key, token, lease));
    let unlock = |space, key, token| op("unlock", cx.store.unlock(space, key, token));
    ensure!(
        lock(&s, "k", "one", LONG).await?,
        "a free lock was not taken"
    );
    ensure!(
        !lock(&s, "k", "two", LONG).await?,
        "a held lock was taken by another token"
    );
    ensure!(
        !lock(&s, "k", "one", LONG).await?,
        "a held lock was taken again by its holder"
    );
    ensure!(
        lock(&s, "k2", "two", LONG).await?,
        "the lock of another key was not free"
    );
    ensure!(
        lock(&other, "k", "two", LONG).await?,
        "the lock of the same key in another namespace was not free"
    );
    unlock(&s, "k", "two").await?;
    ensure!(
        !lock(&s, "k", "three", LONG).await?,
        "an unlock with another token released the lock"
    );
    unlock(&s, "k", "one").await?;
    ensure!(
        lock(&s, "k", "three", LONG).await?,
        "the lock was not free after its holder's unlock"
    );
    unlock(&s, "nobody", "one").await?;

    // A lease that runs out frees the lock; the old holder's late unlock leaves the new one's.
    ensure!(
        lock(&s, "lease", "old", SHORT).await?,
        "a free lock was not taken"
    );
    tokio::time::sleep(PAST_SHORT).await;
    ensure!(
        lock(&s, "lease", "new", LONG).await?,
        "the lock was still held {PAST_SHORT:?} after a {SHORT:?} lease"
    );
    unlock(&s, "lease", "old").await?;
    ensure!(
        !lock(&s, "lease", "third", LONG).await?,
        "the old holder's unlock released the new holder's lock"
    );
    Ok(())
}

/// The five built-in policies, and what each does to a namespace of capacity 3 after
/// `set a, b, c; get a; set d`: the evicted key, then the keys in eviction order.
const POLICIES: [(&str, Scoring, &str, [&str; 3]); 5] = [
    // Inserted a, b, c, d; reads do not count.
    ("FIFO", Scoring::FIFO, "a", ["b", "c", "d"]),
    ("LIFO", Scoring::LIFO, "c", ["d", "b", "a"]),
    // The read made a the most recent: b is the least.
    ("LRU", Scoring::LRU, "b", ["c", "a", "d"]),
    ("MRU", Scoring::MRU, "a", ["d", "c", "b"]),
    // a has two uses; among the ones with one, the least recent goes first.
    ("LFU", Scoring::LFU, "b", ["c", "d", "a"]),
];

async fn ranked_policies(cx: Cx<'_>, ranked: Arc<dyn RankedStore>) -> Outcome {
    for (name, scoring, victim, order) in POLICIES {
        let space = RankedSpace::standalone(&format!("{}ranked-{name}", cx.prefix));
        let spec = Spec::new(scoring, 3, STAMP_BITS);
        let set = |key: &'static str| {
            op(
                "ranked set",
                ranked.set(&space, key, Bytes::from_static(key.as_bytes()), None, spec),
            )
        };
        for k in ["a", "b", "c"] {
            expect_eq!(
                set(k).await?,
                Vec::<String>::new(),
                "{name}: evicted by set {k}"
            );
        }
        expect_eq!(
            op("ranked get", ranked.get(&space, "a", spec)).await?,
            val("a"),
            "{name}: get a"
        );
        expect_eq!(
            set("d").await?,
            vec![victim.to_owned()],
            "{name}: evicted by set d"
        );
        expect_eq!(
            op("ranked keys", ranked.keys(&space, spec)).await?,
            strings(&order),
            "{name}: keys in eviction order"
        );
        expect_eq!(
            op("ranked len", ranked.len(&space)).await?,
            3,
            "{name}: len"
        );
        expect_eq!(
            op("ranked get", ranked.get(&space, victim, spec)).await?,
            None,
            "{name}: get of the evicted {victim}"
        );
        ensure!(
            op("ranked delete", ranked.delete(&space, "d")).await?,
            "{name}: delete d removed nothing"
        );
        ensure!(
            !op("ranked delete", ranked.delete(&space, "d")).await?,
            "{name}: a second delete of d removed something"
        );
        expect_eq!(
            op("ranked len", ranked.len(&space)).await?,
            2,
            "{name}: len after delete"
        );
        expect_eq!(
            op("ranked clear", ranked.clear(&space)).await?,
            2,
            "{name}: clear"
        );
        expect_eq!(
            op("ranked len", ranked.len(&space)).await?,
            0,
            "{name}: len after clear"
        );
    }
    // An entry whose TTL passed is neither counted nor listed, and never evicted for a live one.
    let space = RankedSpace::standalone(&format!("{}ranked-ttl", cx.prefix));
    let spec = Spec::new(Scoring::LIFO, 2, STAMP_BITS);
    let v = || Bytes::from_static(b"v");
    op("ranked set", ranked.set(&space, "live", v(), None, spec)).await?;
    op(
        "ranked set",
        ranked.set(&space, "dead", v(), Some(SHORT), spec),
    )
    .await?;
    tokio::time::sleep(PAST_SHORT).await;
    expect_eq!(
        op("ranked len", ranked.len(&space)).await?,
        1,
        "TTL: len after one expired"
    );
    expect_eq!(
        op("ranked set", ranked.set(&space, "new", v(), None, spec)).await?,
        Vec::<String>::new(),
        "TTL: evicted by a set into the room the expired entry left"
    );
    expect_eq!(
        op("ranked keys", ranked.keys(&space, spec)).await?,
        strings(&["new", "live"]),
        "TTL: keys"
    );
    op("ranked clear", ranked.clear(&space)).await?;
    Ok(())
}

async fn ranked_route(cx: Cx<'_>, ranked: Arc<dyn RankedStore>) -> Outcome {
    let s = cx.space("ranked_route");
    let index = RankedSpace::route(s.shard(0));
    let spec = Spec::new(Scoring::FIFO, 2, STAMP_BITS);
    let record = |key| op("route_record", ranked.route_record(&index, key, LONG, spec));
    // A clock that is not zero, so a route read must really return it.
    cx.invalidate(&s, Target::Keys(&strings(&["r:0"]))).await?;
    // As a bounded route fills: a store write, then recording it.
    cx.put(&s, "r:1", &["rt"]).await?;
    expect_eq!(
        record("r:1").await?,
        Vec::<String>::new(),
        "evicted by recording r:1"
    );
    let read = op("read", cx.store.read(&s, "r:1")).await?;
    let route = op("route_read", ranked.route_read(&s, &index, "r:1", spec)).await?;
    expect_eq!(route.value, read.value, "route_read's value next to read's");
    expect_eq!(route.clock, read.clock, "route_read's clock next to read's");
    expect_eq!(
        op("route_read", ranked.route_read(&s, &index, "r:none", spec))
            .await?
            .value,
        None,
        "route_read of an absent key"
    );
    cx.put(&s, "r:2", &[]).await?;
    expect_eq!(
        record("r:2").await?,
        Vec::<String>::new(),
        "evicted by recording r:2"
    );
    cx.put(&s, "r:3", &[]).await?;
    expect_eq!(
        record("r:3").await?,
        strings(&["r:1"]),
        "evicted by recording r:3"
    );
    cx.present(&s, &["r:2", "r:3"], &["r:1"]).await?;
    expect_eq!(
        op("ranked keys", ranked.keys(&index, spec)).await?,
        strings(&["r:2", "r:3"]),
        "the route's keys in eviction order"
    );
    // An invalidation through the store takes the ranks of what it removes with it.
    cx.invalidate(&s, Target::Keys(&strings(&["r:2"]))).await?;
    expect_eq!(
        op("ranked len", ranked.len(&index)).await?,
        1,
        "the route's len after invalidating r:2"
    );
    cx.invalidate(&s, Target::Pattern("r:*")).await?;
    expect_eq!(
        op("ranked keys", ranked.keys(&index, spec)).await?,
        Vec::<String>::new(),
        "the route's keys after invalidating `r:*`"
    );
    Ok(())
}

/// A subscriber that records what it hears.
#[derive(Default)]
struct Recorder {
    messages: Mutex<Vec<Vec<u8>>>,
    subscribed: AtomicUsize,
}

impl Recorder {
    fn messages(&self) -> Vec<Vec<u8>> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl BusSink for Recorder {
    fn message(&self, payload: &[u8]) {
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(payload.to_vec());
    }
    fn subscribed(&self) {
        self.subscribed.fetch_add(1, Ordering::SeqCst);
    }
    fn lost(&self) {}
}

/// Polls `cond` every 10 ms for up to `wait`; whether it became true.
async fn eventually(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bus_check(cx: Cx<'_>, bus: Arc<dyn InvalidationBus>) -> Outcome {
    let (one, two) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let (c1, c2) = (format!("{}bus-1", cx.prefix), format!("{}bus-2", cx.prefix));
    let sink = |r: &Arc<Recorder>| {
        let r: Arc<dyn BusSink> = r.clone();
        Arc::downgrade(&r)
    };
    let _s1 = bus.subscribe(&c1, sink(&one));
    let _s2 = bus.subscribe(&c2, sink(&two));
    for (r, c) in [(&one, &c1), (&two, &c2)] {
        let up = eventually(cx.wait, || r.subscribed.load(Ordering::SeqCst) > 0).await;
        ensure!(
            up,
            "the subscription to {c:?} was not established within {:?}",
            cx.wait
        );
    }
    op("publish", bus.publish(&c1, b"first")).await?;
    if bus.is_local() {
        expect_eq!(
            one.messages(),
            vec![b"first".to_vec()],
            "what a local bus delivered to the subscriber of {c1:?} before publish returned"
        );
    }
    op("publish", bus.publish(&c2, b"second")).await?;
    let heard = eventually(cx.wait, || {
        !one.messages().is_empty() && !two.messages().is_empty()
    })
    .await;
    ensure!(
        heard,
        "within {:?}, the subscribers heard {:?} on {c1:?} and {:?} on {c2:?}",
        cx.wait,
        one.messages(),
        two.messages()
    );
    expect_eq!(
        one.messages(),
        vec![b"first".to_vec()],
        "what the subscriber of {c1:?} heard"
    );
    expect_eq!(
        two.messages(),
        vec![b"second".to_vec()],
        "what the subscriber of {c2:?} heard"
    );
    Ok(())
}
