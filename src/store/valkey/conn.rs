//! Hot-path connections: lanes held out of the pool (one server) or cluster connections, and
//! how Valkey errors map to [`StoreError`]s.

use super::ValkeyStore;
use crate::store::{StoreError, StoreErrorKind};
use deadpool_redis::cluster::{ClusterClient, ClusterConnection};
use deadpool_redis::redis::{self, aio::ConnectionLike, aio::MultiplexedConnection, RedisError};
use deadpool_redis::Pool;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Where hot-path connections come from.
pub(super) enum Conns {
    /// One server: lanes checked out of a deadpool pool.
    Single {
        pool: Pool,
        lanes: Box<[Mutex<Option<Held>>]>,
    },
    /// A cluster: lanes of cluster connections. A `ClusterConnection` already multiplexes one
    /// connection per node, follows `MOVED`/`ASK` redirects and refreshes the slot map itself,
    /// so pooling them would only add the pool's per-checkout `PING`.
    Cluster {
        client: Box<ClusterClient>,
        lanes: Box<[ClusterLane]>,
        /// Held while a lane connects: creating a cluster connection fetches the slot map and
        /// connects to every node, so a cold burst must not start one per request.
        connecting: Arc<tokio::sync::Mutex<()>>,
    },
}

/// A cluster lane: the connection and its id.
pub(super) type ClusterLane = Mutex<Option<(u64, ClusterConnection)>>;

pub(super) struct Held {
    pub(super) id: u64,
    pub(super) conn: MultiplexedConnection,
    // Keeps the pool slot while the lane holds the connection.
    pub(super) _pooled: deadpool_redis::Connection,
}

/// A hot-path connection: to the server, or to the cluster (routed by key slot).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

pub(super) fn invalid_url(e: RedisError) -> StoreError {
    StoreError::new(StoreErrorKind::Server, format!("invalid Valkey URL: {e}"))
}

impl ValkeyStore {
    pub(super) async fn lane(&self) -> Result<(usize, u64, Conn), StoreError> {
        let inner = &self.inner;
        let idx = inner.next_lane.fetch_add(1, Ordering::Relaxed);
        match &inner.conns {
            Conns::Single { pool, lanes } => {
                let idx = idx % lanes.len();
                if let Some(h) = lock(&lanes[idx]).as_ref() {
                    return Ok((idx, h.id, Conn::Single(h.conn.clone())));
                }
                let pooled = pool.get().await.map_err(pool_error)?;
                let conn: MultiplexedConnection = (*pooled).clone();
                let id = inner.lane_ids.fetch_add(1, Ordering::Relaxed);
                let mut slot = lock(&lanes[idx]);
                match slot.as_ref() {
                    // Another request filled the lane meanwhile: use it, give ours back.
                    Some(h) => Ok((idx, h.id, Conn::Single(h.conn.clone()))),
                    None => {
                        *slot = Some(Held {
                            id,
                            conn: conn.clone(),
                            _pooled: pooled,
                        });
                        Ok((idx, id, Conn::Single(conn)))
                    }
                }
            }
            Conns::Cluster {
                client,
                lanes,
                connecting,
            } => {
                let idx = idx % lanes.len();
                if let Some((id, c)) = lock(&lanes[idx]).as_ref() {
                    return Ok((idx, *id, Conn::Cluster(c.clone())));
                }
                // Connect in a task of its own holding the lock: a request that stops waiting
                // (its operation timed out) neither wastes the connection nor lets the next
                // request start another one meanwhile.
                let guard = connecting.clone().lock_owned().await;
                if let Some((id, c)) = lock(&lanes[idx]).as_ref() {
                    return Ok((idx, *id, Conn::Cluster(c.clone())));
                }
                let (inner, client) = (self.inner.clone(), ClusterClient::clone(client));
                let task = tokio::spawn(async move {
                    let _guard = guard;
                    let conn = client.get_async_connection().await?;
                    let id = inner.lane_ids.fetch_add(1, Ordering::Relaxed);
                    if let Conns::Cluster { lanes, .. } = &inner.conns {
                        *lock(&lanes[idx]) = Some((id, conn.clone()));
                    }
                    Ok::<_, RedisError>((id, conn))
                });
                match task.await {
                    Ok(Ok((id, conn))) => Ok((idx, id, Conn::Cluster(conn))),
                    Ok(Err(e)) => Err(redis_error(e)),
                    Err(e) => Err(StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("valkey cluster connect task: {e}"),
                    )),
                }
            }
        }
    }

    /// Empties a lane whose connection failed (a single server's: detached from the pool).
    ///
    /// A cluster connection reconnects to nodes and refreshes its slot map by itself (a failed
    /// primary's slots move to its replica), so it is only replaced when the client reports it
    /// cannot reach the cluster at all.
    pub(super) fn drop_lane(&self, idx: usize, id: u64, err: &RedisError) {
        match &self.inner.conns {
            Conns::Single { lanes, .. } => {
                if !(err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_unrecoverable_error())
                {
                    return;
                }
                let held = {
                    let mut slot = lock(&lanes[idx]);
                    match slot.as_ref() {
                        Some(h) if h.id == id => slot.take(),
                        _ => None,
                    }
                };
                if let Some(h) = held {
                    tracing::debug!(lane = idx, "valkey connection lost; lane will reconnect");
                    drop(deadpool_redis::Connection::take(h._pooled));
                }
            }
            Conns::Cluster { lanes, .. } => {
                if err.kind() != redis::ErrorKind::ClusterConnectionNotFound {
                    return;
                }
                let mut slot = lock(&lanes[idx]);
                if matches!(slot.as_ref(), Some((held, _)) if *held == id) {
                    tracing::debug!(
                        lane = idx,
                        "valkey cluster unreachable; lane will reconnect"
                    );
                    *slot = None;
                }
            }
        }
    }

    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let (idx, id, mut conn) = self.lane().await?;
        match f(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.drop_lane(idx, id, &e);
                Err(redis_error(e))
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Lanes hold plain data; a panic elsewhere cannot leave one inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn pool_error(e: deadpool_redis::PoolError) -> StoreError {
    match e {
        deadpool_redis::PoolError::Timeout(_) => {
            StoreError::new(StoreErrorKind::Timeout, format!("valkey pool: {e}"))
        }
        deadpool_redis::PoolError::Backend(e) => redis_error(e),
        e => StoreError::new(StoreErrorKind::Unavailable, format!("valkey pool: {e}")),
    }
}

pub(super) fn redis_error(e: RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreErrorKind::Unavailable
    } else {
        StoreErrorKind::Server
    };
    StoreError::new(kind, format!("valkey: {e}")).with_source(e)
}
