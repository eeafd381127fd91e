//! Text from a request, a model or another process, made safe to print: a control character
//! (C0, DEL, C1) reaching a terminal could start an escape sequence that clears it, retitles
//! it or rewrites what is already on screen. Every such character becomes U+FFFD, or in JSON
//! its `\u` escape, so the value a program reads back is unchanged.

use std::borrow::Cow;
use std::io::{self, Write};

const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

/// One-line text (a name, a title, a message in a list): tabs and line breaks become spaces,
/// every other control character U+FFFD.
pub fn line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            c if c.is_control() => char::REPLACEMENT_CHARACTER,
            c => c,
        })
        .collect()
}

/// Text laid out over lines (a draft, an answer, an error): line breaks and tabs stay (a
/// `\r\n` becomes `\n`), every other control character becomes U+FFFD.
pub fn block(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push(char::REPLACEMENT_CHARACTER),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON as serde_json writes it, with DEL and C1 escaped too (serde_json escapes only C0).
/// Outside strings JSON holds no such character, so the document means the same.
pub fn json(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && !matches!(c, '\n' | '\t' | '\r');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A writer that lets line breaks and tabs through and replaces every other control
/// character with U+FFFD: what the human renderer writes through, so nothing it prints, now or
/// later, can reach the terminal as an escape sequence. A C1 character is two bytes in UTF-8
/// (C2 80..C2 9F); one split across two writes is still caught.
pub struct Clean<W: Write> {
    out: W,
    /// The last write ended with 0xC2, the first byte of a character not seen whole yet.
    pending_c2: bool,
}

impl<W: Write> Clean<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            pending_c2: false,
        }
    }
}

impl<W: Write> Write for Clean<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(buf.len());
        for &b in buf {
            if std::mem::take(&mut self.pending_c2) {
                if (0x80..=0x9f).contains(&b) {
                    out.extend_from_slice(REPLACEMENT);
                    continue;
                }
                out.push(0xc2);
            }
            match b {
                b'\n' | b'\t' => out.push(b),
                0x00..=0x1f | 0x7f => out.extend_from_slice(REPLACEMENT),
                0xc2 => self.pending_c2 = true,
                _ => out.push(b),
            }
        }
        self.out.write_all(&out)
    }

    fn flush(&mut self) -> io::Result<()> {
        // A pending 0xC2 waits for its second byte: written alone it could become a C1 with
        // the next write.
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "hi \u{1b}[2J\u{1b}]0;pwned\u{7} \u{0}\u{7f}\u{9b}31m\r!";

    fn has_control(s: &str, keep: &[char]) -> bool {
        s.chars().any(|c| c.is_control() && !keep.contains(&c))
    }

    #[test]
    fn a_line_keeps_no_control_character_at_all() {
        // GIVEN text with ESC, BEL, NUL, DEL, a C1 CSI, a tab and line breaks
        let text = format!("{HOSTILE}\tnext\nline");
        // WHEN it is cleaned as one line
        let clean = line(&text);
        // THEN no control character is left and breaks became spaces
        assert!(!has_control(&clean, &[]), "{clean:?}");
        assert!(clean.starts_with("hi \u{fffd}[2J\u{fffd}]0;pwned\u{fffd}"));
        assert!(clean.ends_with("! next line"), "{clean:?}");
    }

    #[test]
    fn a_block_keeps_its_line_breaks_and_tabs_only() {
        // GIVEN a draft with paragraphs, a tab, a CRLF and escape sequences
        let text = format!("Para one\r\n\n\tPara two {HOSTILE}");
        // WHEN it is cleaned as a block
        let clean = block(&text);
        // THEN the layout stays and every other control character is replaced
        assert!(clean.starts_with("Para one\n\n\tPara two hi \u{fffd}[2J"));
        assert!(!has_control(&clean, &['\n', '\t']), "{clean:?}");
        // AND plain text is not copied
        assert!(matches!(block("plain\ntext"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_escapes_del_and_c1_and_reads_back_the_same() {
        // GIVEN a value holding every kind of control character, as serde_json writes it
        let value = serde_json::json!({ "objective": HOSTILE });
        let text = serde_json::to_string_pretty(&value).unwrap();
        assert!(text.contains('\u{9b}'), "serde_json leaves C1 raw");
        // WHEN it is made safe
        let safe = json(&text);
        // THEN no raw control character is left but the layout's line breaks
        assert!(!has_control(&safe, &['\n']), "{safe}");
        // AND it parses back to the same value
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn the_writer_replaces_control_bytes_even_a_c1_split_across_writes() {
        // GIVEN a writer over a buffer
        let mut buf = Vec::new();
        {
            let mut w = Clean::new(&mut buf);
            // WHEN hostile text is written, a C1 split between two writes, then é (C3 A9) and
            // a non-C1 character starting with C2 (U+00A0)
            w.write_all(HOSTILE.as_bytes()).unwrap();
            w.write_all(&[b'x', 0xc2]).unwrap();
            w.write_all(&[0x9b, b'\n', b'\t']).unwrap();
            w.write_all("é\u{a0}ok".as_bytes()).unwrap();
        }
        // THEN what comes out is UTF-8 with no control character but \n and \t
        let out = String::from_utf8(buf).unwrap();
        assert!(!has_control(&out, &['\n', '\t']), "{out:?}");
        assert!(out.ends_with("x\u{fffd}\n\té\u{a0}ok"), "{out:?}");
    }
}
