//! Enrollment: the exact line to paste into PowerShell, cmd or a shell on a client's machine to
//! start a Caldera (sandcat) agent in that client's group, pointing at the address the
//! client's machines can reach.
//!
//! The commands come from Caldera itself (`GET /api/v2/deploy_commands`, the deployment
//! abilities Caldera's UI shows) when the sandcat plugin is loaded there, otherwise from the
//! sidecar's own copies of sandcat's standard commands ([`templates`]). Either way they are
//! rendered by [`shell::render`]: placeholders filled from a fixed list, the group set, one line.
//!
//! That answer's `app_config` also carries Caldera's contact secrets (FTP password, SSH tunnel
//! password, Slack token…). [`deploy::DeployInfo`] decodes only the three non-secret values it
//! needs, so the others never become strings in this process and cannot be printed, logged
//! or served.
//!
//! Used by the `enroll` command and by `GET /api/v2/enroll` ([`http`]).

pub mod cli;
pub mod deploy;
pub mod http;
pub mod names;
pub mod shell;
mod templates;

use std::collections::HashMap;

use serde::Serialize;

use crate::config::keys::{Key, key};
use crate::config::{ConfigError, Layered};
use deploy::DeployInfo;
use names::{Architecture, Executor, Identifier, ImplantName, Platform, PublicServer, Refused};

pub(crate) const KEYS: &[Key] = &[key(
    "CALDERA_PUBLIC_URL",
    "",
    "Caldera address the clients' machines reach (http(s)://host:port), used in enroll commands",
)];

/// Caldera's defaults (`conf/agents.yml`), used when Caldera cannot be asked.
pub const DEFAULT_IMPLANT: &str = "splunkd";
pub const DEFAULT_ARCHITECTURE: &str = "amd64";

#[derive(Debug, Clone, Default)]
pub struct EnrollSettings {
    /// `CALDERA_PUBLIC_URL`: what the agents are told to reach.
    pub public_url: Option<PublicServer>,
}

impl EnrollSettings {
    pub(crate) fn from_layered(l: &Layered) -> Result<Self, ConfigError> {
        let public_url = match l.opt("CALDERA_PUBLIC_URL") {
            None => None,
            Some(raw) => Some(
                PublicServer::parse("CALDERA_PUBLIC_URL", &raw).map_err(|e| ConfigError {
                    key: "CALDERA_PUBLIC_URL".into(),
                    problem: format!("{} {}", e.shown, e.why),
                })?,
            ),
        };
        Ok(Self { public_url })
    }
}

/// What was asked for, already parsed.
#[derive(Debug, Clone)]
pub struct Request {
    pub client: Identifier,
    pub platform: Platform,
    /// `None`: every shell of the platform.
    pub executor: Option<Executor>,
    /// Overrides `CALDERA_PUBLIC_URL`.
    pub server: Option<PublicServer>,
}

impl Request {
    /// Parses raw inputs (command-line options or query parameters); the first bad one is
    /// refused with its reason.
    pub fn parse(
        client: &str,
        platform: &str,
        executor: Option<&str>,
        server: Option<&str>,
    ) -> Result<Self, Refused> {
        let client = Identifier::parse("client", client)?;
        let platform = Platform::parse(platform)?;
        let executor = executor.map(Executor::parse).transpose()?;
        if let Some(e) = executor
            && !platform.executors().contains(&e)
        {
            return Err(Refused {
                what: "executor",
                shown: format!("{:?}", e.as_str()),
                why: format!(
                    "is not a shell of {}; use {}",
                    platform.as_str(),
                    platform
                        .executors()
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            });
        }
        let server = server
            .map(|s| PublicServer::parse("server", s))
            .transpose()?;
        Ok(Self {
            client,
            platform,
            executor,
            server,
        })
    }
}

/// Why no command could be produced (the input or the configuration; never Caldera being
/// down, which only changes where the commands come from).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Refused(#[from] Refused),
    #[error(
        "client {client} maps to several Caldera groups in CLIENT_MAP ({groups}): pass one of the groups as the client"
    )]
    Ambiguous { client: String, groups: String },
    #[error(
        "no address for the agents to reach Caldera: set CALDERA_PUBLIC_URL (or pass --server){why}"
    )]
    NoServer { why: String },
}

/// One ready-to-paste command.
#[derive(Debug, Clone, Serialize)]
pub struct Command {
    pub platform: &'static str,
    pub executor: &'static str,
    /// `caldera` (Caldera's deployment ability) or `builtin` (the sidecar's template).
    pub source: &'static str,
    pub command: String,
}

/// The answer of `enroll` and `GET /api/v2/enroll`.
#[derive(Debug, Clone, Serialize)]
pub struct Enrollment {
    pub client: String,
    pub group: String,
    pub server: String,
    pub platform: &'static str,
    pub implant_name: String,
    pub commands: Vec<Command>,
    /// What the reader should know (fallbacks, loopback server…); never secret.
    pub notes: Vec<String>,
}

/// The client's Caldera group: the group `CLIENT_MAP` maps to this client, else the name itself.
pub fn group_for(
    client: &Identifier,
    client_map: &HashMap<String, String>,
) -> Result<Identifier, EnrollError> {
    let mut groups: Vec<&String> = client_map
        .iter()
        .filter(|(_, c)| *c == client.as_str())
        .map(|(g, _)| g)
        .collect();
    groups.sort();
    match groups.as_slice() {
        [] => Ok(client.clone()),
        [one] => Ok(Identifier::parse("Caldera group from CLIENT_MAP", one)?),
        many => Err(EnrollError::Ambiguous {
            client: client.to_string(),
            groups: many
                .iter()
                .map(|g| g.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Builds the commands. `caldera` is what Caldera answered (or why it could not be asked).
pub fn prepare(
    req: &Request,
    settings: &EnrollSettings,
    client_map: &HashMap<String, String>,
    caldera: &Result<DeployInfo, String>,
) -> Result<Enrollment, EnrollError> {
    let group = group_for(&req.client, client_map)?;
    let mut notes = Vec::new();
    let info = match caldera {
        Ok(i) => Some(i),
        Err(why) => {
            notes.push(format!(
                "Caldera's deploy commands could not be read ({why}): built-in sandcat templates and Caldera's default implant name are used"
            ));
            None
        }
    };
    let server = match (&req.server, &settings.public_url) {
        (Some(s), _) | (None, Some(s)) => s.clone(),
        (None, None) => server_from_caldera(info, &mut notes)?,
    };
    if server.is_loopback() {
        notes.push(format!(
            "{server} is a loopback address: only an agent on the Caldera machine itself can reach it"
        ));
    }
    let implant = info
        .and_then(|i| i.implant_name.as_deref())
        .and_then(|raw| match ImplantName::parse(raw) {
            Ok(n) => Some(n),
            Err(e) => {
                notes.push(format!("{e}; {DEFAULT_IMPLANT} is used instead"));
                None
            }
        })
        .map_or_else(|| ImplantName::parse(DEFAULT_IMPLANT), Ok)?;
    let architecture = info
        .and_then(|i| i.architecture.as_deref())
        .and_then(|raw| match Architecture::parse(raw) {
            Ok(a) => Some(a),
            Err(e) => {
                notes.push(format!("{e}; {DEFAULT_ARCHITECTURE} is used instead"));
                None
            }
        })
        .map_or_else(|| Architecture::parse(DEFAULT_ARCHITECTURE), Ok)?;
    let values = shell::Values {
        server: &server,
        implant: &implant,
        architecture: &architecture,
    };
    let executors: Vec<Executor> = match req.executor {
        Some(e) => vec![e],
        None => req.platform.executors().to_vec(),
    };
    let mut commands = Vec::new();
    for executor in executors {
        let from_caldera = info.and_then(|i| i.sandcat_command(req.platform, executor));
        let mut rendered = None;
        if let Some(t) = from_caldera {
            match shell::render(t, executor, &group, &values) {
                Ok(line) => rendered = Some(("caldera", line)),
                Err(e) => notes.push(format!(
                    "Caldera's Sandcat command for {}/{} is not used: {e}; the built-in template is",
                    req.platform.as_str(),
                    executor.as_str()
                )),
            }
        } else if executor == Executor::Cmd {
            notes.push(
                "sandcat has no cmd.exe deploy command: the sidecar's own (curl.exe, Windows 10 1803 or later) is used"
                    .into(),
            );
        } else if info.is_some() {
            notes.push(format!(
                "Caldera serves no Sandcat deploy command for {}/{} (is the sandcat plugin enabled?): the built-in template is used",
                req.platform.as_str(),
                executor.as_str()
            ));
        }
        let (source, command) = match rendered {
            Some(r) => r,
            None => {
                // Every supported platform/shell pair has a template, and the templates
                // render (tested); a miss here is a bug, reported rather than hidden.
                let t = templates::builtin(req.platform, executor).ok_or_else(|| Refused {
                    what: "executor",
                    shown: format!("{:?}", executor.as_str()),
                    why: format!("has no template for {}", req.platform.as_str()),
                })?;
                let line = shell::render(t, executor, &group, &values).map_err(|e| Refused {
                    what: "built-in template",
                    shown: format!("{}/{}", req.platform.as_str(), executor.as_str()),
                    why: e.to_string(),
                })?;
                ("builtin", line)
            }
        };
        commands.push(Command {
            platform: req.platform.as_str(),
            executor: executor.as_str(),
            source,
            command,
        });
    }
    Ok(Enrollment {
        client: req.client.to_string(),
        group: group.to_string(),
        server: server.to_string(),
        platform: req.platform.as_str(),
        implant_name: implant.as_str().to_string(),
        commands,
        notes,
    })
}

/// Without `CALDERA_PUBLIC_URL` or `--server`, Caldera's own `app.contact.http`, if it is an
/// address other machines can reach.
fn server_from_caldera(
    info: Option<&DeployInfo>,
    notes: &mut Vec<String>,
) -> Result<PublicServer, EnrollError> {
    let Some(raw) = info.and_then(|i| i.contact_http.as_deref()) else {
        return Err(EnrollError::NoServer { why: String::new() });
    };
    match PublicServer::parse("Caldera's app.contact.http", raw) {
        Ok(s) if !s.is_loopback() => {
            notes.push(format!(
                "server taken from Caldera's app.contact.http ({s}); set CALDERA_PUBLIC_URL to choose it"
            ));
            Ok(s)
        }
        Ok(s) => Err(EnrollError::NoServer {
            why: format!("; Caldera's app.contact.http is {s}, which other machines cannot reach"),
        }),
        Err(e) => Err(EnrollError::NoServer {
            why: format!("; {e}"),
        }),
    }
}

/// Asks Caldera for its deploy commands; the error is a one-line reason, without secrets.
pub async fn fetch(client: &crate::caldera::client::CalderaClient) -> Result<DeployInfo, String> {
    let bytes = client
        .get_bytes(deploy::DEPLOY_COMMANDS)
        .await
        .map_err(|e| e.to_string())?;
    DeployInfo::from_body(&bytes)
}

/// The commands as text: each preceded by a comment in its own shell's syntax, so the whole
/// output can be pasted too.
pub fn to_text(e: &Enrollment) -> String {
    let mut out = String::new();
    for c in &e.commands {
        let comment = if c.executor == "cmd" { "rem" } else { "#" };
        out.push_str(&format!(
            "{comment} {}/{}: client {}, Caldera group {}, server {}\n{}\n",
            c.platform, c.executor, e.client, e.group, e.server, c.command
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(client: &str, platform: &str, exec: Option<&str>) -> Request {
        Request::parse(client, platform, exec, Some("http://10.0.0.5:8888")).unwrap()
    }

    #[test]
    fn every_builtin_template_renders_completely() {
        let map = HashMap::from([("acme_corp".to_string(), "acme".to_string())]);
        for (p, e) in [
            ("windows", "psh"),
            ("windows", "cmd"),
            ("linux", "sh"),
            ("darwin", "sh"),
        ] {
            let en = prepare(
                &req("acme", p, Some(e)),
                &EnrollSettings::default(),
                &map,
                &Err("down".into()),
            )
            .unwrap();
            assert_eq!(en.group, "acme_corp");
            let c = &en.commands[0].command;
            assert!(!c.contains("#{") && !c.contains('\n'), "{c}");
            assert!(c.contains("http://10.0.0.5:8888"), "{c}");
            assert!(c.contains("-group acme_corp"), "{c}");
            assert!(!c.contains("-group red"), "{c}");
            assert!(c.contains("splunkd"), "{c}");
            assert_eq!(en.commands[0].source, "builtin");
        }
    }

    #[test]
    fn group_resolution() {
        let map = HashMap::from([
            ("red".to_string(), "acme".to_string()),
            ("blue".to_string(), "acme".to_string()),
            ("g1".to_string(), "globex".to_string()),
        ]);
        let id = |s| Identifier::parse("client", s).unwrap();
        assert!(matches!(
            group_for(&id("acme"), &map),
            Err(EnrollError::Ambiguous { .. })
        ));
        assert_eq!(group_for(&id("globex"), &map).unwrap().as_str(), "g1");
        assert_eq!(group_for(&id("initech"), &map).unwrap().as_str(), "initech");
        let bad = HashMap::from([("a b".to_string(), "x".to_string())]);
        assert!(group_for(&id("x"), &bad).is_err());
    }

    #[test]
    fn executor_must_fit_the_platform() {
        assert!(Request::parse("a", "linux", Some("psh"), None).is_err());
        assert!(Request::parse("a", "windows", Some("sh"), None).is_err());
        let r = Request::parse("a", "windows", None, None).unwrap();
        let en = prepare(
            &Request {
                server: Some(PublicServer::parse("s", "http://h:1").unwrap()),
                ..r
            },
            &EnrollSettings::default(),
            &HashMap::new(),
            &Err("x".into()),
        )
        .unwrap();
        assert_eq!(en.commands.len(), 2);
    }

    #[test]
    fn no_server_is_an_error_unless_caldera_has_a_reachable_one() {
        let r = Request::parse("a", "linux", None, None).unwrap();
        let e = prepare(
            &r,
            &EnrollSettings::default(),
            &HashMap::new(),
            &Err("x".into()),
        );
        assert!(matches!(e, Err(EnrollError::NoServer { .. })));
        let loopback = DeployInfo {
            contact_http: Some("http://127.0.0.1:8888".into()),
            ..Default::default()
        };
        let e = prepare(
            &r,
            &EnrollSettings::default(),
            &HashMap::new(),
            &Ok(loopback),
        );
        assert!(e.unwrap_err().to_string().contains("cannot reach"));
        let public = DeployInfo {
            contact_http: Some("http://caldera.lab:8888".into()),
            ..Default::default()
        };
        let en = prepare(&r, &EnrollSettings::default(), &HashMap::new(), &Ok(public)).unwrap();
        assert_eq!(en.server, "http://caldera.lab:8888");
    }
}
