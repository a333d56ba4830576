//! Bounded text: error messages and log lines never grow with what a remote sent.
//!
//! Errors are capped where they are made ([`cap_text`]); the log writer caps every line again,
//! so an error path that forgot to cap still cannot write megabytes into the journal.

use std::io::Write;

/// The longest error text kept anywhere (health `last_error`, log fields, error messages).
pub const MAX_ERROR_CHARS: usize = 500;

/// The longest log line written, in bytes.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// Longest string value kept when a JSON log line has to be shortened.
const MAX_JSON_STRING_CHARS: usize = 1024;

/// `s` cut to [`MAX_ERROR_CHARS`] characters, saying how much was cut.
pub fn cap_text(s: &str) -> String {
    cap_chars(s, MAX_ERROR_CHARS)
}

fn cap_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}… [{} more bytes cut]", &s[..cut], s.len() - cut),
    }
}

/// A `MakeWriter` for stderr whose writers cap each event.
#[derive(Debug, Clone, Copy)]
pub struct Stderr {
    pub json: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            buf: Vec::new(),
            json: self.json,
        }
    }
}

/// Collects one event and writes it, capped, when dropped.
pub struct LineWriter {
    buf: Vec<u8>,
    json: bool,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = cap_line(std::mem::take(&mut self.buf), self.json);
        // Nowhere to report a failed log write.
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

/// One formatted event, at most [`MAX_LINE_BYTES`] (plus the note saying what was cut).
pub fn cap_line(buf: Vec<u8>, json: bool) -> Vec<u8> {
    if buf.len() <= MAX_LINE_BYTES {
        return buf;
    }
    if json {
        // Keep it one valid JSON object: shorten every long string value.
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&buf) {
            shorten_strings(&mut v);
            if let Ok(mut out) = serde_json::to_vec(&v)
                && out.len() <= MAX_LINE_BYTES
            {
                out.push(b'\n');
                return out;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim_end_matches('\n');
    let mut cut = MAX_LINE_BYTES - 64;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = format!(
        "{}… [log line cut: {} more bytes]",
        &text[..cut],
        text.len() - cut
    );
    if json {
        // Unparseable or still too long: say so in a line a shipper can read.
        out = serde_json::json!({"level": "WARN", "message": out, "truncated": true}).to_string();
    }
    out.push('\n');
    out.into_bytes()
}

fn shorten_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.chars().count() > MAX_JSON_STRING_CHARS => {
            *s = cap_chars(s, MAX_JSON_STRING_CHARS);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(shorten_strings),
        serde_json::Value::Object(m) => m.values_mut().for_each(shorten_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_capped_on_char_boundaries() {
        let s = "é".repeat(5_000_000);
        let c = cap_text(&s);
        assert!(c.len() < 1200, "{}", c.len());
        assert!(c.contains("more bytes cut"));
        assert_eq!(cap_text("short"), "short");
    }

    #[test]
    fn long_lines_are_cut_and_json_stays_json() {
        let big = "x".repeat(5 << 20);
        let text = format!("2026-01-01 WARN error={big}\n").into_bytes();
        let out = cap_line(text, false);
        assert!(out.len() <= MAX_LINE_BYTES + 100);
        assert!(out.ends_with(b"\n"));
        let line = serde_json::json!({"level": "WARN", "error": big, "message": "x"}).to_string();
        let out = cap_line(line.into_bytes(), true);
        assert!(out.len() <= MAX_LINE_BYTES + 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["level"], "WARN");
        assert!(v["error"].as_str().unwrap().contains("more bytes cut"));
        let short = b"short line\n".to_vec();
        assert_eq!(cap_line(short.clone(), false), short);
    }
}
