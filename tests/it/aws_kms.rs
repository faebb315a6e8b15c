//! dropzone with `kms.backend = "aws-kms"` against a real moto server
//! (`moto_server`, started here) through a TCP proxy the test can cut:
//! transfers with keys wrapped by KMS, failing closed while KMS is
//! unreachable and recovering without a restart, rotation to another KMS
//! key (ReEncrypt), the encryption context binding a wrapped key to its
//! user, and a missing or disabled key refused at start-up.
//!
//! moto keeps its keys in memory, so "KMS down" is the proxy refusing
//! connections, not moto stopping.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::*;

/// What the client is told while the key service is down.
pub(super) const UNAVAILABLE: &str =
    "login refused: the key service is unavailable; try again later";
/// What the client is told when the key service refuses the user's key.
const REFUSED: &str = "login refused: the key service refused your key";

/// A `moto_server` on a free loopback port, killed on drop.
pub(super) struct Moto {
    child: Child,
    /// Its port.
    pub(super) port: u16,
}

impl Moto {
    /// Starts moto and waits until it answers HTTP.
    pub(super) fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// [`Moto::start`] with environment variables for moto.
    pub(super) fn start_with(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto_server (pip install 'moto[server]'): {e}"));
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_ok(port) {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited before answering: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a boto3 KMS snippet against this moto; `kms` is the client.
    /// Returns its stdout, trimmed.
    pub(super) fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3\nkms = boto3.client('kms', endpoint_url='http://127.0.0.1:{}', \
             region_name='us-east-1', aws_access_key_id='testing', \
             aws_secret_access_key='testing')\n{code}\n",
            self.port
        );
        let out = run(Command::new("python3").args(["-c", &script]));
        stdout(&out).trim().to_owned()
    }

    /// Creates a symmetric key with alias `alias/NAME`; returns its ARN.
    pub(super) fn create_key(&self, name: &str) -> String {
        self.boto3(&format!(
            "k = kms.create_key(Description='dropzone test')['KeyMetadata']\n\
             kms.create_alias(AliasName='alias/{name}', TargetKeyId=k['KeyId'])\n\
             print(k['Arn'])"
        ))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something on `port` answers an HTTP request.
fn http_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP proxy on a fixed loopback port in front of a backend port. While
/// cut, the port is closed (connections are refused) and the connections
/// it carried are shut down.
pub(super) struct Proxy {
    /// The port clients connect to.
    pub(super) port: u16,
    backend: u16,
    state: Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Starts forwarding to `backend`.
    pub(super) fn start(backend: u16) -> Proxy {
        let mut p = Proxy {
            port: free_port(),
            backend,
            state: None,
            open: Arc::default(),
        };
        p.restore();
        p
    }

    /// Listens again on the same port.
    pub(super) fn restore(&mut self) {
        assert!(self.state.is_none(), "the proxy is running");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, open, backend) = (stop.clone(), self.open.clone(), self.backend);
        let handle = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                    continue;
                };
                let mut list = open.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        self.state = Some((stop, handle));
    }

    /// Closes the port and every connection through it.
    pub(super) fn cut(&mut self) {
        let (stop, handle) = self.state.take().expect("the proxy is not running");
        stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag and drops the
        // listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        handle.join().unwrap();
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// The endpoint URL.
    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.state.is_some() {
            self.cut();
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Credentials for moto (it does not check them; dropzone needs some).
pub(super) fn aws_env() -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing-session"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The `[kms]` tables for KMS at `endpoint` with key `key_id`; unwrapped
/// keys are not cached, so every login asks KMS.
pub(super) fn aws_kms_config(endpoint: &str, key_id: &str) -> String {
    format!(
        "[kms]\nbackend = \"aws-kms\"\nkey_cache_ttl_secs = 0\n\n\
         [kms.aws_kms]\nkey_id = \"{key_id}\"\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n"
    )
}

fn start_dropzone(users: &[&str], kms_config: String) -> Server {
    let users: Vec<(&str, Option<&str>)> = users.iter().map(|u| (*u, None)).collect();
    Server::start_opts(
        &users,
        &ServerOptions {
            kms_config: Some(kms_config),
            env: aws_env(),
            ..ServerOptions::default()
        },
    )
}

/// A user's key file as TOML.
pub(super) fn key_file(srv: &Server, user: &str) -> toml::Table {
    let path = srv.path(format!("keks/{user}.key"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    toml::from_str(&text).unwrap()
}

pub(super) fn field<'a>(t: &'a toml::Table, name: &str) -> &'a str {
    t[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {t:?}"))
}

/// Every entry under `dir` with the content of files (None for directories).
pub(super) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
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

/// Asserts that a login of `user` is refused with `message` on the client's
/// stderr.
#[track_caller]
pub(super) fn assert_refused(srv: &Server, user: &str, message: &str) {
    let mut cmd = srv.sftp(user, "ls\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains(message),
        &format!("the client was not told {message:?}"),
        &cmd,
        &out,
    );
}

#[test]
fn aws_kms_round_trip_fails_closed_and_recovers_by_itself() {
    let moto = Moto::start();
    let arn = moto.create_key("dropzone");
    let mut proxy = Proxy::start(moto.port);
    let srv = start_dropzone(
        &["alice", "bob"],
        aws_kms_config(&proxy.url(), "alias/dropzone"),
    );
    let log = srv.log();
    assert!(log.contains("AWS KMS key ready"), "{log}");
    assert!(log.contains(&arn), "start-up resolved the alias: {log}");

    let data = random_bytes(300_000, fresh_seed());
    std::fs::write(srv.local_path("one.bin"), &data).unwrap();
    let mut cmd = srv.sftp("alice", "put one.bin\nget one.bin back.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("one.bin"), &srv.local_path("back.bin"));
    assert_ne!(
        std::fs::read(srv.data("alice").join("one.bin")).unwrap(),
        data
    );

    // The key file names the key's ARN (not the alias) and our version.
    let k = key_file(&srv, "alice");
    assert_eq!(field(&k, "backend"), "aws-kms");
    assert_eq!(field(&k, "secret_path"), arn);
    assert_eq!(field(&k, "secret_version"), "1");
    // KMS decrypts it, with alice's encryption context and only with it.
    let blob = field(&k, "wrapped_key");
    let plain = moto.boto3(&format!(
        "r = kms.decrypt(CiphertextBlob=bytes.fromhex('{blob}'), \
         EncryptionContext={{'dropzone:user': 'alice'}})\nprint(len(r['Plaintext']), r['KeyId'])"
    ));
    assert_eq!(plain, format!("32 {arn}"));
    let other = moto.boto3(&format!(
        "try:\n    kms.decrypt(CiphertextBlob=bytes.fromhex('{blob}'), \
         EncryptionContext={{'dropzone:user': 'bob'}})\n    print('decrypted')\n\
         except kms.exceptions.InvalidCiphertextException:\n    print('refused')"
    ));
    assert_eq!(other, "refused");

    // KMS unreachable: logins are refused with a message, nothing is
    // written, not even for a user who never logged in.
    proxy.cut();
    let before = (snapshot(&srv.path("data")), snapshot(&srv.path("keks")));
    assert_refused(&srv, "alice", UNAVAILABLE);
    assert_refused(&srv, "bob", UNAVAILABLE);
    let after = (snapshot(&srv.path("data")), snapshot(&srv.path("keks")));
    assert!(before == after, "the store changed while KMS was down");
    assert!(!srv.path("keks/bob.key").exists());
    let log = srv.log();
    assert!(log.contains("cannot connect"), "{log}");

    // Reachable again: logins work without restarting dropzone.
    proxy.restore();
    let mut cmd = srv.sftp("alice", "get one.bin again.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("one.bin"), &srv.local_path("again.bin"));
    let mut cmd = srv.sftp("bob", "put one.bin\nget one.bin bob.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("one.bin"), &srv.local_path("bob.bin"));

    // The offline tools unwrap through KMS too.
    let mut cmd = srv.dropzone_tool(&["verify"]);
    srv.run(&mut cmd);
}

/// The encryption context binds a wrapped key to its user: alice's wrapped
/// key pasted into bob's key file does not unwrap for bob.
#[test]
fn a_wrapped_key_in_another_users_file_is_refused() {
    let moto = Moto::start();
    moto.create_key("dropzone");
    let srv = start_dropzone(
        &["alice", "bob"],
        aws_kms_config(&format!("http://127.0.0.1:{}", moto.port), "alias/dropzone"),
    );
    std::fs::write(srv.local_path("f.txt"), b"bob's file\n").unwrap();
    for user in ["alice", "bob"] {
        let mut cmd = srv.sftp(user, "put f.txt\n");
        srv.run(&mut cmd);
    }
    let alice = key_file(&srv, "alice");
    let bob_path = srv.path("keks/bob.key");
    let bob_text = std::fs::read_to_string(&bob_path).unwrap();
    let bob = key_file(&srv, "bob");
    std::fs::write(
        &bob_path,
        bob_text.replace(field(&bob, "wrapped_key"), field(&alice, "wrapped_key")),
    )
    .unwrap();
    let before = snapshot(&srv.path("data"));
    assert_refused(&srv, "bob", REFUSED);
    assert_eq!(before, snapshot(&srv.path("data")));
    let log = srv.log();
    assert!(log.contains("InvalidCiphertextException"), "{log}");
    // Restored, bob's own wrapping works again.
    std::fs::write(&bob_path, bob_text).unwrap();
    let mut cmd = srv.sftp("bob", "get f.txt back.txt\n");
    srv.run(&mut cmd);
    assert_eq!(
        std::fs::read(srv.local_path("back.txt")).unwrap(),
        b"bob's file\n"
    );
}

/// `dropzone keys rotate` after the configuration names a new KMS key:
/// every user's key is re-encrypted (ReEncrypt) under the new key, stored
/// files are untouched, and the old key is no longer needed.
#[test]
fn rotation_to_a_new_kms_key() {
    let moto = Moto::start();
    let old = moto.create_key("old");
    let new = moto.create_key("new");
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let mut srv = start_dropzone(&["alice", "bob"], aws_kms_config(&endpoint, "alias/old"));
    let data = random_bytes(150_000, fresh_seed());
    std::fs::write(srv.local_path("f.bin"), &data).unwrap();
    for user in ["alice", "bob"] {
        let mut cmd = srv.sftp(user, "put f.bin\n");
        srv.run(&mut cmd);
        assert_eq!(field(&key_file(&srv, user), "secret_path"), old);
    }
    let files = snapshot(&srv.path("data"));

    let config = srv.path("config/dropzone.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("alias/old", "alias/new")).unwrap();
    // A version of ours means nothing to KMS.
    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "2"]);
    let out = srv.run_fail(&mut cmd);
    assert!(
        stderr(&out).contains("change kms.aws_kms.key_id"),
        "{}",
        stderr(&out)
    );
    let mut cmd = srv.dropzone_tool(&["keys", "rotate"]);
    let out = srv.run(&mut cmd);
    let said = stdout(&out);
    assert!(said.contains("2 rotated"), "{said}");
    for user in ["alice", "bob"] {
        assert_eq!(field(&key_file(&srv, user), "secret_path"), new);
    }
    // Again: nothing left to do.
    let out = srv.run(&mut srv.dropzone_tool(&["keys", "rotate", "--secret-version", "1"]));
    assert!(stdout(&out).contains("0 rotated"), "{}", stdout(&out));
    assert_eq!(files, snapshot(&srv.path("data")), "stored files changed");

    // The old key is disabled: everyone still logs in (after a restart on
    // the new configuration) and reads their file.
    // (moto answers 500 to DisableKey with an ARN: the key id it is.)
    moto.boto3(&format!("kms.disable_key(KeyId='{old}'.split('/')[-1])"));
    srv.kill9();
    srv.restart();
    for user in ["alice", "bob"] {
        let mut cmd = srv.sftp(user, &format!("get f.bin {user}.bin\n"));
        srv.run(&mut cmd);
        assert_eq!(
            std::fs::read(srv.local_path(&format!("{user}.bin"))).unwrap(),
            data
        );
    }
}

/// A key that does not exist, or is disabled, stops `dropzone` at start-up
/// with a configuration error naming it.
#[test]
fn a_missing_or_disabled_key_is_a_configuration_error() {
    let moto = Moto::start();
    let arn = moto.create_key("dropzone");
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let srv = start_dropzone(&["alice"], aws_kms_config(&endpoint, "alias/dropzone"));
    let config = srv.path("config/dropzone.toml");
    let text = std::fs::read_to_string(&config).unwrap();

    std::fs::write(&config, text.replace("alias/dropzone", "alias/nothing")).unwrap();
    let mut cmd = srv.dropzone_tool(&["verify"]);
    let out = srv.run_fail(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe("verify", &cmd, &out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("alias/nothing") && err.contains("NotFoundException"),
        "{err}"
    );

    std::fs::write(&config, &text).unwrap();
    // (moto answers 500 to DisableKey with an ARN: the key id it is.)
    moto.boto3(&format!("kms.disable_key(KeyId='{arn}'.split('/')[-1])"));
    let mut cmd = srv.dropzone_tool(&["verify"]);
    let out = srv.run_fail(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe("verify", &cmd, &out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("not enabled") || err.contains("Disabled"),
        "{err}"
    );
}

/// No credentials anywhere: a configuration error that says what to set.
#[test]
fn no_credentials_is_a_configuration_error() {
    let moto = Moto::start();
    moto.create_key("dropzone");
    let srv = start_dropzone(
        &["alice"],
        aws_kms_config(&format!("http://127.0.0.1:{}", moto.port), "alias/dropzone"),
    );
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = srv.dropzone_tool(&["verify"]);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", empty.path());
    let out = srv.run_fail(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe("verify", &cmd, &out)
    );
    assert!(
        stderr(&out).contains("no AWS credentials found"),
        "{}",
        stderr(&out)
    );
}

/// KMS unreachable when dropzone starts: it starts anyway (logins fail
/// closed), and once KMS is back a new user's key file names the key's ARN
/// from the Encrypt reply, not the configured alias.
#[test]
fn kms_down_at_start_up_then_back() {
    let moto = Moto::start();
    let arn = moto.create_key("dropzone");
    let mut proxy = Proxy::start(moto.port);
    proxy.cut();
    let srv = start_dropzone(&["alice"], aws_kms_config(&proxy.url(), "alias/dropzone"));
    let log = srv.log();
    assert!(log.contains("AWS KMS unavailable at start-up"), "{log}");
    assert_refused(&srv, "alice", UNAVAILABLE);
    assert!(!srv.path("keks/alice.key").exists());
    proxy.restore();
    let mut cmd = srv.sftp("alice", "ls\n");
    srv.run(&mut cmd);
    assert_eq!(field(&key_file(&srv, "alice"), "secret_path"), arn);
}

/// Credentials from a web identity token: exchanged at STS (moto's) for
/// temporary credentials, once while they are valid.
#[test]
fn web_identity_credentials() {
    let moto = Moto::start();
    moto.create_key("dropzone");
    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl\n").unwrap();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let none = work.path().join("none");
    let env: Vec<(String, String)> = [
        // Empty counts as unset, whatever the test's own environment holds.
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_PROFILE", ""),
        ("AWS_SHARED_CREDENTIALS_FILE", none.to_str().unwrap()),
        ("AWS_CONFIG_FILE", none.to_str().unwrap()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/dropzone"),
        ("AWS_ENDPOINT_URL_STS", &endpoint),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let srv = Server::start_opts(
        &[("alice", None), ("bob", None)],
        &ServerOptions {
            kms_config: Some(aws_kms_config(&endpoint, "alias/dropzone")),
            env,
            ..ServerOptions::default()
        },
    );
    std::fs::write(srv.local_path("f.txt"), b"via web identity\n").unwrap();
    for user in ["alice", "bob"] {
        let mut cmd = srv.sftp(user, "put f.txt\nget f.txt back.txt\n");
        srv.run(&mut cmd);
        assert_eq!(
            std::fs::read(srv.local_path("back.txt")).unwrap(),
            b"via web identity\n"
        );
    }
    let log = srv.log();
    assert!(
        log.contains("credentials=web identity (role arn:aws:iam::123456789012:role/dropzone"),
        "{log}"
    );
    assert_eq!(
        log.matches("assumed role with web identity").count(),
        1,
        "one STS call for the credentials' lifetime:\n{log}"
    );
}

/// moto checks signatures once its IAM is on (after
/// `INITIAL_NO_AUTH_ACTION_COUNT` unchecked calls, spent here on the set-up):
/// dropzone's SigV4 requests are accepted with an IAM user's access key and
/// refused with a wrong secret.
#[test]
fn moto_checks_the_signatures() {
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "5")]);
    let created = moto.boto3(
        "import json\n\
         iam = boto3.client('iam', endpoint_url=kms.meta.endpoint_url, region_name='us-east-1', \
           aws_access_key_id='testing', aws_secret_access_key='testing')\n\
         iam.create_user(UserName='dropzone')\n\
         k = iam.create_access_key(UserName='dropzone')['AccessKey']\n\
         iam.put_user_policy(UserName='dropzone', PolicyName='kms', PolicyDocument=json.dumps(\
           {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 'kms:*', 'Resource': '*'}]}))\n\
         key = kms.create_key()['KeyMetadata']['KeyId']\n\
         kms.create_alias(AliasName='alias/dropzone', TargetKeyId=key)\n\
         print(k['AccessKeyId'], k['SecretAccessKey'])",
    );
    let (id, secret) = created.split_once(' ').unwrap();
    let env = |secret: &str| -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".to_owned(), id.to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), secret.to_owned()),
            ("AWS_SESSION_TOKEN".to_owned(), String::new()),
        ]
    };
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let srv = Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            kms_config: Some(aws_kms_config(&endpoint, "alias/dropzone")),
            env: env(secret),
            ..ServerOptions::default()
        },
    );
    std::fs::write(srv.local_path("f.txt"), b"signed\n").unwrap();
    let mut cmd = srv.sftp("alice", "put f.txt\nget f.txt back.txt\n");
    srv.run(&mut cmd);
    assert_eq!(
        std::fs::read(srv.local_path("back.txt")).unwrap(),
        b"signed\n"
    );
    assert_eq!(field(&key_file(&srv, "alice"), "backend"), "aws-kms");

    let mut cmd = srv.dropzone_tool(&["verify"]);
    cmd.envs(env("not-the-secret"));
    let out = srv.run_fail(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe("verify", &cmd, &out)
    );
    assert!(
        stderr(&out).contains("SignatureDoesNotMatch"),
        "{}",
        stderr(&out)
    );
}
