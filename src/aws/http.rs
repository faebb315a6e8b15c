//! The blocking `reqwest` client on rustls with the `ring` provider that
//! every HTTP client of this crate uses (the key services and S3), reading
//! small files such as a CA bundle, and error texts that stay one short
//! line.
//!
//! The client is HTTP/1.1 only, follows no redirects (a redirect could send
//! a data key or a file elsewhere) and takes no proxy from the environment.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::Client;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::AwsError;

/// Longest body excerpt in an error message, in characters.
pub(crate) const EXCERPT_CHARS: usize = 200;
/// Largest CA file read.
const MAX_CA_FILE_LEN: u64 = 1024 * 1024;

/// The blocking client: TLS from [`tls_config`], `https_only` for an
/// `https` service, no redirects, no proxies, HTTP/1.1, the given timeouts.
///
/// Call it outside async code: the blocking client starts (and on drop,
/// stops) its own runtime thread.
pub(crate) fn client(
    https: bool,
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Client, AwsError> {
    let tls = tls_config(https, ca_file)?;
    Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(https)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .http1_only()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .user_agent(concat!("dropzone/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            AwsError::Misconfigured(format!("cannot build the HTTP client: {}", chain(&e)))
        })
}

/// Reads a small file (a token, a CA bundle) of at most `limit` bytes;
/// `what` names it in errors.
pub(crate) fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, AwsError> {
    let file = std::fs::File::open(path).map_err(|e| {
        AwsError::Misconfigured(format!("cannot read the {what} {}: {e}", path.display()))
    })?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| {
        AwsError::Misconfigured(format!("cannot read the {what} {}: {e}", path.display()))
    })?;
    if bytes.len() as u64 > limit {
        return Err(AwsError::Misconfigured(format!(
            "the {what} {} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The TLS settings: ring as the provider; the CA file's certificates, or
/// the system's roots, as trust anchors. For a plain `http` URL TLS is never
/// used, and no roots are loaded.
fn tls_config(https: bool, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, AwsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AwsError::Misconfigured(format!("TLS: {e}")))?;
    let config = match (https, ca_file) {
        (true, Some(path)) => {
            let pem = read_limited(path, MAX_CA_FILE_LEN, "CA file")?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    AwsError::Misconfigured(format!("CA file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    AwsError::Misconfigured(format!("CA file {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(AwsError::Misconfigured(format!(
                    "CA file {} holds no PEM certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (true, None) => {
            let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(|e| {
                AwsError::Misconfigured(format!("TLS: the system's certificate roots: {e}"))
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        (false, _) => builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    Ok(config)
}

/// At most [`EXCERPT_CHARS`] characters of `body`, as text, with control
/// characters removed (line breaks and tabs become single spaces).
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut cleaned = String::new();
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' | ' ' => {
                if !cleaned.is_empty() && !cleaned.ends_with(' ') {
                    cleaned.push(' ');
                }
            }
            c if c.is_control() => {}
            c => cleaned.push(c),
        }
    }
    let cleaned = cleaned.trim_end();
    if cleaned.is_empty() {
        return "(empty body)".to_owned();
    }
    if cleaned.chars().count() <= EXCERPT_CHARS {
        return cleaned.to_owned();
    }
    let mut short: String = cleaned.chars().take(EXCERPT_CHARS - 3).collect();
    short.push_str("...");
    short
}

/// An error and its causes, as "a: b: c" (reqwest's own message alone is
/// "error sending request").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    excerpt(text.as_bytes())
}

/// Checks a service's base URL: `http` or `https`, a host, and no
/// credentials, path, query or fragment. Returns the parsed URL and the
/// `Host` header for it (with the port unless it is the scheme's default,
/// as reqwest sends it), or why it is refused.
pub(crate) fn check_endpoint(url: &str) -> Result<(reqwest::Url, String), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("use http:// or https://".into());
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("no host")?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not supported".into());
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("no path, query or fragment allowed".into());
    }
    // Url::port() is None for the scheme's default port, which is when
    // reqwest leaves it out of the Host header too.
    let host = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok((parsed, host))
}
