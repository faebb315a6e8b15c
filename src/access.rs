//! What a user may do in their directory: the ten permissions, the roles
//! that preset them, and the one check every SFTP and scp request passes.
//!
//! A users-file entry has a [`Role`] (`full` by default) and may add
//! permissions to it; [`Permissions`] is the resulting set. The protocols
//! ask [`Access::check`] for the permission an operation needs before they
//! touch the store, so a refused operation changes nothing; the refusal
//! ([`Denied`]) names the missing permission for the client's notice and
//! the audit log. [`Access`] asks the SSH layer for the user's current set
//! at each check, so a change to the users file applies to a running
//! session from its next request.
//!
//! Which permission each request needs:
//!
//! | permission  | SFTP                                                   | scp                  |
//! |-------------|--------------------------------------------------------|----------------------|
//! | `list`      | OPENDIR, READDIR                                        | `-f -r` (directory)  |
//! | `download`  | OPEN for reading, copy-data                             | `-f` (each file)     |
//! | `upload`    | OPEN for writing of a file that does not exist          | `-t` (new file)      |
//! | `overwrite` | OPEN for writing of an existing file; SETSTAT size; posix-rename over a file | `-t` (existing file) |
//! | `delete`    | REMOVE                                                  |                      |
//! | `rename`    | RENAME, posix-rename                                    |                      |
//! | `mkdir`     | MKDIR                                                   | `-t -r` (new directory) |
//! | `rmdir`     | RMDIR                                                   |                      |
//! | `symlink`   | SYMLINK, hardlink@openssh.com                           |                      |
//! | `chmod`     | SETSTAT, FSETSTAT, lsetstat of mode or times            |                      |
//!
//! STAT, LSTAT, REALPATH, READLINK and statvfs are always allowed: clients
//! need them to find their way (OpenSSH's `put` stats the target first).
//! Requests on an open handle (READ, WRITE, CLOSE) were allowed when the
//! handle was opened; FSETSTAT and copy-data are checked again.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// One thing a user may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// List directories.
    List,
    /// Read files.
    Download,
    /// Create new files.
    Upload,
    /// Replace or modify existing files (including append and resume).
    Overwrite,
    /// Remove files.
    Delete,
    /// Rename files and directories.
    Rename,
    /// Create directories.
    Mkdir,
    /// Remove directories.
    Rmdir,
    /// Create symbolic (and hard) links.
    Symlink,
    /// Change modes and times.
    Chmod,
}

impl Permission {
    /// Every permission, in the order they are written.
    pub const ALL: [Permission; 10] = [
        Permission::List,
        Permission::Download,
        Permission::Upload,
        Permission::Overwrite,
        Permission::Delete,
        Permission::Rename,
        Permission::Mkdir,
        Permission::Rmdir,
        Permission::Symlink,
        Permission::Chmod,
    ];

    /// The name in the users file, on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Permission::List => "list",
            Permission::Download => "download",
            Permission::Upload => "upload",
            Permission::Overwrite => "overwrite",
            Permission::Delete => "delete",
            Permission::Rename => "rename",
            Permission::Mkdir => "mkdir",
            Permission::Rmdir => "rmdir",
            Permission::Symlink => "symlink",
            Permission::Chmod => "chmod",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a permission, or not a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownName {
    /// Not one of [`Permission::ALL`].
    #[error(
        "unknown permission {0:?} (expected list, download, upload, overwrite, delete, rename, mkdir, rmdir, symlink, chmod)"
    )]
    Permission(String),
    /// Not one of the [`Role`]s.
    #[error("unknown role {0:?} (expected full, read-only or upload-only)")]
    Role(String),
}

impl FromStr for Permission {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownName::Permission(s.chars().take(64).collect()))
    }
}

/// A set of [`Permission`]s. Written as a comma-separated list of names
/// (`list,upload,mkdir`; empty for none).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u16);

impl Permissions {
    /// No permission at all.
    pub const NONE: Permissions = Permissions(0);

    /// Every permission.
    pub fn all() -> Self {
        Self::of(&Permission::ALL)
    }

    /// The set of `list`.
    pub fn of(list: &[Permission]) -> Self {
        Permissions(list.iter().fold(0, |bits, p| bits | p.bit()))
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Both sets together.
    pub fn union(self, other: Permissions) -> Self {
        Permissions(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permissions in the set, in [`Permission::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// The first of `needed` that the set lacks, if any.
    pub fn missing(self, needed: &[Permission]) -> Option<Permission> {
        needed.iter().copied().find(|p| !self.contains(*p))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Permission::name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

impl FromStr for Permissions {
    type Err = UnknownName;

    /// A comma-separated list; spaces around names and empty items are
    /// ignored, so `""` is the empty set.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let list = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(Permission::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Permissions::of(&list))
    }
}

/// A preset of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Everything (the default, and Linux users').
    #[default]
    Full,
    /// `list` and `download`.
    ReadOnly,
    /// The drop box: `list`, `upload` and `mkdir`; a file once uploaded
    /// cannot be read, replaced, removed or renamed.
    UploadOnly,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Full, Role::ReadOnly, Role::UploadOnly];

    /// The name in the users file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Full => "full",
            Role::ReadOnly => "read-only",
            Role::UploadOnly => "upload-only",
        }
    }

    /// The role's permissions.
    pub fn permissions(self) -> Permissions {
        use Permission as P;
        match self {
            Role::Full => Permissions::all(),
            Role::ReadOnly => Permissions::of(&[P::List, P::Download]),
            Role::UploadOnly => Permissions::of(&[P::List, P::Upload, P::Mkdir]),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownName::Role(s.chars().take(64).collect()))
    }
}

/// An operation refused because the user lacks `missing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: this account may not {} (it lacks the `{missing}` permission)", action(*.missing))]
pub struct Denied {
    /// The permission the operation needed.
    pub missing: Permission,
}

/// What a permission allows, as a verb phrase for messages.
fn action(p: Permission) -> &'static str {
    match p {
        Permission::List => "list directories",
        Permission::Download => "download",
        Permission::Upload => "upload new files",
        Permission::Overwrite => "replace or modify existing files",
        Permission::Delete => "delete files",
        Permission::Rename => "rename",
        Permission::Mkdir => "create directories",
        Permission::Rmdir => "remove directories",
        Permission::Symlink => "create links",
        Permission::Chmod => "change modes or times",
    }
}

/// The user's current permissions, asked at every check.
pub type PermissionSource = Arc<dyn Fn() -> Permissions + Send + Sync>;

/// The one permission check of a session (SFTP or scp).
#[derive(Clone)]
pub struct Access {
    current: PermissionSource,
}

impl Access {
    /// Checks against what `current` returns at each check.
    pub fn new(current: PermissionSource) -> Self {
        Access { current }
    }

    /// A fixed set (tests, tools).
    pub fn fixed(permissions: Permissions) -> Self {
        Access::new(Arc::new(move || permissions))
    }

    /// Everything allowed.
    pub fn full() -> Self {
        Access::fixed(Permissions::all())
    }

    /// The user's permissions now.
    pub fn current(&self) -> Permissions {
        (self.current)()
    }

    /// Whether the user has `p` now.
    pub fn allows(&self, p: Permission) -> bool {
        self.current().contains(p)
    }

    /// `Ok` if the user has every permission in `needed` now; else the
    /// first one missing. Call it before the operation touches anything.
    pub fn check(&self, needed: &[Permission]) -> Result<(), Denied> {
        match self.current().missing(needed) {
            None => Ok(()),
            Some(missing) => Err(Denied { missing }),
        }
    }

    /// The check for opening a file to write it: `overwrite` if it exists,
    /// `upload` if not. `exists` is asked only when the user does not have
    /// both. `Ok(true)` means the file must be created exclusively: the
    /// user may not overwrite, so a file made meanwhile (by another
    /// session) must make the open fail rather than be replaced.
    pub fn check_write<E: From<Denied>>(
        &self,
        exists: impl FnOnce() -> Result<bool, E>,
    ) -> Result<bool, E> {
        let granted = self.current();
        let needed = match (
            granted.contains(Permission::Upload),
            granted.contains(Permission::Overwrite),
        ) {
            (true, true) => return Ok(false),
            _ if exists()? => Permission::Overwrite,
            _ => Permission::Upload,
        };
        match granted.missing(&[needed]) {
            Some(missing) => Err(Denied { missing }.into()),
            None => Ok(needed == Permission::Upload),
        }
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Access").field(&self.current()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU16, Ordering};

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.name().parse::<Permission>(), Ok(p));
        }
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>(), Ok(r));
        }
        let all = Permissions::all();
        assert_eq!(
            all.to_string(),
            "list,download,upload,overwrite,delete,rename,mkdir,rmdir,symlink,chmod"
        );
        assert_eq!(all.to_string().parse::<Permissions>(), Ok(all));
        assert_eq!(all.iter().count(), 10);
    }

    #[test]
    fn presets() {
        use Permission as P;
        assert_eq!(Role::default(), Role::Full);
        assert_eq!(Role::Full.permissions(), Permissions::all());
        assert_eq!(Role::ReadOnly.permissions().to_string(), "list,download");
        let drop_box = Role::UploadOnly.permissions();
        assert_eq!(drop_box.to_string(), "list,upload,mkdir");
        for p in [P::Download, P::Overwrite, P::Delete, P::Rename] {
            assert!(!drop_box.contains(p), "{p}");
        }
        let resumable = drop_box.union(Permissions::of(&[P::Overwrite]));
        assert!(resumable.contains(P::Overwrite) && resumable.contains(P::Upload));
    }

    #[test]
    fn parsing_lists() {
        assert_eq!("".parse::<Permissions>(), Ok(Permissions::NONE));
        assert_eq!(
            " overwrite , delete,".parse::<Permissions>(),
            Ok(Permissions::of(&[
                Permission::Overwrite,
                Permission::Delete
            ]))
        );
        let err = "upload,writ".parse::<Permissions>().unwrap_err();
        assert_eq!(err, UnknownName::Permission("writ".into()));
        assert!(err.to_string().contains("\"writ\""), "{err}");
        let err = "admin".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("unknown role \"admin\""), "{err}");
        assert!("Full".parse::<Role>().is_err());
    }

    #[test]
    fn check_names_the_missing_permission() {
        let access = Access::fixed(Role::UploadOnly.permissions());
        assert_eq!(access.check(&[Permission::Upload]), Ok(()));
        let denied = access
            .check(&[Permission::Upload, Permission::Download])
            .unwrap_err();
        assert_eq!(denied.missing, Permission::Download);
        assert_eq!(
            denied.to_string(),
            "permission denied: this account may not download (it lacks the `download` permission)"
        );
        assert!(Access::full().check(&Permission::ALL).is_ok());
        assert!(Access::fixed(Permissions::NONE).check(&[]).is_ok());
    }

    #[test]
    fn writes_need_upload_or_overwrite() {
        type R = Result<bool, Denied>;
        let exists = |yes: bool| move || -> R { Ok(yes) };
        let drop_box = Access::fixed(Role::UploadOnly.permissions());
        // A new file may be uploaded, created exclusively.
        assert_eq!(drop_box.check_write(exists(false)), Ok(true));
        assert_eq!(
            drop_box.check_write(exists(true)),
            Err(Denied {
                missing: Permission::Overwrite
            })
        );
        let read_only = Access::fixed(Role::ReadOnly.permissions());
        assert_eq!(
            read_only.check_write(exists(false)),
            Err(Denied {
                missing: Permission::Upload
            })
        );
        // With both, the file system is not asked.
        let full = Access::full();
        assert_eq!(
            full.check_write(|| -> R { panic!("asked whether the file exists") }),
            Ok(false)
        );
        // Overwrite without upload: existing files only.
        let fixer = Access::fixed(Permissions::of(&[Permission::Overwrite]));
        assert_eq!(fixer.check_write(exists(true)), Ok(false));
        assert!(fixer.check_write(exists(false)).is_err());
    }

    #[test]
    fn access_asks_at_each_check() {
        let bits = Arc::new(AtomicU16::new(Role::UploadOnly.permissions().0));
        let source = bits.clone();
        let access = Access::new(Arc::new(move || {
            Permissions(source.load(Ordering::Relaxed))
        }));
        assert!(!access.allows(Permission::Overwrite));
        let granted = Role::UploadOnly
            .permissions()
            .union(Permissions::of(&[Permission::Overwrite]));
        bits.store(granted.0, Ordering::Relaxed);
        assert!(access.allows(Permission::Overwrite));
    }
}
