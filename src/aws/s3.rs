//! A blocking S3 client: the operations the object store backend needs,
//! on the crate's `reqwest` client (rustls on ring) and SigV4 signer.
//!
//! Why our own client rather than `aws-sdk-s3` is in Cargo.toml. What it
//! does:
//!
//! - objects: [`S3Client::head`], [`S3Client::get`] (small objects),
//!   [`S3Client::get_range`], [`S3Client::put`], [`S3Client::copy`],
//!   [`S3Client::delete`], [`S3Client::list`] (ListObjectsV2);
//! - multipart uploads: [`S3Client::create_multipart`],
//!   [`S3Client::upload_part`], [`S3Client::upload_part_copy`],
//!   [`S3Client::complete_multipart`], [`S3Client::abort_multipart`],
//!   [`S3Client::list_multipart_uploads`];
//! - conditional writes ([`Condition`]: `If-Match`, `If-None-Match: *`) on
//!   PUT, copy and completion, and `x-amz-copy-source-if-match` on copies.
//!
//! Transport rules: path-style (`http://host/bucket/key`) or
//! virtual-hosted (`https://bucket.host/key`) addressing; over `https` the
//! payload is not hashed (`UNSIGNED-PAYLOAD`, TLS protects it), over plain
//! `http` it is signed; no checksum trailers (many S3-compatible stores
//! reject them). A connection that cannot be made, and replies 500 and 503
//! (`SlowDown`), are retried after short pauses ([`DEFAULT_RETRY_DELAYS`]);
//! a timeout is not (the request may have been applied). Replies read into
//! memory are bounded ([`MAX_REPLY_LEN`]). Errors carry the S3 error code
//! and message and the object key, never credentials.

mod xml;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::Method;
use reqwest::blocking::{Client, Response};
use sha2::{Digest, Sha256};

use super::AwsError;
use super::credentials::{Credentials, Provider};
use super::http::{chain, excerpt};
use super::sigv4::{self, UNSIGNED_PAYLOAD};

/// Time allowed to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole request (a part of a few MiB included).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pauses before the second, third and fourth attempt after a connection
/// failure or a 500/503 reply.
pub const DEFAULT_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1000),
];
/// Largest reply body read whole: XML replies and [`S3Client::get`].
pub const MAX_REPLY_LEN: u64 = 16 * 1024 * 1024;
/// Most pages [`S3Client::list_multipart_uploads`] reads (1,000 uploads each).
const MAX_UPLOAD_PAGES: usize = 100;
/// Largest error body read (S3 error documents are a few hundred bytes).
const MAX_ERROR_LEN: u64 = 64 * 1024;
/// Largest access key id or secret key file read.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Where the client's credentials come from.
#[derive(Clone, Debug)]
pub enum CredentialSource {
    /// The standard AWS chain ([`Provider::from_env`]): environment,
    /// shared files, web identity.
    Chain,
    /// Two files, each holding one value (surrounding white space ignored).
    Files {
        /// The file with the access key id.
        access_key_id: PathBuf,
        /// The file with the secret access key.
        secret_access_key: PathBuf,
    },
    /// Credentials given directly (tests, tools).
    Given(Credentials),
}

/// How to reach the bucket; [`S3Options::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Base URL of an S3-compatible service (`http://127.0.0.1:8333`);
    /// `None` is AWS: `https://s3.REGION.amazonaws.com`.
    pub endpoint: Option<String>,
    /// The region, used for signing (and AWS's endpoint).
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Path-style addressing (`host/bucket/key`) rather than
    /// virtual-hosted (`bucket.host/key`).
    pub path_style: bool,
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Where the credentials come from.
    pub credentials: CredentialSource,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request.
    pub request_timeout: Duration,
    /// Pauses between attempts after a connection failure or a 500/503.
    pub retry_delays: Vec<Duration>,
}

impl S3Options {
    /// Options for `bucket` in `region` on AWS with the credential chain,
    /// virtual-hosted addressing and the default timeouts and retries.
    pub fn new(region: String, bucket: String) -> Self {
        S3Options {
            endpoint: None,
            region,
            bucket,
            path_style: false,
            ca_file: None,
            credentials: CredentialSource::Chain,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
        }
    }
}

/// Why an S3 request failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// No such object (HTTP 404 `NoSuchKey`, or `NoSuchUpload`).
    #[error("S3: not found")]
    NotFound,
    /// A condition did not hold: HTTP 412, or 409
    /// `ConditionalRequestConflict` (a concurrent conditional write won).
    #[error("S3: precondition failed (the object changed or already exists)")]
    PreconditionFailed,
    /// The service cannot be reached, timed out, or answered 5xx
    /// (`SlowDown`, `InternalError`); retrying later may succeed.
    #[error("S3 unavailable: {0}")]
    Unavailable(String),
    /// The service refused the request (another 4xx): its status, S3 error
    /// code and message (with the request's method and key).
    #[error("S3 refused (HTTP {status} {code}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The S3 error `Code` (`AccessDenied`, `NoSuchBucket`, ...).
        code: String,
        /// The S3 error `Message`, then the request.
        message: String,
    },
    /// A reply that cannot be used (not the XML expected, too large), or
    /// settings that cannot be (a bad endpoint, no credentials).
    #[error("S3: {0}")]
    Invalid(String),
}

impl From<S3Error> for std::io::Error {
    fn from(e: S3Error) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            S3Error::NotFound => ErrorKind::NotFound,
            S3Error::PreconditionFailed => ErrorKind::AlreadyExists,
            S3Error::Unavailable(_) => ErrorKind::TimedOut,
            S3Error::Refused { .. } | S3Error::Invalid(_) => ErrorKind::Other,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

impl From<AwsError> for S3Error {
    fn from(e: AwsError) -> Self {
        match e {
            AwsError::Unavailable(why) => S3Error::Unavailable(why),
            AwsError::Misconfigured(why) | AwsError::Refused(why) => S3Error::Invalid(why),
        }
    }
}

/// An object's size, ETag, time and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key.
    pub key: String,
    /// Its length in bytes.
    pub size: u64,
    /// The ETag, with its quotes (as `If-Match` wants it back).
    pub etag: String,
    /// Last-Modified, in Unix seconds (0 if the service sent none).
    pub last_modified: i64,
    /// `x-amz-meta-*` headers: names without the prefix, lower-cased.
    /// Always empty from [`S3Client::list`].
    pub metadata: BTreeMap<String, String>,
}

/// The condition a write is made under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    Always,
    /// Only if the object exists with this ETag (`If-Match`).
    IfMatch(String),
    /// Only if no object has the key (`If-None-Match: *`): create only.
    IfNoneMatch,
}

/// One page of [`S3Client::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The objects (metadata empty).
    pub objects: Vec<ObjectInfo>,
    /// With a delimiter: the key prefixes up to and including it.
    pub common_prefixes: Vec<String>,
    /// The continuation token for the next page; `None` on the last one.
    pub next: Option<String>,
}

/// A multipart upload not completed or aborted yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it will complete to.
    pub key: String,
    /// Its upload id.
    pub upload_id: String,
    /// When it was started, in Unix seconds.
    pub initiated: i64,
}

/// `prefix` and `parts` joined with `/`; an empty prefix adds no leading
/// slash (`join_key("", &["data", "alice"])` is `data/alice`).
pub fn join_key(prefix: &str, parts: &[&str]) -> String {
    let prefix = prefix.trim_end_matches('/');
    let mut key = String::from(prefix);
    for part in parts {
        if !key.is_empty() {
            key.push('/');
        }
        key.push_str(part);
    }
    key
}

/// An S3 client for one bucket. Cheap to clone; blocking: call it from
/// blocking threads, not from async code.
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `scheme://host[:port]` of the requests (with the bucket in the host
    /// for virtual-hosted addressing).
    base: String,
    /// The `Host` header reqwest sends for `base` (signed).
    host: String,
    /// `/bucket` with path-style addressing, else empty.
    path_prefix: String,
    bucket: String,
    region: String,
    /// Sign the payload's SHA-256 (plain http) rather than UNSIGNED-PAYLOAD.
    sign_payload: bool,
    credentials: Provider,
    request_timeout: Duration,
    retry_delays: Vec<Duration>,
}

impl fmt::Debug for S3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Client")
            .field("endpoint", &self.inner.base)
            .field("bucket", &self.inner.bucket)
            .field("credentials", &self.inner.credentials.describe())
            .finish_non_exhaustive()
    }
}

/// One request before signing.
struct Req<'a> {
    method: Method,
    /// The object key; `None` for the bucket itself.
    key: Option<&'a str>,
    query: Vec<(&'a str, String)>,
    /// Headers to sign and send (lower-case names).
    headers: Vec<(String, String)>,
    body: &'a [u8],
    /// What the request is, for messages ("PUT", "CompleteMultipartUpload").
    op: &'static str,
}

impl<'a> Req<'a> {
    fn new(op: &'static str, method: Method, key: Option<&'a str>) -> Self {
        Req {
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: b"",
            op,
        }
    }

    fn query(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn body(mut self, body: &'a [u8]) -> Self {
        self.body = body;
        self
    }

    fn condition(self, cond: &Condition) -> Self {
        match cond {
            Condition::Always => self,
            Condition::IfMatch(etag) => self.header("if-match", etag.clone()),
            Condition::IfNoneMatch => self.header("if-none-match", "*"),
        }
    }

    fn metadata(mut self, metadata: &[(&str, &str)]) -> Self {
        for (name, value) in metadata {
            self = self.header(&format!("x-amz-meta-{}", name.to_ascii_lowercase()), *value);
        }
        self
    }

    /// `METHOD /bucket/key` for messages.
    fn describe(&self, bucket: &str) -> String {
        format!("{} {bucket}/{}", self.op, self.key.unwrap_or(""))
    }
}

impl S3Client {
    /// A client for `opts.bucket`; resolves the credentials, talks to no one.
    pub fn new(opts: S3Options) -> Result<Self, S3Error> {
        if opts.bucket.is_empty() || opts.bucket.contains('/') {
            return Err(S3Error::Invalid(format!(
                "bucket {:?}: a bucket name, without slashes",
                opts.bucket
            )));
        }
        if opts.region.is_empty()
            || !opts
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(S3Error::Invalid(format!(
                "region {:?}: letters, digits and dashes (us-east-1)",
                opts.region
            )));
        }
        let endpoint = opts
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", opts.region));
        let (scheme, host) = check_endpoint(&endpoint)?;
        let (host, path_prefix) = if opts.path_style {
            (host, format!("/{}", opts.bucket))
        } else {
            (format!("{}.{host}", opts.bucket), String::new())
        };
        let https = scheme == "https";
        let client = super::http::client(
            https,
            opts.ca_file.as_deref(),
            opts.connect_timeout,
            opts.request_timeout,
        )?;
        let credentials = resolve_credentials(&opts.credentials, &opts.region)?;
        Ok(S3Client {
            inner: Arc::new(Inner {
                client,
                base: format!("{scheme}://{host}"),
                host,
                path_prefix,
                bucket: opts.bucket,
                region: opts.region,
                sign_payload: !https,
                credentials,
                request_timeout: opts.request_timeout,
                retry_delays: opts.retry_delays,
            }),
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The base URL requests go to (for logs).
    pub fn endpoint(&self) -> &str {
        &self.inner.base
    }

    /// Where the credentials come from (for logs; no secrets).
    pub fn credentials_source(&self) -> String {
        self.inner.credentials.describe()
    }

    /// HEAD: the object's size, ETag, time and metadata.
    pub fn head(&self, key: &str) -> Result<ObjectInfo, S3Error> {
        let response = self.send(Req::new("HEAD", Method::HEAD, Some(key)))?;
        info_from_headers(key, &response)
    }

    /// GET of `range` (end exclusive, not empty) of the object, only if
    /// its ETag is still `if_match` when given. Exactly the range's bytes,
    /// or [`S3Error::Invalid`].
    pub fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes, S3Error> {
        if range.is_empty() {
            return Err(S3Error::Invalid(format!(
                "GET {key}: empty range {range:?}"
            )));
        }
        let len = range.end - range.start;
        let mut req = Req::new("GET", Method::GET, Some(key))
            .header("range", format!("bytes={}-{}", range.start, range.end - 1));
        if let Some(etag) = if_match {
            req = req.header("if-match", etag);
        }
        let response = self.send(req)?;
        let body = read_bounded(response, len, &format!("GET {key} {range:?}"))?;
        if body.len() as u64 != len {
            return Err(S3Error::Invalid(format!(
                "GET {key} bytes {range:?}: {} bytes came back, not {len}",
                body.len()
            )));
        }
        Ok(body)
    }

    /// GET of a small object (at most [`MAX_REPLY_LEN`] bytes) and its
    /// information.
    pub fn get(&self, key: &str) -> Result<(Bytes, ObjectInfo), S3Error> {
        let response = self.send(Req::new("GET", Method::GET, Some(key)))?;
        let mut info = info_from_headers(key, &response)?;
        let body = read_bounded(response, MAX_REPLY_LEN, &format!("GET {key}"))?;
        info.size = body.len() as u64;
        Ok((body, info))
    }

    /// PUT of `body` with `metadata` (`x-amz-meta-NAME`) under `cond`: the
    /// new ETag.
    pub fn put(
        &self,
        key: &str,
        body: &[u8],
        metadata: &[(&str, &str)],
        cond: Condition,
    ) -> Result<String, S3Error> {
        let req = Req::new("PUT", Method::PUT, Some(key))
            .body(body)
            .metadata(metadata)
            .condition(&cond);
        let response = self.send(req)?;
        etag_header(key, &response)
    }

    /// Server-side copy of `from` to `to` (at most 5 GiB), only if `from`
    /// still has ETag `source_if_match` when given; `metadata` `Some`
    /// replaces the metadata, `None` copies it. The new ETag.
    pub fn copy(
        &self,
        from: &str,
        to: &str,
        source_if_match: Option<&str>,
        metadata: Option<&[(&str, &str)]>,
        cond: Condition,
    ) -> Result<String, S3Error> {
        let mut req = Req::new("CopyObject", Method::PUT, Some(to))
            .header("x-amz-copy-source", self.copy_source(from))
            .condition(&cond);
        if let Some(etag) = source_if_match {
            req = req.header("x-amz-copy-source-if-match", etag);
        }
        match metadata {
            Some(metadata) => {
                req = req
                    .header("x-amz-metadata-directive", "REPLACE")
                    .metadata(metadata)
            }
            None => req = req.header("x-amz-metadata-directive", "COPY"),
        }
        let what = format!("CopyObject {from} -> {to}");
        let reply = self.send_xml(req)?;
        xml_etag(&reply, &what)
    }

    /// DELETE; a missing object is not an error.
    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        match self.send(Req::new("DELETE", Method::DELETE, Some(key))) {
            Ok(_) | Err(S3Error::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// ListObjectsV2 of the keys under `prefix`, at most `max_keys` (1 to
    /// 1,000); with `delimiter`, keys that contain it after the prefix are
    /// rolled up into [`ListPage::common_prefixes`]. `token` is the
    /// previous page's [`ListPage::next`].
    pub fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, S3Error> {
        let mut req = Req::new("ListObjectsV2", Method::GET, None)
            .query("list-type", "2")
            .query("prefix", prefix)
            .query("encoding-type", "url")
            .query("max-keys", max_keys.clamp(1, 1000).to_string());
        if let Some(d) = delimiter {
            req = req.query("delimiter", d);
        }
        if let Some(t) = token {
            req = req.query("continuation-token", t);
        }
        let reply = self.send_xml(req)?;
        parse_list(&reply)
    }

    /// CreateMultipartUpload for `key` with `metadata`: the upload id.
    pub fn create_multipart(
        &self,
        key: &str,
        metadata: &[(&str, &str)],
    ) -> Result<String, S3Error> {
        let req = Req::new("CreateMultipartUpload", Method::POST, Some(key))
            .query("uploads", "")
            .metadata(metadata);
        let reply = self.send_xml(req)?;
        xml::field(&reply, "UploadId")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| invalid_reply(&format!("CreateMultipartUpload {key}"), &reply))
    }

    /// UploadPart `part` (1 to 10,000; at least 5 MiB but for the last):
    /// the part's ETag.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part: u32,
        body: &[u8],
    ) -> Result<String, S3Error> {
        check_part(part)?;
        let req = Req::new("UploadPart", Method::PUT, Some(key))
            .query("partNumber", part.to_string())
            .query("uploadId", upload_id)
            .body(body);
        let response = self.send(req)?;
        etag_header(key, &response)
    }

    /// UploadPartCopy: `range` (end exclusive) of `source` as part `part`,
    /// only if `source` still has ETag `source_if_match` when given. The
    /// part's ETag.
    pub fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part: u32,
        source: &str,
        range: Range<u64>,
        source_if_match: Option<&str>,
    ) -> Result<String, S3Error> {
        check_part(part)?;
        if range.is_empty() {
            return Err(S3Error::Invalid(format!(
                "UploadPartCopy {source}: empty range {range:?}"
            )));
        }
        let mut req = Req::new("UploadPartCopy", Method::PUT, Some(key))
            .query("partNumber", part.to_string())
            .query("uploadId", upload_id)
            .header("x-amz-copy-source", self.copy_source(source))
            .header(
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            );
        if let Some(etag) = source_if_match {
            req = req.header("x-amz-copy-source-if-match", etag);
        }
        let what = format!("UploadPartCopy {source} -> {key} part {part}");
        let reply = self.send_xml(req)?;
        xml_etag(&reply, &what)
    }

    /// CompleteMultipartUpload with `parts` (number, ETag) in ascending
    /// order, under `cond`: the object's ETag.
    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        cond: Condition,
    ) -> Result<String, S3Error> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (number, etag) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let req = Req::new("CompleteMultipartUpload", Method::POST, Some(key))
            .query("uploadId", upload_id)
            .header("content-type", "application/xml")
            .body(body.as_bytes())
            .condition(&cond);
        let reply = self.send_xml(req)?;
        xml_etag(&reply, &format!("CompleteMultipartUpload {key}"))
    }

    /// AbortMultipartUpload; an upload already gone is not an error.
    pub fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let req = Req::new("AbortMultipartUpload", Method::DELETE, Some(key))
            .query("uploadId", upload_id);
        match self.send(req) {
            Ok(_) | Err(S3Error::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// ListMultipartUploads under `prefix`: every upload not completed or
    /// aborted (at most 100,000).
    pub fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, S3Error> {
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        for _ in 0..MAX_UPLOAD_PAGES {
            let mut req = Req::new("ListMultipartUploads", Method::GET, None)
                .query("uploads", "")
                .query("prefix", prefix)
                .query("encoding-type", "url");
            if let Some((key, id)) = &markers {
                req = req
                    .query("key-marker", key.clone())
                    .query("upload-id-marker", id.clone());
            }
            let reply = self.send_xml(req)?;
            let url = is_url_encoded(&reply);
            for upload in xml::elements(&reply, "Upload") {
                let key = xml::field(upload, "Key").map(|k| decode_key(k, url));
                let id = xml::field(upload, "UploadId");
                let (Some(key), Some(upload_id)) = (key, id) else {
                    return Err(invalid_reply("ListMultipartUploads", &reply));
                };
                let initiated = xml::field(upload, "Initiated")
                    .and_then(|t| parse_iso8601(&t))
                    .unwrap_or(0);
                uploads.push(PendingUpload {
                    key,
                    upload_id,
                    initiated,
                });
            }
            if xml::field(&reply, "IsTruncated").as_deref() != Some("true") {
                return Ok(uploads);
            }
            let key = xml::field(&reply, "NextKeyMarker").map(|k| decode_key(k, url));
            let id = xml::field(&reply, "NextUploadIdMarker");
            match (key, id) {
                (Some(k), Some(i)) if Some((&k, &i)) != markers.as_ref().map(|(a, b)| (a, b)) => {
                    markers = Some((k, i));
                }
                _ => return Err(invalid_reply("ListMultipartUploads (truncated)", &reply)),
            }
        }
        Err(S3Error::Invalid(format!(
            "ListMultipartUploads {prefix:?}: more than {MAX_UPLOAD_PAGES} pages"
        )))
    }

    /// The `x-amz-copy-source` value for `key` in this bucket.
    fn copy_source(&self, key: &str) -> String {
        sigv4::uri_encode_path(&format!("/{}/{key}", self.inner.bucket))
    }

    /// A request whose 2xx reply body is XML: the body (bounded). An
    /// `<Error>` document in a 200 reply (CopyObject and
    /// CompleteMultipartUpload may fail after their 200 status) is turned
    /// into the error it names.
    fn send_xml(&self, req: Req<'_>) -> Result<String, S3Error> {
        let what = req.describe(&self.inner.bucket);
        let response = self.send(req)?;
        let body = read_bounded(response, MAX_REPLY_LEN, &what)?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| S3Error::Invalid(format!("{what}: the reply is not UTF-8")))?;
        if root_is_error(&text) {
            return Err(s3_error(200, &text, &what));
        }
        Ok(text)
    }

    /// Signs and sends `req`, retrying connection failures and 500/503:
    /// the 2xx response, or the error the reply names.
    fn send(&self, req: Req<'_>) -> Result<Response, S3Error> {
        let inner = &self.inner;
        let what = req.describe(&inner.bucket);
        let path =
            sigv4::uri_encode_path(&format!("{}/{}", inner.path_prefix, req.key.unwrap_or("")));
        let query: Vec<(&str, &str)> = req.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = match query.is_empty() {
            true => format!("{}{path}", inner.base),
            false => format!("{}{path}?{}", inner.base, encoded_query(&query)),
        };
        let payload_hash = if inner.sign_payload {
            hex::encode(Sha256::digest(req.body))
        } else {
            UNSIGNED_PAYLOAD.to_owned()
        };
        let mut attempt = 0;
        loop {
            let credentials = inner
                .credentials
                .get(&|w, token| w.assume_role(&inner.client, token).map_err(S3Error::from))?;
            let mut headers: Vec<(&str, &str)> = req
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            headers.push(("host", &inner.host));
            headers.push(("x-amz-content-sha256", &payload_hash));
            let signed = sigv4::sign_payload_hash(
                &credentials,
                &sigv4::Scope {
                    region: &inner.region,
                    service: "s3",
                },
                &sigv4::Request {
                    method: req.method.as_str(),
                    path: &path,
                    query: &query,
                    headers: &headers,
                    body: req.body,
                },
                &payload_hash,
                SystemTime::now(),
            );
            let mut builder = inner.client.request(req.method.clone(), &url);
            for (name, value) in headers.iter().filter(|(n, _)| *n != "host") {
                builder = builder.header(*name, *value);
            }
            for (name, value) in signed {
                let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                    S3Error::Invalid(format!("the AWS credentials make an invalid {name} header"))
                })?;
                value.set_sensitive(name != "x-amz-date");
                builder = builder.header(name, value);
            }
            // The body's last reference stays here, so that it is freed on
            // the thread that allocated it once the client's runtime
            // thread has sent it: parts freed there stayed resident
            // (docs/PERFORMANCE.md, "S3 storage").
            let mut kept = None;
            if !req.body.is_empty() || req.method == Method::PUT || req.method == Method::POST {
                let body = Bytes::copy_from_slice(req.body);
                builder = builder.body(body.clone());
                kept = Some(body);
            }
            let retry = attempt < inner.retry_delays.len();
            let sent = builder.send();
            drop(kept);
            match sent {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let error = error_reply(response, &what);
                    if retry && matches!(status, 500 | 503) {
                        tracing::debug!(request = %what, status, error = %error, attempt, "S3 busy; retrying");
                    } else {
                        return Err(error);
                    }
                }
                Err(e) if retry && e.is_connect() && !e.is_timeout() => {
                    tracing::debug!(request = %what, endpoint = %inner.base, attempt, error = %chain(&e), "S3 connection failed; retrying");
                }
                Err(e) => return Err(self.transport_error(&what, attempt + 1, &e)),
            }
            std::thread::sleep(inner.retry_delays[attempt]);
            attempt += 1;
        }
    }

    fn transport_error(&self, what: &str, attempts: usize, e: &reqwest::Error) -> S3Error {
        let what = format!("{what} at {}", self.inner.base);
        if e.is_builder() {
            S3Error::Invalid(format!("{what}: cannot build the request: {}", chain(e)))
        } else if e.is_timeout() {
            S3Error::Unavailable(format!(
                "{what}: no answer within {:?}",
                self.inner.request_timeout
            ))
        } else if e.is_connect() {
            S3Error::Unavailable(format!(
                "{what}: cannot connect ({attempts} attempt{}): {}",
                if attempts == 1 { "" } else { "s" },
                chain(e)
            ))
        } else {
            S3Error::Unavailable(format!("{what}: request failed: {}", chain(e)))
        }
    }
}

/// The credentials of `source`, resolved now.
fn resolve_credentials(source: &CredentialSource, region: &str) -> Result<Provider, S3Error> {
    match source {
        CredentialSource::Chain => Ok(Provider::from_env(
            &|name| std::env::var(name).ok(),
            region,
        )?),
        CredentialSource::Files {
            access_key_id,
            secret_access_key,
        } => {
            let read = |path: &PathBuf, what: &str| -> Result<String, S3Error> {
                let bytes = super::http::read_limited(path, MAX_KEY_FILE_LEN, what)?;
                let text = zeroize::Zeroizing::new(String::from_utf8(bytes).map_err(|_| {
                    S3Error::Invalid(format!("the {what} {} is not UTF-8", path.display()))
                })?);
                let value = text.trim().to_owned();
                if value.is_empty() {
                    return Err(S3Error::Invalid(format!(
                        "the {what} {} is empty",
                        path.display()
                    )));
                }
                Ok(value)
            };
            let id = read(access_key_id, "access key id file")?;
            let secret = read(secret_access_key, "secret access key file")?;
            Ok(Provider::Static {
                credentials: Credentials::new(id, secret, None, None),
                source: format!(
                    "files {} and {}",
                    access_key_id.display(),
                    secret_access_key.display()
                ),
            })
        }
        CredentialSource::Given(credentials) => Ok(Provider::Static {
            credentials: credentials.clone(),
            source: "given".into(),
        }),
    }
}

/// The endpoint's scheme and the `Host` header for it; no path, query,
/// fragment or credentials allowed.
fn check_endpoint(url: &str) -> Result<(String, String), S3Error> {
    let shown = if url.contains('@') {
        "(not shown)"
    } else {
        url
    };
    let (parsed, host) = super::http::check_endpoint(url)
        .map_err(|why| S3Error::Invalid(format!("endpoint {shown:?}: {why}")))?;
    Ok((parsed.scheme().to_owned(), host))
}

/// The query string as signed: pairs URI-encoded, sorted.
fn encoded_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
        .collect();
    pairs.sort();
    pairs.join("&")
}

fn check_part(part: u32) -> Result<(), S3Error> {
    if (1..=10_000).contains(&part) {
        Ok(())
    } else {
        Err(S3Error::Invalid(format!(
            "part number {part}: S3 takes 1 to 10000"
        )))
    }
}

/// At most `limit` bytes of the body; more is [`S3Error::Invalid`].
fn read_bounded(response: Response, limit: u64, what: &str) -> Result<Bytes, S3Error> {
    if let Some(len) = response.content_length().filter(|l| *l > limit) {
        return Err(S3Error::Invalid(format!(
            "{what}: a reply of {len} bytes, more than the {limit} expected"
        )));
    }
    // One allocation of the announced size rather than a doubling trail
    // of them (a window is megabytes).
    let mut body = Vec::with_capacity(
        response
            .content_length()
            .map_or(0, |len| usize::try_from(len + 1).unwrap_or(0)),
    );
    response
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| S3Error::Unavailable(format!("{what}: reading the reply: {}", chain(&e))))?;
    if body.len() as u64 > limit {
        return Err(S3Error::Invalid(format!(
            "{what}: a reply of more than the {limit} bytes expected"
        )));
    }
    Ok(Bytes::from(body))
}

/// Whether the document's root element is `<Error>`.
fn root_is_error(text: &str) -> bool {
    let text = text.trim_start();
    let text = match text.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or("", |(_, r)| r).trim_start(),
        None => text,
    };
    text.starts_with("<Error>") || text.starts_with("<Error ")
}

/// The error a non-2xx reply stands for.
fn error_reply(response: Response, what: &str) -> S3Error {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    // A body that cannot be read leaves the status to speak.
    let _ = response.take(MAX_ERROR_LEN).read_to_end(&mut body);
    s3_error(status, &String::from_utf8_lossy(&body), what)
}

/// The error for HTTP `status` with S3 error document `body` (may be empty:
/// HEAD replies have none).
fn s3_error(status: u16, body: &str, what: &str) -> S3Error {
    let code = xml::field(body, "Code").unwrap_or_default();
    let message = xml::field(body, "Message").unwrap_or_default();
    match (status, code.as_str()) {
        (412, _) | (409, "ConditionalRequestConflict") => return S3Error::PreconditionFailed,
        (404, "" | "NoSuchKey" | "NoSuchUpload") => return S3Error::NotFound,
        _ => {}
    }
    let message = match (
        message.is_empty(),
        body.trim().is_empty() || !code.is_empty(),
    ) {
        (false, _) => format!("{}; {what}", excerpt(message.as_bytes())),
        (true, true) => what.to_owned(),
        (true, false) => format!("{}; {what}", excerpt(body.as_bytes())),
    };
    let code = if code.is_empty() {
        "(no code)".to_owned()
    } else {
        excerpt(code.as_bytes())
    };
    if status >= 500 || (status == 200 && matches!(code.as_str(), "SlowDown" | "InternalError")) {
        S3Error::Unavailable(format!("HTTP {status} {code}: {message}"))
    } else {
        S3Error::Refused {
            status,
            code,
            message,
        }
    }
}

fn invalid_reply(what: &str, body: &str) -> S3Error {
    S3Error::Invalid(format!(
        "{what}: unexpected reply: {}",
        excerpt(body.as_bytes())
    ))
}

/// The `<ETag>` of a CopyObject, UploadPartCopy or completion reply.
fn xml_etag(reply: &str, what: &str) -> Result<String, S3Error> {
    xml::field(reply, "ETag")
        .filter(|e| !e.is_empty())
        .map(|e| quoted(&e))
        .ok_or_else(|| invalid_reply(what, reply))
}

/// The `ETag` header of a PUT or UploadPart reply.
fn etag_header(key: &str, response: &Response) -> Result<String, S3Error> {
    header(response, "etag")
        .filter(|e| !e.is_empty())
        .map(|e| quoted(&e))
        .ok_or_else(|| S3Error::Invalid(format!("{key}: the reply has no ETag")))
}

/// An ETag in quotes, as S3 sends it in headers and wants it back.
fn quoted(etag: &str) -> String {
    if etag.starts_with('"') || etag.starts_with("W/") {
        etag.to_owned()
    } else {
        format!("\"{etag}\"")
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Size, ETag, time and metadata from a HEAD or GET reply's headers.
fn info_from_headers(key: &str, response: &Response) -> Result<ObjectInfo, S3Error> {
    let size = header(response, "content-length")
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or_else(|| S3Error::Invalid(format!("{key}: the reply has no Content-Length")))?;
    let etag = etag_header(key, response)?;
    let last_modified = header(response, "last-modified")
        .and_then(|t| parse_http_date(&t))
        .unwrap_or(0);
    let metadata = response
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("x-amz-meta-")?;
            Some((name.to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    Ok(ObjectInfo {
        key: key.to_owned(),
        size,
        etag,
        last_modified,
        metadata,
    })
}

fn is_url_encoded(reply: &str) -> bool {
    xml::field(reply, "EncodingType").is_some_and(|t| t.eq_ignore_ascii_case("url"))
}

fn decode_key(key: String, url: bool) -> String {
    if url { xml::url_decode(&key) } else { key }
}

/// A ListObjectsV2 reply.
fn parse_list(reply: &str) -> Result<ListPage, S3Error> {
    let url = is_url_encoded(reply);
    let mut page = ListPage::default();
    for entry in xml::elements(reply, "Contents") {
        let key = xml::field(entry, "Key").map(|k| decode_key(k, url));
        let size = xml::field(entry, "Size").and_then(|s| s.parse::<u64>().ok());
        let (Some(key), Some(size)) = (key, size) else {
            return Err(invalid_reply("ListObjectsV2", reply));
        };
        page.objects.push(ObjectInfo {
            key,
            size,
            etag: xml::field(entry, "ETag")
                .map(|e| quoted(&e))
                .unwrap_or_default(),
            last_modified: xml::field(entry, "LastModified")
                .and_then(|t| parse_iso8601(&t))
                .unwrap_or(0),
            metadata: BTreeMap::new(),
        });
    }
    for block in xml::elements(reply, "CommonPrefixes") {
        if let Some(prefix) = xml::field(block, "Prefix") {
            page.common_prefixes.push(decode_key(prefix, url));
        }
    }
    if xml::field(reply, "IsTruncated").as_deref() == Some("true") {
        let token = xml::field(reply, "NextContinuationToken").filter(|t| !t.is_empty());
        if token.is_none() {
            return Err(invalid_reply("ListObjectsV2 (truncated, no token)", reply));
        }
        page.next = token;
    }
    Ok(page)
}

/// `2009-10-12T17:50:30.000Z` in Unix seconds.
fn parse_iso8601(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text.trim().trim_end_matches('Z')).ok()?;
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

/// An HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`) in Unix seconds.
fn parse_http_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?;
    let iso = format!("{year}-{:02}-{:0>2}T{time}", month + 1, day);
    parse_iso8601(&iso)
}

/// Text escaped for an XML element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests;
