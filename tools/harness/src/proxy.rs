//! [`DelayProxy`]: a TCP proxy in front of a server that delays what the server sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A TCP proxy on a free loopback port in front of `127.0.0.1:upstream` that can delay
/// everything the upstream sends (a "slow Valkey" whose delay is exact while Valkey itself stays
/// healthy). Delayed replies keep their order and pipelining: each chunk leaves `delay` after it
/// arrived. A connection accepted while the upstream is down is closed at once, as a dead backend
/// behind a proxy looks. Dropping the proxy stops accepting and cuts every connection.
///
/// Needs a Tokio runtime (it spawns its tasks on the current one).
pub struct DelayProxy {
    port: u16,
    delay_us: Arc<AtomicU64>,
    accept: JoinHandle<()>,
    // Dropping it ends every connection.
    _stop: watch::Sender<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port, forwarding to `127.0.0.1:upstream`, with no delay.
    pub async fn start(upstream: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let delay_us = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(());
        let delay = delay_us.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(proxy_conn(client, upstream, delay.clone(), stopped.clone()));
            }
        });
        Ok(DelayProxy {
            port,
            delay_us,
            accept,
            _stop: stop,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Delays every byte the upstream sends from now on by `d` (`Duration::ZERO`: none).
    pub fn set_delay(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(us, Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn proxy_conn(
    client: TcpStream,
    upstream: u16,
    delay: Arc<AtomicU64>,
    mut stop: watch::Receiver<()>,
) {
    // Upstream down: accept, then close at once.
    let connect = TcpStream::connect(("127.0.0.1", upstream));
    let Ok(Ok(server)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::select! {
        _ = tokio::io::copy(&mut cr, &mut sw) => {}
        _ = delayed_copy(&mut sr, &mut cw, &delay) => {}
        _ = stop.changed() => {}
    }
}

async fn delayed_copy(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    delay_us: &AtomicU64,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let due = Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(read, write);
}
