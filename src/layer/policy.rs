//! What is cached, and what never is.

use http::{header, HeaderMap, Request, Response, StatusCode};

/// Whether a `Cache-Control` header list carries one of `directives` (case-insensitive).
pub(crate) fn has_directive(headers: &HeaderMap, directives: &[&str]) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.split('=').next().unwrap_or("").trim())
        .any(|d| directives.iter().any(|x| d.eq_ignore_ascii_case(x)))
}

/// Why a request must skip the cache, if it must. `covered(h)`: the route's key includes
/// credential header `h`, so requests carrying it have entries of their own.
pub(crate) fn request_bypass<B>(
    req: &Request<B>,
    covered: impl Fn(&header::HeaderName) -> bool,
) -> Option<&'static str> {
    let h = req.headers();
    if has_directive(h, &["no-store"]) {
        return Some("no-store");
    }
    for (name, reason) in [
        (header::AUTHORIZATION, "authorization"),
        (header::COOKIE, "cookie"),
        (header::PROXY_AUTHORIZATION, "proxy-authorization"),
    ] {
        if h.contains_key(&name) && !covered(&name) {
            return Some(reason);
        }
    }
    None
}

/// Whether the request asks for a fresh response (`Cache-Control: no-cache` or `max-age=0`, or
/// `Pragma: no-cache`): the lookup is skipped, the response is still stored.
pub(crate) fn request_revalidate<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    has_directive(h, &["no-cache"])
        || h.get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("max-age=0"))
        || h.get(header::PRAGMA)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
}

/// Why a response must not be stored, if it must not.
pub(crate) fn response_unstorable<B>(
    res: &Response<B>,
    statuses: &[StatusCode],
) -> Option<&'static str> {
    let h = res.headers();
    if !statuses.contains(&res.status()) {
        return Some("status");
    }
    if h.contains_key(header::SET_COOKIE) {
        return Some("set-cookie");
    }
    if has_directive(h, &["no-store", "private", "no-cache"]) {
        return Some("cache-control");
    }
    if h.contains_key(header::VARY) && super::vary::Vary::of(h) == super::vary::Vary::Unstorable {
        // `Vary: *` (or a malformed list): no request could ever be known to select it.
        return Some("vary");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn never_stores_private_or_cookie_responses() {
        let ok = [StatusCode::OK];
        assert_eq!(response_unstorable(&res(&[]), &ok), None);
        assert_eq!(
            response_unstorable(&res(&[("set-cookie", "a=b")]), &ok),
            Some("set-cookie")
        );
        for cc in [
            "private",
            "no-store",
            "No-Cache",
            "max-age=5, private=\"x\"",
        ] {
            assert_eq!(
                response_unstorable(&res(&[("cache-control", cc)]), &ok),
                Some("cache-control"),
                "{cc}"
            );
        }
        assert_eq!(
            response_unstorable(&res(&[("cache-control", "public, max-age=60")]), &ok),
            None
        );
        assert_eq!(
            response_unstorable(&res(&[("vary", "*")]), &ok),
            Some("vary")
        );
        // A list of header names is stored, one entry per variant.
        assert_eq!(
            response_unstorable(&res(&[("vary", "Accept-Language")]), &ok),
            None
        );
    }

    #[test]
    fn credentials_bypass_unless_keyed_by_caller() {
        let r = Request::get("/")
            .header("authorization", "Bearer x")
            .body(())
            .unwrap();
        assert_eq!(request_bypass(&r, |_| false), Some("authorization"));
        assert_eq!(request_bypass(&r, |_| true), None);
        let r = Request::get("/").header("cookie", "s=1").body(()).unwrap();
        assert_eq!(request_bypass(&r, |_| false), Some("cookie"));
        // A key over Authorization does not make cookie-authenticated requests shareable.
        assert_eq!(
            request_bypass(&r, |h| h == header::AUTHORIZATION),
            Some("cookie")
        );
        let r = Request::get("/")
            .header("proxy-authorization", "Basic x")
            .body(())
            .unwrap();
        assert_eq!(request_bypass(&r, |_| false), Some("proxy-authorization"));
        let r = Request::get("/")
            .header("cache-control", "no-store")
            .body(())
            .unwrap();
        assert_eq!(request_bypass(&r, |_| true), Some("no-store"));
    }
}
