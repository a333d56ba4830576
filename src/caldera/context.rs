//! What an open operation's documents are built from between whole fetches.
//!
//! A whole fetch costs Caldera ~2.5 ms per link of the operation, one link ~4 ms whatever the
//! operation's size. With push every change arrives as an event: a link result (that link is
//! fetched alone) or a state change (the event carries the new state). Keeping the operation's
//! own fields and the tally of its links ([`crate::document::Tally`]: techniques, hosts, counts
//! by status, ~30 bytes a link), the watcher builds the link document and the operation
//! document exactly as a whole fetch would have: a running operation is fetched whole once,
//! when it is discovered, and again only when a link comes from an agent it did not know. Kept
//! only while the operation is not settled.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::model::{Agent, Operation};
use crate::document::Tally;

#[derive(Debug)]
pub(super) struct OpContext {
    /// The operation without `chain`: scalar fields, adversary, planner, the agent fields used.
    head: Map<String, Value>,
    /// The paws of `host_group`: a link of another agent needs a whole fetch for its fields.
    paws: HashSet<String>,
    /// What the links add up to, as of the last whole fetch and the single links since.
    pub(super) tally: Tally,
}

impl OpContext {
    /// The context of `op` as fetched, with the tally its build made.
    pub(super) fn new(op: &Operation<'_>, tally: Tally) -> Self {
        let mut paws = HashSet::new();
        let agents: Vec<Value> = op
            .host_group
            .iter()
            .flatten()
            .map(|raw| match serde_json::from_str::<Agent>(raw.get()) {
                Ok(a) => {
                    paws.insert(a.paw.clone());
                    json!({"paw": a.paw, "username": a.username, "host": a.host,
                           "platform": a.platform, "privilege": a.privilege})
                }
                // Kept as sent, so a rebuild counts it as dropped like a whole fetch does.
                Err(_) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            })
            .collect();
        let adversary = op
            .adversary
            .as_ref()
            .map(|a| json!({"adversary_id": a.adversary_id, "name": a.name}));
        let planner = op
            .planner
            .as_ref()
            .map(|p| json!({"id": p.id, "name": p.name}));
        let head = json!({
            "id": op.id, "name": op.name, "state": op.state, "start": op.start,
            "group": op.group, "auto_close": op.auto_close, "adversary": adversary,
            "planner": planner, "host_group": agents,
        });
        let head = match head {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        Self { head, paws, tally }
    }

    /// Whether `paw` is one of the operation's agents as last fetched.
    pub(super) fn knows_agent(&self, paw: &str) -> bool {
        self.paws.contains(paw)
    }

    pub(super) fn state(&self) -> &str {
        self.head.get("state").and_then(Value::as_str).unwrap_or("")
    }

    /// A pushed state change (`operation/state_changed` carries the new state).
    pub(super) fn set_state(&mut self, state: &str) {
        self.head
            .insert("state".into(), Value::String(state.to_string()));
    }

    /// An operation body holding one link: what that link's document is built from.
    pub(super) fn link_body(&self, raw_link: &str) -> String {
        let head = Value::Object(self.head.clone()).to_string();
        let mut out = String::with_capacity(head.len() + raw_link.len() + 16);
        out.push_str(&head[..head.len().saturating_sub(1)]);
        out.push_str(",\"chain\":[");
        out.push_str(raw_link.trim());
        out.push_str("]}");
        out
    }

    /// The operation's own fields, without links: with [`Self::tally`], what the operation
    /// document is built from ([`crate::document::build_operation`]).
    pub(super) fn head_body(&self) -> String {
        Value::Object(self.head.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::types::Timestamp;
    use crate::document::{self, DocSettings};

    fn fixture(name: &str) -> Value {
        let dir = std::env::var("CALDERA_FIXTURES_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/caldera")
            });
        serde_json::from_slice(&std::fs::read(dir.join(name)).expect("fixture")).expect("json")
    }

    fn observed() -> Timestamp {
        Timestamp::parse("2026-11-28T16:00:00Z").expect("ts")
    }

    /// A whole fetch of `body`: its operation document, whether all links are done, and the
    /// context the watcher keeps.
    fn whole(body: &str) -> (Value, bool, OpContext) {
        let op: Operation = serde_json::from_str(body).expect("operation");
        let head = op.clone();
        let built = document::build_with(
            op,
            None,
            false,
            observed(),
            &DocSettings::default(),
            &mut |_, _| false,
        )
        .expect("built");
        let doc = serde_json::to_value(&built.operation).expect("json");
        (
            doc,
            built.all_links_done,
            OpContext::new(&head, built.tally),
        )
    }

    fn rebuilt(ctx: &OpContext) -> (Value, bool) {
        let head = ctx.head_body();
        let op: Operation = serde_json::from_str(&head).expect("head");
        let (doc, done) =
            document::build_operation(op, &ctx.tally, None, observed(), &DocSettings::default())
                .expect("built");
        (serde_json::to_value(&doc).expect("json"), done)
    }

    /// A link fetched on its own, built in the context and taken into its tally.
    fn push_link(ctx: &mut OpContext, link: &Value) {
        let body = ctx.link_body(&link.to_string());
        let op: Operation = serde_json::from_str(&body).expect("operation");
        let built = document::build_with(
            op,
            None,
            false,
            observed(),
            &DocSettings::default(),
            &mut |_, _| true,
        )
        .expect("built");
        assert_eq!(built.links.len(), 1);
        ctx.tally.merge_links(built.tally);
    }

    /// The operation document rebuilt from the kept context equals the one a whole fetch
    /// builds, for every recorded operation (finished, stopped, out of time, discarded links,
    /// timeouts and errors, empty group), and the context is much smaller than the operation.
    #[test]
    fn the_kept_context_builds_the_same_operation_document() {
        for name in [
            "operation_finished.json",
            "operation_running.json",
            "operation_stopped_final.json",
            "operation_out_of_time.json",
            "operation_with_discarded_link.json",
            "operation_with_timeout_and_error_links.json",
            "operation_empty_group_finished.json",
            "operation_auto_close_false_finished.json",
        ] {
            let body = fixture(name).to_string();
            let (doc, done, ctx) = whole(&body);
            assert_eq!(rebuilt(&ctx), (doc, done), "{name}");
            assert!(ctx.head_body().len() < 2048, "{name}");
        }
    }

    /// Link results and a state change applied to the context give what a whole fetch of the
    /// changed operation gives, invalid values included.
    #[test]
    fn pushed_changes_update_the_kept_context() {
        let done = fixture("operation_finished.json");
        let last = done["chain"].as_array().expect("chain").len() - 1;
        // The same operation while running: its last link in flight, one link with a hostile
        // technique id, one link Caldera sent garbled.
        let mut running = done.clone();
        running["state"] = json!("running");
        running["chain"][last]["status"] = json!(-3);
        running["chain"][last]["finish"] = Value::Null;
        running["chain"][1]["ability"]["technique_id"] = json!("T1082<script>");
        running["chain"]
            .as_array_mut()
            .expect("chain")
            .push(json!({"id": 7}));
        let (doc, all_done, mut ctx) = whole(&running.to_string());
        assert!(!all_done);
        assert_eq!(doc["status"], "running");
        assert_eq!(doc["invalid_values"], 2);
        assert_eq!(rebuilt(&ctx), (doc, false));

        let paw = done["chain"][last]["paw"].as_str().expect("paw");
        assert!(ctx.knows_agent(paw));
        assert!(!ctx.knows_agent("nosuchpaw"));
        push_link(&mut ctx, &done["chain"][last]);
        push_link(&mut ctx, &done["chain"][1]);
        ctx.set_state("finished");
        assert_eq!(ctx.state(), "finished");
        // The garbled link is still there (a whole fetch would count it too).
        let mut expected = done.clone();
        expected["chain"]
            .as_array_mut()
            .expect("chain")
            .push(json!({"id": 7}));
        let (doc, all_done, _) = whole(&expected.to_string());
        assert!(all_done);
        assert_eq!(doc["invalid_values"], 1);
        assert_eq!(rebuilt(&ctx), (doc, true));
    }
}
