//! Every `dropzone` command on `[storage] backend = "s3"`, against a real
//! SeaweedFS and files uploaded by OpenSSH through a real `dropzone serve`:
//! `verify` (finds a byte flipped in an object), `decrypt`, `keys rotate`
//! (files before and after; a node without the new master key version),
//! `quota scan` and `user list` (usage counted from the bucket), and
//! `import-legacy` (files and key written to the bucket).

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
use sha2::{Digest, Sha224};

use dropzone::aws::s3::Condition;

use super::eaas_service::EaasServer;
use super::harness::*;
use super::seaweed::SeaweedFs;

/// The objects' prefix in the bucket.
const PREFIX: &str = "cmd";

/// A SeaweedFS and a server on its bucket with `users` (and `[kms]`
/// tables, default local). Bind in this order: the server goes first.
fn s3_server(users: &[(&str, Option<&str>)], kms: Option<String>) -> (SeaweedFs, Server) {
    let s3 = SeaweedFs::start();
    let srv = Server::start_opts(
        users,
        &ServerOptions {
            extra_config: s3.storage_config(PREFIX),
            env: SeaweedFs::env(),
            kms_config: kms,
            ..ServerOptions::default()
        },
    );
    (s3, srv)
}

/// Every object key under `prefix`, sorted.
fn object_keys(s3: &SeaweedFs, prefix: &str) -> Vec<String> {
    let client = s3.client();
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client.list(prefix, None, token.as_deref(), 1000).unwrap();
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    keys.sort();
    keys
}

/// The object holding `user`'s file `path` (relative).
fn data_key(user: &str, path: &str) -> String {
    format!("{PREFIX}/data/{user}/{path}")
}

/// Writes `data` as `name` in the scratch directory and uploads it as
/// `user` to `dest`.
fn upload(srv: &Server, user: &str, name: &str, data: &[u8], dest: &str) {
    std::fs::write(srv.local_path(name), data).unwrap();
    srv.run(&mut srv.sftp(user, &format!("put {name} {dest}\n")));
}

#[test]
fn verify_finds_a_flipped_byte_in_an_object_and_decrypt_reads_stored_files() {
    let (s3, srv) = s3_server(&[("alice", None), ("bob", None)], None);
    let seed = fresh_seed();
    let big = random_bytes(3_000_017, seed);
    let small = b"a small file on S3\n".to_vec();
    srv.run(&mut srv.sftp("alice", "mkdir docs\n"));
    upload(&srv, "alice", "big.bin", &big, "docs/big.bin");
    upload(&srv, "alice", "small.txt", &small, "small.txt");
    upload(
        &srv,
        "bob",
        "bob.bin",
        &random_bytes(5000, seed + 1),
        "bob.bin",
    );

    let mut cmd = srv.dropzone_tool(&["verify"]);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).contains("checked 3 file(s), 0 failure(s)"),
        "verify of an intact bucket",
        &cmd,
        &out,
    );

    // decrypt, to a file and to standard output.
    let mut cmd = srv.dropzone_tool(&[
        "decrypt",
        "--user",
        "alice",
        "/docs/big.bin",
        "--out",
        "local/decrypted.bin",
    ]);
    let out = srv.run(&mut cmd);
    srv.check(
        stderr(&out).contains("decrypted 3000017 bytes"),
        "decrypt's length",
        &cmd,
        &out,
    );
    assert_same_file(&srv.local_path("big.bin"), &srv.local_path("decrypted.bin"));
    let out = srv.run(&mut srv.dropzone_tool(&["decrypt", "--user", "alice", "/small.txt"]));
    assert_eq!(out.stdout, small);

    // Flip one byte in the middle of the object (its metadata kept).
    let client = s3.client();
    let key = data_key("alice", "docs/big.bin");
    let (body, info) = client.get(&key).unwrap();
    let mut bytes = body.to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let meta: Vec<(&str, &str)> = info
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    client.put(&key, &bytes, &meta, Condition::Always).unwrap();

    let mut cmd = srv.dropzone_tool(&["verify"]);
    let out = srv.run_any(&mut cmd);
    let text = stdout(&out);
    srv.check(
        out.status.code() == Some(1),
        "verify of a tampered object does not exit 1",
        &cmd,
        &out,
    );
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    srv.check(
        !fails.is_empty()
            && fails
                .iter()
                .all(|l| l.starts_with("FAIL alice /docs/big.bin: ")),
        "verify names the tampered file, and only it",
        &cmd,
        &out,
    );
    srv.check(
        text.contains("checked 3 file(s)"),
        "verify stopped at the damage",
        &cmd,
        &out,
    );
    srv.run(&mut srv.dropzone_tool(&["verify", "--user", "bob"]));

    // decrypt refuses the damaged file rather than write wrong data.
    let mut cmd = srv.dropzone_tool(&[
        "decrypt",
        "--user",
        "alice",
        "/docs/big.bin",
        "--out",
        "local/tampered.bin",
    ]);
    srv.run_fail(&mut cmd);
    let partial = std::fs::read(srv.local_path("tampered.bin")).unwrap_or_default();
    assert!(
        partial.len() < big.len() && big.starts_with(&partial),
        "decrypt wrote {} bytes of a tampered file",
        partial.len()
    );

    // A user whose tree is gone (key kept): decrypt says so and creates
    // nothing in the bucket.
    for key in object_keys(&s3, &data_key("bob", "")) {
        client.delete(&key).unwrap();
    }
    let mut cmd = srv.dropzone_tool(&["decrypt", "--user", "bob", "/bob.bin"]);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("user bob has no stored files"),
        "decrypt of a user without a tree",
        &cmd,
        &out,
    );
    assert_eq!(object_keys(&s3, &data_key("bob", "")), Vec::<String>::new());
}

#[test]
fn keys_rotate_rewraps_the_key_objects_and_files_before_and_after_stay_readable() {
    let (s3, srv) = s3_server(&[("alice", None), ("bob", None)], None);
    let node_b = srv.start_node();
    let seed = fresh_seed();
    let before = random_bytes(400_000, seed);
    upload(&srv, "alice", "before.bin", &before, "before.bin");
    let key = format!("{PREFIX}/keks/alice.key");
    let (text, _) = s3.client().get(&key).unwrap();
    assert!(String::from_utf8_lossy(&text).contains("secret_version = \"1\""));

    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "2"]);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    srv.check(
        text.contains("rotated alice (1 -> 2)")
            && text.contains("1 user(s): 1 rotated, 0 already on version 2, 0 failed"),
        "rotation of the one key in the bucket (bob never logged in)",
        &cmd,
        &out,
    );
    let (object, _) = s3.client().get(&key).unwrap();
    let object = String::from_utf8_lossy(&object);
    assert!(
        object.contains("secret_version = \"2\""),
        "the key object after rotation:\n{object}"
    );
    assert_eq!(
        object_keys(&s3, &format!("{PREFIX}/keks/")),
        std::slice::from_ref(&key),
        "rotation left other objects"
    );

    // After: a new login unwraps under version 2; old and new files read.
    let after = random_bytes(300_001, seed + 1);
    upload(&srv, "alice", "after.bin", &after, "after.bin");
    srv.run(&mut srv.sftp(
        "alice",
        "get before.bin before-back.bin\nget after.bin after-back.bin\n",
    ));
    assert_same_file(
        &srv.local_path("before.bin"),
        &srv.local_path("before-back.bin"),
    );
    assert_same_file(
        &srv.local_path("after.bin"),
        &srv.local_path("after-back.bin"),
    );
    let out = srv.run(&mut srv.dropzone_tool(&["decrypt", "--user", "alice", "/before.bin"]));
    assert!(out.stdout == before, "decrypt of the file written before");
    let out = srv.run(&mut srv.dropzone_tool(&["verify"]));
    assert!(stdout(&out).contains("checked 2 file(s), 0 failure(s)"));

    // Again: nothing to do.
    let mut cmd = srv.dropzone_tool(&["keys", "rotate", "--secret-version", "2"]);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).contains("skipped alice (already 2)"),
        "a second rotation",
        &cmd,
        &out,
    );

    // Another node with the local key backend has only the master key
    // versions copied to it: version 2 was made where the rotation ran, so
    // that node refuses alice until it gets the file.
    let get = "get after.bin after-via-b.bin\n";
    node_b.run_fail(&mut node_b.sftp("alice", get));
    let v2 = "master_key/master-v2.pem";
    std::fs::copy(srv.path(v2), node_b.path(v2)).unwrap();
    node_b.run(&mut node_b.sftp("alice", get));
    assert_same_file(
        &srv.local_path("after.bin"),
        &node_b.local_path("after-via-b.bin"),
    );
}

#[test]
fn quota_scan_and_user_list_count_usage_from_the_bucket() {
    let (mut s3, srv) = s3_server(&[("alice", None), ("bob", None), ("carol", None)], None);
    let seed = fresh_seed();
    srv.run(&mut srv.sftp("alice", "mkdir d\n"));
    upload(&srv, "alice", "a.bin", &random_bytes(1000, seed), "a.bin");
    upload(
        &srv,
        "alice",
        "b.bin",
        &random_bytes(300_000, seed + 1),
        "d/b.bin",
    );
    // carol logs in and stores nothing: a tree with no files.
    srv.run(&mut srv.sftp("carol", "pwd\n"));

    let mut cmd = srv.dropzone_tool(&["quota", "scan"]);
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    srv.check(
        text.contains("alice: 293.9 KiB (301000 bytes), 2 files"),
        "alice's scanned usage",
        &cmd,
        &out,
    );
    srv.check(!text.contains("bob"), "bob has no tree", &cmd, &out);
    let out = srv.run(&mut srv.dropzone_tool(&["quota", "scan", "--user", "bob"]));
    assert!(
        stdout(&out).contains("bob: nothing stored"),
        "{}",
        stdout(&out)
    );
    assert!(
        object_keys(&s3, &format!("{PREFIX}/data/bob")).is_empty(),
        "scanning bob created his tree"
    );

    let mut cmd = srv.dropzone_tool(&["user", "list"]);
    let out = srv.run(&mut cmd);
    let line = |name: &str| {
        stdout(&out)
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", stdout(&out)))
            .to_owned()
    };
    srv.check(
        line("alice")
            .contains("used 293.9 KiB (301000 bytes), 2 files (counted from the store now)"),
        "alice's usage in user list",
        &cmd,
        &out,
    );
    srv.check(
        line("bob").contains("\tnothing stored\t"),
        "bob's usage in user list",
        &cmd,
        &out,
    );
    srv.check(
        line("carol").contains("used 0 bytes (0 bytes), 0 files"),
        "carol's usage in user list",
        &cmd,
        &out,
    );

    // A new upload shows at once: nothing is cached between runs.
    upload(&srv, "bob", "c.bin", &random_bytes(10, seed + 2), "c.bin");
    let out = srv.run(&mut srv.dropzone_tool(&["user", "list"]));
    assert!(
        stdout(&out).contains("(10 bytes), 1 files"),
        "{}",
        stdout(&out)
    );

    // user remove names where the user's files and key stay: the bucket.
    let out = srv.run(&mut srv.dropzone_tool(&["user", "remove", "carol"]));
    let bucket = format!("s3://{}/{PREFIX}", s3.bucket);
    assert!(
        stdout(&out).contains(&format!(
            "their files ({bucket}/data/carol/) and key ({bucket}/keks/carol.key) are kept"
        )),
        "{}",
        stdout(&out)
    );

    // The store down: the list still comes, saying why usage is missing.
    s3.stop();
    let mut cmd = srv.dropzone_tool(&["user", "list"]);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).lines().count() == 2
            && stdout(&out)
                .lines()
                .all(|l| l.contains("usage unknown: cannot count it from the store")),
        "user list with the store down",
        &cmd,
        &out,
    );
}

/// `dropzone serve --config CONFIG` in `srv`'s directory (another node's
/// configuration), killed on drop.
struct OtherNode {
    child: std::process::Child,
    port: u16,
}

impl OtherNode {
    fn start(srv: &Server, config: &str) -> OtherNode {
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut cmd = srv.dropzone();
        cmd.args(["serve", "--config", config]);
        let (child, port) = spawn_listening(&mut cmd, &log)
            .unwrap_or_else(|(status, log)| panic!("{config}: exited ({status})\n{log}"));
        OtherNode { child, port }
    }

    /// `sftp` to this node as `user` of `srv`.
    fn sftp(&self, srv: &Server, user: &str, batch: &str) -> std::process::Command {
        // ssh keeps the first port it is given: this one, not the harness's.
        srv.sftp_with(user, &["-o", &format!("Port={}", self.port)], batch)
    }
}

impl Drop for OtherNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn keys_migrate_moves_the_key_objects_to_another_key_service() {
    let eaas = EaasServer::start();
    eaas.generate("dropzone/new", "1");
    let (s3, srv) = s3_server(&[("alice", None), ("bob", None)], None);
    let seed = fresh_seed();
    for (i, user) in ["alice", "bob"].into_iter().enumerate() {
        upload(
            &srv,
            user,
            &format!("{user}.bin"),
            &random_bytes(90_000, seed + i as u64),
            "f.bin",
        );
    }
    let config = std::fs::read_to_string(srv.path("config/dropzone.toml")).unwrap();
    let eaas_kms = format!(
        "[kms]\nbackend = \"eaas\"\nkey_cache_ttl_secs = 0\n\n[kms.eaas]\nurl = \"{}\"\n\
         secret_path = \"dropzone/new\"\nsecret_version = \"1\"\n",
        eaas.url("")
    );
    assert!(config.contains(LOCAL_KMS_CONFIG));
    let new = config.replace(LOCAL_KMS_CONFIG, &eaas_kms);
    std::fs::write(srv.path("config/new.toml"), &new).unwrap();
    let prefix_line = format!("prefix = \"{PREFIX}\"");
    assert!(new.contains(&prefix_line));
    std::fs::write(
        srv.path("config/other-prefix.toml"),
        new.replace(&prefix_line, "prefix = \"elsewhere\""),
    )
    .unwrap();
    let key_object = |user: &str| {
        let (text, _) = s3
            .client()
            .get(&format!("{PREFIX}/keks/{user}.key"))
            .unwrap();
        String::from_utf8_lossy(&text).into_owned()
    };
    let reads = |client: &dyn Fn(&str, &str) -> std::process::Command, round: u32| {
        for user in ["alice", "bob"] {
            let got = format!("{user}-{round}.bin");
            srv.run(&mut client(user, &format!("get f.bin {got}\n")));
            assert_same_file(
                &srv.local_path(&format!("{user}.bin")),
                &srv.local_path(&got),
            );
        }
    };

    // Keys in another place: refused before anything is written.
    let mut cmd =
        srv.dropzone_tool(&["keys", "migrate", "--to-config", "config/other-prefix.toml"]);
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("different key stores"),
        "a migration to another prefix",
        &cmd,
        &out,
    );

    let mut cmd = srv.dropzone_tool(&["keys", "migrate", "--to-config", "config/new.toml"]);
    let out = srv.run(&mut cmd);
    srv.check(stdout(&out).contains("2 migrated"), "step 1", &cmd, &out);
    for user in ["alice", "bob"] {
        let k = key_object(user);
        assert!(
            k.contains("backend = \"local\"") && k.contains("backend = \"eaas\""),
            "{user}'s key object after step 1:\n{k}"
        );
    }
    // Both configurations serve everyone from the same bucket.
    let node = OtherNode::start(&srv, "config/new.toml");
    reads(&|u: &str, b: &str| srv.sftp(u, b), 1);
    reads(&|u: &str, b: &str| node.sftp(&srv, u, b), 2);

    let mut cmd = srv.dropzone_tool(&[
        "keys",
        "migrate",
        "--to-config",
        "config/new.toml",
        "--finish",
    ]);
    let out = srv.run(&mut cmd);
    srv.check(stdout(&out).contains("2 finished"), "--finish", &cmd, &out);
    for user in ["alice", "bob"] {
        let k = key_object(user);
        assert!(
            k.contains("backend = \"eaas\"") && !k.contains("backend = \"local\""),
            "{user}'s key object after --finish:\n{k}"
        );
    }
    reads(&|u: &str, b: &str| node.sftp(&srv, u, b), 3);
    srv.run_fail(&mut srv.sftp("alice", "ls\n"));
}

/// The master key the original's EaaS wrapped user keys with.
const LEGACY_SECRET_PATH: &str = "dropzone/rsa";

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

#[test]
fn import_legacy_writes_files_and_keys_to_the_bucket() {
    let eaas = EaasServer::start();
    eaas.generate(LEGACY_SECRET_PATH, "1");
    let seed = fresh_seed();
    let key: [u8; 32] = random_bytes(32, seed).try_into().unwrap();
    let wrapped = eaas.encrypt(LEGACY_SECRET_PATH, "1", &hex::encode(key));
    let kms = format!(
        "[kms]\nbackend = \"eaas\"\nkey_cache_ttl_secs = 0\n\n[kms.eaas]\nurl = \"{}\"\n\
         secret_path = \"{LEGACY_SECRET_PATH}\"\nsecret_version = \"1\"\n",
        eaas.url("")
    );
    let (s3, srv) = s3_server(&[("alice", None)], Some(kms));

    // The original's tree: two encrypted files (one in a directory).
    let legacy = srv.path("legacy");
    let home = legacy.join("homes/alice");
    std::fs::create_dir_all(home.join("docs")).unwrap();
    std::fs::create_dir_all(legacy.join("keks")).unwrap();
    let kek_name = format!(".{}.secret", hex::encode(Sha224::digest(b"alice")));
    std::fs::write(legacy.join("keks").join(kek_name), format!("{wrapped}\n")).unwrap();
    let mut files = [
        ("docs/report.txt", random_bytes(70_000, seed + 1)),
        ("big.bin", random_bytes(1_200_003, seed + 2)),
    ];
    for (i, (name, data)) in files.iter_mut().enumerate() {
        // The original cannot keep NUL bytes at a file's end.
        *data.last_mut().unwrap() |= 1;
        let iv = [i as u8 + 1; 16];
        std::fs::write(
            home.join(format!("{name}.enc")),
            legacy_encrypt(&key, &iv, data),
        )
        .unwrap();
    }
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
    let everything = format!("{PREFIX}/");

    // A dry run writes nothing to the bucket.
    let mut cmd = import(&["--dry-run"]);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).contains("2 would be imported"),
        "dry-run count",
        &cmd,
        &out,
    );
    assert_eq!(object_keys(&s3, &everything), Vec::<String>::new());

    let mut cmd = import(&[]);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).contains("2 imported"),
        "import count",
        &cmd,
        &out,
    );
    srv.check(
        stderr(&out).contains(&format!(
            "new Dropzone key s3://{}/{PREFIX}/keks/alice.key",
            s3.bucket
        )),
        "the new key's place",
        &cmd,
        &out,
    );
    assert_eq!(
        object_keys(&s3, &everything),
        [
            data_key("alice", ""),
            data_key("alice", "big.bin"),
            data_key("alice", "docs/"),
            data_key("alice", "docs/report.txt"),
            format!("{PREFIX}/keks/alice.key"),
        ]
    );
    assert!(
        files_under(&srv.path("data")).is_empty(),
        "files written to data_dir"
    );
    assert!(
        files_under(&srv.path("keks")).is_empty(),
        "a key written to keks_dir"
    );

    // Read back through the server.
    srv.run(&mut srv.sftp("alice", "get docs/report.txt got0\nget big.bin got1\n"));
    for (i, (name, data)) in files.iter().enumerate() {
        let got = std::fs::read(srv.local_path(&format!("got{i}"))).unwrap();
        assert!(
            got == *data,
            "{name}: {} bytes back, {} expected",
            got.len(),
            data.len()
        );
    }

    // Again: recognised, nothing written.
    let etags = |s3: &SeaweedFs| {
        let page = s3.client().list(&everything, None, None, 1000).unwrap();
        page.objects
            .into_iter()
            .map(|o| (o.key, o.etag))
            .collect::<Vec<_>>()
    };
    let stored = etags(&s3);
    let mut cmd = import(&[]);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).contains("0 imported") && stdout(&out).contains("2 already imported"),
        "a second import",
        &cmd,
        &out,
    );
    assert_eq!(etags(&s3), stored, "the second import rewrote objects");

    // --overwrite of a file that changed in the source rewrites it on S3.
    let mut changed = random_bytes(50_001, seed + 3);
    *changed.last_mut().unwrap() |= 1;
    std::fs::write(
        home.join("docs/report.txt.enc"),
        legacy_encrypt(&key, &[9; 16], &changed),
    )
    .unwrap();
    let mut cmd = import(&["--overwrite"]);
    let out = srv.run(&mut cmd);
    srv.check(
        stdout(&out).contains("1 overwritten"),
        "overwrite on S3",
        &cmd,
        &out,
    );
    let out = srv.run(&mut srv.dropzone_tool(&["decrypt", "--user", "alice", "/docs/report.txt"]));
    assert!(out.stdout == changed, "the overwritten file's content");
}
