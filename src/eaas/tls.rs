//! Optional HTTPS: a rustls server configuration (ring provider, TLS 1.2
//! and 1.3, HTTP/1.1 by ALPN) from the PEM files named in `[tls]`.

use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::TlsFiles;

/// Builds the server configuration. Errors name the configuration line of
/// the file at fault.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file.path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "{}: cannot read a PEM certificate chain: {e}",
                files.cert_file
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", files.cert_file));
    }
    // The error may not describe the key's contents; it names only the kind.
    let key = PrivateKeyDer::from_pem_file(&files.key_file.path).map_err(|e| {
        format!(
            "{}: cannot read a PEM private key: {}",
            files.key_file,
            pem_error_kind(&e)
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} and {}: the certificate and key cannot be used together: {e}",
                files.cert_file, files.key_file
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error_kind(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PRIVATE KEY in the file".into(),
        _ => "malformed PEM".into(),
    }
}
