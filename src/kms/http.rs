//! What the HTTP key service clients (EaaS, Vault, AWS KMS) share: the URL
//! rule, and (from [`crate::aws::http`], where S3 shares them too) the
//! blocking `reqwest` client on rustls with the `ring` provider, reading
//! small secret files, and error texts that stay one short line.
//!
//! The client is HTTP/1.1 only, follows no redirects (a redirect could send
//! a data key elsewhere) and takes no proxy from the environment.

use std::path::Path;
use std::time::Duration;

use reqwest::blocking::Client;

use super::KmsError;

pub(crate) use crate::aws::http::{EXCERPT_CHARS, chain, excerpt};

/// The blocking client of [`crate::aws::http::client`], its errors as
/// [`KmsError`].
pub(crate) fn client(
    https: bool,
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Client, KmsError> {
    Ok(crate::aws::http::client(
        https,
        ca_file,
        connect_timeout,
        request_timeout,
    )?)
}

/// Checks the base URL and returns it without a trailing slash.
pub(crate) fn check_url(url: &str) -> Result<String, KmsError> {
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

/// Reads a small file (a token, a CA bundle) of at most `limit` bytes;
/// `what` names it in errors.
pub(crate) fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, KmsError> {
    Ok(crate::aws::http::read_limited(path, limit, what)?)
}

/// The error for a request to `url` that got no answer after `attempts`
/// tries (`request_timeout` is the whole request's limit), worded for the
/// operator: a timeout, a refused connection, or another failure.
pub(crate) fn transport_error(
    url: &str,
    attempts: usize,
    request_timeout: Duration,
    e: &reqwest::Error,
) -> KmsError {
    if e.is_timeout() {
        let limit = if e.is_connect() {
            "while connecting".to_owned()
        } else {
            format!("within {request_timeout:?}")
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
