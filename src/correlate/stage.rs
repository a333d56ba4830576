//! One correlation pass, and the daemon loop that runs one every `CORRELATION_INTERVAL`.
//!
//! A pass: is there an alert index at all (if not, idle and say so) → page through the link
//! documents that still need a look → per page, read the alerts of their hosts and windows in
//! one `_msearch`, match, decide, act (one bulk or a few Kibana calls), record, and write the
//! links' `detection` fields → then refresh the operations' summaries. Every write is a bulk;
//! nothing is sent per alert or per link.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use serde_json::Value;
use tokio::sync::watch;

use super::action::{self, Change, Decision, Outcome};
use super::alert::Alert;
use super::backend::{Actor, kibana::KibanaClient};
use super::detection::{self, Found, Update};
use super::es::{Body, EsError, path_index, send};
use super::link::LinkView;
use super::matching::match_host;
use super::record::{self, Record};
use super::settings::{Backend, CorrelationSettings};
use super::source::{self, Selection};
use super::time::now_millis;
use crate::config::Settings;
use crate::state::Shared;

pub struct Stage {
    es: Elasticsearch,
    reader: Elasticsearch,
    actor: Actor,
    pub settings: CorrelationSettings,
    index: String,
    timeout: Duration,
    shared: Arc<Shared>,
}

#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub selection: Selection,
    pub dry_run: bool,
}

/// One alert-to-link match and what became of the alert (what `correlate` prints).
#[derive(Debug, Clone)]
pub struct Line {
    pub alert_id: String,
    pub alert_index: String,
    pub rule: String,
    pub operation_id: String,
    pub link_id: String,
    pub technique: Option<String>,
    pub tier: u8,
    pub reason: String,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Set when the pass did nothing because there is no alert index.
    pub idle: Option<String>,
    pub links: usize,
    pub alerts: usize,
    pub malformed: usize,
    pub alert_requests: usize,
    pub matches: [usize; 3],
    pub outcomes: BTreeMap<Outcome, usize>,
    pub records: usize,
    pub links_written: usize,
    pub operations_written: usize,
    pub pending: usize,
    pub oldest_pending_end_ms: Option<i64>,
}

impl Stage {
    pub fn new(settings: &Settings, shared: Arc<Shared>) -> Result<Self, String> {
        let es = crate::sink::elastic::build_client(&settings.elastic)?;
        let mut read_settings = settings.elastic.clone();
        if let Some(k) = &settings.correlation.alert_api_key {
            read_settings.api_key = Some(k.clone());
            read_settings.basic = None;
        }
        let reader = crate::sink::elastic::build_client(&read_settings)?;
        let actor = match &settings.correlation.backend {
            Backend::Elasticsearch => Actor::Elasticsearch(es.clone()),
            Backend::Kibana(k) => Actor::Kibana(KibanaClient::new(k, settings.elastic.timeout)?),
        };
        shared
            .correlation
            .set_action(settings.correlation.action.name());
        shared.correlation.update(|s| {
            s.state = "starting";
            s.interval = settings.correlation.interval;
            s.alert_index = settings.correlation.alert_index.clone();
            s.backend = settings.correlation.backend.name();
        });
        Ok(Self {
            es,
            reader,
            actor,
            settings: settings.correlation.clone(),
            index: settings.elastic.index.clone(),
            // Searches over a large alert index can take longer than a bulk of our documents.
            timeout: settings.elastic.timeout.max(Duration::from_secs(30)),
            shared,
        })
    }

    /// Installs the correlation index template and the `detection` mapping on the link index.
    pub async fn prepare(&self) -> Result<(), EsError> {
        record::install_template(&self.es, &self.settings.index, self.timeout).await?;
        detection::put_mapping(&self.es, &self.index, self.timeout).await
    }

    /// Runs one pass; `on_line` sees every match as it is decided.
    pub async fn pass(
        &self,
        opts: &PassOptions,
        on_line: &mut (dyn FnMut(&Line) + Send),
    ) -> Result<PassReport, EsError> {
        let mut report = PassReport::default();
        if !source::alert_index_exists(&self.reader, &self.settings.alert_index, self.timeout)
            .await?
        {
            report.idle = Some(format!(
                "no alert index {:?} yet (ALERT_INDEX): nothing to correlate",
                self.settings.alert_index
            ));
            return Ok(report);
        }
        let mut touched_ops = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let hits = source::links_page(
                &self.es,
                &self.index,
                &opts.selection,
                self.settings.batch,
                after.as_deref(),
                self.timeout,
            )
            .await?;
            let n = hits.len();
            after = hits
                .last()
                .and_then(|h| h["sort"][0].as_str().map(String::from));
            self.batch(hits, opts, &mut report, &mut touched_ops, on_line)
                .await?;
            if n < self.settings.batch || after.is_none() {
                break;
            }
        }
        if !opts.dry_run {
            // The summaries aggregate the link documents just updated.
            send(
                &self.es,
                "refreshing the link index",
                Method::Post,
                &format!("/{}/_refresh", path_index(&self.index)),
                &[("ignore_unavailable", "true")],
                Body::None,
                self.timeout,
            )
            .await?;
            let mut ops =
                detection::operations_without_summary(&self.es, &self.index, self.timeout).await?;
            ops.extend(touched_ops);
            report.operations_written +=
                detection::summarise_operations(&self.es, &self.index, &ops, self.timeout).await?;
        }
        Ok(report)
    }

    async fn batch(
        &self,
        hits: Vec<Value>,
        opts: &PassOptions,
        report: &mut PassReport,
        touched_ops: &mut BTreeSet<String>,
        on_line: &mut (dyn FnMut(&Line) + Send),
    ) -> Result<(), EsError> {
        let (links, unusable) = source::parse_links(&hits);
        drop(hits);
        for u in unusable.iter().take(3) {
            tracing::debug!(error = %u, "link document skipped");
        }
        report.links += links.len();
        self.shared
            .correlation
            .links_checked
            .add(links.len() as u64);
        let skew = self.settings.skew.as_millis() as i64;

        // Host → its links (indices into `links`) and windows.
        let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut windows: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for (i, l) in links.iter().enumerate() {
            touched_ops.insert(l.operation_id.clone());
            if let (Some(h), Some(w)) = (&l.host, l.window(skew)) {
                by_host.entry(h.clone()).or_default().push(i);
                windows.entry(h.clone()).or_default().push(w);
            }
        }
        let read = source::read_alerts(
            &self.reader,
            &self.settings.alert_index,
            &windows,
            self.timeout,
        )
        .await?;
        report.alert_requests += read.requests;
        report.malformed += read.malformed.len();
        self.shared
            .correlation
            .alerts_malformed
            .add(read.malformed.len() as u64);
        if let Some(m) = read.malformed.first() {
            tracing::warn!(skipped = read.malformed.len(), example = %m, "malformed alerts skipped");
        }

        // Every match, as (alert, link index, tier, reason); an alert appears under one host.
        let mut matches: Vec<(&Alert, usize, u8, String)> = Vec::new();
        for (host, idx) in &by_host {
            let Some(alerts) = read.alerts.get(host) else {
                continue;
            };
            report.alerts += alerts.len();
            self.shared.correlation.alerts_read.add(alerts.len() as u64);
            let host_links: Vec<LinkView> = idx.iter().map(|i| links[*i].clone()).collect();
            for m in match_host(alerts, &host_links, skew) {
                matches.push((&alerts[m.alert], idx[m.link], m.tier, m.reason));
            }
        }
        // An alert may be found under two host labels (host.name and host.hostname differ):
        // keep the first occurrence of each (alert, link) pair.
        let mut seen = BTreeSet::new();
        matches.retain(|(a, li, _, _)| seen.insert((a.uuid.clone(), *li)));

        let link_ids: Vec<&str> = links.iter().map(|l| l.link_id.as_str()).collect();
        let previous = if link_ids.is_empty() {
            BTreeMap::new()
        } else {
            source::previous_records(&self.es, &self.settings.index, &link_ids, self.timeout)
                .await?
        };

        // One decision per alert, over all its links (same tier by construction).
        let mut per_alert: BTreeMap<&str, (&Alert, u8, Vec<usize>)> = BTreeMap::new();
        for (a, li, tier, _) in &matches {
            let e = per_alert
                .entry(a.uuid.as_str())
                .or_insert((a, *tier, Vec::new()));
            e.1 = e.1.min(*tier);
            e.2.push(*li);
        }
        let mut decided: BTreeMap<&str, (Outcome, Option<String>)> = BTreeMap::new();
        let mut changes: Vec<(&Alert, Change)> = Vec::new();
        for (uuid, (a, tier, lis)) in &per_alert {
            let ours = action::our_tags(
                lis.iter()
                    .map(|i| (links[*i].operation_id.as_str(), links[*i].link_id.as_str())),
            );
            let prev = lis
                .iter()
                .filter_map(|i| previous.get(&record::record_id(uuid, &links[*i].link_id)))
                .filter_map(|r| r["action"]["result"].as_str().and_then(Outcome::parse))
                .min();
            match action::decide(
                a,
                *tier,
                &self.settings.tiers,
                self.settings.action,
                &ours,
                prev,
            ) {
                Decision::Leave(o) => {
                    decided.insert(uuid, (o, None));
                }
                Decision::Change(c) if opts.dry_run => {
                    let what = match c.status {
                        Some(s) => format!("would set {s} and add {}", c.added.join(" ")),
                        None => format!("would add {}", c.added.join(" ")),
                    };
                    decided.insert(uuid, (Outcome::WouldApply, Some(what)));
                }
                Decision::Change(c) => changes.push((a, c)),
            }
        }
        let items: Vec<(&Alert, &Change)> = changes.iter().map(|(a, c)| (*a, c)).collect();
        let results = self.actor.apply(&items, self.timeout).await;
        for ((a, _), r) in items.iter().zip(results) {
            if r.0 == Outcome::Failed {
                tracing::warn!(alert = %a.id, error = r.1.as_deref().unwrap_or(""), "alert not updated; retried next pass");
            }
            decided.insert(a.uuid.as_str(), r);
        }

        // Records, detection and report lines.
        let now = now_millis();
        let mut found: BTreeMap<usize, Found> = BTreeMap::new();
        let mut records = record::Batch::default();
        for (a, li, tier, reason) in &matches {
            let l = &links[*li];
            let (outcome, detail) = decided
                .get(a.uuid.as_str())
                .cloned()
                .unwrap_or((Outcome::NotActed, None));
            found.entry(*li).or_default().add(
                *tier,
                &a.uuid,
                &a.rule_name,
                a.created_ms.unwrap_or(a.time_ms),
            );
            let line = Line {
                alert_id: a.id.clone(),
                alert_index: a.index.clone(),
                rule: a.rule_name.clone(),
                operation_id: l.operation_id.clone(),
                link_id: l.link_id.clone(),
                technique: l.technique_id.clone(),
                tier: *tier,
                reason: reason.clone(),
                outcome,
                detail: detail.clone(),
            };
            on_line(&line);
            report.matches[usize::from(*tier - 1)] += 1;
            *report.outcomes.entry(outcome).or_default() += 1;
            let r = Record {
                alert: a,
                link: l,
                tier: *tier,
                reason,
                action: self.settings.action.name(),
                backend: self.settings.backend.name(),
                outcome,
                detail: detail.as_deref(),
                now_ms: now,
            };
            let prev = previous.get(&r.id());
            let unchanged = prev.is_some_and(|p| {
                p["match"]["tier"].as_u64() == Some(u64::from(*tier))
                    && (outcome == Outcome::AlreadyDone
                        || p["action"]["result"].as_str() == Some(outcome.name()))
            });
            if !unchanged && !opts.dry_run {
                self.shared.correlation.count_match(*tier);
                self.shared.correlation.count_outcome(outcome);
                records.push(&self.settings.index, &r);
            }
        }
        if !opts.dry_run {
            let n = record::write(&self.es, records, self.timeout).await?;
            report.records += n;
            self.shared.correlation.records_written.add(n as u64);
        }

        let batch_ops: BTreeSet<String> = links.iter().map(|l| l.operation_id.clone()).collect();
        let settled =
            detection::settled_operations(&self.es, &self.index, &batch_ops, self.timeout).await?;
        let mut updates = Vec::new();
        let empty = Found::default();
        for (i, l) in links.iter().enumerate() {
            let d = detection::link_detection(
                l,
                found.get(&i).unwrap_or(&empty),
                now,
                self.settings.wait,
                settled.contains(&l.operation_id),
            );
            if d["complete"] != true {
                report.pending += 1;
                if let Some(e) = l.end_ms {
                    report.oldest_pending_end_ms =
                        Some(report.oldest_pending_end_ms.map_or(e, |o| o.min(e)));
                }
            }
            if l.detection.as_ref() == Some(&d) {
                continue;
            }
            if let (Some(seq), Some(term)) = (l.seq_no, l.primary_term) {
                updates.push(Update {
                    id: l.doc_id.clone(),
                    seq_no: seq,
                    primary_term: term,
                    detection: d,
                });
            }
        }
        if !opts.dry_run {
            let (written, conflicts) =
                detection::write(&self.es, &self.index, &updates, self.timeout).await?;
            report.links_written += written;
            if conflicts > 0 {
                tracing::debug!(
                    conflicts,
                    "link documents changed during the pass; next pass updates them"
                );
            }
        }
        Ok(())
    }

    /// The daemon loop: a pass every interval until shutdown. Errors are logged once per
    /// change, shown in health, and retried on the next pass.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let st = &self.shared.correlation;
        let mut prepared = false;
        let mut last_logged: Option<String> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let result = async {
                if !prepared {
                    self.prepare().await?;
                    prepared = true;
                }
                self.pass(&PassOptions::default(), &mut |_| {}).await
            };
            let result = tokio::select! {
                r = result => r,
                _ = shutdown.changed() => break,
            };
            let now = SystemTime::now();
            st.passes.inc();
            match result {
                Ok(r) => {
                    if r.idle.as_deref() != last_logged.as_deref() {
                        if let Some(why) = &r.idle {
                            tracing::info!(reason = %why, "correlation idle");
                        }
                        last_logged = r.idle.clone();
                    }
                    if r.records > 0 || r.links_written > 0 {
                        tracing::info!(
                            links = r.links,
                            alerts = r.alerts,
                            records = r.records,
                            links_updated = r.links_written,
                            tier1 = r.matches[0],
                            tier2 = r.matches[1],
                            tier3 = r.matches[2],
                            "correlation pass"
                        );
                    }
                    let lag = r
                        .oldest_pending_end_ms
                        .map(|e| ((now_millis() - e).max(0) / 1000) as u64);
                    st.update(|s| {
                        s.state = if r.idle.is_some() { "idle" } else { "running" };
                        s.idle_reason = r.idle.clone();
                        s.last_run = Some(now);
                        s.last_ok = Some(now);
                        s.last_error = None;
                        s.lag_seconds = lag;
                        s.links_pending = r.pending as u64;
                    });
                }
                Err(e) => {
                    st.errors.inc();
                    let msg = e.to_string();
                    if last_logged.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, "correlation pass failed; retrying next pass");
                        last_logged = Some(msg.clone());
                    }
                    st.update(|s| {
                        s.last_run = Some(now);
                        s.last_error = Some(msg);
                    });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!("correlation stopped");
    }
}
