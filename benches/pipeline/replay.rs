//! Scenario `replay`: `caldera-sidecar replay DIR` of a spool of 100,000 link documents, end to
//! end (process start to exit), then the index count is checked.
//!
//! The spool is written here following the spool's contract: one file per document, named
//! `<20-digit zero-padded version>-<document id>.json`, holding exactly the bytes
//! `document::encode` produced (which carry `event.id` and `sidecar.sequence`). The documents are
//! realistic link documents (op A's recorded links, fresh ids, built by the sidecar's own code).
//! The index template is installed first, as the daemon would have done.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caldera_sidecar::sink;

use crate::common::{BIN, BenchError, BenchResult, Ctx, Figures, Target, unique_index};
use crate::docs::link_documents_async;
use crate::throughput::settings;

pub fn targets() -> Vec<Target> {
    vec![Target::at_most(
        "replay_seconds",
        30.0,
        "spool replay of 100,000 documents",
    )]
}

/// Whether this build has the `replay` subcommand.
fn has_replay() -> bool {
    Command::new(BIN)
        .arg("--help")
        .env_clear()
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim_start().starts_with("replay"))
        })
        .unwrap_or(false)
}

pub async fn run(ctx: &Ctx) -> BenchResult<Figures> {
    if !has_replay() {
        return Err(BenchError::Skipped(
            "`caldera-sidecar replay` does not exist in this build (see `caldera-sidecar --help`)"
                .into(),
        ));
    }
    let index = unique_index("replay");
    let res = measure(ctx, &index).await;
    ctx.es.cleanup(&index).await;
    res
}

async fn measure(ctx: &Ctx, index: &str) -> BenchResult<Figures> {
    let n = ctx.opts.size_or(100_000, 1_000);
    let docs = link_documents_async(n, 1000).await?;
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).map_err(|e| format!("spool dir: {e}"))?;
    let bytes: usize = docs.iter().map(|d| d.body.len()).sum();
    let spool2 = spool.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        for d in &docs {
            let name = format!("{:020}-{}.json", d.version, d.id);
            std::fs::write(spool2.join(name), &d.body).map_err(|e| format!("spool file: {e}"))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("spool writer panicked: {e}"))??;

    let s = settings(&ctx.es.url, index, dir.path())?;
    let es = sink::elastic::build_client(&s.elastic).map_err(|e| format!("client: {e}"))?;
    sink::elastic::install_template(&es, index)
        .await
        .map_err(|e| format!("template: {}", e.message()))?;

    let workdir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let timeout = Duration::from_secs(120 + (n / 500) as u64);
    let started = Instant::now();
    let child = Command::new(BIN)
        .arg("replay")
        .arg(&spool)
        .current_dir(workdir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ELK_URL", &ctx.es.url)
        .env("ELK_INDEX", index)
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {BIN} replay: {e}"))?;
    let out = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .map_err(|_| format!("replay did not finish within {timeout:?}"))?
    .map_err(|e| format!("replay waiter panicked: {e}"))?
    .map_err(|e| format!("replay: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(format!(
            "replay exited with {}:\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        )
        .into());
    }
    let counted = ctx.es.link_count(index).await?;
    if counted != n as u64 {
        return Err(format!(
            "after replay the index holds {counted} link documents, want {n}\nstdout: {stdout}\nstderr: {stderr}"
        )
        .into());
    }
    let left = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    let mut f = Figures::default();
    f.add("documents", "spooled link documents", "docs", n as f64);
    f.add("spool_mb", "spool size", "MB", bytes as f64 / 1e6);
    f.add("replay_seconds", "replay, process start to exit", "s", secs);
    f.add(
        "replay_docs_per_s",
        "replay rate",
        "docs/s",
        n as f64 / secs,
    );
    f.add("files_left", "files left in the spool", "n", left as f64);
    // Progress lines ("1000/100000 files", rewritten with \r) are left out.
    let summary: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .flat_map(|l| l.split('\r'))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !(l.ends_with(" files") && l.contains('/')))
        .collect();
    f.detail.insert("output".into(), serde_json::json!(summary));
    f.note(format!("replay printed: {}", summary.join(" | ")));
    Ok(f)
}
