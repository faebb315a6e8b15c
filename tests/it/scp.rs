//! OpenSSH `scp`: SFTP mode (the default since OpenSSH 9) and legacy `-O`.

use super::harness::*;

fn scp_round_trip(extra: &[&str]) {
    let srv = Server::start();
    let data = random_bytes(300_000, fresh_seed());
    std::fs::write(srv.local_path("up.bin"), &data).unwrap();
    std::fs::write(srv.local_path("empty.bin"), b"").unwrap();

    for name in ["up.bin", "empty.bin"] {
        let mut cmd = srv.scp("alice", extra, name, srv.remote("alice", name));
        srv.run(&mut cmd);
        let stored = srv.data("alice").join(name);
        let bytes = std::fs::read(&stored).unwrap_or_else(|e| {
            panic!(
                "after scp {extra:?} upload, {} is missing: {e}",
                stored.display()
            )
        });
        assert_ne!(
            bytes,
            std::fs::read(srv.local_path(name)).unwrap(),
            "{name} stored in plaintext"
        );
    }

    for name in ["up.bin", "empty.bin"] {
        let back = format!("back-{name}");
        let mut cmd = srv.scp("alice", extra, srv.remote("alice", name), &back);
        srv.run(&mut cmd);
        assert_same_file(&srv.local_path(name), &srv.local_path(&back));
    }

    // A missing remote file is an error, not an empty download.
    let mut cmd = srv.scp(
        "alice",
        extra,
        srv.remote("alice", "missing.bin"),
        "missing.bin",
    );
    srv.run_fail(&mut cmd);
    assert!(
        !srv.local_path("missing.bin").exists(),
        "scp {extra:?} created a local file for a missing remote one"
    );
}

#[test]
fn scp_sftp_mode_upload_download() {
    scp_round_trip(&["-s"]);
}

#[test]
fn scp_legacy_mode_upload_download() {
    scp_round_trip(&["-O"]);
}
