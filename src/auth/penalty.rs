//! Per-source penalties for authentication failures, after OpenSSH's
//! PerSourcePenalties.
//!
//! Each failed attempt adds [`PenaltyConfig::per_failure`] to its source's
//! penalty, which runs down in real time and never exceeds
//! [`PenaltyConfig::max`]. While a source's remaining penalty is at least
//! [`PenaltyConfig::ban_after`], the source is banned: its new connections
//! are closed before the SSH banner and its logins are refused, even with
//! the right credentials. Before that, the SSH layer slows each rejection
//! in proportion to the penalty. One wrong password costs little; a
//! guessing run is slowed, then banned for longer and longer, and the ban
//! lifts by itself once the attempts stop.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually has a whole
//! /64), as in OpenSSH. Memory is bounded: at most
//! [`PenaltyConfig::max_sources`] sources are remembered, and when full the
//! one whose penalty ends first is forgotten. Success from a source does not
//! lower its penalty: a ban holds for everyone behind that address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::PenaltyConfig;
use crate::sync::lock;

/// The unit penalties and per-source caps count in: an IPv4 address or
/// the /64 of an IPv6 address (an IPv4-mapped IPv6 address is its IPv4
/// address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// One IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    /// The source `ip` belongs to.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Source::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(a)),
            Source::V6(p) => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(p) << 64)),
        }
    }
}

/// What [`Penalties::record_failure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// The source is exempt, or still below the ban threshold.
    NotBanned,
    /// This failure started a ban that lasts this long.
    BanStarted(Duration),
    /// The source was already banned; the ban now lasts this long.
    BanExtended(Duration),
}

/// Whether a source may connect now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not banned.
    Allowed,
    /// Banned for this much longer. `first` is true for the first refused
    /// connection of this ban, so that the log gets one line per ban, not
    /// one per connection.
    Banned {
        /// Time left.
        remaining: Duration,
        /// First refusal of this ban.
        first: bool,
    },
}

struct Entry {
    /// When the penalty has run down to zero.
    until: Instant,
    /// Whether a refused connection of the current ban was logged.
    refusal_logged: bool,
}

/// The penalty table of one server. `Sync`; every call takes a short lock.
pub struct Penalties {
    config: PenaltyConfig,
    sources: Mutex<HashMap<Source, Entry>>,
}

impl Penalties {
    /// An empty table.
    pub fn new(config: PenaltyConfig) -> Self {
        Penalties {
            config,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` matches the exempt list.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.config.exempt.iter().any(|p| p.allows(ip))
    }

    fn banned_for(&self, entry: &Entry, now: Instant) -> Option<Duration> {
        let left = entry.until.saturating_duration_since(now);
        (left >= self.config.ban_after).then_some(left)
    }

    /// Whether `ip` may connect (or go on authenticating) at `now`.
    pub fn admission(&self, ip: IpAddr, now: Instant) -> Admission {
        if self.is_exempt(ip) {
            return Admission::Allowed;
        }
        let mut sources = lock(&self.sources);
        let Some(entry) = sources.get_mut(&Source::of(ip)) else {
            return Admission::Allowed;
        };
        match self.banned_for(entry, now) {
            Some(remaining) => {
                let first = !entry.refusal_logged;
                entry.refusal_logged = true;
                Admission::Banned { remaining, first }
            }
            None => Admission::Allowed,
        }
    }

    /// Whether `ip` is banned at `now` (no side effect on logging).
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        if self.is_exempt(ip) {
            return false;
        }
        let sources = lock(&self.sources);
        sources
            .get(&Source::of(ip))
            .and_then(|e| self.banned_for(e, now))
            .is_some()
    }

    /// Adds one failure's penalty to `ip`'s source.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> FailureOutcome {
        if self.is_exempt(ip) {
            return FailureOutcome::NotBanned;
        }
        let source = Source::of(ip);
        let mut sources = lock(&self.sources);
        if !sources.contains_key(&source) && sources.len() >= self.config.max_sources {
            sources.retain(|_, e| e.until > now);
            if sources.len() >= self.config.max_sources {
                // O(n), but only when the table is full of live penalties.
                let oldest = sources.iter().min_by_key(|(_, e)| e.until).map(|(s, _)| *s);
                if let Some(oldest) = oldest {
                    sources.remove(&oldest);
                }
            }
        }
        let entry = sources.entry(source).or_insert(Entry {
            until: now,
            refusal_logged: false,
        });
        let was_banned = self.banned_for(entry, now).is_some();
        let start = entry.until.max(now);
        entry.until = (start + self.config.per_failure).min(now + self.config.max);
        match (was_banned, self.banned_for(entry, now)) {
            (_, None) => FailureOutcome::NotBanned,
            (false, Some(d)) => {
                entry.refusal_logged = false;
                FailureOutcome::BanStarted(d)
            }
            (true, Some(d)) => FailureOutcome::BanExtended(d),
        }
    }

    /// The penalty `ip`'s source has left at `now` (zero when exempt or
    /// unknown).
    pub fn remaining(&self, ip: IpAddr, now: Instant) -> Duration {
        if self.is_exempt(ip) {
            return Duration::ZERO;
        }
        let sources = lock(&self.sources);
        sources
            .get(&Source::of(ip))
            .map_or(Duration::ZERO, |e| e.until.saturating_duration_since(now))
    }

    /// The number of sources remembered (tests only: the product never
    /// needs it).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        lock(&self.sources).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address_pattern::AddressPatterns;

    fn config() -> PenaltyConfig {
        PenaltyConfig {
            per_failure: Duration::from_secs(5),
            ban_after: Duration::from_secs(15),
            max: Duration::from_secs(60),
            max_sources: 3,
            exempt: vec![AddressPatterns::parse("192.0.2.0/24").unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        assert_eq!(
            Source::of(ip("10.0.0.1")),
            Source::of(ip("::ffff:10.0.0.1"))
        );
        assert_ne!(Source::of(ip("10.0.0.1")), Source::of(ip("10.0.0.2")));
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn failures_add_up_to_a_ban_that_decays() {
        let p = Penalties::new(config());
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!(p.record_failure(a, t0), FailureOutcome::NotBanned);
        assert_eq!(p.record_failure(a, t0), FailureOutcome::NotBanned);
        assert_eq!(p.admission(a, t0), Admission::Allowed);
        assert_eq!(
            p.record_failure(a, t0),
            FailureOutcome::BanStarted(Duration::from_secs(15))
        );
        // Logged once per ban, not once per connection.
        assert_eq!(
            p.admission(a, t0),
            Admission::Banned {
                remaining: Duration::from_secs(15),
                first: true
            }
        );
        assert!(matches!(
            p.admission(a, t0),
            Admission::Banned { first: false, .. }
        ));
        // Another address is not affected.
        assert_eq!(p.admission(ip("10.0.0.2"), t0), Admission::Allowed);
        // The ban grows with failures, up to the maximum.
        for _ in 0..20 {
            p.record_failure(a, t0);
        }
        assert!(matches!(
            p.admission(a, t0),
            Admission::Banned { remaining, .. } if remaining == Duration::from_secs(60)
        ));
        assert_eq!(p.remaining(a, t0), Duration::from_secs(60));
        assert_eq!(p.remaining(a, t0 + Duration::from_secs(70)), Duration::ZERO);
        // ...and lifts by itself once the penalty runs below the threshold.
        assert!(p.is_banned(a, t0 + Duration::from_secs(45)));
        assert!(!p.is_banned(a, t0 + Duration::from_secs(46)));
        assert_eq!(
            p.admission(a, t0 + Duration::from_secs(46)),
            Admission::Allowed
        );
        // A new ban is logged again.
        let t1 = t0 + Duration::from_secs(46);
        assert!(matches!(
            p.record_failure(a, t1),
            FailureOutcome::BanStarted(_)
        ));
        assert!(matches!(
            p.admission(a, t1),
            Admission::Banned { first: true, .. }
        ));
    }

    #[test]
    fn spaced_out_failures_never_ban() {
        let p = Penalties::new(config());
        let mut t = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..100 {
            assert_eq!(p.record_failure(a, t), FailureOutcome::NotBanned);
            t += Duration::from_secs(5);
        }
    }

    #[test]
    fn exempt_sources_are_never_banned() {
        let p = Penalties::new(config());
        let t = Instant::now();
        for _ in 0..50 {
            assert_eq!(
                p.record_failure(ip("192.0.2.7"), t),
                FailureOutcome::NotBanned
            );
        }
        assert_eq!(p.admission(ip("192.0.2.7"), t), Admission::Allowed);
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_goes_first() {
        let p = Penalties::new(config());
        let t = Instant::now();
        // 10.0.0.1 gets the longest penalty; 10.0.0.2 the one ending first.
        for _ in 0..4 {
            p.record_failure(ip("10.0.0.1"), t);
        }
        p.record_failure(ip("10.0.0.2"), t);
        p.record_failure(ip("10.0.0.3"), t + Duration::from_secs(1));
        p.record_failure(ip("10.0.0.4"), t + Duration::from_secs(2));
        assert_eq!(p.tracked(), 3);
        assert!(p.is_banned(ip("10.0.0.1"), t + Duration::from_secs(2)));
        // 10.0.0.2 was evicted: a further failure starts from zero.
        for _ in 0..2 {
            p.record_failure(ip("10.0.0.2"), t + Duration::from_secs(2));
        }
        assert!(!p.is_banned(ip("10.0.0.2"), t + Duration::from_secs(2)));
        assert_eq!(p.tracked(), 3);
    }
}
