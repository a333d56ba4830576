//! Checks that the Caldera stub (tests/support/caldera_stub.rs) and the scenarios
//! (tests/support/scenarios.rs) behave like the recordings in tests/fixtures/caldera.

mod support;

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use reqwest::{Client, StatusCode, redirect};
use serde_json::{Value, json};
use support::caldera_stub::{AuthMethod, CalderaStub, Fault, JSON_CT, RouteKind, TEXT_CT};
use support::scenarios::{self, fixture, fixture_error};

const KEY: &str = "ADMIN123";

fn client() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

fn cookie_client() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

async fn get_key(stub: &CalderaStub, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", stub.url()))
        .header("KEY", KEY)
        .send()
        .await
        .unwrap()
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Assert a response equals a recorded `error_*.json` wrapper.
async fn assert_recorded_error(r: reqwest::Response, name: &str) {
    let rec = fixture_error(name);
    assert_eq!(r.status().as_u16(), rec.status, "{name}: status");
    assert_eq!(content_type(&r), rec.content_type, "{name}: content type");
    let body = r.text().await.unwrap();
    match &rec.body {
        Value::String(s) => assert_eq!(&body, s, "{name}: body"),
        v => assert_eq!(
            &serde_json::from_str::<Value>(&body).unwrap(),
            v,
            "{name}: body"
        ),
    }
}

async fn json_ok(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(content_type(&r), JSON_CT);
    r.json().await.unwrap()
}

async fn login(stub: &CalderaStub, c: &Client, user: &str, pass: &str) -> reqwest::Response {
    c.post(format!("{}/enter", stub.url()))
        .form(&[("username", user), ("password", pass)])
        .send()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// auth
// ---------------------------------------------------------------------------

#[tokio::test]
async fn no_key_and_wrong_key_give_recorded_401() {
    let stub = CalderaStub::start().await;
    let c = client();
    let r = c
        .get(format!("{}/api/v2/operations", stub.url()))
        .send()
        .await
        .unwrap();
    assert_recorded_error(r, "error_401_no_key.json").await;
    let r = c
        .get(format!("{}/api/v2/operations", stub.url()))
        .header("KEY", "WRONGKEY")
        .send()
        .await
        .unwrap();
    assert_recorded_error(r, "error_401_wrong_key.json").await;
    // health needs the key too
    let r = c
        .get(format!("{}/api/v2/health", stub.url()))
        .send()
        .await
        .unwrap();
    assert_recorded_error(r, "error_401_no_key.json").await;
}

#[tokio::test]
async fn key_gives_recorded_health_and_agents() {
    let stub = CalderaStub::start().await;
    assert_eq!(
        json_ok(get_key(&stub, "/api/v2/health").await).await,
        fixture("health.json")
    );
    // As in Caldera, `status` is computed at each read: the recorded agents were last seen
    // long ago, so they are dead now; everything else is served as recorded.
    let mut recorded = fixture("agents.json");
    for a in recorded.as_array_mut().unwrap() {
        a["status"] = json!("dead");
    }
    assert_eq!(
        json_ok(get_key(&stub, "/api/v2/agents").await).await,
        recorded
    );
    assert_eq!(
        json_ok(get_key(&stub, "/api/v2/operations").await).await,
        json!([])
    );
}

#[tokio::test]
async fn deploy_commands_and_agents_config_as_caldera_serves_them() {
    let stub = CalderaStub::start().await;
    let no_key = reqwest::get(format!("{}/api/v2/deploy_commands", stub.url()))
        .await
        .unwrap();
    assert_eq!(no_key.status().as_u16(), 401);
    assert_eq!(
        json_ok(get_key(&stub, "/api/v2/deploy_commands").await).await,
        fixture("deploy_commands.json")
    );
    let cfg = json_ok(get_key(&stub, "/api/v2/config/agents").await).await;
    assert_eq!(cfg["untrusted_timer"], 90);
    assert_eq!(cfg["implant_name"], "splunkd");
    assert!(cfg.get("app.contact.ftp.pword").is_none());
    let r = get_key(&stub, "/api/v2/config/nope").await;
    assert_eq!(r.status().as_u16(), 404);
    // A fresh agent is alive until sleep_max + untrusted_timer have passed.
    let mut agents = fixture("agents.json");
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    agents[0]["last_seen"] = json!(now.format(&fmt).unwrap());
    agents[1]["last_seen"] = json!((now - time::Duration::seconds(151)).format(&fmt).unwrap());
    stub.set_agents(agents);
    let got = json_ok(get_key(&stub, "/api/v2/agents?include=paw&include=status").await).await;
    assert_eq!(got[0], json!({"paw": "lktrus", "status": "alive"}));
    assert_eq!(got[1], json!({"paw": "nnxppn", "status": "dead"}));
}

#[tokio::test]
async fn set_api_key_changes_the_accepted_key() {
    let stub = CalderaStub::start().await;
    stub.set_api_key("OTHER");
    assert_eq!(get_key(&stub, "/api/v2/health").await.status(), 401);
    let r = client()
        .get(format!("{}/api/v2/health", stub.url()))
        .header("KEY", "OTHER")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn login_sets_cookie_and_api_works_with_cookie_only() {
    let stub = CalderaStub::start().await;
    let c = cookie_client();
    let r = login(&stub, &c, "admin", "admin-pass").await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], "/");
    let cookies: Vec<String> = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let ck = &cookies[0];
    assert!(ck.starts_with("API_SESSION=\"gAAAAA"), "{ck}");
    assert!(ck.contains("; HttpOnly; Max-Age=604800; Path=/"), "{ck}");
    assert!(ck.contains("; expires="), "{ck}");
    assert_eq!(stub.session_count(), 1);

    stub.put_operation(scenarios::op_c_empty_group());
    let r = c
        .get(format!("{}/api/v2/operations", stub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(r).await, json!([scenarios::op_c_empty_group()]));
    let r = c
        .get(format!("{}/api/v2/health", stub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(r).await, fixture("health.json"));
    assert_eq!(
        stub.count(Some(RouteKind::OperationsList), Some(AuthMethod::Session)),
        1
    );
    assert_eq!(stub.count(Some(RouteKind::Enter), None), 1);

    // Unquoted cookie value is accepted too (aiohttp unquotes).
    let token = ck
        .strip_prefix("API_SESSION=\"")
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = client()
        .get(format!("{}/api/v2/health", stub.url()))
        .header("Cookie", format!("API_SESSION={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // expire_sessions → 401 next time
    stub.expire_sessions();
    let r = c
        .get(format!("{}/api/v2/operations", stub.url()))
        .send()
        .await
        .unwrap();
    assert_recorded_error(r, "error_401_no_key.json").await;
    assert_eq!(
        stub.count(Some(RouteKind::OperationsList), Some(AuthMethod::None)),
        1
    );
}

#[tokio::test]
async fn login_redirect_followed_lands_on_200_page() {
    let stub = CalderaStub::start().await;
    let c = Client::builder().cookie_store(true).build().unwrap();
    let r = login(&stub, &c, "admin", "admin-pass").await;
    assert_eq!(r.status(), 200);
    assert!(content_type(&r).starts_with("text/html"));
    let r = c
        .get(format!("{}/api/v2/health", stub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn failed_login_is_302_without_cookie() {
    let stub = CalderaStub::start().await;
    stub.add_user("blue", "blue-pass");
    let c = cookie_client();
    for (u, p) in [
        ("admin", "wrong"),
        ("nobody", "admin-pass"),
        ("admin", ""),
        ("", ""),
    ] {
        let r = login(&stub, &c, u, p).await;
        assert_eq!(r.status(), StatusCode::FOUND, "{u}/{p}");
        assert_eq!(r.headers()[LOCATION], "/");
        assert!(r.headers().get(SET_COOKIE).is_none(), "{u}/{p}");
    }
    // JSON body is not a form: Caldera's request.post() sees no fields.
    let r = c
        .post(format!("{}/enter", stub.url()))
        .json(&json!({"username": "admin", "password": "admin-pass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(r.headers().get(SET_COOKIE).is_none());
    let r = c
        .get(format!("{}/api/v2/health", stub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // added user can log in
    let r = login(&stub, &c, "blue", "blue-pass").await;
    assert!(r.headers().get(SET_COOKIE).is_some());
}

#[tokio::test]
async fn key_header_counts_as_key_even_with_session() {
    let stub = CalderaStub::start().await;
    let c = cookie_client();
    login(&stub, &c, "admin", "admin-pass").await;
    // wrong KEY + valid session: authenticated (session fallback) but counted as Key
    let r = c
        .get(format!("{}/api/v2/health", stub.url()))
        .header("KEY", "WRONG")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        stub.count(Some(RouteKind::Health), Some(AuthMethod::Key)),
        1
    );
    assert_eq!(
        stub.count(Some(RouteKind::Health), Some(AuthMethod::Session)),
        0
    );
}

// ---------------------------------------------------------------------------
// query parameters and listing
// ---------------------------------------------------------------------------

fn put_include_fixture_ops(stub: &CalderaStub) {
    // The state of the server when operations_list_include_id_name_state_start.json
    // was recorded: D idle running, A, C, B finished. Inserted out of name order.
    stub.put_operation(scenarios::op_b_final());
    stub.put_operation(scenarios::op_a_finished());
    stub.put_operation(scenarios::op_d_idle_running());
    stub.put_operation(scenarios::op_c_empty_group());
}

#[tokio::test]
async fn unknown_query_param_is_recorded_422_even_without_key() {
    let stub = CalderaStub::start().await;
    let r = get_key(&stub, "/api/v2/operations?state=finished").await;
    assert_recorded_error(r, "error_422_unknown_query_param.json").await;
    let r = client()
        .get(format!("{}/api/v2/operations?state=finished", stub.url()))
        .send()
        .await
        .unwrap();
    assert_recorded_error(r, "error_422_unknown_query_param.json").await;
    let r = get_key(&stub, "/api/v2/operations?include=id&limit=5").await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"querystring": {"limit": ["Unknown field."]}})
    );
    // single op: sort is not accepted (BaseGetOneQuerySchema)
    stub.put_operation(scenarios::op_c_empty_group());
    let r = get_key(
        &stub,
        &format!("/api/v2/operations/{}?sort=name", scenarios::OP_C_ID),
    )
    .await;
    assert_eq!(r.status(), 422);
    // health has no query schema
    assert_eq!(get_key(&stub, "/api/v2/health?x=1").await.status(), 200);
}

#[tokio::test]
async fn include_and_exclude_match_recordings() {
    let stub = CalderaStub::start().await;
    put_include_fixture_ops(&stub);
    let got = json_ok(
        get_key(
            &stub,
            "/api/v2/operations?include=id&include=name&include=state&include=start",
        )
        .await,
    )
    .await;
    assert_eq!(
        got,
        fixture("operations_list_include_id_name_state_start.json")
    );

    let got = json_ok(
        get_key(
            &stub,
            "/api/v2/operations?exclude=chain&exclude=host_group&exclude=adversary&exclude=source&exclude=planner&exclude=objective",
        )
        .await,
    )
    .await;
    assert_eq!(got, fixture("operations_list_exclude_heavy_fields.json"));

    // a comma list matches no key
    let got = json_ok(get_key(&stub, "/api/v2/operations?include=id,name,state").await).await;
    assert_eq!(got, json!([{}, {}, {}, {}]));

    // sort=start: chronological
    let got = json_ok(get_key(&stub, "/api/v2/operations?sort=start&include=start").await).await;
    let starts: Vec<&str> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["start"].as_str().unwrap())
        .collect();
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(starts, sorted);
    assert_eq!(starts[0], "2026-11-28T15:41:48Z");

    // single op include
    let got = json_ok(
        get_key(
            &stub,
            &format!(
                "/api/v2/operations/{}?include=state&include=id",
                scenarios::OP_D_ID
            ),
        )
        .await,
    )
    .await;
    assert_eq!(got, json!({"id": scenarios::OP_D_ID, "state": "running"}));
}

#[tokio::test]
async fn full_list_matches_recording() {
    let stub = CalderaStub::start().await;
    let mut ops = scenarios::all_final_ops();
    ops.reverse();
    for op in ops {
        stub.put_operation(op);
    }
    let got = json_ok(get_key(&stub, "/api/v2/operations").await).await;
    assert_eq!(got, fixture("operations_list_finished.json"));
    // replace keeps one entry; remove works
    stub.put_operation(scenarios::with_state(scenarios::op_a_finished(), "running"));
    assert_eq!(stub.operations().len(), 8);
    assert_eq!(
        stub.operation(scenarios::OP_A_ID).unwrap()["state"],
        "running"
    );
    stub.remove_operation(scenarios::OP_A_ID);
    assert!(stub.operation(scenarios::OP_A_ID).is_none());
    assert_eq!(stub.operations().len(), 7);
}

// ---------------------------------------------------------------------------
// operations, links, results, reports
// ---------------------------------------------------------------------------

#[tokio::test]
async fn not_found_bodies_match_recordings() {
    let stub = CalderaStub::start().await;
    stub.put_operation(scenarios::op_a_finished());
    let zero = "00000000-0000-0000-0000-000000000000";
    let r = get_key(&stub, &format!("/api/v2/operations/{zero}")).await;
    assert_recorded_error(r, "error_404_unknown_operation.json").await;
    let r = get_key(
        &stub,
        &format!("/api/v2/operations/{}/links/{zero}", scenarios::OP_A_ID),
    )
    .await;
    assert_recorded_error(r, "error_404_unknown_link.json").await;
    let r = get_key(&stub, &format!("/api/v2/operations/{zero}/links")).await;
    assert_recorded_error(r, "error_404_unknown_operation.json").await;
    let r = client()
        .post(format!("{}/api/v2/operations/{zero}/report", stub.url()))
        .header("KEY", KEY)
        .json(&json!({"enable_agent_output": false}))
        .send()
        .await
        .unwrap();
    assert_recorded_error(r, "error_404_unknown_operation.json").await;
}

#[tokio::test]
async fn operation_links_and_results_match_recordings() {
    let stub = CalderaStub::start().await;
    stub.put_operation(scenarios::op_a_finished());
    stub.put_operation(scenarios::op_b_final());
    let a = scenarios::OP_A_ID;
    let b = scenarios::OP_B_ID;
    assert_eq!(
        json_ok(get_key(&stub, &format!("/api/v2/operations/{a}")).await).await,
        fixture("operation_finished.json")
    );
    assert_eq!(
        json_ok(get_key(&stub, &format!("/api/v2/operations/{a}/links")).await).await,
        fixture("operation_links_finished.json")
    );
    let l = "b28deff7-a8f5-426b-8d24-0dfb51edc0fd";
    assert_eq!(
        json_ok(get_key(&stub, &format!("/api/v2/operations/{a}/links/{l}")).await).await,
        fixture("operation_link.json")
    );
    assert_eq!(
        json_ok(get_key(&stub, &format!("/api/v2/operations/{a}/links/{l}/result")).await).await,
        fixture("operation_link_result.json")
    );
    for f in [
        "operation_link_result_timeout.json",
        "operation_link_result_error.json",
        "operation_link_result_no_output_cleanup.json",
    ] {
        let rec = fixture(f);
        let lid = rec["link"]["id"].as_str().unwrap();
        assert_eq!(
            json_ok(get_key(&stub, &format!("/api/v2/operations/{b}/links/{lid}/result")).await)
                .await,
            rec,
            "{f}"
        );
    }
    // in-flight link: no result file yet
    stub.put_operation(scenarios::op_a_progress(0, true));
    let got =
        json_ok(get_key(&stub, &format!("/api/v2/operations/{a}/links/{l}/result")).await).await;
    assert_eq!(got["result"], "");
    assert_eq!(got["link"]["status"], -3);
    // custom result
    stub.put_operation(scenarios::op_a_finished());
    stub.put_link_result(l, &scenarios::encode_link_result("x\n", "", "0"));
    let got =
        json_ok(get_key(&stub, &format!("/api/v2/operations/{a}/links/{l}/result")).await).await;
    assert_eq!(
        String::from_utf8(scenarios::base64_decode(got["result"].as_str().unwrap())).unwrap(),
        r#"{"stdout": "x\n", "stderr": "", "exit_code": "0"}"#
    );
}

async fn post_key(stub: &CalderaStub, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", stub.url()))
        .header("KEY", KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn reports_and_event_logs_are_the_recorded_ones() {
    let stub = CalderaStub::start().await;
    stub.put_operation(scenarios::op_a_finished());
    stub.put_operation(scenarios::op_b_final());
    stub.put_operation(scenarios::op_d_finished());
    let a = scenarios::OP_A_ID;
    let r = post_key(
        &stub,
        &format!("/api/v2/operations/{a}/report"),
        json!({"enable_agent_output": false}),
    )
    .await;
    assert_eq!(json_ok(r).await, fixture("operation_report.json"));
    let r = post_key(
        &stub,
        &format!("/api/v2/operations/{a}/event-logs"),
        json!({"enable_agent_output": false}),
    )
    .await;
    assert_eq!(json_ok(r).await, fixture("operation_event_logs.json"));
    let r = post_key(
        &stub,
        &format!("/api/v2/operations/{a}/event-logs"),
        json!({"enable_agent_output": true}),
    )
    .await;
    assert_eq!(
        json_ok(r).await,
        fixture("operation_event_logs_with_output.json")
    );
    let b = scenarios::OP_B_ID;
    let r = post_key(
        &stub,
        &format!("/api/v2/operations/{b}/event-logs"),
        json!({"enable_agent_output": true}),
    )
    .await;
    assert_eq!(
        json_ok(r).await,
        fixture("operation_stopped_event_logs_with_output.json")
    );
    let r = post_key(
        &stub,
        &format!("/api/v2/operations/{b}/event-logs"),
        json!({}),
    )
    .await;
    let got = json_ok(r).await;
    assert!(
        got.as_array()
            .unwrap()
            .iter()
            .all(|e| e.get("output").is_none())
    );
    // D: nothing recorded → built from the operation, as a real Caldera answers (it has a
    // report and event logs for every operation), unless put_report.
    let d = scenarios::OP_D_ID;
    let op_d = scenarios::op_d_finished();
    let r = post_key(&stub, &format!("/api/v2/operations/{d}/report"), json!({})).await;
    let got = json_ok(r).await;
    assert_eq!(got["name"], op_d["name"]);
    assert_eq!(got["start"], op_d["start"]);
    assert!(
        got["finish"].is_string(),
        "a finished operation has a finish: {got}"
    );
    let steps: usize = got["steps"]
        .as_object()
        .unwrap()
        .values()
        .map(|a| a["steps"].as_array().unwrap().len())
        .sum();
    assert_eq!(steps, op_d["chain"].as_array().unwrap().len());
    let r = post_key(
        &stub,
        &format!("/api/v2/operations/{d}/event-logs"),
        json!({}),
    )
    .await;
    let logs = json_ok(r).await;
    assert_eq!(
        logs.as_array().unwrap().len(),
        op_d["chain"].as_array().unwrap().len()
    );
    assert!(logs[0]["pid"].is_i64() || logs[0]["pid"].is_null());
    assert_eq!(
        logs[0]["attack_metadata"]["technique_id"],
        op_d["chain"][0]["ability"]["technique_id"]
    );
    stub.put_report(d, json!({"name": "x"}));
    let r = post_key(&stub, &format!("/api/v2/operations/{d}/report"), json!({})).await;
    assert_eq!(json_ok(r).await, json!({"name": "x"}));
}

#[tokio::test]
async fn unmodelled_and_unknown_routes() {
    let stub = CalderaStub::start().await;
    // auth first
    let r = client()
        .get(format!("{}/api/v2/nothing-here", stub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = get_key(&stub, "/api/v2/nothing-here").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "404: Not Found");
    let r = get_key(&stub, "/api/v2/abilities").await;
    assert_eq!(r.status(), 501);
    let r = client()
        .delete(format!("{}/api/v2/health", stub.url()))
        .header("KEY", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(content_type(&r), TEXT_CT);
    assert_eq!(stub.count(Some(RouteKind::Other), None), 4);
}

// ---------------------------------------------------------------------------
// faults, counters, timing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn injected_faults_are_consumed_in_order() {
    let stub = CalderaStub::start().await;
    stub.put_operation(scenarios::op_g_final());
    let g = scenarios::OP_G_ID;
    stub.inject(RouteKind::Report, 1, scenarios::report_race_fault());
    stub.put_report(g, json!({"name": "purple-report-race"}));
    let r = post_key(
        &stub,
        &format!("/api/v2/operations/{g}/report"),
        json!({"enable_agent_output": false}),
    )
    .await;
    assert_recorded_error(r, "error_500_report_right_after_create.json").await;
    let r = post_key(
        &stub,
        &format!("/api/v2/operations/{g}/report"),
        json!({"enable_agent_output": false}),
    )
    .await;
    assert_eq!(r.status(), 200);

    stub.inject(
        RouteKind::OperationsList,
        2,
        Fault::Status(503, "busy".into(), TEXT_CT),
    );
    stub.inject(
        RouteKind::OperationsList,
        1,
        Fault::Body("[{\"id\": ".into()),
    );
    for _ in 0..2 {
        let r = get_key(&stub, "/api/v2/operations").await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.text().await.unwrap(), "busy");
    }
    // other kinds are unaffected meanwhile
    assert_eq!(get_key(&stub, "/api/v2/health").await.status(), 200);
    let r = get_key(&stub, "/api/v2/operations").await;
    assert_eq!(r.status(), 200);
    assert_eq!(content_type(&r), JSON_CT);
    assert_eq!(r.text().await.unwrap(), "[{\"id\": ");
    assert_eq!(get_key(&stub, "/api/v2/operations").await.status(), 200);
    // faults hit before auth
    stub.inject(
        RouteKind::Health,
        1,
        Fault::Status(502, "bad gateway".into(), TEXT_CT),
    );
    let r = client()
        .get(format!("{}/api/v2/health", stub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    let recs = stub.requests();
    let faulted = recs.iter().filter(|r| r.faulted).count();
    assert_eq!(faulted, 5);
}

#[tokio::test]
async fn delay_and_hang() {
    let stub = CalderaStub::start().await;
    stub.inject(
        RouteKind::Health,
        1,
        Fault::Delay(Duration::from_millis(300)),
    );
    let t = Instant::now();
    assert_eq!(get_key(&stub, "/api/v2/health").await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    stub.inject(RouteKind::Agents, 1, Fault::Hang);
    let c = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = c
        .get(format!("{}/api/v2/agents", stub.url()))
        .header("KEY", KEY)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(get_key(&stub, "/api/v2/agents").await.status(), 200);
    let recs = stub.requests();
    let hung: Vec<_> = recs
        .iter()
        .filter(|r| r.kind == RouteKind::Agents)
        .collect();
    assert_eq!(hung[0].status, None);
    assert!(hung[0].faulted);
    assert_eq!(hung[1].status, Some(200));
}

#[tokio::test]
async fn counters_by_kind_and_auth() {
    let stub = CalderaStub::start().await;
    stub.put_operation(scenarios::op_a_finished());
    let a = scenarios::OP_A_ID;
    get_key(&stub, "/api/v2/operations").await;
    get_key(&stub, &format!("/api/v2/operations/{a}")).await;
    get_key(&stub, &format!("/api/v2/operations/{a}/links")).await;
    get_key(
        &stub,
        &format!("/api/v2/operations/{a}/links/b28deff7-a8f5-426b-8d24-0dfb51edc0fd"),
    )
    .await;
    get_key(
        &stub,
        &format!("/api/v2/operations/{a}/links/b28deff7-a8f5-426b-8d24-0dfb51edc0fd/result"),
    )
    .await;
    post_key(&stub, &format!("/api/v2/operations/{a}/report"), json!({})).await;
    post_key(
        &stub,
        &format!("/api/v2/operations/{a}/event-logs"),
        json!({}),
    )
    .await;
    get_key(&stub, "/api/v2/agents").await;
    client()
        .get(format!("{}/api/v2/health", stub.url()))
        .send()
        .await
        .unwrap();
    let c = cookie_client();
    login(&stub, &c, "admin", "admin-pass").await;
    c.get(format!("{}/api/v2/operations", stub.url()))
        .send()
        .await
        .unwrap();

    for kind in [
        RouteKind::Operation,
        RouteKind::Links,
        RouteKind::Link,
        RouteKind::LinkResult,
        RouteKind::Report,
        RouteKind::EventLogs,
        RouteKind::Agents,
    ] {
        assert_eq!(stub.count(Some(kind), Some(AuthMethod::Key)), 1, "{kind:?}");
    }
    assert_eq!(stub.count(Some(RouteKind::OperationsList), None), 2);
    assert_eq!(
        stub.count(Some(RouteKind::OperationsList), Some(AuthMethod::Key)),
        1
    );
    assert_eq!(
        stub.count(Some(RouteKind::OperationsList), Some(AuthMethod::Session)),
        1
    );
    assert_eq!(
        stub.count(Some(RouteKind::Health), Some(AuthMethod::None)),
        1
    );
    assert_eq!(stub.count(Some(RouteKind::Enter), None), 1);
    assert_eq!(stub.count(None, Some(AuthMethod::Key)), 8);
    assert_eq!(stub.count(None, None), 11);
    let recs = stub.requests();
    assert!(recs.iter().all(|r| r.status.is_some()));
    assert_eq!(recs[8].status, Some(401));
    assert_eq!(recs[0].path, "/api/v2/operations");
    assert!(recs.windows(2).all(|w| w[0].received <= w[1].received));
    stub.reset_counts();
    assert_eq!(stub.count(None, None), 0);
}

#[tokio::test]
async fn key_delay_serializes_like_one_event_loop() {
    let stub = CalderaStub::start().await;
    stub.set_key_delay(Duration::from_millis(150));
    let c = cookie_client();
    login(&stub, &c, "admin", "admin-pass").await;

    let t = Instant::now();
    assert_eq!(get_key(&stub, "/api/v2/health").await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(150));

    let t = Instant::now();
    let r = c
        .get(format!("{}/api/v2/health", stub.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );

    // two key requests + one session request at once: ~300 ms for all of them
    let t = Instant::now();
    let s1 = get_key(&stub, "/api/v2/health");
    let s2 = get_key(&stub, "/api/v2/agents");
    let s3 = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t3 = Instant::now();
        c.get(format!("{}/api/v2/health", stub.url()))
            .send()
            .await
            .unwrap();
        t3.elapsed()
    };
    let (_, _, waited) = tokio::join!(s1, s2, s3);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(
        waited >= Duration::from_millis(100),
        "session request waited {waited:?}"
    );

    // without the single loop, key requests overlap
    stub.set_single_event_loop(false);
    let t = Instant::now();
    let (a, b) = tokio::join!(
        get_key(&stub, "/api/v2/health"),
        get_key(&stub, "/api/v2/agents")
    );
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    assert!(
        t.elapsed() < Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn dropping_the_stub_cuts_connections() {
    let stub = CalderaStub::start().await;
    let url = stub.url();
    let c = client();
    let ok = c
        .get(format!("{url}/api/v2/health"))
        .header("KEY", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    ok.bytes().await.unwrap();
    // a hung request in flight
    stub.inject(RouteKind::Agents, 1, Fault::Hang);
    let hung = tokio::spawn({
        let c = c.clone();
        let url = url.clone();
        async move {
            c.get(format!("{url}/api/v2/agents"))
                .header("KEY", KEY)
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stub);
    let res = tokio::time::timeout(Duration::from_secs(5), hung)
        .await
        .expect("hung request ended when the stub was dropped")
        .unwrap();
    assert!(res.is_err());
    // the pooled keep-alive connection is gone too
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        c.get(format!("{url}/api/v2/health"))
            .header("KEY", KEY)
            .send(),
    )
    .await
    .expect("no hang after drop");
    assert!(res.is_err());
}

// ---------------------------------------------------------------------------
// scenarios are faithful to the recordings they are derived from
// ---------------------------------------------------------------------------

fn without_last_seen(mut op: Value) -> Value {
    for a in op["host_group"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("last_seen");
    }
    op
}

#[test]
fn op_a_progress_reproduces_running_recordings() {
    let running = fixture("operation_running.json");
    assert_eq!(
        without_last_seen(scenarios::op_a_queued_next(1)),
        without_last_seen(running.clone())
    );
    // /links at the same moment: link 2 already collected
    assert_eq!(
        scenarios::op_a_progress(1, true)["chain"],
        fixture("operation_links_running.json")
    );
    assert_eq!(
        scenarios::op_a_progress(5, true)["chain"][5],
        fixture("operation_link_collected_not_finished.json")
    );
    assert_eq!(
        scenarios::op_a_progress(26, false),
        fixture("operation_finished.json")
    );
    assert_eq!(scenarios::op_a_progress(25, true)["state"], "running");
    assert_eq!(scenarios::op_a_progress(26, false)["state"], "finished");
    assert_eq!(scenarios::op_a_progress(0, false)["chain"], json!([]));
    let p = scenarios::op_a_progress(3, true);
    assert_eq!(p["chain"].as_array().unwrap().len(), 4);
    assert!(p["chain"][3].get("agent_reported_time").is_none());
    assert_eq!(p["chain"][3]["output"], "False");
    assert!(p["chain"][3]["pid"].is_null());
    assert!(!p["chain"][3]["collect"].is_null());
    let q = scenarios::op_a_queued_next(3);
    assert!(q["chain"][3]["collect"].is_null());
    assert_eq!(q["chain"][3]["status"], -3);
}

#[test]
fn link_forms_reproduce_recorded_pairs() {
    // E: cleanup link in flight (recorded) vs finished (recorded)
    let cleanup = fixture("operation_state_cleanup.json");
    let done = fixture("operation_out_of_time.json");
    assert_eq!(
        scenarios::link_in_flight(&done["chain"][1]),
        cleanup["chain"][1]
    );
    // F: queued link vs discarded: only status differs
    let mut q = fixture("operation_link_queued_before_discard.json");
    q["status"] = json!(-2);
    assert_eq!(q, fixture("operation_link_patch_discard_response.json"));
}

#[test]
fn sequences_and_states() {
    let b: Vec<String> = scenarios::op_b_sequence()
        .iter()
        .map(|o| o["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        b,
        [
            "paused",
            "run_one_link",
            "running",
            "running",
            "finished",
            "cleanup",
            "finished"
        ]
    );
    let c = scenarios::op_b_cleanup();
    let cl = scenarios::link_of(&c, scenarios::OP_B_CLEANUP_LINK_ID);
    assert_eq!(cl["status"], -3);
    assert!(cl["finish"].is_null());
    assert_eq!(cl["cleanup"], 1);
    let e: Vec<String> = scenarios::op_e_sequence()
        .iter()
        .map(|o| o["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(e, ["cleanup", "out_of_time", "out_of_time"]);
    let pending = scenarios::link_of(
        &scenarios::op_e_out_of_time_pending(),
        scenarios::OP_E_CLEANUP_LINK_ID,
    );
    assert_eq!(pending["status"], -3);
    assert_eq!(scenarios::op_c_empty_group()["chain"], json!([]));
    assert_eq!(scenarios::op_d_idle_running()["state"], "running");
    assert_eq!(scenarios::op_d_finished()["state"], "finished");
    assert_eq!(scenarios::op_f_queued()["chain"][0]["status"], -3);
    let f = scenarios::op_f_stopped_in_flight();
    assert_eq!(f["state"], "finished");
    assert_eq!(f["chain"][0]["status"], -2);
    assert_eq!(f["chain"][1]["status"], -3);
    assert_eq!(scenarios::op_g_final()["name"], "purple-report-race");
    assert_eq!(
        scenarios::op_h_final()["name"],
        "purple-report-while-running"
    );
}

#[test]
fn many_links_op_has_unique_ids_and_recorded_shapes() {
    let op = scenarios::op_many_links("11111111-2222-4333-8444-555555555555", "load", 60);
    let chain = op["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 60);
    let ids: std::collections::HashSet<&str> =
        chain.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 60);
    let a = scenarios::op_a_finished();
    let a_ids: Vec<&str> = a["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    for l in chain {
        assert_eq!(l["id"], l["unique"]);
        assert!(!a_ids.contains(&l["id"].as_str().unwrap()));
        let id = l["id"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        for f in l["facts"].as_array().unwrap() {
            assert_eq!(f["source"], "11111111-2222-4333-8444-555555555555");
            assert!(f["links"].as_array().unwrap().iter().any(|x| x == id));
        }
    }
    // same keys and types as the recorded link
    let rec = &a["chain"][0];
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&chain[26]), keys(rec));
    assert_eq!(op["name"], "load");
    assert_eq!(op["state"], "finished");
}

#[test]
fn encode_link_result_matches_caldera() {
    let rec = fixture("operation_link_result.json");
    assert_eq!(
        scenarios::encode_link_result("root\n", "", "0"),
        rec["result"].as_str().unwrap()
    );
    let rec = fixture("operation_link_result_error.json");
    assert_eq!(
        scenarios::encode_link_result(
            "",
            "ls: cannot access '/nonexistent-lab-path': No such file or directory\n",
            "2"
        ),
        rec["result"].as_str().unwrap()
    );
}
