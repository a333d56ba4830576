#![allow(dead_code)]
//! The real search server the test command started (`SEARCH_URL`), queried with a plain HTTP
//! client so assertions do not go through the code under test. Each test uses its own index.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub fn search_url() -> String {
    std::env::var("SEARCH_URL").unwrap_or_else(|_| {
        panic!(
            "SEARCH_URL is not set: run the tests with scripts/test.sh, which starts Elasticsearch"
        )
    })
}

/// A fresh, valid index name for one test.
pub fn unique_index(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "pt-{}-{}-{}-{}",
        name.to_lowercase().replace('_', "-"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

pub struct Search {
    http: reqwest::Client,
    pub url: String,
    pub index: String,
}

impl Search {
    pub fn new(index: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: search_url(),
            index: index.to_string(),
        }
    }

    pub async fn refresh(&self) {
        let _ = self
            .http
            .post(format!("{}/{}/_refresh", self.url, self.index))
            .send()
            .await;
    }

    /// Runs a search (after a refresh) and returns the JSON answer. A missing index (404) or
    /// one whose shards are not allocated yet (503) is waited for up to 30 s (documents may be
    /// on their way), then fails the test: it is never read as "no hits", so a `count == 0`
    /// check cannot pass against an index that does not exist.
    pub async fn search(&self, body: Value) -> Value {
        let started = Instant::now();
        loop {
            self.refresh().await;
            let r = self
                .http
                .post(format!("{}/{}/_search", self.url, self.index))
                .json(&body)
                .send()
                .await
                .expect("search request");
            let status = r.status();
            let v: Value = r.json().await.expect("search json");
            if status.is_success() {
                return v;
            }
            let absent = status.as_u16() == 404 || status.as_u16() == 503;
            assert!(
                absent && started.elapsed() < Duration::from_secs(30),
                "search in {} failed with HTTP {status}: {v}",
                self.index
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Documents matching a Lucene query string (`*` for all).
    pub async fn hits(&self, q: &str) -> Vec<Value> {
        let v = self
            .search(
                json!({"size": 10000, "query": {"query_string": {"query": q}}, "sort": ["_doc"]}),
            )
            .await;
        v["hits"]["hits"].as_array().cloned().unwrap_or_default()
    }

    pub async fn count(&self, q: &str) -> usize {
        self.hits(q).await.len()
    }

    pub async fn links(&self, op_id: &str) -> Vec<Value> {
        self.hits(&format!(
            "event.dataset:\"caldera.link\" AND operation_id:\"{op_id}\""
        ))
        .await
        .into_iter()
        .map(|h| h["_source"].clone())
        .collect()
    }

    pub async fn operation(&self, op_id: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/{}/_doc/op-{op_id}", self.url, self.index))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        if v["found"] == true {
            Some(v["_source"].clone())
        } else {
            None
        }
    }

    pub async fn delete_index(&self) {
        let _ = self
            .http
            .delete(format!("{}/{}", self.url, self.index))
            .send()
            .await;
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
