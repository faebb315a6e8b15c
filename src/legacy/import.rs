//! The import walk: for each legacy home, unwrap the user's legacy key
//! through the key service, get (or create) their Dropzone key, and write
//! each file through the store, exactly as the server would.
//!
//! Plaintext only ever exists in memory, one piece at a time: the source is
//! decrypted piece by piece and each piece written through
//! [`crate::store::EncryptedFile`], which encrypts it. A new file is staged
//! and appears only once complete; it is then read back and compared with
//! what was written.
//!
//! Idempotence: a destination that already decrypts to the source's content
//! (same length, same SHA-256) is left alone; one with other content is a
//! conflict and is replaced only with `overwrite`. The source is only read.
//!
//! The destination is the configured storage backend ([`Backend`]): the
//! local `data_dir` with keys in `keks_dir`, or an S3 bucket with the keys
//! as objects `PREFIX/keks/NAME.key` beside the trees, exactly where a
//! server on that configuration looks for them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::report::{Event, FileOutcome, Summary};
use super::source::{self, SourceError, SourceKind, SourceReader};
use super::walk::{self, PlannedFile};
use crate::keys::key_store::S3KeyFiles;
use crate::keys::{DataKey, KeyError, UserKeys};
use crate::kms::{KeyWrapper, MasterKeyRef, WrapContext};
use crate::store::format::CHUNK_SIZE;
use crate::store::storage::{Kind, ObjectPath};
use crate::store::{Backend, OpenOptions, StoreError, UserStore};
use crate::username::UserName;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The original's key directory (`keks/`).
    pub legacy_keks: PathBuf,
    /// The original's home directories (`homes/`).
    pub legacy_homes: PathBuf,
    /// Where Dropzone keeps users' trees (the configured storage backend).
    pub backend: Backend,
    /// Dropzone's `keks_dir`: where user keys are kept with the local
    /// backend (on S3 they are objects in the bucket).
    pub keks_dir: PathBuf,
    /// The master key at the key service that wraps the original's keys.
    pub legacy_master: MasterKeyRef,
    /// Write nothing: no key, no directory, no file.
    pub dry_run: bool,
    /// Replace destinations that hold other content.
    pub overwrite: bool,
    /// Only these users (all homes if empty).
    pub only: Vec<String>,
}

/// Why an import could not run at all (per-user and per-file problems are
/// reported in the [`Summary`] instead).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The configured key backend is not the EaaS.
    #[error(
        "the original's user keys are wrapped by its key service (EaaS), but the configured \
         key backend is {0:?}: set [kms] backend = \"eaas\" and [kms.eaas] url, secret_path and \
         secret_version to reach the original's key service (--secret-path and --secret-version \
         override the last two for the legacy keys); new Dropzone keys are then wrapped by it too"
    )]
    NeedsEaas(&'static str),
    /// A directory given to the import cannot be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Dropzone's key directory cannot be used.
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// Runs the import; `progress` sees every event as it happens.
pub fn import(
    opts: &ImportOptions,
    wrapper: Arc<dyn KeyWrapper>,
    progress: &mut dyn FnMut(&Event),
) -> Result<Summary, ImportError> {
    if wrapper.backend() != crate::kms::eaas::BACKEND {
        return Err(ImportError::NeedsEaas(wrapper.backend()));
    }
    for dir in [&opts.legacy_keks, &opts.legacy_homes] {
        let meta = std::fs::metadata(dir).map_err(|source| ImportError::Io {
            path: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ImportError::Io {
                path: dir.clone(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
    }
    // A dry run creates nothing, not even Dropzone's key directory; without
    // one, no user has a key yet. A bucket's keys are only read.
    let keys = match &opts.backend {
        Backend::Local { .. } if opts.dry_run && !opts.keks_dir.is_dir() => None,
        Backend::Local { .. } => Some(UserKeys::new(opts.keks_dir.clone(), wrapper.clone(), None)?),
        Backend::S3 { client, prefix, .. } => Some(UserKeys::with_files(
            Arc::new(S3KeyFiles::new(client.clone(), prefix)),
            wrapper.clone(),
            None,
        )),
    };
    if !opts.dry_run {
        opts.backend.prepare().map_err(|source| ImportError::Io {
            path: PathBuf::from(opts.backend.describe_root()),
            source,
        })?;
    }
    let mut run = Run {
        opts,
        wrapper: wrapper.as_ref(),
        keys: keys.as_ref(),
        summary: Summary {
            dry_run: opts.dry_run,
            ..Summary::default()
        },
        progress,
    };
    run.all_homes()?;
    Ok(run.summary)
}

struct Run<'a> {
    opts: &'a ImportOptions,
    wrapper: &'a dyn KeyWrapper,
    keys: Option<&'a UserKeys>,
    summary: Summary,
    progress: &'a mut dyn FnMut(&Event),
}

/// A user's keys and store for the files.
struct UserContext {
    legacy_key: Option<DataKey>,
    /// `None` in a dry run when the user has no Dropzone key or directory
    /// yet (every file would then be new).
    store: Option<UserStore>,
}

impl Run<'_> {
    fn emit(&mut self, event: Event) {
        self.summary.record(&event);
        (self.progress)(&event);
    }

    fn all_homes(&mut self) -> Result<(), ImportError> {
        let homes = &self.opts.legacy_homes;
        let io_err = |source| ImportError::Io {
            path: homes.clone(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(homes).map_err(io_err)? {
            entries.push(entry.map_err(io_err)?.path());
        }
        entries.sort();
        let mut seen = Vec::new();
        for home in entries {
            let Some(name) = home.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                self.emit(Event::UserFailed {
                    name: home.display().to_string(),
                    reason: "the directory name is not UTF-8, so not a user name".into(),
                });
                continue;
            };
            if !self.opts.only.is_empty() && !self.opts.only.contains(&name) {
                continue;
            }
            seen.push(name.clone());
            let is_dir = std::fs::symlink_metadata(&home).is_ok_and(|m| m.is_dir());
            if !is_dir {
                self.emit(Event::Left {
                    user: name,
                    path: home,
                    reason: "not a home directory (a file or a link): skipped".into(),
                    data: false,
                });
                continue;
            }
            match UserName::parse(&name) {
                Ok(user) => self.user(&user, &home),
                Err(e) => self.emit(Event::UserFailed {
                    name,
                    reason: format!(
                        "{e}; rename the home directory (and its key file) to import it"
                    ),
                }),
            }
        }
        for wanted in &self.opts.only {
            if !seen.contains(wanted) {
                self.emit(Event::UserFailed {
                    name: wanted.clone(),
                    reason: format!("no home directory {}", homes.join(wanted).display()),
                });
            }
        }
        if self.opts.only.is_empty() {
            self.orphan_keys(&seen);
        }
        Ok(())
    }

    /// Reports the original's key files that belong to no home directory.
    fn orphan_keys(&mut self, names: &[String]) {
        let known: Vec<String> = names.iter().map(|n| source::kek_file_name(n)).collect();
        let Ok(entries) = std::fs::read_dir(&self.opts.legacy_keks) else {
            return;
        };
        let mut orphans: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with('.')
                    && name.ends_with(source::KEK_SUFFIX)
                    && !known.iter().any(|k| *k == name)
            })
            .map(|e| e.path())
            .collect();
        orphans.sort();
        for path in orphans {
            self.emit(Event::OrphanKey { path });
        }
    }

    fn user(&mut self, user: &UserName, home: &Path) {
        let name = user.to_string();
        self.emit(Event::UserStart {
            user: name.clone(),
            home: home.to_owned(),
        });
        let plan = match walk::plan_home(home) {
            Ok(plan) => plan,
            Err(e) => {
                return self.emit(Event::UserFailed {
                    name,
                    reason: format!("cannot list {}: {e}", home.display()),
                });
            }
        };
        let ctx = match self.user_context(user, plan.has_encrypted()) {
            Ok(ctx) => ctx,
            Err(reason) => return self.emit(Event::UserFailed { name, reason }),
        };
        for dir in &plan.dirs {
            if let Err(reason) = self.mkdir(&ctx, dir) {
                self.emit(Event::DirFailed {
                    user: name.clone(),
                    dest: dir.to_client_string(),
                    reason,
                });
            }
        }
        for file in &plan.files {
            let outcome = self.file(&ctx, file);
            self.emit(Event::File {
                user: name.clone(),
                source: file.source.clone(),
                dest: file.dest.to_client_string(),
                plaintext: file.kind == SourceKind::Plain,
                outcome,
            });
            if let Some(enc) = &file.supersedes {
                let same = same_sources(file, enc, ctx.legacy_key.as_ref());
                self.emit(Event::Superseded {
                    user: name.clone(),
                    enc: enc.clone(),
                    by: file.source.clone(),
                    same,
                });
            }
        }
        for left in plan.left {
            self.emit(Event::Left {
                user: name.clone(),
                path: left.path,
                reason: left.reason,
                data: left.data,
            });
        }
    }

    /// Unwraps the legacy key, then gets the Dropzone key and opens the
    /// store (in a dry run, only what already exists). Nothing is written
    /// before the legacy key is known to work.
    fn user_context(&mut self, user: &UserName, needs_key: bool) -> Result<UserContext, String> {
        let name = user.to_string();
        let kek = self.opts.legacy_keks.join(source::kek_file_name(&name));
        let master = &self.opts.legacy_master;
        let legacy_key = if std::fs::symlink_metadata(&kek).is_ok() {
            let wrapped =
                source::read_kek(&kek).map_err(|e| format!("key file {}: {e}", kek.display()))?;
            let ctx = WrapContext::for_user(user);
            let key = self.wrapper.unwrap(&wrapped, master, &ctx).map_err(|e| {
                format!(
                    "key file {}: the key service did not give back an AES key under {master}: {e}",
                    kek.display()
                )
            })?;
            self.emit(Event::UserNote {
                user: name.clone(),
                note: format!("legacy key {} unwrapped ({master})", kek.display()),
            });
            Some(DataKey::copy_from(&key))
        } else if needs_key {
            return Err(format!(
                "no key file {} for its encrypted files; nothing imported",
                kek.display()
            ));
        } else {
            self.emit(Event::UserNote {
                user: name.clone(),
                note: format!(
                    "no key file {}, but no encrypted file either: importing its plaintext files",
                    kek.display()
                ),
            });
            None
        };

        let backend = &self.opts.backend;
        let root = backend.describe_user(user);
        let store = if self.opts.dry_run {
            let key = match self.keys.map(|k| k.get_existing(user)) {
                None | Some(Err(KeyError::NotFound(_))) => None,
                Some(Ok(key)) => Some(key),
                Some(Err(e)) => return Err(format!("Dropzone key: {e}")),
            };
            let has_tree = || backend.has_user(user).map_err(|e| format!("{root}: {e}"));
            match key {
                Some(key) if has_tree()? => Some(
                    crate::store::open_user(backend, user, key)
                        .map_err(|e| format!("{root}: {e}"))?,
                ),
                _ => None,
            }
        } else {
            let Some(keys) = self.keys else {
                return Err("internal error: no key directory outside a dry run".into());
            };
            let existed = keys
                .has_key(user)
                .map_err(|e| format!("Dropzone key: {e}"))?;
            let key = keys
                .get_or_create(user)
                .map_err(|e| format!("Dropzone key: {e}"))?;
            let what = if existed { "existing" } else { "new" };
            self.emit(Event::UserNote {
                user: name.clone(),
                note: format!("{what} Dropzone key {}", keys.key_file_path(user).display()),
            });
            Some(crate::store::open_user(backend, user, key).map_err(|e| format!("{root}: {e}"))?)
        };
        Ok(UserContext { legacy_key, store })
    }

    fn mkdir(&self, ctx: &UserContext, dir: &ObjectPath) -> Result<(), String> {
        let Some(store) = &ctx.store else {
            return Ok(());
        };
        match store.stat(dir, false) {
            Ok(attrs) if attrs.kind == Kind::Dir => return Ok(()),
            Ok(_) => return Err("something that is not a directory is in the way".into()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.to_string()),
        }
        if self.opts.dry_run {
            return Ok(());
        }
        match store.mkdir(dir, None) {
            Ok(()) => Ok(()),
            Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn file(&self, ctx: &UserContext, file: &PlannedFile) -> FileOutcome {
        let key = ctx.legacy_key.as_ref();
        let len = match source::content_len(&file.source, file.kind, key) {
            Ok(len) => len,
            Err(e) => return FileOutcome::Failed(e.to_string()),
        };
        let Some(store) = &ctx.store else {
            // Dry run for a user with nothing in Dropzone yet: all new.
            // `content_len` opened the file and checked its length, which is
            // all the legacy format allows checking without a MAC.
            return FileOutcome::WouldImport { bytes: len };
        };
        let dest = &file.dest;
        let replace = match store.stat(dest, false) {
            Err(e) if e.is_not_found() => false,
            Err(e) => return FileOutcome::Failed(format!("cannot check the destination: {e}")),
            Ok(attrs) if attrs.kind != Kind::File => {
                return FileOutcome::Conflict(format!(
                    "{} is in the way",
                    match attrs.kind {
                        Kind::Dir => "a directory",
                        Kind::Symlink => "a symbolic link",
                        _ => "a special file",
                    }
                ));
            }
            Ok(attrs) => {
                let differs = if attrs.size != len {
                    format!(
                        "already holds {} bytes of other content (the source has {len})",
                        attrs.size
                    )
                } else {
                    let ours = match hash_source(file, key) {
                        Ok(h) => h,
                        Err(e) => return FileOutcome::Failed(e.to_string()),
                    };
                    match hash_stored(store, dest) {
                        Ok(theirs) if theirs == ours => return FileOutcome::Unchanged,
                        Ok(_) => "already holds other content of the same length".to_owned(),
                        Err(e) => format!("already exists and cannot be read: {e}"),
                    }
                };
                if !self.opts.overwrite {
                    return FileOutcome::Conflict(format!("{differs}; left as it is"));
                }
                true
            }
        };
        if self.opts.dry_run {
            return if replace {
                FileOutcome::WouldOverwrite { bytes: len }
            } else {
                FileOutcome::WouldImport { bytes: len }
            };
        }
        match copy(store, file, key, replace) {
            Ok(bytes) if replace => FileOutcome::Overwritten { bytes },
            Ok(bytes) => FileOutcome::Imported { bytes },
            Err(e) => FileOutcome::Failed(e),
        }
    }
}

/// Length and SHA-256 of some content.
type Fingerprint = (u64, [u8; 32]);

/// Reads (and decrypts) a whole source file.
fn hash_source(file: &PlannedFile, key: Option<&DataKey>) -> Result<Fingerprint, SourceError> {
    hash_path(&file.source, file.kind, key)
}

fn hash_path(
    path: &Path,
    kind: SourceKind,
    key: Option<&DataKey>,
) -> Result<Fingerprint, SourceError> {
    let mut reader = SourceReader::open(path, kind, key)?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    loop {
        let piece = reader.next_piece()?;
        if piece.is_empty() {
            return Ok((len, hasher.finalize().into()));
        }
        hasher.update(piece);
        len += piece.len() as u64;
    }
}

/// Reads (and authenticates) a whole stored file.
fn hash_stored(store: &UserStore, dest: &ObjectPath) -> Result<Fingerprint, StoreError> {
    let file = store.open(
        dest,
        OpenOptions {
            read: true,
            ..OpenOptions::default()
        },
    )?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    loop {
        let piece = file.read_at(len, CHUNK_SIZE)?;
        if piece.is_empty() {
            return Ok((len, hasher.finalize().into()));
        }
        hasher.update(&piece);
        len += piece.len() as u64;
    }
}

/// Whether a plaintext file and its superseded `.enc` hold the same content.
fn same_sources(plain: &PlannedFile, enc: &Path, key: Option<&DataKey>) -> Result<bool, String> {
    let key = key.ok_or("no legacy key")?;
    let a = hash_path(&plain.source, SourceKind::Plain, None).map_err(|e| e.to_string())?;
    let b = hash_path(enc, SourceKind::Encrypted, Some(key))
        .map_err(|e| format!("{}: {e}", enc.display()))?;
    Ok(a == b)
}

/// Writes one file through the store (staged: it appears complete or not
/// at all), then reads it back and compares. Returns the content length.
fn copy(
    store: &UserStore,
    file: &PlannedFile,
    key: Option<&DataKey>,
    replace: bool,
) -> Result<u64, String> {
    let mut reader = SourceReader::open(&file.source, file.kind, key).map_err(|e| e.to_string())?;
    let out = store
        .open(
            &file.dest,
            OpenOptions {
                write: true,
                create: true,
                truncate: replace,
                exclusive: !replace,
                ..OpenOptions::default()
            },
        )
        .map_err(|e| format!("cannot create the destination: {e}"))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    loop {
        let piece = match reader.next_piece() {
            Ok(piece) => piece,
            Err(e) => {
                out.abort();
                return Err(e.to_string());
            }
        };
        if piece.is_empty() {
            break;
        }
        hasher.update(piece);
        if let Err(e) = out.write_at(written, piece) {
            out.abort();
            return Err(format!("writing the destination: {e}"));
        }
        written += piece.len() as u64;
    }
    // Applied at close, after the last write.
    if let Err(e) = out.set_times(file.atime, file.mtime) {
        out.abort();
        return Err(format!("setting the times: {e}"));
    }
    out.close()
        .map_err(|e| format!("finishing the destination: {e}"))?;
    let expected: Fingerprint = (written, hasher.finalize().into());
    match hash_stored(store, &file.dest) {
        Ok(got) if got == expected => Ok(written),
        Ok((len, _)) => Err(format!(
            "the stored copy reads back differently ({len} bytes, {written} written)"
        )),
        Err(e) => Err(format!("the stored copy cannot be read back: {e}")),
    }
}
