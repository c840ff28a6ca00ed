//! Keys on arbitrary input.
//!
//! - The differential check of `tests/properties.rs` (`random_templates_key_exactly_what_the_
//!   handler_sees`): an arbitrary template (literal text and every hole kind) over a batch of
//!   arbitrary requests and their neighbours (`key_model::neighbours`: shifted, re-encoded,
//!   respelled): two requests share a key exactly when they present the same values to the
//!   handler (`tests/support/key_model.rs`), a key is declined exactly when the handler rejects
//!   the request, keys are at most `MAX_KEY_LEN` bytes.
//! - Arbitrary template text, URIs and headers: never a panic, keys bounded, no glob
//!   metacharacter unless the template has one; escaping is reversible and inert; the default
//!   key always renders, bounded, with one `?` at most.
#![no_main]

#[path = "../../tests/support/key_model.rs"]
mod key_model;

use http::{HeaderName, HeaderValue, Request};
use key_model::{check_template, neighbours, parts_of, Piece, Req, Ty};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tower_valkey_cache::key::{
    escape, glob_escape, DefaultKey, KeyContext, KeyStrategy, KeyTemplate, MAX_KEY_LEN,
};

#[derive(Arbitrary, Debug)]
enum PieceIn {
    Lit(String),
    Param(bool, Option<u8>),
    Query(bool, Option<u8>),
    Header(bool),
    Path,
    Method,
}

#[derive(Arbitrary, Debug)]
struct ReqIn {
    method: u8,
    path: String,
    query: Option<String>,
    a: String,
    b: Option<String>,
    headers: Vec<(bool, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    pieces: Vec<PieceIn>,
    reqs: Vec<ReqIn>,
    template: String,
    uri: String,
    params: Vec<(String, String)>,
    headers: Vec<(String, Vec<u8>)>,
    value: String,
}

const GLOB: [char; 5] = ['*', '?', '[', ']', '\\'];

fn ty(t: Option<u8>) -> Option<Ty> {
    t.map(|t| [Ty::U32, Ty::I8, Ty::Bool][usize::from(t) % 3])
}

fn piece(p: &PieceIn) -> Piece {
    let ab = |first: bool| if first { "a" } else { "b" };
    match p {
        // `#` is reserved in templates: the model's literals are what parses.
        PieceIn::Lit(l) => Piece::Lit(l.replace('#', "")),
        PieceIn::Param(first, t) => Piece::Param(ab(*first).into(), ty(*t)),
        PieceIn::Query(first, t) => Piece::Query(if *first { "x" } else { "y" }.into(), ty(*t)),
        PieceIn::Header(cred) => Piece::Header(if *cred { "authorization" } else { "x-h" }.into()),
        PieceIn::Path => Piece::Path,
        PieceIn::Method => Piece::Method,
    }
}

fn req(r: &ReqIn) -> Req {
    let method = ["GET", "HEAD", "POST", "M-X"][usize::from(r.method) % 4];
    let mut params = vec![("a".to_owned(), r.a.clone())];
    if let Some(b) = &r.b {
        params.push(("b".to_owned(), b.clone()));
    }
    Req {
        method: method.into(),
        path: format!("/{}", r.path),
        query: r.query.clone(),
        params,
        headers: r
            .headers
            .iter()
            .map(|(x, v)| {
                (
                    if *x { "x-h" } else { "authorization" }.to_owned(),
                    v.clone(),
                )
            })
            .collect(),
    }
}

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
    // The differential check, on the model's templates and requests.
    let pieces: Vec<Piece> = input.pieces.iter().take(8).map(piece).collect();
    let mut reqs = Vec::new();
    for r in input.reqs.iter().take(8).map(req) {
        for r in std::iter::once(r.clone()).chain(neighbours(&r)) {
            if let Some(p) = parts_of(&r) {
                reqs.push((r, p));
            }
        }
    }
    if let Err(e) = check_template(&pieces, &reqs) {
        panic!("{e}");
    }

    // Escaping: inert characters only, and reversible.
    let e = escape(&input.value);
    assert!(e.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'%'));
    assert_eq!(unescape(&e), input.value.as_bytes());
    let g = glob_escape(&input.value);
    assert_eq!(unglob(&g), input.value);

    // Arbitrary template text, URIs and headers.
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
