//! Master keys: the [`KeyWrapper`] trait and its backends.
//!
//! A backend wraps (encrypts) and unwraps 32-byte data keys under a versioned
//! master key that it holds. This layer knows nothing of users or key files;
//! [`crate::keys`] builds on it.
//!
//! Backends:
//! - [`local::LocalKms`]: RSA-3072 keys in PEM files on this host (default).
//! - [`eaas::EaasKms`]: RSA keys held by a key service over HTTP (the
//!   original Dropzone's EaaS API; `dropzone-eaas` is the reference service).
//! - [`vault::VaultKms`]: a derived AES-256-GCM key of the Transit engine of
//!   HashiCorp Vault or OpenBao.
//! - [`aws_kms::AwsKms`]: a symmetric AWS KMS key (or a compatible service),
//!   with the user name as encryption context.
//!
//! [`SecretVersion`] is the one rule for a master key version (1 to 9
//! decimal digits), used by the configuration, the command line and both
//! backends.

pub mod aws_kms;
pub mod eaas;
mod http;
pub mod local;
pub mod vault;
mod version;

use crate::username::UserName;

pub use version::{InvalidSecretVersion, SecretVersion};

/// Identifies one master key version at a backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MasterKeyRef {
    /// The backend's name for the key (for [`local::LocalKms`], always `"local"`).
    pub secret_path: String,
    /// The version of that key.
    pub secret_version: String,
}

impl std::fmt::Display for MasterKeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} version {}", self.secret_path, self.secret_version)
    }
}

/// Why a backend could not wrap or unwrap a key.
///
/// Messages say what is wrong and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The backend cannot be reached or its storage failed; retrying later
    /// may succeed.
    #[error("key service unavailable: {0}")]
    Unavailable(String),
    /// The backend answered but refused: unknown key or version, or the
    /// wrapped key does not decrypt under it.
    #[error("key service refused: {0}")]
    Refused(String),
    /// A secret version that cannot be used (for the local backend: not 1-9
    /// decimal digits).
    #[error("invalid master key version {0:?}: use 1 to 9 decimal digits")]
    InvalidVersion(String),
    /// The backend's settings cannot be used (a bad URL, an unreadable
    /// token or CA file).
    #[error("key service misconfigured: {0}")]
    Misconfigured(String),
    /// An I/O error without further context.
    #[error("key service I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl KmsError {
    /// Whether the failure may go away by itself (the service is down, a
    /// disk error), as opposed to a refusal that retrying will not change.
    pub fn is_transient(&self) -> bool {
        matches!(self, KmsError::Unavailable(_) | KmsError::Io(_))
    }
}

/// What a wrapped key is bound to: the user it belongs to.
///
/// A backend that can bind a wrapping to a context (Vault/OpenBao Transit's
/// derived keys, AWS KMS's encryption context) gives it with every wrap and
/// unwrap, so a wrapped key copied into another user's key file does not
/// unwrap there. Backends whose wire format has no room for it (the local
/// RSA-OAEP files, the EaaS API) ignore it; their key files are still bound
/// to their user by the `user` field that [`crate::keys`] checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WrapContext {
    user: String,
}

impl WrapContext {
    /// The context of `user`'s data key.
    pub fn for_user(user: &UserName) -> Self {
        WrapContext {
            user: user.as_str().to_owned(),
        }
    }

    /// The user name, as text (AWS KMS's encryption context takes strings).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The user name as bytes (Vault's derived-key context).
    pub fn as_bytes(&self) -> &[u8] {
        self.user.as_bytes()
    }
}

/// Wraps and unwraps 32-byte data keys under a master key.
///
/// Calls block (key generation, disk or network I/O): async callers use
/// `spawn_blocking`. The trait is object safe and used as
/// `Arc<dyn KeyWrapper>`.
pub trait KeyWrapper: Send + Sync {
    /// The backend's name as recorded in key files: `"local"`, `"eaas"`,
    /// `"vault"`.
    fn backend(&self) -> &'static str;
    /// The master key version new keys are wrapped under.
    fn current(&self) -> MasterKeyRef;
    /// Makes sure the master key `under` exists, creating it if it does not
    /// (idempotent). Called at server start for [`KeyWrapper::current`] and
    /// before a rotation for the new version.
    fn ensure_master_key(&self, under: &MasterKeyRef) -> Result<(), KmsError>;
    /// Wraps `key` under the master key `under`, bound to `ctx` where the
    /// backend can bind it.
    fn wrap(
        &self,
        key: &[u8; 32],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError>;
    /// Wraps a new user's `key` under the current master key and says which
    /// one that was (what the key file records). The default wraps under
    /// [`KeyWrapper::current`]; a backend whose latest version can change
    /// under a running process (Vault, rotated by another one) overrides it
    /// to wrap under the latest and name it.
    fn wrap_new(
        &self,
        key: &[u8; 32],
        ctx: &WrapContext,
    ) -> Result<(Vec<u8>, MasterKeyRef), KmsError> {
        let master = self.current();
        let wrapped = self.wrap(key, &master, ctx)?;
        Ok((wrapped, master))
    }
    /// Unwraps a key that [`KeyWrapper::wrap`] produced under `under` with
    /// the same `ctx`.
    fn unwrap(
        &self,
        wrapped: &[u8],
        under: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, KmsError>;
    /// Re-wraps a key wrapped under `from` so that it is wrapped under `to`
    /// (a rotation). The default unwraps here and wraps again; a backend
    /// that can re-wrap by itself (Vault's `rewrap`) overrides it so that the
    /// key never leaves the key service.
    fn rewrap(
        &self,
        wrapped: &[u8],
        from: &MasterKeyRef,
        to: &MasterKeyRef,
        ctx: &WrapContext,
    ) -> Result<Vec<u8>, KmsError> {
        let key = self.unwrap(wrapped, from, ctx)?;
        self.wrap(&key, to, ctx)
    }
    /// Makes a new master key version at the backend and returns it; it is
    /// [`KeyWrapper::current`] from then on. Only backends that number their
    /// versions themselves (Vault) do; for the others the operator names the
    /// new version (`dropzone keys rotate --secret-version V`), and the
    /// default says so.
    fn rotate_master_key(&self) -> Result<MasterKeyRef, KmsError> {
        Err(KmsError::Misconfigured(format!(
            "the {} backend does not choose master key versions itself: \
             name the new one with --secret-version V",
            self.backend()
        )))
    }
}
