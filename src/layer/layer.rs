use super::config::RouteConfig;
use super::service::CacheService;
use crate::key::{KeyStrategy, KeyTemplate, Keyer};
use crate::Cache;
use http::{Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Caches responses of the services it wraps. See the [module docs](crate::layer) for an example.
///
/// Configure it per route with the chained builder methods, then pass it to `.route_layer(...)`
/// (axum), `.layer(...)` or a `ServiceBuilder`.
#[derive(Clone)]
pub struct CacheLayer {
    config: Arc<RouteConfig>,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.config, f)
    }
}

impl CacheLayer {
    /// A layer caching into `cache`: GET and HEAD, status 200, bodies up to 1 MiB, the cache's
    /// default TTL, the [default key](crate::key::DefaultKey).
    pub fn new(cache: Cache) -> Self {
        Self {
            config: Arc::new(RouteConfig::new(cache)),
        }
    }

    /// The route's configuration, to change (copied first if a service already shares it).
    fn cfg(&mut self) -> &mut RouteConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Takes each response's freshness from its own `Cache-Control` (`s-maxage`, then
    /// `max-age`), then `Expires`, falling back to [`ttl`](Self::ttl). A lifetime of zero is not
    /// stored. (`no-store`, `private` and `no-cache` responses are never stored, with or without
    /// this option.) Default off.
    pub fn respect_cache_control(mut self, enable: bool) -> Self {
        self.cfg().respect_cache_control = enable;
        self
    }

    /// Stale-while-revalidate: for `window` after an entry stops being fresh, requests get it at
    /// once (`Cache-Status: ...; hit; ttl=-N`) while one background request per key refreshes it.
    /// A refresh that fails leaves the stale entry in place. Default off.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.cfg().swr = window;
        self
    }

    /// Stale-if-error: for `window` after an entry stops being fresh, a handler that answers
    /// 5xx, fails, or exceeds [`handler_timeout`](Self::handler_timeout) is replaced by the stale
    /// entry (`...; hit; ttl=-N; detail=stale-if-error`). Past the window the failure passes
    /// through unchanged. Default off.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.cfg().sie = window;
        self
    }

    /// How long the handler may take when a stale entry could stand in for it
    /// ([`stale_if_error`](Self::stale_if_error)). Default: no limit.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.cfg().handler_timeout = Some(timeout);
        self
    }

    /// Time limit of one background refresh. Default 30 s.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.cfg().refresh_timeout = timeout;
        self
    }

    /// Single-flight in this process: concurrent misses on one key run the handler once and the
    /// others answer with its entry (`fwd=uri-miss; collapsed`), or with its 5xx response when it
    /// failed (a shareable one: see [`error_ttl`](Self::error_ttl)), waiting at most `max_wait`
    /// in all before running the handler themselves. A leader whose request is cancelled hands
    /// the flight on: its followers elect a new leader, however many leaders in a row are
    /// cancelled, until `max_wait` has passed. Default on, 10 s.
    pub fn coalesce(mut self, enable: bool, max_wait: Duration) -> Self {
        self.cfg().coalesce = enable;
        self.cfg().coalesce_wait = max_wait;
        self
    }

    /// A short error cache: a 5xx response of this route's handler answers the route's misses
    /// on the same key for `ttl` (at most [`MAX_ERROR_TTL`](crate::function::MAX_ERROR_TTL),
    /// 60 s) instead of running the failing handler again (`Cache-Status: ...; fwd=uri-miss;
    /// detail=error-cached`). Default off.
    ///
    /// Only a 5xx the route could share at all is kept (no `Set-Cookie`, not `private`,
    /// `no-store` or `no-cache`, a `Vary` it can key by), in this process only, never in the
    /// store. It is guarded like an entry: any invalidation of the namespace (a write through
    /// `InvalidateLayer` in any process) retires it at once, a request asking to revalidate
    /// (`Cache-Control: no-cache`) runs the handler, and with
    /// [`stale_if_error`](Self::stale_if_error) a stale entry inside its window is served instead
    /// of the error. Without this option a failing handler is still shared with the requests
    /// waiting on it (single-flight): they get the same 5xx, not one handler run each.
    pub fn error_ttl(mut self, ttl: Duration) -> Self {
        self.cfg().error_ttl = ttl.min(crate::function::MAX_ERROR_TTL);
        self
    }

    /// Fill lock across instances sharing the store: on a miss, take a lock on the key
    /// (`SET NX PX lease` with a random token); others wait for the entry with backoff, at most
    /// `lease`, then run the handler themselves. The lease expires if the holder dies.
    /// Default off.
    pub fn lock(mut self, lease: Duration) -> Self {
        self.cfg().lock_lease = Some(lease);
        self
    }

    /// Shortens each entry's TTL by a random fraction up to `fraction` (0.0 to 1.0), so entries
    /// written together do not expire together. Default 0.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.cfg().ttl_jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// Probabilistic early refresh (XFetch) with parameter `beta` (1.0 is the usual choice,
    /// larger refreshes earlier): a hit may trigger one background refresh before expiry, more
    /// likely as expiry nears and the slower the handler. Default 0 (off).
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.cfg().early_refresh_beta = beta.max(0.0);
        self
    }

    /// Tags (surrogate keys) recorded with each stored entry, as templates (`"user:{id}"`), so
    /// that [`InvalidateLayer::tags`](crate::InvalidateLayer::tags) or
    /// [`Cache::invalidate_tag`] can remove every entry carrying one.
    ///
    /// # Panics
    ///
    /// If a template does not parse.
    pub fn tags<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        for t in templates {
            self.cfg()
                .tags
                .push(KeyTemplate::parse(t.as_ref()).unwrap_or_else(|e| panic!("{e}")));
        }
        self
    }

    /// Whether tags are also read from the handler's `Surrogate-Key` (space-separated) and
    /// `Cache-Tag` (comma-separated) response headers, which are then removed from the response.
    /// Default on.
    pub fn tags_from_headers(mut self, enable: bool) -> Self {
        self.cfg().tag_headers = enable;
        self
    }

    /// How long responses stay fresh. Defaults to the cache's TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.cfg().ttl = Some(ttl);
        self
    }

    /// The key template, e.g. `"user:{id}"` or `"user:{id:u64}"` (see [`key`](crate::key) for
    /// the holes, and why the keys are injective).
    ///
    /// # Panics
    ///
    /// If the template does not parse: a programming error, reported when the router is built.
    /// Use [`KeyTemplate::parse`] and [`key_with`](Self::key_with) to handle it yourself.
    pub fn key(self, template: &str) -> Self {
        match KeyTemplate::parse(template) {
            Ok(t) => self.key_with(t),
            Err(e) => panic!("{e}"),
        }
    }

    /// Any [`KeyStrategy`]: a [`KeyTemplate`] or a closure over `&http::request::Parts`.
    pub fn key_with(mut self, strategy: impl KeyStrategy) -> Self {
        self.cfg().key = Keyer::strategy(strategy);
        self
    }

    /// Keys each request by what an axum extractor reads from it: `f` gets the extracted value
    /// (`Path<u64>`, `Query<Filter>`, your own `CurrentTenant`, a tuple of them) and returns the
    /// key, a `String` or an `Option<String>` (`None`: do not cache this request). The key
    /// names what the handler sees, so `/users/0501` and `/users/501` share an entry.
    ///
    /// An extractor that rejects the request (the handler would reject it too) serves it
    /// uncached (`Cache-Status: ...; fwd=bypass; detail=key-rejected`), and the handler answers
    /// as it would. The key is used as it is, bounded to [`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN)
    /// bytes: escape text that is not a parsed number with [`escape`](crate::key::escape). A
    /// key built this way never counts as covering credentials: a route keyed by the caller
    /// this way needs [`allow_credentials`](Self::allow_credentials). See
    /// [keys from extractors](crate::key#keys-from-extractors).
    ///
    /// ```
    /// use axum::{extract::Path, routing::get, Router};
    /// use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// let app: Router = Router::new().route(
    ///     "/users/{id}",
    ///     get(|Path(id): Path<u64>| async move { format!("user {id}") })
    ///         .route_layer(CacheLayer::new(cache).key_from(|Path(id): Path<u64>| format!("user:{id}"))),
    /// );
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn key_from<E, F, K>(self, f: F) -> Self
    where
        E: axum::extract::FromRequestParts<()> + 'static,
        F: Fn(E) -> K + Send + Sync + 'static,
        K: Into<Option<String>> + 'static,
    {
        self.key_from_with_state((), f)
    }

    /// [`key_from`](Self::key_from) for extractors that need the application's state
    /// (`FromRequestParts<S>`): pass the state the router is built with.
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn key_from_with_state<S, E, F, K>(mut self, state: S, f: F) -> Self
    where
        S: Send + Sync + 'static,
        E: axum::extract::FromRequestParts<S> + 'static,
        F: Fn(E) -> K + Send + Sync + 'static,
        K: Into<Option<String>> + 'static,
    {
        self.cfg().key = Keyer::Extract(Arc::new(crate::key::ExtractKey::new(state, f)));
        self
    }

    /// The methods whose responses are cached. Default GET and HEAD (HEAD is answered from the
    /// GET entry). Requests with other methods pass through. Methods other than GET and HEAD
    /// (POST for query-style APIs) are cached only with [`key_body`](Self::key_body) as well;
    /// without it they pass through (`fwd=method`).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.cfg().methods = methods.into_iter().collect();
        self
    }

    /// The response statuses that are stored. Default 200 only. A `206 Partial Content` is
    /// stored only if the key includes the request's `Range` (`{header.range}`); without such a
    /// key, requests with `Range` bypass the cache.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.cfg().statuses = statuses.into_iter().collect();
        self
    }

    /// Caches requests whose method is not GET or HEAD (add it to [`methods`](Self::methods),
    /// e.g. POST for GraphQL or search APIs) keyed by their body: the body is read up to
    /// `max_bytes`, and a 128-bit SHA-256 of it and of the request's `Content-Type` is appended
    /// to the key as `#body:HASH` (the whole key bounded to
    /// [`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN)). The handler receives the same body, frame for
    /// frame.
    ///
    /// A body over `max_bytes`, with trailers, or that fails to read bypasses the cache
    /// (`fwd=bypass; detail=body-too-large | body-trailers | body-error`); the handler still gets
    /// all of it (what was read, then the rest of the stream). Requests whose `Content-Length`
    /// exceeds the bound are not read at all.
    ///
    /// Because the body hash is a suffix, [`Cache::invalidate_key`] of the template's key does
    /// not reach these entries: invalidate them by [tag](Self::tags) or by a pattern
    /// (`"search*"`).
    ///
    /// ```
    /// use axum::{routing::post, Router};
    /// use http::Method;
    /// use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// let app: Router = Router::new().route(
    ///     "/graphql",
    ///     post(|body: String| async move { format!("result for {body}") }).route_layer(
    ///         CacheLayer::new(cache)
    ///             .methods([Method::POST])
    ///             .key_body(64 * 1024)
    ///             .tags(["graphql"]),
    ///     ),
    /// );
    /// ```
    pub fn key_body(mut self, max_bytes: usize) -> Self {
        self.cfg().key_body = Some(max_bytes);
        self
    }

    /// The content codings this route serves (for example through a compression layer inside
    /// the cache), case-insensitive. When a response says `Vary: Accept-Encoding`, a request's
    /// `Accept-Encoding` is reduced to the codings of this list it accepts (`q=0` refuses one,
    /// `*` accepts every one not named), or `identity` when none, so `gzip, deflate, br` and
    /// `br;q=1, gzip, deflate` share a variant. Default `br`, `deflate`, `gzip`, `zstd`.
    /// See [Vary](crate::layer#vary).
    pub fn served_encodings<I, T>(mut self, encodings: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.cfg().encodings = super::vary::served_encodings(encodings).into();
        self
    }

    /// Bodies larger than this are streamed to the client and not stored. Default 1 MiB.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.cfg().max_body_bytes = n;
        self
    }

    /// The cache name in `Cache-Status`. Default `tower-valkey-cache`.
    ///
    /// # Panics
    ///
    /// If the name is not an RFC 9110 token.
    pub fn name(mut self, name: &str) -> Self {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
            "cache name `{name}` must be a token"
        );
        self.cfg().name = Arc::from(name);
        self
    }

    /// Whether responses carry a `Cache-Status` header. Default on.
    pub fn cache_status_header(mut self, enable: bool) -> Self {
        self.cfg().status_header = enable;
        self
    }

    /// Caches requests that carry `Authorization` or `Cookie` although the key strategy does not
    /// say it identifies the caller. Only for a custom [`KeyStrategy`] whose key includes the
    /// principal: otherwise one user's response would be served to another. Templates that use
    /// `{header.authorization}` or `{header.cookie}` need no opt-in.
    pub fn allow_credentials(mut self, allow: bool) -> Self {
        self.cfg().allow_credentials = allow;
        self
    }
}

/// The shared-cache mode: RFC 9111 behaviour in front of an origin this application does not
/// control. See [`http_cache`](CacheLayer::http_cache).
impl CacheLayer {
    /// The shared-cache mode: this layer behaves as a shared HTTP cache (RFC 9111) in front of
    /// any origin (a gateway route, a reverse proxy, a slow third-party API), the way nginx,
    /// Varnish or Traffic Server do. It sets, each also available on its own:
    ///
    /// - [`http_freshness`](Self::http_freshness): freshness from the response (`s-maxage`,
    ///   `max-age`, `Expires - Date`, the origin's `Age` and the response delay), never the
    ///   route TTL; `must-revalidate`, `proxy-revalidate`, `s-maxage` and `no-cache` (stored,
    ///   revalidated on every use) are never served stale; [`statuses`](Self::statuses) become
    ///   every status a shared cache may store (`200`, `203`, `204`, `3xx` redirects, `404`,
    ///   `410`, `5xx`, ...: stored with explicit freshness, or heuristic freshness for the
    ///   heuristically cacheable ones);
    /// - [`heuristic_freshness(0.1, 24 h)`](Self::heuristic_freshness);
    /// - [`targeted_cache_control(["CDN-Cache-Control"])`](Self::targeted_cache_control);
    /// - [`stale_directives(true)`](Self::stale_directives) (RFC 5861);
    /// - [`revalidate(1 h)`](Self::revalidate): conditional requests with the stored validators;
    /// - [`invalidate_unsafe(true)`](Self::invalidate_unsafe);
    /// - [`serve_ranges(true)`](Self::serve_ranges);
    /// - [`generate_etag(false)`](Self::generate_etag): the origin's validators only;
    /// - [`stream_misses(true)`](Self::stream_misses).
    ///
    /// The app-cache defaults ([`new`](Self::new) alone) are for an application's own handlers,
    /// whose freshness the route declares. See the README's "Shared-cache mode" for when to use
    /// which, and `examples/proxy.rs` for a caching reverse proxy.
    ///
    /// ```
    /// use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
    ///
    /// let layer = CacheLayer::new(Cache::new(MemoryStore::new())).http_cache();
    /// ```
    pub fn http_cache(mut self) -> Self {
        self.cfg().set_http_cache();
        self
    }

    /// Freshness as RFC 9111 §4.2 computes it for a shared cache: the response's `s-maxage`,
    /// `max-age` or `Expires - Date` (a `max-age` that is not delta-seconds or an `Expires` that
    /// is not a date: stale), minus its age when received (§4.2.3: the larger of `now - Date`
    /// and the origin's `Age` plus the response delay). The `Age` sent to clients counts from
    /// there. Without explicit freshness, heuristic freshness
    /// ([`heuristic_freshness`](Self::heuristic_freshness)) or none. A response that would never
    /// be reused (stale on arrival, no validator, no stale window) is not stored
    /// (`detail=stale`), nor one without explicit freshness or `public` whose status is not
    /// heuristically cacheable (`detail=no-freshness`). `Date` is added to responses that have
    /// none (RFC 9110 §6.6.1). Replaces [`ttl`](Self::ttl) and
    /// [`respect_cache_control`](Self::respect_cache_control). Default off.
    pub fn http_freshness(mut self, enable: bool) -> Self {
        self.cfg().http_freshness = enable;
        self
    }

    /// With [`http_freshness`](Self::http_freshness): a response without explicit freshness
    /// whose status is heuristically cacheable (RFC 9110 §15.1: `200`, `203`, `204`, `206`,
    /// `300`, `301`, `308`, `404`, `405`, `410`, `414`, `501`) and that has a `Last-Modified`
    /// is fresh for `fraction` of the time between `Last-Modified` and `Date`, at most `max`
    /// (RFC 9111 §4.2.2). `0.0`: no heuristic freshness. Default off.
    pub fn heuristic_freshness(mut self, fraction: f64, max: Duration) -> Self {
        self.cfg().heuristic_fraction = fraction.clamp(0.0, 1.0);
        self.cfg().heuristic_max = max;
        self
    }

    /// Targeted cache-control fields (RFC 9213), in order of precedence, for example
    /// `["Acme-CDN-Cache-Control", "CDN-Cache-Control"]`: with
    /// [`http_freshness`](Self::http_freshness), the first one a response carries as a valid
    /// Structured Field dictionary replaces `Cache-Control` for this cache (storing,
    /// freshness, revalidation); an invalid one is ignored. The field is forwarded unchanged.
    /// Default none.
    ///
    /// # Panics
    ///
    /// If a name is not a valid header name.
    pub fn targeted_cache_control<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let names: Vec<http::HeaderName> = names
            .into_iter()
            .map(|n| {
                http::HeaderName::from_bytes(n.as_ref().as_bytes())
                    .unwrap_or_else(|e| panic!("targeted field `{}`: {e}", n.as_ref()))
            })
            .collect();
        self.cfg().targeted = Arc::from(names);
        self
    }

    /// With [`http_freshness`](Self::http_freshness): the response's own RFC 5861
    /// `stale-while-revalidate=N` and `stale-if-error=N` widen the route's
    /// [`stale_while_revalidate`](Self::stale_while_revalidate) and
    /// [`stale_if_error`](Self::stale_if_error) windows for that entry (never past what
    /// `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache` allow: nothing).
    /// Default off.
    pub fn stale_directives(mut self, enable: bool) -> Self {
        self.cfg().stale_directives = enable;
        self
    }

    /// Revalidation: an entry with a validator (`ETag`, `Last-Modified`) is kept `keep` past
    /// its freshness, and a request that finds it stale sends the inner service a conditional
    /// request (`If-None-Match` / `If-Modified-Since` from the entry, unless the client sent
    /// its own). A `304 Not Modified` refreshes the stored entry's headers and freshness (RFC
    /// 9111 §4.3.4; a guarded write like any fill) and the client gets the full response, or its
    /// own `304` (`Cache-Status: ...; fwd=stale; fwd-status=304`). Background refreshes
    /// ([`stale_while_revalidate`](Self::stale_while_revalidate)) revalidate the same way.
    /// Works on app handlers too: one that answers `304` cheaply saves rendering.
    /// `Duration::ZERO`: off (the default).
    pub fn revalidate(mut self, keep: Duration) -> Self {
        self.cfg().keep_for_revalidation = keep;
        self
    }

    /// Invalidation on unsafe methods (RFC 9111 §4.4): a request whose method is not safe
    /// (anything but GET, HEAD, OPTIONS, TRACE) that gets a `2xx` or `3xx` invalidates the
    /// entry of its target URI and of its `Location` and `Content-Location` when they are on
    /// the same origin, through [`Cache::invalidate`](crate::Cache::invalidate) (run to the end
    /// whatever happens to the request, queued and retried when the store fails). The keys are
    /// the route's keys for a GET of those URIs. Default off.
    pub fn invalidate_unsafe(mut self, enable: bool) -> Self {
        self.cfg().invalidate_unsafe = enable;
        self
    }

    /// Answers a `Range` request (one byte range) from a stored `200` with a `206 Partial
    /// Content` (`416 Range Not Satisfiable` when the range is past the end), honouring
    /// `If-Range`. Several ranges, another unit, or a range that does not parse get the whole
    /// `200`. On a miss the request goes to the inner service with its `Range`; a `206` it
    /// answers is passed through, not stored (unless the key includes `Range`). Default off
    /// (requests with `Range` bypass the cache unless the key includes it).
    pub fn serve_ranges(mut self, enable: bool) -> Self {
        self.cfg().ranges = enable;
        self
    }

    /// Whether a stored response that has no `ETag` gets a strong content-hash one (so clients
    /// can revalidate with `If-None-Match`). Default on; off in the shared-cache mode, where
    /// the origin's validators are the only ones (a cache inventing a strong validator the
    /// origin does not know would send it upstream in conditional requests).
    pub fn generate_etag(mut self, enable: bool) -> Self {
        self.cfg().etag = enable;
        self
    }

    /// Streams every miss to the client while a copy is stored, bodies of known length too (the
    /// default collects those first, to store them before answering). The first byte leaves as
    /// soon as the inner service sends it. The head is sent before the store, so such a
    /// response's `Cache-Status` never says `stored` (`fwd=uri-miss`); its
    /// [`PendingStore`](crate::PendingStore) extension says how the store ended once the body
    /// was consumed. Default off.
    pub fn stream_misses(mut self, enable: bool) -> Self {
        self.cfg().stream_misses = enable;
        self
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, self.config.clone())
    }
}

impl CacheLayer {
    /// Bounds the entries of this layer's cache namespace by count, evicting by `policy`
    /// ([`eviction`](crate::eviction)): a read that finds an entry touches its rank in the same
    /// round trip, and a stored fill is ranked and evicts what the policy names (one more round
    /// trip on a miss).
    ///
    /// The bound is per namespace: routes that share the [`Cache`] share it, so give each bounded
    /// route its own namespace (and the same policy wherever that namespace is used). Works on
    /// Valkey (single server or [Cluster](crate::ValkeyStore::cluster)) and on a
    /// [`MemoryStore`](crate::MemoryStore).
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use tower_valkey_cache::{eviction::Lru, Cache, CacheLayer, MemoryStore};
    ///
    /// let cache = Cache::builder(MemoryStore::new()).namespace("products").build();
    /// let app: Router = Router::new().route(
    ///     "/products/{id}",
    ///     get(|| async { "product" }).route_layer(
    ///         CacheLayer::new(cache).key("product:{id}").eviction(Lru::with_capacity(10_000)),
    ///     ),
    /// );
    /// ```
    ///
    /// # Panics
    ///
    /// If the cache's store cannot hold bounded namespaces (its [`Store::ranked`] is `None`:
    /// not a `ValkeyStore`, a `MemoryStore`, or a store wrapping one), or if the cache's
    /// namespace is sharded ([`CacheBuilder::shards`](crate::CacheBuilder::shards) above 1: a
    /// bound is one index, which cannot span shards).
    ///
    /// [`Store::ranked`]: crate::store::Store::ranked
    pub fn eviction(mut self, policy: impl crate::eviction::EvictionPolicy) -> Self {
        let eviction = self.config.cache.route_eviction(Arc::new(policy)).unwrap_or_else(|| {
            panic!(
                "CacheLayer::eviction needs a store with bounded namespaces (Store::ranked), not {}",
                self.config.cache.store().name()
            )
        });
        self.cfg().eviction = Some(Arc::new(eviction));
        self
    }
}
