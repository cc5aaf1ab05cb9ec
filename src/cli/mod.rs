//! The `trustgate` command line: clap commands and their output; `serve` wires the server, `check`
//! runs the engine offline. This layer may import every other one; nothing imports it.

pub mod check;
pub mod junit;
pub mod output;
pub mod sarif;
pub mod serve;
pub mod what_if;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anstream::{eprintln, println};
use anstyle::{AnsiColor, Style};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use check::{Report, Sink};
use output::{JsonSink, TextSink};
use trustgate_core::engine::PolicySet;
use trustgate_core::reference::Reference;
use trustgate_manifest::inputs::{Inputs, WINDOW_BYTES};
use trustgate_manifest::manifest;

/// Exit code: an Enforce policy was violated, or a reference is invalid.
const EXIT_VIOLATION: u8 = 1;
/// Exit code: bad usage or unreadable input.
const EXIT_USAGE: u8 = 2;

/// Admit only container images from trusted registries.
///
/// trustgate is a Kubernetes admission webhook driven by TrustedRegistryPolicy objects. The
/// same engine checks manifests offline in CI and explains how the container runtime reads an
/// image reference.
#[derive(Debug, Parser)]
#[command(name = "trustgate", version, about, long_about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate Kubernetes manifests against policies, offline, with the server's engine.
    ///
    /// Reads YAML (multi-document, Helm output, `List` objects) or JSON from files and
    /// directories (recursively: *.yaml, *.yml, *.json), or stdin with `-` or no PATH.
    /// Exit code 0: allowed (warnings allowed); 1: an Enforce policy is violated;
    /// 2: bad usage or unreadable input.
    Check(CheckArgs),
    /// Show how the container runtime reads image references.
    ///
    /// Prints the registry host, repository path, tag and digest of each IMAGE as containerd,
    /// Docker, CRI-O and kubelet resolve it, or why it is invalid. Exit code 1 when any IMAGE is
    /// invalid.
    Normalize(NormalizeArgs),
    /// Print the TrustedRegistryPolicy CustomResourceDefinition as YAML.
    Crd,
    /// Run the admission webhook server.
    ///
    /// Answers AdmissionReviews on POST /validate and ImageReviews on POST /imagereview over
    /// HTTPS (HTTP/1.1 and HTTP/2), with /livez, /readyz and /metrics on a plain-HTTP admin
    /// port. Policies come from the Kubernetes API or from --policy-file. SIGTERM drains
    /// in-flight requests, then exits 0.
    Serve(Box<crate::cli::serve::ServeArgs>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text, coloured on a terminal.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// `check --output`: the formats of [`Output`] and the CI report formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    /// Human-readable text, coloured on a terminal.
    #[default]
    Text,
    /// One JSON document.
    Json,
    /// SARIF 2.1.0, for GitHub code scanning: one result per violation, at the image's line.
    Sarif,
    /// JUnit XML: one test case per object, a failure per denied object.
    Junit,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// TrustedRegistryPolicy files or directories (repeatable).
    #[arg(long = "policy", short = 'p', value_name = "PATH", required = true)]
    pub policies: Vec<PathBuf>,
    /// Namespace of objects that do not set metadata.namespace [default: default]; with
    /// --cluster, the only namespace listed.
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Evaluate the workloads of the live cluster (current kubeconfig context) instead of
    /// manifests: read-only, each reported as its top-level owner, as the audit does.
    #[arg(long, conflicts_with = "paths")]
    pub cluster: bool,
    /// Kubeconfig context for --cluster [default: the current context].
    #[arg(long, value_name = "CONTEXT", requires = "cluster")]
    pub context: Option<String>,
    /// Kubeconfig file for --cluster [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: CheckOutput,
    /// Manifest files or directories; `-` or nothing reads stdin.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// Output format: text, or JSON with one object per IMAGE.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    /// Image references, as written in a pod spec.
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => run_check(args),
        Command::Normalize(args) => run_normalize(args),
        Command::Crd => run_crd(),
        Command::Serve(args) => match crate::cli::serve::run(*args) {
            Ok(code) => code,
            Err(e) => fail(format!("{e:#}")),
        },
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!(
        "{}error:{} {message}",
        Style::new().bold().fg_color(Some(AnsiColor::Red.into())),
        Style::new().render_reset()
    );
    ExitCode::from(EXIT_USAGE)
}

fn run_check(args: CheckArgs) -> ExitCode {
    let policies = match manifest::read_policies(&args.policies) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if policies.is_empty() {
        return fail(format!(
            "no TrustedRegistryPolicy found in {}",
            args.policies.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    let (set, errors) = PolicySet::compile(policies.iter().map(|(_, p)| p));
    if let Some(e) = errors.first() {
        let file = policies
            .iter()
            .find(|(_, p)| p.metadata.name.as_deref() == Some(e.policy.as_str()))
            .map_or("", |(f, _)| f.as_str());
        return fail(format!("{file}: {e}"));
    }
    if args.cluster {
        let target = what_if::Target { kubeconfig: args.kubeconfig, context: args.context, namespace: args.namespace };
        return match what_if::check(&target, set) {
            Ok(report) => print_check(report, args.output),
            Err(e) => fail(format!("{e:#}")),
        };
    }
    let paths = if args.paths.is_empty() { vec![PathBuf::from("-")] } else { args.paths };
    let mut inputs = match Inputs::open(&paths, WINDOW_BYTES) {
        Ok(inputs) => inputs,
        Err(e) => return fail(e),
    };
    let check = check::Check {
        policies: &set,
        default_namespace: args.namespace.as_deref().unwrap_or("default"),
        now: jiff::Timestamp::now(),
        locate: args.output == CheckOutput::Sarif,
    };
    // Text and JSON are written as objects are decided; SARIF and JUnit need every report.
    let checked = match args.output {
        CheckOutput::Json => check.run(&mut inputs, &mut json_sink()),
        CheckOutput::Text => check.run(&mut inputs, &mut text_sink()),
        CheckOutput::Sarif | CheckOutput::Junit => {
            let mut report = Report::default();
            match check.run(&mut inputs, &mut report) {
                Ok(_) => return print_check(report, args.output),
                Err(e) => Err(e),
            }
        }
    };
    match checked {
        Ok(summary) if summary.denied() => ExitCode::from(EXIT_VIOLATION),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// JSON has no colours: straight to stdout, buffered (a report of 80,000 objects is millions of
/// lines, and stdout alone writes each line with its own system call).
fn json_sink() -> JsonSink<impl Write> {
    JsonSink::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()))
}

fn text_sink() -> TextSink<impl Write> {
    TextSink::new(std::io::BufWriter::with_capacity(1 << 16, anstream::stdout().lock()))
}

/// Prints a check report; the exit code says whether an Enforce policy was violated.
fn print_check(report: Report, output: CheckOutput) -> ExitCode {
    let denied = report.denied();
    let printed = match output {
        CheckOutput::Json => replay(report, &mut json_sink()),
        CheckOutput::Text => replay(report, &mut text_sink()),
        CheckOutput::Sarif => print_json(&sarif::log(&report)),
        CheckOutput::Junit => anstream::stdout().lock().write_all(junit::document(&report).as_bytes()),
    };
    if let Err(e) = printed {
        return fail(format!("writing output: {e}"));
    }
    if denied { ExitCode::from(EXIT_VIOLATION) } else { ExitCode::SUCCESS }
}

/// Writes a whole report through a sink.
fn replay(report: Report, sink: &mut impl Sink) -> std::io::Result<()> {
    for object in report.objects {
        sink.object(object)?;
    }
    sink.finish(&report.summary)
}

/// Pretty JSON to stdout, buffered.
fn print_json(value: &impl Serialize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()
}

/// One line of `normalize --output json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Normalized {
    pub input: String,
    pub valid: bool,
    pub name: Option<String>,
    pub domain: Option<String>,
    pub path: Option<String>,
    /// The tag the runtime pulls: as written, or `latest` when neither tag nor digest is.
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// True when no tag or digest was written and the runtime pulls `latest`.
    #[serde(rename = "implicitTag")]
    pub implicit_tag: bool,
    /// The full normalized reference.
    pub normalized: Option<String>,
    pub error: Option<String>,
}

impl Normalized {
    pub fn of(input: &str) -> Self {
        match Reference::parse(input) {
            Ok(r) => Normalized {
                input: input.to_owned(),
                valid: true,
                name: Some(r.name()),
                domain: Some(r.domain().to_owned()),
                path: Some(r.path().to_owned()),
                tag: r.tag().map(str::to_owned).or_else(|| r.is_implicit_latest().then(|| "latest".to_owned())),
                digest: r.digest().map(str::to_owned),
                implicit_tag: r.is_implicit_latest(),
                normalized: Some(r.to_string()),
                error: None,
            },
            Err(e) => Normalized {
                input: input.to_owned(),
                valid: false,
                name: None,
                domain: None,
                path: None,
                tag: None,
                digest: None,
                implicit_tag: false,
                normalized: None,
                error: Some(e.to_string()),
            },
        }
    }
}

fn run_normalize(args: NormalizeArgs) -> ExitCode {
    let results: Vec<Normalized> = args.images.iter().map(|i| Normalized::of(i)).collect();
    let printed = match args.output {
        Output::Json => print_json(&results),
        Output::Text => print_normalized(&results),
    };
    if let Err(e) = printed {
        return fail(format!("writing output: {e}"));
    }
    if results.iter().all(|r| r.valid) { ExitCode::SUCCESS } else { ExitCode::from(EXIT_VIOLATION) }
}

fn print_normalized(results: &[Normalized]) -> std::io::Result<()> {
    let mut out = anstream::stdout().lock();
    let bold = Style::new().bold();
    let red = Style::new().bold().fg_color(Some(AnsiColor::Red.into()));
    let dim = Style::new().dimmed();
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "{bold}{}{bold:#}", r.input)?;
        if let Some(error) = &r.error {
            writeln!(out, "  {red}invalid:{red:#} {error}")?;
            continue;
        }
        let field = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let tag = if r.implicit_tag { format!("latest {dim}(implicit){dim:#}") } else { field(&r.tag) };
        writeln!(out, "  normalized: {}", field(&r.normalized))?;
        writeln!(out, "  domain:     {}", field(&r.domain))?;
        writeln!(out, "  path:       {}", field(&r.path))?;
        writeln!(out, "  tag:        {tag}")?;
        writeln!(out, "  digest:     {}", field(&r.digest))?;
    }
    Ok(())
}

fn run_crd() -> ExitCode {
    println!("{}", trustgate_core::api::crd_yaml().trim_end());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn cluster_flags_belong_to_check_cluster() {
        let parse = |args: &[&str]| Cli::try_parse_from(["trustgate", "check", "-p", "p.yaml"].iter().chain(args));
        let Command::Check(args) = parse(&["--cluster", "--context", "kit", "-n", "shop"]).unwrap().command else {
            panic!("a check command");
        };
        assert!(args.cluster);
        assert_eq!((args.context.as_deref(), args.namespace.as_deref()), (Some("kit"), Some("shop")));
        assert!(parse(&["--cluster", "deploy.yaml"]).is_err(), "the cluster or manifests, not both");
        assert!(parse(&["--context", "kit"]).is_err(), "--context needs --cluster");
        assert!(parse(&["--kubeconfig", "k"]).is_err(), "--kubeconfig needs --cluster");
        let Command::Check(args) = parse(&[]).unwrap().command else { panic!("a check command") };
        assert_eq!(args.namespace, None, "offline check then defaults to `default`");
    }

    #[test]
    fn normalize_json_fields() {
        let n = Normalized::of("Evil/app");
        assert_eq!(
            (n.valid, n.domain.as_deref(), n.path.as_deref(), n.tag.as_deref(), n.implicit_tag),
            (true, Some("Evil"), Some("app"), Some("latest"), true)
        );
        let n = Normalized::of("[fd00::1]:5000/x");
        assert_eq!(n.name.as_deref(), Some("[fd00::1]:5000/x"));
        let n = Normalized::of("nginx:");
        assert!(!n.valid);
        assert!(n.error.unwrap().contains("invalid reference format"));
    }
}
