//! Responses: built from a stored entry, and finished with their [`Outcome`] in one place.

use super::body::CacheBody;
use super::config::RouteConfig;
use super::status;
use crate::entry::Entry;
use crate::outcome::Outcome;
use crate::stats::RequestScope;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Body;

/// `Cache-Status` as a constant: a `&str` name would be parsed on every response.
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// A response and what the cache did for it: what every path of the request flow returns.
pub(crate) type Answer<B> = (Response<CacheBody<B>>, Outcome);

/// The one place a request's outcome is recorded: the request span's `outcome` field, the
/// [`Stats`](crate::Stats) counters and OpenTelemetry (through [`Counters::record`]), this
/// cache's `Cache-Status` member (appended after any an inner cache wrote, RFC 9211), and the
/// [`Outcome`] as a response extension.
///
/// [`Counters::record`]: crate::stats::Counters::record
pub(crate) fn finish<B: Body>(
    cfg: &RouteConfig,
    scope: &RequestScope,
    (mut res, outcome): Answer<B>,
) -> Response<CacheBody<B>> {
    tracing::Span::current().record("outcome", outcome.label());
    cfg.cache.counters().record(&outcome, scope);
    if cfg.status_header {
        crate::headers::append_member(
            res.headers_mut(),
            CACHE_STATUS,
            status::header(&outcome, &cfg.name),
        );
    }
    res.extensions_mut().insert(outcome);
    res
}

/// A response replayed from `entry` at `now` (Unix ms): its status, headers and body, with `Age`;
/// an empty body (and `Content-Length`) for HEAD.
pub(crate) fn from_entry<B: Body>(
    entry: &Entry,
    is_head: bool,
    outcome: Outcome,
    now: u64,
) -> Answer<B> {
    let age = entry.age(now).as_secs();
    let len = entry.body.len();
    let mut res = Response::new(if is_head {
        CacheBody::empty()
    } else {
        CacheBody::full(entry.body.clone())
    });
    *res.status_mut() = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    let headers = res.headers_mut();
    headers.reserve(entry.headers.len() + 3);
    for (name, value) in &entry.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(header::AGE, age_value(age));
    if is_head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    (res, outcome)
}

/// Ages below this (seconds) are answered from a table built once (a hit allocates no `Age`).
const TABLED_AGES: usize = 600;

/// The `Age` value for `secs`: from [`TABLED_AGES`]'s table (static bytes: cloning one is a
/// copy, with no reference count shared between threads), formatted above it.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    let table = AGES.get_or_init(|| {
        // One string holding every tabled age, kept for the life of the process (a few KiB).
        let mut digits = String::new();
        let mut ends = Vec::with_capacity(TABLED_AGES);
        for n in 0..TABLED_AGES {
            digits.push_str(&n.to_string());
            ends.push(digits.len());
        }
        let digits: &'static str = Box::leak(digits.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&digits[start..end]);
                start = end;
                v
            })
            .collect()
    });
    usize::try_from(secs)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_values_are_decimal_seconds_on_both_sides_of_the_table() {
        for secs in (0..TABLED_AGES as u64 + 5).chain([86_400, u64::MAX]) {
            assert_eq!(age_value(secs), secs.to_string().as_str(), "{secs}");
        }
    }
}
