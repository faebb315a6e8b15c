//! PAM for Linux users (cargo feature `pam`): one blocking transaction per
//! login attempt.
//!
//! The client's password is collected by the SSH layer first (the
//! `password` method, or one hidden `Password: ` prompt of
//! `keyboard-interactive`); the PAM conversation then answers every hidden
//! prompt with it, as OpenSSH's password authentication does, and refuses
//! visible prompts (a PAM stack that needs a second factor is not
//! supported). A transaction is `pam_authenticate` then `pam_acct_mgmt`
//! (expired or locked accounts, `pam_access`, ...), or `pam_acct_mgmt` alone
//! for a public-key login. No PAM session is opened and no credentials are
//! set: the server does not change uid, and a user's files are the server's.
//!
//! Everything here blocks (a module may sleep for its failure delay, or
//! wait on a network directory): [`super::SystemUsers`] runs it on a
//! blocking thread, with a timeout.

use std::ffi::{CStr, CString};

use pam_client::{Context, ConversationHandler, ErrorCode, Flag};
use zeroize::Zeroizing;

/// What OpenSSH sends PAM instead of the password of an account that may
/// not log in (root, by default), so that the attempt costs what a wrong
/// password costs, without testing the real password.
pub(super) const BOGUS_PASSWORD: &[u8] = b"\x08\n\r\x7fINCORRECT";

/// Why PAM refused a login (for the log only; the client is told nothing).
#[derive(Debug, thiserror::Error)]
pub(super) enum PamRefusal {
    /// `pam_start` failed: the service is missing or broken.
    #[error("PAM service {service:?} could not start: {message}")]
    Start {
        /// The service name.
        service: String,
        /// PAM's description.
        message: String,
    },
    /// `pam_authenticate` said no (wrong password, unknown user, locked
    /// password, ...).
    #[error("authentication failed: {0}")]
    Authenticate(String),
    /// The password has expired and would have to be changed, which this
    /// server cannot offer.
    #[error("the password has expired and must be changed")]
    PasswordExpired,
    /// `pam_acct_mgmt` said no (expired account, access rules, ...).
    #[error("account refused: {0}")]
    Account(String),
}

/// One PAM transaction.
pub(super) struct PamRequest<'a> {
    /// The service (the file name under `/etc/pam.d`).
    pub service: &'a str,
    /// The login name.
    pub user: &'a str,
    /// The password to authenticate with; `None` to check the account only
    /// (a public-key login).
    pub password: Option<&'a [u8]>,
    /// The client's address (`PAM_RHOST`, for `pam_access` and the logs).
    pub rhost: Option<&'a str>,
}

/// Runs the transaction; `Ok` when the user may log in. Blocking.
pub(super) fn run(request: &PamRequest<'_>) -> Result<(), PamRefusal> {
    let conversation = PasswordConversation {
        password: request.password.map(|p| Zeroizing::new(p.to_vec())),
    };
    let start_failed = |e: pam_client::Error| PamRefusal::Start {
        service: request.service.to_owned(),
        message: e.to_string(),
    };
    let mut context =
        Context::new(request.service, Some(request.user), conversation).map_err(start_failed)?;
    // As OpenSSH does for sessions without a terminal.
    context.set_tty(Some("ssh")).map_err(start_failed)?;
    if let Some(rhost) = request.rhost {
        context.set_rhost(Some(rhost)).map_err(start_failed)?;
    }
    if request.password.is_some() {
        context
            .authenticate(Flag::SILENT | Flag::DISALLOW_NULL_AUTHTOK)
            .map_err(|e| PamRefusal::Authenticate(e.to_string()))?;
    }
    match context.acct_mgmt(Flag::SILENT | Flag::DISALLOW_NULL_AUTHTOK) {
        Ok(()) => Ok(()),
        Err(e) if e.code() == ErrorCode::NEW_AUTHTOK_REQD => Err(PamRefusal::PasswordExpired),
        Err(e) => Err(PamRefusal::Account(e.to_string())),
    }
}

/// Answers PAM's prompts for a login whose password is already known.
struct PasswordConversation {
    /// `None` for an account-only transaction: every prompt is refused.
    password: Option<Zeroizing<Vec<u8>>>,
}

impl ConversationHandler for PasswordConversation {
    fn prompt_echo_on(&mut self, prompt: &CStr) -> Result<CString, ErrorCode> {
        tracing::debug!(prompt = %prompt.to_string_lossy(), "PAM asked a visible question; refused");
        Err(ErrorCode::CONV_ERR)
    }

    fn prompt_echo_off(&mut self, _prompt: &CStr) -> Result<CString, ErrorCode> {
        match &self.password {
            // A password with a NUL byte cannot be passed to PAM: refused.
            Some(password) => CString::new(password.as_slice()).map_err(|_| ErrorCode::CONV_ERR),
            None => Err(ErrorCode::CONV_ERR),
        }
    }

    fn text_info(&mut self, msg: &CStr) {
        tracing::debug!(message = %msg.to_string_lossy(), "PAM information");
    }

    fn error_msg(&mut self, msg: &CStr) {
        tracing::debug!(message = %msg.to_string_lossy(), "PAM error message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_answers_hidden_prompts_only() {
        let mut conv = PasswordConversation {
            password: Some(Zeroizing::new(b"pw".to_vec())),
        };
        let prompt = c"Password: ";
        assert_eq!(conv.prompt_echo_off(prompt).unwrap().as_bytes(), b"pw");
        assert_eq!(conv.prompt_echo_off(prompt).unwrap().as_bytes(), b"pw");
        assert_eq!(
            conv.prompt_echo_on(c"login: ").unwrap_err(),
            ErrorCode::CONV_ERR
        );
        let mut none = PasswordConversation { password: None };
        assert!(none.prompt_echo_off(prompt).is_err());
        let mut nul = PasswordConversation {
            password: Some(Zeroizing::new(b"a\0b".to_vec())),
        };
        assert!(nul.prompt_echo_off(prompt).is_err());
    }

    #[test]
    fn a_missing_service_does_not_authenticate() {
        // libpam falls back to /etc/pam.d/other for an unknown service; on
        // Debian that is the common-* stack, which knows no such user.
        let request = PamRequest {
            service: "dropzone-unit-test-no-such-service",
            user: "no-such-user-dz",
            password: Some(b"x"),
            rhost: Some("192.0.2.1"),
        };
        assert!(run(&request).is_err());
    }
}
