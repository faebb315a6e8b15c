//! The pool of logged-in sessions with the token: logging in, handing out
//! a session per request, and keeping the idle ones in a good state (the
//! parent module's doc says the rules).

use std::ops::Deref;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};

use super::{Pkcs11KeyStore, token_error};
use crate::eaas::keystore::KeyStoreError;
use crate::sync::lock;

/// Idle sessions kept open for later requests; more may be open while
/// requests run, and are closed when done.
const MAX_IDLE_SESSIONS: usize = 8;

impl Pkcs11KeyStore {
    /// Logs `session` in as the user unless the application is logged in
    /// already (a login holds for all its sessions with the token).
    pub(super) fn log_in(&self, session: &Session) -> Result<(), CkError> {
        if session.get_session_info()?.session_state() == SessionState::RwUser {
            return Ok(());
        }
        match session.login_with_raw(UserType::User, &self.pin) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A logged-in session: an idle one, or a new one.
    pub(super) fn session(&self) -> Result<Lease<'_>, KeyStoreError> {
        let idle = lock(&self.idle).pop();
        if let Some(session) = idle {
            match self.log_in(&session) {
                Ok(()) => return Ok(Lease::new(self, session)),
                // Closed under us (token removed, module reset, ...): drop
                // it and open another.
                Err(e) => tracing::debug!(error = %e, "dropping an idle PKCS#11 session"),
            }
        }
        let session = self.ctx.open_rw_session(self.slot).map_err(token_error)?;
        self.log_in(&session).map_err(token_error)?;
        Ok(Lease::new(self, session))
    }
}

/// A session in use; back to the idle ones when [`Lease::keep`] says it
/// is in a good state, closed otherwise.
pub(super) struct Lease<'a> {
    store: &'a Pkcs11KeyStore,
    session: Option<Session>,
    keep: std::cell::Cell<bool>,
}

impl<'a> Lease<'a> {
    fn new(store: &'a Pkcs11KeyStore, session: Session) -> Lease<'a> {
        Lease {
            store,
            session: Some(session),
            keep: std::cell::Cell::new(false),
        }
    }

    /// The operation succeeded (or failed on its input): the session may
    /// serve another request.
    pub(super) fn keep(&self) {
        self.keep.set(true);
    }
}

impl Deref for Lease<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        // Taken only in Drop.
        self.session
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lease holds its session until dropped"))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if self.keep.get() {
            let mut idle = lock(&self.store.idle);
            if idle.len() < MAX_IDLE_SESSIONS {
                idle.push(session);
                return;
            }
        }
        // Closes the session (outside the lock).
        drop(session);
    }
}
