//! Conditional requests (RFC 9110 §13): `If-None-Match` and `If-Modified-Since` answered with
//! `304 Not Modified` from a cached (or just produced) response, and `Cache-Control` freshness
//! from the handler (RFC 9111 §4.2.1).

use super::body::CacheBody;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;
use std::time::{Duration, SystemTime};

/// The validators a request carries, copied before the request is handed to the handler.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<SystemTime>,
}

/// The opaque part of an entity tag, without `W/`.
fn opaque(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/")
}

/// Whether `If-None-Match: list` matches `etag` (weak comparison, as RFC 9110 §13.1.2 requires).
pub(crate) fn none_match(list: &str, etag: Option<&str>) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    list.split(',').any(|t| opaque(t) == opaque(etag))
}

impl Conditions {
    pub(crate) fn from_headers(h: &HeaderMap) -> Self {
        Self {
            if_none_match: h.get(header::IF_NONE_MATCH).cloned(),
            if_modified_since: h
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok()),
        }
    }

    fn is_empty(&self) -> bool {
        self.if_none_match.is_none() && self.if_modified_since.is_none()
    }

    fn not_modified(&self, res: &HeaderMap) -> bool {
        if let Some(inm) = &self.if_none_match {
            let etag = res.get(header::ETAG).and_then(|v| v.to_str().ok());
            return inm.to_str().is_ok_and(|l| none_match(l, etag));
        }
        if let Some(since) = self.if_modified_since {
            let last = res
                .get(header::LAST_MODIFIED)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok());
            return last.is_some_and(|l| l <= since);
        }
        false
    }

    /// Turns a complete 200 response whose validators match into a `304 Not Modified`.
    pub(crate) fn apply<B: Body>(&self, mut res: Response<CacheBody<B>>) -> Response<CacheBody<B>> {
        if self.is_empty() || res.status() != StatusCode::OK || !res.body().is_full() {
            return res;
        }
        if !self.not_modified(res.headers()) {
            return res;
        }
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.body_mut() = CacheBody::empty();
        let h = res.headers_mut();
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::CONTENT_TYPE);
        h.remove(header::CONTENT_ENCODING);
        res
    }
}

/// A strong validator for a body: a content hash, stable across processes and restarts.
pub(crate) fn etag_for(body: &[u8]) -> HeaderValue {
    let v = format!("\"{}\"", crate::key::short_hash(body));
    // Quotes and hex digits only.
    HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The freshness lifetime the response asks for (`s-maxage`, then `max-age`, then `Expires`).
pub(crate) fn response_ttl(h: &HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for d in h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let (name, value) = d.split_once('=').unwrap_or((d, ""));
        let secs = value.trim().trim_matches('"').parse::<u64>().ok();
        match name.trim().to_ascii_lowercase().as_str() {
            "s-maxage" => {
                if let Some(s) = secs {
                    return Some(Duration::from_secs(s));
                }
            }
            "max-age" if max_age.is_none() => max_age = secs.map(Duration::from_secs),
            _ => {}
        }
    }
    if max_age.is_some() {
        return max_age;
    }
    let expires = h.get(header::EXPIRES)?.to_str().ok()?;
    // An invalid Expires (such as "0") means already expired (RFC 9111 §5.3).
    let at = httpdate::parse_http_date(expires).unwrap_or(SystemTime::UNIX_EPOCH);
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(none_match("\"a\"", Some("\"a\"")));
        assert!(none_match("W/\"a\"", Some("\"a\"")));
        assert!(none_match("\"x\", \"a\"", Some("W/\"a\"")));
        assert!(!none_match("\"b\"", Some("\"a\"")));
        assert!(none_match("*", None));
        assert!(!none_match("\"a\"", None));
    }

    #[test]
    fn ttl_prefers_s_maxage_then_max_age_then_expires() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=10, s-maxage=20"),
        );
        assert_eq!(response_ttl(&h), Some(Duration::from_secs(20)));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=10"),
        );
        assert_eq!(response_ttl(&h), Some(Duration::from_secs(10)));
        h.remove(header::CACHE_CONTROL);
        assert_eq!(response_ttl(&h), None);
        h.insert(header::EXPIRES, HeaderValue::from_static("0"));
        assert_eq!(response_ttl(&h), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        h.insert(header::EXPIRES, HeaderValue::try_from(later).unwrap());
        let ttl = response_ttl(&h).unwrap();
        assert!(ttl > Duration::from_secs(95) && ttl <= Duration::from_secs(100));
    }
}
