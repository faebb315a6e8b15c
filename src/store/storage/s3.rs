//! The S3 backend: one user's tree as objects in a bucket.
//!
//! Layout: the file `/a/b` of user NAME is the object `PREFIX/data/NAME/a/b`
//! holding the same encrypted bytes as on disk (`docs/FORMAT.md`); a
//! directory `/a` is a zero-byte marker object `PREFIX/data/NAME/a/` (a
//! prefix with objects under it but no marker, made by another tool, is a
//! directory too). A file's permission bits and a modification time set by
//! a client are object metadata (`x-amz-meta-mode`, octal, and
//! `x-amz-meta-mtime`, seconds); without the latter the time is the
//! object's `Last-Modified`. Stores that keep no metadata on keys ending
//! in `/` (SeaweedFS) show every directory with mode 0755.
//!
//! What an object store changes for the layers above (see the `Storage`
//! capability methods):
//! - a new upload ([`Storage::stage`]) is a multipart upload of the target
//!   key, completed at commit (`If-None-Match: *` when exclusive): nothing
//!   is visible before, and no placeholder takes the name at OPEN;
//! - a stored file opened for writing is rewritten by a new multipart
//!   upload of the same key whose first parts are server-side copies of
//!   its unchanged records, completed at close or fsync only if the object
//!   is still the one read (`If-Match`); records before the old last one
//!   cannot be written, nor the file truncated below it
//!   ([`super::Unsupported`]). No journal is needed;
//! - reads are ranged GETs through a per-file window (see `blob`);
//! - listings come from `ListObjectsV2` with delimiter `/`: sizes without
//!   reading bodies, but no metadata, so listed files show mode 0644 and
//!   their `Last-Modified`, directories 0755 and time 0 (a stat shows the
//!   stored mode and time);
//! - a file's rename is a server-side copy then a delete; an empty
//!   directory's is a marker copy; a non-empty directory, symlinks and
//!   hard links are refused as unsupported.
//!
//! Parts: [`S3Storage`] here, its open objects in `blob`, listings in
//! `dir`, and the sweep of abandoned multipart uploads
//! ([`sweep_multipart`]) in `sweep`.

use std::hash::{Hash, Hasher};
use std::io;
use std::sync::Arc;

use crate::aws::s3::{Condition, ObjectInfo, S3Client, S3Error};
use crate::username::UserName;

use super::{
    Access, Blob, DirReader, Kind, Meta, ObjectPath, SpaceInfo, Staged, StagedToken, Storage,
    unix_seconds, unsupported,
};

mod blob;
mod dir;
mod sweep;

use blob::{BlobHandle, S3Blob, UploadToken};
pub use sweep::sweep_multipart;

/// Default size of an upload's parts: 8 MiB (about 128 records).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;

/// The smallest part S3 accepts but for the last one: 5 MiB.
pub const MIN_PART_SIZE: usize = 5 << 20;

/// The largest single copy S3 accepts (CopyObject, UploadPartCopy): 5 GiB.
const MAX_COPY: u64 = 5 << 30;

/// Default read window of an open file: a sequential reader's ranged GETs
/// fetch 4 MiB at a time.
pub const DEFAULT_READ_WINDOW: usize = 4 << 20;

/// The permission bits the store ever sets (as the local backend).
const MODE_BITS: u32 = 0o777;

/// Mode shown for a file whose metadata is not known (a listing).
const DEFAULT_FILE_MODE: u32 = 0o644;

/// Mode shown for a directory without a marker, or in a listing.
const DEFAULT_DIR_MODE: u32 = 0o755;

/// Object metadata names (sent as `x-amz-meta-NAME`).
const META_MODE: &str = "mode";
const META_MTIME: &str = "mtime";

/// Sizes an open object works with (memory per open file is bounded by
/// them: about one part plus one window).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// Size of an upload's parts (from [`MIN_PART_SIZE`] on).
    pub(crate) part_size: usize,
    /// A sequential reader's ranged GET size.
    pub(crate) read_window: usize,
}

/// [`Storage`] on the objects under `PREFIX/data/NAME/` of a bucket.
pub struct S3Storage {
    client: S3Client,
    /// `PREFIX/data/NAME/`: every key of this user starts with it.
    root: String,
    tuning: Tuning,
}

/// `PREFIX/data/` (no leading slash when the prefix is empty).
pub(crate) fn data_prefix(prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        "data/".to_owned()
    } else {
        format!("{prefix}/data/")
    }
}

impl S3Storage {
    /// The tree of `user` under `prefix` in the client's bucket; puts the
    /// root's marker (`PREFIX/data/NAME/`) if it is not there, so that the
    /// user is listed as having a tree.
    pub fn open_user_root(client: S3Client, prefix: &str, user: &UserName) -> io::Result<Self> {
        let root = format!("{}{}/", data_prefix(prefix), user.as_str());
        match client.put(&root, b"", &[], Condition::IfNoneMatch) {
            Ok(_) | Err(S3Error::PreconditionFailed) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(S3Storage {
            client,
            root,
            tuning: Tuning {
                part_size: DEFAULT_PART_SIZE,
                read_window: DEFAULT_READ_WINDOW,
            },
        })
    }

    /// This storage with uploads sent in parts of `bytes` (at least
    /// [`MIN_PART_SIZE`]; the memory an upload holds is about one part).
    pub fn with_part_size(mut self, bytes: usize) -> io::Result<Self> {
        if bytes < MIN_PART_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an S3 part must be at least {MIN_PART_SIZE} bytes"),
            ));
        }
        self.tuning.part_size = bytes;
        Ok(self)
    }

    /// This storage with sequential reads fetched `bytes` at a time
    /// (at least 64 KiB).
    pub fn with_read_window(mut self, bytes: usize) -> Self {
        self.tuning.read_window = bytes.max(64 << 10);
        self
    }

    /// The object key of the file at `path`.
    fn key(&self, path: &ObjectPath) -> String {
        format!("{}{}", self.root, path.components().join("/"))
    }

    /// The key prefix of the directory at `path` (its marker's key): ends
    /// in `/`.
    fn dir_key(&self, path: &ObjectPath) -> String {
        if path.is_root() {
            self.root.clone()
        } else {
            format!("{}/", self.key(path))
        }
    }

    /// The file at `path`, if there is one.
    fn head_file(&self, path: &ObjectPath) -> io::Result<Option<ObjectInfo>> {
        match self.client.head(&self.key(path)) {
            Ok(info) => Ok(Some(info)),
            Err(S3Error::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The directory at `path`: its marker's metadata, or defaults for a
    /// prefix that holds objects but has no marker; `NotFound` if neither.
    fn dir_meta(&self, path: &ObjectPath) -> io::Result<Meta> {
        let key = self.dir_key(path);
        if path.is_root() {
            return Ok(dir_meta_of(&key, DEFAULT_DIR_MODE, 0));
        }
        match self.client.head(&key) {
            Ok(info) => {
                let (mode, mtime) = mode_and_mtime(&info, DEFAULT_DIR_MODE);
                return Ok(dir_meta_of(&key, mode, mtime));
            }
            Err(S3Error::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let page = self.client.list(&key, Some("/"), None, 1)?;
        if page.objects.is_empty() && page.common_prefixes.is_empty() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(dir_meta_of(&key, DEFAULT_DIR_MODE, 0))
    }

    /// Whether the directory at `path` holds nothing but its marker.
    fn dir_is_empty(&self, path: &ObjectPath) -> io::Result<bool> {
        let key = self.dir_key(path);
        let page = self.client.list(&key, None, None, 2)?;
        Ok(page.common_prefixes.is_empty() && page.objects.iter().all(|o| o.key == key))
    }

    /// Fails with `NotFound` (or `ENOTDIR`) unless the parent of `path` is
    /// a directory: as on a filesystem, nothing is made in a missing one.
    fn check_parent(&self, path: &ObjectPath) -> io::Result<()> {
        let parent = path.parent();
        if parent.is_root() {
            return Ok(());
        }
        if self.head_file(&parent)?.is_some() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        self.dir_meta(&parent).map(|_| ())
    }

    /// The root itself cannot be changed (as on the local backend).
    fn refuse_root(path: &ObjectPath) -> io::Result<()> {
        if path.is_root() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the root itself",
            ));
        }
        Ok(())
    }

    /// Copies the object `from` (described by `info`) to the key `to`,
    /// server-side: one CopyObject up to 5 GiB, a multipart upload of
    /// copied parts beyond. `cond` applies to `to`.
    fn copy_object(&self, info: &ObjectInfo, to: &str, cond: Condition) -> io::Result<()> {
        if info.size <= MAX_COPY {
            self.client
                .copy(&info.key, to, Some(&info.etag), None, cond)?;
            return Ok(());
        }
        let metadata: Vec<(&str, &str)> = info
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let id = self.client.create_multipart(to, &metadata)?;
        let copied = (|| -> Result<String, S3Error> {
            let mut parts = Vec::new();
            for (number, range) in (1u32..).zip(copy_ranges(info.size)) {
                let etag = self.client.upload_part_copy(
                    to,
                    &id,
                    number,
                    &info.key,
                    range,
                    Some(&info.etag),
                )?;
                parts.push((number, etag));
            }
            self.client.complete_multipart(to, &id, &parts, cond)
        })();
        if let Err(e) = copied {
            let _ = self.client.abort_multipart(to, &id);
            return Err(e.into());
        }
        Ok(())
    }

    /// Replaces the metadata of the file `info` with `mode` and `mtime`
    /// (a copy onto itself, only if it is still that object).
    fn rewrite_metadata(&self, info: &ObjectInfo, mode: u32, mtime: Option<i64>) -> io::Result<()> {
        if info.size > MAX_COPY {
            return Err(unsupported(
                "changing the mode or times of a file over 5 GiB is not supported on S3 storage",
            ));
        }
        let pairs = metadata_pairs(mode, mtime);
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.client.copy(
            &info.key,
            &info.key,
            Some(&info.etag),
            Some(&refs),
            Condition::Always,
        )?;
        Ok(())
    }

    /// Changes the mode or mtime of a file or directory marker.
    fn change_metadata(
        &self,
        path: &ObjectPath,
        change: impl Fn(u32, Option<i64>) -> (u32, Option<i64>),
    ) -> io::Result<()> {
        Self::refuse_root(path)?;
        if let Some(info) = self.head_file(path)? {
            let (mode, mtime) = stored_mode_and_mtime(&info, DEFAULT_FILE_MODE);
            let (mode, mtime) = change(mode, mtime);
            return self.rewrite_metadata(&info, mode, mtime);
        }
        let key = self.dir_key(path);
        match self.client.head(&key) {
            Ok(info) => {
                // A marker has no body: writing it again with the new
                // metadata is a copy onto itself without the copy (which
                // some stores refuse for keys ending in '/').
                let (mode, mtime) = stored_mode_and_mtime(&info, DEFAULT_DIR_MODE);
                let (mode, mtime) = change(mode, mtime);
                let pairs = metadata_pairs(mode, mtime);
                let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.client.put(&key, b"", &refs, Condition::Always)?;
                Ok(())
            }
            Err(S3Error::NotFound) => {
                // A directory without a marker gets one, with the change.
                self.dir_meta(path)?;
                let (mode, mtime) = change(DEFAULT_DIR_MODE, None);
                let pairs = metadata_pairs(mode, mtime);
                let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.client.put(&key, b"", &refs, Condition::Always)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn rename_file(&self, info: &ObjectInfo, to: &ObjectPath, replace: bool) -> io::Result<()> {
        let to_key = self.key(to);
        if self.dir_meta(to).is_ok() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let cond = if replace {
            Condition::Always
        } else {
            if self.head_file(to)?.is_some() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            Condition::IfNoneMatch
        };
        self.copy_object(info, &to_key, cond)?;
        self.client.delete(&info.key)?;
        Ok(())
    }

    fn rename_dir(&self, from: &ObjectPath, to: &ObjectPath) -> io::Result<()> {
        if !self.dir_is_empty(from)? {
            return Err(unsupported(
                "renaming a directory that is not empty is not supported on S3 storage \
                 (move its files one by one)",
            ));
        }
        if self.head_file(to)?.is_some() || self.dir_meta(to).is_ok() {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        let from_key = self.dir_key(from);
        let (mode, mtime) = match self.client.head(&from_key) {
            Ok(info) => stored_mode_and_mtime(&info, DEFAULT_DIR_MODE),
            Err(S3Error::NotFound) => (DEFAULT_DIR_MODE, None),
            Err(e) => return Err(e.into()),
        };
        let pairs = metadata_pairs(mode, mtime);
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.client
            .put(&self.dir_key(to), b"", &refs, Condition::IfNoneMatch)?;
        self.client.delete(&from_key)?;
        Ok(())
    }
}

/// `0..size` cut into the fewest equal ranges of at most [`MAX_COPY`]
/// bytes (each at least [`MIN_PART_SIZE`] when `size` is).
pub(crate) fn copy_ranges(size: u64) -> Vec<std::ops::Range<u64>> {
    let count = size.div_ceil(MAX_COPY).max(1);
    let each = size.div_ceil(count);
    (0..count)
        .map(|i| (i * each)..((i + 1) * each).min(size))
        .filter(|r| !r.is_empty())
        .collect()
}

/// A stable identity for the object `key` in the version `etag`: handles
/// that open the same version share one state, and a replaced object is
/// another file (as a new inode is on disk).
pub(crate) fn identity(key: &str, etag: &str) -> (u64, u64) {
    let hash = |s: &str| {
        let mut h = std::hash::DefaultHasher::new();
        s.hash(&mut h);
        h.finish()
    };
    (hash(key), hash(etag))
}

/// The metadata pairs stored with an object of `mode` (and `mtime`, when
/// a client set one).
pub(crate) fn metadata_pairs(mode: u32, mtime: Option<i64>) -> Vec<(&'static str, String)> {
    let mut pairs = vec![(META_MODE, format!("{:o}", mode & MODE_BITS))];
    if let Some(t) = mtime {
        pairs.push((META_MTIME, t.to_string()));
    }
    pairs
}

/// The mode and the client-set mtime stored in an object's metadata.
pub(crate) fn stored_mode_and_mtime(info: &ObjectInfo, default_mode: u32) -> (u32, Option<i64>) {
    let mode = info
        .metadata
        .get(META_MODE)
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .map_or(default_mode, |m| m & MODE_BITS);
    let mtime = info
        .metadata
        .get(META_MTIME)
        .and_then(|t| t.parse::<i64>().ok());
    (mode, mtime)
}

/// The mode and modification time shown for an object.
fn mode_and_mtime(info: &ObjectInfo, default_mode: u32) -> (u32, i64) {
    let (mode, mtime) = stored_mode_and_mtime(info, default_mode);
    (mode, mtime.unwrap_or(info.last_modified))
}

/// The metadata of a file object, from HEAD (or a listing: default mode).
pub(crate) fn file_meta(info: &ObjectInfo) -> Meta {
    let (mode, mtime) = mode_and_mtime(info, DEFAULT_FILE_MODE);
    Meta {
        kind: Kind::File,
        stored_len: info.size,
        permissions: mode,
        uid: owner(),
        gid: group(),
        nlink: 1,
        atime: mtime,
        mtime,
        identity: identity(&info.key, &info.etag),
    }
}

/// The metadata of the directory whose marker key is `key`.
fn dir_meta_of(key: &str, mode: u32, mtime: i64) -> Meta {
    Meta {
        kind: Kind::Dir,
        stored_len: 0,
        permissions: mode,
        uid: owner(),
        gid: group(),
        nlink: 2,
        atime: mtime,
        mtime,
        identity: identity(key, ""),
    }
}

/// Objects have no owner: they are shown as the server's.
fn owner() -> u32 {
    rustix::process::getuid().as_raw()
}

fn group() -> u32 {
    rustix::process::getgid().as_raw()
}

fn now() -> i64 {
    unix_seconds(std::time::SystemTime::now())
}

impl Storage for S3Storage {
    fn open(&self, path: &ObjectPath, access: Access) -> io::Result<Box<dyn Blob>> {
        let Some(info) = self.head_file(path)? else {
            if self.dir_meta(path).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            return Err(io::ErrorKind::NotFound.into());
        };
        let blob = S3Blob::existing(
            self.client.clone(),
            info,
            access == Access::ReadWrite,
            self.tuning,
        );
        Ok(Box::new(BlobHandle(Arc::new(blob))))
    }

    fn stage(&self, target: &ObjectPath) -> io::Result<Staged> {
        Self::refuse_root(target)?;
        self.check_parent(target)?;
        let blob = Arc::new(S3Blob::staged(
            self.client.clone(),
            self.key(target),
            self.tuning,
        ));
        Ok(Staged {
            blob: Box::new(BlobHandle(blob.clone())),
            token: StagedToken::remote(Box::new(UploadToken(blob))),
        })
    }

    fn commit(&self, token: StagedToken, exclusive: bool) -> io::Result<()> {
        let upload = token
            .into_remote()?
            .downcast::<UploadToken>()
            .map_err(|_| io::Error::other("a staged object of another storage"))?;
        upload.0.commit(exclusive)
    }

    fn discard(&self, token: StagedToken) {
        if let Ok(upload) = token.into_remote()
            && let Ok(upload) = upload.downcast::<UploadToken>()
        {
            upload.0.abort();
        }
    }

    fn meta(&self, path: &ObjectPath, _follow: bool) -> io::Result<Meta> {
        // No links: stat and lstat are the same.
        if !path.is_root()
            && let Some(info) = self.head_file(path)?
        {
            return Ok(file_meta(&info));
        }
        self.dir_meta(path)
    }

    fn open_dir(&self, path: &ObjectPath) -> io::Result<Box<dyn DirReader>> {
        if !path.is_root() && self.head_file(path)?.is_some() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        self.dir_meta(path)?;
        Ok(Box::new(dir::S3DirReader::new(
            self.client.clone(),
            self.dir_key(path),
        )))
    }

    fn mkdir(&self, path: &ObjectPath, mode: u32) -> io::Result<()> {
        if path.is_root() || self.head_file(path)?.is_some() || self.dir_meta(path).is_ok() {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        self.check_parent(path)?;
        let pairs = metadata_pairs(mode, Some(now()));
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.client
            .put(&self.dir_key(path), b"", &refs, Condition::IfNoneMatch)?;
        Ok(())
    }

    fn rmdir(&self, path: &ObjectPath) -> io::Result<()> {
        Self::refuse_root(path)?;
        if self.head_file(path)?.is_some() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        self.dir_meta(path)?;
        if !self.dir_is_empty(path)? {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
        self.client.delete(&self.dir_key(path))?;
        Ok(())
    }

    fn remove(&self, path: &ObjectPath) -> io::Result<()> {
        Self::refuse_root(path)?;
        if self.head_file(path)?.is_none() {
            if self.dir_meta(path).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            return Err(io::ErrorKind::NotFound.into());
        }
        self.client.delete(&self.key(path))?;
        Ok(())
    }

    fn rename(&self, from: &ObjectPath, to: &ObjectPath, replace: bool) -> io::Result<()> {
        Self::refuse_root(from)?;
        Self::refuse_root(to)?;
        if from == to {
            return self.meta(from, false).map(|_| ());
        }
        if to.components().starts_with(from.components()) {
            // Into itself, as rename(2) refuses it.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.check_parent(to)?;
        match self.head_file(from)? {
            Some(info) => self.rename_file(&info, to, replace),
            None => {
                self.dir_meta(from)?;
                self.rename_dir(from, to)
            }
        }
    }

    fn hard_link(&self, _existing: &ObjectPath, _link: &ObjectPath) -> io::Result<()> {
        Err(unsupported("hard links are not supported on S3 storage"))
    }

    fn symlink(&self, _target: &str, _link: &ObjectPath) -> io::Result<()> {
        Err(unsupported(
            "symbolic links are not supported on S3 storage",
        ))
    }

    fn read_link(&self, _path: &ObjectPath) -> io::Result<String> {
        Err(unsupported(
            "symbolic links are not supported on S3 storage (there are none to read)",
        ))
    }

    fn set_permissions(&self, path: &ObjectPath, mode: u32) -> io::Result<()> {
        self.change_metadata(path, |_, mtime| (mode & MODE_BITS, mtime))
    }

    fn set_times(&self, path: &ObjectPath, _atime: i64, mtime: i64) -> io::Result<()> {
        // Only the modification time is kept (objects have no atime).
        self.change_metadata(path, |mode, _| (mode, Some(mtime)))
    }

    fn space(&self, _path: &ObjectPath) -> io::Result<SpaceInfo> {
        // A bucket has no size: large figures (a quota, if configured,
        // replaces them with the user's limit and usage).
        const BLOCK: u64 = 4096;
        const BLOCKS: u64 = (1 << 50) / BLOCK;
        Ok(SpaceInfo {
            block_size: BLOCK,
            fragment_size: BLOCK,
            blocks: BLOCKS,
            blocks_free: BLOCKS,
            blocks_avail: BLOCKS,
            files: u64::from(u32::MAX),
            files_free: u64::from(u32::MAX),
            files_avail: u64::from(u32::MAX),
            fsid: 0,
            flags: 0,
            name_max: 255,
        })
    }

    fn rewrites_anywhere(&self) -> bool {
        false
    }

    fn waits_on_network(&self) -> bool {
        true
    }

    fn takes_names_at_open(&self) -> bool {
        false
    }

    fn journals_extensions(&self) -> bool {
        false
    }

    fn read_described(
        &self,
        path: &ObjectPath,
        _meta: &Meta,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let data = self.client.get_range(&self.key(path), offset..end, None)?;
        if data.len() < buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&data[..buf.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_cut_into_equal_ranges_of_at_most_5_gib() {
        assert_eq!(copy_ranges(10), vec![0..10]);
        assert_eq!(copy_ranges(MAX_COPY), vec![0..MAX_COPY]);
        let r = copy_ranges(MAX_COPY + 2);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].end, r[1].start);
        assert_eq!(r[1].end, MAX_COPY + 2);
        assert!(r.iter().all(|r| r.end - r.start <= MAX_COPY));
    }

    #[test]
    fn keys_live_under_the_users_data_prefix() {
        assert_eq!(data_prefix(""), "data/");
        assert_eq!(data_prefix("/team/x/"), "team/x/data/");
        assert_ne!(identity("k", "e1"), identity("k", "e2"));
        assert_eq!(identity("k", "e1"), identity("k", "e1"));
    }
}
