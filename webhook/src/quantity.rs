//! Kubernetes resource quantities ("500m", "1.5", "1Gi", "1500M", "2e3")
//! read exactly, as billionths of the unit (the finest precision a
//! Kubernetes quantity keeps; finer fractions round up, as Kubernetes does).
//!
//! Written here rather than taken from a crate: the grammar is a dozen
//! lines, and the webhook needs exact integer arithmetic to round vCPUs and
//! MiB up correctly, which the float-based parsers get wrong at the edges.

/// A quantity in billionths of its unit (nano-cores, nano-bytes).
pub type Nanos = u128;

/// One whole unit in [`Nanos`].
pub const ONE: Nanos = 1_000_000_000;

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a Kubernetes quantity (examples: 500m, 1.5, 1Gi, 1500M)")]
    Syntax(String),
    #[error("{0:?} is negative; resources cannot be")]
    Negative(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Suffix → (power of ten, power of two).
fn suffix(s: &str) -> Option<(i32, u32)> {
    Some(match s {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => return None,
    })
}

/// Parses a quantity into [`Nanos`].
pub fn parse(text: &str) -> Result<Nanos, QuantityError> {
    let syntax = || QuantityError::Syntax(text.chars().take(64).collect());
    let too_large = || QuantityError::TooLarge(text.chars().take(64).collect());
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    // The number: digits with at most one dot, at least one digit.
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, rest) = s.split_at(num_len);
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(syntax());
    }
    // The suffix: SI/binary, or a decimal exponent e<int> / E<int>.
    let (pow10, pow2) = match suffix(rest) {
        Some(p) => p,
        None => {
            let exp = rest
                .strip_prefix('e')
                .or_else(|| rest.strip_prefix('E'))
                .ok_or_else(syntax)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let e: i32 = exp.parse().map_err(|_| too_large())?;
            (e, 0)
        }
    };
    let digits: String = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 38 {
        return Err(too_large());
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| too_large())?
    };
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative(text.chars().take(64).collect()));
    }
    // value = mantissa * 2^pow2 * 10^(pow10 - frac digits); in nanos: +9.
    let exp10 = i64::from(pow10) + 9 - frac.len() as i64;
    let scaled = mantissa
        .checked_mul(1u128.checked_shl(pow2).ok_or_else(too_large)?)
        .ok_or_else(too_large)?;
    if exp10 >= 0 {
        let m = 10u128
            .checked_pow(u32::try_from(exp10).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
        scaled.checked_mul(m).ok_or_else(too_large)
    } else {
        // Finer than a nano: round up, as Kubernetes does.
        match 10u128.checked_pow(u32::try_from(-exp10).map_err(|_| too_large())?) {
            Some(d) => Ok(scaled.div_ceil(d)),
            None => Ok(u128::from(scaled > 0)),
        }
    }
}

/// Whole units, rounded up.
pub fn ceil_units(n: Nanos) -> u128 {
    n.div_ceil(ONE)
}

/// Whole MiB of a byte quantity, rounded up.
pub fn ceil_mib(n: Nanos) -> u128 {
    n.div_ceil(ONE << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        for (q, nanos) in [
            ("500m", 500_000_000u128),
            ("1.5", 1_500_000_000),
            ("1", ONE),
            ("0.1", 100_000_000),
            (".5", 500_000_000),
            ("2.", 2 * ONE),
            ("250u", 250_000),
            ("7n", 7),
            ("1e3", 1000 * ONE),
            ("15E-1", 1_500_000_000),
            ("+3", 3 * ONE),
            ("0", 0),
            ("-0", 0),
        ] {
            assert_eq!(parse(q), Ok(nanos), "{q}");
        }
    }

    #[test]
    fn memory_forms() {
        assert_eq!(ceil_mib(parse("1Gi").unwrap()), 1024);
        assert_eq!(ceil_mib(parse("1500M").unwrap()), 1431); // 1430.51 up
        assert_eq!(ceil_mib(parse("128Mi").unwrap()), 128);
        assert_eq!(ceil_mib(parse("1").unwrap()), 1, "one byte is one MiB up");
        assert_eq!(ceil_mib(parse("1.5Gi").unwrap()), 1536);
        assert_eq!(ceil_mib(parse("2k").unwrap()), 1);
        assert_eq!(ceil_mib(parse("1Ei").unwrap()), 1 << 40);
    }

    #[test]
    fn finer_than_nano_rounds_up() {
        assert_eq!(parse("0.5n"), Ok(1));
        assert_eq!(parse("1e-20"), Ok(1));
        assert_eq!(ceil_units(parse("1001m").unwrap()), 2);
        assert_eq!(ceil_units(parse("1000m").unwrap()), 1);
    }

    #[test]
    fn bad_quantities_are_named() {
        for q in [
            "", "abc", "1.2.3", "1Xi", "1e", "1e+", "m", ".", "1 Gi", "0x10",
        ] {
            let e = parse(q).unwrap_err();
            assert!(matches!(e, QuantityError::Syntax(_)), "{q}: {e}");
            assert!(e.to_string().contains(&format!("{q:?}")), "{e}");
        }
        assert!(matches!(parse("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(parse("1e400"), Err(QuantityError::TooLarge(_))));
        assert!(matches!(
            parse("99999999999999999999999999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
    }
}
