//! What an operation's links add up to on its operation document: techniques, tactics, hosts,
//! agents, counts by status, whether every link is done, and the invalid values dropped.
//!
//! Kept apart from the link documents so that it can be kept between observations: with push,
//! the watcher fetches single links and must rebuild the operation document without fetching
//! the whole operation again. A link's technique, tactic, agent and host never change over its
//! life, so they are kept as sets; only its status, done-ness and invalid values are kept per
//! link (~30 bytes a link, keyed by a hash of its id), and replaced when the link is seen again.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use super::schema::LinkCounts;
use super::types::{LinkId, LinkStatus, Tactic, TechniqueId};

/// At most this many technique names are kept (the ids are capped by `MAX_TECHNIQUES` when the
/// document is made; the true number is `technique_count_total`).
const MAX_NAMES: usize = super::MAX_TECHNIQUES;

#[derive(Debug, Clone, Copy)]
struct Mark {
    status: LinkStatus,
    done: bool,
    invalid: u16,
}

/// One link as the operation document sees it.
#[derive(Debug)]
pub(super) struct LinkPart<'a> {
    pub id: &'a LinkId,
    pub status: LinkStatus,
    pub done: bool,
    /// Values dropped from this link (timestamps, technique id, tactic).
    pub invalid: usize,
    pub technique_id: Option<&'a TechniqueId>,
    pub technique_name: Option<&'a String>,
    pub tactic: Option<&'a Tactic>,
    pub host: Option<&'a String>,
    pub paw: Option<&'a String>,
}

#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub(super) techniques: BTreeSet<TechniqueId>,
    pub(super) technique_names: BTreeSet<String>,
    pub(super) tactics: BTreeSet<Tactic>,
    pub(super) hosts: BTreeSet<String>,
    pub(super) paws: BTreeSet<String>,
    links: HashMap<u64, Mark>,
    /// Links that could not be read at all (undecodable, or an invalid id).
    unreadable: usize,
}

fn key(id: &LinkId) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.as_str().hash(&mut h);
    h.finish()
}

impl Tally {
    /// Records a link (replacing what was held for it).
    pub(super) fn add(&mut self, p: LinkPart<'_>) {
        self.links.insert(
            key(p.id),
            Mark {
                status: p.status,
                done: p.done,
                invalid: u16::try_from(p.invalid).unwrap_or(u16::MAX),
            },
        );
        if let Some(t) = p.technique_id {
            self.techniques.insert(t.clone());
        }
        if let Some(n) = p.technique_name
            && self.technique_names.len() < MAX_NAMES
        {
            self.technique_names.insert(n.clone());
        }
        if let Some(t) = p.tactic {
            self.tactics.insert(t.clone());
        }
        if let Some(h) = p.host {
            self.hosts.insert(h.clone());
        }
        if let Some(w) = p.paw {
            self.paws.insert(w.clone());
        }
    }

    pub(super) fn unreadable_link(&mut self) {
        self.unreadable += 1;
    }

    /// Takes in the links of `other` (a build of single links fetched on their own): their
    /// marks replace the ones held, their sets are added. A link `other` could not read is not
    /// counted again (the whole fetch that follows counts it).
    pub fn merge_links(&mut self, other: Tally) {
        self.links.extend(other.links);
        self.techniques.extend(other.techniques);
        for n in other.technique_names {
            if self.technique_names.len() >= MAX_NAMES {
                break;
            }
            self.technique_names.insert(n);
        }
        self.tactics.extend(other.tactics);
        self.hosts.extend(other.hosts);
        self.paws.extend(other.paws);
    }

    pub(super) fn counts(&self) -> LinkCounts {
        let mut c = LinkCounts::default();
        for m in self.links.values() {
            c.total += 1;
            match m.status.name() {
                "success" => c.success += 1,
                "error" => c.error += 1,
                "timeout" => c.timeout += 1,
                "discarded" => c.discarded += 1,
                "queued" => c.queued += 1,
                "in_flight" => c.in_flight += 1,
                _ => c.other += 1,
            }
        }
        c
    }

    /// Every link that is not discarded has its result.
    pub(super) fn all_done(&self) -> bool {
        self.links.values().all(|m| m.done)
    }

    /// Values dropped from links: whole links that could not be read, and invalid values
    /// inside the others.
    pub(super) fn invalid(&self) -> usize {
        self.unreadable
            + self
                .links
                .values()
                .map(|m| usize::from(m.invalid))
                .sum::<usize>()
    }
}
