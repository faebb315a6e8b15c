//! The optional bearer token: `Authorization: Bearer <token>`.
//!
//! Only a SHA-256 digest of the token is kept, and a presented token is
//! compared digest to digest in constant time, so neither the comparison's
//! timing nor its length check tells anything about the token.

use std::fmt;
use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::atomic_file;

/// Longest token accepted (a file holding more is a mistake).
const MAX_LEN: usize = 4096;
/// Tokens shorter than this are accepted with a warning: 16 characters of
/// a random token carry at least 64 bits.
pub const SHORT_LEN: usize = 16;

/// A token file that cannot be used. The message never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
    /// The file is empty or blank.
    #[error("the token is empty")]
    Empty,
    /// The token is not something a client can send in a header.
    #[error("the token must be printable ASCII without spaces")]
    NotPrintable,
}

/// The token clients must present.
pub struct Token {
    digest: [u8; 32],
    short: bool,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token given as a value; surrounding whitespace (a final newline)
    /// is removed.
    pub fn from_value(value: &[u8]) -> Result<Token, TokenError> {
        let value = value.trim_ascii();
        if value.is_empty() {
            return Err(TokenError::Empty);
        }
        if !value.iter().all(u8::is_ascii_graphic) {
            return Err(TokenError::NotPrintable);
        }
        Ok(Token {
            digest: Sha256::digest(value).into(),
            short: value.len() < SHORT_LEN,
        })
    }

    /// Reads the token from a file.
    pub fn read_file(path: &Path) -> Result<Token, TokenError> {
        let bytes = Zeroizing::new(atomic_file::read_small(path, MAX_LEN as u64)?);
        Token::from_value(&bytes)
    }

    /// Whether it is shorter than [`SHORT_LEN`] characters.
    pub fn is_short(&self) -> bool {
        self.short
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn authorizes(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let Some((scheme, presented)) = header.split_at_checked(7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let presented: [u8; 32] = Sha256::digest(presented.trim_ascii()).into();
        bool::from(presented.ct_eq(&self.digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let t = Token::from_value(b"  s3cret-token-0123456789\n").unwrap();
        assert!(!t.is_short());
        assert!(t.authorizes(Some(b"Bearer s3cret-token-0123456789")));
        assert!(t.authorizes(Some(b"bearer s3cret-token-0123456789")));
        assert!(!t.authorizes(None));
        assert!(!t.authorizes(Some(b"")));
        assert!(!t.authorizes(Some(b"Bearer")));
        assert!(!t.authorizes(Some(b"Bearer ")));
        assert!(!t.authorizes(Some(b"Bearer s3cret-token-012345678")));
        assert!(!t.authorizes(Some(b"Bearer s3cret-token-01234567890")));
        assert!(!t.authorizes(Some(b"Basic s3cret-token-0123456789")));
        assert!(!t.authorizes(Some(b"s3cret-token-0123456789")));
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn bad_tokens_are_refused() {
        assert!(matches!(Token::from_value(b" \n"), Err(TokenError::Empty)));
        assert!(matches!(
            Token::from_value(b"a b"),
            Err(TokenError::NotPrintable)
        ));
        assert!(Token::from_value(b"short").unwrap().is_short());
    }
}
