//! What happens to an upload at close, around the store's commit:
//! scanning (`[upload] scan_command`) decides whether it is stored, and a
//! notification (`[upload] notify_url`) announces it once it is.
//!
//! [`Uploads`] holds the server-wide scanner and notifier; each login gets a
//! [`SessionGate`] naming the user and the client's address, which the
//! store calls through [`UploadGate`]. See docs/SCANNING.md.

pub mod notify;
pub mod scanner;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, error, info, warn};

use crate::config::UploadConfig;
use crate::observe::escape;
use crate::store::{Rejection, Upload, UploadGate};
use notify::{Notifier, NotifySettings, UploadEvent};
use scanner::{Refusal, ScanRequest, Scanner, Verdict};

/// The server's upload scanner and notifier (either may be off).
pub struct Uploads {
    scanner: Option<Scanner>,
    notifier: Option<Arc<Notifier>>,
}

impl Uploads {
    /// Builds what `[upload]` asks for; `None` when it asks for nothing.
    /// A scan program that cannot be found is an error now rather than a
    /// rejected upload later.
    pub fn from_config(config: &UploadConfig) -> Result<Option<Arc<Uploads>>, String> {
        let scanner = match &config.scan_command {
            Some(command) => {
                check_program(&command[0])?;
                Some(Scanner::new(
                    command.clone(),
                    config.scan_timeout,
                    config.max_concurrent_scans,
                ))
            }
            None => None,
        };
        let notifier = match &config.notify_url {
            Some(url) => Some(Notifier::start(NotifySettings {
                url: url.clone(),
                queue: config.notify_queue,
                timeout: config.notify_timeout,
                retries: config.notify_retries,
            })?),
            None => None,
        };
        if scanner.is_none() && notifier.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Uploads { scanner, notifier })))
    }

    /// The gate for one login.
    pub fn gate(self: &Arc<Self>, user: &str, peer: Option<SocketAddr>) -> Arc<dyn UploadGate> {
        Arc::new(SessionGate {
            uploads: self.clone(),
            user: user.to_owned(),
            peer,
        })
    }
}

/// Whether `program` names an existing file: as a path if it holds a `/`,
/// else in the scanner's `PATH`.
fn check_program(program: &str) -> Result<(), String> {
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        scanner::SEARCH_PATH
            .split(':')
            .any(|dir| Path::new(dir).join(program).is_file())
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "upload.scan_command: program {program:?} not found{}",
            if program.contains('/') {
                ""
            } else {
                " in PATH (a bare name is looked up in /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)"
            }
        ))
    }
}

/// The upload gate of one login.
pub struct SessionGate {
    uploads: Arc<Uploads>,
    user: String,
    peer: Option<SocketAddr>,
}

impl SessionGate {
    /// Logs a rejected upload: the one place a rejection is recorded.
    fn rejected(&self, path: &str, size: u64, refusal: &Refusal) {
        if refusal.is_busy() {
            warn!(
                user = %self.user,
                path = %escape(path),
                size,
                peer = ?self.peer,
                reason = %refusal,
                "upload rejected: the scanner stayed busy for the whole scan timeout"
            );
        } else if refusal.is_scanner_fault() {
            error!(
                user = %self.user,
                path = %escape(path),
                size,
                peer = ?self.peer,
                reason = %refusal,
                "upload rejected: the scanner failed (fails closed)"
            );
        } else {
            warn!(
                user = %self.user,
                path = %escape(path),
                size,
                peer = ?self.peer,
                reason = %refusal,
                "upload rejected by the scanner"
            );
        }
    }
}

impl UploadGate for SessionGate {
    fn checks(&self) -> bool {
        self.uploads.scanner.is_some()
    }

    fn check(&self, upload: Upload<'_>, content: &mut dyn Read) -> Result<(), Rejection> {
        let Some(scanner) = &self.uploads.scanner else {
            return Ok(());
        };
        let path = upload.path.to_client_string();
        let started = Instant::now();
        let verdict = scanner.scan(
            ScanRequest {
                user: &self.user,
                path: &path,
                size: upload.size,
            },
            content,
        );
        match verdict {
            Verdict::Clean => {
                debug!(user = %self.user, path = %escape(&path), size = upload.size, elapsed = ?started.elapsed(), "upload scanned clean");
                Ok(())
            }
            Verdict::Rejected(refusal) => {
                self.rejected(&path, upload.size, &refusal);
                Err(Rejection {
                    reason: refusal.client_reason(),
                })
            }
        }
    }

    fn committed(&self, upload: Upload<'_>) {
        let path = upload.path.to_client_string();
        info!(user = %self.user, path = %escape(&path), size = upload.size, "upload stored");
        if let Some(notifier) = &self.uploads.notifier {
            notifier.send(UploadEvent::new(
                &self.user,
                &path,
                upload.size,
                self.peer.map(|p| p.to_string()),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_scan_program_is_a_config_error() {
        let e = check_program("/nonexistent/dropzone-scan").unwrap_err();
        assert!(
            e.contains("upload.scan_command") && e.contains("not found"),
            "{e}"
        );
        let e = check_program("dropzone-no-such-scanner").unwrap_err();
        assert!(e.contains("in PATH"), "{e}");
        check_program("/bin/sh").unwrap();
        check_program("sh").unwrap();
    }

    #[test]
    fn nothing_configured_builds_nothing() {
        assert!(
            Uploads::from_config(&UploadConfig::default())
                .unwrap()
                .is_none()
        );
    }
}
