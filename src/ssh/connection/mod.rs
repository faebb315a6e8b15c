//! One SSH connection: its state, and what its channels may do (an SFTP
//! subsystem or a legacy scp exec; nothing else). How it logs in is in
//! [`login`].

mod login;

use login::PASSWORD_PROMPT;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use russh::server::{Auth, ChannelOpenHandle, Msg, Response, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use tokio_util::task::TaskTracker;
use tracing::info;
use zeroize::Zeroizing;

use super::ServerContext;
use super::admission::{SessionSlot, StartupSlot};
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
        Ok(self.publickey_offered(user, offer.public_key).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.note_user(user);
        Ok(self.publickey_login(user, key.public_key).await)
    }

    /// Called by russh only after it has verified the session signature
    /// with the certificate's key (and the certificate's own signature and
    /// window): the client holds the certified key.
    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        self.note_user(user);
        Ok(self.certificate_login(user, certificate).await)
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
        let access = self.ctx.access(&login.user);
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
                access,
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
        let access = self.ctx.access(&login.user);
        let handle = session.handle();
        self.channel_tasks.spawn(async move {
            let mut stream = channel.into_stream();
            let status = crate::scp::serve(&mut stream, store, &command, events, access).await;
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
