//! The validated name of a Dropzone user.
//!
//! A user name becomes a directory name (`data_dir/NAME`) and a file name
//! (`keks_dir/NAME.key`), so it is checked once, here, and carried as a type.

use std::fmt;

/// Longest accepted name; Linux's `useradd` caps names at 32 bytes.
pub const MAX_LEN: usize = 32;

/// A user name: 1 to 32 characters from `[A-Za-z0-9_.-]`, not starting with
/// `.` or `-` (so it is never a hidden file, an option, `.` or `..`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

/// Why a string is not a valid user name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid user name {0:?}: use 1-32 characters from A-Z a-z 0-9 _ . -, not starting with . or -"
)]
pub struct InvalidUserName(pub String);

impl UserName {
    /// Parses and validates `name`.
    pub fn parse(name: &str) -> Result<Self, InvalidUserName> {
        let valid = !name.is_empty()
            && name.len() <= MAX_LEN
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(UserName(name.to_owned()))
        } else {
            Err(InvalidUserName(name.chars().take(64).collect()))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["alice", "bob_2", "svc-backup", "a.b", "A"] {
            assert_eq!(UserName::parse(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_names_that_could_escape_or_confuse() {
        for n in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "a\0b",
            "é",
            "a b",
            &"x".repeat(33),
        ] {
            assert!(UserName::parse(n).is_err(), "{n:?} accepted");
        }
    }
}
