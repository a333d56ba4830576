//! The `enroll` command: one-liners on stdout, notes on stderr; bad input exits 2 with the
//! reason on stderr and nothing on stdout.

use std::process::ExitCode;
use std::sync::Arc;

use super::{Request, to_text};
use crate::caldera::client::CalderaClient;
use crate::config::Settings;
use crate::state::Shared;

/// The command-line options, as given.
pub struct Args {
    pub client: String,
    pub platform: String,
    pub executor: Option<String>,
    pub server: Option<String>,
    pub format: String,
}

fn refuse(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("enroll: {msg}");
    ExitCode::from(2)
}

pub async fn run(settings: &Settings, args: Args) -> ExitCode {
    let json = match args.format.as_str() {
        "text" => false,
        "json" => true,
        other => return refuse(format!("--format {other:?}: must be text or json")),
    };
    let req = match Request::parse(
        &args.client,
        &args.platform,
        args.executor.as_deref(),
        args.server.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    let client_map = &settings.documents.client_map;
    // Refuse a bad group before asking Caldera anything.
    if let Err(e) = super::group_for(&req.client, client_map) {
        return refuse(e);
    }
    let info = match CalderaClient::new(&settings.caldera, Arc::new(Shared::default())) {
        Ok(c) => super::fetch(&c).await,
        Err(e) => Err(e),
    };
    match super::prepare(&req, &settings.enroll, client_map, &info) {
        Ok(en) => {
            for n in &en.notes {
                eprintln!("note: {n}");
            }
            if json {
                match serde_json::to_string_pretty(&en) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("enroll: cannot encode the answer: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", to_text(&en));
            }
            ExitCode::SUCCESS
        }
        Err(e) => refuse(e),
    }
}
