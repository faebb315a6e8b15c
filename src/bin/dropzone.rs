//! The `dropzone` command: the server and its operator tools.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use dropzone::auth::{password, users_file::UsersFile};
use dropzone::config::{self, Config, KmsBackend};
use dropzone::keys::{Rewrapped, UserKeys};
use dropzone::kms::eaas::{EaasKms, EaasOptions};
use dropzone::kms::{KeyWrapper, MasterKeyRef, local::LocalKms};
use dropzone::legacy::{Event as LegacyEvent, ImportError, ImportOptions};
use dropzone::observe::kms::ObservedKeyWrapper;
use dropzone::observe::{AuditLog, Metrics, Observer};
use dropzone::sftp::SftpConfig;
use dropzone::ssh;
use dropzone::store::check::{FileReport, check_blob};
use dropzone::store::storage::{Access, Kind, LocalStorage, ObjectPath, Storage};
use dropzone::store::{OpenOptions, UserStore};
use dropzone::username::UserName;

/// The server's allocator. glibc's malloc kept 200-300 MiB in per-thread
/// arenas after a burst of parallel sessions and never returned it;
/// mimalloc (version 2, without transparent huge pages: see Cargo.toml)
/// hands freed pages back to the system (docs/PERFORMANCE.md, "Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration error, as documented for operators.
const EXIT_CONFIG: u8 = 2;

/// Dropzone: an SFTP/SCP server that keeps every file encrypted at rest.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "DROPZONE_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SSH/SFTP server.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage the users file.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the master key that wraps user keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check that every stored file decrypts and authenticates, naming each damaged chunk; exit 1 if any fails.
    Verify {
        /// Only this user's files.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Decrypt one stored file (offline recovery), to OUT or standard output.
    Decrypt {
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
    },
    /// Import the original (Python) Dropzone's users and files.
    ///
    /// Unwraps each user's key through the configured key service (EaaS),
    /// re-encrypts every file into data_dir/NAME/ and creates the user's
    /// Dropzone key. Idempotent; the source is never modified. Progress on
    /// standard error, a summary on standard output; exit 1 if anything was
    /// not imported. See docs/MIGRATION.md.
    ImportLegacy {
        /// The original's key directory (files .<sha224 of the user>.secret).
        #[arg(long, value_name = "DIR")]
        keks: PathBuf,
        /// The original's home directories (one NAME/ per user).
        #[arg(long, value_name = "DIR")]
        homes: PathBuf,
        /// Report what would be done, checking every key and file length, writing
        /// nothing (no key, no directory, no file).
        #[arg(long)]
        dry_run: bool,
        /// Replace destination files that hold other content (by default
        /// they are reported as conflicts and left alone).
        #[arg(long)]
        overwrite: bool,
        /// Import only this user (repeatable).
        #[arg(long = "user", value_name = "NAME")]
        users: Vec<String>,
        /// The key service's secret path of the original's keys (default:
        /// [kms.eaas] secret_path).
        #[arg(long, value_name = "PATH")]
        secret_path: Option<String>,
        /// The key service's secret version of the original's keys
        /// (default: [kms.eaas] secret_version).
        #[arg(long, value_name = "V")]
        secret_version: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check that the server answers with an SSH identification line (for
    /// container health checks): exit 0 if it does, 1 (saying why) if not.
    Healthcheck {
        /// Where to connect (default: the configured listen address, with
        /// 0.0.0.0 or :: replaced by the loopback address).
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// Give up after this many seconds (connecting and reading together).
        #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_timeout)]
        timeout: std::time::Duration,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum UserCommand {
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

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-wrap every user's key under master key version V (created at the
    /// key service if needed). Stored files are not touched. Resumable and
    /// idempotent: users already on V are skipped. Exit 1 if any user failed.
    ///
    /// Afterwards, set the configured secret_version to V so that new users
    /// get it too; each login unwraps with the version in the user's key file.
    Rotate {
        /// The master key version to re-wrap under (decimal digits).
        #[arg(long, value_name = "V")]
        secret_version: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// A failure that exits with a given status.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConfigFailure(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigFailure>() {
                eprintln!("dropzone: configuration error: {c}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("dropzone: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    let mut config = Config::load(&arg.config).map_err(|e| ConfigFailure(e.to_string()))?;
    if let Ok(listen) = std::env::var("DROPZONE_LISTEN") {
        config.listen = listen
            .parse()
            .map_err(|e| ConfigFailure(format!("DROPZONE_LISTEN={listen:?}: {e}")))?;
    }
    Ok(config)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(&load_config(&config)?),
        Command::User(cmd) => user_command(cmd),
        Command::Keys(KeysCommand::Rotate {
            secret_version,
            config,
        }) => rotate(&load_config(&config)?, &secret_version),
        Command::Verify { user, config } => verify(&load_config(&config)?, user.as_deref()),
        Command::Decrypt {
            user,
            path,
            out,
            config,
        } => decrypt(&load_config(&config)?, &user, &path, out.as_deref()),
        Command::ImportLegacy {
            keks,
            homes,
            dry_run,
            overwrite,
            users,
            secret_path,
            secret_version,
            config,
        } => {
            let config = load_config(&config)?;
            if config.kms.backend != KmsBackend::Eaas {
                return Err(ConfigFailure(ImportError::NeedsEaas("local").to_string()).into());
            }
            let wrapper = key_wrapper(&config)?;
            let current = wrapper.current();
            let legacy_master = MasterKeyRef {
                secret_path: secret_path.unwrap_or(current.secret_path),
                secret_version: secret_version.unwrap_or(current.secret_version),
            };
            let options = ImportOptions {
                legacy_keks: keks,
                legacy_homes: homes,
                data_dir: config.data_dir.clone(),
                keks_dir: config.keks_dir.clone(),
                legacy_master,
                dry_run,
                overwrite,
                only: users,
            };
            import_legacy(&config, wrapper, &options)
        }
        Command::Healthcheck {
            address,
            timeout,
            config,
        } => Ok(healthcheck(address.as_deref(), timeout, &config)),
    }
}

fn key_wrapper(config: &Config) -> anyhow::Result<Arc<dyn KeyWrapper>> {
    match config.kms.backend {
        KmsBackend::Local => Ok(Arc::new(
            LocalKms::new(
                config.kms.local_key_dir.clone(),
                config.kms.local_secret_version.clone(),
            )
            .context("local key backend")?,
        )),
        KmsBackend::Eaas => {
            let Some(e) = &config.kms.eaas else {
                return Err(ConfigFailure(
                    "kms.backend = \"eaas\" needs a [kms.eaas] table".into(),
                )
                .into());
            };
            let mut options = EaasOptions::new(
                e.url.clone(),
                e.secret_path.clone(),
                e.secret_version.clone(),
            );
            options.token_file = e.token_file.clone();
            options.ca_file = e.ca_file.clone();
            options.connect_timeout = e.connect_timeout;
            options.request_timeout = e.request_timeout;
            let kms =
                EaasKms::new(options).map_err(|e| ConfigFailure(format!("[kms.eaas]: {e}")))?;
            if kms.url().starts_with("http://") {
                tracing::warn!(
                    url = kms.url(),
                    "the key service URL is plain HTTP: user keys cross the network unencrypted; \
                     use https (with ca_file) outside a private network"
                );
            }
            Ok(Arc::new(kms))
        }
    }
}

fn user_keys_with(config: &Config, wrapper: Arc<dyn KeyWrapper>) -> anyhow::Result<UserKeys> {
    UserKeys::new(config.keks_dir.clone(), wrapper, config.kms.key_cache_ttl)
        .context("user key directory")
}

fn user_keys(config: &Config) -> anyhow::Result<UserKeys> {
    user_keys_with(config, key_wrapper(config)?)
}

fn serve(config: &Config) -> anyhow::Result<ExitCode> {
    dropzone::daemon::init_logging();
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
    let keys = user_keys_with(config, wrapper.clone())?;
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
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        sweep_abandoned_uploads(&config.data_dir);
        let system_users = dropzone::auth::SystemUsers::from_config(&config.auth)
            .map_err(|e| ConfigFailure(e.to_string()))?;
        let parts = ssh::ServerParts {
            users_file: config.auth.users_file.clone(),
            data_dir: config.data_dir.clone(),
            sftp: SftpConfig {
                max_handles: config.sftp.max_handles,
                max_handles_per_user: config.sftp.max_handles_per_user,
                max_file_size: config.sftp.max_file_size,
            },
            system_users,
            uploads: dropzone::upload::Uploads::from_config(&config.upload)
                .map_err(ConfigFailure)?,
            limits: config.limits.clone(),
            observer: observer.clone(),
            max_handles_total: descriptors.max_handles_total,
        };
        let (ctx, alive) =
            ssh::ServerContext::new(keys, parts).map_err(|e| ConfigFailure(e.to_string()))?;
        let ssh_config = Arc::new(ssh::ssh_config(
            host_keys,
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
    drop(wrapper);
    // The last reference: the audit writer finishes its queue (the
    // logouts of the sessions closed at shutdown) before the process exits.
    drop(observer);
    result
}

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

/// `dropzone keys rotate`: re-wraps every user's key under version `version`.
fn rotate(config: &Config, version: &str) -> anyhow::Result<ExitCode> {
    if !config::is_version(version) {
        return Err(ConfigFailure(format!(
            "--secret-version {version:?}: expected 1-9 decimal digits"
        ))
        .into());
    }
    let wrapper = key_wrapper(config)?;
    let to = MasterKeyRef {
        secret_path: wrapper.current().secret_path,
        secret_version: version.to_owned(),
    };
    wrapper
        .ensure_master_key(&to)
        .with_context(|| format!("creating master key {to} ({} backend)", wrapper.backend()))?;
    println!("master key {to} is ready ({} backend)", wrapper.backend());
    let keys = user_keys_with(config, wrapper.clone())?;
    let users = keys.users()?;
    let (mut rotated, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    for user in &users {
        match keys.rewrap(user, &to) {
            Ok(Rewrapped::Done { from }) => {
                rotated += 1;
                let from = if from.secret_path == to.secret_path {
                    from.secret_version
                } else {
                    from.to_string()
                };
                println!("rotated {user} ({from} -> {version})");
            }
            Ok(Rewrapped::Already) => {
                skipped += 1;
                println!("skipped {user} (already {version})");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED {user}: {e}");
            }
        }
        let _ = std::io::stdout().flush();
    }
    println!(
        "{} user(s): {rotated} rotated, {skipped} already on version {version}, {failed} failed",
        users.len()
    );
    if failed > 0 {
        eprintln!("dropzone: {failed} user(s) not rotated; run the command again to retry them");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn user_command(cmd: UserCommand) -> anyhow::Result<ExitCode> {
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
                keys.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned),
                );
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

fn verify(config: &Config, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let keys = user_keys(config)?;
    let users = match only {
        Some(u) => vec![UserName::parse(u)?],
        None => keys.users()?,
    };
    let (mut checked, mut failed) = (0u64, 0u64);
    for user in users {
        let key = keys
            .get_existing(&user)
            .with_context(|| format!("key of user {user}"))?;
        let root = config.data_dir.join(user.as_str());
        if !root.is_dir() {
            continue;
        }
        let storage = LocalStorage::open_root(&root)?;
        let mut dirs = vec![ObjectPath::root()];
        while let Some(dir) = dirs.pop() {
            let entries = match storage.read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    failed += 1;
                    println!("FAIL {user} {}: cannot list: {e}", dir.to_client_string());
                    continue;
                }
            };
            for (name, meta) in entries {
                let Ok(path) = dir.join(&name) else { continue };
                match meta.kind {
                    Kind::Dir => dirs.push(path),
                    Kind::File => {
                        checked += 1;
                        let result = storage
                            .open(&path, Access::Read)
                            .map_err(dropzone::store::StoreError::from)
                            .and_then(|blob| check_blob(&*blob, &key));
                        let shown = path.to_client_string();
                        match result {
                            Ok(report) if report.is_ok() => {}
                            Ok(report) => {
                                failed += 1;
                                print_problems(&user, &shown, &report);
                            }
                            Err(e) => {
                                failed += 1;
                                println!("FAIL {user} {shown}: {e}");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    println!("checked {checked} file(s), {failed} failure(s)");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
    let storage = LocalStorage::open_root(&config.data_dir.join(user.as_str()))?;
    let store = UserStore::new(Arc::new(storage), key);
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

/// `dropzone import-legacy`: runs the import with progress on stderr and
/// the summary on stdout.
fn import_legacy(
    config: &Config,
    wrapper: Arc<dyn KeyWrapper>,
    options: &ImportOptions,
) -> anyhow::Result<ExitCode> {
    let version = &options.legacy_master.secret_version;
    if !config::is_version(version) {
        return Err(ConfigFailure(format!(
            "--secret-version {version:?}: expected 1-9 decimal digits"
        ))
        .into());
    }
    let mut progress = |event: &LegacyEvent| {
        eprintln!("{event}");
    };
    let summary = match dropzone::legacy::import(options, wrapper, &mut progress) {
        Ok(summary) => summary,
        Err(e @ ImportError::NeedsEaas(_)) => return Err(ConfigFailure(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    print!("{summary}");
    // The import carries files and keys, not logins: say who cannot log in yet.
    if !config.auth.pam {
        let known = UsersFile::load(&config.auth.users_file)?;
        let missing: Vec<&str> = summary
            .users
            .iter()
            .map(String::as_str)
            .filter(|u| known.get(u).is_none())
            .collect();
        if !missing.is_empty() {
            println!(
                "  not in the users file {} (they cannot log in until added with \
                 `dropzone user add NAME ...`): {}",
                config.auth.users_file.display(),
                missing.join(" ")
            );
        }
    }
    Ok(if summary.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--timeout SECS`: a positive number of seconds (fractions allowed).
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 => {
            std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
        }
        _ => Err(format!("{s:?}: expected a positive number of seconds")),
    }
}

/// `dropzone healthcheck`: connects, reads the server's identification line
/// and checks that it is SSH 2.0. Every failure (configuration included)
/// exits 1, which container engines read as "unhealthy".
fn healthcheck(
    address: Option<&str>,
    timeout: std::time::Duration,
    config: &ConfigArg,
) -> ExitCode {
    match check_ssh_banner(address, timeout, config) {
        Ok((addr, banner)) => {
            println!("ok: {addr}: {banner}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("dropzone healthcheck: {why:#}");
            ExitCode::from(1)
        }
    }
}

/// The address checked and the identification line it sent.
fn check_ssh_banner(
    address: Option<&str>,
    timeout: std::time::Duration,
    config: &ConfigArg,
) -> anyhow::Result<(std::net::SocketAddr, String)> {
    use std::io::{ErrorKind, Read};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
    use std::time::Instant;

    let deadline = Instant::now() + timeout;
    let targets: Vec<SocketAddr> = match address {
        Some(a) => a
            .to_socket_addrs()
            .with_context(|| format!("--address {a:?}: cannot resolve (expected HOST:PORT)"))?
            .collect(),
        None => {
            let mut listen = load_config(config)?.listen;
            match listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => listen.set_ip(Ipv4Addr::LOCALHOST.into()),
                IpAddr::V6(ip) if ip.is_unspecified() => listen.set_ip(Ipv6Addr::LOCALHOST.into()),
                _ => {}
            }
            vec![listen]
        }
    };
    let remaining = |what: &str, addr: &SocketAddr| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow::anyhow!("{addr}: timed out after {timeout:?} {what}"))
    };
    let mut last_error = None;
    let mut connected = None;
    for addr in &targets {
        let left = remaining("connecting", addr)?;
        match TcpStream::connect_timeout(addr, left) {
            Ok(stream) => {
                connected = Some((*addr, stream));
                break;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                last_error = Some(anyhow::anyhow!(
                    "{addr}: timed out after {timeout:?} connecting"
                ));
            }
            Err(e) => last_error = Some(anyhow::anyhow!("{addr}: cannot connect: {e}")),
        }
    }
    let Some((addr, mut stream)) = connected else {
        return Err(last_error.unwrap_or_else(|| {
            anyhow::anyhow!(
                "--address {}: resolves to no address",
                address.unwrap_or("")
            )
        }));
    };
    // RFC 4253 4.2: the identification line is at most 255 bytes with CR LF.
    let mut line = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !line.contains(&b'\n') && line.len() < 255 {
        let left = remaining("waiting for the SSH identification", &addr)?;
        stream
            .set_read_timeout(Some(left))
            .with_context(|| format!("{addr}: setting a read timeout"))?;
        match stream.read(&mut buf[..255 - line.len()]) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("{addr}: timed out after {timeout:?} waiting for the SSH identification")
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => bail!("{addr}: reading the SSH identification: {e}"),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let text = String::from_utf8_lossy(&line[..end]);
    let text = text.trim_end_matches('\r');
    if line.is_empty() {
        bail!("{addr}: connection closed without an SSH identification");
    }
    if !text.starts_with("SSH-2.0-") {
        let shown: String = text.chars().take(80).collect();
        bail!("{addr}: not an SSH 2.0 server: it sent {shown:?}");
    }
    Ok((addr, text.to_owned()))
}
