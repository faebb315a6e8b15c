//! Byte storage under one user's root, behind a small trait.
//!
//! The encrypted-file layer above sees only [`Storage`] and [`Blob`]; the
//! local filesystem is one implementation ([`LocalStorage`]), an object store
//! can be another. Paths arrive as [`ObjectPath`]: already normalised,
//! relative to the root, free of `.`/`..`/NUL.
//!
//! [`LocalStorage`] resolves every path with `openat2(RESOLVE_IN_ROOT)`
//! against a directory descriptor of the root, so `..` and symlinks (absolute
//! or relative, made by a client or planted on disk) resolve as if the root
//! were `/`: nothing outside it is reachable, and no check-then-use race
//! exists. Operations on a final name (mkdir, unlink, rename, symlink) open
//! the parent that way and act on a single component with the `*at` calls,
//! which do not follow a symlink in that component.
//!
//! Parts: [`LocalStorage`] and its blobs and directory readers in `local`,
//! the symlink rules that keep every stored link inside the root in
//! `links`, and the start-up removal of abandoned staged uploads
//! ([`sweep_staged`]) in `sweep`; [`S3Storage`], the same trait on an S3
//! bucket, in [`s3`].

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod links;
mod local;
pub mod s3;
mod sweep;
pub use links::{Climb, MAX_LINK_CHECK_ENTRIES, Refused, climb, refused};
pub use local::LocalStorage;
pub use s3::{S3Storage, sweep_multipart};
pub use sweep::{SweepReport, sweep_staged};

/// Names starting with this are the store's own (staged uploads); they are
/// hidden from listings and refused as client paths.
pub const RESERVED_PREFIX: &str = ".dropzone-";

/// A normalised path relative to a storage root: zero or more components,
/// none empty, `.`, `..`, containing `/` or NUL, or starting with
/// [`RESERVED_PREFIX`]. The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct ObjectPath {
    components: Vec<String>,
}

/// Why a name cannot be part of an [`ObjectPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    /// `.` or `..` or empty.
    #[error("path component {0:?} is not a name")]
    NotAName(String),
    /// NUL or `/` inside a component.
    #[error("path component contains a NUL byte or slash")]
    BadByte,
    /// A name the store keeps for itself.
    #[error("names starting with {RESERVED_PREFIX} are reserved")]
    Reserved,
    /// Longer than a filesystem name can be.
    #[error("path component longer than 255 bytes")]
    TooLong,
}

impl ObjectPath {
    /// The root.
    pub fn root() -> Self {
        Self::default()
    }

    /// Builds a path from already separated components, validating each.
    pub fn from_components<I, S>(parts: I) -> Result<Self, BadName>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut components = Vec::new();
        for p in parts {
            let p = p.into();
            check_name(&p)?;
            components.push(p);
        }
        Ok(ObjectPath { components })
    }

    /// The components, outermost first.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The last component, if any.
    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    /// The parent path (the root's parent is the root).
    pub fn parent(&self) -> ObjectPath {
        let mut c = self.components.clone();
        c.pop();
        ObjectPath { components: c }
    }

    /// This path with `name` appended.
    pub fn join(&self, name: &str) -> Result<ObjectPath, BadName> {
        check_name(name)?;
        let mut c = self.components.clone();
        c.push(name.to_owned());
        Ok(ObjectPath { components: c })
    }

    /// The path as the client sees it: `/a/b`, or `/` for the root.
    pub fn to_client_string(&self) -> String {
        if self.components.is_empty() {
            "/".to_owned()
        } else {
            let mut s = String::new();
            for c in &self.components {
                s.push('/');
                s.push_str(c);
            }
            s
        }
    }

    fn relative(&self) -> String {
        if self.components.is_empty() {
            ".".to_owned()
        } else {
            self.components.join("/")
        }
    }
}

fn check_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(BadName::NotAName(name.to_owned()));
    }
    if name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(BadName::BadByte);
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(BadName::Reserved);
    }
    if name.len() > 255 {
        return Err(BadName::TooLong);
    }
    Ok(())
}

/// What kind of object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (an encrypted file, if written by Dropzone).
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only from `lstat`).
    Symlink,
    /// Anything else (FIFO, socket, device): never opened.
    Other,
}

/// Metadata of a stored object, in storage terms (sizes are stored bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Object kind.
    pub kind: Kind,
    /// Stored size in bytes (ciphertext for files).
    pub stored_len: u64,
    /// Permission bits (`0o7777` mask).
    pub permissions: u32,
    /// Owner and group ids.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Link count.
    pub nlink: u64,
    /// Last access, seconds since the epoch.
    pub atime: i64,
    /// Last modification, seconds since the epoch.
    pub mtime: i64,
    /// Identity of the underlying object (device, inode), for sharing state
    /// between handles that open the same file.
    pub identity: (u64, u64),
}

/// Space figures for statvfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceInfo {
    /// Fundamental block size.
    pub block_size: u64,
    /// Fragment size.
    pub fragment_size: u64,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Free blocks for unprivileged users.
    pub blocks_avail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Free inodes for unprivileged users.
    pub files_avail: u64,
    /// Filesystem id.
    pub fsid: u64,
    /// Mount flags (ST_RDONLY = 1, ST_NOSUID = 2).
    pub flags: u64,
    /// Maximum name length.
    pub name_max: u64,
}

/// An open stored object: random-access bytes.
pub trait Blob: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current stored metadata.
    fn meta(&self) -> io::Result<Meta>;
    /// Cuts or extends the stored bytes to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written bytes durable.
    fn sync(&self) -> io::Result<()>;
    /// Sets the permission bits.
    fn set_permissions(&self, mode: u32) -> io::Result<()>;
    /// Sets access and modification times (seconds since the epoch).
    fn set_times(&self, atime: i64, mtime: i64) -> io::Result<()>;

    /// The lowest stored offset a write may start at, where the storage
    /// cannot rewrite what lies before it (an object store's upload in
    /// progress has sent it, or it is the unchanged part of a stored
    /// object); `None`: anywhere (the default, local files). The
    /// encrypted layer refuses a write below it before changing anything.
    fn write_floor(&self) -> Option<u64> {
        None
    }

    /// Makes the writes so far visible to other readers, at a handle's
    /// close: an object store completes the rewrite it has in progress.
    /// Local writes are visible at once (the default does nothing).
    fn publish(&self) -> io::Result<()> {
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with
    /// `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// How to open an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// A staged object: written beside its target, invisible until committed.
pub struct Staged {
    /// The open staged object.
    pub blob: Box<dyn Blob>,
    /// Opaque token naming the staged object for [`Storage::commit`].
    pub token: StagedToken,
}

/// Identifies a staged object (where it lies and under which name), for
/// the storage that staged it.
pub struct StagedToken(TokenKind);

/// What a [`StagedToken`] holds, per backend.
enum TokenKind {
    /// A local staged file: its directory, its name, the target's name.
    Local(LocalToken),
    /// A backend's own staged upload (an object store's multipart upload),
    /// downcast by that backend.
    Remote(Box<dyn std::any::Any + Send>),
}

/// A local staged file (see [`LocalStorage::stage`]).
struct LocalToken {
    dir: OwnedFd,
    name: String,
    target: String,
}

impl StagedToken {
    fn local(dir: OwnedFd, name: String, target: String) -> Self {
        StagedToken(TokenKind::Local(LocalToken { dir, name, target }))
    }

    /// The local staged file, or an error for another backend's token.
    fn into_local(self) -> io::Result<LocalToken> {
        match self.0 {
            TokenKind::Local(t) => Ok(t),
            TokenKind::Remote(_) => Err(foreign_token()),
        }
    }

    fn remote(upload: Box<dyn std::any::Any + Send>) -> Self {
        StagedToken(TokenKind::Remote(upload))
    }

    /// A backend's own staged upload, or an error for a local token.
    fn into_remote(self) -> io::Result<Box<dyn std::any::Any + Send>> {
        match self.0 {
            TokenKind::Remote(r) => Ok(r),
            TokenKind::Local(_) => Err(foreign_token()),
        }
    }
}

/// A token given to a storage that did not stage it: a bug.
fn foreign_token() -> io::Error {
    io::Error::other("a staged object of another storage")
}

impl std::fmt::Debug for StagedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            TokenKind::Local(t) => f
                .debug_struct("StagedToken")
                .field("name", &t.name)
                .field("target", &t.target)
                .finish(),
            TokenKind::Remote(_) => f.debug_struct("StagedToken").finish_non_exhaustive(),
        }
    }
}

/// An operation this storage cannot do (an object store has no links, and
/// cannot rewrite the middle of an object): the client is told so, with
/// this message, as "operation unsupported".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// An [`io::Error`] of kind `Unsupported` carrying [`Unsupported`] with
/// `message`.
pub fn unsupported(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, Unsupported(message.into()))
}

/// One user's tree of stored objects.
pub trait Storage: Send + Sync {
    /// Opens an existing regular file.
    fn open(&self, path: &ObjectPath, access: Access) -> io::Result<Box<dyn Blob>>;
    /// Creates a new staged object beside `target` (whose parent must exist).
    fn stage(&self, target: &ObjectPath) -> io::Result<Staged>;
    /// Makes a staged object durable and moves it over its target; with
    /// `exclusive`, fails with `AlreadyExists` instead of replacing.
    fn commit(&self, token: StagedToken, exclusive: bool) -> io::Result<()>;
    /// Removes a staged object that will not be committed.
    fn discard(&self, token: StagedToken);
    /// Metadata, following a final symlink (`stat`) or not (`lstat`).
    fn meta(&self, path: &ObjectPath, follow: bool) -> io::Result<Meta>;
    /// Entries of a directory with their (`lstat`) metadata, reserved names
    /// left out, sorted by name. Holds the whole listing in memory: for
    /// callers that need it whole (scp, the offline check); a listing a
    /// client drives reads it in batches with [`Storage::open_dir`].
    fn read_dir(&self, path: &ObjectPath) -> io::Result<Vec<(String, Meta)>> {
        let mut reader = self.open_dir(path)?;
        let mut out = Vec::new();
        loop {
            let batch = reader.next_batch(DIR_READ_BATCH)?;
            if batch.is_empty() {
                break;
            }
            out.extend(batch);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
    /// Opens a directory for reading its entries a batch at a time: what
    /// it holds does not grow with the directory (OpenSSH's sftp-server
    /// keeps an open `DIR*` the same way).
    fn open_dir(&self, path: &ObjectPath) -> io::Result<Box<dyn DirReader>>;
    /// Creates a directory.
    fn mkdir(&self, path: &ObjectPath, mode: u32) -> io::Result<()>;
    /// Removes an empty directory.
    fn rmdir(&self, path: &ObjectPath) -> io::Result<()>;
    /// Removes a file or symlink.
    fn remove(&self, path: &ObjectPath) -> io::Result<()>;
    /// Renames; with `replace` false, fails if the target exists. Refused
    /// (a [`Refused`] error) when a symlink would then point outside the
    /// root: see [`Storage::symlink`].
    fn rename(&self, from: &ObjectPath, to: &ObjectPath, replace: bool) -> io::Result<()>;
    /// Creates a hard link `link` to `existing`.
    fn hard_link(&self, existing: &ObjectPath, link: &ObjectPath) -> io::Result<()>;
    /// Creates a symlink at `link` for `target`: a relative target is
    /// stored as written if its `..` components come first and climb no
    /// higher than the link's real directory; an absolute one (a
    /// normalised path inside the root) is stored relative to that
    /// directory. Anything else is refused with a [`Refused`] error, so
    /// that no stored link leads outside the root for a program following
    /// it on disk.
    fn symlink(&self, target: &str, link: &ObjectPath) -> io::Result<()>;
    /// Reads a symlink's content.
    fn read_link(&self, path: &ObjectPath) -> io::Result<String>;
    /// Sets permission bits (following symlinks; `0o777` at most); the
    /// root itself is refused.
    fn set_permissions(&self, path: &ObjectPath, mode: u32) -> io::Result<()>;
    /// Sets times (following symlinks); the root itself is refused.
    fn set_times(&self, path: &ObjectPath, atime: i64, mtime: i64) -> io::Result<()>;
    /// Filesystem space figures.
    fn space(&self, path: &ObjectPath) -> io::Result<SpaceInfo>;

    /// Whether a new upload takes its name at OPEN with an empty file (see
    /// `UserStore::open`), as on a filesystem (the default). An object
    /// store does not: its upload appears only when it completes at close.
    fn takes_names_at_open(&self) -> bool {
        true
    }

    /// Whether a stored file opened for writing may be written anywhere,
    /// as on a filesystem (the default). An object store can only add
    /// after a stored file's last record (see [`Blob::write_floor`]): the
    /// store then replaces a file opened write-only without truncation or
    /// append instead (see `UserStore::open`).
    fn rewrites_anywhere(&self) -> bool {
        true
    }

    /// Whether its calls wait on the network (an object store) rather than
    /// on a local disk (the default). Callers in async code run every call
    /// of such a storage on a blocking thread: a request may take as long
    /// as the store's timeout, and the blocking HTTP client must not wait
    /// inside an async runtime.
    fn waits_on_network(&self) -> bool {
        false
    }

    /// Whether extending a file in place needs a journal beside it (see
    /// `store::journal`), as on a filesystem (the default). An object
    /// store's rewrite is complete or not there at all.
    fn journals_extensions(&self) -> bool {
        true
    }

    /// Reads exactly `buf.len()` bytes at `offset` of the file at `path`,
    /// which `meta` (from [`Storage::meta`] or a listing) describes: the few
    /// bytes a plaintext size needs. The default opens the file; an object
    /// store reads the range without looking the object up again.
    fn read_described(
        &self,
        path: &ObjectPath,
        meta: &Meta,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        let _ = meta;
        self.open(path, Access::Read)?.read_exact_at(buf, offset)
    }
}

/// Entries [`Storage::read_dir`] asks a [`DirReader`] for at a time.
const DIR_READ_BATCH: usize = 1024;

/// An open directory, read a batch of entries at a time, in the order the
/// storage keeps them (not sorted).
pub trait DirReader: Send {
    /// Up to `n` more entries with their (`lstat`) metadata, reserved
    /// names, `.` and `..` left out; empty at the end. Fewer than `n` does
    /// not mean the end.
    fn next_batch(&mut self, n: usize) -> io::Result<Vec<(String, Meta)>>;
}

/// Seconds since the epoch for `t` (0 for times before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}
