//! [`Pkcs11KeyStore`]: RSA key pairs in a PKCS#11 token, as the original
//! service kept them in SoftHSM2 (cargo feature `pkcs11`).
//!
//! The module (a shared library such as SoftHSM2's) is loaded at run time,
//! so a build needs no system library. Key `path` version `V` is a key pair
//! whose objects carry the label and ID `"<path>#<V>"` (like
//! `dropzone/rsa#1`; no secret path contains `#`):
//!
//! - the private key: `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not
//!   `CKA_EXTRACTABLE`, `CKA_DECRYPT` only. It never leaves the token:
//!   decryption is `C_Decrypt` with `CKM_RSA_PKCS_OAEP` in the token.
//! - the public key: `CKA_TOKEN`, public, `CKA_ENCRYPT` only; encryption is
//!   `C_Encrypt` with `CKM_RSA_PKCS_OAEP` in the token.
//!
//! OAEP parameters are SHA-1, MGF1-SHA1 and no label (no source data), as
//! the original's. Keys are made with `C_GenerateKeyPair`
//! (`CKM_RSA_PKCS_KEY_PAIR_GEN`, exponent 65537) under a lock, so that
//! concurrent requests of this process create one key pair; processes
//! sharing one token should not generate the same key at the same moment.
//!
//! Sessions are read/write and logged in as the user; a few idle ones are
//! kept for the next requests. A session that saw an error is closed
//! rather than reused, and a session is logged in again whenever the token
//! has logged the application out (after all its sessions closed).

use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{RawAuthPin, Ulong};
use zeroize::Zeroizing;

use super::{Generated, KeyBits, KeyStore, KeyStoreError, MIN_KEY_BITS, max_plaintext_len};
use crate::eaas::config::Pkcs11Settings;
use crate::eaas::secret::KeyId;
use crate::sync::lock;

/// Idle sessions kept open for later requests; more may be open while
/// requests run, and are closed when done.
const MAX_IDLE_SESSIONS: usize = 8;
/// The public exponent of new keys: 65537.
const PUBLIC_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// Why the token could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration does not fit the machine: no such module, no
    /// token with that label, a PIN the token refuses, a token that cannot
    /// do RSA-OAEP or keys of the configured size.
    #[error("{0}")]
    Config(String),
    /// The module or token failed.
    #[error("{0}")]
    Failed(String),
}

/// The key pairs in one PKCS#11 token.
pub struct Pkcs11KeyStore {
    ctx: Pkcs11,
    slot: Slot,
    module: PathBuf,
    token_label: String,
    pin: RawAuthPin,
    bits: KeyBits,
    idle: Mutex<Vec<Session>>,
    /// Serialises generation in this process, so that concurrent requests
    /// for one new key make one key pair.
    generate_lock: Mutex<()>,
}

impl fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot", &self.slot.id())
            .field("bits", &self.bits.get())
            .finish_non_exhaustive()
    }
}

/// The `CKA_LABEL` (and `CKA_ID`) of both objects of key `id`:
/// `dropzone/rsa#1`.
pub fn object_label(id: &KeyId) -> String {
    format!("{}#{}", id.path, id.version)
}

/// The mechanism of both directions: OAEP with SHA-1, MGF1-SHA1, no label.
fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

/// A PKCS#11 call failed (the message names the function and the return
/// value, never data).
fn token_error(e: CkError) -> KeyStoreError {
    KeyStoreError::Storage(format!("PKCS#11: {e}"))
}

/// Return values of `C_Decrypt` that mean "this is not a ciphertext of this
/// key". SoftHSM2 reports an OAEP decoding failure as `CKR_GENERAL_ERROR`;
/// other tokens use the specific values.
fn is_bad_ciphertext(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::GeneralError
    )
}

impl Pkcs11KeyStore {
    /// Loads the module, finds the token labelled `settings.token_label`,
    /// checks that it can do what the service needs, and logs in with
    /// `pin` (so that a wrong PIN stops the start).
    pub fn open(
        settings: &Pkcs11Settings,
        pin: &[u8],
        bits: KeyBits,
    ) -> Result<Pkcs11KeyStore, OpenError> {
        let module = &settings.module;
        let label = &settings.token_label;
        if !module.path.is_file() {
            return Err(OpenError::Config(format!(
                "{module}: no such file (install the PKCS#11 module, e.g. Debian's softhsm2)"
            )));
        }
        let ctx = Pkcs11::new(&module.path).map_err(|e| {
            OpenError::Config(format!("{module}: cannot load the PKCS#11 module: {e}"))
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Another store of this process initialised the module already.
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(OpenError::Failed(format!("{module}: {e}"))),
        }
        let failed = |e: CkError| OpenError::Failed(format!("{module}: {e}"));
        let mut seen = Vec::new();
        let mut slot = None;
        for s in ctx.get_slots_with_token().map_err(failed)? {
            let info = ctx.get_token_info(s).map_err(failed)?;
            if !info.token_initialized() {
                continue;
            }
            let this = info.label().trim_end();
            if this == label {
                if slot.is_some() {
                    return Err(OpenError::Config(format!(
                        "line {}: [pkcs11]: more than one token is labelled {label:?}",
                        settings.line
                    )));
                }
                if !info.user_pin_initialized() {
                    return Err(OpenError::Config(format!(
                        "line {}: [pkcs11]: token {label:?} has no user PIN yet \
                         (softhsm2-util --init-token ... --pin sets one)",
                        settings.line
                    )));
                }
                if info.user_pin_locked() {
                    return Err(OpenError::Config(format!(
                        "line {}: [pkcs11]: the user PIN of token {label:?} is locked",
                        settings.line
                    )));
                }
                slot = Some(s);
            } else {
                seen.push(format!("{this:?}"));
            }
        }
        let Some(slot) = slot else {
            let seen = if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            };
            return Err(OpenError::Config(format!(
                "line {}: [pkcs11]: no initialised token labelled {label:?} in {} (tokens: {seen}); \
                 create it with `softhsm2-util --init-token --free --label {label} ...`",
                settings.line,
                module.path.display()
            )));
        };
        let mechanisms = ctx.get_mechanism_list(slot).map_err(failed)?;
        for (needed, name) in [
            (
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
            ),
            (MechanismType::RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP"),
        ] {
            if !mechanisms.contains(&needed) {
                return Err(OpenError::Config(format!(
                    "line {}: [pkcs11]: token {label:?} does not offer {name}",
                    settings.line
                )));
            }
        }
        let info = ctx
            .get_mechanism_info(slot, MechanismType::RSA_PKCS_KEY_PAIR_GEN)
            .map_err(failed)?;
        if !(info.min_key_size()..=info.max_key_size()).contains(&bits.get()) {
            return Err(OpenError::Config(format!(
                "key_bits = {}: token {label:?} generates RSA keys of {} to {} bits",
                bits.get(),
                info.min_key_size(),
                info.max_key_size()
            )));
        }
        let store = Pkcs11KeyStore {
            ctx,
            slot,
            module: module.path.clone(),
            token_label: label.clone(),
            pin: RawAuthPin::new(Box::new(pin.to_vec())),
            bits,
            idle: Mutex::new(Vec::new()),
            generate_lock: Mutex::new(()),
        };
        let session = store.ctx.open_rw_session(slot).map_err(failed)?;
        match store.log_in(&session) {
            Ok(()) => {}
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinExpired
                | RvError::PinLocked),
                _,
            )) => {
                return Err(OpenError::Config(format!(
                    "line {}: [pkcs11]: token {label:?} refuses the user PIN ({rv})",
                    settings.line
                )));
            }
            Err(e) => return Err(failed(e)),
        }
        lock(&store.idle).push(session);
        Ok(store)
    }

    /// Logs `session` in as the user unless the application is logged in
    /// already (a login holds for all its sessions with the token).
    fn log_in(&self, session: &Session) -> Result<(), CkError> {
        if session.get_session_info()?.session_state() == SessionState::RwUser {
            return Ok(());
        }
        match session.login_with_raw(UserType::User, &self.pin) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A logged-in session: an idle one, or a new one.
    fn session(&self) -> Result<Lease<'_>, KeyStoreError> {
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

    /// The one object of `class` labelled for `id`, if any.
    fn find(
        &self,
        session: &Session,
        id: &KeyId,
        class: ObjectClass,
    ) -> Result<Option<ObjectHandle>, KeyStoreError> {
        let label = object_label(id);
        let template = [
            Attribute::Class(class),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Label(label.clone().into_bytes()),
        ];
        let found = session.find_objects(&template).map_err(token_error)?;
        match found[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(KeyStoreError::BadTokenKey(format!(
                "{} {class} objects are labelled {label:?}; expected one",
                found.len()
            ))),
        }
    }

    /// The private key of `id`; `UnknownKey` if there is none.
    fn private_key(&self, session: &Session, id: &KeyId) -> Result<ObjectHandle, KeyStoreError> {
        self.find(session, id, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| KeyStoreError::UnknownKey(id.clone()))
    }

    /// The public key of `id`; `UnknownKey` if the key does not exist.
    fn public_key(&self, session: &Session, id: &KeyId) -> Result<ObjectHandle, KeyStoreError> {
        if let Some(key) = self.find(session, id, ObjectClass::PUBLIC_KEY)? {
            return Ok(key);
        }
        match self.find(session, id, ObjectClass::PRIVATE_KEY)? {
            None => Err(KeyStoreError::UnknownKey(id.clone())),
            Some(_) => Err(KeyStoreError::BadTokenKey(format!(
                "a private key is labelled {:?} but no public key",
                object_label(id)
            ))),
        }
    }

    /// The modulus length in bytes of `key` (public or private: the
    /// modulus is never sensitive), refusing keys below [`MIN_KEY_BITS`].
    fn modulus_len(
        &self,
        session: &Session,
        id: &KeyId,
        key: ObjectHandle,
    ) -> Result<usize, KeyStoreError> {
        let attributes = session
            .get_attributes(key, &[AttributeType::Modulus])
            .map_err(token_error)?;
        let len = attributes.iter().find_map(|a| match a {
            Attribute::Modulus(m) => Some(m.len() - m.iter().take_while(|&&b| b == 0).count()),
            _ => None,
        });
        let label = object_label(id);
        match len {
            Some(len) if len * 8 >= MIN_KEY_BITS => Ok(len),
            Some(len) => Err(KeyStoreError::BadTokenKey(format!(
                "{label:?} is a {}-bit key, at least {MIN_KEY_BITS} required",
                len * 8
            ))),
            None => Err(KeyStoreError::BadTokenKey(format!(
                "the token does not show the modulus of {label:?}"
            ))),
        }
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn generate(&self, id: &KeyId) -> Result<Generated, KeyStoreError> {
        let _guard = lock(&self.generate_lock);
        let session = self.session()?;
        if self.find(&session, id, ObjectClass::PRIVATE_KEY)?.is_some() {
            session.keep();
            return Ok(Generated::Existed);
        }
        let label = object_label(id);
        if self.find(&session, id, ObjectClass::PUBLIC_KEY)?.is_some() {
            return Err(KeyStoreError::BadTokenKey(format!(
                "a public key is labelled {label:?} but no private key; remove it from the \
                 token or use another version"
            )));
        }
        tracing::info!(
            key = %id, bits = self.bits.get(), token = %self.token_label, label,
            "generating an RSA key pair in the token"
        );
        let bits = Ulong::try_from(self.bits.get())
            .map_err(|e| KeyStoreError::Crypto(format!("key size: {e}")))?;
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::ModulusBits(bits),
            Attribute::PublicExponent(PUBLIC_EXPONENT.to_vec()),
            Attribute::Encrypt(true),
            Attribute::Verify(false),
            Attribute::Wrap(false),
            Attribute::Label(label.clone().into_bytes()),
            Attribute::Id(label.clone().into_bytes()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(true),
            Attribute::Sign(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.clone().into_bytes()),
            Attribute::Id(label.into_bytes()),
        ];
        session
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
            .map_err(|e| KeyStoreError::Crypto(format!("key generation in the token: {e}")))?;
        session.keep();
        Ok(Generated::Created)
    }

    fn encrypt(&self, id: &KeyId, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let session = self.session()?;
        let key = self.public_key(&session, id)?;
        let modulus_len = self.modulus_len(&session, id, key)?;
        let max = max_plaintext_len(modulus_len);
        if plaintext.len() > max {
            session.keep();
            return Err(KeyStoreError::PlaintextTooLong {
                key: id.clone(),
                len: plaintext.len(),
                max,
                bits: modulus_len * 8,
            });
        }
        let ciphertext = session
            .encrypt(&oaep(), key, plaintext)
            .map_err(|e| KeyStoreError::Crypto(format!("encryption under {id}: {e}")))?;
        session.keep();
        Ok(ciphertext)
    }

    fn decrypt(&self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let session = self.session()?;
        let key = self.private_key(&session, id)?;
        let modulus_len = self.modulus_len(&session, id, key)?;
        if ciphertext.len() != modulus_len {
            session.keep();
            return Err(KeyStoreError::DecryptionFailed(id.clone()));
        }
        match session.decrypt(&oaep(), key, ciphertext) {
            Ok(plaintext) => {
                session.keep();
                Ok(Zeroizing::new(plaintext))
            }
            Err(CkError::Pkcs11(rv, _)) if is_bad_ciphertext(rv) => {
                // The failed call ended the operation; the session is
                // closed anyway, in case the token thinks otherwise.
                tracing::debug!(key = %id, %rv, "C_Decrypt refused the ciphertext");
                Err(KeyStoreError::DecryptionFailed(id.clone()))
            }
            Err(e) => Err(token_error(e)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 token {:?} (slot {}, module {})",
            self.token_label,
            self.slot.id(),
            self.module.display()
        )
    }
}

/// A session in use; back to the idle ones when [`Lease::keep`] says it
/// is in a good state, closed otherwise.
struct Lease<'a> {
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
    fn keep(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eaas::config::FileSetting;
    use crate::eaas::secret::{SecretPath, SecretVersion};
    use crate::eaas::service::Service;
    use rsa::{BoxedUint, Oaep, RsaPublicKey};
    use std::path::Path;
    use std::process::Command;

    /// Debian's SoftHSM2 (package softhsm2); `DROPZONE_TEST_PKCS11_MODULE`
    /// names another.
    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    const TOKEN: &str = "dropzone";
    const PIN: &str = "5678";
    /// Set in the child process that runs one test against its own token.
    const CHILD_ENV: &str = "DROPZONE_TEST_SOFTHSM2_CHILD";

    fn module() -> PathBuf {
        std::env::var_os("DROPZONE_TEST_PKCS11_MODULE").map_or_else(|| MODULE.into(), PathBuf::from)
    }

    /// A SoftHSM2 configuration whose token directory is `dir/tokens`,
    /// holding one token labelled `dropzone` with SO PIN 1234 and user PIN
    /// 5678. Returns the file for `SOFTHSM2_CONF`.
    fn make_token(dir: &Path) -> PathBuf {
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", TOKEN])
            .args(["--so-pin", "1234", "--pin", PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap_or_else(|e| panic!("softhsm2-util: {e} (install Debian's softhsm2)"));
        assert!(out.status.success(), "softhsm2-util: {out:?}");
        conf
    }

    /// Runs `body` against a token of its own: in a child process of this
    /// test binary that runs only the test `name`, with `SOFTHSM2_CONF`
    /// naming a fresh token. (SoftHSM2 reads its configuration once per
    /// process, and the environment of this multi-threaded process cannot
    /// be changed safely.)
    fn in_own_token(name: &str, body: impl FnOnce()) {
        if std::env::var_os(CHILD_ENV).is_some() {
            body();
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = make_token(dir.path());
        let test = format!(
            "{}::{name}",
            module_path!().split_once("::").map_or("", |(_, rest)| rest)
        );
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                test.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("SOFTHSM2_CONF", &conf)
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("test {test} ... ok")),
            "{test} in its own token: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn settings(label: &str, module: PathBuf) -> Pkcs11Settings {
        Pkcs11Settings {
            module: FileSetting {
                key: "pkcs11.module",
                path: module,
                line: 2,
            },
            token_label: label.to_owned(),
            pin_file: None,
            line: 1,
        }
    }

    fn open() -> Pkcs11KeyStore {
        Pkcs11KeyStore::open(&settings(TOKEN, module()), PIN.as_bytes(), KeyBits::DEFAULT).unwrap()
    }

    fn id(path: &str, version: &str) -> KeyId {
        KeyId {
            path: SecretPath::parse(path).unwrap(),
            version: SecretVersion::parse(version).unwrap(),
        }
    }

    /// The objects labelled for `id`, of any class.
    fn objects(store: &Pkcs11KeyStore, id: &KeyId) -> Vec<ObjectHandle> {
        let session = store.session().unwrap();
        let found = session
            .find_objects(&[Attribute::Label(object_label(id).into_bytes())])
            .unwrap();
        session.keep();
        found
    }

    fn attributes(
        store: &Pkcs11KeyStore,
        key: ObjectHandle,
        which: &[AttributeType],
    ) -> Vec<Attribute> {
        let session = store.session().unwrap();
        let attributes = session.get_attributes(key, which).unwrap();
        session.keep();
        attributes
    }

    #[test]
    fn generate_is_idempotent_and_keys_are_not_extractable() {
        in_own_token(
            "generate_is_idempotent_and_keys_are_not_extractable",
            || {
                let store = open();
                let key = id("dropzone/rsa", "1");
                assert_eq!(object_label(&key), "dropzone/rsa#1");
                assert!(matches!(
                    store.encrypt(&key, b"x"),
                    Err(KeyStoreError::UnknownKey(_))
                ));
                assert!(matches!(
                    store.decrypt(&key, &[0; 256]),
                    Err(KeyStoreError::UnknownKey(_))
                ));
                assert_eq!(store.generate(&key).unwrap(), Generated::Created);
                assert_eq!(store.generate(&key).unwrap(), Generated::Existed);
                // Another store on the same token sees the key too.
                assert_eq!(open().generate(&key).unwrap(), Generated::Existed);
                assert_eq!(objects(&store, &key).len(), 2, "one key pair");

                let session = store.session().unwrap();
                let private = store.private_key(&session, &key).unwrap();
                let public = store.public_key(&session, &key).unwrap();
                session.keep();
                drop(session);
                let label = b"dropzone/rsa#1".to_vec();
                let private_attributes = attributes(
                    &store,
                    private,
                    &[
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::AlwaysSensitive,
                        AttributeType::NeverExtractable,
                        AttributeType::Decrypt,
                        AttributeType::Sign,
                        AttributeType::Unwrap,
                        AttributeType::Label,
                        AttributeType::Id,
                    ],
                );
                for expected in [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::AlwaysSensitive(true),
                    Attribute::NeverExtractable(true),
                    Attribute::Decrypt(true),
                    Attribute::Sign(false),
                    Attribute::Unwrap(false),
                    Attribute::Label(label.clone()),
                    Attribute::Id(label.clone()),
                ] {
                    assert!(
                        private_attributes.contains(&expected),
                        "{expected:?} not in {private_attributes:?}"
                    );
                }
                // The secret parts cannot be read.
                let secret = attributes(
                    &store,
                    private,
                    &[AttributeType::PrivateExponent, AttributeType::Prime1],
                );
                assert!(secret.is_empty(), "{secret:?}");
                let public_attributes = attributes(
                    &store,
                    public,
                    &[
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Encrypt,
                        AttributeType::ModulusBits,
                        AttributeType::PublicExponent,
                        AttributeType::Id,
                    ],
                );
                for expected in [
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Encrypt(true),
                    Attribute::ModulusBits(Ulong::from(2048)),
                    Attribute::PublicExponent(vec![1, 0, 1]),
                    Attribute::Id(label.clone()),
                ] {
                    assert!(
                        public_attributes.contains(&expected),
                        "{expected:?} not in {public_attributes:?}"
                    );
                }

                // Ten concurrent requests for one new key make one key pair.
                let race = id("race", "3");
                let barrier = std::sync::Barrier::new(10);
                let results: Vec<Generated> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..10)
                        .map(|_| {
                            s.spawn(|| {
                                barrier.wait();
                                store.generate(&race).unwrap()
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                assert_eq!(
                    results.iter().filter(|&&g| g == Generated::Created).count(),
                    1,
                    "{results:?}"
                );
                assert_eq!(objects(&store, &race).len(), 2);
                let c = store.encrypt(&race, b"shared").unwrap();
                assert_eq!(&**store.decrypt(&race, &c).unwrap(), b"shared");
            },
        );
    }

    #[test]
    fn round_trip_interop_and_tamper() {
        in_own_token("round_trip_interop_and_tamper", || {
            let store = open();
            let key = id("dropzone/rsa", "1");
            store.generate(&key).unwrap();

            // Round trip; OAEP is randomised; 214 bytes fit RSA-2048, 215 do not.
            let dek = "0123456789abcdef".repeat(4);
            let c1 = store.encrypt(&key, dek.as_bytes()).unwrap();
            let c2 = store.encrypt(&key, dek.as_bytes()).unwrap();
            assert_eq!(c1.len(), 256);
            assert_ne!(c1, c2);
            assert_eq!(&**store.decrypt(&key, &c1).unwrap(), dek.as_bytes());
            assert_eq!(&**store.decrypt(&key, &c2).unwrap(), dek.as_bytes());
            let full = store.encrypt(&key, &[b'a'; 214]).unwrap();
            assert_eq!(&**store.decrypt(&key, &full).unwrap(), &[b'a'; 214]);
            let empty = store.encrypt(&key, b"").unwrap();
            assert!(store.decrypt(&key, &empty).unwrap().is_empty());
            match store.encrypt(&key, &[b'a'; 215]) {
                Err(KeyStoreError::PlaintextTooLong { len, max, bits, .. }) => {
                    assert_eq!((len, max, bits), (215, 214, 2048));
                }
                other => panic!("unexpected {:?}", other.map(|_| ())),
            }

            // An independent OAEP-SHA1 encryption (the rsa crate, with the
            // public key read from the token) decrypts in the token, so the
            // token's OAEP is the file store's and the wire API's; SHA-256
            // OAEP does not.
            let session = store.session().unwrap();
            let public = store.public_key(&session, &key).unwrap();
            session.keep();
            drop(session);
            let parts = attributes(
                &store,
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            );
            let (mut n, mut e) = (None, None);
            for a in parts {
                match a {
                    Attribute::Modulus(m) => n = Some(BoxedUint::from_be_slice_vartime(&m)),
                    Attribute::PublicExponent(x) => {
                        e = Some(BoxedUint::from_be_slice_vartime(&x));
                    }
                    _ => {}
                }
            }
            let theirs = RsaPublicKey::new(n.unwrap(), e.unwrap()).unwrap();
            let c = theirs
                .encrypt(
                    &mut rand::rng(),
                    Oaep::<sha1::Sha1>::new(),
                    b"from elsewhere",
                )
                .unwrap();
            assert_eq!(&**store.decrypt(&key, &c).unwrap(), b"from elsewhere");
            let c = theirs
                .encrypt(&mut rand::rng(), Oaep::<sha2::Sha256>::new(), b"sha-256")
                .unwrap();
            assert!(matches!(
                store.decrypt(&key, &c),
                Err(KeyStoreError::DecryptionFailed(_))
            ));

            // Every flipped bit, and a wrong length, is refused as one error.
            for i in [0, 1, 128, 255] {
                let mut bad = c1.clone();
                bad[i] ^= 0x01;
                assert!(
                    matches!(
                        store.decrypt(&key, &bad),
                        Err(KeyStoreError::DecryptionFailed(_))
                    ),
                    "byte {i}"
                );
            }
            for bad in [&c1[1..], &[][..], &[c1.as_slice(), &[0]].concat()] {
                assert!(matches!(
                    store.decrypt(&key, bad),
                    Err(KeyStoreError::DecryptionFailed(_))
                ));
            }
            assert!(matches!(
                store.decrypt(&id("dropzone/rsa", "2"), &c1),
                Err(KeyStoreError::UnknownKey(_))
            ));

            // With every session closed the token logs the application out;
            // the next request logs in again.
            lock(&store.idle).clear();
            assert_eq!(&**store.decrypt(&key, &c1).unwrap(), dek.as_bytes());
            // A new store (as after a restart) uses the same key.
            assert_eq!(&**open().decrypt(&key, &c2).unwrap(), dek.as_bytes());
        });
    }

    /// The wire API over the token store: the same replies as over key
    /// files (the checks the file store's service tests make).
    #[test]
    fn whole_api_through_the_service() {
        in_own_token("whole_api_through_the_service", || {
            let service = Service::new(Box::new(open()), None);
            crate::eaas::service::tests::check_api(&service);
        });
    }

    #[test]
    fn start_up_errors_are_configuration_errors() {
        in_own_token("start_up_errors_are_configuration_errors", || {
            let config_error = |label: &str, module: PathBuf, pin: &str| match Pkcs11KeyStore::open(
                &settings(label, module),
                pin.as_bytes(),
                KeyBits::DEFAULT,
            ) {
                Err(OpenError::Config(m)) => m,
                Err(OpenError::Failed(m)) => panic!("not a configuration error: {m}"),
                Ok(store) => panic!("opened {store:?}"),
            };
            let e = config_error(TOKEN, module(), "0000");
            assert!(
                e.contains("refuses the user PIN") && e.contains("line 1"),
                "{e}"
            );
            assert!(!e.contains("0000"), "{e}");
            let e = config_error("other", module(), PIN);
            assert!(
                e.contains("no initialised token labelled \"other\"") && e.contains("\"dropzone\""),
                "{e}"
            );
            let e = config_error(TOKEN, "/nonexistent/libpkcs11.so".into(), PIN);
            assert!(
                e.contains("line 2: pkcs11.module") && e.contains("no such file"),
                "{e}"
            );
            let e = config_error(TOKEN, "/etc/hostname".into(), PIN);
            assert!(e.contains("cannot load the PKCS#11 module"), "{e}");
            // After all that, the right settings work.
            let store = open();
            assert!(store.describe().contains("PKCS#11 token \"dropzone\""));
        });
    }
}
