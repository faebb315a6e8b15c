//! One SSH connection: authentication state and channel policy.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Response, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::ServerContext;
use super::admission::{SessionSlot, StartupSlot};
use crate::auth::penalty::FailureOutcome;
use crate::keys::KeyError;
use crate::observe::{self, UserSession};
use crate::store::UserStore;
use crate::username::UserName;

/// A logged-in user's view of the store.
struct LoggedIn {
    user: UserName,
    store: Arc<UserStore>,
    /// This session's place under the session caps, held while it lasts.
    _slot: SessionSlot,
    /// Shared with the channels; its drop, after the last of them, reports
    /// the logout.
    session: Arc<UserSession>,
    /// The handle caps and in-flight budgets every SFTP channel of this
    /// connection shares.
    budget: Arc<crate::sftp::budget::ConnectionBudget>,
}

impl Drop for LoggedIn {
    /// The connection has ended: long store work it started (a gap being
    /// filled, a copy) stops now rather than run on for nobody.
    fn drop(&mut self) {
        self.store.interrupt();
    }
}

/// The russh handler of one connection.
pub(super) struct Connection {
    ctx: Arc<ServerContext>,
    peer: SocketAddr,
    /// The connection's number in events.
    id: u64,
    /// The user name of the authentication attempts so far; a change of
    /// name starts over.
    attempted_user: Option<String>,
    logged_in: Option<LoggedIn>,
    logged_in_flag: Arc<AtomicBool>,
    /// Set when valid credentials could not complete a login: the reason
    /// the client is told as the connection is closed.
    refusal: Option<&'static str>,
    /// Channels opened and not yet given to an SFTP or scp task, each with
    /// its place under the channel cap.
    channels: HashMap<ChannelId, (Channel<Msg>, ChannelSlot)>,
    /// Session channels open on this connection, capped at
    /// `limits.max_channels_per_connection` (as OpenSSH's MaxSessions).
    open_channels: Arc<AtomicUsize>,
    /// Where the SFTP and scp tasks of this connection run, so that the
    /// connection's thread waits for them before it ends.
    channel_tasks: TaskTracker,
    /// The place under the unauthenticated-connection caps, given back at
    /// login (or when the connection ends).
    startup: Option<StartupSlot>,
}

/// A session channel's place under the per-connection channel cap, given
/// back when dropped: when the client closes a channel that never started
/// a task, or when the channel's SFTP or scp task ends.
struct ChannelSlot(Arc<AtomicUsize>);

impl ChannelSlot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        ChannelSlot(open.clone())
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a login with valid credentials could not be completed.
enum LoginFailure {
    /// The user's data key could not be had.
    Key(KeyError),
    /// The user's root directory could not be opened.
    Root(std::io::Error),
}

impl LoginFailure {
    /// The `result` of the `login_failed` event.
    fn event_result(&self) -> &'static str {
        match self {
            LoginFailure::Key(KeyError::Kms(e)) if e.is_transient() => "key_service_unavailable",
            LoginFailure::Key(KeyError::Kms(_)) => "key_service_refused",
            LoginFailure::Key(_) => "key_unavailable",
            LoginFailure::Root(_) => "root_unavailable",
        }
    }

    /// What the client is told: the cause in general terms, never a path or
    /// the key service's reply (those go to the log).
    fn client_message(&self) -> &'static str {
        match self {
            LoginFailure::Key(KeyError::Kms(e)) if e.is_transient() => {
                "login refused: the key service is unavailable; try again later"
            }
            LoginFailure::Key(KeyError::Kms(_)) => {
                "login refused: the key service refused your key; contact the administrator"
            }
            LoginFailure::Key(_) => {
                "login refused: your key cannot be loaded; contact the administrator"
            }
            LoginFailure::Root(_) => {
                "login refused: your files cannot be opened; contact the administrator"
            }
        }
    }
}

impl std::fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginFailure::Key(e) => write!(f, "user key unavailable: {e}"),
            LoginFailure::Root(e) => write!(f, "cannot open the user's directory: {e}"),
        }
    }
}

/// The longest extra delay of a rejection for a penalised source (on top of
/// russh's fixed rejection time): enough to slow guessing, short enough
/// that a client does not time out.
const MAX_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// The one prompt of keyboard-interactive: the password, not echoed.
const PASSWORD_PROMPT: &[(Cow<'static, str>, bool)] = &[(Cow::Borrowed("Password: "), false)];

/// Who a login name belongs to (decided before any check, and never told
/// to the client).
enum Owner {
    /// A name of the users file (also when system users are off: then
    /// every name is checked against the users file).
    UsersFile,
    /// A name the users file does not know, with system users on.
    System(Arc<crate::auth::SystemUsers>),
}

impl Connection {
    pub(super) fn new(
        ctx: Arc<ServerContext>,
        peer: SocketAddr,
        startup: StartupSlot,
        id: u64,
        channel_tasks: TaskTracker,
    ) -> (Self, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (
            Connection {
                ctx,
                peer,
                id,
                attempted_user: None,
                logged_in: None,
                logged_in_flag: flag.clone(),
                refusal: None,
                channels: HashMap::new(),
                open_channels: Arc::default(),
                channel_tasks,
                startup: Some(startup),
            },
            flag,
        )
    }

    /// The rejection of every method: the client may go on with public
    /// key, password, and (only with system users) keyboard-interactive.
    fn reject(&self) -> Auth {
        let methods: &[MethodKind] = if self.ctx.system_users.is_some() {
            &[
                MethodKind::PublicKey,
                MethodKind::Password,
                MethodKind::KeyboardInteractive,
            ]
        } else {
            &[MethodKind::PublicKey, MethodKind::Password]
        };
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(methods)),
            partial_success: false,
        }
    }

    /// Whether this connection's source is banned now: then no credential
    /// is even checked (a banned source cannot learn a right password).
    fn banned(&self) -> bool {
        self.ctx
            .penalties
            .as_ref()
            .is_some_and(|p| p.is_banned(self.peer.ip(), Instant::now()))
    }

    /// Records a failed attempt against this connection's source, then
    /// slows the rejection by a tenth of the source's penalty (at most
    /// [`MAX_FAILURE_DELAY`]). Every failure from the source is slowed
    /// alike, so the delay says nothing about which users exist.
    async fn record_failure(&self, user: &str) {
        let Some(penalties) = &self.ctx.penalties else {
            return;
        };
        let now = Instant::now();
        match penalties.record_failure(self.peer.ip(), now) {
            FailureOutcome::NotBanned => {}
            FailureOutcome::BanStarted(d) => {
                warn!(peer = %self.peer, user, ban_secs = d.as_secs(), "source banned after repeated authentication failures");
            }
            FailureOutcome::BanExtended(d) => {
                info!(peer = %self.peer, user, ban_secs = d.as_secs(), "ban extended by another failure");
            }
        }
        let delay = (penalties.remaining(self.peer.ip(), now) / 10).min(MAX_FAILURE_DELAY);
        tokio::time::sleep(delay).await;
    }

    /// Reports a refused login attempt (`result`: `denied` for refused
    /// credentials, or why valid ones could not log in).
    fn login_failed(&self, user: &str, method: &'static str, result: &'static str) {
        observe::login_failed(&self.ctx.observer, self.id, user, self.peer, method, result);
    }

    /// Rejects a login attempt and reports it.
    fn deny(&self, user: &str, method: &'static str) -> Auth {
        self.login_failed(user, method, "denied");
        self.reject()
    }

    /// Rejects wrong credentials (a refused password or key signature):
    /// reports them, counts them against the source and slows the
    /// rejection (see [`Connection::record_failure`]). A key merely offered
    /// and not accepted is not counted: clients try each key they hold.
    async fn deny_and_penalize(&self, user: &str, method: &'static str) -> Auth {
        self.login_failed(user, method, "denied");
        self.record_failure(user).await;
        self.reject()
    }

    /// The users file decides for a name it knows; system users (if on) for
    /// the others.
    fn owner(&self, user: &str) -> Owner {
        match &self.ctx.system_users {
            Some(system) if !self.ctx.authenticator().user_exists(user) => {
                Owner::System(system.clone())
            }
            _ => Owner::UsersFile,
        }
    }

    /// Whether `key` may log in as `user` (the offer and the signed attempt
    /// alike).
    async fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
        let ip = Some(self.peer.ip());
        match self.owner(user) {
            Owner::UsersFile => self.ctx.authenticator().key_allowed(user, key, ip),
            Owner::System(system) => {
                // Reads the passwd database and the user's home: blocking.
                let (user, key) = (user.to_owned(), key.clone());
                tokio::task::spawn_blocking(move || system.key_allowed(&user, &key, ip))
                    .await
                    .unwrap_or(false)
            }
        }
    }

    /// Checks a password (from the `password` method or keyboard-
    /// interactive) and completes the login. Unknown users, wrong passwords
    /// and refused accounts get the same rejection; with system users on,
    /// a wrong users-file password also spends PAM's failure delay, so that
    /// neither kind of name can be told from the other by timing.
    async fn password_login(
        &mut self,
        user: &str,
        password: Zeroizing<Vec<u8>>,
        method: &'static str,
    ) -> Auth {
        if self.banned() {
            info!(peer = %self.peer, user, method, "login refused: source banned");
            self.login_failed(user, method, "banned");
            return self.reject();
        }
        let ip = Some(self.peer.ip());
        let ok = match self.owner(user) {
            Owner::System(system) => system.password_ok(user, password, ip).await,
            Owner::UsersFile => {
                let auth = self.ctx.authenticator();
                let u = user.to_owned();
                let ok = tokio::task::spawn_blocking(move || {
                    // A password that is not UTF-8 is checked as a wrong one,
                    // at the same cost.
                    let text = Zeroizing::new(String::from_utf8_lossy(&password).into_owned());
                    std::str::from_utf8(&password).is_ok() & auth.password_ok(&u, &text)
                })
                .await
                .unwrap_or(false);
                if !ok && let Some(system) = &self.ctx.system_users {
                    system.spend_failure(user, ip).await;
                }
                ok
            }
        };
        if !ok {
            info!(peer = %self.peer, user, method, "password refused");
            return self.deny_and_penalize(user, method).await;
        }
        self.complete_login(user, method).await
    }

    fn note_user(&mut self, user: &str) {
        if self.attempted_user.as_deref() != Some(user) {
            if self.attempted_user.is_some() {
                info!(peer = %self.peer, "user name changed during authentication; starting over");
            }
            self.attempted_user = Some(user.to_owned());
            self.logged_in = None;
        }
    }

    /// Completes a login whose credentials were accepted: unwraps (or
    /// creates) the user's key, then opens their root. Without the key the
    /// login fails closed: nothing is created (no key file, no directory)
    /// and nothing can be read or written.
    ///
    /// A failure is answered with [`Auth::Accept`] followed at once, in
    /// [`russh::server::Handler::auth_succeeded`], by a disconnect whose
    /// reason tells the client why. A rejection cannot carry a message, and
    /// OpenSSH's client stops at the rejection without reading what follows;
    /// the disconnect reason is what `ssh`, `sftp` and `scp` print. The
    /// session never gets a store: `logged_in` stays empty, so no channel
    /// can open even before the disconnect lands.
    async fn complete_login(&mut self, user: &str, method: &'static str) -> Auth {
        let Ok(name) = UserName::parse(user) else {
            return self.deny(user, method);
        };
        // The caps are checked before the key is unwrapped: a refused
        // login costs the key service nothing.
        let slot = match self.ctx.admission.session(name.as_str()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let told = refusal.message();
                warn!(peer = %self.peer, user = %name, method, told, "login refused");
                self.login_failed(name.as_str(), method, refusal.event_result());
                self.logged_in = None;
                self.refusal = Some(told);
                return Auth::Accept;
            }
        };
        let ctx = self.ctx.clone();
        let n = name.clone();
        let peer = self.peer;
        let opened = tokio::task::spawn_blocking(move || -> Result<UserStore, LoginFailure> {
            // The key first: the user's directory is created only once the
            // key is known to be available.
            let key = ctx.keys.get_or_create(&n).map_err(LoginFailure::Key)?;
            let store = crate::store::open_user(&ctx.data_dir, &n, key)
                .map_err(LoginFailure::Root)?
                .with_max_file_size(ctx.sftp.max_file_size)
                .with_stop_signal(ctx.store_stop.child());
            Ok(match &ctx.uploads {
                Some(uploads) => store.with_gate(uploads.gate(n.as_str(), Some(peer))),
                None => store,
            })
        })
        .await;
        match opened {
            Ok(Ok(store)) => {
                info!(peer = %self.peer, user = %name, method, "login");
                let session = UserSession::login(
                    self.ctx.observer.clone(),
                    self.id,
                    name.as_str(),
                    self.peer,
                    method,
                );
                let budget = self.ctx.budgets.connection(name.as_str(), &self.ctx.sftp);
                self.logged_in = Some(LoggedIn {
                    user: name,
                    store: Arc::new(store),
                    _slot: slot,
                    session,
                    budget,
                });
                self.startup = None;
                self.logged_in_flag.store(true, Ordering::Release);
                Auth::Accept
            }
            Ok(Err(failure)) => {
                let told = failure.client_message();
                warn!(peer = %self.peer, user = %name, reason = %failure, told, "login refused: fails closed");
                self.login_failed(name.as_str(), method, failure.event_result());
                self.logged_in = None;
                self.refusal = Some(told);
                Auth::Accept
            }
            Err(_) => {
                self.login_failed(user, method, "internal_error");
                self.reject()
            }
        }
    }
}

/// An SFTP session's replies, handed to the channel as they are: russh
/// sends each buffer in slices of the client's packet size, without first
/// copying it as a byte-stream writer does.
struct ChannelReplies(russh::ChannelWriteHalf<Msg>);

impl crate::sftp::ReplySink for ChannelReplies {
    async fn send(&mut self, bytes: bytes::Bytes) -> std::io::Result<()> {
        self.0
            .data_bytes(bytes)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))
    }
}

/// Reports the exit status, then EOF and close. Callers keep the channel
/// (its stream, or its halves) until afterwards: the close must come last,
/// as a client that sees it before the exit status (scp in SFTP mode)
/// reports failure.
async fn finish_channel(handle: &russh::server::Handle, id: ChannelId, status: u32) {
    let _ = handle.exit_status_request(id, status).await;
    let _ = handle.eof(id).await;
    let _ = handle.close(id).await;
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(reason) = self.refusal.take() {
            // See `complete_login`: the credentials were good but the login
            // cannot complete; tell the client why and close.
            session.disconnect(russh::Disconnect::ByApplication, reason, "en")?;
        }
        Ok(())
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.note_user(user);
        Ok(self.reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.note_user(user);
        if self.banned() {
            self.login_failed(user, "publickey", "banned");
            return Ok(self.reject());
        }
        if self.key_allowed(user, offer.public_key).await {
            Ok(Auth::Accept)
        } else {
            // Reported like a refused signature: a client trying several
            // keys leaves one line per key it offered in vain.
            Ok(self.deny(user, "publickey"))
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.note_user(user);
        if self.banned() {
            info!(peer = %self.peer, user, "login refused: source banned");
            self.login_failed(user, "publickey", "banned");
            return Ok(self.reject());
        }
        if !self.key_allowed(user, key.public_key).await {
            info!(peer = %self.peer, user, "public key refused");
            return Ok(self.deny_and_penalize(user, "publickey").await);
        }
        // A Linux user's account must also pass PAM's account management
        // (expired, disabled, pam_access...), as with OpenSSH's UsePAM.
        if let Owner::System(system) = self.owner(user)
            && !system.account_ok(user, Some(self.peer.ip())).await
        {
            return Ok(self.deny(user, "publickey"));
        }
        Ok(self.complete_login(user, "publickey").await)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.note_user(user);
        let password = Zeroizing::new(password.as_bytes().to_vec());
        Ok(self.password_login(user, password, "password").await)
    }

    /// Keyboard-interactive, offered only with system users: one hidden
    /// `Password: ` prompt, whose answer is checked as a password.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.note_user(user);
        if self.ctx.system_users.is_none() {
            return Ok(self.reject());
        }
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: Cow::Borrowed(""),
                instructions: Cow::Borrowed(""),
                prompts: Cow::Borrowed(PASSWORD_PROMPT),
            });
        };
        let (Some(answer), None) = (response.next(), response.next()) else {
            info!(peer = %self.peer, user, "keyboard-interactive: expected exactly one answer");
            return Ok(self.deny(user, "keyboard-interactive"));
        };
        let password = Zeroizing::new(answer.to_vec());
        Ok(self
            .password_login(user, password, "keyboard-interactive")
            .await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.logged_in.is_none() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // Each channel can hold an SFTP session's handles and buffers: the
        // cap bounds what one connection can make the server hold, as
        // OpenSSH's MaxSessions does. A channel counts until the client
        // closes it, so a client that never closes its channels only stops
        // itself from opening more.
        let max = self.ctx.admission.max_channels_per_connection();
        if self.open_channels.load(Ordering::Relaxed) >= max {
            info!(peer = %self.peer, max, "session channel refused: too many open on this connection");
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let slot = ChannelSlot::take(&self.open_channels);
        self.channels.insert(channel.id(), (channel, slot));
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(login), true) = (&self.logged_in, name == "sftp") else {
            info!(peer = %self.peer, subsystem = name, "subsystem refused");
            session.channel_failure(id)?;
            return Ok(());
        };
        let Some((channel, slot)) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let (store, user, ctx) = (login.store.clone(), login.user.clone(), self.ctx.clone());
        let budget = login.budget.clone();
        let events = login.session.reporter("sftp");
        let handle = session.handle();
        // Messages for the user that SFTP status replies cannot carry to
        // OpenSSH's client (it prints only the status code) go to stderr.
        let notices = channel.make_writer_ext(Some(1));
        self.channel_tasks.spawn(async move {
            let (mut requests, replies) = channel.split();
            let replies = crate::sftp::serve(
                requests.make_reader(),
                ChannelReplies(replies),
                notices,
                store,
                user,
                ctx.sftp.clone(),
                budget,
                events,
            )
            .await;
            finish_channel(&handle, id, 0).await;
            drop(replies);
            drop(requests);
            drop(ctx);
            drop(slot);
        });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        let accepted = self.logged_in.is_some() && crate::scp::is_scp_command(&command);
        let (Some(login), true, Some((channel, slot))) =
            (&self.logged_in, accepted, self.channels.remove(&id))
        else {
            let shown: String = command.chars().take(80).collect();
            info!(peer = %self.peer, command = %observe::escape(&shown), "exec refused: only scp is available");
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let (store, ctx) = (login.store.clone(), self.ctx.clone());
        let events = login.session.reporter("scp");
        let handle = session.handle();
        self.channel_tasks.spawn(async move {
            let mut stream = channel.into_stream();
            let status = crate::scp::serve(&mut stream, store, &command, events).await;
            finish_channel(&handle, id, status).await;
            drop(stream);
            drop(ctx);
            drop(slot);
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        info!(peer = %self.peer, "shell refused");
        session.channel_failure(id)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        id: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        id: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        session.channel_failure(id)?;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn channel_close(
        &mut self,
        id: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A channel not yet given to a task gives its place back here; one
        // that was gives it back when its task ends (russh may not report
        // the client's close of a channel the server closed first).
        self.channels.remove(&id);
        Ok(())
    }
}
