//! Entity tags (RFC 9110 §8.8.3) and the lists of `If-None-Match` (§13.1.2).

use super::{skip_ows, trim_ows, Unparsable};

/// An entity tag: `[ W/ ] DQUOTE *etagc DQUOTE`, `etagc = %x21 / %x23-7E / obs-text`. The
/// opaque part (without quotes) may hold a comma: `"a,b"` is one tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntityTag<'a> {
    /// `W/`: a weak validator.
    pub(crate) weak: bool,
    /// The characters between the quotes.
    pub(crate) opaque: &'a [u8],
}

fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7E).contains(&b) || b >= 0x80
}

/// The entity tag starting at `s[i]`, and the index after it.
fn scan(s: &[u8], i: usize) -> Option<(EntityTag<'_>, usize)> {
    let (weak, open) = match s.get(i..i + 2) {
        Some(b"W/") => (true, i + 2),
        _ => (false, i),
    };
    if s.get(open) != Some(&b'"') {
        return None;
    }
    let start = open + 1;
    let len = s.get(start..)?.iter().take_while(|&&b| is_etagc(b)).count();
    let close = start + len;
    if s.get(close) != Some(&b'"') {
        return None;
    }
    Some((
        EntityTag {
            weak,
            opaque: &s[start..close],
        },
        close + 1,
    ))
}

impl<'a> EntityTag<'a> {
    /// A whole field value (`ETag`) as one entity tag, surrounding `OWS` allowed.
    pub(crate) fn parse(value: &'a [u8]) -> Option<Self> {
        let v = trim_ows(value);
        match scan(v, 0) {
            Some((tag, end)) if end == v.len() => Some(tag),
            _ => None,
        }
    }

    /// Weak comparison (RFC 9110 §8.8.3.2): the opaque parts match, weak or not.
    pub(crate) fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// An `If-None-Match` field: `"*" / #entity-tag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntityTagList<'a> {
    /// `*`: any current representation.
    Any,
    /// The listed tags (possibly none: the field may be an empty list).
    Tags(Vec<EntityTag<'a>>),
}

impl<'a> EntityTagList<'a> {
    /// Every line of the field as one list. `*` must be the only member; anything else that is
    /// not an entity tag between commas (an unquoted tag, a tag split by a stray quote, a `*`
    /// among tags): `Unparsable`.
    pub(crate) fn parse_lines(
        lines: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, Unparsable> {
        let mut tags = Vec::new();
        let mut star = false;
        let mut members = 0usize;
        for s in lines {
            let mut i = 0;
            loop {
                i = skip_ows(s, i);
                if i == s.len() {
                    break;
                }
                if s[i] == b',' {
                    i += 1;
                    continue;
                }
                members += 1;
                if s[i] == b'*' {
                    star = true;
                    i += 1;
                } else {
                    let (tag, end) = scan(s, i).ok_or(Unparsable)?;
                    tags.push(tag);
                    i = end;
                }
                i = skip_ows(s, i);
                match s.get(i) {
                    None => break,
                    Some(b',') => i += 1,
                    Some(_) => return Err(Unparsable),
                }
            }
        }
        match (star, members) {
            (true, 1) => Ok(Self::Any),
            (true, _) => Err(Unparsable),
            (false, _) => Ok(Self::Tags(tags)),
        }
    }

    /// Whether the list matches a representation with entity tag `etag` (weak comparison, as
    /// `If-None-Match` requires): `*` matches any representation, a list matches when one of
    /// its tags weakly equals `etag`.
    pub(crate) fn matches_weak(&self, etag: Option<&EntityTag<'_>>) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => etag.is_some_and(|e| tags.iter().any(|t| t.weak_eq(e))),
        }
    }
}
