//! Directory listings and attributes in plaintext terms: a file's size is
//! what it decrypts to, read from an open handle's state or from the stored
//! file's last length field.

use std::sync::{Arc, Weak};

use super::storage::{self, Kind, Meta, ObjectPath, Storage};
use super::{Attributes, OPEN_FILES, StoreError, format};
use crate::sync::lock;

/// An open directory of a [`UserStore`](super::UserStore), read in batches
/// with plaintext sizes (see [`UserStore::open_dir`](super::UserStore::open_dir)).
pub struct DirStream {
    pub(super) reader: Box<dyn storage::DirReader>,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) path: ObjectPath,
}

impl DirStream {
    /// Up to `n` more entries with their attributes, in storage order;
    /// empty at the end. Each file's plaintext size is read here, so a
    /// batch costs at most `n` small reads.
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<(String, Attributes)>, StoreError> {
        let entries = self.reader.next_batch(n)?;
        let mut out = Vec::with_capacity(entries.len());
        for (name, meta) in entries {
            // A name our paths cannot express is left out, as in
            // `UserStore::read_dir`.
            if let Ok(child) = self.path.join(&name) {
                let attrs = attributes_in(&*self.storage, &child, meta);
                out.push((name, attrs));
            }
        }
        Ok(out)
    }
}

/// The plaintext attributes of `path` in `storage`, whose metadata is `meta`.
pub(super) fn attributes_in(storage: &dyn Storage, path: &ObjectPath, meta: Meta) -> Attributes {
    let size = if meta.kind == Kind::File {
        plaintext_size(storage, path, &meta)
    } else {
        meta.stored_len
    };
    Attributes {
        kind: meta.kind,
        size,
        permissions: meta.permissions,
        uid: meta.uid,
        gid: meta.gid,
        nlink: meta.nlink,
        atime: meta.atime,
        mtime: meta.mtime,
    }
}

/// The plaintext size of a file, from an open handle's state if one
/// exists, else from the stored length and the last length field. A file
/// that is not a valid Dropzone file shows as 0 bytes; reading it reports
/// the integrity failure.
pub(super) fn plaintext_size(storage: &dyn Storage, path: &ObjectPath, meta: &Meta) -> u64 {
    // The table is let go before the file is locked: a file busy with
    // a long job must not hold up every open and stat in the process.
    let open = lock(&OPEN_FILES)
        .get(&meta.identity)
        .and_then(Weak::upgrade);
    if let Some(state) = open {
        return lock(&state).size();
    }
    let Ok(layout) = format::Layout::from_stored_len(meta.stored_len) else {
        return 0;
    };
    let mut field = [0u8; format::LEN_FIELD];
    let last = format::record_offset(layout.chunks - 1);
    match storage.read_described(path, meta, &mut field, last) {
        Ok(()) => layout.plaintext_len(field).unwrap_or(0),
        Err(_) => 0,
    }
}
