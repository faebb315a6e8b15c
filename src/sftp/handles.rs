//! The handle table of one SFTP session and the per-file workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use russh_sftp::protocol::{File, FileAttributes};
use tokio::sync::mpsc;

use super::status::SftpError;
use super::{FileNotice, Session, file_job, outcome_of_reply};
use crate::observe::{EventKind, Transfer};
use crate::store::EncryptedFile;
use crate::store::storage::ObjectPath;

/// Most jobs a handle's worker runs in one trip to a blocking thread.
const BATCH: usize = 16;

/// Work for a file handle's worker, answered in order.
pub(super) enum FileJob {
    Read {
        id: u32,
        offset: u64,
        len: u32,
    },
    Write {
        id: u32,
        offset: u64,
        data: bytes::Bytes,
    },
    Fstat {
        id: u32,
    },
    SetStat {
        id: u32,
        attrs: FileAttributes,
    },
    Extended {
        id: u32,
        request: String,
        data: Vec<u8>,
    },
    Close {
        id: u32,
    },
}

impl FileJob {
    /// What the job holds or will hold in memory, in KiB (at least 1), for
    /// the session's in-flight budget.
    pub(super) fn cost_kib(&self) -> u32 {
        let bytes = match self {
            FileJob::Read { len, .. } => (*len).min(super::MAX_READ_WRITE_LEN) as usize,
            FileJob::Write { data, .. } => data.len(),
            FileJob::Extended { data, .. } => data.len(),
            _ => 0,
        };
        (bytes / 1024 + 1) as u32
    }
}

/// A job and its share of the session's in-flight budget, released when the
/// reply has been handed on.
pub(super) type QueuedJob = (FileJob, tokio::sync::OwnedSemaphorePermit);

/// A directory listing, read once at OPENDIR and handed out in batches.
pub(super) struct DirListing {
    pub(super) path: ObjectPath,
    remaining: Mutex<std::vec::IntoIter<File>>,
}

impl DirListing {
    pub(super) fn new(path: ObjectPath, files: Vec<File>) -> Self {
        DirListing {
            path,
            remaining: Mutex::new(files.into_iter()),
        }
    }

    pub(super) fn next_batch(&self, n: usize) -> Vec<File> {
        lock(&self.remaining).by_ref().take(n).collect()
    }
}

enum Entry {
    File {
        queue: mpsc::Sender<QueuedJob>,
        file: Arc<EncryptedFile>,
    },
    Dir(Arc<DirListing>),
}

/// Open handles by their opaque name.
pub(super) struct HandleTable {
    entries: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
    max: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HandleTable {
    pub(super) fn new(max: usize) -> Self {
        HandleTable {
            entries: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            max,
        }
    }

    fn insert(&self, entry: Entry) -> Result<String, SftpError> {
        let mut entries = lock(&self.entries);
        if entries.len() >= self.max {
            return Err(SftpError::TooManyHandles);
        }
        let name = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        entries.insert(name.clone(), entry);
        Ok(name)
    }

    pub(super) fn add_file(
        &self,
        queue: mpsc::Sender<QueuedJob>,
        file: Arc<EncryptedFile>,
    ) -> Result<String, SftpError> {
        self.insert(Entry::File { queue, file })
    }

    pub(super) fn add_dir(&self, listing: DirListing) -> Result<String, SftpError> {
        self.insert(Entry::Dir(Arc::new(listing)))
    }

    pub(super) fn file_queue(&self, handle: &str) -> Option<mpsc::Sender<QueuedJob>> {
        match lock(&self.entries).get(handle) {
            Some(Entry::File { queue, .. }) => Some(queue.clone()),
            _ => None,
        }
    }

    pub(super) fn file(&self, handle: &str) -> Option<Arc<EncryptedFile>> {
        match lock(&self.entries).get(handle) {
            Some(Entry::File { file, .. }) => Some(file.clone()),
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

/// Runs the jobs of one file handle in order until it is closed or the
/// session ends. An unclosed file is dropped, which discards a staged upload.
/// `transfer` is reported at the close, or as aborted if the worker ends
/// without one.
pub(super) async fn run_worker(
    session: Arc<Session>,
    file: Arc<EncryptedFile>,
    path: String,
    mut jobs: mpsc::Receiver<QueuedJob>,
    mut transfer: Transfer,
) {
    // Each notice once per handle: a download with 64 reads in flight
    // fails 64 times.
    let mut integrity_failed = false;
    let mut out_of_space = false;
    let mut batch: Vec<QueuedJob> = Vec::with_capacity(BATCH);
    loop {
        // Take what is queued, up to BATCH jobs, and run them in one trip to
        // a blocking thread: a hand-off costs tens of microseconds here,
        // as much as encrypting a 32 KiB write.
        if jobs.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let closing = batch
            .iter()
            .position(|(job, _)| matches!(job, FileJob::Close { .. }));
        // Nothing after a CLOSE runs: the handle is gone for the client.
        if let Some(at) = closing {
            batch.truncate(at + 1);
        }
        let (s, f) = (session.clone(), file.clone());
        let run = std::mem::take(&mut batch);
        let done = tokio::task::spawn_blocking(move || {
            run.into_iter()
                .map(|(job, permit)| (file_job(&s, &f, job), permit))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(done) = done else { return };
        let last = done.len();
        for (i, (done, permit)) in done.into_iter().enumerate() {
            match &done.notice {
                Some(FileNotice::Integrity) if !integrity_failed => {
                    integrity_failed = true;
                    session.integrity_notice(&path);
                }
                Some(FileNotice::NoSpace) if !out_of_space => {
                    out_of_space = true;
                    session.no_space_notice(&path);
                }
                Some(FileNotice::Rejected(reason)) => {
                    transfer.rejected(reason);
                    session.rejection_notice(&path, reason);
                }
                _ => {}
            }
            if done.received > 0 {
                transfer.received(done.received);
            }
            if done.sent > 0 {
                transfer.sent(done.sent);
            }
            if done.setstat {
                session.events.operation(
                    EventKind::Setstat,
                    &path,
                    None,
                    done.took,
                    outcome_of_reply(&done.reply),
                );
            }
            // The transfer's outcome when this is its CLOSE: a handle that
            // met a damaged chunk is reported as failed, whatever its close
            // says.
            let closed = (closing.is_some() && i + 1 == last).then(|| {
                if integrity_failed {
                    Err(("failure", "the file failed its integrity check".to_owned()))
                } else {
                    outcome_of_reply(&done.reply)
                }
            });
            // A DATA reply keeps its budget until it is written: queued
            // replies count against the session's memory too.
            let reply = match done.reply {
                super::Reply::Encoded(bytes, None) => super::Reply::Encoded(bytes, Some(permit)),
                other => {
                    drop(permit);
                    other
                }
            };
            if let Some(outcome) = closed {
                // Reported before the reply leaves: the event is queued
                // before the client sees its close answered.
                transfer.finish(outcome);
                let _ = session.replies.send(reply).await;
                return;
            }
            let sent = session.replies.send(reply).await;
            if sent.is_err() {
                return;
            }
        }
    }
}
