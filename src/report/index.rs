//! Reading an operation back from the index: its document and all of its link documents.
//!
//! A report is made from the index only, so it works after Caldera's data is gone, and it shows
//! what the client's SIEM team can see in Kibana. Links are read in pages with `search_after`
//! (sorted by `link_id`), so an operation of any size is read completely.

use elasticsearch::{Elasticsearch, SearchParts};
use serde_json::{Value, json};

use crate::document::types::OperationId;

const PAGE: usize = 2_000;
/// Settled operations returned by one [`settled_since`].
pub const SETTLED_PAGE: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("operation {0} is not in the index")]
    NotFound(String),
    #[error("cannot read the index: {0}")]
    Search(String),
}

/// The documents a report is made of.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub operation: Value,
    pub links: Vec<Value>,
}

async fn search(es: &Elasticsearch, index: &str, body: Value) -> Result<Value, ReadError> {
    let resp = es
        .search(SearchParts::Index(&[index]))
        .ignore_unavailable(true)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let text = e.to_string();
            // The crate's text can carry the URL; keep the kind of failure only.
            ReadError::Search(text.split(" for url").next().unwrap_or(&text).to_string())
        })?;
    let status = resp.status_code().as_u16();
    let v: Value = resp
        .json()
        .await
        .map_err(|e| ReadError::Search(format!("unreadable answer: {e}")))?;
    if !(200..300).contains(&status) {
        let why = crate::document::sanitize::clean_text(&v["error"].to_string(), 300);
        return Err(ReadError::Search(format!("HTTP {status}: {why}")));
    }
    Ok(v)
}

fn hits(v: &Value) -> &[Value] {
    v["hits"]["hits"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The operation document and its link documents (sources only).
pub async fn load(es: &Elasticsearch, index: &str, id: &OperationId) -> Result<Loaded, ReadError> {
    let op = search(
        es,
        index,
        json!({"size": 1, "query": {"ids": {"values": [crate::document::operation_doc_id(id)]}}}),
    )
    .await?;
    let operation = hits(&op)
        .first()
        .map(|h| h["_source"].clone())
        .ok_or_else(|| ReadError::NotFound(id.to_string()))?;
    let mut links = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut body = json!({
            "size": PAGE,
            "sort": [{"link_id": "asc"}],
            "query": {"bool": {"filter": [
                {"term": {"event.dataset": "caldera.link"}},
                {"term": {"operation_id": id.as_str()}}
            ]}}
        });
        if let Some(a) = after.take() {
            body["search_after"] = a;
        }
        let page = search(es, index, body).await?;
        let hs = hits(&page);
        links.extend(hs.iter().map(|h| h["_source"].clone()));
        match hs.last() {
            Some(last) if hs.len() == PAGE => after = Some(last["sort"].clone()),
            _ => break,
        }
    }
    Ok(Loaded { operation, links })
}

/// What makes a settled operation's report out of date: a newer observation of the operation
/// (`sidecar.sequence`), or new detection results (`detection.sequence`, stamped by the
/// correlation stage when an operation's detection summary changes).
pub const CHANGE_FIELDS: [&str; 2] = ["sidecar.sequence", "detection.sequence"];

/// Settled operations whose `field` (one of [`CHANGE_FIELDS`]) is above `after` (all that
/// have it for `None`), with that value, oldest first: what the daemon's report writer looks
/// for.
pub async fn settled_since(
    es: &Elasticsearch,
    index: &str,
    field: &str,
    after: Option<u64>,
) -> Result<Vec<(String, u64)>, ReadError> {
    let mut filter = vec![
        json!({"term": {"event.dataset": "caldera.operation"}}),
        json!({"term": {"settled": true}}),
        json!({"exists": {"field": field}}),
    ];
    if let Some(a) = after {
        filter.push(json!({"range": {field: {"gt": a}}}));
    }
    let v = search(
        es,
        index,
        json!({
            "size": SETTLED_PAGE,
            "_source": ["operation_id", field],
            // `unmapped_type`: without correlation the index has no `detection` mapping.
            "sort": [{field: {"order": "asc", "unmapped_type": "long"}}],
            "query": {"bool": {"filter": filter}}
        }),
    )
    .await?;
    Ok(hits(&v)
        .iter()
        .filter_map(|h| {
            let id = h["_source"]["operation_id"].as_str()?;
            let seq = field
                .split('.')
                .try_fold(&h["_source"], |v, k| v.get(k))?
                .as_u64()?;
            Some((id.to_string(), seq))
        })
        .collect())
}
