//! What the intake costs Caldera and how it learns of changes, as settings, shared status, a
//! health check and metrics.
//!
//! The watcher writes its measured request costs and effective intervals here, the push
//! endpoint its counters; health and `/metrics` only read them.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::config::keys::{Key, key};
use crate::config::{ConfigError, Layered, err, float, secs};
use crate::server::health::{Check, Level};
use crate::state::Counter;

pub(crate) const KEYS: &[Key] = &[
    key(
        "CALDERA_CPU_BUDGET",
        "1",
        "percent of Caldera's time the sidecar's reads may cost while idle (spaces the listing)",
    ),
    key(
        "CALDERA_CPU_BUDGET_ACTIVE",
        "5",
        "percent of Caldera's time fetches of running or settling operations may cost",
    ),
    key(
        "PUSH_RECONCILE_INTERVAL",
        "600",
        "seconds between reconciliation listings while the Caldera plugin pushes events",
    ),
    key(
        "STATE_FILE",
        "",
        "local memory of settled operations (default: <SPOOL_DIR>.state.json)",
    ),
];

/// Without a message for this long, push counts as not live (the plugin sends a heartbeat
/// every 30 s even when Caldera is quiet).
pub const PUSH_LIVE_FOR: Duration = Duration::from_secs(95);

#[derive(Debug, Clone)]
pub struct IntakeSettings {
    /// Fractions (0.01 = 1 %).
    pub idle_budget: f64,
    pub active_budget: f64,
    pub push_reconcile: Duration,
    pub state_file: PathBuf,
}

impl IntakeSettings {
    pub(crate) fn from_layered(
        l: &Layered,
        spool_dir: &std::path::Path,
    ) -> Result<Self, ConfigError> {
        let pct = |k: &str| -> Result<f64, ConfigError> {
            let v = float(k, l.get(k))?;
            if v <= 0.0 || v > 100.0 {
                return Err(err(k, format!("{v} must be a percentage in (0, 100]")));
            }
            Ok(v / 100.0)
        };
        Ok(Self {
            idle_budget: pct("CALDERA_CPU_BUDGET")?,
            active_budget: pct("CALDERA_CPU_BUDGET_ACTIVE")?,
            push_reconcile: secs("PUSH_RECONCILE_INTERVAL", l.get("PUSH_RECONCILE_INTERVAL"))?,
            state_file: l
                .opt("STATE_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| super::settled::default_path(spool_dir)),
        })
    }
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            idle_budget: 0.01,
            active_budget: 0.05,
            push_reconcile: Duration::from_secs(600),
            state_file: PathBuf::from("spool.state.json"),
        }
    }
}

/// One kind of read: its smoothed measured cost, configured and effective interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadCost {
    pub cost: Duration,
    pub configured: Duration,
    pub effective: Duration,
    pub stretched: bool,
    pub count: u64,
}

/// What the watcher publishes after each read.
#[derive(Debug, Clone, Default)]
pub struct IntakeStatus {
    pub listing: ReadCost,
    pub operation: ReadCost,
    /// Single-link fetches (push); not spaced (one per link result Caldera reports).
    pub link: ReadCost,
    pub push_live: bool,
    /// Operations remembered as settled in the state file.
    pub remembered_settled: usize,
    /// Where start-up knowledge of settled operations came from.
    pub known_from: &'static str,
}

/// Counters of the push endpoint and the status, in [`crate::state::Shared`].
#[derive(Debug, Default)]
pub struct IntakeState {
    pub status: Mutex<IntakeStatus>,
    pub last_push: Mutex<Option<SystemTime>>,
    pub batches_accepted: Counter,
    pub batches_rejected: Counter,
    pub events_accepted: Counter,
    /// Dropped here: the queue to the watcher was full.
    pub events_dropped: Counter,
    /// Dropped in Caldera by the plugin (its own count, as last reported).
    pub plugin_dropped: Counter,
    /// Set when events were lost (here or in the plugin): the watcher reconciles soon.
    pub lost: AtomicBool,
    /// The queue to the watcher, once it runs.
    pub(crate) queue: Mutex<Option<tokio::sync::mpsc::Sender<super::push::PushEvent>>>,
}

impl IntakeState {
    pub fn status(&self) -> IntakeStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn update(&self, f: impl FnOnce(&mut IntakeStatus)) {
        let mut g = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
    pub fn last_push(&self) -> Option<SystemTime> {
        *self.last_push.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn push_live(&self, now: SystemTime) -> bool {
        self.last_push()
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() < PUSH_LIVE_FOR)
    }
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::Relaxed)
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn read_json(r: &ReadCost) -> serde_json::Value {
    json!({
        "measured_cost_ms": ms(r.cost),
        "configured_interval_seconds": r.configured.as_secs_f64(),
        "effective_interval_seconds": (r.effective.as_secs_f64() * 100.0).round() / 100.0,
        "stretched_by_budget": r.stretched,
        "requests": r.count,
    })
}

/// The `intake` health check: push liveness and what the budget does to the intervals.
/// Degraded only when the budget stretches the listing so far that a new operation may wait
/// more than 10 minutes to be seen without push: the operator should know, and can install the
/// plugin or raise CALDERA_CPU_BUDGET.
pub fn intake_check(st: &IntakeState, now: SystemTime) -> Check {
    let s = st.status();
    let last = st.last_push();
    let mut c = Check::new(json!({
        "push_live": st.push_live(now),
        "last_push_seconds_ago": last.map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
        "events_accepted": st.events_accepted.get(),
        "events_dropped": st.events_dropped.get(),
        "plugin_dropped": st.plugin_dropped.get(),
        "batches_rejected": st.batches_rejected.get(),
        "listing": read_json(&s.listing),
        "operation_fetch": read_json(&s.operation),
        "link_fetch": read_json(&s.link),
        "remembered_settled": s.remembered_settled,
        "settled_known_from": s.known_from,
    }));
    let mut notes = Vec::new();
    for (what, r, budget_key) in [
        ("listing", &s.listing, "CALDERA_CPU_BUDGET"),
        (
            "operation fetches",
            &s.operation,
            "CALDERA_CPU_BUDGET_ACTIVE",
        ),
    ] {
        if r.stretched {
            notes.push(format!(
                "{what} every {:.0} s instead of the configured {:.0} s: each costs Caldera {:.0} ms and {budget_key} caps the share",
                r.effective.as_secs_f64(),
                r.configured.as_secs_f64(),
                ms(r.cost)
            ));
        }
    }
    if !notes.is_empty() {
        c.details
            .insert("budget_note".into(), notes.join("; ").into());
        if !st.push_live(now)
            && s.listing.stretched
            && s.listing.effective > Duration::from_secs(600)
        {
            c.raise(
                Level::Degraded,
                format!(
                    "without push, a new operation is seen only every {:.0} s ({}); install the Caldera plugin (README, \"Push from Caldera\") or raise CALDERA_CPU_BUDGET",
                    s.listing.effective.as_secs_f64(),
                    notes.join("; ")
                ),
            );
        }
    }
    c
}

/// Metrics lines for `/metrics` (appended by the renderer).
pub fn metrics(
    st: &IntakeState,
    now: SystemTime,
) -> Vec<(&'static str, &'static str, String, f64)> {
    let s = st.status();
    let mut out = Vec::new();
    for (label, r) in [
        ("listing", &s.listing),
        ("operation", &s.operation),
        ("link", &s.link),
    ] {
        let l = format!("read=\"{label}\"");
        out.push((
            "caldera_read_cost_seconds",
            "Measured (smoothed) time of one Caldera read of this kind.",
            l.clone(),
            r.cost.as_secs_f64(),
        ));
        out.push((
            "caldera_read_interval_seconds",
            "Effective interval between reads of this kind (configured, or longer when the CPU budget demands).",
            l.clone(),
            r.effective.as_secs_f64(),
        ));
        out.push((
            "caldera_read_interval_configured_seconds",
            "Configured interval between reads of this kind.",
            l.clone(),
            r.configured.as_secs_f64(),
        ));
        out.push((
            "caldera_read_stretched_by_budget",
            "1 when the CPU budget makes this interval longer than the configured one.",
            l.clone(),
            f64::from(u8::from(r.stretched)),
        ));
        out.push((
            "caldera_reads_total",
            "Caldera reads of this kind.",
            l,
            r.count as f64,
        ));
    }
    let last = st
        .last_push()
        .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64())
        .unwrap_or(-1.0);
    out.push((
        "push_live",
        "1 while the Caldera plugin has sent something within the last 95 s.",
        String::new(),
        f64::from(u8::from(st.push_live(now))),
    ));
    out.push((
        "push_last_event_age_seconds",
        "Seconds since the last message from the Caldera plugin (-1: never).",
        String::new(),
        last,
    ));
    for (name, help, c) in [
        (
            "push_events_accepted_total",
            "Pushed events accepted.",
            &st.events_accepted,
        ),
        (
            "push_events_dropped_total",
            "Pushed events dropped because the queue to the watcher was full (a reconciliation follows).",
            &st.events_dropped,
        ),
        (
            "push_plugin_dropped_total",
            "Events the Caldera plugin reports it dropped (sidecar unreachable or its queue full).",
            &st.plugin_dropped,
        ),
        (
            "push_batches_rejected_total",
            "Push requests refused as invalid (400/413).",
            &st.batches_rejected,
        ),
    ] {
        out.push((name, help, String::new(), c.get() as f64));
    }
    // The exposition format wants every sample of a family together.
    out.sort_by_key(|(name, ..)| *name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stretched(effective: u64) -> ReadCost {
        ReadCost {
            cost: Duration::from_millis(7_500),
            configured: Duration::from_secs(15),
            effective: Duration::from_secs(effective),
            stretched: true,
            count: 1,
        }
    }

    #[test]
    fn health_says_when_the_budget_stretches_the_listing() {
        let st = IntakeState::default();
        let now = SystemTime::now();
        let c = intake_check(&st, now);
        assert_eq!(c.level, Level::Ok);
        assert!(!c.details.contains_key("budget_note"));

        st.update(|s| s.listing = stretched(742));
        let c = intake_check(&st, now);
        assert_eq!(c.level, Level::Degraded);
        let m = c.message.unwrap_or_default();
        assert!(
            m.contains("only every 742 s") && m.contains("CALDERA_CPU_BUDGET"),
            "{m}"
        );
        let note = c.details["budget_note"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(note.contains("instead of the configured 15 s"), "{note}");

        // With push live the listing only reconciles: said, not degraded.
        *st.last_push.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        let c = intake_check(&st, now);
        assert_eq!(c.level, Level::Ok);
        assert_eq!(c.details["push_live"], true);
        assert!(c.details.contains_key("budget_note"));
        // Stretched a little (under 10 minutes): noted only.
        *st.last_push.lock().unwrap_or_else(|p| p.into_inner()) = None;
        st.update(|s| s.listing = stretched(120));
        assert_eq!(intake_check(&st, now).level, Level::Ok);
        let m = metrics(&st, now);
        assert!(
            m.iter()
                .any(|(n, _, l, v)| *n == "caldera_read_stretched_by_budget"
                    && l == "read=\"listing\""
                    && *v == 1.0)
        );
    }
}
