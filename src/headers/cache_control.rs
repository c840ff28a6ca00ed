//! `Cache-Control` (RFC 9111 §5.2), and the fields that share its grammar (`Pragma`, RFC 9111
//! §5.4; `CDN-Cache-Control`, RFC 9213).

use super::{delta_seconds, quoted_string, skip_ows, token_end, Unparsable};
use http::header::AsHeaderName;
use http::HeaderMap;
use std::time::Duration;

/// One directive: its name (lower-case) and argument, if it has one (a quoted-string argument
/// without its quotes and `\` escapes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Directive {
    name: Box<str>,
    value: Option<Box<[u8]>>,
    quoted: bool,
}

impl Directive {
    /// The name, lower-case.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The argument (unquoted, unescaped), if any.
    pub(crate) fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// Whether the argument was given as a quoted-string.
    pub(crate) fn is_quoted(&self) -> bool {
        self.quoted
    }
}

/// A delta-seconds argument (`max-age=60`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delta {
    /// Seconds (saturating at 2^31, RFC 9111 §1.2.2).
    Secs(u64),
    /// Missing, or not `1*DIGIT` (`max-age`, `max-age=-1`, `max-age=1.5`): RFC 9111 §4.2.1
    /// encourages treating such a response as stale.
    Invalid,
}

impl Delta {
    /// As a duration; an invalid value is zero (stale).
    pub(crate) fn duration(self) -> Duration {
        match self {
            Delta::Secs(s) => Duration::from_secs(s),
            Delta::Invalid => Duration::ZERO,
        }
    }
}

/// The directives of every line of one field, in order, unknown ones included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    directives: Vec<Directive>,
}

impl CacheControl {
    /// Every line of field `name` in `headers` (`Cache-Control`, `Pragma`,
    /// `CDN-Cache-Control`), as one list. No line: an empty list. A line that does not follow
    /// the grammar: `Unparsable`, whatever the other lines say.
    pub(crate) fn of(headers: &HeaderMap, name: impl AsHeaderName) -> Result<Self, Unparsable> {
        let mut lines = headers.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            return Ok(Self::default());
        }
        Self::parse_lines(lines.map(|v| v.as_bytes()))
    }

    /// Parses field lines given as bytes.
    pub(crate) fn parse_lines<'a>(
        lines: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, Unparsable> {
        let mut cc = Self::default();
        for line in lines {
            parse_line(line, &mut cc.directives)?;
        }
        Ok(cc)
    }

    /// Whether there is no directive.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.directives.is_empty()
    }

    /// Every directive, in order.
    pub(crate) fn directives(&self) -> &[Directive] {
        &self.directives
    }

    /// The first directive named `name` (lower-case), with or without an argument.
    pub(crate) fn get(&self, name: &str) -> Option<&Directive> {
        self.directives.iter().find(|d| &*d.name == name)
    }

    /// Whether directive `name` (lower-case) is present, with or without an argument.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The delta-seconds argument of the first directive `name` (RFC 9111 §4.2.1: with several,
    /// the first is used); `None` when absent.
    pub(crate) fn delta(&self, name: &str) -> Option<Delta> {
        let d = self.get(name)?;
        Some(match d.value().and_then(delta_seconds) {
            Some(s) => Delta::Secs(s),
            None => Delta::Invalid,
        })
    }

    /// Whether a response with these directives must not be stored by this cache: `no-store`,
    /// `private` or `no-cache`, with or without an argument (the qualified forms
    /// `private="field"` and `no-cache="field"` are treated as the whole response; this cache
    /// does not store a response with some fields removed).
    pub(crate) fn forbids_storing(&self) -> bool {
        self.directives
            .iter()
            .any(|d| matches!(&*d.name, "no-store" | "private" | "no-cache"))
    }

    /// The freshness lifetime these directives give a shared cache: `s-maxage`, else `max-age`
    /// (invalid values are zero); `None` when neither is present.
    pub(crate) fn shared_max_age(&self) -> Option<Duration> {
        self.delta("s-maxage")
            .or_else(|| self.delta("max-age"))
            .map(Delta::duration)
    }
}

/// Appends the directives of one line to `out` (RFC 9111 §5.2:
/// `#( token [ "=" ( token / quoted-string ) ] )`, RFC 9110 §5.6.1 list rules: `OWS` around
/// commas, empty elements allowed; no white space around `=`).
fn parse_line(s: &[u8], out: &mut Vec<Directive>) -> Result<(), Unparsable> {
    let mut i = 0;
    loop {
        i = skip_ows(s, i);
        if i == s.len() {
            return Ok(());
        }
        if s[i] == b',' {
            i += 1;
            continue;
        }
        let start = i;
        i = token_end(s, i);
        if i == start {
            return Err(Unparsable);
        }
        // Tokens are ASCII.
        let name: Box<str> = String::from_utf8_lossy(&s[start..i])
            .to_ascii_lowercase()
            .into();
        let (mut value, mut quoted) = (None, false);
        if s.get(i) == Some(&b'=') {
            i += 1;
            if s.get(i) == Some(&b'"') {
                let (end, v) = quoted_string(s, i)?;
                (value, quoted, i) = (Some(v.into_boxed_slice()), true, end);
            } else {
                let vstart = i;
                i = token_end(s, i);
                if i == vstart {
                    return Err(Unparsable);
                }
                value = Some(s[vstart..i].into());
            }
        }
        out.push(Directive {
            name,
            value,
            quoted,
        });
        i = skip_ows(s, i);
        match s.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err(Unparsable),
        }
    }
}
