//! A model of what a request presents to its handler, for the key-injectivity checks
//! (`tests/properties.rs` and the `key_template` fuzz target include this file).
//!
//! Written apart from `src/key`: it knows nothing of escaping or separators, only what axum
//! hands a handler (decoded path parameters, `Query`'s decoded query pairs, header bytes, the
//! raw path, the method) and, for typed holes, what `str::parse` makes of it. A template's keys
//! are injective exactly when two requests share a key only if they share [`canonical`] values.
#![allow(dead_code)]

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

/// The default key's view of a request: the method (HEAD as GET), the raw path, and the decoded
/// query pairs stably sorted by the name the handler sees (so repeated names keep their order).
pub fn default_view(req: &Req) -> (String, String, Vec<(Vec<u8>, Vec<u8>)>) {
    let method = if req.method == "HEAD" {
        "GET".to_owned()
    } else {
        req.method.clone()
    };
    let mut pairs = req.query.as_deref().map(query_pairs).unwrap_or_default();
    pairs.sort_by(|a, b| String::from_utf8_lossy(&a.0).cmp(&String::from_utf8_lossy(&b.0)));
    (method, req.path.clone(), pairs)
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
