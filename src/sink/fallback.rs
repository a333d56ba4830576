//! The reference plugin's fallback files, turned into the documents they describe.
//!
//! The reference Caldera plugin (the "orchestrator" plugin this sidecar replaces) writes a JSON
//! file when it cannot reach Elasticsearch, in two kinds (read from its source, `elk_tagger.py`):
//! * `fallback_link_<YYYYmmdd_HHMMSS>_<link8>.json`: one executed link, fields under `purple.*`
//!   (`link_id`, `operation_id`, `operation_name`, `technique`, `technique_name`, `tactic`,
//!   `ability_id`, `ability_name`, `agent_paw`, `agent_host`, `executor`, `platform`,
//!   `status_code`, `execution_time`, `finish_time`, `output`) and a few copied to the top level;
//! * `fallback_<YYYYmmdd_HHMMSS>_<op8>.json`: one operation, with the user's guide's fields
//!   (`operation_id`, `operation_name`, `client_id`, `techniques`, `tactics`, `status`, …).
//!
//! Each becomes the sidecar's own link or operation document, validated the same way. Its
//! observation number (the external version) is the file's time in *milliseconds*, while the
//! sidecar's observations are microseconds: so a document the sidecar wrote (complete, from
//! Caldera itself) is never replaced by a fallback file, whatever the files' times; a fallback
//! file only fills in a document the index does not have, and of two fallback files for the
//! same document the later one wins. Command output is not indexed (the sidecar's documents
//! never carry it: it can hold client data).

use serde_json::{Value, json};

use crate::document::sanitize::{clean_keyword, clean_text};
use crate::document::types::{LinkId, LinkStatus, OperationId, Tactic, TechniqueId, Timestamp};
use crate::document::{Encoded, MAX_TECHNIQUES, link_doc_id, operation_doc_id};

/// A fallback file's document and a one-line description of it, for the per-file report.
pub struct Parsed {
    pub doc: Encoded,
    pub describes: String,
}

/// Parses either kind; link files are recognised by their content (a `link_id`), not only by
/// their name, so a renamed file is still mapped to what it describes.
pub fn parse(bytes: &[u8], mtime_micros: u64) -> Result<Parsed, String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("fallback file is not JSON: {e}"))?;
    if field(&v, "link_id").is_some() {
        link(&v, mtime_micros)
    } else {
        operation(&v, mtime_micros)
    }
}

/// `purple.<name>`, else the top-level `<name>`; empty strings count as absent.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    [&v["purple"][name], &v[name]]
        .into_iter()
        .find(|x| !x.is_null() && x.as_str() != Some(""))
}

fn text(v: &Value, name: &str) -> Option<String> {
    field(v, name).and_then(Value::as_str).map(str::to_string)
}

/// Caldera and Python write times with or without a zone (`datetime.isoformat()` of a naive
/// UTC time has none): a time without one is UTC.
fn time(raw: Option<String>) -> Option<Timestamp> {
    let raw = raw?;
    Timestamp::parse(&raw)
        .or_else(|_| Timestamp::parse(&format!("{raw}Z")))
        .ok()
}

/// The external version: the file's own time in milliseconds (see the module docs).
fn version(t: Option<Timestamp>, mtime_micros: u64) -> u64 {
    t.map(|t| (t.unix_seconds().max(0) as u64).saturating_mul(1000))
        .filter(|v| *v > 0)
        .unwrap_or(mtime_micros / 1000)
        .max(1)
}

fn base_tags() -> Vec<String> {
    vec!["purple_team".into(), "simulation".into(), "caldera".into()]
}

fn link(v: &Value, mtime_micros: u64) -> Result<Parsed, String> {
    let link_id =
        LinkId::parse(&text(v, "link_id").unwrap_or_default()).map_err(|e| e.to_string())?;
    let op_id = OperationId::parse(&text(v, "operation_id").unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let collect = time(text(v, "execution_time"));
    let finish = time(text(v, "finish_time"));
    let written = time(text(v, "@timestamp"));
    let version = version(finish.or(collect).or(written), mtime_micros);
    let when = collect
        .or(finish)
        .or(written)
        .unwrap_or_else(|| Timestamp::from_unix_micros(version * 1000));
    let technique = text(v, "technique").and_then(|t| TechniqueId::parse(&t).ok());
    let tactic = text(v, "tactic").and_then(|t| Tactic::parse(&t).ok());
    let code = field(v, "status_code").and_then(Value::as_i64);
    let status = code.map(|code| {
        LinkStatus {
            code,
            collected: collect.is_some(),
        }
        .name()
    });
    let outcome = match code {
        Some(0) => Some("success"),
        Some(1 | 124) => Some("failure"),
        _ => None,
    };
    let id = link_doc_id(&link_id);
    let host = text(v, "agent_host").map(|h| clean_keyword(&h, 256));
    let describes = format!(
        "link document {id} ({}, {}, host {})",
        technique.as_ref().map_or("no technique", |t| t.as_str()),
        status.unwrap_or("no status"),
        host.as_deref().unwrap_or("unknown")
    );
    let mut doc = json!({
        "@timestamp": when,
        "timestamp": when,
        "purple_team_exercise": true,
        "tags": base_tags(),
        "operation_id": op_id,
        "link_id": link_id,
        "event": {"kind": "event", "module": "caldera", "dataset": "caldera.link", "id": id,
                  "start": collect, "end": finish, "outcome": outcome},
        "threat": {"framework": "MITRE ATT&CK",
                   "technique": {"id": technique.iter().collect::<Vec<_>>()},
                   "tactic": {"name": tactic.iter().collect::<Vec<_>>()}},
        "process": {},
        "sidecar": {"sequence": version, "observed_at": when, "source": "reference-plugin-fallback"},
    });
    let o = doc.as_object_mut().ok_or("internal: not an object")?;
    let mut put = |k: &str, val: Option<Value>| {
        if let Some(val) = val {
            o.insert(k.to_string(), val);
        }
    };
    put(
        "operation_name",
        text(v, "operation_name").map(|s| json!(clean_text(&s, 512))),
    );
    put(
        "ability_id",
        text(v, "ability_id").map(|s| json!(clean_keyword(&s, 256))),
    );
    put(
        "ability_name",
        text(v, "ability_name").map(|s| json!(clean_text(&s, 512))),
    );
    put("technique_id", technique.as_ref().map(|t| json!(t)));
    put(
        "technique_name",
        text(v, "technique_name").map(|s| json!(clean_text(&s, 512))),
    );
    put("tactic", tactic.as_ref().map(|t| json!(t)));
    put("status", status.map(|s| json!(s)));
    put("status_code", code.map(|c| json!(c)));
    put(
        "paw",
        text(v, "agent_paw").map(|s| json!(clean_keyword(&s, 256))),
    );
    put(
        "executor",
        text(v, "executor").map(|s| json!(clean_keyword(&s, 64))),
    );
    put(
        "platform",
        text(v, "platform").map(|s| json!(clean_keyword(&s, 64))),
    );
    put("collect", collect.map(|t| json!(t)));
    put("finish", finish.map(|t| json!(t)));
    put("host", host.map(|h| json!({"name": h})));
    Ok(Parsed {
        doc: Encoded {
            id,
            version,
            body: serde_json::to_vec(&doc).map_err(|e| e.to_string())?,
        },
        describes,
    })
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// The operation file: the user guide's fields (`timestamp` in older versions of the plugin,
/// `@timestamp` in newer ones).
fn operation(v: &Value, mtime_micros: u64) -> Result<Parsed, String> {
    let op_id = OperationId::parse(&text(v, "operation_id").unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let ts = time(text(v, "timestamp")).or_else(|| time(text(v, "@timestamp")));
    let version = version(ts, mtime_micros);
    let ts = ts.unwrap_or_else(|| Timestamp::from_unix_micros(version * 1000));
    let mut techniques: Vec<TechniqueId> = str_list(field(v, "techniques"))
        .iter()
        .filter_map(|t| TechniqueId::parse(t).ok())
        .collect();
    techniques.sort();
    techniques.dedup();
    let total = techniques.len();
    techniques.truncate(MAX_TECHNIQUES);
    let mut tactics: Vec<Tactic> = str_list(field(v, "tactics"))
        .iter()
        .filter_map(|t| Tactic::parse(t).ok())
        .collect();
    tactics.sort();
    tactics.dedup();
    let mut tags = base_tags();
    for t in str_list(v.get("tags")) {
        let t = clean_keyword(&t, 256);
        if !t.is_empty() && !tags.contains(&t) {
            tags.push(t);
        }
    }
    let id = operation_doc_id(&op_id);
    let status = clean_keyword(&text(v, "status").unwrap_or_else(|| "unknown".into()), 64);
    let describes = format!("operation document {id} ({status}, {total} techniques)");
    let doc = json!({
        "@timestamp": ts,
        "operation_id": op_id,
        "operation_name": clean_text(&text(v, "operation_name").unwrap_or_default(), 512),
        "purple_team_exercise": true,
        "tags": tags,
        "client_id": clean_keyword(&text(v, "client_id").unwrap_or_else(|| "all".into()), 256),
        "timestamp": ts,
        "techniques": techniques,
        "technique_count_total": total,
        "tactics": tactics,
        "severity": clean_keyword(&text(v, "severity").unwrap_or_else(|| "low".into()), 32),
        "auto_close": v["auto_close"].as_bool().unwrap_or(false),
        "agent_count": v["agent_count"].as_u64().unwrap_or(0),
        "status": status,
        "settled": false,
        "event": {"kind": "event", "module": "caldera", "dataset": "caldera.operation", "id": id},
        "threat": {"framework": "MITRE ATT&CK", "technique": {"id": techniques}, "tactic": {"name": tactics}},
        "sidecar": {"sequence": version, "observed_at": ts, "source": "reference-plugin-fallback"},
    });
    Ok(Parsed {
        doc: Encoded {
            id,
            version,
            body: serde_json::to_vec(&doc).map_err(|e| e.to_string())?,
        },
        describes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the reference plugin writes for a link (composed from its field list).
    fn link_file() -> Vec<u8> {
        json!({
            "@timestamp": "2026-11-28T16:02:11.532001Z",
            "purple": {
                "link_id": "bc33df61-d5a5-4845-bb49-1aafd452106c",
                "operation_id": "dbc37644-968f-4c7d-a0de-e3b185ea8b2c",
                "operation_name": "purple-pause-resume-red",
                "technique": "T1033", "technique_name": "System Owner/User Discovery",
                "tactic": "discovery", "ability_id": "c0da588f-79f0-4263-8998-7496b1a40596",
                "ability_name": "Identify active user", "agent_paw": "lktrus", "agent_host": "vm",
                "executor": "sh", "platform": "linux", "status": "success", "status_code": 0,
                "success": true, "detection_status": "pending",
                "execution_time": "2026-11-28T15:41:40.123456", "finish_time": "2026-11-28T15:41:48Z",
                "command_hash": "abc", "output": {"stdout": "root", "stderr": "", "exit_code": "0", "has_output": true}
            },
            "tags": ["purple_team", "caldera", "tl_labs", "link_execution", "purple_T1033"],
            "event": {"kind": "event", "action": "purple-team-simulation", "outcome": "success"},
            "link_id": "bc33df61-d5a5-4845-bb49-1aafd452106c",
            "operation_id": "dbc37644-968f-4c7d-a0de-e3b185ea8b2c",
            "purple_team_exercise": true, "technique": "T1033", "tactic": "discovery",
            "ability_name": "Identify active user", "agent_paw": "lktrus"
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_link_file_becomes_that_link_document() {
        let p = parse(&link_file(), 9_999_999_999_000_000).unwrap();
        assert_eq!(p.doc.id, "link-bc33df61-d5a5-4845-bb49-1aafd452106c");
        // Milliseconds of the finish time: below any observation the sidecar makes (µs).
        assert_eq!(p.doc.version, 1_795_880_508_000);
        let v: Value = serde_json::from_slice(&p.doc.body).unwrap();
        assert_eq!(v["event"]["dataset"], "caldera.link");
        assert_eq!(v["technique_id"], "T1033");
        assert_eq!(v["tactic"], "discovery");
        assert_eq!(v["status"], "success");
        assert_eq!(v["status_code"], 0);
        assert_eq!(v["host"]["name"], "vm");
        assert_eq!(v["paw"], "lktrus");
        assert_eq!(v["operation_id"], "dbc37644-968f-4c7d-a0de-e3b185ea8b2c");
        assert_eq!(v["event"]["start"], "2026-11-28T15:41:40.123Z");
        assert_eq!(v["event"]["end"], "2026-11-28T15:41:48Z");
        assert_eq!(v["threat"]["technique"]["id"], json!(["T1033"]));
        assert!(
            v.get("output").is_none() && v["purple"].is_null(),
            "no output indexed"
        );
        assert!(p.describes.contains("T1033") && p.describes.contains("host vm"));
    }

    #[test]
    fn an_operation_file_without_a_time_uses_the_file_time_in_milliseconds() {
        let f =
            br#"{"operation_id": "a249d6e7-9272-439e-93d1-124e2e915a1c", "status": "finished"}"#;
        let p = parse(f, 1_795_880_508_123_456).unwrap();
        assert_eq!(p.doc.id, "op-a249d6e7-9272-439e-93d1-124e2e915a1c");
        assert_eq!(p.doc.version, 1_795_880_508_123);
        assert!(parse(br#"{"link_id": "../x", "operation_id": "y"}"#, 1).is_err());
    }
}
