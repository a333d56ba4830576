//! The `caldera-sidecar` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use caldera_sidecar::{app, config, telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "caldera-sidecar",
    version,
    about = "Tags MITRE Caldera operations and techniques in Elasticsearch so purple-team simulations can be filtered out of the SIEM."
)]
struct Cli {
    /// TOML configuration file (default: config/sidecar.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// .env file (default: .env if present).
    #[arg(long, global = true)]
    env_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and print it, secrets masked.
    CheckConfig,
    /// Ask the running sidecar's health endpoint; exit 0 healthy, 1 degraded, 2 unhealthy.
    Status,
    /// Replay a spool, a dead-letter directory or the reference plugin's fallback files into
    /// the index (idempotent; acknowledged files are deleted unless --keep).
    Replay {
        /// Directory holding the JSON files.
        dir: PathBuf,
        /// Keep the files after they are indexed.
        #[arg(long)]
        keep: bool,
    },
    /// Find the SIEM alerts that links caused: print per alert the link, tier, reason and
    /// action; act on the certain ones unless --dry-run.
    Correlate {
        /// Only this operation's links (all of them, even those already settled).
        #[arg(long)]
        operation: Option<String>,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print ready-to-paste one-liners that start a Caldera (sandcat) agent in a client's group.
    Enroll {
        /// Client name (a Caldera group, or a client id of CLIENT_MAP).
        #[arg(long)]
        client: String,
        /// windows, linux or darwin.
        #[arg(long)]
        platform: String,
        /// psh or cmd (windows), sh (linux, darwin); default: every shell of the platform.
        #[arg(long)]
        executor: Option<String>,
        /// Address the client's machines reach Caldera at (default: CALDERA_PUBLIC_URL).
        #[arg(long)]
        server: Option<String>,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// List each client's Caldera agents and whether they are alive; exit 1 when the named
    /// client has no live agent.
    Agents {
        /// Only this client (client id of CLIENT_MAP, or Caldera group).
        #[arg(long)]
        client: Option<String>,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

fn main() -> ExitCode {
    caldera_sidecar::memory::tune_allocator();
    let cli = Cli::parse();
    let opts = config::LoadOptions {
        config_file: cli.config,
        env_file: cli.env_file,
    };
    let (settings, layered) = match config::load(&opts) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("configuration is valid; effective settings:");
            for line in layered.describe() {
                println!("  {line}");
            }
            ExitCode::SUCCESS
        }
        Command::Status => match runtime() {
            Ok(rt) => rt.block_on(caldera_sidecar::server::status::run(&settings)),
            Err(code) => code,
        },
        Command::Replay { dir, keep } => {
            telemetry::init(settings.log_format, "warn");
            match runtime() {
                Ok(rt) => rt.block_on(replay(settings, dir, keep)),
                Err(code) => code,
            }
        }
        Command::Enroll {
            client,
            platform,
            executor,
            server,
            format,
        } => {
            let args = caldera_sidecar::enroll::cli::Args {
                client,
                platform,
                executor,
                server,
                format,
            };
            match runtime() {
                Ok(rt) => rt.block_on(caldera_sidecar::enroll::cli::run(&settings, args)),
                Err(code) => code,
            }
        }
        Command::Agents { client, format } => match runtime() {
            Ok(rt) => rt.block_on(caldera_sidecar::agents::cli::run(
                &settings, client, &format,
            )),
            Err(code) => code,
        },
        Command::Correlate { operation, dry_run } => {
            telemetry::init(settings.log_format, "warn");
            match runtime() {
                Ok(rt) => rt.block_on(caldera_sidecar::correlate::cli::run(
                    settings, operation, dry_run,
                )),
                Err(code) => code,
            }
        }
        Command::Run => {
            telemetry::init(settings.log_format, &settings.log_level);
            match runtime() {
                Ok(rt) => rt.block_on(run(settings)),
                Err(code) => code,
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

async fn run(settings: config::Settings) -> ExitCode {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        caldera = %settings.caldera.url,
        index = %settings.elastic.index,
        "caldera-sidecar starting"
    );
    let mut running = match app::start(settings).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    // A dead stage ends the process with a non-zero code (health already says why), so
    // systemd's Restart=on-failure starts a fresh one.
    let failure = tokio::select! {
        _ = wait_for_signal() => None,
        why = running.failed() => Some(why),
    };
    match &failure {
        None => tracing::info!("shutting down: stopping intake, flushing documents"),
        Some(why) => {
            tracing::error!(error = %why, "a pipeline stage died: flushing what is in flight, then exiting with code 1")
        }
    }
    let clean = running.shutdown(Duration::from_secs(30)).await;
    if clean {
        tracing::info!("stopped cleanly: every document is indexed or spooled");
    } else {
        tracing::error!(
            "shutdown did not end cleanly within 30 s: documents in flight may be neither indexed nor spooled"
        );
    }
    if clean && failure.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn replay(settings: config::Settings, dir: PathBuf, keep: bool) -> ExitCode {
    use caldera_sidecar::sink::{elastic, replay};
    let es = match elastic::build_client(&settings.elastic) {
        Ok(es) => es,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let index = settings.elastic.index.clone();
    if let Err(e) = elastic::install_template(&es, &index).await {
        eprintln!("warning: index template not installed: {}", e.message());
    }
    eprintln!("replaying {} into index {index}", dir.display());
    let res = replay::replay_dir(
        &es,
        &index,
        &dir,
        keep,
        settings.elastic.timeout,
        |done, total| {
            eprint!("\r{done}/{total} files");
        },
    )
    .await;
    eprintln!();
    let _ = elastic::refresh(&es, &index).await;
    match res {
        Ok(s) => {
            println!(
                "replayed {} files in {:.1} s: {} indexed, {} already present, {} rejected, {} unreadable, {} refused, {} not delivered, {} files deleted",
                s.files,
                s.elapsed.as_secs_f64(),
                s.indexed,
                s.already_present,
                s.rejected.values().sum::<usize>(),
                s.unreadable.len(),
                s.refused.len(),
                s.not_delivered,
                s.deleted
            );
            for (why, n) in &s.rejected {
                println!("  rejected {n}: {why}");
            }
            for (p, why) in s.unreadable.iter().take(20) {
                println!("  unreadable {}: {why}", p.display());
            }
            for (p, what) in &s.per_file {
                println!("  {}: {what}", p.display());
            }
            for (p, why) in &s.refused {
                println!("  refused {}: {why}", p.display());
            }
            if s.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("replay stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
