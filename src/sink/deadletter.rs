//! Dead letters: documents Elasticsearch refused for good (a 4xx other than 409/429, e.g. a
//! mapping conflict). Retrying them cannot help, so each is written once, with the reason,
//! for a person to look at and, after fixing the cause, to replay with `caldera-sidecar replay`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::value::RawValue;

use super::durable::{fsync_dir, private_dir, write_durably};
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

/// Writes one dead letter atomically and durably; returns its path.
pub fn write(dir: &Path, index: &str, doc: &Encoded, reason: &str) -> io::Result<PathBuf> {
    let mut written = write_all(dir, index, [(doc, reason)]);
    written
        .pop()
        .unwrap_or_else(|| Err(io::Error::other("no dead letter written")))
}

/// Writes several dead letters, each atomically, with one directory fsync for all of them
/// (blocking: call it off the async runtime). One result per letter, in order; a failed
/// directory fsync fails them all, since none is durable then.
pub fn write_all<'a>(
    dir: &Path,
    index: &str,
    letters: impl IntoIterator<Item = (&'a Encoded, &'a str)>,
) -> Vec<io::Result<PathBuf>> {
    let letters: Vec<_> = letters.into_iter().collect();
    if let Err(e) = private_dir(dir) {
        return letters
            .iter()
            .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
            .collect();
    }
    let mut out: Vec<io::Result<PathBuf>> = letters
        .iter()
        .map(|(doc, reason)| write_one(dir, index, doc, reason))
        .collect();
    if out.iter().any(Result::is_ok)
        && let Err(e) = fsync_dir(dir)
    {
        for r in out.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(io::Error::new(
                e.kind(),
                format!("directory fsync failed: {e}"),
            ));
        }
    }
    out
}

fn write_one(dir: &Path, index: &str, doc: &Encoded, reason: &str) -> io::Result<PathBuf> {
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
    let name = file_name(doc.version, &doc.id);
    write_durably(dir, &name, &bytes)?;
    Ok(dir.join(name))
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
