//! Caps on connections: unauthenticated ones overall and per source (like
//! OpenSSH's MaxStartups and PerSourceMaxStartups), and logged-in sessions
//! overall and per user.
//!
//! A connection that finds the unauthenticated caps full waits for a place
//! (up to its login grace time) instead of being closed: a backup tool that
//! starts 200 workers at once from one address gets them all logged in, a
//! few at a time. The waiting connections are bounded too
//! ([`Admission::waiting_caps`]), so a flood still costs a bounded number of
//! sockets, and the per-source cap keeps one address from taking every
//! place that frees up.
//!
//! A slot is an RAII guard: it is given back when dropped, whichever way
//! the connection ends, so a crashed or killed session cannot leak one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

use crate::auth::penalty::Source;
use crate::config::LimitsConfig;
use crate::sync::lock;

/// Refusals are logged at most this often (with a count of those in
/// between), so a flood cannot flood the log too.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How many connections may wait for an unauthenticated place: overall,
/// and from one source. Sixteen and four times `max_startups` (1024 and 256
/// by default): a burst of 200 connections from one address fits, and each
/// waiting connection costs one socket and a small task.
pub(super) fn waiting_caps(limits: &LimitsConfig) -> (usize, usize) {
    let n = limits.max_startups;
    (n.saturating_mul(16), n.saturating_mul(4))
}

/// The counters of one server.
pub(super) struct Admission {
    limits: LimitsConfig,
    state: Mutex<State>,
    /// Woken whenever an unauthenticated place is given back.
    startup_freed: Notify,
}

#[derive(Default)]
struct State {
    startups: usize,
    startups_per_source: HashMap<Source, usize>,
    sessions: usize,
    sessions_per_user: HashMap<String, usize>,
    /// Connections waiting for an unauthenticated place.
    waiting: usize,
    waiting_per_source: HashMap<Source, usize>,
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
    /// Too many connections already wait for an unauthenticated place.
    QueueFull,
    /// No place freed up within the login grace time.
    WaitedTooLong,
}

impl Refusal {
    /// The `result` of the `login_failed` event for a refused session.
    pub(super) fn event_result(self) -> &'static str {
        match self {
            Refusal::Startups
            | Refusal::StartupsPerSource
            | Refusal::QueueFull
            | Refusal::WaitedTooLong => "too_many_startups",
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
            Refusal::QueueFull => "too many connections are waiting to log in; try again later",
            Refusal::WaitedTooLong => {
                "the server was too busy to take this connection in time; try again later"
            }
        }
    }
}

/// An unauthenticated connection's place, given back on drop.
pub(super) struct StartupSlot {
    admission: Arc<Admission>,
    source: Source,
}

/// A connection's place among those waiting for a startup place, given
/// back on drop.
struct WaitingPlace {
    admission: Arc<Admission>,
    source: Source,
}

impl Drop for WaitingPlace {
    fn drop(&mut self) {
        let mut state = lock(&self.admission.state);
        state.waiting = state.waiting.saturating_sub(1);
        if let Some(n) = state.waiting_per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.waiting_per_source.remove(&self.source);
            }
        }
    }
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
            startup_freed: Notify::new(),
        })
    }

    fn waiting_caps(&self) -> (usize, usize) {
        waiting_caps(&self.limits)
    }

    /// A place for a new connection from `ip`, waiting for one until
    /// `deadline` when the caps are full (see the module doc). Refused at
    /// once when too many connections wait already.
    pub(super) async fn wait_startup(
        self: &Arc<Self>,
        ip: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Result<StartupSlot, Refusal> {
        match self.startup(ip) {
            Err(Refusal::Startups | Refusal::StartupsPerSource) => {}
            other => return other,
        }
        let _waiting = self.enqueue(Source::of(ip))?;
        loop {
            // Registered before the attempt, so a place given back between
            // the attempt and the wait is not missed.
            let freed = self.startup_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.startup(ip) {
                Err(Refusal::Startups | Refusal::StartupsPerSource) => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Refusal::WaitedTooLong);
            }
        }
    }

    /// Counts a connection from `source` as waiting, if the waiting caps
    /// allow.
    fn enqueue(self: &Arc<Self>, source: Source) -> Result<WaitingPlace, Refusal> {
        let (overall, per_source) = self.waiting_caps();
        let mut state = lock(&self.state);
        let from_source = state.waiting_per_source.get(&source).copied().unwrap_or(0);
        if state.waiting >= overall || from_source >= per_source {
            return Err(Refusal::QueueFull);
        }
        state.waiting += 1;
        *state.waiting_per_source.entry(source).or_insert(0) += 1;
        Ok(WaitingPlace {
            admission: self.clone(),
            source,
        })
    }

    /// `limits.max_channels_per_connection`.
    pub(super) fn max_channels_per_connection(&self) -> usize {
        self.limits.max_channels_per_connection
    }

    /// A place for a new connection from `ip`, which has not logged in yet.
    pub(super) fn startup(self: &Arc<Self>, ip: IpAddr) -> Result<StartupSlot, Refusal> {
        let source = Source::of(ip);
        let mut state = lock(&self.state);
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
        let mut state = lock(&self.state);
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
        let mut state = lock(&self.state);
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
        let s = lock(&self.state);
        (s.startups, s.sessions)
    }
}

impl Drop for StartupSlot {
    fn drop(&mut self) {
        let mut state = lock(&self.admission.state);
        state.startups = state.startups.saturating_sub(1);
        if let Some(n) = state.startups_per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.startups_per_source.remove(&self.source);
            }
        }
        drop(state);
        self.admission.startup_freed.notify_waiters();
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut state = lock(&self.admission.state);
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_full_startup_cap_makes_connections_wait_for_a_place() {
        let a = admission();
        let first = a.startup(ip("10.0.0.1")).unwrap();
        let _second = a.startup(ip("10.0.0.1")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.wait_startup(ip("10.0.0.1"), deadline).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "took a place beyond the per-source cap"
        );
        assert_eq!(lock(&a.state).waiting, 1);
        drop(first);
        let slot = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was not woken")
            .unwrap();
        assert!(slot.is_ok());
        assert_eq!(
            lock(&a.state).waiting,
            0,
            "the waiting place was not given back"
        );
    }

    #[tokio::test]
    async fn waiting_ends_at_the_deadline_and_the_queue_is_bounded() {
        let a = admission();
        let _s1 = a.startup(ip("10.0.0.1")).unwrap();
        let _s2 = a.startup(ip("10.0.0.1")).unwrap();
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert_eq!(
            a.wait_startup(ip("10.0.0.1"), soon).await.err(),
            Some(Refusal::WaitedTooLong)
        );
        // max_startups 3: 12 may wait from one source; the 13th is refused
        // at once.
        let later = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut waiters = Vec::new();
        for _ in 0..12 {
            let a = a.clone();
            waiters.push(tokio::spawn(async move {
                a.wait_startup(ip("10.0.0.1"), later).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(lock(&a.state).waiting, 12);
        assert_eq!(
            a.wait_startup(ip("10.0.0.1"), later).await.err(),
            Some(Refusal::QueueFull)
        );
        // Another source still gets the free overall place at once.
        assert!(a.wait_startup(ip("10.0.0.2"), later).await.is_ok());
        for w in waiters {
            w.abort();
        }
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
