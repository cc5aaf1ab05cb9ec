//! TLS credentials: PEM files validated before the port opens, re-read when they change on disk,
//! and a self-signed certificate for local use.
//!
//! No file watcher: the [`Reloader`] re-reads the two files every few seconds and compares the
//! bytes. Reading through the paths follows symlinks each time, so kubelet's Secret-volume
//! update (files that are symlinks through `..data`, swapped atomically) and cert-manager
//! rewriting files in place are both seen. A pair that does not load (half-written, key and
//! certificate from different generations) is reported and the previous certificate stays in
//! service; handshakes only ever read an `Arc<CertifiedKey>`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::TlsMetrics;

/// ALPN protocols offered, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why credentials could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{}: no PEM certificate found: {error}", path.display())]
    Certificate { path: PathBuf, error: rustls_pki_types::pem::Error },
    #[error("{}: no PEM private key found (PKCS#8, PKCS#1 or SEC1): {error}", path.display())]
    KeyPem { path: PathBuf, error: rustls_pki_types::pem::Error },
    #[error("{}: unusable private key: {error}", path.display())]
    Key { path: PathBuf, error: rustls::Error },
    #[error("{} does not hold the private key of the certificate in {}: {error}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf, error: rustls::Error },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(rcgen::Error),
    #[error("cannot write the CA bundle to {}: {error}", path.display())]
    WriteBundle { path: PathBuf, error: io::Error },
    #[error("invalid TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The certificate chain and private key files (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    /// Reads and validates both files: a certificate chain, a private key, and that the key
    /// belongs to the first certificate.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        self.parse(&cert, &key)
    }

    fn parse(&self, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::Certificate { path: self.cert.clone(), error })?;
        if chain.is_empty() {
            return Err(TlsError::Certificate {
                path: self.cert.clone(),
                error: rustls_pki_types::pem::Error::NoItemsFound,
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|error| TlsError::KeyPem { path: self.key.clone(), error })?;
        certified_key(chain, key).map_err(|e| match e {
            CredentialError::Key(error) => TlsError::Key { path: self.key.clone(), error },
            CredentialError::Mismatch(error) => {
                TlsError::Mismatch { cert: self.cert.clone(), key: self.key.clone(), error }
            }
        })
    }
}

/// The notAfter of the certificate `key` answers handshakes with (the chain's first), in Unix
/// seconds; `None` when it has no certificate or rustls accepted a certificate whose validity
/// x509-parser cannot read.
fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.end_entity_cert().ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Publishes the notAfter of the certificate now served, so an alert can fire before it expires.
pub fn report_expiry(metrics: &TlsMetrics, key: &CertifiedKey) {
    match not_after(key) {
        Some(seconds) => metrics.serving_until(seconds),
        None => tracing::warn!("cannot read the serving certificate's notAfter: its expiry is not reported"),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read { path: path.to_owned(), error })
}

enum CredentialError {
    Key(rustls::Error),
    Mismatch(rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CredentialError> {
    let signing_key = provider().key_provider.load_private_key(key).map_err(CredentialError::Key)?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(CredentialError::Mismatch(e)),
    }
}

/// The certificate handshakes are answered with; swapped atomically on reload.
pub struct Credentials {
    current: ArcSwap<CertifiedKey>,
}

impl Credentials {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Credentials { current: ArcSwap::from_pointee(key) })
    }

    /// The certificate served right now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// A rustls server configuration answering with these credentials: TLS 1.2 and 1.3,
    /// HTTP/2 and HTTP/1.1 offered by ALPN, no client certificates.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Credentials").field("chain_len", &self.current.load().cert.len()).finish()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What the reloader last read from disk, to act once per change.
#[derive(PartialEq, Eq)]
enum Seen {
    Files { cert: Vec<u8>, key: Vec<u8> },
    Unreadable(String),
}

/// Re-reads the certificate files and swaps in a new certificate when they change.
pub struct Reloader {
    files: CertificateFiles,
    credentials: Arc<Credentials>,
    seen: Seen,
    metrics: TlsMetrics,
}

/// What one check of the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last seen.
    Unchanged,
    /// A new certificate is now served.
    Reloaded,
    /// The files changed but do not load; the previous certificate stays.
    Failed(String),
}

impl Reloader {
    /// Loads and validates the files (before the port opens): an error here is fatal.
    pub fn load(files: CertificateFiles, metrics: TlsMetrics) -> Result<(Arc<Credentials>, Reloader), TlsError> {
        let cert = read(&files.cert)?;
        let key = read(&files.key)?;
        let loaded = files.parse(&cert, &key)?;
        report_expiry(&metrics, &loaded);
        let credentials = Credentials::new(loaded);
        let reloader = Reloader { files, credentials: credentials.clone(), seen: Seen::Files { cert, key }, metrics };
        Ok((credentials, reloader))
    }

    /// Reads both files and, when they changed, loads and serves them. Blocking file I/O: call
    /// it from a blocking context (see [`Reloader::run`]).
    pub fn check(&mut self) -> Reload {
        let seen = match (read(&self.files.cert), read(&self.files.key)) {
            (Ok(cert), Ok(key)) => Seen::Files { cert, key },
            (Err(e), _) | (_, Err(e)) => Seen::Unreadable(e.to_string()),
        };
        if seen == self.seen {
            return Reload::Unchanged;
        }
        let result = match &seen {
            Seen::Files { cert, key } => self.files.parse(cert, key).map_err(|e| e.to_string()),
            Seen::Unreadable(e) => Err(e.clone()),
        };
        self.seen = seen;
        match result {
            Ok(key) => {
                report_expiry(&self.metrics, &key);
                self.credentials.replace(key);
                self.metrics.reloaded();
                tracing::info!(cert = %self.files.cert.display(), key = %self.files.key.display(), "serving the new TLS certificate");
                Reload::Reloaded
            }
            Err(error) => {
                self.metrics.failed();
                tracing::warn!(%error, "the TLS certificate files changed but do not load; still serving the previous certificate");
                Reload::Failed(error)
            }
        }
    }

    /// Checks the files every `interval` until `shutdown`.
    pub async fn run(self, interval: std::time::Duration, shutdown: tokio_util::sync::CancellationToken) {
        trustgate_runtime::poll::poll_every(
            self,
            interval,
            shutdown,
            "the TLS certificate reloader",
            |reloader: &mut Self| {
                reloader.check();
            },
        )
        .await;
    }
}

/// A certificate generated at start-up for local use, and the CA that signed it.
pub struct SelfSigned {
    pub key: CertifiedKey,
    /// PEM of the CA certificate: the bundle clients trust (`curl --cacert`, `caBundle`).
    pub ca_pem: String,
}

impl SelfSigned {
    /// A throw-away CA and a server certificate it signs for `names` (DNS names or IP addresses).
    /// The CA's key is dropped at once: nothing else can ever be signed with it.
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Generate)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name.push(DnType::CommonName, "trustgate self-signed CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).map_err(TlsError::Generate)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut server = CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
        server.distinguished_name.push(DnType::CommonName, "trustgate");
        let server_cert = server.signed_by(&server_key, &issuer).map_err(TlsError::Generate)?;

        let key = PrivateKeyDer::try_from(server_key.serialize_der())
            .map_err(|e| TlsError::Generate(rcgen::Error::PemError(e.to_owned())))?;
        let key = certified_key(vec![server_cert.der().clone()], key).map_err(|e| match e {
            CredentialError::Key(e) | CredentialError::Mismatch(e) => TlsError::Config(e),
        })?;
        Ok(SelfSigned { key, ca_pem: ca_cert.pem() })
    }

    /// Writes the CA bundle to `path`.
    pub fn write_ca_bundle(&self, path: &Path) -> Result<(), TlsError> {
        std::fs::write(path, &self.ca_pem).map_err(|error| TlsError::WriteBundle { path: path.to_owned(), error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertifiedKey as Generated, generate_simple_self_signed};
    use rustls::client::danger::ServerCertVerifier;

    fn pair() -> Generated<rcgen::KeyPair> {
        generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
    }

    fn write(dir: &Path, cert: &str, key: &str) -> CertificateFiles {
        let files = CertificateFiles { cert: dir.join("tls.crt"), key: dir.join("tls.key") };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    fn served(credentials: &Credentials) -> Vec<u8> {
        credentials.current().end_entity_cert().unwrap().to_vec()
    }

    #[test]
    fn loads_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair();
        let files = write(dir.path(), &a.cert.pem(), &a.signing_key.serialize_pem());
        let (credentials, _) = Reloader::load(files, TlsMetrics::default()).unwrap();
        assert_eq!(served(&credentials), a.cert.der().to_vec());
    }

    #[test]
    fn rejects_missing_garbage_and_mismatched_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(), pair());
        let missing = CertificateFiles { cert: dir.path().join("nope.crt"), key: dir.path().join("nope.key") };
        assert!(matches!(missing.load(), Err(TlsError::Read { .. })));

        let files = write(dir.path(), "garbage", &a.signing_key.serialize_pem());
        let err = files.load().unwrap_err();
        assert!(matches!(err, TlsError::Certificate { .. }), "{err}");

        let files = write(dir.path(), &a.cert.pem(), &a.cert.pem());
        let err = files.load().unwrap_err();
        assert!(matches!(err, TlsError::KeyPem { .. }), "{err}");

        let files = write(dir.path(), &a.cert.pem(), &b.signing_key.serialize_pem());
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("does not hold the private key of the certificate"), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "never print key material: {err}");
    }

    #[test]
    fn reloads_rewritten_files_and_keeps_the_old_certificate_on_a_bad_edit() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(), pair());
        let files = write(dir.path(), &a.cert.pem(), &a.signing_key.serialize_pem());
        let (credentials, mut reloader) = Reloader::load(files.clone(), TlsMetrics::default()).unwrap();
        assert_eq!(reloader.check(), Reload::Unchanged);

        // Half-way through a rotation: new certificate, old key.
        std::fs::write(&files.cert, b.cert.pem()).unwrap();
        assert!(matches!(reloader.check(), Reload::Failed(e) if e.contains("does not hold")));
        assert_eq!(served(&credentials), a.cert.der().to_vec());
        assert_eq!(reloader.check(), Reload::Unchanged, "a failure is reported once per change");

        std::fs::write(&files.key, b.signing_key.serialize_pem()).unwrap();
        assert_eq!(reloader.check(), Reload::Reloaded);
        assert_eq!(served(&credentials), b.cert.der().to_vec());
    }

    /// A self-signed certificate for localhost that expires at midnight UTC of the given day.
    fn expiring(year: i32, month: u8, day: u8) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn reported_not_after(registry: &prometheus_client::registry::Registry) -> Option<i64> {
        let text = crate::metrics::encode(registry).unwrap();
        let line = text.lines().find(|l| l.starts_with("trustgate_tls_certificate_not_after_seconds "))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    #[test]
    fn reports_the_served_certificates_not_after_on_load_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = crate::metrics::registry();
        let metrics = TlsMetrics::register(&mut registry);
        let (cert, key) = expiring(2031, 5, 17);
        let files = write(dir.path(), &cert, &key);
        let (_, mut reloader) = Reloader::load(files.clone(), metrics).unwrap();
        // 2031-05-17T00:00:00Z, computed by `date -u -d 2031-05-17 +%s`.
        assert_eq!(reported_not_after(&registry), Some(1_936_742_400));

        let (renewed, renewed_key) = expiring(2032, 1, 2);
        std::fs::write(&files.cert, &renewed).unwrap();
        assert!(matches!(reloader.check(), Reload::Failed(_)), "new certificate with the old key");
        assert_eq!(reported_not_after(&registry), Some(1_936_742_400), "the old certificate is still served");

        std::fs::write(&files.key, &renewed_key).unwrap();
        assert_eq!(reloader.check(), Reload::Reloaded);
        // `date -u -d 2032-01-02 +%s`
        assert_eq!(reported_not_after(&registry), Some(1_956_614_400));
    }

    #[cfg(unix)]
    #[test]
    fn follows_a_kubelet_style_data_symlink_swap() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(), pair());
        let generation = |name: &str, g: &Generated<rcgen::KeyPair>| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            write(&d, &g.cert.pem(), &g.signing_key.serialize_pem());
        };
        generation("..2024_01_01", &a);
        symlink("..2024_01_01", dir.path().join("..data")).unwrap();
        symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
        symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();
        let files = CertificateFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
        let (credentials, mut reloader) = Reloader::load(files, TlsMetrics::default()).unwrap();

        generation("..2024_02_01", &b);
        symlink("..2024_02_01", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        assert_eq!(reloader.check(), Reload::Reloaded);
        assert_eq!(served(&credentials), b.cert.der().to_vec());
    }

    #[test]
    fn self_signed_certificate_chains_to_the_written_ca() {
        let generated = SelfSigned::generate(&["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let ca = CertificateDer::from_pem_slice(generated.ca_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        let leaf = generated.key.end_entity_cert().unwrap();
        for name in ["localhost", "127.0.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
    }
}
