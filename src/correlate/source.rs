//! Reading what the stage works from: the link documents that still need a look, and the
//! alerts of their hosts and windows, in batches.
//!
//! Alerts are read with one `_msearch` per batch of links holding one search per host: the
//! host (lower-cased first DNS label, matched case-insensitively against `host.name` and
//! `host.hostname`, bare or as an FQDN) and the union of that host's link windows. Hosts with
//! more alerts than a page get further pages (`search_after`) in the next `_msearch` round.
//! Pids are not pushed into the query: tier 3 (host and window only) needs every alert of the
//! window anyway, and the windows already cut a million-alert index down to a few pages.
//! Never one request per alert or per link.

use std::collections::BTreeMap;
use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use serde_json::{Value, json};

use super::alert::{self, Alert, Malformed};
use super::es::{Body, EsError, ndjson, path_index, search, send, take_array};
use super::link::{self, LinkView};

/// Alerts per page of one host's search.
pub const ALERT_PAGE: usize = 5_000;

/// Which link documents a pass looks at.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this operation's links, every one of them (the `correlate --operation` command).
    pub operation: Option<String>,
}

/// One page of link documents that still need a look: not discarded, and not yet settled by
/// an earlier pass (`detection.complete`), or every link of the selected operation.
pub async fn links_page(
    es: &Elasticsearch,
    index: &str,
    sel: &Selection,
    size: usize,
    after: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Value>, EsError> {
    let mut filter = vec![json!({"term": {"event.dataset": "caldera.link"}})];
    let mut must_not = vec![json!({"term": {"status": "discarded"}})];
    match &sel.operation {
        Some(op) => filter.push(json!({"term": {"operation_id": op}})),
        None => must_not.push(json!({"term": {"detection.complete": true}})),
    }
    let mut body = json!({
        "size": size,
        "seq_no_primary_term": true,
        "_source": link::SOURCE_FIELDS,
        "sort": [{"link_id": "asc"}],
        "query": {"bool": {"filter": filter, "must_not": must_not}}
    });
    if let Some(a) = after {
        body["search_after"] = json!([a]);
    }
    let mut v = search(es, "reading link documents", index, &body, timeout).await?;
    Ok(take_array(&mut v, "hits", "hits"))
}

/// Whether the alert index (or alias, or pattern) exists: `Ok(false)` means "nothing to read
/// yet", so the stage idles and says why instead of failing.
pub async fn alert_index_exists(
    es: &Elasticsearch,
    alert_index: &str,
    timeout: Duration,
) -> Result<bool, EsError> {
    let r = send(
        es,
        "looking for the alert index",
        Method::Post,
        &format!("/{}/_search", path_index(alert_index)),
        &[("allow_no_indices", "false"), ("size", "0")],
        Body::Json(b"{}".to_vec()),
        timeout,
    )
    .await;
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The alert search for one host over a set of windows.
pub fn host_query(host: &str, windows: &[(i64, i64)]) -> Value {
    let mut host_clauses = Vec::new();
    for field in ["host.name", "host.hostname"] {
        host_clauses.push(json!({"term": {field: {"value": host, "case_insensitive": true}}}));
        if host.parse::<std::net::IpAddr>().is_err() {
            host_clauses.push(
                json!({"prefix": {field: {"value": format!("{host}."), "case_insensitive": true}}}),
            );
        }
    }
    let ranges: Vec<Value> = windows
        .iter()
        .map(|(a, b)| {
            json!({"range": {"kibana.alert.original_time": {
                "gte": a, "lte": b, "format": "epoch_millis"}}})
        })
        .collect();
    json!({"bool": {"filter": [
        {"bool": {"should": host_clauses, "minimum_should_match": 1}},
        {"bool": {"should": ranges, "minimum_should_match": 1}}
    ]}})
}

/// Merges overlapping or touching windows (links on one host overlap; a beacon's links run
/// in parallel), so the query has one range per busy period.
pub fn merge_windows(mut w: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    w.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(w.len());
    for (a, b) in w {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Alerts of each host, read with `_msearch` rounds; malformed ones are returned apart.
pub struct HostAlerts {
    pub alerts: BTreeMap<String, Vec<Alert>>,
    pub malformed: Vec<Malformed>,
    pub requests: usize,
}

/// Reads every alert on `hosts` (host → its windows).
pub async fn read_alerts(
    es: &Elasticsearch,
    alert_index: &str,
    hosts: &BTreeMap<String, Vec<(i64, i64)>>,
    timeout: Duration,
) -> Result<HostAlerts, EsError> {
    let mut out = HostAlerts {
        alerts: BTreeMap::new(),
        malformed: Vec::new(),
        requests: 0,
    };
    // host → search_after of its next page; a host leaves once a page comes back short.
    let mut todo: Vec<(String, Value, Option<Value>)> = hosts
        .iter()
        .filter(|(_, w)| !w.is_empty())
        .map(|(h, w)| (h.clone(), host_query(h, &merge_windows(w.clone())), None))
        .collect();
    // Several hosts per request, but not so many that one answer is huge.
    const HOSTS_PER_REQUEST: usize = 50;
    while !todo.is_empty() {
        let round: Vec<_> = todo.drain(..todo.len().min(HOSTS_PER_REQUEST)).collect();
        let mut lines = Vec::with_capacity(round.len() * 2);
        for (_, query, after) in &round {
            lines.push(json!({"index": alert_index, "ignore_unavailable": true}));
            let mut body = json!({
                "size": ALERT_PAGE,
                "seq_no_primary_term": true,
                "track_total_hits": false,
                "_source": alert::SOURCE_FIELDS,
                "sort": [{"kibana.alert.original_time": "asc"}, {"kibana.alert.uuid": "asc"}],
                "query": query,
            });
            if let Some(a) = after {
                body["search_after"] = a.clone();
            }
            lines.push(body);
        }
        out.requests += 1;
        let mut v = send(
            es,
            "reading alerts",
            Method::Post,
            "/_msearch",
            &[],
            Body::NdJson(ndjson(&lines)),
            timeout,
        )
        .await?;
        let responses = match v["responses"].take() {
            Value::Array(r) => r,
            _ => Vec::new(),
        };
        if responses.len() != round.len() {
            return Err(EsError {
                what: "reading alerts",
                status: None,
                message: format!(
                    "_msearch answered {} responses for {} searches",
                    responses.len(),
                    round.len()
                ),
            });
        }
        for ((host, query, _), mut r) in round.into_iter().zip(responses) {
            if let Some(err) = r.get("error") {
                return Err(EsError {
                    what: "reading alerts",
                    status: r["status"].as_u64().map(|s| s as u16),
                    message: crate::document::sanitize::clean_text(&err.to_string(), 300),
                });
            }
            let hits = take_array(&mut r, "hits", "hits");
            let full = hits.len() == ALERT_PAGE;
            let next = hits.last().map(|h| h["sort"].clone());
            let entry = out.alerts.entry(host.clone()).or_default();
            for h in &hits {
                match Alert::from_hit(h) {
                    Ok(a) => entry.push(a),
                    Err(m) => out.malformed.push(m),
                }
            }
            if full && let Some(n) = next {
                todo.push((host, query, Some(n)));
            }
        }
    }
    Ok(out)
}

/// Earlier correlation records of these links: `record id → (tier, action result)`, so a pass
/// rewrites only what changed and remembers what it already did to an alert.
pub async fn previous_records(
    es: &Elasticsearch,
    index: &str,
    link_ids: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, Value>, EsError> {
    let mut out = BTreeMap::new();
    let mut after: Option<Value> = None;
    const PAGE: usize = 5_000;
    loop {
        let mut body = json!({
            "size": PAGE,
            "_source": ["record_id", "alert.uuid", "match.tier", "match.reason", "action"],
            "sort": [{"record_id": "asc"}],
            "query": {"terms": {"link_id": link_ids}}
        });
        if let Some(a) = &after {
            body["search_after"] = a.clone();
        }
        let mut v = search(es, "reading correlation records", index, &body, timeout).await?;
        let hits = take_array(&mut v, "hits", "hits");
        let n = hits.len();
        after = hits.last().map(|h| h["sort"].clone());
        for h in hits {
            let mut h = h;
            if let Some(id) = h["_source"]["record_id"].as_str().map(String::from) {
                out.insert(id, h["_source"].take());
            }
        }
        if n < PAGE {
            return Ok(out);
        }
    }
}

/// Parses link hits; unusable ones are returned apart.
pub fn parse_links(hits: &[Value]) -> (Vec<LinkView>, Vec<link::Unusable>) {
    let mut ok = Vec::with_capacity(hits.len());
    let mut bad = Vec::new();
    for h in hits {
        match LinkView::from_hit(h) {
            Ok(l) => ok.push(l),
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_merge_when_they_overlap_or_touch() {
        assert_eq!(
            merge_windows(vec![(10, 20), (0, 5), (15, 30), (30, 31), (40, 41)]),
            vec![(0, 5), (10, 31), (40, 41)]
        );
    }
}
