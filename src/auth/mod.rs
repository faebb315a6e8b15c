//! Who may log in, and with what: the users file, authorized keys,
//! password hashes, and Linux system users.
//!
//! - [`users_file`]: the TOML users file, loaded and validated as a whole,
//!   saved atomically by `dropzone user ...`.
//! - [`users_source`]: where the users file is kept (a local path, or an
//!   object in a bucket every node reads) and how a change is noticed and
//!   written without losing another.
//! - [`authorized_keys`]: OpenSSH `authorized_keys` lines; options the
//!   server cannot enforce are refused, `from=` and `expiry-time=` enforced.
//! - [`password`]: Argon2id hashes, and the dummy verification that makes
//!   unknown users cost what a wrong password costs.
//! - [`system_users`]: Linux users (`[auth] pam = true`): passwords through
//!   PAM (`pam`, cargo feature `pam`) on blocking threads with a timeout,
//!   keys from `~/.ssh/authorized_keys` checked as OpenSSH's StrictModes
//!   does ([`system_keys`]).
//!
//! - [`penalty`]: per-source penalties and bans for repeated failures.
//! - [`certificate`]: OpenSSH user certificates signed by trusted CAs, and
//!   the revoked keys file ([`krl`]: a KRL or a list of public keys).
//!
//! `from=` address lists are parsed by [`crate::address_pattern`].
//!
//! The SSH layer asks [`Authenticator`] (and [`SystemUsers`] for names the
//! users file does not know) only yes/no questions; it never learns whether
//! a user exists from a failed check (docs/HARDENING.md, "Unknown users").
//! The SSH layer records failures in [`penalty::Penalties`].

pub mod authorized_keys;
pub mod certificate;
pub mod krl;
#[cfg(feature = "pam")]
mod pam;
pub mod password;
pub mod penalty;
pub mod system_keys;
pub mod system_users;
pub mod users_file;
pub mod users_source;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use russh::keys::{HashAlg, PublicKey};

use crate::access::Permissions;
use authorized_keys::AuthorizedKey;
pub use system_users::SystemUsers;
use users_file::{UsersFile, UsersFileError};

/// The credential checks of every known user, immutable once built. `Send +
/// Sync`: share one in an `Arc`, and build a new one to reload.
pub struct Authenticator {
    users: HashMap<String, Credentials>,
}

/// What one user may log in with.
struct Credentials {
    password_hash: Option<String>,
    keys: Vec<AuthorizedKey>,
    /// What the user may do once logged in.
    permissions: Permissions,
    /// The user's quota.
    quota: crate::store::quota::Limits,
    /// Certificate principals accepted (empty: the user's name).
    principals: Vec<String>,
}

impl Authenticator {
    /// Builds the checks from a loaded users file.
    pub fn from_users_file(file: UsersFile) -> Self {
        let users = file
            .users()
            .map(|u| {
                let credentials = Credentials {
                    password_hash: u.password_hash().map(str::to_owned),
                    keys: u.keys().to_vec(),
                    permissions: u.permissions(),
                    quota: u.quota(),
                    principals: u.principals().to_vec(),
                };
                (u.name().as_str().to_owned(), credentials)
            })
            .collect();
        Authenticator { users }
    }

    /// Loads the users file at `path` (see [`UsersFile::load`]) and builds
    /// the checks.
    pub fn load(path: &Path) -> Result<Self, UsersFileError> {
        UsersFile::load(path).map(Self::from_users_file)
    }

    /// Whether `key` is an authorized key of `user` for a client at `ip`
    /// now (false for unknown users). Answers the public key "query" and the
    /// signed attempt alike; the SSH layer verifies the signature.
    pub fn key_allowed(&self, user: &str, key: &PublicKey, ip: Option<IpAddr>) -> bool {
        let Some(credentials) = self.users.get(user) else {
            return false;
        };
        let now = SystemTime::now();
        let mut matched = false;
        for entry in credentials.keys.iter().filter(|k| k.matches(key)) {
            if entry.permits(ip, now) {
                return true;
            }
            matched = true;
        }
        if matched {
            // The operator will want to know why a listed key is refused.
            tracing::info!(
                user,
                client = ?ip,
                key = %key.fingerprint(HashAlg::Sha256),
                "authorized key refused by its from= or expiry-time= option"
            );
        }
        false
    }

    /// Whether `password` is `user`'s password. Unknown users and users
    /// without a password cost the same time as a wrong password
    /// ([`password::dummy_verify`]). Blocking (Argon2 takes tens of
    /// milliseconds and 19 MiB): call it from `spawn_blocking`.
    pub fn password_ok(&self, user: &str, password: &str) -> bool {
        match self
            .users
            .get(user)
            .and_then(|c| c.password_hash.as_deref())
        {
            Some(hash) => password::verify_password(hash, password),
            None => {
                password::dummy_verify(password);
                false
            }
        }
    }

    /// Whether `user` is in the users file. For decisions the client cannot
    /// observe (such as which methods to log); a reply that depends on it
    /// would reveal who exists.
    pub fn user_exists(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// What `user` of the users file may do (`None` for a name the file
    /// does not know, such as a Linux user, who may do everything).
    pub fn permissions(&self, user: &str) -> Option<Permissions> {
        self.users.get(user).map(|c| c.permissions)
    }

    /// The quota of `user` of the users file; `None` for a name the file
    /// does not know.
    pub fn quota(&self, user: &str) -> Option<crate::store::quota::Limits> {
        self.users.get(user).map(|c| c.quota)
    }

    /// The certificate principals `user` of the users file accepts (empty:
    /// a certificate must name the user); `None` for a name the file does
    /// not know.
    pub fn principals(&self, user: &str) -> Option<&[String]> {
        self.users.get(user).map(|c| c.principals.as_slice())
    }

    /// The number of users (tests only: the product never needs it).
    #[cfg(test)]
    pub(crate) fn user_count(&self) -> usize {
        self.users.len()
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    fn other_key() -> PublicKey {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        PublicKey::read_openssh_file(path.with_extension("pub")).unwrap()
    }

    fn authenticator() -> Authenticator {
        let mut file = UsersFile::default();
        let hash = password::hash_password("s3cret").unwrap();
        file.add_user("alice", Some(hash), vec![KEY.to_owned()])
            .unwrap();
        file.add_user("bob", None, vec![format!("from=\"10.0.0.0/8\" {KEY}")])
            .unwrap();
        file.add_user(
            "carol",
            None,
            vec![format!("expiry-time=\"20000101\" {KEY}")],
        )
        .unwrap();
        Authenticator::from_users_file(file)
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Authenticator>();
    }

    #[test]
    fn keys() {
        let auth = authenticator();
        let key = PublicKey::from_openssh(KEY).unwrap();
        let ip = Some("192.0.2.1".parse().unwrap());
        assert!(auth.key_allowed("alice", &key, ip));
        assert!(auth.key_allowed("alice", &key, None));
        assert!(!auth.key_allowed("alice", &other_key(), ip));
        assert!(!auth.key_allowed("nobody", &key, ip));
        assert!(!auth.key_allowed("bob", &key, ip));
        assert!(auth.key_allowed("bob", &key, Some("10.1.2.3".parse().unwrap())));
        assert!(!auth.key_allowed("carol", &key, ip));
    }

    #[test]
    fn passwords() {
        let auth = authenticator();
        assert!(auth.password_ok("alice", "s3cret"));
        assert!(!auth.password_ok("alice", "wrong"));
        assert!(!auth.password_ok("bob", "s3cret"));
        assert!(!auth.password_ok("nobody", "s3cret"));
        assert!(auth.user_exists("bob"));
        assert!(!auth.user_exists("nobody"));
        assert_eq!(auth.user_count(), 3);
    }

    #[test]
    fn load_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        assert_eq!(Authenticator::load(&path).unwrap().user_count(), 0);
        let mut file = UsersFile::default();
        file.add_user("alice", None, vec![KEY.to_owned()]).unwrap();
        file.save(&path).unwrap();
        let auth = Authenticator::load(&path).unwrap();
        assert!(auth.key_allowed("alice", &PublicKey::from_openssh(KEY).unwrap(), None));
    }
}
