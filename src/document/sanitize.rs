//! Making free text from Caldera safe to index and to show in Kibana.
//!
//! Operation names, ability names and commands are typed by people (or by an attacker who can
//! create operations): they may carry markup, control characters or megabytes of text. We strip
//! what can hurt a viewer or a log line and cap the length; we never reject the document for it.

/// Removes control characters (except plain spaces), HTML/XML tags and angle brackets, folds runs
/// of whitespace, and caps the result at `max_chars` characters (an ellipsis marks the cut).
pub fn clean_text(raw: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max_chars * 4 + 4));
    let mut in_tag = false;
    let mut last_space = true;
    let mut count = 0usize;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if in_tag {
            if c == '>' {
                in_tag = false;
            }
            continue;
        }
        let c = match c {
            // Only `<` that opens a tag starts one, so "a < b" keeps its text.
            '<' if chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?')) =>
            {
                in_tag = true;
                continue;
            }
            '<' | '>' => continue,
            c if c.is_whitespace() || c.is_control() => ' ',
            // Bidirectional overrides and zero-width characters hide what text says.
            '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}' => continue,
            c => c,
        };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        if count == max_chars {
            while out.ends_with(' ') {
                out.pop();
            }
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Like [`clean_text`] but keeps the text's lines and markup characters: for commands, which are
/// data (the exact command an analyst needs to match) rather than display text. Only control
/// characters other than newline and tab are removed.
pub fn clean_command(raw: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max_chars * 4 + 4));
    for (count, c) in raw
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .enumerate()
    {
        if count == max_chars {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// For keyword fields (paw, host, executor…): one line, no markup, short.
pub fn clean_keyword(raw: &str, max_chars: usize) -> String {
    clean_text(raw, max_chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_markup_and_controls() {
        assert_eq!(
            clean_text(
                "<script>alert(1)</script>op\u{0}\u{1b}[31m one\r\n\ttwo",
                100
            ),
            "alert(1)op [31m one two"
        );
        assert_eq!(clean_text("a <b>bold</b> move", 100), "a bold move");
        assert_eq!(clean_text("x\u{202E}gnp.exe", 100), "xgnp.exe");
        assert_eq!(clean_text("a < b and c > d", 100), "a b and c d");
    }

    #[test]
    fn caps_length_on_char_boundaries() {
        let long = "é".repeat(1_000_000);
        let c = clean_text(&long, 256);
        assert_eq!(c.chars().count(), 257);
        assert!(c.ends_with('…'));
        assert_eq!(clean_text("short", 256), "short");
    }

    #[test]
    fn commands_keep_their_shape() {
        assert_eq!(
            clean_command("ps aux | grep <user>\n", 100),
            "ps aux | grep <user>\n"
        );
        assert_eq!(clean_command("abc\u{7}def", 4), "abcd…");
    }
}
