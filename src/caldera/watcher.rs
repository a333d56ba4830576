//! The watcher: turns Caldera's changing state into a stream of documents, at a cost to Caldera
//! that stays within a budget.
//!
//! Two ways to learn of a change:
//! * **Push** ([`super::push`]): the Caldera plugin reports link results and state changes as
//!   they happen; the watcher then fetches that one link (constant cost), or the operation when
//!   its state changed, coalescing bursts (the two events of one link result arrive 0.5 ms
//!   apart and cost one fetch).
//! * **Polling**, for a Caldera without the plugin and as the reconciliation push needs (a missed
//!   event must still be indexed): the listing finds new and changed operations; operations that
//!   are running (without push) or closed but not settled are fetched whole.
//!
//! Every read is timed, and reads are spaced by their measured cost ([`super::budget`]): the
//! listing by the idle budget (it is the only read of an idle sidecar, and it grows with every
//! operation Caldera holds), whole-operation fetches by the active budget. While push is live
//! the listing only reconciles, every `PUSH_RECONCILE_INTERVAL`.
//!
//! "Settled" follows what a real Caldera does: `finished` is not terminal (stop → cleanup →
//! finished) and link results can arrive after the operation looks finished, so an operation is
//! settled only when it is closed, every non-discarded link has a result, and that has held for
//! a grace period. A settled operation costs nothing until the listing (or an event) shows it
//! changed, and is remembered in the index and in a local state file ([`super::settled`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use super::budget::{Cost, Pacer};
use super::client::{CalderaClient, CalderaError};
use super::context::OpContext;
pub use super::fingerprint::SequenceClock;
use super::fingerprint::id_key;
use super::intake::{IntakeSettings, ReadCost};
use super::model::OperationSummary;
use super::push::PushEvent;
use super::settled::SettledMemory;
use crate::config::CalderaSettings;
use crate::document::types::{OperationId, OperationState, Timestamp};
use crate::document::{DocSettings, Encoded, Unsaved};
use crate::state::Shared;

#[derive(Debug)]
pub(super) struct Tracked {
    pub(super) summary: OperationSummary,
    pub(super) settled: bool,
    /// Since when the operation has been closed with every link done.
    pub(super) done_since: Option<Instant>,
    pub(super) closed_since: Option<Instant>,
    pub(super) last_fetch: Option<Instant>,
    /// A whole fetch is wanted at this time whatever the mode (new, changed, late link result).
    pub(super) want_fetch: Option<Instant>,
    /// The report's `finish`, once known.
    pub(super) finish: Option<Timestamp>,
    /// What was last sent, by hash of the document id (16 bytes an entry: 50,000 tracked links
    /// cost under 2 MB): for a link the hash of its inputs (`link_input`), for the operation
    /// the fingerprint of its encoded content. Emptied once settled.
    pub(super) sent: HashMap<u64, u64>,
    /// Number of invalid values last reported for this operation (to log changes once).
    pub(super) invalid_reported: usize,
    /// Some of its documents could not be kept by the sink: fetch it again.
    pub(super) resend: bool,
    /// Fingerprint of the last content built from, and whether all its links were done:
    /// an unchanged re-fetch (the common case while an operation settles) builds nothing.
    pub(super) content: Option<(u64, bool)>,
    /// The last body fetched, as a hash, with what was read from it: a byte-identical re-fetch
    /// is not parsed again.
    pub(super) last_body: Option<LastBody>,
    /// The operation's fields and a digest of its links ([`super::context`]): what a single
    /// fetched link and, after pushed changes, the operation document are built from. Only
    /// while not settled.
    pub(super) context: Option<OpContext>,
    /// The operation's `finish` from a pushed `operation/completed` (no report needed).
    pub(super) finish_from_event: Option<Timestamp>,
    /// Closed with every link done, waiting for the grace: its operation document as last
    /// built, so that with push live it can be settled without fetching it again.
    pub(super) settling_doc: Option<Box<crate::document::OperationDoc>>,
    /// When the report (for `finish`) may be asked again after a failure.
    pub(super) report_retry_at: Option<Instant>,
    /// Failed report requests: an operation settles without `finish` only after a few.
    pub(super) report_failures: u8,
}

#[derive(Debug)]
pub(super) struct LastBody {
    pub(super) hash: u64,
    pub(super) state: OperationState,
    pub(super) link_context: u64,
    pub(super) content_base: u64,
}

impl Tracked {
    pub(super) fn new(summary: OperationSummary, settled: bool) -> Self {
        Self {
            summary,
            settled,
            done_since: None,
            closed_since: None,
            last_fetch: None,
            want_fetch: None,
            finish: None,
            sent: HashMap::new(),
            invalid_reported: 0,
            resend: false,
            content: None,
            last_body: None,
            context: None,
            finish_from_event: None,
            settling_doc: None,
            report_retry_at: None,
            report_failures: 0,
        }
    }

    fn state(&self) -> OperationState {
        match &self.last_body {
            Some(l) => l.state.clone(),
            None => OperationState::parse(&self.summary.state),
        }
    }
}

/// What is known at start-up about earlier runs.
#[derive(Debug, Default)]
pub struct Known {
    /// Operations held as settled, with their state.
    pub settled: HashMap<String, String>,
    /// The highest observation number handed out before.
    pub max_sequence: Option<u64>,
    /// "index", "state_file" or "nothing".
    pub from: &'static str,
}

/// The watcher's connections to the rest of the daemon.
pub struct Wiring {
    pub out: mpsc::Sender<Encoded>,
    /// Documents the sink could not keep (e.g. disk full): forget them so they are sent again.
    pub unsaved: mpsc::UnboundedReceiver<Unsaved>,
    /// Events pushed by the Caldera plugin.
    pub events: mpsc::Receiver<PushEvent>,
}

pub struct Watcher {
    pub(super) client: Arc<CalderaClient>,
    pub(super) settings: CalderaSettings,
    intake: IntakeSettings,
    pub(super) docs: DocSettings,
    pub(super) out: mpsc::Sender<Encoded>,
    pub(super) shared: Arc<Shared>,
    pub(super) clock: SequenceClock,
    pub(super) ops: HashMap<OperationId, Tracked>,
    /// Operations known as settled at start-up (index or state file), with their state.
    known_settled: HashMap<String, String>,
    unsaved: mpsc::UnboundedReceiver<Unsaved>,
    pub(super) events: mpsc::Receiver<PushEvent>,
    pub(super) memory: SettledMemory,
    last_error: Option<String>,
    listing_pacer: Pacer,
    fetch_pacer: Pacer,
    listing_cost: Cost,
    link_cost: Cost,
    op_cost: Cost,
    /// When pushed events were last reported lost (plugin or queue): settling without a look
    /// relies on every change having been pushed since.
    lost_at: Option<Instant>,
    listings: u64,
    op_fetches: u64,
    link_fetches: u64,
    version_checked: bool,
}

impl Watcher {
    pub fn new(
        client: Arc<CalderaClient>,
        settings: CalderaSettings,
        intake: IntakeSettings,
        docs: DocSettings,
        shared: Arc<Shared>,
        known: Known,
        wiring: Wiring,
    ) -> Self {
        let file = super::settled::StateFile {
            version: 1,
            max_sequence: known.max_sequence,
            settled: known.settled.clone(),
        };
        let memory = SettledMemory::new(intake.state_file.clone(), file);
        shared.intake.update(|s| {
            s.known_from = known.from;
            s.remembered_settled = known.settled.len();
        });
        Self {
            client,
            listing_pacer: Pacer::new(intake.idle_budget),
            fetch_pacer: Pacer::new(intake.active_budget),
            settings,
            intake,
            docs,
            out: wiring.out,
            shared,
            clock: SequenceClock::above(known.max_sequence),
            ops: HashMap::new(),
            known_settled: known.settled,
            unsaved: wiring.unsaved,
            events: wiring.events,
            memory,
            last_error: None,
            listing_cost: Cost::default(),
            link_cost: Cost::default(),
            op_cost: Cost::default(),
            lost_at: None,
            listings: 0,
            op_fetches: 0,
            link_fetches: 0,
            version_checked: false,
        }
    }

    fn push_live(&self) -> bool {
        self.shared.intake.push_live(SystemTime::now())
    }

    /// Runs until `shutdown` turns true: listing and fetches when due, pushed events as they
    /// come. Shutdown interrupts a request in progress (a hung Caldera must not delay it):
    /// documents already handed to the sink are safe, the rest is fetched again on the next
    /// start.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let work = async {
                if !self.version_checked {
                    self.version_checked = self.check_version().await;
                }
                self.take_unsaved();
                if self.shared.intake.take_lost() {
                    self.lost_at = Some(Instant::now());
                    // Events were lost (plugin or queue full): reconcile as soon as the
                    // budget allows, instead of at the push cadence.
                    self.listing_pacer.spent(
                        Instant::now(),
                        self.listing_cost.get(),
                        self.settings.idle_interval,
                    );
                }
                let now = Instant::now();
                if self.listing_pacer.ready(now) {
                    self.list().await;
                }
                self.fetch_due().await;
                self.memory.set_max_sequence(self.clock.last());
                self.memory.maybe_save(Instant::now(), false);
                self.publish();
            };
            tokio::select! {
                _ = work => {}
                _ = shutdown.changed() => break,
            }
            let wake = self.next_wake();
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                Some(first) = self.events.recv() => {
                    tokio::select! {
                        _ = self.on_events(first) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
        self.memory.set_max_sequence(self.clock.last());
        self.memory.maybe_save(Instant::now(), true);
        tracing::info!("watcher stopped");
    }

    /// When the loop must look again: the next listing, the next due fetch.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = self
            .listing_pacer
            .next()
            .unwrap_or(now + self.settings.idle_interval);
        if let Some(t) = self.earliest_due(now) {
            let t = t.max(self.fetch_pacer.next().unwrap_or(now));
            wake = wake.min(t);
        }
        wake.max(now + Duration::from_millis(5))
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

    pub(super) fn record_error(&mut self, e: &CalderaError) {
        self.shared.stats.caldera_errors.inc();
        let msg = e.to_string();
        // Log a failure when it starts or changes, not on every poll of an outage.
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::warn!(error = %msg, "Caldera request failed; will retry");
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

    pub(super) fn record_ok(&mut self) {
        self.last_error = None;
        self.shared.caldera(|c| {
            c.reachable = true;
            c.authenticated = true;
            c.last_error = None;
            c.last_ok_poll = Some(SystemTime::now());
        });
    }

    fn take_unsaved(&mut self) {
        while let Ok(u) = self.unsaved.try_recv() {
            let op = u
                .operation_id
                .as_deref()
                .and_then(|o| OperationId::parse(o).ok());
            if let Some(id) = op
                && let Some(t) = self.ops.get_mut(&id)
            {
                t.sent.remove(&id_key(&u.id));
                t.settled = false;
                t.resend = true;
                t.want_fetch = Some(Instant::now());
                self.memory.unsettled(id.as_str());
            }
        }
    }

    /// The listing: finds new operations and changes to known ones. Spaced by the idle budget
    /// (or the push reconciliation interval while push is live).
    async fn list(&mut self) {
        let started = Instant::now();
        let res = self
            .client
            .get::<Vec<OperationSummary>>(super::OPERATIONS_LIST)
            .await;
        let cost = started.elapsed();
        self.listing_cost.observe(cost);
        self.listings += 1;
        let floor = if self.push_live() {
            self.intake.push_reconcile
        } else {
            self.settings.idle_interval
        };
        self.listing_pacer
            .spent(Instant::now(), self.listing_cost.get(), floor);
        self.shared.stats.poll_seconds.observe(cost);
        let list = match res {
            Ok(l) => l,
            Err(e) => {
                self.shared.stats.polls_failed.inc();
                self.record_error(&e);
                return;
            }
        };
        self.shared.stats.polls_ok.inc();
        self.record_ok();
        let now = Instant::now();
        let mut seen = HashSet::with_capacity(list.len());
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
            let t = self.ops.entry(id.clone()).or_insert_with(|| {
                let mut t = Tracked::new(s.clone(), known);
                if !known {
                    t.want_fetch = Some(now);
                }
                t
            });
            if t.summary != s {
                t.summary = s.clone();
                if t.settled {
                    self.memory.unsettled(id.as_str());
                }
                t.settled = false;
                t.done_since = None;
                t.want_fetch = Some(now);
            }
        }
        self.ops.retain(|id, _| seen.contains(id));
        self.memory.retain(|id| {
            OperationId::parse(id)
                .ok()
                .is_some_and(|id| seen.contains(&id))
        });
        // Only the first look after start-up needs the earlier knowledge.
        if !self.known_settled.is_empty() {
            self.known_settled.clear();
        }
    }

    /// When the operation wants a whole fetch (`None`: not until something happens).
    fn due_at(&self, t: &Tracked, now: Instant, push_live: bool) -> Option<Instant> {
        if t.settled {
            return None;
        }
        let last = t.last_fetch.unwrap_or(now);
        let by_state = if t.state().is_closed() {
            let in_window = t
                .closed_since
                .is_none_or(|c| now.duration_since(c) < self.settings.settle_window);
            let all_done = t.content.is_some_and(|(_, done)| done);
            if push_live && all_done {
                // Push reports late results: one look after the grace confirms the settle. If
                // that look could not settle it (no report `finish` yet), the next one waits
                // an idle interval (the report is retried at that pace too).
                let confirm = t.done_since.unwrap_or(last) + self.settings.settle_grace;
                if last >= confirm {
                    Some(last + self.settings.idle_interval)
                } else {
                    Some(confirm)
                }
            } else if push_live {
                // A link without its result: push reports it when it comes. One slow look
                // after the last change in case it never does.
                Some(last + self.settings.idle_interval)
            } else if in_window {
                Some(last + self.settings.poll_interval)
            } else {
                Some(last + self.settings.idle_interval)
            }
        } else if push_live {
            // Running: its link results and state changes arrive as events.
            None
        } else {
            Some(last + self.settings.poll_interval)
        };
        // `resend`: part of its documents is still to be built (a very large operation, built
        // in pieces) or was lost by the sink: look again at the next poll.
        let by_state = if t.resend {
            let soon = last + self.settings.poll_interval;
            Some(by_state.map_or(soon, |b| b.min(soon)))
        } else {
            by_state
        };
        match (t.want_fetch, by_state) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn earliest_due(&self, now: Instant) -> Option<Instant> {
        let live = self.push_live();
        self.ops
            .values()
            .filter_map(|t| self.due_at(t, now, live))
            .min()
    }

    /// Whole fetches of the operations that are due, as far as the active budget allows now.
    async fn fetch_due(&mut self) {
        let now = Instant::now();
        let live = self.push_live();
        let mut due: Vec<(Instant, OperationId)> = self
            .ops
            .iter()
            .filter_map(|(id, t)| self.due_at(t, now, live).map(|d| (d, id.clone())))
            .filter(|(d, _)| *d <= now)
            .collect();
        due.sort();
        let mut fetched = false;
        for (_, id) in due {
            if live && self.settle_quietly(&id).await {
                continue;
            }
            if !self.fetch_pacer.ready(Instant::now()) {
                break;
            }
            fetched = true;
            match self.refresh(&id).await {
                Ok(()) => self.record_ok(),
                Err(e) => {
                    // Not again before the next interval.
                    if let Some(t) = self.ops.get_mut(&id) {
                        t.last_fetch = Some(Instant::now());
                        t.want_fetch = None;
                    }
                    self.record_error(&e);
                }
            }
        }
        if fetched {
            crate::memory::release_free_memory();
        }
    }

    /// Records a whole fetch's cost: it spaces the next whole fetch.
    pub(super) fn spent_on_operation(&mut self, cost: Duration) {
        self.op_cost.observe(cost);
        self.op_fetches += 1;
        // No floor here: the per-operation intervals are `due_at`'s; the pacer only keeps
        // the stream of whole fetches within the active budget.
        self.fetch_pacer.spent(Instant::now(), cost, Duration::ZERO);
    }

    pub(super) fn lost_at(&self) -> Option<Instant> {
        self.lost_at
    }

    pub(super) fn spent_on_link(&mut self, cost: Duration) {
        self.link_cost.observe(cost);
        self.link_fetches += 1;
    }

    /// Shows the measured costs and effective intervals in health and metrics.
    pub(super) fn publish(&self) {
        let live = self.push_live();
        let listing_floor = if live {
            self.intake.push_reconcile
        } else {
            self.settings.idle_interval
        };
        let read = |cost: &Cost, pacer: Option<&Pacer>, floor: Duration, count: u64| ReadCost {
            cost: cost.get(),
            configured: floor,
            effective: pacer.map_or(floor, |p| p.last_wait.max(floor)),
            stretched: pacer.is_some_and(|p| p.last_wait > floor),
            count,
        };
        let listing = read(
            &self.listing_cost,
            Some(&self.listing_pacer),
            listing_floor,
            self.listings,
        );
        let operation = read(
            &self.op_cost,
            Some(&self.fetch_pacer),
            self.settings.poll_interval,
            self.op_fetches,
        );
        let link = read(&self.link_cost, None, Duration::ZERO, self.link_fetches);
        // Operations settle after fetches and pushed events too, not only at listings.
        self.shared
            .stats
            .operations_tracked
            .set(self.ops.len() as u64);
        self.shared
            .stats
            .operations_settled
            .set(self.ops.values().filter(|t| t.settled).count() as u64);
        let remembered = self.memory.saved_count();
        self.shared.intake.update(|s| {
            s.listing = listing;
            s.operation = operation;
            s.link = link;
            s.push_live = live;
            s.remembered_settled = remembered;
        });
    }
}
