//! `dropzone import-legacy`: the original (Python) Dropzone's users and
//! files, re-encrypted into the store (see docs/MIGRATION.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use dropzone::config::{Config, KmsBackend};
use dropzone::daemon::ConfigFailure;
use dropzone::kms::{KeyWrapper, MasterKeyRef, SecretVersion};
use dropzone::legacy::{Event as LegacyEvent, ImportError, ImportOptions};

use crate::setup::{ConfigArg, key_wrapper, load_config, storage_backend, users_source};

/// Import the original (Python) Dropzone's users and files.
///
/// Unwraps each user's key through the configured key service (EaaS),
/// re-encrypts every file into the configured storage (data_dir/NAME/, or
/// PREFIX/data/NAME/ in the bucket with [storage] backend = "s3") and
/// creates the user's Dropzone key (in keks_dir, or the bucket). Idempotent; the source is never modified. Progress on
/// standard error, a summary on standard output; exit 1 if anything was
/// not imported. See docs/MIGRATION.md.
#[derive(clap::Args)]
pub struct Args {
    /// The original's key directory (files .<sha224 of the user>.secret).
    #[arg(long, value_name = "DIR")]
    keks: PathBuf,
    /// The original's home directories (one NAME/ per user).
    #[arg(long, value_name = "DIR")]
    homes: PathBuf,
    /// Report what would be done, checking every key and file length, writing
    /// nothing (no key, no directory, no file).
    #[arg(long)]
    dry_run: bool,
    /// Replace destination files that hold other content (by default
    /// they are reported as conflicts and left alone).
    #[arg(long)]
    overwrite: bool,
    /// Import only this user (repeatable).
    #[arg(long = "user", value_name = "NAME")]
    users: Vec<String>,
    /// The key service's secret path of the original's keys (default:
    /// [kms.eaas] secret_path).
    #[arg(long, value_name = "PATH")]
    secret_path: Option<String>,
    /// The key service's secret version of the original's keys
    /// (default: [kms.eaas] secret_version).
    #[arg(long, value_name = "V")]
    secret_version: Option<SecretVersion>,
    #[command(flatten)]
    config: ConfigArg,
}

/// Runs the import against the configured key service, which must be the
/// EaaS (a [`ConfigFailure`] otherwise).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        keks,
        homes,
        dry_run,
        overwrite,
        users,
        secret_path,
        secret_version,
        config,
    } = args;
    let config = load_config(&config)?;
    if config.kms.backend != KmsBackend::Eaas {
        return Err(ConfigFailure(ImportError::NeedsEaas("local").to_string()).into());
    }
    let wrapper = key_wrapper(&config)?;
    let current = wrapper.current();
    let legacy_master = MasterKeyRef {
        secret_path: secret_path.unwrap_or(current.secret_path),
        secret_version: secret_version.map_or(current.secret_version, SecretVersion::into_string),
    };
    let options = ImportOptions {
        legacy_keks: keks,
        legacy_homes: homes,
        backend: storage_backend(&config)?,
        keks_dir: config.keks_dir.clone(),
        legacy_master,
        dry_run,
        overwrite,
        only: users,
    };
    import_legacy(&config, wrapper, &options)
}

/// `dropzone import-legacy`: runs the import with progress on stderr and
/// the summary on stdout.
fn import_legacy(
    config: &Config,
    wrapper: Arc<dyn KeyWrapper>,
    options: &ImportOptions,
) -> anyhow::Result<ExitCode> {
    let mut progress = |event: &LegacyEvent| {
        eprintln!("{event}");
    };
    let summary = match dropzone::legacy::import(options, wrapper, &mut progress) {
        Ok(summary) => summary,
        Err(e @ ImportError::NeedsEaas(_)) => return Err(ConfigFailure(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    print!("{summary}");
    // The import carries files and keys, not logins: say who cannot log in yet.
    if !config.auth.pam {
        let (known, _) = users_source(config)?.load()?;
        let missing: Vec<&str> = summary
            .users
            .iter()
            .map(String::as_str)
            .filter(|u| known.get(u).is_none())
            .collect();
        if !missing.is_empty() {
            println!(
                "  not in the users file {} (they cannot log in until added with \
                 `dropzone user add NAME ...`): {}",
                config.auth.users_file,
                missing.join(" ")
            );
        }
    }
    Ok(if summary.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
