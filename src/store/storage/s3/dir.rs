//! Listing a directory of [`super::S3Storage`]: `ListObjectsV2` with
//! delimiter `/`, one page at a time.

use std::collections::VecDeque;
use std::io;

use super::{DEFAULT_DIR_MODE, dir_meta_of, file_meta};
use crate::aws::s3::S3Client;
use crate::store::storage::{DirReader, Meta, RESERVED_PREFIX};

/// Keys asked for per page (the most S3 returns).
const PAGE: u32 = 1000;

/// An open S3 directory: holds at most one page of entries.
pub(super) struct S3DirReader {
    client: S3Client,
    /// The directory's key prefix (ends in `/`).
    prefix: String,
    /// Where the next page starts (`None` before the first).
    token: Option<String>,
    /// Entries of the current page not yet handed out.
    pending: VecDeque<(String, Meta)>,
    /// Set once the last page was read.
    done: bool,
}

impl S3DirReader {
    pub(super) fn new(client: S3Client, prefix: String) -> Self {
        S3DirReader {
            client,
            prefix,
            token: None,
            pending: VecDeque::new(),
            done: false,
        }
    }

    /// Reads the next page into `pending`.
    fn next_page(&mut self, n: usize) -> io::Result<()> {
        let max = u32::try_from(n).unwrap_or(PAGE).clamp(1, PAGE);
        let page = self
            .client
            .list(&self.prefix, Some("/"), self.token.as_deref(), max)
            .inspect_err(|_| self.done = true)?;
        for object in &page.objects {
            // The directory's own marker, a marker of a subdirectory (also
            // listed as a common prefix), and the store's reserved names
            // are left out.
            let Some(name) = object.key.strip_prefix(&self.prefix) else {
                continue;
            };
            if name.is_empty() || name.contains('/') || name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            self.pending.push_back((name.to_owned(), file_meta(object)));
        }
        for prefix in &page.common_prefixes {
            let Some(name) = prefix.strip_prefix(&self.prefix) else {
                continue;
            };
            let name = name.trim_end_matches('/');
            if name.is_empty() || name.contains('/') || name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            self.pending
                .push_back((name.to_owned(), dir_meta_of(prefix, DEFAULT_DIR_MODE, 0)));
        }
        self.token = page.next;
        if self.token.is_none() {
            self.done = true;
        }
        Ok(())
    }
}

impl DirReader for S3DirReader {
    fn next_batch(&mut self, n: usize) -> io::Result<Vec<(String, Meta)>> {
        while self.pending.len() < n && !self.done {
            self.next_page(n - self.pending.len())?;
        }
        let take = n.min(self.pending.len());
        Ok(self.pending.drain(..take).collect())
    }
}
