//! Key templates, the default key and escaping on arbitrary input: never a panic, keys never over
//! `MAX_KEY_LEN` bytes, substituted values never carry glob metacharacters, and escaping is
//! reversible (so injective).
#![no_main]

use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tower_valkey_cache::key::{
    escape, glob_escape, DefaultKey, KeyContext, KeyStrategy, KeyTemplate, MAX_KEY_LEN,
};

#[derive(Arbitrary, Debug)]
struct Input {
    template: String,
    uri: String,
    params: Vec<(String, String)>,
    headers: Vec<(String, Vec<u8>)>,
    value: String,
}

const GLOB: [char; 5] = ['*', '?', '[', ']', '\\'];

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Reads a `glob_escape`d pattern back; panics on a metacharacter that is not escaped.
fn unglob(p: &str) -> String {
    let mut out = String::new();
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().expect("a trailing backslash")),
            c if GLOB.contains(&c) => panic!("unescaped {c:?} in {p:?}"),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|input: Input| {
    // Escaping: inert characters only, and reversible.
    let e = escape(&input.value);
    assert!(e
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"_.%-".contains(&c)));
    assert_eq!(unescape(&e), input.value.as_bytes());
    let g = glob_escape(&input.value);
    assert_eq!(unglob(&g), input.value);

    let mut b = Request::get("/");
    if let Ok(uri) = input.uri.parse::<http::Uri>() {
        b = Request::get(uri);
    }
    for (name, value) in &input.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            b = b.header(n, v);
        }
    }
    let Ok(req) = b.body(()) else { return };
    let (parts, _) = req.into_parts();
    let ctx = KeyContext::new(&parts).with_path_params(input.params.clone());

    let k = DefaultKey
        .key(&ctx)
        .expect("the default key always renders");
    assert!(k.len() <= MAX_KEY_LEN, "{k}");
    assert!(
        !k.contains(['*', '[', ']', '\\']) && k.matches('?').count() <= 1,
        "{k}"
    );

    let Ok(t) = KeyTemplate::parse(&input.template) else {
        return;
    };
    let literal_has_glob = input.template.contains(GLOB);
    if let Ok(k) = t.key(&ctx) {
        assert!(k.len() <= MAX_KEY_LEN, "{k}");
        if !literal_has_glob {
            assert!(!k.contains(GLOB), "{:?} rendered {k:?}", input.template);
        }
    }
    let lookup = |name: &str| {
        input
            .params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if let Ok(k) = t.render_with(lookup) {
        assert!(k.len() <= MAX_KEY_LEN, "{k}");
        if !literal_has_glob {
            assert!(!k.contains(GLOB));
        }
    }
});
