//! sshfs (FUSE) as a client: a mount of the user's files, a file copied in
//! with `cp`, then changed in place with `dd conv=notrunc`.
//!
//! sshfs sends LSTAT right after OPEN (CREAT) and caches what it gets, so a
//! new file must be visible by name while its upload is staged; it closes
//! without waiting for the reply, so the close must be done before the
//! next request on that path is answered. Needs `sshfs`, `/dev/fuse` and
//! root (CI has all three); without them the test fails, saying which.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::harness::*;

/// Unmounts on drop, so that a failed assertion leaves no mount behind.
struct Mount {
    point: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

fn mount(srv: &Server, point: &Path) -> Mount {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: sshfs needs FUSE"
    );
    std::fs::create_dir_all(point).unwrap();
    let mut cmd = Command::new("sshfs");
    cmd.env_remove("SSH_AUTH_SOCK")
        .arg("alice@127.0.0.1:/")
        .arg(point)
        .args(["-p", &srv.port.to_string()])
        .arg("-o")
        .arg(format!("IdentityFile={}", srv.user("alice").key.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
        ]);
    // sshfs daemonises once the mount is up; its exit status says whether
    // it is.
    srv.run(&mut cmd);
    Mount {
        point: point.to_path_buf(),
    }
}

#[test]
fn sshfs_copy_in_and_overwrite_in_place() {
    let srv = Server::start();
    let point = srv.local_path("mnt");
    let m = mount(&srv, &point);

    let size = 20 << 20;
    let data = random_bytes(size, fresh_seed());
    let local = srv.local_path("big.bin");
    std::fs::write(&local, &data).unwrap();
    let remote = m.point.join("big.bin");
    srv.run(Command::new("cp").arg(&local).arg(&remote));
    srv.run(Command::new("cmp").arg(&local).arg(&remote));

    // A partial overwrite in place, and the same change to a local model.
    let patch = random_bytes(3 << 20, fresh_seed());
    let patch_file = srv.local_path("patch.bin");
    std::fs::write(&patch_file, &patch).unwrap();
    let offset_blocks = 5; // 1 MiB blocks: offset 5 MiB
    let mut model = data.clone();
    model[offset_blocks << 20..(offset_blocks << 20) + patch.len()].copy_from_slice(&patch);
    let model_file = srv.local_path("model.bin");
    std::fs::write(&model_file, &model).unwrap();
    srv.run(
        Command::new("dd")
            .arg(format!("if={}", patch_file.display()))
            .arg(format!("of={}", remote.display()))
            .args(["bs=1M", &format!("seek={offset_blocks}"), "conv=notrunc"])
            .arg("status=none"),
    );
    srv.run(Command::new("cmp").arg(&model_file).arg(&remote));
    let listed = std::fs::read_dir(&m.point)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(listed, ["big.bin"], "the mount lists {listed:?}");
    drop(m);

    // What the server stored, read back without sshfs.
    let back = srv.local_path("back.bin");
    srv.run(&mut srv.sftp("alice", &format!("get big.bin {}\n", back.display())));
    assert_same_file(&model_file, &back);
}
