//! A model of what a request presents to its handler, for the key-injectivity checks
//! (`tests/properties.rs` and the `key_template` fuzz target include this file).
//!
//! Written apart from `src/key`: it knows nothing of escaping or separators, only what axum
//! hands a handler (decoded path parameters, `Query`'s decoded query pairs, header bytes, the
//! raw path, the method) and, for typed holes, what `str::parse` makes of it. A template's keys
//! are injective exactly when two requests share a key only if they share [`canonical`] values.
#![allow(dead_code)]

use tower_valkey_cache::key::KeyStrategy as _;

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Literal text, as rendered (braces written doubled in the source).
    Lit(String),
    /// `{name}` / `{name:TYPE}`.
    Param(String, Option<Ty>),
    /// `{query.name}` / `{query.name:TYPE}`.
    Query(String, Option<Ty>),
    /// `{header.name}`.
    Header(String),
    /// `{path}`.
    Path,
    /// `{method}`.
    Method,
}

/// Hole types the model knows (a few of the crate's, enough to exercise parsing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    U32,
    I8,
    Bool,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::U32 => "u32",
            Ty::I8 => "i8",
            Ty::Bool => "bool",
        }
    }

    /// What `str::parse` (serde's `Path` / `Query` deserializers) makes of `v`, as text.
    pub fn parse(self, v: &str) -> Option<String> {
        match self {
            Ty::U32 => v.parse::<u32>().ok().map(|n| n.to_string()),
            Ty::I8 => v.parse::<i8>().ok().map(|n| n.to_string()),
            Ty::Bool => v.parse::<bool>().ok().map(|n| n.to_string()),
        }
    }
}

/// The template's source text.
pub fn source(pieces: &[Piece]) -> String {
    let ty = |t: &Option<Ty>| t.map(|t| format!(":{}", t.name())).unwrap_or_default();
    pieces
        .iter()
        .map(|p| match p {
            Piece::Lit(l) => l.replace('{', "{{").replace('}', "}}"),
            Piece::Param(n, t) => format!("{{{n}{}}}", ty(t)),
            Piece::Query(n, t) => format!("{{query.{n}{}}}", ty(t)),
            Piece::Header(h) => format!("{{header.{h}}}"),
            Piece::Path => "{path}".into(),
            Piece::Method => "{method}".into(),
        })
        .collect()
}

/// A request as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Req {
    pub method: String,
    /// The path as sent (percent-encoded).
    pub path: String,
    /// The query as sent, without `?`.
    pub query: Option<String>,
    /// Path parameters, decoded (what axum's `RawPathParams` gives).
    pub params: Vec<(String, String)>,
    /// Header lines (name, value bytes), in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// `application/x-www-form-urlencoded` decoding of one name or value to bytes: `+` is a space,
/// `%XX` (two hex digits, either case) a byte, anything else (a lone `%`) itself.
pub fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push(hex(b[i + 1]).unwrap() * 16 + hex(b[i + 2]).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The query's (name, value) pairs decoded to bytes, in order: split on `&`, empty pieces
/// dropped, split at the first `=`.
pub fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(n), form_decode(v))
        })
        .collect()
}

/// The query pairs as axum's `Query<Vec<(String, String)>>` hands them to a handler: decoded
/// bytes read as UTF-8, lossily.
pub fn handler_query_pairs(query: &str) -> Vec<(String, String)> {
    query_pairs(query)
        .into_iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(&n).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

/// What one hole presents to the handler, at the granularity the crate promises to key by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// Absent (a query parameter or header not sent).
    Absent,
    /// One or more values, as bytes.
    Values(Vec<Vec<u8>>),
    /// A typed hole's parsed value.
    Parsed(String),
    /// The method (HEAD shares GET's entry) or the raw path.
    Text(String),
}

/// What the request presents to the handler through each hole of the template, or `None` if the
/// handler rejects the request (a typed value that does not parse, a typed query parameter given
/// more than once, a path parameter the request lacks).
///
/// Values are bytes (a query value `%FF` is not `%FE`), which is finer than what `Query` shows
/// (both are U+FFFD): the crate keys by bytes, so keys may tell apart values a handler cannot,
/// never the reverse.
pub fn canonical(pieces: &[Piece], req: &Req) -> Option<Vec<Value>> {
    let query = req.query.as_deref().map(query_pairs).unwrap_or_default();
    let mut out = Vec::new();
    for p in pieces {
        out.push(match p {
            Piece::Lit(_) => continue,
            Piece::Param(n, t) => {
                let v = &req.params.iter().find(|(k, _)| k == n)?.1;
                match t {
                    None => Value::Values(vec![v.as_bytes().to_vec()]),
                    Some(t) => Value::Parsed(t.parse(v)?),
                }
            }
            Piece::Query(n, t) => {
                let vs: Vec<Vec<u8>> = query
                    .iter()
                    .filter(|(k, _)| String::from_utf8_lossy(k) == n.as_str())
                    .map(|(_, v)| v.clone())
                    .collect();
                match (vs.as_slice(), t) {
                    ([], _) => Value::Absent,
                    ([v], Some(t)) => Value::Parsed(t.parse(&String::from_utf8_lossy(v))?),
                    (_, Some(_)) => return None,
                    (_, None) => Value::Values(vs),
                }
            }
            Piece::Header(h) => {
                let vs: Vec<Vec<u8>> = req
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(h))
                    .map(|(_, v)| v.clone())
                    .collect();
                if vs.is_empty() {
                    Value::Absent
                } else {
                    Value::Values(vs)
                }
            }
            Piece::Path => Value::Text(req.path.clone()),
            Piece::Method => Value::Text(if req.method == "HEAD" {
                "GET".into()
            } else {
                req.method.clone()
            }),
        });
    }
    Some(out)
}

/// Method, path, decoded and sorted query pairs.
pub type DefaultView = (String, String, Vec<(Vec<u8>, Vec<u8>)>);

/// The default key's view of a request: the method (HEAD as GET), the raw path, and the decoded
/// query pairs stably sorted by the name the handler sees (so repeated names keep their order).
pub fn default_view(req: &Req) -> DefaultView {
    let method = if req.method == "HEAD" {
        "GET".to_owned()
    } else {
        req.method.clone()
    };
    let mut pairs = req.query.as_deref().map(query_pairs).unwrap_or_default();
    pairs.sort_by(|a, b| String::from_utf8_lossy(&a.0).cmp(&String::from_utf8_lossy(&b.0)));
    (method, req.path.clone(), pairs)
}

/// Requests close to `r`: a character moved across the boundary between the first two path
/// parameters (either way), each query character percent-encoded in turn, a leading `0` or
/// `+` on a parameter, the first two query pairs swapped and the first repeated, HEAD for GET.
/// Where injectivity would break, it breaks between such neighbours.
pub fn neighbours(r: &Req) -> Vec<Req> {
    let mut out = Vec::new();
    if r.params.len() >= 2 {
        let (a, b) = (&r.params[0].1, &r.params[1].1);
        if let Some(c) = a.chars().last() {
            let mut n = r.clone();
            n.params[0].1 = a[..a.len() - c.len_utf8()].to_owned();
            n.params[1].1 = format!("{c}{b}");
            out.push(n);
        }
        if let Some(c) = b.chars().next() {
            let mut n = r.clone();
            n.params[0].1 = format!("{a}{c}");
            n.params[1].1 = b[c.len_utf8()..].to_owned();
            out.push(n);
        }
    }
    for (k, (_, v)) in r.params.iter().enumerate() {
        for prefix in ["0", "+"] {
            let mut n = r.clone();
            n.params[k].1 = format!("{prefix}{v}");
            out.push(n);
        }
    }
    if let Some(q) = &r.query {
        for (i, c) in q.char_indices() {
            if c.is_ascii_alphanumeric() || c == '~' || c == '_' || c == '.' || c == '-' {
                let mut n = r.clone();
                n.query = Some(format!("{}%{:02X}{}", &q[..i], c as u8, &q[i + 1..]));
                out.push(n);
            }
        }
        let pairs: Vec<&str> = q.split('&').collect();
        if pairs.len() >= 2 {
            let mut swapped = pairs.clone();
            swapped.swap(0, 1);
            let mut n = r.clone();
            n.query = Some(swapped.join("&"));
            out.push(n);
        }
        let mut n = r.clone();
        n.query = Some(format!("{}&{q}", pairs[0]));
        out.push(n);
    }
    if r.method == "GET" {
        let mut n = r.clone();
        n.method = "HEAD".into();
        out.push(n);
    }
    out
}

/// The request's parts as `http` parses them; None if it is not a valid request.
pub fn parts_of(r: &Req) -> Option<http::request::Parts> {
    let uri = match &r.query {
        Some(q) => format!("{}?{q}", r.path),
        None => r.path.clone(),
    };
    let uri: http::Uri = uri.parse().ok()?;
    // What the handler is shown is what `http` parsed: the model must see the same.
    if uri.path() != r.path || uri.query() != r.query.as_deref() {
        return None;
    }
    let mut b = http::Request::builder().method(r.method.as_str()).uri(uri);
    for (n, v) in &r.headers {
        b = b.header(n.as_str(), http::HeaderValue::from_bytes(v).ok()?);
    }
    Some(b.body(()).ok()?.into_parts().0)
}

/// Renders `pieces` for every request and checks, over all of them at once, that two requests
/// share a key exactly when they present the same values to the handler (the model in
/// this file), that a key is declined exactly when the handler would reject
/// the request, that keys stay within `MAX_KEY_LEN`, and that they hold a glob metacharacter only
/// if the template's own text does.
pub fn check_template(
    pieces: &[Piece],
    reqs: &[(Req, http::request::Parts)],
) -> Result<(), String> {
    use std::collections::HashMap;
    let src = source(pieces);
    let t = tower_valkey_cache::key::KeyTemplate::parse(&src)
        .map_err(|e| format!("{src:?} does not parse: {e}"))?;
    let glob_in_template = src.contains(['*', '?', '[', ']', '\\']);
    let mut by_key: HashMap<String, (Vec<Value>, &Req)> = HashMap::new();
    let mut by_values: HashMap<Vec<Value>, (String, &Req)> = HashMap::new();
    for (r, parts) in reqs {
        let ctx =
            tower_valkey_cache::key::KeyContext::new(parts).with_path_params(r.params.clone());
        let key = t.key(&ctx);
        let values = canonical(pieces, r);
        let (key, values) = match (key, values) {
            (Ok(k), Some(v)) => (k, v),
            (Err(_), None) => continue,
            (k, v) => {
                return Err(format!(
                    "{src:?} {r:?}: key {k:?}, but the handler sees {v:?}"
                ))
            }
        };
        if key.len() > tower_valkey_cache::key::MAX_KEY_LEN
            || (!glob_in_template && key.contains(['*', '?', '[', ']', '\\']))
        {
            return Err(format!("{src:?} {r:?}: key {key:?}"));
        }
        if let Some((other, o)) = by_key.get(&key) {
            if *other != values {
                return Err(format!(
                    "template {src:?}: one key {key:?} for different values\n{r:?}\n{o:?}"
                ));
            }
        }
        if let Some((other, o)) = by_values.get(&values) {
            if *other != key {
                return Err(format!(
                    "template {src:?}: the same values {values:?} under two keys {key:?} / {other:?}\n{r:?}\n{o:?}"
                ));
            }
        }
        by_key.insert(key.clone(), (values.clone(), r));
        by_values.insert(values, (key, r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%20c%2b%zz%4"), b"a b c+%zz%4");
        assert_eq!(form_decode("%C3%a9"), "é".as_bytes());
    }
}
