//! `caldera-sidecar replay DIR`: puts a spool, a dead-letter directory, or the reference
//! plugin's fallback files back into the index, by hand.
//!
//! Idempotent: every document keeps its `_id` and its observation number as external version,
//! so a document already in the index (or a newer observation of it) answers 409 and is counted
//! as "already present"; nothing is ever duplicated. A file is deleted only once the index
//! acknowledged it (unless `--keep`); refused documents stay where they are, with the reason
//! in the summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use elasticsearch::Elasticsearch;
use serde_json::{Value, json};

use super::retry::{ItemOutcome, backoff};
use super::spool;
use crate::document::Encoded;
use crate::document::sanitize::{clean_keyword, clean_text};
use crate::document::types::{OperationId, Tactic, TechniqueId, Timestamp};

const BATCH: usize = 1000;
const ATTEMPTS: u32 = 6;

#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub indexed: usize,
    pub already_present: usize,
    /// Reason → number of documents refused for it.
    pub rejected: BTreeMap<String, usize>,
    /// Files that are not a spool, dead-letter or fallback file, with why.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Documents still not accepted after every retry (429/5xx).
    pub not_delivered: usize,
    pub deleted: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.rejected.is_empty() && self.unreadable.is_empty() && self.not_delivered == 0
    }
}

/// Turns one file into the document to index, whatever kind of file it is.
pub fn parse_file(name: &str, bytes: Vec<u8>, mtime_micros: u64) -> Result<Encoded, String> {
    // Dead letters are pretty-printed wrappers starting with "failed_at".
    let head = &bytes[..bytes.len().min(64)];
    let is_letter = head.windows(11).any(|w| w == b"\"failed_at\"");
    if is_letter {
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("dead letter is not JSON: {e}"))?;
        let id = v["id"]
            .as_str()
            .ok_or("dead letter without id")?
            .to_string();
        let version = v["version"].as_u64().ok_or("dead letter without version")?;
        let body = match (&v["document"], &v["document_text"]) {
            (Value::Object(_), _) => {
                serde_json::to_vec(&v["document"]).map_err(|e| e.to_string())?
            }
            (_, Value::String(t)) => t.clone().into_bytes(),
            _ => return Err("dead letter without document".into()),
        };
        return Ok(Encoded { id, version, body });
    }
    if let Some((version, id)) = spool::parse_name(name) {
        // A spool file: its name says everything; the content is sent as it is.
        return Ok(Encoded {
            id,
            version,
            body: bytes,
        });
    }
    if name.starts_with("fallback_") {
        return fallback_document(&bytes, mtime_micros);
    }
    // Any other document written by the sidecar carries its id and version.
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    match (v["event"]["id"].as_str(), v["sidecar"]["sequence"].as_u64()) {
        (Some(id), Some(version)) => Ok(Encoded {
            id: id.to_string(),
            version,
            body: bytes,
        }),
        _ => Err(
            "not a sidecar spool, dead-letter or fallback file (no event.id / sidecar.sequence)"
                .into(),
        ),
    }
}

fn str_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// The reference plugin's fallback file: one operation document with the user guide's fields
/// (`operation_id`, `operation_name`, `purple_team_exercise`, `tags`, `client_id`,
/// `timestamp`, `techniques`, `tactics`, `severity`, `auto_close`, `agent_count`, `status`).
/// It becomes the same operation document the sidecar writes, validated the same way; its
/// version is its timestamp, so anything the sidecar observed later wins.
pub fn fallback_document(bytes: &[u8], mtime_micros: u64) -> Result<Encoded, String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("fallback file is not JSON: {e}"))?;
    let op_id =
        OperationId::parse(v["operation_id"].as_str().unwrap_or("")).map_err(|e| e.to_string())?;
    let ts = v["timestamp"].as_str().and_then(|t| {
        Timestamp::parse(t)
            .or_else(|_| Timestamp::parse(&format!("{t}Z")))
            .ok()
    });
    let version = ts
        .map(|t| (t.unix_seconds().max(0) as u64) * 1_000_000)
        .filter(|v| *v > 0)
        .unwrap_or(mtime_micros);
    let ts = ts.unwrap_or_else(|| Timestamp::from_unix_micros(version));
    let mut techniques: Vec<TechniqueId> = str_list(&v["techniques"])
        .iter()
        .filter_map(|t| TechniqueId::parse(t).ok())
        .collect();
    techniques.sort();
    techniques.dedup();
    let total = techniques.len();
    techniques.truncate(crate::document::MAX_TECHNIQUES);
    let mut tactics: Vec<Tactic> = str_list(&v["tactics"])
        .iter()
        .filter_map(|t| Tactic::parse(t).ok())
        .collect();
    tactics.sort();
    tactics.dedup();
    let mut tags = vec![
        "purple_team".to_string(),
        "simulation".into(),
        "caldera".into(),
    ];
    for t in str_list(&v["tags"]) {
        let t = clean_keyword(&t, 256);
        if !t.is_empty() && !tags.contains(&t) {
            tags.push(t);
        }
    }
    let id = crate::document::operation_doc_id(&op_id);
    let doc = json!({
        "@timestamp": ts,
        "operation_id": op_id,
        "operation_name": clean_text(v["operation_name"].as_str().unwrap_or(""), 512),
        "purple_team_exercise": true,
        "tags": tags,
        "client_id": clean_keyword(v["client_id"].as_str().unwrap_or("all"), 256),
        "timestamp": ts,
        "techniques": techniques,
        "technique_count_total": total,
        "tactics": tactics,
        "severity": clean_keyword(v["severity"].as_str().unwrap_or("low"), 32),
        "auto_close": v["auto_close"].as_bool().unwrap_or(false),
        "agent_count": v["agent_count"].as_u64().unwrap_or(0),
        "status": clean_keyword(v["status"].as_str().unwrap_or("unknown"), 64),
        "settled": false,
        "event": {"kind": "event", "module": "caldera", "dataset": "caldera.operation", "id": id},
        "threat": {"framework": "MITRE ATT&CK", "technique": {"id": techniques}, "tactic": {"name": tactics}},
        "sidecar": {"sequence": version, "observed_at": ts, "source": "reference-plugin-fallback"},
    });
    Ok(Encoded {
        id,
        version,
        body: serde_json::to_vec(&doc).map_err(|e| e.to_string())?,
    })
}

/// Lists the JSON files of `dir`, oldest name first.
fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn read_batch(paths: &[PathBuf]) -> Vec<(PathBuf, Result<Encoded, String>)> {
    paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let res = std::fs::read(p)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    let mtime = std::fs::metadata(p)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_micros() as u64)
                        .unwrap_or(1);
                    parse_file(&name, bytes, mtime)
                });
            (p.clone(), res)
        })
        .collect()
}

/// Replays every file of `dir`. `progress(done, total)` is called after each batch.
pub async fn replay_dir(
    es: &Elasticsearch,
    index: &str,
    dir: &Path,
    keep: bool,
    timeout: Duration,
    mut progress: impl FnMut(usize, usize),
) -> Result<Summary, String> {
    let started = Instant::now();
    let files = list(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut summary = Summary {
        files: files.len(),
        ..Summary::default()
    };
    // Read the next batch from disk while the current one is being indexed.
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = tokio::task::spawn_blocking(move || {
        for chunk in files.chunks(BATCH) {
            if tx.blocking_send(read_batch(chunk)).is_err() {
                break;
            }
        }
    });
    let mut done = 0usize;
    while let Some(batch) = rx.recv().await {
        let mut paths = Vec::with_capacity(batch.len());
        let mut docs = Vec::with_capacity(batch.len());
        for (p, r) in batch {
            match r {
                Ok(d) => {
                    paths.push(p);
                    docs.push(d);
                }
                Err(why) => summary.unreadable.push((p, why)),
            }
        }
        let mut pending: Vec<(PathBuf, Encoded)> = paths.into_iter().zip(docs).collect();
        let mut attempt = 0;
        let mut acked = Vec::new();
        while !pending.is_empty() {
            let docs: Vec<Encoded> = pending.iter().map(|(_, d)| d.clone()).collect();
            match super::send_bulk(es, index, &docs, timeout).await {
                Ok(r) => {
                    let mut again = Vec::new();
                    for ((p, d), o) in pending.into_iter().zip(r.outcomes) {
                        match o {
                            ItemOutcome::Done => {
                                summary.indexed += 1;
                                acked.push(p);
                            }
                            ItemOutcome::AlreadyCurrent => {
                                summary.already_present += 1;
                                acked.push(p);
                            }
                            ItemOutcome::Retry(_) => again.push((p, d)),
                            ItemOutcome::Reject(why) => {
                                *summary.rejected.entry(why).or_default() += 1;
                            }
                        }
                    }
                    pending = again;
                }
                Err(e) if attempt + 1 >= ATTEMPTS => {
                    drop(rx);
                    let _ = reader.await;
                    return Err(format!(
                        "Elasticsearch is not taking writes ({}); {} of {} files replayed, the rest are kept",
                        e.message(),
                        summary.indexed + summary.already_present,
                        summary.files
                    ));
                }
                Err(_) => {}
            }
            if pending.is_empty() {
                break;
            }
            attempt += 1;
            if attempt >= ATTEMPTS {
                summary.not_delivered += pending.len();
                break;
            }
            tokio::time::sleep(backoff(
                attempt,
                Duration::from_millis(200),
                Duration::from_secs(5),
            ))
            .await;
        }
        if !keep {
            for p in acked {
                if std::fs::remove_file(&p).is_ok() {
                    summary.deleted += 1;
                }
            }
        }
        done += BATCH.min(summary.files - done);
        progress(done, summary.files);
    }
    let _ = reader.await;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_fallback_becomes_an_operation_document() {
        let file = br#"{"operation_id": "A249D6E7-9272-439e-93d1-124e2e915a1c", "operation_name": "<b>Q4</b> red team",
            "purple_team_exercise": true, "tags": ["purple_team", "client-x"], "client_id": "acme",
            "timestamp": "2026-11-28T15:41:48Z", "techniques": ["T1033", "T1033", "bogus", "T1087.001"],
            "tactics": ["discovery", "Defense Evasion"], "severity": "low", "auto_close": true,
            "agent_count": 1, "status": "finished"}"#;
        let e = parse_file("fallback_20261128154148_a249d6e7.json", file.to_vec(), 1).unwrap();
        assert_eq!(e.id, "op-a249d6e7-9272-439e-93d1-124e2e915a1c");
        assert_eq!(e.version, 1_795_880_508_000_000);
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["techniques"], json!(["T1033", "T1087.001"]));
        assert_eq!(v["tactics"], json!(["defense-evasion", "discovery"]));
        assert_eq!(v["operation_name"], "Q4 red team");
        assert_eq!(v["purple_team_exercise"], true);
        assert_eq!(
            v["tags"],
            json!(["purple_team", "simulation", "caldera", "client-x"])
        );
        assert_eq!(v["event"]["dataset"], "caldera.operation");
        assert!(
            parse_file(
                "fallback_x.json",
                b"{\"operation_id\": \"nope\"}".to_vec(),
                1
            )
            .is_err()
        );
    }

    #[test]
    fn spool_and_dead_letter_files_are_understood() {
        let e = parse_file(&spool::file_name(7, "link-x"), b"{\"a\":1}".to_vec(), 1).unwrap();
        assert_eq!((e.id.as_str(), e.version), ("link-x", 7));
        let letter = br#"{
  "failed_at": "2026-11-28T15:41:48Z",
  "reason": "HTTP 400: mapper_parsing_exception",
  "index": "i",
  "id": "link-y",
  "version": 9,
  "document": {"b": 2}
}"#;
        let e = parse_file(&spool::file_name(9, "link-y"), letter.to_vec(), 1).unwrap();
        assert_eq!((e.id.as_str(), e.version), ("link-y", 9));
        assert_eq!(e.body, b"{\"b\":2}");
        assert!(parse_file("notes.json", b"{}".to_vec(), 1).is_err());
    }
}
