//! The embedded HTTP server: health and metrics for systemd, curl and monitoring.
//!
//! Handlers only read [`Shared`]; they never call Caldera or Elasticsearch, so they answer in
//! milliseconds whatever state those are in.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::config::Settings;
use crate::state::Shared;

pub mod probes;
pub mod status;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v2/health", get(health))
        .route("/livez", get(|| async { "ok" }))
        .with_state(AppState { shared })
}

fn ago(t: Option<std::time::SystemTime>) -> Option<u64> {
    t.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs())
}

async fn health(State(st): State<AppState>) -> impl IntoResponse {
    let s = &st.shared;
    let c = s.caldera_status();
    let e = s.elastic_status();
    let stats = &s.stats;
    let es_ok = e.reachable;
    let caldera_ok = c.reachable && c.authenticated;
    let (status, code) = if !es_ok && e.last_error.is_some() {
        ("unhealthy", StatusCode::SERVICE_UNAVAILABLE)
    } else if !caldera_ok || !es_ok {
        ("degraded", StatusCode::OK)
    } else {
        ("healthy", StatusCode::OK)
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "checks": {
            "elasticsearch": {
                "reachable": e.reachable,
                "template_installed": e.template_installed,
                "last_error": e.last_error,
                "last_write_seconds_ago": ago(e.last_ok_write),
            },
            "caldera": {
                "reachable": c.reachable,
                "authenticated": c.authenticated,
                "auth_method": c.auth_method,
                "version": c.version,
                "last_error": c.last_error,
                "last_poll_seconds_ago": ago(c.last_ok_poll),
            },
            "pipeline": {
                "operations_tracked": stats.operations_tracked.get(),
                "operations_settled": stats.operations_settled.get(),
                "documents_emitted": stats.documents_emitted.get(),
                "documents_indexed": stats.documents_indexed.get(),
                "documents_already_current": stats.documents_already_current.get(),
                "documents_rejected": stats.documents_rejected.get(),
                "documents_failed": stats.documents_failed.get(),
                "invalid_values": stats.invalid_values.get(),
                "polls_ok": stats.polls_ok.get(),
                "polls_failed": stats.polls_failed.get(),
            }
        }
    });
    (code, Json(body))
}

/// Binds `settings.health_bind` (port 0 picks a free one) and serves until `shutdown` turns true.
pub async fn serve(
    settings: &Settings,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(settings.health_bind).await?;
    let local = listener.local_addr()?;
    let app = router(shared);
    let handle = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "health server failed");
        }
    });
    Ok((local, handle))
}
