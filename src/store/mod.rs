//! Encrypted files under one user's root.
//!
//! [`UserStore`] is what a session works with: it opens [`EncryptedFile`]s
//! and performs directory operations, in plaintext terms (sizes are
//! plaintext sizes). Below it, [`format`](mod@format) defines the bytes and
//! [`storage`] hides where they are kept; [`check`] reports every damaged
//! chunk of a stored file for `dropzone verify`.
//!
//! Crash safety: creating a file, or opening one with truncation, writes a
//! staged object beside the target that replaces it only at [`EncryptedFile::close`],
//! after it is synced; an interrupted upload leaves the previous version.
//! A new file's name is taken at open by a valid empty file (written and
//! synced under a staged name, then renamed into place exclusively), so that
//! stat and listings show it during the upload, as with OpenSSH; an upload
//! that does not complete leaves that empty file, one the gate rejects
//! removes it.
//! Opening an existing file without truncation changes it in place, chunk by
//! chunk; a torn chunk fails its MAC and is reported, never returned. An
//! extension journals the old end first ([`journal`]), so that the next
//! start can roll an interrupted one back.
//!
//! Upload checks: with an [`UploadGate`] that checks uploads, a staged file
//! is committed only once the gate accepted its plaintext, and every write
//! to an existing file goes through a staged, re-encrypted copy
//! (copy-on-open), so nothing unchecked replaces a stored version.
//!
//! Every call here blocks (file I/O and crypto); async callers run them on a
//! blocking thread.
//!
//! Parts: this file has [`UserStore`] (opening files, the staged upload,
//! placeholder and copy-on-open paths, directory operations); the open
//! handle, [`EncryptedFile`], and its close/commit logic are in `handle`;
//! directory listings ([`DirStream`]) and plaintext attributes in `dir`;
//! the chunked file state in [`file`](mod@file); the size limit and stop
//! signal in [`bounds`]; the upload gate in [`upload`]; the user's quota
//! account in [`quota`].

mod backend;
pub use backend::Backend;
pub mod bounds;
pub mod check;
mod dir;
pub use dir::DirStream;
pub mod file;
pub mod format;
mod handle;
pub use handle::EncryptedFile;
pub mod journal;
mod mac_batch;
mod pool;
pub use pool::set_polling as set_crypto_polling;
pub mod quota;
pub mod storage;
pub mod upload;

#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upload_tests;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use crate::keys::DataKey;
use crate::sync::lock;
use crate::username::UserName;
use bounds::Bounds;
pub use bounds::StopSignal;
use dir::attributes_in;
use file::FileState;
use format::FormatError;
use handle::{Charge, ClosingUpload, Commit, Pending, Placeholder, Replacing};
use quota::{QuotaAccount, QuotaExceeded};
use storage::{Access, Kind, Meta, ObjectPath, SpaceInfo, Storage};
pub use upload::{Rejection, Upload, UploadGate};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error from the storage (not found, permission, no space, ...).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The stored bytes failed authentication or are not a Dropzone file.
    #[error("the file failed its integrity check: {0}")]
    Integrity(#[from] FormatError),
    /// A request that makes no sense (e.g. an offset that overflows).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The handle was not opened for this kind of access.
    #[error("the file was not opened for {0}")]
    WrongAccess(&'static str),
    /// A bug, reported rather than panicking (e.g. a worker that panicked).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The file would grow past the largest size this store allows; nothing
    /// was written.
    #[error("the file would exceed the server's {} size limit", bounds::human_size(*limit))]
    TooLarge {
        /// The limit, in plaintext bytes.
        limit: u64,
    },
    /// Long work (filling a gap, copying data) stopped because the session
    /// is ending or the server is stopping; the file is as it was before
    /// the interrupted step.
    #[error("operation interrupted: the session is ending")]
    Interrupted,
    /// The upload gate (the scanner) refused the file at close: nothing was
    /// stored and the previous version stays. `reason` is for the client.
    #[error("upload rejected: {reason}")]
    Rejected {
        /// One line saying why, safe to show to the client.
        reason: String,
    },
    /// The user's quota has no room for the growth or the new file;
    /// nothing of it was written (an upload that lost a write to it is
    /// not stored; the previous version stays).
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
}

impl StoreError {
    /// Whether this error means "no such file or directory".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// How to open a file; the SFTP open flags map onto these one to one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Every write goes to the end of the file.
    pub append: bool,
    /// Create the file if it does not exist.
    pub create: bool,
    /// Start from an empty file (the old version stays until close).
    pub truncate: bool,
    /// With `create`: fail if the file exists.
    pub exclusive: bool,
    /// Permission bits for a new file (default 0o644).
    pub mode: Option<u32>,
}

/// Metadata in plaintext terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// Object kind.
    pub kind: Kind,
    /// Plaintext size for files (0 if unreadable); stored size otherwise.
    pub size: u64,
    /// Permission bits.
    pub permissions: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Link count.
    pub nlink: u64,
    /// Access time, seconds since the epoch.
    pub atime: i64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// Open in-place files by storage identity (device, inode).
type OpenFileTable = HashMap<(u64, u64), Weak<Mutex<FileState>>>;

/// Files opened in place, by storage identity, so that every handle on one
/// file shares one cache and one lock (coherent reads, no torn chunk from a
/// concurrent writer).
static OPEN_FILES: LazyLock<Mutex<OpenFileTable>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Opens the store of `user` in `backend` (locally, their root is
/// `data_dir/NAME`, created with mode 0700 if missing), encrypted under
/// `key`: what a login, `dropzone verify`, `dropzone decrypt` and the
/// legacy import all start from. The caller adds a size limit, a stop
/// signal or an upload gate where it needs them.
pub fn open_user(backend: &Backend, user: &UserName, key: Arc<DataKey>) -> io::Result<UserStore> {
    Ok(UserStore::new(backend.user_storage(user)?, key))
}

/// A user's tree of encrypted files.
pub struct UserStore {
    storage: Arc<dyn Storage>,
    key: Arc<DataKey>,
    gate: Option<Arc<dyn UploadGate>>,
    /// The size limit and stop signal every file opened here works within.
    bounds: Bounds,
    /// The user's quota account, shared with their other sessions.
    quota: Option<Arc<QuotaAccount>>,
}

impl UserStore {
    /// A store over `storage` whose files are encrypted under `key`.
    pub fn new(storage: Arc<dyn Storage>, key: Arc<DataKey>) -> Self {
        UserStore {
            storage,
            key,
            gate: None,
            bounds: Bounds::default(),
            quota: None,
        }
    }

    /// This store with its files counted in `account` (the user's quota,
    /// shared by all their sessions): growth past the limit fails with
    /// [`StoreError::Quota`] before anything is written.
    pub fn with_quota(mut self, account: Arc<QuotaAccount>) -> Self {
        self.quota = Some(account);
        self
    }

    /// Whether the store's calls wait on the network (see
    /// [`Storage::waits_on_network`]): async callers then make every call
    /// on a blocking thread.
    pub fn waits_on_network(&self) -> bool {
        self.storage.waits_on_network()
    }

    /// The user's quota account, if this store counts its files.
    pub fn quota(&self) -> Option<&Arc<QuotaAccount>> {
        self.quota.as_ref()
    }

    /// Recomputes the user's usage from what this store holds (see
    /// [`quota::scan_usage`]).
    pub fn scan_usage(&self) -> io::Result<quota::Usage> {
        quota::scan_usage(&*self.storage)
    }

    /// A quota charge for a file opened for writing: staged over a target
    /// counted as `baseline` bytes, or changed in place (`None`).
    fn charge(&self, write: bool, baseline: Option<u64>) -> Option<Charge> {
        let account = self.quota.as_ref().filter(|_| write)?;
        Some(Charge::new(account.clone(), baseline))
    }

    /// What the stored file described by `meta` counts for in the quota
    /// (its plaintext size; 0 if it stays under another hard link).
    fn counted_size(&self, path: &ObjectPath, meta: &Meta) -> u64 {
        if meta.kind == Kind::File && meta.nlink <= 1 {
            self.attributes(path, meta.clone()).size
        } else {
            0
        }
    }

    /// This store with files limited to `bytes` of plaintext (at most
    /// [`file::MAX_FILE_SIZE`], the default): a write, extension or copy
    /// that would grow a file past it fails with [`StoreError::TooLarge`]
    /// before anything is written.
    pub fn with_max_file_size(mut self, bytes: u64) -> Self {
        self.bounds.max_size = bytes.min(file::MAX_FILE_SIZE);
        self
    }

    /// This store with its long work stopped by `stop` (e.g. a child of a
    /// server-wide signal, see [`StopSignal::child`]) instead of a signal of
    /// its own.
    pub fn with_stop_signal(mut self, stop: StopSignal) -> Self {
        self.bounds.stop = stop;
        self
    }

    /// Stops, for good, the long work of every file opened through this
    /// store (filling a gap, copying data): it fails soon with
    /// [`StoreError::Interrupted`], leaving each file consistent. For when
    /// the session that owns the store ends.
    pub fn interrupt(&self) {
        self.bounds.stop.raise();
    }

    /// The largest size a file may grow to through this store.
    pub fn max_file_size(&self) -> u64 {
        self.bounds.max_size
    }

    /// This store with uploads checked and announced through `gate`.
    pub fn with_gate(mut self, gate: Arc<dyn UploadGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Whether writes must be checked before they replace a stored version.
    fn checks_uploads(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.checks())
    }

    /// Opens (or creates) the file at `path`.
    pub fn open(&self, path: &ObjectPath, opts: OpenOptions) -> Result<EncryptedFile, StoreError> {
        let existing = match self.storage.meta(path, true) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(m) = &existing {
            if opts.create && opts.exclusive {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists).into());
            }
            if m.kind == Kind::Dir {
                return Err(io::Error::from_raw_os_error(libc::EISDIR).into());
            }
        } else if !opts.create {
            return Err(io::Error::from(io::ErrorKind::NotFound).into());
        }
        // A stored file that cannot be changed in place (an object store)
        // is replaced when opened write-only without truncation or append:
        // see `handle::Replacing`.
        let replacing = match &existing {
            Some(m)
                if opts.write
                    && !opts.read
                    && !opts.append
                    && !opts.truncate
                    && m.kind == Kind::File
                    && !self.storage.rewrites_anywhere() =>
            {
                Some(Replacing {
                    stored_size: dir::plaintext_size(&*self.storage, path, m),
                    size_set: false,
                })
            }
            _ => None,
        };
        let staged = existing.is_none() || (opts.truncate && opts.write) || replacing.is_some();
        // With checked uploads an existing file is never written in place:
        // the write goes to a staged copy that the gate sees at close.
        let copied = !staged && opts.write && self.checks_uploads();
        let upload = opts.write.then(|| ClosingUpload {
            gate: self.gate.clone(),
            path: path.clone(),
        });
        // What the name already counts for in the quota: the file an upload
        // replaces (nothing if the name is a link, which the commit
        // replaces, or a file that stays under another link).
        let baseline = match (&existing, &self.quota) {
            (Some(_), Some(_)) => self
                .storage
                .meta(path, false)
                .map_or(0, |m| self.counted_size(path, &m)),
            _ => 0,
        };
        if copied {
            let mode = existing.as_ref().map_or(0o644, |m| m.permissions);
            let charge = self.charge(true, Some(baseline));
            return self.open_copy(path, opts, mode, upload, charge);
        }
        if staged {
            if !opts.write {
                return Err(StoreError::WrongAccess(
                    "writing (create needs write access)",
                ));
            }
            let mode = match &existing {
                Some(m) => m.permissions,
                None => opts.mode.unwrap_or(0o644) & 0o7777,
            };
            // A new name is taken at once, by an empty file, so that stat
            // and listings show it while the upload is staged (as OpenSSH's
            // open(2) does; sshfs stats a file right after creating it).
            // An object store has no such file: the upload appears only
            // when it completes at close.
            let placeholder = match existing {
                None if self.storage.takes_names_at_open() => {
                    self.place_new(path, mode, opts.exclusive)?
                }
                _ => None,
            };
            let charge = self.charge(true, Some(baseline));
            let s = self.storage.stage(path)?;
            let state = match FileState::create(s.blob, self.key.expose()) {
                Ok(state) => state,
                Err(e) => {
                    self.storage.discard(s.token);
                    return Err(e);
                }
            };
            return Ok(EncryptedFile {
                state: Arc::new(Mutex::new(state)),
                opts,
                pending: Mutex::new(Pending {
                    commit: Some(Commit {
                        token: s.token,
                        // Exclusivity was settled when the name was taken:
                        // the commit replaces the placeholder.
                        exclusive: opts.exclusive && placeholder.is_none(),
                        storage: self.storage.clone(),
                        copy: false,
                        placeholder,
                    }),
                    permissions: Some(mode),
                    copy_mode: None,
                    times: None,
                    refused: None,
                    replacing,
                }),
                upload,
                modified: AtomicBool::new(false),
                bounds: self.bounds.clone(),
                charge,
                replaces: replacing.is_some(),
            });
        }
        let state = self.open_shared(path, opts.write)?;
        Ok(EncryptedFile {
            state,
            opts,
            pending: Mutex::new(Pending::default()),
            upload,
            modified: AtomicBool::new(false),
            bounds: self.bounds.clone(),
            charge: self.charge(opts.write, None),
            replaces: false,
        })
    }

    /// [`UserStore::place_empty`] with the new file counted in the quota
    /// first (refused with [`StoreError::Quota`] if the user has no file
    /// left), and given back if no file was placed.
    fn place_new(
        &self,
        path: &ObjectPath,
        mode: u32,
        exclusive: bool,
    ) -> Result<Option<Placeholder>, StoreError> {
        let Some(account) = &self.quota else {
            return self.place_empty(path, mode, exclusive);
        };
        account.charge_file()?;
        match self.place_empty(path, mode, exclusive) {
            Ok(Some(mut placeholder)) => {
                placeholder.quota = Some(account.clone());
                Ok(Some(placeholder))
            }
            other => {
                // Another client's file holds the name (the upload replaces
                // it, counted at commit), or nothing was placed.
                account.uncharge_file();
                other
            }
        }
    }

    /// Puts a valid empty encrypted file with permissions `mode` at `path`,
    /// where nothing is: written and synced under a staged name, then
    /// renamed into place only if the name is still free, so that a crash
    /// leaves either nothing or a file that decrypts (as empty). Returns
    /// the placeholder's identity, or `None` if another client took the
    /// name meanwhile and `exclusive` is not set (the upload then replaces
    /// that file at close, as a truncating open would).
    fn place_empty(
        &self,
        path: &ObjectPath,
        mode: u32,
        exclusive: bool,
    ) -> Result<Option<Placeholder>, StoreError> {
        let s = self.storage.stage(path)?;
        let made = FileState::create(s.blob, self.key.expose()).and_then(|mut empty| {
            empty.sync()?;
            empty.blob().set_permissions(mode)?;
            Ok(empty.blob().meta()?.identity)
        });
        let identity = match made {
            Ok(identity) => identity,
            Err(e) => {
                self.storage.discard(s.token);
                return Err(e);
            }
        };
        match self.storage.commit(s.token, true) {
            Ok(()) => Ok(Some(Placeholder {
                path: path.clone(),
                identity,
                quota: None,
            })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !exclusive => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a staged copy of the existing file at `path` for writing; the
    /// copy replaces the file at close if it was changed and the gate
    /// accepts it. The copy is re-encrypted chunk by chunk under a new file
    /// id (plaintext only in memory, every chunk authenticated on the way),
    /// so the old and new versions never share keys and chunks of one
    /// cannot pass for the other's.
    fn open_copy(
        &self,
        path: &ObjectPath,
        opts: OpenOptions,
        mode: u32,
        upload: Option<ClosingUpload>,
        charge: Option<Charge>,
    ) -> Result<EncryptedFile, StoreError> {
        let mut source = FileState::open(
            self.storage.open(path, Access::Read)?,
            self.key.expose(),
            false,
        )?;
        let s = self.storage.stage(path)?;
        let copied = FileState::create(s.blob, self.key.expose()).and_then(|mut copy| {
            copy_plaintext(&mut source, &mut copy, &self.bounds)?;
            Ok(copy)
        });
        let state = match copied {
            Ok(state) => state,
            Err(e) => {
                self.storage.discard(s.token);
                return Err(e);
            }
        };
        Ok(EncryptedFile {
            state: Arc::new(Mutex::new(state)),
            opts,
            pending: Mutex::new(Pending {
                commit: Some(Commit {
                    token: s.token,
                    exclusive: false,
                    storage: self.storage.clone(),
                    copy: true,
                    placeholder: None,
                }),
                permissions: None,
                copy_mode: Some(mode),
                times: None,
                refused: None,
                replacing: None,
            }),
            upload,
            modified: AtomicBool::new(false),
            bounds: self.bounds.clone(),
            charge,
            replaces: false,
        })
    }

    /// The shared state of an existing file, opened for writing if needed.
    fn open_shared(
        &self,
        path: &ObjectPath,
        write: bool,
    ) -> Result<Arc<Mutex<FileState>>, StoreError> {
        let access = if write {
            Access::ReadWrite
        } else {
            Access::Read
        };
        let blob = self.storage.open(path, access)?;
        let identity = blob.meta()?.identity;
        let mut table = lock(&OPEN_FILES);
        if let Some(state) = table.get(&identity).and_then(Weak::upgrade) {
            // Let the table go before waiting for a file that may be busy
            // with a long job (see `plaintext_size`).
            drop(table);
            if write {
                // The shared state may hold a read-only descriptor; give it
                // this writable one for the same file.
                let mut guard = lock(&state);
                guard.replace_blob_if_readonly(blob);
                if let Some(target) = self.journal_target(path) {
                    guard.set_journal_target(target);
                }
            }
            return Ok(state);
        }
        table.retain(|_, w| w.strong_count() > 0);
        let mut state = FileState::open(blob, self.key.expose(), write)?;
        if write && let Some(target) = self.journal_target(path) {
            state.set_journal_target(target);
        }
        let state = Arc::new(Mutex::new(state));
        table.insert(identity, Arc::downgrade(&state));
        Ok(state)
    }

    /// Where extensions of the file at `path` are journaled; `None` for a
    /// storage whose in-place changes need no journal (an object store's
    /// rewrite is complete or not there at all).
    fn journal_target(&self, path: &ObjectPath) -> Option<journal::JournalTarget> {
        self.storage
            .journals_extensions()
            .then(|| journal::JournalTarget {
                storage: self.storage.clone(),
                path: path.clone(),
            })
    }

    /// Attributes of `path`, following a final symlink or not.
    pub fn stat(&self, path: &ObjectPath, follow: bool) -> Result<Attributes, StoreError> {
        let meta = self.storage.meta(path, follow)?;
        Ok(self.attributes(path, meta))
    }

    fn attributes(&self, path: &ObjectPath, meta: Meta) -> Attributes {
        attributes_in(&*self.storage, path, meta)
    }

    /// Opens the directory `path` for reading its entries in batches
    /// ([`DirStream::next_batch`]): what the stream holds does not grow
    /// with the directory.
    pub fn open_dir(&self, path: &ObjectPath) -> Result<DirStream, StoreError> {
        Ok(DirStream {
            reader: self.storage.open_dir(path)?,
            storage: self.storage.clone(),
            path: path.clone(),
        })
    }

    /// Entries of the directory `path` with their attributes.
    pub fn read_dir(&self, path: &ObjectPath) -> Result<Vec<(String, Attributes)>, StoreError> {
        let entries = self.storage.read_dir(path)?;
        let mut out = Vec::with_capacity(entries.len());
        for (name, meta) in entries {
            let attrs = match path.join(&name) {
                Ok(child) => self.attributes(&child, meta),
                // A name our paths cannot express (e.g. a reserved prefix
                // planted on disk): list it with stored figures.
                Err(_) => continue,
            };
            out.push((name, attrs));
        }
        Ok(out)
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &ObjectPath, mode: Option<u32>) -> Result<(), StoreError> {
        Ok(self.storage.mkdir(path, mode.unwrap_or(0o755))?)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &ObjectPath) -> Result<(), StoreError> {
        Ok(self.storage.rmdir(path)?)
    }

    /// Removes a file or symlink.
    pub fn remove(&self, path: &ObjectPath) -> Result<(), StoreError> {
        let names = self.quota.as_ref().map(|a| a.hold_names());
        let meta = self.storage.meta(path, false)?;
        if meta.kind == Kind::Dir {
            return Err(io::Error::from_raw_os_error(libc::EISDIR).into());
        }
        let gone = self.quota_of(path, &meta);
        self.storage.remove(path)?;
        drop(names);
        self.quota_removed(gone);
        Ok(())
    }

    /// Renames; without `replace`, an existing target is an error.
    pub fn rename(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        replace: bool,
    ) -> Result<(), StoreError> {
        // A file the rename replaces is gone from the quota, unless it is
        // the source itself under another link.
        let names = self.quota.as_ref().map(|a| a.hold_names());
        let gone = match (&self.quota, replace) {
            (Some(_), true) => match (self.storage.meta(to, false), self.storage.meta(from, false))
            {
                (Ok(target), Ok(source)) if target.identity != source.identity => {
                    self.quota_of(to, &target)
                }
                _ => None,
            },
            _ => None,
        };
        self.storage.rename(from, to, replace)?;
        drop(names);
        self.quota_removed(gone);
        Ok(())
    }

    /// What removing the object `meta` at `path` takes off the quota
    /// (bytes, files), if this store has one and the object is a file.
    fn quota_of(&self, path: &ObjectPath, meta: &Meta) -> Option<(u64, u64)> {
        self.quota.as_ref()?;
        match meta.kind {
            Kind::File if meta.nlink <= 1 => Some((self.counted_size(path, meta), 1)),
            _ => None,
        }
    }

    /// Takes a removed file off the quota.
    fn quota_removed(&self, gone: Option<(u64, u64)>) {
        if let (Some(account), Some((bytes, files))) = (&self.quota, gone) {
            account.removed(bytes, files);
        }
    }

    /// Creates a hard link.
    pub fn hard_link(&self, existing: &ObjectPath, link: &ObjectPath) -> Result<(), StoreError> {
        Ok(self.storage.hard_link(existing, link)?)
    }

    /// Creates a symlink whose content is `target` (already checked by the
    /// caller to stay inside the root).
    pub fn symlink(&self, target: &str, link: &ObjectPath) -> Result<(), StoreError> {
        Ok(self.storage.symlink(target, link)?)
    }

    /// The content of a symlink.
    pub fn read_link(&self, path: &ObjectPath) -> Result<String, StoreError> {
        Ok(self.storage.read_link(path)?)
    }

    /// Changes permission bits.
    pub fn set_permissions(&self, path: &ObjectPath, mode: u32) -> Result<(), StoreError> {
        Ok(self.storage.set_permissions(path, mode)?)
    }

    /// Changes access and modification times.
    pub fn set_times(&self, path: &ObjectPath, atime: i64, mtime: i64) -> Result<(), StoreError> {
        Ok(self.storage.set_times(path, atime, mtime)?)
    }

    /// Truncates or extends the file at `path` to `size` plaintext bytes.
    pub fn set_size(&self, path: &ObjectPath, size: u64) -> Result<(), StoreError> {
        let file = self.open(
            path,
            OpenOptions {
                read: true,
                write: true,
                ..OpenOptions::default()
            },
        )?;
        file.set_len(size)?;
        file.close()
    }

    /// Filesystem space figures; with a quota, its limits are the size and
    /// the user's usage the used part (see [`QuotaAccount::apply_to`]).
    pub fn space(&self, path: &ObjectPath) -> Result<SpaceInfo, StoreError> {
        let space = self.storage.space(path)?;
        Ok(match &self.quota {
            Some(account) => account.apply_to(space),
            None => space,
        })
    }
}

/// Copies the plaintext of `from` into the new file `to`, one chunk at a
/// time (sequential, so both sides use their read-ahead and write-behind),
/// until `bounds.stop` is raised.
fn copy_plaintext(
    from: &mut FileState,
    to: &mut FileState,
    bounds: &Bounds,
) -> Result<(), StoreError> {
    let mut offset = 0u64;
    loop {
        bounds.check_stop()?;
        let chunk = from.read_at(offset, format::CHUNK_SIZE)?;
        if chunk.is_empty() {
            return Ok(());
        }
        // The copy of a file already past a lowered limit is not refused:
        // the limit is for growth, and the copy only grows to the original.
        to.write_at(offset, &chunk, &Bounds::default())?;
        offset += chunk.len() as u64;
    }
}
