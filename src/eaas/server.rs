//! Start-up ([`prepare`]: the key store (key files and their passphrase,
//! or a PKCS#11 token and its PIN), bearer token, TLS) and the HTTP
//! transport ([`run`]: HTTP/1.1 over TCP or TLS with hyper on tokio).
//!
//! Requests are read whole (bounded in size and time), then answered by
//! [`Service::handle`] on tokio's blocking pool, so slow RSA work runs on
//! many threads and never stalls the connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use zeroize::Zeroizing;

use super::config::{Config, Pkcs11Settings};
use super::keystore::{FileKeyStore, KeyStore};
use super::passphrase::{self, Passphrase, PassphraseSource};
use super::service::{Request, Response, Service};
use super::tls;
use super::token::Token;
use crate::atomic_file;

/// Largest request body: the biggest real one, a decrypt under RSA-4096,
/// is about 1.1 KB; 64 KiB leaves room for any client's extra fields.
pub const MAX_BODY: usize = 64 * 1024;
/// Most connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 1024;
/// Time allowed for a request's headers, and for its body.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that may hold the at-rest passphrase.
pub const PASSPHRASE_ENV: &str = "DROPZONE_EAAS_PASSPHRASE";
/// The environment variable that may hold the PKCS#11 user PIN (`[pkcs11]`).
pub const PKCS11_PIN_ENV: &str = "DROPZONE_EAAS_PKCS11_PIN";

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (or a file or variable it names) cannot be used;
    /// the message names the key and line.
    #[error("{0}")]
    Config(String),
    /// Anything else (the key directory cannot be created, ...).
    #[error("{0}")]
    Failed(String),
}

/// A service ready to run: what [`prepare`] builds and [`run`] serves.
#[derive(Debug)]
pub struct Prepared {
    /// The API over the key store.
    pub service: Arc<Service>,
    /// The TLS configuration when `[tls]` is set.
    pub tls: Option<Arc<ServerConfig>>,
}

/// Loads everything the configuration names. `env_passphrase` is the value
/// of [`PASSPHRASE_ENV`], if set; it takes precedence over
/// `passphrase_file`, which takes precedence over `keys_dir/.passphrase`
/// (generated here on first start). With `[pkcs11]`, the user PIN comes
/// from [`PKCS11_PIN_ENV`] (read here) or `pkcs11.pin_file`.
pub fn prepare(config: &Config, env_passphrase: Option<&[u8]>) -> Result<Prepared, StartError> {
    let env_pin = std::env::var_os(PKCS11_PIN_ENV).map(|v| Zeroizing::new(v.into_vec()));
    prepare_with(
        config,
        env_passphrase,
        env_pin.as_deref().map(Vec::as_slice),
    )
}

/// [`prepare`] with the value of [`PKCS11_PIN_ENV`] given rather than read.
pub fn prepare_with(
    config: &Config,
    env_passphrase: Option<&[u8]>,
    env_pin: Option<&[u8]>,
) -> Result<Prepared, StartError> {
    let store: Box<dyn KeyStore> = match &config.pkcs11 {
        None => Box::new(open_file_store(config, env_passphrase)?),
        Some(settings) => {
            if env_passphrase.is_some() || config.passphrase_file.is_some() {
                tracing::info!(
                    "the keys are in a PKCS#11 token ([pkcs11]): keys_dir, passphrase_file and \
                     {PASSPHRASE_ENV} are not used"
                );
            }
            open_token_store(config, settings, env_pin)?
        }
    };
    let token = match &config.token_file {
        Some(file) => {
            let t = Token::read_file(&file.path)
                .map_err(|e| StartError::Config(format!("{file}: {e}")))?;
            if t.is_short() {
                tracing::warn!(
                    "the bearer token in {} is shorter than {} characters",
                    file.path.display(),
                    super::token::SHORT_LEN
                );
            }
            Some(t)
        }
        None => None,
    };
    let tls = match &config.tls {
        Some(files) => Some(tls::server_config(files).map_err(StartError::Config)?),
        None => None,
    };
    tracing::info!(
        keys = %store.describe(),
        key_bits = config.key_bits.get(),
        token = token.is_some(),
        tls = tls.is_some(),
        "key service ready"
    );
    Ok(Prepared {
        service: Arc::new(Service::new(store, token)),
        tls,
    })
}

/// The key files under `keys_dir`, with the passphrase checked against an
/// existing key.
fn open_file_store(
    config: &Config,
    env_passphrase: Option<&[u8]>,
) -> Result<FileKeyStore, StartError> {
    let keys_dir = &config.keys_dir;
    atomic_file::create_private_dir(keys_dir)
        .map_err(|e| StartError::Failed(format!("keys_dir {}: {e}", keys_dir.display())))?;
    let (passphrase, source) = match (env_passphrase, &config.passphrase_file) {
        (Some(value), file) => {
            if let Some(file) = file {
                tracing::info!("{PASSPHRASE_ENV} is set and overrides passphrase_file ({file})");
            }
            let p = Passphrase::from_value(value, PASSPHRASE_ENV)
                .map_err(|e| StartError::Config(e.to_string()))?;
            (p, PassphraseSource::Environment)
        }
        (None, Some(file)) => {
            let p = Passphrase::read_file(&file.path)
                .map_err(|e| StartError::Config(format!("{file}: {e}")))?;
            (p, PassphraseSource::File(file.path.clone()))
        }
        (None, None) => {
            let path = keys_dir.join(passphrase::GENERATED_FILE);
            let (p, created) = Passphrase::load_or_generate(keys_dir)
                .map_err(|e| StartError::Failed(format!("passphrase: {e}")))?;
            if created {
                tracing::warn!(
                    file = %path.display(),
                    "created a random passphrase for the keys at rest; back it up: without it \
                     the keys cannot be read. Stored beside the keys, it protects only key \
                     files copied without it; set passphrase_file or {PASSPHRASE_ENV} to keep \
                     it elsewhere (docs/EAAS.md)"
                );
                (p, PassphraseSource::GeneratedNow(path))
            } else {
                (p, PassphraseSource::GeneratedEarlier(path))
            }
        }
    };
    if passphrase.is_short() {
        tracing::warn!(
            "the at-rest passphrase is shorter than {} bytes",
            passphrase::SHORT_LEN
        );
    }
    let source_text = match &source {
        PassphraseSource::Environment => PASSPHRASE_ENV.to_owned(),
        PassphraseSource::File(p)
        | PassphraseSource::GeneratedEarlier(p)
        | PassphraseSource::GeneratedNow(p) => p.display().to_string(),
    };
    let store = FileKeyStore::open(keys_dir.clone(), passphrase, config.key_bits)
        .map_err(|e| StartError::Failed(e.to_string()))?;
    match store.check_passphrase() {
        Ok(Some(file)) => {
            tracing::debug!(file = %file.display(), "the passphrase decrypts an existing key");
        }
        Ok(None) => {}
        Err(e) => {
            return Err(StartError::Config(format!(
                "the at-rest passphrase from {source_text} does not open the existing keys: {e}"
            )));
        }
    }
    tracing::info!(passphrase = %source_text, "key files are encrypted at rest");
    Ok(store)
}

/// The PKCS#11 token of `[pkcs11]`, logged in with the user PIN.
#[cfg(feature = "pkcs11")]
fn open_token_store(
    config: &Config,
    settings: &Pkcs11Settings,
    env_pin: Option<&[u8]>,
) -> Result<Box<dyn KeyStore>, StartError> {
    use super::keystore::pkcs11::{OpenError, Pkcs11KeyStore};
    let pin = match (env_pin, &settings.pin_file) {
        (Some(value), file) => {
            if let Some(file) = file {
                tracing::info!("{PKCS11_PIN_ENV} is set and overrides pkcs11.pin_file ({file})");
            }
            Passphrase::from_value(value, PKCS11_PIN_ENV)
                .map_err(|e| StartError::Config(e.to_string()))?
        }
        (None, Some(file)) => Passphrase::read_file(&file.path)
            .map_err(|e| StartError::Config(format!("{file}: {e}")))?,
        (None, None) => {
            return Err(StartError::Config(format!(
                "line {}: [pkcs11]: no user PIN for token {:?}: set pkcs11.pin_file or \
                 {PKCS11_PIN_ENV}",
                settings.line, settings.token_label
            )));
        }
    };
    let store =
        Pkcs11KeyStore::open(settings, pin.as_bytes(), config.key_bits).map_err(|e| match e {
            OpenError::Config(m) => StartError::Config(m),
            OpenError::Failed(m) => StartError::Failed(m),
        })?;
    Ok(Box::new(store))
}

/// A build without the feature refuses `[pkcs11]` when parsing the
/// configuration; this covers a [`Config`] built in code.
#[cfg(not(feature = "pkcs11"))]
fn open_token_store(
    _config: &Config,
    settings: &Pkcs11Settings,
    _env_pin: Option<&[u8]>,
) -> Result<Box<dyn KeyStore>, StartError> {
    Err(StartError::Config(format!(
        "line {}: [pkcs11]: this dropzone-eaas was built without the `pkcs11` cargo feature",
        settings.line
    )))
}

/// Serves `listener` until `shutdown` completes. Connections in progress
/// end with the runtime.
pub async fn run(listener: TcpListener, prepared: Prepared, shutdown: impl Future<Output = ()>) {
    let Prepared { service, tls } = prepared;
    let acceptor = tls.map(TlsAcceptor::from);
    crate::daemon::accept_bounded(
        listener,
        MAX_CONNECTIONS,
        "key service",
        shutdown,
        |stream, peer, permit| {
            let service = Arc::clone(&service);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => serve_connection(stream, peer, service, permit).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls)) => serve_connection(tls, peer, service, permit).await,
                            Ok(Err(e)) => {
                                tracing::info!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        },
    )
    .await;
    tracing::info!("stopped accepting connections");
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    service: Arc<Service>,
    _permit: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(
            TokioIo::new(io),
            service_fn(move |req| handle(req, peer, Arc::clone(&service))),
        )
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    service: Arc<Service>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let refuse = |status: u16, message: &str| {
        tracing::warn!(%peer, %method, %path, status, "{message}");
        Ok(to_hyper(Response::text(status, message)))
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return refuse(413, &format!("request body larger than {MAX_BODY} bytes"));
    }
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let body = Limited::new(req.into_body(), MAX_BODY);
    let body = match tokio::time::timeout(READ_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(413, &format!("request body larger than {MAX_BODY} bytes"));
        }
        Ok(Err(_)) => return refuse(400, "could not read the request body"),
        Err(_) => return refuse(408, "request body not received in time"),
    };
    let answered = tokio::task::spawn_blocking(move || {
        service.handle(&Request {
            method: &method,
            path: &path,
            authorization: authorization.as_deref(),
            body: &body,
            peer: Some(peer),
        })
    })
    .await;
    Ok(to_hyper(answered.unwrap_or_else(|e| {
        tracing::error!(%peer, error = %e, "request handler panicked");
        Response::text(500, "internal error")
    })))
}

fn to_hyper(r: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from_owner(r.body)));
    *out.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    for (name, value) in r.headers {
        headers.insert(name, HeaderValue::from_static(value));
    }
    out
}
