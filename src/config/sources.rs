//! The file layers: the TOML configuration file and the `.env` file.

use std::collections::HashMap;
use std::path::Path;

use super::keys::find_key;
use super::values::{ConfigError, err};

pub(super) fn read_toml(path: &Path) -> Result<HashMap<&'static str, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err("--config", format!("cannot read {}: {e}", path.display())))?;
    // toml's Display quotes the offending line, which may hold a secret: only its position
    // and the parser's message (which names what was expected, not the value) are shown.
    let table: toml::Table = toml::from_str(&text).map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| {
                format!(
                    ", line {}",
                    text[..s.start.min(text.len())].lines().count().max(1)
                )
            })
            .unwrap_or_default();
        err(
            "--config",
            format!(
                "{}{at} is not valid TOML: {}",
                path.display(),
                e.message().trim()
            ),
        )
    })?;
    let mut out = HashMap::new();
    for (k, v) in table {
        let key = find_key(&k)
            .ok_or_else(|| err(&k, format!("unknown setting in {}", path.display())))?;
        let s = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => return Err(err(key.name, format!("unsupported TOML value {other}"))),
        };
        out.insert(key.name, s);
    }
    Ok(out)
}

pub(super) fn read_dotenv(path: &Path) -> Result<HashMap<&'static str, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err("--env-file", format!("cannot read {}: {e}", path.display())))?;
    let mut out = HashMap::new();
    for (k, v) in super::envfile::parse(&text, &path.display().to_string())? {
        // A .env may hold variables for other programs: only ours are taken. Names are
        // case-sensitive, as in the environment.
        if let Some(key) = find_key(&k).filter(|key| key.name == k) {
            out.insert(key.name, v);
        }
    }
    Ok(out)
}
