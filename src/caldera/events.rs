//! The watcher's answer to events pushed by the Caldera plugin ([`super::push`]).
//!
//! A burst is collected for a few milliseconds (one link result fires two events ~0.5 ms apart,
//! a natural end fires `operation/completed` 6 ms before its state change), then:
//! * each changed link is fetched once, alone (~4 ms of Caldera whatever the operation's size);
//! * a state change and an end time are taken from the events themselves: no request;
//! * each touched operation's document is rebuilt from its kept context
//!   ([`super::context`]), so its link counts, techniques and state are current after every
//!   event, not only after a whole fetch.
//!
//! An operation is fetched whole only when the events cannot tell: it is new (no event
//! announces an operation; its first link result does), it has no kept context (settled, or
//! never fetched), or a link comes from an agent its context does not know.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::client::CalderaError;
use super::model::OperationSummary;
use super::push::PushEvent;
use super::watcher::{Tracked, Watcher};
use crate::document::types::{LinkId, OperationId, Timestamp};

/// Events are collected this long after the first one before acting on them.
const COALESCE: Duration = Duration::from_millis(15);

/// One burst of events, grouped by what it asks of the watcher.
#[derive(Debug, Default, PartialEq)]
struct Burst {
    /// Link results, once each, in arrival order.
    links: Vec<(OperationId, LinkId)>,
    /// Operations with an operation event, with the last state pushed (`None`: only
    /// `operation/completed`).
    states: Vec<(OperationId, Option<String>)>,
    /// End times from `operation/completed`.
    finish_at: HashMap<OperationId, Timestamp>,
}

fn group(batch: Vec<PushEvent>) -> Burst {
    let mut b = Burst::default();
    let mut seen_links: HashSet<(OperationId, LinkId)> = HashSet::new();
    fn state_of(b: &mut Burst, op: OperationId) -> usize {
        match b.states.iter().position(|(o, _)| *o == op) {
            Some(i) => i,
            None => {
                b.states.push((op, None));
                b.states.len() - 1
            }
        }
    }
    for e in batch {
        match e {
            PushEvent::State { operation, to } => {
                let i = state_of(&mut b, operation);
                b.states[i].1 = Some(to);
            }
            PushEvent::Completed { operation, at } => {
                if let Some(at) = at.filter(|a| a.is_finite() && *a > 0.0) {
                    // Caldera's `finish` is whole seconds.
                    let secs = at.floor() as u64;
                    b.finish_at.insert(
                        operation.clone(),
                        Timestamp::from_unix_micros(secs.saturating_mul(1_000_000)),
                    );
                }
                state_of(&mut b, operation);
            }
            PushEvent::Link {
                operation: Some(op),
                link,
            } => {
                if seen_links.insert((op.clone(), link.clone())) {
                    b.links.push((op, link));
                }
            }
            // Links of no operation (an agent's bootstrap) and new agents: nothing to index (a
            // new agent's first link of an open operation brings a whole fetch).
            PushEvent::Link {
                operation: None, ..
            }
            | PushEvent::Agent => {}
        }
    }
    b
}

impl Watcher {
    /// Pushed events: collect a short burst, then act on it (see the module docs).
    pub(super) async fn on_events(&mut self, first: PushEvent) {
        tokio::time::sleep(COALESCE).await;
        let mut batch = vec![first];
        while batch.len() < super::push::QUEUE {
            match self.events.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        tracing::debug!(events = batch.len(), "pushed events");
        let Burst {
            links,
            states,
            mut finish_at,
        } = group(batch);
        let mut whole: Vec<OperationId> = Vec::new();
        let mut touched: Vec<OperationId> = Vec::new();
        let want = |v: &mut Vec<OperationId>, op: &OperationId| {
            if !v.contains(op) {
                v.push(op.clone());
            }
        };

        for (op, to) in states {
            if !self.ops.contains_key(&op) {
                want(&mut whole, &op);
                continue;
            }
            self.unsettle(&op);
            if let Some(f) = finish_at.remove(&op)
                && let Some(t) = self.ops.get_mut(&op)
            {
                t.finish_from_event = Some(f);
            }
            if self.apply_pushed_state(&op, to.as_deref()) {
                want(&mut touched, &op);
            } else {
                want(&mut whole, &op);
            }
        }

        let now = Instant::now();
        for (op, link) in links {
            if whole.contains(&op) {
                continue;
            }
            if !self.ops.contains_key(&op) {
                want(&mut whole, &op);
                continue;
            }
            self.unsettle(&op);
            tracing::debug!(operation = %op, link = %link, "pushed link result: fetching the link");
            match self.fetch_link(&op, &link).await {
                Ok(true) => {
                    self.record_ok();
                    want(&mut touched, &op);
                }
                Ok(false) => want(&mut whole, &op),
                Err(e) => {
                    self.record_error(&e);
                    if let Some(t) = self.ops.get_mut(&op) {
                        t.want_fetch = Some(now);
                    }
                }
            }
        }

        for op in touched {
            if !whole.contains(&op) {
                self.rebuild_operation(&op).await;
            }
        }

        for op in whole {
            tracing::debug!(operation = %op, "pushed event: fetching the operation");
            let t = self.ops.entry(op.clone()).or_insert_with(|| {
                // First seen through push: the fetch fills in the listing's fields.
                Tracked::new(
                    OperationSummary {
                        id: op.as_str().to_string(),
                        name: String::new(),
                        state: String::new(),
                        start: None,
                        group: None,
                    },
                    false,
                )
            });
            t.done_since = None;
            t.settling_doc = None;
            if let Some(f) = finish_at.remove(&op) {
                t.finish_from_event = Some(f);
            }
            self.unsettle(&op);
            match self.refresh(&op).await {
                Ok(()) => self.record_ok(),
                Err(CalderaError::NotFound { .. }) => {
                    self.ops.remove(&op);
                }
                Err(e) => {
                    self.record_error(&e);
                    if let Some(t) = self.ops.get_mut(&op) {
                        t.want_fetch = Some(Instant::now());
                    }
                }
            }
        }
        self.publish();
    }

    /// Something changed in a settled operation: it is followed again.
    fn unsettle(&mut self, op: &OperationId) {
        if let Some(t) = self.ops.get_mut(op)
            && t.settled
        {
            t.settled = false;
            self.memory.unsettled(op.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(n: u8) -> OperationId {
        OperationId::parse(&format!("00000000-0000-4000-8000-0000000000{n:02}")).expect("id")
    }
    fn link(n: u8) -> LinkId {
        LinkId::parse(&format!("10000000-0000-4000-8000-0000000000{n:02}")).expect("id")
    }

    #[test]
    fn a_burst_is_grouped_by_what_it_asks() {
        let b = group(vec![
            PushEvent::Link {
                operation: Some(op(1)),
                link: link(1),
            },
            // The second event of the same result.
            PushEvent::Link {
                operation: Some(op(1)),
                link: link(1),
            },
            PushEvent::Link {
                operation: None,
                link: link(2),
            },
            PushEvent::Completed {
                operation: op(1),
                at: Some(1_795_880_745.9),
            },
            PushEvent::State {
                operation: op(1),
                to: "cleanup".into(),
            },
            PushEvent::State {
                operation: op(1),
                to: "finished".into(),
            },
            PushEvent::Completed {
                operation: op(2),
                at: Some(f64::NAN),
            },
            PushEvent::Agent,
        ]);
        assert_eq!(b.links, vec![(op(1), link(1))]);
        assert_eq!(
            b.states,
            vec![(op(1), Some("finished".to_string())), (op(2), None)]
        );
        assert_eq!(b.finish_at.len(), 1);
        assert_eq!(
            b.finish_at[&op(1)],
            Timestamp::parse("2026-11-28T15:45:45Z").expect("ts")
        );
    }
}
