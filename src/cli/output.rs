//! `check --output text|json`: each decision written as it is made, in input order, then the
//! summary, so that output takes no memory however many objects a run checks.

use std::io::{self, Write};

use anstyle::{AnsiColor, Style};
use serde::Serialize;

use crate::cli::check::{ObjectReport, Sink, Summary};
use trustgate_core::api::Mode;
use trustgate_core::engine::Verdict;

/// Writes the JSON document of a [`crate::cli::check::Report`] one object at a time, byte for
/// byte what `serde_json::to_writer_pretty` writes for the whole report, and a line break.
pub struct JsonSink<W: Write> {
    out: W,
    objects: usize,
    /// One object's JSON, reused.
    scratch: Vec<u8>,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        JsonSink { out, objects: 0, scratch: Vec::new() }
    }

    /// Writes `value` pretty-printed as a member nested `indent` deep: JSON strings escape
    /// their line breaks, so every line break in the text is one between members.
    fn nested(&mut self, value: &impl Serialize, indent: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        serde_json::to_writer_pretty(&mut self.scratch, value)?;
        for (i, line) in self.scratch.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.out.write_all(b"\n")?;
                self.out.write_all(indent)?;
            }
            self.out.write_all(line)?;
        }
        Ok(())
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn object(&mut self, object: ObjectReport) -> io::Result<()> {
        let before: &[u8] = if self.objects == 0 { b"{\n  \"objects\": [\n    " } else { b",\n    " };
        self.out.write_all(before)?;
        self.nested(&object, b"    ")?;
        self.objects += 1;
        Ok(())
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        let before: &[u8] =
            if self.objects == 0 { b"{\n  \"objects\": [],\n  \"summary\": " } else { b"\n  ],\n  \"summary\": " };
        self.out.write_all(before)?;
        self.nested(summary, b"  ")?;
        self.out.write_all(b"\n}\n")?;
        self.out.flush()
    }
}

/// Writes one paragraph per object and the summary line, coloured when `out` keeps colours.
pub struct TextSink<W: Write> {
    out: W,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W) -> Self {
        TextSink { out }
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn object(&mut self, object: ObjectReport) -> io::Result<()> {
        let out = &mut self.out;
        let dim = Style::new().dimmed();
        let (label, style) = match object.decision {
            Verdict::Allow => ("ALLOW", Style::new().fg_color(Some(AnsiColor::Green.into()))),
            Verdict::Warn => ("WARN ", Style::new().fg_color(Some(AnsiColor::Yellow.into()))),
            Verdict::Deny => ("DENY ", Style::new().bold().fg_color(Some(AnsiColor::Red.into()))),
        };
        writeln!(
            out,
            "{style}{label}{style:#} {} {}/{} {dim}({}){dim:#}",
            object.kind, object.namespace, object.name, object.source
        )?;
        // Enforce lines first, as the API server would show them, then Warn, then Audit;
        // each policy's message once, after the lines.
        let mut messages: Vec<&str> = Vec::new();
        for mode in Mode::ALL {
            for v in object.violations.iter().filter(|v| v.mode == mode) {
                let tag = if mode == Mode::Enforce { String::new() } else { format!("[{mode}] ") };
                writeln!(out, "      {tag}{v}")?;
                if let Some(m) = v.policy_message.as_deref().filter(|m| mode != Mode::Audit && !messages.contains(m)) {
                    messages.push(m);
                }
            }
        }
        for m in messages {
            writeln!(out, "      {dim}{m}{dim:#}")?;
        }
        Ok(())
    }

    fn finish(&mut self, s: &Summary) -> io::Result<()> {
        writeln!(self.out, "{} objects: {} allowed, {} warned, {} denied", s.objects, s.allowed, s.warned, s.denied)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::Report;
    use trustgate_core::engine::PolicySet;
    use trustgate_core::workload::Workload;

    /// A report of `n` objects of every verdict, with violations, messages and strings that
    /// need escaping.
    fn report(n: usize) -> Report {
        let policies = "apiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: corp}\nspec:\n  trustedRegistries: [registry.my.com]\n  message: \"see\\n\\\"docs\\\"\"\n---\napiVersion: trustgate.dev/v1alpha1\nkind: TrustedRegistryPolicy\nmetadata: {name: warn}\nspec:\n  mode: Warn\n  trustedRegistries: [registry.my.com/prod]\n";
        let (set, errors) =
            PolicySet::compile(&trustgate_manifest::manifest::parse_policies("p.yaml", policies).unwrap());
        assert!(errors.is_empty());
        let mut report = Report::default();
        let images = ["registry.my.com/prod/a:1", "registry.my.com/dev/b:1", "nginx", "Évil/\"x\""];
        for i in 0..n {
            let value = serde_json::json!({"kind": "Pod", "metadata": {"name": format!("p{i}\n")},
                "spec": {"containers": [{"name": "a", "image": images[i % 4]}, {"name": "b", "image": "registry.my.com/prod/sidecar:1"}]}});
            let workload = Workload::read(None, &value).unwrap();
            let ns = trustgate_core::engine::Namespace { name: "default", labels: None };
            report.add(
                &set,
                &workload,
                &ns,
                format!("dir/f{i}.yaml"),
                Default::default(),
                "2026-06-01T00:00:00Z".parse().unwrap(),
            );
        }
        report
    }

    #[test]
    fn json_written_object_by_object_is_the_pretty_json_of_the_report() {
        for n in [0, 1, 2, 5] {
            let expected = format!("{}\n", serde_json::to_string_pretty(&report(n)).unwrap());
            let report = report(n);
            let mut sink = JsonSink::new(Vec::new());
            for object in report.objects {
                sink.object(object).unwrap();
            }
            sink.finish(&report.summary).unwrap();
            assert_eq!(String::from_utf8(sink.out).unwrap(), expected, "{n} objects");
        }
    }

    #[test]
    fn text_has_a_paragraph_per_object_and_the_summary() {
        let report = report(3);
        let mut sink = TextSink::new(Vec::new());
        for object in report.objects {
            sink.object(object).unwrap();
        }
        sink.finish(&report.summary).unwrap();
        let text = String::from_utf8(sink.out).unwrap();
        assert!(text.ends_with("3 objects: 1 allowed, 1 warned, 1 denied\n"), "{text}");
        assert!(text.contains("DENY \u{1b}"), "colours are the writer's to strip: {text}");
    }
}
