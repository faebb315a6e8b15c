//! `dropzone user add|set|remove|list`: the users file.
//!
//! Each command that changes the file does so through
//! [`UsersSource::update`](dropzone::auth::users_source::UsersSource::update): a local file under its lock from reading it to
//! saving it, an object in a bucket (`users_file = "s3://..."`) written
//! only if no other node wrote it meanwhile, so that two run at once (two
//! operators, a script, two nodes) do not lose either change.
//!
//! `user list` shows each user's role, quota and usage: from the usage
//! record the server keeps (see [`dropzone::quota`]), or, on a shared store
//! (S3), where no record is kept, counted from the bucket when the command
//! runs.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use dropzone::access::{Permissions, Role};
use dropzone::auth::authorized_keys::key_lines;
use dropzone::auth::password;
use dropzone::auth::users_file::UserAccess;

use dropzone::quota::{UsageStatus, UsageView};
use dropzone::store::bounds::human_size;
use dropzone::store::quota::{Limits, Usage};

use dropzone::config::Config;
use dropzone::keys::key_store::{KeyFiles, S3KeyFiles};
use dropzone::store::Backend;
use dropzone::username::UserName;

use crate::setup::{ConfigArg, load_config, storage_backend, users_source};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user to the users file.
    Add {
        /// User name (letters, digits, _ . -).
        name: String,
        /// Read a password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// An authorized_keys file (or a .pub file) whose keys may log in; repeatable.
        #[arg(long = "authorized-key", value_name = "FILE")]
        authorized_keys: Vec<PathBuf>,
        /// What the user may do: full (the default), read-only or upload-only.
        #[arg(long, value_name = "PRESET")]
        role: Option<Role>,
        /// Permissions added to the role's, comma-separated (list, download,
        /// upload, overwrite, delete, rename, mkdir, rmdir, symlink, chmod).
        #[arg(long, value_name = "LIST")]
        permissions: Option<Permissions>,
        /// Most plaintext bytes the user may store (e.g. 1073741824, 500M,
        /// 10G; K, M, G, T are powers of 1024).
        #[arg(long, value_name = "N")]
        quota_bytes: Option<QuotaArg>,
        /// Most regular files the user may store.
        #[arg(long, value_name = "N")]
        quota_files: Option<QuotaArg>,
        /// Certificate principals accepted for this user, comma-separated
        /// (by default a certificate must name the user).
        #[arg(long, value_name = "LIST")]
        principals: Option<PrincipalsArg>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Change an existing user's role, extra permissions or quota (running
    /// servers apply it from each session's next request).
    Set {
        /// User name.
        name: String,
        /// The new role: full, read-only or upload-only.
        #[arg(long, value_name = "PRESET")]
        role: Option<Role>,
        /// The permissions added to the role's, replacing the previous ones
        /// ("" for none).
        #[arg(long, value_name = "LIST")]
        permissions: Option<Permissions>,
        /// The most plaintext bytes the user may store (as for add), or
        /// "none" to remove the limit.
        #[arg(long, value_name = "N|none")]
        quota_bytes: Option<QuotaArg>,
        /// The most regular files the user may store, or "none".
        #[arg(long, value_name = "N|none")]
        quota_files: Option<QuotaArg>,
        /// The certificate principals accepted, comma-separated, replacing
        /// the previous ones ("" for none: a certificate must name the user).
        #[arg(long, value_name = "LIST")]
        principals: Option<PrincipalsArg>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a user from the users file (their files and key stay on disk).
    Remove {
        /// User name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the users with their role, quota and usage.
    ///
    /// Usage comes from the records the server keeps beside the keys. With
    /// [storage] backend = "s3" there are none (each node counts only its
    /// own sessions): the usage shown is counted from the bucket when this
    /// command runs (a listing of each user's files, nothing decrypted), as
    /// `dropzone quota scan` does.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs `dropzone user ...`.
pub fn run(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            name,
            password_stdin,
            authorized_keys,
            role,
            permissions,
            quota_bytes,
            quota_files,
            principals,
            config,
        } => {
            let config = load_config(&config)?;
            let hash = if password_stdin {
                let mut line = zeroize::Zeroizing::new(String::new());
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password")?;
                let pw = line.trim_end_matches(['\n', '\r']);
                if pw.is_empty() {
                    bail!("empty password on standard input");
                }
                Some(password::hash_password(pw)?)
            } else {
                None
            };
            let mut keys = Vec::new();
            for file in &authorized_keys {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                keys.extend(key_lines(&text).map(str::to_owned));
            }
            if hash.is_none() && keys.is_empty() && principals.is_none() {
                bail!(
                    "give --password-stdin, --authorized-key FILE or --principals LIST, or the user cannot log in"
                );
            }
            let access = UserAccess {
                role: role.unwrap_or_default(),
                role_written: role.is_some(),
                extra: permissions.unwrap_or_default(),
            };
            // Changed only now: a password prompt must not hold up others.
            let users = users_source(&config)?;
            let quota = users.update(|file| -> anyhow::Result<_> {
                file.add_user_with(&name, hash.clone(), keys.clone(), access)?;
                if let Some(PrincipalsArg(list)) = &principals {
                    file.set_principals(&name, list.clone())?;
                }
                Ok(file.set_quota(
                    &name,
                    quota_bytes.map(QuotaArg::limit),
                    quota_files.map(QuotaArg::limit),
                )?)
            })?;
            println!(
                "added user {name} to {} ({}, {})",
                users.name().display(),
                describe(&access),
                describe_quota(&quota)
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Set {
            name,
            role,
            permissions,
            quota_bytes,
            quota_files,
            principals,
            config,
        } => {
            if role.is_none()
                && permissions.is_none()
                && quota_bytes.is_none()
                && quota_files.is_none()
                && principals.is_none()
            {
                bail!(
                    "give --role PRESET, --permissions LIST, --quota-bytes N|none, --quota-files N|none or --principals LIST to change"
                );
            }
            let config = load_config(&config)?;
            let (access, quota) = users_source(&config)?.update(|file| -> anyhow::Result<_> {
                let access = file.set_access(&name, role, permissions)?;
                if let Some(PrincipalsArg(list)) = &principals {
                    file.set_principals(&name, list.clone())?;
                }
                let quota = file.set_quota(
                    &name,
                    quota_bytes.map(QuotaArg::limit),
                    quota_files.map(QuotaArg::limit),
                )?;
                Ok((access, quota))
            })?;
            println!(
                "user {name}: {}, {}",
                describe(&access),
                describe_quota(&quota)
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Remove { name, config } => {
            let config = load_config(&config)?;
            let users = users_source(&config)?;
            users.update(|file| -> anyhow::Result<()> {
                if !file.remove_user(&name)? {
                    bail!("no user {name} in {}", users.name().display());
                }
                Ok(())
            })?;
            let (files, key) = kept_at(&config, &name)?;
            println!("removed user {name}; their files ({files}) and key ({key}) are kept");
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { config } => {
            let config = load_config(&config)?;
            let (users, _) = users_source(&config)?.load()?;
            let backend = storage_backend(&config)?;
            for u in users.users() {
                let mut methods = Vec::new();
                if u.password_hash().is_some() {
                    methods.push("password".to_owned());
                }
                if !u.key_lines().is_empty() {
                    methods.push(format!("{} key(s)", u.key_lines().len()));
                }
                if !u.principals().is_empty() {
                    methods.push(format!("certificates for {}", u.principals().join(" ")));
                }
                let usage = if backend.is_shared() {
                    describe_counted(&backend, u.name())
                } else {
                    let usage = dropzone::quota::recorded(&config.keks_dir, u.name())
                        .with_context(|| format!("usage record of {}", u.name()))?;
                    describe_usage(usage.as_ref())
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    u.name(),
                    methods.join(", "),
                    describe_quota(&u.quota()),
                    usage,
                    describe(&u.access())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `role R` and `+ extra` if the user has permissions beyond the role's.
fn describe(access: &UserAccess) -> String {
    if access.extra.is_empty() {
        format!("role {}", access.role)
    } else {
        format!("role {} + {}", access.role, access.extra)
    }
}

/// `--principals`: a comma-separated list ("" for none), checked when set
/// ([`dropzone::auth::users_file::UsersFile::set_principals`]).
#[derive(Debug, Clone)]
pub struct PrincipalsArg(Vec<String>);

impl std::str::FromStr for PrincipalsArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(PrincipalsArg(
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// A quota option's value: a number (with an optional K, M, G or T
/// suffix, powers of 1024) or `none`.
#[derive(Debug, Clone, Copy)]
pub struct QuotaArg(Option<u64>);

impl QuotaArg {
    /// The limit it sets (`None`: no limit).
    fn limit(self) -> Option<u64> {
        self.0
    }
}

impl std::str::FromStr for QuotaArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(QuotaArg(None));
        }
        let bad = || format!("{s:?}: expected a number (e.g. 1000, 500M, 10G) or none");
        let (digits, shift) = match s.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    _ => return Err(bad()),
                };
                (&s[..i], shift)
            }
            _ => (s, 0),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift)
            .map(|n| QuotaArg(Some(n)))
            .ok_or_else(bad)
    }
}

/// `quota 1 GiB, 100 files`, or `no quota`.
fn describe_quota(quota: &Limits) -> String {
    let mut parts = Vec::new();
    if let Some(bytes) = quota.bytes {
        parts.push(human_size(bytes));
    }
    if let Some(files) = quota.files {
        parts.push(format!("{files} files"));
    }
    if parts.is_empty() {
        "no quota".to_owned()
    } else {
        format!("quota {}", parts.join(", "))
    }
}

/// Where a removed user's files and key stay, for the operator.
fn kept_at(config: &Config, name: &str) -> anyhow::Result<(String, String)> {
    let backend = storage_backend(config)?;
    // Names in the users file were checked when added; an odd one is shown as is.
    let files =
        UserName::parse(name).map_or_else(|_| name.to_owned(), |u| backend.describe_user(&u));
    let key_name = format!("{name}.key");
    let key = match &backend {
        Backend::S3 { client, prefix, .. } => {
            S3KeyFiles::new(client.clone(), prefix).location(&key_name)
        }
        Backend::Local { .. } => config.keks_dir.join(key_name),
    };
    Ok((files, key.display().to_string()))
}

/// On a shared store: the usage counted from the store now, `nothing
/// stored`, or why it could not be counted (the list goes on).
fn describe_counted(backend: &Backend, user: &UserName) -> String {
    match dropzone::quota::counted(backend, user) {
        Ok(Some(Usage { bytes, files })) => format!(
            "used {} ({bytes} bytes), {files} files (counted from the store now)",
            human_size(bytes)
        ),
        Ok(None) => "nothing stored".to_owned(),
        Err(e) => format!("usage unknown: cannot count it from the store: {e}"),
    }
}

/// `used 12 MiB (12582912 bytes), 3 files`, with how far to trust it.
fn describe_usage(view: Option<&UsageView>) -> String {
    let Some(view) = view else {
        return "usage not recorded yet".to_owned();
    };
    let Usage { bytes, files } = view.usage;
    let note = match view.status {
        UsageStatus::Clean => "",
        UsageStatus::Live => " (live)",
        UsageStatus::Stale => " (stale: recomputed at the next login or by dropzone quota scan)",
    };
    format!(
        "used {} ({bytes} bytes), {files} files{note}",
        human_size(bytes)
    )
}
