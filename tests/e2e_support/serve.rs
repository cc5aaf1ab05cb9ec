//! `trustgate serve --policy-source kubernetes` processes on 127.0.0.1, as the local webhook of
//! a test or as the servers a test watches; stopped with SIGTERM (so that they give their Lease
//! up) when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::Cluster;

/// Where every `serve` a test starts keeps its Lease.
pub const LEASE_NAMESPACE: &str = "default";

/// How to run one `serve`.
pub struct ServeOptions<'a> {
    /// `--identity`, also the name its log goes by.
    pub identity: &'a str,
    /// `--lease-name`, in [`LEASE_NAMESPACE`].
    pub lease: &'a str,
    pub audit_interval: &'a str,
    /// `RUST_LOG`.
    pub log_filter: &'a str,
    /// More arguments.
    pub args: &'a [&'a str],
}

/// A running `trustgate serve`.
pub struct Serve {
    pub identity: String,
    pub lease: String,
    /// The HTTPS port (`/validate`).
    pub port: u16,
    /// The plain HTTP port (`/readyz`, `/metrics`).
    pub admin_port: u16,
    child: Child,
    /// Its log (stdout and stderr), and the CA it wrote when self-signed.
    dir: tempfile::TempDir,
    /// The CA its serving certificate chains to.
    ca: PathBuf,
}

impl Serve {
    /// Starts `serve` on free ports against `cluster`: with the kit's webhook certificate
    /// (`pki/webhook.{crt,key}` beside the kubeconfig, SAN 127.0.0.1, signed by `pki/ca.crt`),
    /// or self-signed for 127.0.0.1 on another cluster. Does not wait: see [`Self::wait_ready`].
    pub fn start(cluster: &Cluster, options: ServeOptions<'_>) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_trustgate"));
        command
            .args(["serve", "--policy-source", "kubernetes", "--log-format", "text"])
            .args(["--addr", &format!("127.0.0.1:{port}"), "--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--audit-interval", options.audit_interval, "--identity", options.identity])
            .args(["--lease-namespace", LEASE_NAMESPACE, "--lease-name", options.lease])
            .args(options.args)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("RUST_LOG", options.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let ca = match cluster.kit_pki() {
            Some(pki) => {
                command.arg("--tls-cert").arg(pki.join("webhook.crt")).arg("--tls-key").arg(pki.join("webhook.key"));
                pki.join("ca.crt")
            }
            None => {
                let ca = dir.path().join("ca.pem");
                command.args(["--self-signed", "--ca-bundle-out"]).arg(&ca);
                ca
            }
        };
        let child = command.spawn().expect("start the trustgate binary");
        Serve {
            identity: options.identity.to_owned(),
            lease: options.lease.to_owned(),
            port,
            admin_port,
            child,
            dir,
            ca,
        }
    }

    /// Waits until `/readyz` answers 200; fails, with the log, if the process exits first or
    /// after 30 s.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(self.admin_port, "/readyz").map(|(status, _)| status) != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.identity, self.log());
            }
            assert!(Instant::now() < deadline, "{} did not get ready in 30s:\n{}", self.identity, self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The CA of its serving certificate, as PEM (once started, when self-signed).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca).unwrap_or_else(|e| panic!("{}: {e}", self.ca.display()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn metrics(&self) -> Option<String> {
        http_get(self.admin_port, "/metrics").filter(|(status, _)| *status == 200).map(|(_, body)| body)
    }

    /// One sample of a metric without labels.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Sends SIGTERM (drain, give the Lease up, exit), unless it has exited.
    pub fn terminate(&mut self) {
        if !self.exited() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        }
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log:\n{}", self.identity, self.log());
        }
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP GET on 127.0.0.1: (status, body), or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}
