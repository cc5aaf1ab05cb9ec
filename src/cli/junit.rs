//! `check --output junit`: the report as JUnit XML, for CI systems that show test results.
//!
//! One test suite per manifest file, one test case per object; a denied object has a
//! `<failure>` listing its Enforce violations; Warn and Audit findings go to the case's
//! `<system-out>`. Written by hand: the format is a dozen elements, and [`escape`] is the only
//! subtle part (tested below).

use std::fmt::Write as _;

use crate::cli::check::{ObjectReport, Report};
use trustgate_core::api::Mode;
use trustgate_core::engine::Verdict;

/// The JUnit XML document of a report.
pub fn document(report: &Report) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let s = &report.summary;
    let _ = writeln!(
        out,
        "<testsuites name=\"trustgate check\" tests=\"{}\" failures=\"{}\" errors=\"0\">",
        s.objects, s.denied
    );
    // Objects of one file are consecutive (files are read in order): one suite per run.
    let mut rest = &report.objects[..];
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|o| o.source == first.source).count();
        let (suite, tail) = rest.split_at(n);
        rest = tail;
        let failures = suite.iter().filter(|o| o.decision == Verdict::Deny).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">",
            escape(&first.source),
            suite.len()
        );
        for object in suite {
            case(&mut out, object);
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn case(out: &mut String, object: &ObjectReport) {
    let name = format!("{} {}/{}", object.kind, object.namespace, object.name);
    let _ = write!(out, "    <testcase classname=\"{}\" name=\"{}\"", escape(&object.source), escape(&name));
    let findings = |mode: Mode| object.violations.iter().filter(move |v| v.mode == mode);
    let others: Vec<String> = [Mode::Warn, Mode::Audit]
        .into_iter()
        .flat_map(|mode| findings(mode).map(move |v| format!("[{mode}] {v}")))
        .collect();
    if object.decision != Verdict::Deny && others.is_empty() {
        out.push_str("/>\n");
        return;
    }
    out.push_str(">\n");
    if object.decision == Verdict::Deny {
        let policies: Vec<&str> = findings(Mode::Enforce).map(|v| &*v.policy).fold(Vec::new(), |mut acc, p| {
            if !acc.contains(&p) {
                acc.push(p);
            }
            acc
        });
        let count = findings(Mode::Enforce).count();
        let message = format!("denied by policy {}: {count} violation(s)", policies.join(", "));
        let kind = findings(Mode::Enforce).next().map_or("", |v| v.kind.rule().name);
        let body = object.denial.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "      <failure message=\"{}\" type=\"{}\">{}</failure>",
            escape(&message),
            escape(kind),
            escape(body)
        );
    }
    if !others.is_empty() {
        let _ = writeln!(out, "      <system-out>{}</system-out>", escape(&others.join("\n")));
    }
    out.push_str("    </testcase>\n");
}

/// Escapes text for XML 1.0 content and attribute values: the five markup characters as
/// entities, and characters that XML 1.0 cannot carry at all (control characters other than
/// tab, newline and carriage return, surrogates cannot occur in a `str`, U+FFFE and U+FFFF) as
/// U+FFFD, since no escape makes them legal. Line breaks and tabs in attributes become
/// character references, which attribute normalization would otherwise turn into spaces.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_line_breaks_and_illegal_characters() {
        assert_eq!(escape(r#"a<b>&"c"'d'"#), "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;");
        assert_eq!(escape("x\ny\r\tz"), "x&#10;y&#13;&#9;z");
        assert_eq!(escape("bell\u{7}nul\u{0}\u{FFFF}"), "bell\u{FFFD}nul\u{FFFD}\u{FFFD}");
        assert_eq!(escape("ünï ✓ ]]>"), "ünï ✓ ]]&gt;");
    }
}
