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

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};

mod links;
pub use links::{Climb, MAX_LINK_CHECK_ENTRIES, Refused, climb, refused};

/// The permission bits the store ever sets: no setuid, setgid or sticky
/// bit on anything a client makes.
const MODE_BITS: u32 = 0o777;

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

/// Identifies a staged object (where it lies and under which name).
pub struct StagedToken {
    dir: OwnedFd,
    name: String,
    target: String,
}

impl std::fmt::Debug for StagedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedToken")
            .field("name", &self.name)
            .field("target", &self.target)
            .finish()
    }
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

/// A local directory read with `getdents64` on its own descriptor, each
/// entry `lstat`ed relative to it: the directory was resolved once, inside
/// the root, and no entry's name is followed anywhere. Holds one
/// descriptor and `rustix`'s entry buffer (at most a few tens of KiB).
struct LocalDirReader {
    dir: rustix::fs::Dir,
    /// Set once the end was reached (or an error ended the listing).
    done: bool,
}

impl DirReader for LocalDirReader {
    fn next_batch(&mut self, n: usize) -> io::Result<Vec<(String, Meta)>> {
        let mut out = Vec::with_capacity(n.min(DIR_READ_BATCH));
        while out.len() < n && !self.done {
            let Some(entry) = self.dir.read() else {
                self.done = true;
                break;
            };
            let entry = entry.inspect_err(|_| self.done = true)?;
            let raw = entry.file_name().to_bytes();
            if raw == b"." || raw == b".." || raw.starts_with(RESERVED_PREFIX.as_bytes()) {
                continue;
            }
            // Names that are not UTF-8 cannot be expressed in our paths;
            // they are skipped rather than shown mangled.
            let Ok(name) = std::str::from_utf8(raw) else {
                continue;
            };
            let fd = self.dir.fd()?;
            match rustix::fs::statat(fd, OsStr::from_bytes(raw), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => out.push((name.to_owned(), meta_from_stat(&st))),
                // Removed between readdir and stat: not an error.
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    self.done = true;
                    return Err(e.into());
                }
            }
        }
        Ok(out)
    }
}

/// [`Storage`] on a local directory.
pub struct LocalStorage {
    root: OwnedFd,
    /// Taken while a symlink is made or anything is moved (see `links`).
    links: std::sync::Arc<std::sync::Mutex<()>>,
}

impl LocalStorage {
    /// Opens (creating with mode 0700 if missing) the directory `root`.
    pub fn open_root(root: &Path) -> io::Result<Self> {
        match std::fs::create_dir(root) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let fd = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let links = links::link_lock(&fd)?;
        Ok(LocalStorage { root: fd, links })
    }

    fn resolve(&self, path: &ObjectPath, flags: OFlags) -> io::Result<OwnedFd> {
        let fd = rustix::fs::openat2(
            &self.root,
            path.relative(),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
        )?;
        Ok(fd)
    }

    /// The parent directory of `path` and its final name; the root has none.
    fn parent_of<'p>(&self, path: &'p ObjectPath) -> io::Result<(OwnedFd, &'p str)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "the root itself"))?;
        let dir = self.resolve(&path.parent(), OFlags::PATH | OFlags::DIRECTORY)?;
        Ok((dir, name))
    }

    /// `/proc/self/fd/N` of an `O_PATH` descriptor: acting on it reaches
    /// exactly the resolved inode, the usual way to chmod/utime an `O_PATH` fd.
    fn proc_path(fd: &OwnedFd) -> String {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", fd.as_raw_fd())
    }
}

fn meta_from_stat(st: &rustix::fs::Stat) -> Meta {
    let fmt = rustix::fs::FileType::from_raw_mode(st.st_mode);
    let kind = match fmt {
        rustix::fs::FileType::RegularFile => Kind::File,
        rustix::fs::FileType::Directory => Kind::Dir,
        rustix::fs::FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    Meta {
        kind,
        stored_len: st.st_size as u64,
        permissions: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink,
        atime: st.st_atime,
        mtime: st.st_mtime,
        identity: (st.st_dev, st.st_ino),
    }
}

struct LocalBlob {
    file: File,
}

impl Blob for LocalBlob {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.file, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, offset)
    }
    fn meta(&self) -> io::Result<Meta> {
        Ok(meta_from_stat(&rustix::fs::fstat(&self.file)?))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn set_permissions(&self, mode: u32) -> io::Result<()> {
        rustix::fs::fchmod(&self.file, Mode::from_raw_mode(mode & MODE_BITS))?;
        Ok(())
    }
    fn set_times(&self, atime: i64, mtime: i64) -> io::Result<()> {
        rustix::fs::futimens(&self.file, &timestamps(atime, mtime))?;
        Ok(())
    }
}

fn timestamps(atime: i64, mtime: i64) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: atime,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    }
}

fn staging_name() -> String {
    let mut r = [0u8; 12];
    crate::store::format::fill_random(&mut r);
    format!("{RESERVED_PREFIX}upload-{}", hex::encode(r))
}

impl Storage for LocalStorage {
    fn open(&self, path: &ObjectPath, access: Access) -> io::Result<Box<dyn Blob>> {
        let mode = match access {
            Access::Read => OFlags::RDONLY,
            Access::ReadWrite => OFlags::RDWR,
        };
        // NONBLOCK: opening a planted FIFO must not hang the session; it is
        // refused below as not a regular file. NOCTTY for planted ttys.
        let fd = self.resolve(path, mode | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        let st = rustix::fs::fstat(&fd)?;
        match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::RegularFile => {}
            rustix::fs::FileType::Directory => {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "not a regular file",
                ));
            }
        }
        // Regular files ignore O_NONBLOCK, so the flag can stay.
        Ok(Box::new(LocalBlob {
            file: File::from(fd),
        }))
    }

    fn stage(&self, target: &ObjectPath) -> io::Result<Staged> {
        let (dir, target_name) = self.parent_of(target)?;
        let name = staging_name();
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        // Held while the upload is open, so that a sweep by another process
        // on the same data dir (see `sweep_staged`) leaves it alone.
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        Ok(Staged {
            blob: Box::new(LocalBlob {
                file: File::from(fd),
            }),
            token: StagedToken {
                dir,
                name,
                target: target_name.to_owned(),
            },
        })
    }

    fn commit(&self, token: StagedToken, exclusive: bool) -> io::Result<()> {
        let flags = if exclusive {
            RenameFlags::NOREPLACE
        } else {
            RenameFlags::empty()
        };
        let result = rustix::fs::renameat_with(
            &token.dir,
            token.name.as_str(),
            &token.dir,
            token.target.as_str(),
            flags,
        );
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&token.dir, token.name.as_str(), AtFlags::empty());
            return Err(e.into());
        }
        // The rename is durable only once the directory is synced. An O_PATH
        // descriptor cannot be fsynced, so open the directory itself.
        let dir = rustix::fs::openat(
            &token.dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fsync(&dir)?;
        Ok(())
    }

    fn discard(&self, token: StagedToken) {
        let _ = rustix::fs::unlinkat(&token.dir, token.name.as_str(), AtFlags::empty());
    }

    fn meta(&self, path: &ObjectPath, follow: bool) -> io::Result<Meta> {
        let st = if follow || path.is_root() {
            let fd = self.resolve(path, OFlags::PATH)?;
            rustix::fs::fstat(&fd)?
        } else {
            let (dir, name) = self.parent_of(path)?;
            rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?
        };
        Ok(meta_from_stat(&st))
    }

    fn open_dir(&self, path: &ObjectPath) -> io::Result<Box<dyn DirReader>> {
        let fd = self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(Box::new(LocalDirReader {
            dir: rustix::fs::Dir::new(fd)?,
            done: false,
        }))
    }

    fn mkdir(&self, path: &ObjectPath, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode & MODE_BITS))?;
        Ok(())
    }

    fn rmdir(&self, path: &ObjectPath) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?;
        Ok(())
    }

    fn remove(&self, path: &ObjectPath) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
        Ok(())
    }

    fn rename(&self, from: &ObjectPath, to: &ObjectPath, replace: bool) -> io::Result<()> {
        let _moving = self.link_guard();
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        self.check_move(&from_dir, from_name, &to_dir)?;
        let flags = if replace {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags)?;
        Ok(())
    }

    fn hard_link(&self, existing: &ObjectPath, link: &ObjectPath) -> io::Result<()> {
        let _moving = self.link_guard();
        let (from_dir, from_name) = self.parent_of(existing)?;
        let (to_dir, to_name) = self.parent_of(link)?;
        // A hard link to a symlink is that link in a second place (linkat
        // does not follow it); a directory cannot be hard-linked.
        self.check_move(&from_dir, from_name, &to_dir)?;
        rustix::fs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty())?;
        Ok(())
    }

    fn symlink(&self, target: &str, link: &ObjectPath) -> io::Result<()> {
        let _making = self.link_guard();
        let (dir, name) = self.parent_of(link)?;
        let text = links::link_text(&self.real_components(&dir)?, target)?;
        rustix::fs::symlinkat(text.as_str(), &dir, name)?;
        Ok(())
    }

    fn read_link(&self, path: &ObjectPath) -> io::Result<String> {
        let (dir, name) = self.parent_of(path)?;
        let target = rustix::fs::readlinkat(&dir, name, Vec::new())?;
        target
            .into_string()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "link target is not UTF-8"))
    }

    fn set_permissions(&self, path: &ObjectPath, mode: u32) -> io::Result<()> {
        let fd = self.resolve(path, OFlags::PATH)?;
        self.refuse_root(&fd)?;
        rustix::fs::chmod(
            Self::proc_path(&fd).as_str(),
            Mode::from_raw_mode(mode & MODE_BITS),
        )?;
        Ok(())
    }

    fn set_times(&self, path: &ObjectPath, atime: i64, mtime: i64) -> io::Result<()> {
        let fd = self.resolve(path, OFlags::PATH)?;
        self.refuse_root(&fd)?;
        rustix::fs::utimensat(
            rustix::fs::CWD,
            Self::proc_path(&fd).as_str(),
            &timestamps(atime, mtime),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    fn space(&self, path: &ObjectPath) -> io::Result<SpaceInfo> {
        let fd = self.resolve(path, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let s = rustix::fs::fstatvfs(fd.as_fd())?;
        Ok(SpaceInfo {
            block_size: s.f_bsize,
            fragment_size: s.f_frsize,
            blocks: s.f_blocks,
            blocks_free: s.f_bfree,
            blocks_avail: s.f_bavail,
            files: s.f_files,
            files_free: s.f_ffree,
            files_avail: s.f_favail,
            fsid: s.f_fsid,
            flags: s.f_flag.bits(),
            name_max: s.f_namemax,
        })
    }
}

/// What [`sweep_staged`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Abandoned staged uploads removed.
    pub removed: u64,
    /// Staged uploads left alone because a live process still holds them.
    pub in_use: u64,
    /// Abandoned ones kept because `inspect` failed on them.
    pub failed: u64,
}

/// Removes staged uploads abandoned by a server that stopped without
/// closing them (killed, or the machine lost power), under `dir`
/// recursively. Such leftovers are never visible to clients (reserved
/// names), but they hold space.
///
/// Meant to run at start-up before any session: symlinks are not followed
/// and only regular files with the reserved staging prefix are removed. An
/// upload still open in another process on the same directory holds an
/// exclusive `flock` on its staged file and is kept, as is any staged file
/// modified since `started` (one that process may have created but not yet
/// locked). Errors on single entries are skipped: a sweep is best effort.
///
/// Each abandoned file is first given to `inspect` with its directory and
/// the open (locked) file, so that the layer above can use what it holds
/// (see `store::journal`); if that fails, the file is kept.
pub fn sweep_staged(
    dir: &Path,
    started: SystemTime,
    inspect: &mut dyn FnMut(&Path, &File) -> io::Result<()>,
) -> io::Result<SweepReport> {
    let mut report = SweepReport::default();
    let mut stack = vec![dir.to_path_buf()];
    let prefix = format!("{RESERVED_PREFIX}upload-");
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            // The entry's own type: a symlink to a directory is not followed.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if !kind.is_file() || !entry.file_name().as_bytes().starts_with(prefix.as_bytes()) {
                continue;
            }
            let path = entry.path();
            let Ok(fd) = rustix::fs::open(
                &path,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            let fresh = rustix::fs::fstat(&fd).is_ok_and(|st| {
                let mtime =
                    UNIX_EPOCH + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
                mtime >= started
            });
            let locked =
                rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_err();
            if fresh || locked {
                report.in_use += 1;
                continue;
            }
            if inspect(&d, &File::from(fd)).is_err() {
                report.failed += 1;
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                report.removed += 1;
            }
        }
    }
    Ok(report)
}

/// Seconds since the epoch for `t` (0 for times before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    fn staged_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(RESERVED_PREFIX))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn sweep_removes_abandoned_uploads_and_keeps_open_and_fresh_ones() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open_root(dir.path()).unwrap();
        storage
            .mkdir(&ObjectPath::from_components(["sub"]).unwrap(), 0o755)
            .unwrap();
        // Abandoned: the staged file's descriptor is gone (its process died).
        let gone = storage
            .stage(&ObjectPath::from_components(["sub", "a"]).unwrap())
            .unwrap();
        gone.blob.write_all_at(b"partial", 0).unwrap();
        drop(gone);
        // Still open: its upload goes on.
        let open = storage
            .stage(&ObjectPath::from_components(["b"]).unwrap())
            .unwrap();
        // Not a staged name: never touched.
        std::fs::write(dir.path().join("sub/user-file"), b"x").unwrap();
        assert_eq!(staged_names(&dir.path().join("sub")).len(), 1);

        // A sweep that started before the files were written keeps them all.
        let early = SystemTime::now() - Duration::from_secs(3600);
        let mut seen = 0;
        let mut count = |_: &Path, _: &File| {
            seen += 1;
            Ok(())
        };
        let r = sweep_staged(dir.path(), early, &mut count).unwrap();
        assert_eq!((r.removed, r.in_use, r.failed), (0, 2, 0));

        let r = sweep_staged(dir.path(), SystemTime::now(), &mut count).unwrap();
        assert_eq!((r.removed, r.in_use, r.failed), (1, 1, 0));
        assert_eq!(seen, 1, "inspect saw only the abandoned file");
        assert!(staged_names(&dir.path().join("sub")).is_empty());
        assert_eq!(
            staged_names(dir.path()).len(),
            1,
            "the open upload was removed"
        );
        assert!(dir.path().join("sub/user-file").exists());
        drop(open);
    }
}

#[cfg(test)]
mod dir_reader_tests {
    use super::*;

    #[test]
    fn a_directory_is_read_in_batches_of_lstat_entries() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open_root(dir.path()).unwrap();
        let sub = ObjectPath::from_components(["sub"]).unwrap();
        storage.mkdir(&sub, 0o755).unwrap();
        let base = dir.path().join("sub");
        for i in 0..250 {
            std::fs::write(base.join(format!("f{i:03}")), b"x").unwrap();
        }
        std::fs::create_dir(base.join("d")).unwrap();
        // A link out of the root is listed as the link, not followed.
        std::os::unix::fs::symlink("/etc", base.join("out")).unwrap();
        std::fs::write(base.join(".dropzone-upload-0"), b"staged").unwrap();

        let mut reader = storage.open_dir(&sub).unwrap();
        let mut all = Vec::new();
        loop {
            let batch = reader.next_batch(100).unwrap();
            assert!(batch.len() <= 100);
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        assert!(
            reader.next_batch(100).unwrap().is_empty(),
            "stays at the end"
        );
        assert_eq!(all.len(), 252, "the staged upload, . and .. are left out");
        let kind = |name: &str| all.iter().find(|(n, _)| n == name).unwrap().1.kind;
        assert_eq!(kind("out"), Kind::Symlink);
        assert_eq!(kind("d"), Kind::Dir);
        assert_eq!(kind("f007"), Kind::File);
        // read_dir, on top of it: the same entries, sorted.
        let listed = storage.read_dir(&sub).unwrap();
        let mut names: Vec<_> = all.into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(
            listed.into_iter().map(|(n, _)| n).collect::<Vec<_>>(),
            names
        );
    }

    #[test]
    fn only_a_directory_opens_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open_root(dir.path()).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let f = ObjectPath::from_components(["f"]).unwrap();
        let err = storage.open_dir(&f).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
        let missing = ObjectPath::from_components(["nope"]).unwrap();
        let err = storage.open_dir(&missing).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
