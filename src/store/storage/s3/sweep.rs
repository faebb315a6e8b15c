//! Aborting the multipart uploads a stopped node left behind.

use std::io;
use std::time::Duration;

use super::{data_prefix, now};
use crate::aws::s3::S3Client;

/// Aborts the incomplete multipart uploads under `PREFIX/data/` begun more
/// than `older_than` ago, and returns how many: uploads of a node killed
/// mid-upload (never visible: an upload completes only at close) that
/// would otherwise be kept, and billed, by the store. Uploads in progress
/// on any node are younger than the threshold if it is longer than the
/// longest upload (an older one is aborted and its close fails). Errors on
/// single uploads are logged and skipped: the next sweep retries them.
pub fn sweep_multipart(client: &S3Client, prefix: &str, older_than: Duration) -> io::Result<u64> {
    let cutoff = now().saturating_sub(i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX));
    let mut aborted = 0;
    for upload in client.list_multipart_uploads(&data_prefix(prefix))? {
        if upload.initiated > cutoff {
            continue;
        }
        match client.abort_multipart(&upload.key, &upload.upload_id) {
            Ok(()) => aborted += 1,
            Err(e) => {
                tracing::warn!(key = %upload.key, error = %e, "could not abort an abandoned S3 upload")
            }
        }
    }
    Ok(aborted)
}
