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
use serde_json::Value;

use super::retry::{ItemOutcome, backoff};
use super::{fallback, spool};
use crate::document::Encoded;

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
    /// Entries not read at all (links, non-regular files, other owners), with why.
    pub refused: Vec<(PathBuf, String)>,
    /// The reference plugin's fallback files, one by one: which document each describes and
    /// what happened to it.
    pub per_file: Vec<(PathBuf, String)>,
    /// Documents still not accepted after every retry (429/5xx).
    pub not_delivered: usize,
    pub deleted: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.rejected.is_empty()
            && self.unreadable.is_empty()
            && self.refused.is_empty()
            && self.not_delivered == 0
    }
}

/// Turns one file into the document to index, whatever kind of file it is.
pub fn parse_file(name: &str, bytes: Vec<u8>, mtime_micros: u64) -> Result<Encoded, String> {
    parse_described(name, bytes, mtime_micros).map(|(d, _)| d)
}

/// As [`parse_file`], with a description of the document for the files reported one by one
/// (the reference plugin's fallback files).
fn parse_described(
    name: &str,
    bytes: Vec<u8>,
    mtime_micros: u64,
) -> Result<(Encoded, Option<String>), String> {
    let plain = |d: Encoded| (d, None);
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
        return Ok(plain(Encoded { id, version, body }));
    }
    if let Some((version, id)) = spool::parse_name(name) {
        // A spool file: its name says everything; the content is sent as it is.
        return Ok(plain(Encoded {
            id,
            version,
            body: bytes,
        }));
    }
    if name.starts_with("fallback_") {
        return fallback::parse(&bytes, mtime_micros).map(|p| (p.doc, Some(p.describes)));
    }
    // Any other document written by the sidecar carries its id and version.
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    match (v["event"]["id"].as_str(), v["sidecar"]["sequence"].as_u64()) {
        (Some(id), Some(version)) => Ok(plain(Encoded {
            id: id.to_string(),
            version,
            body: bytes,
        })),
        _ => Err(
            "not a sidecar spool, dead-letter or fallback file (no event.id / sidecar.sequence)"
                .into(),
        ),
    }
}

/// Lists the JSON files of `dir`, oldest name first, and the entries refused with why: only
/// regular files owned by the user running the replay are read. A symbolic link (to a private
/// file elsewhere, say) or a file someone else planted is never followed or indexed.
fn list(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<Refused>)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut files = Vec::new();
    let mut refused = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        // `symlink_metadata`: the entry itself, never what a link points to.
        match std::fs::symlink_metadata(&p) {
            Err(e) => refused.push((p, format!("cannot inspect: {e}"))),
            Ok(m) if m.file_type().is_symlink() => {
                refused.push((p, "symbolic link: not followed".into()))
            }
            Ok(m) if !m.file_type().is_file() => refused.push((p, "not a regular file".into())),
            Ok(m) if m.uid() != me => refused.push((
                p,
                format!(
                    "owned by uid {}, not by the user running replay (uid {me})",
                    m.uid()
                ),
            )),
            Ok(_) => files.push(p),
        }
    }
    files.sort();
    refused.sort();
    Ok((files, refused))
}

type Read = Result<(Encoded, Option<String>), String>;

/// A directory entry replay would not read, and why.
type Refused = (PathBuf, String);

fn read_batch(paths: &[PathBuf]) -> Vec<(PathBuf, Read)> {
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
                    parse_described(&name, bytes, mtime)
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
    let (files, refused) = list(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut summary = Summary {
        files: files.len(),
        refused,
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
        let mut pending: Vec<(PathBuf, Encoded)> = Vec::with_capacity(batch.len());
        let mut described = std::collections::HashMap::new();
        for (p, r) in batch {
            match r {
                Ok((d, what)) => {
                    if let Some(what) = what {
                        described.insert(p.clone(), what);
                    }
                    pending.push((p, d));
                }
                Err(why) => summary.unreadable.push((p, why)),
            }
        }
        let report = |summary: &mut Summary, p: &PathBuf, done: &str| {
            if let Some(what) = described.get(p) {
                summary
                    .per_file
                    .push((p.clone(), format!("{what}: {done}")));
            }
        };
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
                                report(&mut summary, &p, "indexed");
                                acked.push(p);
                            }
                            ItemOutcome::AlreadyCurrent => {
                                summary.already_present += 1;
                                report(
                                    &mut summary,
                                    &p,
                                    "already present (the index holds a newer or the sidecar's own, complete document; kept)",
                                );
                                acked.push(p);
                            }
                            ItemOutcome::Retry(_) => again.push((p, d)),
                            ItemOutcome::Reject(why) => {
                                report(&mut summary, &p, &format!("refused: {why}"));
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
                for (p, _) in &pending {
                    report(
                        &mut summary,
                        p,
                        "not delivered (Elasticsearch kept refusing with 429/5xx)",
                    );
                }
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
    use serde_json::json;

    #[test]
    fn reference_fallback_becomes_an_operation_document() {
        let file = br#"{"operation_id": "A249D6E7-9272-439e-93d1-124e2e915a1c", "operation_name": "<b>Q4</b> red team",
            "purple_team_exercise": true, "tags": ["purple_team", "client-x"], "client_id": "acme",
            "timestamp": "2026-11-28T15:41:48Z", "techniques": ["T1033", "T1033", "bogus", "T1087.001"],
            "tactics": ["discovery", "Defense Evasion"], "severity": "low", "auto_close": true,
            "agent_count": 1, "status": "finished"}"#;
        let e = parse_file("fallback_20261128154148_a249d6e7.json", file.to_vec(), 1).unwrap();
        assert_eq!(e.id, "op-a249d6e7-9272-439e-93d1-124e2e915a1c");
        // Milliseconds: any observation of the sidecar (microseconds) wins over it.
        assert_eq!(e.version, 1_795_880_508_000);
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
