//! `.env` files read exactly as systemd's `EnvironmentFile=` reads them, so that
//! `caldera-sidecar --env-file /etc/caldera-sidecar/env status` and the systemd unit see the
//! same secrets. The rules (systemd's `src/basic/env-file.c`):
//!
//! * `KEY=VALUE` per line; blanks around the key and before the value are skipped, trailing
//!   blanks of an unquoted value are dropped; lines starting with `#` or `;` are comments.
//! * No variable expansion: `pa$word1` stays `pa$word1`.
//! * `'…'` keeps everything literally (newlines too); `"…"` understands `\"`, `\\`, `` \` ``,
//!   `\$` and a backslash-newline (removed); any other backslash is kept as it is. Quoted and
//!   unquoted pieces can follow each other (`"a b"c` is `a bc`); a quote in the middle of an
//!   unquoted value is an ordinary character.
//! * Unquoted, a backslash makes the next character literal, and a backslash at the end of a
//!   line joins the next line.
//!
//! Where systemd would silently ignore a line (no `=`, an invalid name such as
//! `export KEY=…`) or take an unterminated quote to the end of the file, this reader refuses the
//! file with the line number instead: a silently ignored secret is a worse surprise than an
//! error. Messages carry line numbers only, never the line: it may hold a secret.

use super::values::{ConfigError, err};

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    Single,
    Double,
    DoubleEscape,
    Comment,
}

/// Parses the text of an environment file into `(name, value)` pairs, in file order.
pub(crate) fn parse(text: &str, file: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let fail = |line: usize, why: &str| err("--env-file", format!("{file}, line {line}: {why}"));
    let mut out = Vec::new();
    let mut state = State::PreKey;
    let mut key = String::new();
    let mut value = String::new();
    // Length of `value` before its trailing unquoted blanks, if it ends in some.
    let mut blank_from: Option<usize> = None;
    let mut line = 1;
    let mut key_line = 1;
    let mut push = |key: &mut String,
                    value: &mut String,
                    blank_from: &mut Option<usize>,
                    at: usize|
     -> Result<(), ConfigError> {
        if let Some(n) = blank_from.take() {
            value.truncate(n);
        }
        let k = key.trim_end().to_string();
        if !valid_name(&k) {
            return Err(fail(
                at,
                "not a valid variable name before `=` (letters, digits and `_`, not starting with a digit; systemd ignores such lines, `export` included)",
            ));
        }
        out.push((k, std::mem::take(value)));
        key.clear();
        Ok(())
    };
    for c in text.chars() {
        let newline = c == '\n' || c == '\r';
        match state {
            State::PreKey => {
                if c == '#' || c == ';' {
                    state = State::Comment;
                } else if !c.is_ascii_whitespace() {
                    state = State::Key;
                    key_line = line;
                    key.push(c);
                }
            }
            State::Key => {
                if newline {
                    return Err(fail(key_line, "no `=` on this line"));
                } else if c == '=' {
                    state = State::PreValue;
                    blank_from = None;
                } else {
                    key.push(c);
                }
            }
            State::PreValue => {
                if newline {
                    push(&mut key, &mut value, &mut blank_from, key_line)?;
                    state = State::PreKey;
                } else if c == '\'' {
                    state = State::Single;
                } else if c == '"' {
                    state = State::Double;
                } else if c == '\\' {
                    state = State::ValueEscape;
                } else if !c.is_ascii_whitespace() {
                    state = State::Value;
                    value.push(c);
                }
            }
            State::Value => {
                if newline {
                    push(&mut key, &mut value, &mut blank_from, key_line)?;
                    state = State::PreKey;
                } else if c == '\\' {
                    state = State::ValueEscape;
                    blank_from = None;
                } else {
                    if !c.is_ascii_whitespace() {
                        blank_from = None;
                    } else if blank_from.is_none() {
                        blank_from = Some(value.len());
                    }
                    value.push(c);
                }
            }
            State::ValueEscape => {
                state = State::Value;
                if !newline {
                    value.push(c);
                }
            }
            State::Single => {
                if c == '\'' {
                    state = State::PreValue;
                } else {
                    value.push(c);
                }
            }
            State::Double => {
                if c == '"' {
                    state = State::PreValue;
                } else if c == '\\' {
                    state = State::DoubleEscape;
                } else {
                    value.push(c);
                }
            }
            State::DoubleEscape => {
                state = State::Double;
                if "\"\\`$".contains(c) {
                    value.push(c);
                } else if c != '\n' {
                    value.push('\\');
                    value.push(c);
                }
            }
            State::Comment => {
                if newline {
                    state = State::PreKey;
                }
            }
        }
        if c == '\n' {
            line += 1;
        }
    }
    match state {
        State::PreKey | State::Comment => {}
        State::Key => return Err(fail(key_line, "no `=` on this line")),
        State::Single | State::Double | State::DoubleEscape => {
            return Err(fail(key_line, "a quote opened here is never closed"));
        }
        State::PreValue | State::Value | State::ValueEscape => {
            push(&mut key, &mut value, &mut blank_from, key_line)?;
        }
    }
    Ok(out)
}

/// systemd's `env_name_is_valid`: `[A-Za-z_][A-Za-z0-9_]*`.
fn valid_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> String {
        let v = parse(text, "t").unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].1.clone()
    }

    #[test]
    fn reads_like_systemd() {
        // Each case checked against systemd's env-file.c rules.
        assert_eq!(one("A=pa$word1\n"), "pa$word1");
        assert_eq!(one("A=${HOME}x"), "${HOME}x");
        assert_eq!(one("  A  =   spaced value   \n"), "spaced value");
        assert_eq!(one("A='single $x \\n'"), "single $x \\n");
        assert_eq!(one("A=\"d \\\"q\\\" \\$x \\\\ \\n\""), "d \"q\" $x \\ \\n");
        assert_eq!(one("A=\"a b\"c"), "a bc");
        assert_eq!(one("A=x\"y\""), "x\"y\"");
        assert_eq!(one("A=a\\ b\\#"), "a b#");
        assert_eq!(one("A=one\\\ntwo"), "onetwo");
        assert_eq!(one("A=\"multi\nline\""), "multi\nline");
        assert_eq!(one("A=value # not a comment"), "value # not a comment");
        assert_eq!(one("A="), "");
        assert_eq!(one("A=p@ss:w0rd=="), "p@ss:w0rd==");
        let v = parse("# c\n; c\n\nA=1\r\nB=2", "t").unwrap();
        assert_eq!(v, vec![("A".into(), "1".into()), ("B".into(), "2".into())]);
    }

    #[test]
    fn errors_name_the_line_never_its_content() {
        for (text, line) in [
            ("A=1\nCALDERA_PASSWORD hunter2\n", 2),
            ("export CALDERA_PASSWORD=hunter2\n", 1),
            ("A=1\n\nCALDERA_PASSWORD='hunter2\n", 3),
            ("A=1\nCALDERA_PASSWORD=\"hunter2", 2),
            ("9X=hunter2", 1),
        ] {
            let e = parse(text, "my.env").unwrap_err().to_string();
            assert!(e.contains(&format!("my.env, line {line}:")), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
