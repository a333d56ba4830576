//! Retry classification, decided per HTTP status and per bulk item (as Vector's Elasticsearch
//! sink does): what is worth retrying, what is done, and what must never be retried in a loop.

use std::time::Duration;

/// What to do with one document after a bulk answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Stored (2xx).
    Done,
    /// 409 version conflict: the index already holds this or a newer observation. Success.
    AlreadyCurrent,
    /// 429 or 5xx for this item: send it again later.
    Retry(String),
    /// Any other 4xx (a mapping conflict, a malformed document): retrying cannot help.
    Reject(String),
}

pub fn classify_item(status: u16, reason: impl FnOnce() -> String) -> ItemOutcome {
    match status {
        200..=299 => ItemOutcome::Done,
        409 => ItemOutcome::AlreadyCurrent,
        429 | 500..=599 => ItemOutcome::Retry(format!("HTTP {status}: {}", reason())),
        _ => ItemOutcome::Reject(format!("HTTP {status}: {}", reason())),
    }
}

/// What a whole-request failure means for its documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The server could not take the request now (connection refused, timeout, 429, 5xx) or
    /// refused our credentials (401/403): keep every document and try again; counts against
    /// the circuit breaker.
    Retry(String),
    /// The request itself is wrong (400 on the whole bulk, 404 for a missing endpoint…). The
    /// documents are still kept: the cause is ours or the server's configuration, not theirs.
    Fatal(String),
}

pub fn classify_request_status(status: u16, body_snippet: &str) -> RequestOutcome {
    match status {
        401 | 403 => RequestOutcome::Retry(format!(
            "HTTP {status}: Elasticsearch refused the credentials (check ELK_API_KEY)"
        )),
        408 | 429 | 500..=599 => RequestOutcome::Retry(format!("HTTP {status}: {body_snippet}")),
        _ => RequestOutcome::Fatal(format!("HTTP {status}: {body_snippet}")),
    }
}

/// Exponential backoff with "full jitter": a random wait in [base·2ⁿ/2, base·2ⁿ], capped.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let max = exp.min(cap);
    let half = max / 2;
    half + Duration::from_nanos(jitter(half.as_nanos() as u64))
}

/// A small xorshift seeded from the clock: jitter needs spread, not cryptographic quality.
fn jitter(bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(88172645463325252)
        | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x % bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_classified_by_status() {
        let r = || "x".to_string();
        assert_eq!(classify_item(201, r), ItemOutcome::Done);
        assert_eq!(classify_item(409, r), ItemOutcome::AlreadyCurrent);
        assert!(matches!(classify_item(429, r), ItemOutcome::Retry(_)));
        assert!(matches!(classify_item(503, r), ItemOutcome::Retry(_)));
        assert!(matches!(classify_item(400, r), ItemOutcome::Reject(_)));
        assert!(matches!(classify_item(404, r), ItemOutcome::Reject(_)));
    }

    #[test]
    fn requests_are_classified_by_status() {
        assert!(matches!(
            classify_request_status(503, ""),
            RequestOutcome::Retry(_)
        ));
        assert!(matches!(
            classify_request_status(401, ""),
            RequestOutcome::Retry(_)
        ));
        assert!(matches!(
            classify_request_status(400, ""),
            RequestOutcome::Fatal(_)
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 0..20 {
            let d = backoff(attempt, base, cap);
            let max = base.saturating_mul(1 << attempt.min(16)).min(cap);
            assert!(d >= max / 2 && d <= max, "{attempt}: {d:?}");
        }
    }
}
