//! The invalidation-bus capability of a store: how caches sharing it announce invalidations to
//! each other's L1 tiers.
//!
//! A store that can carry announcements returns an [`InvalidationBus`] from
//! [`Store::bus`](super::Store::bus): [`ValkeyStore`](super::ValkeyStore) publishes on Valkey
//! pub/sub and subscribes on a dedicated connection; [`MemoryStore`](super::MemoryStore) (one
//! process) returns a [`LocalBus`] that calls the subscribers synchronously. A custom store that
//! lives in one process keeps one `LocalBus` and returns clones of its `Arc`.

use super::StoreFuture;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

/// What a subscription delivers to its subscriber.
pub trait BusSink: Send + Sync + 'static {
    /// A message published on the channel (possibly by this subscriber itself).
    fn message(&self, payload: &[u8]);
    /// The subscription is (again) established: messages from now on are delivered.
    fn subscribed(&self);
    /// The subscription is lost: messages published until [`subscribed`](Self::subscribed) is
    /// called again may never arrive.
    fn lost(&self);
}

/// A live subscription; dropping it ends it.
pub struct Subscription {
    handle: Box<dyn SubscriptionHandle>,
}

/// What a bus keeps running for a [`Subscription`].
pub trait SubscriptionHandle: Send + Sync + 'static {
    /// Starts delivering if it could not start yet (no async runtime when it was created).
    fn ensure_started(&self);
}

impl Subscription {
    /// A subscription kept alive by `handle`.
    pub fn new(handle: impl SubscriptionHandle) -> Self {
        Self {
            handle: Box::new(handle),
        }
    }

    /// See [`SubscriptionHandle::ensure_started`].
    pub fn ensure_started(&self) {
        self.handle.ensure_started();
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// A channel for invalidation announcements between caches sharing a store.
pub trait InvalidationBus: Send + Sync + fmt::Debug + 'static {
    /// Publishes `payload` on `channel`.
    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, ()>;

    /// Subscribes `sink` to `channel` until the returned [`Subscription`] is dropped (or the sink
    /// is gone).
    fn subscribe(&self, channel: &str, sink: Weak<dyn BusSink>) -> Subscription;

    /// Whether every subscriber hears every publication before `publish` returns and a
    /// subscription can never be lost (a bus inside one process).
    fn is_local(&self) -> bool {
        false
    }

    /// Whether every subscriber of a channel receives its messages in the order their
    /// `publish` calls returned: then a subscriber that receives a message it published itself
    /// knows it has received every message published before it, which is how an
    /// L1 tier bounds how far behind the announcements it may be
    /// (`CacheBuilder::l1_max_lag`). Default false (no
    /// bound: a tier on such a bus relies on its TTL).
    fn ordered(&self) -> bool {
        false
    }
}

/// A bus inside one process: [`publish`](InvalidationBus::publish) calls every subscriber of the
/// channel before it returns. Create one per store and return clones of the `Arc` from
/// [`Store::bus`](super::Store::bus).
#[derive(Default)]
pub struct LocalBus {
    members: Mutex<Vec<(String, Weak<dyn BusSink>)>>,
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Vec<(String, Weak<dyn BusSink>)>> {
        // Weak handles only: a panic elsewhere cannot leave the list inconsistent.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBus")
            .field("subscribers", &self.members().len())
            .finish()
    }
}

struct LocalSubscription;

impl SubscriptionHandle for LocalSubscription {
    fn ensure_started(&self) {}
}

impl InvalidationBus for LocalBus {
    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, ()> {
        let sinks: Vec<Arc<dyn BusSink>> = {
            let mut m = self.members();
            m.retain(|(_, w)| w.strong_count() > 0);
            m.iter()
                .filter(|(c, _)| c == channel)
                .filter_map(|(_, w)| w.upgrade())
                .collect()
        };
        for s in sinks {
            s.message(payload);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(&self, channel: &str, sink: Weak<dyn BusSink>) -> Subscription {
        if let Some(s) = sink.upgrade() {
            s.subscribed();
        }
        let mut m = self.members();
        m.retain(|(_, w)| w.strong_count() > 0);
        m.push((channel.to_owned(), sink));
        Subscription::new(LocalSubscription)
    }

    fn is_local(&self) -> bool {
        true
    }
}
