//! Delivery guarantees under faults: the real search server behind a fault-injecting proxy,
//! the Caldera stub, and the sidecar in-process or as the real binary (for SIGKILL).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::app;
use support::caldera_stub::CalderaStub;
use support::proxy::{Mode, Proxy};
use support::scenarios::*;
use support::search::{Search, search_url, unique_index, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");

fn dir_of(env: &[(String, String)], key: &str) -> PathBuf {
    PathBuf::from(&env.iter().find(|(k, _)| k == key).unwrap().1)
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

fn link_ids(op: &Value) -> BTreeSet<String> {
    op["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every link of `op` is in the index exactly once, plus its operation document.
async fn assert_exactly_once(s: &Search, op: &Value) {
    let id = op["id"].as_str().unwrap();
    let want = link_ids(op);
    let got: Vec<String> = s
        .links(id)
        .await
        .iter()
        .map(|l| l["link_id"].as_str().unwrap().to_string())
        .collect();
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), distinct.len(), "duplicated link documents");
    assert_eq!(distinct, want, "lost or foreign link documents");
    assert_eq!(
        s.count(&format!(
            "event.dataset:\"caldera.operation\" AND operation_id:\"{id}\""
        ))
        .await,
        1
    );
}

async fn wait_all(s: &Search, op: &Value, what: &str) {
    let id = op["id"].as_str().unwrap().to_string();
    let n = link_ids(op).len();
    wait_for(WAIT, what, || async {
        (s.links(&id).await.len() == n).then_some(())
    })
    .await;
}

/// A running operation that grows by `step` finished links each time `advance` is called.
struct Growing {
    full: Value,
    done: usize,
}

impl Growing {
    fn new(id: &str, n: usize) -> Self {
        Self {
            full: op_many_links(id, "purple-outage", n),
            done: 0,
        }
    }
    fn advance(&mut self, stub: &CalderaStub, step: usize) {
        self.done = (self.done + step).min(self.len());
        let mut op = self.full.clone();
        let chain: Vec<Value> = self.full["chain"].as_array().unwrap()[..self.done].to_vec();
        op["chain"] = Value::Array(chain);
        op["state"] = json!(if self.done == self.len() {
            "finished"
        } else {
            "running"
        });
        stub.put_operation(op);
    }
    fn len(&self) -> usize {
        self.full["chain"].as_array().unwrap().len()
    }
}

#[tokio::test]
async fn search_server_down_for_a_minute_loses_and_duplicates_nothing() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    let index = unique_index("outage");
    let s = Search::new(&index);
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ELK_URL", &proxy.url()),
            ("BREAKER_FAILURES", "2"),
            ("BREAKER_COOLDOWN", "1"),
            ("BREAKER_MAX_COOLDOWN", "4"),
        ],
    );
    let op_id = "0badc0de-0000-4000-8000-000000000001";
    let mut op = Growing::new(op_id, 60);
    op.advance(&stub, 10);
    let r = app::start(&env).await;
    wait_for(WAIT, "first 10 links", || async {
        (s.links(op_id).await.len() == 10).then_some(())
    })
    .await;

    // Elasticsearch goes away while the operation keeps running.
    proxy.set_mode(Mode::Refuse).await;
    let down_at = Instant::now();
    let mut opened = false;
    while down_at.elapsed() < Duration::from_secs(60) {
        if op.done < op.len() {
            op.advance(&stub, 5);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (code, h) = app::health(&r).await;
        if h["checks"]["circuit_breaker"]["state"] == "open"
            || r.shared.breaker_status().state == "open"
        {
            opened = true;
            assert_eq!(code, 503, "unhealthy while Elasticsearch is down: {h}");
        }
    }
    assert!(opened, "the breaker opened during the outage");
    assert!(
        r.shared.spool_status().documents >= 50,
        "documents were spooled: {:?}",
        r.shared.spool_status()
    );
    assert_eq!(r.shared.stats.documents_failed.get(), 0);

    proxy.set_mode(Mode::Pass).await;
    wait_all(&s, &op.full, "all 60 links after the outage").await;
    wait_for(WAIT, "spool empty, breaker closed", || async {
        let sp = r.shared.spool_status();
        (sp.documents == 0 && r.shared.breaker_status().state == "closed").then_some(())
    })
    .await;
    wait_for(WAIT, "op finished", || async {
        s.operation(op_id)
            .await
            .filter(|d| d["status"] == "finished")
    })
    .await;
    assert_exactly_once(&s, &op.full).await;
    assert!(json_files(&dir_of(&env, "SPOOL_DIR")).is_empty());
    assert!(r.shared.stats.documents_replayed.get() >= 50);
    // Documents sent twice answer 409 (already current): success, never a dead letter.
    assert!(json_files(&dir_of(&env, "DEAD_LETTER_DIR")).is_empty());
    assert_eq!(r.shared.stats.documents_dead_lettered.get(), 0);
    app::stop(r).await;
    s.delete_index().await;
}

/// The sidecar binary as a child process, killed if the test panics first.
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Sidecar {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Sidecar {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn spawn_binary(env: &[(String, String)]) -> Sidecar {
    Sidecar(
        Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .env("LOG_LEVEL", "info")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn kill9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[tokio::test]
async fn sigkill_mid_bulk_with_the_index_up_then_down() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    let index = unique_index("sigkill");
    let s = Search::new(&index);
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ELK_URL", &proxy.url()),
            ("BULK_MAX_DOCS", "200"),
            ("BULK_FLUSH_MS", "5"),
            ("BREAKER_FAILURES", "1"),
        ],
    );
    // Index up: kill while the first bulks of 3,000 link documents are being written.
    let big = op_many_links(
        "0badc0de-0000-4000-8000-000000000002",
        "purple-kill-up",
        3000,
    );
    stub.put_operation(big.clone());
    let mut child = spawn_binary(&env);
    let big_id = big["id"].as_str().unwrap().to_string();
    wait_for(WAIT, "a first bulk acknowledged", || async {
        (!s.links(&big_id).await.is_empty()).then_some(())
    })
    .await;
    // Hold the next bulk request in the proxy, so the kill lands while it is in flight.
    let before = proxy.bulk_requests();
    proxy.set_mode(Mode::Hang).await;
    wait_for(WAIT, "a bulk request in flight", || async {
        (proxy.bulk_requests() > before).then_some(())
    })
    .await;
    kill9(&mut child);
    proxy.set_mode(Mode::Pass).await;
    let partial = s.links(&big_id).await.len();
    assert!(
        partial > 0 && partial < 3000,
        "the kill landed mid-bulk: {partial} of 3000 link documents indexed"
    );
    let mut child = spawn_binary(&env);
    wait_all(&s, &big, "3000 links after restart").await;
    assert_exactly_once(&s, &big).await;
    // The restart re-sent what was indexed before the kill: 409s, never dead letters.
    assert!(json_files(&dir_of(&env, "DEAD_LETTER_DIR")).is_empty());
    kill9(&mut child);

    // Index down: kill while documents are being spooled, then restart with the index back.
    proxy.set_mode(Mode::Refuse).await;
    let big2 = op_many_links(
        "0badc0de-0000-4000-8000-000000000003",
        "purple-kill-down",
        2000,
    );
    stub.put_operation(big2.clone());
    let spool = dir_of(&env, "SPOOL_DIR");
    let mut child = spawn_binary(&env);
    wait_for(WAIT, "spool filling", || async {
        (json_files(&spool).len() >= 200).then_some(())
    })
    .await;
    kill9(&mut child);
    let spooled = json_files(&spool).len();
    assert!(spooled >= 200);
    proxy.set_mode(Mode::Pass).await;
    let mut child = spawn_binary(&env);
    wait_all(&s, &big2, "2000 links after the restart").await;
    wait_for(WAIT, "spool drained", || async {
        json_files(&spool).is_empty().then_some(())
    })
    .await;
    assert_exactly_once(&s, &big2).await;
    assert_exactly_once(&s, &big).await;
    // The spool of the killed run holds older observations than the restarted run indexed:
    // they answer 409 (already current), which is success, never a dead letter.
    assert!(json_files(&dir_of(&env, "DEAD_LETTER_DIR")).is_empty());
    // SIGTERM: graceful stop, exit 0.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    s.delete_index().await;
}

#[tokio::test]
async fn sigterm_with_the_index_down_spools_and_exits_0() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    proxy.set_mode(Mode::Hang).await;
    let index = unique_index("sigterm-down");
    let s = Search::new(&index);
    let env = app::test_env(
        &stub.url(),
        &index,
        &[("ELK_URL", &proxy.url()), ("ELK_CONNECTION_TIMEOUT", "3")],
    );
    stub.put_operation(op_a_finished());
    let mut child = spawn_binary(&env);
    wait_for(WAIT, "bulk hanging", || async {
        (proxy.bulk_requests() >= 1).then_some(())
    })
    .await;
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(35),
        "bounded shutdown: {:?}",
        t.elapsed()
    );
    let spool = dir_of(&env, "SPOOL_DIR");
    assert_eq!(
        json_files(&spool).len(),
        27,
        "everything in flight was spooled"
    );
    // `replay` puts it in by hand, idempotently.
    proxy.set_mode(Mode::Pass).await;
    let out = Command::new(BIN)
        .arg("replay")
        .arg(&spool)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ELK_URL", search_url())
        .env("ELK_INDEX", &index)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("27 indexed"), "{text}");
    assert!(json_files(&spool).is_empty());
    assert_exactly_once(&s, &op_a_finished()).await;
    s.delete_index().await;
}

#[tokio::test]
async fn mapping_errors_go_to_dead_letters_and_are_not_retried() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    let index = unique_index("deadletter");
    let s = Search::new(&index);
    // An index created by someone else, where `paw` is a number: every link document conflicts.
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/{index}", search_url()))
        .json(&json!({"mappings": {"properties": {"paw": {"type": "long"}}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let env = app::test_env(&stub.url(), &index, &[("ELK_URL", &proxy.url())]);
    stub.put_operation(op_a_finished());
    let r = app::start(&env).await;
    let dead = dir_of(&env, "DEAD_LETTER_DIR");
    wait_for(WAIT, "26 dead letters", || async {
        (json_files(&dead).len() == 26).then_some(())
    })
    .await;
    // The operation document has no `paw`: it is indexed.
    wait_for(WAIT, "op doc", || async { s.operation(OP_A_ID).await }).await;
    let letter: Value =
        serde_json::from_slice(&std::fs::read(&json_files(&dead)[0]).unwrap()).unwrap();
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("400") && reason.contains("paw"), "{reason}");
    assert_eq!(letter["document"]["purple_team_exercise"], true);
    let bulks = proxy.bulk_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        proxy.bulk_requests() <= bulks + 1,
        "refused documents are not retried in a loop"
    );
    assert_eq!(r.shared.stats.documents_dead_lettered.get(), 26);
    assert_eq!(r.shared.spool_status().dead_letters, 26);
    app::stop(r).await;

    // After fixing the index, the dead letters replay by hand.
    s.delete_index().await;
    let out = Command::new(BIN)
        .arg("replay")
        .arg(&dead)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ELK_URL", search_url())
        .env("ELK_INDEX", &index)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("26 indexed"), "{text}");
    assert_eq!(s.links(OP_A_ID).await.len(), 26);
    s.delete_index().await;
}

#[tokio::test]
async fn a_lost_bulk_answer_is_retried_and_its_409s_are_not_dead_letters() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    let index = unique_index("lost-answer");
    let s = Search::new(&index);
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ELK_URL", &proxy.url()),
            ("ELK_CONNECTION_TIMEOUT", "2"),
            ("BREAKER_FAILURES", "10"),
        ],
    );
    // Every document of the first bulk is indexed, but the sidecar never hears it: it retries
    // the same observations, and the index answers 409 (already current) for each.
    proxy.lose_bulk_answers(1);
    stub.put_operation(op_a_finished());
    let r = app::start(&env).await;
    wait_all(&s, &op_a_finished(), "26 links").await;
    wait_for(WAIT, "the retry answered 409", || async {
        (r.shared.stats.documents_already_current.get() > 0).then_some(())
    })
    .await;
    assert_exactly_once(&s, &op_a_finished()).await;
    assert!(
        json_files(&dir_of(&env, "DEAD_LETTER_DIR")).is_empty(),
        "a 409 is success, never a dead letter"
    );
    assert_eq!(r.shared.stats.documents_dead_lettered.get(), 0);
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn throttling_is_retried_and_a_hanging_server_opens_the_breaker() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    let index = unique_index("throttle");
    let s = Search::new(&index);
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ELK_URL", &proxy.url()),
            ("ELK_CONNECTION_TIMEOUT", "1"),
            ("BREAKER_FAILURES", "3"),
            ("BREAKER_COOLDOWN", "1"),
            ("ELK_MAX_RETRIES", "5"),
        ],
    );
    // Bulk requests: two whole-request 503s, then two answers refusing every item with 429.
    proxy.fail_next(2, 503, r#"{"error":"unavailable"}"#);
    proxy.reject_bulk_items(2, 429);
    stub.put_operation(op_a_finished());
    let r = app::start(&env).await;
    wait_all(&s, &op_a_finished(), "26 links despite 503 and 429").await;
    // The operation document may come out of the spool after its links (the breaker opened).
    wait_for(WAIT, "op doc", || async { s.operation(OP_A_ID).await }).await;
    assert_exactly_once(&s, &op_a_finished()).await;
    assert!(r.shared.stats.documents_retried.get() > 0);
    assert!(json_files(&dir_of(&env, "DEAD_LETTER_DIR")).is_empty());

    // A server that accepts and never answers: timeouts open the breaker.
    proxy.set_mode(Mode::Hang).await;
    stub.put_operation(op_c_empty_group());
    stub.put_operation(op_b_final());
    wait_for(WAIT, "breaker open through timeouts", || async {
        (r.shared.breaker_status().state == "open").then_some(())
    })
    .await;
    assert!(
        r.shared
            .elastic_status()
            .last_error
            .unwrap_or_default()
            .contains("timeout")
    );
    proxy.set_mode(Mode::Pass).await;
    wait_all(&s, &op_b_final(), "B after the hang").await;
    wait_for(WAIT, "breaker closed", || async {
        (r.shared.breaker_status().state == "closed" && r.shared.spool_status().documents == 0)
            .then_some(())
    })
    .await;
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn full_spool_keeps_what_it_has_and_recovers() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    proxy.set_mode(Mode::Refuse).await;
    let index = unique_index("spoolfull");
    let s = Search::new(&index);
    // A spool cap of 8 KB: a few link documents fit, most do not.
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ELK_URL", &proxy.url()),
            ("SPOOL_MAX_MB", "0.008"),
            ("BREAKER_FAILURES", "1"),
            ("BREAKER_COOLDOWN", "1"),
        ],
    );
    stub.put_operation(op_a_finished());
    let r = app::start(&env).await;
    let spool = dir_of(&env, "SPOOL_DIR");
    let st = wait_for(WAIT, "spool full reported", || async {
        let st = r.shared.spool_status();
        st.full.then_some(st)
    })
    .await;
    assert!(st.last_error.unwrap().contains("SPOOL_MAX_MB"));
    let kept: BTreeSet<PathBuf> = json_files(&spool).into_iter().collect();
    assert!(!kept.is_empty() && kept.len() < 27, "{} files", kept.len());
    let (_, h) = app::health(&r).await;
    assert_ne!(h["status"], "healthy");
    // Still polling Caldera, and nothing already spooled was touched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still: BTreeSet<PathBuf> = json_files(&spool).into_iter().collect();
    assert!(kept.is_subset(&still));

    proxy.set_mode(Mode::Pass).await;
    wait_all(&s, &op_a_finished(), "everything once space is back").await;
    wait_for(WAIT, "op doc", || async { s.operation(OP_A_ID).await }).await;
    wait_for(WAIT, "spool empty", || async {
        json_files(&spool).is_empty().then_some(())
    })
    .await;
    assert_exactly_once(&s, &op_a_finished()).await;
    assert!(!r.shared.spool_status().full);
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn replay_accepts_reference_plugin_fallback_files() {
    let index = unique_index("fallback");
    let s = Search::new(&index);
    let dir = tempfile::tempdir().unwrap();
    let file = json!({
        "operation_id": OP_A_ID, "operation_name": "purple-discovery-red", "purple_team_exercise": true,
        "tags": ["purple_team", "simulation"], "client_id": "red", "timestamp": "2026-11-28T15:45:45Z",
        "techniques": ["T1033", "T1057"], "tactics": ["discovery"], "severity": "low",
        "auto_close": true, "agent_count": 1, "status": "finished"
    });
    std::fs::write(
        dir.path().join("fallback_20261128154545_a249d6e7.json"),
        file.to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fallback_20261128154546_broken.json"),
        "{not json",
    )
    .unwrap();
    let run = || {
        Command::new(BIN)
            .args(["replay", "--keep"])
            .arg(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ELK_URL", search_url())
            .env("ELK_INDEX", &index)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    };
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "one unreadable file: {text}");
    assert!(
        text.contains("1 indexed") && text.contains("1 unreadable"),
        "{text}"
    );
    let doc = s.operation(OP_A_ID).await.unwrap();
    assert_eq!(doc["client_id"], "red");
    assert_eq!(doc["techniques"], json!(["T1033", "T1057"]));
    assert_eq!(doc["threat"]["technique"]["id"], json!(["T1033", "T1057"]));
    // Idempotent: a second run finds it already present.
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 indexed, 1 already present"), "{text}");
    assert_eq!(s.count("*").await, 1);
    s.delete_index().await;
}
