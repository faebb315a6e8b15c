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

use super::storage::{LocalStorage, S3Storage, Storage};
use crate::aws::s3::{S3Client, join_key};
use crate::username::UserName;

/// The configured storage backend (see the module documentation).
#[derive(Clone, Debug)]
pub enum Backend {
    /// User NAME's files under `data_dir/NAME/` (created 0700).
    Local {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// User NAME's files under `PREFIX/data/NAME/` in an S3 bucket, shared
    /// by every node.
    S3 {
        /// The bucket's client.
        client: S3Client,
        /// The key prefix (may be empty).
        prefix: String,
        /// Size of an upload's parts, in bytes.
        part_size: usize,
    },
}

/// Most keys asked for per listing page.
const LIST_PAGE: u32 = 1000;

impl Backend {
    /// Prepares the backend for a server or command: creates the local
    /// data directory if missing.
    pub fn prepare(&self) -> io::Result<()> {
        match self {
            Backend::Local { data_dir } => std::fs::create_dir_all(data_dir),
            // Nothing to create: the bucket is the operator's.
            Backend::S3 { .. } => Ok(()),
        }
    }

    /// The storage of `user`'s root, created if missing.
    pub fn user_storage(&self, user: &UserName) -> io::Result<Arc<dyn Storage>> {
        match self {
            Backend::Local { data_dir } => Ok(Arc::new(LocalStorage::open_root(
                &data_dir.join(user.as_str()),
            )?)),
            Backend::S3 {
                client,
                prefix,
                part_size,
            } => Ok(Arc::new(
                S3Storage::open_user_root(client.clone(), prefix, user)?
                    .with_part_size(*part_size)?,
            )),
        }
    }

    /// Whether `user` has a tree (without creating one).
    pub fn has_user(&self, user: &UserName) -> io::Result<bool> {
        match self {
            Backend::Local { data_dir } => Ok(data_dir.join(user.as_str()).is_dir()),
            Backend::S3 { client, prefix, .. } => {
                let root = format!("{}/", join_key(prefix, &["data", user.as_str()]));
                let page = client.list(&root, None, None, 1).map_err(io::Error::from)?;
                Ok(!page.objects.is_empty() || !page.common_prefixes.is_empty())
            }
        }
    }

    /// The users that have a tree, sorted.
    pub fn users(&self) -> io::Result<Vec<UserName>> {
        let mut users = match self {
            Backend::Local { data_dir } => local_users(data_dir)?,
            Backend::S3 { client, prefix, .. } => s3_users(client, prefix)?,
        };
        users.sort();
        Ok(users)
    }

    /// Where every user's tree is, for messages to the operator.
    pub fn describe_root(&self) -> String {
        match self {
            Backend::Local { data_dir } => data_dir.display().to_string(),
            Backend::S3 { client, prefix, .. } if prefix.is_empty() => {
                format!("s3://{}/", client.bucket())
            }
            Backend::S3 { client, prefix, .. } => format!("s3://{}/{prefix}/", client.bucket()),
        }
    }

    /// Where `user`'s tree is, for messages to the operator.
    pub fn describe_user(&self, user: &UserName) -> String {
        match self {
            Backend::Local { data_dir } => data_dir.join(user.as_str()).display().to_string(),
            Backend::S3 { client, prefix, .. } => format!(
                "s3://{}/{}/",
                client.bucket(),
                join_key(prefix, &["data", user.as_str()])
            ),
        }
    }

    /// Whether the trees are shared by several nodes (the quota accounts
    /// then cannot rely on local records and locks).
    pub fn is_shared(&self) -> bool {
        match self {
            Backend::Local { .. } => false,
            Backend::S3 { .. } => true,
        }
    }
}

/// The names under `PREFIX/data/` that are user names.
fn s3_users(client: &S3Client, prefix: &str) -> io::Result<Vec<UserName>> {
    let data = format!("{}/", join_key(prefix, &["data"]));
    let mut users = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list(&data, Some("/"), token.as_deref(), LIST_PAGE)
            .map_err(io::Error::from)?;
        users.extend(
            page.common_prefixes
                .iter()
                .filter_map(|p| p.strip_prefix(&data))
                .map(|p| p.trim_end_matches('/'))
                .filter_map(|n| UserName::parse(n).ok()),
        );
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(users),
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
