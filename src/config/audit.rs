//! `[audit]`: the audit trail (one JSON object per line, docs/OPERATIONS.md).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    log_file: Option<PathBuf>,
}

/// `[audit]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditConfig {
    /// Where audit lines are appended (created 0600, reopened on SIGHUP);
    /// no audit log when unset.
    pub log_file: Option<PathBuf>,
}

impl RawAudit {
    pub(super) fn validate(self) -> Result<AuditConfig, String> {
        if self
            .log_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(
                "audit.log_file must not be empty (leave it out to turn auditing off)".into(),
            );
        }
        Ok(AuditConfig {
            log_file: self.log_file,
        })
    }
}
