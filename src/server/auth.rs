//! Protection of the HTTP endpoints: an optional API key and a per-client rate limit.
//!
//! Health and metrics reveal the pipeline's state (hosts, versions, error texts), so with
//! `ENABLE_API_AUTH=true` every endpoint except the minimal liveness check `/livez` (body `ok`,
//! nothing else) wants the key `API_KEY` in header `API_KEY_HEADER`. The comparison takes the
//! same time whatever the presented value, so timing cannot reveal the key byte by byte. A
//! refusal is a bare `401 {"error":"unauthorized"}`: no hint whether the header was missing or
//! wrong, and the presented value is never logged.
//!
//! `MAX_REQUESTS_PER_MINUTE` is a token bucket per client (an IPv4 address or an IPv6 /64, see
//! [`client_key`]; capacity = the limit, refilled
//! continuously), checked *before* the key so guessing keys is throttled too; over the limit
//! the answer is `429` with `Retry-After` (whole seconds until a token is back). Memory stays
//! bounded: at most [`MAX_CLIENTS`] addresses are remembered, idle ones (full buckets) are
//! forgotten first, then the least recently seen. `/livez` is exempt from both, so a liveness
//! probe can never be starved by other traffic.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::config::ApiSettings;

/// The endpoint that needs neither key nor budget.
pub const LIVENESS_PATH: &str = "/livez";
/// Most client addresses the rate limiter remembers.
pub const MAX_CLIENTS: usize = 4096;

/// Compares a presented secret with the expected one in time that depends only on the
/// expected value's length, never on where the first difference is.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff: u8 = 0;
    for (i, e) in expected.iter().enumerate() {
        // Bytes past the end of a shorter presented value compare as 0; the length check
        // below refuses that case anyway. No early exit on a difference.
        let p = presented.get(i).copied().unwrap_or(0);
        diff |= p ^ e;
    }
    let same_len = presented.len() == expected.len();
    (std::hint::black_box(diff) == 0) & same_len
}

/// The key check, if enabled.
pub struct KeyCheck {
    header: HeaderName,
    key: Vec<u8>,
}

impl KeyCheck {
    /// `None` when auth is disabled. Auth enabled without a key is refused by the config
    /// loader; should it happen anyway, every request is refused rather than let through.
    pub fn from_settings(api: &ApiSettings) -> Option<Self> {
        if !api.enable_auth {
            return None;
        }
        let header = HeaderName::from_bytes(api.key_header.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-api-key"));
        let key = api
            .key
            .as_ref()
            .map(|k| k.expose().as_bytes().to_vec())
            .unwrap_or_default();
        Some(Self { header, key })
    }

    pub fn allows(&self, presented: Option<&HeaderValue>) -> bool {
        match presented {
            Some(v) if !self.key.is_empty() => constant_time_eq(v.as_bytes(), &self.key),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Who shares a budget: an IPv4 address, or an IPv6 /64. One IPv6 host usually holds a whole
/// /64 (SLAAC, privacy addresses), so keying on the full address would give it 2^64 budgets
/// and let it flush every other client out of the table. An IPv4 address mapped into IPv6
/// (`::ffff:a.b.c.d`, a dual-stack listener) counts as that IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// A token bucket per client (see [`client_key`]), with bounded memory.
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    max_clients: usize,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32, max_clients: usize) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            capacity,
            per_second: capacity / 60.0,
            max_clients: max_clients.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`'s client key ([`client_key`]), or says how long until one is
    /// available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = client_key(ip);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if !clients.contains_key(&ip) && clients.len() >= self.max_clients {
            self.evict(&mut clients, now);
        }
        let b = clients.entry(ip).or_insert(Bucket {
            tokens: self.capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }

    /// Forgets clients whose bucket has refilled (they lose nothing), then, if still full, the
    /// least recently seen quarter.
    fn evict(&self, clients: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let refill = Duration::from_secs_f64(self.capacity / self.per_second);
        clients.retain(|_, b| now.saturating_duration_since(b.last) < refill);
        if clients.len() >= self.max_clients {
            let mut seen: Vec<Instant> = clients.values().map(|b| b.last).collect();
            let k = (seen.len() / 4).max(1).min(seen.len() - 1);
            let (_, cutoff, _) = seen.select_nth_unstable(k);
            let cutoff = *cutoff;
            clients.retain(|_, b| b.last > cutoff);
        }
    }

    pub fn clients(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The error body of a refused request: a fixed text, no details.
fn refusal(status: StatusCode, error: &'static str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

/// Middleware: rate limit, then key, for every path but [`LIVENESS_PATH`].
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path() == LIVENESS_PATH {
        return next.run(req).await;
    }
    // Served with connect info in production; without it (in-process use) all callers share
    // one bucket, which errs on the safe side.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Err(wait) = st.limiter.check(ip, Instant::now()) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        tracing::debug!(client = %ip, retry_after = secs, "request refused: rate limit");
        let mut resp = refusal(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    if let Some(check) = &st.key
        && !check.allows(req.headers().get(&check.header))
    {
        // Never log the presented value.
        tracing::debug!(client = %ip, "request refused: missing or wrong API key");
        return refusal(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret2", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"secret\0", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64() {
        let l = RateLimiter::new(3, 10);
        let t0 = Instant::now();
        for a in [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff::9",
            "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
        ] {
            assert!(l.check(a.parse().expect("ip"), t0).is_ok(), "{a}");
        }
        assert!(
            l.check("2001:db8:1:2::77".parse().expect("ip"), t0)
                .is_err()
        );
        // The next /64 is another client.
        assert!(l.check("2001:db8:1:3::1".parse().expect("ip"), t0).is_ok());
        // IPv4 keeps one budget per address, mapped or not.
        for _ in 0..3 {
            assert!(l.check("192.0.2.7".parse().expect("ip"), t0).is_ok());
        }
        assert!(
            l.check("::ffff:192.0.2.7".parse().expect("ip"), t0)
                .is_err()
        );
        assert!(l.check("192.0.2.8".parse().expect("ip"), t0).is_ok());
    }

    #[test]
    fn limiter_refuses_over_budget_and_refills() {
        let l = RateLimiter::new(5, 10);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.check(ip, t0).is_ok());
        }
        let wait = l.check(ip, t0).expect_err("6th refused");
        assert!(wait > Duration::from_secs(11) && wait <= Duration::from_secs(12));
        // Another client has its own budget.
        assert!(l.check("10.0.0.2".parse().expect("ip"), t0).is_ok());
        // 12 s later one token is back.
        assert!(l.check(ip, t0 + Duration::from_secs(12)).is_ok());
        assert!(l.check(ip, t0 + Duration::from_secs(12)).is_err());
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let l = RateLimiter::new(60, 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(i));
            let _ = l.check(ip, t0 + Duration::from_millis(u64::from(i)));
            assert!(l.clients() <= 100);
        }
    }

    #[test]
    fn idle_clients_are_forgotten_before_busy_ones() {
        let l = RateLimiter::new(60, 100);
        let t0 = Instant::now();
        for i in 0..99u32 {
            assert!(l.check(IpAddr::V4(Ipv4Addr::from(i)), t0).is_ok());
        }
        let hot: IpAddr = "192.168.0.1".parse().expect("ip");
        let t1 = t0 + Duration::from_secs(59);
        while l.check(hot, t1).is_ok() {}
        // 61 s after t0 the 99 others have full buckets again: they are the ones forgotten.
        let t2 = t0 + Duration::from_secs(61);
        assert!(l.check("10.9.9.9".parse().expect("ip"), t2).is_ok());
        assert_eq!(l.clients(), 2);
        // The busy client kept its spent budget (2 s of refill = 2 tokens).
        assert!(l.check(hot, t2).is_ok());
        assert!(l.check(hot, t2).is_ok());
        assert!(l.check(hot, t2).is_err());
    }
}
