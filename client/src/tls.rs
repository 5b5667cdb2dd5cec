//! TLS settings of a connection to the coordinator, shared by the client and by the
//! coordinator's own commands that call it (`job ...`, `health`).
//!
//! [`TlsFiles`] names PEM files as the flags gave them; [`TlsFiles::load`] reads them into a
//! [`ClientTls`], naming the flag and file on any error.

use std::path::{Path, PathBuf};

use crate::error::{ClientError, Result};

/// The PEM files of a TLS connection: the CA that signed the coordinator's certificate and,
/// for mutual TLS, this side's certificate and key.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFiles {
    /// CA certificate (PEM) that signed the coordinator's certificate; turns TLS on.
    #[arg(long, env = "SHOAL_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// This side's certificate (PEM), for a coordinator that requires mutual TLS.
    #[arg(long, env = "SHOAL_CERT", value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The key (PEM) of --cert.
    #[arg(long, env = "SHOAL_KEY", value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name to expect in the coordinator's certificate when it differs from the address's
    /// host (e.g. connecting by IP to a certificate made for `coordinator`).
    #[arg(long, env = "SHOAL_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
}

/// TLS settings read from [`TlsFiles`].
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca_pem: String,
    /// Certificate and key, PEM.
    pub identity: Option<(String, String)>,
    pub domain: Option<String>,
}

impl TlsFiles {
    /// `None` when no CA is given (plaintext); a certificate without a CA is an error.
    pub fn load(&self) -> Result<Option<ClientTls>> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() {
                return Err(ClientError::Config(
                    "--cert needs --ca (the CA of the coordinator's certificate)".into(),
                ));
            }
            return Ok(None);
        };
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read_pem(c, "--cert")?, read_pem(k, "--key")?)),
            (None, None) => None,
            _ => return Err(ClientError::Config("--cert and --key go together".into())),
        };
        Ok(Some(ClientTls {
            ca_pem: read_pem(ca, "--ca")?,
            identity,
            domain: self.tls_domain.clone(),
        }))
    }
}

fn read_pem(path: &Path, flag: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::Config(format!("{flag} {}: cannot read it: {e}", path.display()))
    })?;
    if !text.contains("-----BEGIN ") {
        return Err(ClientError::Config(format!(
            "{flag} {}: not a PEM file (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(text)
}

impl ClientTls {
    pub(crate) fn config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// Reads a token from a file: its first line that is neither blank nor a `#` comment.
pub fn read_token_file(path: &Path, flag: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::Config(format!("{flag} {}: cannot read it: {e}", path.display()))
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .ok_or_else(|| ClientError::Config(format!("{flag} {}: holds no token", path.display())))
}
