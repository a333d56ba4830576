//! One function per health check: each turns a copy of one stage's status into a [`Check`].
//! A capability with a check of its own writes it beside its code and adds one line to
//! [`super::evaluate`].

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::{Check, Level};
use super::{GB, HealthConfig, MB, age, one_line, rfc3339, round2, secs};
use crate::config::Thresholds;
use crate::server::probes::HostSnapshot;
use crate::state::{BreakerStatus, CalderaStatus, ElasticStatus, SpoolStatus, Stats};

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
        "last_error": e.last_error.as_deref().map(super::one_line),
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
        "last_error": cs.last_error.as_deref().map(super::one_line),
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
        "last_error": s.last_error.as_deref().map(super::one_line),
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
        "write_error": s.dead_letter_error,
    }));
    if let Some(err) = &s.dead_letter_error {
        c.raise(
            Level::Degraded,
            format!(
                "documents Elasticsearch refused cannot be written to DEAD_LETTER_DIR ({err}): they stay in the spool \
                 and are tried again every 10 s; make DEAD_LETTER_DIR writable and give it space"
            ),
        );
    } else if s.dead_letters > 0 {
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
