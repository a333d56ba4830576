//! The sink: gets documents into Elasticsearch, in bulk, exactly once.
//!
//! Pieces, kept apart as in Vector's Elasticsearch sink: [`template`] (what the index looks
//! like), [`elastic`] (request building and sending), [`retry`] (what a status means per request
//! and per item). This module batches documents from the watcher and delivers each batch:
//! done and 409 items are finished, 429/5xx items are retried with backoff, other 4xx items are
//! refused for good and reported. Documents that still cannot be delivered go to `fallback`
//! (the durable spool, in the delivery-guarantees work).

pub mod elastic;
pub mod retry;
pub mod template;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use elasticsearch::Elasticsearch;
use tokio::sync::mpsc;

use crate::config::ElasticSettings;
use crate::document::Encoded;
use crate::state::Shared;
use retry::{ItemOutcome, RequestOutcome, backoff, classify_item};

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

pub struct Sink {
    es: Elasticsearch,
    settings: ElasticSettings,
    shared: Arc<Shared>,
    /// Ids of documents that could not be kept anywhere, so the watcher sends them again.
    unsaved: mpsc::UnboundedSender<String>,
}

impl Sink {
    pub fn new(
        es: Elasticsearch,
        settings: ElasticSettings,
        shared: Arc<Shared>,
        unsaved: mpsc::UnboundedSender<String>,
    ) -> Self {
        Self {
            es,
            settings,
            shared,
            unsaved,
        }
    }

    /// Delivers batches until the channel closes (the watcher stopped), then returns after the
    /// last batch: nothing received is dropped on shutdown.
    pub async fn run(self, mut rx: mpsc::Receiver<Encoded>) {
        let max = self.settings.bulk_max_docs;
        let mut batch: Vec<Encoded> = Vec::with_capacity(max);
        loop {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.settings.flush_interval;
            while batch.len() < max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(d)) => batch.push(d),
                    Ok(None) | Err(_) => break,
                }
            }
            self.deliver(std::mem::take(&mut batch)).await;
        }
        tracing::info!("sink drained");
    }

    /// Delivers one batch: per-item outcomes, retries with backoff, fallback for the rest.
    pub async fn deliver(&self, docs: Vec<Encoded>) {
        let stats = &self.shared.stats;
        let mut pending = docs;
        let mut attempt = 0u32;
        while !pending.is_empty() {
            stats.bulk_requests.inc();
            let retry_reason;
            match elastic::bulk(
                &self.es,
                &self.settings.index,
                &pending,
                self.settings.timeout,
            )
            .await
            {
                Ok(items) => {
                    self.shared.elastic(|e| {
                        e.reachable = true;
                        e.last_error = None;
                        e.last_ok_write = Some(SystemTime::now());
                    });
                    let mut again = Vec::new();
                    let mut reason = String::new();
                    for (doc, item) in pending.into_iter().zip(items) {
                        match classify_item(item.status, || item.reason()) {
                            ItemOutcome::Done => {
                                stats.documents_indexed.inc();
                                stats
                                    .observed_to_indexed_seconds
                                    .observe(Self::since_observed(&doc));
                            }
                            ItemOutcome::AlreadyCurrent => stats.documents_already_current.inc(),
                            ItemOutcome::Retry(r) => {
                                reason = r;
                                again.push(doc);
                            }
                            ItemOutcome::Reject(r) => {
                                stats.documents_rejected.inc();
                                tracing::error!(id = %doc.id, reason = %r, "Elasticsearch refused a document; it will not be retried");
                            }
                        }
                    }
                    pending = again;
                    retry_reason = reason;
                }
                Err(e) => {
                    stats.bulk_failures.inc();
                    let msg = e.message().to_string();
                    self.shared.elastic(|s| {
                        s.reachable = !matches!(e.0, RequestOutcome::Retry(ref m) if m.starts_with("cannot reach") || m.starts_with("timeout"));
                        s.last_error = Some(msg.clone());
                    });
                    retry_reason = msg;
                }
            }
            if pending.is_empty() {
                break;
            }
            if attempt >= self.settings.max_retries {
                self.fallback(pending, &retry_reason);
                break;
            }
            stats.documents_retried.add(pending.len() as u64);
            let wait = backoff(attempt, BACKOFF_BASE, BACKOFF_CAP);
            tracing::warn!(documents = pending.len(), attempt = attempt + 1, ?wait, reason = %retry_reason, "bulk delivery incomplete; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
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

    /// Documents that could not be delivered after all retries. Without a spool they are
    /// handed back to the watcher, which sends them again on its next look.
    fn fallback(&self, docs: Vec<Encoded>, reason: &str) {
        self.shared.stats.documents_failed.add(docs.len() as u64);
        tracing::error!(
            documents = docs.len(),
            reason,
            "Elasticsearch unavailable; documents will be sent again"
        );
        for d in docs {
            let _ = self.unsaved.send(d.id);
        }
    }
}
