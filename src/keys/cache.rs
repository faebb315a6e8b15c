//! The in-memory cache of unwrapped data keys (security property 4).
//!
//! A user's concurrent sessions share one [`DataKey`]. The cache itself holds
//! only a [`Weak`] reference, so the key is dropped, and zeroized, when the
//! last session releases its [`Arc`]. With a TTL the cache also keeps a
//! strong reference until the TTL has passed since the key was last fetched,
//! so that a reconnecting client does not pay for another unwrap. Expiry is
//! lazy: every access sweeps the whole cache, and the owner may call
//! [`KeyCache::purge_expired`] periodically.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::DataKey;
use crate::sync::lock;
use crate::username::UserName;

/// Longest TTL honoured; longer ones are cut to this. A year is far beyond
/// any sensible setting and keeps `Instant` arithmetic from overflowing.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) struct KeyCache {
    ttl: Option<Duration>,
    entries: Mutex<HashMap<UserName, Entry>>,
}

struct Entry {
    key: Weak<DataKey>,
    /// A strong reference held until the instant, when a TTL is configured.
    pinned: Option<(Arc<DataKey>, Instant)>,
}

impl KeyCache {
    pub(crate) fn new(ttl: Option<Duration>) -> Self {
        KeyCache {
            ttl: ttl.map(|d| d.min(MAX_TTL)),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The user's key if some session (or the TTL) still holds it.
    pub(crate) fn get(&self, user: &UserName) -> Option<Arc<DataKey>> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        sweep(&mut entries, now);
        let entry = entries.get_mut(user)?;
        let key = entry.key.upgrade()?;
        self.pin(entry, &key, now);
        Some(key)
    }

    /// Caches `key` for `user` and returns the shared handle. If a live key
    /// is already cached, that one is returned and `key` is dropped.
    pub(crate) fn insert(&self, user: &UserName, key: DataKey) -> Arc<DataKey> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        sweep(&mut entries, now);
        if let Some(entry) = entries.get_mut(user)
            && let Some(existing) = entry.key.upgrade()
        {
            self.pin(entry, &existing, now);
            return existing;
        }
        let key = Arc::new(key);
        let mut entry = Entry {
            key: Arc::downgrade(&key),
            pinned: None,
        };
        self.pin(&mut entry, &key, now);
        entries.insert(user.clone(), entry);
        key
    }

    /// Drops keys whose TTL has passed and that no session holds.
    pub(crate) fn purge_expired(&self) {
        sweep(&mut lock(&self.entries), Instant::now());
    }

    /// Number of users whose key is in memory.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        let mut entries = lock(&self.entries);
        sweep(&mut entries, Instant::now());
        entries.len()
    }

    fn pin(&self, entry: &mut Entry, key: &Arc<DataKey>, now: Instant) {
        if let Some(ttl) = self.ttl {
            // Cannot overflow with `MAX_TTL`; if it did, expire at once.
            let until = now.checked_add(ttl).unwrap_or(now);
            entry.pinned = Some((Arc::clone(key), until));
        }
    }
}

fn sweep(entries: &mut HashMap<UserName, Entry>, now: Instant) {
    entries.retain(|_, entry| {
        if entry
            .pinned
            .as_ref()
            .is_some_and(|(_, until)| *until <= now)
        {
            entry.pinned = None; // may drop, and so zeroize, the key
        }
        entry.key.strong_count() > 0
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: &str) -> UserName {
        UserName::parse(n).unwrap()
    }

    #[test]
    fn without_ttl_the_key_lives_only_while_held() {
        let cache = KeyCache::new(None);
        let a = cache.insert(&user("a"), DataKey::from_bytes([1; 32]));
        let b = cache.get(&user("a")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let weak = Arc::downgrade(&a);
        drop(a);
        assert!(cache.get(&user("a")).is_some_and(|k| Arc::ptr_eq(&k, &b)));
        drop(b);
        assert!(weak.upgrade().is_none());
        assert!(cache.get(&user("a")).is_none());
        assert_eq!(cache.live(), 0);
    }

    #[test]
    fn ttl_keeps_the_key_until_expiry() {
        let cache = KeyCache::new(Some(Duration::from_secs(3600)));
        let weak = Arc::downgrade(&cache.insert(&user("a"), DataKey::from_bytes([1; 32])));
        assert!(weak.upgrade().is_some());
        cache.purge_expired();
        assert!(cache.get(&user("a")).is_some());

        let cache = KeyCache::new(Some(Duration::from_millis(20)));
        let weak = Arc::downgrade(&cache.insert(&user("a"), DataKey::from_bytes([1; 32])));
        let held = cache.insert(&user("b"), DataKey::from_bytes([2; 32]));
        assert!(weak.upgrade().is_some());
        std::thread::sleep(Duration::from_millis(100));
        cache.purge_expired();
        assert!(weak.upgrade().is_none());
        // A key still held by a session survives its TTL.
        assert!(
            cache
                .get(&user("b"))
                .is_some_and(|k| Arc::ptr_eq(&k, &held))
        );
    }

    #[test]
    fn any_access_expires_other_users_keys() {
        let cache = KeyCache::new(Some(Duration::from_millis(20)));
        let weak = Arc::downgrade(&cache.insert(&user("a"), DataKey::from_bytes([1; 32])));
        std::thread::sleep(Duration::from_millis(100));
        assert!(cache.get(&user("b")).is_none());
        assert!(weak.upgrade().is_none());
    }
}
