//! The pipeline benchmark: measures the running sidecar against the targets of DESIGN.md
//! ("Targets") and prints each figure beside its target. Figures and how they were obtained are
//! in BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench pipeline -- <scenario>... [--runs N] [--size N] [--seconds S] [--rate R] [--poll S]
//! scenarios: latency cpu memory throughput health replay caldera-load correlation report intake all
//! ```
//!
//! Why a custom program and not criterion: most figures are properties of the whole daemon
//! (seconds from a Caldera change to a searchable document, resident memory after a million
//! documents, requests Caldera receives per minute) and need the real binary, the Caldera stub
//! and a real Elasticsearch, not a closure timed in a loop. The pure document work has its own
//! criterion benchmark (`benches/documents.rs`).
//!
//! The sidecar runs as a child process (`CARGO_BIN_EXE_caldera-sidecar`, the release build
//! under `cargo bench`) with its production defaults, so its CPU (`/proc/<pid>/stat`) and memory
//! (`/proc/<pid>/status`) are its own; the Caldera stub (`tests/support`), the load generators
//! and the measuring probes live in this process. Elasticsearch is `SEARCH_URL`, or one started
//! with `scripts/search-server.sh start` (and stopped at the end). Every run uses its own index,
//! deleted afterwards with its template.
//!
//! Under `cargo test` (no `--bench` argument) every scenario runs once at tiny sizes and only
//! checks that it produced sane figures (machines are too noisy for timing assertions); the
//! process exits non-zero when one fails.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "pipeline/caldera_load.rs"]
mod caldera_load;
#[path = "pipeline/common.rs"]
mod common;
#[path = "pipeline/correlation.rs"]
mod correlation;
#[path = "pipeline/cpu.rs"]
mod cpu;
#[path = "pipeline/docs.rs"]
mod docs;
#[path = "pipeline/health.rs"]
mod health;
#[path = "pipeline/intake.rs"]
mod intake;
#[path = "pipeline/latency.rs"]
mod latency;
#[path = "pipeline/memory.rs"]
mod memory;
#[path = "pipeline/replay.rs"]
mod replay;
#[path = "pipeline/report.rs"]
mod report;
#[path = "pipeline/throughput.rs"]
mod throughput;

use std::process::ExitCode;
use std::time::Instant;

use common::{BenchError, Ctx, Es, Figures, Opts, SearchServer, Target};

const SCENARIOS: &[&str] = &[
    "latency",
    "cpu",
    "memory",
    "throughput",
    "health",
    "replay",
    "caldera-load",
    "correlation",
    "report",
    "intake",
];

fn usage() -> String {
    format!(
        "usage: cargo bench --bench pipeline -- <scenario>... [options]\n\
         scenarios: {} all\n\
         options:\n  \
           --runs N      repeat each scenario N times and report medians (default 1)\n  \
           --size N      main size: latency events, cpu links, memory stream documents,\n                \
                         throughput/replay documents, health requests/s (default: see BENCHMARKS.md)\n  \
           --seconds S   phase length: health load, caldera-load idle/active phases\n  \
           --rate R      health: requests per second (default 200)\n  \
           --poll S      latency: only this POLL_INTERVAL (default: 1 and 2)\n  \
           --env K=V     extra environment for every sidecar child (experiments), repeatable",
        SCENARIOS.join(" ")
    )
}

fn parse_args(args: &[String]) -> Result<(Vec<String>, Opts), String> {
    let mut scenarios = Vec::new();
    let mut opts = Opts {
        runs: 1,
        ..Opts::default()
    };
    let mut env = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String, String> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let num = |name: &str, v: String| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{name}: {v:?} is not a positive number"))
        };
        match a.as_str() {
            "--bench" => {}
            "--runs" => opts.runs = num("--runs", value("--runs")?)? as usize,
            "--size" => opts.size = Some(num("--size", value("--size")?)? as usize),
            "--seconds" => opts.seconds = Some(num("--seconds", value("--seconds")?)?),
            "--rate" => opts.rate = Some(num("--rate", value("--rate")?)?),
            "--poll" => opts.poll = Some(num("--poll", value("--poll")?)?),
            "--env" => {
                let kv = value("--env")?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--env wants KEY=VALUE, not {kv:?}"))?;
                env.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => return Err(usage()),
            "all" => scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            s if SCENARIOS.contains(&s) => scenarios.push(s.to_string()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{}", usage())),
            // `cargo bench <filter>` passes its filter to every bench target.
            s => eprintln!("pipeline: no scenario named {s:?}; ignored"),
        }
    }
    opts.runs = opts.runs.max(1);
    let _ = common::EXTRA_ENV.set(env);
    Ok((scenarios, opts))
}

async fn run_once(name: &str, ctx: &Ctx) -> Result<Figures, BenchError> {
    match name {
        "latency" => latency::run(ctx).await,
        "cpu" => cpu::run(ctx).await,
        "memory" => memory::run(ctx).await,
        "throughput" => throughput::run(ctx).await,
        "health" => health::run(ctx).await,
        "replay" => replay::run(ctx).await,
        "caldera-load" => caldera_load::run(ctx).await,
        "correlation" => correlation::run(ctx).await,
        "report" => report::run(ctx).await,
        "intake" => intake::run(ctx).await,
        other => Err(BenchError::Failed(format!("unknown scenario {other}"))),
    }
}

fn targets(name: &str, ctx: &Ctx) -> Vec<Target> {
    match name {
        "latency" => latency::targets(),
        "cpu" => cpu::targets(),
        "memory" => memory::targets(),
        "throughput" => throughput::targets(),
        "health" => health::targets(&ctx.opts),
        "replay" => replay::targets(),
        "caldera-load" => caldera_load::targets(),
        "correlation" => correlation::targets(),
        "report" => report::targets(),
        "intake" => intake::targets(),
        _ => Vec::new(),
    }
}

/// Runs the scenarios; returns the names of those that failed.
async fn run_all(scenarios: &[String], opts: Opts, es_url: &str) -> Vec<String> {
    let ctx = Ctx {
        opts,
        es: Es::new(es_url),
    };
    if let Err(e) = ctx.es.check().await {
        eprintln!("pipeline: the search server at {es_url} is not usable: {e:?}");
        return scenarios.to_vec();
    }
    println!("MACHINE {}", common::machine());
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for name in scenarios {
        let started = Instant::now();
        let mut runs = Vec::new();
        let mut error = None;
        for i in 0..ctx.opts.runs {
            if ctx.opts.runs > 1 {
                eprintln!("pipeline: {name} run {}/{}", i + 1, ctx.opts.runs);
            }
            match run_once(name, &ctx).await {
                Ok(f) => match f.check_sane() {
                    Ok(()) => runs.push(f),
                    Err(e) => {
                        error = Some(BenchError::Failed(e));
                        break;
                    }
                },
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "load average after {name}: {}",
            common::machine()["loadavg"]
        );
        match error {
            None => {
                let met = common::report(name, &runs, &targets(name, &ctx), ctx.opts.smoke);
                let verdict = match (ctx.opts.smoke, met) {
                    (true, _) => "sane figures (smoke sizes: targets not judged)",
                    (false, true) => "all targets met",
                    (false, false) => "target(s) NOT met",
                };
                summary.push(format!("{name}: {verdict} ({secs:.1} s)"));
            }
            Some(BenchError::Skipped(why)) => {
                println!("\n== {name}: SKIPPED: {why} ==");
                println!(
                    "BENCH_RESULT {}",
                    serde_json::json!({"scenario": name, "skipped": why})
                );
                summary.push(format!("{name}: skipped ({why})"));
            }
            Some(BenchError::Failed(why)) => {
                println!("\n== {name}: FAILED: {why} ==");
                println!(
                    "BENCH_RESULT {}",
                    serde_json::json!({"scenario": name, "failed": why})
                );
                summary.push(format!("{name}: FAILED"));
                failed.push(name.clone());
            }
        }
    }
    println!("\n== summary ==");
    for s in summary {
        println!("{s}");
    }
    failed
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    if !bench_mode && args.iter().any(|a| a == "--list") {
        // A test runner listing tests (`--list`): this target is one smoke test.
        println!("pipeline_smoke: test");
        return ExitCode::SUCCESS;
    }
    let (scenarios, opts) = if bench_mode {
        match parse_args(&args) {
            Ok(v) => v,
            Err(msg) => {
                eprintln!("{msg}");
                return ExitCode::from(2);
            }
        }
    } else {
        // `cargo test`: harness flags such as --test-threads are ignored.
        println!(
            "pipeline: smoke test (no --bench argument): every scenario once at tiny sizes, \
             sanity checks only; run `cargo bench --bench pipeline -- all` for figures"
        );
        let opts = Opts {
            smoke: true,
            runs: 1,
            ..Opts::default()
        };
        (SCENARIOS.iter().map(|s| s.to_string()).collect(), opts)
    };
    if scenarios.is_empty() {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let server = match SearchServer::obtain() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pipeline: no search server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pipeline: cannot start the async runtime: {e}");
            server.stop_if_started();
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let failed = rt.block_on(run_all(&scenarios, opts, &server.url));
    drop(rt);
    server.stop_if_started();
    println!("pipeline: done in {:.1} s", started.elapsed().as_secs_f64());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("pipeline: failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
