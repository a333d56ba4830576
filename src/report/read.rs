//! Reading the indexed documents back, leniently: a field missing from an older document is
//! simply absent, and every string is sanitized again (a report must be safe whatever the index
//! holds). Also how a technique came out ([`Outcome`]), which the PDF and the Navigator layer
//! colour alike.

use serde::Serialize;
use serde_json::Value;

use crate::document::sanitize::{clean_command, clean_text};

/// Longest command shown in the appendix, in characters.
pub const COMMAND_SHOWN_MAX: usize = 1_000;
/// Longest output shown per link in the appendix, in characters (the document holds at most
/// `OUTPUT_MAX_BYTES`).
pub const OUTPUT_SHOWN_MAX: usize = 3_000;
const TEXT_MAX: usize = 300;
const NAME_MAX: usize = 600;

/// How a technique came out: its colour in the matrix and in the Navigator layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// At least one of its links raised an alert.
    Detected,
    /// Assessed, and none of its links raised an alert.
    NotDetected,
    /// Correlation has not decided yet.
    Pending,
    /// Ran successfully; detection not assessed.
    Executed,
    /// Ran, but every run failed or timed out; detection not assessed.
    Failed,
    /// Never ran (discarded, queued).
    NotRun,
}

impl Outcome {
    pub fn color(self) -> &'static str {
        match self {
            Outcome::Detected => "#2e7d32",
            Outcome::NotDetected => "#c62828",
            Outcome::Pending => "#f9a825",
            Outcome::Executed => "#1565c0",
            Outcome::Failed => "#ef6c00",
            Outcome::NotRun => "#9e9e9e",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Detected => "detected",
            Outcome::NotDetected => "not detected",
            Outcome::Pending => "detection pending",
            Outcome::Executed => "executed (detection not assessed)",
            Outcome::Failed => "failed or timed out",
            Outcome::NotRun => "not run",
        }
    }
    pub const ALL: [Outcome; 6] = [
        Outcome::Detected,
        Outcome::NotDetected,
        Outcome::Pending,
        Outcome::Executed,
        Outcome::Failed,
        Outcome::NotRun,
    ];
}

/// One link document, read leniently.
#[derive(Debug, Clone)]
pub struct Link {
    pub id: String,
    pub technique_id: String,
    pub technique_name: String,
    pub tactic: String,
    pub ability: String,
    pub host: String,
    pub status: String,
    pub cleanup: bool,
    /// When it ran: `event.start`, else `decide`.
    pub time: Option<String>,
    pub command: Option<String>,
    pub output: Option<String>,
    pub detection: Option<Detection>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub status: String,
    pub alert_count: u64,
    pub rules: Vec<String>,
    pub time_to_detect_ms: Option<u64>,
}

fn s(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    match cur {
        Value::String(x) if !x.is_empty() => Some(x.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text(v: &Value, path: &[&str], max: usize) -> String {
    s(v, path).map(|x| clean_text(&x, max)).unwrap_or_default()
}

impl Link {
    pub fn from_doc(d: &Value) -> Self {
        let detection = d.get("detection").filter(|x| x.is_object()).and_then(|x| {
            let status = s(x, &["status"])?;
            let rules = match x.get("rules") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|r| match r {
                        Value::String(t) => Some(clean_text(t, TEXT_MAX)),
                        // A rule may be an object with a name.
                        Value::Object(_) => s(r, &["name"]).map(|t| clean_text(&t, TEXT_MAX)),
                        _ => None,
                    })
                    .filter(|t| !t.is_empty())
                    .collect(),
                Some(Value::String(t)) => vec![clean_text(t, TEXT_MAX)],
                _ => Vec::new(),
            };
            Some(Detection {
                status: clean_text(&status, 32).to_ascii_lowercase(),
                alert_count: x.get("alert_count").and_then(Value::as_u64).unwrap_or(0),
                rules,
                time_to_detect_ms: x.get("time_to_detect_ms").and_then(Value::as_u64),
            })
        });
        let output = d.get("output").filter(|o| o.is_object()).map(|o| {
            let mut out = String::new();
            if let Some(t) = s(o, &["stdout"]) {
                out.push_str(&t);
            }
            if let Some(t) = s(o, &["stderr"]) {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("[stderr] ");
                out.push_str(&t);
            }
            if o.get("truncated").and_then(Value::as_bool) == Some(true) {
                out.push_str("\n[output truncated]");
            }
            clean_command(&out, OUTPUT_SHOWN_MAX)
        });
        Link {
            id: text(d, &["link_id"], 64),
            technique_id: text(d, &["technique_id"], 16),
            technique_name: text(d, &["technique_name"], TEXT_MAX),
            tactic: text(d, &["tactic"], 64),
            ability: text(d, &["ability_name"], TEXT_MAX),
            host: text(d, &["host", "name"], TEXT_MAX),
            status: text(d, &["status"], 32),
            cleanup: d.get("cleanup").and_then(Value::as_bool).unwrap_or(false),
            time: s(d, &["event", "start"]).or_else(|| s(d, &["decide"])),
            command: s(d, &["process", "command_line"])
                .map(|c| clean_command(&c, COMMAND_SHOWN_MAX)),
            output: output.filter(|o| !o.is_empty()),
            detection,
        }
    }

    pub(super) fn ran(&self) -> bool {
        matches!(self.status.as_str(), "success" | "error" | "timeout")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub id: String,
    pub name: String,
    pub client: String,
    pub status: String,
    pub adversary: String,
    pub planner: String,
    pub start: String,
    pub finish: String,
}

impl Operation {
    pub fn from_doc(d: &Value) -> Self {
        Operation {
            id: text(d, &["operation_id"], 64),
            name: text(d, &["operation_name"], NAME_MAX),
            client: text(d, &["client_id"], TEXT_MAX),
            status: text(d, &["status"], 32),
            adversary: text(d, &["adversary", "name"], TEXT_MAX),
            planner: text(d, &["planner", "name"], TEXT_MAX),
            start: text(d, &["start"], 40),
            finish: text(d, &["finish"], 40),
        }
    }
}
