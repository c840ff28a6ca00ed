//! Escaping of substituted values, and the length bound of every stored key.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// No key the crate stores is longer than this many bytes (relative to the namespace):
/// rendered keys, the output of custom strategies and keys with the suffixes the layer appends
/// (`#body:`, `#vary:`) alike.
///
/// Keys of up to [`KEEP_LEN`] bytes are stored as they are. Longer ones are shortened to their
/// first (at most) 223 bytes, `#` and a 128-bit SHA-256 hash of the whole key, which is 253 to
/// 256 bytes long: a shortened key is always longer than any key kept as it is, so the two can
/// never be confused, and long keys that differ anywhere stay distinct (up to a collision of
/// the 128-bit hash).
pub const MAX_KEY_LEN: usize = 256;
/// Keys up to this many bytes are stored as they are; longer ones are shortened (see
/// [`MAX_KEY_LEN`]).
pub const KEEP_LEN: usize = MAX_KEY_LEN - 1 - HASH_HEX;
/// Hex digits of the hash of a shortened key.
const HASH_HEX: usize = 32;

/// Escapes a value for use inside a key: every byte outside `[A-Za-z0-9]` becomes `%XX`
/// (upper-case hex).
///
/// The output's alphabet is ASCII letters, digits and `%`: it never holds a separator a
/// template could use (`:`, `_`, `.`, `-`, `/`, `,`, `~`, `#`, ...), a glob metacharacter
/// (`*`, `?`, `[`, `]`, `\`) or white space, and the mapping is injective: two different values
/// never escape to the same text. See the [module docs](crate::key) for how templates use it.
///
/// ```
/// use tower_valkey_cache::key::escape;
/// assert_eq!(escape("42"), "42");
/// assert_eq!(escape("b_c"), "b%5Fc");
/// assert_eq!(escape("a:b*"), "a%3Ab%2A");
/// ```
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value, false);
    out
}

/// Escapes `value`'s bytes into `out` (bytes, not text: header values that are not UTF-8 stay
/// distinct). With `path`, the bytes a path holds unescaped in practice are kept too, for
/// readable keys: `/` and RFC 3986's other unreserved characters `-`, `.`, `_`, `~`
/// ([`in_path`]); still injective, since `%` is always escaped.
pub(crate) fn escape_into(out: &mut String, value: impl AsRef<[u8]>, path: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_ref() {
        if b.is_ascii_alphanumeric() || (path && in_path(b)) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
}

/// The bytes besides letters and digits that an escaped path keeps: `/ - . _ ~`.
pub(crate) fn in_path(b: u8) -> bool {
    matches!(b, b'/' | b'-' | b'.' | b'_' | b'~')
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
    let mut out = String::with_capacity(HASH_HEX);
    for b in &digest[..HASH_HEX / 2] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Keeps keys of up to [`KEEP_LEN`] bytes; shortens longer ones to a prefix of at most
/// `KEEP_LEN` bytes (cut at a character boundary, so 220 to 223), `#` and a 128-bit hash of the
/// whole key: 253 to 256 bytes, never more than [`MAX_KEY_LEN`] and never a length a kept key
/// can have.
///
/// Idempotent: a key that is already shortened is kept, so a key rendered by a template (bounded
/// once) and passed to [`Cache::invalidate_key`](crate::Cache::invalidate_key) (bounded again)
/// names the same entry. Templates and the default key never render `#`, so none of their
/// unshortened keys looks shortened.
pub(crate) fn bound_length(key: String) -> String {
    if key.len() <= KEEP_LEN || is_shortened(&key) {
        return key;
    }
    let mut cut = KEEP_LEN;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 1 + HASH_HEX);
    out.push_str(&key[..cut]);
    out.push('#');
    out.push_str(&short_hash(key.as_bytes()));
    out
}

/// [`bound_length`] of each of `tags`, borrowed as they are when none is long (the hot path
/// allocates nothing). Tags are bounded like keys wherever they reach the store, so a tag
/// rendered by a template, read from a response header or given to a function cache names the
/// same tag set as the same string given to [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
pub(crate) fn bound_all(tags: &[String]) -> std::borrow::Cow<'_, [String]> {
    if tags.iter().all(|t| t.len() <= KEEP_LEN) {
        std::borrow::Cow::Borrowed(tags)
    } else {
        std::borrow::Cow::Owned(tags.iter().cloned().map(bound_length).collect())
    }
}

/// Whether `key` has the form [`bound_length`] gives a long key: 253 to 256 bytes ending in `#`
/// and 32 lower-case hex digits.
fn is_shortened(key: &str) -> bool {
    let b = key.as_bytes();
    (KEEP_LEN - 3 + 1 + HASH_HEX..=MAX_KEY_LEN).contains(&b.len())
        && b[b.len() - HASH_HEX - 1] == b'#'
        && b[b.len() - HASH_HEX..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Appends a suffix the layer adds after a route's key (`#body:HASH`, `#vary:GEN:HASH`) and
/// bounds the whole like every key: the one place a stored key grows after rendering.
///
/// Every suffix starts with `#`, which a template never renders (templates may not contain a
/// literal `#`, and escaped values never do), so a suffixed key cannot equal another request's
/// key of the same template.
pub(crate) fn with_suffix(key: String, suffix: &str) -> String {
    debug_assert!(suffix.starts_with('#'), "{suffix}");
    let mut key = key;
    key.push_str(suffix);
    bound_length(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_but_alphanumerics() {
        assert_eq!(escape("*"), "%2A");
        assert_eq!(escape("[a-z]"), "%5Ba%2Dz%5D");
        assert_eq!(escape("\\?"), "%5C%3F");
        assert_eq!(escape("%2A"), "%252A");
        assert_eq!(escape("é"), "%C3%A9");
        assert_eq!(escape("a_b.c-d~e,f/g#h"), "a%5Fb%2Ec%2Dd%7Ee%2Cf%2Fg%23h");
        assert_eq!(escape("AZaz09"), "AZaz09");
        let mut path = String::new();
        escape_into(&mut path, "/a_b/c-d.e~f:g%h*", true);
        assert_eq!(path, "/a_b/c-d.e~f%3Ag%25h%2A");
    }

    #[test]
    fn long_keys_are_bounded_and_distinct() {
        let a = bound_length("x".repeat(300));
        let b = bound_length(format!("{}y", "x".repeat(299)));
        assert!(a.len() <= MAX_KEY_LEN && b.len() <= MAX_KEY_LEN);
        assert_ne!(a, b);
        assert_eq!(bound_length("short".into()), "short");
        assert_eq!(bound_length("k".repeat(KEEP_LEN)), "k".repeat(KEEP_LEN));
        // One byte more is shortened, to a length no kept key has.
        let s = bound_length("k".repeat(KEEP_LEN + 1));
        assert_eq!(s.len(), MAX_KEY_LEN);
        assert!(s.starts_with(&"k".repeat(KEEP_LEN)));
        // Cut at a character boundary.
        let s = bound_length(format!("{}é{}", "k".repeat(KEEP_LEN - 1), "k".repeat(50)));
        assert_eq!(s.len(), KEEP_LEN - 1 + 1 + HASH_HEX);
    }

    #[test]
    fn bounding_is_idempotent() {
        for n in [0, 10, KEEP_LEN, KEEP_LEN + 1, 300, 1000] {
            let once = bound_length("k".repeat(n));
            assert_eq!(bound_length(once.clone()), once, "{n}");
        }
        let once = bound_length(format!("{}é{}", "k".repeat(KEEP_LEN - 1), "k".repeat(50)));
        assert_eq!(bound_length(once.clone()), once);
    }

    /// Shortened keys are longer than any kept key, so a key that is kept can never equal a
    /// shortened one. (With the old rule, keys up to 256 bytes kept and long ones cut to 200
    /// bytes + `#` + hash, the 233-byte key `long[..200] + "#" + hash(long)` was kept as it was
    /// and named the entry of `long`.)
    #[test]
    fn a_kept_key_never_equals_a_shortened_one() {
        for n in KEEP_LEN + 1..600 {
            for long in [
                "x".repeat(n),
                format!("{}é{}", "x".repeat(n % 230), "x".repeat(n - n % 230)),
            ] {
                let s = bound_length(long.clone());
                assert!(
                    s.len() > KEEP_LEN && s.len() <= MAX_KEY_LEN,
                    "{n}: {}",
                    s.len()
                );
                assert!(is_shortened(&s));
            }
        }
        let long = "x".repeat(400);
        let forged = format!("{}#{}", &long[..200], short_hash(long.as_bytes()));
        assert_ne!(bound_length(forged), bound_length(long));
    }

    #[test]
    fn suffixed_keys_are_bounded_and_distinct() {
        let suffix = format!("#body:{}", short_hash(b"x"));
        for n in [0, 100, KEEP_LEN - suffix.len(), KEEP_LEN, 300] {
            let base = "k".repeat(n);
            let k = with_suffix(base.clone(), &suffix);
            assert!(k.len() <= MAX_KEY_LEN, "{n}: {}", k.len());
            let other = with_suffix(base, &format!("#body:{}", short_hash(b"y")));
            assert_ne!(k, other, "{n}");
        }
        assert_eq!(with_suffix("k".into(), "#body:1"), "k#body:1");
    }

    #[test]
    fn glob_escape_escapes_metacharacters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
