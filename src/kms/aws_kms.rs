//! The AWS KMS backend: data keys wrapped by a symmetric KMS key with the
//! JSON API (`POST /`, `X-Amz-Target: TrentService.<Op>`,
//! `application/x-amz-json-1.1`), signed with SigV4 (`aws_kms/sigv4.rs`) using
//! credentials from the standard chain ([`credentials`]).
//!
//! | operation | KMS call |
//! |---|---|
//! | [`AwsKms::check_key`], [`KeyWrapper::ensure_master_key`] | `DescribeKey`: the key exists, is enabled and is a symmetric encryption key |
//! | [`KeyWrapper::wrap`] | `Encrypt` with `EncryptionContext {"dropzone:user": NAME}` |
//! | [`KeyWrapper::unwrap`] | `Decrypt` with the same context and the recorded `KeyId` |
//! | [`KeyWrapper::rewrap`] | `ReEncrypt`: the data key never leaves KMS |
//!
//! Key files record the key's ARN (from `DescribeKey`) as `secret_path`, so
//! that re-pointing an alias later does not orphan existing wrappings, and
//! [`SECRET_VERSION`] as `secret_version`: KMS hides the versions of a key's
//! backing material (automatic or on-demand rotation keeps the old ones, and
//! the ciphertext names the one it used), so there is no version for us to
//! record. A rotation to another key is a new `key_id` in the configuration
//! and `dropzone keys rotate` ([`KeyWrapper::rotate_master_key`] answers the
//! configured key).
//!
//! The encryption context binds each wrapped key to its user: a wrapped key
//! copied into another user's key file does not decrypt (KMS answers
//! `InvalidCiphertextException`).
//!
//! Transport: the same blocking `reqwest` client as [`super::eaas`] (rustls
//! on ring, HTTP/1.1, no redirects, no proxies); connection failures are
//! retried a bounded number of times. Errors name the operation, the KMS
//! error type and its message, never key material.

/// The credential chain, now shared with S3 in [`crate::aws`]; re-exported
/// here for the paths that named it before.
pub use crate::aws::credentials;
use crate::aws::{AwsError, sigv4};

use std::fmt;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::http::{self, chain, excerpt};
use super::{KeyWrapper, KmsError, MasterKeyRef, WrapContext};
use crate::sync::lock;
use credentials::{Credentials, Provider, WebIdentity};

/// The backend name recorded in key files.
pub const BACKEND: &str = "aws-kms";
/// The `secret_version` recorded for every wrapping (see the module doc).
pub const SECRET_VERSION: &str = "1";
/// The encryption context key that carries the user name.
pub const CONTEXT_KEY: &str = "dropzone:user";
/// Time allowed to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole request; KMS answers in milliseconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Pauses before the second and third attempt after a connection failure.
pub const DEFAULT_RETRY_DELAYS: [Duration; 2] =
    [Duration::from_millis(100), Duration::from_millis(400)];
/// Largest reply read.
const MAX_REPLY_LEN: u64 = 64 * 1024;
/// Largest ciphertext accepted (KMS's own limit is 6 KiB).
const MAX_WRAPPED_LEN: usize = 8 * 1024;

/// How to reach KMS; [`AwsKmsOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct AwsKmsOptions {
    /// Key id, key ARN, alias name (`alias/NAME`) or alias ARN.
    pub key_id: String,
    /// The region (`us-east-1`), used for the endpoint and for signing.
    pub region: String,
    /// Base URL of a KMS-compatible endpoint; default
    /// `https://kms.REGION.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request.
    pub request_timeout: Duration,
    /// Pauses between attempts after a connection failure.
    pub retry_delays: Vec<Duration>,
}

impl AwsKmsOptions {
    /// Options with the default endpoint, timeouts and retries.
    pub fn new(key_id: String, region: String) -> Self {
        AwsKmsOptions {
            key_id,
            region,
            endpoint: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
        }
    }
}

/// A client of the AWS KMS JSON API.
pub struct AwsKms {
    client: Client,
    /// The endpoint without a trailing slash.
    endpoint: String,
    /// The `Host` header reqwest sends for `endpoint` (signed).
    host: String,
    region: String,
    key_id: String,
    /// The key's ARN once `DescribeKey` has answered.
    arn: Mutex<Option<String>>,
    credentials: Provider,
    request_timeout: Duration,
    retry_delays: Vec<Duration>,
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("endpoint", &self.endpoint)
            .field("key_id", &self.key_id)
            .field("credentials", &self.credentials.describe())
            .finish_non_exhaustive()
    }
}

/// What a KMS call is, for its target header and messages.
#[derive(Clone, Copy, Debug)]
enum Op {
    DescribeKey,
    Encrypt,
    Decrypt,
    ReEncrypt,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::DescribeKey => "DescribeKey",
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::ReEncrypt => "ReEncrypt",
        }
    }
}

impl AwsKms {
    /// A client for `options.key_id` with credentials from `credentials`.
    /// Talks to no one yet (see [`AwsKms::check_key`]).
    ///
    /// Call it outside async code: the blocking HTTP client starts its own
    /// runtime thread.
    pub fn new(options: AwsKmsOptions, credentials: Provider) -> Result<Self, KmsError> {
        check_region(&options.region)?;
        check_key_id(&options.key_id)?;
        let endpoint = options
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://kms.{}.amazonaws.com", options.region));
        let (endpoint, host) = check_endpoint(&endpoint)?;
        let client = http::client(
            endpoint.starts_with("https://"),
            None,
            options.connect_timeout,
            options.request_timeout,
        )?;
        Ok(AwsKms {
            client,
            endpoint,
            host,
            region: options.region,
            key_id: options.key_id,
            arn: Mutex::new(None),
            credentials,
            request_timeout: options.request_timeout,
            retry_delays: options.retry_delays,
        })
    }

    /// The endpoint's base URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where the credentials come from (for the log; no secrets).
    pub fn credentials_source(&self) -> String {
        self.credentials.describe()
    }

    /// `DescribeKey` on the configured key: its ARN if it exists, is
    /// enabled and is a symmetric encryption key; from then on
    /// [`KeyWrapper::current`] names the ARN. A missing, disabled or
    /// unsuitable key is [`KmsError::Misconfigured`].
    pub fn check_key(&self) -> Result<String, KmsError> {
        let arn = self.describe(&self.key_id)?;
        *lock(&self.arn) = Some(arn.clone());
        Ok(arn)
    }

    fn describe(&self, key_id: &str) -> Result<String, KmsError> {
        let reply = self
            .call_json(Op::DescribeKey, &json!({ "KeyId": key_id }))
            .map_err(|e| match e {
                KmsError::Refused(why) => {
                    KmsError::Misconfigured(format!("AWS KMS key {key_id:?}: {why}"))
                }
                other => other,
            })?;
        let meta = &reply["KeyMetadata"];
        let bad = |why: String| KmsError::Misconfigured(format!("AWS KMS key {key_id:?}: {why}"));
        let arn = meta["Arn"]
            .as_str()
            .ok_or_else(|| bad("DescribeKey reply has no KeyMetadata.Arn".into()))?;
        let state = meta["KeyState"].as_str().unwrap_or("unknown");
        if meta["Enabled"] != Value::Bool(true) || state != "Enabled" {
            return Err(bad(format!("{arn} is not enabled (KeyState {state})")));
        }
        let usage = meta["KeyUsage"].as_str().unwrap_or("ENCRYPT_DECRYPT");
        let spec = meta["KeySpec"]
            .as_str()
            .or_else(|| meta["CustomerMasterKeySpec"].as_str())
            .unwrap_or("SYMMETRIC_DEFAULT");
        if usage != "ENCRYPT_DECRYPT" || spec != "SYMMETRIC_DEFAULT" {
            return Err(bad(format!(
                "{arn} is a {spec} key for {usage}; a SYMMETRIC_DEFAULT key for ENCRYPT_DECRYPT is needed"
            )));
        }
        Ok(arn.to_owned())
    }

    /// A call whose request and reply hold no key material.
    fn call_json(&self, op: Op, request: &Value) -> Result<Value, KmsError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| KmsError::Refused(format!("encoding the request: {e}")))?;
        let reply = self.call(op, &body)?;
        serde_json::from_slice(&reply).map_err(|e| {
            KmsError::Refused(format!("AWS KMS {}: the reply is not JSON: {e}", op.name()))
        })
    }

    /// A call whose reply is parsed into `T` (with [`Zeroizing`] fields
    /// for key material).
    fn call_as<T: serde::de::DeserializeOwned>(&self, op: Op, body: &[u8]) -> Result<T, KmsError> {
        let reply = self.call(op, body)?;
        serde_json::from_slice(&reply).map_err(|e| {
            KmsError::Refused(format!(
                "AWS KMS {}: unexpected reply: {}",
                op.name(),
                // serde's message names the field, never a value of it.
                e
            ))
        })
    }

    /// One signed call: retried while the connection cannot be made; the
    /// body of a 2xx reply, or the KMS error.
    fn call(&self, op: Op, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let target = format!("TrentService.{}", op.name());
        let mut attempt = 0;
        let response = loop {
            let credentials = self
                .credentials
                .get(&|w, token| self.assume_role(w, token))?;
            let headers = [
                ("content-type", "application/x-amz-json-1.1"),
                ("host", self.host.as_str()),
                ("x-amz-target", target.as_str()),
            ];
            let signed = sigv4::sign(
                &credentials,
                &sigv4::Scope {
                    region: &self.region,
                    service: "kms",
                },
                &sigv4::Request {
                    method: "POST",
                    path: "/",
                    query: &[],
                    headers: &headers,
                    body,
                },
                SystemTime::now(),
            );
            let mut builder = self
                .client
                .post(format!("{}/", self.endpoint))
                .header("content-type", headers[0].1)
                .header("x-amz-target", &target)
                .body(body.to_vec());
            for (name, value) in signed {
                let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                    KmsError::Misconfigured(format!(
                        "the AWS credentials make an invalid {name} header"
                    ))
                })?;
                value.set_sensitive(name != "x-amz-date");
                builder = builder.header(name, value);
            }
            match builder.send() {
                Ok(response) => break response,
                Err(e)
                    if e.is_connect() && !e.is_timeout() && attempt < self.retry_delays.len() =>
                {
                    tracing::debug!(endpoint = %self.endpoint, attempt, error = %chain(&e), "AWS KMS connection failed; retrying");
                    std::thread::sleep(self.retry_delays[attempt]);
                    attempt += 1;
                }
                Err(e) => return Err(self.transport_error(op, attempt + 1, &e)),
            }
        };
        let status = response.status().as_u16();
        let mut reply = Zeroizing::new(Vec::new());
        response
            .take(MAX_REPLY_LEN)
            .read_to_end(&mut reply)
            .map_err(|e| {
                KmsError::Unavailable(format!(
                    "AWS KMS {}: reading the reply (HTTP {status}) failed: {}",
                    op.name(),
                    chain(&e)
                ))
            })?;
        check_reply(op, status, &reply)?;
        Ok(reply)
    }

    fn transport_error(&self, op: Op, attempts: usize, e: &reqwest::Error) -> KmsError {
        let what = format!("AWS KMS {} at {}", op.name(), self.endpoint);
        if e.is_timeout() {
            KmsError::Unavailable(format!(
                "{what}: no answer within {:?}",
                self.request_timeout
            ))
        } else if e.is_connect() {
            KmsError::Unavailable(format!(
                "{what}: cannot connect ({attempts} attempt{}): {}",
                if attempts == 1 { "" } else { "s" },
                chain(e)
            ))
        } else {
            KmsError::Unavailable(format!("{what}: request failed: {}", chain(e)))
        }
    }

    /// `Encrypt` under `under` with `ctx`: the ciphertext, and the key ARN
    /// KMS names in its reply (if it does).
    fn encrypt(
        &self,
        key: &[u8; 32],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<(Vec<u8>, Option<String>), KmsError> {
        check_version(under)?;
        // Built as text so that the copy holding the key is zeroized.
        let body = Zeroizing::new(format!(
            "{{\"KeyId\":{},\"Plaintext\":\"{}\",\"EncryptionContext\":{}}}",
            Value::from(under.secret_path.as_str()),
            Zeroizing::new(BASE64.encode(key)).as_str(),
            context(ctx),
        ));
        let reply: CiphertextReply = self.call_as(Op::Encrypt, body.as_bytes())?;
        let arn = reply.key_id.clone().filter(|id| id.starts_with("arn:"));
        Ok((reply.decode(Op::Encrypt)?, arn))
    }

    /// STS `AssumeRoleWithWebIdentity` for the web identity credentials
    /// (on this client, so with its timeouts and TLS settings).
    fn assume_role(&self, w: &WebIdentity, token: &str) -> Result<Credentials, KmsError> {
        Ok(w.assume_role(&self.client, token)?)
    }
}

impl From<AwsError> for KmsError {
    /// The shared AWS layer's errors keep their kind and message.
    fn from(e: AwsError) -> Self {
        match e {
            AwsError::Misconfigured(why) => KmsError::Misconfigured(why),
            AwsError::Refused(why) => KmsError::Refused(why),
            AwsError::Unavailable(why) => KmsError::Unavailable(why),
        }
    }
}

impl KeyWrapper for AwsKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// The key's ARN once [`AwsKms::check_key`] has run (the server does
    /// at start-up), else the configured `key_id`; version [`SECRET_VERSION`].
    fn current(&self) -> MasterKeyRef {
        MasterKeyRef {
            secret_path: lock(&self.arn)
                .clone()
                .unwrap_or_else(|| self.key_id.clone()),
            secret_version: SECRET_VERSION.to_owned(),
        }
    }

    /// KMS keys are not created here: checks with `DescribeKey` that the
    /// key exists, is enabled and is a symmetric encryption key.
    fn ensure_master_key(&self, under: &MasterKeyRef) -> Result<(), KmsError> {
        if under.secret_version != SECRET_VERSION {
            return Err(KmsError::Misconfigured(format!(
                "AWS KMS keys have no versions of ours (only {SECRET_VERSION:?}); KMS rotates \
                 a key's material itself; to move to another key, change kms.aws_kms.key_id \
                 and run dropzone keys rotate"
            )));
        }
        if under.secret_path == self.key_id {
            self.check_key().map(drop)
        } else {
            self.describe(&under.secret_path).map(drop)
        }
    }

    fn wrap(
        &self,
        key: &[u8; 32],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        self.encrypt(key, under, ctx).map(|(wrapped, _)| wrapped)
    }

    /// Wraps under the configured key and records the key ARN that KMS
    /// names in its reply, even when KMS was unreachable at start-up (so
    /// [`KeyWrapper::current`] still names an alias): a key file must not
    /// depend on where an alias points later.
    fn wrap_new(
        &self,
        key: &[u8; 32],
        ctx: &WrapContext,
    ) -> Result<(Vec<u8>, MasterKeyRef), KmsError> {
        let under = self.current();
        let (wrapped, arn) = self.encrypt(key, &under, ctx)?;
        let master = match arn {
            Some(arn) => MasterKeyRef {
                secret_path: arn,
                secret_version: SECRET_VERSION.to_owned(),
            },
            None => under,
        };
        Ok((wrapped, master))
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        check_version(under)?;
        let request = json!({
            "KeyId": under.secret_path,
            "CiphertextBlob": BASE64.encode(wrapped),
            "EncryptionContext": context(ctx),
        });
        let reply: DecryptReply = self
            .call_as(Op::Decrypt, request.to_string().as_bytes())
            .map_err(|e| match e {
                KmsError::Refused(why) => KmsError::Refused(format!(
                    "{why} (the wrapped key of user {} under {})",
                    ctx.user(),
                    under.secret_path
                )),
                other => other,
            })?;
        let bytes =
            Zeroizing::new(BASE64.decode(reply.plaintext.as_bytes()).map_err(|_| {
                KmsError::Refused("AWS KMS Decrypt: Plaintext is not base64".into())
            })?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KmsError::Refused(format!(
                "AWS KMS Decrypt: the plaintext is {} bytes, not a 32-byte data key",
                bytes.len()
            ))
        })?;
        Ok(Zeroizing::new(key))
    }

    /// `ReEncrypt` from `from` to `to` with the same context: KMS decrypts
    /// and encrypts internally, so the data key does not leave it.
    fn rewrap(
        &self,
        wrapped: &[u8],
        from: &MasterKeyRef,
        to: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        check_version(from)?;
        check_version(to)?;
        let request = json!({
            "CiphertextBlob": BASE64.encode(wrapped),
            "SourceKeyId": from.secret_path,
            "SourceEncryptionContext": context(ctx),
            "DestinationKeyId": to.secret_path,
            "DestinationEncryptionContext": context(ctx),
        });
        let reply: CiphertextReply = self.call_as(Op::ReEncrypt, request.to_string().as_bytes())?;
        reply.decode(Op::ReEncrypt)
    }

    /// The configured key (checked with `DescribeKey`): a rotation to
    /// another KMS key is a new `key_id` in the configuration followed by
    /// `dropzone keys rotate`; KMS rotates a key's backing material itself.
    fn rotate_master_key(&self) -> Result<MasterKeyRef, KmsError> {
        self.check_key()?;
        Ok(self.current())
    }
}

/// The encryption context of `ctx`.
fn context(ctx: &WrapContext) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(CONTEXT_KEY.to_owned(), Value::from(ctx.user()));
    Value::Object(map)
}

/// The reply to Decrypt; the key's copies are zeroized.
#[derive(serde::Deserialize)]
struct DecryptReply {
    #[serde(rename = "Plaintext")]
    plaintext: Zeroizing<String>,
}

/// The reply to Encrypt and ReEncrypt.
#[derive(serde::Deserialize)]
struct CiphertextReply {
    #[serde(rename = "CiphertextBlob")]
    ciphertext_blob: String,
    /// The ARN of the key that encrypted.
    #[serde(rename = "KeyId")]
    key_id: Option<String>,
}

/// Only [`SECRET_VERSION`] is ever recorded; anything else is a key file
/// from elsewhere.
fn check_version(under: &MasterKeyRef) -> Result<(), KmsError> {
    if under.secret_version == SECRET_VERSION {
        Ok(())
    } else {
        Err(KmsError::InvalidVersion(
            under.secret_version.chars().take(32).collect(),
        ))
    }
}

impl CiphertextReply {
    /// The ciphertext, decoded and checked for size.
    fn decode(&self, op: Op) -> Result<Vec<u8>, KmsError> {
        let bad = |why: &str| KmsError::Refused(format!("AWS KMS {}: {why}", op.name()));
        let bytes = BASE64
            .decode(&self.ciphertext_blob)
            .map_err(|_| bad("CiphertextBlob is not base64"))?;
        if bytes.is_empty() || bytes.len() > MAX_WRAPPED_LEN {
            return Err(bad(&format!("CiphertextBlob is {} bytes", bytes.len())));
        }
        Ok(bytes)
    }
}

/// A 2xx reply passes; a KMS error (`__type`, `message`) becomes
/// [`KmsError::Unavailable`] (server errors, throttling, key material
/// unavailable) or [`KmsError::Refused`] (everything else). Error replies
/// carry no key material, so they may be quoted.
fn check_reply(op: Op, status: u16, body: &[u8]) -> Result<(), KmsError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (kind, message) = match &parsed {
        Some(v) => {
            let kind = v["__type"].as_str().unwrap_or("");
            // "com.amazonaws.kms#NotFoundException" -> "NotFoundException"
            let kind = kind.rsplit('#').next().unwrap_or(kind).to_owned();
            let message = v["message"]
                .as_str()
                .or_else(|| v["Message"].as_str())
                .unwrap_or("")
                .to_owned();
            (kind, message)
        }
        // Signature and credential errors come as XML from some
        // front ends (and moto).
        None => {
            let text = String::from_utf8_lossy(body);
            match credentials::xml_field(&text, "Code") {
                Some(code) => (
                    code,
                    credentials::xml_field(&text, "Message").unwrap_or_default(),
                ),
                None => (String::new(), excerpt(body)),
            }
        }
    };
    let why = format!(
        "AWS KMS {}: {} (HTTP {status}){}{}",
        op.name(),
        if kind.is_empty() { "error" } else { &kind },
        if message.is_empty() { "" } else { ": " },
        excerpt(message.as_bytes())
    );
    let transient = status >= 500
        || matches!(
            kind.as_str(),
            "ThrottlingException"
                | "LimitExceededException"
                | "KMSInternalException"
                | "DependencyTimeoutException"
                | "KeyUnavailableException"
                | "CustomKeyStoreInvalidStateException"
        );
    Err(if transient {
        KmsError::Unavailable(why)
    } else {
        KmsError::Refused(why)
    })
}

fn check_region(region: &str) -> Result<(), KmsError> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(KmsError::Misconfigured(format!(
            "AWS region {:?}: expected a name such as us-east-1",
            region.chars().take(40).collect::<String>()
        )))
    }
}

fn check_key_id(key_id: &str) -> Result<(), KmsError> {
    let ok =
        !key_id.is_empty() && key_id.len() <= 2048 && key_id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(KmsError::Misconfigured(
            "AWS KMS key_id: expected a key id, key ARN, alias/NAME or alias ARN".into(),
        ))
    }
}

/// Checks the endpoint; returns it without a trailing slash, and the `Host`
/// header for it.
fn check_endpoint(url: &str) -> Result<(String, String), KmsError> {
    let (parsed, host) = crate::aws::http::check_endpoint(url)
        .map_err(|why| KmsError::Misconfigured(format!("AWS KMS endpoint {url:?}: {why}")))?;
    Ok((parsed.as_str().trim_end_matches('/').to_owned(), host))
}

#[cfg(test)]
mod tests;
