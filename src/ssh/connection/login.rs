//! How a connection logs in: public keys, OpenSSH certificates, passwords
//! and keyboard-interactive, checked against the users file or (with `pam`)
//! the Linux users; penalties for failures; and the completion of a login,
//! which fails closed when the user's key or root cannot be had.
//!
//! Revoked keys (`[auth] revoked_keys`) are refused for plain keys and
//! certificates alike; when that file cannot be used, every key login is.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Certificate, PublicKey};
use russh::server::Auth;
use russh::{MethodKind, MethodSet};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{Connection, LoggedIn};
use crate::auth::certificate::{self, Expected};
use crate::auth::penalty::FailureOutcome;
use crate::keys::KeyError;
use crate::observe::{self, CertificateId, Refused, UserSession};
use crate::store::UserStore;
use crate::username::UserName;

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
pub(super) const PASSWORD_PROMPT: &[(Cow<'static, str>, bool)] =
    &[(Cow::Borrowed("Password: "), false)];

/// Who a login name belongs to (decided before any check, and never told
/// to the client).
pub(super) enum Owner {
    /// A name of the users file (also when system users are off: then
    /// every name is checked against the users file).
    UsersFile,
    /// A name the users file does not know, with system users on.
    System(Arc<crate::auth::SystemUsers>),
}

impl Connection {
    /// The rejection of every method: the client may go on with public
    /// key, password, and (only with system users) keyboard-interactive.
    pub(super) fn reject(&self) -> Auth {
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
    pub(super) fn banned(&self) -> bool {
        self.ctx
            .penalties
            .as_ref()
            .is_some_and(|p| p.is_banned(self.peer.ip(), Instant::now()))
    }

    /// Records a failed attempt against this connection's source, then
    /// slows the rejection by a tenth of the source's penalty (at most
    /// [`MAX_FAILURE_DELAY`]). Every failure from the source is slowed
    /// alike, so the delay says nothing about which users exist.
    pub(super) async fn record_failure(&self, user: &str) {
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
    pub(super) fn login_failed(&self, user: &str, method: &'static str, result: &'static str) {
        observe::login_failed(&self.ctx.observer, self.id, user, self.peer, method, result);
    }

    /// Reports a refused login attempt with its reason and certificate.
    fn report_refused(
        &self,
        user: &str,
        method: &'static str,
        result: &'static str,
        refused: Refused,
    ) {
        observe::login_failed_with(
            &self.ctx.observer,
            self.id,
            user,
            self.peer,
            method,
            result,
            refused,
        );
    }

    /// Rejects a login attempt and reports it.
    pub(super) fn deny(&self, user: &str, method: &'static str) -> Auth {
        self.login_failed(user, method, "denied");
        self.reject()
    }

    /// Rejects wrong credentials (a refused password or key signature):
    /// reports them, counts them against the source and slows the
    /// rejection (see [`Connection::record_failure`]). A key merely offered
    /// and not accepted is not counted: clients try each key they hold.
    pub(super) async fn deny_and_penalize(&self, user: &str, method: &'static str) -> Auth {
        self.login_failed(user, method, "denied");
        self.record_failure(user).await;
        self.reject()
    }

    /// Why the revoked keys file refuses `key` (a plain key, or the key of
    /// a certificate), if it does: revoked, or the file cannot be used.
    fn revocation_refusal(&self, key: &KeyData) -> Option<String> {
        match self.ctx.key_trust.key_revoked(key) {
            Ok(false) => None,
            Ok(true) => Some("key revoked".to_owned()),
            Err(e) => Some(format!("revoked keys file unusable ({e})")),
        }
    }

    /// Answers a public key offered without a signature (or before its
    /// signature is checked). With certificate logins on, a key that is not
    /// authorized is let on to the signed attempt too: russh shows a
    /// certificate's offer as its bare key, and the certificate itself is
    /// checked once the client has proved it holds the key
    /// ([`Connection::certificate_login`]).
    pub(super) async fn publickey_offered(&self, user: &str, key: &PublicKey) -> Auth {
        if self.banned() {
            self.login_failed(user, "publickey", "banned");
            return self.reject();
        }
        if let Some(reason) = self.revocation_refusal(key.key_data()) {
            info!(peer = %self.peer, user, reason, "public key refused");
            let refused = Refused {
                reason: Some(reason),
                certificate: None,
            };
            self.report_refused(user, "publickey", "denied", refused);
            return self.reject();
        }
        if self.key_allowed(user, key).await || self.ctx.key_trust.certificates_enabled() {
            Auth::Accept
        } else {
            // Reported like a refused signature: a client trying several
            // keys leaves one line per key it offered in vain.
            self.deny(user, "publickey")
        }
    }

    /// Logs in with a plain public key whose signature russh has verified.
    pub(super) async fn publickey_login(&mut self, user: &str, key: &PublicKey) -> Auth {
        if self.banned() {
            info!(peer = %self.peer, user, "login refused: source banned");
            self.login_failed(user, "publickey", "banned");
            return self.reject();
        }
        if let Some(reason) = self.revocation_refusal(key.key_data()) {
            info!(peer = %self.peer, user, reason, "public key refused");
            let refused = Refused {
                reason: Some(reason),
                certificate: None,
            };
            self.report_refused(user, "publickey", "denied", refused);
            self.record_failure(user).await;
            return self.reject();
        }
        if !self.key_allowed(user, key).await {
            info!(peer = %self.peer, user, "public key refused");
            if self.ctx.key_trust.certificates_enabled() {
                // Its offer was let through in case it was a certificate
                // (see `publickey_offered`): a client trying its keys one
                // after another is not penalised for that.
                return self.deny(user, "publickey");
            }
            return self.deny_and_penalize(user, "publickey").await;
        }
        // A Linux user's account must also pass PAM's account management
        // (expired, disabled, pam_access...), as with OpenSSH's UsePAM.
        if let Owner::System(system) = self.owner(user)
            && !system.account_ok(user, Some(self.peer.ip())).await
        {
            return self.deny(user, "publickey");
        }
        self.complete_login(user, "publickey").await
    }

    /// Logs in with an OpenSSH certificate. russh has verified the session
    /// signature with the certified key (so the client holds its private
    /// key) and the certificate's own signature and window; whether its CA
    /// is trusted, it names an accepted principal, its options hold and
    /// it is not revoked is checked here ([`certificate`]). A refusal is
    /// counted against the source like a refused key signature.
    pub(super) async fn certificate_login(&mut self, user: &str, cert: &Certificate) -> Auth {
        const METHOD: &str = "certificate";
        if self.banned() {
            info!(peer = %self.peer, user, "login refused: source banned");
            self.login_failed(user, METHOD, "banned");
            return self.reject();
        }
        let id = certificate::identity(cert);
        let owner = self.owner(user);
        let principals = match &owner {
            Owner::UsersFile => self
                .ctx
                .authenticator()
                .principals(user)
                .map(<[String]>::to_vec),
            Owner::System(_) => Some(Vec::new()),
        };
        let checked = match &principals {
            // The reply is the same rejection as for any refusal: the
            // client does not learn that the name is unknown.
            None => Err("no such user".to_owned()),
            Some(principals) => {
                let expected = Expected {
                    user,
                    principals,
                    client: self.peer.ip(),
                    now: unix_now(),
                };
                self.ctx
                    .key_trust
                    .check_certificate(cert, &expected)
                    .map_err(|refusal| refusal.to_string())
            }
        };
        if let Err(reason) = checked {
            info!(
                peer = %self.peer,
                user,
                key_id = %observe::escape(&id.key_id),
                serial = id.serial,
                ca = %id.ca,
                reason,
                "certificate refused"
            );
            let refused = Refused {
                reason: Some(format!("certificate refused: {reason}")),
                certificate: Some(id),
            };
            self.report_refused(user, METHOD, "denied", refused);
            self.record_failure(user).await;
            return self.reject();
        }
        if let Owner::System(system) = owner
            && !system.account_ok(user, Some(self.peer.ip())).await
        {
            return self.deny(user, METHOD);
        }
        self.complete_login_with(user, METHOD, Some(id)).await
    }

    /// The users file decides for a name it knows; system users (if on) for
    /// the others.
    pub(super) fn owner(&self, user: &str) -> Owner {
        match &self.ctx.system_users {
            Some(system) if !self.ctx.authenticator().user_exists(user) => {
                Owner::System(system.clone())
            }
            _ => Owner::UsersFile,
        }
    }

    /// Whether `key` may log in as `user` (the offer and the signed attempt
    /// alike).
    pub(super) async fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
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
    pub(super) async fn password_login(
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

    pub(super) fn note_user(&mut self, user: &str) {
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
    pub(super) async fn complete_login(&mut self, user: &str, method: &'static str) -> Auth {
        self.complete_login_with(user, method, None).await
    }

    /// [`Connection::complete_login`] for a certificate login: its events
    /// name the certificate.
    async fn complete_login_with(
        &mut self,
        user: &str,
        method: &'static str,
        certificate: Option<CertificateId>,
    ) -> Auth {
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
                let refused = Refused {
                    reason: None,
                    certificate,
                };
                self.report_refused(name.as_str(), method, refusal.event_result(), refused);
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
            let store = crate::store::open_user(&ctx.backend, &n, key)
                .map_err(LoginFailure::Root)?
                .with_max_file_size(ctx.sftp.max_file_size)
                .with_stop_signal(ctx.store_stop.child());
            // The user's quota account, shared with their other sessions.
            let limits = ctx.quota_source(&n);
            let store = if ctx.quotas.counts(&limits()) {
                let account = ctx.quotas.account(&n, &store, limits).map_err(|e| {
                    LoginFailure::Root(std::io::Error::other(format!("quota usage: {e}")))
                })?;
                store.with_quota(account)
            } else {
                store
            };
            Ok(match &ctx.uploads {
                Some(uploads) => store.with_gate(uploads.gate(n.as_str(), Some(peer))),
                None => store,
            })
        })
        .await;
        match opened {
            Ok(Ok(store)) => {
                match &certificate {
                    Some(c) => info!(
                        peer = %self.peer,
                        user = %name,
                        method,
                        key_id = %observe::escape(&c.key_id),
                        serial = c.serial,
                        ca = %c.ca,
                        "login"
                    ),
                    None => info!(peer = %self.peer, user = %name, method, "login"),
                }
                let session = UserSession::login_with(
                    self.ctx.observer.clone(),
                    self.id,
                    name.as_str(),
                    self.peer,
                    method,
                    certificate,
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
                let refused = Refused {
                    reason: None,
                    certificate,
                };
                self.report_refused(name.as_str(), method, failure.event_result(), refused);
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

/// Seconds since the Unix epoch (0 for a clock set before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
