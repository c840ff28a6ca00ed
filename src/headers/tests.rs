//! The header parsers: every form of the grammar, what fails closed, and properties over
//! arbitrary bytes (no panic; a forbidding directive or a byte `>= 0x80` in a quoted value never
//! makes a response storable). `fuzz/fuzz_targets/headers.rs` runs the same checks
//! ([`check_parsers`]) under libFuzzer.

use super::check::{check_parsers, storable_lines};
use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn cc(lines: &[&[u8]]) -> Result<CacheControl, Unparsable> {
    CacheControl::parse_lines(lines.iter().copied())
}

fn names(c: &CacheControl) -> Vec<&str> {
    c.directives().iter().map(|d| d.name()).collect()
}

#[test]
fn cache_control_directive_forms() {
    let c = cc(&[b"no-store"]).unwrap();
    assert_eq!(names(&c), ["no-store"]);
    assert_eq!(c.get("no-store").unwrap().value(), None);

    let c = cc(&[b"max-age=60, s-maxage=\"30\", ext=tok, q=\"a\\\"b\\\\c\""]).unwrap();
    assert_eq!(names(&c), ["max-age", "s-maxage", "ext", "q"]);
    assert_eq!(c.delta("max-age"), Some(Delta::Secs(60)));
    assert_eq!(c.delta("s-maxage"), Some(Delta::Secs(30)));
    assert!(c.get("s-maxage").unwrap().is_quoted());
    assert_eq!(c.get("ext").unwrap().value(), Some(&b"tok"[..]));
    assert!(!c.get("ext").unwrap().is_quoted());
    // Escapes removed.
    assert_eq!(c.get("q").unwrap().value(), Some(&b"a\"b\\c"[..]));
    // A comma inside a quoted string does not separate.
    let c = cc(&[b"ext=\"a, no-store\", max-age=5"]).unwrap();
    assert_eq!(names(&c), ["ext", "max-age"]);
    assert!(!c.forbids_storing());
    // Even after an escaped quote.
    let c = cc(&[b"ext=\"a\\\", no-store\""]).unwrap();
    assert_eq!(names(&c), ["ext"]);
    assert!(!c.forbids_storing());
}

#[test]
fn cache_control_names_are_case_insensitive_and_unknown_ones_kept() {
    let c = cc(&[b"No-Store, MAX-AGE=5, X-Vendor-Thing, community=\"UCI\""]).unwrap();
    assert_eq!(
        names(&c),
        ["no-store", "max-age", "x-vendor-thing", "community"]
    );
    assert!(c.has("x-vendor-thing") && c.forbids_storing());
    assert_eq!(c.delta("max-age"), Some(Delta::Secs(5)));
}

#[test]
fn cache_control_lists_and_lines() {
    // Empty elements, OWS around commas, several lines as one list.
    let c = cc(&[b" , public ,, max-age=1 ,", b"", b"\tprivate\t"]).unwrap();
    assert_eq!(names(&c), ["public", "max-age", "private"]);
    assert!(c.forbids_storing());
    assert!(cc(&[]).unwrap().is_empty());
    assert!(cc(&[b" , , "]).unwrap().is_empty());
    // One bad line spoils the field, whatever the others say.
    assert_eq!(cc(&[b"private", b"max-age=\"1"]), Err(Unparsable));
}

#[test]
fn cache_control_obs_text_is_legal_only_in_quoted_strings() {
    let c = cc(&["private, ext=\"café\"".as_bytes()]).unwrap();
    assert!(c.has("private") && c.forbids_storing());
    assert_eq!(c.get("ext").unwrap().value(), Some("café".as_bytes()));
    assert!(cc(&[b"ext=\"\x80\xff\", no-store"])
        .unwrap()
        .forbids_storing());
    assert!(cc(&[b"ext=\"\\\xff\""]).is_ok(), "quoted-pair of obs-text");
    for bad in [
        &b"no-store\xff"[..],
        b"caf\xc3\xa9",
        b"ext=caf\xc3\xa9",
        b"\x80, private",
    ] {
        assert_eq!(cc(&[bad]), Err(Unparsable), "{bad:?}");
    }
}

#[test]
fn cache_control_bad_syntax_does_not_parse() {
    for bad in [
        &b"max-age=\"5"[..], // unterminated
        b"ext=\"a\\",        // escape at the end
        b"ext=\"a\x01\"",    // control byte in a quoted string
        b"ext=\"a\\\x7f\"",  // DEL after a backslash
        b"=5",               // no name
        b"max-age=",         // no value
        b"max-age = 5",      // white space around `=`
        b"max age",          // two tokens
        b"private; x",       // not a list separator
        b"ext=\"a\"b",       // text after a quoted string
        b"ext=a\"b\"",       // quote inside a token
        b"(comment)",
        b"max-age=5 6",
    ] {
        assert_eq!(
            cc(&[bad]),
            Err(Unparsable),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn delta_seconds_values() {
    let d = |v: &[u8]| cc(&[v]).unwrap().delta("max-age");
    assert_eq!(d(b"max-age=0"), Some(Delta::Secs(0)));
    assert_eq!(d(b"max-age=007"), Some(Delta::Secs(7)));
    assert_eq!(d(b"max-age=\"12\""), Some(Delta::Secs(12)));
    // Too large saturates at 2^31 (RFC 9111 §1.2.2).
    assert_eq!(
        d(b"max-age=99999999999999999999999"),
        Some(Delta::Secs(1 << 31))
    );
    for invalid in [
        &b"max-age"[..],
        b"max-age=-1",
        b"max-age=1.5",
        b"max-age=\"\"",
        b"max-age=1a",
    ] {
        assert_eq!(d(invalid), Some(Delta::Invalid), "{invalid:?}");
    }
    assert_eq!(d(b"public"), None);
    // The first of several is used.
    assert_eq!(d(b"max-age=1, max-age=2"), Some(Delta::Secs(1)));
    let c = cc(&[b"max-age=10, s-maxage=x"]).unwrap();
    assert_eq!(c.shared_max_age(), Some(Duration::ZERO));
}

#[test]
fn entity_tags() {
    let t = EntityTag::parse(b" W/\"a,b\" ").unwrap();
    assert!(t.weak);
    assert_eq!(t.opaque, b"a,b");
    assert_eq!(EntityTag::parse(b"\"\"").unwrap().opaque, b"");
    assert_eq!(EntityTag::parse(b"\"\xe9\"").unwrap().opaque, b"\xe9");
    for bad in [
        &b"a"[..],
        b"\"a",
        b"w/\"a\"",
        b"W/a",
        b"\"a\"b",
        b"\"a\" \"b\"",
        b"\"a\"\"",
    ] {
        assert_eq!(EntityTag::parse(bad), None, "{bad:?}");
    }
    let strong = EntityTag::parse(b"\"a\"").unwrap();
    assert!(t.weak_eq(&EntityTag::parse(b"\"a,b\"").unwrap()));
    assert!(!strong.weak_eq(&t));
}

#[test]
fn entity_tag_lists() {
    fn l(v: &[u8]) -> Result<EntityTagList<'_>, Unparsable> {
        EntityTagList::parse_lines([v])
    }
    assert_eq!(l(b"*"), Ok(EntityTagList::Any));
    assert_eq!(l(b" * , "), Ok(EntityTagList::Any));
    assert_eq!(l(b""), Ok(EntityTagList::Tags(vec![])));
    let Ok(EntityTagList::Tags(tags)) = l(b"\"a,b\", W/\"c\",,\"\"") else {
        panic!("list")
    };
    let opaque: Vec<&[u8]> = tags.iter().map(|t| t.opaque).collect();
    assert_eq!(opaque, [&b"a,b"[..], b"c", b""]);
    for bad in [
        &b"*, \"a\""[..],
        b"**",
        b"\"a",
        b"a",
        b"\"a\" x",
        b"\"a\"\"b\"",
    ] {
        assert_eq!(l(bad), Err(Unparsable), "{bad:?}");
    }
}

#[test]
fn dates_ages_and_ranges() {
    let t = http_date(b"Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    assert_eq!(http_date(b" Sunday, 06-Nov-94 08:49:37 GMT "), Some(t));
    assert_eq!(http_date(b"Sun Nov  6 08:49:37 1994"), Some(t));
    assert_eq!(http_date(b"0"), None);
    assert_eq!(http_date(b"Sun, 06 Nov 1994 08:49:37 GMT\xff"), None);

    let mut h = HeaderMap::new();
    h.append(
        header::EXPIRES,
        HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
    );
    assert_eq!(date_field(&h, &header::EXPIRES), Some(t));
    h.append(
        header::EXPIRES,
        HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
    );
    assert_eq!(date_field(&h, &header::EXPIRES), None, "two lines");

    let age = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(header::AGE, HeaderValue::from_static(v));
        super::age(&h)
    };
    assert_eq!(age("15"), Some(15));
    assert_eq!(age(" 15 , 30"), Some(15));
    assert_eq!(age("-1"), None);
    assert_eq!(age("1.5"), None);
    assert_eq!(age("99999999999999999999"), Some(1 << 31));
    assert_eq!(super::age(&HeaderMap::new()), None);

    let range = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static(v));
        byte_range(&h)
    };
    assert_eq!(range("bytes=0-99"), Some(ByteRange::FromTo(0, Some(99))));
    assert_eq!(range("Bytes=100-"), Some(ByteRange::FromTo(100, None)));
    assert_eq!(range("bytes=-500"), Some(ByteRange::Suffix(500)));
    for v in [
        "bytes=0-1,3-4",
        "bytes=5-1",
        "items=0-1",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "0-1",
    ] {
        assert_eq!(range(v), None, "{v}");
    }
}

#[test]
fn vary_fields() {
    let v = |lines: &[&[u8]]| {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(header::VARY, HeaderValue::from_bytes(l).unwrap());
        }
        vary(&h)
    };
    assert_eq!(v(&[]), Ok(VaryField::Names(vec![])));
    assert_eq!(
        v(&[b"Accept-Language, accept-encoding", b"ACCEPT-LANGUAGE,"]),
        Ok(VaryField::Names(vec![
            "accept-encoding".into(),
            "accept-language".into()
        ]))
    );
    assert_eq!(v(&[b"accept", b"*"]), Ok(VaryField::Star));
    for bad in [&b"a b"[..], b"caf\xc3\xa9", b"\"accept\"", b"a;b"] {
        assert_eq!(v(&[bad]), Err(Unparsable), "{bad:?}");
    }
}

#[test]
fn tags_fail_closed_and_never_reach_the_client() {
    let mut h = HeaderMap::new();
    h.append("surrogate-key", HeaderValue::from_static("b  a\tc"));
    h.append("cache-tag", HeaderValue::from_static(" x , y,,a"));
    let mut tags = vec!["z".to_owned()];
    assert_eq!(take_tags(&mut h, &mut tags), Ok(()));
    assert_eq!(tags, ["a", "b", "c", "x", "y", "z"]);
    assert!(h.is_empty());

    let mut h = HeaderMap::new();
    h.append("surrogate-key", HeaderValue::from_static("a"));
    h.append(
        "cache-tag",
        HeaderValue::from_bytes(b"caf\xc3\xa9, b").unwrap(),
    );
    let mut tags = Vec::new();
    assert_eq!(take_tags(&mut h, &mut tags), Err(Unparsable));
    assert!(h.is_empty(), "removed also when they do not parse");
}

#[test]
fn cache_status_members_are_appended() {
    let name = HeaderName::from_static("cache-status");
    let ours = HeaderValue::from_static("ours; hit");
    let mut h = HeaderMap::new();
    append_member(&mut h, name.clone(), ours.clone());
    assert_eq!(h.get_all(&name).iter().collect::<Vec<_>>(), [&ours]);

    let mut h = HeaderMap::new();
    h.append(&name, HeaderValue::from_static("origin; fwd=uri-miss"));
    h.append(&name, HeaderValue::from_static(" inner; hit "));
    h.append(&name, HeaderValue::from_static(""));
    append_member(&mut h, name.clone(), ours);
    assert_eq!(
        h.get_all(&name).iter().collect::<Vec<_>>(),
        ["origin; fwd=uri-miss, inner; hit, ours; hit"]
    );
}

#[test]
fn credentials() {
    for (name, _) in &CREDENTIALS {
        assert!(is_credential(name));
    }
    assert!(!is_credential(&header::RANGE));
}

#[test]
fn list_elements_respect_quotes() {
    let e: Vec<&[u8]> = list_elements(b" a , \"b,c\" ,, \"d\\\",e\" , \"open, f").collect();
    assert_eq!(e, [&b"a"[..], b"\"b,c\"", b"\"d\\\",e\"", b"\"open, f"]);
}

/// Bytes a header value may hold, biased towards the grammar's interesting characters.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"\",\\=; \tWp/*-".to_vec()),
            3 => 0x21u8..0x7F,
            1 => 0x80u8..=0xFF,
        ],
        0..40,
    )
}

/// A directive in any of its forms.
fn directive() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "public",
            "max-age",
            "s-maxage",
            "x-ext",
            "immutable",
            "community",
        ]),
        prop_oneof![
            Just(String::new()),
            "=[0-9a-z]{1,4}",
            "=\"([ !#-\\[\\]-~]|\\\\[ -~]){0,8}\"",
        ],
    )
        .prop_map(|(n, v)| format!("{n}{v}"))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// The fuzz target's checks, on random bytes.
    #[test]
    fn parsers_never_panic_and_fail_closed(data in prop::collection::vec(any::<u8>(), 0..120)) {
        check_parsers(&data);
    }

    /// The same on inputs close to the grammar.
    #[test]
    fn near_grammar_inputs_fail_closed(lines in prop::collection::vec(value_bytes(), 1..3)) {
        check_parsers(&lines.join(&0u8));
    }

    /// Any line of valid directives: appending a forbidding one anywhere never leaves the
    /// response storable, and without one it is storable.
    #[test]
    fn forbidding_directives_are_always_seen(
        lines in prop::collection::vec(prop::collection::vec(directive(), 0..4), 1..3),
        forbid in prop::sample::select(vec!["private", "no-store", "no-cache", "PRIVATE", "private=\"set-cookie\"", "no-cache=\"x, y\""]),
        line in any::<prop::sample::Index>(),
        pos in any::<prop::sample::Index>(),
    ) {
        let joined: Vec<String> = lines.iter().map(|l| l.join(", ")).collect();
        let refs: Vec<&[u8]> = joined.iter().map(|l| l.as_bytes()).collect();
        prop_assert!(storable_lines(&refs), "{joined:?}");
        let mut with = lines.clone();
        let at = line.index(with.len());
        let p = pos.index(with[at].len() + 1);
        with[at].insert(p, forbid.to_string());
        let joined: Vec<String> = with.iter().map(|l| l.join(", ")).collect();
        let refs: Vec<&[u8]> = joined.iter().map(|l| l.as_bytes()).collect();
        prop_assert!(!storable_lines(&refs), "{joined:?}");
    }

    /// A byte `>= 0x80` inside a quoted value (legal obs-text) never makes a forbidding line
    /// storable: the line parses and still forbids.
    #[test]
    fn obs_text_in_quoted_values_never_hides_a_directive(
        before in "[a-z]{0,5}",
        high in prop::collection::vec(0x80u8..=0xFF, 1..4),
        after in "[a-z]{0,5}",
        forbid in prop::sample::select(vec!["private", "no-store", "no-cache"]),
        first in any::<bool>(),
    ) {
        let mut quoted = format!("ext=\"{before}").into_bytes();
        quoted.extend_from_slice(&high);
        quoted.extend_from_slice(format!("{after}\"").as_bytes());
        let line = if first {
            [forbid.as_bytes(), b", ", &quoted].concat()
        } else {
            [&quoted[..], b", ", forbid.as_bytes()].concat()
        };
        let parsed = CacheControl::parse_lines([&line[..]]);
        prop_assert!(parsed.is_ok_and(|c| c.forbids_storing()));
        prop_assert!(!storable_lines(&[&line]));
    }
}
