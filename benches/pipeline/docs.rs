//! Realistic link documents for the scenarios that feed Elasticsearch directly (throughput,
//! replay): op A's recorded links cloned with fresh ids (`scenarios::op_many_links`), turned
//! into documents by the sidecar's own `document::build` + `encode` — exactly the bytes the
//! daemon sends and spools.

use caldera_sidecar::caldera::model::Operation;
use caldera_sidecar::document::types::Timestamp;
use caldera_sidecar::document::{self, DocSettings, Encoded};

use crate::common::{BenchResult, now_micros};
use crate::support::scenarios;

/// `n` link documents from operations of `per_op` links each, with versions (observation
/// numbers) growing from the current time in microseconds.
pub fn link_documents(n: usize, per_op: usize) -> BenchResult<Vec<Encoded>> {
    let settings = DocSettings::default();
    let mut out = Vec::with_capacity(n);
    let mut sequence = now_micros();
    let mut op_no = 0;
    while out.len() < n {
        op_no += 1;
        let links = per_op.min(n - out.len());
        let id = scenarios::new_uuid();
        let value = scenarios::op_many_links(&id, &format!("bench-op-{op_no}"), links);
        let bytes = serde_json::to_vec(&value).map_err(|e| format!("generated op encodes: {e}"))?;
        let op: Operation =
            serde_json::from_slice(&bytes).map_err(|e| format!("generated op decodes: {e}"))?;
        let built = document::build(op, None, false, Timestamp::now(), &settings)
            .map_err(|e| format!("generated op builds: {e}"))?;
        for link in &built.links {
            sequence += 1;
            let (_, enc) = document::encode(link, link.event.id.clone(), sequence)
                .map_err(|e| format!("link document encodes: {e}"))?;
            out.push(enc);
        }
    }
    Ok(out)
}

/// The same, on a blocking thread (generation takes a while for 100,000 documents).
pub async fn link_documents_async(n: usize, per_op: usize) -> BenchResult<Vec<Encoded>> {
    tokio::task::spawn_blocking(move || link_documents(n, per_op))
        .await
        .map_err(|e| format!("document generation panicked: {e}"))?
}
