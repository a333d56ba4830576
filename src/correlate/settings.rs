//! The correlation stage's settings: its own key table (listed in `config::keys::TABLES`) and
//! the typed struct parsed from it once at start-up.

use std::collections::BTreeSet;
use std::time::Duration;

use url::Url;

use crate::config::keys::{Key, key, secret};
use crate::config::values::{ConfigError, Secret, err, parse_url, secs, secs_allow_zero};
use crate::config::{Layered, boolean, int};

pub(crate) const KEYS: &[Key] = &[
    key(
        "CORRELATION_ENABLED",
        "true",
        "find the SIEM alerts each link caused and act on the certain ones",
    ),
    key(
        "ALERT_INDEX",
        ".alerts-security.alerts-default",
        "index or alias of Elastic Security's detection alerts",
    ),
    secret(
        "ALERT_API_KEY",
        "read-only Elasticsearch API key for reading alerts (default: ELK_API_KEY)",
    ),
    key(
        "ALERT_WAIT",
        "900",
        "seconds after a link's end during which its alerts are still looked for",
    ),
    key(
        "ALERT_SKEW",
        "2",
        "seconds added on both sides of a link's window",
    ),
    key(
        "ALERT_TIERS",
        "1",
        "match tiers acted on, comma-separated (1 lineage, 2 command line; 3 is never acted on)",
    ),
    key(
        "ALERT_ACTION",
        "close",
        "none, tag, acknowledge or close: what is done to a certain alert",
    ),
    key(
        "ALERT_BACKEND",
        "",
        "elasticsearch or kibana (default: kibana when KIBANA_URL is set)",
    ),
    key(
        "KIBANA_URL",
        "",
        "Kibana base URL (for ALERT_BACKEND=kibana)",
    ),
    secret("KIBANA_API_KEY", "Kibana API key (base64 id:key)"),
    key("KIBANA_SPACE", "default", "Kibana space of the alerts"),
    key(
        "CORRELATION_INDEX",
        "purple-team-detections",
        "index of the alert-to-link correlation records",
    ),
    key(
        "CORRELATION_INTERVAL",
        "30",
        "seconds between correlation passes",
    ),
    key(
        "CORRELATION_BATCH",
        "250",
        "links examined per batch of alert queries",
    ),
];

/// What is done to an alert the stage is certain about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Tag,
    Acknowledge,
    Close,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Tag => "tag",
            Action::Acknowledge => "acknowledge",
            Action::Close => "close",
        }
    }

    /// The workflow status this action sets, if any.
    pub fn status(self) -> Option<&'static str> {
        match self {
            Action::Acknowledge => Some("acknowledged"),
            Action::Close => Some("closed"),
            Action::None | Action::Tag => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KibanaSettings {
    pub url: Url,
    pub api_key: Option<Secret>,
    pub space: String,
}

#[derive(Debug, Clone)]
pub enum Backend {
    Elasticsearch,
    Kibana(KibanaSettings),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Elasticsearch => "elasticsearch",
            Backend::Kibana(_) => "kibana",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CorrelationSettings {
    pub enabled: bool,
    pub alert_index: String,
    pub alert_api_key: Option<Secret>,
    pub wait: Duration,
    pub skew: Duration,
    pub tiers: BTreeSet<u8>,
    pub action: Action,
    pub backend: Backend,
    pub index: String,
    pub interval: Duration,
    pub batch: usize,
}

impl Default for CorrelationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            alert_index: ".alerts-security.alerts-default".into(),
            alert_api_key: None,
            wait: Duration::from_secs(900),
            skew: Duration::from_secs(2),
            tiers: BTreeSet::from([1]),
            action: Action::Close,
            backend: Backend::Elasticsearch,
            index: "purple-team-detections".into(),
            interval: Duration::from_secs(30),
            batch: 250,
        }
    }
}

fn index_name(k: &str, raw: &str, allow_dot: bool) -> Result<String, ConfigError> {
    let bad = raw.is_empty()
        || raw.len() > 255
        || raw.starts_with(['-', '_', '+'])
        || (!allow_dot && raw.starts_with('.'))
        || raw
            .chars()
            .any(|c| c.is_ascii_uppercase() || c.is_whitespace() || "\\/?\"<>|,#:".contains(c));
    if bad {
        return Err(err(k, format!("{raw:?} is not a valid index name")));
    }
    Ok(raw.to_string())
}

/// Parses the stage's settings from the layered configuration.
pub fn parse(l: &Layered) -> Result<CorrelationSettings, ConfigError> {
    let mut tiers = BTreeSet::new();
    for t in l.get("ALERT_TIERS").split(',').map(str::trim) {
        match t {
            "" => {}
            "1" => {
                tiers.insert(1);
            }
            "2" => {
                tiers.insert(2);
            }
            "3" => {
                return Err(err(
                    "ALERT_TIERS",
                    "tier 3 (host and window only) is recorded as a candidate, never acted on",
                ));
            }
            other => return Err(err("ALERT_TIERS", format!("{other:?} is not 1 or 2"))),
        }
    }
    let action = match l.get("ALERT_ACTION").to_ascii_lowercase().as_str() {
        "none" => Action::None,
        "tag" => Action::Tag,
        "acknowledge" => Action::Acknowledge,
        "close" => Action::Close,
        other => {
            return Err(err(
                "ALERT_ACTION",
                format!("{other:?} is not none, tag, acknowledge or close"),
            ));
        }
    };
    let kibana = match l.opt("KIBANA_URL") {
        Some(u) => Some(KibanaSettings {
            url: parse_url("KIBANA_URL", &u)?,
            api_key: l.opt("KIBANA_API_KEY").map(Secret::new),
            space: l.get("KIBANA_SPACE").to_string(),
        }),
        None => None,
    };
    if let Some(k) = &kibana
        && (!k.url.username().is_empty() || k.url.password().is_some())
    {
        return Err(err(
            "KIBANA_URL",
            "must not carry credentials; use KIBANA_API_KEY",
        ));
    }
    let backend = match (l.get("ALERT_BACKEND").to_ascii_lowercase().as_str(), kibana) {
        ("" | "kibana", Some(k)) => Backend::Kibana(k),
        ("kibana", None) => {
            return Err(err(
                "KIBANA_URL",
                "must be set when ALERT_BACKEND is kibana",
            ));
        }
        ("" | "elasticsearch", _) => Backend::Elasticsearch,
        (other, _) => {
            return Err(err(
                "ALERT_BACKEND",
                format!("{other:?} is not elasticsearch or kibana"),
            ));
        }
    };
    let space = l.get("KIBANA_SPACE");
    if !space
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(err(
            "KIBANA_SPACE",
            format!("{space:?} is not a Kibana space id (a-z, 0-9, - and _)"),
        ));
    }
    Ok(CorrelationSettings {
        enabled: boolean("CORRELATION_ENABLED", l.get("CORRELATION_ENABLED"))?,
        alert_index: index_name("ALERT_INDEX", l.get("ALERT_INDEX"), true)?,
        alert_api_key: l.opt("ALERT_API_KEY").map(Secret::new),
        wait: secs_allow_zero("ALERT_WAIT", l.get("ALERT_WAIT"))?,
        skew: secs_allow_zero("ALERT_SKEW", l.get("ALERT_SKEW"))?,
        tiers,
        action,
        backend,
        index: index_name("CORRELATION_INDEX", l.get("CORRELATION_INDEX"), false)?,
        interval: secs("CORRELATION_INTERVAL", l.get("CORRELATION_INTERVAL"))?,
        batch: int("CORRELATION_BATCH", l.get("CORRELATION_BATCH"), 1, 10_000)? as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;

    fn parse_env(env: &[(&str, &str)]) -> Result<CorrelationSettings, ConfigError> {
        let opts = LoadOptions {
            config_file: Some("/dev/null".into()),
            env_file: Some("/dev/null".into()),
        };
        let l = Layered::load(
            &opts,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        parse(&l)
    }

    #[test]
    fn defaults_and_choices() {
        let s = parse_env(&[]).unwrap();
        assert!(s.enabled);
        assert_eq!(s.tiers, BTreeSet::from([1]));
        assert_eq!(s.action, Action::Close);
        assert_eq!(s.backend.name(), "elasticsearch");
        assert_eq!(s.wait, Duration::from_secs(900));
        let s = parse_env(&[
            ("KIBANA_URL", "https://kibana.example:5601"),
            ("KIBANA_API_KEY", "k"),
            ("ALERT_TIERS", "1, 2"),
            ("ALERT_ACTION", "TAG"),
        ])
        .unwrap();
        assert_eq!(s.backend.name(), "kibana");
        assert_eq!(s.tiers, BTreeSet::from([1, 2]));
        assert_eq!(s.action, Action::Tag);
        let e = parse_env(&[("ALERT_TIERS", "1,3")]).unwrap_err();
        assert_eq!(e.key, "ALERT_TIERS");
        assert_eq!(
            parse_env(&[("ALERT_ACTION", "delete")]).unwrap_err().key,
            "ALERT_ACTION"
        );
        assert_eq!(
            parse_env(&[("ALERT_BACKEND", "kibana")]).unwrap_err().key,
            "KIBANA_URL"
        );
        assert_eq!(
            parse_env(&[("KIBANA_URL", "https://u:p@kibana:5601")])
                .unwrap_err()
                .key,
            "KIBANA_URL"
        );
        assert_eq!(
            parse_env(&[("CORRELATION_INDEX", ".hidden")])
                .unwrap_err()
                .key,
            "CORRELATION_INDEX"
        );
    }
}
