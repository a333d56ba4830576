//! Shared machinery of the pipeline benchmark: options, the search server, the real sidecar as a
//! child process (so its CPU and memory are its own, read from `/proc`), plain-HTTP
//! Elasticsearch helpers that do not go through the code under test, statistics and reporting.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The release (under `cargo bench`) or debug (under `cargo test`) sidecar binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");

/// Why a scenario produced no figures.
#[derive(Debug)]
pub enum BenchError {
    /// Something went wrong: the run is invalid.
    Failed(String),
    /// The scenario cannot run on this build (e.g. a subcommand that does not exist yet).
    Skipped(String),
}

impl From<String> for BenchError {
    fn from(s: String) -> Self {
        BenchError::Failed(s)
    }
}

impl From<&str> for BenchError {
    fn from(s: &str) -> Self {
        BenchError::Failed(s.to_string())
    }
}

pub type BenchResult<T> = Result<T, BenchError>;

/// Command-line options (see `usage()` in `pipeline.rs`).
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Under `cargo test`: every scenario at tiny sizes, sanity checks only.
    pub smoke: bool,
    pub runs: usize,
    /// The scenario's main size (events, links, documents, requests/s…; see each scenario).
    pub size: Option<usize>,
    /// Phase length in seconds (health, caldera-load).
    pub seconds: Option<f64>,
    /// Requests per second (health).
    pub rate: Option<f64>,
    /// Only this POLL_INTERVAL (latency).
    pub poll: Option<f64>,
}

impl Opts {
    /// `size` from the command line, else `smoke` under `cargo test`, else `full`.
    pub fn size_or(&self, full: usize, smoke: usize) -> usize {
        self.size
            .unwrap_or(if self.smoke { smoke } else { full })
            .max(1)
    }
    pub fn seconds_or(&self, full: f64, smoke: f64) -> f64 {
        self.seconds
            .unwrap_or(if self.smoke { smoke } else { full })
            .max(0.1)
    }
}

/// Everything a scenario needs.
pub struct Ctx {
    pub opts: Opts,
    pub es: Es,
}

// ---------------------------------------------------------------------------
// Time and randomness
// ---------------------------------------------------------------------------

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A small deterministic generator (xorshift64*): the same schedule on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Polls `f` every `every` until it returns `Some`, or fails with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: F,
) -> BenchResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BenchResult<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// Nearest-rank percentile of unsorted values (`p` in 0..=100); NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------
// Figures, targets and reporting
// ---------------------------------------------------------------------------

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub key: String,
    pub label: String,
    pub unit: &'static str,
    pub value: f64,
}

/// What one run of a scenario measured: figures in display order, plus free-form details for
/// the machine-readable line and notes for the reader.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub list: Vec<Figure>,
    pub detail: BTreeMap<String, Value>,
    pub notes: Vec<String>,
}

impl Figures {
    pub fn add(
        &mut self,
        key: impl Into<String>,
        label: impl Into<String>,
        unit: &'static str,
        value: f64,
    ) {
        self.list.push(Figure {
            key: key.into(),
            label: label.into(),
            unit,
            value,
        });
    }
    pub fn get(&self, key: &str) -> Option<f64> {
        self.list.iter().find(|f| f.key == key).map(|f| f.value)
    }
    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }
    /// Every figure is a finite, non-negative number.
    pub fn check_sane(&self) -> Result<(), String> {
        if self.list.is_empty() {
            return Err("no figures".into());
        }
        for f in &self.list {
            if !f.value.is_finite() || f.value < 0.0 {
                return Err(format!("figure {} is not sane: {}", f.key, f.value));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    AtMost,
    AtLeast,
}

/// A target of DESIGN.md, checked on the median of a figure.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: String,
    pub cmp: Cmp,
    pub limit: f64,
    pub text: String,
}

impl Target {
    pub fn at_most(key: impl Into<String>, limit: f64, text: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            cmp: Cmp::AtMost,
            limit,
            text: text.into(),
        }
    }
    pub fn at_least(key: impl Into<String>, limit: f64, text: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            cmp: Cmp::AtLeast,
            limit,
            text: text.into(),
        }
    }
    pub fn met(&self, v: f64) -> bool {
        match self.cmp {
            Cmp::AtMost => v <= self.limit,
            Cmp::AtLeast => v >= self.limit,
        }
    }
    fn describe(&self) -> String {
        let op = match self.cmp {
            Cmp::AtMost => "<=",
            Cmp::AtLeast => ">=",
        };
        format!("{op} {}", fmt_num(self.limit))
    }
}

pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Prints the medians of `runs` (one `Figures` per run) with the targets, then one line
/// `BENCH_RESULT {json}`. Returns whether every target was met.
pub fn report(scenario: &str, runs: &[Figures], targets: &[Target], smoke: bool) -> bool {
    let Some(first) = runs.first() else {
        return false;
    };
    let medians: Vec<(Figure, Vec<f64>)> = first
        .list
        .iter()
        .map(|f| {
            let all: Vec<f64> = runs.iter().filter_map(|r| r.get(&f.key)).collect();
            let mut m = f.clone();
            m.value = median(&all);
            (m, all)
        })
        .collect();
    let label_w = medians
        .iter()
        .map(|(f, _)| f.label.len())
        .max()
        .unwrap_or(10)
        .max(10);
    println!();
    println!(
        "== {scenario}: median of {} run{} ==",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    println!(
        "{:<label_w$}  {:>12}  {:<6}  {:<22}  {:<12}  met",
        "figure", "median", "unit", "runs", "target"
    );
    let mut all_met = true;
    let mut target_json = Vec::new();
    for (f, all) in &medians {
        let runs_txt = all
            .iter()
            .map(|v| fmt_num(*v))
            .collect::<Vec<_>>()
            .join(" / ");
        let (t_txt, met_txt) = match targets.iter().find(|t| t.key == f.key) {
            Some(t) => {
                let met = t.met(f.value);
                all_met &= met;
                target_json.push(json!({
                    "figure": f.key, "target": t.describe(), "value": f.value,
                    "met": met, "what": t.text,
                }));
                let verdict = match (smoke, met) {
                    (true, _) => "(smoke size)",
                    (false, true) => "met",
                    (false, false) => "NOT MET",
                };
                (t.describe(), verdict)
            }
            None => (String::new(), ""),
        };
        println!(
            "{:<label_w$}  {:>12}  {:<6}  {:<22}  {:<12}  {}",
            f.label,
            fmt_num(f.value),
            f.unit,
            if runs.len() > 1 {
                runs_txt
            } else {
                String::new()
            },
            t_txt,
            met_txt
        );
    }
    for t in targets {
        if !medians.iter().any(|(f, _)| f.key == t.key) {
            println!("target {} ({}) not measured in this run", t.key, t.text);
        }
    }
    for r in runs.iter().take(1) {
        for n in &r.notes {
            println!("note: {n}");
        }
    }
    let figures: serde_json::Map<String, Value> = medians
        .iter()
        .map(|(f, _)| (f.key.clone(), json!(f.value)))
        .collect();
    let line = json!({
        "scenario": scenario,
        "runs": runs.len(),
        "figures": figures,
        "targets": target_json,
        "met": all_met,
        "detail": runs.iter().map(|r| json!(r.detail)).collect::<Vec<_>>(),
    });
    println!("BENCH_RESULT {line}");
    all_met
}

// ---------------------------------------------------------------------------
// The search server
// ---------------------------------------------------------------------------

/// The Elasticsearch the benchmark writes to: `SEARCH_URL`, or one started here with
/// `scripts/search-server.sh start` (and stopped at the end only then).
pub struct SearchServer {
    pub url: String,
    started: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/search-server.sh")
}

impl SearchServer {
    pub fn obtain() -> Result<Self, String> {
        if let Ok(url) = std::env::var("SEARCH_URL")
            && !url.trim().is_empty()
        {
            return Ok(Self {
                url: url.trim().trim_end_matches('/').to_string(),
                started: false,
            });
        }
        let parse = |out: &[u8]| -> Option<String> {
            String::from_utf8_lossy(out)
                .lines()
                .map(str::trim)
                .find_map(|l| {
                    let u = l.strip_prefix("SEARCH_URL=").unwrap_or(l);
                    u.starts_with("http")
                        .then(|| u.trim_end_matches('/').to_string())
                })
        };
        // One started by hand stays up.
        if let Ok(out) = Command::new("bash").arg(script()).arg("url").output()
            && out.status.success()
            && let Some(url) = parse(&out.stdout)
        {
            eprintln!("pipeline: using the running search server {url}");
            return Ok(Self {
                url,
                started: false,
            });
        }
        eprintln!(
            "pipeline: SEARCH_URL is not set; starting one with scripts/search-server.sh start"
        );
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run scripts/search-server.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/search-server.sh start failed ({})",
                out.status
            ));
        }
        let url =
            parse(&out.stdout).ok_or("scripts/search-server.sh start printed no SEARCH_URL=")?;
        Ok(Self { url, started: true })
    }

    pub fn stop_if_started(&self) {
        if self.started {
            eprintln!("pipeline: stopping the search server started for this run");
            let _ = Command::new("bash")
                .arg(script())
                .arg("stop")
                .stdout(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------
// Elasticsearch over plain HTTP
// ---------------------------------------------------------------------------

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client builds")
}

/// The search server queried with plain HTTP, so measurements do not go through the code under
/// test. Nothing here forces a refresh unless its name says so.
#[derive(Clone)]
pub struct Es {
    pub url: String,
    http: reqwest::Client,
}

/// A fresh index name for one run of one scenario.
pub fn unique_index(scenario: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "bench-{}-{}-{}-{}",
        scenario.replace('_', "-"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        now_micros() % 1_000_000_000
    )
}

impl Es {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            http: http_client(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> BenchResult<Value> {
        let resp = req.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| format!("{what}: unreadable answer: {e}"))?;
        if !status.is_success() {
            return Err(format!("{what}: HTTP {status}: {v}").into());
        }
        Ok(v)
    }

    pub async fn check(&self) -> BenchResult<()> {
        self.send(
            self.http.get(format!(
                "{}/_cluster/health?wait_for_status=yellow&timeout=30s",
                self.url
            )),
            "cluster health",
        )
        .await
        .map(|_| ())
    }

    pub async fn refresh(&self, index: &str) -> BenchResult<()> {
        self.send(
            self.http.post(format!("{}/{index}/_refresh", self.url)),
            "refresh",
        )
        .await
        .map(|_| ())
    }

    /// `_search` as is (near-real-time: sees what the last refresh made visible).
    pub async fn search(&self, index: &str, body: &Value) -> BenchResult<Value> {
        self.send(
            self.http
                .post(format!("{}/{index}/_search", self.url))
                .json(body),
            "search",
        )
        .await
    }

    /// Documents matching `query` after a refresh.
    pub async fn count_refreshed(&self, index: &str, query: Value) -> BenchResult<u64> {
        self.refresh(index).await?;
        let v = self
            .send(
                self.http
                    .post(format!("{}/{index}/_count", self.url))
                    .json(&json!({ "query": query })),
                "count",
            )
            .await?;
        v["count"]
            .as_u64()
            .ok_or_else(|| BenchError::from(format!("count: no count in {v}")))
    }

    pub async fn link_count(&self, index: &str) -> BenchResult<u64> {
        self.count_refreshed(index, json!({"term": {"event.dataset": "caldera.link"}}))
            .await
    }

    /// Deletes the index and the template the sidecar installed for it.
    pub async fn cleanup(&self, index: &str) {
        let _ = self
            .http
            .delete(format!("{}/{index}", self.url))
            .send()
            .await;
        let _ = self
            .http
            .delete(format!(
                "{}/_index_template/caldera-sidecar-{index}",
                self.url
            ))
            .send()
            .await;
    }
}

// ---------------------------------------------------------------------------
// The sidecar as a child process
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `CALDERA_USER`/`CALDERA_PASSWORD`: one login, then a session cookie.
    Session,
    /// Only `CALDERA_API_KEY`: the `KEY` header on every request.
    Key,
}

/// The child's environment: production defaults except what a scenario overrides.
pub fn sidecar_env(
    caldera_url: &str,
    elk_url: &str,
    index: &str,
    auth: Auth,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("CALDERA_URL".into(), caldera_url.into()),
        ("ELK_URL".into(), elk_url.into()),
        ("ELK_INDEX".into(), index.into()),
        ("LOG_LEVEL".into(), "warn".into()),
        // The load generators are one client: keep the per-client limit out of the way.
        ("MAX_REQUESTS_PER_MINUTE".into(), "1000000".into()),
    ];
    match auth {
        Auth::Session => {
            env.push(("CALDERA_USER".into(), "admin".into()));
            env.push(("CALDERA_PASSWORD".into(), "admin-pass".into()));
        }
        Auth::Key => env.push(("CALDERA_API_KEY".into(), "ADMIN123".into())),
    }
    let overrides = EXTRA_ENV.get().map(Vec::as_slice).unwrap_or_default();
    for (k, v) in extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain(overrides.iter().cloned())
    {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    env
}

/// `--env KEY=VALUE` from the command line: applied last to every sidecar child (for
/// experiments such as `--env MALLOC_ARENA_MAX=2` or `--env BULK_MAX_DOCS=200`).
pub static EXTRA_ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// A port nobody listens on right now (bound, then released).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The first number found under `key` anywhere in `v` (health's layout may move keys around).
pub fn find_u64(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(m) => {
            if let Some(n) = m.get(key).and_then(Value::as_u64) {
                return Some(n);
            }
            m.values().find_map(|x| find_u64(x, key))
        }
        Value::Array(a) => a.iter().find_map(|x| find_u64(x, key)),
        _ => None,
    }
}

/// The real `caldera-sidecar run`, in an empty temporary directory (no config file, no `.env`)
/// with a clean environment, its log in that directory.
pub struct Sidecar {
    child: Child,
    pub pid: u32,
    pub health_url: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Sidecar {
    pub fn spawn(env: &[(String, String)]) -> BenchResult<Self> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("sidecar.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HEALTH_BIND", format!("127.0.0.1:{port}"))
            .env("SPOOL_DIR", dir.path().join("spool"))
            .env("DEAD_LETTER_DIR", dir.path().join("dead-letter"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {BIN}: {e}"))?;
        Ok(Self {
            pid: child.id(),
            child,
            health_url: format!("http://127.0.0.1:{port}/api/v2/health"),
            dir,
            http: http_client(),
        })
    }

    /// The last lines of the child's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "the sidecar exited ({status}); log:\n{}",
                self.log_tail(30)
            )),
            _ => None,
        }
    }

    /// The health document, whatever its HTTP status (503 is an answer too).
    pub async fn health(&mut self) -> BenchResult<Value> {
        if let Some(e) = self.exited() {
            return Err(e.into());
        }
        let resp = self
            .http
            .get(&self.health_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("health: {e}"))?;
        resp.json()
            .await
            .map_err(|e| format!("health: unreadable answer: {e}").into())
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&mut self) -> BenchResult<String> {
        let url = self.health_url.replace("/api/v2/health", "/metrics");
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("metrics: {e}"))?;
        resp.text()
            .await
            .map_err(|e| format!("metrics: {e}").into())
    }

    /// Waits until the health endpoint answers.
    pub async fn wait_ready(&mut self, timeout: Duration) -> BenchResult<()> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.exited() {
                return Err(e.into());
            }
            if self.health().await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "the sidecar's health endpoint did not answer in {timeout:?}; log:\n{}",
                    self.log_tail(30)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter of the health document (e.g. `documents_indexed`).
    pub async fn stat(&mut self, key: &str) -> BenchResult<u64> {
        let h = self.health().await?;
        find_u64(&h, key).ok_or_else(|| {
            BenchError::from(format!("the health document has no numeric {key:?}: {h}"))
        })
    }

    /// Waits until the counter `key` reaches `want`.
    pub async fn wait_stat(&mut self, key: &str, want: u64, timeout: Duration) -> BenchResult<u64> {
        let start = Instant::now();
        loop {
            let v = self.stat(key).await?;
            if v >= want {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "timed out after {timeout:?}: {key} = {v}, waiting for {want}; log:\n{}",
                    self.log_tail(20)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// User + system CPU time of the whole process so far (all threads, exited ones included).
    pub fn cpu(&self) -> BenchResult<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("/proc/{}/stat: {e}", self.pid))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or("/proc/pid/stat has no command name")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let ticks = |i: usize| -> BenchResult<f64> {
            f.get(i)
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| BenchError::from("/proc/pid/stat: no utime/stime"))
        };
        let secs = (ticks(11)? + ticks(12)?) / clock_ticks();
        Ok(Duration::from_secs_f64(secs))
    }

    /// (VmRSS, VmHWM) in kB.
    pub fn memory(&self) -> BenchResult<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map_err(|e| format!("/proc/{}/status: {e}", self.pid))?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        };
        match (field("VmRSS:"), field("VmHWM:")) {
            (Some(r), Some(h)) => Ok((r, h)),
            _ => Err("/proc/pid/status has no VmRSS/VmHWM".into()),
        }
    }

    /// SIGTERM (graceful stop), then SIGKILL if it takes more than 30 s.
    pub async fn stop(mut self) -> BenchResult<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err("the sidecar did not stop within 30 s of SIGTERM".into())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `<name>_sum` and `<name>_count` of a Prometheus histogram in `text` (0 when absent).
pub fn histogram_sum_count(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| -> f64 {
        let key = format!("{name}{suffix}");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                let k = k.split('{').next()?;
                (k == key).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
            .unwrap_or(0.0)
    };
    (value("_sum"), value("_count"))
}

/// CPU model, cores, memory and load of this machine (printed with the results).
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cpu_model": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
