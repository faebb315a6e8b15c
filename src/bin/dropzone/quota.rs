//! `dropzone quota scan`: recomputes users' quota usage from what is
//! stored.
//!
//! Each user's tree is walked (sizes from stored lengths; nothing is
//! decrypted, so no key service is needed) and their usage record written
//! clean. A user a running server holds (they have sessions or open files)
//! is left alone: that server's figures are live, and it would overwrite
//! the scan's when the user leaves. The scan says so and exits 1; rerun it
//! once the user's sessions are over (see [`dropzone::quota`]).
//!
//! On a shared store (`[storage] backend = "s3"`) there are no records and
//! no locks: the scan only reports the figures of the walk (a listing of
//! the bucket), which every node's next login of the user starts from, and
//! skips no one.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use dropzone::config::Config;
use dropzone::quota::{Rescan, rescan};
use dropzone::store::bounds::human_size;
use dropzone::username::UserName;

use crate::setup::{ConfigArg, load_config, storage_backend};

#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Recompute users' usage (bytes and files) from their stored files
    /// and save it; users with sessions on a running server are skipped
    /// (exit 1). With [storage] backend = "s3" nothing is saved (nodes keep
    /// no records) and no one is skipped: the figures are counted from the
    /// bucket and reported.
    Scan {
        /// Only this user (default: every user with stored files: a
        /// directory in data_dir, or a tree in the bucket).
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
    let backend = storage_backend(config)?;
    let users = match only {
        Some(name) => vec![UserName::parse(name)?],
        None => backend
            .users()
            .context("listing the users with stored files")?,
    };
    let mut skipped = 0;
    for user in users {
        if !backend
            .has_user(&user)
            .with_context(|| format!("looking for user {user}'s files"))?
        {
            // Opening the root would create it; there is nothing to count.
            println!("{user}: nothing stored (no directory)");
            continue;
        }
        let storage = backend
            .user_storage(&user)
            .with_context(|| format!("opening {}", backend.describe_user(&user)))?;
        let scanned = if backend.is_shared() {
            // No records on a shared store: the walk is the figure each
            // node's account starts from (see dropzone::quota).
            dropzone::store::quota::scan_usage(&*storage).map(Rescan::Scanned)
        } else {
            rescan(&config.keks_dir, &user, &*storage)
        };
        match scanned.with_context(|| format!("scanning user {user}"))? {
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
