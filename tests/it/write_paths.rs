//! Every write path carries every option (issue 16 item 4), on a real Valkey and on
//! `MemoryStore`: each write API × each invalidation kind.
//!
//! Each write API stores two entries, `w:1` tagged `t:1` and `w:2` tagged `t:2`, with a TTL of
//! 77 s; then one invalidation (by key `w:1`, by pattern `w:1*`, by tag `t:1`) must remove `w:1`
//! and leave `w:2`. Before that, both entries must carry their TTL (their freshness lifetime is
//! exactly 77 s). The tag is the option that got lost: `get_or_set_many` and `warm_values` used
//! to drop `Options::tags`, so a tag invalidation left batch-loaded data served.
//!
//! The write APIs: a `CacheLayer` fill, a `CacheLayer` background refresh (stale-while-revalidate,
//! over an entry another route stored without tags, so only the refresh can have tagged it),
//! `get_or_set`, `set`, `set_many`, `get_or_set_many`, `warm_values` and `#[cached]` (feature
//! `macros`). (`BoundedCache` has no tags, patterns or `Cache` invalidation: it does not apply.)

use crate::support;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use std::time::Duration;
use support::{eventually, Backend, StoreTimeouts};
use tower_valkey_cache::entry::Entry;
use tower_valkey_cache::function::Options;
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const OP: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(77);

#[derive(Clone, Copy, Debug)]
enum Api {
    Fill,
    Refresh,
    GetOrSet,
    Set,
    SetMany,
    GetOrSetMany,
    WarmValues,
    #[cfg(feature = "macros")]
    Cached,
}

const APIS: &[Api] = &[
    Api::Fill,
    Api::Refresh,
    Api::GetOrSet,
    Api::Set,
    Api::SetMany,
    Api::GetOrSetMany,
    Api::WarmValues,
    #[cfg(feature = "macros")]
    Api::Cached,
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Key,
    Pattern,
    Tag,
}

fn opts(id: u32) -> Options {
    Options::new().ttl(TTL).tags([format!("t:{id}")])
}

#[cfg(feature = "macros")]
#[tower_valkey_cache::cached(cache = cache, key = "w:{id}", ttl = "77s", tags = ["t:{id}"])]
async fn cached_value(cache: &Cache, id: u32) -> Result<String, std::convert::Infallible> {
    Ok(format!("value {id}"))
}

/// `GET /fill/{id}`: key `w:{id}`, tag `t:{id}`, TTL 77 s. `GET /seed/{id}`: the same key,
/// untagged, fresh for 1 s and then stale for 2 min. `GET /refresh/{id}`: the same key, tagged,
/// TTL 77 s, serving stale entries while it refreshes them.
fn app(cache: &Cache) -> Router {
    let handler = |Path(id): Path<u32>| async move { format!("value {id}") };
    let tagged = CacheLayer::new(cache.clone())
        .key("w:{id}")
        .tags(["t:{id}"])
        .ttl(TTL);
    Router::new()
        .route("/fill/{id}", get(handler).route_layer(tagged.clone()))
        .route(
            "/seed/{id}",
            get(handler).route_layer(
                CacheLayer::new(cache.clone())
                    .key("w:{id}")
                    .ttl(Duration::from_secs(1))
                    .stale_while_revalidate(Duration::from_secs(120)),
            ),
        )
        .route(
            "/refresh/{id}",
            get(handler).route_layer(tagged.stale_while_revalidate(Duration::from_secs(120))),
        )
}

/// Stores `w:1` and `w:2` through `api`.
async fn write(api: Api, cache: &Cache, app: &Router) {
    for id in [1u32, 2] {
        let key = format!("w:{id}");
        let value = format!("value {id}");
        match api {
            Api::Fill => {
                let r = support::get(app, &format!("/fill/{id}")).await;
                assert!(r.cache_status().ends_with("stored"), "{}", r.cache_status());
            }
            Api::Refresh => {
                // The entry another route stored, without tags.
                support::get(app, &format!("/seed/{id}")).await;
            }
            Api::GetOrSet => {
                let v: Result<String, ()> = cache
                    .get_or_set_with(&key, &opts(id), || async { Ok(value) })
                    .await;
                v.unwrap();
            }
            Api::Set => cache.set(&key, &value, &opts(id)).await.unwrap(),
            Api::SetMany => {
                let n = cache
                    .set_many([(key.as_str(), &value)], &opts(id))
                    .await
                    .unwrap();
                assert_eq!(n, 1);
            }
            Api::GetOrSetMany => {
                let v = cache
                    .get_or_set_many(
                        &[id],
                        |id| format!("w:{id}"),
                        &opts(id),
                        |ids| async move {
                            Ok::<_, ()>(
                                ids.into_iter()
                                    .map(|id| (id, format!("value {id}")))
                                    .collect(),
                            )
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(v, vec![Some(value)]);
            }
            Api::WarmValues => {
                let n = cache
                    .warm_values([(key, value)], 10, &opts(id))
                    .await
                    .unwrap();
                assert_eq!(n, 1);
            }
            #[cfg(feature = "macros")]
            Api::Cached => assert_eq!(cached_value(cache, id).await.unwrap(), value),
        }
    }
    if let Api::Refresh = api {
        // Once stale, a request through the tagged route is answered stale and refreshes the
        // entry in the background: the refresh is the only write that can have tagged it.
        let fresh_until = entry(cache, "w:2").await.expect("seeded").fresh_until_ms;
        let wait = fresh_until.saturating_sub(tower_valkey_cache::entry::now_ms()) + 100;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for id in [1u32, 2] {
            let r = support::get(app, &format!("/refresh/{id}")).await;
            assert!(
                r.cache_status().contains("ttl=-"),
                "stale: {}",
                r.cache_status()
            );
        }
        eventually(LIMIT, "both refreshes", || async {
            (cache.stats().refreshes == 2).then_some(())
        })
        .await;
    }
}

async fn entry(cache: &Cache, key: &str) -> Option<Entry> {
    let raw = support::stored(cache, key).await?;
    Some(Entry::decode(&raw).expect("an entry"))
}

async fn invalidate(kind: Kind, cache: &Cache) -> u64 {
    match kind {
        Kind::Key => cache.invalidate_key("w:1").await,
        Kind::Pattern => cache.invalidate_pattern("w:1*").await,
        Kind::Tag => cache.invalidate_tag("t:1").await,
    }
    .unwrap()
}

async fn every_write_path_carries_every_option(b: Backend) {
    let mut failures = Vec::new();
    for &api in APIS {
        for kind in [Kind::Key, Kind::Pattern, Kind::Tag] {
            let cache = b.cache(&format!("wp-{api:?}-{kind:?}"), OP);
            let app = app(&cache);
            write(api, &cache, &app).await;
            for key in ["w:1", "w:2"] {
                let e = entry(&cache, key).await;
                let lifetime = e.as_ref().map(|e| e.fresh_until_ms - e.stored_at_ms);
                if lifetime != Some(TTL.as_millis() as u64) {
                    failures.push(format!("{api:?}: {key} lives {lifetime:?} ms, not 77 s"));
                }
            }
            let removed = invalidate(kind, &cache).await;
            let (w1, w2) = (entry(&cache, "w:1").await, entry(&cache, "w:2").await);
            if w1.is_some() || removed == 0 {
                failures.push(format!(
                    "{api:?} x {kind:?}: w:1 not removed (removed {removed})"
                ));
            }
            if w2.is_none() {
                failures.push(format!("{api:?} x {kind:?}: w:2 removed too"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} write path x invalidation failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

mod valkey {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_write_api_by_every_invalidation_kind() {
        super::every_write_path_carries_every_option(super::Backend::valkey(super::VALKEY)).await
    }
}

mod memory {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_write_api_by_every_invalidation_kind() {
        super::every_write_path_carries_every_option(super::Backend::memory(
            super::MemoryStore::new(),
        ))
        .await
    }
}
