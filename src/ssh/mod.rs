//! The SSH server: host keys, authentication, and what a session may do.
//!
//! A session may open the `sftp` subsystem or exec a legacy `scp -t`/`scp -f`;
//! shells, ptys, environment, X11, agent and port forwarding are refused.
//! A login succeeds only once the user's data key is unwrapped: if the key
//! service fails, the login fails closed.

mod connection;
pub mod host_keys;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::server::Config as SshConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::auth::{Authenticator, SystemUsers};
use crate::keys::UserKeys;
use crate::sftp::SftpConfig;

/// How long a graceful stop waits for open sessions to finish their files.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything the connections of one server share.
pub struct ServerContext {
    users_file: PathBuf,
    users: Mutex<UsersCache>,
    /// Linux users (`[auth] pam = true`), for names the users file does not
    /// know.
    system_users: Option<Arc<SystemUsers>>,
    keys: UserKeys,
    data_dir: PathBuf,
    sftp: SftpConfig,
    /// Upload scanning and notifications (`[upload]`), if configured.
    uploads: Option<Arc<crate::upload::Uploads>>,
    /// Never read: the server waits at shutdown until the last context, and
    /// with it this sender, is dropped by the last session task.
    #[allow(dead_code)]
    alive: mpsc::Sender<()>,
}

struct UsersCache {
    modified: Option<SystemTime>,
    auth: Arc<Authenticator>,
}

impl ServerContext {
    /// Builds the context; the users file is loaded now (a broken file is an
    /// error at start-up) and reloaded whenever it changes on disk. With
    /// `system_users`, Linux users log in too (by password, and by
    /// keyboard-interactive, which is offered only then).
    pub fn new(
        users_file: PathBuf,
        keys: UserKeys,
        data_dir: PathBuf,
        sftp: SftpConfig,
        system_users: Option<SystemUsers>,
        uploads: Option<Arc<crate::upload::Uploads>>,
    ) -> Result<(Arc<Self>, mpsc::Receiver<()>), crate::auth::users_file::UsersFileError> {
        let auth = Arc::new(Authenticator::load(&users_file)?);
        let modified = modified_time(&users_file);
        let (alive, alive_rx) = mpsc::channel(1);
        Ok((
            Arc::new(ServerContext {
                users_file,
                users: Mutex::new(UsersCache { modified, auth }),
                system_users: system_users.map(Arc::new),
                keys,
                data_dir,
                sftp,
                uploads,
                alive,
            }),
            alive_rx,
        ))
    }

    /// The current authenticator, reloaded if the users file changed (a
    /// `dropzone user add` takes effect without a restart). A file that no
    /// longer parses keeps the previous users and is logged.
    fn authenticator(&self) -> Arc<Authenticator> {
        let mut cache = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let now = modified_time(&self.users_file);
        if now != cache.modified {
            match Authenticator::load(&self.users_file) {
                Ok(auth) => {
                    info!(path = %self.users_file.display(), "users file reloaded");
                    cache.auth = Arc::new(auth);
                    cache.modified = now;
                }
                Err(e) => {
                    warn!(error = %e, "users file changed but cannot be used; keeping the previous users")
                }
            }
        }
        cache.auth.clone()
    }
}

fn modified_time(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The russh configuration for the server.
pub fn ssh_config(
    host_keys: Vec<russh::keys::PrivateKey>,
    max_auth_attempts: u32,
    idle_timeout: Duration,
) -> SshConfig {
    SshConfig {
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
        inactivity_timeout: Some(idle_timeout),
        // Large windows and packets let one channel fill a fast link:
        // 4 MiB in flight (twice OpenSSH's 64 x 32 KiB requests), 256 KiB
        // per packet. The window is memory per channel: it bounds what a
        // client can make the server buffer.
        window_size: 4 * 1024 * 1024,
        maximum_packet_size: 256 * 1024,
        channel_buffer_size: 256,
        nodelay: true,
        ..SshConfig::default()
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
    let handles: Arc<Mutex<std::collections::HashMap<u64, russh::server::Handle>>> = Arc::default();
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
                let _ = socket.set_nodelay(true);
                let (handler, logged_in) = connection::Connection::new(ctx.clone(), peer);
                let config = config.clone();
                let handles = handles.clone();
                next_id += 1;
                let conn_id = next_id;
                sessions.spawn(async move {
                    let running = match russh::server::run_stream(config, socket, handler).await {
                        Ok(running) => running,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "SSH handshake failed");
                            return;
                        }
                    };
                    let handle = running.handle();
                    handles.lock().unwrap_or_else(|p| p.into_inner()).insert(conn_id, handle.clone());
                    // Login grace: a connection that has not logged in by
                    // then is dropped, so idle unauthenticated sockets
                    // cannot pile up.
                    let grace = tokio::spawn(async move {
                        tokio::time::sleep(login_grace).await;
                        if !logged_in.load(std::sync::atomic::Ordering::Acquire) {
                            info!(%peer, "login grace time exceeded");
                            let _ = handle
                                .disconnect(russh::Disconnect::ByApplication, "login grace time exceeded".into(), "en".into())
                                .await;
                        }
                    });
                    if let Err(e) = running.await {
                        tracing::debug!(%peer, error = %e, "session ended with an error");
                    }
                    grace.abort();
                    handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&conn_id);
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    info!("stopping: closing sessions");
    let open: Vec<_> = handles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, h)| h)
        .collect();
    for h in open {
        let _ = h
            .disconnect(
                russh::Disconnect::ByApplication,
                "server shutting down".into(),
                "en".into(),
            )
            .await;
    }
    drop(ctx);
    // The context holds the only `alive` sender and every session task holds
    // the context: when all are gone, every open file was closed, flushed or
    // discarded.
    if tokio::time::timeout(SHUTDOWN_GRACE, alive.recv())
        .await
        .is_err()
    {
        warn!("some sessions did not finish in time");
    }
    sessions.abort_all();
}
