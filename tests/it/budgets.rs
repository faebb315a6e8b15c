//! What one logged-in client can make the server hold (security property 8
//! of docs/SECURITY.md, "containment"): directory handles that cost the same
//! whatever the directory, and handles capped per connection and per user
//! over every SFTP channel, so that neither memory nor descriptors run out
//! for other users.

use super::harness::*;
use super::raw_sftp::*;

const UPLOAD: u32 = SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC;

/// The server's resident memory, in KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The server's open descriptors.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `bob` uploads a file and downloads it again with OpenSSH's sftp.
fn bob_round_trip(srv: &Server, name: &str) {
    let data = random_bytes(300_000, fresh_seed());
    let local = srv.local_path(name);
    std::fs::write(&local, &data).unwrap();
    let back = format!("{name}.back");
    let mut cmd = srv.sftp("bob", &format!("put {name}\nget {name} {back}\n"));
    srv.run(&mut cmd);
    assert_same_file(&local, &srv.local_path(&back));
}

/// Most the server's memory may grow by while 40 directory handles are open
/// on a directory of 20,000 entries with 255-byte names, each read once:
/// each holds a directory descriptor, the kernel-entry buffer (under
/// 64 KiB) and at most one reply's entries (64 KiB), 40 x 128 KiB = 5 MiB;
/// the rest is room for bob's session (its in-flight budgets are 4 MiB)
/// and the allocator. Holding each listing whole cost about 14 MiB per
/// handle: 560 MiB here.
const DIR_HANDLES_GROWTH_KIB: u64 = 32 * 1024;

#[test]
fn directory_handles_cost_the_same_whatever_the_directory() {
    let srv = Server::start();
    let master = srv.ssh_master("alice");
    let mut raw = master.raw_sftp();
    raw.mkdir("/big").unwrap();
    // 20,000 entries with the longest names, made as an attacker would:
    // pipelined SYMLINKs, sent a round at a time, then their replies read.
    let link = |i: usize| format!("/big/{i:0>255}");
    let all: Vec<usize> = (0..20_000).collect();
    for round in all.chunks(2_000) {
        for &i in round {
            raw.send(Req::new(FXP_SYMLINK).string("t").string(link(i)));
        }
        for _ in round {
            raw.recv().ok().expect("a SYMLINK succeeds");
        }
    }
    let before = rss_kib(srv.pid());
    let handles: Vec<Vec<u8>> = (0..40).map(|_| raw.opendir("/big").unwrap()).collect();
    let mut first_batches = Vec::new();
    for h in &handles {
        let names = raw.readdir(h).unwrap();
        assert!(!names.is_empty() && names.len() <= 128, "{}", names.len());
        first_batches.push(names.len());
    }
    // Another user is served meanwhile.
    bob_round_trip(&srv, "bob.bin");
    let after = rss_kib(srv.pid());
    let grown = after.saturating_sub(before);
    eprintln!("server RSS {before} KiB -> {after} KiB with 40 directory handles");
    assert!(
        grown < DIR_HANDLES_GROWTH_KIB,
        "the server grew by {grown} KiB ({before} -> {after}) for 40 directory handles"
    );
    // The handles still list the whole directory, in batches.
    let mut seen = first_batches[0];
    loop {
        match raw.readdir(&handles[0]) {
            Ok(names) => seen += names.len(),
            Err(s) => {
                assert_eq!(s.code, FX_EOF);
                break;
            }
        }
    }
    assert_eq!(seen, 20_000 + 2, "entries listed, with . and ..");
}

const SMALL_CAPS: &str = "[sftp]\nmax_handles = 20\nmax_handles_per_user = 30\n\
                          [audit]\nlog_file = \"audit.jsonl\"\n";

/// Opens uploads on `channels` in turn until one is refused: the handles
/// opened, and the refusal.
fn open_until_refused(channels: &mut [RawSftp], prefix: &str) -> (Vec<Vec<u8>>, Status) {
    let mut held = Vec::new();
    loop {
        let i = held.len();
        assert!(i < 1000, "no refusal after {i} handles");
        let channel = &mut channels[i % channels.len()];
        match channel.open(&format!("/{prefix}{i}"), UPLOAD) {
            Ok(h) => held.push(h),
            Err(refused) => return (held, refused),
        }
    }
}

#[test]
fn handles_are_capped_per_connection_and_per_user_over_all_channels() {
    let srv = Server::start_opts(
        &[("alice", None), ("bob", None)],
        &ServerOptions {
            extra_config: SMALL_CAPS.into(),
            ..ServerOptions::default()
        },
    );
    let pid = srv.pid();
    let fds_before = fd_count(pid);
    // One connection, two SFTP channels: the cap is the connection's.
    let first = srv.ssh_master("alice");
    let mut channels = [first.raw_sftp(), first.raw_sftp()];
    let (held, refused) = open_until_refused(&mut channels, "a");
    assert_eq!(held.len(), 20, "handles before the refusal");
    assert_eq!(refused.code, FX_FAILURE);
    for (i, h) in held.iter().enumerate() {
        channels[i % 2].write(h, 0, b"staged").unwrap();
    }
    // A second connection of alice gets what is left of her cap.
    let second = srv.ssh_master("alice");
    let mut more = [second.raw_sftp()];
    let (held2, refused2) = open_until_refused(&mut more, "b");
    assert_eq!(held2.len(), 10, "alice's cap is 30 over her connections");
    assert_eq!(refused2.code, FX_FAILURE);
    assert!(more[0].opendir("/").is_err(), "directories count too");
    // The refusals are reported with their reason (the client is told
    // OpenSSH's "Failure", and the reason on stderr).
    srv.wait_for("both refusals in the audit log", || {
        let audit = std::fs::read_to_string(srv.root().join("audit.jsonl")).unwrap_or_default();
        (audit.contains("too many open files for this connection")
            && audit.contains("too many open files for this user"))
        .then_some(())
    });

    // Bob is not held back by alice's handles.
    bob_round_trip(&srv, "bob.bin");
    let fds = fd_count(pid);
    // Each of alice's 30 handles holds at most 2 descriptors; each
    // connection a few (socket, its shutdown handle, its runtime, the root).
    eprintln!("server descriptors: {fds_before} at start, {fds} with 30 handles open");
    assert!(
        fds <= fds_before + 30 * 2 + 3 * 8,
        "{fds} descriptors open (from {fds_before})"
    );

    // Closing gives places back; a connection that ends gives back its own.
    channels[0].close(&held[0]).unwrap();
    assert!(
        more[0].open("/c", UPLOAD).is_ok(),
        "a place under the user's cap"
    );
    drop(channels);
    drop(first);
    let third_master = srv.ssh_master("alice");
    let mut third = third_master.raw_sftp();
    srv.wait_for("the first connection's handles to be given back", || {
        third.open("/d", UPLOAD).ok()
    });
    drop(more);
    drop(second);
    assert!(
        fd_count(pid) <= fds_before + 30 * 2 + 3 * 8,
        "descriptors left open"
    );
}

/// Creates `n` entries in alice's directory `dir` on disk: hard links of
/// files uploaded through the server, so that each is a valid encrypted
/// file of that file's size (5 bytes). Several files: a file system caps
/// the links to one inode (65,000 on ext4).
fn many_links(srv: &Server, dir: &str, n: usize) {
    const PER_SEED: usize = 25_000;
    let seeds = n.div_ceil(PER_SEED);
    std::fs::write(srv.local_path("small.txt"), b"hello").unwrap();
    let mut batch = format!("mkdir {dir}\n");
    for s in 0..seeds {
        batch.push_str(&format!("put small.txt {dir}/seed{s}\n"));
    }
    srv.run(&mut srv.sftp("alice", &batch));
    let base = srv.data("alice").join(dir);
    for i in 0..n {
        let seed = base.join(format!("seed{}", i / PER_SEED));
        std::fs::hard_link(&seed, base.join(format!("f{i:06}"))).unwrap();
    }
    for s in 0..seeds {
        std::fs::remove_file(base.join(format!("seed{s}"))).unwrap();
    }
}

#[test]
fn ls_lists_a_directory_of_100000_entries() {
    let srv = Server::start();
    let n = 100_000;
    many_links(&srv, "huge", n);
    let mut cmd = srv.sftp("alice", "ls -l huge\n");
    let out = srv.run(&mut cmd);
    let lines = sftp_output_lines(&out);
    // `ls -l DIR` prints each entry as DIR/NAME, in the client's format.
    let entries: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .last()
                .is_some_and(|path| path.starts_with("huge/f"))
        })
        .collect();
    srv.check(
        entries.len() == n,
        &format!("{} of {n} entries listed", entries.len()),
        &cmd,
        &out,
    );
    // Each with its plaintext size, read batch by batch.
    let fields: Vec<&str> = entries[n / 2].split_whitespace().collect();
    assert_eq!(fields[4], "5", "{}", entries[n / 2]);
    assert!(entries.iter().any(|l| l.ends_with("huge/f099999")));
}

/// Reads `len` bytes of `h` with 16 READs of 255 KiB in flight at a time.
fn read_all(raw: &mut RawSftp, h: &[u8], len: usize) -> Vec<u8> {
    const PIECE: usize = 261_120;
    let mut out = vec![0u8; len];
    let offsets: Vec<usize> = (0..len).step_by(PIECE).collect();
    for round in offsets.chunks(16) {
        let mut sent = std::collections::HashMap::new();
        for &offset in round {
            let req = Req::new(FXP_READ)
                .string(h)
                .u64(offset as u64)
                .u32(PIECE as u32);
            sent.insert(raw.send(req), offset);
        }
        for _ in round {
            let reply = raw.recv();
            assert_eq!(reply.kind, FXP_DATA, "{:?}", reply.status());
            let offset = sent[&reply.id];
            let data = Fields::new(&reply.body).string();
            out[offset..offset + data.len()].copy_from_slice(&data);
        }
    }
    out
}

/// A channel whose client stopped reading holds at most its own share of
/// the connection's in-flight budget for replies: the connection's other
/// channels still download (and upload).
#[test]
fn a_stalled_download_does_not_hold_up_the_other_channels() {
    let srv = Server::start();
    let data = random_bytes(4 << 20, fresh_seed());
    std::fs::write(srv.local_path("big.bin"), &data).unwrap();
    srv.run(&mut srv.sftp("alice", "put big.bin\n"));
    let master = srv.ssh_master("alice");
    // 16 MiB of READs whose replies this test never reads: the client's
    // window for the channel fills, and its DATA replies wait.
    let mut stalled = master.raw_sftp();
    let h = stalled.open("/big.bin", SSH_FXF_READ).unwrap();
    for i in 0..64u64 {
        stalled.send(Req::new(FXP_READ).string(&h).u64(i * 65536).u32(261_120));
    }
    let mut other = master.raw_sftp();
    // A hang here is the failure: a watchdog says so instead of waiting
    // forever.
    let (done, finished) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let up = other.open("/copy.bin", UPLOAD).unwrap();
        for (i, piece) in data.chunks(261_120).enumerate() {
            other.write(&up, (i * 261_120) as u64, piece).unwrap();
        }
        other.close(&up).unwrap();
        let down = other.open("/copy.bin", SSH_FXF_READ).unwrap();
        let back = read_all(&mut other, &down, data.len());
        let _ = done.send(back == data);
    });
    let same = finished
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the other channel's transfers were held up by the stalled one");
    assert!(same, "the file came back different");
    worker.join().unwrap();
    drop(stalled);
}

/// Most the server's memory may grow by while 40 uploads written 2 MiB each
/// are left open on one connection: each keeps its partial last chunk and
/// a record buffer (about 128 KiB; 256 KiB allowed), and the rest is room
/// for the connection and the allocator. Before idle handles were trimmed,
/// each kept its last write-behind batches and spares, 1-3.5 MiB: 40-140 MiB.
const IDLE_UPLOADS_GROWTH_KIB: u64 = 40 * 256 + 16 * 1024;

/// Writes `data` to `h` in 32 KiB WRITEs, 16 in flight at a time (as
/// OpenSSH's sftp does), so that the server's write-behind fills.
fn write_pipelined(raw: &mut RawSftp, h: &[u8], data: &[u8]) {
    const PIECE: usize = 32 * 1024;
    let pieces: Vec<(usize, &[u8])> = data.chunks(PIECE).enumerate().collect();
    for round in pieces.chunks(16) {
        for &(i, piece) in round {
            raw.send(
                Req::new(FXP_WRITE)
                    .string(h)
                    .u64((i * PIECE) as u64)
                    .string(piece),
            );
        }
        for _ in round {
            raw.recv().ok().expect("a WRITE succeeds");
        }
    }
}

/// A client that writes a few MiB to each of many uploads and leaves them
/// open pins about one chunk per handle, not its write-behind batches:
/// the handle caps then bound memory too.
#[test]
fn idle_upload_handles_hold_about_one_chunk_each() {
    let srv = Server::start();
    let master = srv.ssh_master("alice");
    let mut raw = master.raw_sftp();
    let before = rss_kib(srv.pid());
    let seed = fresh_seed();
    let len = (2 << 20) + 1000;
    let mut handles = Vec::new();
    for i in 0..40u64 {
        let h = raw.open(&format!("/idle{i}"), UPLOAD).unwrap();
        write_pipelined(&mut raw, &h, &random_bytes(len, seed + i));
        handles.push(h);
    }
    // A handle's worker trims once it has waited 200 ms for its next
    // request; freed pages go back to the system within about a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (after, grown) = loop {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let after = rss_kib(srv.pid());
        let grown = after.saturating_sub(before);
        if grown < IDLE_UPLOADS_GROWTH_KIB || std::time::Instant::now() > deadline {
            break (after, grown);
        }
    };
    eprintln!("server RSS {before} KiB -> {after} KiB with 40 idle uploads of 2 MiB");
    assert!(
        grown < IDLE_UPLOADS_GROWTH_KIB,
        "the server grew by {grown} KiB ({before} -> {after}) for 40 idle uploads"
    );
    // Nothing was lost: each upload is whole once closed.
    for (i, h) in handles.iter().enumerate() {
        raw.close(h).unwrap();
        let r = raw.open(&format!("/idle{i}"), SSH_FXF_READ).unwrap();
        let back = read_all(&mut raw, &r, len);
        assert!(
            back == random_bytes(len, seed + i as u64),
            "upload {i} came back different"
        );
        raw.close(&r).unwrap();
    }
}
