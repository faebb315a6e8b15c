//! `[ssh]`: timeouts and the algorithms the server offers.
//!
//! The default lists are those that ssh-audit (3.9) passes without a
//! failure, keeping one classical key exchange (curve25519) beside the
//! post-quantum hybrid so that OpenSSH before 9.9 (Debian 12, Ubuntu 24.04)
//! can still connect; docs/HARDENING.md says why each one is there. The
//! strict-kex (Terrapin) and ext-info markers are always offered, whatever
//! the lists say.

use std::time::Duration;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
use serde::Deserialize;

/// `[ssh]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    login_grace_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    kex: Option<Vec<String>>,
    ciphers: Option<Vec<String>>,
    macs: Option<Vec<String>>,
    host_key_algorithms: Option<Vec<String>>,
}

/// Key exchanges offered by default, in order of preference.
pub const DEFAULT_KEX: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
];
/// Ciphers offered by default: AEADs first, then CTR (always with an ETM
/// MAC). No CBC.
pub const DEFAULT_CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];
/// MACs offered by default: encrypt-then-MAC only, no SHA-1.
pub const DEFAULT_MACS: &[&str] = &[
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
];
/// Host key algorithms offered by default: no NIST curves, no SHA-1
/// (`ssh-rsa`). The RSA key is 3072 bits.
pub const DEFAULT_HOST_KEY_ALGORITHMS: &[&str] = &["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"];

/// Host key algorithms the server can offer (it generates ed25519, ECDSA
/// P-256 and RSA keys).
const HOST_KEY_ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];

/// The validated `[ssh]` table.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Time allowed from connection to successful login.
    pub login_grace: Duration,
    /// A session with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Key exchange algorithms, most preferred first.
    pub kex: Vec<russh::kex::Name>,
    /// Ciphers, most preferred first.
    pub ciphers: Vec<russh::cipher::Name>,
    /// MACs (used with the CTR ciphers), most preferred first.
    pub macs: Vec<russh::mac::Name>,
    /// Host key algorithms, most preferred first.
    pub host_key_algorithms: Vec<Algorithm>,
}

impl RawSsh {
    pub(super) fn validate(self) -> Result<SshConfig, String> {
        let kex = names(
            "ssh.kex",
            self.kex,
            DEFAULT_KEX,
            &supported(russh::kex::ALL_KEX_ALGORITHMS),
            |s| russh::kex::Name::try_from(s).ok(),
        )?;
        let ciphers = names(
            "ssh.ciphers",
            self.ciphers,
            DEFAULT_CIPHERS,
            &supported(russh::cipher::ALL_CIPHERS),
            |s| russh::cipher::Name::try_from(s).ok(),
        )?;
        let macs = names(
            "ssh.macs",
            self.macs,
            DEFAULT_MACS,
            &supported(russh::mac::ALL_MAC_ALGORITHMS),
            |s| russh::mac::Name::try_from(s).ok(),
        )?;
        let host_key_algorithms = names(
            "ssh.host_key_algorithms",
            self.host_key_algorithms,
            DEFAULT_HOST_KEY_ALGORITHMS,
            HOST_KEY_ALGORITHMS,
            host_key_algorithm,
        )?;
        Ok(SshConfig {
            login_grace: positive_secs("ssh.login_grace_secs", self.login_grace_secs, 120)?,
            idle_timeout: positive_secs("ssh.idle_timeout_secs", self.idle_timeout_secs, 900)?,
            kex,
            ciphers,
            macs,
            host_key_algorithms,
        })
    }
}

fn positive_secs(key: &str, value: Option<u64>, default: u64) -> Result<Duration, String> {
    match value {
        Some(0) => Err(format!("{key} must be at least 1")),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(Duration::from_secs(default)),
    }
}

/// The names of one russh list, without the `none`/`clear` placeholders,
/// which are never acceptable on a network.
fn supported<N: AsRef<str>>(all: &'static [&'static N]) -> Vec<&'static str> {
    all.iter()
        .map(|n| n.as_ref())
        .filter(|n| !matches!(*n, "none" | "clear"))
        .collect()
}

/// Parses one algorithm list: a non-empty array of supported names, each
/// once. Errors name the key and list what is supported.
fn names<T, S: AsRef<str>>(
    key: &str,
    given: Option<Vec<String>>,
    default: &[&str],
    supported: &[S],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, String> {
    let list: Vec<String> = match given {
        Some(list) => list,
        None => default.iter().map(|s| (*s).to_owned()).collect(),
    };
    if list.is_empty() {
        return Err(format!("{key} must name at least one algorithm"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, name) in list.iter().enumerate() {
        if list[..i].contains(name) {
            return Err(format!("{key}: {name:?} is listed twice"));
        }
        let parsed = supported
            .iter()
            .any(|s| s.as_ref() == name)
            .then(|| parse(name))
            .flatten();
        match parsed {
            Some(p) => out.push(p),
            None => {
                let all: Vec<&str> = supported.iter().map(|s| s.as_ref()).collect();
                return Err(format!(
                    "{key}: unsupported algorithm {name:?}; supported: {}",
                    all.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

fn host_key_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "ssh-ed25519" => Algorithm::Ed25519,
        "ecdsa-sha2-nistp256" => Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        },
        "rsa-sha2-512" => Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        "rsa-sha2-256" => Algorithm::Rsa {
            hash: Some(HashAlg::Sha256),
        },
        "ssh-rsa" => Algorithm::Rsa { hash: None },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SshConfig, String> {
        toml::from_str::<RawSsh>(text)
            .map_err(|e| e.to_string())
            .and_then(RawSsh::validate)
    }

    #[test]
    fn defaults_have_no_sha1_nist_or_encrypt_and_mac() {
        let c = parse("").unwrap();
        let kex: Vec<&str> = c.kex.iter().map(|n| n.as_ref()).collect();
        assert_eq!(kex, DEFAULT_KEX);
        assert!(
            !kex.iter()
                .any(|k| k.contains("nistp") || k.contains("sha1"))
        );
        let macs: Vec<&str> = c.macs.iter().map(|n| n.as_ref()).collect();
        assert!(
            macs.iter()
                .all(|m| m.ends_with("-etm@openssh.com") && !m.contains("sha1"))
        );
        let ciphers: Vec<&str> = c.ciphers.iter().map(|n| n.as_ref()).collect();
        assert!(!ciphers.iter().any(|c| c.contains("cbc")));
        assert_eq!(
            c.host_key_algorithms,
            vec![
                Algorithm::Ed25519,
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512)
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256)
                },
            ]
        );
        assert_eq!(c.login_grace, Duration::from_secs(120));
        assert_eq!(c.idle_timeout, Duration::from_secs(900));
    }

    #[test]
    fn lists_are_configurable() {
        let c = parse(
            "kex = [\"mlkem768x25519-sha256\"]\nciphers = [\"aes256-gcm@openssh.com\"]\n\
             macs = [\"hmac-sha2-256-etm@openssh.com\"]\nhost_key_algorithms = [\"ecdsa-sha2-nistp256\"]\n",
        )
        .unwrap();
        assert_eq!(c.kex, vec![russh::kex::MLKEM768X25519_SHA256]);
        assert_eq!(c.ciphers, vec![russh::cipher::AES_256_GCM]);
        assert_eq!(c.macs, vec![russh::mac::HMAC_SHA256_ETM]);
        assert_eq!(
            c.host_key_algorithms,
            vec![Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256
            }]
        );
    }

    #[test]
    fn unknown_names_are_errors_that_name_the_key_and_the_choices() {
        let e = parse("kex = [\"curve25519-sha256\", \"sntrup761x25519-sha512@openssh.com\"]\n")
            .unwrap_err();
        assert!(e.contains("ssh.kex") && e.contains("sntrup761"), "{e}");
        assert!(
            e.contains("supported: ") && e.contains("mlkem768x25519-sha256"),
            "{e}"
        );
        let e = parse("ciphers = [\"none\"]\n").unwrap_err();
        assert!(e.contains("ssh.ciphers") && e.contains("\"none\""), "{e}");
        let e = parse("macs = []\n").unwrap_err();
        assert!(e.contains("ssh.macs") && e.contains("at least one"), "{e}");
        let e = parse("host_key_algorithms = [\"ssh-dss\"]\n").unwrap_err();
        assert!(
            e.contains("ssh.host_key_algorithms") && e.contains("ssh-ed25519"),
            "{e}"
        );
        let e = parse(
            "macs = [\"hmac-sha2-256-etm@openssh.com\", \"hmac-sha2-256-etm@openssh.com\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = parse("login_grace_secs = 0\n").unwrap_err();
        assert!(e.contains("ssh.login_grace_secs"), "{e}");
    }
}
