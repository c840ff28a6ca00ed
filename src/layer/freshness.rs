//! HTTP freshness for the shared-cache mode ([`CacheLayer::http_freshness`]): what a shared
//! cache may store (RFC 9111 §3), for how long (§4.2.1 freshness lifetime, §4.2.2 heuristic
//! freshness, §4.2.3 age), and what the response allows once stale (§4.2.4, §5.2.2 and RFC
//! 5861). The directives come from the first targeted field of RFC 9213 (`CDN-Cache-Control`)
//! that is present and valid, else from `Cache-Control`.
//!
//! [`CacheLayer::http_freshness`]: super::CacheLayer::http_freshness

use super::config::RouteConfig;
use super::miss::Fill;
use super::policy;
use super::vary::Vary;
use crate::cache::flight::Landing;
use crate::entry::{now_ms, Entry, Freshness};
use crate::headers::{self, CacheControl, Delta};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Statuses that are heuristically cacheable (RFC 9110 §15.1): stored without explicit
/// freshness, fresh for a fraction of the time since `Last-Modified`.
pub(crate) const HEURISTIC_STATUSES: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// The final statuses the shared-cache preset stores (with explicit freshness, or heuristic for
/// [`HEURISTIC_STATUSES`]): the ones RFC 9110 defines that a cache may reuse, and the unassigned
/// codes of each class (a cache may store any status it understands, RFC 9111 §3; an
/// unrecognised code with `must-understand` is not stored).
pub(crate) fn shared_statuses() -> Vec<StatusCode> {
    let mut v: Vec<StatusCode> = [
        200u16, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 406, 410, 414, 421,
        451, 500, 501, 502, 503, 504, 505,
    ]
    .iter()
    .filter_map(|&s| StatusCode::from_u16(s).ok())
    .collect();
    // `2xx` to `5xx` codes nobody defines (the suite's 299, 499, 599): reused with explicit
    // freshness, like the defined ones of their class.
    for s in [299u16, 399, 499, 599] {
        if let Ok(s) = StatusCode::from_u16(s) {
            v.push(s);
        }
    }
    v
}

/// Whether this cache knows what status `s` means (for `must-understand`, RFC 9111 §5.2.2.3):
/// the statuses RFC 9110 defines that this cache stores.
fn understood(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203
            | 204
            | 300
            | 301
            | 302
            | 303
            | 307
            | 308
            | 400
            | 403
            | 404
            | 405
            | 406
            | 410
            | 414
            | 421
            | 451
            | 500
            | 501
            | 502
            | 503
            | 504
            | 505
    )
}

/// The directives a response gives this cache, and where they came from.
pub(crate) struct Directives {
    pub(crate) cc: CacheControl,
    /// From a targeted field (RFC 9213): `Cache-Control` is then ignored for caching.
    pub(crate) targeted: bool,
}

/// The response's directives: the first of `targeted` that is present and a valid Structured
/// Field dictionary (RFC 9213 §2.1: an invalid one is ignored), else `Cache-Control`.
/// `Err`: the `Cache-Control` used does not parse (the response is not stored).
pub(crate) fn directives(
    targeted: &[HeaderName],
    h: &HeaderMap,
) -> Result<Directives, headers::Unparsable> {
    for name in targeted {
        if !h.contains_key(name) {
            continue;
        }
        if let Some(cc) = targeted_field(h, name) {
            return Ok(Directives { cc, targeted: true });
        }
    }
    Ok(Directives {
        cc: CacheControl::of(h, header::CACHE_CONTROL)?,
        targeted: false,
    })
}

/// A targeted field (RFC 9213 §2.1): a Structured Field dictionary (RFC 8941 §3.2) whose
/// freshness directives are integers. `None` when it is not one (then it is ignored).
fn targeted_field(h: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
    let lines: Vec<&[u8]> = h.get_all(name).iter().map(HeaderValue::as_bytes).collect();
    let joined = lines.join(&b", "[..]);
    if !sf::dictionary_valid(&joined) {
        return None;
    }
    let cc = CacheControl::parse_lines([&joined[..]]).ok()?;
    // RFC 9213 §2.1: the delta-seconds directives are sf-integers; a string is invalid.
    for d in cc.directives() {
        if matches!(
            d.name(),
            "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
        ) && (d.is_quoted() || d.value().and_then(headers::delta_seconds).is_none())
        {
            return None;
        }
    }
    Some(cc)
}

/// Why a response must not be stored in the shared-cache mode, if it must not: the rules every
/// route applies ([`policy::response_unstorable`]), except that `no-cache` is stored (and
/// revalidated on every use), the directives come from a targeted field when there is one, and
/// `must-understand` stores an understood status despite `no-store`; then RFC 9111 §3: a
/// response needs explicit freshness, `public`, or a heuristically cacheable status, and one
/// that would never be reused (no lifetime, no validator, no stale window) is not stored.
pub(crate) fn unstorable(
    cfg: &RouteConfig,
    status: StatusCode,
    h: &HeaderMap,
) -> Option<&'static str> {
    if !cfg.statuses.contains(&status) {
        return Some("status");
    }
    if status == StatusCode::PARTIAL_CONTENT && !cfg.covers_range() {
        return Some("partial-content");
    }
    if h.contains_key(header::SET_COOKIE) {
        return Some("set-cookie");
    }
    // A Cache-Control that does not parse is refused even when a targeted field overrides it.
    if CacheControl::of(h, header::CACHE_CONTROL).is_err() {
        return Some("unparsable-cache-control");
    }
    let Ok(d) = directives(&cfg.targeted, h) else {
        return Some("unparsable-cache-control");
    };
    let cc = &d.cc;
    if cc.has("private") {
        return Some("cache-control");
    }
    if cc.has("no-store") && !(cc.has("must-understand") && understood(status)) {
        return Some("cache-control");
    }
    if let Some(reason) = policy::vary_unstorable(h) {
        return Some(reason);
    }
    let explicit =
        cc.has("s-maxage") || cc.has("max-age") || (!d.targeted && h.contains_key(header::EXPIRES));
    let heuristic = HEURISTIC_STATUSES.contains(&status.as_u16());
    if !(explicit || heuristic || cc.has("public")) {
        return Some("no-freshness");
    }
    // Reused at all: fresh, or within a stale window, or revalidatable, at some point after
    // arrival (the age is taken at this instant; the fill's own delay only adds to it).
    let now = now_ms();
    let age = initial_age(h, now, now);
    if lifetime(cfg, status, h, &d) + keep_for(cfg, cc, h) <= age {
        return Some("stale");
    }
    None
}

/// How long past its freshness an entry is kept: the route's stale windows, the response's own
/// (RFC 5861), and, for one with validators, the revalidation window.
fn keep_for(cfg: &RouteConfig, cc: &CacheControl, h: &HeaderMap) -> Duration {
    let (swr, sie) = directive_windows(cfg, cc);
    let mut keep = cfg
        .stale_for()
        .max(Duration::from_secs(u64::from(swr.max(sie))));
    if has_validators_in(h) {
        keep = keep.max(cfg.keep_for_revalidation);
    }
    keep
}

/// The response's own `stale-while-revalidate=` and `stale-if-error=`, in seconds, when the
/// route reads them.
fn directive_windows(cfg: &RouteConfig, cc: &CacheControl) -> (u32, u32) {
    let secs = |name: &str| match cc.delta(name) {
        Some(Delta::Secs(s)) if cfg.stale_directives => s.min(u64::from(u32::MAX)) as u32,
        _ => 0,
    };
    (secs("stale-while-revalidate"), secs("stale-if-error"))
}

/// Whether `h` has a validator a conditional request can use (`ETag`, `Last-Modified`).
pub(crate) fn has_validators_in(h: &HeaderMap) -> bool {
    headers::single(h, &header::ETAG)
        .is_some_and(|v| headers::EntityTag::parse(v.as_bytes()).is_some())
        || headers::date_field(h, &header::LAST_MODIFIED).is_some()
}

/// The freshness lifetime (RFC 9111 §4.2.1): `s-maxage`, `max-age` (a value that is not
/// delta-seconds is 0: stale), `Expires - Date` (an invalid `Expires` is in the past; ignored
/// when the directives come from a targeted field), else heuristic (§4.2.2) for a heuristically
/// cacheable status with a `Last-Modified` before `Date` (the route's fraction of the interval),
/// else 0. `no-cache` is 0 whatever the rest says.
pub(crate) fn lifetime(
    cfg: &RouteConfig,
    status: StatusCode,
    h: &HeaderMap,
    d: &Directives,
) -> Duration {
    let cc = &d.cc;
    if cc.has("no-cache") {
        return Duration::ZERO;
    }
    if let Some(ttl) = cc.shared_max_age() {
        return ttl;
    }
    let date = date_value(h);
    if !d.targeted && h.contains_key(header::EXPIRES) {
        let expires = headers::date_field(h, &header::EXPIRES).unwrap_or(UNIX_EPOCH);
        return match date {
            Some(date) => expires.duration_since(date).unwrap_or(Duration::ZERO),
            None => expires
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        };
    }
    // RFC 9111 §4.2.2: heuristically cacheable statuses, or any marked `public`.
    let heuristic = HEURISTIC_STATUSES.contains(&status.as_u16()) || cc.has("public");
    if cfg.heuristic_fraction > 0.0 && heuristic {
        let date = date.unwrap_or_else(SystemTime::now);
        if let Some(lm) = headers::date_field(h, &header::LAST_MODIFIED) {
            if let Ok(since) = date.duration_since(lm) {
                return since.mul_f64(cfg.heuristic_fraction).min(cfg.heuristic_max);
            }
        }
    }
    Duration::ZERO
}

/// `Date`, when it is a single valid HTTP-date.
fn date_value(h: &HeaderMap) -> Option<SystemTime> {
    headers::date_field(h, &header::DATE)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The corrected initial age of a response received at `response_ms` for a request sent at
/// `request_ms` (RFC 9111 §4.2.3): the larger of the apparent age (`response_time - Date`) and
/// the origin's `Age` plus the response delay.
pub(crate) fn initial_age(h: &HeaderMap, request_ms: u64, response_ms: u64) -> Duration {
    let apparent = date_value(h).map_or(0, |d| response_ms.saturating_sub(unix_ms(d)));
    let age_value = headers::age(h).unwrap_or(0).saturating_mul(1000);
    let corrected = age_value.saturating_add(response_ms.saturating_sub(request_ms));
    Duration::from_millis(apparent.max(corrected))
}

/// The entry for a response in the shared-cache mode, received at `response_ms` for a request
/// sent at `request_ms`: freshness from its own directives and age, a `Date` added when the
/// origin sent none (RFC 9110 §6.6.1: the one the client sees too, since `headers` is the
/// response's), kept past freshness for the stale windows and, when it has validators, for
/// revalidation.
pub(crate) fn entry(
    cfg: &RouteConfig,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: Bytes,
    request_ms: u64,
    response_ms: u64,
) -> Entry {
    if date_value(headers).is_none() && !headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(response_ms));
        if let Ok(v) = HeaderValue::try_from(date) {
            headers.insert(header::DATE, v);
        }
    }
    // A response whose directives do not parse is never stored (`unstorable`); an empty list
    // stands in so this function has one path.
    let d = directives(&cfg.targeted, headers).unwrap_or(Directives {
        cc: CacheControl::default(),
        targeted: false,
    });
    let lifetime = lifetime(cfg, status, headers, &d);
    let age = initial_age(headers, request_ms, response_ms);
    let cc = &d.cc;
    let no_stale = cc.has("must-revalidate")
        || cc.has("proxy-revalidate")
        || cc.has("s-maxage")
        || cc.has("no-cache");
    let (swr, sie) = directive_windows(cfg, cc);
    let keep = keep_for(cfg, cc, headers);
    // A response already stale on arrival by `overshoot` is stored as if it had arrived then,
    // fresh until that instant: its stale windows count from when it really went stale, and
    // its age (`initial_age + now - stored_at`) is unchanged.
    let age_ms = age.as_millis().min(u64::MAX as u128) as u64;
    let overshoot = age
        .saturating_sub(lifetime)
        .as_millis()
        .min(u64::MAX as u128) as u64;
    let mut e = Entry::from_response(
        status,
        headers,
        body,
        response_ms.saturating_sub(overshoot),
        lifetime.saturating_sub(age),
        keep,
    );
    // Kept at least a moment from now (`unstorable` refuses one that would never be reused).
    e.stale_until_ms = e.stale_until_ms.max(response_ms.saturating_add(1));
    e.initial_age_ms = age_ms - overshoot.min(age_ms);
    e.no_stale = no_stale;
    e.stale_while_revalidate_s = swr;
    e.stale_if_error_s = sie;
    e
}

/// What a fill hands the requests that joined it (single-flight followers): its entry if they
/// may take it (same variant) and, with [`http_freshness`](RouteConfig), it is fresh. An entry
/// stored stale (kept to be revalidated, or for a stale window) is for the requests that find
/// it later to revalidate; a follower that got it would serve a stale response nobody allowed,
/// so it runs on its own. The app-cache defaults hand over every entry, as they always did.
pub(crate) fn landing(fill: &Fill, entry: Entry, vary: &Vary) -> Landing {
    let fresh =
        !fill.cfg().http_freshness || matches!(entry.freshness(now_ms()), Freshness::Fresh(_));
    match fill.shares(vary) && fresh {
        true => Landing::Entry(std::sync::Arc::new(entry), fill.stamp()),
        false => Landing::Unshareable,
    }
}

/// The time a request was sent, given how long ago it started.
pub(crate) fn request_time(elapsed: Duration) -> u64 {
    now_ms().saturating_sub(elapsed.as_millis().min(u64::MAX as u128) as u64)
}

/// How long past freshness `entry` may be served while it is revalidated in the background: the
/// route's window or the response's own `stale-while-revalidate=`, never for an entry that must
/// be revalidated.
pub(crate) fn swr_window(cfg: &RouteConfig, entry: &Entry) -> Duration {
    if entry.no_stale {
        return Duration::ZERO;
    }
    cfg.swr.max(Duration::from_secs(u64::from(
        entry.stale_while_revalidate_s,
    )))
}

/// How long past freshness `entry` may stand in for a failing origin: the route's window or the
/// response's own `stale-if-error=`, never for an entry that must be revalidated.
pub(crate) fn sie_window(cfg: &RouteConfig, entry: &Entry) -> Duration {
    if entry.no_stale {
        return Duration::ZERO;
    }
    cfg.sie
        .max(Duration::from_secs(u64::from(entry.stale_if_error_s)))
}

/// Structured Field dictionaries (RFC 8941 §3.2, §4.2.2), only as far as telling a valid one
/// from an invalid one.
mod sf {
    fn skip_sp(s: &[u8], mut i: usize) -> usize {
        while s.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    }

    fn skip_ows(s: &[u8], mut i: usize) -> usize {
        while matches!(s.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        i
    }

    /// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
    fn key(s: &[u8], i: usize) -> Option<usize> {
        let first = *s.get(i)?;
        if !(first.is_ascii_lowercase() || first == b'*') {
            return None;
        }
        let mut j = i + 1;
        while let Some(&c) = s.get(j) {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c) {
                j += 1;
            } else {
                break;
            }
        }
        Some(j)
    }

    /// A bare item: integer or decimal, string, token, byte sequence, boolean.
    fn bare_item(s: &[u8], i: usize) -> Option<usize> {
        let c = *s.get(i)?;
        match c {
            b'-' | b'0'..=b'9' => {
                let mut j = if c == b'-' { i + 1 } else { i };
                let start = j;
                while s.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                let int_len = j - start;
                if int_len == 0 {
                    return None;
                }
                if s.get(j) == Some(&b'.') {
                    let frac = j + 1;
                    j = frac;
                    while s.get(j).is_some_and(u8::is_ascii_digit) {
                        j += 1;
                    }
                    let frac_len = j - frac;
                    (int_len <= 12 && (1..=3).contains(&frac_len)).then_some(j)
                } else {
                    (int_len <= 15).then_some(j)
                }
            }
            b'"' => {
                let mut j = i + 1;
                loop {
                    match *s.get(j)? {
                        b'\\' => {
                            if !matches!(s.get(j + 1), Some(b'"' | b'\\')) {
                                return None;
                            }
                            j += 2;
                        }
                        b'"' => return Some(j + 1),
                        0x20..=0x7e => j += 1,
                        _ => return None,
                    }
                }
            }
            b':' => {
                let mut j = i + 1;
                while let Some(&b) = s.get(j) {
                    if b == b':' {
                        return Some(j + 1);
                    }
                    if !(b.is_ascii_alphanumeric() || b"+/=".contains(&b)) {
                        return None;
                    }
                    j += 1;
                }
                None
            }
            b'?' => matches!(s.get(i + 1), Some(b'0' | b'1')).then_some(i + 2),
            c if c.is_ascii_alphabetic() || c == b'*' => {
                let mut j = i + 1;
                while s
                    .get(j)
                    .is_some_and(|&b| crate::headers::is_tchar(b) || b == b':' || b == b'/')
                {
                    j += 1;
                }
                Some(j)
            }
            _ => None,
        }
    }

    /// `*( ";" *SP key [ "=" bare-item ] )`
    fn parameters(s: &[u8], mut i: usize) -> Option<usize> {
        while s.get(i) == Some(&b';') {
            i = key(s, skip_sp(s, i + 1))?;
            if s.get(i) == Some(&b'=') {
                i = bare_item(s, i + 1)?;
            }
        }
        Some(i)
    }

    /// Whether `s` (the field's lines joined with `", "`) is a valid dictionary. Inner lists
    /// are not accepted (no cache directive takes one).
    pub(super) fn dictionary_valid(s: &[u8]) -> bool {
        let mut i = skip_sp(s, 0);
        if i == s.len() {
            return false;
        }
        loop {
            let Some(mut j) = key(s, i) else {
                return false;
            };
            if s.get(j) == Some(&b'=') {
                let Some(k) = bare_item(s, j + 1) else {
                    return false;
                };
                j = k;
            }
            let Some(k) = parameters(s, j) else {
                return false;
            };
            i = skip_ows(s, k);
            if i == s.len() {
                return true;
            }
            if s[i] != b',' {
                return false;
            }
            i = skip_ows(s, i + 1);
            if i == s.len() {
                return false; // a trailing comma
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::dictionary_valid;

        #[test]
        fn dictionaries() {
            for ok in [
                "max-age=3600",
                "foobar, max-age=3600",
                "max-age=99999999999",
                "no-store",
                "a=?1, b=\"x\\\"y\", c=tok/en:1, d=:aGk=:, e=1.5;p=2",
            ] {
                assert!(dictionary_valid(ok.as_bytes()), "{ok}");
            }
            for bad in [
                "",
                "max-age=10000, &&&&&",
                "MaX-aGe=1",
                "max-age=1,",
                "max-age=1 max-age=2",
                "max-age=1234567890123456",
                "a=\"unterminated",
                "a=1.2345",
            ] {
                assert!(!dictionary_valid(bad.as_bytes()), "{bad}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RouteConfig {
        let mut c = RouteConfig::new(crate::Cache::for_tests());
        c.set_http_cache();
        c
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn life(c: &RouteConfig, status: u16, pairs: &[(&str, &str)]) -> Duration {
        let hm = h(pairs);
        let d = directives(&c.targeted, &hm).unwrap();
        lifetime(c, StatusCode::from_u16(status).unwrap(), &hm, &d)
    }

    fn date(at: SystemTime) -> String {
        httpdate::fmt_http_date(at)
    }

    #[test]
    fn lifetime_prefers_targeted_then_s_maxage_max_age_expires_heuristic() {
        let c = cfg();
        let now = SystemTime::now();
        let s = Duration::from_secs;
        assert_eq!(
            life(&c, 200, &[("cache-control", "max-age=10, s-maxage=20")]),
            s(20)
        );
        assert_eq!(
            life(
                &c,
                200,
                &[
                    ("cdn-cache-control", "max-age=5"),
                    ("cache-control", "max-age=100")
                ]
            ),
            s(5)
        );
        // An invalid targeted field is ignored.
        assert_eq!(
            life(
                &c,
                200,
                &[
                    ("cdn-cache-control", "max-age=\"5\""),
                    ("cache-control", "max-age=100")
                ]
            ),
            s(100)
        );
        // Expires counts from Date, not from this clock.
        let d = now - s(3600);
        assert_eq!(
            life(
                &c,
                200,
                &[("date", &date(d)), ("expires", &date(d + s(60)))]
            ),
            s(60)
        );
        assert_eq!(life(&c, 200, &[("expires", "0")]), Duration::ZERO);
        // An invalid max-age is stale, not the route TTL; no-cache is 0 whatever the rest.
        assert_eq!(
            life(&c, 200, &[("cache-control", "max-age=-1")]),
            Duration::ZERO
        );
        assert_eq!(
            life(&c, 200, &[("cache-control", "max-age=60, no-cache")]),
            Duration::ZERO
        );
        // Heuristic: 10% of Date - Last-Modified, for heuristically cacheable statuses only.
        let lm = [("date", date(now)), ("last-modified", date(now - s(1000)))];
        let lm: Vec<(&str, &str)> = lm.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = life(&c, 200, &lm);
        assert!(got >= s(99) && got <= s(101), "{got:?}");
        assert_eq!(life(&c, 302, &lm), Duration::ZERO);
        assert_eq!(life(&c, 200, &[]), Duration::ZERO);
    }

    #[test]
    fn initial_age_takes_the_larger_of_apparent_age_and_corrected_age() {
        let t = 1_000_000_000_000u64;
        let date_at = |ms: u64| date(UNIX_EPOCH + Duration::from_millis(ms));
        // The origin says Age: 30; the response took 2 s.
        let hm = h(&[("age", "30"), ("date", &date_at(t))]);
        assert_eq!(initial_age(&hm, t - 2_000, t), Duration::from_secs(32));
        // Date an hour ago, no Age: the apparent age.
        let hm = h(&[("date", &date_at(t - 3_600_000))]);
        assert_eq!(initial_age(&hm, t, t), Duration::from_secs(3600));
        // A Date in the future is no negative age.
        let hm = h(&[("date", &date_at(t + 10_000))]);
        assert_eq!(initial_age(&hm, t, t), Duration::ZERO);
    }

    #[test]
    fn storable_in_the_shared_mode() {
        let c = cfg();
        let un = |status: u16, pairs: &[(&str, &str)]| {
            unstorable(&c, StatusCode::from_u16(status).unwrap(), &h(pairs))
        };
        assert_eq!(un(200, &[("cache-control", "max-age=60")]), None);
        // no-cache is stored (and revalidated on every use) when it can be revalidated.
        assert_eq!(
            un(200, &[("cache-control", "no-cache"), ("etag", "\"a\"")]),
            None
        );
        assert_eq!(
            un(200, &[("cache-control", "private, max-age=60")]),
            Some("cache-control")
        );
        assert_eq!(
            un(200, &[("cache-control", "no-store, max-age=60")]),
            Some("cache-control")
        );
        assert_eq!(
            un(
                200,
                &[("cache-control", "no-store, must-understand, max-age=60")]
            ),
            None
        );
        assert_eq!(
            un(
                599,
                &[("cache-control", "no-store, must-understand, max-age=60")]
            ),
            Some("cache-control")
        );
        // The targeted field decides: CDN-Cache-Control: max-age overrides Cache-Control: no-store.
        assert_eq!(
            un(
                200,
                &[
                    ("cdn-cache-control", "max-age=60"),
                    ("cache-control", "no-store")
                ]
            ),
            None
        );
        assert_eq!(
            un(
                200,
                &[
                    ("cdn-cache-control", "no-store"),
                    ("cache-control", "max-age=60")
                ]
            ),
            Some("cache-control")
        );
        // A Cache-Control that does not parse is refused even under a valid targeted field.
        assert_eq!(
            un(
                200,
                &[
                    ("cdn-cache-control", "max-age=60"),
                    ("cache-control", "max-age=60, ext=\"open")
                ]
            ),
            Some("unparsable-cache-control")
        );
        // A 302 has no heuristic freshness: explicit freshness is needed.
        assert_eq!(un(302, &[]), Some("no-freshness"));
        assert_eq!(un(302, &[("cache-control", "max-age=60")]), None);
        // Never reused: not stored.
        assert_eq!(un(200, &[]), Some("stale"));
        assert_eq!(un(200, &[("etag", "\"a\"")]), None);
        assert_eq!(
            un(
                200,
                &[("set-cookie", "a=b"), ("cache-control", "max-age=60")]
            ),
            Some("set-cookie")
        );
    }

    #[test]
    fn entry_counts_age_and_adds_date() {
        let c = cfg();
        let now = now_ms();
        let mut hm = h(&[
            ("cache-control", "max-age=100, must-revalidate"),
            ("age", "40"),
        ]);
        let e = entry(&c, StatusCode::OK, &mut hm, Bytes::new(), now, now);
        assert!(hm.contains_key(header::DATE), "Date added");
        assert_eq!(e.initial_age_ms, 40_000);
        assert_eq!(e.fresh_until_ms, now + 60_000);
        assert!(e.no_stale);
        assert_eq!(e.age(now), Duration::from_secs(40));
        let mut hm = h(&[(
            "cache-control",
            "max-age=1, stale-while-revalidate=30, stale-if-error=60",
        )]);
        let e = entry(&c, StatusCode::OK, &mut hm, Bytes::new(), now, now);
        assert_eq!((e.stale_while_revalidate_s, e.stale_if_error_s), (30, 60));
        assert!(!e.no_stale);
        assert!(e.stale_until_ms >= e.fresh_until_ms + 60_000);
        assert_eq!(swr_window(&c, &e), Duration::from_secs(30));
        assert_eq!(sie_window(&c, &e), Duration::from_secs(60));
    }

    use proptest::prelude::*;

    proptest! {
        /// RFC 9111 §4.2.3 on every combination of `max-age`, origin `Age`, `Date` skew and
        /// response delay: the stored entry's age at arrival is the larger of the apparent age
        /// and the corrected `Age` (a `Date` in the future counts nothing), it grows one for one
        /// with time, and the entry is fresh exactly while that age is below the lifetime
        /// (stale by exactly the difference after). One formula for every response: nothing is
        /// fresher than its origin said, nothing staler.
        #[test]
        fn the_entry_is_fresh_exactly_while_its_age_is_below_the_lifetime(
            max_age in 0u64..100_000,
            origin_age in proptest::option::of(0u64..100_000),
            date_skew_s in -100_000i64..100_000,
            delay_ms in 0u64..100_000,
            later_ms in 0u64..300_000,
        ) {
            let c = cfg();
            // A whole second, as Date has no finer resolution.
            let t = 1_800_000_000_000u64;
            let date_ms = t.checked_add_signed(date_skew_s * 1000).unwrap();
            let mut pairs = vec![
                ("cache-control", format!("max-age={max_age}")),
                ("date", date(UNIX_EPOCH + Duration::from_millis(date_ms))),
                ("etag", "\"v\"".to_owned()),
            ];
            if let Some(a) = origin_age {
                pairs.push(("age", a.to_string()));
            }
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut hm = h(&pairs);
            let e = entry(&c, StatusCode::OK, &mut hm, Bytes::new(), t - delay_ms, t);
            let apparent = t.saturating_sub(date_ms);
            let corrected = origin_age.unwrap_or(0) * 1000 + delay_ms;
            let age = apparent.max(corrected);
            let now = t + later_ms;
            prop_assert_eq!(e.age(t), Duration::from_millis(age));
            prop_assert_eq!(e.age(now), Duration::from_millis(age + later_ms));
            let lifetime = max_age * 1000;
            let current = age + later_ms;
            match e.freshness(now) {
                Freshness::Fresh(left) => {
                    prop_assert!(current < lifetime);
                    prop_assert_eq!(left, Duration::from_millis(lifetime - current));
                }
                Freshness::Stale(past) => {
                    prop_assert!(current >= lifetime);
                    prop_assert_eq!(past, Duration::from_millis(current - lifetime));
                }
                Freshness::Expired => prop_assert!(current >= lifetime),
            }
        }
    }
}
