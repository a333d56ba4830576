//! Wiring: intake → documents → sink, plus the health server, with one shutdown signal threaded
//! through every task.
//!
//! Shutdown order matters for "never lose a document": the watcher stops first (no new
//! intake), its channel closes, the sink delivers what it already holds, then the server stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::caldera::client::CalderaClient;
use crate::caldera::watcher::{Known, Watcher, Wiring};
use crate::config::Settings;
use crate::sink::{self, Sink};
use crate::state::Shared;

/// A running sidecar.
pub struct Running {
    pub health_addr: SocketAddr,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// The sink's deadline: everything indexed or spooled by then.
    sink_deadline: watch::Sender<Option<tokio::time::Instant>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    failures: watch::Receiver<Option<String>>,
}

impl Running {
    /// Stops intake, lets the sink finish, stops the server. Bounded by `limit`: the sink
    /// stops sending at `limit` minus a reserve for spooling what is left (a quarter, at most
    /// 5 s). True when every task ended in time and every document the sink received is
    /// indexed or spooled.
    pub async fn shutdown(self, limit: Duration) -> bool {
        let reserve = (limit / 4).min(Duration::from_secs(5));
        let _ = self
            .sink_deadline
            .send(Some(tokio::time::Instant::now() + (limit - reserve)));
        let _ = self.shutdown.send(true);
        let all = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        let in_time = tokio::time::timeout(limit, all).await.is_ok();
        let lost = self.shared.stats.documents_lost_at_stop.get();
        if lost > 0 {
            tracing::error!(
                documents = lost,
                "documents could be neither indexed nor spooled; Caldera still has them and the next start sends them"
            );
        }
        in_time && lost == 0
    }

    /// Waits until the tasks end by themselves (they do not, unless shut down).
    pub fn trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Resolves when a stage died (see [`crate::supervise`]), with what happened. Health is
    /// already unhealthy by then; the caller should shut down and exit non-zero.
    pub async fn failed(&mut self) -> String {
        match self.failures.wait_for(Option::is_some).await {
            Ok(f) => f.clone().unwrap_or_default(),
            // The supervisor is gone only when every stage is: wait for the signal instead.
            Err(_) => std::future::pending().await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Client(String),
    #[error("{0}")]
    Spool(String),
    #[error("cannot bind the health server on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Starts every task and returns once the health server is listening.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    let shared = Arc::new(Shared::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let sup = crate::supervise::Supervisor::new(shared.clone(), shutdown_rx.clone());

    // Built before the server: the enroll endpoint asks Caldera through it.
    let client = Arc::new(
        CalderaClient::new(&settings.caldera, shared.clone()).map_err(StartError::Client)?,
    );
    let enroll = crate::enroll::http::routes(Arc::new(crate::enroll::http::EnrollService::new(
        client.clone(),
        settings.enroll.clone(),
        settings.documents.client_map.clone(),
    )));
    let (health_addr, server) =
        crate::server::serve(&settings, shared.clone(), enroll, shutdown_rx.clone())
            .await
            .map_err(|source| StartError::Bind {
                addr: settings.health_bind,
                source,
            })?;
    tracing::info!(%health_addr, "health server listening");

    let es = sink::elastic::build_client(&settings.elastic).map_err(StartError::Client)?;
    let index = settings.elastic.index.clone();

    let (unsaved_tx, unsaved_rx) = mpsc::unbounded_channel();
    // Template and restart knowledge: best effort with a deadline, so a down Elasticsearch
    // never blocks intake (documents then wait in the sink).
    let known = with_state_file(
        prepare_index(&es, &index, &shared).await,
        &settings.intake.state_file,
    );

    let mut sink =
        Sink::new(es.clone(), &settings, shared.clone(), unsaved_tx).map_err(StartError::Spool)?;
    let (sink_deadline, deadline_rx) = watch::channel(None);
    sink.stop_by(deadline_rx);
    // One bulk's worth of room: the watcher fills the next batch while one is in flight, and
    // no more (every queued document is memory; the watcher simply waits when it is full).
    let (doc_tx, doc_rx) = mpsc::channel(settings.elastic.bulk_max_docs.max(1));
    let probes = sup.spawn(
        "probes",
        crate::server::probes::run(
            es.clone(),
            client.clone(),
            settings.clone(),
            shared.clone(),
            shutdown_rx.clone(),
        ),
    );
    // Pushed events wait here for the watcher; bounded (see caldera::push).
    let (events_tx, events_rx) = mpsc::channel(crate::caldera::push::QUEUE);
    *shared
        .intake
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(events_tx);
    let agents_run = crate::agents::watch::run(
        client.clone(),
        settings.agents.clone(),
        settings.documents.client_map.clone(),
        shared.clone(),
        shutdown_rx.clone(),
    );
    let agents_off = settings.agents.interval.is_none();
    let mut agents_shutdown = shutdown_rx.clone();
    let agents = sup.spawn("agents", async move {
        agents_run.await;
        if agents_off {
            // Switched off, it returns at once: that is not a dead stage.
            let _ = agents_shutdown.wait_for(|v| *v).await;
        }
    });
    let watcher = Watcher::new(
        client,
        settings.caldera.clone(),
        settings.intake.clone(),
        settings.documents.clone(),
        shared.clone(),
        known,
        Wiring {
            out: doc_tx,
            unsaved: unsaved_rx,
            events: events_rx,
        },
    );

    // Optional stages, each supervised like the core ones.
    let mut stages = Vec::new();
    if settings.reports.enabled {
        let writer = crate::report::daemon::Writer {
            es: es.clone(),
            shared: shared.clone(),
            index: index.clone(),
            settings: settings.reports.clone(),
            interval: settings.caldera.idle_interval,
        };
        stages.push(sup.spawn("reports", writer.run(shutdown_rx.clone())));
    }
    let w = sup.spawn("watcher", watcher.run(shutdown_rx.clone()));
    if settings.correlation.enabled {
        let stage =
            crate::correlate::Stage::new(&settings, shared.clone()).map_err(StartError::Client)?;
        stages.push(sup.spawn("correlation", stage.run(shutdown_rx.clone())));
    } else {
        shared.correlation.update(|c| c.state = "disabled");
    }
    let s = sup.spawn("sink", sink.run(doc_rx));
    let t = sup.spawn(
        "template",
        template_keeper(es, index, shared.clone(), shutdown_rx),
    );
    let server = sup.spawn("http", async move {
        if let Err(e) = server.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    });
    Ok(Running {
        health_addr,
        shared,
        shutdown: shutdown_tx,
        sink_deadline,
        tasks: {
            let mut all = vec![w, s, t, probes, agents];
            all.extend(stages);
            all.push(server);
            all
        },
        failures: sup.failures(),
    })
}

async fn prepare_index(
    es: &elasticsearch::Elasticsearch,
    index: &str,
    shared: &Arc<Shared>,
) -> Known {
    let deadline = Duration::from_secs(5);
    match tokio::time::timeout(deadline, sink::elastic::install_template(es, index)).await {
        Ok(Ok(())) => {
            shared.elastic(|e| {
                e.reachable = true;
                e.template_installed = true;
            });
            tracing::info!(index, "index template installed");
        }
        Ok(Err(e)) => {
            tracing::warn!(
                error = e.message(),
                "index template not installed yet; will retry"
            );
            return Known::default();
        }
        Err(_) => {
            tracing::warn!("Elasticsearch did not answer in 5 s; will retry the template");
            return Known::default();
        }
    }
    // Without this knowledge the wall clock alone orders observations and every operation is
    // fetched once more: slower, never wrong.
    let read = async {
        let max_sequence = sink::elastic::max_sequence(es, index).await?;
        let settled = sink::elastic::settled_operations(es, index).await?;
        Ok::<_, sink::elastic::RequestError>(Known {
            settled,
            max_sequence,
            from: "index",
        })
    };
    match tokio::time::timeout(Duration::from_secs(15), read).await {
        Ok(Ok(known)) => {
            if !known.settled.is_empty() {
                tracing::info!(
                    operations = known.settled.len(),
                    "settled operations already indexed; they will not be fetched again"
                );
            }
            known
        }
        Ok(Err(e)) => {
            tracing::warn!(error = e.message(), "indexed history not read");
            Known::default()
        }
        Err(_) => {
            tracing::warn!("indexed history not read in 15 s");
            Known::default()
        }
    }
}

/// Adds the local state file's knowledge: its settled operations when the index could not be
/// read (so a start with Elasticsearch down does not fetch them all again), and its sequence
/// number always (the clock must stay above every observation handed out).
fn with_state_file(mut known: Known, path: &std::path::Path) -> Known {
    let file = match crate::caldera::settled::load(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "local state file not used");
            return known;
        }
    };
    known.max_sequence = known.max_sequence.max(file.max_sequence);
    if known.from != "index" {
        if !file.settled.is_empty() {
            tracing::info!(
                operations = file.settled.len(),
                "index not readable: settled operations taken from the local state file; they will not be fetched again"
            );
        }
        known.settled = file.settled;
        known.from = "state_file";
    }
    known
}

/// Keeps the index template installed and current: retries while Elasticsearch is down at
/// start-up, and reinstalls it if someone deletes or replaces it later.
async fn template_keeper(
    es: elasticsearch::Elasticsearch,
    index: String,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let wait = if shared.elastic_status().template_installed {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let current = matches!(
            sink::elastic::template_version(&es, &index).await,
            Ok(v) if sink::elastic::template_is_current(v)
        );
        if current {
            continue;
        }
        if let Ok(()) = sink::elastic::install_template(&es, &index).await {
            shared.elastic(|e| {
                e.template_installed = true;
                e.template_current = true;
            });
            tracing::info!(index, "index template installed");
        }
    }
}
