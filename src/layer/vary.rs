//! `Vary`: responses that differ by request headers get one entry per variant.
//!
//! The vary headers of a resource are learned from its responses, not configured. The route's
//! key `K` then holds a small *variant marker* instead of a response: the normalised list of
//! header names and a random generation. Each variant lives at
//! `K#vary:GENERATION:HASH`, where the hash covers the normalised values of those headers in the
//! request. A lookup that finds a marker reads the variant key (a second round trip).
//!
//! Invalidating `K` (by key, pattern or tag: the marker carries the route's tags) removes the
//! marker, so every variant of the old generation becomes unreachable at once; the next fill
//! writes a marker with a new generation, and the orphaned variants expire by their TTL. The
//! marker is written through the same guarded write as any fill, so a fill that read `K` before
//! an invalidation cannot put back the old generation.

use crate::entry::{now_ms, Entry};
use crate::headers::{list_elements, trim_ows, Quotes, VaryField};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::time::Duration;

/// The header of a marker entry naming the vary headers (never sent to clients: markers are
/// never served).
const MARKER_HEADER: &str = "x-tvc-vary";

/// What a response's `Vary` says about storing it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Vary {
    /// No `Vary` (or an empty one): one entry for every request.
    None,
    /// One entry per combination of these request headers (lower-case, sorted, deduplicated).
    Names(Vec<String>),
    /// `Vary: *` or a field that is not a list of header names: never stored.
    Unstorable,
}

impl Vary {
    /// Reads every `Vary` field of `headers` (parsed by [`crate::headers::vary`]): `*` or a
    /// field that is not a list of header names is never stored.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        match crate::headers::vary(headers) {
            Ok(VaryField::Names(names)) if names.is_empty() => Vary::None,
            Ok(VaryField::Names(names)) => Vary::Names(names),
            Ok(VaryField::Star) | Err(_) => Vary::Unstorable,
        }
    }

    /// The header names, if any.
    pub(crate) fn names(&self) -> Option<&[String]> {
        match self {
            Vary::Names(n) => Some(n),
            _ => None,
        }
    }
}

/// The content codings a route serves by default: what `Accept-Encoding` is reduced to.
pub(crate) const DEFAULT_ENCODINGS: [&str; 4] = ["br", "deflate", "gzip", "zstd"];

/// A variant marker: the vary headers of the resource at a key, and the generation its variants
/// are stored under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) names: Vec<String>,
    pub(crate) generation: u64,
    /// The invalidation clock read by the fill that created this generation. Rewriting the
    /// marker of this generation is guarded by it (not by the rewriting fill's own, later,
    /// clock): a fill that read the marker while a pattern invalidation was still scanning (a
    /// pattern is not removed atomically) must not put the generation back, or the other
    /// variants of that generation, older than the invalidation, would be reachable again.
    pub(crate) since: u64,
}

impl Marker {
    /// A marker with a new random generation, created by a fill that read clock `since`.
    pub(crate) fn new(names: Vec<String>, since: u64) -> Self {
        Self {
            names,
            generation: fastrand::u64(..),
            since,
        }
    }

    /// The marker stored at `raw`, if `raw` is one (a cheap status check first, so responses are
    /// not decoded twice).
    pub(crate) fn decode(raw: &Bytes) -> Option<Self> {
        if Entry::peek_status(raw)? != 0 {
            return None;
        }
        let e = Entry::decode(raw).ok()?;
        let (name, value) = e.headers.first()?;
        if name.as_str() != MARKER_HEADER {
            return None;
        }
        let names = value
            .to_str()
            .ok()?
            .split(',')
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let (generation, since) = std::str::from_utf8(&e.body).ok()?.split_once(':')?;
        let generation = u64::from_str_radix(generation, 16).ok()?;
        let since = since.parse().ok()?;
        (!names.is_empty()).then_some(Self {
            names,
            generation,
            since,
        })
    }

    /// The marker as an entry (status 0, so no route ever replays it) living for `ttl`.
    pub(crate) fn entry(&self, ttl: Duration) -> Option<Entry> {
        let value = HeaderValue::from_str(&self.names.join(",")).ok()?;
        Some(Entry::new(
            0,
            vec![(HeaderName::from_static(MARKER_HEADER), value)],
            Bytes::from(format!("{:016x}:{}", self.generation, self.since)),
            now_ms(),
            ttl,
            Duration::ZERO,
        ))
    }

    /// The key of the variant of `base` that `req` selects.
    pub(crate) fn variant_key(&self, base: &str, req: &HeaderMap, encodings: &[String]) -> String {
        let mut h = Sha256::new();
        let mut buf = Vec::with_capacity(64);
        for name in &self.names {
            buf.clear();
            normalise(name, req, encodings, &mut buf);
            h.update((name.len() as u32).to_be_bytes());
            h.update(name.as_bytes());
            h.update((buf.len() as u32).to_be_bytes());
            h.update(&buf);
        }
        let digest = h.finalize();
        let mut suffix = String::with_capacity(6 + 17 + 32);
        let _ = write!(suffix, "#vary:{:016x}:", self.generation);
        for b in &digest[..16] {
            let _ = write!(suffix, "{b:02x}");
        }
        // Bounded like every key: a long base plus the suffix is shortened as a whole.
        crate::key::with_suffix(base.to_owned(), &suffix)
    }
}

/// Appends the normalised value of request header `name` to `out`: `0` when absent (distinct from
/// an empty header, `1` followed by nothing); otherwise `1` and the fields' comma-separated
/// elements ([`list_elements`]: commas inside quoted strings do not separate), each trimmed with
/// runs of white space outside quoted strings collapsed to one space (quoted strings are kept
/// byte for byte), joined by `,`. Bytes are compared as they are: no line is dropped for holding
/// bytes that are not ASCII. `Accept-Encoding` is reduced to the accepted codings among
/// `encodings` (sorted), or `identity`.
pub(crate) fn normalise(name: &str, req: &HeaderMap, encodings: &[String], out: &mut Vec<u8>) {
    let mut values = req.get_all(name).iter().peekable();
    if values.peek().is_none() {
        out.push(b'0');
        return;
    }
    out.push(b'1');
    if name == "accept-encoding" {
        accepted_encodings(values, encodings, out);
        return;
    }
    let mut first = true;
    for v in values {
        for element in list_elements(v.as_bytes()) {
            if !first {
                out.push(b',');
            }
            first = false;
            collapse_white_space(element, out);
        }
    }
}

/// Appends `element` (already trimmed) with each run of white space outside quoted strings
/// replaced by one space.
fn collapse_white_space(element: &[u8], out: &mut Vec<u8>) {
    let (mut quotes, mut space) = (Quotes::default(), false);
    for &b in element {
        if !quotes.open() {
            if b.is_ascii_whitespace() {
                space = true;
                continue;
            }
            if space {
                out.push(b' ');
                space = false;
            }
        }
        quotes.feed(b);
        out.push(b);
    }
}

/// The codings among `served` (sorted) that the `Accept-Encoding` fields accept: `q=0` refuses a
/// coding (as does a `q` that is not a number), `*` stands for every served coding not named,
/// `x-gzip` is `gzip`. `identity` if none. Read as bytes: an element that is not ASCII is a
/// coding this cache does not serve, and the other elements of its line still count.
fn accepted_encodings<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    served: &[String],
    out: &mut Vec<u8>,
) {
    // Per served coding: Some(accepted) when named explicitly.
    let mut named: Vec<Option<bool>> = vec![None; served.len()];
    let mut star = false;
    for v in values {
        for element in list_elements(v.as_bytes()) {
            let mut params = element.split(|&b| b == b';');
            let coding = trim_ows(params.next().unwrap_or_default()).to_ascii_lowercase();
            let coding: &[u8] = if coding == b"x-gzip" {
                b"gzip"
            } else {
                &coding
            };
            let q = params
                .filter_map(|p| {
                    let eq = p.iter().position(|&b| b == b'=')?;
                    Some((trim_ows(&p[..eq]), trim_ows(&p[eq + 1..])))
                })
                .find(|(k, _)| k.eq_ignore_ascii_case(b"q"))
                .map_or(1.0, |(_, v)| {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.parse::<f32>().ok())
                        .unwrap_or(0.0)
                });
            let accepted = q > 0.0;
            if coding == b"*" {
                star = accepted;
            } else if let Some(i) = served.iter().position(|s| s.as_bytes() == coding) {
                named[i] = Some(accepted);
            }
        }
    }
    let mut any = false;
    for (s, n) in served.iter().zip(named) {
        if n.unwrap_or(star) {
            if any {
                out.push(b',');
            }
            any = true;
            out.extend_from_slice(s.as_bytes());
        }
    }
    if !any {
        out.extend_from_slice(b"identity");
    }
}

/// `encodings` lower-cased, sorted and deduplicated.
pub(crate) fn served_encodings<I, T>(encodings: I) -> Vec<String>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    let mut v: Vec<String> = encodings
        .into_iter()
        .map(|e| e.as_ref().trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn norm(name: &str, pairs: &[(&str, &str)]) -> String {
        let mut out = Vec::new();
        normalise(
            name,
            &headers(pairs),
            &served_encodings(DEFAULT_ENCODINGS),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn parses_vary_lists() {
        assert_eq!(Vary::of(&headers(&[])), Vary::None);
        assert_eq!(Vary::of(&headers(&[("vary", "")])), Vary::None);
        assert_eq!(
            Vary::of(&headers(&[
                ("vary", "Accept-Language, accept-encoding"),
                ("vary", "ACCEPT-LANGUAGE")
            ])),
            Vary::Names(vec!["accept-encoding".into(), "accept-language".into()])
        );
        assert_eq!(
            Vary::of(&headers(&[("vary", "accept, *")])),
            Vary::Unstorable
        );
        assert_eq!(Vary::of(&headers(&[("vary", "a b")])), Vary::Unstorable);
        assert_eq!(Vary::of(&headers(&[("vary", " , ,")])), Vary::None);
        let mut h = HeaderMap::new();
        h.append(
            "vary",
            HeaderValue::from_bytes(b"accept, caf\xc3\xa9").unwrap(),
        );
        assert_eq!(Vary::of(&h), Vary::Unstorable);
    }

    #[test]
    fn normalises_whitespace_fields_and_absence() {
        assert_eq!(norm("accept-language", &[]), "0");
        assert_eq!(norm("accept-language", &[("accept-language", "")]), "1");
        assert_eq!(
            norm(
                "accept-language",
                &[("accept-language", "  en-GB ,  fr;q=0.5 ")]
            ),
            "1en-GB,fr;q=0.5"
        );
        assert_eq!(
            norm(
                "accept-language",
                &[
                    ("accept-language", "en-GB"),
                    ("accept-language", "fr;q=0.5")
                ]
            ),
            "1en-GB,fr;q=0.5"
        );
        assert_eq!(norm("x-a", &[("x-a", "a \t  b")]), "1a b");
        // Quoted strings are kept byte for byte, commas inside them do not separate.
        assert_eq!(norm("x-a", &[("x-a", "\"a  b\"")]), "1\"a  b\"");
        assert_ne!(
            norm("x-a", &[("x-a", "\"a  b\"")]),
            norm("x-a", &[("x-a", "\"a b\"")])
        );
        assert_eq!(
            norm("x-a", &[("x-a", " x=\"a, b\" ,  y ")]),
            "1x=\"a, b\",y"
        );
    }

    #[test]
    fn non_ascii_values_are_distinct_variants() {
        let raw = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.append("x-a", HeaderValue::from_bytes(v).unwrap());
            let mut out = Vec::new();
            normalise("x-a", &h, &[], &mut out);
            out
        };
        assert_ne!(raw(b"caf\xc3\xa9"), raw(b"caf\xc3\xa8"));
        assert_ne!(raw(b"\xff"), raw(b""));
        assert_eq!(raw(b"\xff  a"), b"1\xff a");
    }

    #[test]
    fn reduces_accept_encoding_to_served_codings() {
        let ae = |v: &str| norm("accept-encoding", &[("accept-encoding", v)]);
        assert_eq!(ae("gzip, deflate, br"), "1br,deflate,gzip");
        assert_eq!(ae("br;q=1, GZIP, deflate;q=0.1"), "1br,deflate,gzip");
        assert_eq!(ae("gzip;q=0, br"), "1br");
        assert_eq!(ae("identity"), "1identity");
        assert_eq!(ae("compress, x-gzip"), "1gzip");
        assert_eq!(ae("*"), "1br,deflate,gzip,zstd");
        assert_eq!(ae("*, zstd;q=0"), "1br,deflate,gzip");
        assert_eq!(ae(""), "1identity");
        // A line with a byte that is not ASCII is not dropped: its other codings still count.
        let mut h = HeaderMap::new();
        h.append(
            "accept-encoding",
            HeaderValue::from_bytes(b"gzip, caf\xc3\xa9").unwrap(),
        );
        let mut out = Vec::new();
        normalise(
            "accept-encoding",
            &h,
            &served_encodings(DEFAULT_ENCODINGS),
            &mut out,
        );
        assert_eq!(out, b"1gzip");
        assert_eq!(norm("accept-encoding", &[]), "0");
    }

    #[test]
    fn marker_round_trips_and_keys_variants() {
        let m = Marker::new(vec!["accept-encoding".into(), "accept-language".into()], 7);
        let raw = m.entry(Duration::from_secs(60)).unwrap().encode().unwrap();
        assert_eq!(Marker::decode(&raw), Some(m.clone()));
        let enc = served_encodings(DEFAULT_ENCODINGS);
        let en = m.variant_key("k", &headers(&[("accept-language", "en")]), &enc);
        let fr = m.variant_key("k", &headers(&[("accept-language", "fr")]), &enc);
        assert_ne!(en, fr);
        assert!(en.starts_with("k#vary:"));
        // Bounded like every key, and still one key per variant.
        let long = "k".repeat(crate::key::MAX_KEY_LEN);
        let en_long = m.variant_key(&long, &headers(&[("accept-language", "en")]), &enc);
        let fr_long = m.variant_key(&long, &headers(&[("accept-language", "fr")]), &enc);
        assert!(
            en_long.len() <= crate::key::MAX_KEY_LEN,
            "{}",
            en_long.len()
        );
        assert_ne!(en_long, fr_long);
        // Equivalent Accept-Encoding fields share a variant.
        let a = m.variant_key(
            "k",
            &headers(&[("accept-encoding", "gzip, deflate, br")]),
            &enc,
        );
        let b = m.variant_key(
            "k",
            &headers(&[("accept-encoding", "deflate;q=0.5, br;q=1, gzip")]),
            &enc,
        );
        assert_eq!(a, b);
        // A plain response entry is not a marker.
        let plain = Entry::new(200, vec![], Bytes::new(), 0, Duration::ZERO, Duration::ZERO);
        assert_eq!(Marker::decode(&plain.encode().unwrap()), None);
    }

    /// Sharded namespaces (issue 17) put a key in the shard of the part before its first `#`
    /// (`store::shard::shard_key`): every variant key, with or without a body suffix, must stay
    /// in its base key's shard, or the marker's clock would not guard the variant's fill. Bases
    /// as the layer stores them (bounded), of every length around the shortening limit.
    #[test]
    fn variant_keys_stay_in_the_shard_of_their_base() {
        use crate::key::{bound_length, MAX_KEY_LEN};
        use crate::layer::request_body::body_suffix;
        use crate::store::shard::shard_key;
        let m = Marker::new(vec!["accept-language".into()], u64::MAX);
        let enc = served_encodings(DEFAULT_ENCODINGS);
        let req = headers(&[("accept-language", "en")]);
        // Up to past `MAX_KEY_LEN`: shortened bases, and suffixed keys crossing `KEEP_LEN`.
        for n in 0..(MAX_KEY_LEN + 60) {
            for raw in [
                "k".repeat(n),
                format!("{}é", "k".repeat(n.saturating_sub(2))),
                format!("{}#k", "k".repeat(n.saturating_sub(2))),
                format!("k#{}", "k".repeat(n.saturating_sub(2))),
            ] {
                let base = bound_length(raw);
                let want = shard_key(&base);
                let bodied = crate::key::with_suffix(base.clone(), &body_suffix(None, b"x"));
                assert_eq!(shard_key(&bodied), want, "{n}");
                for b in [&base, &bodied] {
                    let v = m.variant_key(b, &req, &enc);
                    assert!(v.len() <= MAX_KEY_LEN);
                    assert_eq!(shard_key(&v), want, "{n}: {v}");
                }
            }
        }
    }
}
