//! `dropzone quota scan`: recomputes users' quota usage from what is
//! stored.
//!
//! Each user's tree is walked (sizes from stored lengths; nothing is
//! decrypted, so no key service is needed) and their usage record written
//! clean. A user a running server holds (they have sessions or open files)
//! is left alone: that server's figures are live, and it would overwrite
//! the scan's when the user leaves. The scan says so and exits 1; rerun it
//! once the user's sessions are over (see [`dropzone::quota`]).

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use dropzone::config::Config;
use dropzone::quota::{Rescan, rescan};
use dropzone::store::bounds::human_size;
use dropzone::store::storage::LocalStorage;
use dropzone::username::UserName;

use crate::setup::{ConfigArg, load_config};

#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Recompute users' usage (bytes and files) from their stored files
    /// and save it; users with sessions on a running server are skipped
    /// (exit 1).
    Scan {
        /// Only this user (default: every user with a directory in data_dir).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs `dropzone quota ...`.
pub fn run(cmd: QuotaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QuotaCommand::Scan { user, config } => scan(&load_config(&config)?, user.as_deref()),
    }
}

/// One line per user: their new usage, or why they were skipped.
fn scan(config: &Config, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let users = match only {
        Some(name) => vec![UserName::parse(name)?],
        None => users_with_data(config)?,
    };
    let mut skipped = 0;
    for user in users {
        let root = config.data_dir.join(user.as_str());
        if !root.is_dir() {
            // Opening the root would create it; there is nothing to count.
            println!("{user}: nothing stored (no directory)");
            continue;
        }
        let storage = LocalStorage::open_root(&root)
            .with_context(|| format!("opening {}", root.display()))?;
        match rescan(&config.keks_dir, &user, &storage)
            .with_context(|| format!("scanning user {user}"))?
        {
            Rescan::Scanned(usage) => println!(
                "{user}: {} ({} bytes), {} files",
                human_size(usage.bytes),
                usage.bytes,
                usage.files
            ),
            Rescan::InUse => {
                skipped += 1;
                println!(
                    "{user}: skipped: a running server has this user's sessions and keeps their usage; scan again once they have ended"
                );
            }
        }
    }
    Ok(if skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The users with a directory in `data_dir`, sorted.
fn users_with_data(config: &Config) -> anyhow::Result<Vec<UserName>> {
    let dir = &config.data_dir;
    let mut users = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(users),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        // Names that are no user's (a leading dot, say) are not users.
        let user = entry
            .file_name()
            .to_str()
            .and_then(|n| UserName::parse(n).ok());
        if let (true, Some(user)) = (is_dir, user) {
            users.push(user);
        }
    }
    users.sort();
    Ok(users)
}
