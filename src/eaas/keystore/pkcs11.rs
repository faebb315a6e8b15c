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
//!
//! This file finds and checks the token at start-up
//! ([`Pkcs11KeyStore::open`]); the private submodules `session` (the pool
//! of logged-in sessions) and `keys` (finding and making the key pairs,
//! and the [`KeyStore`](super::KeyStore) operations) do the rest.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;

use super::{KeyBits, KeyStoreError};
use crate::eaas::config::Pkcs11Settings;
use crate::eaas::secret::KeyId;
use crate::sync::lock;

mod keys;
mod session;

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

/// A PKCS#11 call failed (the message names the function and the return
/// value, never data).
fn token_error(e: CkError) -> KeyStoreError {
    KeyStoreError::Storage(format!("PKCS#11: {e}"))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eaas::config::FileSetting;
    use crate::eaas::keystore::KeyStore;
    use crate::eaas::service::Service;
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
    /// test binary that runs only the test `name` of `module` (the caller's
    /// `module_path!()`), with `SOFTHSM2_CONF`
    /// naming a fresh token. (SoftHSM2 reads its configuration once per
    /// process, and the environment of this multi-threaded process cannot
    /// be changed safely.)
    pub(super) fn in_own_token(module: &str, name: &str, body: impl FnOnce()) {
        if std::env::var_os(CHILD_ENV).is_some() {
            body();
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = make_token(dir.path());
        let test = format!(
            "{}::{name}",
            module.split_once("::").map_or("", |(_, rest)| rest)
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

    pub(super) fn open() -> Pkcs11KeyStore {
        Pkcs11KeyStore::open(&settings(TOKEN, module()), PIN.as_bytes(), KeyBits::DEFAULT).unwrap()
    }

    /// The wire API over the token store: the same replies as over key
    /// files (the checks the file store's service tests make).
    #[test]
    fn whole_api_through_the_service() {
        in_own_token(module_path!(), "whole_api_through_the_service", || {
            let service = Service::new(Box::new(open()), None);
            crate::eaas::service::tests::check_api(&service);
        });
    }

    #[test]
    fn start_up_errors_are_configuration_errors() {
        in_own_token(
            module_path!(),
            "start_up_errors_are_configuration_errors",
            || {
                let config_error =
                    |label: &str, module: PathBuf, pin: &str| match Pkcs11KeyStore::open(
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
                    e.contains("no initialised token labelled \"other\"")
                        && e.contains("\"dropzone\""),
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
            },
        );
    }
}
