//! The HTTP surface against the real sidecar: health moving through its states and back, the
//! API key and rate limit, `/metrics` as strict Prometheus text, the `status` command's exit
//! codes, and no secret in any response, command output or log line.
//!
//! Elasticsearch outages go through the fault-injecting proxy (`support::proxy`), never by
//! stopping the shared search server; spool and breaker states are set through the shared state
//! (the sink owns them in production).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use caldera_sidecar::app::Running;
use serde_json::Value;
use support::app;
use support::caldera_stub::{CalderaStub, Fault, RouteKind};
use support::proxy::{Mode, Proxy};
use support::scenarios::*;
use support::search::{Search, search_url, unique_index, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");
const WAIT: Duration = Duration::from_secs(20);

struct Answer {
    code: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("the sidecar answers");
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Answer {
        code,
        headers,
        text,
    }
}

async fn health(r: &Running) -> (u16, Value) {
    let a = get(r.health_addr, "/api/v2/health", &[]).await;
    (a.code, a.json())
}

/// Waits until the overall status is `want`; returns that answer.
async fn wait_status(r: &Running, want: &str) -> (u16, Value) {
    wait_health(r, want, |v| v["status"] == want).await
}

/// Waits until the health answer satisfies `f`; returns that answer.
async fn wait_health(r: &Running, what: &str, f: impl Fn(&Value) -> bool) -> (u16, Value) {
    let mut last = Value::Null;
    let res = tokio::time::timeout(WAIT, async {
        loop {
            let (code, v) = health(r).await;
            if f(&v) {
                return (code, v);
            }
            last = v;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    res.unwrap_or_else(|_| panic!("health never became {what}; last answer: {last:#}"))
}

fn message(v: &Value, check: &str) -> String {
    v["checks"][check]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_shape(v: &Value) {
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    for check in [
        "elasticsearch",
        "caldera",
        "circuit_breaker",
        "spool",
        "dead_letters",
        "memory",
        "disk",
        "pipeline",
    ] {
        let c = &v["checks"][check];
        let st = c["status"]
            .as_str()
            .unwrap_or_else(|| panic!("{check}: {v}"));
        assert!(
            ["ok", "degraded", "unhealthy"].contains(&st),
            "{check}: {c}"
        );
        // A message exactly when the check is not ok, on one line.
        let msg = c.get("message").and_then(Value::as_str);
        assert_eq!(msg.is_some(), st != "ok", "{check}: {c}");
        if let Some(m) = msg {
            assert!(!m.contains('\n') && !m.is_empty(), "{check}: {m:?}");
        }
    }
}

#[tokio::test]
async fn elasticsearch_outage_is_unhealthy_and_recovers() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    let index = unique_index("health-es");
    let r = app::start(&app::test_env(
        &stub.url(),
        &index,
        &[("ELK_URL", proxy.url().as_str())],
    ))
    .await;

    let (code, v) = wait_status(&r, "healthy").await;
    assert_eq!(code, 200);
    assert_shape(&v);
    let es = &v["checks"]["elasticsearch"];
    assert_eq!(es["reachable"], true);
    assert_eq!(es["template_installed"], true);
    assert_eq!(es["template_current"], true);
    assert!(
        ["green", "yellow"].contains(&es["cluster_status"].as_str().unwrap_or("")),
        "{es}"
    );

    proxy.set_mode(Mode::Refuse).await;
    let (code, v) = wait_status(&r, "unhealthy").await;
    assert_eq!(code, 503);
    assert_shape(&v);
    assert_eq!(v["checks"]["elasticsearch"]["status"], "unhealthy");
    assert_eq!(v["checks"]["elasticsearch"]["reachable"], false);
    let m = message(&v, "elasticsearch");
    assert!(m.contains("Elasticsearch unreachable"), "{m}");
    assert!(m.contains("ELK_URL"), "{m}");
    // Answered from memory: quick even though Elasticsearch is gone.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let _ = health(&r).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "20 health requests took {:?}",
        started.elapsed()
    );

    proxy.set_mode(Mode::Pass).await;
    let (code, v) = wait_status(&r, "healthy").await;
    assert_eq!(code, 200);
    assert!(v["checks"]["elasticsearch"].get("message").is_none());
    app::stop(r).await;
    Search::new(&index).delete_index().await;
}

#[tokio::test]
async fn elasticsearch_hanging_is_unhealthy() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    let index = unique_index("health-es-hang");
    let r = app::start(&app::test_env(
        &stub.url(),
        &index,
        &[("ELK_URL", proxy.url().as_str())],
    ))
    .await;
    wait_status(&r, "healthy").await;
    proxy.set_mode(Mode::Hang).await;
    let (code, v) = wait_status(&r, "unhealthy").await;
    assert_eq!(code, 503);
    assert!(message(&v, "elasticsearch").contains("Elasticsearch"));
    // An HTTP error (not a refused connection) is unhealthy too, with its own advice.
    proxy.set_mode(Mode::Pass).await;
    wait_status(&r, "healthy").await;
    proxy.fail_next(
        1000,
        401,
        r#"{"error":{"type":"security_exception"},"status":401}"#,
    );
    let (_, v) = wait_status(&r, "unhealthy").await;
    let m = message(&v, "elasticsearch");
    assert!(m.contains("ELK_API_KEY"), "{m}");
    app::stop(r).await;
    Search::new(&index).delete_index().await;
}

#[tokio::test]
async fn caldera_auth_failure_degrades_and_recovers() {
    let stub = CalderaStub::start().await;
    let index = unique_index("health-caldera");
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    wait_status(&r, "healthy").await;

    stub.inject(
        RouteKind::OperationsList,
        1000,
        Fault::Status(401, "401: Unauthorized".into(), "text/plain; charset=utf-8"),
    );
    let (code, v) = wait_status(&r, "degraded").await;
    assert_eq!(code, 200);
    assert_shape(&v);
    let c = &v["checks"]["caldera"];
    assert_eq!(c["status"], "degraded", "{c}");
    assert_eq!(c["authenticated"], false);
    assert_eq!(c["auth_method"], "session");
    let m = message(&v, "caldera");
    assert!(m.contains("authentication failed"), "{m}");
    assert!(m.contains("CALDERA_USER/CALDERA_PASSWORD"), "{m}");
    // Elasticsearch is fine: Caldera trouble alone is not unhealthy.
    assert_eq!(v["checks"]["elasticsearch"]["status"], "ok");

    stub.clear_faults();
    let (code, v) = wait_status(&r, "healthy").await;
    assert_eq!(code, 200);
    assert_eq!(v["checks"]["caldera"]["authenticated"], true);
    assert_eq!(v["checks"]["caldera"]["version"], "5.3.0");
    app::stop(r).await;
    Search::new(&index).delete_index().await;
}

#[tokio::test]
async fn caldera_unreachable_degrades() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let index = unique_index("health-caldera-down");
    // KEY auth: with a session login, the client currently reports a refused connection
    // during login as an authentication failure for 60 s (see the report).
    let r = app::start(&app::test_env(
        &url,
        &index,
        &[
            ("CALDERA_USER", ""),
            ("CALDERA_PASSWORD", ""),
            ("CALDERA_API_KEY", "some-key"),
        ],
    ))
    .await;
    let (code, v) = wait_status(&r, "degraded").await;
    assert_eq!(code, 200);
    assert_eq!(v["checks"]["caldera"]["reachable"], false);
    let m = message(&v, "caldera");
    assert!(
        m.contains("Caldera unreachable") && m.contains("CALDERA_URL"),
        "{m}"
    );
    app::stop(r).await;
}

#[tokio::test]
async fn spool_and_breaker_states_change_the_verdict() {
    let stub = CalderaStub::start().await;
    let index = unique_index("health-spool");
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    wait_status(&r, "healthy").await;

    // The stub has no operations, so the sink publishes nothing that would overwrite these.
    r.shared.spool(|s| {
        s.documents = 5;
        s.bytes = 4096;
        s.oldest = Some(SystemTime::now() - Duration::from_secs(30));
    });
    let (code, v) = health(&r).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("degraded")), "{v}");
    assert_shape(&v);
    let spool = &v["checks"]["spool"];
    assert_eq!(spool["documents"], 5);
    assert_eq!(spool["bytes"], 4096);
    assert!(
        spool["oldest_age_seconds"].as_u64().unwrap_or(0) >= 30,
        "{spool}"
    );
    assert!(message(&v, "spool").contains("5 documents"), "{v}");

    r.shared.spool(|s| s.full = true);
    let (code, v) = health(&r).await;
    assert_eq!(
        (code, v["status"].as_str()),
        (503, Some("unhealthy")),
        "{v}"
    );
    assert!(message(&v, "spool").contains("SPOOL_MAX_MB"), "{v}");

    r.shared.spool(|s| *s = Default::default());
    r.shared.spool(|s| s.dead_letters = 2);
    let (_, v) = health(&r).await;
    assert_eq!(v["status"], "degraded");
    assert!(
        message(&v, "dead_letters").contains("DEAD_LETTER_DIR"),
        "{v}"
    );
    r.shared.spool(|s| s.dead_letters = 0);

    r.shared.breaker(|b| {
        b.state = "open";
        b.consecutive_failures = 5;
        b.since = SystemTime::now();
    });
    let (code, v) = health(&r).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("degraded")), "{v}");
    assert_eq!(v["checks"]["circuit_breaker"]["state"], "open");
    assert!(message(&v, "circuit_breaker").contains("open"), "{v}");

    r.shared.breaker(|b| *b = Default::default());
    let (code, v) = wait_status(&r, "healthy").await;
    assert_eq!(code, 200);
    assert_shape(&v);
    app::stop(r).await;
    Search::new(&index).delete_index().await;
}

#[tokio::test]
async fn thresholds_from_configuration_change_the_verdict() {
    let stub = CalderaStub::start().await;
    let disk_index = unique_index("health-disk");
    let mem_index = unique_index("health-mem");
    let disk = app::start(&app::test_env(
        &stub.url(),
        &disk_index,
        &[("DISK_WARNING_GB", "100000")],
    ))
    .await;
    let mem = app::start(&app::test_env(
        &stub.url(),
        &mem_index,
        &[
            ("MEMORY_WARNING_GB", "100000"),
            ("MEMORY_CRITICAL_GB", "100000"),
        ],
    ))
    .await;

    // Everything else fine (Elasticsearch probed), only the threshold check fires.
    let es_ok = |v: &Value| v["checks"]["elasticsearch"]["status"] == "ok";
    let (code, v) = wait_health(&disk, "degraded by disk", |v| {
        v["status"] == "degraded" && es_ok(v) && v["checks"]["pipeline"]["polls_ok"] != 0
    })
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["checks"]["disk"]["status"], "degraded", "{v:#}");
    assert_eq!(v["checks"]["disk"]["warning_gb"], 100000.0);
    let m = message(&v, "disk");
    assert!(
        m.contains("DISK_WARNING_GB") && m.contains("SPOOL_DIR"),
        "{m}"
    );
    let not_ok: Vec<&String> = v["checks"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, c)| c["status"] != "ok")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(not_ok, ["disk"], "{v:#}");

    let (code, v) = wait_health(&mem, "unhealthy by memory", |v| {
        v["status"] == "unhealthy" && es_ok(v)
    })
    .await;
    assert_eq!(code, 503);
    assert_eq!(v["checks"]["memory"]["status"], "unhealthy", "{v:#}");
    assert!(message(&v, "memory").contains("MEMORY_CRITICAL_GB"), "{v}");
    assert_eq!(v["checks"]["elasticsearch"]["status"], "ok");

    app::stop(disk).await;
    app::stop(mem).await;
    Search::new(&disk_index).delete_index().await;
    Search::new(&mem_index).delete_index().await;
}

#[tokio::test]
async fn api_key_guards_every_endpoint_but_livez() {
    let stub = CalderaStub::start().await;
    let index = unique_index("health-auth");
    let key = "k3y-for-the-health-api";
    let r = app::start(&app::test_env(
        &stub.url(),
        &index,
        &[
            ("ENABLE_API_AUTH", "true"),
            ("API_KEY", key),
            ("API_KEY_HEADER", "X-Sidecar-Key"),
        ],
    ))
    .await;
    for path in ["/api/v2/health", "/metrics", "/nope"] {
        for headers in [
            vec![],
            vec![("X-Sidecar-Key", "wrong")],
            vec![("X-Sidecar-Key", "k3y-for-the-health-ap")],
            vec![("X-Sidecar-Key", "k3y-for-the-health-apii")],
            vec![("X-API-Key", key)],
        ] {
            let a = get(r.health_addr, path, &headers).await;
            assert_eq!(a.code, 401, "{path} {headers:?}");
            assert_eq!(a.json(), serde_json::json!({"error": "unauthorized"}));
        }
    }
    let a = get(r.health_addr, "/api/v2/health", &[("X-Sidecar-Key", key)]).await;
    assert_eq!(a.code, 200, "{}", a.text);
    assert!(a.json()["checks"].is_object());
    let a = get(r.health_addr, "/metrics", &[("x-sidecar-key", key)]).await;
    assert_eq!(a.code, 200);
    let a = get(r.health_addr, "/livez", &[]).await;
    assert_eq!((a.code, a.text.as_str()), (200, "ok"));
    app::stop(r).await;
    Search::new(&index).delete_index().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let stub = CalderaStub::start().await;
    let index = unique_index("health-rate");
    let r = app::start(&app::test_env(
        &stub.url(),
        &index,
        &[("MAX_REQUESTS_PER_MINUTE", "5")],
    ))
    .await;
    for i in 0..5 {
        let a = get(r.health_addr, "/api/v2/health", &[]).await;
        assert_ne!(a.code, 429, "request {i}");
    }
    let a = get(r.health_addr, "/api/v2/health", &[]).await;
    assert_eq!(a.code, 429);
    let retry: u64 = a
        .headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=12).contains(&retry), "{retry}");
    assert_eq!(a.json(), serde_json::json!({"error": "too many requests"}));
    assert_eq!(get(r.health_addr, "/metrics", &[]).await.code, 429);
    // Liveness is never starved.
    for _ in 0..10 {
        assert_eq!(get(r.health_addr, "/livez", &[]).await.code, 200);
    }
    app::stop(r).await;
    Search::new(&index).delete_index().await;
}

// ---- /metrics as strict Prometheus text ------------------------------------------------

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: bool,
    samples: Vec<Sample>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) {
                return Err(format!("bad value {s:?}"));
            }
            s.parse().map_err(|e| format!("bad value {s:?}: {e}"))
        }
    }
}

/// `{a="x",b="y"}` → map; strict about quoting and escapes.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if !is_label_name(&name) {
            return Err(format!("bad label name {name:?} in {s:?}"));
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("expected =\" after {name} in {s:?}"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some('"') => break,
                Some('\n') | None => return Err(format!("unterminated label value in {s:?}")),
                Some(c) => value.push(c),
            }
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("label {name} repeated in {s:?}"));
        }
        match chars.next() {
            None => return Ok(out),
            Some(',') if chars.peek().is_some() => {}
            other => return Err(format!("expected , or end, got {other:?} in {s:?}")),
        }
    }
}

/// A strict parser of the text exposition format 0.0.4 as produced for scraping: every sample
/// belongs to a family declared by `# TYPE` before it, families are contiguous, HELP/TYPE at
/// most once each, no duplicate series, histograms complete and cumulative.
fn parse_prometheus(text: &str) -> Result<BTreeMap<String, Family>, String> {
    if !text.ends_with('\n') {
        return Err("output must end with a newline".into());
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut closed: HashSet<String> = HashSet::new();
    let mut series = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next(), parts.next(), parts.next());
            let (Some(kw @ ("HELP" | "TYPE")), Some(name)) = (kw, name) else {
                continue; // a plain comment
            };
            if !is_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    closed.insert(c);
                }
                if closed.contains(name) {
                    return Err(at(format!("family {name} is not contiguous")));
                }
                current = Some(name.to_string());
            }
            let f = families.entry(name.to_string()).or_default();
            if kw == "HELP" {
                if f.help || tail.is_none_or(str::is_empty) {
                    return Err(at("HELP repeated or empty".into()));
                }
                f.help = true;
            } else {
                if !f.kind.is_empty() || !f.samples.is_empty() {
                    return Err(at("TYPE repeated or after samples".into()));
                }
                let kind = tail.unwrap_or("");
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at(format!("bad type {kind:?}")));
                }
                f.kind = kind.to_string();
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("comment without a space".into()));
        }
        let (series_part, value_part) = match line.rfind('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim_start_matches(' ')),
            None => line.split_once(' ').ok_or_else(|| at("no value".into()))?,
        };
        let mut value_fields = value_part.split(' ');
        let value = parse_value(value_fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = value_fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if value_fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let (name, labels) = match series_part.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels".into()))?;
                (name, parse_labels(inner).map_err(at)?)
            }
            None => (series_part, BTreeMap::new()),
        };
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("duplicate series".into()));
        }
        let family = current
            .clone()
            .ok_or_else(|| at("sample before any TYPE".into()))?;
        let f = families
            .get_mut(&family)
            .ok_or_else(|| at("unknown family".into()))?;
        if f.kind.is_empty() {
            return Err(at(format!("sample of {family} before its TYPE")));
        }
        let ok_name = match f.kind.as_str() {
            "histogram" => [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name.to_string()),
            _ => name == family,
        };
        if !ok_name {
            return Err(at(format!("sample {name} does not belong to {family}")));
        }
        if f.kind == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        if f.kind == "counter" && (value < 0.0 || value.is_nan()) {
            return Err(at("negative counter".into()));
        }
        f.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, f) in &families {
        if f.kind.is_empty() {
            return Err(format!("{name}: HELP without TYPE"));
        }
        if f.kind == "histogram" {
            check_histogram(name, f)?;
        }
    }
    Ok(families)
}

fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    let mut last_le = f64::NEG_INFINITY;
    let mut last_count = 0.0;
    let mut inf = None;
    for s in f.samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let le = parse_value(&s.labels["le"])?;
        if le <= last_le {
            return Err(format!("{name}: le not ascending at {le}"));
        }
        if s.value < last_count {
            return Err(format!("{name}: buckets not cumulative at le={le}"));
        }
        last_le = le;
        last_count = s.value;
        if le.is_infinite() {
            inf = Some(s.value);
        }
    }
    let inf = inf.ok_or_else(|| format!("{name}: no le=\"+Inf\" bucket"))?;
    if last_le != f64::INFINITY {
        return Err(format!("{name}: +Inf is not the last bucket"));
    }
    let count = f
        .samples
        .iter()
        .find(|s| s.name == format!("{name}_count"))
        .ok_or_else(|| format!("{name}: no _count"))?;
    if count.value != inf {
        return Err(format!(
            "{name}: _count {} != +Inf bucket {inf}",
            count.value
        ));
    }
    if !f.samples.iter().any(|s| s.name == format!("{name}_sum")) {
        return Err(format!("{name}: no _sum"));
    }
    Ok(())
}

#[test]
fn the_test_parser_is_strict() {
    let good = "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n\
                # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
    assert!(
        parse_prometheus(good).is_ok(),
        "{:?}",
        parse_prometheus(good)
    );
    for bad in [
        "x 1\n",                                                 // no TYPE
        "# TYPE x gauge\nx 1",                                   // no final newline
        "# TYPE x gauge\nx one\n",                               // bad value
        "# TYPE x gauge\nx{a=\"1\" 1\n",                         // unclosed labels
        "# TYPE x gauge\nx{a=1} 1\n",                            // unquoted
        "# TYPE x gauge\nx 1\nx 2\n",                            // duplicate
        "# TYPE x gauge\n# TYPE y gauge\ny 1\n# HELP x again\n", // not contiguous
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", // count mismatch
        "# TYPE x counter\nx -1\n",                                       // negative counter
        "# TYPE 1x gauge\n",                                              // bad name
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted: {bad:?}");
    }
}

/// The counter fields of `Stats`, read from its `Debug` output, so a counter added there
/// without a metric fails this test.
fn stats_fields(kind: &str) -> Vec<String> {
    let dbg = format!("{:?}", caldera_sidecar::state::Stats::default());
    let marker = format!(": {kind}");
    let mut out = Vec::new();
    let mut rest = dbg.as_str();
    while let Some(i) = rest.find(&marker) {
        let before = &rest[..i];
        let name = before
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        out.push(name.to_string());
        rest = &rest[i + marker.len()..];
    }
    out
}

#[tokio::test]
async fn metrics_are_strict_prometheus_text() {
    let stub = CalderaStub::start().await;
    stub.put_operation(op_a_finished());
    let index = unique_index("health-metrics");
    let s = Search::new(&index);
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    wait_for(WAIT, "op A indexed", || async {
        s.operation(OP_A_ID).await.filter(|d| d["settled"] == true)
    })
    .await;

    let a = get(r.health_addr, "/metrics", &[]).await;
    assert_eq!(a.code, 200);
    assert_eq!(
        a.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let families = parse_prometheus(&a.text).unwrap_or_else(|e| panic!("{e}\n{}", a.text));

    let gauges_in_stats = ["operations_tracked", "operations_settled"];
    let counters = stats_fields("Counter(");
    assert!(counters.len() >= 19, "{counters:?}");
    for c in &counters {
        let (name, kind) = if gauges_in_stats.contains(&c.as_str()) {
            (format!("caldera_sidecar_{c}"), "gauge")
        } else {
            (format!("caldera_sidecar_{c}_total"), "counter")
        };
        let f = families
            .get(&name)
            .unwrap_or_else(|| panic!("{name} missing from /metrics"));
        assert_eq!(f.kind, kind, "{name}");
        assert!(f.help, "{name} has no HELP");
    }
    let histograms = stats_fields("Histogram {");
    assert_eq!(histograms.len(), 3, "{histograms:?}");
    for h in &histograms {
        let name = format!("caldera_sidecar_{h}");
        assert_eq!(
            families.get(&name).map(|f| f.kind.as_str()),
            Some("histogram"),
            "{name}"
        );
    }
    let value = |name: &str| -> f64 {
        families
            .get(name)
            .and_then(|f| f.samples.first())
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(value("caldera_sidecar_documents_indexed_total") >= 27.0);
    assert!(value("caldera_sidecar_polls_ok_total") >= 1.0);
    assert_eq!(value("caldera_sidecar_operations_tracked"), 1.0);
    assert!(value("caldera_sidecar_uptime_seconds") >= 0.0);
    assert!(value("caldera_sidecar_last_successful_poll_age_seconds") < 10.0);
    assert_eq!(value("caldera_sidecar_spool_documents"), 0.0);
    assert_eq!(value("caldera_sidecar_circuit_breaker_state"), 0.0);
    let one_hot = &families["caldera_sidecar_circuit_breaker_in_state"].samples;
    assert_eq!(one_hot.len(), 3);
    assert_eq!(one_hot.iter().map(|s| s.value).sum::<f64>(), 1.0);
    let count = |h: &str| -> f64 {
        let family = format!("caldera_sidecar_{h}");
        families[&family]
            .samples
            .iter()
            .find(|s| s.name == format!("{family}_count"))
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{family}_count missing"))
    };
    for h in [
        "poll_seconds",
        "bulk_seconds",
        "observed_to_indexed_seconds",
    ] {
        assert!(count(h) >= 1.0, "{h} has no observations");
    }
    // The +Inf bucket's value equals _count, and it is the last bucket.
    let bulk = &families["caldera_sidecar_bulk_seconds"].samples;
    let inf = bulk
        .iter()
        .find(|s| s.labels.get("le").map(String::as_str) == Some("+Inf"))
        .expect("+Inf");
    assert_eq!(inf.value, count("bulk_seconds"));
    app::stop(r).await;
    s.delete_index().await;
}

// ---- the status command ----------------------------------------------------------------

/// The real binary in an empty directory with a clean environment.
fn sidecar(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

async fn status_cmd(dir: &std::path::Path, env: &[(&str, String)]) -> (i32, String, String) {
    let mut c = sidecar(dir);
    c.arg("status");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .expect("status runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn status_command_exit_codes() {
    let stub = CalderaStub::start().await;
    let index = unique_index("health-status");
    let key = "status-cmd-key";
    let r = app::start(&app::test_env(
        &stub.url(),
        &index,
        &[("ENABLE_API_AUTH", "true"), ("API_KEY", key)],
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bind = r.health_addr.to_string();
    let with_key = [
        ("HEALTH_BIND", bind.clone()),
        ("ENABLE_API_AUTH", "true".to_string()),
        ("API_KEY", key.to_string()),
    ];
    wait_for(WAIT, "healthy", || async {
        let a = get(r.health_addr, "/api/v2/health", &[("X-API-Key", key)]).await;
        (a.json()["status"] == "healthy").then_some(())
    })
    .await;

    let (code, out, err) = status_cmd(dir.path(), &with_key).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("HEALTHY") && out.contains("all checks ok"),
        "{out}"
    );

    r.shared.spool(|s| {
        s.documents = 7;
        s.bytes = 7000;
    });
    let (code, out, err) = status_cmd(dir.path(), &with_key).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DEGRADED"), "{out}");
    assert!(out.contains("spool: degraded: 7 documents"), "{out}");

    r.shared.spool(|s| s.full = true);
    let (code, out, err) = status_cmd(dir.path(), &with_key).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("UNHEALTHY"), "{out}");
    r.shared.spool(|s| *s = Default::default());

    // A wrong key: refused, said so, exit 2; the key itself is not printed.
    let wrong = [
        ("HEALTH_BIND", bind.clone()),
        ("ENABLE_API_AUTH", "true".to_string()),
        ("API_KEY", "not-the-key".to_string()),
    ];
    let (code, out, err) = status_cmd(dir.path(), &wrong).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("401") && err.contains("API_KEY"), "{err}");
    assert!(!err.contains("not-the-key") && !out.contains("not-the-key"));

    // Nobody listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let (code, out, err) =
        status_cmd(dir.path(), &[("HEALTH_BIND", format!("0.0.0.0:{port}"))]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("UNREACHABLE") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    // Something else on the port that answers without end: read up to a cap, not further.
    let endless = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endless_addr = endless.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = endless.accept().await {
            tokio::spawn(async move {
                // The request first (an answer before it is a protocol error, not this case).
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                while sock.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let (code, out, err) =
        status_cmd(dir.path(), &[("HEALTH_BIND", endless_addr.to_string())]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("larger than 1024 KB"), "{err}");
    app::stop(r).await;
    Search::new(&index).delete_index().await;
}

// ---- secrets ---------------------------------------------------------------------------

#[tokio::test]
async fn no_secret_in_responses_status_output_or_logs() {
    let stub = CalderaStub::start().await;
    stub.add_user("analyst", "pw-H34lth-caldera");
    stub.set_api_key("key-H34lth-caldera");
    stub.put_operation(op_a_finished());
    let index = unique_index("health-secrets");
    let s = Search::new(&index);
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        "pw-H34lth-caldera",
        "key-H34lth-caldera",
        "elk-H34lth-key",
        "url-H34lth",
        "api-H34lth-key",
    ];
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let with_creds = search_url().replace("http://", "http://elastic:url-H34lth@");
    let env: Vec<(&str, String)> = vec![
        ("CALDERA_URL", stub.url()),
        ("CALDERA_USER", "analyst".into()),
        ("CALDERA_PASSWORD", "pw-H34lth-caldera".into()),
        ("CALDERA_API_KEY", "key-H34lth-caldera".into()),
        ("ELK_URL", with_creds),
        ("ELK_API_KEY", "elk-H34lth-key".into()),
        ("ELK_INDEX", index.clone()),
        ("POLL_INTERVAL", "0.2".into()),
        ("POLL_IDLE_INTERVAL", "0.5".into()),
        ("SETTLE_GRACE", "0".into()),
        ("HEALTH_BIND", addr.to_string()),
        ("ENABLE_API_AUTH", "true".into()),
        ("API_KEY", "api-H34lth-key".into()),
        ("LOG_LEVEL", "debug".into()),
        ("SPOOL_DIR", dir.path().join("spool").display().to_string()),
        (
            "DEAD_LETTER_DIR",
            dir.path().join("dead").display().to_string(),
        ),
    ];
    let mut cmd = sidecar(dir.path());
    cmd.arg("run").stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();

    let key = ("X-API-Key", "api-H34lth-key");
    let mut bodies = Vec::new();
    wait_for(WAIT, "the binary serves health", || async {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{addr}/api/v2/health"))
            .header(key.0, key.1)
            .send()
            .await
            .ok()?;
        let text = resp.text().await.ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v["status"] == "healthy").then_some(())
    })
    .await;
    wait_for(WAIT, "op A indexed by the binary", || async {
        s.operation(OP_A_ID).await.filter(|d| d["settled"] == true)
    })
    .await;
    bodies.push(get(addr, "/api/v2/health", &[key]).await.text);
    bodies.push(get(addr, "/metrics", &[key]).await.text);
    // Refusals with a wrong key and with no key.
    bodies.push(
        get(addr, "/api/v2/health", &[("X-API-Key", "guess")])
            .await
            .text,
    );
    bodies.push(get(addr, "/metrics", &[]).await.text);
    bodies.push(get(addr, "/livez", &[]).await.text);

    // Caldera now refuses the password (and the key): errors flow into health and the log.
    stub.set_api_key("rotated");
    stub.add_user("analyst", "rotated");
    stub.expire_sessions();
    let degraded = wait_for(WAIT, "Caldera auth failure visible", || async {
        let a = get(addr, "/api/v2/health", &[key]).await;
        let v = a.json();
        (v["checks"]["caldera"]["status"] == "degraded").then_some(a.text)
    })
    .await;
    assert!(degraded.contains("authentication failed"), "{degraded}");
    bodies.push(degraded);
    bodies.push(get(addr, "/metrics", &[key]).await.text);

    let status_env: Vec<(&str, String)> = env.clone();
    let (code, out, err) = status_cmd(dir.path(), &status_env).await;
    assert_eq!(code, 1, "{out}{err}");
    bodies.push(out);
    bodies.push(err);

    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(log.contains("DEBUG"), "debug logging is on");
    assert!(log.lines().count() > 10, "{log}");
    bodies.push(log);
    bodies.push(String::from_utf8_lossy(&out.stdout).into_owned());

    for secret in secrets {
        for (i, b) in bodies.iter().enumerate() {
            assert!(!b.contains(secret), "{secret} leaked in output #{i}:\n{b}");
        }
    }
    s.delete_index().await;
}
