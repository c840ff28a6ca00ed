//! The checks shared by the header parser's property tests (`tests.rs`) and its fuzz target
//! (`fuzz/fuzz_targets/headers.rs`, through `crate::__fuzz`): on any bytes, no parser panics,
//! and the fail-closed properties hold.

use super::*;
use crate::layer::storable_200 as storable;

/// The checks the fuzz target runs on arbitrary bytes: no panic, and the fail-closed
/// properties that hold for every input.
pub(crate) fn check_parsers(data: &[u8]) {
    // Split the input into up to three lines at 0x00 (a byte no header value holds).
    let lines: Vec<&[u8]> = data.split(|&b| b == 0).take(3).collect();
    let parsed = CacheControl::parse_lines(lines.iter().copied());
    let _ = EntityTagList::parse_lines(lines.iter().copied());
    for l in &lines {
        let _ = EntityTag::parse(l);
        let _ = http_date(l);
        let _ = list_elements(l).count();
    }
    let Ok(values) = lines
        .iter()
        .map(|l| HeaderValue::from_bytes(l))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let mut h = HeaderMap::new();
    for v in &values {
        h.append(header::CACHE_CONTROL, v.clone());
        h.append(header::VARY, v.clone());
        h.append(header::AGE, v.clone());
        h.append(header::RANGE, v.clone());
        h.append("cache-tag", v.clone());
    }
    let _ = (vary(&h), age(&h), byte_range(&h));
    let _ = take_tags(&mut h.clone(), &mut Vec::new());
    // A response is storable only if its Cache-Control parsed and forbids nothing.
    let ok = storable(&h);
    if ok {
        assert!(parsed.as_ref().is_ok_and(|c| !c.forbids_storing()));
    }
    // Appending a forbidding directive to any line never leaves it storable.
    for d in ["private", "no-store", "no-cache", "No-Store"] {
        for at in 0..values.len() {
            let extended: Vec<Vec<u8>> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut v = v.as_bytes().to_vec();
                    if i == at {
                        v.extend_from_slice(b", ");
                        v.extend_from_slice(d.as_bytes());
                    }
                    v
                })
                .collect();
            let refs: Vec<&[u8]> = extended.iter().map(Vec::as_slice).collect();
            assert!(
                !storable_lines(&refs),
                "{d} appended to line {at} of {lines:?}"
            );
        }
    }
}

/// Whether a 200 with these `Cache-Control` lines would be stored.
pub(crate) fn storable_lines(lines: &[&[u8]]) -> bool {
    let mut h = HeaderMap::new();
    for l in lines {
        match HeaderValue::from_bytes(l) {
            Ok(v) => {
                h.append(header::CACHE_CONTROL, v);
            }
            // Not a header value: it cannot reach the cache at all.
            Err(_) => return false,
        }
    }
    storable(&h)
}
