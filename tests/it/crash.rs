//! kill -9 of the server in the middle of uploads, at many points.
//!
//! A paramiko client (see [`DRIVER`]) writes in 32 KiB requests, each
//! acknowledged before the next, and prints a line after each; the test
//! kills the server (SIGKILL: no destructor, no flush) right after a chosen
//! line, so the kill lands at a known point of the upload. Then, with the
//! server down, the offline tools judge what is on disk, and after a
//! restart the server must list no leftovers and serve the file as judged.
//!
//! What must hold (docs/RELIABILITY.md, "Guarantees"):
//! - a new file (staged) is absent, empty (the placeholder its OPEN made)
//!   or complete, an overwrite (truncating
//!   open, staged) leaves the previous version or the complete new one;
//!   staged leftovers never show in listings and are swept at restart;
//! - an append or random write (in place) leaves a file whose every byte
//!   is the old byte or one the client wrote there (verify accepts it), or
//!   one whose extension was cut short: verify names the damaged chunk with
//!   its byte ranges and `decrypt` returns only good bytes before it; the
//!   restart then rolls the extension back from its journal, and the file
//!   downloads whole. Never wrong data.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::harness::*;

const C: usize = 65536;

/// Python driver: `PORT KEY MODE TARGET OLD PLAN DATA`. Uploads OLD (if not
/// "-") to TARGET and prints `ready`; opens TARGET with MODE (paramiko:
/// w, a, r+); for each `offset:len` line of PLAN writes DATA[pos..pos+len]
/// at offset (DATA is consumed in order) and prints `wrote I`; then
/// `closing`, and `closed` once the close is acknowledged.
const DRIVER: &str = r#"
import sys, paramiko
port, key, mode, target, old, plan, data = sys.argv[1:8]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", port=int(port), username="alice", key_filename=key,
          look_for_keys=False, allow_agent=False, timeout=30)
s = c.open_sftp()
if old != "-":
    s.put(old, target)
print("ready", flush=True)
blob = open(data, "rb").read()
steps = [tuple(map(int, l.split(":"))) for l in open(plan) if l.strip()]
f = s.open(target, mode)  # unbuffered, each write acknowledged in turn
pos = 0
for i, (off, n) in enumerate(steps):
    if mode != "a":
        f.seek(off)
    f.write(blob[pos:pos + n])
    pos += n
    print("wrote", i + 1, flush=True)
print("closing", flush=True)
f.close()
print("closed", flush=True)
"#;

/// One kind of interrupted upload.
struct Scenario {
    name: &'static str,
    /// paramiko open mode.
    mode: &'static str,
    /// Content before the upload (None: the file does not exist).
    old: Option<Vec<u8>>,
    /// Writes: (offset, data); for append the offset is where it lands.
    writes: Vec<(usize, Vec<u8>)>,
    /// Whether the upload is staged (replaces the file only at close).
    staged: bool,
}

impl Scenario {
    /// The content once every write has landed and the file is closed.
    fn final_content(&self) -> Vec<u8> {
        let mut out = if self.staged {
            Vec::new()
        } else {
            self.old.clone().unwrap_or_default()
        };
        for (off, d) in &self.writes {
            if out.len() < off + d.len() {
                out.resize(off + d.len(), 0);
            }
            out[*off..off + d.len()].copy_from_slice(d);
        }
        out
    }

    /// Whether byte `b` may be at position `p` of an in-place file after a
    /// crash: the old byte (zero past the old end, where an extension puts
    /// zeros) or any byte a write put there.
    fn allowed(&self, p: usize, b: u8) -> bool {
        let old = self.old.as_deref().unwrap_or_default();
        if old.get(p).copied().unwrap_or(0) == b {
            return true;
        }
        self.writes
            .iter()
            .any(|(off, d)| p >= *off && p < off + d.len() && d[p - off] == b)
    }
}

/// Sequential 32 KiB writes of `data` from `start`.
fn sequential(start: usize, data: &[u8]) -> Vec<(usize, Vec<u8>)> {
    data.chunks(32 * 1024)
        .enumerate()
        .map(|(i, d)| (start + i * 32 * 1024, d.to_vec()))
        .collect()
}

/// The lines after which the server is killed: before the first write,
/// spread over the writes, during the close and after it.
fn kill_points(writes: usize, count: usize) -> Vec<String> {
    let mut points = vec!["ready".to_owned()];
    for i in 0..count {
        points.push(format!(
            "wrote {}",
            1 + i * (writes - 1) / (count - 1).max(1)
        ));
    }
    points.push("closing".to_owned());
    points.push("closed".to_owned());
    points.dedup();
    points
}

/// Runs the scenario with a kill after each of `points`.
fn run(s: &Scenario, points: usize) {
    assert!(
        Command::new("python3")
            .args(["-c", "import paramiko"])
            .status()
            .is_ok_and(|st| st.success()),
        "python3 with paramiko is required for this test: install it (pip install paramiko)"
    );
    let mut srv = Server::start_with(&[("alice", None)]);
    let local = srv.local();
    if let Some(old) = &s.old {
        std::fs::write(local.join("old.bin"), old).unwrap();
    }
    let data: Vec<u8> = s.writes.iter().flat_map(|(_, d)| d.clone()).collect();
    std::fs::write(local.join("data.bin"), &data).unwrap();
    let plan: String = s
        .writes
        .iter()
        .map(|(off, d)| format!("{off}:{}\n", d.len()))
        .collect();
    std::fs::write(local.join("plan.txt"), plan).unwrap();
    let final_content = s.final_content();

    let mut leftovers_seen = 0;
    let mut torn_seen = 0;
    for (n, point) in kill_points(s.writes.len(), points).iter().enumerate() {
        let target = format!("{}-{n:02}.bin", s.name);
        let what = format!("{} killed after {point:?} ({target})", s.name);
        let mut child = Command::new("python3")
            .current_dir(&local)
            .env_remove("SSH_AUTH_SOCK")
            .args(["-c", DRIVER, &srv.port.to_string()])
            .arg(&srv.user("alice").key)
            .args([s.mode, &target])
            .arg(if s.old.is_some() { "old.bin" } else { "-" })
            .args(["plan.txt", "data.bin"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running python3");
        let mut seen = Vec::new();
        let mut reached = false;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let Ok(line) = line else { break };
            seen.push(line.clone());
            if line == *point {
                srv.kill9();
                reached = true;
                break;
            }
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            reached,
            "{what}: the driver never printed {point:?}; it printed {seen:?}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            srv.log_tail(20)
        );
        let on_disk = srv.data("alice");
        if files_under(&on_disk)
            .iter()
            .any(|p| p.to_string_lossy().contains(".dropzone-"))
        {
            leftovers_seen += 1;
        }

        // The server is down: judge the store with the offline tools.
        let torn = judge(&srv, s, &target, &final_content, point, &what);
        srv.restart();
        if torn.is_some() {
            torn_seen += 1;
            let log = srv.log();
            let restarted = &log[log.rfind("--- restarted by the test ---").unwrap_or(0)..];
            assert!(
                restarted.contains("rolled back 1 interrupted extension"),
                "{what}: the restart did not roll the extension back\n{restarted}"
            );
        }
        if !s.staged {
            judge_after_restart(&srv, s, &target, torn.is_some(), &what);
        }
        let leftovers: Vec<_> = files_under(&on_disk)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".dropzone-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{what}: staged leftovers after the restart: {leftovers:?}\n{}",
            srv.log_tail(10)
        );
        let mut ls = srv.sftp("alice", "ls -la\n");
        let out = srv.run(&mut ls);
        srv.check(
            !stdout(&out).contains(".dropzone-"),
            "a staged name shows in the listing",
            &ls,
            &out,
        );
    }
    eprintln!(
        "{}: {} kill points, {torn_seen} left a torn in-place file (reported, rolled \
         back at restart), {leftovers_seen} left staged files (swept at restart)",
        s.name,
        kill_points(s.writes.len(), points).len()
    );
    if s.staged {
        // The sweep at restart was exercised, not just vacuously true.
        assert!(
            leftovers_seen > 0,
            "{}: no kill left a staged file behind; the kill points miss the upload",
            s.name
        );
    }
}

/// Judges `target` with `dropzone verify` and `decrypt` while the server is
/// down. Returns the first damaged chunk of a torn in-place file.
fn judge(
    srv: &Server,
    s: &Scenario,
    target: &str,
    final_content: &[u8],
    point: &str,
    what: &str,
) -> Option<u64> {
    let mut verify = srv.dropzone_tool(&["verify", "--user", "alice"]);
    let out = srv.run_any(&mut verify);
    let text = stdout(&out);
    let mine = format!("/{target}:");
    let fails: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("FAIL") && l.contains(&mine))
        .collect();
    let path = srv.data("alice").join(target);
    let recovered = srv.path(format!("{target}.out"));
    let mut decrypt = srv.dropzone_tool(&[
        "decrypt",
        "--user",
        "alice",
        &format!("/{target}"),
        "-o",
        &recovered.display().to_string(),
    ]);

    if s.staged {
        srv.check(
            fails.is_empty(),
            &format!("{what}: verify fails a staged upload's target"),
            &verify,
            &out,
        );
        // A new file's OPEN puts an empty file at its name at once (as
        // OpenSSH's open(2) does), which the commit replaces.
        let expect_old = Some(s.old.as_deref().unwrap_or_default());
        if !path.exists() {
            assert!(s.old.is_none(), "{what}: the previous version is gone");
            assert_ne!(point, "closed", "{what}: a closed upload is missing");
            return None;
        }
        srv.run(&mut decrypt);
        let got = std::fs::read(&recovered).unwrap();
        let is_old = expect_old.is_some_and(|o| got == o);
        let is_new = got == final_content;
        assert!(
            is_old || is_new,
            "{what}: the file is neither the previous version nor the new one ({} bytes)",
            got.len()
        );
        if point == "closed" {
            assert!(is_new, "{what}: the acknowledged upload is not there");
        }
        if point == "ready" {
            assert!(is_old, "{what}: the file changed before any write");
        }
        return None;
    }

    // In place.
    let old_len = s.old.as_ref().map_or(0, Vec::len);
    if fails.is_empty() {
        // (verify may exit 1 for an earlier point's torn file.)
        srv.run(&mut decrypt);
        let got = std::fs::read(&recovered).unwrap();
        assert!(
            got.len() >= old_len && got.len() <= final_content.len().max(old_len),
            "{what}: {} bytes, outside [{old_len}, {}]",
            got.len(),
            final_content.len()
        );
        if let Some(p) = (0..got.len()).find(|&p| !s.allowed(p, got[p])) {
            panic!("{what}: byte {p} is neither old nor written there: garbage");
        }
        if point == "closed" {
            assert!(got == final_content, "{what}: the closed file differs");
        }
        return None;
    }

    // Torn: every failure names a chunk and its ranges, inside the file.
    srv.check(
        out.status.code() == Some(1),
        &format!("{what}: verify reported damage but did not exit 1"),
        &verify,
        &out,
    );
    assert_ne!(point, "closed", "{what}: a closed file is torn: {fails:?}");
    let stored_len = std::fs::metadata(&path).unwrap().len();
    let mut first_bad = u64::MAX;
    for line in &fails {
        let (chunk, stored) = parse_problem(line)
            .unwrap_or_else(|| panic!("{what}: verify's report is not precise: {line}"));
        assert!(
            stored.1 <= stored_len && stored.0 < stored.1,
            "{what}: reported range outside the file: {line}"
        );
        first_bad = first_bad.min(chunk);
    }
    eprintln!("{what}: torn, verify says:\n  {}", fails.join("\n  "));
    // decrypt stops at the first damaged chunk; what it wrote is good.
    srv.run_fail(&mut decrypt);
    let got = std::fs::read(&recovered).unwrap_or_default();
    assert!(
        got.len() as u64 <= first_bad * C as u64,
        "{what}: decrypt returned {} bytes, past the first damaged chunk {first_bad}",
        got.len()
    );
    if let Some(p) = (0..got.len()).find(|&p| !s.allowed(p, got[p])) {
        panic!("{what}: decrypt returned garbage at byte {p}");
    }
    Some(first_bad)
}

/// `chunk I (plaintext bytes A..B, stored bytes X..Y): ...` -> (I, (X, Y)).
fn parse_problem(line: &str) -> Option<(u64, (u64, u64))> {
    let rest = &line[line.find(": chunk ")? + ": chunk ".len()..];
    let (index, rest) = rest.split_once(" (plaintext bytes ")?;
    let (plain, rest) = rest.split_once(", stored bytes ")?;
    let (stored, reason) = rest.split_once("): ")?;
    let range = |r: &str| -> Option<(u64, u64)> {
        let (a, b) = r.split_once("..")?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    range(plain)?;
    if reason.trim().is_empty() {
        return None;
    }
    Some((index.parse().ok()?, range(stored)?))
}

/// After the restart an in-place file is whole again: the journal rolled
/// an interrupted extension back to the length before it, and the file
/// downloads through the server with only old or written bytes.
fn judge_after_restart(srv: &Server, s: &Scenario, target: &str, was_torn: bool, what: &str) {
    let mut verify = srv.dropzone_tool(&["verify", "--user", "alice"]);
    let out = srv.run_any(&mut verify);
    let mine = format!("/{target}:");
    srv.check(
        !stdout(&out).lines().any(|l| l.contains(&mine)),
        &format!("{what}: still damaged after the restart"),
        &verify,
        &out,
    );
    let back = format!("{target}.back");
    srv.run(&mut srv.sftp("alice", &format!("get {target} {back}\n")));
    let got = std::fs::read(srv.local_path(&back)).unwrap();
    let old = s.old.as_deref().unwrap_or_default();
    if let Some(p) = (0..got.len()).find(|&p| !s.allowed(p, got[p])) {
        panic!("{what}: after the restart, byte {p} is neither old nor written there");
    }
    // Never shorter than the old file; an append rolled back is exactly it.
    // (Random writes may have completed an earlier extension, which then
    // became the state the journal restores.)
    assert!(
        got.len() >= old.len(),
        "{what}: {} bytes after the restart, shorter than the old {}",
        got.len(),
        old.len()
    );
    if was_torn && s.mode == "a" {
        assert!(
            got == old,
            "{what}: the rolled back append is not the old file"
        );
    }
}

#[test]
fn kill_during_new_file_upload_leaves_nothing_or_the_whole_file() {
    let seed = fresh_seed();
    run(
        &Scenario {
            name: "new",
            mode: "w",
            old: None,
            writes: sequential(0, &random_bytes(16 * C + 1000, seed)),
            staged: true,
        },
        8,
    );
}

#[test]
fn kill_during_overwrite_keeps_the_previous_version() {
    let seed = fresh_seed();
    run(
        &Scenario {
            name: "overwrite",
            mode: "w",
            old: Some(random_bytes(5 * C + 77, seed)),
            writes: sequential(0, &random_bytes(16 * C + 1000, seed ^ 1)),
            staged: true,
        },
        8,
    );
}

#[test]
fn kill_during_append_leaves_a_consistent_file_or_names_the_torn_chunk() {
    let seed = fresh_seed();
    let old = random_bytes(300_000, seed);
    let start = old.len();
    run(
        &Scenario {
            name: "append",
            mode: "a",
            old: Some(old),
            writes: sequential(start, &random_bytes(10 * C, seed ^ 2)),
            staged: false,
        },
        10,
    );
}

#[test]
fn kill_during_random_writes_leaves_a_consistent_file_or_names_the_torn_chunk() {
    let seed = fresh_seed();
    let old = random_bytes(12 * C + 5, seed);
    // Offsets anywhere in the file and up to 3 chunks past its end, so that
    // some writes rewrite chunks in place and some extend the file.
    let span = old.len() + 3 * C;
    let offsets = random_bytes(24 * 8, seed ^ 3);
    let writes = offsets
        .chunks(8)
        .enumerate()
        .map(|(i, b)| {
            let off = u64::from_le_bytes(b.try_into().unwrap()) as usize % span;
            (off, random_bytes(20_000, seed ^ (100 + i as u64)))
        })
        .collect();
    run(
        &Scenario {
            name: "random",
            mode: "r+",
            old: Some(old),
            writes,
            staged: false,
        },
        10,
    );
}
