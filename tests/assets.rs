//! Deployment assets: the systemd unit passes `systemd-analyze verify` and keeps its
//! hardening, and the Kibana saved objects are a well-formed export whose references resolve
//! and whose queries are the documented ones.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/caldera-sidecar.service"
);
const KIBANA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/kibana/purple-team-saved-objects.ndjson"
);

fn unit_text() -> String {
    std::fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("cannot read {UNIT}: {e}"))
}

/// `Key=value` settings of the unit, by key (a repeated key keeps every value).
fn unit_settings(text: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a Key=value line: {line:?}"));
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let found = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "systemd-analyze is not installed, so the systemd unit cannot be verified: \
         install it (Debian/Ubuntu: apt-get install systemd) — scripts/test.sh does ({:?})",
        found.err()
    );
    // `verify` checks that ExecStart's binary exists and is executable: point it at the one
    // cargo just built, in a copy of the unit (the file name must stay the unit's name).
    let text = unit_text();
    let exec = "ExecStart=/usr/local/bin/caldera-sidecar run";
    assert!(text.contains(exec), "the unit must start {exec:?}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("caldera-sidecar.service");
    std::fs::write(&copy, text.replace(exec, &format!("ExecStart={BIN} run"))).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        // No pager, no colour; works as root in a container without a running systemd.
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{report}"
    );
    // Unknown or misplaced keys are only warnings ("…, ignoring") with exit code 0: refuse
    // any remark about our unit.
    let remarks: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("caldera-sidecar.service"))
        .collect();
    assert!(remarks.is_empty(), "systemd-analyze remarks:\n{report}");

    // The same check must catch a broken unit, or it proves nothing.
    let broken = dir.path().join("broken").join("caldera-sidecar.service");
    std::fs::create_dir(broken.parent().unwrap()).unwrap();
    std::fs::write(
        &broken,
        text.replace(exec, "ExecStart=/nonexistent/caldera-sidecar run"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success(), "verify accepted a missing binary");
}

#[test]
fn systemd_unit_is_hardened_and_stops_gracefully() {
    let s = unit_settings(&unit_text());
    let one = |k: &str| -> String {
        let v = s.get(k).unwrap_or_else(|| panic!("{k} is missing"));
        v.last().cloned().unwrap_or_default()
    };
    for (k, want) in [
        ("User", "caldera-sidecar"),
        ("Group", "caldera-sidecar"),
        ("EnvironmentFile", "/etc/caldera-sidecar/env"),
        ("ExecStart", "/usr/local/bin/caldera-sidecar run"),
        ("WorkingDirectory", "/var/lib/caldera-sidecar"),
        ("StateDirectory", "caldera-sidecar"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/caldera-sidecar"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
    ] {
        assert_eq!(one(k), want, "{k}");
    }
    assert!(s.contains_key("RestartSec"));
    assert!(
        s["SystemCallFilter"].iter().any(|v| v == "@system-service"),
        "{:?}",
        s["SystemCallFilter"]
    );
    let env = s["Environment"].join(" ");
    for want in [
        "SPOOL_DIR=/var/lib/caldera-sidecar/spool",
        "DEAD_LETTER_DIR=/var/lib/caldera-sidecar/dead-letter",
    ] {
        assert!(env.split_whitespace().any(|w| w == want), "{env}");
    }
    // The daemon flushes for up to 30 s after SIGTERM: systemd must wait longer than that.
    let stop: u64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(stop > 30, "TimeoutStopSec={stop}");
    // DynamicUser would give the spool a different owner on every start.
    assert!(
        s.get("DynamicUser")
            .is_none_or(|v| v.iter().all(|x| x == "no"))
    );
}

// ---- Kibana saved objects ----------------------------------------------------------------

fn kibana_objects() -> Vec<Value> {
    let text =
        std::fs::read_to_string(KIBANA).unwrap_or_else(|e| panic!("cannot read {KIBANA}: {e}"));
    assert!(text.ends_with('\n'), "the export ends with a newline");
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            assert!(!line.trim().is_empty(), "line {} is empty", i + 1);
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {} is not JSON: {e}", i + 1));
            assert!(v.is_object(), "line {} is not an object", i + 1);
            v
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], title: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["attributes"]["title"] == title)
        .unwrap_or_else(|| panic!("no saved object titled {title:?}"))
}

/// The search source of a saved search, checked against its references; returns it.
fn search_source(objects: &[Value], search: &Value) -> Value {
    let raw = search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"]
        .as_str()
        .expect("searchSourceJSON is a string (JSON inside JSON, as Kibana stores it)");
    let src: Value = serde_json::from_str(raw).expect("searchSourceJSON parses");
    let ref_name = src["indexRefName"]
        .as_str()
        .expect("the search names its data view by indexRefName, not by id");
    assert!(
        src.get("index").is_none(),
        "a raw index id bypasses references"
    );
    let reference = search["references"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == ref_name)
        .unwrap_or_else(|| panic!("no reference named {ref_name}"));
    assert_eq!(reference["type"], "index-pattern");
    let target = objects
        .iter()
        .find(|o| o["id"] == reference["id"])
        .expect("the referenced data view is in the file");
    assert_eq!(target["type"], "index-pattern");
    src
}

#[test]
fn kibana_export_is_well_formed() {
    let objects = kibana_objects();
    let mut ids = HashSet::new();
    for o in &objects {
        let (ty, id) = (
            o["type"].as_str().expect("type"),
            o["id"].as_str().expect("id"),
        );
        assert!(!id.is_empty());
        assert!(ids.insert((ty, id)), "duplicate id {ty}/{id}");
        assert!(o["attributes"].is_object(), "{id}: attributes");
        assert!(o["attributes"]["title"].is_string(), "{id}: title");
        // Kibana 8.8+ exports carry both migration versions; importing an object migrates it
        // up from these, so they must not be newer than the oldest supported Kibana.
        assert_eq!(o["coreMigrationVersion"], "8.8.0", "{id}");
        assert!(o["typeMigrationVersion"].is_string(), "{id}");
        for r in o["references"].as_array().expect("references is an array") {
            let (rt, rid) = (
                r["type"].as_str().expect("reference type"),
                r["id"].as_str().expect("reference id"),
            );
            assert!(r["name"].is_string(), "{id}: reference name");
            assert!(
                objects.iter().any(|t| t["type"] == rt && t["id"] == rid),
                "{id}: reference to {rt}/{rid} is not in the file"
            );
        }
    }
    // Ids are unique across types too (Kibana's import resolves references by type and id;
    // unique ids keep a hand edit from pointing at the wrong object).
    let plain: HashSet<&str> = ids.iter().map(|(_, id)| *id).collect();
    assert_eq!(plain.len(), ids.len());
}

#[test]
fn kibana_objects_are_the_documented_ones() {
    let objects = kibana_objects();
    let views: Vec<&Value> = objects
        .iter()
        .filter(|o| o["type"] == "index-pattern")
        .collect();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0]["attributes"]["title"], "purple-team-logs*");
    assert_eq!(views[0]["attributes"]["timeFieldName"], "@timestamp");

    let hide = find(&objects, "Hide purple team simulations");
    assert_eq!(hide["type"], "search");
    let src = search_source(&objects, hide);
    assert_eq!(src["query"]["query"], "NOT purple_team_exercise:true");
    assert_eq!(src["query"]["language"], "kuery");

    let by_technique = find(&objects, "Purple team simulations by technique");
    assert_eq!(by_technique["type"], "search");
    let src = search_source(&objects, by_technique);
    assert_eq!(src["query"]["query"], "purple_team_exercise:true");
    assert_eq!(src["query"]["language"], "kuery");
    assert_eq!(
        by_technique["attributes"]["columns"],
        serde_json::json!([
            "technique_id",
            "tactic",
            "host.name",
            "operation_name",
            "status"
        ])
    );
    assert_eq!(
        by_technique["attributes"]["sort"],
        serde_json::json!([["@timestamp", "desc"]])
    );
    for o in [hide, by_technique] {
        assert_eq!(o["typeMigrationVersion"], "8.0.0");
        assert_eq!(o["references"].as_array().map(Vec::len), Some(1));
    }
}

#[test]
fn kibana_fields_exist_in_the_index_template() {
    // The columns and the query fields must be ones the sidecar writes (mapped by its template).
    let template = caldera_sidecar::sink::template::template_body("purple-team-logs");
    let props = &template["template"]["mappings"]["properties"];
    let mapped = |path: &str| {
        let parts: Vec<&str> = path.split('.').collect();
        let mut node = props;
        for (i, part) in parts.iter().enumerate() {
            node = &node[*part];
            if i + 1 < parts.len() {
                node = &node["properties"];
            }
        }
        node["type"].is_string()
    };
    for field in [
        "@timestamp",
        "purple_team_exercise",
        "technique_id",
        "tactic",
        "host.name",
        "operation_name",
        "status",
    ] {
        assert!(mapped(field), "{field} is not mapped by the index template");
    }
    assert!(Path::new(KIBANA).exists());
}
