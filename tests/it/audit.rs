//! The audit log (`[audit] log_file`): one JSON line per event from real
//! OpenSSH sessions, and reopening on SIGHUP for log rotation.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use super::harness::*;

fn audited_server() -> Server {
    Server::start_opts(
        &[("alice", Some(ALICE_PASSWORD)), ("bob", Some(BOB_PASSWORD))],
        &ServerOptions {
            extra_config: "\n[audit]\nlog_file = \"audit.jsonl\"\n".into(),
            ..ServerOptions::default()
        },
    )
}

/// Every line of the audit file, parsed; panics on a line that is not a
/// JSON object.
fn events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"));
            assert!(v.is_object(), "audit line is not an object: {l}");
            v
        })
        .collect()
}

/// Waits until `path` holds `n` logout events; returns all events.
fn wait_for_logouts(srv: &Server, path: &Path, n: usize) -> Vec<Value> {
    srv.wait_for(&format!("{n} logout events in {}", path.display()), || {
        let all = events(path);
        (all.iter().filter(|e| e["event"] == "logout").count() >= n).then_some(all)
    })
}

/// The only event matching `pred`, with a listing of all on failure.
#[track_caller]
fn one<'a>(all: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = all.iter().filter(|e| pred(e)).collect();
    if found.len() != 1 {
        let listing: Vec<String> = all.iter().map(Value::to_string).collect();
        panic!(
            "expected exactly one {what} event, found {}:\n{}",
            found.len(),
            listing.join("\n")
        );
    }
    found[0]
}

fn is(e: &Value, event: &str, path: &str) -> bool {
    e["event"] == event && e["path"] == path
}

/// The fields every event carries, with the right types.
#[track_caller]
fn check_common(e: &Value) {
    let ts = e["ts"].as_str().expect("ts is a string");
    assert!(ts.ends_with('Z'), "ts is not UTC: {e}");
    humantime::parse_rfc3339(ts).unwrap_or_else(|err| panic!("ts is not RFC 3339 ({err}): {e}"));
    assert!(e["session"].is_u64(), "{e}");
    let remote = e["remote"].as_str().expect("remote is a string");
    assert!(remote.starts_with("127.0.0.1:"), "{e}");
    for key in ["user", "path", "bytes", "duration_ms", "result"] {
        assert!(e.get(key).is_some(), "{key} missing: {e}");
    }
}

#[test]
fn every_event_is_one_json_line_with_its_fields() {
    let srv = audited_server();
    let audit = srv.path("audit.jsonl");
    let mode = std::fs::metadata(&audit)
        .expect("the audit log exists from start-up")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "audit log mode {mode:o}");

    let data = random_bytes(300_000, fresh_seed());
    std::fs::write(srv.local_path("up.bin"), &data).unwrap();
    // A key login doing every file operation.
    srv.run(&mut srv.sftp(
        "alice",
        "mkdir d\nput up.bin d/a.bin\nget d/a.bin back.bin\nchmod 600 d/a.bin\n\
         rename d/a.bin d/b.bin\nrm d/b.bin\nrmdir d\n-rm missing.bin\n",
    ));
    assert_same_file(&srv.local_path("up.bin"), &srv.local_path("back.bin"));
    // A password login, and a refused password.
    srv.run(&mut srv.sftp_password("bob", BOB_PASSWORD, "mkdir b\n"));
    srv.run_fail(&mut srv.sftp_password("alice", "wrong-password", "ls\n"));

    // Each session's lines come before its logout; the refused login has
    // no logout, so it is waited for too.
    let all = srv.wait_for("two logouts and the failed login", || {
        let all = events(&audit);
        let count = |event: &str| all.iter().filter(|e| e["event"] == event).count();
        (count("logout") >= 2 && count("login_failed") >= 1).then_some(all)
    });
    let size = data.len() as u64;

    let login = one(&all, "alice login", |e| {
        e["event"] == "login" && e["user"] == "alice"
    });
    check_common(login);
    assert_eq!(login["method"], "publickey", "{login}");
    assert_eq!(login["result"], "ok", "{login}");
    let session = login["session"].clone();

    let mkdir = one(&all, "mkdir /d", |e| is(e, "mkdir", "/d"));
    let upload = one(&all, "upload", |e| is(e, "upload", "/d/a.bin"));
    let download = one(&all, "download", |e| is(e, "download", "/d/a.bin"));
    let setstat = one(&all, "setstat", |e| is(e, "setstat", "/d/a.bin"));
    let rename = one(&all, "rename", |e| is(e, "rename", "/d/a.bin"));
    let remove = one(&all, "remove", |e| is(e, "remove", "/d/b.bin"));
    let rmdir = one(&all, "rmdir", |e| is(e, "rmdir", "/d"));
    for e in [mkdir, upload, download, setstat, rename, remove, rmdir] {
        check_common(e);
        assert_eq!(e["user"], "alice", "{e}");
        assert_eq!(e["session"], session, "{e}");
        assert_eq!(e["protocol"], "sftp", "{e}");
        assert_eq!(e["result"], "ok", "{e}");
        assert!(e["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
    }
    assert_eq!(upload["bytes"], size, "{upload}");
    assert_eq!(download["bytes"], size, "{download}");
    assert_eq!(rename["to"], "/d/b.bin", "{rename}");

    // A failed operation carries the status name and the client's message.
    let failed = one(&all, "failed remove", |e| is(e, "remove", "/missing.bin"));
    assert_eq!(failed["result"], "no_such_file", "{failed}");
    assert!(failed["reason"].as_str().is_some(), "{failed}");

    let logout = one(&all, "alice logout", |e| {
        e["event"] == "logout" && e["session"] == session
    });
    check_common(logout);
    assert_eq!(logout["user"], "alice");
    assert_eq!(logout["bytes_in"], size, "{logout}");
    assert_eq!(logout["bytes_out"], size, "{logout}");
    assert_eq!(logout["bytes"], 2 * size, "{logout}");
    assert!(
        logout["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{logout}"
    );

    let bob = one(&all, "bob login", |e| {
        e["event"] == "login" && e["user"] == "bob"
    });
    assert_eq!(bob["method"], "password", "{bob}");
    one(&all, "bob mkdir", |e| {
        is(e, "mkdir", "/b") && e["user"] == "bob"
    });
    one(&all, "bob logout", |e| {
        e["event"] == "logout" && e["user"] == "bob"
    });

    let refused = one(&all, "login_failed", |e| e["event"] == "login_failed");
    check_common(refused);
    assert_eq!(refused["user"], "alice", "{refused}");
    assert_eq!(refused["method"], "password", "{refused}");
    assert_eq!(refused["result"], "denied", "{refused}");

    // Every line is in time order within a session: logout last.
    let alice: Vec<&Value> = all.iter().filter(|e| e["session"] == session).collect();
    assert_eq!(alice.first().map(|e| &e["event"]), Some(&"login".into()));
    assert_eq!(alice.last().map(|e| &e["event"]), Some(&"logout".into()));

    // Never a secret: no password appears anywhere in the log.
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in [ALICE_PASSWORD, BOB_PASSWORD, "wrong-password"] {
        assert!(!text.contains(secret), "the audit log contains a password");
    }
}

#[test]
fn scp_transfers_are_audited() {
    let srv = audited_server();
    let audit = srv.path("audit.jsonl");
    let data = random_bytes(100_000, fresh_seed());
    std::fs::write(srv.local_path("s.bin"), &data).unwrap();
    // Legacy scp (-O): the exec path.
    srv.run(&mut srv.scp("alice", &["-O"], "s.bin", srv.remote("alice", "s.bin")));
    srv.run(&mut srv.scp(
        "alice",
        &["-O"],
        srv.remote("alice", "s.bin"),
        srv.local_path("s-back.bin"),
    ));
    // A recursive upload creates its directory: a mkdir event.
    std::fs::create_dir(srv.local_path("tree")).unwrap();
    std::fs::write(srv.local_path("tree/t.txt"), b"tree file\n").unwrap();
    srv.run(&mut srv.scp(
        "alice",
        &["-O", "-r"],
        srv.local_path("tree"),
        srv.remote("alice", "/"),
    ));
    let all = wait_for_logouts(&srv, &audit, 3);
    let mkdir = one(&all, "scp mkdir", |e| is(e, "mkdir", "/tree"));
    assert_eq!(mkdir["result"], "ok", "{mkdir}");
    assert_eq!(mkdir["protocol"], "scp", "{mkdir}");
    let t = one(&all, "scp upload in the tree", |e| {
        is(e, "upload", "/tree/t.txt")
    });
    assert_eq!(t["bytes"], 10, "{t}");
    let up = one(&all, "scp upload", |e| is(e, "upload", "/s.bin"));
    let down = one(&all, "scp download", |e| is(e, "download", "/s.bin"));
    for e in [up, down] {
        check_common(e);
        assert_eq!(e["protocol"], "scp", "{e}");
        assert_eq!(e["bytes"], data.len() as u64, "{e}");
        assert_eq!(e["result"], "ok", "{e}");
    }
}

#[test]
fn sighup_reopens_the_log_for_rotation() {
    let srv = audited_server();
    let audit = srv.path("audit.jsonl");
    let rotated = srv.path("audit.jsonl.1");
    srv.run(&mut srv.sftp("alice", "mkdir before\n"));
    wait_for_logouts(&srv, &audit, 1);

    std::fs::rename(&audit, &rotated).unwrap();
    srv.signal(rustix::process::Signal::HUP);
    srv.wait_for("the audit log to be reopened", || {
        srv.log().contains("audit log reopened").then_some(())
    });
    assert!(audit.exists(), "no new audit file after SIGHUP");
    let mode = std::fs::metadata(&audit).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "reopened audit log mode {mode:o}");

    srv.run(&mut srv.sftp("alice", "mkdir after\n"));
    let new = wait_for_logouts(&srv, &audit, 1);
    let old = events(&rotated);
    one(&old, "mkdir before (old file)", |e| {
        is(e, "mkdir", "/before")
    });
    one(&new, "mkdir after (new file)", |e| is(e, "mkdir", "/after"));
    assert!(
        !old.iter().any(|e| is(e, "mkdir", "/after")),
        "an event after SIGHUP went to the rotated file"
    );
    assert!(
        !new.iter().any(|e| is(e, "mkdir", "/before")),
        "an event before SIGHUP is in the new file"
    );
    // The server is still up and serving.
    srv.run(&mut srv.sftp("alice", "ls\n"));
}

#[test]
fn a_login_the_key_service_cannot_complete_is_audited_and_counted() {
    // A port nothing listens on: the key service is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let kms = format!(
        "[kms]\nbackend = \"eaas\"\nkey_cache_ttl_secs = 0\n\n[kms.eaas]\n\
         url = \"http://127.0.0.1:{port}\"\nsecret_path = \"dropzone/rsa\"\nsecret_version = \"1\"\n"
    );
    let srv = Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            kms_config: Some(kms),
            extra_config: "\n[audit]\nlog_file = \"audit.jsonl\"\n\
                           [metrics]\nlisten = \"127.0.0.1:0\"\n"
                .into(),
            ..ServerOptions::default()
        },
    );
    srv.run_fail(&mut srv.sftp("alice", "ls\n"));
    let audit = srv.path("audit.jsonl");
    let all = srv.wait_for("a login_failed event", || {
        let all = events(&audit);
        all.iter()
            .any(|e| e["event"] == "login_failed")
            .then_some(all)
    });
    let failed = one(&all, "login_failed", |e| e["event"] == "login_failed");
    check_common(failed);
    assert_eq!(failed["user"], "alice", "{failed}");
    assert_eq!(failed["method"], "publickey", "{failed}");
    assert_eq!(failed["result"], "key_service_unavailable", "{failed}");
    assert!(
        !all.iter().any(|e| e["event"] == "login"),
        "a login that failed closed was logged as a login"
    );

    let (_, text) = srv.http_get(srv.metrics_port(), "/metrics");
    for want in [
        "dropzone_logins_total{method=\"publickey\",result=\"key_service_unavailable\"} 1\n",
        "dropzone_kms_errors_total{op=\"ensure_master_key\",kind=\"unavailable\"} 1\n",
        "dropzone_kms_errors_total{op=\"wrap\",kind=\"unavailable\"} 1\n",
        "dropzone_sessions 0\n",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}

#[test]
fn a_scanner_rejection_is_audited_and_counted() {
    use std::os::unix::fs::PermissionsExt;
    // A scanner that reads the whole upload and rejects it.
    let scanner = tempfile::Builder::new()
        .prefix("dropzone-audit-scanner-")
        .tempdir()
        .unwrap();
    let script = scanner.path().join("reject.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat > /dev/null\necho 'test scanner: not accepted' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let srv = Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            extra_config: format!(
                "\n[upload]\nscan_command = [{:?}]\n[audit]\nlog_file = \"audit.jsonl\"\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n",
                script.display().to_string()
            ),
            ..ServerOptions::default()
        },
    );
    let size = 50_000u64;
    std::fs::write(
        srv.local_path("r.bin"),
        random_bytes(size as usize, fresh_seed()),
    )
    .unwrap();
    srv.run_fail(&mut srv.sftp("alice", "put r.bin\n"));
    srv.run_fail(&mut srv.scp("alice", &["-O"], "r.bin", srv.remote("alice", "scp.bin")));

    let audit = srv.path("audit.jsonl");
    let all = wait_for_logouts(&srv, &audit, 2);
    for (path, protocol) in [("/r.bin", "sftp"), ("/scp.bin", "scp")] {
        let rejected = one(&all, "rejected", |e| is(e, "rejected", path));
        check_common(rejected);
        assert_eq!(rejected["protocol"], protocol, "{rejected}");
        assert_eq!(rejected["result"], "rejected", "{rejected}");
        assert_eq!(rejected["bytes"], size, "{rejected}");
        let reason = rejected["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("test scanner: not accepted"), "{rejected}");
        // The upload itself is reported as failed, after the rejection.
        let upload = one(&all, "rejected upload", |e| is(e, "upload", path));
        assert_ne!(upload["result"], "ok", "{upload}");
        let at = |e: &Value| all.iter().position(|x| x == e).unwrap();
        assert!(at(rejected) < at(upload), "rejected after its upload");
    }
    let (_, text) = srv.http_get(srv.metrics_port(), "/metrics");
    assert!(
        text.contains("dropzone_scan_rejections_total 2\n"),
        "scan rejections not counted:\n{text}"
    );
}

/// A scanner that refuses paths containing "reject" with a first stderr
/// line that tries to colour the operator's terminal.
const HOSTILE_SCANNER: &str = "#!/bin/sh
cat >/dev/null
case \"$DROPZONE_PATH\" in
  *reject*) printf 'FOUND \\033[31mred\\nFORGED-LINE second\\n' >&2; exit 1 ;;
esac
exit 0
";

#[test]
fn client_strings_reach_the_log_and_the_audit_file_escaped() {
    use super::raw_sftp::*;
    let scanner_dir = tempfile::tempdir().unwrap();
    let scanner = scanner_dir.path().join("scan.sh");
    std::fs::write(&scanner, HOSTILE_SCANNER).unwrap();
    std::fs::set_permissions(&scanner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let srv = Server::start_opts(
        &[("alice", Some(ALICE_PASSWORD))],
        &ServerOptions {
            extra_config: format!(
                "\n[audit]\nlog_file = \"audit.jsonl\"\n[upload]\nscan_command = [{:?}]\n",
                scanner.display().to_string()
            ),
            ..ServerOptions::default()
        },
    );
    // A newline that would start a forged line, a CSI that would colour
    // the terminal (ESC [ and the C1 form), a bidi override.
    let stored = "/up\nFORGED-LINE \x1b[31mred\u{9b}2J\u{202e}txt";
    let rejected = "/reject\nFORGED-LINE \x1b[31m";
    let mut raw = srv.raw_sftp("alice");
    for (path, accepted) in [(stored, true), (rejected, false)] {
        let h = raw
            .open(path, SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC)
            .unwrap();
        raw.write(&h, 0, b"data").unwrap();
        assert_eq!(raw.close(&h).is_ok(), accepted, "{path:?}");
    }
    drop(raw);
    let exec = srv.run_any(&mut srv.ssh("alice", &["ls\nFORGED-LINE \x1b[31mred"]));
    assert!(!exec.status.success(), "an exec that is not scp ran");

    let log = srv.wait_for("the upload, the rejection and the exec in the log", || {
        let log = srv.log();
        (log.contains("upload stored")
            && log.contains("upload rejected")
            && log.contains("exec refused"))
        .then_some(log)
    });
    assert!(
        !log.contains('\x1b') && !log.contains('\u{9b}') && !log.contains('\u{202e}'),
        "a raw escape sequence reached the server log:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED-LINE")),
        "a client string forged a log line:\n{log}"
    );
    assert!(
        log.contains("\\x1b[31m"),
        "the client strings are not in the log at all:\n{log}"
    );

    // The audit file: the same characters only as JSON escapes, and the
    // values decode to exactly what the client sent.
    let audit = srv.path("audit.jsonl");
    let all = wait_for_logouts(&srv, &audit, 2);
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains('\x1b') && !text.contains('\u{9b}') && !text.contains('\u{202e}'),
        "a raw control character in the audit file:\n{text}"
    );
    assert!(
        all.iter()
            .any(|e| e["event"] == "upload" && e["path"] == stored),
        "the upload's path does not decode to what the client sent:\n{text}"
    );
}
