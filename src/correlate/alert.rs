//! One detection alert, parsed from a search hit into the few values matching needs.
//!
//! Alerts come from rules, integrations and people we do not control, so every field is
//! optional or wrong somewhere: an alert without its id, time or host, with a pid that is not a
//! number, or with a field far larger than any real one is refused here with a reason (the
//! stage counts it and moves on). What is only missing but not needed (parent fields, entity
//! ids, the command line) just weakens the match.

use serde_json::Value;

use super::fields::{dotted_alert_keys, get};
use super::host::host_label;
use super::time::parse_millis;

/// Longest string kept from an alert field; anything longer makes the alert malformed.
const MAX_FIELD: usize = 64 * 1024;
/// Most ancestors read from `process.Ext.ancestry` (Elastic Defend sends at most 20 or so).
const MAX_ANCESTRY: usize = 64;

/// The `_source` fields the stage reads from alerts (asked for by name, so huge alert documents
/// cost little to fetch).
pub const SOURCE_FIELDS: &[&str] = &[
    "@timestamp",
    "kibana.alert.original_time",
    "kibana.alert.uuid",
    "kibana.alert.rule.name",
    "kibana.alert.rule.uuid",
    "kibana.alert.workflow_status",
    "kibana.alert.workflow_tags",
    "host.name",
    "host.hostname",
    "process.pid",
    "process.parent.pid",
    "process.entity_id",
    "process.parent.entity_id",
    "process.Ext.ancestry",
    "process.command_line",
    "process.parent.command_line",
    "process.args",
    "process.title",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The concrete index (`_index` of the hit: `.internal.alerts-security.alerts-default-000001`
    /// behind the alias) and `_id`: what an update must address.
    pub index: String,
    pub id: String,
    pub seq_no: Option<i64>,
    pub primary_term: Option<i64>,
    pub uuid: String,
    pub rule_name: String,
    pub rule_uuid: Option<String>,
    /// `kibana.alert.original_time`: the source event's time on the victim's clock.
    pub time_ms: i64,
    /// `@timestamp`: when the rule raised the alert.
    pub created_ms: Option<i64>,
    pub workflow_status: String,
    pub workflow_tags: Vec<String>,
    pub hosts: Vec<String>,
    pub pid: Option<i64>,
    pub ppid: Option<i64>,
    pub entity_id: Option<String>,
    pub parent_entity_id: Option<String>,
    pub ancestry: Vec<String>,
    pub command_line: Option<String>,
    pub parent_command_line: Option<String>,
    /// Whether the alert's own fields are literal dotted keys (see [`super::fields`]).
    pub dotted: bool,
}

/// Why an alert was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert {id:?} skipped: {why}")]
pub struct Malformed {
    pub id: String,
    pub why: String,
}

fn bad(id: &str, why: impl Into<String>) -> Malformed {
    Malformed {
        id: id.chars().take(64).collect(),
        why: why.into(),
    }
}

fn text(src: &Value, path: &str, id: &str) -> Result<Option<String>, Malformed> {
    match get(src, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_FIELD => {
            Err(bad(id, format!("{path} is {} bytes long", s.len())))
        }
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        // A one-element array is how some pipelines write a single value.
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::String(s) if s.len() <= MAX_FIELD => Ok(Some(s.clone())),
            _ => Err(bad(id, format!("{path} is not a string"))),
        },
        Some(_) => Err(bad(id, format!("{path} is not a string"))),
    }
}

fn pid(src: &Value, path: &str, id: &str) -> Result<Option<i64>, Malformed> {
    let v = match get(src, path) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) if a.len() == 1 => &a[0],
        Some(v) => v,
    };
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) if s.len() <= 20 => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => Ok(Some(n)),
        _ => Err(bad(id, format!("{path} is not a process id"))),
    }
}

fn strings(src: &Value, path: &str, id: &str, max: usize) -> Result<Vec<String>, Malformed> {
    match get(src, path) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.len() <= MAX_FIELD => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.len() <= 4096 => {
            let mut out = Vec::with_capacity(a.len().min(max));
            for v in a {
                match v {
                    Value::String(s) if s.len() <= MAX_FIELD => {
                        if out.len() < max {
                            out.push(s.clone());
                        }
                    }
                    _ => return Err(bad(id, format!("{path} holds a non-string"))),
                }
            }
            Ok(out)
        }
        Some(_) => Err(bad(id, format!("{path} is not a list of strings"))),
    }
}

impl Alert {
    /// Parses one search hit (`_index`, `_id`, `_seq_no`, `_primary_term`, `_source`).
    pub fn from_hit(hit: &Value) -> Result<Self, Malformed> {
        let id = hit["_id"].as_str().unwrap_or("");
        let index = hit["_index"].as_str().unwrap_or("");
        if id.is_empty() || index.is_empty() {
            return Err(bad(id, "hit without _id or _index"));
        }
        let src = &hit["_source"];
        if !src.is_object() {
            return Err(bad(id, "no _source"));
        }
        // Only detection alerts carry these: raw telemetry is never read as an alert, so it
        // can never be modified.
        let uuid = text(src, "kibana.alert.uuid", id)?
            .ok_or_else(|| bad(id, "no kibana.alert.uuid (not a detection alert)"))?;
        let time_ms = get(src, "kibana.alert.original_time")
            .and_then(parse_millis)
            .ok_or_else(|| bad(id, "kibana.alert.original_time missing or not a date"))?;
        let mut hosts = Vec::new();
        for p in ["host.name", "host.hostname"] {
            if let Some(h) = text(src, p, id)?.as_deref().and_then(host_label)
                && !hosts.contains(&h)
            {
                hosts.push(h);
            }
        }
        if hosts.is_empty() {
            return Err(bad(id, "no host.name or host.hostname"));
        }
        let status = text(src, "kibana.alert.workflow_status", id)?
            .unwrap_or_else(|| "open".into())
            .to_ascii_lowercase();
        let command_line = match text(src, "process.command_line", id)? {
            Some(c) => Some(c),
            // auditd events carry the argv, not a command line.
            None => {
                let args = strings(src, "process.args", id, 256)?;
                if args.is_empty() {
                    text(src, "process.title", id)?
                } else {
                    Some(args.join(" "))
                }
            }
        };
        Ok(Self {
            index: index.to_string(),
            id: id.to_string(),
            seq_no: hit["_seq_no"].as_i64(),
            primary_term: hit["_primary_term"].as_i64(),
            uuid,
            rule_name: text(src, "kibana.alert.rule.name", id)?.unwrap_or_default(),
            rule_uuid: text(src, "kibana.alert.rule.uuid", id)?,
            time_ms,
            created_ms: get(src, "@timestamp").and_then(parse_millis),
            workflow_status: status,
            workflow_tags: strings(src, "kibana.alert.workflow_tags", id, 1024)?,
            hosts,
            pid: pid(src, "process.pid", id)?,
            ppid: pid(src, "process.parent.pid", id)?,
            entity_id: text(src, "process.entity_id", id)?,
            parent_entity_id: text(src, "process.parent.entity_id", id)?,
            ancestry: strings(src, "process.Ext.ancestry", id, MAX_ANCESTRY)?,
            command_line,
            parent_command_line: text(src, "process.parent.command_line", id)?,
            dotted: dotted_alert_keys(src),
        })
    }

    /// True when an analyst (or anything else) already took the alert out of `open`.
    pub fn handled(&self) -> bool {
        self.workflow_status != "open"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hit(src: Value) -> Value {
        json!({"_index": ".internal.alerts-x", "_id": "a1", "_seq_no": 3, "_primary_term": 1, "_source": src})
    }

    #[test]
    fn parses_an_elastic_defend_alert() {
        let a = Alert::from_hit(&hit(json!({
            "kibana.alert.uuid": "a1", "kibana.alert.original_time": "2026-11-28T15:41:50.123Z",
            "kibana.alert.rule.name": "Whoami", "kibana.alert.workflow_status": "open",
            "host": {"name": "VM.corp", "hostname": "vm"},
            "process": {"pid": 10, "parent": {"pid": "9", "entity_id": "p"}, "Ext": {"ancestry": ["p", "q"]},
                        "command_line": "whoami"}
        })))
        .unwrap();
        assert_eq!(a.hosts, vec!["vm".to_string()]);
        assert_eq!((a.pid, a.ppid), (Some(10), Some(9)));
        assert_eq!(a.ancestry, vec!["p", "q"]);
        assert!(a.dotted);
        assert!(!a.handled());
    }

    #[test]
    fn refuses_what_cannot_be_matched() {
        let base = json!({"kibana.alert.uuid": "a1", "kibana.alert.original_time": "2026-11-28T15:41:50Z",
                          "host.name": "vm"});
        assert!(Alert::from_hit(&hit(base.clone())).is_ok());
        for (k, v) in [
            ("kibana.alert.original_time", json!("soon")),
            ("host.name", json!(42)),
            ("process.pid", json!("twelve")),
            ("process.pid", json!(-5)),
            ("process.command_line", json!("x".repeat(70_000))),
            ("kibana.alert.workflow_tags", json!([1, 2])),
        ] {
            let mut s = base.clone();
            s[k] = v;
            assert!(Alert::from_hit(&hit(s)).is_err(), "{k}");
        }
        let mut s = base.clone();
        s.as_object_mut().unwrap().remove("kibana.alert.uuid");
        assert!(Alert::from_hit(&hit(s)).is_err());
        assert!(Alert::from_hit(&json!({"_id": "x"})).is_err());
    }

    #[test]
    fn auditd_args_stand_in_for_the_command_line() {
        let a = Alert::from_hit(&hit(json!({"kibana.alert.uuid": "a1",
            "kibana.alert.original_time": "2026-11-28T15:41:50Z", "host": {"hostname": "vm"},
            "process": {"args": ["ps", "aux"]}})))
        .unwrap();
        assert_eq!(a.command_line.as_deref(), Some("ps aux"));
    }
}
