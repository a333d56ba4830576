//! What to do with one alert: a pure decision from the alert as it is now, its best tier, the
//! configured action and what the stage did to it before.
//!
//! The rules that protect analysts:
//! * an alert someone already acknowledged or closed is never touched (not even tagged);
//! * an alert we closed (or acknowledged) that is `open` again was re-opened by someone on
//!   purpose: it is left alone for good. "We acted" is remembered twice: in the correlation
//!   record (`action.result: applied`) and on the alert itself (our `caldera:link:<id>` tag);
//!   either is enough, so losing the correlation index never leads to re-closing;
//! * only tiers in `ALERT_TIERS` are acted on; tier 3 never is.

use std::collections::BTreeSet;

use super::alert::Alert;
use super::settings::Action;

/// The tag every alert we act on gets, beside `caldera:operation:<id>` and `caldera:link:<id>`.
pub const EXERCISE_TAG: &str = "purple_team_exercise";

/// The outcome recorded for an alert (and counted in `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Changed as configured.
    Applied,
    /// Dry run: this is what would have been done.
    WouldApply,
    /// Already in the state we would put it in.
    AlreadyDone,
    /// An analyst acknowledged or closed it first.
    SkippedHandled,
    /// We closed it and someone re-opened it.
    SkippedReopened,
    /// Its tier is not in `ALERT_TIERS`, or `ALERT_ACTION=none`.
    NotActed,
    /// Someone changed it between our read and our write; looked at again next pass.
    Conflict,
    /// The write failed; tried again next pass.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Applied,
        Outcome::WouldApply,
        Outcome::AlreadyDone,
        Outcome::SkippedHandled,
        Outcome::SkippedReopened,
        Outcome::NotActed,
        Outcome::Conflict,
        Outcome::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::WouldApply => "would_apply",
            Outcome::AlreadyDone => "already_done",
            Outcome::SkippedHandled => "skipped_handled",
            Outcome::SkippedReopened => "skipped_reopened",
            Outcome::NotActed => "not_acted",
            Outcome::Conflict => "conflict",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == s)
    }

    /// Outcomes that are looked at again on the next pass.
    pub fn retry(self) -> bool {
        matches!(self, Outcome::Conflict | Outcome::Failed)
    }
}

/// A change to make to an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The workflow status to set, if the action sets one.
    pub status: Option<&'static str>,
    /// Every tag the alert should carry afterwards (its own plus ours).
    pub tags: Vec<String>,
    /// Only ours, for backends that add tags (Kibana).
    pub added: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Change(Change),
    Leave(Outcome),
}

/// Our tags for an alert caused by these (operation, link) pairs.
pub fn our_tags<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut tags = BTreeSet::new();
    tags.insert(EXERCISE_TAG.to_string());
    for (op, link) in pairs {
        tags.insert(format!("caldera:operation:{op}"));
        tags.insert(format!("caldera:link:{link}"));
    }
    tags.into_iter().collect()
}

/// Decides for one alert whose best tier is `tier`; `ours` are the tags it should get;
/// `previous` is the outcome recorded for it by an earlier pass, if any.
pub fn decide(
    alert: &Alert,
    tier: u8,
    acted_tiers: &BTreeSet<u8>,
    action: Action,
    ours: &[String],
    previous: Option<Outcome>,
) -> Decision {
    if tier >= 3 || !acted_tiers.contains(&tier) || action == Action::None {
        return Decision::Leave(Outcome::NotActed);
    }
    let tagged_by_us = alert
        .workflow_tags
        .iter()
        .any(|t| t.starts_with("caldera:link:"));
    let acted_before = tagged_by_us || previous == Some(Outcome::Applied);
    let has_all_tags = ours.iter().all(|t| alert.workflow_tags.contains(t));
    match action.status() {
        Some(target) => {
            if alert.workflow_status == target && acted_before {
                return Decision::Leave(Outcome::AlreadyDone);
            }
            if alert.handled() {
                return Decision::Leave(Outcome::SkippedHandled);
            }
            // Open again after we changed it: someone re-opened it on purpose. (A tag from an
            // attempt whose status change failed is recorded as failed, and retried.)
            if acted_before && !previous.is_some_and(Outcome::retry) {
                return Decision::Leave(Outcome::SkippedReopened);
            }
        }
        None => {
            if has_all_tags {
                return Decision::Leave(Outcome::AlreadyDone);
            }
            if alert.handled() {
                return Decision::Leave(Outcome::SkippedHandled);
            }
        }
    }
    let mut tags = alert.workflow_tags.clone();
    let mut added = Vec::new();
    for t in ours {
        if !tags.contains(t) {
            tags.push(t.clone());
            added.push(t.clone());
        }
    }
    Decision::Change(Change {
        status: action.status(),
        tags,
        added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert(status: &str, tags: &[&str]) -> Alert {
        Alert::from_hit(&json!({"_index": "i", "_id": "a", "_source": {
            "kibana.alert.uuid": "a", "kibana.alert.original_time": "2026-01-01T00:00:00Z",
            "host.name": "vm", "kibana.alert.workflow_status": status,
            "kibana.alert.workflow_tags": tags}}))
        .unwrap()
    }

    #[test]
    fn analysts_win() {
        let tiers = BTreeSet::from([1]);
        let ours = our_tags([("op", "l1")].into_iter());
        let d = |a: &Alert, tier, prev| decide(a, tier, &tiers, Action::Close, &ours, prev);
        match d(&alert("open", &["x"]), 1, None) {
            Decision::Change(c) => {
                assert_eq!(c.status, Some("closed"));
                assert!(c.tags.contains(&"x".to_string()));
                assert!(c.tags.contains(&"caldera:link:l1".to_string()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d(&alert("open", &[]), 2, None),
            Decision::Leave(Outcome::NotActed)
        );
        assert_eq!(
            d(&alert("open", &[]), 3, None),
            Decision::Leave(Outcome::NotActed)
        );
        assert_eq!(
            d(&alert("acknowledged", &[]), 1, None),
            Decision::Leave(Outcome::SkippedHandled)
        );
        assert_eq!(
            d(&alert("closed", &[]), 1, None),
            Decision::Leave(Outcome::SkippedHandled)
        );
        let tagged = [
            "purple_team_exercise",
            "caldera:link:l1",
            "caldera:operation:op",
        ];
        assert_eq!(
            d(&alert("closed", &tagged), 1, None),
            Decision::Leave(Outcome::AlreadyDone)
        );
        assert_eq!(
            d(&alert("open", &tagged), 1, None),
            Decision::Leave(Outcome::SkippedReopened)
        );
        assert_eq!(
            d(&alert("open", &[]), 1, Some(Outcome::Applied)),
            Decision::Leave(Outcome::SkippedReopened),
            "the record remembers even when the tags were removed"
        );
        assert!(matches!(
            d(&alert("open", &tagged), 1, Some(Outcome::Failed)),
            Decision::Change(_)
        ));
        let tag_only = decide(&alert("open", &tagged), 1, &tiers, Action::Tag, &ours, None);
        assert_eq!(tag_only, Decision::Leave(Outcome::AlreadyDone));
    }
}
