#![allow(dead_code)]
//! Caldera scenarios built **only** from the recordings in
//! `tests/fixtures/caldera` (see its README.md). Every function says which
//! recording it returns or which recordings its transformation follows.
//!
//! Ops (ids in the `OP_*_ID` constants):
//! * A `purple-discovery-red`: 26 links, natural end (`op_a_*`).
//! * B `purple-pause-resume-red`: paused / run_one_link / stop / cleanup (`op_b_*`).
//! * C `purple-empty-group`: no agents, empty chain (`op_c_*`).
//! * D `purple-check-acme-noautoclose`: auto_close false (`op_d_*`).
//! * E `purple-out-of-time-red`: cleanup outlasts the close timeout (`op_e_*`).
//! * F `purple-discard-acme`: a link discarded with status -2 (`op_f_*`).
//! * G `purple-report-race`: report right after create gave 500 (`op_g_*`, [`report_race_fault`]).
//! * H `purple-report-while-running` (`op_h_final`).

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::caldera_stub::Fault;

pub const OP_A_ID: &str = "a249d6e7-9272-439e-93d1-124e2e915a1c";
pub const OP_B_ID: &str = "dbc37644-968f-4c7d-a0de-e3b185ea8b2c";
pub const OP_C_ID: &str = "fb494fcc-38f2-47f0-85a0-b291adbc4713";
pub const OP_D_ID: &str = "07315219-6107-45d1-b27f-c2ac46f99499";
pub const OP_E_ID: &str = "853053ea-9b69-48e1-8824-b3dc2a8c5895";
pub const OP_F_ID: &str = "5f980537-ad42-4c5f-a687-eb04d6dc1143";
pub const OP_G_ID: &str = "af1324d9-0a0e-4a48-9a29-a2a280e20f2d";
pub const OP_H_ID: &str = "f51789e6-7a15-402a-a3c6-7f83d8864171";

/// Number of links in op A's finished chain.
pub const OP_A_LINKS: usize = 26;

/// B's cleanup link (`cleanup: 1`), added to the chain after the stop.
pub const OP_B_CLEANUP_LINK_ID: &str = "bc33df61-d5a5-4845-bb49-1aafd452106c";
/// E's cleanup link whose result came back 35 s after `out_of_time`.
pub const OP_E_CLEANUP_LINK_ID: &str = "0da2e1a6-69ea-4b66-a03f-30cfcdc8055a";
/// F's link that was PATCHed to status -2.
pub const OP_F_DISCARDED_LINK_ID: &str = "74badc4f-9913-47d4-a9de-55a87c7d9b0d";

/// `$CALDERA_FIXTURES_DIR`, else the copy vendored in the repository, `tests/fixtures/caldera`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("CALDERA_FIXTURES_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/caldera"
        )),
    }
}

/// Parsed recording; `name` with or without the `.json` suffix
/// (`fixture("operation_finished")` == `fixture("operation_finished.json")`).
/// `error_*.json` files come back as their `{status, content_type, body}` wrapper.
pub fn fixture(name: &str) -> Value {
    let file = if name.ends_with(".json") {
        name.to_string()
    } else {
        format!("{name}.json")
    };
    let path = fixtures_dir().join(&file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("fixture {} is not JSON: {e}", path.display()))
}

/// A recorded `error_*.json` wrapper.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedError {
    pub status: u16,
    pub content_type: String,
    /// A JSON value for JSON bodies, a `Value::String` for text bodies.
    pub body: Value,
}

pub fn fixture_error(name: &str) -> RecordedError {
    let v = fixture(name);
    RecordedError {
        status: v["status"].as_u64().expect("status") as u16,
        content_type: v["content_type"]
            .as_str()
            .expect("content_type")
            .to_string(),
        body: v["body"].clone(),
    }
}

// ---------------------------------------------------------------------------
// Link transformations (each follows a recorded pair, see the doc comments)
// ---------------------------------------------------------------------------

/// A finished link turned back into the "agent has it, result not back" form.
///
/// Follows `operation_link_collected_not_finished.json` vs the same link
/// (`f0f9d319-…`) in `operation_finished.json`, and `operation_links_running.json[1]`
/// vs `477d4c78-…` in `operation_finished.json`: the only differences are
/// `status -3`, `pid null`, `finish null`, `output "False"`, `facts []`
/// (facts are attached when the result arrives) and no `agent_reported_time` key.
/// `collect` keeps the recorded value.
pub fn link_in_flight(link: &Value) -> Value {
    let mut l = link.clone();
    let m = l.as_object_mut().expect("link is an object");
    m.insert("status".into(), Value::from(-3));
    m.insert("pid".into(), Value::Null);
    m.insert("finish".into(), Value::Null);
    m.insert("output".into(), Value::from("False"));
    m.insert("facts".into(), Value::Array(vec![]));
    m.remove("agent_reported_time");
    l
}

/// A finished link turned into the queued form (planner created it, agent has
/// not fetched it): [`link_in_flight`] plus `collect null`.
/// Follows `operation_running.json` `chain[1]` vs `477d4c78-…` in
/// `operation_finished.json` and `operation_link_queued_before_discard.json`.
pub fn link_queued(link: &Value) -> Value {
    let mut l = link_in_flight(link);
    l["collect"] = Value::Null;
    l
}

/// Drop from every `facts[].links` / `used[].links` the ids not in `known`.
/// In the recordings a fact lists every link that produced it, so in a running
/// op a fact only lists links already finished (`operation_running.json`
/// `chain[0].facts[0].links` has 1 id, the finished recording has 2).
fn prune_fact_links(link: &mut Value, known: &[String]) {
    for key in ["facts", "used"] {
        if let Some(facts) = link.get_mut(key).and_then(Value::as_array_mut) {
            for fact in facts {
                if let Some(links) = fact.get_mut("links").and_then(Value::as_array_mut) {
                    links.retain(|id| id.as_str().is_some_and(|s| known.iter().any(|k| k == s)));
                }
            }
        }
    }
}

fn chain(op: &Value) -> &Vec<Value> {
    op["chain"].as_array().expect("op has a chain array")
}

fn link_by_id<'a>(op: &'a Value, id: &str) -> &'a Value {
    chain(op)
        .iter()
        .find(|l| l["id"] == id)
        .unwrap_or_else(|| panic!("link {id} not in op {}", op["id"]))
}

// ---------------------------------------------------------------------------
// Op A: purple-discovery-red
// ---------------------------------------------------------------------------

/// `operation_create_response.json`: POST response, `running`, `chain: []`.
pub fn op_a_created() -> Value {
    fixture("operation_create_response.json")
}

/// `operation_finished.json`: 26 links, all status 0, `finished`.
pub fn op_a_finished() -> Value {
    fixture("operation_finished.json")
}

fn op_a_partial(done: usize, next: Option<fn(&Value) -> Value>) -> Value {
    let extra = usize::from(next.is_some());
    assert!(
        done + extra <= OP_A_LINKS,
        "op A has {OP_A_LINKS} links; done={done} + next={extra} is too many"
    );
    let mut op = op_a_finished();
    let full = chain(&op).clone();
    let known: Vec<String> = full[..done]
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    let mut links: Vec<Value> = full[..done].to_vec();
    if let Some(f) = next {
        links.push(f(&full[done]));
    }
    for l in &mut links {
        prune_fact_links(l, &known);
    }
    op["chain"] = Value::Array(links);
    let finished = done == OP_A_LINKS && next.is_none();
    op["state"] = Value::from(if finished { "finished" } else { "running" });
    op
}

/// Op A while running: the first `done` links exactly as in
/// `operation_finished.json` (facts' `links` pruned to finished links, as in
/// `operation_running.json`), plus, if `in_flight`, link `done` in the
/// collected-not-finished form ([`link_in_flight`];
/// `op_a_progress(5, true).chain[5]` equals
/// `operation_link_collected_not_finished.json`). `state` is `running` until
/// `done == 26 && !in_flight`, then `finished` (== `operation_finished.json`).
/// Not mimicked: `host_group[0].last_seen` stays at its final value (the only
/// other op-level difference between `operation_running.json` and
/// `operation_finished.json`).
pub fn op_a_progress(done: usize, in_flight: bool) -> Value {
    op_a_partial(
        done,
        if in_flight {
            Some(link_in_flight)
        } else {
            None
        },
    )
}

/// Like [`op_a_progress`] but link `done` is queued (status -3, `collect` null),
/// as `477d4c78-…` in `operation_running.json` (`op_a_queued_next(1)` ==
/// `operation_running.json` except `host_group[0].last_seen`).
pub fn op_a_queued_next(done: usize) -> Value {
    op_a_partial(done, Some(link_queued))
}

// ---------------------------------------------------------------------------
// Op B: purple-pause-resume-red
// ---------------------------------------------------------------------------

/// `operation_link_in_flight.json`: running, "Lab slow step A" with the agent
/// (this came before the pause).
pub fn op_b_in_flight() -> Value {
    fixture("operation_link_in_flight.json")
}
/// `operation_patch_paused_response.json`: `paused`, step A still in flight.
pub fn op_b_paused() -> Value {
    fixture("operation_patch_paused_response.json")
}
/// `operation_patch_run_one_link_response.json`: `run_one_link`, 2 links done.
pub fn op_b_run_one_link() -> Value {
    fixture("operation_patch_run_one_link_response.json")
}
/// `operation_patch_running_response.json`: `running` again, 3 links.
pub fn op_b_running() -> Value {
    fixture("operation_patch_running_response.json")
}
/// `operation_with_timeout_and_error_links.json`: `running`, 6 links (0,0,0,0,124,1).
pub fn op_b_timeout_and_error() -> Value {
    fixture("operation_with_timeout_and_error_links.json")
}
/// `operation_patch_finished_response.json`: `finished` by PATCH (the UI stop), 6 links.
pub fn op_b_stopped() -> Value {
    fixture("operation_patch_finished_response.json")
}
/// Not recorded as such: the `cleanup` phase after the stop. Built from
/// `operation_stopped_final.json` with `state: "cleanup"` and the cleanup link
/// (`bc33df61-…`, `cleanup: 1`) in the in-flight form ([`link_in_flight`], the
/// same transformation as E's recorded cleanup link in
/// `operation_state_cleanup.json`). `host_group` is the final one.
pub fn op_b_cleanup() -> Value {
    let mut op = op_b_final();
    op["state"] = Value::from("cleanup");
    for l in op["chain"].as_array_mut().unwrap() {
        if l["id"] == OP_B_CLEANUP_LINK_ID {
            *l = link_in_flight(l);
        }
    }
    op
}
/// `operation_stopped_final.json`: `finished`, 7 links incl. the cleanup link.
pub fn op_b_final() -> Value {
    fixture("operation_stopped_final.json")
}

/// B as a poller sees it, in order: paused, run_one_link, running,
/// timeout-and-error, stopped (`finished`), cleanup, finished (final).
/// ([`op_b_in_flight`] was recorded before `paused`.)
/// Note `finished` is not terminal: index 4 is `finished`, index 5 `cleanup`.
pub fn op_b_sequence() -> Vec<Value> {
    vec![
        op_b_paused(),
        op_b_run_one_link(),
        op_b_running(),
        op_b_timeout_and_error(),
        op_b_stopped(),
        op_b_cleanup(),
        op_b_final(),
    ]
}

// ---------------------------------------------------------------------------
// Op C, D, E, F, G, H
// ---------------------------------------------------------------------------

/// `operation_empty_group_finished.json`: `host_group: []`, `chain: []`, `finished`.
pub fn op_c_empty_group() -> Value {
    fixture("operation_empty_group_finished.json")
}

/// `operation_auto_close_false_idle_running.json`: all 7 links done, still `running`.
pub fn op_d_idle_running() -> Value {
    fixture("operation_auto_close_false_idle_running.json")
}
/// `operation_auto_close_false_finished.json`: after `PATCH {"state":"finished"}`.
pub fn op_d_finished() -> Value {
    fixture("operation_auto_close_false_finished.json")
}

/// `operation_state_cleanup.json`: `cleanup`, cleanup link -3 with `collect` set.
pub fn op_e_cleanup() -> Value {
    fixture("operation_state_cleanup.json")
}
/// Not recorded as such: `out_of_time` while the cleanup link is still -3 (the
/// 35 s between `cleanup → out_of_time` and the late result). It is
/// `operation_state_cleanup.json` with `state: "out_of_time"` (the recorded
/// cleanup → out_of_time diff is only `state`, the link and `last_seen`).
pub fn op_e_out_of_time_pending() -> Value {
    let mut op = op_e_cleanup();
    op["state"] = Value::from("out_of_time");
    op
}
/// `operation_out_of_time.json`: `out_of_time`, late cleanup result arrived (both links 0).
pub fn op_e_out_of_time() -> Value {
    fixture("operation_out_of_time.json")
}
/// E in order: cleanup, out_of_time (cleanup link pending), out_of_time (final).
pub fn op_e_sequence() -> Vec<Value> {
    vec![
        op_e_cleanup(),
        op_e_out_of_time_pending(),
        op_e_out_of_time(),
    ]
}

/// Not recorded as a whole op: F while its first link is queued. The final
/// op (`operation_with_discarded_link.json`) with `state: "running"` and
/// `chain` = [`operation_link_queued_before_discard.json`].
pub fn op_f_queued() -> Value {
    let mut op = op_f_discarded();
    op["state"] = Value::from("running");
    op["chain"] = Value::Array(vec![fixture("operation_link_queued_before_discard.json")]);
    op
}
/// Not recorded as a whole op: F right after the stop (`PATCH finished`) while
/// its second link is still with the agent (README: it finished 5.0 s after the
/// op already showed `finished`). The final op with link 2 in the in-flight form.
pub fn op_f_stopped_in_flight() -> Value {
    let mut op = op_f_discarded();
    for l in op["chain"].as_array_mut().unwrap() {
        if l["id"] != OP_F_DISCARDED_LINK_ID {
            *l = link_in_flight(l);
        }
    }
    op
}
/// `operation_with_discarded_link.json`: `finished`; discarded link (-2) stays in
/// `chain` with `collect`/`finish` null.
pub fn op_f_discarded() -> Value {
    fixture("operation_with_discarded_link.json")
}

/// `operations_list_finished.json`: all 8 ops at the end (sorted by name).
pub fn all_final_ops() -> Vec<Value> {
    match fixture("operations_list_finished.json") {
        Value::Array(v) => v,
        other => panic!("operations_list_finished.json is not an array: {other}"),
    }
}

fn final_op(id: &str) -> Value {
    all_final_ops()
        .into_iter()
        .find(|o| o["id"] == id)
        .unwrap_or_else(|| panic!("op {id} not in operations_list_finished.json"))
}

/// G's final object, from `operations_list_finished.json` (no agents, `finished`, empty chain).
pub fn op_g_final() -> Value {
    final_op(OP_G_ID)
}
/// H's final object, from `operations_list_finished.json` (1 link, `finished`).
pub fn op_h_final() -> Value {
    final_op(OP_H_ID)
}

/// `error_500_report_right_after_create.json` as a fault: use
/// `stub.inject(RouteKind::Report, 1, report_race_fault())`.
/// (Recorded: 500 right after `POST /operations`, 200 three seconds later.)
pub fn report_race_fault() -> Fault {
    let e = fixture_error("error_500_report_right_after_create.json");
    assert_eq!(e.content_type, "text/plain; charset=utf-8");
    Fault::Status(
        e.status,
        e.body.as_str().expect("text body").to_string(),
        "text/plain; charset=utf-8",
    )
}

// ---------------------------------------------------------------------------
// Synthetic ops (for load tests) and small edits
// ---------------------------------------------------------------------------

/// A random (v4) UUID string.
pub fn new_uuid() -> String {
    let a = random_u64();
    let b = random_u64();
    let bytes: Vec<u8> = a.to_be_bytes().into_iter().chain(b.to_be_bytes()).collect();
    let mut bytes: [u8; 16] = bytes.try_into().unwrap();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A finished op with `n_links` links for load tests: op A
/// (`operation_finished.json`) with id `op_id`, name `name`, and its 26 recorded
/// links cloned round-robin with fresh UUIDs. Every field and type is kept as
/// recorded; within each round of 26 the link ids in `id`, `unique`,
/// `facts[].links` and `used[].links` are remapped consistently, and A's op id
/// in `facts[].source` / `used[].source` becomes `op_id`.
pub fn op_many_links(op_id: &str, name: &str, n_links: usize) -> Value {
    let mut op = op_a_finished();
    let template = chain(&op).clone();
    let mut links = Vec::with_capacity(n_links);
    let mut mapping: Vec<(String, String)> = Vec::new();
    for i in 0..n_links {
        if i % template.len() == 0 {
            mapping = template
                .iter()
                .map(|l| (l["id"].as_str().unwrap().to_string(), new_uuid()))
                .collect();
        }
        let mut l = template[i % template.len()].clone();
        remap_strings(&mut l, &mapping, op_id);
        links.push(l);
    }
    op["chain"] = Value::Array(links);
    op["id"] = Value::from(op_id);
    op["name"] = Value::from(name);
    op
}

fn remap_strings(v: &mut Value, mapping: &[(String, String)], op_id: &str) {
    match v {
        Value::String(s) => {
            if let Some((_, new)) = mapping.iter().find(|(old, _)| old == s) {
                *s = new.clone();
            } else if s == OP_A_ID {
                *s = op_id.to_string();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| remap_strings(x, mapping, op_id)),
        Value::Object(m) => m
            .values_mut()
            .for_each(|x| remap_strings(x, mapping, op_id)),
        _ => {}
    }
}

/// `op` with `id` replaced (also in `facts[].source`/`used[].source` of its links).
pub fn with_id(op: Value, id: &str) -> Value {
    let old = op["id"].as_str().expect("op id").to_string();
    let mut op = op;
    if let Some(links) = op["chain"].as_array_mut() {
        for l in links {
            for key in ["facts", "used"] {
                if let Some(facts) = l.get_mut(key).and_then(Value::as_array_mut) {
                    for f in facts {
                        if f["source"] == old.as_str() {
                            f["source"] = Value::from(id);
                        }
                    }
                }
            }
        }
    }
    op["id"] = Value::from(id);
    op
}
/// `op` with `name` replaced.
pub fn with_name(mut op: Value, name: &str) -> Value {
    op["name"] = Value::from(name);
    op
}
/// `op` with `state` replaced (`running, paused, run_one_link, finished, cleanup, out_of_time`).
pub fn with_state(mut op: Value, state: &str) -> Value {
    op["state"] = Value::from(state);
    op
}
/// `op` with `group` replaced (`host_group` left as is).
pub fn with_group(mut op: Value, group: &str) -> Value {
    op["group"] = Value::from(group);
    op
}
/// `op` with `start` replaced (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn with_start(mut op: Value, start: &str) -> Value {
    op["start"] = Value::from(start);
    op
}

/// A link of `op` by id (panics if absent).
pub fn link_of(op: &Value, link_id: &str) -> Value {
    link_by_id(op, link_id).clone()
}

// ---------------------------------------------------------------------------
// Link results
// ---------------------------------------------------------------------------

/// The recorded `result` strings of `GET …/links/{id}/result`, by link id
/// (`operation_link_result*.json`). B's cleanup link is recorded with `""`.
pub fn recorded_link_results() -> Vec<(String, String)> {
    [
        "operation_link_result.json",
        "operation_link_result_timeout.json",
        "operation_link_result_error.json",
        "operation_link_result_no_output_cleanup.json",
    ]
    .iter()
    .map(|f| {
        let v = fixture(f);
        (
            v["link"]["id"].as_str().unwrap().to_string(),
            v["result"].as_str().unwrap().to_string(),
        )
    })
    .collect()
}

/// A `result` string like Caldera's: base64 of Python's default `json.dumps`
/// of `{"stdout", "stderr", "exit_code"}` (`", "`/`": "` separators, non-ASCII
/// escaped). `exit_code` is a string in the recordings (`"0"`, `"-1"`, `"2"`).
pub fn encode_link_result(stdout: &str, stderr: &str, exit_code: &str) -> String {
    let json = format!(
        "{{\"stdout\": {}, \"stderr\": {}, \"exit_code\": {}}}",
        py_json_str(stdout),
        py_json_str(stderr),
        py_json_str(exit_code)
    );
    base64_encode(json.as_bytes())
}

fn py_json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 decoding (padding optional); panics on invalid input.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("invalid base64 byte {c:#x}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
