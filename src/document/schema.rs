//! The shape of the documents in the index (the schema of ../shared/DESIGN.md): plain data,
//! serialized as is. Building them is [`super::build`]'s work.

use serde::Serialize;

use super::types::{LinkId, OperationId, OperationState, Tactic, TechniqueId, Timestamp};

#[derive(Debug, Clone, Serialize)]
pub struct Threat {
    pub framework: &'static str,
    pub technique: ThreatIds,
    pub tactic: ThreatTactic,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThreatIds {
    pub id: Vec<TechniqueId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub name: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThreatTactic {
    pub name: Vec<Tactic>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: &'static str,
    pub module: &'static str,
    pub dataset: &'static str,
    /// The document `_id`, so a spooled or replayed document knows where it belongs.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct LinkCounts {
    pub total: usize,
    pub success: usize,
    pub error: usize,
    pub timeout: usize,
    pub discarded: usize,
    pub queued: usize,
    pub in_flight: usize,
    pub other: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamedRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Related {
    pub hosts: Vec<String>,
    pub user: Vec<String>,
}

/// One per operation, `_id` `op-<operation id>`, always its latest observed state.
#[derive(Debug, Clone, Serialize)]
pub struct OperationDoc {
    #[serde(rename = "@timestamp")]
    pub at_timestamp: Timestamp,
    // The user's guide's twelve fields.
    pub operation_id: OperationId,
    pub operation_name: String,
    pub purple_team_exercise: bool,
    pub tags: Vec<String>,
    pub client_id: String,
    pub timestamp: Timestamp,
    pub techniques: Vec<TechniqueId>,
    pub tactics: Vec<Tactic>,
    pub severity: String,
    pub auto_close: bool,
    pub agent_count: usize,
    pub status: OperationState,
    // Beyond the guide.
    pub technique_count_total: usize,
    pub caldera_group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish: Option<Timestamp>,
    pub adversary: NamedRef,
    pub planner: NamedRef,
    pub hosts: Vec<String>,
    pub agents: Vec<String>,
    pub link_counts: LinkCounts,
    /// True once the operation is closed, every link has its result and that held for the grace
    /// period: the sidecar stops fetching it (and skips it after a restart).
    pub settled: bool,
    pub invalid_values: usize,
    pub event: Event,
    pub threat: Threat,
    pub related: Related,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostRef {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserRef {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
}

/// One per link, `_id` `link-<link id>`, latest state.
#[derive(Debug, Clone, Serialize)]
pub struct LinkDoc {
    #[serde(rename = "@timestamp")]
    pub at_timestamp: Timestamp,
    pub timestamp: Timestamp,
    pub purple_team_exercise: bool,
    pub tags: Vec<String>,
    pub severity: String,
    pub operation_id: OperationId,
    pub operation_name: String,
    pub client_id: String,
    pub link_id: LinkId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ability_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ability_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub technique_id: Option<TechniqueId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub technique_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tactic: Option<Tactic>,
    pub status: &'static str,
    pub status_code: i64,
    pub cleanup: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decide: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collect: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_reported_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserRef>,
    pub process: Process,
    /// The link's output, only with `INCLUDE_OUTPUT=true` (see `caldera::output`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::caldera::output::LinkOutput>,
    pub event: Event,
    pub threat: Threat,
}
