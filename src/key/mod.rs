//! Cache keys: templates, the default key and the [`KeyStrategy`] extension point.
//!
//! Keys are relative to a [`Cache`](crate::Cache)'s namespace: the store sees
//! `namespace:` followed by the key. This module is the one place that turns requests into keys;
//! [`CacheLayer`](crate::CacheLayer), invalidation and the function cache all use it.
//!
//! # Templates
//!
//! A [`KeyTemplate`] mixes literal text with `{...}` variables:
//!
//! | variable | value |
//! |---|---|
//! | `{id}` (any bare name) | the axum path parameter of that name (the layer must sit on the route) |
//! | `{query.page}` | the raw value of query parameter `page`, `~` when absent |
//! | `{header.x-tenant}` | the request header's value, `~` when absent |
//! | `{path}` | the request path |
//! | `{method}` | the request method (`HEAD` renders as `GET`: HEAD is answered from the GET entry) |
//!
//! Every substituted value is [escaped](escape): it cannot contain `:`, glob metacharacters or
//! white space, so user input can neither collide with another key nor act as a pattern.
//! Credentials (`{header.authorization}`, `{header.cookie}`, `{header.proxy-authorization}`) are
//! never written raw: they render as a hash. Keys over 256 bytes are shortened to a 200-byte prefix
//! plus a 128-bit hash. Write `{{` and `}}` for literal braces.
//!
//! ```
//! use tower_valkey_cache::key::{KeyContext, KeyStrategy, KeyTemplate};
//!
//! let template = KeyTemplate::parse("user_{id}_posts:page_{query.page}").unwrap();
//! let req = http::Request::get("/users/7/posts?page=2").body(()).unwrap();
//! let (parts, _) = req.into_parts();
//! let ctx = KeyContext::new(&parts).with_path_params(vec![("id".into(), "7".into())]);
//! assert_eq!(template.key(&ctx).unwrap(), "user_7_posts:page_2");
//! ```
//!
//! # The default key
//!
//! [`DefaultKey`] is `GET:` + path + `?` + the query with its parameters sorted by name, so
//! `?a=1&b=2` and `?b=2&a=1` share an entry.
//!
//! # Your own strategy
//!
//! Any `Fn(&http::request::Parts) -> Option<String>` is a [`KeyStrategy`]; `None` means "do not
//! cache this request". Its output is used as it is (escape user input with [`escape`]).

mod escape;
mod template;

pub(crate) use escape::{bound_length, short_hash};
pub use escape::{escape, glob_escape, MAX_KEY_LEN};
pub use template::{KeyTemplate, TemplateError};

use http::request::Parts;
use std::fmt;

/// The request data a key is derived from.
#[derive(Debug)]
pub struct KeyContext<'a> {
    parts: &'a Parts,
    path_params: Vec<(String, String)>,
}

impl<'a> KeyContext<'a> {
    /// A context over the request's parts, with no path parameters.
    pub fn new(parts: &'a Parts) -> Self {
        Self {
            parts,
            path_params: Vec::new(),
        }
    }

    /// Sets the path parameters (name, value); the layer reads them from axum.
    pub fn with_path_params(mut self, params: Vec<(String, String)>) -> Self {
        self.path_params = params;
        self
    }

    /// The request parts.
    pub fn parts(&self) -> &Parts {
        self.parts
    }

    /// A path parameter by name.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.path_params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's raw (still percent-encoded) value by name: the first occurrence.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.parts.uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// Why no key could be derived for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The template names a path parameter the request does not have: the template does not
    /// fit the route (a configuration error).
    MissingPathParam(String),
    /// The strategy declined to key this request: it is served uncached.
    Declined,
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

/// The default key: `GET:` + path + `?` + query parameters sorted by name.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultKey;

impl KeyStrategy for DefaultKey {
    fn key(&self, ctx: &KeyContext<'_>) -> Result<String, KeyError> {
        let uri = &ctx.parts.uri;
        let mut out = String::with_capacity(8 + uri.path().len() + uri.query().map_or(0, str::len));
        out.push_str(method_name(&ctx.parts.method));
        out.push(':');
        escape::escape_into(&mut out, uri.path(), true);
        if let Some(q) = uri.query() {
            let mut pairs: Vec<(&str, &str)> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect();
            // Stable: repeated parameters keep their relative order (`a=1&a=2` != `a=2&a=1`).
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            // `/p`, `/p?` and `/p?&` name the same resource: no parameters, no `?`.
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                out.push(if i == 0 { '?' } else { '&' });
                escape::escape_into(&mut out, k, false);
                out.push('=');
                escape::escape_into(&mut out, v, false);
            }
        }
        Ok(bound_length(out))
    }
}

/// The path parameters axum matched for this request (empty outside axum or without the
/// `axum` feature).
#[cfg(feature = "axum")]
pub(crate) fn path_params(parts: &mut Parts) -> Vec<(String, String)> {
    use axum::extract::{FromRequestParts, RawPathParams};
    use futures_util::FutureExt;
    // RawPathParams only reads request extensions: its future is ready at once.
    match RawPathParams::from_request_parts(parts, &()).now_or_never() {
        Some(Ok(params)) => params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(not(feature = "axum"))]
pub(crate) fn path_params(_parts: &mut Parts) -> Vec<(String, String)> {
    Vec::new()
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

    #[test]
    fn default_key_sorts_query_parameters() {
        let a = parts("/items?b=2&a=1");
        let b = parts("/items?a=1&b=2");
        let ka = DefaultKey.key(&KeyContext::new(&a)).unwrap();
        assert_eq!(ka, "GET:/items?a=1&b=2");
        assert_eq!(ka, DefaultKey.key(&KeyContext::new(&b)).unwrap());
        let c = parts("/items?a=2&a=1");
        let d = parts("/items?a=1&a=2");
        assert_ne!(
            DefaultKey.key(&KeyContext::new(&c)).unwrap(),
            DefaultKey.key(&KeyContext::new(&d)).unwrap()
        );
    }

    #[test]
    fn default_key_escapes_globs_in_path() {
        let p = parts("/a*b/%5B");
        assert_eq!(
            DefaultKey.key(&KeyContext::new(&p)).unwrap(),
            "GET:/a%2Ab/%255B"
        );
    }

    #[test]
    fn closures_are_strategies() {
        let s = |p: &Parts| p.uri.path().strip_prefix("/x/").map(|r| format!("x:{r}"));
        let p = parts("/x/1");
        assert_eq!(s.key(&KeyContext::new(&p)).unwrap(), "x:1");
        let q = parts("/y");
        assert_eq!(s.key(&KeyContext::new(&q)), Err(KeyError::Declined));
    }
}
