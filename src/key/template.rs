//! Key templates: `"user:{id}"`, `"tenant:{header.x-tenant}"`, ...

use super::escape::{bound_length, escape_into, short_hash};
use super::{method_name, KeyContext, KeyError, KeyStrategy};
use http::HeaderName;
use std::fmt;
use std::sync::Arc;

/// A parsed key template. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KeyTemplate {
    source: Arc<str>,
    parts: Arc<[Part]>,
}

#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    PathParam(String),
    Query(String),
    Header(HeaderName),
    Path,
    Method,
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

fn is_credential(h: &HeaderName) -> bool {
    crate::headers::is_credential(h)
}

impl KeyTemplate {
    /// Parses a template such as `"user_{id}_posts:page_{query.page}"`.
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
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => return Err(err("unclosed `{`")),
                            Some(c) => name.push(c),
                        }
                    }
                    let name = name.trim();
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(if let Some(q) = name.strip_prefix("query.") {
                        if q.is_empty() {
                            return Err(err("`{query.}` needs a parameter name"));
                        }
                        Part::Query(q.to_owned())
                    } else if let Some(h) = name.strip_prefix("header.") {
                        Part::Header(
                            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                                .map_err(|_| err(&format!("`{h}` is not a header name")))?,
                        )
                    } else if name == "path" {
                        Part::Path
                    } else if name == "method" {
                        Part::Method
                    } else if !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        Part::PathParam(name.to_owned())
                    } else {
                        return Err(err(&format!(
                            "`{{{name}}}` is not a variable (use a path parameter name, \
                             `query.NAME`, `header.NAME`, `path` or `method`)"
                        )));
                    });
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Self {
            source: template.into(),
            parts: parts.into(),
        })
    }

    /// The template text as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Renders the template; `lookup` gives each path parameter (for use outside HTTP).
    ///
    /// ```
    /// use tower_valkey_cache::key::KeyTemplate;
    /// let t = KeyTemplate::parse("user:{id}").unwrap();
    /// assert_eq!(t.render_with(|name| (name == "id").then(|| "a:b".to_string())).unwrap(), "user:a%3Ab");
    /// ```
    pub fn render_with(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<String, KeyError> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in self.parts.iter() {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::PathParam(p) => match lookup(p) {
                    Some(v) => escape_into(&mut out, &v, false),
                    None => return Err(KeyError::MissingPathParam(p.clone())),
                },
                _ => return Err(KeyError::Declined),
            }
        }
        Ok(bound_length(out))
    }

    /// Whether the template only uses path parameters (so [`render_with`](Self::render_with)
    /// can render it without a request).
    pub fn is_request_free(&self) -> bool {
        self.parts
            .iter()
            .all(|p| matches!(p, Part::Literal(_) | Part::PathParam(_)))
    }
}

impl std::str::FromStr for KeyTemplate {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl KeyStrategy for KeyTemplate {
    fn key(&self, ctx: &KeyContext<'_>) -> Result<String, KeyError> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in self.parts.iter() {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::PathParam(p) => match ctx.path_param(p) {
                    Some(v) => escape_into(&mut out, v, false),
                    None => return Err(KeyError::MissingPathParam(p.clone())),
                },
                Part::Query(q) => match ctx.query_param(q) {
                    Some(v) => escape_into(&mut out, v, false),
                    None => out.push('~'),
                },
                Part::Header(h) => {
                    let mut values = ctx.parts().headers.get_all(h).iter().peekable();
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
                            escape_into(&mut out, v.as_bytes(), false);
                        }
                    }
                }
                Part::Path => escape_into(&mut out, ctx.parts().uri.path(), true),
                Part::Method => out.push_str(method_name(&ctx.parts().method)),
            }
        }
        Ok(bound_length(out))
    }

    fn covers_header(&self, header: &HeaderName) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Header(h) if h == header))
    }

    fn needs_path_params(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::PathParam(_)))
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
    fn renders_every_variable_kind() {
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
        for t in ["{", "a}", "{a b}", "{query.}", "{header.bad header}", "{}"] {
            assert!(KeyTemplate::parse(t).is_err(), "{t}");
        }
    }
}
