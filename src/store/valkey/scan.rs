//! Pattern invalidation: `SCAN MATCH` + `UNLINK` in batches, on one server or on every primary
//! of a cluster, on the bulk lane (never in front of hot-path commands). After each batch, the
//! members of the entries it unlinked leave the namespace's route index
//! ([`RankedSpace::route`]; a no-op when the namespace is not bounded), so they never pin a
//! bounded namespace's capacity.

use super::conn::{is_redirect, query_redirected, redis_error, Conn, Conns};
use super::ranked::forget_unlinked;
use super::ValkeyStore;
use crate::store::ranked::RankedSpace;
use crate::store::{StoreError, StoreErrorKind};
use deadpool_redis::cluster::ClusterConnection;
use deadpool_redis::redis;
use deadpool_redis::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use futures_util::{StreamExt, TryStreamExt};

/// How many `SCAN` loops of a cluster pattern invalidation run at once.
const SCANS_IN_FLIGHT: usize = 32;

impl ValkeyStore {
    /// Unlinks every key matching one of `globs` and removes their members from `index` (the
    /// namespace's route index, if it may have one).
    pub(super) async fn scan_unlink(
        &self,
        globs: &[String],
        index: Option<&RankedSpace>,
    ) -> Result<u64, StoreError> {
        if let Conns::Cluster { .. } = &self.inner.conns {
            return self.scan_unlink_cluster(globs, index).await;
        }
        let (lane, id, mut conn) = self.bulk().await?;
        let failed = |e| self.failed(lane, id, e);
        let mut removed = 0u64;
        for glob in globs {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = self
                    .scan_cmd(cursor, glob)
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                if !keys.is_empty() {
                    let n: u64 = redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await
                        .map_err(failed)?;
                    removed += n;
                    if let Some(index) = index {
                        forget_unlinked(&mut conn, index, &keys)
                            .await
                            .map_err(failed)?;
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    fn scan_cmd(&self, cursor: u64, pattern: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(self.inner.scan_count);
        cmd
    }

    /// `SCAN` on every primary (from `CLUSTER NODES`, read once), so keys of a slot that is
    /// migrating between two primaries are found on both; the keys found are unlinked through
    /// the cluster connection, routed by slot (`ASK`/`MOVED` followed). A glob that begins with
    /// a hash tag (every glob the crate builds on a cluster) makes Valkey 8 scan that slot only.
    async fn scan_unlink_cluster(
        &self,
        globs: &[String],
        index: Option<&RankedSpace>,
    ) -> Result<u64, StoreError> {
        let (lane, id, conn) = self.bulk().await?;
        let Conn::Cluster(mut conn) = conn else {
            return Err(StoreError::new(StoreErrorKind::Server, "not a cluster"));
        };
        let failed = |e| self.failed(lane, id, e);
        let mut nodes_cmd = redis::cmd("CLUSTER");
        nodes_cmd.arg("NODES");
        let nodes = conn
            .route_command(
                nodes_cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(failed)?;
        let nodes: String = redis::from_redis_value(nodes)
            .map_err(|e| StoreError::new(StoreErrorKind::Server, format!("CLUSTER NODES: {e}")))?;
        let primaries = cluster_primaries(&nodes);
        if primaries.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "CLUSTER NODES lists no reachable primary",
            ));
        }
        // Every (primary, glob) scan concurrently, at most SCANS_IN_FLIGHT at once (the
        // cluster connection pipelines them per node): a sharded namespace has a glob per
        // shard, each visiting one slot.
        let mut scans = Vec::with_capacity(primaries.len() * globs.len());
        for (host, port) in &primaries {
            for glob in globs {
                scans.push((host.clone(), *port, glob.clone()));
            }
        }
        let scans: Vec<_> = scans
            .into_iter()
            .map(|(host, port, glob)| {
                let mut conn = conn.clone();
                async move {
                    let mut removed = 0u64;
                    let mut cursor: u64 = 0;
                    loop {
                        let reply = conn
                            .route_command(
                                self.scan_cmd(cursor, &glob),
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                    host: host.clone(),
                                    port,
                                }),
                            )
                            .await
                            .map_err(failed)?;
                        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)
                            .map_err(|e| {
                                StoreError::new(StoreErrorKind::Server, format!("SCAN: {e}"))
                            })?;
                        if !keys.is_empty() {
                            removed += unlink_cluster(&mut conn, &keys).await?;
                            if let Some(index) = index {
                                forget_unlinked(&mut conn, index, &keys)
                                    .await
                                    .map_err(failed)?;
                            }
                        }
                        if next == 0 {
                            return Ok::<_, StoreError>(removed);
                        }
                        cursor = next;
                    }
                }
            })
            .collect();
        let counts: Vec<u64> = futures_util::stream::iter(scans)
            .buffer_unordered(SCANS_IN_FLIGHT)
            .try_collect()
            .await?;
        let removed = counts.into_iter().sum();
        Ok(removed)
    }
}

/// `UNLINK`s keys through a cluster connection. The client splits a multi-key command by slot,
/// so keys of several slots never make a `CROSSSLOT` error; while a slot migrates, its keys may be
/// split between two primaries and the source answers `TRYAGAIN` for the batch (or a redirect
/// reaches the caller): then each key goes alone, following its own redirect
/// ([`query_redirected`]).
async fn unlink_cluster(conn: &mut ClusterConnection, keys: &[String]) -> Result<u64, StoreError> {
    match redis::cmd("UNLINK").arg(keys).query_async(conn).await {
        Ok(n) => Ok(n),
        Err(e) if is_redirect(&e) => {
            let mut n = 0u64;
            for k in keys {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(k);
                let one: u64 = query_redirected(conn, &unlink).await.map_err(redis_error)?;
                n += one;
            }
            Ok(n)
        }
        Err(e) => Err(redis_error(e)),
    }
}

/// The `(host, port)` of each primary in a `CLUSTER NODES` reply that serves slots and is not
/// marked failed.
fn cluster_primaries(nodes: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.contains(&"fail") || fields.len() < 9 {
            continue;
        }
        // ip:port@cport[,hostname]
        let addr = addr.split(['@', ',']).next().unwrap_or("");
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        match port.parse::<u16>() {
            Ok(port) if port != 0 && !host.is_empty() => out.push((host.to_owned(), port)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::cluster_primaries;

    #[test]
    fn cluster_primaries_are_the_serving_masters_not_failed_or_replicas() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7002@17002,node-c master,fail - 0 1 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 1 1 connected
e5 127.0.0.1:7004@17004 master - 0 1 5 connected
f6 :0@0 master,noaddr - 0 1 6 connected 10923-16383
g7 ::1:7006@17006 master - 0 1 7 connected 10923-16383
";
        assert_eq!(
            cluster_primaries(nodes),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("::1".to_owned(), 7006),
            ]
        );
    }
}
