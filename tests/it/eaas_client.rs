//! dropzone with `kms.backend = "eaas"` against the real `dropzone-eaas` on
//! loopback: transfers with keys wrapped by the service, failing closed while
//! it is down and recovering by itself, rotation, TLS and a bearer token; and
//! `dropzone keys rotate` with the local backend.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::*;

/// The `dropzone-eaas` binary.
const EAAS_BIN: &str = env!("CARGO_BIN_EXE_dropzone-eaas");

/// What the client is told while the key service is down.
const UNAVAILABLE: &str = "login refused: the key service is unavailable; try again later";

/// A `dropzone-eaas serve` in a directory the test owns, so that it can be
/// stopped and started again with the same keys on the same port.
struct KeyService {
    dir: PathBuf,
    port: u16,
    extra_config: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl KeyService {
    /// Starts a service on a free port with `keys_dir = "keys"` in `dir`,
    /// plus `extra_config`.
    fn start(dir: &Path, extra_config: &str) -> KeyService {
        let mut s = KeyService {
            dir: dir.to_owned(),
            port: 0,
            extra_config: extra_config.to_owned(),
            child: None,
            log: Arc::default(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let config = format!(
            "listen = \"127.0.0.1:{}\"\nkeys_dir = \"keys\"\n{}",
            self.port, self.extra_config
        );
        std::fs::write(self.dir.join("eaas.toml"), config).unwrap();
        let mut cmd = Command::new(EAAS_BIN);
        cmd.current_dir(&self.dir)
            .env_remove("DROPZONE_EAAS_CONFIG")
            .env_remove("DROPZONE_EAAS_LISTEN")
            .env_remove("DROPZONE_EAAS_PASSPHRASE")
            .env("RUST_LOG", "info")
            .args(["serve", "--config", "eaas.toml"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = port_after(&line, "listening on 127.0.0.1:")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(port) = rx.recv_timeout(Duration::from_millis(50)) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "dropzone-eaas exited before listening ({status})\n--- log ---\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dropzone-eaas did not listen within 30 s\n--- log ---\n{}",
                self.log()
            );
        };
        if self.port != 0 {
            assert_eq!(port, self.port, "restarted on another port");
        }
        self.port = port;
        self.child = Some(child);
    }

    /// Stops the service (keys stay in its directory).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same keys.
    fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for KeyService {
    fn drop(&mut self) {
        self.stop();
    }
}

fn port_after(line: &str, mark: &str) -> Option<u16> {
    let rest = &line[line.find(mark)? + mark.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The `[kms]` tables for a service at `url`, wrapping under version 1.
fn eaas_kms(url: &str, extra: &str) -> String {
    format!(
        "[kms]\nbackend = \"eaas\"\nkey_cache_ttl_secs = 0\n\n\
         [kms.eaas]\nurl = \"{url}\"\nsecret_path = \"dropzone/rsa\"\nsecret_version = \"1\"\n{extra}"
    )
}

fn start_dropzone(users: &[&str], kms_config: String) -> Server {
    let users: Vec<(&str, Option<&str>)> = users.iter().map(|u| (*u, None)).collect();
    Server::start_opts(
        &users,
        &ServerOptions {
            kms_config: Some(kms_config),
            ..ServerOptions::default()
        },
    )
}

/// A user's key file as TOML.
fn key_file(srv: &Server, user: &str) -> toml::Table {
    let path = srv.path(format!("keks/{user}.key"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    toml::from_str(&text).unwrap()
}

fn field<'a>(t: &'a toml::Table, name: &str) -> &'a str {
    t[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {t:?}"))
}

/// Every entry under `dir` with the content of files (None for directories).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    entries_under(dir)
        .into_iter()
        .map(|rel| {
            let p = dir.join(&rel);
            let content = if p.is_dir() {
                None
            } else {
                Some(std::fs::read(&p).unwrap())
            };
            (rel, content)
        })
        .collect()
}

/// Writes `len` random bytes to the scratch file `name`; returns them.
fn local_file(srv: &Server, name: &str, len: usize, seed: u64) -> Vec<u8> {
    let data = random_bytes(len, seed);
    std::fs::write(srv.local_path(name), &data).unwrap();
    data
}

/// Asserts that a login of `user` is refused with `message` on the client's
/// stderr.
#[track_caller]
fn assert_refused(srv: &Server, user: &str, message: &str) {
    let mut cmd = srv.sftp(user, "ls\n");
    let out = srv.run_fail(&mut cmd);
    let err = stderr(&out);
    eprintln!("{user}'s client said: {}", err.trim());
    srv.check(
        err.contains(message),
        &format!("the client was not told {message:?}"),
        &cmd,
        &out,
    );
}

#[test]
fn eaas_backend_round_trip_fails_closed_and_recovers_by_itself() {
    let work = tempfile::tempdir().unwrap();
    let mut eaas = KeyService::start(&work.path().join("eaas"), "");
    let srv = start_dropzone(&["alice", "bob"], eaas_kms(&eaas.url("http"), ""));
    let seed = fresh_seed();

    // Start-up asked the service for the configured key.
    let log = srv.log();
    assert!(log.contains("key service master key ready"), "{log}");

    let data = local_file(&srv, "one.bin", 300_000, seed);
    let mut cmd = srv.sftp("alice", "put one.bin\nget one.bin back.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("one.bin"), &srv.local_path("back.bin"));
    assert_ne!(
        std::fs::read(srv.data("alice").join("one.bin")).unwrap(),
        data
    );

    let k = key_file(&srv, "alice");
    assert_eq!(field(&k, "backend"), "eaas");
    assert_eq!(field(&k, "secret_path"), "dropzone/rsa");
    assert_eq!(field(&k, "secret_version"), "1");
    // The hex-decoded ciphertext of an RSA-2048 key: 256 bytes.
    assert_eq!(field(&k, "wrapped_key").len(), 512);

    // The service goes away: logins are refused with a message, nothing is
    // written, not even for a user who never logged in.
    eaas.stop();
    let before = (snapshot(&srv.path("data")), snapshot(&srv.path("keks")));
    assert_refused(&srv, "alice", UNAVAILABLE);
    assert_refused(&srv, "bob", UNAVAILABLE);
    let mut cmd = srv.scp(
        "alice",
        &[],
        srv.local_path("one.bin"),
        srv.remote("alice", "two.bin"),
    );
    // (The harness's scp runs with -q, which silences ssh's messages.)
    srv.run_fail(&mut cmd);
    let mut cmd = srv.ssh("alice", &["scp", "-t", "two.bin"]);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains(UNAVAILABLE),
        "ssh not told",
        &cmd,
        &out,
    );
    let after = (snapshot(&srv.path("data")), snapshot(&srv.path("keks")));
    assert!(
        before == after,
        "the store changed while the key service was down"
    );
    assert!(!srv.path("keks/bob.key").exists());
    assert!(!srv.data("bob").exists());
    let log = srv.log();
    assert!(log.contains("login refused"), "{log}");
    assert!(log.contains("cannot connect"), "{log}");

    // Back on the same port with the same keys: logins work again, without
    // restarting dropzone.
    eaas.start_again();
    let mut cmd = srv.sftp("alice", "get one.bin again.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("one.bin"), &srv.local_path("again.bin"));
    let mut cmd = srv.sftp("bob", "put one.bin\nget one.bin bob.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("one.bin"), &srv.local_path("bob.bin"));
    assert_eq!(field(&key_file(&srv, "bob"), "backend"), "eaas");

    // The offline tools unwrap through the service too.
    let mut cmd = srv.dropzone_tool(&["verify"]);
    srv.run(&mut cmd);
}

/// A session that holds its key keeps working while the service is killed
/// (even in the middle of an upload); new logins are refused meanwhile and
/// work again once it is back.
#[test]
fn an_open_session_outlives_the_key_service() {
    let work = tempfile::tempdir().unwrap();
    let mut eaas = KeyService::start(&work.path().join("eaas"), "");
    let srv = start_dropzone(&["alice"], eaas_kms(&eaas.url("http"), ""));
    local_file(&srv, "a.bin", 100_000, fresh_seed());

    // sftp reads its batch from a pipe: the first command runs, then the
    // service is stopped, then the rest runs in the same session.
    let mut child = Command::new("sftp")
        .current_dir(srv.local())
        .env_remove("SSH_AUTH_SOCK")
        .args(Server::common_opts())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-i",
        ])
        .arg(&srv.user("alice").key)
        .args(["-P", &srv.port.to_string(), "-b", "-"])
        .arg(srv.dest("alice"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    use std::io::Write as _;
    writeln!(stdin, "put a.bin").unwrap();
    writeln!(stdin, "pwd").unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // `pwd` prints "Remote working directory: /" once the put is done.
    for line in lines.by_ref() {
        if line.unwrap().contains("Remote working directory") {
            break;
        }
    }
    // Killed (SIGKILL) while an upload is under way in the session.
    writeln!(stdin, "put a.bin d.bin").unwrap();
    eaas.stop();
    writeln!(stdin, "get a.bin b.bin").unwrap();
    writeln!(stdin, "put a.bin c.bin").unwrap();
    drop(stdin);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        status.success(),
        "{status}\n{rest:?}\n{err}\n{}",
        srv.log_tail(20)
    );
    assert_same_file(&srv.local_path("a.bin"), &srv.local_path("b.bin"));
    assert!(srv.data("alice").join("c.bin").exists());
    // A new login is refused meanwhile.
    assert_refused(&srv, "alice", UNAVAILABLE);

    // The service is back: logins work again without restarting dropzone,
    // and what the session wrote while it was down reads back intact.
    eaas.start_again();
    let mut cmd = srv.sftp(
        "alice",
        "get c.bin c-back.bin
get d.bin d-back.bin
",
    );
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("a.bin"), &srv.local_path("c-back.bin"));
    assert_same_file(&srv.local_path("a.bin"), &srv.local_path("d-back.bin"));
    srv.run(&mut srv.dropzone_tool(&["verify"]));
}

#[test]
fn dropzone_starts_while_the_key_service_is_down_and_uses_it_once_up() {
    let work = tempfile::tempdir().unwrap();
    let mut eaas = KeyService::start(&work.path().join("eaas"), "");
    let url = eaas.url("http");
    eaas.stop();
    let srv = start_dropzone(&["alice"], eaas_kms(&url, ""));
    assert!(
        srv.log().contains("key service unavailable at start-up"),
        "{}",
        srv.log()
    );
    assert_refused(&srv, "alice", UNAVAILABLE);
    assert!(!srv.path("keks/alice.key").exists());

    // The service never saw /gen/key/rsa at dropzone's start: the first new
    // key asks for it.
    eaas.start_again();
    local_file(&srv, "x.bin", 70_000, fresh_seed());
    let mut cmd = srv.sftp("alice", "put x.bin\nget x.bin y.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("x.bin"), &srv.local_path("y.bin"));
}

#[test]
fn rotation_rewraps_every_user_and_keeps_files_readable() {
    let work = tempfile::tempdir().unwrap();
    let eaas = KeyService::start(&work.path().join("eaas"), "");
    let srv = start_dropzone(&["alice", "bob", "carol"], eaas_kms(&eaas.url("http"), ""));
    let seed = fresh_seed();
    local_file(&srv, "before.bin", 200_000, seed);
    local_file(&srv, "after.bin", 150_000, seed + 1);
    for user in ["alice", "bob"] {
        let mut cmd = srv.sftp(user, "put before.bin\n");
        srv.run(&mut cmd);
    }
    let data_before = snapshot(&srv.path("data"));
    let alice_before = key_file(&srv, "alice");

    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "2"]);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    srv.check(
        text.contains("rotated alice (1 -> 2)")
            && text.contains("rotated bob (1 -> 2)")
            && text.contains("2 rotated, 0 already on version 2, 0 failed"),
        "rotation output",
        &cmd,
        &out,
    );
    // Stored files are untouched; key files name version 2.
    assert!(
        snapshot(&srv.path("data")) == data_before,
        "rotation touched stored files"
    );
    let alice = key_file(&srv, "alice");
    assert_eq!(field(&alice, "secret_version"), "2");
    assert_eq!(field(&alice, "backend"), "eaas");
    assert_ne!(
        field(&alice, "wrapped_key"),
        field(&alice_before, "wrapped_key")
    );
    assert_eq!(
        field(&alice, "created_at"),
        field(&alice_before, "created_at")
    );

    // Again: nothing to do.
    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "2"]);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    srv.check(
        text.contains("skipped alice (already 2)") && text.contains("skipped bob (already 2)"),
        "second rotation output",
        &cmd,
        &out,
    );

    // The running server unwraps under version 2, for files old and new.
    let mut cmd = srv.sftp(
        "alice",
        "put after.bin\nget before.bin before.back\nget after.bin after.back\n",
    );
    srv.run(&mut cmd);
    assert_same_file(
        &srv.local_path("before.bin"),
        &srv.local_path("before.back"),
    );
    assert_same_file(&srv.local_path("after.bin"), &srv.local_path("after.back"));
    let mut cmd = srv.sftp("bob", "get before.bin bob.back\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("before.bin"), &srv.local_path("bob.back"));

    // A new user gets the configured version (1).
    let mut cmd = srv.sftp("carol", "put after.bin\n");
    srv.run(&mut cmd);
    assert_eq!(field(&key_file(&srv, "carol"), "secret_version"), "1");

    // A user whose key cannot be unwrapped fails; the others are still done
    // and the exit status says so.
    std::fs::write(
        srv.path("keks/dave.key"),
        format!(
            "format = 1\nuser = \"dave\"\nbackend = \"eaas\"\nsecret_path = \"dropzone/rsa\"\n\
             secret_version = \"1\"\nwrapped_key = \"{}\"\n\
             created_at = \"2025-01-01T00:00:00Z\"\nupdated_at = \"2025-01-01T00:00:00Z\"\n",
            "ab".repeat(256)
        ),
    )
    .unwrap();
    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "3"]);
    let out = srv.run_any(&mut cmd);
    let text = stdout(&out);
    srv.check(
        out.status.code() == Some(1)
            && text.contains("rotated alice (2 -> 3)")
            && text.contains("rotated carol (1 -> 3)")
            && text.contains("FAILED dave")
            && text.contains("3 rotated, 0 already on version 3, 1 failed"),
        "a partly failed rotation",
        &cmd,
        &out,
    );
    assert_eq!(field(&key_file(&srv, "dave"), "secret_version"), "1");
    let mut cmd = srv.sftp("alice", "get after.bin after.back3\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("after.bin"), &srv.local_path("after.back3"));

    // Bad versions are configuration errors.
    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "v4"]);
    let out = srv.run_any(&mut cmd);
    srv.check(out.status.code() == Some(2), "bad version", &cmd, &out);
}

#[test]
fn rotation_without_the_key_service_fails_and_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let mut eaas = KeyService::start(&work.path().join("eaas"), "");
    let srv = start_dropzone(&["alice"], eaas_kms(&eaas.url("http"), ""));
    local_file(&srv, "f.bin", 1000, fresh_seed());
    let mut cmd = srv.sftp("alice", "put f.bin\n");
    srv.run(&mut cmd);
    eaas.stop();
    let keks = snapshot(&srv.path("keks"));
    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "2"]);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        out.status.code() == Some(1) && stderr(&out).contains("cannot connect"),
        "rotation with the service down",
        &cmd,
        &out,
    );
    assert!(snapshot(&srv.path("keks")) == keks);
}

/// HTTPS with a private CA and a bearer token, both ends real.
#[test]
fn tls_with_a_ca_file_and_a_bearer_token() {
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    make_ca_and_leaf(&pki);
    std::fs::write(work.path().join("token"), "correct-horse-battery\n").unwrap();
    let eaas = KeyService::start(
        &work.path().join("eaas"),
        &format!(
            "token_file = \"{}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            work.path().join("token").display(),
            pki.join("leaf.pem").display(),
            pki.join("leaf.key").display()
        ),
    );
    let client_token = work.path().join("client-token");
    std::fs::write(&client_token, "correct-horse-battery\n").unwrap();
    let extra = format!(
        "token_file = \"{}\"\nca_file = \"{}\"\n",
        client_token.display(),
        pki.join("ca.pem").display()
    );
    let srv = start_dropzone(&["alice"], eaas_kms(&eaas.url("https"), &extra));
    local_file(&srv, "t.bin", 65_537, fresh_seed());
    let mut cmd = srv.sftp("alice", "put t.bin\nget t.bin t.back\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("t.bin"), &srv.local_path("t.back"));

    // A wrong token: refused by the service, so logins are refused (not
    // "unavailable": retrying will not help).
    std::fs::write(&client_token, "wrong\n").unwrap();
    let srv2 = start_dropzone(&["alice"], eaas_kms(&eaas.url("https"), &extra));
    assert_refused(
        &srv2,
        "alice",
        "login refused: the key service refused your key; contact the administrator",
    );
    assert!(srv2.log().contains("401"), "{}", srv2.log());
    assert!(!srv2.path("keks/alice.key").exists());
}

/// `openssl` makes a CA and a leaf for 127.0.0.1 signed by it.
fn make_ca_and_leaf(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ossl = |args: &[&str]| {
        run(Command::new("openssl").current_dir(dir).args(args));
    };
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=dropzone test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    ossl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ossl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
}

#[test]
fn local_backend_rotation_and_help() {
    let srv = Server::start_with(&[("alice", None), ("bob", None)]);
    local_file(&srv, "l.bin", 100_000, fresh_seed());
    let mut cmd = srv.sftp("alice", "put l.bin\n");
    srv.run(&mut cmd);
    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "2"]);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    srv.check(
        text.contains("rotated alice (1 -> 2)")
            && text.contains("1 user(s): 1 rotated, 0 already on version 2, 0 failed"),
        "local rotation output",
        &cmd,
        &out,
    );
    assert!(srv.path("master_key/master-v2.pem").exists());
    let k = key_file(&srv, "alice");
    assert_eq!(field(&k, "backend"), "local");
    assert_eq!(field(&k, "secret_version"), "2");
    let mut cmd = srv.sftp("alice", "get l.bin l.back\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("l.bin"), &srv.local_path("l.back"));

    for (args, want) in [
        (&["keys", "--help"][..], "rotate"),
        (&["keys", "rotate", "--help"][..], "--secret-version"),
        (&["--help"][..], "keys"),
    ] {
        let mut cmd = srv.dropzone();
        cmd.args(args);
        let out = srv.run(&mut cmd);
        srv.check(stdout(&out).contains(want), want, &cmd, &out);
    }
}
