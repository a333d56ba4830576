//! Scenario `latency`: from a change in Caldera to the document being searchable.
//!
//! A dozen operations run in the Caldera stub (op A's recorded links, fresh ids). At scheduled
//! times (gaps uniform in 0.1–0.7 s, independent of the poll phase) one of them changes the way
//! a real Caldera does: a new link appears with the agent (`in_flight`), an in-flight link gets
//! its result (`success`), or the operation is paused / resumed. Each operation has at most one
//! change not yet searchable, so every change is seen by the sidecar (none is superseded before
//! a poll) and every change has exactly one document state that proves it arrived.
//!
//! A probe runs an `ids` `_search` every 25 ms, never forcing a refresh, and records when each
//! change became *searchable* (after the index's periodic 1 s refresh). With the document's
//! `sidecar.sequence` (the sidecar's observation time, microseconds since the epoch, same
//! machine clock) each latency splits into change → observed (poll wait + fetch + build) and
//! observed → searchable (bulk flush wait + bulk request + refresh wait); the sidecar's own
//! `observed_to_indexed_seconds` histogram (`/metrics`) gives the mean of observed → indexed,
//! the rest is the refresh wait. (A realtime `_mget` probe would tell the indexing moment per
//! document, but it changes when Elasticsearch refreshes and so the very figure measured.)
//!
//! The sidecar polls every POLL_INTERVAL plus the poll's own duration and Elasticsearch refreshes
//! every second, so within one run the refresh wait has a slowly drifting phase: figures differ
//! between runs by up to a second at the tail; use `--runs 3` or more.
//!
//! Runs at POLL_INTERVAL=1 and at the default 2 s, everything else at production defaults
//! (session login, BULK_FLUSH_MS=200).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    Auth, BenchResult, Ctx, Figures, Rng, Sidecar, Target, histogram_sum_count, now_micros,
    percentile, sidecar_env, unique_index, wait_until,
};
use crate::support::caldera_stub::CalderaStub;
use crate::support::scenarios;

const PROBE_EVERY: Duration = Duration::from_millis(25);
/// The sidecar's histogram of observation → acknowledged by the index.
const HIST: &str = "caldera_sidecar_observed_to_indexed_seconds";

pub fn targets() -> Vec<Target> {
    vec![Target::at_most(
        "poll1_p99_ms",
        2500.0,
        "Caldera state change -> document searchable, p99, 1 s polling",
    )]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NewLink,
    Result,
    State,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::NewLink => "new link",
            Kind::Result => "link result",
            Kind::State => "op state",
        }
    }
}

struct LiveOp {
    id: String,
    base: Value,
    /// Finished links with fresh ids, in the order they will appear.
    pool: Vec<Value>,
    done: usize,
    in_flight: bool,
    paused: bool,
    /// A change of this operation is not searchable yet.
    busy: bool,
}

impl LiveOp {
    fn new(name: &str, pool_len: usize, initial: usize) -> Self {
        let id = scenarios::new_uuid();
        let mut base = scenarios::op_many_links(&id, name, pool_len);
        let pool = match base["chain"].take() {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        base["state"] = json!("running");
        Self {
            id,
            base,
            pool,
            done: initial,
            in_flight: false,
            paused: false,
            busy: false,
        }
    }

    /// The operation as Caldera would serve it now.
    fn render(&self) -> Value {
        let mut op = self.base.clone();
        let mut chain: Vec<Value> = self.pool[..self.done].to_vec();
        if self.in_flight {
            chain.push(scenarios::link_in_flight(&self.pool[self.done]));
        }
        op["chain"] = Value::Array(chain);
        op["state"] = json!(if self.paused { "paused" } else { "running" });
        op
    }

    fn link_doc(&self, i: usize) -> String {
        format!("link-{}", self.pool[i]["id"].as_str().unwrap_or_default())
    }

    /// Applies the next change; returns (kind, document id, status that proves it).
    fn change(&mut self, rng: &mut Rng) -> (Kind, String, &'static str) {
        if self.paused {
            self.paused = false;
            (Kind::State, format!("op-{}", self.id), "running")
        } else if self.in_flight {
            self.in_flight = false;
            self.done += 1;
            (Kind::Result, self.link_doc(self.done - 1), "success")
        } else if rng.unit() < 0.1 || self.done + 1 >= self.pool.len() {
            self.paused = true;
            (Kind::State, format!("op-{}", self.id), "paused")
        } else {
            self.in_flight = true;
            (Kind::NewLink, self.link_doc(self.done), "in_flight")
        }
    }
}

struct Event {
    kind: Kind,
    op: usize,
    doc: String,
    want: &'static str,
    change_us: u64,
    observed_us: Option<u64>,
    searchable_us: Option<u64>,
}

#[derive(Default)]
struct State {
    ops: Vec<LiveOp>,
    events: Vec<Event>,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let polls: Vec<f64> = match ctx.opts.poll {
        Some(p) => vec![p],
        None if ctx.opts.smoke => vec![1.0],
        None => vec![1.0, 2.0],
    };
    let events = ctx.opts.size_or(200, 4);
    let mut f = Figures::default();
    for poll in polls {
        run_poll(ctx, poll, events, &mut f).await?;
    }
    f.note(
        "latency = Caldera change -> first _search (no forced refresh) that returns the new \
         state, probe every 25 ms; observed = the document's sidecar.sequence; observed -> \
         searchable = bulk flush wait + bulk request + refresh wait",
    );
    Ok(f)
}

async fn run_poll(ctx: &Ctx, poll: f64, n_events: usize, f: &mut Figures) -> BenchResult<()> {
    let index = unique_index("latency");
    let res = measure(ctx, poll, n_events, &index, f).await;
    ctx.es.cleanup(&index).await;
    res
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

async fn measure(
    ctx: &Ctx,
    poll: f64,
    n_events: usize,
    index: &str,
    f: &mut Figures,
) -> BenchResult<()> {
    let n_ops = if ctx.opts.smoke { 4 } else { 12 };
    let initial = 3;
    let pool_len = n_events + initial + 2;
    let stub = Arc::new(CalderaStub::start().await);
    let state = Arc::new(Mutex::new(State::default()));
    {
        let ops: Vec<LiveOp> = (0..n_ops)
            .map(|i| LiveOp::new(&format!("bench-latency-{i}"), pool_len, initial))
            .collect();
        for op in &ops {
            stub.put_operation(op.render());
        }
        lock(&state).ops = ops;
    }
    let env = sidecar_env(
        &stub.url(),
        &ctx.es.url,
        index,
        Auth::Session,
        &[("POLL_INTERVAL", poll.to_string())],
    );
    let mut sidecar = Sidecar::spawn(&env)?;
    sidecar.wait_ready(Duration::from_secs(20)).await?;
    // Warm-up: every operation and its first links indexed and searchable.
    let warm = (n_ops * (initial + 1)) as u64;
    sidecar
        .wait_stat("documents_indexed", warm, Duration::from_secs(60))
        .await?;
    let es = ctx.es.clone();
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "warm-up documents searchable",
        || async {
            let v = es
                .search(index, &json!({"size": 0, "track_total_hits": true}))
                .await?;
            Ok((v["hits"]["total"]["value"].as_u64().unwrap_or(0) >= warm).then_some(()))
        },
    )
    .await?;
    let (cpu0, cpu_t0) = (sidecar.cpu()?, Instant::now());
    let docs0 = sidecar.stat("documents_indexed").await?;
    let hist0 = histogram_sum_count(&sidecar.metrics().await?, HIST);

    // The probe: `_search` of every open change.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let state = state.clone();
        let es = ctx.es.clone();
        let index = index.to_string();
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                let finished = done.load(std::sync::atomic::Ordering::Relaxed);
                let need: Vec<String> = lock(&state)
                    .events
                    .iter()
                    .filter(|e| e.searchable_us.is_none())
                    .map(|e| e.doc.clone())
                    .collect();
                if finished && need.is_empty() {
                    return Ok::<(), String>(());
                }
                if !need.is_empty() {
                    let t0 = now_micros();
                    let body = json!({
                        "size": need.len(),
                        "_source": ["status", "sidecar.sequence"],
                        "query": {"ids": {"values": need}},
                    });
                    let v = es
                        .search(&index, &body)
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    let t = (t0 + now_micros()) / 2;
                    let hits = v["hits"]["hits"].as_array().cloned().unwrap_or_default();
                    mark(&state, &hits, t);
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        })
    };

    // The changes, on a fixed schedule (deterministic seed), one open change per operation.
    let mut rng = Rng::new(0x5eed_1a7e);
    let started = Instant::now();
    let mut at = Duration::ZERO;
    for _ in 0..n_events {
        at += Duration::from_secs_f64(0.1 + 0.6 * rng.unit());
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + at)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let mut s = lock(&state);
                let free: Vec<usize> = (0..s.ops.len()).filter(|i| !s.ops[*i].busy).collect();
                if !free.is_empty() {
                    let i = free[rng.below(free.len())];
                    let op = &mut s.ops[i];
                    let (kind, doc, want) = op.change(&mut rng);
                    op.busy = true;
                    stub.put_operation(op.render());
                    let change_us = now_micros();
                    s.events.push(Event {
                        kind,
                        op: i,
                        doc,
                        want,
                        change_us,
                        observed_us: None,
                        searchable_us: None,
                    });
                    break;
                }
            }
            if Instant::now() > deadline || probe.is_finished() {
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                return match probe.await {
                    Ok(Err(e)) => Err(format!("probe failed: {e}").into()),
                    _ => Err("no operation became free for 60 s: changes are not arriving".into()),
                };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let gen_secs = started.elapsed().as_secs_f64();
    // Every change searchable, or give up after 30 s.
    let wait_start = Instant::now();
    loop {
        let open = lock(&state)
            .events
            .iter()
            .filter(|e| e.searchable_us.is_none())
            .count();
        if open == 0 || probe.is_finished() {
            break;
        }
        if wait_start.elapsed() > Duration::from_secs(30) {
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            probe.abort();
            return Err(format!(
                "{open} of {n_events} changes never became searchable (POLL_INTERVAL={poll}); log:\n{}",
                sidecar.log_tail(20)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    match probe.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("probe failed: {e}").into()),
        Err(e) => return Err(format!("probe panicked: {e}").into()),
    }
    let cpu = sidecar.cpu()?.saturating_sub(cpu0);
    let cpu_secs = cpu_t0.elapsed().as_secs_f64();
    let docs = sidecar
        .stat("documents_indexed")
        .await?
        .saturating_sub(docs0);
    let hist1 = histogram_sum_count(&sidecar.metrics().await?, HIST);
    let index_mean_ms = if hist1.1 > hist0.1 {
        (hist1.0 - hist0.0) / (hist1.1 - hist0.1) * 1000.0
    } else {
        f64::NAN
    };
    sidecar.stop().await?;

    let s = lock(&state);
    let mut total = Vec::new();
    let mut observe = Vec::new();
    let mut deliver = Vec::new();
    let mut by_kind: Vec<(Kind, Vec<f64>)> = vec![
        (Kind::NewLink, Vec::new()),
        (Kind::Result, Vec::new()),
        (Kind::State, Vec::new()),
    ];
    for e in &s.events {
        let (Some(obs), Some(srch)) = (e.observed_us, e.searchable_us) else {
            continue;
        };
        let t = ms(srch.saturating_sub(e.change_us) as f64);
        total.push(t);
        observe.push(ms(obs as f64 - e.change_us as f64));
        deliver.push(ms(srch as f64 - obs as f64));
        if let Some((_, v)) = by_kind.iter_mut().find(|(k, _)| *k == e.kind) {
            v.push(t);
        }
    }
    if total.len() != n_events {
        return Err(format!("{} of {n_events} changes fully measured", total.len()).into());
    }
    let p = format!("poll{poll}");
    let tag = format!("POLL_INTERVAL={poll}s");
    f.add(
        format!("{p}_events"),
        format!("{tag}: changes measured"),
        "n",
        total.len() as f64,
    );
    f.add(
        format!("{p}_rate"),
        format!("{tag}: changes per second"),
        "1/s",
        n_events as f64 / gen_secs,
    );
    for (q, name) in [(50.0, "p50"), (95.0, "p95"), (99.0, "p99"), (100.0, "max")] {
        f.add(
            format!("{p}_{name}_ms"),
            format!("{tag}: change -> searchable {name}"),
            "ms",
            percentile(&total, q),
        );
    }
    for (v, name, what) in [
        (&observe, "observe", "change -> observed"),
        (&deliver, "deliver", "observed -> searchable"),
    ] {
        for (q, qn) in [(50.0, "p50"), (99.0, "p99")] {
            f.add(
                format!("{p}_{name}_{qn}_ms"),
                format!("{tag}:   {what} {qn}"),
                "ms",
                percentile(v, q).max(0.0),
            );
        }
    }
    let deliver_mean = deliver.iter().sum::<f64>() / deliver.len().max(1) as f64;
    if index_mean_ms.is_finite() {
        f.add(
            format!("{p}_index_mean_ms"),
            format!("{tag}:   observed -> indexed mean (sidecar /metrics)"),
            "ms",
            index_mean_ms,
        );
        f.add(
            format!("{p}_refresh_mean_ms"),
            format!("{tag}:   refresh wait mean (the rest)"),
            "ms",
            (deliver_mean - index_mean_ms).max(0.0),
        );
    }
    for (k, v) in &by_kind {
        if !v.is_empty() {
            f.add(
                format!("{p}_{}_p99_ms", k.name().replace(' ', "_")),
                format!("{tag}:   {} p99 (n={})", k.name(), v.len()),
                "ms",
                percentile(v, 99.0),
            );
        }
    }
    f.add(
        format!("{p}_docs_indexed"),
        format!("{tag}: documents indexed (links and operations)"),
        "docs",
        docs as f64,
    );
    f.add(
        format!("{p}_cpu_ms_per_s"),
        format!("{tag}: sidecar CPU per second (live ops)"),
        "ms/s",
        cpu.as_secs_f64() * 1000.0 / cpu_secs,
    );
    f.add(
        format!("{p}_cpu_ms_per_doc"),
        format!("{tag}: sidecar CPU per indexed document (live ops)"),
        "ms",
        cpu.as_secs_f64() * 1000.0 / docs.max(1) as f64,
    );
    f.detail.insert(
        format!("{p}_latencies_ms"),
        json!(total.iter().map(|v| v.round()).collect::<Vec<_>>()),
    );
    Ok(())
}

/// Records, for each open change, the first probe answer that shows its document state.
fn mark(state: &Mutex<State>, docs: &[Value], t: u64) {
    let mut s = lock(state);
    let State { ops, events } = &mut *s;
    for d in docs {
        let Some(id) = d["_id"].as_str() else {
            continue;
        };
        let status = d["_source"]["status"].as_str();
        let seq = d["_source"]["sidecar"]["sequence"].as_u64();
        for e in events
            .iter_mut()
            .filter(|e| e.doc == id && e.searchable_us.is_none())
        {
            if status != Some(e.want) {
                continue;
            }
            e.observed_us = seq;
            e.searchable_us = Some(t);
            if let Some(op) = ops.get_mut(e.op) {
                op.busy = false;
            }
        }
    }
}
