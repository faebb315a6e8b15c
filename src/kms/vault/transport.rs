//! One HTTP exchange with Vault: the request (token, namespace, JSON body),
//! bounded retries while the server cannot be connected to, and the reply
//! read into zeroized memory. What the status means is for [`super::reply`].

use std::io::Read;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::{HeaderName, HeaderValue};
use zeroize::Zeroizing;

use crate::kms::KmsError;
use crate::kms::http::{self, chain};

/// Largest reply read: key information with hundreds of versions stays far
/// below this.
const MAX_REPLY_LEN: u64 = 256 * 1024;
/// The token header.
const TOKEN_HEADER: &str = "x-vault-token";
/// The namespace header (Vault Enterprise and OpenBao namespaces).
const NAMESPACE_HEADER: &str = "x-vault-namespace";

/// The HTTP method of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
}

/// A reply as received: the status and the body (zeroized on drop: decrypt
/// and login replies carry secrets).
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) body: Zeroizing<Vec<u8>>,
}

/// The client, the server's base URL and what every request carries.
pub(crate) struct Transport {
    client: Client,
    /// The address without a trailing slash.
    base: String,
    namespace: Option<HeaderValue>,
    request_timeout: Duration,
    retry_delays: Vec<Duration>,
}

impl Transport {
    /// A transport to `base` (already checked by [`crate::kms::http::check_url`]).
    pub(crate) fn new(
        client: Client,
        base: String,
        namespace: Option<&str>,
        request_timeout: Duration,
        retry_delays: Vec<Duration>,
    ) -> Result<Self, KmsError> {
        let namespace = match namespace {
            Some(ns) => Some(HeaderValue::from_str(ns).map_err(|_| {
                KmsError::Misconfigured(format!(
                    "namespace {:?} is not a valid header value",
                    ns.chars().take(40).collect::<String>()
                ))
            })?),
            None => None,
        };
        Ok(Transport {
            client,
            base,
            namespace,
            request_timeout,
            retry_delays,
        })
    }

    /// The server's address.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The full URL of API path `path` (which starts with `/v1/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request, retrying only while no connection can be made
    /// (HTTP errors and timeouts are not retried: the server answered, or
    /// may still be working on it).
    pub(crate) fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Raw, KmsError> {
        let url = self.url(path);
        let mut attempt = 0;
        let response = loop {
            let request = self.request(method, &url, token, body)?;
            match request.send() {
                Ok(response) => break response,
                Err(e)
                    if e.is_connect() && !e.is_timeout() && attempt < self.retry_delays.len() =>
                {
                    tracing::debug!(url, attempt, error = %chain(&e), "Vault connection failed; retrying");
                    std::thread::sleep(self.retry_delays[attempt]);
                    attempt += 1;
                }
                Err(e) => return Err(self.transport_error(&url, attempt + 1, &e)),
            }
        };
        let status = response.status().as_u16();
        let mut body = Zeroizing::new(Vec::new());
        response
            .take(MAX_REPLY_LEN + 1)
            .read_to_end(&mut body)
            .map_err(|e| {
                KmsError::Unavailable(format!(
                    "reading the reply of {url} (HTTP {status}) failed: {}",
                    chain(&e)
                ))
            })?;
        if body.len() as u64 > MAX_REPLY_LEN {
            return Err(KmsError::Refused(format!(
                "{url} answered HTTP {status} with more than {MAX_REPLY_LEN} bytes"
            )));
        }
        Ok(Raw { status, body })
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<reqwest::blocking::RequestBuilder, KmsError> {
        let mut request = match method {
            Method::Get => self.client.get(url),
            Method::Post => self.client.post(url),
        }
        .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token).map_err(|_| {
                KmsError::Misconfigured("the Vault token is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            request = request.header(HeaderName::from_static(TOKEN_HEADER), value);
        }
        if let Some(ns) = &self.namespace {
            request = request.header(HeaderName::from_static(NAMESPACE_HEADER), ns.clone());
        }
        Ok(request)
    }

    fn transport_error(&self, url: &str, attempts: usize, e: &reqwest::Error) -> KmsError {
        http::transport_error(url, attempts, self.request_timeout, e)
    }
}
