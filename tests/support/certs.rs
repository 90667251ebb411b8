//! A throw-away PKI for tests: one self-signed CA and leaf server certificates it signs.
//!
//! This module owns certificate generation (rcgen, ring) and the files tests hand to the sidecar
//! (`--ca-file`, listener certificate and key). Everything lives in a temporary directory owned
//! by the [`TestPki`] and disappears with it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA plus the ability to issue server certificates signed by it.
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    dir: tempfile::TempDir,
    ca_file: OnceLock<PathBuf>,
    files: AtomicU64,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// Generates a fresh CA (ECDSA P-256, `CN=rds-iam-sidecar test CA`).
    pub fn new() -> TestPki {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "rds-iam-sidecar test CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "rds-iam-sidecar tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA certificate");
        let dir = tempfile::Builder::new()
            .prefix("rds-iam-sidecar-pki-")
            .tempdir()
            .expect("create PKI temp dir");
        TestPki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            dir,
            ca_file: OnceLock::new(),
            files: AtomicU64::new(0),
        }
    }

    /// Issues a leaf certificate for `names` (DNS names and/or IP addresses), signed by the CA.
    /// Returns the chain (leaf only) and its PKCS#8 private key, ready for rustls.
    pub fn server_cert(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let (cert, key) = self.issue(names);
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// Like [`TestPki::server_cert`] but as PEM strings: (certificate, private key).
    pub fn server_cert_pem(&self, names: &[&str]) -> (String, String) {
        let (cert, key) = self.issue(names);
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf certificate and key for `names` to files that live as long as the
    /// `TestPki`: (certificate path, key path).
    pub fn server_cert_files(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert_pem, key_pem) = self.server_cert_pem(names);
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let cert_path = self.dir.path().join(format!("server-{n}.crt"));
        let key_path = self.dir.path().join(format!("server-{n}.key"));
        std::fs::write(&cert_path, cert_pem).expect("write server certificate file");
        std::fs::write(&key_path, key_pem).expect("write server key file");
        (cert_path, key_path)
    }

    /// Path of a PEM file holding the CA certificate (written on first call).
    pub fn ca_file(&self) -> PathBuf {
        self.ca_file
            .get_or_init(|| {
                let path = self.dir.path().join("ca.pem");
                std::fs::write(&path, &self.ca_pem).expect("write CA file");
                path
            })
            .clone()
    }

    /// A root store that trusts only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .expect("add test CA to root store");
        roots
    }

    /// A rustls client configuration (ring provider, TLS 1.2 + 1.3) trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(self.root_store())
        .with_no_client_auth();
        Arc::new(config)
    }

    fn issue(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("generate server key");
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("server certificate SANs");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server certificate");
        (cert, key)
    }
}
