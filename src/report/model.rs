//! What a report says, computed from the indexed documents: the figures, the matrix, the
//! timeline and the tables, as plain data the template lays out.
//!
//! Everything here is a pure function of the operation document and its link documents, so the
//! figures can be tested without rendering; the documents are read by [`super::read`].
//! Detection comes from the link documents' `detection.*` fields (the correlation stage writes
//! them); coverage is computed here from the links, so the report does not depend on
//! operation-level names.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

pub use super::read::{Link, Operation, Outcome};

#[derive(Debug, Clone, Serialize)]
pub struct Count {
    pub name: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DetectionSummary {
    /// Any link carries correlation data.
    pub assessed: bool,
    /// Techniques with a decided result (detected or not).
    pub techniques_assessed: usize,
    pub techniques_detected: usize,
    pub techniques_pending: usize,
    /// `detected / assessed` in percent, one decimal; `None` when nothing was decided.
    pub coverage_percent: Option<f64>,
    pub median_time_to_detect_ms: Option<u64>,
    /// The median as a reader wants it (`1 min 23 s`).
    pub median_time_to_detect: Option<String>,
    pub alerts: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub links: usize,
    pub techniques: usize,
    pub tactics: usize,
    pub hosts: usize,
    pub by_status: Vec<Count>,
    pub detection: DetectionSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct TechniqueRow {
    pub id: String,
    pub name: String,
    pub tactic: String,
    pub hosts: String,
    pub runs: usize,
    pub statuses: String,
    pub outcome: Outcome,
    pub outcome_label: &'static str,
    pub color: &'static str,
    pub rules: String,
    pub time_to_detect: String,
    /// Percent of its links that were detected (assessed) or succeeded (not assessed).
    pub score: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixColumn {
    pub tactic: String,
    pub techniques: Vec<MatrixCell>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixCell {
    pub id: String,
    pub name: String,
    pub color: &'static str,
    pub runs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineHost {
    pub host: String,
    pub rows: Vec<TimelineRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineRow {
    pub time: String,
    pub technique: String,
    pub ability: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppendixRow {
    pub time: String,
    pub host: String,
    pub technique: String,
    pub ability: String,
    pub status: String,
    pub command: String,
    pub output: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LegendItem {
    pub label: &'static str,
    pub color: &'static str,
}

/// The whole report as data.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub operation: Operation,
    pub summary: Summary,
    pub matrix: Vec<MatrixColumn>,
    pub timeline: Vec<TimelineHost>,
    pub techniques: Vec<TechniqueRow>,
    pub appendix: Vec<AppendixRow>,
    pub legend: Vec<LegendItem>,
    pub generated_at: String,
    pub version: &'static str,
}

/// The median of a non-empty list (the lower middle for an even count: a time that occurred).
fn median(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[(v.len() - 1) / 2])
}

pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms} ms"),
        1..=59 => format!("{:.1} s", ms as f64 / 1000.0),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// `2026-11-28T15:41:48Z` → `2026-11-28 15:41:48 UTC`.
fn readable_time(t: &str) -> String {
    match t.split_once('T') {
        Some((d, rest)) => {
            let hms: String = rest.chars().take(8).collect();
            format!("{d} {hms} UTC")
        }
        None => t.to_string(),
    }
}

fn outcome_of(links: &[&Link]) -> Outcome {
    let statuses: Vec<&str> = links
        .iter()
        .filter_map(|l| l.detection.as_ref().map(|d| d.status.as_str()))
        .collect();
    if statuses.contains(&"detected") {
        Outcome::Detected
    } else if statuses.contains(&"not_detected") {
        Outcome::NotDetected
    } else if !statuses.is_empty() {
        Outcome::Pending
    } else if links.iter().any(|l| l.status == "success") {
        Outcome::Executed
    } else if links.iter().any(|l| l.ran()) {
        Outcome::Failed
    } else {
        Outcome::NotRun
    }
}

/// Builds the report. Links are sorted by time, then id, so the same documents always give
/// the same report.
pub fn build(op_doc: &Value, link_docs: &[Value], generated_at: &str) -> Report {
    let operation = Operation::from_doc(op_doc);
    let mut links: Vec<Link> = link_docs.iter().map(Link::from_doc).collect();
    links.sort_by(|a, b| (&a.time, &a.id).cmp(&(&b.time, &b.id)));

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for l in &links {
        *by_status.entry(or_unknown(&l.status)).or_default() += 1;
    }
    // Technique → its links, in ATT&CK id order.
    let mut by_technique: BTreeMap<&str, Vec<&Link>> = BTreeMap::new();
    for l in links.iter().filter(|l| !l.technique_id.is_empty()) {
        by_technique.entry(&l.technique_id).or_default().push(l);
    }
    let tactics: BTreeSet<&str> = links
        .iter()
        .map(|l| l.tactic.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    let hosts: BTreeSet<&str> = links
        .iter()
        .map(|l| l.host.as_str())
        .filter(|h| !h.is_empty())
        .collect();

    let mut techniques = Vec::new();
    let mut detected = 0;
    let mut assessed_decided = 0;
    let mut pending = 0;
    for (id, ls) in &by_technique {
        let outcome = outcome_of(ls);
        match outcome {
            Outcome::Detected => {
                detected += 1;
                assessed_decided += 1;
            }
            Outcome::NotDetected => assessed_decided += 1,
            Outcome::Pending => pending += 1,
            _ => {}
        }
        let first = ls[0];
        let hosts: BTreeSet<&str> = ls.iter().map(|l| l.host.as_str()).collect();
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        for l in ls {
            *statuses.entry(or_unknown(&l.status)).or_default() += 1;
        }
        let rules: BTreeSet<&str> = ls
            .iter()
            .filter_map(|l| l.detection.as_ref())
            .flat_map(|d| d.rules.iter().map(String::as_str))
            .collect();
        let ttd = ls
            .iter()
            .filter_map(|l| l.detection.as_ref())
            .filter(|d| d.status == "detected")
            .filter_map(|d| d.time_to_detect_ms)
            .min();
        let assessed_links = ls.iter().filter(|l| l.detection.is_some()).count();
        let hit = ls
            .iter()
            .filter(|l| l.detection.as_ref().is_some_and(|d| d.status == "detected"))
            .count();
        let succeeded = ls.iter().filter(|l| l.status == "success").count();
        // Assessed: share of links detected; otherwise share of links that succeeded.
        let score = (hit * 100)
            .checked_div(assessed_links)
            .or_else(|| (succeeded * 100).checked_div(ls.len()))
            .unwrap_or(0) as u32;
        techniques.push(TechniqueRow {
            id: id.to_string(),
            name: first.technique_name.clone(),
            tactic: first.tactic.clone(),
            hosts: hosts.into_iter().collect::<Vec<_>>().join(", "),
            runs: ls.len(),
            statuses: statuses
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            outcome,
            outcome_label: outcome.label(),
            color: outcome.color(),
            rules: rules.into_iter().collect::<Vec<_>>().join(", "),
            time_to_detect: ttd.map(human_duration).unwrap_or_default(),
            score,
        });
    }

    let assessed = links.iter().any(|l| l.detection.is_some());
    let ttds: Vec<u64> = links
        .iter()
        .filter_map(|l| l.detection.as_ref())
        .filter(|d| d.status == "detected")
        .filter_map(|d| d.time_to_detect_ms)
        .collect();
    let median_ms = median(ttds);
    let detection = DetectionSummary {
        assessed,
        techniques_assessed: assessed_decided,
        techniques_detected: detected,
        techniques_pending: pending,
        coverage_percent: (assessed_decided > 0)
            .then(|| (detected as f64 * 1000.0 / assessed_decided as f64).round() / 10.0),
        median_time_to_detect_ms: median_ms,
        median_time_to_detect: median_ms.map(human_duration),
        alerts: links
            .iter()
            .filter_map(|l| l.detection.as_ref())
            .map(|d| d.alert_count)
            .sum(),
    };

    // Matrix: one column per tactic, its techniques beneath (a technique listed under each
    // tactic it ran as, like the Navigator).
    let mut columns: BTreeMap<&str, BTreeMap<&str, Vec<&Link>>> = BTreeMap::new();
    for l in links.iter().filter(|l| !l.technique_id.is_empty()) {
        let tactic = if l.tactic.is_empty() {
            "unknown"
        } else {
            l.tactic.as_str()
        };
        columns
            .entry(tactic)
            .or_default()
            .entry(&l.technique_id)
            .or_default()
            .push(l);
    }
    let matrix = columns
        .into_iter()
        .map(|(tactic, techs)| MatrixColumn {
            tactic: tactic.to_string(),
            techniques: techs
                .into_iter()
                .map(|(id, ls)| MatrixCell {
                    id: id.to_string(),
                    name: ls[0].technique_name.clone(),
                    color: outcome_of(&ls).color(),
                    runs: ls.len(),
                })
                .collect(),
        })
        .collect();

    let mut per_host: BTreeMap<&str, Vec<TimelineRow>> = BTreeMap::new();
    for l in &links {
        let host = if l.host.is_empty() {
            "unknown host"
        } else {
            &l.host
        };
        per_host.entry(host).or_default().push(TimelineRow {
            time: l.time.as_deref().map(readable_time).unwrap_or_default(),
            technique: l.technique_id.clone(),
            ability: l.ability.clone(),
            status: or_unknown(&l.status),
        });
    }
    let timeline = per_host
        .into_iter()
        .map(|(host, rows)| TimelineHost {
            host: host.to_string(),
            rows,
        })
        .collect();

    let appendix = links
        .iter()
        .filter(|l| l.command.is_some() || l.output.is_some())
        .map(|l| AppendixRow {
            time: l.time.as_deref().map(readable_time).unwrap_or_default(),
            host: l.host.clone(),
            technique: l.technique_id.clone(),
            ability: l.ability.clone(),
            status: or_unknown(&l.status),
            command: l.command.clone().unwrap_or_default(),
            output: l.output.clone(),
        })
        .collect();

    Report {
        summary: Summary {
            links: links.len(),
            techniques: by_technique.len(),
            tactics: tactics.len(),
            hosts: hosts.len(),
            by_status: by_status
                .into_iter()
                .map(|(name, count)| Count { name, count })
                .collect(),
            detection,
        },
        operation: Operation {
            start: readable_time(&operation.start),
            finish: readable_time(&operation.finish),
            ..operation
        },
        matrix,
        timeline,
        techniques,
        appendix,
        legend: Outcome::ALL
            .iter()
            .map(|o| LegendItem {
                label: o.label(),
                color: o.color(),
            })
            .collect(),
        generated_at: readable_time(generated_at),
        version: env!("CARGO_PKG_VERSION"),
    }
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(id: &str, tech: &str, status: &str, detection: Option<Value>) -> Value {
        let mut d = json!({
            "link_id": id, "technique_id": tech, "technique_name": format!("name of {tech}"),
            "tactic": "discovery", "ability_name": "ability", "host": {"name": "vm"},
            "status": status, "event": {"start": format!("2026-11-28T15:41:{id}Z")},
            "process": {"command_line": "whoami"}
        });
        if let Some(det) = detection {
            d["detection"] = det;
        }
        d
    }

    #[test]
    fn without_correlation_detection_is_not_assessed() {
        let r = build(
            &json!({"operation_name": "op"}),
            &[
                link("01", "T1033", "success", None),
                link("02", "T1082", "error", None),
            ],
            "2026-11-28T16:00:00Z",
        );
        assert!(!r.summary.detection.assessed);
        assert_eq!(r.summary.detection.coverage_percent, None);
        assert_eq!(r.summary.techniques, 2);
        assert_eq!(r.techniques[0].outcome, Outcome::Executed);
        assert_eq!(r.techniques[1].outcome, Outcome::Failed);
    }

    #[test]
    fn coverage_and_median_come_from_the_links() {
        let det = |st: &str, ms: u64| json!({"status": st, "alert_count": 1, "rules": ["Whoami run"], "time_to_detect_ms": ms});
        let r = build(
            &json!({}),
            &[
                link("01", "T1033", "success", Some(det("detected", 4_000))),
                link("02", "T1033", "success", Some(det("not_detected", 0))),
                link("03", "T1082", "success", Some(det("not_detected", 0))),
                link("04", "T1057", "success", Some(det("detected", 90_000))),
                link("05", "T1057", "success", Some(det("detected", 20_000))),
                link("06", "T1069", "success", Some(json!({"status": "pending"}))),
            ],
            "2026-11-28T16:00:00Z",
        );
        let d = &r.summary.detection;
        assert!(d.assessed);
        assert_eq!(
            (
                d.techniques_detected,
                d.techniques_assessed,
                d.techniques_pending
            ),
            (2, 3, 1)
        );
        assert_eq!(d.coverage_percent, Some(66.7));
        assert_eq!(d.median_time_to_detect_ms, Some(20_000));
        assert_eq!(d.median_time_to_detect.as_deref(), Some("20.0 s"));
        let t1033 = r.techniques.iter().find(|t| t.id == "T1033").unwrap();
        assert_eq!(t1033.outcome, Outcome::Detected);
        assert_eq!(t1033.score, 50);
        assert_eq!(t1033.rules, "Whoami run");
        assert_eq!(t1033.time_to_detect, "4.0 s");
    }

    #[test]
    fn text_is_sanitized_again() {
        let r = build(
            &json!({"operation_name": "evil\u{202E}name<script>x</script>"}),
            &[],
            "2026-11-28T16:00:00Z",
        );
        assert_eq!(r.operation.name, "evilnamex");
    }
}
