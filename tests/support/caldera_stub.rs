#![allow(dead_code)]
//! In-process stub of a MITRE Caldera 5.3.0 server (REST API v2 subset), for tests.
//!
//! Behaviour follows the recordings in `tests/fixtures/caldera` (README.md there) and
//! Caldera's source (`app/api/v2/security.py`, `app/service/auth_svc.py`,
//! `app/service/login_handlers/default.py`, `app/api/v2/handlers/*`, aiohttp_session):
//!
//! * Auth on every `/api/v2/*` route (incl. `/health`): `KEY` header equal to the
//!   configured key, or a valid `API_SESSION` cookie (KEY checked first). Otherwise
//!   `401`, `text/plain; charset=utf-8`, `401: Unauthorized`.
//! * Query-string validation (`422 {"querystring": {"<param>": ["Unknown field."]}}`)
//!   runs **before** auth: in Caldera it is aiohttp_apispec's `validation_middleware`
//!   on the main app, while auth is a middleware of the `/api/v2` sub-app, which runs
//!   inside it. So `?state=x` without a key gives 422, not 401.
//! * `POST /enter` (form `username`, `password`): 302 `Location: /`; on success with
//!   `Set-Cookie: API_SESSION="<token>"; expires=<+7 days>; HttpOnly; Max-Age=604800; Path=/`
//!   (aiohttp_session `EncryptedCookieStorage`, `session_expiration_days: 7`; the value
//!   is quoted because a Fernet token ends with `=`). On failure the same 302 without a cookie.
//! * `GET /` (and any GET outside `/api/v2/`): 200 `text/html` (Caldera's UI page), so
//!   a client that follows the login redirect gets 200.
//! * Timing: Caldera verifies the KEY with argon2 on its single event loop, so a request
//!   carrying a `KEY` header costs [`CalderaStub::set_key_delay`] (README: ~200 ms with
//!   the red key) and, while it is being verified, every other request waits
//!   (disable with [`CalderaStub::set_single_event_loop`]). A login with an existing
//!   user pays half of it (one argon2 verify instead of two).
//! * Serialization cost ([`CalderaStub::set_cost_model`], off by default so functional tests
//!   stay fast): a real Caldera dumps every object it returns in full before `include` drops
//!   fields, so each read holds the event loop in proportion to what it serializes.
//!   [`CostModel::caldera_5_3`] is calibrated on the issue-12 measurements of a real Caldera
//!   5.3.0 (session cookie, loopback): the listing ~0.75 ms per link Caldera holds, one
//!   operation 10 ms + 2.5 ms per link, one link 4 ms, health/agents 3 ms. Each request's
//!   charged cost is kept in its [`RequestRecord`] (`cost`), so a benchmark can add up the
//!   Caldera time a sidecar caused.
//! * `GET /api/v2/agents`: each agent's `status` is computed at read time like Caldera's
//!   `Agent.status` ([`agent_status`]); `GET /api/v2/deploy_commands` serves the recording
//!   (no querystring schema), and `GET /api/v2/config/agents` its `agents.*` keys (what
//!   Caldera's `get_filtered_config('agents')` returns; other config names 404, `main` 501).
//! * JSON bodies: `application/json; charset=utf-8`. Note: this crate's serde_json has no
//!   `preserve_order`, so keys in stub responses come out sorted, not in Caldera's order.
//! * Routes of Caldera's v2 API that this stub does not model (POST/PATCH/DELETE
//!   operations, abilities, `operations/summary`, …) answer `501` with a text body
//!   `caldera_stub: not modelled: <METHOD> <path>` (after auth), so a test notices.
//!   Unknown v2 paths: `404: Not Found` (after auth, like aiohttp); wrong method on a
//!   real path: `405: Method Not Allowed`.
//!
//! Dropping the stub stops the listener and closes every open connection (idle
//! keep-alive ones too), and hung requests ([`Fault::Hang`]) are cut.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::scenarios;

pub const JSON_CT: &str = "application/json; charset=utf-8";
pub const TEXT_CT: &str = "text/plain; charset=utf-8";
pub const HTML_CT: &str = "text/html; charset=utf-8";
/// Caldera's session cookie name.
pub const SESSION_COOKIE: &str = "API_SESSION";
/// `session_expiration_days: 7` in Caldera's default config, in seconds.
pub const SESSION_MAX_AGE: u64 = 7 * 86_400;

/// Which route a request hit (for fault injection and counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `POST /enter`
    Enter,
    /// `GET /api/v2/health`
    Health,
    /// `GET /api/v2/operations`
    OperationsList,
    /// `GET /api/v2/operations/{id}`
    Operation,
    /// `GET /api/v2/operations/{id}/links`
    Links,
    /// `GET /api/v2/operations/{id}/links/{link_id}`
    Link,
    /// `GET /api/v2/operations/{id}/links/{link_id}/result`
    LinkResult,
    /// `POST /api/v2/operations/{id}/report`
    Report,
    /// `POST /api/v2/operations/{id}/event-logs`
    EventLogs,
    /// `GET /api/v2/agents`
    Agents,
    /// `GET /api/v2/deploy_commands`
    DeployCommands,
    /// `GET /api/v2/config/{name}`
    Config,
    /// Anything else (UI pages, `/logout`, unmodelled / unknown routes, wrong methods).
    Other,
}

/// How a request presented itself (decided from its headers on arrival).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A `KEY` header is present (valid or not). Caldera checks it first, so such a
    /// request pays the key cost even if it also carries a valid session.
    Key,
    /// No `KEY` header, and a valid `API_SESSION` cookie.
    Session,
    /// Neither (an invalid/expired cookie counts as none).
    None,
}

/// A response injected instead of the normal one (see [`CalderaStub::inject`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer at once with this status, body and `Content-Type`.
    Status(u16, String, &'static str),
    /// Never answer (the handler waits until the stub is dropped; the connection is then cut).
    Hang,
    /// Wait this long, then handle the request normally (auth, key delay included).
    Delay(Duration),
    /// `200` with this raw (possibly malformed) body, `application/json; charset=utf-8`.
    Body(String),
}

/// One request seen by the stub.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub kind: RouteKind,
    pub auth: AuthMethod,
    pub method: String,
    /// Path and query as received, e.g. `/api/v2/operations?include=id`.
    pub path: String,
    /// `None` while the request is being handled, or if it never got an answer
    /// (hung, or the client went away first).
    pub status: Option<u16>,
    /// The answer came from an injected [`Fault::Status`] / [`Fault::Body`]
    /// (or the request was hung by [`Fault::Hang`]).
    pub faulted: bool,
    pub received: Instant,
    pub received_at: SystemTime,
    pub answered: Option<Instant>,
    /// Event-loop time charged by the [`CostModel`] (zero without one).
    pub cost: Duration,
}

/// What one request costs Caldera's event loop, by what it serializes (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CostModel {
    /// `GET /operations`: fixed part, and per link of every operation held.
    pub listing: Duration,
    pub listing_per_link: Duration,
    /// `GET /operations/{id}` (and `/links`, the report, event-logs): fixed part, and per link
    /// of that operation.
    pub operation: Duration,
    pub operation_per_link: Duration,
    /// `GET /operations/{id}/links/{link_id}` (and its `/result`).
    pub link: Duration,
    /// `GET /health`, `GET /agents`.
    pub other: Duration,
}

impl CostModel {
    /// Calibrated on a real Caldera 5.3.0 holding ~10 operations / ~560 links (issue 12):
    /// listing 0.41-0.52 s (0.75 ms × 560 = 0.42 s), a 56-link operation 0.12-0.18 s
    /// (10 + 2.5 × 56 = 150 ms), one link 4 ms, health/agents 2-4 ms. The report and
    /// event-logs were not measured; they walk every link, so they are charged like the
    /// operation (an upper bound).
    pub fn caldera_5_3() -> Self {
        Self {
            listing: Duration::from_millis(5),
            listing_per_link: Duration::from_micros(750),
            operation: Duration::from_millis(10),
            operation_per_link: Duration::from_micros(2_500),
            link: Duration::from_millis(4),
            other: Duration::from_millis(3),
        }
    }

    fn of(&self, st: &StubState, route: &V2Route) -> Duration {
        let links = |op: &Value| op["chain"].as_array().map_or(0, Vec::len) as u32;
        let op_cost = |id: &str| {
            let n = st
                .operations
                .iter()
                .find(|o| o["id"] == id)
                .map_or(0, links);
            self.operation + self.operation_per_link * n
        };
        match route {
            V2Route::Health | V2Route::Agents | V2Route::DeployCommands | V2Route::Config(_) => {
                self.other
            }
            V2Route::OperationsList => {
                let n: u32 = st.operations.iter().map(links).sum();
                self.listing + self.listing_per_link * n
            }
            V2Route::Operation(id)
            | V2Route::Links(id)
            | V2Route::Report(id)
            | V2Route::EventLogs(id) => op_cost(id),
            V2Route::Link(..) | V2Route::LinkResult(..) => self.link,
        }
    }
}

struct FaultEntry {
    kind: RouteKind,
    remaining: usize,
    fault: Fault,
}

struct StubState {
    api_key: String,
    users: HashMap<String, String>,
    sessions: HashSet<String>,
    key_delay: Duration,
    single_event_loop: bool,
    cost_model: CostModel,
    /// Insertion order = Caldera's in-memory order (used when the sort key is absent).
    operations: Vec<Value>,
    reports: HashMap<String, Value>,
    event_logs: HashMap<String, Value>,
    link_results: HashMap<String, String>,
    health: Value,
    agents: Value,
    deploy_commands: Value,
    faults: Vec<FaultEntry>,
    records: Vec<(u64, RequestRecord)>,
    next_record: u64,
}

struct Shared {
    state: Mutex<StubState>,
    /// Models Caldera's single asyncio loop: argon2 key checks hold it.
    event_loop: tokio::sync::Mutex<()>,
    kill: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, StubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The stub server. Serves on `127.0.0.1:<random port>` until dropped.
pub struct CalderaStub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for CalderaStub {
    fn drop(&mut self) {
        self.shared.kill.send_replace(true);
        self.task.abort();
    }
}

impl CalderaStub {
    /// Bind `127.0.0.1:0` and serve. Defaults: API key `ADMIN123`, user
    /// `admin`/`admin-pass`, no operations, `health.json` and `agents.json` as recorded,
    /// recorded link results, key delay 0, single event loop on.
    pub async fn start() -> CalderaStub {
        let link_results = scenarios::recorded_link_results().into_iter().collect();
        let state = StubState {
            api_key: "ADMIN123".to_string(),
            users: HashMap::from([("admin".to_string(), "admin-pass".to_string())]),
            sessions: HashSet::new(),
            key_delay: Duration::ZERO,
            single_event_loop: true,
            cost_model: CostModel::default(),
            operations: Vec::new(),
            reports: HashMap::new(),
            event_logs: HashMap::new(),
            link_results,
            health: scenarios::fixture("health.json"),
            agents: scenarios::fixture("agents.json"),
            deploy_commands: scenarios::fixture("deploy_commands.json"),
            faults: Vec::new(),
            records: Vec::new(),
            next_record: 0,
        };
        let (kill, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            event_loop: tokio::sync::Mutex::new(()),
            kill,
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let listener = StubListener {
            inner: listener,
            kill: shared.kill.subscribe(),
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CalderaStub { shared, addr, task }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    // ---- auth -------------------------------------------------------------

    /// The accepted `KEY` header value (default `ADMIN123`).
    pub fn set_api_key(&self, key: &str) {
        self.shared.lock().api_key = key.to_string();
    }

    /// Add (or change the password of) a login user.
    pub fn add_user(&self, user: &str, password: &str) {
        self.shared
            .lock()
            .users
            .insert(user.to_string(), password.to_string());
    }

    /// Every cookie issued so far becomes invalid (next use → 401), like a Caldera
    /// restart with a new session key.
    pub fn expire_sessions(&self) {
        self.shared.lock().sessions.clear();
    }

    /// Number of session cookies issued and still valid.
    pub fn session_count(&self) -> usize {
        self.shared.lock().sessions.len()
    }

    /// Extra latency of every `/api/v2` request that carries a `KEY` header (real
    /// Caldera, red key: ~200 ms). Default 0.
    /// Charges every read its serialization cost on the (modelled) event loop.
    pub fn set_cost_model(&self, m: CostModel) {
        self.shared.lock().cost_model = m;
    }

    /// Event-loop time charged to the requests recorded so far (see [`CostModel`]), by route.
    pub fn charged(&self, kind: Option<RouteKind>) -> Duration {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|(_, r)| kind.is_none_or(|k| r.kind == k))
            .map(|(_, r)| r.cost)
            .sum()
    }

    pub fn set_key_delay(&self, d: Duration) {
        self.shared.lock().key_delay = d;
    }

    /// With `true` (default), key checks block all other requests while they run,
    /// like Caldera's single event loop. With `false` they only delay their own request.
    pub fn set_single_event_loop(&self, on: bool) {
        self.shared.lock().single_event_loop = on;
    }

    // ---- data -------------------------------------------------------------

    /// Insert, or replace in place (keeping its position), by `op["id"]`.
    /// The object is served exactly as given (use [`scenarios`] for recorded forms).
    pub fn put_operation(&self, op: Value) {
        let id = op["id"]
            .as_str()
            .expect("operation needs a string \"id\"")
            .to_string();
        let mut st = self.shared.lock();
        match st.operations.iter_mut().find(|o| o["id"] == id.as_str()) {
            Some(slot) => *slot = op,
            None => st.operations.push(op),
        }
    }

    pub fn remove_operation(&self, id: &str) {
        self.shared.lock().operations.retain(|o| o["id"] != id);
    }

    pub fn operation(&self, id: &str) -> Option<Value> {
        self.shared
            .lock()
            .operations
            .iter()
            .find(|o| o["id"] == id)
            .cloned()
    }

    /// All operations in insertion order.
    pub fn operations(&self) -> Vec<Value> {
        self.shared.lock().operations.clone()
    }

    /// Body of `POST /api/v2/operations/{op_id}/report` (whatever `enable_agent_output`).
    /// Without it: the recorded report for the recorded op ids (A, B, C, E, F, H), else
    /// 404 `{"error": "Operation not found: <id>"}` (stub limitation for other ops).
    pub fn put_report(&self, op_id: &str, report: Value) {
        self.shared.lock().reports.insert(op_id.to_string(), report);
    }

    /// Body of `POST /api/v2/operations/{op_id}/event-logs` (whatever `enable_agent_output`).
    /// Default as for [`put_report`](Self::put_report) (recorded for A, B, C, F, H).
    pub fn put_event_logs(&self, op_id: &str, logs: Value) {
        self.shared
            .lock()
            .event_logs
            .insert(op_id.to_string(), logs);
    }

    /// The `result` string (base64, see [`scenarios::encode_link_result`]) served by
    /// `GET …/links/{link_id}/result` once that link has `finish` set. The four
    /// recorded results are preloaded; other links get `""` (no result file).
    pub fn put_link_result(&self, link_id: &str, result_b64: &str) {
        self.shared
            .lock()
            .link_results
            .insert(link_id.to_string(), result_b64.to_string());
    }

    /// Replace the `GET /api/v2/health` body (default `health.json`).
    pub fn set_health(&self, health: Value) {
        self.shared.lock().health = health;
    }

    /// Replace the `GET /api/v2/agents` body (default `agents.json`; must be an array).
    /// Each agent's `status` is computed on every read, as Caldera does (see [`agent_status`]).
    pub fn set_agents(&self, agents: Value) {
        self.shared.lock().agents = agents;
    }

    /// Replace the `GET /api/v2/deploy_commands` body (default `deploy_commands.json`). Its
    /// `agents.*` keys are also what `GET /api/v2/config/agents` answers.
    pub fn set_deploy_commands(&self, body: Value) {
        self.shared.lock().deploy_commands = body;
    }

    // ---- faults -----------------------------------------------------------

    /// The next `n` requests of route kind `kind` get `fault` instead of the normal
    /// answer (checked on arrival, before auth). Injections queue up in call order.
    pub fn inject(&self, kind: RouteKind, n: usize, fault: Fault) {
        if n > 0 {
            self.shared.lock().faults.push(FaultEntry {
                kind,
                remaining: n,
                fault,
            });
        }
    }

    /// Drop all pending injected faults.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    // ---- counters ---------------------------------------------------------

    /// Every request since start / the last [`reset_counts`](Self::reset_counts), in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .lock()
            .records
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Requests matching `kind` and `auth` (`None` = any).
    pub fn count(&self, kind: Option<RouteKind>, auth: Option<AuthMethod>) -> usize {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|(_, r)| kind.is_none_or(|k| r.kind == k) && auth.is_none_or(|a| r.auth == a))
            .count()
    }

    pub fn reset_counts(&self) {
        self.shared.lock().records.clear();
    }
}

// ===========================================================================
// Listener: TCP connections that can be cut when the stub is dropped
// ===========================================================================

struct StubListener {
    inner: TcpListener,
    kill: watch::Receiver<bool>,
}

impl axum::serve::Listener for StubListener {
    type Io = StubIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (StubIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let mut rx = self.kill.clone();
                    let killed = Box::pin(async move {
                        let _ = rx.wait_for(|k| *k).await;
                    });
                    return (
                        StubIo {
                            inner: stream,
                            killed,
                            dead: false,
                        },
                        addr,
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

struct StubIo {
    inner: TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl StubIo {
    fn is_dead(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "caldera stub dropped")
}

impl AsyncRead for StubIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StubIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_dead(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ===========================================================================
// Routing
// ===========================================================================

/// Which query parameters a route's `querystring_schema` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QuerySchema {
    /// `BaseGetAllQuerySchema`: `sort`, `include`, `exclude`.
    All,
    /// `BaseGetOneQuerySchema`: `include`, `exclude`.
    One,
    /// No schema: anything goes.
    Free,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum V2Route {
    Health,
    OperationsList,
    Operation(String),
    Links(String),
    Link(String, String),
    LinkResult(String, String),
    Report(String),
    EventLogs(String),
    Agents,
    DeployCommands,
    Config(String),
}

#[derive(Clone, Debug)]
enum Action {
    Landing,
    Enter,
    Logout,
    OutsideMethodNotAllowed,
    V2Options,
    V2(V2Route, QuerySchema),
    V2NotModelled,
    V2MethodNotAllowed(Vec<&'static str>),
    V2NotFound,
}

/// Caldera 5.3.0's `/api/v2` routes (`git grep router.add_ app/api/v2/handlers`), in
/// registration order. `{x}` matches one non-empty path segment.
const V2_ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/config/{name}"),
    ("PATCH", "/config/main"),
    ("PATCH", "/config/agents"),
    ("GET", "/planners"),
    ("GET", "/planners/{planner_id}"),
    ("PATCH", "/planners/{planner_id}"),
    ("GET", "/abilities"),
    ("GET", "/abilities/{ability_id}"),
    ("POST", "/abilities"),
    ("PUT", "/abilities/{ability_id}"),
    ("PATCH", "/abilities/{ability_id}"),
    ("DELETE", "/abilities/{ability_id}"),
    ("GET", "/plugins"),
    ("GET", "/plugins/{name}"),
    ("GET", "/sources"),
    ("GET", "/sources/{id}"),
    ("POST", "/sources"),
    ("PATCH", "/sources/{id}"),
    ("PUT", "/sources/{id}"),
    ("DELETE", "/sources/{id}"),
    ("GET", "/objectives"),
    ("GET", "/objectives/{id}"),
    ("POST", "/objectives"),
    ("PATCH", "/objectives/{id}"),
    ("PUT", "/objectives/{id}"),
    ("GET", "/adversaries"),
    ("GET", "/adversaries/{adversary_id}"),
    ("POST", "/adversaries"),
    ("PATCH", "/adversaries/{adversary_id}"),
    ("PUT", "/adversaries/{adversary_id}"),
    ("DELETE", "/adversaries/{adversary_id}"),
    ("GET", "/agents"),
    ("GET", "/agents/{paw}"),
    ("POST", "/agents"),
    ("PATCH", "/agents/{paw}"),
    ("PUT", "/agents/{paw}"),
    ("DELETE", "/agents/{paw}"),
    ("POST", "/agents/kill/{paw}"),
    ("GET", "/deploy_commands"),
    ("GET", "/deploy_commands/{ability_id}"),
    ("GET", "/schedules"),
    ("GET", "/schedules/{id}"),
    ("POST", "/schedules"),
    ("PATCH", "/schedules/{id}"),
    ("PUT", "/schedules/{id}"),
    ("DELETE", "/schedules/{id}"),
    ("GET", "/operations"),
    ("GET", "/operations/summary"),
    ("GET", "/operations/{id}"),
    ("POST", "/operations"),
    ("PATCH", "/operations/{id}"),
    ("DELETE", "/operations/{id}"),
    ("POST", "/operations/{id}/report"),
    ("POST", "/operations/{id}/event-logs"),
    ("GET", "/operations/{id}/links"),
    ("GET", "/operations/{id}/links/{link_id}"),
    ("GET", "/operations/{id}/links/{link_id}/result"),
    ("PATCH", "/operations/{id}/links/{link_id}"),
    ("POST", "/operations/{id}/potential-links"),
    ("GET", "/operations/{id}/potential-links"),
    ("GET", "/operations/{id}/potential-links/{paw}"),
    ("GET", "/obfuscators"),
    ("GET", "/obfuscators/{name}"),
    ("GET", "/facts"),
    ("GET", "/facts/{operation_id}"),
    ("POST", "/facts"),
    ("PATCH", "/facts"),
    ("DELETE", "/facts"),
    ("GET", "/relationships"),
    ("GET", "/relationships/{operation_id}"),
    ("POST", "/relationships"),
    ("PATCH", "/relationships"),
    ("DELETE", "/relationships"),
    ("GET", "/contacts"),
    ("GET", "/contacts/{name}"),
    ("GET", "/contactlist"),
    ("GET", "/payloads"),
    ("POST", "/payloads"),
    ("DELETE", "/payloads/{name}"),
];

fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    if p.len() != s.len() {
        return None;
    }
    let mut params = Vec::new();
    for (pp, ss) in p.iter().zip(&s) {
        if pp.starts_with('{') {
            if ss.is_empty() {
                return None;
            }
            params.push(percent_decode(ss));
        } else if pp != ss {
            return None;
        }
    }
    Some(params)
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn classify(method: &Method, path: &str) -> (RouteKind, Action) {
    let Some(rest) = path.strip_prefix("/api/v2") else {
        return match (method.as_str(), path) {
            ("POST", "/enter") => (RouteKind::Enter, Action::Enter),
            ("POST", "/logout") => (RouteKind::Other, Action::Logout),
            ("GET" | "HEAD", p) if !p.starts_with("/plugin/") => {
                (RouteKind::Other, Action::Landing)
            }
            _ => (RouteKind::Other, Action::OutsideMethodNotAllowed),
        };
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        // e.g. /api/v2x: not the v2 sub-app.
        return (RouteKind::Other, Action::Landing);
    }
    if method == Method::OPTIONS {
        return (RouteKind::Other, Action::V2Options);
    }
    let m = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let mut allowed: Vec<&'static str> = Vec::new();
    for (rm, pattern) in V2_ROUTES {
        let Some(p) = match_pattern(pattern, rest) else {
            continue;
        };
        if *rm != m {
            if !allowed.contains(rm) {
                allowed.push(rm);
            }
            continue;
        }
        let p0 = || p[0].clone();
        let p1 = || p[1].clone();
        return match (*rm, *pattern) {
            ("GET", "/health") => (
                RouteKind::Health,
                Action::V2(V2Route::Health, QuerySchema::Free),
            ),
            ("GET", "/operations") => (
                RouteKind::OperationsList,
                Action::V2(V2Route::OperationsList, QuerySchema::All),
            ),
            ("GET", "/operations/{id}") => (
                RouteKind::Operation,
                Action::V2(V2Route::Operation(p0()), QuerySchema::One),
            ),
            ("GET", "/operations/{id}/links") => (
                RouteKind::Links,
                Action::V2(V2Route::Links(p0()), QuerySchema::All),
            ),
            ("GET", "/operations/{id}/links/{link_id}") => (
                RouteKind::Link,
                Action::V2(V2Route::Link(p0(), p1()), QuerySchema::One),
            ),
            ("GET", "/operations/{id}/links/{link_id}/result") => (
                RouteKind::LinkResult,
                Action::V2(V2Route::LinkResult(p0(), p1()), QuerySchema::One),
            ),
            ("POST", "/operations/{id}/report") => (
                RouteKind::Report,
                Action::V2(V2Route::Report(p0()), QuerySchema::One),
            ),
            ("POST", "/operations/{id}/event-logs") => (
                RouteKind::EventLogs,
                Action::V2(V2Route::EventLogs(p0()), QuerySchema::One),
            ),
            ("GET", "/agents") => (
                RouteKind::Agents,
                Action::V2(V2Route::Agents, QuerySchema::All),
            ),
            // No querystring schema on these two handlers in Caldera.
            ("GET", "/deploy_commands") => (
                RouteKind::DeployCommands,
                Action::V2(V2Route::DeployCommands, QuerySchema::Free),
            ),
            ("GET", "/config/{name}") => (
                RouteKind::Config,
                Action::V2(V2Route::Config(p0()), QuerySchema::Free),
            ),
            _ => (RouteKind::Other, Action::V2NotModelled),
        };
    }
    if allowed.is_empty() {
        (RouteKind::Other, Action::V2NotFound)
    } else {
        (RouteKind::Other, Action::V2MethodNotAllowed(allowed))
    }
}

// ===========================================================================
// Responses
// ===========================================================================

fn text(status: u16, body: impl Into<String>, content_type: &str) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.into()))
        .unwrap()
}

fn json_resp(status: u16, v: &Value) -> Response {
    text(status, serde_json::to_string(v).unwrap(), JSON_CT)
}

/// aiohttp's default body for an `HTTPException` without text: `"<code>: <reason>"`.
fn aiohttp_text(status: u16) -> Response {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    text(status, format!("{status}: {reason}"), TEXT_CT)
}

fn json_error(status: u16, msg: String) -> Response {
    json_resp(status, &json!({ "error": msg }))
}

fn server_error() -> Response {
    // aiohttp's answer to an unhandled exception in a handler.
    text(
        500,
        "500 Internal Server Error\n\nServer got itself in trouble",
        TEXT_CT,
    )
}

// ===========================================================================
// Handler
// ===========================================================================

struct Ctx {
    method: Method,
    path: String,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    body: Vec<u8>,
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The `API_SESSION` cookie value (surrounding quotes removed, as aiohttp does).
fn session_cookie(h: &HeaderMap) -> Option<String> {
    for v in h.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            let part = part.trim();
            if let Some(val) = part
                .strip_prefix(SESSION_COOKIE)
                .and_then(|r| r.strip_prefix('='))
            {
                let val = val
                    .strip_prefix('"')
                    .and_then(|x| x.strip_suffix('"'))
                    .unwrap_or(val);
                return Some(val.to_string());
            }
        }
    }
    None
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let received = Instant::now();
    let received_at = SystemTime::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 256 * 1024 * 1024)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let (kind, action) = classify(&parts.method, &path);
    let key = header_str(&parts.headers, "KEY").map(str::to_string);
    let cookie = session_cookie(&parts.headers);

    let (record_id, fault) = {
        let mut st = shared.lock();
        let auth = if key.is_some() {
            AuthMethod::Key
        } else if cookie.as_ref().is_some_and(|c| st.sessions.contains(c)) {
            AuthMethod::Session
        } else {
            AuthMethod::None
        };
        let id = st.next_record;
        st.next_record += 1;
        st.records.push((
            id,
            RequestRecord {
                kind,
                auth,
                method: parts.method.to_string(),
                path: path_and_query,
                status: None,
                faulted: false,
                received,
                received_at,
                answered: None,
                cost: Duration::ZERO,
            },
        ));
        let fault = st
            .faults
            .iter_mut()
            .find(|f| f.kind == kind && f.remaining > 0)
            .map(|f| {
                f.remaining -= 1;
                f.fault.clone()
            });
        st.faults.retain(|f| f.remaining > 0);
        (id, fault)
    };

    let ctx = Ctx {
        method: parts.method,
        path,
        headers: parts.headers,
        query,
        body,
    };
    let (response, faulted) = match fault {
        Some(Fault::Status(status, body, ct)) => (text(status, body, ct), true),
        Some(Fault::Body(body)) => (text(200, body, JSON_CT), true),
        Some(Fault::Hang) => {
            mark(&shared, record_id, |r| r.faulted = true);
            let mut rx = shared.kill.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(7 * 86_400)) => {}
                _ = rx.wait_for(|k| *k) => {}
            }
            // Only reached when the stub is dropped: the connection is cut, nothing is sent.
            return aiohttp_text(503);
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            (
                process(&shared, action, key, cookie, &ctx, record_id).await,
                false,
            )
        }
        None => (
            process(&shared, action, key, cookie, &ctx, record_id).await,
            false,
        ),
    };
    let status = response.status().as_u16();
    mark(&shared, record_id, |r| {
        r.status = Some(status);
        r.faulted = faulted;
        r.answered = Some(Instant::now());
    });
    response
}

fn mark(shared: &Shared, id: u64, f: impl FnOnce(&mut RequestRecord)) {
    let mut st = shared.lock();
    if let Some((_, r)) = st.records.iter_mut().rev().find(|(i, _)| *i == id) {
        f(r);
    }
}

/// Wait for the (modelled) event loop, holding it for `cost`.
async fn on_event_loop(shared: &Shared, cost: Duration) {
    let single = shared.lock().single_event_loop;
    if single {
        let _guard = shared.event_loop.lock().await;
        if !cost.is_zero() {
            tokio::time::sleep(cost).await;
        }
    } else if !cost.is_zero() {
        tokio::time::sleep(cost).await;
    }
}

async fn process(
    shared: &Shared,
    action: Action,
    key: Option<String>,
    cookie: Option<String>,
    ctx: &Ctx,
    record_id: u64,
) -> Response {
    match action {
        Action::Landing => {
            on_event_loop(shared, Duration::ZERO).await;
            text(
                200,
                "<!DOCTYPE html><html><head><title>Caldera</title></head><body>caldera_stub</body></html>",
                HTML_CT,
            )
        }
        Action::OutsideMethodNotAllowed => {
            on_event_loop(shared, Duration::ZERO).await;
            aiohttp_text(405)
        }
        Action::Enter => enter(shared, ctx).await,
        Action::Logout => {
            on_event_loop(shared, Duration::ZERO).await;
            // Caldera forgets the identity; aiohttp_session then deletes the cookie. The
            // cookie is self-contained (encrypted) in Caldera, so an old copy would stay
            // usable: the stub keeps the token valid too.
            Response::builder()
                .status(302)
                .header(header::LOCATION, "/")
                .header(
                    header::SET_COOKIE,
                    format!(
                        "{SESSION_COOKIE}=\"\"; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/"
                    ),
                )
                .header(header::CONTENT_TYPE, TEXT_CT)
                .body(Body::from("302: Found"))
                .unwrap()
        }
        Action::V2Options => {
            on_event_loop(shared, Duration::ZERO).await;
            aiohttp_text(200)
        }
        Action::V2(route, schema) => {
            if let Some(resp) = validate_query(schema, &ctx.query) {
                on_event_loop(shared, Duration::ZERO).await;
                return resp;
            }
            if !authenticate(shared, key, cookie).await {
                return aiohttp_text(401);
            }
            let cost = {
                let st = shared.lock();
                st.cost_model.of(&st, &route)
            };
            if !cost.is_zero() {
                on_event_loop(shared, cost).await;
                mark(shared, record_id, |r| r.cost = cost);
            }
            v2(shared, route, ctx)
        }
        Action::V2NotModelled | Action::V2MethodNotAllowed(_) | Action::V2NotFound => {
            if !authenticate(shared, key, cookie).await {
                return aiohttp_text(401);
            }
            match action {
                Action::V2NotModelled => text(
                    501,
                    format!("caldera_stub: not modelled: {} {}", ctx.method, ctx.path),
                    TEXT_CT,
                ),
                Action::V2MethodNotAllowed(allowed) => {
                    let mut r = aiohttp_text(405);
                    r.headers_mut()
                        .insert(header::ALLOW, allowed.join(",").parse().unwrap());
                    r
                }
                _ => aiohttp_text(404),
            }
        }
    }
}

/// `agents.untrusted_timer` from the deploy commands' `app_config` (Caldera's default 90).
fn untrusted_timer(deploy_commands: &Value) -> u64 {
    deploy_commands["app_config"]["agents.untrusted_timer"]
        .as_u64()
        .unwrap_or(90)
}

/// Caldera's `Agent.status` (`app/objects/c_agent.py`), computed when the agent is dumped:
/// `dead` once `last_seen` is more than `sleep_max + untrusted_timer` seconds old, else
/// `alive`; an agent marked for stop (here: stored as `pending kill`) stays so until expired.
pub fn agent_status(agent: &Value, now: SystemTime, untrusted_timer: u64) -> &'static str {
    let seen = agent["last_seen"].as_str().and_then(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    });
    let expired = match seen {
        Some(t) => {
            let since = time::OffsetDateTime::from(now) - t;
            since.as_seconds_f64()
                > (agent["sleep_max"].as_i64().unwrap_or(60) as f64) + untrusted_timer as f64
        }
        None => true,
    };
    match (agent["status"].as_str(), expired) {
        (_, true) => "dead",
        (Some("pending kill"), false) => "pending kill",
        _ => "alive",
    }
}

/// Caldera's `is_request_authenticated`: KEY first (argon2, on the event loop), then session.
async fn authenticate(shared: &Shared, key: Option<String>, cookie: Option<String>) -> bool {
    let delay = shared.lock().key_delay;
    let cost = if key.is_some() { delay } else { Duration::ZERO };
    on_event_loop(shared, cost).await;
    let st = shared.lock();
    if key.as_deref().is_some_and(|k| k == st.api_key) {
        return true;
    }
    cookie.is_some_and(|c| st.sessions.contains(&c))
}

fn validate_query(schema: QuerySchema, query: &[(String, String)]) -> Option<Response> {
    let allowed: &[&str] = match schema {
        QuerySchema::Free => return None,
        QuerySchema::All => &["sort", "include", "exclude"],
        QuerySchema::One => &["include", "exclude"],
    };
    let mut unknown = serde_json::Map::new();
    for (k, _) in query {
        if !allowed.contains(&k.as_str()) {
            unknown.insert(k.clone(), json!(["Unknown field."]));
        }
    }
    if unknown.is_empty() {
        None
    } else {
        Some(json_resp(422, &json!({ "querystring": unknown })))
    }
}

fn query_list(query: &[(String, String)], name: &str) -> Option<Vec<String>> {
    let v: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect();
    if v.is_empty() { None } else { Some(v) }
}

/// Caldera's `dump_object_with_filters`: keep `include` keys (if any given), drop `exclude` keys.
fn filter_keys(mut obj: Value, include: Option<&[String]>, exclude: Option<&[String]>) -> Value {
    if let Some(m) = obj.as_object_mut() {
        if let Some(inc) = include {
            m.retain(|k, _| inc.iter().any(|i| i == k));
        }
        if let Some(exc) = exclude {
            for k in exc {
                m.remove(k);
            }
        }
    }
    obj
}

/// Python ordering of JSON values as `sorted()` would compare them; `None` = TypeError.
fn py_cmp(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    use Value::*;
    let num = |v: &Value| match v {
        Number(n) => n.as_f64(),
        Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    };
    match (a, b) {
        (String(x), String(y)) => Some(x.cmp(y)),
        (Array(x), Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                match py_cmp(p, q)? {
                    std::cmp::Ordering::Equal => continue,
                    o => return Some(o),
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
    }
}

/// Caldera's `find_and_dump_objects`: filter keys first, then a stable sort on
/// `obj.get(sort, 0)` (default sort `name`); incomparable values → 500 (TypeError).
fn list_objects(objs: Vec<Value>, query: &[(String, String)]) -> Response {
    let sort = query
        .iter()
        .find(|(k, _)| k == "sort")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "name".to_string());
    let include = query_list(query, "include");
    let exclude = query_list(query, "exclude");
    let mut out: Vec<Value> = objs
        .into_iter()
        .map(|o| filter_keys(o, include.as_deref(), exclude.as_deref()))
        .collect();
    let mut type_error = false;
    let zero = Value::from(0);
    out.sort_by(|a, b| {
        let ka = a.get(&sort).unwrap_or(&zero);
        let kb = b.get(&sort).unwrap_or(&zero);
        py_cmp(ka, kb).unwrap_or_else(|| {
            type_error = true;
            std::cmp::Ordering::Equal
        })
    });
    if type_error {
        return server_error();
    }
    json_resp(200, &Value::Array(out))
}

fn op_not_found(id: &str) -> Response {
    json_error(404, format!("Operation not found: {id}"))
}

fn enable_agent_output(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("enable_agent_output").and_then(Value::as_bool))
        .unwrap_or(false)
}

fn v2(shared: &Shared, route: V2Route, ctx: &Ctx) -> Response {
    let st = shared.lock();
    let find_op = |id: &str| st.operations.iter().find(|o| o["id"] == id).cloned();
    let find_link = |op: &Value, link_id: &str| -> Option<Value> {
        op["chain"]
            .as_array()
            .and_then(|c| c.iter().find(|l| l["id"] == link_id))
            .cloned()
    };
    let link_not_found = |op_id: &str, link_id: &str| {
        json_error(
            404,
            format!("Link {link_id} was not found in Operation {op_id}"),
        )
    };
    match route {
        V2Route::Health => json_resp(200, &st.health),
        V2Route::Agents => {
            let timer = untrusted_timer(&st.deploy_commands);
            let now = SystemTime::now();
            let agents = st
                .agents
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut a| {
                    let status = agent_status(&a, now, timer);
                    a["status"] = json!(status);
                    a
                })
                .collect();
            drop(st);
            list_objects(agents, &ctx.query)
        }
        V2Route::DeployCommands => json_resp(200, &st.deploy_commands),
        // `get_filtered_config(name)`: the agents config is what deploy_commands echoes under
        // `agents.*`; `main` is not modelled; any other name is Caldera's 404.
        V2Route::Config(name) => match name.as_str() {
            "agents" => {
                let cfg: serde_json::Map<String, Value> = st.deploy_commands["app_config"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| {
                                k.strip_prefix("agents.")
                                    .map(|k| (k.to_string(), v.clone()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                json_resp(200, &Value::Object(cfg))
            }
            "main" => text(
                501,
                "caldera_stub: not modelled: GET /api/v2/config/main",
                TEXT_CT,
            ),
            other => json_error(404, format!("Config not found: {other}")),
        },
        V2Route::OperationsList => {
            // Only the included keys are copied (a listing of thousands of links must not
            // cost the stub a deep copy of every chain; the model charges the real cost).
            let ops: Vec<Value> = match query_list(&ctx.query, "include") {
                Some(inc) => st
                    .operations
                    .iter()
                    .map(|o| {
                        let mut m = serde_json::Map::new();
                        for k in &inc {
                            if let Some(v) = o.get(k) {
                                m.insert(k.clone(), v.clone());
                            }
                        }
                        Value::Object(m)
                    })
                    .collect(),
                None => st.operations.clone(),
            };
            drop(st);
            list_objects(ops, &ctx.query)
        }
        V2Route::Operation(id) => match find_op(&id) {
            Some(op) => {
                let include = query_list(&ctx.query, "include");
                let exclude = query_list(&ctx.query, "exclude");
                json_resp(
                    200,
                    &filter_keys(op, include.as_deref(), exclude.as_deref()),
                )
            }
            None => op_not_found(&id),
        },
        V2Route::Links(id) => match find_op(&id) {
            Some(op) => json_resp(200, &op["chain"]),
            None => op_not_found(&id),
        },
        V2Route::Link(id, link_id) => match find_op(&id) {
            Some(op) => match find_link(&op, &link_id) {
                Some(l) => json_resp(200, &l),
                None => link_not_found(&id, &link_id),
            },
            None => op_not_found(&id),
        },
        V2Route::LinkResult(id, link_id) => match find_op(&id) {
            Some(op) => match find_link(&op, &link_id) {
                Some(l) => {
                    // Caldera reads the result file by link id; it exists once the result
                    // came back (`finish` set).
                    let result = if l["finish"].is_null() {
                        String::new()
                    } else {
                        st.link_results.get(&link_id).cloned().unwrap_or_default()
                    };
                    json_resp(200, &json!({ "link": l, "result": result }))
                }
                None => link_not_found(&id, &link_id),
            },
            None => op_not_found(&id),
        },
        V2Route::Report(id) => {
            let Some(op) = find_op(&id) else {
                return op_not_found(&id);
            };
            let body = st
                .reports
                .get(&id)
                .cloned()
                .or_else(|| recorded_report(&id))
                .or_else(|| Some(generated_report(&op)));
            match body {
                Some(b) => json_resp(200, &b),
                None => op_not_found(&id),
            }
        }
        V2Route::EventLogs(id) => {
            let Some(op) = find_op(&id) else {
                return op_not_found(&id);
            };
            let output = enable_agent_output(&ctx.body);
            let body = st
                .event_logs
                .get(&id)
                .cloned()
                .or_else(|| recorded_event_logs(&id, output))
                .or_else(|| Some(generated_event_logs(&op)));
            match body {
                Some(b) => json_resp(200, &b),
                None => op_not_found(&id),
            }
        }
    }
}

/// The report of an operation that was not recorded (a scenario built from the recordings), as
/// a real Caldera answers it: the recorded report of A with this operation's `name`,
/// `host_group`, `start` and `finish`, and its links as `steps` per agent. Caldera sets an
/// operation's `finish` when it closes it and reports `null` before; the stub has no close
/// time, so a closed operation's `finish` is its last link result (or its start).
fn generated_report(op: &Value) -> Value {
    let mut r = scenarios::fixture("operation_report.json");
    let closed = matches!(
        op["state"].as_str(),
        Some("finished" | "out_of_time" | "cleanup")
    );
    let chain: &[Value] = op["chain"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let last = chain
        .iter()
        .filter_map(|l| l["finish"].as_str())
        .max()
        .or_else(|| op["start"].as_str());
    let mut steps = serde_json::Map::new();
    for l in chain {
        let paw = l["paw"].as_str().unwrap_or_default().to_string();
        let entry = steps.entry(paw).or_insert_with(|| json!({"steps": []}));
        if let Some(a) = entry["steps"].as_array_mut() {
            a.push(json!({
                "link_id": l["id"], "ability_id": l["ability"]["ability_id"], "command": l["command"],
                "plaintext_command": l["plaintext_command"], "delegated": l["decide"], "run": l["finish"],
                "status": l["status"], "platform": l["executor"]["platform"], "executor": l["executor"]["name"],
                "pid": l["pid"], "description": l["ability"]["description"], "name": l["ability"]["name"],
                "attack": {"tactic": l["ability"]["tactic"], "technique_name": l["ability"]["technique_name"],
                           "technique_id": l["ability"]["technique_id"]},
            }));
        }
    }
    r["name"] = op["name"].clone();
    r["host_group"] = op["host_group"].clone();
    r["start"] = op["start"].clone();
    r["finish"] = if closed { json!(last) } else { Value::Null };
    r["steps"] = Value::Object(steps);
    r
}

/// The event logs of an operation that was not recorded, built from its links the way Caldera
/// builds them (one entry per link, cleanup links included, discarded ones left out; `pid` an
/// integer here where the REST link has a string; agent metadata from the operation's agent).
fn generated_event_logs(op: &Value) -> Value {
    let chain: &[Value] = op["chain"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let agents: &[Value] = op["host_group"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let entries: Vec<Value> = chain
        .iter()
        .filter(|l| l["status"] != -2)
        .map(|l| {
            let agent = agents.iter().find(|a| a["paw"] == l["paw"]);
            let mut e = json!({
                "command": l["command"], "plaintext_command": l["plaintext_command"],
                "delegated_timestamp": l["decide"], "collected_timestamp": l["collect"],
                "finished_timestamp": l["finish"], "status": l["status"],
                "platform": l["executor"]["platform"], "executor": l["executor"]["name"],
                "pid": l["pid"].as_str().and_then(|p| p.parse::<i64>().ok()),
                "agent_metadata": agent.map(|a| json!({
                    "paw": a["paw"], "group": a["group"], "architecture": a["architecture"],
                    "username": a["username"], "location": a["location"], "pid": a["pid"],
                    "ppid": a["ppid"], "privilege": a["privilege"], "host": a["host"],
                    "contact": a["contact"], "created": a["created"],
                })),
                "ability_metadata": {"ability_id": l["ability"]["ability_id"],
                    "ability_name": l["ability"]["name"], "ability_description": l["ability"]["description"]},
                "operation_metadata": {"operation_name": op["name"], "operation_start": op["start"],
                    "operation_adversary": op["adversary"]["name"]},
                "attack_metadata": {"tactic": l["ability"]["tactic"],
                    "technique_name": l["ability"]["technique_name"], "technique_id": l["ability"]["technique_id"]},
            });
            if l["agent_reported_time"].is_string() {
                e["agent_reported_time"] = l["agent_reported_time"].clone();
            }
            e
        })
        .collect();
    Value::Array(entries)
}

/// Recorded `POST …/report` bodies by op id (README table).
fn recorded_report(op_id: &str) -> Option<Value> {
    let file = match op_id {
        scenarios::OP_A_ID => "operation_report.json",
        scenarios::OP_B_ID => "operation_stopped_report.json",
        scenarios::OP_C_ID => "operation_empty_group_report.json",
        scenarios::OP_E_ID => "operation_out_of_time_report.json",
        scenarios::OP_F_ID => "operation_with_discarded_link_report.json",
        scenarios::OP_H_ID => "operation_report_running.json",
        _ => return None,
    };
    Some(scenarios::fixture(file))
}

/// Recorded `POST …/event-logs` bodies by op id. Where only one variant was recorded:
/// B (only with output) → without output = the same entries minus their `output` key
/// (that is exactly the difference between A's two recordings); F and H (only without
/// output; H's one link was still queued so it has none) → served for both.
fn recorded_event_logs(op_id: &str, output: bool) -> Option<Value> {
    let strip_output = |v: Value| -> Value {
        match v {
            Value::Array(a) => Value::Array(
                a.into_iter()
                    .map(|mut e| {
                        if let Some(m) = e.as_object_mut() {
                            m.remove("output");
                        }
                        e
                    })
                    .collect(),
            ),
            other => other,
        }
    };
    let v = match (op_id, output) {
        (scenarios::OP_A_ID, false) => scenarios::fixture("operation_event_logs.json"),
        (scenarios::OP_A_ID, true) => scenarios::fixture("operation_event_logs_with_output.json"),
        (scenarios::OP_B_ID, true) => {
            scenarios::fixture("operation_stopped_event_logs_with_output.json")
        }
        (scenarios::OP_B_ID, false) => strip_output(scenarios::fixture(
            "operation_stopped_event_logs_with_output.json",
        )),
        (scenarios::OP_C_ID, _) => scenarios::fixture("operation_empty_group_event_logs.json"),
        (scenarios::OP_F_ID, _) => {
            scenarios::fixture("operation_with_discarded_link_event_logs.json")
        }
        (scenarios::OP_H_ID, _) => scenarios::fixture("operation_event_logs_running.json"),
        _ => return None,
    };
    Some(v)
}

// ===========================================================================
// /enter
// ===========================================================================

async fn enter(shared: &Shared, ctx: &Ctx) -> Response {
    // aiohttp's request.post() only parses form bodies; anything else → no fields.
    let is_form = header_str(&ctx.headers, header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let mut username = String::new();
    let mut password = String::new();
    if is_form {
        for (k, v) in url::form_urlencoded::parse(&ctx.body) {
            if k == "username" && username.is_empty() {
                username = v.into_owned();
            } else if k == "password" && password.is_empty() {
                password = v.into_owned();
            }
        }
    }
    let (user_known, delay) = {
        let st = shared.lock();
        (st.users.contains_key(&username), st.key_delay)
    };
    // One argon2 verify of the user's password hash when the user exists.
    let cost = if !username.is_empty() && !password.is_empty() && user_known {
        delay / 2
    } else {
        Duration::ZERO
    };
    on_event_loop(shared, cost).await;
    let ok = !username.is_empty()
        && !password.is_empty()
        && shared.lock().users.get(&username) == Some(&password);
    let mut b = Response::builder()
        .status(302)
        .header(header::LOCATION, "/")
        .header(header::CONTENT_TYPE, TEXT_CT);
    if ok {
        let token = new_session_token();
        shared.lock().sessions.insert(token.clone());
        let expires =
            time::OffsetDateTime::now_utc() + time::Duration::seconds(SESSION_MAX_AGE as i64);
        let fmt = time::macros::format_description!(
            "[weekday repr:short], [day]-[month repr:short]-[year] [hour]:[minute]:[second] GMT"
        );
        let expires = expires.format(&fmt).unwrap();
        b = b.header(
            header::SET_COOKIE,
            format!(
                "{SESSION_COOKIE}=\"{token}\"; expires={expires}; HttpOnly; Max-Age={SESSION_MAX_AGE}; Path=/"
            ),
        );
    }
    b.body(Body::from("302: Found")).unwrap()
}

/// Looks like a Fernet token (`gAAAAA…`, urlsafe base64 with `=` padding).
fn new_session_token() -> String {
    let mut bytes = Vec::with_capacity(120);
    while bytes.len() < 118 {
        bytes.extend_from_slice(&scenarios::random_u64().to_le_bytes());
    }
    bytes.truncate(118);
    let b64 = scenarios::base64_encode(&bytes)
        .replace('+', "-")
        .replace('/', "_");
    format!("gAAAAA{b64}")
}
