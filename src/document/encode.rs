//! A built document as the sink carries it: encoded once, with the sidecar's bookkeeping and the
//! external version that orders observations in the index.

use std::hash::{Hash, Hasher};

use serde::Serialize;

use super::types::{OperationId, Timestamp};

/// A document the sink could not keep anywhere (disk full): the watcher forgets that it sent
/// it, so the next look at its operation sends it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsaved {
    pub id: String,
    pub operation_id: Option<String>,
}

impl Unsaved {
    pub fn of(doc: &Encoded) -> Self {
        Self {
            id: doc.id.clone(),
            operation_id: operation_id_in(&doc.body),
        }
    }
}

/// The `operation_id` a document carries, read from its JSON without parsing all of it (only
/// used on the rare path where a document could not be kept).
pub fn operation_id_in(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = br#""operation_id":""#;
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = body.get(at..at + 36)?;
    let s = std::str::from_utf8(rest).ok()?;
    OperationId::parse(s).ok().map(|id| id.as_str().to_string())
}

/// A document ready for the sink: its `_id`, the external version that orders observations, and
/// its JSON, encoded once and shared by the bulk request, the spool file and replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub id: String,
    pub version: u64,
    pub body: Vec<u8>,
}

/// Serializes `doc` and appends the sidecar's bookkeeping (`sidecar.sequence`, the external
/// version, and `sidecar.observed_at`). Returns the fingerprint of the content *without* the
/// bookkeeping, so an unchanged document can be recognised and not sent again.
pub fn encode<T: Serialize>(
    doc: &T,
    id: String,
    sequence: u64,
) -> Result<(u64, Encoded), serde_json::Error> {
    let mut body = serde_json::to_vec(doc)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let fingerprint = h.finish();
    // `doc` is a JSON object, so the last byte is its closing brace.
    body.pop();
    let observed = Timestamp::from_unix_micros(sequence);
    body.extend_from_slice(
        format!(r#","sidecar":{{"sequence":{sequence},"observed_at":"{observed}"}}}}"#).as_bytes(),
    );
    Ok((
        fingerprint,
        Encoded {
            id,
            version: sequence,
            body,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_id_is_found_in_encoded_documents() {
        let body =
            br#"{"@timestamp":"x","operation_id":"a249d6e7-9272-439e-93d1-124e2e915a1c","y":1}"#;
        assert_eq!(
            operation_id_in(body).as_deref(),
            Some("a249d6e7-9272-439e-93d1-124e2e915a1c")
        );
        assert_eq!(operation_id_in(br#"{"operation_id":"nope"}"#), None);
    }

    #[test]
    fn encode_appends_bookkeeping_and_fingerprints_content() {
        let doc = serde_json::json!({"a": 1});
        let (fp1, e1) = encode(&doc, "op-x".into(), 1_700_000_000_000_000).unwrap();
        let (fp2, e2) = encode(&doc, "op-x".into(), 1_700_000_000_000_001).unwrap();
        assert_eq!(fp1, fp2);
        assert_ne!(e1.body, e2.body);
        let v: serde_json::Value = serde_json::from_slice(&e1.body).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["sidecar"]["sequence"], 1_700_000_000_000_000u64);
        assert_eq!(v["sidecar"]["observed_at"], "2023-11-14T22:13:20Z");
    }
}
