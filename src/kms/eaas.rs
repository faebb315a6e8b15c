//! The EaaS backend: master keys held by an "Encryption as a Service" over
//! HTTP, with the wire API of the original Dropzone EaaS (docs/EAAS.md,
//! "API").
//!
//! | operation | request | success reply |
//! |---|---|---|
//! | [`EaasKms::ensure_master_key`] | `POST /gen/key/rsa` `{secret_path, secret_version}` | `{"Info": ...}` |
//! | [`KeyWrapper::wrap`] | `POST /key/encrypt/rsa` `{.., plaintext}` | `{"ciphertext": hex}` |
//! | [`KeyWrapper::unwrap`] | `POST /key/decrypt/rsa` `{.., ciphertext}` | `{"plaintext": hex}` |
//!
//! A data key travels as 64 lowercase hex characters (the original's
//! `plaintext` is a text string); the wrapped bytes recorded in key files are
//! the hex-decoded `ciphertext`. Any non-2xx reply, a body that is not a JSON
//! object, a 2xx reply carrying `{"Error": ...}` and a reply without the
//! expected field are failures; messages carry the HTTP status and a short
//! excerpt of the body, never key material (replies to decrypt requests are
//! never quoted).
//!
//! Transport: a blocking `reqwest` client on rustls with the `ring` provider,
//! HTTP/1.1, no redirects (a redirect could send a data key elsewhere), no
//! proxies from the environment. Connection failures are retried a bounded
//! number of times with backoff; HTTP errors and timeouts are not (the
//! service answered, or may still be working on the request). Optional
//! bearer token and optional TLS with a private CA. Copies of data keys that
//! this module makes (hex text, request and reply bodies) are zeroized; the
//! HTTP stack's own buffers are not under its control.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::blocking::Client;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use zeroize::Zeroizing;

use super::{KeyWrapper, KmsError, MasterKeyRef, WrapContext};
use crate::sync::lock;

pub mod reply;

use reply::{MAX_REPLY_LEN, Op, Reply};

/// The backend name recorded in key files.
pub const BACKEND: &str = "eaas";
/// Time allowed to establish a connection (TCP and TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole request. RSA-4096 decryption in a SoftHSM token
/// takes tens of milliseconds; 15 s covers a busy service, and a login
/// waiting longer is better refused.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Pauses before the second and third attempt when the service cannot be
/// connected to: three tries within about half a second ride out a restart
/// of the service without holding a login for long.
pub const DEFAULT_RETRY_DELAYS: [Duration; 2] =
    [Duration::from_millis(100), Duration::from_millis(400)];
/// Largest wrapped key accepted (the key file format's own limit).
const MAX_WRAPPED_LEN: usize = 8 * 1024;
/// Longest body excerpt in an error message, in characters.
const EXCERPT_CHARS: usize = 200;
/// Largest token file read.
const MAX_TOKEN_FILE_LEN: u64 = 4096;
/// Largest CA file read.
const MAX_CA_FILE_LEN: u64 = 1024 * 1024;

/// How to reach the service; [`EaasOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct EaasOptions {
    /// Base URL, `http://` or `https://`, without credentials, query or
    /// fragment (e.g. `http://eaas:8443`).
    pub url: String,
    /// The RSA key pair at the service.
    pub secret_path: String,
    /// The version new data keys are wrapped under (decimal digits).
    pub secret_version: String,
    /// A file holding the bearer token sent as `Authorization: Bearer ...`.
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificates that may sign the service's
    /// certificate (`https` only); without it, the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request.
    pub request_timeout: Duration,
    /// Pauses between attempts after a connection failure; one attempt
    /// more than pauses.
    pub retry_delays: Vec<Duration>,
}

impl EaasOptions {
    /// Options with the default timeouts and retries, no token, no CA file.
    pub fn new(url: String, secret_path: String, secret_version: String) -> Self {
        EaasOptions {
            url,
            secret_path,
            secret_version,
            token_file: None,
            ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
        }
    }
}

/// A client of the EaaS wire API.
pub struct EaasKms {
    client: Client,
    /// The base URL without a trailing slash.
    base: String,
    current: MasterKeyRef,
    /// `Bearer <token>`, if a token is configured.
    authorization: Option<Zeroizing<String>>,
    request_timeout: Duration,
    retry_delays: Vec<Duration>,
    /// Master keys this process has had the service generate (or found):
    /// the first wrap under a key asks for it first, so that a service that
    /// was down at start-up still gets the configured key created.
    ensured: Mutex<HashSet<MasterKeyRef>>,
}

impl fmt::Debug for EaasKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EaasKms")
            .field("url", &self.base)
            .field("current", &self.current)
            .field("token", &self.authorization.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Request<'a> {
    secret_path: &'a str,
    secret_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext: Option<&'a str>,
}

impl EaasKms {
    /// A client for the service at `options.url`. Reads the token and CA
    /// files now. Talks to no one yet (see [`EaasKms::ensure_master_key`]).
    ///
    /// Call it outside async code: the blocking HTTP client starts (and on
    /// drop, stops) its own runtime thread.
    pub fn new(options: EaasOptions) -> Result<Self, KmsError> {
        let base = check_url(&options.url)?;
        check_secret(&options.secret_path, &options.secret_version)?;
        let https = base.starts_with("https://");
        if options.ca_file.is_some() && !https {
            return Err(KmsError::Misconfigured(format!(
                "a CA file is configured but the key service URL {base} is not https"
            )));
        }
        let authorization = match &options.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let tls = tls_config(https, options.ca_file.as_deref())?;
        let client = Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(https)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .user_agent(concat!("dropzone/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                KmsError::Misconfigured(format!("cannot build the HTTP client: {}", chain(&e)))
            })?;
        Ok(EaasKms {
            client,
            base,
            current: MasterKeyRef {
                secret_path: options.secret_path,
                secret_version: options.secret_version,
            },
            authorization,
            request_timeout: options.request_timeout,
            retry_delays: options.retry_delays,
            ensured: Mutex::new(HashSet::new()),
        })
    }

    /// The service's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// One request: retried while the connection cannot be made, then the
    /// reply checked for a 2xx status and parsed.
    fn call(&self, op: Op, body: &[u8]) -> Result<Reply, KmsError> {
        let url = format!("{}{}", self.base, op.path());
        let mut attempt = 0;
        let response = loop {
            let mut request = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "application/json")
                .body(body.to_vec());
            if let Some(auth) = &self.authorization {
                let mut value = reqwest::header::HeaderValue::from_str(auth).map_err(|_| {
                    KmsError::Misconfigured("the token is not a valid header value".into())
                })?;
                value.set_sensitive(true);
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
            match request.send() {
                Ok(response) => break response,
                Err(e)
                    if e.is_connect() && !e.is_timeout() && attempt < self.retry_delays.len() =>
                {
                    tracing::debug!(url, attempt, error = %chain(&e), "key service connection failed; retrying");
                    std::thread::sleep(self.retry_delays[attempt]);
                    attempt += 1;
                }
                Err(e) => return Err(self.transport_error(&url, attempt + 1, &e)),
            }
        };
        let status = response.status();
        let mut body = Zeroizing::new(Vec::new());
        response
            .take(MAX_REPLY_LEN + 1)
            .read_to_end(&mut body)
            .map_err(|e| {
                KmsError::Unavailable(format!(
                    "reading the reply of {url} (HTTP {}) failed: {}",
                    reply::status_text(status),
                    chain(&e)
                ))
            })?;
        reply::parse(op, &url, status.as_u16(), &body)
    }

    fn transport_error(&self, url: &str, attempts: usize, e: &reqwest::Error) -> KmsError {
        if e.is_timeout() {
            let limit = if e.is_connect() {
                "while connecting".to_owned()
            } else {
                format!("within {:?}", self.request_timeout)
            };
            KmsError::Unavailable(format!("{url} did not answer {limit}"))
        } else if e.is_connect() {
            KmsError::Unavailable(format!(
                "cannot connect to {url} ({attempts} attempt{}): {}",
                if attempts == 1 { "" } else { "s" },
                chain(e)
            ))
        } else {
            KmsError::Unavailable(format!("request to {url} failed: {}", chain(e)))
        }
    }

    fn body(
        under: &MasterKeyRef,
        plaintext: Option<&str>,
        ciphertext: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let request = Request {
            secret_path: &under.secret_path,
            secret_version: &under.secret_version,
            plaintext,
            ciphertext,
        };
        let mut body = Zeroizing::new(Vec::with_capacity(256));
        serde_json::to_writer(&mut *body, &request)
            .map_err(|e| KmsError::Refused(format!("encoding the request: {e}")))?;
        Ok(body)
    }
}

impl KeyWrapper for EaasKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn current(&self) -> MasterKeyRef {
        self.current.clone()
    }

    /// Asks the service to generate the key (`/gen/key/rsa`); an existing
    /// key is success ("Key was exsits").
    fn ensure_master_key(&self, under: &MasterKeyRef) -> Result<(), KmsError> {
        check_secret(&under.secret_path, &under.secret_version)?;
        let body = Self::body(under, None, None)?;
        let reply = self.call(Op::Generate, &body)?;
        tracing::info!(url = %self.base, master = %under, info = %reply.info(), "key service master key ready");
        lock(&self.ensured).insert(under.clone());
        Ok(())
    }

    /// The EaaS API has no field for `_ctx`; key files carry their user
    /// instead.
    fn wrap(
        &self,
        key: &[u8; 32],
        under: &MasterKeyRef,
        _ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        check_secret(&under.secret_path, &under.secret_version)?;
        let known = lock(&self.ensured).contains(under);
        if !known {
            self.ensure_master_key(under)?;
        }
        let plaintext = Zeroizing::new(hex::encode(key));
        let body = Self::body(under, Some(&plaintext), None)?;
        self.call(Op::Encrypt, &body)?
            .wrapped_key(&format!("{}{}", self.base, Op::Encrypt.path()))
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
        under: &MasterKeyRef,
        _ctx: &WrapContext,
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        check_secret(&under.secret_path, &under.secret_version)?;
        let ciphertext = hex::encode(wrapped);
        let body = Self::body(under, None, Some(&ciphertext))?;
        self.call(Op::Decrypt, &body)?
            .data_key(&format!("{}{}", self.base, Op::Decrypt.path()))
    }
}

/// Checks the base URL and returns it without a trailing slash.
fn check_url(url: &str) -> Result<String, KmsError> {
    // A URL with credentials is not repeated: they would end up in logs.
    let shown = if url.contains('@') {
        "(not shown)"
    } else {
        url
    };
    let bad = |why: &str| KmsError::Misconfigured(format!("key service URL {shown:?}: {why}"));
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("use http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Credentials in a URL end up in logs and error messages.
        return Err(bad(
            "credentials in the URL are not supported; use token_file",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// The service accepts any text; we insist on something that is safe in
/// logs, file names and key files.
fn check_secret(path: &str, version: &str) -> Result<(), KmsError> {
    let path_ok = !path.is_empty()
        && path.len() <= 128
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b));
    if !path_ok {
        return Err(KmsError::Misconfigured(format!(
            "secret path {:?}: use 1-128 characters among letters, digits, / _ - .",
            path.chars().take(40).collect::<String>()
        )));
    }
    super::version::check(version)
}

/// Reads a bearer token: the file's first line, trimmed.
fn read_token(path: &Path) -> Result<Zeroizing<String>, KmsError> {
    let bytes = Zeroizing::new(read_limited(path, MAX_TOKEN_FILE_LEN, "token file")?);
    let bad = |why: &str| KmsError::Misconfigured(format!("token file {}: {why}", path.display()));
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8"))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(bad("empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the token must be printable ASCII without spaces"));
    }
    Ok(Zeroizing::new(format!("Bearer {token}")))
}

fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, KmsError> {
    let file = std::fs::File::open(path).map_err(|e| {
        KmsError::Misconfigured(format!("cannot read the {what} {}: {e}", path.display()))
    })?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| {
        KmsError::Misconfigured(format!("cannot read the {what} {}: {e}", path.display()))
    })?;
    if bytes.len() as u64 > limit {
        return Err(KmsError::Misconfigured(format!(
            "the {what} {} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The TLS settings: ring as the provider; the CA file's certificates, or
/// the system's roots, as trust anchors. For a plain `http` URL TLS is never
/// used, and no roots are loaded.
fn tls_config(https: bool, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, KmsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| KmsError::Misconfigured(format!("TLS: {e}")))?;
    let config = match (https, ca_file) {
        (true, Some(path)) => {
            let pem = read_limited(path, MAX_CA_FILE_LEN, "CA file")?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    KmsError::Misconfigured(format!("CA file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    KmsError::Misconfigured(format!("CA file {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(KmsError::Misconfigured(format!(
                    "CA file {} holds no PEM certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (true, None) => {
            let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(|e| {
                KmsError::Misconfigured(format!("TLS: the system's certificate roots: {e}"))
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
fn chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests;
