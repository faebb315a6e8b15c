//! `dropzone verify`: checks every stored file, naming each damaged chunk.

use std::process::ExitCode;

use anyhow::Context;

use dropzone::config::Config;
use dropzone::store::check::{Failure, FileReport, check_tree};
use dropzone::username::UserName;

use crate::setup::{ConfigArg, load_config, storage_backend, user_keys};

/// Check that every stored file decrypts and authenticates, naming each damaged chunk; exit 1 if any fails.
#[derive(clap::Args)]
pub struct Args {
    /// Only this user's files.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    config: ConfigArg,
}

/// Checks the files of every user (or one): a `FAIL` line per problem on
/// standard output, then a count; exit 1 if anything failed.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    verify(&load_config(&args.config)?, args.user.as_deref())
}

fn verify(config: &Config, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let keys = user_keys(config)?;
    let backend = storage_backend(config)?;
    let users = match only {
        Some(u) => vec![UserName::parse(u)?],
        None => keys.users()?,
    };
    let (mut checked, mut failed) = (0u64, 0u64);
    for user in users {
        let key = keys
            .get_existing(&user)
            .with_context(|| format!("key of user {user}"))?;
        if !backend
            .has_user(&user)
            .with_context(|| format!("looking for user {user}'s files"))?
        {
            continue;
        }
        let store = dropzone::store::open_user(&backend, &user, key)
            .with_context(|| format!("opening {}", backend.describe_user(&user)))?;
        checked += check_tree(&store, |failure| {
            failed += 1;
            print_failure(&user, &failure);
        });
    }
    println!("checked {checked} file(s), {failed} failure(s)");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The `FAIL` line(s) of one failure.
fn print_failure(user: &UserName, failure: &Failure) {
    match failure {
        Failure::Unlisted { dir, error } => {
            println!(
                "FAIL {user} {}: cannot list: {error}",
                dir.to_client_string()
            );
        }
        Failure::Unreadable { file, error } => {
            println!("FAIL {user} {}: {error}", file.to_client_string());
        }
        Failure::Damaged { file, report } => {
            print_problems(user, &file.to_client_string(), report);
        }
    }
}

/// Most damaged parts listed per file: a file under the wrong key fails in
/// every chunk, and one line per chunk would bury the other files.
const MAX_PROBLEMS_SHOWN: usize = 20;

/// One `FAIL` line per damaged part of a file, each naming the chunk and its
/// byte ranges.
fn print_problems(user: &UserName, path: &str, report: &FileReport) {
    for p in report.problems.iter().take(MAX_PROBLEMS_SHOWN) {
        println!("FAIL {user} {path}: {p}");
    }
    let more = report.problems.len().saturating_sub(MAX_PROBLEMS_SHOWN);
    if more > 0 {
        println!("FAIL {user} {path}: ... and {more} more damaged chunk(s)");
    }
}
