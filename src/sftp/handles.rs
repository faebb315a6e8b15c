//! The handle table of one SFTP session: its open files and directory
//! listings, by the opaque names the client is given.
//!
//! Each handle holds its place under the connection's, the user's and the
//! server's handle caps (a [`HandleCharge`], see `super::budget`) until the
//! handle is gone and its work done. A file handle's entry holds the queue
//! of its worker (`super::worker`), which runs the requests on that file.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use russh_sftp::protocol::File;
use tokio::sync::mpsc;

use super::budget::HandleCharge;
use super::worker::QueuedJob;
use crate::store::storage::ObjectPath;
use crate::store::{DirStream, EncryptedFile};
use crate::sync::lock;

/// An open directory, read a batch at a time as READDIRs come: what it
/// holds is one directory descriptor, the reader's buffer and at most one
/// reply's worth of entries, whatever the directory's size.
pub(super) struct DirListing {
    pub(super) path: ObjectPath,
    state: Mutex<DirState>,
    _charge: HandleCharge,
}

/// Where a listing is.
pub(super) struct DirState {
    /// The directory's entries not yet read.
    pub(super) stream: DirStream,
    /// Entries read and not yet sent (`.` and `..` at first; those of a
    /// batch that did not fit in the last reply).
    pub(super) pending: VecDeque<File>,
}

impl DirListing {
    /// A listing of `path` that sends `first` (`.` and `..`) before what
    /// `stream` reads.
    pub(super) fn new(
        path: ObjectPath,
        stream: DirStream,
        first: Vec<File>,
        charge: HandleCharge,
    ) -> Self {
        DirListing {
            path,
            state: Mutex::new(DirState {
                stream,
                pending: first.into(),
            }),
            _charge: charge,
        }
    }

    /// The listing's state, for the next reply.
    pub(super) fn state(&self) -> MutexGuard<'_, DirState> {
        lock(&self.state)
    }
}

enum Entry {
    File {
        queue: mpsc::Sender<QueuedJob>,
        file: Arc<EncryptedFile>,
        /// The path as the user sees it, for events about the handle.
        path: Arc<str>,
        /// Shared with the handle's worker: the place is given back once
        /// the handle is closed and its worker has let go of the file.
        _charge: Arc<HandleCharge>,
    },
    Dir(Arc<DirListing>),
}

/// Open handles by their opaque name. Their number is capped by the
/// charges each takes before it is opened, not here.
pub(super) struct HandleTable {
    entries: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
}

impl HandleTable {
    pub(super) fn new() -> Self {
        HandleTable {
            entries: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    fn insert(&self, entry: Entry) -> String {
        let name = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        lock(&self.entries).insert(name.clone(), entry);
        name
    }

    pub(super) fn add_file(
        &self,
        queue: mpsc::Sender<QueuedJob>,
        file: Arc<EncryptedFile>,
        path: &str,
        charge: Arc<HandleCharge>,
    ) -> String {
        self.insert(Entry::File {
            queue,
            file,
            path: path.into(),
            _charge: charge,
        })
    }

    pub(super) fn add_dir(&self, listing: DirListing) -> String {
        self.insert(Entry::Dir(Arc::new(listing)))
    }

    pub(super) fn file_queue(&self, handle: &str) -> Option<mpsc::Sender<QueuedJob>> {
        match lock(&self.entries).get(handle) {
            Some(Entry::File { queue, .. }) => Some(queue.clone()),
            _ => None,
        }
    }

    pub(super) fn file(&self, handle: &str) -> Option<Arc<EncryptedFile>> {
        self.file_and_path(handle).map(|(file, _)| file)
    }

    /// An open file and its path as the user sees it.
    pub(super) fn file_and_path(&self, handle: &str) -> Option<(Arc<EncryptedFile>, Arc<str>)> {
        match lock(&self.entries).get(handle) {
            Some(Entry::File { file, path, .. }) => Some((file.clone(), path.clone())),
            _ => None,
        }
    }

    pub(super) fn dir(&self, handle: &str) -> Option<Arc<DirListing>> {
        match lock(&self.entries).get(handle) {
            Some(Entry::Dir(d)) => Some(d.clone()),
            _ => None,
        }
    }

    pub(super) fn remove_dir(&self, handle: &str) -> bool {
        let mut entries = lock(&self.entries);
        if matches!(entries.get(handle), Some(Entry::Dir(_))) {
            entries.remove(handle);
            return true;
        }
        false
    }

    pub(super) fn remove_file(&self, handle: &str) {
        lock(&self.entries).remove(handle);
    }

    /// Drops every handle (end of session).
    pub(super) fn clear(&self) {
        lock(&self.entries).clear();
    }
}
