//! Conditional requests (RFC 9110 §13): `If-None-Match` and `If-Modified-Since` answered with
//! `304 Not Modified` from a cached (or just produced) response, and `Cache-Control` freshness
//! from the handler (RFC 9111 §4.2.1).

use super::body::CacheBody;
use crate::headers::{self, CacheControl, EntityTag, EntityTagList};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;
use std::time::{Duration, SystemTime};

/// The validators a request carries, copied before the request is handed to the handler.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    /// Every `If-None-Match` line (one list), parsed when a response is there to compare.
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Option<SystemTime>,
}

/// Whether `If-None-Match` lines `list` match a response whose `ETag` field is `etag` (weak
/// comparison, as RFC 9110 §13.1.2 requires). A list that does not parse never matches (the
/// full response is sent), nor does a response `ETag` that is not an entity tag, except for `*`.
pub(crate) fn none_match<'a>(
    list: impl IntoIterator<Item = &'a [u8]>,
    etag: Option<&[u8]>,
) -> bool {
    let Ok(list) = EntityTagList::parse_lines(list) else {
        return false;
    };
    list.matches_weak(etag.and_then(EntityTag::parse).as_ref())
}

impl Conditions {
    pub(crate) fn from_headers(h: &HeaderMap) -> Self {
        Self {
            if_none_match: h.get_all(header::IF_NONE_MATCH).iter().cloned().collect(),
            // Ignored unless a single valid HTTP-date (RFC 9110 §13.1.3).
            if_modified_since: headers::date_field(h, &header::IF_MODIFIED_SINCE),
        }
    }

    fn is_empty(&self) -> bool {
        self.if_none_match.is_empty() && self.if_modified_since.is_none()
    }

    fn not_modified(&self, res: &HeaderMap) -> bool {
        if !self.if_none_match.is_empty() {
            // If-Modified-Since is ignored when If-None-Match is present (RFC 9110 §13.1.3).
            let etag = headers::single(res, &header::ETAG).map(HeaderValue::as_bytes);
            return none_match(self.if_none_match.iter().map(HeaderValue::as_bytes), etag);
        }
        if let Some(since) = self.if_modified_since {
            let last = headers::date_field(res, &header::LAST_MODIFIED);
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

/// The freshness lifetime the response asks for: `s-maxage`, then `max-age`, then `Expires`
/// (against this clock). Values that are not valid are zero (stale, RFC 9111 §4.2.1 and §5.3),
/// and so is a `Cache-Control` that does not parse (such a response is never stored anyway).
pub(crate) fn response_ttl(h: &HeaderMap) -> Option<Duration> {
    let Ok(cc) = CacheControl::of(h, header::CACHE_CONTROL) else {
        return Some(Duration::ZERO);
    };
    if let Some(ttl) = cc.shared_max_age() {
        return Some(ttl);
    }
    if !h.contains_key(header::EXPIRES) {
        return None;
    }
    // An invalid Expires (such as "0", or two lines) means already expired (RFC 9111 §5.3).
    let at = headers::date_field(h, &header::EXPIRES).unwrap_or(SystemTime::UNIX_EPOCH);
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nm(list: &str, etag: Option<&str>) -> bool {
        none_match([list.as_bytes()], etag.map(str::as_bytes))
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(nm("\"a\"", Some("\"a\"")));
        assert!(nm("W/\"a\"", Some("\"a\"")));
        assert!(nm("\"x\", \"a\"", Some("W/\"a\"")));
        assert!(!nm("\"b\"", Some("\"a\"")));
        assert!(nm("*", None));
        assert!(nm(" * ", Some("\"a\"")));
        assert!(!nm("\"a\"", None));
        // Several lines are one list.
        assert!(none_match([&b"\"x\""[..], b"\"a\""], Some(b"\"a\"")));
    }

    #[test]
    fn entity_tags_may_hold_commas_and_obs_text() {
        assert!(nm("\"a,b\"", Some("\"a,b\"")));
        // Split on every comma, `"a` and `b"` would not match, but neither would "a" or "b".
        assert!(!nm("\"a,b\"", Some("\"a\"")));
        assert!(!nm("\"a,b\"", Some("\"b\"")));
        assert!(nm("\"x\", W/\"a,b\"", Some("\"a,b\"")));
        assert!(none_match(
            [&b"\"caf\xc3\xa9\""[..]],
            Some(b"\"caf\xc3\xa9\"")
        ));
    }

    #[test]
    fn malformed_lists_never_match() {
        for list in [
            "a",
            "\"a",
            "\"a\" \"a\"",
            "w/\"a\"",
            "*, \"a\"",
            "\"a\", *",
            "\"a\"b\"",
            "\"a\";",
        ] {
            assert!(!nm(list, Some("\"a\"")), "{list}");
        }
        // Two stars in two lines: not the single `*` the grammar allows.
        assert!(!none_match([&b"*"[..], b"*"], Some(b"\"a\"")));
        // A response ETag that is not an entity tag matches nothing but `*`.
        assert!(!nm("\"a\"", Some("a")));
        assert!(nm("*", Some("a")));
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
        // Invalid freshness is stale, never the route's TTL.
        for cc in [
            "max-age=soon",
            "max-age=-1",
            "s-maxage",
            "max-age=1, ext=\"x",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
            assert_eq!(response_ttl(&h), Some(Duration::ZERO), "{cc}");
        }
        let mut q = HeaderMap::new();
        q.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=\"30\""),
        );
        assert_eq!(response_ttl(&q), Some(Duration::from_secs(30)));
        let mut two = HeaderMap::new();
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        two.append(
            header::EXPIRES,
            HeaderValue::try_from(later.clone()).unwrap(),
        );
        two.append(header::EXPIRES, HeaderValue::try_from(later).unwrap());
        assert_eq!(response_ttl(&two), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        h.insert(header::EXPIRES, HeaderValue::try_from(later).unwrap());
        let ttl = response_ttl(&h).unwrap();
        assert!(ttl > Duration::from_secs(95) && ttl <= Duration::from_secs(100));
    }
}
