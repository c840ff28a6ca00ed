//! Escaping of substituted values and shortening of long keys.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Keys longer than this many bytes are shortened to a prefix plus a hash.
pub const MAX_KEY_LEN: usize = 256;
const KEEP_PREFIX: usize = 200;

/// Escapes a value for use inside a key.
///
/// Bytes outside `[A-Za-z0-9_.-]` become `%XX`, so the result never contains the separator `:`,
/// glob metacharacters (`*`, `?`, `[`, `]`, `\`) or white space, and the mapping is injective: two
/// different values never escape to the same text.
///
/// ```
/// use tower_valkey_cache::key::escape;
/// assert_eq!(escape("42"), "42");
/// assert_eq!(escape("a:b*"), "a%3Ab%2A");
/// ```
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value, false);
    out
}

/// Escapes `value`'s bytes into `out` (bytes, not text: header values that are not UTF-8 stay
/// distinct).
pub(crate) fn escape_into(out: &mut String, value: impl AsRef<[u8]>, keep_slash: bool) {
    for &b in value.as_ref() {
        if b.is_ascii_alphanumeric()
            || b == b'_'
            || b == b'.'
            || b == b'-'
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Escapes a value for use inside a glob pattern (`SCAN MATCH`), so it matches only itself.
pub fn glob_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Hex of the first 16 bytes of SHA-256: stable across processes, versions and restarts.
pub(crate) fn short_hash(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Shortens keys over [`MAX_KEY_LEN`] bytes to a 200-byte prefix, `#` and a 128-bit hash.
pub(crate) fn bound_length(key: String) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut cut = KEEP_PREFIX;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 33);
    out.push_str(&key[..cut]);
    out.push('#');
    out.push_str(&short_hash(key.as_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_separators_and_globs() {
        assert_eq!(escape("*"), "%2A");
        assert_eq!(escape("[a-z]"), "%5Ba-z%5D");
        assert_eq!(escape("\\?"), "%5C%3F");
        assert_eq!(escape("%2A"), "%252A");
        assert_eq!(escape("é"), "%C3%A9");
    }

    #[test]
    fn long_keys_are_bounded_and_distinct() {
        let a = bound_length("x".repeat(300));
        let b = bound_length(format!("{}y", "x".repeat(299)));
        assert!(a.len() <= MAX_KEY_LEN && b.len() <= MAX_KEY_LEN);
        assert_ne!(a, b);
        assert_eq!(bound_length("short".into()), "short");
    }

    #[test]
    fn glob_escape_escapes_metacharacters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
