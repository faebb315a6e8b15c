//! The audit log: one JSON object per line, written by a thread of its own.
//!
//! [`AuditLog::write`] formats the line and queues it without waiting: the
//! queue holds [`QUEUE_LINES`] lines, and when it is full (the disk is far
//! slower than the sessions) the line is dropped and counted in
//! `dropzone_audit_events_dropped_total`, so a slow or stuck disk never
//! slows a transfer. The writer appends each batch of queued lines with one
//! write and no fsync (a crash may lose the last lines the kernel had not
//! written). If the file cannot be opened or written, the lines are counted
//! in `dropzone_audit_write_errors_total`, logged, and the file is opened
//! again on the next line (at most once a second).
//!
//! [`AuditLog::reopen`] (SIGHUP) makes the writer close and reopen the path
//! before its next write, so a rotated file is let go of. A new file is
//! created with mode 0600.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Event, Metrics};

/// Lines queued for the writer before new ones are dropped: at about 250
/// bytes a line, 2 MiB of memory, and minutes of events at any rate a
/// healthy disk cannot keep up with.
pub const QUEUE_LINES: usize = 8192;

/// Time between attempts to open a file that could not be opened.
const RETRY_OPEN: Duration = Duration::from_secs(1);

/// The audit line of one event, fields in this order. `user`, `remote`,
/// `path`, `bytes` and `duration_ms` are always present (null when they do
/// not apply); `method`, `to`, `bytes_in`, `bytes_out`, `reason` and
/// `certificate` only when they do.
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    event: &'static str,
    session: u64,
    user: Option<&'a str>,
    remote: Option<String>,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'static str>,
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_out: Option<u64>,
    duration_ms: Option<f64>,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<CertificateLine<'a>>,
}

/// `certificate` of a certificate login's line: `{"key_id", "serial", "ca"}`.
#[derive(Serialize)]
struct CertificateLine<'a> {
    key_id: &'a str,
    serial: u64,
    ca: &'a str,
}

/// The JSON line (with its newline) for `e`: timestamps in RFC 3339 UTC
/// with milliseconds, durations in milliseconds with microsecond precision.
pub fn format_line(e: &Event) -> String {
    let line = Line {
        ts: humantime::format_rfc3339_millis(e.at).to_string(),
        event: e.kind.name(),
        session: e.session,
        user: e.user.as_deref(),
        remote: e.remote.map(|r| r.to_string()),
        protocol: e.protocol,
        method: e.method,
        path: e.path.as_deref(),
        to: e.to.as_deref(),
        bytes: e.bytes,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        duration_ms: e
            .duration
            .map(|d| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0),
        result: e.result,
        reason: e.reason.as_deref(),
        certificate: e.certificate.as_ref().map(|c| CertificateLine {
            key_id: &c.key_id,
            serial: c.serial,
            ca: &c.ca,
        }),
    };
    // Serializing plain strings and numbers cannot fail; a NaN duration
    // (impossible from a Duration) would become null.
    // Client strings (paths, user names, reasons) are escaped so that no
    // control character reaches a terminal showing the file.
    let mut text = super::escape::to_json(&line).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

enum Message {
    Line(String),
    /// Wakes the writer to act on a reopen request.
    Wake,
}

/// The handle on the writer thread.
pub struct AuditLog {
    queue: Option<SyncSender<Message>>,
    reopen: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    thread: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Opens (creating with mode 0600) `path` for appending and starts the
    /// writer. Failing to open it here is an error: a server configured to
    /// keep an audit trail does not start without one.
    pub fn start(path: PathBuf, metrics: Arc<Metrics>) -> io::Result<AuditLog> {
        let file = open(&path)?;
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path,
            file: Some(file),
            last_open_attempt: Instant::now(),
            reopen: reopen.clone(),
            metrics: metrics.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(AuditLog {
            queue: Some(tx),
            reopen,
            metrics,
            thread: Some(thread),
        })
    }

    /// Queues the line for `e`; drops it (and counts it) if the queue is
    /// full.
    pub fn write(&self, e: &Event) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Message::Line(format_line(e))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.metrics.audit_dropped();
                // Logged at the first drop and then at every power of two,
                // so a long stall does not flood the log too.
                if dropped.is_power_of_two() {
                    tracing::error!(
                        dropped,
                        "audit log queue full ({QUEUE_LINES} lines): audit events are being dropped"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => self.metrics.audit_write_errors(1),
        }
    }

    /// Closes and reopens the file before the next write (log rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        if let Some(queue) = &self.queue {
            // A full queue means the writer is busy and sees the flag soon.
            let _ = queue.try_send(Message::Wake);
        }
    }
}

impl Drop for AuditLog {
    /// Lets the writer finish what is queued, so the last events (the
    /// logouts at shutdown) reach the file before the process exits.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

struct Writer {
    path: PathBuf,
    file: Option<File>,
    last_open_attempt: Instant,
    reopen: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// Most lines written with one `write`.
const BATCH_LINES: usize = 256;

impl Writer {
    fn run(mut self, rx: Receiver<Message>) {
        let mut batch = String::new();
        while let Ok(first) = rx.recv() {
            let mut lines = 0u64;
            let mut next = Some(first);
            while let Some(message) = next {
                if let Message::Line(line) = message {
                    batch.push_str(&line);
                    lines += 1;
                }
                next = if lines < BATCH_LINES as u64 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if self.reopen.swap(false, Ordering::Acquire) {
                self.file = None;
                self.open_now();
                if self.file.is_some() {
                    tracing::info!(path = %self.path.display(), "audit log reopened");
                }
            }
            if lines > 0 {
                self.write(&batch, lines);
                batch.clear();
            }
        }
    }

    fn open_now(&mut self) {
        self.last_open_attempt = Instant::now();
        match open(&self.path) {
            Ok(f) => self.file = Some(f),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot open the audit log")
            }
        }
    }

    fn write(&mut self, batch: &str, lines: u64) {
        if self.file.is_none() && self.last_open_attempt.elapsed() >= RETRY_OPEN {
            self.open_now();
        }
        let Some(file) = &mut self.file else {
            self.metrics.audit_write_errors(lines);
            return;
        };
        match file.write_all(batch.as_bytes()) {
            Ok(()) => self.metrics.audit_written(lines),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, lines, "cannot write the audit log");
                self.metrics.audit_write_errors(lines);
                // Try a fresh file descriptor next time.
                self.file = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::EventKind;
    use super::*;
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;

    fn upload() -> Event {
        let mut e = Event::new(EventKind::Upload, 3, "sftp");
        e.at = std::time::UNIX_EPOCH + Duration::from_millis(1_764_198_000_123);
        e.user = Some("alice".into());
        e.remote = Some(SocketAddr::from(([192, 0, 2, 7], 51000)));
        e.path = Some("/in/report \"q1\".pdf".into());
        e.bytes = Some(1_048_576);
        e.duration = Some(Duration::from_micros(12_345_678));
        e
    }

    #[test]
    fn line_format() {
        let line = format_line(&upload());
        assert_eq!(
            line,
            "{\"ts\":\"2025-11-26T23:00:00.123Z\",\"event\":\"upload\",\"session\":3,\
             \"user\":\"alice\",\"remote\":\"192.0.2.7:51000\",\"protocol\":\"sftp\",\
             \"path\":\"/in/report \\\"q1\\\".pdf\",\"bytes\":1048576,\
             \"duration_ms\":12345.678,\"result\":\"ok\"}\n"
        );
    }

    #[test]
    fn optional_fields_appear_only_when_set() {
        let mut e = Event::new(EventKind::LoginFailed, 9, "ssh");
        e.user = Some("mallory\n".into());
        e.method = Some("password");
        e.result = "denied";
        let v: serde_json::Value = serde_json::from_str(&format_line(&e)).unwrap();
        assert_eq!(v["event"], "login_failed");
        assert_eq!(v["user"], "mallory\n");
        assert_eq!(v["method"], "password");
        assert_eq!(v["result"], "denied");
        assert!(v["path"].is_null() && v["bytes"].is_null() && v["duration_ms"].is_null());
        assert!(v.get("to").is_none() && v.get("reason").is_none());
        assert!(v.get("certificate").is_none());
        let ts = v["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z'), "{ts}");
        humantime::parse_rfc3339(ts).unwrap();
    }

    #[test]
    fn a_certificate_login_names_key_id_serial_and_ca() {
        let mut e = Event::new(EventKind::Login, 4, "ssh");
        e.method = Some("certificate");
        e.certificate = Some(super::super::CertificateId {
            key_id: "alice@laptop\u{1b}".into(),
            serial: 42,
            ca: "SHA256:abc".into(),
        });
        let line = format_line(&e);
        assert!(!line.contains('\u{1b}'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["certificate"]["serial"], 42);
        assert_eq!(v["certificate"]["ca"], "SHA256:abc");
        assert!(
            v["certificate"]["key_id"]
                .as_str()
                .unwrap()
                .starts_with("alice@laptop")
        );
    }

    #[test]
    fn writes_lines_reopens_and_flushes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new());
        let log = AuditLog::start(path.clone(), metrics.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        log.write(&upload());
        // Rotation: the old file is renamed; after reopen, lines go to a
        // new file at the configured path.
        let rotated = dir.path().join("audit.jsonl.1");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&path).unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the first line was never written"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        let mut second = upload();
        second.path = Some("/second".into());
        log.write(&second);
        drop(log);
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count(), 1, "{old}");
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains("\"/second\""), "{new}");
        assert!(
            metrics
                .render()
                .contains("dropzone_audit_events_written_total 2\n")
        );
    }

    #[test]
    fn a_file_that_cannot_be_reopened_costs_lines_not_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("audit.jsonl");
        let metrics = Arc::new(Metrics::new());
        let log = AuditLog::start(path.clone(), metrics.clone()).unwrap();
        let count = |name: &str| {
            let text = metrics.render();
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
                .unwrap()
        };
        let wait = |name: &str, n: u64| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while count(name) < n {
                assert!(Instant::now() < deadline, "{name} never reached {n}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // The directory goes away: the reopen fails, the line is lost and
        // counted, and the writer carries on.
        std::fs::remove_dir_all(&sub).unwrap();
        log.reopen();
        log.write(&upload());
        wait("dropzone_audit_write_errors_total", 1);
        // Back again: the next line after the retry interval is written.
        std::fs::create_dir(&sub).unwrap();
        std::thread::sleep(RETRY_OPEN);
        log.write(&upload());
        wait("dropzone_audit_events_written_total", 1);
        drop(log);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let metrics = Arc::new(Metrics::new());
        // A writer that never drains: no thread behind the queue.
        let (tx, _rx) = sync_channel(2);
        let log = AuditLog {
            queue: Some(tx),
            reopen: Arc::new(AtomicBool::new(false)),
            metrics: metrics.clone(),
            thread: None,
        };
        for _ in 0..5 {
            log.write(&upload());
        }
        assert!(
            metrics
                .render()
                .contains("dropzone_audit_events_dropped_total 3\n")
        );
    }
}
