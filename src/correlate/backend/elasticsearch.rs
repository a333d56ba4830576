//! The Elasticsearch backend: one `_bulk` of partial updates of `kibana.alert.workflow_status`,
//! `…workflow_status_updated_at` and `…workflow_tags`, each on the hit's concrete `_index`/`_id`
//! and guarded by `if_seq_no`/`if_primary_term`: if anyone (an analyst in Kibana, a rule
//! re-run) changed the alert since we read it, the update is refused with 409 and their change
//! wins; the next pass reads the alert again and decides afresh.

use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use serde_json::{Value, json};

use crate::correlate::action::{Change, Outcome};
use crate::correlate::alert::Alert;
use crate::correlate::es::{Body, ndjson, send};
use crate::correlate::time::{format_millis, now_millis};

/// The partial document for one change, in the alert's own key layout.
pub fn partial_doc(alert: &Alert, change: &Change, now: &str) -> Value {
    let mut fields = serde_json::Map::new();
    if let Some(s) = change.status {
        fields.insert("workflow_status".into(), s.into());
        fields.insert("workflow_status_updated_at".into(), now.into());
    }
    fields.insert("workflow_tags".into(), json!(change.tags));
    if alert.dotted {
        let m: serde_json::Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (format!("kibana.alert.{k}"), v))
            .collect();
        Value::Object(m)
    } else {
        json!({"kibana": {"alert": Value::Object(fields)}})
    }
}

pub async fn apply(
    es: &Elasticsearch,
    items: &[(&Alert, &Change)],
    timeout: Duration,
) -> Vec<(Outcome, Option<String>)> {
    let now = format_millis(now_millis());
    let mut lines = Vec::with_capacity(items.len() * 2);
    let mut sent = Vec::with_capacity(items.len());
    let mut out: Vec<(Outcome, Option<String>)> = vec![(Outcome::Failed, None); items.len()];
    for (i, (a, c)) in items.iter().enumerate() {
        let (Some(seq), Some(term)) = (a.seq_no, a.primary_term) else {
            out[i].1 = Some("no _seq_no/_primary_term on the hit".into());
            continue;
        };
        lines.push(json!({"update": {"_index": a.index, "_id": a.id,
            "if_seq_no": seq, "if_primary_term": term}}));
        lines.push(json!({"doc": partial_doc(a, c, &now)}));
        sent.push(i);
    }
    if sent.is_empty() {
        return out;
    }
    let v = match send(
        es,
        "updating alerts",
        Method::Post,
        "/_bulk",
        &[],
        Body::NdJson(ndjson(&lines)),
        timeout,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            for i in sent {
                out[i].1 = Some(e.to_string());
            }
            return out;
        }
    };
    let answers = v["items"].as_array().cloned().unwrap_or_default();
    for (k, i) in sent.into_iter().enumerate() {
        let item = answers.get(k).map(|x| &x["update"]);
        let status = item.and_then(|x| x["status"].as_u64()).unwrap_or(0);
        out[i] = match status {
            200..=299 => (Outcome::Applied, None),
            409 => (
                Outcome::Conflict,
                Some("changed since it was read (if_seq_no); left for the next pass".into()),
            ),
            _ => (
                Outcome::Failed,
                Some(crate::document::sanitize::clean_text(
                    &item.map(|x| x["error"].to_string()).unwrap_or_default(),
                    300,
                )),
            ),
        };
    }
    out
}
