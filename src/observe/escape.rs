//! Client-controlled text made safe for logs that people read.
//!
//! A client chooses its paths, its exec command line, its user name and
//! (through an uploaded file) a scanner's message. Written raw into a
//! plain-text log, a newline forges a log line and an escape sequence
//! (`ESC [`, or the C1 `CSI`) rewrites the operator's terminal. [`escape`]
//! writes such characters as visible escapes and keeps every other
//! character, ordinary Unicode included, as it is. [`to_json`] serializes
//! audit lines and notification bodies so that the same characters appear
//! only as `\u` escapes on disk (the decoded JSON value is unchanged).

use std::fmt;

/// `text` for a plain-text log line: control characters (C0, DEL, C1),
/// the Unicode line and paragraph separators and the bidirectional
/// overrides appear as `\n`, `\x1b`, `\u{9b}`, ...; a backslash is doubled,
/// so that an escape in the output always means an escaped character.
pub fn escape(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// A string shown with its dangerous characters escaped (see [`escape`]).
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        // Runs of safe characters are written in one go.
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
            f.write_str(&rest[..at])?;
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32)?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Whether `c` is written as an escape by [`escape`].
fn needs_escape(c: char) -> bool {
    c == '\\' || is_dangerous(c)
}

/// Characters that a terminal or a line-oriented reader acts on: C0
/// controls, DEL, C1 controls (`char::is_control` is exactly these), the
/// line and paragraph separators, and the bidirectional embeddings,
/// overrides and isolates that reorder what is shown.
pub fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `value` as one line of JSON in which every [`is_dangerous`] character
/// is a `\u` escape: serde_json escapes only C0 controls, and DEL or a C1
/// `CSI` left raw would still reach a terminal that shows the file.
pub fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, SafeJson);
    value.serialize(&mut ser)?;
    // The serializer writes only UTF-8 (strings are copied from `&str`).
    String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

/// serde_json's compact formatter, with [`is_dangerous`] characters that it
/// would copy raw written as `\uXXXX`.
struct SafeJson;

impl serde_json::ser::Formatter for SafeJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut rest = fragment;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| is_dangerous(c)) {
            writer.write_all(&rest.as_bytes()[..at])?;
            // Every dangerous character is in the Basic Multilingual Plane,
            // so one `\u` escape of four digits spells it.
            write!(writer, "\\u{:04x}", c as u32)?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_unicode_is_kept() {
        let raw = "a\nb\x1b[31mred\r\t\u{7f}\u{9b}2J\\n é 日本 😀 \u{202e}cod\u{2028}";
        let shown = escape(raw).to_string();
        assert_eq!(
            shown,
            "a\\nb\\x1b[31mred\\r\\t\\x7f\\u{9b}2J\\\\n é 日本 😀 \\u{202e}cod\\u{2028}"
        );
        assert!(!shown.chars().any(is_dangerous), "{shown:?}");
        assert_eq!(escape("/plain/path.txt").to_string(), "/plain/path.txt");
        assert_eq!(escape("").to_string(), "");
    }

    #[test]
    fn json_escapes_what_serde_leaves_raw_and_decodes_to_the_same_value() {
        let raw = "p\u{7f}\u{9b}[2J\u{85}\u{202e}\n\x1b é";
        let json = to_json(&serde_json::json!({ "path": raw })).unwrap();
        assert!(!json.chars().any(is_dangerous), "{json:?}");
        assert!(
            json.contains("\\u007f") && json.contains("\\u009b"),
            "{json}"
        );
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["path"], raw);
        assert!(
            json.contains(" é"),
            "ordinary Unicode stays as it is: {json}"
        );
    }
}
