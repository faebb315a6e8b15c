//! The `dropzone` command: the server and its operator tools.
//!
//! One file per subcommand; this one holds the command line and sends each
//! subcommand to its file. Errors exit 1, configuration errors
//! [`EXIT_CONFIG`](dropzone::daemon::EXIT_CONFIG) (see
//! [`dropzone::daemon::exit_status`]); `healthcheck` exits 1 for any
//! failure, as container engines expect.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod allocator;
mod decrypt;
mod healthcheck;
mod import_legacy;
mod keys;
mod quota;
mod serve;
mod setup;
mod user;
mod verify;

/// Dropzone: an SFTP/SCP server that keeps every file encrypted at rest.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SSH/SFTP server.
    Serve(serve::Args),
    /// Manage the users file.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Quota usage: recompute it from what is stored.
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Manage the master key that wraps user keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Check that every stored file decrypts and authenticates, naming each damaged chunk; exit 1 if any fails.
    Verify(verify::Args),
    /// Decrypt one stored file (offline recovery), to OUT or standard output.
    Decrypt(decrypt::Args),
    /// Import the original (Python) Dropzone's users and files.
    ///
    /// Unwraps each user's key through the configured key service (EaaS),
    /// re-encrypts every file into the configured storage (data_dir/NAME/,
    /// or PREFIX/data/NAME/ in the bucket with [storage] backend = "s3")
    /// and creates the user's Dropzone key (in keks_dir, or the bucket). Idempotent; the source is never modified. Progress on
    /// standard error, a summary on standard output; exit 1 if anything was
    /// not imported. See docs/MIGRATION.md.
    ImportLegacy(import_legacy::Args),
    /// Check that the server answers with an SSH identification line (for
    /// container health checks): exit 0 if it does, 1 (saying why) if not.
    Healthcheck(healthcheck::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dropzone::daemon::exit_status("dropzone", run(cli))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::User(cmd) => user::run(cmd),
        Command::Quota(cmd) => quota::run(cmd),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Verify(args) => verify::run(args),
        Command::Decrypt(args) => decrypt::run(args),
        Command::ImportLegacy(args) => import_legacy::run(args),
        Command::Healthcheck(args) => Ok(healthcheck::run(args)),
    }
}
