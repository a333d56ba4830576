//! The Kibana backend: Kibana's detection-engine API, as documented for 8.x/9.x:
//!
//! * `POST <KIBANA_URL>[/s/<space>]/api/detection_engine/signals/tags` with
//!   `{"ids": [...], "tags": {"tags_to_add": [...], "tags_to_remove": []}}`;
//! * `POST <KIBANA_URL>[/s/<space>]/api/detection_engine/signals/status` with
//!   `{"signal_ids": [...], "status": "closed" | "acknowledged"}`;
//!
//! both with `kbn-xsrf: true` and `Authorization: ApiKey <KIBANA_API_KEY>`. Tags go first, one
//! request per distinct tag set (the alerts of one link share theirs), then one status request
//! per status. Kibana's API has no per-alert `if_seq_no`: an analyst's change in the moment
//! between our read and our request can be overridden, which the Elasticsearch backend
//! prevents. No real Kibana was available to test this: the tests check these request shapes
//! against a local HTTP server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Secret;
use crate::correlate::action::{Change, Outcome};
use crate::correlate::alert::Alert;
use crate::correlate::settings::KibanaSettings;

pub struct KibanaClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<Secret>,
}

impl KibanaClient {
    pub fn new(s: &KibanaSettings, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the Kibana client: {e}"))?;
        let mut base = s.url.as_str().trim_end_matches('/').to_string();
        if !s.space.is_empty() && s.space != "default" {
            base.push_str(&format!("/s/{}", s.space));
        }
        Ok(Self {
            http,
            base,
            api_key: s.api_key.clone(),
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("kbn-xsrf", "true")
            .json(&body);
        if let Some(k) = &self.api_key {
            req = req.header("Authorization", format!("ApiKey {}", k.expose()));
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                "Kibana did not answer in time".to_string()
            } else {
                "cannot reach Kibana".to_string()
            }
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(format!(
                "Kibana answered HTTP {status}: {}",
                crate::document::sanitize::clean_text(&text, 200)
            ));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn apply(&self, items: &[(&Alert, &Change)]) -> Vec<(Outcome, Option<String>)> {
        let mut out: Vec<(Outcome, Option<String>)> = vec![(Outcome::Applied, None); items.len()];
        let mut by_tags: BTreeMap<&Vec<String>, Vec<usize>> = BTreeMap::new();
        for (i, (_, c)) in items.iter().enumerate() {
            if !c.added.is_empty() {
                by_tags.entry(&c.added).or_default().push(i);
            }
        }
        for (tags, idx) in by_tags {
            let ids: Vec<&str> = idx.iter().map(|i| items[*i].0.id.as_str()).collect();
            let body = json!({"ids": ids, "tags": {"tags_to_add": tags, "tags_to_remove": []}});
            if let Err(e) = self.post("/api/detection_engine/signals/tags", body).await {
                for i in idx {
                    out[i] = (Outcome::Failed, Some(e.clone()));
                }
            }
        }
        let mut by_status: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (_, c)) in items.iter().enumerate() {
            if let Some(s) = c.status
                && out[i].0 != Outcome::Failed
            {
                by_status.entry(s).or_default().push(i);
            }
        }
        for (status, idx) in by_status {
            let ids: Vec<&str> = idx.iter().map(|i| items[*i].0.id.as_str()).collect();
            let body = json!({"signal_ids": ids, "status": status});
            match self
                .post("/api/detection_engine/signals/status", body)
                .await
            {
                Ok(v) => {
                    let conflicts = v["version_conflicts"].as_u64().unwrap_or(0);
                    if conflicts > 0 {
                        for i in idx {
                            out[i] = (
                                Outcome::Conflict,
                                Some(format!("Kibana reported {conflicts} version conflicts")),
                            );
                        }
                    }
                }
                Err(e) => {
                    for i in idx {
                        out[i] = (Outcome::Failed, Some(e.clone()));
                    }
                }
            }
        }
        out
    }
}
