//! Per-user data keys: creation, wrapped key files, and the in-memory cache.
//!
//! Each user has one 32-byte data key (DEK), created from the OS CSPRNG at
//! the first login and stored only wrapped by a master key
//! ([`crate::kms::KeyWrapper`]), in `<keks_dir>/<NAME>.key`, or the object
//! `PREFIX/keks/NAME.key` of an S3 bucket (format in [`key_file`]; where, in
//! [`key_store`]). Unwrapped keys live only in memory, shared by the user's
//! sessions and zeroized after the last one ends.
//!
//! Creation is race-free across threads, processes and nodes: the new file
//! is created only if none exists (a link into place locally, a PUT with
//! `If-None-Match: *` on S3); the loser discards its key and uses the
//! winner's. Replacements (rotation, migration) on S3 are conditional on the
//! version read (`If-Match`).

mod cache;
mod data_key;
pub mod key_file;
pub mod key_store;
pub mod migrate;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use subtle::ConstantTimeEq;

pub use data_key::{DATA_KEY_LEN, DataKey};
pub use migrate::Migrated;

use crate::kms::{KeyWrapper, KmsError, MasterKeyRef, WrapContext};
use crate::sync::lock;
use crate::username::UserName;
use cache::KeyCache;
use key_file::{KeyRecord, Wrapping};
use key_store::{KeyFiles, LocalKeyFiles};

/// Why a user's data key could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key service failed or refused (see [`KmsError::is_transient`]).
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// Reading or writing a key file or the key directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A key file exists but cannot be used as it is.
    #[error("key file {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The user has no data key (only from [`UserKeys::get_existing`] and
    /// [`UserKeys::rewrap`], which never create one).
    #[error("user {0} has no data key")]
    NotFound(UserName),
    /// The key file was wrapped by a different backend than the configured one.
    #[error(
        "key file {} was wrapped by backend {file_backend:?}, but the configured backend is {configured:?}",
        path.display()
    )]
    WrongBackend {
        /// The key file.
        path: PathBuf,
        /// The backends the file has wrappings by.
        file_backend: String,
        /// The configured backend.
        configured: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("cannot generate a data key: OS random number generator failed: {0}")]
    Random(String),
}

impl KeyError {
    /// Whether retrying later may succeed (key service down, I/O error).
    pub fn is_transient(&self) -> bool {
        match self {
            KeyError::Kms(e) => e.is_transient(),
            KeyError::Io { .. } | KeyError::Random(_) => true,
            KeyError::Corrupt { .. } | KeyError::NotFound(_) | KeyError::WrongBackend { .. } => {
                false
            }
        }
    }
}

/// What [`UserKeys::rewrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrapped {
    /// The key was re-wrapped; it had been wrapped under `from`.
    Done {
        /// The master key it was wrapped under before.
        from: MasterKeyRef,
    },
    /// The key was already wrapped under the requested master key.
    Already,
}

/// The wrapped-key files (in `keks_dir` or a bucket) plus the in-memory
/// cache of unwrapped keys.
///
/// All methods block (file I/O, key service calls): async callers use
/// `spawn_blocking`.
pub struct UserKeys {
    files: Arc<dyn KeyFiles>,
    wrapper: Arc<dyn KeyWrapper>,
    cache: KeyCache,
    /// One lock per user with an operation in progress, so that concurrent
    /// logins of one user in this process do one unwrap (or one creation).
    locks: Mutex<HashMap<UserName, Arc<Mutex<()>>>>,
}

impl fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeys")
            .field("files", &self.files)
            .field("backend", &self.wrapper.backend())
            .finish_non_exhaustive()
    }
}

impl UserKeys {
    /// Key files in `keks_dir` (created with mode 0700 if missing), wrapped
    /// by `wrapper`. With `cache_ttl`, an unwrapped key stays in memory for
    /// that long after it was last fetched, even with no session holding it.
    pub fn new(
        keks_dir: PathBuf,
        wrapper: Arc<dyn KeyWrapper>,
        cache_ttl: Option<Duration>,
    ) -> Result<Self, KeyError> {
        let files = LocalKeyFiles::open(keks_dir.clone()).map_err(|source| KeyError::Io {
            path: keks_dir,
            source,
        })?;
        Ok(Self::with_files(Arc::new(files), wrapper, cache_ttl))
    }

    /// Key files kept in `files` (e.g. [`key_store::S3KeyFiles`]), wrapped
    /// by `wrapper`; `cache_ttl` as for [`UserKeys::new`].
    pub fn with_files(
        files: Arc<dyn KeyFiles>,
        wrapper: Arc<dyn KeyWrapper>,
        cache_ttl: Option<Duration>,
    ) -> Self {
        UserKeys {
            files,
            wrapper,
            cache: KeyCache::new(cache_ttl),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// For a login: the user's key, created on first use (32 random bytes,
    /// wrapped under the wrapper's current master key).
    pub fn get_or_create(&self, user: &UserName) -> Result<Arc<DataKey>, KeyError> {
        self.fetch(user, true)
    }

    /// For offline tools (verify, decrypt): the user's existing key;
    /// [`KeyError::NotFound`] if the user has none. Never creates a key.
    pub fn get_existing(&self, user: &UserName) -> Result<Arc<DataKey>, KeyError> {
        self.fetch(user, false)
    }

    /// The local directory of the wrapped-key files (the quota usage
    /// records, [`crate`]'s `quota` module, are kept there too); `None`
    /// when the key files are in a bucket.
    pub fn keks_dir(&self) -> Option<&Path> {
        self.files.local_dir()
    }

    /// Users that have a key file, sorted.
    pub fn users(&self) -> Result<Vec<UserName>, KeyError> {
        let names = self.files.names().map_err(|source| KeyError::Io {
            path: self.files.location(""),
            source,
        })?;
        let mut users: Vec<UserName> = names
            .iter()
            .filter_map(|n| n.strip_suffix(KEY_FILE_SUFFIX))
            .filter_map(|stem| UserName::parse(stem).ok())
            .collect();
        users.sort();
        Ok(users)
    }

    /// Whether the user has a key file (an existing user, for imports).
    pub fn has_key(&self, user: &UserName) -> Result<bool, KeyError> {
        Ok(self.read_record(user)?.is_some())
    }

    /// Re-wraps the user's key under `to`, replacing the key file atomically
    /// (for a rotation of the master key). A key already wrapped under `to`
    /// is left alone, so a rotation can be run again to finish or check one.
    ///
    /// The backend re-wraps ([`KeyWrapper::rewrap`]: Vault does it without
    /// the key leaving it). The new wrapping is then unwrapped and compared
    /// with the old one's key before it replaces the file, so a failure at
    /// any point leaves the user's key readable.
    pub fn rewrap(&self, user: &UserName, to: &MasterKeyRef) -> Result<Rewrapped, KeyError> {
        self.with_user_lock(user, || {
            let path = self.key_file_path(user);
            let (record, version) = self
                .read_record(user)?
                .ok_or_else(|| KeyError::NotFound(user.clone()))?;
            // The configured backend's wrapping, primary or not (during a
            // migration between backends); the others are kept as they are.
            let backend = self.wrapper.backend();
            let current = record.wrapping_for(backend);
            if current.as_ref().is_some_and(|w| w.master == *to) {
                return Ok(Rewrapped::Already);
            }
            let key = self.unwrap_record(&path, &record)?;
            let Some(current) = current else {
                return Err(self.wrong_backend(&path, &record));
            };
            let ctx = WrapContext::for_user(user);
            let wrapped = self
                .wrapper
                .rewrap(&current.wrapped, &current.master, to, &ctx)?;
            let check = self.wrapper.unwrap(&wrapped, to, &ctx)?;
            if !bool::from(check.ct_eq(key.expose())) {
                return Err(KeyError::Kms(KmsError::Refused(format!(
                    "re-wrapping under {to} did not give back the same key"
                ))));
            }
            let new = record.with_wrapping(Wrapping {
                backend: backend.to_owned(),
                master: to.clone(),
                wrapped,
            });
            self.write(user, &new, Write::Replace(version))?;
            tracing::info!(user = %user, from = %current.master, to = %to, "re-wrapped data key");
            Ok(Rewrapped::Done {
                from: current.master,
            })
        })
    }

    /// Drops cached keys whose TTL has passed and that no session holds.
    /// Expiry also happens on every fetch; call this periodically so that an
    /// idle server does not keep keys past their TTL.
    pub fn purge_expired(&self) {
        self.cache.purge_expired();
    }

    /// The user's key file: `<keks_dir>/<NAME>.key` (or its `s3://` address).
    pub fn key_file_path(&self, user: &UserName) -> PathBuf {
        self.files.location(&key_file_name(user))
    }

    fn fetch(&self, user: &UserName, create: bool) -> Result<Arc<DataKey>, KeyError> {
        if let Some(key) = self.cache.get(user) {
            return Ok(key);
        }
        self.with_user_lock(user, || {
            // Another thread may have loaded it while we waited.
            if let Some(key) = self.cache.get(user) {
                return Ok(key);
            }
            let key = match self.read_record(user)? {
                Some((record, _)) => self.unwrap_record(&self.key_file_path(user), &record)?,
                None if create => self.create(user)?,
                None => return Err(KeyError::NotFound(user.clone())),
            };
            Ok(self.cache.insert(user, key))
        })
    }

    /// Creates the user's key, or, if another process created it first,
    /// returns that one.
    fn create(&self, user: &UserName) -> Result<DataKey, KeyError> {
        let key = DataKey::random().map_err(|e| KeyError::Random(e.to_string()))?;
        let (wrapped, master) = self
            .wrapper
            .wrap_new(key.expose(), &WrapContext::for_user(user))?;
        let record = KeyRecord::new(user.clone(), self.wrapper.backend(), master, wrapped);
        if self.write(user, &record, Write::CreateNew)? {
            tracing::info!(user = %user, master = %record.master, "created data key");
            return Ok(key);
        }
        drop(key);
        let path = self.key_file_path(user);
        match self.read_record(user)? {
            Some((existing, _)) => self.unwrap_record(&path, &existing),
            None => Err(KeyError::Io {
                path,
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "key file vanished right after another process created it",
                ),
            }),
        }
    }

    /// Reads and parses the user's key file, with the version it was read
    /// at (for a conditional replacement); `None` if there is none.
    fn read_record(
        &self,
        user: &UserName,
    ) -> Result<Option<(KeyRecord, Option<String>)>, KeyError> {
        let path = self.key_file_path(user);
        let stored = match self
            .files
            .read(&key_file_name(user), key_file::MAX_FILE_LEN)
        {
            Ok(Some(stored)) => stored,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(KeyError::Corrupt {
                    path,
                    reason: e.to_string(),
                });
            }
            Err(source) => return Err(KeyError::Io { path, source }),
        };
        let corrupt = |reason: String| KeyError::Corrupt {
            path: path.clone(),
            reason,
        };
        let text = String::from_utf8(stored.bytes).map_err(|_| corrupt("not UTF-8".into()))?;
        let record = KeyRecord::parse(&text, user).map_err(corrupt)?;
        Ok(Some((record, stored.version)))
    }

    /// Unwraps the key with the configured backend's wrapping in the file
    /// (the primary one, or another during a migration between backends).
    fn unwrap_record(&self, path: &Path, record: &KeyRecord) -> Result<DataKey, KeyError> {
        let Some(wrapping) = record.wrapping_for(self.wrapper.backend()) else {
            return Err(self.wrong_backend(path, record));
        };
        let bytes = self
            .wrapper
            .unwrap(
                &wrapping.wrapped,
                &wrapping.master,
                &WrapContext::for_user(&record.user),
            )
            .inspect_err(|e| {
                tracing::warn!(file = %path.display(), error = %e, "cannot unwrap data key");
            })?;
        Ok(DataKey::copy_from(&bytes))
    }

    /// The file has no wrapping by the configured backend.
    fn wrong_backend(&self, path: &Path, record: &KeyRecord) -> KeyError {
        KeyError::WrongBackend {
            path: path.to_owned(),
            file_backend: record.backends().join(", "),
            configured: self.wrapper.backend(),
        }
    }

    /// Writes the user's key file; returns whether it was written (always
    /// true for `Replace`; false for `CreateNew` if the file already existed).
    /// A `Replace` whose file changed since it was read (another node) fails.
    fn write(&self, user: &UserName, record: &KeyRecord, how: Write) -> Result<bool, KeyError> {
        let path = self.key_file_path(user);
        let io_err = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let text = record.to_toml().map_err(|e| io_err(io::Error::other(e)))?;
        let name = key_file_name(user);
        match how {
            Write::CreateNew => self
                .files
                .create_new(&name, text.as_bytes())
                .map_err(io_err),
            Write::Replace(version) => self
                .files
                .replace(&name, text.as_bytes(), version.as_deref())
                .map(|()| true)
                .map_err(io_err),
        }
    }

    /// Runs `f` holding the user's lock.
    fn with_user_lock<T>(&self, user: &UserName, f: impl FnOnce() -> T) -> T {
        let user_lock = {
            let mut locks = lock(&self.locks);
            Arc::clone(locks.entry(user.clone()).or_default())
        };
        let result = {
            // The lock guards no data, so a poisoned one is as good as any.
            let _guard = lock(&user_lock);
            f()
        };
        let mut locks = lock(&self.locks);
        // Clones are taken only under `locks`, so a count of 2 (the map's and
        // ours) means no other thread is using or waiting for this lock.
        if Arc::strong_count(&user_lock) == 2 {
            locks.remove(user);
        }
        result
    }
}

/// Suffix of key file names.
const KEY_FILE_SUFFIX: &str = ".key";

fn key_file_name(user: &UserName) -> String {
    format!("{}{KEY_FILE_SUFFIX}", user.as_str())
}

/// How [`UserKeys::write`] writes a key file.
enum Write {
    /// Only if there is none yet.
    CreateNew,
    /// Over the file read at this version (`None`: whatever is there).
    Replace(Option<String>),
}

#[cfg(test)]
mod tests;
