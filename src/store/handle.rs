//! An open encrypted file, [`EncryptedFile`] (one SFTP handle), and what
//! it still has to do at close: commit a staged upload over its target,
//! have the upload gate check it, or discard it and the empty placeholder
//! that held a new file's name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::bounds::Bounds;
use super::file::FileState;
use super::storage::{Kind, ObjectPath, StagedToken, Storage};
use super::{Attributes, OpenOptions, StoreError, Upload, UploadGate, upload};
use crate::sync::lock;

pub(super) struct Commit {
    pub(super) token: StagedToken,
    pub(super) exclusive: bool,
    pub(super) storage: Arc<dyn Storage>,
    /// A copy of an existing file (copy-on-open): left uncommitted if
    /// nothing was written to it.
    pub(super) copy: bool,
    /// The empty file that holds a new upload's name until the commit
    /// replaces it (see `UserStore::place_empty`).
    pub(super) placeholder: Option<Placeholder>,
}

impl Commit {
    /// Gives up the upload: the staged file goes, and so does the empty
    /// placeholder a new file's OPEN put at the name (if the name still
    /// holds it), so an upload that does not complete leaves the name as
    /// it was before the OPEN. Only a crash can leave the placeholder
    /// behind: an empty, valid file.
    fn discard(self) {
        self.storage.discard(self.token);
        if let Some(p) = &self.placeholder {
            p.remove(&*self.storage);
        }
    }
}

/// The empty file OPEN put at a new upload's target.
pub(super) struct Placeholder {
    pub(super) path: ObjectPath,
    /// Its storage identity: it is removed (for a rejected upload) only if
    /// the name still holds this very file.
    pub(super) identity: (u64, u64),
}

impl Placeholder {
    /// Removes the placeholder if `path` still names it (nobody replaced
    /// it meanwhile); best effort, as the upload has failed already.
    fn remove(&self, storage: &dyn Storage) {
        let ours = storage
            .meta(&self.path, false)
            .is_ok_and(|m| m.kind == Kind::File && m.identity == self.identity);
        if ours && let Err(e) = storage.remove(&self.path) {
            tracing::warn!(error = %e, "could not remove a failed upload's empty placeholder");
        }
    }
}

/// Where a file opened for writing goes, for the upload gate at close.
pub(super) struct ClosingUpload {
    pub(super) gate: Option<Arc<dyn UploadGate>>,
    pub(super) path: ObjectPath,
}

/// What a staged file still has to do at close.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) commit: Option<Commit>,
    /// Applied at close, after the last data is written.
    pub(super) permissions: Option<u32>,
    /// A copy-on-open's mode, taken from the file at open: given to the
    /// copy when it replaces the file, but never applied to the stored file
    /// when the copy is discarded (a chmod made meanwhile must stand).
    pub(super) copy_mode: Option<u32>,
    /// Applied at close, after the last data is written, so that a client's
    /// "preserve times" survives the final flush.
    pub(super) times: Option<(i64, i64)>,
    /// The size limit a write or extension through this handle ran into.
    /// An upload (a staged file that is not a copy-on-open) that lost a
    /// write to it is incomplete: close discards it, and the previous
    /// version stays.
    pub(super) refused: Option<u64>,
}

/// An open encrypted file (one SFTP handle).
pub struct EncryptedFile {
    pub(super) state: Arc<Mutex<FileState>>,
    pub(super) opts: OpenOptions,
    pub(super) pending: Mutex<Pending>,
    /// Set for files opened for writing.
    pub(super) upload: Option<ClosingUpload>,
    /// Whether the content was changed through this handle.
    pub(super) modified: AtomicBool,
    /// The store's size limit and stop signal.
    pub(super) bounds: Bounds,
}

impl EncryptedFile {
    /// Reads up to `len` bytes at `offset`; an empty result means end of file.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        if !self.opts.read {
            return Err(StoreError::WrongAccess("reading"));
        }
        lock(&self.state).read_at(offset, len)
    }

    /// Appends up to `len` bytes read at `offset` to `out` and returns how
    /// many (0 at end of file), for callers that build a reply around the
    /// data (an SFTP DATA packet) and want it read straight into place.
    pub fn read_into(
        &self,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, StoreError> {
        if !self.opts.read {
            return Err(StoreError::WrongAccess("reading"));
        }
        lock(&self.state).read_into(offset, len, out)
    }

    /// Writes `data` at `offset` (at the end, if opened for append).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        if !self.opts.write {
            return Err(StoreError::WrongAccess("writing"));
        }
        let mut state = lock(&self.state);
        let offset = if self.opts.append {
            state.size()
        } else {
            offset
        };
        self.modified.store(true, Ordering::Relaxed);
        let written = state.write_at(offset, data, &self.bounds);
        drop(state);
        self.note_refusal(written)
    }

    /// Remembers a refusal by the size limit for `close` (see
    /// `Pending::refused`).
    fn note_refusal(&self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        if let Err(StoreError::TooLarge { limit }) = &result {
            lock(&self.pending).refused.get_or_insert(*limit);
        }
        result
    }

    /// Fails with [`StoreError::TooLarge`] if growing this file to `end`
    /// bytes would pass the store's limit, as a write ending there would:
    /// for work that checks before it starts (a copy).
    pub fn check_growth(&self, end: Option<u64>) -> Result<(), StoreError> {
        self.bounds.check_growth(self.size(), end)
    }

    /// Fails with [`StoreError::Interrupted`] once the store's stop signal
    /// is raised: for loops above the store (a copy) to check at each step.
    pub fn check_stop(&self) -> Result<(), StoreError> {
        self.bounds.check_stop()
    }

    /// Whether `other` is this handle or another handle on the same stored
    /// file (files opened in place share one state per storage identity, so
    /// this holds through hard links too). A staged file (an upload) is
    /// never the same as another handle's.
    pub fn same_file(&self, other: &EncryptedFile) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Plaintext size.
    pub fn size(&self) -> u64 {
        lock(&self.state).size()
    }

    /// Plaintext size if it can be had without waiting: `None` while another
    /// handle on the same file is working on it.
    pub fn size_if_idle(&self) -> Option<u64> {
        match self.state.try_lock() {
            Ok(state) => Some(state.size()),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().size()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Whether this handle may write (closing one that may not does no I/O).
    pub fn writable(&self) -> bool {
        self.opts.write
    }

    /// Whether this handle may read.
    pub fn readable(&self) -> bool {
        self.opts.read
    }

    /// Whether closing this handle has the upload gate (the scanner) read
    /// the whole file, which takes as long as the scanner does.
    pub fn scanned_at_close(&self) -> bool {
        self.upload
            .as_ref()
            .is_some_and(|u| u.gate.as_ref().is_some_and(|g| g.checks()))
    }

    /// Attributes of the open file.
    pub fn attributes(&self) -> Result<Attributes, StoreError> {
        let state = lock(&self.state);
        let meta = state.blob_meta()?;
        let pending = lock(&self.pending);
        let (atime, mtime) = pending.times.unwrap_or((meta.atime, meta.mtime));
        Ok(Attributes {
            kind: meta.kind,
            size: state.size(),
            permissions: pending.permissions.unwrap_or(meta.permissions),
            uid: meta.uid,
            gid: meta.gid,
            nlink: meta.nlink,
            atime,
            mtime,
        })
    }

    /// Truncates or extends to `size` plaintext bytes.
    pub fn set_len(&self, size: u64) -> Result<(), StoreError> {
        if !self.opts.write {
            return Err(StoreError::WrongAccess("writing"));
        }
        self.modified.store(true, Ordering::Relaxed);
        let result = lock(&self.state).set_len(size, &self.bounds);
        self.note_refusal(result)
    }

    /// Changes permission bits (deferred to close for a staged file).
    pub fn set_permissions(&self, mode: u32) -> Result<(), StoreError> {
        let mut pending = lock(&self.pending);
        if pending.commit.is_some() {
            pending.permissions = Some(mode & 0o7777);
            return Ok(());
        }
        drop(pending);
        Ok(lock(&self.state).blob().set_permissions(mode)?)
    }

    /// Changes times; applied after the last write, at close, if the file
    /// is open for writing.
    pub fn set_times(&self, atime: i64, mtime: i64) -> Result<(), StoreError> {
        if self.opts.write {
            lock(&self.pending).times = Some((atime, mtime));
            return Ok(());
        }
        Ok(lock(&self.state).blob().set_times(atime, mtime)?)
    }

    /// Writes cached data and makes it durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        lock(&self.state).sync()
    }

    /// For a handle left idle: lets go of the buffers it holds beyond the
    /// chunk it must keep, without waiting. Returns `false` when that needs
    /// a wait for writes behind the writer ([`EncryptedFile::trim_idle`],
    /// on a thread that may block). Does nothing for a handle that cannot
    /// write, or while another handle is busy with the file (that one
    /// trims when it goes idle).
    pub fn trim_idle_now(&self) -> bool {
        if !self.opts.write {
            return true;
        }
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return true,
        };
        if state.writes_behind() {
            return false;
        }
        state.drop_spares();
        true
    }

    /// As [`EncryptedFile::trim_idle_now`], waiting for the writes behind
    /// the writer first: an idle upload handle then holds about one chunk
    /// (its partial last chunk) whatever was written before. A write that
    /// fails meanwhile is reported by the next sync or close.
    pub fn trim_idle(&self) {
        if self.opts.write {
            lock(&self.state).trim_idle();
        }
    }

    /// Finishes the file: writes cached data, and for a staged file syncs it,
    /// has the upload gate check it, and moves it over its target. If this
    /// fails (or the gate rejects the file), a staged file is discarded and
    /// the previous version is left as it was.
    pub fn close(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        let mut state = lock(&self.state);
        let modified = self.modified.load(Ordering::Relaxed);
        let Some(commit) = pending.commit else {
            if self.opts.write {
                state.flush()?;
                if let Some((atime, mtime)) = pending.times {
                    state.blob().set_times(atime, mtime)?;
                }
                if modified {
                    self.announce(state.size());
                }
            }
            return Ok(());
        };
        if let (Some(limit), false) = (pending.refused, commit.copy) {
            // An upload that lost a write to the size limit: storing the
            // rest would replace the previous version with a cut-off file.
            drop(state);
            commit.discard();
            return Err(StoreError::TooLarge { limit });
        }
        if commit.copy && !modified {
            // Opened for writing but unchanged: the stored file stays, with
            // the mode and times asked for through this handle.
            drop(state);
            commit.storage.discard(commit.token);
            if let Some(up) = &self.upload {
                if let Some(mode) = pending.permissions {
                    commit.storage.set_permissions(&up.path, mode)?;
                }
                if let Some((atime, mtime)) = pending.times {
                    commit.storage.set_times(&up.path, atime, mtime)?;
                }
            }
            return Ok(());
        }
        let finish = |state: &mut FileState| -> Result<(), StoreError> {
            state.flush()?;
            if let Some(mode) = pending.permissions.or(pending.copy_mode) {
                state.blob().set_permissions(mode)?;
            }
            if let Some((atime, mtime)) = pending.times {
                state.blob().set_times(atime, mtime)?;
            }
            state.blob().sync()?;
            Ok(())
        };
        if let Err(e) = finish(&mut state).and_then(|()| self.check(&mut state)) {
            commit.discard();
            return Err(e);
        }
        commit.storage.commit(commit.token, commit.exclusive)?;
        self.announce(state.size());
        Ok(())
    }

    /// Has the upload gate (if it checks uploads) read the finished file.
    fn check(&self, state: &mut FileState) -> Result<(), StoreError> {
        let Some(ClosingUpload {
            gate: Some(gate),
            path,
        }) = &self.upload
        else {
            return Ok(());
        };
        if !gate.checks() {
            return Ok(());
        }
        let upload = Upload {
            path,
            size: state.size(),
        };
        let mut content = upload::PlaintextReader::new(state);
        let verdict = gate.check(upload, &mut content);
        // A file that could not be read back is a store failure, whatever
        // the gate made of the shortened stream.
        if let Some(e) = content.failure.take() {
            return Err(e);
        }
        verdict.map_err(|r| StoreError::Rejected { reason: r.reason })
    }

    /// Tells the gate that the file is stored.
    fn announce(&self, size: u64) {
        if let Some(ClosingUpload {
            gate: Some(gate),
            path,
        }) = &self.upload
        {
            gate.committed(Upload { path, size });
        }
    }

    /// Abandons the file: a staged file is discarded (the previous version
    /// stays); an in-place file keeps what was flushed plus the cached chunk.
    pub fn abort(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        match pending.commit {
            Some(commit) => commit.discard(),
            None => {
                let _ = lock(&self.state).flush();
            }
        }
    }
}

impl Drop for EncryptedFile {
    fn drop(&mut self) {
        // A handle dropped without close (session ended abruptly): a staged
        // upload is discarded, as an interrupted upload must not replace the
        // previous version; in-place changes are flushed.
        let pending = std::mem::take(&mut *lock(&self.pending));
        match pending.commit {
            Some(commit) => commit.discard(),
            None => {
                if self.opts.write {
                    let _ = lock(&self.state).flush();
                }
            }
        }
    }
}
