//! An open encrypted file, [`EncryptedFile`] (one SFTP handle), and what
//! it still has to do at close: commit a staged upload over its target,
//! have the upload gate check it, or discard it and the empty placeholder
//! that held a new file's name; and how its growth is counted against the
//! user's quota ([`Charge`], see [`super::quota`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::bounds::Bounds;
use super::dir::attributes_in;
use super::file::FileState;
use super::quota::{QuotaAccount, QuotaExceeded};
use super::storage::{Kind, ObjectPath, StagedToken, Storage};
use super::{Attributes, OpenOptions, StoreError, Upload, UploadGate, upload};
use crate::sync::lock;

/// How one handle's growth is counted against its user's quota.
pub(super) struct Charge {
    pub(super) account: Arc<QuotaAccount>,
    /// For a staged file: the size its target already counts for (the
    /// replaced file's at open, 0 for a new file); growth beyond it is
    /// reserved until the commit. `None` for a file changed in place,
    /// whose growth is stored, and so counted, at once.
    pub(super) baseline: Option<u64>,
    /// For a staged file: the bytes it has reserved (its size beyond the
    /// baseline). Changed under the file's lock.
    pub(super) reserved: AtomicU64,
}

impl Charge {
    /// A charge on `account` for a file staged over a target of `baseline`
    /// bytes (`Some`) or changed in place (`None`).
    pub(super) fn new(account: Arc<QuotaAccount>, baseline: Option<u64>) -> Self {
        Charge {
            account,
            baseline,
            reserved: AtomicU64::new(0),
        }
    }

    /// What a file of `size` bytes adds to the books.
    fn counted(&self, size: u64) -> u64 {
        match self.baseline {
            Some(base) => size.saturating_sub(base),
            None => size,
        }
    }

    /// What growing the file from `size` to `end` bytes would add.
    fn cost(&self, size: u64, end: u64) -> u64 {
        self.counted(end.max(size)) - self.counted(size)
    }

    /// Claims the cost of growing from `size` to `end` (reserved for a
    /// staged file, stored for one changed in place), or fails with nothing
    /// claimed. Returns what was claimed, for [`Charge::settle`].
    fn claim(&self, size: u64, end: u64) -> Result<u64, QuotaExceeded> {
        let cost = self.cost(size, end);
        match self.baseline {
            Some(_) => self.account.reserve(cost)?,
            None => self.account.charge(cost)?,
        }
        Ok(cost)
    }

    /// Brings the books in line with what an operation that claimed
    /// `claimed` did: the file went from `before` to `after` bytes (less
    /// than claimed if it failed, less than before if it shrank).
    fn settle(&self, before: u64, after: u64, claimed: u64) {
        let (was, now) = (self.counted(before), self.counted(after));
        // The books hold `was + claimed` for this file; they should hold `now`.
        let held = was.saturating_add(claimed);
        let staged = self.baseline.is_some();
        match now.cmp(&held) {
            std::cmp::Ordering::Less if staged => self.account.unreserve(held - now),
            std::cmp::Ordering::Less => self.account.credit(held - now),
            std::cmp::Ordering::Greater if staged => self.account.add_reserved(now - held),
            std::cmp::Ordering::Greater => self.account.add_used(now - held),
            std::cmp::Ordering::Equal => {}
        }
        if staged {
            self.reserved.store(now, Ordering::Relaxed);
        }
    }

    /// Gives back what a staged file reserved (it is discarded, or its
    /// reservation has been settled).
    fn release(&self) -> u64 {
        let n = self.reserved.swap(0, Ordering::Relaxed);
        self.account.unreserve(n);
        n
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

/// What committing over `path` replaces, for the quota: the plaintext
/// bytes that go and the files that come (1 where no file goes: a free
/// name, a link, or a file that stays under another hard link).
fn replaced_at(storage: &dyn Storage, path: &ObjectPath) -> (u64, u64) {
    match storage.meta(path, false) {
        Ok(m) if m.kind == Kind::File && m.nlink <= 1 => (attributes_in(storage, path, m).size, 0),
        _ => (0, 1),
    }
}

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
    /// behind: an empty, valid file (counted by a quota scan).
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
    /// The quota account its file is counted in, if any.
    pub(super) quota: Option<Arc<QuotaAccount>>,
}

impl Placeholder {
    /// Removes the placeholder if `path` still names it (nobody replaced
    /// it meanwhile); best effort, as the upload has failed already.
    fn remove(&self, storage: &dyn Storage) {
        let names = self.quota.as_ref().map(|a| a.hold_names());
        let ours = storage
            .meta(&self.path, false)
            .is_ok_and(|m| m.kind == Kind::File && m.identity == self.identity);
        if !ours {
            return;
        }
        let removed = storage.remove(&self.path);
        drop(names);
        match (removed, &self.quota) {
            (Ok(()), Some(account)) => account.removed(0, 1),
            (Ok(()), None) => {}
            (Err(e), _) => {
                tracing::warn!(error = %e, "could not remove a failed upload's empty placeholder")
            }
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
    /// The size limit or quota a write or extension through this handle
    /// ran into. An upload (a staged file that is not a copy-on-open) that
    /// lost a write to it is incomplete: close discards it, and the
    /// previous version stays.
    pub(super) refused: Option<Refusal>,
    /// Set for a stored file replaced rather than changed in place (see
    /// [`Replacing`]).
    pub(super) replacing: Option<Replacing>,
}

/// A stored file opened write-only without truncation or append on a
/// storage that cannot change it in place (an object store): the writes go
/// to a staged replacement, written from the start in order, as OpenSSH's
/// scp does (it writes the whole file in place, then sets its size). The
/// replacement is stored at close only if it holds the whole new content:
/// at least the stored file's size, or a size the client set. Otherwise it
/// is discarded and the stored version stays, since a partial rewrite
/// would lose the stored bytes after it.
#[derive(Clone, Copy)]
pub(super) struct Replacing {
    /// The stored file's plaintext size at open.
    pub(super) stored_size: u64,
    /// Whether the client set the size (SETSTAT or ftruncate).
    pub(super) size_set: bool,
}

/// A limit that refused a write (see `Pending::refused`).
#[derive(Clone, Copy)]
pub(super) enum Refusal {
    /// The size limit, in bytes.
    TooLarge(u64),
    /// The user's quota.
    Quota(QuotaExceeded),
}

impl Refusal {
    /// The refusal of `e`, if it is one.
    fn of(e: &StoreError) -> Option<Refusal> {
        match e {
            StoreError::TooLarge { limit } => Some(Refusal::TooLarge(*limit)),
            StoreError::Quota(q) => Some(Refusal::Quota(*q)),
            _ => None,
        }
    }

    /// The error that close reports for it.
    fn error(self) -> StoreError {
        match self {
            Refusal::TooLarge(limit) => StoreError::TooLarge { limit },
            Refusal::Quota(q) => StoreError::Quota(q),
        }
    }
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
    /// Set for a writable file of a store with a quota.
    pub(super) charge: Option<Charge>,
    /// Whether this handle replaces a stored file rather than changing it
    /// (see [`Replacing`], kept in `pending`); fixed at open, so that a
    /// write checks it without a lock.
    pub(super) replaces: bool,
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
        if self.replaces && offset > state.size() {
            return Err(super::storage::unsupported(format!(
                "this storage replaces a stored file opened without truncation: write it from \
                 its start, in order (a write at offset {offset} would leave a gap after byte {})",
                state.size()
            ))
            .into());
        }
        self.modified.store(true, Ordering::Relaxed);
        let end = offset.checked_add(data.len() as u64);
        let written =
            self.within_quota(&mut state, end, |s| s.write_at(offset, data, &self.bounds));
        drop(state);
        self.note_refusal(written)
    }

    /// Runs `op`, which changes the file's size to at most `end` (`None`:
    /// past `u64::MAX`), with its growth claimed from the quota first: a
    /// growth the quota refuses fails before anything is written.
    fn within_quota(
        &self,
        state: &mut FileState,
        end: Option<u64>,
        op: impl FnOnce(&mut FileState) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Some(charge) = &self.charge else {
            return op(state);
        };
        let before = state.size();
        // The size limit's refusal comes first: it says more.
        self.bounds.check_growth(before, end)?;
        let claimed = charge.claim(before, end.unwrap_or(u64::MAX))?;
        let result = op(state);
        charge.settle(before, state.size(), claimed);
        result
    }

    /// Remembers a refusal by the size limit or the quota for `close` (see
    /// `Pending::refused`).
    fn note_refusal(&self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        if let Some(refusal) = result.as_ref().err().and_then(Refusal::of) {
            lock(&self.pending).refused.get_or_insert(refusal);
        }
        result
    }

    /// Fails with [`StoreError::TooLarge`] if growing this file to `end`
    /// bytes would pass the store's limit, or [`StoreError::Quota`] if the
    /// user's quota has no room for it now, as a write ending there would:
    /// for work that checks before it starts (a copy).
    pub fn check_growth(&self, end: Option<u64>) -> Result<(), StoreError> {
        let size = self.size();
        self.bounds.check_growth(size, end)?;
        if let Some(charge) = &self.charge {
            let cost = charge.cost(size, end.unwrap_or(u64::MAX));
            charge.account.check_room(cost)?;
        }
        Ok(())
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
        if let Some(r) = &mut lock(&self.pending).replacing {
            r.size_set = true;
        }
        let mut state = lock(&self.state);
        let result = self.within_quota(&mut state, Some(size), |s| s.set_len(size, &self.bounds));
        drop(state);
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
                // An object store's rewrite becomes visible now (a local
                // file's writes already are).
                state.blob().publish()?;
                if modified {
                    if let Some(charge) = &self.charge {
                        // Growth in place is counted already; the record
                        // hears of it now.
                        charge.account.changed();
                    }
                    self.announce(state.size());
                }
            }
            return Ok(());
        };
        if let (Some(refusal), false) = (pending.refused, commit.copy) {
            // An upload that lost a write to the size limit or the quota:
            // storing the rest would replace the previous version with a
            // cut-off file.
            drop(state);
            commit.discard();
            self.release_charge();
            return Err(refusal.error());
        }
        if let Some(r) = pending.replacing
            && !r.size_set
            && state.size() < r.stored_size
        {
            // A replacement without the whole new content: the stored
            // file stays (see `Replacing`).
            let written = state.size();
            drop(state);
            let storage = commit.storage.clone();
            commit.discard();
            self.release_charge();
            if modified {
                return Err(super::storage::unsupported(format!(
                    "this storage replaces a stored file opened without truncation, and only \
                     its first {written} of {} bytes were written: the stored version is kept \
                     (write the whole file, or open it with truncation)",
                    r.stored_size
                ))
                .into());
            }
            if let Some(up) = &self.upload {
                if let Some(mode) = pending.permissions {
                    storage.set_permissions(&up.path, mode)?;
                }
                if let Some((atime, mtime)) = pending.times {
                    storage.set_times(&up.path, atime, mtime)?;
                }
            }
            return Ok(());
        }
        if commit.copy && !modified {
            // Opened for writing but unchanged: the stored file stays, with
            // the mode and times asked for through this handle.
            drop(state);
            commit.storage.discard(commit.token);
            self.release_charge();
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
            self.release_charge();
            return Err(e);
        }
        let names = self.charge.as_ref().map(|c| c.account.hold_names());
        let replaced = match (&self.charge, &self.upload) {
            (Some(_), Some(up)) => replaced_at(&*commit.storage, &up.path),
            _ => (0, 0),
        };
        if let Some(charge) = &self.charge {
            // The upload reserved only its growth beyond the file it was to
            // replace; if that file is smaller now (removed meanwhile), the
            // difference must fit too.
            let reserved = charge.reserved.load(Ordering::Relaxed);
            if let Err(e) = charge
                .account
                .check_commit(reserved, state.size(), replaced.0)
            {
                drop(names);
                commit.discard();
                self.release_charge();
                return Err(e.into());
            }
        }
        let committed = commit.storage.commit(commit.token, commit.exclusive);
        drop(names);
        if let Err(e) = committed {
            self.release_charge();
            return Err(e.into());
        }
        let size = state.size();
        if let Some(charge) = &self.charge {
            let reserved = charge.reserved.swap(0, Ordering::Relaxed);
            charge
                .account
                .committed(reserved, size, replaced.0, replaced.1);
        }
        self.announce(size);
        Ok(())
    }

    /// Gives back what this handle reserved from the quota (its upload is
    /// not stored).
    fn release_charge(&self) {
        if let Some(charge) = &self.charge {
            charge.release();
        }
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
            Some(commit) => {
                commit.discard();
                self.release_charge();
            }
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
