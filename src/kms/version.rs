//! The one rule for a master key version: 1 to 9 decimal digits.
//!
//! A version becomes part of a file name (`master-v{V}.pem`) and of key
//! files, and the key service reads it as a number: nine digits keep it
//! short, safe in a path and within `u32`. The configuration, the command
//! line (`--secret-version`) and both backends check it here.

use std::fmt;
use std::str::FromStr;

use super::KmsError;

/// Most digits a version may have.
const MAX_DIGITS: usize = 9;

/// A master key version that passed the rule: 1 to 9 decimal digits, kept
/// as written (`"01"` stays `"01"`: key files and key services already
/// name versions by their text).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretVersion(String);

/// A version that is not 1 to 9 decimal digits. The caller names the
/// setting or option it came from; this says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected 1-9 decimal digits")]
pub struct InvalidSecretVersion;

impl SecretVersion {
    /// Checks `version` against the rule.
    pub fn parse(version: &str) -> Result<Self, InvalidSecretVersion> {
        if is_valid(version) {
            Ok(SecretVersion(version.to_owned()))
        } else {
            Err(InvalidSecretVersion)
        }
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The version as written, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for SecretVersion {
    type Err = InvalidSecretVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SecretVersion::parse(s)
    }
}

impl fmt::Display for SecretVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The backends' check of a version they are handed as text (from a key
/// file or a caller): [`KmsError::InvalidVersion`] naming at most 32
/// characters of it.
pub(crate) fn check(version: &str) -> Result<(), KmsError> {
    if is_valid(version) {
        Ok(())
    } else {
        Err(KmsError::InvalidVersion(version.chars().take(32).collect()))
    }
}

fn is_valid(version: &str) -> bool {
    (1..=MAX_DIGITS).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_nine_digits_pass_as_written() {
        for v in ["1", "01", "0", "123456789"] {
            assert_eq!(SecretVersion::parse(v).unwrap().as_str(), v);
            assert_eq!(v.parse::<SecretVersion>().unwrap().to_string(), v);
            assert!(check(v).is_ok(), "{v}");
        }
    }

    #[test]
    fn anything_else_fails_with_what_was_expected() {
        for v in ["", "v1", "-1", "1.5", " 1", "1 ", "1234567890", "١"] {
            assert_eq!(SecretVersion::parse(v), Err(InvalidSecretVersion), "{v:?}");
            assert!(
                matches!(check(v), Err(KmsError::InvalidVersion(_))),
                "{v:?}"
            );
        }
        assert_eq!(
            InvalidSecretVersion.to_string(),
            "expected 1-9 decimal digits"
        );
        let long = "x".repeat(100);
        let Err(KmsError::InvalidVersion(shown)) = check(&long) else {
            panic!("accepted");
        };
        assert_eq!(shown.len(), 32);
    }
}
