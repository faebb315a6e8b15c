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
            let (record, version) = self
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
            self.write(user, &new, Write::Replace(version))?;
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
            let (record, version) = self
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
            self.write(user, &record.only(wrapping), Write::Replace(version))?;
            tracing::info!(user = %user, backend, dropped, "kept only the configured backend's wrapping");
            Ok(Migrated::Done)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use zeroize::Zeroizing;

    use super::*;
    use crate::kms::MasterKeyRef;

    /// A backend that "wraps" by XOR with a mask; `liar` unwraps to a
    /// different key than it wrapped.
    struct Xor {
        name: &'static str,
        mask: u8,
        liar: bool,
    }

    impl KeyWrapper for Xor {
        fn backend(&self) -> &'static str {
            self.name
        }
        fn current(&self) -> MasterKeyRef {
            MasterKeyRef {
                secret_path: self.name.into(),
                secret_version: "1".into(),
            }
        }
        fn ensure_master_key(&self, _: &MasterKeyRef) -> Result<(), KmsError> {
            Ok(())
        }
        fn wrap(
            &self,
            key: &[u8; 32],
            _: &MasterKeyRef,
            _: &WrapContext,
        ) -> Result<Vec<u8>, KmsError> {
            Ok(key.iter().map(|b| b ^ self.mask).collect())
        }
        fn unwrap(
            &self,
            wrapped: &[u8],
            _: &MasterKeyRef,
            _: &WrapContext,
        ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
            let mut key = [0u8; 32];
            for (k, w) in key.iter_mut().zip(wrapped) {
                *k = w ^ self.mask ^ u8::from(self.liar);
            }
            Ok(Zeroizing::new(key))
        }
    }

    fn xor(name: &'static str, mask: u8) -> Arc<dyn KeyWrapper> {
        Arc::new(Xor {
            name,
            mask,
            liar: false,
        })
    }

    fn alice() -> UserName {
        UserName::parse("alice").unwrap()
    }

    /// Key files in `dir` wrapped by `old` ("a") with alice's key created.
    fn setup(dir: &std::path::Path) -> (UserKeys, [u8; 32]) {
        let keys = UserKeys::new(dir.join("keks"), xor("a", 0x11), None).unwrap();
        let key = *keys.get_or_create(&alice()).unwrap().expose();
        (keys, key)
    }

    #[test]
    fn add_then_finish_keeps_the_key_readable_by_each_side() {
        let dir = tempfile::tempdir().unwrap();
        let (old, key) = setup(dir.path());
        let target = xor("b", 0x22);
        assert_eq!(
            old.add_wrapping(&alice(), target.as_ref()).unwrap(),
            Migrated::Done
        );
        assert_eq!(
            old.add_wrapping(&alice(), target.as_ref()).unwrap(),
            Migrated::Already
        );
        let text = std::fs::read_to_string(old.key_file_path(&alice())).unwrap();
        assert!(
            text.contains("backend = \"a\"") && text.contains("[[other_wrapping]]"),
            "{text}"
        );

        // Each side reads the same key from the same file.
        let fresh_old = UserKeys::new(dir.path().join("keks"), xor("a", 0x11), None).unwrap();
        let new = UserKeys::new(dir.path().join("keks"), target, None).unwrap();
        assert_eq!(fresh_old.get_existing(&alice()).unwrap().expose(), &key);
        assert_eq!(new.get_existing(&alice()).unwrap().expose(), &key);

        // A rotation on the old side keeps the new side's wrapping.
        let to = MasterKeyRef {
            secret_path: "a".into(),
            secret_version: "2".into(),
        };
        fresh_old.rewrap(&alice(), &to).unwrap();
        let new2 = UserKeys::new(dir.path().join("keks"), xor("b", 0x22), None).unwrap();
        assert_eq!(new2.get_existing(&alice()).unwrap().expose(), &key);

        assert_eq!(new2.finish_migration(&alice()).unwrap(), Migrated::Done);
        assert_eq!(new2.finish_migration(&alice()).unwrap(), Migrated::Already);
        let text = std::fs::read_to_string(new2.key_file_path(&alice())).unwrap();
        assert!(
            text.contains("backend = \"b\"") && !text.contains("other_wrapping"),
            "{text}"
        );
        let old_again = UserKeys::new(dir.path().join("keks"), xor("a", 0x11), None).unwrap();
        assert!(matches!(
            old_again.get_existing(&alice()),
            Err(KeyError::WrongBackend { .. })
        ));
        let new3 = UserKeys::new(dir.path().join("keks"), xor("b", 0x22), None).unwrap();
        assert_eq!(new3.get_existing(&alice()).unwrap().expose(), &key);
    }

    #[test]
    fn a_wrapping_that_does_not_give_the_key_back_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = setup(dir.path());
        let before = std::fs::read(old.key_file_path(&alice())).unwrap();
        let liar = Xor {
            name: "b",
            mask: 0x22,
            liar: true,
        };
        let e = old.add_wrapping(&alice(), &liar).unwrap_err();
        assert!(
            e.to_string().contains("did not give back the same key"),
            "{e}"
        );
        assert_eq!(before, std::fs::read(old.key_file_path(&alice())).unwrap());
    }

    #[test]
    fn finish_before_add_and_same_backend_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = setup(dir.path());
        let before = std::fs::read(old.key_file_path(&alice())).unwrap();
        let new = UserKeys::new(dir.path().join("keks"), xor("b", 0x22), None).unwrap();
        let e = new.finish_migration(&alice()).unwrap_err();
        assert!(matches!(e, KeyError::WrongBackend { .. }), "{e}");
        let e = old
            .add_wrapping(&alice(), xor("a", 0x33).as_ref())
            .unwrap_err();
        assert!(e.to_string().contains("rotation"), "{e}");
        assert_eq!(before, std::fs::read(old.key_file_path(&alice())).unwrap());
        let bob = UserName::parse("bob").unwrap();
        assert!(matches!(
            old.add_wrapping(&bob, xor("b", 0x22).as_ref()),
            Err(KeyError::NotFound(_))
        ));
    }
}
