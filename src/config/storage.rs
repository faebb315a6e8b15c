//! `[storage]` and `[storage.s3]`: where users' files and wrapped keys live.
//!
//! The local backend (the default) keeps them in `data_dir` and `keks_dir`;
//! the S3 backend in a bucket that every node with the same configuration
//! shares. Only the settings are here: the client is made by the binary.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    backend: Option<String>,
    s3: Option<RawS3>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: Option<String>,
    region: String,
    bucket: String,
    prefix: Option<String>,
    path_style: Option<bool>,
    access_key_id_file: Option<PathBuf>,
    secret_access_key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    part_size_mib: Option<u64>,
    abandoned_upload_hours: Option<u64>,
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// Files under `data_dir/NAME/`, keys in `keks_dir` (the default).
    Local,
    /// Files and keys in an S3 bucket: `[storage.s3]` (boxed: the local
    /// case is the common one and carries nothing).
    S3(Box<S3Config>),
}

/// `[storage.s3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Base URL of an S3-compatible service; `None` is AWS
    /// (`https://s3.REGION.amazonaws.com`).
    pub endpoint: Option<String>,
    /// The region: AWS's endpoint and the signing scope.
    pub region: String,
    /// The bucket (made by the operator beforehand).
    pub bucket: String,
    /// Objects go under `PREFIX/data/` and `PREFIX/keks/` (no slashes at
    /// either end; empty for the bucket's root).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible services need (default true with an `endpoint`,
    /// false on AWS).
    pub path_style: bool,
    /// Files with the access key id and the secret access key; without
    /// them, the standard AWS chain (environment, shared files, web
    /// identity).
    pub credential_files: Option<(PathBuf, PathBuf)>,
    /// PEM CA certificates for an `https` endpoint (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// Time allowed to connect (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request (default 60 s: a part is 8 MiB).
    pub request_timeout: Duration,
    /// Size of an upload's parts in bytes (default 8 MiB, at least 5 MiB):
    /// an upload holds about two parts in memory.
    pub part_size: usize,
    /// Incomplete multipart uploads begun longer ago than this are aborted
    /// by the sweep (at start and hourly; default 24 h): longer than any
    /// upload's life, since the sweep cannot tell a live one on another
    /// node from an abandoned one. Zero aborts them all, which only a
    /// single node may do.
    pub abandoned_upload_age: Duration,
}

/// Smallest part S3 accepts (but the last).
const MIN_PART_MIB: u64 = 5;
/// Largest part this server will hold in memory.
const MAX_PART_MIB: u64 = 512;

impl RawStorage {
    pub(super) fn validate(self) -> Result<StorageConfig, String> {
        match self.backend.as_deref().unwrap_or("local") {
            "local" => Ok(StorageConfig::Local),
            "s3" => match self.s3 {
                Some(s3) => s3.validate().map(|s3| StorageConfig::S3(Box::new(s3))),
                None => Err("storage.backend = \"s3\" needs a [storage.s3] table".into()),
            },
            other => Err(format!(
                "storage.backend = {other:?}: expected \"local\" or \"s3\""
            )),
        }
    }
}

impl RawS3 {
    fn validate(self) -> Result<S3Config, String> {
        if self.region.trim().is_empty() {
            return Err("storage.s3.region must not be empty".into());
        }
        if self.bucket.trim().is_empty() || self.bucket.contains('/') {
            return Err(format!(
                "storage.s3.bucket = {:?}: expected a bucket name",
                self.bucket
            ));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(format!(
                "storage.s3.endpoint = {endpoint:?}: expected an http:// or https:// URL"
            ));
        }
        let prefix = self.prefix.unwrap_or_default();
        if prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            return Err(format!(
                "storage.s3.prefix = {prefix:?}: no slash at either end and no empty segment"
            ));
        }
        let credential_files = match (self.access_key_id_file, self.secret_access_key_file) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                return Err(
                    "storage.s3: access_key_id_file and secret_access_key_file go together".into(),
                );
            }
        };
        let positive = |name: &str, value: Option<u64>, default: u64| match value {
            Some(0) => Err(format!("storage.s3.{name} must be at least 1")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let part_mib = positive("part_size_mib", self.part_size_mib, 8)?;
        if !(MIN_PART_MIB..=MAX_PART_MIB).contains(&part_mib) {
            return Err(format!(
                "storage.s3.part_size_mib = {part_mib}: expected {MIN_PART_MIB} to {MAX_PART_MIB}"
            ));
        }
        // 0 is allowed: every incomplete upload is abandoned (one node only).
        let hours = self.abandoned_upload_hours.unwrap_or(24);
        Ok(S3Config {
            path_style: self.path_style.unwrap_or(self.endpoint.is_some()),
            endpoint: self.endpoint,
            region: self.region,
            bucket: self.bucket,
            prefix,
            credential_files,
            ca_file: self.ca_file,
            connect_timeout: Duration::from_secs(positive(
                "connect_timeout_secs",
                self.connect_timeout_secs,
                5,
            )?),
            request_timeout: Duration::from_secs(positive(
                "request_timeout_secs",
                self.request_timeout_secs,
                60,
            )?),
            part_size: usize::try_from(part_mib << 20).map_err(|e| e.to_string())?,
            abandoned_upload_age: Duration::from_secs(hours.saturating_mul(3600)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::StorageConfig;
    use crate::config::Config;

    #[test]
    fn local_is_the_default() {
        assert_eq!(Config::parse("").unwrap().storage, StorageConfig::Local);
    }

    #[test]
    fn s3_table_with_defaults() {
        let c = Config::parse(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:8333\"\n\
             region = \"us-east-1\"\nbucket = \"dz\"\n",
        )
        .unwrap();
        let StorageConfig::S3(s3) = c.storage else {
            panic!("not s3")
        };
        assert!(s3.path_style, "an endpoint defaults to path style");
        assert_eq!(s3.prefix, "");
        assert_eq!(s3.part_size, 8 << 20);
        assert_eq!(s3.request_timeout.as_secs(), 60);
        assert_eq!(s3.abandoned_upload_age.as_secs(), 24 * 3600);
        assert_eq!(s3.credential_files, None);
    }

    #[test]
    fn s3_mistakes_are_named() {
        let base = "[storage]\nbackend = \"s3\"\n";
        let cases = [
            ("", "needs a [storage.s3] table"),
            (
                "[storage.s3]\nregion = \"r\"\nbucket = \"b\"\nprefix = \"/p\"\n",
                "storage.s3.prefix",
            ),
            (
                "[storage.s3]\nregion = \"r\"\nbucket = \"b\"\npart_size_mib = 4\n",
                "part_size_mib = 4",
            ),
            (
                "[storage.s3]\nregion = \"r\"\nbucket = \"b\"\naccess_key_id_file = \"k\"\n",
                "go together",
            ),
            (
                "[storage.s3]\nregion = \"r\"\nbucket = \"b\"\nendpoint = \"127.0.0.1:8333\"\n",
                "storage.s3.endpoint",
            ),
        ];
        for (table, expected) in cases {
            let e = Config::parse(&format!("{base}{table}")).unwrap_err();
            assert!(e.contains(expected), "{table}: {e}");
        }
        let e = Config::parse("[storage]\nbackend = \"nfs\"\n").unwrap_err();
        assert!(e.contains("expected \"local\" or \"s3\""), "{e}");
    }
}
