//! `[metrics]`: the Prometheus endpoint (docs/OPERATIONS.md).

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    listen: Option<SocketAddr>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint serving `/metrics`; off when unset.
    pub listen: Option<SocketAddr>,
}

impl RawMetrics {
    pub(super) fn validate(self) -> MetricsConfig {
        MetricsConfig {
            listen: self.listen,
        }
    }
}
