//! The sink when the disk, the operator or Elasticsearch work against it: dead letters that
//! cannot be written, a spool replayed by hand while the daemon drains it, SIGTERM while
//! Elasticsearch hangs, and `replay` given files it must not read. Real search server behind
//! the fault-injecting proxy, the Caldera stub, the sidecar in-process or as the binary.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::app;
use support::caldera_stub::CalderaStub;
use support::proxy::{Mode, Proxy};
use support::scenarios::*;
use support::search::{Search, search_url, unique_index, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");

fn dir_of(env: &[(String, String)], key: &str) -> PathBuf {
    PathBuf::from(&env.iter().find(|(k, _)| k == key).unwrap().1)
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// An index where `paw` is a number: every link document (paw is a string) is refused.
async fn conflicting_index(index: &str) {
    let r = reqwest::Client::new()
        .put(format!("{}/{index}", search_url()))
        .json(&json!({"mappings": {"properties": {"paw": {"type": "long"}}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

fn replay_cmd(dir: &Path, index: &str) -> Command {
    let mut c = Command::new(BIN);
    c.arg("replay")
        .arg(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ELK_URL", search_url())
        .env("ELK_INDEX", index)
        .current_dir(std::env::temp_dir());
    c
}

#[tokio::test]
async fn refused_documents_stay_spooled_until_their_dead_letter_is_written() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    proxy.set_mode(Mode::Refuse).await;
    let index = unique_index("unlettered");
    let s = Search::new(&index);
    conflicting_index(&index).await;
    // DEAD_LETTER_DIR below a regular file: it cannot be created (ENOTDIR, even for root).
    let base = tempfile::tempdir().unwrap();
    let blocker = base.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let dead = blocker.join("dead");
    let mut env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ELK_URL", &proxy.url()),
            ("BREAKER_FAILURES", "1"),
            ("BREAKER_COOLDOWN", "1"),
        ],
    );
    env.retain(|(k, _)| k != "DEAD_LETTER_DIR");
    env.push(("DEAD_LETTER_DIR".into(), dead.display().to_string()));
    let spool = dir_of(&env, "SPOOL_DIR");
    stub.put_operation(op_a_finished());
    let r = app::start(&env).await;
    wait_for(WAIT, "27 documents spooled", || async {
        (json_files(&spool).len() == 27).then_some(())
    })
    .await;
    // Spool files hold executed commands: private whatever the umask.
    assert_eq!(mode(&spool), 0o700);
    assert!(json_files(&spool).iter().all(|f| mode(f) == 0o600));

    // Elasticsearch is back: the operation document drains, the 26 refused link documents
    // cannot be dead-lettered and must stay in the spool.
    proxy.set_mode(Mode::Pass).await;
    wait_for(WAIT, "op doc drained", || async {
        s.operation(OP_A_ID).await
    })
    .await;
    let st = wait_for(WAIT, "dead-letter failure reported", || async {
        let st = r.shared.spool_status();
        st.dead_letter_error.is_some().then_some(st)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        json_files(&spool).len(),
        26,
        "refused documents were dropped"
    );
    assert_eq!(st.dead_letters, 0);
    let (_, h) = app::health(&r).await;
    assert_eq!(h["checks"]["dead_letters"]["status"], "degraded", "{h}");
    let msg = h["checks"]["dead_letters"]["message"].as_str().unwrap();
    assert!(msg.contains("DEAD_LETTER_DIR"), "{msg}");

    // The directory becomes possible: the held documents are dead-lettered, then leave the spool.
    std::fs::remove_file(&blocker).unwrap();
    wait_for(WAIT, "26 dead letters", || async {
        (json_files(&dead).len() == 26).then_some(())
    })
    .await;
    wait_for(WAIT, "spool empty", || async {
        json_files(&spool).is_empty().then_some(())
    })
    .await;
    assert_eq!(mode(&dead), 0o700);
    assert!(json_files(&dead).iter().all(|f| mode(f) == 0o600));
    wait_for(WAIT, "health clear", || async {
        r.shared
            .spool_status()
            .dead_letter_error
            .is_none()
            .then_some(())
    })
    .await;
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn replaying_the_spool_by_hand_while_the_daemon_runs_leaves_no_ghosts() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    proxy.set_mode(Mode::Refuse).await;
    let index = unique_index("ghosts");
    let s = Search::new(&index);
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ELK_URL", &proxy.url()),
            ("BREAKER_FAILURES", "1"),
            ("BREAKER_COOLDOWN", "1"),
            ("BREAKER_MAX_COOLDOWN", "1"),
            ("BULK_MAX_DOCS", "1"),
        ],
    );
    let spool = dir_of(&env, "SPOOL_DIR");
    stub.put_operation(op_a_finished());
    let r = app::start(&env).await;
    wait_for(WAIT, "27 documents spooled", || async {
        (json_files(&spool).len() == 27).then_some(())
    })
    .await;
    // Someone replays the spool by hand, straight into the index.
    let out = replay_cmd(&spool, &index).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("27 indexed"), "{text}");
    assert!(json_files(&spool).is_empty());
    // Newer documents queue behind the 27 the daemon still believes it holds.
    stub.put_operation(op_c_empty_group());
    wait_for(WAIT, "C spooled", || async {
        json_files(&spool)
            .iter()
            .any(|f| f.to_string_lossy().contains(OP_C_ID))
            .then_some(())
    })
    .await;
    proxy.set_mode(Mode::Pass).await;
    wait_for(WAIT, "C drained past the ghosts", || async {
        s.operation(OP_C_ID).await
    })
    .await;
    wait_for(WAIT, "spool empty in health", || async {
        let st = r.shared.spool_status();
        (st.documents == 0 && st.bytes == 0).then_some(())
    })
    .await;
    wait_for(WAIT, "healthy again", || async {
        let (_, h) = app::health(&r).await;
        (h["checks"]["spool"]["status"] == "ok").then_some(())
    })
    .await;
    assert_eq!(s.links(OP_A_ID).await.len(), 26);
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn sigterm_while_elasticsearch_hangs_and_a_batch_retries_spools_everything() {
    let stub = CalderaStub::start().await;
    let proxy = Proxy::start(&search_url()).await;
    proxy.set_mode(Mode::Hang).await;
    let index = unique_index("sigterm-hang");
    let s = Search::new(&index);
    // Many retries with growing backoff and a breaker that never opens: without a switch to
    // a final attempt, the retries of the first batch outlast the 30 s shutdown limit.
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ELK_URL", &proxy.url()),
            ("ELK_CONNECTION_TIMEOUT", "2"),
            ("ELK_MAX_RETRIES", "10"),
            ("BREAKER_FAILURES", "100"),
        ],
    );
    let spool = dir_of(&env, "SPOOL_DIR");
    stub.put_operation(op_a_finished());
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(WAIT, "a batch retrying", || async {
        (proxy.bulk_requests() >= 2).then_some(())
    })
    .await;
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "took {took:?}");
    assert!(took < Duration::from_secs(30), "bounded shutdown: {took:?}");
    // Every document is indexed or in the spool.
    proxy.set_mode(Mode::Pass).await;
    let spooled = json_files(&spool).len();
    // The hanging server indexed nothing, so the index may not even exist: ask directly.
    let r = reqwest::get(format!("{}/{index}/_count", search_url()))
        .await
        .unwrap();
    let indexed = if r.status() == 404 {
        0
    } else {
        let v: serde_json::Value = r.json().await.unwrap();
        v["count"].as_u64().unwrap() as usize
    };
    assert_eq!(
        spooled + indexed,
        27,
        "{spooled} spooled, {indexed} indexed"
    );
    assert_eq!(spooled, 27, "the hanging server indexed nothing");
    s.delete_index().await;
}

#[tokio::test]
async fn replay_refuses_links_and_files_of_other_users() {
    let index = unique_index("replay-refuse");
    let s = Search::new(&index);
    let dir = tempfile::tempdir().unwrap();
    let private = tempfile::tempdir().unwrap();
    let secret = private.path().join("secret.json");
    std::fs::write(
        &secret,
        json!({"event": {"id": "link-secret"}, "sidecar": {"sequence": 5}, "secret": "x"})
            .to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A spool-named link to it, a spool-named directory, and one genuine spool file.
    std::os::unix::fs::symlink(
        &secret,
        dir.path().join("00000000000000000005-link-secret.json"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("00000000000000000006-link-dir.json")).unwrap();
    std::fs::write(
        dir.path().join("00000000000000000007-link-ok.json"),
        json!({"event": {"id": "link-ok"}, "purple_team_exercise": true}).to_string(),
    )
    .unwrap();
    // A file owned by another user (the test runs as root in CI containers; otherwise skip
    // that part: an unprivileged user cannot give a file away).
    let foreign = dir.path().join("00000000000000000008-link-foreign.json");
    std::fs::write(
        &foreign,
        json!({"event": {"id": "link-foreign"}}).to_string(),
    )
    .unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    } else {
        std::fs::remove_file(&foreign).unwrap();
    }
    let out = replay_cmd(dir.path(), &index).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("1 indexed"), "{text}");
    assert!(
        text.contains("00000000000000000005-link-secret.json") && text.contains("symbolic link"),
        "{text}"
    );
    assert!(
        text.contains("00000000000000000006-link-dir.json") && text.contains("not a regular file"),
        "{text}"
    );
    if root {
        assert!(
            text.contains("00000000000000000008-link-foreign.json")
                && text.contains("owned by uid 65534"),
            "{text}"
        );
    }
    assert_eq!(s.count("*").await, 1);
    assert_eq!(s.count("secret:x").await, 0);
    // Refused files are left alone; the link target is untouched.
    assert!(
        dir.path()
            .join("00000000000000000005-link-secret.json")
            .exists()
    );
    assert!(secret.exists());
    s.delete_index().await;
}

/// The search helper never reads a missing index as "no hits": a `count == 0` check against
/// an index that was never created fails instead of passing.
#[tokio::test]
#[should_panic(expected = "failed with HTTP 404")]
async fn the_search_helper_fails_on_a_missing_index() {
    let s = Search::new(&unique_index("never-created"));
    let _ = s.count("*").await;
}

/// A reference plugin link file, in the shape its `elk_tagger.py` writes (fields under
/// `purple.*`, a few copied to the top level).
fn plugin_link_file(link: &serde_json::Value, written_at: &str) -> serde_json::Value {
    json!({
        "@timestamp": written_at,
        "purple": {
            "link_id": link["id"], "operation_id": OP_A_ID, "operation_name": "purple-discovery-red",
            "technique": link["ability"]["technique_id"], "technique_name": link["ability"]["technique_name"],
            "tactic": link["ability"]["tactic"], "ability_id": link["ability"]["ability_id"],
            "ability_name": link["ability"]["name"], "agent_paw": link["paw"], "agent_host": link["host"],
            "executor": link["executor"]["name"], "platform": link["executor"]["platform"],
            "status": "success", "status_code": link["status"], "success": true,
            "detection_status": "pending", "execution_time": link["collect"], "finish_time": link["finish"],
            "command_hash": "x", "output": {"stdout": "client data", "stderr": "", "exit_code": "0", "has_output": true}
        },
        "tags": ["purple_team", "caldera", "tl_labs", "link_execution"],
        "event": {"kind": "event", "action": "purple-team-simulation", "outcome": "success"},
        "link_id": link["id"], "operation_id": OP_A_ID, "purple_team_exercise": true,
        "technique": link["ability"]["technique_id"], "tactic": link["ability"]["tactic"],
        "ability_name": link["ability"]["name"], "agent_paw": link["paw"]
    })
}

#[tokio::test]
async fn replay_maps_reference_link_files_and_never_overwrites_richer_documents() {
    let stub = CalderaStub::start().await;
    let index = unique_index("fallback-links");
    let s = Search::new(&index);
    // The sidecar indexes A completely first.
    let env = app::test_env(&stub.url(), &index, &[]);
    let op = op_a_finished();
    stub.put_operation(op.clone());
    let r = app::start(&env).await;
    wait_for(WAIT, "A settled with 26 links", || async {
        let settled = s
            .operation(OP_A_ID)
            .await
            .is_some_and(|d| d["settled"] == true);
        (settled && s.links(OP_A_ID).await.len() == 26).then_some(())
    })
    .await;
    app::stop(r).await;
    let link0 = op["chain"][0].clone();
    let before = s
        .links(OP_A_ID)
        .await
        .into_iter()
        .find(|l| l["link_id"] == link0["id"])
        .unwrap();

    // Fallback files written "later" (times newer than anything indexed, as when files are
    // copied without keeping times): one for a link the index has, one for a link it lacks,
    // and an operation file with less content than the settled operation document.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path()
            .join("fallback_link_20991231_235959_aaaaaaaa.json"),
        plugin_link_file(&link0, "2099-12-31T23:59:59Z").to_string(),
    )
    .unwrap();
    let mut new_link = op["chain"][1].clone();
    let new_id = "6f1b5a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    new_link["id"] = json!(new_id);
    std::fs::write(
        dir.path()
            .join("fallback_link_20991231_235959_6f1b5a3e.json"),
        plugin_link_file(&new_link, "2099-12-31T23:59:59Z").to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fallback_20991231_235959_a249d6e7.json"),
        json!({"@timestamp": "2099-12-31T23:59:59Z", "operation_id": OP_A_ID, "operation_name": "",
               "purple_team_exercise": true, "techniques": [], "tactics": [], "status": "unknown"})
        .to_string(),
    )
    .unwrap();
    let out = replay_cmd(dir.path(), &index)
        .arg("--keep")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 indexed, 2 already present"), "{text}");
    // Per file: which document each describes and what happened.
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line for {needle}: {text}"))
            .to_string()
    };
    assert!(line("6f1b5a3e.json").contains(&format!("link document link-{new_id}")));
    assert!(line("6f1b5a3e.json").ends_with("indexed"), "{text}");
    assert!(line("aaaaaaaa.json").contains("already present"), "{text}");
    assert!(
        line("a249d6e7.json").contains("operation document"),
        "{text}"
    );
    assert!(line("a249d6e7.json").contains("already present"), "{text}");

    // The settled operation document and the sidecar's link document are untouched.
    let doc = s.operation(OP_A_ID).await.unwrap();
    assert_eq!(doc["settled"], true);
    assert_eq!(doc["operation_name"], "purple-discovery-red");
    assert_eq!(doc["status"], "finished");
    let after = s
        .links(OP_A_ID)
        .await
        .into_iter()
        .find(|l| l["link_id"] == link0["id"])
        .unwrap();
    assert_eq!(after, before);
    // The missing link is now a link document with its technique, status and host.
    let added = s
        .links(OP_A_ID)
        .await
        .into_iter()
        .find(|l| l["link_id"] == new_id)
        .unwrap();
    assert_eq!(added["event"]["dataset"], "caldera.link");
    assert_eq!(added["technique_id"], new_link["ability"]["technique_id"]);
    assert_eq!(added["status"], "success");
    assert_eq!(added["host"]["name"], new_link["host"]);
    assert!(
        added.get("output").is_none(),
        "command output is not indexed"
    );
    assert_eq!(s.count("event.dataset:\"caldera.operation\"").await, 1);
    s.delete_index().await;
}

#[tokio::test]
async fn a_mapping_conflict_storm_logs_a_summary_not_a_line_per_document() {
    let stub = CalderaStub::start().await;
    let index = unique_index("storm");
    let s = Search::new(&index);
    conflicting_index(&index).await;
    let env = app::test_env(&stub.url(), &index, &[]);
    let dead = dir_of(&env, "DEAD_LETTER_DIR");
    stub.put_operation(op_a_finished());
    let log_path = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .env("LOG_FORMAT", "json")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(log_path.reopen().unwrap())
        .spawn()
        .unwrap();
    wait_for(WAIT, "26 dead letters", || async {
        (json_files(&dead).len() == 26).then_some(())
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = std::fs::read_to_string(log_path.path()).unwrap();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"ERROR\"") && l.contains("refused"))
        .collect();
    // The first refusal in full, then one summary line with the count and the first reason.
    assert!(
        !refusals.is_empty() && refusals.len() <= 2,
        "{} ERROR lines for 26 refusals:\n{}",
        refusals.len(),
        refusals.join("\n")
    );
    assert!(
        refusals.iter().any(|l| l.contains("\"count\":25")),
        "{}",
        refusals.join("\n")
    );
    s.delete_index().await;
}
