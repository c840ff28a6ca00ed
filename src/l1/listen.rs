//! The subscription of an L1 tier on Valkey: a background task on a dedicated pub/sub
//! connection that applies other instances' invalidations, checks the connection with a
//! heartbeat, and reconnects with backoff, keeping the tier deaf while it is down.
//!
//! On Valkey Cluster the subscription is a classic `SUBSCRIBE` on one node (the seed nodes are
//! tried in turn): a `PUBLISH` on any node reaches every node's subscribers over the cluster bus,
//! so one subscription hears every instance, whichever node their announcement went to, and it
//! survives failovers and resharding of other nodes untouched. Sharded pub/sub (`SSUBSCRIBE`)
//! would keep the messages off the cluster bus but ties the subscription to the primary owning
//! the channel's slot, which has to be followed through every failover and migration; an
//! invalidation announcement is small and rare next to the cached traffic, so the simpler,
//! sturdier choice wins.

use super::Tier;
use crate::store::ValkeyStore;
use deadpool_redis::redis;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::watch;

/// How often the subscription is checked with a `PING`.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat `PING` may take before the subscription is considered lost.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff: from the first to the last, doubling.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connecting and subscribing may take at least this long (the store's connect timeout is
/// tuned for the hot path, and a subscription is not on it).
const CONNECT_TIMEOUT_MIN: Duration = Duration::from_secs(1);

pub(super) struct Listener {
    /// The server, or a cluster's seed nodes: each attempt to subscribe tries the next one.
    clients: Vec<redis::Client>,
    channel: String,
    connect_timeout: Duration,
    started: AtomicBool,
    // Dropped with the tier: the task then stops and closes its connection.
    shutdown: watch::Sender<()>,
}

impl Listener {
    pub(super) fn new(store: &ValkeyStore, channel: &str) -> Self {
        Self {
            clients: store.pubsub_clients().to_vec(),
            channel: channel.to_owned(),
            connect_timeout: store.connect_timeout().max(CONNECT_TIMEOUT_MIN),
            started: AtomicBool::new(false),
            shutdown: watch::channel(()).0,
        }
    }

    /// Starts the task if it is not running and a Tokio runtime is available.
    pub(super) fn ensure_started(&self, tier: &Weak<Tier>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let shutdown = self.shutdown.subscribe();
        rt.spawn(run(
            tier.clone(),
            self.clients.clone(),
            self.channel.clone(),
            self.connect_timeout,
            shutdown,
        ));
    }
}

/// Marks the tier deaf if the task ends for any reason but the tier going away (its runtime shut
/// down, a panic), so a tier whose listener is gone never serves from L1; the next lookup in a
/// running runtime starts a new one.
struct DeafOnDrop(Weak<Tier>);

impl Drop for DeafOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.upgrade() {
            if t.listening.load(Ordering::SeqCst) {
                t.deafen();
            }
            if let Some(l) = &t.listener {
                l.started.store(false, Ordering::Release);
            }
        }
    }
}

async fn connect(client: &redis::Client, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

async fn run(
    tier: Weak<Tier>,
    clients: Vec<redis::Client>,
    channel: String,
    connect_timeout: Duration,
    mut shutdown: watch::Receiver<()>,
) {
    let _guard = DeafOnDrop(tier.clone());
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    let mut attempt = 0usize;
    loop {
        let Some(client) = clients.get(attempt % clients.len().max(1)) else {
            return;
        };
        attempt = attempt.wrapping_add(1);
        let connected = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(connect_timeout, connect(client, &channel)) => r,
        };
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {connect_timeout:?}"),
                };
                failures += 1;
                let Some(t) = tier.upgrade() else { return };
                if failures == 1 {
                    tracing::warn!(namespace = %t.namespace, %error, "L1 cannot subscribe to invalidations; L1 stays off (bypassed) until it can");
                } else {
                    tracing::debug!(namespace = %t.namespace, %error, failures, "L1 subscription attempt failed");
                }
                drop(t);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            let Some(t) = tier.upgrade() else { return };
            t.hear();
            if failures > 0 {
                tracing::info!(namespace = %t.namespace, "L1 subscribed to invalidations again; L1 flushed and back on");
            }
        }
        failures = 0;
        backoff = BACKOFF_MIN;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                msg = stream.next() => match msg {
                    Some(m) => {
                        let Some(t) = tier.upgrade() else { return };
                        t.apply(m.get_payload_bytes());
                    }
                    None => break "connection closed",
                },
                _ = beat.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => break "heartbeat failed",
                        Err(_) => break "heartbeat timed out",
                    }
                }
            }
        };
        let Some(t) = tier.upgrade() else { return };
        t.deafen();
        tracing::warn!(namespace = %t.namespace, reason, "L1 lost its invalidation subscription; L1 flushed and bypassed until it resubscribes");
    }
}
