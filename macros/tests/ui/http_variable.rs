use tower_valkey_cache_macros::cached;

// `{query.page}` is request data for CacheLayer; a function has arguments.
#[cached(cache = CACHE, key = "posts:{query.page}")]
async fn posts(page: u32) -> Vec<String> {
    vec![page.to_string()]
}

fn main() {}
