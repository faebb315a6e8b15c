//! Linux users' own `~/.ssh/authorized_keys` (with `[auth] pam = true`).
//!
//! Only accounts in the system passwd database ([`lookup`]) have one. The
//! file is read only if OpenSSH's `StrictModes` would accept it
//! ([`load_authorized_keys`]): the file, and every directory from it up to
//! and including the home directory, must be owned by the user or by root
//! and must not be writable by group or others. Otherwise anyone who can
//! write one of them could add a key, and the file is refused as a whole,
//! with the reason. Lines are parsed as in the users file
//! ([`super::authorized_keys`]): a line with an option the server cannot
//! enforce is refused (and reported), the others are used.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::authorized_keys::{self, AuthorizedKey, KeyLineError};

/// Largest `authorized_keys` read: about ten thousand keys, far beyond a
/// real one, small enough that a user cannot make each login read gigabytes.
const MAX_FILE_LEN: u64 = 4 * 1024 * 1024;

/// Permission bits that make a path unsafe: writable by group or others.
const GROUP_OR_WORLD_WRITABLE: u32 = 0o022;

/// A Linux account from the system passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemAccount {
    /// The login name.
    pub name: String,
    /// The numeric user id.
    pub uid: u32,
    /// The home directory.
    pub home: PathBuf,
}

impl SystemAccount {
    /// Whether this is a superuser account (uid 0, whatever its name).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// `~/.ssh/authorized_keys`.
    pub fn authorized_keys_path(&self) -> PathBuf {
        self.home.join(".ssh").join("authorized_keys")
    }
}

/// Looks `name` up in the system passwd database (`getpwnam_r`, so NSS
/// sources such as LDAP count too). `Ok(None)`: no such account. Blocking.
pub fn lookup(name: &str) -> io::Result<Option<SystemAccount>> {
    if name.is_empty() || name.contains('\0') {
        return Ok(None);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(Some(SystemAccount {
            name: user.name,
            uid: user.uid.as_raw(),
            home: user.dir,
        })),
        Ok(None) => Ok(None),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// Why a user's `authorized_keys` file is not used.
#[derive(Debug, thiserror::Error)]
pub enum SystemKeysError {
    /// The file or a directory above it could not be examined or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A path is not what it should be (the file not a regular file, a
    /// parent not a directory, or the file changed while it was checked).
    #[error("{}: {what}", path.display())]
    NotUsable {
        /// The path at fault.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// A path is owned by someone other than the user or root.
    #[error(
        "bad ownership of {}: owned by uid {owner}, not by the user (uid {user}) or root",
        path.display()
    )]
    BadOwner {
        /// The path at fault.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user's uid.
        user: u32,
    },
    /// A path is writable by group or others.
    #[error(
        "bad permissions on {}: mode {mode:04o} is writable by group or others",
        path.display()
    )]
    Writable {
        /// The path at fault.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than 4 MiB.
    #[error("{} is larger than {MAX_FILE_LEN} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

/// The keys of one user's `authorized_keys` file.
#[derive(Default)]
pub struct SystemKeys {
    /// Every line that parsed.
    pub keys: Vec<AuthorizedKey>,
    /// Each refused line: its 1-based number and the reason.
    pub refused: Vec<(usize, KeyLineError)>,
}

impl fmt::Debug for SystemKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemKeys")
            .field("keys", &self.keys.len())
            .field("refused", &self.refused)
            .finish()
    }
}

/// Checks one path against the StrictModes rules: owned by `uid` or root,
/// not writable by group or others.
fn check_owner_and_mode(path: &Path, meta: &Metadata, uid: u32) -> Result<(), SystemKeysError> {
    check_owner_and_mode_bits(path, meta.uid(), meta.mode(), uid)
}

/// [`check_owner_and_mode`] on the raw owner and mode.
fn check_owner_and_mode_bits(
    path: &Path,
    owner: u32,
    mode: u32,
    uid: u32,
) -> Result<(), SystemKeysError> {
    if owner != uid && owner != 0 {
        return Err(SystemKeysError::BadOwner {
            path: path.to_owned(),
            owner,
            user: uid,
        });
    }
    if mode & GROUP_OR_WORLD_WRITABLE != 0 {
        return Err(SystemKeysError::Writable {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SystemKeysError + '_ {
    move |source| SystemKeysError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads `account`'s `~/.ssh/authorized_keys` if it passes the StrictModes
/// checks (see the module documentation). A missing file (or `.ssh`, or
/// home) is no keys, not an error. Blocking.
///
/// As OpenSSH does, symbolic links are resolved first, and the directories
/// checked are those above the file's real location, up to the user's
/// (real) home directory, or up to `/` for a file outside it. The file is
/// then opened without following links and must be the one checked.
pub fn load_authorized_keys(account: &SystemAccount) -> Result<SystemKeys, SystemKeysError> {
    let path = account.authorized_keys_path();
    let real = match std::fs::canonicalize(&path) {
        Ok(real) => real,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SystemKeys::default()),
        Err(e) => return Err(io_error(&path)(e)),
    };
    let home = std::fs::canonicalize(&account.home).map_err(io_error(&account.home))?;

    let meta = std::fs::metadata(&real).map_err(io_error(&real))?;
    if !meta.is_file() {
        return Err(SystemKeysError::NotUsable {
            path: real,
            what: "not a regular file",
        });
    }
    check_owner_and_mode(&real, &meta, account.uid)?;
    for dir in real.ancestors().skip(1) {
        let dir_meta = std::fs::metadata(dir).map_err(io_error(dir))?;
        if !dir_meta.is_dir() {
            return Err(SystemKeysError::NotUsable {
                path: dir.to_owned(),
                what: "not a directory",
            });
        }
        check_owner_and_mode(dir, &dir_meta, account.uid)?;
        if dir == home {
            break;
        }
    }

    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
        .map_err(io_error(&real))?;
    let opened = file.metadata().map_err(io_error(&real))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) || !opened.is_file() {
        return Err(SystemKeysError::NotUsable {
            path: real,
            what: "changed while it was being checked",
        });
    }
    check_owner_and_mode(&real, &opened, account.uid)?;
    let text = read_limited(&mut file, &real)?;
    let (keys, refused) = authorized_keys::parse_file(&String::from_utf8_lossy(&text));
    Ok(SystemKeys { keys, refused })
}

fn read_limited(file: &mut File, path: &Path) -> Result<Vec<u8>, SystemKeysError> {
    let mut text = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut text)
        .map_err(io_error(path))?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(SystemKeysError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A home directory in a fresh temporary directory, owned by us, with
    /// `.ssh/authorized_keys` holding `text`, all with OpenSSH's usual modes.
    fn home_with(text: &str) -> (tempfile::TempDir, SystemAccount) {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        chmod(&home, 0o755);
        chmod(&home.join(".ssh"), 0o700);
        let file = home.join(".ssh/authorized_keys");
        std::fs::write(&file, text).unwrap();
        chmod(&file, 0o600);
        let account = SystemAccount {
            name: "someone".into(),
            uid: rustix::process::geteuid().as_raw(),
            home,
        };
        (dir, account)
    }

    #[test]
    fn reads_keys_and_reports_refused_lines() {
        let text = format!(
            "# my keys\n{KEY} me@laptop\n\ncommand=\"/bin/false\" {KEY}\nfrom=\"10.0.0.0/8\" {KEY}\n"
        );
        let (_dir, account) = home_with(&text);
        let loaded = load_authorized_keys(&account).unwrap();
        assert_eq!(loaded.keys.len(), 2);
        assert_eq!(loaded.refused.len(), 1);
        assert_eq!(loaded.refused[0].0, 4);
        assert!(matches!(
            loaded.refused[0].1,
            KeyLineError::UnsupportedOption(_)
        ));
    }

    #[test]
    fn missing_file_or_directory_is_no_keys() {
        let (_dir, account) = home_with(KEY);
        std::fs::remove_file(account.authorized_keys_path()).unwrap();
        assert!(load_authorized_keys(&account).unwrap().keys.is_empty());
        std::fs::remove_dir(account.home.join(".ssh")).unwrap();
        assert!(load_authorized_keys(&account).unwrap().keys.is_empty());
        let gone = SystemAccount {
            home: account.home.join("nowhere"),
            ..account
        };
        assert!(load_authorized_keys(&gone).unwrap().keys.is_empty());
    }

    #[test]
    fn writable_file_or_directory_is_refused() {
        for (rel, mode) in [
            (".ssh/authorized_keys", 0o620),
            (".ssh/authorized_keys", 0o602),
            (".ssh", 0o770),
            (".ssh", 0o707),
            ("", 0o775),
            ("", 0o777),
        ] {
            let (_dir, account) = home_with(KEY);
            let path = account.home.join(rel);
            let path = path.to_str().unwrap().trim_end_matches('/');
            chmod(Path::new(path), mode);
            let err = load_authorized_keys(&account).unwrap_err();
            assert!(
                matches!(&err, SystemKeysError::Writable { mode: m, .. } if *m == mode),
                "{rel} {mode:o}: {err}"
            );
            assert!(err.to_string().contains("writable by group or others"));
        }
        // Directories above the home are not the user's business...
        let (dir, account) = home_with(KEY);
        chmod(dir.path(), 0o777);
        assert_eq!(load_authorized_keys(&account).unwrap().keys.len(), 1);
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn a_symlink_is_checked_where_it_points() {
        let (dir, account) = home_with("");
        let elsewhere = dir.path().join("shared");
        std::fs::create_dir(&elsewhere).unwrap();
        chmod(&elsewhere, 0o777);
        let target = elsewhere.join("keys");
        std::fs::write(&target, KEY).unwrap();
        chmod(&target, 0o644);
        let link = account.authorized_keys_path();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // ...unless the file really lives there: then every directory up to
        // `/` counts, and `shared` (0777) is refused.
        let err = load_authorized_keys(&account).unwrap_err();
        assert!(
            matches!(&err, SystemKeysError::Writable { path, .. } if path.ends_with("shared")),
            "{err}"
        );
    }

    #[test]
    fn not_a_regular_file_is_refused() {
        let (_dir, account) = home_with("");
        let path = account.authorized_keys_path();
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        chmod(&path, 0o700);
        assert!(matches!(
            load_authorized_keys(&account),
            Err(SystemKeysError::NotUsable { .. })
        ));
    }

    #[test]
    fn owner_must_be_the_user_or_root() {
        let p = Path::new("/home/u/.ssh");
        assert!(check_owner_and_mode_bits(p, 1000, 0o40700, 1000).is_ok());
        assert!(check_owner_and_mode_bits(p, 0, 0o40755, 1000).is_ok());
        let err = check_owner_and_mode_bits(p, 1001, 0o40700, 1000).unwrap_err();
        assert!(matches!(
            err,
            SystemKeysError::BadOwner {
                owner: 1001,
                user: 1000,
                ..
            }
        ));
        assert!(err.to_string().contains("owned by uid 1001"), "{err}");
        assert!(check_owner_and_mode_bits(p, 1000, 0o41777, 1000).is_err());
    }

    #[test]
    fn too_large_is_refused() {
        let (_dir, account) = home_with("");
        let file = File::create(account.authorized_keys_path()).unwrap();
        file.set_len(MAX_FILE_LEN + 1).unwrap();
        assert!(matches!(
            load_authorized_keys(&account),
            Err(SystemKeysError::TooLarge { .. })
        ));
    }

    #[test]
    fn lookup_finds_root_and_not_nonsense() {
        let root = lookup("root").unwrap().unwrap();
        assert!(root.is_root());
        assert_eq!(root.name, "root");
        assert_eq!(lookup("no-such-user-dz").unwrap(), None);
        assert_eq!(lookup("").unwrap(), None);
        assert_eq!(lookup("a\0b").unwrap(), None);
    }
}
