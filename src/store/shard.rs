//! Slot maths and key → shard assignment for sharded namespaces (issue 17, see
//! `docs/plans/issue-17-sharded-cluster.md` › "Shard tags: evenly spaced CRC16 slots").
//!
//! A sharded namespace (S > 1 shards) keeps shard `i`'s keys under the hash tag `{TAG_i}`, where
//! `TAG_i` is `ns|` followed by a fixed-length suffix chosen so that the tag's Valkey Cluster slot
//! lies in the `i`-th of S equal slot ranges ([`shard_tags`]). A key belongs to one shard, picked
//! by hashing the part of the key before its first `#` ([`shard_key`], [`shard_index`]), so the
//! variant and body keys the layer derives from a key stay in that key's shard.
//!
//! Everything here is pure and deterministic, and most of it is a **wire format**: the tags are
//! part of every stored key name, and the key → shard mapping decides which clock guards a fill.
//! Processes that disagree on either do not see each other's invalidations. Changing any function
//! here (the CRC, the alphabet or its order, the target-slot rule, the search order, the key hash)
//! is a layout change: the golden tests below pin them.
//!
//! S = 1 is not handled here: a namespace with one shard keeps today's layout (`ns:` / `{ns}:`),
//! and [`shard_index`] answers 0 for it without hashing.

/// Valkey Cluster's number of hash slots.
pub(crate) const SLOTS: u16 = 16384;

/// The most shards a namespace may have (each shard's slot range is then at least 16 slots wide).
pub(crate) const MAX_SHARDS: u16 = 1024;

/// The characters of a shard tag's suffix, in the order candidates are enumerated (a suffix is a
/// number written in base 64 with these digits, most significant first): `0-9`, `A-Z`, `a-z`,
/// `_`, `-`. None is a brace, a glob metacharacter, `:`, `|`, `#` or white space.
pub(crate) const TAG_ALPHABET: &[u8; 64] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";

/// The suffix length tried first; [`FALLBACK_SUFFIX_LEN`] if some shard's range has no candidate.
const SUFFIX_LEN: usize = 3;

/// The suffix length used (for every shard) when some range has no 3-character candidate.
const FALLBACK_SUFFIX_LEN: usize = 4;

/// The CRC16-XMODEM table (polynomial 0x1021, MSB first), computed at compile time.
const CRC16_TABLE: [u16; 256] = crc16_table();

/// Builds [`CRC16_TABLE`]: entry `b` is the CRC of the single byte `b`.
const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// A CRC16-XMODEM computation in progress (polynomial 0x1021, initial value 0, no reflection, no
/// final XOR: the CRC Valkey Cluster hashes keys with). `Crc16::new().update(a).update(b)` is
/// the CRC of `a` followed by `b`, so a common prefix is hashed once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Crc16(u16);

impl Crc16 {
    /// The state before any byte.
    pub(crate) const fn new() -> Self {
        Self(0)
    }

    /// The state after `bytes` more.
    #[inline]
    pub(crate) fn update(self, bytes: &[u8]) -> Self {
        let mut crc = self.0;
        for &b in bytes {
            crc = step(crc, b);
        }
        Self(crc)
    }

    /// The CRC of every byte so far.
    pub(crate) const fn value(self) -> u16 {
        self.0
    }
}

/// One table step of CRC16-XMODEM.
#[inline]
const fn step(crc: u16, b: u8) -> u16 {
    (crc << 8) ^ CRC16_TABLE[((crc >> 8) as u8 ^ b) as usize]
}

/// CRC16-XMODEM of `bytes` (`crc16(b"123456789") == 0x31C3`).
pub(crate) fn crc16(bytes: &[u8]) -> u16 {
    Crc16::new().update(bytes).value()
}

/// The part of `key` Valkey Cluster hashes: the bytes between the first `{` and the first `}`
/// after it, if there is at least one byte between them; otherwise the whole key. (The crate
/// never needs a key's slot at run time, the cluster client computes it; the tests check with it
/// that every name of a shard lands in the shard's slot range.)
#[cfg(test)]
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The Valkey Cluster hash slot of `key` (0..16384): CRC16 of its hash tag (see [`hashed_part`])
/// masked to 14 bits, as the server's `CLUSTER KEYSLOT` computes it.
#[cfg(test)]
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) & (SLOTS - 1)
}

/// The first slot of shard `i`'s range: `floor(i · 16384 / S)`.
fn range_start(i: u16, shards: u16) -> u16 {
    (u32::from(i) * u32::from(SLOTS) / u32::from(shards)) as u16
}

/// Shard `i`'s slots, `[floor(i·W), floor((i+1)·W))` with `W = 16384 / S`: S ranges that cover
/// every slot once, each `floor(W)` or `floor(W) + 1` slots wide.
pub(crate) fn shard_range(i: u16, shards: u16) -> std::ops::Range<u16> {
    debug_assert!(i < shards);
    let end = (u32::from(i) + 1) * u32::from(SLOTS) / u32::from(shards);
    range_start(i, shards)..end as u16
}

/// The hash tags of a namespace's `shards` shards (the text between the braces, without them):
/// `ns|` and a suffix of 3 characters of [`TAG_ALPHABET`] (4 if some shard's range had no
/// 3-character candidate: never seen for S ≤ 1024, and then every tag gets 4, so the length stays
/// uniform and `{ns|???}` matches exactly this namespace's tags).
///
/// Tag `i`'s slot lies in shard `i`'s range ([`shard_range`]). Inside the range it aims at
/// `t_i = floor(i·W) + (crc16(ns) mod floor(W))` with `W = 16384 / S`: the tags are spaced by W
/// (±1), and different namespaces sit at different offsets in the ranges, so many namespaces do
/// not heap their tags onto the same S slots. The tag for `t_i` is the first suffix (in
/// [`TAG_ALPHABET`] order, most significant character first) whose slot is `t_i`; if no suffix
/// has that slot, the nearest slot inside the range that has one (lower before higher at equal
/// distance). Every 3-character suffix set reaches every slot (see the tests), so in practice the
/// tag always sits at `t_i` exactly.
///
/// For S > 1 only: a namespace with one shard keeps today's layout (`{ns}`), not `{ns|XYZ}`.
/// 262,144 candidates, one CRC table step each: a few milliseconds in an unoptimised test build
/// (printed by a test), less optimised; compute it once per key space.
///
/// # Panics
///
/// If `shards` is not in `2..=1024`, or `ns` holds a brace (a `}` would end the hash tag early;
/// cache namespaces never hold one).
pub(crate) fn shard_tags(ns: &str, shards: u16) -> Box<[String]> {
    assert!(
        (2..=MAX_SHARDS).contains(&shards),
        "shard_tags: {shards} shards, expected 2..={MAX_SHARDS} (one shard keeps the `{{ns}}` layout)"
    );
    assert!(
        !ns.contains(['{', '}']),
        "shard_tags: namespace `{ns}` holds a brace"
    );
    tags_with_len(ns, shards, SUFFIX_LEN)
        .or_else(|| tags_with_len(ns, shards, FALLBACK_SUFFIX_LEN))
        .expect("every slot range of 16+ slots has a 4-character candidate")
}

/// [`shard_tags`] with suffixes of `len` characters; None if some shard's range has no candidate.
fn tags_with_len(ns: &str, shards: u16, len: usize) -> Option<Box<[String]>> {
    let prefix = Crc16::new().update(ns.as_bytes()).update(b"|");
    let first = first_candidates(prefix, len);
    let offset = crc16(ns.as_bytes()) % (SLOTS / shards);
    let picks = pick(&first, shards, offset)?;
    Some(
        picks
            .into_iter()
            .map(|candidate| {
                let mut tag = String::with_capacity(ns.len() + 1 + len);
                tag.push_str(ns);
                tag.push('|');
                tag.push_str(&suffix(candidate, len));
                tag
            })
            .collect(),
    )
}

/// No candidate has this slot (in a [`first_candidates`] table).
const NONE: u32 = u32::MAX;

/// For each slot, the first candidate suffix (as its number in base 64, see [`suffix`]) of `len`
/// characters whose tag content `prefix ++ suffix` hashes to it, or [`NONE`]. One pass over the
/// 64^len candidates, one CRC table step each (the states after the leading characters are
/// shared).
fn first_candidates(prefix: Crc16, len: usize) -> Vec<u32> {
    fn walk(crc: u16, number: u32, left: usize, first: &mut [u32]) {
        if left == 0 {
            let slot = &mut first[usize::from(crc & (SLOTS - 1))];
            if *slot == NONE {
                *slot = number;
            }
            return;
        }
        for (digit, &c) in TAG_ALPHABET.iter().enumerate() {
            walk(step(crc, c), number * 64 + digit as u32, left - 1, first);
        }
    }
    let mut first = vec![NONE; usize::from(SLOTS)];
    walk(prefix.value(), 0, len, &mut first);
    first
}

/// The candidate for each shard: the one at `range_start + offset` if there is one, else the
/// nearest inside the range (lower first at equal distance); None if a range has none at all.
fn pick(first: &[u32], shards: u16, offset: u16) -> Option<Vec<u32>> {
    (0..shards)
        .map(|i| {
            let range = shard_range(i, shards);
            let target = range.start + offset;
            debug_assert!(range.contains(&target));
            let width = range.end - range.start;
            (0..width).find_map(|d| {
                let below = target.checked_sub(d).filter(|s| *s >= range.start);
                let above = Some(target + d).filter(|s| *s < range.end);
                [below, above]
                    .into_iter()
                    .flatten()
                    .map(|s| first[usize::from(s)])
                    .find(|&c| c != NONE)
            })
        })
        .collect()
}

/// Candidate `number` written with `len` digits of [`TAG_ALPHABET`], most significant first.
fn suffix(number: u32, len: usize) -> String {
    (0..len)
        .rev()
        .map(|pos| char::from(TAG_ALPHABET[(number >> (6 * pos)) as usize & 63]))
        .collect()
}

/// The part of a key (relative to the namespace) that decides its shard: everything before its
/// first `#`, or the whole key.
///
/// The keys the layer derives from a key K all continue K with `#`: variants `K#vary:GEN:HASH`,
/// request bodies `K#body:HASH`, and [`bound_length`](crate::key::bound_length)'s shortening of a
/// long key to `K[..~223]#HASH`. Templates and the default key never render `#`, so for their
/// keys this is K itself, and every derived key lands in K's shard: the vary marker's clock then
/// guards its variants' fills. (A key from a closure, an extractor or the function cache may
/// hold `#` itself; it still has one shard, the part before that `#` decides it.)
#[inline]
pub(crate) fn shard_key(key: &str) -> &str {
    match key.find('#') {
        Some(end) => &key[..end],
        None => key,
    }
}

/// The shard (0..S) of `key` (relative to the namespace) among `shards`: 0 when S = 1, without
/// hashing; otherwise `splitmix64(fnv1a64(shard_key(key)))` scaled to 0..S by a 128-bit multiply
/// (no modulo bias worth the name, no division).
#[inline]
pub(crate) fn shard_index(key: &str, shards: u16) -> u16 {
    debug_assert!((1..=MAX_SHARDS).contains(&shards), "{shards} shards");
    if shards <= 1 {
        return 0;
    }
    let h = splitmix64(fnv1a64(shard_key(key).as_bytes()));
    ((u128::from(h) * u128::from(shards)) >> 64) as u16
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: mixes every input bit into every output bit. Needed: FNV-1a's high
/// bits, the ones the multiply-shift keeps, barely depend on a key's last bytes, so bare FNV-1a
/// spreads `user:0..100000` over 128 shards with χ² ≈ 12,600 (127 degrees of freedom; the test
/// below rejects it).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{bound_length, short_hash, with_suffix, KEEP_LEN, MAX_KEY_LEN};
    use proptest::prelude::*;

    #[test]
    fn crc16_is_xmodem() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
        // A bitwise reference, independent of the table.
        let slow = |bytes: &[u8]| {
            let mut crc: u16 = 0;
            for &b in bytes {
                crc ^= u16::from(b) << 8;
                for _ in 0..8 {
                    crc = if crc & 0x8000 != 0 {
                        (crc << 1) ^ 0x1021
                    } else {
                        crc << 1
                    };
                }
            }
            crc
        };
        for s in ["", "a", "foo", "{user1000}.following", "app|K7q", "é日本"] {
            assert_eq!(crc16(s.as_bytes()), slow(s.as_bytes()), "{s}");
        }
        // Streaming: the state after a prefix, extended, is the CRC of the whole.
        let whole = crc16(b"app|K7q");
        assert_eq!(Crc16::new().update(b"app|").update(b"K7q").value(), whole);
        assert_eq!(
            Crc16::new()
                .update(b"ap")
                .update(b"")
                .update(b"p|K")
                .update(b"7q")
                .value(),
            whole
        );
    }

    #[test]
    fn key_slot_follows_valkey_cluster() {
        // The examples of the Valkey Cluster specification.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 0x31C3 & 0x3FFF);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty first `{}`: the whole key.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") & 0x3FFF);
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        // The first `{` and the first `}` after it.
        assert_eq!(key_slot(b"foo{{bar}}zap"), crc16(b"{bar") & 0x3FFF);
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        // No `}` after the `{`, or no `{`: the whole key.
        assert_eq!(key_slot(b"foo{bar"), crc16(b"foo{bar") & 0x3FFF);
        assert_eq!(key_slot(b"foo}bar{"), crc16(b"foo}bar{") & 0x3FFF);
        assert_eq!(key_slot(b"}{x}"), key_slot(b"x"));
        assert_eq!(key_slot(b""), 0);
        // The key shapes of a sharded namespace: entry and bookkeeping in the tag's slot.
        let slot = key_slot(b"app|K7q");
        assert_eq!(key_slot(b"{app|K7q}:GET:/users/1"), slot);
        assert_eq!(key_slot(b"{app|K7q}|clock"), slot);
        assert_eq!(key_slot(b"{app|K7q}|inv:k:GET:/x{y}"), slot);
    }

    #[test]
    fn ranges_cover_every_slot_once() {
        for s in [2, 3, 7, 16, 128, 1000, 1023, MAX_SHARDS] {
            let mut next = 0;
            for i in 0..s {
                let r = shard_range(i, s);
                assert_eq!(r.start, next, "S={s} i={i}");
                let w = r.end - r.start;
                assert!(w == SLOTS / s || w == SLOTS / s + 1, "S={s} i={i}: {w}");
                next = r.end;
            }
            assert_eq!(next, SLOTS, "S={s}");
        }
    }

    /// 50 namespaces: short, long, digits, unicode, with spaces and punctuation (the builder
    /// rejects white space and some punctuation in namespaces; the slot maths does not care).
    fn namespaces() -> Vec<String> {
        let mut ns: Vec<String> = [
            "a",
            "b",
            "z",
            "0",
            "app",
            "api",
            "cache",
            "users",
            "orders",
            "app2",
            "App",
            "APP",
            "x-y",
            "x_y",
            "x.y",
            "v1.2.3",
            "tenant-42",
            "ümlaut",
            "日本語",
            "кэш",
            "🦀",
            "é",
            "with space",
            "two  spaces",
            " lead",
            "trail ",
            "a/b/c",
            "prod.eu-west-1",
            "ns#1",
            "ns%2F",
            "$dollar",
            "@at",
            "~tilde",
            "+plus",
            "=eq",
            "&amp",
            "'q'",
            "\"dq\"",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        ns.push("n".repeat(64));
        ns.push("long-namespace-".repeat(20));
        ns.push("é".repeat(100));
        for i in 0..7 {
            ns.push(format!("svc{i}"));
        }
        ns.push(String::from_utf8(vec![b'q'; 1000]).unwrap());
        ns.push("mixed Ünï cöde 123".into());
        assert_eq!(ns.len(), 50);
        ns
    }

    #[test]
    fn every_tag_is_in_its_range_distinct_and_uniform() {
        let namespaces = namespaces();
        for s in [2u16, 3, 16, 128, 1000] {
            for ns in &namespaces {
                let tags = shard_tags(ns, s);
                assert_eq!(tags.len(), usize::from(s));
                let mut seen = std::collections::HashSet::new();
                for (i, tag) in tags.iter().enumerate() {
                    let rest = tag
                        .strip_prefix(ns.as_str())
                        .and_then(|t| t.strip_prefix('|'))
                        .unwrap_or_else(|| panic!("{tag} does not start with `{ns}|`"));
                    assert_eq!(rest.len(), SUFFIX_LEN, "{ns} S={s}: {tag}");
                    assert!(rest.bytes().all(|b| TAG_ALPHABET.contains(&b)), "{tag}");
                    let range = shard_range(i as u16, s);
                    // As the server hashes the key names built on it.
                    let slot = key_slot(format!("{{{tag}}}:GET:/x").as_bytes());
                    assert_eq!(slot, key_slot(format!("{{{tag}}}|clock").as_bytes()));
                    assert!(
                        range.contains(&slot),
                        "{ns} S={s} i={i}: {slot} ∉ {range:?}"
                    );
                    // Exactly at the target slot (every 3-character suffix set reaches every slot).
                    let target = range.start + crc16(ns.as_bytes()) % (SLOTS / s);
                    assert_eq!(slot, target, "{ns} S={s} i={i}");
                    assert!(seen.insert(tag.clone()), "{ns} S={s}: {tag} twice");
                }
                assert_eq!(shard_tags(ns, s), tags, "{ns} S={s}: not deterministic");
            }
        }
    }

    /// Why the exact target is always hit: CRC16 with initial value 0 is linear, so the slots of
    /// `prefix ++ suffix` over all suffixes are the slots of the bare suffixes XOR one constant
    /// (the prefix's contribution). Every slot has at least one 3-character suffix, so every
    /// prefix reaches every slot.
    #[test]
    fn three_characters_reach_every_slot_from_any_prefix() {
        for prefix in [Crc16::new(), Crc16::new().update(b"app|")] {
            let first = first_candidates(prefix, SUFFIX_LEN);
            assert!(first.iter().all(|&c| c != NONE));
        }
        let mut counts = vec![0u32; usize::from(SLOTS)];
        for a in TAG_ALPHABET {
            for b in TAG_ALPHABET {
                for c in TAG_ALPHABET {
                    counts[usize::from(key_slot(&[*a, *b, *c]))] += 1;
                }
            }
        }
        let min = counts.iter().min().unwrap();
        let max = counts.iter().max().unwrap();
        println!("3-character suffixes per slot: {min}..={max} (mean 16)");
        assert!(*min >= 1);
    }

    #[test]
    fn the_outward_search_stays_in_the_range_and_an_empty_range_fails() {
        // Only slots 3 and 5 (shard 0 of 2: 0..8192) and 8200 (shard 1) have candidates.
        let mut first = vec![NONE; usize::from(SLOTS)];
        first[3] = 30;
        first[5] = 50;
        first[8200] = 82;
        // Target 4 in both ranges: 3 and 5 are equally near, the lower wins; shard 1 finds 8200.
        assert_eq!(pick(&first, 2, 4), Some(vec![30, 82]));
        assert_eq!(pick(&first, 2, 5), Some(vec![50, 82]));
        // Target 8191 in shard 0: the search goes down to 5, not up into shard 1's 8200.
        assert_eq!(pick(&first, 2, 8191), Some(vec![50, 82]));
        // Shard 2 of 3 (10922..16384) has no candidate: no tags of this length.
        assert_eq!(pick(&first, 3, 0), None);
    }

    #[test]
    fn four_character_tags_are_valid_too() {
        let tags = tags_with_len("app", 128, FALLBACK_SUFFIX_LEN).unwrap();
        for (i, tag) in tags.iter().enumerate() {
            assert_eq!(tag.len(), "app|".len() + FALLBACK_SUFFIX_LEN);
            assert!(shard_range(i as u16, 128).contains(&key_slot(tag.as_bytes())));
        }
    }

    #[test]
    #[should_panic(expected = "expected 2..=1024")]
    fn one_shard_has_no_tags() {
        shard_tags("app", 1);
    }

    #[test]
    #[should_panic(expected = "expected 2..=1024")]
    fn too_many_shards() {
        shard_tags("app", MAX_SHARDS + 1);
    }

    #[test]
    #[should_panic(expected = "holds a brace")]
    fn a_brace_in_the_namespace_is_refused() {
        shard_tags("a}b", 2);
    }

    /// 64-bit FNV-1a over the tags, each followed by `\n`.
    fn digest(tags: &[String]) -> u64 {
        let mut joined = String::new();
        for t in tags {
            joined.push_str(t);
            joined.push('\n');
        }
        fnv1a64(joined.as_bytes())
    }

    /// The tags of namespace `app` over 128 shards, pinned (values checked against an
    /// independent bitwise Python implementation of the rule when this was written). A change here is a wire-format
    /// change: every sharded key name moves, and processes on the old and new code no longer see
    /// each other's invalidations (bump the layout guard's `tags=crc16v1` if it is deliberate).
    #[test]
    fn golden_tags_of_app_over_128_shards() {
        let tags = shard_tags("app", 128);
        assert_eq!(&tags[..4], ["app|0TI", "app|4AO", "app|03U", "app|56r"]);
        assert_eq!(tags[127], "app|3kS");
        assert_eq!(digest(&tags), 0x0129_afc0_d956_f3b0);
        assert_eq!(
            shard_tags("cache", 3).as_ref(),
            ["cache|4i0", "cache|1x7", "cache|4aU"]
        );
    }

    #[test]
    fn tag_computation_time() {
        let start = std::time::Instant::now();
        let tags = shard_tags("app", 128);
        // A sanity print, not an assertion (the machine may be busy; unoptimised in tests).
        println!(
            "shard_tags(\"app\", 128): {} tags in {:?}",
            tags.len(),
            start.elapsed()
        );
    }

    #[test]
    fn shard_key_is_the_key_before_its_first_hash() {
        assert_eq!(shard_key("GET:/users/1"), "GET:/users/1");
        assert_eq!(shard_key("k#vary:0000000000000007:abc"), "k");
        assert_eq!(shard_key("k#body:abc#vary:1:2"), "k");
        assert_eq!(shard_key("#x"), "");
        assert_eq!(shard_key(""), "");
        assert_eq!(shard_key("é#é"), "é");
    }

    #[test]
    fn shard_index_is_pinned_and_in_range() {
        for key in ["", "a", "GET:/users/1", "é"] {
            assert_eq!(shard_index(key, 1), 0);
        }
        // Derived keys follow their base.
        let s = 128;
        for base in ["GET:/users/1", "user:42", ""] {
            let i = shard_index(base, s);
            assert_eq!(shard_index(&format!("{base}#vary:1:ff"), s), i);
            assert_eq!(shard_index(&format!("{base}#body:ab"), s), i);
        }
        for s in [2, 3, 128, MAX_SHARDS] {
            for n in 0..2000 {
                assert!(shard_index(&format!("k{n}"), s) < s);
            }
        }
        // Pinned (a change moves every key to another shard: a wire-format change).
        let got: Vec<u16> = ["GET:/users/1", "GET:/users/2", "user:42", "a", ""]
            .iter()
            .map(|k| shard_index(k, 128))
            .collect();
        assert_eq!(got, [23, 101, 32, 47, 97]);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// Pearson's χ² statistic of `counts` against a uniform spread, and the largest relative
    /// deviation of a count from the mean.
    fn spread(counts: &[u32]) -> (f64, f64) {
        let n: u32 = counts.iter().sum();
        let mean = f64::from(n) / counts.len() as f64;
        let chi2 = counts
            .iter()
            .map(|&c| (f64::from(c) - mean).powi(2) / mean)
            .sum();
        let dev = counts
            .iter()
            .map(|&c| (f64::from(c) - mean).abs() / mean)
            .fold(0.0, f64::max);
        (chi2, dev)
    }

    /// The χ² critical value for 127 degrees of freedom at p = 0.001 (Wilson–Hilferty: about
    /// 181.99). A uniform hash passes 999 times in 1000; the keys are fixed, so the test is
    /// deterministic.
    const CHI2_127_P001: f64 = 182.0;

    #[test]
    fn keys_spread_evenly_over_128_shards() {
        let s = 128u16;
        let families: [fn(u32) -> String; 4] = [
            |n| format!("GET:/api/items/{n}"),
            |n| format!("user:{n}"),
            |n| format!("GET:/search?page={}&q=term{}", n % 100, n / 100),
            |n| format!("{n:x}"),
        ];
        for (f, family) in families.iter().enumerate() {
            let mut counts = vec![0u32; usize::from(s)];
            for n in 0..100_000 {
                counts[usize::from(shard_index(&family(n), s))] += 1;
            }
            let (chi2, dev) = spread(&counts);
            println!(
                "family {f}: χ² = {chi2:.1} (127 df), max deviation {:.1}%",
                dev * 100.0
            );
            assert!(chi2 < CHI2_127_P001, "family {f}: χ² = {chi2}");
            assert!(
                dev < 0.15,
                "family {f}: a shard {:.1}% off the mean",
                dev * 100.0
            );
        }
        // The bound has teeth: weak hashes (bare FNV-1a without the SplitMix64 finaliser, its low
        // bits alone, a byte sum) fail it on the same keys.
        let weak: [fn(&str) -> u64; 3] = [
            |k| fnv1a64(k.as_bytes()),
            |k| fnv1a64(k.as_bytes()) << 32,
            |k| {
                k.bytes()
                    .map(u64::from)
                    .sum::<u64>()
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            },
        ];
        for h in weak {
            let mut counts = vec![0u32; usize::from(s)];
            for n in 0..100_000 {
                let k = format!("GET:/api/items/{n}");
                counts[((u128::from(h(&k)) * u128::from(s)) >> 64) as usize] += 1;
            }
            let (chi2, _) = spread(&counts);
            assert!(chi2 > CHI2_127_P001, "weak hash passed: χ² = {chi2}");
        }
    }

    // ----------------------------------------------------------------------------------------
    // Derived keys stay in their base key's shard
    // ----------------------------------------------------------------------------------------

    /// The vary suffix's shape (`src/layer/vary.rs` › `variant_key`; the store may not name the
    /// layer, and `layer::vary`'s tests run the real one).
    fn vary_suffix(generation: u64, h: &str) -> String {
        format!("#vary:{generation:016x}:{}", short_hash(h.as_bytes()))
    }

    /// The body suffix's shape (`src/layer/request_body.rs` › `body_suffix`).
    fn body_suffix(h: &str) -> String {
        format!("#body:{}", short_hash(h.as_bytes()))
    }

    /// Every key the layer derives from the stored base key `base` (already bounded, as every
    /// key the crate stores is), with the base's shard key.
    fn assert_derived_keys_follow(base: &str) -> Result<(), TestCaseError> {
        let want = shard_key(base);
        let body = with_suffix(base.to_owned(), &body_suffix("b"));
        prop_assert_eq!(shard_key(&body), want, "body of {:?}", base);
        for b in [base.to_owned(), body] {
            let v = with_suffix(b.clone(), &vary_suffix(7, "en"));
            prop_assert_eq!(shard_key(&v), want, "variant of {:?}", b);
            prop_assert!(v.len() <= MAX_KEY_LEN);
            // Bounding again (invalidate_key bounds what it is given) moves nothing either.
            let again = bound_length(v.clone());
            prop_assert_eq!(shard_key(&again), want);
        }
        Ok(())
    }

    /// Text of `len` bytes or a little less (whole characters), from a mix of ASCII, `%XX`
    /// escapes and multi-byte characters, so cuts fall inside characters.
    fn text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        (len, prop::collection::vec(0u8..6, 1..40)).prop_map(|(n, picks)| {
            let mut s = String::new();
            let mut i = 0;
            while s.len() < n {
                s.push_str(match picks[i % picks.len()] {
                    0 => "a",
                    1 => "%2F",
                    2 => "é",
                    3 => "日",
                    4 => "🦀",
                    _ => ":",
                });
                i += 1;
            }
            while s.len() > n {
                s.pop();
            }
            s
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Bases of every length around the shortening limit (`KEEP_LEN` = 223, suffixed keys
        /// cross it from 223 − 55 up), without `#` (templates, the default key).
        #[test]
        fn derived_keys_stay_in_the_shard_of_their_base(raw in text(0..600)) {
            assert_derived_keys_follow(&bound_length(raw))?;
        }

        /// Keys from closures, extractors and the function cache may hold `#` anywhere.
        #[test]
        fn derived_keys_of_keys_with_a_hash_stay_too(a in text(0..300), b in text(0..300)) {
            assert_derived_keys_follow(&bound_length(format!("{a}#{b}")))?;
        }
    }

    /// The same, exhaustively over every length near the limit.
    #[test]
    fn derived_keys_stay_in_the_shard_of_their_base_near_the_limit() {
        for n in (KEEP_LEN - 70)..(MAX_KEY_LEN + 40) {
            for raw in [
                "k".repeat(n),
                format!("{}é", "k".repeat(n.saturating_sub(2))),
                format!("{}日k", "k".repeat(n.saturating_sub(4))),
                format!("{}#x", "k".repeat(n.saturating_sub(2))),
            ] {
                assert_derived_keys_follow(&bound_length(raw)).unwrap();
            }
        }
        // A base that already has the shortened shape (a custom key of 253..=256 bytes ending
        // in `#` and 32 hex digits) is kept by `bound_length`; its variants follow it too.
        for n in (KEEP_LEN - 3)..=KEEP_LEN {
            let forged = format!("{}#{}", "k".repeat(n), short_hash(b"x"));
            assert_eq!(bound_length(forged.clone()), forged);
            assert_derived_keys_follow(&forged).unwrap();
        }
    }

    /// The rule needs the base to be bounded: an unbounded base longer than `KEEP_LEN` without
    /// `#` has its whole text as shard key, but its variants are cut to `base[..223]#HASH`. The
    /// layer bounds every key it derives (`Keyer::derive`, hand-written strategies included).
    #[test]
    fn an_unbounded_base_loses_its_shard() {
        let base = "k".repeat(KEEP_LEN + 1);
        let variant = with_suffix(base.clone(), &vary_suffix(1, "en"));
        assert_ne!(shard_key(&variant), shard_key(&base));
        assert_eq!(shard_key(&variant), shard_key(&bound_length(base)));
    }
}
