//! The `Cache-Status` parser of the `testing` module on arbitrary header values: never a panic,
//! and `parse` is the last member `parse_all` finds.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tower_valkey_cache::testing::CacheStatus;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = HeaderValue::from_bytes(data) {
        let all = CacheStatus::parse_all(&v);
        assert!(all.len() <= data.len());
        assert_eq!(
            all.last().cloned().unwrap_or_default(),
            CacheStatus::parse(&v)
        );
        for s in &all {
            let _ = (s.is_hit(), s.is_stale(), s.is_miss(), s.is_bypass());
            let _ = s.is_store_unavailable();
        }
    }
    let _ = CacheStatus::parse_str(&String::from_utf8_lossy(data));
});
