//! [`BoundedCache`]: a typed, count-bounded cache of serde values.

use super::{BoundedStore, EvictionPolicy, Fifo, Lfu, Lifo, Lru, Mru};
use crate::store::ranked::{RankedSpace as Space, Spec, STAMP_BITS};
use crate::store::StoreError;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// A typed cache holding at most the policy's capacity of entries, evicting by its policy.
///
/// Values are serialized with `serde_json`. Every operation is one store round trip (one script
/// on Valkey), except [`clear`](Self::clear) on namespaces of more than 1,000 entries. On a
/// [`ValkeyStore`](crate::ValkeyStore) the namespace is shared by every process using the same
/// name; give them the same policy. Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_valkey_cache::eviction::{Lfu, ValkeyLfuCache};
/// use tower_valkey_cache::ValkeyStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = ValkeyStore::new("redis://127.0.0.1:6379")?;
/// let popular: ValkeyLfuCache<Vec<u32>> =
///     ValkeyLfuCache::new(store, "popular", Lfu::with_capacity(1_000))
///         .ttl(Duration::from_secs(600));
/// popular.set("search:shoes", &vec![1, 2, 3]).await?;
/// assert_eq!(popular.get("search:shoes").await?, Some(vec![1, 2, 3]));
/// # Ok(()) }
/// ```
pub struct BoundedCache<V, P = Lru> {
    store: BoundedStore,
    namespace: String,
    space: Space,
    policy: P,
    ttl: Option<Duration>,
    stamp_bits: u8,
    _value: PhantomData<fn() -> V>,
}

/// A [`BoundedCache`] evicting first in, first out. Also works on a
/// [`MemoryStore`](crate::MemoryStore), like every alias here.
pub type ValkeyFifoCache<V> = BoundedCache<V, Fifo>;
/// A [`BoundedCache`] evicting last in, first out.
pub type ValkeyLifoCache<V> = BoundedCache<V, Lifo>;
/// A [`BoundedCache`] evicting the least recently used entry.
pub type ValkeyLruCache<V> = BoundedCache<V, Lru>;
/// A [`BoundedCache`] evicting the most recently used entry.
pub type ValkeyMruCache<V> = BoundedCache<V, Mru>;
/// A [`BoundedCache`] evicting the least frequently used entry (ties: least recently used).
pub type ValkeyLfuCache<V> = BoundedCache<V, Lfu>;

impl<V, P: Clone> Clone for BoundedCache<V, P> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            namespace: self.namespace.clone(),
            space: self.space.clone(),
            policy: self.policy.clone(),
            ttl: self.ttl,
            stamp_bits: self.stamp_bits,
            _value: PhantomData,
        }
    }
}

impl<V, P: fmt::Debug> fmt::Debug for BoundedCache<V, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedCache")
            .field("store", &self.store)
            .field("namespace", &self.namespace)
            .field("policy", &self.policy)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Why a [`BoundedCache`] operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BoundedError {
    /// The store failed (connection, timeout, server error).
    Store(StoreError),
    /// The value could not be serialized.
    Serialize(serde_json::Error),
    /// The stored value does not deserialize into the cache's value type.
    Deserialize(serde_json::Error),
}

impl fmt::Display for BoundedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => e.fmt(f),
            Self::Serialize(e) => write!(f, "bounded cache value does not serialize: {e}"),
            Self::Deserialize(e) => write!(f, "bounded cache value does not deserialize: {e}"),
        }
    }
}

impl std::error::Error for BoundedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(e) => Some(e),
            Self::Serialize(e) | Self::Deserialize(e) => Some(e),
        }
    }
}

impl From<StoreError> for BoundedError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl<V, P> BoundedCache<V, P>
where
    V: Serialize + DeserializeOwned,
    P: EvictionPolicy,
{
    /// A cache over `store` (a [`ValkeyStore`](crate::ValkeyStore) or a
    /// [`MemoryStore`](crate::MemoryStore)) in `namespace`, evicting by `policy`. Entries do not
    /// expire unless a [TTL](Self::ttl) is set.
    ///
    /// # Panics
    ///
    /// If `namespace` is empty or contains braces (it becomes the keys' hash tag `{namespace}`).
    pub fn new(store: impl Into<BoundedStore>, namespace: &str, policy: P) -> Self {
        assert!(
            !namespace.is_empty() && !namespace.contains(['{', '}']),
            "bounded cache namespace `{namespace}` must be non-empty and without braces"
        );
        Self {
            store: store.into(),
            namespace: namespace.to_owned(),
            space: Space::standalone(namespace),
            policy,
            ttl: None,
            stamp_bits: STAMP_BITS,
            _value: PhantomData,
        }
    }

    /// The time to live of entries written by [`set`](Self::set). Default: none.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Test hook: how many bits of a counting rank hold the stamp (default 33). Smaller values
    /// make the stamp renumbering that happens every 2^bits operations testable.
    #[doc(hidden)]
    pub fn stamp_bits(mut self, bits: u8) -> Self {
        self.stamp_bits = bits.clamp(4, 52);
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    fn spec(&self) -> Spec {
        Spec::new(
            self.policy.scoring(),
            self.policy.capacity(),
            self.stamp_bits,
        )
    }

    /// Stores `value` under `key` with the cache's TTL. If `key` is new and the namespace is
    /// full, first evicts the entry the policy names; returns the evicted keys (usually none or
    /// one; more if the capacity was lowered).
    pub async fn set(&self, key: &str, value: &V) -> Result<Vec<String>, BoundedError> {
        self.set_with_ttl(key, value, self.ttl).await
    }

    /// [`set`](Self::set) with this entry's own time to live (`None`: it never expires).
    pub async fn set_with_ttl(
        &self,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>, BoundedError> {
        let bytes = Bytes::from(serde_json::to_vec(value).map_err(BoundedError::Serialize)?);
        Ok(self
            .store
            .0
            .set(&self.space, key, bytes, ttl, self.spec())
            .await?)
    }

    /// The value of `key`, if present; a read counts as a use for the policy (LRU, MRU, LFU).
    pub async fn get(&self, key: &str) -> Result<Option<V>, BoundedError> {
        match self.store.0.get(&self.space, key, self.spec()).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(BoundedError::Deserialize),
        }
    }

    /// Removes `key`; true if it was there.
    pub async fn delete(&self, key: &str) -> Result<bool, BoundedError> {
        Ok(self.store.0.delete(&self.space, key).await?)
    }

    /// How many live entries the namespace holds, O(log n) and read-only: entries that expired,
    /// were deleted or evicted are not counted (a value Valkey's `maxmemory` policy removed is,
    /// until its TTL would have ended: see the [module docs](super)). Never more than the
    /// capacity.
    pub async fn len(&self) -> Result<usize, BoundedError> {
        Ok(self.store.0.len(&self.space).await?)
    }

    /// Whether [`len`](Self::len) is 0.
    pub async fn is_empty(&self) -> Result<bool, BoundedError> {
        Ok(self.len().await? == 0)
    }

    /// The live keys in eviction order, next victim first, without touching them; drops expired
    /// entries from the index. O(n): for inspection and tests, not hot paths.
    pub async fn keys(&self) -> Result<Vec<String>, BoundedError> {
        Ok(self.store.0.keys(&self.space, self.spec()).await?)
    }

    /// Removes every entry and the namespace's bookkeeping; returns how many live entries were
    /// removed. On Valkey, one script per 1,000 entries.
    pub async fn clear(&self) -> Result<u64, BoundedError> {
        Ok(self.store.0.clear(&self.space).await?)
    }
}
