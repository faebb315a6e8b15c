//! Several nodes on one S3 bucket: two real `dropzone serve` processes with
//! the same configuration, users file, host keys and master key (copied
//! from the first, as an operator distributes them: `Server::start_node`),
//! each with its own empty local directories, against one SeaweedFS.
//!
//! What a client must not notice: which node it reaches (same host key,
//! checked by OpenSSH with `StrictHostKeyChecking=yes`), where a file was
//! uploaded, renamed or deleted; and a user's first logins on both nodes
//! at once must end with one key in the bucket, under which both nodes'
//! uploads decrypt.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::*;
use super::seaweed::SeaweedFs;

/// The objects' prefix in the bucket.
const PREFIX: &str = "nodes";

/// The name both nodes are known by in the clients' known_hosts.
const ALIAS: &str = "dropzone-nodes";

/// Users that have never logged in, one per race round.
const RACERS: [&str; 5] = ["race0", "race1", "race2", "race3", "race4"];

/// How long [`SlowKeys`] holds each request for a key object.
const KEY_DELAY: Duration = Duration::from_millis(500);

/// A TCP proxy in front of the S3 endpoint that holds every request for a
/// key object (`/keks/` in its request line) for [`KEY_DELAY`] and counts
/// them by method and key, so that two nodes' first logins of a user
/// overlap for sure: each reads "no key" before either has written one.
struct SlowKeys {
    /// `http://127.0.0.1:PORT`, to use as the endpoint.
    endpoint: String,
    /// `"PUT /dropzone/nodes/keks/NAME.key"` (up to the query) -> count.
    seen: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl SlowKeys {
    fn start(s3_port: u16) -> SlowKeys {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", s3_port)) else {
                        continue;
                    };
                    let seen = seen.clone();
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    thread::spawn(move || forward_requests(client, server, &seen));
                    thread::spawn(move || copy_and_close(s2, c2));
                }
            });
        }
        SlowKeys {
            endpoint: format!("http://127.0.0.1:{port}"),
            seen,
            stop,
            port,
        }
    }

    /// How many requests `method` made for the key object of `user`.
    fn count(&self, method: &str, user: &str) -> usize {
        let wanted = format!("{PREFIX}/keks/{user}.key");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{method} ")) && k.ends_with(&wanted))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for SlowKeys {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Client to server: each read that starts a request for a key object is
/// counted and held back for [`KEY_DELAY`] (a request line comes whole in
/// one read from a local client).
fn forward_requests(mut from: TcpStream, mut to: TcpStream, seen: &Mutex<HashMap<String, usize>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let line = buf[..n].split(|&b| b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split(' ');
        if let (Some(method @ ("GET" | "PUT" | "HEAD")), Some(target)) =
            (words.next(), words.next())
            && target.contains("/keks/")
        {
            let path = target.split('?').next().unwrap_or(target);
            *seen
                .lock()
                .unwrap()
                .entry(format!("{method} {path}"))
                .or_default() += 1;
            thread::sleep(KEY_DELAY);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Server to client, unchanged.
fn copy_and_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// A SeaweedFS and two nodes on its bucket under [`PREFIX`] with `users`.
/// Bind the result in this order, so that the nodes go before the store.
fn two_nodes(users: &[(&str, Option<&str>)]) -> (SeaweedFs, Server, Server) {
    let s3 = SeaweedFs::start();
    let (a, b) = nodes_on(&s3.storage_config(PREFIX), users);
    (s3, a, b)
}

/// Two nodes with `storage` (the `[storage]` tables) and `users`.
fn nodes_on(storage: &str, users: &[(&str, Option<&str>)]) -> (Server, Server) {
    let a = Server::start_opts(
        users,
        &ServerOptions {
            extra_config: storage.to_owned(),
            env: SeaweedFs::env(),
            ..ServerOptions::default()
        },
    );
    let b = a.start_node();
    (a, b)
}

/// The host keys `srv` offers, as `TYPE BASE64` lines, sorted.
fn scanned_host_keys(srv: &Server) -> Vec<String> {
    let out = srv.run(Command::new("ssh-keyscan").args([
        "-p",
        &srv.port.to_string(),
        "-T",
        "20",
        "127.0.0.1",
    ]));
    let mut keys: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            Some(format!("{} {}", f.next()?, f.next()?))
        })
        .collect();
    keys.sort();
    assert!(
        !keys.is_empty(),
        "ssh-keyscan found no host key on port {}:\n{}",
        srv.port,
        stderr(&out)
    );
    keys
}

/// `sftp -b BATCH` as `user` to `srv` that trusts only the host keys in
/// `known_hosts` (under [`ALIAS`]): OpenSSH refuses any other host key.
fn strict_sftp(srv: &Server, user: &str, known_hosts: &Path, batch: &str) -> Command {
    let batch_file = srv.local_path(&format!("strict-{}.batch", srv.port));
    std::fs::write(&batch_file, batch).unwrap();
    let mut cmd = Command::new("sftp");
    cmd.current_dir(srv.local())
        .env_remove("SSH_AUTH_SOCK")
        .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", &format!("HostKeyAlias={ALIAS}")])
        .args(["-o", "LogLevel=ERROR", "-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i"])
        .arg(&srv.user(user).key)
        .args(["-P", &srv.port.to_string(), "-b"])
        .arg(batch_file)
        .arg(srv.dest(user));
    cmd
}

/// Every object key under `prefix` in the bucket, sorted.
fn object_keys(s3: &SeaweedFs, prefix: &str) -> Vec<String> {
    let client = s3.client();
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client.list(prefix, None, token.as_deref(), 1000).unwrap();
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    keys.sort();
    keys
}

/// The file names in an `sftp -b` listing (`ls -1`).
fn listed(out: &std::process::Output) -> Vec<String> {
    let mut names = sftp_output_lines(out);
    names.sort();
    names
}

/// Asserts that a node kept nothing locally: with a shared store, files,
/// keys and usage records are all in the bucket.
#[track_caller]
fn assert_no_local_state(srv: &Server, node: &str) {
    for dir in ["data", "keks"] {
        let found = files_under(&srv.path(dir));
        assert!(
            found.is_empty(),
            "node {node} wrote {found:?} under its local {dir}/"
        );
    }
}

#[test]
fn two_nodes_present_one_host_key_and_share_files_renames_and_deletes() {
    let (s3, a, b) = two_nodes(&[("alice", None)]);

    // Same host key on both: OpenSSH, trusting only node A's keys, logs in
    // to node B; and a known_hosts with another key is refused there.
    let a_keys = scanned_host_keys(&a);
    assert_eq!(
        a_keys,
        scanned_host_keys(&b),
        "the nodes offer other host keys"
    );
    let known = a.local_path("known_hosts");
    let lines: String = a_keys.iter().map(|k| format!("{ALIAS} {k}\n")).collect();
    std::fs::write(&known, lines).unwrap();
    let wrong = a.local_path("wrong_known_hosts");
    let user_pub = std::fs::read_to_string(a.user("alice").key.with_extension("pub")).unwrap();
    let fake: Vec<&str> = user_pub.split_whitespace().take(2).collect();
    std::fs::write(&wrong, format!("{ALIAS} {}\n", fake.join(" "))).unwrap();
    let out = b.run_fail(&mut strict_sftp(&b, "alice", &wrong, "pwd\n"));
    let err = stderr(&out);
    assert!(
        err.contains("Host key verification failed") || err.contains("HOST IDENTIFICATION"),
        "a wrong known host key was not what failed:\n{err}"
    );
    b.run(&mut strict_sftp(&b, "alice", &known, "pwd\n"));

    // Upload on A, download on B: byte-identical (several chunks, and a
    // small file).
    let big = random_bytes(3_000_017, fresh_seed());
    std::fs::write(a.local_path("big.bin"), &big).unwrap();
    std::fs::write(a.local_path("small.txt"), b"hello from node A\n").unwrap();
    a.run(&mut a.sftp(
        "alice",
        "mkdir docs\nput big.bin docs/big.bin\nput small.txt small.txt\n",
    ));
    b.run(&mut strict_sftp(
        &b,
        "alice",
        &known,
        &format!(
            "get docs/big.bin {}\nget small.txt {}\n",
            b.local_path("big.bin").display(),
            b.local_path("small.txt").display()
        ),
    ));
    assert_same_file(&a.local_path("big.bin"), &b.local_path("big.bin"));
    assert_same_file(&a.local_path("small.txt"), &b.local_path("small.txt"));

    // And the other way, with scp.
    std::fs::write(
        b.local_path("from-b.bin"),
        random_bytes(70_001, fresh_seed()),
    )
    .unwrap();
    b.run(&mut b.scp(
        "alice",
        &[],
        "from-b.bin",
        b.remote("alice", "docs/from-b.bin"),
    ));
    a.run(&mut a.scp(
        "alice",
        &[],
        a.remote("alice", "docs/from-b.bin"),
        "from-b.bin",
    ));
    assert_same_file(&b.local_path("from-b.bin"), &a.local_path("from-b.bin"));

    // A renames; B sees the new name only, with the same content.
    a.run(&mut a.sftp("alice", "rename docs/big.bin docs/renamed.bin\n"));
    let out = b.run(&mut b.sftp("alice", "ls -1 docs\n"));
    assert_eq!(
        listed(&out),
        ["docs/from-b.bin", "docs/renamed.bin"],
        "node B's listing after node A's rename"
    );
    b.run(&mut b.sftp("alice", "get docs/renamed.bin renamed.bin\n"));
    assert_same_file(&a.local_path("big.bin"), &b.local_path("renamed.bin"));
    let out = b.run_fail(&mut b.sftp("alice", "get docs/big.bin old-name.bin\n"));
    assert!(
        !b.local_path("old-name.bin").exists(),
        "node B downloaded the old name:\n{}",
        stderr(&out)
    );

    // A deletes; B no longer has it.
    a.run(&mut a.sftp("alice", "rm docs/renamed.bin\nrm small.txt\n"));
    let out = b.run(&mut b.sftp("alice", "ls -1 docs\n"));
    assert_eq!(listed(&out), ["docs/from-b.bin"], "after node A's delete");
    b.run_fail(&mut b.sftp("alice", "get small.txt gone.txt\n"));
    assert!(!b.local_path("gone.txt").exists());

    // Everything is in the bucket: one key, alice's remaining file and dir.
    assert_eq!(
        object_keys(&s3, &format!("{PREFIX}/")),
        [
            format!("{PREFIX}/data/alice/"),
            format!("{PREFIX}/data/alice/docs/"),
            format!("{PREFIX}/data/alice/docs/from-b.bin"),
            format!("{PREFIX}/keks/alice.key"),
        ]
    );
    assert_no_local_state(&a, "A");
    assert_no_local_state(&b, "B");
}

#[test]
fn first_logins_on_both_nodes_at_once_make_one_key() {
    let mut users: Vec<(&str, Option<&str>)> = vec![("alice", None)];
    users.extend(RACERS.iter().map(|&r| (r, None)));
    let s3 = SeaweedFs::start();
    let slow = SlowKeys::start(s3.s3_port);
    let storage = s3
        .storage_config(PREFIX)
        .replace(&s3.endpoint, &slow.endpoint);
    let (a, b) = nodes_on(&storage, &users);
    let nodes = [("a", &a), ("b", &b)];
    let seed = fresh_seed();

    for (round, racer) in RACERS.iter().enumerate() {
        // Each node's upload, named after the node.
        for (name, node) in nodes {
            let data = random_bytes(200_000 + round * 1000, seed + round as u64 * 2);
            std::fs::write(node.local_path(&format!("{racer}-{name}.bin")), data).unwrap();
        }
        // Both first logins start together (the barrier); each session
        // then stays open.
        let start = Arc::new(Barrier::new(2));
        let mut sessions: Vec<std::process::Child> = thread::scope(|scope| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|&(_, node)| {
                    let start = start.clone();
                    scope.spawn(move || {
                        start.wait();
                        open_session(node, racer)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Each session stores its file; once both are in the bucket, each
        // session reads the other's: the keys the two racing logins hold
        // are one key.
        for ((name, _), session) in nodes.iter().zip(&mut sessions) {
            send(session, &format!("put {racer}-{name}.bin\n"));
        }
        let stored = [
            format!("{PREFIX}/data/{racer}/{racer}-a.bin"),
            format!("{PREFIX}/data/{racer}/{racer}-b.bin"),
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stored.iter().all(|k| object_keys(&s3, k).contains(k)) {
            for session in &mut sessions {
                if let Some(status) = session.try_wait().unwrap() {
                    let mut err = String::new();
                    let _ = session.stderr.take().unwrap().read_to_string(&mut err);
                    panic!("round {round}: a session ended ({status}) before both uploads:\n{err}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: uploads not stored in 60 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
        let mut reads = Vec::new();
        for ((name, node), (other, _)) in nodes.iter().zip(nodes.iter().rev()) {
            let back = format!("{racer}-{other}-via-{name}.bin");
            let session = sessions.remove(0);
            let out = finish_session(session, &format!("get {racer}-{other}.bin {back}\n"));
            assert!(
                out.status.success(),
                "round {round}: node {name}'s session reading node {other}'s upload:\n{}\n--- log ---\n{}",
                stderr(&out),
                node.log_tail(20)
            );
            reads.push((other, node.local_path(&back)));
        }
        for (other, back) in reads {
            let origin = if *other == "a" { &a } else { &b };
            assert_same_file(&origin.local_path(&format!("{racer}-{other}.bin")), &back);
        }

        // One key object for the user, and nothing else of theirs under keks/.
        let keks = object_keys(&s3, &format!("{PREFIX}/keks/{racer}"));
        assert_eq!(
            keks,
            [format!("{PREFIX}/keks/{racer}.key")],
            "round {round}: key objects after racing first logins"
        );

        // Both nodes found no key and tried to create one (the proxy held
        // their reads long enough); only one creation took.
        assert_eq!(
            slow.count("PUT", racer),
            2,
            "round {round}: the two first logins did not both try to create {racer}'s key \
             (they did not overlap: {:?})",
            slow.seen.lock().unwrap()
        );
        // One creation logged, on either node: the other read the winner's.
        let created = |srv: &Server| {
            srv.log()
                .lines()
                .filter(|l| l.contains("created data key") && l.contains(&format!("user={racer}")))
                .count()
        };
        assert_eq!(
            created(&a) + created(&b),
            1,
            "round {round}: creations of {racer}'s key logged by the two nodes\n--- A ---\n{}\n--- B ---\n{}",
            a.log_tail(30),
            b.log_tail(30)
        );
    }
    // A key per racer and none for alice, who never logged in.
    let keys: Vec<PathBuf> = object_keys(&s3, &format!("{PREFIX}/keks/"))
        .into_iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(keys.len(), RACERS.len(), "{keys:?}");
    assert_no_local_state(&a, "A");
    assert_no_local_state(&b, "B");
}

/// `sftp -b -` as `user` to `srv`, logged in and waiting for its batch on
/// standard input (so that its node's quota account is loaded now).
fn open_session(srv: &Server, user: &str) -> std::process::Child {
    let logins = |srv: &Server| srv.log().matches("login peer=").count();
    let before = logins(srv);
    let cmd = srv.sftp(user, "");
    // `-b -`: the batch comes from standard input (replaces the file).
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut sftp = Command::new("sftp");
    sftp.current_dir(srv.local()).env_remove("SSH_AUTH_SOCK");
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        sftp.arg(&a);
        if a == "-b" {
            args.next();
            sftp.arg("-");
        }
    }
    sftp.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = sftp.spawn().expect("starting sftp");
    srv.wait_for("the session's login", || {
        (logins(srv) > before).then_some(())
    });
    child
}

/// Sends `line` to a session from [`open_session`].
fn send(session: &mut std::process::Child, line: &str) {
    let stdin = session.stdin.as_mut().expect("the session's stdin");
    stdin.write_all(line.as_bytes()).unwrap();
}

/// Sends `batch` to a session from [`open_session`] and waits for it.
fn finish_session(mut child: std::process::Child, batch: &str) -> std::process::Output {
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(batch.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn quotas_are_counted_per_node_from_the_bucket() {
    let s3 = SeaweedFs::start();
    let a = Server::start_opts(
        &[("alice", None)],
        &ServerOptions {
            extra_config: s3.storage_config(PREFIX),
            env: SeaweedFs::env(),
            ..ServerOptions::default()
        },
    );
    a.run(&mut a.dropzone_tool(&["user", "set", "alice", "--quota-bytes", "1000000"]));
    let b = a.start_node();
    let seed = fresh_seed();
    for (name, len) in [
        ("700k.bin", 700_000),
        ("400k.bin", 400_000),
        ("200k.bin", 200_000),
    ] {
        for node in [&a, &b] {
            std::fs::write(node.local_path(name), random_bytes(len, seed + len as u64)).unwrap();
        }
    }

    // A login on B after A's upload counts it: B refuses what would pass
    // the limit, and takes what fits.
    a.run(&mut a.sftp("alice", "put 700k.bin a1.bin\n"));
    let mut cmd = b.sftp("alice", "put 400k.bin b1.bin\n");
    let out = b.run_fail(&mut cmd);
    b.check(
        stderr(&out).contains("quota exceeded"),
        "node B's refusal past the quota",
        &cmd,
        &out,
    );
    b.run(&mut b.sftp("alice", "put 200k.bin b2.bin\n"));
    let mut cmd = a.sftp("alice", "put 200k.bin a2.bin\n");
    let out = a.run_fail(&mut cmd);
    a.check(
        stderr(&out).contains("quota exceeded"),
        "node A counts B's upload at its next login",
        &cmd,
        &out,
    );

    // The documented limit: sessions open on both nodes at once each count
    // only their node's uploads from their login on, so together they can
    // pass the quota, by at most (nodes - 1) x what was left at login. Here
    // 800,000 bytes are left and each node stores 799,999: 1,799,998 bytes
    // stored against a quota of 1,000,000.
    a.run(&mut a.sftp("alice", "rm a1.bin\n"));
    let on_a = open_session(&a, "alice");
    let on_b = open_session(&b, "alice");
    let usage_at_login = 200_000;
    let each = 1_000_000 - usage_at_login - 1;
    for node in [&a, &b] {
        std::fs::write(node.local_path("each.bin"), random_bytes(each, seed)).unwrap();
    }
    let out_a = finish_session(on_a, "put each.bin from-a.bin\n");
    let out_b = finish_session(on_b, "put each.bin from-b.bin\n");
    assert!(
        out_a.status.success() && out_b.status.success(),
        "both nodes' sessions store what fits their own account:\n{}\n{}",
        stderr(&out_a),
        stderr(&out_b)
    );
    let out = a.run(&mut a.dropzone_tool(&["quota", "scan", "--user", "alice"]));
    let total = usage_at_login + 2 * each;
    assert!(
        stdout(&out).contains(&format!("({total} bytes), 3 files")),
        "usage after both sessions:\n{}",
        stdout(&out)
    );
    // Past the quota now: every new login on any node refuses uploads.
    for node in [&a, &b] {
        let out = node.run_fail(&mut node.sftp("alice", "put 200k.bin more.bin\n"));
        assert!(stderr(&out).contains("quota exceeded"), "{}", stderr(&out));
    }
}
