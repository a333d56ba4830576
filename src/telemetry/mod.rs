//! Logging, set up in one place: human-readable text by default, JSON lines for log shippers.
//!
//! Three rules keep the log safe to ship anywhere:
//! * Dependencies never log below `warn`, whatever `LOG_LEVEL`/`RUST_LOG` say, and the cookie
//!   library never logs at all: at debug level `cookie_store` prints every `Set-Cookie` it
//!   stores, which includes Caldera's `API_SESSION` (full API access), and the HTTP libraries
//!   print headers and URLs at trace level. Only the sidecar's own events follow the configured
//!   level ([`filter`]).
//! * No line is longer than [`capped::MAX_LINE_BYTES`]: a hostile answer that ends up in an
//!   error message cannot turn one log line into megabytes ([`capped`]).
//! * Colour codes only when stderr is a terminal: a redirected log or the journal gets plain
//!   text.

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

pub mod capped;

pub use capped::cap_text;

/// The crate's own log target prefix (module paths start with it).
const OWN_TARGET: &str = "caldera_sidecar";

/// Targets that are never logged, at any level: they print cookies (Caldera's session).
const SILENCED: &[&str] = &["cookie_store", "cookie"];

/// Whether an event passes the dependency rule (the configured level is checked separately).
pub fn dependency_allows(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    if is_under(target, OWN_TARGET) {
        return true;
    }
    if SILENCED.iter().any(|s| is_under(target, s)) {
        return false;
    }
    *meta.level() <= Level::WARN
}

/// `target` is `prefix` or one of its modules (`prefix::…`).
fn is_under(target: &str, prefix: &str) -> bool {
    target == prefix
        || target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The configured filter: `RUST_LOG` wins over `level` when set.
fn configured(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. Logs go to stderr so stdout stays clean for command output
/// (`check-config`, `replay`).
pub fn init(format: LogFormat, level: &str) {
    let ansi = std::io::stderr().is_terminal();
    let filter = configured(level).and(filter_fn(dependency_allows));
    let layer = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_writer(capped::Stderr { json: true })
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_ansi(ansi)
            .with_target(false)
            .with_writer(capped::Stderr { json: false })
            .with_filter(filter)
            .boxed(),
    };
    // `try_init` also routes `log` records (the cookie library uses `log`) through the same
    // filter. A second init (tests that start the app twice) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    struct Cs;
    impl tracing::callsite::Callsite for Cs {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
    static CS: Cs = Cs;

    fn meta(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "e",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&CS)),
            Kind::EVENT,
        )
    }

    #[test]
    fn dependencies_stay_at_warn_and_cookies_are_never_logged() {
        assert!(dependency_allows(&meta(
            "caldera_sidecar::caldera::client",
            Level::TRACE
        )));
        assert!(dependency_allows(&meta("caldera_sidecar", Level::DEBUG)));
        assert!(!dependency_allows(&meta(
            "cookie_store::cookie_store",
            Level::DEBUG
        )));
        assert!(!dependency_allows(&meta("cookie_store", Level::ERROR)));
        assert!(!dependency_allows(&meta("reqwest::connect", Level::DEBUG)));
        assert!(!dependency_allows(&meta("h2::codec", Level::TRACE)));
        assert!(dependency_allows(&meta("hyper_util::client", Level::WARN)));
        // A crate whose name merely starts like ours is a dependency.
        assert!(!dependency_allows(&meta(
            "caldera_sidecar_extra",
            Level::DEBUG
        )));
    }
}
