//! What happened, for operators: the audit trail and the metrics.
//!
//! One path carries every event: the connection handler ([`crate::ssh`]),
//! the SFTP dispatcher ([`crate::sftp`]) and legacy scp ([`crate::scp`])
//! report [`Event`]s to the server's [`Observer`], which counts each one in
//! the [`metrics::Metrics`] registry and, when `[audit] log_file` is set,
//! hands it to the [`audit::AuditLog`] writer thread. Reporting never
//! blocks a transfer: the audit queue is bounded and a full queue drops the
//! line (and counts it) rather than wait.
//!
//! A logged-in connection gets a [`UserSession`]; each of its channels
//! reports through a [`Reporter`] (the session plus the protocol). The
//! session's `logout` event is reported when the last of them is dropped,
//! so it follows every transfer of the session in the log.
//!
//! Paths in events are the ones the user sees (inside their root); no
//! password, key or host path is ever part of an event.

pub mod audit;
pub mod escape;
pub mod http;
pub mod kms;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub use audit::AuditLog;
pub use escape::escape;
pub use metrics::Metrics;

/// The kinds of audit events (the `event` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    /// A login completed (the user's key is unwrapped).
    Login,
    /// Credentials were refused, or valid ones could not complete a login.
    LoginFailed,
    /// A logged-in connection ended.
    Logout,
    /// A file handle opened for writing was closed (or abandoned).
    Upload,
    /// A file handle opened for reading only was closed (or abandoned).
    Download,
    /// A file was removed.
    Remove,
    /// A file or directory was renamed.
    Rename,
    /// A directory was created.
    Mkdir,
    /// A directory was removed.
    Rmdir,
    /// Attributes (mode, times, size) were changed.
    Setstat,
    /// An upload was refused by the upload scanner.
    Rejected,
    /// A symbolic or hard link was made (`to`: the link's target).
    Link,
    /// A server-side copy between two open files (copy-data).
    Copy,
}

impl EventKind {
    /// The name in the audit log and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Login => "login",
            EventKind::LoginFailed => "login_failed",
            EventKind::Logout => "logout",
            EventKind::Upload => "upload",
            EventKind::Download => "download",
            EventKind::Remove => "remove",
            EventKind::Rename => "rename",
            EventKind::Mkdir => "mkdir",
            EventKind::Rmdir => "rmdir",
            EventKind::Setstat => "setstat",
            EventKind::Rejected => "rejected",
            EventKind::Link => "link",
            EventKind::Copy => "copy",
        }
    }
}

/// The `result` of a successful event.
pub const OK: &str = "ok";
/// The `result` of a transfer whose handle was never closed (the session
/// ended first): an upload is then discarded.
pub const ABORTED: &str = "aborted";

/// One thing that happened.
#[derive(Debug, Clone)]
pub struct Event {
    /// When it was reported.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
    /// The connection, numbered from 1 since the server started.
    pub session: u64,
    /// The login name (for `login_failed`, the name that was tried).
    pub user: Option<String>,
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// `"ssh"` (logins), `"sftp"` or `"scp"`.
    pub protocol: &'static str,
    /// Authentication method of `login`/`login_failed`.
    pub method: Option<&'static str>,
    /// The path as the user sees it.
    pub path: Option<String>,
    /// The new path of a `rename`.
    pub to: Option<String>,
    /// Bytes moved (file bytes of a transfer; both directions for `logout`).
    pub bytes: Option<u64>,
    /// `logout`: bytes uploaded and downloaded in the session.
    pub bytes_in: Option<u64>,
    /// See `bytes_in`.
    pub bytes_out: Option<u64>,
    /// Open to close for transfers, request time for the others, session
    /// length for `logout`.
    pub duration: Option<Duration>,
    /// [`OK`] or a short, fixed name of what went wrong (an SFTP status
    /// name, `denied`, `key_service_unavailable`, ...): a metric label.
    pub result: &'static str,
    /// A human-readable detail for failures (the message the client got).
    pub reason: Option<String>,
    /// The certificate of a certificate login (`login`, `login_failed`).
    pub certificate: Option<CertificateId>,
}

/// What the audit trail names an OpenSSH certificate by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateId {
    /// The key id the CA wrote into it (bounded in length).
    pub key_id: String,
    /// Its serial number.
    pub serial: u64,
    /// The SHA-256 fingerprint of the CA key that signed it.
    pub ca: String,
}

impl Event {
    /// An event of `kind` with every optional field empty and result [`OK`].
    pub fn new(kind: EventKind, session: u64, protocol: &'static str) -> Event {
        Event {
            at: SystemTime::now(),
            kind,
            session,
            user: None,
            remote: None,
            protocol,
            method: None,
            path: None,
            to: None,
            bytes: None,
            bytes_in: None,
            bytes_out: None,
            duration: None,
            result: OK,
            reason: None,
            certificate: None,
        }
    }
}

/// Where events go: the metrics registry always (it is cheap and served
/// only when `[metrics] listen` is set), the audit log when configured.
pub struct Observer {
    metrics: Arc<Metrics>,
    audit: Option<AuditLog>,
}

impl Observer {
    /// An observer that counts into `metrics` and writes to `audit`.
    pub fn new(metrics: Arc<Metrics>, audit: Option<AuditLog>) -> Arc<Observer> {
        Arc::new(Observer { metrics, audit })
    }

    /// An observer with a private registry and no audit log (tests, tools).
    pub fn discard() -> Arc<Observer> {
        Observer::new(Arc::new(Metrics::new()), None)
    }

    /// The registry events are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counts `event` and queues it for the audit log.
    pub fn report(&self, event: Event) {
        self.metrics.record(&event);
        if let Some(audit) = &self.audit {
            audit.write(&event);
        }
    }

    /// Asks the audit writer to reopen its file (log rotation, SIGHUP).
    pub fn reopen_audit(&self) {
        match &self.audit {
            Some(audit) => audit.reopen(),
            None => tracing::debug!("SIGHUP: no audit log to reopen"),
        }
    }
}

/// A logged-in connection. Dropped when the connection and every channel
/// it opened are gone, which reports `logout`.
pub struct UserSession {
    observer: Arc<Observer>,
    session: u64,
    user: String,
    remote: SocketAddr,
    method: &'static str,
    started: Instant,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl UserSession {
    /// Reports `login` and returns the session, whose drop reports `logout`.
    pub fn login(
        observer: Arc<Observer>,
        session: u64,
        user: &str,
        remote: SocketAddr,
        method: &'static str,
    ) -> Arc<UserSession> {
        Self::login_with(observer, session, user, remote, method, None)
    }

    /// [`UserSession::login`], naming the certificate the user logged in
    /// with, if any.
    pub fn login_with(
        observer: Arc<Observer>,
        session: u64,
        user: &str,
        remote: SocketAddr,
        method: &'static str,
        certificate: Option<CertificateId>,
    ) -> Arc<UserSession> {
        let mut e = Event::new(EventKind::Login, session, "ssh");
        e.user = Some(user.to_owned());
        e.remote = Some(remote);
        e.method = Some(method);
        e.certificate = certificate;
        observer.report(e);
        Arc::new(UserSession {
            observer,
            session,
            user: user.to_owned(),
            remote,
            method,
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        })
    }

    /// A reporter for one channel of this session.
    pub fn reporter(self: &Arc<Self>, protocol: &'static str) -> Reporter {
        Reporter {
            session: Arc::clone(self),
            protocol,
        }
    }
}

impl Drop for UserSession {
    fn drop(&mut self) {
        let (bytes_in, bytes_out) = (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        );
        let mut e = Event::new(EventKind::Logout, self.session, "ssh");
        e.user = Some(self.user.clone());
        e.remote = Some(self.remote);
        e.method = Some(self.method);
        e.bytes = Some(bytes_in.saturating_add(bytes_out));
        e.bytes_in = Some(bytes_in);
        e.bytes_out = Some(bytes_out);
        e.duration = Some(self.started.elapsed());
        self.observer.report(e);
    }
}

/// Reports a failed login for a connection that has no session.
pub fn login_failed(
    observer: &Observer,
    session: u64,
    user: &str,
    remote: SocketAddr,
    method: &'static str,
    result: &'static str,
) {
    login_failed_with(
        observer,
        session,
        user,
        remote,
        method,
        result,
        Refused::default(),
    );
}

/// What a refused login reports beyond its result.
#[derive(Debug, Default, Clone)]
pub struct Refused {
    /// Why, in words (a certificate's refusal).
    pub reason: Option<String>,
    /// The certificate that was refused.
    pub certificate: Option<CertificateId>,
}

/// [`login_failed`] with a reason and the certificate refused.
pub fn login_failed_with(
    observer: &Observer,
    session: u64,
    user: &str,
    remote: SocketAddr,
    method: &'static str,
    result: &'static str,
    refused: Refused,
) {
    // A client may send any string as its user name; the log keeps a
    // bounded prefix of it.
    let user: String = user.chars().take(MAX_USER_CHARS).collect();
    let mut e = Event::new(EventKind::LoginFailed, session, "ssh");
    e.user = Some(user);
    e.remote = Some(remote);
    e.method = Some(method);
    e.result = result;
    e.reason = refused.reason;
    e.certificate = refused.certificate;
    observer.report(e);
}

/// Longest user name kept from a failed login.
const MAX_USER_CHARS: usize = 128;

/// How one channel (SFTP subsystem or scp exec) reports. Cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    session: Arc<UserSession>,
    protocol: &'static str,
}

/// The result of an operation as events carry it: [`OK`], or a fixed name
/// and the message the client was given.
pub type Outcome = Result<(), (&'static str, String)>;

impl Reporter {
    /// A reporter for tests and tools: a session that counts into a private
    /// registry and writes no audit log.
    pub fn discard() -> Reporter {
        let remote = SocketAddr::from(([127, 0, 0, 1], 0));
        UserSession::login(Observer::discard(), 0, "-", remote, "none").reporter("test")
    }

    /// The observer's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.session.observer.metrics()
    }

    fn event(&self, kind: EventKind, path: &str, outcome: Outcome) -> Event {
        let s = &self.session;
        let mut e = Event::new(kind, s.session, self.protocol);
        e.user = Some(s.user.clone());
        e.remote = Some(s.remote);
        e.path = Some(path.to_owned());
        if let Err((result, reason)) = outcome {
            e.result = result;
            e.reason = Some(reason);
        }
        e
    }

    /// A request on a path (remove, mkdir, rmdir, setstat; rename with `to`).
    pub fn operation(
        &self,
        kind: EventKind,
        path: &str,
        to: Option<&str>,
        took: Duration,
        outcome: Outcome,
    ) {
        let mut e = self.event(kind, path, outcome);
        e.to = to.map(str::to_owned);
        e.duration = Some(took);
        self.session.observer.report(e);
    }

    /// An upload or download: `bytes` moved between open and close.
    pub fn transfer(
        &self,
        kind: EventKind,
        path: &str,
        bytes: u64,
        started: Instant,
        outcome: Outcome,
    ) {
        let mut e = self.event(kind, path, outcome);
        e.bytes = Some(bytes);
        e.duration = Some(started.elapsed());
        self.session.observer.report(e);
    }

    /// The upload scanner refused `path` (`bytes` long) for `reason`. The
    /// upload's own event follows with the failed close.
    pub fn rejected(&self, path: &str, bytes: u64, reason: &str) {
        let mut e = self.event(
            EventKind::Rejected,
            path,
            Err(("rejected", reason.to_owned())),
        );
        e.bytes = Some(bytes);
        self.session.observer.report(e);
    }

    /// Starts an upload or download of `path` (as the user sees it): the
    /// event is reported when the [`Transfer`] is finished, or as
    /// [`ABORTED`] if it is dropped unfinished.
    pub fn transfer_started(&self, kind: EventKind, path: String) -> Transfer {
        Transfer {
            reporter: self.clone(),
            kind,
            path,
            started: Instant::now(),
            received: 0,
            sent: 0,
            finished: false,
        }
    }

    /// File bytes received from the client (counted as they arrive, so
    /// metrics move during a long upload).
    pub fn bytes_in(&self, n: u64) {
        self.session.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.metrics().add_bytes_in(n);
    }

    /// File bytes sent to the client.
    pub fn bytes_out(&self, n: u64) {
        self.session.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.metrics().add_bytes_out(n);
    }

    /// A stored file failed its integrity check.
    pub fn integrity_failure(&self) {
        self.metrics().integrity_failure();
    }
}

/// An open upload or download (see [`Reporter::transfer_started`]).
pub struct Transfer {
    reporter: Reporter,
    kind: EventKind,
    path: String,
    started: Instant,
    received: u64,
    sent: u64,
    finished: bool,
}

impl Transfer {
    /// `n` file bytes arrived from the client.
    pub fn received(&mut self, n: u64) {
        self.received += n;
        self.reporter.bytes_in(n);
    }

    /// `n` file bytes went to the client.
    pub fn sent(&mut self, n: u64) {
        self.sent += n;
        self.reporter.bytes_out(n);
    }

    /// The upload scanner refused this upload: reports `rejected` with the
    /// bytes received so far. The transfer itself is still finished with
    /// its close's outcome.
    pub fn rejected(&self, reason: &str) {
        self.reporter.rejected(&self.path, self.received, reason);
    }

    /// Reports the transfer with `outcome` (the result of its close).
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.report(outcome);
    }

    fn report(&self, outcome: Outcome) {
        // An upload's bytes are the ones received, a download's the ones sent.
        let bytes = match self.kind {
            EventKind::Upload => self.received,
            _ => self.sent,
        };
        self.reporter
            .transfer(self.kind, &self.path, bytes, self.started, outcome);
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if !self.finished {
            self.report(Err((
                ABORTED,
                "the transfer ended before the file was closed".to_owned(),
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_follows_the_last_reporter_with_the_session_bytes() {
        let observer = Observer::discard();
        let remote = SocketAddr::from(([10, 0, 0, 1], 4000));
        let session = UserSession::login(observer.clone(), 7, "alice", remote, "password");
        let sftp = session.reporter("sftp");
        drop(session);
        let m = observer.metrics();
        assert_eq!(m.sessions_active(), 1, "a channel still holds the session");
        sftp.bytes_in(10);
        sftp.bytes_out(5);
        drop(sftp);
        assert_eq!(m.sessions_active(), 0);
        let text = m.render();
        assert!(
            text.contains("dropzone_bytes_received_total 10\n"),
            "{text}"
        );
        assert!(text.contains("dropzone_bytes_sent_total 5\n"), "{text}");
        assert!(
            text.contains("dropzone_logins_total{method=\"password\",result=\"ok\"} 1\n"),
            "{text}"
        );
    }

    /// The upload scanner's hook: a `rejected` line and the metric.
    #[test]
    fn rejections_are_audited_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new());
        let audit = AuditLog::start(path.clone(), metrics.clone()).unwrap();
        let observer = Observer::new(metrics.clone(), Some(audit));
        let remote = SocketAddr::from(([10, 0, 0, 1], 4000));
        let session = UserSession::login(observer.clone(), 3, "bob", remote, "publickey");
        let sftp = session.reporter("sftp");
        let mut upload = sftp.transfer_started(EventKind::Upload, "/in/x.exe".into());
        upload.received(42);
        upload.rejected("scanner: Eicar-Signature FOUND");
        upload.finish(Err(("permission_denied", "upload rejected".into())));
        drop((session, sftp));
        // The last reference: the writer drains its queue and stops.
        drop(observer);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let events: Vec<&str> = lines.iter().map(|v| v["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["login", "rejected", "upload", "logout"], "{text}");
        let r = &lines[1];
        assert_eq!(r["path"], "/in/x.exe");
        assert_eq!(r["bytes"], 42);
        assert_eq!(r["result"], "rejected");
        assert_eq!(r["reason"], "scanner: Eicar-Signature FOUND");
        assert_eq!(r["protocol"], "sftp");
        assert!(
            metrics
                .render()
                .contains("dropzone_scan_rejections_total 1\n")
        );
    }
}
