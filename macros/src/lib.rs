//! The `#[cached]` and `#[invalidates]` attributes of
//! [tower-valkey-cache](https://docs.rs/tower-valkey-cache). Use them through that crate's
//! `macros` feature (`tower_valkey_cache::{cached, invalidates}`): the code they generate calls
//! its public API (`Cache::get_or_set_with`, `Cache::get_or_set_if`, `function::Options`,
//! `Cache::invalidate`, `Invalidation`, `key::KeyTemplate`) through the path
//! `::tower_valkey_cache`, and logs through its `tracing` re-export.

#![deny(missing_docs, unsafe_code, unreachable_pub)]
#![warn(rust_2018_idioms)]

mod cached;
mod common;
mod duration;
mod invalidates;
mod options;
mod signature;
mod template;

use proc_macro::TokenStream;

/// Caches an `async fn`'s result in a `tower_valkey_cache::Cache`, keyed by a template over its
/// arguments, with `Cache::get_or_set_with`'s guarantees: one run of the body per key at a time
/// in this process (single-flight), the invalidation guard, stale-if-error, and the body called
/// directly when the store is down.
///
/// ```text
/// #[cached(cache = CACHE, key = "user:{user_id}", ttl = "5m")]
/// async fn user_profile(db: &Db, user_id: u64) -> Result<Profile, DbError> { .. }
/// ```
///
/// | option | value |
/// |---|---|
/// | `cache = EXPR` (required) | the `Cache`: a static (`static CACHE: LazyLock<Cache>`), `self.cache` in a method, or an argument (`&Cache`, `Cache`, `Arc<Cache>`); evaluated once per call, before the body |
/// | `key = "..."` (required) | the key template: `{arg}` is an argument's `Display` value, `{arg.field}` (or `{arg.0}`, `{self.field}`) a field of one, escaped exactly as `KeyTemplate` escapes path parameters; `{{` and `}}` are literal braces |
/// | `ttl = "5m"` | freshness (`ms`, `s`, `m`, `h`, `d`, combinable: `"1h30m"`); default: the cache's TTL |
/// | `stale_if_error = "1m"` | how long past its freshness a value is served when the body returns `Err` (`Result` only) |
/// | `tags = ["user:{user_id}", ..]` | tag templates recorded with the value, for `Cache::invalidate_tag` and `#[invalidates(tags = ..)]` |
/// | `codec = Postcard` | `function::Codec` variant (or any expression of type `Codec`); default JSON |
/// | `unless = PREDICATE` | a closure or function `Fn(&V) -> bool` (and `Sync`): when it returns true the value is returned but not stored. `V` is `T` for `Result<T, E>`, the whole `Option<T>`, or the plain return type |
/// | `cache_none = false` | for `Option<T>`: `None` is returned but not stored (default: stored) |
///
/// **What is stored**, read from the return type as written: `Result<T, E>` (any path ending in
/// `Result`, e.g. `io::Result<T>`) only on `Ok`; `Option<T>` including `None` unless
/// `cache_none = false`; any other `T: Serialize + DeserializeOwned` always. A value that is
/// not stored still goes to the callers waiting on the same load.
///
/// **The bypass**: next to `NAME` the attribute generates `NAME_uncached`, the same function
/// (same signature, attributes and body) without the cache. Consequently `#[cached]` cannot go
/// on a method of a trait implementation (the twin is not a member of the trait).
///
/// **Compile-time checks**, with the error on the attribute's token: every template hole must
/// name an argument (or a field path of one), templates must be well formed, durations must
/// parse, the function must be `async` and return a cacheable type (not `()`, a reference,
/// `impl Trait`, ...), and options must be known. At run time the templates are parsed once (a
/// `static`); if one ever fails to parse or render, the call runs the body without the cache
/// and the failure is logged once (`tracing`, level error).
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(cached::expand, attr, item)
}

/// Invalidates cache entries after an `async fn` succeeds (returns `Ok`, or returns at all for a
/// return type that is not a `Result`), through `Cache::invalidate`: cancellation-safe once
/// started, and queued for retry when the store does not take it (this process then reads
/// around the cache until it lands), as `InvalidateLayer` does.
///
/// ```text
/// #[invalidates(cache = CACHE, keys = ["user:{id}"], patterns = ["user_{id}_posts:*"], tags = ["user:{id}"])]
/// async fn update_user(db: &Db, id: u64, change: Change) -> Result<(), DbError> { .. }
/// ```
///
/// | option | value |
/// |---|---|
/// | `cache = EXPR` (required) | as for `#[cached]` |
/// | `keys = ["..", ..]` | exact key templates |
/// | `patterns = ["..", ..]` | glob pattern templates: literal `*` and `?` match, substituted values never do (they are escaped) |
/// | `tags = ["..", ..]` | tag templates |
///
/// At least one of `keys`, `patterns`, `tags`. Templates are rendered from the arguments as
/// passed, before the body runs. If the function's future is dropped before the body returns,
/// nothing is invalidated; once the body has returned `Ok`, the invalidation runs to the end
/// even if the caller goes away.
#[proc_macro_attribute]
pub fn invalidates(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(invalidates::expand, attr, item)
}

/// Runs an expansion; on error, the error and the item unchanged (so the rest of the crate still
/// resolves it and only the attribute's error is reported).
fn expand(
    f: fn(
        proc_macro2::TokenStream,
        proc_macro2::TokenStream,
    ) -> syn::Result<proc_macro2::TokenStream>,
    attr: TokenStream,
    item: TokenStream,
) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match f(attr.into(), item.clone()) {
        Ok(out) => out.into(),
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(item);
            out.into()
        }
    }
}
