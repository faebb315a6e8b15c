//! What a failed file operation tells the client and the audit log, shared
//! by [`crate::sftp`] and [`crate::scp`], and the blocking threads their
//! store work runs on.
//!
//! A store or jail error is described in one place ([`describe_store`],
//! [`describe_jail`]): a status code and what went wrong in words, never a
//! host path or key material. The codes are SFTP's: SFTP sends them, and
//! events name every failure by its SFTP status name ([`status_name`]) so
//! that the audit lines of both protocols read alike; scp, which has no
//! status codes, shows its client the words.

use std::fmt;
use std::io;

use russh_sftp::protocol::StatusCode;

use crate::access::Denied;
use crate::jail::JailError;
use crate::observe::Outcome;
use crate::store::StoreError;

/// A file operation that failed below the protocol: refused by the jail,
/// failed in the store, or lost with the blocking task it ran on.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// From the encrypted store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A client path refused by the jail.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// Refused by the user's permissions ([`crate::access`]).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// A blocking task died (a bug); reported as a generic failure.
    #[error("internal error")]
    Internal,
}

impl From<io::Error> for OpError {
    fn from(e: io::Error) -> Self {
        OpError::Store(StoreError::Io(e))
    }
}

/// An error that can be described: [`OpError`], or a protocol's own error
/// that carries the same store and jail errors (`sftp::status::SftpError`).
pub trait Failure: fmt::Display {
    /// The status code and what went wrong in words, for the logs, the
    /// audit log and (scp) the client.
    fn describe(&self) -> (StatusCode, String);
    /// The store error underneath, if that is what failed.
    fn store_error(&self) -> Option<&StoreError>;
}

impl Failure for OpError {
    fn describe(&self) -> (StatusCode, String) {
        match self {
            OpError::Store(e) => describe_store(e),
            OpError::Jail(e) => describe_jail(e),
            OpError::Denied(e) => describe_denied(e),
            OpError::Internal => (StatusCode::Failure, "internal server error".into()),
        }
    }

    fn store_error(&self) -> Option<&StoreError> {
        match self {
            OpError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// The status code for a store error and what went wrong in words.
pub fn describe_store(err: &StoreError) -> (StatusCode, String) {
    use StatusCode as C;
    match err {
        StoreError::Integrity(_) => (
            C::Failure,
            "the file failed its integrity check (it was modified or damaged on the server)".into(),
        ),
        StoreError::Io(e) => io_status(e),
        StoreError::InvalidArgument(what) => (C::Failure, format!("invalid argument: {what}")),
        StoreError::WrongAccess(what) => (
            C::PermissionDenied,
            format!("the file was not opened for {what}"),
        ),
        // The scanner's own words (its first stderr line) reach the client.
        StoreError::Rejected { reason } => {
            (C::PermissionDenied, format!("upload rejected: {reason}"))
        }
        StoreError::Internal(_) => (C::Failure, "internal server error".into()),
        // The limit, in human terms, is what the client needs to know.
        e @ StoreError::TooLarge { .. } => (C::Failure, e.to_string()),
        // "quota exceeded" and the limit: OpenSSH shows the status text.
        e @ StoreError::Quota(_) => (C::Failure, e.to_string()),
        StoreError::Interrupted => (
            C::Failure,
            "operation interrupted: the session is ending".into(),
        ),
    }
}

/// The status code for an operation the user's permissions refuse, and
/// the permission that was missing.
pub fn describe_denied(err: &Denied) -> (StatusCode, String) {
    (StatusCode::PermissionDenied, err.to_string())
}

/// The status code for a client path the jail refused, and its reason.
pub fn describe_jail(err: &JailError) -> (StatusCode, String) {
    match err {
        e @ JailError::DotDotAfterName => (StatusCode::PermissionDenied, e.to_string()),
        e => (StatusCode::Failure, e.to_string()),
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
    // What this storage cannot do (an object store: links, rewriting the
    // middle of a file) says so and why.
    if let Some(unsupported) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<crate::store::storage::Unsupported>())
    {
        return (C::OpUnsupported, unsupported.to_string());
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

/// Whether `err` is a failed integrity check (the file was modified or
/// damaged on the server): logged as a warning and counted.
pub fn is_integrity(err: &impl Failure) -> bool {
    matches!(err.store_error(), Some(StoreError::Integrity(_)))
}

/// How an operation's result is reported in events: ok, or the status
/// name and the detail.
pub fn outcome_of<T, E: Failure>(result: &Result<T, E>) -> Outcome {
    match result {
        Ok(_) => Ok(()),
        Err(e) => error_outcome(e),
    }
}

/// How a failure is reported in events: the status name and the detail
/// (not a client's generic text: the audit log is where an operator learns
/// what went wrong).
pub fn error_outcome(err: &impl Failure) -> Outcome {
    let (code, msg) = err.describe();
    Err((status_name(code), msg))
}

/// Runs blocking store work off the async threads; a task that dies is an
/// [`OpError::Internal`].
pub async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<OpError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| E::from(OpError::Internal))?
}

/// The result of store work spawned directly (to overlap it with I/O).
pub fn joined<T>(r: Result<Result<T, StoreError>, tokio::task::JoinError>) -> Result<T, OpError> {
    r.map_err(|_| OpError::Internal)?.map_err(OpError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::FormatError;

    #[test]
    fn integrity_failures_say_so() {
        let e = OpError::Store(StoreError::Integrity(FormatError::Integrity("x")));
        let (code, msg) = e.describe();
        assert_eq!(code, StatusCode::Failure);
        assert!(msg.contains("integrity"));
        assert!(is_integrity(&e));
        assert!(!is_integrity(&OpError::Internal));
    }

    #[test]
    fn rejections_carry_the_scanners_reason() {
        let e = StoreError::Rejected {
            reason: "EICAR test signature found".into(),
        };
        let (code, msg) = describe_store(&e);
        assert_eq!(code, StatusCode::PermissionDenied);
        assert_eq!(msg, "upload rejected: EICAR test signature found");
    }

    #[test]
    fn the_size_limit_is_named_in_human_terms() {
        let e = StoreError::TooLarge { limit: 64 << 20 };
        let (code, msg) = describe_store(&e);
        assert_eq!(code, StatusCode::Failure);
        assert_eq!(msg, "the file would exceed the server's 64 MiB size limit");
    }

    #[test]
    fn what_the_storage_cannot_do_is_unsupported_with_its_reason() {
        let e = StoreError::Io(crate::store::storage::unsupported(
            "symbolic links are not supported on S3 storage",
        ));
        assert_eq!(
            describe_store(&e),
            (
                StatusCode::OpUnsupported,
                "symbolic links are not supported on S3 storage".to_owned()
            )
        );
        // A plain EOPNOTSUPP from the OS carries no message of ours.
        let e = OpError::from(io::Error::from(io::ErrorKind::Unsupported)).describe();
        assert_eq!(e.0, StatusCode::Failure);
    }

    #[test]
    fn errno_mapping() {
        let s = |n| OpError::from(io::Error::from_raw_os_error(n)).describe();
        assert_eq!(s(libc::ENOENT).0, StatusCode::NoSuchFile);
        assert_eq!(s(libc::EACCES).0, StatusCode::PermissionDenied);
        assert_eq!(s(libc::ENOSPC).1, "no space left on device");
    }

    #[test]
    fn events_name_the_status_and_the_detail() {
        let e = OpError::from(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            outcome_of(&Err::<(), _>(e)),
            Err(("no_such_file", "no such file or directory".to_owned()))
        );
        assert_eq!(outcome_of(&Ok::<_, OpError>(1)), Ok(()));
        let e = OpError::Jail(JailError::DotDotAfterName);
        assert_eq!(error_outcome(&e).unwrap_err().0, "permission_denied");
    }
}
