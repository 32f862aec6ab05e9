//! TLS setup: loading `[tls]`'s certificate chain and private key (PEM) into a rustls
//! `ServerConfig` (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`), with errors that name the
//! configuration key. The handshake itself happens in `server.rs`; WebSocket connections over
//! TLS are driven by [`crate::transport::ws`]'s TLS transport.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Reads `cert_file` and `key_file` and builds the server's TLS configuration.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = load_certs(&tls.cert_file)?;
    let key = load_key(&tls.key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                "tls.key_file: the private key in {} does not match the certificate in tls.cert_file ({})",
                tls.key_file.display(),
                tls.cert_file.display()
            ),
            e => anyhow::anyhow!(
                "tls.key_file: unusable private key in {}: {e}",
                tls.key_file.display()
            ),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("tls.{key}: cannot read {}: {e}", path.display()))
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read("cert_file", path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("tls.cert_file: {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "tls.cert_file: no certificate (BEGIN CERTIFICATE) in {}",
            path.display()
        );
    }
    Ok(certs)
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read("key_file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "tls.key_file: no private key (PKCS#8, RSA or EC PEM) in {}",
            path.display()
        ),
        e => anyhow::anyhow!("tls.key_file: {} is not valid PEM: {e}", path.display()),
    })
}
