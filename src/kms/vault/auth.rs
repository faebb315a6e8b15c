//! Vault tokens: a token file, or AppRole logins renewed before their lease
//! runs out.
//!
//! - Token file: its first line, read at start-up and read again after
//!   Vault refuses the token (HTTP 403), so a token that Vault Agent or an
//!   operator replaces in the file is picked up without a restart. It is
//!   never renewed here (that is the job of whoever writes the file).
//! - AppRole: `POST /v1/auth/MOUNT/login {role_id, secret_id}` (both read
//!   from their files at each login, so they can be replaced too). The token
//!   is renewed (`auth/token/renew-self`) once two thirds of its lease have
//!   passed; when renewal fails, or grants less than half the first lease
//!   (the token nears its maximum TTL), it logs in anew. After a 403 (the
//!   token was revoked) it logs in again once.
//!
//! One login or renewal at a time: the session lock is held across it, so
//! concurrent calls wait for its token rather than each logging in.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use zeroize::Zeroizing;

use super::reply;
use super::transport::{Method, Transport};
use crate::kms::KmsError;
use crate::kms::http::read_limited;
use crate::sync::lock;

/// Largest token, role id or secret id file read.
const MAX_SECRET_FILE_LEN: u64 = 4096;

/// Where the token comes from.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A file whose first line is the token.
    TokenFile(PathBuf),
    /// AppRole login with the role id and secret id in these files.
    AppRole {
        /// The AppRole auth mount (`approle` unless enabled elsewhere).
        mount: String,
        /// File holding the role id.
        role_id_file: PathBuf,
        /// File holding the secret id.
        secret_id_file: PathBuf,
    },
}

/// A token in use.
struct Session {
    token: Zeroizing<String>,
    /// The lease granted at login (zero: no expiry).
    first_lease: Duration,
    /// When to renew; `None`: never (no lease, or a token file).
    renew_at: Option<Instant>,
    /// When the token expires; `None`: not known to.
    expires_at: Option<Instant>,
    renewable: bool,
}

/// The current token and how to get a new one.
pub(crate) struct Auth {
    credentials: Credentials,
    session: Mutex<Option<Session>>,
}

impl Auth {
    /// Checks now that the credential files can be read (a token file's
    /// token is kept for the first call); talks to no one.
    pub(crate) fn new(credentials: Credentials) -> Result<Self, KmsError> {
        let session = match &credentials {
            Credentials::TokenFile(path) => Some(token_file_session(path)?),
            Credentials::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                super::check_path_segments("AppRole mount", mount)?;
                read_secret(role_id_file, "role id file")?;
                read_secret(secret_id_file, "secret id file")?;
                None
            }
        };
        Ok(Auth {
            credentials,
            session: Mutex::new(session),
        })
    }

    /// Which kind of credentials these are, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self.credentials {
            Credentials::TokenFile(_) => "token file",
            Credentials::AppRole { .. } => "AppRole",
        }
    }

    /// A token to send now: logs in first if there is none or it has
    /// expired, renews it if its time has come.
    pub(crate) fn token(&self, transport: &Transport) -> Result<Zeroizing<String>, KmsError> {
        let mut session = lock(&self.session);
        let now = Instant::now();
        let fresh = match session.take() {
            None => self.login(transport)?,
            Some(s) if s.expires_at.is_some_and(|t| now >= t) => self.login(transport)?,
            Some(s) if s.renew_at.is_some_and(|t| now >= t) => self.renew(transport, s)?,
            Some(s) => s,
        };
        let token = fresh.token.clone();
        *session = Some(fresh);
        Ok(token)
    }

    /// Vault refused `used` (HTTP 403): forget it, so that the next
    /// [`Auth::token`] logs in again (or re-reads the token file), unless
    /// another thread has already done so.
    pub(crate) fn refused(&self, used: &str) {
        let mut session = lock(&self.session);
        if session.as_ref().is_some_and(|s| s.token.as_str() == used) {
            *session = None;
        }
    }

    fn login(&self, transport: &Transport) -> Result<Session, KmsError> {
        match &self.credentials {
            Credentials::TokenFile(path) => token_file_session(path),
            Credentials::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                #[derive(Serialize)]
                struct Login<'a> {
                    role_id: &'a str,
                    secret_id: &'a str,
                }
                let role_id = read_secret(role_id_file, "role id file")?;
                let secret_id = read_secret(secret_id_file, "secret id file")?;
                let body = Zeroizing::new(
                    serde_json::to_vec(&Login {
                        role_id: &role_id,
                        secret_id: &secret_id,
                    })
                    .map_err(|e| KmsError::Refused(format!("encoding the login: {e}")))?,
                );
                let path = format!("/v1/auth/{mount}/login");
                let session = self.session_from(transport, &path, None, &body, "AppRole login")?;
                tracing::info!(
                    url = %transport.base(),
                    lease_secs = session.first_lease.as_secs(),
                    "logged in to Vault with AppRole"
                );
                Ok(session)
            }
        }
    }

    /// Renews `old`; logs in anew if that fails or grants too little.
    fn renew(&self, transport: &Transport, old: Session) -> Result<Session, KmsError> {
        if !old.renewable {
            return self.login(transport);
        }
        let path = "/v1/auth/token/renew-self";
        match self.session_from(transport, path, Some(&old.token), b"{}", "token renewal") {
            Ok(mut renewed) if renewed.first_lease >= old.first_lease / 2 => {
                tracing::info!(
                    lease_secs = renewed.first_lease.as_secs(),
                    "renewed the Vault token"
                );
                renewed.first_lease = old.first_lease;
                if renewed.token.is_empty() {
                    renewed.token = old.token;
                }
                Ok(renewed)
            }
            Ok(_) => {
                tracing::info!("the Vault token nears its maximum TTL; logging in anew");
                self.login(transport)
            }
            Err(e) => {
                tracing::info!(error = %e, "renewing the Vault token failed; logging in anew");
                self.login(transport)
            }
        }
    }

    /// POSTs `body` to `path` and reads the `auth` of the reply.
    fn session_from(
        &self,
        transport: &Transport,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        what: &str,
    ) -> Result<Session, KmsError> {
        let raw = transport.send(Method::Post, path, token, Some(body))?;
        let url = transport.url(path);
        if !reply::is_success(raw.status) {
            return Err(match reply::failure(&url, raw.status, &raw.body) {
                KmsError::Refused(m) => KmsError::Refused(format!("{what}: {m}")),
                KmsError::Unavailable(m) => KmsError::Unavailable(format!("{what}: {m}")),
                other => other,
            });
        }
        let auth = reply::auth(&url, &raw.body)?;
        let lease = Duration::from_secs(auth.lease_duration);
        let now = Instant::now();
        let (renew_at, expires_at) = if lease.is_zero() {
            (None, None)
        } else {
            (Some(now + lease * 2 / 3), Some(now + lease))
        };
        let token = auth.client_token.unwrap_or_default();
        if token.is_empty() && token_is_required(path) {
            return Err(KmsError::Refused(format!("{what}: {url} gave no token")));
        }
        Ok(Session {
            token,
            first_lease: lease,
            renew_at,
            expires_at,
            renewable: auth.renewable,
        })
    }
}

/// A login must give a token; a renewal may leave it out (it renewed the
/// one sent).
fn token_is_required(path: &str) -> bool {
    path.ends_with("/login")
}

fn token_file_session(path: &Path) -> Result<Session, KmsError> {
    Ok(Session {
        token: read_secret(path, "token file")?,
        first_lease: Duration::ZERO,
        renew_at: None,
        expires_at: None,
        renewable: false,
    })
}

/// The first line of a small secret file, trimmed: printable ASCII.
fn read_secret(path: &Path, what: &str) -> Result<Zeroizing<String>, KmsError> {
    let bytes = Zeroizing::new(read_limited(path, MAX_SECRET_FILE_LEN, what)?);
    let bad = |why: &str| KmsError::Misconfigured(format!("{what} {}: {why}", path.display()));
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8"))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(bad("empty"));
    }
    if !line.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("expected printable ASCII without spaces"));
    }
    Ok(Zeroizing::new(line.to_owned()))
}
