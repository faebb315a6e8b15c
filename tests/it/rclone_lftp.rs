//! rclone's sftp backend and lftp, on both storage backends: each uploads a
//! small tree (an empty file, files around the store's record size, one
//! over an S3 part), lists it, downloads it again, and the copy must match
//! the source byte for byte. rclone also checks the two trees with
//! `check --download` (it reads every file back through the server).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::harness::*;
use super::seaweed::SeaweedFs;

/// The source tree's files: (relative path, size).
const TREE: &[(&str, usize)] = &[
    ("empty", 0),
    ("one", 1),
    ("record-1", 65_535),
    ("record", 65_536),
    ("record+1", 65_537),
    ("sub/part-plus", (5 << 20) + 12_345),
    ("sub/deeper/small", 4_000),
];

/// A server on local storage, or on a fresh SeaweedFS (kept alive with it)
/// with 5 MiB parts so that one file spans two.
fn servers() -> Vec<(&'static str, Server, Option<SeaweedFs>)> {
    let local = Server::start();
    let weed = SeaweedFs::start();
    let opts = ServerOptions {
        extra_config: format!("{}part_size_mib = 5\n", weed.storage_config("clients")),
        env: SeaweedFs::env(),
        ..ServerOptions::default()
    };
    let s3 = Server::start_opts(&[("alice", None)], &opts);
    vec![("local", local, None), ("s3", s3, Some(weed))]
}

/// Writes [`TREE`] under `dir`.
fn make_tree(dir: &Path) {
    for (i, (rel, size)) in TREE.iter().enumerate() {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, random_bytes(*size, fresh_seed() + i as u64)).unwrap();
    }
}

/// Asserts that `copy` holds every file of [`TREE`] as in `source`.
fn assert_same_tree(backend: &str, source: &Path, copy: &Path) {
    for (rel, _) in TREE {
        assert!(
            copy.join(rel).is_file(),
            "{backend}: {rel} was not copied back"
        );
        assert_same_file(&source.join(rel), &copy.join(rel));
    }
}

/// `rclone` with an sftp remote `dz:` for alice on `srv`, configured only
/// through the environment (no config file, no shell commands on the
/// server, no hash checks: a drop box has no `md5sum`).
fn rclone(srv: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new("rclone");
    cmd.current_dir(srv.local())
        .env_remove("SSH_AUTH_SOCK")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_DZ_TYPE", "sftp")
        .env("RCLONE_CONFIG_DZ_HOST", "127.0.0.1")
        .env("RCLONE_CONFIG_DZ_PORT", srv.port.to_string())
        .env("RCLONE_CONFIG_DZ_USER", "alice")
        .env("RCLONE_CONFIG_DZ_KEY_FILE", &srv.user("alice").key)
        .env("RCLONE_CONFIG_DZ_SHELL_TYPE", "none")
        .env("RCLONE_CONFIG_DZ_DISABLE_HASHCHECK", "true")
        .args([
            "--retries",
            "1",
            "--low-level-retries",
            "1",
            "--contimeout",
            "20s",
        ])
        .args(args);
    cmd
}

#[test]
fn rclone_copies_a_tree_up_and_back_on_both_backends() {
    for (backend, srv, _weed) in servers() {
        let source = srv.local_path("rclone-src");
        let back = srv.local_path("rclone-back");
        make_tree(&source);
        let src = source.display().to_string();
        srv.run(&mut rclone(&srv, &["copy", &src, "dz:up"]));
        let out = srv.run(&mut rclone(&srv, &["lsl", "dz:up"]));
        let listing = stdout(&out);
        for (rel, size) in TREE {
            assert!(
                listing
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{size} "))
                        && l.ends_with(&format!(" {rel}"))),
                "{backend}: rclone lsl lacks {rel} ({size} bytes):\n{listing}"
            );
        }
        srv.run(&mut rclone(&srv, &["check", "--download", &src, "dz:up"]));
        srv.run(&mut rclone(
            &srv,
            &["copy", "dz:up", &back.display().to_string()],
        ));
        assert_same_tree(backend, &source, &back);
        // A changed source file makes the check fail: the check reads.
        std::fs::write(source.join("one"), b"2").unwrap();
        srv.run_fail(&mut rclone(&srv, &["check", "--download", &src, "dz:up"]));
    }
}

/// `lftp` logging in as alice with her key and running `commands`.
fn lftp(srv: &Server, commands: &str) -> Command {
    let key: PathBuf = srv.user("alice").key.clone();
    let connect = format!(
        "ssh -a -x -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o BatchMode=yes -o IdentitiesOnly=yes -i {}",
        key.display()
    );
    let script = format!(
        "set sftp:connect-program \"{connect}\"; set net:max-retries 1; \
         set net:timeout 20; open -u alice, -p {} sftp://127.0.0.1; {commands}; quit",
        srv.port
    );
    let mut cmd = Command::new("lftp");
    cmd.current_dir(srv.local())
        .env_remove("SSH_AUTH_SOCK")
        .args(["-c", &script]);
    cmd
}

#[test]
fn lftp_mirrors_a_tree_up_and_back_on_both_backends() {
    for (backend, srv, _weed) in servers() {
        let source = srv.local_path("lftp-src");
        let back = srv.local_path("lftp-back");
        make_tree(&source);
        srv.run(&mut lftp(
            &srv,
            &format!("mirror -R {} mirrored", source.display()),
        ));
        let out = srv.run(&mut lftp(&srv, "cls -l --sort=name mirrored/sub"));
        let listing = stdout(&out);
        assert!(
            listing.contains(&((5 << 20) + 12_345).to_string()) && listing.contains("part-plus"),
            "{backend}: lftp's listing lacks sub/part-plus with its size:\n{listing}"
        );
        srv.run(&mut lftp(
            &srv,
            &format!("mirror mirrored {}", back.display()),
        ));
        assert_same_tree(backend, &source, &back);
    }
}
