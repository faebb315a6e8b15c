//! What talking to AWS (or an AWS-compatible service) takes, shared by the
//! key service backend [`crate::kms`] (AWS KMS) and the object store
//! backend of [`crate::store`] (S3): the credential chain
//! ([`credentials`]), Signature Version 4 (module `sigv4`), the blocking
//! HTTP client on rustls with the `ring` provider (module `http`), and the
//! S3 client ([`s3`]).
//!
//! This module knows nothing of keys, users or files: its errors are
//! [`AwsError`] (and [`s3::S3Error`]), which the layers above turn into
//! theirs.

pub mod credentials;
pub(crate) mod http;
pub mod s3;
pub(crate) mod sigv4;

/// Why the credentials or the HTTP client could not be set up or used.
///
/// Messages say what is wrong and never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    /// The settings cannot be used (no credentials, an unreadable file, a
    /// bad CA file); retrying will not help.
    #[error("{0}")]
    Misconfigured(String),
    /// The service answered but refused (STS rejected the web identity
    /// token or the role).
    #[error("{0}")]
    Refused(String),
    /// A service needed for the credentials (STS, a token file) is not
    /// available now; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
}
