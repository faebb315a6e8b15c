//! The jail: `..`, absolute paths and symlinks stay inside the user's root.

use super::harness::*;
use super::raw_sftp::*;

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

/// Every symlink under `root` that resolves on the host (following links
/// from the real `/`, as a backup with `-L` or a root cron job would)
/// resolves inside `root`; returns how many links it looked at.
fn assert_links_stay_inside(root: &std::path::Path) -> usize {
    let real_root = std::fs::canonicalize(root).unwrap();
    let mut links = 0;
    let mut stack = vec![real_root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_symlink() {
                links += 1;
                if let Ok(real) = std::fs::canonicalize(entry.path()) {
                    assert!(
                        real.starts_with(&real_root),
                        "{} -> {:?} resolves on the host to {} (outside alice's root)",
                        entry.path().display(),
                        std::fs::read_link(entry.path()).unwrap(),
                        real.display()
                    );
                }
            }
        }
    }
    links
}

/// posix-rename@openssh.com and hardlink@openssh.com take two paths.
fn two_paths(from: &str, to: &str) -> Vec<u8> {
    Req::new(0).string(from).string(to).into_fields()
}

#[test]
fn client_made_symlinks_never_lead_outside_the_root_on_disk() {
    let srv = Server::start();
    let bob = srv.data("bob");
    std::fs::create_dir_all(&bob).unwrap();
    std::fs::write(bob.join("secret.txt"), b"bob's secret\n").unwrap();
    let mut raw = srv.raw_sftp("alice");
    for d in ["/d1", "/d1/d2", "/d1/d2/d3", "/d1/d2/d3/d4", "/a", "/a/b"] {
        raw.mkdir(d).unwrap();
    }
    let denied = |r: Result<(), Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code, FX_PERMISSION_DENIED, "{what}: {e:?}");
    };

    // The chain: a link up to the root, then a link through it and `..`.
    raw.symlink("../../../..", "/d1/d2/d3/d4/s").unwrap();
    assert_eq!(raw.readlink("/d1/d2/d3/d4/s").unwrap(), "../../../..");
    // (The status says only "Permission denied", as OpenSSH's would; the
    // reason goes to the client's stderr, checked with OpenSSH below.)
    denied(
        raw.symlink("d1/d2/d3/d4/s/../bob/secret.txt", "/l"),
        "a link through a link and '..'",
    );
    denied(
        raw.symlink("../../../../..", "/d1/d2/d3/d4/t"),
        "one climb too many",
    );

    // The link renamed or hard-linked up the tree, by each request.
    denied(raw.rename("/d1/d2/d3/d4/s", "/s"), "RENAME up");
    let r = raw.extended(
        "posix-rename@openssh.com",
        &two_paths("/d1/d2/d3/d4/s", "/s"),
    );
    denied(r.ok(), "posix-rename up");
    let r = raw.extended(
        "hardlink@openssh.com",
        &two_paths("/d1/d2/d3/d4/s", "/d1/h"),
    );
    denied(r.ok(), "hardlink up");
    // A directory holding relative links, moved to a shallower depth.
    raw.symlink("../..", "/a/b/up").unwrap();
    denied(raw.rename("/a/b", "/b"), "a directory of links moved up");
    denied(
        raw.rename("/d1/d2", "/d2"),
        "a deeper directory of links moved up",
    );
    // Moves at the same depth or deeper are fine.
    raw.rename("/a", "/z").unwrap();
    raw.mkdir("/d1/d2/d3/d4/d5").unwrap();
    raw.rename("/d1/d2/d3/d4/s", "/d1/d2/d3/d4/d5/s").unwrap();
    let r = raw.extended(
        "hardlink@openssh.com",
        &two_paths("/d1/d2/d3/d4/d5/s", "/d1/d2/d3/d4/d5/s2"),
    );
    r.ok().unwrap();

    // A link made through a linked directory is judged by its real depth.
    raw.symlink(".", "/self").unwrap();
    denied(
        raw.symlink("../../../..", "/self/d1/d2/d3/x"),
        "deep by name only",
    );
    raw.symlink("../../..", "/self/d1/d2/d3/x").unwrap();
    assert_eq!(raw.readlink("/d1/d2/d3/x").unwrap(), "../../..");

    // Ordinary targets read back exactly as written; an absolute one is
    // stored relative to the link's directory.
    for (target, link) in [
        ("d1/d2", "/o1"),
        ("./x//y/", "/o2"),
        ("../../z", "/d1/d2/o3"),
        ("..", "/d1/o4"),
        ("missing", "/o5"),
    ] {
        raw.symlink(target, link).unwrap();
        assert_eq!(raw.readlink(link).unwrap(), target, "{link}");
    }
    raw.symlink("/d1/d2/d3", "/d1/abs").unwrap();
    assert_eq!(raw.readlink("/d1/abs").unwrap(), "d2/d3");
    drop(raw);

    // OpenSSH's client: the same refusals, with the reason on stderr.
    let batch = "-ln -s d1/d2/d3/d4/d5/s/../../x /l3\n-rename /d1/d2/d3/d4/d5/s /s\n";
    let mut cmd = srv.sftp("alice", batch);
    let out = srv.run_any(&mut cmd);
    let err = stderr(&out);
    srv.check(
        err.contains("only at the start of a relative target")
            && err.contains("would leave a symlink pointing outside your directory"),
        "OpenSSH's sftp does not show why the link or the rename was refused",
        &cmd,
        &out,
    );

    let data = srv.data("alice");
    let links = assert_links_stay_inside(&data);
    assert!(links >= 10, "only {links} links were made");
    assert!(
        std::fs::symlink_metadata(data.join("l")).is_err()
            && std::fs::symlink_metadata(data.join("s")).is_err(),
        "a refused link exists on disk"
    );
}

#[test]
fn modes_lose_special_bits_and_the_root_cannot_be_changed() {
    use std::os::unix::fs::PermissionsExt;
    let srv = Server::start();
    let data = srv.data("alice");
    let mode = |name: &str| {
        std::fs::symlink_metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    let mut raw = srv.raw_sftp("alice");
    let root_mode = mode("");

    // OPEN and MKDIR attributes.
    let r = raw.request(
        Req::new(FXP_OPEN)
            .string("/f")
            .u32(SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC)
            .u32(ATTR_PERMISSIONS)
            .u32(0o4755),
    );
    assert_eq!(r.kind, FXP_HANDLE, "OPEN with mode 4755: {r:?}");
    let h = Fields::new(&r.body).string();
    raw.write(&h, 0, b"x").unwrap();
    // FSETSTAT on the open handle.
    raw.request(
        Req::new(FXP_FSETSTAT)
            .string(&h)
            .u32(ATTR_PERMISSIONS)
            .u32(0o6777),
    )
    .ok()
    .unwrap();
    raw.close(&h).unwrap();
    assert_eq!(mode("f"), 0o777, "FSETSTAT 6777");
    raw.request(
        Req::new(FXP_MKDIR)
            .string("/g")
            .u32(ATTR_PERMISSIONS)
            .u32(0o3755),
    )
    .ok()
    .unwrap();
    assert_eq!(mode("g") & 0o7000, 0, "MKDIR 3755 gave {:o}", mode("g"));
    // SETSTAT and lsetstat@openssh.com.
    raw.setstat_perms("/f", 0o4750).unwrap();
    assert_eq!(mode("f"), 0o750, "SETSTAT 4750");
    let payload = Req::new(0)
        .string("/g")
        .u32(ATTR_PERMISSIONS)
        .u32(0o1777)
        .into_fields();
    raw.extended("lsetstat@openssh.com", &payload).ok().unwrap();
    assert_eq!(mode("g"), 0o777, "lsetstat 1777");

    // The root: by name, as ".", through a link; mode, times and size.
    raw.symlink(".", "/self").unwrap();
    for path in ["/", ".", "/self", "/g/.."] {
        let e = raw.setstat_perms(path, 0o777).unwrap_err();
        assert_eq!(e.code, FX_PERMISSION_DENIED, "chmod {path}: {e:?}");
        let times = Req::new(FXP_SETSTAT)
            .string(path)
            .u32(ATTR_ACMODTIME)
            .u32(0)
            .u32(0);
        let e = raw.request(times).ok().unwrap_err();
        assert_eq!(e.code, FX_PERMISSION_DENIED, "utime {path}: {e:?}");
    }
    let e = raw.setstat_size("/", 0).unwrap_err();
    assert_eq!(e.code, FX_PERMISSION_DENIED, "truncate /: {e:?}");
    assert_eq!(mode(""), root_mode, "the root's mode changed");
    drop(raw);

    // OpenSSH's own chmod.
    let mut cmd = srv.sftp("alice", "chmod 4755 f\n-chmod 777 /\n");
    let out = srv.run_any(&mut cmd);
    srv.check(
        stderr(&out).contains("the root of your directory cannot be changed"),
        "sftp chmod 777 / was not told why it was refused",
        &cmd,
        &out,
    );
    srv.check(
        mode("f") == 0o755,
        "sftp chmod 4755 kept a special bit",
        &cmd,
        &out,
    );
    srv.check(
        mode("") == root_mode,
        "sftp chmod 777 / changed the root",
        &cmd,
        &out,
    );
}
