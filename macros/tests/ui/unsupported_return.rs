use tower_valkey_cache_macros::cached;

#[cached(cache = CACHE, key = "name:{id}")]
async fn name(id: u64) -> &'static str {
    let _ = id;
    "Ada"
}

fn main() {}
