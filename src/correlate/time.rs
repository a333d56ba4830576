//! Times as Unix milliseconds: alerts and link documents carry RFC 3339 strings (alerts may
//! carry epoch milliseconds), and every comparison the stage makes is on integers.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses an RFC 3339 string or epoch milliseconds (number or digits) into Unix milliseconds.
pub fn parse_millis(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_digit()) {
                return s.parse().ok();
            }
            if s.len() > 64 {
                return None;
            }
            let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
        }
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_millis(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
    let (h, mi, s, milli) = (t.hour(), t.minute(), t.second(), t.millisecond());
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The current time in Unix milliseconds.
pub fn now_millis() -> i64 {
    let t = OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_strings_and_numbers() {
        assert_eq!(parse_millis(&json!("1970-01-01T00:00:01Z")), Some(1000));
        assert_eq!(
            parse_millis(&json!("1970-01-01T00:00:01.5+00:00")),
            Some(1500)
        );
        assert_eq!(parse_millis(&json!(1234)), Some(1234));
        assert_eq!(parse_millis(&json!("1234")), Some(1234));
        assert_eq!(parse_millis(&json!("yesterday")), None);
        assert_eq!(parse_millis(&json!(null)), None);
        assert_eq!(format_millis(1500), "1970-01-01T00:00:01.500Z");
    }
}
