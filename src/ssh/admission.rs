//! Caps on connections: unauthenticated ones overall and per source (like
//! OpenSSH's MaxStartups and PerSourceMaxStartups), and logged-in sessions
//! overall and per user.
//!
//! A slot is an RAII guard: it is given back when dropped, whichever way
//! the connection ends, so a crashed or killed session cannot leak one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::auth::penalty::Source;
use crate::config::LimitsConfig;

/// Refusals are logged at most this often (with a count of those in
/// between), so a flood cannot flood the log too.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The counters of one server.
pub(super) struct Admission {
    limits: LimitsConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    startups: usize,
    startups_per_source: HashMap<Source, usize>,
    sessions: usize,
    sessions_per_user: HashMap<String, usize>,
    last_log: Option<Instant>,
    unlogged: u64,
}

/// Why a connection or a login was refused; the text is what the client
/// and the log are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `limits.max_startups`.
    Startups,
    /// `limits.max_startups_per_source`.
    StartupsPerSource,
    /// `limits.max_sessions`.
    Sessions,
    /// `limits.max_sessions_per_user`.
    SessionsPerUser,
}

impl Refusal {
    /// The `result` of the `login_failed` event for a refused session.
    pub(super) fn event_result(self) -> &'static str {
        match self {
            Refusal::Startups | Refusal::StartupsPerSource => "too_many_startups",
            Refusal::Sessions => "too_many_sessions",
            Refusal::SessionsPerUser => "too_many_sessions_for_user",
        }
    }

    pub(super) fn message(self) -> &'static str {
        match self {
            Refusal::Startups => "too many unauthenticated connections; try again later",
            Refusal::StartupsPerSource => {
                "too many unauthenticated connections from your address; try again later"
            }
            Refusal::Sessions => "login refused: the server has too many sessions; try again later",
            Refusal::SessionsPerUser => {
                "login refused: too many sessions for this user; close one and try again"
            }
        }
    }
}

/// An unauthenticated connection's place, given back on drop.
pub(super) struct StartupSlot {
    admission: Arc<Admission>,
    source: Source,
}

/// A logged-in session's place, given back on drop.
pub(super) struct SessionSlot {
    admission: Arc<Admission>,
    user: String,
}

impl Admission {
    pub(super) fn new(limits: LimitsConfig) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `ip`, which has not logged in yet.
    pub(super) fn startup(self: &Arc<Self>, ip: IpAddr) -> Result<StartupSlot, Refusal> {
        let source = Source::of(ip);
        let mut state = self.lock();
        if state.startups >= self.limits.max_startups {
            return Err(Refusal::Startups);
        }
        let from_source = state.startups_per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_startups_per_source {
            return Err(Refusal::StartupsPerSource);
        }
        state.startups += 1;
        *state.startups_per_source.entry(source).or_insert(0) += 1;
        Ok(StartupSlot {
            admission: self.clone(),
            source,
        })
    }

    /// A place for a session of `user`, who has just authenticated.
    pub(super) fn session(self: &Arc<Self>, user: &str) -> Result<SessionSlot, Refusal> {
        let mut state = self.lock();
        if state.sessions >= self.limits.max_sessions {
            return Err(Refusal::Sessions);
        }
        let of_user = state.sessions_per_user.get(user).copied().unwrap_or(0);
        if of_user >= self.limits.max_sessions_per_user {
            return Err(Refusal::SessionsPerUser);
        }
        state.sessions += 1;
        *state.sessions_per_user.entry(user.to_owned()).or_insert(0) += 1;
        Ok(SessionSlot {
            admission: self.clone(),
            user: user.to_owned(),
        })
    }

    /// Logs a refused connection, at most once per [`LOG_EVERY`].
    pub(super) fn log_refusal(&self, refusal: Refusal, peer: std::net::SocketAddr) {
        let mut state = self.lock();
        let now = Instant::now();
        if state
            .last_log
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            state.unlogged += 1;
            return;
        }
        let also = std::mem::take(&mut state.unlogged);
        state.last_log = Some(now);
        drop(state);
        warn!(%peer, refused_since_last_report = also, "connection refused: {}", refusal.message());
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.startups, s.sessions)
    }
}

impl Drop for StartupSlot {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.startups = state.startups.saturating_sub(1);
        if let Some(n) = state.startups_per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.startups_per_source.remove(&self.source);
            }
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.sessions = state.sessions.saturating_sub(1);
        if let Some(n) = state.sessions_per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                state.sessions_per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Arc<Admission> {
        Admission::new(LimitsConfig {
            max_startups: 3,
            max_startups_per_source: 2,
            max_sessions: 3,
            max_sessions_per_user: 2,
            max_channels_per_connection: 10,
            penalty: None,
        })
    }

    #[test]
    fn startups_are_capped_overall_and_per_source() {
        let a = admission();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let s1 = a.startup(ip("10.0.0.1")).unwrap();
        let _s2 = a.startup(ip("10.0.0.1")).unwrap();
        assert_eq!(
            a.startup(ip("10.0.0.1")).err(),
            Some(Refusal::StartupsPerSource)
        );
        let _s3 = a.startup(ip("10.0.0.2")).unwrap();
        assert_eq!(a.startup(ip("10.0.0.3")).err(), Some(Refusal::Startups));
        drop(s1);
        let _s4 = a.startup(ip("10.0.0.1")).unwrap();
        assert_eq!(a.counts().0, 3);
    }

    #[test]
    fn sessions_are_capped_overall_and_per_user_and_given_back() {
        let a = admission();
        let alice1 = a.session("alice").unwrap();
        let _alice2 = a.session("alice").unwrap();
        assert_eq!(a.session("alice").err(), Some(Refusal::SessionsPerUser));
        let _bob = a.session("bob").unwrap();
        assert_eq!(a.session("carol").err(), Some(Refusal::Sessions));
        drop(alice1);
        let _alice3 = a.session("alice").unwrap();
        assert_eq!(a.counts().1, 3);
    }
}
