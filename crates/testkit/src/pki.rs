//! A throwaway PKI made at test time (rcgen, ring): a CA, certificates for services and other
//! callers signed by it, written as PEM files under a temp dir for the `--tls-*` flags. The
//! shape is the one `scripts/gen-certs.sh` makes for a deployment (docs/operations.md,
//! "Security"): a certificate names its identity as a DNS SAN (the service's name) and is valid
//! for `localhost` and 127.0.0.1, for server and client authentication alike.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its key, PEM, and where they were written.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
}

/// A CA and the files of what it signed.
#[derive(Debug)]
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate file.
    pub ca_file: PathBuf,
}

impl TestPki {
    /// A fresh CA named `name`.
    ///
    /// # Panics
    /// When a key cannot be made or a file written.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_pem = ca.pem();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("writing ca.pem");
        Self {
            ca,
            dir,
            ca_pem,
            ca_file,
        }
    }

    /// A certificate for `identity` (DNS SAN and subject CN), also valid for `localhost` and
    /// 127.0.0.1, for server and client authentication, written as `<identity>.pem` and
    /// `<identity>.key`.
    ///
    /// # Panics
    /// When a key cannot be made or a file written.
    pub fn leaf(&self, identity: &str) -> Leaf {
        let mut params = CertificateParams::new(vec![identity.to_owned(), "localhost".to_owned()])
            .expect("leaf params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        let cert_file = self.dir.path().join(format!("{identity}.pem"));
        let key_file = self.dir.path().join(format!("{identity}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("writing the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("writing the key");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert_file,
            key: key_file,
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
