#![allow(dead_code)]
//! Runs the real sidecar (in-process, every task as in production) on random ports against the
//! Caldera stub and the real search server.

use std::time::Duration;

use caldera_sidecar::app::{self, Running};
use caldera_sidecar::config::{Layered, LoadOptions, Settings};

/// Settings for a test: fast polling, a private index and spool, session login to the stub.
pub fn test_env(caldera_url: &str, index: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    // Grouped under one folder that scripts/test.sh empties before each run.
    let base = std::env::temp_dir().join("caldera-sidecar-tests");
    let spool = base.join(format!("{index}-spool"));
    let dead = base.join(format!("{index}-dead"));
    let mut env: Vec<(String, String)> = vec![
        ("CALDERA_URL", caldera_url.to_string()),
        ("CALDERA_USER", "admin".into()),
        ("CALDERA_PASSWORD", "admin-pass".into()),
        ("ELK_URL", super::search::search_url()),
        ("ELK_INDEX", index.to_string()),
        ("POLL_INTERVAL", "0.2".into()),
        ("POLL_IDLE_INTERVAL", "1".into()),
        ("SETTLE_GRACE", "0.5".into()),
        // Functional tests use a debug build and huge hostile operations: the active budget
        // (issue 12, default 5 %) would space their fetches by seconds. Its rules have tests of
        // their own (`caldera::budget`, tests/push.rs).
        ("CALDERA_CPU_BUDGET_ACTIVE", "50".into()),
        ("BULK_FLUSH_MS", "20".into()),
        ("ELK_CONNECTION_TIMEOUT", "5".into()),
        ("ELK_MAX_RETRIES", "2".into()),
        ("HEALTH_BIND", "127.0.0.1:0".into()),
        ("SPOOL_DIR", spool.display().to_string()),
        ("DEAD_LETTER_DIR", dead.display().to_string()),
        // The correlation stage sends requests of its own to Elasticsearch; the suites that
        // count or fault requests do not expect them. tests/correlate.rs turns it on.
        ("CORRELATION_ENABLED", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

pub fn settings(env: &[(String, String)]) -> Settings {
    let opts = LoadOptions {
        config_file: Some("/dev/null".into()),
        env_file: Some("/dev/null".into()),
    };
    let mut s = Layered::load(&opts, env.iter().cloned())
        .expect("layers")
        .settings()
        .expect("valid test settings");
    // The daemon renders PDFs with its own executable; in a test that is the test binary, so
    // point it at the real one.
    s.reports.renderer = Some(env!("CARGO_BIN_EXE_caldera-sidecar").into());
    s
}

pub async fn start(env: &[(String, String)]) -> Running {
    app::start(settings(env)).await.expect("sidecar starts")
}

pub async fn stop(r: Running) {
    assert!(
        r.shutdown(Duration::from_secs(20)).await,
        "sidecar stops in time"
    );
}

pub async fn health(r: &Running) -> (u16, serde_json::Value) {
    let resp = reqwest::get(format!("http://{}/api/v2/health", r.health_addr))
        .await
        .expect("health answers");
    let code = resp.status().as_u16();
    (code, resp.json().await.expect("health json"))
}
