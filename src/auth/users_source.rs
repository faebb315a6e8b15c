//! Where the users file is kept: a local path (the default), or an object
//! in a bucket (`[auth] users_file = "s3://BUCKET/KEY"`) that every node of
//! a scale-out deployment reads, so that `dropzone user add` on any node
//! reaches them all.
//!
//! The two differ in how a change is noticed and how a read-modify-write
//! is kept whole. A file's version is its modification time, cheap enough
//! to look at on every request; a change is serialised by an `flock`
//! ([`UsersFileLock`]). An object's version is its ETag, which costs a
//! request to the store, so a server asks for it on a timer
//! ([`OBJECT_POLL_INTERVAL`]); a change is written only if the object is
//! still the one read (`If-Match`, or `If-None-Match: *` when there was
//! none), and a change that lost the race to another node is applied again
//! to what that node wrote.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::users_file::{UsersFile, UsersFileError, UsersFileLock};
use crate::aws::s3::{Condition, S3Client, S3Error};

/// How often a server asks the store whether the users object changed.
pub const OBJECT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Attempts at a conditional write of the users object before giving up:
/// each failed one means another node wrote the object in between.
const OBJECT_WRITE_ATTEMPTS: u32 = 8;

/// Largest users object read: as for a local users file.
const MAX_OBJECT_LEN: usize = 16 * 1024 * 1024;

/// Where the users file is kept.
pub enum UsersSource {
    /// A file on this machine.
    File(PathBuf),
    /// An object in a bucket.
    Object(UsersObject),
}

/// The users file as an object: the client of its bucket and its key.
pub struct UsersObject {
    client: S3Client,
    key: String,
    /// `s3://BUCKET/KEY`, for messages (the errors of
    /// [`UsersFileError`] name a path).
    name: PathBuf,
}

/// One version of the users file, to notice a change without reading it:
/// equal versions mean the same content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    /// There is no file (or its time cannot be read): no users.
    Missing,
    /// A file's modification time.
    Modified(SystemTime),
    /// An object's ETag.
    ETag(String),
}

impl UsersSource {
    /// The file at `path`.
    pub fn file(path: PathBuf) -> Self {
        UsersSource::File(path)
    }

    /// The object `key` of `client`'s bucket.
    pub fn object(client: S3Client, key: String) -> Self {
        let name = PathBuf::from(format!("s3://{}/{key}", client.bucket()));
        UsersSource::Object(UsersObject { client, key, name })
    }

    /// The path, or `s3://BUCKET/KEY`: what messages call it.
    pub fn name(&self) -> &Path {
        match self {
            UsersSource::File(path) => path,
            UsersSource::Object(o) => &o.name,
        }
    }

    /// Whether finding out the version costs a request to a store, so
    /// that a server should look on a timer rather than at every request.
    pub fn is_remote(&self) -> bool {
        matches!(self, UsersSource::Object(_))
    }

    /// The users and the version they were read at. A missing file or
    /// object is an empty one (no users yet). A store that cannot be
    /// reached is a [`UsersFileError::Read`] whose source is of kind
    /// [`io::ErrorKind::TimedOut`] (see [`is_unavailable`]).
    pub fn load(&self) -> Result<(UsersFile, Version), UsersFileError> {
        match self {
            UsersSource::File(path) => {
                // The time first: a change made while the file is read
                // shows as a newer time at the next look.
                let version = file_version(path);
                Ok((UsersFile::load(path)?, version))
            }
            UsersSource::Object(o) => match o.read()? {
                Some((text, etag)) => {
                    Ok((UsersFile::from_text(&text, &o.name)?, Version::ETag(etag)))
                }
                None => Ok((UsersFile::default(), Version::Missing)),
            },
        }
    }

    /// The current version, without reading the users.
    pub fn version(&self) -> Result<Version, UsersFileError> {
        match self {
            UsersSource::File(path) => Ok(file_version(path)),
            UsersSource::Object(o) => match o.client.head(&o.key) {
                Ok(info) => Ok(Version::ETag(info.etag)),
                Err(S3Error::NotFound) => Ok(Version::Missing),
                Err(e) => Err(o.read_error(e)),
            },
        }
    }

    /// Reads the users, applies `change` and writes them back, with no
    /// other change made in between lost. For a file, under its lock. For
    /// an object, the write is conditional on the object read; when
    /// another node wrote first, `change` runs again on what it wrote (so
    /// `change` must give the same result for the same users). An error
    /// from `change` writes nothing.
    pub fn update<T, E>(
        &self,
        mut change: impl FnMut(&mut UsersFile) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<UsersFileError>,
    {
        match self {
            UsersSource::File(path) => {
                let _lock = UsersFileLock::acquire(path)?;
                let mut users = UsersFile::load(path)?;
                let out = change(&mut users)?;
                users.save(path)?;
                Ok(out)
            }
            UsersSource::Object(o) => {
                let mut attempt = 1;
                loop {
                    let (mut users, cond) = match o.read()? {
                        Some((text, etag)) => (
                            UsersFile::from_text(&text, &o.name)?,
                            Condition::IfMatch(etag),
                        ),
                        None => (UsersFile::default(), Condition::IfNoneMatch),
                    };
                    let out = change(&mut users)?;
                    let text = users.to_toml(&o.name)?;
                    let source = match o.client.put(&o.key, text.as_bytes(), &[], cond) {
                        Ok(_) => return Ok(out),
                        Err(S3Error::PreconditionFailed) if attempt < OBJECT_WRITE_ATTEMPTS => {
                            // Another node's change landed first; step
                            // aside a little (more at each attempt) so
                            // that nodes racing again do not collide again.
                            std::thread::sleep(backoff(attempt));
                            attempt += 1;
                            continue;
                        }
                        Err(S3Error::PreconditionFailed) => io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!(
                                "changed by others {OBJECT_WRITE_ATTEMPTS} times while this change was made; nothing written: run the command again"
                            ),
                        ),
                        Err(e) => e.into(),
                    };
                    return Err(UsersFileError::Write {
                        path: o.name.clone(),
                        source,
                    }
                    .into());
                }
            }
        }
    }
}

/// Whether `e` says only that the store holding the users could not be
/// reached (or timed out): trying again later may succeed.
pub fn is_unavailable(e: &UsersFileError) -> bool {
    matches!(e, UsersFileError::Read { source, .. } if source.kind() == io::ErrorKind::TimedOut)
}

impl UsersObject {
    /// The object's text and ETag; `None` when there is no object.
    fn read(&self) -> Result<Option<(String, String)>, UsersFileError> {
        let (bytes, info) = match self.client.get(&self.key) {
            Ok(got) => got,
            Err(S3Error::NotFound) => return Ok(None),
            Err(e) => return Err(self.read_error(e)),
        };
        let invalid = |why: String| UsersFileError::Read {
            path: self.name.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, why),
        };
        if bytes.len() > MAX_OBJECT_LEN {
            return Err(invalid(format!(
                "{} bytes, more than the {MAX_OBJECT_LEN} a users file may have",
                bytes.len()
            )));
        }
        let text =
            String::from_utf8(bytes.to_vec()).map_err(|_| invalid("not UTF-8 text".to_owned()))?;
        Ok(Some((text, info.etag)))
    }

    fn read_error(&self, e: S3Error) -> UsersFileError {
        UsersFileError::Read {
            path: self.name.clone(),
            source: e.into(),
        }
    }
}

fn file_version(path: &Path) -> Version {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_or(Version::Missing, Version::Modified)
}

/// The pause after the `attempt`th conditional write lost: 20-40 ms, twice
/// as long at each attempt, at random within that so that two nodes
/// drift apart.
fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(7);
    let mut jitter = [0u8; 2];
    // No randomness only means a fixed pause.
    let _ = getrandom::fill(&mut jitter);
    Duration::from_millis(base + u64::from(u16::from_le_bytes(jitter)) % base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_no_users_at_version_missing() {
        let dir = tempfile::tempdir().unwrap();
        let source = UsersSource::file(dir.path().join("users.toml"));
        let (users, version) = source.load().unwrap();
        assert!(users.is_empty());
        assert_eq!(version, Version::Missing);
        assert!(!source.is_remote());
    }

    #[test]
    fn a_file_update_is_saved_and_changes_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let source = UsersSource::file(path.clone());
        let added: Result<(), UsersFileError> = source.update(|users| {
            users
                .add_user("alice", None, vec![KEY.to_owned()])
                .map_err(|error| UsersFileError::User {
                    path: path.clone(),
                    error,
                })
        });
        added.unwrap();
        let (users, version) = source.load().unwrap();
        assert!(users.get("alice").is_some());
        assert!(matches!(version, Version::Modified(_)));
        assert_eq!(source.version().unwrap(), version);
    }

    #[test]
    fn a_failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let source = UsersSource::file(path.clone());
        let refused: Result<(), UsersFileError> = source.update(|users| {
            users.add_user("alice", None, vec![KEY.to_owned()]).unwrap();
            Err(UsersFileError::Syntax {
                path: path.clone(),
                message: "refused".into(),
            })
        });
        assert!(refused.is_err());
        assert!(!path.exists());
    }

    #[test]
    fn only_an_unreachable_store_is_unavailable() {
        let read = |kind| UsersFileError::Read {
            path: "s3://b/users.toml".into(),
            source: io::Error::new(kind, "x"),
        };
        assert!(is_unavailable(&read(io::ErrorKind::TimedOut)));
        assert!(!is_unavailable(&read(io::ErrorKind::Other)));
        assert!(!is_unavailable(&UsersFileError::Syntax {
            path: "u".into(),
            message: "x".into(),
        }));
    }

    #[test]
    fn backoff_grows_and_stays_within_its_range() {
        for attempt in 1..=7 {
            let base = 10u64 << attempt.min(7);
            let pause = backoff(attempt).as_millis() as u64;
            assert!((base..2 * base).contains(&pause), "{attempt}: {pause}");
        }
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti alice@example";
}
