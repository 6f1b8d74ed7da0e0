//! Kubernetes `resource.Quantity` text to integers: CPU to millicores, memory (and sizes) to
//! bytes, rounding up as the API's `MilliValue()` and `Value()` do.
//!
//! Grammar (k8s.io/apimachinery `resource.ParseQuantity`):
//!
//! ```text
//! quantity ::= [+-] number suffix
//! number   ::= digits | digits "." [digits] | "." digits
//! suffix   ::= "" | binary | decimalSI | ("e" | "E") [+-] digits
//! binary   ::= Ki | Mi | Gi | Ti | Pi | Ei               (powers of 1024)
//! decimalSI ::= n | u | m | k | M | G | T | P | E        (powers of 1000; "E" alone is exa)
//! ```
//!
//! Resources may not be negative here (the API server rejects negative requests and limits),
//! and values above `i64::MAX` units are rejected rather than saturated.

use std::fmt;

/// Why a quantity was rejected; the caller adds the field path and the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantityError {
    Empty,
    NotANumber,
    UnknownSuffix(String),
    Negative,
    TooLarge,
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityError::Empty => f.write_str("empty"),
            QuantityError::NotANumber => f.write_str("not a number"),
            QuantityError::UnknownSuffix(s) => write!(
                f,
                "unknown suffix {s:?} (expected one of n u m k M G T P E, Ki Mi Gi Ti Pi Ei, or an exponent like e3)"
            ),
            QuantityError::Negative => f.write_str("must not be negative"),
            QuantityError::TooLarge => f.write_str("too large"),
        }
    }
}

/// A parsed quantity: `mantissa * 10^exp10 * 1024^exp1024`, exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parsed {
    mantissa: u128,
    exp10: i32,
    exp1024: u32,
}

/// At most this many significant digits (u128 holds 38).
const MAX_DIGITS: usize = 30;

fn parse(text: &str) -> Result<Parsed, QuantityError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (negative, rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(QuantityError::NotANumber);
    }
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > MAX_DIGITS {
        return Err(QuantityError::TooLarge);
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| QuantityError::NotANumber)?
    };
    let (suffix_exp10, exp1024) = parse_suffix(suffix)?;
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative);
    }
    Ok(Parsed {
        mantissa,
        exp10: suffix_exp10 - frac_part.len() as i32,
        exp1024,
    })
}

/// (power of ten, power of 1024) of a suffix.
fn parse_suffix(suffix: &str) -> Result<(i32, u32), QuantityError> {
    let unknown = || QuantityError::UnknownSuffix(suffix.to_string());
    Ok(match suffix {
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
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unknown());
            }
            let value: i32 = exp.parse().map_err(|_| QuantityError::TooLarge)?;
            if value.abs() > 1000 {
                return Err(QuantityError::TooLarge);
            }
            (value, 0)
        }
        _ => return Err(unknown()),
    })
}

/// `ceil(parsed * 10^scale)`, at most `i64::MAX`.
fn scaled(parsed: Parsed, scale: i32) -> Result<u64, QuantityError> {
    if parsed.mantissa == 0 {
        return Ok(0);
    }
    let mut n = parsed.mantissa;
    for _ in 0..parsed.exp1024 {
        n = n.checked_mul(1024).ok_or(QuantityError::TooLarge)?;
    }
    let exp = parsed.exp10 + scale;
    let value = if exp >= 0 {
        let factor = 10u128
            .checked_pow(exp as u32)
            .ok_or(QuantityError::TooLarge)?;
        n.checked_mul(factor).ok_or(QuantityError::TooLarge)?
    } else {
        match 10u128.checked_pow((-exp) as u32) {
            Some(divisor) => n.div_ceil(divisor),
            // Below one unit but positive: rounds up to one.
            None => 1,
        }
    };
    if value > i64::MAX as u128 {
        return Err(QuantityError::TooLarge);
    }
    Ok(value as u64)
}

/// A CPU quantity in millicores ("500m" is 500, "1.5" 1500, "0.0001" rounds up to 1).
pub fn parse_millicores(text: &str) -> Result<u64, QuantityError> {
    scaled(parse(text)?, 3)
}

/// A memory or size quantity in bytes ("64Mi" is 67108864, "1e3" 1000, "0.5" rounds up to 1).
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    scaled(parse(text)?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_to_millicores() {
        for (text, millis) in [
            ("1", 1000),
            ("500m", 500),
            ("0.5", 500),
            (".5", 500),
            ("2.", 2000),
            ("+250m", 250),
            ("100.5m", 101),
            ("0.0001", 1),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("1k", 1_000_000),
            ("0", 0),
            ("-0", 0),
            ("1500u", 2),
            ("10n", 1),
        ] {
            assert_eq!(parse_millicores(text), Ok(millis), "{text}");
        }
    }

    #[test]
    fn memory_to_bytes() {
        for (text, bytes) in [
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("123Mi", 128_974_848),
            ("1Ki", 1024),
            ("1.5Gi", 1_610_612_736),
            ("1Ei", 1u64 << 60),
            ("1k", 1000),
            ("1E", 1_000_000_000_000_000_000),
            ("1e+2", 100),
            ("0.5", 1),
            ("500m", 1),
            ("1Ti", 1u64 << 40),
            ("2Pi", 2u64 << 50),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_quantities() {
        for (text, err) in [
            ("12Zi", QuantityError::UnknownSuffix("Zi".into())),
            ("-1", QuantityError::Negative),
            ("abc", QuantityError::NotANumber),
            ("", QuantityError::Empty),
            (".", QuantityError::NotANumber),
            ("1.2.3", QuantityError::NotANumber),
            ("1K", QuantityError::UnknownSuffix("K".into())),
            ("1e", QuantityError::UnknownSuffix("e".into())),
            ("1e3.5", QuantityError::UnknownSuffix("e3.5".into())),
            ("1 Mi", QuantityError::UnknownSuffix(" Mi".into())),
            ("8Ei", QuantityError::TooLarge),
            ("1e400", QuantityError::TooLarge),
            ("1e99999", QuantityError::TooLarge),
        ] {
            assert_eq!(parse_bytes(text), Err(err), "{text}");
        }
    }
}
