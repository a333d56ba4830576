//! `GET /api/v2/deploy_commands`, decoded to the little the sidecar uses.
//!
//! Caldera answers `{abilities: [{name, platform, executor, description, command,
//! variations}], app_config: {...}}` (`app/api/v2/managers/agent_api_manager.py`): the
//! deployment abilities listed in `agents.deployments`, one entry per executor, and its whole
//! `app.*` and `agents.*` configuration — including contact secrets. Only the Sandcat
//! commands and three non-secret settings are decoded; every other key is skipped by the
//! parser, so the secrets are never turned into values this process could print.

use serde::Deserialize;
use serde_json::Value;

use super::names::{Executor, Platform};

pub const DEPLOY_COMMANDS: &str = "api/v2/deploy_commands";

/// The name of sandcat's deployment ability (`2f34977d-…`); the answer carries no ids.
const SANDCAT: &str = "Sandcat";

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    abilities: Vec<WireAbility>,
    #[serde(default)]
    app_config: WireConfig,
}

#[derive(Deserialize)]
struct WireAbility {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    executor: Option<String>,
    #[serde(default)]
    command: Option<String>,
}

/// Only these keys are decoded (as raw values, so a surprising type cannot fail the rest).
#[derive(Deserialize, Default)]
struct WireConfig {
    #[serde(rename = "agents.implant_name", default)]
    implant_name: Option<Value>,
    #[serde(rename = "agents.architecture", default)]
    architecture: Option<Value>,
    #[serde(rename = "app.contact.http", default)]
    contact_http: Option<Value>,
}

/// What the sidecar takes from Caldera's deploy commands. Holds no secret.
#[derive(Debug, Clone, Default)]
pub struct DeployInfo {
    /// Sandcat's commands: (platform, executor, command template).
    pub sandcat: Vec<(String, String, String)>,
    pub implant_name: Option<String>,
    pub architecture: Option<String>,
    pub contact_http: Option<String>,
}

fn text(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

impl DeployInfo {
    /// Decodes Caldera's answer. The error names what was wrong, never a value.
    pub fn from_body(body: &[u8]) -> Result<Self, String> {
        let w: Wire = serde_json::from_slice(body).map_err(|e| {
            format!(
                "{DEPLOY_COMMANDS}: undecodable answer ({} bytes, line {} column {})",
                body.len(),
                e.line(),
                e.column()
            )
        })?;
        let sandcat = w
            .abilities
            .into_iter()
            .filter(|a| {
                a.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(SANDCAT))
            })
            .filter_map(|a| Some((a.platform?, a.executor?, a.command?)))
            .collect();
        Ok(Self {
            sandcat,
            implant_name: text(w.app_config.implant_name),
            architecture: text(w.app_config.architecture),
            contact_http: text(w.app_config.contact_http),
        })
    }

    /// Caldera's Sandcat command template for this platform and shell, if it serves one.
    pub fn sandcat_command(&self, platform: Platform, executor: Executor) -> Option<&str> {
        self.sandcat
            .iter()
            .find(|(p, e, _)| p == platform.as_str() && e == executor.as_str())
            .map(|(_, _, c)| c.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_what_is_needed() {
        let body = br#"{"abilities":[{"name":"Sandcat","platform":"linux","executor":"sh","command":"x","variations":[]},
            {"name":"Ragdoll","platform":"linux","executor":"sh","command":"y","variations":[]}],
            "app_config":{"app.contact.ftp.pword":"s3cret","agents.implant_name":"splunkd","agents.architecture":"amd64",
            "app.contact.http":"http://127.0.0.1:8888","app.contact.slack.api_key":"xoxb-1"}}"#;
        let d = DeployInfo::from_body(body).unwrap();
        assert_eq!(d.sandcat.len(), 1);
        assert_eq!(d.sandcat_command(Platform::Linux, Executor::Sh), Some("x"));
        assert_eq!(d.sandcat_command(Platform::Darwin, Executor::Sh), None);
        assert_eq!(d.implant_name.as_deref(), Some("splunkd"));
        let dbg = format!("{d:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("xoxb"), "{dbg}");
        let e = DeployInfo::from_body(br#"{"app_config":{"app.contact.ftp.pword":"s3cret""#)
            .unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
