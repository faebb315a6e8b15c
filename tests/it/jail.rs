//! The jail: `..`, absolute paths and symlinks stay inside the user's root.

use super::harness::*;

#[test]
fn paths_and_symlinks_cannot_escape_the_users_root() {
    let srv = Server::start();
    let host_passwd = std::fs::read("/etc/passwd").expect("this test needs a host /etc/passwd");
    std::fs::write(srv.local_path("marker.txt"), b"inside alice's root\n").unwrap();
    srv.run(&mut srv.sftp("alice", "put marker.txt\n"));

    // Planted on disk, as if by someone with shell access to the data dir.
    let data = srv.data("alice");
    std::os::unix::fs::symlink("/etc", data.join("evil")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("evil_file")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", data.join("evil_rel")).unwrap();

    // Each attempt in its own step ('-' lets the batch go on after a failure).
    let batch = "\
-get ../../../../etc/passwd p1
-get /etc/passwd p2
-get evil/passwd p3
-get evil_file p4
-get evil_rel p5
-symlink /etc/passwd x
-get x p6
-symlink ../../../../../../etc/passwd y
-get y p7
-get /../../etc/passwd p8
cd ..
pwd
ls -1
cd ../../..
ls -1
-ls -1 evil/
";
    let mut cmd = srv.sftp("alice", batch);
    let out = srv.run_any(&mut cmd);
    for i in 1..=8 {
        let local = srv.local_path(&format!("p{i}"));
        if let Ok(content) = std::fs::read(&local) {
            srv.check(
                content != host_passwd && !content.windows(7).any(|w| w == b"root:x:"),
                &format!("p{i}: the host's /etc/passwd escaped the jail"),
                &cmd,
                &out,
            );
            srv.check(
                false,
                &format!("p{i} was downloaded: {} bytes", content.len()),
                &cmd,
                &out,
            );
        }
    }
    let text = stdout(&out);
    srv.check(
        !text.contains("root:"),
        "host passwd content in sftp output",
        &cmd,
        &out,
    );
    srv.check(
        text.contains("Remote working directory: /\n"),
        "after cd .., the working directory is not /",
        &cmd,
        &out,
    );
    // `ls` after climbing shows alice's root (marker.txt), not the data dir
    // (which holds alice/ and bob/) nor the host's /.
    let lines = sftp_output_lines(&out);
    for bad in ["alice", "bob", "etc", "usr", "data", "passwd"] {
        srv.check(
            !lines
                .iter()
                .any(|l| l.trim() == bad || l.trim().ends_with(&format!("/{bad}"))),
            &format!("a listing shows {bad:?}: escaped the root"),
            &cmd,
            &out,
        );
    }
    srv.check(
        lines.iter().filter(|l| l.trim() == "marker.txt").count() >= 2,
        "ls after `cd ..` does not show alice's root (marker.txt)",
        &cmd,
        &out,
    );
    // The escaping attempts fail with "no such file", not with host data.
    srv.check(
        stderr(&out).to_lowercase().contains("no such file"),
        "no \"no such file\" error for paths resolved inside the root",
        &cmd,
        &out,
    );

    // A symlink made through sftp points inside the root on disk too.
    for name in ["x", "y"] {
        if let Ok(target) = std::fs::read_link(data.join(name)) {
            let resolved = data.join(&target);
            let normal = normalize(&resolved);
            assert!(
                !target.is_absolute() && normal.starts_with(&data),
                "the symlink {name} made through sftp points outside the root: {}",
                target.display()
            );
        }
    }
}

/// Lexical normalisation (`..` pops), without touching the file system.
fn normalize(p: &std::path::Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
