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
//!   overlap (`handles::runs_inline`);
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
//! (`budget::IN_FLIGHT_KIB`), 8 MiB of each per connection. A directory
//! handle reads its directory a batch at a time, so its cost does not grow
//! with the directory.

pub mod attrs;
pub mod budget;
mod buffers;
mod extensions;
mod handles;
pub mod status;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::jail;
use crate::observe::{EventKind, Outcome, Reporter};
use crate::outcome::{blocking, is_integrity, outcome_of, status_name};
use crate::store::storage::{Kind, ObjectPath};
use crate::store::{Attributes, EncryptedFile, OpenOptions, UserStore};
use crate::username::UserName;
use budget::ConnectionBudget;
use handles::{DirListing, FileJob, HandleTable, Held};
use status::{SftpError, to_status};

/// Largest request accepted, as OpenSSH's sftp-server (256 KiB).
pub const MAX_PACKET_LEN: u32 = 256 * 1024;
/// Largest read or write payload advertised in limits@openssh.com: a
/// 256 KiB packet minus room for the header, as OpenSSH advertises.
pub const MAX_READ_WRITE_LEN: u32 = 261_120;
/// Requests queued per file handle before the reader waits (OpenSSH's
/// client keeps 64 in flight).
const HANDLE_QUEUE: usize = 64;
/// Most entries per READDIR reply (OpenSSH's sftp-server sends 100); each
/// READDIR reads at most this many from the directory.
const READDIR_BATCH: usize = 128;
/// Most bytes of entries per READDIR reply: with 255-byte names (and a long
/// name of about as much again) a reply stops near 100 entries, a quarter
/// of the 256 KiB a client accepts.
const READDIR_REPLY_BYTES: usize = 64 * 1024;
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
/// connection's: every SFTP channel of one connection shares it.
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
            // (see `handles::runs_inline` for why that is fine), except
            // those whose work has no bound.
            other if work_has_no_bound(&other) => {
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

    /// Tells the user on stderr that `path` failed its integrity check:
    /// OpenSSH's client shows only "Failure" for the status reply.
    fn integrity_notice(&self, path: &str) {
        self.events.integrity_failure();
        let _ = self.notices.try_send(format!(
            "dropzone: {path}: the file failed its integrity check (it was modified or damaged on the server)\n"
        ));
    }

    /// Tells the user on stderr why an upload was rejected, for the same
    /// reason as [`Session::integrity_notice`].
    fn rejection_notice(&self, path: &str, reason: &str) {
        let _ = self
            .notices
            .try_send(format!("dropzone: {path}: upload rejected: {reason}\n"));
    }

    /// Tells the user on stderr that the server ran out of space, for the
    /// same reason as [`Session::integrity_notice`].
    fn no_space_notice(&self, path: &str) {
        let _ = self.notices.try_send(format!(
            "dropzone: {path}: no space left on the server; the write failed (an upload that does not complete keeps the previous version)\n"
        ));
    }

    /// Tells the user on stderr that a write or extension of `path` was
    /// refused by the size limit (`why` names it), for the same reason as
    /// [`Session::integrity_notice`].
    fn too_large_notice(&self, path: &str, why: &str) {
        let _ = self.notices.try_send(format!("dropzone: {path}: {why}\n"));
    }

    /// Sends the stderr notice that `e`, an error about `path`, calls for.
    fn notice_for(&self, path: &str, e: &crate::store::StoreError) {
        match e {
            crate::store::StoreError::Integrity(_) => self.integrity_notice(path),
            crate::store::StoreError::Rejected { reason } => self.rejection_notice(path, reason),
            e @ crate::store::StoreError::TooLarge { .. } => {
                self.too_large_notice(path, &e.to_string())
            }
            e if is_no_space(e) => self.no_space_notice(path),
            _ => {}
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
                // wait: see `handles::take_runnable` for why a READ
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

    /// Requests that name paths (and OPEN/OPENDIR, which create handles).
    fn path_request(self: &Arc<Self>, packet: Packet) -> Result<Packet, SftpError> {
        let store = &self.store;
        match packet {
            Packet::Open(o) => self.open(o.id, &o.filename, o.pflags, &o.attrs),
            Packet::OpenDir(o) => {
                let path = jail::resolve(&o.path)?;
                let listing = self.open_dir(path)?;
                let handle = self.handles.add_dir(listing);
                Ok(Packet::Handle(Handle { id: o.id, handle }))
            }
            Packet::Lstat(s) => self.stat_reply(s.id, &jail::resolve(&s.path)?, false),
            Packet::Stat(s) => self.stat_reply(s.id, &jail::resolve(&s.path)?, true),
            Packet::SetStat(s) => {
                self.audited(EventKind::Setstat, &s.path, |path| {
                    self.set_stat(path, &s.attrs, true)
                })?;
                Ok(ok(s.id))
            }
            Packet::Remove(r) => {
                self.audited(EventKind::Remove, &r.filename, |path| {
                    Ok(store.remove(path)?)
                })?;
                Ok(ok(r.id))
            }
            Packet::MkDir(m) => {
                self.audited(EventKind::Mkdir, &m.path, |path| {
                    Ok(store.mkdir(path, m.attrs.permissions.map(client_mode))?)
                })?;
                Ok(ok(m.id))
            }
            Packet::RmDir(r) => {
                self.audited(EventKind::Rmdir, &r.path, |path| {
                    if path.is_root() {
                        return Err(std::io::Error::from_raw_os_error(libc::EBUSY).into());
                    }
                    Ok(store.rmdir(path)?)
                })?;
                Ok(ok(r.id))
            }
            Packet::RealPath(r) => {
                let path = jail::resolve(&r.path)?.to_client_string();
                Ok(Packet::Name(Name {
                    id: r.id,
                    files: vec![File::dummy(path)],
                }))
            }
            Packet::Rename(r) => {
                // Like OpenSSH's sftp-server, plain RENAME never replaces an
                // existing target; posix-rename@openssh.com does.
                self.audited_rename(&r.oldpath, &r.newpath, false)?;
                Ok(ok(r.id))
            }
            Packet::ReadLink(r) => {
                let target = store.read_link(&jail::resolve(&r.path)?)?;
                Ok(Packet::Name(Name {
                    id: r.id,
                    files: vec![File::dummy(target)],
                }))
            }
            Packet::Symlink(s) => {
                // OpenSSH sends the target first, contrary to the draft; every
                // common client follows OpenSSH, so the fields are swapped.
                let (target, link) = (s.linkpath, s.targetpath);
                let link = jail::resolve(&link)?;
                let made = jail::symlink_target(&target)
                    .map_err(SftpError::from)
                    .and_then(|target| Ok(store.symlink(&target, &link)?));
                if let Err(e) = &made {
                    self.refusal_notice(&link.to_client_string(), e);
                }
                made?;
                Ok(ok(s.id))
            }
            Packet::Extended(e) => self.extended(e),
            other => {
                debug!(?other, "unexpected packet from client");
                Err(SftpError::BadMessage)
            }
        }
    }

    /// Runs a request on one path and reports it as a `kind` event, with
    /// the path as the user sees it (as given, if the jail refused it).
    pub(super) fn audited(
        &self,
        kind: EventKind,
        raw: &str,
        op: impl FnOnce(&ObjectPath) -> Result<(), SftpError>,
    ) -> Result<(), SftpError> {
        let started = Instant::now();
        let path = jail::resolve(raw);
        let shown = shown_path(&path, raw);
        let result = path.map_err(SftpError::from).and_then(|p| op(&p));
        self.events
            .operation(kind, &shown, None, started.elapsed(), outcome_of(&result));
        result
    }

    /// A rename (posix-rename@openssh.com with `replace`), reported.
    pub(super) fn audited_rename(
        &self,
        raw_from: &str,
        raw_to: &str,
        replace: bool,
    ) -> Result<(), SftpError> {
        let started = Instant::now();
        let (from, to) = (jail::resolve(raw_from), jail::resolve(raw_to));
        let (shown_from, shown_to) = (shown_path(&from, raw_from), shown_path(&to, raw_to));
        let result = match (from, to) {
            (Ok(from), Ok(to)) => self.store.rename(&from, &to, replace).map_err(Into::into),
            (Err(e), _) | (_, Err(e)) => Err(e.into()),
        };
        if let Err(e) = &result {
            self.refusal_notice(&shown_from, e);
        }
        self.events.operation(
            EventKind::Rename,
            &shown_from,
            Some(&shown_to),
            started.elapsed(),
            outcome_of(&result),
        );
        result
    }

    /// OPEN: a handle for writing is an upload, for reading only a
    /// download; one that cannot be opened is reported at once.
    fn open(
        self: &Arc<Self>,
        id: u32,
        filename: &str,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Packet, SftpError> {
        let kind = if flags.contains(OpenFlags::WRITE) {
            EventKind::Upload
        } else {
            EventKind::Download
        };
        let started = Instant::now();
        let opened = self.open_handle(id, filename, flags, attrs, kind);
        if opened.is_err() {
            let shown = shown_path(&jail::resolve(filename), filename);
            self.events
                .transfer(kind, &shown, 0, started, outcome_of(&opened));
        }
        opened
    }

    fn open_handle(
        self: &Arc<Self>,
        id: u32,
        filename: &str,
        flags: OpenFlags,
        attrs: &FileAttributes,
        kind: EventKind,
    ) -> Result<Packet, SftpError> {
        let path = jail::resolve(filename)?;
        if path.is_root() {
            return Err(std::io::Error::from_raw_os_error(libc::EISDIR).into());
        }
        let client_path = path.to_client_string();
        let opts = OpenOptions {
            read: flags.contains(OpenFlags::READ),
            write: flags.contains(OpenFlags::WRITE),
            append: flags.contains(OpenFlags::APPEND),
            create: flags.contains(OpenFlags::CREATE),
            truncate: flags.contains(OpenFlags::TRUNCATE),
            exclusive: flags.contains(OpenFlags::EXCLUDE),
            mode: attrs.permissions.map(client_mode),
        };
        // The handle's place first: a refused one opens nothing.
        let charge = Arc::new(self.charge_handle()?);
        let file = match self.store.open(&path, opts) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                self.notice_for(&client_path, &e);
                return Err(e.into());
            }
        };
        let (tx, rx) = mpsc::channel(HANDLE_QUEUE);
        let handle = self.handles.add_file(tx, file.clone(), charge.clone());
        let transfer = self.events.transfer_started(kind, client_path.clone());
        self.workers.spawn(handles::run_worker(
            self.clone(),
            file,
            client_path,
            rx,
            transfer,
            charge,
        ));
        Ok(Packet::Handle(Handle { id, handle }))
    }

    fn stat_reply(&self, id: u32, path: &ObjectPath, follow: bool) -> Result<Packet, SftpError> {
        let a = self.store.stat(path, follow)?;
        Ok(Packet::Attrs(Attrs {
            id,
            attrs: attrs::to_sftp(&a),
        }))
    }

    /// SETSTAT (`follow`) or lsetstat@openssh.com.
    fn set_stat(
        &self,
        path: &ObjectPath,
        a: &FileAttributes,
        follow: bool,
    ) -> Result<(), SftpError> {
        let result = self.apply_stat(path, a, follow);
        if let Err(e) = &result {
            self.refusal_notice(&path.to_client_string(), e);
        }
        result
    }

    /// Tells the user on stderr why a change was refused for containment
    /// (a symlink that would lead outside the root, a change to the root
    /// itself): the status carries only OpenSSH's "Permission denied".
    pub(super) fn refusal_notice(&self, path: &str, e: &SftpError) {
        let why = match e {
            SftpError::Jail(j @ jail::JailError::DotDotAfterName) => j.to_string(),
            SftpError::Store(crate::store::StoreError::Io(io)) => {
                match io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<crate::store::storage::Refused>())
                {
                    Some(refused) => refused.to_string(),
                    None => return,
                }
            }
            _ => return,
        };
        let _ = self.notices.try_send(format!("dropzone: {path}: {why}\n"));
    }

    fn apply_stat(
        &self,
        path: &ObjectPath,
        a: &FileAttributes,
        follow: bool,
    ) -> Result<(), SftpError> {
        refuse_root_change(path, a)?;
        let current = self.store.stat(path, follow)?;
        check_owner(a, &current)?;
        if let Some(size) = a.size {
            if current.kind != Kind::File {
                return Err(std::io::Error::from_raw_os_error(libc::EISDIR).into());
            }
            if let Err(e) = self.store.set_size(path, size) {
                self.notice_for(&path.to_client_string(), &e);
                return Err(e.into());
            }
        }
        if let Some(p) = a.permissions {
            if current.kind == Kind::Symlink {
                return Err(SftpError::Unsupported("permissions of a symlink".into()));
            }
            self.store.set_permissions(path, client_mode(p))?;
        }
        if let (Some(at), Some(mt)) = (a.atime, a.mtime) {
            if current.kind == Kind::Symlink {
                return Err(SftpError::Unsupported("times of a symlink".into()));
            }
            self.store.set_times(path, i64::from(at), i64::from(mt))?;
        }
        Ok(())
    }

    /// A place under the connection's, the user's and the server's handle
    /// caps, or the refusal that names the cap reached.
    fn charge_handle(&self) -> Result<budget::HandleCharge, SftpError> {
        self.budget.charge_handle().map_err(|scope| {
            debug!(user = %self.user, %scope, "handle refused: too many open files");
            // OpenSSH's client shows only "Failure" for the status reply.
            if !self
                .told_handle_cap
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let _ = self.notices.try_send(format!(
                    "dropzone: too many open files for {scope}: close some before opening more\n"
                ));
                // The server's own cap is the operator's business: the
                // open-files limit is too low for the load (once per
                // channel, as the notice).
                if scope == budget::Scope::Server {
                    warn!(user = %self.user, "handle refused: the server's open handles are at the cap the open-files limit allows");
                }
            }
            SftpError::TooManyHandles(scope)
        })
    }

    /// OPENDIR: the directory opened for reading in batches, with `.` and
    /// `..` to send first.
    fn open_dir(&self, path: ObjectPath) -> Result<DirListing, SftpError> {
        let charge = self.charge_handle()?;
        // Opened first: a path that is not a directory fails here.
        let stream = self.store.open_dir(&path)?;
        let here = self.store.stat(&path, true)?;
        let parent = self.store.stat(&path.parent(), true)?;
        let first = [(".", &here), ("..", &parent)]
            .into_iter()
            .map(|(name, a)| self.dir_entry(name.to_owned(), a))
            .collect();
        Ok(DirListing::new(path, stream, first, charge))
    }

    /// One entry of a NAME reply to READDIR.
    fn dir_entry(&self, name: String, a: &Attributes) -> File {
        let now = crate::store::storage::unix_seconds(std::time::SystemTime::now());
        File {
            longname: attrs::long_name(&name, a, self.user.as_str(), now),
            attrs: attrs::to_sftp(a),
            filename: name,
        }
    }

    /// READDIR: the next entries, at most [`READDIR_BATCH`] of them and
    /// [`READDIR_REPLY_BYTES`] of names, read from the directory now.
    fn readdir_reply(&self, id: u32, dir: &DirListing) -> Result<Packet, SftpError> {
        let mut state = dir.state();
        let wanted = READDIR_BATCH.saturating_sub(state.pending.len());
        if wanted > 0 {
            let batch = state.stream.next_batch(wanted)?;
            for (name, a) in batch {
                let entry = self.dir_entry(name, &a);
                state.pending.push_back(entry);
            }
        }
        let mut files = Vec::new();
        let mut bytes = 0;
        while let Some(entry) = state.pending.front() {
            // The entry as encoded: two strings and at most 32 bytes of
            // attributes (no extended ones are sent).
            let size = 8 + entry.filename.len() + entry.longname.len() + 32;
            if !files.is_empty() && bytes + size > READDIR_REPLY_BYTES {
                break;
            }
            bytes += size;
            files.extend(state.pending.pop_front());
        }
        Ok(if files.is_empty() {
            status(id, StatusCode::Eof, "End of file")
        } else {
            Packet::Name(Name { id, files })
        })
    }

    fn extended(self: &Arc<Self>, e: russh_sftp::protocol::Extended) -> Result<Packet, SftpError> {
        extensions::path_extension(self, e)
    }
}

/// Whether a path request's work has no fixed bound, so that it runs on a
/// blocking thread: SETSTAT may extend a file by gigabytes, an extension
/// may copy one, an OPEN for writing without TRUNC may copy one (when
/// uploads are scanned, the copy is what the scanner sees at close). An
/// OPENDIR reads no entry yet (each READDIR reads a bounded batch, on a
/// blocking thread of its own).
fn work_has_no_bound(packet: &Packet) -> bool {
    match packet {
        // RENAME and SYMLINK check symlinks against the real tree, and a
        // directory's rename walks its subtree (a bounded walk, but a walk).
        Packet::SetStat(_) | Packet::Extended(_) | Packet::Rename(_) | Packet::Symlink(_) => true,
        Packet::Open(o) => {
            o.pflags.contains(OpenFlags::WRITE) && !o.pflags.contains(OpenFlags::TRUNCATE)
        }
        _ => false,
    }
}

/// A path for events: as the jail normalised it, or as the client sent it.
fn shown_path(resolved: &Result<ObjectPath, jail::JailError>, raw: &str) -> String {
    match resolved {
        Ok(p) => p.to_client_string(),
        Err(_) => raw.to_owned(),
    }
}

/// The permission bits a client may set: setuid, setgid and sticky are
/// dropped, so that no client-made file carries them on the host.
fn client_mode(mode: u32) -> u32 {
    mode & 0o777
}

/// The user's root is the server's, not the user's, to change: a client
/// that could chmod it (to 0 or 0777) or set its times or size could lock
/// itself out or open its files to other host users. A link to the root is
/// caught by the store, which compares what it resolved with the root.
fn refuse_root_change(path: &ObjectPath, a: &FileAttributes) -> Result<(), SftpError> {
    let changes = a.size.is_some() || a.permissions.is_some() || a.atime.is_some();
    if path.is_root() && changes {
        return Err(SftpError::Store(crate::store::StoreError::Io(
            crate::store::storage::refused("the root of your directory cannot be changed"),
        )));
    }
    Ok(())
}

/// A request to change owner or group is refused unless it changes nothing.
fn check_owner(a: &FileAttributes, current: &Attributes) -> Result<(), SftpError> {
    let uid_change = a.uid.is_some_and(|u| u != current.uid);
    let gid_change = a.gid.is_some_and(|g| g != current.gid);
    if uid_change || gid_change {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM).into());
    }
    Ok(())
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

/// What the user must be told on stderr after a file job.
pub(super) enum FileNotice {
    /// The file failed an integrity check.
    Integrity,
    /// The upload was rejected at close, for this reason.
    Rejected(String),
    /// The server's disk (or the user's quota) is full.
    NoSpace,
    /// A write or extension was refused by the size limit, named here.
    TooLarge(String),
}

/// Whether `e` means the disk or the quota is full.
fn is_no_space(e: &crate::store::StoreError) -> bool {
    matches!(e, crate::store::StoreError::Io(io)
        if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}

/// What a file job did, for the worker to answer, tell and report.
struct Done {
    reply: Reply,
    /// What the user must be told on stderr about its failure.
    notice: Option<FileNotice>,
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
    let mut fail = |id: u32, e: crate::store::StoreError| {
        match &e {
            crate::store::StoreError::Integrity(_) => notice = Some(FileNotice::Integrity),
            crate::store::StoreError::Rejected { reason } => {
                notice = Some(FileNotice::Rejected(reason.clone()))
            }
            e if is_no_space(e) => notice = Some(FileNotice::NoSpace),
            e @ crate::store::StoreError::TooLarge { .. } => {
                notice = Some(FileNotice::TooLarge(e.to_string()))
            }
            _ => {}
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
        FileJob::SetStat { id, attrs } => reply_of(id, fsetstat(file, &attrs).map(|()| ok(id))),
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
