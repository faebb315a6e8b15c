//! OpenSSH user certificates (`[auth] trusted_user_ca_keys`) and revoked
//! keys (`[auth] revoked_keys`, see [`super::krl`]).
//!
//! A certificate logs in as NAME when all of these hold (as with OpenSSH's
//! `TrustedUserCAKeys` without `AuthorizedPrincipalsFile`):
//!
//! - it is a user certificate signed by a listed CA key, and its signature
//!   verifies;
//! - now is within its validity window (`valid after <= now < valid before`);
//! - it names a principal the user accepts: for a users-file user with
//!   `principals = [...]`, one of those; otherwise NAME itself. A
//!   certificate with no principals is refused (OpenSSH reads an empty list
//!   as "anyone", which a trusted CA should never mean here);
//! - its critical options are all understood and satisfied:
//!   `source-address` must list the client's address; `force-command` is
//!   refused (the server runs no commands, so it cannot honour one), and so
//!   is every other critical option (`verify-required`, ...);
//! - neither it (serial, key id), its key nor its CA key is revoked, and the
//!   revoked keys file can be read.
//!
//! That the client holds the certificate's private key is checked by russh
//! before [`KeyTrust::check_certificate`] is asked: it verifies the session
//! signature with the certified key first.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::ssh_key::Fingerprint;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Certificate, HashAlg, PublicKey};

use super::krl::{Revocation, RevokedKeysFile};
use crate::address_pattern::AddressPatterns;
use crate::observe::CertificateId;

/// Largest CA keys file read: thousands of keys.
const MAX_CA_FILE_LEN: u64 = 1024 * 1024;
/// Longest key id kept for the log and the audit trail, in characters.
const MAX_KEY_ID_CHARS: usize = 256;
/// Longest option name quoted in a refusal.
const MAX_OPTION_CHARS: usize = 64;

/// The CA keys trusted to certify users.
#[derive(Debug)]
pub struct UserCas {
    keys: Vec<(KeyData, Fingerprint)>,
}

impl UserCas {
    /// Reads the CA keys file: OpenSSH public keys, one a line; blank lines
    /// and `#` comments are skipped. A file without a key is an error.
    pub fn load(path: &Path) -> Result<UserCas, String> {
        let fail = |e: String| format!("auth.trusted_user_ca_keys: {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_CA_FILE_LEN {
            return Err(fail(format!("larger than {MAX_CA_FILE_LEN} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        UserCas::parse(&text).map_err(fail)
    }

    /// Parses the text of a CA keys file.
    pub fn parse(text: &str) -> Result<UserCas, String> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line).map_err(|e| {
                format!(
                    "line {}: not an OpenSSH public key (type base64 [comment]): {e}",
                    index + 1
                )
            })?;
            let data = key.key_data().clone();
            keys.push((data, key.fingerprint(HashAlg::Sha256)));
        }
        if keys.is_empty() {
            return Err("no CA key in the file".into());
        }
        Ok(UserCas { keys })
    }

    /// The number of CA keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The fingerprint of `ca` if it is a trusted CA key.
    fn trusted(&self, ca: &KeyData) -> Option<&Fingerprint> {
        self.keys.iter().find(|(k, _)| k == ca).map(|(_, fp)| fp)
    }
}

/// Why a certificate was refused: the audit reason and log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    /// Certificate logins are not configured (`trusted_user_ca_keys`).
    #[error("certificate logins are not enabled")]
    NotEnabled,
    /// A host certificate presented for a user login.
    #[error("not a user certificate")]
    NotUserCertificate,
    /// Signed by a key that is not a trusted CA.
    #[error("signed by an untrusted CA")]
    UntrustedCa,
    /// The CA signature does not verify.
    #[error("its CA signature does not verify")]
    BadSignature,
    /// Before its `valid after` time.
    #[error("not yet valid")]
    NotYetValid,
    /// At or after its `valid before` time.
    #[error("expired")]
    Expired,
    /// It lists no principals.
    #[error("it names no principals")]
    NoPrincipals,
    /// None of its principals is one the user accepts.
    #[error("no principal of the certificate is accepted for this user")]
    WrongPrincipal,
    /// The client's address is not in its `source-address` list.
    #[error("source-address does not allow the client's address")]
    SourceAddress,
    /// Its `source-address` list is not a list of addresses and CIDR blocks.
    #[error("invalid source-address option")]
    BadSourceAddress,
    /// It carries `force-command`, which the server cannot honour.
    #[error("force-command is not supported (the server runs no commands)")]
    ForceCommand,
    /// It carries another critical option (named).
    #[error("unsupported critical option {0:?}")]
    UnsupportedOption(String),
    /// It (or its key or CA key) is revoked.
    #[error("revoked: {0}")]
    Revoked(Revocation),
    /// The revoked keys file cannot be used: every key login is refused.
    #[error("the revoked keys file is unusable ({0})")]
    RevocationUnavailable(String),
}

/// Who a certificate must name to log in.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The login name.
    pub user: &'a str,
    /// The users-file entry's `principals` (empty: the login name).
    pub principals: &'a [String],
    /// The client's address, for `source-address`.
    pub client: IpAddr,
    /// Now, in seconds since the Unix epoch.
    pub now: u64,
}

/// What the audit trail names a certificate by: its key id (bounded), serial
/// and the SHA-256 fingerprint of its CA key.
pub fn identity(cert: &Certificate) -> CertificateId {
    CertificateId {
        key_id: cert.key_id().chars().take(MAX_KEY_ID_CHARS).collect(),
        serial: cert.serial(),
        ca: cert
            .signature_key()
            .fingerprint(HashAlg::Sha256)
            .to_string(),
    }
}

/// Checks `cert` against the trusted CAs and what the login expects (not
/// revocation: see [`KeyTrust::check_certificate`]).
pub fn check(
    cert: &Certificate,
    cas: &UserCas,
    expected: &Expected<'_>,
) -> Result<(), CertRefusal> {
    if cert.cert_type() != CertType::User {
        return Err(CertRefusal::NotUserCertificate);
    }
    let Some(fingerprint) = cas.trusted(cert.signature_key()) else {
        return Err(CertRefusal::UntrustedCa);
    };
    if expected.now < cert.valid_after() {
        return Err(CertRefusal::NotYetValid);
    }
    if expected.now >= cert.valid_before() {
        return Err(CertRefusal::Expired);
    }
    // The signature, the CA and the window once more, through ssh-key's own
    // check (the window was tested above to tell the reasons apart).
    cert.validate_at(expected.now, [fingerprint])
        .map_err(|_| CertRefusal::BadSignature)?;
    check_principals(cert.valid_principals(), expected)?;
    check_critical_options(cert, expected.client)
}

fn check_principals(listed: &[String], expected: &Expected<'_>) -> Result<(), CertRefusal> {
    if listed.is_empty() {
        return Err(CertRefusal::NoPrincipals);
    }
    let accepted = |p: &String| {
        if expected.principals.is_empty() {
            p == expected.user
        } else {
            expected.principals.contains(p)
        }
    };
    if listed.iter().any(accepted) {
        Ok(())
    } else {
        Err(CertRefusal::WrongPrincipal)
    }
}

fn check_critical_options(cert: &Certificate, client: IpAddr) -> Result<(), CertRefusal> {
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "source-address" => {
                if !source_address_allows(value, client)? {
                    return Err(CertRefusal::SourceAddress);
                }
            }
            "force-command" => return Err(CertRefusal::ForceCommand),
            other => {
                return Err(CertRefusal::UnsupportedOption(
                    other.chars().take(MAX_OPTION_CHARS).collect(),
                ));
            }
        }
    }
    Ok(())
}

/// OpenSSH's `source-address`: a comma-separated list of addresses and CIDR
/// blocks (no host names, wildcards or negations).
fn source_address_allows(list: &str, client: IpAddr) -> Result<bool, CertRefusal> {
    let valid = list.split(',').all(|entry| {
        let (address, prefix) = match entry.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (entry, None),
        };
        let Ok(ip) = address.parse::<IpAddr>() else {
            return false;
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        prefix.is_none_or(|p| {
            p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u8>().is_ok_and(|n| n <= max)
        })
    });
    if !valid {
        return Err(CertRefusal::BadSourceAddress);
    }
    AddressPatterns::parse(list)
        .map(|p| p.allows(client))
        .map_err(|_| CertRefusal::BadSourceAddress)
}

/// Whether a key may be used at all: the trusted user CAs (certificate
/// logins, when configured) and the revoked keys file (for plain keys and
/// certificates alike). Built once at start-up; the revoked keys file is
/// reread when it changes.
#[derive(Debug, Default)]
pub struct KeyTrust {
    user_cas: Option<UserCas>,
    revoked: Option<RevokedKeysFile>,
}

impl KeyTrust {
    /// Loads `[auth] trusted_user_ca_keys` and `[auth] revoked_keys`, each
    /// if set: a file that cannot be read or parsed stops the start.
    pub fn load(
        trusted_user_ca_keys: Option<&Path>,
        revoked_keys: Option<&Path>,
    ) -> Result<KeyTrust, String> {
        let user_cas = trusted_user_ca_keys.map(UserCas::load).transpose()?;
        let revoked = revoked_keys
            .map(|p| RevokedKeysFile::open(p).map_err(|e| format!("auth.revoked_keys: {e}")))
            .transpose()?;
        if let Some(cas) = &user_cas {
            tracing::info!(ca_keys = cas.len(), "certificate logins enabled");
        }
        Ok(KeyTrust { user_cas, revoked })
    }

    /// [`KeyTrust::load`] from `[auth]`.
    pub fn from_config(auth: &crate::config::AuthConfig) -> Result<KeyTrust, String> {
        Self::load(
            auth.trusted_user_ca_keys.as_deref(),
            auth.revoked_keys.as_deref(),
        )
    }

    /// Whether certificate logins are configured.
    pub fn certificates_enabled(&self) -> bool {
        self.user_cas.is_some()
    }

    /// The revoked keys file, if configured.
    pub fn revoked_keys_path(&self) -> Option<PathBuf> {
        self.revoked.as_ref().map(|r| r.path().to_owned())
    }

    /// Whether the plain key `key` is revoked; `Err` (refuse it) when the
    /// revoked keys file cannot be used.
    pub fn key_revoked(&self, key: &KeyData) -> Result<bool, Arc<str>> {
        match &self.revoked {
            None => Ok(false),
            Some(file) => Ok(file.current()?.key_revoked(key)),
        }
    }

    /// Whether `cert` logs in as `expected.user` (see the module doc).
    pub fn check_certificate(
        &self,
        cert: &Certificate,
        expected: &Expected<'_>,
    ) -> Result<(), CertRefusal> {
        let Some(cas) = &self.user_cas else {
            return Err(CertRefusal::NotEnabled);
        };
        check(cert, cas, expected)?;
        if let Some(file) = &self.revoked {
            let list = file
                .current()
                .map_err(|e| CertRefusal::RevocationUnavailable(e.to_string()))?;
            if let Some(why) = list.certificate_revoked(cert) {
                return Err(CertRefusal::Revoked(why));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
