//! The Prometheus endpoint (`[metrics] listen`): scraped over HTTP before
//! and after real transfers, counters move by exactly what was done.

use super::harness::*;

/// The value of the sample `name` (with its labels, as written in the
/// exposition) in `text`, if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok())?
    })
}

#[track_caller]
fn value(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("{name} is not in the scrape:\n{text}"))
}

#[test]
fn scrape_counts_sessions_logins_bytes_operations_kms_and_integrity() {
    let srv = Server::start_opts(
        &[("alice", Some(ALICE_PASSWORD))],
        &ServerOptions {
            extra_config: "\n[metrics]\nlisten = \"127.0.0.1:0\"\n".into(),
            ..ServerOptions::default()
        },
    );
    let port = srv.metrics_port();

    let (status, before) = srv.http_get(port, "/metrics");
    assert_eq!(status, 200, "{before}");
    for line in before.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("dropzone_"), "{line}");
    }
    assert_eq!(value(&before, "dropzone_sessions"), 0.0);
    assert_eq!(value(&before, "dropzone_bytes_received_total"), 0.0);
    assert_eq!(value(&before, "dropzone_bytes_sent_total"), 0.0);
    assert_eq!(value(&before, "dropzone_integrity_failures_total"), 0.0);
    assert_eq!(value(&before, "dropzone_scan_rejections_total"), 0.0);
    // The master key was made ready at start-up through the wrapper.
    assert_eq!(
        value(
            &before,
            r#"dropzone_kms_request_duration_seconds_count{op="ensure_master_key"}"#
        ),
        1.0
    );
    assert!(before.contains("# TYPE dropzone_kms_request_duration_seconds histogram"));

    let (a, b) = (300_000usize, 70_000usize);
    let seed = fresh_seed();
    std::fs::write(srv.local_path("a.bin"), random_bytes(a, seed)).unwrap();
    std::fs::write(srv.local_path("b.bin"), random_bytes(b, seed ^ 1)).unwrap();
    srv.run(&mut srv.sftp(
        "alice",
        "put a.bin\nput b.bin\nget a.bin a-back.bin\nrm b.bin\nmkdir d\n-rmdir missing\n",
    ));
    srv.run_fail(&mut srv.sftp_password("alice", "wrong", "ls\n"));
    srv.run(&mut srv.sftp_password("alice", ALICE_PASSWORD, "ls\n"));

    // Sessions end shortly after the clients exit.
    let after = srv.wait_for("the sessions to end", || {
        let (_, text) = srv.http_get(port, "/metrics");
        (sample(&text, "dropzone_sessions") == Some(0.0)).then_some(text)
    });
    assert_eq!(
        value(&after, "dropzone_bytes_received_total"),
        (a + b) as f64
    );
    assert_eq!(value(&after, "dropzone_bytes_sent_total"), a as f64);
    assert_eq!(
        value(
            &after,
            r#"dropzone_logins_total{method="publickey",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"dropzone_logins_total{method="password",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"dropzone_logins_total{method="password",result="denied"}"#
        ),
        1.0
    );
    for (op, result, n) in [
        ("upload", "ok", 2.0),
        ("download", "ok", 1.0),
        ("remove", "ok", 1.0),
        ("mkdir", "ok", 1.0),
        ("rmdir", "no_such_file", 1.0),
    ] {
        let name = format!(r#"dropzone_operations_total{{op="{op}",result="{result}"}}"#);
        assert_eq!(value(&after, &name), n, "{name}");
    }
    // Alice's first login created her key (a wrap); with no key cache, the
    // second login unwrapped it.
    assert!(
        value(
            &after,
            r#"dropzone_kms_request_duration_seconds_count{op="wrap"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            r#"dropzone_kms_request_duration_seconds_count{op="unwrap"}"#
        ) >= 1.0
    );
    assert!(!after.contains("dropzone_kms_errors_total{"), "{after}");

    // A damaged file: the download fails and is counted.
    let stored = srv.data("alice").join("a.bin");
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&stored, &bytes).unwrap();
    srv.run_fail(&mut srv.sftp("alice", "get a.bin bad.bin\n"));
    let text = srv.wait_for("the integrity failure to be counted", || {
        let (_, text) = srv.http_get(port, "/metrics");
        (sample(&text, "dropzone_sessions") == Some(0.0)).then_some(text)
    });
    assert_eq!(value(&text, "dropzone_integrity_failures_total"), 1.0);
    assert_eq!(
        value(
            &text,
            r#"dropzone_operations_total{op="download",result="failure"}"#
        ),
        1.0
    );

    // Only /metrics is served.
    let (status, _) = srv.http_get(port, "/");
    assert_eq!(status, 404);
    let (status, _) = srv.http_get(port, "/metrics/other");
    assert_eq!(status, 404);
}
