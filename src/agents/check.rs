//! The `agents` health check: live and total agents per client, from the background read.
//!
//! A client with no live agent is *not* a fault of the sidecar (machines are enrolled for an
//! engagement and removed after), so the counts never lower the verdict; only a read that has
//! failed for longer than three intervals makes the check degraded, because the counts shown
//! are then stale.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::server::health::{Check, Level, one_line};
use crate::state::AgentsStatus;

pub fn agents_check(a: &AgentsStatus, now: SystemTime, uptime: Duration) -> Check {
    let mut details = Map::new();
    let Some(interval) = a.interval else {
        details.insert("enabled".into(), false.into());
        return Check {
            level: Level::Ok,
            message: None,
            details,
        };
    };
    let clients: Map<String, Value> = a
        .clients
        .iter()
        .map(|(c, n)| (c.clone(), json!({ "live": n.live, "total": n.total })))
        .collect();
    let since = a
        .last_ok_read
        .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO));
    details.insert("enabled".into(), true.into());
    details.insert(
        "live".into(),
        a.clients.values().map(|n| n.live).sum::<u64>().into(),
    );
    details.insert("clients".into(), Value::Object(clients));
    details.insert("read_every_seconds".into(), interval.as_secs().into());
    details.insert(
        "last_read_seconds_ago".into(),
        since.map_or(Value::Null, |d| d.as_secs().into()),
    );
    details.insert("last_error".into(), a.last_error.clone().into());
    let bound = interval * 3 + Duration::from_secs(30);
    let stale = match since {
        Some(d) => d > bound,
        None => uptime > bound,
    };
    let (level, message) = if stale && a.last_error.is_some() {
        (
            Level::Degraded,
            Some(one_line(&format!(
                "Caldera's agents could not be read for more than {} s: the live-agent counts are stale; see the caldera check ({})",
                bound.as_secs(),
                a.last_error.as_deref().unwrap_or("")
            ))),
        )
    } else {
        (Level::Ok, None)
    };
    Check {
        level,
        message,
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClientAgents;

    #[test]
    fn counts_shown_and_only_stale_reads_degrade() {
        let now = SystemTime::now();
        let mut a = AgentsStatus {
            interval: Some(Duration::from_secs(30)),
            last_ok_read: Some(now),
            ..Default::default()
        };
        a.clients
            .insert("acme".into(), ClientAgents { live: 0, total: 1 });
        a.clients
            .insert("red".into(), ClientAgents { live: 2, total: 2 });
        let c = agents_check(&a, now, Duration::from_secs(1000));
        assert_eq!(c.level, Level::Ok);
        assert_eq!(c.details["clients"]["acme"]["live"], 0);
        assert_eq!(c.details["live"], 2);
        a.last_ok_read = Some(now - Duration::from_secs(600));
        a.last_error = Some("api/v2/agents: cannot connect".into());
        let c = agents_check(&a, now, Duration::from_secs(1000));
        assert_eq!(c.level, Level::Degraded);
        assert!(c.message.unwrap_or_default().contains("stale"));
        let off = agents_check(&AgentsStatus::default(), now, Duration::ZERO);
        assert_eq!(off.details["enabled"], false);
    }
}
