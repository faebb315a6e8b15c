//! `dropzone serve`: the SSH/SFTP server.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use dropzone::aws::s3::{S3Client, S3Error};
use dropzone::config::{Config, StorageConfig};
use dropzone::daemon::ConfigFailure;
use dropzone::kms::KeyWrapper;
use dropzone::observe::kms::ObservedKeyWrapper;
use dropzone::observe::{AuditLog, Metrics, Observer};
use dropzone::sftp::SftpConfig;
use dropzone::ssh;
use dropzone::store::Backend;
use dropzone::store::storage::sweep_multipart;

use crate::setup::{
    ConfigArg, key_wrapper, load_config, storage_backend, user_keys_in, users_source,
};

/// Run the SSH/SFTP server.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
}

/// Serves until SIGTERM or SIGINT.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    serve(&load_config(&args.config)?)
}

fn serve(config: &Config) -> anyhow::Result<ExitCode> {
    dropzone::daemon::init_logging();
    // Before the server's threads start: arenas made later take the decay.
    match crate::allocator::configure() {
        // Connection threads then start without a cache of their own.
        Ok(true) => dropzone::thread_cache::install(crate::allocator::set_thread_cache),
        Ok(false) => tracing::info!(
            "allocator settings taken from {}",
            crate::allocator::OPERATOR_SETTINGS
        ),
        Err(e) => tracing::warn!(error = %e, "the allocator keeps its defaults"),
    }
    if crate::allocator::ignored_settings_given() {
        tracing::warn!(
            "{} is not read by this build; set {} instead",
            crate::allocator::IGNORED_SETTINGS,
            crate::allocator::OPERATOR_SETTINGS
        );
    }
    tracing::info!(allocator = %crate::allocator::summary(), "memory allocator");
    let metrics = Arc::new(Metrics::new());
    let audit = match &config.audit.log_file {
        Some(path) => Some(
            AuditLog::start(path.clone(), metrics.clone()).with_context(|| {
                format!(
                    "audit.log_file: cannot open {} for appending",
                    path.display()
                )
            })?,
        ),
        None => None,
    };
    let observer = Observer::new(metrics.clone(), audit);
    // The key service client is blocking and runs its own runtime thread:
    // it is built (and, through `wrapper`, dropped) outside the async runtime.
    // Its calls are timed for the metrics.
    let wrapper: Arc<dyn KeyWrapper> = Arc::new(ObservedKeyWrapper::new(
        key_wrapper(config)?,
        metrics.clone(),
    ));
    // The S3 client is blocking too: `storage` keeps one reference to it
    // until after the runtime is gone.
    let backend = storage_backend(config)?;
    let storage = backend.clone();
    prepare_storage(&backend)?;
    // Likewise for a users file in a bucket.
    let users = Arc::new(users_source(config)?);
    let users_kept = users.clone();
    let keys = user_keys_in(&backend, config, wrapper.clone())?;
    prepare_master_key(wrapper.as_ref());
    // The store's crypto workers poll briefly for work by default; in the
    // server that time is better left to the transport and other sessions.
    dropzone::store::set_crypto_polling(std::time::Duration::ZERO);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        {
            let observer = observer.clone();
            tokio::spawn(dropzone::daemon::on_hangup(move || observer.reopen_audit()));
        }
        // Bound before the SSH listener, so that the endpoint is up by the
        // time the server says it is listening.
        if let Some(address) = config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {address}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(address = %bound, "metrics served at http://{bound}/metrics");
            tokio::spawn(dropzone::observe::http::serve(
                listener,
                metrics.clone(),
                std::future::pending(),
            ));
        }
        let host_keys = ssh::host_keys::load_or_generate(
            &config.host_keys_dir,
            &config.ssh.host_key_algorithms,
        )?;
        let descriptors =
            ssh::descriptors::plan(ssh::descriptors::raise_open_files_limit(), &config.limits);
        if descriptors.short {
            tracing::warn!(
                open_files_limit = descriptors.limit,
                max_handles_total = descriptors.max_handles_total,
                "the open files limit is low for limits.max_sessions and limits.max_startups: \
                 raise it (ulimit -n, LimitNOFILE=, --ulimit nofile=) or lower those caps"
            );
        } else {
            tracing::info!(
                open_files_limit = descriptors.limit,
                max_handles_total = descriptors.max_handles_total,
                "open files limit"
            );
        }
        match (&backend, &config.storage) {
            (Backend::S3 { client, prefix, .. }, StorageConfig::S3(s3)) => {
                tokio::spawn(sweep_multipart_uploads(
                    client.clone(),
                    prefix.clone(),
                    s3.abandoned_upload_age,
                ));
            }
            (Backend::Local { data_dir }, _) => sweep_abandoned_uploads(data_dir),
            // An S3 backend comes only from [storage.s3].
            (Backend::S3 { .. }, StorageConfig::Local) => {}
        }
        let system_users = dropzone::auth::SystemUsers::from_config(&config.auth)
            .map_err(|e| ConfigFailure(e.to_string()))?;
        let parts = ssh::ServerParts {
            users,
            backend,
            sftp: SftpConfig {
                max_handles: config.sftp.max_handles,
                max_handles_per_user: config.sftp.max_handles_per_user,
                max_file_size: config.sftp.max_file_size,
            },
            system_users,
            key_trust: dropzone::auth::certificate::KeyTrust::from_config(&config.auth)
                .map_err(ConfigFailure)?,
            uploads: dropzone::upload::Uploads::from_config(&config.upload)
                .map_err(ConfigFailure)?,
            limits: config.limits.clone(),
            observer: observer.clone(),
            max_handles_total: descriptors.max_handles_total,
        };
        // (Reads the users file, which may be a request to a bucket: a
        // blocking call.)
        let (ctx, alive) = tokio::task::block_in_place(|| ssh::ServerContext::new(keys, parts))
            .map_err(|e| ConfigFailure(e.to_string()))?;
        let host_certificates =
            ssh::host_keys::load_certificates(&config.host_certificates, &host_keys)
                .map_err(|e| ConfigFailure(e.to_string()))?;
        let ssh_config = Arc::new(ssh::ssh_config(
            host_keys,
            host_certificates,
            config.auth.max_auth_attempts,
            &config.ssh,
        ));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let bound = listener.local_addr()?;
        tracing::info!(address = %bound, "listening on {bound}");
        ssh::run(
            listener,
            ssh_config,
            ctx,
            alive,
            config.ssh.login_grace,
            dropzone::daemon::shutdown_signal(),
        )
        .await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    });
    drop(runtime);
    drop(storage);
    drop(users_kept);
    drop(wrapper);
    // The last reference: the audit writer finishes its queue (the
    // logouts of the sessions closed at shutdown) before the process exits.
    drop(observer);
    result
}

/// Makes the local data directory, or checks that the bucket answers: a
/// bucket that refuses (missing, access denied, bad credentials) is a
/// configuration error; one that cannot be reached now is not fatal
/// (sessions fail per request until it is back).
fn prepare_storage(backend: &Backend) -> anyhow::Result<()> {
    match backend {
        Backend::Local { data_dir } => std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data_dir {}", data_dir.display())),
        Backend::S3 { client, prefix, .. } => match client.list(prefix, Some("/"), None, 1) {
            Ok(_) => {
                tracing::info!(store = %backend.describe_root(), "S3 bucket ready");
                Ok(())
            }
            Err(S3Error::Unavailable(why)) => {
                tracing::warn!(
                    store = %backend.describe_root(),
                    error = %why,
                    "S3 unavailable at start-up; requests fail until it is back"
                );
                Ok(())
            }
            Err(e) => {
                Err(ConfigFailure(format!("storage.s3: bucket {}: {e}", client.bucket())).into())
            }
        },
    }
}

/// Aborts the multipart uploads that nodes killed mid-upload left in the
/// bucket, now and then hourly (see `[storage.s3] abandoned_upload_hours`);
/// failures are logged and retried at the next round.
async fn sweep_multipart_uploads(client: S3Client, prefix: String, older_than: Duration) {
    loop {
        let (c, p) = (client.clone(), prefix.clone());
        match tokio::task::spawn_blocking(move || sweep_multipart(&c, &p, older_than)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(aborted)) => tracing::info!(
                aborted,
                "aborted {aborted} abandoned S3 multipart upload(s) left by an interrupted node"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep abandoned S3 uploads"),
            Err(e) => tracing::warn!(error = %e, "the S3 upload sweep failed"),
        }
        tokio::time::sleep(SWEEP_INTERVAL).await;
    }
}

/// Pause between two sweeps of abandoned S3 uploads.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Removes staged uploads a previous run left behind when it was killed and
/// rolls back the in-place extensions it interrupted, before any session
/// starts; a failure is logged, not fatal.
fn sweep_abandoned_uploads(data_dir: &Path) {
    let started = std::time::SystemTime::now();
    match dropzone::store::journal::recover(data_dir, started) {
        Ok(r) if r.swept != Default::default() || r.rolled_back > 0 => tracing::info!(
            removed = r.swept.removed,
            in_use = r.swept.in_use,
            failed = r.swept.failed,
            rolled_back = r.rolled_back,
            "removed {} abandoned upload(s) left by an interrupted run, rolled back {} interrupted extension(s)",
            r.swept.removed,
            r.rolled_back
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot sweep abandoned uploads"),
    }
}

/// Asks the backend to create the configured master key if it does not
/// exist (for the EaaS, `/gen/key/rsa`, as the original did). A key service
/// that is down is not fatal: logins fail closed until it is back.
fn prepare_master_key(wrapper: &dyn KeyWrapper) {
    let master = wrapper.current();
    match wrapper.ensure_master_key(&master) {
        Ok(()) => {
            tracing::info!(backend = wrapper.backend(), master = %master, "master key ready");
        }
        Err(e) if e.is_transient() => tracing::warn!(
            backend = wrapper.backend(),
            master = %master,
            error = %e,
            "key service unavailable at start-up; logins are refused until it is back"
        ),
        Err(e) => tracing::error!(
            backend = wrapper.backend(),
            master = %master,
            error = %e,
            "the key service refused to provide the master key; logins will fail until this is fixed"
        ),
    }
}
