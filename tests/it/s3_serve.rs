//! `[storage] backend = "s3"` end to end: a real `dropzone serve` on a
//! real SeaweedFS, driven by OpenSSH sftp (batch mode) and scp (SFTP mode
//! and `scp -O`), every download compared with its source. Round trips at
//! record and part edges (and what lands in the bucket), resume, what S3
//! refuses and how the client hears it, renames and a listing of 1,000
//! files, SeaweedFS going away mid-session and coming back, and a node
//! killed mid-upload whose leftover multipart upload the next start sweeps.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dropzone::aws::s3::{Condition, S3Client};
use dropzone::store::format::CHUNK_SIZE;

use super::harness::*;
use super::raw_sftp::*;
use super::seaweed::SeaweedFs;

/// Parts of 5 MiB (`part_size_mib = 5`), so that part edges come early.
const PART: usize = 5 << 20;

/// The object prefix every test here uses.
const PREFIX: &str = "team/dz";

/// A dropzone serving `alice` from `weed` under [`PREFIX`], with 5 MiB
/// parts and `extra` further `[storage.s3]` keys.
fn serve(weed: &SeaweedFs, extra: &str) -> Server {
    Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            extra_config: format!("{}part_size_mib = 5\n{extra}", weed.storage_config(PREFIX)),
            env: SeaweedFs::env(),
            ..Default::default()
        },
    )
}

/// The key of alice's file `name`.
fn key_of(name: &str) -> String {
    format!("{PREFIX}/data/alice/{name}")
}

/// Every key in the bucket under `prefix` (all pages).
fn keys_under(client: &S3Client, prefix: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = client.list(prefix, None, token.as_deref(), 1000).unwrap();
        out.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
        match page.next {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

/// The incomplete multipart uploads under alice's tree.
fn pending(client: &S3Client) -> Vec<String> {
    client
        .list_multipart_uploads(&format!("{PREFIX}/data/"))
        .unwrap()
        .into_iter()
        .map(|u| u.key)
        .collect()
}

/// Writes `data` to the scratch file `name` and returns its path.
fn local(srv: &Server, name: &str, data: &[u8]) -> PathBuf {
    let path = srv.local_path(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Asserts that the stored object of alice's `name` holds no 32-byte
/// window of `plain` (at every 509th offset: odd, so windows straddle
/// records and blocks) and is bigger than it (header and MACs).
#[track_caller]
fn assert_encrypted(client: &S3Client, name: &str, plain: &[u8]) {
    let (stored, _) = client
        .get(&key_of(name))
        .unwrap_or_else(|e| panic!("object {} of {name}: {e}", key_of(name)));
    assert!(
        stored.len() > plain.len(),
        "{name}: {} stored bytes for {} plaintext bytes",
        stored.len(),
        plain.len()
    );
    let starts: Vec<usize> = (0..plain.len()).step_by(509).collect();
    if let Some((p, s)) = find_plaintext_window(plain, &starts, &stored) {
        panic!("{name}: plaintext at {p} is stored in the clear at {s}");
    }
}

#[test]
fn sftp_and_scp_round_trips_at_record_and_part_edges_store_only_ciphertext() {
    let weed = SeaweedFs::start();
    let srv = serve(&weed, "");
    let client = weed.client();
    let seed = fresh_seed();
    // Around a record (64 KiB of plaintext), around the 5 MiB part (one
    // PUT below part + slack), and just over the first part sent.
    let sizes = [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        2 * CHUNK_SIZE + 1,
        PART,
        PART + (1 << 20) + 1,
    ];
    let mut put = String::new();
    let mut get = String::new();
    let mut files = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("s{n}");
        let data = random_bytes(n, seed + i as u64);
        local(&srv, &name, &data);
        put.push_str(&format!("put {name}\n"));
        get.push_str(&format!("get {name} back-{name}\n"));
        files.push((name, data));
    }
    srv.run(&mut srv.sftp("alice", &put));
    srv.run(&mut srv.sftp("alice", &get));
    for (name, data) in &files {
        assert_same_file(
            &srv.local_path(name),
            &srv.local_path(&format!("back-{name}")),
        );
        if !data.is_empty() {
            assert_encrypted(&client, name, data);
        }
    }

    // scp in both modes: up under another name, down again.
    let edge = |n: usize| {
        files
            .iter()
            .find(|(name, _)| *name == format!("s{n}"))
            .unwrap()
    };
    for (mode, extra) in [("sftp", &[][..]), ("legacy", &["-O"][..])] {
        for n in [0, CHUNK_SIZE + 1, PART + (1 << 20) + 1] {
            let (name, data) = edge(n);
            let remote = format!("scp-{mode}-{name}");
            srv.run(&mut srv.scp("alice", extra, name, srv.remote("alice", &remote)));
            let back = format!("back-{remote}");
            srv.run(&mut srv.scp("alice", extra, srv.remote("alice", &remote), &back));
            assert_same_file(&srv.local_path(name), &srv.local_path(&back));
            if !data.is_empty() {
                assert_encrypted(&client, &remote, data);
            }
        }
    }

    // Replacing a stored file of more than one part: sftp opens it with
    // TRUNC and scp -O's sink replaces it whole, both a new upload. (scp's
    // SFTP mode writes in place: see the ignored test below.)
    let over = PART + (1 << 20) + 1;
    for (i, extra) in [None, Some(&["-O"][..])].into_iter().enumerate() {
        let name = format!("new-{i}");
        let data = random_bytes(over - i, seed + 100 + i as u64);
        local(&srv, &name, &data);
        let target = format!("s{over}");
        let mut cmd = match extra {
            None => srv.sftp("alice", &format!("put {name} {target}\n")),
            Some(extra) => srv.scp("alice", extra, &name, srv.remote("alice", &target)),
        };
        srv.run(&mut cmd);
        let back = format!("back-{name}");
        srv.run(&mut srv.sftp("alice", &format!("get {target} {back}\n")));
        assert!(
            read(&srv.local_path(&back)) == data,
            "{cmd:?} replaced {target}"
        );
    }

    // Everything is under PREFIX/data/alice/ (and her wrapped key under
    // PREFIX/keks/); nothing else is in the bucket, no upload is left.
    let all = keys_under(&client, "");
    for (name, _) in &files {
        assert!(
            all.iter().any(|(k, _)| *k == key_of(name)),
            "{} not in the bucket: {all:?}",
            key_of(name)
        );
    }
    let strays: Vec<&(String, u64)> = all
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(&format!("{PREFIX}/data/alice/"))
                && !k.starts_with(&format!("{PREFIX}/keks/"))
        })
        .collect();
    assert!(
        strays.is_empty(),
        "objects outside PREFIX/data and PREFIX/keks: {strays:?}"
    );
    assert_eq!(
        pending(&client),
        Vec::<String>::new(),
        "multipart uploads left"
    );
}

/// OpenSSH's scp in SFTP mode (the default since 9.0) replaces a file as
/// legacy scp did: it opens it without TRUNC, writes from offset 0, then
/// sets the size. On S3 the store turns such an open into a staged
/// replacement, so scp replaces a stored file of more than one part (5 MiB
/// here) with a smaller and with a larger one.
#[test]
fn scp_in_sftp_mode_replaces_a_stored_file_of_more_than_one_part() {
    let weed = SeaweedFs::start();
    let srv = serve(&weed, "");
    let seed = fresh_seed();
    let old = random_bytes(PART + (2 << 20), seed);
    let new = random_bytes(PART + (1 << 20), seed + 1);
    local(&srv, "old", &old);
    local(&srv, "new", &new);
    srv.run(&mut srv.scp("alice", &[], "old", srv.remote("alice", "f")));
    srv.run(&mut srv.scp("alice", &[], "new", srv.remote("alice", "f")));
    srv.run(&mut srv.scp("alice", &[], srv.remote("alice", "f"), "back"));
    assert_same_file(&srv.local_path("new"), &srv.local_path("back"));
    srv.run(&mut srv.scp("alice", &[], "old", srv.remote("alice", "f")));
    srv.run(&mut srv.scp("alice", &[], srv.remote("alice", "f"), "back2"));
    assert_same_file(&srv.local_path("old"), &srv.local_path("back2"));
}

#[test]
fn reput_and_put_a_resume_a_partial_upload_and_a_write_below_the_end_is_refused() {
    let weed = SeaweedFs::start();
    let srv = serve(&weed, "");
    let client = weed.client();
    let seed = fresh_seed();
    let full = random_bytes(9 << 20, seed);
    local(&srv, "full", &full);
    // A prefix under one part (the rewrite fetches it) and one over it
    // (the rewrite copies its records server-side), neither on a record
    // edge.
    local(&srv, "short", &full[..(3 << 20) + 17]);
    local(&srv, "long", &full[..PART + (1 << 20) + 12_345]);
    srv.run(&mut srv.sftp("alice", "put short a\nput long b\n"));
    srv.run(&mut srv.sftp(
        "alice",
        "reput full a\nput -a full b\nget a a-back\nget b b-back\n",
    ));
    for name in ["a-back", "b-back"] {
        assert_same_file(&srv.local_path("full"), &srv.local_path(name));
    }
    // Downloads resume too (ranged reads from an offset inside a record).
    local(&srv, "partial", &full[..1_234_567]);
    srv.run(&mut srv.sftp("alice", "reget b partial\n"));
    assert_same_file(&srv.local_path("full"), &srv.local_path("partial"));
    assert_encrypted(&client, "b", &full);
    assert_eq!(
        pending(&client),
        Vec::<String>::new(),
        "multipart uploads left"
    );

    // A write below the end of a stored file (here: at 0 and in its
    // middle) is refused as unsupported, with a message saying why, and
    // changes nothing; writing at its end still works.
    let before = client.head(&key_of("b")).unwrap();
    let mut raw = srv.raw_sftp("alice");
    let h = raw.open("/b", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();
    for offset in [0, 4 << 20] {
        let e = raw.write(&h, offset, b"overwrite").unwrap_err();
        assert_eq!(e.code, FX_OP_UNSUPPORTED, "write at {offset}: {e:?}");
        assert!(
            e.message.contains("S3") && e.message.contains("below"),
            "the refusal says why: {e:?}"
        );
    }
    raw.close(&h).unwrap();
    assert_eq!(
        client.head(&key_of("b")).unwrap().etag,
        before.etag,
        "b was not rewritten"
    );
    srv.run(&mut srv.sftp("alice", "get b b-again\n"));
    assert_same_file(&srv.local_path("full"), &srv.local_path("b-again"));

    // Opened write-only without truncation (as scp does), b is replaced
    // rather than changed: writes from its start are taken, a gap is not,
    // and a replacement shorter than b whose size was never set is
    // refused at close, b kept.
    let h = raw.open("/b", SSH_FXF_WRITE).unwrap();
    raw.write(&h, 0, b"overwrite").unwrap();
    let e = raw.write(&h, 4 << 20, b"gap").unwrap_err();
    assert_eq!(e.code, FX_OP_UNSUPPORTED, "a gap: {e:?}");
    assert!(e.message.contains("from its start"), "{e:?}");
    let e = raw.close(&h).unwrap_err();
    assert_eq!(e.code, FX_OP_UNSUPPORTED, "a partial replacement: {e:?}");
    assert!(e.message.contains("stored version is kept"), "{e:?}");
    assert_eq!(
        client.head(&key_of("b")).unwrap().etag,
        before.etag,
        "b was not replaced"
    );
    // Opened and closed without a write: nothing changes.
    let h = raw.open("/b", SSH_FXF_WRITE).unwrap();
    raw.close(&h).unwrap();
    assert_eq!(client.head(&key_of("b")).unwrap().etag, before.etag);

    let h = raw.open("/b", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();
    raw.write(&h, full.len() as u64, b"!").unwrap();
    raw.close(&h).unwrap();
    let mut more = full.clone();
    more.push(b'!');
    local(&srv, "more", &more);
    srv.run(&mut srv.sftp("alice", "get b b-more\n"));
    assert_same_file(&srv.local_path("more"), &srv.local_path("b-more"));
    assert_eq!(
        pending(&client),
        Vec::<String>::new(),
        "multipart uploads left"
    );
}

/// The size and (last) name of each entry of OpenSSH sftp's `ls -l`.
fn ls_l(srv: &Server, dir: &str) -> Vec<(u64, String)> {
    let out = srv.run(&mut srv.sftp("alice", &format!("ls -l {dir}\n")));
    sftp_output_lines(&out)
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sftp prints the path as given: keep the last component.
            let name = f.get(8..)?.join(" ");
            let base = name.rsplit('/').next().unwrap_or_default().to_owned();
            Some((f[4].parse().unwrap(), base))
        })
        .collect()
}

#[test]
fn renames_of_files_and_empty_directories_and_ls_of_a_thousand_files() {
    let weed = SeaweedFs::start();
    let srv = serve(&weed, "");
    let client = weed.client();
    let data = random_bytes(200_000, fresh_seed());
    local(&srv, "f", &data);
    srv.run(&mut srv.sftp(
        "alice",
        "put f a\nrename a b\nmkdir d\nrename d e\nmkdir full\nput f full/x\n",
    ));
    let names: Vec<String> = ls_l(&srv, "/").into_iter().map(|(_, n)| n).collect();
    assert!(
        names.contains(&"b".into())
            && names.contains(&"e".into())
            && !names.contains(&"a".into())
            && !names.contains(&"d".into()),
        "after the renames: {names:?}"
    );
    srv.run(&mut srv.sftp("alice", "get b b-back\n"));
    assert_same_file(&srv.local_path("f"), &srv.local_path("b-back"));
    assert!(
        client.head(&key_of("a")).is_err(),
        "the old name's object is gone"
    );
    // Onto an existing file (OpenSSH's rename is posix-rename): replaced.
    local(&srv, "g", b"the file renamed over");
    srv.run(&mut srv.sftp("alice", "put g c\nrename b c\nget c c-back\n"));
    assert_same_file(&srv.local_path("f"), &srv.local_path("c-back"));
    srv.run(&mut srv.sftp("alice", "put f b\n"));

    // Refused: OpenSSH shows the status; the server's message says why.
    for (batch, what) in [
        ("rename full full2\n", "a non-empty directory"),
        ("ln -s b link\n", "a symlink"),
    ] {
        let mut cmd = srv.sftp("alice", batch);
        let out = srv.run_fail(&mut cmd);
        srv.check(
            stderr(&out).to_lowercase().contains("unsupported"),
            &format!("sftp says renaming {what} is unsupported"),
            &cmd,
            &out,
        );
    }
    let mut raw = srv.raw_sftp("alice");
    let e = raw.rename("/full", "/full2").unwrap_err();
    assert_eq!(e.code, FX_OP_UNSUPPORTED, "{e:?}");
    assert!(e.message.contains("not empty"), "{e:?}");
    let e = raw.symlink("/b", "/link").unwrap_err();
    assert_eq!(e.code, FX_OP_UNSUPPORTED, "{e:?}");
    assert!(e.message.contains("symbolic links"), "{e:?}");
    assert_eq!(raw.stat("/full/x").unwrap().size, Some(data.len() as u64));
    assert!(raw.stat("/full2").is_err() && raw.lstat("/link").is_err());
    drop(raw);

    // 1,000 files in one directory, made by copying four uploaded files
    // server-side (object copies list with the size of their source).
    let sizes = [0usize, 1, CHUNK_SIZE + 1, 100_000];
    let mut batch = String::from("mkdir src\nmkdir many\n");
    for (i, n) in sizes.iter().enumerate() {
        local(&srv, &format!("src{i}"), &random_bytes(*n, i as u64));
        batch.push_str(&format!("put src{i} src/{i}\n"));
    }
    srv.run(&mut srv.sftp("alice", &batch));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                for i in (t..1000).step_by(8) {
                    let from = key_of(&format!("src/{}", i % sizes.len()));
                    let to = key_of(&format!("many/f{i:04}"));
                    client
                        .copy(&from, &to, None, None, Condition::Always)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let listed = ls_l(&srv, "many");
    assert_eq!(
        listed.len(),
        1000,
        "ls -l shows every file: {:?}",
        &listed[..listed.len().min(5)]
    );
    for (size, name) in &listed {
        let i: usize = name
            .strip_prefix('f')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected entry {name}"));
        assert_eq!(*size, sizes[i % sizes.len()] as u64, "size of {name}");
    }
    let mut names: Vec<&String> = listed.iter().map(|(_, n)| n).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 1000, "no name twice");
}

/// An OpenSSH sftp session fed a command at a time (`sftp -b -` on a
/// pipe): a step ends when the `!touch` after its commands has run.
struct LiveSftp {
    child: Child,
    stdin: ChildStdin,
    stderr: Arc<Mutex<String>>,
    marks: tempfile::TempDir,
    steps: usize,
}

impl LiveSftp {
    /// A session as `user` with extra sftp `options` (`-l` to throttle).
    fn start(srv: &Server, user: &str, options: &[&str]) -> LiveSftp {
        let mut cmd = Command::new("sftp");
        cmd.current_dir(srv.local())
            .env_remove("SSH_AUTH_SOCK")
            .args(srv.key_opts(user))
            .args(options)
            .args(["-P", &srv.port.to_string(), "-b", "-"])
            .arg(srv.dest(user))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting sftp");
        let stdin = child.stdin.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut err, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        LiveSftp {
            child,
            stdin,
            stderr,
            marks: tempfile::tempdir().unwrap(),
            steps: 0,
        }
    }

    /// Sends `commands` (prefix one with `-` to go on if it fails) and
    /// returns at once; [`LiveSftp::wait`] waits for them.
    fn send(&mut self, commands: &str) {
        self.steps += 1;
        let mark = self.mark();
        writeln!(self.stdin, "{commands}!touch {}", mark.display()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn mark(&self) -> PathBuf {
        self.marks.path().join(format!("step{}", self.steps))
    }

    /// Waits, at most `limit`, until the commands last sent are done.
    #[track_caller]
    fn wait(&mut self, limit: Duration) {
        let started = Instant::now();
        while !self.mark().exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sftp exited ({status}):\n{}", self.stderr());
            }
            assert!(
                started.elapsed() < limit,
                "step {} still running after {limit:?}:\n{}",
                self.steps,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`LiveSftp::send`] then [`LiveSftp::wait`]: how long they took.
    #[track_caller]
    fn step(&mut self, commands: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        self.send(commands);
        self.wait(limit);
        started.elapsed()
    }

    /// What sftp printed on stderr since `from` (a previous length).
    fn stderr_since(&self, from: usize) -> String {
        self.stderr()[from..].to_owned()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for LiveSftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `path`'s bytes.
fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The process group of the `weed` serving S3 on `port` (the harness
/// starts it in a group of its own).
fn weed_group(port: u16) -> rustix::process::Pid {
    let flag = format!("-s3.port={port}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !cmdline.split(|&b| b == 0).any(|arg| arg == flag.as_bytes()) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp ...: fields after the last ')'.
        let pgrp = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse().ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pgrp) = pgrp {
            return pgrp;
        }
    }
    panic!("no weed process with {flag}");
}

/// Sends `signal` to every process of the `weed` on `port`.
fn signal_weed(port: u16, signal: rustix::process::Signal) {
    rustix::process::kill_process_group(weed_group(port), signal).unwrap();
}

/// Requests with SeaweedFS down fail within this (their S3 calls are
/// refused at once and retried for 1.5 s).
const DOWN_LIMIT: Duration = Duration::from_secs(20);

/// Requests with SeaweedFS frozen fail within this: a few S3 calls, each
/// given up after `request_timeout_secs` (5 s here).
const FROZEN_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn seaweedfs_down_mid_session_fails_requests_promptly_and_they_work_once_it_is_back() {
    let mut weed = SeaweedFs::start();
    let mut srv = serve(
        &weed,
        "connect_timeout_secs = 2\nrequest_timeout_secs = 5\n",
    );
    let client = weed.client();
    let seed = fresh_seed();
    let keep = random_bytes(1 << 20, seed);
    let new = random_bytes(300_000, seed + 1);
    let big = random_bytes(24 << 20, seed + 2);
    local(&srv, "keep", &keep);
    local(&srv, "new", &new);
    local(&srv, "big", &big);
    // Throttled to about 5 MB/s, so that a big put is still in flight
    // when SeaweedFS goes.
    let mut live = LiveSftp::start(&srv, "alice", &["-l", "40000"]);
    live.step("put keep\nget keep k1\n", Duration::from_secs(30));
    assert_eq!(read(&srv.local_path("k1")), keep);
    // A raw session beside it, for the status codes themselves.
    let mut raw = srv.raw_sftp("alice");

    // Down in the middle of a put (its multipart upload begun): the put
    // fails and shows it, then a get and a put fail too, each promptly;
    // the session goes on.
    let mark = live.stderr().len();
    live.send("-put big\n");
    srv.wait_for("big's multipart upload", || {
        (!pending(&client).is_empty()).then_some(())
    });
    weed.stop();
    live.wait(DOWN_LIMIT);
    let said = live.stderr_since(mark);
    // Reported by the write that failed, or (parts being sent in the
    // background) by the close.
    assert!(
        said.contains("big") || said.contains("close remote: Failure"),
        "the failed put is reported:\n{said}"
    );
    eprintln!("SeaweedFS stopped during a put:\n{said}");
    // OpenSSH says "not found" for any failed stat of a get; the server
    // says failure: the file may well exist.
    let e = raw.stat("/keep").unwrap_err();
    assert_eq!(e.code, FX_FAILURE, "stat with SeaweedFS down: {e:?}");
    let mark = live.stderr().len();
    let took = live.step("-get keep k2\n-put new\n", DOWN_LIMIT);
    let said = live.stderr_since(mark);
    assert!(
        said.contains("keep") && said.contains("new"),
        "the failed get and put are reported:\n{said}"
    );
    eprintln!("with SeaweedFS down, a get and a put failed in {took:?}:\n{said}");
    assert!(!srv.local_path("k2").exists() || read(&srv.local_path("k2")).is_empty());

    // A second session gets its login answered (here refused: the user's
    // key is in the bucket) and the server keeps running.
    let started = Instant::now();
    let mut cmd = srv.sftp("alice", "pwd\n");
    let out = srv.run_any(&mut cmd);
    let took = started.elapsed();
    srv.check(
        took < DOWN_LIMIT && (out.status.success() || stderr(&out).contains("login refused")),
        &format!("a login with SeaweedFS down is answered promptly ({took:?})"),
        &cmd,
        &out,
    );

    assert!(srv.is_alive(), "the server died:\n{}", srv.log_tail(30));

    weed.restart();
    // Nothing of the failed puts is visible (an upload the node could not
    // abort is left to the sweep, never shown).
    for name in ["big", "new"] {
        assert!(
            client.head(&key_of(name)).is_err(),
            "a failed put left {name}"
        );
    }
    let names: Vec<String> = ls_l(&srv, "/").into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, vec!["keep".to_owned()], "only keep is listed");
    // The same session, the same requests: they work again.
    live.step(
        "get keep k3\nput new\nget new n3\n",
        Duration::from_secs(30),
    );
    assert_eq!(read(&srv.local_path("k3")), keep);
    assert_eq!(read(&srv.local_path("n3")), new);

    // Frozen rather than gone (connections accepted, never answered): the
    // configured timeouts end each request.
    signal_weed(weed.s3_port, rustix::process::Signal::STOP);
    let mark = live.stderr().len();
    let took = live.step("-get keep k4\n", FROZEN_LIMIT);
    signal_weed(weed.s3_port, rustix::process::Signal::CONT);
    let said = live.stderr_since(mark);
    eprintln!("with SeaweedFS frozen, a get failed in {took:?}:\n{said}");
    assert!(said.contains("keep"), "the failed get is reported:\n{said}");
    assert!(!srv.local_path("k4").exists() || read(&srv.local_path("k4")).is_empty());
    live.step("get keep k5\n", Duration::from_secs(30));
    assert_eq!(read(&srv.local_path("k5")), keep);
    // And a new session logs in and reads.
    srv.run(&mut srv.sftp("alice", "get new n4\n"));
    assert_eq!(read(&srv.local_path("n4")), new);
}

/// Starts `sftp put LOCAL REMOTE`, throttled to about 4 MB/s, and waits
/// until its multipart upload exists (after the first part: 5 MiB and the
/// slack), long before it could complete: the client (in a process group
/// of its own, for [`kill_group`]) and the pending uploads.
fn put_in_flight(srv: &Server, client: &S3Client, from: &str, to: &str) -> (Child, Vec<String>) {
    let mut cmd = srv.sftp_with("alice", &["-l", "32000"], &format!("put {from} {to}\n"));
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    loop {
        let uploads = pending(client);
        if !uploads.is_empty() {
            return (child, uploads);
        }
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "the upload ended before its multipart upload was seen"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no multipart upload began"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL to `child`'s process group (sftp and its ssh), then reaps it.
fn kill_group(child: &mut Child) {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.wait();
}

#[test]
fn kill_9_of_the_client_or_the_node_mid_upload_keeps_the_previous_version_and_no_upload_stays() {
    let weed = SeaweedFs::start();
    let mut srv = serve(&weed, "abandoned_upload_hours = 0\n");
    let client = weed.client();
    let seed = fresh_seed();
    let v1 = random_bytes(2 << 20, seed);
    let v2 = random_bytes(24 << 20, seed + 1);
    local(&srv, "v1", &v1);
    local(&srv, "v2", &v2);
    srv.run(&mut srv.sftp("alice", "put v1 doc\n"));

    // A client that goes away mid-upload: its session ends, the server
    // aborts the multipart upload, and the previous version stays.
    let (mut put, in_flight) = put_in_flight(&srv, &client, "v2", "doc");
    assert_eq!(in_flight, vec![key_of("doc")]);
    kill_group(&mut put);
    srv.wait_for("the upload of the closed session to be aborted", || {
        pending(&client).is_empty().then_some(())
    });
    srv.run(&mut srv.sftp("alice", "get doc doc-back\n"));
    assert_same_file(&srv.local_path("v1"), &srv.local_path("doc-back"));

    // Now the node itself, killed.
    let (mut upload, in_flight) = put_in_flight(&srv, &client, "v2", "doc");
    assert_eq!(in_flight, vec![key_of("doc")]);
    srv.kill9();
    kill_group(&mut upload);
    assert_eq!(
        pending(&client),
        in_flight,
        "the killed node's upload is left"
    );

    // The next start aborts it (abandoned_upload_hours = 0) and the
    // previous version is what a client gets.
    srv.restart();
    srv.wait_for("the sweep at start", || {
        pending(&client).is_empty().then_some(())
    });
    srv.wait_for("the sweep's log line", || {
        srv.log()
            .contains("aborted 1 abandoned S3 multipart upload")
            .then_some(())
    });
    srv.run(&mut srv.sftp("alice", "get doc doc-again\n"));
    assert_same_file(&srv.local_path("v1"), &srv.local_path("doc-again"));
}

/// A server process listening on its port, or its exit status and log.
type Started = Result<(Child, u16), (String, String)>;

/// `dropzone serve` on `[storage.s3]` tables `storage` (credentials from
/// SeaweedFS's test environment) in a directory of its own: the child and
/// its port once it listens, or its exit status and log.
fn start_on(storage: &str) -> (tempfile::TempDir, Started, Arc<Mutex<String>>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/users.toml"), "").unwrap();
    std::fs::write(
        dir.path().join("config/dropzone.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\n[auth]\nusers_file = \"config/users.toml\"\n\
             [kms.local]\nkey_dir = \"master_key\"\n{storage}"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .env_remove("DROPZONE_CONFIG")
        .env_remove("DROPZONE_LISTEN")
        .envs(SeaweedFs::env())
        .args(["serve", "--config", "config/dropzone.toml"]);
    let log = Arc::new(Mutex::new(String::new()));
    let started = spawn_listening(&mut cmd, &log);
    (dir, started, log)
}

/// At start-up a bucket that refuses stops the start with the reason; one
/// that cannot be reached is logged and the server starts anyway.
#[test]
fn a_missing_bucket_stops_the_start_and_an_unreachable_store_does_not() {
    let mut weed = SeaweedFs::start();
    let missing = weed.storage_config("").replace(
        &format!("bucket = \"{}\"", weed.bucket),
        "bucket = \"no-such-bucket\"",
    );
    let (_dir, started, _log) = start_on(&missing);
    match started {
        Ok((mut child, _)) => {
            let _ = child.kill();
            panic!("started on a missing bucket")
        }
        Err((status, log)) => assert!(
            log.contains("storage.s3: bucket no-such-bucket") && log.contains("NoSuchBucket"),
            "exit {status}, log:\n{log}"
        ),
    }
    weed.stop();
    let unreachable = format!(
        "{}connect_timeout_secs = 1\nrequest_timeout_secs = 2\n",
        weed.storage_config("")
    );
    let (_dir, started, log) = start_on(&unreachable);
    let (mut child, _port) = started.unwrap_or_else(|(status, log)| {
        panic!("did not start with the store down: exit {status}\n{log}")
    });
    let said = log.lock().unwrap().clone();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        said.contains("S3 unavailable at start-up"),
        "the start says the store is down:\n{said}"
    );
}
