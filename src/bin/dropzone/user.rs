//! `dropzone user add|set|remove|list`: the users file.
//!
//! Each command that changes the file holds its lock
//! ([`UsersFileLock`]) from reading it to saving it, so that two run at
//! once (two operators, a script) do not lose either change.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use dropzone::access::{Permissions, Role};
use dropzone::auth::authorized_keys::key_lines;
use dropzone::auth::password;
use dropzone::auth::users_file::{UserAccess, UsersFile, UsersFileLock};

use crate::setup::{ConfigArg, load_config};

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
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Change an existing user's role or extra permissions (running servers
    /// apply it from each session's next request).
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
    /// List the users.
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
            config,
        } => {
            let config = load_config(&config)?;
            let path = &config.auth.users_file;
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
            if hash.is_none() && keys.is_empty() {
                bail!("give --password-stdin or --authorized-key FILE, or the user cannot log in");
            }
            let access = UserAccess {
                role: role.unwrap_or_default(),
                role_written: role.is_some(),
                extra: permissions.unwrap_or_default(),
            };
            // Locked only now: a password prompt must not hold up others.
            let _lock = UsersFileLock::acquire(path)?;
            let mut users = UsersFile::load(path)?;
            users.add_user_with(&name, hash, keys, access)?;
            users.save(path)?;
            println!(
                "added user {name} to {} ({})",
                path.display(),
                describe(&access)
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Set {
            name,
            role,
            permissions,
            config,
        } => {
            if role.is_none() && permissions.is_none() {
                bail!("give --role PRESET or --permissions LIST to change");
            }
            let config = load_config(&config)?;
            let path = &config.auth.users_file;
            let _lock = UsersFileLock::acquire(path)?;
            let mut users = UsersFile::load(path)?;
            let access = users.set_access(&name, role, permissions)?;
            users.save(path)?;
            println!("user {name}: {}", describe(&access));
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Remove { name, config } => {
            let config = load_config(&config)?;
            let path = &config.auth.users_file;
            let _lock = UsersFileLock::acquire(path)?;
            let mut users = UsersFile::load(path)?;
            if !users.remove_user(&name)? {
                bail!("no user {name} in {}", path.display());
            }
            users.save(path)?;
            println!(
                "removed user {name}; their files ({}) and key ({}) are kept",
                config.data_dir.join(&name).display(),
                config.keks_dir.join(format!("{name}.key")).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { config } => {
            let config = load_config(&config)?;
            let users = UsersFile::load(&config.auth.users_file)?;
            for u in users.users() {
                let mut methods = Vec::new();
                if u.password_hash().is_some() {
                    methods.push("password".to_owned());
                }
                if !u.key_lines().is_empty() {
                    methods.push(format!("{} key(s)", u.key_lines().len()));
                }
                println!(
                    "{}\t{}\t{}",
                    u.name(),
                    methods.join(", "),
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
