//! Tests of the whole import against a key service double (the real
//! `dropzone-eaas` is exercised by the integration test
//! `tests/it/import_legacy.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
use zeroize::Zeroizing;

use super::*;
use crate::keys::UserKeys;
use crate::kms::{KeyWrapper, KmsError, MasterKeyRef, WrapContext};
use crate::store::storage::{LocalStorage, ObjectPath};
use crate::store::{OpenOptions, UserStore};
use crate::username::UserName;

/// Encrypts `content` as the original did: a 16-byte IV, then AES-256-CBC
/// of the content zero-padded to whole blocks.
pub(super) fn legacy_encrypt(key: &[u8; 32], iv: [u8; 16], content: &[u8]) -> Vec<u8> {
    let mut padded = content.to_vec();
    padded.resize(content.len().div_ceil(16) * 16, 0);
    let n = padded.len();
    cbc::Encryptor::<Aes256>::new(key.into(), (&iv).into())
        .encrypt_padded::<NoPadding>(&mut padded, n)
        .unwrap();
    let mut out = iv.to_vec();
    out.extend_from_slice(&padded);
    out
}

/// A key service double with the EaaS's contract: "ciphertext" is
/// `wrapped:` + the hex of the key under a known master key; anything else
/// is refused, as the real service refuses a ciphertext it cannot decrypt.
struct FakeEaas {
    backend: &'static str,
}

const MASTER: &str = "legacy/rsa";

impl KeyWrapper for FakeEaas {
    fn backend(&self) -> &'static str {
        self.backend
    }
    fn current(&self) -> MasterKeyRef {
        MasterKeyRef {
            secret_path: MASTER.into(),
            secret_version: "1".into(),
        }
    }
    fn ensure_master_key(&self, _: &MasterKeyRef) -> Result<(), KmsError> {
        Ok(())
    }
    fn wrap(
        &self,
        key: &[u8; 32],
        under: &MasterKeyRef,
        _: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        assert_eq!(under.secret_path, MASTER);
        Ok(wrapped(key))
    }
    fn unwrap(
        &self,
        wrapped: &[u8],
        under: &MasterKeyRef,
        _: &WrapContext,
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        if under.secret_path != MASTER {
            return Err(KmsError::Refused(format!("no key {under}")));
        }
        let hex_text = wrapped
            .strip_prefix(b"wrapped:")
            .ok_or_else(|| KmsError::Refused("decryption error".into()))?;
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_text, &mut key[..])
            .map_err(|_| KmsError::Refused("not a data key".into()))?;
        Ok(key)
    }
}

fn wrapped(key: &[u8; 32]) -> Vec<u8> {
    let mut w = b"wrapped:".to_vec();
    w.extend_from_slice(hex::encode(key).as_bytes());
    w
}

fn eaas() -> Arc<dyn KeyWrapper> {
    Arc::new(FakeEaas { backend: "eaas" })
}

/// A legacy tree plus Dropzone's directories, in one temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(f.keks()).unwrap();
        std::fs::create_dir_all(f.homes()).unwrap();
        f
    }
    fn keks(&self) -> PathBuf {
        self.dir.path().join("legacy/keks")
    }
    fn homes(&self) -> PathBuf {
        self.dir.path().join("legacy/homes")
    }
    fn legacy(&self) -> PathBuf {
        self.dir.path().join("legacy")
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn dz_keks(&self) -> PathBuf {
        self.dir.path().join("keks")
    }
    /// Writes the user's key file as the original did: the service's
    /// ciphertext in hex.
    fn add_key(&self, user: &str, key: &[u8; 32]) {
        std::fs::write(
            self.keks().join(source::kek_file_name(user)),
            format!("{}\n", hex::encode(wrapped(key))),
        )
        .unwrap();
    }
    fn put(&self, user: &str, rel: &str, bytes: &[u8]) {
        let p = self.homes().join(user).join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    fn put_enc(&self, user: &str, rel: &str, key: &[u8; 32], content: &[u8]) {
        let iv = [rel.len() as u8; 16];
        self.put(
            user,
            &format!("{rel}.enc"),
            &legacy_encrypt(key, iv, content),
        );
    }
    fn options(&self, dry_run: bool) -> ImportOptions {
        ImportOptions {
            legacy_keks: self.keks(),
            legacy_homes: self.homes(),
            backend: crate::store::Backend::Local {
                data_dir: self.data(),
            },
            keks_dir: self.dz_keks(),
            legacy_master: eaas().current(),
            dry_run,
            overwrite: false,
            only: Vec::new(),
        }
    }
    fn run(&self, opts: &ImportOptions) -> (Summary, Vec<Event>) {
        let mut events = Vec::new();
        let summary = import(opts, eaas(), &mut |e: &Event| events.push(e.clone())).unwrap();
        (summary, events)
    }
    fn store(&self, user: &str) -> UserStore {
        let keys = UserKeys::new(self.dz_keks(), eaas(), None).unwrap();
        let key = keys.get_existing(&UserName::parse(user).unwrap()).unwrap();
        let storage = LocalStorage::open_root(&self.data().join(user)).unwrap();
        UserStore::new(Arc::new(storage), key)
    }
}

fn read(store: &UserStore, path: &str) -> Vec<u8> {
    let p = crate::jail::resolve(path).unwrap();
    let f = store
        .open(
            &p,
            OpenOptions {
                read: true,
                ..OpenOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    loop {
        let piece = f.read_at(out.len() as u64, 1 << 20).unwrap();
        if piece.is_empty() {
            return out;
        }
        out.extend_from_slice(&piece);
    }
}

fn write(store: &UserStore, path: &str, bytes: &[u8]) {
    let p = crate::jail::resolve(path).unwrap();
    let f = store
        .open(
            &p,
            OpenOptions {
                write: true,
                create: true,
                truncate: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
    f.write_at(0, bytes).unwrap();
    f.close().unwrap();
}

/// Every entry under `dir` with its content (None for directories) and
/// modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Option<Vec<u8>>, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let content = if meta.is_dir() {
                stack.push(p.clone());
                None
            } else if meta.is_file() {
                Some(std::fs::read(&p).unwrap())
            } else {
                Some(std::fs::read_link(&p).unwrap().into_os_string().into_vec())
            };
            out.insert(p, (content, meta.mtime()));
        }
    }
    out
}

use std::os::unix::ffi::OsStringExt;

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

fn outcomes(events: &[Event]) -> BTreeMap<String, FileOutcome> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::File {
                user,
                dest,
                outcome,
                ..
            } => Some((format!("{user}{dest}"), outcome.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn imports_a_legacy_tree_idempotently_without_touching_the_source() {
    let fx = Fixture::new();
    let alice_key = [0x11; 32];
    let big = content(1_500_000, 1);
    let odd = content(1_000, 2);
    let mut nul_tail = content(40, 3);
    nul_tail.extend_from_slice(&[0, 0, 0]);
    fx.add_key("alice", &alice_key);
    fx.put_enc("alice", "empty", &alice_key, b"");
    fx.put_enc("alice", "odd.bin", &alice_key, &odd);
    fx.put_enc("alice", "docs/deep/big.bin", &alice_key, &big);
    fx.put_enc("alice", "nul-tail", &alice_key, &nul_tail);
    fx.put(
        "alice",
        "left-open.txt",
        b"plaintext the original left behind",
    );
    fx.put("alice", "both", b"newer plaintext");
    fx.put_enc("alice", "both", &alice_key, b"older");
    fx.put("alice", "bad.enc", &[7u8; 16 + 20]);
    std::fs::create_dir_all(fx.homes().join("alice/empty-dir")).unwrap();
    // carol: no key file but only plaintext: imported.
    fx.put("carol", "note", b"carol's note");
    // dave: encrypted files but no key file: not imported at all.
    fx.put_enc("dave", "x", &[0x22; 32], b"dave's");
    // A home whose name is not a Dropzone user name.
    fx.put("-bad name", "f", b"f");
    // A key file whose user has no home.
    fx.add_key("ghost", &[0x33; 32]);
    let source_before = snapshot(&fx.legacy());

    // Dry run: everything is checked, nothing is written.
    let (dry, events) = fx.run(&fx.options(true));
    assert!(dry.dry_run);
    assert!(!fx.data().exists(), "a dry run created data_dir");
    assert!(!fx.dz_keks().exists(), "a dry run created keks_dir");
    let o = outcomes(&events);
    assert_eq!(
        o["alice/docs/deep/big.bin"],
        FileOutcome::WouldImport {
            bytes: big.len() as u64
        }
    );
    assert_eq!(dry.files_imported, 7, "{dry}");
    assert_eq!(dry.errors.len(), 1, "{dry}");

    // The import.
    let (sum, events) = fx.run(&fx.options(false));
    let o = outcomes(&events);
    assert_eq!(
        o["alice/odd.bin"],
        FileOutcome::Imported {
            bytes: odd.len() as u64
        }
    );
    assert!(
        matches!(&o["alice/bad"], FileOutcome::Failed(why) if why.contains("36 bytes")),
        "{o:?}"
    );
    assert_eq!(sum.users, ["alice", "carol"]);
    assert_eq!(sum.users_failed.len(), 2, "{sum}");
    assert!(
        sum.users_failed
            .iter()
            .any(|u| u.starts_with("dave:") && u.contains(".secret")),
        "{sum}"
    );
    assert!(
        sum.users_failed.iter().any(|u| u.starts_with("-bad name:")),
        "{sum}"
    );
    assert_eq!(sum.orphan_keys.len(), 1, "{sum}");
    assert_eq!(sum.files_imported, 7, "{sum}");
    assert_eq!(
        sum.bytes_imported,
        (big.len() + odd.len() + 40 + 34 + 15 + 12) as u64
    );
    assert_eq!(sum.plaintext.len(), 3, "{sum}");
    assert_eq!(sum.superseded.len(), 1, "{sum}");
    assert!(sum.superseded[0].contains("DIFFERENT"), "{sum}");
    assert!(sum.failed());
    let text = sum.to_string();
    assert!(text.contains("PLAINTEXT found at rest"), "{text}");
    assert!(text.contains("left-open.txt"), "{text}");

    let store = fx.store("alice");
    assert_eq!(read(&store, "/empty"), b"");
    assert_eq!(read(&store, "/odd.bin"), odd);
    assert_eq!(read(&store, "/docs/deep/big.bin"), big);
    // The NULs at the end are indistinguishable from the original's padding.
    assert_eq!(read(&store, "/nul-tail"), nul_tail[..40]);
    assert_eq!(
        read(&store, "/left-open.txt"),
        b"plaintext the original left behind"
    );
    assert_eq!(read(&store, "/both"), b"newer plaintext");
    assert!(
        store
            .stat(&crate::jail::resolve("/empty-dir").unwrap(), false)
            .is_ok()
    );
    assert!(
        store
            .stat(&crate::jail::resolve("/bad").unwrap(), false)
            .unwrap_err()
            .is_not_found()
    );
    assert_eq!(read(&fx.store("carol"), "/note"), b"carol's note");
    assert!(!fx.data().join("dave").exists());
    assert!(!fx.dz_keks().join("dave.key").exists());
    // The plaintext never reached the data directory.
    for (path, (bytes, _)) in snapshot(&fx.data()) {
        if let Some(bytes) = bytes {
            assert!(
                !bytes
                    .windows(20)
                    .any(|w| w == &b"plaintext the original left behind"[..20]),
                "{} holds plaintext",
                path.display()
            );
        }
    }

    // Again: nothing changes, everything is recognised.
    let stored_before = snapshot(&fx.data());
    let (again, events) = fx.run(&fx.options(false));
    assert_eq!(again.files_imported, 0, "{again}");
    assert_eq!(again.files_unchanged, 7, "{again}");
    assert!(again.conflicts.is_empty(), "{again}");
    assert!(
        outcomes(&events)
            .values()
            .all(|o| matches!(o, FileOutcome::Unchanged | FileOutcome::Failed(_)))
    );
    assert_eq!(snapshot(&fx.data()), stored_before);

    // A dry run now also sees them as imported.
    let (dry, _) = fx.run(&fx.options(true));
    assert_eq!(dry.files_unchanged, 7, "{dry}");

    assert_eq!(snapshot(&fx.legacy()), source_before, "the source changed");
}

#[test]
fn other_content_at_the_destination_is_a_conflict_unless_overwrite() {
    let fx = Fixture::new();
    let key = [0x44; 32];
    fx.add_key("erin", &key);
    fx.put_enc("erin", "a", &key, b"from the original");
    fx.put_enc("erin", "b", &key, b"same length 1");
    fx.run(&fx.options(false));
    let store = fx.store("erin");
    write(&store, "/a", b"changed in Dropzone since");
    write(&store, "/b", b"same length 2");

    let (sum, events) = fx.run(&fx.options(false));
    let o = outcomes(&events);
    assert!(
        matches!(&o["erin/a"], FileOutcome::Conflict(why) if why.contains("25 bytes")),
        "{o:?}"
    );
    assert!(
        matches!(&o["erin/b"], FileOutcome::Conflict(why) if why.contains("same length")),
        "{o:?}"
    );
    assert_eq!(sum.conflicts.len(), 2);
    assert!(sum.failed());
    assert_eq!(read(&store, "/a"), b"changed in Dropzone since");

    let mut opts = fx.options(true);
    opts.overwrite = true;
    let (dry, _) = fx.run(&opts);
    assert_eq!(dry.files_overwritten, 2, "{dry}");
    assert_eq!(read(&store, "/a"), b"changed in Dropzone since");

    opts.dry_run = false;
    let (sum, _) = fx.run(&opts);
    assert_eq!(sum.files_overwritten, 2, "{sum}");
    assert!(!sum.failed(), "{sum}");
    assert_eq!(read(&store, "/a"), b"from the original");
    assert_eq!(read(&store, "/b"), b"same length 1");
}

#[test]
fn a_key_the_service_will_not_unwrap_fails_that_user_only() {
    let fx = Fixture::new();
    fx.add_key("frank", &[0x55; 32]);
    fx.put_enc("frank", "f", &[0x55; 32], b"frank");
    std::fs::write(fx.keks().join(source::kek_file_name("gina")), "00ff").unwrap();
    fx.put_enc("gina", "g", &[0x66; 32], b"gina");
    std::fs::write(fx.keks().join(source::kek_file_name("hal")), "not hex").unwrap();
    fx.put_enc("hal", "h", &[0x66; 32], b"hal");

    let (sum, _) = fx.run(&fx.options(false));
    assert_eq!(sum.users, ["frank"]);
    assert_eq!(sum.files_imported, 1, "{sum}");
    assert_eq!(sum.users_failed.len(), 2, "{sum}");
    let gina = &sum.users_failed[0];
    assert!(gina.starts_with("gina:"), "{sum}");
    assert!(gina.contains(&source::kek_file_name("gina")), "{gina}");
    assert!(gina.contains("decryption error"), "{gina}");
    assert!(sum.users_failed[1].contains("not hex"), "{sum}");
    // Nothing was created for them.
    assert!(!fx.dz_keks().join("gina.key").exists());
    assert!(!fx.data().join("gina").exists());

    // --user limits the run; a name with no home is reported.
    let mut opts = fx.options(true);
    opts.only = vec!["frank".into(), "nobody".into()];
    let (sum, _) = fx.run(&opts);
    assert_eq!(sum.users, ["frank"]);
    assert_eq!(sum.files_unchanged, 1, "{sum}");
    assert!(sum.users_failed[0].starts_with("nobody:"), "{sum}");

    // A different master key: refused by the service, said so.
    let mut opts = fx.options(false);
    opts.legacy_master.secret_path = "other".into();
    opts.only = vec!["frank".into()];
    let (sum, _) = fx.run(&opts);
    assert!(sum.users_failed[0].contains("other version 1"), "{sum}");
}

#[test]
fn a_local_key_backend_is_refused_with_directions() {
    let fx = Fixture::new();
    let err = import(
        &fx.options(false),
        Arc::new(FakeEaas { backend: "local" }),
        &mut |_: &Event| {},
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("backend = \"eaas\""), "{text}");
    assert!(text.contains("\"local\""), "{text}");
    assert!(!fx.data().exists());

    let mut opts = fx.options(false);
    opts.legacy_homes = fx.dir.path().join("missing");
    let err = import(&opts, eaas(), &mut |_: &Event| {}).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn the_destination_path_is_the_legacy_path_without_enc() {
    // Names with spaces and dots survive; a directory called x.enc keeps
    // its name.
    let fx = Fixture::new();
    let key = [0x77; 32];
    fx.add_key("ivy", &key);
    fx.put_enc("ivy", "a dir.enc/my file.tar.gz", &key, b"tgz");
    // The modification time is carried over.
    let src = fx.homes().join("ivy/a dir.enc/my file.tar.gz.enc");
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
        .unwrap();
    fx.run(&fx.options(false));
    assert_eq!(read(&fx.store("ivy"), "/a dir.enc/my file.tar.gz"), b"tgz");
    let dest = crate::jail::resolve("/a dir.enc/my file.tar.gz").unwrap();
    assert_eq!(
        fx.store("ivy").stat(&dest, false).unwrap().mtime,
        1_000_000_000
    );
    let p = ObjectPath::from_components(["a dir.enc"]).unwrap();
    assert!(fx.store("ivy").stat(&p, false).is_ok());
}

#[test]
fn a_plaintext_copy_equal_to_its_enc_is_reported_as_the_same() {
    let fx = Fixture::new();
    let key = [0x88; 32];
    fx.add_key("jo", &key);
    fx.put_enc("jo", "same", &key, b"unchanged during the session");
    fx.put("jo", "same", b"unchanged during the session");
    let (sum, events) = fx.run(&fx.options(false));
    assert!(!sum.failed(), "{sum}");
    assert_eq!(sum.plaintext.len(), 1, "{sum}");
    let same = events.iter().find_map(|e| match e {
        Event::Superseded { same, .. } => Some(same.clone()),
        _ => None,
    });
    assert_eq!(same, Some(Ok(true)));
    assert!(sum.superseded[0].contains("same content"), "{sum}");
}
