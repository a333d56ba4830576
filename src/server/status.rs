//! `caldera-sidecar status`: asks the running sidecar's health endpoint and prints a short
//! summary, for operators and scripts (exit code 0 healthy, 1 degraded, 2 unhealthy or
//! unreachable — the same order as the health levels, so `status || alert` works).
//!
//! It reads the same configuration as the daemon, so it finds the endpoint (`HEALTH_BIND`; an
//! unspecified bind address such as `0.0.0.0` is asked on loopback) and sends the API key when
//! `ENABLE_API_AUTH` is on. The key is only ever put in the request header, never printed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::config::Settings;

/// The whole request (connect and answer) is abandoned after this.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Where to ask: the bind address, with an unspecified host replaced by loopback.
pub fn endpoint(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

/// Removes control characters (e.g. terminal escapes) from text received over HTTP.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// The summary printed for a health answer, and the exit code it means.
pub fn summarize(body: &Value, addr: SocketAddr) -> (String, u8) {
    let status = body["status"].as_str().unwrap_or("unknown");
    let code = match status {
        "healthy" => 0,
        "degraded" => 1,
        _ => 2,
    };
    let mut out = format!(
        "caldera-sidecar {} at {addr}: {} (up {})\n",
        printable(body["version"].as_str().unwrap_or("?")),
        printable(status).to_uppercase(),
        human_duration(body["uptime_seconds"].as_u64().unwrap_or(0)),
    );
    if let Some(checks) = body["checks"].as_object() {
        for (name, check) in checks {
            let st = check["status"].as_str().unwrap_or("unknown");
            if st == "ok" {
                continue;
            }
            let msg = check["message"].as_str().unwrap_or("(no message)");
            out.push_str(&format!(
                "  {}: {}: {}\n",
                printable(name),
                printable(st),
                printable(msg)
            ));
        }
    }
    if code == 0 {
        out.push_str("  all checks ok\n");
    }
    (out, code)
}

/// A health answer is a few KB: whatever answers on that port with more is not the sidecar,
/// and is not read further.
const MAX_BODY: usize = 1024 * 1024;

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| error_chain(&e.without_url()))?
    {
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(format!("an answer larger than {} KB", MAX_BODY / 1024));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Exit code 0 healthy, 1 degraded, 2 unhealthy (or unreachable).
pub async fn run(settings: &Settings) -> ExitCode {
    let addr = endpoint(settings.health_bind);
    let url = format!("http://{addr}/api/v2/health");
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        // The endpoint is local: an HTTP(S)_PROXY in the environment must not capture it.
        .no_proxy()
        .user_agent(concat!(
            "caldera-sidecar-status/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("caldera-sidecar status: cannot build an HTTP client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut req = client.get(&url);
    if settings.api.enable_auth
        && let Some(key) = &settings.api.key
    {
        req = req.header(settings.api.key_header.as_str(), key.expose());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                format!("no answer within {} s", TIMEOUT.as_secs())
            } else {
                error_chain(&e.without_url())
            };
            eprintln!(
                "caldera-sidecar status: UNREACHABLE: cannot reach the health endpoint at {url}: {why}\n  \
                 is the sidecar running, and is HEALTH_BIND the address it listens on?"
            );
            return ExitCode::from(2);
        }
    };
    let http = resp.status().as_u16();
    match http {
        401 => {
            eprintln!(
                "caldera-sidecar status: the health endpoint at {url} refused the API key (HTTP 401): \
                 check API_KEY and API_KEY_HEADER (and ENABLE_API_AUTH) in this command's configuration"
            );
            return ExitCode::from(2);
        }
        429 => {
            let retry = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(|s| format!(" (retry after {} s)", printable(s)))
                .unwrap_or_default();
            eprintln!(
                "caldera-sidecar status: the health endpoint at {url} is rate limiting this client (HTTP 429){retry}: \
                 raise MAX_REQUESTS_PER_MINUTE or ask less often"
            );
            return ExitCode::from(2);
        }
        _ => {}
    }
    let body: Value = match read_capped(resp)
        .await
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}")))
    {
        Ok(v) => v,
        Err(why) => {
            eprintln!(
                "caldera-sidecar status: the endpoint at {url} answered HTTP {http} without a health report: {}",
                printable(&why)
            );
            return ExitCode::from(2);
        }
    };
    let (text, code) = summarize(&body, addr);
    print!("{text}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unspecified_bind_is_asked_on_loopback() {
        let a: SocketAddr = "0.0.0.0:8889".parse().expect("addr");
        assert_eq!(endpoint(a).to_string(), "127.0.0.1:8889");
        let a: SocketAddr = "[::]:8889".parse().expect("addr");
        assert_eq!(endpoint(a).to_string(), "[::1]:8889");
        let a: SocketAddr = "10.1.2.3:9".parse().expect("addr");
        assert_eq!(endpoint(a), a);
    }

    #[test]
    fn summary_lists_checks_that_are_not_ok() {
        let body = json!({
            "status": "degraded", "version": "1.2.3", "uptime_seconds": 3725,
            "checks": {
                "elasticsearch": {"status": "ok"},
                "caldera": {"status": "degraded", "message": "Caldera authentication failed: x\u{1b}[31m"},
            }
        });
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let (text, code) = summarize(&body, addr);
        assert_eq!(code, 1);
        assert!(text.contains("DEGRADED (up 1h02m)"), "{text}");
        assert!(text.contains("caldera: degraded: Caldera authentication failed"));
        assert!(!text.contains("elasticsearch"));
        assert!(!text.contains('\u{1b}'));
        let (_, code) = summarize(&json!({"status": "unhealthy"}), addr);
        assert_eq!(code, 2);
        let (text, code) = summarize(&json!({"status": "healthy", "checks": {}}), addr);
        assert_eq!(code, 0);
        assert!(text.contains("all checks ok"));
    }
}
