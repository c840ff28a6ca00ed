use tower_valkey_cache_macros::invalidates;

#[invalidates(cache = CACHE)]
async fn update(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {}
