//! The local backend: RSA master keys in PEM files on this host.
//!
//! Version `V` of the master key lives in `<key_dir>/master-v<V>.pem`
//! (PKCS#8 PEM, mode 0600). A version is generated the first time a key is
//! wrapped under it; unwrapping under a version whose file is missing is an
//! error. Data keys are wrapped with RSA-OAEP (SHA-256 for both the digest and
//! MGF1, empty label).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{KeyWrapper, KmsError, MasterKeyRef, WrapContext};
use crate::atomic_file;
use crate::sync::lock;

/// The `secret_path` of every local master key.
pub const SECRET_PATH: &str = "local";
/// The backend name recorded in key files.
pub const BACKEND: &str = "local";
/// Size of generated master keys: 3072 bits gives about 128-bit security
/// (NIST SP 800-57 part 1, table 2).
pub const KEY_BITS: usize = 3072;
/// Smallest key accepted from a file an operator supplied.
const MIN_KEY_BITS: usize = 2048;
/// A PEM of a 16384-bit key is about 13 KiB; anything bigger is not a key.
const MAX_PEM_LEN: u64 = 64 * 1024;

/// RSA-3072 master keys in `key_dir`, loaded lazily and cached in memory.
///
/// The cached [`RsaPrivateKey`] values zeroize their secret parts on drop.
pub struct LocalKms {
    key_dir: PathBuf,
    current: MasterKeyRef,
    /// Loaded keys by version.
    keys: Mutex<HashMap<String, Arc<RsaPrivateKey>>>,
    /// Serialises loading and generation in this process, so that
    /// concurrent first uses generate one key, not one each.
    load: Mutex<()>,
}

impl fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKms")
            .field("key_dir", &self.key_dir)
            .field("current", &self.current.secret_version)
            .finish_non_exhaustive()
    }
}

impl LocalKms {
    /// A local backend keeping its keys in `key_dir` (created with mode 0700
    /// if missing) that wraps new keys under version `secret_version`.
    pub fn new(key_dir: PathBuf, secret_version: String) -> Result<Self, KmsError> {
        super::version::check(&secret_version)?;
        atomic_file::create_private_dir(&key_dir).map_err(|e| io_error(&key_dir, e))?;
        atomic_file::remove_stale_temps(&key_dir, atomic_file::STALE_TEMP_AGE);
        Ok(LocalKms {
            key_dir,
            current: MasterKeyRef {
                secret_path: SECRET_PATH.to_owned(),
                secret_version,
            },
            keys: Mutex::new(HashMap::new()),
            load: Mutex::new(()),
        })
    }

    /// The file holding master key version `version`.
    pub fn key_file_path(&self, version: &str) -> PathBuf {
        self.key_dir.join(file_name(version))
    }

    /// The key for `under`, from memory, disk, or (if `create`) newly
    /// generated.
    fn key(&self, under: &MasterKeyRef, create: bool) -> Result<Arc<RsaPrivateKey>, KmsError> {
        if under.secret_path != SECRET_PATH {
            return Err(KmsError::Refused(format!(
                "unknown secret path {:?}: the local backend has only {SECRET_PATH:?}",
                under.secret_path
            )));
        }
        let version = under.secret_version.as_str();
        super::version::check(version)?;
        if let Some(key) = self.cached(version) {
            return Ok(key);
        }
        let _guard = lock(&self.load);
        if let Some(key) = self.cached(version) {
            return Ok(key);
        }
        let path = self.key_file_path(version);
        let key = match load(&path) {
            Ok(key) => key,
            Err(LoadError::Missing) if create => self.generate(version)?,
            Err(LoadError::Missing) => {
                return Err(KmsError::Refused(format!(
                    "local master key version {version} does not exist: {} is missing",
                    path.display()
                )));
            }
            Err(LoadError::Failed(e)) => return Err(e),
        };
        let key = Arc::new(key);
        lock(&self.keys).insert(version.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    fn cached(&self, version: &str) -> Option<Arc<RsaPrivateKey>> {
        lock(&self.keys).get(version).cloned()
    }

    /// Generates version `version` and stores it, unless another process
    /// stored one first, in which case that one is loaded and returned.
    fn generate(&self, version: &str) -> Result<RsaPrivateKey, KmsError> {
        let path = self.key_file_path(version);
        tracing::info!(file = %path.display(), bits = KEY_BITS, "generating local master key");
        let key = RsaPrivateKey::new(&mut rand::rng(), KEY_BITS)
            .map_err(|e| KmsError::Unavailable(format!("RSA key generation failed: {e}")))?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KmsError::Unavailable(format!("encoding the new master key: {e}")))?;
        let created = atomic_file::create_new(&self.key_dir, &file_name(version), pem.as_bytes())
            .map_err(|e| io_error(&path, e))?;
        if created {
            return Ok(key);
        }
        // Another process won the race; everyone must use its key.
        drop(key);
        match load(&path) {
            Ok(key) => Ok(key),
            Err(LoadError::Missing) => Err(KmsError::Unavailable(format!(
                "{} vanished right after it was created",
                path.display()
            ))),
            Err(LoadError::Failed(e)) => Err(e),
        }
    }
}

impl KeyWrapper for LocalKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn current(&self) -> MasterKeyRef {
        self.current.clone()
    }

    /// Loads the key file, generating it if it is missing.
    fn ensure_master_key(&self, under: &MasterKeyRef) -> Result<(), KmsError> {
        self.key(under, true).map(drop)
    }

    /// RSA-OAEP has no room for `_ctx` here (a label would break the files
    /// written so far); key files carry their user instead.
    fn wrap(
        &self,
        key: &[u8; 32],
        under: &MasterKeyRef,
        _ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        let private = self.key(under, true)?;
        private
            .as_public_key()
            .encrypt(&mut rand::rng(), Oaep::<Sha256>::new(), key)
            .map_err(|e| KmsError::Refused(format!("wrapping under local {under}: {e}")))
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
        under: &MasterKeyRef,
        _ctx: &WrapContext,
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let private = self.key(under, false)?;
        let refused = || {
            KmsError::Refused(format!(
                "the wrapped key does not unwrap under local master key {under} \
                 (corrupt, or wrapped under another key)"
            ))
        };
        if wrapped.len() != private.size() {
            return Err(refused());
        }
        let plain = Zeroizing::new(
            private
                .decrypt_blinded(&mut rand::rng(), Oaep::<Sha256>::new(), wrapped)
                .map_err(|_| refused())?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != out.len() {
            return Err(refused());
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }
}

/// Accepts 1 to 9 decimal digits, so the version is safe in a file name.
fn file_name(version: &str) -> String {
    format!("master-v{version}.pem")
}

fn io_error(path: &Path, e: io::Error) -> KmsError {
    KmsError::Unavailable(format!("{}: {e}", path.display()))
}

enum LoadError {
    Missing,
    Failed(KmsError),
}

fn load(path: &Path) -> Result<RsaPrivateKey, LoadError> {
    let bytes = match atomic_file::read_small(path, MAX_PEM_LEN) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) => return Err(LoadError::Failed(io_error(path, e))),
    };
    let invalid = |why: &str| {
        LoadError::Failed(KmsError::Refused(format!(
            "{} is not a usable master key: {why}",
            path.display()
        )))
    };
    let pem = std::str::from_utf8(&bytes).map_err(|_| invalid("not UTF-8 PEM"))?;
    // The parse error may describe the key's contents; keep only its kind.
    let key = RsaPrivateKey::from_pkcs8_pem(pem)
        .map_err(|_| invalid("not a PKCS#8 PEM RSA private key"))?;
    let bits = key.size() * 8;
    if bits < MIN_KEY_BITS {
        return Err(invalid(&format!(
            "{bits}-bit key, at least {MIN_KEY_BITS} required"
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The context every test wraps under (these backends ignore it).
    fn ctx() -> WrapContext {
        WrapContext::for_user(&crate::username::UserName::parse("alice").unwrap())
    }

    fn version(v: &str) -> MasterKeyRef {
        MasterKeyRef {
            secret_path: SECRET_PATH.into(),
            secret_version: v.into(),
        }
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// One key generation covers round trip, persistence, modes and tamper.
    #[test]
    fn round_trip_persistence_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let key_dir = dir.path().join("kms");
        let kms = LocalKms::new(key_dir.clone(), "1".into()).unwrap();
        assert_eq!(kms.backend(), "local");
        assert_eq!(kms.current(), version("1"));
        let mode = std::fs::metadata(&key_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let dek = [7u8; 32];
        let wrapped = kms.wrap(&dek, &kms.current(), &ctx()).unwrap();
        assert_eq!(wrapped.len(), KEY_BITS / 8);
        assert_ne!(&wrapped[..32], &dek[..]);
        assert_eq!(*kms.unwrap(&wrapped, &version("1"), &ctx()).unwrap(), dek);
        // OAEP is randomised.
        assert_ne!(kms.wrap(&dek, &version("1"), &ctx()).unwrap(), wrapped);

        let file = kms.key_file_path("1");
        assert_eq!(file, key_dir.join("master-v1.pem"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert_eq!(dir_entries(&key_dir), ["master-v1.pem"]);

        // A second instance (a restart) loads the same key from disk.
        let again = LocalKms::new(key_dir.clone(), "1".into()).unwrap();
        assert_eq!(*again.unwrap(&wrapped, &version("1"), &ctx()).unwrap(), dek);

        // Every flipped bit is refused, never a panic or a wrong key.
        for i in [0, 1, wrapped.len() / 2, wrapped.len() - 1] {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x01;
            assert!(matches!(
                kms.unwrap(&bad, &version("1"), &ctx()),
                Err(KmsError::Refused(_))
            ));
        }
        assert!(matches!(
            kms.unwrap(&wrapped[1..], &version("1"), &ctx()),
            Err(KmsError::Refused(_))
        ));
        assert!(matches!(
            kms.unwrap(&[], &version("1"), &ctx()),
            Err(KmsError::Refused(_))
        ));

        // Unknown secret path and bad versions are refused without touching disk.
        let other = MasterKeyRef {
            secret_path: "vault/x".into(),
            secret_version: "1".into(),
        };
        assert!(matches!(
            kms.unwrap(&wrapped, &other, &ctx()),
            Err(KmsError::Refused(_))
        ));
        for v in ["", "x", "1.0", "../1", "1234567890", "-1"] {
            assert!(
                matches!(
                    kms.wrap(&dek, &version(v), &ctx()),
                    Err(KmsError::InvalidVersion(_))
                ),
                "{v}"
            );
        }
        assert_eq!(dir_entries(&key_dir), ["master-v1.pem"]);
    }

    #[test]
    fn unwrap_under_a_missing_version_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let kms = LocalKms::new(dir.path().to_owned(), "1".into()).unwrap();
        match kms.unwrap(&[0u8; 384], &version("5"), &ctx()) {
            Err(KmsError::Refused(msg)) => assert!(msg.contains("master-v5.pem"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("unwrapped under a missing key"),
        }
        // Unwrap never creates a key.
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn bad_versions_and_bad_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            LocalKms::new(dir.path().to_owned(), "v1".into()),
            Err(KmsError::InvalidVersion(_))
        ));
        std::fs::write(dir.path().join("master-v3.pem"), "not a key").unwrap();
        let kms = LocalKms::new(dir.path().to_owned(), "3".into()).unwrap();
        match kms.wrap(&[0; 32], &version("3"), &ctx()) {
            Err(KmsError::Refused(msg)) => assert!(msg.contains("master-v3.pem"), "{msg}"),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
    }

    /// Instances that share a directory (as separate processes do) and race
    /// to create the same version end up with one key that all of them use.
    #[test]
    fn concurrent_creation_yields_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let instances: Vec<LocalKms> = (0..3)
            .map(|_| LocalKms::new(dir.path().to_owned(), "1".into()).unwrap())
            .collect();
        let barrier = std::sync::Barrier::new(instances.len());
        let wrapped: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = instances
                .iter()
                .enumerate()
                .map(|(i, kms)| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        kms.wrap(&[i as u8; 32], &version("1"), &ctx()).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for kms in &instances {
            for (i, w) in wrapped.iter().enumerate() {
                assert_eq!(
                    *kms.unwrap(w, &version("1"), &ctx()).unwrap(),
                    [i as u8; 32]
                );
            }
        }
        assert_eq!(dir_entries(dir.path()), ["master-v1.pem"]);
    }
}
