//! The shapes Caldera's REST API v2 returns, as recorded from a real Caldera 5.3.0.
//!
//! These are deliberately lenient "wire" types: every field a real server may send as `null` or
//! leave out is optional, and links are decoded one by one so that one odd link cannot hide the
//! others. Turning these into trusted values is the job of `document`, not of this module.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One row of the cheap listing `GET /api/v2/operations?include=id&include=name&include=state&…`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
pub struct OperationSummary {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub state: String,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// `GET /api/v2/operations/{id}`. Caldera has no `finish` here: only the report carries it.
///
/// Agents and links stay as borrowed raw JSON slices of the response body: each is decoded on
/// its own (so one odd link cannot hide the others) into a small typed struct that skips
/// everything the documents do not use. A full operation is ~3.9 KB per link on the wire;
/// building a `serde_json::Value` tree of it would cost several times that in memory.
#[derive(Debug, Clone, Deserialize)]
pub struct Operation<'a> {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub state: String,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub auto_close: Option<bool>,
    #[serde(default)]
    pub adversary: Option<Adversary>,
    #[serde(default)]
    pub planner: Option<Planner>,
    /// Full agent objects of the operation's group; decoded one by one like links.
    #[serde(default, borrow)]
    pub host_group: Option<Vec<&'a RawValue>>,
    /// The operation's links; decoded one by one by [`Link::from_raw`].
    #[serde(default, borrow)]
    pub chain: Option<Vec<&'a RawValue>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Adversary {
    #[serde(default)]
    pub adversary_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Planner {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// The agent fields the documents use (an element of `host_group` or of `GET /agents`).
#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    pub paw: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub privilege: Option<String>,
}

/// A link (an element of `chain`, `/links`, `/links/{id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub id: String,
    #[serde(default)]
    pub paw: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub plaintext_command: Option<String>,
    pub status: i64,
    #[serde(default)]
    pub decide: Option<String>,
    #[serde(default)]
    pub collect: Option<String>,
    #[serde(default)]
    pub finish: Option<String>,
    /// A string in REST bodies (`"13375"`), an int in event-logs; `null` until a result arrives.
    #[serde(default)]
    pub pid: Option<Pid>,
    #[serde(default)]
    pub ability: Option<LinkAbility>,
    #[serde(default)]
    pub executor: Option<Executor>,
    #[serde(default)]
    pub cleanup: Option<i64>,
    #[serde(default)]
    pub host: Option<String>,
    /// Absent (not null) until a result carrying it arrives.
    #[serde(default)]
    pub agent_reported_time: Option<String>,
}

impl Link {
    pub fn from_raw(raw: &RawValue) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw.get())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Pid {
    Int(i64),
    Text(String),
}

impl Pid {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Pid::Int(i) => Some(*i),
            Pid::Text(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LinkAbility {
    #[serde(default)]
    pub ability_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tactic: Option<String>,
    #[serde(default)]
    pub technique_id: Option<String>,
    #[serde(default)]
    pub technique_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Executor {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
}

/// `POST /api/v2/operations/{id}/report`: only `finish` is used (the one place Caldera gives an
/// operation's end time; `null` until the operation has closed).
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    #[serde(default)]
    pub finish: Option<String>,
}

/// `GET /api/v2/health`.
#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    #[serde(default)]
    pub application: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}
