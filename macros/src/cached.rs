//! `#[cached]`: the function's body becomes the loader of `Cache::get_or_set_with` (or
//! `get_or_set_if` when some values must not be stored), keyed by a template over its arguments.

use crate::common::{
    body_closure, cache_handle, krate, local, log_once, lookup_and_render, parsed_once,
};
use crate::duration;
use crate::options::{missing, Kind, Options};
use crate::signature::{analyse, Returns};
use crate::template::Holes;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, ItemFn};

const SPEC: &[(&str, Kind)] = &[
    ("cache", Kind::Expr),
    ("key", Kind::Str),
    ("ttl", Kind::Str),
    ("stale_if_error", Kind::Str),
    ("tags", Kind::Strs),
    ("codec", Kind::Expr),
    ("unless", Kind::Expr),
    ("cache_none", Kind::Bool),
];

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let f: ItemFn = syn::parse2(item)
        .map_err(|e| syn::Error::new(e.span(), "#[cached] goes on an `async fn` with a body"))?;
    let shape = analyse(&f, "cached", false)?;
    let mut opts = Options::parse(attr, "cached", SPEC)?;
    let (_, cache_expr) = opts
        .expr("cache")
        .ok_or_else(|| missing("cached", "cache", "cache = CACHE"))?;
    let key_lit = opts
        .str("key")
        .ok_or_else(|| missing("cached", "key", "key = \"user:{id}\""))?;
    let ttl = opts
        .str("ttl")
        .map(|lit| {
            let ms = duration::millis(&lit)?;
            if ms == 0 {
                return Err(syn::Error::new(
                    lit.span(),
                    "a zero TTL keeps nothing fresh: give a duration, or leave `ttl` out for \
                     the cache's default",
                ));
            }
            Ok(ms)
        })
        .transpose()?;
    let stale_lit = opts.str("stale_if_error");
    if let (Some(lit), Returns::Option(_) | Returns::Plain(_)) = (&stale_lit, &shape.returns) {
        return Err(syn::Error::new(
            lit.span(),
            "`stale_if_error` serves a stale value when the function fails: it needs a \
             `Result` return type",
        ));
    }
    let stale = stale_lit.as_ref().map(duration::millis).transpose()?;
    let tag_lits = opts.strs("tags");
    let codec = opts.expr("codec").map(|(_, e)| codec_path(e));
    let unless = opts.expr("unless");
    let cache_none = opts.bool("cache_none");
    if let Some((name, _)) = &cache_none {
        if !matches!(shape.returns, Returns::Option(_)) {
            return Err(syn::Error::new(
                name.span(),
                "`cache_none` is for functions returning `Option<T>`",
            ));
        }
    }
    let store_none = cache_none.as_ref().is_none_or(|(_, b)| b.value);

    let mut holes = Holes::new();
    let key_t = holes.template(&key_lit, &shape.args)?;
    let tag_ts = tag_lits
        .iter()
        .map(|t| holes.template(t, &shape.args))
        .collect::<syn::Result<Vec<_>>>()?;
    let sources = std::iter::once(&key_t)
        .chain(&tag_ts)
        .map(|t| t.source.as_str())
        .collect::<Vec<_>>()
        .join(", ");

    let k = krate();
    let cache = local("cache");
    let lookup = local("lookup");
    let render = local("render");
    let key = local("key");
    let tags = local("tags");
    let options = local("options");
    let body = local("body");
    let error = local("error");
    let value = local("value");
    let never = local("never");
    let not_stored = local("not_stored");

    let templates = parsed_once(&[key_t].into_iter().chain(tag_ts).collect::<Vec<_>>());
    let output = &shape.output;
    let output_span = output.span();

    // The options, built per call (tags are rendered per call; the rest is a few words).
    let ttl = ttl.map(|ms| quote!(.ttl(::std::time::Duration::from_millis(#ms))));
    let stale = stale.map(|ms| quote!(.stale_if_error(::std::time::Duration::from_millis(#ms))));
    let codec = codec.map(|c| quote!(.codec(#c)));

    // Values not to store: `unless` (a `Fn(&V) -> bool`, V the stored value's type) and `None`
    // with `cache_none = false`.
    let stored = shape.returns.stored();
    let unless_check = match (&unless, stored) {
        (Some((name, _)), None) => {
            return Err(syn::Error::new(
                name.span(),
                "`unless` needs the cached type written out: return `Result<T, E>`",
            ))
        }
        (Some((_, expr)), Some(t)) => Some(quote_spanned! {expr.span()=>
            let #not_stored: &(dyn ::std::ops::Fn(&#t) -> bool + ::std::marker::Sync) = &(#expr);
        }),
        (None, _) => None,
    };
    let predicate = match (unless_check.is_some(), store_none, stored) {
        (false, true, _) => None,
        (true, true, Some(t)) => Some(quote!(|#value: &#t| !#not_stored(#value))),
        (false, false, Some(t)) => {
            Some(quote!(|#value: &#t| ::std::option::Option::is_some(#value)))
        }
        (true, false, Some(t)) => Some(quote! {
            |#value: &#t| ::std::option::Option::is_some(#value) && !#not_stored(#value)
        }),
        (_, _, None) => None,
    };
    let get_or_set = |loader: TokenStream| match &predicate {
        None => quote_spanned! {output_span=>
            #cache.get_or_set_with(&#key, &#options, #loader).await
        },
        Some(p) => quote_spanned! {output_span=>
            #cache.get_or_set_if(&#key, &#options, #p, #loader).await
        },
    };
    let cached_call = match shape.returns {
        Returns::Result(_) => get_or_set(quote!(#body)),
        Returns::Option(_) | Returns::Plain(_) => {
            let call = get_or_set(quote! {
                move || async move {
                    ::std::result::Result::Ok::<_, ::std::convert::Infallible>(#body().await)
                }
            });
            quote! {
                match #call {
                    ::std::result::Result::Ok(#value) => #value,
                    ::std::result::Result::Err(#never) => match #never {},
                }
            }
        }
    };

    let log = log_once(
        quote!(error),
        &f.sig.ident,
        &sources,
        &error,
        "#[cached] key or tag template does not render; called without the cache",
    );
    let handle = cache_handle(&cache, &cache_expr);
    let lookup_render = lookup_and_render(&holes, &lookup, &render);
    let loader = body_closure(&f, output, &body);

    let cached_doc = format!(
        " Cached by `#[cached]` (templates `{sources}`); `{}_uncached` runs the body without \
         the cache.",
        f.sig.ident
    );
    let attrs = &f.attrs;
    let vis = &f.vis;
    let sig = &f.sig;
    let name = &sig.ident;
    let cached_fn = quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #cached_doc]
        #vis #sig {
            #handle
            let (#key, #tags) = {
                #lookup_render
                let mut #tags = #templates.iter().map(&#render);
                // The first template is the key; there is always one.
                let #key = #tags.next().unwrap_or_else(|| {
                    ::std::result::Result::Err(::std::string::String::from("no key template"))
                });
                (
                    #key,
                    #tags.collect::<::std::result::Result<::std::vec::Vec<_>, _>>(),
                )
            };
            #loader
            match (#key, #tags) {
                (::std::result::Result::Ok(#key), ::std::result::Result::Ok(#tags)) => {
                    let #options = #k::function::Options::new() #ttl #stale #codec .tags(#tags);
                    #unless_check
                    #cached_call
                }
                (::std::result::Result::Err(#error), _) | (_, ::std::result::Result::Err(#error)) => {
                    #log
                    #body().await
                }
            }
        }
    };

    // The bypass: the same function without the cache.
    let mut twin = f.clone();
    twin.sig.ident = format_ident!("{}_uncached", name);
    twin.attrs.retain(|a| !a.path().is_ident("doc"));
    let doc = format!(
        " `{name}` without the cache: the same body, run every time (for tests, admin tools, \
         or a caller that needs the source of truth). Generated by `#[cached]`."
    );
    let twin = quote! {
        #[doc = #doc]
        #[allow(dead_code, unused_variables)]
        #twin
    };
    Ok(quote!(#cached_fn #twin))
}

/// `codec = Postcard` means `Codec::Postcard`; any other expression is used as it is.
fn codec_path(e: Expr) -> TokenStream {
    let k = krate();
    match &e {
        Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
            let id = p.path.get_ident();
            quote!(#k::function::Codec::#id)
        }
        _ => quote!(#e),
    }
}
