//! The health verdict: turns the shared picture of the pipeline into checks with a status and,
//! when something is wrong, a one-line message that says what to do.
//!
//! Everything here is a pure function of [`Shared`], the latest host sample and the settings,
//! so `GET /api/v2/health` and `/metrics` answer from memory (a few short mutex reads) and the
//! rules can be unit-tested without a network. Probing happens elsewhere ([`super::probes`]).
//!
//! Rules, and why:
//! * Elasticsearch unreachable or refusing requests → **unhealthy**: nothing reaches the index;
//!   documents only survive in the spool.
//! * Circuit breaker open or half-open → **degraded**, not unhealthy: the breaker is doing its
//!   job (documents go to the durable spool, nothing is lost), and the causes that make it
//!   unsafe are judged on their own (Elasticsearch unreachable, spool full, disk critical).
//!   Reporting 503 for a working safety mechanism would make an orchestrator restart a daemon
//!   that is busy keeping data safe, during an Elasticsearch overload (429s) that it helps by
//!   backing off.
//! * Caldera unreachable or refusing our credentials → **degraded**: the sidecar keeps running
//!   and catches up when Caldera is back; what is already indexed stays correct.
//! * Spool holding documents → **degraded** (they are replayed automatically); spool full →
//!   **unhealthy** (new documents can no longer be kept).
//! * Memory or disk below the warning threshold → **degraded**; below the critical one →
//!   **unhealthy**.
//! * No successful Caldera poll within the expected bound → **degraded** (new operations are not
//!   being picked up).
//!
//! Messages never contain secrets: only non-secret setting *names* and the already sanitized
//! error strings of the status structs.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

mod checks;

pub use checks::*;

use super::probes::HostSnapshot;
use crate::config::{Settings, Thresholds};
use crate::state::Shared;

const GB: f64 = 1024.0 * 1024.0 * 1024.0;
const MB: f64 = 1024.0 * 1024.0;

/// The verdict of one check or of the whole sidecar. Ordered: the worst check wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Degraded,
    Unhealthy,
}

impl Level {
    /// The word used in a check's `status`.
    pub fn check_word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Degraded => "degraded",
            Level::Unhealthy => "unhealthy",
        }
    }

    /// The word used in the overall `status`.
    pub fn overall_word(self) -> &'static str {
        match self {
            Level::Ok => "healthy",
            Level::Degraded => "degraded",
            Level::Unhealthy => "unhealthy",
        }
    }

    /// 0 healthy, 1 degraded, 2 unhealthy (the `status` command's exit code, a metrics gauge).
    pub fn code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Degraded => 1,
            Level::Unhealthy => 2,
        }
    }
}

/// What the verdict needs from the settings (copied once at start-up; no secrets).
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub thresholds: Thresholds,
    /// A successful Caldera poll older than this means the pipeline is stale.
    pub poll_bound: Duration,
    /// How long after start-up "no answer yet" is still normal.
    pub startup_grace: Duration,
    /// The index template name, shown in messages.
    pub template_name: String,
}

impl HealthConfig {
    pub fn from_settings(s: &Settings) -> Self {
        let poll_bound = expected_poll_bound(
            s.caldera.poll_interval,
            s.caldera.idle_interval,
            s.caldera.timeout,
        );
        Self {
            thresholds: s.thresholds.clone(),
            poll_bound,
            startup_grace: poll_bound,
            template_name: crate::sink::template::template_name(&s.elastic.index),
        }
    }
}

/// The longest normal gap between two successful polls: three idle intervals (polling slows
/// down to the idle interval when nothing is active) plus one request timeout (a poll that
/// hangs is abandoned after that), never less than 10 s.
pub fn expected_poll_bound(fast: Duration, idle: Duration, timeout: Duration) -> Duration {
    (idle.max(fast) * 3 + timeout).max(Duration::from_secs(10))
}

/// One check: its verdict, what to do about it, and the details shown in the JSON.
#[derive(Debug, Clone)]
pub struct Check {
    pub level: Level,
    pub message: Option<String>,
    pub details: Map<String, Value>,
}

impl Check {
    pub(crate) fn new(details: Value) -> Self {
        let details = match details {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        Self {
            level: Level::Ok,
            message: None,
            details,
        }
    }

    /// Raises the verdict; the message of the worst finding is kept.
    pub(crate) fn raise(&mut self, level: Level, message: String) {
        if level > self.level || (level == self.level && self.message.is_none()) {
            self.level = level;
            self.message = Some(one_line(&message));
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("status".into(), self.level.check_word().into());
        if let Some(msg) = &self.message {
            m.insert("message".into(), msg.clone().into());
        }
        for (k, v) in &self.details {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// The whole verdict.
#[derive(Debug, Clone)]
pub struct Report {
    pub level: Level,
    pub uptime: Duration,
    pub checks: Vec<(&'static str, Check)>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        let mut checks = Map::new();
        for (name, c) in &self.checks {
            checks.insert((*name).to_string(), c.to_json());
        }
        json!({
            "status": self.level.overall_word(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.uptime.as_secs(),
            "checks": checks,
        })
    }
}

/// Computes the verdict from memory. Cheap: a handful of short lock-and-clone reads.
pub fn evaluate(shared: &Shared, host: &HostSnapshot, cfg: &HealthConfig) -> Report {
    let now = SystemTime::now();
    let uptime = shared.started.elapsed();
    let starting = uptime < cfg.startup_grace;
    // One short lock per status struct, then everything works on copies.
    let elastic = shared.elastic_status();
    let caldera = shared.caldera_status();
    let breaker = shared.breaker_status();
    let spool = shared.spool_status();
    let checks = vec![
        ("elasticsearch", elastic_check(&elastic, cfg, now, starting)),
        ("caldera", caldera_check(&caldera, now, starting)),
        ("circuit_breaker", breaker_check(&breaker, now)),
        ("spool", spool_check(&spool, now)),
        ("dead_letters", dead_letter_check(&spool, &shared.stats)),
        ("memory", memory_check(host, &cfg.thresholds, now)),
        ("disk", disk_check(host, &cfg.thresholds, now)),
        ("pipeline", {
            let mut c =
                pipeline_check(&caldera, &shared.stats, &budgeted(cfg, shared), uptime, now);
            stage_failure(&mut c, shared.fatal());
            c
        }),
        (
            "intake",
            crate::caldera::intake::intake_check(&shared.intake, now),
        ),
        (
            "agents",
            crate::agents::check::agents_check(&shared.agents_status(), now, uptime),
        ),
        ("correlation", correlation_check(shared, now)),
        ("reports", crate::report::daemon::health_check(shared)),
    ];
    let level = checks
        .iter()
        .map(|(_, c)| c.level)
        .max()
        .unwrap_or(Level::Ok);
    Report {
        level,
        uptime,
        checks,
    }
}

/// The poll bound, widened when the CPU budget (or push reconciliation) spaces the listing
/// further than the configured intervals.
fn budgeted(cfg: &HealthConfig, shared: &Shared) -> HealthConfig {
    let listing = shared.intake.status().listing.effective;
    HealthConfig {
        poll_bound: cfg.poll_bound.max(listing * 3 + Duration::from_secs(10)),
        ..cfg.clone()
    }
}

/// A dead stage (see [`crate::supervise`]) makes the pipeline unhealthy: nothing is indexed any
/// more, and the process is about to exit so that it is restarted.
fn stage_failure(c: &mut Check, fatal: Option<String>) {
    if let Some(why) = fatal {
        c.details
            .insert("stage_failure".into(), one_line(&why).into());
        c.raise(
            Level::Unhealthy,
            format!("{why}: the process exits with code 1 so that systemd (Restart=on-failure) starts it again; see the log"),
        );
    }
}

/// The correlation stage's check, from its own status (see `correlate::status`).
fn correlation_check(shared: &Shared, now: SystemTime) -> Check {
    let (level, message, details) = crate::correlate::status::check(&shared.correlation, now);
    let mut c = Check::new(details);
    if let (1, Some(m)) = (level, message) {
        c.raise(Level::Degraded, m);
    }
    c
}

fn age(now: SystemTime, t: Option<SystemTime>) -> Option<Duration> {
    // A clock step backwards makes `t` lie in the future: call that "just now".
    t.map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
}

fn secs(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| d.as_secs().into())
}

fn rfc3339(t: SystemTime) -> Value {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .map_or(Value::Null, Value::from)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Keeps a message on one line and short: control characters become spaces.
pub fn one_line(s: &str) -> String {
    const MAX: usize = 400;
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.chars().count() > MAX {
        out = out.chars().take(MAX).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BreakerStatus, CalderaStatus, ElasticStatus, SpoolStatus, Stats};

    fn cfg() -> HealthConfig {
        HealthConfig {
            thresholds: Thresholds {
                memory_warning_gb: 1.0,
                memory_critical_gb: 0.25,
                disk_warning_gb: 5.0,
                disk_critical_gb: 1.0,
            },
            poll_bound: Duration::from_secs(30),
            startup_grace: Duration::from_secs(30),
            template_name: "caldera-sidecar-x".into(),
        }
    }

    fn healthy_elastic() -> ElasticStatus {
        ElasticStatus {
            reachable: true,
            template_installed: true,
            template_current: true,
            cluster_status: Some("green".into()),
            last_probe: Some(SystemTime::now()),
            ..Default::default()
        }
    }

    #[test]
    fn worst_check_wins_and_messages_only_when_not_ok() {
        let mut c = Check::new(json!({}));
        c.raise(Level::Degraded, "a".into());
        c.raise(Level::Unhealthy, "b\nc".into());
        c.raise(Level::Degraded, "d".into());
        assert_eq!(c.level, Level::Unhealthy);
        assert_eq!(c.message.as_deref(), Some("b c"));
        let ok = Check::new(json!({"x": 1})).to_json();
        assert!(ok.get("message").is_none());
        assert_eq!(ok["status"], "ok");
    }

    #[test]
    fn elasticsearch_rules() {
        let now = SystemTime::now();
        let c = elastic_check(&healthy_elastic(), &cfg(), now, false);
        assert_eq!(c.level, Level::Ok, "{:?}", c.message);

        let down = ElasticStatus {
            reachable: false,
            last_error: Some("cannot reach Elasticsearch: connection refused".into()),
            last_probe: Some(now),
            ..Default::default()
        };
        let c = elastic_check(&down, &cfg(), now, false);
        assert_eq!(c.level, Level::Unhealthy);
        assert!(
            c.message
                .as_deref()
                .unwrap_or("")
                .contains("Elasticsearch unreachable")
        );

        let refused = ElasticStatus {
            last_error: Some(
                "HTTP 401: Elasticsearch refused the credentials (check ELK_API_KEY)".into(),
            ),
            ..healthy_elastic()
        };
        let c = elastic_check(&refused, &cfg(), now, false);
        assert_eq!(c.level, Level::Unhealthy);
        assert!(c.message.as_deref().unwrap_or("").contains("ELK_API_KEY"));

        let busy = ElasticStatus {
            last_error: Some("HTTP 429: es_rejected_execution_exception".into()),
            ..healthy_elastic()
        };
        assert_eq!(
            elastic_check(&busy, &cfg(), now, false).level,
            Level::Degraded
        );
        let old = ElasticStatus {
            template_current: false,
            ..healthy_elastic()
        };
        assert_eq!(
            elastic_check(&old, &cfg(), now, false).level,
            Level::Degraded
        );
        let red = ElasticStatus {
            cluster_status: Some("red".into()),
            ..healthy_elastic()
        };
        assert_eq!(
            elastic_check(&red, &cfg(), now, false).level,
            Level::Degraded
        );
        let pending = ElasticStatus {
            reachable: true,
            template_installed: true,
            ..Default::default()
        };
        let c = elastic_check(&pending, &cfg(), now, true);
        assert_eq!(c.level, Level::Degraded);
        assert!(c.message.unwrap_or_default().contains("starting"));
    }

    #[test]
    fn caldera_auth_failure_names_the_settings() {
        let now = SystemTime::now();
        for method in ["session", "key", "none"] {
            let cs = CalderaStatus {
                reachable: true,
                authenticated: false,
                auth_method: method,
                last_error: Some("api/v2/operations: authentication failed (HTTP 401)".into()),
                ..Default::default()
            };
            let c = caldera_check(&cs, now, false);
            assert_eq!(c.level, Level::Degraded);
            let m = c.message.unwrap_or_default();
            assert!(m.contains("authentication failed"), "{m}");
            assert!(
                m.contains("CALDERA_USER/CALDERA_PASSWORD") || m.contains("CALDERA_API_KEY"),
                "{m}"
            );
        }
        let unreachable = CalderaStatus {
            last_error: Some("x: cannot connect".into()),
            ..Default::default()
        };
        let m = caldera_check(&unreachable, now, false)
            .message
            .unwrap_or_default();
        assert!(m.contains("Caldera unreachable"), "{m}");
    }

    #[test]
    fn thresholds_decide_memory_and_disk() {
        let now = SystemTime::now();
        let t = cfg().thresholds;
        let host = |mem_gb: f64, disk_gb: f64| HostSnapshot {
            sampled: Some(now),
            memory_available: Some((mem_gb * GB) as u64),
            disk_free: Some((disk_gb * GB) as u64),
            ..Default::default()
        };
        assert_eq!(memory_check(&host(8.0, 0.0), &t, now).level, Level::Ok);
        assert_eq!(
            memory_check(&host(0.5, 0.0), &t, now).level,
            Level::Degraded
        );
        assert_eq!(
            memory_check(&host(0.1, 0.0), &t, now).level,
            Level::Unhealthy
        );
        assert_eq!(disk_check(&host(0.0, 50.0), &t, now).level, Level::Ok);
        assert_eq!(disk_check(&host(0.0, 3.0), &t, now).level, Level::Degraded);
        assert_eq!(disk_check(&host(0.0, 0.5), &t, now).level, Level::Unhealthy);
        let unknown = HostSnapshot::default();
        assert_eq!(disk_check(&unknown, &t, now).level, Level::Ok);
    }

    #[test]
    fn spool_breaker_and_pipeline_rules() {
        let now = SystemTime::now();
        let mut s = SpoolStatus::default();
        assert_eq!(spool_check(&s, now).level, Level::Ok);
        s.documents = 3;
        s.bytes = 2048;
        assert_eq!(spool_check(&s, now).level, Level::Degraded);
        s.full = true;
        assert_eq!(spool_check(&s, now).level, Level::Unhealthy);

        let mut b = BreakerStatus::default();
        assert_eq!(breaker_check(&b, now).level, Level::Ok);
        b.state = "open";
        assert_eq!(breaker_check(&b, now).level, Level::Degraded);
        assert_eq!(breaker_code("open"), 2);

        let stats = Stats::default();
        let fresh = CalderaStatus {
            last_ok_poll: Some(now),
            ..Default::default()
        };
        let stale = CalderaStatus {
            last_ok_poll: Some(now - Duration::from_secs(120)),
            ..Default::default()
        };
        let up = Duration::from_secs(600);
        assert_eq!(
            pipeline_check(&fresh, &stats, &cfg(), up, now).level,
            Level::Ok
        );
        assert_eq!(
            pipeline_check(&stale, &stats, &cfg(), up, now).level,
            Level::Degraded
        );
    }

    #[test]
    fn poll_bound_follows_intervals() {
        let b = expected_poll_bound(
            Duration::from_secs(2),
            Duration::from_secs(15),
            Duration::from_secs(10),
        );
        assert_eq!(b, Duration::from_secs(55));
        let b = expected_poll_bound(
            Duration::from_millis(200),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(b, Duration::from_secs(10));
    }
}
