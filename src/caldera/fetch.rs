//! Fetching: one whole operation (built into all its documents), or one link (built into its
//! document alone, from the operation context kept since the last whole fetch), and the
//! operation document rebuilt from that context after pushed changes.
//!
//! A whole fetch costs Caldera in proportion to the operation's links (~2.5 ms each on a real
//! Caldera 5.3.0); one link costs ~4 ms whatever the operation's size. So on a pushed link event
//! only that link is fetched, a pushed state change is applied without a request, and an
//! operation is fetched whole when it is discovered, when push is not live, or when the kept
//! context cannot tell (see [`super::context`]).

use std::collections::HashMap;
use std::time::Instant;

use super::client::{CalderaClient, CalderaError};
use super::context::OpContext;
use super::fingerprint::SequenceClock;
use super::fingerprint::{
    content_base, hash_bytes, id_key, link_context, link_input, push_if_changed, with_finish,
};
use super::model::{Link, Operation, OperationSummary, Report};
use super::watcher::{LastBody, Tracked, Watcher};
use crate::document::types::{LinkId, OperationId, OperationState, Timestamp};
use crate::document::{self, Encoded};

impl Watcher {
    /// Fetches one operation, builds its documents and sends those that changed.
    /// Its cost (the request, and the report when one is asked) is measured and spaces the
    /// next whole fetches ([`super::budget`]).
    pub(super) async fn refresh(&mut self, id: &OperationId) -> Result<(), CalderaError> {
        let path = super::operation_path(id.as_str());
        let started = Instant::now();
        let body = self.client.get_bytes(&path).await;
        let mut cost = started.elapsed();
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                self.spent_on_operation(cost);
                return Err(e);
            }
        };
        let result = self.apply(id, &path, &body, &mut cost).await;
        self.spent_on_operation(cost);
        let len = body.len();
        drop(body);
        crate::memory::transient_freed(len);
        result
    }

    /// Fetches one link, sends its document if it changed and records it in the operation's
    /// kept context (the caller then rebuilds the operation document with
    /// [`Self::rebuild_operation`]). `Ok(false)`: this operation has no context to build from
    /// yet, the link comes from an agent the context does not know, or Caldera does not know
    /// the link there: the caller fetches the whole operation instead.
    pub(super) async fn fetch_link(
        &mut self,
        op: &OperationId,
        link: &LinkId,
    ) -> Result<bool, CalderaError> {
        let has_context = self
            .ops
            .get(op)
            .is_some_and(|t| t.context.is_some() && t.last_body.is_some());
        if !has_context {
            return Ok(false);
        }
        let path = super::link_path(op.as_str(), link.as_str());
        let started = Instant::now();
        let res = self.client.get_bytes(&path).await;
        self.spent_on_link(started.elapsed());
        let raw = match res {
            Ok(b) => b,
            Err(CalderaError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(t) = self.ops.get_mut(op) else {
            return Ok(false);
        };
        let (Some(ctx), Some(last)) = (&t.context, &t.last_body) else {
            return Ok(false);
        };
        let raw_text = std::str::from_utf8(&raw).map_err(|e| CalderaError::Decode {
            path: path.clone(),
            bytes: raw.len(),
            message: e.to_string(),
        })?;
        let parsed: Link = CalderaClient::decode(&path, raw_text.as_bytes())?;
        if parsed.paw.as_deref().is_some_and(|p| !ctx.knows_agent(p)) {
            // A new agent joined the operation's group: its fields come with the operation.
            return Ok(false);
        }
        // The single link inside the kept operation context: the same builder as a whole
        // fetch, so the link document is exactly what a whole fetch would have produced.
        let body = ctx.link_body(raw_text);
        let o: Operation = CalderaClient::decode(&path, body.as_bytes())?;
        let built = build_changed(
            o,
            t.finish,
            Timestamp::now(),
            &self.docs,
            &t.sent,
            last.link_context,
        );
        let (mut built, inputs) = match built {
            Ok(b) => b,
            Err(e) => {
                self.shared.stats.invalid_values.inc();
                tracing::warn!(error = %e, "link skipped");
                return Ok(true);
            }
        };
        if let Some(ctx) = &mut t.context {
            ctx.tally.merge_links(std::mem::take(&mut built.tally));
        }
        if self.settings.output.include {
            super::output::attach(&self.client, &mut built.links, &self.settings.output).await;
        }
        let out = encode_links(&built.links, inputs, &mut t.sent, &self.clock);
        self.emit(out).await;
        Ok(true)
    }

    /// Applies a pushed state change (and the end time of a pushed `operation/completed`) to
    /// the kept context. `false`: no context, the caller fetches the operation whole.
    pub(super) fn apply_pushed_state(&mut self, op: &OperationId, to: Option<&str>) -> bool {
        let Some(t) = self.ops.get_mut(op) else {
            return false;
        };
        let Some(ctx) = &mut t.context else {
            return false;
        };
        if let Some(to) = to {
            let was_closed = OperationState::parse(ctx.state()).is_closed();
            ctx.set_state(to);
            t.summary.state = to.to_string();
            let now_closed = OperationState::parse(to).is_closed();
            if was_closed && !now_closed {
                // Re-opened: its end time is no longer true.
                t.finish = None;
                t.finish_from_event = None;
            }
            if let Some(l) = &mut t.last_body {
                // The next whole fetch must be read, not matched against the old bytes.
                l.hash = 0;
                l.state = OperationState::parse(to);
            }
        }
        true
    }

    /// Builds the operation document from its kept context (no request to Caldera) and sends it
    /// if it changed: after pushed link results and state changes. Its settle clock starts
    /// again, since something changed.
    pub(super) async fn rebuild_operation(&mut self, id: &OperationId) {
        let now = Instant::now();
        let Some(t) = self.ops.get_mut(id) else {
            return;
        };
        let Some(ctx) = &t.context else {
            return;
        };
        let body = ctx.head_body();
        let o: Operation = match CalderaClient::decode("(kept operation)", body.as_bytes()) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(operation = %id, error = %e, "kept operation context unreadable; fetching it");
                t.want_fetch = Some(now);
                return;
            }
        };
        let state = OperationState::parse(&o.state);
        // A pushed change counts as a look at the operation (see `due_at`).
        t.last_fetch = Some(now);
        if state.is_closed() {
            t.closed_since.get_or_insert(now);
            if t.finish.is_none() {
                t.finish = t.finish_from_event;
            }
        } else {
            t.closed_since = None;
            t.finish = None;
        }
        let built =
            document::build_operation(o, &ctx.tally, t.finish, Timestamp::now(), &self.docs);
        let (doc, all_done) = match built {
            Ok(b) => b,
            Err(e) => {
                self.shared.stats.invalid_values.inc();
                tracing::warn!(operation = %id, error = %e, "operation skipped");
                return;
            }
        };
        // Not a whole fetch's fingerprint: the next whole fetch builds everything again.
        t.content = Some((PUSHED, all_done));
        let mut out = Vec::with_capacity(1);
        let doc_id = doc.event.id.clone();
        push_if_changed(&mut out, &mut t.sent, &doc, doc_id, &self.clock);
        if all_done {
            // The settle clock starts again when the document changed (a repeated event
            // changes nothing and does not delay the settle).
            if !out.is_empty() || t.done_since.is_none() {
                t.done_since = Some(now);
            }
            t.settling_doc = Some(Box::new(doc));
        } else {
            t.done_since = None;
            t.settling_doc = None;
        }
        self.emit(out).await;
    }

    /// Hands documents to the sink (stops quietly when it is gone: shutting down).
    async fn emit(&self, out: Vec<crate::document::Encoded>) {
        for e in out {
            self.shared.stats.documents_emitted.inc();
            if self.out.send(e).await.is_err() {
                break;
            }
        }
    }

    /// Settles an operation without asking Caldera, when push is live: it was closed with every
    /// link done at its last fetch, the grace has passed since, and every change since would
    /// have been pushed (a late link result or state change resets `settling_doc`) and no
    /// event was reported lost meanwhile. Returns whether it settled.
    pub(super) async fn settle_quietly(&mut self, id: &OperationId) -> bool {
        let now = Instant::now();
        let lost_at = self.lost_at();
        let grace = self.settings.settle_grace;
        let Some(t) = self.ops.get_mut(id) else {
            return false;
        };
        let ready = t.settling_doc.is_some()
            && finish_ready(t)
            && t.done_since
                .is_some_and(|d| now.duration_since(d) >= grace && lost_at.is_none_or(|l| l < d));
        if !ready {
            return false;
        }
        let Some(mut doc) = t.settling_doc.take() else {
            return false;
        };
        doc.settled = true;
        let doc_id = doc.event.id.clone();
        let state = doc.status.as_str().to_string();
        let mut out = Vec::with_capacity(1);
        push_if_changed(&mut out, &mut t.sent, &*doc, doc_id, &self.clock);
        t.settled = true;
        t.sent = HashMap::new();
        t.context = None;
        t.content = None;
        self.memory.settled(id.as_str(), &state, now);
        tracing::info!(operation = %id, "operation settled (push live: no change reported during the grace)");
        self.emit(out).await;
        true
    }

    /// Builds the documents of one fetched operation and sends those that changed.
    async fn apply(
        &mut self,
        id: &OperationId,
        path: &str,
        body: &[u8],
        cost: &mut std::time::Duration,
    ) -> Result<(), CalderaError> {
        let now = Instant::now();
        let push_live = self.shared.intake.push_live(std::time::SystemTime::now());
        let Some(t) = self.ops.get_mut(id) else {
            return Ok(());
        };
        let resend = t.resend;
        // Most re-fetches (a running operation between changes, a closed one settling) return
        // the very same bytes: recognise them by a hash of the body and skip parsing them.
        let body_hash = hash_bytes(body);
        let same = t
            .last_body
            .as_ref()
            .filter(|l| l.hash == body_hash && !resend);
        let (op, state, context, base) = match same {
            Some(l) => (None, l.state.clone(), l.link_context, l.content_base),
            None => {
                let o: Operation = CalderaClient::decode(path, body)?;
                let state = OperationState::parse(&o.state);
                let context = link_context(&o);
                let base = content_base(&o, context);
                // The listing's fields, as of this fetch: a listing showing the same values
                // later is no change (an operation first seen through push is not fetched
                // twice).
                t.summary = OperationSummary {
                    id: o.id.clone(),
                    name: o.name.clone(),
                    state: o.state.clone(),
                    start: o.start.clone(),
                    group: o.group.clone(),
                };
                (Some(o), state, context, base)
            }
        };
        // Read: from here on the fetch counts (a malformed body leaves everything as it was).
        t.last_fetch = Some(now);
        t.want_fetch = None;
        t.resend = false;
        t.last_body = Some(LastBody {
            hash: body_hash,
            state: state.clone(),
            link_context: context,
            content_base: base,
        });
        if state.is_closed() {
            t.closed_since.get_or_insert(now);
            if t.finish.is_none() {
                t.finish = t.finish_from_event;
            }
        } else {
            t.closed_since = None;
            t.done_since = None;
            t.finish = None;
            t.finish_from_event = None;
        }
        // With push live, `operation/completed` brings the end time, seconds after a stop at
        // most: the report (as costly as the operation) is asked only if it has not come
        // within the settle grace.
        let await_event = push_live
            && t.closed_since
                .is_some_and(|c| now.duration_since(c) < self.settings.settle_grace);
        if state.is_closed()
            && t.finish.is_none()
            && !await_event
            && t.report_retry_at.is_none_or(|r| now >= r)
        {
            // The report is the only place Caldera gives an operation's end time. Right after
            // creation it can answer 500; we try again, at most once per idle interval.
            let body = serde_json::json!({"enable_agent_output": false});
            let asked = Instant::now();
            let report = self
                .client
                .post::<Report>(&super::report_path(id.as_str()), &body)
                .await;
            *cost += asked.elapsed();
            match report {
                Ok(r) => {
                    t.finish = r.finish.as_deref().and_then(|f| Timestamp::parse(f).ok());
                    if t.finish.is_none() {
                        // Closed but no end time yet (or an unreadable one): ask again later.
                        t.report_retry_at = Some(now + self.settings.idle_interval);
                        t.report_failures = t.report_failures.saturating_add(1);
                    }
                }
                Err(e) => {
                    t.report_retry_at = Some(now + self.settings.idle_interval);
                    t.report_failures = t.report_failures.saturating_add(1);
                    tracing::debug!(operation = %id, error = %e, "report not available yet");
                }
            }
        }
        let fingerprint = with_finish(base, t.finish);
        // With push live the build must run once to keep its context (see below).
        let needs_context = push_live && t.context.is_none();
        if let Some((fp, done)) = t.content
            && fp == fingerprint
            && !resend
            && !needs_context
        {
            // Nothing changed since the last build. Only the settle clock can move.
            let settles = done
                && finish_ready(t)
                && now.duration_since(*t.done_since.get_or_insert(now))
                    >= self.settings.settle_grace;
            if !settles {
                return Ok(());
            }
        }
        let op = match op {
            Some(o) => o,
            // Same bytes, but the report's `finish` or the settle clock moved.
            None => CalderaClient::decode(path, body)?,
        };
        let head = op.clone();
        let built = build_changed(op, t.finish, Timestamp::now(), &self.docs, &t.sent, context);
        let (mut built, inputs) = match built {
            Ok(b) => b,
            Err(e) => {
                self.shared.stats.invalid_values.inc();
                tracing::warn!(error = %e, "operation skipped");
                return Ok(());
            }
        };
        if self.settings.output.include {
            super::output::attach(&self.client, &mut built.links, &self.settings.output).await;
        }
        t.content = Some((fingerprint, built.all_links_done));
        // Kept only while push is live: without events nothing is built from it, and polling
        // keeps memory at what the documents' fingerprints cost (the tally of 1,000 running
        // operations would be several MB). A link event for an operation without it brings a
        // whole fetch, which keeps it from then on.
        t.context = push_live.then(|| OpContext::new(&head, std::mem::take(&mut built.tally)));
        if built.deferred > 0 {
            // Too many changed links for one build: the rest comes with the next fetch (the next
            // poll), so memory holds one piece, never the whole operation.
            t.resend = true;
            tracing::info!(
                operation = %id,
                built = built.links.len(),
                remaining = built.deferred,
                "large operation: its link documents are built in pieces, one per poll"
            );
        }
        if built.all_links_done && built.deferred == 0 {
            let since = *t.done_since.get_or_insert(now);
            if now.duration_since(since) >= self.settings.settle_grace && finish_ready(t) {
                built.operation.settled = true;
                t.settling_doc = None;
            } else {
                t.settling_doc = Some(Box::new(built.operation.clone()));
            }
        } else {
            t.done_since = None;
            t.settling_doc = None;
        }
        let invalid = built.dropped.total();
        if invalid != t.invalid_reported {
            if invalid > t.invalid_reported {
                self.shared
                    .stats
                    .invalid_values
                    .add((invalid - t.invalid_reported) as u64);
            }
            tracing::warn!(
                operation = %id,
                invalid,
                technique_ids = built.dropped.technique_ids,
                tactics = built.dropped.tactics,
                links = built.dropped.links,
                timestamps = built.dropped.timestamps,
                reasons = ?built.dropped.reasons,
                "invalid values dropped from documents (the rest is indexed)"
            );
            t.invalid_reported = invalid;
        }

        let mut out = encode_links(&built.links, inputs, &mut t.sent, &self.clock);
        let settled = built.operation.settled;
        let op_doc_id = built.operation.event.id.clone();
        push_if_changed(
            &mut out,
            &mut t.sent,
            &built.operation,
            op_doc_id,
            &self.clock,
        );
        for e in out {
            self.shared.stats.documents_emitted.inc();
            if self.out.send(e).await.is_err() {
                // The sink is gone: we are shutting down.
                return Ok(());
            }
        }
        if settled {
            t.settled = true;
            // Nothing more will be compared for a settled operation: keep memory flat.
            t.sent = HashMap::new();
            t.context = None;
            t.content = None;
            self.memory.settled(id.as_str(), state.as_str(), now);
            tracing::info!(operation = %id, "operation settled");
        }
        Ok(())
    }
}

/// Builds `op`'s documents, a link's only where its inputs differ from what was last sent: a
/// link document depends on its link's JSON and on the operation fields hashed in `context`
/// (`link_input`). Returns the build and, for each link document built, its `sent` entry.
fn build_changed(
    op: Operation<'_>,
    finish: Option<Timestamp>,
    observed: Timestamp,
    docs: &document::DocSettings,
    sent: &HashMap<u64, u64>,
    context: u64,
) -> Result<(document::Built, Vec<(u64, u64)>), crate::document::types::InvalidValue> {
    let mut inputs = Vec::new();
    let mut wanted = |link: &LinkId, raw: &str| {
        let key = id_key(&document::link_doc_id(link));
        let input = link_input(context, raw);
        let unchanged = sent.get(&key) == Some(&input);
        if !unchanged {
            inputs.push((key, input));
        }
        !unchanged
    };
    let built = document::build_with(op, finish, false, observed, docs, &mut wanted)?;
    Ok((built, inputs))
}

/// Encodes the link documents of [`build_changed`], recording each in `sent` once encoded.
fn encode_links(
    links: &[document::LinkDoc],
    inputs: Vec<(u64, u64)>,
    sent: &mut HashMap<u64, u64>,
    clock: &SequenceClock,
) -> Vec<Encoded> {
    let mut out = Vec::with_capacity(links.len() + 1);
    for (doc, (key, input)) in links.iter().zip(inputs) {
        match document::encode(doc, doc.event.id.clone(), clock.next()) {
            Ok((_, enc)) => {
                sent.insert(key, input);
                out.push(enc);
            }
            Err(e) => tracing::error!(error = %e, "document could not be encoded"),
        }
    }
    out
}

/// The content fingerprint of an operation document rebuilt from pushed changes: a whole
/// fetch's fingerprint is a 64-bit hash and (but for a 2^-64 chance) never equals it.
const PUSHED: u64 = 0;

/// Settling waits for the report's `finish`, unless the report failed a few times (it can
/// answer 500; a settled operation is not fetched again).
pub(super) fn finish_ready(t: &Tracked) -> bool {
    t.finish.is_some() || t.report_failures >= 3
}
