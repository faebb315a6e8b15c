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
    /// batch costs at most `n` small reads; on a storage that waits on the
    /// network they are made 16 at a time (`SIZE_READS_AT_ONCE`).
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<(String, Attributes)>, StoreError> {
        let entries: Vec<(String, ObjectPath, Meta)> = self
            .reader
            .next_batch(n)?
            .into_iter()
            // A name our paths cannot express is left out, as in
            // `UserStore::read_dir`.
            .filter_map(|(name, meta)| {
                let child = self.path.join(&name).ok()?;
                Some((name, child, meta))
            })
            .collect();
        Ok(attributes_of_all(&*self.storage, entries))
    }
}

/// The plaintext attributes of `entries` (name, path, metadata) of
/// `storage`, in their order: on a storage that waits on the network,
/// [`SIZE_READS_AT_ONCE`] sizes are read at a time.
pub(super) fn attributes_of_all(
    storage: &dyn Storage,
    entries: Vec<(String, ObjectPath, Meta)>,
) -> Vec<(String, Attributes)> {
    if storage.waits_on_network() {
        attributes_at_once(storage, entries)
    } else {
        entries
            .into_iter()
            .map(|(name, child, meta)| (name, attributes_in(storage, &child, meta)))
            .collect()
    }
}

/// Plaintext sizes read at once for a listing on a storage that waits on
/// the network: each is a round trip (a ranged GET of a few bytes), so a
/// directory of 1,000 files read one size after another takes 1,000 round
/// trips of the store's latency.
const SIZE_READS_AT_ONCE: usize = 16;

/// The attributes of `entries`, in their order, read on up to
/// [`SIZE_READS_AT_ONCE`] threads, each taking a run of consecutive
/// entries. A thread that cannot be started leaves its run to the caller's
/// thread.
fn attributes_at_once(
    storage: &dyn Storage,
    entries: Vec<(String, ObjectPath, Meta)>,
) -> Vec<(String, Attributes)> {
    let attributes_of = |run: &[(String, ObjectPath, Meta)]| -> Vec<(String, Attributes)> {
        run.iter()
            .map(|(name, child, meta)| (name.clone(), attributes_in(storage, child, meta.clone())))
            .collect()
    };
    if entries.len() < 2 {
        return attributes_of(&entries);
    }
    let run_len = entries.len().div_ceil(SIZE_READS_AT_ONCE);
    std::thread::scope(|scope| {
        let runs: Vec<_> = entries
            .chunks(run_len)
            .map(|run| {
                let started = std::thread::Builder::new()
                    .name("dz-sizes".into())
                    .spawn_scoped(scope, move || attributes_of(run));
                (run, started)
            })
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for (run, started) in runs {
            match started {
                Ok(thread) => match thread.join() {
                    Ok(done) => out.extend(done),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Err(_) => out.extend(attributes_of(run)),
            }
        }
        out
    })
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
