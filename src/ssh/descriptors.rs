//! File descriptors: the process's limit, raised at start-up, and how it is
//! shared so that no user's open files can stop another user's login.
//!
//! Every connection costs a few descriptors (its socket, a second handle on
//! it to shut it down from outside, its runtime's event queue, the user's
//! root directory), and every open SFTP handle one or two (an upload being
//! staged holds the staged file and the file it replaces). The connection
//! caps of `[limits]` bound the first part; what is left after a reserve
//! for the server's own files (key files, logs, the users file, scans) is
//! what all open handles together may use. Per-user and per-connection
//! handle caps (`[sftp]`) then keep one user within a share of that.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::LimitsConfig;

/// Descriptors kept for the server itself: listeners, log and audit files,
/// key files being read, scan commands' pipes, the metrics endpoint.
const RESERVED: u64 = 128;

/// Descriptors one connection holds besides its SFTP handles (once it has
/// a thread and runtime of its own).
const PER_CONNECTION: u64 = 5;

/// Descriptors a connection holds while it waits for a place before login:
/// its socket.
const PER_WAITING: u64 = 1;

/// Descriptors one open SFTP handle may hold (a staged upload: the staged
/// file and the file it replaces).
const PER_HANDLE: u64 = 2;

/// The fewest handles the server allows in all, however low the limit.
const MIN_HANDLES: u64 = 16;

/// How the process's descriptors are shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorPlan {
    /// The soft limit on open files, after raising it.
    pub limit: u64,
    /// Most SFTP handles open at once over every connection.
    pub max_handles_total: usize,
    /// Whether the limit is too low for the configured connection caps (the
    /// server then warns at start-up).
    pub short: bool,
}

/// Raises the soft limit on open files to the hard limit (as OpenSSH's
/// sshd does not, but a server of many sessions must), and returns the
/// soft limit in force.
pub fn raise_open_files_limit() -> u64 {
    let current = getrlimit(Resource::Nofile);
    if current.current != current.maximum {
        let raised = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open files limit to its hard limit");
        }
    }
    // Unlimited is reported as `None`; no kernel allows more than
    // fs.nr_open, which is far above what the plan needs.
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

/// Shares `limit` descriptors between connections (logged in, logging in,
/// and waiting for a place to) and handles under the caps of `limits`.
pub fn plan(limit: u64, limits: &LimitsConfig) -> DescriptorPlan {
    let waiting = super::admission::waiting_caps(limits).0 as u64;
    let connections = (limits.max_startups + limits.max_sessions) as u64;
    let for_connections = RESERVED + PER_CONNECTION * connections + PER_WAITING * waiting;
    let spare = limit.saturating_sub(for_connections);
    let handles = spare / PER_HANDLE;
    DescriptorPlan {
        limit,
        max_handles_total: usize::try_from(handles.max(MIN_HANDLES)).unwrap_or(usize::MAX),
        short: handles < MIN_HANDLES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(sessions: usize) -> LimitsConfig {
        LimitsConfig {
            max_startups: 64,
            max_startups_per_source: 10,
            max_sessions: sessions,
            max_sessions_per_user: 256,
            max_channels_per_connection: 10,
            penalty: None,
        }
    }

    #[test]
    fn handles_get_what_connections_and_the_reserve_leave() {
        let p = plan(20_000, &limits(1024));
        // 128 + 5 * (64 + 1024) + 1024 waiting = 6592 for connections;
        // the rest in pairs.
        assert_eq!(p.max_handles_total, (20_000 - 6_592) / 2);
        assert!(!p.short);
    }

    #[test]
    fn a_low_limit_is_reported_and_still_leaves_a_few_handles() {
        let p = plan(4096, &limits(1024));
        assert!(p.short);
        assert_eq!(p.max_handles_total, MIN_HANDLES as usize);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_open_files_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum);
        assert_eq!(Some(limit), now.current.or(Some(1 << 20)));
    }
}
