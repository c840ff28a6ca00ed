//! Revalidation ([`CacheLayer::revalidate`]): a stale entry with validators becomes a
//! conditional request to the inner service, and a `304 Not Modified` refreshes the stored
//! entry (RFC 9111 §4.3).
//!
//! [`CacheLayer::revalidate`]: super::CacheLayer::revalidate

use super::config::RouteConfig;
use super::freshness::{self, has_validators_in};
use super::miss::Fill;
use super::response::{from_entry, Answer};
use super::vary::Vary;
use crate::entry::{now_ms, Entry};
use crate::headers::{self, EntityTag};
use crate::outcome::Outcome;
use crate::store::Written;
use http::{header, HeaderMap, HeaderName, Response, StatusCode};
use std::sync::Arc;

/// The request fields that make a request conditional (RFC 9110 §13.1): a client that sends one
/// has its own idea of what it holds, and the cache adds none of its own.
const PRECONDITIONS: [HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Whether `entry` may be revalidated on this route: revalidation is on and it has a validator.
pub(crate) fn candidate(cfg: &RouteConfig, entry: &Entry) -> bool {
    !cfg.keep_for_revalidation.is_zero()
        && entry.status != 0
        && has_validators_in(&entry_headers(entry))
}

fn entry_headers(entry: &Entry) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(entry.headers.len());
    for (n, v) in &entry.headers {
        h.append(n.clone(), v.clone());
    }
    h
}

/// Makes the request to the inner service conditional on `entry`'s validators
/// (`If-None-Match` from its `ETag`, `If-Modified-Since` from its `Last-Modified`), unless the
/// client sent preconditions of its own (they are forwarded as they are). True when this cache
/// added them: a `304` then answers for the entry.
pub(crate) fn make_conditional(entry: Option<&Entry>, request: &mut HeaderMap) -> bool {
    let Some(entry) = entry else {
        return false;
    };
    if PRECONDITIONS.iter().any(|p| request.contains_key(p)) {
        return false;
    }
    let stored = entry_headers(entry);
    let mut added = false;
    if let Some(etag) = headers::single(&stored, &header::ETAG) {
        if EntityTag::parse(etag.as_bytes()).is_some() {
            request.insert(header::IF_NONE_MATCH, etag.clone());
            added = true;
        }
    }
    if let Some(lm) = headers::single(&stored, &header::LAST_MODIFIED) {
        if headers::http_date(lm.as_bytes()).is_some() {
            request.insert(header::IF_MODIFIED_SINCE, lm.clone());
            added = true;
        }
    }
    added
}

/// Whether a `304` with headers `h` is about `entry` (RFC 9111 §4.3.4): always when this cache
/// sent the conditional request with the entry's validators; for a client's own, when the
/// `304`'s `ETag` (or, without one, its `Last-Modified`) is the entry's.
fn selects(entry: &Entry, h: &HeaderMap, ours: bool) -> bool {
    if ours {
        return true;
    }
    let stored = entry_headers(entry);
    if let Some(etag) = headers::single(h, &header::ETAG) {
        let theirs = EntityTag::parse(etag.as_bytes());
        let mine =
            headers::single(&stored, &header::ETAG).and_then(|v| EntityTag::parse(v.as_bytes()));
        return matches!((theirs, mine), (Some(a), Some(b)) if a == b);
    }
    if let Some(lm) = headers::single(h, &header::LAST_MODIFIED) {
        return headers::single(&stored, &header::LAST_MODIFIED) == Some(lm);
    }
    false
}

/// Fields a `304` never changes in the stored response (RFC 9111 §3.2): the body's framing
/// and coding describe the stored body, not the `304`'s empty one.
fn keeps_stored(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::CONTENT_ENCODING
        || name == header::CONTENT_TYPE
        || name == header::CONTENT_RANGE
        || name == header::TRANSFER_ENCODING
        || name.as_str() == "cache-status"
}

/// The stored response's headers updated with those of a `304` (RFC 9111 §3.2): every field
/// the `304` carries replaces the stored one, the others are kept.
pub(crate) fn merged_headers(entry: &Entry, not_modified: &HeaderMap) -> HeaderMap {
    let mut h = entry_headers(entry);
    for name in not_modified.keys() {
        if keeps_stored(name) {
            continue;
        }
        h.remove(name);
        for v in not_modified.get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    h
}

/// A response of the inner service to a request this fill may have made conditional: a `304`
/// about `entry` refreshes it (headers and freshness, stored through the fill's guarded write)
/// and answers with the refreshed entry (the client's own conditions then apply to it, as on a
/// hit). Anything else is handed back with the fill.
pub(crate) async fn on_response<B: http_body::Body>(
    fill: Fill,
    entry: Option<Entry>,
    ours: bool,
    res: Response<B>,
    is_head: bool,
) -> Result<Answer<B>, (Fill, Response<B>)> {
    let Some(entry) = entry else {
        return Err((fill, res));
    };
    if res.status() != StatusCode::NOT_MODIFIED || !selects(&entry, res.headers(), ours) {
        return Err((fill, res));
    }
    let (refreshed, stored) = refresh(fill, &entry, res.headers()).await;
    let outcome = Outcome::Miss {
        stored: stored == Some(Written::Stored),
        detail: Some("revalidated"),
    };
    Ok(from_entry::<B>(&refreshed, is_head, outcome, now_ms()))
}

/// Refreshes `entry` with the headers of a `304`: the merged headers, freshness computed anew
/// (the `304`'s `Date` and `Age`, this request's times), stored through `fill` (guarded by the
/// clock its lookup read, so an invalidation meanwhile wins), its followers handed the result.
pub(crate) async fn refresh(
    fill: Fill,
    entry: &Entry,
    not_modified: &HeaderMap,
) -> (Arc<Entry>, Option<Written>) {
    let mut headers = merged_headers(entry, not_modified);
    let status = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    let refreshed = Arc::new(fill.entry(status, &mut headers, entry.body.clone()));
    let vary = Vary::of(&headers);
    let stored = fill.store(&refreshed, &vary).await;
    let landing = freshness::landing(&fill, (*refreshed).clone(), &vary);
    fill.finish(landing).await;
    (refreshed, stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderValue;
    use std::time::Duration;

    fn entry(pairs: &[(&str, &str)]) -> Entry {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Entry::from_response(
            StatusCode::OK,
            &h,
            Bytes::from_static(b"body"),
            0,
            Duration::ZERO,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn conditional_from_entry_unless_the_client_sent_its_own() {
        let e = entry(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sat, 21 Nov 2026 10:00:00 GMT"),
        ]);
        let mut req = HeaderMap::new();
        assert!(make_conditional(Some(&e), &mut req));
        assert_eq!(req[header::IF_NONE_MATCH], "\"v1\"");
        assert_eq!(
            req[header::IF_MODIFIED_SINCE],
            "Sat, 21 Nov 2026 10:00:00 GMT"
        );
        let mut own = HeaderMap::new();
        own.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"mine\""));
        assert!(!make_conditional(Some(&e), &mut own));
        assert_eq!(own[header::IF_NONE_MATCH], "\"mine\"");
        assert!(!own.contains_key(header::IF_MODIFIED_SINCE));
        // Nothing to validate with: not conditional.
        let mut req = HeaderMap::new();
        assert!(!make_conditional(
            Some(&entry(&[("etag", "not-a-tag")])),
            &mut req
        ));
        assert!(req.is_empty());
    }

    #[test]
    fn a_304_updates_every_field_but_the_body_framing() {
        let e = entry(&[
            ("etag", "\"v1\""),
            ("content-length", "4"),
            ("content-type", "text/plain"),
            ("test-header", "old"),
            ("kept", "yes"),
        ]);
        let mut nm = HeaderMap::new();
        nm.insert("test-header", HeaderValue::from_static("new"));
        nm.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        nm.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        let h = merged_headers(&e, &nm);
        assert_eq!(h["test-header"], "new");
        assert_eq!(h["kept"], "yes");
        assert_eq!(h[header::CONTENT_LENGTH], "4");
        assert_eq!(h[header::CACHE_CONTROL], "max-age=60");
        assert_eq!(h[header::ETAG], "\"v1\"");
    }

    #[test]
    fn a_client_304_selects_the_entry_only_by_its_validators() {
        let e = entry(&[("etag", "\"v1\"")]);
        let with = |k: &'static str, v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(k, HeaderValue::from_static(v));
            h
        };
        assert!(selects(&e, &with("etag", "\"v1\""), false));
        assert!(!selects(&e, &with("etag", "\"v2\""), false));
        assert!(!selects(&e, &HeaderMap::new(), false));
        assert!(selects(&e, &HeaderMap::new(), true));
    }
}
