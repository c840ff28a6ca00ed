use tower_valkey_cache_macros::cached;

#[cached(cache = CACHE, key = "user:{id}", stale_if_error = "1m")]
async fn profile(id: u64) -> String {
    id.to_string()
}

fn main() {}
