//! Where the service keeps its RSA key pairs, and the RSA-OAEP operations
//! of the wire API: the [`KeyStore`] trait and its two implementations.
//!
//! - [`FileKeyStore`]: encrypted PKCS#8 files under `keys_dir` (the
//!   default).
//! - `Pkcs11KeyStore` (cargo feature `pkcs11`): key pairs in a PKCS#11
//!   token, private keys non-extractable, as the original service kept them
//!   in SoftHSM2.
//!
//! Both encrypt with RSA-OAEP, SHA-1 for both the digest and MGF1, and no
//! label (the original's `CKM_RSA_PKCS_OAEP` parameters), and report
//! failures as the same [`KeyStoreError`]s, so the wire behaviour does not
//! depend on the store.

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::secret::KeyId;

mod file;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;

pub use file::FileKeyStore;
#[cfg(feature = "pkcs11")]
pub use pkcs11::Pkcs11KeyStore;

/// Smallest key the service uses, whoever made it (NIST SP 800-57 part 1:
/// 2048 bits is the floor for RSA today).
pub const MIN_KEY_BITS: usize = 2048;
/// OAEP overhead in bytes: two SHA-1 digests and two marker bytes
/// (RFC 8017 section 7.1.1), so RSA-2048 fits 256 - 42 = 214 bytes.
const OAEP_SHA1_OVERHEAD: usize = 2 * 20 + 2;

/// The longest plaintext one OAEP-SHA1 block of a key with a modulus of
/// `modulus_len` bytes holds.
pub fn max_plaintext_len(modulus_len: usize) -> usize {
    modulus_len.saturating_sub(OAEP_SHA1_OVERHEAD)
}

/// Size of newly generated keys: 2048 (the original's size, the default),
/// 3072 or 4096 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBits(usize);

impl KeyBits {
    /// The default, as in the original service.
    pub const DEFAULT: KeyBits = KeyBits(2048);
    /// The sizes that may be configured.
    pub const ALLOWED: [usize; 3] = [2048, 3072, 4096];

    /// One of [`KeyBits::ALLOWED`].
    pub fn new(bits: usize) -> Option<KeyBits> {
        KeyBits::ALLOWED.contains(&bits).then_some(KeyBits(bits))
    }

    /// The number of bits.
    pub fn get(self) -> usize {
        self.0
    }
}

/// What [`KeyStore::generate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// This call created the key.
    Created,
    /// The key existed already (possibly created by a concurrent call).
    Existed,
}

/// A key operation failed. Messages hold key names and sizes, never key
/// material, plaintexts, ciphertexts or PINs; only
/// [`KeyStoreError::Storage`] and [`KeyStoreError::BadKeyFile`] hold host
/// paths.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// No such key or version.
    #[error("key {0} does not exist")]
    UnknownKey(KeyId),
    /// The plaintext does not fit one OAEP block.
    #[error(
        "plaintext is {len} bytes; at most {max} bytes fit RSA-OAEP-SHA1 under key {key} ({bits} bits)"
    )]
    PlaintextTooLong {
        /// The key.
        key: KeyId,
        /// Plaintext length.
        len: usize,
        /// Largest plaintext for this key.
        max: usize,
        /// Key size.
        bits: usize,
    },
    /// The ciphertext is not an OAEP block of this key (tampered, wrong
    /// length, or made under another key). Deliberately one error for every
    /// cause, so that it is no padding oracle.
    #[error("ciphertext does not decrypt under key {0}")]
    DecryptionFailed(KeyId),
    /// A key file exists but cannot be used: wrong passphrase, not
    /// encrypted, corrupt, or too small.
    #[error("key file {} cannot be used: {why}", path.display())]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// Why (never the key's contents).
        why: String,
    },
    /// Objects for a key exist in the PKCS#11 token but cannot be used:
    /// too small, more than one private key under its label, or a public
    /// key without its private key. The message names the objects' label.
    #[error("key objects in the token cannot be used: {0}")]
    BadTokenKey(String),
    /// The key storage failed: I/O in the key directory, or the PKCS#11
    /// module or token.
    #[error("key storage: {0}")]
    Storage(String),
    /// Key generation or RSA encryption failed.
    #[error("RSA: {0}")]
    Crypto(String),
}

/// RSA key pairs named by [`KeyId`], and RSA-OAEP-SHA1 with them.
///
/// Implementations are shared by the request threads: every method may be
/// called concurrently, and [`KeyStore::generate`] creates a key once
/// however many calls race for it.
pub trait KeyStore: fmt::Debug + Send + Sync {
    /// Creates key `id` with the configured number of bits unless it exists.
    fn generate(&self, id: &KeyId) -> Result<Generated, KeyStoreError>;

    /// RSA-OAEP-SHA1 encryption of `plaintext` under `id`; a fresh random
    /// ciphertext on every call.
    fn encrypt(&self, id: &KeyId, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError>;

    /// RSA-OAEP-SHA1 decryption of `ciphertext` under `id`. Every way a
    /// ciphertext can be wrong is [`KeyStoreError::DecryptionFailed`].
    fn decrypt(&self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError>;

    /// Where the keys are, for the start-up log: a directory or a token.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bits_are_2048_3072_or_4096() {
        assert_eq!(KeyBits::DEFAULT.get(), 2048);
        assert_eq!(KeyBits::new(4096).map(KeyBits::get), Some(4096));
        assert_eq!(KeyBits::new(1024), None);
        assert_eq!(KeyBits::new(2049), None);
    }

    #[test]
    fn oaep_sha1_fits_214_bytes_in_rsa_2048() {
        assert_eq!(max_plaintext_len(256), 214);
        assert_eq!(max_plaintext_len(384), 342);
        assert_eq!(max_plaintext_len(512), 470);
        assert_eq!(max_plaintext_len(10), 0);
    }
}
