//! `trustgate serve`: wires the admission server, the admin port, TLS credentials and a policy
//! source together, and runs them until a signal says stop.
//!
//! Shutdown: the first SIGTERM or SIGINT turns readiness false, sends clients elsewhere for
//! `--shutdown-delay` (still accepting), closes the admission listener (new connections are
//! refused), lets in-flight requests finish within `--drain-grace`, and exits 0. A second signal
//! exits at once.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use trustgate_admission::admin::{self, Admin};
use trustgate_admission::body_budget::BudgetLimits;
use trustgate_admission::inheritance::ControllerIdentities;
use trustgate_admission::metrics::{self, AdmissionMetrics, LogCollector, SnapshotCollector, TlsMetrics};
use trustgate_admission::server::{self, Admission, Limits};
use trustgate_admission::tls::{CertificateFiles, Credentials, Reloader, SelfSigned};
use trustgate_cluster::file_source::{self, FileSource, SourceMetrics};
use trustgate_cluster::policy_report::Installation;
use trustgate_core::engine::snapshot::Store;
use trustgate_runtime::log_writer;

/// Where policies come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicySource {
    /// Watch TrustedRegistryPolicy and Namespace objects through the Kubernetes API.
    Kubernetes,
    /// Read policy YAML from --policy-file, re-read on change.
    File,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of `trustgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS admission endpoints (POST /validate, POST /imagereview).
    #[arg(long, env = "TRUSTGATE_ADDR", default_value = "0.0.0.0:8443", value_name = "ADDR")]
    pub addr: SocketAddr,

    /// Address of the plain-HTTP admin endpoints (GET /livez, /readyz, /metrics).
    #[arg(long, env = "TRUSTGATE_ADMIN_ADDR", default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub admin_addr: SocketAddr,

    /// PEM certificate chain, server certificate first. Re-read when it changes on disk.
    #[arg(
        long,
        env = "TRUSTGATE_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        required_unless_present = "self_signed"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate. Re-read when it changes.
    #[arg(long, env = "TRUSTGATE_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Generate a throw-away CA and a certificate for local use instead of --tls-cert/--tls-key,
    /// and write the CA bundle to --ca-bundle-out.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub self_signed: bool,

    /// DNS names and IP addresses the self-signed certificate is valid for (repeatable).
    #[arg(long = "self-signed-name", value_name = "NAME", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()], requires = "self_signed")]
    pub self_signed_names: Vec<String>,

    /// Where --self-signed writes the CA bundle (PEM) that clients must trust
    /// [default: trustgate-ca.pem in the system temporary directory].
    #[arg(long, value_name = "PATH", requires = "self_signed")]
    pub ca_bundle_out: Option<PathBuf>,

    /// Where policies come from [default: file when --policy-file is given, else kubernetes].
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub policy_source: Option<PolicySource>,

    /// TrustedRegistryPolicy YAML file or directory (recursive; hidden entries such as a
    /// ConfigMap volume's `..data` are skipped), re-read on change.
    #[arg(long, env = "TRUSTGATE_POLICY_FILE", value_name = "PATH")]
    pub policy_file: Option<PathBuf>,

    /// How often --policy-file is checked for changes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub policy_reload_interval: Duration,

    /// Log format [default: text on a terminal, else json]. RUST_LOG sets the level (default info;
    /// allowed requests are logged at debug).
    #[arg(long, env = "TRUSTGATE_LOG_FORMAT", value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// How often the leader audits running workloads (kubernetes source).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub audit_interval: Duration,

    /// Have the leader's audit also write its findings as `wgpolicyk8s.io/v1alpha2`
    /// PolicyReports (one per namespace, labelled app.kubernetes.io/managed-by=trustgate),
    /// deleting those of namespaces without findings. Needs the PolicyReport CRD and RBAC on
    /// policyreports; without the CRD this is logged once and the audit carries on.
    #[arg(long, env = "TRUSTGATE_POLICY_REPORTS")]
    pub policy_reports: bool,

    /// This installation's name: it names and labels the PolicyReports the audit writes
    /// (`app.kubernetes.io/instance`), so that two installations on one cluster each keep and
    /// delete only their own. The chart passes FULLNAME.RELEASE-NAMESPACE.
    #[arg(long, default_value = Installation::DEFAULT, value_parser = parse_installation, value_name = "NAME")]
    pub instance: Installation,

    /// Name of the Lease that elects the replica writing status and running the audit.
    #[arg(long, default_value = "trustgate-leader", value_name = "NAME")]
    pub lease_name: String,

    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default", value_name = "NAMESPACE")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease [default: the host name, else a random id].
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,

    /// Admission connections open at once. At the cap, a connection still in its TLS handshake
    /// or with no request in flight, from the address holding the most, is closed to make room;
    /// if all are busy the new one is refused.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,

    /// Admission connections open at once from one source address; more are refused at once.
    /// The API server needs a few per address (HTTP/2) or one per concurrent review (HTTP/1.1).
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_source: u32,

    /// Time allowed for a TLS handshake, from the connection's accept.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// Time allowed for a request's headers; also how long an idle HTTP/1.1 keep-alive
    /// connection is kept.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub header_read_timeout: Duration,

    /// Time allowed to receive a request's body (then 408), and to wait for room in the body
    /// memory budget (then 503).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub request_timeout: Duration,

    /// Memory budget for the request bodies held at once by all clients (bytes; `Ki`, `Mi`,
    /// `Gi` suffixes). A body that does not fit waits, unread, for room; past
    /// --request-timeout it gets 503. Keep it well under the container's memory limit.
    #[arg(long, default_value = "64Mi", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_body_bytes_in_flight: usize,

    /// Memory budget for the request bodies held at once by one client address. Addresses
    /// that hold less may take room from the one that holds the most, so no set of clients can
    /// keep the API server's reviews waiting.
    #[arg(long, default_value = "16Mi", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_body_bytes_per_source: usize,

    /// Connections (HTTP/2 included) with no request for this long are closed.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// After SIGTERM, how long new connections are still accepted while every client is sent
    /// elsewhere (HTTP/1.1 responses carry `Connection: close`, HTTP/2 gets GOAWAY), before the
    /// listener closes. Covers the time the API server takes to see the endpoint go and to
    /// leave its kept-alive connections: the chart sets it to `shutdownDelaySeconds`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_delay: Duration,

    /// How long in-flight requests may take to finish after the listener closes.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub drain_grace: Duration,

    /// How often --tls-cert and --tls-key are checked for changes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub tls_reload_interval: Duration,

    /// A requester whose CREATEs of Pods, ReplicaSets and Jobs, made from the pod template of
    /// their controller owner, inherit that owner's admission under existingImages: Allow
    /// (repeatable). Given at all, the list replaces the built-in one:
    /// system:kube-controller-manager, and the kube-system ServiceAccounts deployment-,
    /// replicaset-, replication-, statefulset-, daemon-set-, job- and cronjob-controller (each
    /// for the objects its own controller creates). Distributions that run controllers under
    /// other names need it (docs/operations.md).
    #[arg(long = "controller-identity", value_name = "USERNAME")]
    pub controller_identities: Vec<String>,

    /// Runtime worker threads [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
}

fn parse_installation(value: &str) -> Result<Installation, String> {
    Installation::new(value).map_err(|e| e.to_string())
}

/// A size in bytes: a whole number, optionally followed by `Ki`, `Mi` or `Gi` (powers of 1024,
/// as in Kubernetes quantities).
fn parse_bytes(value: &str) -> Result<usize, String> {
    let (digits, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, ""),
    };
    let multiplier: usize = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: write bytes, or a number with Ki, Mi or Gi")),
    };
    let number: usize = digits.parse().map_err(|_| format!("{value:?} is not a size: write bytes, or 64Mi"))?;
    let bytes = number.checked_mul(multiplier).ok_or_else(|| format!("{value} is too large"))?;
    if bytes == 0 {
        return Err("the budget must be above 0".to_owned());
    }
    Ok(bytes)
}

impl ServeArgs {
    fn source(&self) -> anyhow::Result<PolicySource> {
        match (self.policy_source, &self.policy_file) {
            (None, Some(_)) | (Some(PolicySource::File), Some(_)) => Ok(PolicySource::File),
            (None, None) | (Some(PolicySource::Kubernetes), None) => Ok(PolicySource::Kubernetes),
            (Some(PolicySource::File), None) => bail!("--policy-source file needs --policy-file PATH"),
            (Some(PolicySource::Kubernetes), Some(_)) => {
                bail!("--policy-file is only read with --policy-source file")
            }
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_body: server::MAX_BODY,
            body_budget: BudgetLimits {
                global: self.max_body_bytes_in_flight,
                per_source: self.max_body_bytes_per_source,
            },
            handshake_timeout: self.handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source as usize,
            shutdown_delay: self.shutdown_delay,
            drain_grace: self.drain_grace,
        }
    }

    fn identity(&self) -> String {
        if let Some(identity) = &self.identity {
            return identity.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| {
                let nanos =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
                format!("trustgate-{:x}{:x}", std::process::id(), nanos)
            })
    }
}

/// Runs the server until a signal; returns the process exit code.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Flushes the log lines still queued when dropped, at exit.
    let (_logs, dropped_lines) = init_tracing(args.log_format)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = runtime.enable_all().thread_name("trustgate").build().context("cannot start the async runtime")?;
    let code = runtime.block_on(serve(args, dropped_lines));
    // Whatever is still running (a second signal cut the drain short) is abandoned.
    runtime.shutdown_background();
    code
}

/// Logs go to stderr through a background thread that writes them in batches every
/// [`log_writer::FLUSH_INTERVAL`]: a request never waits on the log pipe, and lines are dropped
/// (not queued without bound) if it cannot keep up; the returned counter says how many
/// (`trustgate_log_lines_dropped_total`).
fn init_tracing(format: Option<LogFormat>) -> anyhow::Result<(log_writer::FlushGuard, log_writer::DroppedLines)> {
    let terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if terminal { LogFormat::Text } else { LogFormat::Json });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, dropped, guard) = log_writer::spawn(std::io::stderr()).context("cannot start the log writer")?;
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(move || writer.clone()).with_ansi(terminal);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging is already set up: {e}");
    }
    Ok((guard, dropped))
}

/// Tries of the first policy-file load before `serve` gives up (each takes at least the file
/// source's 20 ms settle window).
const FIRST_LOAD_ATTEMPTS: u32 = 50;

/// The listen backlog of the admission port: a burst of connections waits here for the accept
/// loop (which never blocks) instead of being dropped and retried by the clients' SYN timers.
/// The kernel caps it at `net.core.somaxconn` (4096 by default since Linux 5.4).
const BACKLOG: u32 = 4096;

/// Binds the admission port with [`BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn serve(args: ServeArgs, dropped_lines: log_writer::DroppedLines) -> anyhow::Result<ExitCode> {
    let source_kind = args.source()?;
    if args.max_body_bytes_per_source > args.max_body_bytes_in_flight {
        bail!(
            "--max-body-bytes-per-source ({}) is larger than --max-body-bytes-in-flight ({}): one address's share cannot exceed the whole",
            args.max_body_bytes_per_source,
            args.max_body_bytes_in_flight
        );
    }
    let store = Store::new();
    let mut registry = metrics::registry();
    SnapshotCollector::register(&mut registry, store.clone());
    LogCollector::register(&mut registry, dropped_lines);
    let admission_metrics = AdmissionMetrics::register(&mut registry);
    let shutdown = CancellationToken::new();

    // Credentials are validated before any port opens.
    let tls_metrics = TlsMetrics::register(&mut registry);
    let (credentials, reloader) = credentials(&args, tls_metrics)?;
    let tls_config = Arc::new(credentials.server_config()?);

    // The Kubernetes source releases its Lease when it stops; shutdown waits for that, so the
    // next replica takes over at once instead of after the lease expires.
    let mut source_task = None;
    match source_kind {
        PolicySource::File => {
            let path = args.policy_file.clone().expect("the file source has a path");
            let mut source = FileSource::new(path, SourceMetrics::register(&mut registry));
            // A file being written while serve starts is read again (each try waits out the
            // source's settle window); files that never stop changing are an error, exit 2.
            let snapshot = source
                .first_load(FIRST_LOAD_ATTEMPTS)
                .with_context(|| format!("cannot load policies from {}", source.path().display()))?;
            file_source::log_loaded(source.path(), &snapshot);
            store.publish(snapshot);
            tokio::spawn(source.run(store.clone(), args.policy_reload_interval, shutdown.clone()));
        }
        PolicySource::Kubernetes => {
            let client = kube::Client::try_default().await.context("cannot configure the Kubernetes client")?;
            let config = trustgate_cluster::watch::WatchConfig {
                lease_namespace: args.lease_namespace.clone(),
                lease_name: args.lease_name.clone(),
                identity: args.identity(),
                audit_interval: args.audit_interval,
                policy_reports: args.policy_reports,
                installation: args.instance.clone(),
            };
            let source = trustgate_cluster::watch::KubeSource::new(config, &mut registry);
            let (store, shutdown) = (store.clone(), shutdown.clone());
            source_task = Some(tokio::spawn(async move {
                if let Err(error) = source.run(client, store, shutdown).await {
                    let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
                    tracing::error!(%error, %source, "the Kubernetes policy source stopped");
                }
            }));
        }
    }
    if let Some(reloader) = reloader {
        tokio::spawn(reloader.run(args.tls_reload_interval, shutdown.clone()));
    }

    let listener = listen(args.addr).with_context(|| format!("cannot listen on {}", args.addr))?;
    let admin_listener =
        TcpListener::bind(args.admin_addr).await.with_context(|| format!("cannot listen on {}", args.admin_addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        admin_addr = %admin_listener.local_addr()?,
        policy_source = ?source_kind,
        "serving admission on https://{}/validate and /imagereview",
        listener.local_addr()?
    );

    let admin_shutdown = CancellationToken::new();
    let admin = tokio::spawn(admin::serve(admin_listener, Admin::new(store.clone(), registry), admin_shutdown.clone()));
    let controllers = ControllerIdentities::from_flags(args.controller_identities.clone());
    let admission = Admission::with_controllers(store.clone(), admission_metrics, &args.limits(), controllers);
    let mut server = tokio::spawn(server::serve(listener, tls_config, admission, args.limits(), shutdown.clone()));

    let mut signals = Signals::new()?;
    tokio::select! {
        signal = signals.next() => tracing::info!(signal, "shutting down: readiness false, draining in-flight requests"),
        result = &mut server => {
            result.context("the admission server stopped")?;
            bail!("the admission server stopped unexpectedly");
        }
    }
    store.start_draining();
    shutdown.cancel();
    tokio::select! {
        result = server => result.context("the admission server failed while draining")?,
        signal = signals.next() => {
            tracing::warn!(signal, "second signal: exiting without draining");
            return Ok(ExitCode::from(1));
        }
    }
    if let Some(task) = source_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    admin_shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    tracing::info!("drained; exiting");
    Ok(ExitCode::SUCCESS)
}

fn credentials(args: &ServeArgs, metrics: TlsMetrics) -> anyhow::Result<(Arc<Credentials>, Option<Reloader>)> {
    if args.self_signed {
        let generated = SelfSigned::generate(&args.self_signed_names)?;
        let path = args.ca_bundle_out.clone().unwrap_or_else(|| std::env::temp_dir().join("trustgate-ca.pem"));
        generated.write_ca_bundle(&path)?;
        tracing::info!(
            ca_bundle = %path.display(),
            names = ?args.self_signed_names,
            "self-signed certificate: clients must trust the CA bundle (curl --cacert {})",
            path.display()
        );
        trustgate_admission::tls::report_expiry(&metrics, &generated.key);
        return Ok((Credentials::new(generated.key), None));
    }
    let (Some(cert), Some(key)) = (args.tls_cert.clone(), args.tls_key.clone()) else {
        bail!("give --tls-cert and --tls-key, or --self-signed");
    };
    let (credentials, reloader) = Reloader::load(CertificateFiles { cert, key }, metrics)?;
    Ok((credentials, Some(reloader)))
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.serve)
    }

    #[test]
    fn defaults_match_the_chart() {
        let args = parse(&["--tls-cert", "c", "--tls-key", "k"]).unwrap();
        assert_eq!(args.addr.to_string(), "0.0.0.0:8443");
        assert_eq!(args.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.audit_interval, Duration::from_secs(300));
        assert_eq!(args.lease_name, "trustgate-leader");
        assert_eq!(args.max_connections, 1024);
        let limits = args.limits();
        let defaults = Limits::default();
        assert_eq!(limits.max_connections_per_source, defaults.max_connections_per_source);
        assert_eq!(limits.handshake_timeout, defaults.handshake_timeout);
        assert_eq!(limits.header_read_timeout, defaults.header_read_timeout);
        assert_eq!(limits.body_budget, defaults.body_budget);
        assert_eq!(
            limits.body_budget,
            BudgetLimits { global: 64 << 20, per_source: 16 << 20 },
            "the chart's bodyBudget"
        );
        assert_eq!(args.source().unwrap(), PolicySource::Kubernetes);
        assert!(!args.policy_reports, "PolicyReports are off unless asked for");
        assert!(parse(&["--self-signed", "--policy-reports"]).unwrap().policy_reports);
    }

    #[test]
    fn policy_file_selects_the_file_source() {
        let args = parse(&["--self-signed", "--policy-file", "p"]).unwrap();
        assert_eq!(args.source().unwrap(), PolicySource::File);
        let args = parse(&["--self-signed", "--policy-source", "file"]).unwrap();
        assert!(args.source().unwrap_err().to_string().contains("needs --policy-file"));
        let args = parse(&["--self-signed", "--policy-source", "kubernetes", "--policy-file", "p"]).unwrap();
        assert!(args.source().is_err());
    }

    #[test]
    fn tls_flags_are_checked() {
        assert!(parse(&[]).is_err(), "a certificate or --self-signed is required");
        assert!(parse(&["--tls-cert", "c"]).is_err(), "a certificate needs its key");
        assert!(parse(&["--self-signed", "--tls-cert", "c", "--tls-key", "k"]).is_err());
        let args = parse(&["--self-signed", "--audit-interval", "90s", "--drain-grace", "1m"]).unwrap();
        assert_eq!((args.audit_interval, args.drain_grace), (Duration::from_secs(90), Duration::from_secs(60)));
        assert_eq!(args.shutdown_delay, Duration::ZERO, "no delay unless asked: the chart asks");
        let args = parse(&["--self-signed", "--shutdown-delay", "5s"]).unwrap();
        assert_eq!(args.shutdown_delay, Duration::from_secs(5));
    }

    #[test]
    fn controller_identities_are_repeatable_and_default_to_the_built_in_list() {
        let args = parse(&["--self-signed"]).unwrap();
        assert_eq!(ControllerIdentities::from_flags(args.controller_identities), ControllerIdentities::BuiltIn);
        let args = parse(&["--self-signed", "--controller-identity", "a", "--controller-identity", "b"]).unwrap();
        assert_eq!(
            ControllerIdentities::from_flags(args.controller_identities),
            ControllerIdentities::Listed(vec!["a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn body_budgets_are_written_in_bytes_or_binary_units() {
        let args =
            parse(&["--self-signed", "--max-body-bytes-in-flight", "128Mi", "--max-body-bytes-per-source", "4194304"]);
        let limits = args.unwrap().limits().body_budget;
        assert_eq!(limits, BudgetLimits { global: 128 << 20, per_source: 4 << 20 });
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("512Ki"), Ok(512 << 10));
        for bad in ["", "0", "64MB", "64 Mi", "-1", "1.5Mi", "99999999999999999999Gi"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} is not a size");
        }
    }

    /// The chart's dashboard and alerts may query only the families in .ci/known-metrics.txt
    /// (chart CI checks that); this keeps the list equal to what `serve` registers.
    #[test]
    fn the_served_metric_families_are_the_known_list_the_chart_checks_against() {
        // Listed before their metric is registered, so the chart can query them; remove a name
        // from here once its metric is registered.
        const PENDING: [&str; 0] = [];
        let known: std::collections::BTreeMap<&str, &str> =
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/known-metrics.txt"))
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(|l| l.split_once(' ').expect("each line is NAME TYPE"))
                .filter(|(_, kind)| *kind != "prometheus")
                .collect();

        // What serve registers, whichever policy source: both sources' families, each with a
        // series (the encoder leaves out families that have none).
        let store = Store::new();
        let mut registry = metrics::registry();
        SnapshotCollector::register(&mut registry, store.clone());
        let admission = AdmissionMetrics::register(&mut registry);
        admission.touch_every_family();
        let (_writer, dropped, _guard) = log_writer::spawn(std::io::sink()).unwrap();
        LogCollector::register(&mut registry, dropped);
        let tls = TlsMetrics::register(&mut registry);
        tls.reloaded();
        SourceMetrics::register(&mut registry).reloaded();
        trustgate_cluster::watch::KubeSourceMetrics::register(&mut registry).touch_every_family();
        // trustgate_policies is reported once a snapshot is published.
        let (policies, _) = trustgate_core::engine::PolicySet::compile(std::iter::empty());
        store.publish(trustgate_core::engine::snapshot::Snapshot { policies, namespaces: None });
        let text = metrics::encode(&registry).unwrap();
        let served: std::collections::BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split_once(' ').expect("# TYPE NAME TYPE"))
            .collect();

        for (name, kind) in &served {
            assert_eq!(known.get(name), Some(kind), "{name} ({kind}) is served but not in .ci/known-metrics.txt");
            assert!(!PENDING.contains(name), "{name} is registered now: remove it from PENDING");
        }
        for (name, kind) in &known {
            if !PENDING.contains(name) {
                assert_eq!(served.get(name), Some(kind), "{name} ({kind}) is in .ci/known-metrics.txt but not served");
            }
        }
    }
}
