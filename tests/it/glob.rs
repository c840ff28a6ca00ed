//! One glob semantics (issue 15 item 7): the Rust matcher (`store::glob_match`, used by the memory
//! store and the L1 tier), the Lua matcher of the Valkey fill guard (`lua/glob.lua`, run inside
//! Valkey by `EVAL`) and Valkey's own `SCAN MATCH` / `KEYS` agree on every pattern and key.
//!
//! - `differential_random_patterns`: random patterns over an alphabet weighted to `* ? [ ] ^ - \`
//!   (unclosed classes, escapes, ranges, negation, empty classes, trailing backslashes, high
//!   bytes, NUL) against random keys, keys edited from the pattern and keys read off it as a
//!   glob. `GLOB_CASES=N` runs N cases (default 3000).
//! - `differential_edge_cases`: a fixed table of every rule, the star-group limit and ranges
//!   across 0x80.
//! - `fill_guard_follows_scan_on_both_stores`: end to end, a fill that raced a pattern
//!   invalidation is refused exactly when that invalidation removed (or would have removed) it.
//! - `rust_matcher_properties`: the Rust matcher alone (never panics, `*` matches every key,
//!   escaped literals match only themselves, prefix / suffix / class laws).
//!
//! The one intended difference: a class range whose ends lie on both sides of 0x80 matches every
//! byte in the crate's matchers (a superset of what signed- and unsigned-`char` builds of Valkey
//! select; see `glob_match`). For patterns that may hold such a range the test checks that Valkey's
//! set is contained in the crate's; for all others it checks equality.

use crate::support;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use redis::Connection;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::time::Duration;
use support::ValkeyServer;
use tower_valkey_cache::key::glob_escape;
use tower_valkey_cache::store::{glob_match, KeySpace, Store, Target, Write, Written};
use tower_valkey_cache::{MemoryStore, ValkeyStore};

/// The fill guard's matcher, exactly as the store's scripts include it.
const GLOB_LUA: &str = include_str!("../../src/store/valkey/lua/glob.lua");

/// `EVALSHA sha 0 pattern key...` returns one 0/1 per key.
const MATCH_EACH: &str = "
local out = {}
for i = 2, #ARGV do out[#out + 1] = glob_match(ARGV[1], ARGV[i]) and 1 or 0 end
return out";

struct Valkey {
    _server: ValkeyServer,
    conn: RefCell<Connection>,
    sha: String,
}

impl Valkey {
    fn start() -> Self {
        let server = ValkeyServer::start();
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(format!("{GLOB_LUA}{MATCH_EACH}"))
            .query(&mut conn)
            .unwrap();
        Self {
            _server: server,
            conn: RefCell::new(conn),
            sha,
        }
    }

    /// What each matcher selects among `keys` (deduplicated) for `pattern`, in one round trip.
    fn verdicts(&self, pattern: &[u8], keys: &BTreeSet<Vec<u8>>) -> Verdicts {
        let mut pipe = redis::pipe();
        pipe.cmd("FLUSHDB").ignore();
        if !keys.is_empty() {
            let mset = pipe.cmd("MSET");
            for k in keys {
                mset.arg(k).arg(1);
            }
            mset.ignore();
        }
        pipe.cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000);
        pipe.cmd("KEYS").arg(pattern);
        let eval = pipe.cmd("EVALSHA").arg(&self.sha).arg(0).arg(pattern);
        for k in keys {
            eval.arg(k);
        }
        let mut conn = self.conn.borrow_mut();
        let ((mut cursor, first), by_keys, lua): Reply = pipe.query(&mut *conn).unwrap();
        let mut scan: BTreeSet<Vec<u8>> = first.into_iter().collect();
        while cursor != 0 {
            let (next, more): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(10_000)
                .query(&mut *conn)
                .unwrap();
            scan.extend(more);
            cursor = next;
        }
        Verdicts {
            scan,
            keys: by_keys.into_iter().collect(),
            lua: keys
                .iter()
                .zip(lua)
                .filter(|(_, hit)| *hit == 1)
                .map(|(k, _)| k.clone())
                .collect(),
            rust: keys
                .iter()
                .filter(|k| glob_match(pattern, k))
                .cloned()
                .collect(),
        }
    }

    /// Asserts the four matchers agree on `pattern` over `keys`; returns how many keys matched.
    fn check(&self, pattern: &[u8], keys: &BTreeSet<Vec<u8>>) -> Result<usize, TestCaseError> {
        let v = self.verdicts(pattern, keys);
        let show = |s: &BTreeSet<Vec<u8>>| s.iter().map(|k| esc(k)).collect::<Vec<_>>();
        let ctx = || format!("pattern {}, keys {:?}", esc(pattern), show(keys));
        prop_assert_eq!(show(&v.scan), show(&v.keys), "SCAN vs KEYS; {}", ctx());
        prop_assert_eq!(show(&v.rust), show(&v.lua), "Rust vs Lua; {}", ctx());
        if may_cross_0x80(pattern) {
            prop_assert!(
                v.scan.is_subset(&v.rust),
                "Valkey {:?} not within Rust {:?}; {}",
                show(&v.scan),
                show(&v.rust),
                ctx()
            );
        } else {
            prop_assert_eq!(show(&v.scan), show(&v.rust), "Valkey vs Rust; {}", ctx());
        }
        Ok(v.rust.len())
    }
}

/// `SCAN`'s (cursor, keys), `KEYS`' keys, the Lua matcher's 0/1 per key.
type Reply = ((u64, Vec<Vec<u8>>), Vec<Vec<u8>>, Vec<i64>);

struct Verdicts {
    scan: BTreeSet<Vec<u8>>,
    keys: BTreeSet<Vec<u8>>,
    lua: BTreeSet<Vec<u8>>,
    rust: BTreeSet<Vec<u8>>,
}

/// Whether the pattern holds some `x-y` with `x` and `y` on both sides of 0x80 (a byte-level
/// over-approximation of "has a range across 0x80": every range is such a triple).
fn may_cross_0x80(p: &[u8]) -> bool {
    p.windows(3)
        .any(|w| w[1] == b'-' && (w[0] < 0x80) != (w[2] < 0x80))
}

/// Readable bytes for failure messages.
fn esc(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

fn cases(default: u32) -> u32 {
    std::env::var("GLOB_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Random patterns and keys
// ---------------------------------------------------------------------------------------------

/// Pattern bytes, weighted to the metacharacters and the class syntax.
fn pattern_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(b'*'),
        2 => Just(b'?'),
        4 => Just(b'['),
        4 => Just(b']'),
        2 => Just(b'^'),
        4 => Just(b'-'),
        4 => Just(b'\\'),
        8 => prop::sample::select(b"abcz".to_vec()),
        1 => prop::sample::select(vec![b':', b'_', 0x00, 0x7f, 0x80, 0xc3, 0xe9, 0xff]),
    ]
}

/// Key bytes: the same letters and metacharacters (keys may hold them literally) and high bytes.
fn key_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => prop::sample::select(b"abcz".to_vec()),
        4 => prop::sample::select(b"*?[]^-\\".to_vec()),
        1 => prop::sample::select(vec![b':', b'_', b'y', 0x00, 0x7f, 0x80, 0xc3, 0xe9, 0xff]),
    ]
}

/// How one pattern byte turns into key bytes when a key is edited from its pattern.
#[derive(Clone, Debug)]
enum Edit {
    Keep,
    Drop,
    Replace(u8),
    Insert(Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => Just(Edit::Keep),
        2 => Just(Edit::Drop),
        2 => key_byte().prop_map(Edit::Replace),
        2 => prop::collection::vec(key_byte(), 1..4).prop_map(Edit::Insert),
    ]
}

/// A key: random bytes, the pattern edited byte by byte (a near miss), or the pattern read loosely
/// as a glob (a near match: `*` and `?` filled in, class and escape syntax mostly dropped).
#[derive(Clone, Debug)]
enum KeyGen {
    Raw(Vec<u8>),
    Edited(Vec<Edit>),
    Instance(Vec<(u8, Vec<u8>)>),
}

impl KeyGen {
    fn render(&self, pattern: &[u8]) -> Vec<u8> {
        match self {
            KeyGen::Raw(k) => k.clone(),
            KeyGen::Edited(edits) => {
                let mut out = Vec::new();
                for (i, &b) in pattern.iter().enumerate() {
                    match edits.get(i) {
                        None | Some(Edit::Keep) => out.push(b),
                        Some(Edit::Drop) => {}
                        Some(Edit::Replace(r)) => out.push(*r),
                        Some(Edit::Insert(extra)) => {
                            out.push(b);
                            out.extend_from_slice(extra);
                        }
                    }
                }
                out
            }
            KeyGen::Instance(fills) => {
                let mut out = Vec::new();
                for (i, &b) in pattern.iter().enumerate() {
                    let (r, run) = fills.get(i).map_or((0, &[][..]), |(r, v)| (*r, &v[..]));
                    let one = run.first().copied().unwrap_or(b'a');
                    match (b, r % 3) {
                        (b'*', _) => out.extend_from_slice(run),
                        (b'?', _) => out.push(one),
                        (b'\\', 0) | (b'[' | b']' | b'^' | b'-', 0 | 1) => {}
                        (b'[' | b']' | b'^' | b'-', _) if r % 2 == 0 => out.push(one),
                        _ => out.push(b),
                    }
                }
                out
            }
        }
    }
}

fn key_gen() -> impl Strategy<Value = KeyGen> {
    prop_oneof![
        1 => prop::collection::vec(key_byte(), 0..7).prop_map(KeyGen::Raw),
        1 => prop::collection::vec(edit(), 0..12).prop_map(KeyGen::Edited),
        3 => prop::collection::vec(
            (any::<u8>(), prop::collection::vec(key_byte(), 0..3)),
            0..12
        )
        .prop_map(KeyGen::Instance),
    ]
}

#[test]
fn differential_random_patterns() {
    let valkey = Valkey::start();
    let n = cases(3000);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let (pairs, hits) = (Cell::new(0usize), Cell::new(0usize));
    let (mixed, exact) = (Cell::new(0usize), Cell::new(0usize));
    let strategy = (
        prop::collection::vec(pattern_byte(), 0..12),
        prop::collection::vec(key_gen(), 1..24),
    );
    let result = runner.run(&strategy, |(pattern, gens)| {
        let keys: BTreeSet<Vec<u8>> = gens.iter().map(|g| g.render(&pattern)).collect();
        let matched = valkey.check(&pattern, &keys)?;
        pairs.set(pairs.get() + keys.len());
        hits.set(hits.get() + matched);
        mixed.set(mixed.get() + usize::from(matched > 0 && matched < keys.len()));
        exact.set(exact.get() + usize::from(!may_cross_0x80(&pattern)));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let n = n as usize;
    eprintln!(
        "{n} patterns ({} compared for equality, the rest for containment), {} (pattern, key) \
         pairs, {} matched, {} patterns with hits and misses",
        exact.get(),
        pairs.get(),
        hits.get(),
        mixed.get()
    );
    // The generator must exercise both answers, or the agreement above says little.
    assert!(hits.get() * 20 > pairs.get(), "too few matches");
    assert!(hits.get() * 10 < pairs.get() * 9, "too few misses");
    assert!(mixed.get() * 5 > n, "too few patterns split their keys");
    assert!(
        exact.get() * 10 > n * 9,
        "too few patterns compared for equality"
    );
}

// ---------------------------------------------------------------------------------------------
// Every rule, once
// ---------------------------------------------------------------------------------------------

/// Patterns that each exercise one rule of `stringmatchlen` (see `glob_match`'s docs).
const EDGE_PATTERNS: &[&[u8]] = &[
    b"",
    b"*",
    b"**",
    b"***a",
    b"a*",
    b"*a",
    b"a*b*c",
    b"?",
    b"??",
    b"a?",
    b"\\",
    b"a\\",
    b"\\\\",
    b"\\*",
    b"\\?",
    b"\\[",
    b"\\a",
    b"*\\",
    b"[",
    b"[^",
    b"[a",
    b"[ab",
    b"[^ab",
    b"[a-",
    b"[a-c",
    b"x[a-c",
    b"*[ab",
    b"[\\",
    b"[a\\",
    b"[]",
    b"[^]",
    b"[]]",
    b"[]a",
    b"[^]a",
    b"[]-]",
    b"[]a]",
    b"[a-]",
    b"[a-]x",
    b"[a-]]",
    b"[-a]",
    b"[a-z]",
    b"[z-a]",
    b"[--0]",
    b"[a-\\]",
    b"[\\a-c]",
    b"[\\]]",
    b"[\\^]",
    b"[^^]",
    b"[^-]",
    b"[a^]",
    b"[[]",
    b"[[-]]",
    b"[*]",
    b"[?]",
    b"a[]b",
    b"*[]*",
    b"[^]*",
    b"*[^",
    b"[b-b]",
    b"[\\-]",
    b"[a-\\]]",
    b"a\\\\*",
    b"\x00*",
    b"[\x00-a]",
    b"\xe9*",
    b"[\x80-\xff]",
    b"[\xff-\x80]",
    b"[^\x80-\xff]",
    b"[\xc3\xe9]*",
];

/// Keys that tell the rules apart.
fn edge_keys() -> BTreeSet<Vec<u8>> {
    let mut keys: BTreeSet<Vec<u8>> = [
        "", "a", "b", "c", "x", "z", "m", "-", "^", "]", "[", "\\", "*", "?", "_", "/", "0", "ab",
        "abc", "aXbYc", "ba", "xb", "xa", "ax", "a]", "]a", "a-", "-a", "a\\", "\\\\", "a*", "a**",
        "zzb", "zza", "[a", "[ab", "a\\b", "aab", "]]",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    for b in [0x00u8, 0x7f, 0x80, 0xa9, 0xc3, 0xe9, 0xff] {
        keys.insert(vec![b]);
        keys.insert(vec![b, b'a']);
    }
    keys
}

#[test]
fn differential_edge_cases() {
    let valkey = Valkey::start();
    let keys = edge_keys();
    for pattern in EDGE_PATTERNS {
        valkey.check(pattern, &keys).unwrap();
    }
    // Ranges across 0x80: every byte under one reading or the other, and whatever this build of
    // Valkey selects is within.
    let every_byte: BTreeSet<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for pattern in [
        &b"[a-\xe9]"[..],
        b"[\xe9-a]",
        b"[\x00-\xff]",
        b"[\x7f-\x80]",
    ] {
        assert_eq!(valkey.check(pattern, &every_byte).unwrap(), 256);
    }
    assert_eq!(valkey.check(b"[^\x00-\xff]", &every_byte).unwrap(), 254);
    // Negated: a byte outside the range under either reading (all but the two ends).
    assert_eq!(valkey.check(b"[^a-\xe9]", &every_byte).unwrap(), 254);
    // Valkey stops at 1000 nested `*` groups: the 1001st matches nothing unless it ends the
    // pattern.
    let key: BTreeSet<Vec<u8>> = [vec![b'a'; 1002], vec![b'a'; 1000]].into_iter().collect();
    let groups = |k: usize, tail: &str| format!("{}{tail}", "a*".repeat(k)).into_bytes();
    assert_eq!(valkey.check(&groups(1000, "a"), &key).unwrap(), 1);
    assert_eq!(valkey.check(&groups(999, "a"), &key).unwrap(), 2);
    assert_eq!(valkey.check(&groups(1001, ""), &key).unwrap(), 1);
    assert_eq!(valkey.check(&groups(1001, "a"), &key).unwrap(), 0);
    assert_eq!(valkey.check(&groups(1001, "**"), &key).unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// End to end: the fill guard on both stores
// ---------------------------------------------------------------------------------------------

/// For each pattern and key (UTF-8, as the crate's keys are): a fill that read the clock before the
/// pattern invalidation is refused exactly when the pattern matches the key, and on Valkey that
/// is also exactly when the invalidation removed the stored key. `write` and `write_many` both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_guard_follows_scan_on_both_stores() {
    let server = ValkeyServer::start();
    let valkey = ValkeyStore::new(&server.url()).unwrap();
    let memory = MemoryStore::new();
    let space = KeySpace::new("g", Duration::from_secs(60));
    let patterns = [
        "[ab", "[^", "[", "b*[", "[a-]", "[a-]x", "[]", "[^]", "b\\", "\\", "[\\]]", "[z-a]",
        "*[é", "é*", "b[^a-c", "[]]", "?*", "*",
    ];
    let keys = [
        "b", "a", "x", "^", "]", "[", "\\", "b\\", "ba", "m", "é", "éa", "bz", "b[", "-",
    ];
    let (mut refused, mut stored) = (0, 0);
    for store in [&valkey as &dyn Store, &memory] {
        for pattern in patterns {
            for key in keys {
                let full = glob_match(space.entry(pattern).as_bytes(), space.entry(key).as_bytes());
                let write = |since| Write {
                    key,
                    value: bytes::Bytes::from_static(b"v"),
                    ttl: Duration::from_secs(60),
                    tags: &[],
                    since,
                };
                store.write(&space, write(None)).await.unwrap();
                let clock = store.read(&space, key).await.unwrap().clock;
                let removed = store
                    .invalidate(&space, Target::Pattern(pattern))
                    .await
                    .unwrap();
                assert_eq!(
                    removed,
                    u64::from(full),
                    "{}: {pattern:?} removed {key:?}",
                    store.name()
                );
                let want = if full {
                    Written::Superseded
                } else {
                    Written::Stored
                };
                let got = store.write(&space, write(Some(clock))).await.unwrap();
                assert_eq!(
                    got,
                    want,
                    "{}: fill of {key:?} after {pattern:?}",
                    store.name()
                );
                let many = store
                    .write_many(&space, vec![write(Some(clock))])
                    .await
                    .unwrap();
                assert_eq!(
                    many,
                    vec![want],
                    "{}: write_many {key:?} after {pattern:?}",
                    store.name()
                );
                if full {
                    refused += 1;
                } else {
                    stored += 1;
                }
                store
                    .invalidate(&space, Target::Keys(&[key.to_owned()]))
                    .await
                    .unwrap();
            }
        }
    }
    assert!(
        refused > 40 && stored > 40,
        "refused {refused}, stored {stored}"
    );
}

// ---------------------------------------------------------------------------------------------
// The Rust matcher alone
// ---------------------------------------------------------------------------------------------

/// `\` before every byte: under Valkey's rules a pattern that matches only `literal`.
fn escape_all(literal: &[u8]) -> Vec<u8> {
    literal.iter().flat_map(|&b| [b'\\', b]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), failure_persistence: None,
        ..ProptestConfig::default() })]

    /// Never panics on any bytes; `*` matches every key; a fully escaped literal, and
    /// `glob_escape`'s output, match only their text; escaped text with `*` around it matches
    /// exactly the keys that start with, end with or contain it.
    #[test]
    fn rust_matcher_properties(
        pattern in prop::collection::vec(any::<u8>(), 0..24),
        meta in prop::collection::vec(pattern_byte(), 0..16),
        a in prop::collection::vec(key_byte(), 0..5),
        key in prop::collection::vec(key_byte(), 0..10),
        text in any::<String>(),
    ) {
        let _ = glob_match(&pattern, &key);
        let _ = glob_match(&meta, &key);
        prop_assert!(glob_match(b"*", &key));
        prop_assert!(glob_match(b"*", &pattern));

        let lit = escape_all(&a);
        prop_assert!(glob_match(&lit, &a));
        prop_assert_eq!(glob_match(&lit, &key), key == a);
        let g = glob_escape(&text);
        prop_assert!(glob_match(g.as_bytes(), text.as_bytes()));
        prop_assert_eq!(glob_match(g.as_bytes(), &key), key == text.as_bytes());

        let starts = [&lit[..], b"*"].concat();
        let ends = [&b"*"[..], &lit].concat();
        let within = [&b"*"[..], &lit, b"*"].concat();
        prop_assert_eq!(glob_match(&starts, &key), key.starts_with(&a));
        prop_assert_eq!(glob_match(&ends, &key), key.ends_with(&a));
        if !a.is_empty() {
            prop_assert_eq!(glob_match(&within, &key), key.windows(a.len()).any(|w| w == &a[..]));
        }
        // `?` per byte matches exactly the keys of that length.
        let qs = vec![b'?'; a.len()];
        prop_assert_eq!(glob_match(&qs, &key), key.len() == a.len());
        // A class of escaped bytes matches one byte it lists; `[^...]` one byte it does not.
        if let [b] = key[..] {
            let class = [&b"["[..], &lit, b"]"].concat();
            let negated = [&b"[^"[..], &lit, b"]"].concat();
            prop_assert_eq!(glob_match(&class, &key), a.contains(&b));
            prop_assert_eq!(glob_match(&negated, &key), !a.contains(&b));
        }
    }
}
