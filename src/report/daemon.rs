//! The daemon's report writer: `REPORT_DIR/<id>.pdf` and `<id>.navigator.json` for every
//! operation that settles, when `REPORTS_ENABLED=true`.
//!
//! It watches the index, not the watcher: every `POLL_IDLE_INTERVAL` one search asks for
//! settled operation documents newer than the last one seen. That needs no hook in the intake,
//! reads exactly what the report will show (the documents are indexed by then), survives
//! restarts (on start it writes the reports that are missing) and redoes a report when a settled
//! operation's document changes again or its detection results change (the correlation stage
//! stamps `detection.sequence` then: alerts come minutes after an operation settles, and a
//! report written at settle time would otherwise say "detection pending" for good).
//!
//! The PDF is rendered by a child process of the same binary (`caldera-sidecar render-pdf`,
//! hidden), fed the report data on standard input: Typst's fonts, caches and layout memory live
//! and die with the child, so the daemon's resident memory while idle is what it was without
//! reports. The daemon itself only reads the documents and builds the data (a few MB for
//! thousands of links, freed right after).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use elasticsearch::Elasticsearch;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::settings::ReportSettings;
use super::{Format, RenderJob, ReportError, build_from_index, navigator, write_atomically};
use crate::document::types::OperationId;
use crate::server::health::{Check, Level};
use crate::state::Shared;

/// Longest a PDF child may take before it is stopped (2,000 links take a few seconds).
const RENDER_TIMEOUT: Duration = Duration::from_secs(120);

/// What health shows about the report writer.
#[derive(Debug, Clone, Default)]
pub struct ReportStatus {
    pub enabled: bool,
    pub written: u64,
    pub failed: u64,
    /// The last failure, cleared by the next report written.
    pub last_error: Option<String>,
}

/// `reports` in health: degraded while the last report could not be written.
pub fn health_check(shared: &Shared) -> Check {
    let st = shared
        .reports
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut c = Check::new(serde_json::json!({
        "enabled": st.enabled,
        "written": st.written,
        "failed": st.failed,
        "last_error": st.last_error,
    }));
    if let Some(e) = &st.last_error {
        c.raise(
            Level::Degraded,
            format!(
                "the last report could not be written ({e}); it is tried again when the operation changes or the sidecar restarts, and `caldera-sidecar report <id>` makes it by hand"
            ),
        );
    }
    c
}

pub struct Writer {
    pub es: Elasticsearch,
    pub shared: Arc<Shared>,
    pub index: String,
    pub settings: ReportSettings,
    pub interval: Duration,
}

/// The executable that renders PDFs: `renderer` if given (tests), else this very binary.
pub fn renderer(settings: &ReportSettings) -> std::io::Result<PathBuf> {
    match &settings.renderer {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe(),
    }
}

/// Renders one PDF in a child process and returns its bytes.
pub async fn render_in_child(
    job: &RenderJob,
    exe: &std::path::Path,
) -> Result<Vec<u8>, ReportError> {
    let input = serde_json::to_vec(job).map_err(|e| ReportError::Other(e.to_string()))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("render-pdf")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ReportError::Other(format!("cannot start {}: {e}", exe.display())))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ReportError::Other("child has no stdin".into()))?;
    let feed = async move {
        let r = stdin.write_all(&input).await;
        drop(stdin);
        r
    };
    let run = async {
        let (fed, out) = tokio::join!(feed, child.wait_with_output());
        fed.map_err(|e| ReportError::Other(format!("cannot feed the PDF renderer: {e}")))?;
        out.map_err(|e| ReportError::Other(format!("PDF renderer failed: {e}")))
    };
    let out = tokio::time::timeout(RENDER_TIMEOUT, run)
        .await
        .map_err(|_| ReportError::Other("PDF renderer took too long".into()))??;
    if !out.status.success() || !out.stdout.starts_with(b"%PDF") {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(ReportError::Other(format!(
            "PDF renderer exited with {}: {}",
            out.status,
            crate::document::sanitize::clean_text(&err, 500)
        )));
    }
    Ok(out.stdout)
}

impl Writer {
    /// Writes both files of one operation.
    pub async fn write(&self, id: &OperationId) -> Result<PathBuf, ReportError> {
        let report = build_from_index(&self.es, &self.index, id).await?;
        let layer = navigator::layer(&report, &self.settings.branding.name);
        let job = RenderJob::new(&report, &self.settings)?;
        drop(report);
        let exe = renderer(&self.settings)
            .map_err(|e| ReportError::Other(format!("cannot find this executable: {e}")))?;
        let pdf = render_in_child(&job, &exe).await?;
        drop(job);
        let dir = self.settings.dir.clone();
        let layer =
            serde_json::to_vec_pretty(&layer).map_err(|e| ReportError::Other(e.to_string()))?;
        let pdf_name = Format::Pdf.file_name(id);
        let nav_name = Format::Navigator.file_name(id);
        let path = tokio::task::spawn_blocking(move || {
            write_atomically(&dir, &nav_name, &layer)?;
            write_atomically(&dir, &pdf_name, &pdf)
        })
        .await
        .map_err(|e| ReportError::Other(e.to_string()))?
        .map_err(|e| ReportError::Other(format!("cannot write the report: {e}")))?;
        // The documents and the report data were transient: give the memory back now (reports
        // are rare; the daemon then idles with what it had before).
        crate::memory::release_free_memory();
        Ok(path)
    }

    fn record(&self, f: impl FnOnce(&mut ReportStatus)) {
        f(&mut self
            .shared
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.record(|s| s.enabled = true);
        // The highest value seen of each of `index::CHANGE_FIELDS`.
        let mut seen: [Option<u64>; 2] = [None, None];
        // Until the first scans have gone through every settled operation, a report that
        // exists is kept; afterwards every change is written again.
        let mut catching_up = true;
        loop {
            let mut changed: Vec<String> = Vec::new();
            let mut full_page = false;
            for (field, seen) in super::index::CHANGE_FIELDS.iter().zip(seen.iter_mut()) {
                let found = tokio::select! {
                    r = super::index::settled_since(&self.es, &self.index, field, *seen) => r,
                    _ = shutdown.changed() => return,
                };
                match found {
                    Ok(ops) => {
                        full_page |= ops.len() >= super::index::SETTLED_PAGE;
                        for (raw, seq) in ops {
                            *seen = Some(seen.map_or(seq, |s| s.max(seq)));
                            if !changed.contains(&raw) {
                                changed.push(raw);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "settled operations not read; retrying");
                        full_page = true;
                    }
                }
            }
            for raw in changed {
                let Ok(id) = OperationId::parse(&raw) else {
                    continue;
                };
                // On start, only the missing reports are written; later, every settled
                // operation whose document or detection results changed is written again.
                if catching_up && self.settings.dir.join(Format::Pdf.file_name(&id)).exists() {
                    continue;
                }
                let started = std::time::Instant::now();
                let res = tokio::select! {
                    r = self.write(&id) => r,
                    _ = shutdown.changed() => return,
                };
                match &res {
                    Ok(_) => self.record(|s| {
                        s.written += 1;
                        s.last_error = None;
                    }),
                    Err(e) => self.record(|s| {
                        s.failed += 1;
                        s.last_error = Some(format!("operation {id}: {e}"));
                    }),
                }
                match res {
                    Ok(path) => tracing::info!(
                        operation = %id,
                        path = %path.display(),
                        ms = started.elapsed().as_millis() as u64,
                        "report written"
                    ),
                    Err(e) => {
                        tracing::warn!(operation = %id, error = %e, "report not written")
                    }
                }
            }
            catching_up &= full_page;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
