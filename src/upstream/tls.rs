//! rustls client configuration for the upstream, on the ring provider with TLS 1.2 and 1.3.
//! Roots are webpki-roots (which include the Amazon Trust Services roots RDS Proxy's ACM
//! certificates chain to) plus `--ca-file` (the RDS `global-bundle.pem` for instance endpoints).
//! `verify-full` checks chain and name; `verify-ca` checks the chain only, and therefore only
//! against `--ca-file` (with the public roots any public certificate for any name would pass);
//! `require` checks nothing.

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::uring::Socket;

/// How the upstream certificate is checked.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Chain to a trusted root and the certificate names the upstream host (default).
    VerifyFull,
    /// Chain to a `--ca-file` root only (required); the host name is not checked.
    VerifyCa,
    /// TLS without any certificate check (like libpq's sslmode=require).
    Require,
    /// No TLS at all; only allowed with `--auth password` (local development).
    Disable,
}

/// Reads every certificate in a PEM file; an empty or unreadable file is an error.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} contains no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Why TLS could not be started on a connection.
#[derive(Debug)]
pub enum StartTlsError {
    /// The server answered the SSLRequest with 'N'.
    Refused,
    /// Writing the SSLRequest or reading its answer failed.
    Io(std::io::Error),
    /// The handshake failed (the rustls error is inside).
    Handshake(std::io::Error),
}

/// SSLRequest, exactly one byte of answer read from the raw socket (nothing may be buffered
/// before the handshake: CVE-2021-23222), then the handshake for `name`. The one way the
/// sidecar and `doctor` open TLS to an upstream.
pub async fn start_tls(
    mut tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<TlsStream<Socket>, StartTlsError> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(StartTlsError::Io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(StartTlsError::Io)?;
    if answer[0] != b'S' {
        return Err(StartTlsError::Refused);
    }
    // The socket's writes go through io_uring (where there is a ring) only from here on: the
    // SSLRequest above went through tokio.
    let socket = Socket::new(tcp).map_err(StartTlsError::Io)?;
    TlsConnector::from(config)
        .connect(name, socket)
        .await
        .map_err(StartTlsError::Handshake)
}

/// Why `verify-ca` needs its own roots.
pub const VERIFY_CA_NEEDS_CA_FILE: &str = "verify-ca trusts only the CAs in --ca-file (with \
    the public roots, any public certificate for any name would pass); pass --ca-file or use \
    verify-full";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client config for a TLS mode; `None` for `disable`.
pub fn client_config(
    mode: TlsMode,
    ca_file: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, String> {
    if mode == TlsMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let mut roots = RootCertStore::empty();
    if mode == TlsMode::VerifyCa {
        if ca_file.is_none() {
            return Err(VERIFY_CA_NEEDS_CA_FILE.to_owned());
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        for cert in load_ca_file(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let config = match mode {
        TlsMode::VerifyFull => builder.with_webpki_verifier(webpki).with_no_client_auth(),
        TlsMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly { inner: webpki }))
            .with_no_client_auth(),
        TlsMode::Require | TlsMode::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCheck {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// `verify-ca`: the chain must verify; a name mismatch is accepted.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `require`: encryption without authentication of the server (libpq's sslmode=require).
#[derive(Debug)]
struct NoCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
