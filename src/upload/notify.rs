//! Upload notifications: a JSON event POSTed to `[upload] notify_url` after
//! each stored upload.
//!
//! Transfers never wait for it: events go into a bounded queue that one
//! background thread drains. A full queue drops the event (counted and
//! logged). A failed POST (no connection, timeout, non-2xx reply) is
//! retried with doubling pauses; after the last retry the event is dropped
//! and logged. Events still queued when the server stops are lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use reqwest::blocking::Client;
use serde::Serialize;
use tracing::{debug, warn};

/// Pause before the first retry; it doubles after each failure.
const FIRST_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between two attempts.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(60);
/// Log a dropped event the first time and then once per this many, so a
/// dead endpoint under load does not flood the log.
const DROP_LOG_EVERY: u64 = 100;

/// The JSON body of one notification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UploadEvent {
    /// Always `"upload"`.
    pub event: &'static str,
    /// The user's login name.
    pub user: String,
    /// The file's path as the user sees it.
    pub path: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// When the upload was stored, RFC 3339 UTC.
    pub time: String,
    /// The client's address (`ip:port`).
    pub remote: Option<String>,
}

impl UploadEvent {
    /// An event for an upload stored now.
    pub fn new(user: &str, path: &str, size: u64, remote: Option<String>) -> Self {
        UploadEvent {
            event: "upload",
            user: user.to_owned(),
            path: path.to_owned(),
            size,
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            remote,
        }
    }
}

/// How to reach the notification endpoint.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// The `http` or `https` URL events are POSTed to.
    pub url: String,
    /// Events waiting to be sent at most.
    pub queue: usize,
    /// Time allowed for one POST.
    pub timeout: Duration,
    /// Further attempts after a failure.
    pub retries: u32,
}

/// The queue of notifications and its sending thread.
pub struct Notifier {
    tx: SyncSender<UploadEvent>,
    dropped: AtomicU64,
}

impl Notifier {
    /// Builds the HTTP client and starts the sending thread.
    pub fn start(settings: NotifySettings) -> Result<Arc<Notifier>, String> {
        let (tx, rx) = mpsc::sync_channel(settings.queue.max(1));
        // reqwest's blocking client must be built and dropped outside the
        // async runtime: it lives on its own thread from the start.
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("upload-notify".into())
            .spawn(move || match http_client(&settings) {
                Ok(client) => {
                    let _ = ready_tx.send(Ok(()));
                    run(client, settings, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| format!("cannot start the notification thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the notification thread stopped at start-up".to_owned())??;
        Ok(Arc::new(Notifier {
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Queues `event`; never blocks. A full queue drops it.
    pub fn send(&self, event: UploadEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(DROP_LOG_EVERY) {
                    warn!(
                        dropped_total = n,
                        user = %event.user,
                        path = %event.path,
                        "upload notification queue full; event dropped"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(
                    dropped_total = n,
                    "upload notification thread gone; event dropped"
                );
            }
        }
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The sending thread: one event at a time, in order.
fn run(client: Client, settings: NotifySettings, rx: Receiver<UploadEvent>) {
    while let Ok(event) = rx.recv() {
        let mut pause = FIRST_RETRY_PAUSE;
        let mut attempt = 0;
        loop {
            match post(&client, &settings.url, &event) {
                Ok(()) => {
                    debug!(user = %event.user, path = %event.path, "upload notification sent");
                    break;
                }
                Err(e) if attempt < settings.retries => {
                    debug!(error = %e, attempt, "upload notification failed; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                    attempt += 1;
                }
                Err(e) => {
                    warn!(
                        error = %e,
                        user = %event.user,
                        path = %event.path,
                        attempts = attempt + 1,
                        "upload notification could not be delivered; dropped"
                    );
                    break;
                }
            }
        }
    }
}

fn post(client: &Client, url: &str, event: &UploadEvent) -> Result<(), String> {
    // Control characters in the path reach the receiver only as `\u`
    // escapes (the decoded value is unchanged).
    let body = crate::observe::escape::to_json(event)
        .map_err(|e| e.to_string())?
        .into_bytes();
    let reply = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .map_err(|e| error_chain(&e))?;
    let status = reply.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A blocking client on rustls with the ring provider; `https` URLs are
/// verified against the system's roots. No proxies, no redirects.
fn http_client(settings: &NotifySettings) -> Result<Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upload.notify_url: TLS: {e}"))?;
    let https = settings.url.starts_with("https://");
    let tls = if https {
        let verifier = rustls_platform_verifier::Verifier::new(provider)
            .map_err(|e| format!("upload.notify_url: the system's certificate roots: {e}"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .http1_only()
        .connect_timeout(settings.timeout)
        .timeout(settings.timeout)
        .user_agent(concat!("dropzone/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            format!(
                "upload.notify_url: cannot build the HTTP client: {}",
                error_chain(&e)
            )
        })
}
