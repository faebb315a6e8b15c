//! `dropzone keys migrate`: every user's key moved to AWS KMS (a real moto
//! server) from the local backend and from EaaS (the real `dropzone-eaas`),
//! and from the local backend to Vault (a real OpenBao),
//! with a server on the old configuration serving every user while the
//! move runs, a server on the new configuration serving every user after
//! it, and no stored file changed.

use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use super::aws_kms::{Moto, Proxy, aws_env, aws_kms_config, field, key_file, snapshot};
use super::harness::*;
use super::vault::{Bao, ROOT_TOKEN, secret_file, vault_kms};

/// The `dropzone-eaas` binary.
const EAAS_BIN: &str = env!("CARGO_BIN_EXE_dropzone-eaas");

const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// A second `dropzone serve` in the same directory as `srv`, on another
/// configuration; killed on drop.
struct OtherServer {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl OtherServer {
    fn start(srv: &Server, config: &str) -> OtherServer {
        let log = Arc::new(Mutex::new(String::new()));
        let mut cmd = srv.dropzone();
        cmd.args(["serve", "--config", config]);
        let (child, port) = spawn_listening(&mut cmd, &log)
            .unwrap_or_else(|(status, log)| panic!("{config}: exited ({status})\n{log}"));
        OtherServer { child, port, log }
    }

    /// `sftp` to this server as `user` of `srv`.
    fn sftp(&self, srv: &Server, user: &str, batch: &str) -> Command {
        // The harness's -P comes after and reaches ssh as a later -oPort;
        // ssh keeps the first value it is given.
        srv.sftp_with(user, &["-o", &format!("Port={}", self.port)], batch)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for OtherServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dropzone-eaas serve` on a free port in `dir`; killed on drop.
struct Eaas {
    child: Child,
    port: u16,
}

impl Eaas {
    fn start(dir: &std::path::Path) -> Eaas {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("eaas.toml"),
            "listen = \"127.0.0.1:0\"\nkeys_dir = \"keys\"\n",
        )
        .unwrap();
        let mut cmd = Command::new(EAAS_BIN);
        cmd.current_dir(dir)
            .env_remove("DROPZONE_EAAS_CONFIG")
            .env_remove("DROPZONE_EAAS_LISTEN")
            .env_remove("DROPZONE_EAAS_PASSPHRASE")
            .env("RUST_LOG", "info")
            .args(["serve", "--config", "eaas.toml"]);
        let log = Arc::new(Mutex::new(String::new()));
        let (child, port) = spawn_listening(&mut cmd, &log)
            .unwrap_or_else(|(status, log)| panic!("dropzone-eaas exited ({status})\n{log}"));
        Eaas { child, port }
    }
}

impl Drop for Eaas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Downloads every user's `f.bin` through `sftp` (made by `client`) and
/// compares it with what they uploaded.
fn everyone_reads(srv: &Server, client: &dyn Fn(&str, &str) -> Command, round: usize) {
    for user in USERS {
        let got = format!("{user}-{round}.bin");
        let mut cmd = client(user, &format!("get f.bin {got}\n"));
        srv.run(&mut cmd);
        assert_same_file(
            &srv.local_path(&format!("{user}.bin")),
            &srv.local_path(&got),
        );
        std::fs::remove_file(srv.local_path(&got)).unwrap();
    }
}

/// Where keys move to: the `[kms]` tables, the backend's name in key
/// files, and the master key they must name (`secret_path`).
struct Target {
    kms: String,
    backend: &'static str,
    secret_path: String,
}

/// AWS KMS at `moto`, with a new key.
fn aws_kms_target(moto: &Moto) -> Target {
    let arn = moto.create_key("dropzone");
    Target {
        kms: aws_kms_config(&format!("http://127.0.0.1:{}", moto.port), "alias/dropzone"),
        backend: "aws-kms",
        secret_path: arn,
    }
}

/// The whole move, from the backend `srv` runs on (`old_kms`, recorded in
/// key files as `old_backend`) to `target`.
fn migrate_to(srv: &Server, old_kms: &str, old_backend: &str, target: &Target) {
    for (i, user) in USERS.iter().enumerate() {
        let data = random_bytes(100_000 + i * 1000, fresh_seed());
        std::fs::write(srv.local_path(&format!("{user}.bin")), &data).unwrap();
        let mut cmd = srv.sftp(user, &format!("put {user}.bin f.bin\n"));
        srv.run(&mut cmd);
        assert_eq!(field(&key_file(srv, user), "backend"), old_backend);
    }
    let files = snapshot(&srv.path("data"));
    let config = std::fs::read_to_string(srv.path("config/dropzone.toml")).unwrap();
    let new_kms = &target.kms;
    assert!(config.contains(old_kms));
    std::fs::write(
        srv.path("config/new.toml"),
        config.replace(old_kms, new_kms),
    )
    .unwrap();
    let old_client = |user: &str, batch: &str| srv.sftp(user, batch);

    // Step 1 runs while the old server serves every user.
    let mut cmd = srv.dropzone_tool(&["keys", "migrate", "--to-config", "config/new.toml"]);
    let out_file = tempfile::NamedTempFile::new().unwrap();
    cmd.stdout(out_file.reopen().unwrap());
    let mut child = cmd.spawn().unwrap();
    let mut round = 0;
    let status = loop {
        everyone_reads(srv, &old_client, round);
        round += 1;
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
    };
    let said = std::fs::read_to_string(out_file.path()).unwrap();
    assert!(status.success(), "migrate failed ({status}):\n{said}");
    for (n, user) in USERS.iter().enumerate() {
        assert!(
            said.contains(&format!("migrated {user} ({}/3 users)", n + 1)),
            "{said}"
        );
    }
    assert!(said.contains("3 migrated"), "{said}");
    everyone_reads(srv, &old_client, round);
    for user in USERS {
        let k = key_file(srv, user);
        assert_eq!(
            field(&k, "backend"),
            old_backend,
            "the old wrapping stays primary"
        );
        let others = k["other_wrapping"].as_array().unwrap();
        assert_eq!(others.len(), 1, "{k:?}");
        let other = others[0].as_table().unwrap();
        assert_eq!(field(other, "backend"), target.backend);
        assert_eq!(field(other, "secret_path"), target.secret_path);
    }

    // A server on the new configuration serves everyone; the old one too.
    let new = OtherServer::start(srv, "config/new.toml");
    let new_client = |user: &str, batch: &str| new.sftp(srv, user, batch);
    everyone_reads(srv, &new_client, 100);
    everyone_reads(srv, &old_client, 101);
    let log = new.log();
    assert!(
        log.contains("login"),
        "the new server served no one:\n{log}"
    );

    // Again: nothing to do (resumable, idempotent).
    let out =
        srv.run(&mut srv.dropzone_tool(&["keys", "migrate", "--to-config", "config/new.toml"]));
    let said = stdout(&out);
    assert!(
        said.contains("0 migrated") && said.contains("3 already done"),
        "{said}"
    );

    // Finish: only the new wrapping is left; the new server still
    // serves everyone, the old one no longer can.
    let out = srv.run(&mut srv.dropzone_tool(&[
        "keys",
        "migrate",
        "--to-config",
        "config/new.toml",
        "--finish",
    ]));
    let said = stdout(&out);
    assert!(
        said.contains("3 finished") && said.contains("(3/3 users)"),
        "{said}"
    );
    for user in USERS {
        let k = key_file(srv, user);
        assert_eq!(field(&k, "backend"), target.backend);
        assert_eq!(field(&k, "secret_path"), target.secret_path);
        assert!(!k.contains_key("other_wrapping"), "{k:?}");
    }
    everyone_reads(srv, &new_client, 200);
    let mut cmd = srv.sftp("alice", "ls\n");
    srv.run_fail(&mut cmd);
    let out = srv.run(&mut srv.dropzone_tool(&[
        "keys",
        "migrate",
        "--to-config",
        "config/new.toml",
        "--finish",
    ]));
    assert!(stdout(&out).contains("3 already done"), "{}", stdout(&out));
    assert_eq!(files, snapshot(&srv.path("data")), "stored files changed");
}

#[test]
fn migrate_local_to_aws_kms_while_serving() {
    let moto = Moto::start();
    let users: Vec<(&str, Option<&str>)> = USERS.iter().map(|u| (*u, None)).collect();
    let srv = Server::start_opts(
        &users,
        &ServerOptions {
            env: aws_env(),
            ..ServerOptions::default()
        },
    );
    migrate_to(&srv, LOCAL_KMS_CONFIG, "local", &aws_kms_target(&moto));
}

#[test]
fn migrate_local_to_vault_while_serving() {
    let bao = Bao::start();
    bao.ok(&[
        "write",
        "-f",
        "transit/keys/dropzone",
        "type=aes256-gcm96",
        "derived=true",
    ]);
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", ROOT_TOKEN);
    let target = Target {
        kms: vault_kms(&bao, &format!("token_file = {token:?}\n")),
        backend: "vault",
        secret_path: "dropzone".into(),
    };
    let users: Vec<(&str, Option<&str>)> = USERS.iter().map(|u| (*u, None)).collect();
    let srv = Server::start_with(&users);
    migrate_to(&srv, LOCAL_KMS_CONFIG, "local", &target);
}

#[test]
fn migrate_eaas_to_aws_kms_while_serving() {
    let moto = Moto::start();
    let work = tempfile::tempdir().unwrap();
    let eaas = Eaas::start(&work.path().join("eaas"));
    let old_kms = format!(
        "[kms]\nbackend = \"eaas\"\nkey_cache_ttl_secs = 0\n\n\
         [kms.eaas]\nurl = \"http://127.0.0.1:{}\"\nsecret_path = \"dropzone/rsa\"\nsecret_version = \"1\"\n",
        eaas.port
    );
    let users: Vec<(&str, Option<&str>)> = USERS.iter().map(|u| (*u, None)).collect();
    let srv = Server::start_opts(
        &users,
        &ServerOptions {
            kms_config: Some(old_kms.clone()),
            env: aws_env(),
            ..ServerOptions::default()
        },
    );
    migrate_to(&srv, &old_kms, "eaas", &aws_kms_target(&moto));
}

/// Both configurations must share the key directory; a migration to the
/// same backend is a rotation, not a move.
#[test]
fn migrate_refuses_a_different_keks_dir_or_the_same_backend() {
    let srv = Server::start_with(&[("alice", None)]);
    let mut cmd = srv.sftp("alice", "ls\n");
    srv.run(&mut cmd);
    let config = std::fs::read_to_string(srv.path("config/dropzone.toml")).unwrap();
    std::fs::write(
        srv.path("config/other-dir.toml"),
        config.replace("keks_dir = \"keks\"", "keks_dir = \"keks2\""),
    )
    .unwrap();
    let mut cmd = srv.dropzone_tool(&["keys", "migrate", "--to-config", "config/other-dir.toml"]);
    let out = srv.run_fail(&mut cmd);
    assert!(
        stderr(&out).contains("different keks_dir"),
        "{}",
        stderr(&out)
    );
    let mut cmd = srv.dropzone_tool(&["keys", "migrate", "--to-config", "config/dropzone.toml"]);
    let out = srv.run_fail(&mut cmd);
    let said = stdout(&out);
    assert!(
        said.contains("a rotation") && said.contains("1 failed"),
        "{said}"
    );
}

/// KMS unreachable during a migration: every user fails, no key file
/// changes, and the run can simply be repeated; a user who first logs in
/// on the old configuration afterwards is picked up by the next run.
#[test]
fn a_failed_migration_changes_nothing_and_resumes() {
    let moto = Moto::start();
    moto.create_key("dropzone");
    let mut proxy = Proxy::start(moto.port);
    let users: Vec<(&str, Option<&str>)> = ["alice", "bob", "dave"]
        .iter()
        .map(|u| (*u, None))
        .collect();
    let srv = Server::start_opts(
        &users,
        &ServerOptions {
            env: aws_env(),
            ..ServerOptions::default()
        },
    );
    for user in ["alice", "bob"] {
        srv.run(&mut srv.sftp(user, "ls\n"));
    }
    let config = std::fs::read_to_string(srv.path("config/dropzone.toml")).unwrap();
    std::fs::write(
        srv.path("config/new.toml"),
        config.replace(
            LOCAL_KMS_CONFIG,
            &aws_kms_config(&proxy.url(), "alias/dropzone"),
        ),
    )
    .unwrap();
    let keks = snapshot(&srv.path("keks"));
    proxy.cut();
    let migrate = || srv.dropzone_tool(&["keys", "migrate", "--to-config", "config/new.toml"]);
    let out = srv.run_fail(&mut migrate());
    let said = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("FAILED alice") && said.contains("2 failed"),
        "{said}"
    );
    assert!(
        stderr(&out).contains("run the command again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        keks,
        snapshot(&srv.path("keks")),
        "a failed run changed key files"
    );

    proxy.restore();
    let out = srv.run(&mut migrate());
    assert!(stdout(&out).contains("2 migrated"), "{}", stdout(&out));
    srv.run(&mut srv.sftp("dave", "ls\n"));
    let out = srv.run(&mut migrate());
    let said = stdout(&out);
    assert!(
        said.contains("migrated dave (3/3 users)")
            && said.contains("1 migrated")
            && said.contains("2 already done"),
        "{said}"
    );
}
