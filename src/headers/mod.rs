//! The request and response header fields that decide caching, parsed from their bytes.
//!
//! This module is the one place that reads a header field to decide whether a request may be
//! answered from the cache, whether a response may be stored, for how long, and whether a
//! conditional request is answered with `304`. Everything else calls it.
//!
//! # Fail closed
//!
//! Every field is parsed from [`HeaderValue::as_bytes`], never through `to_str()`: a field line
//! holding a byte that is not visible ASCII is not silently dropped (which would turn
//! `Cache-Control: private, ext="café"` into "no directive" and store a private response).
//! Bytes `>= 0x80` are `obs-text` and legal inside quoted strings and entity tags (RFC 9110
//! §5.6.4, §8.8.3). A field that does not parse has one outcome, always on the side of caching
//! less:
//!
//! | field | when it does not parse |
//! |---|---|
//! | response `Cache-Control` | the response is not stored (`detail=unparsable-cache-control`) |
//! | request `Cache-Control`, `Pragma` | the request bypasses the cache (`detail=unparsable-cache-control`, `unparsable-pragma`) |
//! | response `Vary` | not stored (`detail=unparsable-vary`) |
//! | `Surrogate-Key`, `Cache-Tag` | not stored (`detail=unparsable-tags`): an entry missing a tag would escape that tag's invalidation |
//! | `If-None-Match` | never matches: no `304`, the full response |
//! | `If-Modified-Since`, `Last-Modified` | ignored (RFC 9110 §13.1.3): no `304` |
//! | `Expires` | already expired (RFC 9111 §5.3) |
//! | `max-age`, `s-maxage` with a value that is not delta-seconds | stale (RFC 9111 §4.2.1) |
//!
//! # What is parsed
//!
//! - [`CacheControl`]: `Cache-Control` (and `Pragma`, `CDN-Cache-Control`, which share its
//!   grammar), RFC 9111 §5.2: `token [ "=" ( token / quoted-string ) ]` elements, `\` escapes in
//!   quoted strings, several field lines as one list, empty list elements, directive names
//!   compared case-insensitively, unknown directives kept (`has`, `get`).
//! - [`EntityTag`] and [`EntityTagList`] (`ETag`, `If-None-Match`): RFC 9110 §8.8.3
//!   (`[ W/ ] DQUOTE *etagc DQUOTE`, so `"a,b"` is one tag), `*`, weak comparison.
//! - [`http_date`] (`Date`, `Expires`, `Last-Modified`, `If-Modified-Since`), [`age`]
//!   (delta-seconds), [`byte_range`] (a single byte range of `Range`), [`vary`] (`*` or field
//!   names), [`take_tags`] (`Surrogate-Key`, `Cache-Tag`), credential presence
//!   ([`CREDENTIALS`]), and appending this cache's member to `Cache-Status` ([`append_member`],
//!   RFC 9211 §2: the member closest to the user is last).
//!
//! `Date`, `Age` and byte ranges are parsed here for the shared-cache mode (freshness from
//! `Expires - Date` and the origin's `Age`, ranges served from a stored `200`); today a request
//! with `Range` bypasses the cache unless the key includes it, and a `206` is stored only under
//! such a key.
//!
//! # Why not the `headers` crate
//!
//! hyperium's `headers` crate has typed `CacheControl`, `IfNoneMatch`, `ETag`, `Expires`,
//! `Date`, `Age` and `Range`. Read against what a cache needs, it is not right here:
//!
//! - `CacheControl` decodes each line through `HeaderValue::to_str()` and skips a line that
//!   fails: the original bug (`private, ext="café"` reads as no directive).
//! - One directive that does not parse (`max-age=lolz`) makes the whole header fail to decode,
//!   and `typed_get` reports a header that fails as `None`, the same as "no header": a
//!   `private` next to it is hidden. A cache needs "present but unparsable" as its own outcome.
//! - Unknown directives are dropped (`KnownDirective::Unknown`), and so are known ones with a
//!   value (`private="set-cookie"`, `no-cache="x"`: qualified forms that still forbid storing
//!   the response as a whole here); names are matched case-sensitively (`No-Store` is unknown).
//! - Quoted strings are split by a quote toggle that ignores `\` escapes, so `ext="a\",
//!   no-store"` is split inside the quoted string.
//! - `IfNoneMatch` splits lines that are not visible ASCII into no tags at all (the list then
//!   silently matches nothing, which is safe, but `*` is recognised only as a whole line).
//!
//! Its HTTP-date handling is the `httpdate` crate, which this crate already uses directly. The
//! rest is a few hundred lines of byte scanning with the fail-closed outcomes above, so the
//! dependency (and `headers-core`, `base64`, `sha1`, `mime` with it) is not taken.

mod cache_control;
#[cfg(any(test, fuzzing))]
pub(crate) mod check;
mod etag;
#[cfg(test)]
mod tests;

pub(crate) use cache_control::{CacheControl, Delta};
pub(crate) use etag::{EntityTag, EntityTagList};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use std::time::SystemTime;

/// A field value that does not follow its grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unparsable;

/// The request headers that carry credentials, with the `Cache-Status` detail of a request that
/// bypasses the cache because of one.
pub(crate) const CREDENTIALS: [(HeaderName, &str); 3] = [
    (header::AUTHORIZATION, "authorization"),
    (header::COOKIE, "cookie"),
    (header::PROXY_AUTHORIZATION, "proxy-authorization"),
];

/// Whether `name` is one of the [`CREDENTIALS`].
pub(crate) fn is_credential(name: &HeaderName) -> bool {
    CREDENTIALS.iter().any(|(n, _)| n == name)
}

/// `tchar` (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `OWS` (RFC 9110 §5.6.3): space or horizontal tab.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The index of the first byte at or after `i` that is not `OWS`.
fn skip_ows(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_ows(s[i]) {
        i += 1;
    }
    i
}

/// The index after the run of `tchar` starting at `i`.
fn token_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_tchar(s[i]) {
        i += 1;
    }
    i
}

/// `s` without leading and trailing `OWS`.
pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let start = skip_ows(s, 0);
    let mut end = s.len();
    while end > start && is_ows(s[end - 1]) {
        end -= 1;
    }
    &s[start..end]
}

/// `1*DIGIT` as a number of seconds, saturating at 2^31 (RFC 9111 §1.2.2: a value too large to
/// represent is taken as 2147483648). `None` if `s` is empty or holds anything but digits.
pub(crate) fn delta_seconds(s: &[u8]) -> Option<u64> {
    const MAX: u64 = 1 << 31;
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in s {
        n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
        if n > MAX {
            return Some(MAX);
        }
    }
    Some(n)
}

/// The quoted-string starting at `s[i]` (a `"`), RFC 9110 §5.6.4: the index after its closing
/// quote and its content with `\` escapes removed. Inside, `qdtext` is HTAB, SP, visible ASCII
/// but `"` and `\`, and `obs-text` (`0x80..=0xFF`); `quoted-pair` is `\` before HTAB, SP, a
/// visible character or `obs-text`. Unterminated, or holding any other byte: `Unparsable`.
fn quoted_string(s: &[u8], i: usize) -> Result<(usize, Vec<u8>), Unparsable> {
    debug_assert_eq!(s.get(i), Some(&b'"'));
    let mut out = Vec::new();
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'"' => return Ok((j + 1, out)),
            b'\\' => {
                let &c = s.get(j + 1).ok_or(Unparsable)?;
                if !(c == b'\t' || c == b' ' || (0x21..=0x7E).contains(&c) || c >= 0x80) {
                    return Err(Unparsable);
                }
                out.push(c);
                j += 2;
            }
            c if c == b'\t' || c == b' ' || (0x21..=0x7E).contains(&c) || c >= 0x80 => {
                out.push(c);
                j += 1;
            }
            _ => return Err(Unparsable),
        }
    }
    Err(Unparsable)
}

/// Where a field's bytes stand with respect to quoted strings (RFC 9110 §5.6.4: `"` opens and
/// closes one, `\` inside escapes the next byte): the one scanner behind every rule that must
/// not look inside them (list separators, white-space folding).
#[derive(Default)]
pub(crate) struct Quotes {
    open: bool,
    escaped: bool,
}

impl Quotes {
    /// Whether the next byte is inside a quoted string (the closing quote counts as inside).
    pub(crate) fn open(&self) -> bool {
        self.open
    }

    /// Moves past byte `b`.
    pub(crate) fn feed(&mut self, b: u8) {
        if !self.open {
            self.open = b == b'"';
        } else if self.escaped {
            self.escaped = false;
        } else if b == b'\\' {
            self.escaped = true;
        } else if b == b'"' {
            self.open = false;
        }
    }
}

/// The elements of a comma-separated list field line (RFC 9110 §5.6.1), `OWS`-trimmed, empty
/// ones skipped. Commas inside quoted strings (with their `\` escapes) do not separate; an
/// unterminated quoted string runs to the end of the line. For fields whose elements are then
/// checked by their own grammar (`Vary`, `Cache-Tag`) or compared as bytes (`Vary` values).
pub(crate) fn list_elements(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = line;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quotes = Quotes::default();
        let mut end = rest.len();
        for (k, &b) in rest.iter().enumerate() {
            if b == b',' && !quotes.open() {
                end = k;
                break;
            }
            quotes.feed(b);
        }
        let element = trim_ows(&rest[..end]);
        rest = rest.get(end + 1..).unwrap_or(&[]);
        if !element.is_empty() {
            return Some(element);
        }
    })
}

/// The only line of field `name`, if it has exactly one (a singleton field given twice is
/// invalid).
pub(crate) fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    lines.next().is_none().then_some(first)
}

/// An HTTP-date (RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms),
/// surrounding `OWS` allowed. `None` if it is not one (including any byte that is not ASCII).
pub(crate) fn http_date(value: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(trim_ows(value)).ok()?;
    httpdate::parse_http_date(s).ok()
}

/// The HTTP-date of singleton field `name` (`Date`, `Expires`, `Last-Modified`,
/// `If-Modified-Since`): `None` when absent, given in several lines, or not a date.
pub(crate) fn date_field(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    single(headers, name).and_then(|v| http_date(v.as_bytes()))
}

/// `Age` (RFC 9111 §5.1) in seconds: the first member of the first line when several are given
/// (as the RFC asks), `None` when absent or not delta-seconds (the field is then ignored).
pub(crate) fn age(headers: &HeaderMap) -> Option<u64> {
    let line = headers.get(header::AGE)?;
    let first = line.as_bytes().split(|&b| b == b',').next()?;
    delta_seconds(trim_ows(first))
}

/// One byte range of a `Range` request (RFC 9110 §14.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// `first-last` (`last` absent: to the end).
    FromTo(u64, Option<u64>),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// The `Range` field as a single byte range (`bytes=0-99`, `bytes=100-`, `bytes=-500`; the unit
/// is case-insensitive). `None` for another unit, several ranges, several field lines or
/// anything that does not parse: a cache that cannot answer it exactly forwards it.
pub(crate) fn byte_range(headers: &HeaderMap) -> Option<ByteRange> {
    let v = trim_ows(single(headers, &header::RANGE)?.as_bytes());
    let (unit, spec) = v.split_at(v.iter().position(|&b| b == b'=')?);
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let spec = trim_ows(&spec[1..]);
    let dash = spec.iter().position(|&b| b == b'-')?;
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    let num = |s: &[u8]| -> Option<u64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if first.is_empty() {
        return num(last).map(ByteRange::Suffix);
    }
    let first = num(first)?;
    if last.is_empty() {
        return Some(ByteRange::FromTo(first, None));
    }
    let last = num(last)?;
    (first <= last).then_some(ByteRange::FromTo(first, Some(last)))
}

/// What a response's `Vary` fields say (RFC 9110 §12.5.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum VaryField {
    /// The request header names, lower-case, sorted, deduplicated (empty: no `Vary`, or only
    /// empty lines).
    Names(Vec<String>),
    /// `*` (alone or in a list): no request can be known to select this response.
    Star,
}

/// Every `Vary` line of `headers` as one list. An element that is neither `*` nor a field name:
/// `Unparsable`.
pub(crate) fn vary(headers: &HeaderMap) -> Result<VaryField, Unparsable> {
    let mut names = Vec::new();
    let mut star = false;
    for line in headers.get_all(header::VARY) {
        for element in list_elements(line.as_bytes()) {
            if element == b"*" {
                star = true;
                continue;
            }
            if token_end(element, 0) != element.len() {
                return Err(Unparsable);
            }
            let name = HeaderName::from_bytes(element).map_err(|_| Unparsable)?;
            names.push(name.as_str().to_owned());
        }
    }
    if star {
        return Ok(VaryField::Star);
    }
    names.sort_unstable();
    names.dedup();
    Ok(VaryField::Names(names))
}

/// Moves the tags of `Surrogate-Key` (separated by white space) and `Cache-Tag` (a comma list)
/// into `tags` (sorted, deduplicated), removing both fields so they never reach the client.
///
/// Tags are visible ASCII. A line holding any other byte is `Unparsable`: the caller must not
/// store the response, since an entry stored without one of its tags would escape that tag's
/// invalidation. The fields are removed in every case.
pub(crate) fn take_tags(headers: &mut HeaderMap, tags: &mut Vec<String>) -> Result<(), Unparsable> {
    let mut result = Ok(());
    for (name, comma) in [("surrogate-key", false), ("cache-tag", true)] {
        let http::header::Entry::Occupied(e) = headers.entry(name) else {
            continue;
        };
        for v in e.remove_entry_mult().1 {
            let line = v.as_bytes();
            if !line
                .iter()
                .all(|&b| (0x21..=0x7E).contains(&b) || is_ows(b))
            {
                result = Err(Unparsable);
                continue;
            }
            // Visible ASCII and OWS only: every piece is UTF-8.
            let mut push = |t: &[u8]| {
                let t = trim_ows(t);
                if !t.is_empty() {
                    tags.push(String::from_utf8_lossy(t).into_owned());
                }
            };
            if comma {
                line.split(|&b| b == b',').for_each(&mut push);
            } else {
                line.split(|&b| is_ows(b)).for_each(&mut push);
            }
        }
    }
    tags.sort_unstable();
    tags.dedup();
    result
}

/// Adds `member` to list field `name` as its last member (RFC 9211 §2: each cache appends its
/// own, so the one closest to the user is last), keeping the members already there (an inner
/// cache's). Existing lines are folded into one line (`inner, ours`), so a client reading only
/// the first line still sees the whole list.
pub(crate) fn append_member(headers: &mut HeaderMap, name: HeaderName, member: HeaderValue) {
    let mut joined: Vec<u8> = Vec::new();
    for line in headers.get_all(&name) {
        let v = trim_ows(line.as_bytes());
        if v.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v);
    }
    if joined.is_empty() {
        headers.insert(name, member);
        return;
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(member.as_bytes());
    // Valid header bytes joined by ", ": always a valid value; fall back to a separate line.
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.append(name, member);
        }
    }
}
