//! The composable index template installed at start-up.
//!
//! Explicit mappings make the fields Kibana filters on (`purple_team_exercise`, `threat.*`,
//! `client_id`, times) typed the same on Elasticsearch 8/9 and OpenSearch. `TEMPLATE_VERSION`
//! changes whenever the mappings do, so health can tell an outdated template.

use serde_json::{Value, json};

pub const TEMPLATE_VERSION: u64 = 2;

pub fn template_name(index: &str) -> String {
    format!("caldera-sidecar-{index}")
}

fn kw() -> Value {
    json!({"type": "keyword", "ignore_above": 1024})
}

pub fn template_body(index: &str) -> Value {
    let date = json!({"type": "date"});
    let named = json!({"properties": {"id": kw(), "name": kw()}});
    json!({
        "index_patterns": [index],
        "priority": 200,
        "version": TEMPLATE_VERSION,
        "_meta": {"managed_by": "caldera-sidecar", "template_version": TEMPLATE_VERSION},
        "template": {
            "settings": {
                "number_of_shards": 1,
                "auto_expand_replicas": "0-1"
            },
            "mappings": {
                "dynamic": true,
                "properties": {
                    "@timestamp": date,
                    "timestamp": date,
                    "purple_team_exercise": {"type": "boolean"},
                    "tags": kw(),
                    "severity": kw(),
                    "operation_id": kw(),
                    "operation_name": {"type": "text", "fields": {"keyword": kw()}},
                    "client_id": kw(),
                    "caldera_group": kw(),
                    "techniques": kw(),
                    "technique_count_total": {"type": "integer"},
                    "tactics": kw(),
                    "auto_close": {"type": "boolean"},
                    "agent_count": {"type": "integer"},
                    "status": kw(),
                    "start": date,
                    "finish": date,
                    "adversary": named,
                    "planner": named,
                    "hosts": kw(),
                    "agents": kw(),
                    "settled": {"type": "boolean"},
                    "invalid_values": {"type": "integer"},
                    "link_counts": {"properties": {
                        "total": {"type": "integer"}, "success": {"type": "integer"},
                        "error": {"type": "integer"}, "timeout": {"type": "integer"},
                        "discarded": {"type": "integer"}, "queued": {"type": "integer"},
                        "in_flight": {"type": "integer"}, "other": {"type": "integer"}
                    }},
                    "link_id": kw(),
                    "ability_id": kw(),
                    "ability_name": kw(),
                    "technique_id": kw(),
                    "technique_name": kw(),
                    "tactic": kw(),
                    "status_code": {"type": "integer"},
                    "cleanup": {"type": "boolean"},
                    "paw": kw(),
                    "executor": kw(),
                    "platform": kw(),
                    "decide": date,
                    "collect": date,
                    "agent_reported_time": date,
                    "host": {"properties": {"name": kw()}},
                    "user": {"properties": {"name": kw()}},
                    "process": {"properties": {
                        "pid": {"type": "long"},
                        "command_line": {"type": "keyword", "ignore_above": 8191,
                                          "fields": {"text": {"type": "text"}}}
                    }},
                    "event": {"properties": {
                        "kind": kw(), "module": kw(), "dataset": kw(), "id": kw(),
                        "start": date, "end": date, "outcome": kw()
                    }},
                    "threat": {"properties": {
                        "framework": kw(),
                        "technique": {"properties": {"id": kw(), "name": kw()}},
                        "tactic": {"properties": {"name": kw()}}
                    }},
                    "related": {"properties": {"hosts": kw(), "user": kw()}},
                    "detection": crate::correlate::detection::mapping(),
                    "sidecar": {"properties": {"sequence": {"type": "long"}, "observed_at": date}}
                }
            }
        }
    })
}
