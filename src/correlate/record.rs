//! The correlation records: one document per (alert, link) pair in `CORRELATION_INDEX`, with a
//! deterministic `_id` (`<alert uuid>.<link id>`), so passes, restarts and the `correlate`
//! command overwrite the same record instead of piling up copies. They are the audit trail
//! ("which alert did we close, why, and when") and the stage's memory of what it did.

use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use serde_json::{Value, json};

use super::action::Outcome;
use super::alert::Alert;
use super::es::{Body, EsError, path_index, send};
use super::link::LinkView;
use super::time::format_millis;

pub const TEMPLATE_VERSION: u64 = 1;

pub fn record_id(alert_uuid: &str, link_id: &str) -> String {
    format!("{alert_uuid}.{link_id}")
}

/// The composable template of the correlation index.
pub fn template_body(index: &str) -> Value {
    let kw = json!({"type": "keyword", "ignore_above": 1024});
    let date = json!({"type": "date"});
    json!({
        "index_patterns": [index],
        "priority": 200,
        "version": TEMPLATE_VERSION,
        "_meta": {"managed_by": "caldera-sidecar", "template_version": TEMPLATE_VERSION},
        "template": {
            "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1"},
            "mappings": {"dynamic": false, "properties": {
                "@timestamp": date,
                "record_id": kw,
                "purple_team_exercise": {"type": "boolean"},
                "tags": kw,
                "operation_id": kw,
                "operation_name": kw,
                "link_id": kw,
                "technique_id": kw,
                "tactic": kw,
                "host": {"properties": {"name": kw}},
                "alert": {"properties": {
                    "id": kw, "uuid": kw, "index": kw, "time": date, "created": date,
                    "workflow_status": kw
                }},
                "rule": {"properties": {"name": kw, "uuid": kw}},
                "match": {"properties": {"tier": {"type": "byte"}, "reason": kw}},
                "action": {"properties": {
                    "name": kw, "backend": kw, "result": kw, "detail": kw, "at": date
                }},
                "event": {"properties": {"kind": kw, "dataset": kw}}
            }}
        }
    })
}

pub async fn install_template(
    es: &Elasticsearch,
    index: &str,
    timeout: Duration,
) -> Result<(), EsError> {
    send(
        es,
        "installing the correlation index template",
        Method::Put,
        &format!("/_index_template/caldera-sidecar-{}", path_index(index)),
        &[],
        Body::Json(template_body(index).to_string().into_bytes()),
        timeout,
    )
    .await
    .map(|_| ())
}

/// What one record says.
pub struct Record<'a> {
    pub alert: &'a Alert,
    pub link: &'a LinkView,
    pub tier: u8,
    pub reason: &'a str,
    pub action: &'a str,
    pub backend: &'a str,
    pub outcome: Outcome,
    pub detail: Option<&'a str>,
    pub now_ms: i64,
}

impl Record<'_> {
    pub fn id(&self) -> String {
        record_id(&self.alert.uuid, &self.link.link_id)
    }

    pub fn to_json(&self) -> Value {
        let a = self.alert;
        let l = self.link;
        json!({
            "@timestamp": format_millis(self.now_ms),
            "record_id": self.id(),
            "purple_team_exercise": true,
            "tags": ["purple_team", "simulation", "caldera"],
            "operation_id": l.operation_id,
            "operation_name": l.operation_name,
            "link_id": l.link_id,
            "technique_id": l.technique_id,
            "tactic": l.tactic,
            "host": {"name": l.host_name},
            "alert": {
                "id": a.id, "uuid": a.uuid, "index": a.index,
                "time": format_millis(a.time_ms),
                "created": a.created_ms.map(format_millis),
                "workflow_status": a.workflow_status,
            },
            "rule": {"name": a.rule_name, "uuid": a.rule_uuid},
            "match": {"tier": self.tier, "reason": self.reason},
            "action": {
                "name": self.action, "backend": self.backend, "result": self.outcome.name(),
                "detail": self.detail, "at": format_millis(self.now_ms),
            },
            "event": {"kind": "event", "dataset": "caldera.correlation"}
        })
    }
}

/// A bulk body of records, serialised as they are added (a record's JSON tree lives only
/// while it is written out: thousands of them as trees would cost far more than their text).
#[derive(Default)]
pub struct Batch {
    body: Vec<u8>,
    count: usize,
}

impl Batch {
    pub fn push(&mut self, index: &str, r: &Record<'_>) {
        let action = json!({"index": {"_index": index, "_id": r.id()}});
        self.body.extend_from_slice(action.to_string().as_bytes());
        self.body.push(b'\n');
        self.body
            .extend_from_slice(r.to_json().to_string().as_bytes());
        self.body.push(b'\n');
        self.count += 1;
    }
}

/// Indexes the records in one bulk request; answers how many were stored.
pub async fn write(es: &Elasticsearch, batch: Batch, timeout: Duration) -> Result<usize, EsError> {
    if batch.count == 0 {
        return Ok(0);
    }
    let bytes = batch.body.len();
    let v = send(
        es,
        "writing correlation records",
        Method::Post,
        "/_bulk",
        &[],
        Body::NdJson(batch.body),
        timeout,
    )
    .await?;
    crate::memory::transient_freed(bytes);
    let stored = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|i| i["index"]["status"].as_u64().is_some_and(|s| s < 300))
                .count()
        })
        .unwrap_or(0);
    Ok(stored)
}
