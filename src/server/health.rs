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

use super::probes::HostSnapshot;
use crate::config::{Settings, Thresholds};
use crate::state::{BreakerStatus, CalderaStatus, ElasticStatus, Shared, SpoolStatus, Stats};

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
    fn new(details: Value) -> Self {
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
    fn raise(&mut self, level: Level, message: String) {
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
        (
            "pipeline",
            pipeline_check(&caldera, &shared.stats, cfg, uptime, now),
        ),
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

pub fn elastic_check(
    e: &ElasticStatus,
    cfg: &HealthConfig,
    now: SystemTime,
    starting: bool,
) -> Check {
    let mut c = Check::new(json!({
        "reachable": e.reachable,
        "cluster_status": e.cluster_status,
        "template": cfg.template_name,
        "template_installed": e.template_installed,
        "template_current": e.template_current,
        "last_error": e.last_error,
        "last_probe_seconds_ago": secs(age(now, e.last_probe)),
        "last_write_seconds_ago": secs(age(now, e.last_ok_write)),
    }));
    let error = e.last_error.as_deref().unwrap_or("");
    if e.last_probe.is_none() && e.last_error.is_none() {
        // Until the first probe, the template's version and the cluster status are unknown:
        // not yet healthy (this lasts milliseconds after start-up, at most ES_PROBE_TIMEOUT).
        c.details.insert("pending".into(), true.into());
        c.raise(
            Level::Degraded,
            if starting {
                "starting: waiting for the first Elasticsearch health probe".into()
            } else {
                "no answer from Elasticsearch yet: check that Elasticsearch is running and that ELK_URL points to it".into()
            },
        );
        return c;
    }
    if !e.reachable {
        c.raise(
            Level::Unhealthy,
            format!(
                "Elasticsearch unreachable at the configured ELK_URL: documents are being spooled; \
                 check that Elasticsearch is running and reachable from this host ({})",
                if error.is_empty() { "no answer" } else { error }
            ),
        );
        return c;
    }
    if error.starts_with("HTTP 429") {
        // Back-pressure, not an outage: the sink backs off and spools; the breaker shows it.
        c.raise(
            Level::Degraded,
            format!("Elasticsearch is rejecting requests for load (HTTP 429): documents are retried with backoff or spooled; check the cluster's load ({error})"),
        );
        return c;
    }
    if !error.is_empty() {
        let hint = if error.contains("HTTP 401") || error.contains("HTTP 403") {
            "Elasticsearch refused the credentials: check ELK_API_KEY (or the user and password in ELK_URL) and its privileges"
        } else {
            "Elasticsearch answered with an error: documents are being retried or spooled; check the Elasticsearch logs"
        };
        c.raise(Level::Unhealthy, format!("{hint} ({error})"));
        return c;
    }
    if e.cluster_status.as_deref() == Some("red") {
        c.raise(
            Level::Degraded,
            "Elasticsearch cluster status is red: some shards are unassigned and writes may fail; check GET _cluster/health".into(),
        );
    }
    if e.last_probe.is_some() && !e.template_installed {
        c.raise(
            Level::Degraded,
            format!(
                "index template {} is missing, so new indices get dynamic mappings: check that the Elasticsearch user may manage index templates, then restart the sidecar (it installs the template at start-up)",
                cfg.template_name
            ),
        );
    } else if e.last_probe.is_some() && !e.template_current {
        c.raise(
            Level::Degraded,
            format!(
                "index template {} is not the version this sidecar writes: restart the sidecar to install the current one",
                cfg.template_name
            ),
        );
    }
    c
}

pub fn caldera_check(cs: &CalderaStatus, now: SystemTime, starting: bool) -> Check {
    let mut c = Check::new(json!({
        "reachable": cs.reachable,
        "authenticated": cs.authenticated,
        "auth_method": cs.auth_method,
        "version": cs.version,
        "last_error": cs.last_error,
        "last_poll_seconds_ago": secs(age(now, cs.last_ok_poll)),
    }));
    let error = cs.last_error.as_deref().unwrap_or("");
    if cs.last_error.is_none() && cs.last_ok_poll.is_none() {
        c.details.insert("pending".into(), true.into());
        if !starting {
            c.raise(
                Level::Degraded,
                "no answer from Caldera yet: check that Caldera is running and that CALDERA_URL points to it".into(),
            );
        }
        return c;
    }
    if !cs.reachable && !error.is_empty() {
        c.raise(
            Level::Degraded,
            format!(
                "Caldera unreachable at the configured CALDERA_URL: operations are not being updated \
                 (they catch up once it answers); check that Caldera is running ({error})"
            ),
        );
    } else if !cs.authenticated && !error.is_empty() {
        let what = match cs.auth_method {
            "none" => {
                "no Caldera credentials are configured: set CALDERA_USER/CALDERA_PASSWORD (preferred) or CALDERA_API_KEY"
            }
            "key" => {
                "check CALDERA_API_KEY (or set CALDERA_USER/CALDERA_PASSWORD, which is much cheaper for Caldera)"
            }
            _ => "check CALDERA_USER/CALDERA_PASSWORD (and CALDERA_API_KEY if set)",
        };
        c.raise(
            Level::Degraded,
            format!("Caldera authentication failed: {what}; polling continues and recovers by itself ({error})"),
        );
    } else if !error.is_empty() {
        c.raise(
            Level::Degraded,
            format!(
                "Caldera answered with an error; the request is retried on the next poll ({error})"
            ),
        );
    }
    c
}

/// The numeric form of a breaker state for metrics: 0 closed, 1 half-open, 2 open.
pub fn breaker_code(state: &str) -> u8 {
    match state {
        "closed" => 0,
        "half_open" => 1,
        _ => 2,
    }
}

pub fn breaker_check(b: &BreakerStatus, now: SystemTime) -> Check {
    let mut c = Check::new(json!({
        "state": b.state,
        "consecutive_failures": b.consecutive_failures,
        "since": rfc3339(b.since),
        "seconds_in_state": age(now, Some(b.since)).map_or(0, |d| d.as_secs()),
        "times_opened": b.times_opened,
        "next_probe_in_seconds": b.next_probe.map(|t| t.duration_since(now).map_or(0, |d| d.as_secs())),
    }));
    match b.state {
        "closed" => {}
        "half_open" => c.raise(
            Level::Degraded,
            "circuit breaker half-open: Elasticsearch is being tested with one request after failures; documents wait in the spool meanwhile".into(),
        ),
        _ => c.raise(
            Level::Degraded,
            format!(
                "circuit breaker open after {} consecutive Elasticsearch failures: documents are spooled and nothing is lost; \
                 see the elasticsearch check for the cause",
                b.consecutive_failures
            ),
        ),
    }
    c
}

pub fn spool_check(s: &SpoolStatus, now: SystemTime) -> Check {
    let oldest_age = age(now, s.oldest);
    let mut c = Check::new(json!({
        "documents": s.documents,
        "bytes": s.bytes,
        "oldest_age_seconds": secs(oldest_age),
        "full": s.full,
        "last_error": s.last_error,
    }));
    if s.full {
        c.raise(
            Level::Unhealthy,
            "spool is full (SPOOL_MAX_MB or DISK_CRITICAL_GB reached): new documents cannot be kept; \
             restore Elasticsearch and free disk space or raise SPOOL_MAX_MB"
                .into(),
        );
    } else if let Some(err) = &s.last_error {
        c.raise(
            Level::Degraded,
            format!("writing to the spool failed: check that SPOOL_DIR is writable and has free space ({err})"),
        );
    } else if s.documents > 0 {
        let since = oldest_age.map_or(String::new(), |d| format!(", oldest {} s old", d.as_secs()));
        c.raise(
            Level::Degraded,
            format!(
                "{} documents ({:.1} MB{since}) wait in the spool: they are replayed automatically once Elasticsearch accepts writes",
                s.documents,
                s.bytes as f64 / MB
            ),
        );
    }
    c
}

pub fn dead_letter_check(s: &SpoolStatus, stats: &Stats) -> Check {
    let mut c = Check::new(json!({
        "documents": s.dead_letters,
        "dead_lettered_since_start": stats.documents_dead_lettered.get(),
        "rejected_since_start": stats.documents_rejected.get(),
    }));
    if s.dead_letters > 0 {
        c.raise(
            Level::Degraded,
            format!(
                "{} documents refused by Elasticsearch are kept in DEAD_LETTER_DIR: read the reason stored with each, fix the cause, then delete or replay them",
                s.dead_letters
            ),
        );
    }
    c
}

pub fn memory_check(h: &HostSnapshot, t: &Thresholds, now: SystemTime) -> Check {
    let avail = h.memory_available.map(|b| b as f64 / GB);
    let mut c = Check::new(json!({
        "available_gb": avail.map(round2),
        "total_gb": h.memory_total.map(|b| round2(b as f64 / GB)),
        "warning_gb": t.memory_warning_gb,
        "critical_gb": t.memory_critical_gb,
        "sampled_seconds_ago": secs(age(now, h.sampled)),
    }));
    match avail {
        None => {
            c.details.insert("measured".into(), false.into());
            if let Some(e) = &h.memory_error {
                c.details.insert("note".into(), one_line(e).into());
            }
        }
        Some(gb) if gb < t.memory_critical_gb => c.raise(
            Level::Unhealthy,
            format!(
                "only {gb:.2} GB of memory available, below MEMORY_CRITICAL_GB ({}): free memory on this host (or raise the service's memory limit)",
                t.memory_critical_gb
            ),
        ),
        Some(gb) if gb < t.memory_warning_gb => c.raise(
            Level::Degraded,
            format!(
                "only {gb:.2} GB of memory available, below MEMORY_WARNING_GB ({}): free memory on this host before it reaches MEMORY_CRITICAL_GB",
                t.memory_warning_gb
            ),
        ),
        Some(_) => {}
    }
    c
}

pub fn disk_check(h: &HostSnapshot, t: &Thresholds, now: SystemTime) -> Check {
    let free = h.disk_free.map(|b| b as f64 / GB);
    let mut c = Check::new(json!({
        "free_gb": free.map(round2),
        "total_gb": h.disk_total.map(|b| round2(b as f64 / GB)),
        "mount_point": h.disk_mount.as_ref().map(|p| p.display().to_string()),
        "warning_gb": t.disk_warning_gb,
        "critical_gb": t.disk_critical_gb,
        "sampled_seconds_ago": secs(age(now, h.sampled)),
    }));
    match free {
        None => {
            // Not measurable (e.g. a tmpfs or network filesystem): say so, but do not flag
            // the sidecar for something it cannot see.
            c.details.insert("measured".into(), false.into());
            if let Some(e) = &h.disk_error {
                c.details.insert("note".into(), one_line(e).into());
            }
        }
        Some(gb) if gb < t.disk_critical_gb => c.raise(
            Level::Unhealthy,
            format!(
                "only {gb:.2} GB free on the filesystem holding SPOOL_DIR, below DISK_CRITICAL_GB ({}): spooling stops; free disk space now",
                t.disk_critical_gb
            ),
        ),
        Some(gb) if gb < t.disk_warning_gb => c.raise(
            Level::Degraded,
            format!(
                "only {gb:.2} GB free on the filesystem holding SPOOL_DIR, below DISK_WARNING_GB ({}): free disk space before spooling stops at DISK_CRITICAL_GB ({})",
                t.disk_warning_gb, t.disk_critical_gb
            ),
        ),
        Some(_) => {}
    }
    c
}

pub fn pipeline_check(
    cs: &CalderaStatus,
    stats: &Stats,
    cfg: &HealthConfig,
    uptime: Duration,
    now: SystemTime,
) -> Check {
    let since_poll = age(now, cs.last_ok_poll);
    let mut c = Check::new(json!({
        "last_successful_poll_seconds_ago": secs(since_poll),
        "expected_within_seconds": cfg.poll_bound.as_secs(),
        "polls_ok": stats.polls_ok.get(),
        "polls_failed": stats.polls_failed.get(),
        "operations_tracked": stats.operations_tracked.get(),
        "operations_settled": stats.operations_settled.get(),
        "documents_emitted": stats.documents_emitted.get(),
        "documents_indexed": stats.documents_indexed.get(),
        "documents_already_current": stats.documents_already_current.get(),
        "documents_spooled": stats.documents_spooled.get(),
        "documents_replayed": stats.documents_replayed.get(),
        "documents_failed": stats.documents_failed.get(),
        "documents_rejected": stats.documents_rejected.get(),
        "documents_dead_lettered": stats.documents_dead_lettered.get(),
        "invalid_values": stats.invalid_values.get(),
    }));
    let stale_for = match since_poll {
        Some(d) if d > cfg.poll_bound => Some(d),
        None if uptime > cfg.poll_bound => Some(uptime),
        _ => None,
    };
    if let Some(d) = stale_for {
        c.raise(
            Level::Degraded,
            format!(
                "no successful Caldera poll for {} s (expected within {} s): new operations and links are not being indexed; see the caldera check",
                d.as_secs(),
                cfg.poll_bound.as_secs()
            ),
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

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
