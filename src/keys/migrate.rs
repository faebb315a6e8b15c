//! Moving user keys from one backend to another without touching stored
//! files: the data key stays the same, only its wrapping changes.
//!
//! 1. [`UserKeys::add_wrapping`], on the keys of the *old* configuration:
//!    unwraps each user's key with the old backend, wraps it with the new
//!    one, checks that the new wrapping unwraps to the same key, and adds
//!    it to the key file as an `[[other_wrapping]]`, keeping the old one
//!    primary. Servers on either configuration read every user meanwhile
//!    (each uses its own backend's wrapping); users already done are
//!    skipped, so the step is resumable and can be run again to catch users
//!    created in the meantime.
//! 2. [`UserKeys::finish_migration`], on the keys of the *new*
//!    configuration, once every server runs it: checks that the new
//!    wrapping unwraps, makes it the only one, and drops the others.
//!
//! Every key file is replaced atomically, so a reader sees the old file or
//! the new one, both complete.

use subtle::ConstantTimeEq;

use super::key_file::Wrapping;
use super::{KeyError, UserKeys, Write};
use crate::kms::{KeyWrapper, KmsError, WrapContext};
use crate::username::UserName;

/// What [`UserKeys::add_wrapping`] or [`UserKeys::finish_migration`] did
/// for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// The key file was changed.
    Done,
    /// Nothing to do: the file already had the new backend's wrapping
    /// (under its current master key), or, for the finish, only that one.
    Already,
}

impl UserKeys {
    /// Adds `target`'s wrapping of the user's key (under
    /// [`KeyWrapper::current`]) to the key file, keeping the wrapping of
    /// this `UserKeys`'s backend. See the module doc.
    pub fn add_wrapping(
        &self,
        user: &UserName,
        target: &dyn KeyWrapper,
    ) -> Result<Migrated, KeyError> {
        if target.backend() == self.wrapper.backend() {
            return Err(KeyError::Kms(KmsError::Misconfigured(format!(
                "both configurations use the {} backend: a change of master key within one \
                 backend is a rotation (dropzone keys rotate)",
                target.backend()
            ))));
        }
        self.with_user_lock(user, || {
            let path = self.key_file_path(user);
            let record = self
                .read_record(user)?
                .ok_or_else(|| KeyError::NotFound(user.clone()))?;
            let to = target.current();
            if record
                .wrapping_for(target.backend())
                .is_some_and(|w| w.master == to)
            {
                return Ok(Migrated::Already);
            }
            let key = self.unwrap_record(&path, &record)?;
            let ctx = WrapContext::for_user(user);
            let wrapped = target.wrap(key.expose(), &to, &ctx)?;
            let check = target.unwrap(&wrapped, &to, &ctx)?;
            if !bool::from(check.ct_eq(key.expose())) {
                return Err(KeyError::Kms(KmsError::Refused(format!(
                    "the {} backend's wrapping under {to} did not give back the same key",
                    target.backend()
                ))));
            }
            let new = record.with_wrapping(Wrapping {
                backend: target.backend().to_owned(),
                master: to.clone(),
                wrapped,
            });
            self.write(user, &new, Write::Replace)?;
            tracing::info!(user = %user, backend = target.backend(), master = %to, "added a wrapping of the data key");
            Ok(Migrated::Done)
        })
    }

    /// Makes this `UserKeys`'s backend's wrapping the only one in the
    /// user's key file, after checking that it unwraps. A file without
    /// that wrapping is [`KeyError::WrongBackend`]: run the first step
    /// (`add_wrapping`) for it first.
    pub fn finish_migration(&self, user: &UserName) -> Result<Migrated, KeyError> {
        self.with_user_lock(user, || {
            let path = self.key_file_path(user);
            let record = self
                .read_record(user)?
                .ok_or_else(|| KeyError::NotFound(user.clone()))?;
            let backend = self.wrapper.backend();
            let Some(wrapping) = record.wrapping_for(backend) else {
                return Err(self.wrong_backend(&path, &record));
            };
            if record.backend == backend && record.others.is_empty() {
                return Ok(Migrated::Already);
            }
            // Proves the wrapping we keep works before the others go.
            drop(self.unwrap_record(&path, &record)?);
            let dropped = record.backends().len() - 1;
            self.write(user, &record.only(wrapping), Write::Replace)?;
            tracing::info!(user = %user, backend, dropped, "kept only the configured backend's wrapping");
            Ok(Migrated::Done)
        })
    }
}
