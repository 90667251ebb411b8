//! TLS on the local hop, for applications that insist on it (`sslmode=require`, JDBC
//! `ssl=true`, ORMs' production presets). `--client-tls self-signed` makes a key and certificate
//! in memory at start, for the listen addresses, `localhost` and `--client-tls-name`s, and can
//! write the certificate out for clients that verify; `--client-tls files` serves
//! `--client-tls-cert`/`--client-tls-key`, read again when they change or on SIGHUP (rotated
//! certificates), the old pair kept if the new one does not load. TLS 1.2 and 1.3 on rustls's
//! ring provider, no client certificate, ALPN `postgresql` (which PostgreSQL 17's direct TLS
//! requires).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The ALPN protocol PostgreSQL clients offer.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";
/// How often `files` mode looks at the files' modification times.
const CHECK_FILES_EVERY: Duration = Duration::from_secs(5);

/// Whether and how the listener speaks TLS.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// Answer SSLRequest with 'N' (default: libpq's sslmode=prefer pays nothing).
    #[default]
    Off,
    /// A key and certificate made in memory at start.
    SelfSigned,
    /// `--client-tls-cert` and `--client-tls-key`, re-read when they change.
    Files,
}

/// The listener's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsSettings {
    pub mode: ClientTlsMode,
    /// Extra names for the self-signed certificate.
    pub names: Vec<String>,
    /// Where to write the self-signed certificate (PEM).
    pub cert_out: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A listener's TLS: the acceptor and the certificate it serves now.
pub struct ClientTls {
    acceptor: TlsAcceptor,
    certificate: Arc<Certificate>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.certificate.files)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The listener's TLS, `None` when it is off; an error names what could not be loaded.
    pub fn new(
        settings: &ClientTlsSettings,
        listen: &[SocketAddr],
    ) -> Result<Option<Arc<Self>>, String> {
        let certificate = match settings.mode {
            ClientTlsMode::Off => return Ok(None),
            ClientTlsMode::SelfSigned => Certificate::self_signed(settings, listen)?,
            ClientTlsMode::Files => Certificate::from_files(settings)?,
        };
        let certificate = Arc::new(certificate);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Some(Arc::new(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })))
    }

    /// The certificate served now (DER), for SCRAM's channel binding.
    pub fn certificate_der(&self) -> Vec<u8> {
        let current = self
            .certificate
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        current.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    /// The TLS handshake on a client connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }

    /// In `files` mode, loads the files again whenever they change or SIGHUP comes, until
    /// `stop`; returns at once in the other modes.
    pub async fn keep_fresh(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(files) = self.certificate.files.clone() else {
            return;
        };
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = files.modified();
        let mut tick = tokio::time::interval(CHECK_FILES_EVERY);
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            let now = files.modified();
            // A pair that did not load (caught mid-write) is tried again at the next look.
            if (asked || now != seen) && self.certificate.reload(&files) {
                seen = now;
            }
        }
    }
}

/// The certificate and key a listener serves, swapped in place when `files` changes.
struct Certificate {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<Files>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Where `files` mode reads from.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn modified(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let time = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        (time(&self.cert), time(&self.key))
    }

    fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        let certs = crate::upstream::tls::load_ca_file(&self.cert)
            .map_err(|e| format!("--client-tls-cert: {e}"))?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            format!(
                "--client-tls-key: {} holds no PEM private key: {e}",
                self.key.display()
            )
        })?;
        certified(certs, key)
    }
}

impl Certificate {
    fn self_signed(settings: &ClientTlsSettings, listen: &[SocketAddr]) -> Result<Self, String> {
        let names = self_signed_names(settings, listen);
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
        if let Some(path) = &settings.cert_out {
            std::fs::write(path, made.cert.pem()).map_err(|e| {
                format!(
                    "--client-tls-cert-out: cannot write {}: {e}",
                    path.display()
                )
            })?;
        }
        let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let certified = certified(vec![made.cert.der().clone()], key)?;
        Ok(Self {
            current: RwLock::new(certified),
            files: None,
        })
    }

    fn from_files(settings: &ClientTlsSettings) -> Result<Self, String> {
        let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) else {
            return Err(
                "--client-tls files needs --client-tls-cert and --client-tls-key".to_owned(),
            );
        };
        let files = Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        Ok(Self {
            current: RwLock::new(files.load()?),
            files: Some(files),
        })
    }

    /// Loads the files again; a pair that does not load leaves the current one in place.
    /// Whether it loaded.
    fn reload(&self, files: &Files) -> bool {
        match files.load() {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
                tracing::info!(cert = %files.cert.display(), "client TLS certificate loaded again");
                true
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "client TLS certificate not reloaded; the previous one is still served"
                );
                false
            }
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A chain and its key, checked to belong together.
fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let signing_key =
        any_supported_type(&key).map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("the private key does not belong to the certificate: {e}"))?;
    Ok(Arc::new(certified))
}

/// `localhost`, every listen address that is not a wildcard, and the configured names.
fn self_signed_names(settings: &ClientTlsSettings, listen: &[SocketAddr]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    for address in listen {
        if !address.ip().is_unspecified() {
            names.push(address.ip().to_string());
        }
    }
    for name in &settings.names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_names_hold_localhost_the_addresses_and_the_extra_names() {
        let settings = ClientTlsSettings {
            mode: ClientTlsMode::SelfSigned,
            names: vec!["app.internal".to_owned(), "localhost".to_owned()],
            ..ClientTlsSettings::default()
        };
        let listen = [
            "127.0.0.1:5432".parse().expect("addr"),
            "0.0.0.0:6432".parse().expect("addr"),
        ];
        assert_eq!(
            self_signed_names(&settings, &listen),
            ["localhost", "127.0.0.1", "app.internal"]
        );
    }

    #[test]
    fn files_mode_needs_both_files_and_a_matching_pair() {
        let settings = ClientTlsSettings {
            mode: ClientTlsMode::Files,
            ..ClientTlsSettings::default()
        };
        let error = ClientTls::new(&settings, &[]).expect_err("no files");
        assert!(error.contains("--client-tls-cert"), "{error}");
    }
}
