//! Scenario `correlation`: the alert-correlation stage of the real daemon (child process).
//!
//! Part 1, *quality*: the labelled corpus of `tests/support/alerts.rs` (alerts in the shapes of
//! Elastic Defend Linux/Windows, Sysmon and auditd generated from the recorded Caldera links,
//! with the hard cases) in an alert index, the three operations in the Caldera stub; once every
//! link is correlated, the correlation records are scored against the labels: precision and
//! recall per tier and per telemetry shape.
//!
//! Part 2, *scale*: 1,000 link documents (10 settled operations, 20 hosts, one link every 7 s
//! over about two hours, two days ago) already in the index, and an alert index of 1,000,000
//! alerts: two caused by each link (a child of its shell, its grandchild through the ancestry)
//! and the rest background on 200 hosts over ten days around them. The daemon starts and the
//! time until every link document says `detection.complete` is measured from the spawn (so it
//! includes start-up), with its RSS sampled every 100 ms meanwhile. `--size` sets the links
//! (alerts = 1,000 × links).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    Auth, BenchResult, Ctx, Figures, Rng, Sidecar, Target, http_client, sidecar_env, unique_index,
    wait_until,
};
use crate::support::alerts::{self, Shape};
use crate::support::caldera_stub::CalderaStub;

pub fn targets() -> Vec<Target> {
    vec![
        Target::at_least("t1_precision", 1.0, "tier 1 precision 1.0 (corpus)"),
        Target::at_least(
            "t1_recall_lineage",
            0.95,
            "tier 1 recall >= 0.95 of the alerts that carry lineage (corpus)",
        ),
        Target::at_least("t12_recall", 0.98, "tiers 1+2 recall >= 0.98 (corpus)"),
        Target::at_most(
            "scale_seconds",
            10.0,
            "1,000 links against 1,000,000 alerts correlated",
        ),
        Target::at_most(
            "scale_rss_peak_mb",
            30.0,
            "daemon RSS while correlating within 20 MB + 10 MB",
        ),
    ]
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let mut f = Figures::default();
    let names = [
        unique_index("corr-q"),
        unique_index("corr-q-alerts"),
        unique_index("corr-q-records"),
        unique_index("corr-s"),
        unique_index("corr-s-alerts"),
        unique_index("corr-s-records"),
    ];
    let res = async {
        quality(ctx, &names[0], &names[1], &names[2], &mut f).await?;
        scale(ctx, &names[3], &names[4], &names[5], &mut f).await
    }
    .await;
    for n in &names {
        ctx.es.cleanup(n).await;
    }
    res.map(|_| f)
}

fn env(
    stub: &CalderaStub,
    ctx: &Ctx,
    index: &str,
    alerts: &str,
    records: &str,
) -> Vec<(String, String)> {
    sidecar_env(
        &stub.url(),
        &ctx.es.url,
        index,
        Auth::Session,
        &[
            ("ALERT_INDEX", alerts.to_string()),
            ("CORRELATION_INDEX", records.to_string()),
            ("CORRELATION_INTERVAL", "1".to_string()),
            ("SETTLE_GRACE", "1".to_string()),
        ],
    )
}

async fn complete_links(ctx: &Ctx, index: &str) -> BenchResult<u64> {
    // The sidecar creates the index with its first document: none yet is zero.
    let exists = http_client()
        .head(format!("{}/{index}", ctx.es.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !exists {
        return Ok(0);
    }
    ctx.es
        .count_refreshed(
            index,
            json!({"bool": {"filter": [{"term": {"event.dataset": "caldera.link"}},
                                       {"term": {"detection.complete": true}}]}}),
        )
        .await
}

async fn records(ctx: &Ctx, index: &str) -> BenchResult<Vec<Value>> {
    ctx.es.refresh(index).await?;
    let v = ctx
        .es
        .search(index, &json!({"size": 10000, "query": {"match_all": {}}}))
        .await?;
    Ok(v["hits"]["hits"]
        .as_array()
        .map(|h| h.iter().map(|x| x["_source"].clone()).collect())
        .unwrap_or_default())
}

async fn quality(
    ctx: &Ctx,
    index: &str,
    alert_index: &str,
    rec_index: &str,
    f: &mut Figures,
) -> BenchResult<()> {
    let stub = CalderaStub::start().await;
    let corpus = alerts::corpus();
    for op in &corpus.operations {
        stub.put_operation(op.clone());
    }
    alerts::index_alerts(&ctx.es.url, alert_index, &corpus.alerts).await;
    let links: usize = corpus
        .operations
        .iter()
        .map(|o| o["chain"].as_array().map_or(0, Vec::len))
        .sum();
    let mut sidecar = Sidecar::spawn(&env(&stub, ctx, index, alert_index, rec_index))?;
    sidecar.wait_ready(Duration::from_secs(30)).await?;
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(300),
        "corpus correlated",
        || async { Ok((complete_links(ctx, index).await? as usize == links).then_some(())) },
    )
    .await?;
    sidecar.stop().await?;
    let recs = records(ctx, rec_index).await?;
    let a = &corpus.alerts;
    let t1 = alerts::score(a, &recs, &[1], None, true);
    let t2 = alerts::score(a, &recs, &[2], None, false);
    let t12 = alerts::score(a, &recs, &[1, 2], None, false);
    f.add(
        "corpus_alerts",
        "corpus alerts (incl. 3 malformed)",
        "n",
        a.len() as f64,
    );
    f.add("t1_precision", "tier 1 precision", "", t1.precision());
    f.add(
        "t1_recall_lineage",
        "tier 1 recall (alerts with lineage)",
        "",
        t1.recall(),
    );
    f.add("t2_precision", "tier 2 precision", "", t2.precision());
    f.add("t12_precision", "tiers 1+2 precision", "", t12.precision());
    f.add(
        "t12_recall",
        "tiers 1+2 recall (all simulation alerts)",
        "",
        t12.recall(),
    );
    let mut per_shape = serde_json::Map::new();
    for shape in Shape::ALL {
        let s1 = alerts::score(a, &recs, &[1], Some(shape), true);
        let s2 = alerts::score(a, &recs, &[2], Some(shape), false);
        let s12 = alerts::score(a, &recs, &[1, 2], Some(shape), false);
        per_shape.insert(
            shape.name().into(),
            json!({"t1_precision": s1.precision(), "t1_recall_lineage": s1.recall(),
                   "t1_matched": s1.matched, "t1_relevant": s1.relevant,
                   "t2_precision": s2.precision(), "t2_matched": s2.matched,
                   "t12_precision": s12.precision(), "t12_recall": s12.recall(),
                   "t12_relevant": s12.relevant}),
        );
        f.note(format!(
            "{:<24} tier 1 P {:.3} R {:.3} ({}/{}); tier 2 P {:.3} ({} matched); tiers 1+2 P {:.3} R {:.3} ({}/{})",
            shape.name(), s1.precision(), s1.recall(), s1.found, s1.relevant,
            s2.precision(), s2.matched, s12.precision(), s12.recall(), s12.found, s12.relevant
        ));
    }
    f.detail
        .insert("per_shape".into(), Value::Object(per_shape));
    Ok(())
}

fn iso(ms: i64) -> String {
    caldera_sidecar::correlate::time::format_millis(ms)
}

fn uuid(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

async fn bulk(url: &str, lines: &[Value]) -> BenchResult<()> {
    let mut body = String::with_capacity(lines.len() * 300);
    for l in lines {
        body.push_str(&l.to_string());
        body.push('\n');
    }
    let r = http_client()
        .post(format!("{url}/_bulk"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("bulk: {e}"))?;
    let v: Value = r.json().await.map_err(|e| format!("bulk answer: {e}"))?;
    if v["errors"] != false {
        return Err(format!(
            "bulk had errors: {}",
            v.to_string().chars().take(500).collect::<String>()
        )
        .into());
    }
    Ok(())
}

async fn scale(
    ctx: &Ctx,
    index: &str,
    alert_index: &str,
    rec_index: &str,
    f: &mut Figures,
) -> BenchResult<()> {
    let n_links = ctx.opts.size_or(1_000, 20);
    let n_alerts = n_links * 1_000;
    let mut rng = Rng::new(9);
    let now = caldera_sidecar::correlate::time::now_millis();
    let t0 = now - 2 * 86_400_000;
    let es = caldera_sidecar::sink::elastic::build_client(
        &caldera_sidecar::config::Layered::load(
            &caldera_sidecar::config::LoadOptions {
                config_file: Some("/dev/null".into()),
                env_file: Some("/dev/null".into()),
            },
            [("ELK_URL".to_string(), ctx.es.url.clone())],
        )
        .and_then(|l| l.settings())
        .map_err(|e| format!("settings: {e}"))?
        .elastic,
    )
    .map_err(|e| format!("client: {e}"))?;
    caldera_sidecar::sink::elastic::install_template(&es, index)
        .await
        .map_err(|e| format!("template: {}", e.message()))?;

    // Link and operation documents, as the sidecar indexed them earlier.
    let ops: Vec<String> = (0..10).map(|_| uuid(&mut rng)).collect();
    let mut lines = Vec::new();
    let mut links = Vec::new();
    for i in 0..n_links {
        let id = uuid(&mut rng);
        let host = format!("sim-host-{:02}", i % 20);
        let start = t0 + i as i64 * 7_000;
        let pid = 10_000 + i as i64 * 13;
        let op = &ops[i % ops.len()];
        let ts = iso(start - start % 1000);
        let end = iso(start - start % 1000 + 1000);
        lines.push(json!({"index": {"_index": index, "_id": format!("link-{id}")}}));
        lines.push(
            json!({"@timestamp": ts, "purple_team_exercise": true, "operation_id": op,
            "link_id": id, "technique_id": format!("T{}", 1000 + i % 50), "tactic": "discovery",
            "status": "success", "status_code": 0, "executor": "sh", "host": {"name": host},
            "process": {"pid": pid, "command_line": format!("whoami && id -u #{i}")},
            "collect": ts, "finish": end, "agent_reported_time": ts,
            "event": {"dataset": "caldera.link", "start": ts, "end": end},
            "sidecar": {"sequence": 1}}),
        );
        links.push((host, start, pid));
    }
    for op in &ops {
        lines.push(json!({"index": {"_index": index, "_id": format!("op-{op}")}}));
        lines.push(
            json!({"operation_id": op, "settled": true, "status": "finished",
            "event": {"dataset": "caldera.operation"}, "sidecar": {"sequence": 1}}),
        );
    }
    bulk(&ctx.es.url, &lines).await?;

    // The alert index: simulation alerts plus background.
    let r = http_client()
        .put(format!("{}/{alert_index}", ctx.es.url))
        .json(&{
            let mut b = alerts::alert_index_body();
            b["settings"]["refresh_interval"] = json!("-1");
            b
        })
        .send()
        .await
        .map_err(|e| format!("create alert index: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("create alert index: HTTP {}", r.status()).into());
    }
    let load_started = Instant::now();
    let alert = |uuid: String,
                 host: &str,
                 t: i64,
                 pid: i64,
                 ppid: i64,
                 anc: Vec<String>,
                 cmd: &str| {
        json!({"@timestamp": iso(t + 120_000), "kibana.alert.original_time": iso(t),
            "kibana.alert.uuid": uuid, "kibana.alert.rule.name": "Bench Rule",
            "kibana.alert.rule.uuid": "bench-rule", "kibana.alert.workflow_status": "open",
            "kibana.alert.workflow_tags": [],
            "host": {"name": host, "hostname": host},
            "process": {"pid": pid, "entity_id": format!("e{pid}"), "command_line": cmd,
                "parent": {"pid": ppid, "entity_id": format!("e{ppid}")}, "Ext": {"ancestry": anc}}})
    };
    let mut batch = Vec::with_capacity(10_000);
    let mut written = 0usize;
    let mut seq = 0u64;
    for (host, start, pid) in &links {
        for (k, (p, pp, anc)) in [
            (pid + 1, *pid, vec![format!("e{pid}")]),
            (
                pid + 2,
                pid + 1,
                vec![format!("e{}", pid + 1), format!("e{pid}")],
            ),
        ]
        .into_iter()
        .enumerate()
        {
            seq += 1;
            let id = format!("sim-{seq}");
            batch.push(json!({"index": {"_index": alert_index, "_id": id}}));
            batch.push(alert(
                id,
                host,
                start + 200 + k as i64 * 100,
                p,
                pp,
                anc,
                "id -u",
            ));
        }
        written += 2;
    }
    let span = 10 * 86_400_000i64;
    while written < n_alerts {
        seq += 1;
        let id = format!("bg-{seq}");
        let host = format!("bg-host-{:03}", rng.below(200));
        let host = if rng.below(10) == 0 {
            format!("sim-host-{:02}", rng.below(20))
        } else {
            host
        };
        let t = t0 - span / 2 + (rng.unit() * span as f64) as i64;
        let pid = 2 + rng.below(4_000_000) as i64;
        batch.push(json!({"index": {"_index": alert_index, "_id": id}}));
        batch.push(alert(
            id,
            &host,
            t,
            pid,
            pid - 1,
            vec![],
            "/usr/bin/python3 /opt/app/worker.py",
        ));
        written += 1;
        if batch.len() >= 10_000 {
            let b = std::mem::take(&mut batch);
            bulk(&ctx.es.url, &b).await?;
        }
    }
    if !batch.is_empty() {
        let b = std::mem::take(&mut batch);
        bulk(&ctx.es.url, &b).await?;
    }
    ctx.es.refresh(alert_index).await?;
    let load_secs = load_started.elapsed().as_secs_f64();

    // The daemon: from spawn until every link is complete.
    let stub = CalderaStub::start().await;
    let started = Instant::now();
    let sidecar = Sidecar::spawn(&env(&stub, ctx, index, alert_index, rec_index))?;
    let pid = sidecar.pid;
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kb) = s
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|n| n.parse::<u64>().ok())
                {
                    samples.lock().unwrap().push(kb);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let done = wait_until(
        Duration::from_secs(300),
        Duration::from_millis(100),
        "links correlated",
        || async { Ok((complete_links(ctx, index).await? as usize == n_links).then_some(())) },
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;
    let hwm = sidecar.memory().map(|(_, h)| h).unwrap_or(0);
    let log = sidecar.log_tail(5);
    sidecar.stop().await?;
    done.map_err(|e| format!("{e:?}\nlog: {log}"))?;
    let matched = ctx
        .es
        .count_refreshed(rec_index, json!({"term": {"match.tier": 1}}))
        .await?;
    if matched != 2 * n_links as u64 {
        return Err(format!(
            "{matched} tier-1 records for {} simulation alerts",
            2 * n_links
        )
        .into());
    }
    let samples = samples.lock().unwrap().clone();
    let peak = samples.iter().copied().max().unwrap_or(0);
    f.add("scale_links", "links correlated", "n", n_links as f64);
    f.add(
        "scale_alerts",
        "alerts in the alert index",
        "n",
        n_alerts as f64,
    );
    f.add(
        "scale_load_seconds",
        "loading the alert index (not part of the figure)",
        "s",
        load_secs,
    );
    f.add(
        "scale_seconds",
        "daemon spawn -> every link complete",
        "s",
        secs,
    );
    f.add(
        "scale_rss_peak_mb",
        "daemon RSS, highest 100 ms sample while correlating",
        "MB",
        peak as f64 / 1024.0,
    );
    f.add(
        "scale_vmhwm_mb",
        "daemon VmHWM (peak incl. start-up)",
        "MB",
        hwm as f64 / 1024.0,
    );
    f.add(
        "scale_tier1_records",
        "tier-1 records (2 per link expected)",
        "n",
        matched as f64,
    );
    Ok(())
}
