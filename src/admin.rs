//! An HTTP admin API for operators (feature `admin`): purge by key, tag or pattern, and read the
//! counters and breaker state, without code or a redeploy.
//!
//! [`router`] returns an axum [`Router`] to mount where the operator can reach it (it is off
//! unless mounted); every request must pass the [`Authorizer`] given to it, by default a
//! [`BearerToken`] compared in constant time. Purges go through [`Cache::invalidate`], so they
//! are cancellation-safe and queued for retry when the store is unavailable.
//!
//! | request | does |
//! |---|---|
//! | `PURGE /keys/{key}` | invalidates one key (percent-decoded, relative to the namespace) |
//! | `PURGE /tags/{tag}` | invalidates every entry carrying the tag |
//! | `PURGE /patterns/{glob}` | invalidates every key matching the glob (`?allow_all=true` for one without a literal byte, like `*`) |
//! | `POST /purge` with `{"keys": [..], "tags": [..], "patterns": [..], "allow_all": false}` | all of those at once (every field optional, no other field) |
//! | `GET /stats` | [`Cache::stats`], [`Cache::is_degraded`], [`Cache::pending_invalidations`], [`Cache::l1_stats`] as JSON |
//!
//! A purge answers `200` with the entries it removed (`{"removed": {"keys": 1, "tags": 0,
//! "patterns": 0, "total": 1}}`), or `202` with `"queued": true` and the store's error when part
//! of it is owed to the store (it lands when the store is back, or, with
//! [`invalidation_wait`](crate::CacheBuilder::invalidation_wait) set, when the part still running
//! past the wait finishes; this process reads around the cache until then). Bad input is a
//! `4xx` with `{"error": "..."}` and purges nothing: every part of a request is checked before
//! any of it runs. A cache problem is never a `5xx`.
//!
//! ```
//! use axum::Router;
//! use tower_valkey_cache::admin::{self, BearerToken};
//! use tower_valkey_cache::{Cache, MemoryStore};
//!
//! let cache = Cache::new(MemoryStore::new());
//! let token = "a long random secret from the environment";
//! let app: Router = Router::new()
//!     // ... the application's routes ...
//!     .nest("/admin/cache", admin::router(cache, BearerToken::new(token)));
//! // curl -X PURGE -H "Authorization: Bearer $TOKEN" http://host/admin/cache/tags/user:1
//! ```

use crate::key::MAX_KEY_LEN;
use crate::{Cache, Invalidation};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http::{header, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The largest `POST /purge` body accepted (larger: `413`).
pub const MAX_BODY: usize = 64 * 1024;
/// The most keys, tags and patterns one request may name, together (more: `400`).
pub const MAX_ITEMS: usize = 1000;

/// Decides whether a request may use the admin API. Implemented by [`BearerToken`] and by any
/// `Fn(&http::request::Parts) -> bool` (mTLS identity set by a front layer, an IP allow list, a
/// session check, ...). A request it refuses gets `401` and nothing else runs.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `request` (its head; the body is not read before this) may use the API.
    fn authorize(&self, request: &http::request::Parts) -> bool;
}

impl<F> Authorizer for F
where
    F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
{
    fn authorize(&self, request: &http::request::Parts) -> bool {
        self(request)
    }
}

/// The default [`Authorizer`]: `Authorization: Bearer <token>` with the configured token.
///
/// The comparison is in constant time: both sides are hashed (SHA-256) and the digests compared
/// without an early exit, so neither the token's bytes nor its length show in response times.
/// An empty token authorizes nothing (a missing environment variable fails closed).
#[derive(Clone)]
pub struct BearerToken {
    /// SHA-256 of the token; None for an empty token.
    digest: Option<[u8; 32]>,
}

impl BearerToken {
    /// Accepts requests presenting `token`. Use a long random secret and serve the API over TLS
    /// (or on a private listener): the token is a password.
    pub fn new(token: impl AsRef<[u8]>) -> Self {
        let token = token.as_ref();
        Self {
            digest: (!token.is_empty()).then(|| Sha256::digest(token).into()),
        }
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken").finish_non_exhaustive()
    }
}

impl Authorizer for BearerToken {
    fn authorize(&self, request: &http::request::Parts) -> bool {
        let Some(expected) = &self.digest else {
            return false;
        };
        let mut values = request.headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false; // none, or several: ambiguous
        };
        let value = value.as_bytes();
        let Some(presented) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| value.get(7..))
        else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented).into();
        constant_time_eq(&presented, expected)
    }
}

/// Equality of two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[derive(Clone)]
struct Admin {
    cache: Cache,
    authorizer: Arc<dyn Authorizer>,
}

/// The admin API over `cache`, guarded by `authorizer` (see the [module docs](self) for the
/// routes). Mount it with [`Router::nest`] under a path of your choice; its state is its own, so
/// it nests into a router of any state.
pub fn router<S>(cache: Cache, authorizer: impl Authorizer) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let admin = Admin {
        cache,
        authorizer: Arc::new(authorizer),
    };
    Router::new()
        .route("/stats", any(stats))
        .route("/purge", any(purge_json))
        .route("/keys/{*key}", any(purge_key))
        .route("/tags/{*tag}", any(purge_tag))
        .route("/patterns/{*pattern}", any(purge_pattern))
        .fallback(not_found)
        .with_state(admin)
}

/// A refusal: a status and a message for the operator.
struct Refusal(StatusCode, String);

impl Refusal {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut res = json(self.0, &serde_json::json!({ "error": self.1 }));
        if self.0 == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tower-valkey-cache admin\""),
            );
        }
        res
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut res = Response::new(Body::from(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn authorize(admin: &Admin, parts: &http::request::Parts) -> Result<(), Refusal> {
    if admin.authorizer.authorize(parts) {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "not authorized for the cache admin API".into(),
        ))
    }
}

fn method(parts: &http::request::Parts, allowed: &Method) -> Result<(), Refusal> {
    if parts.method == allowed {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use {allowed} here, not {}", parts.method),
        ))
    }
}

fn purge_method() -> Method {
    // A valid token (letters only): this cannot fail.
    Method::from_bytes(b"PURGE").unwrap_or(Method::DELETE)
}

async fn not_found(State(admin): State<Admin>, req: Request) -> Refusal {
    let (parts, _) = req.into_parts();
    if let Err(refusal) = authorize(&admin, &parts) {
        return refusal;
    }
    Refusal(
        StatusCode::NOT_FOUND,
        "no such admin route: GET /stats, POST /purge, PURGE /keys/{key}, /tags/{tag}, \
         /patterns/{glob}"
            .into(),
    )
}

async fn stats(State(admin): State<Admin>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(refusal) = authorize(&admin, &parts).and_then(|()| method(&parts, &Method::GET)) {
        return refusal.into_response();
    }
    let cache = &admin.cache;
    let stats = cache.stats();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "namespace": cache.namespace(),
            "degraded": cache.is_degraded(),
            "pending_invalidations": cache.pending_invalidations(),
            "hit_ratio": stats.hit_ratio(),
            "requests": stats.requests(),
            "stats": stats,
            "l1": cache.l1_stats(),
        }),
    )
}

/// The body of `POST /purge`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    allow_all: bool,
}

impl PurgeRequest {
    /// Checks every part before anything runs: a request refused purges nothing.
    fn check(&self) -> Result<(), Refusal> {
        let items = self.keys.len() + self.tags.len() + self.patterns.len();
        if items == 0 {
            return Err(Refusal::bad(
                "nothing to purge: give keys, tags or patterns",
            ));
        }
        if items > MAX_ITEMS {
            return Err(Refusal::bad(format!(
                "{items} keys, tags and patterns in one request; at most {MAX_ITEMS}"
            )));
        }
        for (kind, values) in [
            ("key", &self.keys),
            ("tag", &self.tags),
            ("pattern", &self.patterns),
        ] {
            for value in values {
                if value.is_empty() {
                    return Err(Refusal::bad(format!("an empty {kind}")));
                }
                if value.len() > 4 * MAX_KEY_LEN {
                    return Err(Refusal::bad(format!(
                        "a {kind} of {} bytes; at most {}",
                        value.len(),
                        4 * MAX_KEY_LEN
                    )));
                }
            }
        }
        if !self.allow_all {
            if let Some(p) = self.patterns.iter().find(|p| !has_literal(p.as_bytes())) {
                return Err(Refusal::bad(format!(
                    "pattern {p:?} has no literal character and matches every key of the \
                     namespace; set \"allow_all\": true (or ?allow_all=true) to purge everything"
                )));
            }
        }
        Ok(())
    }

    /// Runs the purge in a task of its own (the whole of it lands even if the client goes).
    async fn run(self, cache: Cache) -> Response {
        let keys = self.keys.len();
        let tags = self.tags.len();
        let patterns = self.patterns.len();
        let work = async move {
            let mut removed = [0u64; 3];
            let mut failed = None;
            let parts = [
                Invalidation::new().keys(self.keys),
                Invalidation::new().tags(self.tags),
                Invalidation::new().patterns(self.patterns),
            ];
            for (slot, part) in removed.iter_mut().zip(parts) {
                if part.is_empty() {
                    continue;
                }
                match cache.invalidate(part).await {
                    Ok(n) => *slot = n,
                    Err(e) => {
                        failed.get_or_insert(e.to_string());
                    }
                }
            }
            (removed, failed)
        };
        let (removed, failed) = match tokio::runtime::Handle::try_current() {
            Ok(rt) => match rt.spawn(work).await {
                Ok(done) => done,
                Err(e) => ([0; 3], Some(format!("purge task ended early: {e}"))),
            },
            Err(_) => work.await,
        };
        let [k, t, p] = removed;
        tracing::info!(
            keys,
            tags,
            patterns,
            removed = k + t + p,
            queued = failed.is_some(),
            "cache admin purge"
        );
        let mut body = serde_json::json!({
            "removed": { "keys": k, "tags": t, "patterns": p, "total": k + t + p },
        });
        match failed {
            None => json(StatusCode::OK, &body),
            Some(error) => {
                body["queued"] = true.into();
                body["error"] = error.into();
                json(StatusCode::ACCEPTED, &body)
            }
        }
    }
}

/// Whether a glob pattern has a byte that only matches itself (Valkey's syntax, see
/// [`glob_match`](crate::store::glob_match)): without one (`*`, `?*`, `[a-z]*`, `[^]*`, ...) it
/// selects every key, or every key of some lengths, of the namespace.
fn has_literal(pattern: &[u8]) -> bool {
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' | b'?' => i += 1,
            b'\\' => return true, // `\x` matches `x`; a trailing `\` matches a backslash
            b'[' => {
                // Skip the class as Valkey's matcher reads it: `\x` lists `x`, `x-y` is a
                // range whose end may be any byte, `]` closes it (even as its first byte), and
                // an unclosed class runs to the end of the pattern.
                i += 1;
                if pattern.get(i) == Some(&b'^') {
                    i += 1;
                }
                while let Some(&b) = pattern.get(i) {
                    if b == b'\\' && i + 1 < pattern.len() {
                        i += 2;
                    } else if b == b']' {
                        i += 1;
                        break;
                    } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' {
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
            }
            _ => return true,
        }
    }
    false
}

/// Rejects any query string except `allow_all=true` (where `allow` says it is meaningful).
fn query_allow_all(parts: &http::request::Parts, allow: bool) -> Result<bool, Refusal> {
    let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) else {
        return Ok(false);
    };
    match query {
        "allow_all=true" if allow => Ok(true),
        "allow_all=false" if allow => Ok(false),
        _ if allow => Err(Refusal::bad(format!(
            "unknown query {query:?}: the only parameter is allow_all=true"
        ))),
        _ => Err(Refusal::bad(format!(
            "unknown query {query:?}: none is accepted here (percent-encode '?' in a key or tag)"
        ))),
    }
}

async fn purge_json(State(admin): State<Admin>, req: Request) -> Response {
    match purge_json_checked(admin, req).await {
        Ok(res) => res,
        Err(refusal) => refusal.into_response(),
    }
}

async fn purge_json_checked(admin: Admin, req: Request) -> Result<Response, Refusal> {
    let (parts, body) = req.into_parts();
    authorize(&admin, &parts)?;
    method(&parts, &Method::POST)?;
    query_allow_all(&parts, false)?;
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the purge as Content-Type: application/json".into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a purge body is at most {MAX_BODY} bytes"),
        )
    })?;
    let request: PurgeRequest = serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::bad(format!("invalid purge request: {e}")))?;
    request.check()?;
    Ok(request.run(admin.cache).await)
}

async fn purge_one(
    admin: Admin,
    req: Request,
    value: String,
    build: fn(String, &mut PurgeRequest),
    patterns: bool,
) -> Response {
    let (parts, _) = req.into_parts();
    let checked = (|| {
        authorize(&admin, &parts)?;
        method(&parts, &purge_method())?;
        let mut request = PurgeRequest {
            allow_all: query_allow_all(&parts, patterns)?,
            ..PurgeRequest::default()
        };
        build(value, &mut request);
        request.check()?;
        Ok::<_, Refusal>(request)
    })();
    match checked {
        Ok(request) => request.run(admin.cache).await,
        Err(refusal) => refusal.into_response(),
    }
}

async fn purge_key(State(admin): State<Admin>, Path(key): Path<String>, req: Request) -> Response {
    purge_one(admin, req, key, |v, r| r.keys.push(v), false).await
}

async fn purge_tag(State(admin): State<Admin>, Path(tag): Path<String>, req: Request) -> Response {
    purge_one(admin, req, tag, |v, r| r.tags.push(v), false).await
}

async fn purge_pattern(
    State(admin): State<Admin>,
    Path(pattern): Path<String>,
    req: Request,
) -> Response {
    purge_one(admin, req, pattern, |v, r| r.patterns.push(v), true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::glob_match;
    use proptest::prelude::*;

    #[test]
    fn patterns_without_a_literal() {
        for p in [
            "*", "**", "?", "?*", "*?*", "[a-z]*", "[^]*", "[]", "[", "[^", "[ab", "[\\]]*",
        ] {
            assert!(!has_literal(p.as_bytes()), "{p:?} has no literal");
        }
        for p in [
            "a*", "*a", "user:*", "\\*", "[a-z]x", "?a?", "[a-]b]x", "\\",
        ] {
            assert!(has_literal(p.as_bytes()), "{p:?} has a literal");
        }
    }

    proptest! {
        /// The class of "purges more than asked": a pattern let through without `allow_all`
        /// must have a byte every match contains. Patterns over an alphabet without `z` that
        /// `has_literal` passes never match a key made of `z`s only, of any length.
        #[test]
        fn a_pattern_passed_without_allow_all_does_not_match_everything(
            pattern in proptest::collection::vec(
                prop_oneof![Just(b'*'), Just(b'?'), Just(b'['), Just(b']'), Just(b'^'),
                            Just(b'-'), Just(b'\\'), Just(b'a'), Just(b'b')], 0..10),
        ) {
            if has_literal(&pattern) {
                for len in 0..8 {
                    let key = vec![b'z'; len];
                    prop_assert!(!glob_match(&pattern, &key),
                        "{:?} matched {:?}", String::from_utf8_lossy(&pattern), key);
                }
            }
        }
    }

    #[test]
    fn bearer_token_compares_digests() {
        let auth = BearerToken::new("s3cret");
        let parts = |value: Option<&str>| {
            let mut req = http::Request::get("/stats");
            if let Some(v) = value {
                req = req.header(header::AUTHORIZATION, v);
            }
            req.body(()).unwrap().into_parts().0
        };
        assert!(auth.authorize(&parts(Some("Bearer s3cret"))));
        assert!(auth.authorize(&parts(Some("bearer s3cret"))));
        assert!(!auth.authorize(&parts(Some("Bearer s3cre"))));
        assert!(!auth.authorize(&parts(Some("Bearer s3cret "))));
        assert!(!auth.authorize(&parts(Some("Basic s3cret"))));
        assert!(!auth.authorize(&parts(Some("s3cret"))));
        assert!(!auth.authorize(&parts(None)));
        let empty = BearerToken::new("");
        assert!(!empty.authorize(&parts(Some("Bearer "))));
        assert!(!empty.authorize(&parts(None)));
    }
}
