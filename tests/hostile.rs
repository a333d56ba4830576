//! Hostile answers and hostile clients (issue 13, items 1-4 and 16): a time no calendar can
//! hold, a dying stage, a gzip bomb, a 5 MB error string, half-sent HTTP requests at a small
//! file limit, and an operation too large to build in one go. Each test fails without its fix.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_sidecar::caldera::client::{CalderaClient, CalderaError};
use caldera_sidecar::state::Shared;
use serde_json::Value;
use support::app;
use support::caldera_stub::{CalderaStub, Fault, RouteKind};
use support::raw_http::{RawServer, header, response};
use support::scenarios::*;
use support::search::{Search, search_url, unique_index, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");
const WAIT: Duration = Duration::from_secs(40);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary in an empty directory with a clean environment and a private spool.
fn sidecar(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPOOL_DIR", dir.join("spool"))
        .env("DEAD_LETTER_DIR", dir.join("dead"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits (bounded) for a child to exit; kills it and fails if it does not.
fn wait_exit(mut child: Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the sidecar did not exit within {limit:?}; log tail:\n{}",
                tail(&String::from_utf8_lossy(&out.stderr))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(s: &str) -> &str {
    let mut cut = s.len().saturating_sub(3000);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    &s[cut..]
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

// ---- 1. A time no calendar holds; a dying stage ----------------------------------------------

#[tokio::test]
async fn an_out_of_range_time_is_refused_and_indexing_goes_on() {
    let stub = CalderaStub::start().await;
    let bad_id = new_uuid();
    let mut bad = op_many_links(&bad_id, "hostile times", 26);
    // 9999-12-31T23:59:59-23:59 is 10000-01-01 in UTC: it used to panic the watcher.
    bad["start"] = Value::from("9999-12-31T23:59:59-23:59");
    bad["chain"][0]["finish"] = Value::from("9999-12-31T23:59:59-23:59");
    bad["chain"][1]["decide"] = Value::from("0000-01-01T00:00:00+23:59");
    stub.put_operation(bad);
    let index = unique_index("hostile-time");
    let s = Search::new(&index);
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    let doc = wait_for(WAIT, "the operation with bad times indexed", || async {
        s.operation(&bad_id).await
    })
    .await;
    assert_eq!(doc["operation_id"], bad_id.as_str());
    assert!(doc["start"].is_null(), "the bad start is dropped: {doc}");
    // The watcher is alive: a later operation is indexed too.
    let good_id = new_uuid();
    stub.put_operation(op_many_links(&good_id, "after the bad one", 26));
    wait_for(WAIT, "the next operation indexed", || async {
        s.operation(&good_id).await
    })
    .await;
    wait_for(WAIT, "all 52 link documents", || async {
        (s.count("event.dataset:\"caldera.link\"").await == 52).then_some(())
    })
    .await;
    assert_eq!(r.shared.fatal(), None);
    assert!(r.shared.stats.invalid_values.get() >= 1);
    app::stop(r).await;
    s.delete_index().await;
}

#[test]
fn a_dead_stage_makes_the_binary_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    // Debug builds only: the hook makes the watcher panic after 1 s.
    let child = sidecar(dir.path())
        .env("CALDERA_SIDECAR_TEST_PANIC", "watcher:1")
        .env("CALDERA_URL", "http://127.0.0.1:9")
        .env("ELK_URL", "http://127.0.0.1:9")
        .env("HEALTH_BIND", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let out = wait_exit(child, Duration::from_secs(40));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", tail(&log));
    assert!(
        log.contains("pipeline stage died") && log.contains("the watcher stage panicked"),
        "{}",
        tail(&log)
    );
}

#[tokio::test]
async fn a_dead_stage_turns_health_unhealthy_and_livez_fails() {
    let stub = CalderaStub::start().await;
    let index = unique_index("hostile-fatal");
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    assert_eq!(
        http_get(r.health_addr, "/livez").await,
        Some((200, "ok".into()))
    );
    // What the supervisor records when a stage dies (its own test makes a stage panic).
    r.shared
        .set_fatal("the sink stage panicked: injected".into());
    let (code, _) = http_get(r.health_addr, "/livez").await.unwrap();
    assert_eq!(code, 503);
    let (code, body) = http_get(r.health_addr, "/api/v2/health").await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["status"], "unhealthy");
    assert_eq!(v["checks"]["pipeline"]["status"], "unhealthy");
    let msg = v["checks"]["pipeline"]["message"].as_str().unwrap();
    assert!(
        msg.contains("sink stage panicked") && msg.contains("exits with code 1"),
        "{msg}"
    );
    app::stop(r).await;
}

// ---- 2. Bodies are capped, decompressed size included ----------------------------------------

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn key_env(caldera_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vec![
        ("CALDERA_USER", ""),
        ("CALDERA_PASSWORD", ""),
        ("CALDERA_API_KEY", "ADMIN123"),
    ];
    all.extend_from_slice(extra);
    app::test_env(caldera_url, "unused-index", &all)
}

#[tokio::test]
async fn a_gzip_bomb_from_caldera_stops_at_the_cap() {
    // 64 MB of zeros in ~64 KB: far below the 1 MB cap on the wire, 64x above it inflated.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    let srv = RawServer::start(move |_| {
        response(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            &bomb,
        )
    })
    .await;
    let settings = app::settings(&key_env(&srv.url(), &[("CALDERA_MAX_BODY_MB", "1")]));
    let client = CalderaClient::new(&settings.caldera, Arc::new(Shared::default())).unwrap();
    let e = client
        .get_bytes(caldera_sidecar::caldera::OPERATIONS_LIST)
        .await
        .expect_err("the bomb is refused");
    assert!(matches!(e, CalderaError::TooLarge { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("CALDERA_MAX_BODY_MB") && msg.contains("1.00 MB after decompression"),
        "{msg}"
    );

    // A compressed answer below the cap is read whole.
    let small = gzip(b"[]");
    let srv = RawServer::start(move |_| {
        response(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            &small,
        )
    })
    .await;
    let settings = app::settings(&key_env(&srv.url(), &[("CALDERA_MAX_BODY_MB", "1")]));
    let client = CalderaClient::new(&settings.caldera, Arc::new(Shared::default())).unwrap();
    let body = client
        .get_bytes(caldera_sidecar::caldera::OPERATIONS_LIST)
        .await
        .unwrap();
    assert_eq!(body, b"[]");
}

#[tokio::test]
async fn elasticsearch_answers_are_asked_uncompressed_and_huge_ones_refused_unread() {
    // Announces 300 MB, sends nothing: the sidecar must refuse it before reading.
    let srv = RawServer::start(|_| {
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-elastic-product: Elasticsearch\r\ncontent-length: 314572800\r\n\r\n{".to_vec()
    })
    .await;
    let settings = app::settings(&key_env("http://127.0.0.1:9", &[("ELK_URL", &srv.url())]));
    let es = caldera_sidecar::sink::elastic::build_client(&settings.elastic).unwrap();
    let e = caldera_sidecar::sink::elastic::cluster_status(&es)
        .await
        .unwrap_err();
    assert!(e.message().contains("not read"), "{}", e.message());
    let heads = srv.heads();
    assert_eq!(
        header(&heads[0], "accept-encoding"),
        Some("identity"),
        "{}",
        heads[0]
    );
}

// ---- 4. Error text is capped everywhere ------------------------------------------------------

#[tokio::test]
async fn a_five_megabyte_string_from_caldera_gives_short_errors_health_and_log_lines() {
    let stub = CalderaStub::start().await;
    // A JSON string where a list is expected: serde's message quotes the whole value.
    let huge = serde_json::to_string(&"A".repeat(5 << 20)).unwrap();
    stub.inject(RouteKind::OperationsList, 1_000_000, Fault::Body(huge));
    let index = unique_index("hostile-5mb");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let child = sidecar(dir.path())
        .env("CALDERA_URL", stub.url())
        .env("CALDERA_USER", "admin")
        .env("CALDERA_PASSWORD", "admin-pass")
        .env("ELK_URL", search_url())
        .env("ELK_INDEX", &index)
        .env("POLL_INTERVAL", "0.2")
        .env("POLL_IDLE_INTERVAL", "0.5")
        .env("HEALTH_BIND", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = wait_for(WAIT, "health shows the Caldera error", || async {
        let (_, body) = http_get(addr, "/api/v2/health").await?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["checks"]["caldera"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("undecodable"))
            .then_some(body)
    })
    .await;
    assert!(
        body.len() < 16 * 1024,
        "health answer is {} bytes",
        body.len()
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    let last = v["checks"]["caldera"]["last_error"].as_str().unwrap();
    assert!(last.len() < 1200, "last_error is {} bytes", last.len());
    sigterm(&child);
    let out = wait_exit(child, WAIT);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("undecodable reply"), "{}", tail(&log));
    for line in log.lines() {
        assert!(line.len() <= 8 * 1024, "a log line of {} bytes", line.len());
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    Search::new(&index).delete_index().await;
}

// ---- 3. Half-sent requests do not starve the pipeline ----------------------------------------

#[tokio::test]
async fn half_sent_requests_are_closed_and_the_pipeline_keeps_its_file_descriptors() {
    let stub = CalderaStub::start().await;
    let index = unique_index("hostile-slowloris");
    let s = Search::new(&index);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = sidecar(dir.path());
    cmd.env("CALDERA_URL", stub.url())
        .env("CALDERA_USER", "admin")
        .env("CALDERA_PASSWORD", "admin-pass")
        .env("ELK_URL", search_url())
        .env("ELK_INDEX", &index)
        .env("POLL_INTERVAL", "0.2")
        .env("POLL_IDLE_INTERVAL", "0.5")
        .env("SETTLE_GRACE", "0.5")
        .env("ENABLE_API_AUTH", "true")
        .env("API_KEY", "k-123")
        .env("HEALTH_BIND", format!("127.0.0.1:{port}"));
    // The reviewer's setting: 64 files for everything.
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(WAIT, "the sidecar listens", || async {
        http_get(addr, "/livez").await.filter(|(c, _)| *c == 200)
    })
    .await;

    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..100)
        .filter_map(|_| {
            let mut c = TcpStream::connect(addr).ok()?;
            let _ = c.write_all(b"GET /api/v2/health HTTP/1.1\r\nHost: x\r\nX-API-Key: k-1");
            Some(c)
        })
        .collect();
    assert!(slow.len() >= 90, "only {} connections opened", slow.len());

    // The pipeline still polls Caldera and indexes while they hang.
    let op_id = new_uuid();
    stub.put_operation(op_many_links(&op_id, "under slowloris", 26));
    wait_for(WAIT, "the operation and its links indexed", || async {
        let settled = s.operation(&op_id).await.filter(|d| d["settled"] == true);
        (settled.is_some() && s.links(&op_id).await.len() == 26).then_some(())
    })
    .await;
    // Liveness answers again once the header timeout freed the slots (5 s).
    wait_for(Duration::from_secs(10), "/livez answers", || async {
        http_get(addr, "/livez").await.filter(|(c, _)| *c == 200)
    })
    .await;
    // Every half-sent request was closed by the server within the header timeout (+ margin).
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // a 408 or similar before the close is fine
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a half-sent request is still open: {e}"),
            }
        }
    }
    assert!(
        opened.elapsed() < Duration::from_secs(15) + WAIT,
        "closed within the timeouts"
    );
    sigterm(&child);
    let out = wait_exit(child, WAIT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    s.delete_index().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_not_held_forever() {
    use caldera_sidecar::server::listen::{HEADER_TIMEOUT, IDLE_TIMEOUT};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stub = CalderaStub::start().await;
    let index = unique_index("hostile-idle");
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    let mut c = tokio::net::TcpStream::connect(r.health_addr).await.unwrap();
    c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then quiet: the server must close it after the idle timeout.
    let quiet = Instant::now();
    let n = tokio::time::timeout(IDLE_TIMEOUT + Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed by the server within the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // hyper counts waiting for the next request's headers as reading headers.
    assert!(
        quiet.elapsed() <= HEADER_TIMEOUT + Duration::from_secs(2),
        "{:?}",
        quiet.elapsed()
    );
    app::stop(r).await;
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stub = CalderaStub::start().await;
    let index = unique_index("hostile-head");
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    let mut c = tokio::net::TcpStream::connect(r.health_addr).await.unwrap();
    let junk = "a".repeat(200 * 1024);
    // The server may close before all of it is written: that is the point.
    let _ = c
        .write_all(format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Junk: {junk}\r\n\r\n").as_bytes())
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "a 200 KB head was served: {text}"
    );
    // The server is still there for well-behaved clients.
    assert_eq!(
        http_get(r.health_addr, "/livez").await,
        Some((200, "ok".into()))
    );
    app::stop(r).await;
}

// ---- 16. A very large operation is indexed in pieces, nothing dropped ------------------------

#[test]
fn a_build_holds_at_most_one_piece_of_link_documents() {
    use caldera_sidecar::caldera::model::Operation;
    use caldera_sidecar::document::types::{LinkId, Timestamp};
    use caldera_sidecar::document::{self, MAX_LINK_DOCS_PER_BUILD};
    let op_id = new_uuid();
    let n = MAX_LINK_DOCS_PER_BUILD * 2 + 500;
    let body = serde_json::to_vec(&op_many_links(&op_id, "big", n)).unwrap();
    let settings = app::settings(&app::test_env("http://127.0.0.1:9", "unused", &[]));
    let mut sent = std::collections::HashSet::new();
    let mut pieces = Vec::new();
    loop {
        let op: Operation = serde_json::from_slice(&body).unwrap();
        let mut wanted = |id: &LinkId, _: &str| !sent.contains(id.as_str());
        let built = document::build_with(
            op,
            None,
            false,
            Timestamp::now(),
            &settings.documents,
            &mut wanted,
        )
        .unwrap();
        // The operation document always counts every link.
        assert_eq!(built.operation.link_counts.total, n);
        assert!(built.links.len() <= MAX_LINK_DOCS_PER_BUILD);
        pieces.push(built.links.len());
        for l in &built.links {
            sent.insert(l.link_id.as_str().to_string());
        }
        if built.deferred == 0 {
            break;
        }
        assert_eq!(built.deferred, n - sent.len());
    }
    assert_eq!(
        pieces,
        vec![MAX_LINK_DOCS_PER_BUILD, MAX_LINK_DOCS_PER_BUILD, 500]
    );
    assert_eq!(sent.len(), n);
}

#[tokio::test]
async fn a_very_large_operation_is_indexed_whole_in_pieces() {
    let n = caldera_sidecar::document::MAX_LINK_DOCS_PER_BUILD * 2 + 300;
    let stub = CalderaStub::start().await;
    let op_id = new_uuid();
    stub.put_operation(op_many_links(&op_id, "very large", n));
    let index = unique_index("hostile-large");
    let s = Search::new(&index);
    let r = app::start(&app::test_env(&stub.url(), &index, &[])).await;
    wait_for(
        Duration::from_secs(90),
        "every link document, and the operation settled",
        || async {
            let settled = s.operation(&op_id).await.filter(|d| d["settled"] == true);
            (settled.is_some() && s.links(&op_id).await.len() == n).then_some(())
        },
    )
    .await;
    let doc = s.operation(&op_id).await.unwrap();
    assert_eq!(doc["link_counts"]["total"], n);
    app::stop(r).await;
    s.delete_index().await;
}
