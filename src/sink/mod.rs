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
//! after the index acknowledged its document, or after its dead letter is durably written.
//!
//! Stopping: the sink is given a deadline ([`Sink::stop_by`]). From then on a batch that is
//! retrying makes one final attempt, no request outlives the deadline, and once Elasticsearch
//! failed (or the deadline passed) everything left goes straight to the spool.

pub mod breaker;
pub mod deadletter;
mod drain;
pub mod durable;
pub mod elastic;
pub mod fallback;
mod keep;
pub mod replay;
pub mod retry;
pub mod spool;
pub mod summary;
pub mod template;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use elasticsearch::Elasticsearch;
use tokio::sync::{mpsc, watch};

use keep::{log_refused, log_unlettered};

use crate::config::{ElasticSettings, Settings};
use crate::document::{Encoded, Unsaved};
use crate::state::Shared;
use breaker::{Breaker, Permit};
use retry::{ItemOutcome, RequestOutcome, backoff, classify_item};
use spool::Spool;

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How often an idle sink looks at a non-empty spool.
const DRAIN_TICK: Duration = Duration::from_millis(250);
/// Interval of the summarised error lines (refused documents, failed dead letters).
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long spooled documents whose dead letter could not be written (or whose file could
/// not be read) are left out before they are tried again.
const HOLD_RETRY: Duration = Duration::from_secs(10);

/// When the sink must have everything indexed or spooled; `None` while running.
pub type StopDeadline = watch::Receiver<Option<tokio::time::Instant>>;

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
    stop: StopDeadline,
    /// A request failed or was cut while stopping: the rest goes straight to the spool.
    failed_while_stopping: bool,
    /// Refused documents written as dead letters, logged summarised.
    refused_log: summary::Summary,
    /// Refused documents whose dead letter could not be written, logged summarised.
    unlettered_log: summary::Summary,
    /// When held spool documents were last made eligible again.
    held_released: Instant,
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
            // A sender dropped at once: never stopping, until `stop_by` is called.
            stop: watch::channel(None).1,
            failed_while_stopping: false,
            refused_log: summary::Summary::new(LOG_INTERVAL),
            unlettered_log: summary::Summary::new(LOG_INTERVAL),
            held_released: Instant::now(),
        };
        s.publish();
        Ok(s)
    }

    /// Gives the sink the signal that carries its shutdown deadline.
    pub fn stop_by(&mut self, stop: StopDeadline) {
        self.stop = stop;
    }

    /// The shutdown deadline, once stopping.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        *self.stop.borrow()
    }

    /// Stopping, and Elasticsearch already failed or the deadline passed: spool, do not send.
    fn must_spool_now(&self) -> bool {
        self.deadline()
            .is_some_and(|d| self.failed_while_stopping || tokio::time::Instant::now() >= d)
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
    /// spooled (what could be neither is counted in `documents_lost_at_stop`).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Encoded>) {
        let max = self.settings.bulk_max_docs;
        loop {
            // No draining while stopping: the spool keeps its documents for the next start.
            let draining = !self.spool_is_empty() && self.deadline().is_none();
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
                _ = tokio::time::sleep(LOG_INTERVAL) => {}
            }
            self.flush_logs(false);
            if !self.spool_is_empty() && self.deadline().is_none() {
                self.drain_step().await;
            }
        }
        self.flush_logs(true);
        tracing::info!(
            spooled = lock(&self.spool).len(),
            lost = self.shared.stats.documents_lost_at_stop.get(),
            "sink stopped; everything received is indexed or spooled unless counted as lost"
        );
    }

    /// Logs the summaries of refused documents whose interval is over (all of them at the end).
    fn flush_logs(&mut self, end: bool) {
        let now = Instant::now();
        let (a, b) = if end {
            (
                self.refused_log.finish(now),
                self.unlettered_log.finish(now),
            )
        } else {
            (self.refused_log.flush(now), self.unlettered_log.flush(now))
        };
        log_refused(a.into_iter().collect(), None);
        log_unlettered(b.into_iter().collect(), None);
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
        let send = send_bulk(&self.es, &self.settings.index, docs, self.settings.timeout);
        let Some(result) = until_deadline(send, &mut self.stop).await else {
            stats.bulk_failures.inc();
            self.failed_while_stopping = true;
            tracing::warn!(
                documents = docs.len(),
                "shutdown deadline reached while Elasticsearch had not answered; the documents go to the spool"
            );
            return None;
        };
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
                if self.deadline().is_some() {
                    self.failed_while_stopping = true;
                }
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
            if self.must_spool_now() || self.breaker.permit(Instant::now()) == Permit::Reject {
                self.spool_docs(pending).await;
                return;
            }
            if let Some(outcomes) = self.attempt(&pending).await {
                let mut again = Vec::new();
                let mut refused = Vec::new();
                for (doc, outcome) in pending.into_iter().zip(outcomes) {
                    match outcome {
                        ItemOutcome::Reject(reason) => refused.push((doc, reason)),
                        outcome => again.extend(self.settle_item(doc, outcome)),
                    }
                }
                // A refused document whose dead letter cannot be written is kept in the
                // spool, never dropped.
                let unlettered = self.dead_letter_all(refused).await;
                if !unlettered.is_empty() {
                    self.spool_docs(unlettered.into_iter().map(|(d, _)| d).collect())
                        .await;
                }
                pending = again;
            }
            if pending.is_empty() {
                break;
            }
            // Stopping since (or during) this attempt: it was the final one.
            if final_attempt
                || self.deadline().is_some()
                || attempt >= self.settings.max_retries
                || !self.breaker.is_closed()
            {
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
            // A stop during the wait ends it: the next attempt is the final one.
            let _ = until_stop(tokio::time::sleep(wait), &mut self.stop).await;
            attempt += 1;
        }
    }

    /// Books the outcome of an item that was not refused; returns the document if it should
    /// be tried again.
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
            ItemOutcome::Retry(_) | ItemOutcome::Reject(_) => Some(doc),
        }
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

/// Awaits `fut`, but once stopping no longer than the shutdown deadline (`None` when cut).
async fn until_deadline<F: std::future::Future>(
    fut: F,
    stop: &mut StopDeadline,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let deadline = *stop.borrow_and_update();
        if let Some(d) = deadline {
            return tokio::time::timeout_at(d, fut).await.ok();
        }
        tokio::select! {
            out = &mut fut => return Some(out),
            changed = stop.changed() => {
                if changed.is_err() {
                    // Nobody can stop us any more: no deadline.
                    return Some(fut.await);
                }
            }
        }
    }
}

/// Awaits `fut` unless the stop signal comes first (`None` then).
async fn until_stop<F: std::future::Future>(fut: F, stop: &mut StopDeadline) -> Option<F::Output> {
    if stop.borrow_and_update().is_some() {
        return None;
    }
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => Some(out),
        changed = stop.changed() => match changed {
            Ok(()) => None,
            Err(_) => Some(fut.await),
        },
    }
}
