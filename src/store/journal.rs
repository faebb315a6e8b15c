//! Rollback journal for in-place extensions.
//!
//! Extending a file in place (append, resume, a write or `setstat` past the
//! end) first rewrites its last record as a full, non-final chunk and writes
//! the new final record only at the next flush: in between, the file on disk
//! ends in a chunk that is not marked last, and reads of it fail. A crash in
//! that window would leave the previous end of the file unreadable.
//!
//! So before that first rewrite, the old last record and the old stored
//! length are saved, synced, in a staged object beside the file (a
//! *journal*); it is discarded as soon as a final record ends the file
//! again. A journal left by a killed server is applied at the next start
//! ([`recover`]): the old last record is written back and the file cut to
//! its old length, which rolls the interrupted extension back to the
//! previous version (chunks rewritten in place before the end stay new, as
//! every chunk is either old or new). Only an unacknowledged operation is
//! undone: the journal is discarded before a close or fsync is answered.
//!
//! The zero records of a gap (a write or `setstat` far past the end) are
//! written after the journal and before the old last record is rewritten:
//! they lie past the old end, so the same rollback cuts them off, and an
//! extension stopped while writing them (the session ended, the server is
//! stopping: see `super::bounds`) is undone at once by cutting the file back
//! to its old length, without the journal.
//!
//! Journal bytes: `MAGIC (16) || file_id (16) || u64 old stored length ||
//! u64 record offset || u16 name length || target name || record`.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::format::{FILE_ID_LEN, FULL_RECORD_LEN, FileId, HEADER_LEN};
use super::storage::{self, ObjectPath, StagedToken, Storage, SweepReport};

/// Marks a staged object as a journal (uploads start with the format's
/// `DZSTORE\0` magic instead).
const MAGIC: &[u8; 16] = b"DZJOURNAL v1\0\0\0\0";

/// Where the file's journal goes: its storage and path.
pub(crate) struct JournalTarget {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) path: ObjectPath,
}

/// An active journal: discarding it commits the extension.
pub(crate) struct Journal {
    token: StagedToken,
    storage: Arc<dyn Storage>,
    /// What to put back: the old last record, where it was, the old length.
    record: Vec<u8>,
    record_offset: u64,
    stored_len: u64,
    /// Kept open: its lock tells a sweep in another process that this
    /// journal is live.
    _blob: Box<dyn super::storage::Blob>,
}

impl Journal {
    /// Saves `record` (the file's last record, at `record_offset`) and the
    /// file's `stored_len`, durably, beside the file.
    pub(crate) fn begin(
        target: &JournalTarget,
        id: &FileId,
        stored_len: u64,
        record_offset: u64,
        record: &[u8],
    ) -> io::Result<Journal> {
        let name = target.path.file_name().unwrap_or_default().as_bytes();
        let mut bytes = Vec::with_capacity(64 + name.len() + record.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&id.0);
        bytes.extend_from_slice(&stored_len.to_be_bytes());
        bytes.extend_from_slice(&record_offset.to_be_bytes());
        bytes.extend_from_slice(&(name.len() as u16).to_be_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(record);
        let staged = target.storage.stage(&target.path)?;
        let written = staged
            .blob
            .write_all_at(&bytes, 0)
            .and_then(|()| staged.blob.sync());
        if let Err(e) = written {
            target.storage.discard(staged.token);
            return Err(e);
        }
        Ok(Journal {
            token: staged.token,
            storage: target.storage.clone(),
            record: record.to_vec(),
            record_offset,
            stored_len,
            _blob: staged.blob,
        })
    }

    /// The file ends in a final record again: the journal is not needed.
    pub(crate) fn end(self) {
        self.storage.discard(self.token);
    }

    /// The extension failed (a write error) and no handle is left to finish
    /// it: puts the old end back now, as the next start would. If that
    /// fails too, the journal stays for the next start.
    pub(crate) fn roll_back(self, blob: &dyn super::storage::Blob) {
        let restored = blob
            .write_all_at(&self.record, self.record_offset)
            .and_then(|()| blob.set_len(self.stored_len))
            .and_then(|()| blob.sync());
        if restored.is_ok() {
            self.storage.discard(self.token);
        }
    }
}

/// What [`recover`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Abandoned staged objects (uploads and journals) removed.
    pub swept: SweepReport,
    /// Interrupted extensions rolled back from their journal.
    pub rolled_back: u64,
}

/// At start-up, before any session: applies the journals and removes the
/// staged uploads that a killed server left under `dir` (see
/// [`storage::sweep_staged`] for which ones count as abandoned).
pub fn recover(dir: &Path, started: SystemTime) -> io::Result<Recovery> {
    let mut rolled_back = 0;
    let swept = storage::sweep_staged(dir, started, &mut |parent, staged| {
        if apply(parent, staged)? {
            rolled_back += 1;
        }
        Ok(())
    })?;
    Ok(Recovery { swept, rolled_back })
}

/// Applies `staged` if it is a journal whose file is still there with the
/// same id; returns whether it rolled a file back. An error keeps the
/// journal for a later start.
fn apply(parent: &Path, staged: &File) -> io::Result<bool> {
    let len = staged.metadata()?.len();
    let mut head = [0u8; 16 + FILE_ID_LEN + 8 + 8 + 2];
    if len < head.len() as u64 || staged.read_exact_at(&mut head, 0).is_err() {
        return Ok(false);
    }
    if &head[..16] != MAGIC {
        return Ok(false); // an upload
    }
    let id = &head[16..16 + FILE_ID_LEN];
    let field = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().unwrap_or([0; 8]));
    let old_len = field(32);
    let record_offset = field(40);
    let name_len = usize::from(u16::from_be_bytes([head[48], head[49]]));
    let record_len = len.saturating_sub((head.len() + name_len) as u64);
    if name_len == 0 || name_len > 255 || record_len > FULL_RECORD_LEN as u64 {
        return Ok(false);
    }
    let mut name = vec![0u8; name_len];
    staged.read_exact_at(&mut name, head.len() as u64)?;
    let mut record = vec![0u8; record_len as usize];
    staged.read_exact_at(&mut record, (head.len() + name_len) as u64)?;
    if name.contains(&b'/') || name == b"." || name == b".." {
        return Ok(false);
    }
    let target = parent.join(std::ffi::OsStr::from_bytes(&name));
    // The file itself, not a symlink planted in its place.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&target)
    {
        Ok(f) => f,
        // Removed or renamed since: nothing to roll back.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut header = [0u8; HEADER_LEN];
    if !file.metadata()?.is_file()
        || file.read_exact_at(&mut header, 0).is_err()
        || &header[16..16 + FILE_ID_LEN] != id
    {
        // Another file now has that name.
        return Ok(false);
    }
    if record_offset + record_len != old_len || record_offset < HEADER_LEN as u64 {
        return Ok(false);
    }
    file.write_all_at(&record, record_offset)?;
    file.set_len(old_len)?;
    file.sync_all()?;
    Ok(true)
}
