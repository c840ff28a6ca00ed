use tower_valkey_cache_macros::cached;

#[cached(cache = CACHE, key = "user:{id}", tll = "5m")]
async fn profile(id: u64) -> Result<String, std::io::Error> {
    Ok(id.to_string())
}

fn main() {}
