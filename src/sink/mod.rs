//! The sink: gets documents into Elasticsearch exactly once, and loses none on the way.
//!
//! Pieces, kept apart as in Vector's Elasticsearch sink: [`template`] (what the index looks
//! like), [`elastic`] (request building and sending), [`retry`] (what a status means, per
//! request and per bulk item), [`breaker`] (when to stop trying), [`spool`] (where documents
//! wait, durably), [`deadletter`] (documents refused for good) and [`replay`] (spool and
//! dead letters back into the index, by hand).
//!
//! Per batch: 2xx and 409 items are done; 429/5xx items are retried with backoff and jitter up
//! to `ELK_MAX_RETRIES`; other 4xx items become dead letters. Whatever is still not delivered
//! then — or everything, while the breaker is open — goes to the spool, which is drained
//! oldest first as soon as Elasticsearch takes writes again. A spooled file is deleted only
//! after the index acknowledged its document.

pub mod breaker;
pub mod deadletter;
pub mod elastic;
pub mod replay;
pub mod retry;
pub mod spool;
pub mod template;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use elasticsearch::Elasticsearch;
use tokio::sync::mpsc;

use crate::config::{ElasticSettings, Settings};
use crate::document::{Encoded, Unsaved};
use crate::state::Shared;
use breaker::{Breaker, Permit};
use retry::{ItemOutcome, RequestOutcome, backoff, classify_item};
use spool::{Spool, SpoolError};

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How often an idle sink looks at a non-empty spool.
const DRAIN_TICK: Duration = Duration::from_millis(250);

/// What happened to the items of one bulk request.
pub struct BulkResult {
    pub outcomes: Vec<ItemOutcome>,
}

/// Sends one bulk request and classifies every item.
pub async fn send_bulk(
    es: &Elasticsearch,
    index: &str,
    docs: &[Encoded],
    timeout: Duration,
) -> Result<BulkResult, elastic::RequestError> {
    let items = elastic::bulk(es, index, docs, timeout).await?;
    Ok(BulkResult {
        outcomes: items
            .into_iter()
            .map(|item| classify_item(item.status, || item.reason()))
            .collect(),
    })
}

pub struct Sink {
    es: Elasticsearch,
    settings: ElasticSettings,
    shared: Arc<Shared>,
    /// Ids of documents that could not be kept anywhere, so the watcher sends them again.
    unsaved: mpsc::UnboundedSender<Unsaved>,
    breaker: Breaker,
    spool: Arc<Mutex<Spool>>,
    dead_letter_dir: PathBuf,
    dead_letters: u64,
    spool_full: bool,
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    /// Opens the spool (it must be usable: without it the no-loss promise cannot be kept).
    pub fn new(
        es: Elasticsearch,
        settings: &Settings,
        shared: Arc<Shared>,
        unsaved: mpsc::UnboundedSender<Unsaved>,
    ) -> Result<Self, String> {
        let min_free = (settings.thresholds.disk_critical_gb * 1e9) as u64;
        let spool =
            Spool::open(&settings.spool_dir, settings.spool_max_bytes, min_free).map_err(|e| {
                format!(
                    "cannot open SPOOL_DIR {}: {e}",
                    settings.spool_dir.display()
                )
            })?;
        if !spool.is_empty() {
            tracing::info!(
                documents = spool.len(),
                bytes = spool.bytes(),
                "spooled documents found; they will be replayed"
            );
        }
        let e = &settings.elastic;
        let s = Self {
            es,
            settings: e.clone(),
            shared,
            unsaved,
            breaker: Breaker::new(
                e.breaker_failures,
                e.breaker_cooldown,
                e.breaker_max_cooldown,
            ),
            spool: Arc::new(Mutex::new(spool)),
            dead_letter_dir: settings.dead_letter_dir.clone(),
            dead_letters: deadletter::count(&settings.dead_letter_dir),
            spool_full: false,
        };
        s.publish();
        Ok(s)
    }

    fn publish(&self) {
        let (documents, bytes, oldest) = {
            let s = lock(&self.spool);
            (s.len() as u64, s.bytes(), s.oldest())
        };
        // Nothing waits in the spool and writes go straight to the index: not "full" any more.
        let full = self.spool_full && !(documents == 0 && self.breaker.is_closed());
        let dead = self.dead_letters;
        self.shared.spool(|s| {
            s.documents = documents;
            s.bytes = bytes;
            s.oldest = oldest;
            s.full = full;
            s.dead_letters = dead;
        });
        let b = &self.breaker;
        let (state, failures, opened) = (b.name(), b.consecutive_failures(), b.times_opened());
        let next = b
            .next_probe()
            .map(|t| SystemTime::now() + t.saturating_duration_since(Instant::now()));
        self.shared.breaker(|s| {
            if s.state != state {
                s.since = SystemTime::now();
            }
            s.state = state;
            s.consecutive_failures = failures;
            s.times_opened = opened;
            s.next_probe = next;
        });
    }

    fn spool_is_empty(&self) -> bool {
        lock(&self.spool).is_empty()
    }

    /// Delivers batches until the channel closes (the watcher stopped), draining the spool
    /// whenever Elasticsearch takes writes. Returns once everything received is indexed or
    /// spooled.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Encoded>) {
        let max = self.settings.bulk_max_docs;
        loop {
            let draining = !self.spool_is_empty();
            tokio::select! {
                biased;
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    let mut batch = Vec::with_capacity(max);
                    batch.push(first);
                    let deadline = tokio::time::Instant::now() + self.settings.flush_interval;
                    while batch.len() < max {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(d)) => batch.push(d),
                            Ok(None) | Err(_) => break,
                        }
                    }
                    // Once the watcher is gone this is the last batch: one try, then the spool.
                    let last = rx.is_closed();
                    self.deliver(batch, last).await;
                }
                _ = tokio::time::sleep(DRAIN_TICK), if draining => {}
            }
            if !self.spool_is_empty() {
                self.drain_step().await;
            }
        }
        tracing::info!(
            spooled = lock(&self.spool).len(),
            "sink stopped; everything received is indexed or spooled"
        );
    }

    fn on_request_failure(&mut self, reason: &str) {
        let opened = self.breaker.on_failure(Instant::now());
        if opened {
            tracing::error!(reason, cooldown = ?self.breaker.next_probe().map(|t| t.saturating_duration_since(Instant::now())), "circuit breaker open: Elasticsearch is failing; documents go to the spool");
        }
        self.publish();
    }

    fn on_request_success(&mut self) {
        if !self.breaker.is_closed() {
            tracing::info!("circuit breaker closed: Elasticsearch takes writes again");
        }
        self.breaker.on_success();
        if self.spool_full && self.spool_is_empty() {
            // Writes go straight to the index and nothing waits in the spool any more.
            self.spool_full = false;
        }
        self.shared.elastic(|e| {
            e.reachable = true;
            e.last_error = None;
            e.last_ok_write = Some(SystemTime::now());
        });
        self.publish();
    }

    /// One bulk attempt with bookkeeping; `None` when the request as a whole failed.
    async fn attempt(&mut self, docs: &[Encoded]) -> Option<Vec<ItemOutcome>> {
        let stats = &self.shared.stats;
        stats.bulk_requests.inc();
        let started = Instant::now();
        let result = send_bulk(&self.es, &self.settings.index, docs, self.settings.timeout).await;
        stats.bulk_seconds.observe(started.elapsed());
        match result {
            Ok(r) => {
                let all_retry = !r.outcomes.is_empty()
                    && r.outcomes
                        .iter()
                        .all(|o| matches!(o, ItemOutcome::Retry(_)));
                if all_retry {
                    // Every item pushed back (e.g. 429): Elasticsearch is overloaded.
                    let reason = match &r.outcomes[0] {
                        ItemOutcome::Retry(m) => m.clone(),
                        _ => String::new(),
                    };
                    self.on_request_failure(&reason);
                } else {
                    self.on_request_success();
                }
                Some(r.outcomes)
            }
            Err(e) => {
                self.shared.stats.bulk_failures.inc();
                let msg = e.message().to_string();
                let unreachable = matches!(&e.0, RequestOutcome::Retry(m) if m.starts_with("cannot reach") || m.starts_with("timeout"));
                self.shared.elastic(|s| {
                    if unreachable {
                        s.reachable = false;
                    }
                    s.last_error = Some(msg.clone());
                });
                tracing::warn!(error = %msg, documents = docs.len(), "bulk request failed");
                self.on_request_failure(&msg);
                None
            }
        }
    }

    /// Delivers one batch: per-item outcomes, retries with backoff, the spool for the rest.
    pub async fn deliver(&mut self, docs: Vec<Encoded>, final_attempt: bool) {
        self.deliver_inner(docs, final_attempt).await;
        // Items may have superseded spooled copies: health must see the spool as it is now.
        self.publish();
    }

    async fn deliver_inner(&mut self, docs: Vec<Encoded>, final_attempt: bool) {
        let mut pending = docs;
        let mut attempt = 0u32;
        while !pending.is_empty() {
            if self.breaker.permit(Instant::now()) == Permit::Reject {
                self.spool_docs(pending).await;
                return;
            }
            if let Some(outcomes) = self.attempt(&pending).await {
                let mut again = Vec::new();
                for (doc, outcome) in pending.into_iter().zip(outcomes) {
                    if let Some(doc) = self.settle_item(doc, outcome) {
                        again.push(doc);
                    }
                }
                pending = again;
            }
            if pending.is_empty() {
                break;
            }
            if final_attempt || attempt >= self.settings.max_retries || !self.breaker.is_closed() {
                self.spool_docs(pending).await;
                return;
            }
            self.shared
                .stats
                .documents_retried
                .add(pending.len() as u64);
            let wait = backoff(attempt, BACKOFF_BASE, BACKOFF_CAP);
            tracing::debug!(
                documents = pending.len(),
                attempt = attempt + 1,
                ?wait,
                "retrying bulk items"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Books one item's outcome; returns the document if it should be tried again.
    fn settle_item(&mut self, doc: Encoded, outcome: ItemOutcome) -> Option<Encoded> {
        let stats = &self.shared.stats;
        match outcome {
            ItemOutcome::Done => {
                stats.documents_indexed.inc();
                stats
                    .observed_to_indexed_seconds
                    .observe(since_observed(&doc));
                lock(&self.spool).forget_older(&doc.id, doc.version);
                None
            }
            ItemOutcome::AlreadyCurrent => {
                stats.documents_already_current.inc();
                lock(&self.spool).forget_older(&doc.id, doc.version);
                None
            }
            ItemOutcome::Retry(_) => Some(doc),
            ItemOutcome::Reject(reason) => {
                self.dead_letter(&doc, &reason);
                None
            }
        }
    }

    fn dead_letter(&mut self, doc: &Encoded, reason: &str) {
        self.shared.stats.documents_rejected.inc();
        match deadletter::write(&self.dead_letter_dir, &self.settings.index, doc, reason) {
            Ok(path) => {
                self.dead_letters += 1;
                self.shared.stats.documents_dead_lettered.inc();
                tracing::error!(id = %doc.id, reason, path = %path.display(), "Elasticsearch refused a document; written to the dead-letter directory, not retried");
            }
            Err(e) => {
                // Not even the dead letter could be written: hand it back to the watcher.
                tracing::error!(id = %doc.id, reason, error = %e, "Elasticsearch refused a document and the dead letter could not be written");
                let _ = self.unsaved.send(Unsaved::of(doc));
            }
        }
        self.publish();
    }

    /// Writes documents to the spool (off the async threads: fsync blocks).
    async fn spool_docs(&mut self, docs: Vec<Encoded>) {
        let n = docs.len();
        let spool = self.spool.clone();
        let res = tokio::task::spawn_blocking(move || lock(&spool).put(docs)).await;
        let (written, failed) = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, documents = n, "spool task failed");
                (0, None)
            }
        };
        self.shared.stats.documents_spooled.add(written as u64);
        match failed {
            None => {
                if self.spool_full {
                    tracing::info!("spool writable again");
                }
                self.spool_full = false;
                self.shared.spool(|s| s.last_error = None);
            }
            Some((rest, err)) => {
                self.shared
                    .stats
                    .spool_write_failures
                    .add(rest.len() as u64);
                let msg = err.to_string();
                if !self.spool_full {
                    tracing::error!(error = %msg, documents = rest.len(), "CANNOT SPOOL: documents stay unsaved until space returns; Caldera is still polled and they will be sent again");
                }
                self.spool_full = matches!(err, SpoolError::Full(_)) || is_no_space(&err);
                self.shared.spool(|s| s.last_error = Some(msg));
                for d in rest {
                    let _ = self.unsaved.send(Unsaved::of(&d));
                }
            }
        }
        self.publish();
    }

    /// Sends the oldest spooled documents, if the breaker lets us.
    async fn drain_step(&mut self) {
        if self.breaker.permit(Instant::now()) == Permit::Reject {
            return;
        }
        let keys = lock(&self.spool).oldest_keys(self.settings.bulk_max_docs);
        let spool = self.spool.clone();
        let read = tokio::task::spawn_blocking(move || {
            let s = lock(&spool);
            keys.into_iter()
                .map(|k| {
                    let r = s.read(&k);
                    (k, r)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut docs = Vec::with_capacity(read.len());
        let mut keys = Vec::with_capacity(read.len());
        for (k, r) in read {
            match r {
                Ok(d) => {
                    keys.push(k);
                    docs.push(d);
                }
                Err(e) => {
                    tracing::error!(file = %spool::file_name(k.0, &k.1), error = %e, "unreadable spool file left in place");
                }
            }
        }
        if docs.is_empty() {
            // Every file unreadable: do not spin on them.
            self.breaker.on_success();
            return;
        }
        let Some(outcomes) = self.attempt(&docs).await else {
            return;
        };
        let mut done = Vec::new();
        for ((key, doc), outcome) in keys.into_iter().zip(docs).zip(outcomes) {
            match outcome {
                ItemOutcome::Done | ItemOutcome::AlreadyCurrent => {
                    self.shared.stats.documents_replayed.inc();
                    if matches!(outcome, ItemOutcome::Done) {
                        self.shared.stats.documents_indexed.inc();
                    }
                    done.push(key);
                }
                ItemOutcome::Retry(_) => {}
                ItemOutcome::Reject(reason) => {
                    self.dead_letter(&doc, &reason);
                    done.push(key);
                }
            }
        }
        let n = done.len();
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut s = lock(&spool);
            for k in done {
                if let Err(e) = s.remove(&k) {
                    tracing::error!(error = %e, "cannot delete a replayed spool file");
                }
            }
        })
        .await;
        let left = lock(&self.spool).len();
        if n > 0 && self.spool_full {
            // Files left the spool: there is room again (the next write re-checks anyway).
            self.spool_full = false;
            tracing::info!("spool has room again");
        }
        if n > 0 {
            tracing::info!(replayed = n, left, "spool drained a batch");
        }
        self.publish();
    }
}

fn is_no_space(e: &SpoolError) -> bool {
    match e {
        SpoolError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
        SpoolError::Full(_) => true,
    }
}

/// Time since the watcher observed the document (its version is the observation time in µs).
fn since_observed(doc: &Encoded) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    Duration::from_micros(now.saturating_sub(doc.version))
}
