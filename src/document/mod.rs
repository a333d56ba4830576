//! Documents: what one Caldera operation and each of its links become in the index.
//!
//! Building is a pure function of a Caldera operation (plus the report's `finish`), so it is easy
//! to test and cheap to run on every poll. Every value passes through the validated types of
//! [`types`]; free text passes through [`sanitize`]. What is refused is counted in
//! [`Dropped`] and never stops the rest of the document.

mod encode;
mod link;
pub mod sanitize;
mod schema;
mod tally;
pub mod types;

pub use encode::{Encoded, Unsaved, encode, operation_id_in};
use link::{link_doc, read_link};
pub use schema::*;
pub use tally::Tally;

use std::collections::{BTreeSet, HashMap};

use crate::caldera::model::{Agent, Link, Operation};
use sanitize::{clean_keyword, clean_text};
use types::{InvalidValue, LinkId, OperationId, OperationState, Tactic, TechniqueId, Timestamp};

/// Techniques kept on an operation document; the true number is in `technique_count_total`.
pub const MAX_TECHNIQUES: usize = 500;
const NAME_MAX: usize = 512;
const KEYWORD_MAX: usize = 256;
const BASE_TAGS: [&str; 3] = ["purple_team", "simulation", "caldera"];

/// What the operator chose about documents (from configuration).
#[derive(Debug, Clone)]
pub struct DocSettings {
    pub extra_tags: Vec<String>,
    pub severity: String,
    /// Caldera group → client id; a group absent here is its own client id.
    pub client_map: HashMap<String, String>,
    pub include_command: bool,
    pub command_max_chars: usize,
}

impl Default for DocSettings {
    fn default() -> Self {
        Self {
            extra_tags: Vec::new(),
            severity: "low".into(),
            client_map: HashMap::new(),
            include_command: true,
            command_max_chars: 2048,
        }
    }
}

impl DocSettings {
    fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = BASE_TAGS.iter().map(|s| s.to_string()).collect();
        for t in &self.extra_tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags
    }

    fn client_id(&self, group: Option<&str>) -> String {
        let group = clean_keyword(group.unwrap_or(""), KEYWORD_MAX);
        match self.client_map.get(&group) {
            Some(mapped) => mapped.clone(),
            // Caldera's empty group means "all agents".
            None if group.is_empty() => "all".into(),
            None => group,
        }
    }
}

/// Values refused while building, by kind; summed into the pipeline counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub technique_ids: usize,
    pub tactics: usize,
    pub timestamps: usize,
    pub links: usize,
    pub agents: usize,
    /// One sample reason per kind, for the log line.
    pub reasons: Vec<String>,
}

impl Dropped {
    fn note(&mut self, counter: fn(&mut Dropped) -> &mut usize, e: &InvalidValue) {
        *counter(self) += 1;
        if self.reasons.len() < 8 {
            self.reasons.push(e.to_string());
        }
    }
    pub fn total(&self) -> usize {
        self.technique_ids + self.tactics + self.timestamps + self.links + self.agents
    }
}

/// Everything built from one observation of an operation.
#[derive(Debug)]
pub struct Built {
    pub operation: OperationDoc,
    pub links: Vec<LinkDoc>,
    pub dropped: Dropped,
    /// Closed, and every non-discarded link has its result: the settle clock may run.
    pub all_links_done: bool,
    /// Valid links whose documents were not offered to `wanted` because this build already
    /// holds [`MAX_LINK_DOCS_PER_BUILD`]: build again (with those already sent left out) to get
    /// them. Zero for [`build`].
    pub deferred: usize,
    /// What the links add up to: kept by the watcher to rebuild the operation document after
    /// single-link fetches ([`build_operation`]).
    pub tally: Tally,
}

/// Most link documents one [`build_with`] makes: an operation with 100,000 links is built and
/// encoded in pieces of this size (one per fetch) instead of all at once, so memory stays
/// bounded by the piece, not by the operation.
pub const MAX_LINK_DOCS_PER_BUILD: usize = 2_000;

pub fn operation_doc_id(id: &OperationId) -> String {
    format!("op-{id}")
}

pub fn link_doc_id(id: &LinkId) -> String {
    format!("link-{id}")
}

fn opt_ts(raw: Option<&str>, dropped: &mut Dropped) -> Option<Timestamp> {
    let raw = raw.filter(|s| !s.trim().is_empty())?;
    match Timestamp::parse(raw) {
        Ok(t) => Some(t),
        Err(e) => {
            dropped.note(|d| &mut d.timestamps, &e);
            None
        }
    }
}

fn opt_text(raw: Option<&str>, max: usize) -> Option<String> {
    raw.map(|s| clean_text(s, max)).filter(|s| !s.is_empty())
}

/// Builds the operation document and one document per link.
///
/// `finish` comes from Caldera's report (the operation object has none); `observed` is when this
/// state was seen, used where Caldera gives no time at all.
pub fn build(
    op: Operation<'_>,
    finish: Option<Timestamp>,
    settled: bool,
    observed: Timestamp,
    settings: &DocSettings,
) -> Result<Built, InvalidValue> {
    build_limited(
        op,
        finish,
        settled,
        observed,
        settings,
        &mut |_, _| true,
        usize::MAX,
    )
}

/// [`build`], building a link's document only where `wanted(link id, raw link JSON)` says so.
///
/// Every link still counts towards the operation document (techniques, hosts, counts, invalid
/// values); only the link documents the caller already holds unchanged are not built again, so
/// a poll of a running operation costs O(changed links), not O(links). `wanted` is called once
/// per valid link, in order, and each `true` yields exactly one entry of `Built::links`; once
/// [`MAX_LINK_DOCS_PER_BUILD`] links were wanted it is not called again and the remaining valid
/// links are counted in `Built::deferred`.
pub fn build_with(
    op: Operation<'_>,
    finish: Option<Timestamp>,
    settled: bool,
    observed: Timestamp,
    settings: &DocSettings,
    wanted: &mut dyn FnMut(&LinkId, &str) -> bool,
) -> Result<Built, InvalidValue> {
    build_limited(
        op,
        finish,
        settled,
        observed,
        settings,
        wanted,
        MAX_LINK_DOCS_PER_BUILD,
    )
}

/// The operation's own fields, read once per build.
struct Head {
    operation_id: OperationId,
    operation_name: String,
    state: OperationState,
    client_id: String,
    group: String,
    tags: Vec<String>,
    start: Option<Timestamp>,
    auto_close: bool,
    adversary: NamedRef,
    planner: NamedRef,
    agents: HashMap<String, Agent>,
}

fn read_head(
    op: &mut Operation<'_>,
    settings: &DocSettings,
    dropped: &mut Dropped,
) -> Result<Head, InvalidValue> {
    let operation_id = OperationId::parse(&op.id)?;
    let start = opt_ts(op.start.as_deref(), dropped);
    let mut agents: HashMap<String, Agent> = HashMap::new();
    for raw in op.host_group.take().unwrap_or_default() {
        match serde_json::from_str::<Agent>(raw.get()) {
            Ok(a) => {
                agents.insert(a.paw.clone(), a);
            }
            Err(_) => dropped.note(
                |d| &mut d.agents,
                &InvalidValue::new("agent", "", "undecodable host_group entry"),
            ),
        }
    }
    let adversary = op.adversary.take().unwrap_or_default();
    let planner = op.planner.take().unwrap_or_default();
    Ok(Head {
        operation_id,
        operation_name: clean_text(&op.name, NAME_MAX),
        state: OperationState::parse(&op.state),
        client_id: settings.client_id(op.group.as_deref()),
        group: clean_keyword(op.group.as_deref().unwrap_or(""), KEYWORD_MAX),
        tags: settings.tags(),
        start,
        auto_close: op.auto_close.unwrap_or(false),
        adversary: NamedRef {
            id: opt_text(adversary.adversary_id.as_deref(), KEYWORD_MAX),
            name: opt_text(adversary.name.as_deref(), NAME_MAX),
        },
        planner: NamedRef {
            id: opt_text(planner.id.as_deref(), KEYWORD_MAX),
            name: opt_text(planner.name.as_deref(), NAME_MAX),
        },
        agents,
    })
}

#[allow(clippy::too_many_arguments)]
fn build_limited(
    mut op: Operation<'_>,
    finish: Option<Timestamp>,
    settled: bool,
    observed: Timestamp,
    settings: &DocSettings,
    wanted: &mut dyn FnMut(&LinkId, &str) -> bool,
    max_links: usize,
) -> Result<Built, InvalidValue> {
    let mut dropped = Dropped::default();
    let head = read_head(&mut op, settings, &mut dropped)?;
    let head_invalid = dropped.total();
    let mut deferred = 0;
    let mut tally = Tally::default();
    let chain = op.chain.unwrap_or_default();
    let mut links = Vec::with_capacity(chain.len().min(max_links));

    for raw in chain {
        let link = match Link::from_raw(raw) {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable link skipped");
                dropped.note(
                    |d| &mut d.links,
                    &InvalidValue::new("link", "", "undecodable link object"),
                );
                tally.unreadable_link();
                continue;
            }
        };
        let Some(v) = read_link(&link, &head.agents, &mut dropped) else {
            tally.unreadable_link();
            continue;
        };
        tally.add(v.part());
        if links.len() >= max_links {
            deferred += 1;
            continue;
        }
        if !wanted(&v.link_id, raw.get()) {
            continue;
        }
        links.push(link_doc(&head, v, link, observed, settings));
    }
    let (operation, all_links_done) = operation_doc(
        &head,
        &tally,
        head_invalid,
        finish,
        settled,
        observed,
        settings,
    );
    Ok(Built {
        operation,
        links,
        dropped,
        all_links_done,
        deferred,
        tally,
    })
}

/// The operation document from its own fields (`op`; its `chain` is ignored) and the tally of
/// its links kept since the last whole fetch ([`Built::tally`], updated by
/// [`Tally::merge_links`]). Equal to what [`build`] makes from the whole operation with those
/// links. Returns it and whether every link is done (see [`Built::all_links_done`]).
pub fn build_operation(
    mut op: Operation<'_>,
    tally: &Tally,
    finish: Option<Timestamp>,
    observed: Timestamp,
    settings: &DocSettings,
) -> Result<(OperationDoc, bool), InvalidValue> {
    let mut dropped = Dropped::default();
    let head = read_head(&mut op, settings, &mut dropped)?;
    Ok(operation_doc(
        &head,
        tally,
        dropped.total(),
        finish,
        false,
        observed,
        settings,
    ))
}

#[allow(clippy::too_many_arguments)]
fn operation_doc(
    head: &Head,
    tally: &Tally,
    head_invalid: usize,
    finish: Option<Timestamp>,
    settled: bool,
    observed: Timestamp,
    settings: &DocSettings,
) -> (OperationDoc, bool) {
    let mut hosts = tally.hosts.clone();
    let mut users: BTreeSet<String> = BTreeSet::new();
    let mut paws = tally.paws.clone();
    for a in head.agents.values() {
        paws.insert(clean_keyword(&a.paw, KEYWORD_MAX));
        if let Some(h) = opt_text(a.host.as_deref(), KEYWORD_MAX) {
            hosts.insert(h);
        }
        if let Some(u) = opt_text(a.username.as_deref(), KEYWORD_MAX) {
            users.insert(u);
        }
    }
    let all_links_done = head.state.is_closed() && tally.all_done();
    let technique_count_total = tally.techniques.len();
    let techniques: Vec<TechniqueId> = tally
        .techniques
        .iter()
        .take(MAX_TECHNIQUES)
        .cloned()
        .collect();
    let tactics: Vec<Tactic> = tally.tactics.iter().cloned().collect();
    let start = head.start;
    let timestamp = start.unwrap_or(observed);
    let operation = OperationDoc {
        at_timestamp: timestamp,
        event: Event {
            kind: "event",
            module: "caldera",
            dataset: "caldera.operation",
            id: operation_doc_id(&head.operation_id),
            start,
            end: finish,
            outcome: None,
        },
        operation_id: head.operation_id.clone(),
        operation_name: head.operation_name.clone(),
        purple_team_exercise: true,
        tags: head.tags.clone(),
        caldera_group: head.group.clone(),
        client_id: head.client_id.clone(),
        timestamp,
        threat: Threat {
            framework: "MITRE ATT&CK",
            technique: ThreatIds {
                id: techniques.clone(),
                name: tally.technique_names.iter().cloned().collect(),
            },
            tactic: ThreatTactic {
                name: tactics.clone(),
            },
        },
        techniques,
        technique_count_total,
        tactics,
        severity: settings.severity.clone(),
        auto_close: head.auto_close,
        agent_count: paws.len(),
        status: head.state.clone(),
        start,
        finish,
        adversary: head.adversary.clone(),
        planner: head.planner.clone(),
        related: Related {
            hosts: hosts.iter().cloned().collect(),
            user: users.into_iter().collect(),
        },
        hosts: hosts.into_iter().collect(),
        agents: paws.into_iter().collect(),
        link_counts: tally.counts(),
        settled,
        invalid_values: head_invalid + tally.invalid(),
    };
    (operation, all_links_done)
}
