//! Range requests answered from a stored `200` ([`CacheLayer::serve_ranges`]): one byte range
//! (RFC 9110 §14), `If-Range` honoured; anything else gets the whole response.
//!
//! [`CacheLayer::serve_ranges`]: super::CacheLayer::serve_ranges

use super::body::CacheBody;
use super::config::RouteConfig;
use crate::headers::{self, ByteRange, EntityTag};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Body;

/// What a request asks for with `Range`, copied before the request goes to the handler.
#[derive(Debug, Default)]
pub(crate) struct Requested {
    /// The single byte range, when there is a `Range` this route answers; `None` with
    /// `present` for one it cannot (several ranges, another unit): the whole response.
    range: Option<ByteRange>,
    present: bool,
    if_range: Option<HeaderValue>,
}

impl Requested {
    pub(crate) fn from_request(cfg: &RouteConfig, method: &Method, h: &HeaderMap) -> Self {
        if !cfg.ranges || method != Method::GET || !h.contains_key(header::RANGE) {
            return Self::default();
        }
        Self {
            range: headers::byte_range(h),
            present: true,
            if_range: h.get(header::IF_RANGE).cloned(),
        }
    }

    /// Whether `If-Range` (absent, or matching the response's validator) lets the range apply
    /// (RFC 9110 §13.1.5): an entity tag must match strongly, a date must be the response's
    /// `Last-Modified` exactly.
    fn if_range_holds(&self, res: &HeaderMap) -> bool {
        let Some(v) = &self.if_range else {
            return true;
        };
        let v = headers::trim_ows(v.as_bytes());
        if let Some(tag) = EntityTag::parse(v) {
            let Some(etag) = headers::single(res, &header::ETAG) else {
                return false;
            };
            return EntityTag::parse(etag.as_bytes())
                .is_some_and(|e| !e.weak && !tag.weak && e == tag);
        }
        let (Some(date), Some(lm)) = (
            headers::http_date(v),
            headers::date_field(res, &header::LAST_MODIFIED),
        ) else {
            return false;
        };
        date == lm
    }

    /// The response for this request: a `206` (or `416`) cut from a complete `200`, or `res`.
    pub(crate) fn apply<B: Body>(&self, mut res: Response<CacheBody<B>>) -> Response<CacheBody<B>> {
        if !self.present || res.status() != StatusCode::OK {
            return res;
        }
        let Some(range) = self.range else {
            return res;
        };
        let Some(body) = res.body().full_bytes() else {
            return res;
        };
        if res.headers().contains_key(header::CONTENT_RANGE) || !self.if_range_holds(res.headers())
        {
            return res;
        }
        let len = body.len() as u64;
        let span = match range {
            ByteRange::FromTo(first, _) if first >= len => None,
            ByteRange::FromTo(first, last) => {
                Some((first, last.map_or(len - 1, |l| l.min(len - 1))))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if len == 0 => None,
            ByteRange::Suffix(n) => Some((len - n.min(len), len - 1)),
        };
        let h = res.headers_mut();
        match span {
            None => {
                *res.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let h = res.headers_mut();
                h.insert(header::CONTENT_RANGE, value(format!("bytes */{len}")));
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
                *res.body_mut() = CacheBody::empty();
            }
            Some((start, end)) => {
                h.insert(
                    header::CONTENT_RANGE,
                    value(format!("bytes {start}-{end}/{len}")),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                // Within the body: start <= end < len.
                *res.body_mut() = CacheBody::full(body.slice(start as usize..=end as usize));
            }
        }
        res
    }
}

fn value(s: String) -> HeaderValue {
    // Digits, `bytes`, `-`, `/` and `*` only.
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderName;
    use http_body_util::BodyExt;

    fn cfg() -> RouteConfig {
        let mut c = RouteConfig::new(crate::Cache::for_tests());
        c.ranges = true;
        c
    }

    async fn answer(req: &[(&str, &str)], res_h: &[(&str, &str)]) -> (u16, String, String) {
        let mut h = HeaderMap::new();
        for (k, v) in req {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let r = Requested::from_request(&cfg(), &Method::GET, &h);
        let mut res: Response<CacheBody<http_body_util::Empty<Bytes>>> =
            Response::new(CacheBody::full(Bytes::from_static(b"0123456789")));
        for (k, v) in res_h {
            res.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let res = r.apply(res);
        let status = res.status().as_u16();
        let cr = res
            .headers()
            .get(header::CONTENT_RANGE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, cr, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn single_ranges_are_cut_from_the_stored_body() {
        let p = |a: &str, b: &str| (206, a.to_owned(), b.to_owned());
        assert_eq!(
            answer(&[("range", "bytes=0-1")], &[]).await,
            p("bytes 0-1/10", "01")
        );
        assert_eq!(
            answer(&[("range", "bytes=8-")], &[]).await,
            p("bytes 8-9/10", "89")
        );
        assert_eq!(
            answer(&[("range", "bytes=5-100")], &[]).await,
            p("bytes 5-9/10", "56789")
        );
        assert_eq!(
            answer(&[("range", "bytes=-3")], &[]).await,
            p("bytes 7-9/10", "789")
        );
        assert_eq!(
            answer(&[("range", "bytes=-30")], &[]).await,
            p("bytes 0-9/10", "0123456789")
        );
        assert_eq!(
            answer(&[("range", "bytes=10-")], &[]).await,
            (416, "bytes */10".into(), String::new())
        );
        // Several ranges, another unit: the whole response.
        let whole = (200, String::new(), "0123456789".to_owned());
        assert_eq!(answer(&[("range", "bytes=0-1,3-4")], &[]).await, whole);
        assert_eq!(answer(&[("range", "items=0-1")], &[]).await, whole);
        // If-Range: a strong match applies the range, anything else sends the whole.
        assert_eq!(
            answer(
                &[("range", "bytes=0-1"), ("if-range", "\"a\"")],
                &[("etag", "\"a\"")]
            )
            .await,
            p("bytes 0-1/10", "01")
        );
        assert_eq!(
            answer(
                &[("range", "bytes=0-1"), ("if-range", "\"b\"")],
                &[("etag", "\"a\"")]
            )
            .await,
            whole
        );
        assert_eq!(
            answer(
                &[("range", "bytes=0-1"), ("if-range", "W/\"a\"")],
                &[("etag", "W/\"a\"")]
            )
            .await,
            whole
        );
    }

    use proptest::prelude::*;

    /// The answer a `bytes=` range spec must get from a stored body of `len` bytes (RFC 9110
    /// §14.1.2, §14.4, §15.5.17), written independently of `apply`: `Some((start, end))` a
    /// `206` for those bytes, `Some` of nothing: `416`, `None`: the whole `200` (not one valid
    /// byte range).
    fn model(first: Option<u64>, last: Option<u64>, len: u64) -> Option<Option<(u64, u64)>> {
        match (first, last) {
            (None, None) => None,
            (None, Some(n)) => Some((n > 0 && len > 0).then(|| (len.saturating_sub(n), len - 1))),
            (Some(f), Some(l)) if f > l => None,
            (Some(f), l) => Some((f < len).then(|| (f, l.map_or(len - 1, |l| l.min(len - 1))))),
        }
    }

    proptest! {
        /// Every single `bytes=` range on every body length gets the model's answer: a `206`
        /// whose body is exactly the bytes `Content-Range` names and whose `Content-Length`
        /// counts them, a `416` naming the length, or the whole `200`. Never a panic, never a
        /// byte outside the body.
        #[test]
        fn every_single_range_matches_the_model(
            len in 0u64..40,
            first in proptest::option::of(0u64..50),
            last in proptest::option::of(0u64..50),
        ) {
            let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let spec = format!(
                "bytes={}-{}",
                first.map_or(String::new(), |f| f.to_string()),
                last.map_or(String::new(), |l| l.to_string())
            );
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, HeaderValue::from_str(&spec).unwrap());
            let r = Requested::from_request(&cfg(), &Method::GET, &h);
            let res: Response<CacheBody<http_body_util::Empty<Bytes>>> =
                Response::new(CacheBody::full(Bytes::from(body.clone())));
            let res = r.apply(res);
            let status = res.status().as_u16();
            let cr = res.headers().get(header::CONTENT_RANGE).map(|v| v.to_str().unwrap().to_owned());
            let cl = res.headers().get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap().to_owned());
            let got = res.into_body().full_bytes().unwrap();
            match model(first, last, len) {
                None => {
                    prop_assert_eq!(status, 200, "{}", spec);
                    prop_assert_eq!(&got[..], &body[..]);
                }
                Some(None) => {
                    prop_assert_eq!(status, 416, "{}", spec);
                    prop_assert_eq!(cr, Some(format!("bytes */{len}")));
                    prop_assert!(got.is_empty());
                }
                Some(Some((start, end))) => {
                    prop_assert_eq!(status, 206, "{}", spec);
                    prop_assert_eq!(cr, Some(format!("bytes {start}-{end}/{len}")));
                    prop_assert_eq!(cl, Some((end - start + 1).to_string()));
                    prop_assert_eq!(&got[..], &body[start as usize..=end as usize]);
                }
            }
        }
    }
}
