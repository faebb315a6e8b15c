//! The one place that turns errors into SFTP status replies.
//!
//! The message sent to the client is OpenSSH's sftp-server's text for the
//! status code ("No such file", "Failure", ...), so that clients which
//! match on it (paramiko's tests do) see what they see from OpenSSH. What
//! went wrong in detail ([`describe`]: never a host path or key material)
//! goes to the server log and the audit log; the stderr notices of the
//! session tell the user about integrity failures, rejected uploads and a
//! full disk.

use std::io;

use russh_sftp::protocol::StatusCode;

use crate::jail::JailError;
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

/// The status code and the message the client is sent for `err`: OpenSSH's
/// text for the code (see [`openssh_message`]); [`describe`] has the detail.
pub fn to_status(err: &SftpError) -> (StatusCode, String) {
    let (code, _) = describe(err);
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
        SftpError::Store(StoreError::Integrity(_)) => (
            C::Failure,
            "the file failed its integrity check (it was modified or damaged on the server)".into(),
        ),
        SftpError::Store(StoreError::Io(e)) => io_status(e),
        SftpError::Store(StoreError::InvalidArgument(what)) => {
            (C::Failure, format!("invalid argument: {what}"))
        }
        SftpError::Store(StoreError::WrongAccess(what)) => (
            C::PermissionDenied,
            format!("the file was not opened for {what}"),
        ),
        // The scanner's own words (its first stderr line) reach the client.
        SftpError::Store(StoreError::Rejected { reason }) => {
            (C::PermissionDenied, format!("upload rejected: {reason}"))
        }
        SftpError::Jail(e @ JailError::DotDotAfterName) => (C::PermissionDenied, e.to_string()),
        SftpError::Jail(e) => (C::Failure, e.to_string()),
        SftpError::Store(StoreError::Internal(_)) => (C::Failure, "internal server error".into()),
        // The limit, in human terms, is what the client needs to know.
        SftpError::Store(e @ StoreError::TooLarge { .. }) => (C::Failure, e.to_string()),
        SftpError::Store(StoreError::Interrupted) => (
            C::Failure,
            "operation interrupted: the session is ending".into(),
        ),
        SftpError::BadHandle => (C::Failure, "invalid handle".into()),
        SftpError::BadMessage => (C::BadMessage, "malformed request".into()),
        SftpError::Unsupported(what) => {
            (C::OpUnsupported, format!("operation not supported: {what}"))
        }
        SftpError::TooManyHandles(_) => (C::Failure, err.to_string()),
        SftpError::Internal => (C::Failure, "internal server error".into()),
    }
}

/// The name of a status code in events and metric labels.
pub fn status_name(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Ok => "ok",
        StatusCode::Eof => "eof",
        StatusCode::NoSuchFile => "no_such_file",
        StatusCode::PermissionDenied => "permission_denied",
        StatusCode::Failure => "failure",
        StatusCode::BadMessage => "bad_message",
        StatusCode::NoConnection => "no_connection",
        StatusCode::ConnectionLost => "connection_lost",
        StatusCode::OpUnsupported => "op_unsupported",
    }
}

fn io_status(e: &io::Error) -> (StatusCode, String) {
    use StatusCode as C;
    // The store's own refusals (a symlink that would lead outside, a
    // change to the root) say why; their text names no host path.
    if let Some(refused) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<crate::store::storage::Refused>())
    {
        return (C::PermissionDenied, refused.to_string());
    }
    if let Some(code) = e.raw_os_error() {
        let mapped = match code {
            libc::ENOENT => Some((C::NoSuchFile, "no such file or directory")),
            libc::EACCES | libc::EPERM => Some((C::PermissionDenied, "permission denied")),
            libc::EEXIST => Some((C::Failure, "file already exists")),
            libc::ENOTEMPTY => Some((C::Failure, "directory not empty")),
            libc::EISDIR => Some((C::Failure, "is a directory")),
            libc::ENOTDIR => Some((C::NoSuchFile, "not a directory")),
            libc::ENOSPC => Some((C::Failure, "no space left on device")),
            libc::EDQUOT => Some((C::Failure, "disk quota exceeded")),
            libc::ELOOP => Some((C::Failure, "too many levels of symbolic links")),
            libc::EXDEV => Some((C::PermissionDenied, "path leaves your directory")),
            libc::ENAMETOOLONG => Some((C::Failure, "file name too long")),
            libc::EROFS => Some((C::PermissionDenied, "read-only file system")),
            libc::EINVAL => Some((C::Failure, "invalid argument")),
            _ => None,
        };
        if let Some((c, m)) = mapped {
            return (c, m.into());
        }
    }
    match e.kind() {
        io::ErrorKind::NotFound => (C::NoSuchFile, "no such file or directory".into()),
        io::ErrorKind::PermissionDenied => (C::PermissionDenied, "permission denied".into()),
        io::ErrorKind::AlreadyExists => (C::Failure, "file already exists".into()),
        io::ErrorKind::UnexpectedEof => (C::Failure, "unexpected end of file".into()),
        _ => (C::Failure, "operation failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::FormatError;

    #[test]
    fn integrity_failures_say_so() {
        let e = SftpError::Store(StoreError::Integrity(FormatError::Integrity("x")));
        let (code, msg) = describe(&e);
        assert_eq!(code, StatusCode::Failure);
        assert!(msg.contains("integrity"));
    }

    #[test]
    fn rejections_carry_the_scanners_reason() {
        let e = SftpError::Store(StoreError::Rejected {
            reason: "EICAR test signature found".into(),
        });
        let (code, msg) = describe(&e);
        assert_eq!(code, StatusCode::PermissionDenied);
        assert_eq!(msg, "upload rejected: EICAR test signature found");
    }

    #[test]
    fn the_size_limit_is_named_in_human_terms() {
        let e = SftpError::Store(StoreError::TooLarge { limit: 64 << 20 });
        let (code, msg) = describe(&e);
        assert_eq!(code, StatusCode::Failure);
        assert_eq!(msg, "the file would exceed the server's 64 MiB size limit");
    }

    #[test]
    fn errno_mapping() {
        let s = |n| describe(&SftpError::from(io::Error::from_raw_os_error(n)));
        assert_eq!(s(libc::ENOENT).0, StatusCode::NoSuchFile);
        assert_eq!(s(libc::EACCES).0, StatusCode::PermissionDenied);
        assert_eq!(s(libc::ENOSPC).1, "no space left on device");
    }

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
                SftpError::Unsupported("x".into()),
                StatusCode::OpUnsupported,
                "Operation unsupported",
            ),
        ];
        for (err, code, msg) in cases {
            assert_eq!(to_status(&err), (code, msg.to_owned()), "{err}");
        }
        assert_eq!(openssh_message(StatusCode::Eof), "End of file");
        assert_eq!(openssh_message(StatusCode::Ok), "Success");
    }
}
