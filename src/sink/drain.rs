//! Draining the spool: the oldest spooled documents go back to Elasticsearch as soon as it
//! takes writes.
//!
//! The spool is not the sink's alone: a person may run `caldera-sidecar replay SPOOL_DIR`
//! while the daemon runs (the README invites it), which indexes and deletes files under the
//! daemon's feet. A file that is gone is therefore forgotten, quietly, not retried: it was
//! replayed (or removed) by someone else. A file that cannot be read, or a refused document
//! whose dead letter cannot be written, is held (left out of the drain for a while, so it
//! never blocks newer documents) and stays on disk.

use std::collections::HashSet;
use std::io;
use std::time::Instant;

use super::breaker::Permit;
use super::retry::ItemOutcome;
use super::spool::{self, Key};
use super::{HOLD_RETRY, Sink, lock};

impl Sink {
    /// Sends the oldest spooled documents, if the breaker lets us.
    pub(super) async fn drain_step(&mut self) {
        if self.held_released.elapsed() >= HOLD_RETRY {
            self.held_released = Instant::now();
            let n = lock(&self.spool).release_held();
            if n > 0 {
                tracing::info!(documents = n, "trying held spool documents again");
            }
        }
        // Only look: the probe of a half-open breaker is taken once there is something to send.
        if !self.breaker.would_permit(Instant::now()) {
            return;
        }
        let mut docs = Vec::new();
        let mut keys = Vec::new();
        // Files that are gone are forgotten and the next ones read at once, so a spool
        // emptied by hand is caught up with in one step.
        loop {
            let batch = lock(&self.spool).oldest_keys(self.settings.bulk_max_docs);
            if batch.is_empty() {
                return;
            }
            let spool = self.spool.clone();
            let read = tokio::task::spawn_blocking(move || {
                let s = lock(&spool);
                batch
                    .into_iter()
                    .map(|k| {
                        let r = s.read(&k);
                        (k, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let mut gone: Vec<Key> = Vec::new();
            for (k, r) in read {
                match r {
                    Ok(d) => {
                        keys.push(k);
                        docs.push(d);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => gone.push(k),
                    Err(e) => {
                        tracing::error!(file = %spool::file_name(k.0, &k.1), error = %e,
                            "unreadable spool file left in place; tried again later");
                        lock(&self.spool).hold(k);
                    }
                }
            }
            if gone.is_empty() {
                break;
            }
            let mut s = lock(&self.spool);
            for k in &gone {
                s.forget(k);
            }
            drop(s);
            tracing::info!(
                documents = gone.len(),
                "spool files disappeared (replayed or removed by hand); forgotten"
            );
            self.publish();
            if !docs.is_empty() {
                break;
            }
        }
        if docs.is_empty() || self.breaker.permit(Instant::now()) == Permit::Reject {
            return;
        }
        let Some(outcomes) = self.attempt(&docs).await else {
            return;
        };
        let mut done = Vec::new();
        let mut refused = Vec::new();
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
                ItemOutcome::Reject(reason) => refused.push((key, doc, reason)),
            }
        }
        // A refused document leaves the spool only once its dead letter is durable.
        let (refused_keys, refused): (Vec<Key>, Vec<_>) =
            refused.into_iter().map(|(k, d, r)| (k, (d, r))).unzip();
        let unlettered = self.dead_letter_all(refused).await;
        let kept: HashSet<&str> = unlettered.iter().map(|(d, _)| d.id.as_str()).collect();
        for k in refused_keys {
            if kept.contains(&k.1.as_str()) {
                lock(&self.spool).hold(k);
            } else {
                done.push(k);
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
