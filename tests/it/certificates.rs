//! SSH certificates: user certificates made by `ssh-keygen -s` logging in
//! (or refused) over OpenSSH sftp/scp and paramiko, revoked keys (KRLs and
//! key lists) changed while the server runs, and a host certificate that an
//! OpenSSH client with `@cert-authority` accepts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::harness::*;

/// A certificate authority and the keys it certifies, outside the server's
/// directory.
struct Ca {
    dir: tempfile::TempDir,
}

fn keygen(dir: &Path, args: &[&str]) {
    let out = run_any(Command::new("ssh-keygen").current_dir(dir).args(args));
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} failed: {}",
        stderr(&out)
    );
}

fn run_any(cmd: &mut Command) -> Output {
    output_with_timeout(cmd, None)
}

impl Ca {
    /// The CA `ca` (trusted by the server) and `rogue` (not trusted).
    fn new() -> Ca {
        let dir = tempfile::Builder::new()
            .prefix("dropzone-ca-")
            .tempdir()
            .unwrap();
        for name in ["ca", "rogue"] {
            keygen(dir.path(), &["-q", "-t", "ed25519", "-N", "", "-f", name]);
        }
        std::fs::write(dir.path().join("revoked"), "").unwrap();
        Ca { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new key `name` and its certificate `name-cert.pub`, signed by
    /// `signer` with key id `name`, serial `serial` and `options` (`-n`,
    /// `-V`, `-O` ...). Returns the private key's path.
    fn issue(&self, signer: &str, name: &str, serial: u64, options: &[&str]) -> PathBuf {
        keygen(
            self.dir.path(),
            &["-q", "-t", "ed25519", "-N", "", "-f", name],
        );
        let serial = serial.to_string();
        let mut args = vec!["-q", "-s", signer, "-I", name, "-z", &serial];
        args.extend(options);
        let public = format!("{name}.pub");
        args.push(&public);
        keygen(self.dir.path(), &args);
        self.path(name)
    }

    /// The `[auth]` keys that trust `ca` and read `revoked`.
    fn auth_config(&self) -> String {
        format!(
            "pam = false\ntrusted_user_ca_keys = {:?}\nrevoked_keys = {:?}\n",
            self.path("ca.pub"),
            self.path("revoked")
        )
    }

    /// Replaces the revoked keys file (in place, as an operator's `cp`).
    fn revoke_file(&self, contents: &[u8]) {
        std::fs::write(self.path("revoked"), contents).unwrap();
    }

    /// Writes a KRL made by `ssh-keygen -k` from `spec` (with `-s ca.pub`)
    /// over the revoked keys file.
    fn revoke_spec(&self, spec: &str) {
        std::fs::write(self.path("spec"), spec).unwrap();
        let _ = std::fs::remove_file(self.path("krl"));
        keygen(
            self.dir.path(),
            &["-q", "-k", "-f", "krl", "-s", "ca.pub", "spec"],
        );
        self.revoke_file(&std::fs::read(self.path("krl")).unwrap());
    }
}

/// A server with `alice` and `bob` (each with an authorized key of their
/// own), trusting `ca`, with an audit log and no failure penalties (the
/// tests refuse many certificates from one address).
fn server(ca: &Ca) -> Server {
    Server::start_opts(
        &[("alice", None), ("bob", None)],
        &ServerOptions {
            auth_config: Some(ca.auth_config()),
            extra_config: "\n[audit]\nlog_file = \"audit.jsonl\"\n[limits]\npenalty = false\n"
                .into(),
            ..ServerOptions::default()
        },
    )
}

/// An OpenSSH client (`ssh`, `sftp`, `scp`) logging in with `key` only (and
/// its certificate `cert`, if given), in the scratch directory.
fn client(srv: &Server, program: &str, key: &Path, cert: Option<&Path>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(srv.local()).env_remove("SSH_AUTH_SOCK");
    cmd.args(Server::common_opts()).args([
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "KbdInteractiveAuthentication=no",
    ]);
    cmd.arg("-i").arg(key);
    if let Some(cert) = cert {
        cmd.arg("-o")
            .arg(format!("CertificateFile={}", cert.display()));
    }
    cmd
}

/// `sftp -b` running `batch` as `user` with `key` (and `cert`).
fn sftp(srv: &Server, user: &str, key: &Path, cert: Option<&Path>, batch: &str) -> Command {
    let file = srv.local_path("batch.txt");
    std::fs::write(&file, batch).unwrap();
    let mut cmd = client(srv, "sftp", key, cert);
    cmd.args(["-P", &srv.port.to_string(), "-b"])
        .arg(&file)
        .arg(srv.dest(user));
    cmd
}

/// The audit log's events, parsed.
fn audit(srv: &Server) -> Vec<serde_json::Value> {
    std::fs::read_to_string(srv.path("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits for an audit event of `event` for `user` whose `reason` contains
/// `reason` (any reason when empty), and returns it.
#[track_caller]
fn wait_event(srv: &Server, event: &str, user: &str, reason: &str) -> serde_json::Value {
    srv.wait_for(
        &format!("a {event} event for {user} with reason {reason:?}"),
        || {
            audit(srv).into_iter().find(|e| {
                e["event"] == event
                    && e["user"] == user
                    && e["reason"].as_str().unwrap_or_default().contains(reason)
            })
        },
    )
}

fn cert_of(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}-cert.pub", key.display()))
}

/// The SHA-256 fingerprint of the CA key, as `ssh-keygen -l` prints it.
fn fingerprint(public: &Path) -> String {
    let out = run_any(Command::new("ssh-keygen").arg("-lf").arg(public));
    stdout(&out)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned()
}

#[test]
fn certificate_logins_over_openssh_sftp_and_scp() {
    let ca = Ca::new();
    let srv = server(&ca);
    let key = ca.issue(
        "ca",
        "alice-laptop",
        4242,
        &["-n", "alice", "-V", "-5m:+1h"],
    );
    let cert = cert_of(&key);

    // The certified key alone is not authorized: the certificate is what
    // logs in.
    let bare = srv.local_path("bare");
    std::fs::copy(&key, &bare).unwrap();
    std::fs::set_permissions(&bare, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    srv.run_fail(&mut sftp(&srv, "alice", &bare, None, "ls\n"));

    std::fs::write(srv.local_path("up.txt"), "by certificate\n").unwrap();
    let out = srv.run(&mut sftp(
        &srv,
        "alice",
        &key,
        Some(&cert),
        "put up.txt\nls -1\n",
    ));
    assert!(stdout(&out).contains("up.txt"), "{}", stdout(&out));
    // scp, finding `KEY-cert.pub` next to the key by itself.
    std::fs::write(srv.local_path("scp.txt"), "scp too\n").unwrap();
    let mut scp = client(&srv, "scp", &key, None);
    scp.args(["-q", "-P", &srv.port.to_string()])
        .arg("scp.txt")
        .arg(srv.remote("alice", "scp.txt"));
    srv.run(&mut scp);
    srv.run(&mut sftp(
        &srv,
        "alice",
        &key,
        Some(&cert),
        "get scp.txt scp-back.txt\n",
    ));
    assert_eq!(
        std::fs::read_to_string(srv.local_path("scp-back.txt")).unwrap(),
        "scp too\n"
    );
    // Bob cannot use Alice's certificate.
    srv.run_fail(&mut sftp(&srv, "bob", &key, Some(&cert), "ls\n"));

    let login = wait_event(&srv, "login", "alice", "");
    assert_eq!(login["method"], "certificate", "{login}");
    assert_eq!(login["certificate"]["key_id"], "alice-laptop", "{login}");
    assert_eq!(login["certificate"]["serial"], 4242, "{login}");
    assert_eq!(
        login["certificate"]["ca"],
        fingerprint(&ca.path("ca.pub")).as_str(),
        "{login}"
    );
    let refused = wait_event(&srv, "login_failed", "bob", "principal");
    assert_eq!(
        refused["certificate"]["key_id"], "alice-laptop",
        "{refused}"
    );
}

#[test]
fn refused_certificates_say_why() {
    let ca = Ca::new();
    let srv = server(&ca);
    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            "wrong-principal",
            "ca",
            &["-n", "bob,carol"],
            "no principal",
        ),
        ("no-principals", "ca", &[], "names no principals"),
        ("untrusted", "rogue", &["-n", "alice"], "untrusted CA"),
        (
            "forced",
            "ca",
            &["-n", "alice", "-O", "force-command=/bin/true"],
            "force-command",
        ),
        (
            "elsewhere",
            "ca",
            &["-n", "alice", "-O", "source-address=10.0.0.0/8,192.0.2.1"],
            "source-address",
        ),
    ];
    for (n, &(name, signer, options, reason)) in cases.iter().enumerate() {
        let key = ca.issue(signer, name, n as u64 + 1, options);
        let out = srv.run_fail(&mut sftp(&srv, "alice", &key, Some(&cert_of(&key)), "ls\n"));
        assert!(
            stderr(&out).contains("Permission denied"),
            "{name}: {}",
            stderr(&out)
        );
        let event = srv.wait_for(&format!("the refusal of {name}"), || {
            audit(&srv)
                .into_iter()
                .find(|e| e["certificate"]["key_id"] == name)
        });
        assert_eq!(event["event"], "login_failed", "{name}: {event}");
        assert_eq!(event["method"], "certificate", "{name}: {event}");
        let why = event["reason"].as_str().unwrap_or_default();
        assert!(
            why.contains(reason),
            "{name}: expected {reason:?} in {why:?}"
        );
        assert!(
            srv.log().contains(reason),
            "{name}: the server log should say {reason:?}"
        );
    }
    // Outside its window: russh refuses it before asking the server (so
    // there is no audit event), and logs why.
    for (n, window) in ["-2d:-1d", "+1d:+2d"].into_iter().enumerate() {
        let name = format!("window-{n}");
        let key = ca.issue("ca", &name, 50 + n as u64, &["-n", "alice", "-V", window]);
        srv.run_fail(&mut sftp(&srv, "alice", &key, Some(&cert_of(&key)), "ls\n"));
    }
    assert!(
        srv.log()
            .contains("Certificate is expired or not yet valid"),
        "{}",
        srv.log_tail(20)
    );
    // A source address that includes the client is fine.
    let key = ca.issue(
        "ca",
        "here",
        100,
        &["-n", "alice", "-O", "source-address=10.0.0.0/8,127.0.0.0/8"],
    );
    srv.run(&mut sftp(&srv, "alice", &key, Some(&cert_of(&key)), "ls\n"));
    assert!(
        !audit(&srv)
            .iter()
            .any(|e| e["event"] == "login" && e["certificate"]["key_id"] != "here"),
        "only the last certificate may have logged in"
    );
}

#[test]
fn users_file_principals_replace_the_login_name() {
    let ca = Ca::new();
    let srv = server(&ca);
    let ops = ca.issue("ca", "ops-cert", 1, &["-n", "ops"]);
    let named = ca.issue("ca", "named-cert", 2, &["-n", "bob"]);
    // Without principals in the file, bob's name must be in the certificate.
    srv.run(&mut sftp(
        &srv,
        "bob",
        &named,
        Some(&cert_of(&named)),
        "ls\n",
    ));
    srv.run_fail(&mut sftp(&srv, "bob", &ops, Some(&cert_of(&ops)), "ls\n"));
    // `dropzone user set --principals`, picked up by the running server.
    srv.run(&mut srv.dropzone_tool(&["user", "set", "bob", "--principals", "ops,admins"]));
    let users = std::fs::read_to_string(srv.path("config/users.toml")).unwrap();
    assert!(
        users.contains("principals = [\"ops\", \"admins\"]"),
        "{users}"
    );
    srv.run(&mut sftp(&srv, "bob", &ops, Some(&cert_of(&ops)), "ls\n"));
    // Now the name alone is not enough.
    srv.run_fail(&mut sftp(
        &srv,
        "bob",
        &named,
        Some(&cert_of(&named)),
        "ls\n",
    ));
    // A user added with principals only logs in by certificate.
    srv.run(&mut srv.dropzone_tool(&["user", "add", "dave", "--principals", "ops"]));
    srv.run(&mut sftp(&srv, "dave", &ops, Some(&cert_of(&ops)), "ls\n"));
    let list = stdout(&srv.run(&mut srv.dropzone_tool(&["user", "list"])));
    assert!(
        list.lines()
            .any(|l| l.starts_with("bob\t") && l.contains("certificates for ops admins")),
        "{list}"
    );
    // "" clears them: the name is needed again.
    srv.run(&mut srv.dropzone_tool(&["user", "set", "bob", "--principals", ""]));
    srv.run(&mut sftp(
        &srv,
        "bob",
        &named,
        Some(&cert_of(&named)),
        "ls\n",
    ));
    srv.run_fail(&mut sftp(&srv, "bob", &ops, Some(&cert_of(&ops)), "ls\n"));
    // An unknown user cannot log in with any certificate.
    let stranger = ca.issue("ca", "stranger", 3, &["-n", "carol"]);
    srv.run_fail(&mut sftp(
        &srv,
        "carol",
        &stranger,
        Some(&cert_of(&stranger)),
        "ls\n",
    ));
    wait_event(&srv, "login_failed", "carol", "no such user");
}

#[test]
fn revoked_keys_take_effect_without_a_restart() {
    let ca = Ca::new();
    let srv = server(&ca);
    let key = ca.issue("ca", "laptop", 77, &["-n", "alice"]);
    let cert = cert_of(&key);
    let login = |srv: &Server| sftp(srv, "alice", &key, Some(&cert), "ls\n");
    srv.run(&mut login(&srv));

    // By serial, then by key id, in KRLs made by ssh-keygen.
    ca.revoke_spec("serial: 70-80\n");
    srv.run_fail(&mut login(&srv));
    wait_event(&srv, "login_failed", "alice", "serial number is revoked");
    ca.revoke_spec("serial: 78\n");
    srv.run(&mut login(&srv));
    ca.revoke_spec("id: laptop\n");
    srv.run_fail(&mut login(&srv));
    wait_event(&srv, "login_failed", "alice", "key id is revoked");

    // The certified key itself, in a KRL without a CA: its certificates go
    // with it.
    let _ = std::fs::remove_file(ca.path("krl"));
    keygen(ca.dir.path(), &["-q", "-k", "-f", "krl", "laptop.pub"]);
    ca.revoke_file(&std::fs::read(ca.path("krl")).unwrap());
    srv.run_fail(&mut login(&srv));
    wait_event(&srv, "login_failed", "alice", "key revoked");

    // A plain list of public keys: alice's own authorized key.
    ca.revoke_file(b"");
    srv.run(&mut login(&srv));
    srv.run(&mut srv.sftp("alice", "ls\n"));
    let alice_pub = std::fs::read(srv.user("alice").key.with_extension("pub")).unwrap();
    ca.revoke_file(&alice_pub);
    srv.run_fail(&mut srv.sftp("alice", "ls\n"));
    srv.run(&mut login(&srv));
    srv.run(&mut srv.sftp("bob", "ls\n"));

    // A broken file refuses every key login until it is fixed.
    ca.revoke_file(b"SSHKRL\n\0garbage");
    srv.run_fail(&mut login(&srv));
    srv.run_fail(&mut srv.sftp("bob", "ls\n"));
    wait_event(&srv, "login_failed", "bob", "revoked keys file unusable");
    assert!(
        srv.log().contains("revoked keys file unusable"),
        "{}",
        srv.log_tail(20)
    );
    ca.revoke_file(b"# nothing revoked\n");
    srv.run(&mut login(&srv));
    srv.run(&mut srv.sftp("bob", "ls\n"));
}

const PARAMIKO: &str = r#"
import sys
import paramiko
from paramiko.pkey import PublicBlob

port, key, cert, other = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def connect(pkey):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=port, username="alice", pkey=pkey,
                   look_for_keys=False, allow_agent=False, timeout=20)
    return client

k = paramiko.Ed25519Key.from_private_key_file(key)
k.load_certificate(cert)
c = connect(k)
s = c.open_sftp()
with s.open("paramiko.txt", "w") as f:
    f.write("certified\n")
print("list", ",".join(sorted(s.listdir("/"))))
s.close()
c.close()

# Someone else's key presenting alice's certificate: the signature is made
# with the wrong key, so the server must refuse it.
forged = paramiko.Ed25519Key.from_private_key_file(other)
forged.public_blob = PublicBlob.from_file(cert)
try:
    connect(forged)
    print("forged accepted")
except paramiko.AuthenticationException:
    print("forged refused")
"#;

#[test]
fn paramiko_logs_in_with_a_certificate_and_a_forged_one_is_refused() {
    let have = Command::new("python3")
        .args(["-c", "import paramiko"])
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(have, Ok(true)),
        "python3 with paramiko is required for this test: install it (pip install paramiko)"
    );
    let ca = Ca::new();
    let srv = server(&ca);
    let key = ca.issue("ca", "pm", 9, &["-n", "alice"]);
    let thief = ca.issue("rogue", "thief", 1, &["-n", "mallory"]);
    let mut cmd = Command::new("python3");
    cmd.current_dir(srv.local())
        .env_remove("SSH_AUTH_SOCK")
        .args(["-c", PARAMIKO, &srv.port.to_string()])
        .arg(&key)
        .arg(cert_of(&key))
        .arg(&thief);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    for line in ["list paramiko.txt", "forged refused"] {
        srv.check(
            text.lines().any(|l| l == line),
            &format!("paramiko output lacks {line:?}"),
            &cmd,
            &out,
        );
    }
    let logins: Vec<_> = audit(&srv)
        .into_iter()
        .filter(|e| e["event"] == "login")
        .collect();
    assert_eq!(
        logins.len(),
        1,
        "only the real certificate logs in: {logins:?}"
    );
    assert_eq!(logins[0]["certificate"]["key_id"], "pm");
}

#[test]
fn openssh_accepts_the_host_certificate_of_a_trusted_host_ca() {
    let ca = Ca::new();
    let mut srv = server(&ca);
    // Sign the host key the server generated, name the certificate in the
    // configuration and start the server again.
    let out = run_any(
        Command::new("ssh-keygen")
            .arg("-yf")
            .arg(srv.path("host_keys/ssh_host_ed25519_key")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(ca.path("host.pub"), stdout(&out)).unwrap();
    keygen(
        ca.dir.path(),
        &[
            "-q",
            "-s",
            "ca",
            "-h",
            "-I",
            "dropzone-host",
            "-n",
            "127.0.0.1",
            "host.pub",
        ],
    );
    let known_hosts = srv.local_path("known_hosts");
    let ca_pub = std::fs::read_to_string(ca.path("ca.pub")).unwrap();
    std::fs::write(&known_hosts, format!("@cert-authority * {ca_pub}")).unwrap();

    let strict = |srv: &Server| {
        let mut cmd = Command::new("sftp");
        cmd.current_dir(srv.local()).env_remove("SSH_AUTH_SOCK");
        cmd.args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(&srv.user("alice").key)
            .args(["-P", &srv.port.to_string(), "-b", "-"])
            .arg(srv.dest("alice"));
        cmd
    };
    // Without the certificate the client cannot verify the host.
    let out = output_with_timeout(&mut strict(&srv), Some(b"ls\n"));
    assert!(!out.status.success(), "the host must not be trusted yet");
    assert!(
        stderr(&out).contains("Host key verification failed"),
        "{}",
        stderr(&out)
    );

    let config = srv.path("config/dropzone.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "host_keys_dir = \"host_keys\"\n",
        &format!(
            "host_keys_dir = \"host_keys\"\nhost_certificates = [{:?}]\n",
            ca.path("host-cert.pub")
        ),
        1,
    );
    std::fs::write(&config, text).unwrap();
    srv.kill9();
    srv.restart();
    let out = output_with_timeout(&mut strict(&srv), Some(b"ls\n"));
    srv.check(
        out.status.success(),
        "sftp with StrictHostKeyChecking=yes and only @cert-authority",
        &strict(&srv),
        &out,
    );
    assert!(
        srv.log().contains("host certificate"),
        "{}",
        srv.log_tail(20)
    );
}

#[test]
fn a_host_certificate_of_another_key_stops_the_start() {
    let ca = Ca::new();
    let mut srv = server(&ca);
    keygen(
        ca.dir.path(),
        &["-q", "-t", "ed25519", "-N", "", "-f", "stranger"],
    );
    keygen(
        ca.dir.path(),
        &[
            "-q",
            "-s",
            "ca",
            "-h",
            "-I",
            "x",
            "-n",
            "127.0.0.1",
            "stranger.pub",
        ],
    );
    let config = srv.path("config/dropzone.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "host_keys_dir = \"host_keys\"\n",
        &format!(
            "host_keys_dir = \"host_keys\"\nhost_certificates = [{:?}]\n",
            ca.path("stranger-cert.pub")
        ),
        1,
    );
    std::fs::write(&config, text).unwrap();
    srv.kill9();
    let out = run_any(
        srv.dropzone()
            .args(["serve", "--config", "config/dropzone.toml"]),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certifies none of the host keys"),
        "{}",
        stderr(&out)
    );
}
