use tower_valkey_cache_macros::cached;

#[cached(cache = CACHE, key = "user:{user_idd}")]
async fn profile(user_id: u64) -> Result<String, std::io::Error> {
    Ok(user_id.to_string())
}

fn main() {}
