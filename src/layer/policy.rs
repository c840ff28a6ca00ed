//! What is cached, and what never is. The header fields are read by [`crate::headers`], which
//! fails closed: a field that does not parse never reads as "no directive".

use super::config::RouteConfig;
use crate::headers::{self, CacheControl, Delta, VaryField};
use http::{header, Request, Response, StatusCode};
use std::time::Duration;

/// What the request's own headers ask of the cache, parsing `Cache-Control` and `Pragma` once:
/// `Err(reason)` when the request must bypass it (`no-store`, a field that does not parse,
/// credentials or a `Range` the key does not cover: `covered`), else whether it asks for a
/// fresh response (`Cache-Control: no-cache` or `max-age=0`, or `Pragma: no-cache`): then the
/// lookup is skipped and the response still stored. A `max-age` that is not delta-seconds
/// counts as `0`.
pub(crate) fn request_policy<B>(
    req: &Request<B>,
    covered: impl Fn(&header::HeaderName) -> bool,
) -> Result<bool, &'static str> {
    let h = req.headers();
    let cc = CacheControl::of(h, header::CACHE_CONTROL).map_err(|_| "unparsable-cache-control")?;
    if cc.has("no-store") {
        return Err("no-store");
    }
    let pragma = CacheControl::of(h, header::PRAGMA).map_err(|_| "unparsable-pragma")?;
    for (name, reason) in &headers::CREDENTIALS {
        if h.contains_key(name) && !covered(name) {
            return Err(reason);
        }
    }
    // A stored response answers a range request only under a key that includes the range
    // (serving ranges from a stored 200 is not implemented).
    if h.contains_key(header::RANGE) && !covered(&header::RANGE) {
        return Err("range");
    }
    Ok(cc.has("no-cache")
        || matches!(cc.delta("max-age"), Some(Delta::Secs(0) | Delta::Invalid))
        || pragma.has("no-cache"))
}

/// Why a response must not be stored, if it must not. `covers_range`: the route's key includes
/// the request's `Range`, the only case in which a `206 Partial Content` may be stored.
pub(crate) fn response_unstorable<B>(
    res: &Response<B>,
    statuses: &[StatusCode],
    covers_range: bool,
) -> Option<&'static str> {
    let h = res.headers();
    if !statuses.contains(&res.status()) {
        return Some("status");
    }
    if res.status() == StatusCode::PARTIAL_CONTENT && !covers_range {
        return Some("partial-content");
    }
    if h.contains_key(header::SET_COOKIE) {
        return Some("set-cookie");
    }
    match CacheControl::of(h, header::CACHE_CONTROL) {
        Err(_) => return Some("unparsable-cache-control"),
        Ok(cc) if cc.forbids_storing() => return Some("cache-control"),
        Ok(_) => {}
    }
    vary_unstorable(h)
}

/// Why a response's `Vary` makes it unstorable, if it does: `*`, or a field that does not parse.
pub(crate) fn vary_unstorable(h: &http::HeaderMap) -> Option<&'static str> {
    if h.contains_key(header::VARY) {
        match headers::vary(h) {
            // No request could ever be known to select it.
            Ok(VaryField::Star) => return Some("vary"),
            Err(_) => return Some("unparsable-vary"),
            Ok(VaryField::Names(_)) => {}
        }
    }
    None
}

/// Why the response of a fill (a miss, a background refresh) is not stored on this route, if
/// it is not: the shared-cache mode's rules with [`http_freshness`](RouteConfig), else the
/// rules every route applies, then tags that do not parse (`tags`), then, with
/// `respect_cache_control`, a lifetime of zero.
pub(crate) fn fill_unstorable<B>(
    cfg: &RouteConfig,
    res: &Response<B>,
    tags: Option<&'static str>,
) -> Option<&'static str> {
    if cfg.http_freshness {
        return super::freshness::unstorable(cfg, res.status(), res.headers()).or(tags);
    }
    response_unstorable(res, &cfg.statuses, cfg.covers_range())
        .or(tags)
        .or_else(|| {
            (cfg.respect_cache_control
                && super::conditional::response_ttl(res.headers()) == Some(Duration::ZERO))
            .then_some("cache-control")
        })
}

/// Whether a `200` with `headers` would be stored on a route that caches `200` (the header
/// parser's property tests and fuzz target check the fail-closed rules through it).
#[cfg(any(test, fuzzing))]
pub(crate) fn storable_200(headers: &http::HeaderMap) -> bool {
    let mut res = Response::new(());
    *res.headers_mut() = headers.clone();
    response_unstorable(&res, &[StatusCode::OK], false).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bypass<B>(
        req: &Request<B>,
        covered: impl Fn(&header::HeaderName) -> bool,
    ) -> Option<&'static str> {
        request_policy(req, covered).err()
    }

    fn res_bytes(status: u16, headers: &[(&str, &[u8])]) -> Response<()> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap()
    }

    fn res(headers: &[(&str, &str)]) -> Response<()> {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        res_bytes(200, &h)
    }

    fn req(headers: &[(&str, &[u8])]) -> Request<()> {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap()
    }

    #[test]
    fn never_stores_private_or_cookie_responses() {
        let ok = [StatusCode::OK];
        assert_eq!(response_unstorable(&res(&[]), &ok, false), None);
        assert_eq!(
            response_unstorable(&res(&[("set-cookie", "a=b")]), &ok, false),
            Some("set-cookie")
        );
        for cc in [
            "private",
            "no-store",
            "No-Cache",
            "max-age=5, private=\"x\"",
        ] {
            assert_eq!(
                response_unstorable(&res(&[("cache-control", cc)]), &ok, false),
                Some("cache-control"),
                "{cc}"
            );
        }
        assert_eq!(
            response_unstorable(&res(&[("cache-control", "public, max-age=60")]), &ok, false),
            None
        );
        assert_eq!(
            response_unstorable(&res(&[("vary", "*")]), &ok, false),
            Some("vary")
        );
        // A list of header names is stored, one entry per variant.
        assert_eq!(
            response_unstorable(&res(&[("vary", "Accept-Language")]), &ok, false),
            None
        );
        assert_eq!(
            response_unstorable(&res(&[("vary", "a b")]), &ok, false),
            Some("unparsable-vary")
        );
    }

    /// The lines that used to be dropped before parsing (any byte that is not visible ASCII).
    #[test]
    fn non_ascii_cache_control_lines_never_make_a_response_storable() {
        let ok = [StatusCode::OK];
        let cc =
            |v: &[u8]| response_unstorable(&res_bytes(200, &[("cache-control", v)]), &ok, false);
        // obs-text inside a quoted string is legal: the line parses and is private.
        assert_eq!(
            cc("private, ext=\"café\"".as_bytes()),
            Some("cache-control")
        );
        assert_eq!(cc(b"no-store, x=\"\xff\""), Some("cache-control"));
        // Outside a quoted string it is not: the line does not parse, and is not stored either.
        assert_eq!(
            cc(b"no-store, caf\xc3\xa9"),
            Some("unparsable-cache-control")
        );
        assert_eq!(cc(b"public, \x80"), Some("unparsable-cache-control"));
        assert_eq!(
            cc(b"max-age=60, ext=\"unterminated"),
            Some("unparsable-cache-control")
        );
        assert_eq!(cc(b"max-age=60, ext=\"\xe9\""), None);
    }

    #[test]
    fn partial_content_is_stored_only_under_a_key_covering_range() {
        let statuses = [StatusCode::OK, StatusCode::PARTIAL_CONTENT];
        let partial = res_bytes(206, &[("content-range", b"bytes 0-1/10")]);
        assert_eq!(
            response_unstorable(&partial, &statuses, false),
            Some("partial-content")
        );
        assert_eq!(response_unstorable(&partial, &statuses, true), None);
        // Not among the statuses: never, whatever the key.
        assert_eq!(
            response_unstorable(&partial, &[StatusCode::OK], true),
            Some("status")
        );
    }

    #[test]
    fn credentials_bypass_unless_keyed_by_caller() {
        let r = req(&[("authorization", b"Bearer x")]);
        assert_eq!(bypass(&r, |_| false), Some("authorization"));
        assert_eq!(bypass(&r, |_| true), None);
        let r = req(&[("cookie", b"s=1")]);
        assert_eq!(bypass(&r, |_| false), Some("cookie"));
        // A key over Authorization does not make cookie-authenticated requests shareable.
        assert_eq!(bypass(&r, |h| h == header::AUTHORIZATION), Some("cookie"));
        let r = req(&[("proxy-authorization", b"Basic x")]);
        assert_eq!(bypass(&r, |_| false), Some("proxy-authorization"));
        let r = req(&[("cache-control", b"no-store")]);
        assert_eq!(bypass(&r, |_| true), Some("no-store"));
    }

    #[test]
    fn range_requests_bypass_unless_keyed_by_range() {
        let r = req(&[("range", b"bytes=0-1")]);
        assert_eq!(bypass(&r, |_| false), Some("range"));
        assert_eq!(bypass(&r, |h| h == header::RANGE), None);
        // Covering a credential does not cover Range.
        assert_eq!(bypass(&r, |h| h == header::AUTHORIZATION), Some("range"));
    }

    #[test]
    fn unparsable_request_fields_bypass() {
        for (name, v, reason) in [
            (
                "cache-control",
                &b"no-store\xff"[..],
                "unparsable-cache-control",
            ),
            ("cache-control", b"max-age=\"1", "unparsable-cache-control"),
            ("cache-control", b"a b", "unparsable-cache-control"),
            ("pragma", b"no-cache; x", "unparsable-pragma"),
        ] {
            assert_eq!(bypass(&req(&[(name, v)]), |_| true), Some(reason));
        }
        assert_eq!(
            bypass(
                &req(&[("cache-control", b"max-age=5, ext=\"\xe9\"")]),
                |_| true
            ),
            None
        );
    }

    #[test]
    fn revalidation_requests() {
        for (name, v) in [
            ("cache-control", &b"no-cache"[..]),
            ("cache-control", b"MAX-AGE=0"),
            ("cache-control", b"max-age=\"0\""),
            ("cache-control", b"max-age=soon"),
            ("cache-control", b"x=\"a,b\", No-Cache"),
            ("pragma", b"no-cache"),
        ] {
            assert_eq!(
                request_policy(&req(&[(name, v)]), |_| true),
                Ok(true),
                "{name}: {v:?}"
            );
        }
        for (name, v) in [
            ("cache-control", &b"max-age=10"[..]),
            ("cache-control", b"x=\"no-cache\""),
            ("pragma", b"x-other"),
        ] {
            assert_eq!(
                request_policy(&req(&[(name, v)]), |_| true),
                Ok(false),
                "{name}: {v:?}"
            );
        }
    }
}
