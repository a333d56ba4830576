//! Scenario `cpu`: the sidecar's CPU time per link document, read from `/proc/<pid>/stat`
//! (user + system, all threads) of the real release binary.
//!
//! The sidecar runs against the stub with one empty running operation (so it polls at the fast
//! rate) and is measured while idle for a few polls. Then finished operations of 100 links each
//! (op A's recorded links, fresh ids, with a report) appear in Caldera at once:
//! * *ingest*: CPU from their appearance until the sidecar has indexed every document, divided
//!   by the link documents — listing, fetch, JSON decode, build + sanitize, encode, bulk, answer;
//! * *to settled*: CPU until every operation is settled (production SETTLE_GRACE of 30 s, during
//!   which each operation is fetched and rebuilt on every 2 s poll), divided by the same number:
//!   the whole cost of a link document's life in the sidecar.
//!
//! The stub runs in this process, so its work (serving ~400 KB operations) is not counted.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Auth, BenchResult, Ctx, Figures, Sidecar, Target, sidecar_env, unique_index};
use crate::support::caldera_stub::{CalderaStub, RouteKind};
use crate::support::scenarios;

pub fn targets() -> Vec<Target> {
    vec![Target::at_most(
        "ingest_cpu_ms_per_link",
        0.2,
        "sidecar CPU per link document",
    )]
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let index = unique_index("cpu");
    let res = measure(ctx, &index).await;
    ctx.es.cleanup(&index).await;
    res
}

async fn measure(ctx: &Ctx, index: &str) -> BenchResult<Figures> {
    let n_links = ctx.opts.size_or(20_000, 500);
    let per_op = if ctx.opts.smoke { 50 } else { 100 };
    let n_ops = n_links.div_ceil(per_op);
    let (grace, poll) = if ctx.opts.smoke {
        ("0.5", "0.5")
    } else {
        ("30", "2")
    };

    let stub = CalderaStub::start().await;
    let keeper = scenarios::new_uuid();
    let mut keeper_op = scenarios::op_many_links(&keeper, "bench-cpu-keeper", 0);
    keeper_op["state"] = json!("running");
    stub.put_operation(keeper_op);
    // Generated before the measurement (this process's CPU is not the sidecar's anyway).
    let report = scenarios::fixture("operation_report.json");
    let ops = tokio::task::spawn_blocking(move || {
        let mut left = n_links;
        (0..n_ops)
            .map(|i| {
                let links = per_op.min(left);
                left -= links;
                let id = scenarios::new_uuid();
                scenarios::op_many_links(&id, &format!("bench-cpu-{i}"), links)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("generation panicked: {e}"))?;

    let env = sidecar_env(
        &stub.url(),
        &ctx.es.url,
        index,
        Auth::Session,
        &[
            ("SETTLE_GRACE", grace.into()),
            ("POLL_INTERVAL", poll.into()),
        ],
    );
    let mut sidecar = Sidecar::spawn(&env)?;
    sidecar.wait_ready(Duration::from_secs(20)).await?;
    sidecar
        .wait_stat("documents_indexed", 1, Duration::from_secs(30))
        .await?;
    // Idle baseline: a few polls of the empty running operation.
    let idle_secs = if ctx.opts.smoke { 1.0 } else { 6.0 };
    let (c_idle, t_idle) = (sidecar.cpu()?, Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let (c0, t0) = (sidecar.cpu()?, Instant::now());
    let idle_ms_per_s =
        (c0 - c_idle).as_secs_f64() * 1000.0 / t0.duration_since(t_idle).as_secs_f64();
    let indexed0 = sidecar.stat("documents_indexed").await?;

    let ids: Vec<String> = ops
        .iter()
        .map(|o| o["id"].as_str().unwrap_or_default().to_string())
        .collect();
    for (op, id) in ops.into_iter().zip(&ids) {
        stub.put_report(id, report.clone());
        stub.put_operation(op);
    }
    let t_put = Instant::now();
    let want = indexed0 + (n_links + n_ops) as u64;
    let timeout = Duration::from_secs(60 + (n_links / 200) as u64);
    sidecar
        .wait_stat("documents_indexed", want, timeout)
        .await?;
    let (c1, t1) = (sidecar.cpu()?, Instant::now());
    stub.reset_counts();
    sidecar
        .wait_stat(
            "operations_settled",
            n_ops as u64,
            timeout + Duration::from_secs(60),
        )
        .await?;
    let (c2, t2) = (sidecar.cpu()?, Instant::now());
    let refetches = stub.count(Some(RouteKind::Operation), None);
    let (rss_kb, hwm_kb) = sidecar.memory()?;
    sidecar.stop().await?;

    let counted = ctx.es.link_count(index).await?;
    if counted != n_links as u64 {
        return Err(format!("the index holds {counted} link documents, want {n_links}").into());
    }
    let ingest = (c1 - c0).as_secs_f64() * 1000.0;
    let settled = (c2 - c0).as_secs_f64() * 1000.0;
    let ingest_secs = t1.duration_since(t_put).as_secs_f64();
    let settle_secs = t2.duration_since(t1).as_secs_f64();
    let mut f = Figures::default();
    f.add("links", "link documents", "docs", n_links as f64);
    f.add(
        "operations",
        format!("operations ({per_op} links each)"),
        "ops",
        n_ops as f64,
    );
    f.add(
        "ingest_cpu_ms_per_link",
        "ingest: CPU per link document",
        "ms",
        ingest / n_links as f64,
    );
    f.add(
        "ingest_cpu_utilisation",
        "ingest: CPU / wall time (cores)",
        "cores",
        ingest / 1000.0 / ingest_secs,
    );
    f.add(
        "ingest_docs_per_s",
        "ingest: whole-app link documents/s (incl. first poll wait)",
        "docs/s",
        n_links as f64 / ingest_secs,
    );
    f.add(
        "settled_cpu_ms_per_link",
        format!("to settled (SETTLE_GRACE={grace}s): CPU per link document"),
        "ms",
        settled / n_links as f64,
    );
    f.add(
        "settle_phase_cpu_ms_per_s",
        "settle phase: CPU per second (re-fetch + rebuild)",
        "ms/s",
        (settled - ingest) / settle_secs.max(0.001),
    );
    f.add(
        "refetches",
        "settle phase: operation fetches (nothing changed)",
        "n",
        refetches as f64,
    );
    f.add(
        "refetch_cpu_us_per_link",
        "settle phase: CPU per unchanged link re-fetched",
        "us",
        (settled - ingest) * 1000.0 / (refetches * per_op).max(1) as f64,
    );
    f.add(
        "idle_cpu_ms_per_s",
        "idle (one empty running op): CPU per second",
        "ms/s",
        idle_ms_per_s,
    );
    f.add(
        "rss_mb",
        "resident memory at the end",
        "MB",
        rss_kb as f64 / 1024.0,
    );
    f.add(
        "hwm_mb",
        "peak resident memory",
        "MB",
        hwm_kb as f64 / 1024.0,
    );
    f.note(format!(
        "POLL_INTERVAL={poll}s SETTLE_GRACE={grace}s, other settings at their defaults; \
         CPU from /proc/<pid>/stat (utime+stime)"
    ));
    Ok(f)
}
