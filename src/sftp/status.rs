//! The one place that turns errors into SFTP status replies.
//!
//! The message sent to the client is OpenSSH's sftp-server's text for the
//! status code ("No such file", "Failure", ...), so that clients which
//! match on it (paramiko's tests do) see what they see from OpenSSH (a
//! quota refusal, which has no code of its own, says "quota exceeded"). What
//! went wrong in detail ([`describe`]: store and jail errors in the words
//! of [`crate::outcome`], which scp shares; never a host path or key
//! material) goes to the server log and the audit log; the stderr notices
//! of the session tell the user about integrity failures, rejected uploads
//! and a full disk.

use std::io;

use russh_sftp::protocol::StatusCode;

use crate::access::Denied;
use crate::jail::JailError;
use crate::outcome::{self, Failure, OpError};
use crate::store::StoreError;

/// An error on its way to becoming an SFTP status.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    /// From the encrypted store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A client path refused by the jail.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// Refused by the user's permissions ([`crate::access`]).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The handle string names no open handle of this session.
    #[error("invalid handle")]
    BadHandle,
    /// A request that could not be parsed.
    #[error("malformed request")]
    BadMessage,
    /// A request or extension Dropzone does not implement.
    #[error("operation not supported: {0}")]
    Unsupported(String),
    /// A handle refused: the cap of this connection, this user or the
    /// server is reached (`super::budget`).
    #[error("too many open files for {0}")]
    TooManyHandles(super::budget::Scope),
    /// A blocking task died (a bug); reported as a generic failure.
    #[error("internal error")]
    Internal,
}

impl From<super::wire::Malformed> for SftpError {
    fn from(_: super::wire::Malformed) -> Self {
        SftpError::BadMessage
    }
}

impl From<io::Error> for SftpError {
    fn from(e: io::Error) -> Self {
        SftpError::Store(StoreError::Io(e))
    }
}

impl From<OpError> for SftpError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Store(e) => SftpError::Store(e),
            OpError::Jail(e) => SftpError::Jail(e),
            OpError::Denied(e) => SftpError::Denied(e),
            OpError::Internal => SftpError::Internal,
        }
    }
}

impl Failure for SftpError {
    fn describe(&self) -> (StatusCode, String) {
        describe(self)
    }

    fn store_error(&self) -> Option<&StoreError> {
        match self {
            SftpError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// The status code and the message the client is sent for `err`: OpenSSH's
/// text for the code (see [`openssh_message`]), but for a quota refusal and
/// what the storage cannot do; [`describe`] has the detail.
pub fn to_status(err: &SftpError) -> (StatusCode, String) {
    let (code, detail) = describe(err);
    // A quota refusal has no status code of its own: its text is the one
    // thing that tells it from any other failure ("quota exceeded: ...",
    // which paramiko raises and OpenSSH logs with -v).
    if matches!(err, SftpError::Store(StoreError::Quota(_))) {
        return (code, detail);
    }
    // What the storage cannot do (an object store: links, renaming a
    // non-empty directory, rewriting below a file's end) keeps its reason
    // too: "Operation unsupported" alone reads as a server fault. Those
    // messages are written for clients and name no host path.
    if code == StatusCode::OpUnsupported && matches!(err, SftpError::Store(_)) {
        return (code, detail);
    }
    (code, openssh_message(code).to_owned())
}

/// The text OpenSSH's sftp-server sends with each status code
/// (`status_to_message` in its sftp-server.c).
pub fn openssh_message(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Ok => "Success",
        StatusCode::Eof => "End of file",
        StatusCode::NoSuchFile => "No such file",
        StatusCode::PermissionDenied => "Permission denied",
        StatusCode::Failure => "Failure",
        StatusCode::BadMessage => "Bad message",
        StatusCode::NoConnection => "No connection",
        StatusCode::ConnectionLost => "Connection lost",
        StatusCode::OpUnsupported => "Operation unsupported",
    }
}

/// The status code for `err` and what went wrong in words, for the server
/// log and the audit log (never a host path or key material).
pub fn describe(err: &SftpError) -> (StatusCode, String) {
    use StatusCode as C;
    match err {
        SftpError::Store(e) => outcome::describe_store(e),
        SftpError::Jail(e) => outcome::describe_jail(e),
        SftpError::Denied(e) => outcome::describe_denied(e),
        SftpError::BadHandle => (C::Failure, "invalid handle".into()),
        SftpError::BadMessage => (C::BadMessage, "malformed request".into()),
        SftpError::Unsupported(what) => {
            (C::OpUnsupported, format!("operation not supported: {what}"))
        }
        SftpError::TooManyHandles(_) => (C::Failure, err.to_string()),
        SftpError::Internal => OpError::Internal.describe(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::FormatError;

    /// The client gets OpenSSH's text for the code, whatever the detail.
    #[test]
    fn clients_get_openssh_messages() {
        let cases = [
            (
                SftpError::from(io::Error::from_raw_os_error(libc::ENOENT)),
                StatusCode::NoSuchFile,
                "No such file",
            ),
            (
                SftpError::from(io::Error::from_raw_os_error(libc::EACCES)),
                StatusCode::PermissionDenied,
                "Permission denied",
            ),
            (
                SftpError::from(io::Error::from_raw_os_error(libc::EEXIST)),
                StatusCode::Failure,
                "Failure",
            ),
            (
                SftpError::Store(StoreError::Integrity(FormatError::Integrity("x"))),
                StatusCode::Failure,
                "Failure",
            ),
            (
                SftpError::Store(StoreError::Rejected {
                    reason: "EICAR".into(),
                }),
                StatusCode::PermissionDenied,
                "Permission denied",
            ),
            (SftpError::BadMessage, StatusCode::BadMessage, "Bad message"),
            (
                SftpError::Denied(crate::access::Denied {
                    missing: crate::access::Permission::Download,
                }),
                StatusCode::PermissionDenied,
                "Permission denied",
            ),
            (
                SftpError::Unsupported("x".into()),
                StatusCode::OpUnsupported,
                "Operation unsupported",
            ),
        ];
        for (err, code, msg) in cases {
            assert_eq!(to_status(&err), (code, msg.to_owned()), "{err}");
        }
        // What the storage cannot do keeps its reason.
        let why = "symbolic links are not supported on S3 storage";
        assert_eq!(
            to_status(&SftpError::from(crate::store::storage::unsupported(why))),
            (StatusCode::OpUnsupported, why.to_owned())
        );
        assert_eq!(openssh_message(StatusCode::Eof), "End of file");
        assert_eq!(openssh_message(StatusCode::Ok), "Success");
    }
}
