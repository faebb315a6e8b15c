//! The one way this crate locks a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the data if a panic poisoned it.
///
/// Every mutex here guards state that each change leaves consistent (counts
/// and tables changed in single statements, caches over files whose MACs
/// catch any inconsistency): a panic in one session must not take the
/// others, or the server, down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
