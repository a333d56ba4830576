//! `GET /api/v2/enroll?client=NAME&platform=P[&executor=E]`: the `enroll` command's JSON over
//! HTTP, behind the same API key and rate limit as the other endpoints (the server's guard).
//!
//! A bad or unknown parameter is a 400 with the reason. Caldera's deploy commands are cached
//! for [`CACHE_FOR`] (a failure for [`RETRY_AFTER_FAILURE`]): every request with Caldera's
//! `KEY` header costs Caldera ~200 ms, and the commands change only when its config does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::deploy::DeployInfo;
use super::{EnrollError, EnrollSettings, Request};
use crate::caldera::client::CalderaClient;

pub const PATH: &str = "/api/v2/enroll";
pub const CACHE_FOR: Duration = Duration::from_secs(60);
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

type Cached = Option<(Instant, Arc<Result<DeployInfo, String>>)>;

/// What the endpoint needs; built once at start-up.
pub struct EnrollService {
    client: Arc<CalderaClient>,
    settings: EnrollSettings,
    client_map: HashMap<String, String>,
    cache: tokio::sync::Mutex<Cached>,
}

impl EnrollService {
    pub fn new(
        client: Arc<CalderaClient>,
        settings: EnrollSettings,
        client_map: HashMap<String, String>,
    ) -> Self {
        Self {
            client,
            settings,
            client_map,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Caldera's deploy commands, from the cache while fresh. The lock is held during a fetch,
    /// so a burst of requests costs Caldera one read.
    async fn deploy_info(&self) -> Arc<Result<DeployInfo, String>> {
        let mut cache = self.cache.lock().await;
        if let Some((at, v)) = cache.as_ref() {
            let ttl = if v.is_ok() {
                CACHE_FOR
            } else {
                RETRY_AFTER_FAILURE
            };
            if at.elapsed() < ttl {
                return v.clone();
            }
        }
        let v = Arc::new(super::fetch(&self.client).await);
        if let Err(e) = v.as_ref() {
            tracing::warn!(error = %e, "Caldera's deploy commands not read; enroll uses the built-in templates");
        }
        *cache = Some((Instant::now(), v.clone()));
        v
    }
}

/// The route, with its state applied; the server merges it under its guard.
pub fn routes(svc: Arc<EnrollService>) -> Router {
    Router::new().route(PATH, get(handler)).with_state(svc)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(body),
    )
        .into_response()
}

fn bad(reason: impl Into<String>) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        json!({ "error": crate::server::health::one_line(&reason.into()) }),
    )
}

async fn handler(State(svc): State<Arc<EnrollService>>, RawQuery(q): RawQuery) -> Response {
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        if !matches!(k.as_ref(), "client" | "platform" | "executor") {
            return bad(format!(
                "unknown parameter {:?}: use client, platform and optionally executor",
                k.chars().take(40).collect::<String>()
            ));
        }
        if params.insert(k.to_string(), v.to_string()).is_some() {
            return bad(format!("parameter {k} given twice"));
        }
    }
    let (Some(client), Some(platform)) = (params.get("client"), params.get("platform")) else {
        return bad("client and platform are required, e.g. ?client=acme&platform=windows");
    };
    let req = match Request::parse(
        client,
        platform,
        params.get("executor").map(String::as_str),
        None,
    ) {
        Ok(r) => r,
        Err(e) => return bad(e.to_string()),
    };
    // The group and server must be known before asking Caldera for anything.
    if let Err(e) = super::group_for(&req.client, &svc.client_map) {
        return bad(e.to_string());
    }
    let info = svc.deploy_info().await;
    match super::prepare(&req, &svc.settings, &svc.client_map, &info) {
        Ok(en) => answer(StatusCode::OK, json!(en)),
        Err(e @ (EnrollError::Refused(_) | EnrollError::Ambiguous { .. })) => bad(e.to_string()),
        // The sidecar's configuration lacks the address, not the request: 503 with what to set.
        Err(e @ EnrollError::NoServer { .. }) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": e.to_string() }),
        ),
    }
}
