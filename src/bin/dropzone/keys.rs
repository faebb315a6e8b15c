//! `dropzone keys rotate`: re-wraps every user's key under a new master
//! key version.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use dropzone::config::Config;
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
    Rotate {
        /// The master key version to re-wrap under (decimal digits).
        #[arg(long, value_name = "V")]
        secret_version: SecretVersion,
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
        } => rotate(&load_config(&config)?, secret_version.as_str()),
    }
}

/// `dropzone keys rotate`: re-wraps every user's key under version `version`.
fn rotate(config: &Config, version: &str) -> anyhow::Result<ExitCode> {
    let wrapper = key_wrapper(config)?;
    let to = MasterKeyRef {
        secret_path: wrapper.current().secret_path,
        secret_version: version.to_owned(),
    };
    wrapper
        .ensure_master_key(&to)
        .with_context(|| format!("creating master key {to} ({} backend)", wrapper.backend()))?;
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
