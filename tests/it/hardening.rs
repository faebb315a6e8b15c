//! The SSH surface and abuse controls: ssh-audit against the default
//! algorithms, bans after repeated failures, connection and session caps,
//! timeouts, the handle cap, and a client that stops reading.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::harness::*;

/// How long to poll for something that should happen "soon" on a loaded
/// machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn require(program: &str, probe: &[&str], hint: &str) {
    let found = Command::new(program)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{program} is required for this test: {hint}");
}

fn require_paramiko() {
    require(
        "python3",
        &["-c", "import paramiko"],
        "pip install paramiko",
    );
}

fn start(extra_config: &str) -> Server {
    Server::start_opts(
        &[("alice", Some(ALICE_PASSWORD)), ("bob", Some(BOB_PASSWORD))],
        &ServerOptions {
            extra_config: extra_config.to_owned(),
            ..ServerOptions::default()
        },
    )
}

// --- ssh-audit -----------------------------------------------------------

/// The one warning the default configuration is allowed: the classical
/// curve25519 key exchanges, kept so that OpenSSH before 9.9 (no ML-KEM)
/// can connect, are not post-quantum. `ssh_audit_pq_only_profile_is_clean`
/// shows that dropping them leaves no warning at all.
const ALLOWED_DEFAULT_WARNINGS: &[(&str, &str)] = &[
    (
        "curve25519-sha256",
        "does not provide protection against post-quantum attacks",
    ),
    (
        "curve25519-sha256@libssh.org",
        "does not provide protection against post-quantum attacks",
    ),
];

/// Runs ssh-audit (JSON, no connection-rate test: it opens dozens of
/// connections at once, which the unauthenticated-connection cap is there
/// to refuse) and returns its findings as `(level, algorithm, note)` with
/// level `fail` or `warn`, plus the text report for failure messages.
fn ssh_audit(srv: &Server) -> (Vec<(String, String, String)>, serde_json::Value, String) {
    require(
        "ssh-audit",
        &["--help"],
        "pip install 'ssh-audit>=3.9' (.ci/run does)",
    );
    let port = srv.port.to_string();
    let mut text_cmd = Command::new("ssh-audit");
    text_cmd.args(["--skip-rate-test", "-p", &port, "127.0.0.1"]);
    let text = stdout(&srv.run_any(&mut text_cmd));
    let mut cmd = Command::new("ssh-audit");
    cmd.args(["-j", "--skip-rate-test", "-p", &port, "127.0.0.1"]);
    let out = srv.run_any(&mut cmd);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}",
            srv.report(&format!("ssh-audit -j printed no JSON: {e}"), &cmd, &out)
        )
    });
    let mut findings = Vec::new();
    for section in ["kex", "key", "enc", "mac"] {
        let entries = json[section].as_array().cloned().unwrap_or_default();
        for entry in entries {
            let algorithm = entry["algorithm"].as_str().unwrap_or("?").to_owned();
            for level in ["fail", "warn"] {
                for note in entry["notes"][level]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    findings.push((
                        level.to_owned(),
                        algorithm.clone(),
                        note.as_str().unwrap_or("?").to_owned(),
                    ));
                }
            }
        }
    }
    let cves = json["cves"].as_array().map_or(0, Vec::len);
    if cves > 0 {
        findings.push(("fail".into(), "cves".into(), json["cves"].to_string()));
    }
    (findings, json, text)
}

fn algorithms(json: &serde_json::Value, section: &str) -> Vec<String> {
    json[section]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["algorithm"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ssh_audit_default_config_has_no_failure_and_no_unexpected_warning() {
    let srv = Server::start();
    let (findings, json, text) = ssh_audit(&srv);
    let unexpected: Vec<_> = findings
        .iter()
        .filter(|(level, alg, note)| {
            level == "fail"
                || !ALLOWED_DEFAULT_WARNINGS
                    .iter()
                    .any(|(a, n)| a == alg && n == note)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "ssh-audit findings on the default configuration: {unexpected:#?}\n--- ssh-audit ---\n{text}"
    );
    // The audit really saw the server: strict kex (Terrapin) is advertised,
    // the modern host keys are offered and the weak ones are not.
    let kex = algorithms(&json, "kex");
    assert!(
        kex.iter().any(|k| k == "kex-strict-s-v00@openssh.com"),
        "no strict kex: {kex:?}\n{text}"
    );
    assert!(kex.iter().any(|k| k == "mlkem768x25519-sha256"), "{kex:?}");
    let keys = algorithms(&json, "key");
    assert!(keys.iter().any(|k| k == "ssh-ed25519"), "{keys:?}\n{text}");
    assert!(keys.iter().any(|k| k == "rsa-sha2-512"), "{keys:?}");
    for weak in ["ssh-rsa", "ecdsa-sha2-nistp256"] {
        assert!(!keys.iter().any(|k| k == weak), "{weak} offered: {keys:?}");
    }
    let macs = algorithms(&json, "mac");
    assert!(
        macs.iter().all(|m| m.ends_with("-etm@openssh.com")),
        "{macs:?}"
    );
    eprintln!("--- ssh-audit (default configuration) ---\n{text}");
}

#[test]
fn ssh_audit_pq_only_profile_is_clean() {
    let srv = start("[ssh]\nkex = [\"mlkem768x25519-sha256\"]\n");
    let (findings, json, text) = ssh_audit(&srv);
    assert!(
        findings.is_empty(),
        "ssh-audit findings with kex = [\"mlkem768x25519-sha256\"]: {findings:#?}\n--- ssh-audit ---\n{text}"
    );
    assert_eq!(
        algorithms(&json, "kex"),
        [
            "mlkem768x25519-sha256",
            "ext-info-s",
            "kex-strict-s-v00@openssh.com"
        ]
    );
}

// --- raw connections -------------------------------------------------------

/// A TCP connection to the server from `source` (a loopback address; Linux
/// routes all of 127/8 to lo).
fn connect_from(source: &str, port: u16) -> TcpStream {
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    let dest: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(source).unwrap();
        let stream = socket.connect(dest).await.unwrap();
        stream.into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// What the server sends first on a fresh connection: its first line, or
/// `None` if it closes the connection without a line.
fn first_line(stream: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
        }
    }
    (!line.is_empty()).then(|| String::from_utf8_lossy(&line).trim_end().to_owned())
}

fn is_banner(line: &Option<String>) -> bool {
    line.as_deref().is_some_and(|l| l.starts_with("SSH-2.0-"))
}

/// Polls until a fresh connection from `source` gets the SSH banner.
fn wait_for_banner(srv: &Server, source: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if is_banner(&first_line(&mut connect_from(source, srv.port))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no SSH banner for {source} within {PATIENCE:?}\n{}",
            srv.log_tail(30)
        );
        thread::sleep(Duration::from_millis(250));
    }
}

// --- penalties -------------------------------------------------------------

/// Two quick failures ban a source: each adds 30 s, the ban starts at 31 s
/// and the penalty is capped at 50 s, so the ban lasts about 19 s after the
/// second failure (long enough to observe on a slow machine, short enough
/// to wait out).
const QUICK_BAN: &str =
    "[limits]\npenalty_per_failure_secs = 30\npenalty_ban_after_secs = 31\npenalty_max_secs = 50\n";

fn sftp_password_from(srv: &Server, source: &str, user: &str, password: &str) -> Command {
    srv.sftp_password_from(source, user, password, "ls\n")
}

#[test]
fn repeated_wrong_passwords_ban_the_source_until_the_penalty_decays() {
    require("sshpass", &["-V"], "apt-get install -y sshpass");
    let srv = start(QUICK_BAN);
    for _ in 0..2 {
        let mut cmd = sftp_password_from(&srv, "127.0.0.1", "alice", "wrong password");
        srv.run_fail(&mut cmd);
    }
    // Banned: closed before the banner, whoever asks and however.
    let line = first_line(&mut connect_from("127.0.0.1", srv.port));
    assert!(
        !is_banner(&line),
        "a banned source got {line:?}\n{}",
        srv.log_tail(20)
    );
    let mut cmd = sftp_password_from(&srv, "127.0.0.1", "alice", ALICE_PASSWORD);
    srv.run_fail(&mut cmd);
    let mut cmd = srv.sftp("bob", "ls\n");
    srv.run_fail(&mut cmd);
    // Another address is not affected.
    let mut cmd = sftp_password_from(&srv, "127.0.0.2", "alice", ALICE_PASSWORD);
    srv.run(&mut cmd);
    // One log line per ban, not one per refused connection.
    let refusals = srv
        .log()
        .matches("connection refused: source banned")
        .count();
    assert_eq!(refusals, 1, "{}", srv.log_tail(30));
    assert!(
        srv.log()
            .contains("source banned after repeated authentication failures")
    );
    // The ban lifts by itself.
    wait_for_banner(&srv, "127.0.0.1");
    let mut cmd = sftp_password_from(&srv, "127.0.0.1", "alice", ALICE_PASSWORD);
    srv.run(&mut cmd);
}

#[test]
fn an_exempt_source_is_never_banned() {
    require("sshpass", &["-V"], "apt-get install -y sshpass");
    let srv = start(&format!("{QUICK_BAN}penalty_exempt = [\"127.0.0.2\"]\n"));
    for _ in 0..4 {
        let mut cmd = sftp_password_from(&srv, "127.0.0.2", "alice", "wrong password");
        srv.run_fail(&mut cmd);
    }
    let mut cmd = sftp_password_from(&srv, "127.0.0.2", "alice", ALICE_PASSWORD);
    srv.run(&mut cmd);
    // The same failures from a source that is not listed do ban it.
    for _ in 0..2 {
        let mut cmd = sftp_password_from(&srv, "127.0.0.3", "alice", "wrong password");
        srv.run_fail(&mut cmd);
    }
    let line = first_line(&mut connect_from("127.0.0.3", srv.port));
    assert!(!is_banner(&line), "127.0.0.3 not banned: {line:?}");
}

// --- caps and timeouts ---------------------------------------------------

/// Whether the server says nothing on `stream` for `quiet` (a connection
/// waiting for a place gets neither the banner nor a refusal).
fn is_waiting(stream: &mut TcpStream, quiet: Duration) -> bool {
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut byte = [0u8; 1];
    let waiting = matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    waiting
}

#[test]
fn connections_that_give_up_waiting_leave_the_queue_at_once() {
    // max_startups 1: up to 4 may wait from one source. The login grace is
    // long, so only noticing that a waiting client went away frees its
    // place in the queue.
    let srv = start(
        "[limits]\nmax_startups = 1\nmax_startups_per_source = 1\n[ssh]\nlogin_grace_secs = 300\n",
    );
    let mut held = connect_from("127.0.0.1", srv.port);
    assert!(is_banner(&first_line(&mut held)));
    // Four wait (one may be refused if a later one was counted first)...
    let mut queue: Vec<TcpStream> = (0..4)
        .map(|_| connect_from("127.0.0.1", srv.port))
        .collect();
    let mut kept_waiting = 0;
    for q in &mut queue {
        if is_waiting(q, Duration::from_millis(300)) {
            kept_waiting += 1;
        }
    }
    assert!(kept_waiting >= 3, "{}", srv.log_tail(20));
    // ...and give up. A new connection from the same source is then kept
    // waiting rather than told that too many are waiting.
    queue.clear();
    let deadline = Instant::now() + PATIENCE;
    let mut waiting = loop {
        let mut s = connect_from("127.0.0.1", srv.port);
        if is_waiting(&mut s, Duration::from_millis(300)) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the queue places of closed connections were not given back\n{}",
            srv.log_tail(20)
        );
        thread::sleep(Duration::from_millis(100));
    };
    // It gets the one place once that is given back.
    drop(held);
    let line = first_line(&mut waiting);
    assert!(is_banner(&line), "{line:?}\n{}", srv.log_tail(20));
}

#[test]
fn unauthenticated_connections_beyond_the_caps_wait_for_a_place() {
    // max_startups 3: up to 12 may wait from one source, 48 overall.
    let srv = start("[limits]\nmax_startups = 3\nmax_startups_per_source = 2\n");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", srv.port);
        assert!(is_banner(&first_line(&mut s)));
        held.push(s);
    }
    // A third from the same source waits: no banner, no refusal...
    let mut waiting = connect_from("127.0.0.1", srv.port);
    assert!(
        is_waiting(&mut waiting, Duration::from_millis(700)),
        "a connection beyond the per-source cap was not kept waiting\n{}",
        srv.log_tail(20)
    );
    // ...while another source takes the last overall place at once.
    let mut other = connect_from("127.0.0.2", srv.port);
    assert!(is_banner(&first_line(&mut other)));
    held.push(other);
    // A place given back is taken by the waiting connection.
    held.remove(0);
    let line = first_line(&mut waiting);
    assert!(is_banner(&line), "{line:?}\n{}", srv.log_tail(20));
    held.push(waiting);
    // The queue is bounded: 12 wait from 127.0.0.1, the 13th is refused
    // with a line.
    let mut queue: Vec<TcpStream> = (0..12)
        .map(|_| connect_from("127.0.0.1", srv.port))
        .collect();
    let mut refused = None;
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", srv.port);
        let line = first_line(&mut s);
        if line.is_some() {
            refused = line;
            break;
        }
    }
    assert_eq!(
        refused.as_deref(),
        Some("too many connections are waiting to log in; try again later"),
        "{}",
        srv.log_tail(20)
    );
    // While every place is held no queued connection is let in. Which of
    // the connections made at once found the queue full depends on which
    // connection's thread ran first, so one of those queued may have been
    // the one refused.
    let answers: Vec<String> = queue
        .iter_mut()
        .filter_map(|q| {
            q.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            first_line(q)
        })
        .collect();
    assert!(
        answers.iter().all(|l| !l.starts_with("SSH-2.0-")) && answers.len() <= 1,
        "queued connections were answered while every place was held: {answers:?}"
    );
    assert!(
        srv.log()
            .contains("connection refused: too many connections are waiting")
    );
    // The places come back when the connections close...
    queue.clear();
    held.clear();
    wait_for_banner(&srv, "127.0.0.1");
    // ...and at login: two logged-in sessions from 127.0.0.1 leave its
    // unauthenticated places free.
    let _sessions = HeldSessions::open(&srv, &["alice", "bob"]);
    let mut s = connect_from("127.0.0.1", srv.port);
    let line = first_line(&mut s);
    assert!(is_banner(&line), "{line:?}\n{}", srv.log_tail(20));
}

/// Holds logged-in sessions (paramiko, one SFTP channel each) until
/// dropped.
struct HeldSessions {
    child: Child,
}

const HOLD_SCRIPT: &str = r#"
import sys, paramiko
port = int(sys.argv[1])
clients = []
for spec in sys.argv[2:]:
    user, key = spec.split("=", 1)
    c = paramiko.SSHClient()
    c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    c.connect("127.0.0.1", port=port, username=user, key_filename=key,
              look_for_keys=False, allow_agent=False, timeout=20)
    s = c.open_sftp()
    s.listdir(".")
    clients.append((c, s))
print("ready", flush=True)
sys.stdin.read()
"#;

impl HeldSessions {
    fn open(srv: &Server, users: &[&str]) -> HeldSessions {
        require_paramiko();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", HOLD_SCRIPT, &srv.port.to_string()]);
        for user in users {
            cmd.arg(format!("{user}={}", srv.user(user).key.display()));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = wait_for_line(&mut child, "ready", srv);
        HeldSessions { child }
    }
}

impl Drop for HeldSessions {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to print `want` on a line of its standard output;
/// returns the rest of its output lines.
fn wait_for_line(child: &mut Child, want: &str, srv: &Server) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.trim() == want => return rx,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    panic!(
        "the helper did not print {want:?}\n--- its stderr ---\n{err}\n--- server log ---\n{}",
        srv.log_tail(30)
    );
}

#[test]
fn sessions_are_capped_per_user_and_overall_with_a_clear_message() {
    let srv = start("[limits]\nmax_sessions = 3\nmax_sessions_per_user = 2\n");
    let held_alice = HeldSessions::open(&srv, &["alice", "alice"]);
    let mut cmd = srv.sftp("alice", "ls\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("too many sessions for this user"),
        "a third alice session was not refused with the per-user message",
        &cmd,
        &out,
    );
    let _held_bob = HeldSessions::open(&srv, &["bob"]);
    let mut cmd = srv.sftp("bob", "ls\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("the server has too many sessions"),
        "a fourth session was not refused with the overall message",
        &cmd,
        &out,
    );
    // Closing sessions gives their places back.
    drop(held_alice);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut cmd = srv.sftp("alice", "ls\n");
        let out = srv.run_any(&mut cmd);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            srv.report("alice still refused after her sessions closed", &cmd, &out)
        );
        thread::sleep(Duration::from_millis(250));
    }
}

/// Reads until the server closes `s`; false if it is still open after
/// [`PATIENCE`].
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn login_grace_closes_a_connection_that_does_not_log_in() {
    let srv = start("[ssh]\nlogin_grace_secs = 5\n");
    // One client stops after the version exchange (the server's key
    // exchange init is all it gets), one never even sends its version.
    let mut after_version = connect_from("127.0.0.1", srv.port);
    assert!(is_banner(&first_line(&mut after_version)));
    after_version
        .write_all(b"SSH-2.0-stalled_test_client\r\n")
        .unwrap();
    let mut silent = connect_from("127.0.0.1", srv.port);
    assert!(is_banner(&first_line(&mut silent)));
    assert!(
        closed_by_server(&mut after_version),
        "a connection stopped in key exchange outlived the login grace time\n{}",
        srv.log_tail(20)
    );
    assert!(
        closed_by_server(&mut silent),
        "a connection that never sent its version outlived the login grace time\n{}",
        srv.log_tail(20)
    );
    assert!(srv.log().contains("login grace time exceeded"));
    // A client that logs in in time is not affected by the short grace.
    let mut cmd = srv.sftp("alice", "ls\n");
    srv.run(&mut cmd);
}

const IDLE_SCRIPT: &str = r#"
import sys, time, paramiko
port, key = int(sys.argv[1]), sys.argv[2]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", port=port, username="alice", key_filename=key,
          look_for_keys=False, allow_agent=False, timeout=20)
s = c.open_sftp()
s.listdir(".")
t = c.get_transport()
deadline = time.time() + 60
while t.is_active() and time.time() < deadline:
    time.sleep(0.2)
print("closed" if not t.is_active() else "still open", flush=True)
"#;

#[test]
fn idle_sessions_are_closed() {
    require_paramiko();
    let srv = start("[ssh]\nidle_timeout_secs = 2\n");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", IDLE_SCRIPT, &srv.port.to_string()])
        .arg(&srv.user("alice").key);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).trim() == "closed",
        "an idle session was not closed",
        &cmd,
        &out,
    );
}

const HANDLES_SCRIPT: &str = r#"
import sys, paramiko
port, key = int(sys.argv[1]), sys.argv[2]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", port=port, username="alice", key_filename=key,
          look_for_keys=False, allow_agent=False, timeout=20)
s = c.open_sftp()
files = []
for i in range(6):
    try:
        files.append(s.open("f%d" % i, "w"))
        print("open", i, "ok", flush=True)
    except IOError as e:
        print("open", i, "refused", e, flush=True)
files.pop().close()
files.append(s.open("again", "w"))
print("after close ok", flush=True)
for f in files:
    f.close()
print("listed", len(s.listdir(".")), flush=True)
"#;

#[test]
fn open_handles_are_capped_per_session_with_a_clear_error() {
    require_paramiko();
    let srv = start("[sftp]\nmax_handles = 4\n");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", HANDLES_SCRIPT, &srv.port.to_string()])
        .arg(&srv.user("alice").key);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    for i in 0..4 {
        srv.check(
            text.contains(&format!("open {i} ok")),
            &format!("handle {i} not opened"),
            &cmd,
            &out,
        );
    }
    for i in 4..6 {
        srv.check(
            // OpenSSH's text for the status code (the detail is in the
            // server's logs), as paramiko shows it.
            text.contains(&format!("open {i} refused Failure")),
            &format!("handle {i} not refused with a Failure status"),
            &cmd,
            &out,
        );
    }
    srv.check(
        text.contains("after close ok") && text.contains("listed"),
        "the session did not go on after the refusal",
        &cmd,
        &out,
    );
}

// --- a client that stops reading -----------------------------------------

/// Opens an SFTP channel by hand, asks for far more data than the channel
/// window holds, then never reads again: the server's writes to it stall.
const STALL_SCRIPT: &str = r#"
import sys, struct, paramiko
port, key = int(sys.argv[1]), sys.argv[2]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", port=port, username="alice", key_filename=key,
          look_for_keys=False, allow_agent=False, timeout=20)
ch = c.get_transport().open_session()
ch.invoke_subsystem("sftp")
def packet(kind, payload):
    body = bytes([kind]) + payload
    return struct.pack(">I", len(body)) + body
def string(b):
    return struct.pack(">I", len(b)) + b
def exact(n):
    buf = b""
    while len(buf) < n:
        d = ch.recv(n - len(buf))
        if not d:
            raise EOFError("server closed the channel")
        buf += d
    return buf
def reply():
    return exact(struct.unpack(">I", exact(4))[0])
ch.sendall(packet(1, struct.pack(">I", 3)))                            # INIT v3
assert reply()[0] == 2                                                  # VERSION
ch.sendall(packet(3, struct.pack(">I", 1) + string(b"big.bin") + struct.pack(">II", 1, 0)))
h = reply()
assert h[0] == 102, h                                                   # HANDLE
handle = h[5:]                                                          # string
for i in range(512):                                                    # 16 MiB of READs
    ch.sendall(packet(5, struct.pack(">I", 100 + i) + handle + struct.pack(">QI", i * 32768, 32768)))
print("stalled", flush=True)
sys.stdin.read()
print("still connected" if c.get_transport().is_active() else "disconnected", flush=True)
"#;

/// Uploads 16 MiB of random data as alice's `big.bin` and starts
/// [`STALL_SCRIPT`] on it; returns the stalled client (waiting on its
/// stdin) and its output lines, once it has sent its requests.
fn stall_a_download(srv: &Server) -> (Child, mpsc::Receiver<String>) {
    let big = random_bytes(16 << 20, fresh_seed());
    std::fs::write(srv.local_path("big.bin"), &big).unwrap();
    let mut cmd = srv.sftp("alice", "put big.bin big.bin\n");
    srv.run(&mut cmd);
    let mut stalled = Command::new("python3")
        .args(["-c", STALL_SCRIPT, &srv.port.to_string()])
        .arg(&srv.user("alice").key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = wait_for_line(&mut stalled, "stalled", srv);
    (stalled, lines)
}

#[test]
fn a_client_that_stops_reading_does_not_block_other_sessions() {
    require_paramiko();
    let srv = start("");
    let (mut stalled, stalled_output) = stall_a_download(&srv);

    // Meanwhile another user moves 8 MiB both ways, and alice, in a second
    // session, reads the very file the stalled session is reading.
    let other = random_bytes(8 << 20, fresh_seed());
    std::fs::write(srv.local_path("other.bin"), &other).unwrap();
    let started = Instant::now();
    let mut cmd = srv.sftp(
        "bob",
        "put other.bin other.bin\nget other.bin other-back.bin\n",
    );
    srv.run(&mut cmd);
    assert_same_file(
        &srv.local_path("other.bin"),
        &srv.local_path("other-back.bin"),
    );
    let mut cmd = srv.sftp("alice", "get big.bin big-back.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("big.bin"), &srv.local_path("big-back.bin"));
    eprintln!(
        "other sessions finished in {:?} beside a stalled one",
        started.elapsed()
    );

    // The stalled client is still connected (nothing gave up on it), and
    // the server is fine.
    drop(stalled.stdin.take());
    let out = stalled.wait_with_output().unwrap();
    // The reader thread ends at end of output, now that the client exited.
    let text: Vec<String> = stalled_output.iter().collect();
    assert!(
        text.iter().any(|l| l == "still connected"),
        "stalled client: {text:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = srv.sftp("bob", "ls\n");
    srv.run(&mut cmd);
}

/// A graceful stop (SIGTERM) ends the server within its grace period even
/// while a session is stuck on a client that stopped reading: the stuck
/// session's connection loop cannot take the disconnect request, and the
/// stop used to wait for it forever.
#[test]
fn sigterm_stops_the_server_beside_a_stalled_session() {
    require_paramiko();
    let mut srv = start("");
    let (mut stalled, _lines) = stall_a_download(&srv);

    srv.signal(rustix::process::Signal::TERM);
    let started = Instant::now();
    // The grace period is 10 s; allow for a slow machine.
    while srv.is_alive() && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(100));
    }
    let alive = srv.is_alive();
    drop(stalled.stdin.take());
    let _ = stalled.kill();
    let _ = stalled.wait();
    assert!(
        !alive,
        "the server still runs {:?} after SIGTERM\n{}",
        started.elapsed(),
        srv.log()
    );
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
}

/// An SSH_ASKPASS program that answers `wrong-1`, `wrong-2`, ... and the
/// right password `$RIGHT` at prompt `$RIGHT_AT`,
/// counting its calls in `$0.count`.
const ASKPASS: &str = "#!/bin/sh\n\
n=$(cat \"$0.count\" 2>/dev/null || echo 0)\n\
n=$((n + 1))\n\
echo \"$n\" > \"$0.count\"\n\
if [ \"$n\" -eq \"$RIGHT_AT\" ]; then echo \"$RIGHT\"; else echo \"wrong-$n\"; fi\n";

/// Logs in as alice with OpenSSH sftp, answering password prompts through
/// [`ASKPASS`] (right at prompt 4); returns the output and the number of
/// prompts.
fn login_with_prompts(srv: &Server) -> (Command, std::process::Output, u32) {
    use std::os::unix::fs::PermissionsExt;
    let askpass = srv.local_path("askpass.sh");
    std::fs::write(&askpass, ASKPASS).unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let batch = srv.local_path("batch.txt");
    std::fs::write(&batch, "ls\n").unwrap();
    let mut cmd = Command::new("sftp");
    cmd.current_dir(srv.local())
        .env_remove("SSH_AUTH_SOCK")
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .env("RIGHT", ALICE_PASSWORD)
        .env("RIGHT_AT", "4")
        .stdin(Stdio::null())
        .args(Server::common_opts())
        .args([
            "-o",
            "BatchMode=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=4",
            "-P",
            &srv.port.to_string(),
            "-b",
        ])
        .arg(&batch)
        .arg(srv.dest("alice"));
    let out = srv.run_any(&mut cmd);
    let prompts = std::fs::read_to_string(srv.local_path("askpass.sh.count"))
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    (cmd, out, prompts)
}

#[test]
fn max_auth_attempts_ends_the_connection() {
    // Penalties off: this is about the per-connection cap alone.
    let capped = Server::start_opts(
        &[("alice", Some(ALICE_PASSWORD))],
        &ServerOptions {
            auth_config: Some(format!("{DEFAULT_AUTH_CONFIG}max_auth_attempts = 2\n")),
            extra_config: "[limits]\npenalty = false\n".into(),
            ..ServerOptions::default()
        },
    );
    let (cmd, out, prompts) = login_with_prompts(&capped);
    capped.check(
        !out.status.success()
            && stderr(&out).contains("Too many authentication attempts")
            && prompts < 4,
        &format!("not stopped by max_auth_attempts = 2 ({prompts} prompts)"),
        &cmd,
        &out,
    );
    // With the default cap the fourth prompt's right password gets in.
    let default = start("[limits]\npenalty = false\n");
    let (cmd, out, prompts) = login_with_prompts(&default);
    default.check(
        out.status.success() && prompts == 4,
        &format!("the right password at prompt 4 was refused ({prompts} prompts)"),
        &cmd,
        &out,
    );
}

/// The MAC list that also serves libssh2 before 1.11 (curl's `sftp://` on
/// Debian 12), which has neither AEAD ciphers nor encrypt-then-MAC
/// (docs/HARDENING.md): ssh-audit warns about the two extra MACs.
const COMPAT_MACS: &str = "[ssh]\nmacs = [\"hmac-sha2-512-etm@openssh.com\", \"hmac-sha2-256-etm@openssh.com\", \"hmac-sha2-512\", \"hmac-sha2-256\"]\n";

#[test]
fn curl_sftp_works_with_the_documented_compat_macs() {
    require("curl", &["-V"], "apt-get install -y curl");
    let srv = start(COMPAT_MACS);
    let data = random_bytes(300_000, fresh_seed());
    std::fs::write(srv.local_path("c.bin"), &data).unwrap();
    let url = format!("sftp://127.0.0.1:{}/c.bin", srv.port);
    let user = format!("alice:{ALICE_PASSWORD}");
    let mut cmd = Command::new("curl");
    cmd.current_dir(srv.local())
        .args(["-sS", "--insecure", "-u", &user, "-T", "c.bin", &url]);
    srv.run(&mut cmd);
    let mut cmd = Command::new("curl");
    cmd.current_dir(srv.local())
        .args(["-sS", "--insecure", "-u", &user, "-o", "c-back.bin", &url]);
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("c.bin"), &srv.local_path("c-back.bin"));
}
