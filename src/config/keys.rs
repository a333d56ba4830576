//! The settings' names, defaults and one-line help. The core table is here; a capability with
//! settings of its own keeps its table beside its code and lists it in [`TABLES`], so adding a
//! feature does not mean editing one long list.

/// One setting: its environment name, its default and a line of help.
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) default: &'static str,
    pub(crate) secret: bool,
    pub(crate) help: &'static str,
}

pub(crate) const fn key(name: &'static str, default: &'static str, help: &'static str) -> Key {
    Key {
        name,
        default,
        secret: false,
        help,
    }
}

pub(crate) const fn secret(name: &'static str, help: &'static str) -> Key {
    Key {
        name,
        default: "",
        secret: true,
        help,
    }
}

/// Every setting, its default and a one-line description (the README table is built from this).
const KEYS: &[Key] = &[
    key("CALDERA_URL", "http://localhost:8888", "Caldera base URL"),
    secret(
        "CALDERA_API_KEY",
        "Caldera red API key (KEY header); used when no user/password is set",
    ),
    key(
        "CALDERA_USER",
        "",
        "Caldera user for a session login (preferred: ~150x cheaper for Caldera than KEY)",
    ),
    secret("CALDERA_PASSWORD", "password of CALDERA_USER"),
    key(
        "CALDERA_TIMEOUT",
        "10",
        "seconds before a Caldera request is abandoned",
    ),
    key(
        "CALDERA_CA_CERT",
        "",
        "PEM file of CA certificates trusted for an https CALDERA_URL, besides the built-in roots",
    ),
    key(
        "CALDERA_MAX_BODY_MB",
        "64",
        "largest Caldera answer read, in MB after decompression (fractions allowed)",
    ),
    key(
        "POLL_INTERVAL",
        "2",
        "seconds between polls while an operation is active",
    ),
    key(
        "POLL_IDLE_INTERVAL",
        "15",
        "seconds between polls while nothing is active",
    ),
    key(
        "KEY_MIN_POLL_INTERVAL",
        "5",
        "floor for POLL_INTERVAL when only the KEY header is available",
    ),
    key(
        "SETTLE_GRACE",
        "30",
        "seconds a closed operation must stay complete before it is settled",
    ),
    key(
        "SETTLE_WINDOW",
        "600",
        "seconds a closed but incomplete operation is re-checked at the fast rate",
    ),
    key(
        "ELK_URL",
        "http://localhost:9200",
        "Elasticsearch URL(s), comma-separated",
    ),
    key("ELK_INDEX", "purple-team-logs", "index name"),
    secret("ELK_API_KEY", "Elasticsearch API key (base64 id:key)"),
    key(
        "ELK_VERIFY_SSL",
        "true",
        "verify Elasticsearch TLS certificates",
    ),
    key(
        "ELK_CA_CERT",
        "",
        "PEM file of CA certificates trusted for Elasticsearch, besides the built-in roots",
    ),
    key(
        "ELK_CONNECTION_TIMEOUT",
        "10",
        "seconds before an Elasticsearch request is abandoned",
    ),
    key(
        "ELK_MAX_RETRIES",
        "3",
        "retries of a failed bulk item before it is spooled",
    ),
    key("BULK_MAX_DOCS", "1000", "documents per bulk request"),
    key(
        "BREAKER_FAILURES",
        "5",
        "consecutive Elasticsearch failures that open the circuit breaker",
    ),
    key(
        "BREAKER_COOLDOWN",
        "5",
        "seconds before the first probe of an open breaker (doubles per failed probe)",
    ),
    key(
        "BREAKER_MAX_COOLDOWN",
        "120",
        "cap in seconds of the breaker's cooldown",
    ),
    key(
        "BULK_FLUSH_MS",
        "50",
        "milliseconds a partial bulk waits for more documents",
    ),
    key("SPOOL_DIR", "spool", "durable spool directory"),
    key(
        "DEAD_LETTER_DIR",
        "dead-letter",
        "documents the index refused, with the reason",
    ),
    key(
        "SPOOL_MAX_MB",
        "1024",
        "spool size cap in MB (fractions allowed)",
    ),
    key(
        "HEALTH_BIND",
        "127.0.0.1:8889",
        "address of the health/metrics server",
    ),
    key("LOG_FORMAT", "text", "text or json"),
    key("LOG_LEVEL", "info", "tracing filter (RUST_LOG syntax)"),
    key(
        "MEMORY_WARNING_GB",
        "1",
        "degraded below this much available memory",
    ),
    key(
        "MEMORY_CRITICAL_GB",
        "0.25",
        "unhealthy below this much available memory",
    ),
    key(
        "DISK_WARNING_GB",
        "5",
        "degraded below this much free disk at the spool",
    ),
    key(
        "DISK_CRITICAL_GB",
        "1",
        "unhealthy below this; spooling stops",
    ),
    key(
        "ENABLE_API_AUTH",
        "false",
        "require an API key on the HTTP endpoints",
    ),
    key(
        "API_KEY_HEADER",
        "X-API-Key",
        "header carrying the HTTP API key",
    ),
    secret("API_KEY", "the HTTP API key"),
    key(
        "MAX_REQUESTS_PER_MINUTE",
        "600",
        "per-client rate limit of the HTTP endpoints",
    ),
    key("TAGS", "", "extra tags on every document, comma-separated"),
    key("SEVERITY", "low", "severity on every document"),
    key(
        "CLIENT_MAP",
        "",
        "Caldera group to client id, e.g. red=acme,blue=globex",
    ),
    key(
        "INCLUDE_COMMAND",
        "true",
        "index the executed command (process.command_line)",
    ),
    key(
        "COMMAND_MAX_CHARS",
        "2048",
        "truncate commands to this many characters",
    ),
];

/// Every key table: the core one, then each capability's.
pub(crate) const TABLES: &[&[Key]] = &[
    KEYS,
    crate::enroll::KEYS,
    crate::agents::KEYS,
    crate::correlate::settings::KEYS,
    crate::caldera::output::KEYS,
    crate::report::settings::KEYS,
    crate::caldera::intake::KEYS,
];

/// All keys, in table order.
pub(crate) fn all() -> impl Iterator<Item = &'static Key> {
    TABLES.iter().flat_map(|t| t.iter())
}

pub(crate) fn find_key(name: &str) -> Option<&'static Key> {
    let upper = name.to_ascii_uppercase();
    all().find(|k| k.name == upper)
}

/// The settings table for the README: name, default, description.
pub fn reference_table() -> String {
    let mut out = String::from("| setting | default | meaning |\n|---|---|---|\n");
    for k in all() {
        let d = match (k.secret, k.default) {
            (true, _) => "(secret)".to_string(),
            (false, "") => "(none)".to_string(),
            (false, d) => format!("`{d}`"),
        };
        out.push_str(&format!("| `{}` | {} | {} |\n", k.name, d, k.help));
    }
    out
}
