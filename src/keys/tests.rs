//! Tests of [`UserKeys`] with the real local backend.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::kms::local::LocalKms;

/// The context every test wraps under (these backends ignore it).
fn ctx() -> WrapContext {
    WrapContext::for_user(&UserName::parse("alice").unwrap())
}

/// RSA-3072 generation is slow, so every test shares one master key
/// directory (versions 1 and 2 are generated once each). The directory lives
/// as long as the test process.
fn kms_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// A shared backend whose current version is 1.
fn kms() -> Arc<dyn KeyWrapper> {
    static KMS: OnceLock<Arc<LocalKms>> = OnceLock::new();
    KMS.get_or_init(|| Arc::new(LocalKms::new(kms_dir().to_owned(), "1".into()).unwrap()))
        .clone()
}

/// A separate backend instance over the same directory, as another process
/// would have.
fn other_kms() -> Arc<dyn KeyWrapper> {
    // Make sure version 1 exists so that instances do not generate their own.
    kms().wrap(&[0; 32], &kms().current(), &ctx()).unwrap();
    Arc::new(LocalKms::new(kms_dir().to_owned(), "1".into()).unwrap())
}

fn user(name: &str) -> UserName {
    UserName::parse(name).unwrap()
}

fn fresh() -> (tempfile::TempDir, UserKeys) {
    let dir = tempfile::tempdir().unwrap();
    let keys = UserKeys::new(dir.path().join("keks"), kms(), None).unwrap();
    (dir, keys)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn key_toml(keys: &UserKeys, name: &str) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(keys.key_file_path(&user(name))).unwrap()).unwrap()
}

#[test]
fn first_login_creates_a_wrapped_key_file() {
    let (dir, keys) = fresh();
    let keks = dir.path().join("keks");
    assert_eq!(
        std::fs::metadata(&keks).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let alice = user("alice");
    let key = keys.get_or_create(&alice).unwrap();
    let path = keys.key_file_path(&alice);
    assert_eq!(path, keks.join("alice.key"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(&hex::encode(key.expose())),
        "plaintext key in {text}"
    );
    assert!(
        !text
            .to_uppercase()
            .contains(&hex::encode_upper(key.expose()))
    );
    let raw = std::fs::read(&path).unwrap();
    assert!(!raw.windows(32).any(|w| w == key.expose()));

    let t = key_toml(&keys, "alice");
    assert_eq!(t["format"].as_integer(), Some(1));
    assert_eq!(t["user"].as_str(), Some("alice"));
    assert_eq!(t["backend"].as_str(), Some("local"));
    assert_eq!(t["secret_path"].as_str(), Some("local"));
    assert_eq!(t["secret_version"].as_str(), Some("1"));
    assert_eq!(
        hex::decode(t["wrapped_key"].as_str().unwrap())
            .unwrap()
            .len(),
        384
    );
    for field in ["created_at", "updated_at"] {
        let stamp = t[field].as_str().unwrap();
        assert!(stamp.ends_with('Z'), "{stamp}");
        humantime::parse_rfc3339(stamp).unwrap();
    }

    // The same key comes back from the cache and, after a restart, from disk.
    assert!(Arc::ptr_eq(&key, &keys.get_or_create(&alice).unwrap()));
    let restarted = UserKeys::new(keks.clone(), other_kms(), None).unwrap();
    assert_eq!(
        restarted.get_existing(&alice).unwrap().expose(),
        key.expose()
    );
    assert_eq!(
        restarted.get_or_create(&alice).unwrap().expose(),
        key.expose()
    );
    assert_eq!(keys.users().unwrap(), [alice]);
    assert_eq!(entries(&keks), ["alice.key"]);

    // Another user gets another key.
    let bob = keys.get_or_create(&user("bob")).unwrap();
    assert_ne!(bob.expose(), key.expose());
    assert_eq!(keys.users().unwrap(), [user("alice"), user("bob")]);
}

#[test]
fn get_existing_never_creates() {
    let (dir, keys) = fresh();
    match keys.get_existing(&user("nobody")) {
        Err(KeyError::NotFound(u)) => assert_eq!(u, user("nobody")),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("got a key for a user without one"),
    }
    assert!(matches!(
        keys.rewrap(&user("nobody"), &kms().current()),
        Err(KeyError::NotFound(_))
    ));
    assert!(entries(&dir.path().join("keks")).is_empty());
    assert!(keys.users().unwrap().is_empty());
}

#[test]
fn ten_concurrent_first_logins_share_one_key() {
    let (dir, keys) = fresh();
    let alice = user("alice");
    let barrier = Barrier::new(10);
    let got: Vec<Arc<DataKey>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    keys.get_or_create(&alice).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for k in &got {
        assert!(
            Arc::ptr_eq(k, &got[0]),
            "sessions must share one key in memory"
        );
    }
    assert_eq!(entries(&dir.path().join("keks")), ["alice.key"]);
}

/// Two `UserKeys` with their own backends over the same directories race as
/// two processes would: neither's per-user lock helps, only the filesystem.
#[test]
fn two_instances_racing_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let keks = dir.path().join("keks");
    let instances = [
        UserKeys::new(keks.clone(), other_kms(), None).unwrap(),
        UserKeys::new(keks.clone(), other_kms(), None).unwrap(),
    ];
    let carol = user("carol");
    let barrier = Barrier::new(10);
    let got: Vec<[u8; 32]> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let keys = &instances[i % 2];
                let (barrier, carol) = (&barrier, &carol);
                s.spawn(move || {
                    barrier.wait();
                    *keys.get_or_create(carol).unwrap().expose()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(got.iter().all(|k| *k == got[0]));
    assert_eq!(entries(&keks), ["carol.key"]);
}

const CHILD_ENV: &str = "DROPZONE_TEST_KEYS_RACE_CHILD";

/// Not a test on its own: the body of each child process of
/// [`separate_processes_racing_agree_on_one_key`].
#[test]
fn race_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split('\n');
    let (kms_dir, keks, start) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u128>().unwrap(),
    );
    let kms = Arc::new(LocalKms::new(kms_dir.into(), "1".into()).unwrap());
    let keys = UserKeys::new(keks.into(), kms, None).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    if let Some(wait) = start.checked_sub(now) {
        std::thread::sleep(Duration::from_nanos(wait as u64));
    }
    let key = keys.get_or_create(&user("dave")).unwrap();
    // libtest may have printed the test's name on the same line.
    println!("\nKEY {}", hex::encode(key.expose()));
}

#[test]
fn separate_processes_racing_agree_on_one_key() {
    const CHILDREN: usize = 4;
    let _ = other_kms(); // version 1 exists before the children start
    let dir = tempfile::tempdir().unwrap();
    let keks = dir.path().join("keks");
    let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(1);
    let spec = format!(
        "{}\n{}\n{}",
        kms_dir().display(),
        keks.display(),
        start.as_nanos()
    );
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "keys::tests::race_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &spec)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let key = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("KEY "))
            .unwrap_or_else(|| panic!("no key in child output:\n{stdout}"))
            .to_owned();
        seen.push(key);
    }
    assert!(seen.iter().all(|k| *k == seen[0]), "{seen:?}");
    assert_eq!(entries(&keks), ["dave.key"]);
    let keys = UserKeys::new(keks, kms(), None).unwrap();
    assert_eq!(
        hex::encode(keys.get_existing(&user("dave")).unwrap().expose()),
        seen[0]
    );
}

#[test]
fn tampered_or_swapped_key_files_are_errors() {
    let (dir, keys) = fresh();
    let keks = dir.path().join("keks");
    drop(keys.get_or_create(&user("alice")).unwrap());
    drop(keys.get_or_create(&user("bob")).unwrap());
    let path = keks.join("alice.key");
    let good = std::fs::read_to_string(&path).unwrap();
    let wrapped = key_toml(&keys, "alice")["wrapped_key"]
        .as_str()
        .unwrap()
        .to_owned();

    // A flipped bit in the wrapped key: the backend refuses it.
    let mut flipped = hex::decode(&wrapped).unwrap();
    flipped[100] ^= 0x20;
    std::fs::write(&path, good.replace(&wrapped, &hex::encode(&flipped))).unwrap();
    match keys.get_existing(&user("alice")) {
        Err(KeyError::Kms(KmsError::Refused(_))) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("tampered key accepted"),
    }

    // Bob's file under Alice's name is refused, whatever it holds.
    std::fs::copy(keks.join("bob.key"), &path).unwrap();
    assert!(matches!(
        keys.get_existing(&user("alice")),
        Err(KeyError::Corrupt { .. })
    ));

    // Garbage, truncation and a huge file are corrupt, not panics; get_or_create
    // does not overwrite them with a new key.
    for bad in [
        "garbage".to_owned(),
        good[..good.len() / 2].to_owned(),
        good.replace(&wrapped, &wrapped[..wrapped.len() - 1]),
        "x".repeat(1 << 20),
    ] {
        std::fs::write(&path, &bad).unwrap();
        match keys.get_or_create(&user("alice")) {
            Err(KeyError::Corrupt { path: p, .. }) => assert_eq!(p, path),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("corrupt key file accepted"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
    }

    // Restored, it works again.
    std::fs::write(&path, &good).unwrap();
    assert!(keys.get_existing(&user("alice")).is_ok());
}

#[test]
fn a_key_file_of_another_backend_is_refused() {
    let (_dir, keys) = fresh();
    drop(keys.get_or_create(&user("erin")).unwrap());
    let path = keys.key_file_path(&user("erin"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("backend = \"local\"", "backend = \"eaas\""),
    )
    .unwrap();
    for result in [
        keys.get_existing(&user("erin")),
        keys.get_or_create(&user("erin")),
    ] {
        match result {
            Err(e @ KeyError::WrongBackend { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("eaas") && msg.contains("local"), "{msg}");
                assert!(!e.is_transient());
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("key of another backend accepted"),
        }
    }
    assert!(matches!(
        keys.rewrap(&user("erin"), &kms().current()),
        Err(KeyError::WrongBackend { .. })
    ));
}

#[test]
fn the_key_is_dropped_with_the_last_session() {
    let (_dir, keys) = fresh();
    let frank = user("frank");
    let a = keys.get_or_create(&frank).unwrap();
    let b = keys.get_or_create(&frank).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let weak = Arc::downgrade(&a);
    drop(a);
    assert!(weak.upgrade().is_some(), "one session still holds it");
    drop(b);
    assert!(weak.upgrade().is_none(), "key outlived its last session");
    assert_eq!(keys.cache.live(), 0);
    // Next login unwraps it again.
    assert!(keys.get_or_create(&frank).is_ok());
}

#[test]
fn with_a_ttl_the_key_stays_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let keys = UserKeys::new(dir.path().join("k"), kms(), Some(Duration::from_secs(3600))).unwrap();
    let weak = Arc::downgrade(&keys.get_or_create(&user("gus")).unwrap());
    keys.purge_expired();
    assert!(weak.upgrade().is_some());
    assert!(Arc::ptr_eq(
        &weak.upgrade().unwrap(),
        &keys.get_existing(&user("gus")).unwrap()
    ));

    let keys = UserKeys::new(dir.path().join("k"), kms(), Some(Duration::from_millis(30))).unwrap();
    let weak = Arc::downgrade(&keys.get_or_create(&user("gus")).unwrap());
    assert!(weak.upgrade().is_some());
    std::thread::sleep(Duration::from_millis(150));
    keys.purge_expired();
    assert!(weak.upgrade().is_none());
}

#[test]
fn rewrap_keeps_the_key_and_records_the_new_version() {
    let (dir, keys) = fresh();
    let keks = dir.path().join("keks");
    let hank = user("hank");
    let before = *keys.get_or_create(&hank).unwrap().expose();
    let created = key_toml(&keys, "hank")["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let v2 = MasterKeyRef {
        secret_path: "local".into(),
        secret_version: "2".into(),
    };
    assert_eq!(
        keys.rewrap(&hank, &v2).unwrap(),
        Rewrapped::Done {
            from: kms().current()
        }
    );
    let t = key_toml(&keys, "hank");
    assert_eq!(t["secret_version"].as_str(), Some("2"));
    assert_eq!(t["created_at"].as_str(), Some(created.as_str()));
    assert_eq!(
        std::fs::metadata(keks.join("hank.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(keys.rewrap(&hank, &v2).unwrap(), Rewrapped::Already);
    assert_eq!(entries(&keks), ["hank.key"]);

    // A fresh instance (empty cache) unwraps under version 2 to the same key.
    let restarted = UserKeys::new(keks, other_kms(), None).unwrap();
    assert_eq!(*restarted.get_existing(&hank).unwrap().expose(), before);

    // Re-wrapping under a version that does not parse changes nothing.
    let bad = MasterKeyRef {
        secret_path: "local".into(),
        secret_version: "../x".into(),
    };
    assert!(matches!(
        keys.rewrap(&hank, &bad),
        Err(KeyError::Kms(KmsError::InvalidVersion(_)))
    ));
    assert_eq!(
        key_toml(&keys, "hank")["secret_version"].as_str(),
        Some("2")
    );
}

#[test]
fn users_lists_only_key_files_of_valid_names() {
    let (dir, keys) = fresh();
    let keks = dir.path().join("keks");
    drop(keys.get_or_create(&user("ivy")).unwrap());
    for junk in [".tmp-x.key.1.ab", "notes.txt", "-bad.key", ".hidden.key"] {
        std::fs::write(keks.join(junk), "x").unwrap();
    }
    std::fs::create_dir(keks.join("dir.key")).unwrap();
    assert_eq!(keys.users().unwrap(), [user("ivy")]);
}
