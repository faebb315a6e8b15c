//! Tampering with stored files is detected; `verify` and `decrypt`.

use super::harness::*;

#[test]
fn tampered_file_is_refused_and_reported_by_verify_decrypt_recovers_good_files() {
    let srv = Server::start();
    let seed = fresh_seed();
    let good = random_bytes(200_000, seed);
    let bad = random_bytes(200_000, seed ^ 1);
    std::fs::write(srv.local_path("good.bin"), &good).unwrap();
    std::fs::write(srv.local_path("bad.bin"), &bad).unwrap();
    srv.run(&mut srv.sftp(
        "alice",
        "put good.bin\nmkdir sub\nput bad.bin sub/bad.bin\n",
    ));

    // Untampered: verify passes.
    let mut verify = srv.dropzone_tool(&["verify", "--user", "alice"]);
    let out = srv.run(&mut verify);
    srv.check(
        stdout(&out).contains("2 file"),
        "verify did not check 2 files",
        &verify,
        &out,
    );

    // Flip one byte in the middle of the stored file.
    let stored = srv.data("alice").join("sub/bad.bin");
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();

    let mut get = srv.sftp("alice", "get sub/bad.bin bad-back.bin\n");
    let get_out = srv.run_fail(&mut get);
    if let Ok(partial) = std::fs::read(srv.local_path("bad-back.bin")) {
        // Whatever was written before the error must be a prefix of the
        // true content: never wrong data.
        assert!(
            bad.starts_with(&partial),
            "the client got wrong data ({} bytes) from a tampered file",
            partial.len()
        );
        assert!(
            partial.len() < bad.len(),
            "the whole tampered file was downloaded"
        );
    }

    let mut verify = srv.dropzone_tool(&["verify", "--user", "alice"]);
    let out = srv.run_any(&mut verify);
    srv.check(
        out.status.code() == Some(1),
        "verify of a tampered store does not exit 1",
        &verify,
        &out,
    );
    let text = stdout(&out);
    srv.check(
        text.lines()
            .any(|l| l.contains("FAIL") && l.contains("sub/bad.bin")),
        "verify does not name sub/bad.bin as failed",
        &verify,
        &out,
    );
    srv.check(
        !text
            .lines()
            .any(|l| l.contains("FAIL") && l.contains("good.bin")),
        "verify names the good file as failed",
        &verify,
        &out,
    );

    // The good file still downloads, and decrypts offline.
    srv.run(&mut srv.sftp("alice", "get good.bin good-back.bin\n"));
    assert_eq!(
        std::fs::read(srv.local_path("good-back.bin")).unwrap(),
        good
    );
    let out_path = srv.path("recovered.bin");
    let out_arg = out_path.display().to_string();
    let mut decrypt =
        srv.dropzone_tool(&["decrypt", "--user", "alice", "/good.bin", "-o", &out_arg]);
    srv.run(&mut decrypt);
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        good,
        "decrypt -o returned other bytes"
    );

    // decrypt of the tampered file fails.
    let out_bad = srv.path("recovered-bad.bin");
    let out_arg = out_bad.display().to_string();
    let mut decrypt =
        srv.dropzone_tool(&["decrypt", "--user", "alice", "/sub/bad.bin", "-o", &out_arg]);
    srv.run_fail(&mut decrypt);

    // Checked last so that the checks above run even while this one fails:
    // the client is told why (OpenSSH sftp prints only the status code, so
    // the server must say it on the channel's stderr too).
    srv.check(
        stderr(&get_out).to_lowercase().contains("integrity"),
        "the failed get does not mention integrity",
        &get,
        &get_out,
    );
}
