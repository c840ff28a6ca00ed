//! The L1 announcement delay (issue 16 item 9): how long after an invalidation returned another
//! instance's L1 may still serve the entry it removed, on Valkey pub/sub, idle and under load.
//!
//! One publisher `Cache` (with L1) invalidates a fresh key at a steady rate; `--observers`
//! other "instances" (each its own `ValkeyStore`, so its own pub/sub connection, as another
//! process has) subscribe to the namespace's invalidation channel with a sink that records when
//! each announcement arrives, and each serves a read load from its own L1 `Cache` meanwhile.
//! For every announcement and observer it records the delay from the moment `invalidate_key`
//! returned (the window in which that observer's L1 could still serve the old entry: 0 when the
//! announcement arrived first) and from the moment it was called. The loaded run adds
//! `--readers` tasks per observer reading through L1 and the store and `--burners` OS threads
//! spinning on the 2 cores, so the pub/sub tasks compete for a CPU as on a busy instance. It also
//! prints the observers' `L1Stats::lagging` (reads that went to the store because their
//! announcements were not confirmed within `l1_max_lag`).
//!
//! `cargo run --release -p tvc-bench --bin l1_lag [-- --quick] [--observers N] [--readers N]
//! [--burners N] [--max-lag-ms N]`; starts its own valkey-server (or uses `VALKEY_URL`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower_valkey_cache::function::Options;
use tower_valkey_cache::store::bus::{BusSink, Subscription};
use tower_valkey_cache::store::Store;
use tower_valkey_cache::{Cache, ValkeyConfig, ValkeyStore};
use tvc_harness::ValkeyServer;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn store(url: &str) -> Result<ValkeyStore, Error> {
    Ok(ValkeyStore::with_config(
        ValkeyConfig::from_url(url)
            .response_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .wait_timeout(Duration::from_secs(2)),
    )?)
}

/// Records when each announcement (named by the one key it invalidates, `lag-N`) arrives.
#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<u64, Instant>>,
    up: AtomicBool,
}

impl BusSink for Arrivals {
    fn message(&self, payload: &[u8]) {
        let now = Instant::now();
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        // `{"from":..,"op":{"keys":["lag-17"]}}`: the key's number.
        let Some(start) = text.find("lag-") else {
            return;
        };
        let digits: String = text[start + 4..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            self.at.lock().unwrap().entry(n).or_insert(now);
        }
    }
    fn subscribed(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
    fn lost(&self) {
        self.up.store(false, Ordering::SeqCst);
    }
}

struct Observer {
    arrivals: Arc<Arrivals>,
    _subscription: Subscription,
    cache: Cache,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

struct Run<'a> {
    url: &'a str,
    label: &'a str,
    samples: u64,
    observers: usize,
    readers: usize,
    burners: usize,
    max_lag: Duration,
}

async fn run(r: Run<'_>) -> Result<(), Error> {
    let ns = format!("l1lag-{}", fastrand::u32(..));
    let publisher = Cache::builder(store(r.url)?)
        .namespace(&ns)
        .timeout(Duration::from_secs(5))
        .l1(1000, Duration::from_secs(30))
        .build();
    let mut observers = Vec::new();
    for _ in 0..r.observers {
        let s = store(r.url)?;
        let arrivals = Arc::new(Arrivals::default());
        let sink: Arc<dyn BusSink> = arrivals.clone();
        let bus = s.bus().ok_or("ValkeyStore has a bus")?;
        let subscription = bus.subscribe(&format!("{ns}|inv"), Arc::downgrade(&sink));
        subscription.ensure_started();
        let cache = Cache::builder(s)
            .namespace(&ns)
            .timeout(Duration::from_secs(5))
            .l1(10_000, Duration::from_secs(30))
            .l1_max_lag(r.max_lag)
            .build();
        observers.push(Observer {
            arrivals,
            _subscription: subscription,
            cache,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !observers
        .iter()
        .all(|o| o.arrivals.up.load(Ordering::SeqCst))
    {
        if Instant::now() > deadline {
            return Err("observers did not subscribe within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut burners = Vec::new();
    for _ in 0..r.burners {
        let stop = stop.clone();
        burners.push(std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for o in &observers {
        for _ in 0..r.readers {
            let (cache, stop) = (o.cache.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // 90% hot keys (L1 hits), 10% a spread of keys (store reads and fills).
                    let key = if fastrand::u8(..10) < 9 {
                        format!("hot-{}", fastrand::u8(..50))
                    } else {
                        format!("cold-{}", fastrand::u32(..100_000))
                    };
                    let _ = cache
                        .get_or_set_with(&key, &Options::new(), || async {
                            Ok::<_, Infallible>(vec![7u8; 256])
                        })
                        .await;
                }
            }));
        }
    }
    // Let the load settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut called = Vec::with_capacity(r.samples as usize);
    for n in 0..r.samples {
        let t0 = Instant::now();
        publisher.invalidate_key(&format!("lag-{n}")).await?;
        called.push((t0, Instant::now()));
        // ~200 invalidations a second, not in lockstep with anything.
        tokio::time::sleep(Duration::from_micros(3000 + fastrand::u64(..4000))).await;
    }
    // Wait for the last arrivals (or give up on them: they count as missing).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && observers
            .iter()
            .any(|o| (o.arrivals.at.lock().unwrap().len() as u64) < r.samples)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in readers {
        let _ = t.await;
    }
    for b in burners {
        let _ = b.join();
    }

    let mut after_return = Vec::new();
    let mut after_call = Vec::new();
    let mut missing = 0;
    for o in &observers {
        let at = o.arrivals.at.lock().unwrap();
        for (n, (t0, t1)) in called.iter().enumerate() {
            match at.get(&(n as u64)) {
                Some(arrived) => {
                    after_return.push(arrived.saturating_duration_since(*t1));
                    after_call.push(arrived.saturating_duration_since(*t0));
                }
                None => missing += 1,
            }
        }
    }
    after_return.sort();
    after_call.sort();
    let (mut lagging, mut lookups) = (0, 0);
    for o in &observers {
        let s = o.cache.l1_stats().ok_or("L1 is on")?;
        lagging += s.lagging;
        lookups += s.hits + s.misses + s.lagging + s.bypassed;
    }
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {missing} | {:.3}% of {lookups} |",
        r.label,
        after_return.len(),
        ms(percentile(&after_return, 0.5)),
        ms(percentile(&after_return, 0.99)),
        ms(after_return.last().copied().unwrap_or_default()),
        ms(percentile(&after_call, 0.5)),
        ms(percentile(&after_call, 0.99)),
        ms(after_call.last().copied().unwrap_or_default()),
        if lookups == 0 {
            0.0
        } else {
            lagging as f64 * 100.0 / lookups as f64
        },
    );
    Ok(())
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Error> {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = if quick { 300 } else { 2000 };
    let observers = arg("--observers", 4);
    let readers = arg("--readers", 16);
    let burners = arg("--burners", 2);
    let max_lag = Duration::from_millis(arg("--max-lag-ms", 250) as u64);
    // Two workers: the size of the machine; the burners then take CPU from them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server;
    let url = match std::env::var("VALKEY_URL") {
        Ok(url) => url,
        Err(_) => {
            server = ValkeyServer::start();
            server.url()
        }
    };
    rt.block_on(async {
        println!(
            "### L1 announcement delay: {samples} invalidations, {observers} observing instances, l1_max_lag {} ms\n",
            max_lag.as_millis()
        );
        println!("| load | deliveries | after return p50 | p99 | max | after call p50 | p99 | max | missing | reads lagging |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (label, readers, burners) in [
            ("idle".to_owned(), 0, 0),
            (
                format!("{readers} readers/instance + {burners} spinning threads"),
                readers,
                burners,
            ),
        ] {
            run(Run {
                url: &url,
                label: &label,
                samples,
                observers,
                readers,
                burners,
                max_lag,
            })
            .await?;
        }
        println!();
        Ok(())
    })
}
