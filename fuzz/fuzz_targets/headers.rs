//! The header parsers (`src/headers/`) on arbitrary bytes, split into up to three field lines at
//! each 0x00: never a panic; a response is storable only if its `Cache-Control` parsed and
//! forbids nothing; appending `private`, `no-store` or `no-cache` to any line never leaves it
//! storable. The checks live in `src/headers/check.rs` (shared with the property tests there);
//! `cargo fuzz` builds the crate with `--cfg fuzzing`, which exposes them as `__fuzz::headers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tower_valkey_cache::__fuzz::headers(data);
});
