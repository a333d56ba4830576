//! Scenario `throughput`: link documents indexed per second into the single-node server through
//! the sidecar's own sink (`Sink::deliver`, batches of `BULK_MAX_DOCS`, one bulk request in
//! flight as in the daemon), and the same kind of documents sent one index request per document
//! (a plain sequential loop with the same client and external versioning), side by side in one
//! run so the ratio compares like with like.
//!
//! The documents are built beforehand (`docs.rs`), so the figure is the delivery path: bulk body
//! assembly, the request, Elasticsearch's indexing, per-item classification.

use std::sync::Arc;
use std::time::Instant;

use caldera_sidecar::config::{Layered, LoadOptions, Settings};
use caldera_sidecar::document::Encoded;
use caldera_sidecar::sink::{self, Sink};
use caldera_sidecar::state::Shared;
use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::common::{BenchResult, Ctx, Figures, Target, unique_index};
use crate::docs::link_documents_async;

pub fn targets() -> Vec<Target> {
    vec![
        Target::at_least(
            "bulk_docs_per_s",
            5000.0,
            "link documents indexed per second, 2 cores, single node",
        ),
        Target::at_least(
            "bulk_vs_single",
            10.0,
            ">= 10x a one-request-per-document loop",
        ),
    ]
}

/// The sidecar's settings for `index`, with production defaults otherwise (and `--env`).
pub fn settings(es_url: &str, index: &str, dir: &std::path::Path) -> BenchResult<Settings> {
    let env = [
        ("ELK_URL", es_url.to_string()),
        ("ELK_INDEX", index.to_string()),
        ("SPOOL_DIR", dir.join("spool").display().to_string()),
        ("DEAD_LETTER_DIR", dir.join("dead").display().to_string()),
        ("CALDERA_API_KEY", "unused".to_string()),
    ];
    let opts = LoadOptions {
        config_file: Some("/dev/null".into()),
        env_file: Some("/dev/null".into()),
    };
    let overrides = crate::common::EXTRA_ENV
        .get()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let all = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain(overrides.iter().cloned());
    let layered = Layered::load(&opts, all).map_err(|e| format!("settings: {e}"))?;
    Ok(layered.settings().map_err(|e| format!("settings: {e}"))?)
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    let n = ctx.opts.size_or(100_000, 2_000);
    let n_single = if ctx.opts.smoke {
        100.min(n)
    } else {
        (n / 10).clamp(1, 10_000)
    };
    let docs = link_documents_async(n, 1000).await?;
    let bulk_index = unique_index("throughput-bulk");
    let single_index = unique_index("throughput-single");
    let res = measure(ctx, docs, n_single, &bulk_index, &single_index).await;
    ctx.es.cleanup(&bulk_index).await;
    ctx.es.cleanup(&single_index).await;
    res
}

async fn measure(
    ctx: &Ctx,
    docs: Vec<Encoded>,
    n_single: usize,
    bulk_index: &str,
    single_index: &str,
) -> BenchResult<Figures> {
    let n = docs.len();
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let settings = settings(&ctx.es.url, bulk_index, dir.path())?;
    let batch = settings.elastic.bulk_max_docs;
    let es: Elasticsearch =
        sink::elastic::build_client(&settings.elastic).map_err(|e| format!("client: {e}"))?;
    for index in [bulk_index, single_index] {
        sink::elastic::install_template(&es, index)
            .await
            .map_err(|e| format!("template: {}", e.message()))?;
    }
    let single_docs: Vec<Encoded> = docs.iter().take(n_single).cloned().collect();

    // Bulk, through the sink, one request in flight.
    let shared = Arc::new(Shared::default());
    let (unsaved_tx, _unsaved_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sink = Sink::new(es.clone(), &settings, shared.clone(), unsaved_tx)
        .map_err(|e| format!("sink: {e}"))?;
    let started = Instant::now();
    let mut docs = docs;
    while !docs.is_empty() {
        let rest = docs.split_off(batch.min(docs.len()));
        sink.deliver(docs, false).await;
        docs = rest;
    }
    let bulk_secs = started.elapsed().as_secs_f64();
    let indexed = shared.stats.documents_indexed.get();
    if indexed != n as u64 {
        return Err(format!(
            "the sink acknowledged {indexed} of {n} documents (spooled {}, rejected {})",
            shared.stats.documents_spooled.get(),
            shared.stats.documents_rejected.get()
        )
        .into());
    }
    let counted = ctx.es.link_count(bulk_index).await?;
    if counted != n as u64 {
        return Err(format!("the bulk index holds {counted} link documents, want {n}").into());
    }

    // One request per document, same client, same external versioning.
    let started = Instant::now();
    for d in &single_docs {
        // The raw transport, so the body is the same bytes as in the bulk request.
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let query = [
            ("version", d.version.to_string()),
            ("version_type", "external".to_string()),
        ];
        let resp = es
            .send(
                Method::Put,
                &format!("/{single_index}/_doc/{}", d.id),
                headers,
                Some(&query),
                Some(d.body.clone()),
                None,
            )
            .await
            .map_err(|e| format!("single index request: {e}"))?;
        let status = resp.status_code().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("single index request: HTTP {status}: {text}").into());
        }
    }
    let single_secs = started.elapsed().as_secs_f64();
    let counted = ctx.es.link_count(single_index).await?;
    if counted != n_single as u64 {
        return Err(format!(
            "the single-request index holds {counted} link documents, want {n_single}"
        )
        .into());
    }

    let bulk_rate = n as f64 / bulk_secs;
    let single_rate = n_single as f64 / single_secs;
    let mut f = Figures::default();
    f.add("bulk_docs", "bulk: documents", "docs", n as f64);
    f.add("bulk_seconds", "bulk: elapsed", "s", bulk_secs);
    f.add(
        "bulk_docs_per_s",
        "bulk: link documents/s",
        "docs/s",
        bulk_rate,
    );
    f.add(
        "bulk_request_ms",
        format!("bulk: time per request of {batch}"),
        "ms",
        bulk_secs * 1000.0 / n.div_ceil(batch) as f64,
    );
    f.add("single_docs", "single: documents", "docs", n_single as f64);
    f.add(
        "single_docs_per_s",
        "single: link documents/s",
        "docs/s",
        single_rate,
    );
    f.add(
        "single_request_ms",
        "single: time per request",
        "ms",
        single_secs * 1000.0 / n_single as f64,
    );
    f.add(
        "bulk_vs_single",
        "bulk / single (same run)",
        "x",
        bulk_rate / single_rate,
    );
    let avg_bytes =
        single_docs.iter().map(|d| d.body.len()).sum::<usize>() as f64 / n_single.max(1) as f64;
    f.add(
        "doc_bytes",
        "average link document size",
        "bytes",
        avg_bytes,
    );
    f.note(format!(
        "BULK_MAX_DOCS={batch}; documents built beforehand from op A's recorded links \
         (scenarios::op_many_links, 1000 links per operation)"
    ));
    Ok(f)
}
