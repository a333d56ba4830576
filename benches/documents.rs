//! Micro benchmark of the per-document CPU work the watcher does on every fetch of an operation
//! that changed, measured on the recorded operation A (26 links, `operation_finished.json`):
//! `decode` (the operation's own fields; its links and agents stay borrowed raw JSON slices),
//! `build_sanitize` (each link decoded from its slice into a small struct, then the documents
//! built through the validating types), `encode` (JSON + fingerprint + bookkeeping of the 26
//! link documents and the operation document), and the three together.
//!
//! Why: the pipeline benchmark (`benches/pipeline.rs`, scenario `cpu`) measures the whole
//! daemon's CPU per link document; this one says how much of it is the pure document work, with
//! criterion's statistics, so a regression in `document::build`/`encode` shows up on its own.
//!
//! `one_changed` is the common poll of a running operation: the same 26 links decoded and
//! counted, but only one link document built and encoded (the others are unchanged).
//!
//! Run: `cargo bench --bench documents`. Throughput is in link documents per second; divide a
//! time by 26 for the cost per link. Under `cargo test --benches` criterion runs every
//! benchmark once as a smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use caldera_sidecar::caldera::model::Operation;
use caldera_sidecar::document::types::Timestamp;
use caldera_sidecar::document::{self, Built, DocSettings};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Operation A as Caldera sends it on the wire (compact JSON, ~102 KB).
fn op_a_bytes() -> Vec<u8> {
    serde_json::to_vec(&support::scenarios::op_a_finished()).expect("op A re-encodes")
}

fn decode(bytes: &[u8]) -> Operation<'_> {
    serde_json::from_slice(bytes).expect("op A decodes as an Operation")
}

fn build(op: Operation<'_>, settings: &DocSettings) -> Built {
    let finish = Timestamp::parse("2026-11-28T15:45:47Z").expect("valid timestamp");
    document::build(op, Some(finish), false, Timestamp::now(), settings).expect("op A builds")
}

/// Encodes every link document and the operation document, as the watcher does on each fetch.
fn encode_all(built: &Built, sequence: &mut u64) -> usize {
    let mut bytes = 0;
    for link in &built.links {
        *sequence += 1;
        let (_, enc) =
            document::encode(link, link.event.id.clone(), *sequence).expect("link doc encodes");
        bytes += enc.body.len();
    }
    *sequence += 1;
    let (_, enc) = document::encode(
        &built.operation,
        built.operation.event.id.clone(),
        *sequence,
    )
    .expect("operation doc encodes");
    bytes + enc.body.len()
}

fn documents(c: &mut Criterion) {
    let bytes = op_a_bytes();
    let settings = DocSettings::default();
    let links = decode(&bytes).chain.map_or(0, |c| c.len()) as u64;
    let mut sequence: u64 = 1_800_000_000_000_000;

    let mut g = c.benchmark_group("op_a");
    g.throughput(Throughput::Elements(links));
    g.bench_function("decode", |b| b.iter(|| decode(black_box(&bytes))));
    g.bench_function("build_sanitize", |b| {
        b.iter_batched(
            || decode(&bytes),
            |op| build(op, &settings),
            BatchSize::SmallInput,
        )
    });
    let built = build(decode(&bytes), &settings);
    g.bench_function("encode", |b| {
        b.iter(|| encode_all(black_box(&built), &mut sequence))
    });
    g.bench_function("decode_build_encode", |b| {
        b.iter(|| {
            let built = build(decode(black_box(&bytes)), &settings);
            encode_all(&built, &mut sequence)
        })
    });
    g.bench_function("decode_build_encode_one_changed", |b| {
        b.iter(|| {
            let op = decode(black_box(&bytes));
            let finish = Timestamp::parse("2026-11-28T15:45:47Z").expect("valid timestamp");
            let mut first = true;
            let mut wanted = |_: &_, _: &str| std::mem::take(&mut first);
            let built = document::build_with(
                op,
                Some(finish),
                false,
                Timestamp::now(),
                &settings,
                &mut wanted,
            )
            .expect("op A builds");
            assert_eq!(built.links.len(), 1);
            encode_all(&built, &mut sequence)
        })
    });
    g.finish();
}

criterion_group!(benches, documents);

criterion_main!(benches);
