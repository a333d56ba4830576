//! End-to-end: Caldera stub (recorded responses) → the real sidecar → the real search server.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::app;
use support::caldera_stub::{AuthMethod, CalderaStub, Fault, RouteKind};
use support::scenarios::*;
use support::search::{Search, unique_index, wait_for};

const WAIT: Duration = Duration::from_secs(30);

async fn link_count(s: &Search, op: &str) -> usize {
    s.links(op).await.len()
}

async fn wait_op<F: Fn(&Value) -> bool>(s: &Search, op: &str, what: &str, f: F) -> Value {
    wait_for(WAIT, what, || async {
        s.operation(op).await.filter(|d| f(d))
    })
    .await
}

#[tokio::test]
async fn scenario_a_grows_to_26_links_and_finishes() {
    let stub = CalderaStub::start().await;
    let index = unique_index("scenario-a");
    let s = Search::new(&index);
    stub.put_operation(op_a_created());
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;

    wait_op(&s, OP_A_ID, "op A running with no links", |d| {
        d["status"] == "running"
    })
    .await;
    for (done, in_flight) in [(1, true), (5, false), (13, true), (25, true)] {
        stub.put_operation(op_a_progress(done, in_flight));
        let want = done + usize::from(in_flight);
        wait_for(WAIT, &format!("{want} link docs"), || async {
            (link_count(&s, OP_A_ID).await == want).then_some(())
        })
        .await;
    }
    // The in-flight link is indexed as such, then updated in place when its result arrives.
    let links = s.links(OP_A_ID).await;
    assert_eq!(
        links.iter().filter(|l| l["status"] == "in_flight").count(),
        1
    );
    stub.put_operation(op_a_finished());
    let op = wait_op(&s, OP_A_ID, "op A finished and settled", |d| {
        d["status"] == "finished" && d["settled"] == true
    })
    .await;

    assert_eq!(
        s.count(&format!(
            "operation_id:\"{OP_A_ID}\" AND event.dataset:\"caldera.operation\""
        ))
        .await,
        1
    );
    let links = s.links(OP_A_ID).await;
    assert_eq!(links.len(), 26);
    let want_links: BTreeSet<String> = op_a_finished()["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    let got_links: BTreeSet<String> = links
        .iter()
        .map(|l| l["link_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got_links, want_links);

    let techniques: Vec<&str> = op["techniques"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(techniques, ["T1033", "T1057", "T1069.001", "T1087.001"]);
    assert_eq!(op["technique_count_total"], 4);
    assert_eq!(op["tactics"], json!(["discovery"]));
    assert_eq!(op["client_id"], "red");
    assert_eq!(op["agent_count"], 1);
    assert_eq!(op["purple_team_exercise"], true);
    assert_eq!(op["severity"], "low");
    assert_eq!(op["auto_close"], true);
    assert_eq!(op["operation_name"], "purple-discovery-red");
    assert_eq!(op["timestamp"], "2026-11-28T15:41:48Z");
    assert_eq!(op["link_counts"]["success"], 26);
    assert_eq!(op["threat"]["framework"], "MITRE ATT&CK");
    assert_eq!(
        op["finish"]
            .as_str()
            .map(|f| f.starts_with("2026-11-28T15:4")),
        Some(true),
        "finish from the report: {op}"
    );
    for tag in ["purple_team", "simulation", "caldera"] {
        assert!(op["tags"].as_array().unwrap().contains(&json!(tag)));
    }
    let recorded = op_a_finished();
    for l in &links {
        assert_eq!(l["status"], "success", "{l}");
        assert_eq!(l["status_code"], 0);
        assert_eq!(l["client_id"], "red");
        assert_eq!(l["host"]["name"], "vm");
        assert_eq!(l["user"]["name"], "root");
        assert!(l["process"]["pid"].as_i64().unwrap() > 0, "{l}");
        assert!(
            l["event"]["start"].is_string() && l["event"]["end"].is_string(),
            "{l}"
        );
        assert_eq!(l["tactic"], "discovery");
        let rec = recorded["chain"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == l["link_id"])
            .unwrap();
        assert_eq!(l["technique_id"], rec["ability"]["technique_id"]);
        assert_eq!(l["finish"], rec["finish"]);
        assert_eq!(
            l["process"]["pid"].as_i64().unwrap().to_string(),
            rec["pid"].as_str().unwrap()
        );
        assert_eq!(l["process"]["command_line"], rec["plaintext_command"]);
    }
    // Every document is marked and carries the ECS fields the Kibana filter and SIEM need.
    assert_eq!(s.count("NOT purple_team_exercise:true").await, 0);
    assert_eq!(s.count("NOT _exists_:@timestamp").await, 0);
    assert_eq!(s.count("NOT _exists_:threat.technique.id").await, 0);
    assert_eq!(s.count("*").await, 27);
    app::stop(r).await;
    s.delete_index().await;
}

/// `sidecar.sequence` of every link document of `op`, by link id.
async fn link_sequences(s: &Search, op: &str) -> std::collections::BTreeMap<String, u64> {
    s.links(op)
        .await
        .iter()
        .map(|l| {
            (
                l["link_id"].as_str().unwrap().to_string(),
                l["sidecar"]["sequence"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn only_changed_links_are_sent_again() {
    let stub = CalderaStub::start().await;
    let index = unique_index("changed-links");
    let s = Search::new(&index);
    stub.put_operation(op_a_progress(5, false));
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    wait_for(WAIT, "5 link docs", || async {
        (link_count(&s, OP_A_ID).await == 5).then_some(())
    })
    .await;
    let before = link_sequences(&s, OP_A_ID).await;

    // A sixth link starts: only it is new; the five finished links did not change.
    stub.put_operation(op_a_progress(5, true));
    wait_for(WAIT, "6 link docs", || async {
        (link_count(&s, OP_A_ID).await == 6).then_some(())
    })
    .await;
    // Several more polls of the same state: still nothing to send again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.refresh().await;
    let after = link_sequences(&s, OP_A_ID).await;
    for (id, seq) in &before {
        assert_eq!(
            after.get(id),
            Some(seq),
            "unchanged link {id} was sent again"
        );
    }
    let emitted = r.shared.stats.documents_emitted.get();
    assert!(
        emitted <= 5 + 1 + 3,
        "5 links, then 1 new link, plus the operation document a few times: {emitted} sent"
    );

    // The operation's name is part of every link document: renaming it rebuilds all of them.
    let mut renamed = op_a_progress(5, true);
    renamed["name"] = json!("purple-discovery-renamed");
    stub.put_operation(renamed);
    wait_for(WAIT, "every link document renamed", || async {
        let links = s.links(OP_A_ID).await;
        (links.len() == 6
            && links
                .iter()
                .all(|l| l["operation_name"] == "purple-discovery-renamed"))
        .then_some(())
    })
    .await;
    let renamed_seqs = link_sequences(&s, OP_A_ID).await;
    for (id, seq) in &after {
        assert!(
            renamed_seqs[id] > *seq,
            "link {id} kept its old observation"
        );
    }
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn restart_catches_up_without_duplicates() {
    let stub = CalderaStub::start().await;
    let index = unique_index("restart");
    let s = Search::new(&index);
    for op in [op_a_finished(), op_c_empty_group(), op_f_discarded()] {
        stub.put_operation(op);
    }
    let env = app::test_env(&stub.url(), &index, &[]);
    let r = app::start(&env).await;
    for id in [OP_A_ID, OP_C_ID, OP_F_ID] {
        wait_op(&s, id, "settled", |d| d["settled"] == true).await;
    }
    let before = s.count("*").await;
    app::stop(r).await;

    // While the sidecar is down: B runs and finishes, E is stuck waiting for a late result.
    stub.put_operation(op_b_final());
    stub.put_operation(op_e_out_of_time_pending());
    stub.reset_counts();
    let r = app::start(&env).await;
    wait_op(&s, OP_B_ID, "B indexed after restart", |d| {
        d["settled"] == true
    })
    .await;
    wait_op(&s, OP_E_ID, "E indexed after restart", |d| {
        d["status"] == "out_of_time"
    })
    .await;
    let b_links = op_b_final()["chain"].as_array().unwrap().len();
    let e_links = op_e_out_of_time()["chain"].as_array().unwrap().len();
    wait_for(WAIT, "all docs", || async {
        (s.count("*").await == before + 2 + b_links + e_links).then_some(())
    })
    .await;
    // Settled operations already in the index were not fetched again.
    let fetched: Vec<String> = stub
        .requests()
        .iter()
        .filter(|r| r.kind == RouteKind::Operation)
        .map(|r| r.path.clone())
        .collect();
    for id in [OP_A_ID, OP_C_ID, OP_F_ID] {
        assert!(
            !fetched.iter().any(|p| p.contains(id)),
            "{id} fetched again: {fetched:?}"
        );
    }

    // The late cleanup result updates that link's document in place.
    let pending = s.links(OP_E_ID).await;
    let cleanup = pending
        .iter()
        .find(|l| l["link_id"] == OP_E_CLEANUP_LINK_ID)
        .unwrap();
    assert_eq!(cleanup["status"], "in_flight");
    stub.put_operation(op_e_out_of_time());
    wait_for(WAIT, "late cleanup result indexed", || async {
        let links = s.links(OP_E_ID).await;
        links
            .iter()
            .find(|l| l["link_id"] == OP_E_CLEANUP_LINK_ID && l["status"] == "success")
            .map(|_| ())
    })
    .await;
    app::stop(r).await;
    // A third start with everything settled adds nothing.
    let total = s.count("*").await;
    let r = app::start(&env).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.count("*").await, total);
    let ids: BTreeSet<String> = s
        .hits("*")
        .await
        .iter()
        .map(|h| h["_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), total, "no duplicate ids");
    app::stop(r).await;
    s.delete_index().await;
}

/// A sink of the test's own on the index of `env` (template installed): plants documents the
/// way an earlier run of the sidecar wrote them.
struct Planter {
    es: elasticsearch::Elasticsearch,
    sink: caldera_sidecar::sink::Sink,
    shared: std::sync::Arc<caldera_sidecar::state::Shared>,
    _unsaved: tokio::sync::mpsc::UnboundedReceiver<caldera_sidecar::document::Unsaved>,
}

async fn planter(env: &[(String, String)], index: &str) -> Planter {
    use caldera_sidecar::sink::{Sink, elastic};
    let settings = app::settings(env);
    let es = elastic::build_client(&settings.elastic).unwrap();
    elastic::install_template(&es, index).await.unwrap();
    let shared = std::sync::Arc::new(caldera_sidecar::state::Shared::default());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = Sink::new(es.clone(), &settings, shared.clone(), tx).unwrap();
    Planter {
        es,
        sink,
        shared,
        _unsaved: rx,
    }
}

#[tokio::test]
async fn older_observation_never_overwrites_newer() {
    use caldera_sidecar::document::encode;
    let index = unique_index("versions");
    let s = Search::new(&index);
    let env = app::test_env("http://127.0.0.1:9", &index, &[]);
    let Planter {
        mut sink, shared, ..
    } = planter(&env, &index).await;
    let newer =
        json!({"operation_id": OP_A_ID, "status": "finished", "purple_team_exercise": true});
    let older = json!({"operation_id": OP_A_ID, "status": "running", "purple_team_exercise": true});
    let id = format!("op-{OP_A_ID}");
    sink.deliver(vec![encode(&newer, id.clone(), 2_000).unwrap().1], false)
        .await;
    sink.deliver(vec![encode(&older, id.clone(), 1_000).unwrap().1], false)
        .await;
    // The same observation again (a replay) is also harmless.
    sink.deliver(vec![encode(&newer, id.clone(), 2_000).unwrap().1], false)
        .await;
    let doc = s.operation(OP_A_ID).await.unwrap();
    assert_eq!(doc["status"], "finished");
    assert_eq!(doc["sidecar"]["sequence"], 2_000);
    assert_eq!(shared.stats.documents_indexed.get(), 1);
    assert_eq!(shared.stats.documents_already_current.get(), 2);
    assert_eq!(s.count("*").await, 1);
    s.delete_index().await;
}

/// A wall clock that went back across a restart must not make new observations lose: the
/// watcher's numbers start above the highest one already indexed.
#[tokio::test]
async fn observations_start_above_the_indexed_ones() {
    use caldera_sidecar::document::encode;
    use caldera_sidecar::sink::elastic;
    let stub = CalderaStub::start().await;
    let index = unique_index("clock-floor");
    let s = Search::new(&index);
    let env = app::test_env(&stub.url(), &index, &[]);
    let Planter { es, mut sink, .. } = planter(&env, &index).await;
    // Written by a run whose clock was an hour ahead.
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
        + 3_600_000_000;
    let old = json!({"operation_id": OP_A_ID, "status": "running", "purple_team_exercise": true});
    sink.deliver(
        vec![encode(&old, format!("op-{OP_A_ID}"), ahead).unwrap().1],
        false,
    )
    .await;
    s.refresh().await;
    assert_eq!(
        elastic::max_sequence(&es, &index).await.unwrap(),
        Some(ahead)
    );

    stub.put_operation(op_a_finished());
    let r = app::start(&env).await;
    let doc = wait_op(&s, OP_A_ID, "the newer observation indexed", |d| {
        d["status"] == "finished"
    })
    .await;
    assert!(
        doc["sidecar"]["sequence"].as_u64().unwrap() > ahead,
        "{doc}"
    );
    app::stop(r).await;
    s.delete_index().await;
}

/// The settled operations known at start-up are read whole, page by page.
#[tokio::test]
async fn settled_operations_are_read_in_pages() {
    use caldera_sidecar::document::encode;
    use caldera_sidecar::sink::elastic;
    let index = unique_index("settled-pages");
    let s = Search::new(&index);
    let env = app::test_env("http://127.0.0.1:9", &index, &[]);
    let Planter { es, mut sink, .. } = planter(&env, &index).await;
    let mut docs = Vec::new();
    for n in 0..7u64 {
        let id = format!("{n:08x}-0000-4000-8000-000000000001");
        let doc = json!({"operation_id": id, "status": "finished", "settled": n != 3,
            "event": {"dataset": "caldera.operation"}, "purple_team_exercise": true});
        docs.push(encode(&doc, format!("op-{id}"), 1_000 + n).unwrap().1);
    }
    sink.deliver(docs, false).await;
    s.refresh().await;
    let all = elastic::settled_operations_in_pages(&es, &index, 2)
        .await
        .unwrap();
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(!all.contains_key("00000003-0000-4000-8000-000000000001"));
    assert_eq!(all, elastic::settled_operations(&es, &index).await.unwrap());
    s.delete_index().await;
}

fn link_with_technique(template: &Value, n: usize, technique: &str) -> Value {
    let mut l = template.clone();
    let id = format!("{n:08x}-0000-4000-8000-00000000abcd");
    l["id"] = json!(id);
    l["unique"] = json!(id);
    l["ability"]["technique_id"] = json!(technique);
    l
}

#[tokio::test]
async fn hostile_input_is_indexed_safely() {
    let stub = CalderaStub::start().await;
    let index = unique_index("hostile");
    let s = Search::new(&index);

    let mut evil = with_name(op_a_finished(), "");
    let mut name =
        String::from("<script>alert('x')</script><b>Q4</b> red\u{0}\u{7}\u{1b}[31m team\r\n");
    name.push_str(&"A".repeat(1_000_000));
    evil["name"] = json!(name);
    stub.put_operation(evil);

    let big_id = "11111111-2222-4333-8444-555555555555";
    let mut big = with_id(op_a_finished(), big_id);
    let template = big["chain"][0].clone();
    let mut chain: Vec<Value> = (0..1000)
        .map(|i| link_with_technique(&template, i, &format!("T{}", 1000 + i)))
        .collect();
    for (i, bad) in ["T12", "<img src=x>", "T1059.4", "1059"].iter().enumerate() {
        chain.push(link_with_technique(&template, 5000 + i, bad));
    }
    big["chain"] = Value::Array(chain);
    stub.put_operation(big);

    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    let op = wait_op(&s, OP_A_ID, "hostile op indexed", |d| d["settled"] == true).await;
    let n = op["operation_name"].as_str().unwrap();
    assert!(
        n.starts_with("alert('x')Q4 red [31m team AAAA"),
        "{}",
        &n[..60]
    );
    assert!(!n.contains('<') && !n.chars().any(|c| c.is_control()));
    assert!(
        n.chars().count() <= 513,
        "name capped, got {}",
        n.chars().count()
    );
    assert_eq!(link_count(&s, OP_A_ID).await, 26);

    let op = wait_op(&s, big_id, "1000-technique op indexed", |d| {
        d["settled"] == true
    })
    .await;
    assert_eq!(op["techniques"].as_array().unwrap().len(), 500);
    assert_eq!(op["technique_count_total"], 1000);
    assert_eq!(
        op["invalid_values"],
        4,
        "{}",
        serde_json::to_string(&op).unwrap()
    );
    assert!(
        op["techniques"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.as_str().unwrap().starts_with('T'))
    );
    wait_for(WAIT, "1004 link docs", || async {
        (link_count(&s, big_id).await == 1004).then_some(())
    })
    .await;
    // The links with invalid technique ids are still indexed, without a technique.
    assert_eq!(s.count(&format!("event.dataset:\"caldera.link\" AND operation_id:\"{big_id}\" AND NOT _exists_:technique_id")).await, 4);
    let (_, health) = app::health(&r).await;
    assert!(
        health["checks"]["pipeline"]["invalid_values"]
            .as_u64()
            .unwrap()
            >= 4
    );
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn session_login_once_and_idle_polling_is_slow() {
    let stub = CalderaStub::start().await;
    let index = unique_index("session");
    let s = Search::new(&index);
    stub.put_operation(op_c_empty_group());
    let env = app::test_env(
        &stub.url(),
        &index,
        &[("CALDERA_API_KEY", "ADMIN123"), ("POLL_IDLE_INTERVAL", "2")],
    );
    let r = app::start(&env).await;
    wait_op(&s, OP_C_ID, "C settled", |d| d["settled"] == true).await;
    stub.reset_counts();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let lists = stub.count(Some(RouteKind::OperationsList), None);
    assert!(
        (2..=5).contains(&lists),
        "idle: {lists} list calls in 7 s with a 2 s idle interval"
    );
    assert_eq!(
        stub.count(Some(RouteKind::Operation), None),
        0,
        "settled op not fetched again"
    );
    app::stop(r).await;
    // Over the whole run: one login, no KEY request.
    let all = stub.requests();
    assert_eq!(
        all.iter().filter(|r| r.kind == RouteKind::Enter).count(),
        0,
        "counts were reset after login"
    );
    assert_eq!(stub.count(None, Some(AuthMethod::Key)), 0);
    s.delete_index().await;
}

#[tokio::test]
async fn session_counts_from_the_start() {
    let stub = CalderaStub::start().await;
    let index = unique_index("session-count");
    let s = Search::new(&index);
    stub.put_operation(op_a_finished());
    let env = app::test_env(&stub.url(), &index, &[("CALDERA_API_KEY", "ADMIN123")]);
    let r = app::start(&env).await;
    wait_op(&s, OP_A_ID, "A settled", |d| d["settled"] == true).await;
    app::stop(r).await;
    assert_eq!(stub.count(Some(RouteKind::Enter), None), 1);
    assert_eq!(stub.count(None, Some(AuthMethod::Key)), 0);
    assert!(stub.count(None, Some(AuthMethod::Session)) >= 3);

    // An expired session is renewed with one more login, still without KEY.
    stub.expire_sessions();
    stub.put_operation(op_d_idle_running());
    let r = app::start(&env).await;
    wait_op(&s, OP_D_ID, "D indexed", |d| d["status"] == "running").await;
    stub.expire_sessions();
    stub.put_operation(op_d_finished());
    wait_op(&s, OP_D_ID, "D finished after session expiry", |d| {
        d["status"] == "finished"
    })
    .await;
    app::stop(r).await;
    assert_eq!(stub.count(None, Some(AuthMethod::Key)), 0);
    assert_eq!(stub.count(Some(RouteKind::Enter), None), 3);
    s.delete_index().await;
}

#[tokio::test]
async fn key_auth_when_no_user() {
    let stub = CalderaStub::start().await;
    let index = unique_index("key-auth");
    let s = Search::new(&index);
    stub.put_operation(op_c_empty_group());
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("CALDERA_USER", ""),
            ("CALDERA_PASSWORD", ""),
            ("CALDERA_API_KEY", "ADMIN123"),
        ],
    );
    let r = app::start(&env).await;
    wait_op(&s, OP_C_ID, "C settled", |d| d["settled"] == true).await;
    app::stop(r).await;
    assert_eq!(stub.count(Some(RouteKind::Enter), None), 0);
    assert_eq!(stub.count(None, Some(AuthMethod::Session)), 0);
    assert!(stub.count(None, Some(AuthMethod::Key)) >= 2);
    s.delete_index().await;
}

#[tokio::test]
async fn caldera_faults_are_survived_and_reported() {
    let stub = CalderaStub::start().await;
    let index = unique_index("faults");
    let s = Search::new(&index);
    stub.put_operation(op_a_progress(3, false));
    stub.inject(
        RouteKind::OperationsList,
        2,
        Fault::Status(
            500,
            "500 Internal Server Error\n\nServer got itself in trouble".into(),
            "text/plain; charset=utf-8",
        ),
    );
    stub.inject(
        RouteKind::Operation,
        1,
        Fault::Body("{\"id\": \"a249d6e7-".into()),
    );
    stub.inject(
        RouteKind::Operation,
        1,
        Fault::Status(
            404,
            "{\"error\": \"Operation not found\"}".into(),
            "application/json; charset=utf-8",
        ),
    );
    stub.inject(
        RouteKind::Operation,
        1,
        Fault::Status(
            422,
            "{\"querystring\": {}}".into(),
            "application/json; charset=utf-8",
        ),
    );
    stub.inject(RouteKind::Operation, 1, Fault::Hang);
    let env = app::test_env(&stub.url(), &index, &[("CALDERA_TIMEOUT", "1")]);
    let r = app::start(&env).await;
    // Despite five faults in a row, the documents arrive.
    wait_for(WAIT, "3 links after faults", || async {
        (link_count(&s, OP_A_ID).await == 3).then_some(())
    })
    .await;
    let (_, h) = app::health(&r).await;
    assert!(
        h["checks"]["pipeline"]["polls_failed"].as_u64().unwrap() >= 2,
        "{h}"
    );

    // A 401 (e.g. the user was removed) is reported in health, and the daemon keeps polling.
    stub.inject(
        RouteKind::OperationsList,
        1000,
        Fault::Status(401, "401: Unauthorized".into(), "text/plain; charset=utf-8"),
    );
    let h = wait_for(WAIT, "health shows the auth failure", || async {
        let (_, h) = app::health(&r).await;
        (h["checks"]["caldera"]["authenticated"] == false).then_some(h)
    })
    .await;
    assert!(
        h["checks"]["caldera"]["last_error"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{h}"
    );
    stub.clear_faults();
    stub.put_operation(op_a_finished());
    wait_op(&s, OP_A_ID, "recovered and finished", |d| {
        d["status"] == "finished"
    })
    .await;
    let (_, h) = app::health(&r).await;
    assert_eq!(h["checks"]["caldera"]["authenticated"], true, "{h}");
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn lifecycle_scenarios_b_c_d_f_and_report_race() {
    let stub = CalderaStub::start().await;
    let index = unique_index("lifecycle");
    let s = Search::new(&index);
    stub.put_operation(op_b_paused());
    stub.put_operation(op_f_queued());
    stub.put_operation(op_d_idle_running());
    stub.put_operation(op_c_empty_group());
    // The report right after creation can answer 500 (recorded with G); C's report is recorded.
    stub.inject(RouteKind::Report, 1, report_race_fault());
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;

    wait_op(&s, OP_B_ID, "B paused", |d| d["status"] == "paused").await;
    for step in op_b_sequence().into_iter().skip(1) {
        let st = step["state"].as_str().unwrap().to_string();
        stub.put_operation(step);
        wait_op(&s, OP_B_ID, &format!("B {st}"), |d| {
            d["status"] == st.as_str()
        })
        .await;
    }
    let b = wait_op(&s, OP_B_ID, "B settled", |d| d["settled"] == true).await;
    assert_eq!(b["link_counts"]["timeout"], 1);
    assert_eq!(b["link_counts"]["error"], 1);
    let links = s.links(OP_B_ID).await;
    assert_eq!(links.len(), op_b_final()["chain"].as_array().unwrap().len());
    let cleanup = links
        .iter()
        .find(|l| l["link_id"] == OP_B_CLEANUP_LINK_ID)
        .unwrap();
    assert_eq!(cleanup["cleanup"], true);
    assert_eq!(cleanup["status"], "success");
    assert!(
        links
            .iter()
            .any(|l| l["status"] == "timeout" && l["status_code"] == 124)
    );
    assert!(
        links
            .iter()
            .any(|l| l["status"] == "error" && l["status_code"] == 1)
    );
    let tactics: BTreeSet<&str> = b["tactics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tactics.contains("collection") && tactics.contains("execution"),
        "{tactics:?}"
    );

    // F: a queued link, then discarded; the operation settles although that link never finishes.
    let f_links = wait_for(WAIT, "F queued link", || async {
        let l = s.links(OP_F_ID).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(f_links[0]["status"], "queued");
    stub.put_operation(op_f_discarded());
    wait_op(&s, OP_F_ID, "F settled", |d| d["settled"] == true).await;
    let f_links = s.links(OP_F_ID).await;
    let discarded = f_links
        .iter()
        .find(|l| l["link_id"] == OP_F_DISCARDED_LINK_ID)
        .unwrap();
    assert_eq!(discarded["status"], "discarded");
    assert_eq!(discarded["status_code"], -2);

    // C: no agents, no links.
    let c = wait_op(&s, OP_C_ID, "C settled", |d| d["settled"] == true).await;
    assert_eq!(c["agent_count"], 0);
    assert_eq!(c["link_counts"]["total"], 0);
    assert_eq!(c["client_id"], "no_such_group");

    // D: auto_close false stays running and is not settled until Caldera says finished.
    let d = wait_op(&s, OP_D_ID, "D running", |d| d["status"] == "running").await;
    assert_eq!(d["auto_close"], false);
    assert_eq!(d["client_id"], "acme_corp");
    assert_eq!(d["settled"], false);
    stub.put_operation(op_d_finished());
    wait_op(&s, OP_D_ID, "D settled", |d| d["settled"] == true).await;

    // The first report call answered 500; C's finish time was filled in on a later poll.
    let c = s.operation(OP_C_ID).await.unwrap();
    assert_eq!(c["finish"], "2026-11-28T15:44:51Z");
    app::stop(r).await;
    s.delete_index().await;
}
