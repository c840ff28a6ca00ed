use tower_valkey_cache_macros::invalidates;

// Did the write succeed on `None`? Ambiguous: the attribute asks for a `Result`.
#[invalidates(cache = CACHE, keys = ["user:{id}"])]
async fn update(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
