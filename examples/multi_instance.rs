//! Two app instances sharing one Valkey, each with its own in-process L1 tier: a `PUT` to one
//! makes the other serve the new version on its next `GET`.
//!
//! ```text
//! cargo run --example multi_instance                                  # starts its own valkey-server
//! VALKEY_URL=redis://127.0.0.1:6379 cargo run --example multi_instance # an existing server
//! ```
//!
//! Both instances run in this process on two ports (as two replicas behind a load balancer
//! would), share one "database" (a map of item versions) and one Valkey, and each has a `Cache`
//! with [`l1`](tower_valkey_cache::CacheBuilder::l1) on: hits are answered from memory, and an
//! invalidation on either instance is announced on Valkey pub/sub so the other drops its copy.
//! The example drives them with an HTTP client, prints what happens, and exits.

use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, ValkeyStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Db = Arc<Mutex<HashMap<u64, u64>>>;

/// One instance: `GET /items/{id}` cached per item, `PUT /items/{id}` bumping the item's version
/// and invalidating its entry.
fn app(cache: &Cache, db: &Db) -> Router {
    async fn show(Path(id): Path<u64>, State(db): State<Db>) -> String {
        tokio::time::sleep(Duration::from_millis(30)).await; // a slow query
        let v = *db.lock().unwrap().entry(id).or_insert(1);
        format!("item {id}, version {v}")
    }
    async fn update(Path(id): Path<u64>, State(db): State<Db>) -> &'static str {
        *db.lock().unwrap().entry(id).or_insert(1) += 1;
        "updated"
    }
    Router::new()
        .route(
            "/items/{id}",
            get(show)
                .route_layer(
                    CacheLayer::new(cache.clone())
                        .key("item:{id}")
                        .ttl(Duration::from_secs(60)),
                )
                .merge(
                    put(update)
                        .route_layer(InvalidateLayer::new(cache.clone()).keys(["item:{id}"])),
                ),
        )
        .with_state(db.clone())
}

async fn serve(app: Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

async fn call(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: &str,
    url: &str,
) -> Result<(String, String), BoxError> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::new())?;
    let res = client.request(req).await?;
    let status = res
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((String::from_utf8_lossy(&body).into_owned(), status))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (url, _server) = match std::env::var("VALKEY_URL") {
        Ok(url) => (url, None),
        Err(_) => match LocalValkey::start() {
            Some(s) => (s.url(), Some(s)),
            None => {
                println!(
                    "This example needs Valkey. Either install valkey-server (scripts/install-valkey) \
                     so it can start its own, or start one and pass its URL:\n\n  \
                     valkey-server --port 6379 --save '' &\n  \
                     VALKEY_URL=redis://127.0.0.1:6379 cargo run --example multi_instance"
                );
                return Ok(());
            }
        },
    };
    println!("Valkey at {url}");

    let db = Db::default();
    // The same namespace on both: that is what makes them instances of one app.
    let namespace = format!("multi_instance_{}", std::process::id());
    let instance = || -> Result<Cache, BoxError> {
        Ok(Cache::builder(ValkeyStore::new(&url)?)
            .namespace(namespace.as_str())
            .l1(10_000, Duration::from_secs(30))
            .build())
    };
    let (cache_a, cache_b) = (instance()?, instance()?);
    let a = serve(app(&cache_a, &db)).await?;
    let b = serve(app(&cache_b, &db)).await?;
    println!("instance A on http://{a}, instance B on http://{b}\n");

    // Each instance subscribes in the background: wait for both (a real app just starts).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(cache_a.l1_stats().is_some_and(|s| s.listening)
        && cache_b.l1_stats().is_some_and(|s| s.listening))
    {
        if Instant::now() > deadline {
            return Err("the L1 tiers did not subscribe within 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let step = |who: &str, method: &str, started: Instant, (body, status): (String, String)| {
        println!(
            "{who} {method:<4} /items/1 -> {body:<20} {:>8.2?}  cache-status: {status}",
            started.elapsed()
        );
        body
    };
    let (ua, ub) = (format!("http://{a}/items/1"), format!("http://{b}/items/1"));

    let t = Instant::now();
    step("B", "GET", t, call(&client, "GET", &ub).await?); // miss: the handler runs, stored
    let t = Instant::now();
    step("A", "GET", t, call(&client, "GET", &ua).await?); // hit from Valkey, kept in A's L1
    let t = Instant::now();
    step("A", "GET", t, call(&client, "GET", &ua).await?); // hit from A's L1
    let t = Instant::now();
    step("B", "GET", t, call(&client, "GET", &ub).await?); // hit from B's L1
    let t = Instant::now();
    step("A", "PUT", t, call(&client, "PUT", &ua).await?); // version 2; invalidated everywhere

    let put_done = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let t = Instant::now();
        let body = step("B", "GET", t, call(&client, "GET", &ub).await?);
        if body.ends_with("version 2") {
            break;
        }
        if put_done.elapsed() > Duration::from_secs(2) {
            return Err("instance B did not see the update within 2 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "\nB served version 2 {:.2?} after A's PUT returned ({attempts} GET{})",
        put_done.elapsed(),
        if attempts == 1 { "" } else { "s" }
    );
    let t = Instant::now();
    step("B", "GET", t, call(&client, "GET", &ub).await?); // hit from B's L1 again
    println!("\nL1 of A: {:?}", cache_a.l1_stats().unwrap_or_default());
    println!("L1 of B: {:?}", cache_b.l1_stats().unwrap_or_default());
    Ok(())
}

/// A `valkey-server` this example starts on a free port, without persistence; killed on drop.
struct LocalValkey {
    port: u16,
    child: Child,
}

impl LocalValkey {
    fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("valkey-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if server.pong() {
                println!("started valkey-server on port {port} (stopped when the example exits)");
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn pong(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for LocalValkey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
