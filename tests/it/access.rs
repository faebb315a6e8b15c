//! Per-user permissions (`role`, `permissions` in the users file) with real
//! clients: OpenSSH `sftp`, `scp` in SFTP mode and legacy `scp -O`. A
//! refused request is "Permission denied", changes nothing, and is audited
//! with the permission that was missing; `dropzone user set` applies to a
//! running server, and to an open session from its next request.

use std::process::Output;

use serde_json::Value;

use super::harness::*;
use super::raw_sftp::*;

const AUDIT: &str = "\n[audit]\nlog_file = \"audit.jsonl\"\n";

/// A server with `partner` and `reader` (keys only) and an audit log.
fn server() -> Server {
    Server::start_opts(
        &[("partner", None), ("reader", None)],
        &ServerOptions {
            extra_config: AUDIT.into(),
            ..ServerOptions::default()
        },
    )
}

/// `dropzone user set NAME ARGS...` against the running server's files.
fn user_set(srv: &Server, name: &str, args: &[&str]) -> String {
    let mut all = vec!["user", "set", name];
    all.extend_from_slice(args);
    stdout(&srv.run(&mut srv.dropzone_tool(&all)))
}

/// Runs an sftp batch that must fail with "Permission denied".
#[track_caller]
fn sftp_denied(srv: &Server, user: &str, batch: &str) -> Output {
    let mut cmd = srv.sftp(user, batch);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("Permission denied"),
        "expected Permission denied",
        &cmd,
        &out,
    );
    out
}

/// Waits for an audit event of `user` for `event` on `path` whose reason
/// names the missing `permission`.
#[track_caller]
fn audited_denial(srv: &Server, user: &str, event: &str, path: &str, permission: &str) -> Value {
    let file = srv.path("audit.jsonl");
    let wanted = format!("`{permission}` permission");
    srv.wait_for(
        &format!("a {event} of {path} by {user} refused for lack of {permission}"),
        || {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| {
                    e["event"] == event
                        && e["path"] == path
                        && e["user"] == user
                        && e["result"] == "permission_denied"
                        && e["reason"].as_str().is_some_and(|r| r.contains(&wanted))
                })
        },
    )
}

#[test]
fn upload_only_partner_over_sftp() {
    let srv = server();
    let out = user_set(&srv, "partner", &["--role", "upload-only"]);
    assert!(out.contains("role upload-only"), "{out}");
    std::fs::write(srv.local_path("a.txt"), b"first content").unwrap();
    std::fs::write(srv.local_path("a2.txt"), b"first content, then more").unwrap();

    srv.run(&mut srv.sftp(
        "partner",
        "put a.txt\nmkdir inbox\nput a.txt inbox/a.txt\nls\n",
    ));
    let stored = srv.data("partner").join("a.txt");
    let first = std::fs::read(&stored).unwrap();

    sftp_denied(&srv, "partner", "get a.txt got.txt\n");
    assert!(!srv.local_path("got.txt").exists());
    // A second put of the same name would replace the first.
    sftp_denied(&srv, "partner", "put a2.txt a.txt\n");
    assert_eq!(std::fs::read(&stored).unwrap(), first, "a.txt was changed");
    sftp_denied(&srv, "partner", "rm a.txt\n");
    sftp_denied(&srv, "partner", "rename a.txt b.txt\n");
    sftp_denied(&srv, "partner", "chmod 600 a.txt\n");
    sftp_denied(&srv, "partner", "rmdir inbox\n");
    assert_eq!(std::fs::read(&stored).unwrap(), first, "a.txt was changed");
    assert!(srv.data("partner").join("inbox/a.txt").is_file());

    audited_denial(&srv, "partner", "download", "/a.txt", "download");
    audited_denial(&srv, "partner", "upload", "/a.txt", "overwrite");
    audited_denial(&srv, "partner", "remove", "/a.txt", "delete");
    audited_denial(&srv, "partner", "rename", "/a.txt", "rename");
    audited_denial(&srv, "partner", "setstat", "/a.txt", "chmod");
    audited_denial(&srv, "partner", "rmdir", "/inbox", "rmdir");

    // An open session gets `overwrite` at its next request.
    let mut raw = srv.raw_sftp("partner");
    let refused = raw.open("/a.txt", SSH_FXF_WRITE).unwrap_err();
    assert_eq!(refused.code, FX_PERMISSION_DENIED, "{refused:?}");
    let out = user_set(&srv, "partner", &["--permissions", "overwrite"]);
    assert!(out.contains("role upload-only + overwrite"), "{out}");
    let handle = raw
        .open("/a.txt", SSH_FXF_WRITE)
        .expect("open once overwrite is granted");
    raw.close(&handle).unwrap();
    drop(raw);

    // Resuming the upload works now.
    srv.run(&mut srv.sftp("partner", "reput a2.txt a.txt\n"));
    sftp_denied(&srv, "partner", "get a.txt got.txt\n");

    // Full again: the file is the resumed upload.
    user_set(&srv, "partner", &["--role", "full", "--permissions", ""]);
    srv.run(&mut srv.sftp(
        "partner",
        "get a.txt got.txt\nrm inbox/a.txt\nrmdir inbox\n",
    ));
    assert_same_file(&srv.local_path("got.txt"), &srv.local_path("a2.txt"));
}

#[test]
fn read_only_user_over_sftp() {
    let srv = server();
    std::fs::write(srv.local_path("r.txt"), b"for reading").unwrap();
    std::fs::write(srv.local_path("new.txt"), b"new").unwrap();
    srv.run(&mut srv.sftp("reader", "put r.txt\nmkdir d\n"));
    user_set(&srv, "reader", &["--role", "read-only"]);

    let out = srv.run(&mut srv.sftp("reader", "get r.txt back.txt\nls\n"));
    assert!(stdout(&out).contains("r.txt"), "{}", stdout(&out));
    assert_same_file(&srv.local_path("back.txt"), &srv.local_path("r.txt"));

    sftp_denied(&srv, "reader", "put new.txt\n");
    sftp_denied(&srv, "reader", "put new.txt r.txt\n");
    sftp_denied(&srv, "reader", "rm r.txt\n");
    sftp_denied(&srv, "reader", "mkdir e\n");
    sftp_denied(&srv, "reader", "rmdir d\n");
    sftp_denied(&srv, "reader", "symlink r.txt l.txt\n");
    assert!(!srv.data("reader").join("new.txt").exists());
    assert!(!srv.data("reader").join("e").exists());
    assert!(!srv.data("reader").join("l.txt").exists());
    assert!(srv.data("reader").join("r.txt").is_file());
    audited_denial(&srv, "reader", "upload", "/new.txt", "upload");
    audited_denial(&srv, "reader", "upload", "/r.txt", "overwrite");
    audited_denial(&srv, "reader", "mkdir", "/e", "mkdir");
    audited_denial(&srv, "reader", "remove", "/r.txt", "delete");
}

/// scp in one mode (`extra`: `[]` for SFTP mode, `["-O"]` for legacy).
fn scp_follows_permissions(extra: &[&str]) {
    let legacy = !extra.is_empty();
    let srv = server();
    std::fs::write(srv.local_path("up.txt"), b"uploaded by scp").unwrap();
    std::fs::write(srv.local_path("other.txt"), b"another").unwrap();
    srv.run(&mut srv.scp("reader", extra, "up.txt", srv.remote("reader", "r.txt")));
    user_set(&srv, "partner", &["--role", "upload-only"]);
    user_set(&srv, "reader", &["--role", "read-only"]);

    // The drop box: a new file goes in, nothing comes out or is replaced.
    srv.run(&mut srv.scp("partner", extra, "up.txt", srv.remote("partner", "up.txt")));
    let stored = srv.data("partner").join("up.txt");
    let first = std::fs::read(&stored).unwrap();
    let denied = |user: &str, src: String, dst: String| {
        let mut cmd = srv.scp(user, extra, &src, &dst);
        let out = srv.run_fail(&mut cmd);
        let want = if legacy {
            "permission denied: this account may not"
        } else {
            "Permission denied"
        };
        srv.check(stderr(&out).contains(want), want, &cmd, &out);
        out
    };
    denied("partner", srv.remote("partner", "up.txt"), "got.txt".into());
    assert!(!srv.local_path("got.txt").exists());
    denied(
        "partner",
        "other.txt".into(),
        srv.remote("partner", "up.txt"),
    );
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        first,
        "up.txt was replaced"
    );

    // A directory tree: -r creates directories (mkdir) and new files.
    let tree = srv.local_path("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/f.txt"), b"in a tree").unwrap();
    let mut r = vec!["-r"];
    r.extend_from_slice(extra);
    srv.run(&mut srv.scp("partner", &r, "tree", srv.remote("partner", "tree")));
    assert!(srv.data("partner").join("tree/sub/f.txt").is_file());

    // Read-only: downloads work, uploads are refused.
    srv.run(&mut srv.scp("reader", extra, srv.remote("reader", "r.txt"), "r-back.txt"));
    assert_same_file(&srv.local_path("r-back.txt"), &srv.local_path("up.txt"));
    denied(
        "reader",
        "other.txt".into(),
        srv.remote("reader", "new.txt"),
    );
    denied("reader", "other.txt".into(), srv.remote("reader", "r.txt"));
    assert!(!srv.data("reader").join("new.txt").exists());

    let protocol = if legacy { "scp" } else { "sftp" };
    let e = audited_denial(&srv, "partner", "download", "/up.txt", "download");
    assert_eq!(e["protocol"], protocol, "{e}");
    audited_denial(&srv, "partner", "upload", "/up.txt", "overwrite");
    audited_denial(&srv, "reader", "upload", "/new.txt", "upload");
}

#[test]
fn scp_sftp_mode_follows_permissions() {
    scp_follows_permissions(&[]);
}

#[test]
fn scp_legacy_mode_follows_permissions() {
    scp_follows_permissions(&["-O"]);
}

#[test]
fn user_commands_set_roles() {
    let srv = server();
    let key = srv.user("partner").key.with_extension("pub");
    let key = key.to_str().unwrap();
    srv.run(&mut srv.dropzone_tool(&[
        "user",
        "add",
        "dropper",
        "--role",
        "upload-only",
        "--permissions",
        "overwrite",
        "--authorized-key",
        key,
    ]));
    let list = stdout(&srv.run(&mut srv.dropzone_tool(&["user", "list"])));
    let line = list
        .lines()
        .find(|l| l.starts_with("dropper\t"))
        .unwrap_or("");
    assert!(line.ends_with("role upload-only + overwrite"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("reader\t") && l.ends_with("role full")),
        "{list}"
    );
    let text = std::fs::read_to_string(srv.path("config/users.toml")).unwrap();
    assert!(text.contains("role = \"upload-only\""), "{text}");
    assert!(text.contains("permissions = [\"overwrite\"]"), "{text}");

    // Unknown names and users are clear errors; the file is unchanged.
    for (args, want) in [
        (
            &["user", "set", "dropper", "--role", "admin"][..],
            "unknown role \"admin\"",
        ),
        (
            &["user", "set", "dropper", "--permissions", "upload,writ"][..],
            "unknown permission \"writ\"",
        ),
        (
            &["user", "set", "nobody", "--role", "full"][..],
            "no such user",
        ),
        (&["user", "set", "dropper"][..], "--role"),
    ] {
        let mut cmd = srv.dropzone_tool(args);
        let out = srv.run_fail(&mut cmd);
        srv.check(stderr(&out).contains(want), want, &cmd, &out);
    }
    assert_eq!(
        std::fs::read_to_string(srv.path("config/users.toml")).unwrap(),
        text
    );

    // A hand-written unknown permission names the user and the word.
    std::fs::write(
        srv.path("config/users.toml"),
        text.replace("\"overwrite\"", "\"overwrit\""),
    )
    .unwrap();
    let mut cmd = srv.dropzone_tool(&["user", "list"]);
    let out = srv.run_fail(&mut cmd);
    let want = "user \"dropper\": unknown permission \"overwrit\"";
    srv.check(stderr(&out).contains(want), want, &cmd, &out);
}

#[test]
fn concurrent_user_commands_lose_no_update() {
    let srv = server();
    let key = srv.user("partner").key.with_extension("pub");
    let key = key.to_str().unwrap().to_owned();
    let names: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    std::thread::scope(|s| {
        for name in &names {
            let (srv, key) = (&srv, &key);
            s.spawn(move || {
                srv.run(&mut srv.dropzone_tool(&[
                    "user",
                    "add",
                    name,
                    "--role",
                    "read-only",
                    "--authorized-key",
                    key,
                ]));
            });
        }
    });
    let list = stdout(&srv.run(&mut srv.dropzone_tool(&["user", "list"])));
    for name in &names {
        assert!(
            list.lines()
                .any(|l| l.starts_with(&format!("{name}\t")) && l.ends_with("role read-only")),
            "{name} lost:\n{list}"
        );
    }
}

/// Each request of the raw protocol needs its permission: an upload-only
/// user with `rename` added.
#[test]
fn raw_requests_need_their_permission() {
    let srv = server();
    user_set(
        &srv,
        "partner",
        &["--role", "upload-only", "--permissions", "rename"],
    );
    let mut raw = srv.raw_sftp("partner");
    let new = SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC;
    for name in ["/a", "/b"] {
        let h = raw.open(name, new).expect("a new file is an upload");
        raw.write(&h, 0, name.as_bytes()).unwrap();
        raw.close(&h).unwrap();
    }
    let denied = |r: Result<(), Status>, what: &str| match r {
        Err(s) => assert_eq!(s.code, FX_PERMISSION_DENIED, "{what}: {s:?}"),
        Ok(()) => panic!("{what} was allowed"),
    };
    let opened = |r: Result<Vec<u8>, Status>| r.map(|_| ());

    // Writing to an existing file, in any form, is overwriting.
    denied(
        opened(raw.open("/a", SSH_FXF_WRITE | SSH_FXF_APPEND)),
        "append",
    );
    denied(opened(raw.open("/a", new)), "truncate");
    denied(opened(raw.open("/a", SSH_FXF_READ)), "read");
    denied(
        opened(raw.open("/n", SSH_FXF_READ | SSH_FXF_WRITE | SSH_FXF_CREAT)),
        "read+write",
    );
    denied(raw.setstat_size("/a", 0), "setstat size");
    denied(raw.setstat_perms("/a", 0o600), "setstat mode");
    denied(raw.symlink("/a", "/l"), "symlink");
    let hardlink = Req::new(0).string("/a").string("/h").into_fields();
    denied(
        raw.extended("hardlink@openssh.com", &hardlink).ok(),
        "hardlink",
    );
    // posix-rename over an existing file replaces it: that is overwriting.
    let over = Req::new(0).string("/a").string("/b").into_fields();
    denied(
        raw.extended("posix-rename@openssh.com", &over).ok(),
        "posix-rename over b",
    );
    for path in ["/n", "/l", "/h"] {
        assert!(raw.lstat(path).is_err(), "{path} was made");
    }
    assert_eq!(raw.stat("/a").unwrap().size, Some(2));

    // Allowed: a rename to a new name, a new file appended to, listing.
    raw.rename("/a", "/c").expect("rename to a new name");
    let onto_new = Req::new(0).string("/c").string("/d").into_fields();
    raw.extended("posix-rename@openssh.com", &onto_new)
        .ok()
        .expect("posix-rename to a new name");
    let h = raw
        .open("/e", SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_APPEND)
        .expect("append to a new file");
    raw.close(&h).unwrap();
    let dir = raw.opendir("/").expect("list");
    let names = raw.readdir(&dir).unwrap();
    for name in ["b", "d", "e"] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    audited_denial(&srv, "partner", "rename", "/a", "overwrite");
    audited_denial(&srv, "partner", "link", "/l", "symlink");
    audited_denial(&srv, "partner", "link", "/h", "symlink");
}

#[test]
fn copy_data_is_audited_and_needs_download_at_each_request() {
    let srv = server();
    let mut raw = srv.raw_sftp("partner");
    let new = SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC;
    let src = raw.open("/src", new).unwrap();
    raw.write(&src, 0, b"0123456789").unwrap();
    raw.close(&src).unwrap();
    let src = raw.open("/src", SSH_FXF_READ).unwrap();
    let dst = raw.open("/dst", new).unwrap();
    let copy = |raw: &mut RawSftp| {
        let fields = Req::new(0)
            .string(&src)
            .u64(0)
            .u64(0)
            .string(&dst)
            .u64(0)
            .into_fields();
        raw.extended("copy-data", &fields).ok()
    };
    copy(&mut raw).expect("copy-data with download");
    // The handles stay open; the permission is checked again at the request.
    user_set(&srv, "partner", &["--role", "upload-only"]);
    match copy(&mut raw) {
        Err(s) => assert_eq!(s.code, FX_PERMISSION_DENIED, "{s:?}"),
        Ok(()) => panic!("copy-data without download was allowed"),
    }
    let refused = audited_denial(&srv, "partner", "copy", "/src", "download");
    assert_eq!(refused["to"], "/dst", "{refused}");
    raw.close(&src).unwrap();
    raw.close(&dst).unwrap();
    assert_eq!(raw.stat("/dst").unwrap().size, Some(10));
}
