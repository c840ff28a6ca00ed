//! Feature `unstable`: direct access to the store's connections, outside semver (the types are
//! deadpool-redis' and redis-rs').

use super::conn::{Conn, Conns};
use super::ValkeyStore;
use crate::store::{StoreError, StoreErrorKind};
use deadpool_redis::cluster::ClusterConnection;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::Pool;

impl ValkeyStore {
    /// The underlying deadpool-redis pool, for your own commands (feature `unstable`: it ties the
    /// caller to deadpool-redis' major version); `None` on a cluster (use
    /// [`cluster_connection`](Self::cluster_connection)).
    #[cfg_attr(docsrs, doc(cfg(feature = "unstable")))]
    pub fn pool(&self) -> Option<&Pool> {
        match &self.inner.conns {
            Conns::Single { pool, .. } => Some(pool),
            Conns::Cluster { .. } => None,
        }
    }

    /// A multiplexed connection from one of the hot-path lanes (connecting if needed). An error
    /// on a cluster store: use [`cluster_connection`](Self::cluster_connection).
    #[cfg_attr(docsrs, doc(cfg(feature = "unstable")))]
    pub async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        match self.lane().await?.2 {
            Conn::Single(c) => Ok(c),
            Conn::Cluster(_) => Err(StoreError::new(
                StoreErrorKind::Server,
                "a cluster store has no single-server connection: use cluster_connection()",
            )),
        }
    }

    /// A cluster connection from one of the hot-path lanes (connecting if needed), routing each
    /// command by its keys' slot. An error on a single-server store.
    #[cfg_attr(docsrs, doc(cfg(feature = "unstable")))]
    pub async fn cluster_connection(&self) -> Result<ClusterConnection, StoreError> {
        match self.lane().await?.2 {
            Conn::Cluster(c) => Ok(c),
            Conn::Single(_) => Err(StoreError::new(
                StoreErrorKind::Server,
                "not a cluster store: use connection()",
            )),
        }
    }
}
