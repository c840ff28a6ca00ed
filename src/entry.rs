//! The stored form of a cache entry: one versioned binary encoding used by every store (public
//! with feature `unstable` only: the format is outside semver).
//!
//! An [`Entry`] is what [`CacheLayer`](crate::CacheLayer) stores for a response and what
//! [`Cache::get_or_set`](crate::Cache) stores for a value: a status, end-to-end headers, a body and
//! three instants (stored at, fresh until, stale until). Stores never look inside: they keep the
//! encoded bytes and expire them at `stale_until`.
//!
//! # Format (version 3)
//!
//! ```text
//! "TVC" 0x03                 magic and version
//! u8                         flags (reserved, 0)
//! u64 stored_at_ms           Unix milliseconds, big endian
//! u64 fresh_until_ms
//! u64 stale_until_ms
//! u32 compute_ms             how long the fill took (for early refresh)
//! u16 status                 0 for function-cache values
//! u16 header count, then per header: u16 name length, name, u16 value length, value
//! u32 body length, body
//! ```
//!
//! Compressed or encrypted entries (features `compression`, `encryption`) are stored in an
//! envelope around this encoding (version byte 2): see [`seal`](crate::seal).
//!
//! Version 1 is the same layout, written by releases whose keys had another meaning (values
//! escaped less, queries keyed raw, see the CHANGELOG): an entry found under a key of this
//! version may have been stored for another request. Reading one is
//! [outdated](DecodeError::is_outdated), a plain miss (not counted or logged as corrupt), and
//! the next fill overwrites it. Version 3 (not 2) so that the first byte after the magic also
//! tells a plain entry from a sealed envelope.
//!
//! Anything that does not decode (foreign data, truncation, another version, trailing bytes) is a
//! [`DecodeError`]; callers treat it as a miss and overwrite the value.

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 3] = b"TVC";
const VERSION: u8 = 3;
/// Entries of this version were written under keys that meant something else: misses.
const OUTDATED_VERSION: u8 = 1;
const FIXED_LEN: usize = 3 + 1 + 1 + 8 * 3 + 4 + 2 + 2;

/// A decoded cache entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// HTTP status of the stored response (0 for function-cache values).
    pub status: u16,
    /// End-to-end response headers, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body, or the serialized value.
    pub body: Bytes,
    /// When the entry was stored, in Unix milliseconds.
    pub stored_at_ms: u64,
    /// Until when the entry is fresh, in Unix milliseconds.
    pub fresh_until_ms: u64,
    /// Until when the entry may be served stale, in Unix milliseconds (`>= fresh_until_ms`).
    pub stale_until_ms: u64,
    /// How long producing the value took, in milliseconds (probabilistic early refresh uses it).
    pub compute_ms: u32,
}

/// How fresh an entry is at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Fresh, with this much time left.
    Fresh(Duration),
    /// Past its freshness lifetime by this much, but inside its stale window.
    Stale(Duration),
    /// Past its stale window: must not be served.
    Expired,
}

/// Why a stored value could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(&'static str);

const OUTDATED: &str = "entry written by an older version (keys changed meaning)";

impl DecodeError {
    pub(crate) fn new(reason: &'static str) -> Self {
        DecodeError(reason)
    }

    /// A well-formed entry that its reader could not have written (for example a status the
    /// route does not cache, or a `Set-Cookie` header): treated like an undecodable value.
    pub fn foreign() -> Self {
        DecodeError("entry the route could not have stored")
    }

    /// Whether the value is an entry written by an older version of the crate, whose keys meant
    /// something else: a plain miss, neither corrupt nor foreign (callers do not count it in
    /// `decode_failures` nor log it), overwritten by the next fill.
    pub fn is_outdated(&self) -> bool {
        self.0 == OUTDATED
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cache entry does not decode: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// The current wall-clock time in Unix milliseconds (shared by every process that shares a store).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and headers that must never be replayed from a cache.
fn never_stored(name: &HeaderName) -> bool {
    name == header::SET_COOKIE
        || name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::AGE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
        || name.as_str() == "cache-status"
}

impl Entry {
    /// An entry for an HTTP response, keeping only the headers a cache may replay.
    pub fn from_response(
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        now_ms: u64,
        fresh_for: Duration,
        stale_for: Duration,
    ) -> Self {
        let headers = headers
            .iter()
            .filter(|(name, _)| !never_stored(name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        Self::new(status.as_u16(), headers, body, now_ms, fresh_for, stale_for)
    }

    /// An entry from its parts; `stale_for` extends past the freshness lifetime.
    pub fn new(
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        now_ms: u64,
        fresh_for: Duration,
        stale_for: Duration,
    ) -> Self {
        let fresh_until_ms = now_ms.saturating_add(fresh_for.as_millis() as u64);
        Self {
            status,
            headers,
            body,
            stored_at_ms: now_ms,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(stale_for.as_millis() as u64),
            compute_ms: 0,
        }
    }

    /// Records how long producing the value took.
    pub fn with_compute_time(mut self, took: Duration) -> Self {
        self.compute_ms = took.as_millis().min(u32::MAX as u128) as u32;
        self
    }

    /// Freshness at `now_ms`.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        if now_ms < self.fresh_until_ms {
            Freshness::Fresh(Duration::from_millis(self.fresh_until_ms - now_ms))
        } else if now_ms < self.stale_until_ms {
            Freshness::Stale(Duration::from_millis(now_ms - self.fresh_until_ms))
        } else {
            Freshness::Expired
        }
    }

    /// How long the store should keep the value from `now_ms` (until the end of the stale window).
    pub fn store_ttl(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.stale_until_ms.saturating_sub(now_ms))
    }

    /// The age of the entry at `now_ms`.
    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms))
    }

    /// Encodes the entry. Headers or bodies too large for the format are an error, not truncated.
    pub fn encode(&self) -> Result<Bytes, DecodeError> {
        let header_bytes: usize = self
            .headers
            .iter()
            .map(|(n, v)| 4 + n.as_str().len() + v.len())
            .sum();
        if self.headers.len() > u16::MAX as usize {
            return Err(DecodeError("too many headers"));
        }
        if self.body.len() > u32::MAX as usize {
            return Err(DecodeError("body too large"));
        }
        let mut out = BytesMut::with_capacity(FIXED_LEN + header_bytes + 4 + self.body.len());
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(0);
        out.put_u64(self.stored_at_ms);
        out.put_u64(self.fresh_until_ms);
        out.put_u64(self.stale_until_ms);
        out.put_u32(self.compute_ms);
        out.put_u16(self.status);
        out.put_u16(self.headers.len() as u16);
        for (name, value) in &self.headers {
            let (n, v) = (name.as_str().as_bytes(), value.as_bytes());
            if n.len() > u16::MAX as usize || v.len() > u16::MAX as usize {
                return Err(DecodeError("header too large"));
            }
            out.put_u16(n.len() as u16);
            out.put_slice(n);
            out.put_u16(v.len() as u16);
            out.put_slice(v);
        }
        out.put_u32(self.body.len() as u32);
        out.put_slice(&self.body);
        Ok(out.freeze())
    }

    /// The status of an encoded entry without decoding the rest (`None` if `raw` is not an
    /// entry of this version). Lets a reader tell a status-0 value (a function-cache value or a
    /// variant marker) from a response cheaply.
    pub(crate) fn peek_status(raw: &[u8]) -> Option<u16> {
        const AT: usize = 3 + 1 + 1 + 8 * 3 + 4;
        (raw.len() >= FIXED_LEN && &raw[..3] == MAGIC && raw[3] == VERSION)
            .then(|| u16::from_be_bytes([raw[AT], raw[AT + 1]]))
    }

    /// Decodes an entry; the body shares `raw`'s memory (no copy).
    pub fn decode(raw: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: raw, pos: 0 };
        if r.take(3)? != MAGIC {
            return Err(DecodeError("not an entry (bad magic)"));
        }
        match r.u8()? {
            VERSION => {}
            OUTDATED_VERSION => return Err(DecodeError(OUTDATED)),
            _ => return Err(DecodeError("unsupported version")),
        }
        let _flags = r.u8()?;
        let stored_at_ms = r.u64()?;
        let fresh_until_ms = r.u64()?;
        let stale_until_ms = r.u64()?;
        let compute_ms = r.u32()?;
        if fresh_until_ms < stored_at_ms || stale_until_ms < fresh_until_ms {
            return Err(DecodeError("inconsistent times"));
        }
        let status = r.u16()?;
        if status != 0 && !(100..1000).contains(&status) {
            return Err(DecodeError("invalid status"));
        }
        let count = r.u16()? as usize;
        let mut headers = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let n = r.u16()? as usize;
            let name = HeaderName::from_bytes(r.take(n)?)
                .map_err(|_| DecodeError("invalid header name"))?;
            let n = r.u16()? as usize;
            // A slice of `raw` (no copy, no allocation per header per hit).
            let at = r.pos;
            r.take(n)?;
            let value = HeaderValue::from_maybe_shared(raw.slice(at..at + n))
                .map_err(|_| DecodeError("invalid header value"))?;
            headers.push((name, value));
        }
        let len = r.u32()? as usize;
        let start = r.pos;
        r.take(len)?;
        if r.pos != raw.len() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self {
            status,
            headers,
            body: raw.slice(start..start + len),
            stored_at_ms,
            fresh_until_ms,
            stale_until_ms,
            compute_ms,
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.append("x-many", HeaderValue::from_static("1"));
        h.append("x-many", HeaderValue::from_static("2"));
        Entry::from_response(
            StatusCode::OK,
            &h,
            Bytes::from_static(b"{\"a\":1}"),
            1_000,
            Duration::from_secs(60),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn round_trips_and_drops_hop_by_hop_and_set_cookie() {
        let e = sample();
        let d = Entry::decode(&e.encode().unwrap()).unwrap();
        assert_eq!(d, e);
        let names: Vec<_> = d.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-many", "x-many"]);
        assert_eq!(d.fresh_until_ms, 61_000);
        assert_eq!(d.stale_until_ms, 91_000);
    }

    #[test]
    fn freshness_windows() {
        let e = sample();
        assert_eq!(
            e.freshness(1_000),
            Freshness::Fresh(Duration::from_secs(60))
        );
        assert_eq!(
            e.freshness(62_000),
            Freshness::Stale(Duration::from_secs(1))
        );
        assert_eq!(e.freshness(91_000), Freshness::Expired);
    }

    #[test]
    fn every_truncation_and_foreign_value_is_an_error() {
        let raw = sample().encode().unwrap();
        for n in 0..raw.len() {
            assert!(
                Entry::decode(&raw.slice(..n)).is_err(),
                "prefix {n} decoded"
            );
        }
        let mut longer = raw.to_vec();
        longer.push(0);
        assert!(Entry::decode(&Bytes::from(longer)).is_err());
        assert!(Entry::decode(&Bytes::from_static(b"{\"json\":true}")).is_err());
        let mut v2 = raw.to_vec();
        v2[3] = 2;
        assert_eq!(
            Entry::decode(&Bytes::from(v2)),
            Err(DecodeError("unsupported version"))
        );
    }

    /// An entry of version 1 (keys of another meaning) is outdated: a miss, not corruption;
    /// nothing else is outdated.
    #[test]
    fn older_versions_are_outdated_not_corrupt() {
        let raw = sample().encode().unwrap();
        assert_eq!(&raw[..4], b"TVC\x03");
        let mut v1 = raw.to_vec();
        v1[3] = 1;
        assert_eq!(Entry::peek_status(&raw), Some(200));
        assert_eq!(Entry::peek_status(&v1), None);
        let e = Entry::decode(&Bytes::from(v1)).unwrap_err();
        assert!(e.is_outdated(), "{e}");
        for version in [0u8, 2, 4, 255] {
            let mut v = raw.to_vec();
            v[3] = version;
            let e = Entry::decode(&Bytes::from(v)).unwrap_err();
            assert!(!e.is_outdated(), "version {version}");
        }
        assert!(!DecodeError::foreign().is_outdated());
        assert!(!Entry::decode(&raw.slice(..10)).unwrap_err().is_outdated());
    }
}
