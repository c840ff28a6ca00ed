use tower_valkey_cache_macros::cached;

#[cached(key = "user:{id}")]
async fn profile(id: u64) -> Result<String, std::io::Error> {
    Ok(id.to_string())
}

fn main() {}
