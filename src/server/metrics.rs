//! `GET /metrics`: the shared counters, gauges and latency histograms in the Prometheus text
//! exposition format 0.0.4, rendered from memory on each scrape.
//!
//! Naming follows Prometheus conventions: every metric starts with `caldera_sidecar_`,
//! counters end in `_total`, durations are in seconds and sizes in bytes. The two "counters"
//! of `state::Stats` that are really set, not added to (`operations_tracked`,
//! `operations_settled`), are exposed as gauges. Histograms are rendered cumulatively with a
//! final `le="+Inf"` bucket; `_count` is that bucket's value, so the two always agree even
//! while observations land during a scrape.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::health::{Level, breaker_code};
use super::probes::HostSnapshot;
use crate::state::{Counter, Histogram, Shared, Stats};

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const PREFIX: &str = "caldera_sidecar_";

/// Counters of [`Stats`], by name, with their help text.
fn counters(s: &Stats) -> [(&'static str, &'static str, &Counter); 20] {
    [
        ("polls_ok", "Caldera polls completed.", &s.polls_ok),
        (
            "polls_failed",
            "Caldera polls whose listing failed.",
            &s.polls_failed,
        ),
        (
            "caldera_requests_key",
            "Caldera requests authenticated with the KEY header (about 200 ms of Caldera's event loop each).",
            &s.caldera_requests_key,
        ),
        (
            "caldera_requests_session",
            "Caldera requests authenticated with the session cookie.",
            &s.caldera_requests_session,
        ),
        (
            "caldera_logins",
            "Session logins to Caldera (POST /enter).",
            &s.caldera_logins,
        ),
        (
            "caldera_errors",
            "Failed Caldera requests.",
            &s.caldera_errors,
        ),
        (
            "documents_emitted",
            "Documents built from Caldera and handed to the sink.",
            &s.documents_emitted,
        ),
        (
            "documents_indexed",
            "Documents Elasticsearch stored.",
            &s.documents_indexed,
        ),
        (
            "documents_already_current",
            "Documents answered 409: the index already held this or a newer observation.",
            &s.documents_already_current,
        ),
        (
            "documents_retried",
            "Document deliveries retried after a retryable failure.",
            &s.documents_retried,
        ),
        (
            "documents_rejected",
            "Documents Elasticsearch refused for good (4xx other than 409).",
            &s.documents_rejected,
        ),
        (
            "documents_failed",
            "Documents not delivered after all retries (spooled or handed back).",
            &s.documents_failed,
        ),
        (
            "bulk_requests",
            "Bulk requests sent to Elasticsearch.",
            &s.bulk_requests,
        ),
        (
            "bulk_failures",
            "Bulk requests that failed as a whole.",
            &s.bulk_failures,
        ),
        (
            "invalid_values",
            "Values refused by sanitizing and left out of documents.",
            &s.invalid_values,
        ),
        (
            "documents_spooled",
            "Documents written to the durable spool.",
            &s.documents_spooled,
        ),
        (
            "documents_replayed",
            "Documents replayed from the spool into Elasticsearch.",
            &s.documents_replayed,
        ),
        (
            "documents_dead_lettered",
            "Documents moved to the dead-letter directory.",
            &s.documents_dead_lettered,
        ),
        (
            "spool_write_failures",
            "Failed writes to the spool.",
            &s.spool_write_failures,
        ),
        (
            "documents_lost_at_stop",
            "Documents neither indexed nor spooled when the daemon stopped.",
            &s.documents_lost_at_stop,
        ),
    ]
}

/// Formats a sample value as Prometheus expects (`+Inf`, `-Inf`, `NaN`, or a decimal).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {PREFIX}{name} {help}");
        let _ = writeln!(self.0, "# TYPE {PREFIX}{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, v: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{PREFIX}{name} {}", value(v));
        } else {
            let _ = writeln!(self.0, "{PREFIX}{name}{{{labels}}} {}", value(v));
        }
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, "gauge", help);
        self.sample(name, "", v);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        use std::sync::atomic::Ordering;
        self.family(name, "histogram", help);
        let mut cumulative = 0u64;
        for (i, bucket) in h.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| value(*b));
            self.sample(
                &format!("{name}_bucket"),
                &format!("le=\"{le}\""),
                cumulative as f64,
            );
        }
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), "", sum);
        self.sample(&format!("{name}_count"), "", cumulative as f64);
    }
}

/// Renders every metric. `level` is the current health verdict (computed by the caller).
pub fn render(shared: &Shared, host: &HostSnapshot, level: Level) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    let s = &shared.stats;
    let now = SystemTime::now();

    o.family(
        "build_info",
        "gauge",
        "Always 1; the version label says which build runs.",
    );
    o.sample(
        "build_info",
        &format!("version=\"{}\"", label(env!("CARGO_PKG_VERSION"))),
        1.0,
    );
    o.gauge(
        "uptime_seconds",
        "Seconds since the sidecar started.",
        shared.started.elapsed().as_secs_f64(),
    );
    o.gauge(
        "health_status",
        "Overall health: 0 healthy, 1 degraded, 2 unhealthy.",
        f64::from(level.code()),
    );

    for (name, help, c) in counters(s) {
        let full = format!("{name}_total");
        o.family(&full, "counter", help);
        o.sample(&full, "", c.get() as f64);
    }

    o.gauge(
        "operations_tracked",
        "Caldera operations the watcher currently tracks.",
        s.operations_tracked.get() as f64,
    );
    o.gauge(
        "operations_settled",
        "Tracked operations that are settled (no longer fetched).",
        s.operations_settled.get() as f64,
    );

    let caldera = shared.caldera_status();
    let since_poll = caldera
        .last_ok_poll
        .map(|t| now.duration_since(t).unwrap_or_default())
        .unwrap_or_else(|| shared.started.elapsed());
    o.gauge(
        "last_successful_poll_age_seconds",
        "Seconds since the last successful Caldera poll (since start-up if none yet).",
        since_poll.as_secs_f64(),
    );
    o.gauge(
        "caldera_reachable",
        "1 if Caldera answered the last request.",
        f64::from(u8::from(caldera.reachable)),
    );
    o.gauge(
        "caldera_authenticated",
        "1 if Caldera accepted the configured credentials.",
        f64::from(u8::from(caldera.authenticated)),
    );
    let elastic = shared.elastic_status();
    o.gauge(
        "elasticsearch_reachable",
        "1 if Elasticsearch answered the last probe or bulk request.",
        f64::from(u8::from(elastic.reachable)),
    );

    let spool = shared.spool_status();
    o.gauge(
        "spool_documents",
        "Documents waiting in the durable spool.",
        spool.documents as f64,
    );
    o.gauge(
        "spool_bytes",
        "Bytes used by the durable spool.",
        spool.bytes as f64,
    );
    o.gauge(
        "spool_oldest_age_seconds",
        "Age of the oldest spooled document (0 when the spool is empty).",
        spool
            .oldest
            .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64())
            .unwrap_or(0.0),
    );
    o.gauge(
        "spool_full",
        "1 while spooling is refused for lack of space.",
        f64::from(u8::from(spool.full)),
    );
    o.gauge(
        "dead_letters",
        "Documents in the dead-letter directory.",
        spool.dead_letters as f64,
    );

    let breaker = shared.breaker_status();
    o.gauge(
        "circuit_breaker_state",
        "Circuit breaker in front of Elasticsearch: 0 closed, 1 half-open, 2 open.",
        f64::from(breaker_code(breaker.state)),
    );
    o.family(
        "circuit_breaker_in_state",
        "gauge",
        "1 for the circuit breaker's current state, 0 for the others.",
    );
    for st in ["closed", "half_open", "open"] {
        let on = breaker_code(breaker.state) == breaker_code(st);
        o.sample(
            "circuit_breaker_in_state",
            &format!("state=\"{st}\""),
            f64::from(u8::from(on)),
        );
    }
    o.gauge(
        "circuit_breaker_consecutive_failures",
        "Consecutive Elasticsearch failures counted by the circuit breaker.",
        f64::from(breaker.consecutive_failures),
    );
    o.family(
        "circuit_breaker_opened_total",
        "counter",
        "Times the circuit breaker opened.",
    );
    o.sample(
        "circuit_breaker_opened_total",
        "",
        breaker.times_opened as f64,
    );

    if let Some(b) = host.memory_available {
        o.gauge(
            "memory_available_bytes",
            "Memory available on this host (or cgroup), as health judges it.",
            b as f64,
        );
    }
    if let Some(b) = host.disk_free {
        o.gauge(
            "disk_free_bytes",
            "Free bytes on the filesystem holding SPOOL_DIR.",
            b as f64,
        );
    }

    let mut seen = std::collections::HashSet::new();
    for (name, help, labels, v) in crate::caldera::intake::metrics(&shared.intake, now) {
        if seen.insert(name) {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            o.family(name, kind, help);
        }
        o.sample(name, &labels, v);
    }

    let agents = shared.agents_status();
    if agents.interval.is_some() {
        o.family(
            "agents_live",
            "gauge",
            "Caldera agents alive per client (Caldera's rule: last seen within sleep_max + untrusted_timer).",
        );
        for (client, n) in &agents.clients {
            o.sample(
                "agents_live",
                &format!("client=\"{}\"", label(client)),
                n.live as f64,
            );
        }
        o.family(
            "agents",
            "gauge",
            "Caldera agents known per client, alive or not.",
        );
        for (client, n) in &agents.clients {
            o.sample(
                "agents",
                &format!("client=\"{}\"", label(client)),
                n.total as f64,
            );
        }
    }

    o.histogram(
        "poll_seconds",
        "Duration of one Caldera poll (listing plus the fetches it led to).",
        &s.poll_seconds,
    );
    o.histogram(
        "bulk_seconds",
        "Duration of one bulk request to Elasticsearch.",
        &s.bulk_seconds,
    );
    o.histogram(
        "observed_to_indexed_seconds",
        "From the watcher observing a change to Elasticsearch acknowledging it.",
        &s.observed_to_indexed_seconds,
    );
    shared.correlation.render_metrics(&mut o.0);
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        let shared = Shared::default();
        for ms in [0, 3, 3, 40, 70_000] {
            shared.stats.bulk_seconds.observe(Duration::from_millis(ms));
        }
        shared.stats.documents_indexed.add(7);
        let text = render(&shared, &HostSnapshot::default(), Level::Ok);
        assert!(text.contains("caldera_sidecar_documents_indexed_total 7\n"));
        assert!(text.contains("caldera_sidecar_bulk_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("caldera_sidecar_bulk_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("caldera_sidecar_bulk_seconds_bucket{le=\"60\"} 4\n"));
        assert!(text.contains("caldera_sidecar_bulk_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("caldera_sidecar_bulk_seconds_count 5\n"));
        assert!(text.contains("caldera_sidecar_bulk_seconds_sum 70.046\n"));
        assert!(text.contains("caldera_sidecar_circuit_breaker_in_state{state=\"closed\"} 1\n"));
    }

    #[test]
    fn values_and_labels_are_escaped() {
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(0.25), "0.25");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
