//! The real binary: command line, configuration errors, graceful stop, and no secret in output.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::caldera_stub::CalderaStub;
use support::scenarios::*;
use support::search::{Search, unique_index, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");

/// A command in an empty directory (no config/sidecar.toml, no .env) with a clean environment.
fn sidecar(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = sidecar(dir.path()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = sidecar(dir.path()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for cmd in ["run", "check-config"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn malformed_elk_url_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["check-config", "run"] {
        let out = sidecar(dir.path())
            .arg(cmd)
            .env("ELK_URL", "ht!tp://not a url")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ELK_URL"), "{err}");
    }
    // A bad value in the config file is reported the same way.
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/sidecar.toml"),
        "poll_interval = \"soon\"\n",
    )
    .unwrap();
    let out = sidecar(dir.path()).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("POLL_INTERVAL"));
}

#[test]
fn check_config_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "CALDERA_PASSWORD=dotenv-pass-93\n").unwrap();
    let out = sidecar(dir.path())
        .arg("check-config")
        .env("CALDERA_USER", "admin")
        .env("CALDERA_API_KEY", "caldera-key-1f2e")
        .env("ELK_API_KEY", "elk-key-77ab")
        .env("ELK_URL", "https://elastic:url-pass-5c@es.example:9200")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in [
        "dotenv-pass-93",
        "caldera-key-1f2e",
        "elk-key-77ab",
        "url-pass-5c",
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert!(
        text.contains("CALDERA_PASSWORD") && text.contains("(.env)"),
        "{text}"
    );
}

#[tokio::test]
async fn daemon_runs_stops_on_sigterm_and_never_logs_secrets() {
    let stub = CalderaStub::start().await;
    stub.add_user("analyst", "pw-S3cr3t-caldera");
    stub.set_api_key("key-S3cr3t-caldera");
    stub.put_operation(op_a_finished());
    let index = unique_index("cli-secrets");
    let s = Search::new(&index);
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        "pw-S3cr3t-caldera",
        "key-S3cr3t-caldera",
        "elk-S3cr3t-key",
        "url-S3cr3t",
    ];
    let search_url = support::search::search_url();
    let with_creds = search_url.replace("http://", "http://elastic:url-S3cr3t@");
    let child = sidecar(dir.path())
        .env("CALDERA_URL", stub.url())
        .env("CALDERA_USER", "analyst")
        .env("CALDERA_PASSWORD", "pw-S3cr3t-caldera")
        .env("CALDERA_API_KEY", "key-S3cr3t-caldera")
        .env("ELK_URL", &with_creds)
        .env("ELK_INDEX", &index)
        .env("POLL_INTERVAL", "0.2")
        .env("POLL_IDLE_INTERVAL", "0.5")
        .env("SETTLE_GRACE", "0")
        .env("HEALTH_BIND", "127.0.0.1:0")
        .env("LOG_LEVEL", "trace")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for(
        Duration::from_secs(30),
        "op A indexed by the binary",
        || async { s.operation(OP_A_ID).await.filter(|d| d["settled"] == true) },
    )
    .await;
    // A wrong password makes the login fail: that path must not leak either.
    stub.expire_sessions();
    stub.add_user("analyst", "changed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "graceful stop exits 0");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("stopped cleanly"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
    // Only the sidecar's own events follow LOG_LEVEL (libraries stay at warn): its debug
    // lines show the level was in force.
    assert!(
        log.lines().count() > 5 && log.contains("\"DEBUG\""),
        "trace logging produced output"
    );
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} appears in the log");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    }
    s.delete_index().await;
}

#[test]
fn readme_settings_table_is_current() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = caldera_sidecar::config::reference_table();
    assert!(
        readme.contains(&table),
        "README's settings table differs from src/config.rs:\n{table}"
    );
}
