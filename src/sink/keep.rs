//! Where documents Elasticsearch did not take go: refused ones to dead letters (written off the
//! async runtime, one directory fsync per batch), undelivered ones to the spool. What cannot be
//! kept anywhere (disk full) is handed back to the watcher to be sent again, and said loudly
//! once, not per document.

use std::time::Instant;

use super::spool::SpoolError;
use super::{Sink, deadletter, lock, summary};
use crate::document::{Encoded, Unsaved};

impl Sink {
    /// Writes the dead letters of refused documents off the async runtime (one directory
    /// fsync for the batch); returns the documents whose dead letter could not be written.
    pub(super) async fn dead_letter_all(
        &mut self,
        refused: Vec<(Encoded, String)>,
    ) -> Vec<(Encoded, String)> {
        if refused.is_empty() {
            return refused;
        }
        self.shared
            .stats
            .documents_rejected
            .add(refused.len() as u64);
        let dir = self.dead_letter_dir.clone();
        let index = self.settings.index.clone();
        let job = tokio::task::spawn_blocking(move || {
            let results =
                deadletter::write_all(&dir, &index, refused.iter().map(|(d, r)| (d, r.as_str())));
            (refused, results)
        });
        let (refused, results) = match job.await {
            Ok(r) => r,
            Err(e) => {
                // The documents went with the task: the watcher sends them again.
                tracing::error!(error = %e, "dead-letter task failed");
                return Vec::new();
            }
        };
        let now = Instant::now();
        let mut failed = Vec::new();
        let mut last_error = None;
        for ((doc, reason), result) in refused.into_iter().zip(results) {
            match result {
                Ok(path) => {
                    self.dead_letters += 1;
                    self.shared.stats.documents_dead_lettered.inc();
                    let lines = self.refused_log.note(&doc.id, &reason, now);
                    log_refused(lines, Some(&path));
                }
                Err(e) => {
                    let lines = self.unlettered_log.note(&doc.id, &reason, now);
                    log_unlettered(lines, Some(&e));
                    last_error = Some(e.to_string());
                    failed.push((doc, reason));
                }
            }
        }
        let dir = self.dead_letter_dir.display().to_string();
        self.shared.spool(|s| {
            s.dead_letter_error = last_error.map(|e| format!("{dir}: {e}"));
        });
        self.publish();
        failed
    }

    /// Writes documents to the spool (off the async threads: fsync blocks).
    pub(super) async fn spool_docs(&mut self, docs: Vec<Encoded>) {
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
                if self.deadline().is_some() {
                    // Nobody will send these again in this process: the exit code says so.
                    self.shared
                        .stats
                        .documents_lost_at_stop
                        .add(rest.len() as u64);
                }
                for d in rest {
                    let _ = self.unsaved.send(Unsaved::of(&d));
                }
            }
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

pub(super) fn log_refused(lines: Vec<summary::Line>, path: Option<&std::path::Path>) {
    for line in lines {
        match line {
            summary::Line::First { id, reason } => tracing::error!(
                %id,
                reason,
                path = %path.map(|p| p.display().to_string()).unwrap_or_default(),
                "Elasticsearch refused a document; written to DEAD_LETTER_DIR, not retried \
                 (more refusals within 10 s are logged as one summary line)"
            ),
            summary::Line::Summary {
                count,
                first_reason,
                seconds,
            } => tracing::error!(
                count,
                first_reason,
                seconds,
                "Elasticsearch refused more documents; all written to DEAD_LETTER_DIR"
            ),
        }
    }
}

pub(super) fn log_unlettered(lines: Vec<summary::Line>, error: Option<&std::io::Error>) {
    for line in lines {
        match line {
            summary::Line::First { id, reason } => tracing::error!(
                %id,
                reason,
                error = %error.map(ToString::to_string).unwrap_or_default(),
                "Elasticsearch refused a document and its dead letter could not be written: \
                 it stays in the spool and is tried again later; make DEAD_LETTER_DIR writable"
            ),
            summary::Line::Summary {
                count,
                first_reason,
                seconds,
            } => tracing::error!(
                count,
                first_reason,
                seconds,
                "more refused documents could not be dead-lettered; they stay in the spool"
            ),
        }
    }
}
