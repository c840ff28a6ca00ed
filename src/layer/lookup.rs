//! Lookups: the entry a request selects (through a variant marker when the resource varies),
//! and what this route accepts as one of its own entries.

use super::config::RouteConfig;
use super::vary::Marker;
use crate::entry::{now_ms, DecodeError, Entry, Freshness};
use crate::store::{Lookup, StoreError};
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};

/// What a lookup through a possible variant marker found.
pub(crate) struct Resolved {
    /// The entry for this request (the variant's, when `base` holds a marker), with the clock of
    /// the first read: the earlier clock guards the fill that follows more strictly.
    pub(crate) lookup: Lookup,
    /// Where the entry lives when it is not at `base`: the variant key (None: at `base`, which
    /// a hit then never copies).
    pub(crate) variant: Option<String>,
    /// The marker found at `base`, if any.
    pub(crate) marker: Option<Marker>,
}

/// Reads `base`; when it holds a variant marker, reads the variant `headers` select (a second
/// round trip). `touch`: through the route's eviction ranking (the request's own lookup; a
/// double-check or a refresh does not count as a use).
pub(crate) async fn resolve(
    cfg: &RouteConfig,
    base: &str,
    headers: &HeaderMap,
    touch: bool,
) -> Result<Resolved, StoreError> {
    let first = cfg.cache.read(base, cfg.eviction.as_deref(), touch).await?;
    match Resolved::plain(first) {
        Ok(r) => Ok(r),
        Err((first, marker)) => variant(cfg, base, headers, touch, first, marker).await,
    }
}

/// [`resolve`] after the read of `base` found `marker`: the variant's read.
pub(crate) async fn variant(
    cfg: &RouteConfig,
    base: &str,
    headers: &HeaderMap,
    touch: bool,
    first: Lookup,
    marker: Marker,
) -> Result<Resolved, StoreError> {
    let key = marker.variant_key(base, headers, &cfg.encodings);
    let second = cfg.cache.read(&key, cfg.eviction.as_deref(), touch).await?;
    Ok(Resolved {
        lookup: Lookup {
            value: second.value,
            clock: first.clock,
        },
        variant: Some(key),
        marker: Some(marker),
    })
}

impl Resolved {
    /// The read of `base` resolved, unless it found a variant marker (then returned with it,
    /// for [`variant`]).
    pub(crate) fn plain(first: Lookup) -> Result<Self, (Lookup, Marker)> {
        match first.value.as_ref().and_then(Marker::decode) {
            None => Ok(Resolved {
                lookup: first,
                variant: None,
                marker: None,
            }),
            Some(marker) => Err((first, marker)),
        }
    }

    /// Where the entry lives, given the `base` it was resolved from.
    pub(crate) fn key<'a>(&'a self, base: &'a str) -> &'a str {
        self.variant.as_deref().unwrap_or(base)
    }
}

/// The entry `headers` select at `base` if the store has it and it is fresh, and where it lives.
pub(crate) async fn fresh_entry(
    cfg: &RouteConfig,
    base: &str,
    headers: &HeaderMap,
) -> Option<(Entry, String)> {
    let r = resolve(cfg, base, headers, false).await.ok()?;
    let entry = decode_for(cfg, r.lookup.value.as_ref()?).ok()?;
    let key = r.variant.unwrap_or_else(|| base.to_owned());
    matches!(entry.freshness(now_ms()), Freshness::Fresh(_)).then_some((entry, key))
}

/// Decodes a stored value for this route: undecodable values and entries this route's own
/// fills cannot produce (a status it does not cache, a header the cache never keeps: written by
/// someone else) are both errors, so a miss, never replayed.
pub(crate) fn decode_for(cfg: &RouteConfig, raw: &Bytes) -> Result<Entry, DecodeError> {
    let e = Entry::decode(raw)?;
    let status_ok = StatusCode::from_u16(e.status).is_ok_and(|s| {
        cfg.statuses.contains(&s) && (s != StatusCode::PARTIAL_CONTENT || cfg.covers_range())
    });
    if status_ok && !e.headers.iter().any(|(n, _)| n == header::SET_COOKIE) {
        Ok(e)
    } else {
        Err(DecodeError::foreign())
    }
}
