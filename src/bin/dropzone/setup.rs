//! What the subcommands start from: the configuration (with its
//! environment overrides) and the key service it names.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use dropzone::auth::users_source::UsersSource;
use dropzone::aws::s3::{CredentialSource, S3Client, S3Options};
use dropzone::config::{self, Config, KmsBackend, S3Config, StorageConfig, UsersFileAt, VaultAuth};
use dropzone::daemon::ConfigFailure;
use dropzone::keys::UserKeys;
use dropzone::keys::key_store::S3KeyFiles;
use dropzone::kms::KeyWrapper;
use dropzone::kms::aws_kms::{AwsKms, AwsKmsOptions, credentials::Provider};
use dropzone::kms::eaas::{EaasKms, EaasOptions};
use dropzone::kms::local::LocalKms;
use dropzone::kms::vault::{Credentials, VaultKms, VaultOptions};
use dropzone::store::Backend;

/// `--config`, shared by every subcommand.
#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "DROPZONE_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

/// Loads the configuration `arg` names; `DROPZONE_LISTEN` overrides
/// `listen`. Any failure is a [`ConfigFailure`].
pub fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    let mut config = Config::load(&arg.config).map_err(|e| ConfigFailure(e.to_string()))?;
    if let Ok(listen) = std::env::var("DROPZONE_LISTEN") {
        config.listen = listen
            .parse()
            .map_err(|e| ConfigFailure(format!("DROPZONE_LISTEN={listen:?}: {e}")))?;
    }
    Ok(config)
}

/// The configured key service backend.
pub fn key_wrapper(config: &Config) -> anyhow::Result<Arc<dyn KeyWrapper>> {
    match config.kms.backend {
        KmsBackend::Local => Ok(Arc::new(
            LocalKms::new(
                config.kms.local_key_dir.clone(),
                config.kms.local_secret_version.to_string(),
            )
            .context("local key backend")?,
        )),
        KmsBackend::Eaas => {
            let Some(e) = &config.kms.eaas else {
                return Err(ConfigFailure(
                    "kms.backend = \"eaas\" needs a [kms.eaas] table".into(),
                )
                .into());
            };
            let mut options = EaasOptions::new(
                e.url.clone(),
                e.secret_path.clone(),
                e.secret_version.to_string(),
            );
            options.token_file = e.token_file.clone();
            options.ca_file = e.ca_file.clone();
            options.connect_timeout = e.connect_timeout;
            options.request_timeout = e.request_timeout;
            let kms =
                EaasKms::new(options).map_err(|e| ConfigFailure(format!("[kms.eaas]: {e}")))?;
            if kms.url().starts_with("http://") {
                tracing::warn!(
                    url = kms.url(),
                    "the key service URL is plain HTTP: user keys cross the network unencrypted; \
                     use https (with ca_file) outside a private network"
                );
            }
            Ok(Arc::new(kms))
        }
        KmsBackend::AwsKms => aws_kms(config),
        KmsBackend::Vault => vault(config),
    }
}

/// The Vault backend, its Transit key checked (and created if missing):
/// a key that cannot be made or used (not derived, no permission) is a
/// configuration error; Vault being unreachable is not (logins fail closed
/// until it is back).
fn vault(config: &Config) -> anyhow::Result<Arc<dyn KeyWrapper>> {
    let Some(v) = &config.kms.vault else {
        return Err(
            ConfigFailure("kms.backend = \"vault\" needs a [kms.vault] table".into()).into(),
        );
    };
    let failure = |e: dropzone::kms::KmsError| ConfigFailure(format!("[kms.vault]: {e}"));
    let credentials = match &v.auth {
        VaultAuth::TokenFile(path) => Credentials::TokenFile(path.clone()),
        VaultAuth::AppRole {
            mount,
            role_id_file,
            secret_id_file,
        } => Credentials::AppRole {
            mount: mount.clone(),
            role_id_file: role_id_file.clone(),
            secret_id_file: secret_id_file.clone(),
        },
    };
    let mut options = VaultOptions::new(v.address.clone(), v.key_name.clone(), credentials);
    options.mount = v.mount.clone();
    options.namespace = v.namespace.clone();
    options.ca_file = v.ca_file.clone();
    options.connect_timeout = v.connect_timeout;
    options.request_timeout = v.request_timeout;
    let kms = VaultKms::new(options).map_err(failure)?;
    if kms.address().starts_with("http://") {
        tracing::warn!(
            address = kms.address(),
            "the Vault address is plain HTTP: user keys and the token cross the network \
             unencrypted; use https (with ca_file) outside a private network"
        );
    }
    match kms.ensure_master_key(&kms.current()) {
        Ok(()) => {
            tracing::info!(address = kms.address(), master = %kms.current(), "Vault Transit key ready")
        }
        Err(e) if e.is_transient() => tracing::warn!(
            address = kms.address(),
            error = %e,
            "Vault unavailable at start-up; logins are refused until it is back"
        ),
        Err(e) => return Err(failure(e).into()),
    }
    Ok(Arc::new(kms))
}

/// The AWS KMS backend, its key checked with `DescribeKey`: a missing,
/// disabled or unsuitable key (or no credentials) is a configuration error;
/// KMS being unreachable is not (logins fail closed until it is back).
fn aws_kms(config: &Config) -> anyhow::Result<Arc<dyn KeyWrapper>> {
    let Some(a) = &config.kms.aws_kms else {
        return Err(
            ConfigFailure("kms.backend = \"aws-kms\" needs a [kms.aws_kms] table".into()).into(),
        );
    };
    let failure = |e: dropzone::kms::KmsError| ConfigFailure(format!("[kms.aws_kms]: {e}"));
    let credentials = Provider::from_env(&|name| std::env::var(name).ok(), &a.region)
        .map_err(|e| failure(e.into()))?;
    let mut options = AwsKmsOptions::new(a.key_id.clone(), a.region.clone());
    options.endpoint = a.endpoint.clone();
    options.connect_timeout = a.connect_timeout;
    options.request_timeout = a.request_timeout;
    let kms = AwsKms::new(options, credentials).map_err(failure)?;
    if kms.endpoint().starts_with("http://") {
        tracing::warn!(
            endpoint = kms.endpoint(),
            "the AWS KMS endpoint is plain HTTP: user keys cross the network unencrypted"
        );
    }
    match kms.check_key() {
        Ok(arn) => {
            tracing::info!(key = %arn, credentials = %kms.credentials_source(), "AWS KMS key ready")
        }
        Err(e) if e.is_transient() => tracing::warn!(
            key_id = %a.key_id,
            error = %e,
            "AWS KMS unavailable at start-up; logins are refused until it is back"
        ),
        Err(e) => return Err(failure(e).into()),
    }
    Ok(Arc::new(kms))
}

/// The user key files (in `keks_dir`, or the bucket with `[storage]
/// backend = "s3"`), with keys wrapped by `wrapper`.
pub fn user_keys_with(config: &Config, wrapper: Arc<dyn KeyWrapper>) -> anyhow::Result<UserKeys> {
    user_keys_in(&storage_backend(config)?, config, wrapper)
}

/// As [`user_keys_with`], on `backend`'s bucket (sharing its client) when
/// it is S3.
pub fn user_keys_in(
    backend: &Backend,
    config: &Config,
    wrapper: Arc<dyn KeyWrapper>,
) -> anyhow::Result<UserKeys> {
    match backend {
        Backend::Local { .. } => {
            UserKeys::new(config.keks_dir.clone(), wrapper, config.kms.key_cache_ttl)
                .context("user key directory")
        }
        Backend::S3 { client, prefix, .. } => Ok(UserKeys::with_files(
            Arc::new(S3KeyFiles::new(client.clone(), prefix)),
            wrapper,
            config.kms.key_cache_ttl,
        )),
    }
}

/// The configured storage backend: where users' trees are.
pub fn storage_backend(config: &Config) -> anyhow::Result<Backend> {
    match &config.storage {
        StorageConfig::Local => Ok(Backend::Local {
            data_dir: config.data_dir.clone(),
        }),
        StorageConfig::S3(s3) => Ok(Backend::S3 {
            client: s3_client(s3)?,
            prefix: s3.prefix.clone(),
            part_size: s3.part_size,
        }),
    }
}

/// Where the users file is: its path, or its object reached with
/// `[storage.s3]`'s endpoint and credentials (the configuration has
/// checked that there is one).
pub fn users_source(config: &Config) -> anyhow::Result<UsersSource> {
    match (&config.auth.users_file, &config.storage) {
        (UsersFileAt::Path(path), _) => Ok(UsersSource::file(path.clone())),
        (UsersFileAt::Object { bucket, key }, StorageConfig::S3(s3)) => {
            let s3 = S3Config {
                bucket: bucket.clone(),
                ..(**s3).clone()
            };
            Ok(UsersSource::object(s3_client(&s3)?, key.clone()))
        }
        (at @ UsersFileAt::Object { .. }, StorageConfig::Local) => Err(ConfigFailure(format!(
            "auth.users_file = \"{at}\" needs [storage] backend = \"s3\""
        ))
        .into()),
    }
}

/// The client of the bucket `[storage.s3]` names.
pub fn s3_client(s3: &S3Config) -> anyhow::Result<S3Client> {
    let mut options = S3Options::new(s3.region.clone(), s3.bucket.clone());
    options.endpoint = s3.endpoint.clone();
    options.path_style = s3.path_style;
    options.ca_file = s3.ca_file.clone();
    options.connect_timeout = s3.connect_timeout;
    options.request_timeout = s3.request_timeout;
    if let Some((access_key_id, secret_access_key)) = &s3.credential_files {
        options.credentials = CredentialSource::Files {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
        };
    }
    S3Client::new(options).map_err(|e| ConfigFailure(format!("storage.s3: {e}")).into())
}

/// The user key directory, with keys wrapped by the configured backend.
pub fn user_keys(config: &Config) -> anyhow::Result<UserKeys> {
    user_keys_with(config, key_wrapper(config)?)
}
