//! Durations written as strings (`"300ms"`, `"5m"`, `"1h30m"`), read at compile time.

use syn::LitStr;

/// The duration in milliseconds: one or more `<digits><unit>` groups, units `ms`, `s`, `m`, `h`,
/// `d`. Errors point at the literal.
pub(crate) fn millis(lit: &LitStr) -> syn::Result<u64> {
    let text = lit.value();
    let err = |why: &str| {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid duration `{text}`: {why} (write e.g. \"300ms\", \"30s\", \"5m\", \"1h30m\", \"1d\")"
            ),
        )
    };
    if text.is_empty() {
        return Err(err("empty"));
    }
    let mut total: u64 = 0;
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(err("a number needs a unit (`ms`, `s`, `m`, `h` or `d`)")),
            _ => return Err(err("unknown unit (use `ms`, `s`, `m`, `h` or `d`)")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| err("too large"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::millis;
    use proc_macro2::Span;
    use syn::LitStr;

    fn ms(s: &str) -> Result<u64, String> {
        millis(&LitStr::new(s, Span::call_site())).map_err(|e| e.to_string())
    }

    #[test]
    fn every_unit_and_compounds() {
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("1d"), Ok(86_400_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1m500ms"), Ok(60_500));
        assert_eq!(ms("0s"), Ok(0));
    }

    #[test]
    fn malformed_strings_are_errors() {
        for bad in [
            "",
            "5",
            "m",
            "5 m",
            " 5m",
            "5m ",
            "5min",
            "5M",
            "1.5s",
            "-1s",
            "s5",
            "99999999999999999999s",
            "999999999999999d",
        ] {
            assert!(ms(bad).is_err(), "{bad:?} parsed");
        }
    }
}
