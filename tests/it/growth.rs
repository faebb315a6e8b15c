//! Containment of file growth: every byte of a file is stored encrypted, a
//! gap included, so a request of a few bytes (a WRITE far past the end, a
//! SETSTAT size, a copy-data) can ask for gigabytes of work. The size limit
//! (`[sftp] max_file_size`) refuses it before anything is written; within
//! the limit, the work stops when the client's connection ends or the
//! server is asked to stop, and the file is left as it was.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::harness::*;
use super::raw_sftp::*;

/// Far enough past the end that filling the gap would take minutes: the
/// tests stop it long before (a few MiB in).
const FAR: u64 = 8 << 30;

/// Growth on disk that shows the gap is being filled.
const UNDER_WAY: u64 = 4 << 20;

/// Growth on disk past which a test gives up at once: the server went on
/// filling the gap after it should have stopped (keeps a failing run from
/// filling the disk).
const RUNAWAY: u64 = 512 << 20;

/// The stored file of alice's `name`.
fn stored(srv: &Server, name: &str) -> PathBuf {
    srv.data("alice").join(name)
}

fn stored_len(srv: &Server, name: &str) -> u64 {
    std::fs::metadata(stored(srv, name))
        .unwrap_or_else(|e| panic!("stat of the stored {name}: {e}"))
        .len()
}

/// Alice's stored names (journals and staged uploads included).
fn stored_names(srv: &Server) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(srv.data("alice"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Creates `/name` holding `data` through `raw`.
fn put_raw(raw: &mut RawSftp, name: &str, data: &[u8]) {
    let h = raw
        .open(
            &format!("/{name}"),
            SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC,
        )
        .unwrap();
    for (i, piece) in data.chunks(32 * 1024).enumerate() {
        raw.write(&h, (i * 32 * 1024) as u64, piece).unwrap();
    }
    raw.close(&h).unwrap();
}

/// Compares contents without printing megabytes on failure.
#[track_caller]
fn assert_content(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}, first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

/// Reads `/name` whole through `raw`.
fn get_raw(raw: &mut RawSftp, name: &str) -> Vec<u8> {
    let h = raw.open(&format!("/{name}"), SSH_FXF_READ).unwrap();
    let mut out = Vec::new();
    loop {
        match raw.read(&h, out.len() as u64, 32 * 1024) {
            Ok(data) => out.extend_from_slice(&data),
            Err(s) if s.code == FX_EOF => break,
            Err(s) => panic!("reading /{name}: {s:?}"),
        }
    }
    raw.close(&h).unwrap();
    out
}

/// Waits until the stored `name` has grown by [`UNDER_WAY`] past `base`.
fn wait_until_growing(srv: &Server, name: &str, base: u64) {
    srv.wait_for("the gap being filled on disk", || {
        (stored_len(srv, name) >= base + UNDER_WAY).then_some(())
    });
}

/// Waits until the stored `name` is back to `base` bytes (the filled part
/// of the gap cut off again); fails at once if it runs away instead.
fn wait_until_cut_back(srv: &Server, name: &str, base: u64) {
    srv.wait_for("the gap to be cut off again", || {
        let len = stored_len(srv, name);
        assert!(
            len < base + RUNAWAY,
            "the server went on filling the gap: {len} bytes stored\n{}",
            srv.log_tail(20)
        );
        (len == base).then_some(())
    });
}

/// `dropzone verify --user alice` passes: every stored file authenticates.
fn verify_alice(srv: &Server) {
    let mut cmd = srv.dropzone_tool(&["verify", "--user", "alice"]);
    let out = srv.run(&mut cmd);
    srv.check(
        !stdout(&out).contains("FAIL"),
        "verify reports a damaged file",
        &cmd,
        &out,
    );
}

/// A copy-data request's payload.
fn copy_data(from: &[u8], offset: u64, len: u64, to: &[u8], to_offset: u64) -> Vec<u8> {
    Req::new(0)
        .string(from)
        .u64(offset)
        .u64(len)
        .string(to)
        .u64(to_offset)
        .into_fields()
}

#[test]
fn growth_past_the_size_limit_is_refused_before_any_work() {
    let srv = Server::start_opts(
        &[("alice", Some(ALICE_PASSWORD))],
        &ServerOptions {
            extra_config: "[sftp]\nmax_file_size = 67108864\n".into(),
            ..ServerOptions::default()
        },
    );
    let mut raw = srv.raw_sftp("alice");
    let old = random_bytes(1000, 1);
    put_raw(&mut raw, "f", &old);
    let base = stored_len(&srv, "f");
    let names = stored_names(&srv);

    let h = raw.open("/f", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();
    // One byte at 1 GiB: a 40-byte request for 1 GiB of encrypted zeros.
    let refused = raw.write(&h, 1 << 30, b"x").unwrap_err();
    assert_eq!(refused.code, FX_FAILURE, "{refused:?}");
    // Up to the limit is fine (a few chunks: not 64 MiB of gap).
    raw.write(&h, 5000, b"within").unwrap();
    let refused = raw
        .request(
            Req::new(FXP_FSETSTAT)
                .string(&h)
                .u32(ATTR_SIZE)
                .u64((64 << 20) + 1),
        )
        .ok()
        .unwrap_err();
    assert_eq!(refused.code, FX_FAILURE, "{refused:?}");
    let refused = raw.setstat_size("/f", 1 << 30).unwrap_err();
    assert_eq!(refused.code, FX_FAILURE, "{refused:?}");
    // A copy that would end past the limit is refused before it starts.
    let g = raw
        .open("/g", SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC)
        .unwrap();
    let refused = raw
        .extended("copy-data", &copy_data(&h, 0, 0, &g, 64 << 20))
        .ok()
        .unwrap_err();
    assert_eq!(refused.code, FX_FAILURE, "{refused:?}");
    raw.close(&g).unwrap();
    raw.close(&h).unwrap();

    // Nothing grew on disk: the file has the one small write, no journal
    // or staged file is left.
    let mut want = old.clone();
    want.resize(5000, 0);
    want.extend_from_slice(b"within");
    assert_content(&get_raw(&mut raw, "f"), &want, "after the refused requests");
    assert!(stored_len(&srv, "f") < base + 16 * 1024);
    let mut names_now = stored_names(&srv);
    names_now.retain(|n| n != "g");
    assert_eq!(names_now, names);
    assert_eq!(raw.stat("/g").unwrap().size, Some(0));
    drop(raw);

    // OpenSSH sftp: an upload past the limit fails, says why, and leaves
    // the previous version. The local file is sparse: no disk for it.
    let big = srv.local_path("big.bin");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len((64 << 20) + 1).unwrap();
    drop(f);
    let mut cmd = srv.sftp("alice", "put big.bin f\n");
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("the file would exceed the server's 64 MiB size limit"),
        "the refused upload does not name the limit",
        &cmd,
        &out,
    );
    let mut raw = srv.raw_sftp("alice");
    assert_content(&get_raw(&mut raw, "f"), &want, "the previous version");
    // Legacy scp gets the same store, so the same limit and message.
    let mut cmd = srv.scp("alice", &["-O"], "big.bin", srv.remote("alice", "f"));
    let out = srv.run_fail(&mut cmd);
    srv.check(
        stderr(&out).contains("the file would exceed the server's 64 MiB size limit"),
        "the refused scp upload does not name the limit",
        &cmd,
        &out,
    );
    assert_content(&get_raw(&mut raw, "f"), &want, "the version before scp");
    assert_eq!(stored_names(&srv), {
        let mut n = names.clone();
        n.push("g".into());
        n.sort();
        n
    });
    verify_alice(&srv);
}

/// A WRITE far past the end, from a client that is then killed: the server
/// stops filling the gap and cuts it off again, so the file is its old
/// version; meanwhile another user logs in and transfers as usual.
#[test]
fn a_gap_being_filled_stops_when_the_client_is_gone() {
    let srv = Server::start();
    let mut raw = srv.raw_sftp("alice");
    let old = random_bytes(1000, 2);
    put_raw(&mut raw, "f", &old);
    let base = stored_len(&srv, "f");
    let names = stored_names(&srv);

    let h = raw.open("/f", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();
    raw.send(Req::new(FXP_WRITE).string(&h).u64(FAR).string(b"x"));
    wait_until_growing(&srv, "f", base);

    // Bob is not held up by it.
    let data = random_bytes(300_000, 3);
    std::fs::write(srv.local_path("bob.bin"), &data).unwrap();
    let mut cmd = srv.sftp("bob", "put bob.bin\nget bob.bin bob.back\n");
    srv.run(&mut cmd);
    assert_same_file(&srv.local_path("bob.bin"), &srv.local_path("bob.back"));

    raw.kill();
    wait_until_cut_back(&srv, "f", base);
    assert_eq!(stored_names(&srv), names, "a journal was left");
    verify_alice(&srv);
    let mut raw = srv.raw_sftp("alice");
    assert_content(&get_raw(&mut raw, "f"), &old, "after the interrupt");
}

/// SIGTERM while a SETSTAT extension is filling a gap: the extension stops
/// at once, so the server exits without waiting out its grace period for
/// the session, and the file is its old version.
#[test]
fn sigterm_stops_a_gap_being_filled() {
    let mut srv = Server::start();
    let mut raw = srv.raw_sftp("alice");
    let old = random_bytes(70_000, 4);
    put_raw(&mut raw, "f", &old);
    let base = stored_len(&srv, "f");
    let names = stored_names(&srv);

    raw.send(Req::new(FXP_SETSTAT).string("/f").u32(ATTR_SIZE).u64(FAR));
    wait_until_growing(&srv, "f", base);
    srv.signal(rustix::process::Signal::TERM);
    let started = Instant::now();
    // Generous: what tells a stop that waited for the extension from one
    // that did not is the log line below, not the time.
    while srv.is_alive() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !srv.is_alive(),
        "the server still runs after SIGTERM\n{}",
        srv.log()
    );
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
    let log = srv.log();
    assert!(
        !log.contains("some sessions did not finish in time"),
        "the stop waited out its grace period for the extension\n{log}"
    );
    drop(raw);
    assert_eq!(stored_len(&srv, "f"), base, "the gap was not cut off");
    assert_eq!(stored_names(&srv), names, "a journal was left");
    verify_alice(&srv);
    let recovered = srv.path("f.out");
    let out_arg = recovered.display().to_string();
    let mut cmd = srv.dropzone_tool(&["decrypt", "--user", "alice", "/f", "-o", &out_arg]);
    srv.run(&mut cmd);
    assert_content(
        &std::fs::read(&recovered).unwrap(),
        &old,
        "decrypted after the stop",
    );
}

/// copy-data within one file: ranges that overlap are refused (through one
/// handle or two on the same file), others are copied; a copy to the end
/// of the source copies what was there when it started, once.
#[test]
fn copy_data_within_one_file() {
    let srv = Server::start();
    let mut raw = srv.raw_sftp("alice");
    let data = random_bytes(300_000, 5);
    put_raw(&mut raw, "c", &data);
    let h = raw.open("/c", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();
    let h2 = raw.open("/c", SSH_FXF_READ | SSH_FXF_WRITE).unwrap();

    for (from, len, to, to_offset) in [
        (&h, 100_000, &h, 50_000),
        (&h, 100_000, &h2, 50_000),
        (&h, 100_000, &h2, 0),
        (&h2, 100_000, &h, 99_999),
        (&h, 0, &h, 299_999),
        (&h2, 0, &h, 1),
    ] {
        let refused = raw
            .extended("copy-data", &copy_data(from, 0, len, to, to_offset))
            .ok()
            .unwrap_err();
        assert_eq!(
            refused.code, FX_FAILURE,
            "overlapping copy 0+{len} -> {to_offset}: {refused:?}"
        );
    }
    assert_eq!(
        get_raw(&mut raw, "c"),
        data,
        "a refused copy changed the file"
    );

    // Not overlapping: copied.
    raw.extended("copy-data", &copy_data(&h, 0, 100_000, &h2, 150_000))
        .ok()
        .unwrap();
    let mut want = data.clone();
    want.copy_within(0..100_000, 150_000);
    assert_content(
        &get_raw(&mut raw, "c"),
        &want,
        "after a copy within the file",
    );
    // To the end, onto the end: the file doubles, exactly.
    raw.extended("copy-data", &copy_data(&h, 0, 0, &h, 300_000))
        .ok()
        .unwrap();
    let twice = [want.clone(), want.clone()].concat();
    assert_content(&get_raw(&mut raw, "c"), &twice, "after a copy to the end");
    raw.close(&h).unwrap();
    raw.close(&h2).unwrap();

    // Between two files, as before.
    let d = raw
        .open("/d", SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC)
        .unwrap();
    let c = raw.open("/c", SSH_FXF_READ).unwrap();
    raw.extended("copy-data", &copy_data(&c, 10, 0, &d, 0))
        .ok()
        .unwrap();
    raw.close(&c).unwrap();
    raw.close(&d).unwrap();
    assert_content(
        &get_raw(&mut raw, "d"),
        &twice[10..],
        "after a copy to another file",
    );
}
