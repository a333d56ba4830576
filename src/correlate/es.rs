//! The few raw Elasticsearch requests the stage sends (search, msearch, bulk, refresh), through
//! the official client's transport, with errors that say which request failed and never carry
//! credentials.

use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {message}")]
pub struct EsError {
    pub what: &'static str,
    /// The HTTP status, when one came back.
    pub status: Option<u16>,
    pub message: String,
}

impl EsError {
    pub fn not_found(&self) -> bool {
        self.status == Some(404)
    }
}

fn transport(what: &'static str, e: &elasticsearch::Error) -> EsError {
    let message = if e.is_timeout() {
        "timeout: Elasticsearch did not answer in time".to_string()
    } else {
        let text = e.to_string();
        let text = text.split(" for url").next().unwrap_or(&text).to_string();
        format!("cannot reach Elasticsearch: {text}")
    };
    EsError {
        what,
        status: None,
        message,
    }
}

/// A request body: none, one JSON document, or one per line (`_bulk`, `_msearch`).
pub enum Body {
    None,
    Json(Vec<u8>),
    NdJson(Vec<u8>),
}

/// One `_search` of `index` (a missing index reads as no hits), answered as JSON.
pub async fn search(
    es: &Elasticsearch,
    what: &'static str,
    index: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, EsError> {
    send(
        es,
        what,
        Method::Post,
        &format!("/{}/_search", path_index(index)),
        &[("ignore_unavailable", "true")],
        Body::Json(body.to_string().into_bytes()),
        timeout,
    )
    .await
}

/// Sends one request and returns its JSON answer; any non-2xx is an error with a short,
/// sanitised excerpt of the answer.
pub async fn send(
    es: &Elasticsearch,
    what: &'static str,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    body: Body,
    timeout: Duration,
) -> Result<Value, EsError> {
    let mut headers = HeaderMap::new();
    let body = match body {
        Body::None => None,
        Body::Json(b) => Some(b),
        Body::NdJson(b) => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            Some(b)
        }
    };
    let resp = es
        .send(method, path, headers, Some(query), body, Some(timeout))
        .await
        .map_err(|e| transport(what, &e))?;
    let status = resp.status_code().as_u16();
    let text = resp.text().await.map_err(|e| transport(what, &e))?;
    if !(200..300).contains(&status) {
        return Err(EsError {
            what,
            status: Some(status),
            message: format!(
                "HTTP {status}: {}",
                crate::document::sanitize::clean_text(&text, 300)
            ),
        });
    }
    let parsed = serde_json::from_str(&text).map_err(|e| EsError {
        what,
        status: Some(status),
        message: format!("unreadable answer: {e}"),
    });
    // The text goes now; the parsed tree soon after (the caller takes what it needs).
    crate::memory::transient_freed(3 * text.len());
    parsed
}

/// Moves the array at `v[a][b]` out of `v` (no copy of a large answer).
pub fn take_array(v: &mut Value, a: &str, b: &str) -> Vec<Value> {
    match v[a][b].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// One JSON document per line, as `_bulk` and `_msearch` want.
pub fn ndjson(lines: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        // Serialising a Value cannot fail.
        out.extend_from_slice(l.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Index names in a URL path (commas and `*` are meaningful there and kept).
pub fn path_index(index: &str) -> String {
    url::form_urlencoded::byte_serialize(index.as_bytes())
        .collect::<String>()
        .replace("%2C", ",")
        .replace("%2A", "*")
}
