//! The one shared, cheaply-readable picture of the pipeline.
//!
//! Every stage writes its counters and its latest status here; the health and metrics endpoints
//! only read it, so they answer from memory and never wait on Caldera or Elasticsearch.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

/// A monotonically increasing counter or a gauge.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub polls_ok: Counter,
    pub polls_failed: Counter,
    pub caldera_requests_key: Counter,
    pub caldera_requests_session: Counter,
    pub caldera_logins: Counter,
    pub caldera_errors: Counter,
    pub operations_tracked: Counter,
    pub operations_settled: Counter,
    pub documents_emitted: Counter,
    pub documents_indexed: Counter,
    /// 409 answers: the index already holds this or a newer observation.
    pub documents_already_current: Counter,
    pub documents_retried: Counter,
    pub documents_rejected: Counter,
    pub documents_failed: Counter,
    pub bulk_requests: Counter,
    pub bulk_failures: Counter,
    pub invalid_values: Counter,
    pub documents_spooled: Counter,
    pub documents_replayed: Counter,
    pub documents_dead_lettered: Counter,
    pub spool_write_failures: Counter,
    /// Documents the sink could neither index nor spool while stopping (exit code non-zero).
    pub documents_lost_at_stop: Counter,
    /// Time of one Caldera poll (listing plus the fetches it led to).
    pub poll_seconds: Histogram,
    /// Time of one bulk request.
    pub bulk_seconds: Histogram,
    /// From the moment the watcher observed a change to the index acknowledging it.
    pub observed_to_indexed_seconds: Histogram,
}

/// A latency histogram with fixed buckets (seconds), rendered by `/metrics`.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending; an implicit +Inf bucket follows.
    pub bounds: &'static [f64],
    /// Cumulative-free counts per bucket (`bounds.len() + 1` entries).
    pub buckets: Vec<AtomicU64>,
    /// Sum of observations in microseconds.
    pub sum_micros: AtomicU64,
    pub count: AtomicU64,
}

pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            bounds: LATENCY_BOUNDS,
            buckets: (0..=LATENCY_BOUNDS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Circuit breaker in front of Elasticsearch, as health shows it.
#[derive(Debug, Clone)]
pub struct BreakerStatus {
    /// "closed", "open" or "half_open".
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// When the breaker entered its current state.
    pub since: SystemTime,
    pub times_opened: u64,
    /// While open: when the next probe is allowed.
    pub next_probe: Option<SystemTime>,
}

impl Default for BreakerStatus {
    fn default() -> Self {
        Self {
            state: "closed",
            consecutive_failures: 0,
            since: SystemTime::now(),
            times_opened: 0,
            next_probe: None,
        }
    }
}

/// The durable spool and the dead-letter directory, as health shows them.
#[derive(Debug, Clone, Default)]
pub struct SpoolStatus {
    pub documents: u64,
    pub bytes: u64,
    /// Write time of the oldest spooled document.
    pub oldest: Option<SystemTime>,
    pub dead_letters: u64,
    /// Spooling refused for lack of disk (DISK_CRITICAL_GB or SPOOL_MAX_MB reached).
    pub full: bool,
    pub last_error: Option<String>,
    /// The last failure to write a dead letter (the refused documents stay in the spool).
    pub dead_letter_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct CalderaStatus {
    pub reachable: bool,
    pub authenticated: bool,
    pub auth_method: &'static str,
    pub version: Option<String>,
    pub last_error: Option<String>,
    pub last_ok_poll: Option<SystemTime>,
}

#[derive(Debug, Clone, Default)]
pub struct ElasticStatus {
    pub reachable: bool,
    pub template_installed: bool,
    /// The installed template is the version this build writes (set by the health probe).
    pub template_current: bool,
    /// `_cluster/health` status ("green", "yellow", "red"), set by the health probe.
    pub cluster_status: Option<String>,
    pub last_probe: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_ok_write: Option<SystemTime>,
}

/// One client's Caldera agents (see `agents`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientAgents {
    pub live: u64,
    pub total: u64,
}

/// The background read of Caldera's agents, as health and metrics show it.
#[derive(Debug, Clone, Default)]
pub struct AgentsStatus {
    /// `None` while the background read is off (`AGENTS_POLL_INTERVAL=0`).
    pub interval: Option<std::time::Duration>,
    pub clients: std::collections::BTreeMap<String, ClientAgents>,
    pub last_ok_read: Option<SystemTime>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct Shared {
    pub started: Instant,
    pub stats: Stats,
    pub caldera: Mutex<CalderaStatus>,
    pub elastic: Mutex<ElasticStatus>,
    pub breaker: Mutex<BreakerStatus>,
    pub spool: Mutex<SpoolStatus>,
    /// Push endpoint counters, measured read costs and effective intervals.
    pub intake: crate::caldera::intake::IntakeState,
    /// Set when a pipeline stage died (see [`crate::supervise`]): health turns unhealthy,
    /// `/livez` fails, and the process exits non-zero so its supervisor restarts it.
    pub fatal: Mutex<Option<String>>,
    pub agents: Mutex<AgentsStatus>,
    pub correlation: crate::correlate::status::CorrelationStatus,
    /// The report writer's last outcome (`crate::report::daemon`).
    pub reports: Mutex<crate::report::daemon::ReportStatus>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            stats: Stats::default(),
            caldera: Mutex::new(CalderaStatus::default()),
            elastic: Mutex::new(ElasticStatus::default()),
            breaker: Mutex::new(BreakerStatus::default()),
            spool: Mutex::new(SpoolStatus::default()),
            intake: Default::default(),
            fatal: Mutex::new(None),
            agents: Mutex::new(AgentsStatus::default()),
            correlation: Default::default(),
            reports: Mutex::new(Default::default()),
        }
    }
}

impl Shared {
    /// Updates the Caldera status; a poisoned lock (a panic elsewhere) must not stop reporting.
    pub fn caldera(&self, f: impl FnOnce(&mut CalderaStatus)) {
        let mut g = self.caldera.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
    pub fn elastic(&self, f: impl FnOnce(&mut ElasticStatus)) {
        let mut g = self.elastic.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
    pub fn breaker(&self, f: impl FnOnce(&mut BreakerStatus)) {
        let mut g = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
    pub fn spool(&self, f: impl FnOnce(&mut SpoolStatus)) {
        let mut g = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
    /// Records the first stage failure (later ones are consequences of it).
    pub fn set_fatal(&self, why: String) {
        let mut g = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(why);
        }
    }
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn agents(&self, f: impl FnOnce(&mut AgentsStatus)) {
        let mut g = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
    pub fn agents_status(&self) -> AgentsStatus {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn breaker_status(&self) -> BreakerStatus {
        self.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn spool_status(&self) -> SpoolStatus {
        self.spool.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn caldera_status(&self) -> CalderaStatus {
        self.caldera
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn elastic_status(&self) -> ElasticStatus {
        self.elastic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
