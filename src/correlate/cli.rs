//! `caldera-sidecar correlate [--operation ID] [--dry-run]`: one pass by hand, printing per
//! alert the link, tier and reason, and what was (or, with `--dry-run`, would be) done.
//! `--dry-run` writes nothing anywhere: no alert, no record, no detection field.

use std::process::ExitCode;
use std::sync::Arc;

use super::source::Selection;
use super::stage::{Line, PassOptions, Stage};
use crate::config::Settings;
use crate::document::types::OperationId;
use crate::state::Shared;

fn print_line(l: &Line) {
    println!(
        "alert {} ({}) rule {:?} -> operation {} link {} {} tier {}: {}; {}{}",
        l.alert_id,
        l.alert_index,
        l.rule,
        l.operation_id,
        l.link_id,
        l.technique.as_deref().unwrap_or("-"),
        l.tier,
        l.reason,
        l.outcome.name(),
        l.detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    );
}

pub async fn run(settings: Settings, operation: Option<String>, dry_run: bool) -> ExitCode {
    let operation = match operation.as_deref().map(OperationId::parse) {
        None => None,
        Some(Ok(id)) => Some(id.as_str().to_string()),
        Some(Err(e)) => {
            eprintln!("--operation: {e}");
            return ExitCode::from(2);
        }
    };
    let stage = match Stage::new(&settings, Arc::new(Shared::default())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if !dry_run && let Err(e) = stage.prepare().await {
        eprintln!("cannot prepare the indices: {e}");
        return ExitCode::FAILURE;
    }
    let opts = PassOptions {
        selection: Selection { operation },
        dry_run,
    };
    match stage.pass(&opts, &mut print_line).await {
        Ok(r) => {
            if let Some(why) = &r.idle {
                println!("{why}");
                return ExitCode::SUCCESS;
            }
            let outcomes: Vec<String> = r
                .outcomes
                .iter()
                .map(|(o, n)| format!("{} {n}", o.name()))
                .collect();
            println!(
                "{}{} links, {} alerts read ({} malformed skipped) in {} requests; matches: tier 1 {}, tier 2 {}, tier 3 {}; {}; {} records, {} link and {} operation documents updated; {} links still waiting for alerts",
                if dry_run { "dry run: " } else { "" },
                r.links,
                r.alerts,
                r.malformed,
                r.alert_requests,
                r.matches[0],
                r.matches[1],
                r.matches[2],
                if outcomes.is_empty() {
                    "no action".to_string()
                } else {
                    outcomes.join(", ")
                },
                r.records,
                r.links_written,
                r.operations_written,
                r.pending
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("correlation failed: {e}");
            ExitCode::FAILURE
        }
    }
}
