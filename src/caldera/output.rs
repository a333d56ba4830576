//! Evidence, opt-in: a finished link's output, fetched once into its document.
//!
//! Command output can carry a client's data, so it is off unless `INCLUDE_OUTPUT=true`. When on,
//! the watcher calls [`attach`] for the link documents it is about to send: each link that has
//! its result (`finish` set) gets one `GET /api/v2/operations/{id}/links/{link_id}/result`, a
//! constant-cost call for Caldera (it reads one result file). Caldera answers
//! `{"link": {…}, "result": "<base64>"}`; the base64 decodes to `{"stdout", "stderr",
//! "exit_code"}` (Python's `json.dumps`, see the recorded `operation_link_result*.json`), or to
//! plain text from older agents, or to `""` when the link produced no result file. The text is
//! sanitized like a command (control characters out, lines kept) and capped at
//! `OUTPUT_MAX_BYTES` in total. A link whose result cannot be read is sent without output: the
//! document matters more than its evidence.

use base64::Engine;
use serde::Serialize;

use super::client::CalderaClient;
use crate::config::keys::{Key, key};
use crate::config::{ConfigError, Layered, boolean, int};
use crate::document::LinkDoc;
use crate::document::sanitize::clean_command;

pub(crate) const KEYS: &[Key] = &[
    key(
        "INCLUDE_OUTPUT",
        "false",
        "fetch each finished link's output once into its document (output) and the report",
    ),
    key(
        "OUTPUT_MAX_BYTES",
        "10240",
        "cap in bytes of the output kept per link (stdout + stderr)",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSettings {
    pub include: bool,
    pub max_bytes: usize,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self {
            include: false,
            max_bytes: 10 * 1024,
        }
    }
}

impl OutputSettings {
    pub(crate) fn parse(l: &Layered) -> Result<Self, ConfigError> {
        Ok(Self {
            include: boolean("INCLUDE_OUTPUT", l.get("INCLUDE_OUTPUT"))?,
            max_bytes: int("OUTPUT_MAX_BYTES", l.get("OUTPUT_MAX_BYTES"), 16, 1 << 20)? as usize,
        })
    }
}

/// A link's output as stored in its document (`output.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LinkOutput {
    pub stdout: String,
    pub stderr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<String>,
    /// Something was cut to fit `OUTPUT_MAX_BYTES`.
    pub truncated: bool,
}

pub fn result_path(op_id: &str, link_id: &str) -> String {
    format!("api/v2/operations/{op_id}/links/{link_id}/result")
}

#[derive(serde::Deserialize)]
struct ResultReply {
    #[serde(default)]
    result: Option<String>,
}

#[derive(serde::Deserialize)]
struct AgentResult {
    #[serde(default)]
    stdout: Option<serde_json::Value>,
    #[serde(default)]
    stderr: Option<serde_json::Value>,
    #[serde(default)]
    exit_code: Option<serde_json::Value>,
}

fn as_text(v: Option<serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

/// Decodes Caldera's `result` string. `None` when there is no output at all (empty result).
pub fn decode(result_b64: &str, max_bytes: usize) -> Result<Option<LinkOutput>, String> {
    let raw = result_b64.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|e| format!("result is not base64: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let (stdout, stderr, exit_code) = match serde_json::from_str::<AgentResult>(&text) {
        Ok(r) => (
            as_text(r.stdout),
            as_text(r.stderr),
            r.exit_code.map(|v| as_text(Some(v))),
        ),
        // Agents older than Caldera 4 sent the bare output.
        Err(_) => (text.into_owned(), String::new(), None),
    };
    Ok(Some(cap(stdout, stderr, exit_code, max_bytes)))
}

/// Sanitizes both streams and fits them in `max_bytes` together, stdout first.
fn cap(stdout: String, stderr: String, exit_code: Option<String>, max_bytes: usize) -> LinkOutput {
    // A character is at least a byte: capping characters at `max_bytes` first bounds the work.
    let stdout = clean_command(&stdout, max_bytes);
    let stderr = clean_command(&stderr, max_bytes);
    let (stdout, cut_out) = truncate_bytes(&stdout, max_bytes);
    let (stderr, cut_err) = truncate_bytes(&stderr, max_bytes.saturating_sub(stdout.len()));
    LinkOutput {
        stdout,
        stderr,
        exit_code: exit_code.map(|c| clean_command(&c, 16)),
        truncated: cut_out || cut_err,
    }
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
fn truncate_bytes(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_string(), true)
}

/// Fetches the output of every finished link in `links` and stores it in `output`.
pub async fn attach(client: &CalderaClient, links: &mut [LinkDoc], settings: &OutputSettings) {
    for link in links.iter_mut() {
        if link.finish.is_none() || link.output.is_some() {
            continue;
        }
        let path = result_path(link.operation_id.as_str(), link.link_id.as_str());
        match client.get::<ResultReply>(&path).await {
            Ok(reply) => match decode(reply.result.as_deref().unwrap_or(""), settings.max_bytes) {
                Ok(out) => link.output = out,
                Err(why) => tracing::warn!(link = %link.link_id, why, "link output not kept"),
            },
            Err(e) => tracing::warn!(link = %link.link_id, error = %e, "link output not fetched"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str =
        "eyJzdGRvdXQiOiAicm9vdFxuIiwgInN0ZGVyciI6ICIiLCAiZXhpdF9jb2RlIjogIjAifQ==";

    #[test]
    fn decodes_the_recorded_result() {
        let out = decode(RECORDED, 10_240).unwrap().unwrap();
        assert_eq!(out.stdout, "root\n");
        assert_eq!(out.stderr, "");
        assert_eq!(out.exit_code.as_deref(), Some("0"));
        assert!(!out.truncated);
        assert_eq!(decode("", 100).unwrap(), None);
        assert!(decode("not base64 !!", 100).is_err());
    }

    #[test]
    fn caps_and_sanitizes() {
        let long = format!("{}\u{1b}[31mé", "a".repeat(30));
        let json = serde_json::json!({"stdout": long, "stderr": "boom", "exit_code": "2"});
        let b64 = base64::engine::general_purpose::STANDARD.encode(json.to_string());
        let out = decode(&b64, 32).unwrap().unwrap();
        assert!(out.truncated);
        assert!(out.stdout.len() + out.stderr.len() <= 32);
        assert!(!out.stdout.contains('\u{1b}'), "escape removed");
        let plain = base64::engine::general_purpose::STANDARD.encode("plain text\n");
        assert_eq!(decode(&plain, 100).unwrap().unwrap().stdout, "plain text\n");
    }
}
