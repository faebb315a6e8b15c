//! The Vault backend: data keys wrapped by a key of the Transit secrets
//! engine of HashiCorp Vault or OpenBao.
//!
//! | operation | request |
//! |---|---|
//! | [`VaultKms::ensure_master_key`] | `GET /v1/MOUNT/keys/KEY`; if missing, `POST` there `{type: "aes256-gcm96", derived: true}` |
//! | [`KeyWrapper::wrap`] | `POST /v1/MOUNT/encrypt/KEY {plaintext, context, key_version}` |
//! | [`KeyWrapper::unwrap`] | `POST /v1/MOUNT/decrypt/KEY {ciphertext, context}` |
//! | [`KeyWrapper::rewrap`] | `POST /v1/MOUNT/rewrap/KEY {ciphertext, context, key_version}` |
//! | [`KeyWrapper::rotate_master_key`] | `POST /v1/MOUNT/keys/KEY/rotate` |
//!
//! The key must be *derived*: every operation gives the user's name (base64)
//! as the context, so Vault derives a key per user and a wrapped key copied
//! into another user's key file does not decrypt there. The wrapped bytes
//! recorded in key files are Vault's ciphertext text, `vault:vN:<base64>`;
//! the master key reference is the key's name and `N`. New keys are wrapped
//! under Vault's latest version ([`KeyWrapper::wrap_new`]), so a rotation
//! made at Vault by another process is followed without a restart.
//!
//! Re-wrapping (`dropzone keys rotate`) uses Vault's `rewrap`: the data key
//! does not leave Vault for it.
//!
//! Tokens: see [`auth`]. Transport: the shared client of
//! `kms::http` (rustls on ring, no redirects, no proxies); failed
//! connections are retried a bounded number of times. Errors name the URL,
//! the HTTP status and Vault's `errors`, never a token or key material.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use zeroize::Zeroizing;

use super::http::{self, check_url};
use super::{KeyWrapper, KmsError, MasterKeyRef, WrapContext};
use crate::sync::lock;

pub mod auth;
mod names;
mod reply;
mod transport;

use auth::Auth;
pub use auth::Credentials;
use names::check_key_name;
pub(crate) use names::check_path_segments;
use transport::{Method, Raw, Transport};

/// The backend name recorded in key files.
pub const BACKEND: &str = "vault";
/// The default Transit mount.
pub const DEFAULT_MOUNT: &str = "transit";
/// The default AppRole mount.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";
/// Time allowed to establish a connection (TCP and TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole request: Transit answers in milliseconds; a
/// login waiting longer is better refused.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Pauses before the second and third attempt when Vault cannot be
/// connected to (rides out a restart without holding a login for long).
pub const DEFAULT_RETRY_DELAYS: [Duration; 2] =
    [Duration::from_millis(100), Duration::from_millis(400)];
/// The type of the key created when it is missing.
const KEY_TYPE: &str = "aes256-gcm96";
/// What [`KeyWrapper::current`] names as the version before Vault has said
/// which is the latest (no call has succeeded yet).
const LATEST: &str = "latest";
/// Largest ciphertext accepted from a key file or from Vault.
const MAX_CIPHERTEXT_LEN: usize = 4096;

/// How to reach Vault; [`VaultOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// Vault's address, `http://` or `https://` (e.g. `https://vault:8200`).
    pub address: String,
    /// Where the Transit engine is mounted (default `transit`).
    pub mount: String,
    /// The Transit key's name.
    pub key_name: String,
    /// How to get a token.
    pub credentials: Credentials,
    /// Sent as `X-Vault-Namespace` (Vault Enterprise, OpenBao namespaces).
    pub namespace: Option<String>,
    /// PEM file of the CA certificates that may sign Vault's certificate
    /// (`https` only); without it, the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request.
    pub request_timeout: Duration,
    /// Pauses between attempts after a connection failure.
    pub retry_delays: Vec<Duration>,
}

impl VaultOptions {
    /// Options with the default mount, timeouts and retries, no namespace
    /// and no CA file.
    pub fn new(address: String, key_name: String, credentials: Credentials) -> Self {
        VaultOptions {
            address,
            mount: DEFAULT_MOUNT.to_owned(),
            key_name,
            credentials,
            namespace: None,
            ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
        }
    }
}

/// A Transit client.
pub struct VaultKms {
    transport: Transport,
    auth: Auth,
    mount: String,
    key_name: String,
    /// The latest key version Vault has shown us; `None` before the first
    /// successful call.
    latest: Mutex<Option<u64>>,
}

impl fmt::Debug for VaultKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKms")
            .field("address", &self.transport.base())
            .field("mount", &self.mount)
            .field("key_name", &self.key_name)
            .field("auth", &self.auth.kind())
            .finish_non_exhaustive()
    }
}

/// The body of encrypt, decrypt and rewrap requests.
#[derive(Serialize)]
struct Request<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext: Option<&'a str>,
    context: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_version: Option<u64>,
}

impl VaultKms {
    /// A client for the Transit key `options.key_name`. Reads the credential
    /// and CA files now; talks to no one yet (see
    /// [`VaultKms::ensure_master_key`]).
    ///
    /// Call it outside async code: the blocking HTTP client starts (and on
    /// drop, stops) its own runtime thread.
    pub fn new(options: VaultOptions) -> Result<Self, KmsError> {
        let base = check_url(&options.address)?;
        check_path_segments("mount", &options.mount)?;
        check_key_name(&options.key_name)?;
        let https = base.starts_with("https://");
        if options.ca_file.is_some() && !https {
            return Err(KmsError::Misconfigured(format!(
                "a CA file is configured but the Vault address {base} is not https"
            )));
        }
        let client = http::client(
            https,
            options.ca_file.as_deref(),
            options.connect_timeout,
            options.request_timeout,
        )?;
        let transport = Transport::new(
            client,
            base,
            options.namespace.as_deref(),
            options.request_timeout,
            options.retry_delays,
        )?;
        Ok(VaultKms {
            transport,
            auth: Auth::new(options.credentials)?,
            mount: options.mount,
            key_name: options.key_name,
            latest: Mutex::new(None),
        })
    }

    /// Vault's address.
    pub fn address(&self) -> &str {
        self.transport.base()
    }

    /// One authenticated request; after a 403 the token is renewed (a new
    /// login, or the token file read again) and the request sent once more.
    fn call(&self, method: Method, path: &str, body: Option<&[u8]>) -> Result<Raw, KmsError> {
        let token = self.auth.token(&self.transport)?;
        let mut raw = self.transport.send(method, path, Some(&token), body)?;
        if reply::is_forbidden(raw.status) {
            tracing::info!(
                url = %self.transport.url(path),
                auth = self.auth.kind(),
                "Vault refused the token; logging in again"
            );
            self.auth.refused(&token);
            let token = self.auth.token(&self.transport)?;
            raw = self.transport.send(method, path, Some(&token), body)?;
        }
        if !reply::is_success(raw.status) {
            return Err(reply::failure(
                &self.transport.url(path),
                raw.status,
                &raw.body,
            ));
        }
        Ok(raw)
    }

    /// `/v1/MOUNT/OP/KEY`.
    fn path(&self, op: &str, key_name: &str) -> String {
        format!("/v1/{}/{op}/{key_name}", self.mount)
    }

    /// The key's settings, or `None` if it does not exist.
    fn key_info(&self, key_name: &str) -> Result<Option<reply::KeyInfo>, KmsError> {
        let path = self.path("keys", key_name);
        match self.call(Method::Get, &path, None) {
            Ok(raw) => reply::data(&self.transport.url(&path), &raw.body, true).map(Some),
            Err(KmsError::Refused(m)) if m.contains("HTTP 404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the key: AES-256-GCM, derived (the user as the context).
    fn create_key(&self, key_name: &str) -> Result<(), KmsError> {
        let path = self.path("keys", key_name);
        let body = format!(r#"{{"type":"{KEY_TYPE}","derived":true}}"#);
        match self.call(Method::Post, &path, Some(body.as_bytes())) {
            Ok(_) => {
                tracing::info!(url = %self.transport.url(&path), "created the Transit key");
                Ok(())
            }
            Err(KmsError::Refused(m)) => Err(KmsError::Misconfigured(format!(
                "Transit key {key_name:?} does not exist at mount {:?} and could not be created \
                 ({m}); create it with `bao write -f {}/keys/{key_name} type={KEY_TYPE} \
                 derived=true` (or `vault write ...`), or give this token's policy \
                 \"create\" on {}/keys/{key_name}",
                self.mount, self.mount, self.mount
            ))),
            Err(e) => Err(e),
        }
    }

    /// Reads the key (creating it if `create`), checks it is usable, and
    /// remembers its latest version.
    fn checked_key(&self, key_name: &str, create: bool) -> Result<reply::KeyInfo, KmsError> {
        let info = match self.key_info(key_name)? {
            Some(info) => info,
            None if create => {
                self.create_key(key_name)?;
                self.key_info(key_name)?.ok_or_else(|| {
                    KmsError::Unavailable(format!(
                        "Transit key {key_name:?} vanished right after it was created"
                    ))
                })?
            }
            None => {
                return Err(KmsError::Refused(format!(
                    "Vault has no Transit key {key_name:?} at mount {:?}",
                    self.mount
                )));
            }
        };
        if !info.derived {
            return Err(KmsError::Misconfigured(format!(
                "Transit key {key_name:?} is not derived (created without derived=true): it \
                 cannot bind a wrapped key to its user. Create a new key with \
                 `type={KEY_TYPE} derived=true` and set key_name to it"
            )));
        }
        if !info.supports_encryption {
            return Err(KmsError::Misconfigured(format!(
                "Transit key {key_name:?} is of type {:?}, which cannot encrypt",
                info.key_type
            )));
        }
        if key_name == self.key_name {
            self.saw_version(info.latest_version);
        }
        Ok(info)
    }

    fn saw_version(&self, version: u64) {
        let mut latest = lock(&self.latest);
        if latest.is_none_or(|v| v < version) {
            *latest = Some(version);
        }
    }

    /// The key name and version of `under`, checked.
    fn key_version(under: &MasterKeyRef) -> Result<(&str, u64), KmsError> {
        check_key_name(&under.secret_path)?;
        if under.secret_version == LATEST {
            return Err(KmsError::Unavailable(format!(
                "the latest version of Transit key {:?} is not known: Vault has not answered yet",
                under.secret_path
            )));
        }
        super::version::check(&under.secret_version)?;
        let version = under
            .secret_version
            .parse::<u64>()
            .map_err(|_| KmsError::InvalidVersion(under.secret_version.clone()))?;
        if version == 0 {
            return Err(KmsError::InvalidVersion(under.secret_version.clone()));
        }
        Ok((&under.secret_path, version))
    }

    /// Encrypts `key` for `ctx` under `key_name`, at `version` or (`None`)
    /// the latest; returns Vault's ciphertext text and its version.
    fn encrypt(
        &self,
        key: &[u8; 32],
        key_name: &str,
        version: Option<u64>,
        ctx: &WrapContext,
    ) -> Result<(Vec<u8>, u64), KmsError> {
        let plaintext = Zeroizing::new(BASE64.encode(key));
        let context = BASE64.encode(ctx.as_bytes());
        let body = Zeroizing::new(self.body(&Request {
            plaintext: Some(&plaintext),
            ciphertext: None,
            context: &context,
            key_version: version,
        })?);
        let path = self.path("encrypt", key_name);
        let raw = self.call(Method::Post, &path, Some(&body))?;
        self.ciphertext(&path, &raw, version)
    }

    /// The ciphertext of an encrypt or rewrap reply, checked to name
    /// `expected` (when given) as its version.
    fn ciphertext(
        &self,
        path: &str,
        raw: &Raw,
        expected: Option<u64>,
    ) -> Result<(Vec<u8>, u64), KmsError> {
        let url = self.transport.url(path);
        let reply: reply::Ciphertext = reply::data(&url, &raw.body, true)?;
        let bytes = reply.ciphertext.into_bytes();
        let version = reply::ciphertext_version(&bytes)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| bytes.len() <= MAX_CIPHERTEXT_LEN)
            .ok_or_else(|| {
                KmsError::Refused(format!(
                    "{url} answered with a ciphertext that is not vault:vN:<base64>"
                ))
            })?;
        if expected.is_some_and(|v| v != version) {
            return Err(KmsError::Refused(format!(
                "{url} wrapped under version {version}, not the requested {}",
                expected.unwrap_or_default()
            )));
        }
        Ok((bytes, version))
    }

    /// The wrapped key as the ciphertext text, checked to be one of
    /// version `version`.
    fn wrapped_text<'a>(&self, wrapped: &'a [u8], version: u64) -> Result<&'a str, KmsError> {
        let named = reply::ciphertext_version(wrapped)
            .filter(|_| wrapped.len() <= MAX_CIPHERTEXT_LEN)
            .ok_or_else(|| {
                KmsError::Refused(
                    "the wrapped key is not a Vault Transit ciphertext (vault:vN:<base64>)".into(),
                )
            })?;
        if named != version.to_string() {
            return Err(KmsError::Refused(format!(
                "the key file records master key version {version}, but its wrapped key is \
                 vault:v{named}"
            )));
        }
        // ciphertext_version accepted only ASCII.
        std::str::from_utf8(wrapped).map_err(|_| KmsError::Refused("not ASCII".into()))
    }

    fn body(&self, request: &Request<'_>) -> Result<Vec<u8>, KmsError> {
        serde_json::to_vec(request)
            .map_err(|e| KmsError::Refused(format!("encoding the request: {e}")))
    }

    /// Turns a refusal of a decrypt or rewrap into one that says what it
    /// most likely means.
    fn explain_refusal(e: KmsError, under: &MasterKeyRef, ctx: &WrapContext) -> KmsError {
        match e {
            KmsError::Refused(m) if m.contains("HTTP 400") => KmsError::Refused(format!(
                "the wrapped key does not unwrap under Vault key {under} for user {} \
                 (wrapped for another user, or corrupt): {m}",
                ctx.user()
            )),
            other => other,
        }
    }
}

impl KeyWrapper for VaultKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// The key and the latest version Vault has shown this process. Before
    /// it has shown any (it was down at start-up), asks it now; if it still
    /// does not answer, the version is `latest`, which wrapping refuses as
    /// unavailable.
    fn current(&self) -> MasterKeyRef {
        let known = *lock(&self.latest);
        let latest = known.or_else(|| match self.checked_key(&self.key_name, false) {
            Ok(info) => Some(info.latest_version),
            Err(e) => {
                tracing::debug!(error = %e, "the latest Transit key version is not known yet");
                None
            }
        });
        MasterKeyRef {
            secret_path: self.key_name.clone(),
            secret_version: latest.map_or_else(|| LATEST.to_owned(), |v| v.to_string()),
        }
    }

    /// Creates the configured key if it is missing (derived AES-256-GCM);
    /// refuses a key that is not derived. A version of `under` (other than
    /// `latest`) must exist and still decrypt.
    fn ensure_master_key(&self, under: &MasterKeyRef) -> Result<(), KmsError> {
        check_key_name(&under.secret_path)?;
        let create = under.secret_path == self.key_name;
        let info = self.checked_key(&under.secret_path, create)?;
        if under.secret_version == LATEST {
            return Ok(());
        }
        let (name, version) = Self::key_version(under)?;
        if version > info.latest_version || version < info.min_decryption_version {
            return Err(KmsError::Refused(format!(
                "Transit key {name:?} has versions {} to {}; there is no usable version {version} \
                 (a new version is made by rotating: `dropzone keys rotate` without \
                 --secret-version)",
                info.min_decryption_version.max(1),
                info.latest_version
            )));
        }
        Ok(())
    }

    /// Vault binds the wrapping to `ctx` (the key is derived).
    fn wrap(
        &self,
        key: &[u8; 32],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        let (name, version) = Self::key_version(under)?;
        self.encrypt(key, name, Some(version), ctx).map(|(w, _)| w)
    }

    /// Wraps under Vault's latest version of the configured key and reports
    /// which version that was. If Vault was down at start-up, the key is
    /// checked (and created if missing) first, as it would have been then.
    fn wrap_new(
        &self,
        key: &[u8; 32],
        ctx: &WrapContext,
    ) -> Result<(Vec<u8>, MasterKeyRef), KmsError> {
        let checked = lock(&self.latest).is_some();
        if !checked {
            self.checked_key(&self.key_name, true)?;
        }
        let (wrapped, version) = self.encrypt(key, &self.key_name, None, ctx)?;
        self.saw_version(version);
        let master = MasterKeyRef {
            secret_path: self.key_name.clone(),
            secret_version: version.to_string(),
        };
        Ok((wrapped, master))
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let (name, version) = Self::key_version(under)?;
        let ciphertext = self.wrapped_text(wrapped, version)?;
        let context = BASE64.encode(ctx.as_bytes());
        let body = self.body(&Request {
            plaintext: None,
            ciphertext: Some(ciphertext),
            context: &context,
            key_version: None,
        })?;
        let path = self.path("decrypt", name);
        let raw = self
            .call(Method::Post, &path, Some(&body))
            .map_err(|e| Self::explain_refusal(e, under, ctx))?;
        let url = self.transport.url(&path);
        let reply: reply::Plaintext = reply::data(&url, &raw.body, false)?;
        let not_a_key = || {
            KmsError::Refused(format!(
                "{url} gave back something that is not a 32-byte data key"
            ))
        };
        let bytes = Zeroizing::new(
            BASE64
                .decode(reply.plaintext.as_bytes())
                .map_err(|_| not_a_key())?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(not_a_key());
        }
        key.copy_from_slice(&bytes);
        Ok(key)
    }

    /// `rewrap` at Vault when both versions are of one key: the data key
    /// never leaves Vault. Across keys, unwraps and wraps here.
    fn rewrap(
        &self,
        wrapped: &[u8],
        from: &MasterKeyRef,
        to: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        let (from_name, from_version) = Self::key_version(from)?;
        let (to_name, to_version) = Self::key_version(to)?;
        if from_name != to_name {
            let key = self.unwrap(wrapped, from, ctx)?;
            return self.wrap(&key, to, ctx);
        }
        let ciphertext = self.wrapped_text(wrapped, from_version)?;
        let context = BASE64.encode(ctx.as_bytes());
        let body = self.body(&Request {
            plaintext: None,
            ciphertext: Some(ciphertext),
            context: &context,
            key_version: Some(to_version),
        })?;
        let path = self.path("rewrap", to_name);
        let raw = self
            .call(Method::Post, &path, Some(&body))
            .map_err(|e| Self::explain_refusal(e, from, ctx))?;
        self.ciphertext(&path, &raw, Some(to_version))
            .map(|(w, _)| w)
    }

    /// Rotates the configured key at Vault; its new latest version is
    /// returned and becomes [`KeyWrapper::current`].
    fn rotate_master_key(&self) -> Result<MasterKeyRef, KmsError> {
        self.checked_key(&self.key_name, true)?;
        let path = format!("{}/rotate", self.path("keys", &self.key_name));
        self.call(Method::Post, &path, None)?;
        let info = self.checked_key(&self.key_name, false)?;
        tracing::info!(
            key = %self.key_name,
            version = info.latest_version,
            "rotated the Transit key"
        );
        Ok(MasterKeyRef {
            secret_path: self.key_name.clone(),
            secret_version: info.latest_version.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
