//! Templates (`"user:{user_id}"`, `"order:{order.id}"`) checked at compile time against the
//! function's arguments, and rewritten for the crate's own parser.
//!
//! The macro never renders or escapes anything itself: the generated code parses the rewritten
//! template with `KeyTemplate::parse` (once) and renders it with `KeyTemplate::render_with`, so
//! keys get exactly the crate's escaping. The rewrite only renames the holes: `{order.id}` is
//! not a valid template variable, and `{path}`, `{method}`, `{query.x}` and `{header.x}` mean
//! request data to `KeyTemplate`. Every hole becomes `{hN}`, where N numbers the distinct
//! argument paths of one attribute, and the generated lookup answers `hN` with that path's
//! `Display` value.

use crate::signature::Args;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::LitStr;

/// One step of an argument path: a field name or a tuple index.
#[derive(Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(u32),
}

/// An argument path a template names: `user_id`, `order.id`, `self.tenant`, `pair.0`.
#[derive(Clone, PartialEq, Eq)]
struct ArgPath {
    root: String,
    steps: Vec<Step>,
}

/// The distinct argument paths of one attribute's templates, in order of first use.
pub(crate) struct Holes {
    /// Each with the literal it first appears in: where errors about its type (no such field,
    /// not `Display`) point.
    paths: Vec<(ArgPath, Span)>,
}

/// A checked template.
pub(crate) struct Template {
    /// As written, for logs.
    pub(crate) source: String,
    /// With every hole renamed to `{hN}`: what the generated code hands to `KeyTemplate::parse`.
    pub(crate) rewritten: String,
}

impl Holes {
    pub(crate) fn new() -> Self {
        Self { paths: Vec::new() }
    }

    /// Checks `lit` (syntax, and that every hole names an argument or a field of one) and
    /// registers its holes.
    pub(crate) fn template(&mut self, lit: &LitStr, args: &Args) -> syn::Result<Template> {
        let source = lit.value();
        let err =
            |why: String| syn::Error::new(lit.span(), format!("in template `{source}`: {why}"));
        let mut out = String::with_capacity(source.len());
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    out.push_str("{{");
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    out.push_str("}}");
                }
                '}' => return Err(err("unmatched `}` (write `}}` for a literal brace)".into())),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(err(
                                    "unclosed `{` (write `{{` for a literal brace)".into()
                                ))
                            }
                            Some(c) => name.push(c),
                        }
                    }
                    let path = parse_path(name.trim(), args).map_err(err)?;
                    let n = match self.paths.iter().position(|(p, _)| *p == path) {
                        Some(n) => n,
                        None => {
                            self.paths.push((path, lit.span()));
                            self.paths.len() - 1
                        }
                    };
                    out.push_str(&format!("{{h{n}}}"));
                }
                c => out.push(c),
            }
        }
        Ok(Template {
            source,
            rewritten: out,
        })
    }

    /// `match name { "h0" => Some(ToString::to_string(&(user_id))), ..., _ => None }` as the
    /// body of the lookup closure over `name`.
    pub(crate) fn lookup(&self, name: &syn::Ident) -> TokenStream {
        let arms = self.paths.iter().enumerate().map(|(n, (p, span))| {
            let label = format!("h{n}");
            let expr = p.tokens(*span);
            quote_spanned! {*span=>
                #label => ::std::option::Option::Some(::std::string::ToString::to_string(&(#expr)))
            }
        });
        quote! {
            match #name {
                #(#arms,)*
                _ => ::std::option::Option::None,
            }
        }
    }
}

impl ArgPath {
    /// `root.step.step`, with the template's span so type errors point at the attribute.
    fn tokens(&self, span: Span) -> TokenStream {
        let mut t = if self.root == "self" {
            let s = syn::token::SelfValue { span };
            quote_spanned!(span=> #s)
        } else {
            let id = syn::Ident::new(&self.root, span);
            quote_spanned!(span=> #id)
        };
        for step in &self.steps {
            match step {
                Step::Field(f) => {
                    let id = syn::Ident::new(f, span);
                    t = quote_spanned!(span=> #t.#id);
                }
                Step::Index(i) => {
                    let idx = syn::Index { index: *i, span };
                    t = quote_spanned!(span=> #t.#idx);
                }
            }
        }
        t
    }
}

fn is_ident(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s != "_"
}

fn parse_path(name: &str, args: &Args) -> Result<ArgPath, String> {
    if name.is_empty() {
        return Err("empty `{}`: name an argument, e.g. `{id}`".into());
    }
    let mut parts = name.split('.');
    let root = parts.next().unwrap_or_default();
    if !is_ident(root) {
        return Err(format!(
            "`{{{name}}}` does not name an argument (write `{{arg}}` or `{{arg.field}}`)"
        ));
    }
    if !args.has(root) {
        let hint = if matches!(root, "query" | "header" | "path" | "method") {
            " (`{query.NAME}`, `{header.NAME}`, `{path}` and `{method}` are request data for \
             CacheLayer; here every `{...}` names an argument)"
        } else {
            ""
        };
        return Err(format!(
            "no argument named `{root}` (the arguments: {}){hint}",
            args.list()
        ));
    }
    let mut steps = Vec::new();
    for part in parts {
        if is_ident(part) {
            steps.push(Step::Field(part.to_owned()));
        } else if let Ok(i) = part.parse::<u32>() {
            if part.len() > 1 && part.starts_with('0') {
                return Err(format!("`{part}` in `{{{name}}}` is not a tuple index"));
            }
            steps.push(Step::Index(i));
        } else {
            return Err(format!(
                "`{part}` in `{{{name}}}` is not a field name or tuple index"
            ));
        }
    }
    Ok(ArgPath {
        root: root.to_owned(),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            names: vec!["id".into(), "user".into(), "path".into()],
            receiver: true,
        }
    }

    fn rewrite(t: &str) -> Result<String, String> {
        Holes::new()
            .template(&LitStr::new(t, Span::call_site()), &args())
            .map(|t| t.rewritten)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn holes_are_renamed_and_literal_braces_kept() {
        assert_eq!(rewrite("user:{id}").unwrap(), "user:{h0}");
        assert_eq!(
            rewrite("{user.id}:{ id }:{user.id}:{self.t}:{user.0}").unwrap(),
            "{h0}:{h1}:{h0}:{h2}:{h3}"
        );
        // An argument named like a request variable is still the argument.
        assert_eq!(rewrite("p:{path}").unwrap(), "p:{h0}");
        assert_eq!(rewrite("{{lit}}:{id}").unwrap(), "{{lit}}:{h0}");
        assert_eq!(rewrite("no holes").unwrap(), "no holes");
    }

    #[test]
    fn bad_templates_are_errors() {
        for bad in [
            "{",
            "}",
            "a}b",
            "{id",
            "{}",
            "{ }",
            "{nope}",
            "{query.page}",
            "{header.x}",
            "{method}",
            "{id.}",
            "{id.a-b}",
            "{id.01}",
            "{1}",
            "{id:x}",
            "{{id}",
            "{a{b}}",
        ] {
            assert!(rewrite(bad).is_err(), "{bad:?} accepted");
        }
        let e = rewrite("user:{user_id}").unwrap_err();
        assert!(e.contains("no argument named `user_id`"), "{e}");
        assert!(e.contains("self, id, user, path"), "{e}");
    }
}
