//! Durations written as Go writes them (`10m`, `1h30m`), the form of `spec.interval` and of the
//! leader-election flags.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {input:?}: {problem}; use a number and a unit, such as 90s, 10m, 1h or 1h30m"
)]
pub struct DurationError {
    pub input: String,
    pub problem: &'static str,
}

/// Parse a Go `time.ParseDuration` string (`10m`, `1h30m`, `1.5h`, `300ms`), the grammar the CRD's
/// CEL `duration()` accepts. Negative durations are refused.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let error = |problem| DurationError {
        input: input.to_string(),
        problem,
    };
    let text = input.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    if text.is_empty() {
        return Err(error("it is empty"));
    }
    if text.starts_with('-') {
        return Err(error("it is negative"));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        rest = &rest[number_len..];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(error("a number is missing or malformed"));
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(error("a unit is missing")),
            _ => return Err(error("the unit is not one of ns, us, ms, s, m, h")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| error("a number is too large"))?
        };
        let mut fraction_nanos: u128 = 0;
        let mut scale: u128 = 1;
        for digit in fraction.chars().take(18) {
            // `digit` is an ASCII digit: the scan above admits only digits and '.'.
            fraction_nanos = fraction_nanos * 10 + u128::from(digit as u8 - b'0');
            scale *= 10;
        }
        let part = whole
            .checked_mul(unit_nanos)
            .and_then(|w| w.checked_add(fraction_nanos * unit_nanos / scale))
            .ok_or_else(|| error("it is too large"))?;
        total_nanos = total_nanos
            .checked_add(part)
            .ok_or_else(|| error("it is too large"))?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| error("it is too large"))?;
    // The remainder of a division by 1e9 always fits.
    let nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(
            ok("2h45m0.5s"),
            Duration::from_millis((2 * 3600 + 45 * 60) * 1000 + 500)
        );
        assert_eq!(ok("1µs"), Duration::from_micros(1));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in [
            "",
            "10",
            "m",
            "-5m",
            "5d",
            "1..5s",
            "1h 30m",
            "99999999999999999999999h",
            ".",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        let message = parse_duration("5d").unwrap_err().to_string();
        assert!(
            message.contains("\"5d\"") && message.contains("10m"),
            "{message}"
        );
    }
}
