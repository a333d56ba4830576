//! Typed values out of raw strings: secrets that never print, and the parsers every setting goes
//! through, so a bad value always names its key and never shows a secret.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

/// A value that must never be printed: `Debug`/`Display` show `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// A configuration problem: which key, and what is wrong (never the value of a secret).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

pub(crate) fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// A URL with any user name and password replaced, for logs and `check-config`. A string that
/// does not parse as a URL is redacted by hand: everything before the last `@` of what would be
/// its authority is a credential.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("****");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => redact_unparsed(raw),
    }
}

fn redact_unparsed(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}****@{}{tail}", &authority[at + 1..]),
        // No authority delimiter found where expected: any `@` at all may end a credential.
        None => match raw.rfind('@') {
            Some(at) if scheme.is_empty() => format!("****@{}", &raw[at + 1..]),
            _ => raw.to_string(),
        },
    }
}

/// The user name or password of a URL as the server must receive it: `Url` keeps them
/// percent-encoded (`p%40ss`), basic auth wants the real characters (`p@ss`).
pub(crate) fn url_credential(key: &str, encoded: &str) -> Result<String, ConfigError> {
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            err(
                key,
                "the credentials in the URL are not valid UTF-8 once decoded",
            )
        })
}

/// CA certificates to trust besides the built-in roots, read and checked at start-up.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaBundle({})", self.path.display())
    }
}

impl CaBundle {
    /// The certificates, for a reqwest client.
    pub fn certificates(&self) -> Result<Vec<reqwest::Certificate>, String> {
        reqwest::Certificate::from_pem_bundle(&self.pem).map_err(|e| e.to_string())
    }
}

/// A PEM file of CA certificates (empty: none). Checked here so a bad file stops start-up with
/// its key instead of failing every request later: it must hold at least one certificate, and
/// a TLS client must accept each of them as a trust anchor.
pub(crate) fn ca_bundle(key: &str, raw: &str) -> Result<Option<CaBundle>, ConfigError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(raw);
    let pem = std::fs::read(&path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    let bundle = CaBundle { path, pem };
    let certs = bundle.certificates().map_err(|e| {
        err(
            key,
            format!(
                "{} is not a PEM certificate file: {e}",
                bundle.path.display()
            ),
        )
    })?;
    if certs.is_empty() {
        return Err(err(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                bundle.path.display()
            ),
        ));
    }
    let mut builder = reqwest::Client::builder();
    for c in certs {
        builder = builder.add_root_certificate(c);
    }
    builder.build().map_err(|e| {
        let mut why = e.to_string();
        if let Some(s) = std::error::Error::source(&e) {
            why = format!("{why}: {s}");
        }
        err(
            key,
            format!(
                "{} holds a certificate that cannot be trusted as a CA ({why})",
                bundle.path.display()
            ),
        )
    })?;
    Ok(Some(bundle))
}

pub(crate) fn parse_url(key: &str, raw: &str) -> Result<Url, ConfigError> {
    let u = Url::parse(raw).map_err(|e| {
        err(
            key,
            format!("{:?} is not a valid URL ({e})", redact_url(raw)),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(err(
            key,
            format!(
                "{:?} must be an http:// or https:// URL with a host",
                redact_url(raw)
            ),
        ));
    }
    Ok(u)
}

pub(crate) fn validate_index(index: &str) -> Result<(), ConfigError> {
    let bad = index.is_empty()
        || index.len() > 255
        || index.starts_with(['-', '_', '+', '.'])
        || index
            .chars()
            .any(|c| c.is_ascii_uppercase() || c.is_whitespace() || "\\/*?\"<>|,#:".contains(c));
    if bad {
        Err(err(
            "ELK_INDEX",
            format!(
                "{index:?} is not a valid index name (lowercase, no spaces or \\/*?\"<>|,#:, not starting with -_+.)"
            ),
        ))
    } else {
        Ok(())
    }
}

pub(crate) fn int(key: &str, raw: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let v: u64 = raw
        .parse()
        .map_err(|_| err(key, format!("{raw:?} is not a whole number")))?;
    if v < min || v > max {
        return Err(err(key, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

pub(crate) fn float(key: &str, raw: &str) -> Result<f64, ConfigError> {
    let v: f64 = raw
        .parse()
        .map_err(|_| err(key, format!("{raw:?} is not a number")))?;
    if !v.is_finite() || v < 0.0 {
        return Err(err(key, format!("{raw:?} must be a non-negative number")));
    }
    Ok(v)
}

pub(crate) fn gb(key: &str, raw: &str) -> Result<f64, ConfigError> {
    float(key, raw)
}

pub(crate) fn secs(key: &str, raw: &str) -> Result<Duration, ConfigError> {
    let v = float(key, raw)?;
    if v <= 0.0 || v > 86_400.0 {
        return Err(err(key, format!("{raw:?} must be seconds in (0, 86400]")));
    }
    Ok(Duration::from_secs_f64(v))
}

pub(crate) fn secs_allow_zero(key: &str, raw: &str) -> Result<Duration, ConfigError> {
    let v = float(key, raw)?;
    if v > 86_400.0 * 7.0 {
        return Err(err(key, format!("{raw:?} is more than a week")));
    }
    Ok(Duration::from_secs_f64(v))
}

pub(crate) fn boolean(key: &str, raw: &str) -> Result<bool, ConfigError> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(err(key, format!("{raw:?} is not true or false"))),
    }
}

pub(crate) fn path(key: &str, raw: &str) -> Result<PathBuf, ConfigError> {
    if raw.is_empty() {
        return Err(err(key, "must not be empty"));
    }
    Ok(PathBuf::from(raw))
}

pub(crate) fn list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
