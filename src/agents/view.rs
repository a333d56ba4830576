//! The `agents` command's rows: one per agent, grouped by client, every text field from
//! Caldera made safe for a terminal (an agent reports its own host and user names, so they
//! could carry escape sequences).

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;

use super::{Agent, client_of, liveness};
use crate::document::sanitize::clean_text;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub client: String,
    pub group: String,
    pub host: String,
    pub platform: String,
    pub paw: String,
    pub user: String,
    pub privilege: String,
    pub last_seen: String,
    /// Seconds between `last_seen` and the read; `None` if Caldera gave no valid time.
    pub seen_seconds_ago: Option<u64>,
    /// `alive`, `dead` or `pending kill` (Caldera's rule).
    pub status: &'static str,
    pub alive: bool,
}

fn text(v: Option<&str>) -> String {
    let t = clean_text(v.unwrap_or(""), 64);
    if t.is_empty() { "-".into() } else { t }
}

/// Rows for every agent (or only `client`'s), sorted by client, host and paw.
pub fn rows(
    agents: &[Agent],
    now: SystemTime,
    untrusted_timer: u64,
    client_map: &HashMap<String, String>,
    client: Option<&str>,
) -> Vec<Row> {
    let mut rows: Vec<Row> = agents
        .iter()
        .map(|a| {
            let l = liveness(a, now, untrusted_timer);
            Row {
                client: client_of(a.group.as_deref(), client_map),
                group: text(a.group.as_deref()),
                host: text(a.host.as_deref()),
                platform: text(a.platform.as_deref()),
                paw: text(Some(&a.paw)),
                user: text(a.username.as_deref()),
                privilege: text(a.privilege.as_deref()),
                last_seen: text(a.last_seen.as_deref()),
                seen_seconds_ago: a
                    .last_seen
                    .as_deref()
                    .and_then(super::parse_time)
                    .map(|t| now.duration_since(t).map_or(0, |d| d.as_secs())),
                status: l.as_str(),
                alive: l == super::Liveness::Alive,
            }
        })
        .filter(|r| client.is_none_or(|c| r.client == c))
        .collect();
    rows.sort_by(|a, b| (&a.client, &a.host, &a.paw).cmp(&(&b.client, &b.host, &b.paw)));
    rows
}

fn ago(s: Option<u64>) -> String {
    match s {
        None => "?".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7200 => format!("{}m ago", s / 60),
        Some(s) if s < 172_800 => format!("{}h ago", s / 3600),
        Some(s) => format!("{}d ago", s / 86_400),
    }
}

/// A plain table, one line per agent, then one summary line per client.
pub fn to_text(rows: &[Row]) -> String {
    let header = [
        "CLIENT",
        "HOST",
        "PLATFORM",
        "PAW",
        "USER",
        "PRIVILEGE",
        "LAST SEEN",
        "STATUS",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.client.clone(),
                r.host.clone(),
                r.platform.clone(),
                r.paw.clone(),
                r.user.clone(),
                r.privilege.clone(),
                format!("{} ({})", r.last_seen, ago(r.seen_seconds_ago)),
                r.status.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |vals: Vec<&str>| {
        let mut s = String::new();
        for (i, (v, w)) in vals.iter().zip(width).enumerate() {
            if i + 1 == vals.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for c in &cells {
        out.push_str(&line(c.iter().map(String::as_str).collect()));
    }
    out
}
