//! Request building and sending with the official `elasticsearch` crate: the bulk request, the
//! index template, and the few queries the sidecar needs. Only APIs that Elasticsearch 8/9 and
//! OpenSearch 2 share are used.

use std::collections::HashMap;
use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, TransportBuilder,
};
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::{BulkParts, Elasticsearch, SearchParts};
use serde::Deserialize;
use serde_json::json;

use super::retry::{RequestOutcome, classify_request_status};
use super::template::{TEMPLATE_VERSION, template_body, template_name};
use crate::config::ElasticSettings;
use crate::document::Encoded;

/// A request-level failure, already classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}")]
pub struct RequestError(pub RequestOutcome);

impl RequestError {
    pub fn message(&self) -> &str {
        match &self.0 {
            RequestOutcome::Retry(m) | RequestOutcome::Fatal(m) => m,
        }
    }
}

fn transport_error(e: elasticsearch::Error) -> RequestError {
    // The crate's error text can include the request URL; ours never carry credentials (they
    // were moved out of ELK_URL at start-up), but keep only the kind of failure anyway.
    let msg = if e.is_timeout() {
        "timeout: Elasticsearch did not answer in time".to_string()
    } else {
        let text = e.to_string();
        let text = text.split(" for url").next().unwrap_or(&text).to_string();
        crate::telemetry::cap_text(&format!("cannot reach Elasticsearch: {text}"))
    };
    RequestError(RequestOutcome::Retry(msg))
}

pub fn build_client(s: &ElasticSettings) -> Result<Elasticsearch, String> {
    let mut builder = if s.urls.len() == 1 {
        TransportBuilder::new(SingleNodeConnectionPool::new(s.urls[0].clone()))
    } else {
        TransportBuilder::new(MultiNodeConnectionPool::round_robin(s.urls.clone(), None))
    };
    // Ask for uncompressed answers: the crate reads each answer whole (it has no streaming
    // API), and reqwest would inflate a gzip answer without limit. Answers that announce more
    // than MAX_ANSWER_BYTES are refused unread (see `check`).
    builder = builder.timeout(s.timeout).disable_proxy().header(
        elasticsearch::http::headers::ACCEPT_ENCODING,
        elasticsearch::http::headers::HeaderValue::from_static("identity"),
    );
    if let Some(key) = &s.api_key {
        builder = builder.auth(Credentials::EncodedApiKey(key.expose().to_string()));
    } else if let Some((user, pass)) = &s.basic {
        builder = builder.auth(Credentials::Basic(user.clone(), pass.expose().to_string()));
    }
    if !s.verify_ssl {
        builder = builder.cert_validation(CertificateValidation::None);
    } else if let Some(ca) = &s.ca_cert {
        // Full: the CA is added to the trust roots and host names are still checked.
        let cert = Certificate::from_pem(&ca.pem)
            .map_err(|e| format!("ELK_CA_CERT: {} cannot be used: {e}", ca.path.display()))?;
        builder = builder.cert_validation(CertificateValidation::Full(cert));
    }
    let transport = builder
        .build()
        .map_err(|e| format!("cannot build the Elasticsearch client: {e}"))?;
    Ok(Elasticsearch::new(transport))
}

/// Largest answer the sidecar reads from Elasticsearch when its size is announced. Its own
/// requests get far smaller answers (a bulk of BULK_MAX_DOCS items, 5,000 ids per page).
pub const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

async fn check(resp: Result<Response, elasticsearch::Error>) -> Result<Response, RequestError> {
    let resp = resp.map_err(transport_error)?;
    let status = resp.status_code().as_u16();
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES) {
        return Err(RequestError(RequestOutcome::Retry(format!(
            "Elasticsearch answered HTTP {status} with more than {} MB; not read",
            MAX_ANSWER_BYTES >> 20
        ))));
    }
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let snippet = crate::document::sanitize::clean_text(&text, 300);
    Err(RequestError(classify_request_status(status, &snippet)))
}

/// Installs (or updates) the composable index template for `index`.
pub async fn install_template(es: &Elasticsearch, index: &str) -> Result<(), RequestError> {
    let name = template_name(index);
    let resp = es
        .indices()
        .put_index_template(elasticsearch::indices::IndicesPutIndexTemplateParts::Name(
            &name,
        ))
        .body(template_body(index))
        .send()
        .await;
    check(resp).await.map(|_| ())
}

/// The version of the installed template, if any (for health: "present and current").
pub async fn template_version(
    es: &Elasticsearch,
    index: &str,
) -> Result<Option<u64>, RequestError> {
    let name = template_name(index);
    let resp = es
        .indices()
        .get_index_template(elasticsearch::indices::IndicesGetIndexTemplateParts::Name(
            &name,
        ))
        .send()
        .await
        .map_err(transport_error)?;
    if resp.status_code().as_u16() == 404 {
        return Ok(None);
    }
    let resp = check(Ok(resp)).await?;
    let v: serde_json::Value = resp.json().await.map_err(transport_error)?;
    Ok(v["index_templates"][0]["index_template"]["version"].as_u64())
}

pub fn template_is_current(version: Option<u64>) -> bool {
    version == Some(TEMPLATE_VERSION)
}

#[derive(Debug, Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Debug, Deserialize)]
pub struct BulkItem {
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

impl BulkItem {
    pub fn reason(&self) -> String {
        match &self.error {
            Some(e) => {
                let kind = e["type"].as_str().unwrap_or("error");
                let reason = e["reason"].as_str().unwrap_or("");
                crate::document::sanitize::clean_text(&format!("{kind}: {reason}"), 500)
            }
            None => String::new(),
        }
    }
}

/// The bulk action line: index with the observation number as external version, so an older
/// observation is refused with 409 instead of overwriting a newer one.
fn action_line(index: &str, doc: &Encoded) -> String {
    let mut line = String::with_capacity(index.len() + doc.id.len() + 80);
    line.push_str(r#"{"index":{"_index":"#);
    // Index names and ids are validated ASCII without quotes or backslashes; serde keeps it safe anyway.
    line.push_str(&serde_json::Value::from(index).to_string());
    line.push_str(r#","_id":"#);
    line.push_str(&serde_json::Value::from(doc.id.as_str()).to_string());
    line.push_str(&format!(
        r#","version":{},"version_type":"external"}}}}"#,
        doc.version
    ));
    line
}

/// Sends one bulk request; returns one item result per document, in order.
pub async fn bulk(
    es: &Elasticsearch,
    index: &str,
    docs: &[Encoded],
    timeout: Duration,
) -> Result<Vec<BulkItem>, RequestError> {
    let result = send_bulk(es, index, docs, timeout).await;
    // The request body and its copies in the HTTP client are gone now.
    crate::memory::transient_freed(docs.iter().map(|d| 2 * d.body.len()).sum());
    result
}

async fn send_bulk(
    es: &Elasticsearch,
    index: &str,
    docs: &[Encoded],
    timeout: Duration,
) -> Result<Vec<BulkItem>, RequestError> {
    let actions: Vec<String> = docs.iter().map(|d| action_line(index, d)).collect();
    let mut body: Vec<&[u8]> = Vec::with_capacity(docs.len() * 2);
    for (a, d) in actions.iter().zip(docs) {
        body.push(a.as_bytes());
        body.push(&d.body);
    }
    let resp = es
        .bulk(BulkParts::None)
        .body(body)
        .timeout(&format!("{}s", timeout.as_secs().max(1)))
        .send()
        .await;
    let resp = check(resp).await?;
    let parsed: BulkResponse = resp.json().await.map_err(|e| {
        RequestError(RequestOutcome::Retry(format!(
            "unreadable bulk answer: {e}"
        )))
    })?;
    let items: Vec<BulkItem> = parsed
        .items
        .into_iter()
        .filter_map(|mut m| m.remove("index"))
        .collect();
    if items.len() != docs.len() {
        return Err(RequestError(RequestOutcome::Retry(format!(
            "bulk answer has {} items for {} documents",
            items.len(),
            docs.len()
        ))));
    }
    Ok(items)
}

/// Operation ids the index holds as settled, with their state: the watcher skips those after a
/// restart instead of fetching them from Caldera again. Read in pages (`search_after` on the
/// operation id), so a long history is read whole.
pub async fn settled_operations(
    es: &Elasticsearch,
    index: &str,
) -> Result<HashMap<String, String>, RequestError> {
    settled_operations_in_pages(es, index, 5_000).await
}

/// [`settled_operations`] with a chosen page size (tests use small pages).
pub async fn settled_operations_in_pages(
    es: &Elasticsearch,
    index: &str,
    page: usize,
) -> Result<HashMap<String, String>, RequestError> {
    let mut out = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({
            "size": page,
            "_source": ["operation_id", "status"],
            "sort": [{"operation_id": "asc"}],
            "query": {"bool": {"filter": [
                {"term": {"event.dataset": "caldera.operation"}},
                {"term": {"settled": true}}
            ]}}
        });
        if let Some(a) = &after {
            body["search_after"] = json!([a]);
        }
        let resp = es
            .search(SearchParts::Index(&[index]))
            .ignore_unavailable(true)
            .body(body)
            .send()
            .await;
        let resp = check(resp).await?;
        let v: serde_json::Value = resp.json().await.map_err(transport_error)?;
        let hits = v["hits"]["hits"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for h in hits {
            if let (Some(id), Some(st)) = (
                h["_source"]["operation_id"].as_str(),
                h["_source"]["status"].as_str(),
            ) {
                out.insert(id.to_string(), st.to_string());
            }
        }
        let last = hits.last().and_then(|h| h["sort"][0].as_str());
        match last {
            Some(l) if hits.len() == page => after = Some(l.to_string()),
            _ => return Ok(out),
        }
    }
}

/// The highest observation number (`sidecar.sequence`) in the index, if any: the watcher's
/// clock starts above it, so a wall clock that went back across a restart cannot make new
/// observations lose against old ones.
pub async fn max_sequence(es: &Elasticsearch, index: &str) -> Result<Option<u64>, RequestError> {
    let resp = es
        .search(SearchParts::Index(&[index]))
        .ignore_unavailable(true)
        .body(json!({
            "size": 0,
            "aggs": {"max_sequence": {"max": {"field": "sidecar.sequence"}}}
        }))
        .send()
        .await;
    let resp = check(resp).await?;
    let v: serde_json::Value = resp.json().await.map_err(transport_error)?;
    // A `max` aggregation answers a double (exact up to 2^53, i.e. year 2255 in microseconds).
    Ok(v["aggregations"]["max_sequence"]["value"]
        .as_f64()
        // Elasticsearch versions are at most i64::MAX; anything above is not ours, and would
        // overflow the sequence clock.
        .filter(|m| m.is_finite() && *m >= 0.0 && *m < 9.0e18)
        .map(|m| m as u64))
}

/// Cluster health status ("green", "yellow", "red").
pub async fn cluster_status(es: &Elasticsearch) -> Result<String, RequestError> {
    let resp = es
        .cluster()
        .health(elasticsearch::cluster::ClusterHealthParts::None)
        .send()
        .await;
    let resp = check(resp).await?;
    let v: serde_json::Value = resp.json().await.map_err(transport_error)?;
    Ok(v["status"].as_str().unwrap_or("unknown").to_string())
}

/// Makes recent writes searchable (tests and `replay` use it; the daemon does not need it).
pub async fn refresh(es: &Elasticsearch, index: &str) -> Result<(), RequestError> {
    let resp = es
        .indices()
        .refresh(IndicesRefreshParts::Index(&[index]))
        .send()
        .await;
    check(resp).await.map(|_| ())
}
