//! Host keys: loaded from `host_keys_dir`, generated there on first start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{Algorithm, Certificate, EcdsaCurve, PrivateKey};
use tracing::info;

/// RSA host keys are 3072 bits, NIST's size for security beyond 2030.
const RSA_BITS: usize = 3072;

/// What went wrong with the host keys.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The directory or a key file could not be read or written.
    #[error("host key {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file exists but is not a usable OpenSSH private key.
    #[error("host key {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Makes a new key of one kind.
type Generator = fn() -> Result<PrivateKey, String>;

/// Whether a key file is needed for one offered host key algorithm.
type Needed = fn(&Algorithm) -> bool;

/// The host key files, in the order they are offered, each with the
/// algorithms that need it.
const KINDS: &[(&str, Needed, Generator)] = &[
    (
        "ssh_host_ed25519_key",
        |a| *a == Algorithm::Ed25519,
        || PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| e.to_string()),
    ),
    (
        "ssh_host_ecdsa_key",
        |a| matches!(a, Algorithm::Ecdsa { .. }),
        || {
            PrivateKey::random(
                &mut rand::rng(),
                Algorithm::Ecdsa {
                    curve: EcdsaCurve::NistP256,
                },
            )
            .map_err(|e| e.to_string())
        },
    ),
    (
        "ssh_host_rsa_key",
        |a| matches!(a, Algorithm::Rsa { .. }),
        || {
            let pair = RsaKeypair::random(&mut rand::rng(), RSA_BITS).map_err(|e| e.to_string())?;
            PrivateKey::new(KeypairData::from(pair), "").map_err(|e| e.to_string())
        },
    ),
];

/// Loads the host keys that the offered `algorithms` need from `dir`,
/// generating the missing ones (mode 0600) and logging each fingerprint.
/// A key file no offered algorithm needs (the ECDSA key of an older
/// version, say) is left alone and not loaded.
pub fn load_or_generate(
    dir: &Path,
    algorithms: &[Algorithm],
) -> Result<Vec<PrivateKey>, HostKeyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| HostKeyError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut keys = Vec::new();
    for (name, needed, generate) in KINDS {
        let path = dir.join(name);
        if !algorithms.iter().any(needed) {
            if path.exists() {
                info!(path = %path.display(), "host key not offered: no configured host key algorithm uses it");
            }
            continue;
        }
        let key = match fs::read_to_string(&path) {
            Ok(text) => {
                PrivateKey::from_openssh(text.as_bytes()).map_err(|e| HostKeyError::Invalid {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = generate().map_err(|message| HostKeyError::Invalid {
                    path: path.clone(),
                    message,
                })?;
                write_new(&path, &key)?;
                info!(path = %path.display(), "generated host key");
                key
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let mode = fs::metadata(&path).map_err(io(&path))?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "host key is readable by others; set it to 0600");
        }
        info!(
            algorithm = %key.algorithm(),
            fingerprint = %key.public_key().fingerprint(HashAlg::Sha256),
            "host key"
        );
        keys.push(key);
    }
    Ok(keys)
}

/// Reads the host certificates (`host_certificates`): each file holds one
/// OpenSSH host certificate (`ssh-keygen -h -s CA key.pub`) of one of
/// `keys`. A file that cannot be read, is not a host certificate, or
/// certifies none of the keys in use is an error; one outside its validity
/// window is loaded with a warning (clients will refuse it and fall back to
/// the plain key if they know it).
pub fn load_certificates(
    paths: &[PathBuf],
    keys: &[PrivateKey],
) -> Result<Vec<Certificate>, HostKeyError> {
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let invalid = |message: &str| HostKeyError::Invalid {
            path: path.clone(),
            message: message.to_owned(),
        };
        let text = fs::read_to_string(path).map_err(|source| HostKeyError::Io {
            path: path.clone(),
            source,
        })?;
        let cert = Certificate::from_openssh(text.trim())
            .map_err(|e| invalid(&format!("not an OpenSSH certificate: {e}")))?;
        if cert.cert_type() != CertType::Host {
            return Err(invalid(
                "a user certificate, not a host certificate (ssh-keygen -h)",
            ));
        }
        if !keys
            .iter()
            .any(|k| k.public_key().key_data() == cert.public_key())
        {
            return Err(invalid(
                "certifies none of the host keys in use (host_keys_dir, ssh.host_key_algorithms)",
            ));
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now < cert.valid_after() || now >= cert.valid_before() {
            tracing::warn!(path = %path.display(), "host certificate is outside its validity window");
        }
        info!(
            path = %path.display(),
            key_id = %crate::observe::escape(cert.key_id()),
            serial = cert.serial(),
            ca = %cert.signature_key().fingerprint(HashAlg::Sha256),
            "host certificate"
        );
        out.push(cert);
    }
    Ok(out)
}

/// Writes a new key file with mode 0600, never replacing an existing one.
fn write_new(path: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let io = |source| HostKeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| HostKeyError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let pub_path = path.with_extension("pub");
    fs::write(&pub_path, format!("{public}\n")).map_err(|source| HostKeyError::Io {
        path: pub_path,
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Algorithm> {
        vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
        ]
    }

    #[test]
    fn generates_once_then_loads_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path(), &all()).unwrap();
        assert_eq!(first.len(), 3);
        for (name, _, _) in KINDS {
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let second = load_or_generate(dir.path(), &all()).unwrap();
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a.public_key(), b.public_key());
        }
    }

    #[test]
    fn only_the_keys_of_offered_algorithms_are_made_or_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let ed25519_only = load_or_generate(dir.path(), &[Algorithm::Ed25519]).unwrap();
        assert_eq!(ed25519_only.len(), 1);
        assert!(!dir.path().join("ssh_host_ecdsa_key").exists());
        assert!(!dir.path().join("ssh_host_rsa_key").exists());
        // An existing ECDSA key (from an older version) stays on disk but is
        // not offered by the default algorithms.
        let _ = load_or_generate(dir.path(), &all()).unwrap();
        let default = [
            Algorithm::Ed25519,
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ];
        let keys = load_or_generate(dir.path(), &default).unwrap();
        let kinds: Vec<Algorithm> = keys.iter().map(|k| k.algorithm()).collect();
        assert_eq!(
            kinds,
            vec![Algorithm::Ed25519, Algorithm::Rsa { hash: None }]
        );
        assert!(dir.path().join("ssh_host_ecdsa_key").exists());
    }
}
