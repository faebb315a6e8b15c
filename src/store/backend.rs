//! Where users' trees are kept: the configured storage backend.
//!
//! [`Backend`] is the one thing a login and every command that opens a
//! user's store start from ([`super::open_user`]): the local data directory
//! (`data_dir/NAME`, the default) or an S3 bucket (`PREFIX/data/NAME/...`).
//! It also lists the users that have a tree, for the commands that walk
//! every user.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::storage::{LocalStorage, Storage};
use crate::username::UserName;

/// The configured storage backend (see the module documentation).
#[derive(Clone, Debug)]
pub enum Backend {
    /// User NAME's files under `data_dir/NAME/` (created 0700).
    Local {
        /// The data directory.
        data_dir: PathBuf,
    },
}

impl Backend {
    /// Prepares the backend for a server or command: creates the local
    /// data directory if missing.
    pub fn prepare(&self) -> io::Result<()> {
        match self {
            Backend::Local { data_dir } => std::fs::create_dir_all(data_dir),
        }
    }

    /// The storage of `user`'s root, created if missing.
    pub fn user_storage(&self, user: &UserName) -> io::Result<Arc<dyn Storage>> {
        match self {
            Backend::Local { data_dir } => Ok(Arc::new(LocalStorage::open_root(
                &data_dir.join(user.as_str()),
            )?)),
        }
    }

    /// Whether `user` has a tree (without creating one).
    pub fn has_user(&self, user: &UserName) -> io::Result<bool> {
        match self {
            Backend::Local { data_dir } => Ok(data_dir.join(user.as_str()).is_dir()),
        }
    }

    /// The users that have a tree, sorted.
    pub fn users(&self) -> io::Result<Vec<UserName>> {
        let mut users = match self {
            Backend::Local { data_dir } => local_users(data_dir)?,
        };
        users.sort();
        Ok(users)
    }

    /// Where `user`'s tree is, for messages to the operator.
    pub fn describe_user(&self, user: &UserName) -> String {
        match self {
            Backend::Local { data_dir } => data_dir.join(user.as_str()).display().to_string(),
        }
    }

    /// Whether the trees are shared by several nodes (the quota accounts
    /// then cannot rely on local records and locks).
    pub fn is_shared(&self) -> bool {
        match self {
            Backend::Local { .. } => false,
        }
    }
}

/// The directories in `data_dir` whose names are user names.
fn local_users(data_dir: &std::path::Path) -> io::Result<Vec<UserName>> {
    let mut users = Vec::new();
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        // No data directory yet: nobody has stored anything.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(users),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Some(user) = entry
            .file_name()
            .to_str()
            .and_then(|n| UserName::parse(n).ok())
        {
            users.push(user);
        }
    }
    Ok(users)
}
