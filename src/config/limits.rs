//! `[limits]`: caps on connections and sessions, and the per-source penalty
//! for authentication failures (in the spirit of OpenSSH's MaxStartups,
//! MaxSessions and PerSourcePenalties).

use std::time::Duration;

use serde::Deserialize;

use crate::address_pattern::AddressPatterns;

/// `[limits]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_startups: Option<usize>,
    max_startups_per_source: Option<usize>,
    max_sessions: Option<usize>,
    max_sessions_per_user: Option<usize>,
    max_channels_per_connection: Option<usize>,
    penalty: Option<bool>,
    penalty_per_failure_secs: Option<u64>,
    penalty_ban_after_secs: Option<u64>,
    penalty_max_secs: Option<u64>,
    penalty_max_sources: Option<usize>,
    penalty_exempt: Option<Vec<String>>,
}

/// The validated `[limits]` table.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Connections not yet logged in, overall; more wait for a place
    /// within their login grace time.
    pub max_startups: usize,
    /// Connections not yet logged in from one source (an IPv4 address or
    /// an IPv6 /64).
    pub max_startups_per_source: usize,
    /// Logged-in connections overall.
    pub max_sessions: usize,
    /// Logged-in connections of one user.
    pub max_sessions_per_user: usize,
    /// Session channels (SFTP or scp) open at once on one connection, as
    /// OpenSSH's MaxSessions.
    pub max_channels_per_connection: usize,
    /// The failure penalty, or `None` when turned off.
    pub penalty: Option<PenaltyConfig>,
}

/// How authentication failures are penalised, per source.
#[derive(Debug, Clone)]
pub struct PenaltyConfig {
    /// Penalty time added by each failed authentication attempt.
    pub per_failure: Duration,
    /// A source whose penalty reaches this is refused (banned) until its
    /// penalty has decayed below it again.
    pub ban_after: Duration,
    /// The penalty never exceeds this, so no ban lasts longer.
    pub max: Duration,
    /// Most sources remembered; beyond, the one whose penalty ends first
    /// is forgotten.
    pub max_sources: usize,
    /// Sources never penalised.
    pub exempt: Vec<AddressPatterns>,
}

impl RawLimits {
    pub(super) fn validate(self) -> Result<LimitsConfig, String> {
        let at_least_one = |key: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(format!("limits.{key} must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let secs = |key: &str, value: Option<u64>, default: u64| match value {
            Some(0) => Err(format!("limits.{key} must be at least 1")),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(Duration::from_secs(default)),
        };
        let exempt = self
            .penalty_exempt
            .unwrap_or_default()
            .iter()
            .map(|p| {
                AddressPatterns::parse(p).map_err(|e| format!("limits.penalty_exempt: {p:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let penalty = PenaltyConfig {
            per_failure: secs("penalty_per_failure_secs", self.penalty_per_failure_secs, 5)?,
            ban_after: secs("penalty_ban_after_secs", self.penalty_ban_after_secs, 30)?,
            max: secs("penalty_max_secs", self.penalty_max_secs, 600)?,
            max_sources: at_least_one("penalty_max_sources", self.penalty_max_sources, 65536)?,
            exempt,
        };
        if penalty.max < penalty.ban_after {
            return Err(format!(
                "limits.penalty_max_secs ({}) must be at least limits.penalty_ban_after_secs ({}), \
                 or no source could ever be banned",
                penalty.max.as_secs(),
                penalty.ban_after.as_secs()
            ));
        }
        Ok(LimitsConfig {
            max_startups: at_least_one("max_startups", self.max_startups, 64)?,
            max_startups_per_source: at_least_one(
                "max_startups_per_source",
                self.max_startups_per_source,
                10,
            )?,
            // Room for backup and sync tools that run a session per worker
            // (200 parallel workers of one user log in with the defaults).
            max_sessions: at_least_one("max_sessions", self.max_sessions, 1024)?,
            max_sessions_per_user: at_least_one(
                "max_sessions_per_user",
                self.max_sessions_per_user,
                256,
            )?,
            max_channels_per_connection: at_least_one(
                "max_channels_per_connection",
                self.max_channels_per_connection,
                10,
            )?,
            penalty: self.penalty.unwrap_or(true).then_some(penalty),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LimitsConfig, String> {
        toml::from_str::<RawLimits>(text)
            .map_err(|e| e.to_string())
            .and_then(RawLimits::validate)
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            (
                c.max_startups,
                c.max_startups_per_source,
                c.max_sessions,
                c.max_sessions_per_user
            ),
            (64, 10, 1024, 256)
        );
        let p = c.penalty.unwrap();
        assert_eq!(p.per_failure, Duration::from_secs(5));
        assert_eq!(p.ban_after, Duration::from_secs(30));
        assert_eq!(p.max, Duration::from_secs(600));
        assert_eq!(p.max_sources, 65536);
        assert!(p.exempt.is_empty());
    }

    #[test]
    fn keys_and_errors() {
        let c = parse("penalty = false\nmax_sessions_per_user = 2\n").unwrap();
        assert!(c.penalty.is_none());
        assert_eq!(c.max_sessions_per_user, 2);
        let c = parse("penalty_exempt = [\"127.0.0.1\", \"10.0.0.0/8,!10.0.0.1\"]\n").unwrap();
        let p = c.penalty.unwrap();
        assert!(p.exempt[0].allows("127.0.0.1".parse().unwrap()));
        assert!(p.exempt[1].allows("10.1.1.1".parse().unwrap()));
        assert!(!p.exempt[1].allows("10.0.0.1".parse().unwrap()));
        for (text, key) in [
            ("max_startups = 0\n", "limits.max_startups"),
            (
                "penalty_exempt = [\"evil.example\"]\n",
                "limits.penalty_exempt",
            ),
            ("penalty_max_secs = 5\n", "limits.penalty_max_secs"),
            (
                "penalty_per_failure_secs = 0\n",
                "limits.penalty_per_failure_secs",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("max_sesions = 3\n").unwrap_err();
        assert!(e.contains("max_sesions"), "{e}");
    }
}
