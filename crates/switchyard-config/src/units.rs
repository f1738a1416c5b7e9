//! Durations (`"250ms"`, `"5s"`, `"1h 30m"`) and sizes (`"64KiB"`, `"1MiB"`).

use std::time::Duration;

/// Parses a duration string such as `"250ms"`, `"5s"` or `"2m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("expected a duration such as \"250ms\" or \"5s\", found an empty string".into());
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration \"{text}\" has no unit: write \"{trimmed}s\" or \"{trimmed}ms\""
        ));
    }
    humantime::parse_duration(trimmed)
        .map_err(|e| format!("invalid duration \"{text}\": {e} (examples: \"250ms\", \"5s\", \"1m\")"))
}

/// Parses a byte size such as `"512"`, `"64KiB"`, `"1MiB"` or `"1GB"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let invalid = || format!("invalid size \"{text}\" (examples: \"512B\", \"64KiB\", \"1MiB\")");
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    number.checked_mul(multiplier).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("1m 30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "5", "fast", "5 parsecs", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        assert!(parse_duration("30").unwrap_err().contains("\"30s\""));
    }

    #[test]
    fn sizes() {
        for (text, expected) in [
            ("512", 512),
            ("512B", 512),
            ("64KiB", 65_536),
            ("1MiB", 1_048_576),
            ("2GiB", 2 << 30),
            ("1KB", 1000),
        ] {
            assert_eq!(parse_size(text), Ok(expected), "{text}");
        }
        for bad in ["", "MiB", "1.5MiB", "12 parsecs", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }
}
