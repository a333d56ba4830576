//! Validated domain values.
//!
//! Caldera hands us free-form JSON; these types are the only way a value gets into a document, so a
//! document can only ever carry a well-formed operation id, technique id or tactic ("parse, don't
//! validate"). Each constructor says exactly why it refused a value; callers count and log refusals.

use std::fmt;

use serde::Serialize;

/// Why a raw value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {why}")]
pub struct InvalidValue {
    pub what: &'static str,
    /// A shortened, printable copy of the refused input (never the whole of a hostile value).
    pub value: String,
    pub why: &'static str,
}

impl InvalidValue {
    pub fn new(what: &'static str, raw: &str, why: &'static str) -> Self {
        let value: String = raw.chars().take(64).filter(|c| !c.is_control()).collect();
        Self { what, value, why }
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A Caldera ", $what, " id: a lowercase hyphenated UUID.")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                let s = raw.trim();
                if is_uuid(s) {
                    Ok(Self(s.to_ascii_lowercase()))
                } else {
                    Err(InvalidValue::new($what, raw, "expected a UUID"))
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

uuid_id!(OperationId, "operation id");
uuid_id!(LinkId, "link id");

/// A MITRE ATT&CK technique id: `T` + 4 digits, optionally `.` + 3 digits (`T1033`, `T1087.001`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TechniqueId(String);

impl TechniqueId {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        let b = s.as_bytes();
        let main_ok = b.len() >= 5
            && (b[0] == b'T' || b[0] == b't')
            && b[1..5].iter().all(u8::is_ascii_digit);
        let rest_ok = match b.len() {
            5 => true,
            9 => b[5] == b'.' && b[6..9].iter().all(u8::is_ascii_digit),
            _ => false,
        };
        if main_ok && rest_ok {
            Ok(Self(s.to_ascii_uppercase()))
        } else {
            Err(InvalidValue::new(
                "technique id",
                raw,
                "expected T#### or T####.###",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ATT&CK tactic slug as Caldera writes it: lowercase words joined by hyphens
/// (`discovery`, `defense-evasion`, `command-and-control`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Tactic(String);

impl Tactic {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim().to_ascii_lowercase().replace([' ', '_'], "-");
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|c| c.is_ascii_lowercase() || c == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
            && !s.contains("--");
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidValue::new(
                "tactic",
                raw,
                "expected lowercase words joined by hyphens",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Caldera operation state. Unknown states are kept (sanitized) rather than refused: a newer
/// Caldera may add one and we must not stop indexing because of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OperationState {
    Running,
    Paused,
    RunOneLink,
    Finished,
    Cleanup,
    OutOfTime,
    Other(String),
}

impl OperationState {
    pub fn parse(raw: &str) -> Self {
        match raw {
            "running" => Self::Running,
            "paused" => Self::Paused,
            "run_one_link" => Self::RunOneLink,
            "finished" => Self::Finished,
            "cleanup" => Self::Cleanup,
            "out_of_time" => Self::OutOfTime,
            other => Self::Other(crate::document::sanitize::clean_keyword(other, 64)),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::RunOneLink => "run_one_link",
            Self::Finished => "finished",
            Self::Cleanup => "cleanup",
            Self::OutOfTime => "out_of_time",
            Self::Other(s) => s,
        }
    }
    /// Finished or out of time: the planner is done, although late link results and a
    /// stop → cleanup → finished cycle can still change things (see the settle rule).
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Finished | Self::OutOfTime)
    }
}

impl Serialize for OperationState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A link status: Caldera's numeric code and the name users filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkStatus {
    pub code: i64,
    /// Status -3 covers both "queued" and "with the agent"; `collect` tells them apart.
    pub collected: bool,
}

impl LinkStatus {
    pub fn name(&self) -> &'static str {
        match self.code {
            0 => "success",
            1 => "error",
            124 => "timeout",
            -2 => "discarded",
            -3 if self.collected => "in_flight",
            -3 => "queued",
            -1 => "paused",
            -4 => "untrusted",
            -5 => "high_visibility",
            _ => "unknown",
        }
    }
    pub fn is_discarded(&self) -> bool {
        self.code == -2
    }
}

/// A UTC timestamp as Caldera writes it (`2026-11-28T15:41:48Z`), rendered back in the same
/// ISO-8601 `Z` form for the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(time::OffsetDateTime);

impl Timestamp {
    /// Never panics: an offset that moves the time out of the years 1..=9999 in UTC (e.g.
    /// `9999-12-31T23:59:59-23:59`) is refused like any other invalid value, because
    /// Elasticsearch's date format cannot hold it either.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let t =
            time::OffsetDateTime::parse(raw.trim(), &time::format_description::well_known::Rfc3339)
                .map_err(|_| InvalidValue::new("timestamp", raw, "expected RFC 3339"))?;
        t.checked_to_offset(time::UtcOffset::UTC)
            .filter(|t| (1..=9999).contains(&t.year()))
            .map(Self)
            .ok_or_else(|| {
                InvalidValue::new("timestamp", raw, "outside the years 1 to 9999 in UTC")
            })
    }
    pub fn now() -> Self {
        Self(time::OffsetDateTime::now_utc())
    }
    pub fn from_unix_micros(us: u64) -> Self {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        Self(t)
    }
    pub fn unix_seconds(&self) -> i64 {
        self.0.unix_timestamp()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
        let (h, mi, s) = (t.hour(), t.minute(), t.second());
        let ms = t.millisecond();
        if ms == 0 {
            write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        } else {
            write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn technique_ids() {
        assert_eq!(TechniqueId::parse("T1033").unwrap().as_str(), "T1033");
        assert_eq!(
            TechniqueId::parse("t1087.001").unwrap().as_str(),
            "T1087.001"
        );
        for bad in [
            "",
            "T103",
            "T10333",
            "T1033.1",
            "1033",
            "T1033.0011",
            "T1033<script>",
            "T１０３３",
        ] {
            assert!(TechniqueId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tactics_keep_hyphens() {
        assert_eq!(
            Tactic::parse("defense-evasion").unwrap().as_str(),
            "defense-evasion"
        );
        assert_eq!(
            Tactic::parse("Command and Control").unwrap().as_str(),
            "command-and-control"
        );
        for bad in ["", "-x", "x-", "a--b", "disc0very", "<b>"] {
            assert!(Tactic::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uuids() {
        let id = OperationId::parse("A249D6E7-9272-439E-93D1-124E2E915A1C").unwrap();
        assert_eq!(id.as_str(), "a249d6e7-9272-439e-93d1-124e2e915a1c");
        assert!(OperationId::parse("a249d6e7-9272-439e-93d1-124e2e915a1").is_err());
        assert!(LinkId::parse("../../etc/passwd").is_err());
    }

    #[test]
    fn timestamps_round_trip_in_z_form() {
        let t = Timestamp::parse("2026-11-28T15:41:48Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-28T15:41:48Z");
        let t = Timestamp::parse("2026-11-28T16:41:48.250+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-28T15:41:48.250Z");
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn timestamps_out_of_range_in_utc_are_refused_not_panicking() {
        for raw in [
            "9999-12-31T23:59:59-23:59",
            "0000-01-01T00:00:00+23:59",
            "0001-01-01T00:00:00+00:01",
        ] {
            let e = Timestamp::parse(raw).unwrap_err();
            assert!(e.why.contains("1 to 9999"), "{raw}: {e}");
        }
        let t = Timestamp::parse("9999-12-31T23:59:59+23:59").unwrap();
        assert_eq!(t.to_string(), "9999-12-31T00:00:59Z");
    }

    #[test]
    fn link_status_names() {
        let s = |code, collected| LinkStatus { code, collected }.name();
        assert_eq!(s(-3, false), "queued");
        assert_eq!(s(-3, true), "in_flight");
        assert_eq!(s(124, true), "timeout");
        assert_eq!(s(-2, false), "discarded");
        assert_eq!(s(42, true), "unknown");
    }
}
