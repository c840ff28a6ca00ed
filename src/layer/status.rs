//! The `Cache-Status` response header (RFC 9211).

use http::HeaderValue;

use crate::outcome::Outcome;

/// The `Cache-Status` member of cache `name` for `outcome`.
pub(crate) fn header(outcome: &Outcome, name: &str) -> HeaderValue {
    let v = match outcome {
        // The hot path (every fresh hit): one allocation, no formatting machinery.
        Outcome::Hit { ttl, detail: None } => {
            // Exactly the length: a `String` with spare capacity becomes a `Bytes` through a
            // second allocation.
            const HIT: &str = "; hit; ttl=";
            let mut v = String::with_capacity(name.len() + HIT.len() + decimal_len(*ttl));
            v.push_str(name);
            v.push_str(HIT);
            push_int(&mut v, *ttl);
            v
        }
        Outcome::Hit {
            ttl,
            detail: Some(d),
        } => format!("{name}; hit; ttl={ttl}; detail={d}"),
        Outcome::Collapsed => format!("{name}; fwd=uri-miss; collapsed"),
        // A stale entry revalidated with a `304` (`revalidate`).
        Outcome::Miss {
            stored,
            detail: Some("revalidated"),
        } => match stored {
            true => format!("{name}; fwd=stale; fwd-status=304; stored"),
            false => format!("{name}; fwd=stale; fwd-status=304"),
        },
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

/// How many bytes `n` takes in decimal (its sign included).
fn decimal_len(n: i64) -> usize {
    let mut m = n.unsigned_abs();
    let mut len = usize::from(n < 0) + 1;
    while m >= 10 {
        m /= 10;
        len += 1;
    }
    len
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
    fn decimal_len_is_what_push_int_writes() {
        let edges = [0, 9, 10, 99, 100, 999_999, 1_000_000, i64::MAX, i64::MIN];
        for n in edges
            .iter()
            .flat_map(|&n| [n, n.saturating_neg(), n.saturating_add(1)])
        {
            let mut v = String::new();
            push_int(&mut v, n);
            assert_eq!(v, n.to_string());
            assert_eq!(decimal_len(n), v.len(), "{n}");
        }
    }

    #[test]
    fn formats_rfc9211_values() {
        let n = "tower-valkey-cache";
        assert_eq!(
            header(
                &Outcome::Hit {
                    ttl: 42,
                    detail: None
                },
                n
            ),
            "tower-valkey-cache; hit; ttl=42"
        );
        assert_eq!(
            header(
                &Outcome::Hit {
                    ttl: -3,
                    detail: None
                },
                n
            ),
            "tower-valkey-cache; hit; ttl=-3"
        );
        for ttl in [0, 1, 9, 10, 3600, i64::MAX, i64::MIN] {
            assert_eq!(
                header(&Outcome::Hit { ttl, detail: None }, n),
                format!("{n}; hit; ttl={ttl}").as_str()
            );
        }
        assert_eq!(
            header(
                &Outcome::Miss {
                    stored: true,
                    detail: None
                },
                n
            ),
            "tower-valkey-cache; fwd=uri-miss; stored"
        );
        assert_eq!(
            header(&Outcome::Bypass("authorization"), n),
            "tower-valkey-cache; fwd=bypass; detail=authorization"
        );
        assert_eq!(
            header(&Outcome::StoreUnavailable, n),
            "tower-valkey-cache; fwd=miss; detail=store-unavailable"
        );
    }
}
