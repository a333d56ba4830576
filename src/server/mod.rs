//! The embedded HTTP server: health and metrics for systemd, curl and monitoring.
//!
//! * `GET /api/v2/health` — overall `healthy` / `degraded` / `unhealthy` (HTTP 200 / 200 / 503)
//!   with one check per dependency ([`health`]).
//! * `GET /metrics` — Prometheus text format ([`metrics`]).
//! * `GET /livez` — `ok` while the process serves HTTP and every pipeline stage runs (503 once
//!   one died); no details, no key, no rate limit.
//! * `GET /api/v2/enroll` — agent enrollment one-liners (`crate::enroll::http`), merged in
//!   by the caller through `extra`.
//! * `GET /api/v2/reports/<operation id>.pdf` and `….navigator.json` — the files in
//!   `REPORT_DIR` ([`crate::report::http`]).
//!
//! Handlers only read [`Shared`] and the latest host sample; they never call Caldera or
//! Elasticsearch and never touch the disk, so they answer in well under a millisecond whatever
//! state those are in. All probing runs in the background ([`probes`]). Every endpoint but
//! `/livez` goes through [`auth::guard`] (per-client rate limit, optional API key), which is
//! why the server is served with the peer address (`ConnectInfo<SocketAddr>`). Connections are
//! accepted by [`listen`], which bounds their number and how long a slow client can hold one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::watch;

use crate::config::Settings;
use crate::state::Shared;

pub mod auth;
pub mod health;
pub mod listen;
pub mod metrics;
pub mod probes;
pub mod status;

/// What the handlers read. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
    host: Arc<probes::HostReadings>,
    config: Arc<health::HealthConfig>,
    limiter: Arc<auth::RateLimiter>,
    key: Option<Arc<auth::KeyCheck>>,
}

/// The routes, with the guard applied. `host` is filled by [`probes::sample_host`]; `extra`
/// holds a capability's own routes (state already applied), guarded like the others.
pub fn router(
    settings: &Settings,
    shared: Arc<Shared>,
    host: Arc<probes::HostReadings>,
    extra: Router,
) -> Router {
    let state = AppState {
        shared,
        host,
        config: Arc::new(health::HealthConfig::from_settings(settings)),
        limiter: Arc::new(auth::RateLimiter::new(
            settings.api.max_requests_per_minute,
            auth::MAX_CLIENTS,
        )),
        key: auth::KeyCheck::from_settings(&settings.api).map(Arc::new),
    };
    let reports = settings.reports.dir.clone();
    let reports_nav = reports.clone();
    Router::new()
        .route("/api/v2/health", get(health_handler))
        .route(
            "/api/v2/reports/{file}",
            get(move |Path(file): Path<String>| {
                crate::report::http::serve_file(reports.clone(), file)
            }),
        )
        .route(
            "/api/v2/reports/{id}/navigator.json",
            get(move |Path(id): Path<String>| {
                crate::report::http::serve_navigator(reports_nav.clone(), id)
            }),
        )
        .route("/metrics", get(metrics_handler))
        .route(auth::LIVENESS_PATH, get(livez_handler))
        .route(crate::caldera::push::PATH, post(events_handler))
        .with_state(state.clone())
        .merge(extra)
        // `layer` (not `route_layer`) so unknown paths are guarded too: without the key, a
        // caller cannot even learn which paths exist.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
}

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

async fn health_handler(State(st): State<AppState>) -> Response {
    let report = health::evaluate(&st.shared, &st.host.get(), &st.config);
    let code = if report.level == health::Level::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        [(header::CACHE_CONTROL, NO_STORE)],
        Json(report.to_json()),
    )
        .into_response()
}

/// `POST /api/v2/events`: the Caldera plugin's pushed events ([`crate::caldera::push`]).
async fn events_handler(State(st): State<AppState>, req: axum::extract::Request) -> Response {
    crate::caldera::push::receive(&st.shared, req.into_body()).await
}

/// `ok` while every pipeline stage runs; 503 once one died (the process is exiting then).
async fn livez_handler(State(st): State<AppState>) -> Response {
    match st.shared.fatal() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "pipeline stage died").into_response(),
    }
}

async fn metrics_handler(State(st): State<AppState>) -> Response {
    let host = st.host.get();
    let level = health::evaluate(&st.shared, &host, &st.config).level;
    let body = metrics::render(&st.shared, &host, level);
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            ),
            (header::CACHE_CONTROL, NO_STORE),
        ],
        body,
    )
        .into_response()
}

/// Binds `settings.health_bind` (port 0 picks a free one) and serves until `shutdown` turns
/// true. Also starts the host sampler (memory and disk), which lives and stops with the server.
pub async fn serve(
    settings: &Settings,
    shared: Arc<Shared>,
    extra: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(settings.health_bind).await?;
    let local = listener.local_addr()?;
    let host = Arc::new(probes::HostReadings::default());
    let app = router(settings, shared, host.clone(), extra);
    let sampler = tokio::spawn(probes::sample_host(
        settings.spool_dir.clone(),
        host,
        shutdown.clone(),
    ));
    let handle = tokio::spawn(async move {
        listen::serve(listener, app, shutdown.clone()).await;
        let _ = shutdown.wait_for(|v| *v).await;
        let _ = sampler.await;
    });
    Ok((local, handle))
}
