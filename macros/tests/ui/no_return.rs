use tower_valkey_cache_macros::cached;

#[cached(cache = CACHE, key = "touch:{id}")]
async fn touch(id: u64) {
    let _ = id;
}

fn main() {}
