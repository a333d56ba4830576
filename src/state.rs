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
    pub last_error: Option<String>,
    pub last_ok_write: Option<SystemTime>,
}

#[derive(Debug)]
pub struct Shared {
    pub started: Instant,
    pub stats: Stats,
    pub caldera: Mutex<CalderaStatus>,
    pub elastic: Mutex<ElasticStatus>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            stats: Stats::default(),
            caldera: Mutex::new(CalderaStatus::default()),
            elastic: Mutex::new(ElasticStatus::default()),
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
