#![allow(dead_code)]
//! A fault-injecting HTTP proxy between the sidecar and the real search server.
//!
//! Tests must not stop or pause the shared search server (other tests use it at the same
//! time), so they put this proxy in front of it and break the proxy instead: refuse
//! connections (the port is closed, as when Elasticsearch is down), hang (accept and never
//! answer), answer the next requests with a status (429/503…), answer the next bulk
//! requests with every item refused by a status, as an overloaded Elasticsearch does, or
//! forward the next bulk requests and lose their answers (the documents are indexed, the
//! sidecar never hears it: its retry then gets 409).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward every request.
    Pass,
    /// The port is closed: connections are refused.
    Refuse,
    /// Accept requests and never answer them.
    Hang,
}

struct Inner {
    upstream: String,
    http: reqwest::Client,
    /// (remaining, status, body) for whole requests.
    fail: Mutex<Vec<(usize, u16, String)>>,
    /// (remaining, status) for bulk items.
    reject_items: Mutex<Vec<(usize, u16)>>,
    mode: watch::Sender<Mode>,
    requests: AtomicUsize,
    bulk_requests: AtomicUsize,
    /// Bulk requests still to forward without passing their answer back.
    lose_answers: AtomicUsize,
}

pub struct Proxy {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.mode.send_replace(Mode::Refuse);
        if let Some((stop, task)) = self.server.lock().unwrap().take() {
            stop.send_replace(true);
            task.abort();
        }
    }
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            fail: Mutex::new(Vec::new()),
            reject_items: Mutex::new(Vec::new()),
            mode: watch::channel(Mode::Pass).0,
            requests: AtomicUsize::new(0),
            bulk_requests: AtomicUsize::new(0),
            lose_answers: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Proxy {
            inner,
            addr,
            server: Mutex::new(None),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop, mut stopped) = watch::channel(false);
        let app = Router::new()
            .fallback(handle)
            .with_state(self.inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        *self.server.lock().unwrap() = Some((stop, task));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn mode(&self) -> Mode {
        *self.inner.mode.borrow()
    }

    /// Switches mode. Refuse closes the port (and every open connection); Pass reopens it on
    /// the same port.
    pub async fn set_mode(&self, mode: Mode) {
        let old = self.inner.mode.send_replace(mode);
        if mode == Mode::Refuse && old != Mode::Refuse {
            // Graceful shutdown closes the listener and idle keep-alive connections at once.
            if let Some((stop, _task)) = self.server.lock().unwrap().take() {
                stop.send_replace(true);
            }
        } else if mode != Mode::Refuse && old == Mode::Refuse {
            let mut tries = 0;
            let listener = loop {
                match tokio::net::TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("proxy cannot rebind {}: {e}", self.addr),
                }
            };
            self.serve(listener);
        }
    }

    /// The next `n` requests get `status` with `body` (JSON) instead of reaching the server.
    pub fn fail_next(&self, n: usize, status: u16, body: &str) {
        self.inner
            .fail
            .lock()
            .unwrap()
            .push((n, status, body.to_string()));
    }

    /// The next `n` bulk requests are answered 200 with every item refused with `status`
    /// (nothing reaches the server), like Elasticsearch rejecting items under load.
    pub fn reject_bulk_items(&self, n: usize, status: u16) {
        self.inner.reject_items.lock().unwrap().push((n, status));
    }

    /// The next `n` bulk requests reach the server, but their answers never come back (the
    /// connection hangs until the client gives up).
    pub fn lose_bulk_answers(&self, n: usize) {
        self.inner.lose_answers.store(n, Ordering::Relaxed);
    }

    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::Relaxed)
    }

    pub fn bulk_requests(&self) -> usize {
        self.inner.bulk_requests.load(Ordering::Relaxed)
    }
}

fn take(list: &Mutex<Vec<(usize, u16, String)>>) -> Option<(u16, String)> {
    let mut l = list.lock().unwrap();
    let first = l.first_mut()?;
    first.0 -= 1;
    let out = (first.1, first.2.clone());
    if first.0 == 0 {
        l.remove(0);
    }
    Some(out)
}

fn json_response(status: u16, body: String) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    inner.requests.fetch_add(1, Ordering::Relaxed);
    if *inner.mode.borrow() == Mode::Refuse {
        // A request on a connection opened before the port closed: end it too.
        let mut r = json_response(503, r#"{"error":"proxy: down"}"#.into());
        r.headers_mut()
            .insert("connection", axum::http::HeaderValue::from_static("close"));
        return r;
    }
    if req.uri().path().ends_with("/_bulk") && *inner.mode.borrow() == Mode::Hang {
        inner.bulk_requests.fetch_add(1, Ordering::Relaxed);
    }
    if *inner.mode.borrow() == Mode::Hang {
        let mut rx = inner.mode.subscribe();
        // Wait until the mode changes away from Hang, then drop the request unanswered.
        let _ = rx.wait_for(|m| *m != Mode::Hang).await;
        return json_response(503, r#"{"error":"proxy: hang released"}"#.into());
    }
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let body: Bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let is_bulk = parts.uri.path().ends_with("/_bulk");
    if is_bulk {
        inner.bulk_requests.fetch_add(1, Ordering::Relaxed);
    }
    if let Some((status, body)) = take(&inner.fail) {
        return json_response(status, body);
    }
    if is_bulk {
        let reject = {
            let mut l = inner.reject_items.lock().unwrap();
            match l.first_mut() {
                Some(first) => {
                    first.0 -= 1;
                    let s = first.1;
                    if first.0 == 0 {
                        l.remove(0);
                    }
                    Some(s)
                }
                None => None,
            }
        };
        if let Some(status) = reject {
            return json_response(200, rejected_bulk(&body, status));
        }
    }
    let mut headers = HeaderMap::new();
    for (k, v) in parts.headers.iter() {
        if !matches!(
            k.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        ) {
            headers.insert(k.clone(), v.clone());
        }
    }
    let resp = inner
        .http
        .request(parts.method.clone(), format!("{}{}", inner.upstream, path))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let lose = is_bulk
        && inner
            .lose_answers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
    match resp {
        Ok(_) if lose => {
            // Indexed upstream; the answer is lost on the way back.
            std::future::pending::<Response>().await
        }
        Ok(r) => {
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            let bytes = r.bytes().await.unwrap_or_default();
            Response::builder()
                .status(status)
                .header("content-type", ct)
                .body(Body::from(bytes))
                .unwrap()
        }
        Err(e) => json_response(502, format!(r#"{{"error":"proxy: {e}"}}"#)),
    }
}

/// A bulk answer refusing every action of `body` with `status`.
fn rejected_bulk(body: &[u8], status: u16) -> String {
    let text = String::from_utf8_lossy(body);
    let mut items = Vec::new();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(action) = lines.next() {
        let v: serde_json::Value = serde_json::from_str(action).unwrap_or_default();
        let (op, meta) = v
            .as_object()
            .and_then(|o| o.iter().next())
            .map(|(k, m)| (k.clone(), m.clone()))
            .unwrap_or(("index".into(), serde_json::Value::Null));
        if op != "delete" {
            lines.next();
        }
        items.push(serde_json::json!({ op: {
            "_index": meta["_index"], "_id": meta["_id"], "status": status,
            "error": {"type": "es_rejected_execution_exception",
                      "reason": "proxy: rejected execution (injected)"}
        }}));
    }
    serde_json::json!({"took": 1, "errors": true, "items": items}).to_string()
}
