//! The invalidation bus on Valkey ([`InvalidationBus`] for [`ValkeyStore`]): `PUBLISH` on the
//! hot-path lanes, and per subscription a background task on a dedicated pub/sub connection that
//! delivers messages, checks the connection with a heartbeat, and reconnects with backoff,
//! telling its sink when the subscription is lost and when it is back.
//!
//! On Valkey Cluster the subscription is a classic `SUBSCRIBE` on one node (the seed nodes are
//! tried in turn): a `PUBLISH` on any node reaches every node's subscribers over the cluster bus,
//! so one subscription hears every instance, whichever node their announcement went to, and it
//! survives failovers and resharding of other nodes untouched. Sharded pub/sub (`SSUBSCRIBE`)
//! would keep the messages off the cluster bus but ties the subscription to the primary owning
//! the channel's slot, which has to be followed through every failover and migration; an
//! invalidation announcement is small and rare next to the cached traffic, so the simpler,
//! sturdier choice wins.

use super::ValkeyStore;
use crate::store::bus::{BusSink, InvalidationBus, Subscription, SubscriptionHandle};
use crate::store::StoreFuture;
use deadpool_redis::redis;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
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

impl InvalidationBus for ValkeyStore {
    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _receivers: i64 = self
                .run(async |c| {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async(c)
                        .await
                })
                .await?;
            Ok(())
        })
    }

    /// One server orders every `PUBLISH` of a channel; on a cluster every `PUBLISH` of a
    /// channel goes to the primary of its slot (the cluster client routes it by the channel
    /// name), which forwards them to the other nodes over one link each, in order.
    fn ordered(&self) -> bool {
        true
    }

    fn subscribe(&self, channel: &str, sink: Weak<dyn BusSink>) -> Subscription {
        let listener = Arc::new(Listener {
            clients: self.pubsub_clients().to_vec(),
            channel: channel.to_owned(),
            connect_timeout: self.connect_timeout().max(CONNECT_TIMEOUT_MIN),
            started: Arc::new(AtomicBool::new(false)),
            shutdown: watch::channel(()).0,
            sink,
        });
        // Subscribe now if a runtime runs this, else on first use.
        listener.ensure_started();
        Subscription::new(ListenerHandle(listener))
    }
}

struct ListenerHandle(Arc<Listener>);

impl SubscriptionHandle for ListenerHandle {
    fn ensure_started(&self) {
        self.0.ensure_started();
    }
}

struct Listener {
    /// The server, or a cluster's seed nodes: each attempt to subscribe tries the next one.
    clients: Vec<redis::Client>,
    channel: String,
    connect_timeout: Duration,
    started: Arc<AtomicBool>,
    // Dropped with the subscription: the task then stops and closes its connection.
    shutdown: watch::Sender<()>,
    sink: Weak<dyn BusSink>,
}

impl Listener {
    /// Starts the task if it is not running and a Tokio runtime is available.
    fn ensure_started(&self) {
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
            Task {
                sink: self.sink.clone(),
                started: self.started.clone(),
            },
            self.clients.clone(),
            self.channel.clone(),
            self.connect_timeout,
            shutdown,
        ));
    }
}

/// The task's handles. When the task ends for any reason but the subscription going away (its
/// runtime shut down, a panic), the sink is told the subscription is lost, so it never trusts a
/// subscription that no task serves; the next `ensure_started` in a running runtime starts a new
/// one.
struct Task {
    sink: Weak<dyn BusSink>,
    started: Arc<AtomicBool>,
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(s) = self.sink.upgrade() {
            s.lost();
        }
        self.started.store(false, Ordering::Release);
    }
}

async fn connect(client: &redis::Client, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

async fn run(
    task: Task,
    clients: Vec<redis::Client>,
    channel: String,
    connect_timeout: Duration,
    mut shutdown: watch::Receiver<()>,
) {
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
                if task.sink.strong_count() == 0 {
                    return;
                }
                if failures == 1 {
                    tracing::warn!(%channel, %error, "cannot subscribe to invalidations; retrying");
                } else {
                    tracing::debug!(%channel, %error, failures, "subscription attempt failed");
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (sink, mut stream) = pubsub.split();
        {
            let Some(s) = task.sink.upgrade() else { return };
            s.subscribed();
            if failures > 0 {
                tracing::info!(%channel, "subscribed to invalidations again");
            }
        }
        failures = 0;
        backoff = BACKOFF_MIN;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The heartbeat in flight: awaited alongside the messages, so a slow PONG never holds
        // announcements back.
        let mut ping: Option<std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>> = None;
        let reason = loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                msg = stream.next() => match msg {
                    Some(m) => {
                        let Some(s) = task.sink.upgrade() else { return };
                        s.message(m.get_payload_bytes());
                    }
                    None => break "connection closed",
                },
                _ = beat.tick(), if ping.is_none() => {
                    let mut sink = sink.clone();
                    ping = Some(Box::pin(async move {
                        tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await
                    }));
                }
                pong = async {
                    match ping.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                }, if ping.is_some() => {
                    ping = None;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => break "heartbeat failed",
                        Err(_) => break "heartbeat timed out",
                    }
                }
            }
        };
        let Some(s) = task.sink.upgrade() else { return };
        s.lost();
        tracing::warn!(%channel, reason, "lost the invalidation subscription; reconnecting");
    }
}
