//! The attributes' `name = value, ...` lists.

use proc_macro2::Span;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Lit, LitBool, LitStr, Token};

/// What an option's value is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Any expression: `cache = CACHE`, `unless = |v| ..`.
    Expr,
    /// A string literal: `key = "user:{id}"`, `ttl = "5m"`.
    Str,
    /// A list of string literals (or one): `tags = ["user:{id}"]`.
    Strs,
    /// `true` or `false`.
    Bool,
}

pub(crate) enum Value {
    Expr(Expr),
    Str(LitStr),
    Strs(Vec<LitStr>),
    Bool(LitBool),
}

/// The options given, in order, each with the name's span for errors.
pub(crate) struct Options {
    given: Vec<(Ident, Value)>,
}

impl Options {
    /// Parses `attr` against `spec` (the option names the attribute `macro_name` knows).
    pub(crate) fn parse(
        attr: proc_macro2::TokenStream,
        macro_name: &str,
        spec: &[(&str, Kind)],
    ) -> syn::Result<Self> {
        let parser = |input: ParseStream<'_>| {
            let mut given: Vec<(Ident, Value)> = Vec::new();
            while !input.is_empty() {
                let name: Ident = input.parse()?;
                let Some(&(_, kind)) = spec.iter().find(|(n, _)| name == n) else {
                    let known: Vec<&str> = spec.iter().map(|(n, _)| *n).collect();
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                            "unknown option `{name}` of #[{macro_name}]; expected one of: {}",
                            known.join(", ")
                        ),
                    ));
                };
                if given.iter().any(|(n, _)| *n == name) {
                    return Err(syn::Error::new(
                        name.span(),
                        format!("option `{name}` given twice"),
                    ));
                }
                input.parse::<Token![=]>()?;
                let value = match kind {
                    Kind::Expr => Value::Expr(input.parse()?),
                    Kind::Str => Value::Str(string(input, &name)?),
                    Kind::Strs => Value::Strs(if input.peek(syn::token::Bracket) {
                        let content;
                        syn::bracketed!(content in input);
                        Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?
                            .into_iter()
                            .collect()
                    } else {
                        vec![string(input, &name)?]
                    }),
                    Kind::Bool => Value::Bool(input.parse()?),
                };
                given.push((name, value));
                if input.is_empty() {
                    break;
                }
                input.parse::<Token![,]>()?;
            }
            Ok(Options { given })
        };
        parser.parse2(attr)
    }

    fn take(&mut self, name: &str) -> Option<(Ident, Value)> {
        let at = self.given.iter().position(|(n, _)| n == name)?;
        Some(self.given.remove(at))
    }

    /// An expression option, with its name.
    pub(crate) fn expr(&mut self, name: &str) -> Option<(Ident, Expr)> {
        match self.take(name)? {
            (n, Value::Expr(e)) => Some((n, e)),
            _ => None,
        }
    }

    /// A string option.
    pub(crate) fn str(&mut self, name: &str) -> Option<LitStr> {
        match self.take(name)? {
            (_, Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A list of strings (empty when not given).
    pub(crate) fn strs(&mut self, name: &str) -> Vec<LitStr> {
        match self.take(name) {
            Some((_, Value::Strs(s))) => s,
            _ => Vec::new(),
        }
    }

    /// A boolean option, with its name.
    pub(crate) fn bool(&mut self, name: &str) -> Option<(Ident, LitBool)> {
        match self.take(name)? {
            (n, Value::Bool(b)) => Some((n, b)),
            _ => None,
        }
    }
}

/// A string literal; a number gets a hint (durations are written with their unit).
fn string(input: ParseStream<'_>, name: &Ident) -> syn::Result<LitStr> {
    match input.parse::<Lit>()? {
        Lit::Str(s) => Ok(s),
        Lit::Int(i) => Err(syn::Error::new(
            i.span(),
            format!("`{name}` is a string: write the unit, e.g. `{name} = \"{i}s\"`"),
        )),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{name}` takes a string literal"),
        )),
    }
}

/// The error for a required option that is missing (on the attribute).
pub(crate) fn missing(macro_name: &str, option: &str, example: &str) -> syn::Error {
    syn::Error::new(
        Span::call_site(),
        format!("#[{macro_name}] needs `{option} = ...`, e.g. `{example}`"),
    )
}
