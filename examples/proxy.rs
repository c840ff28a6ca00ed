//! A caching reverse proxy in front of an upstream URL: the shared-cache mode
//! ([`CacheLayer::http_cache`]) on a hyper server and a hyper client, bodies streamed both ways,
//! hop-by-hop headers removed. The example a gateway copies.
//!
//! ```text
//! cargo run --release --example proxy -- --upstream http://127.0.0.1:8000 --listen 127.0.0.1:8081
//! cargo run --release --example proxy -- --upstream http://127.0.0.1:8000 --store valkey --valkey-url redis://127.0.0.1:6400
//! ```
//!
//! Options:
//!
//! - `--upstream URL` (required): scheme and authority (`http://host:port`); the request's path
//!   and query are appended to it.
//! - `--listen ADDR`: where to listen (default `127.0.0.1:8081`).
//! - `--store memory | valkey`, `--valkey-url URL`: the store (default `memory`).
//! - `--namespace NS`: the cache namespace (default `proxy`).
//! - `--app-mode`: the app-cache defaults with `respect_cache_control(true)` and `ttl(0)`
//!   instead of the shared-cache mode (what this crate did before it had one; for comparison).
//!
//! `scripts/cache-tests` runs the http-tests/cache-tests suite through this proxy.
//!
//! Every request goes through one [`CacheLayer`]: GET and HEAD are looked up; every other
//! method is forwarded and, when it succeeds, invalidates the target URI and the same-origin
//! `Location` / `Content-Location` (RFC 9111 §4.4). The inner service is the upstream call:
//! it removes hop-by-hop fields in both directions (RFC 9110 §7.6.1) and answers `502` when the
//! upstream cannot be reached, so the cache's stale-if-error can stand in for it.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_valkey_cache::layer::CacheRequestBody;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore, ValkeyConfig, ValkeyStore};

/// The upstream's response body, or the proxy's own (`502`).
type UpstreamBody = http_body_util::Either<Incoming, Full<Bytes>>;

/// The body the inner service sends upstream: the client's, streamed.
type ClientBody = CacheRequestBody<Incoming>;

struct Args {
    upstream: Uri,
    listen: SocketAddr,
    valkey: Option<String>,
    namespace: String,
    app_mode: bool,
}

fn args() -> Result<Args, String> {
    let mut upstream = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 8081).into();
    let mut store = "memory".to_owned();
    let mut valkey_url = "redis://127.0.0.1:6400".to_owned();
    let mut namespace = "proxy".to_owned();
    let mut app_mode = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--upstream" => {
                let u: Uri = value()?.parse().map_err(|e| format!("--upstream: {e}"))?;
                if u.scheme_str() != Some("http") || u.authority().is_none() {
                    return Err("--upstream must be http://host[:port]".into());
                }
                upstream = Some(u);
            }
            "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--store" => store = value()?,
            "--valkey-url" => valkey_url = value()?,
            "--namespace" => namespace = value()?,
            "--app-mode" => app_mode = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        upstream: upstream.ok_or("--upstream URL is required")?,
        listen,
        valkey: match store.as_str() {
            "memory" => None,
            "valkey" => Some(valkey_url),
            other => return Err(format!("--store {other}: memory or valkey")),
        },
        namespace,
        app_mode,
    })
}

/// Hop-by-hop fields (RFC 9110 §7.6.1): the fixed ones and those the `Connection` field names.
/// They describe one connection and are never forwarded.
fn remove_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// The upstream call: the request re-targeted at `upstream`, hop-by-hop fields removed both
/// ways, `502 Bad Gateway` when the upstream cannot be reached.
async fn forward(
    client: Client<HttpConnector, ClientBody>,
    upstream: Uri,
    mut req: Request<ClientBody>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut parts = upstream.into_parts();
    parts.path_and_query = path.parse().ok();
    let Ok(uri) = Uri::from_parts(parts) else {
        return Ok(bad_gateway("bad request target"));
    };
    remove_hop_by_hop(req.headers_mut());
    if let Some(host) = uri
        .authority()
        .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    *req.uri_mut() = uri;
    // The client speaks HTTP/1.1 upstream whatever the client spoke here.
    *req.version_mut() = http::Version::HTTP_11;
    match client.request(req).await {
        Ok(res) => {
            let mut res = res.map(UpstreamBody::Left);
            remove_hop_by_hop(res.headers_mut());
            Ok(res)
        }
        Err(e) => {
            eprintln!("upstream: {e}");
            Ok(bad_gateway("upstream unreachable"))
        }
    }
}

fn bad_gateway(why: &'static str) -> Response<UpstreamBody> {
    let mut res = Response::new(UpstreamBody::Right(Full::new(Bytes::from_static(
        why.as_bytes(),
    ))));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("proxy: {e}");
            std::process::exit(2);
        }
    };
    let cache = match &args.valkey {
        None => Cache::builder(MemoryStore::new()),
        Some(url) => {
            let cfg = ValkeyConfig::from_url(url.clone())
                .connect_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(1));
            match ValkeyStore::with_config(cfg) {
                Ok(store) => Cache::builder(store),
                Err(e) => {
                    eprintln!("proxy: valkey: {e}");
                    std::process::exit(2);
                }
            }
        }
    }
    .namespace(&args.namespace)
    .build();
    let layer = if args.app_mode {
        CacheLayer::new(cache)
            .respect_cache_control(true)
            .ttl(Duration::ZERO)
    } else {
        CacheLayer::new(cache).http_cache()
    };

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, ClientBody> =
        Client::builder(TokioExecutor::new()).build(connector);
    let upstream = args.upstream.clone();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(move |req: Request<ClientBody>| {
            forward(client.clone(), upstream.clone(), req)
        }));
    // Requests arrive with their hop-by-hop fields removed, before the cache sees them.
    let service = tower::util::MapRequest::new(service, |mut req: Request<Incoming>| {
        remove_hop_by_hop(req.headers_mut());
        req
    });

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("proxy: bind {}: {e}", args.listen);
            std::process::exit(2);
        }
    };
    eprintln!(
        "proxy: listening on http://{} for {} ({} store)",
        args.listen,
        args.upstream,
        if args.valkey.is_some() {
            "valkey"
        } else {
            "memory"
        }
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("proxy: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                // Clients that go away mid-response are routine for a proxy.
                if !e.is_incomplete_message() {
                    eprintln!("proxy: connection: {e}");
                }
            }
        });
    }
}
