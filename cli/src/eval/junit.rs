//! JUnit XML, as CI systems read it: `<testsuites>` with one `<testsuite>`, a `<testcase>` per
//! case, a `<failure>` (an expectation not met) or an `<error>` (the case could not run) in
//! those that did not pass.

use std::fmt::Write;
use std::time::Duration;

use super::CaseResult;

/// The XML document for the suite `name`.
pub fn render(name: &str, results: &[CaseResult], elapsed: Duration) -> String {
    let tests = results.len();
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    let failures = results
        .iter()
        .filter(|r| r.error.is_none() && !r.failures.is_empty())
        .count();
    let name = escape(name, true);
    let time = elapsed.as_secs_f64();
    let counts = format!(r#"tests="{tests}" failures="{failures}" errors="{errors}""#);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        r#"<testsuites name="{name}" {counts} time="{time:.3}">"#
    );
    let _ = writeln!(
        out,
        r#"  <testsuite name="{name}" {counts} skipped="0" time="{time:.3}">"#
    );
    for r in results {
        testcase(&mut out, &name, r);
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn testcase(out: &mut String, classname: &str, r: &CaseResult) {
    let _ = write!(
        out,
        r#"    <testcase name="{}" classname="{classname}" time="{:.3}""#,
        escape(&r.name, true),
        r.elapsed.as_secs_f64()
    );
    if r.passed() {
        out.push_str("/>\n");
        return;
    }
    out.push_str(">\n");
    if let Some(e) = &r.error {
        let _ = writeln!(
            out,
            r#"      <error message="{}" type="error">{}</error>"#,
            escape(e, true),
            escape(&body(r), false)
        );
    } else if let Some(first) = r.failures.first() {
        let _ = writeln!(
            out,
            r#"      <failure message="{}" type="{}">{}</failure>"#,
            escape(&first.message, true),
            first.kind,
            escape(&body(r), false)
        );
    }
    out.push_str("    </testcase>\n");
}

/// Every failure of the case, with its details, and the runs it was about.
fn body(r: &CaseResult) -> String {
    let mut text = String::new();
    if let Some(run) = &r.run_id {
        let _ = writeln!(text, "run: {run}");
    }
    if let Some(of) = &r.replay_of {
        let _ = writeln!(text, "replay of: {of}");
    }
    if let Some(e) = &r.error {
        let _ = writeln!(text, "error: {e}");
    }
    for f in &r.failures {
        let _ = writeln!(text, "{}: {}", f.kind, f.message);
        if let Some(details) = &f.details {
            text.push_str(details);
            if !details.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    text
}

/// `text` as XML character data, or with `attribute` as an attribute value: `& < > " '`
/// escaped, the characters XML 1.0 forbids dropped, and in an attribute tabs and line breaks
/// written as references (a parser would turn them into spaces).
pub fn escape(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' if attribute => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            '\t' | '\n' | '\r' => out.push(c),
            c if allowed(c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// XML 1.0's Char production, less tab and line breaks (handled above).
fn allowed(c: char) -> bool {
    matches!(u32::from(c), 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x1_0000..=0x10_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::check::Failure;

    #[test]
    fn markup_and_forbidden_characters_never_reach_the_document() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>\u{1b}[2J\u{0}\u{fffe}", false),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;[2J"
        );
        assert_eq!(escape("one\ntwo\tthree", true), "one&#10;two&#9;three");
        assert_eq!(escape("one\ntwo", false), "one\ntwo");
        assert_eq!(escape("é 😀 \u{85}", false), "é 😀 \u{85}");
    }

    #[test]
    fn counts_and_one_failure_per_failed_case() {
        let mut pass = CaseResult::new("pass");
        pass.elapsed = Duration::from_millis(1500);
        let fail = CaseResult::new("fail<1>")
            .failed(Failure::new(
                "maxTokens",
                "3000 tokens, over the 10 allowed",
            ))
            .failed(Failure::new("replay", "differs").with_details("a | b\n".into()));
        let broken = CaseResult::new("broken").errored("store down".into());
        let xml = render("suite & co", &[pass, fail, broken], Duration::from_secs(2));
        assert!(
            xml.contains(r#"<testsuite name="suite &amp; co" tests="3" failures="1" errors="1""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase name="pass" classname="suite &amp; co" time="1.500"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<failure message="3000 tokens, over the 10 allowed" type="maxTokens">"#
            ),
            "{xml}"
        );
        assert!(xml.contains("replay: differs\na | b\n</failure>"), "{xml}");
        assert!(xml.contains(r#"name="fail&lt;1&gt;""#), "{xml}");
        assert!(
            xml.contains(r#"<error message="store down" type="error">"#),
            "{xml}"
        );
    }
}
