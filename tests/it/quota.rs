//! Per-user quotas with real clients: OpenSSH sftp (put, df), scp in both
//! modes, raw SFTP writes past the end, SETSTAT size and copy-data;
//! concurrent sessions of one user racing the quota; kill -9 during an
//! upload, then `dropzone quota scan` and a restart; `dropzone user set`
//! applying to a running session; `quota_files`.

use std::path::Path;

use super::harness::*;
use super::raw_sftp::*;

/// `dropzone user set alice ARGS...`.
fn set_alice(srv: &Server, args: &[&str]) {
    let mut all = vec!["user", "set", "alice"];
    all.extend_from_slice(args);
    srv.run(&mut srv.dropzone_tool(&all));
}

/// Writes `data` to a local file `name` in the scratch directory.
fn local(srv: &Server, name: &str, data: &[u8]) {
    std::fs::write(srv.local_path(name), data).unwrap();
}

/// Uploads `data` to `path` with raw SFTP, 32 KiB per write, each
/// acknowledged: the first refusal, if any (the handle is then closed).
fn put_raw(raw: &mut RawSftp, path: &str, data: &[u8]) -> Result<(), Status> {
    let h = raw.open(path, SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC)?;
    for (i, piece) in data.chunks(32 * 1024).enumerate() {
        if let Err(e) = raw.write(&h, (i * 32 * 1024) as u64, piece) {
            let _ = raw.close(&h);
            return Err(e);
        }
    }
    raw.close(&h)
}

/// The plaintext size of `path`, or `None` if there is no such file.
fn size_of(raw: &mut RawSftp, path: &str) -> Option<u64> {
    match raw.stat(path) {
        Ok(attrs) => attrs.size,
        Err(e) if e.code == FX_NO_SUCH_FILE => None,
        Err(e) => panic!("stat {path}: {e:?}"),
    }
}

/// The figures of OpenSSH sftp's `df` (`-i`: inodes): the numbers of the
/// line under its header.
fn df(srv: &Server, flag: &str) -> Vec<u64> {
    let mut cmd = srv.sftp("alice", &format!("df {flag}\n"));
    let out = srv.run(&mut cmd);
    let text = stdout(&out);
    let mut lines = text.lines();
    lines
        .find(|l| l.contains("Size") || l.contains("Inodes"))
        .unwrap_or_else(|| panic!("no df header in:\n{text}"));
    let figures: Vec<u64> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches('%').parse().ok())
        .collect();
    assert!(figures.len() >= 3, "df figures in:\n{text}");
    figures
}

/// The line of `dropzone user list` for alice.
fn alice_listed(srv: &Server) -> String {
    let list = stdout(&srv.run(&mut srv.dropzone_tool(&["user", "list"])));
    list.lines()
        .find(|l| l.starts_with("alice\t"))
        .unwrap_or_else(|| panic!("alice not listed:\n{list}"))
        .to_owned()
}

/// `dropzone quota scan --user alice`, once no server holds alice (her
/// sessions have ended): its output.
fn scan_alice(srv: &Server) -> String {
    srv.wait_for(
        "alice's sessions to end and her usage to be rescanned",
        || {
            let out = srv.run_any(&mut srv.dropzone_tool(&["quota", "scan", "--user", "alice"]));
            out.status.success().then(|| stdout(&out))
        },
    )
}

fn assert_stderr_says_quota(srv: &Server, cmd: &std::process::Command, out: &std::process::Output) {
    srv.check(
        stderr(out).contains("quota exceeded"),
        "the client is told \"quota exceeded\"",
        cmd,
        out,
    );
}

#[test]
fn sftp_put_past_the_quota_fails_keeps_the_previous_version_and_df_shows_the_quota() {
    let srv = Server::start_with(&[("alice", Some(ALICE_PASSWORD))]);
    set_alice(&srv, &["--quota-bytes", "1000000"]);
    let (a600, b600, a900, big) = (
        random_bytes(600_000, 1),
        random_bytes(600_000, 2),
        random_bytes(900_000, 3),
        random_bytes(1_100_000, 4),
    );
    local(&srv, "a600", &a600);
    local(&srv, "b600", &b600);
    local(&srv, "a900", &a900);
    local(&srv, "big", &big);
    srv.run(&mut srv.sftp("alice", "put a600 a\n"));

    // A second file would pass the quota: refused, nothing stored.
    let mut cmd = srv.sftp("alice", "put b600 b\n");
    let out = srv.run_fail(&mut cmd);
    assert_stderr_says_quota(&srv, &cmd, &out);
    let mut raw = srv.raw_sftp("alice");
    assert_eq!(
        size_of(&mut raw, "/b"),
        None,
        "a refused upload leaves no file"
    );

    // Replacing a file counts only what it adds.
    srv.run(&mut srv.sftp("alice", "put a900 a\n"));
    let mut cmd = srv.sftp("alice", "put big a\n");
    let out = srv.run_fail(&mut cmd);
    assert_stderr_says_quota(&srv, &cmd, &out);
    srv.run(&mut srv.sftp("alice", "get a a.back\n"));
    assert_same_file(&srv.local_path("a.back"), &srv.local_path("a900"));

    // df: the quota is the size, the usage the used part (KiB).
    let figures = df(&srv, "");
    assert_eq!(
        figures[..3],
        [1_000_000 / 1024, 900_000 / 1024, 100_000 / 1024]
    );

    let line = alice_listed(&srv);
    assert!(line.contains("quota 976.6 KiB"), "{line}");
    assert!(line.contains("(900000 bytes), 1 files"), "{line}");
    drop(raw);
    let scanned = scan_alice(&srv);
    assert!(scanned.contains("(900000 bytes), 1 files"), "{scanned}");
}

#[test]
fn scp_in_both_modes_is_refused_past_the_quota() {
    let srv = Server::start_with(&[("alice", Some(ALICE_PASSWORD))]);
    set_alice(&srv, &["--quota-bytes", "100000"]);
    local(&srv, "big", &random_bytes(150_000, 5));
    local(&srv, "small", &random_bytes(60_000, 6));
    for (mode, name) in [(&[][..], "sftp-mode"), (&["-O"][..], "legacy")] {
        let mut cmd = srv.scp("alice", mode, "big", srv.remote("alice", name));
        let out = srv.run_fail(&mut cmd);
        assert_stderr_says_quota(&srv, &cmd, &out);
    }
    let mut raw = srv.raw_sftp("alice");
    assert_eq!(size_of(&mut raw, "/sftp-mode"), None);
    assert_eq!(size_of(&mut raw, "/legacy"), None);
    // Within the quota a file goes; a second one does not fit.
    srv.run(&mut srv.scp("alice", &["-O"], "small", srv.remote("alice", "one")));
    let mut cmd = srv.scp("alice", &[], "small", srv.remote("alice", "two"));
    let out = srv.run_fail(&mut cmd);
    assert_stderr_says_quota(&srv, &cmd, &out);
    assert_eq!(size_of(&mut raw, "/one"), Some(60_000));
    assert_eq!(size_of(&mut raw, "/two"), None);
}

#[test]
fn raw_writes_past_the_end_setstat_and_copy_data_count_against_the_quota() {
    let srv = Server::start_with(&[("alice", Some(ALICE_PASSWORD))]);
    set_alice(&srv, &["--quota-bytes", "100000"]);
    let mut raw = srv.raw_sftp("alice");
    put_raw(&mut raw, "/f", &random_bytes(10_000, 7)).unwrap();
    let h = raw.open("/f", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();
    // One byte far past the end would store 200 KB of zeros.
    let refused = raw.write(&h, 200_000, b"x").unwrap_err();
    assert_eq!(refused.code, FX_FAILURE, "{refused:?}");
    assert!(refused.message.contains("quota exceeded"), "{refused:?}");
    assert_eq!(size_of(&mut raw, "/f"), Some(10_000), "nothing was written");
    // Up to the quota exactly is fine; a byte more is not.
    raw.write(&h, 99_999, b"y").unwrap();
    assert_eq!(raw.write(&h, 100_000, b"z").unwrap_err().code, FX_FAILURE);
    // Writes within the file need no room.
    raw.write(&h, 0, &[9; 5000]).unwrap();
    raw.close(&h).unwrap();
    let refused = raw.setstat_size("/f", 100_001).unwrap_err();
    assert!(refused.message.contains("quota exceeded"), "{refused:?}");
    raw.setstat_size("/f", 50_000).unwrap();

    // copy-data of f's 50 KB onto the end of g: 40 KB are left, so it is
    // refused before anything is copied.
    put_raw(&mut raw, "/g", &random_bytes(10_000, 8)).unwrap();
    let src = raw.open("/f", SSH_FXF_READ).unwrap();
    let dst = raw.open("/g", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();
    let payload = Req::new(0)
        .string(&src)
        .u64(0)
        .u64(0)
        .string(&dst)
        .u64(10_000)
        .into_fields();
    let refused = raw.extended("copy-data", &payload).ok().unwrap_err();
    assert_eq!(refused.code, FX_FAILURE, "{refused:?}");
    assert!(refused.message.contains("quota exceeded"), "{refused:?}");
    raw.close(&src).unwrap();
    raw.close(&dst).unwrap();
    assert_eq!(size_of(&mut raw, "/g"), Some(10_000), "nothing was copied");
    drop(raw);
    let scanned = scan_alice(&srv);
    assert!(scanned.contains("(60000 bytes), 2 files"), "{scanned}");
}

#[test]
fn concurrent_uploads_of_one_user_never_store_more_than_the_quota() {
    const QUOTA: u64 = 1_000_000;
    const EACH: usize = 300_000;
    const SESSIONS: usize = 6;
    let srv = Server::start_with(&[("alice", Some(ALICE_PASSWORD))]);
    set_alice(&srv, &["--quota-bytes", &QUOTA.to_string()]);
    for i in 0..SESSIONS {
        local(&srv, &format!("f{i}"), &random_bytes(EACH, 10 + i as u64));
    }
    // Six sessions at once, each putting its own 300 KB file: at most
    // three fit.
    let outcomes: Vec<bool> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let srv = &srv;
                s.spawn(move || {
                    let mut cmd = srv.sftp("alice", &format!("put f{i} f{i}\n"));
                    srv.run_any(&mut cmd).status.success()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut raw = srv.raw_sftp("alice");
    let mut stored = 0;
    for (i, ok) in outcomes.iter().enumerate() {
        let size = size_of(&mut raw, &format!("/f{i}"));
        // Each file is whole or absent, as its client was told.
        assert_eq!(size, ok.then_some(EACH as u64), "f{i}: {outcomes:?}");
        stored += size.unwrap_or(0);
    }
    assert!(stored <= QUOTA, "{stored} bytes stored: {outcomes:?}");
    // Six whole files cannot fit. (All six may fail: each can run out of
    // room while the others hold reservations; none can pass the quota.)
    assert!(outcomes.iter().any(|ok| !ok), "{outcomes:?}");
    drop(raw);
    let scanned = scan_alice(&srv);
    assert!(scanned.contains(&format!("({stored} bytes)")), "{scanned}");
}

/// The record the server keeps for alice.
fn alice_record(srv: &Server) -> std::path::PathBuf {
    srv.path("keks/alice.usage")
}

#[test]
fn a_crash_during_an_upload_is_set_right_by_quota_scan_and_by_a_restart() {
    let mut srv = Server::start_with(&[("alice", Some(ALICE_PASSWORD))]);
    set_alice(&srv, &["--quota-bytes", "10000000", "--quota-files", "10"]);
    let mut raw = srv.raw_sftp("alice");
    put_raw(&mut raw, "/keep", &random_bytes(2_000_000, 20)).unwrap();
    // An upload under way when the server dies: its name is held by an
    // empty file (the placeholder), the data is staged.
    let h = raw
        .open("/partial", SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC)
        .unwrap();
    for i in 0..3u64 {
        raw.write(&h, i * 32768, &[7; 32768]).unwrap();
    }
    srv.kill9();
    drop(raw);

    let line = alice_listed(&srv);
    assert!(line.contains("stale"), "a record left in use: {line}");
    let scanned = scan_alice(&srv);
    assert!(scanned.contains("(2000000 bytes), 2 files"), "{scanned}");
    let line = alice_listed(&srv);
    assert!(line.contains("(2000000 bytes), 2 files"), "{line}");
    assert!(!line.contains("stale") && !line.contains("live"), "{line}");

    // A record left in use is never trusted: a restart rescans it at the
    // login, whatever figures it holds.
    std::fs::write(
        alice_record(&srv),
        "bytes = 1\nfiles = 9\nstate = \"in-use\"\n",
    )
    .unwrap();
    srv.restart();
    assert_eq!(df(&srv, "")[1], 2_000_000 / 1024);
    let inodes = df(&srv, "-i");
    assert_eq!(inodes[..2], [10, 2], "quota_files 10, 2 used");
    // And a clean record is what the next start goes by.
    let scanned = scan_alice(&srv);
    assert!(scanned.contains("(2000000 bytes), 2 files"), "{scanned}");
    assert_record_clean(&alice_record(&srv));
}

fn assert_record_clean(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("state = \"clean\""), "{text}");
}

#[test]
fn user_set_applies_to_a_running_session_at_its_next_request() {
    let srv = Server::start_with(&[("alice", Some(ALICE_PASSWORD))]);
    let mut raw = srv.raw_sftp("alice");
    put_raw(&mut raw, "/f", &random_bytes(50_000, 30)).unwrap();
    let h = raw.open("/f", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();
    raw.write(&h, 50_000, &[1; 5000]).unwrap();
    set_alice(&srv, &["--quota-bytes", "60000"]);
    let refused = raw.write(&h, 55_000, &[2; 10_000]).unwrap_err();
    assert!(refused.message.contains("quota exceeded"), "{refused:?}");
    raw.write(&h, 55_000, &[2; 5000]).unwrap();
    set_alice(&srv, &["--quota-bytes", "none"]);
    raw.write(&h, 60_000, &[3; 10_000]).unwrap();
    raw.close(&h).unwrap();
    assert_eq!(size_of(&mut raw, "/f"), Some(70_000));
    let line = alice_listed(&srv);
    assert!(line.contains("no quota"), "{line}");
}

#[test]
fn the_file_quota_counts_regular_files_only() {
    let srv = Server::start_with(&[("alice", Some(ALICE_PASSWORD))]);
    set_alice(&srv, &["--quota-files", "2"]);
    local(&srv, "x", b"some data");
    srv.run(&mut srv.sftp("alice", "put x x1\nput x x2\nmkdir d\nsymlink x1 l\n"));
    let mut cmd = srv.sftp("alice", "put x x3\n");
    let out = srv.run_fail(&mut cmd);
    assert_stderr_says_quota(&srv, &cmd, &out);
    let mut raw = srv.raw_sftp("alice");
    assert_eq!(size_of(&mut raw, "/x3"), None);
    let refused = raw
        .open("/d/x4", SSH_FXF_WRITE | SSH_FXF_CREAT)
        .unwrap_err();
    assert_eq!(refused.code, FX_FAILURE, "{refused:?}");
    assert!(refused.message.contains("2 file(s)"), "{refused:?}");
    // Replacing a file is no new file; a removed one makes room.
    srv.run(&mut srv.sftp("alice", "put x x1\n"));
    assert_eq!(df(&srv, "-i")[..2], [2, 2]);
    srv.run(&mut srv.sftp("alice", "rm x2\nput x x3\n"));
    assert_eq!(size_of(&mut raw, "/x3"), Some(9));
}

#[test]
fn a_clean_stop_saves_the_usage_and_the_next_start_trusts_it() {
    let mut srv = Server::start_with(&[("alice", Some(ALICE_PASSWORD))]);
    set_alice(&srv, &["--quota-bytes", "1000000"]);
    // A session still open when the server is told to stop.
    let mut raw = srv.raw_sftp("alice");
    put_raw(&mut raw, "/x", &random_bytes(300_000, 40)).unwrap();
    srv.signal(rustix::process::Signal::TERM);
    let started = std::time::Instant::now();
    while srv.is_alive() && started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!srv.is_alive(), "the server still runs after SIGTERM");
    drop(raw);
    let record = alice_record(&srv);
    assert_record_clean(&record);
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains("bytes = 300000"), "{text}");
    // A clean record is what the next start goes by: the tree is not
    // walked (the figures below, planted, are not the tree's).
    std::fs::write(&record, "bytes = 500000\nfiles = 1\nstate = \"clean\"\n").unwrap();
    srv.restart();
    assert_eq!(df(&srv, "")[1], 500_000 / 1024);
    let log = srv.log();
    let since_restart = log
        .split("--- restarted by the test ---")
        .nth(1)
        .unwrap_or("");
    assert!(!since_restart.contains("usage recomputed"), "{log}");
}
