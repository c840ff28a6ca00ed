//! Pieces both attributes generate.

use crate::template::{Holes, Template};
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Expr, Ident, ItemFn};

/// The path of the crate whose public API the expansions call.
pub(crate) fn krate() -> TokenStream {
    quote!(::tower_valkey_cache)
}

/// A local of the generated code, invisible to the function's body (mixed-site hygiene).
pub(crate) fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// `let CACHE: Cache = Cache::clone(&(EXPR));`: evaluated before the body takes the arguments
/// (a `Cache` argument, `self`), and a clone of the handle is an `Arc` clone. `&(EXPR)` coerces
/// from `&Cache`, `&&Cache`, `&LazyLock<Cache>`, `&Arc<Cache>`.
pub(crate) fn cache_handle(cache: &Ident, expr: &Expr) -> TokenStream {
    let k = krate();
    quote! {
        let #cache: #k::Cache = #k::Cache::clone(&(#expr));
    }
}

/// `let LOOKUP = |name: &str| -> Option<String> { .. }; let RENDER = |t| ..;`: the lookup answers
/// each renamed hole with its argument's `Display` value; `RENDER` turns a parsed-once template
/// into its text or the reason it has none.
pub(crate) fn lookup_and_render(holes: &Holes, lookup: &Ident, render: &Ident) -> TokenStream {
    let k = krate();
    let name = local("name");
    let t = local("template");
    let e = local("error");
    let body = holes.lookup(&name);
    quote! {
        let #lookup = |#name: &str| -> ::std::option::Option<::std::string::String> { #body };
        let #render = |#t: &::std::result::Result<#k::key::KeyTemplate, #k::key::TemplateError>|
            -> ::std::result::Result<::std::string::String, ::std::string::String> {
            match #t {
                ::std::result::Result::Ok(#t) => #t
                    .render_with(&#lookup)
                    .map_err(|#e| ::std::string::ToString::to_string(&#e)),
                ::std::result::Result::Err(#e) => {
                    ::std::result::Result::Err(::std::string::ToString::to_string(#e))
                }
            }
        };
    }
}

/// An expression: the templates parsed once (a `static` per expansion) as a
/// `&'static [Result<KeyTemplate, TemplateError>]`, in the order given.
pub(crate) fn parsed_once(templates: &[Template]) -> TokenStream {
    let k = krate();
    let sources = templates.iter().map(|t| &t.rewritten);
    quote! {{
        static TEMPLATES: ::std::sync::OnceLock<
            ::std::vec::Vec<::std::result::Result<#k::key::KeyTemplate, #k::key::TemplateError>>,
        > = ::std::sync::OnceLock::new();
        TEMPLATES
            .get_or_init(|| {
                ::std::vec![#(#k::key::KeyTemplate::parse(#sources)),*]
            })
            .as_slice()
    }}
}

/// `let BODY = move || async move { let out: R = { body }; out };`: the function's body as a
/// loader. A `return` or `?` in it leaves the async block (typed by the declared return type),
/// not the generated function.
pub(crate) fn body_closure(f: &ItemFn, output: &syn::Type, body: &Ident) -> TokenStream {
    let block = &f.block;
    let out = local("out");
    quote! {
        #[allow(unreachable_code, clippy::let_and_return)]
        let #body = move || async move {
            let #out: #output = #block;
            #out
        };
    }
}

/// A statement logging `message` at `level` once per expansion (the first time).
pub(crate) fn log_once(
    level: TokenStream,
    function: &Ident,
    sources: &str,
    error: &Ident,
    message: &str,
) -> TokenStream {
    let k = krate();
    let function = function.to_string();
    quote! {{
        static LOGGED: ::std::sync::Once = ::std::sync::Once::new();
        LOGGED.call_once(|| {
            #k::tracing::#level!(
                function = #function,
                templates = #sources,
                error = %#error,
                #message
            );
        });
    }}
}
