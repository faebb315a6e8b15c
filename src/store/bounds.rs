//! Bounds on the work one request can make the store do.
//!
//! Every byte of a file is stored encrypted, a gap included (there are no
//! sparse files), so a request of a few bytes (a WRITE far past the end, a
//! SETSTAT size, a copy-data) can ask for gigabytes of disk writes and
//! encryption. Two bounds keep that in check:
//!
//! - a largest file size per store (`Bounds::max_size`, from `[sftp]
//!   max_file_size`), checked before any work starts;
//! - a [`StopSignal`], checked at every chunk of work that has no fixed
//!   bound (the zero records of a gap, the steps of a copy), raised when the
//!   session ends or the server stops: no work outlives the client that
//!   asked for it, and a stopping server is not held up by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::StoreError;
use super::file::MAX_FILE_SIZE;

/// Tells long store work to stop. Cheap to clone and to check (one atomic
/// load); clones share the signal.
///
/// A signal may have a parent ([`StopSignal::child`]): it then counts as
/// raised when either is, so that one server-wide signal stops the work of
/// every session while each session can still be stopped on its own.
#[derive(Clone, Debug, Default)]
pub struct StopSignal {
    own: Arc<AtomicBool>,
    parent: Option<Arc<AtomicBool>>,
}

impl StopSignal {
    /// A signal not raised yet, with no parent.
    pub fn new() -> Self {
        StopSignal::default()
    }

    /// A new signal that is also raised when this one is.
    pub fn child(&self) -> StopSignal {
        StopSignal {
            own: Arc::new(AtomicBool::new(false)),
            parent: Some(self.own.clone()),
        }
    }

    /// Raises this signal (and so its children's), for good.
    pub fn raise(&self) {
        self.own.store(true, Ordering::Release);
    }

    /// Whether this signal or its parent was raised.
    pub fn is_raised(&self) -> bool {
        self.own.load(Ordering::Acquire)
            || self
                .parent
                .as_ref()
                .is_some_and(|p| p.load(Ordering::Acquire))
    }
}

/// What bounds the work of one store call that may grow a file.
#[derive(Clone, Debug)]
pub(crate) struct Bounds {
    /// Largest plaintext size a file may grow to (at most
    /// [`MAX_FILE_SIZE`]).
    pub(crate) max_size: u64,
    /// Raised when long work must stop.
    pub(crate) stop: StopSignal,
}

impl Default for Bounds {
    /// The store's own cap, and a signal nobody raises.
    fn default() -> Self {
        Bounds {
            max_size: MAX_FILE_SIZE,
            stop: StopSignal::new(),
        }
    }
}

impl Bounds {
    /// Refuses growing a file of `size` bytes to `end` (`None`: past
    /// `u64::MAX`) if that passes the limit. A file already larger than the
    /// limit (the limit was lowered) may still be written within its size.
    pub(crate) fn check_growth(&self, size: u64, end: Option<u64>) -> Result<(), StoreError> {
        match end {
            Some(end) if end <= self.max_size || end <= size => Ok(()),
            _ => Err(StoreError::TooLarge {
                limit: self.max_size,
            }),
        }
    }

    /// Fails with [`StoreError::Interrupted`] once the stop signal is raised.
    pub(crate) fn check_stop(&self) -> Result<(), StoreError> {
        if self.stop.is_raised() {
            Err(StoreError::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// `n` bytes for people: "64 MiB", "1 TiB", "1.5 GiB", "100 bytes".
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut unit = 1024u64;
    let mut name = UNITS[0];
    for next in &UNITS[1..] {
        match unit.checked_mul(1024) {
            Some(bigger) if n >= bigger => {
                unit = bigger;
                name = next;
            }
            _ => break,
        }
    }
    if n.is_multiple_of(unit) {
        format!("{} {name}", n / unit)
    } else {
        // One decimal is enough to recognise a configured figure.
        format!("{:.1} {name}", n as f64 / unit as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1023), "1023 bytes");
        assert_eq!(human_size(1024), "1 KiB");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(1 << 40), "1 TiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn a_parent_stops_its_children_but_not_the_other_way() {
        let server = StopSignal::new();
        let (a, b) = (server.child(), server.child());
        a.raise();
        assert!(a.is_raised() && !b.is_raised() && !server.is_raised());
        server.raise();
        assert!(b.is_raised());
        assert!(a.clone().is_raised());
    }

    #[test]
    fn growth_past_the_limit_is_refused() {
        let b = Bounds {
            max_size: 100,
            stop: StopSignal::new(),
        };
        assert!(b.check_growth(0, Some(100)).is_ok());
        assert!(matches!(
            b.check_growth(0, Some(101)),
            Err(StoreError::TooLarge { limit: 100 })
        ));
        assert!(b.check_growth(0, None).is_err());
        // Within a file already past a lowered limit.
        assert!(b.check_growth(500, Some(400)).is_ok());
        assert!(b.check_growth(500, Some(501)).is_err());
    }
}
