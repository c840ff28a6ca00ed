//! The `Cache-Status` response header (RFC 9211).

use http::HeaderValue;

/// What the cache did for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served from an entry with this many seconds of freshness left (negative: stale).
    Hit {
        ttl: i64,
        detail: Option<&'static str>,
    },
    /// Answered with the entry another request's fill produced (single-flight or fill lock).
    Collapsed,
    /// Looked up, not found (or unusable); the handler answered.
    Miss {
        stored: bool,
        detail: Option<&'static str>,
    },
    /// The request was not eligible for the cache.
    Bypass(&'static str),
    /// The method is not cached on this route.
    Method,
    /// The store failed or the breaker was open; the handler answered.
    StoreUnavailable,
}

impl Outcome {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Hit { ttl, .. } if *ttl <= 0 => "stale",
            Outcome::Hit { .. } => "hit",
            Outcome::Collapsed => "collapsed",
            Outcome::Miss { .. } => "miss",
            Outcome::Bypass(_) | Outcome::Method => "bypass",
            Outcome::StoreUnavailable => "store_unavailable",
        }
    }

    /// The outcome as recorded in the `cache.requests` metric.
    #[cfg(feature = "metrics")]
    pub(crate) fn served(&self) -> crate::metrics::Served {
        use crate::metrics::Served;
        match self {
            Outcome::Hit {
                ttl,
                detail: Some("stale-if-error"),
            } if *ttl <= 0 => Served::STALE_IF_ERROR,
            Outcome::Hit { ttl, .. } if *ttl <= 0 => Served::STALE_WHILE_REVALIDATE,
            Outcome::Hit { .. } => Served::HIT,
            Outcome::Collapsed => Served::COLLAPSED,
            Outcome::Miss { .. } => Served::MISS,
            Outcome::Bypass(reason) => Served::bypass(reason),
            Outcome::Method => Served::bypass("method"),
            Outcome::StoreUnavailable => Served::STORE_UNAVAILABLE,
        }
    }

    /// The header value for cache `name`.
    pub(crate) fn header(&self, name: &str) -> HeaderValue {
        let v = match self {
            // The hot path (every fresh hit): one allocation, no formatting machinery.
            Outcome::Hit { ttl, detail: None } => {
                let mut v = String::with_capacity(name.len() + 32);
                v.push_str(name);
                v.push_str("; hit; ttl=");
                push_int(&mut v, *ttl);
                v
            }
            Outcome::Hit {
                ttl,
                detail: Some(d),
            } => format!("{name}; hit; ttl={ttl}; detail={d}"),
            Outcome::Collapsed => format!("{name}; fwd=uri-miss; collapsed"),
            Outcome::Miss { stored: true, .. } => format!("{name}; fwd=uri-miss; stored"),
            Outcome::Miss {
                stored: false,
                detail: Some(d),
            } => format!("{name}; fwd=uri-miss; detail={d}"),
            Outcome::Miss { .. } => format!("{name}; fwd=uri-miss"),
            Outcome::Bypass(d) => format!("{name}; fwd=bypass; detail={d}"),
            Outcome::Method => format!("{name}; fwd=method"),
            Outcome::StoreUnavailable => format!("{name}; fwd=miss; detail=store-unavailable"),
        };
        // The name is validated when the layer is built and every other part is ASCII.
        HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static("cache"))
    }
}

/// Appends `n` in decimal (what `write!(v, "{n}")` does, without `fmt`).
fn push_int(v: &mut String, n: i64) {
    if n < 0 {
        v.push('-');
    }
    let mut digits = [0u8; 20];
    let mut m = n.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        v.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc9211_values() {
        let n = "tower-valkey-cache";
        assert_eq!(
            Outcome::Hit {
                ttl: 42,
                detail: None
            }
            .header(n),
            "tower-valkey-cache; hit; ttl=42"
        );
        assert_eq!(
            Outcome::Hit {
                ttl: -3,
                detail: None
            }
            .header(n),
            "tower-valkey-cache; hit; ttl=-3"
        );
        for ttl in [0, 1, 9, 10, 3600, i64::MAX, i64::MIN] {
            assert_eq!(
                Outcome::Hit { ttl, detail: None }.header(n),
                format!("{n}; hit; ttl={ttl}").as_str()
            );
        }
        assert_eq!(
            Outcome::Miss {
                stored: true,
                detail: None
            }
            .header(n),
            "tower-valkey-cache; fwd=uri-miss; stored"
        );
        assert_eq!(
            Outcome::Bypass("authorization").header(n),
            "tower-valkey-cache; fwd=bypass; detail=authorization"
        );
        assert_eq!(
            Outcome::StoreUnavailable.header(n),
            "tower-valkey-cache; fwd=miss; detail=store-unavailable"
        );
    }
}
