//! Each client's Caldera agents, and whether they are alive — so an engineer sees that the
//! agent just enrolled ([`crate::enroll`]) checked in, and monitoring sees a client whose
//! agents went silent.
//!
//! Alive follows Caldera's own rule (`Agent.status` in `app/objects/c_agent.py`, which the UI
//! shows): an agent is dead once more than `sleep_max` + the global `agents.untrusted_timer`
//! seconds have passed since its `last_seen`; an agent marked for stop is `pending kill` (or
//! `dead` once the stop was delivered), which only Caldera knows, so its `status` word is
//! respected when it says so. The agent's `watchdog` plays no part in that rule.
//!
//! `GET /api/v2/agents` is cheap for Caldera (2-4 ms with a session); [`watch`] reads it in the
//! background for health and metrics, the `agents` command once ([`view`]).

pub mod check;
pub mod cli;
pub mod view;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::config::keys::{Key, key};
use crate::config::{CalderaAuth, ConfigError, Layered};
use crate::document::sanitize::clean_keyword;
use crate::state::ClientAgents;

pub const AGENTS: &str = "api/v2/agents";
pub const AGENTS_CONFIG: &str = "api/v2/config/agents";
/// Caldera's default `agents.untrusted_timer` (`conf/agents.yml`), used until it is read.
pub const DEFAULT_UNTRUSTED_TIMER: u64 = 90;
/// With only the KEY header (~200 ms of Caldera's event loop per request), the background read
/// is spaced at least this much.
pub const KEY_MIN_INTERVAL: Duration = Duration::from_secs(300);
/// At most this many clients are tracked for health and metrics (label cardinality).
pub const MAX_CLIENTS: usize = 500;

pub(crate) const KEYS: &[Key] = &[key(
    "AGENTS_POLL_INTERVAL",
    "30",
    "seconds between background reads of Caldera's agents for health and metrics (0: off; at least 300 with only CALDERA_API_KEY)",
)];

#[derive(Debug, Clone)]
pub struct AgentsSettings {
    /// `None`: no background read.
    pub interval: Option<Duration>,
}

impl AgentsSettings {
    pub(crate) fn from_layered(l: &Layered, auth: &CalderaAuth) -> Result<Self, ConfigError> {
        let v = crate::config::float("AGENTS_POLL_INTERVAL", l.get("AGENTS_POLL_INTERVAL"))?;
        if v > 86_400.0 {
            return Err(crate::config::err(
                "AGENTS_POLL_INTERVAL",
                format!("{v} is more than a day"),
            ));
        }
        let interval = (v > 0.0).then(|| {
            let d = Duration::from_secs_f64(v.max(1.0));
            if matches!(auth, CalderaAuth::Key(_)) {
                d.max(KEY_MIN_INTERVAL)
            } else {
                d
            }
        });
        Ok(Self { interval })
    }
}

/// The agent fields this view uses, from `GET /api/v2/agents`.
#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    pub paw: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub privilege: Option<String>,
    #[serde(default)]
    pub last_seen: Option<String>,
    #[serde(default)]
    pub sleep_max: Option<i64>,
    #[serde(default)]
    pub trusted: Option<bool>,
    /// Caldera's verdict at the time of the answer (`alive`, `dead`, `pending kill`).
    #[serde(default)]
    pub status: Option<String>,
}

/// `GET /api/v2/config/agents`: only the timer the alive rule needs.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentsConfig {
    #[serde(default)]
    pub untrusted_timer: Option<serde_json::Value>,
}

impl AgentsConfig {
    pub fn untrusted_timer(&self) -> Option<u64> {
        match &self.untrusted_timer {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Alive, dead or pending kill, as Caldera's UI would show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    PendingKill,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Dead => "dead",
            Self::PendingKill => "pending kill",
        }
    }
}

/// Parses Caldera's `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Caldera's rule (see the module docs), evaluated at `now`.
pub fn liveness(a: &Agent, now: SystemTime, untrusted_timer: u64) -> Liveness {
    match a.status.as_deref() {
        Some("pending kill") => return Liveness::PendingKill,
        // Caldera only says dead when it has seen the stop delivered or the time run out.
        Some("dead") => return Liveness::Dead,
        _ => {}
    }
    let Some(seen) = a.last_seen.as_deref().and_then(parse_time) else {
        return Liveness::Dead;
    };
    let allowed = a.sleep_max.unwrap_or(60).max(0) as u64 + untrusted_timer;
    // A last_seen in the future (clock skew) counts as just seen.
    let since = now.duration_since(seen).unwrap_or(Duration::ZERO);
    if since.as_secs_f64() > allowed as f64 {
        Liveness::Dead
    } else {
        Liveness::Alive
    }
}

/// The client an agent belongs to: its group through `CLIENT_MAP`, exactly as the documents'
/// `client_id` (same cleaning and length cap), so health, metrics and Kibana agree.
pub fn client_of(group: Option<&str>, client_map: &HashMap<String, String>) -> String {
    let g = clean_keyword(group.unwrap_or(""), 256);
    match client_map.get(&g) {
        Some(c) => c.clone(),
        None if g.is_empty() => "all".into(),
        None => g,
    }
}

/// Live and total agents per client; every client of `CLIENT_MAP` appears, with 0 if it has
/// no agent, so a silent client shows as 0 rather than disappearing.
pub fn census(
    agents: &[Agent],
    now: SystemTime,
    untrusted_timer: u64,
    client_map: &HashMap<String, String>,
) -> BTreeMap<String, ClientAgents> {
    let mut out: BTreeMap<String, ClientAgents> = client_map
        .values()
        .map(|c| (c.clone(), ClientAgents::default()))
        .collect();
    for a in agents {
        let client = client_of(a.group.as_deref(), client_map);
        if !out.contains_key(&client) && out.len() >= MAX_CLIENTS {
            continue;
        }
        let e = out.entry(client).or_default();
        e.total += 1;
        if liveness(a, now, untrusted_timer) == Liveness::Alive {
            e.live += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(group: &str, last_seen: &str, sleep_max: i64, status: Option<&str>) -> Agent {
        Agent {
            paw: "p".into(),
            group: Some(group.into()),
            host: None,
            platform: None,
            username: None,
            privilege: None,
            last_seen: Some(last_seen.into()),
            sleep_max: Some(sleep_max),
            trusted: Some(true),
            status: status.map(String::from),
        }
    }

    #[test]
    fn alive_until_sleep_max_plus_untrusted_timer() {
        let seen = parse_time("2026-11-28T15:56:19Z").unwrap();
        let a = agent("acme", "2026-11-28T15:56:19Z", 60, Some("alive"));
        // 60 + 90 = 150 s allowed.
        assert_eq!(
            liveness(&a, seen + Duration::from_secs(150), 90),
            Liveness::Alive
        );
        assert_eq!(
            liveness(&a, seen + Duration::from_secs(151), 90),
            Liveness::Dead
        );
        assert_eq!(
            liveness(&a, seen - Duration::from_secs(30), 90),
            Liveness::Alive
        );
        let k = agent("acme", "2026-11-28T15:56:19Z", 60, Some("pending kill"));
        assert_eq!(liveness(&k, seen, 90), Liveness::PendingKill);
        let d = agent("acme", "2026-11-28T15:56:19Z", 60, Some("dead"));
        assert_eq!(liveness(&d, seen, 90), Liveness::Dead);
        let bad = agent("acme", "yesterday", 60, None);
        assert_eq!(liveness(&bad, seen, 90), Liveness::Dead);
    }

    #[test]
    fn census_maps_groups_and_keeps_silent_clients() {
        let now = parse_time("2026-11-28T15:57:00Z").unwrap();
        let map = HashMap::from([
            ("acme_corp".to_string(), "acme".to_string()),
            ("g".to_string(), "globex".to_string()),
        ]);
        let agents = vec![
            agent("acme_corp", "2026-11-28T15:56:19Z", 60, None),
            agent("acme_corp", "2026-11-28T10:00:00Z", 60, None),
            agent("red", "2026-11-28T15:56:28Z", 5, None),
            agent("", "2026-11-28T15:56:28Z", 5, None),
        ];
        let c = census(&agents, now, 90, &map);
        assert_eq!(c["acme"], ClientAgents { live: 1, total: 2 });
        assert_eq!(c["globex"], ClientAgents { live: 0, total: 0 });
        assert_eq!(c["red"], ClientAgents { live: 1, total: 1 });
        assert_eq!(c["all"], ClientAgents { live: 1, total: 1 });
    }
}
