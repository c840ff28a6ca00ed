//! Compile errors of `#[cached]` and `#[invalidates]`, each on the token at fault (the cases in
//! `tests/ui`, with the expected `.stderr` next to them). The cases name only this crate, so
//! trybuild builds nothing but it and syn.
//!
//! After a change to a message: `TRYBUILD=overwrite cargo test -p tower-valkey-cache-macros`,
//! then review the `.stderr` diff.

#[test]
fn compile_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
