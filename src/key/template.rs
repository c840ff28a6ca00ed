//! Key templates: `"user:{id}"`, `"tenant:{header.x-tenant}"`, `"page:{query.page:u32}"`, ...

use super::escape::{bound_length, escape_into, short_hash};
use super::{method_name, KeyContext, KeyError, KeyStrategy};
use http::request::Parts;
use http::HeaderName;
use std::fmt;
use std::sync::Arc;

/// A parsed key template. Cheap to clone. See the [module docs](crate::key) for the holes and
/// why the keys it renders are injective.
#[derive(Clone, Debug)]
pub struct KeyTemplate {
    source: Arc<str>,
    parts: Arc<[Part]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    PathParam(String, Option<Ty>),
    Query(String, Option<Ty>),
    Header(HeaderName),
    Path,
    Method,
}

impl Part {
    /// Whether byte `b` can appear in what this hole renders (escaped values: letters, digits,
    /// `%`; an absent value `~`; several values joined by `,`; `/ - . _ ~` in paths).
    fn renders(&self, b: u8) -> bool {
        if b.is_ascii_alphanumeric() || b == b'%' {
            return true;
        }
        match self {
            Part::Query(_, None) | Part::Header(_) => b == b'~' || b == b',',
            Part::Query(_, Some(_)) => b == b'~',
            Part::Path => super::escape::in_path(b),
            Part::PathParam(..) | Part::Method | Part::Literal(_) => false,
        }
    }

    fn is_hole(&self) -> bool {
        !matches!(self, Part::Literal(_))
    }
}

/// The type of a typed hole (`{id:u64}`): values are parsed with `str::parse`, as axum's `Path`
/// and `Query` parse them, and rendered by `Display`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    U8,
    U16,
    U32,
    U64,
    U128,
    Usize,
    I8,
    I16,
    I32,
    I64,
    I128,
    Isize,
    Bool,
}

impl Ty {
    const ALL: [(&'static str, Ty); 13] = [
        ("u8", Ty::U8),
        ("u16", Ty::U16),
        ("u32", Ty::U32),
        ("u64", Ty::U64),
        ("u128", Ty::U128),
        ("usize", Ty::Usize),
        ("i8", Ty::I8),
        ("i16", Ty::I16),
        ("i32", Ty::I32),
        ("i64", Ty::I64),
        ("i128", Ty::I128),
        ("isize", Ty::Isize),
        ("bool", Ty::Bool),
    ];

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }

    /// The value as the handler's extractor parses it, written back; None if it does not parse.
    fn normalise(self, v: &str) -> Option<String> {
        fn p<T: std::str::FromStr + ToString>(v: &str) -> Option<String> {
            v.parse::<T>().ok().map(|x| x.to_string())
        }
        match self {
            Ty::U8 => p::<u8>(v),
            Ty::U16 => p::<u16>(v),
            Ty::U32 => p::<u32>(v),
            Ty::U64 => p::<u64>(v),
            Ty::U128 => p::<u128>(v),
            Ty::Usize => p::<usize>(v),
            Ty::I8 => p::<i8>(v),
            Ty::I16 => p::<i16>(v),
            Ty::I32 => p::<i32>(v),
            Ty::I64 => p::<i64>(v),
            Ty::I128 => p::<i128>(v),
            Ty::Isize => p::<isize>(v),
            Ty::Bool => p::<bool>(v),
        }
    }
}

/// A template that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    template: String,
    reason: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid key template `{}`: {}",
            self.template, self.reason
        )
    }
}

impl std::error::Error for TemplateError {}

/// What the parser inserts between holes that nothing else separates: a byte no hole renders.
const SEPARATOR: &str = ":";

fn is_credential(h: &HeaderName) -> bool {
    crate::headers::is_credential(h)
}

/// Splits `name:type` (a typed hole) into its name and type.
fn typed(hole: &str) -> Result<(&str, Option<Ty>), String> {
    match hole.rsplit_once(':') {
        None => Ok((hole.trim(), None)),
        Some((name, ty)) => match Ty::from_name(ty.trim()) {
            Some(t) => Ok((name.trim(), Some(t))),
            None => Err(format!(
                "`{}` is not a hole type (use u8..u128, i8..i128, usize, isize or bool)",
                ty.trim()
            )),
        },
    }
}

fn hole(spec: &str) -> Result<Part, String> {
    let spec = spec.trim();
    if let Some(h) = spec.strip_prefix("header.") {
        return HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
            .map(Part::Header)
            .map_err(|_| format!("`{h}` is not a header name (header holes take no type)"));
    }
    match spec {
        "path" => return Ok(Part::Path),
        "method" => return Ok(Part::Method),
        _ => {}
    }
    let (name, ty) = typed(spec)?;
    if matches!(name, "path" | "method") {
        return Err(format!("`{{{name}}}` takes no type"));
    }
    if let Some(q) = name.strip_prefix("query.") {
        if q.is_empty() {
            return Err("`{query.}` needs a parameter name".into());
        }
        return Ok(Part::Query(q.to_owned(), ty));
    }
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Ok(Part::PathParam(name.to_owned(), ty));
    }
    Err(format!(
        "`{{{spec}}}` is not a hole (use a path parameter name, `query.NAME`, `header.NAME`, \
         `path` or `method`, and `:TYPE` after a path or query parameter)"
    ))
}

/// Puts a `:` right after each hole that nothing outside its rendered alphabet separates from
/// the next hole, so every hole's value can be read back from the key (ARCHITECTURE.md › Keys
/// are injective).
fn separate(parts: Vec<Part>) -> Vec<Part> {
    debug_assert!(parts.iter().all(|p| !p.renders(SEPARATOR.as_bytes()[0])));
    let holes: Vec<usize> = (0..parts.len()).filter(|&i| parts[i].is_hole()).collect();
    let mut needs_sep = vec![false; parts.len()];
    for w in holes.windows(2) {
        let (h, next) = (w[0], w[1]);
        let separated = parts[h + 1..next].iter().any(|p| match p {
            Part::Literal(l) => l.bytes().any(|b| !parts[h].renders(b)),
            _ => false,
        });
        needs_sep[h] = !separated;
    }
    let mut out: Vec<Part> = Vec::with_capacity(parts.len() + 2);
    let mut pending_sep = false;
    for (i, p) in parts.into_iter().enumerate() {
        match p {
            Part::Literal(l) if pending_sep => out.push(Part::Literal(format!("{SEPARATOR}{l}"))),
            p => {
                if pending_sep {
                    out.push(Part::Literal(SEPARATOR.into()));
                }
                out.push(p);
            }
        }
        pending_sep = needs_sep[i];
    }
    out
}

impl KeyTemplate {
    /// Parses a template such as `"user_{id}_posts:page_{query.page:u32}"`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let err = |reason: &str| TemplateError {
            template: template.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(err("unmatched `}` (write `}}` for a literal brace)")),
                '#' => {
                    return Err(err(
                        "`#` is reserved: it starts the suffixes the cache appends to keys \
                         (`#body:`, `#vary:`, the hash of a shortened key)",
                    ))
                }
                '{' => {
                    let mut spec = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => return Err(err("unclosed `{`")),
                            Some(c) => spec.push(c),
                        }
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(hole(&spec).map_err(|e| err(&e))?);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Self {
            source: template.into(),
            parts: separate(parts).into(),
        })
    }

    /// The template text as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Renders the template; `lookup` gives each path parameter (for use outside HTTP, e.g.
    /// keys for [`Cache::get_or_set`](crate::Cache)). Holes other than path parameters decline.
    ///
    /// ```
    /// use tower_valkey_cache::key::KeyTemplate;
    /// let t = KeyTemplate::parse("user:{id}").unwrap();
    /// assert_eq!(t.render_with(|name| (name == "id").then(|| "a:b".to_string())).unwrap(), "user:a%3Ab");
    /// let t = KeyTemplate::parse("user:{id:u64}").unwrap();
    /// assert_eq!(t.render_with(|_| Some("+0501".to_string())).unwrap(), "user:501");
    /// ```
    pub fn render_with(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<String, KeyError> {
        self.render(|name| lookup(name), None)
    }

    /// Whether the template only uses path parameters (so [`render_with`](Self::render_with)
    /// can render it without a request).
    pub fn is_request_free(&self) -> bool {
        self.parts
            .iter()
            .all(|p| matches!(p, Part::Literal(_) | Part::PathParam(..)))
    }

    fn render<V: AsRef<str>>(
        &self,
        param: impl Fn(&str) -> Option<V>,
        req: Option<&KeyContext<'_>>,
    ) -> Result<String, KeyError> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in self.parts.iter() {
            let ctx = match part {
                Part::Literal(l) => {
                    out.push_str(l);
                    continue;
                }
                Part::PathParam(p, ty) => {
                    let Some(v) = param(p) else {
                        return Err(KeyError::MissingPathParam(p.clone()));
                    };
                    push_value(&mut out, v.as_ref(), *ty, || format!("{{{p}}}"))?;
                    continue;
                }
                _ => req.ok_or(KeyError::Declined)?,
            };
            render_request_part(&mut out, part, ctx.parts())?;
        }
        Ok(bound_length(out))
    }
}

/// Writes one value of a hole, escaped; typed: parsed and written back.
fn push_value(
    out: &mut String,
    v: &str,
    ty: Option<Ty>,
    hole: impl Fn() -> String,
) -> Result<(), KeyError> {
    match ty {
        None => escape_into(out, v, false),
        Some(t) => match t.normalise(v) {
            Some(n) => escape_into(out, n, false),
            None => {
                return Err(KeyError::Rejected(format!(
                    "`{}` does not parse as {}",
                    hole(),
                    t.name()
                )))
            }
        },
    }
    Ok(())
}

fn render_request_part(out: &mut String, part: &Part, parts: &Parts) -> Result<(), KeyError> {
    match part {
        Part::Query(q, ty) => {
            let values = KeyContext::new(parts).query_values(q);
            match (values.as_slice(), ty) {
                ([], _) => out.push('~'),
                ([v], Some(t)) => {
                    // `Query` decodes to text lossily: a value that is not UTF-8 does not parse.
                    push_value(out, &String::from_utf8_lossy(v), Some(*t), || {
                        format!("{{query.{q}:{}}}", t.name())
                    })?
                }
                (_, Some(t)) => {
                    return Err(KeyError::Rejected(format!(
                        "`{{query.{q}:{}}}` is given more than once",
                        t.name()
                    )))
                }
                (vs, None) => {
                    for (i, v) in vs.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        escape_into(out, v, false);
                    }
                }
            }
        }
        Part::Header(h) => {
            let mut values = parts.headers.get_all(h).iter().peekable();
            if values.peek().is_none() {
                out.push('~');
            } else if is_credential(h) {
                let mut all = Vec::new();
                for v in values {
                    all.extend_from_slice(v.as_bytes());
                    all.push(0);
                }
                out.push('h');
                out.push_str(&short_hash(&all));
            } else {
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    escape_into(out, v.as_bytes(), false);
                }
            }
        }
        Part::Path => escape_into(out, parts.uri.path(), true),
        Part::Method => escape_into(out, method_name(&parts.method), false),
        Part::Literal(_) | Part::PathParam(..) => {}
    }
    Ok(())
}

impl std::str::FromStr for KeyTemplate {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl KeyStrategy for KeyTemplate {
    fn key(&self, ctx: &KeyContext<'_>) -> Result<String, KeyError> {
        self.render(|name| ctx.path_param(name), Some(ctx))
    }

    fn covers_header(&self, header: &HeaderName) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Header(h) if h == header))
    }

    fn needs_path_params(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::PathParam(..)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(
        t: &str,
        uri: &str,
        headers: &[(&str, &str)],
        params: &[(&str, &str)],
    ) -> Result<String, KeyError> {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, _) = b.body(()).unwrap().into_parts();
        let ctx = KeyContext::new(&parts).with_path_params(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        KeyTemplate::parse(t).unwrap().key(&ctx)
    }

    #[test]
    fn renders_every_hole_kind() {
        assert_eq!(
            render(
                "t:{header.x-tenant}:{method}:{path}:{id}:{query.p}",
                "/u/1?p=3",
                &[("x-tenant", "acme")],
                &[("id", "1")]
            )
            .unwrap(),
            "t:acme:GET:/u/1:1:3"
        );
        assert_eq!(render("q:{query.p}", "/", &[], &[]).unwrap(), "q:~");
        assert_eq!(render("q:{query.p}", "/?p=", &[], &[]).unwrap(), "q:");
        assert_eq!(render("{{lit}}", "/", &[], &[]).unwrap(), "{lit}");
    }

    #[test]
    fn substituted_values_are_escaped() {
        assert_eq!(
            render("user:{id}", "/", &[], &[("id", "*")]).unwrap(),
            "user:%2A"
        );
        assert_eq!(
            render("user:{id}", "/", &[], &[("id", "1:posts")]).unwrap(),
            "user:1%3Aposts"
        );
    }

    /// The examples of issue 15: separators in values, adjacent holes, `~` next to an absent
    /// value, raw query names and duplicates.
    #[test]
    fn separator_collisions_are_gone() {
        let post = |u: &str, i: &str| render("post_{u}_{i}", "/", &[], &[("u", u), ("i", i)]);
        assert_eq!(post("a", "b_c").unwrap(), "post_a_b%5Fc");
        assert_ne!(post("a", "b_c"), post("a_b", "c"));
        let adj = |a: &str, b: &str| render("{a}{b}", "/", &[], &[("a", a), ("b", b)]);
        assert_eq!(adj("1", "2").unwrap(), "1:2");
        assert_ne!(adj("ab", "c"), adj("a", "bc"));
        let x = |a: &str, b: &str| render("{a}x{b}", "/", &[], &[("a", a), ("b", b)]);
        assert_ne!(x("a", "xb"), x("ax", "b"));
        let tilde = |uri: &str| render("{query.a}~{query.b}", uri, &[], &[]).unwrap();
        assert_ne!(tilde("/?b="), tilde("/?a="));
        assert_eq!(tilde("/?b="), "~:~");
        assert_eq!(tilde("/?a="), ":~~");
        let q = |uri: &str| render("s:{query.q}", uri, &[], &[]).unwrap();
        assert_eq!(q("/?%71=evil"), "s:evil");
        assert_ne!(q("/?%71=evil"), q("/"));
        assert_eq!(q("/?q=a&q=b"), "s:a,b");
        assert_ne!(q("/?q=a&q=b"), q("/?q=a"));
        assert_ne!(q("/?q=a&q=b"), q("/?q=a%2Cb"));
        assert_eq!(q("/?q=%61"), q("/?q=a"));
        assert_eq!(q("/?q=a+b"), "s:a%20b");
    }

    #[test]
    fn separators_are_inserted_only_where_needed() {
        let parts = |t: &str| KeyTemplate::parse(t).unwrap().parts.to_vec();
        let lit = |s: &str| Part::Literal(s.into());
        let p = |n: &str| Part::PathParam(n.into(), None);
        assert_eq!(parts("user:{id}"), [lit("user:"), p("id")]);
        assert_eq!(parts("{a}{b}"), [p("a"), lit(":"), p("b")]);
        assert_eq!(parts("{a}x{b}y"), [p("a"), lit(":x"), p("b"), lit("y")]);
        assert_eq!(parts("{a}_{b}"), [p("a"), lit("_"), p("b")]);
        assert_eq!(parts("{a}/{b}"), [p("a"), lit("/"), p("b")]);
        // `/` can be part of a path, `,` of a query hole's values.
        assert_eq!(parts("{path}/{b}"), [Part::Path, lit(":/"), p("b")]);
        assert_eq!(parts("{path}.{b}"), [Part::Path, lit(":."), p("b")]);
        assert_eq!(parts("{path}{b}"), [Part::Path, lit(":"), p("b")]);
        assert_eq!(parts("{path}:{b}"), [Part::Path, lit(":"), p("b")]);
        assert_eq!(
            parts("{query.a},{b}"),
            [Part::Query("a".into(), None), lit(":,"), p("b")]
        );
        assert_eq!(parts("{a}%{b}"), [p("a"), lit(":%"), p("b")]);
        assert_eq!(
            parts("{a}{b}{c}"),
            [p("a"), lit(":"), p("b"), lit(":"), p("c")]
        );
        assert_eq!(parts("{a}{b}:"), [p("a"), lit(":"), p("b"), lit(":")]);
    }

    #[test]
    fn typed_holes_key_by_value() {
        let id = |v: &str| render("user:{id:u64}", "/", &[], &[("id", v)]);
        assert_eq!(id("501").unwrap(), "user:501");
        assert_eq!(id("0501"), id("501"));
        assert_eq!(id("+501"), id("501"));
        assert!(matches!(id("5x"), Err(KeyError::Rejected(_))));
        assert!(matches!(id("-1"), Err(KeyError::Rejected(_))));
        assert!(matches!(id(""), Err(KeyError::Rejected(_))));
        let neg = render("n:{id:i32}", "/", &[], &[("id", "-05")]).unwrap();
        assert_eq!(neg, "n:%2D5");
        let page = |uri: &str| render("p:{query.page:u32}", uri, &[], &[]);
        assert_eq!(page("/?page=02").unwrap(), "p:2");
        assert_eq!(page("/").unwrap(), "p:~");
        assert!(matches!(
            page("/?page=1&page=2"),
            Err(KeyError::Rejected(_))
        ));
        assert!(matches!(page("/?page=%FF"), Err(KeyError::Rejected(_))));
        assert!(matches!(page("/?page=0x1"), Err(KeyError::Rejected(_))));
        let b = |uri: &str| render("b:{query.on:bool}", uri, &[], &[]);
        assert_eq!(b("/?on=true").unwrap(), "b:true");
        assert!(b("/?on=1").is_err());
    }

    #[test]
    fn credentials_render_hashed() {
        let k = render(
            "me:{header.authorization}",
            "/",
            &[("authorization", "Bearer secret")],
            &[],
        )
        .unwrap();
        assert!(!k.contains("secret"));
        assert!(k.starts_with("me:h") && k.len() == 4 + 32);
        let other = render(
            "me:{header.authorization}",
            "/",
            &[("authorization", "Bearer other")],
            &[],
        )
        .unwrap();
        assert_ne!(k, other);
        assert!(KeyTemplate::parse("me:{header.Authorization}")
            .unwrap()
            .covers_header(&http::header::AUTHORIZATION));
        assert!(KeyTemplate::parse("f:{path}:{header.Range}")
            .unwrap()
            .covers_header(&http::header::RANGE));
        assert!(!KeyTemplate::parse("f:{path}")
            .unwrap()
            .covers_header(&http::header::RANGE));
    }

    #[test]
    fn missing_path_param_is_reported() {
        assert_eq!(
            render("user:{id}", "/", &[], &[]),
            Err(KeyError::MissingPathParam("id".into()))
        );
    }

    #[test]
    fn bad_templates_do_not_parse() {
        for t in [
            "{",
            "a}",
            "{a b}",
            "{query.}",
            "{header.bad header}",
            "{}",
            "{id:u7}",
            "{id:}",
            "{header.x:u32}",
            "{path:u32}",
            "a#b",
            "{id}#",
        ] {
            assert!(KeyTemplate::parse(t).is_err(), "{t}");
        }
        assert!(KeyTemplate::parse("{ id : u64 }").is_ok());
    }
}
