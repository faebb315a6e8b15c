//! Names of keys at the service: a validated [`SecretPath`] and
//! [`SecretVersion`], together a [`KeyId`] that maps to one file.
//!
//! A secret path comes from the network and becomes part of a file path
//! under `keys_dir`, so it is parsed into a form that cannot leave that
//! directory or collide with the service's own files.

use std::fmt;
use std::path::PathBuf;

/// Longest secret path accepted: ample for names like `dropzone/rsa`, and
/// far below `PATH_MAX` once joined under `keys_dir`.
pub const MAX_PATH_LEN: usize = 200;
/// Longest component of a secret path (one directory name on disk; well
/// under `NAME_MAX` = 255).
pub const MAX_COMPONENT_LEN: usize = 64;
/// Most components (directory levels) in a secret path.
pub const MAX_COMPONENTS: usize = 8;
/// A version becomes part of a file name; nine digits keep it short and
/// within `u32`.
pub const MAX_VERSION_DIGITS: usize = 9;
/// Suffix of key files. Path components may not end with it, so a key
/// file and a directory of another secret path never share a name.
pub const KEY_FILE_SUFFIX: &str = ".p8";

/// A secret path was refused. The message says why (and never echoes more
/// than a short prefix of what was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSecret(String);

/// The name of an RSA key pair, like `dropzone/rsa`: 1 to
/// [`MAX_COMPONENTS`] components of `[A-Za-z0-9_.-]` joined by `/`, none
/// empty, none starting with `.` (so no `.` or `..`, and no clash with the
/// service's dot files), none ending with [`KEY_FILE_SUFFIX`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretPath(String);

impl SecretPath {
    /// Parses a secret path as sent by a client.
    pub fn parse(s: &str) -> Result<Self, InvalidSecret> {
        let bad = |why: &str| {
            InvalidSecret(format!(
                "invalid secret_path {:?}: {why}",
                s.chars().take(40).collect::<String>()
            ))
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > MAX_PATH_LEN {
            return Err(bad(&format!("longer than {MAX_PATH_LEN} bytes")));
        }
        let components: Vec<&str> = s.split('/').collect();
        if components.len() > MAX_COMPONENTS {
            return Err(bad(&format!("more than {MAX_COMPONENTS} components")));
        }
        for c in components {
            if c.is_empty() {
                return Err(bad("empty component (leading, trailing or double '/')"));
            }
            if c.len() > MAX_COMPONENT_LEN {
                return Err(bad(&format!(
                    "a component is longer than {MAX_COMPONENT_LEN} bytes"
                )));
            }
            if !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(bad("components may hold only A-Z a-z 0-9 _ . -"));
            }
            if c.starts_with('.') {
                return Err(bad("a component may not start with '.'"));
            }
            if c.ends_with(KEY_FILE_SUFFIX) {
                return Err(bad(&format!(
                    "a component may not end with {KEY_FILE_SUFFIX:?}"
                )));
            }
        }
        Ok(SecretPath(s.to_owned()))
    }

    /// The path as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One version of a key pair: a decimal number of 1 to
/// [`MAX_VERSION_DIGITS`] digits without leading zeros, sent as a JSON
/// string (`"1"`) or number (`1`). Leading zeros are refused rather than
/// ignored so that `"01"` and `"1"` cannot name one key under two spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretVersion(u32);

impl SecretVersion {
    /// Parses the string form.
    pub fn parse(s: &str) -> Result<Self, InvalidSecret> {
        let ok = (1..=MAX_VERSION_DIGITS).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        match s.parse::<u32>() {
            Ok(n) if ok => Ok(SecretVersion(n)),
            _ => Err(InvalidSecret(format!(
                "invalid secret_version {:?}: expected a decimal number of 1 to \
                 {MAX_VERSION_DIGITS} digits without leading zeros",
                s.chars().take(20).collect::<String>()
            ))),
        }
    }

    /// The number form (a JSON number).
    pub fn from_number(n: u64) -> Result<Self, InvalidSecret> {
        match u32::try_from(n) {
            Ok(v) if v <= 999_999_999 => Ok(SecretVersion(v)),
            _ => Err(InvalidSecret(format!(
                "invalid secret_version {n}: more than {MAX_VERSION_DIGITS} digits"
            ))),
        }
    }
}

impl fmt::Display for SecretVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One key pair version: the unit that the service creates, stores and uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId {
    /// The key pair.
    pub path: SecretPath,
    /// Its version.
    pub version: SecretVersion,
}

impl KeyId {
    /// The key file's directory relative to `keys_dir`: one directory level
    /// per path component.
    pub fn relative_dir(&self) -> PathBuf {
        self.path.as_str().split('/').collect()
    }

    /// The key file's name inside [`KeyId::relative_dir`]: `v<version>.p8`.
    pub fn file_name(&self) -> String {
        format!("v{}{KEY_FILE_SUFFIX}", self.version)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.path, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths_parse() {
        for p in [
            "dropzone/rsa",
            "a",
            "A-b_c.d/e",
            "x.p7",
            "a/b/c/d/e/f/g/h",
            "v1",
        ] {
            assert_eq!(SecretPath::parse(p).unwrap().as_str(), p);
        }
        let long = "a".repeat(MAX_COMPONENT_LEN);
        assert!(SecretPath::parse(&long).is_ok());
    }

    #[test]
    fn paths_that_could_escape_or_collide_are_refused() {
        let too_long_component = "a".repeat(MAX_COMPONENT_LEN + 1);
        let too_long_path = ["abcdefghij"; 20].join("/") + "/x";
        for p in [
            "",
            "/",
            "/etc",
            "a/",
            "a//b",
            "..",
            "../x",
            "a/../b",
            ".",
            "./a",
            ".passphrase",
            "a/.tmp-x",
            "a\\b",
            "a b",
            "a\0b",
            "ä",
            "a/v1.p8",
            "a/b/c/d/e/f/g/h/i",
            too_long_component.as_str(),
            too_long_path.as_str(),
        ] {
            assert!(SecretPath::parse(p).is_err(), "{p:?} was accepted");
        }
    }

    #[test]
    fn versions_are_canonical_decimal_numbers() {
        assert_eq!(SecretVersion::parse("1").unwrap().to_string(), "1");
        assert_eq!(SecretVersion::parse("0").unwrap().to_string(), "0");
        assert_eq!(
            SecretVersion::parse("999999999").unwrap().to_string(),
            "999999999"
        );
        for v in ["", "01", "-1", "+1", "1.0", "1e3", " 1", "x", "1234567890"] {
            assert!(SecretVersion::parse(v).is_err(), "{v:?} was accepted");
        }
        assert_eq!(
            SecretVersion::from_number(7).unwrap(),
            SecretVersion::parse("7").unwrap()
        );
        assert!(SecretVersion::from_number(1_000_000_000).is_err());
    }

    #[test]
    fn key_files_live_one_directory_per_component() {
        let id = KeyId {
            path: SecretPath::parse("dropzone/rsa").unwrap(),
            version: SecretVersion::parse("12").unwrap(),
        };
        assert_eq!(id.relative_dir(), PathBuf::from("dropzone/rsa"));
        assert_eq!(id.file_name(), "v12.p8");
        assert_eq!(id.to_string(), "dropzone/rsa v12");
    }
}
