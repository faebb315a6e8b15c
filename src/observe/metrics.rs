//! The metrics registry and its Prometheus text exposition (format 0.0.4).
//!
//! A fixed set of families, all named `dropzone_*`. Plain counters are
//! atomics (the byte counters move on every read and write); labelled
//! families are small maps behind a mutex, touched once per event. Label
//! values are `&'static str` from fixed sets, so no client input can grow
//! a family. The text format is written here rather than by a crate: it is
//! a few lines, and [`Metrics::render`] is a pure function of the counts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use super::{Event, EventKind};
use crate::sync::lock;

/// Upper bounds (seconds) of the key-service latency buckets: a local RSA
/// unwrap takes about a millisecond, an EaaS round trip tens of
/// milliseconds, and the client gives up after its request timeout (15 s
/// by default).
const KMS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0,
];

/// A counter family with `N` labels.
struct CounterVec<const N: usize> {
    labels: [&'static str; N],
    values: Mutex<BTreeMap<[&'static str; N], u64>>,
}

impl<const N: usize> CounterVec<N> {
    fn new(labels: [&'static str; N]) -> Self {
        CounterVec {
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn inc(&self, values: [&'static str; N]) {
        *lock(&self.values).entry(values).or_insert(0) += 1;
    }

    fn get(&self, values: [&'static str; N]) -> u64 {
        lock(&self.values).get(&values).copied().unwrap_or(0)
    }
}

/// One histogram's counts.
#[derive(Clone, Default)]
struct HistogramData {
    /// Non-cumulative count per bucket of [`KMS_BUCKETS`], then +Inf.
    buckets: [u64; KMS_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// A histogram family over [`KMS_BUCKETS`] with one label.
struct HistogramVec {
    label: &'static str,
    values: Mutex<BTreeMap<&'static str, HistogramData>>,
}

impl HistogramVec {
    fn observe(&self, value: &'static str, seconds: f64) {
        let mut values = lock(&self.values);
        let h = values.entry(value).or_default();
        let at = KMS_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(KMS_BUCKETS.len());
        h.buckets[at] += 1;
        h.sum += seconds;
        h.count += 1;
    }
}

/// Every metric of the server.
pub struct Metrics {
    sessions_active: AtomicI64,
    logins: CounterVec<2>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    operations: CounterVec<2>,
    kms_duration: HistogramVec,
    kms_errors: CounterVec<2>,
    integrity_failures: AtomicU64,
    scan_rejections: AtomicU64,
    audit_written: AtomicU64,
    audit_dropped: AtomicU64,
    audit_write_errors: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics {
            sessions_active: AtomicI64::new(0),
            logins: CounterVec::new(["method", "result"]),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            operations: CounterVec::new(["op", "result"]),
            kms_duration: HistogramVec {
                label: "op",
                values: Mutex::new(BTreeMap::new()),
            },
            kms_errors: CounterVec::new(["op", "kind"]),
            integrity_failures: AtomicU64::new(0),
            scan_rejections: AtomicU64::new(0),
            audit_written: AtomicU64::new(0),
            audit_dropped: AtomicU64::new(0),
            audit_write_errors: AtomicU64::new(0),
        }
    }

    /// Counts one event.
    pub fn record(&self, e: &Event) {
        match e.kind {
            EventKind::Login => {
                self.sessions_active.fetch_add(1, Ordering::Relaxed);
                self.logins.inc([e.method.unwrap_or("unknown"), "ok"]);
            }
            EventKind::LoginFailed => {
                self.logins.inc([e.method.unwrap_or("unknown"), e.result]);
            }
            EventKind::Logout => {
                self.sessions_active.fetch_sub(1, Ordering::Relaxed);
            }
            EventKind::Rejected => {
                self.scan_rejections.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::Upload
            | EventKind::Download
            | EventKind::Remove
            | EventKind::Rename
            | EventKind::Mkdir
            | EventKind::Rmdir
            | EventKind::Setstat
            | EventKind::Link
            | EventKind::Copy => self.operations.inc([e.kind.name(), e.result]),
        }
    }

    /// File bytes received from clients.
    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// File bytes sent to clients.
    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// A stored file failed its integrity check.
    pub fn integrity_failure(&self) {
        self.integrity_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// One key-service call (`op`: `wrap`, `unwrap`, `ensure_master_key`, `rewrap`,
    /// `rotate_master_key`)
    /// took `took`; `error` names its failure kind (`unavailable`,
    /// `refused`, ...) if it failed.
    pub fn kms_call(&self, op: &'static str, took: Duration, error: Option<&'static str>) {
        self.kms_duration.observe(op, took.as_secs_f64());
        if let Some(kind) = error {
            self.kms_errors.inc([op, kind]);
        }
    }

    /// Lines the audit writer wrote.
    pub(super) fn audit_written(&self, n: u64) {
        self.audit_written.fetch_add(n, Ordering::Relaxed);
    }

    /// An audit line was dropped because the queue was full; returns how
    /// many have been dropped so far.
    pub(super) fn audit_dropped(&self) -> u64 {
        self.audit_dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `n` audit lines could not be written.
    pub(super) fn audit_write_errors(&self, n: u64) {
        self.audit_write_errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Logged-in connections now.
    pub fn sessions_active(&self) -> i64 {
        self.sessions_active.load(Ordering::Relaxed)
    }

    /// How many `op` events ended with `result`.
    pub fn operations(&self, op: &'static str, result: &'static str) -> u64 {
        self.operations.get([op, result])
    }

    /// The registry in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "dropzone_sessions",
            "Logged-in SSH connections.",
            self.sessions_active.load(Ordering::Relaxed),
        );
        counter_vec(
            &mut out,
            "dropzone_logins_total",
            "Login attempts by method and result (ok, denied, or why valid credentials could not log in).",
            &self.logins,
        );
        counter(
            &mut out,
            "dropzone_bytes_received_total",
            "File bytes received from clients (uploads).",
            load(&self.bytes_in),
        );
        counter(
            &mut out,
            "dropzone_bytes_sent_total",
            "File bytes sent to clients (downloads).",
            load(&self.bytes_out),
        );
        counter_vec(
            &mut out,
            "dropzone_operations_total",
            "File operations by type and result (ok or the SFTP status name).",
            &self.operations,
        );
        histogram_vec(
            &mut out,
            "dropzone_kms_request_duration_seconds",
            "Time taken by key-service calls.",
            &self.kms_duration,
        );
        counter_vec(
            &mut out,
            "dropzone_kms_errors_total",
            "Failed key-service calls by operation and kind.",
            &self.kms_errors,
        );
        counter(
            &mut out,
            "dropzone_integrity_failures_total",
            "Stored files that failed their integrity check when read.",
            load(&self.integrity_failures),
        );
        counter(
            &mut out,
            "dropzone_scan_rejections_total",
            "Uploads refused by the upload scanner.",
            load(&self.scan_rejections),
        );
        counter(
            &mut out,
            "dropzone_audit_events_written_total",
            "Lines written to the audit log.",
            load(&self.audit_written),
        );
        counter(
            &mut out,
            "dropzone_audit_events_dropped_total",
            "Audit lines dropped because the writer's queue was full.",
            load(&self.audit_dropped),
        );
        counter(
            &mut out,
            "dropzone_audit_write_errors_total",
            "Audit lines lost because the log file could not be opened or written.",
            load(&self.audit_write_errors),
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    // Help text is ours and has no backslash or newline to escape.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn counter_vec<const N: usize>(out: &mut String, name: &str, help: &str, family: &CounterVec<N>) {
    header(out, name, help, "counter");
    for (values, n) in lock(&family.values).iter() {
        let _ = writeln!(out, "{name}{} {n}", labels(&family.labels, values, None));
    }
}

fn histogram_vec(out: &mut String, name: &str, help: &str, family: &HistogramVec) {
    header(out, name, help, "histogram");
    for (value, h) in lock(&family.values).iter() {
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = KMS_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let l = labels(&[family.label], &[value], Some(&le));
            let _ = writeln!(out, "{name}_bucket{l} {cumulative}");
        }
        let l = labels(&[family.label], &[value], None);
        let _ = writeln!(out, "{name}_sum{l} {}", h.sum);
        let _ = writeln!(out, "{name}_count{l} {}", h.count);
    }
}

/// `{a="x",b="y"}` (with `le` last for histogram buckets), values escaped
/// as the format requires.
fn labels(names: &[&str], values: &[&str], le: Option<&str>) -> String {
    let mut s = String::from("{");
    let pairs = names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, *v))
        .chain(le.map(|le| ("le", le)));
    for (i, (n, v)) in pairs.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{n}=\"{}\"", escape(v));
    }
    s.push('}');
    s
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, result: &'static str) -> Event {
        let mut e = Event::new(kind, 1, "sftp");
        e.result = result;
        e.method = Some("publickey");
        e
    }

    /// Every sample line of `text` as (name with labels, value).
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), v.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn exposition_format_of_every_family() {
        let m = Metrics::new();
        m.record(&event(EventKind::Login, "ok"));
        m.record(&event(EventKind::LoginFailed, "denied"));
        m.record(&event(EventKind::LoginFailed, "denied"));
        m.record(&event(EventKind::Upload, "ok"));
        m.record(&event(EventKind::Remove, "no_such_file"));
        m.record(&event(EventKind::Rejected, "rejected"));
        m.add_bytes_in(1000);
        m.add_bytes_out(7);
        m.integrity_failure();
        m.kms_call("unwrap", Duration::from_millis(3), None);
        m.kms_call("unwrap", Duration::from_secs(20), Some("unavailable"));
        let text = m.render();
        let s = samples(&text);
        let get = |k: &str| {
            s.iter()
                .find(|(n, _)| n == k)
                .unwrap_or_else(|| panic!("{k} missing from\n{text}"))
                .1
        };
        assert_eq!(get("dropzone_sessions"), 1.0);
        assert_eq!(
            get(r#"dropzone_logins_total{method="publickey",result="denied"}"#),
            2.0
        );
        assert_eq!(
            get(r#"dropzone_logins_total{method="publickey",result="ok"}"#),
            1.0
        );
        assert_eq!(get("dropzone_bytes_received_total"), 1000.0);
        assert_eq!(get("dropzone_bytes_sent_total"), 7.0);
        assert_eq!(
            get(r#"dropzone_operations_total{op="upload",result="ok"}"#),
            1.0
        );
        assert_eq!(
            get(r#"dropzone_operations_total{op="remove",result="no_such_file"}"#),
            1.0
        );
        assert_eq!(get("dropzone_scan_rejections_total"), 1.0);
        assert_eq!(get("dropzone_integrity_failures_total"), 1.0);
        // Buckets are cumulative; 3 ms falls in le=0.005, 20 s only in +Inf.
        assert_eq!(
            get(r#"dropzone_kms_request_duration_seconds_bucket{op="unwrap",le="0.0025"}"#),
            0.0
        );
        assert_eq!(
            get(r#"dropzone_kms_request_duration_seconds_bucket{op="unwrap",le="0.005"}"#),
            1.0
        );
        assert_eq!(
            get(r#"dropzone_kms_request_duration_seconds_bucket{op="unwrap",le="15"}"#),
            1.0
        );
        assert_eq!(
            get(r#"dropzone_kms_request_duration_seconds_bucket{op="unwrap",le="+Inf"}"#),
            2.0
        );
        assert_eq!(
            get(r#"dropzone_kms_request_duration_seconds_count{op="unwrap"}"#),
            2.0
        );
        assert!(
            (get(r#"dropzone_kms_request_duration_seconds_sum{op="unwrap"}"#) - 20.003).abs()
                < 1e-9
        );
        assert_eq!(
            get(r#"dropzone_kms_errors_total{op="unwrap",kind="unavailable"}"#),
            1.0
        );
        // Every family has HELP and TYPE, every sample belongs to a declared
        // family, and every name starts with dropzone_.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                declared.push(name.to_owned());
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(name.starts_with("dropzone_"), "{line}");
                assert!(
                    declared.iter().any(|d| name == d
                        || name
                            .strip_prefix(d.as_str())
                            .is_some_and(|s| { ["_bucket", "_sum", "_count"].contains(&s) })),
                    "{line} has no TYPE line before it"
                );
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&["a", "b"], &["x\"y", "back\\slash\nnl"], Some("1")),
            r#"{a="x\"y",b="back\\slash\nnl",le="1"}"#
        );
    }

    #[test]
    fn logout_lowers_the_session_gauge() {
        let m = Metrics::new();
        m.record(&event(EventKind::Login, "ok"));
        m.record(&event(EventKind::Login, "ok"));
        m.record(&event(EventKind::Logout, "ok"));
        assert_eq!(m.sessions_active(), 1);
        assert!(m.render().contains("\ndropzone_sessions 1\n"));
    }
}
