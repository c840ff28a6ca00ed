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

use crate::support::{Backend, Kind, StoreTimeouts, ValkeyServer};
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
    let space = space.shard(0);
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

/// Every script in the server's `SLOWLOG` (which must log every command): how many, and the
/// longest one's duration on the server, in µs.
async fn scripts_in_slowlog(server: &ValkeyServer) -> (usize, u64) {
    type Logged = (u64, u64, u64, Vec<Vec<u8>>, String, String);
    let log: Vec<Logged> = server.cli(&["SLOWLOG", "GET", "-1"]).await;
    let scripts = log.iter().filter(|(_, _, _, args, _, _)| {
        args.first()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"evalsha") || c.eq_ignore_ascii_case(b"eval"))
    });
    scripts.fold((0, 0), |(n, max), (_, _, us, _, _, _)| {
        (n + 1, max.max(*us))
    })
}

/// The tag invalidation this crate ran before it removed tags in steps (`invalidate_tags.lua` of
/// 0.1 up to issue 16, verbatim but for the clock's `INCR`): every member in one atomic script.
/// `TVC_BEFORE=1` runs it instead of `Cache::invalidate_tag`, with the same 100 ms timeout the
/// tag invalidation had then, to measure what it did to other clients.
const ONE_SCRIPT: &str = concat!(
    include_str!("../../src/store/valkey/lua/ranked_forget.lua"),
    r#"
local c, n = redis.call('INCR', KEYS[1]), 0
local prefix, members = ARGV[2], {}
for i = 5, #KEYS, 2 do
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
  local ms = redis.call('SMEMBERS', KEYS[i])
  for j = 1, #ms, 1000 do
    n = n + redis.call('UNLINK', unpack(ms, j, math.min(j + 999, #ms)))
  end
  for _, m in ipairs(ms) do
    if m:sub(1, #prefix) == prefix then members[#members + 1] = m:sub(#prefix + 1) end
  end
  redis.call('UNLINK', KEYS[i])
end
forget(KEYS[2], KEYS[3], KEYS[4], members)
return n
"#
);

/// Runs [`ONE_SCRIPT`] for tag `big` of `cache`'s namespace on a connection of its own with a
/// 100 ms response timeout (the per-operation timeout tags had).
async fn one_script(server: &ValkeyServer, cache: &Cache) -> Result<u64, String> {
    let space = cache.key_space();
    let client = redis::Client::open(server.url()).unwrap();
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_millis(100)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let space = space.shard(0);
    let route = tower_valkey_cache::store::ranked::RankedSpace::route(space);
    redis::Script::new(ONE_SCRIPT)
        .key("ts|old-clock")
        .key(&route.index)
        .key(&route.seq)
        .key(&route.expiry)
        .key(space.tag_set("big"))
        .key(space.tag_tombstone("big"))
        .arg(60_000)
        .arg(space.entry_prefix())
        .invoke_async(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

/// PING round trips on a connection of their own, and reads through another cache with the
/// default 100 ms operation timeout, while one cache invalidates a 50,000-member tag
/// (`TVC_BEFORE=1`: while the one-script invalidation of before runs, [`ONE_SCRIPT`]).
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
    // A response timeout far above any stall, so a PING's latency is measured, not cut.
    let ping_config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let ping = client
        .get_multiplexed_async_connection_with_config(&ping_config)
        .await
        .unwrap();
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
    // Every command in the slow log, to read each script's time on the server.
    let () = server
        .cli(&[
            "CONFIG",
            "SET",
            "slowlog-log-slower-than",
            "0",
            "slowlog-max-len",
            "100000",
        ])
        .await;
    let () = server.cli(&["SLOWLOG", "RESET"]).await;
    let started = Instant::now();
    let before = std::env::var("TVC_BEFORE").is_ok_and(|v| v == "1");
    let result = if before {
        one_script(&server, &cache).await
    } else {
        cache.invalidate_tag("big").await.map_err(|e| e.to_string())
    };
    let took = started.elapsed();
    // The server may still be running the work a timed-out call left (the one script): the
    // window lasts until it answers again, plus 100 ms.
    let _: String = server.cli(&["PING"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let window = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let pings = pinger.await.unwrap();
    let within = |from: Instant, len: Duration| -> Vec<Duration> {
        let pings = pings
            .iter()
            .filter(|(at, _)| *at >= from && *at <= from + len);
        pings.map(|(_, d)| *d).collect()
    };
    let mut quiet = within(control.0, control.1);
    let (q50, q99, qmax) = percentiles(&mut quiet);
    // The PINGs sent from the start of the invalidation until 100 ms after it returned.
    let mut samples = within(started, window);
    let (n, failed) = reads.await.unwrap();
    let (p50, p99, max) = percentiles(&mut samples);
    let (scripts, per_script) = stats_of(&server, "evalsha").await;
    let (logged, longest) = scripts_in_slowlog(&server).await;
    let left: usize = server
        .cli(&["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", "ts:t:*"])
        .await;
    println!(
        "{}: tag of {MEMBERS}: invalidate_tag -> {result:?} in {took:?}; {left} members left; \
         PING every ms on a second connection ({} sent from its start to 100 ms after it returned): p50 {p50:?}, p99 {p99:?}, max {max:?}; \
         reads through another cache (100 ms timeout): {n}, failed {failed}; \
         server side: {scripts} scripts, {per_script} µs each on average, longest {longest} µs \
         (of {logged} in the slow log); \
         control (500 ms, nothing else running): p50 {q50:?}, p99 {q99:?}, max {qmax:?}",
        if before { "before (one script)" } else { "after (bounded steps)" },
        samples.len()
    );
}

/// A 50,000-member tag is fully removed, the count is exact, other entries stay, and no single
/// script step handles more than a batch: the invalidation runs at least one `EVALSHA` per
/// batch of members (before, it was one script for all of them).
async fn large_tag_removed_in_bounded_steps(b: Backend) {
    const BATCH: usize = 500;
    let cache = match &b.kind {
        Kind::Valkey { server, .. } => {
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
            scripts > steps,
            "{scripts} scripts for {MEMBERS} members: a step handled more than {BATCH}"
        );
        assert!(
            scripts <= steps + 6,
            "{scripts} scripts: more steps than batches"
        );
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
