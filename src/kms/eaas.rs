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
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::Client;
use serde::Serialize;
use zeroize::Zeroizing;

use super::http::{self, EXCERPT_CHARS, chain, check_url, excerpt, read_limited};
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
/// Largest token file read.
const MAX_TOKEN_FILE_LEN: u64 = 4096;

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
        let client = http::client(
            https,
            options.ca_file.as_deref(),
            options.connect_timeout,
            options.request_timeout,
        )?;
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
        http::transport_error(url, attempts, self.request_timeout, e)
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

#[cfg(test)]
mod tests;
