//! [`FileKeyStore`]: RSA key pairs in files, encrypted at rest.
//!
//! Key `path` version `V` lives in `keys_dir/<path>/v<V>.p8`: an encrypted
//! PKCS#8 PEM file (`BEGIN ENCRYPTED PRIVATE KEY`; PBES2 with scrypt and
//! AES-256-CBC, which OpenSSL reads too), mode 0600, in directories of mode
//! 0700. Files are created whole under their final name or not at all, and
//! never replaced. Keys the service did not write may be dropped in as
//! encrypted PKCS#8 PEM or DER under the same passphrase.
//!
//! Decrypted private keys are cached in memory ([`RsaPrivateKey`] zeroizes
//! its secret parts on drop).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rsa::pkcs8::der::pem::PemLabel;
use rsa::pkcs8::{
    DecodePrivateKey, EncodePrivateKey, EncryptedPrivateKeyInfoRef, LineEnding, PrivateKeyInfoRef,
};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use sha1::Sha1;
use zeroize::Zeroizing;

use super::{Generated, KeyBits, KeyStore, KeyStoreError, MIN_KEY_BITS, max_plaintext_len};
use crate::atomic_file;
use crate::eaas::passphrase::Passphrase;
use crate::eaas::secret::{KEY_FILE_SUFFIX, KeyId};
use crate::sync::lock;

/// An encrypted PEM of a 16384-bit key is about 13 KiB; anything bigger is
/// not a key file.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// Most decrypted keys kept in memory. A deployment uses a handful; the cap
/// only bounds memory if clients walk through many keys.
const MAX_CACHED_KEYS: usize = 256;
/// Directory entries examined when looking for a key to test the
/// passphrase against at start-up.
const MAX_SCAN_ENTRIES: usize = 10_000;

/// The keys under one `keys_dir`, with an in-memory cache of decrypted keys.
pub struct FileKeyStore {
    keys_dir: PathBuf,
    passphrase: Passphrase,
    bits: KeyBits,
    cache: Mutex<HashMap<KeyId, Arc<RsaPrivateKey>>>,
    /// Serialises generation in this process, so that concurrent requests
    /// for one new key spend the CPU once (files are created atomically
    /// anyway, which covers other processes).
    generate_lock: Mutex<()>,
    /// Serialises loading, so that a key is decrypted (scrypt) once.
    load_lock: Mutex<()>,
}

impl fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKeyStore")
            .field("keys_dir", &self.keys_dir)
            .field("bits", &self.bits.get())
            .finish_non_exhaustive()
    }
}

impl FileKeyStore {
    /// A store in `keys_dir` (created with mode 0700 if missing) whose new
    /// keys have `bits` bits and are encrypted with `passphrase`.
    pub fn open(
        keys_dir: PathBuf,
        passphrase: Passphrase,
        bits: KeyBits,
    ) -> Result<FileKeyStore, KeyStoreError> {
        atomic_file::create_private_dir(&keys_dir).map_err(|e| storage(&keys_dir, e))?;
        Ok(FileKeyStore {
            keys_dir,
            passphrase,
            bits,
            cache: Mutex::new(HashMap::new()),
            generate_lock: Mutex::new(()),
            load_lock: Mutex::new(()),
        })
    }

    /// The file that holds `id`.
    pub fn key_file(&self, id: &KeyId) -> PathBuf {
        self.keys_dir.join(id.relative_dir()).join(id.file_name())
    }

    /// Decrypts one existing key file, if there is any, to find out at
    /// start-up rather than at the first request that the passphrase is
    /// wrong. Returns the file it checked.
    pub fn check_passphrase(&self) -> Result<Option<PathBuf>, KeyStoreError> {
        let Some(path) = find_key_file(&self.keys_dir) else {
            return Ok(None);
        };
        match load(&path, &self.passphrase) {
            Ok(_) => Ok(Some(path)),
            Err(LoadError::Missing) => Ok(None),
            Err(LoadError::Failed(e)) => Err(e),
        }
    }

    /// The public key of `id` (for tests and tools that encrypt themselves).
    pub fn public_key(&self, id: &KeyId) -> Result<rsa::RsaPublicKey, KeyStoreError> {
        Ok(self.key(id)?.to_public_key())
    }

    /// The decrypted key `id`, from the cache or its file.
    fn key(&self, id: &KeyId) -> Result<Arc<RsaPrivateKey>, KeyStoreError> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        let _guard = lock(&self.load_lock);
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        let key = match load(&self.key_file(id), &self.passphrase) {
            Ok(key) => Arc::new(key),
            Err(LoadError::Missing) => return Err(KeyStoreError::UnknownKey(id.clone())),
            Err(LoadError::Failed(e)) => return Err(e),
        };
        self.remember(id, Arc::clone(&key));
        Ok(key)
    }

    fn cached(&self, id: &KeyId) -> Option<Arc<RsaPrivateKey>> {
        lock(&self.cache).get(id).cloned()
    }

    fn remember(&self, id: &KeyId, key: Arc<RsaPrivateKey>) {
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED_KEYS
            && !cache.contains_key(id)
            && let Some(evict) = cache.keys().next().cloned()
        {
            cache.remove(&evict);
        }
        cache.insert(id.clone(), key);
    }
}

impl KeyStore for FileKeyStore {
    /// Concurrent calls, in this process or others sharing `keys_dir`,
    /// create one key between them.
    fn generate(&self, id: &KeyId) -> Result<Generated, KeyStoreError> {
        let path = self.key_file(id);
        let _guard = lock(&self.generate_lock);
        if exists(&path)? {
            return Ok(Generated::Existed);
        }
        let dir = self.keys_dir.join(id.relative_dir());
        atomic_file::create_private_dir(&dir).map_err(|e| storage(&dir, e))?;
        atomic_file::remove_stale_temps(&dir, atomic_file::STALE_TEMP_AGE);
        tracing::info!(key = %id, bits = self.bits.get(), "generating RSA key");
        let key = RsaPrivateKey::new(&mut rand::rng(), self.bits.get())
            .map_err(|e| KeyStoreError::Crypto(format!("key generation failed: {e}")))?;
        let pem = encrypt_pem(&key, &self.passphrase)?;
        let created = atomic_file::create_new(&dir, &id.file_name(), pem.as_bytes())
            .map_err(|e| storage(&path, e))?;
        if !created {
            // Another process created it first; its key is the key.
            return Ok(Generated::Existed);
        }
        self.remember(id, Arc::new(key));
        Ok(Generated::Created)
    }

    fn encrypt(&self, id: &KeyId, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let key = self.key(id)?;
        let max = max_plaintext_len(key.size());
        if plaintext.len() > max {
            return Err(KeyStoreError::PlaintextTooLong {
                key: id.clone(),
                len: plaintext.len(),
                max,
                bits: key.size() * 8,
            });
        }
        key.as_public_key()
            .encrypt(&mut rand::rng(), Oaep::<Sha1>::new(), plaintext)
            .map_err(|e| KeyStoreError::Crypto(format!("encryption under {id}: {e}")))
    }

    fn decrypt(&self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let key = self.key(id)?;
        if ciphertext.len() != key.size() {
            return Err(KeyStoreError::DecryptionFailed(id.clone()));
        }
        key.decrypt_blinded(&mut rand::rng(), Oaep::<Sha1>::new(), ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| KeyStoreError::DecryptionFailed(id.clone()))
    }

    fn describe(&self) -> String {
        format!("key files in {}", self.keys_dir.display())
    }
}

/// Encrypted PKCS#8 PEM of `key` (PBES2: scrypt, AES-256-CBC).
fn encrypt_pem(
    key: &RsaPrivateKey,
    passphrase: &Passphrase,
) -> Result<Zeroizing<String>, KeyStoreError> {
    let failed = |e: &dyn fmt::Display| KeyStoreError::Crypto(format!("encoding the key: {e}"));
    let der = key.to_pkcs8_der().map_err(|e| failed(&e))?;
    let info = PrivateKeyInfoRef::try_from(der.as_bytes()).map_err(|e| failed(&e))?;
    let encrypted = info
        .encrypt_with_rng(&mut rand::rng(), passphrase.as_bytes())
        .map_err(|e| failed(&e))?;
    encrypted
        .to_pem(EncryptedPrivateKeyInfoRef::PEM_LABEL, LineEnding::LF)
        .map_err(|e| failed(&e))
}

fn exists(path: &Path) -> Result<bool, KeyStoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        // A path component that is a file, not a directory.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(false),
        Err(e) => Err(storage(path, e)),
    }
}

fn storage(path: &Path, e: io::Error) -> KeyStoreError {
    KeyStoreError::Storage(format!("{}: {e}", path.display()))
}

enum LoadError {
    Missing,
    Failed(KeyStoreError),
}

/// Reads and decrypts one key file.
fn load(path: &Path, passphrase: &Passphrase) -> Result<RsaPrivateKey, LoadError> {
    let bytes = match atomic_file::read_small(path, MAX_KEY_FILE_LEN) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Err(LoadError::Missing),
        Err(e) => return Err(LoadError::Failed(storage(path, e))),
    };
    let bad = |why: &str| {
        LoadError::Failed(KeyStoreError::BadKeyFile {
            path: path.to_owned(),
            why: why.to_owned(),
        })
    };
    // Parse errors may describe the contents; keep only what kind of failure.
    let key = if bytes.starts_with(b"-----BEGIN ") {
        let pem = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8 PEM"))?;
        if !pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(bad(
                "not an encrypted PKCS#8 key (BEGIN ENCRYPTED PRIVATE KEY); \
                 plaintext keys are refused",
            ));
        }
        RsaPrivateKey::from_pkcs8_encrypted_pem(pem, passphrase.as_bytes())
    } else {
        RsaPrivateKey::from_pkcs8_encrypted_der(&bytes, passphrase.as_bytes())
    }
    .map_err(|_| {
        bad("does not decrypt with the configured passphrase (wrong passphrase, or not an encrypted PKCS#8 RSA key)")
    })?;
    let bits = key.size() * 8;
    if bits < MIN_KEY_BITS {
        return Err(bad(&format!(
            "{bits}-bit key, at least {MIN_KEY_BITS} required"
        )));
    }
    Ok(key)
}

/// The first key file under `dir` (depth first, bounded), if any.
fn find_key_file(dir: &Path) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_SCAN_ENTRIES {
                return None;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() && name.ends_with(KEY_FILE_SUFFIX) => {
                    return Some(entry.path());
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eaas::secret::{SecretPath, SecretVersion};
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn id(path: &str, version: &str) -> KeyId {
        KeyId {
            path: SecretPath::parse(path).unwrap(),
            version: SecretVersion::parse(version).unwrap(),
        }
    }

    fn store(dir: &Path, passphrase: &[u8]) -> FileKeyStore {
        FileKeyStore::open(
            dir.join("keys"),
            Passphrase::from_value(passphrase, "test").unwrap(),
            KeyBits::DEFAULT,
        )
        .unwrap()
    }

    /// One key generation covers the round trip, the file at rest,
    /// persistence, interop with an independent OAEP encryption, and tamper.
    #[test]
    fn round_trip_at_rest_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), b"correct horse battery staple");
        let key = id("dropzone/rsa", "1");
        assert!(matches!(
            store.encrypt(&key, b"x"),
            Err(KeyStoreError::UnknownKey(_))
        ));
        assert_eq!(store.check_passphrase().unwrap(), None);
        assert_eq!(store.generate(&key).unwrap(), Generated::Created);
        assert_eq!(store.generate(&key).unwrap(), Generated::Existed);

        // At rest: encrypted PKCS#8, 0600 in 0700 directories.
        let file = store.key_file(&key);
        assert_eq!(file, dir.path().join("keys/dropzone/rsa/v1.p8"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"));
        assert!(text.contains("ENCRYPTED"));
        assert!(!text.contains("BEGIN PRIVATE KEY"));
        assert!(!text.contains("BEGIN RSA PRIVATE KEY"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir.path().join("keys/dropzone")), 0o700);
        assert_eq!(mode(&dir.path().join("keys/dropzone/rsa")), 0o700);

        // Round trip; OAEP is randomised; 214 bytes fit RSA-2048, 215 do not.
        let dek = "0123456789abcdef".repeat(4);
        let c1 = store.encrypt(&key, dek.as_bytes()).unwrap();
        let c2 = store.encrypt(&key, dek.as_bytes()).unwrap();
        assert_eq!(c1.len(), 256);
        assert_ne!(c1, c2);
        assert_eq!(&**store.decrypt(&key, &c1).unwrap(), dek.as_bytes());
        assert_eq!(&**store.decrypt(&key, &c2).unwrap(), dek.as_bytes());
        assert!(store.encrypt(&key, &[b'a'; 214]).is_ok());
        assert!(store.encrypt(&key, b"").is_ok());
        match store.encrypt(&key, &[b'a'; 215]) {
            Err(KeyStoreError::PlaintextTooLong { len, max, .. }) => {
                assert_eq!((len, max), (215, 214));
            }
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }

        // An independent OAEP-SHA1 encryption (the rsa crate's public-key
        // API with SHA-1 for digest and MGF1, as a client of the original
        // would use) decrypts through the service's code.
        let public = store.public_key(&key).unwrap();
        let theirs = public
            .encrypt(&mut rand::rng(), Oaep::<Sha1>::new(), b"from elsewhere")
            .unwrap();
        assert_eq!(&**store.decrypt(&key, &theirs).unwrap(), b"from elsewhere");
        // ... and the service's ciphertext is not SHA-256 OAEP.
        let private = store.key(&key).unwrap();
        assert!(private.decrypt(Oaep::<sha2::Sha256>::new(), &c1).is_err());

        // Every flipped bit, and a wrong length, is refused.
        for i in [0, 1, 128, 255] {
            let mut bad = c1.clone();
            bad[i] ^= 0x01;
            assert!(matches!(
                store.decrypt(&key, &bad),
                Err(KeyStoreError::DecryptionFailed(_))
            ));
        }
        assert!(store.decrypt(&key, &c1[1..]).is_err());
        assert!(store.decrypt(&key, &[]).is_err());
        assert!(matches!(
            store.decrypt(&id("dropzone/rsa", "2"), &c1),
            Err(KeyStoreError::UnknownKey(_))
        ));

        // A restart with the same passphrase reads the key back; with
        // another passphrase it refuses at start-up.
        let again = self::store(dir.path(), b"correct horse battery staple");
        assert_eq!(again.check_passphrase().unwrap(), Some(file.clone()));
        assert_eq!(&**again.decrypt(&key, &c1).unwrap(), dek.as_bytes());
        let wrong = self::store(dir.path(), b"wrong");
        assert!(matches!(
            wrong.check_passphrase(),
            Err(KeyStoreError::BadKeyFile { .. })
        ));
        assert!(matches!(
            wrong.decrypt(&key, &c1),
            Err(KeyStoreError::BadKeyFile { .. })
        ));

        // A plaintext key dropped in is refused, not used.
        let plain_dir = dir.path().join("keys/plain");
        std::fs::create_dir_all(&plain_dir).unwrap();
        std::fs::write(
            plain_dir.join("v1.p8"),
            private.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        match store.encrypt(&id("plain", "1"), b"x") {
            Err(KeyStoreError::BadKeyFile { why, .. }) => assert!(why.contains("plaintext")),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
    }

    /// Stores sharing a directory (as separate processes do) race to create
    /// one key: exactly one reports Created and all use the same key.
    #[test]
    fn concurrent_generation_creates_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<FileKeyStore> = (0..4).map(|_| store(dir.path(), b"pw-pw-pw")).collect();
        let key = id("race", "3");
        let barrier = std::sync::Barrier::new(stores.len() * 2);
        let results: Vec<Generated> = std::thread::scope(|s| {
            let handles: Vec<_> = stores
                .iter()
                .chain(stores.iter())
                .map(|st| {
                    let (barrier, key) = (&barrier, &key);
                    s.spawn(move || {
                        barrier.wait();
                        st.generate(key).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            results.iter().filter(|&&g| g == Generated::Created).count(),
            1,
            "{results:?}"
        );
        let c = stores[0].encrypt(&key, b"shared").unwrap();
        for st in &stores {
            assert_eq!(&**st.decrypt(&key, &c).unwrap(), b"shared");
        }
        let names: Vec<String> = std::fs::read_dir(dir.path().join("keys/race"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["v3.p8"]);
    }
}
