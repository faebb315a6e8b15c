//! The SSH server: host keys, authentication, and what a session may do.
//!
//! A session may open the `sftp` subsystem or exec a legacy `scp -t`/`scp -f`;
//! shells, ptys, environment, X11, agent and port forwarding are refused.
//! A login succeeds only once the user's data key is unwrapped: if the key
//! service fails, the login fails closed.
//!
//! Each connection runs on a thread of its own with a single-threaded
//! runtime (see `spawn_connection`), so that its SFTP session may make
//! small file system calls without a hand-off to another thread.
//!
//! Before any of that, a connection must pass the abuse controls
//! (docs/HARDENING.md): a banned source is closed before the banner, the
//! unauthenticated-connection caps (`admission`) are checked at accept and
//! the session caps at login, and the login grace time bounds everything
//! before login, version exchange included.

mod admission;
mod connection;
pub mod descriptors;
pub mod host_keys;
pub mod probe;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::server::Config as SshConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::access::{Access, Permissions};
use crate::auth::certificate::KeyTrust;
use crate::auth::penalty::{Admission as BanCheck, Penalties};
use crate::auth::users_file::{UsersFile, UsersFileError};
use crate::auth::users_source::{self, UsersSource, Version};
use crate::auth::{Authenticator, SystemUsers};
use crate::config::LimitsConfig;
use crate::keys::UserKeys;
use crate::observe::Observer;
use crate::sftp::SftpConfig;
use crate::sync::lock;

/// How long a graceful stop waits for open sessions to finish their files.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Most blocking threads one connection uses at once (large reads and
/// writes, syncs, scans, logins): one connection cannot take the machine's
/// threads, and more than a few would not move its data faster.
const CONNECTION_BLOCKING_THREADS: usize = 8;

/// Everything the connections of one server share.
pub struct ServerContext {
    users_source: Arc<UsersSource>,
    /// Shared with the watch of a remote users file ([`watch_users`]).
    users: Arc<Mutex<UsersCache>>,
    /// Linux users (`[auth] pam = true`), for names the users file does not
    /// know.
    system_users: Option<Arc<SystemUsers>>,
    /// Trusted user CAs and revoked keys.
    key_trust: KeyTrust,
    keys: UserKeys,
    /// Where users' trees are (local `data_dir` or a bucket).
    backend: crate::store::Backend,
    /// Each user's quota account, shared by their sessions.
    quotas: crate::quota::Quotas,
    sftp: SftpConfig,
    /// Open SFTP handles, counted per connection, per user and in all.
    budgets: crate::sftp::budget::Budgets,
    /// Upload scanning and notifications (`[upload]`), if configured.
    uploads: Option<Arc<crate::upload::Uploads>>,
    /// Connection and session caps.
    admission: Arc<admission::Admission>,
    /// Failure penalties per source (`None`: turned off).
    penalties: Option<Penalties>,
    /// Where logins, transfers and file operations are reported.
    observer: Arc<Observer>,
    /// Never read: the server waits at shutdown until the last context, and
    /// with it this sender, is dropped by the last session task.
    #[allow(dead_code)]
    alive: mpsc::Sender<()>,
    /// Raised at shutdown: the parent of every session's store stop signal,
    /// so that long store work (a gap being filled, a copy) ends at once.
    store_stop: crate::store::StopSignal,
}

/// The users as last read.
struct UsersCache {
    /// The version they were read at; `None` before the first read (a
    /// store unreachable at start-up).
    version: Option<Version>,
    auth: Arc<Authenticator>,
    /// A version that was read and refused (it does not parse): not read
    /// again, and not logged again, until the file changes once more.
    refused: Option<Version>,
}

impl UsersCache {
    /// The users read at `version` replace the old.
    fn take(&mut self, source: &UsersSource, file: UsersFile, version: Version) {
        if self.version.is_some() {
            info!(path = %source.name().display(), "users file reloaded");
        } else {
            info!(path = %source.name().display(), users = file.len(), "users file read");
        }
        self.auth = Arc::new(Authenticator::from_users_file(file));
        self.version = Some(version);
        self.refused = None;
    }

    /// The users read at `version` cannot be used (`e`): the old stay,
    /// and the reason is logged once per version.
    fn refuse(&mut self, source: &UsersSource, version: Option<Version>, e: &UsersFileError) {
        if version.is_none() || version != self.refused {
            warn!(path = %source.name().display(), error = %e, "users file changed but cannot be used; keeping the previous users");
        }
        self.refused = version;
    }
}

/// What the server is built from, besides the user keys.
pub struct ServerParts {
    /// Where the users file is (reloaded whenever it changes). Read once
    /// by [`ServerContext::new`], a blocking call.
    pub users: Arc<UsersSource>,
    /// Where each user's store lives (`data_dir/NAME`, or a bucket).
    pub backend: crate::store::Backend,
    /// Session-wide SFTP settings.
    pub sftp: SftpConfig,
    /// Linux users (by password, and by keyboard-interactive, which is
    /// offered only then), if on.
    pub system_users: Option<SystemUsers>,
    /// Trusted user CAs (certificate logins) and revoked keys, if set.
    pub key_trust: KeyTrust,
    /// Upload scanning and notifications (`[upload]`), if configured.
    pub uploads: Option<Arc<crate::upload::Uploads>>,
    /// Connection and session caps, failure penalties.
    pub limits: LimitsConfig,
    /// Where logins, transfers and file operations are reported.
    pub observer: Arc<Observer>,
    /// Most SFTP handles open at once over every connection: what the
    /// open-files limit leaves after the connections' own descriptors
    /// ([`descriptors::plan`]).
    pub max_handles_total: usize,
}

impl ServerContext {
    /// Builds the context; the users file is loaded now (a broken file is an
    /// error at start-up).
    pub fn new(
        keys: UserKeys,
        parts: ServerParts,
    ) -> Result<(Arc<Self>, mpsc::Receiver<()>), UsersFileError> {
        let ServerParts {
            users: users_source,
            backend,
            sftp,
            system_users,
            key_trust,
            uploads,
            limits,
            observer,
            max_handles_total,
        } = parts;
        let (file, version) = match users_source.load() {
            Ok((file, version)) => (file, Some(version)),
            // A store that is down at start-up is not a broken users file:
            // the server starts (as it does for the files' store) and
            // reads the users once the store answers.
            Err(e) if users_source.is_remote() && users_source::is_unavailable(&e) => {
                warn!(path = %users_source.name().display(), error = %e, "users file unreachable at start-up: only Linux users can log in until it is read");
                (UsersFile::default(), None)
            }
            Err(e) => return Err(e),
        };
        let users = Arc::new(Mutex::new(UsersCache {
            version,
            auth: Arc::new(Authenticator::from_users_file(file)),
            refused: None,
        }));
        if users_source.is_remote() {
            watch_users(users_source.clone(), Arc::downgrade(&users));
        }
        let (alive, alive_rx) = mpsc::channel(1);
        Ok((
            Arc::new(ServerContext {
                users_source,
                users,
                system_users: system_users.map(Arc::new),
                key_trust,
                quotas: quotas_for(&backend, &keys),
                keys,
                backend,
                sftp,
                budgets: crate::sftp::budget::Budgets::new(max_handles_total),
                uploads,
                penalties: limits.penalty.clone().map(Penalties::new),
                admission: admission::Admission::new(limits),
                observer,
                alive,
                store_stop: crate::store::StopSignal::new(),
            }),
            alive_rx,
        ))
    }

    /// The current authenticator, reloaded if the users file changed (a
    /// `dropzone user add` takes effect without a restart). A local file is
    /// looked at now; a remote one by [`watch_users`]. A file that no
    /// longer parses keeps the previous users and is logged.
    fn authenticator(&self) -> Arc<Authenticator> {
        let mut cache = lock(&self.users);
        if !self.users_source.is_remote() {
            // (A file's version is its time: looking cannot fail.)
            let now = self.users_source.version().ok();
            if now != cache.version && now != cache.refused {
                match self.users_source.load() {
                    Ok((file, version)) => cache.take(&self.users_source, file, version),
                    // A file that cannot be read is tried again at the
                    // next request; one that does not parse once it changes.
                    Err(e) => {
                        let refused = match e {
                            UsersFileError::Read { .. } => None,
                            _ => now,
                        };
                        cache.refuse(&self.users_source, refused, &e)
                    }
                }
            }
        }
        cache.auth.clone()
    }

    /// What `user` may do, asked again at each request of their sessions:
    /// the users file's entry as it is now (reloaded when it changes, see
    /// [`ServerContext::authenticator`]). A Linux user (not in the users
    /// file at login) may do everything; a users-file user removed from
    /// the file since may do nothing more.
    pub(crate) fn access(self: &Arc<Self>, user: &crate::username::UserName) -> Access {
        let user = user.as_str().to_owned();
        if !self.authenticator().user_exists(&user) {
            return Access::full();
        }
        let ctx = Arc::downgrade(self);
        Access::new(Arc::new(move || {
            ctx.upgrade()
                .and_then(|ctx| ctx.authenticator().permissions(&user))
                .unwrap_or(Permissions::NONE)
        }))
    }
}

impl ServerContext {
    /// The quota of `user` as the users file says now, asked at each growth
    /// of their files (a `dropzone user set --quota-bytes` applies from the
    /// next write). A Linux user not in the users file has no limit.
    pub(crate) fn quota_source(
        self: &Arc<Self>,
        user: &crate::username::UserName,
    ) -> impl Fn() -> crate::store::quota::Limits + Send + Sync + 'static {
        let ctx = Arc::downgrade(self);
        let user = user.as_str().to_owned();
        move || {
            ctx.upgrade()
                .and_then(|ctx| ctx.authenticator().quota(&user))
                .unwrap_or_default()
        }
    }
}

/// The quota accounts: with records beside the local key files, or per
/// node on a shared store (see [`crate::quota`]).
fn quotas_for(backend: &crate::store::Backend, keys: &UserKeys) -> crate::quota::Quotas {
    match keys.keks_dir() {
        Some(dir) if !backend.is_shared() => crate::quota::Quotas::new(dir.to_owned()),
        _ => crate::quota::Quotas::per_node(),
    }
}

/// Looks for a change of a remote users file every
/// [`users_source::OBJECT_POLL_INTERVAL`], on a thread of its own (a look
/// is a request to the store, which may be slow or down), until the
/// server's users are gone. A store that cannot be reached is logged when
/// that starts and when it ends, not at every look; the users read last
/// stay in force meanwhile.
fn watch_users(source: Arc<UsersSource>, users: std::sync::Weak<Mutex<UsersCache>>) {
    let watching = std::thread::Builder::new()
        .name("dz-users".into())
        .spawn(move || {
            let mut unreachable = false;
            loop {
                std::thread::sleep(users_source::OBJECT_POLL_INTERVAL);
                if users.strong_count() == 0 {
                    return;
                }
                let looked = source.version().and_then(|now| {
                    let Some(users) = users.upgrade() else {
                        return Ok(());
                    };
                    {
                        let cache = lock(&users);
                        if cache.version.as_ref() == Some(&now) || cache.refused.as_ref() == Some(&now) {
                            return Ok(());
                        }
                    }
                    // Read without holding the users: logins go on meanwhile.
                    match source.load() {
                        Ok((file, version)) => lock(&users).take(&source, file, version),
                        // Unreachable, or refused (credentials): looked at
                        // again at the next turn.
                        Err(e @ UsersFileError::Read { .. }) => return Err(e),
                        Err(e) => lock(&users).refuse(&source, Some(now), &e),
                    }
                    Ok(())
                });
                match looked {
                    Ok(()) if unreachable => {
                        info!(path = %source.name().display(), "users file reachable again");
                        unreachable = false;
                    }
                    Ok(()) => {}
                    Err(e) if !unreachable => {
                        warn!(path = %source.name().display(), error = %e, "users file cannot be checked for changes; keeping the users read last");
                        unreachable = true;
                    }
                    Err(_) => {}
                }
            }
        });
    if let Err(e) = watching {
        warn!(error = %e, "cannot start watching the users file: changes need a restart");
    }
}

/// The algorithms offered: the configured lists, plus the markers for
/// strict key exchange (the Terrapin fix) and extension negotiation, which
/// are always on.
fn preferred(algorithms: &crate::config::SshConfig) -> russh::Preferred {
    let mut kex = algorithms.kex.clone();
    kex.extend([
        russh::kex::EXTENSION_SUPPORT_AS_SERVER,
        russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
    ]);
    russh::Preferred {
        kex: kex.into(),
        key: algorithms.host_key_algorithms.clone().into(),
        cipher: algorithms.ciphers.clone().into(),
        mac: algorithms.macs.clone().into(),
        ..russh::Preferred::DEFAULT
    }
}

/// The russh configuration for the server. `host_certificates` (see
/// [`host_keys::load_certificates`]) are offered ahead of the plain host
/// keys to clients that accept certificates.
pub fn ssh_config(
    host_keys: Vec<russh::keys::PrivateKey>,
    host_certificates: Vec<russh::keys::Certificate>,
    max_auth_attempts: u32,
    ssh: &crate::config::SshConfig,
) -> SshConfig {
    SshConfig {
        certificates: host_certificates,
        preferred: preferred(ssh),
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-Dropzone_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        keys: host_keys,
        methods: russh::MethodSet::from(
            &[russh::MethodKind::PublicKey, russh::MethodKind::Password][..],
        ),
        max_auth_attempts: max_auth_attempts as usize,
        // Every rejection takes the same time, so unknown users, wrong
        // passwords and unknown keys look alike from outside.
        auth_rejection_time: Duration::from_secs(1),
        // ...except the very first "none" probe every client sends.
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        inactivity_timeout: Some(ssh.idle_timeout),
        // Large windows and packets let one channel fill a fast link:
        // 4 MiB in flight (twice OpenSSH's 64 x 32 KiB requests), 256 KiB
        // per packet.
        window_size: 4 * 1024 * 1024,
        maximum_packet_size: 256 * 1024,
        // russh grants window as packets arrive, not as the channel's
        // reader consumes them: what bounds the data a client can make the
        // server buffer is this queue of channel messages (16 x at most
        // 256 KiB), which the SFTP reader drains.
        channel_buffer_size: 16,
        nodelay: true,
        ..SshConfig::default()
    }
}

/// The registry of open sessions, to disconnect them at shutdown.
type Handles = Arc<Mutex<std::collections::HashMap<u64, russh::server::Handle>>>;

/// What [`serve_connection`] needs besides the socket and handler.
struct ConnectionTask {
    peer: std::net::SocketAddr,
    conn_id: u64,
    logged_in: Arc<std::sync::atomic::AtomicBool>,
    handles: Handles,
    login_grace: Duration,
}

/// Runs one connection on a thread of its own, with a single-threaded
/// runtime, as sshd runs each connection in a process of its own. The hops
/// of a request inside the server (the SSH connection loop, the SFTP reader,
/// a file worker, the reply writer) are then task switches on one thread,
/// not wake-ups of other threads: on the 2-core machine of
/// docs/PERFORMANCE.md a cross-thread wake-up costs more than the work of a
/// small request. Connections still spread over the cores (the kernel
/// schedules their threads), and file I/O and at-rest crypto still run on
/// their own pools. Completes when the connection and its channel tasks
/// (SFTP, scp: they may still be closing files when the connection has
/// ended) have ended, or soon after `stop` fires: a graceful stop that has
/// waited long enough.
async fn spawn_connection(
    config: Arc<SshConfig>,
    socket: tokio::net::TcpStream,
    handler: connection::Connection,
    task: ConnectionTask,
    channel_tasks: TaskTracker,
    stop: CancellationToken,
) {
    let peer = task.peer;
    // The socket leaves this runtime's reactor for the connection's own.
    let socket = match socket.into_std() {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, error = %e, "cannot set up the connection");
            return;
        }
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("dz-conn-{}", task.conn_id))
        .spawn(move || {
            // Most connections log in, list and leave: no allocator cache
            // until the first transfer (the sftp and scp layers resume it),
            // on this thread and on the connection's blocking threads (the
            // login's store and key lookups run there).
            crate::thread_cache::pause();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(CONNECTION_BLOCKING_THREADS)
                .on_thread_start(crate::thread_cache::pause)
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    warn!(%peer, error = %e, "cannot start the connection's runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let served = async {
                    serve_connection(config, socket, handler, task).await;
                    // Dropping the runtime would cancel what is left: let the
                    // channel tasks close or discard their files first.
                    channel_tasks.close();
                    channel_tasks.wait().await;
                };
                tokio::select! {
                    () = served => {}
                    () = stop.cancelled() => {}
                }
            });
            // Whatever is left (after a stop) is dropped here: open files are
            // flushed or discarded, sessions log out. A store call stuck on a
            // blocking thread is not waited for beyond a moment.
            runtime.shutdown_timeout(Duration::from_secs(1));
            drop(done_tx);
        });
    if let Err(e) = spawned {
        warn!(%peer, error = %e, "cannot start a thread for the connection");
        return;
    }
    let _ = done_rx.await;
}

/// Bytes read from a connection's socket at a time for small packets (see
/// `serve_connection`): room for a window's worth of pipelined SFTP
/// requests (64 READs of about 60 bytes each).
const SOCKET_READ_BUFFER: usize = 16 * 1024;

/// Runs one connection to its end. The login grace time runs from the
/// accept, so it covers the version exchange and key exchange too: a
/// connection that has not logged in by then is told so if it got that
/// far, and its socket is shut down in any case, whatever state the SSH
/// session is in (a client that never sends its version, or stops in the
/// middle of the key exchange, cannot keep its place).
async fn serve_connection(
    config: Arc<SshConfig>,
    socket: std::net::TcpStream,
    handler: connection::Connection,
    task: ConnectionTask,
) {
    let ConnectionTask {
        peer,
        conn_id,
        logged_in,
        handles,
        login_grace,
    } = task;
    // A second descriptor of the same socket, to shut it down from outside
    // the session.
    // (Still non-blocking, as tokio's `into_std` leaves it.)
    let (socket, killer) = match socket
        .try_clone()
        .and_then(|killer| Ok((tokio::net::TcpStream::from_std(socket)?, killer)))
    {
        Ok(pair) => pair,
        Err(e) => {
            warn!(%peer, error = %e, "cannot set up the connection");
            return;
        }
    };
    let grace = {
        let handles = handles.clone();
        let logged_in = logged_in.clone();
        tokio::spawn(async move {
            tokio::time::sleep(login_grace).await;
            if logged_in.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            info!(%peer, "login grace time exceeded");
            let handle = lock(&handles).get(&conn_id).cloned();
            if let Some(handle) = handle {
                // Polite first; a session stuck in key exchange may never
                // send it, hence the bound.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    handle.disconnect(
                        russh::Disconnect::ByApplication,
                        "login grace time exceeded".into(),
                        "en".into(),
                    ),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = killer.shutdown(std::net::Shutdown::Both);
        })
    };
    // russh reads each packet as its length, then its body, then tries the
    // next length: three receive calls for a small request, the last one
    // failing with EAGAIN. Through a buffer, the requests that have arrived
    // come in with one call, and a short read tells tokio the socket is
    // drained, so it waits for readiness without trying again. A large
    // packet body still goes straight into russh's buffer (BufReader
    // bypasses its own for reads larger than it).
    let socket = tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, socket);
    match russh::server::run_stream(config, socket, handler).await {
        Ok(running) => {
            lock(&handles).insert(conn_id, running.handle());
            if let Err(e) = running.await {
                tracing::debug!(%peer, error = %e, "session ended with an error");
            }
            lock(&handles).remove(&conn_id);
        }
        Err(e) => tracing::debug!(%peer, error = %e, "SSH handshake failed"),
    }
    grace.abort();
}

/// The two stages of a graceful stop, as seen by a connection.
#[derive(Clone)]
struct StopTokens {
    /// The server has stopped accepting: connections still waiting for a
    /// place give up (they hold the server context, which the stop waits
    /// for).
    closing: CancellationToken,
    /// The grace period is over: running connections are dropped.
    stop: CancellationToken,
}

/// A connection just accepted.
struct Accepted {
    socket: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    conn_id: u64,
    /// When it was accepted: the login grace time runs from here.
    at: tokio::time::Instant,
}

/// Takes an accepted connection through the unauthenticated-connection caps
/// (waiting for a place, within its login grace time, when they are full)
/// and then serves it. A refused connection is told why in a line before
/// the version string (allowed by RFC 4253, 4.2; clients show it when
/// debugging) and closed.
async fn admit(
    accepted: Accepted,
    ctx: Arc<ServerContext>,
    config: Arc<SshConfig>,
    handles: Handles,
    login_grace: Duration,
    tokens: StopTokens,
) {
    let StopTokens { closing, stop } = tokens;
    let Accepted {
        socket,
        peer,
        conn_id,
        at,
    } = accepted;
    let deadline = at + login_grace;
    let startup = tokio::select! {
        admitted = ctx.admission.wait_startup(peer.ip(), deadline) => admitted,
        () = closing.cancelled() => return,
        // A client that gives up while it waits for a place gives its
        // place in the queue back at once, not at the end of its grace.
        () = peer_closed(&socket) => {
            tracing::debug!(%peer, "connection closed by the client while waiting to log in");
            return;
        }
    };
    let startup = match startup {
        Ok(slot) => slot,
        Err(refusal) => {
            ctx.admission.log_refusal(refusal, peer);
            let _ = socket.try_write(format!("{}\r\n", refusal.message()).as_bytes());
            return;
        }
    };
    let channel_tasks = TaskTracker::new();
    let (handler, logged_in) =
        connection::Connection::new(ctx.clone(), peer, startup, conn_id, channel_tasks.clone());
    drop(ctx);
    let task = ConnectionTask {
        peer,
        conn_id,
        logged_in,
        handles,
        // What is left of the grace time after waiting for a place.
        login_grace: deadline.saturating_duration_since(tokio::time::Instant::now()),
    };
    spawn_connection(config, socket, handler, task, channel_tasks, stop).await;
}

/// Completes when the peer has shut down its side of `socket`, without
/// reading what it sent (its version string must still reach the SSH
/// session). Readiness that only means "data waiting" is cleared, so that
/// the next wake-up is new data or the peer's FIN, which epoll reports as
/// read-closed (EPOLLRDHUP) even while data is unread. Clearing readiness
/// without reading is safe here only because the socket then leaves this
/// runtime (`spawn_connection` moves it to the connection's own), where it
/// is registered anew and the data waiting is reported again. A client
/// that half-closes before logging in counts as gone: no SSH client does.
async fn peer_closed(socket: &tokio::net::TcpStream) {
    use tokio::io::Interest;
    loop {
        match socket.ready(Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() => return,
            Ok(_) => {
                let _ = socket.try_io(Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
            }
            Err(_) => return,
        }
    }
}

/// Accepts connections on `listener` until `shutdown` completes, then
/// disconnects every session and waits (up to a grace period) for their
/// open files to be flushed or discarded.
pub async fn run(
    listener: TcpListener,
    config: Arc<SshConfig>,
    ctx: Arc<ServerContext>,
    mut alive: mpsc::Receiver<()>,
    login_grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut sessions = tokio::task::JoinSet::new();
    let stop = CancellationToken::new();
    let tokens = StopTokens {
        closing: CancellationToken::new(),
        stop: stop.clone(),
    };
    let handles: Handles = Arc::default();
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // A banned source is closed before the banner: it learns
                // nothing and costs no key exchange. One log line per ban.
                if let Some(penalties) = &ctx.penalties
                    && let BanCheck::Banned { remaining, first } = penalties.admission(peer.ip(), Instant::now())
                {
                    if first {
                        warn!(%peer, remaining_secs = remaining.as_secs(), "connection refused: source banned after repeated authentication failures");
                    }
                    drop(socket);
                    continue;
                }
                let _ = socket.set_nodelay(true);
                next_id += 1;
                let accepted = Accepted {
                    socket,
                    peer,
                    conn_id: next_id,
                    at: tokio::time::Instant::now(),
                };
                sessions.spawn(admit(
                    accepted,
                    ctx.clone(),
                    config.clone(),
                    handles.clone(),
                    login_grace,
                    tokens.clone(),
                ));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    info!("stopping: closing sessions");
    // Long store work would hold its session past the grace period: stop it.
    ctx.store_stop.raise();
    tokens.closing.cancel();
    let open: Vec<_> = lock(&handles).drain().map(|(_, h)| h).collect();
    // Each disconnect is a message to the session's connection loop. A loop
    // that is stuck (its channel's queue full behind a client that stopped
    // reading) never takes it, and its queue may be full too: send them all
    // at once and wait no longer than the grace period in all.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let mut disconnecting = tokio::task::JoinSet::new();
    for h in open {
        disconnecting.spawn(async move {
            let _ = h
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "server shutting down".into(),
                    "en".into(),
                )
                .await;
        });
    }
    let _ = tokio::time::timeout_at(deadline, disconnecting.join_all()).await;
    drop(ctx);
    // The context holds the only `alive` sender and every session task holds
    // the context: when all are gone, every open file was closed, flushed or
    // discarded.
    if tokio::time::timeout_at(deadline, alive.recv())
        .await
        .is_err()
    {
        warn!("some sessions did not finish in time");
    }
    // Connections still running are stopped: each thread drops what it
    // holds (open files are flushed or discarded, sessions log out) before
    // the caller shuts down the audit log.
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(3), sessions.join_all())
        .await
        .is_err()
    {
        warn!("some connections did not stop");
    }
}
