//! Layered configuration: built-in defaults < `config/sidecar.toml` (or `--config`) < `.env` <
//! process environment.
//!
//! Every setting has one name, the environment-variable name from the user's guide (`ELK_URL`…);
//! the TOML file uses the same names in any case (`elk_url = "…"`). Values are parsed into typed
//! settings once, at start-up: a bad value names its key and what is wrong with it, and the
//! process exits with code 2 before doing anything. Secrets live in [`Secret`], whose `Debug` and
//! `Display` never show the value.

mod envfile;
pub(crate) mod keys;
mod sources;
pub(crate) mod values;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::document::DocSettings;

pub use keys::reference_table;
use sources::{read_dotenv, read_toml};
pub use values::{CaBundle, ConfigError, Secret, redact_url};
pub(crate) use values::{
    boolean, ca_bundle, err, float, gb, int, list, parse_url, path, secs, secs_allow_zero,
    url_credential, validate_index,
};

#[derive(Debug, Clone)]
pub enum CalderaAuth {
    /// Log in once with `POST /enter`, reuse the session cookie; `KEY` only as a fallback.
    Session {
        user: String,
        password: Secret,
        key: Option<Secret>,
    },
    Key(Secret),
    /// No credentials: every call will be refused; health says so.
    None,
}

#[derive(Debug, Clone)]
pub struct CalderaSettings {
    pub url: Url,
    pub auth: CalderaAuth,
    pub timeout: Duration,
    pub poll_interval: Duration,
    pub idle_interval: Duration,
    pub settle_grace: Duration,
    pub settle_window: Duration,
    /// Extra trust anchors for an https Caldera (`CALDERA_CA_CERT`).
    pub ca_cert: Option<CaBundle>,
    /// Largest answer read from Caldera, after decompression (`CALDERA_MAX_BODY_MB`).
    pub max_body_bytes: usize,
    /// `INCLUDE_OUTPUT`: fetch finished links' output into their documents.
    pub output: crate::caldera::output::OutputSettings,
}

#[derive(Debug, Clone)]
pub struct ElasticSettings {
    pub urls: Vec<Url>,
    pub index: String,
    pub api_key: Option<Secret>,
    /// Basic credentials taken out of an `ELK_URL` like `https://user:pass@host:9200`.
    pub basic: Option<(String, Secret)>,
    pub verify_ssl: bool,
    /// Extra trust anchors for Elasticsearch (`ELK_CA_CERT`); verification stays on.
    pub ca_cert: Option<CaBundle>,
    pub timeout: Duration,
    pub max_retries: u32,
    pub bulk_max_docs: usize,
    pub flush_interval: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub breaker_max_cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Thresholds {
    pub memory_warning_gb: f64,
    pub memory_critical_gb: f64,
    pub disk_warning_gb: f64,
    pub disk_critical_gb: f64,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub enable_auth: bool,
    pub key_header: String,
    pub key: Option<Secret>,
    pub max_requests_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub caldera: CalderaSettings,
    pub elastic: ElasticSettings,
    pub spool_dir: PathBuf,
    pub dead_letter_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub health_bind: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub thresholds: Thresholds,
    pub api: ApiSettings,
    pub documents: DocSettings,
    pub reports: crate::report::settings::ReportSettings,
    pub intake: crate::caldera::intake::IntakeSettings,
    pub enroll: crate::enroll::EnrollSettings,
    pub agents: crate::agents::AgentsSettings,
    pub correlation: crate::correlate::CorrelationSettings,
}

/// Where a value came from, for `check-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    DotEnv,
    Env,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => "config file",
            Source::DotEnv => ".env",
            Source::Env => "environment",
        })
    }
}

/// The raw layered values, before typing; kept for `check-config`.
#[derive(Debug, Clone)]
pub struct Layered {
    values: BTreeMap<&'static str, (String, Source)>,
}

/// Where to look for the file layers.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config`: must exist. Without it `config/sidecar.toml` is read if present.
    pub config_file: Option<PathBuf>,
    /// `--env-file`: must exist. Without it `.env` is read if present.
    pub env_file: Option<PathBuf>,
}

impl Layered {
    /// Reads all layers. `env` is the process environment (passed in so tests need not mutate it).
    pub fn load(
        opts: &LoadOptions,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file = match &opts.config_file {
            Some(p) => read_toml(p)?,
            None => {
                let p = Path::new("config/sidecar.toml");
                if p.exists() {
                    read_toml(p)?
                } else {
                    HashMap::new()
                }
            }
        };
        let dotenv = match &opts.env_file {
            Some(p) => read_dotenv(p)?,
            None => {
                let p = Path::new(".env");
                if p.exists() {
                    read_dotenv(p)?
                } else {
                    HashMap::new()
                }
            }
        };
        let env: HashMap<String, String> = env.into_iter().collect();
        let mut values = BTreeMap::new();
        for k in keys::all() {
            let v = if let Some(v) = env.get(k.name) {
                (v.clone(), Source::Env)
            } else if let Some(v) = dotenv.get(k.name) {
                (v.clone(), Source::DotEnv)
            } else if let Some(v) = file.get(k.name) {
                (v.clone(), Source::File)
            } else {
                (k.default.to_string(), Source::Default)
            };
            values.insert(k.name, v);
        }
        Ok(Self { values })
    }

    /// The raw value of a key, trimmed (a capability's settings parse their own keys from it).
    pub(crate) fn get(&self, k: &str) -> &str {
        self.values.get(k).map(|(v, _)| v.trim()).unwrap_or("")
    }

    /// Whether a key was given by a layer (not its built-in default): aliases need it.
    pub(crate) fn is_set(&self, k: &str) -> bool {
        self.values
            .get(k)
            .is_some_and(|(_, src)| *src != Source::Default)
    }

    /// The raw value, or `None` when empty.
    pub(crate) fn opt(&self, k: &str) -> Option<String> {
        Some(self.get(k).to_string()).filter(|s| !s.is_empty())
    }

    /// `KEY = value  (source)` lines, secrets masked, credentials removed from URLs.
    pub fn describe(&self) -> Vec<String> {
        keys::all()
            .map(|k| {
                let (v, src) = &self.values[k.name];
                let shown = if k.secret {
                    if v.is_empty() {
                        "(not set)".to_string()
                    } else {
                        "****".to_string()
                    }
                } else if k.name.ends_with("_URL") {
                    v.split(',')
                        .map(|u| redact_url(u.trim()))
                        .collect::<Vec<_>>()
                        .join(",")
                } else {
                    v.clone()
                };
                format!("{:<24} = {:<32} ({src}) {}", k.name, shown, k.help)
            })
            .collect()
    }

    /// Every secret value in effect, so tests and the HTTP layer can check nothing leaks.
    pub fn secrets(&self) -> Vec<String> {
        keys::all()
            .filter(|k| k.secret)
            .map(|k| self.get(k.name).to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let caldera_url = parse_url("CALDERA_URL", self.get("CALDERA_URL"))?;
        if caldera_url.password().is_some() || !caldera_url.username().is_empty() {
            return Err(err(
                "CALDERA_URL",
                "must not carry credentials; use CALDERA_USER/CALDERA_PASSWORD or CALDERA_API_KEY",
            ));
        }
        let key = self.opt("CALDERA_API_KEY").map(Secret::new);
        let auth = match (self.opt("CALDERA_USER"), self.opt("CALDERA_PASSWORD")) {
            (Some(user), Some(password)) => CalderaAuth::Session {
                user,
                password: Secret::new(password),
                key,
            },
            (Some(_), None) => {
                return Err(err(
                    "CALDERA_PASSWORD",
                    "must be set when CALDERA_USER is set",
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "CALDERA_USER",
                    "must be set when CALDERA_PASSWORD is set",
                ));
            }
            (None, None) => match key {
                Some(k) => CalderaAuth::Key(k),
                None => CalderaAuth::None,
            },
        };
        let mut poll_interval = secs("POLL_INTERVAL", self.get("POLL_INTERVAL"))?;
        let key_floor = secs("KEY_MIN_POLL_INTERVAL", self.get("KEY_MIN_POLL_INTERVAL"))?;
        if matches!(auth, CalderaAuth::Key(_)) && poll_interval < key_floor {
            // Each KEY request costs Caldera ~200 ms of its event loop: never poll it every second.
            poll_interval = key_floor;
        }
        let idle_interval =
            secs("POLL_IDLE_INTERVAL", self.get("POLL_IDLE_INTERVAL"))?.max(poll_interval);

        let mut urls = Vec::new();
        let mut basic = None;
        for part in self
            .get("ELK_URL")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let mut u = parse_url("ELK_URL", part)?;
            if !u.username().is_empty() {
                let user = url_credential("ELK_URL", u.username())?;
                let pass = url_credential("ELK_URL", u.password().unwrap_or(""))?;
                basic = Some((user, Secret::new(pass)));
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            urls.push(u);
        }
        if urls.is_empty() {
            return Err(err("ELK_URL", "at least one URL is required"));
        }
        let index = self.get("ELK_INDEX").to_string();
        validate_index(&index)?;
        let verify_ssl = boolean("ELK_VERIFY_SSL", self.get("ELK_VERIFY_SSL"))?;
        let elk_ca = ca_bundle("ELK_CA_CERT", self.get("ELK_CA_CERT"))?;
        if elk_ca.is_some() && !verify_ssl {
            return Err(err(
                "ELK_CA_CERT",
                "is set while ELK_VERIFY_SSL=false turns all certificate checks off; keep ELK_VERIFY_SSL=true to use the CA",
            ));
        }
        let caldera_max_mb = float("CALDERA_MAX_BODY_MB", self.get("CALDERA_MAX_BODY_MB"))?;
        if !(0.01..=4096.0).contains(&caldera_max_mb) {
            return Err(err(
                "CALDERA_MAX_BODY_MB",
                format!("{caldera_max_mb} is outside 0.01..=4096"),
            ));
        }

        let health_bind: SocketAddr = self.get("HEALTH_BIND").parse().map_err(|_| {
            err(
                "HEALTH_BIND",
                format!(
                    "{:?} is not an address:port such as 127.0.0.1:8889",
                    self.get("HEALTH_BIND")
                ),
            )
        })?;
        let log_format = match self.get("LOG_FORMAT").to_ascii_lowercase().as_str() {
            "text" | "" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(err("LOG_FORMAT", format!("{other:?} is not text or json"))),
        };
        let thresholds = Thresholds {
            memory_warning_gb: gb("MEMORY_WARNING_GB", self.get("MEMORY_WARNING_GB"))?,
            memory_critical_gb: gb("MEMORY_CRITICAL_GB", self.get("MEMORY_CRITICAL_GB"))?,
            disk_warning_gb: gb("DISK_WARNING_GB", self.get("DISK_WARNING_GB"))?,
            disk_critical_gb: gb("DISK_CRITICAL_GB", self.get("DISK_CRITICAL_GB"))?,
        };
        if thresholds.memory_critical_gb > thresholds.memory_warning_gb {
            return Err(err(
                "MEMORY_CRITICAL_GB",
                "must not exceed MEMORY_WARNING_GB",
            ));
        }
        if thresholds.disk_critical_gb > thresholds.disk_warning_gb {
            return Err(err("DISK_CRITICAL_GB", "must not exceed DISK_WARNING_GB"));
        }
        let enable_auth = boolean("ENABLE_API_AUTH", self.get("ENABLE_API_AUTH"))?;
        let api_key = self.opt("API_KEY").map(Secret::new);
        if enable_auth && api_key.is_none() {
            return Err(err("API_KEY", "must be set when ENABLE_API_AUTH is true"));
        }
        let key_header = self.get("API_KEY_HEADER").to_string();
        if axum::http::HeaderName::from_bytes(key_header.as_bytes()).is_err() {
            return Err(err(
                "API_KEY_HEADER",
                format!("{key_header:?} is not a valid header name"),
            ));
        }
        let mut client_map = HashMap::new();
        for pair in self
            .get("CLIENT_MAP")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (g, c) = pair
                .split_once('=')
                .ok_or_else(|| err("CLIENT_MAP", format!("{pair:?} is not group=client")))?;
            client_map.insert(g.trim().to_string(), c.trim().to_string());
        }
        let severity = self.get("SEVERITY").to_ascii_lowercase();
        if !["low", "medium", "high", "critical", "informational"].contains(&severity.as_str()) {
            return Err(err(
                "SEVERITY",
                format!("{severity:?} is not low, medium, high, critical or informational"),
            ));
        }
        let documents = DocSettings {
            extra_tags: list(self.get("TAGS")),
            severity,
            client_map,
            include_command: boolean("INCLUDE_COMMAND", self.get("INCLUDE_COMMAND"))?,
            command_max_chars: int(
                "COMMAND_MAX_CHARS",
                self.get("COMMAND_MAX_CHARS"),
                1,
                1 << 20,
            )? as usize,
        };
        let spool_dir = path("SPOOL_DIR", self.get("SPOOL_DIR"))?;
        let intake = crate::caldera::intake::IntakeSettings::from_layered(self, &spool_dir)?;
        let enroll = crate::enroll::EnrollSettings::from_layered(self)?;
        let agents = crate::agents::AgentsSettings::from_layered(self, &auth)?;
        Ok(Settings {
            intake,
            caldera: CalderaSettings {
                url: caldera_url,
                auth,
                timeout: secs("CALDERA_TIMEOUT", self.get("CALDERA_TIMEOUT"))?,
                poll_interval,
                idle_interval,
                settle_grace: secs_allow_zero("SETTLE_GRACE", self.get("SETTLE_GRACE"))?,
                settle_window: secs_allow_zero("SETTLE_WINDOW", self.get("SETTLE_WINDOW"))?,
                ca_cert: ca_bundle("CALDERA_CA_CERT", self.get("CALDERA_CA_CERT"))?,
                max_body_bytes: (caldera_max_mb * 1024.0 * 1024.0) as usize,
                output: crate::caldera::output::OutputSettings::parse(self)?,
            },
            elastic: ElasticSettings {
                urls,
                index,
                api_key: self.opt("ELK_API_KEY").map(Secret::new),
                basic,
                verify_ssl,
                ca_cert: elk_ca,
                timeout: secs("ELK_CONNECTION_TIMEOUT", self.get("ELK_CONNECTION_TIMEOUT"))?,
                max_retries: int("ELK_MAX_RETRIES", self.get("ELK_MAX_RETRIES"), 0, 100)? as u32,
                bulk_max_docs: int("BULK_MAX_DOCS", self.get("BULK_MAX_DOCS"), 1, 100_000)?
                    as usize,
                flush_interval: Duration::from_millis(int(
                    "BULK_FLUSH_MS",
                    self.get("BULK_FLUSH_MS"),
                    0,
                    60_000,
                )?),
                breaker_failures: int("BREAKER_FAILURES", self.get("BREAKER_FAILURES"), 1, 1000)?
                    as u32,
                breaker_cooldown: secs("BREAKER_COOLDOWN", self.get("BREAKER_COOLDOWN"))?,
                breaker_max_cooldown: secs(
                    "BREAKER_MAX_COOLDOWN",
                    self.get("BREAKER_MAX_COOLDOWN"),
                )?,
            },
            spool_dir,
            dead_letter_dir: path("DEAD_LETTER_DIR", self.get("DEAD_LETTER_DIR"))?,
            spool_max_bytes: (float("SPOOL_MAX_MB", self.get("SPOOL_MAX_MB"))? * 1024.0 * 1024.0)
                as u64,
            health_bind,
            log_format,
            log_level: self.get("LOG_LEVEL").to_string(),
            thresholds,
            api: ApiSettings {
                enable_auth,
                key_header,
                key: api_key,
                max_requests_per_minute: int(
                    "MAX_REQUESTS_PER_MINUTE",
                    self.get("MAX_REQUESTS_PER_MINUTE"),
                    1,
                    1_000_000,
                )? as u32,
            },
            documents,
            reports: crate::report::settings::ReportSettings::parse(self)?,
            enroll,
            agents,
            correlation: crate::correlate::settings::parse(self)?,
        })
    }
}

/// Loads and types the configuration from the real process environment.
pub fn load(opts: &LoadOptions) -> Result<(Settings, Layered), ConfigError> {
    let layered = Layered::load(opts, std::env::vars())?;
    let settings = layered.settings()?;
    Ok((settings, layered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let opts = LoadOptions {
            config_file: None,
            env_file: Some(PathBuf::from("/dev/null")),
        };
        Layered::load(
            &opts,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?
        .settings()
    }

    #[test]
    fn defaults_are_valid() {
        let s = load(&[]).unwrap();
        assert_eq!(s.elastic.index, "purple-team-logs");
        assert_eq!(s.caldera.url.as_str(), "http://localhost:8888/");
        assert!(matches!(s.caldera.auth, CalderaAuth::None));
    }

    #[test]
    fn bad_url_names_the_key() {
        let e = load(&[("ELK_URL", "ht!tp://nope")]).unwrap_err();
        assert_eq!(e.key, "ELK_URL");
        let e = load(&[("ELK_URL", "ftp://host")]).unwrap_err();
        assert_eq!(e.key, "ELK_URL");
    }

    #[test]
    fn key_only_polling_is_floored() {
        let s = load(&[("CALDERA_API_KEY", "k"), ("POLL_INTERVAL", "1")]).unwrap();
        assert_eq!(s.caldera.poll_interval, Duration::from_secs(5));
        let s = load(&[
            ("CALDERA_USER", "u"),
            ("CALDERA_PASSWORD", "p"),
            ("POLL_INTERVAL", "1"),
        ])
        .unwrap();
        assert_eq!(s.caldera.poll_interval, Duration::from_secs(1));
    }

    #[test]
    fn url_credentials_move_out_and_are_masked() {
        let s = load(&[(
            "ELK_URL",
            "https://elastic:hunter2@es1:9200, https://es2:9200",
        )])
        .unwrap();
        assert_eq!(s.elastic.urls.len(), 2);
        assert_eq!(s.elastic.urls[0].as_str(), "https://es1:9200/");
        assert_eq!(s.elastic.basic.as_ref().unwrap().1.expose(), "hunter2");
        let opts = LoadOptions {
            config_file: None,
            env_file: Some("/dev/null".into()),
        };
        let l = Layered::load(
            &opts,
            [
                (
                    "ELK_URL".to_string(),
                    "https://elastic:hunter2@es1:9200".to_string(),
                ),
                ("ELK_API_KEY".to_string(), "sekrit-api".to_string()),
            ],
        )
        .unwrap();
        let text = l.describe().join("\n");
        assert!(
            !text.contains("hunter2") && !text.contains("sekrit-api"),
            "{text}"
        );
        assert_eq!(
            format!("{:?}", s.elastic.basic),
            "Some((\"elastic\", ****))"
        );
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("s.toml");
        std::fs::write(
            &toml_path,
            "elk_index = \"from-file\"\npoll_interval = 3\nseverity = \"high\"\n",
        )
        .unwrap();
        let env_path = dir.path().join(".env");
        std::fs::write(
            &env_path,
            "ELK_INDEX=from-dotenv\nPOLL_INTERVAL=4\nOTHER_TOOL=1\n",
        )
        .unwrap();
        let opts = LoadOptions {
            config_file: Some(toml_path.clone()),
            env_file: Some(env_path),
        };
        let l = Layered::load(&opts, [("ELK_INDEX".to_string(), "from-env".to_string())]).unwrap();
        let s = l.settings().unwrap();
        assert_eq!(s.elastic.index, "from-env");
        assert_eq!(s.caldera.poll_interval, Duration::from_secs(4));
        assert_eq!(s.documents.severity, "high");
        std::fs::write(&toml_path, "no_such_setting = 1\n").unwrap();
        let opts = LoadOptions {
            config_file: Some(toml_path),
            env_file: Some("/dev/null".into()),
        };
        assert_eq!(Layered::load(&opts, []).unwrap_err().key, "no_such_setting");
    }
}
