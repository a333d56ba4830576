//! Correlation of SIEM alerts with links: the daemon and the `correlate` command against the
//! real search server, with the labelled corpus of `support::alerts`; the seq_no guard; the
//! Kibana backend's request shapes against a local HTTP server (no real Kibana here).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::alerts::{self, Corpus, Labelled, Shape};
use support::app;
use support::caldera_stub::CalderaStub;
use support::scenarios::OP_A_ID;
use support::search::{Search, search_url, unique_index, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");
const ALL_LINKS: usize = 78;

struct Setup {
    stub: CalderaStub,
    corpus: Corpus,
    index: String,
    alert_index: String,
    corr_index: String,
}

async fn setup(name: &str) -> Setup {
    let stub = CalderaStub::start().await;
    let corpus = alerts::corpus();
    for op in &corpus.operations {
        stub.put_operation(op.clone());
    }
    let alert_index = unique_index(&format!("{name}-alerts"));
    alerts::index_alerts(&search_url(), &alert_index, &corpus.alerts).await;
    Setup {
        stub,
        corpus,
        index: unique_index(name),
        corr_index: unique_index(&format!("{name}-detections")),
        alert_index,
    }
}

impl Setup {
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut e = vec![
            ("CORRELATION_ENABLED", "true"),
            ("ALERT_INDEX", self.alert_index.as_str()),
            ("CORRELATION_INDEX", self.corr_index.as_str()),
            ("CORRELATION_INTERVAL", "0.5"),
        ];
        e.extend_from_slice(extra);
        app::test_env(&self.stub.url(), &self.index, &e)
    }

    async fn alert(&self, id: &str) -> Value {
        let v: Value = reqwest::get(format!("{}/{}/_doc/{id}", search_url(), self.alert_index))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["_source"].clone()
    }

    async fn records(&self) -> Vec<Value> {
        Search::new(&self.corr_index)
            .hits("*")
            .await
            .into_iter()
            .map(|h| h["_source"].clone())
            .collect()
    }

    async fn links_complete(&self) -> usize {
        Search::new(&self.index)
            .count("event.dataset:\"caldera.link\" AND detection.complete:true")
            .await
    }
}

fn status(a: &Value) -> &str {
    a["kibana.alert.workflow_status"].as_str().unwrap_or("")
}

fn tags(a: &Value) -> Vec<String> {
    a["kibana.alert.workflow_tags"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn cause_op(c: &Corpus, link: &str) -> String {
    c.operations
        .iter()
        .find(|o| {
            o["chain"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["id"] == link)
        })
        .map(|o| o["id"].as_str().unwrap().to_string())
        .unwrap()
}

fn tier_of(records: &[Value], alert: &str) -> Option<u64> {
    records
        .iter()
        .filter(|r| r["alert"]["uuid"] == alert)
        .filter_map(|r| r["match"]["tier"].as_u64())
        .min()
}

/// Prints precision/recall per tier and shape, and asserts the targets of the issue.
fn check_scores(corpus: &[Labelled], records: &[Value]) {
    for shape in [
        None,
        Some(Shape::DefendLinux),
        Some(Shape::DefendWindows),
        Some(Shape::Sysmon),
        Some(Shape::Auditd),
    ] {
        let t1 = alerts::score(corpus, records, &[1], shape, true);
        let t12 = alerts::score(corpus, records, &[1, 2], shape, false);
        let t2 = alerts::score(corpus, records, &[2], shape, false);
        println!(
            "{:<24} tier1 P {:.3} R(lineage) {:.3} ({}/{}) | tier2 P {:.3} | tiers1+2 P {:.3} R {:.3} ({}/{})",
            shape.map_or("all", Shape::name),
            t1.precision(),
            t1.recall(),
            t1.found,
            t1.relevant,
            t2.precision(),
            t12.precision(),
            t12.recall(),
            t12.found,
            t12.relevant
        );
    }
    let t1 = alerts::score(corpus, records, &[1], None, true);
    let t12 = alerts::score(corpus, records, &[1, 2], None, false);
    assert_eq!(t1.precision(), 1.0, "tier 1 precision");
    assert!(t1.recall() >= 0.95, "tier 1 recall {}", t1.recall());
    assert!(t12.recall() >= 0.98, "tier 1+2 recall {}", t12.recall());
    assert!(
        t1.matched > 50,
        "the corpus exercises tier 1: {}",
        t1.matched
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_correlates_the_corpus_and_closes_only_certain_alerts() {
    let s = setup("corr-daemon").await;
    let r = app::start(&s.env(&[])).await;
    wait_for(WAIT, "every link correlated", || async {
        (s.links_complete().await == ALL_LINKS).then_some(())
    })
    .await;
    let records = s.records().await;
    check_scores(&s.corpus.alerts, &records);

    // The actions' effects on the alert documents.
    for a in &s.corpus.alerts {
        let doc = s.alert(&a.id).await;
        let tier = tier_of(&records, &a.id);
        if a.malformed {
            assert!(tier.is_none(), "{}: malformed alerts are skipped", a.case);
            continue;
        }
        if a.handled {
            assert_eq!(status(&doc), "acknowledged", "{}", a.case);
            assert!(
                tags(&doc).is_empty(),
                "an analyst's alert is not even tagged"
            );
            continue;
        }
        if tier == Some(1) {
            let cause = a
                .cause
                .as_deref()
                .expect("tier 1 is always a simulation alert");
            assert_eq!(status(&doc), "closed", "{}", a.case);
            let t = tags(&doc);
            for want in [
                "purple_team_exercise".to_string(),
                format!("caldera:link:{cause}"),
                format!("caldera:operation:{}", cause_op(&s.corpus, cause)),
            ] {
                assert!(t.contains(&want), "{}: {want} in {t:?}", a.case);
            }
            assert!(doc["kibana.alert.workflow_status_updated_at"].is_string());
        } else {
            assert_eq!(
                status(&doc),
                "open",
                "{} (tier {tier:?}) stays open",
                a.case
            );
            assert!(tags(&doc).is_empty(), "{}", a.case);
        }
        if a.cause.is_none() {
            assert_eq!(
                status(&doc),
                "open",
                "{}: not a simulation, never changed",
                a.case
            );
        }
    }
    // Records carry what the report and an auditor need.
    let rec = records.iter().find(|r| r["match"]["tier"] == 1).unwrap();
    for f in ["operation_id", "link_id", "technique_id", "tactic"] {
        assert!(rec[f].is_string(), "{f} in {rec}");
    }
    assert_eq!(rec["purple_team_exercise"], true);
    // The victim clock 3 s ahead: alerts late in a link are still inside its window.
    let late: Vec<&Labelled> = s
        .corpus
        .alerts
        .iter()
        .filter(|a| a.case.starts_with("late child"))
        .collect();
    assert!(!late.is_empty());
    for a in late {
        assert_eq!(tier_of(&records, &a.id), Some(1), "{}", a.case);
    }
    assert_eq!(rec["action"]["result"], "applied");
    assert!(
        records
            .iter()
            .any(|r| r["action"]["result"] == "skipped_handled")
    );
    assert!(
        records
            .iter()
            .any(|r| r["match"]["tier"] == 3 && r["action"]["result"] == "not_acted")
    );

    // detection.* on link and operation documents.
    let idx = Search::new(&s.index);
    let links = idx.links(OP_A_ID).await;
    let first = links
        .iter()
        .find(|l| l["link_id"] == s.corpus.operations[0]["chain"][0]["id"])
        .unwrap();
    assert_eq!(first["detection"]["status"], "detected", "{first}");
    assert!(first["detection"]["alert_count"].as_u64().unwrap() >= 1);
    assert!(
        first["detection"]["rules"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(first["detection"]["first_alert_at"].is_string());
    assert!(first["detection"]["time_to_detect_ms"].as_i64().unwrap() >= 0);
    let x_pid1 = s.corpus.operations[2]["chain"][3]["id"].as_str().unwrap();
    let l = idx.hits(&format!("link_id:\"{x_pid1}\"")).await;
    assert_eq!(
        l[0]["_source"]["detection"]["status"], "not_detected",
        "pid 1: nothing ran"
    );
    let op = wait_for(WAIT, "operation summary", || async {
        idx.operation(OP_A_ID)
            .await
            .filter(|o| o["detection"]["techniques_total"].is_u64())
    })
    .await;
    let total = op["detection"]["techniques_total"].as_u64().unwrap();
    assert_eq!(total, op["technique_count_total"].as_u64().unwrap());
    assert!(op["detection"]["techniques_detected"].as_u64().unwrap() >= 1);
    // Stamped when it changed: what makes the report writer redo the report.
    assert!(
        op["detection"]["sequence"].as_u64().unwrap() > op["sidecar"]["sequence"].as_u64().unwrap(),
        "{}",
        op["detection"]
    );

    // A watcher-style whole re-index (newer external version, no detection fields) loses
    // nothing for long: the stage writes the same fields back.
    let hit = &l[0];
    let mut doc = hit["_source"].clone();
    let detection = doc["detection"].clone();
    doc.as_object_mut().unwrap().remove("detection");
    let version = doc["sidecar"]["sequence"].as_u64().unwrap() + 10;
    let put = reqwest::Client::new()
        .put(format!(
            "{}/{}/_doc/{}?version={version}&version_type=external&refresh=true",
            search_url(),
            s.index,
            hit["_id"].as_str().unwrap()
        ))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    let back = wait_for(WAIT, "detection re-applied", || async {
        let h = idx.hits(&format!("link_id:\"{x_pid1}\"")).await;
        h.first()
            .map(|h| h["_source"]["detection"].clone())
            .filter(|d| d.is_object())
    })
    .await;
    assert_eq!(back, detection);

    // Health and metrics.
    let (_, h) = app::health(&r).await;
    let c = &h["checks"]["correlation"];
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(c["state"], "running");
    assert!(c["alerts_malformed"].as_u64().unwrap() >= 3, "{c}");
    let m = reqwest::get(format!("http://{}/metrics", r.health_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("caldera_sidecar_correlation_matches_total{tier=\"1\"}"));
    assert!(m.contains(
        "caldera_sidecar_correlation_actions_total{action=\"close\",result=\"applied\"}"
    ));
    app::stop(r).await;
}

fn run_cli(env: &[(String, String)], args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .envs(env.iter().cloned())
        .arg("correlate")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlate_command_dry_run_then_act_and_never_reclose_a_reopened_alert() {
    let s = setup("corr-cli").await;
    // The daemon only indexes the links here.
    let env = s.env(&[("CORRELATION_ENABLED", "false")]);
    let r = app::start(&env).await;
    let idx = Search::new(&s.index);
    wait_for(WAIT, "links indexed", || async {
        (idx.count("event.dataset:\"caldera.link\"").await == ALL_LINKS).then_some(())
    })
    .await;
    app::stop(r).await;

    let (ok, out) = run_cli(&env, &["--operation", OP_A_ID, "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("would_apply"), "{out}");
    assert!(out.contains("tier 1: process.parent.pid"), "{out}");
    assert!(out.contains("dry run: 26 links"), "{out}");
    for a in s
        .corpus
        .alerts
        .iter()
        .filter(|a| !a.handled && !a.malformed)
    {
        assert_eq!(
            status(&s.alert(&a.id).await),
            "open",
            "dry run changed {}",
            a.case
        );
    }
    let head = reqwest::Client::new()
        .head(format!("{}/{}", search_url(), s.corr_index))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 404, "dry run wrote records");

    let (ok, out) = run_cli(&env, &["--operation", OP_A_ID]);
    assert!(ok, "{out}");
    assert!(out.contains("applied"), "{out}");
    let records = s.records().await;
    let closed = s
        .corpus
        .alerts
        .iter()
        .find(|a| {
            a.shape == Shape::DefendLinux
                && a.lineage
                && !a.handled
                && tier_of(&records, &a.id) == Some(1)
        })
        .unwrap();
    assert_eq!(status(&s.alert(&closed.id).await), "closed");
    // Windows alerts belong to another operation: untouched by --operation A.
    let win = s
        .corpus
        .alerts
        .iter()
        .find(|a| a.shape == Shape::DefendWindows)
        .unwrap();
    assert_eq!(status(&s.alert(&win.id).await), "open");

    // An analyst re-opens one alert we closed: the next run leaves it open.
    let mut doc = s.alert(&closed.id).await;
    doc["kibana.alert.workflow_status"] = json!("open");
    let put = reqwest::Client::new()
        .put(format!(
            "{}/{}/_doc/{}?refresh=true",
            search_url(),
            s.alert_index,
            closed.id
        ))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let (ok, out) = run_cli(&env, &["--operation", OP_A_ID]);
    assert!(ok, "{out}");
    assert!(out.contains("skipped_reopened"), "{out}");
    assert_eq!(
        status(&s.alert(&closed.id).await),
        "open",
        "never re-closed"
    );
}

#[tokio::test]
async fn seq_no_guard_lets_a_concurrent_analyst_change_win() {
    use caldera_sidecar::correlate::action::{Change, Outcome};
    use caldera_sidecar::correlate::alert::Alert;
    use caldera_sidecar::correlate::backend::elasticsearch::apply;
    let index = unique_index("corr-guard");
    let corpus = alerts::corpus();
    let one = corpus.alerts.iter().find(|a| a.lineage).unwrap().clone();
    alerts::index_alerts(&search_url(), &index, std::slice::from_ref(&one)).await;
    let hits = Search::new(&index)
        .search(json!({"seq_no_primary_term": true, "query": {"match_all": {}}}))
        .await;
    let stale = Alert::from_hit(&hits["hits"]["hits"][0]).unwrap();
    // The analyst acknowledges it after our read.
    let mut doc = one.source.clone();
    doc["kibana.alert.workflow_status"] = json!("acknowledged");
    reqwest::Client::new()
        .put(format!(
            "{}/{index}/_doc/{}?refresh=true",
            search_url(),
            one.id
        ))
        .json(&doc)
        .send()
        .await
        .unwrap();
    let es = caldera_sidecar::sink::elastic::build_client(
        &app::settings(&app::test_env("http://127.0.0.1:1", &index, &[])).elastic,
    )
    .unwrap();
    let change = Change {
        status: Some("closed"),
        tags: vec!["purple_team_exercise".into()],
        added: vec!["purple_team_exercise".into()],
    };
    let out = apply(&es, &[(&stale, &change)], Duration::from_secs(10)).await;
    assert_eq!(out[0].0, Outcome::Conflict, "{out:?}");
    let v: Value = reqwest::get(format!("{}/{index}/_doc/{}", search_url(), one.id))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["_source"]["kibana.alert.workflow_status"], "acknowledged");
    assert!(tags(&v["_source"]).is_empty());
    Search::new(&index).delete_index().await;
}

#[tokio::test]
async fn kibana_backend_sends_the_documented_requests() {
    use axum::extract::State;
    use axum::http::{HeaderMap, Uri};
    use caldera_sidecar::correlate::action::{Change, Outcome};
    use caldera_sidecar::correlate::alert::Alert;
    use caldera_sidecar::correlate::backend::kibana::KibanaClient;
    use caldera_sidecar::correlate::settings::KibanaSettings;

    type Seen = Arc<Mutex<Vec<(String, HeaderMap, Value)>>>;
    let seen: Seen = Arc::default();
    async fn handle(
        State(seen): State<Seen>,
        uri: Uri,
        headers: HeaderMap,
        body: String,
    ) -> axum::Json<Value> {
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let n = v["signal_ids"]
            .as_array()
            .or(v["ids"].as_array())
            .map_or(0, Vec::len);
        seen.lock()
            .unwrap()
            .push((uri.path().to_string(), headers, v));
        axum::Json(json!({"updated": n, "version_conflicts": 0, "failures": []}))
    }
    let app = axum::Router::new()
        .fallback(axum::routing::post(handle))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = KibanaClient::new(
        &KibanaSettings {
            url: format!("http://{addr}/").parse().unwrap(),
            api_key: Some(caldera_sidecar::config::Secret::new("a2V5OnNlY3JldA==")),
            space: "purple".into(),
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let alert = |id: &str| {
        Alert::from_hit(&json!({"_index": ".internal.alerts-security.alerts-purple-000001", "_id": id,
            "_source": {"kibana.alert.uuid": id, "kibana.alert.original_time": "2026-11-28T15:41:48Z", "host.name": "vm"}}))
        .unwrap()
    };
    let (a1, a2, a3) = (alert("a1"), alert("a2"), alert("a3"));
    let ours = |link: &str| {
        vec![
            "purple_team_exercise".to_string(),
            format!("caldera:link:{link}"),
        ]
    };
    let c1 = Change {
        status: Some("closed"),
        tags: ours("l1"),
        added: ours("l1"),
    };
    let c2 = Change {
        status: Some("closed"),
        tags: ours("l2"),
        added: ours("l2"),
    };
    let out = client.apply(&[(&a1, &c1), (&a2, &c1), (&a3, &c2)]).await;
    assert!(out.iter().all(|o| o.0 == Outcome::Applied), "{out:?}");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two tag sets, one status: {seen:?}");
    for (path, headers, _) in &seen {
        assert!(
            path.starts_with("/s/purple/api/detection_engine/signals/"),
            "{path}"
        );
        assert_eq!(headers["kbn-xsrf"], "true");
        assert_eq!(headers["authorization"], "ApiKey a2V5OnNlY3JldA==");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
    let tag_calls: Vec<&Value> = seen
        .iter()
        .filter(|s| s.0.ends_with("/signals/tags"))
        .map(|s| &s.2)
        .collect();
    assert_eq!(tag_calls.len(), 2);
    assert!(tag_calls.contains(
        &&json!({"ids": ["a1", "a2"], "tags": {"tags_to_add": ours("l1"), "tags_to_remove": []}})
    ));
    assert!(tag_calls.contains(
        &&json!({"ids": ["a3"], "tags": {"tags_to_add": ours("l2"), "tags_to_remove": []}})
    ));
    let status: Vec<&Value> = seen
        .iter()
        .filter(|s| s.0.ends_with("/signals/status"))
        .map(|s| &s.2)
        .collect();
    assert_eq!(
        status,
        vec![&json!({"signal_ids": ["a1", "a2", "a3"], "status": "closed"})]
    );

    // Kibana down: every alert is failed (and retried next pass), nothing panics.
    let down = KibanaClient::new(
        &KibanaSettings {
            url: "http://127.0.0.1:1/".parse().unwrap(),
            api_key: None,
            space: "default".into(),
        },
        Duration::from_secs(2),
    )
    .unwrap();
    let out = down.apply(&[(&a1, &c1)]).await;
    assert_eq!(out[0].0, Outcome::Failed);
    assert!(
        !out[0].1.as_deref().unwrap_or("").contains("a2V5"),
        "no key in errors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_alert_index_idles_and_health_says_why() {
    let stub = CalderaStub::start().await;
    let index = unique_index("corr-idle");
    let missing = unique_index("no-such-alerts");
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("CORRELATION_ENABLED", "true"),
            ("ALERT_INDEX", missing.as_str()),
            ("CORRELATION_INTERVAL", "0.3"),
        ],
    );
    let r = app::start(&env).await;
    let c = wait_for(WAIT, "correlation idle", || async {
        let (_, h) = app::health(&r).await;
        let c = h["checks"]["correlation"].clone();
        (c["state"] == "idle").then_some(c)
    })
    .await;
    assert_eq!(c["status"], "ok");
    assert!(c["reason"].as_str().unwrap().contains("ALERT_INDEX"), "{c}");
    app::stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_alerts_are_found_while_the_link_waits() {
    let s = setup("corr-late").await;
    // Op A's second link: its only alerts are its own (the first one also has an attacker's
    // `whoami` in its window, a tier-2 match).
    let first = s.corpus.operations[0]["chain"][1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The link's alerts are not there yet: the rule has not run.
    let late: Vec<Labelled> = s
        .corpus
        .alerts
        .iter()
        .filter(|a| a.cause.as_deref() == Some(first.as_str()) && !a.handled)
        .cloned()
        .collect();
    assert!(!late.is_empty());
    for a in &late {
        reqwest::Client::new()
            .delete(format!(
                "{}/{}/_doc/{}?refresh=true",
                search_url(),
                s.alert_index,
                a.id
            ))
            .send()
            .await
            .unwrap();
    }
    // Four days after the recording, a week of ALERT_WAIT keeps every link waiting.
    let r = app::start(&s.env(&[("ALERT_WAIT", "604800")])).await;
    let idx = Search::new(&s.index);
    let detection = |idx: &Search| {
        let first = first.clone();
        let idx = Search::new(&idx.index);
        async move {
            idx.hits(&format!("link_id:\"{first}\""))
                .await
                .first()
                .map(|h| h["_source"]["detection"].clone())
                .filter(|d| d.is_object())
        }
    };
    let d = wait_for(WAIT, "link pending", || detection(&idx)).await;
    assert_eq!(d["status"], "pending", "{d}");
    assert_eq!(d["complete"], false);

    // The rule runs late: the next pass finds the alert and acts on it.
    for a in &late {
        reqwest::Client::new()
            .put(format!(
                "{}/{}/_doc/{}?refresh=true",
                search_url(),
                s.alert_index,
                a.id
            ))
            .json(&a.source)
            .send()
            .await
            .unwrap();
    }
    let d = wait_for(WAIT, "link detected", || async {
        detection(&idx).await.filter(|d| d["status"] == "detected")
    })
    .await;
    assert_eq!(
        d["alert_count"].as_u64().unwrap(),
        late.iter().filter(|a| a.cause.is_some()).count() as u64
    );
    assert_eq!(
        d["complete"], false,
        "still waiting for more until ALERT_WAIT"
    );
    let tier1 = late.iter().find(|a| a.lineage).unwrap();
    wait_for(WAIT, "late alert closed", || async {
        (status(&s.alert(&tier1.id).await) == "closed").then_some(())
    })
    .await;
    app::stop(r).await;
}
