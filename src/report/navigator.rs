//! The ATT&CK Navigator layer (layer format 4.5) of an operation: each technique scored and
//! coloured by its outcome, with its link count and detecting rules in the comment, so the
//! exercise can be opened in the Navigator beside the client's other layers.

use serde_json::{Value, json};

use super::model::{Outcome, Report};

/// Enterprise tactics' short names as the Navigator knows them. A technique under a tactic the
/// Navigator does not know (Caldera allows any) is given without a tactic: it then shows under
/// every tactic it belongs to, rather than nowhere.
const TACTICS: [&str; 14] = [
    "reconnaissance",
    "resource-development",
    "initial-access",
    "execution",
    "persistence",
    "privilege-escalation",
    "defense-evasion",
    "credential-access",
    "discovery",
    "lateral-movement",
    "collection",
    "command-and-control",
    "exfiltration",
    "impact",
];

pub fn layer(report: &Report, brand_name: &str) -> Value {
    let op = &report.operation;
    let det = &report.summary.detection;
    let techniques: Vec<Value> = report
        .techniques
        .iter()
        .map(|t| {
            let mut comment = format!("{} execution(s): {}.", t.runs, t.statuses);
            comment.push_str(&format!(" Outcome: {}.", t.outcome_label));
            if !t.rules.is_empty() {
                comment.push_str(&format!(" Detecting rules: {}.", t.rules));
            }
            if !t.time_to_detect.is_empty() {
                comment.push_str(&format!(" Time to detect: {}.", t.time_to_detect));
            }
            let mut v = json!({
                "techniqueID": t.id,
                "score": t.score,
                "color": t.color,
                "comment": comment,
                "enabled": true,
                "metadata": [
                    {"name": "executions", "value": t.runs.to_string()},
                    {"name": "hosts", "value": t.hosts},
                ],
                "showSubtechniques": false
            });
            if TACTICS.contains(&t.tactic.as_str()) {
                v["tactic"] = json!(t.tactic);
            }
            v
        })
        .collect();
    let coverage = match (det.assessed, det.coverage_percent) {
        (true, Some(c)) => format!("detection coverage {c} %"),
        (true, None) => "detection pending".to_string(),
        (false, _) => "detection not assessed".to_string(),
    };
    let by = if brand_name.is_empty() {
        String::new()
    } else {
        format!(" by {brand_name}")
    };
    json!({
        "name": format!("{} ({})", op.name, op.id),
        "versions": {"layer": "4.5", "navigator": "5.1.0"},
        "domain": "enterprise-attack",
        "description": format!(
            "Caldera operation {} for client {}{by}: {} techniques, {} executions, {coverage}. Generated {} by caldera-sidecar {}.",
            op.name, op.client, report.summary.techniques, report.summary.links,
            report.generated_at, report.version
        ),
        "sorting": 0,
        "layout": {
            "layout": "side",
            "aggregateFunction": "average",
            "showID": true,
            "showName": true,
            "showAggregateScores": false,
            "countUnscored": false,
            "expandedSubtechniques": "annotated"
        },
        "hideDisabled": false,
        "techniques": techniques,
        "gradient": {
            "colors": [Outcome::NotDetected.color(), Outcome::Pending.color(), Outcome::Detected.color()],
            "minValue": 0,
            "maxValue": 100
        },
        "legendItems": Outcome::ALL.iter().map(|o| json!({"label": o.label(), "color": o.color()})).collect::<Vec<_>>(),
        "metadata": [
            {"name": "operation_id", "value": op.id},
            {"name": "client", "value": op.client},
        ],
        "links": [],
        "showTacticRowBackground": false,
        "tacticRowBackground": "#dddddd",
        "selectTechniquesAcrossTactics": true,
        "selectSubtechniquesWithParent": false,
        "selectVisibleTechniques": false
    })
}
