//! What an open operation's documents are built from between whole fetches.
//!
//! A whole fetch costs Caldera ~2.5 ms per link of the operation, one link ~4 ms whatever the
//! operation's size. With push every change arrives as an event: a link result (that link is
//! fetched alone) or a state change (the event carries the new state). Keeping the operation's
//! own fields and, for each link, the few fields the operation document aggregates (status,
//! times, technique, tactic, agent, host), the watcher builds both the link document and the
//! operation document exactly as a whole fetch would have: a running operation is fetched
//! whole once, when it is discovered, and again only when a link comes from an agent it did
//! not know. Kept only while the operation is not settled: ~0.3 KB per link.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

use super::model::{Agent, Link, Operation};

#[derive(Debug)]
pub(super) struct OpContext {
    /// The operation without `chain`: scalar fields, adversary, planner, the agent fields used.
    head: Map<String, Value>,
    /// The paws of `host_group`: a link of another agent needs a whole fetch for its fields.
    paws: HashSet<String>,
    /// Link id → the link reduced to what the operation document reads (or, for a link the
    /// builder cannot decode, its JSON as sent, so a rebuild drops it the same way).
    chain: BTreeMap<String, String>,
}

impl OpContext {
    pub(super) fn from_operation(op: &Operation<'_>) -> Self {
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
        let mut ctx = Self {
            head,
            paws,
            chain: BTreeMap::new(),
        };
        for raw in op.chain.iter().flatten() {
            ctx.set_link(raw.get());
        }
        ctx
    }

    /// Records a link's latest JSON (as Caldera sent it).
    pub(super) fn set_link(&mut self, raw: &str) {
        let (id, kept) = match serde_json::from_str::<Link>(raw) {
            Ok(l) => {
                let ability = l.ability.as_ref().map(|a| {
                    json!({"technique_id": a.technique_id, "technique_name": a.technique_name,
                           "tactic": a.tactic})
                });
                let digest = json!({
                    "id": l.id, "status": l.status, "paw": l.paw, "host": l.host,
                    "decide": l.decide, "collect": l.collect, "finish": l.finish,
                    "agent_reported_time": l.agent_reported_time, "ability": ability,
                });
                (l.id, digest.to_string())
            }
            // Undecodable: kept as sent (bounded by the body cap), keyed by its id if it has one,
            // so the operation document counts it as dropped like a whole fetch does.
            Err(_) => {
                let id = serde_json::from_str::<Value>(raw)
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| format!("#{}", self.chain.len()));
                (id, raw.to_string())
            }
        };
        self.chain.insert(id, kept);
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
        self.body(std::iter::once(raw_link.trim()))
    }

    /// An operation body holding every link as kept: what the operation document is built from.
    pub(super) fn operation_body(&self) -> String {
        self.body(self.chain.values().map(String::as_str))
    }

    fn body<'a>(&self, links: impl Iterator<Item = &'a str>) -> String {
        let head = Value::Object(self.head.clone()).to_string();
        let mut out = String::with_capacity(head.len() + 16 + self.chain.len() * 320);
        out.push_str(&head[..head.len().saturating_sub(1)]);
        out.push_str(",\"chain\":[");
        for (i, l) in links.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(l);
        }
        out.push_str("]}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::types::Timestamp;
    use crate::document::{self, DocSettings};

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::env::var("CALDERA_FIXTURES_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/caldera")
            });
        std::fs::read(dir.join(name)).expect("fixture")
    }

    fn op_doc(body: &[u8]) -> (Value, bool) {
        let op: Operation = serde_json::from_slice(body).expect("operation");
        let observed = Timestamp::parse("2026-11-28T16:00:00Z").expect("ts");
        let built = document::build_with(
            op,
            None,
            false,
            observed,
            &DocSettings::default(),
            &mut |_, _| false,
        )
        .expect("built");
        (
            serde_json::to_value(&built.operation).expect("json"),
            built.all_links_done,
        )
    }

    /// The operation document rebuilt from the kept context equals the one a whole fetch
    /// builds, for every recorded operation (finished, stopped, out of time, discarded links,
    /// timeouts and errors, empty group).
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
            let body = fixture(name);
            let op: Operation = serde_json::from_slice(&body).expect("operation");
            let ctx = OpContext::from_operation(&op);
            let kept = ctx.operation_body();
            assert!(kept.len() < body.len() / 2 || body.len() < 4096, "{name}");
            assert_eq!(op_doc(kept.as_bytes()), op_doc(&body), "{name}");
        }
    }

    /// A link result and a state change applied to the context give what a whole fetch of the
    /// changed operation gives.
    #[test]
    fn pushed_changes_update_the_kept_context() {
        let done = fixture("operation_finished.json");
        let done_v: Value = serde_json::from_slice(&done).expect("json");
        // The same operation while running, its last link still in flight.
        let mut running = done_v.clone();
        running["state"] = json!("running");
        let chain = running["chain"].as_array_mut().expect("chain");
        let last = chain.len() - 1;
        chain[last]["status"] = json!(-3);
        chain[last]["finish"] = Value::Null;
        let running = serde_json::to_vec(&running).expect("json");
        let op: Operation = serde_json::from_slice(&running).expect("operation");
        let mut ctx = OpContext::from_operation(&op);
        let (doc, all_done) = op_doc(ctx.operation_body().as_bytes());
        assert!(!all_done);
        assert_eq!(doc["status"], "running");

        let final_link = done_v["chain"][last].to_string();
        let paw = done_v["chain"][last]["paw"].as_str().expect("paw");
        assert!(ctx.knows_agent(paw));
        assert!(!ctx.knows_agent("nosuchpaw"));
        ctx.set_link(&final_link);
        ctx.set_state("finished");
        assert_eq!(ctx.state(), "finished");
        let (doc, all_done) = op_doc(ctx.operation_body().as_bytes());
        assert!(all_done);
        assert_eq!((doc, all_done), op_doc(&done));

        // One link in the operation's context builds that link's document alone.
        let one = ctx.link_body(&final_link);
        let op: Operation = serde_json::from_str(&one).expect("operation");
        assert_eq!(op.chain.map(|c| c.len()), Some(1));
    }
}
