//! The `agents` command: each client's agents as a table (or JSON); exit 1 when the named
//! client has no live agent, 2 on bad input or when Caldera cannot be read.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use super::view::{rows, to_text};
use super::watch::{read_agents, read_untrusted_timer};
use crate::caldera::client::CalderaClient;
use crate::config::Settings;
use crate::enroll::names::Identifier;
use crate::state::Shared;

pub async fn run(settings: &Settings, client: Option<String>, format: &str) -> ExitCode {
    let json = match format {
        "text" => false,
        "json" => true,
        other => {
            eprintln!("agents: --format {other:?}: must be text or json");
            return ExitCode::from(2);
        }
    };
    let client = match client.as_deref().map(|c| Identifier::parse("client", c)) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            eprintln!("agents: {e}");
            return ExitCode::from(2);
        }
    };
    let caldera = match CalderaClient::new(&settings.caldera, Arc::new(Shared::default())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agents: {e}");
            return ExitCode::from(2);
        }
    };
    let timer = match read_untrusted_timer(&caldera).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "note: agents.untrusted_timer not read ({e}); Caldera's default {} s is assumed",
                super::DEFAULT_UNTRUSTED_TIMER
            );
            super::DEFAULT_UNTRUSTED_TIMER
        }
    };
    let (agents, skipped) = match read_agents(&caldera).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("agents: Caldera's agents could not be read: {e}");
            return ExitCode::from(2);
        }
    };
    if skipped > 0 {
        eprintln!(
            "note: {skipped} agents in Caldera's answer could not be decoded and are not shown"
        );
    }
    let map = &settings.documents.client_map;
    let mut shown = rows(&agents, SystemTime::now(), timer, map, None);
    if let Some(c) = &client {
        // The client id, or the Caldera group itself.
        shown.retain(|r| r.client == c.as_str() || r.group == c.as_str());
    }
    if json {
        match serde_json::to_string_pretty(&shown) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("agents: cannot encode the answer: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if shown.is_empty() {
        eprintln!("no agents");
    } else {
        print!("{}", to_text(&shown));
    }
    match &client {
        Some(c) if !shown.iter().any(|r| r.alive) => {
            eprintln!(
                "client {c} has no live agent ({} known); enroll one with: caldera-sidecar enroll --client {c} --platform …",
                shown.len()
            );
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}
