//! Symlinks that stay inside the user's root for every program.
//!
//! Dropzone itself resolves paths with `RESOLVE_IN_ROOT`, so no link can
//! take *it* outside the root. Host tools do not: a backup run with `-L`,
//! a scanner or a root cron job follows a link on disk from the real `/`.
//! The store therefore keeps one invariant for every link it makes:
//!
//! > a relative target's `..` components form a leading run of at most
//! > the depth of the link's directory (its real depth below the root),
//! > and every later component is a name.
//!
//! Such a link climbs to a real directory inside the root, then only
//! descends; each name it descends through is a real entry or another
//! link that keeps the invariant, so by induction it never leaves the
//! root, whatever the tree looks like later. The only changes that can
//! break it move a link closer to the root: renaming or hard-linking a
//! symlink, and renaming a directory to a shallower depth. Those are
//! checked here ([`LocalStorage::check_move`]); a target with `..` after
//! a name is refused (its reach would depend on what the names become);
//! an absolute target is stored relative to the link's real directory.
//!
//! Every operation that creates a link or moves one takes the root's
//! link lock, shared by all sessions of the user in this process, so that
//! no check can race with a move.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use super::LocalStorage;
use crate::sync::lock;

/// Most entries looked at when a directory is renamed to a shallower
/// depth: beyond it the rename is refused rather than walk on (a client's
/// single request must not make the server do unbounded work).
pub const MAX_LINK_CHECK_ENTRIES: usize = 10_000;

/// A change the store refuses because it would let something reach past
/// the user's root on the host; the text is for the client (no host path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// An error of kind `PermissionDenied` carrying a [`Refused`] message.
pub fn refused(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused(message.into()))
}

/// How a symlink target climbs, judged by its text alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Climb {
    /// An absolute target.
    Absolute,
    /// A relative target whose `..` components (if any) all come first:
    /// this many of them.
    Leading(usize),
    /// A relative target with a `..` after a name; `most` is how far it
    /// climbs if every name is a real directory.
    Inner {
        /// The lexical climb.
        most: usize,
    },
}

/// How `target` climbs (`.` and empty components change nothing).
pub fn climb(target: &str) -> Climb {
    if target.starts_with('/') {
        return Climb::Absolute;
    }
    let (mut level, mut lowest, mut named, mut inner) = (0i64, 0i64, false, false);
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                inner |= named;
                level -= 1;
                lowest = lowest.min(level);
            }
            _ => {
                named = true;
                level += 1;
            }
        }
    }
    let most = usize::try_from(-lowest).unwrap_or(usize::MAX);
    if inner {
        Climb::Inner { most }
    } else {
        Climb::Leading(most)
    }
}

/// What the client is told when a link would point outside.
const OUTSIDE: &str = "symlink target points outside your directory";

/// The text to store for a link made in the directory `here` (its real
/// components below the root) with the client's `target`: a relative
/// target as written, an absolute one (a normalised path inside the root)
/// rewritten relative to `here`.
pub(super) fn link_text(here: &[String], target: &str) -> io::Result<String> {
    match climb(target) {
        Climb::Absolute => {
            let dest: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
            if dest.iter().any(|p| super::check_name(p).is_err()) {
                return Err(refused(
                    "symlink target: an absolute target must be a plain path",
                ));
            }
            Ok(relative_path(here, &dest))
        }
        Climb::Leading(up) if up <= here.len() => Ok(target.to_owned()),
        Climb::Leading(_) => Err(refused(OUTSIDE)),
        Climb::Inner { .. } => Err(refused(
            "symlink target: \"..\" is accepted only at the start of a relative target \
             (write \"../../x\", not \"a/../x\")",
        )),
    }
}

/// The relative path from directory `from` to `to` (both below the root).
pub(super) fn relative_path(from: &[String], to: &[&str]) -> String {
    let common = from
        .iter()
        .zip(to)
        .take_while(|(x, y)| x.as_str() == **y)
        .count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// Refuses an existing link with `target` once it sits in a directory
/// `depth` levels below the root, if it would then climb out. Absolute
/// targets are left alone: the store never makes one (one planted on disk
/// points where it points wherever it moves).
fn check_moved_link(target: &[u8], depth: usize) -> io::Result<()> {
    let reach = match climb(&String::from_utf8_lossy(target)) {
        Climb::Absolute => return Ok(()),
        Climb::Leading(up) => up,
        Climb::Inner { most } => most,
    };
    if reach > depth {
        return Err(refused(
            "moving it there would leave a symlink pointing outside your directory",
        ));
    }
    Ok(())
}

/// Link locks by root (device, inode): every session of one user shares
/// one, sessions of other users never wait for it.
type LockTable = HashMap<(u64, u64), Weak<Mutex<()>>>;

static LINK_LOCKS: LazyLock<Mutex<LockTable>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The link lock of the root `root`.
pub(super) fn link_lock(root: &OwnedFd) -> io::Result<Arc<Mutex<()>>> {
    let st = rustix::fs::fstat(root)?;
    let key = (st.st_dev, st.st_ino);
    let mut table = lock(&LINK_LOCKS);
    if let Some(lock) = table.get(&key).and_then(Weak::upgrade) {
        return Ok(lock);
    }
    table.retain(|_, w| w.strong_count() > 0);
    let lock = Arc::new(Mutex::new(()));
    table.insert(key, Arc::downgrade(&lock));
    Ok(lock)
}

fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

impl LocalStorage {
    /// Holds the root's link lock (a panic elsewhere leaves nothing to
    /// repair: the lock guards no data).
    pub(super) fn link_guard(&self) -> MutexGuard<'_, ()> {
        lock(&self.links)
    }

    /// Refuses to act on the root itself through `fd` (reached by its own
    /// path or through a link to it).
    pub(super) fn refuse_root(&self, fd: &OwnedFd) -> io::Result<()> {
        if identity(fd)? == identity(&self.root)? {
            return Err(refused("the root of your directory cannot be changed"));
        }
        Ok(())
    }

    /// The real components below the root of the directory `dir`: what the
    /// kernel names it, checked by resolving that name again from the root
    /// without following any link and finding the same directory.
    pub(super) fn real_components(&self, dir: &OwnedFd) -> io::Result<Vec<String>> {
        let root = rustix::fs::readlink(Self::proc_path(&self.root).as_str(), Vec::new())?;
        let here = rustix::fs::readlink(Self::proc_path(dir).as_str(), Vec::new())?;
        let (root, here) = (root.as_bytes(), here.as_bytes());
        let rest = if root == b"/" {
            Some(here)
        } else {
            here.strip_prefix(root)
                .filter(|r| r.is_empty() || r.starts_with(b"/"))
        };
        let not_under = || io::Error::other("a directory is not under the user's root");
        let rest = rest.ok_or_else(not_under)?;
        let parts = rest
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8(p.to_vec()).map_err(|_| not_under()))
            .collect::<io::Result<Vec<String>>>()?;
        let relative = if parts.is_empty() {
            ".".to_owned()
        } else {
            parts.join("/")
        };
        let again = rustix::fs::openat2(
            &self.root,
            relative.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        )
        .map_err(|_| not_under())?;
        if identity(&again)? != identity(dir)? {
            return Err(not_under());
        }
        Ok(parts)
    }

    /// Refuses to move (rename, or hard-link) the entry `name` of
    /// `from_dir` into `to_dir` when a symlink would then climb out of the
    /// root: the entry itself if it is a link, or one below it if it is a
    /// directory moving closer to the root.
    pub(super) fn check_move(
        &self,
        from_dir: &OwnedFd,
        name: &str,
        to_dir: &OwnedFd,
    ) -> io::Result<()> {
        let st = rustix::fs::statat(from_dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let depth = self.real_components(to_dir)?.len();
                let target = rustix::fs::readlinkat(from_dir, name, Vec::new())?;
                check_moved_link(target.as_bytes(), depth)
            }
            FileType::Directory => {
                let old = self.real_components(from_dir)?.len();
                let new = self.real_components(to_dir)?.len();
                if new >= old {
                    // Links below climb no further than before.
                    return Ok(());
                }
                let dir = rustix::fs::openat(
                    from_dir,
                    name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                check_subtree(&dir, new + 1)
            }
            _ => Ok(()),
        }
    }
}

/// Checks every symlink below `top` (which will sit `top_depth` levels
/// below the root), looking at no more than [`MAX_LINK_CHECK_ENTRIES`]
/// entries. Subdirectories are opened from `top` by name without following
/// links, one at a time (no descriptor per pending directory).
fn check_subtree(top: &OwnedFd, top_depth: usize) -> io::Result<()> {
    let mut pending = vec![(PathBuf::from("."), top_depth)];
    let mut seen = 0usize;
    while let Some((relative, depth)) = pending.pop() {
        let fd = rustix::fs::openat2(
            top,
            &relative,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        )?;
        let mut dir = rustix::fs::Dir::read_from(&fd)?;
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let raw = entry.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            seen += 1;
            if seen > MAX_LINK_CHECK_ENTRIES {
                return Err(refused(format!(
                    "the directory holds more than {MAX_LINK_CHECK_ENTRIES} entries, too many \
                     to check its symlinks before moving it closer to your root; move it to a \
                     place at least as deep, or move its contents in parts"
                )));
            }
            let name = OsStr::from_bytes(raw);
            let kind = match entry.file_type() {
                FileType::Unknown => FileType::from_raw_mode(
                    rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
                ),
                kind => kind,
            };
            match kind {
                FileType::Directory => pending.push((relative.join(name), depth + 1)),
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&fd, name, Vec::new())?;
                    check_moved_link(target.as_bytes(), depth)?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{ObjectPath, Storage};
    use super::*;

    fn p(s: &str) -> ObjectPath {
        ObjectPath::from_components(s.split('/').filter(|c| !c.is_empty())).unwrap()
    }

    #[test]
    fn climb_reads_the_leading_run() {
        assert_eq!(climb("a/b"), Climb::Leading(0));
        assert_eq!(climb("../../x/y"), Climb::Leading(2));
        assert_eq!(climb("./.././/../x"), Climb::Leading(2));
        assert_eq!(climb(".."), Climb::Leading(1));
        assert_eq!(climb("/etc"), Climb::Absolute);
        assert_eq!(climb("a/../b"), Climb::Inner { most: 0 });
        assert_eq!(climb("../a/../../b"), Climb::Inner { most: 2 });
    }

    #[test]
    fn link_text_keeps_relative_targets_and_rewrites_absolute_ones() {
        let here = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(link_text(&here, "../../x").unwrap(), "../../x");
        assert_eq!(link_text(&here, "./c//d").unwrap(), "./c//d");
        assert_eq!(link_text(&here, "/a/z").unwrap(), "../z");
        assert_eq!(link_text(&here, "/a/b").unwrap(), ".");
        assert_eq!(link_text(&here, "/").unwrap(), "../..");
        assert_eq!(link_text(&[], "/etc/passwd").unwrap(), "etc/passwd");
        let inner = link_text(&here, "c/../../x").unwrap_err();
        assert!(inner.to_string().contains("only at the start"), "{inner}");
        let out = link_text(&here, "../../../x").unwrap_err();
        assert_eq!(out.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            out.get_ref()
                .and_then(|e| e.downcast_ref::<Refused>())
                .is_some()
        );
    }

    /// Whether every symlink under `root` resolves (by the host's rules)
    /// inside `root` or not at all.
    fn all_links_inside(root: &std::path::Path) -> Result<(), String> {
        let root = std::fs::canonicalize(root).unwrap();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let kind = e.file_type().unwrap();
                if kind.is_dir() {
                    stack.push(e.path());
                } else if kind.is_symlink()
                    && let Ok(real) = std::fs::canonicalize(e.path())
                    && !real.starts_with(&root)
                {
                    return Err(format!("{} -> {}", e.path().display(), real.display()));
                }
            }
        }
        Ok(())
    }

    fn tree() -> (tempfile::TempDir, LocalStorage, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("alice");
        std::fs::create_dir_all(dir.path().join("bob")).unwrap();
        std::fs::write(dir.path().join("bob/secret.txt"), b"bob's").unwrap();
        let s = LocalStorage::open_root(&root).unwrap();
        for d in ["d1", "d1/d2", "d1/d2/d3", "d1/d2/d3/d4"] {
            s.mkdir(&p(d), 0o755).unwrap();
        }
        (dir, s, root)
    }

    #[test]
    fn the_chain_through_a_link_cannot_reach_a_neighbour() {
        let (_dir, s, root) = tree();
        s.symlink("../../../..", &p("d1/d2/d3/d4/s")).unwrap();
        assert_eq!(s.read_link(&p("d1/d2/d3/d4/s")).unwrap(), "../../../..");
        let e = s
            .symlink("d1/d2/d3/d4/s/../bob/secret.txt", &p("l"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // One climb too many is refused; a link made through a linked
        // directory is judged by its real depth, not the client's path.
        assert!(s.symlink("../../../../..", &p("d1/d2/d3/d4/t")).is_err());
        s.symlink(".", &p("up")).unwrap();
        assert!(s.symlink("../../../..", &p("up/d1/d2/d3/x")).is_err());
        s.symlink("../../..", &p("up/d1/d2/d3/x")).unwrap();
        // Absolute targets are rewritten from the real directory.
        s.symlink("/x", &p("up/d1/d2/abs")).unwrap();
        assert_eq!(s.read_link(&p("d1/d2/abs")).unwrap(), "../../x");
        all_links_inside(&root).unwrap();
    }

    #[test]
    fn moves_that_would_let_a_link_climb_out_are_refused() {
        let (_dir, s, root) = tree();
        s.symlink("../../../..", &p("d1/d2/d3/d4/s")).unwrap();
        // The link itself, renamed or hard-linked up the tree.
        for replace in [false, true] {
            let e = s.rename(&p("d1/d2/d3/d4/s"), &p("s"), replace).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        }
        assert!(s.hard_link(&p("d1/d2/d3/d4/s"), &p("s")).is_err());
        assert!(s.hard_link(&p("d1/d2/d3/d4/s"), &p("d1/s")).is_err());
        // A directory holding it, moved shallower.
        let e = s.rename(&p("d1/d2/d3"), &p("d3"), false).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        // Deeper or level moves are fine, and so are links that fit.
        s.mkdir(&p("e1"), 0o755).unwrap();
        s.rename(&p("d1/d2"), &p("e1/d2"), false).unwrap();
        s.rename(&p("e1/d2/d3/d4/s"), &p("e1/d2/d3/s2"), false)
            .unwrap_err();
        s.mkdir(&p("e1/d2/d3/d4/d5"), 0o755).unwrap();
        s.rename(&p("e1/d2/d3/d4/s"), &p("e1/d2/d3/d4/d5/s"), false)
            .unwrap();
        s.hard_link(&p("e1/d2/d3/d4/d5/s"), &p("e1/d2/d3/d4/d5/s2"))
            .unwrap();
        s.symlink("x", &p("plain")).unwrap();
        s.rename(&p("plain"), &p("e1/d2/plain"), false).unwrap();
        s.rename(&p("e1/d2/plain"), &p("plain"), false).unwrap();
        all_links_inside(&root).unwrap();
    }

    #[test]
    fn a_huge_directory_is_not_walked_past_the_bound() {
        let (_dir, s, root) = tree();
        let big = root.join("d1/d2/big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..=MAX_LINK_CHECK_ENTRIES {
            std::fs::File::create(big.join(i.to_string())).unwrap();
        }
        let e = s.rename(&p("d1/d2/big"), &p("big"), false).unwrap_err();
        assert!(e.to_string().contains("too many"), "{e}");
        // Moving it deeper needs no walk.
        s.rename(&p("d1/d2/big"), &p("d1/d2/d3/big"), false)
            .unwrap();
    }

    #[test]
    fn the_root_cannot_be_chmodded_even_through_a_link() {
        let (_dir, s, _root) = tree();
        s.symlink(".", &p("self")).unwrap();
        for path in [p(""), p("self")] {
            let e = s.set_permissions(&path, 0o777).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert!(s.set_times(&path, 0, 0).is_err());
        }
        s.set_permissions(&p("d1"), 0o4755).unwrap();
        assert_eq!(s.meta(&p("d1"), false).unwrap().permissions, 0o755);
    }
}
