//! Cache keys: templates, the default key, keys from axum extractors and the [`KeyStrategy`]
//! extension point.
//!
//! Keys are relative to a [`Cache`](crate::Cache)'s namespace: the store sees
//! `namespace:` followed by the key. This module is the one place that turns requests into keys;
//! [`CacheLayer`](crate::CacheLayer), invalidation and the function cache all use it.
//!
//! # Templates
//!
//! A [`KeyTemplate`] mixes literal text with `{...}` holes:
//!
//! | hole | value |
//! |---|---|
//! | `{id}` (any bare name) | the axum path parameter of that name, percent-decoded (the layer must sit on the route) |
//! | `{id:u64}` | the same, parsed as a `u64` and written back (`0501`, `+501` and `501` are all `501`) |
//! | `{query.page}` | every value of query parameter `page`, decoded as the handler's `Query` sees them, in request order, joined by `,`; `~` when absent |
//! | `{query.page:u32}` | the one value of `page`, parsed as a `u32` and written back; `~` when absent |
//! | `{header.x-tenant}` | the request header's values (bytes as sent, one per header line, joined by `,`); `~` when absent |
//! | `{path}` | the request path as sent (the router matches it as sent) |
//! | `{method}` | the request method (`HEAD` renders as `GET`: HEAD is answered from the GET entry) |
//!
//! Typed holes take `u8`, `u16`, `u32`, `u64`, `u128`, `usize`, `i8`, `i16`, `i32`, `i64`,
//! `i128`, `isize` or `bool`, parsed the way axum's `Path` and `Query` parse them (`str::parse`).
//! A value that does not parse, or a typed query parameter given more than once, is a request
//! the handler would reject: no key is rendered ([`KeyError::Rejected`]) and the request is
//! served uncached (`Cache-Status: ...; fwd=bypass; detail=key-rejected`).
//!
//! Credentials (`{header.authorization}`, `{header.cookie}`, `{header.proxy-authorization}`) are
//! never written raw: they render as `h` and a 128-bit hash of the header's values. Write `{{`
//! and `}}` for literal braces. `#` may not appear in a template: it starts the suffixes the cache
//! appends to keys (`#body:`, `#vary:` and the hash of a shortened key).
//!
//! ```
//! use tower_valkey_cache::key::{KeyContext, KeyStrategy, KeyTemplate};
//!
//! let template = KeyTemplate::parse("user_{id}_posts:page_{query.page:u32}").unwrap();
//! let req = http::Request::get("/users/b_c/posts?page=02").body(()).unwrap();
//! let (parts, _) = req.into_parts();
//! let ctx = KeyContext::new(&parts).with_path_params(vec![("id".into(), "b_c".into())]);
//! assert_eq!(template.key(&ctx).unwrap(), "user_b%5Fc_posts:page_2");
//! ```
//!
//! Keys are **injective**: two requests that present different values to the handler never share
//! a key, whatever the template's literal text (every value is escaped into an alphabet that the
//! template's separators lie outside; `tests/it/properties.rs` checks it on random templates).
//! The argument: ARCHITECTURE.md › Keys are injective.
//!
//! # Keys by spelling, keys by value
//!
//! Plain holes key by **spelling**: `{id}` for `/users/0501` and `/users/501` are two keys,
//! although a `Path<u64>` handler sees one number. That never serves a wrong response, but the
//! spellings are cached apart (a write through one spelling leaves the others' entries in
//! place). Typed holes (`{id:u64}`) and [keys from extractors](#keys-from-extractors) key by
//! **value**: the spellings share one entry, which an invalidation of that value removes.
//!
//! Query values are decoded as axum's `Query` decodes them (`+` is a space, `%61` is `a`, names
//! compared decoded), so `?q=%61` and `?q=a` share a key; a handler that reads the raw query
//! string (`RawQuery`, `Uri`) tells those apart, so key it with a closure over the raw query.
//! Headers are keyed byte for byte, and `{path}` as sent: the router matches the raw path, so
//! `/%61bout` is not `/about` to it, nor to the key.
//!
//! # Keys from extractors
//!
//! [`CacheLayer::key_from`] (feature `axum`) runs an axum extractor
//! (`FromRequestParts`) on the request and builds the key from what it extracted, the value the
//! handler sees:
//!
//! ```
//! use axum::{extract::Path, routing::get, Router};
//! use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
//!
//! let cache = Cache::new(MemoryStore::new());
//! let app: Router = Router::new().route(
//!     "/users/{id}",
//!     get(|Path(id): Path<u64>| async move { format!("user {id}") })
//!         .route_layer(CacheLayer::new(cache).key_from(|Path(id): Path<u64>| format!("user:{id}"))),
//! );
//! ```
//!
//! An extractor that rejects the request means the handler rejects it too: the request is served
//! uncached (`detail=key-rejected`) and the handler answers as it would. The closure returns a
//! `String` or an `Option<String>` (`None`: do not cache this request). What it returns is used
//! as it is, bounded like every key: escape text that is not a parsed number with [`escape`].
//!
//! # The default key
//!
//! [`DefaultKey`] is the method, `:`, the path as sent (escaped as `{path}` is), then `?` and the
//! query's parameters decoded as `Query` decodes them, sorted by name (stably: the values of a
//! repeated name keep their order), every value kept: `name=value&...`, names and values
//! escaped. `?a=1&b=2` and `?b=2&a=1` share an entry; `?a=1&a=2` and `?a=2&a=1` do not.
//!
//! # Your own strategy
//!
//! Any `Fn(&http::request::Parts) -> Option<String>` is a [`KeyStrategy`]; `None` means "do not
//! cache this request". Its output is used as it is, only bounded in length: keeping different
//! requests apart is its author's responsibility (escape user input with [`escape`]).
//!
// `key_from` exists with feature `axum`: without it, the link goes to docs.rs (every feature).
#![cfg_attr(
    feature = "axum",
    doc = "[`CacheLayer::key_from`]: crate::CacheLayer::key_from"
)]
#![cfg_attr(
    not(feature = "axum"),
    doc = "[`CacheLayer::key_from`]: https://docs.rs/tower-valkey-cache/latest/tower_valkey_cache/struct.CacheLayer.html#method.key_from"
)]

mod escape;
#[cfg(feature = "axum")]
mod extract;
mod template;

pub(crate) use escape::{bound_all, bound_length, short_hash, with_suffix};
pub use escape::{escape, glob_escape, KEEP_LEN, MAX_KEY_LEN};
#[cfg(feature = "axum")]
pub(crate) use extract::ExtractKey;
pub use template::{KeyTemplate, TemplateError};

use http::request::Parts;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The request data a key is derived from.
#[derive(Debug)]
pub struct KeyContext<'a> {
    parts: &'a Parts,
    path_params: PathParams,
}

/// The path parameters a key reads (name, percent-decoded value): axum's as the router matched
/// them (shared, not copied per request), or a list a caller set.
#[derive(Debug, Default)]
pub(crate) enum PathParams {
    #[default]
    None,
    Owned(Vec<(String, String)>),
    #[cfg(feature = "axum")]
    Axum(axum::extract::RawPathParams),
}

impl PathParams {
    fn get(&self, name: &str) -> Option<&str> {
        match self {
            PathParams::None => None,
            PathParams::Owned(v) => v.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()),
            #[cfg(feature = "axum")]
            PathParams::Axum(p) => p.iter().find(|(n, _)| *n == name).map(|(_, v)| v),
        }
    }
}

impl<'a> KeyContext<'a> {
    /// A context over the request's parts, with no path parameters.
    pub fn new(parts: &'a Parts) -> Self {
        Self {
            parts,
            path_params: PathParams::None,
        }
    }

    /// Sets the path parameters (name, percent-decoded value); the layer reads them from axum.
    pub fn with_path_params(self, params: Vec<(String, String)>) -> Self {
        self.with_params(PathParams::Owned(params))
    }

    pub(crate) fn with_params(mut self, params: PathParams) -> Self {
        self.path_params = params;
        self
    }

    /// The request parts.
    pub fn parts(&self) -> &Parts {
        self.parts
    }

    /// A path parameter by name.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.path_params.get(name)
    }

    /// Every value of query parameter `name`, in request order, decoded as axum's `Query`
    /// decodes them (`+` is a space, percent-escapes decoded, names compared decoded). Values
    /// are bytes: a value that is not UTF-8 once decoded stays distinct from others.
    pub fn query_values(&self, name: &str) -> Vec<Cow<'a, [u8]>> {
        let Some(q) = self.parts.uri.query() else {
            return Vec::new();
        };
        raw_query_pairs(q)
            .filter(|(n, _)| query_name(n) == name)
            .map(|(_, v)| form_decode(v))
            .collect()
    }
}

/// The query's parameters as axum's `Query` (serde_urlencoded, form_urlencoded) splits them, not
/// yet decoded: on `&`, empty pieces skipped, name and value split at the first `=` (a piece
/// without one is a name with an empty value). Decode each with [`form_decode`]; `Query` then
/// reads the bytes as text lossily (invalid UTF-8 as U+FFFD): names are compared that way
/// ([`query_name`]), values are kept as bytes (so two values `Query` cannot tell apart may key
/// apart, never the reverse).
pub(crate) fn raw_query_pairs(query: &str) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &p[p.len()..]),
        })
}

/// A raw query name as the handler's `Query` sees it: decoded, then read as text lossily.
/// Borrowed from the query (no allocation) when there is nothing to decode.
pub(crate) fn query_name(raw: &[u8]) -> Cow<'_, str> {
    lossy(&form_decode(raw))
}

/// Decoded bytes as text, lossily, borrowing what the bytes borrow.
fn lossy<'q>(decoded: &Cow<'q, [u8]>) -> Cow<'q, str> {
    match decoded {
        Cow::Borrowed(b) => String::from_utf8_lossy(b),
        Cow::Owned(v) => Cow::Owned(String::from_utf8_lossy(v).into_owned()),
    }
}

/// `application/x-www-form-urlencoded` decoding of one name or value, as form_urlencoded does it
/// (`+` to space, then percent-decoding; an invalid escape stays as it is), to bytes.
fn form_decode(s: &[u8]) -> Cow<'_, [u8]> {
    use percent_encoding::percent_decode;
    if s.contains(&b'+') {
        let spaced: Vec<u8> = s
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        Cow::Owned(percent_decode(&spaced).collect())
    } else {
        percent_decode(s).into()
    }
}

/// Why no key could be derived for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The template names a path parameter the request does not have: the template does not
    /// fit the route (a configuration error).
    MissingPathParam(String),
    /// The strategy declined to key this request: it is served uncached.
    Declined,
    /// The request holds a value its handler would reject: a typed hole's value does not parse,
    /// a typed query parameter is given several times, a path parameter is not UTF-8 once
    /// decoded, or a key extractor rejected the request. It is served uncached, and the
    /// handler answers it as it would. The text says which hole or extractor (never the value).
    Rejected(String),
}

impl KeyError {
    /// The `Cache-Status` detail of a request served uncached for this reason.
    pub(crate) fn detail(&self) -> &'static str {
        match self {
            KeyError::MissingPathParam(_) => "key-error",
            KeyError::Declined => "key-declined",
            KeyError::Rejected(_) => "key-rejected",
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::MissingPathParam(p) => write!(
                f,
                "key template names path parameter `{p}`, which this route does not have \
                 (is the layer on the right route, with `.route_layer`?)"
            ),
            KeyError::Declined => f.write_str("key strategy declined the request"),
            KeyError::Rejected(why) => write!(f, "request rejected by its key: {why}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Derives a cache key from a request.
///
/// Implemented by [`KeyTemplate`], [`DefaultKey`] and every
/// `Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static`.
pub trait KeyStrategy: Send + Sync + 'static {
    /// The key for this request, relative to the cache's namespace.
    fn key(&self, ctx: &KeyContext<'_>) -> Result<String, KeyError>;

    /// Whether the key includes request header `header`, which makes it safe to cache requests
    /// that carry it: each value then has entries of its own. The layer asks it about the
    /// credential headers (`Authorization`, `Cookie`, `Proxy-Authorization`: each caller then has
    /// entries of their own) and `Range` (a request with `Range` bypasses the cache, and a `206`
    /// is never stored, unless the key includes it). Checked per header, so a key over
    /// `Authorization` does not make requests authenticated by `Cookie` shareable.
    fn covers_header(&self, header: &http::HeaderName) -> bool {
        let _ = header;
        false
    }

    /// Whether [`KeyContext::path_param`] is used (the layer then reads them from axum).
    fn needs_path_params(&self) -> bool {
        false
    }
}

impl<F> KeyStrategy for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn key(&self, ctx: &KeyContext<'_>) -> Result<String, KeyError> {
        self(ctx.parts).map(bound_length).ok_or(KeyError::Declined)
    }
}

/// The default key: method, `:`, the path as sent, `?` and the decoded query parameters sorted
/// by name (see the [module docs](self#the-default-key)).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultKey;

impl KeyStrategy for DefaultKey {
    fn key(&self, ctx: &KeyContext<'_>) -> Result<String, KeyError> {
        let uri = &ctx.parts.uri;
        let mut out = String::with_capacity(8 + uri.path().len() + uri.query().map_or(0, str::len));
        escape::escape_into(&mut out, method_name(&ctx.parts.method), false);
        out.push(':');
        escape::escape_into(&mut out, uri.path(), true);
        if let Some(q) = uri.query() {
            let mut pairs: Vec<_> = raw_query_pairs(q)
                .map(|(n, v)| {
                    let n = form_decode(n);
                    (lossy(&n), n, v)
                })
                .collect();
            // By the name the handler sees; stable, so the values of one name keep their
            // request order (`a=1&a=2` is not `a=2&a=1`).
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            // `/p`, `/p?` and `/p?&` name the same resource: no parameters, no `?`.
            for (i, (_, n, v)) in pairs.into_iter().enumerate() {
                out.push(if i == 0 { '?' } else { '&' });
                escape::escape_into(&mut out, n, false);
                out.push('=');
                escape::escape_into(&mut out, form_decode(v), false);
            }
        }
        Ok(bound_length(out))
    }
}

/// How a layer derives its keys: a [`KeyStrategy`], or an extractor
/// ([`CacheLayer::key_from`](crate::CacheLayer::key_from)), which needs the request parts
/// mutably and is asynchronous.
#[derive(Clone)]
pub(crate) enum Keyer {
    Strategy(Arc<dyn KeyStrategy>),
    #[cfg(feature = "axum")]
    Extract(Arc<dyn extract::Extract>),
}

impl Keyer {
    pub(crate) fn strategy(s: impl KeyStrategy) -> Self {
        Keyer::Strategy(Arc::new(s))
    }

    /// See [`KeyStrategy::covers_header`]; an extractor's key never counts as covering one
    /// (opt in with `allow_credentials`).
    pub(crate) fn covers_header(&self, header: &http::HeaderName) -> bool {
        match self {
            Keyer::Strategy(s) => s.covers_header(header),
            #[cfg(feature = "axum")]
            Keyer::Extract(_) => false,
        }
    }

    /// The request's key and its rendered tags: the one place the layer derives them.
    pub(crate) async fn derive(
        &self,
        tags: &[KeyTemplate],
        parts: &mut Parts,
    ) -> Result<(String, Vec<String>), KeyError> {
        match self {
            Keyer::Strategy(s) => Self::rendered(s.as_ref(), tags, parts),
            #[cfg(feature = "axum")]
            Keyer::Extract(e) => {
                let params = Self::params_for(false, tags, parts)?;
                let key = e.extract(parts).await?;
                Self::with_tags(key, params, tags, parts)
            }
        }
    }

    /// [`Self::derive`] when it needs no waiting (a [`KeyStrategy`]); `None` for an
    /// extractor, whose future may wait.
    pub(crate) fn derive_now(
        &self,
        tags: &[KeyTemplate],
        parts: &mut Parts,
    ) -> Option<Result<(String, Vec<String>), KeyError>> {
        match self {
            Keyer::Strategy(s) => Some(Self::rendered(s.as_ref(), tags, parts)),
            #[cfg(feature = "axum")]
            Keyer::Extract(_) => None,
        }
    }

    /// A strategy's key and the tags.
    fn rendered(
        s: &dyn KeyStrategy,
        tags: &[KeyTemplate],
        parts: &mut Parts,
    ) -> Result<(String, Vec<String>), KeyError> {
        let params = Self::params_for(s.needs_path_params(), tags, parts)?;
        let ctx = KeyContext::new(parts).with_params(params);
        let key = s.key(&ctx)?;
        Self::tags_in(key, &ctx, tags)
    }

    /// The path parameters, when the key (`key_needs`) or a tag template names one.
    fn params_for(
        key_needs: bool,
        tags: &[KeyTemplate],
        parts: &mut Parts,
    ) -> Result<PathParams, KeyError> {
        if key_needs || tags.iter().any(|t| t.needs_path_params()) {
            checked_path_params(parts)
        } else {
            Ok(PathParams::None)
        }
    }

    /// An extracted key with its rendered tags.
    #[cfg(feature = "axum")]
    fn with_tags(
        key: String,
        params: PathParams,
        tags: &[KeyTemplate],
        parts: &Parts,
    ) -> Result<(String, Vec<String>), KeyError> {
        let ctx = KeyContext::new(parts).with_params(params);
        Self::tags_in(key, &ctx, tags)
    }

    /// `key`, bounded ([`bound_length`]: whatever strategy produced it, a hand-written one
    /// too, so that [`Cache::invalidate_key`](crate::Cache::invalidate_key) of the same string
    /// names its entry), with the tags rendered in `ctx`.
    fn tags_in(
        key: String,
        ctx: &KeyContext<'_>,
        tags: &[KeyTemplate],
    ) -> Result<(String, Vec<String>), KeyError> {
        let tags = tags
            .iter()
            .map(|t| t.key(ctx))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((bound_length(key), tags))
    }
}

/// The path parameters axum matched for this request (empty outside axum or without the
/// `axum` feature).
pub(crate) fn path_params(parts: &mut Parts) -> PathParams {
    checked_path_params(parts).unwrap_or_default()
}

/// [`path_params`], but a parameter that is not UTF-8 once decoded is a request the handler's
/// `Path` rejects: [`KeyError::Rejected`], not "no parameters".
#[cfg(feature = "axum")]
fn checked_path_params(parts: &mut Parts) -> Result<PathParams, KeyError> {
    use axum::extract::rejection::RawPathParamsRejection;
    use axum::extract::{FromRequestParts, RawPathParams};
    use futures_util::FutureExt;
    // RawPathParams only reads request extensions: its future is ready at once.
    match RawPathParams::from_request_parts(parts, &()).now_or_never() {
        Some(Ok(params)) => Ok(PathParams::Axum(params)),
        Some(Err(RawPathParamsRejection::InvalidUtf8InPathParam(_))) => Err(KeyError::Rejected(
            "a path parameter is not UTF-8 once percent-decoded".into(),
        )),
        _ => Ok(PathParams::None),
    }
}

#[cfg(not(feature = "axum"))]
fn checked_path_params(_parts: &mut Parts) -> Result<PathParams, KeyError> {
    Ok(PathParams::None)
}

/// The method as it appears in keys: HEAD shares GET's entry.
pub(crate) fn method_name(m: &http::Method) -> &str {
    if m == http::Method::HEAD {
        "GET"
    } else {
        m.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    fn default_key(uri: &str) -> String {
        DefaultKey.key(&KeyContext::new(&parts(uri))).unwrap()
    }

    #[test]
    fn default_key_sorts_query_parameters() {
        let ka = default_key("/items?b=2&a=1");
        assert_eq!(ka, "GET:/items?a=1&b=2");
        assert_eq!(ka, default_key("/items?a=1&b=2"));
        assert_ne!(default_key("/items?a=2&a=1"), default_key("/items?a=1&a=2"));
        assert_eq!(default_key("/items?a=2&b=0&a=1"), "GET:/items?a=2&a=1&b=0");
    }

    #[test]
    fn default_key_decodes_the_query_as_the_handler_does() {
        // `%71` is `q` to `Query`; `+` is a space; `%61` is `a`.
        assert_eq!(default_key("/s?%71=x"), default_key("/s?q=x"));
        assert_eq!(default_key("/s?q=a+b"), default_key("/s?q=a%20b"));
        assert_eq!(default_key("/s?q=%61"), default_key("/s?q=a"));
        assert_eq!(default_key("/s?q=a+b"), "GET:/s?q=a%20b");
        // `a` and `a=` are the same to `Query`; `/s?` and `/s?&` have no parameters.
        assert_eq!(default_key("/s?a"), default_key("/s?a="));
        assert_eq!(default_key("/s?"), "GET:/s");
        assert_eq!(default_key("/s?&&"), "GET:/s");
        // Bytes that are not UTF-8 stay distinct.
        assert_ne!(default_key("/s?q=%FF"), default_key("/s?q=%FE"));
    }

    #[test]
    fn default_key_keys_the_path_as_sent() {
        assert_eq!(default_key("/a*b/%5B"), "GET:/a%2Ab/%255B");
        // The router tells these apart, so does the key.
        assert_ne!(default_key("/%61bout"), default_key("/about"));
        assert_ne!(default_key("/a%2Fb"), default_key("/a/b"));
        assert_eq!(default_key("/a_b/c-d.e~f"), "GET:/a_b/c-d.e~f");
        assert_eq!(default_key("/a%5Fb"), "GET:/a%255Fb");
    }

    #[test]
    fn query_values_are_decoded_and_all_kept() {
        let p = parts("/s?q=a&%71=b&x=1&q=c+d&q");
        let ctx = KeyContext::new(&p);
        let v: Vec<Vec<u8>> = ctx
            .query_values("q")
            .into_iter()
            .map(Cow::into_owned)
            .collect();
        assert_eq!(v, [&b"a"[..], b"b", b"c d", b""]);
        assert!(ctx.query_values("y").is_empty());
    }

    #[test]
    fn closures_are_strategies() {
        let s = |p: &Parts| p.uri.path().strip_prefix("/x/").map(|r| format!("x:{r}"));
        let p = parts("/x/1");
        assert_eq!(s.key(&KeyContext::new(&p)).unwrap(), "x:1");
        let q = parts("/y");
        assert_eq!(s.key(&KeyContext::new(&q)), Err(KeyError::Declined));
    }

    #[test]
    fn key_errors_map_to_cache_status_details() {
        assert_eq!(
            KeyError::MissingPathParam("id".into()).detail(),
            "key-error"
        );
        assert_eq!(KeyError::Declined.detail(), "key-declined");
        assert_eq!(KeyError::Rejected("x".into()).detail(), "key-rejected");
    }

    /// A hand-written [`KeyStrategy`] (not a closure, template or extractor) is bounded by
    /// [`Keyer::derive`] like every other key (it was used as it was: an entry stored under
    /// such a key longer than `KEEP_LEN` was not the one `Cache::invalidate_key` of that key
    /// names, and its `#vary:` variants would leave its shard once namespaces are sharded).
    #[test]
    fn hand_written_strategy_keys_are_bounded() {
        use futures_util::FutureExt;
        struct Long;
        impl KeyStrategy for Long {
            fn key(&self, _: &KeyContext<'_>) -> Result<String, KeyError> {
                Ok("k".repeat(KEEP_LEN + 100))
            }
        }
        let mut p = parts("/");
        let (key, _) = Keyer::strategy(Long)
            .derive(&[], &mut p)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert!(key.len() <= MAX_KEY_LEN, "{} bytes", key.len());
        assert_eq!(key, bound_length("k".repeat(KEEP_LEN + 100)));
    }
}
