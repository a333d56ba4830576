//! Scenario `health`: `/api/v2/health` latency under a steady 200 requests/s while
//! Elasticsearch is unreachable (`ELK_URL` is a local port nobody listens on) and the sidecar is
//! busy: an operation is running in Caldera, so it keeps polling, building documents and failing
//! to deliver them (retries, breaker, spool).
//!
//! The load generator is open-loop: request *i* is sent at `start + i / rate` whatever happened
//! to the earlier ones, each on its own task, so a slow answer cannot lower the offered rate
//! (no coordinated omission). Latency is measured from the scheduled send time to the complete
//! answer; the achieved send rate and the status codes are reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{
    Auth, BenchResult, Ctx, Figures, Opts, Sidecar, Target, free_port, http_client, percentile,
    sidecar_env, unique_index,
};
use crate::support::caldera_stub::CalderaStub;
use crate::support::scenarios;

pub fn targets(_opts: &Opts) -> Vec<Target> {
    vec![Target::at_most(
        "p99_ms",
        50.0,
        "/api/v2/health p99 under 200 requests/s, Elasticsearch unreachable",
    )]
}

struct Answer {
    status: Option<u16>,
    latency_ms: f64,
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let rate = ctx.opts.rate.unwrap_or(200.0);
    let seconds = ctx.opts.seconds_or(10.0, 1.0);
    let closed = free_port()?;
    let stub = CalderaStub::start().await;
    let mut op = scenarios::op_many_links(&scenarios::new_uuid(), "bench-health", 26);
    op["state"] = json!("running");
    stub.put_operation(op);
    let index = unique_index("health");
    let env = sidecar_env(
        &stub.url(),
        &format!("http://127.0.0.1:{closed}"),
        &index,
        Auth::Session,
        &[],
    );
    let mut sidecar = Sidecar::spawn(&env)?;
    sidecar.wait_ready(Duration::from_secs(20)).await?;
    // Let it find out that Elasticsearch is gone and start failing deliveries.
    let settle = if ctx.opts.smoke { 1.0 } else { 5.0 };
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let before = sidecar.health().await?;
    let cpu0 = sidecar.cpu()?;

    let client = http_client();
    let url = Arc::new(sidecar.health_url.clone());
    let total = (rate * seconds).round().max(1.0) as usize;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total);
    let send_started = Instant::now();
    let mut lag_max = Duration::ZERO;
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        lag_max = lag_max.max(tokio::time::Instant::now().saturating_duration_since(at));
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let resp = client
                .get(url.as_str())
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            let status = match resp {
                Ok(r) => {
                    let s = r.status().as_u16();
                    // The whole body, as a monitoring client would read it.
                    r.bytes().await.ok().map(|_| s)
                }
                Err(_) => None,
            };
            Answer {
                status,
                latency_ms: at.elapsed().as_secs_f64() * 1000.0,
            }
        }));
    }
    let send_secs = send_started.elapsed().as_secs_f64();
    let mut answers = Vec::with_capacity(total);
    for t in tasks {
        answers.push(t.await.map_err(|e| format!("request task panicked: {e}"))?);
    }
    let cpu = sidecar.cpu()?.saturating_sub(cpu0);
    let after = sidecar.health().await?;
    sidecar.stop().await?;

    let ok: Vec<f64> = answers
        .iter()
        .filter(|a| a.status.is_some())
        .map(|a| a.latency_ms)
        .collect();
    let failed = answers.len() - ok.len();
    let count = |code: u16| answers.iter().filter(|a| a.status == Some(code)).count();
    if ok.is_empty() {
        return Err("no health request was answered".into());
    }
    let es_reachable = after["checks"]["elasticsearch"]["reachable"].as_bool();
    let mut f = Figures::default();
    f.add("requests", "requests sent", "n", total as f64);
    f.add("offered_rate", "offered rate", "req/s", rate);
    f.add(
        "achieved_rate",
        "achieved send rate",
        "req/s",
        total as f64 / send_secs.max(1e-9),
    );
    f.add(
        "sender_lag_max_ms",
        "worst lag of the sender behind schedule",
        "ms",
        lag_max.as_secs_f64() * 1000.0,
    );
    f.add("answered", "answered", "n", ok.len() as f64);
    f.add(
        "not_answered",
        "no answer within 5 s / error",
        "n",
        failed as f64,
    );
    f.add("status_200", "HTTP 200", "n", count(200) as f64);
    f.add("status_503", "HTTP 503 (unhealthy)", "n", count(503) as f64);
    f.add(
        "status_429",
        "HTTP 429 (rate limited)",
        "n",
        count(429) as f64,
    );
    f.add(
        "p50_ms",
        "latency p50 (from scheduled send)",
        "ms",
        percentile(&ok, 50.0),
    );
    f.add(
        "p99_ms",
        "latency p99 (from scheduled send)",
        "ms",
        percentile(&ok, 99.0),
    );
    f.add("max_ms", "latency max", "ms", percentile(&ok, 100.0));
    f.add(
        "cpu_us_per_request",
        "sidecar CPU per request (incl. its own failing work)",
        "us",
        cpu.as_secs_f64() * 1e6 / total as f64,
    );
    let brief = |h: &serde_json::Value| {
        json!({
            "status": h["status"],
            "elasticsearch_reachable": h["checks"]["elasticsearch"]["reachable"],
            "circuit_breaker": h["checks"]["circuit_breaker"]["state"],
            "documents_spooled": h["checks"]["pipeline"]["documents_spooled"],
        })
    };
    f.detail.insert("health_before".into(), brief(&before));
    f.detail.insert("health_after".into(), brief(&after));
    f.note(format!(
        "ELK_URL=http://127.0.0.1:{closed} (closed port); elasticsearch.reachable in health \
         after the load: {es_reachable:?}; one running operation of 26 links in the stub; \
         MAX_REQUESTS_PER_MINUTE=1000000 so the per-client limit does not answer 429"
    ));
    Ok(f)
}
