//! Matching alerts to links, in tiers. Pure functions over parsed alerts and links of one host.
//!
//! Facts behind the tiers: sandcat reports the pid of the shell it spawned (`sh`,
//! `powershell.exe`, `cmd.exe`) and its start time in seconds on the victim's clock; under
//! bash-as-sh the command may `exec` into that same pid; one beacon's instructions run in
//! parallel, so links on one host overlap in time; pid 1 means the command was never started.
//!
//! * **Tier 1, lineage:** same host, alert time inside the link's window, and the alert's
//!   process is the shell or a descendant of it: `process.pid` or `process.parent.pid` equals the
//!   shell's pid, or `process.parent.entity_id` / `process.Ext.ancestry` holds an entity id that
//!   another alert in the same window showed to be that shell. The window is what guards
//!   against a reused pid.
//! * **Tier 2, command line:** same host and window, and the alert's command line or parent
//!   command line contains the link's command, both normalised for the executor's quoting.
//! * **Tier 3, host and window only:** a candidate, recorded, never acted on.
//!
//! An alert keeps only its best tier: a tier-1 alert of link A is not also recorded as a tier-3
//! candidate of the link B that ran beside it.

use std::collections::HashMap;

use super::alert::Alert;
use super::link::LinkView;

/// Shortest normalised command used for tier 2 (shorter ones match too much by chance).
const MIN_COMMAND: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Index into the alerts given to [`match_host`].
    pub alert: usize,
    /// Index into the links given to [`match_host`].
    pub link: usize,
    pub tier: u8,
    pub reason: String,
}

/// Normalises a command line for a containment test: lower case (Windows is case-blind),
/// quotes, backticks and cmd's `^` escapes dropped, whitespace collapsed.
pub fn normalise_command(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut space = false;
    for c in raw.chars() {
        match c {
            '"' | '\'' | '`' | '^' => {}
            '\\' => {}
            c if c.is_whitespace() => space = true,
            c => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.extend(c.to_lowercase());
            }
        }
    }
    out
}

/// A link prepared for matching: its window and normalised command.
struct Prepared {
    window: (i64, i64),
    command: Option<String>,
}

/// Matches the alerts of one host against the links of that host.
pub fn match_host(alerts: &[Alert], links: &[LinkView], skew_ms: i64) -> Vec<Match> {
    let prepared: Vec<Option<Prepared>> = links
        .iter()
        .map(|l| {
            let window = l.window(skew_ms)?;
            let command = l
                .command
                .as_deref()
                .map(normalise_command)
                .filter(|c| c.len() >= MIN_COMMAND);
            Some(Prepared { window, command })
        })
        .collect();
    let in_window = |a: &Alert, i: usize| {
        prepared[i]
            .as_ref()
            .is_some_and(|p| p.window.0 <= a.time_ms && a.time_ms <= p.window.1)
            && links[i].host.as_ref().is_some_and(|h| a.hosts.contains(h))
    };

    // Entity ids of the links' shells, learnt from alerts whose pid or parent pid is the shell.
    let mut shells: HashMap<&str, usize> = HashMap::new();
    for a in alerts {
        for (i, l) in links.iter().enumerate() {
            let Some(pid) = l.pid else { continue };
            if !in_window(a, i) {
                continue;
            }
            if a.pid == Some(pid)
                && let Some(e) = a.entity_id.as_deref()
            {
                shells.insert(e, i);
            }
            if a.ppid == Some(pid)
                && let Some(e) = a.parent_entity_id.as_deref()
            {
                shells.insert(e, i);
            }
        }
    }

    let mut out = Vec::new();
    for (ai, a) in alerts.iter().enumerate() {
        let cmd = a.command_line.as_deref().map(normalise_command);
        let parent_cmd = a.parent_command_line.as_deref().map(normalise_command);
        let mut best: Vec<Match> = Vec::new();
        for (li, l) in links.iter().enumerate() {
            if !in_window(a, li) {
                continue;
            }
            let Some((tier, reason)) = tier_of(a, li, l, &shells, &prepared, &cmd, &parent_cmd)
            else {
                continue;
            };
            match best.first().map(|m| m.tier) {
                Some(t) if t < tier => continue,
                Some(t) if t > tier => best.clear(),
                _ => {}
            }
            best.push(Match {
                alert: ai,
                link: li,
                tier,
                reason,
            });
        }
        out.extend(best);
    }
    out
}

fn tier_of(
    a: &Alert,
    li: usize,
    l: &LinkView,
    shells: &HashMap<&str, usize>,
    prepared: &[Option<Prepared>],
    cmd: &Option<String>,
    parent_cmd: &Option<String>,
) -> Option<(u8, String)> {
    if let Some(pid) = l.pid {
        if a.pid == Some(pid) {
            return Some((1, format!("process.pid {pid} is the link's shell")));
        }
        if a.ppid == Some(pid) {
            return Some((1, format!("process.parent.pid {pid} is the link's shell")));
        }
        let mine = |e: &String| shells.get(e.as_str()) == Some(&li);
        if a.parent_entity_id.as_ref().is_some_and(mine) {
            return Some((
                1,
                "process.parent.entity_id is the link's shell".to_string(),
            ));
        }
        if a.ancestry.iter().any(mine) {
            return Some((1, "process.Ext.ancestry leads to the link's shell".into()));
        }
    }
    if let Some(c) = prepared[li].as_ref().and_then(|p| p.command.as_deref()) {
        if cmd.as_deref().is_some_and(|x| x.contains(c)) {
            return Some((2, "process.command_line contains the link's command".into()));
        }
        if parent_cmd.as_deref().is_some_and(|x| x.contains(c)) {
            return Some((
                2,
                "process.parent.command_line contains the link's command".into(),
            ));
        }
    }
    Some((3, "same host inside the link's window".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(pid: i64, start: &str, end: &str, cmd: &str) -> LinkView {
        LinkView::from_hit(
            &json!({"_id": "l", "_source": {"link_id": format!("l{pid}"), "operation_id": "o",
            "host": {"name": "vm"}, "process": {"pid": pid, "command_line": cmd},
            "agent_reported_time": start, "event": {"end": end}}}),
        )
        .unwrap()
    }

    fn alert(src: serde_json::Value) -> Alert {
        let mut s = json!({"kibana.alert.uuid": "u", "host.name": "VM.example"});
        for (k, v) in src.as_object().unwrap() {
            s[k] = v.clone();
        }
        Alert::from_hit(&json!({"_index": "i", "_id": "a", "_source": s})).unwrap()
    }

    #[test]
    fn normalises_quoting() {
        assert_eq!(
            normalise_command(
                r#"powershell.exe -C "Get-Process  | Where {$_.Name -eq \"lsass\"}""#
            ),
            "powershell.exe -c get-process | where {$_.name -eq lsass}"
        );
        assert_eq!(
            normalise_command("cmd.exe /c wh^oami /ALL"),
            "cmd.exe /c whoami /all"
        );
    }

    #[test]
    fn tiers_and_best_only() {
        let links = vec![
            link(
                100,
                "2026-01-01T00:00:10Z",
                "2026-01-01T00:00:12Z",
                "ps aux | grep root",
            ),
            link(
                200,
                "2026-01-01T00:00:10Z",
                "2026-01-01T00:00:13Z",
                "whoami",
            ),
        ];
        let t = "2026-01-01T00:00:11Z";
        let alerts = vec![
            alert(
                json!({"kibana.alert.original_time": t, "process.pid": 101, "process.parent.pid": 100, "process.entity_id": "E101", "process.parent.entity_id": "E100"}),
            ),
            alert(
                json!({"kibana.alert.original_time": t, "process.pid": 102, "process.Ext.ancestry": ["E101", "E100"]}),
            ),
            alert(
                json!({"kibana.alert.original_time": t, "process.pid": 7, "process.command_line": "sh -c ps aux | grep root"}),
            ),
            alert(json!({"kibana.alert.original_time": t, "process.pid": 8})),
            alert(
                json!({"kibana.alert.original_time": "2026-01-01T00:01:00Z", "process.pid": 100}),
            ),
        ];
        let m = match_host(&alerts, &links, 2000);
        let by_alert = |i: usize| {
            m.iter()
                .filter(|x| x.alert == i)
                .map(|x| (x.link, x.tier))
                .collect::<Vec<_>>()
        };
        assert_eq!(by_alert(0), vec![(0, 1)]);
        assert_eq!(
            by_alert(1),
            vec![(0, 1)],
            "ancestry through a learnt entity id"
        );
        assert_eq!(by_alert(2), vec![(0, 2)]);
        assert_eq!(
            by_alert(3),
            vec![(0, 3), (1, 3)],
            "candidate of both parallel links"
        );
        assert_eq!(by_alert(4), vec![], "pid reuse outside the window");
    }
}
