//! OpenSSH `sftp -b`: transfers, directory operations, resumed transfers.

use std::os::unix::fs::PermissionsExt;

use super::harness::*;

/// Stored copy of a file: exists, is not the plaintext, and holds no
/// `WINDOW`-byte run of it (at the given plaintext offsets).
#[track_caller]
fn assert_stored_encrypted(srv: &Server, name: &str, plain: &[u8], starts: &[usize]) {
    let stored_path = srv.data("alice").join(name);
    let stored = std::fs::read(&stored_path)
        .unwrap_or_else(|e| panic!("the stored file {} is missing: {e}", stored_path.display()));
    assert_ne!(
        stored,
        plain,
        "{} is stored in plaintext",
        stored_path.display()
    );
    if let Some((p, s)) = find_plaintext_window(plain, starts, &stored) {
        panic!(
            "{} contains plaintext: the {WINDOW} bytes at plaintext offset {p} appear at stored offset {s}",
            stored_path.display()
        );
    }
}

#[test]
fn put_get_round_trip_all_sizes_stored_encrypted() {
    let srv = Server::start();
    let seed = fresh_seed();
    eprintln!("content seed: {seed}");
    const BIG: usize = 50 * 1024 * 1024;
    let sizes = [0usize, 1, 65535, 65536, 65537, 200_000, BIG];
    let mut batch = String::new();
    for (i, &size) in sizes.iter().enumerate() {
        let data = random_bytes(size, seed.wrapping_add(i as u64));
        std::fs::write(srv.local_path(&format!("f{size}.bin")), &data).unwrap();
        batch += &format!("put f{size}.bin up{size}.bin\n");
    }
    for &size in &sizes {
        batch += &format!("get up{size}.bin back{size}.bin\n");
    }
    batch += "ls -l\n";
    let mut cmd = srv.sftp("alice", &batch);
    let out = srv.run(&mut cmd);

    // Sizes as listed come from the header, not the body: exact plaintext sizes.
    let lines = sftp_output_lines(&out);
    for &size in &sizes {
        let name = format!("up{size}.bin");
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().last() == Some(name.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "{}",
                    srv.report(&format!("{name} missing from ls -l"), &cmd, &out)
                )
            });
        srv.check(
            line.split_whitespace().any(|w| w == size.to_string()),
            &format!("ls -l shows the wrong size for {name} (want {size}): {line}"),
            &cmd,
            &out,
        );
    }

    for (i, &size) in sizes.iter().enumerate() {
        let local = srv.local_path(&format!("f{size}.bin"));
        assert_same_file(&local, &srv.local_path(&format!("back{size}.bin")));
        let plain = random_bytes(size, seed.wrapping_add(i as u64));
        let starts: Vec<usize> = if size == BIG {
            // A sample of windows keeps the scan fast; with the ends included.
            (0..size.saturating_sub(WINDOW))
                .step_by(4093)
                .chain([size - WINDOW])
                .collect()
        } else {
            (0..=size.saturating_sub(WINDOW)).collect()
        };
        assert_stored_encrypted(&srv, &format!("up{size}.bin"), &plain, &starts);
    }
}

#[test]
fn directory_operations_ls_mkdir_rename_rm_rmdir_chmod_symlink_df() {
    let srv = Server::start();
    let a = random_bytes(70_000, fresh_seed());
    std::fs::write(srv.local_path("a.txt"), &a).unwrap();
    std::fs::write(srv.local_path("c.txt"), b"to be removed\n").unwrap();
    let batch = "\
mkdir d1
mkdir d2
mkdir d2/sub
put a.txt d1/a.txt
rename d1/a.txt d1/b.txt
chmod 600 d1/b.txt
symlink d1/b.txt link
put c.txt c.txt
rm c.txt
rmdir d2/sub
rmdir d2
get link via_link.txt
ls -l
ls -l d1
df
";
    let mut cmd = srv.sftp("alice", batch);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);

    // The state as the client sees it.
    let mut section = String::new();
    let mut root_ls = Vec::new();
    let mut d1_ls = Vec::new();
    let mut df = Vec::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("sftp> ") {
            section = c.trim().to_owned();
            continue;
        }
        match section.as_str() {
            "ls -l" => root_ls.push(line.to_owned()),
            "ls -l d1" => d1_ls.push(line.to_owned()),
            "df" => df.push(line.to_owned()),
            _ => {}
        }
    }
    let entry = |ls: &[String], name: &str| -> Option<String> {
        ls.iter()
            .find(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                // "name" or "name -> target" at the end of the line
                // ("dir/name" when listing a subdirectory)
                let is = |w: &str| w == name || w.ends_with(&format!("/{name}"));
                words.last().is_some_and(|w| is(w))
                    || words
                        .iter()
                        .position(|w| *w == "->")
                        .is_some_and(|i| i > 0 && is(words[i - 1]))
            })
            .cloned()
    };
    let d1 = entry(&root_ls, "d1");
    srv.check(
        d1.as_deref().is_some_and(|l| l.starts_with('d')),
        "ls -l: d1 is not a directory",
        &cmd,
        &out,
    );
    let link = entry(&root_ls, "link");
    srv.check(
        link.as_deref().is_some_and(|l| l.starts_with('l')),
        "ls -l: link is not a symlink",
        &cmd,
        &out,
    );
    srv.check(
        entry(&root_ls, "d2").is_none(),
        "ls -l: d2 still listed after rmdir",
        &cmd,
        &out,
    );
    srv.check(
        entry(&root_ls, "c.txt").is_none(),
        "ls -l: c.txt still listed after rm",
        &cmd,
        &out,
    );
    let b = entry(&d1_ls, "b.txt");
    srv.check(
        b.as_deref().is_some_and(|l| l.starts_with("-rw-------")),
        "ls -l d1: b.txt missing or not -rw------- after chmod 600",
        &cmd,
        &out,
    );
    srv.check(
        b.as_deref()
            .is_some_and(|l| l.split_whitespace().any(|w| w == "70000")),
        "ls -l d1: b.txt does not show its plaintext size 70000",
        &cmd,
        &out,
    );
    srv.check(
        entry(&d1_ls, "a.txt").is_none(),
        "ls -l d1: a.txt still listed after rename",
        &cmd,
        &out,
    );
    let header = df
        .iter()
        .position(|l| l.contains("Size") && l.contains("Avail"));
    srv.check(
        header.is_some(),
        "df printed no Size/Avail header",
        &cmd,
        &out,
    );
    let numbers = header.and_then(|h| df.get(h + 1)).is_some_and(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.len() >= 4 && words[..3].iter().all(|w| w.parse::<u64>().is_ok()) && words[0] != "0"
    });
    srv.check(
        numbers,
        "df printed no size line (three numbers, non-zero size)",
        &cmd,
        &out,
    );

    // Through the symlink: the file's content.
    assert_eq!(
        std::fs::read(srv.local_path("via_link.txt")).unwrap(),
        a,
        "get through the symlink"
    );

    // The state on disk.
    let data = srv.data("alice");
    assert!(data.join("d1").is_dir(), "data/alice/d1 is not a directory");
    assert!(
        !data.join("d1/a.txt").exists(),
        "data/alice/d1/a.txt still exists after rename"
    );
    let stored = data.join("d1/b.txt");
    let mode = std::fs::metadata(&stored)
        .unwrap_or_else(|e| panic!("{}: {e}", stored.display()))
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o7777,
        0o600,
        "mode of {} after chmod 600: {:o}",
        stored.display(),
        mode & 0o7777
    );
    let link_meta = std::fs::symlink_metadata(data.join("link")).expect("data/alice/link");
    assert!(
        link_meta.file_type().is_symlink(),
        "data/alice/link is not a symlink"
    );
    assert!(
        !data.join("d2").exists(),
        "data/alice/d2 still exists after rmdir"
    );
    assert!(
        !data.join("c.txt").exists(),
        "data/alice/c.txt still exists after rm"
    );
    assert_ne!(
        std::fs::read(&stored).unwrap(),
        a,
        "d1/b.txt stored in plaintext"
    );
}

#[test]
fn reput_and_reget_resume_transfers() {
    let srv = Server::start();
    let full = random_bytes(300_001, fresh_seed());
    std::fs::write(srv.local_path("full.bin"), &full).unwrap();
    // Half of the file under the final name, then reput the rest (the
    // resume offset is not on a chunk boundary).
    std::fs::write(srv.local_path("half.bin"), &full[..150_000]).unwrap();
    // A partial local copy for reget.
    std::fs::write(srv.local_path("partial.bin"), &full[..100_001]).unwrap();
    let batch = "\
put half.bin big.bin
reput full.bin big.bin
get big.bin back.bin
put full.bin r.bin
reget r.bin partial.bin
ls -l big.bin
";
    let mut cmd = srv.sftp("alice", batch);
    let out = srv.run(&mut cmd);
    assert_same_file(&srv.local_path("full.bin"), &srv.local_path("back.bin"));
    assert_same_file(&srv.local_path("full.bin"), &srv.local_path("partial.bin"));
    srv.check(
        sftp_output_lines(&out)
            .iter()
            .any(|l| l.split_whitespace().any(|w| w == "300001")),
        "ls -l big.bin after reput does not show 300001 bytes",
        &cmd,
        &out,
    );
    // The resumed file is still a valid encrypted file.
    let mut verify = srv.dropzone_tool(&["verify", "--user", "alice"]);
    srv.run(&mut verify);
}

/// A client with far more requests in flight than the session's memory
/// budget and the SSH channel's message queue hold: 256 reads and writes of
/// 255 KiB (64 MiB) at once. DATA replies wait for the client's window, and
/// the window adjustments arrive behind the client's next requests, so the
/// session must keep taking requests off the connection while replies wait.
/// (With the budget taken where requests are read, this download hung.)
#[test]
fn deep_request_pipelines_do_not_stall_the_session() {
    let srv = Server::start();
    let data = random_bytes(40 * 1024 * 1024, fresh_seed());
    std::fs::write(srv.local_path("deep.bin"), &data).unwrap();
    let batch = "put deep.bin deep.bin\nget deep.bin back.bin\n";
    let mut cmd = srv.sftp_with("alice", &["-R", "256", "-B", "261120"], batch);
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("deep.bin"), &srv.local_path("back.bin"));
}

/// The plaintext detector used above finds plaintext when it is there.
#[test]
fn harness_plaintext_detector_finds_plaintext() {
    let plain = random_bytes(100_000, fresh_seed());
    let mut stored = random_bytes(200_000, fresh_seed() ^ 7);
    let all: Vec<usize> = (0..=plain.len() - WINDOW).collect();
    assert_eq!(find_plaintext_window(&plain, &all, &stored), None);
    stored[150_000..150_000 + WINDOW].copy_from_slice(&plain[777..777 + WINDOW]);
    assert_eq!(
        find_plaintext_window(&plain, &all, &stored),
        Some((777, 150_000))
    );
    // A sampled search finds a whole stored copy at any alignment.
    let mut copy = vec![0u8; 13];
    copy.extend_from_slice(&plain);
    let sample: Vec<usize> = (0..plain.len() - WINDOW).step_by(4093).collect();
    assert!(find_plaintext_window(&plain, &sample, &copy).is_some());
}
