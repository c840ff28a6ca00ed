//! OpenTelemetry instruments (cargo feature `opentelemetry`, formerly `metrics`; off by default).
//!
//! Every [`Cache`](crate::Cache) creates its instruments once, when it is built, from the meter
//! given to [`CacheBuilder::meter`](crate::CacheBuilder::meter) or else from
//! `opentelemetry::global::meter_with_scope("tower-valkey-cache")` as the global provider is
//! **at that moment**: install the application's meter provider before building caches (until one
//! is installed the global meter is a no-op and recording costs next to nothing).
//!
//! Nothing is public here but this page: the instruments are recorded where the crate already
//! counts [`Stats`](crate::Stats), times every store operation, and answers every request.
//! Attributes have bounded cardinality only: the
//! namespace, the route *template* (axum's `MatchedPath`, `"unknown"` without it), the outcome
//! and a few closed sets of labels; never keys, raw paths or user data. Function-cache calls
//! (`get_or_set*`) are counted in `cache.requests` without `http.route`. In Prometheus (through
//! `opentelemetry-prometheus` or the OTLP receiver) the names become `cache_requests_total`,
//! `cache_request_duration_seconds`, `db_client_operation_duration_seconds`, and so on.
//!
//! | name | type | unit | attributes | meaning |
//! |---|---|---|---|---|
//! | `cache.requests` | counter | `{request}` | `cache.namespace`, `cache.outcome`, `http.route`, `cache.reason` | requests by final outcome |
//! | `cache.request.duration` | histogram | `s` | as `cache.requests`; batch calls: `cache.outcome` `batch`, `cache.operation` | time until the response head; a function-cache call or batch call, whole |
//! | `cache.stores` | counter | `{entry}` | `cache.namespace` | entries written |
//! | `cache.stores.superseded` | counter | `{entry}` | `cache.namespace` | fills dropped: invalidated meanwhile |
//! | `cache.entry.size` | histogram | `By` | `cache.namespace` | stored size of written entries (after compression and encryption) |
//! | `cache.lock.waits` | counter | `{wait}` | `cache.namespace` | waits on another instance's fill lock |
//! | `cache.lock.timeouts` | counter | `{timeout}` | `cache.namespace` | fill-lock waits that timed out |
//! | `cache.invalidations` | counter | `{invalidation}` | `cache.namespace`, `cache.invalidation.kind` | invalidations applied |
//! | `cache.invalidation.entries` | counter | `{entry}` | `cache.namespace`, `cache.invalidation.kind` | entries they removed |
//! | `cache.invalidation.retries` | counter | `{invalidation}` | `cache.namespace`, `cache.retry.result` | failed invalidations `queued`, `merged` with one owed already, retries `succeeded`, namespace-wide invalidations owed instead (`floor`), invalidations still running past their caller's `invalidation_wait` (`late`) |
//! | `cache.evictions` | counter | `{entry}` | `cache.namespace`, `cache.eviction.policy` | entries evicted to stay within capacity |
//! | `cache.decode.failures` | counter | `{entry}` | `cache.namespace` | stored values that did not decode |
//! | `cache.refreshes` | counter | `{refresh}` | `cache.namespace`, `cache.refresh.result` | background refreshes |
//! | `cache.breaker.transitions` | counter | `{transition}` | `cache.namespace`, `cache.breaker.state` | circuit breaker opened / closed |
//! | `cache.warm.requests` | counter | `{request}` | `cache.namespace`, `cache.warm.result` | warming progress |
//! | `db.client.operation.duration` | histogram | `s` | `cache.namespace`, `db.system.name`, `db.operation.name`, `error.type` | store operations |
//! | `cache.l1.requests` | observable counter | `{request}` | `cache.namespace`, `cache.l1.result` (`hit`, `miss`, `bypassed`) | reads of the [L1 tier](crate::l1), with L1 on |
//! | `cache.l1.entries` | observable gauge | `{entry}` | `cache.namespace` | entries in L1 |
//! | `cache.l1.listening` | observable gauge | | `cache.namespace` | 1 while L1 hears invalidations (used), 0 while deaf |

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue, Value};
use std::time::Duration;

/// The instrumentation scope name of the default meter.
pub(crate) const SCOPE: &str = "tower-valkey-cache";

/// Bucket bounds (seconds) of the duration histograms: 100 µs to 10 s, for a cache whose
/// operations take well under a millisecond when healthy.
const DURATION_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds (bytes) of `cache.entry.size`: 64 B to 64 MiB.
const SIZE_BOUNDS: [f64; 11] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

/// One reading of the L1 tier for its instruments (plain numbers: this module imports nothing
/// of the crate).
#[derive(Clone, Copy, Debug)]
pub(crate) struct L1Reading {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) bypassed: u64,
    pub(crate) entries: u64,
    pub(crate) listening: bool,
}

/// What one request got, as recorded in `cache.requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Served {
    /// `hit`, `stale`, `miss`, `collapsed`, `bypass` or `store_unavailable`.
    pub(crate) outcome: &'static str,
    /// Why, for `bypass` (`authorization`, `method`...) and `stale`
    /// (`stale-while-revalidate`, `stale-if-error`).
    pub(crate) reason: Option<&'static str>,
}

impl Served {
    pub(crate) const HIT: Self = Self::new("hit", None);
    pub(crate) const MISS: Self = Self::new("miss", None);
    pub(crate) const COLLAPSED: Self = Self::new("collapsed", None);
    pub(crate) const STORE_UNAVAILABLE: Self = Self::new("store_unavailable", None);
    pub(crate) const STALE_IF_ERROR: Self = Self::new("stale", Some("stale-if-error"));
    pub(crate) const STALE_WHILE_REVALIDATE: Self =
        Self::new("stale", Some("stale-while-revalidate"));

    pub(crate) const fn new(outcome: &'static str, reason: Option<&'static str>) -> Self {
        Self { outcome, reason }
    }

    pub(crate) const fn bypass(reason: &'static str) -> Self {
        Self::new("bypass", Some(reason))
    }
}

/// The instruments of one cache, and its constant attributes.
pub(crate) struct Metrics {
    namespace: KeyValue,
    system: KeyValue,
    requests: Counter<u64>,
    request_duration: Histogram<f64>,
    stores: Counter<u64>,
    superseded: Counter<u64>,
    entry_size: Histogram<u64>,
    lock_waits: Counter<u64>,
    lock_timeouts: Counter<u64>,
    invalidations: Counter<u64>,
    invalidated: Counter<u64>,
    retries: Counter<u64>,
    evictions: Counter<u64>,
    decode_failures: Counter<u64>,
    refreshes: Counter<u64>,
    breaker: Counter<u64>,
    warm: Counter<u64>,
    op_duration: Histogram<f64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("namespace", &self.namespace.value)
            .field("db.system.name", &self.system.value)
            .finish_non_exhaustive()
    }
}

/// The meter used when the builder was given none: the global provider's, as it is now.
pub(crate) fn default_meter() -> Meter {
    opentelemetry::global::meter_with_scope(
        InstrumentationScope::builder(SCOPE)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    )
}

impl Metrics {
    pub(crate) fn new(meter: &Meter, namespace: &str, store: &'static str) -> Self {
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build()
        };
        let metrics = Self {
            // Reference-counted: cloned into every request's attributes without an allocation.
            namespace: KeyValue::new(
                "cache.namespace",
                StringValue::from(std::sync::Arc::<str>::from(namespace)),
            ),
            system: KeyValue::new("db.system.name", store),
            requests: counter(
                "cache.requests",
                "{request}",
                "Requests by what the cache did: hit, stale, miss, collapsed, bypass, store_unavailable",
            ),
            request_duration: seconds(
                "cache.request.duration",
                "Time from the request entering the cache until its response head, by outcome",
            ),
            stores: counter("cache.stores", "{entry}", "Entries written to the store"),
            superseded: counter(
                "cache.stores.superseded",
                "{entry}",
                "Fills not written because their key was invalidated while they ran",
            ),
            entry_size: meter
                .u64_histogram("cache.entry.size")
                .with_unit("By")
                .with_description("Encoded size of entries written to the store")
                .with_boundaries(SIZE_BOUNDS.to_vec())
                .build(),
            lock_waits: counter(
                "cache.lock.waits",
                "{wait}",
                "Misses that waited on another instance's fill lock",
            ),
            lock_timeouts: counter(
                "cache.lock.timeouts",
                "{timeout}",
                "Fill-lock waits that timed out (the waiter ran the handler)",
            ),
            invalidations: counter(
                "cache.invalidations",
                "{invalidation}",
                "Invalidations applied, by kind (key, tag, pattern)",
            ),
            invalidated: counter(
                "cache.invalidation.entries",
                "{entry}",
                "Entries removed by invalidations, by kind",
            ),
            retries: counter(
                "cache.invalidation.retries",
                "{invalidation}",
                "Failed invalidations queued for retry or merged with an owed one, retries that succeeded, namespace-wide invalidations owed instead",
            ),
            evictions: counter(
                "cache.evictions",
                "{entry}",
                "Entries evicted to keep a bounded namespace within capacity, by policy",
            ),
            decode_failures: counter(
                "cache.decode.failures",
                "{entry}",
                "Stored values that did not decode (treated as misses)",
            ),
            refreshes: counter(
                "cache.refreshes",
                "{refresh}",
                "Background refreshes (stale-while-revalidate, early refresh), ok or failed",
            ),
            breaker: counter(
                "cache.breaker.transitions",
                "{transition}",
                "Circuit breaker transitions to open or closed",
            ),
            warm: counter(
                "cache.warm.requests",
                "{request}",
                "Cache warming requests: warmed, already_fresh or failed",
            ),
            op_duration: seconds(
                "db.client.operation.duration",
                "Duration of store operations (error.type set when they failed)",
            ),
        };
        // The rare events' series exist from the start at 0, so that `increase()` and `rate()`
        // see their first occurrence (a counter series born at 1 shows no increase: Prometheus
        // has no earlier sample). scripts/prometheus-check caught this on the README's query.
        for state in ["open", "closed"] {
            metrics
                .breaker
                .add(0, &metrics.ns("cache.breaker.state", state));
        }
        for result in ["queued", "succeeded", "dropped"] {
            metrics
                .retries
                .add(0, &metrics.ns("cache.retry.result", result));
        }
        metrics
    }

    /// Registers the L1 tier's instruments, read from `read` at each collection (None once the
    /// tier is gone: nothing is observed).
    pub(crate) fn observe_l1(
        &self,
        meter: &Meter,
        read: impl Fn() -> Option<L1Reading> + Send + Sync + 'static,
    ) {
        let read = std::sync::Arc::new(read);
        let ns = self.namespace.clone();
        let (r, attrs) = (read.clone(), ns.clone());
        meter
            .u64_observable_counter("cache.l1.requests")
            .with_unit("{request}")
            .with_description("Reads of the L1 tier: hit, miss, or bypassed (deaf)")
            .with_callback(move |o| {
                if let Some(l1) = r() {
                    for (result, n) in [
                        ("hit", l1.hits),
                        ("miss", l1.misses),
                        ("bypassed", l1.bypassed),
                    ] {
                        o.observe(
                            n,
                            &[attrs.clone(), KeyValue::new("cache.l1.result", result)],
                        );
                    }
                }
            })
            .build();
        let (r, attrs) = (read.clone(), ns.clone());
        meter
            .u64_observable_gauge("cache.l1.entries")
            .with_unit("{entry}")
            .with_description("Entries in the L1 tier")
            .with_callback(move |o| {
                if let Some(l1) = r() {
                    o.observe(l1.entries, std::slice::from_ref(&attrs));
                }
            })
            .build();
        meter
            .u64_observable_gauge("cache.l1.listening")
            .with_description("1 while the L1 tier hears invalidations (and is used), 0 while deaf")
            .with_callback(move |o| {
                if let Some(l1) = read() {
                    o.observe(u64::from(l1.listening), std::slice::from_ref(&ns));
                }
            })
            .build();
    }

    fn ns(&self, key: &'static str, value: impl Into<Value>) -> [KeyValue; 2] {
        [self.namespace.clone(), KeyValue::new(key, value)]
    }

    /// One request's outcome and latency; `route` is None outside the layer (function cache).
    pub(crate) fn served(
        &self,
        served: Served,
        route: Option<StringValue>,
        elapsed: Option<Duration>,
    ) {
        // On the stack: this runs for every request.
        let ns = self.namespace.clone();
        let outcome = KeyValue::new("cache.outcome", served.outcome);
        let route = route.map(|r| KeyValue::new("http.route", r));
        let reason = served.reason.map(|r| KeyValue::new("cache.reason", r));
        let record = |attrs: &[KeyValue]| {
            self.requests.add(1, attrs);
            if let Some(d) = elapsed {
                self.request_duration.record(d.as_secs_f64(), attrs);
            }
        };
        match (route, reason) {
            (Some(route), Some(reason)) => record(&[ns, outcome, route, reason]),
            (Some(route), None) => record(&[ns, outcome, route]),
            (None, Some(reason)) => record(&[ns, outcome, reason]),
            (None, None) => record(&[ns, outcome]),
        }
    }

    /// One batch call of the function cache and how long it took.
    pub(crate) fn batch_call(&self, op: &'static str, elapsed: Duration) {
        let attrs = [
            self.namespace.clone(),
            KeyValue::new("cache.outcome", "batch"),
            KeyValue::new("cache.operation", op),
        ];
        self.request_duration.record(elapsed.as_secs_f64(), &attrs);
    }

    /// `n` requests of the function cache's batch operations.
    pub(crate) fn served_n(&self, served: Served, n: u64) {
        if n > 0 {
            let attrs = self.ns("cache.outcome", served.outcome);
            self.requests.add(n, &attrs);
        }
    }

    pub(crate) fn store_op(
        &self,
        op: &'static str,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        let attrs = [
            self.namespace.clone(),
            self.system.clone(),
            KeyValue::new("db.operation.name", op),
        ];
        let secs = elapsed.as_secs_f64();
        match error {
            None => self.op_duration.record(secs, &attrs),
            Some(e) => {
                let [a, b, c] = attrs;
                self.op_duration
                    .record(secs, &[a, b, c, KeyValue::new("error.type", e)]);
            }
        }
    }

    pub(crate) fn stored(&self, bytes: usize) {
        let attrs = std::slice::from_ref(&self.namespace);
        self.stores.add(1, attrs);
        self.entry_size.record(bytes as u64, attrs);
    }

    pub(crate) fn superseded(&self) {
        self.superseded
            .add(1, std::slice::from_ref(&self.namespace));
    }

    pub(crate) fn lock_wait(&self) {
        self.lock_waits
            .add(1, std::slice::from_ref(&self.namespace));
    }

    pub(crate) fn lock_timeout(&self) {
        self.lock_timeouts
            .add(1, std::slice::from_ref(&self.namespace));
    }

    pub(crate) fn invalidated(&self, kind: &'static str, removed: u64) {
        let attrs = self.ns("cache.invalidation.kind", kind);
        self.invalidations.add(1, &attrs);
        self.invalidated.add(removed, &attrs);
    }

    pub(crate) fn retry(&self, result: &'static str) {
        self.retries.add(1, &self.ns("cache.retry.result", result));
    }

    pub(crate) fn evicted(&self, policy: &str, n: u64) {
        let attrs = self.ns(
            "cache.eviction.policy",
            StringValue::from(policy.to_owned()),
        );
        self.evictions.add(n, &attrs);
    }

    pub(crate) fn decode_failure(&self) {
        self.decode_failures
            .add(1, std::slice::from_ref(&self.namespace));
    }

    pub(crate) fn refresh(&self, result: &'static str) {
        self.refreshes
            .add(1, &self.ns("cache.refresh.result", result));
    }

    pub(crate) fn breaker(&self, state: &'static str) {
        self.breaker.add(1, &self.ns("cache.breaker.state", state));
    }

    pub(crate) fn warm(&self, result: &'static str) {
        self.warm.add(1, &self.ns("cache.warm.result", result));
    }
}

/// The `http.route` attribute value of a request through a layer: the route template from
/// axum's `MatchedPath` (read once per request), `"unknown"` without it; never the raw path.
pub(crate) fn route_value(route: Option<&str>) -> StringValue {
    match route {
        Some(r) => interned(r),
        None => StringValue::from("unknown"),
    }
}

/// `route` as a reference-counted attribute value, from a small per-thread table of the routes
/// seen last, so a hot route costs a comparison instead of an allocation per request.
fn interned(route: &str) -> StringValue {
    const SLOTS: usize = 8;
    thread_local! {
        static ROUTES: std::cell::RefCell<(usize, Vec<StringValue>)> =
            const { std::cell::RefCell::new((0, Vec::new())) };
    }
    ROUTES
        .try_with(|cell| {
            let mut guard = cell.borrow_mut();
            let (next, routes) = &mut *guard;
            if let Some(v) = routes.iter().find(|v| v.as_str() == route) {
                return v.clone();
            }
            let v = StringValue::from(std::sync::Arc::<str>::from(route));
            if routes.len() < SLOTS {
                routes.push(v.clone());
            } else {
                routes[*next] = v.clone();
                *next = (*next + 1) % SLOTS;
            }
            v
        })
        .unwrap_or_else(|_| StringValue::from(route.to_owned()))
}
