//! `dropzone keys rotate`: re-wraps every user's key under a new master
//! key version; `dropzone keys migrate`: moves them to another backend.

mod migrate;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use dropzone::config::{Config, KmsBackend};
use dropzone::daemon::ConfigFailure;
use dropzone::keys::Rewrapped;
use dropzone::kms::{MasterKeyRef, SecretVersion};

use crate::setup::{ConfigArg, key_wrapper, load_config, user_keys_with};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Re-wrap every user's key under master key version V (created at the
    /// key service if needed). Stored files are not touched. Resumable and
    /// idempotent: users already on V are skipped. Exit 1 if any user failed.
    ///
    /// Afterwards, set the configured secret_version to V so that new users
    /// get it too; each login unwraps with the version in the user's key file.
    ///
    /// With the vault backend, --secret-version is optional: without it the
    /// Transit key is rotated at Vault and every key re-wrapped (by Vault's
    /// rewrap) under the new version, which new users get by themselves.
    ///
    /// With aws-kms, leave --secret-version out (or give 1): every key not
    /// yet under the configured key_id is re-encrypted under it inside KMS
    /// (ReEncrypt). To move to a new KMS key, change key_id, then rotate.
    Rotate {
        /// The master key version to re-wrap under (decimal digits;
        /// required except with the vault and aws-kms backends).
        #[arg(long, value_name = "V")]
        secret_version: Option<SecretVersion>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Move every user's key to the backend that NEW.toml configures
    /// (e.g. from local or eaas to aws-kms), without touching stored files.
    ///
    /// Without --finish: adds the new backend's wrapping to each key file,
    /// keeping the old one, so servers on either configuration read every
    /// user throughout; users already done are skipped (resumable,
    /// idempotent). Then run every server with NEW.toml, run this again
    /// (it catches users created meanwhile), and finally run it with
    /// --finish, which keeps only the new backend's wrapping. Both
    /// configurations must keep keys in the same place (the same keks_dir,
    /// or with [storage] backend = "s3" the same bucket and prefix). Exit 1
    /// if any user failed.
    Migrate {
        /// The configuration with the backend to move to.
        #[arg(long, value_name = "NEW.toml")]
        to_config: std::path::PathBuf,
        /// Drop the wrappings of other backends (once every server runs
        /// NEW.toml); each user's new wrapping is checked first.
        #[arg(long)]
        finish: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs `dropzone keys ...`.
pub fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Rotate {
            secret_version,
            config,
        } => rotate(&load_config(&config)?, secret_version.as_ref()),
        KeysCommand::Migrate {
            to_config,
            finish,
            config,
        } => migrate::migrate(&load_config(&config)?, &to_config, finish),
    }
}

/// `dropzone keys rotate`: re-wraps every user's key under version
/// `version`, or (without one) under a new version the backend makes.
fn rotate(config: &Config, version: Option<&SecretVersion>) -> anyhow::Result<ExitCode> {
    if version.is_none() && !matches!(config.kms.backend, KmsBackend::Vault | KmsBackend::AwsKms) {
        // A usage error, as when clap required the option for every backend.
        eprintln!(
            "error: --secret-version V is required with this key backend \
             (only vault and aws-kms choose master keys themselves)"
        );
        return Ok(ExitCode::from(2));
    }
    let wrapper = key_wrapper(config)?;
    let to = match version {
        Some(version) => {
            let to = MasterKeyRef {
                secret_path: wrapper.current().secret_path,
                secret_version: version.as_str().to_owned(),
            };
            wrapper.ensure_master_key(&to).with_context(|| {
                format!("creating master key {to} ({} backend)", wrapper.backend())
            })?;
            to
        }
        None => {
            let to = wrapper
                .rotate_master_key()
                .map_err(|e| ConfigFailure(format!("dropzone keys rotate: {e}")))?;
            if config.kms.backend == KmsBackend::AwsKms {
                // KMS rotates a key's backing material itself; what moves
                // here is every key not yet under the configured key.
                println!("re-encrypting under the configured KMS key");
            } else {
                println!(
                    "rotated the master key at the key service; if this run does not finish, \
                     resume it with --secret-version {}",
                    to.secret_version
                );
            }
            to
        }
    };
    let version = to.secret_version.as_str();
    println!("master key {to} is ready ({} backend)", wrapper.backend());
    let keys = user_keys_with(config, wrapper.clone())?;
    let users = keys.users()?;
    let (mut rotated, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    for user in &users {
        match keys.rewrap(user, &to) {
            Ok(Rewrapped::Done { from }) => {
                rotated += 1;
                let from = if from.secret_path == to.secret_path {
                    from.secret_version
                } else {
                    from.to_string()
                };
                println!("rotated {user} ({from} -> {version})");
            }
            Ok(Rewrapped::Already) => {
                skipped += 1;
                println!("skipped {user} (already {version})");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {user}: {e}");
            }
        }
        let _ = std::io::stdout().flush();
    }
    println!(
        "{} user(s): {rotated} rotated, {skipped} already on version {version}, {failed} failed",
        users.len()
    );
    if failed > 0 {
        eprintln!("dropzone: {failed} user(s) not rotated; run the command again to retry them");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
