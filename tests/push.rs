//! Push intake (issue 12): the Caldera plugin's events through `POST /api/v2/events` into
//! documents in the real search server; the endpoint's validation, key and memory bound; and a
//! start with the index down that fetches no settled operation again (local state file).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::app;
use support::caldera_stub::{CalderaStub, Fault, RouteKind};
use support::proxy::{Mode, Proxy};
use support::scenarios::*;
use support::search::{Search, search_url, unique_index, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");
const WAIT: Duration = Duration::from_secs(40);

fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("caldera-plugin")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The sidecar binary as a child process, killed on drop.
struct Sidecar(Child, String);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sidecar {
    async fn spawn(env: &[(String, String)]) -> Sidecar {
        let port = free_port();
        let child = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .env("HEALTH_BIND", format!("127.0.0.1:{port}"))
            .env(
                "LOG_LEVEL",
                std::env::var("PUSH_TEST_LOG").unwrap_or("warn".into()),
            )
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(if std::env::var("PUSH_TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("sidecar binary starts");
        let s = Sidecar(child, format!("http://127.0.0.1:{port}"));
        wait_for(WAIT, "sidecar listening", || async {
            reqwest::get(format!("{}/livez", s.1))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        s
    }

    fn rss_kb(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

async fn health_at(base: &str, key: Option<&str>) -> Value {
    let mut req = reqwest::Client::new().get(format!("{base}/api/v2/health"));
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    req.send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json")
}

async fn post(base: &str, body: impl Into<reqwest::Body>, key: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/api/v2/events"))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    let r = req.send().await.expect("push answers");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

fn heartbeat() -> String {
    json!({"plugin": "sidecar_push", "version": 1, "dropped": 0, "events": []}).to_string()
}

/// Link id → operation id over the recorded final operations (what `find_op_with_link`
/// answers inside Caldera).
fn link_map() -> HashMap<String, String> {
    let mut m = HashMap::new();
    for op in all_final_ops() {
        let id = op["id"].as_str().unwrap_or_default().to_string();
        for l in op["chain"].as_array().into_iter().flatten() {
            m.insert(l["id"].as_str().unwrap_or_default().to_string(), id.clone());
        }
    }
    m
}

#[tokio::test]
async fn push_endpoint_validates_every_message() {
    let stub = CalderaStub::start().await;
    let index = unique_index("push-validate");
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    let base = format!("http://{}", r.health_addr);

    let (code, body) = post(&base, "this is not json", None).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("not a valid event batch")
    );
    let wrong = json!({"plugin": "sidecar_push", "version": 1, "events": [
        {"event": "link/completed", "link_id": "x; DROP TABLE"}]});
    let (code, body) = post(&base, wrong.to_string(), None).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("event 0: link_id")
    );
    let extra = json!({"plugin": "sidecar_push", "version": 1, "events": [], "shell": "rm -rf /"});
    assert_eq!(post(&base, extra.to_string(), None).await.0, 400);
    // Oversize: refused after reading at most MAX_BODY bytes.
    let big = format!(
        "{{\"plugin\":\"sidecar_push\",\"version\":1,\"events\":[],\"x\":\"{}\"}}",
        "A".repeat(200_000)
    );
    assert_eq!(post(&base, big, None).await.0, 413);

    let (_, h) = app::health(&r).await;
    assert_eq!(
        h["checks"]["intake"]["push_live"], false,
        "garbage is not a sign of life"
    );
    assert_eq!(h["checks"]["intake"]["batches_rejected"], 4);

    let (code, body) = post(&base, heartbeat(), None).await;
    assert_eq!(code, 202, "{body}");
    let (_, h) = app::health(&r).await;
    assert_eq!(h["checks"]["intake"]["push_live"], true);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("caldera_sidecar_push_live 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("caldera_sidecar_push_batches_rejected_total 4\n"));
    assert!(metrics.contains("caldera_sidecar_caldera_read_cost_seconds{read=\"listing\"}"));
    app::stop(r).await;
}

#[tokio::test]
async fn push_endpoint_wants_the_api_key() {
    let stub = CalderaStub::start().await;
    let index = unique_index("push-key");
    let env = app::test_env(
        &stub.url(),
        &index,
        &[("ENABLE_API_AUTH", "true"), ("API_KEY", "push-secret-1")],
    );
    let r = app::start(&env).await;
    let base = format!("http://{}", r.health_addr);
    let (code, body) = post(&base, heartbeat(), None).await;
    assert_eq!(code, 401);
    assert_eq!(body, json!({"error": "unauthorized"}));
    assert_eq!(post(&base, heartbeat(), Some("wrong")).await.0, 401);
    assert_eq!(
        r.shared.intake.batches_accepted.get(),
        0,
        "refused before parsing"
    );
    assert_eq!(post(&base, heartbeat(), Some("push-secret-1")).await.0, 202);
    assert_eq!(r.shared.intake.batches_accepted.get(), 1);
    app::stop(r).await;
}

/// The recorded stream of a real Caldera (331 events, 8 operations) through the real plugin
/// code into the sidecar binary: every link result and every final state is indexed, learnt
/// through events alone (no listing after the start), with at most one single-link fetch per
/// link result and whole fetches only for state changes.
#[tokio::test]
async fn recorded_event_stream_becomes_documents() {
    let stub = CalderaStub::start().await;
    let index = unique_index("push-stream");
    let s = Search::new(&index);
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("POLL_IDLE_INTERVAL", "300"),
            ("POLL_INTERVAL", "300"),
            // The stub shows each operation's final state from the start, so the sidecar sees
            // B and E closed up to 210 recorded seconds (~1 s of replay) before their
            // `operation/completed`; a grace longer than that keeps the test about push, not
            // about the stub's shortcut.
            ("SETTLE_GRACE", "3"),
        ],
    );
    // Caldera holds the eight operations running, every link still queued: the sidecar's
    // first (and, in this test, only) listing and fetches see them so.
    for op in all_final_ops() {
        let mut op = with_state(op, "running");
        if let Some(chain) = op["chain"].as_array_mut() {
            for l in chain.iter_mut() {
                *l = link_queued(l);
            }
        }
        stub.put_operation(op);
    }
    let sidecar = Sidecar::spawn(&env).await;
    wait_for(WAIT, "first listing and fetches", || async {
        (stub.count(Some(RouteKind::Operation), None) >= 8).then_some(())
    })
    .await;
    wait_for(WAIT, "queued links indexed", || async {
        (s.count("event.dataset:\"caldera.link\" AND status:\"queued\"")
            .await
            > 30)
            .then_some(())
    })
    .await;
    stub.reset_counts();
    // Now the operations run to their end; the plugin reports what happens, and only the
    // events can tell the sidecar (its polls are 300 s apart).
    for op in all_final_ops() {
        stub.put_operation(op);
    }
    let map = link_map();
    let dir = tempfile::tempdir().expect("tempdir");
    let map_path = dir.path().join("links.json");
    std::fs::write(&map_path, serde_json::to_vec(&map).expect("json")).expect("write map");
    let events = fixtures_dir().join("events.jsonl");
    let mut replay = Command::new("python3");
    replay
        .arg(plugin_dir().join("tests").join("replay_events.py"))
        .arg(&sidecar.1)
        .arg(&events)
        .arg(&map_path)
        // The recorded 17 minutes in ~5 s: events that were seconds apart stay apart.
        .arg("200");
    // Off the test's runtime: the Caldera stub runs on it and must keep answering.
    let out = tokio::task::spawn_blocking(move || replay.output())
        .await
        .expect("replay task")
        .expect("python3 runs the plugin");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "plugin replay: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(report.trim()).expect("report json");
    assert_eq!(report["fired"], 331);
    assert_eq!(
        report["sent"], 118,
        "link, operation and agent events forwarded"
    );

    // Every link that reported a result, with its final status.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let finals: HashMap<String, Value> = all_final_ops()
        .into_iter()
        .flat_map(|op| op["chain"].as_array().cloned().unwrap_or_default())
        .map(|l| (l["id"].as_str().unwrap_or_default().to_string(), l))
        .collect();
    for line in std::fs::read_to_string(&events).expect("events").lines() {
        let rec: Value = serde_json::from_str(line).expect("event");
        if rec["event"] == "link/completed"
            && let Some(link) = finals.get(rec["payload"]["link_id"].as_str().unwrap_or(""))
        {
            expected.insert(
                link["id"].as_str().unwrap_or_default().to_string(),
                link["status"].as_i64().unwrap_or(0),
            );
        }
    }
    assert!(expected.len() > 30, "{} links with results", expected.len());
    let got = wait_for(WAIT, "a document per reported link", || async {
        let hits = s.hits("event.dataset:\"caldera.link\"").await;
        let got: BTreeMap<String, i64> = hits
            .iter()
            .map(|h| {
                (
                    h["_source"]["link_id"].as_str().unwrap_or("").to_string(),
                    h["_source"]["status_code"].as_i64().unwrap_or(99),
                )
            })
            .collect();
        expected
            .iter()
            .all(|(id, st)| got.get(id) == Some(st))
            .then_some(got)
    })
    .await;
    // Nothing but links of these operations (no duplicates: one document per link id).
    assert!(got.keys().all(|id| map.contains_key(id)));
    // Each operation document reaches Caldera's final state and link counts, built from the
    // pushed state changes and the links fetched one by one (no whole fetch, checked below).
    for op in all_final_ops() {
        let id = op["id"].as_str().unwrap_or_default();
        let chain = op["chain"].as_array().cloned().unwrap_or_default();
        let with = |code: i64| chain.iter().filter(|l| l["status"] == code).count();
        let counts = json!({"total": chain.len(), "success": with(0), "error": with(1),
                            "timeout": with(124), "discarded": with(-2), "queued": 0,
                            "in_flight": 0});
        let doc = wait_for(WAIT, "operation document in its final state", || async {
            s.operation(id).await.filter(|d| {
                d["status"] == op["state"]
                    && counts
                        .as_object()
                        .is_some_and(|c| c.iter().all(|(k, v)| d["link_counts"][k] == *v))
            })
        })
        .await;
        assert_eq!(doc["operation_name"], op["name"]);
    }
    // What it cost Caldera after the start: no listing, at most a link fetch per link result,
    // whole fetches for state changes and settle checks only.
    assert_eq!(stub.count(Some(RouteKind::OperationsList), None), 0);
    let link_fetches = stub.count(Some(RouteKind::Link), None);
    // Every change of a link's status (a result, a discard) fires one `link/status_changed`;
    // a result fires `link/completed` too, and the two coalesce into one fetch.
    let status_changes = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| {
            r["event"] == "link/status_changed"
                && map.contains_key(r["payload"]["link"].as_str().unwrap_or(""))
        })
        .count();
    assert!(
        link_fetches <= status_changes,
        "{link_fetches} link fetches for {status_changes} link status changes"
    );
    let op_fetches = stub.count(Some(RouteKind::Operation), None);
    eprintln!(
        "{} link results: {link_fetches} link fetches, {op_fetches} operation fetches",
        expected.len()
    );
    assert!(link_fetches > 0, "link results fetched one by one");
    let mut closed = std::collections::HashSet::new();
    let mut late = 0;
    for line in std::fs::read_to_string(&events).expect("events").lines() {
        let rec: Value = serde_json::from_str(line).expect("event");
        let p = &rec["payload"];
        match rec["event"].as_str().unwrap_or("") {
            "operation/completed" => {
                closed.insert(p["op"].as_str().unwrap_or("").to_string());
            }
            "operation/state_changed"
                if ["finished", "out_of_time"].contains(&p["to_state"].as_str().unwrap_or("")) =>
            {
                closed.insert(p["op"].as_str().unwrap_or("").to_string());
            }
            "link/completed"
                if map
                    .get(p["link_id"].as_str().unwrap_or(""))
                    .is_some_and(|o| closed.contains(o)) =>
            {
                late += 1;
            }
            _ => {}
        }
    }
    // Whole fetches: none for state changes (the events carry the state) nor for settling
    // (nothing changed during the grace). An operation fetched before push was live has no
    // kept context: its first event brings one whole fetch (8 operations). A link result
    // arriving after its operation settled could need one too.
    let ops = all_final_ops().len();
    assert!(
        op_fetches <= ops + late,
        "{op_fetches} whole fetches; at most one per operation and per link result after its operation closed ({late})"
    );
    // Settled without a report: `finish` comes from the pushed `operation/completed`, and it
    // is the report's (recorded: 2026-11-28T15:45:45Z for A).
    let a = wait_for(WAIT, "A settled", || async {
        s.operation(OP_A_ID).await.filter(|d| d["settled"] == true)
    })
    .await;
    assert_eq!(a["finish"], "2026-11-28T15:45:45Z");
    let reports: Vec<String> = stub
        .requests()
        .into_iter()
        .filter(|r| r.kind == RouteKind::Report)
        .map(|r| r.path)
        .collect();
    assert!(reports.is_empty(), "{reports:?}");
    let h = health_at(&sidecar.1, None).await;
    assert_eq!(h["checks"]["intake"]["push_live"], true);
    assert_eq!(h["checks"]["intake"]["events_dropped"], 0);
    drop(sidecar);
    s.delete_index().await;
}

/// A flood of valid events with the watcher stuck (Caldera hangs every fetch): the queue to
/// the watcher holds at most `push::QUEUE` small entries, the rest is dropped and counted,
/// and the process does not grow.
#[tokio::test]
async fn a_flood_of_events_does_not_grow_memory() {
    let stub = CalderaStub::start().await;
    stub.inject(RouteKind::Operation, 1_000_000, Fault::Hang);
    stub.inject(RouteKind::Link, 1_000_000, Fault::Hang);
    let index = unique_index("push-flood");
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("MAX_REQUESTS_PER_MINUTE", "1000000"),
            ("CALDERA_TIMEOUT", "600"),
        ],
    );
    let sidecar = Sidecar::spawn(&env).await;
    let batch = |n: usize| {
        let events: Vec<Value> = (0..200)
            .map(|i| {
                json!({"event": "link/completed", "timestamp": 1.0,
                       "operation_id": OP_A_ID,
                       "link_id": format!("00000000-0000-4000-8000-{:012}", n * 200 + i)})
            })
            .collect();
        json!({"plugin": "sidecar_push", "version": 1, "dropped": 0, "events": events}).to_string()
    };
    // Warm up (allocator arenas, connection handling), then measure.
    for n in 0..50 {
        assert_eq!(post(&sidecar.1, batch(n), None).await.0, 202);
    }
    let before = sidecar.rss_kb();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let url = format!("{}/api/v2/events", sidecar.1);
        let bodies: Vec<String> = (0..250).map(|n| batch(1_000 + w * 1_000 + n)).collect();
        tasks.push(tokio::spawn(async move {
            for b in bodies {
                let r = client.post(&url).body(b).send().await.expect("post");
                assert_eq!(r.status().as_u16(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.expect("flood task");
    }
    let after = sidecar.rss_kb();
    let h = health_at(&sidecar.1, None).await;
    let accepted = h["checks"]["intake"]["events_accepted"]
        .as_u64()
        .unwrap_or(0);
    let dropped = h["checks"]["intake"]["events_dropped"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(accepted + dropped, 410_000, "every event counted");
    // The watcher took one queue's worth into its coalescing batch and is stuck fetching;
    // a second queue's worth waits in the channel.
    assert!(
        accepted <= 2 * 4_096 + 200,
        "{accepted} accepted: the queue is bounded"
    );
    assert!(dropped > 400_000 - 2 * 4_096 - 200);
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} kB to {after} kB over 400,000 events"
    );
}

/// Started while Elasticsearch is unreachable, the sidecar knows from its state file which
/// operations are settled: it fetches none of them again and re-sends nothing.
#[tokio::test]
async fn start_with_the_index_down_fetches_no_settled_operation() {
    let stub = CalderaStub::start().await;
    for op in all_final_ops() {
        let id = op["id"].as_str().unwrap_or_default().to_string();
        // Caldera answers every closed operation's report with its finish (see caldera-load).
        if [OP_D_ID, OP_G_ID, OP_H_ID].contains(&id.as_str()) {
            stub.put_report(
                &id,
                json!({"name": op["name"], "start": op["start"], "finish": op["start"], "steps": {}}),
            );
        }
        stub.put_operation(op);
    }
    let proxy = Proxy::start(&search_url()).await;
    let index = unique_index("push-state");
    let env = app::test_env(
        &stub.url(),
        &index,
        &[("ELK_URL", &proxy.url()), ("POLL_IDLE_INTERVAL", "0.5")],
    );
    let r = app::start(&env).await;
    wait_for(Duration::from_secs(60), "all eight settled", || async {
        (r.shared.stats.operations_settled.get() == 8).then_some(())
    })
    .await;
    // Settled operations reach the file once they matured (their documents are delivered).
    let state_file = PathBuf::from(
        env.iter()
            .find(|(k, _)| k == "SPOOL_DIR")
            .map(|(_, v)| format!("{v}.state.json"))
            .unwrap_or_default(),
    );
    wait_for(
        Duration::from_secs(30),
        "state file with 8 operations",
        || async {
            let f: Value = serde_json::from_slice(&std::fs::read(&state_file).ok()?).ok()?;
            (f["settled"].as_object()?.len() == 8).then_some(())
        },
    )
    .await;
    app::stop(r).await;

    proxy.set_mode(Mode::Refuse).await;
    stub.reset_counts();
    let r = app::start(&env).await;
    wait_for(WAIT, "two listings", || async {
        (stub.count(Some(RouteKind::OperationsList), None) >= 2).then_some(())
    })
    .await;
    assert_eq!(stub.count(Some(RouteKind::Operation), None), 0);
    let reports: Vec<String> = stub
        .requests()
        .into_iter()
        .filter(|r| r.kind == RouteKind::Report)
        .map(|r| r.path)
        .collect();
    assert!(reports.is_empty(), "{reports:?}");
    assert_eq!(r.shared.stats.documents_emitted.get(), 0, "nothing re-sent");
    assert_eq!(r.shared.stats.operations_settled.get(), 8);
    let (_, h) = app::health(&r).await;
    assert_eq!(h["checks"]["intake"]["settled_known_from"], "state_file");
    app::stop(r).await;
    proxy.set_mode(Mode::Pass).await;
    Search::new(&index).delete_index().await;
}

/// A running operation under push: a link result of one of its agents costs one link fetch
/// and updates the operation document without a whole fetch; a link of an agent that joined
/// after the operation was fetched brings one whole fetch, so its document carries that
/// agent's fields (the kept context has none for it).
#[tokio::test]
async fn a_link_of_a_new_agent_brings_one_whole_fetch() {
    let stub = CalderaStub::start().await;
    let index = unique_index("push-new-agent");
    let s = Search::new(&index);
    let env = app::test_env(
        &stub.url(),
        &index,
        &[("POLL_IDLE_INTERVAL", "300"), ("POLL_INTERVAL", "300")],
    );
    stub.put_operation(op_a_progress(3, false));
    let sidecar = Sidecar::spawn(&env).await;
    assert_eq!(post(&sidecar.1, heartbeat(), None).await.0, 202);
    wait_for(WAIT, "three link documents", || async {
        (s.links(OP_A_ID).await.len() == 3).then_some(())
    })
    .await;
    let event = |link: &str| {
        json!({"plugin": "sidecar_push", "version": 1, "dropped": 0, "events": [
            {"event": "link/completed", "timestamp": 1.0, "operation_id": OP_A_ID, "link_id": link},
            {"event": "link/status_changed", "timestamp": 1.0, "operation_id": OP_A_ID,
             "link_id": link, "from_status": -3, "to_status": 0}]})
        .to_string()
    };
    // The operation was fetched at start-up, maybe before push was live (then without a kept
    // context): an event for a link it has makes sure the context is there.
    let third = op_a_progress(3, false)["chain"][2]["id"]
        .as_str()
        .expect("id")
        .to_string();
    stub.reset_counts();
    assert_eq!(post(&sidecar.1, event(&third), None).await.0, 202);
    wait_for(WAIT, "the event handled", || async {
        (stub.count(Some(RouteKind::Link), None) + stub.count(Some(RouteKind::Operation), None) > 0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stub.reset_counts();

    // A fourth result, from the operation's own agent.
    let op = op_a_progress(4, false);
    let fourth = op["chain"][3]["id"].as_str().expect("id").to_string();
    stub.put_operation(op.clone());
    assert_eq!(post(&sidecar.1, event(&fourth), None).await.0, 202);
    wait_for(WAIT, "operation document counting four results", || async {
        s.operation(OP_A_ID)
            .await
            .filter(|d| d["link_counts"]["success"] == 4)
    })
    .await;
    assert_eq!(stub.count(Some(RouteKind::Link), None), 1);
    assert_eq!(stub.count(Some(RouteKind::Operation), None), 0);

    // A result from an agent that joined the group since.
    let mut op = op;
    let mut agent = op["host_group"][0].clone();
    agent["paw"] = json!("newpaw");
    agent["username"] = json!("alice");
    op["host_group"]
        .as_array_mut()
        .expect("host_group")
        .push(agent);
    let mut link = op["chain"][3].clone();
    let new_id = "6b4c0f3e-2f4d-4c3a-9d57-0a1b2c3d4e5f";
    link["id"] = json!(new_id);
    link["paw"] = json!("newpaw");
    op["chain"].as_array_mut().expect("chain").push(link);
    stub.put_operation(op);
    assert_eq!(post(&sidecar.1, event(new_id), None).await.0, 202);
    let doc = wait_for(WAIT, "the new agent's link document", || async {
        s.hits(&format!("link_id:\"{new_id}\""))
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(doc["_source"]["user"]["name"], "alice");
    assert_eq!(doc["_source"]["paw"], "newpaw");
    assert_eq!(stub.count(Some(RouteKind::Operation), None), 1);
    let op_doc = wait_for(WAIT, "operation document with both agents", || async {
        s.operation(OP_A_ID)
            .await
            .filter(|d| d["agent_count"] == 2 && d["link_counts"]["success"] == 5)
    })
    .await;
    assert_eq!(op_doc["status"], "running");
    drop(sidecar);
    s.delete_index().await;
}
