use super::service::{CacheService, Shared};
use crate::key::{DefaultKey, KeyStrategy, KeyTemplate};
use crate::Cache;
use http::{Method, StatusCode};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Caches responses of the services it wraps. See the [module docs](crate::layer) for an example.
///
/// Configure it per route with the chained builder methods, then pass it to `.route_layer(...)`
/// (axum), `.layer(...)` or a `ServiceBuilder`.
#[derive(Clone)]
pub struct CacheLayer {
    cache: Cache,
    ttl: Option<Duration>,
    key: Arc<dyn KeyStrategy>,
    methods: Vec<Method>,
    statuses: Vec<StatusCode>,
    max_body_bytes: usize,
    name: Arc<str>,
    status_header: bool,
    allow_credentials: bool,
    tags: Vec<KeyTemplate>,
    tag_headers: bool,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("namespace", &self.cache.namespace())
            .field("ttl", &self.ttl)
            .field("methods", &self.methods)
            .field("statuses", &self.statuses)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A layer caching into `cache`: GET and HEAD, status 200, bodies up to 1 MiB, the cache's
    /// default TTL, the [default key](crate::key::DefaultKey).
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            ttl: None,
            key: Arc::new(DefaultKey),
            methods: vec![Method::GET, Method::HEAD],
            statuses: vec![StatusCode::OK],
            max_body_bytes: 1 << 20,
            name: Arc::from("tower-valkey-cache"),
            status_header: true,
            allow_credentials: false,
            tags: Vec::new(),
            tag_headers: true,
        }
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
            self.tags
                .push(KeyTemplate::parse(t.as_ref()).unwrap_or_else(|e| panic!("{e}")));
        }
        self
    }

    /// Whether tags are also read from the handler's `Surrogate-Key` (space-separated) and
    /// `Cache-Tag` (comma-separated) response headers, which are then removed from the response.
    /// Default on.
    pub fn tags_from_headers(mut self, enable: bool) -> Self {
        self.tag_headers = enable;
        self
    }

    /// How long responses stay fresh. Defaults to the cache's TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The key template, e.g. `"user:{id}"` (see [`key`](crate::key) for the variables).
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
        self.key = Arc::new(strategy);
        self
    }

    /// The methods whose responses are cached. Default GET and HEAD (HEAD is answered from the
    /// GET entry). Requests with other methods pass through.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The response statuses that are stored. Default 200 only.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Bodies larger than this are streamed to the client and not stored. Default 1 MiB.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
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
        self.name = Arc::from(name);
        self
    }

    /// Whether responses carry a `Cache-Status` header. Default on.
    pub fn cache_status_header(mut self, enable: bool) -> Self {
        self.status_header = enable;
        self
    }

    /// Caches requests that carry `Authorization` or `Cookie` although the key strategy does not
    /// say it identifies the caller. Only for a custom [`KeyStrategy`] whose key includes the
    /// principal: otherwise one user's response would be served to another. Templates that use
    /// `{header.authorization}` or `{header.cookie}` need no opt-in.
    pub fn allow_credentials(mut self, allow: bool) -> Self {
        self.allow_credentials = allow;
        self
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let keyed_by_caller = self.allow_credentials || self.key.includes_credentials();
        CacheService::new(
            inner,
            Arc::new(Shared {
                cache: self.cache.clone(),
                ttl: self.ttl.unwrap_or_else(|| self.cache.default_ttl()),
                key: self.key.clone(),
                methods: self.methods.clone(),
                statuses: self.statuses.clone(),
                max_body_bytes: self.max_body_bytes,
                name: self.name.clone(),
                status_header: self.status_header,
                keyed_by_caller,
                tags: self.tags.clone(),
                tag_headers: self.tag_headers,
                key_error_reported: AtomicBool::new(false),
            }),
        )
    }
}
