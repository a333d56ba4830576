//! One link: its values read once (each invalid one dropped and counted), what it adds to the
//! operation document ([`super::Tally`]), and its own document.

use std::collections::HashMap;

use super::sanitize::clean_command;
use super::tally::LinkPart;
use super::types::{LinkId, LinkStatus, Tactic, TechniqueId, Timestamp};
use super::{
    DocSettings, Dropped, Event, Head, HostRef, KEYWORD_MAX, LinkDoc, NAME_MAX, Process, Threat,
    ThreatIds, ThreatTactic, UserRef, link_doc_id, opt_text, opt_ts,
};
use crate::caldera::model::{Agent, Link};

/// One link's values, each read (and, if invalid, dropped) once for both documents.
pub(super) struct LinkValues {
    pub(super) link_id: LinkId,
    status: LinkStatus,
    finish: Option<Timestamp>,
    decide: Option<Timestamp>,
    collect: Option<Timestamp>,
    reported: Option<Timestamp>,
    technique_id: Option<TechniqueId>,
    technique_name: Option<String>,
    tactic: Option<Tactic>,
    paw: Option<String>,
    host: Option<String>,
    user: Option<String>,
    /// Values dropped from this link.
    invalid: usize,
}

impl LinkValues {
    /// Every link that is not discarded has its result once it has an end and is no longer
    /// queued or with the agent.
    fn done(&self) -> bool {
        self.status.is_discarded() || (self.finish.is_some() && self.status.code != -3)
    }

    pub(super) fn part(&self) -> LinkPart<'_> {
        LinkPart {
            id: &self.link_id,
            status: self.status,
            done: self.done(),
            invalid: self.invalid,
            technique_id: self.technique_id.as_ref(),
            technique_name: self.technique_name.as_ref(),
            tactic: self.tactic.as_ref(),
            host: self.host.as_ref(),
            paw: self.paw.as_ref(),
        }
    }
}

/// Reads one link's values; `None` (noted in `dropped`) when its id is invalid.
pub(super) fn read_link(
    link: &Link,
    agents: &HashMap<String, Agent>,
    dropped: &mut Dropped,
) -> Option<LinkValues> {
    let before = dropped.total();
    let link_id = match LinkId::parse(&link.id) {
        Ok(id) => id,
        Err(e) => {
            dropped.note(|d| &mut d.links, &e);
            return None;
        }
    };
    let status = LinkStatus {
        code: link.status,
        collected: link.collect.as_deref().is_some_and(|c| !c.is_empty()),
    };
    let finish = opt_ts(link.finish.as_deref(), dropped);
    // Read in place: the link is read for every build, its document only when wanted.
    let ability = link.ability.as_ref();
    let technique_id = match ability
        .and_then(|a| a.technique_id.as_deref())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(raw) => match TechniqueId::parse(raw) {
            Ok(t) => Some(t),
            Err(e) => {
                dropped.note(|d| &mut d.technique_ids, &e);
                None
            }
        },
    };
    let tactic = match ability
        .and_then(|a| a.tactic.as_deref())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(raw) => match Tactic::parse(raw) {
            Ok(t) => Some(t),
            Err(e) => {
                dropped.note(|d| &mut d.tactics, &e);
                None
            }
        },
    };
    let agent = link.paw.as_deref().and_then(|p| agents.get(p));
    let host = opt_text(link.host.as_deref(), KEYWORD_MAX)
        .or_else(|| agent.and_then(|a| opt_text(a.host.as_deref(), KEYWORD_MAX)));
    let decide = opt_ts(link.decide.as_deref(), dropped);
    let collect = opt_ts(link.collect.as_deref(), dropped);
    let reported = opt_ts(link.agent_reported_time.as_deref(), dropped);
    Some(LinkValues {
        link_id,
        status,
        finish,
        decide,
        collect,
        reported,
        technique_id,
        technique_name: opt_text(ability.and_then(|a| a.technique_name.as_deref()), NAME_MAX),
        tactic,
        paw: opt_text(link.paw.as_deref(), KEYWORD_MAX),
        host,
        user: agent.and_then(|a| opt_text(a.username.as_deref(), KEYWORD_MAX)),
        invalid: dropped.total() - before,
    })
}

pub(super) fn link_doc(
    head: &Head,
    v: LinkValues,
    link: Link,
    observed: Timestamp,
    settings: &DocSettings,
) -> LinkDoc {
    let LinkValues {
        link_id,
        status,
        finish: finish_ts,
        decide,
        collect,
        reported,
        technique_id,
        technique_name,
        tactic,
        paw,
        host,
        user,
        ..
    } = v;
    let start = head.start;
    let tags = head.tags.clone();
    let operation_id = &head.operation_id;
    let operation_name = &head.operation_name;
    let client_id = &head.client_id;
    let ability = link.ability.unwrap_or_default();
    let started = reported.or(collect);
    let when = started.or(decide).or(start).unwrap_or(observed);
    let command = if settings.include_command {
        link.plaintext_command
            .as_deref()
            .or(link.command.as_deref())
            .map(|c| clean_command(c, settings.command_max_chars))
            .filter(|c| !c.is_empty())
    } else {
        None
    };
    let executor = link.executor.unwrap_or_default();
    let outcome = match status.code {
        0 => Some("success"),
        1 | 124 => Some("failure"),
        _ => None,
    };
    LinkDoc {
        at_timestamp: when,
        timestamp: when,
        purple_team_exercise: true,
        tags,
        severity: settings.severity.clone(),
        operation_id: operation_id.clone(),
        operation_name: operation_name.clone(),
        client_id: client_id.clone(),
        event: Event {
            kind: "event",
            module: "caldera",
            dataset: "caldera.link",
            id: link_doc_id(&link_id),
            start: started,
            end: finish_ts,
            outcome,
        },
        link_id,
        ability_id: opt_text(ability.ability_id.as_deref(), KEYWORD_MAX),
        ability_name: opt_text(ability.name.as_deref(), NAME_MAX),
        threat: Threat {
            framework: "MITRE ATT&CK",
            technique: ThreatIds {
                id: technique_id.iter().cloned().collect(),
                name: technique_name.iter().cloned().collect(),
            },
            tactic: ThreatTactic {
                name: tactic.iter().cloned().collect(),
            },
        },
        technique_id,
        technique_name,
        tactic,
        status: status.name(),
        status_code: status.code,
        cleanup: link.cleanup.unwrap_or(0) != 0,
        paw,
        executor: opt_text(executor.name.as_deref(), KEYWORD_MAX),
        platform: opt_text(executor.platform.as_deref(), KEYWORD_MAX),
        decide,
        collect,
        finish: finish_ts,
        agent_reported_time: reported,
        host: host.map(|name| HostRef { name }),
        user: user.map(|name| UserRef { name }),
        process: Process {
            pid: link.pid.as_ref().and_then(|p| p.as_i64()),
            command_line: command,
        },
        output: None,
    }
}
