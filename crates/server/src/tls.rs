//! TLS for every listener and every client (docs/operations.md, "Security"): rustls through
//! tonic's `tls-ring` feature (ring rather than aws-lc: no cmake or nasm in the build). The files
//! come from `--tls-cert`, `--tls-key`, `--tls-ca` (PEM); `scripts/gen-certs.sh` makes a
//! deployment's set.
//!
//! - A server with `--tls-cert`/`--tls-key` serves TLS only. With `--tls-ca` it also asks every
//!   client for a certificate and verifies it against that CA; the certificate stays optional at
//!   the handshake (public RPCs serve clients without one), and the access layer
//!   ([`crate::access`]) requires it for internal RPCs and reads the caller's identity from it.
//! - A service's clients to its peers present the same certificate (service certificates are
//!   made for both server and client authentication) and trust only `--tls-ca`.
//! - A client command (`sagaflow saga`, `seed`, `demo`, `bench`) needs only `--tls-ca`.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// TLS flags (PEM files).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// This process's certificate chain, PEM (with `--tls-key`): the server serves TLS only, and
    /// the process presents it as its client certificate to its peers.
    #[arg(long, env = "SAGAFLOW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert`, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SAGAFLOW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The deployment's CA certificate, PEM: the only root trusted for peers' server
    /// certificates, and (on a server) the CA client certificates must be signed by (mTLS; the
    /// internal RPCs require one).
    #[arg(long, env = "SAGAFLOW_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// A TLS file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {source}")]
pub struct TlsError {
    flag: &'static str,
    path: String,
    #[source]
    source: std::io::Error,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        flag,
        path: path.display().to_string(),
        source,
    })
}

/// The TLS material of a process, loaded once.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    identity: Option<Identity>,
    ca: Option<Certificate>,
}

impl TlsArgs {
    /// Loads the files the flags name.
    ///
    /// # Errors
    /// [`TlsError`] naming the flag of a file that cannot be read. (A malformed PEM is found
    /// when the listener or channel is built.)
    pub fn load(&self) -> Result<Tls, TlsError> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read("--tls-cert", cert)?,
                read("--tls-key", key)?,
            )),
            _ => None,
        };
        let ca = match &self.tls_ca {
            Some(ca) => Some(Certificate::from_pem(read("--tls-ca", ca)?)),
            None => None,
        };
        Ok(Tls { identity, ca })
    }
}

impl Tls {
    /// From PEM text (tests, and callers holding the files' contents).
    pub fn from_pem(cert_and_key: Option<(&[u8], &[u8])>, ca: Option<&[u8]>) -> Self {
        Self {
            identity: cert_and_key.map(|(cert, key)| Identity::from_pem(cert, key)),
            ca: ca.map(Certificate::from_pem),
        }
    }

    /// Whether this process has a certificate (its listener serves TLS).
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether a CA is configured (client certificates are verified; peers are verified).
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// The listener's TLS settings, `None` without a certificate (plaintext): this certificate;
    /// with a CA, client certificates verified against it, optional at the handshake.
    pub fn server_config(&self) -> Option<ServerTlsConfig> {
        let identity = self.identity.clone()?;
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.ca {
            config = config.client_ca_root(ca.clone()).client_auth_optional(true);
        }
        Some(config)
    }

    /// The settings of a client channel to an `https://` peer: trust the CA (or the system's
    /// roots without one: none are compiled in, so a CA is needed), present the certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            config = config.ca_certificate(ca.clone());
        }
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        config
    }
}
