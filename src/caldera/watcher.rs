//! The watcher: turns Caldera's changing state into a stream of documents.
//!
//! Caldera has no change feed we can rely on and every request costs it event-loop time, so the
//! watcher polls the cheap listing and fetches a full operation only when the listing says it is
//! new or changed, or while it is active (running, paused, cleanup…) or closed but not yet
//! settled. "Settled" follows what a real Caldera does: `finished` is not terminal (stop →
//! cleanup → finished) and link results can arrive after the operation looks finished, so an
//! operation is settled only when it is closed, every non-discarded link has a result, and that
//! has held for a grace period. A settled operation costs nothing until the listing shows it
//! changed.
//!
//! Each document is sent only when its content changed since the last time (a fingerprint per
//! document), with an observation number that only grows: the index keeps the newest
//! observation even if an older one is replayed later.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use super::client::{CalderaClient, CalderaError};
use super::model::{Operation, OperationSummary, Report};
use crate::config::CalderaSettings;
use crate::document::types::{LinkId, OperationId, OperationState, Timestamp};
use crate::document::{self, DocSettings, Encoded, Unsaved};
use crate::state::Shared;

/// Observation numbers: microseconds since the epoch, forced to grow by at least one, so they
/// order observations across restarts (used as the external version in the index).
#[derive(Debug, Default)]
pub struct SequenceClock(AtomicU64);

impl SequenceClock {
    /// A clock whose numbers are all above `floor` (the highest one already in the index), even
    /// if the wall clock is behind it.
    pub fn above(floor: Option<u64>) -> Self {
        Self(AtomicU64::new(floor.unwrap_or(0)))
    }

    pub fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut prev = self.0.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self
                .0
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }
}

#[derive(Debug)]
struct Tracked {
    summary: OperationSummary,
    settled: bool,
    /// Since when the operation has been closed with every link done.
    done_since: Option<Instant>,
    closed_since: Option<Instant>,
    last_fetch: Option<Instant>,
    /// The report's `finish`, once known.
    finish: Option<Timestamp>,
    /// What was last sent, by hash of the document id (16 bytes an entry: 50,000 tracked links
    /// cost under 2 MB): for a link the hash of its inputs (`link_input`), for the operation
    /// the fingerprint of its encoded content. Emptied once settled.
    sent: HashMap<u64, u64>,
    /// Number of invalid values last reported for this operation (to log changes once).
    invalid_reported: usize,
    /// Some of its documents could not be kept by the sink: fetch it again on the next poll.
    resend: bool,
    /// Fingerprint of the last content built from, and whether all its links were done:
    /// an unchanged re-fetch (the common case while an operation settles) builds nothing.
    content: Option<(u64, bool)>,
    /// The last body fetched, as a hash, with what was read from it: a byte-identical re-fetch
    /// is not parsed again.
    last_body: Option<LastBody>,
    /// When the report (for `finish`) may be asked again after a failure.
    report_retry_at: Option<Instant>,
    /// Failed report requests: an operation settles without `finish` only after a few.
    report_failures: u8,
}

#[derive(Debug)]
struct LastBody {
    hash: u64,
    state: OperationState,
    link_context: u64,
    content_base: u64,
}

impl Tracked {
    fn new(summary: OperationSummary, settled: bool) -> Self {
        Self {
            summary,
            settled,
            done_since: None,
            closed_since: None,
            last_fetch: None,
            finish: None,
            sent: HashMap::new(),
            invalid_reported: 0,
            resend: false,
            content: None,
            last_body: None,
            report_retry_at: None,
            report_failures: 0,
        }
    }
}

/// What the index already knows at start-up.
#[derive(Debug, Default)]
pub struct Known {
    /// Operations the index holds as settled, with their state.
    pub settled: HashMap<String, String>,
    /// The highest observation number in the index.
    pub max_sequence: Option<u64>,
}

pub struct Watcher {
    client: Arc<CalderaClient>,
    settings: CalderaSettings,
    docs: DocSettings,
    out: mpsc::Sender<Encoded>,
    shared: Arc<Shared>,
    clock: SequenceClock,
    ops: HashMap<OperationId, Tracked>,
    /// Operations the index already holds as settled (read at start-up), with their state.
    known_settled: HashMap<String, String>,
    /// Documents the sink could not keep (e.g. disk full): forget them so they are sent again.
    unsaved: mpsc::UnboundedReceiver<Unsaved>,
    last_error: Option<String>,
}

/// What one poll found, for the choice of the next interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Active,
    Idle,
}

impl Watcher {
    pub fn new(
        client: Arc<CalderaClient>,
        settings: CalderaSettings,
        docs: DocSettings,
        out: mpsc::Sender<Encoded>,
        shared: Arc<Shared>,
        known: Known,
        unsaved: mpsc::UnboundedReceiver<Unsaved>,
    ) -> Self {
        Self {
            client,
            settings,
            docs,
            out,
            shared,
            clock: SequenceClock::above(known.max_sequence),
            ops: HashMap::new(),
            known_settled: known.settled,
            unsaved,
            last_error: None,
        }
    }

    /// Polls until `shutdown` turns true: fast while anything is active, slowly when idle.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut version_checked = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if !version_checked {
                version_checked = self.check_version().await;
            }
            let started = Instant::now();
            // Shutdown interrupts a poll (a hung Caldera must not delay it): documents already
            // handed to the sink are safe, the rest is fetched again on the next start.
            let activity = tokio::select! {
                a = self.poll_once() => a,
                _ = shutdown.changed() => break,
            };
            self.shared.stats.poll_seconds.observe(started.elapsed());
            let wait = interval_for(&self.settings, activity);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!("watcher stopped");
    }

    async fn check_version(&self) -> bool {
        match self.client.get::<super::model::Health>(super::HEALTH).await {
            Ok(h) => {
                tracing::info!(
                    version = h.version.as_deref().unwrap_or("?"),
                    "connected to Caldera"
                );
                self.shared.caldera(|c| c.version = h.version.clone());
                true
            }
            Err(_) => false,
        }
    }

    fn record_error(&mut self, e: &CalderaError) {
        self.shared.stats.caldera_errors.inc();
        let msg = e.to_string();
        // Log a failure when it starts or changes, not on every poll of an outage.
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::warn!(error = %msg, "Caldera request failed; will retry on the next poll");
            self.last_error = Some(msg.clone());
        }
        let (reachable, authenticated) = match e {
            CalderaError::Timeout { .. } | CalderaError::Transport { .. } => (false, false),
            CalderaError::Unauthorized { .. } => (true, false),
            _ => (true, true),
        };
        self.shared.caldera(|c| {
            c.reachable = reachable;
            c.authenticated = authenticated;
            c.last_error = Some(msg);
        });
    }

    /// One poll: the listing, then the operations that need a look. Never fails: errors are
    /// logged, counted and retried on the next poll.
    pub async fn poll_once(&mut self) -> Activity {
        while let Ok(u) = self.unsaved.try_recv() {
            let op = u
                .operation_id
                .as_deref()
                .and_then(|o| OperationId::parse(o).ok());
            if let Some(t) = op.and_then(|o| self.ops.get_mut(&o)) {
                t.sent.remove(&id_key(&u.id));
                t.settled = false;
                t.resend = true;
            }
        }
        let list: Vec<OperationSummary> = match self.client.get(super::OPERATIONS_LIST).await {
            Ok(l) => l,
            Err(e) => {
                self.shared.stats.polls_failed.inc();
                self.record_error(&e);
                return if self.ops.values().any(|t| !t.settled) {
                    Activity::Active
                } else {
                    Activity::Idle
                };
            }
        };
        let now = Instant::now();
        let mut seen = HashSet::with_capacity(list.len());
        let mut to_fetch = Vec::new();
        let mut active = false;
        for s in list {
            let id = match OperationId::parse(&s.id) {
                Ok(id) => id,
                Err(e) => {
                    self.shared.stats.invalid_values.inc();
                    tracing::warn!(error = %e, "operation with an invalid id skipped");
                    continue;
                }
            };
            seen.insert(id.clone());
            let known = self
                .known_settled
                .get(id.as_str())
                .is_some_and(|st| *st == s.state);
            let t = self
                .ops
                .entry(id.clone())
                .or_insert_with(|| Tracked::new(s.clone(), known));
            if t.summary != s {
                t.summary = s.clone();
                t.settled = false;
                t.done_since = None;
            }
            if t.settled {
                continue;
            }
            let state = OperationState::parse(&s.state);
            let in_window = !state.is_closed()
                || t.closed_since
                    .is_none_or(|c| now.duration_since(c) < self.settings.settle_window);
            active |= in_window || t.resend;
            // `resend`: part of its documents is still to be built (a very large operation).
            let due = in_window
                || t.resend
                || t.last_fetch
                    .is_none_or(|f| now.duration_since(f) >= self.settings.idle_interval);
            if due {
                to_fetch.push(id);
            }
        }
        self.ops.retain(|id, _| seen.contains(id));
        // Only the first look after start-up needs the index's knowledge.
        if !self.known_settled.is_empty() {
            self.known_settled.clear();
        }

        let mut failed = false;
        let fetched = !to_fetch.is_empty();
        for id in to_fetch {
            if let Err(e) = self.refresh(&id).await {
                failed = true;
                self.record_error(&e);
            }
        }
        if fetched {
            crate::memory::release_free_memory();
        }
        if !failed {
            self.last_error = None;
            self.shared.caldera(|c| {
                c.reachable = true;
                c.authenticated = true;
                c.last_error = None;
                c.last_ok_poll = Some(SystemTime::now());
            });
        }
        if failed {
            self.shared.stats.polls_failed.inc();
        } else {
            self.shared.stats.polls_ok.inc();
        }
        self.shared
            .stats
            .operations_tracked
            .set(self.ops.len() as u64);
        self.shared
            .stats
            .operations_settled
            .set(self.ops.values().filter(|t| t.settled).count() as u64);
        if active {
            Activity::Active
        } else {
            Activity::Idle
        }
    }

    /// Fetches one operation, builds its documents and sends those that changed.
    async fn refresh(&mut self, id: &OperationId) -> Result<(), CalderaError> {
        let path = super::operation_path(id.as_str());
        let body = self.client.get_bytes(&path).await?;
        let result = self.apply(id, &path, &body).await;
        let len = body.len();
        drop(body);
        crate::memory::transient_freed(len);
        result
    }

    /// Builds the documents of one fetched operation and sends those that changed.
    async fn apply(
        &mut self,
        id: &OperationId,
        path: &str,
        body: &[u8],
    ) -> Result<(), CalderaError> {
        let now = Instant::now();
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
                (Some(o), state, context, base)
            }
        };
        // Read: from here on the fetch counts (a malformed body leaves everything as it was).
        t.last_fetch = Some(now);
        t.resend = false;
        t.last_body = Some(LastBody {
            hash: body_hash,
            state: state.clone(),
            link_context: context,
            content_base: base,
        });
        if state.is_closed() {
            t.closed_since.get_or_insert(now);
        } else {
            t.closed_since = None;
            t.done_since = None;
            t.finish = None;
        }
        if state.is_closed() && t.finish.is_none() && t.report_retry_at.is_none_or(|r| now >= r) {
            // The report is the only place Caldera gives an operation's end time. Right after
            // creation it can answer 500; we try again, at most once per idle interval.
            let body = serde_json::json!({"enable_agent_output": false});
            match self
                .client
                .post::<Report>(&super::report_path(id.as_str()), &body)
                .await
            {
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
        if let Some((fp, done)) = t.content
            && fp == fingerprint
            && !resend
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
        let observed = Timestamp::now();
        // A link document depends on its link's JSON and on the operation fields in `context`
        // only: one whose inputs are what was last sent is not built again.
        let sent = &t.sent;
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
        let built = document::build_with(op, t.finish, false, observed, &self.docs, &mut wanted);
        let mut built = match built {
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
            }
        } else {
            t.done_since = None;
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

        let mut out = Vec::with_capacity(built.links.len() + 1);
        for (link, (key, input)) in built.links.iter().zip(inputs) {
            match document::encode(link, link.event.id.clone(), self.clock.next()) {
                Ok((_, enc)) => {
                    t.sent.insert(key, input);
                    out.push(enc);
                }
                Err(e) => tracing::error!(error = %e, "document could not be encoded"),
            }
        }
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
            tracing::info!(operation = %id, "operation settled");
        }
        Ok(())
    }
}

/// Settling waits for the report's `finish`, unless the report failed a few times (it can
/// answer 500; a settled operation is not fetched again).
fn finish_ready(t: &Tracked) -> bool {
    t.finish.is_some() || t.report_failures >= 3
}

/// The operation fields a link document is built from besides its link, hashed: name, group,
/// start and the agent fields used (not `last_seen`, which changes on every beacon).
fn link_context(op: &Operation<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&op.id, &op.name, &op.start, &op.group).hash(&mut h);
    for raw in op.host_group.iter().flatten() {
        match serde_json::from_str::<super::model::Agent>(raw.get()) {
            Ok(a) => (a.paw, a.username, a.host, a.platform, a.privilege).hash(&mut h),
            Err(_) => raw.get().hash(&mut h),
        }
    }
    h.finish()
}

/// What one link document is built from: the operation's link context and the link's JSON
/// exactly as Caldera sent it.
fn link_input(context: u64, raw: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (context, raw).hash(&mut h);
    h.finish()
}

/// What the documents of an operation are built from, hashed, except the report's `finish`:
/// the link context (`link_context(op)`), the other scalar fields, and every link exactly as
/// Caldera sent it.
fn content_base(op: &Operation<'_>, link_context: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (link_context, &op.state, op.auto_close).hash(&mut h);
    if let Some(a) = &op.adversary {
        (&a.adversary_id, &a.name).hash(&mut h);
    }
    if let Some(p) = &op.planner {
        (&p.id, &p.name).hash(&mut h);
    }
    for raw in op.chain.iter().flatten() {
        raw.get().hash(&mut h);
    }
    h.finish()
}

/// The whole content fingerprint: [`content_base`] and the report's `finish`.
fn with_finish(base: u64, finish: Option<Timestamp>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (base, finish).hash(&mut h);
    h.finish()
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

fn id_key(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

fn push_if_changed<T: serde::Serialize>(
    out: &mut Vec<Encoded>,
    sent: &mut HashMap<u64, u64>,
    doc: &T,
    id: String,
    clock: &SequenceClock,
) {
    match document::encode(doc, id, clock.next()) {
        Ok((fp, enc)) => {
            let key = id_key(&enc.id);
            if sent.get(&key) != Some(&fp) {
                sent.insert(key, fp);
                out.push(enc);
            }
        }
        Err(e) => tracing::error!(error = %e, "document could not be encoded"),
    }
}

/// How long to wait before the next poll (exposed for tests of the cadence).
pub fn interval_for(settings: &CalderaSettings, a: Activity) -> Duration {
    match a {
        Activity::Active => settings.poll_interval,
        Activity::Idle => settings.idle_interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_above_the_indexed_observations() {
        let far = 4_000_000_000_000_000; // year 2096, in microseconds
        let clock = SequenceClock::above(Some(far));
        let a = clock.next();
        assert!(a > far);
        assert!(clock.next() > a);
        assert!(SequenceClock::above(None).next() > 1_700_000_000_000_000);
    }
}
