//! The configuration file: a serde mirror of the TOML, then a validated
//! [`Config`].
//!
//! Relative paths in the file are taken relative to the working directory
//! the server is started from (the repository root in the README's
//! commands, `/var/lib/dropzone` in the container).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::kms::SecretVersion;

mod audit;
mod aws_kms;
mod limits;
mod metrics;
mod ssh;
mod storage;
mod upload;
mod vault;

pub use audit::AuditConfig;
pub use aws_kms::AwsKmsConfig;
pub use limits::{LimitsConfig, PenaltyConfig};
pub use metrics::MetricsConfig;
pub use ssh::SshConfig;
pub use storage::{S3Config, StorageConfig};
pub use upload::UploadConfig;
pub use vault::{VaultAuth, VaultConfig};

/// Where `dropzone` looks for its configuration by default.
pub const DEFAULT_PATH: &str = "config/dropzone.toml";

/// A configuration that could not be used. The message names the file and,
/// for syntax and type errors, the line, column and key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong, with line and key where known.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddr>,
    host_keys_dir: Option<PathBuf>,
    host_certificates: Option<Vec<PathBuf>>,
    data_dir: Option<PathBuf>,
    keks_dir: Option<PathBuf>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    kms: RawKms,
    #[serde(default)]
    sftp: RawSftp,
    #[serde(default)]
    ssh: ssh::RawSsh,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    upload: upload::RawUpload,
    #[serde(default)]
    audit: audit::RawAudit,
    #[serde(default)]
    metrics: metrics::RawMetrics,
    #[serde(default)]
    storage: storage::RawStorage,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    users_file: Option<String>,
    pam: Option<bool>,
    pam_service: Option<String>,
    pam_allow_root: Option<bool>,
    pam_timeout_secs: Option<u64>,
    max_auth_attempts: Option<u32>,
    trusted_user_ca_keys: Option<PathBuf>,
    revoked_keys: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKms {
    backend: Option<String>,
    key_cache_ttl_secs: Option<u64>,
    #[serde(default)]
    local: RawLocal,
    eaas: Option<RawEaas>,
    aws_kms: Option<aws_kms::RawAwsKms>,
    vault: Option<vault::RawVault>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    key_dir: Option<PathBuf>,
    secret_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEaas {
    url: String,
    secret_path: String,
    secret_version: toml::Value,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSftp {
    max_handles: Option<usize>,
    max_handles_per_user: Option<usize>,
    max_file_size: Option<u64>,
}

/// Which key service wraps user keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsBackend {
    /// A local RSA key file (the default; no server needed).
    Local,
    /// The EaaS HTTP API.
    Eaas,
    /// AWS KMS (or a compatible service).
    AwsKms,
    /// A Vault/OpenBao Transit key.
    Vault,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Host keys; generated there on first start.
    pub host_keys_dir: PathBuf,
    /// OpenSSH host certificates of those keys, presented to clients that
    /// trust their CA (`@cert-authority` in `known_hosts`); none by default.
    pub host_certificates: Vec<PathBuf>,
    /// User NAME's files live under `data_dir/NAME/`.
    pub data_dir: PathBuf,
    /// Wrapped user keys.
    pub keks_dir: PathBuf,
    /// Authentication settings.
    pub auth: AuthConfig,
    /// Key service settings.
    pub kms: KmsConfig,
    /// `[sftp]`: handle caps and the largest file.
    pub sftp: SftpLimits,
    /// `[ssh]`: timeouts and algorithms.
    pub ssh: SshConfig,
    /// `[limits]`: connection and session caps, failure penalties.
    pub limits: LimitsConfig,
    /// `[upload]`: scanning and notifications.
    pub upload: UploadConfig,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[storage]`: the local directories or an S3 bucket.
    pub storage: StorageConfig,
}

/// `[sftp]`: what one connection and one user may hold, and how large a
/// file may grow.
#[derive(Debug, Clone)]
pub struct SftpLimits {
    /// Most open file and directory handles per connection, over all its
    /// SFTP channels (default 256).
    pub max_handles: usize,
    /// Most open handles of one user, over all their connections (default
    /// 1024).
    pub max_handles_per_user: usize,
    /// Largest size, in plaintext bytes, a file may reach by any request:
    /// writes, SETSTAT size, copy-data (default 1 TiB).
    pub max_file_size: u64,
}

/// Default of `sftp.max_file_size`: 1 TiB, also the most the store accepts.
pub const DEFAULT_MAX_FILE_SIZE: u64 = crate::store::file::MAX_FILE_SIZE;

/// Where the users file is kept (`[auth] users_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersFileAt {
    /// A path on this machine.
    Path(PathBuf),
    /// `s3://BUCKET/KEY`: an object reached with `[storage.s3]`'s
    /// endpoint, region and credentials (`[storage] backend = "s3"`).
    Object {
        /// The bucket (the storage bucket or another).
        bucket: String,
        /// The object's key.
        key: String,
    },
}

impl UsersFileAt {
    /// Parses `users_file`: `s3://BUCKET/KEY`, or else a path.
    fn parse(value: &str) -> Result<Self, String> {
        let Some(rest) = value.strip_prefix("s3://") else {
            if value.is_empty() {
                return Err("auth.users_file is empty".into());
            }
            return Ok(UsersFileAt::Path(value.into()));
        };
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
                Ok(UsersFileAt::Object {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })
            }
            _ => Err(format!(
                "auth.users_file = {value:?}: an object is named s3://BUCKET/KEY (for example s3://dropzone/users.toml)"
            )),
        }
    }

    /// The path, when the file is on this machine.
    pub fn path(&self) -> Option<&Path> {
        match self {
            UsersFileAt::Path(p) => Some(p),
            UsersFileAt::Object { .. } => None,
        }
    }
}

impl std::fmt::Display for UsersFileAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsersFileAt::Path(p) => write!(f, "{}", p.display()),
            UsersFileAt::Object { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The users file managed by `dropzone user ...`.
    pub users_file: UsersFileAt,
    /// Linux system users: passwords through PAM, keys from their
    /// `~/.ssh/authorized_keys` (cargo feature `pam`).
    pub pam: bool,
    /// The PAM service, i.e. the file `/etc/pam.d/NAME` (default
    /// `dropzone`; the repository ships `config/pam.d/dropzone`).
    pub pam_service: String,
    /// Whether root (uid 0) may log in as a Linux user (default no).
    pub pam_allow_root: bool,
    /// Longest wait for one PAM transaction (default 10 s).
    pub pam_timeout: Duration,
    /// Authentication attempts per connection.
    pub max_auth_attempts: u32,
    /// OpenSSH CA public keys whose user certificates may log in (none:
    /// certificate logins are off).
    pub trusted_user_ca_keys: Option<PathBuf>,
    /// A KRL or list of public keys refused for key and certificate logins.
    pub revoked_keys: Option<PathBuf>,
}

/// `[kms]`.
#[derive(Debug, Clone)]
pub struct KmsConfig {
    /// The backend.
    pub backend: KmsBackend,
    /// Keep an unwrapped user key this long after its last session ends.
    pub key_cache_ttl: Option<Duration>,
    /// Directory of the local backend's master keys.
    pub local_key_dir: PathBuf,
    /// Master key version new user keys are wrapped under (local backend).
    pub local_secret_version: SecretVersion,
    /// `[kms.eaas]`, if present.
    pub eaas: Option<EaasConfig>,
    /// `[kms.aws_kms]`, if present.
    pub aws_kms: Option<AwsKmsConfig>,
    /// `[kms.vault]`, if present.
    pub vault: Option<VaultConfig>,
}

/// `[kms.eaas]`.
#[derive(Debug, Clone)]
pub struct EaasConfig {
    /// Base URL of the service.
    pub url: String,
    /// Name of the RSA key pair at the service.
    pub secret_path: String,
    /// Version of that key pair new user keys are wrapped under (1-9
    /// decimal digits; a TOML number is accepted too, as the original did).
    pub secret_version: SecretVersion,
    /// A file whose first line is the bearer token sent to the service.
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates for an `https` URL (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Time allowed to connect (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request (default 15 s).
    pub request_timeout: Duration,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Config::parse(&text).map_err(err)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let pam = raw.auth.pam.unwrap_or(false);
        if pam && !cfg!(feature = "pam") {
            return Err(
                "auth.pam = true: PAM authentication is not available in this build \
                 (build with --features pam)"
                    .into(),
            );
        }
        let pam_service = raw.auth.pam_service.unwrap_or_else(|| "dropzone".into());
        if !is_pam_service_name(&pam_service) {
            return Err(format!(
                "auth.pam_service = {pam_service:?}: expected a file name under /etc/pam.d \
                 (letters, digits, . _ -)"
            ));
        }
        let pam_timeout = match raw.auth.pam_timeout_secs {
            Some(0) => return Err("auth.pam_timeout_secs must be at least 1".into()),
            Some(secs) => Duration::from_secs(secs),
            None => Duration::from_secs(10),
        };
        let backend = match raw.kms.backend.as_deref().unwrap_or("local") {
            "local" => KmsBackend::Local,
            "eaas" => KmsBackend::Eaas,
            "aws-kms" => KmsBackend::AwsKms,
            "vault" => KmsBackend::Vault,
            other => {
                return Err(format!(
                    "kms.backend = {other:?}: expected \"local\", \"eaas\", \"vault\" or \"aws-kms\""
                ));
            }
        };
        let eaas = match raw.kms.eaas {
            Some(e) => {
                let secret_version = match e.secret_version {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(n) => n.to_string(),
                    other => {
                        return Err(format!(
                            "kms.eaas.secret_version: expected a decimal string or number, found {}",
                            other.type_str()
                        ));
                    }
                };
                let secret_version = SecretVersion::parse(&secret_version)
                    .map_err(|e| format!("kms.eaas.secret_version = {secret_version:?}: {e}"))?;
                let timeout = |name: &str, secs: Option<u64>, default: u64| match secs {
                    Some(0) => Err(format!("kms.eaas.{name} must be at least 1")),
                    Some(s) => Ok(Duration::from_secs(s)),
                    None => Ok(Duration::from_secs(default)),
                };
                Some(EaasConfig {
                    url: e.url,
                    secret_path: e.secret_path,
                    secret_version,
                    token_file: e.token_file,
                    ca_file: e.ca_file,
                    connect_timeout: timeout("connect_timeout_secs", e.connect_timeout_secs, 5)?,
                    request_timeout: timeout("request_timeout_secs", e.request_timeout_secs, 15)?,
                })
            }
            None => None,
        };
        if backend == KmsBackend::Eaas && eaas.is_none() {
            return Err("kms.backend = \"eaas\" needs a [kms.eaas] table".into());
        }
        let aws_kms = raw
            .kms
            .aws_kms
            .map(aws_kms::RawAwsKms::validate)
            .transpose()?;
        if backend == KmsBackend::AwsKms && aws_kms.is_none() {
            return Err("kms.backend = \"aws-kms\" needs a [kms.aws_kms] table".into());
        }
        let vault = raw.kms.vault.map(vault::RawVault::validate).transpose()?;
        if backend == KmsBackend::Vault && vault.is_none() {
            return Err("kms.backend = \"vault\" needs a [kms.vault] table".into());
        }
        let local_secret_version = raw.kms.local.secret_version.unwrap_or_else(|| "1".into());
        let local_secret_version = SecretVersion::parse(&local_secret_version)
            .map_err(|e| format!("kms.local.secret_version = {local_secret_version:?}: {e}"))?;
        let max_auth_attempts = raw.auth.max_auth_attempts.unwrap_or(6);
        if max_auth_attempts == 0 {
            return Err("auth.max_auth_attempts must be at least 1".into());
        }
        let max_handles = raw.sftp.max_handles.unwrap_or(256);
        if max_handles == 0 {
            return Err("sftp.max_handles must be at least 1".into());
        }
        let max_handles_per_user = raw.sftp.max_handles_per_user.unwrap_or(1024);
        if max_handles_per_user == 0 {
            return Err("sftp.max_handles_per_user must be at least 1".into());
        }
        let max_file_size = raw.sftp.max_file_size.unwrap_or(DEFAULT_MAX_FILE_SIZE);
        if max_file_size == 0 {
            return Err("sftp.max_file_size must be at least 1".into());
        }
        let storage = raw.storage.validate()?;
        let users_file = match raw.auth.users_file.as_deref() {
            Some(value) => UsersFileAt::parse(value)?,
            None => UsersFileAt::Path("config/users.toml".into()),
        };
        if matches!(users_file, UsersFileAt::Object { .. })
            && !matches!(storage, StorageConfig::S3(_))
        {
            return Err(format!(
                "auth.users_file = \"{users_file}\" needs [storage] backend = \"s3\": the object is reached with [storage.s3]'s endpoint and credentials"
            ));
        }
        Ok(Config {
            listen: raw
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 2022))),
            host_keys_dir: raw.host_keys_dir.unwrap_or_else(|| "host_keys".into()),
            host_certificates: raw.host_certificates.unwrap_or_default(),
            data_dir: raw.data_dir.unwrap_or_else(|| "data".into()),
            keks_dir: raw.keks_dir.unwrap_or_else(|| "keks".into()),
            auth: AuthConfig {
                users_file,
                pam,
                pam_service,
                pam_allow_root: raw.auth.pam_allow_root.unwrap_or(false),
                pam_timeout,
                max_auth_attempts,
                trusted_user_ca_keys: raw.auth.trusted_user_ca_keys,
                revoked_keys: raw.auth.revoked_keys,
            },
            kms: KmsConfig {
                backend,
                key_cache_ttl: raw
                    .kms
                    .key_cache_ttl_secs
                    .filter(|&s| s > 0)
                    .map(Duration::from_secs),
                local_key_dir: raw.kms.local.key_dir.unwrap_or_else(|| "master_key".into()),
                local_secret_version,
                eaas,
                aws_kms,
                vault,
            },
            sftp: SftpLimits {
                max_handles,
                max_handles_per_user,
                max_file_size,
            },
            ssh: raw.ssh.validate()?,
            limits: raw.limits.validate()?,
            upload: raw.upload.validate()?,
            audit: raw.audit.validate()?,
            metrics: raw.metrics.validate(),
            storage,
        })
    }
}

/// A PAM service name: a plain file name under `/etc/pam.d`.
fn is_pam_service_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses() {
        let text = include_str!("../../config/dropzone.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.kms.backend, KmsBackend::Local);
        assert_eq!(c.listen.port(), 2022);
        // Its commented algorithm lists and limits are the built-in defaults.
        let defaults = Config::parse("").unwrap();
        assert_eq!(c.ssh.kex, defaults.ssh.kex);
        assert_eq!(c.ssh.host_key_algorithms, defaults.ssh.host_key_algorithms);
        assert_eq!(c.ssh.ciphers, defaults.ssh.ciphers);
        assert_eq!(c.ssh.macs, defaults.ssh.macs);
        assert!(c.limits.penalty.is_some());
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = Config::parse("listen = \"0.0.0.0:2022\"\n\ndata_dir = 5\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("data_dir"), "{e}");
        let e = Config::parse("[auth]\nusers_fil = \"x\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("users_fil"), "{e}");
        let e = Config::parse("listen = \"nope\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("listen"), "{e}");
    }

    #[test]
    fn users_file_is_a_path_or_an_object_of_the_s3_service() {
        let c = Config::parse("").unwrap();
        assert_eq!(
            c.auth.users_file,
            UsersFileAt::Path("config/users.toml".into())
        );
        let s3 = "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:8333\"\n\
                  region = \"us-east-1\"\nbucket = \"dz\"\n";
        let c = Config::parse(&format!(
            "[auth]\nusers_file = \"s3://shared/auth/users.toml\"\n{s3}"
        ))
        .unwrap();
        let at = UsersFileAt::Object {
            bucket: "shared".into(),
            key: "auth/users.toml".into(),
        };
        assert_eq!(c.auth.users_file, at);
        assert_eq!(at.to_string(), "s3://shared/auth/users.toml");
        assert_eq!(at.path(), None);
        // An object needs the S3 service's settings.
        let e = Config::parse("[auth]\nusers_file = \"s3://shared/users.toml\"\n").unwrap_err();
        assert!(e.contains("needs [storage] backend = \"s3\""), "{e}");
        for bad in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3:///users.toml",
            "s3://b/dir/",
            "",
        ] {
            let e = Config::parse(&format!("[auth]\nusers_file = \"{bad}\"\n{s3}")).unwrap_err();
            assert!(e.contains("users_file"), "{bad}: {e}");
        }
    }

    #[test]
    fn pam_keys() {
        let c = Config::parse("").unwrap();
        assert!(!c.auth.pam);
        assert_eq!(c.auth.pam_service, "dropzone");
        assert!(!c.auth.pam_allow_root);
        assert_eq!(c.auth.pam_timeout, Duration::from_secs(10));
        let text = "[auth]\npam = true\npam_service = \"dropzone-test\"\npam_allow_root = true\npam_timeout_secs = 3\n";
        if cfg!(feature = "pam") {
            let c = Config::parse(text).unwrap();
            assert!(c.auth.pam && c.auth.pam_allow_root);
            assert_eq!(c.auth.pam_service, "dropzone-test");
            assert_eq!(c.auth.pam_timeout, Duration::from_secs(3));
        } else {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains("not available in this build"), "{e}");
        }
        for bad in [
            "pam_service = \"../shadow\"",
            "pam_service = \"\"",
            "pam_timeout_secs = 0",
        ] {
            assert!(Config::parse(&format!("[auth]\n{bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn audit_and_metrics_keys() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.audit.log_file, None);
        assert_eq!(c.metrics.listen, None);
        let c = Config::parse(
            "[audit]\nlog_file = \"audit.jsonl\"\n[metrics]\nlisten = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        assert_eq!(c.audit.log_file, Some(PathBuf::from("audit.jsonl")));
        assert_eq!(
            c.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        for (bad, key) in [
            ("[audit]\nlogfile = \"a\"\n", "logfile"),
            ("[audit]\nlog_file = \"\"\n", "audit.log_file"),
            ("[metrics]\nlisten = \"localhost\"\n", "listen"),
            ("[metrics]\npath = \"/m\"\n", "path"),
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn eaas_version_may_be_a_number() {
        let c = Config::parse(
            "[kms]\nbackend = \"eaas\"\n[kms.eaas]\nurl = \"http://e:8443\"\nsecret_path = \"p\"\nsecret_version = 2\n",
        )
        .unwrap();
        let e = c.kms.eaas.unwrap();
        assert_eq!(e.secret_version.as_str(), "2");
        assert_eq!(e.connect_timeout, Duration::from_secs(5));
        assert_eq!(e.request_timeout, Duration::from_secs(15));
        assert_eq!(e.token_file, None);
    }

    #[test]
    fn eaas_optional_keys() {
        let c = Config::parse(
            "[kms]\nbackend = \"eaas\"\n[kms.eaas]\nurl = \"https://e:8443\"\nsecret_path = \"p\"\n\
             secret_version = \"3\"\ntoken_file = \"secrets/token\"\nca_file = \"secrets/ca.pem\"\n\
             connect_timeout_secs = 2\nrequest_timeout_secs = 30\n",
        )
        .unwrap();
        let e = c.kms.eaas.unwrap();
        assert_eq!(e.token_file, Some(PathBuf::from("secrets/token")));
        assert_eq!(e.ca_file, Some(PathBuf::from("secrets/ca.pem")));
        assert_eq!(e.connect_timeout, Duration::from_secs(2));
        assert_eq!(e.request_timeout, Duration::from_secs(30));
        for bad in [
            "secret_version = \"v1\"",
            "secret_version = -1",
            "secret_version = 1.5",
        ] {
            let text = format!("[kms.eaas]\nurl = \"http://e\"\nsecret_path = \"p\"\n{bad}\n");
            assert!(Config::parse(&text).is_err(), "{bad}");
        }
        let text = "[kms.eaas]\nurl = \"http://e\"\nsecret_path = \"p\"\nsecret_version = 1\nrequest_timeout_secs = 0\n";
        assert!(
            Config::parse(text)
                .unwrap_err()
                .contains("request_timeout_secs")
        );
    }
}
