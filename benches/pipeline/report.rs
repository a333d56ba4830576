//! Scenario `report`: what reports cost.
//!
//! *Render*: an operation of 200 and one of 2,000 links (op A's recorded links cloned with fresh
//! ids, built into documents by the sidecar's own `document::build`, with `detection.*` fields
//! on half the links as the correlation stage writes them) are indexed, then
//! `caldera-sidecar report <id> --format pdf` (the release binary) is timed from start to exit:
//! process start, reading the index, building the report and the Typst layout and PDF export.
//!
//! *Idle memory*: the daemon is run twice on the same finished operations (11 operations, 521
//! links), once with `REPORTS_ENABLED=false` and once with `true`; once everything is settled
//! (and, with reports, every PDF written by the child renderer) the idle resident memory is
//! sampled for a few seconds. The figure is the difference of the two medians.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    Auth, BIN, BenchResult, Ctx, Figures, Sidecar, Target, http_client, median, sidecar_env,
    unique_index,
};
use crate::support::caldera_stub::CalderaStub;
use crate::support::scenarios;
use caldera_sidecar::caldera::model::Operation;
use caldera_sidecar::document::types::Timestamp;
use caldera_sidecar::document::{self, DocSettings};

pub fn targets() -> Vec<Target> {
    vec![
        Target::at_most("pdf_200_s", 1.0, "PDF of a 200-link operation"),
        Target::at_most("pdf_2000_s", 5.0, "PDF of a 2,000-link operation"),
        Target::at_most(
            "idle_rss_change_mb",
            1.0,
            "daemon's idle resident memory unchanged by REPORTS_ENABLED=true (|on - off|)",
        ),
    ]
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let index = unique_index("report");
    let mut figures = Figures::default();
    let res = render(ctx, &index, &mut figures).await;
    ctx.es.cleanup(&index).await;
    res?;
    idle_memory(ctx, &mut figures).await?;
    Ok(figures)
}

/// Indexes a settled operation of `n` links (half with detection fields); returns its id.
async fn plant(ctx: &Ctx, index: &str, n: usize) -> BenchResult<String> {
    use caldera_sidecar::sink::template::{template_body, template_name};
    // The index template the daemon installs (link_id a keyword, which the report sorts on).
    http_client()
        .put(format!(
            "{}/_index_template/{}",
            ctx.es.url,
            template_name(index)
        ))
        .json(&template_body(index))
        .send()
        .await
        .map_err(|e| format!("template: {e}"))?;
    let id = scenarios::new_uuid();
    let op = scenarios::op_many_links(&id, &format!("bench-report-{n}"), n);
    let raw = serde_json::to_vec(&op).map_err(|e| format!("op encodes: {e}"))?;
    let parsed: Operation = serde_json::from_slice(&raw).map_err(|e| format!("op decodes: {e}"))?;
    let built = document::build(
        parsed,
        None,
        true,
        Timestamp::now(),
        &DocSettings::default(),
    )
    .map_err(|e| format!("op builds: {e}"))?;
    let mut bulk = Vec::new();
    let mut line = |doc_id: &str, doc: &Value| -> BenchResult<()> {
        bulk.extend_from_slice(
            json!({"index": {"_index": index, "_id": doc_id}})
                .to_string()
                .as_bytes(),
        );
        bulk.push(b'\n');
        bulk.extend(serde_json::to_vec(doc).map_err(|e| format!("doc encodes: {e}"))?);
        bulk.push(b'\n');
        Ok(())
    };
    for (i, l) in built.links.iter().enumerate() {
        let mut v = serde_json::to_value(l).map_err(|e| format!("link encodes: {e}"))?;
        if i % 2 == 0 {
            v["detection"] = json!({
                "status": if i % 4 == 0 { "detected" } else { "not_detected" },
                "alert_count": 1, "rules": ["Bench rule"], "time_to_detect_ms": 1000 + i
            });
        }
        line(&l.event.id, &v)?;
    }
    let op_doc = serde_json::to_value(&built.operation).map_err(|e| format!("op doc: {e}"))?;
    line(&built.operation.event.id, &op_doc)?;
    let resp = http_client()
        .post(format!("{}/_bulk?refresh=true", ctx.es.url))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .map_err(|e| format!("bulk: {e}"))?;
    let v: Value = resp.json().await.map_err(|e| format!("bulk answer: {e}"))?;
    if v["errors"] != false {
        return Err(format!(
            "bulk refused documents: {}",
            &v.to_string()[..500.min(v.to_string().len())]
        )
        .into());
    }
    Ok(id)
}

async fn render(ctx: &Ctx, index: &str, figures: &mut Figures) -> BenchResult<()> {
    let sizes: [(usize, &str); 2] = if ctx.opts.smoke {
        [(20, "pdf_200_s"), (50, "pdf_2000_s")]
    } else {
        [(200, "pdf_200_s"), (2000, "pdf_2000_s")]
    };
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    for (n, key) in sizes {
        let id = plant(ctx, index, n).await?;
        let out = dir.path().join(format!("{n}.pdf"));
        let mut times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let o = Command::new(BIN)
                .args(["report", &id, "--format", "pdf", "--out"])
                .arg(&out)
                .current_dir(dir.path())
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("ELK_URL", &ctx.es.url)
                .env("ELK_INDEX", index)
                .output()
                .map_err(|e| format!("cannot run {BIN}: {e}"))?;
            times.push(started.elapsed().as_secs_f64());
            if !o.status.success() {
                return Err(
                    format!("report failed: {}", String::from_utf8_lossy(&o.stderr)).into(),
                );
            }
        }
        let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        figures.add(
            key,
            format!("PDF of {n} links (report command, median of 3)"),
            "s",
            median(&times),
        );
        figures
            .detail
            .insert(format!("pdf_{n}_bytes"), json!(bytes));
    }
    Ok(())
}

async fn idle_memory(ctx: &Ctx, figures: &mut Figures) -> BenchResult<()> {
    let smoke = ctx.opts.smoke;
    let (n_ops, per_op) = if smoke { (2, 10) } else { (10, 50) };
    let mut medians = Vec::new();
    for enabled in [false, true] {
        let stub = CalderaStub::start().await;
        stub.put_operation(scenarios::op_a_finished());
        for i in 0..n_ops {
            let id = scenarios::new_uuid();
            stub.put_operation(scenarios::op_many_links(
                &id,
                &format!("bench-idle-{i}"),
                per_op,
            ));
        }
        let index = unique_index("report-idle");
        let reports = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let env = sidecar_env(
            &stub.url(),
            &ctx.es.url,
            &index,
            Auth::Session,
            &[
                ("SETTLE_GRACE", "0.5".into()),
                ("POLL_INTERVAL", "0.5".into()),
                ("POLL_IDLE_INTERVAL", "1".into()),
                ("REPORTS_ENABLED", enabled.to_string()),
                ("REPORT_DIR", reports.path().display().to_string()),
            ],
        );
        let res = async {
            let mut sidecar = Sidecar::spawn(&env)?;
            sidecar.wait_ready(Duration::from_secs(20)).await?;
            let want = (n_ops + 1) as u64;
            sidecar
                .wait_stat("operations_settled", want, Duration::from_secs(120))
                .await?;
            if enabled {
                let start = Instant::now();
                loop {
                    let pdfs = std::fs::read_dir(reports.path())
                        .map(|d| {
                            d.filter(|e| {
                                e.as_ref()
                                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pdf"))
                            })
                            .count()
                        })
                        .unwrap_or(0);
                    if pdfs as u64 >= want {
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(180) {
                        return Err(format!(
                            "{pdfs} of {want} reports written; log:\n{}",
                            sidecar.log_tail(20)
                        )
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(if smoke { 1 } else { 5 })).await;
            let mut samples = Vec::new();
            let sampling = Instant::now();
            while sampling.elapsed() < Duration::from_secs(if smoke { 1 } else { 5 }) {
                samples.push(sidecar.memory()?.0 as f64 / 1024.0);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            sidecar.stop().await?;
            Ok::<f64, crate::common::BenchError>(median(&samples))
        }
        .await;
        ctx.es.cleanup(&index).await;
        medians.push(res?);
    }
    figures.add(
        "idle_rss_off_mb",
        "idle RSS, REPORTS_ENABLED=false",
        "MB",
        medians[0],
    );
    figures.add(
        "idle_rss_on_mb",
        "idle RSS, REPORTS_ENABLED=true, reports written",
        "MB",
        medians[1],
    );
    figures.add(
        "idle_rss_change_mb",
        "idle RSS change from reports (|on - off|)",
        "MB",
        (medians[1] - medians[0]).abs(),
    );
    figures.note(format!(
        "idle RSS with reports minus without: {:+.2} MB",
        medians[1] - medians[0]
    ));
    Ok(())
}
