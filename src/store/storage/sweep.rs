//! Removing staged uploads that a stopped server left behind.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};

use super::RESERVED_PREFIX;

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

#[cfg(test)]
mod sweep_tests {
    use super::super::{LocalStorage, ObjectPath, Storage};
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
