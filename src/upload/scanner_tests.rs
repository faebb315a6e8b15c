//! The scanner runner against real child processes (`/bin/sh` scripts).

use std::io::{Cursor, Read};
use std::time::{Duration, Instant};

use super::*;

const LONG: Duration = Duration::from_secs(60);

fn sh(script: &str, timeout: Duration) -> Scanner {
    Scanner::new(
        vec!["/bin/sh".into(), "-c".into(), script.into()],
        timeout,
        4,
    )
}

fn req(size: u64) -> ScanRequest<'static> {
    ScanRequest {
        user: "alice",
        path: "/in/report.pdf",
        size,
    }
}

fn scan(scanner: &Scanner, content: &[u8]) -> Verdict {
    scanner.scan(
        req(content.len() as u64),
        &mut Cursor::new(content.to_vec()),
    )
}

/// Bytes that are not all alike, so that a lost or reordered block changes
/// the hash.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 4096) as u8).collect()
}

#[test]
fn exit_zero_accepts() {
    let v = scan(&sh("cat >/dev/null; exit 0", LONG), b"clean");
    assert!(matches!(v, Verdict::Clean), "{v:?}");
}

#[test]
fn nonzero_exit_rejects_with_the_first_stderr_line() {
    let s = sh(
        "cat >/dev/null; echo >&2; echo '  Eicar-Test-Signature FOUND  ' >&2; echo second >&2; exit 1",
        LONG,
    );
    match scan(&s, b"x") {
        Verdict::Rejected(r @ Refusal::Refused { status: 1, .. }) => {
            assert_eq!(r.client_reason(), "Eicar-Test-Signature FOUND");
            assert!(!r.is_scanner_fault());
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_silent_rejection_names_the_status() {
    match scan(&sh("cat >/dev/null; exit 7", LONG), b"x") {
        Verdict::Rejected(r) => {
            assert_eq!(
                r.client_reason(),
                "rejected by the upload scanner (exit status 7)"
            )
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn the_whole_content_and_the_environment_reach_the_scanner() {
    let data = pattern(3 * 1024 * 1024 + 17);
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    // Exit codes say which check failed.
    let script = format!(
        "got=$(sha256sum | cut -d' ' -f1)
         [ \"$got\" = {want} ] || exit 3
         [ \"$DROPZONE_SIZE\" = {} ] || exit 4
         [ \"$DROPZONE_USER\" = alice ] || exit 5
         [ \"$DROPZONE_PATH\" = /in/report.pdf ] || exit 6
         [ -z \"${{HOME+x}}\" ] || exit 7
         [ -z \"${{CARGO_MANIFEST_DIR+x}}\" ] || exit 8
         exit 0",
        data.len()
    );
    let v = scan(&sh(&script, LONG), &data);
    assert!(matches!(v, Verdict::Clean), "{v:?}");
}

#[test]
fn the_environment_holds_nothing_of_the_server() {
    let script = "env | grep -v -e '^DROPZONE_USER=' -e '^DROPZONE_PATH=' -e '^DROPZONE_SIZE=' \
                  -e '^PATH=' -e '^PWD=' -e '^SHLVL=' -e '^_=' >&2 && exit 1; exit 0";
    match scan(&sh(script, LONG), b"") {
        Verdict::Clean => {}
        Verdict::Rejected(r) => panic!("unexpected variable in the scanner's environment: {r}"),
    }
}

#[test]
fn a_crash_rejects() {
    match scan(&sh("echo dying >&2; kill -SEGV $$", LONG), b"x") {
        Verdict::Rejected(r @ Refusal::Crashed { signal: 11, .. }) => {
            assert!(r.is_scanner_fault());
            assert!(r.client_reason().contains("could not be scanned"), "{r}");
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_missing_program_rejects() {
    let s = Scanner::new(vec!["/nonexistent/dropzone-scanner".into()], LONG, 1);
    match scan(&s, b"x") {
        Verdict::Rejected(r @ Refusal::Unavailable(_)) => {
            assert!(r.is_scanner_fault());
            assert!(r.client_reason().contains("unavailable"));
            assert!(r.to_string().contains("could not be started"), "{r}");
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_timeout_kills_the_scanner_and_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    // A background child that would outlive the scanner, then a hang.
    let script = format!(
        "cat >/dev/null; sleep 300 & echo $! > {}; wait",
        pidfile.display()
    );
    let started = Instant::now();
    let v = scan(&sh(&script, Duration::from_secs(1)), b"x");
    assert!(
        matches!(v, Verdict::Rejected(Refusal::TimedOut { .. })),
        "{v:?}"
    );
    // Generous: the machine is loaded, but 300 s is far away.
    assert!(started.elapsed() < Duration::from_secs(60));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = Pid::from_raw(pid).unwrap();
    // The grandchild was killed with the group; it is reaped by init, so
    // wait for it to disappear.
    let gone = (0..200).any(|_| {
        if rustix::process::test_kill_process(pid).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(gone, "the scanner's child survived the timeout");
}

#[test]
fn a_scanner_that_neither_reads_nor_exits_times_out() {
    // 8 MiB: far more than a pipe holds, so feeding blocks.
    let data = pattern(8 * 1024 * 1024);
    let started = Instant::now();
    let v = scan(&sh("exec sleep 300", Duration::from_secs(1)), &data);
    assert!(
        matches!(v, Verdict::Rejected(Refusal::TimedOut { .. })),
        "{v:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_scanner_that_stops_reading_is_judged_by_its_exit_status() {
    let data = pattern(8 * 1024 * 1024);
    let v = scan(&sh("head -c 100 >/dev/null; exit 0", LONG), &data);
    assert!(matches!(v, Verdict::Clean), "{v:?}");
    let v = scan(&sh("echo 'bad header' >&2; exit 2", LONG), &data);
    match v {
        Verdict::Rejected(r @ Refusal::Refused { status: 2, .. }) => {
            assert_eq!(r.client_reason(), "bad header")
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_content_that_cannot_be_read_rejects() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("MAC mismatch"))
        }
    }
    let v = sh("cat >/dev/null; exit 0", LONG).scan(req(10), &mut Broken);
    assert!(matches!(v, Verdict::Rejected(Refusal::Failed(_))), "{v:?}");
}

#[test]
fn concurrent_scans_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("lock");
    // Fails (exit 9) if another scan holds the lock directory.
    let script = format!(
        "mkdir {0} 2>/dev/null || exit 9; cat >/dev/null; sleep 0.2; rmdir {0}",
        lock.display()
    );
    let s = Scanner::new(vec!["/bin/sh".into(), "-c".into(), script], LONG, 1);
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..4).map(|_| scope.spawn(|| scan(&s, b"x"))).collect();
        for r in runs {
            let v = r.join().unwrap();
            assert!(matches!(v, Verdict::Clean), "{v:?}");
        }
    });
}

#[test]
fn first_line_is_bounded_and_printable() {
    assert_eq!(first_line(b""), None);
    assert_eq!(first_line(b"\n  \n"), None);
    assert_eq!(
        first_line(b"\n virus \x1b[31m\nmore"),
        Some("virus \\x1b[31m".into())
    );
    let long = "x".repeat(1000);
    let got = first_line(long.as_bytes()).unwrap();
    assert_eq!(got.chars().count(), MAX_REASON_CHARS + 3);
}

#[test]
fn the_wait_for_a_slot_counts_against_the_timeout() {
    // Two slots, one per user: alice already holds hers.
    let s = Scanner::new(
        vec!["/bin/sh".into(), "-c".into(), "cat >/dev/null".into()],
        Duration::from_millis(300),
        2,
    );
    let far = Instant::now() + LONG;
    let held = s.slots.acquire("alice", far).unwrap();
    match scan(&s, b"x") {
        Verdict::Rejected(r @ Refusal::Busy { .. }) => {
            assert!(r.client_reason().contains("busy; try again later"));
            assert!(r.is_busy() && !r.is_scanner_fault());
        }
        v => panic!("alice got a second slot: {v:?}"),
    }
    // Bob is not held up by alice's share.
    let bob = ScanRequest {
        user: "bob",
        ..req(1)
    };
    let v = s.scan(bob, &mut Cursor::new(b"y".to_vec()));
    assert!(matches!(v, Verdict::Clean), "{v:?}");
    drop(held);
    assert!(matches!(scan(&s, b"x"), Verdict::Clean));
}

#[test]
fn a_freed_slot_goes_to_the_user_served_least_recently() {
    let slots = std::sync::Arc::new(Slots::new(1, 1));
    let far = Instant::now() + LONG;
    let first = slots.acquire("alice", far).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = |user: &str| {
        lock(&slots.state)
            .users
            .get(user)
            .map_or(0, |u| u.waiting.len())
    };
    let mut threads = Vec::new();
    // Alice queues first, then bob: bob still goes first.
    for user in ["alice", "bob"] {
        let (slots, tx) = (slots.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            let slot = slots.acquire(user, far).unwrap();
            tx.send(user).unwrap();
            // Held until the test says so.
            std::thread::park();
            drop(slot);
        }));
        while waiting(user) == 0 {
            std::thread::yield_now();
        }
    }
    drop(first);
    assert_eq!(rx.recv().unwrap(), "bob");
    threads[1].thread().unpark();
    assert_eq!(rx.recv().unwrap(), "alice");
    threads[0].thread().unpark();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        lock(&slots.state).users.is_empty(),
        "idle users are forgotten"
    );
    assert_eq!(per_user_share(1), 1);
    assert_eq!(per_user_share(2), 1);
    assert_eq!(per_user_share(5), 2);
}
