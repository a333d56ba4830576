//! Secrets, configuration files and TLS (issue 13, items 9, 11, 13, 14): nothing secret in any
//! error or log line at any level, credentials sent as written, `.env` read as systemd reads
//! it, plain logs off a terminal, and private CAs trusted with verification kept on.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_sidecar::caldera::client::CalderaClient;
use caldera_sidecar::config::{CalderaAuth, Layered, LoadOptions};
use caldera_sidecar::state::Shared;
use support::app;
use support::caldera_stub::CalderaStub;
use support::raw_http::{RawServer, header, json_response};
use support::scenarios::*;
use support::search::{Search, search_url, unique_index, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");
const WAIT: Duration = Duration::from_secs(40);

/// The binary in `dir` (no config file, no .env unless the test writes one), clean environment.
fn sidecar(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPOOL_DIR", dir.join("spool"))
        .env("DEAD_LETTER_DIR", dir.join("dead"));
    c
}

fn stderr_of(c: &mut Command) -> (Option<i32>, String) {
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

// ---- 9. No secret in configuration errors ----------------------------------------------------

#[test]
fn an_unparseable_url_is_reported_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    for (key, url) in [
        ("ELK_URL", "http://elastic:S3cr3t-url-pw@host:99999"),
        (
            "ELK_URL",
            "http://es1:9200,https://elastic:S3cr3t-url-pw@bad host:9200",
        ),
        ("CALDERA_URL", "https://red:S3cr3t-url-pw@[::1:8888"),
    ] {
        let (code, err) = stderr_of(sidecar(dir.path()).arg("check-config").env(key, url));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(key) && err.contains("****@"), "{err}");
        assert!(!err.contains("S3cr3t-url-pw"), "{key}: {err}");
    }
}

#[test]
fn syntax_errors_in_env_and_toml_files_never_print_the_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, line) in [
        ("ELK_INDEX=x\nCALDERA_PASSWORD S3cr3t-dotenv\n", 2),
        ("CALDERA_PASSWORD=\"S3cr3t-dotenv\n", 1),
        ("export CALDERA_PASSWORD=S3cr3t-dotenv\n", 1),
    ] {
        std::fs::write(dir.path().join(".env"), text).unwrap();
        let (code, err) = stderr_of(sidecar(dir.path()).arg("check-config"));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(&format!(".env, line {line}")), "{err}");
        assert!(!err.contains("S3cr3t-dotenv"), "{err}");
    }
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    let toml = dir.path().join("s.toml");
    for text in [
        "caldera_password = \"S3cr3t-toml\n",
        "elk_index = \"x\"\ncaldera_password = S3cr3t-toml\n",
        "caldera_password = 'S3cr3t-toml' 'again'\n",
    ] {
        std::fs::write(&toml, text).unwrap();
        let (code, err) = stderr_of(
            sidecar(dir.path())
                .arg("--config")
                .arg(&toml)
                .arg("check-config"),
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("is not valid TOML") && err.contains("line "),
            "{err}"
        );
        assert!(!err.contains("S3cr3t-toml"), "{err}");
    }
}

// ---- 9. No secret in logs at any level; 13. no colour codes off a terminal -------------------

/// Runs the daemon against the stub with a session login until an operation is indexed,
/// stops it, and returns its log (stderr, a pipe).
async fn run_daemon_log(level_env: (&str, &str)) -> String {
    let stub = CalderaStub::start().await;
    stub.put_operation(op_a_finished());
    let index = unique_index("trust-logs");
    let s = Search::new(&index);
    let dir = tempfile::tempdir().unwrap();
    let child = sidecar(dir.path())
        .env("CALDERA_URL", stub.url())
        .env("CALDERA_USER", "admin")
        .env("CALDERA_PASSWORD", "admin-pass")
        .env("ELK_URL", search_url())
        .env("ELK_INDEX", &index)
        .env("POLL_INTERVAL", "0.2")
        .env("POLL_IDLE_INTERVAL", "0.5")
        .env("SETTLE_GRACE", "0")
        .env("HEALTH_BIND", "127.0.0.1:0")
        .env(level_env.0, level_env.1)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(WAIT, "op A indexed", || async {
        s.operation(OP_A_ID).await.filter(|d| d["settled"] == true)
    })
    .await;
    // A session expiry makes a second login (a second Set-Cookie) happen too.
    stub.expire_sessions();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(stub.session_count() >= 1);
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    s.delete_index().await;
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_session_cookie_is_not_logged_at_trace_or_debug() {
    for level in [("RUST_LOG", "trace"), ("LOG_LEVEL", "debug")] {
        let log = run_daemon_log(level).await;
        assert!(
            log.contains("logged in to Caldera"),
            "{level:?}: login not seen"
        );
        // Our own debug events are there: the level really was in force.
        assert!(log.contains("DEBUG"), "{level:?}");
        // cookie_store logs `inserting Set-Cookie 'Cookie { … API_SESSION=<value> …'` at debug.
        assert!(
            !log.contains("API_SESSION="),
            "{level:?}: the session cookie is in the log"
        );
        assert!(!log.contains("admin-pass"));
    }
}

#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_codes() {
    let log = run_daemon_log(("LOG_LEVEL", "info")).await;
    assert!(log.contains("caldera-sidecar starting"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape in a redirected log");
}

// ---- 11. Credentials as written; .env read as systemd reads it -------------------------------

#[tokio::test]
async fn url_credentials_are_sent_decoded() {
    let srv = RawServer::start(|_| json_response(200, r#"{"status":"green"}"#)).await;
    // `p@ss:w/rd` has to be percent-encoded inside a URL; the server must get it decoded.
    let url = format!("http://elastic:p%40ss%3Aw%2Frd@{}", srv.addr);
    let settings = app::settings(&app::test_env(
        "http://127.0.0.1:9",
        "x",
        &[("ELK_URL", &url)],
    ));
    let es = caldera_sidecar::sink::elastic::build_client(&settings.elastic).unwrap();
    let status = caldera_sidecar::sink::elastic::cluster_status(&es)
        .await
        .unwrap();
    assert_eq!(status, "green");
    let heads = srv.heads();
    // base64("elastic:p@ss:w/rd")
    assert_eq!(
        header(&heads[0], "authorization"),
        Some("Basic ZWxhc3RpYzpwQHNzOncvcmQ="),
        "{}",
        heads[0]
    );
}

#[test]
fn env_file_values_are_not_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("env");
    std::fs::write(
        &f,
        "HOME_DIR=/x\nCALDERA_USER=red\nCALDERA_PASSWORD=pa$word1\nELK_API_KEY=\"k${HOME_DIR}\\$z\"\nAPI_KEY='s$q\"x'\n",
    )
    .unwrap();
    let opts = LoadOptions {
        config_file: Some("/dev/null".into()),
        env_file: Some(f),
    };
    let s = Layered::load(&opts, []).unwrap().settings().unwrap();
    match &s.caldera.auth {
        CalderaAuth::Session { password, .. } => assert_eq!(password.expose(), "pa$word1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.elastic.api_key.as_ref().unwrap().expose(),
        "k${HOME_DIR}$z"
    );
    assert_eq!(s.api.key.as_ref().unwrap().expose(), "s$q\"x");
}

#[tokio::test]
async fn status_with_an_env_file_uses_the_key_systemd_would_pass() {
    let stub = CalderaStub::start().await;
    let index = unique_index("trust-status");
    let key = "pa$word1-k";
    let r = app::start(&app::test_env(
        &stub.url(),
        &index,
        &[("ENABLE_API_AUTH", "true"), ("API_KEY", key)],
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("env");
    std::fs::write(
        &env,
        format!(
            "HEALTH_BIND={}\nENABLE_API_AUTH=true\nAPI_KEY={key}\n",
            r.health_addr
        ),
    )
    .unwrap();
    let mut c = sidecar(dir.path());
    c.arg("--env-file").arg(&env).arg("status");
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // 2 would mean the key was refused (it was read as `pa`).
    assert!(matches!(out.status.code(), Some(0 | 1)), "{text}");
    assert!(!text.contains("refused"), "{text}");
    app::stop(r).await;
}

// ---- 14. Private CAs, verification kept on ---------------------------------------------------

struct Pki {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// A CA and a server certificate for `localhost` only, made for this test.
fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "caldera-sidecar test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
}

fn env_with(extra: &[(&str, &str)]) -> caldera_sidecar::config::Settings {
    let mut all = vec![
        ("CALDERA_USER", ""),
        ("CALDERA_PASSWORD", ""),
        ("CALDERA_API_KEY", "ADMIN123"),
    ];
    all.extend_from_slice(extra);
    app::settings(&app::test_env("http://127.0.0.1:9", "x", &all))
}

#[tokio::test]
async fn a_private_ca_is_trusted_for_elasticsearch_and_host_names_are_still_checked() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let ca = ca.display().to_string();
    let srv = RawServer::start_tls(
        |_| json_response(200, r#"{"status":"green"}"#),
        pki.acceptor.clone(),
    )
    .await;
    let port = srv.addr.port();
    let status = |url: String, ca: Option<String>| async move {
        let mut extra = vec![("ELK_URL", url.as_str())];
        if let Some(c) = &ca {
            extra.push(("ELK_CA_CERT", c.as_str()));
        }
        let es = caldera_sidecar::sink::elastic::build_client(&env_with(&extra).elastic).unwrap();
        caldera_sidecar::sink::elastic::cluster_status(&es).await
    };
    let ok = status(format!("https://localhost:{port}"), Some(ca.clone())).await;
    assert_eq!(ok.unwrap(), "green");
    // Without the CA: the certificate is not trusted.
    let e = status(format!("https://localhost:{port}"), None)
        .await
        .unwrap_err();
    assert!(e.message().contains("cannot reach"), "{}", e.message());
    // With the CA but another host name: refused too (the certificate names localhost only).
    let e = status(format!("https://127.0.0.1:{port}"), Some(ca))
        .await
        .unwrap_err();
    assert!(e.message().contains("cannot reach"), "{}", e.message());
    assert_eq!(
        srv.heads().len(),
        1,
        "only the verified connection sent a request"
    );
}

#[tokio::test]
async fn a_private_ca_is_trusted_for_caldera() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let srv = RawServer::start_tls(
        |_| json_response(200, r#"{"application":"Caldera","version":"5.3.0"}"#),
        pki.acceptor.clone(),
    )
    .await;
    let url = format!("https://localhost:{}", srv.addr.port());
    let ca = ca.display().to_string();
    let with_ca = env_with(&[("CALDERA_URL", &url), ("CALDERA_CA_CERT", &ca)]);
    let client = CalderaClient::new(&with_ca.caldera, Arc::new(Shared::default())).unwrap();
    let body = client.get_bytes("api/v2/health").await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("5.3.0"));
    let without = env_with(&[("CALDERA_URL", &url)]);
    let client = CalderaClient::new(&without.caldera, Arc::new(Shared::default())).unwrap();
    let e = client.get_bytes("api/v2/health").await.unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[test]
fn bad_ca_files_stop_check_config_with_the_key_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let good = dir.path().join("good.pem");
    std::fs::write(&good, pki().ca_pem).unwrap();
    for (key, file, extra, why) in [
        (
            "CALDERA_CA_CERT",
            "/nonexistent/ca.pem".into(),
            None,
            "cannot read",
        ),
        (
            "ELK_CA_CERT",
            empty.clone(),
            None,
            "holds no PEM certificate",
        ),
        (
            "ELK_CA_CERT",
            broken.clone(),
            None,
            "cannot be trusted as a CA",
        ),
        (
            "ELK_CA_CERT",
            good.clone(),
            Some(("ELK_VERIFY_SSL", "false")),
            "ELK_VERIFY_SSL=false",
        ),
    ] {
        let mut c = sidecar(dir.path());
        c.arg("check-config").env(key, &file);
        if let Some((k, v)) = extra {
            c.env(k, v);
        }
        let (code, err) = stderr_of(&mut c);
        assert_eq!(code, Some(2), "{key}: {err}");
        assert!(err.contains(key) && err.contains(why), "{key}: {err}");
    }
    let (code, out) = stderr_of(
        sidecar(dir.path())
            .arg("check-config")
            .env("ELK_CA_CERT", &good),
    );
    assert_eq!(code, Some(0), "{out}");
}

// ---- 16. .env never committed ----------------------------------------------------------------

#[test]
fn dot_env_is_ignored_by_git_but_the_example_is_not() {
    let root = env!("CARGO_MANIFEST_DIR");
    let started = Instant::now();
    let out = Command::new("git")
        .args([
            "check-ignore",
            "--no-index",
            "-v",
            ".env",
            ".env.local",
            ".env.example",
        ])
        .current_dir(root)
        .output();
    let Ok(out) = out else {
        // No git here: read the rules themselves.
        let rules = std::fs::read_to_string(Path::new(root).join(".gitignore")).unwrap();
        assert!(rules.lines().any(|l| l == ".env") && rules.contains("!.env.example"));
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\t.env\n") && text.contains("\t.env.local\n"),
        "{text}"
    );
    // `!.env.example` matches as a negation: git prints it with the `!` pattern.
    assert!(text.contains("!.env.example\t.env.example"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
