//! Human durations: `250ms`, `30s`, `5m`, `2h`, `3d`.

use std::time::Duration;

/// Parses `250ms`, `30s`, `5m`, `2h`, `3d` (also `1.5s`). Returns a message on error.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(spes_core::duration::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(spes_core::duration::parse_duration("3d"), Ok(Duration::from_secs(3 * 86_400)));
/// assert!(spes_core::duration::parse_duration("3 weeks").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 250ms, 30s, 5m, 2h or 3d"))?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "" => return Err(format!("`{s}` has no unit; write e.g. {num}s or {num}ms")),
        other => {
            return Err(format!(
                "`{s}` has an unknown unit `{other}`; use ms, s, m, h or d"
            ));
        }
    };
    let secs = value * factor;
    if !secs.is_finite() || !(0.0..=1.0e10).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it (largest exact unit).
#[must_use]
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0ms".into();
    }
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["250ms", "30s", "5m", "2h", "3d"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
