//! The local filesystem backend: [`LocalStorage`] and its open files.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` against a
//! directory descriptor of the user's root, so `..` and symlinks resolve as
//! if the root were `/`; operations on a final name open the parent that
//! way and act on one component with the `*at` calls (see the parent
//! module's doc). Symlink rules live in `links`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};

use super::{
    Access, Blob, DIR_READ_BATCH, DirReader, Kind, Meta, ObjectPath, RESERVED_PREFIX, SpaceInfo,
    Staged, StagedToken, Storage, links,
};

/// The permission bits the store ever sets: no setuid, setgid or sticky
/// bit on anything a client makes.
const MODE_BITS: u32 = 0o777;

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
    pub(super) root: OwnedFd,
    /// Taken while a symlink is made or anything is moved (see `links`).
    pub(super) links: std::sync::Arc<std::sync::Mutex<()>>,
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
    pub(super) fn proc_path(fd: &OwnedFd) -> String {
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
            token: StagedToken::local(dir, name, target_name.to_owned()),
        })
    }

    fn commit(&self, token: StagedToken, exclusive: bool) -> io::Result<()> {
        let token = token.into_local()?;
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
        let Ok(token) = token.into_local() else {
            return;
        };
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
