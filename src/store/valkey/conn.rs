//! Connections: hot-path lanes held out of the pool (one server) or cluster connections, the
//! bulk lane beside them, and how Valkey errors map to [`StoreError`]s.
//!
//! The **bulk lane** is one more held connection that carries the multi-step invalidations (tag
//! drains, pattern scans), so their steps never queue in front of hot-path commands on a lane's
//! socket, and a slow step never makes a hit wait.
//!
//! A connection whose commands fail because it is lost (I/O error, reset, refused) **or no
//! longer authenticated** (`NOAUTH`, `WRONGPASS`: the server restarted with `requirepass`, an
//! operator changed ACLs) is dropped, and the next operation connects again with the URL's
//! credentials; both count as the store being unavailable.

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
        /// The bulk lane: a connection of its own (not pooled), whose responses may take
        /// [`ValkeyConfig::bulk_response_timeout`](super::ValkeyConfig::bulk_response_timeout).
        bulk: Mutex<Option<Held>>,
        // Boxed: the two are large, and a cluster store has neither.
        bulk_client: Box<redis::Client>,
        bulk_config: Box<redis::AsyncConnectionConfig>,
    },
    /// A cluster: lanes of cluster connections. A `ClusterConnection` already multiplexes one
    /// connection per node, follows `MOVED`/`ASK` redirects and refreshes the slot map itself,
    /// so pooling them would only add the pool's per-checkout `PING`.
    Cluster {
        client: Box<ClusterClient>,
        lanes: Box<[ClusterLane]>,
        /// The bulk lane, from a client whose responses may take
        /// [`ValkeyConfig::bulk_response_timeout`](super::ValkeyConfig::bulk_response_timeout).
        bulk: ClusterLane,
        bulk_client: Box<ClusterClient>,
        /// Held while a lane connects: creating a cluster connection fetches the slot map and
        /// connects to every node, so a cold burst must not start one per request.
        connecting: Arc<tokio::sync::Mutex<()>>,
    },
}

/// Which held connection an operation ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    /// A hot-path lane, by index.
    Hot(usize),
    /// The bulk lane.
    Bulk,
}

/// A cluster lane: the connection and its id.
pub(super) type ClusterLane = Mutex<Option<(u64, ClusterConnection)>>;

pub(super) struct Held {
    pub(super) id: u64,
    pub(super) conn: MultiplexedConnection,
    // Keeps the pool slot while the lane holds the connection (None: the bulk lane's, not
    // pooled).
    pub(super) _pooled: Option<deadpool_redis::Connection>,
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
    /// The next hot-path lane's connection (connecting if needed).
    pub(super) async fn lane(&self) -> Result<(Lane, u64, Conn), StoreError> {
        let idx = self.inner.next_lane.fetch_add(1, Ordering::Relaxed);
        let n = match &self.inner.conns {
            Conns::Single { lanes, .. } => lanes.len(),
            Conns::Cluster { lanes, .. } => lanes.len(),
        };
        self.connection_of(Lane::Hot(idx % n)).await
    }

    /// The bulk lane's connection (connecting if needed).
    pub(super) async fn bulk(&self) -> Result<(Lane, u64, Conn), StoreError> {
        self.connection_of(Lane::Bulk).await
    }

    async fn connection_of(&self, lane: Lane) -> Result<(Lane, u64, Conn), StoreError> {
        let inner = &self.inner;
        match &inner.conns {
            Conns::Single {
                pool,
                lanes,
                bulk,
                bulk_client,
                bulk_config,
            } => {
                let slot = match lane {
                    Lane::Hot(i) => &lanes[i],
                    Lane::Bulk => bulk,
                };
                if let Some(h) = lock(slot).as_ref() {
                    return Ok((lane, h.id, Conn::Single(h.conn.clone())));
                }
                let (conn, pooled) = match lane {
                    Lane::Hot(_) => {
                        let pooled = pool.get().await.map_err(pool_error)?;
                        let conn: MultiplexedConnection = (*pooled).clone();
                        (conn, Some(pooled))
                    }
                    Lane::Bulk => {
                        let conn = bulk_client
                            .get_multiplexed_async_connection_with_config(bulk_config)
                            .await
                            .map_err(redis_error)?;
                        (conn, None)
                    }
                };
                let id = inner.lane_ids.fetch_add(1, Ordering::Relaxed);
                let mut slot = lock(slot);
                match slot.as_ref() {
                    // Another request filled the lane meanwhile: use it, give ours back.
                    Some(h) => Ok((lane, h.id, Conn::Single(h.conn.clone()))),
                    None => {
                        *slot = Some(Held {
                            id,
                            conn: conn.clone(),
                            _pooled: pooled,
                        });
                        Ok((lane, id, Conn::Single(conn)))
                    }
                }
            }
            Conns::Cluster {
                client,
                lanes,
                bulk,
                bulk_client,
                connecting,
            } => {
                let (slot, client) = match lane {
                    Lane::Hot(i) => (&lanes[i], client),
                    Lane::Bulk => (bulk, bulk_client),
                };
                if let Some((id, c)) = lock(slot).as_ref() {
                    return Ok((lane, *id, Conn::Cluster(c.clone())));
                }
                // Connect in a task of its own holding the lock: a request that stops waiting
                // (its operation timed out) neither wastes the connection nor lets the next
                // request start another one meanwhile.
                let guard = connecting.clone().lock_owned().await;
                if let Some((id, c)) = lock(slot).as_ref() {
                    return Ok((lane, *id, Conn::Cluster(c.clone())));
                }
                let (inner, client) = (self.inner.clone(), ClusterClient::clone(client));
                let task = tokio::spawn(async move {
                    let _guard = guard;
                    let conn = client.get_async_connection().await?;
                    let id = inner.lane_ids.fetch_add(1, Ordering::Relaxed);
                    if let Conns::Cluster { lanes, bulk, .. } = &inner.conns {
                        let slot = match lane {
                            Lane::Hot(i) => &lanes[i],
                            Lane::Bulk => bulk,
                        };
                        *lock(slot) = Some((id, conn.clone()));
                    }
                    Ok::<_, RedisError>((id, conn))
                });
                match task.await {
                    Ok(Ok((id, conn))) => Ok((lane, id, Conn::Cluster(conn))),
                    Ok(Err(e)) => Err(redis_error(e)),
                    Err(e) => Err(StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("valkey cluster connect task: {e}"),
                    )),
                }
            }
        }
    }

    /// Empties a lane whose connection failed (a single server's: detached from the pool), or
    /// is no longer authenticated ([`auth_lost`]).
    ///
    /// A cluster connection reconnects to nodes and refreshes its slot map by itself (a failed
    /// primary's slots move to its replica), so it is only replaced when the client reports it
    /// cannot reach the cluster at all, or a node no longer accepts its credentials.
    pub(super) fn drop_lane(&self, lane: Lane, id: u64, err: &RedisError) {
        match &self.inner.conns {
            Conns::Single { lanes, bulk, .. } => {
                if !(err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_unrecoverable_error()
                    || auth_lost(err))
                {
                    return;
                }
                let slot = match lane {
                    Lane::Hot(i) => &lanes[i],
                    Lane::Bulk => bulk,
                };
                let held = {
                    let mut slot = lock(slot);
                    match slot.as_ref() {
                        Some(h) if h.id == id => slot.take(),
                        _ => None,
                    }
                };
                if let Some(h) = held {
                    tracing::debug!(?lane, error = %err, "valkey connection lost; lane will reconnect");
                    if let Some(pooled) = h._pooled {
                        drop(deadpool_redis::Connection::take(pooled));
                    }
                }
            }
            Conns::Cluster { lanes, bulk, .. } => {
                if err.kind() != redis::ErrorKind::ClusterConnectionNotFound && !auth_lost(err) {
                    return;
                }
                let slot = match lane {
                    Lane::Hot(i) => &lanes[i],
                    Lane::Bulk => bulk,
                };
                let mut slot = lock(slot);
                if matches!(slot.as_ref(), Some((held, _)) if *held == id) {
                    tracing::debug!(
                        ?lane,
                        error = %err,
                        "valkey cluster unreachable; lane will reconnect"
                    );
                    *slot = None;
                }
            }
        }
    }

    /// Runs `f` on a hot-path lane; a failure that lost the connection empties the lane.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let (lane, id, mut conn) = self.lane().await?;
        f(&mut conn).await.map_err(|e| self.failed(lane, id, e))
    }

    /// The [`StoreError`] of a command that failed on `lane`, after emptying the lane if the
    /// failure lost its connection.
    pub(super) fn failed(&self, lane: Lane, id: u64, e: RedisError) -> StoreError {
        self.drop_lane(lane, id, &e);
        redis_error(e)
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

/// Whether the server refused the connection's credentials, or no longer considers it
/// authenticated: `NOAUTH` (it now requires a password: restarted with `requirepass`, a changed
/// ACL), `WRONGPASS`, or a failed `AUTH` while connecting. Only a new connection, which
/// authenticates again, can recover; until then the store is unavailable.
pub(super) fn auth_lost(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

pub(super) fn redis_error(e: RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || auth_lost(&e)
    {
        StoreErrorKind::Unavailable
    } else {
        StoreErrorKind::Server
    };
    StoreError::new(kind, format!("valkey: {e}")).with_source(e)
}

/// How many times [`query_redirected`] sends a command again after a redirect reached it.
const REDIRECT_ATTEMPTS: u32 = 8;

/// Runs a single-key `cmd` on a connection that follows cluster redirects, sending it again
/// (after 5, 10, 15, ... ms) when a redirect error still reaches the caller: while a slot
/// migrates, a command sent to the importing node after `ASK` can arrive there without its
/// `ASKING` (another command on the multiplexed connection took it) and is answered `MOVED` back
/// to the source, and a source with part of a batch's keys answers `TRYAGAIN`. Both pass once
/// the command lands on its own. Seen: 3 of about 30 runs of
/// `cluster::slot_migrated_under_load_...` under CPU load failed a pattern invalidation
/// mid-migration on a `MOVED` to a `ZREM` that had been redirected with `ASK`.
pub(super) async fn query_redirected<T: redis::FromRedisValue>(
    conn: &mut (impl ConnectionLike + Send),
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let mut attempt = 0;
    loop {
        match cmd.query_async(conn).await {
            Err(e) if attempt < REDIRECT_ATTEMPTS && is_redirect(&e) => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt))).await;
            }
            r => return r,
        }
    }
}

/// Whether `e` is a cluster redirect or a retry request (`MOVED`, `ASK`, `TRYAGAIN`).
pub(super) fn is_redirect(e: &RedisError) -> bool {
    use redis::ServerErrorKind as K;
    matches!(
        e.kind(),
        redis::ErrorKind::Server(K::Moved | K::Ask | K::TryAgain)
    )
}
