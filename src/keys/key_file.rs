//! The wrapped key file format: `<keks_dir>/<NAME>.key`, TOML.
//!
//! ```toml
//! format = 1
//! user = "alice"
//! backend = "local"
//! secret_path = "local"
//! secret_version = "1"
//! wrapped_key = "3f1c..."          # hex of the backend's wrapped key
//! created_at = "2025-01-31T12:00:00Z"
//! updated_at = "2025-01-31T12:00:00Z"
//! ```
//!
//! Pure functions on strings; [`super::UserKeys`] does the file I/O.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::kms::MasterKeyRef;
use crate::username::UserName;

/// The only format version so far.
pub(crate) const FORMAT: u32 = 1;
/// Largest wrapped key accepted: an RSA-16384 ciphertext is 2 KiB; backends
/// that add framing stay well below this.
const MAX_WRAPPED_LEN: usize = 8 * 1024;
/// Largest key file read from disk (hex doubles the wrapped key).
pub(crate) const MAX_FILE_LEN: u64 = 4 * MAX_WRAPPED_LEN as u64;

/// The file as TOML sees it.
#[derive(Serialize, Deserialize)]
struct Raw {
    format: u32,
    user: String,
    backend: String,
    secret_path: String,
    secret_version: String,
    wrapped_key: String,
    created_at: String,
    updated_at: String,
}

/// A parsed and checked key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    pub(crate) user: UserName,
    pub(crate) backend: String,
    pub(crate) master: MasterKeyRef,
    pub(crate) wrapped: Vec<u8>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
}

impl KeyRecord {
    /// A new record stamped with the current time.
    pub(crate) fn new(
        user: UserName,
        backend: &str,
        master: MasterKeyRef,
        wrapped: Vec<u8>,
    ) -> Self {
        let now = now_rfc3339();
        KeyRecord {
            user,
            backend: backend.to_owned(),
            master,
            wrapped,
            created_at: now.clone(),
            updated_at: now,
        }
    }

    /// The same key wrapped anew under `master`; `created_at` is kept.
    pub(crate) fn rewrapped(&self, master: MasterKeyRef, wrapped: Vec<u8>) -> Self {
        KeyRecord {
            master,
            wrapped,
            updated_at: now_rfc3339(),
            ..self.clone()
        }
    }

    /// Parses the file of `expected` user. A file naming another user is
    /// refused: key files must not be swappable between users.
    pub(crate) fn parse(text: &str, expected: &UserName) -> Result<Self, String> {
        let raw: Raw =
            toml::from_str(text).map_err(|e| format!("invalid TOML: {}", e.message()))?;
        if raw.format != FORMAT {
            return Err(format!(
                "unsupported format {} (this build reads {FORMAT})",
                raw.format
            ));
        }
        if raw.user != expected.as_str() {
            return Err(format!("file is for user {:?}, not {expected}", raw.user));
        }
        if raw.backend.is_empty() || raw.secret_path.is_empty() || raw.secret_version.is_empty() {
            return Err("backend, secret_path and secret_version must not be empty".into());
        }
        let wrapped = hex::decode(&raw.wrapped_key).map_err(|e| format!("wrapped_key: {e}"))?;
        if wrapped.is_empty() || wrapped.len() > MAX_WRAPPED_LEN {
            return Err(format!("wrapped_key is {} bytes", wrapped.len()));
        }
        Ok(KeyRecord {
            user: expected.clone(),
            backend: raw.backend,
            master: MasterKeyRef {
                secret_path: raw.secret_path,
                secret_version: raw.secret_version,
            },
            wrapped,
            created_at: raw.created_at,
            updated_at: raw.updated_at,
        })
    }

    /// The file's text.
    pub(crate) fn to_toml(&self) -> Result<String, String> {
        let raw = Raw {
            format: FORMAT,
            user: self.user.as_str().to_owned(),
            backend: self.backend.clone(),
            secret_path: self.master.secret_path.clone(),
            secret_version: self.master.secret_version.clone(),
            wrapped_key: hex::encode(&self.wrapped),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        };
        toml::to_string(&raw).map_err(|e| e.to_string())
    }
}

/// The current time as RFC 3339 UTC with whole seconds.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserName {
        UserName::parse("alice").unwrap()
    }

    fn record() -> KeyRecord {
        KeyRecord::new(
            alice(),
            "local",
            MasterKeyRef {
                secret_path: "local".into(),
                secret_version: "1".into(),
            },
            vec![1, 2, 3, 0xff],
        )
    }

    #[test]
    fn round_trip() {
        let r = record();
        let text = r.to_toml().unwrap();
        assert!(text.contains("format = 1\n"), "{text}");
        assert!(text.contains("wrapped_key = \"010203ff\"\n"), "{text}");
        assert!(
            humantime::parse_rfc3339(&r.created_at).is_ok(),
            "{}",
            r.created_at
        );
        assert_eq!(KeyRecord::parse(&text, &alice()).unwrap(), r);
    }

    #[test]
    fn rejects_bad_files() {
        let good = record().to_toml().unwrap();
        let bob = UserName::parse("bob").unwrap();
        assert!(KeyRecord::parse(&good, &bob).unwrap_err().contains("alice"));
        for bad in [
            good.replace("format = 1", "format = 2"),
            good.replace("010203ff", "01020"),
            good.replace("010203ff", "zz"),
            good.replace("010203ff", ""),
            good.replace("secret_version = \"1\"", "secret_version = \"\""),
            good.replace("user = ", "usr = "),
            "\u{0}garbage".to_owned(),
            String::new(),
        ] {
            assert!(KeyRecord::parse(&bad, &alice()).is_err(), "{bad}");
        }
    }
}
