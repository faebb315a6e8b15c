//! The worker of one open file: the jobs queued on a file handle (READ,
//! WRITE, FSTAT, FSETSTAT, the handle extensions, CLOSE), run in order by a
//! task of the handle's own.
//!
//! The worker takes a run of queued jobs at a time ([`take_runnable`], which
//! also takes each READ's share of the reply budget), runs it on the
//! session's thread when it is small ([`runs_inline`]) or on a blocking
//! thread, then sends the replies, tells the user on stderr what failed
//! (`super::notice`, each kind once per handle) and reports the transfer.
//! An upload left open lets go of its buffers once it has waited a moment
//! for its next request ([`trim_idle`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use russh_sftp::protocol::{Attrs, FileAttributes, Packet, StatusCode};
use tokio::sync::{TryAcquireError, mpsc};

use super::budget::{HandleCharge, Share};
use super::notice::Notice;
use super::paths::{check_owner, client_mode, setstat_needs};
use super::status::SftpError;
use super::{
    MAX_READ_WRITE_LEN, Reply, Session, attrs, error_reply, extensions, ok, outcome_of_reply,
    reply_of, status, wire,
};
use crate::observe::{EventKind, Transfer};
use crate::store::{EncryptedFile, StoreError};

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
    /// What the request brings into memory, in KiB, charged to the
    /// connection's in-flight budget for requests before it is queued: the data of a WRITE (or of a
    /// handle extension). A READ brings nothing; its reply is charged by the
    /// worker, see [`FileJob::reply_kib`].
    pub(super) fn request_kib(&self) -> u32 {
        let bytes = match self {
            FileJob::Write { data, .. } => data.len(),
            FileJob::Extended { data, .. } => data.len(),
            _ => return 0,
        };
        (bytes / 1024 + 1) as u32
    }

    /// What the reply will hold, in KiB, for jobs whose reply is large: the
    /// data of a READ.
    fn reply_kib(&self) -> Option<u32> {
        match self {
            FileJob::Read { len, .. } => {
                Some(((*len).min(MAX_READ_WRITE_LEN) as usize / 1024 + 1) as u32)
            }
            _ => None,
        }
    }
}

/// A job's shares of the connection's in-flight budgets, each released
/// when the reply has been handed on, or for a DATA reply, written.
#[derive(Default)]
pub(super) struct Held {
    /// For the data the request brought (taken before it is queued).
    request: Option<Share>,
    /// For the data its reply will hold (a READ's, taken by the worker).
    reply: Option<Share>,
}

impl Held {
    /// A job holding `request` for the data it brought.
    pub(super) fn request(request: Option<Share>) -> Self {
        Held {
            request,
            reply: None,
        }
    }
}

/// A job and its shares of the in-flight budgets.
pub(super) type QueuedJob = (FileJob, Held);

/// Runs the jobs of one file handle in order until it is closed or the
/// session ends. An unclosed file is dropped, which discards a staged upload.
/// `transfer` is reported at the close, or as aborted if the worker ends
/// without one. `charge` is the handle's place under the caps, held while
/// the worker holds the file.
pub(super) async fn run_worker(
    session: Arc<Session>,
    file: Arc<EncryptedFile>,
    path: String,
    mut jobs: mpsc::Receiver<QueuedJob>,
    mut transfer: Transfer,
    charge: Arc<HandleCharge>,
) {
    let _charge = charge;
    // Each notice once per handle (see `Told`).
    let mut told = Told::default();
    let mut queued: VecDeque<QueuedJob> = VecDeque::with_capacity(BATCH);
    let mut arrived: Vec<QueuedJob> = Vec::with_capacity(BATCH);
    loop {
        if queued.is_empty() {
            // A handle with nothing queued is trimmed once it has waited
            // IDLE_TRIM_AFTER for its next request (see `trim_idle`).
            let next = tokio::time::timeout(IDLE_TRIM_AFTER, jobs.recv_many(&mut arrived, BATCH));
            let received = match next.await {
                Ok(received) => received,
                Err(_idle) => {
                    if !trim_idle(&file).await {
                        return;
                    }
                    jobs.recv_many(&mut arrived, BATCH).await
                }
            };
            if received == 0 {
                return;
            }
            queued.extend(arrived.drain(..));
        }
        // Take queued jobs, up to BATCH, and run them here or in one trip
        // to a blocking thread: a hand-off costs tens of microseconds here,
        // as much as encrypting a 32 KiB write.
        let Some(run) = take_runnable(&session, &mut queued).await else {
            return;
        };
        let closing = matches!(run.last(), Some((FileJob::Close { .. }, _)));
        // An object store's calls wait on the network: never here.
        let done = if !session.store.waits_on_network() && runs_inline(&file, &run) {
            run.into_iter()
                .map(|(job, held)| (file_job(&session, &file, job), held))
                .collect::<Vec<_>>()
        } else {
            let (s, f) = (session.clone(), file.clone());
            let done = tokio::task::spawn_blocking(move || {
                // A file's data moves here (see `thread_cache`).
                crate::thread_cache::resume();
                run.into_iter()
                    .map(|(job, held)| (file_job(&s, &f, job), held))
                    .collect::<Vec<_>>()
            })
            .await;
            let Ok(done) = done else { return };
            done
        };
        let last = done.len();
        for (i, (done, held)) in done.into_iter().enumerate() {
            if let Some(notice) = &done.notice {
                if let Notice::Rejected(reason) = notice {
                    transfer.rejected(reason);
                }
                if told.first(notice) {
                    session.tell(&path, notice);
                }
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
            let closed = (closing && i + 1 == last).then(|| {
                if told.integrity {
                    Err(("failure", "the file failed its integrity check".to_owned()))
                } else {
                    outcome_of_reply(&done.reply)
                }
            });
            // A DATA reply keeps its budget until it is written: queued
            // replies count against the connection's memory too.
            let Held { request, reply } = held;
            drop(request);
            let reply = match done.reply {
                Reply::Encoded(bytes, None) => Reply::Encoded(bytes, reply),
                other => {
                    drop(reply);
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
            // A client that has gone gets no replies, but what it sent is
            // still done, in order: a CLOSE it sent still commits.
            let _ = session.replies.send(reply).await;
        }
    }
}

/// How long a handle waits for its next request before it lets go of its
/// buffers ([`trim_idle`]). A streaming upload's queue runs empty many
/// times a second, whenever the worker is ahead of the network; trimming
/// each time waited for the write-behind batches and allocated (and
/// zero-filled) every record buffer anew: about 2% of an upload's CPU
/// (`perf`, one 1 GiB `sftp put`, docs/PERFORMANCE.md "Uploads").
const IDLE_TRIM_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// The notices a handle's worker has given: each kind once per handle (a
/// download with 64 reads in flight fails 64 times; a pipelined upload past
/// the limit has many writes refused), except a rejection, which comes once,
/// at the close.
#[derive(Default)]
struct Told {
    integrity: bool,
    no_space: bool,
    too_large: bool,
}

impl Told {
    /// Whether `notice` is to be told: the first of its kind on this handle.
    fn first(&mut self, notice: &Notice) -> bool {
        let given = match notice {
            Notice::Integrity => &mut self.integrity,
            Notice::NoSpace => &mut self.no_space,
            Notice::TooLarge(_) => &mut self.too_large,
            Notice::Rejected(_) => return true,
        };
        !std::mem::replace(given, true)
    }
}

/// For a handle whose worker has waited [`IDLE_TRIM_AFTER`] for its next
/// request: an upload left open lets go of its write-behind batches and
/// spare buffers (about 2 MiB after a fast write, held until the next
/// write or close otherwise), keeping only its partial chunk, so that a
/// client cannot pin megabytes per handle under `sftp.max_handles` by
/// writing and stopping. Done without leaving the session's thread unless
/// writes are still in flight. `false` if the blocking thread failed (the
/// worker then ends).
async fn trim_idle(file: &Arc<EncryptedFile>) -> bool {
    if file.trim_idle_now() {
        return true;
    }
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.trim_idle())
        .await
        .is_ok()
}

/// Most file data a run of jobs moves and still runs on the session's own
/// thread: one chunk of the store.
const INLINE_BYTES: u64 = crate::store::format::CHUNK_SIZE as u64;

/// Whether a run of jobs is small enough to run on the session's thread
/// rather than on a blocking thread: at most [`INLINE_BYTES`] of reads and
/// writes (a READ counts only what the file holds from its offset), and no
/// job whose size is unbounded (a SETSTAT may extend the file by gigabytes,
/// a handle extension may copy a whole file, a write past the end fills
/// the gap, the CLOSE of a written file larger than [`INLINE_BYTES`] syncs
/// all of it, and with uploads scanned any such CLOSE waits for the
/// scanner). A file another handle is busy with goes to a blocking thread
/// too: its lock may be held for long.
///
/// A small file is then uploaded or downloaded without any hand-off between
/// threads, which on this machine costs more than the file's own work
/// (docs/PERFORMANCE.md). Blocking here delays only this session: the SSH
/// layer runs each connection on a thread of its own. Larger runs still go
/// to a blocking thread, so that the transport's crypto and the store's
/// work overlap during a large transfer.
fn runs_inline(file: &EncryptedFile, run: &[QueuedJob]) -> bool {
    let Some(size) = file.size_if_idle() else {
        return false;
    };
    let mut bytes: u64 = 0;
    for (job, _) in run {
        bytes = bytes.saturating_add(match job {
            FileJob::Read { offset, len, .. } => size.saturating_sub(*offset).min(u64::from(*len)),
            FileJob::Write { offset, data, .. } if *offset <= size => data.len() as u64,
            FileJob::Fstat { .. } => 0,
            // Closing a written file syncs all of it.
            FileJob::Close { .. }
                if !file.writable() || (size <= INLINE_BYTES && !file.scanned_at_close()) =>
            {
                0
            }
            FileJob::Write { .. }
            | FileJob::Close { .. }
            | FileJob::SetStat { .. }
            | FileJob::Extended { .. } => return false,
        });
    }
    bytes <= INLINE_BYTES
}

/// The next jobs to run from the front of `queued`, in order: up to
/// [`BATCH`], ending at a CLOSE (nothing after it runs: the handle is gone
/// for the client). Each READ first takes its reply's share of the
/// connection's in-flight budget for replies; when the budget is spent, the
/// jobs before that READ run now and the READ waits for the budget at the
/// front of the next run.
///
/// The budget for replies is taken here, in the worker, and not where
/// requests are read: the session's reader must never stop for a READ.
/// Replies free their budget only once written, writing needs the client's
/// window adjustments, and those arrive behind the client's next requests,
/// which only the reader takes off the connection.
async fn take_runnable(
    session: &Session,
    queued: &mut VecDeque<QueuedJob>,
) -> Option<Vec<QueuedJob>> {
    let mut run: Vec<QueuedJob> = Vec::with_capacity(queued.len().min(BATCH));
    while run.len() < BATCH {
        let Some((job, mut held)) = queued.pop_front() else {
            break;
        };
        if let Some(kib) = job.reply_kib()
            && held.reply.is_none()
        {
            let budget = &session.reply_budget;
            let reply_budget = match budget.try_acquire(kib) {
                Ok(p) => p,
                Err(TryAcquireError::NoPermits) if run.is_empty() => budget.acquire(kib).await?,
                Err(TryAcquireError::NoPermits) => {
                    queued.push_front((job, held));
                    break;
                }
                Err(TryAcquireError::Closed) => return None,
            };
            held.reply = Some(reply_budget);
        }
        let close = matches!(job, FileJob::Close { .. });
        run.push((job, held));
        if close {
            queued.clear();
            break;
        }
    }
    Some(run)
}

/// What a file job did, for the worker to answer, tell and report.
struct Done {
    reply: Reply,
    /// What the user must be told on stderr about its failure.
    notice: Option<Notice>,
    /// File bytes written (from the client).
    received: u64,
    /// File bytes read (to the client).
    sent: u64,
    /// It was an FSETSTAT (reported as a `setstat` event).
    setstat: bool,
    /// How long it ran.
    took: std::time::Duration,
}

/// Executes one job on an open file (on a blocking thread, or for a small
/// run of jobs on the session's thread).
fn file_job(session: &Session, file: &EncryptedFile, job: FileJob) -> Done {
    let started = Instant::now();
    let mut notice = None;
    let mut received = 0;
    let setstat = matches!(job, FileJob::SetStat { .. });
    let mut fail = |id: u32, e: StoreError| {
        if let Some(told) = Notice::of(&e) {
            notice = Some(told);
        }
        error_reply(id, &e.into())
    };
    let reply = match job {
        // At the end: answered without taking a reply buffer.
        FileJob::Read { id, offset, .. } if file.readable() && offset >= file.size() => {
            status(id, StatusCode::Eof, "End of file")
        }
        FileJob::Read { id, offset, len } => {
            let len = len.min(MAX_READ_WRITE_LEN) as usize;
            let mut sent = 0;
            let filled = wire::data_reply(id, len, |buf| {
                let n = file.read_into(offset, len, buf)?;
                sent = n as u64;
                Ok(n)
            });
            match filled {
                Ok(Some(packet)) => {
                    return Done {
                        reply: Reply::Encoded(packet, None),
                        notice: None,
                        received: 0,
                        sent,
                        setstat: false,
                        took: started.elapsed(),
                    };
                }
                Ok(None) => status(id, StatusCode::Eof, "End of file"),
                Err(e) => fail(id, e),
            }
        }
        FileJob::Write { id, offset, data } => match file.write_at(offset, &data) {
            Ok(()) => {
                received = data.len() as u64;
                ok(id)
            }
            Err(e) => fail(id, e),
        },
        FileJob::Fstat { id } => match file.attributes() {
            Ok(a) => Packet::Attrs(Attrs {
                id,
                attrs: attrs::to_sftp(&a),
            }),
            Err(e) => fail(id, e),
        },
        FileJob::SetStat { id, attrs } => reply_of(
            id,
            session
                .check(&setstat_needs(&attrs))
                .and_then(|()| fsetstat(file, &attrs))
                .map(|()| ok(id)),
        ),
        FileJob::Close { id } => match file.close() {
            Ok(()) => ok(id),
            Err(e) => fail(id, e),
        },
        FileJob::Extended { id, request, data } => reply_of(
            id,
            extensions::handle_extension(session, id, file, &request, &data)
                .map(|p| p.unwrap_or_else(|| ok(id))),
        ),
    };
    Done {
        reply: Reply::Packet(reply),
        notice,
        received,
        sent: 0,
        setstat,
        took: started.elapsed(),
    }
}

/// FSETSTAT: as SETSTAT (`super::paths`), on the open file.
fn fsetstat(file: &EncryptedFile, a: &FileAttributes) -> Result<(), SftpError> {
    let current = file.attributes()?;
    check_owner(a, &current)?;
    if let Some(size) = a.size {
        file.set_len(size)?;
    }
    if let Some(p) = a.permissions {
        file.set_permissions(client_mode(p))?;
    }
    if let (Some(at), Some(mt)) = (a.atime, a.mtime) {
        file.set_times(i64::from(at), i64::from(mt))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DataKey;
    use crate::store::storage::{LocalStorage, ObjectPath};
    use crate::store::{OpenOptions, UserStore};

    fn run(jobs: Vec<FileJob>) -> Vec<QueuedJob> {
        jobs.into_iter().map(|job| (job, Held::default())).collect()
    }

    fn read(offset: u64, len: u32) -> FileJob {
        FileJob::Read { id: 1, offset, len }
    }

    fn write(offset: u64, len: usize) -> FileJob {
        FileJob::Write {
            id: 1,
            offset,
            data: bytes::Bytes::from(vec![7u8; len]),
        }
    }

    #[test]
    fn small_runs_stay_on_the_session_thread_and_unbounded_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open_root(dir.path()).unwrap();
        let store = UserStore::new(Arc::new(storage), Arc::new(DataKey::from_bytes([3; 32])));
        let path = ObjectPath::from_components(["f"]).unwrap();
        let create = OpenOptions {
            write: true,
            create: true,
            truncate: true,
            ..OpenOptions::default()
        };
        let f = store.open(&path, create).unwrap();
        f.write_at(0, &[1u8; 100]).unwrap();
        f.close().unwrap();
        let rw = OpenOptions {
            read: true,
            write: true,
            ..OpenOptions::default()
        };
        let file = store.open(&path, rw).unwrap();

        let close = FileJob::Close { id: 2 };
        let fstat = FileJob::Fstat { id: 3 };
        // A small file's requests: its read (counted as the 100 bytes the
        // file holds, whatever the length asked), the read at the end, the
        // close.
        assert!(runs_inline(
            &file,
            &run(vec![read(0, 261_120), read(100, 32_768), close])
        ));
        assert!(runs_inline(&file, &run(vec![fstat, write(100, 4096)])));
        assert!(runs_inline(
            &file,
            &run(vec![write(0, INLINE_BYTES as usize)])
        ));
        // More than a chunk in all.
        assert!(!runs_inline(
            &file,
            &run(vec![write(0, 40_000), write(40_000, 40_000)])
        ));
        // A write past the end fills the gap with encrypted zeros.
        assert!(!runs_inline(&file, &run(vec![write(101, 1)])));
        // Work without a bound.
        let setstat = FileJob::SetStat {
            id: 4,
            attrs: FileAttributes::default(),
        };
        assert!(!runs_inline(&file, &run(vec![setstat])));
        let extension = FileJob::Extended {
            id: 5,
            request: "copy-data".into(),
            data: Vec::new(),
        };
        assert!(!runs_inline(&file, &run(vec![extension])));
        // The close of this small written file syncs little.
        assert!(runs_inline(&file, &run(vec![FileJob::Close { id: 6 }])));
        file.write_at(100, &[2u8; 70_000]).unwrap();
        // Larger than a chunk now: its close syncs more than a chunk.
        assert!(!runs_inline(&file, &run(vec![FileJob::Close { id: 7 }])));
        file.close().unwrap();
        let ro = OpenOptions {
            read: true,
            ..OpenOptions::default()
        };
        let reader = store.open(&path, ro).unwrap();
        // Closing a handle that cannot write does no I/O, whatever the size.
        assert!(runs_inline(&reader, &run(vec![FileJob::Close { id: 8 }])));
        reader.close().unwrap();
    }
}
