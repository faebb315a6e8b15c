//! `[kms.aws_kms]`: the AWS KMS backend (`kms.backend = "aws-kms"`).
//!
//! Credentials are not configured here: they come from the standard AWS
//! chain (environment, shared files, web identity; see
//! `crate::kms::aws_kms::credentials`).

use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAwsKms {
    key_id: String,
    region: String,
    endpoint: Option<String>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
}

/// `[kms.aws_kms]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKmsConfig {
    /// The KMS key: key id, key ARN, `alias/NAME` or alias ARN.
    pub key_id: String,
    /// The AWS region (`us-east-1`): the default endpoint and the signing
    /// scope.
    pub region: String,
    /// A KMS-compatible endpoint (`http://127.0.0.1:5000`); default
    /// `https://kms.REGION.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Time allowed to connect (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request (default 15 s).
    pub request_timeout: Duration,
}

impl RawAwsKms {
    pub(super) fn validate(self) -> Result<AwsKmsConfig, String> {
        if self.key_id.trim().is_empty() {
            return Err("kms.aws_kms.key_id must not be empty".into());
        }
        if self.region.trim().is_empty() {
            return Err("kms.aws_kms.region must not be empty".into());
        }
        let timeout = |name: &str, secs: Option<u64>, default: u64| match secs {
            Some(0) => Err(format!("kms.aws_kms.{name} must be at least 1")),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(Duration::from_secs(default)),
        };
        Ok(AwsKmsConfig {
            key_id: self.key_id,
            region: self.region,
            endpoint: self.endpoint,
            connect_timeout: timeout("connect_timeout_secs", self.connect_timeout_secs, 5)?,
            request_timeout: timeout("request_timeout_secs", self.request_timeout_secs, 15)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, KmsBackend};

    #[test]
    fn aws_kms_table() {
        let c = Config::parse(
            "[kms]\nbackend = \"aws-kms\"\n[kms.aws_kms]\nkey_id = \"alias/dz\"\n\
             region = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        assert_eq!(c.kms.backend, KmsBackend::AwsKms);
        let a = c.kms.aws_kms.unwrap();
        assert_eq!(a.key_id, "alias/dz");
        assert_eq!(a.region, "eu-west-1");
        assert_eq!(a.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(a.request_timeout.as_secs(), 15);
    }

    #[test]
    fn aws_kms_needs_its_table_and_keys() {
        let e = Config::parse("[kms]\nbackend = \"aws-kms\"\n").unwrap_err();
        assert!(e.contains("[kms.aws_kms]"), "{e}");
        for bad in [
            "[kms.aws_kms]\nregion = \"r\"\n",
            "[kms.aws_kms]\nkey_id = \"\"\nregion = \"r\"\n",
            "[kms.aws_kms]\nkey_id = \"k\"\nregion = \"r\"\nrequest_timeout_secs = 0\n",
            "[kms.aws_kms]\nkey_id = \"k\"\nregion = \"r\"\naccess_key = \"x\"\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }
}
