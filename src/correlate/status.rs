//! The stage's part of the shared picture: its state, last run, lag and errors for the
//! `correlation` health check, and its counters (per tier, per action outcome) for `/metrics`.
//!
//! Health rules: an alert source that is down or refusing us is **degraded**, never unhealthy
//! (nothing the sidecar indexes is at risk; alerts wait and are correlated later). No alert
//! index yet is **ok**, with the stage idle and the reason shown. Disabled is ok.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::action::Outcome;
use crate::state::Counter;

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// "disabled", "starting", "running" or "idle".
    pub state: &'static str,
    pub idle_reason: Option<String>,
    pub last_run: Option<SystemTime>,
    pub last_ok: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Seconds the oldest link still waiting for alerts has been finished.
    pub lag_seconds: Option<u64>,
    pub links_pending: u64,
    pub interval: Duration,
    pub alert_index: String,
    pub backend: &'static str,
}

#[derive(Debug, Default)]
pub struct CorrelationStatus {
    snapshot: Mutex<Snapshot>,
    pub passes: Counter,
    pub errors: Counter,
    pub alerts_read: Counter,
    pub alerts_malformed: Counter,
    pub links_checked: Counter,
    pub records_written: Counter,
    /// Matches by tier 1, 2, 3.
    pub matches: [Counter; 3],
    /// Action outcomes, in [`Outcome::ALL`] order.
    pub outcomes: [Counter; 8],
    /// The configured action's name, for the metric label.
    action: Mutex<&'static str>,
}

impl CorrelationStatus {
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut g = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_action(&self, name: &'static str) {
        *self.action.lock().unwrap_or_else(|p| p.into_inner()) = name;
    }

    pub fn count_match(&self, tier: u8) {
        if let Some(c) = self.matches.get(usize::from(tier.saturating_sub(1))) {
            c.inc();
        }
    }

    pub fn count_outcome(&self, o: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|x| *x == o) {
            self.outcomes[i].inc();
        }
    }

    /// Appends the stage's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        const P: &str = "caldera_sidecar_correlation_";
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {P}{name} {help}\n# TYPE {P}{name} counter\n{P}{name} {v}"
            );
        };
        counter(
            out,
            "passes_total",
            "Correlation passes completed.",
            self.passes.get(),
        );
        counter(
            out,
            "errors_total",
            "Correlation passes that failed.",
            self.errors.get(),
        );
        counter(
            out,
            "alerts_read_total",
            "Alerts read from ALERT_INDEX.",
            self.alerts_read.get(),
        );
        counter(
            out,
            "alerts_malformed_total",
            "Alerts skipped because a needed field was missing, of the wrong type or too large.",
            self.alerts_malformed.get(),
        );
        counter(
            out,
            "links_checked_total",
            "Link documents examined.",
            self.links_checked.get(),
        );
        counter(
            out,
            "records_written_total",
            "Correlation records written to CORRELATION_INDEX.",
            self.records_written.get(),
        );
        let _ = writeln!(
            out,
            "# HELP {P}matches_total Alert-to-link matches by tier (1 lineage, 2 command line, 3 host and window).\n# TYPE {P}matches_total counter"
        );
        for (i, c) in self.matches.iter().enumerate() {
            let _ = writeln!(out, "{P}matches_total{{tier=\"{}\"}} {}", i + 1, c.get());
        }
        let action = *self.action.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP {P}actions_total Alerts by what the configured action did to them.\n# TYPE {P}actions_total counter"
        );
        for (o, c) in Outcome::ALL.iter().zip(&self.outcomes) {
            let _ = writeln!(
                out,
                "{P}actions_total{{action=\"{action}\",result=\"{}\"}} {}",
                o.name(),
                c.get()
            );
        }
        let s = self.snapshot();
        let _ = writeln!(
            out,
            "# HELP {P}links_pending Links still waiting for their alerts (ALERT_WAIT).\n# TYPE {P}links_pending gauge\n{P}links_pending {}",
            s.links_pending
        );
    }
}

/// The `correlation` health check: (level, message, details). Level 0 ok, 1 degraded.
pub fn check(st: &CorrelationStatus, now: SystemTime) -> (u8, Option<String>, serde_json::Value) {
    let s = st.snapshot();
    let age = |t: Option<SystemTime>| {
        t.map(|t| now.duration_since(t).unwrap_or(Duration::ZERO).as_secs())
    };
    let details = json!({
        "state": if s.state.is_empty() { "disabled" } else { s.state },
        "reason": s.idle_reason,
        "alert_index": s.alert_index,
        "backend": s.backend,
        "last_run_seconds_ago": age(s.last_run),
        "last_success_seconds_ago": age(s.last_ok),
        "lag_seconds": s.lag_seconds,
        "links_pending": s.links_pending,
        "passes": st.passes.get(),
        "errors": st.errors.get(),
        "alerts_read": st.alerts_read.get(),
        "alerts_malformed": st.alerts_malformed.get(),
        "matches": {"tier1": st.matches[0].get(), "tier2": st.matches[1].get(), "tier3": st.matches[2].get()},
        "last_error": s.last_error,
    });
    if let Some(e) = &s.last_error {
        return (
            1,
            Some(format!(
                "correlation of alerts failed ({e}); check ALERT_INDEX, ALERT_API_KEY and ELK_URL; it retries every pass and nothing is lost"
            )),
            details,
        );
    }
    if s.state == "running" || s.state == "idle" {
        let bound = s.interval * 3 + Duration::from_secs(60);
        let stale = match s.last_ok.or(s.last_run) {
            Some(t) => now.duration_since(t).unwrap_or(Duration::ZERO) > bound,
            None => false,
        };
        if stale {
            return (
                1,
                Some(format!(
                    "no correlation pass finished for more than {} s",
                    bound.as_secs()
                )),
                details,
            );
        }
    }
    (0, None, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_source_down_is_degraded_and_idle_is_ok() {
        let st = CorrelationStatus::default();
        let now = SystemTime::now();
        st.update(|s| {
            s.state = "idle";
            s.idle_reason = Some("no alert index".into());
            s.interval = Duration::from_secs(30);
            s.last_run = Some(now);
            s.last_ok = Some(now);
        });
        let (level, msg, d) = check(&st, now);
        assert_eq!((level, msg), (0, None));
        assert_eq!(d["reason"], "no alert index");
        st.update(|s| s.last_error = Some("reading alerts: HTTP 403".into()));
        let (level, msg, _) = check(&st, now);
        assert_eq!(level, 1, "degraded, never unhealthy");
        assert!(msg.unwrap().contains("ALERT_API_KEY"));
        st.update(|s| {
            s.last_error = None;
            s.state = "running";
        });
        let later = now + Duration::from_secs(600);
        assert_eq!(check(&st, later).0, 1, "no pass for too long");
        st.count_match(1);
        st.count_outcome(Outcome::Applied);
        st.set_action("close");
        let mut m = String::new();
        st.render_metrics(&mut m);
        assert!(m.contains("caldera_sidecar_correlation_matches_total{tier=\"1\"} 1"));
        assert!(m.contains(
            "caldera_sidecar_correlation_actions_total{action=\"close\",result=\"applied\"} 1"
        ));
    }
}
