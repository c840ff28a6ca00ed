//! `Entry::decode` on arbitrary bytes: an entry or an error, never a panic; whatever decodes is
//! consistent and survives an encode/decode round trip.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tower_valkey_cache::entry::Entry;

fn check(data: &[u8]) {
    let raw = Bytes::copy_from_slice(data);
    let Ok(e) = Entry::decode(&raw) else { return };
    assert!(e.stored_at_ms <= e.fresh_until_ms && e.fresh_until_ms <= e.stale_until_ms);
    assert!(e.status == 0 || (100..1000).contains(&e.status));
    for now in [
        0,
        e.stored_at_ms,
        e.fresh_until_ms,
        e.stale_until_ms,
        u64::MAX,
    ] {
        let _ = (e.freshness(now), e.store_ttl(now), e.age(now));
    }
    let again = e.encode().expect("a decoded entry encodes");
    // The reserved flags byte is not kept and header names are normalised: compare decoded forms.
    assert_eq!(
        Entry::decode(&again).expect("a re-encoded entry decodes"),
        e
    );
    assert_eq!(again.len(), raw.len());
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Also behind a valid magic and version, so the fuzzer spends its time past them.
    let mut prefixed = b"TVC\x01".to_vec();
    prefixed.extend_from_slice(data);
    check(&prefixed);
});
