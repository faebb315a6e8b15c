//! Linux system users (`[auth] pam = true`): passwords through PAM, public
//! keys from `~/.ssh/authorized_keys`.
//!
//! [`SystemUsers`] answers the same yes/no questions as
//! [`super::Authenticator`], for accounts of the system passwd database. The
//! SSH layer asks the users file first for a name it knows, and this only
//! for the others, so a users-file user keeps working whatever the system
//! has.
//!
//! PAM may block for seconds (the failure delay of `pam_unix` is about two,
//! a network directory may hang): every transaction runs on a blocking
//! thread, at most [`MAX_PAM_IN_FLIGHT`] at once, and the caller waits at
//! most `auth.pam_timeout_secs` for it. A transaction that overruns is
//! abandoned (its thread finishes on its own, still holding its slot), and
//! the login is refused. Other logins do not wait for it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use russh::keys::{HashAlg, PublicKey};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::system_keys::{self, SystemAccount};
use crate::config::AuthConfig;
use crate::username::UserName;

/// Most PAM transactions running at once. Each holds a blocking thread; a
/// PAM stack that hangs can therefore pin at most this many threads (the
/// runtime has 512), and further PAM logins are refused at their timeout
/// while password and key logins of the users file go on.
pub const MAX_PAM_IN_FLIGHT: usize = 16;

/// Why PAM cannot be enabled.
#[derive(Debug, thiserror::Error)]
#[error(
    "auth.pam = true: PAM authentication is not available in this build (build with --features pam)"
)]
pub struct PamUnavailable;

/// Linux users: see the module documentation. `Send + Sync`; share it in an
/// `Arc`.
#[derive(Debug)]
pub struct SystemUsers {
    service: String,
    allow_root: bool,
    timeout: Duration,
    slots: Arc<Semaphore>,
}

/// The outcome of one PAM transaction; the error is for the log.
type PamResult = Result<(), String>;

impl SystemUsers {
    /// The system users of `[auth]`, if `pam = true`. Logs a warning when
    /// the PAM service file cannot be found, or when the server does not
    /// run as root (`pam_unix` then checks only the server's own user).
    pub fn from_config(auth: &AuthConfig) -> Result<Option<SystemUsers>, PamUnavailable> {
        if !auth.pam {
            return Ok(None);
        }
        let users = SystemUsers::new(
            auth.pam_service.clone(),
            auth.pam_allow_root,
            auth.pam_timeout,
        )?;
        let service_file = ["/etc/pam.d", "/usr/lib/pam.d"]
            .iter()
            .map(|dir| std::path::Path::new(dir).join(&users.service))
            .find(|p| p.is_file());
        match service_file {
            Some(path) => info!(
                service = %users.service,
                file = %path.display(),
                allow_root = users.allow_root,
                "Linux users log in through PAM"
            ),
            None => warn!(
                service = %users.service,
                "PAM service file /etc/pam.d/{} not found: PAM uses its fallback (\"other\"); \
                 copy config/pam.d/dropzone there",
                users.service
            ),
        }
        if !rustix::process::geteuid().is_root() {
            warn!(
                "the server does not run as root: pam_unix can check only the password of the \
                 server's own user, so other Linux users cannot log in by password"
            );
        }
        Ok(Some(users))
    }

    /// System users with PAM service `service`; root (uid 0) may log in only
    /// with `allow_root`; each PAM transaction may take up to `timeout`.
    /// Fails only in a build without the `pam` feature.
    pub fn new(
        service: String,
        allow_root: bool,
        timeout: Duration,
    ) -> Result<SystemUsers, PamUnavailable> {
        if !cfg!(feature = "pam") {
            return Err(PamUnavailable);
        }
        Ok(SystemUsers {
            service,
            allow_root,
            timeout,
            slots: Arc::new(Semaphore::new(MAX_PAM_IN_FLIGHT)),
        })
    }

    /// The account `user` may log in as: a valid Dropzone user name that
    /// the passwd database knows, and not root unless allowed. Logs why not
    /// (the client never learns it). Blocking.
    fn account(&self, user: &str) -> Option<SystemAccount> {
        let account = match system_keys::lookup(user) {
            Ok(Some(account)) => account,
            Ok(None) => return None,
            Err(e) => {
                warn!(user, error = %e, "cannot look the user up in the passwd database");
                return None;
            }
        };
        if UserName::parse(&account.name).is_err() {
            info!(
                user,
                "Linux user refused: the name is not a valid Dropzone user name"
            );
            return None;
        }
        if account.is_root() && !self.allow_root {
            info!(user, "root login refused (auth.pam_allow_root = false)");
            return None;
        }
        Some(account)
    }

    /// Whether `key` is in `user`'s `~/.ssh/authorized_keys`, and allowed
    /// there for a client at `ip` now. The file is used only if it passes
    /// OpenSSH's ownership and permission checks; otherwise the reason is
    /// logged. Blocking (reads the passwd database and the file).
    pub fn key_allowed(&self, user: &str, key: &PublicKey, ip: Option<IpAddr>) -> bool {
        let Some(account) = self.account(user) else {
            return false;
        };
        let path = account.authorized_keys_path();
        let loaded = match system_keys::load_authorized_keys(&account) {
            Ok(loaded) => loaded,
            Err(e) => {
                warn!(user, reason = %e, "~/.ssh/authorized_keys refused, as OpenSSH's StrictModes would");
                return false;
            }
        };
        for (line, error) in &loaded.refused {
            info!(user, file = %path.display(), line, %error, "authorized_keys line ignored");
        }
        let now = SystemTime::now();
        let mut matched = false;
        for entry in loaded.keys.iter().filter(|k| k.matches(key)) {
            if entry.permits(ip, now) {
                return true;
            }
            matched = true;
        }
        if matched {
            info!(
                user,
                client = ?ip,
                key = %key.fingerprint(HashAlg::Sha256),
                "authorized key refused by its from= or expiry-time= option"
            );
        }
        false
    }

    /// Whether `password` is `user`'s system password and PAM's account
    /// management lets them in now (not expired, not locked, ...). Unknown
    /// users go through PAM all the same; root, when refused, is checked
    /// with a bogus password (as OpenSSH does), so refusals cost alike
    /// and never test root's password. Logs why a login is refused.
    pub async fn password_ok(
        &self,
        user: &str,
        password: Zeroizing<Vec<u8>>,
        ip: Option<IpAddr>,
    ) -> bool {
        let (this, name) = (self.settings(), user.to_owned());
        let result = self
            .run_blocking(move || {
                let refused_root = match system_keys::lookup(&name) {
                    Ok(Some(account)) => account.is_root() && !this.allow_root,
                    _ => false,
                };
                let password: &[u8] = if refused_root {
                    pam_bogus_password()
                } else {
                    &password
                };
                let result = pam_run(&this.service, &name, Some(password), ip);
                if refused_root {
                    return Err("root login refused (auth.pam_allow_root = false)".into());
                }
                result
            })
            .await;
        match result {
            Ok(()) => match UserName::parse(user) {
                Ok(_) => true,
                Err(_) => {
                    info!(
                        user,
                        "Linux user refused: the name is not a valid Dropzone user name"
                    );
                    false
                }
            },
            Err(reason) => {
                info!(user, client = ?ip, %reason, "PAM refused the password login");
                false
            }
        }
    }

    /// Whether PAM's account management lets `user` in now, for a login
    /// whose public key was already accepted (an expired or disabled
    /// account cannot log in by key either).
    pub async fn account_ok(&self, user: &str, ip: Option<IpAddr>) -> bool {
        let (this, name) = (self.settings(), user.to_owned());
        let result = self
            .run_blocking(move || pam_run(&this.service, &name, None, ip))
            .await;
        if let Err(reason) = &result {
            info!(user, client = ?ip, %reason, "PAM account check refused the key login");
        }
        result.is_ok()
    }

    /// Spends what a failed PAM password check costs (its failure delay),
    /// with a bogus password: called when a users-file password is wrong,
    /// so that users-file names cannot be told from others by timing.
    pub async fn spend_failure(&self, user: &str, ip: Option<IpAddr>) {
        let (this, name) = (self.settings(), user.to_owned());
        let _ = self
            .run_blocking(move || pam_run(&this.service, &name, Some(pam_bogus_password()), ip))
            .await;
    }

    /// What a blocking PAM task needs, owned.
    fn settings(&self) -> Settings {
        Settings {
            service: self.service.clone(),
            allow_root: self.allow_root,
        }
    }

    /// Runs `task` on a blocking thread once a PAM slot is free; gives up
    /// after the timeout (for the slot and the task together).
    async fn run_blocking(&self, task: impl FnOnce() -> PamResult + Send + 'static) -> PamResult {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let permit =
            match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err("PAM is shut down".into()),
                Err(_) => {
                    return Err(format!(
                        "PAM busy: {MAX_PAM_IN_FLIGHT} transactions still running after {:?} \
                         (auth.pam_timeout_secs)",
                        self.timeout
                    ));
                }
            };
        let running = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            task()
        });
        match tokio::time::timeout_at(deadline, running).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("PAM task failed: {e}")),
            Err(_) => {
                warn!(
                    service = %self.service,
                    timeout = ?self.timeout,
                    "PAM did not answer in time (auth.pam_timeout_secs); login refused"
                );
                Err("PAM timed out".into())
            }
        }
    }
}

/// The settings a blocking PAM task carries.
struct Settings {
    service: String,
    allow_root: bool,
}

#[cfg(feature = "pam")]
fn pam_bogus_password() -> &'static [u8] {
    super::pam::BOGUS_PASSWORD
}

#[cfg(not(feature = "pam"))]
fn pam_bogus_password() -> &'static [u8] {
    b""
}

/// One PAM transaction (see [`super::pam::run`]). Blocking.
#[cfg(feature = "pam")]
fn pam_run(service: &str, user: &str, password: Option<&[u8]>, ip: Option<IpAddr>) -> PamResult {
    let rhost = ip.map(|ip| ip.to_string());
    super::pam::run(&super::pam::PamRequest {
        service,
        user,
        password,
        rhost: rhost.as_deref(),
    })
    .map_err(|e| e.to_string())
}

/// Without the `pam` feature, [`SystemUsers::new`] fails, so this is never
/// reached; it refuses.
#[cfg(not(feature = "pam"))]
fn pam_run(_: &str, _: &str, _: Option<&[u8]>, _: Option<IpAddr>) -> PamResult {
    Err(PamUnavailable.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<SystemUsers>();
    }

    #[cfg(not(feature = "pam"))]
    #[test]
    fn unavailable_without_the_feature() {
        assert!(SystemUsers::new("dropzone".into(), false, Duration::from_secs(1)).is_err());
    }

    #[cfg(feature = "pam")]
    #[tokio::test]
    async fn unknown_users_are_refused_and_root_is_refused_by_default() {
        let users = SystemUsers::new(
            "dropzone-unit-test-no-such-service".into(),
            false,
            Duration::from_secs(10),
        )
        .unwrap();
        let pw = || Zeroizing::new(b"whatever".to_vec());
        assert!(!users.password_ok("no-such-user-dz", pw(), None).await);
        assert!(!users.password_ok("root", pw(), None).await);
        assert!(users.account("root").is_none());
        assert!(users.account("no-such-user-dz").is_none());
        let key = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti",
        )
        .unwrap();
        assert!(!users.key_allowed("root", &key, None));
        assert!(!users.key_allowed("no-such-user-dz", &key, None));
    }

    #[cfg(feature = "pam")]
    #[tokio::test]
    async fn a_slow_pam_is_abandoned_at_the_timeout() {
        let users = SystemUsers::new("x".into(), false, Duration::from_millis(200)).unwrap();
        let started = std::time::Instant::now();
        let result = users
            .run_blocking(|| {
                std::thread::sleep(Duration::from_secs(2));
                Ok(())
            })
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
        // The abandoned task still holds its slot until it returns.
        assert_eq!(users.slots.available_permits(), MAX_PAM_IN_FLIGHT - 1);
    }

    #[cfg(feature = "pam")]
    #[tokio::test]
    async fn when_every_slot_is_taken_logins_wait_then_give_up() {
        let users = SystemUsers::new("x".into(), false, Duration::from_millis(200)).unwrap();
        let _all = users
            .slots
            .clone()
            .acquire_many_owned(MAX_PAM_IN_FLIGHT as u32)
            .await
            .unwrap();
        let err = users.run_blocking(|| Ok(())).await.unwrap_err();
        assert!(err.contains("busy"), "{err}");
    }
}
