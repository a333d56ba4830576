//! Reading Caldera's agents: once for the `agents` command, and in the background every
//! `AGENTS_POLL_INTERVAL` for the per-client live counts in health and metrics.
//!
//! Both reads go through the shared [`CalderaClient`], so they use its session cookie (~1 ms
//! for Caldera) and only fall back to `KEY` when no session is possible; with only a KEY the
//! interval is floored at [`super::KEY_MIN_INTERVAL`]. The listing asks for just the fields
//! used (`include=`), which keeps the agents' base64 link history off the wire. The global
//! `untrusted_timer` is re-read every [`CONFIG_EVERY`] at most.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use tokio::sync::watch;

use super::{AGENTS, AGENTS_CONFIG, Agent, AgentsConfig, AgentsSettings, DEFAULT_UNTRUSTED_TIMER};
use crate::caldera::client::{CalderaClient, CalderaError};
use crate::state::Shared;

/// The agents listing with only the fields the view and the alive rule use.
pub const AGENTS_LISTING: &str = "api/v2/agents?include=paw&include=group&include=host&include=platform&include=username&include=privilege&include=last_seen&include=sleep_max&include=trusted&include=status";
/// How often the background reader re-reads `agents.untrusted_timer` (it rarely changes).
pub const CONFIG_EVERY: Duration = Duration::from_secs(600);

/// Every agent Caldera knows; one undecodable agent is skipped, not fatal.
pub async fn read_agents(client: &CalderaClient) -> Result<(Vec<Agent>, usize), CalderaError> {
    let bytes = client.get_bytes(AGENTS_LISTING).await?;
    let raw: Vec<&RawValue> = CalderaClient::decode(AGENTS, &bytes)?;
    let total = raw.len();
    let agents: Vec<Agent> = raw
        .into_iter()
        .filter_map(|r| serde_json::from_str(r.get()).ok())
        .collect();
    let skipped = total - agents.len();
    Ok((agents, skipped))
}

/// Caldera's `agents.untrusted_timer`; a Caldera without `/config/agents` keeps the default.
pub async fn read_untrusted_timer(client: &CalderaClient) -> Result<u64, CalderaError> {
    match client.get::<AgentsConfig>(AGENTS_CONFIG).await {
        Ok(c) => Ok(c.untrusted_timer().unwrap_or(DEFAULT_UNTRUSTED_TIMER)),
        Err(CalderaError::NotFound { .. }) => Ok(DEFAULT_UNTRUSTED_TIMER),
        Err(e) => Err(e),
    }
}

/// The background reader; returns at once when the read is off.
pub async fn run(
    client: Arc<CalderaClient>,
    settings: AgentsSettings,
    client_map: HashMap<String, String>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    shared.agents(|a| a.interval = settings.interval);
    let Some(interval) = settings.interval else {
        return;
    };
    let mut untrusted: Option<(u64, tokio::time::Instant)> = None;
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let stale = untrusted.is_none_or(|(_, at)| at.elapsed() >= CONFIG_EVERY.max(interval));
        // A read in progress is abandoned on shutdown, like the watcher's polls.
        if stale {
            let read = tokio::select! {
                r = read_untrusted_timer(&client) => r,
                _ = shutdown.changed() => return,
            };
            match read {
                Ok(t) => untrusted = Some((t, tokio::time::Instant::now())),
                Err(e) => {
                    tracing::debug!(error = %e, "agents.untrusted_timer not read; Caldera's default is assumed")
                }
            }
        }
        let timer = untrusted.map_or(DEFAULT_UNTRUSTED_TIMER, |(t, _)| t);
        let read = tokio::select! {
            r = read_agents(&client) => r,
            _ = shutdown.changed() => return,
        };
        match read {
            Ok((agents, skipped)) => {
                let counts = super::census(&agents, SystemTime::now(), timer, &client_map);
                if failing || skipped > 0 {
                    tracing::info!(agents = agents.len(), skipped, "Caldera's agents read");
                }
                failing = false;
                shared.agents(|a| {
                    a.clients = counts;
                    a.last_ok_read = Some(SystemTime::now());
                    a.last_error = None;
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "Caldera's agents not read; live-agent counts in health are kept until the next read");
                }
                failing = true;
                shared.agents(|a| a.last_error = Some(e.to_string()));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            res = shutdown.changed() => {
                if res.is_err() {
                    return;
                }
            }
        }
    }
}
