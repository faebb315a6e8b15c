//! The users file (`[auth] users_file`, TOML), managed by `dropzone user ...`
//! and fine to edit by hand:
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password = "$argon2id$v=19$..."                         # optional
//! authorized_keys = ["ssh-ed25519 AAAA... alice@laptop"]  # optional
//! role = "upload-only"           # optional: full (default), read-only, upload-only
//! permissions = ["overwrite"]    # optional: added to the role's permissions
//! quota_bytes = 10737418240     # optional: most plaintext bytes stored
//! quota_files = 100000          # optional: most regular files stored
//! principals = ["alice", "ops"]  # optional: certificate principals accepted
//! ```
//!
//! Everything is checked at load: user names, duplicates, every key line
//! (with the [`super::authorized_keys`] parser, so a refused option stops the
//! server from starting rather than being ignored) and every password hash.
//! Key lines are kept as written, so saving does not rewrite them.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::authorized_keys::{AuthorizedKey, KeyLineError};
use super::password::{self, InvalidHash};
use crate::access::{Permission, Permissions, Role, UnknownName};
use crate::store::quota::Limits;
use crate::username::{InvalidUserName, UserName};

/// Written at the top of every saved file.
const HEADER: &str = "# Managed by `dropzone user ...`; hand edits are fine.\n\
                      # (Comments other than these two lines are not kept when it is saved.)\n\n";
/// Largest users file we read: far beyond any real one (a user with ten keys
/// is about 1 KiB), small enough that a wrong path cannot exhaust memory.
const MAX_FILE_LEN: u64 = 16 * 1024 * 1024;

/// The file as TOML sees it.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "user")]
    users: Vec<RawUser>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    authorized_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    principals: Vec<String>,
}

/// One validated user of the users file.
#[derive(Clone)]
pub struct UserEntry {
    name: UserName,
    password_hash: Option<String>,
    key_lines: Vec<String>,
    keys: Vec<AuthorizedKey>,
    access: UserAccess,
    /// The user's quota (`quota_bytes`, `quota_files`).
    quota: Limits,
    /// Certificate principals accepted for this user (empty: the name).
    principals: Vec<String>,
}

/// A user's role and the permissions added to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserAccess {
    /// The preset (`full` when the entry names none).
    pub role: Role,
    /// Whether the entry names its role (a `full` role written out is kept).
    pub role_written: bool,
    /// Permissions added to the role's (`permissions = [...]`).
    pub extra: Permissions,
}

impl UserAccess {
    /// What the user may do: the role's permissions and the extra ones.
    pub fn permissions(&self) -> Permissions {
        self.role.permissions().union(self.extra)
    }

    /// Parses the entry's `role` and `permissions`.
    fn parse(role: Option<&str>, permissions: &[String]) -> Result<Self, UnknownName> {
        let extra = permissions
            .iter()
            .map(|p| p.parse::<Permission>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UserAccess {
            role: role.map(str::parse).transpose()?.unwrap_or_default(),
            role_written: role.is_some(),
            extra: Permissions::of(&extra),
        })
    }
}

impl UserEntry {
    /// The user's name.
    pub fn name(&self) -> &UserName {
        &self.name
    }

    /// The Argon2 PHC hash of the user's password, if password login is set.
    pub fn password_hash(&self) -> Option<&str> {
        self.password_hash.as_deref()
    }

    /// The user's `authorized_keys` lines as written in the file.
    pub fn key_lines(&self) -> &[String] {
        &self.key_lines
    }

    /// The parsed form of [`UserEntry::key_lines`], in the same order.
    pub fn keys(&self) -> &[AuthorizedKey] {
        &self.keys
    }

    /// The user's role and extra permissions.
    pub fn access(&self) -> UserAccess {
        self.access
    }

    /// What the user may do.
    pub fn permissions(&self) -> Permissions {
        self.access.permissions()
    }

    /// The user's quota (no limit where the entry names none).
    pub fn quota(&self) -> Limits {
        self.quota
    }

    /// The certificate principals accepted for this user: a certificate
    /// must name one of them (empty: it must name the user).
    pub fn principals(&self) -> &[String] {
        &self.principals
    }

    fn new(
        name: &str,
        password_hash: Option<String>,
        key_lines: Vec<String>,
        access: UserAccess,
    ) -> Result<Self, UserError> {
        let fail = |problem| UserError {
            user: name.chars().take(64).collect(),
            problem,
        };
        let name = UserName::parse(name).map_err(|e| fail(UserProblem::Name(e)))?;
        if let Some(hash) = &password_hash {
            password::check_hash(hash).map_err(|e| fail(UserProblem::Password(e)))?;
        }
        let keys = key_lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                AuthorizedKey::parse(line).map_err(|error| {
                    fail(UserProblem::Key {
                        number: i + 1,
                        error,
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UserEntry {
            name,
            password_hash,
            key_lines,
            keys,
            access,
            quota: Limits::default(),
            principals: Vec::new(),
        })
    }
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password hash is offline-attackable: never in logs.
        f.debug_struct("UserEntry")
            .field("name", &self.name)
            .field("password", &self.password_hash.as_ref().map(|_| "<hash>"))
            .field("keys", &self.keys.len())
            .field("access", &self.access)
            .finish()
    }
}

/// What is wrong with one user's entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserProblem {
    /// The name is not a valid [`UserName`].
    #[error("{0}")]
    Name(InvalidUserName),
    /// Another entry has the same name.
    #[error("appears more than once")]
    Duplicate,
    /// [`UsersFile::add_user`] for a user that is already there.
    #[error("already exists")]
    Exists,
    /// An `authorized_keys` line (numbered from 1) is refused.
    #[error("authorized key {number}: {error}")]
    Key {
        /// 1-based position in the user's `authorized_keys` list.
        number: usize,
        /// Why it is refused.
        error: KeyLineError,
    },
    /// The password hash is not usable.
    #[error("password: {0}")]
    Password(InvalidHash),
    /// `role` or `permissions` names something unknown.
    #[error("{0}")]
    Access(UnknownName),
    /// [`UsersFile::set_access`] for a user that is not there.
    #[error("no such user")]
    Missing,
    /// A certificate principal is empty, too long, or has a comma, space
    /// or control character.
    #[error("principal {0:?}: expected 1-256 printable characters without commas or spaces")]
    Principal(String),
}

/// A refused user entry: the user's name (as written) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user {user:?}: {problem}")]
pub struct UserError {
    /// The name as written (shortened if very long).
    pub user: String,
    /// What is wrong.
    pub problem: UserProblem,
}

/// Why the users file cannot be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// The file exists but cannot be read.
    #[error("cannot read users file {}: {source}", path.display())]
    Read {
        /// The users file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file cannot be written.
    #[error("cannot write users file {}: {source}", path.display())]
    Write {
        /// The users file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Not valid TOML, or not the users file's shape. The message (from the
    /// TOML parser) names the line, column and key.
    #[error("users file {}: {message}", path.display())]
    Syntax {
        /// The users file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A user entry is invalid.
    #[error("users file {}: {error}", path.display())]
    User {
        /// The users file.
        path: PathBuf,
        /// The user and the problem.
        error: UserError,
    },
    /// The users could not be turned into TOML (not expected to happen).
    #[error("cannot serialise users file {}: {message}", path.display())]
    Serialize {
        /// The users file.
        path: PathBuf,
        /// The serialiser's message.
        message: String,
    },
}

/// The validated users file.
#[derive(Debug, Clone, Default)]
pub struct UsersFile {
    /// In file order, names unique.
    users: Vec<UserEntry>,
}

impl UsersFile {
    /// Loads and validates the users file. A missing file is an empty one
    /// (no users yet).
    pub fn load(path: &Path) -> Result<UsersFile, UsersFileError> {
        let text = match read_text(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(UsersFile::default()),
            Err(source) => {
                return Err(UsersFileError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::from_text(&text, path)
    }

    /// Parses and validates the text of a users file; `path` is where the
    /// text came from, for the error message.
    pub fn from_text(text: &str, path: &Path) -> Result<UsersFile, UsersFileError> {
        Self::parse(text).map_err(|e| e.at(path))
    }

    /// Parses and validates the text of a users file.
    fn parse(text: &str) -> Result<UsersFile, ParseError> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| ParseError::Syntax(e.to_string().trim_end().to_owned()))?;
        let mut file = UsersFile::default();
        for user in raw.users {
            let access =
                UserAccess::parse(user.role.as_deref(), &user.permissions).map_err(|e| {
                    ParseError::User(UserError {
                        user: user.name.chars().take(64).collect(),
                        problem: UserProblem::Access(e),
                    })
                })?;
            let mut entry = UserEntry::new(&user.name, user.password, user.authorized_keys, access)
                .map_err(ParseError::User)?;
            entry.principals =
                check_principals(&user.name, user.principals).map_err(ParseError::User)?;
            let entry = UserEntry {
                quota: Limits {
                    bytes: user.quota_bytes,
                    files: user.quota_files,
                },
                ..entry
            };
            if file.get(entry.name.as_str()).is_some() {
                return Err(ParseError::User(UserError {
                    user: user.name,
                    problem: UserProblem::Duplicate,
                }));
            }
            file.users.push(entry);
        }
        Ok(file)
    }

    /// The file's TOML text.
    fn to_text(&self) -> Result<String, toml::ser::Error> {
        let raw = RawFile {
            users: self
                .users
                .iter()
                .map(|u| RawUser {
                    name: u.name.as_str().to_owned(),
                    password: u.password_hash.clone(),
                    authorized_keys: u.key_lines.clone(),
                    role: (u.access.role_written || u.access.role != Role::Full)
                        .then(|| u.access.role.name().to_owned()),
                    permissions: u.access.extra.iter().map(|p| p.name().to_owned()).collect(),
                    quota_bytes: u.quota.bytes,
                    quota_files: u.quota.files,
                    principals: u.principals.clone(),
                })
                .collect(),
        };
        Ok(format!("{HEADER}{}", toml::to_string(&raw)?))
    }

    /// The file's text as [`UsersFile::save`] writes it; `path` is where it
    /// goes, for the error message.
    pub fn to_toml(&self, path: &Path) -> Result<String, UsersFileError> {
        self.to_text().map_err(|e| UsersFileError::Serialize {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Writes the file atomically: a temporary file beside it (mode 0600) is
    /// written and fsynced, then renamed over `path`, and the directory is
    /// fsynced. Readers see the old file or the new one, never a mix.
    /// Comments other than the standard header are not preserved.
    pub fn save(&self, path: &Path) -> Result<(), UsersFileError> {
        let text = self.to_toml(path)?;
        write_atomic(path, text.as_bytes()).map_err(|source| UsersFileError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Adds a user. `password_hash` is a PHC string from
    /// [`password::hash_password`]; each of `keys` is one `authorized_keys`
    /// line, checked now so that a key with an unsupported option is refused
    /// here rather than at the next server start. Surrounding whitespace of
    /// key lines is dropped.
    pub fn add_user(
        &mut self,
        name: &str,
        password_hash: Option<String>,
        keys: Vec<String>,
    ) -> Result<(), UserError> {
        self.add_user_with(name, password_hash, keys, UserAccess::default())
    }

    /// [`UsersFile::add_user`] with a role and extra permissions.
    pub fn add_user_with(
        &mut self,
        name: &str,
        password_hash: Option<String>,
        keys: Vec<String>,
        access: UserAccess,
    ) -> Result<(), UserError> {
        let keys = keys.into_iter().map(|k| k.trim().to_owned()).collect();
        let entry = UserEntry::new(name, password_hash, keys, access)?;
        if self.get(name).is_some() {
            return Err(UserError {
                user: name.to_owned(),
                problem: UserProblem::Exists,
            });
        }
        self.users.push(entry);
        Ok(())
    }

    /// Removes a user; `Ok(false)` if there was none of that name.
    pub fn remove_user(&mut self, name: &str) -> Result<bool, UserError> {
        let name = UserName::parse(name).map_err(|e| UserError {
            user: name.chars().take(64).collect(),
            problem: UserProblem::Name(e),
        })?;
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        Ok(self.users.len() != before)
    }

    /// Changes an existing user's role (if `role` is given) and extra
    /// permissions (if `extra` is given: it replaces the previous extras).
    pub fn set_access(
        &mut self,
        name: &str,
        role: Option<Role>,
        extra: Option<Permissions>,
    ) -> Result<UserAccess, UserError> {
        let Some(user) = self.users.iter_mut().find(|u| u.name.as_str() == name) else {
            return Err(UserError {
                user: name.chars().take(64).collect(),
                problem: UserProblem::Missing,
            });
        };
        if let Some(role) = role {
            user.access.role = role;
            user.access.role_written = true;
        }
        if let Some(extra) = extra {
            user.access.extra = extra;
        }
        Ok(user.access)
    }

    /// Replaces an existing user's certificate principals (empty: the
    /// certificate must name the user).
    pub fn set_principals(&mut self, name: &str, principals: Vec<String>) -> Result<(), UserError> {
        let principals = check_principals(name, principals)?;
        let Some(user) = self.users.iter_mut().find(|u| u.name.as_str() == name) else {
            return Err(UserError {
                user: name.chars().take(64).collect(),
                problem: UserProblem::Missing,
            });
        };
        user.principals = principals;
        Ok(())
    }

    /// Changes an existing user's quota: each given limit replaces the
    /// previous one (`Some(None)` removes it). Returns the new quota.
    pub fn set_quota(
        &mut self,
        name: &str,
        bytes: Option<Option<u64>>,
        files: Option<Option<u64>>,
    ) -> Result<Limits, UserError> {
        let Some(user) = self.users.iter_mut().find(|u| u.name.as_str() == name) else {
            return Err(UserError {
                user: name.chars().take(64).collect(),
                problem: UserProblem::Missing,
            });
        };
        if let Some(bytes) = bytes {
            user.quota.bytes = bytes;
        }
        if let Some(files) = files {
            user.quota.files = files;
        }
        Ok(user.quota)
    }

    /// The users, in file order.
    pub fn users(&self) -> impl Iterator<Item = &UserEntry> {
        self.users.iter()
    }

    /// The user called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&UserEntry> {
        self.users.iter().find(|u| u.name.as_str() == name)
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// An exclusive lock on the users file for a read-modify-write (`dropzone
/// user add|set|remove`), held until dropped. Two commands run at once
/// take turns, so neither loses the other's change.
#[derive(Debug)]
pub struct UsersFileLock {
    _file: File,
}

impl UsersFileLock {
    /// Takes the lock, waiting for another holder: an `flock` on
    /// `<users file>.lock` beside the file (a lock on the file itself would
    /// be lost when [`UsersFile::save`] renames a new file over it).
    pub fn acquire(path: &Path) -> Result<Self, UsersFileError> {
        let fail = |source| UsersFileError::Write {
            path: path.to_owned(),
            source,
        };
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        let lock_path = PathBuf::from(name);
        if let Some(dir) = lock_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::atomic_file::create_private_dir(dir).map_err(fail)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(fail)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| fail(e.into()))?;
        Ok(UsersFileLock { _file: file })
    }
}

/// Checks certificate principals: each 1-256 printable characters, no
/// comma (OpenSSH's list separator) or whitespace; duplicates dropped.
fn check_principals(user: &str, principals: Vec<String>) -> Result<Vec<String>, UserError> {
    let mut out: Vec<String> = Vec::with_capacity(principals.len());
    for p in principals {
        let ok = (1..=256).contains(&p.chars().count())
            && !p
                .chars()
                .any(|c| c == ',' || c.is_whitespace() || c.is_control());
        if !ok {
            return Err(UserError {
                user: user.chars().take(64).collect(),
                problem: UserProblem::Principal(p.chars().take(64).collect()),
            });
        }
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// A parse failure before the path is known.
enum ParseError {
    Syntax(String),
    User(UserError),
}

impl ParseError {
    fn at(self, path: &Path) -> UsersFileError {
        let path = path.to_owned();
        match self {
            ParseError::Syntax(message) => UsersFileError::Syntax { path, message },
            ParseError::User(error) => UsersFileError::User { path, error },
        }
    }
}

/// Reads the file (following symlinks: container secrets are mounted as
/// links), warning if others may read or write it.
fn read_text(path: &Path) -> io::Result<String> {
    let file = File::open(path)?;
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
            "users file is accessible to group or others; 0600 is expected"
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_LEN} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not valid UTF-8"))
}

/// Replaces `path` with `contents` atomically and durably (mode 0600,
/// parent created 0700 if missing).
fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "path has no UTF-8 file name")
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    crate::atomic_file::create_private_dir(dir)?;
    crate::atomic_file::replace(dir, name, contents)
}

#[cfg(test)]
mod tests;
