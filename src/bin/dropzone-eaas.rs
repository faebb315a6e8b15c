//! The `dropzone-eaas` command: the reference key service (see
//! `docs/EAAS.md`).

use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

use dropzone::daemon::ConfigFailure;
use dropzone::eaas::config::{self, Config};
use dropzone::eaas::server::{self, PASSPHRASE_ENV, StartError};

/// dropzone-eaas: RSA keys per secret path and version behind the HTTP API
/// of the original EaaS, encrypted at rest.
#[derive(Parser)]
#[command(name = "dropzone-eaas", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the key service.
    ///
    /// The at-rest passphrase comes from DROPZONE_EAAS_PASSPHRASE, else from
    /// passphrase_file, else from keys_dir/.passphrase (generated on first
    /// start). DROPZONE_EAAS_LISTEN overrides `listen`.
    Serve {
        /// Configuration file.
        #[arg(long, env = "DROPZONE_EAAS_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
    };
    dropzone::daemon::exit_status("dropzone-eaas", result)
}

fn serve(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(path).map_err(|e| ConfigFailure(e.to_string()))?;
    if let Ok(listen) = std::env::var("DROPZONE_EAAS_LISTEN") {
        config.listen = listen
            .parse()
            .map_err(|e| ConfigFailure(format!("DROPZONE_EAAS_LISTEN={listen:?}: {e}")))?;
    }
    dropzone::daemon::init_logging();
    let env_passphrase = std::env::var_os(PASSPHRASE_ENV).map(|v| Zeroizing::new(v.into_vec()));
    let prepared = server::prepare(&config, env_passphrase.as_deref().map(Vec::as_slice)).map_err(
        |e| match e {
            StartError::Config(m) => anyhow::Error::new(ConfigFailure(m)),
            StartError::Failed(m) => anyhow::anyhow!(m),
        },
    )?;
    drop(env_passphrase);
    let scheme = if prepared.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let bound = listener.local_addr()?;
        tracing::info!(address = %bound, scheme, "listening on {bound}");
        server::run(listener, prepared, dropzone::daemon::shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
