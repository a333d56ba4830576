//! Dead letters: documents Elasticsearch refused for good (a 4xx other than 409/429, e.g. a
//! mapping conflict). Retrying them cannot help, so each is written once, with the reason,
//! for a person to look at and, after fixing the cause, to replay with `caldera-sidecar replay`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::value::RawValue;

use super::spool::file_name;
use crate::document::Encoded;
use crate::document::types::Timestamp;

#[derive(Serialize)]
struct Letter<'a> {
    failed_at: String,
    reason: &'a str,
    index: &'a str,
    id: &'a str,
    version: u64,
    /// The document exactly as it was sent (kept verbatim, even if it is not valid JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    document_text: Option<String>,
}

/// Writes one dead letter atomically; returns its path.
pub fn write(dir: &Path, index: &str, doc: &Encoded, reason: &str) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let raw: Option<&RawValue> = std::str::from_utf8(&doc.body)
        .ok()
        .and_then(|s| serde_json::from_str(s).ok());
    let letter = Letter {
        failed_at: Timestamp::now().to_string(),
        reason,
        index,
        id: &doc.id,
        version: doc.version,
        document: raw,
        document_text: raw
            .is_none()
            .then(|| String::from_utf8_lossy(&doc.body).into_owned()),
    };
    let bytes = serde_json::to_vec_pretty(&letter).map_err(io::Error::other)?;
    let path = dir.join(file_name(doc.version, &doc.id));
    let tmp = dir.join(format!("{}.tmp", file_name(doc.version, &doc.id)));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map(|_| path)
}

/// Number of dead letters in `dir` (0 if it does not exist).
pub fn count(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count() as u64
        })
        .unwrap_or(0)
}
