//! When an operation is really over, against the daemon: `finished` is not final in Caldera
//! (a stopped operation goes through `cleanup` and gets a late link), a link can still be in
//! flight when the operation says `finished`, and every operation has a report with its
//! `finish`. Caldera stub (recorded responses), real search server, the sidecar in-process.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::app;
use support::caldera_stub::CalderaStub;
use support::scenarios::*;
use support::search::{Search, unique_index, wait_for};

const WAIT: Duration = Duration::from_secs(60);

async fn link_doc(s: &Search, op: &str, link: &str) -> Option<Value> {
    s.links(op).await.into_iter().find(|l| l["link_id"] == link)
}

#[tokio::test]
async fn a_stopped_operation_is_not_settled_before_its_late_cleanup_link() {
    let stub = CalderaStub::start().await;
    let index = unique_index("settle-grace");
    let s = Search::new(&index);
    let env = app::test_env(&stub.url(), &index, &[("SETTLE_GRACE", "10")]);
    // B stopped: `finished`, every link has its result, the cleanup link not yet created.
    stub.put_operation(op_b_stopped());
    let r = app::start(&env).await;
    let first = wait_for(WAIT, "B's operation document", || async {
        s.operation(OP_B_ID).await
    })
    .await;
    assert_eq!(first["status"], "finished");
    assert_eq!(
        first["settled"], false,
        "settled at first sight, before SETTLE_GRACE: {first}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.operation(OP_B_ID).await.unwrap()["settled"], false);
    // Within the grace, Caldera moves on: cleanup with the cleanup link in flight, then done.
    stub.put_operation(op_b_cleanup());
    wait_for(WAIT, "cleanup link in flight", || async {
        link_doc(&s, OP_B_ID, OP_B_CLEANUP_LINK_ID).await
    })
    .await;
    stub.put_operation(op_b_final());
    let done = wait_for(WAIT, "B settled", || async {
        s.operation(OP_B_ID).await.filter(|d| d["settled"] == true)
    })
    .await;
    assert_eq!(done["link_counts"]["total"], 7, "{done}");
    let cleanup = link_doc(&s, OP_B_ID, OP_B_CLEANUP_LINK_ID).await.unwrap();
    assert_eq!(cleanup["status"], "success", "{cleanup}");
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn finished_while_a_link_is_in_flight_waits_for_its_result() {
    let stub = CalderaStub::start().await;
    let index = unique_index("settle-inflight");
    let s = Search::new(&index);
    let env = app::test_env(&stub.url(), &index, &[]);
    // F stopped while its second link was with the agent: `finished`, link -3 with `collect`.
    let in_flight = op_f_stopped_in_flight();
    let link_id = in_flight["chain"][1]["id"].as_str().unwrap().to_string();
    stub.put_operation(in_flight);
    let r = app::start(&env).await;
    wait_for(WAIT, "the in-flight link document", || async {
        link_doc(&s, OP_F_ID, &link_id)
            .await
            .filter(|l| l["status"] == "in_flight")
    })
    .await;
    // Well past SETTLE_GRACE (0.5 s in tests): still not settled, still polled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let op = s.operation(OP_F_ID).await.unwrap();
    assert_eq!(op["settled"], false, "settled with a link in flight: {op}");
    // The result arrives: the link gets it and then the operation settles.
    let done = op_f_discarded();
    let final_status = done["chain"][1]["status"].as_i64().unwrap();
    stub.put_operation(done);
    let l = wait_for(WAIT, "the link's result", || async {
        link_doc(&s, OP_F_ID, &link_id)
            .await
            .filter(|l| l["status"] != "in_flight")
    })
    .await;
    assert_eq!(l["status_code"], final_status, "{l}");
    wait_for(WAIT, "F settled", || async {
        s.operation(OP_F_ID).await.filter(|d| d["settled"] == true)
    })
    .await;
    app::stop(r).await;
    s.delete_index().await;
}

#[tokio::test]
async fn a_generated_operation_gets_its_finish_from_the_report() {
    let stub = CalderaStub::start().await;
    let index = unique_index("settle-finish");
    let s = Search::new(&index);
    let env = app::test_env(&stub.url(), &index, &[]);
    let op_id = "0badc0de-0000-4000-8000-0000000000f1";
    stub.put_operation(op_many_links(op_id, "purple-generated", 5));
    let r = app::start(&env).await;
    let doc = wait_for(WAIT, "generated operation settled", || async {
        s.operation(op_id).await.filter(|d| d["settled"] == true)
    })
    .await;
    assert!(
        doc["finish"].is_string(),
        "the report of every operation carries its finish: {doc}"
    );
    app::stop(r).await;
    s.delete_index().await;
}
