//! `dropzone user add|remove|list`: the users file.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use dropzone::auth::authorized_keys::key_lines;
use dropzone::auth::{password, users_file::UsersFile};

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
            config,
        } => {
            let config = load_config(&config)?;
            let path = &config.auth.users_file;
            let mut users = UsersFile::load(path)?;
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
            users.add_user(&name, hash, keys)?;
            users.save(path)?;
            println!("added user {name} to {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Remove { name, config } => {
            let config = load_config(&config)?;
            let path = &config.auth.users_file;
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
                println!("{}\t{}", u.name(), methods.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
