//! Where wrapped key files are kept: a local directory (`keks_dir`, the
//! default) or objects in an S3 bucket (`PREFIX/keks/NAME.key`), shared by
//! every node.
//!
//! [`KeyFiles`] is the small set of operations [`super::UserKeys`] needs:
//! read a file with its version, create one only if none exists, replace one
//! only if it is still the version read, and list them. Both kinds give the
//! same guarantee for a user's first logins racing on several processes (or
//! nodes): exactly one creation wins and the others read the winner's key.
//!
//! - [`LocalKeyFiles`]: files written whole under a temporary name and
//!   linked (create) or renamed (replace) into place (the crate's `atomic_file` module);
//!   a process-local lock per user serialises replacements, so no version is
//!   compared.
//! - [`S3KeyFiles`]: `PUT` with `If-None-Match: *` to create, `If-Match:
//!   ETAG` (the one read) to replace; a replacement that loses to another
//!   node's fails with a message that says to run the command again.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::aws::s3::{Condition, S3Client, S3Error, join_key};

/// A key file's bytes and the version they were read at.
#[derive(Debug)]
pub struct StoredFile {
    /// The file's contents.
    pub bytes: Vec<u8>,
    /// What a conditional replacement compares against: the object's ETag
    /// on S3; `None` for local files.
    pub version: Option<String>,
}

/// Where the wrapped key files live (see the module documentation).
pub trait KeyFiles: Send + Sync + fmt::Debug {
    /// How to name the file `name` to an operator (a path, or an
    /// `s3://BUCKET/KEY` address).
    fn location(&self, name: &str) -> PathBuf;
    /// Reads `name`; `None` if it does not exist. A file over `max_len`
    /// bytes is refused with `InvalidData`.
    fn read(&self, name: &str, max_len: u64) -> io::Result<Option<StoredFile>>;
    /// Creates `name` with `bytes` unless it exists; returns whether this
    /// call created it (exactly one of racing callers gets `true`).
    fn create_new(&self, name: &str, bytes: &[u8]) -> io::Result<bool>;
    /// Replaces `name` with `bytes`, atomically; with `read`, only if the
    /// file is still at that version (else an `AlreadyExists` error that
    /// says another process changed it).
    fn replace(&self, name: &str, bytes: &[u8], read: Option<&str>) -> io::Result<()>;
    /// The names of every file (no temporary files), unsorted.
    fn names(&self) -> io::Result<Vec<String>>;
    /// The local directory, if the files are local (the quota usage
    /// records are kept beside them there).
    fn local_dir(&self) -> Option<&Path>;
}

/// Key files in a local directory (the default).
#[derive(Debug)]
pub struct LocalKeyFiles {
    dir: PathBuf,
}

impl LocalKeyFiles {
    /// Files in `dir`, created with mode 0700 if missing; temporary files
    /// a crashed process left there are removed.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        atomic_file::create_private_dir(&dir)?;
        atomic_file::remove_stale_temps(&dir, atomic_file::STALE_TEMP_AGE);
        Ok(LocalKeyFiles { dir })
    }
}

impl KeyFiles for LocalKeyFiles {
    fn location(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str, max_len: u64) -> io::Result<Option<StoredFile>> {
        match atomic_file::read_small(&self.dir.join(name), max_len) {
            Ok(bytes) => Ok(Some(StoredFile {
                bytes,
                version: None,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create_new(&self, name: &str, bytes: &[u8]) -> io::Result<bool> {
        atomic_file::create_new(&self.dir, name, bytes)
    }

    fn replace(&self, name: &str, bytes: &[u8], _read: Option<&str>) -> io::Result<()> {
        atomic_file::replace(&self.dir, name, bytes)
    }

    fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // Temporary files start with a dot and are never listed.
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// Key files as objects `PREFIX/keks/NAME` in an S3 bucket, shared by every
/// node (see the module documentation).
#[derive(Clone)]
pub struct S3KeyFiles {
    client: S3Client,
    /// `PREFIX/keks/` (just `keks/` without a prefix).
    dir: String,
    /// `s3://BUCKET/` for messages.
    address: String,
}

impl fmt::Debug for S3KeyFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3KeyFiles")
            .field("at", &format_args!("{}{}", self.address, self.dir))
            .finish_non_exhaustive()
    }
}

/// Most keys asked for per listing page.
const LIST_PAGE: u32 = 1000;

impl S3KeyFiles {
    /// Key files under `PREFIX/keks/` of `client`'s bucket.
    pub fn new(client: S3Client, prefix: &str) -> Self {
        let address = format!("s3://{}/", client.bucket());
        S3KeyFiles {
            dir: format!("{}/", join_key(prefix, &["keks"])),
            client,
            address,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.dir)
    }
}

impl KeyFiles for S3KeyFiles {
    fn location(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("{}{}", self.address, self.key(name)))
    }

    fn read(&self, name: &str, max_len: u64) -> io::Result<Option<StoredFile>> {
        match self.client.get(&self.key(name)) {
            Ok((bytes, info)) => {
                if bytes.len() as u64 > max_len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "object is {} bytes, more than the {max_len} expected",
                            bytes.len()
                        ),
                    ));
                }
                Ok(Some(StoredFile {
                    bytes: bytes.to_vec(),
                    version: Some(info.etag),
                }))
            }
            Err(S3Error::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn create_new(&self, name: &str, bytes: &[u8]) -> io::Result<bool> {
        match self
            .client
            .put(&self.key(name), bytes, &[], Condition::IfNoneMatch)
        {
            Ok(_) => Ok(true),
            // Another node created it first: the caller reads theirs.
            Err(S3Error::PreconditionFailed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn replace(&self, name: &str, bytes: &[u8], read: Option<&str>) -> io::Result<()> {
        let cond = match read {
            Some(etag) => Condition::IfMatch(etag.to_owned()),
            None => Condition::Always,
        };
        match self.client.put(&self.key(name), bytes, &[], cond) {
            Ok(_) => Ok(()),
            Err(S3Error::PreconditionFailed) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "changed by another node since it was read; nothing written: run the command again",
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list(&self.dir, Some("/"), token.as_deref(), LIST_PAGE)
                .map_err(io::Error::from)?;
            names.extend(
                page.objects
                    .iter()
                    .filter_map(|o| o.key.strip_prefix(&self.dir))
                    .map(str::to_owned),
            );
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(names),
            }
        }
    }

    fn local_dir(&self) -> Option<&Path> {
        None
    }
}
