//! SFTP v3 over the encrypted store.
//!
//! [`serve`] reads requests from the channel and dispatches them:
//!
//! - requests on an open file handle (read, write, fstat, fsetstat, fsync,
//!   close) go to that handle's own worker task, which runs them in order:
//!   work on different files proceeds concurrently, and the reader keeps
//!   decoding the next requests (OpenSSH's client keeps up to 64 in flight)
//!   while a chunk is being encrypted. A run of requests that moves at most
//!   one chunk (a small file's read, write and close) runs on the session's
//!   own thread; larger runs, and the CLOSE of a larger written file (it
//!   syncs the file) or of any written file when uploads are scanned, go to
//!   a blocking thread, so that the transport's crypto and the store's work
//!   overlap (`worker::runs_inline`);
//! - requests on paths (open, stat, mkdir, remove, rename, ...) run in
//!   arrival order on the session's thread, except those whose work has no
//!   bound (SETSTAT, extensions, OPENDIR, an OPEN for writing without
//!   TRUNC): those run on a blocking thread.
//!
//! Work on the session's thread saves two thread wake-ups per request,
//! which on the 2-core machine of docs/PERFORMANCE.md cost more than a
//! small file's own work. It delays only this session because the SSH
//! layer runs each connection on a thread of its own; [`serve`] expects
//! such a runtime.
//!
//! Replies may therefore leave in a different order than requests arrived,
//! which SFTP allows (clients match them by id); requests on one handle are
//! answered in order. Errors become status replies in one place,
//! [`status::to_status`].
//!
//! What a client may hold is capped per connection, per user and per
//! server, over all its SFTP channels ([`budget`]): open handles (each
//! takes its place before anything is opened), and WRITE data not yet
//! stored and DATA replies not yet written: 2 MiB of each per channel
//! (`budget::IN_FLIGHT_KIB`), 8 MiB of each per connection, and beyond a
//! channel's own 512 KiB, a share of a pool sized to the cores. A directory
//! handle reads its directory a batch at a time, so its cost does not grow
//! with the directory.
//!
//! Where each part is: this file holds [`serve`] (the reader, the dispatch
//! of each request, the reply writer) and the session's state; `paths`
//! runs requests on paths; `handles` is the handle table; `worker` runs the
//! jobs of a file handle; `notice` is what the user is told on stderr, for
//! failures whose cause OpenSSH's client does not show (it prints only
//! "Failure"); `extensions` are the SFTP extensions;
//! [`status`](mod@status) is the error map, [`budget`] the caps, [`wire`]
//! and [`attrs`] the encoding.

pub mod attrs;
pub mod budget;
mod buffers;
mod extensions;
mod handles;
mod notice;
mod paths;
pub mod status;
pub mod wire;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use russh_sftp::protocol::{Packet, Status, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::access::Access;
use crate::observe::{Outcome, Reporter};
use crate::outcome::{blocking, is_integrity, status_name};
use crate::store::UserStore;
use crate::username::UserName;
use budget::ConnectionBudget;
use handles::HandleTable;
use paths::work_has_no_bound;
use status::{SftpError, to_status};
use worker::{FileJob, Held};

/// Largest request accepted, as OpenSSH's sftp-server (256 KiB).
pub const MAX_PACKET_LEN: u32 = 256 * 1024;
/// Largest read or write payload advertised in limits@openssh.com: a
/// 256 KiB packet minus room for the header, as OpenSSH advertises.
pub const MAX_READ_WRITE_LEN: u32 = 261_120;
/// Requests queued per file handle before the reader waits (OpenSSH's
/// client keeps 64 in flight).
const HANDLE_QUEUE: usize = 64;
// Each handle's queue is bounded in count, but a client with many handles
// could otherwise pin `max_handles * 64 * 256 KiB`: the in-flight budgets
// (`budget::IN_FLIGHT_KIB`, measured in docs/PERFORMANCE.md as enough to
// keep the store and the transport busy) bound what a connection holds
// over all of them.

/// Session-wide SFTP settings.
#[derive(Debug, Clone)]
pub struct SftpConfig {
    /// Most handles one connection may hold open at once, over all its
    /// SFTP channels.
    pub max_handles: usize,
    /// Most handles one user may hold open at once, over all their
    /// connections.
    pub max_handles_per_user: usize,
    /// Largest size a file may reach, in plaintext bytes.
    pub max_file_size: u64,
}

impl Default for SftpConfig {
    fn default() -> Self {
        SftpConfig {
            max_handles: 256,
            max_handles_per_user: 1024,
            max_file_size: crate::store::file::MAX_FILE_SIZE,
        }
    }
}

/// A reply on its way to the client. Most are packets, encoded by the
/// writer; DATA replies are built where the file is read, with the data
/// decrypted straight into the packet, and go out as they are, holding
/// their share of the session's in-flight budget until written.
enum Reply {
    Packet(Packet),
    Encoded(Bytes, Option<budget::Share>),
}

/// What one SFTP session works with.
struct Session {
    store: Arc<UserStore>,
    user: UserName,
    handles: HandleTable,
    /// Most handles the connection may hold (limits@openssh.com tells the
    /// client).
    max_handles: usize,
    replies: mpsc::Sender<Reply>,
    /// The connection's handle caps, shared with its other SFTP channels.
    budget: Arc<ConnectionBudget>,
    /// Admits request data (WRITE) by size: this channel's share under the
    /// connection's; see [`budget::IN_FLIGHT_KIB`].
    request_budget: budget::InFlight,
    /// Admits DATA replies by size, likewise.
    reply_budget: budget::InFlight,
    notices: mpsc::Sender<String>,
    /// Where transfers and path operations are reported.
    events: Reporter,
    /// The user's permissions, asked before each request touches the store.
    access: Access,
    /// The file handles' workers, waited for when the session ends.
    workers: TaskTracker,
    /// Whether the user was told on stderr that a handle was refused (once
    /// per channel: a client that retries must not flood it).
    told_handle_cap: std::sync::atomic::AtomicBool,
}

/// Where an SFTP session's replies go: whole buffers, in order. A DATA
/// reply is a buffer of up to 255 KiB; an SSH channel takes ownership of it
/// and sends it without copying it first (`ssh::connection`), where a byte
/// stream ([`StreamReplies`]) copies it.
pub trait ReplySink: Send + 'static {
    /// Sends `bytes`; an error means the client can no longer be reached.
    fn send(&mut self, bytes: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Replies written to a byte stream.
pub struct StreamReplies<W>(pub W);

impl<W: AsyncWrite + Unpin + Send + 'static> ReplySink for StreamReplies<W> {
    async fn send(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.0.write_all(&bytes).await?;
        self.0.flush().await
    }
}

/// Serves SFTP on requests read from `requests` until the client closes
/// it, with replies to `replies`, which is given back at the end so that
/// the caller decides when the channel closes. `notices` receives
/// human-readable lines for the user (the channel's stderr); uploads,
/// downloads and path operations are reported to `events`. `budget` is the
/// connection's: every SFTP channel of one connection shares it. `access`
/// says what the user may do (see [`crate::access`] for which request needs
/// which permission); a refused request answers SSH_FX_PERMISSION_DENIED,
/// changes nothing, and names the missing permission on stderr and in the
/// audit log.
#[allow(clippy::too_many_arguments)]
pub async fn serve<R, O, N>(
    mut requests: R,
    mut replies: O,
    mut notices: N,
    store: Arc<UserStore>,
    user: UserName,
    config: SftpConfig,
    budget: Arc<ConnectionBudget>,
    events: Reporter,
    access: Access,
) -> O
where
    R: AsyncRead + Unpin + Send,
    O: ReplySink,
    N: AsyncWrite + Unpin + Send + 'static,
{
    let (notice_tx, mut notice_rx) = mpsc::channel::<String>(16);
    let notice_task = tokio::spawn(async move {
        while let Some(line) = notice_rx.recv().await {
            if notices.write_all(line.as_bytes()).await.is_err() || notices.flush().await.is_err() {
                break;
            }
        }
    });
    let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(HANDLE_QUEUE * 2);
    let writer_task = tokio::spawn(async move {
        // Small replies that are already waiting are batched into one
        // send; a DATA reply goes out as the buffer it was built in.
        let mut buf = Vec::with_capacity(64 * 1024);
        'replies: while let Some(reply) = reply_rx.recv().await {
            let mut next = Some(reply);
            while let Some(reply) = next {
                match reply {
                    Reply::Packet(p) => match Bytes::try_from(p) {
                        Ok(bytes) => buf.extend_from_slice(&bytes),
                        Err(e) => warn!(error = %e, "could not encode an SFTP reply"),
                    },
                    Reply::Encoded(bytes, _budget) => {
                        if !buf.is_empty() {
                            if replies.send(Bytes::copy_from_slice(&buf)).await.is_err() {
                                break 'replies;
                            }
                            buf.clear();
                        }
                        if replies.send(bytes).await.is_err() {
                            break 'replies;
                        }
                    }
                }
                next = if buf.len() < 256 * 1024 {
                    reply_rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !buf.is_empty() && replies.send(Bytes::copy_from_slice(&buf)).await.is_err() {
                break;
            }
            buf.clear();
        }
        replies
    });
    let (request_budget, reply_budget) = budget.channel_in_flight();
    let session = Arc::new(Session {
        store,
        user,
        handles: HandleTable::new(),
        max_handles: config.max_handles,
        replies: reply_tx,
        request_budget,
        reply_budget,
        budget,
        notices: notice_tx,
        events,
        access,
        workers: TaskTracker::new(),
        told_handle_cap: std::sync::atomic::AtomicBool::new(false),
    });
    loop {
        let body = match read_packet(&mut requests).await {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "SFTP stream ended");
                break;
            }
        };
        if !session.dispatch(body).await {
            break;
        }
    }
    // Closing the table drops every handle: workers finish what is queued
    // (a CLOSE the client sent commits its upload, even if its reply can no
    // longer be sent), staged uploads that were not closed are discarded.
    // They are waited for: the caller may end the runtime they run on as
    // soon as this returns.
    session.handles.clear();
    let workers = session.workers.clone();
    drop(session);
    workers.close();
    workers.wait().await;
    let _ = notice_task.await;
    match writer_task.await {
        Ok(replies) => replies,
        // The writer task cannot panic short of a bug in encoding.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Reads one length-prefixed packet; `None` at a clean end of stream.
async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Bytes>> {
    let len = match r.read_u32().await {
        Ok(len) => len,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len == 0 || len > MAX_PACKET_LEN + 1024 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("SFTP packet of {len} bytes is outside the accepted size"),
        ));
    }
    // Read into uninitialised capacity: zeroing 256 KiB per WRITE first
    // would be wasted work.
    let len = len as usize;
    let mut body = buffers::take(len);
    let mut packet = r.take(len as u64);
    while body.len() < len {
        if packet.read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Some(buffers::freeze(body)))
}

fn status(id: u32, code: StatusCode, msg: &str) -> Packet {
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: msg.to_owned(),
        language_tag: "en-US".to_owned(),
    })
}

fn ok(id: u32) -> Packet {
    status(id, StatusCode::Ok, "Success")
}

fn error_reply(id: u32, err: &SftpError) -> Packet {
    let (code, msg) = to_status(err);
    if is_integrity(err) {
        warn!(error = %err, "integrity failure reported to client");
    } else {
        // The message may quote the client (an extension's name).
        debug!(error = %crate::observe::escape(&err.to_string()), "request failed");
    }
    status(id, code, &msg)
}

/// The outcome a status reply carries (any other reply is a success).
fn outcome_of_reply(reply: &Reply) -> Outcome {
    match reply {
        Reply::Packet(Packet::Status(s))
            if s.status_code != StatusCode::Ok && s.status_code != StatusCode::Eof =>
        {
            Err((status_name(s.status_code), s.error_message.clone()))
        }
        _ => Ok(()),
    }
}

fn reply_of(id: u32, result: Result<Packet, SftpError>) -> Packet {
    result.unwrap_or_else(|e| error_reply(id, &e))
}

impl Session {
    /// Handles one request; false ends the session.
    async fn dispatch(self: &Arc<Self>, mut body: Bytes) -> bool {
        // WRITE carries the bulk of an upload: decoded here so that its
        // data stays a slice of the packet instead of being copied out.
        if body.first() == Some(&wire::FXP_WRITE)
            && let Ok(w) = wire::parse_write(&body)
        {
            let job = FileJob::Write {
                id: w.id,
                offset: w.offset,
                data: w.data,
            };
            return self.to_handle(w.id, &w.handle, job).await;
        }
        // Anything else, and a malformed WRITE, goes to the general decoder,
        // which also answers what it cannot decode.
        let raw = body.clone();
        let packet = match Packet::try_from(&mut body) {
            Ok(p) => p,
            Err(e) => {
                // Reply with the request id when one can be read, so the
                // client's request fails cleanly instead of hanging.
                let id =
                    (raw.len() >= 5).then(|| u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]));
                debug!(error = %e, "malformed SFTP request");
                let code = if raw
                    .first()
                    .is_some_and(|t| (3..=20).contains(t) || *t == 200)
                {
                    StatusCode::BadMessage
                } else {
                    StatusCode::OpUnsupported
                };
                return self
                    .send(status(id.unwrap_or(0), code, status::openssh_message(code)))
                    .await;
            }
        };
        if matches!(packet, Packet::Open(_)) {
            // A file transfer begins: small allocations on this thread
            // are many from now on (see `thread_cache`).
            crate::thread_cache::resume();
        }
        match packet {
            Packet::Init(init) => {
                debug!(client_version = init.version, "SFTP init");
                self.send(Packet::Version(version_reply())).await
            }
            Packet::Read(r) => {
                self.to_handle(
                    r.id,
                    &r.handle,
                    FileJob::Read {
                        id: r.id,
                        offset: r.offset,
                        len: r.len,
                    },
                )
                .await
            }
            Packet::Write(w) => {
                self.to_handle(
                    w.id,
                    &w.handle,
                    FileJob::Write {
                        id: w.id,
                        offset: w.offset,
                        data: w.data.into(),
                    },
                )
                .await
            }
            Packet::Fstat(f) => match self.handles.dir(&f.handle) {
                Some(dir) => {
                    let reply = reply_of(f.id, self.stat_reply(f.id, &dir.path, true));
                    self.send(reply).await
                }
                None => {
                    self.to_handle(f.id, &f.handle, FileJob::Fstat { id: f.id })
                        .await
                }
            },
            Packet::FSetStat(f) => {
                self.to_handle(
                    f.id,
                    &f.handle,
                    FileJob::SetStat {
                        id: f.id,
                        attrs: f.attrs,
                    },
                )
                .await
            }
            Packet::Close(c) => {
                if self.handles.remove_dir(&c.handle) {
                    return self.send(ok(c.id)).await;
                }
                // The queue of a handle opened for writing, to wait on.
                let writer = self
                    .handles
                    .file(&c.handle)
                    .filter(|f| f.writable())
                    .and_then(|_| self.handles.file_queue(&c.handle));
                let job = FileJob::Close { id: c.id };
                let sent = self.to_handle(c.id, &c.handle, job).await;
                self.handles.remove_file(&c.handle);
                // As with OpenSSH's sftp-server, the requests after a CLOSE
                // see the file closed (a staged upload committed): sshfs
                // sends CLOSE without waiting for its reply, then opens
                // and stats the file again. The worker drops its queue
                // once the close is done.
                if let Some(queue) = writer {
                    queue.closed().await;
                }
                sent
            }
            Packet::ReadDir(r) => {
                let reply = match self.handles.dir(&r.handle) {
                    // A batch stats and opens up to READDIR_BATCH entries:
                    // bounded, but disk work all the same.
                    Some(dir) => {
                        let session = self.clone();
                        let id = r.id;
                        reply_of(id, blocking(move || session.readdir_reply(id, &dir)).await)
                    }
                    None => error_reply(r.id, &SftpError::BadHandle),
                };
                self.send(reply).await
            }
            Packet::Extended(e) if extensions::is_handle_request(&e.request) => {
                match extensions::handle_of(&e) {
                    Some(handle) if self.handles.dir(&handle).is_none() => {
                        let job = FileJob::Extended {
                            id: e.id,
                            request: e.request,
                            data: e.data,
                        };
                        self.to_handle(e.id, &handle, job).await
                    }
                    Some(_) => {
                        let session = self.clone();
                        let id = e.id;
                        let reply = reply_of(id, blocking(move || session.extended(e)).await);
                        self.send(reply).await
                    }
                    None => self.send(error_reply(e.id, &SftpError::BadMessage)).await,
                }
            }
            // Requests on paths are a few file-system calls: they run here
            // (see `worker::runs_inline` for why that is fine), except
            // those whose work has no bound, and all of them on an object
            // store (network calls).
            other if work_has_no_bound(&other) || self.store.waits_on_network() => {
                let id = other.get_request_id();
                let session = self.clone();
                let reply = reply_of(id, blocking(move || session.path_request(other)).await);
                self.send(reply).await
            }
            other => {
                let id = other.get_request_id();
                let reply = reply_of(id, self.path_request(other));
                self.send(reply).await
            }
        }
    }

    async fn send(&self, packet: Packet) -> bool {
        self.replies.send(Reply::Packet(packet)).await.is_ok()
    }

    /// Queues a job on a file handle's worker.
    async fn to_handle(self: &Arc<Self>, id: u32, handle: &str, job: FileJob) -> bool {
        match self.handles.file_queue(handle) {
            Some(queue) => {
                // Waiting here stops reading from the client: russh's channel
                // queue fills, russh stops reading the connection, and TCP
                // pushes back on the client. Only requests that bring data
                // wait: see `worker::take_runnable` for why a READ
                // must not.
                let kib = job.request_kib();
                let permit = if kib == 0 {
                    None
                } else {
                    match self.request_budget.acquire(kib).await {
                        Some(p) => Some(p),
                        None => return false,
                    }
                };
                if queue.send((job, Held::request(permit))).await.is_err() {
                    return self.send(error_reply(id, &SftpError::BadHandle)).await;
                }
                true
            }
            None => self.send(error_reply(id, &SftpError::BadHandle)).await,
        }
    }
}

/// The VERSION reply: protocol 3 and the extensions OpenSSH's sftp-server
/// advertises, with the same version strings.
fn version_reply() -> Version {
    let mut extensions = HashMap::new();
    for (name, version) in extensions::ADVERTISED {
        extensions.insert((*name).to_owned(), (*version).to_owned());
    }
    Version {
        version: 3,
        extensions,
    }
}
