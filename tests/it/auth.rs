//! Logins: passwords (sshpass), refusals, per-user isolation, no shell.

use std::process::Command;

use super::harness::*;

fn require_sshpass() {
    let found = Command::new("sshpass")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "sshpass is required for the password tests: install it (apt-get install -y sshpass)"
    );
}

#[test]
fn password_login_works_wrong_password_and_unknown_user_refused() {
    require_sshpass();
    let srv = Server::start();
    std::fs::write(srv.local_path("p.txt"), b"uploaded with a password\n").unwrap();
    let batch = "put p.txt p.txt\nls -l\n";

    // Refusals first: they must leave nothing in data/ (nor a key).
    let before_keks = entries_under(&srv.path("keks"));
    for (user, password, why) in [
        ("alice", "not-the-password", "wrong password"),
        ("alice", BOB_PASSWORD, "bob's password for alice"),
        ("mallory", ALICE_PASSWORD, "unknown user"),
    ] {
        let mut cmd = srv.sftp_password(user, password, batch);
        srv.run_fail(&mut cmd);
        let created = entries_under(&srv.path("data"));
        assert!(
            created.is_empty(),
            "{why}: refused login created {created:?} in data/"
        );
        assert_eq!(
            entries_under(&srv.path("keks")),
            before_keks,
            "{why}: refused login changed keks/"
        );
    }

    let mut cmd = srv.sftp_password("alice", ALICE_PASSWORD, batch);
    let out = srv.run(&mut cmd);
    srv.check(
        sftp_output_lines(&out)
            .iter()
            .any(|l| l.ends_with(" p.txt")),
        "p.txt not listed after a password login upload",
        &cmd,
        &out,
    );
    assert!(
        srv.data("alice").join("p.txt").is_file(),
        "data/alice/p.txt missing after password upload"
    );
    assert!(!srv.path("data/mallory").exists(), "data/mallory exists");

    // A key that is not alice's (bob's) does not log in as alice.
    let mut cmd = Command::new("sftp");
    cmd.current_dir(srv.local())
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
        .arg(&srv.user("bob").key)
        .args(["-P", &srv.port.to_string(), "-b", "/dev/null"])
        .arg(srv.dest("alice"));
    srv.run_fail(&mut cmd);
}

#[test]
fn users_are_isolated_from_each_other() {
    let srv = Server::start();
    std::fs::write(srv.local_path("alice-secret.txt"), b"alice's secret\n").unwrap();
    let mut cmd = srv.sftp(
        "alice",
        "put alice-secret.txt /alice-secret.txt\nmkdir adir\n",
    );
    srv.run(&mut cmd);
    assert!(srv.data("alice").join("alice-secret.txt").is_file());

    // Bob's root is empty (the listings must succeed, and show nothing), and
    // ../alice from it is inside his root, where it does not exist.
    let mut cmd = srv.sftp(
        "bob",
        "ls -1a /\nls -1a ..\nls -1a /..\n-ls -1 ../alice\n-ls -1 /../alice\n",
    );
    let out = srv.run(&mut cmd);
    srv.check(
        stderr(&out).contains("not found") || stderr(&out).to_lowercase().contains("no such file"),
        "ls ../alice as bob did not fail with not found",
        &cmd,
        &out,
    );
    let leaked: Vec<String> = sftp_output_lines(&out)
        .into_iter()
        .filter(|l| {
            let n = l.trim().rsplit('/').next().unwrap_or("");
            !n.is_empty() && n != "." && n != ".."
        })
        .collect();
    srv.check(
        leaked.is_empty(),
        &format!("bob sees entries: {leaked:?}"),
        &cmd,
        &out,
    );

    for path in [
        "/alice-secret.txt",
        "../alice/alice-secret.txt",
        "/../alice/alice-secret.txt",
    ] {
        let mut cmd = srv.sftp("bob", &format!("get {path} stolen.txt\n"));
        let out = srv.run_fail(&mut cmd);
        srv.check(
            !srv.local_path("stolen.txt").exists(),
            &format!("bob got {path}"),
            &cmd,
            &out,
        );
    }
    assert!(
        files_under(&srv.data("bob")).is_empty(),
        "bob's data dir is not empty: {:?}",
        files_under(&srv.data("bob"))
    );

    // The same listing shows alice her own files (so bob's empty one means something).
    let mut cmd = srv.sftp("alice", "ls -1 /\n");
    let out = srv.run(&mut cmd);
    let lines = sftp_output_lines(&out);
    srv.check(
        ["alice-secret.txt", "adir"]
            .iter()
            .all(|n| lines.iter().any(|l| l.trim().trim_start_matches('/') == *n)),
        "alice's ls -1 / does not show her files",
        &cmd,
        &out,
    );
}

#[test]
fn shell_and_exec_are_refused_and_the_server_stays_up() {
    let mut srv = Server::start();
    for args in [&["true"][..], &["cat", "/etc/passwd"][..], &[][..]] {
        let mut cmd = srv.ssh("alice", args);
        let out = srv.run_fail(&mut cmd);
        srv.check(
            !stdout(&out).contains("root:"),
            "a shell command ran",
            &cmd,
            &out,
        );
    }
    assert!(srv.is_alive(), "the server died after a refused shell");
    std::fs::write(srv.local_path("after.txt"), b"still up\n").unwrap();
    let mut cmd = srv.sftp("alice", "put after.txt\nget after.txt back.txt\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("after.txt"), &srv.local_path("back.txt"));
}
