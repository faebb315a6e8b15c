//! What both long-running binaries (`dropzone serve`, `dropzone-eaas serve`)
//! do the same way: log to stderr and stop on SIGTERM or SIGINT; SIGHUP
//! asks for log files to be reopened; a configuration error exits with
//! [`EXIT_CONFIG`], any other error with 1.

/// Exit status for a configuration error, as documented for operators
/// (both `dropzone` and `dropzone-eaas`).
pub const EXIT_CONFIG: u8 = 2;

/// A configuration error: the binaries say "configuration error" and exit
/// with [`EXIT_CONFIG`] (see [`exit_status`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFailure(pub String);

/// The exit status of a command `program` ran, and its error on stderr:
/// [`EXIT_CONFIG`] for a [`ConfigFailure`], 1 for any other error.
pub fn exit_status(
    program: &str,
    result: anyhow::Result<std::process::ExitCode>,
) -> std::process::ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigFailure>() {
                eprintln!("{program}: configuration error: {c}");
                return std::process::ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("{program}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Structured logs on stderr, filtered by `RUST_LOG` (default `info`),
/// colored only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still runs; it stops when killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Calls `reopen` on every SIGHUP (log rotation) for as long as it runs.
/// Installing it also keeps SIGHUP from ending the process.
pub async fn on_hangup(mut reopen: impl FnMut()) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP: log files will not be reopened");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reopening log files");
        reopen();
    }
}

/// Accepts connections on `listener` until `shutdown` completes, with at
/// most `max_open` of them open at once: each accepted stream goes to
/// `handle` with the permit that holds its place (drop it when the
/// connection ends). Beyond the cap a connection is closed at once and
/// logged as `what`'s. Accept errors (usually EMFILE) back off briefly
/// instead of spinning.
pub async fn accept_bounded<F>(
    listener: tokio::net::TcpListener,
    max_open: usize,
    what: &'static str,
    shutdown: impl std::future::Future<Output = ()>,
    mut handle: F,
) where
    F: FnMut(tokio::net::TcpStream, std::net::SocketAddr, tokio::sync::OwnedSemaphorePermit),
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_open));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match std::sync::Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => handle(stream, peer, permit),
            Err(_) => {
                tracing::warn!(%peer, "{what}: too many connections ({max_open}); closing this one");
            }
        }
    }
}
