//! Invalidation on unsafe methods ([`CacheLayer::invalidate_unsafe`], RFC 9111 §4.4): a
//! request whose method is not safe that succeeds invalidates the entries of its target URI
//! and of its same-origin `Location` and `Content-Location`.
//!
//! [`CacheLayer::invalidate_unsafe`]: super::CacheLayer::invalidate_unsafe

use super::config::RouteConfig;
use crate::Invalidation;
use http::request::Parts;
use http::{header, HeaderMap, Method, Request, StatusCode, Uri};

/// Whether `m` is safe (RFC 9110 §9.2.1): every other method, extension methods included, may
/// change the resource.
pub(crate) fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// What an unsafe request needs kept to invalidate once its response is known: a GET of its
/// target, as the route would key it.
pub(crate) struct Target {
    parts: Parts,
}

impl Target {
    /// The request's target as a GET carrying the same headers (the route's key may read them).
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        let mut get = Request::get(req.uri().clone())
            .body(())
            .map_or_else(|_| Request::new(()).into_parts().0, |r| r.into_parts().0);
        get.headers = req.headers().clone();
        get.extensions = req.extensions().clone();
        Self { parts: get }
    }

    /// Invalidates the target and the same-origin `Location` / `Content-Location` of a
    /// response with `status` (`2xx` or `3xx` only: a failed request changed nothing) through
    /// [`Cache::invalidate`](crate::Cache::invalidate), which runs to the end even if this
    /// request is dropped and queues what the store could not take.
    pub(crate) async fn invalidate(self, cfg: &RouteConfig, status: StatusCode, res: &HeaderMap) {
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        let mut keys = Vec::new();
        let base = self.parts.uri.clone();
        let host = host_of(&self.parts);
        let mut targets = vec![self.parts];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(v) = crate::headers::single(res, &name) else {
                continue;
            };
            let Some(uri) = std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| same_origin(&base, host.as_deref(), s.trim()))
            else {
                continue;
            };
            let Some(first) = targets.first() else {
                continue;
            };
            let mut parts = Request::get(uri.clone())
                .body(())
                .map_or_else(|_| Request::new(()).into_parts().0, |r| r.into_parts().0);
            parts.headers = first.headers.clone();
            // Path parameters belong to the request's own route: a template naming one cannot
            // key another URI, and fails for it (then only the target is invalidated).
            targets.push(parts);
        }
        for (i, mut parts) in targets.into_iter().enumerate() {
            if i > 0 && parts.uri == base {
                continue;
            }
            match cfg.key.derive(&[], &mut parts).await {
                Ok((key, _)) => keys.push(key),
                Err(e) => {
                    tracing::debug!(error = %e, uri = %parts.uri, "no key for an invalidated URI")
                }
            }
        }
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return;
        }
        if let Err(e) = cfg.cache.invalidate(Invalidation::new().keys(keys)).await {
            // Queued and retried by the cache: reads go around the keys until it lands.
            tracing::warn!(namespace = %cfg.cache.namespace(), error = %e, "invalidation after an unsafe request is owed to the store");
        }
    }
}

/// The request's origin host (`Host`, else the URI's authority), lower-case.
fn host_of(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .map(|h| h.to_ascii_lowercase())
}

/// `reference` (a `Location` or `Content-Location`) resolved against `base` (RFC 3986 §5.2,
/// paths only), when it is on the request's origin: a path, or an absolute URI whose authority
/// is the request's host. `None` for another origin or what does not parse.
fn same_origin(base: &Uri, host: Option<&str>, reference: &str) -> Option<Uri> {
    if reference.is_empty() {
        return None;
    }
    if let Ok(abs) = reference.parse::<Uri>() {
        // Absolute only with a scheme (`d` alone parses as an authority).
        if let (Some(_), Some(authority)) = (abs.scheme(), abs.authority()) {
            let same = host.is_some_and(|h| h.eq_ignore_ascii_case(authority.as_str()));
            return same.then(|| {
                abs.path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse()
                    .ok()
            })?;
        }
    }
    if reference.starts_with("//") {
        return None;
    }
    let (path, query) = match reference.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (reference, None),
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{path}")
    };
    let path = remove_dot_segments(&path);
    let full = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    full.parse().ok()
}

/// RFC 3986 §5.2.4, on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_references_only() {
        let base: Uri = "/a/b/c?x=1".parse().unwrap();
        let host = Some("example.com:8080");
        let r = |s: &str| same_origin(&base, host, s).map(|u| u.to_string());
        assert_eq!(r("/other"), Some("/other".into()));
        assert_eq!(r("d"), Some("/a/b/d".into()));
        assert_eq!(r("../d?q=2"), Some("/a/d?q=2".into()));
        assert_eq!(r("http://example.com:8080/x"), Some("/x".into()));
        assert_eq!(r("http://EXAMPLE.com:8080/x"), Some("/x".into()));
        assert_eq!(r("http://other.example/x"), None);
        assert_eq!(r("//other.example/x"), None);
        assert_eq!(r(""), None);
    }

    #[test]
    fn safe_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(
                !is_unsafe(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in ["POST", "PUT", "DELETE", "PATCH", "M-SEARCH"] {
            assert!(is_unsafe(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
    }
}
