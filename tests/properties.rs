//! Property tests: key templating and escaping (injective, never a glob, bounded length), entry
//! decoding (never panics, round-trips) and Cache-Control / header handling through the public
//! layer (never panics, `private` / `no-store` / `no-cache` never stored).
//!
//! Each property runs at most 256 cases so the file stays fast in CI; `scripts/fuzz` runs the same
//! targets for as long as you like.

mod support;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use proptest::prelude::*;
use std::time::Duration;
use support::{has_entry, send, ValkeyServer};
use tower_valkey_cache::entry::Entry;
use tower_valkey_cache::key::{
    escape, glob_escape, DefaultKey, KeyContext, KeyStrategy, KeyTemplate, MAX_KEY_LEN,
};
use tower_valkey_cache::store::glob_match;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};

/// `cases` per property, unless `PROPTEST_CASES` asks for more (scripts/fuzz's fallback).
fn config(cases: u32) -> ProptestConfig {
    let env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: env.unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reference helpers (independent of the crate's code)
// ---------------------------------------------------------------------------------------------

/// Inverts the crate's escaping: `%XX` back to a byte, `[A-Za-z0-9_.-/]` as themselves; None for
/// anything escaping never produces.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                    return None; // escaping writes upper-case hex only
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"_.-/".contains(&c) => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Strings over a small alphabet rich in separators, glob metacharacters, escapes and bytes that
/// escape to look like others (`%`, `2`, `A`), so random pairs collide often if they can.
fn tricky() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "a", "A", "2", "%", "%2A", "*", "?", "[", "]", "\\", ":", "|", "~", "#", "/", " ", ",",
            "=", "&", "{", "}", "é", "\u{0}", "-", ".", "_",
        ]),
        0..6,
    )
    .prop_map(|v| v.concat())
}

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![tricky(), any::<String>()]
}

// ---------------------------------------------------------------------------------------------
// escape / glob_escape
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// `escape` is injective (it has an inverse) and its output uses only `[A-Za-z0-9_.%-]`: no
    /// separator, white space or glob metacharacter.
    #[test]
    fn escape_is_reversible_and_inert(s in any_string()) {
        let e = escape(&s);
        prop_assert_eq!(unescape(&e), Some(s.as_bytes().to_vec()), "{:?} -> {:?}", s, e);
        prop_assert!(
            e.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.%-".contains(&c)),
            "{:?} -> {:?}", s, e
        );
    }

    /// No two distinct inputs escape to the same text.
    #[test]
    fn escape_distinct_inputs_distinct_outputs(a in tricky(), b in tricky()) {
        prop_assert_eq!(a == b, escape(&a) == escape(&b), "{:?} / {:?}", a, b);
    }

    /// An escaped value used as a glob pattern matches exactly itself (Valkey semantics).
    #[test]
    fn escaped_values_are_literal_globs(a in tricky(), b in tricky()) {
        let (ea, eb) = (escape(&a), escape(&b));
        prop_assert!(!ea.contains(['*', '?', '[', ']', '\\']));
        prop_assert!(glob_match(ea.as_bytes(), ea.as_bytes()));
        prop_assert_eq!(glob_match(ea.as_bytes(), eb.as_bytes()), a == b);
        // Nor does it match the raw value of another (unless it is that value, unescaped).
        prop_assert_eq!(glob_match(ea.as_bytes(), b.as_bytes()), ea == b);
    }

    /// `glob_escape(x)` matches exactly `x` (Valkey semantics), whatever `x` holds.
    #[test]
    fn glob_escape_matches_only_itself(a in any_string(), b in tricky()) {
        let p = glob_escape(&a);
        prop_assert!(glob_match(p.as_bytes(), a.as_bytes()), "{:?}", p);
        prop_assert_eq!(glob_match(p.as_bytes(), b.as_bytes()), a == b, "{:?} vs {:?}", p, b);
    }
}

/// The crate's own matcher (memory store pattern invalidation): invalidating
/// `g:` + `glob_escape(x)` removes exactly the entry `g:x`, among neighbours full of
/// metacharacters.
#[test]
fn glob_escaped_patterns_invalidate_exactly_one_entry_on_the_memory_store() {
    let rt = runtime();
    let mut runner = proptest::test_runner::TestRunner::new(config(64));
    let result = runner.run(&prop::collection::hash_set(tricky(), 1..8), |keys| {
        rt.block_on(async {
            let cache = Cache::builder(MemoryStore::new()).namespace("g").build();
            let put = |k: String| {
                let cache = cache.clone();
                async move {
                    cache
                        .set(&k, &1u8, &tower_valkey_cache::function::Options::new())
                        .await
                        .unwrap();
                }
            };
            for k in &keys {
                put(format!("g:{k}")).await;
            }
            for k in &keys {
                let n = cache
                    .invalidate_pattern(&format!("g:{}", glob_escape(k)))
                    .await
                    .unwrap();
                prop_assert_eq!(n, 1, "pattern for {:?} among {:?}", k, keys);
                put(format!("g:{k}")).await;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The same against a real Valkey `KEYS` (the matcher `SCAN MATCH` uses).
#[test]
fn glob_escaped_patterns_match_exactly_one_key_on_valkey() {
    let server = ValkeyServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = std::cell::RefCell::new(client.get_connection().unwrap());
    let mut runner = proptest::test_runner::TestRunner::new(config(64));
    let result = runner.run(&prop::collection::hash_set(tricky(), 1..8), |keys| {
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut *conn.borrow_mut())
            .unwrap();
        for k in &keys {
            let _: () = redis::cmd("SET")
                .arg(format!("g:{k}"))
                .arg(1)
                .query(&mut *conn.borrow_mut())
                .unwrap();
        }
        for k in &keys {
            let found: Vec<Vec<u8>> = redis::cmd("KEYS")
                .arg(format!("g:{}", glob_escape(k)))
                .query(&mut *conn.borrow_mut())
                .unwrap();
            prop_assert_eq!(found, vec![format!("g:{k}").into_bytes()], "{:?}", k);
            let found: Vec<Vec<u8>> = redis::cmd("KEYS")
                .arg(format!("g:{}", escape(k)))
                .query(&mut *conn.borrow_mut())
                .unwrap();
            let literal = format!("g:{}", escape(k));
            prop_assert!(found.iter().all(|f| f == literal.as_bytes()), "{:?}", found);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Key templates and the default key
// ---------------------------------------------------------------------------------------------

/// Characters a query value or path may hold unencoded (plus `%` escapes).
fn uri_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "a", "B", "0", "%2A", "%25", "%3A", "%7E", "*", ":", "~", "-", ".", "_", "!", "$", "'",
            "(", ")", "+", ",", ";", "@", "%20", "%C3%A9",
        ]),
        0..max,
    )
    .prop_map(|v| v.concat())
}

/// Header value bytes: visible ASCII, space, tab and obs-text (0x80..=0xFF, not UTF-8).
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(b"aA0 :,*%~\t".to_vec()),
            0x80u8..=0xFF,
            0x21u8..0x7F,
        ],
        1..5,
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct TemplateInput {
    id: String,
    query: Option<String>,
    headers: Vec<Vec<u8>>,
}

fn template_input() -> impl Strategy<Value = TemplateInput> {
    (
        tricky(),
        prop::option::of(uri_text(4)),
        prop::collection::vec(header_bytes(), 0..3),
    )
        .prop_map(|(id, query, headers)| TemplateInput { id, query, headers })
}

fn render(template: &KeyTemplate, input: &TemplateInput) -> String {
    let uri = match &input.query {
        Some(q) => format!("/p?q={q}"),
        None => "/p".to_owned(),
    };
    let mut b = Request::get(uri);
    for h in &input.headers {
        b = b.header("x-h", HeaderValue::from_bytes(h).unwrap());
    }
    let (parts, _) = b.body(()).unwrap().into_parts();
    let ctx = KeyContext::new(&parts).with_path_params(vec![("id".into(), input.id.clone())]);
    template.key(&ctx).unwrap()
}

fn long_text() -> impl Strategy<Value = String> {
    prop_oneof![tricky(), "[a-z:%*]{200,400}"]
}

proptest! {
    #![proptest_config(config(256))]

    /// Distinct (path parameter, query value, header values) render distinct keys; equal ones
    /// the same key.
    #[test]
    fn template_keys_are_injective(a in template_input(), b in template_input()) {
        let t = KeyTemplate::parse("t:{id}:{query.q}:{header.x-h}").unwrap();
        let (ka, kb) = (render(&t, &a), render(&t, &b));
        prop_assert_eq!(a == b, ka == kb, "{:?} / {:?} -> {:?} / {:?}", a, b, ka, kb);
    }

    /// Each substituted value can be read back from the key: `:` separates only the template's
    /// own parts, and an absent value (`~`) differs from every present one.
    #[test]
    fn template_parts_decode_back(a in template_input()) {
        let t = KeyTemplate::parse("t:{id}:{query.q}:{header.x-h}").unwrap();
        let k = render(&t, &a);
        prop_assume!(k.len() < 200);
        let parts: Vec<&str> = k.split(':').collect();
        prop_assert_eq!(parts.len(), 4, "{:?}", k);
        prop_assert_eq!(unescape(parts[1]), Some(a.id.as_bytes().to_vec()));
        match &a.query {
            Some(q) => prop_assert_eq!(unescape(parts[2]), Some(q.as_bytes().to_vec())),
            None => prop_assert_eq!(parts[2], "~"),
        }
        if a.headers.is_empty() {
            prop_assert_eq!(parts[3], "~");
        } else {
            let values: Vec<Option<Vec<u8>>> = parts[3].split(',').map(unescape).collect();
            let expect: Vec<Option<Vec<u8>>> = a.headers.iter().cloned().map(Some).collect();
            prop_assert_eq!(values, expect);
        }
    }

    /// Credentials render as a hash: distinct values, distinct keys, and never the raw value.
    #[test]
    fn credential_keys_are_hashed_and_distinct(a in "[A-Za-z0-9]{8,40}", b in "[A-Za-z0-9]{8,40}") {
        let t = KeyTemplate::parse("me:{header.authorization}").unwrap();
        let key = |v: &str| {
            let (parts, _) = Request::get("/")
                .header("authorization", format!("Bearer {v}"))
                .body(())
                .unwrap()
                .into_parts();
            t.key(&KeyContext::new(&parts)).unwrap()
        };
        let (ka, kb) = (key(&a), key(&b));
        prop_assert!(!ka.contains(&a));
        prop_assert_eq!(a == b, ka == kb);
    }

    /// Keys never exceed 256 bytes, whatever the template, values or closure strategy produce,
    /// and long keys that differ anywhere stay distinct.
    #[test]
    fn keys_are_bounded(prefix in "[a-z:]{0,300}", id in long_text(), other in long_text()) {
        let template = KeyTemplate::parse(&format!("{prefix}:{{id}}")).unwrap();
        let r = |id: &str| template.render_with(|_| Some(id.to_owned())).unwrap();
        let (ka, kb) = (r(&id), r(&other));
        prop_assert!(ka.len() <= MAX_KEY_LEN && kb.len() <= MAX_KEY_LEN);
        prop_assert_eq!(id == other, ka == kb);
        let closure = move |p: &http::request::Parts| Some(format!("{prefix}{}", p.uri.path()));
        let (parts, _) = Request::get(format!("/{}", "a".repeat(id.len())))
            .body(())
            .unwrap()
            .into_parts();
        prop_assert!(closure.key(&KeyContext::new(&parts)).unwrap().len() <= MAX_KEY_LEN);
    }
}

/// Regression: header values that are not UTF-8 used to be rendered lossily (every invalid byte
/// as U+FFFD), so `\x80` and `\x81` shared a key.
#[test]
fn non_utf8_header_values_render_distinct_keys() {
    let t = KeyTemplate::parse("tenant:{header.x-h}").unwrap();
    let key = |v: &[u8]| {
        let input = TemplateInput {
            id: String::new(),
            query: None,
            headers: vec![v.to_vec()],
        };
        render(&t, &input)
    };
    assert_ne!(key(b"\x80"), key(b"\x81"));
    assert_eq!(key(b"\xff"), "tenant:%FF");
    assert_eq!(
        key("é".as_bytes()),
        "tenant:%C3%A9",
        "UTF-8 values render as before"
    );
}

/// A request as the default key sees it after normalisation: method, raw path, and the query's
/// (name, value) pairs sorted by name (stably), `a` meaning `a=`, empty pairs dropped.
fn normalized(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> (String, String, Vec<(String, String)>) {
    let method = if method == "HEAD" { "GET" } else { method };
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    (method.to_owned(), path.to_owned(), pairs)
}

#[derive(Clone, Debug)]
struct DefaultInput {
    method: &'static str,
    path: String,
    query: Option<String>,
}

fn default_input() -> impl Strategy<Value = DefaultInput> {
    let segment = uri_text(3);
    let pair = (
        uri_text(2),
        prop::option::of(prop_oneof![uri_text(3), Just("=".to_owned())]),
    )
        .prop_map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        });
    (
        prop::sample::select(vec!["GET", "HEAD", "POST"]),
        prop::collection::vec(segment, 0..3),
        prop::option::of(prop::collection::vec(pair, 0..4)),
        0usize..300,
    )
        .prop_map(|(method, segments, pairs, pad)| DefaultInput {
            method,
            // Sometimes long enough to be shortened to a hash.
            path: format!(
                "/{}{}",
                "l".repeat(if pad > 250 { pad } else { 0 }),
                segments.join("/")
            ),
            query: pairs.map(|p| p.join("&")),
        })
}

fn default_key(i: &DefaultInput) -> Option<String> {
    let uri = match &i.query {
        Some(q) => format!("{}?{q}", i.path),
        None => i.path.clone(),
    };
    let req = Request::builder()
        .method(i.method)
        .uri(&uri)
        .body(())
        .ok()?;
    let (parts, _) = req.into_parts();
    // The URI as parsed is what both sides see.
    assert_eq!(parts.uri.path(), i.path, "{uri}");
    Some(DefaultKey.key(&KeyContext::new(&parts)).unwrap())
}

proptest! {
    #![proptest_config(config(256))]

    /// Distinct normalised requests get distinct default keys; equal ones share the key.
    #[test]
    fn default_keys_are_injective_on_normalised_requests(a in default_input(), b in default_input()) {
        let (Some(ka), Some(kb)) = (default_key(&a), default_key(&b)) else {
            return Err(TestCaseError::reject("not a valid URI"));
        };
        let (na, nb) = (
            normalized(a.method, &a.path, a.query.as_deref()),
            normalized(b.method, &b.path, b.query.as_deref()),
        );
        prop_assert_eq!(na == nb, ka == kb, "{:?} / {:?} -> {:?} / {:?}", na, nb, ka, kb);
        prop_assert!(ka.len() <= MAX_KEY_LEN);
        // The only metacharacter is the one `?` the key puts before the query; every path and
        // query byte is escaped.
        prop_assert!(!ka.contains(['*', '[', ']', '\\', ' ']), "{:?}", ka);
        prop_assert!(ka.matches('?').count() <= 1, "{:?}", ka);
    }

    /// Reordering query parameters with distinct names never changes the key.
    #[test]
    fn default_key_ignores_parameter_order(names in prop::collection::hash_set("[a-z%2A]{1,3}", 1..5)) {
        let pairs: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("{n}={i}")).collect();
        let mut reversed = pairs.clone();
        reversed.reverse();
        let k = |q: &[String]| default_key(&DefaultInput { method: "GET", path: "/x".into(), query: Some(q.join("&")) });
        prop_assert_eq!(k(&pairs), k(&reversed));
    }
}

// ---------------------------------------------------------------------------------------------
// Entry decoding
// ---------------------------------------------------------------------------------------------

fn header_name() -> impl Strategy<Value = HeaderName> {
    "[a-z][a-z0-9-]{0,15}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop::collection::vec(prop_oneof![0x20u8..0x7F, 0x80u8..=0xFF, Just(b'\t')], 0..40)
        .prop_map(|v| HeaderValue::from_bytes(&v).unwrap())
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        prop_oneof![Just(0u16), 100u16..1000],
        prop::collection::vec((header_name(), header_value()), 0..6),
        prop::collection::vec(any::<u8>(), 0..300),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        any::<u32>(),
    )
        .prop_map(|(status, headers, body, (a, b, c), compute_ms)| {
            let mut t = [a, b, c];
            t.sort_unstable();
            Entry {
                status,
                headers,
                body: Bytes::from(body),
                stored_at_ms: t[0],
                fresh_until_ms: t[1],
                stale_until_ms: t[2],
                compute_ms,
            }
        })
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes decode to an entry or an error, never a panic.
    #[test]
    fn decode_arbitrary_bytes_never_panics(raw in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut with_magic = b"TVC\x01".to_vec();
        with_magic.extend_from_slice(&raw);
        for bytes in [raw, with_magic] {
            if let Ok(e) = Entry::decode(&Bytes::from(bytes)) {
                prop_assert!(e.fresh_until_ms >= e.stored_at_ms && e.stale_until_ms >= e.fresh_until_ms);
            }
        }
    }

    /// Encoding then decoding gives the entry back.
    #[test]
    fn encode_decode_round_trips(e in entry()) {
        let raw = e.encode().unwrap();
        prop_assert_eq!(Entry::decode(&raw).unwrap(), e);
    }

    /// Damaged encodings (bytes flipped, inserted, removed, truncated) decode or fail, never
    /// panic; what decodes re-encodes to something that decodes the same.
    #[test]
    fn decode_damaged_entries_never_panics(e in entry(), damage in prop::collection::vec(mutation(), 1..4)) {
        let mut raw = e.encode().unwrap().to_vec();
        for m in damage {
            let n = raw.len().max(1);
            match m {
                Mutation::Flip(i, x) => { let i = i % n; if i < raw.len() { raw[i] ^= x } }
                Mutation::Truncate(i) => raw.truncate(i % n),
                Mutation::Insert(i, b) => raw.insert(i % (raw.len() + 1), b),
                Mutation::Remove(i) => { if !raw.is_empty() { raw.remove(i % n); } }
            }
        }
        if let Ok(d) = Entry::decode(&Bytes::from(raw)) {
            prop_assert_eq!(Entry::decode(&d.encode().unwrap()).unwrap(), d);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cache-Control and other headers, through the layer
// ---------------------------------------------------------------------------------------------

/// A `Cache-Control` directive, with whether it forbids storing (`private`, `no-store`,
/// `no-cache`, in any case, with or without a value).
fn directive() -> impl Strategy<Value = (String, bool)> {
    let name = prop::sample::select(vec![
        "public",
        "max-age",
        "s-maxage",
        "must-revalidate",
        "immutable",
        "stale-while-revalidate",
        "no-transform",
        "x-private",
        "privates",
        "no-stored",
        "nocache",
        "private",
        "no-store",
        "no-cache",
    ]);
    let value = prop_oneof![
        Just(String::new()),
        "=[0-9]{1,4}",
        // Quoted strings without commas: a comma inside quotes may read as a directive
        // separator, which only ever errs on the side of not storing (checked below with
        // arbitrary values).
        "=\"[ -!#-+\\--\\[\\]-~]{0,12}\"",
    ];
    (name, value, "[ \t]{0,2}", any::<u32>()).prop_map(|(n, v, ws, case)| {
        // Random upper-casing, one letter per bit.
        let n: String = n
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if case >> (i % 32) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        let forbids = matches!(
            n.to_ascii_lowercase().as_str(),
            "private" | "no-store" | "no-cache"
        );
        (format!("{ws}{n}{v}{ws}"), forbids)
    })
}

/// One or more `Cache-Control` header values built from directives, and whether any forbids
/// storing.
fn cache_control() -> impl Strategy<Value = (Vec<String>, bool)> {
    prop::collection::vec(prop::collection::vec(directive(), 1..4), 1..3).prop_map(|lines| {
        let forbids = lines.iter().flatten().any(|(_, f)| *f);
        let values = lines
            .into_iter()
            .map(|ds| ds.into_iter().map(|(d, _)| d).collect::<Vec<_>>().join(","))
            .collect();
        (values, forbids)
    })
}

/// Any bytes a header value may hold.
fn raw_header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        header_value(),
        "[ -~]{0,40}".prop_map(|s| HeaderValue::from_str(&s).unwrap()),
    ]
}

/// A route answering 200 with the given `Cache-Control` values (and Surrogate-Key / Cache-Tag
/// values), behind a `CacheLayer` on a fresh memory store.
fn cc_app(cache: &Cache, cc: Vec<HeaderValue>, tags: Vec<HeaderValue>) -> Router {
    Router::new().route(
        "/r/{id}",
        get(move |Path(id): Path<String>| {
            let (cc, tags) = (cc.clone(), tags.clone());
            async move {
                let mut res = axum::response::Response::new(Body::from(format!("r {id}")));
                for v in cc {
                    res.headers_mut().append("cache-control", v);
                }
                for (i, v) in tags.into_iter().enumerate() {
                    let name = if i % 2 == 0 {
                        "surrogate-key"
                    } else {
                        "cache-tag"
                    };
                    res.headers_mut().append(name, v);
                }
                res
            }
        })
        .route_layer(
            CacheLayer::new(cache.clone())
                .key("r:{id}")
                .ttl(Duration::from_secs(60))
                .tags_from_headers(true),
        ),
    )
}

proptest! {
    #![proptest_config(config(256))]

    /// Responses whose Cache-Control has `private`, `no-store` or `no-cache` are never stored;
    /// others (200, no Set-Cookie or Vary) are.
    #[test]
    fn response_cache_control_decides_storing((values, forbids) in cache_control()) {
        let rt = runtime();
        rt.block_on(async {
            let cache = Cache::new(MemoryStore::new());
            let cc = values.iter().map(|v| HeaderValue::from_str(v).unwrap()).collect();
            let app = cc_app(&cache, cc, vec![]);
            for _ in 0..2 {
                let r = support::get(&app, "/r/1").await;
                prop_assert_eq!(r.status, http::StatusCode::OK);
                prop_assert_eq!(r.text(), "r 1");
                prop_assert_eq!(has_entry(&cache, "r:1").await, !forbids, "{:?}", values);
                if forbids {
                    prop_assert!(!r.is_hit());
                    prop_assert!(r.cache_status().ends_with("detail=cache-control"), "{}", r.cache_status());
                }
            }
            prop_assert_eq!(cache.stats().hits, u64::from(!forbids));
            Ok(())
        })?;
    }

    /// Arbitrary Cache-Control, Surrogate-Key and Cache-Tag values: never a panic or an error,
    /// tag headers never reach the client, and a response whose Cache-Control names
    /// `private` / `no-store` / `no-cache` as a directive is never stored.
    #[test]
    fn arbitrary_response_headers_never_fail(
        cc in prop::collection::vec(raw_header_value(), 0..3),
        tags in prop::collection::vec(raw_header_value(), 0..3),
    ) {
        // Lines without quotes only: a comma inside a quoted string does not separate
        // directives (`ext="a, private"` is not private); src/headers/tests.rs checks those.
        let forbids = cc.iter().filter_map(|v| v.to_str().ok()).filter(|v| !v.contains('"')).flat_map(|v| v.split(',')).any(|d| {
            let name = d.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            matches!(name.as_str(), "private" | "no-store" | "no-cache")
        });
        let rt = runtime();
        rt.block_on(async {
            let cache = Cache::new(MemoryStore::new());
            let app = cc_app(&cache, cc.clone(), tags);
            for _ in 0..2 {
                let r = support::get(&app, "/r/%2A").await;
                prop_assert_eq!(r.status, http::StatusCode::OK);
                prop_assert_eq!(r.text(), "r *");
                prop_assert!(r.headers.get("surrogate-key").is_none() && r.headers.get("cache-tag").is_none());
            }
            if forbids {
                prop_assert!(!has_entry(&cache, "r:%2A").await, "{:?}", cc);
            }
            Ok(())
        })?;
    }

    /// Arbitrary request headers: never a panic or an error; requests with credentials or
    /// `Cache-Control: no-store` are never answered from, nor stored in, the cache.
    #[test]
    fn arbitrary_request_headers_never_fail(
        headers in prop::collection::vec(
            (prop::sample::select(vec!["cache-control", "pragma", "authorization", "cookie", "proxy-authorization", "if-none-match", "x-other"]),
             raw_header_value()),
            0..4),
    ) {
        let private = headers.iter().any(|(n, _)| matches!(*n, "authorization" | "cookie" | "proxy-authorization"));
        let no_store = headers.iter().any(|(n, v)| *n == "cache-control" && v.to_str().is_ok_and(|v| !v.contains('"') && v.split(',').any(|d| d.split('=').next().unwrap_or("").trim().eq_ignore_ascii_case("no-store"))));
        let rt = runtime();
        rt.block_on(async {
            let cache = Cache::new(MemoryStore::new());
            let app = cc_app(&cache, vec![], vec![]);
            // An entry another caller stored.
            support::get(&app, "/r/1").await;
            let req = || {
                let mut b = Request::get("/r/1");
                for (n, v) in &headers {
                    b = b.header(*n, v.clone());
                }
                b.body(Body::empty()).unwrap()
            };
            let r = send(&app, req()).await;
            prop_assert_eq!(r.status, http::StatusCode::OK);
            prop_assert_eq!(r.text(), "r 1");
            if private || no_store {
                prop_assert!(r.cache_status().contains("fwd=bypass"), "{}", r.cache_status());
                prop_assert!(!r.is_hit());
                prop_assert_eq!(cache.stats().stores, 1, "the bypassed response was stored");
            }
            Ok(())
        })?;
    }
}
