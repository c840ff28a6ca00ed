//! Tag invalidation at scale (issue 16 item 6): a tag with 50,000 members is removed in bounded
//! steps on a connection of its own, so other clients of the same Valkey keep their latency, and
//! the count it reports is exact.
//!
//! `ping_latency_while_a_large_tag_is_invalidated` is the measurement behind BENCHMARKS.md
//! (*Tag invalidation at scale*); it is `#[ignore]`d (timing, not a test):
//!
//! ```text
//! cargo test --all-features --test it tag_scale::ping_latency -- --ignored --nocapture
//! ```

use crate::support::{Backend, StoreTimeouts, ValkeyServer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_valkey_cache::store::Store;
use tower_valkey_cache::{Cache, MemoryStore, ValkeyConfig, ValkeyStore};

/// Members of the large tag.
const MEMBERS: usize = 50_000;
/// Entries of the namespace that do not carry it (they must survive).
const OTHERS: usize = 1_000;

/// Writes `MEMBERS` entries tagged `big` (and `OTHERS` untagged ones) in namespace `ns`, server
/// side: a script per 10,000 keys, each well within the client's response timeout.
async fn fill_valkey(server: &ValkeyServer, space: &tower_valkey_cache::store::KeySpace) {
    let script = "for i = tonumber(ARGV[3]), tonumber(ARGV[4]) - 1 do \
                    local k = ARGV[1] .. i \
                    redis.call('SET', k, 'value', 'EX', 600) \
                    if ARGV[2] ~= '' then redis.call('SADD', ARGV[2], k) end \
                  end";
    let set = space.tag_set("big");
    for (prefix, tag, n) in [
        (space.entry("t:"), set.as_str(), MEMBERS),
        (space.entry("o:"), "", OTHERS),
    ] {
        for from in (0..n).step_by(10_000) {
            let to = (from + 10_000).min(n);
            let () = server
                .cli(&[
                    "EVAL",
                    script,
                    "0",
                    &prefix,
                    tag,
                    &from.to_string(),
                    &to.to_string(),
                ])
                .await;
        }
    }
    let members: usize = server.cli(&["SCARD", &set]).await;
    assert_eq!(members, MEMBERS);
}

/// Latency percentiles of `samples` (sorted here): p50, p99, max.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

/// `INFO commandstats` calls of `cmd` (lowercase), 0 when it never ran.
async fn calls(server: &ValkeyServer, cmd: &str) -> u64 {
    let info: String = server.cli(&["INFO", "commandstats"]).await;
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `INFO commandstats` of `cmd`: calls and mean µs per call.
async fn stats_of(server: &ValkeyServer, cmd: &str) -> (u64, f64) {
    let info: String = server.cli(&["INFO", "commandstats"]).await;
    let prefix = format!("cmdstat_{cmd}:");
    let Some(line) = info.lines().find_map(|l| l.strip_prefix(&prefix)) else {
        return (0, 0.0);
    };
    let field = |name: &str| {
        line.split(',')
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("calls=") as u64, field("usec_per_call="))
}

/// PING round trips on a connection of their own, and reads through another cache with the
/// default 100 ms operation timeout, while one cache invalidates a 50,000-member tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn ping_latency_while_a_large_tag_is_invalidated() {
    let server = ValkeyServer::start();
    let mut config = ValkeyConfig::from_url(server.url());
    // TVC_BATCH: another step size than the default (to compare).
    if let Some(n) = std::env::var("TVC_BATCH").ok().and_then(|v| v.parse().ok()) {
        config = config.invalidation_batch(n);
    }
    let store = ValkeyStore::with_config(config).unwrap();
    // Default settings: the 100 ms operation timeout of hits.
    let cache = Cache::builder(store.clone()).namespace("ts").build();
    let reader = Cache::builder(store).namespace("tsr").build();
    fill_valkey(&server, cache.key_space()).await;
    // Warm: connections open, scripts loaded.
    cache.invalidate_tag("warm-up").await.unwrap();
    let _ = reader.store().read(reader.key_space(), "x").await;

    let client = redis::Client::open(server.url()).unwrap();
    let ping = client.get_multiplexed_async_connection().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Open loop: a PING sent every millisecond whatever the earlier ones are doing, as a client
    // with steady traffic sends them; each records when it was sent and how long it took.
    let pinger = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = tokio::task::JoinSet::new();
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let mut conn = ping.clone();
                sent.spawn(async move {
                    let t = Instant::now();
                    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                    (t, t.elapsed())
                });
            }
            sent.join_all().await
        }
    });
    let reads = tokio::spawn({
        let (stop, reader) = (stop.clone(), reader.clone());
        async move {
            let (mut n, mut failed) = (0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                failed += u32::from(reader.get::<String>("x").await.is_err());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (n, failed)
        }
    });
    // A control: PINGs while nothing else runs (the machine's own noise).
    let control = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let control = (control, control.elapsed());
    let () = server.cli(&["CONFIG", "RESETSTAT"]).await;
    let started = Instant::now();
    let result = cache.invalidate_tag("big").await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let window = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let pings = pinger.await.unwrap();
    let within = |from: Instant, len: Duration| -> Vec<Duration> {
        let pings = pings.iter().filter(|(at, _)| *at >= from && *at <= from + len);
        pings.map(|(_, d)| *d).collect()
    };
    let mut quiet = within(control.0, control.1);
    let (q50, q99, qmax) = percentiles(&mut quiet);
    // The PINGs sent from the start of the invalidation until 100 ms after it returned.
    let mut samples = within(started, window);
    let (n, failed) = reads.await.unwrap();
    let (p50, p99, max) = percentiles(&mut samples);
    let (scripts, per_script) = stats_of(&server, "evalsha").await;
    let left: usize = server
        .cli(&["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", "ts:t:*"])
        .await;
    println!(
        "tag of {MEMBERS}: invalidate_tag -> {result:?} in {took:?}; {left} members left; \
         PING every ms on a second connection ({} sent from its start to 100 ms after it returned): p50 {p50:?}, p99 {p99:?}, max {max:?}; \
         reads through another cache (100 ms timeout): {n}, failed {failed}; \
         server side: {scripts} scripts, {per_script} µs each on average; \
         control (500 ms, nothing else running): p50 {q50:?}, p99 {q99:?}, max {qmax:?}",
        samples.len()
    );
}

/// A 50,000-member tag is fully removed, the count is exact, other entries stay, and no single
/// script step handles more than a batch: the invalidation runs at least one `EVALSHA` per
/// batch of members (before, it was one script for all of them).
async fn large_tag_removed_in_bounded_steps(b: Backend) {
    const BATCH: usize = 500;
    let cache = match &b {
        Backend::Valkey { server, .. } => {
            let store = ValkeyStore::with_config(
                ValkeyConfig::from_url(server.url())
                    .response_timeout(Duration::from_secs(2))
                    .invalidation_batch(BATCH),
            )
            .unwrap();
            Cache::builder(store).namespace("ts").build()
        }
        _ => b.cache("ts", Duration::from_secs(2)),
    };
    match b.server() {
        Some(server) => fill_valkey(server, cache.key_space()).await,
        None => {
            let ttl = Duration::from_secs(600);
            let mut writes = Vec::new();
            for i in 0..MEMBERS {
                writes.push((format!("t:{i}"), vec!["big".to_owned()]));
            }
            for i in 0..OTHERS {
                writes.push((format!("o:{i}"), Vec::new()));
            }
            for chunk in writes.chunks(1000) {
                let batch: Vec<tower_valkey_cache::store::Write<'_>> = chunk
                    .iter()
                    .map(|(k, tags)| tower_valkey_cache::store::Write {
                        key: k,
                        value: bytes::Bytes::from_static(b"value"),
                        ttl,
                        tags,
                        since: None,
                    })
                    .collect();
                cache
                    .store()
                    .write_many(cache.key_space(), batch)
                    .await
                    .unwrap();
            }
        }
    }
    let evalsha_before = match b.server() {
        Some(s) => calls(s, "evalsha").await + calls(s, "eval").await,
        None => 0,
    };
    let removed = cache.invalidate_tag("big").await.unwrap();
    assert_eq!(removed, MEMBERS as u64, "the count is exact");
    assert_eq!(cache.pending_invalidations(), 0);
    let space = cache.key_space();
    for i in [0, 1, MEMBERS / 2, MEMBERS - 1] {
        let k = format!("t:{i}");
        let v = cache.store().read(space, &k).await.unwrap().value;
        assert!(v.is_none(), "{k} survived");
    }
    for i in [0, OTHERS - 1] {
        let k = format!("o:{i}");
        let v = cache.store().read(space, &k).await.unwrap().value;
        assert!(v.is_some(), "{k} was removed");
    }
    // Invalidating it again finds nothing.
    assert_eq!(cache.invalidate_tag("big").await.unwrap(), 0);
    let scripts = match b.server() {
        Some(s) => calls(s, "evalsha").await + calls(s, "eval").await - evalsha_before,
        None => 0,
    };
    if let Some(server) = b.server() {
        let left: usize = server
            .cli(&["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", "ts:t:*"])
            .await;
        assert_eq!(left, 0);
        let kept: usize = server
            .cli(&["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", "ts:o:*"])
            .await;
        assert_eq!(kept, OTHERS);
        // Scripts run: the first invalidation's steps (at least one per batch of members),
        // then the second's; every member was handled by a step of at most BATCH members.
        let steps = MEMBERS.div_ceil(BATCH) as u64;
        assert!(
            scripts >= steps + 1,
            "{scripts} scripts for {MEMBERS} members: a step handled more than {BATCH}"
        );
        assert!(scripts <= steps + 6, "{scripts} scripts: more steps than batches");
        // Nothing of the drain is left behind.
        let meta = server.keys("ts|*").await;
        assert!(
            meta.iter().all(|k| !k.contains("tag")),
            "tag bookkeeping left: {meta:?}"
        );
    }
}

mod valkey {
    crate::support::on!(super::Backend::valkey(super::StoreTimeouts::all(std::time::Duration::from_secs(2))) =>
        large_tag_removed_in_bounded_steps,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new().max_entries(100_000)) =>
        large_tag_removed_in_bounded_steps,
    );
}

