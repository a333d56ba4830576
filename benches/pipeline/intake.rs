//! Scenario `intake`: what the sidecar costs Caldera, side by side in one run, for three ways of
//! learning of changes (issue 12):
//! * `push`: the Caldera plugin's events (sent by this program exactly as the plugin sends
//!   them: heartbeats every 30 s, a batch per link result, the state change and completion)
//!   with budgeted polling as reconciliation;
//! * `budget`: no plugin, polling on the CPU budget (defaults: 1 % idle, 5 % active);
//! * `fixed`: no plugin, the budget off (`CALDERA_CPU_BUDGET=100`, `…_ACTIVE=100`): the
//!   configured intervals only, i.e. the polling cadence of the sidecar before issue 12.
//!
//! Caldera (the stub) holds 200 operations × 50 links and charges every read its
//! serialization cost ([`CostModel::caldera_5_3`]: listing 0.75 ms per link held, one operation
//! 10 ms + 2.5 ms per link, one link 4 ms), on its single event loop. Caldera CPU caused by the
//! sidecar is the stub's charged time over wall time. The 200 settled operations are indexed
//! once beforehand (the stub's costs off), so every mode starts knowing they are settled.
//!
//! Phases per mode: start-up (until the first listing is answered), idle (nothing changes),
//! active (a new 50-link operation gets a link result every 0.5 s, then finishes), until it is
//! settled. In `budget` mode the new operation would only be seen at the next listing, which
//! the budget puts minutes away: the active phase is not run; its figure is the effective
//! listing interval the sidecar reports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Auth, BenchResult, Ctx, Figures, Sidecar, Target, sidecar_env, unique_index};
use crate::support::caldera_stub::{CalderaStub, CostModel, RouteKind};
use crate::support::scenarios;

const OPS: usize = 200;
const LINKS: usize = 50;

pub fn targets() -> Vec<Target> {
    vec![
        Target::at_most(
            "budget_idle_steady_pct",
            1.0,
            "without push, idle: Caldera CPU <= 1 % (steady state: listing cost / interval)",
        ),
        Target::at_most(
            "push_idle_steady_pct",
            1.0,
            "with push, idle: Caldera CPU <= 1 %",
        ),
        Target::at_most(
            "push_latency_p99_ms",
            1200.0,
            "with push: Caldera change -> document searchable, p99 <= 1.2 s",
        ),
        Target::at_most(
            "push_ms_per_link",
            5.0,
            "with push: Caldera CPU added per link <= 5 ms",
        ),
    ]
}

fn new_op(i: usize) -> Value {
    let id = format!("00000000-0000-4000-8000-{i:012}");
    scenarios::op_many_links(&id, &format!("bench op {i}"), LINKS)
}

/// The charged Caldera time of the requests recorded so far.
fn charged(stub: &CalderaStub) -> Duration {
    stub.charged(None)
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let smoke = ctx.opts.smoke;
    let (ops, idle_secs) = if smoke {
        (4, 2.0)
    } else {
        (OPS, ctx.opts.seconds_or(60.0, 2.0))
    };
    let mut f = Figures::default();
    let index = unique_index("intake");
    let stub = CalderaStub::start().await;
    for i in 0..ops {
        let op = new_op(i);
        let id = op["id"].as_str().unwrap_or_default().to_string();
        stub.put_report(
            &id,
            json!({"name": op["name"], "start": op["start"], "finish": op["start"], "steps": {}}),
        );
        stub.put_operation(op);
    }
    let res = async {
        // Setup: index the settled history once, Caldera costs off.
        let setup = [
            ("SETTLE_GRACE", "1".to_string()),
            ("CALDERA_CPU_BUDGET", "100".to_string()),
            ("CALDERA_CPU_BUDGET_ACTIVE", "100".to_string()),
        ];
        let env = sidecar_env(&stub.url(), &ctx.es.url, &index, Auth::Session, &setup);
        let mut sc = Sidecar::spawn(&env)?;
        sc.wait_ready(Duration::from_secs(20)).await?;
        sc.wait_stat("operations_settled", ops as u64, Duration::from_secs(600))
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        sc.stop().await?;
        stub.set_cost_model(CostModel::caldera_5_3());

        let mut table = Vec::new();
        for (n, mode) in ["push", "budget", "fixed"].into_iter().enumerate() {
            let row = measure(
                ctx,
                &stub,
                &index,
                mode,
                ops,
                idle_secs,
                1_000 + n * 10,
                &mut f,
            )
            .await?;
            table.push(row);
        }
        println!("intake: Caldera {ops} operations x {LINKS} links, cost model caldera_5_3");
        for row in table {
            println!("  {row}");
        }
        Ok::<_, crate::common::BenchError>(())
    }
    .await;
    ctx.es.cleanup(&index).await;
    res?;
    f.note(format!(
        "stub: {ops} operations x {LINKS} links; CostModel::caldera_5_3 (listing 0.75 ms/link held + 5 ms, \
         operation 10 ms + 2.5 ms/link, link 4 ms); report charged like the operation"
    ));
    Ok(f)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    ctx: &Ctx,
    stub: &CalderaStub,
    index: &str,
    mode: &str,
    ops: usize,
    idle_secs: f64,
    new_index: usize,
    f: &mut Figures,
) -> BenchResult<String> {
    let smoke = ctx.opts.smoke;
    let mut extra: Vec<(&str, String)> = Vec::new();
    if mode == "fixed" {
        extra.push(("CALDERA_CPU_BUDGET", "100".into()));
        extra.push(("CALDERA_CPU_BUDGET_ACTIVE", "100".into()));
    }
    if smoke {
        extra.push(("SETTLE_GRACE", "1".into()));
    }
    let env = sidecar_env(&stub.url(), &ctx.es.url, index, Auth::Session, &extra);
    stub.reset_counts();
    let t0 = Instant::now();
    let mut sc = Sidecar::spawn(&env)?;
    sc.wait_ready(Duration::from_secs(20)).await?;
    let base = sc.health_url.replace("/api/v2/health", "");
    let http = reqwest::Client::new();
    let push = mode == "push";
    let beat = json!({"plugin": "sidecar_push", "version": 1, "dropped": 0, "events": []});
    if push {
        post(&http, &base, &beat).await?;
    }
    // Start-up: until the first listing has been answered.
    let start = Instant::now();
    while stub
        .requests()
        .iter()
        .all(|r| r.kind != RouteKind::OperationsList || r.status.is_none())
    {
        if start.elapsed() > Duration::from_secs(120) {
            return Err("no listing within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let startup_secs = t0.elapsed().as_secs_f64();
    let startup_charged = charged(stub);
    let startup_fetches = stub.count(Some(RouteKind::Operation), None);

    // Idle.
    stub.reset_counts();
    let t = Instant::now();
    let mut next_beat = Instant::now();
    while t.elapsed() < Duration::from_secs_f64(idle_secs) {
        if push && Instant::now() >= next_beat {
            post(&http, &base, &beat).await?;
            next_beat = Instant::now() + Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_wall = t.elapsed().as_secs_f64();
    let idle_charged = charged(stub).as_secs_f64();
    let idle_listings = stub.count(Some(RouteKind::OperationsList), None);
    let h = sc.health().await?;
    let listing = &h["checks"]["intake"]["listing"];
    let cost = listing["measured_cost_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let interval = listing["effective_interval_seconds"]
        .as_f64()
        .unwrap_or(0.0);
    let steady = if interval > 0.0 {
        100.0 * cost / (cost + interval)
    } else {
        0.0
    };
    let p = |k: &str| format!("{mode}_{k}");
    f.add(
        p("idle_measured_pct"),
        format!("{mode}: idle, Caldera CPU over {idle_wall:.0} s (charged / wall)"),
        "%",
        100.0 * idle_charged / idle_wall,
    );
    f.add(
        p("idle_steady_pct"),
        format!("{mode}: idle, steady state (listing cost / effective interval)"),
        "%",
        steady,
    );
    f.add(
        p("listing_cost_ms"),
        format!("{mode}: one listing as measured by the sidecar"),
        "ms",
        cost * 1000.0,
    );
    f.add(
        p("listing_interval_s"),
        format!(
            "{mode}: effective listing interval = how late a new operation is seen without push"
        ),
        "s",
        interval,
    );
    f.add(
        p("startup_s"),
        format!("{mode}: start-up until the first listing was answered"),
        "s",
        startup_secs,
    );
    f.add(
        p("startup_operation_fetches"),
        format!("{mode}: whole-operation fetches at start-up (all 200 settled and known)"),
        "",
        startup_fetches as f64,
    );
    let mut row = format!(
        "{mode:<6} start-up {startup_secs:.1} s ({:.1} s charged, {startup_fetches} op fetches); idle: {idle_listings} listings in {idle_wall:.0} s = {:.2} % measured, {steady:.2} % steady (listing {:.0} ms every {interval:.0} s)",
        startup_charged.as_secs_f64(),
        100.0 * idle_charged / idle_wall,
        cost * 1000.0
    );

    if mode != "budget" {
        let (per_link, p99, p50, settled_s) = active(
            stub, &mut sc, &http, &base, index, push, new_index, ops, ctx, f, mode,
        )
        .await?;
        row.push_str(&format!(
            "; active: {per_link:.1} ms Caldera per link, change -> searchable p50 {p50:.0} ms p99 {p99:.0} ms, settled {settled_s:.0} s after the end"
        ));
    }
    sc.stop().await?;
    Ok(row)
}

async fn post(http: &reqwest::Client, base: &str, body: &Value) -> BenchResult<()> {
    let r = http
        .post(format!("{base}/api/v2/events"))
        .json(body)
        .send()
        .await
        .map_err(|e| format!("push: {e}"))?;
    if r.status().as_u16() != 202 {
        return Err(format!("push answered {}", r.status()).into());
    }
    Ok(())
}

/// A new operation runs: one link result every 0.5 s, then it finishes. Returns Caldera ms per
/// link (everything charged from its creation until it is settled), latency p99 and p50 (ms),
/// and seconds from the end to settled.
#[allow(clippy::too_many_arguments)]
async fn active(
    stub: &CalderaStub,
    sc: &mut Sidecar,
    http: &reqwest::Client,
    base: &str,
    index: &str,
    push: bool,
    n: usize,
    ops: usize,
    ctx: &Ctx,
    f: &mut Figures,
    mode: &str,
) -> BenchResult<(f64, f64, f64, f64)> {
    let links = if ctx.opts.smoke { 5 } else { LINKS };
    let full = scenarios::with_state(new_op(n), "running");
    let id = full["id"].as_str().unwrap_or_default().to_string();
    let chain: Vec<Value> = full["chain"].as_array().cloned().unwrap_or_default();
    stub.put_report(
        &id,
        json!({"name": full["name"], "start": full["start"], "finish": full["start"], "steps": {}}),
    );
    stub.reset_counts();
    let mut changed: BTreeMap<String, Instant> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut step = Instant::now();
    for (i, link) in chain.iter().take(links).enumerate() {
        let mut op = full.clone();
        op["chain"] = Value::Array(chain[..=i].to_vec());
        stub.put_operation(op);
        let lid = link["id"].as_str().unwrap_or_default().to_string();
        changed.insert(lid.clone(), Instant::now());
        if push {
            let ev = json!({"plugin": "sidecar_push", "version": 1, "dropped": 0, "events": [
                {"event": "link/completed", "timestamp": 1.0, "operation_id": id, "link_id": lid},
                {"event": "link/status_changed", "timestamp": 1.0, "operation_id": id, "link_id": lid,
                 "from_status": -3, "to_status": link["status"]}]});
            post(http, base, &ev).await?;
        }
        step += Duration::from_millis(500);
        collect_latencies(ctx, index, &mut changed, &mut latencies, step).await?;
    }
    // The operation finishes.
    let mut op = full.clone();
    op["chain"] = Value::Array(chain[..links].to_vec());
    op["state"] = json!("finished");
    stub.put_operation(op);
    let ended = Instant::now();
    if push {
        let ev = json!({"plugin": "sidecar_push", "version": 1, "dropped": 0, "events": [
            {"event": "operation/completed", "timestamp": 1.0, "operation_id": id},
            {"event": "operation/state_changed", "timestamp": 1.0, "operation_id": id,
             "from_state": "running", "to_state": "finished"}]});
        post(http, base, &ev).await?;
    }
    collect_latencies(
        ctx,
        index,
        &mut changed,
        &mut latencies,
        Instant::now() + Duration::from_secs(60),
    )
    .await?;
    sc.wait_stat(
        "operations_settled",
        ops as u64 + 1,
        Duration::from_secs(300),
    )
    .await?;
    let settled_s = ended.elapsed().as_secs_f64();
    let total = charged(stub).as_secs_f64() * 1000.0;
    let per_link = total / links as f64;
    latencies.sort_by(f64::total_cmp);
    let p99 = crate::common::percentile(&latencies, 99.0);
    let p50 = crate::common::percentile(&latencies, 50.0);
    let p = |k: &str| format!("{mode}_{k}");
    f.add(
        p("ms_per_link"),
        format!(
            "{mode}: Caldera CPU per link of a new {links}-link operation, creation to settled"
        ),
        "ms",
        per_link,
    );
    f.add(
        p("latency_p99_ms"),
        format!("{mode}: link result -> document searchable, p99"),
        "ms",
        p99,
    );
    f.add(
        p("latency_p50_ms"),
        format!("{mode}: link result -> document searchable, p50"),
        "ms",
        p50,
    );
    f.add(
        p("op_fetches_active"),
        format!("{mode}: whole-operation fetches for the new operation"),
        "",
        stub.count(Some(RouteKind::Operation), None) as f64,
    );
    f.add(
        p("link_fetches_active"),
        format!("{mode}: single-link fetches for the new operation"),
        "",
        stub.count(Some(RouteKind::Link), None) as f64,
    );
    stub.remove_operation(&id);
    Ok((per_link, p99, p50, settled_s))
}

/// Polls the index until `until` (or until nothing is pending), recording for each changed
/// link the time from its change to the first search that returns it with a result.
async fn collect_latencies(
    ctx: &Ctx,
    index: &str,
    pending: &mut BTreeMap<String, Instant>,
    out: &mut Vec<f64>,
    until: Instant,
) -> BenchResult<()> {
    loop {
        if !pending.is_empty() {
            let ids: Vec<&String> = pending.keys().collect();
            let r = ctx
                .es
                .search(
                    index,
                    &json!({"size": 100, "_source": ["link_id"],
                            "query": {"bool": {"filter": [
                                {"terms": {"link_id": ids}},
                                {"exists": {"field": "finish"}}]}}}),
                )
                .await?;
            let now = Instant::now();
            for h in r["hits"]["hits"].as_array().into_iter().flatten() {
                if let Some(l) = h["_source"]["link_id"].as_str()
                    && let Some(t) = pending.remove(l)
                {
                    out.push(now.duration_since(t).as_secs_f64() * 1000.0);
                }
            }
        }
        if Instant::now() >= until
            || (pending.is_empty() && Instant::now() + Duration::from_millis(50) >= until)
        {
            return Ok(());
        }
        if pending.is_empty() {
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
