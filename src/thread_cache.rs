//! Whether the calling thread keeps an allocator cache of its own.
//!
//! A per-thread cache makes small allocations cheap, but it costs memory
//! for every thread that has one, and the allocator keeps part of that
//! after the thread has ended. Every connection has a thread of its own
//! and a few blocking threads (see `ssh`), and most connections of a drop
//! box log in, list and leave: a connection's threads start without a
//! cache ([`pause`]); its own thread gets one at its first file transfer,
//! a blocking thread when file data first moves on it ([`resume`]), and
//! transfers then run as fast as before.
//!
//! The binary that chooses the allocator installs the switch
//! ([`install`]); without one (tests, other allocators) these do nothing.

use std::cell::Cell;
use std::sync::OnceLock;

/// Turns the calling thread's cache on (`true`) or off (`false`).
pub type Switch = fn(bool);

static SWITCH: OnceLock<Switch> = OnceLock::new();

thread_local! {
    /// Whether this thread's cache is on (threads start with one).
    static ON: Cell<bool> = const { Cell::new(true) };
}

/// Installs the switch; a second call changes nothing.
pub fn install(switch: Switch) {
    let _ = SWITCH.set(switch);
}

/// Turns the calling thread's cache off.
pub fn pause() {
    set(false);
}

/// Turns the calling thread's cache on again, if it was paused.
pub fn resume() {
    set(true);
}

fn set(on: bool) {
    if let Some(switch) = SWITCH.get()
        && ON.get() != on
    {
        switch(on);
        ON.set(on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static CALLS: std::cell::RefCell<Vec<bool>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn record(on: bool) {
        CALLS.with_borrow_mut(|c| c.push(on));
    }

    #[test]
    fn the_switch_is_called_only_when_the_state_changes() {
        install(record);
        // On a thread of its own: other tests may pause and resume theirs.
        let calls = std::thread::spawn(|| {
            resume();
            pause();
            pause();
            resume();
            resume();
            CALLS.with_borrow(|c| c.clone())
        })
        .join()
        .unwrap();
        assert_eq!(calls, vec![false, true]);
    }
}
