//! Document building from the recorded Caldera responses (no servers needed).

mod support;

use caldera_sidecar::caldera::model::Operation;
use caldera_sidecar::document::types::Timestamp;
use caldera_sidecar::document::{DocSettings, build};
use serde_json::{Value, json};
use support::scenarios::*;

fn built(op: Value) -> caldera_sidecar::document::Built {
    let bytes = serde_json::to_vec(&op).unwrap();
    let op: Operation = serde_json::from_slice(&bytes).expect("recorded op decodes");
    build(op, None, false, Timestamp::now(), &DocSettings::default()).expect("builds")
}

#[test]
fn every_recorded_operation_decodes_and_builds() {
    for op in all_final_ops() {
        let id = op["id"].as_str().unwrap().to_string();
        let n = op["chain"].as_array().unwrap().len();
        let b = built(op);
        assert_eq!(b.links.len(), n, "{id}");
        assert_eq!(b.dropped.total(), 0, "{id}: {:?}", b.dropped);
        assert!(b.operation.purple_team_exercise);
    }
}

#[test]
fn invalid_technique_ids_are_dropped_and_counted() {
    let mut op = op_a_finished();
    let chain = op["chain"].as_array_mut().unwrap();
    chain[0]["ability"]["technique_id"] = json!("T12");
    chain[1]["ability"]["technique_id"] = json!("<img src=x>");
    chain[2]["ability"]["tactic"] = json!("Defense Evasion");
    chain[3]["ability"]["tactic"] = json!("<b>x</b>");
    let b = built(op);
    assert_eq!(b.dropped.technique_ids, 2, "{:?}", b.dropped);
    assert_eq!(b.dropped.tactics, 1, "{:?}", b.dropped);
    assert_eq!(b.dropped.total(), 3, "{:?}", b.dropped);
    assert!(b.links[0].technique_id.is_none());
    assert_eq!(
        b.links[2].tactic.as_ref().unwrap().as_str(),
        "defense-evasion"
    );
    assert_eq!(b.links.len(), 26);
}

#[test]
fn in_flight_and_queued_links_are_named() {
    let b = built(op_a_progress(2, true));
    assert_eq!(b.links[2].status, "in_flight");
    assert!(b.links[2].finish.is_none() && b.links[2].process.pid.is_none());
    assert!(!b.all_links_done);
    let b = built(op_a_queued_next(2));
    assert_eq!(b.links[2].status, "queued");
    let b = built(op_a_finished());
    assert!(b.all_links_done);
}

#[test]
fn out_of_time_with_a_pending_cleanup_link_is_not_done() {
    assert!(!built(op_e_out_of_time_pending()).all_links_done);
    assert!(built(op_e_out_of_time()).all_links_done);
    // A discarded link never finishes and does not hold the operation open.
    assert!(built(op_f_discarded()).all_links_done);
}

#[test]
fn a_thousand_techniques_are_capped_at_500() {
    let mut op = op_a_finished();
    let template = op["chain"][0].clone();
    let mut chain: Vec<Value> = (0..1000)
        .map(|i| {
            let mut l = template.clone();
            l["id"] = json!(format!("{i:08x}-0000-4000-8000-00000000abcd"));
            l["ability"]["technique_id"] = json!(format!("T{}", 1000 + i));
            l
        })
        .collect();
    for (i, bad) in ["T12", "<img src=x>", "T1059.4", "1059"].iter().enumerate() {
        let mut l = template.clone();
        l["id"] = json!(format!("{:08x}-0000-4000-8000-00000000abcd", 5000 + i));
        l["ability"]["technique_id"] = json!(bad);
        chain.push(l);
    }
    op["chain"] = Value::Array(chain);
    let b = built(op);
    assert_eq!(b.dropped.technique_ids, 4, "{:?}", b.dropped);
    assert_eq!(b.operation.techniques.len(), 500);
    assert_eq!(b.operation.technique_count_total, 1000);
    assert_eq!(b.links.len(), 1004);
}
