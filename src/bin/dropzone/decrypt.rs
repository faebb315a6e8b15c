//! `dropzone decrypt`: one stored file's plaintext, for offline recovery.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use dropzone::config::Config;
use dropzone::store::OpenOptions;
use dropzone::username::UserName;

use crate::setup::{ConfigArg, load_config, storage_backend, user_keys};

/// Decrypt one stored file (offline recovery), to OUT or standard output.
#[derive(clap::Args)]
pub struct Args {
    /// The file's owner.
    #[arg(long)]
    user: String,
    /// The file's path as the user sees it (e.g. /reports/q3.pdf).
    path: String,
    /// Where to write the plaintext (default: standard output).
    #[arg(short, long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArg,
}

/// Writes the plaintext to `--out` or standard output, and its length to
/// standard error.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    decrypt(
        &load_config(&args.config)?,
        &args.user,
        &args.path,
        args.out.as_deref(),
    )
}

fn decrypt(
    config: &Config,
    user: &str,
    path: &str,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let user = UserName::parse(user)?;
    let keys = user_keys(config)?;
    let key = keys
        .get_existing(&user)
        .with_context(|| format!("key of user {user}"))?;
    let backend = storage_backend(config)?;
    // Checked first: opening a user's tree creates it (a directory, or a
    // marker object in the bucket), and recovery must write nothing.
    if !backend
        .has_user(&user)
        .with_context(|| format!("looking for user {user}'s files"))?
    {
        anyhow::bail!(
            "user {user} has no stored files ({} does not exist)",
            backend.describe_user(&user)
        );
    }
    let store = dropzone::store::open_user(&backend, &user, key)
        .with_context(|| format!("opening {}", backend.describe_user(&user)))?;
    let object = dropzone::jail::resolve(path)?;
    let file = store.open(
        &object,
        OpenOptions {
            read: true,
            ..OpenOptions::default()
        },
    )?;
    let mut sink: Box<dyn Write> = match out {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut offset = 0u64;
    loop {
        let data = file.read_at(offset, dropzone::store::format::CHUNK_SIZE)?;
        if data.is_empty() {
            break;
        }
        sink.write_all(&data)?;
        offset += data.len() as u64;
    }
    sink.flush()?;
    eprintln!("decrypted {offset} bytes");
    Ok(ExitCode::SUCCESS)
}
