//! The passphrase that encrypts private keys at rest.
//!
//! It comes, in this order, from the environment variable
//! `DROPZONE_EAAS_PASSPHRASE`, from the configured `passphrase_file`, or
//! from `keys_dir/.passphrase`, which is generated (256 random bits as 64
//! hex characters, mode 0600) on first start. The binary reads the
//! environment; this module only sees the value.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::atomic_file;

/// Name of the generated passphrase file inside `keys_dir`. The leading dot
/// keeps it apart from secret paths, which may not start with one.
pub const GENERATED_FILE: &str = ".passphrase";
/// Longest passphrase accepted; far more than any useful one.
const MAX_LEN: usize = 1024;
/// Random bytes in a generated passphrase: 256 bits.
const GENERATED_BYTES: usize = 32;
/// Passphrases shorter than this are accepted with a warning.
pub const SHORT_LEN: usize = 16;

/// Why no passphrase could be had. Messages never contain the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// The value is empty (after removing a final line break).
    #[error("{0} is empty")]
    Empty(String),
    /// The value is longer than the service accepts.
    #[error("{0} is longer than {MAX_LEN} bytes")]
    TooLong(String),
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The at-rest passphrase: not `Clone`, no `Debug` of its value, zeroized
/// on drop.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Where the passphrase in use came from (for the start-up log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseSource {
    /// The environment variable.
    Environment,
    /// A file the operator configured.
    File(PathBuf),
    /// `keys_dir/.passphrase`, which existed.
    GeneratedEarlier(PathBuf),
    /// `keys_dir/.passphrase`, created by this start.
    GeneratedNow(PathBuf),
}

impl Passphrase {
    /// A passphrase given as a value (the environment variable); `what`
    /// names it in errors.
    pub fn from_value(value: &[u8], what: &str) -> Result<Self, PassphraseError> {
        let value = strip_line_break(value);
        if value.is_empty() {
            return Err(PassphraseError::Empty(what.to_owned()));
        }
        if value.len() > MAX_LEN {
            return Err(PassphraseError::TooLong(what.to_owned()));
        }
        Ok(Passphrase(Zeroizing::new(value.to_vec())))
    }

    /// Reads a passphrase file: its bytes without one final line break.
    pub fn read_file(path: &Path) -> Result<Self, PassphraseError> {
        let io_err = |source| PassphraseError::Io {
            path: path.to_owned(),
            source,
        };
        // Room for the longest passphrase and a CRLF.
        let bytes =
            Zeroizing::new(atomic_file::read_small(path, MAX_LEN as u64 + 2).map_err(io_err)?);
        Passphrase::from_value(&bytes, &path.display().to_string())
    }

    /// Reads `keys_dir/.passphrase`, generating it first if it does not
    /// exist; `keys_dir` must exist. Returns whether this call created it.
    /// Concurrent starts agree on one file.
    pub fn load_or_generate(keys_dir: &Path) -> Result<(Self, bool), PassphraseError> {
        let path = keys_dir.join(GENERATED_FILE);
        let mut created = false;
        if !path.exists() {
            let mut random = Zeroizing::new([0u8; GENERATED_BYTES]);
            getrandom::fill(random.as_mut()).map_err(|e| PassphraseError::Io {
                path: path.clone(),
                source: io::Error::other(format!("getrandom: {e}")),
            })?;
            let mut text = Zeroizing::new(hex::encode(random.as_ref()));
            text.push('\n');
            created = atomic_file::create_new(keys_dir, GENERATED_FILE, text.as_bytes()).map_err(
                |source| PassphraseError::Io {
                    path: path.clone(),
                    source,
                },
            )?;
        }
        Ok((Passphrase::read_file(&path)?, created))
    }

    /// The passphrase bytes, for the PKCS#8 key derivation.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether it is shorter than [`SHORT_LEN`] bytes (worth a warning).
    pub fn is_short(&self) -> bool {
        self.0.len() < SHORT_LEN
    }
}

fn strip_line_break(v: &[u8]) -> &[u8] {
    let v = v.strip_suffix(b"\n").unwrap_or(v);
    v.strip_suffix(b"\r").unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = Passphrase::load_or_generate(dir.path()).unwrap();
        assert!(created);
        assert_eq!(first.as_bytes().len(), 2 * GENERATED_BYTES);
        assert!(first.as_bytes().iter().all(u8::is_ascii_hexdigit));
        let file = dir.path().join(GENERATED_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = Passphrase::load_or_generate(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.as_bytes(), again.as_bytes());
        assert_eq!(format!("{first:?}"), "Passphrase(..)");
    }

    #[test]
    fn values_lose_one_line_break_and_must_not_be_empty() {
        assert_eq!(
            Passphrase::from_value(b"pw\r\n", "x").unwrap().as_bytes(),
            b"pw"
        );
        assert_eq!(
            Passphrase::from_value(b"pw \n\n", "x").unwrap().as_bytes(),
            b"pw \n"
        );
        assert!(matches!(
            Passphrase::from_value(b"\n", "x"),
            Err(PassphraseError::Empty(_))
        ));
        assert!(matches!(
            Passphrase::from_value(&[b'a'; MAX_LEN + 1], "x"),
            Err(PassphraseError::TooLong(_))
        ));
        assert!(Passphrase::from_value(b"short", "x").unwrap().is_short());
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Passphrase::read_file(&dir.path().join("missing")),
            Err(PassphraseError::Io { .. })
        ));
    }
}
