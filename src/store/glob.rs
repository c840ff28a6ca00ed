//! Valkey's glob semantics (`stringmatchlen` in Valkey's `src/util.c`, case-sensitive), the one
//! definition of "which keys a pattern invalidation reaches" for the memory store and the L1 tier.
//! The Lua matcher in the Valkey fill guard (`valkey/lua/glob.lua`) is a line-by-line port of
//! this function; `tests/glob.rs` runs both against Valkey's own `SCAN MATCH` on random patterns.

/// Whether `SCAN ... MATCH pattern` (or `KEYS pattern`) selects `key` on Valkey: the glob
/// semantics of the crate's pattern invalidation, on every store and in the L1 tier.
///
/// Patterns and keys are bytes. The rules, exactly as Valkey applies them:
///
/// - `*` matches any run of bytes, `?` any one byte, any other byte itself (case-sensitive);
///   `\x` matches `x` for any byte `x`, and a trailing `\` matches a backslash.
/// - `[...]` matches one byte listed in it, `[^...]` one byte not listed. Inside, `\x` lists `x`;
///   `a-z` lists the range, reversed ranges included (`z-a` is `a-z`), and a range's end may be
///   any byte, even `]` or `\` (`[a-]` is the range from `]` to `a`, and the class is not closed
///   there). A `-` that does not start a range is listed as itself. `]` closes the class even as
///   its first byte: `[]` matches nothing and `[^]` any byte.
/// - A class that is never closed runs to the end of the pattern and still matches one byte: `[`
///   alone matches nothing, `[^` any one byte, `[ab` one `a` or `b`.
/// - The empty key is matched only by `*` (which `SCAN` and `KEYS` read as "every key") and by
///   the empty pattern.
/// - Valkey's recursion limit: a pattern with more than 1000 runs of `*` matches nothing, unless
///   it has exactly 1001 and the last one ends the pattern.
///
/// One deliberate difference, on the side of matching more: Valkey compares a range's ends and
/// the key's byte as C `char`, which is signed on x86-64 and unsigned on ARM64, so a range whose
/// ends lie on both sides of `0x80` (like `[a-\xE9]`, or `[^a-\xE9]`) selects different bytes on
/// different builds. Here a class holding such a range matches a byte if it does under either
/// reading: a superset of both builds, so a fill that raced this pattern is refused and an L1 copy
/// dropped whatever the server removed. Every other pattern matches exactly as on Valkey.
///
/// ```
/// use tower_valkey_cache::store::glob_match;
/// assert!(glob_match(b"user:1:*", b"user:1:posts"));
/// assert!(!glob_match(b"user:1:*", b"user:10"));
/// assert!(glob_match(b"[^a-c]?\\*", b"dx*"));
/// assert!(glob_match(b"[ab", b"b")); // an unclosed class runs to the end of the pattern
/// ```
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    if pattern == b"*" {
        return true; // SCAN and KEYS skip matching for `*`, so it selects the empty key too
    }
    if key.is_empty() {
        return pattern.is_empty(); // stringmatchlen's loop never starts: stars are not skipped
    }
    let (m, n) = (pattern.len(), key.len());
    let (mut p, mut t) = (0usize, 0usize);
    // The last `*` seen (index of its last byte) and the key position its match ends at. Only the
    // last one is ever retried: Valkey's `skipLongerMatches` proves earlier ones cannot help.
    let mut star: Option<(usize, usize)> = None;
    let mut groups = 0usize;
    while t < n {
        let c = key[t];
        let consumed = match pattern.get(p) {
            Some(b'*') => {
                while p + 1 < m && pattern[p + 1] == b'*' {
                    p += 1;
                }
                if p + 1 == m {
                    return true;
                }
                groups += 1;
                if groups > 1000 {
                    return false; // Valkey's `nesting > 1000` cut-off
                }
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                true
            }
            Some(b'[') => {
                let (hit, close) = class(pattern, p + 1, c);
                p = close + 1;
                hit
            }
            Some(b'\\') => {
                if p + 1 < m {
                    p += 1;
                }
                let hit = pattern[p] == c;
                p += 1;
                hit
            }
            Some(&b) => {
                p += 1;
                b == c
            }
            None => false,
        };
        if consumed {
            t += 1;
            continue;
        }
        match star {
            Some((sp, st)) if st + 1 < n => {
                star = Some((sp, st + 1));
                p = sp + 1;
                t = st + 1;
            }
            _ => return false,
        }
    }
    while p < m && pattern[p] == b'*' {
        p += 1;
    }
    p == m
}

/// Matches `c` against the class whose body starts at `pattern[i]` (just after `[`). Returns
/// whether it matched under the unsigned or the signed reading of bytes in ranges (see
/// `glob_match`; they differ only for a range across 0x80), and the index of the class's last
/// byte: its `]`, or the pattern's last byte for a class that is never closed.
fn class(pattern: &[u8], mut i: usize, c: u8) -> (bool, usize) {
    let m = pattern.len();
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let (mut unsigned, mut signed) = (false, false);
    loop {
        match pattern.get(i) {
            Some(b'\\') if m - i >= 2 => {
                i += 1;
                unsigned |= pattern[i] == c;
                signed |= pattern[i] == c;
            }
            Some(b']') => break,
            None => {
                i -= 1; // never closed: the class ends with the pattern
                break;
            }
            Some(&lo) if m - i >= 3 && pattern[i + 1] == b'-' => {
                let hi = pattern[i + 2];
                unsigned |= within(lo, hi, c);
                signed |= within(lo as i8, hi as i8, c as i8);
                i += 2;
            }
            Some(&b) => {
                unsigned |= b == c;
                signed |= b == c;
            }
        }
        i += 1;
    }
    ((unsigned != negate) || (signed != negate), i)
}

/// Whether `c` lies between `a` and `b`, in either order.
fn within<T: Ord + Copy>(a: T, b: T, c: T) -> bool {
    a.min(b) <= c && c <= a.max(b)
}

#[cfg(test)]
mod tests {
    use super::glob_match as m;

    /// Each rule of `stringmatchlen`, as read from Valkey's source; `tests/glob.rs` checks the same
    /// table against a real server.
    #[test]
    fn globs() {
        assert!(m(b"ns:user_1_*", b"ns:user_1_posts:page_2"));
        assert!(!m(b"ns:user_1_*", b"ns:user_10"));
        assert!(m(b"a?c", b"abc"));
        assert!(m(b"a[b-d]e", b"ace"));
        assert!(!m(b"a[^b-d]e", b"ace"));
        assert!(m(b"a\\*", b"a*"));
        assert!(!m(b"a\\*", b"ab"));
        assert!(m(b"*x*y", b"axbxy"));
        assert!(!m(b"abc", b"abcd"));
        assert!(!m(b"abcd", b"abc"));
    }

    #[test]
    fn empty_keys_and_stars() {
        assert!(m(b"*", b""));
        assert!(!m(b"**", b""));
        assert!(m(b"", b""));
        assert!(!m(b"", b"a"));
        assert!(!m(b"?", b""));
        assert!(m(b"a*", b"a"));
        assert!(m(b"a**", b"a"));
        assert!(m(b"**", b"abc"));
        assert!(!m(b"*a", b"b"));
    }

    #[test]
    fn escapes() {
        assert!(m(b"\\", b"\\")); // a trailing backslash is a literal one
        assert!(m(b"a\\", b"a\\"));
        assert!(!m(b"a\\", b"a"));
        assert!(m(b"\\\\", b"\\"));
        assert!(m(b"\\a", b"a"));
        assert!(m(b"[\\]]", b"]"));
        assert!(m(b"[\\^]", b"^"));
        assert!(!m(b"[\\^]", b"a"));
        assert!(m(b"[a\\", b"\\")); // unclosed class ending in a backslash lists it
    }

    #[test]
    fn classes() {
        assert!(!m(b"[]", b"]"));
        assert!(!m(b"[]", b"a"));
        assert!(m(b"[^]", b"a"));
        assert!(!m(b"[]]", b"]")); // `[]` (nothing) then a literal `]`
        assert!(!m(b"[]]", b"a]"));
        assert!(!m(b"[]a", b"a"));
        assert!(m(b"[z-a]", b"m")); // reversed range
        assert!(m(b"[-a]", b"-"));
        assert!(m(b"[a-]", b"^")); // the range `]`..`a`, and the class is never closed
        assert!(m(b"[a-]", b"]"));
        assert!(!m(b"[a-]", b"-"));
        assert!(m(b"[a-]x", b"x")); // ...so `x` is listed in it, not a literal after it
        assert!(!m(b"[a-]x", b"ax"));
        assert!(m(b"[--0]", b"/"));
        assert!(m(b"[a-\\]", b"_")); // a range's end is never an escape
        assert!(m(b"[\\a-c]", b"-")); // `\a` then `-` then `c`
        assert!(!m(b"[\\a-c]", b"b"));
        assert!(m(b"[^^]", b"a"));
        assert!(!m(b"[^^]", b"^"));
    }

    #[test]
    fn unclosed_classes() {
        assert!(!m(b"[", b"["));
        assert!(!m(b"[", b""));
        assert!(m(b"[^", b"x"));
        assert!(!m(b"[^", b"xy"));
        assert!(m(b"[ab", b"b"));
        assert!(!m(b"[ab", b"ab"));
        assert!(m(b"x[a-c", b"xb"));
        assert!(m(b"*[ab", b"zzb"));
        assert!(m(b"[a-", b"-"));
        assert!(!m(b"[a-", b"b"));
    }

    #[test]
    fn high_bytes() {
        assert!(m(b"[\x80-\xff]", b"\xc3"));
        assert!(!m(b"[\x80-\xff]", b"a"));
        assert!(m(b"[\xff-\x80]", b"\x80"));
        assert!(m(b"\xe9*", b"\xe9t\xe9"));
        // A range across 0x80: either reading of `char` (see `glob_match`). Signed, `[a-\xe9]`
        // is `\xe9..=\xff` and `\x00..=a`; unsigned, `a..=\xe9`.
        assert!(m(b"[a-\xe9]", b"\x00"));
        assert!(m(b"[a-\xe9]", b"\xff"));
        assert!(m(b"[a-\xe9]", b"m"));
        assert!(m(b"[^a-\xe9]", b"m")); // outside the signed range
        assert!(m(b"[^a-\xe9]", b"\xff")); // outside the unsigned range
        assert!(!m(b"[^a-\xe9]", b"a")); // inside both
        assert!(!m(b"[^a-\xe9]", b"\xe9"));
    }

    #[test]
    fn star_groups_over_the_limit() {
        let groups = |k: usize, tail: &str| format!("{}{tail}", "a*".repeat(k)).into_bytes();
        let key = vec![b'a'; 1002];
        assert!(m(&groups(1000, "a"), &key));
        assert!(m(&groups(1001, ""), &key)); // the 1001st is the last byte: no recursion
        assert!(!m(&groups(1001, "a"), &key));
        assert!(!m(&groups(1001, "*a"), &key)); // `**` is one group
    }
}
