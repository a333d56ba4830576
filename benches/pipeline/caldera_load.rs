//! Scenario `caldera-load`: what the sidecar costs Caldera, counted by the stub per route and
//! per authentication method, in session mode (`CALDERA_USER`/`CALDERA_PASSWORD`) and in
//! KEY-only mode (`CALDERA_API_KEY`), at production defaults (POLL_INTERVAL 2 s,
//! POLL_IDLE_INTERVAL 15 s, KEY_MIN_POLL_INTERVAL 5 s, SETTLE_GRACE 30 s).
//!
//! Caldera holds the eight recorded operations, all finished. Phases, per mode:
//! * *idle*: after every operation is settled, nothing changes for a minute;
//! * *active*: op A runs again as recorded (a link every 5 s: queued → with the agent → done);
//! * *closing*: op A finishes, until the sidecar has settled it.
//!
//! Each request's cost to Caldera's single event loop is the README's measurement on a real
//! Caldera 5.3.0: ~200 ms with `KEY` (argon2), ~1.3 ms with a session cookie; the stub also
//! charges the KEY cost on its own event loop, as Caldera does.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Auth, BenchResult, Ctx, Figures, Sidecar, Target, sidecar_env, unique_index};
use crate::support::caldera_stub::{AuthMethod, CalderaStub, RouteKind};
use crate::support::scenarios;

const KEY_MS: f64 = 200.0;
const SESSION_MS: f64 = 1.3;

const KINDS: &[(RouteKind, &str)] = &[
    (RouteKind::Enter, "POST /enter"),
    (RouteKind::Health, "GET health"),
    (RouteKind::OperationsList, "GET operations (listing)"),
    (RouteKind::Operation, "GET operations/{id}"),
    (RouteKind::Links, "GET operations/{id}/links"),
    (RouteKind::Link, "GET …/links/{id}"),
    (RouteKind::LinkResult, "GET …/links/{id}/result"),
    (RouteKind::Report, "POST …/report"),
    (RouteKind::EventLogs, "POST …/event-logs"),
    (RouteKind::Agents, "GET agents"),
    (RouteKind::Config, "GET config/agents"),
    (RouteKind::DeployCommands, "GET deploy_commands"),
    (RouteKind::Other, "other"),
];

pub fn targets() -> Vec<Target> {
    vec![
        Target::at_most(
            "session_idle_per_min",
            20.0,
            "idle: <= 1 cheap request per several (3) seconds",
        ),
        Target::at_most(
            "session_idle_key_per_min",
            0.0,
            "idle, session mode: no KEY request",
        ),
        Target::at_most(
            "key_idle_key_per_min",
            20.0,
            "idle, KEY-only mode: KEY requests at most one per 3 s",
        ),
        Target::at_most(
            "key_max_key_per_min",
            59.0,
            "KEY-only mode, any phase: no KEY-per-second polling",
        ),
    ]
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let mut f = Figures::default();
    let mut table = Vec::new();
    for (auth, mode) in [(Auth::Session, "session"), (Auth::Key, "key")] {
        let index = unique_index("caldera-load");
        let res = measure(ctx, auth, mode, &index, &mut f, &mut table).await;
        ctx.es.cleanup(&index).await;
        res?;
    }
    println!("caldera-load: requests per minute by route and auth (key / session / none):");
    for line in &table {
        println!("  {line}");
    }
    f.note(format!(
        "Caldera event-loop cost per request: KEY {KEY_MS} ms, session {SESSION_MS} ms \
         (fixtures README, real Caldera 5.3.0); the stub charges the KEY cost too"
    ));
    Ok(f)
}

struct Phase {
    name: &'static str,
    secs: f64,
    counts: Vec<(RouteKind, usize, usize, usize)>,
}

fn snapshot(stub: &CalderaStub, name: &'static str, secs: f64) -> Phase {
    let counts = KINDS
        .iter()
        .map(|(k, _)| {
            (
                *k,
                stub.count(Some(*k), Some(AuthMethod::Key)),
                stub.count(Some(*k), Some(AuthMethod::Session)),
                stub.count(Some(*k), Some(AuthMethod::None)),
            )
        })
        .collect();
    stub.reset_counts();
    Phase { name, secs, counts }
}

async fn measure(
    ctx: &Ctx,
    auth: Auth,
    mode: &str,
    index: &str,
    f: &mut Figures,
    table: &mut Vec<String>,
) -> BenchResult<()> {
    let smoke = ctx.opts.smoke;
    let phase_secs = ctx.opts.seconds_or(60.0, 1.0);
    let link_every = if smoke { 0.5 } else { 5.0 };
    let stub = CalderaStub::start().await;
    stub.set_key_delay(Duration::from_millis(if smoke { 20 } else { 200 }));
    let finals = scenarios::all_final_ops();
    let n_ops = finals.len() as u64;
    for op in finals {
        // A real Caldera answers the report of every closed operation with its `finish`. The
        // recordings have no final report for D and G, and H's was taken while it ran
        // (`finish: null`): the stub serves those with `finish` = `start`.
        let id = op["id"].as_str().unwrap_or_default().to_string();
        if [scenarios::OP_D_ID, scenarios::OP_G_ID, scenarios::OP_H_ID].contains(&id.as_str()) {
            stub.put_report(
                &id,
                json!({"name": op["name"], "start": op["start"],
                                        "finish": op["start"], "steps": {}}),
            );
        }
        stub.put_operation(op);
    }
    let extra: Vec<(&str, String)> = if smoke {
        vec![
            ("POLL_INTERVAL", "0.2".into()),
            ("POLL_IDLE_INTERVAL", "0.5".into()),
            ("KEY_MIN_POLL_INTERVAL", "0.3".into()),
            ("SETTLE_GRACE", "0.3".into()),
            // Smoke phases last a second: at the 1 % budget a 20 ms KEY listing would be spaced
            // 2 s (the budget has its own scenario, `intake`).
            ("CALDERA_CPU_BUDGET", "100".into()),
            ("CALDERA_CPU_BUDGET_ACTIVE", "100".into()),
        ]
    } else {
        Vec::new()
    };
    let env = sidecar_env(&stub.url(), &ctx.es.url, index, auth, &extra);
    let mut sidecar = Sidecar::spawn(&env)?;
    sidecar.wait_ready(Duration::from_secs(20)).await?;
    // Start-up and catch-up, until the recorded operations are settled.
    let setup = Instant::now();
    sidecar
        .wait_stat("operations_settled", n_ops, Duration::from_secs(300))
        .await?;
    let startup = snapshot(&stub, "startup", setup.elapsed().as_secs_f64());

    // Idle.
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(phase_secs)).await;
    let idle = snapshot(&stub, "idle", t.elapsed().as_secs_f64());

    // Active: op A runs again, one link step every `link_every` seconds.
    let t = Instant::now();
    let op_a = |v: Value| scenarios::with_state(v, "running");
    let mut step = 0usize;
    stub.put_operation(op_a(scenarios::op_a_queued_next(0)));
    while t.elapsed() < Duration::from_secs_f64(phase_secs) {
        tokio::time::sleep(Duration::from_secs_f64(link_every)).await;
        step += 1;
        let done = (step / 3).min(scenarios::OP_A_LINKS - 1);
        let op = match step % 3 {
            0 => scenarios::op_a_queued_next(done),
            1 => scenarios::op_a_progress(done, true),
            _ => scenarios::op_a_progress(done + 1, false),
        };
        stub.put_operation(op_a(op));
    }
    let active = snapshot(&stub, "active", t.elapsed().as_secs_f64());

    // Closing: op A finishes; until it is settled again.
    let t = Instant::now();
    stub.put_operation(scenarios::op_a_finished());
    tokio::time::sleep(Duration::from_secs_f64(if smoke { 0.5 } else { 3.0 })).await;
    sidecar
        .wait_stat("operations_settled", n_ops, Duration::from_secs(300))
        .await?;
    let closing = snapshot(&stub, "closing", t.elapsed().as_secs_f64());
    sidecar.stop().await?;

    let mut max_key = 0.0f64;
    for p in [&startup, &idle, &active, &closing] {
        let per_min = 60.0 / p.secs.max(1e-9);
        let key: usize = p.counts.iter().map(|c| c.1).sum();
        let session: usize = p.counts.iter().map(|c| c.2).sum();
        let none: usize = p.counts.iter().map(|c| c.3).sum();
        let all = key + session + none;
        let loop_ms = key as f64 * KEY_MS + (session + none) as f64 * SESSION_MS;
        let key_rate = key as f64 * per_min;
        if p.name != "startup" {
            max_key = max_key.max(key_rate);
        }
        let pre = format!("{mode}_{}", p.name);
        let tag = format!("{mode} mode, {} ({:.0} s)", p.name, p.secs);
        f.add(
            format!("{pre}_per_min"),
            format!("{tag}: requests/min"),
            "1/min",
            all as f64 * per_min,
        );
        f.add(
            format!("{pre}_key_per_min"),
            format!("{tag}: KEY requests/min"),
            "1/min",
            key_rate,
        );
        f.add(
            format!("{pre}_session_per_min"),
            format!("{tag}: session requests/min"),
            "1/min",
            session as f64 * per_min,
        );
        f.add(
            format!("{pre}_loop_pct"),
            format!("{tag}: Caldera event-loop time"),
            "%",
            loop_ms * per_min / 600.0,
        );
        if all > 0 {
            f.add(
                format!("{pre}_secs_between"),
                format!("{tag}: seconds between requests"),
                "s",
                p.secs / all as f64,
            );
        }
        let detail: Vec<Value> = p
            .counts
            .iter()
            .zip(KINDS)
            .filter(|(c, _)| c.1 + c.2 + c.3 > 0)
            .map(|(c, (_, name))| json!({"route": name, "key": c.1, "session": c.2, "none": c.3}))
            .collect();
        for (c, (_, name)) in p.counts.iter().zip(KINDS) {
            if c.1 + c.2 + c.3 > 0 {
                table.push(format!(
                    "{mode:<7} {:<8} {:<28} {:>7.2} / {:>7.2} / {:>5.2}",
                    p.name,
                    name,
                    c.1 as f64 * per_min,
                    c.2 as f64 * per_min,
                    c.3 as f64 * per_min
                ));
            }
        }
        f.detail
            .insert(pre, json!({"seconds": p.secs, "routes": detail}));
    }
    f.add(
        format!("{mode}_max_key_per_min"),
        format!("{mode} mode: highest KEY requests/min of idle/active/closing"),
        "1/min",
        max_key,
    );
    if smoke {
        let polled = idle
            .counts
            .iter()
            .chain(&active.counts)
            .any(|c| c.0 == RouteKind::OperationsList && c.1 + c.2 > 0);
        if !polled {
            return Err(format!("{mode} mode: no listing request counted").into());
        }
    }
    Ok(())
}
