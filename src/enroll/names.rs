//! The values that end up inside a shell command, as types that can only hold safe ones.
//!
//! A client name, a Caldera group, the server address and the implant name are pasted into
//! PowerShell, cmd or a POSIX shell on a client's machine. Rather than trusting escaping alone,
//! each is parsed into a type whose every possible value is inert in all three shells, in every
//! quoting context the templates use (bare word, `"…"`, `'…'`): letters, digits and a few of
//! `._-:/`. Anything else (`acme"; rm -rf ~; "`, `$(id)`, `%PATH%`, a space) is refused with the
//! reason, never emitted. The shell quoting in [`super::shell`] is the second line of defence.

use std::fmt;

/// Why a value was refused; the message names the input and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {shown}: {why}")]
pub struct Refused {
    pub what: &'static str,
    /// The refused value, made printable (escaped), never raw.
    pub shown: String,
    pub why: String,
}

fn refused(what: &'static str, raw: &str, why: impl Into<String>) -> Refused {
    Refused {
        what,
        shown: format!("{:?}", truncate(raw, 80)),
        why: why.into(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

/// Longest client or group name accepted.
pub const NAME_MAX: usize = 64;

/// A client or Caldera group name: 1-64 of `A-Z a-z 0-9 _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identifier(String);

impl Identifier {
    pub fn parse(what: &'static str, raw: &str) -> Result<Self, Refused> {
        if raw.is_empty() {
            return Err(refused(what, raw, "must not be empty"));
        }
        if raw.len() > NAME_MAX {
            return Err(refused(
                what,
                raw,
                format!("is longer than {NAME_MAX} characters"),
            ));
        }
        if let Some(c) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(refused(
                what,
                raw,
                format!(
                    "contains {c:?}; a name is a short identifier of letters, digits, '_' and '-'"
                ),
            ));
        }
        if raw.starts_with(['-', '_']) {
            return Err(refused(what, raw, "must start with a letter or a digit"));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file name for the implant (Caldera's `agents.implant_name`, default `splunkd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplantName(String);

impl ImplantName {
    pub fn parse(raw: &str) -> Result<Self, Refused> {
        let ok = !raw.is_empty()
            && raw.len() <= NAME_MAX
            && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err(refused(
                "Caldera's agents.implant_name",
                raw,
                "is not a plain file name (letters, digits, '.', '_', '-')",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An architecture name for sandcat's download (`amd64`, `arm64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Architecture(String);

impl Architecture {
    pub fn parse(raw: &str) -> Result<Self, Refused> {
        let ok = !raw.is_empty()
            && raw.len() <= 16
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err(refused(
                "Caldera's agents.architecture",
                raw,
                "is not an architecture name such as amd64",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The address victims reach Caldera at: `http(s)://host[:port]`, host a DNS name or IPv4
/// address, nothing else (no credentials, path, query or fragment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicServer {
    text: String,
    loopback: bool,
}

impl PublicServer {
    pub fn parse(what: &'static str, raw: &str) -> Result<Self, Refused> {
        // Checked on the raw text first: the URL parser would percent-encode or drop what a
        // shell would interpret, and we want to refuse it, not silently change it.
        if let Some(c) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '/')))
        {
            return Err(refused(
                what,
                raw,
                format!(
                    "contains {c:?}; expected http(s)://host:port (host a DNS name or IPv4 address)"
                ),
            ));
        }
        let url = url::Url::parse(raw).map_err(|e| {
            refused(
                what,
                raw,
                format!("is not a URL ({e}); expected http(s)://host:port"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused(what, raw, "must start with http:// or https://"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refused(what, raw, "must not carry credentials"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(refused(
                what,
                raw,
                "must be only scheme, host and port (no path): agents add /beacon themselves",
            ));
        }
        let (host, loopback) = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => {
                if !d
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                {
                    return Err(refused(what, raw, "has an invalid host name"));
                }
                (d.to_string(), d == "localhost")
            }
            Some(url::Host::Ipv4(ip)) => {
                if ip.is_unspecified() {
                    return Err(refused(
                        what,
                        raw,
                        "0.0.0.0 is where Caldera listens, not an address agents can reach",
                    ));
                }
                (ip.to_string(), ip.is_loopback())
            }
            Some(url::Host::Ipv6(_)) => {
                return Err(refused(
                    what,
                    raw,
                    "IPv6 literal addresses are not supported here; use a host name",
                ));
            }
            _ => return Err(refused(what, raw, "has no host")),
        };
        let text = match url.port() {
            Some(p) => format!("{}://{host}:{p}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        };
        Ok(Self { text, loopback })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Only this machine can reach it.
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }
}

impl fmt::Display for PublicServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The victim's operating system, as Caldera names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Platform {
    Windows,
    Linux,
    Darwin,
}

impl Platform {
    pub fn parse(raw: &str) -> Result<Self, Refused> {
        match raw {
            "windows" => Ok(Self::Windows),
            "linux" => Ok(Self::Linux),
            "darwin" => Ok(Self::Darwin),
            _ => Err(refused("platform", raw, "must be windows, linux or darwin")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Windows => "windows",
            Self::Linux => "linux",
            Self::Darwin => "darwin",
        }
    }

    /// The shells an agent can be started from on this platform.
    pub fn executors(self) -> &'static [Executor] {
        match self {
            Self::Windows => &[Executor::Psh, Executor::Cmd],
            Self::Linux | Self::Darwin => &[Executor::Sh],
        }
    }
}

/// The shell the one-liner is pasted into, as Caldera names executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Executor {
    /// Windows PowerShell.
    Psh,
    /// Windows cmd.exe.
    Cmd,
    /// A POSIX shell.
    Sh,
}

impl Executor {
    pub fn parse(raw: &str) -> Result<Self, Refused> {
        match raw {
            "psh" => Ok(Self::Psh),
            "cmd" => Ok(Self::Cmd),
            "sh" => Ok(Self::Sh),
            _ => Err(refused("executor", raw, "must be psh, cmd or sh")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Psh => "psh",
            Self::Cmd => "cmd",
            Self::Sh => "sh",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(
            Identifier::parse("client", "acme_corp").unwrap().as_str(),
            "acme_corp"
        );
        for bad in [
            "",
            "acme\"; rm -rf ~; \"",
            "$(id)",
            "`id`",
            "a b",
            "%PATH%",
            "a&b",
            "-rf",
            "x'y",
            "ü",
            "a\nb",
        ] {
            let e = Identifier::parse("client", bad).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert!(Identifier::parse("client", &"a".repeat(65)).is_err());
        assert!(Identifier::parse("client", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn servers() {
        let s = PublicServer::parse("--server", "http://10.0.0.5:8888").unwrap();
        assert_eq!(s.as_str(), "http://10.0.0.5:8888");
        assert!(!s.is_loopback());
        let s = PublicServer::parse("--server", "https://Caldera.Example.com").unwrap();
        assert_eq!(s.as_str(), "https://caldera.example.com");
        let s = PublicServer::parse("--server", "https://c.example:8443/").unwrap();
        assert_eq!(s.as_str(), "https://c.example:8443");
        assert!(
            PublicServer::parse("--server", "http://127.0.0.1:8888")
                .unwrap()
                .is_loopback()
        );
        for bad in [
            "ftp://h:21",
            "http://0.0.0.0:8888",
            "http://u:p@h:1",
            "http://h:1/caldera",
            "http://h:1?x=1",
            "http://h:$(id)",
            "http://h:1;rm",
            "http://[::1]:8888",
            "http://h:99999",
            "h:8888",
            "http://h\":1",
            "",
        ] {
            assert!(PublicServer::parse("--server", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn implant_and_arch() {
        assert!(ImplantName::parse("splunkd").is_ok());
        assert!(ImplantName::parse("a;b").is_err());
        assert!(ImplantName::parse("../x").is_err());
        assert!(Architecture::parse("amd64").is_ok());
        assert!(Architecture::parse("amd64 ").is_err());
    }
}
