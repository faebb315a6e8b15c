//! Upload scanning and notifications (`[upload]`) with a real server, a
//! real scanner script, OpenSSH sftp and scp (both modes), and a real HTTP
//! listener for notifications.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::harness::*;

/// The EICAR anti-virus test string (harmless; every scanner detects it).
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// What the test scanner says when it finds EICAR (its first stderr line).
const FOUND: &str = "Eicar-Test-Signature FOUND by the test scanner";

/// A scanner in shell: searches the plaintext for EICAR and hashes it in
/// the same pass (tee into a FIFO, so nothing is spooled to disk), records
/// `user path size sha256` in `seen.log` beside itself, and hangs for paths
/// containing "hang".
const SCANNER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
case "$DROPZONE_PATH" in
  *hang*) exec sleep 600 ;;
esac
fifo="$dir/fifo.$$"
mkfifo "$fifo" || exit 70
sha256sum < "$fifo" > "$fifo.sum" &
if tee "$fifo" | grep -q -F 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'; then found=1; else found=0; fi
wait
sum=$(cut -d' ' -f1 < "$fifo.sum")
rm -f "$fifo" "$fifo.sum"
echo "$DROPZONE_USER $DROPZONE_PATH $DROPZONE_SIZE $sum" >> "$dir/seen.log"
if [ "$found" = 1 ]; then
  echo "Eicar-Test-Signature FOUND by the test scanner" >&2
  echo "a second line the client does not need" >&2
  exit 1
fi
exit 0
"#;

/// A directory holding the scanner script; it outlives the server.
struct ScannerDir {
    dir: tempfile::TempDir,
}

impl ScannerDir {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("dropzone-scanner-")
            .tempdir()
            .unwrap();
        let script = dir.path().join("scan.sh");
        std::fs::write(&script, SCANNER).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        ScannerDir { dir }
    }

    fn script(&self) -> PathBuf {
        self.dir.path().join("scan.sh")
    }

    /// The `user path size sha256` lines the scanner recorded.
    fn seen(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("seen.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A server whose uploads go through the test scanner.
fn scanning_server(scanner: &ScannerDir, timeout_secs: u64, extra: &str) -> Server {
    let opts = ServerOptions {
        extra_config: format!(
            "[upload]\nscan_command = [{:?}]\nscan_timeout_secs = {timeout_secs}\n{extra}",
            scanner.script().display().to_string()
        ),
        ..ServerOptions::default()
    };
    Server::start_opts(&[("alice", None)], &opts)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Staged uploads left in a user's directory (there must be none).
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".dropzone-"))
        })
        .collect()
}

#[test]
fn sftp_eicar_is_rejected_with_the_scanners_message_and_clean_files_pass() {
    let scanner = ScannerDir::new();
    let srv = scanning_server(&scanner, 60, "");
    std::fs::write(srv.local_path("eicar.com"), EICAR).unwrap();
    let clean = random_bytes(200_000, fresh_seed());
    std::fs::write(srv.local_path("clean.bin"), &clean).unwrap();

    // A new file: the upload fails, the client sees why, nothing is stored.
    let mut cmd = srv.sftp("alice", "put eicar.com\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains(&format!("upload rejected: {FOUND}")),
        "the scanner's first line reaches the client",
        &cmd,
        &out,
    );
    srv.check(
        !stderr(&out).contains("second line"),
        "only the first line is passed on",
        &cmd,
        &out,
    );
    assert!(!srv.data("alice").join("eicar.com").exists());

    // A clean file passes and reads back.
    let mut cmd = srv.sftp("alice", "put clean.bin\nget clean.bin back.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("clean.bin"), &srv.local_path("back.bin"));

    // Replacing an existing file with EICAR keeps the previous version.
    let mut cmd = srv.sftp("alice", "put eicar.com clean.bin\n");
    srv.run_fail(&mut cmd);
    let mut cmd = srv.sftp("alice", "get clean.bin again.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("clean.bin"), &srv.local_path("again.bin"));

    // Resuming it with EICAR as the tail (an in-place write at the end,
    // which sftp's reput does) is rejected too.
    let mut longer = clean.clone();
    longer.extend_from_slice(EICAR.as_bytes());
    std::fs::write(srv.local_path("longer.bin"), &longer).unwrap();
    let mut cmd = srv.sftp("alice", "reput longer.bin clean.bin\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains(FOUND),
        "the resumed upload is rejected with the scanner's message",
        &cmd,
        &out,
    );
    let mut cmd = srv.sftp("alice", "get clean.bin after-resume.bin\n");
    srv.run(&mut cmd);
    assert_eq!(
        std::fs::read(srv.local_path("after-resume.bin")).unwrap(),
        clean,
        "a rejected resume changed the stored file"
    );
    // A clean resume goes through the checked copy and is stored.
    let mut clean_longer = clean.clone();
    clean_longer.extend_from_slice(b"a clean tail");
    std::fs::write(srv.local_path("clean-longer.bin"), &clean_longer).unwrap();
    let mut cmd = srv.sftp(
        "alice",
        "reput clean-longer.bin clean.bin\nget clean.bin resumed.bin\n",
    );
    srv.run(&mut cmd);
    assert_eq!(
        std::fs::read(srv.local_path("resumed.bin")).unwrap(),
        clean_longer
    );

    assert!(leftovers(&srv.data("alice")).is_empty());
    let log = srv.log();
    assert!(
        log.contains("upload rejected by the scanner") && log.contains("/eicar.com"),
        "the rejection is logged:\n{log}"
    );
}

fn scp_rejects_eicar(mode: &str) {
    let scanner = ScannerDir::new();
    let srv = scanning_server(&scanner, 60, "");
    std::fs::write(srv.local_path("eicar.com"), EICAR).unwrap();
    std::fs::write(srv.local_path("ok.txt"), b"nothing to see here\n").unwrap();

    let mut cmd = srv.scp(
        "alice",
        &[mode],
        "eicar.com",
        srv.remote("alice", "eicar.com"),
    );
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains(FOUND),
        "scp shows the scanner's message",
        &cmd,
        &out,
    );
    assert!(!srv.data("alice").join("eicar.com").exists());

    let mut cmd = srv.scp("alice", &[mode], "ok.txt", srv.remote("alice", "ok.txt"));
    srv.run(&mut cmd);
    let mut cmd = srv.scp(
        "alice",
        &[mode],
        srv.remote("alice", "ok.txt"),
        "ok-back.txt",
    );
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("ok.txt"), &srv.local_path("ok-back.txt"));

    // Over an existing file: rejected, the old content stays.
    let mut cmd = srv.scp("alice", &[mode], "eicar.com", srv.remote("alice", "ok.txt"));
    srv.run_fail(&mut cmd);
    let mut cmd = srv.scp(
        "alice",
        &[mode],
        srv.remote("alice", "ok.txt"),
        "ok-again.txt",
    );
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("ok.txt"), &srv.local_path("ok-again.txt"));
    assert!(leftovers(&srv.data("alice")).is_empty());
}

#[test]
fn scp_sftp_mode_eicar_is_rejected() {
    scp_rejects_eicar("-s");
}

#[test]
fn scp_legacy_mode_eicar_is_rejected() {
    scp_rejects_eicar("-O");
}

#[test]
fn a_multi_mib_upload_reaches_the_scanner_whole() {
    let scanner = ScannerDir::new();
    let srv = scanning_server(&scanner, 60, "");
    let data = random_bytes(5 * 1024 * 1024 + 12_345, fresh_seed());
    std::fs::write(srv.local_path("big.bin"), &data).unwrap();
    let mut cmd = srv.sftp("alice", "mkdir d\nput big.bin d/big.bin\n");
    srv.run(&mut cmd);
    let want = format!("alice /d/big.bin {} {}", data.len(), sha256_hex(&data));
    let seen = scanner.seen();
    assert!(
        seen.contains(&want),
        "the scanner saw {seen:?}, expected a line {want:?}"
    );

    // EICAR at the start of a large file: the scanner stops reading at the
    // match (the server's writes then fail with EPIPE) and its exit status
    // decides.
    let mut infected = EICAR.as_bytes().to_vec();
    infected.extend_from_slice(&data);
    std::fs::write(srv.local_path("infected.bin"), &infected).unwrap();
    let mut cmd = srv.sftp("alice", "put infected.bin d/infected.bin\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains(FOUND),
        "the large infected upload is rejected with the scanner's message",
        &cmd,
        &out,
    );
    assert!(!srv.data("alice").join("d/infected.bin").exists());
}

#[test]
fn a_scanner_timeout_rejects_and_the_server_goes_on() {
    let scanner = ScannerDir::new();
    let srv = scanning_server(&scanner, 5, "");
    std::fs::write(
        srv.local_path("hang.txt"),
        b"the scanner hangs on this name",
    )
    .unwrap();
    std::fs::write(srv.local_path("fine.txt"), b"fine").unwrap();
    let started = Instant::now();
    let mut cmd = srv.sftp("alice", "put hang.txt\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("could not be scanned in time"),
        "the client is told the scan timed out",
        &cmd,
        &out,
    );
    // The scanner sleeps 600 s; being well below that shows it was killed.
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(!srv.data("alice").join("hang.txt").exists());
    let mut cmd = srv.sftp("alice", "put fine.txt\n");
    srv.run(&mut cmd);
    assert!(srv.data("alice").join("fine.txt").exists());
}

// ---------------------------------------------------------------------------
// Notifications

/// One HTTP request received by [`Listener`].
struct Received {
    request_line: String,
    body: Vec<u8>,
}

/// A tiny HTTP/1.1 listener on 127.0.0.1: answers every request with
/// `status` (or never answers, with `None`) and hands the requests over.
fn http_listener(status: Option<u16>) -> (u16, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let tx = tx.clone();
            thread::spawn(move || serve_one(conn, status, tx));
        }
    });
    (port, rx)
}

fn serve_one(conn: TcpStream, status: Option<u16>, tx: mpsc::Sender<Received>) {
    let Some(status) = status else {
        // A black hole: keep the connection open, say nothing.
        thread::sleep(Duration::from_secs(600));
        drop(conn);
        return;
    };
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = tx.send(Received {
        request_line: request_line.trim_end().to_owned(),
        body,
    });
}

#[test]
fn a_json_event_is_posted_after_each_stored_upload() {
    let scanner = ScannerDir::new();
    let (port, events) = http_listener(Some(200));
    let srv = scanning_server(
        &scanner,
        60,
        &format!("notify_url = \"http://127.0.0.1:{port}/hooks/dropzone\"\n"),
    );
    std::fs::write(srv.local_path("eicar.com"), EICAR).unwrap();
    let data = random_bytes(70_000, fresh_seed());
    std::fs::write(srv.local_path("report.bin"), &data).unwrap();
    // The rejected upload first: it must not be announced.
    let mut cmd = srv.sftp("alice", "put eicar.com\n");
    srv.run_fail(&mut cmd);
    let mut cmd = srv.sftp("alice", "put report.bin\n");
    srv.run(&mut cmd);

    let got = events
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no notification arrived\n{}", srv.log_tail(30)));
    assert_eq!(got.request_line, "POST /hooks/dropzone HTTP/1.1");
    let event: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(event["event"], "upload", "{event}");
    assert_eq!(event["user"], "alice", "{event}");
    assert_eq!(event["path"], "/report.bin", "{event}");
    assert_eq!(event["size"], data.len() as u64, "{event}");
    assert!(
        event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{event}"
    );
    assert!(
        event["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{event}"
    );
    // Nothing else was announced (the rejected file in particular).
    assert!(events.recv_timeout(Duration::from_secs(2)).is_err());
}

#[test]
fn a_dead_notify_url_neither_slows_nor_fails_uploads() {
    // The endpoint accepts connections and never answers; each POST would
    // take 30 s and be retried 10 times if transfers waited for it.
    let (port, _events) = http_listener(None);
    let opts = ServerOptions {
        extra_config: format!(
            "[upload]\nnotify_url = \"http://127.0.0.1:{port}/\"\n\
             notify_timeout_secs = 30\nnotify_retries = 10\nnotify_queue = 2\n"
        ),
        ..ServerOptions::default()
    };
    let srv = Server::start_opts(&[("alice", None)], &opts);
    let mut batch = String::new();
    for i in 0..8 {
        std::fs::write(srv.local_path(&format!("f{i}")), format!("file {i}")).unwrap();
        batch.push_str(&format!("put f{i}\n"));
    }
    let started = Instant::now();
    let mut cmd = srv.sftp("alice", &batch);
    srv.run(&mut cmd);
    let took = started.elapsed();
    // Generous for a loaded machine, far below one notification timeout.
    assert!(took < Duration::from_secs(25), "8 uploads took {took:?}");
    for i in 0..8 {
        assert!(srv.data("alice").join(format!("f{i}")).exists());
    }
    // One event is being sent, two wait: the rest were dropped and logged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !srv.log().contains("queue full") {
        assert!(
            Instant::now() < deadline,
            "no dropped-event warning:\n{}",
            srv.log_tail(30)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A scanner that holds every scan of a path containing "hold" until the
/// file `release` appears beside it (or the scan timeout kills it), and
/// passes everything else at once. Each scan that starts leaves
/// `started.<user>.<pid>`; each that ends records `user path` in
/// `seen.log`.
const HOLDING_SCANNER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
cat >/dev/null
touch "$dir/started.$DROPZONE_USER.$$"
case "$DROPZONE_PATH" in
  *hold*) while [ ! -e "$dir/release" ]; do sleep 0.05; done ;;
esac
echo "$DROPZONE_USER $DROPZONE_PATH" >> "$dir/seen.log"
exit 0
"#;

/// The holding scanner's directory, and a server for alice and bob using
/// it with `max_concurrent_scans` slots.
fn holding_server(timeout_secs: u64, slots: usize) -> (ScannerDir, Server) {
    holding_server_with(timeout_secs, slots, "")
}

/// [`holding_server`] with more configuration after `[upload]`'s keys.
fn holding_server_with(timeout_secs: u64, slots: usize, extra: &str) -> (ScannerDir, Server) {
    use std::os::unix::fs::PermissionsExt;
    let scanner = ScannerDir::new();
    std::fs::write(scanner.script(), HOLDING_SCANNER).unwrap();
    std::fs::set_permissions(scanner.script(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = ServerOptions {
        extra_config: format!(
            "[upload]\nscan_command = [{:?}]\nscan_timeout_secs = {timeout_secs}\n\
             max_concurrent_scans = {slots}\n{extra}",
            scanner.script().display().to_string()
        ),
        ..ServerOptions::default()
    };
    let srv = Server::start_opts(&[("alice", None), ("bob", None)], &opts);
    (scanner, srv)
}

impl ScannerDir {
    /// How many scans of `user` have started.
    fn started(&self, user: &str) -> usize {
        let prefix = format!("started.{user}.");
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&prefix)
            })
            .count()
    }

    fn release(&self) {
        std::fs::write(self.dir.path().join("release"), b"").unwrap();
    }

    fn released(&self) -> bool {
        self.dir.path().join("release").exists()
    }
}

/// Opens and writes `path` on `raw`, then sends its CLOSE without waiting
/// for the reply (the scan runs at close). A channel handles one CLOSE of
/// a written file at a time, so uploads meant to close at once each need
/// a channel of their own.
fn start_upload(raw: &mut super::raw_sftp::RawSftp, path: &str) {
    use super::raw_sftp::*;
    let h = raw
        .open(path, SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC)
        .unwrap();
    raw.write(&h, 0, path.as_bytes()).unwrap();
    raw.send(Req::new(FXP_CLOSE).string(&h));
}

#[test]
fn one_users_burst_of_uploads_cannot_hold_every_scan_slot() {
    // Two slots: alice may hold one of them, whatever she sends.
    let (scanner, srv) = holding_server(600, 2);
    // Four uploads closing at once, on four channels of one connection.
    let master = srv.ssh_master("alice");
    let mut alice: Vec<_> = (0..4).map(|_| master.raw_sftp()).collect();
    for (i, raw) in alice.iter_mut().enumerate() {
        start_upload(raw, &format!("/hold{i}"));
    }
    srv.wait_for("alice's first scan to start", || {
        (scanner.started("alice") >= 1).then_some(())
    });

    // Bob's upload is scanned and stored while alice's scan still holds
    // its slot and her other three wait for theirs.
    std::fs::write(srv.local_path("b.txt"), b"bob's file").unwrap();
    let mut cmd = srv.sftp("bob", "put b.txt\n");
    let out = srv.run(&mut cmd);
    srv.check(
        !scanner.released(),
        "alice's scans were released",
        &cmd,
        &out,
    );
    srv.check(
        scanner.seen().contains(&"bob /b.txt".to_owned()),
        "bob's upload was not scanned",
        &cmd,
        &out,
    );
    srv.check(
        srv.data("bob").join("b.txt").exists(),
        "bob's upload was not stored",
        &cmd,
        &out,
    );
    assert_eq!(
        scanner.started("alice"),
        1,
        "alice held more than her share of the slots"
    );

    // Released, alice's uploads all complete, one slot at a time.
    scanner.release();
    for raw in &mut alice {
        let r = raw.recv();
        r.ok()
            .unwrap_or_else(|e| panic!("an upload of alice's: {e:?}"));
    }
    assert_eq!(scanner.started("alice"), 4);
}

#[test]
fn a_close_that_gets_no_scan_slot_in_time_is_rejected_as_busy() {
    use super::raw_sftp::*;
    // One slot. Alice's first scan holds it until the timeout kills it;
    // her second upload waits behind it. Bob's upload, sent after hers,
    // is served first when the slot frees (alice was served last) and
    // holds it past her second upload's deadline.
    let (scanner, srv) = holding_server_with(10, 1, "[audit]\nlog_file = \"audit.jsonl\"\n");
    let master = srv.ssh_master("alice");
    let mut alice = [master.raw_sftp(), master.raw_sftp()];
    start_upload(&mut alice[0], "/hold-a1");
    srv.wait_for("alice's first scan to start", || {
        (scanner.started("alice") >= 1).then_some(())
    });
    start_upload(&mut alice[1], "/a2");
    std::fs::write(srv.local_path("hold-b.txt"), b"bob's file").unwrap();
    let mut bob_cmd = srv.sftp("bob", "put hold-b.txt\n");
    let bob = thread::spawn(move || bob_cmd.output().unwrap());

    for raw in &mut alice {
        let r = raw.recv();
        let e = r.ok().err().unwrap_or_else(|| {
            panic!(
                "an upload of alice's was stored (request {})\n{}",
                r.id,
                srv.log_tail(30)
            )
        });
        assert_eq!(e.code, FX_PERMISSION_DENIED, "{e:?}");
    }
    assert_eq!(
        scanner.started("alice"),
        1,
        "alice's second upload was scanned"
    );
    assert_eq!(
        scanner.started("bob"),
        1,
        "bob's scan did not take the slot"
    );
    // Bob's scan holds on until the timeout ends it too.
    let out = bob.join().unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("in time"),
        "bob's held upload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(alice);

    // What alice was told (the audit's reason is the client's message).
    let audit = srv.path("audit.jsonl");
    let reason = |path: &str| {
        srv.wait_for(&format!("the rejection of {path} in the audit log"), || {
            std::fs::read_to_string(&audit)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["event"] == "rejected" && e["path"] == path)
                .and_then(|e| e["reason"].as_str().map(str::to_owned))
        })
    };
    let busy = reason("/a2");
    assert!(
        busy.contains("the upload scanner is busy; try again later"),
        "{busy}"
    );
    let timed_out = reason("/hold-a1");
    assert!(timed_out.contains("in time"), "{timed_out}");
    assert!(
        srv.log()
            .contains("the scanner stayed busy for the whole scan timeout"),
        "{}",
        srv.log_tail(20)
    );
}
