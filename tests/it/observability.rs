//! Observability: the OpenTelemetry instruments count exactly (OTel SDK in-memory exporter,
//! against a real Valkey), the observability example's `/metrics` serves them in the Prometheus
//! text format, and route attributes stay bounded. (Spans: tests/spans.rs.)

use crate::support;

#[allow(dead_code)]
#[path = "../../examples/observability.rs"]
mod example;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{eventually, get as get_req, request, send, ValkeyServer};
use tower_valkey_cache::store::{
    KeySpace, Lookup, LookupMany, Store, StoreFuture, Target, Write, Written,
};
use tower_valkey_cache::{Cache, CacheBuilder, CacheLayer, MemoryStore, ValkeyConfig, ValkeyStore};

const POLL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// An in-memory OTel pipeline and a readable snapshot of it
// ---------------------------------------------------------------------------------------------

/// Attributes of one series, sorted by key.
type Attrs = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq)]
enum Point {
    Sum(u64),
    /// A histogram point: its count, and the sum of its bucket counts (must equal the count).
    Hist {
        count: u64,
        in_buckets: u64,
    },
}

struct Otel {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

/// Every metric of the cache's scope: name -> (unit, series).
#[derive(Debug)]
struct Snapshot(BTreeMap<String, (String, BTreeMap<Attrs, Point>)>);

impl Otel {
    fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        Self { provider, exporter }
    }

    /// A cache builder whose instruments record into this pipeline.
    fn builder(&self, b: CacheBuilder) -> CacheBuilder {
        b.meter(self.provider.meter("tower-valkey-cache"))
    }

    fn snapshot(&self) -> Snapshot {
        self.exporter.reset();
        self.provider.force_flush().expect("flush metrics");
        let exported = self.exporter.get_finished_metrics().expect("metrics");
        let last = exported.last().expect("one export");
        let mut out = BTreeMap::new();
        for scope in last.scope_metrics() {
            assert_eq!(scope.scope().name(), "tower-valkey-cache");
            for m in scope.metrics() {
                let attrs = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| -> Attrs {
                    kvs.map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
                        .collect()
                };
                let mut series = BTreeMap::new();
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        assert!(s.is_monotonic(), "{} is a counter", m.name());
                        for dp in s.data_points() {
                            series.insert(attrs(&mut dp.attributes()), Point::Sum(dp.value()));
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for dp in h.data_points() {
                            series.insert(
                                attrs(&mut dp.attributes()),
                                Point::Hist {
                                    count: dp.count(),
                                    in_buckets: dp.bucket_counts().sum(),
                                },
                            );
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                        for dp in h.data_points() {
                            series.insert(
                                attrs(&mut dp.attributes()),
                                Point::Hist {
                                    count: dp.count(),
                                    in_buckets: dp.bucket_counts().sum(),
                                },
                            );
                        }
                    }
                    other => panic!("unexpected data for {}: {other:?}", m.name()),
                }
                out.insert(m.name().to_owned(), (m.unit().to_owned(), series));
            }
        }
        Snapshot(out)
    }
}

impl Snapshot {
    /// The series of counter `name`: attributes -> value.
    fn counter(&self, name: &str) -> BTreeMap<Attrs, u64> {
        self.series(name)
            .into_iter()
            .map(|(a, p)| match p {
                Point::Sum(v) => (a, v),
                p => panic!("{name} is not a counter: {p:?}"),
            })
            .collect()
    }

    /// The series of histogram `name`: attributes -> count (checking the buckets add up).
    fn histogram(&self, name: &str) -> BTreeMap<Attrs, u64> {
        self.series(name)
            .into_iter()
            .map(|(a, p)| match p {
                Point::Hist { count, in_buckets } => {
                    assert_eq!(
                        count, in_buckets,
                        "{name} {a:?}: buckets add up to the count"
                    );
                    (a, count)
                }
                p => panic!("{name} is not a histogram: {p:?}"),
            })
            .collect()
    }

    fn series(&self, name: &str) -> BTreeMap<Attrs, Point> {
        self.0.get(name).map(|(_, s)| s.clone()).unwrap_or_default()
    }

    fn unit(&self, name: &str) -> &str {
        &self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name}"))
            .0
    }
}

/// Expected series: each entry is (attributes without the namespace, value); the namespace
/// attribute is added.
fn expect(ns: &str, entries: &[(&[(&str, &str)], u64)]) -> BTreeMap<Attrs, u64> {
    entries
        .iter()
        .map(|(attrs, v)| {
            let mut a: Attrs = attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            a.insert("cache.namespace".into(), ns.into());
            (a, *v)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Exact counts over a scripted sequence against Valkey
// ---------------------------------------------------------------------------------------------

/// Counts the operations sent to a store, by the names the cache's metrics use.
#[derive(Clone, Debug, Default)]
struct Sent(Arc<Mutex<BTreeMap<String, u64>>>);

impl Sent {
    fn wrap<S: Store>(&self, inner: S) -> Counting<S> {
        Counting {
            inner,
            sent: self.clone(),
        }
    }

    /// `fut`, counted as sent when it is first polled (a future the cache builds but does not
    /// run, e.g. refused by the open circuit breaker, never reaches the server).
    fn counted<'a, T: 'a>(&self, op: &'static str, fut: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
        let sent = self.0.clone();
        Box::pin(async move {
            *sent.lock().unwrap().entry(op.to_owned()).or_insert(0) += 1;
            fut.await
        })
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Debug)]
struct Counting<S> {
    inner: S,
    sent: Sent,
}

impl<S: Store> Store for Counting<S> {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        self.sent.counted("read", self.inner.read(space, key))
    }
    fn write<'a>(&'a self, space: &'a KeySpace, write: Write<'a>) -> StoreFuture<'a, Written> {
        self.sent.counted("write", self.inner.write(space, write))
    }
    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        self.sent
            .counted("read_many", self.inner.read_many(space, keys))
    }
    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        self.sent
            .counted("write_many", self.inner.write_many(space, writes))
    }
    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        self.sent
            .counted("invalidate", self.inner.invalidate(space, target))
    }
    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        self.sent
            .counted("lock", self.inner.try_lock(space, key, token, lease))
    }
    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        self.sent
            .counted("unlock", self.inner.unlock(space, key, token))
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
    fn claim_layout<'a>(
        &'a self,
        key: &'a str,
        layout: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        self.sent
            .counted("layout", self.inner.claim_layout(key, layout))
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

const ITEMS: &str = "/items/{id}";

#[tokio::test]
async fn scripted_sequence_counts_exactly() {
    let mut server = ValkeyServer::start();
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .wait_timeout(Duration::from_secs(1)),
    )
    .expect("valkey store");
    let sent = Sent::default();
    let otel = Otel::new();
    let cache = otel
        .builder(Cache::builder(sent.wrap(store)))
        .namespace("obs")
        .timeout(Duration::from_secs(2))
        // Opens at the second consecutive failure and stays open for the rest of the test.
        .circuit_breaker(2, Duration::from_secs(600))
        .build();
    // The example's app: `/items/{id}` (60 s, PUT invalidates), `/news` (1 s + SWR), `/metrics`.
    let app = example::app(cache.clone(), prometheus::Registry::new());

    // miss, hit, bypass
    assert!(get_req(&app, "/items/1")
        .await
        .cache_status()
        .ends_with("stored"));
    assert!(get_req(&app, "/items/1").await.is_hit());
    let r = send(
        &app,
        request("GET", "/items/1", &[("authorization", "Bearer a")]),
    )
    .await;
    assert!(r
        .cache_status()
        .ends_with("fwd=bypass; detail=authorization"));

    // miss, then stale while a background refresh stores a new entry
    assert!(get_req(&app, "/news")
        .await
        .cache_status()
        .ends_with("stored"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get_req(&app, "/news").await;
    assert!(
        r.cache_status().contains("; hit; ttl=-"),
        "{}",
        r.cache_status()
    );
    eventually(POLL, "the background refresh", || async {
        (cache.stats().refreshes == 1).then_some(())
    })
    .await;

    // invalidation, then a miss again
    let r = send(&app, request("PUT", "/items/1", &[])).await;
    assert_eq!(r.text(), "updated\n");
    assert!(get_req(&app, "/items/1")
        .await
        .cache_status()
        .ends_with("stored"));

    // an entry that does not decode: a miss that overwrites it
    let _: () = server.cli(&["SET", "obs:item:7", "garbage"]).await;
    assert!(get_req(&app, "/items/7")
        .await
        .cache_status()
        .ends_with("stored"));

    // the function cache: a miss, then a hit (no route)
    for _ in 0..2 {
        let v: Result<u32, std::sync::Arc<std::io::Error>> =
            cache.get_or_set("fn:1", || async { Ok(7) }).await;
        assert_eq!(v.unwrap(), 7);
    }

    // Valkey stopped: two failed reads open the breaker; the third request is not even sent
    server.stop();
    for id in 2..5 {
        let r = get_req(&app, &format!("/items/{id}")).await;
        assert!(
            r.cache_status().ends_with("detail=store-unavailable"),
            "{}",
            r.cache_status()
        );
    }

    let s = otel.snapshot();
    let route = |o: &'static str| [("cache.outcome", o), ("http.route", ITEMS)];
    assert_eq!(
        s.counter("cache.requests"),
        expect(
            "obs",
            &[
                (&route("miss"), 3),
                (&route("hit"), 1),
                (
                    &[
                        ("cache.outcome", "bypass"),
                        ("cache.reason", "authorization"),
                        ("http.route", ITEMS)
                    ],
                    1
                ),
                (&route("store_unavailable"), 3),
                (&[("cache.outcome", "miss"), ("http.route", "/news")], 1),
                (
                    &[
                        ("cache.outcome", "stale"),
                        ("cache.reason", "stale-while-revalidate"),
                        ("http.route", "/news")
                    ],
                    1
                ),
                (&[("cache.outcome", "miss")], 1),
                (&[("cache.outcome", "hit")], 1),
            ]
        )
    );
    // One latency per request, with the same attributes.
    assert_eq!(
        s.histogram("cache.request.duration"),
        s.counter("cache.requests")
    );
    assert_eq!(s.unit("cache.request.duration"), "s");

    // items/1 twice, news, its refresh, items/7, fn:1
    assert_eq!(s.counter("cache.stores"), expect("obs", &[(&[], 6)]));
    assert_eq!(s.histogram("cache.entry.size"), expect("obs", &[(&[], 6)]));
    assert_eq!(s.unit("cache.entry.size"), "By");
    assert_eq!(
        s.counter("cache.refreshes"),
        expect("obs", &[(&[("cache.refresh.result", "ok")], 1)])
    );
    let key = [("cache.invalidation.kind", "key")];
    assert_eq!(
        s.counter("cache.invalidations"),
        expect("obs", &[(&key, 1)])
    );
    assert_eq!(
        s.counter("cache.invalidation.entries"),
        expect("obs", &[(&key, 1)])
    );
    assert_eq!(
        s.counter("cache.decode.failures"),
        expect("obs", &[(&[], 1)])
    );
    assert_eq!(
        s.counter("cache.breaker.transitions"),
        // Both series exist from the start (at 0), so `increase()` sees the first opening.
        expect(
            "obs",
            &[
                (&[("cache.breaker.state", "open")], 1),
                (&[("cache.breaker.state", "closed")], 0)
            ]
        )
    );

    // Store operations: exactly the operations the store was sent (how many reads a miss makes
    // is the layer's business: the lookup, plus double-checks), split by outcome: the two reads
    // after the server stopped failed; the breaker's rejection was never sent.
    let ops = s.histogram("db.client.operation.duration");
    let mut failed_reads = 0;
    let mut by_op = BTreeMap::new();
    for (attrs, n) in &ops {
        assert_eq!(
            attrs.get("db.system.name").map(String::as_str),
            Some("valkey")
        );
        let op = attrs
            .get("db.operation.name")
            .expect("db.operation.name")
            .clone();
        if let Some(e) = attrs.get("error.type") {
            assert_eq!(op, "read");
            assert_eq!(e, "unavailable", "a stopped server refuses connections");
            failed_reads += n;
        }
        *by_op.entry(op).or_insert(0) += n;
    }
    assert_eq!(failed_reads, 2, "{ops:?}");
    assert_eq!(by_op, sent.snapshot(), "{ops:?}");
    assert_eq!(
        (by_op.get("write"), by_op.get("invalidate")),
        (Some(&6), Some(&1))
    );
    // At least one read per lookup: 9 before the stop (hits, stale, misses) and 2 after.
    assert!(by_op["read"] >= 11, "{by_op:?}");
    assert_eq!(s.unit("db.client.operation.duration"), "s");
    for quiet in [
        "cache.stores.superseded",
        "cache.lock.waits",
        "cache.lock.timeouts",
        "cache.evictions",
        "cache.warm.requests",
    ] {
        assert!(s.counter(quiet).is_empty(), "{quiet}");
    }
    // Created at 0 for every result when the cache is built, never counted here.
    assert_eq!(
        s.counter("cache.invalidation.retries"),
        expect(
            "obs",
            &[
                (&[("cache.retry.result", "queued")], 0),
                (&[("cache.retry.result", "succeeded")], 0),
                (&[("cache.retry.result", "dropped")], 0)
            ]
        )
    );

    // `Cache::stats()` counts the same events exactly.
    let st = cache.stats();
    assert_eq!(
        (
            st.hits,
            st.stale_hits,
            st.misses,
            st.bypasses,
            st.store_unavailable
        ),
        (2, 1, 5, 1, 3),
        "{st:?}"
    );
    assert_eq!(
        (st.stores, st.decode_failures, st.invalidated, st.refreshes),
        (6, 1, 1, 1)
    );
    assert_eq!((st.store_errors, st.breaker_opened), (2, 1));
    assert_eq!(st.requests(), 12);
    assert_eq!(
        st.requests(),
        s.counter("cache.requests").values().sum::<u64>()
    );
    assert!((st.hit_ratio() - 3.0 / 8.0).abs() < 1e-9);
}

// ---------------------------------------------------------------------------------------------
// `/metrics` of the observability example
// ---------------------------------------------------------------------------------------------

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4): `# TYPE` lines and samples
/// `name{label="value",...} value [timestamp]`, with `\\`, `\"` and `\n` escapes in values.
fn parse_prometheus(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            if words.next() == Some("TYPE") {
                let name = words.next().expect("TYPE name").to_owned();
                let kind = words.next().expect("TYPE kind").to_owned();
                assert!(types.insert(name, kind).is_none(), "one TYPE per family");
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = line[..name_end].to_owned();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let mut end = None;
            loop {
                // label name
                let mut key = String::new();
                let mut closed = false;
                for (i, c) in chars.by_ref() {
                    match c {
                        '=' => break,
                        '}' => {
                            end = Some(i);
                            closed = true;
                            break;
                        }
                        ',' | ' ' => {}
                        c => key.push(c),
                    }
                }
                if closed {
                    break;
                }
                assert_eq!(
                    chars.next().map(|(_, c)| c),
                    Some('"'),
                    "quoted value: {line}"
                );
                let mut value = String::new();
                loop {
                    match chars
                        .next()
                        .unwrap_or_else(|| panic!("unterminated: {line}"))
                    {
                        (_, '\\') => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c) => value.push(c),
                            None => panic!("bad escape: {line}"),
                        },
                        (_, '"') => break,
                        (_, c) => value.push(c),
                    }
                }
                assert!(
                    labels.insert(key, value).is_none(),
                    "duplicate label: {line}"
                );
            }
            let end = end.unwrap_or_else(|| panic!("unclosed labels: {line}"));
            rest = &after[end + 1..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("value {v}: {e}")),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    (types, samples)
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "one {name}{labels:?}, found {found:?}");
    found[0].value
}

/// The L1 tier's instruments (observable: read at each collection) say what `l1_stats` says,
/// in Prometheus' names; a cache without L1 has none.
#[tokio::test]
async fn l1_instruments_follow_l1_stats() {
    let registry = prometheus::Registry::new();
    let provider = example::prometheus_pipeline(&registry).expect("pipeline");
    let cache = Cache::builder(MemoryStore::new())
        .namespace("l1m")
        .meter(provider.meter("tower-valkey-cache"))
        .l1(100, Duration::from_secs(60))
        .build();
    let _plain = Cache::builder(MemoryStore::new())
        .namespace("nol1")
        .meter(provider.meter("tower-valkey-cache"))
        .build();
    let opts = tower_valkey_cache::function::Options::new();
    for _ in 0..3 {
        let v: Result<u32, std::sync::Arc<std::io::Error>> =
            cache.get_or_set_with("k", &opts, || async { Ok(1) }).await;
        assert_eq!(v.unwrap(), 1);
    }
    let l1 = cache.l1_stats().expect("L1 on");
    assert!(l1.hits >= 1 && l1.misses >= 1, "{l1:?}");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    let (types, samples) = parse_prometheus(&text);
    assert_eq!(
        types.get("cache_l1_requests_total").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        types.get("cache_l1_entries").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        types.get("cache_l1_listening").map(String::as_str),
        Some("gauge")
    );
    let ns = ("cache_namespace", "l1m");
    let l1 = cache.l1_stats().expect("L1 on");
    for (result, n) in [
        ("hit", l1.hits),
        ("miss", l1.misses),
        ("bypassed", l1.bypassed),
    ] {
        let got = value(
            &samples,
            "cache_l1_requests_total",
            &[ns, ("cache_l1_result", result)],
        );
        assert_eq!(got, n as f64, "{result}");
    }
    assert_eq!(
        value(&samples, "cache_l1_entries", &[ns]),
        l1.entries as f64
    );
    assert_eq!(value(&samples, "cache_l1_listening", &[ns]), 1.0);
    assert!(
        !samples.iter().any(|s| s.name.starts_with("cache_l1_")
            && s.labels.get("cache_namespace").map(String::as_str) == Some("nol1")),
        "no L1 series for a cache without L1"
    );
}

#[tokio::test]
async fn example_metrics_endpoint_serves_the_instruments() {
    let registry = prometheus::Registry::new();
    let provider = example::prometheus_pipeline(&registry).expect("pipeline");
    let sent = Sent::default();
    let cache = example::cache(sent.wrap(MemoryStore::new()), &provider);
    let app = example::app(cache, registry);

    for (method, uri, headers) in [
        ("GET", "/items/1", &[][..]),
        ("GET", "/items/1", &[]),
        ("GET", "/items/1", &[]),
        ("GET", "/items/2", &[]),
        ("GET", "/items/2", &[("authorization", "Bearer a")]),
        ("PUT", "/items/1", &[]),
        ("GET", "/items/1", &[]),
    ] {
        let r = send(&app, request(method, uri, headers)).await;
        assert!(r.status.is_success(), "{method} {uri}");
    }
    let r = get_req(&app, "/metrics").await;
    assert!(r.header("content-type").starts_with("text/plain"));
    let (types, samples) = parse_prometheus(r.text());

    for (family, kind) in [
        ("cache_requests_total", "counter"),
        ("cache_stores_total", "counter"),
        ("cache_invalidations_total", "counter"),
        ("cache_invalidation_entries_total", "counter"),
        ("cache_request_duration_seconds", "histogram"),
        ("db_client_operation_duration_seconds", "histogram"),
        ("cache_entry_size_bytes", "histogram"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }

    let ns = ("cache_namespace", "example");
    let route = ("http_route", "/items/{id}");
    let requests = |outcome: &str| {
        value(
            &samples,
            "cache_requests_total",
            &[ns, route, ("cache_outcome", outcome)],
        )
    };
    assert_eq!(requests("miss"), 3.0);
    assert_eq!(requests("hit"), 2.0);
    assert_eq!(requests("bypass"), 1.0);
    assert_eq!(
        value(
            &samples,
            "cache_requests_total",
            &[
                ns,
                ("cache_outcome", "bypass"),
                ("cache_reason", "authorization")
            ]
        ),
        1.0
    );
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "cache_requests_total")
            .count(),
        3,
        "hit, miss and bypass on one route"
    );
    for outcome in ["miss", "hit", "bypass"] {
        let labels = [ns, route, ("cache_outcome", outcome)];
        let count = value(&samples, "cache_request_duration_seconds_count", &labels);
        assert_eq!(count, requests(outcome));
        let mut inf = labels.to_vec();
        inf.push(("le", "+Inf"));
        assert_eq!(
            value(&samples, "cache_request_duration_seconds_bucket", &inf),
            count
        );
    }
    assert_eq!(value(&samples, "cache_stores_total", &[ns]), 3.0);
    assert_eq!(value(&samples, "cache_entry_size_bytes_count", &[ns]), 3.0);
    let key = ("cache_invalidation_kind", "key");
    assert_eq!(
        value(&samples, "cache_invalidations_total", &[ns, key]),
        1.0
    );
    assert_eq!(
        value(&samples, "cache_invalidation_entries_total", &[ns, key]),
        1.0
    );
    let ops = |op: &str| {
        value(
            &samples,
            "db_client_operation_duration_seconds_count",
            &[ns, ("db_system_name", "memory"), ("db_operation_name", op)],
        )
    };
    // Exactly the operations the store was sent: three writes, one invalidation, the reads (at
    // least one per lookup: five), and the one claim of the namespace's key layout before the
    // first of them.
    let sent = sent.snapshot();
    assert_eq!(sent.len(), 4, "{sent:?}");
    for (op, n) in &sent {
        assert_eq!(ops(op), *n as f64, "{op}");
    }
    assert_eq!(
        (ops("write"), ops("invalidate"), ops("layout")),
        (3.0, 1.0, 1.0)
    );
    assert!(ops("read") >= 5.0);

    // No series carries a raw path or a key.
    for s in &samples {
        for v in s.labels.values() {
            assert!(
                !v.contains("/items/1") && !v.contains("/items/2") && !v.contains("item:"),
                "{s:?}"
            );
        }
    }
    provider.shutdown().expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Cardinality
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn distinct_ids_share_one_route_attribute() {
    const N: u64 = 10_000;
    let otel = Otel::new();
    let cache = otel
        .builder(Cache::builder(MemoryStore::new()))
        .namespace("card")
        .build();
    let app = Router::new().route(
        "/items/{id}",
        get(|Path(id): Path<u64>| async move { format!("item {id}") })
            .route_layer(CacheLayer::new(cache.clone()).key("item:{id}")),
    );
    for id in 0..N {
        let r = get_req(&app, &format!("/items/{id}")).await;
        assert_eq!(r.status, http::StatusCode::OK);
    }
    let s = otel.snapshot();
    let miss = expect(
        "card",
        &[(&[("cache.outcome", "miss"), ("http.route", ITEMS)], N)],
    );
    assert_eq!(s.counter("cache.requests"), miss);
    assert_eq!(s.histogram("cache.request.duration"), miss);
    // Across every instrument, one route value and no attribute that grows with the ids.
    let mut routes = BTreeSet::new();
    for (name, (_, series)) in &s.0 {
        // At most 3: `cache.invalidation.retries` starts with one series per result, at 0.
        assert!(series.len() <= 3, "{name}: {} series", series.len());
        for attrs in series.keys() {
            routes.extend(attrs.get("http.route").cloned());
        }
    }
    assert_eq!(routes, BTreeSet::from([ITEMS.to_owned()]));
    assert_eq!(cache.stats().misses, N);
}

// ---------------------------------------------------------------------------------------------
// Batch calls in cache.request.duration
// ---------------------------------------------------------------------------------------------

/// `get_many`, `get_or_set_many`, `set_many` and `warm_values` are timed in
/// `cache.request.duration`, one sample per call (`cache.outcome` `batch`, `cache.operation` the
/// call); before, only single-key calls and layer requests were.
async fn batch_calls_are_timed(store: impl Store) {
    let otel = Otel::new();
    let cache = otel
        .builder(Cache::builder(store).namespace("batch").timeout(POLL))
        .build();
    let opts = tower_valkey_cache::function::Options::new();
    let keys: Vec<String> = (0..3).map(|i| format!("k:{i}")).collect();
    cache
        .set_many(keys.iter().map(|k| (k.as_str(), &1u32)), &opts)
        .await
        .unwrap();
    let got: Vec<Option<u32>> = cache.get_many(&keys).await.unwrap();
    assert_eq!(got, vec![Some(1); 3]);
    let loaded = cache
        .get_or_set_many(
            &[0u32, 5],
            |i| format!("k:{i}"),
            &opts,
            |ids| async move { Ok::<_, ()>(ids.into_iter().map(|i| (i, i)).collect()) },
        )
        .await
        .unwrap();
    assert_eq!(loaded, vec![Some(1), Some(5)]);
    let n = cache
        .warm_values((0..4).map(|i| (format!("w:{i}"), i)), 2, &opts)
        .await
        .unwrap();
    assert_eq!(n, 4);

    let s = otel.snapshot();
    let batch = |op: &'static str| [("cache.operation", op), ("cache.outcome", "batch")];
    let durations = s.histogram("cache.request.duration");
    assert_eq!(
        durations,
        expect(
            "batch",
            &[
                (&batch("get_many"), 1),
                (&batch("get_or_set_many"), 1),
                (&batch("set_many"), 1),
                (&batch("warm_values"), 1),
            ]
        )
    );
    // The ids of get_or_set_many are still counted one by one.
    assert_eq!(
        s.counter("cache.requests"),
        expect(
            "batch",
            &[
                (&[("cache.outcome", "hit")], 1),
                (&[("cache.outcome", "miss")], 1)
            ]
        )
    );
}

#[tokio::test]
async fn batch_calls_are_timed_on_memory() {
    batch_calls_are_timed(MemoryStore::new()).await
}

#[tokio::test]
async fn batch_calls_are_timed_on_valkey() {
    let server = ValkeyServer::start();
    let store = ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(POLL)
            .response_timeout(POLL),
    )
    .expect("valkey store");
    batch_calls_are_timed(store).await
}
