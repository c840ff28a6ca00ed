//! `#[invalidates]`: after the body returns `Ok`, one `Cache::invalidate(Invalidation)` with the
//! keys, patterns and tags rendered from the arguments.

use crate::common::{
    body_closure, cache_handle, krate, local, log_once, lookup_and_render, parsed_once,
};
use crate::options::{missing, Kind, Options};
use crate::signature::{analyse, Returns};
use crate::template::{Holes, Template};
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ItemFn;

const SPEC: &[(&str, Kind)] = &[
    ("cache", Kind::Expr),
    ("keys", Kind::Strs),
    ("patterns", Kind::Strs),
    ("tags", Kind::Strs),
];

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let f: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(e.span(), "#[invalidates] goes on an `async fn` with a body")
    })?;
    let shape = analyse(&f, "invalidates", true)?;
    if let Returns::Option(_) = shape.returns {
        return Err(syn::Error::new_spanned(
            &shape.output,
            "#[invalidates] runs after the function succeeds: return `Result<T, E>` (it runs on \
             `Ok`) or a type that always succeeds, not `Option`",
        ));
    }
    let mut opts = Options::parse(attr, "invalidates", SPEC)?;
    let (_, cache_expr) = opts
        .expr("cache")
        .ok_or_else(|| missing("invalidates", "cache", "cache = CACHE"))?;
    let key_lits = opts.strs("keys");
    let pattern_lits = opts.strs("patterns");
    let tag_lits = opts.strs("tags");
    if key_lits.is_empty() && pattern_lits.is_empty() && tag_lits.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[invalidates] needs something to invalidate: `keys = [..]`, `patterns = [..]` or \
             `tags = [..]`",
        ));
    }
    let mut holes = Holes::new();
    let mut check = |lits: &[syn::LitStr]| -> syn::Result<Vec<Template>> {
        lits.iter()
            .map(|l| holes.template(l, &shape.args))
            .collect()
    };
    let keys = check(&key_lits)?;
    let patterns = check(&pattern_lits)?;
    let tags = check(&tag_lits)?;
    let sources = keys
        .iter()
        .chain(&patterns)
        .chain(&tags)
        .map(|t| t.source.as_str())
        .collect::<Vec<_>>()
        .join(", ");

    let k = krate();
    let cache = local("cache");
    let lookup = local("lookup");
    let render = local("render");
    let body = local("body");
    let out = local("out");
    let plan = local("plan");
    let failed = local("failed");
    let error = local("error");
    let text = local("text");

    // One `static` of parsed templates, keys then patterns then tags; each rendered template
    // goes into the invalidation by its kind. A template that does not render is reported and
    // the others still run: invalidating less than asked is better than nothing.
    let kinds = std::iter::repeat_n(quote!(key), keys.len())
        .chain(std::iter::repeat_n(quote!(pattern), patterns.len()))
        .chain(std::iter::repeat_n(quote!(tag), tags.len()));
    let all: Vec<Template> = keys.into_iter().chain(patterns).chain(tags).collect();
    let templates = parsed_once(&all);
    let steps = kinds.enumerate().map(|(n, kind)| {
        quote! {
            match #render(&#plan.0[#n]) {
                ::std::result::Result::Ok(#text) => #plan.1 = #plan.1.#kind(#text),
                ::std::result::Result::Err(#error) => {
                    #failed.get_or_insert(#error);
                }
            }
        }
    });
    let succeeded = match shape.returns {
        Returns::Result(_) => quote!(::std::result::Result::is_ok(&#out)),
        _ => quote!(true),
    };
    let log_render = log_once(
        quote!(error),
        &f.sig.ident,
        &sources,
        &error,
        "#[invalidates] template does not render; the other templates were invalidated",
    );
    let function = f.sig.ident.to_string();
    let handle = cache_handle(&cache, &cache_expr);
    let lookup_render = lookup_and_render(&holes, &lookup, &render);
    let output = &shape.output;
    let run = body_closure(&f, output, &body);

    let doc = format!(" Invalidates `{sources}` after it succeeds (`#[invalidates]`).");
    let attrs = &f.attrs;
    let vis = &f.vis;
    let sig = &f.sig;
    Ok(quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #doc]
        #vis #sig {
            #handle
            // Rendered from the arguments as passed, before the body takes them.
            let (#plan, #failed) = {
                #lookup_render
                let mut #plan = (#templates, #k::Invalidation::new());
                let mut #failed: ::std::option::Option<::std::string::String> =
                    ::std::option::Option::None;
                #(#steps)*
                (#plan.1, #failed)
            };
            #run
            let #out: #output = #body().await;
            if #succeeded {
                if let ::std::option::Option::Some(#error) = #failed {
                    #log_render
                }
                // Cancellation-safe and retried when the store refuses it (`Cache::invalidate`);
                // an error here means "queued", so the function's own result stands.
                if let ::std::result::Result::Err(#error) = #cache.invalidate(#plan).await {
                    #k::tracing::warn!(
                        namespace = %#cache.namespace(),
                        function = #function,
                        error = %#error,
                        "invalidation failed; queued for retry"
                    );
                }
            }
            #out
        }
    })
}
