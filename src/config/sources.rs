//! The file layers: the TOML configuration file and the `.env` file.

use std::collections::HashMap;
use std::path::Path;

use super::keys::find_key;
use super::values::{ConfigError, err};

pub(super) fn read_toml(path: &Path) -> Result<HashMap<&'static str, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err("--config", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e| {
        err(
            "--config",
            format!("{} is not valid TOML: {e}", path.display()),
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
    let iter = dotenvy::from_path_iter(path)
        .map_err(|e| err("--env-file", format!("cannot read {}: {e}", path.display())))?;
    let mut out = HashMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| err("--env-file", format!("{}: {e}", path.display())))?;
        // A .env may hold variables for other programs: only ours are taken.
        if let Some(key) = find_key(&k) {
            out.insert(key.name, v);
        }
    }
    Ok(out)
}
