//! Durable, atomic creation and replacement of small secret files.
//!
//! Master key files ([`crate::kms::local`]), wrapped data key files
//! ([`crate::keys`]) and the users file ([`crate::auth::users_file`]) share
//! the same needs: mode 0600, never a half-written
//! file under the final name, and "create unless it exists" that is race-free
//! across threads and processes. A file is written in full to a temporary name
//! in the same directory and fsynced, then linked (create) or renamed
//! (replace) into place, and the directory is fsynced.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every secret file we write.
const FILE_MODE: u32 = 0o600;
/// Mode of directories we create to hold secret files.
const DIR_MODE: u32 = 0o700;
/// Prefix of temporary files. A leading dot keeps them out of listings that
/// parse file names (no valid user name or master key file starts with one).
const TMP_PREFIX: &str = ".tmp-";
/// Age after which a temporary file is taken to be left over from a crash:
/// a write takes milliseconds, an hour leaves a wide margin.
pub(crate) const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
/// An existing directory is kept as it is, with a warning if others can
/// access it.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o7777),
            "key directory is accessible to group or others; 0700 is expected"
        );
    }
    Ok(())
}

/// Reads a whole small file without following a symlink at its final
/// component. Files over `max_len` bytes are refused with `InvalidData`.
pub(crate) fn read_small(path: &Path, max_len: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{:o}", meta.mode() & 0o7777),
            "secret file is accessible to group or others; 0600 is expected"
        );
    }
    if meta.len() > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "file is {} bytes, more than the {max_len} expected",
                meta.len()
            ),
        ));
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // `take` guards against a file that grows while we read it.
    file.take(max_len + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file grew while being read",
        ));
    }
    Ok(buf)
}

/// Creates `dir/name` holding `contents` unless it already exists.
///
/// Returns `Ok(true)` if this call created it, `Ok(false)` if a file of that
/// name was already there (left untouched; `contents` was not written).
/// Concurrent callers, in this or other processes, see exactly one `true`.
pub(crate) fn create_new(dir: &Path, name: &str, contents: &[u8]) -> io::Result<bool> {
    let tmp = TempFile::write(dir, name, contents)?;
    let target = dir.join(name);
    // link() fails with EEXIST instead of replacing, which is the whole point.
    let created = match fs::hard_link(&tmp.path, &target) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(link_err) => {
            // Some filesystems have no hard links; renameat2(RENAME_NOREPLACE)
            // gives the same guarantee where it is supported.
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &tmp.path,
                rustix::fs::CWD,
                &target,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => true,
                Err(rustix::io::Errno::EXIST) => false,
                Err(_) => return Err(link_err),
            }
        }
    };
    drop(tmp); // removes the temporary name (a no-op if it was renamed)
    if created {
        sync_dir(dir)?;
    }
    Ok(created)
}

/// Replaces (or creates) `dir/name` with `contents` atomically: a reader sees
/// either the old file or the new one, whole.
pub(crate) fn replace(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = TempFile::write(dir, name, contents)?;
    fs::rename(&tmp.path, dir.join(name))?;
    drop(tmp);
    sync_dir(dir)
}

/// Makes a directory entry change durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A fully written and fsynced temporary file, removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(dir: &Path, name: &str, contents: &[u8]) -> io::Result<Self> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
        let path = dir.join(format!(
            "{TMP_PREFIX}{name}.{}.{}",
            std::process::id(),
            hex::encode(nonce)
        ));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        // From here on the guard removes the file if anything fails.
        let tmp = TempFile { path };
        file.write_all(contents)?;
        file.sync_all()?;
        Ok(tmp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %self.path.display(), error = %e,
                "could not remove temporary file"),
        }
    }
}

/// Removes temporary files older than `age` that a crashed process left in
/// `dir`. Younger ones may belong to a write in progress and are kept.
/// Failures are logged, not returned: leftovers are clutter, not a danger
/// (they hold nothing that the final files do not).
pub(crate) fn remove_stale_temps(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX));
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
        if is_temp && stale {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed stale temporary file"),
                Err(e) => tracing::warn!(file = %path.display(), error = %e,
                    "could not remove stale temporary file"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn create_new_creates_once_and_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        assert!(create_new(dir.path(), "a", b"first").unwrap());
        assert!(!create_new(dir.path(), "a", b"second").unwrap());
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"first");
        let mode = fs::metadata(dir.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(entries(dir.path()), ["a"]);
    }

    #[test]
    fn replace_overwrites_without_leaving_temps() {
        let dir = tempfile::tempdir().unwrap();
        replace(dir.path(), "a", b"one").unwrap();
        replace(dir.path(), "a", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"two");
        assert_eq!(entries(dir.path()), ["a"]);
    }

    #[test]
    fn read_small_refuses_large_files_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big"), [0u8; 100]).unwrap();
        assert!(read_small(&dir.path().join("big"), 99).is_err());
        assert_eq!(read_small(&dir.path().join("big"), 100).unwrap().len(), 100);
        std::os::unix::fs::symlink("big", dir.path().join("link")).unwrap();
        assert!(read_small(&dir.path().join("link"), 1000).is_err());
    }

    #[test]
    fn stale_temps_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmp-a.key.1.00"), b"x").unwrap();
        fs::write(dir.path().join("a.key"), b"x").unwrap();
        remove_stale_temps(dir.path(), std::time::Duration::from_secs(3600));
        assert_eq!(entries(dir.path()), [".tmp-a.key.1.00", "a.key"]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        remove_stale_temps(dir.path(), std::time::Duration::from_millis(1));
        assert_eq!(entries(dir.path()), ["a.key"]);
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("x/y");
        create_private_dir(&sub).unwrap();
        let mode = fs::metadata(&sub).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        create_private_dir(&sub).unwrap();
    }
}
