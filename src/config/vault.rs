//! `[kms.vault]`: the Vault/OpenBao Transit backend (`kms.backend =
//! "vault"`).
//!
//! ```toml
//! [kms.vault]
//! address = "https://vault:8200"
//! mount = "transit"                 # default
//! key_name = "dropzone"             # default
//! token_file = "config/vault.token" # or role_id_file + secret_id_file
//! # approle_mount = "approle"       # default, with AppRole
//! # namespace = "team-a"            # X-Vault-Namespace
//! # ca_file = "config/vault-ca.pem"
//! # connect_timeout_secs = 5
//! # request_timeout_secs = 15
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVault {
    address: String,
    mount: Option<String>,
    key_name: Option<String>,
    token_file: Option<PathBuf>,
    role_id_file: Option<PathBuf>,
    secret_id_file: Option<PathBuf>,
    approle_mount: Option<String>,
    namespace: Option<String>,
    ca_file: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
}

/// How dropzone gets its Vault token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// `token_file`: a file whose first line is the token.
    TokenFile(PathBuf),
    /// `role_id_file` + `secret_id_file`: AppRole login at `approle_mount`.
    AppRole {
        /// The AppRole auth mount (default `approle`).
        mount: String,
        /// File holding the role id.
        role_id_file: PathBuf,
        /// File holding the secret id.
        secret_id_file: PathBuf,
    },
}

/// `[kms.vault]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// Vault's address (`https://vault:8200`).
    pub address: String,
    /// The Transit engine's mount (default `transit`).
    pub mount: String,
    /// The Transit key (default `dropzone`).
    pub key_name: String,
    /// The token or the AppRole credentials.
    pub auth: VaultAuth,
    /// Sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// PEM CA certificates for an `https` address (default: the system's
    /// roots).
    pub ca_file: Option<PathBuf>,
    /// Time allowed to connect (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request (default 15 s).
    pub request_timeout: Duration,
}

impl RawVault {
    pub(super) fn validate(self) -> Result<VaultConfig, String> {
        if self.address.trim().is_empty() {
            return Err("kms.vault.address must not be empty".into());
        }
        let auth = match (self.token_file, self.role_id_file, self.secret_id_file) {
            (Some(token), None, None) => {
                if self.approle_mount.is_some() {
                    return Err(
                        "kms.vault.approle_mount needs role_id_file and secret_id_file, \
                         not token_file"
                            .into(),
                    );
                }
                VaultAuth::TokenFile(token)
            }
            (None, Some(role_id_file), Some(secret_id_file)) => VaultAuth::AppRole {
                mount: self.approle_mount.unwrap_or_else(|| "approle".into()),
                role_id_file,
                secret_id_file,
            },
            (None, None, None) => {
                return Err(
                    "[kms.vault] needs token_file, or role_id_file and secret_id_file \
                     (AppRole)"
                        .into(),
                );
            }
            (Some(_), _, _) => {
                return Err("[kms.vault]: give either token_file or role_id_file and \
                     secret_id_file, not both"
                    .into());
            }
            (None, _, _) => {
                return Err(
                    "[kms.vault]: AppRole needs both role_id_file and secret_id_file".into(),
                );
            }
        };
        let timeout = |name: &str, secs: Option<u64>, default: u64| match secs {
            Some(0) => Err(format!("kms.vault.{name} must be at least 1")),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(Duration::from_secs(default)),
        };
        Ok(VaultConfig {
            address: self.address,
            mount: self.mount.unwrap_or_else(|| "transit".into()),
            key_name: self.key_name.unwrap_or_else(|| "dropzone".into()),
            auth,
            namespace: self.namespace.filter(|n| !n.is_empty()),
            ca_file: self.ca_file,
            connect_timeout: timeout("connect_timeout_secs", self.connect_timeout_secs, 5)?,
            request_timeout: timeout("request_timeout_secs", self.request_timeout_secs, 15)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, KmsBackend};

    fn parse(table: &str) -> Result<Config, String> {
        Config::parse(&format!(
            "[kms]\nbackend = \"vault\"\n[kms.vault]\naddress = \"http://127.0.0.1:8200\"\n{table}"
        ))
    }

    #[test]
    fn token_file_with_defaults() {
        let c = parse("token_file = \"t\"\n").unwrap();
        assert_eq!(c.kms.backend, KmsBackend::Vault);
        let v = c.kms.vault.unwrap();
        assert_eq!(v.address, "http://127.0.0.1:8200");
        assert_eq!(
            (v.mount.as_str(), v.key_name.as_str()),
            ("transit", "dropzone")
        );
        assert_eq!(v.auth, VaultAuth::TokenFile("t".into()));
        assert_eq!(v.namespace, None);
        assert_eq!(v.connect_timeout.as_secs(), 5);
        assert_eq!(v.request_timeout.as_secs(), 15);
    }

    #[test]
    fn approle_and_every_setting() {
        let v = parse(
            "role_id_file = \"r\"\nsecret_id_file = \"s\"\napprole_mount = \"ar\"\n\
             mount = \"team/transit\"\nkey_name = \"dz\"\nnamespace = \"ns\"\n\
             ca_file = \"ca.pem\"\nconnect_timeout_secs = 2\nrequest_timeout_secs = 3\n",
        )
        .unwrap()
        .kms
        .vault
        .unwrap();
        assert_eq!(
            v.auth,
            VaultAuth::AppRole {
                mount: "ar".into(),
                role_id_file: "r".into(),
                secret_id_file: "s".into()
            }
        );
        assert_eq!(
            (v.mount.as_str(), v.key_name.as_str()),
            ("team/transit", "dz")
        );
        assert_eq!(v.namespace.as_deref(), Some("ns"));
        assert_eq!(v.ca_file, Some("ca.pem".into()));
        assert_eq!(v.request_timeout.as_secs(), 3);
    }

    #[test]
    fn bad_tables_say_what_is_wrong() {
        for (table, want) in [
            ("", "needs token_file"),
            ("token_file = \"t\"\nrole_id_file = \"r\"\n", "not both"),
            ("role_id_file = \"r\"\n", "both role_id_file"),
            (
                "token_file = \"t\"\napprole_mount = \"a\"\n",
                "approle_mount",
            ),
            (
                "token_file = \"t\"\nrequest_timeout_secs = 0\n",
                "at least 1",
            ),
            ("token_file = \"t\"\nurl = \"x\"\n", "unknown field"),
        ] {
            let e = parse(table).unwrap_err();
            assert!(e.contains(want), "{table:?}: {e}");
        }
        let e = Config::parse("[kms]\nbackend = \"vault\"\n").unwrap_err();
        assert!(e.contains("[kms.vault]"), "{e}");
    }
}
