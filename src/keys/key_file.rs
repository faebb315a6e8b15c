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
//!
//! # Optional: the same key wrapped by other backends, while keys move
//! # from one backend to another (`dropzone keys migrate`).
//! [[other_wrapping]]
//! backend = "aws-kms"
//! secret_path = "arn:aws:kms:us-east-1:123456789012:key/..."
//! secret_version = "1"
//! wrapped_key = "0102..."
//! ```
//!
//! The top-level wrapping is the primary one; a server uses the wrapping of
//! its configured backend, primary or other. `other_wrapping` is an
//! addition within format 1: builds that predate it ignore unknown keys and
//! read the primary wrapping, which a migration keeps until `--finish`.
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    other_wrapping: Vec<RawWrapping>,
}

/// One `[[other_wrapping]]` table.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWrapping {
    backend: String,
    secret_path: String,
    secret_version: String,
    wrapped_key: String,
}

/// The key wrapped by one backend under one of its master keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wrapping {
    pub(crate) backend: String,
    pub(crate) master: MasterKeyRef,
    pub(crate) wrapped: Vec<u8>,
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
    /// The same key wrapped by other backends (at most one per backend,
    /// none for the primary's backend).
    pub(crate) others: Vec<Wrapping>,
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
            others: Vec::new(),
        }
    }

    /// The wrapping by `backend`: the primary one or another.
    pub(crate) fn wrapping_for(&self, backend: &str) -> Option<Wrapping> {
        if self.backend == backend {
            return Some(Wrapping {
                backend: self.backend.clone(),
                master: self.master.clone(),
                wrapped: self.wrapped.clone(),
            });
        }
        self.others.iter().find(|w| w.backend == backend).cloned()
    }

    /// The backends this file has a wrapping by, primary first.
    pub(crate) fn backends(&self) -> Vec<&str> {
        std::iter::once(self.backend.as_str())
            .chain(self.others.iter().map(|w| w.backend.as_str()))
            .collect()
    }

    /// The same record with `wrapping` replacing the one by its backend
    /// (primary or other), or added as another.
    pub(crate) fn with_wrapping(&self, wrapping: Wrapping) -> Self {
        let mut new = KeyRecord {
            updated_at: now_rfc3339(),
            ..self.clone()
        };
        if wrapping.backend == new.backend {
            new.master = wrapping.master;
            new.wrapped = wrapping.wrapped;
        } else if let Some(w) = new
            .others
            .iter_mut()
            .find(|w| w.backend == wrapping.backend)
        {
            *w = wrapping;
        } else {
            new.others.push(wrapping);
        }
        new
    }

    /// The same record with `wrapping` as its only, primary wrapping (the
    /// end of a migration).
    pub(crate) fn only(&self, wrapping: Wrapping) -> Self {
        KeyRecord {
            backend: wrapping.backend,
            master: wrapping.master,
            wrapped: wrapping.wrapped,
            updated_at: now_rfc3339(),
            others: Vec::new(),
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
        let wrapped = decode_wrapped(&raw.wrapped_key)?;
        let mut others: Vec<Wrapping> = Vec::with_capacity(raw.other_wrapping.len());
        for w in raw.other_wrapping {
            if w.backend.is_empty() || w.secret_path.is_empty() || w.secret_version.is_empty() {
                return Err(
                    "other_wrapping: backend, secret_path and secret_version must not be empty"
                        .into(),
                );
            }
            if w.backend == raw.backend || others.iter().any(|o| o.backend == w.backend) {
                return Err(format!("more than one wrapping by backend {:?}", w.backend));
            }
            others.push(Wrapping {
                wrapped: decode_wrapped(&w.wrapped_key)
                    .map_err(|e| format!("other_wrapping ({}): {e}", w.backend))?,
                backend: w.backend,
                master: MasterKeyRef {
                    secret_path: w.secret_path,
                    secret_version: w.secret_version,
                },
            });
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
            others,
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
            other_wrapping: self
                .others
                .iter()
                .map(|w| RawWrapping {
                    backend: w.backend.clone(),
                    secret_path: w.master.secret_path.clone(),
                    secret_version: w.master.secret_version.clone(),
                    wrapped_key: hex::encode(&w.wrapped),
                })
                .collect(),
        };
        toml::to_string(&raw).map_err(|e| e.to_string())
    }
}

/// A `wrapped_key` value: hex of 1 to [`MAX_WRAPPED_LEN`] bytes.
fn decode_wrapped(text: &str) -> Result<Vec<u8>, String> {
    let wrapped = hex::decode(text).map_err(|e| format!("wrapped_key: {e}"))?;
    if wrapped.is_empty() || wrapped.len() > MAX_WRAPPED_LEN {
        return Err(format!("wrapped_key is {} bytes", wrapped.len()));
    }
    Ok(wrapped)
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

    fn aws_wrapping() -> Wrapping {
        Wrapping {
            backend: "aws-kms".into(),
            master: MasterKeyRef {
                secret_path: "arn:k".into(),
                secret_version: "1".into(),
            },
            wrapped: vec![9, 9],
        }
    }

    #[test]
    fn other_wrappings_round_trip_and_old_files_still_parse() {
        let r = record().with_wrapping(aws_wrapping());
        assert_eq!(r.backends(), ["local", "aws-kms"]);
        let text = r.to_toml().unwrap();
        assert!(
            text.contains("[[other_wrapping]]\nbackend = \"aws-kms\""),
            "{text}"
        );
        let back = KeyRecord::parse(&text, &alice()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.wrapping_for("aws-kms"), Some(aws_wrapping()));
        assert_eq!(
            back.wrapping_for("local").unwrap().wrapped,
            vec![1, 2, 3, 0xff]
        );
        assert_eq!(back.wrapping_for("vault"), None);
        // A file written before other_wrapping existed reads the same.
        let old = record().to_toml().unwrap();
        assert!(!old.contains("other_wrapping"), "{old}");
        assert!(KeyRecord::parse(&old, &alice()).unwrap().others.is_empty());
        // What an older build sees of a file with other wrappings: the
        // primary fields, unchanged (its Raw has no other_wrapping and
        // serde ignores unknown keys).
        #[derive(Deserialize)]
        struct OldRaw {
            backend: String,
            wrapped_key: String,
        }
        let seen: OldRaw = toml::from_str(&text).unwrap();
        assert_eq!(
            (seen.backend.as_str(), seen.wrapped_key.as_str()),
            ("local", "010203ff")
        );
    }

    #[test]
    fn replacing_and_finishing_wrappings() {
        let r = record().with_wrapping(aws_wrapping());
        let mut newer = aws_wrapping();
        newer.wrapped = vec![8];
        let r2 = r.with_wrapping(newer.clone());
        assert_eq!(r2.others, vec![newer.clone()]);
        let rotated = r2.with_wrapping(Wrapping {
            backend: "local".into(),
            master: MasterKeyRef {
                secret_path: "local".into(),
                secret_version: "2".into(),
            },
            wrapped: vec![5],
        });
        assert_eq!(rotated.master.secret_version, "2");
        assert_eq!(
            rotated.others,
            vec![newer.clone()],
            "rotation keeps other wrappings"
        );
        let done = rotated.only(newer.clone());
        assert_eq!(done.backends(), ["aws-kms"]);
        assert_eq!(done.wrapped, vec![8]);
        assert_eq!(done.created_at, r.created_at);
        assert!(!done.to_toml().unwrap().contains("other_wrapping"));
    }

    #[test]
    fn bad_other_wrappings_are_refused() {
        let good = record().with_wrapping(aws_wrapping()).to_toml().unwrap();
        for bad in [
            good.replace("wrapped_key = \"0909\"", "wrapped_key = \"\""),
            good.replace("backend = \"aws-kms\"", "backend = \"local\""),
            good.replace("secret_path = \"arn:k\"", "secret_path = \"\""),
            good.replace(
                "secret_version = \"1\"\nwrapped_key = \"0909\"",
                "secret_version = \"1\"\nwrapped_key = \"0909\"\nextra = 1",
            ),
            format!(
                "{good}\n[[other_wrapping]]\nbackend = \"aws-kms\"\nsecret_path = \"a\"\nsecret_version = \"1\"\nwrapped_key = \"01\"\n"
            ),
        ] {
            assert!(KeyRecord::parse(&bad, &alice()).is_err(), "{bad}");
        }
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
