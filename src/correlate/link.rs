//! A link document as the correlation stage sees it: the host, the shell's pid, the window in
//! the victim's clock and the command, read back from the index (so links indexed before this
//! feature existed are correlated too).
//!
//! The window is [agent_reported_time − skew, end + skew]. `agent_reported_time` is the
//! victim's own clock, like the alerts' `kibana.alert.original_time`, but `event.end` (Caldera's
//! `finish`) is the Caldera server's clock. When both `collect` (server clock, the agent fetched
//! the link) and `agent_reported_time` (victim clock, it started it a moment later) are known,
//! their difference estimates the victim's clock offset and the end is moved into the victim's
//! clock by it, so a victim a few seconds off still gets a right window. All REST times are
//! whole seconds; `ALERT_SKEW` (default 2 s) absorbs that truncation.

use serde_json::Value;

use super::fields::get;
use super::host::host_label;
use super::time::parse_millis;

/// The link document fields the stage reads.
pub const SOURCE_FIELDS: &[&str] = &[
    "link_id",
    "operation_id",
    "operation_name",
    "technique_id",
    "technique_name",
    "tactic",
    "host.name",
    "process.pid",
    "process.command_line",
    "executor",
    "status",
    "agent_reported_time",
    "collect",
    "event.start",
    "event.end",
    "detection",
];

#[derive(Debug, Clone)]
pub struct LinkView {
    /// `_id` of the link document, and its sequence guard.
    pub doc_id: String,
    pub seq_no: Option<i64>,
    pub primary_term: Option<i64>,
    pub link_id: String,
    pub operation_id: String,
    pub operation_name: Option<String>,
    pub technique_id: Option<String>,
    pub tactic: Option<String>,
    pub host: Option<String>,
    /// The raw host name, for records.
    pub host_name: Option<String>,
    /// The shell's pid; `None` for pid 1 (the agent could not start the command) or missing.
    pub pid: Option<i64>,
    pub command: Option<String>,
    pub executor: Option<String>,
    /// Start on the victim's clock (ms), if the link ran.
    pub start_ms: Option<i64>,
    /// End on Caldera's clock (ms), if the result arrived.
    pub end_ms: Option<i64>,
    /// Victim clock minus Caldera clock, estimated (ms).
    pub offset_ms: i64,
    /// The detection fields the document holds now (to write only what changed).
    pub detection: Option<Value>,
}

/// Why a link document cannot be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("link document {id:?} not usable: {why}")]
pub struct Unusable {
    pub id: String,
    pub why: &'static str,
}

fn s(src: &Value, path: &str) -> Option<String> {
    get(src, path)
        .and_then(Value::as_str)
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

impl LinkView {
    pub fn from_hit(hit: &Value) -> Result<Self, Unusable> {
        let doc_id = hit["_id"].as_str().unwrap_or("").to_string();
        let src = &hit["_source"];
        let unusable = |why| Unusable {
            id: doc_id.clone(),
            why,
        };
        let link_id = s(src, "link_id").ok_or_else(|| unusable("no link_id"))?;
        let operation_id = s(src, "operation_id").ok_or_else(|| unusable("no operation_id"))?;
        let host_name = s(src, "host.name");
        let pid = get(src, "process.pid")
            .and_then(Value::as_i64)
            .filter(|p| *p > 1);
        let reported = get(src, "agent_reported_time").and_then(parse_millis);
        let start_ms = reported.or_else(|| get(src, "event.start").and_then(parse_millis));
        let collect = get(src, "collect").and_then(parse_millis);
        let offset_ms = match (reported, collect) {
            (Some(r), Some(c)) => r - c,
            _ => 0,
        };
        Ok(Self {
            seq_no: hit["_seq_no"].as_i64(),
            primary_term: hit["_primary_term"].as_i64(),
            link_id,
            operation_id,
            operation_name: s(src, "operation_name"),
            technique_id: s(src, "technique_id"),
            tactic: s(src, "tactic"),
            host: host_name.as_deref().and_then(host_label),
            host_name,
            pid,
            command: s(src, "process.command_line"),
            executor: s(src, "executor"),
            start_ms,
            end_ms: get(src, "event.end").and_then(parse_millis),
            offset_ms,
            detection: get(src, "detection").cloned(),
            doc_id,
        })
    }

    /// The window on the victim's clock, widened by `skew_ms`, once the link has both ends.
    pub fn window(&self, skew_ms: i64) -> Option<(i64, i64)> {
        let start = self.start_ms?;
        let end = (self.end_ms? + self.offset_ms).max(start);
        Some((start - skew_ms, end + skew_ms))
    }

    /// True when the link ran on a known host with both ends of its window known.
    pub fn correlatable(&self) -> bool {
        self.host.is_some() && self.start_ms.is_some() && self.end_ms.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn window_moves_the_end_into_the_victims_clock() {
        let hit = json!({"_id": "link-x", "_source": {
            "link_id": "x", "operation_id": "o", "host": {"name": "VM"}, "process": {"pid": 1},
            "collect": "2026-11-28T15:00:00Z", "agent_reported_time": "2026-11-28T15:00:03Z",
            "event": {"start": "2026-11-28T15:00:03Z", "end": "2026-11-28T15:00:05Z"}}});
        let l = LinkView::from_hit(&hit).unwrap();
        assert_eq!(l.pid, None, "pid 1 means no command started");
        assert_eq!(l.host.as_deref(), Some("vm"));
        let (a, b) = l.window(2000).unwrap();
        assert_eq!(
            b - a,
            2000 + 5000 + 2000,
            "start 15:00:03, end 15:00:05 + 3 s offset"
        );
    }
}
