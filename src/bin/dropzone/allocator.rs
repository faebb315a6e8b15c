//! The server's allocator: jemalloc, told to give freed memory back soon.
//!
//! Each connection runs on a thread of its own (see `dropzone::ssh`), and
//! a transfer's buffers are allocated on one thread and freed on another.
//! Allocators that keep pages per thread then hold far more than is live
//! while many sessions run; jemalloc serves large buffers from arenas that
//! threads share and, with its background threads on, returns freed pages
//! to the system on a timer rather than at the next allocation. It is
//! built unprefixed, as the process's `malloc`: what libc and other C code
//! allocate for each thread (thread-local destructor lists, name service
//! lookups) then goes to jemalloc too, rather than to glibc arenas that
//! keep it after a burst of sessions. Measured with `bench/sessions.sh`
//! (docs/PERFORMANCE.md, "Memory").

use tikv_jemalloc_ctl::{Access, AsName};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long freed ("dirty") pages stay mapped before jemalloc returns them:
/// long enough to be reused between the packets of a transfer, short
/// enough that the memory of a burst of sessions is back with the system a
/// few seconds after it ends. jemalloc's default is 10 s.
const DIRTY_DECAY_MS: isize = 1000;

/// Where an operator configures jemalloc themselves (its options, read by
/// jemalloc when the process starts); their settings then stand (set and
/// not empty).
pub const OPERATOR_SETTINGS: &str = "MALLOC_CONF";

/// The variable a prefixed jemalloc read instead, which this build ignores:
/// `dropzone serve` warns when it is set, so that settings made there are
/// not silently lost.
pub const IGNORED_SETTINGS: &str = "_RJEM_MALLOC_CONF";

/// Whether the environment names allocator settings that this build does
/// not read ([`IGNORED_SETTINGS`]).
pub fn ignored_settings_given() -> bool {
    std::env::var_os(IGNORED_SETTINGS).is_some_and(|v| !v.is_empty())
}

/// Sets the decay for the arenas that exist and for those created later,
/// returns pages at once rather than keeping them lazily freed ("muzzy"),
/// and starts the background threads that do the returning; `Ok(false)`
/// without changing anything when the operator set [`OPERATOR_SETTINGS`].
/// For the server only (a short command has nothing to give back): call
/// it before the server's threads start. The error names the setting that
/// could not be made; the allocator then works with its defaults.
pub fn configure() -> Result<bool, String> {
    if std::env::var_os(OPERATOR_SETTINGS).is_some_and(|v| !v.is_empty()) {
        return Ok(false);
    }
    let set = |name: &'static [u8], value: isize| {
        name.name().write(value).map_err(|e| {
            format!(
                "{}: {e}",
                String::from_utf8_lossy(name).trim_end_matches('\0')
            )
        })
    };
    set(b"arenas.dirty_decay_ms\0", DIRTY_DECAY_MS)?;
    set(b"arena.0.dirty_decay_ms\0", DIRTY_DECAY_MS)?;
    set(b"arenas.muzzy_decay_ms\0", 0)?;
    set(b"arena.0.muzzy_decay_ms\0", 0)?;
    tikv_jemalloc_ctl::background_thread::write(true)
        .map_err(|e| format!("background_thread: {e}"))?;
    Ok(true)
}

/// What jemalloc is running with, for the server's start-up log: the
/// number of arenas, how long freed pages are kept, whether background
/// threads return them. (Settings from [`OPERATOR_SETTINGS`] show here, so
/// the line also says whether jemalloc read them.)
pub fn summary() -> String {
    let arenas: Result<u32, _> = b"opt.narenas\0".name().read();
    let decay: Result<isize, _> = b"arenas.dirty_decay_ms\0".name().read();
    let background = tikv_jemalloc_ctl::background_thread::read();
    match (arenas, decay, background) {
        (Ok(arenas), Ok(decay), Ok(background)) => format!(
            "jemalloc, {arenas} arenas, freed pages kept {decay} ms, background threads {}",
            if background { "on" } else { "off" }
        ),
        _ => "jemalloc (its settings could not be read)".to_owned(),
    }
}

/// Turns the calling thread's cache on or off
/// ([`dropzone::thread_cache`]): idle connections then hold less, and
/// jemalloc keeps less of it after a burst of sessions (measured with
/// `bench/sessions.sh`, docs/PERFORMANCE.md "Memory"). While its cache is
/// off a thread also allocates from one arena set aside for such threads
/// ([`paused_arena`]) instead of its own, and goes back to its own when
/// the cache is turned on: what hundreds of idle connections allocate then
/// shares one arena's pages instead of being spread thinly over all of
/// them. A failure leaves the thread as it was.
pub fn set_thread_cache(on: bool) {
    thread_local! {
        /// The arena this thread used before its cache was turned off.
        static OWN_ARENA: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
    }
    let arena = b"thread.arena\0".name();
    if on {
        if let Some(own) = OWN_ARENA.take() {
            let _ = arena.write(own);
        }
    } else if let (Some(paused), Ok(current)) = (paused_arena(), arena.read()) {
        // Already there if turned off before: its own arena stays recorded.
        if current != paused && arena.write(paused).is_ok() {
            OWN_ARENA.set(Some(current));
        }
    }
    let _ = b"thread.tcache.enabled\0".name().write(on);
}

/// The arena of threads whose cache is off, made the first time one is
/// needed (it takes the decay set by [`configure`]); `None` if jemalloc
/// could not make one (such threads then keep their own).
fn paused_arena() -> Option<u32> {
    static PAUSED: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *PAUSED.get_or_init(|| b"arenas.create\0".name().read().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_sets_a_short_decay_and_starts_background_threads() {
        // (Tests do not set MALLOC_CONF.)
        assert!(configure().unwrap());
        let read = |name: &[u8]| -> isize { name.name().read().unwrap() };
        assert_eq!(read(b"arenas.dirty_decay_ms\0"), DIRTY_DECAY_MS);
        assert_eq!(read(b"arena.0.dirty_decay_ms\0"), DIRTY_DECAY_MS);
        assert_eq!(read(b"arenas.muzzy_decay_ms\0"), 0);
        assert!(tikv_jemalloc_ctl::background_thread::read().unwrap());
    }

    #[test]
    fn a_thread_cache_turns_off_and_on_with_the_threads_arena() {
        let enabled = || -> bool { b"thread.tcache.enabled\0".name().read().unwrap() };
        let arena = || -> u32 { b"thread.arena\0".name().read().unwrap() };
        std::thread::spawn(move || {
            assert!(enabled());
            let own = arena();
            set_thread_cache(false);
            assert!(!enabled());
            let paused = paused_arena().expect("jemalloc made an arena");
            assert_eq!(arena(), paused);
            assert_ne!(paused, own, "a new arena, not one of the automatic ones");
            // Turned off twice (the caller normally avoids it): still back
            // to its own arena at the end.
            set_thread_cache(false);
            set_thread_cache(true);
            assert!(enabled());
            assert_eq!(arena(), own);
        })
        .join()
        .unwrap();
    }
}
