//! What the user is told on the channel's stderr.
//!
//! OpenSSH's client shows only a status reply's generic text ("Failure",
//! "Permission denied"), so a failure whose cause the user must know is
//! told on stderr as well: a file that failed its integrity check, an
//! upload that was rejected, a full disk, the size limit, and a change
//! refused for containment. [`Notice::of`] is the one map from a store
//! error to its notice: a path request tells it at once
//! ([`Session::notice_for`]); a file handle's worker tells each kind once
//! per handle (`super::worker`).

use super::Session;
use super::status::SftpError;
use crate::jail;
use crate::store::StoreError;

/// What the user must be told on stderr about a failed store operation.
pub(super) enum Notice {
    /// The file failed an integrity check.
    Integrity,
    /// The upload was rejected at close, for this reason.
    Rejected(String),
    /// The server's disk (or the user's quota) is full.
    NoSpace,
    /// A write or extension was refused by the size limit or the quota,
    /// named here.
    TooLarge(String),
}

impl Notice {
    /// The notice that `e` calls for, if any.
    pub(super) fn of(e: &StoreError) -> Option<Notice> {
        match e {
            StoreError::Integrity(_) => Some(Notice::Integrity),
            StoreError::Rejected { reason } => Some(Notice::Rejected(reason.clone())),
            StoreError::TooLarge { .. } | StoreError::Quota(_) => {
                Some(Notice::TooLarge(e.to_string()))
            }
            e if is_no_space(e) => Some(Notice::NoSpace),
            _ => None,
        }
    }

    /// The line that tells the user about `path`.
    fn line(&self, path: &str) -> String {
        match self {
            Notice::Integrity => format!(
                "dropzone: {path}: the file failed its integrity check (it was modified or damaged on the server)\n"
            ),
            Notice::Rejected(reason) => format!("dropzone: {path}: upload rejected: {reason}\n"),
            Notice::NoSpace => format!(
                "dropzone: {path}: no space left on the server; the write failed (an upload that does not complete keeps the previous version)\n"
            ),
            Notice::TooLarge(why) => format!("dropzone: {path}: {why}\n"),
        }
    }
}

/// Whether `e` means the disk or the quota is full.
fn is_no_space(e: &StoreError) -> bool {
    matches!(e, StoreError::Io(io)
        if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}

impl Session {
    /// Tells the user on stderr what `notice` says about `path`; an
    /// integrity failure is also counted in the metrics.
    pub(super) fn tell(&self, path: &str, notice: &Notice) {
        if matches!(notice, Notice::Integrity) {
            self.events.integrity_failure();
        }
        let _ = self.notices.try_send(notice.line(path));
    }

    /// Sends the stderr notice that `e`, an error about `path`, calls for.
    pub(super) fn notice_for(&self, path: &str, e: &StoreError) {
        if let Some(notice) = Notice::of(e) {
            self.tell(path, &notice);
        }
    }

    /// Tells the user on stderr why a change was refused for containment
    /// (a symlink that would lead outside the root, a change to the root
    /// itself) or by the user's permissions: the status carries only
    /// OpenSSH's "Permission denied".
    pub(super) fn refusal_notice(&self, path: &str, e: &SftpError) {
        let why = match e {
            SftpError::Jail(j @ jail::JailError::DotDotAfterName) => j.to_string(),
            // Which permission was missing: the status says only
            // "Permission denied".
            SftpError::Denied(denied) => denied.to_string(),
            SftpError::Store(StoreError::Io(io)) => {
                match io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<crate::store::storage::Refused>())
                {
                    Some(refused) => refused.to_string(),
                    None => return,
                }
            }
            _ => return,
        };
        let _ = self.notices.try_send(format!("dropzone: {path}: {why}\n"));
    }
}
