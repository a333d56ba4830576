//! Scenario `memory`: resident memory of the real sidecar (`/proc/<pid>/status`: VmRSS now,
//! VmHWM the peak so far), sampled every second.
//!
//! Phase 1, *tracked*: 1,000 running operations of 50 links each (op A's recorded links, fresh
//! ids) appear in Caldera; once their 51,000 documents are indexed the sidecar keeps fetching
//! all of them on every poll (they are running) and remembers a fingerprint per document — the
//! worst case for "1,000 operations / 50,000 links tracked". RSS is sampled every 100 ms over
//! three more polls: the median is the figure, the highest sample and VmHWM (the peak of the
//! catch-up that indexed them) are reported beside it.
//!
//! Phase 2, *stream*: those operations finish and settle, then a stream of finished operations
//! of 1,000 links each flows through (at most 20 not yet settled at a time) until 1,000,000
//! link documents are indexed. A settled operation stays in Caldera's listing, as in a real
//! Caldera, but its heavy fields are dropped from the stub (the listing row is unchanged, so the
//! sidecar cannot tell) to keep this process's memory bounded. The RSS curve over the stream
//! must be flat.
//!
//! SETTLE_GRACE is 2 s here (production: 30 s) so the stream does not wait half a minute per
//! operation; everything else is at production defaults.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    Auth, BenchResult, Ctx, Figures, Sidecar, Target, find_u64, median, sidecar_env, unique_index,
};
use crate::support::caldera_stub::CalderaStub;
use crate::support::scenarios;

pub fn targets() -> Vec<Target> {
    vec![
        Target::at_most(
            "tracked_rss_mb",
            20.0,
            "resident memory with 1,000 operations / 50,000 links tracked",
        ),
        Target::at_most(
            "stream_slope_mb_per_100k",
            0.5,
            "flat over 1M documents: RSS trend over the last 90% <= 0.5 MB per 100k documents",
        ),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    docs: u64,
    rss_kb: u64,
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let index = unique_index("memory");
    let res = measure(ctx, &index).await;
    ctx.es.cleanup(&index).await;
    res
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The operation with its heavy fields dropped; the listing row (id, name, state, start,
/// group) stays the same.
fn lighten(mut op: Value) -> Value {
    op["chain"] = json!([]);
    op["host_group"] = json!([]);
    op
}

async fn measure(ctx: &Ctx, index: &str) -> BenchResult<Figures> {
    let smoke = ctx.opts.smoke;
    let (n_ops, per_op) = if smoke { (20, 5) } else { (1000, 50) };
    let stream_docs = ctx.opts.size_or(1_000_000, 1_000);
    let (stream_per_op, window) = if smoke { (100, 4) } else { (1000, 20) };
    let (grace, poll) = if smoke { ("0.3", "0.3") } else { ("2", "2") };
    let poll_secs: f64 = poll.parse().unwrap_or(2.0);

    let stub = Arc::new(CalderaStub::start().await);
    // One empty running operation (like an `auto_close: false` one) keeps the sidecar at the
    // fast poll rate between stream operations, as it would be while anything runs.
    let mut keeper = scenarios::op_many_links(&scenarios::new_uuid(), "bench-mem-keeper", 0);
    keeper["state"] = json!("running");
    stub.put_operation(keeper);
    let env = sidecar_env(
        &stub.url(),
        &ctx.es.url,
        index,
        Auth::Session,
        &[
            ("SETTLE_GRACE", grace.into()),
            ("POLL_INTERVAL", poll.into()),
            // The stub charges no Caldera cost here: the CPU budget would space the fetches by
            // the stub's own wall time, and the scenario would measure that, not memory (every
            // tracked operation is to be fetched on every poll, the worst case).
            ("CALDERA_CPU_BUDGET", "100".into()),
            ("CALDERA_CPU_BUDGET_ACTIVE", "100".into()),
        ],
    );
    let mut sidecar = Sidecar::spawn(&env)?;
    sidecar.wait_ready(Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(if smoke { 1 } else { 3 })).await;
    let (idle_rss, _) = sidecar.memory()?;

    // Phase 1: n_ops running operations tracked.
    let ops = tokio::task::spawn_blocking(move || {
        (0..n_ops)
            .map(|i| {
                let id = scenarios::new_uuid();
                let mut op = scenarios::op_many_links(&id, &format!("bench-mem-{i}"), per_op);
                op["state"] = json!("running");
                op
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("generation panicked: {e}"))?;
    let ids: Vec<String> = ops
        .iter()
        .map(|o| o["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let report = scenarios::fixture("operation_report.json");
    for op in ops {
        stub.put_operation(op);
    }
    let t1 = Instant::now();
    let want = (n_ops * (per_op + 1) + 1) as u64;
    sidecar
        .wait_stat("documents_indexed", want, Duration::from_secs(600))
        .await?;
    let phase1_secs = t1.elapsed().as_secs_f64();
    // Three more polls of every operation, sampling RSS every 100 ms.
    let mut tracked = Vec::new();
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs_f64((3.0 * poll_secs).max(1.0)) {
        tracked.push(mb(sidecar.memory()?.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, tracked_hwm) = sidecar.memory()?;
    let tracked_median = median(&tracked);
    let tracked_max = tracked.iter().copied().fold(0.0, f64::max);
    let tracked_ops = sidecar.stat("operations_tracked").await?;

    // Phase 1 ends: the operations finish and settle; their heavy fields leave the stub.
    for id in &ids {
        if let Some(mut op) = stub.operation(id) {
            op["state"] = json!("finished");
            stub.put_report(id, report.clone());
            stub.put_operation(op);
        }
    }
    sidecar
        .wait_stat("operations_settled", n_ops as u64, Duration::from_secs(600))
        .await?;
    for id in &ids {
        if let Some(op) = stub.operation(id) {
            stub.put_operation(lighten(op));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(2.0 * poll_secs)).await;
    let (settled_rss, _) = sidecar.memory()?;

    // Phase 2: the stream.
    let docs_start = sidecar.stat("documents_indexed").await?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let stream_ops = stream_docs.div_ceil(stream_per_op);
    let (op_tx, mut op_rx) = tokio::sync::mpsc::channel::<Value>(4);
    let generator = tokio::task::spawn_blocking(move || {
        let mut left = stream_docs;
        for i in 0..stream_ops {
            let links = stream_per_op.min(left);
            left -= links;
            let id = scenarios::new_uuid();
            let op = scenarios::op_many_links(&id, &format!("bench-stream-{i}"), links);
            if op_tx.blocking_send(op).is_err() {
                return;
            }
        }
    });
    let t2 = Instant::now();
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut added = 0usize;
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    let stream_timeout = Duration::from_secs(300 + (stream_docs / 1000) as u64);
    loop {
        // Sample once a second.
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            let h = sidecar.health().await?;
            let docs = find_u64(&h, "documents_indexed")
                .unwrap_or(0)
                .saturating_sub(docs_start);
            let (rss_kb, _) = sidecar.memory()?;
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Sample {
                    secs: t2.elapsed().as_secs_f64(),
                    docs,
                    rss_kb,
                });
        }
        // Settled operations leave the window (and lose their heavy fields).
        if !pending.is_empty() {
            let body = json!({
                "size": pending.len(),
                "_source": ["operation_id"],
                "query": {"bool": {"filter": [
                    {"term": {"settled": true}},
                    {"terms": {"operation_id": pending.iter().collect::<Vec<_>>()}},
                ]}},
            });
            let v = ctx.es.search(index, &body).await.unwrap_or_default();
            for h in v["hits"]["hits"].as_array().cloned().unwrap_or_default() {
                if let Some(id) = h["_source"]["operation_id"].as_str() {
                    pending.retain(|p| p != id);
                    if let Some(op) = stub.operation(id) {
                        stub.put_operation(lighten(op));
                    }
                }
            }
        }
        while pending.len() < window && added < stream_ops {
            match op_rx.recv().await {
                Some(op) => {
                    let id = op["id"].as_str().unwrap_or_default().to_string();
                    stub.put_report(&id, report.clone());
                    stub.put_operation(op);
                    pending.push_back(id);
                    added += 1;
                }
                None => break,
            }
        }
        if added >= stream_ops && pending.is_empty() {
            break;
        }
        if t2.elapsed() > stream_timeout {
            return Err(format!(
                "stream not done after {stream_timeout:?}: {added} of {stream_ops} operations added, {} not settled",
                pending.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = generator.await;
    let stream_secs = t2.elapsed().as_secs_f64();
    let docs_end = sidecar
        .stat("documents_indexed")
        .await?
        .saturating_sub(docs_start);
    let (end_rss, end_hwm) = sidecar.memory()?;
    samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Sample {
            secs: stream_secs,
            docs: docs_end,
            rss_kb: end_rss,
        });
    let tracked_end = sidecar.stat("operations_tracked").await?;
    sidecar.stop().await?;
    let counted = ctx.es.link_count(index).await?;
    let want_links = (n_ops * per_op + stream_docs) as u64;
    if counted != want_links {
        return Err(format!("the index holds {counted} link documents, want {want_links}").into());
    }

    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let tenth = stream_docs as u64 / 10;
    let at_10 = samples
        .iter()
        .find(|s| s.docs >= tenth)
        .copied()
        .unwrap_or(samples[0]);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.docs >= tenth).collect();
    let max_rss = samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    // Least-squares slope of RSS against documents over the last 90 %.
    let slope = {
        let n = after.len() as f64;
        let (sx, sy) = after.iter().fold((0.0, 0.0), |(a, b), s| {
            (a + s.docs as f64, b + s.rss_kb as f64)
        });
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = after.iter().fold((0.0, 0.0), |(a, b), s| {
            let dx = s.docs as f64 - mx;
            (a + dx * (s.rss_kb as f64 - my), b + dx * dx)
        });
        if den > 0.0 { num / den } else { 0.0 }
    };

    let mut f = Figures::default();
    f.add(
        "idle_rss_mb",
        "before any link (one empty running op): RSS",
        "MB",
        mb(idle_rss),
    );
    f.add(
        "tracked_ops",
        format!("tracked: operations ({per_op} links each, running)"),
        "ops",
        tracked_ops as f64,
    );
    f.add(
        "tracked_rss_mb",
        format!(
            "tracked: RSS, {} ops / {} links (median over 3 polls)",
            n_ops,
            n_ops * per_op
        ),
        "MB",
        tracked_median,
    );
    f.add(
        "tracked_rss_max_mb",
        "tracked: highest RSS sample during those polls",
        "MB",
        tracked_max,
    );
    f.add(
        "tracked_hwm_mb",
        "tracked: peak RSS (VmHWM)",
        "MB",
        mb(tracked_hwm),
    );
    f.add(
        "tracked_index_secs",
        "tracked: time to index them",
        "s",
        phase1_secs,
    );
    f.add(
        "settled_rss_mb",
        "after they settled: RSS",
        "MB",
        mb(settled_rss),
    );
    f.add(
        "stream_docs",
        "stream: link documents",
        "docs",
        docs_end as f64,
    );
    f.add(
        "stream_docs_per_s",
        "stream: documents/s",
        "docs/s",
        docs_end as f64 / stream_secs,
    );
    f.add(
        "stream_rss_10pct_mb",
        "stream: RSS at 10%",
        "MB",
        mb(at_10.rss_kb),
    );
    f.add(
        "stream_rss_end_mb",
        "stream: RSS at the end",
        "MB",
        mb(end_rss),
    );
    f.add(
        "stream_growth_mb",
        "stream: RSS end - RSS at 10% (0 if lower)",
        "MB",
        (mb(end_rss) - mb(at_10.rss_kb)).max(0.0),
    );
    f.add(
        "stream_rss_max_mb",
        "stream: highest RSS sample",
        "MB",
        mb(max_rss),
    );
    f.add(
        "stream_slope_mb_per_100k",
        "stream: RSS trend per 100k docs, last 90% (0 if falling)",
        "MB",
        (slope * 100_000.0 / 1024.0).max(0.0),
    );
    f.add(
        "end_hwm_mb",
        "peak RSS over the whole run (VmHWM)",
        "MB",
        mb(end_hwm),
    );
    f.add(
        "end_tracked_ops",
        "operations tracked at the end",
        "ops",
        tracked_end as f64,
    );
    // The curve at every 10 % of the stream, for BENCHMARKS.md.
    let mut curve: Vec<Value> = (1..=10)
        .filter_map(|k| {
            let want = stream_docs as u64 * k / 10;
            samples.iter().find(|s| s.docs >= want).map(|s| {
                json!({"docs": s.docs, "secs": (s.secs * 10.0).round() / 10.0,
                       "rss_mb": (mb(s.rss_kb) * 10.0).round() / 10.0})
            })
        })
        .collect();
    curve.dedup();
    println!("memory: RSS over the stream (documents -> MB):");
    for c in &curve {
        println!(
            "  {:>9} docs  {:>7} s  {:>6} MB",
            c["docs"], c["secs"], c["rss_mb"]
        );
    }
    f.detail.insert("stream_curve".into(), json!(curve));
    f.note(format!(
        "POLL_INTERVAL={poll}s SETTLE_GRACE={grace}s (production 30 s), stream operations of \
         {stream_per_op} links, at most {window} unsettled at a time; RSS sampled every second"
    ));
    Ok(f)
}
