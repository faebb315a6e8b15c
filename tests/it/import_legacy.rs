//! `dropzone import-legacy` end to end: a tree in the original Dropzone's
//! layout, its user key wrapped through a real `dropzone-eaas` over HTTP as
//! the original did, imported (dry run first), then read back with OpenSSH
//! `sftp` from a real server using the same key service; a second import
//! changes nothing and the source is never touched.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
use sha2::{Digest, Sha224};

use super::eaas_service::EaasServer;
use super::harness::*;

/// The master key the original's EaaS wrapped user keys with.
const SECRET_PATH: &str = "dropzone/rsa";

/// A file as the original wrote it: a 16-byte IV, then AES-256-CBC of the
/// content zero-padded to whole blocks.
fn legacy_encrypt(key: &[u8; 32], iv: &[u8; 16], content: &[u8]) -> Vec<u8> {
    let mut padded = content.to_vec();
    padded.resize(content.len().div_ceil(16) * 16, 0);
    let n = padded.len();
    cbc::Encryptor::<Aes256>::new(key.into(), iv.into())
        .encrypt_padded::<NoPadding>(&mut padded, n)
        .unwrap();
    let mut out = iv.to_vec();
    out.extend_from_slice(&padded);
    out
}

/// Every entry under `dir` with its content (None for directories) and
/// modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Option<Vec<u8>>, i64)> {
    entries_under(dir)
        .into_iter()
        .map(|rel| {
            let p = dir.join(&rel);
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let content = (!meta.is_dir()).then(|| std::fs::read(&p).unwrap());
            (rel, (content, meta.mtime()))
        })
        .collect()
}

/// Content without NUL bytes at its end (the original cannot keep those).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut data = random_bytes(len, seed);
    if let Some(last) = data.last_mut() {
        *last |= 1;
    }
    data
}

#[test]
fn import_legacy_tree_then_read_back_with_sftp() {
    let eaas = EaasServer::start();
    // The original generated its master key at start-up, then wrapped each
    // user's AES key, sent as 64 hex characters, and kept the ciphertext hex.
    eaas.generate(SECRET_PATH, "1");
    let seed = fresh_seed();
    let key: [u8; 32] = random_bytes(32, seed).try_into().unwrap();
    let wrapped = eaas.encrypt(SECRET_PATH, "1", &hex::encode(key));

    let kms = format!(
        "[kms]\nbackend = \"eaas\"\nkey_cache_ttl_secs = 0\n\n[kms.eaas]\nurl = \"{}\"\n\
         secret_path = \"{SECRET_PATH}\"\nsecret_version = \"1\"\n",
        eaas.url("")
    );
    let srv = Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            kms_config: Some(kms),
            ..ServerOptions::default()
        },
    );

    // The original's tree.
    let legacy = srv.path("legacy");
    let keks = legacy.join("keks");
    let home = legacy.join("homes/alice");
    std::fs::create_dir_all(home.join("docs/reports")).unwrap();
    std::fs::create_dir_all(&keks).unwrap();
    let kek_name = format!(".{}.secret", hex::encode(Sha224::digest(b"alice")));
    std::fs::write(keks.join(kek_name), format!("{wrapped}\n")).unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("docs/reports/q3.txt", content(300, seed + 1)),
        ("empty.bin", Vec::new()),
        ("odd.bin", content(1000, seed + 2)),
        // Several store chunks and several read pieces.
        ("big.bin", content(1_500_007, seed + 3)),
    ];
    for (i, (name, data)) in files.iter().enumerate() {
        let iv = [i as u8 + 1; 16];
        std::fs::write(
            home.join(format!("{name}.enc")),
            legacy_encrypt(&key, &iv, data),
        )
        .unwrap();
    }
    let leftover = b"a plaintext file the original left while a session was open\n";
    std::fs::write(home.join("notes.txt"), leftover).unwrap();
    let source_before = snapshot(&legacy);

    let import = |extra: &[&str]| {
        let mut args = vec![
            "import-legacy",
            "--keks",
            "legacy/keks",
            "--homes",
            "legacy/homes",
        ];
        args.extend_from_slice(extra);
        srv.dropzone_tool(&args)
    };

    // A dry run checks everything and writes nothing, not even the key.
    let stored_before = (snapshot(&srv.path("data")), snapshot(&srv.path("keks")));
    let mut cmd = import(&["--dry-run"]);
    let out = srv.run(&mut cmd);
    let (text, progress) = (stdout(&out), stderr(&out));
    srv.check(
        text.contains("dry run: nothing was written"),
        "no dry-run summary",
        &cmd,
        &out,
    );
    srv.check(
        text.contains("5 would be imported"),
        "wrong dry-run count",
        &cmd,
        &out,
    );
    srv.check(
        progress.contains("would import /big.bin (1500007 bytes)"),
        "no progress",
        &cmd,
        &out,
    );
    assert!(
        (snapshot(&srv.path("data")), snapshot(&srv.path("keks"))) == stored_before,
        "the dry run wrote something"
    );
    assert!(!srv.path("keks/alice.key").exists());

    // The import.
    let mut cmd = import(&[]);
    let out = srv.run(&mut cmd);
    let (text, progress) = (stdout(&out), stderr(&out));
    srv.check(text.contains("5 imported"), "wrong count", &cmd, &out);
    srv.check(
        text.contains("1 plaintext found"),
        "plaintext not counted",
        &cmd,
        &out,
    );
    srv.check(
        text.contains("PLAINTEXT found at rest") && text.contains("homes/alice/notes.txt"),
        "plaintext leftover not reported",
        &cmd,
        &out,
    );
    srv.check(
        progress.contains("alice: imported /docs/reports/q3.txt (300 bytes)"),
        "no progress",
        &cmd,
        &out,
    );
    srv.check(
        progress.contains("new Dropzone key"),
        "no key line",
        &cmd,
        &out,
    );
    assert!(srv.path("keks/alice.key").exists());
    // Stored encrypted, not as the plaintext.
    let stored = std::fs::read(srv.data("alice").join("notes.txt")).unwrap();
    assert!(!stored.windows(leftover.len()).any(|w| w == leftover));

    // Read back by a real client from the server, keys unwrapped by the same
    // key service.
    let mut batch = String::new();
    for (i, (name, _)) in files.iter().enumerate() {
        batch.push_str(&format!("get {name} got{i}\n"));
    }
    batch.push_str("get notes.txt got-notes\n");
    let mut cmd = srv.sftp("alice", &batch);
    srv.run(&mut cmd);
    for (i, (name, data)) in files.iter().enumerate() {
        let got = std::fs::read(srv.local_path(&format!("got{i}"))).unwrap();
        assert!(
            got == *data,
            "{name}: {} bytes back, {} expected",
            got.len(),
            data.len()
        );
    }
    assert_eq!(
        std::fs::read(srv.local_path("got-notes")).unwrap(),
        leftover
    );
    let mut cmd = srv.dropzone_tool(&["verify"]);
    srv.run(&mut cmd);

    // Again: everything is recognised, nothing is written.
    let stored = snapshot(&srv.path("data"));
    let mut cmd = import(&[]);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    srv.check(text.contains("0 imported"), "imported twice", &cmd, &out);
    srv.check(
        text.contains("5 already imported"),
        "not recognised",
        &cmd,
        &out,
    );
    srv.check(
        text.contains("0 conflict(s), 0 error(s)"),
        "conflicts",
        &cmd,
        &out,
    );
    assert!(
        snapshot(&srv.path("data")) == stored,
        "the second import changed the store"
    );

    assert!(
        snapshot(&legacy) == source_before,
        "the source was modified"
    );

    // A damaged file is reported precisely, the rest goes on, and the exit
    // status says something was left behind.
    std::fs::write(home.join("broken.enc"), [7u8; 20]).unwrap();
    let mut cmd = import(&[]);
    let out = srv.run_fail(&mut cmd);
    let text = stdout(&out);
    srv.check(out.status.code() == Some(1), "exit status", &cmd, &out);
    srv.check(
        text.contains(
            "broken.enc: 20 bytes is not a 16-byte IV followed by whole 16-byte AES blocks",
        ),
        "the bad file is not reported precisely",
        &cmd,
        &out,
    );
    srv.check(
        text.contains("5 already imported"),
        "the rest stopped",
        &cmd,
        &out,
    );
}

#[test]
fn import_legacy_refuses_the_local_backend() {
    let srv = Server::start_with(&[("alice", None)]);
    let home = srv.path("legacy/homes/alice");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(srv.path("legacy/keks")).unwrap();
    let mut cmd = srv.dropzone_tool(&[
        "import-legacy",
        "--keks",
        "legacy/keks",
        "--homes",
        "legacy/homes",
    ]);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        out.status.code() == Some(2),
        "not a configuration error",
        &cmd,
        &out,
    );
    srv.check(
        stderr(&out).contains("backend = \"eaas\""),
        "no directions to configure the EaaS",
        &cmd,
        &out,
    );
}
