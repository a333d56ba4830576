//! The detection fields the report reads: `detection.*` on each link document and the
//! detected/total techniques on the operation document.
//!
//! Link: `detection.status` (`detected` once a tier-1/2 alert matched, `not_detected` when none
//! did by `ALERT_WAIT` after the link's end, `pending` before), `detection.alert_count`,
//! `detection.rules`, `detection.first_alert_at` (earliest `@timestamp` of those alerts: when
//! the SIEM raised it), `detection.time_to_detect_ms` (that minus the link's start on the
//! victim's clock, floored at 0), `detection.candidate_count` (tier-3 alerts) and
//! `detection.complete` (its operation is settled and the wait is over; the link is not
//! looked at again).
//!
//! Operation: `detection.techniques_total`, `detection.techniques_detected`,
//! `detection.techniques_detected_ids`, `detection.links_total`, `detection.links_detected`,
//! `detection.links_pending`, `detection.complete`, and `detection.sequence` (microseconds
//! since the epoch when these last changed: the report writer redoes the report then).
//!
//! Written as partial updates guarded by `if_seq_no`/`if_primary_term` of the read: a document
//! the watcher re-indexed since is left alone (its newer content wins) and updated on the next
//! pass. See the module doc of [`super`] for why the stage, not the watcher, keeps them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use serde_json::{Value, json};

use super::es::{Body, EsError, ndjson, path_index, search, send};
use super::link::LinkView;
use super::time::format_millis;

/// Mapping of the `detection` object on link and operation documents (used by the index
/// template and put on an existing index at start-up).
pub fn mapping() -> Value {
    json!({"properties": {
        "status": {"type": "keyword"},
        "alert_count": {"type": "integer"},
        "candidate_count": {"type": "integer"},
        "rules": {"type": "keyword", "ignore_above": 1024},
        "first_alert_at": {"type": "date"},
        "time_to_detect_ms": {"type": "long"},
        "complete": {"type": "boolean"},
        "techniques_total": {"type": "integer"},
        "techniques_detected": {"type": "integer"},
        "techniques_detected_ids": {"type": "keyword"},
        "links_total": {"type": "integer"},
        "links_detected": {"type": "integer"},
        "links_pending": {"type": "integer"},
        "sequence": {"type": "long"}
    }})
}

/// Microseconds since the epoch: the operation's `detection.sequence` when its detection
/// changed (the same clock as `sidecar.sequence`).
fn sequence_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Most rule names kept on one link document.
const MAX_RULES: usize = 50;

/// What was found for one link in this pass.
#[derive(Debug, Default, Clone)]
pub struct Found {
    /// Distinct tier-1/2 alerts, by uuid.
    pub alerts: BTreeSet<String>,
    pub rules: BTreeSet<String>,
    pub first_alert_ms: Option<i64>,
    pub candidates: BTreeSet<String>,
}

impl Found {
    pub fn add(&mut self, tier: u8, uuid: &str, rule: &str, raised_ms: i64) {
        if tier <= 2 {
            self.alerts.insert(uuid.to_string());
            if !rule.is_empty() && self.rules.len() < MAX_RULES {
                self.rules.insert(rule.to_string());
            }
            self.first_alert_ms = Some(self.first_alert_ms.map_or(raised_ms, |f| f.min(raised_ms)));
        } else {
            self.candidates.insert(uuid.to_string());
        }
    }
}

/// The link's `detection` object from what this pass found (a pass reads every alert of the
/// link's window again, so this is the whole picture, not an increment).
///
/// `settled` says whether the link's operation is settled: until then other links of it may
/// still be indexed (and take alerts that look like candidates of this one), so the link is
/// not declared complete before.
pub fn link_detection(
    link: &LinkView,
    found: &Found,
    now_ms: i64,
    wait: Duration,
    settled: bool,
) -> Value {
    let complete = settled
        && link
            .end_ms
            .is_some_and(|e| now_ms > e + wait.as_millis() as i64);
    let status = if !found.alerts.is_empty() {
        "detected"
    } else if complete {
        "not_detected"
    } else {
        "pending"
    };
    let ttd = match (found.first_alert_ms, link.start_ms) {
        (Some(f), Some(s)) => Some((f - s).max(0)),
        _ => None,
    };
    json!({
        "status": status,
        "alert_count": found.alerts.len(),
        "rules": found.rules,
        "first_alert_at": found.first_alert_ms.map(format_millis),
        "time_to_detect_ms": ttd,
        "candidate_count": found.candidates.len(),
        "complete": complete,
    })
}

/// One guarded partial update of a document's `detection` object.
pub struct Update {
    pub id: String,
    pub seq_no: i64,
    pub primary_term: i64,
    pub detection: Value,
}

/// Sends the updates in one bulk; answers (written, refused because the document changed).
pub async fn write(
    es: &Elasticsearch,
    index: &str,
    updates: &[Update],
    timeout: Duration,
) -> Result<(usize, usize), EsError> {
    if updates.is_empty() {
        return Ok((0, 0));
    }
    let mut lines = Vec::with_capacity(updates.len() * 2);
    for u in updates {
        lines.push(json!({"update": {"_index": index, "_id": u.id,
            "if_seq_no": u.seq_no, "if_primary_term": u.primary_term}}));
        lines.push(json!({"doc": {"detection": u.detection}}));
    }
    let v = send(
        es,
        "writing detection fields",
        Method::Post,
        "/_bulk",
        &[],
        Body::NdJson(ndjson(&lines)),
        timeout,
    )
    .await?;
    let mut written = 0;
    let mut conflicts = 0;
    for i in v["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
        match i["update"]["status"].as_u64() {
            Some(s) if s < 300 => written += 1,
            Some(409) => conflicts += 1,
            _ => {}
        }
    }
    Ok((written, conflicts))
}

/// Operations whose document has no detection summary yet (new, or re-indexed whole by the
/// watcher since the last pass).
pub async fn operations_without_summary(
    es: &Elasticsearch,
    index: &str,
    timeout: Duration,
) -> Result<BTreeSet<String>, EsError> {
    let body = json!({
        "size": 1000,
        "_source": ["operation_id"],
        "query": {"bool": {
            "filter": [{"term": {"event.dataset": "caldera.operation"}}],
            "must_not": [{"exists": {"field": "detection.techniques_total"}}]
        }}
    });
    let v = search(es, "reading operation documents", index, &body, timeout).await?;
    Ok(v["hits"]["hits"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["_source"]["operation_id"].as_str().map(String::from))
        .collect())
}

/// Which of these operations the index holds as settled (closed, every link done).
pub async fn settled_operations(
    es: &Elasticsearch,
    index: &str,
    ops: &BTreeSet<String>,
    timeout: Duration,
) -> Result<BTreeSet<String>, EsError> {
    if ops.is_empty() {
        return Ok(BTreeSet::new());
    }
    let ids: Vec<String> = ops.iter().map(|o| format!("op-{o}")).collect();
    let body = json!({"size": ids.len(), "_source": ["operation_id", "settled"],
                      "query": {"ids": {"values": ids}}});
    let v = search(es, "reading operation documents", index, &body, timeout).await?;
    Ok(v["hits"]["hits"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|h| h["_source"]["settled"] == true)
        .filter_map(|h| h["_source"]["operation_id"].as_str().map(String::from))
        .collect())
}

/// Recomputes the operations' summaries from their link documents (one aggregation) and
/// writes those that changed. Answers how many were written.
pub async fn summarise_operations(
    es: &Elasticsearch,
    index: &str,
    ops: &BTreeSet<String>,
    timeout: Duration,
) -> Result<usize, EsError> {
    if ops.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&String> = ops.iter().collect();
    let body = json!({
        "size": 0,
        "query": {"bool": {
            "filter": [{"term": {"event.dataset": "caldera.link"}}, {"terms": {"operation_id": ids}}],
            "must_not": [{"term": {"status": "discarded"}}]
        }},
        "aggs": {"ops": {"terms": {"field": "operation_id", "size": ids.len()}, "aggs": {
            "techniques": {"terms": {"field": "technique_id", "size": 1000}},
            "detected": {"filter": {"term": {"detection.status": "detected"}}, "aggs": {
                "techniques": {"terms": {"field": "technique_id", "size": 1000}}}},
            "pending": {"filter": {"bool": {"must_not": [{"term": {"detection.complete": true}}]}}}
        }}}
    });
    let v = send(
        es,
        "summarising operations",
        Method::Post,
        &format!("/{}/_search", path_index(index)),
        &[],
        Body::Json(body.to_string().into_bytes()),
        timeout,
    )
    .await?;
    let mut summaries: BTreeMap<String, Value> = BTreeMap::new();
    for op in ops {
        // An operation without links (no agents) has nothing to detect: 0 of 0, complete.
        summaries.insert(
            op.clone(),
            json!({"techniques_total": 0, "techniques_detected": 0, "techniques_detected_ids": [],
                   "links_total": 0, "links_detected": 0, "links_pending": 0, "complete": true}),
        );
    }
    let keys = |b: &Value| -> Vec<String> {
        b["buckets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x["key"].as_str().map(String::from))
            .collect()
    };
    for b in v["aggregations"]["ops"]["buckets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(op) = b["key"].as_str() else {
            continue;
        };
        let total = keys(&b["techniques"]);
        let detected = keys(&b["detected"]["techniques"]);
        let pending = b["pending"]["doc_count"].as_u64().unwrap_or(0);
        summaries.insert(
            op.to_string(),
            json!({
                "techniques_total": total.len(),
                "techniques_detected": detected.len(),
                "techniques_detected_ids": detected,
                "links_total": b["doc_count"],
                "links_detected": b["detected"]["doc_count"],
                "links_pending": pending,
                "complete": pending == 0,
            }),
        );
    }
    // The operation documents as they are now, with their sequence guards.
    let doc_ids: Vec<String> = ops.iter().map(|o| format!("op-{o}")).collect();
    let v = send(
        es,
        "reading operation documents",
        Method::Post,
        &format!("/{}/_search", path_index(index)),
        &[],
        Body::Json(
            json!({"size": doc_ids.len(), "seq_no_primary_term": true,
                   "_source": ["operation_id", "detection"],
                   "query": {"ids": {"values": doc_ids}}})
            .to_string()
            .into_bytes(),
        ),
        timeout,
    )
    .await?;
    let mut updates = Vec::new();
    for h in v["hits"]["hits"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let (Some(id), Some(op), Some(seq), Some(term)) = (
            h["_id"].as_str(),
            h["_source"]["operation_id"].as_str(),
            h["_seq_no"].as_i64(),
            h["_primary_term"].as_i64(),
        ) else {
            continue;
        };
        let Some(mut new) = summaries.remove(op) else {
            continue;
        };
        let mut old = h["_source"]["detection"].clone();
        if let Some(o) = old.as_object_mut() {
            o.remove("sequence");
        }
        if old == new {
            continue;
        }
        // When it changed, so the report writer can redo the operation's report (it looks for
        // settled operations whose `sidecar.sequence` or `detection.sequence` grew).
        new["sequence"] = json!(sequence_now());
        updates.push(Update {
            id: id.to_string(),
            seq_no: seq,
            primary_term: term,
            detection: new,
        });
    }
    write(es, index, &updates, timeout).await.map(|(w, _)| w)
}

/// Puts the `detection` mapping on an existing index (new indices get it from the template).
pub async fn put_mapping(
    es: &Elasticsearch,
    index: &str,
    timeout: Duration,
) -> Result<(), EsError> {
    match send(
        es,
        "adding the detection mapping",
        Method::Put,
        &format!("/{}/_mapping", path_index(index)),
        &[],
        Body::Json(
            json!({"properties": {"detection": mapping()}})
                .to_string()
                .into_bytes(),
        ),
        timeout,
    )
    .await
    {
        Err(e) if e.not_found() => Ok(()),
        other => other.map(|_| ()),
    }
}
