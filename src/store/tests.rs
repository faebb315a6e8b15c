//! Tests of the encrypted file and user store over a real directory.
//!
//! Everything here goes through [`UserStore`] and [`LocalStorage`] on a
//! temporary directory, except the crash tests, which wrap the local storage
//! in a test double that starts failing after a given number of writes.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use tempfile::TempDir;

use super::file::{BATCH, READ_BATCH, WRITE_BEHIND_JOBS};
use super::format::{self, CHUNK_SIZE, FULL_RECORD_LEN, HEADER_LEN};
use super::storage::{
    Access, Blob, Kind, LocalStorage, Meta, ObjectPath, SpaceInfo, Staged, StagedToken, Storage,
};
use super::{EncryptedFile, OpenOptions, StoreError, UserStore};
use crate::keys::DataKey;

const C: u64 = CHUNK_SIZE as u64;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn key() -> Arc<DataKey> {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    Arc::new(DataKey::from_bytes(k))
}

/// A store over a fresh temporary directory.
struct Fixture {
    dir: TempDir,
    store: UserStore,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Self::store_on(&dir);
        Fixture { dir, store }
    }

    /// A second, independent store over the same root and key (as a second
    /// session of the same user would have).
    fn store_on(dir: &TempDir) -> UserStore {
        let storage = LocalStorage::open_root(dir.path()).unwrap();
        UserStore::new(Arc::new(storage), key())
    }

    fn raw(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn raw_bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.raw(name)).unwrap()
    }

    fn raw_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

fn p(name: &str) -> ObjectPath {
    ObjectPath::from_components([name]).unwrap()
}

fn create_trunc() -> OpenOptions {
    OpenOptions {
        read: true,
        write: true,
        create: true,
        truncate: true,
        ..OpenOptions::default()
    }
}

fn rw() -> OpenOptions {
    OpenOptions {
        read: true,
        write: true,
        ..OpenOptions::default()
    }
}

fn ro() -> OpenOptions {
    OpenOptions {
        read: true,
        ..OpenOptions::default()
    }
}

/// Deterministic, distinctive, random-looking bytes (splitmix64).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` from offset 0 in pieces of the given sizes (cycled).
fn write_in_pieces(f: &EncryptedFile, data: &[u8], pieces: &[usize]) {
    let mut off = 0;
    let mut i = 0;
    while off < data.len() {
        let n = pieces[i % pieces.len()].min(data.len() - off);
        f.write_at(off as u64, &data[off..off + n]).unwrap();
        off += n;
        i += 1;
    }
}

/// Reads a whole file through `f` in 32 KiB requests, as OpenSSH does.
fn read_all(f: &EncryptedFile) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    loop {
        let got = f.read_at(out.len() as u64, 32 * 1024)?;
        if got.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&got);
    }
}

fn put(store: &UserStore, name: &str, data: &[u8]) {
    let f = store.open(&p(name), create_trunc()).unwrap();
    write_in_pieces(&f, data, &[32 * 1024]);
    f.close().unwrap();
}

/// Opens read-only and reads everything.
fn get(store: &UserStore, name: &str) -> Result<Vec<u8>, StoreError> {
    let f = store.open(&p(name), ro())?;
    read_all(&f)
}

/// Compares contents without printing megabytes on failure.
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: contents differ: got {} bytes, want {}, first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

fn is_integrity<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Integrity(_)))
}

/// Stored size of a file of `len` plaintext bytes.
fn expected_stored_len(len: usize) -> u64 {
    let full = if len == 0 { 0 } else { (len - 1) / CHUNK_SIZE };
    let tail = len - full * CHUNK_SIZE;
    (HEADER_LEN + full * FULL_RECORD_LEN + format::record_len(tail)) as u64
}

/// Asserts that no `window`-byte run of `plain` occurs in `stored`.
fn assert_no_plaintext_window(stored: &[u8], plain: &[u8]) {
    let window = plain.len().min(32);
    if window < 8 {
        return; // too short for a meaningful search
    }
    let seen: HashSet<&[u8]> = stored.windows(window).collect();
    for (i, w) in plain.windows(window).enumerate() {
        assert!(
            !seen.contains(w),
            "plaintext bytes {i}..{} found in the stored file",
            i + window
        );
    }
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

const SIZES: [usize; 9] = [
    0,
    1,
    15,
    16,
    17,
    CHUNK_SIZE - 1,
    CHUNK_SIZE,
    CHUNK_SIZE + 1,
    3 * CHUNK_SIZE + 7,
];

fn round_trip(pieces: &[usize]) {
    let fx = Fixture::new();
    for (n, &len) in SIZES.iter().enumerate() {
        let name = format!("f{len}");
        let plain = bytes(len, 1000 + n as u64);
        let f = fx.store.open(&p(&name), create_trunc()).unwrap();
        write_in_pieces(&f, &plain, pieces);
        assert_eq!(f.size(), len as u64, "size while open, len {len}");
        assert_eq!(
            f.attributes().unwrap().size,
            len as u64,
            "fstat while open, len {len}"
        );
        // Readable through the same handle before close.
        assert_bytes(
            &read_all(&f).unwrap(),
            &plain,
            &format!("read before close, len {len}"),
        );
        f.close().unwrap();

        let attrs = fx.store.stat(&p(&name), true).unwrap();
        assert_eq!(attrs.kind, Kind::File);
        assert_eq!(attrs.size, len as u64, "stat after close, len {len}");
        let listed = fx.store.read_dir(&ObjectPath::root()).unwrap();
        let (_, a) = listed.iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(a.size, len as u64, "readdir size, len {len}");

        // Reopen (read-only, then read-write in place: stat by path while
        // open comes from the shared state).
        assert_bytes(
            &get(&fx.store, &name).unwrap(),
            &plain,
            &format!("read after reopen, len {len}"),
        );
        let f = fx.store.open(&p(&name), rw()).unwrap();
        assert_eq!(fx.store.stat(&p(&name), true).unwrap().size, len as u64);
        assert_eq!(f.attributes().unwrap().size, len as u64);
        assert_bytes(&read_all(&f).unwrap(), &plain, "read_all");
        f.close().unwrap();

        let stored = fx.raw_bytes(&name);
        assert_eq!(
            stored.len() as u64,
            expected_stored_len(len),
            "stored length, len {len}"
        );
        assert_ne!(stored, plain);
        assert!(!stored[HEADER_LEN..].starts_with(&plain[..plain.len().min(16)]) || len == 0);
        assert_no_plaintext_window(&stored, &plain);
    }
}

#[test]
fn round_trip_in_32k_pieces() {
    round_trip(&[32 * 1024]);
}

#[test]
fn round_trip_in_odd_pieces() {
    round_trip(&[1, 7, 4093, 65537, 100, 31, 40_000, 16, 3]);
}

#[test]
fn round_trip_written_backwards() {
    // Pieces written from the end towards the start: every write but the
    // first lands inside the file.
    let fx = Fixture::new();
    let plain = bytes(3 * CHUNK_SIZE + 7, 7);
    let f = fx.store.open(&p("b"), create_trunc()).unwrap();
    let piece = 10_000;
    let mut end = plain.len();
    while end > 0 {
        let start = end.saturating_sub(piece);
        f.write_at(start as u64, &plain[start..end]).unwrap();
        end = start;
    }
    assert_eq!(f.size(), plain.len() as u64);
    f.close().unwrap();
    assert_bytes(&get(&fx.store, "b").unwrap(), &plain, "get");
}

#[test]
fn chunks_waiting_for_their_batch_read_back_before_and_after_close() {
    // Sequential writes leave full chunks behind in batches of
    // file::BATCH: fewer than a batch wait in memory, more go to the pool
    // (in flight or still gathered). Every one must read back at once,
    // through the handle that wrote it and through another one, and after
    // the close.
    for chunks in [3, super::file::BATCH + 3, 2 * super::file::BATCH + 1] {
        let fx = Fixture::new();
        let plain = bytes(chunks * CHUNK_SIZE + 5, chunks as u64);
        // An existing file, written in place, so that a second handle
        // sees it before the close.
        put(&fx.store, "g", b"");
        let f = fx.store.open(&p("g"), rw()).unwrap();
        write_in_pieces(&f, &plain, &[32 * 1024]);
        for i in (0..chunks).rev() {
            let at = i * CHUNK_SIZE + 100;
            let got = f.read_at(at as u64, 1000).unwrap();
            assert_bytes(&got, &plain[at..at + 1000], "read through the writer");
        }
        let other = fx.store.open(&p("g"), ro()).unwrap();
        let got = other.read_at(C, 2 * CHUNK_SIZE).unwrap();
        assert_bytes(
            &got,
            &plain[CHUNK_SIZE..3 * CHUNK_SIZE],
            "read through another handle",
        );
        f.close().unwrap();
        other.close().unwrap();
        assert_bytes(&get(&fx.store, "g").unwrap(), &plain, "get after close");
    }
}

/// Sequential reads are served by read-ahead jobs that decrypt
/// `READ_BATCH` chunks each. A chunk that fails to verify inside a batch
/// must fail the read of that chunk only: the good chunks before it, in the
/// same batch, still read back, and so do those after it.
#[test]
fn a_bad_chunk_read_ahead_fails_only_its_own_reads() {
    let fx = Fixture::new();
    let chunks = 3 * READ_BATCH + 2;
    let plain = bytes(chunks * CHUNK_SIZE + 100, 7);
    put(&fx.store, "t", &plain);
    // A chunk in the middle of the second batch read ahead.
    let bad = READ_BATCH + 3;
    let mut stored = fx.raw_bytes("t");
    stored[format::record_offset(bad as u64) as usize + 100] ^= 0x40;
    std::fs::write(fx.raw("t"), &stored).unwrap();

    let f = fx.store.open(&p("t"), ro()).unwrap();
    for (i, piece) in plain.chunks(CHUNK_SIZE).enumerate() {
        let got = f.read_at((i * CHUNK_SIZE) as u64, CHUNK_SIZE);
        if i == bad {
            assert!(is_integrity(&got), "chunk {i}: {got:?}");
        } else {
            assert_bytes(&got.unwrap(), piece, &format!("chunk {i}"));
        }
    }
    // Read again in 255 KiB pieces, as an SFTP client does: every piece
    // that does not touch the bad chunk reads back.
    let piece = 261_120;
    for start in (0..plain.len()).step_by(piece) {
        let end = (start + piece).min(plain.len());
        let got = f.read_at(start as u64, end - start);
        let touches_bad = start < (bad + 1) * CHUNK_SIZE && end > bad * CHUNK_SIZE;
        if touches_bad {
            assert!(is_integrity(&got), "piece at {start}: {got:?}");
        } else {
            assert_bytes(
                &got.unwrap(),
                &plain[start..end],
                &format!("piece at {start}"),
            );
        }
    }
    f.close().unwrap();
}

/// A sequential reader is kept ahead of by batches of chunks, and a file
/// read to its end keeps no more spare buffers than an idle one: a session
/// may hold hundreds of open files.
#[test]
fn a_file_read_to_its_end_keeps_only_an_idle_files_buffers() {
    let fx = Fixture::new();
    let plain = bytes(6 * READ_BATCH * CHUNK_SIZE + 1000, 11);
    put(&fx.store, "t", &plain);
    let f = fx.store.open(&p("t"), ro()).unwrap();
    let piece = 261_120;
    let mut got = Vec::new();
    let mut most_ahead = 0;
    while got.len() < plain.len() {
        got.extend(f.read_at(got.len() as u64, piece).unwrap());
        let (ahead, _, _) = super::lock(&f.state).read_ahead_state();
        most_ahead = most_ahead.max(ahead);
    }
    assert_bytes(&got, &plain, "read back");
    assert!(
        most_ahead >= 2,
        "read-ahead jobs in flight: at most {most_ahead}"
    );
    let (ahead, spare_data, spare_records) = super::lock(&f.state).read_ahead_state();
    assert_eq!(ahead, 0);
    assert!(spare_data <= 2, "{spare_data} spare plaintext buffers");
    assert_eq!(spare_records, 0);
    f.close().unwrap();
}

/// A reader that reads one 255 KiB piece here and one there (random
/// access) is read ahead by at most one chunk: batches are for readers
/// that keep going, and would be wasted work at every jump.
#[test]
fn scattered_reads_are_not_read_ahead_in_batches() {
    let fx = Fixture::new();
    let plain = bytes(40 * CHUNK_SIZE, 13);
    put(&fx.store, "t", &plain);
    let f = fx.store.open(&p("t"), ro()).unwrap();
    let piece = 261_120;
    for i in [5usize, 1, 8, 3, 7, 0, 9] {
        let start = i * piece;
        let got = f.read_at(start as u64, piece).unwrap();
        assert_bytes(&got, &plain[start..start + piece], &format!("piece {i}"));
        let (ahead, _, _) = super::lock(&f.state).read_ahead_state();
        assert!(ahead <= 1, "after piece {i}: {ahead} read-ahead jobs");
    }
    f.close().unwrap();
}

/// With every write-behind place of the process taken, an upload encrypts
/// and writes its batches itself, and the file is the same.
#[test]
fn an_upload_writes_its_own_batches_when_the_process_has_no_place_left() {
    // Other tests may give their places back meanwhile: then some batches
    // go to the pool, which is as correct.
    let held: Vec<_> = std::iter::from_fn(|| WRITE_BEHIND_JOBS.take()).collect();
    let fx = Fixture::new();
    let plain = bytes(5 * BATCH * CHUNK_SIZE + 777, 23);
    let f = fx.store.open(&p("inline"), create_trunc()).unwrap();
    write_in_pieces(&f, &plain, &[32 * 1024]);
    assert_bytes(&read_all(&f).unwrap(), &plain, "read before close");
    f.close().unwrap();
    drop(held);
    assert_bytes(&get(&fx.store, "inline").unwrap(), &plain, "read back");
    let stored = fx.raw_bytes("inline");
    assert_eq!(stored.len() as u64, expected_stored_len(plain.len()));
    assert_no_plaintext_window(&stored, &plain);
}

/// An upload handle written 2 MiB and a bit, then left open, lets go of
/// its write-behind batches and spare buffers when trimmed: it holds its
/// partial last chunk and a record buffer, whatever was written before (a
/// session may hold hundreds of such handles). The file is whole at close.
#[test]
fn an_idle_upload_trimmed_holds_about_one_chunk() {
    let fx = Fixture::new();
    let plain = bytes(32 * CHUNK_SIZE + 1000, 17);
    let f = fx.store.open(&p("t"), create_trunc()).unwrap();
    let piece = 32 * 1024;
    for (i, part) in plain.chunks(piece).enumerate() {
        f.write_at((i * piece) as u64, part).unwrap();
    }
    let one_chunk = CHUNK_SIZE + FULL_RECORD_LEN;
    let before = super::lock(&f.state).held_write_bytes();
    assert!(
        before > 2 * one_chunk,
        "held before the trim: {before} bytes"
    );
    f.trim_idle();
    let after = super::lock(&f.state).held_write_bytes();
    assert!(
        after <= one_chunk,
        "held after the trim: {after} bytes (one chunk and its record: {one_chunk})"
    );
    assert!(f.trim_idle_now(), "nothing left to wait for");
    // Writing goes on as before, and the file reads back whole.
    f.write_at(plain.len() as u64, &plain[..5000]).unwrap();
    f.close().unwrap();
    let mut want = plain.clone();
    want.extend_from_slice(&plain[..5000]);
    assert_bytes(&get(&fx.store, "t").unwrap(), &want, "read back");
}

#[test]
fn same_plaintext_encrypts_differently() {
    let fx = Fixture::new();
    let plain = bytes(2 * CHUNK_SIZE, 3);
    put(&fx.store, "a", &plain);
    put(&fx.store, "b", &plain);
    let a = fx.raw_bytes("a");
    let b = fx.raw_bytes("b");
    assert_eq!(a.len(), b.len());
    // Different file ids, keys and IVs: no record in common.
    for i in 0..2u64 {
        let off = format::record_offset(i) as usize;
        assert_ne!(a[off..off + 64], b[off..off + 64]);
    }
    // Rewriting a chunk in place uses a fresh IV.
    let f = fx.store.open(&p("a"), rw()).unwrap();
    f.write_at(0, &plain[..10]).unwrap();
    f.close().unwrap();
    let a2 = fx.raw_bytes("a");
    let off = HEADER_LEN + format::LEN_FIELD;
    assert_ne!(a[off..off + 16], a2[off..off + 16], "IV reused on rewrite");
    assert_bytes(&get(&fx.store, "a").unwrap(), &plain, "get");
}

#[test]
fn trailing_zero_bytes_survive() {
    let fx = Fixture::new();
    for len in [1, 15, 16, 17, CHUNK_SIZE + 3] {
        let plain = vec![0u8; len];
        put(&fx.store, "z", &plain);
        assert_bytes(&get(&fx.store, "z").unwrap(), &plain, "get");
        assert_eq!(fx.store.stat(&p("z"), true).unwrap().size, len as u64);
    }
}

#[test]
fn in_place_edits_match_a_model() {
    // Targeted cases, each starting from a closed file opened in place with
    // nothing cached (the cache then does not hide what is on disk).
    let fx = Fixture::new();
    type Edit = fn(&EncryptedFile, &mut Vec<u8>);
    let cases: Vec<(usize, Edit)> = vec![
        // Appends that grow the last record by a block or more.
        (16, |f, m| write_model(f, m, 16, &[9; 1])),
        (10, |f, m| write_model(f, m, 10, &[9; 20])),
        (CHUNK_SIZE + 16, |f, m| {
            write_model(f, m, C + 16, &[1, 2, 3])
        }),
        (100, |f, m| write_model(f, m, 150, &[5; 7])),
        // Extending within the last chunk.
        (10, |f, m| set_len_model(f, m, 20)),
        (CHUNK_SIZE + 1, |f, m| set_len_model(f, m, C + 1000)),
        // Extending across chunks, shrinking.
        (10, |f, m| set_len_model(f, m, 2 * C + 3)),
        (3 * CHUNK_SIZE + 7, |f, m| set_len_model(f, m, C + 3)),
        (3 * CHUNK_SIZE + 7, |f, m| set_len_model(f, m, 2 * C)),
        (3 * CHUNK_SIZE + 7, |f, m| set_len_model(f, m, 0)),
        (1000, |f, m| set_len_model(f, m, 999)),
        // A write into an earlier chunk, then an append (the last chunk is
        // then not the cached one).
        (CHUNK_SIZE + 16, |f, m| {
            write_model(f, m, 5, &[7; 3]);
            write_model(f, m, C + 16, &[8; 5]);
        }),
        (CHUNK_SIZE + 16, |f, m| {
            write_model(f, m, 5, &[7; 3]);
            set_len_model(f, m, C + 40);
        }),
        // Writes past the end leave a zero gap.
        (100, |f, m| write_model(f, m, 3 * C + 5, &[4; 100])),
    ];
    for (i, (len, edit)) in cases.into_iter().enumerate() {
        let mut model = bytes(len, i as u64);
        put(&fx.store, "e", &model);
        let f = fx.store.open(&p("e"), rw()).unwrap();
        edit(&f, &mut model);
        assert_eq!(f.size(), model.len() as u64, "case {i}");
        assert_bytes(
            &read_all(&f).unwrap(),
            &model,
            &format!("case {i} before close"),
        );
        f.close().unwrap();
        assert_bytes(
            &get(&fx.store, "e").unwrap(),
            &model,
            &format!("case {i} after close"),
        );
        assert_eq!(
            fx.store.stat(&p("e"), true).unwrap().size,
            model.len() as u64
        );
        assert_eq!(
            fx.raw_bytes("e").len() as u64,
            expected_stored_len(model.len())
        );
    }
}

fn write_model(f: &EncryptedFile, model: &mut Vec<u8>, offset: u64, data: &[u8]) {
    f.write_at(offset, data).unwrap();
    model_write(model, offset, data);
}

fn set_len_model(f: &EncryptedFile, model: &mut Vec<u8>, len: u64) {
    f.set_len(len).unwrap();
    model.resize(len as usize, 0);
}

fn model_write(model: &mut Vec<u8>, offset: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let offset = offset as usize;
    let end = offset + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[offset..end].copy_from_slice(data);
}

#[test]
fn empty_write_past_the_end_does_not_extend() {
    let fx = Fixture::new();
    put(&fx.store, "e", b"abc");
    let f = fx.store.open(&p("e"), rw()).unwrap();
    f.write_at(1000, &[]).unwrap();
    assert_eq!(f.size(), 3);
    f.close().unwrap();
    assert_bytes(&get(&fx.store, "e").unwrap(), b"abc", "get");
}

#[test]
fn append_mode_writes_at_the_end() {
    let fx = Fixture::new();
    put(&fx.store, "a", b"hello");
    let f = fx
        .store
        .open(
            &p("a"),
            OpenOptions {
                write: true,
                append: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
    f.write_at(0, b", world").unwrap();
    f.write_at(0, &[b'!'; 20]).unwrap();
    f.close().unwrap();
    let mut expect = b"hello, world".to_vec();
    expect.extend_from_slice(&[b'!'; 20]);
    assert_bytes(&get(&fx.store, "a").unwrap(), &expect, "get");
}

// ---------------------------------------------------------------------------
// Model-based property test
// ---------------------------------------------------------------------------

/// An offset: absolute, or relative to the current end of the file.
#[derive(Debug, Clone)]
enum Pos {
    Abs(u64),
    End(i64),
}

impl Pos {
    fn resolve(&self, len: usize) -> u64 {
        match *self {
            Pos::Abs(o) => o,
            Pos::End(d) => (len as i64 + d).max(0) as u64,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        at: Pos,
        len: usize,
        seed: u64,
    },
    SetLen(Pos),
    Read {
        at: Pos,
        len: usize,
    },
    /// Close, then open again in place (no truncation).
    Reopen,
    /// Close, then open with create + truncate (a staged rewrite).
    ReopenTruncate,
}

fn pos_strategy() -> impl Strategy<Value = Pos> {
    prop_oneof![
        3 => (0..=4 * C + 100).prop_map(Pos::Abs),
        // Near a chunk boundary.
        2 => (0..5u64, -20i64..20).prop_map(|(k, d)| Pos::Abs(((k * C) as i64 + d).max(0) as u64)),
        // At or near the current end (appends, small gaps, overlaps).
        3 => prop_oneof![Just(0i64), -100i64..100, -(C as i64)..(C as i64)].prop_map(Pos::End),
    ]
}

fn len_strategy(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![0..64usize, Just(32 * 1024), 0..=max]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (pos_strategy(), len_strategy(3 * CHUNK_SIZE), any::<u64>())
            .prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
        2 => pos_strategy().prop_map(Op::SetLen),
        2 => (pos_strategy(), len_strategy(2 * CHUNK_SIZE)).prop_map(|(at, len)| Op::Read { at, len }),
        1 => Just(Op::Reopen),
        1 => Just(Op::ReopenTruncate),
    ]
}

fn check_closed(fx: &Fixture, model: &[u8]) {
    assert_eq!(
        fx.store.stat(&p("m"), true).unwrap().size,
        model.len() as u64
    );
    assert_bytes(&get(&fx.store, "m").unwrap(), model, "get");
    assert_eq!(
        fx.raw_bytes("m").len() as u64,
        expected_stored_len(model.len())
    );
}

fn run_model(ops: &[Op]) {
    let fx = Fixture::new();
    let mut model: Vec<u8> = Vec::new();
    let mut f = fx.store.open(&p("m"), create_trunc()).unwrap();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Write { at, len, seed } => {
                let off = at.resolve(model.len());
                let data = bytes(*len, *seed);
                f.write_at(off, &data).unwrap();
                model_write(&mut model, off, &data);
            }
            Op::SetLen(at) => {
                let n = at.resolve(model.len());
                f.set_len(n).unwrap();
                model.resize(n as usize, 0);
            }
            Op::Read { at, len } => {
                let off = at.resolve(model.len());
                let got = f.read_at(off, *len).unwrap();
                let s = (off as usize).min(model.len());
                let e = (off as usize).saturating_add(*len).min(model.len());
                assert!(got == model[s..e], "step {step}: read {off}+{len} differs");
            }
            Op::Reopen | Op::ReopenTruncate => {
                f.close().unwrap();
                check_closed(&fx, &model);
                f = if matches!(op, Op::Reopen) {
                    fx.store.open(&p("m"), rw()).unwrap()
                } else {
                    model.clear();
                    fx.store.open(&p("m"), create_trunc()).unwrap()
                };
            }
        }
        assert_eq!(
            f.size(),
            model.len() as u64,
            "step {step}: size after {op:?}"
        );
    }
    // Whole content through the open handle, then after close.
    assert!(
        read_all(&f).unwrap() == model,
        "final read before close differs"
    );
    f.close().unwrap();
    check_closed(&fx, &model);
}

/// 64 cases by default (a few seconds in a debug build); set
/// `PROPTEST_CASES` for a longer hunt.
fn model_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: model_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_match_a_model(ops in proptest::collection::vec(op_strategy(), 1..24)) {
        run_model(&ops);
    }
}

// ---------------------------------------------------------------------------
// Tampering on disk
// ---------------------------------------------------------------------------

/// Opening and reading everything must fail with an integrity error.
fn assert_rejected(fx: &Fixture, name: &str, what: &str) {
    // stat must not fail or panic on a damaged file; any size is acceptable.
    let _ = fx.store.stat(&p(name), true).unwrap();
    let r = match fx.store.open(&p(name), ro()) {
        Ok(f) => read_all(&f),
        Err(e) => Err(e),
    };
    assert!(
        is_integrity(&r),
        "{what}: expected an integrity error, got {:?}",
        r.map(|v| v.len())
    );
    // Also through check_blob, as the offline `verify` does.
    let storage = LocalStorage::open_root(fx.dir.path()).unwrap();
    let blob = storage.open(&p(name), Access::Read).unwrap();
    let report = super::check::check_blob(&*blob, &key()).unwrap();
    assert!(!report.is_ok(), "{what}: check_blob found nothing wrong");
}

#[test]
fn tampering_is_detected() {
    let fx = Fixture::new();
    let len = 3 * CHUNK_SIZE + 7;
    let plain = bytes(len, 42);
    put(&fx.store, "t", &plain);
    let good = fx.raw_bytes("t");
    let path = fx.raw("t");
    let write = |b: &[u8]| std::fs::write(&path, b).unwrap();

    // Flip one bit at a variety of places: header, length fields, IVs,
    // ciphertext, MACs, of the first, a middle and the last record.
    let mut positions = vec![0, 8, 10, 12, 20, 40, 63];
    for i in 0..4u64 {
        let r = format::record_offset(i) as usize;
        let rec_len = if i < 3 {
            FULL_RECORD_LEN
        } else {
            format::record_len(7)
        };
        positions.extend([
            r,
            r + 3,
            r + 4,
            r + 19,
            r + 20,
            r + 21,
            r + rec_len - 33,
            r + rec_len - 32,
            r + rec_len - 1,
        ]);
        if i < 3 {
            positions.extend([r + 20 + CHUNK_SIZE / 2, r + 20 + CHUNK_SIZE - 1]);
        }
    }
    for &pos in &positions {
        for bit in [0x01u8, 0x80] {
            let mut b = good.clone();
            b[pos] ^= bit;
            write(&b);
            assert_rejected(&fx, "t", &format!("bit {bit:#x} flipped at byte {pos}"));
        }
    }

    // Swap two full records.
    let mut b = good.clone();
    let (r0, r1) = (
        format::record_offset(0) as usize,
        format::record_offset(1) as usize,
    );
    let rec0 = good[r0..r0 + FULL_RECORD_LEN].to_vec();
    let rec1 = good[r1..r1 + FULL_RECORD_LEN].to_vec();
    b[r0..r0 + FULL_RECORD_LEN].copy_from_slice(&rec1);
    b[r1..r1 + FULL_RECORD_LEN].copy_from_slice(&rec0);
    write(&b);
    assert_rejected(&fx, "t", "records 0 and 1 swapped");

    // Duplicate a record over another.
    let mut b = good.clone();
    b[r1..r1 + FULL_RECORD_LEN].copy_from_slice(&rec0);
    write(&b);
    assert_rejected(&fx, "t", "record 0 copied over record 1");

    // Truncate at every chunk boundary, and inside records.
    for cut in [
        0,
        10,
        HEADER_LEN,
        HEADER_LEN + 1,
        format::record_offset(1) as usize,
        format::record_offset(2) as usize,
        format::record_offset(3) as usize,
        format::record_offset(3) as usize + 16,
        good.len() - 16,
        good.len() - 1,
    ] {
        write(&good[..cut]);
        assert_rejected(&fx, "t", &format!("truncated to {cut} bytes"));
    }

    // Append bytes: a few, a block, a record's worth, a copy of a record.
    for extra in [1usize, 15, 16, 32, 52, 68, FULL_RECORD_LEN] {
        let mut b = good.clone();
        b.extend(bytes(extra, extra as u64));
        write(&b);
        assert_rejected(&fx, "t", &format!("{extra} bytes appended"));
        let mut b = good.clone();
        b.extend(vec![0u8; extra]);
        write(&b);
        assert_rejected(&fx, "t", &format!("{extra} zero bytes appended"));
    }
    let mut b = good.clone();
    b.extend_from_slice(&good[format::record_offset(3) as usize..]);
    write(&b);
    assert_rejected(&fx, "t", "last record appended twice");

    // Restored, the file reads again.
    write(&good);
    assert_bytes(&get(&fx.store, "t").unwrap(), &plain, "get");
}

#[test]
fn tampering_with_whole_chunk_files_is_detected() {
    // When the last chunk is full, cutting it off leaves a file whose
    // length is still a whole number of records.
    let fx = Fixture::new();
    let plain = bytes(2 * CHUNK_SIZE, 5);
    put(&fx.store, "w", &plain);
    let good = fx.raw_bytes("w");
    let path = fx.raw("w");
    std::fs::write(&path, &good[..format::record_offset(1) as usize]).unwrap();
    assert_rejected(&fx, "w", "last full chunk cut off");
    // Appending a copy of the last (final, full) record.
    let mut b = good.clone();
    b.extend_from_slice(&good[format::record_offset(1) as usize..]);
    std::fs::write(&path, &b).unwrap();
    assert_rejected(&fx, "w", "final record duplicated");

    // An empty file is one empty record; cutting it is detected.
    put(&fx.store, "e", b"");
    let good = fx.raw_bytes("e");
    std::fs::write(fx.raw("e"), &good[..HEADER_LEN]).unwrap();
    assert_rejected(&fx, "e", "empty record cut off");
}

#[test]
fn chunks_from_another_file_or_key_are_rejected() {
    let fx = Fixture::new();
    let plain = bytes(2 * CHUNK_SIZE + 100, 1);
    put(&fx.store, "a", &plain);
    put(&fx.store, "b", &plain);
    let a = fx.raw_bytes("a");
    let b = fx.raw_bytes("b");
    // Record 1 of b moved into a at the same index.
    let r1 = format::record_offset(1) as usize;
    let mut t = a.clone();
    t[r1..r1 + FULL_RECORD_LEN].copy_from_slice(&b[r1..r1 + FULL_RECORD_LEN]);
    std::fs::write(fx.raw("a"), &t).unwrap();
    assert_rejected(&fx, "a", "record moved from another file");
    // b's header on a's records.
    let mut t = a.clone();
    t[..HEADER_LEN].copy_from_slice(&b[..HEADER_LEN]);
    std::fs::write(fx.raw("a"), &t).unwrap();
    assert_rejected(&fx, "a", "header from another file");

    // Another user's key.
    std::fs::write(fx.raw("a"), &a).unwrap();
    let other = UserStore::new(
        Arc::new(LocalStorage::open_root(fx.dir.path()).unwrap()),
        Arc::new(DataKey::from_bytes([0xAA; 32])),
    );
    let r = other.open(&p("a"), ro()).and_then(|f| read_all(&f));
    assert!(is_integrity(&r), "a file opened under another key");

    // A plain (non-Dropzone) file.
    std::fs::write(
        fx.raw("plain"),
        b"just some text that is not encrypted at all",
    )
    .unwrap();
    assert_rejected(&fx, "plain", "plaintext file");
    std::fs::write(fx.raw("empty"), b"").unwrap();
    assert_rejected(&fx, "empty", "zero-length file");
}

// ---------------------------------------------------------------------------
// Crash safety: staged uploads
// ---------------------------------------------------------------------------

#[test]
fn interrupted_staged_upload_keeps_the_previous_version() {
    let fx = Fixture::new();
    let old = bytes(CHUNK_SIZE + 500, 1);
    put(&fx.store, "doc", &old);
    let names_before = fx.raw_names();

    // Dropped without close (session ended): discarded.
    let f = fx.store.open(&p("doc"), create_trunc()).unwrap();
    write_in_pieces(&f, &bytes(3 * CHUNK_SIZE, 2), &[32 * 1024]);
    // Meanwhile the old version is what others see.
    assert_bytes(&get(&fx.store, "doc").unwrap(), &old, "get");
    assert_eq!(
        fx.store.stat(&p("doc"), true).unwrap().size,
        old.len() as u64
    );
    drop(f);
    assert_bytes(&get(&fx.store, "doc").unwrap(), &old, "get");
    assert_eq!(fx.raw_names(), names_before, "staged file left behind");
    let listed: Vec<String> = fx
        .store
        .read_dir(&ObjectPath::root())
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(listed, vec!["doc".to_owned()]);

    // Aborted explicitly: same.
    let f = fx.store.open(&p("doc"), create_trunc()).unwrap();
    f.write_at(0, b"new").unwrap();
    f.abort();
    assert_bytes(&get(&fx.store, "doc").unwrap(), &old, "get");
    assert_eq!(fx.raw_names(), names_before);

    // A brand new file: visible (empty) while it is being written, gone
    // again when it is dropped without close.
    let f = fx.store.open(&p("new"), create_trunc()).unwrap();
    f.write_at(0, b"partial").unwrap();
    assert_eq!(fx.store.stat(&p("new"), true).unwrap().size, 0);
    drop(f);
    assert!(fx.store.stat(&p("new"), true).unwrap_err().is_not_found());
    assert_eq!(fx.raw_names(), names_before);

    // A process crash (no destructor runs): the staged object stays on disk
    // but is invisible to clients, and the previous version is intact.
    let f = fx.store.open(&p("doc"), create_trunc()).unwrap();
    write_in_pieces(&f, &bytes(2 * CHUNK_SIZE, 3), &[32 * 1024]);
    std::mem::forget(f);
    assert_bytes(&get(&fx.store, "doc").unwrap(), &old, "get");
    let listed: Vec<String> = fx
        .store
        .read_dir(&ObjectPath::root())
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(listed, vec!["doc".to_owned()]);
    assert!(
        fx.raw_names()
            .iter()
            .any(|n| n.starts_with(super::storage::RESERVED_PREFIX)),
        "expected the leaked staged object on disk"
    );

    // A completed upload replaces it.
    let new = bytes(100, 4);
    put(&fx.store, "doc", &new);
    assert_bytes(&get(&fx.store, "doc").unwrap(), &new, "get");
}

#[test]
fn staged_upload_keeps_permissions_and_applies_deferred_ones() {
    let fx = Fixture::new();
    put(&fx.store, "x", b"one");
    fx.store.set_permissions(&p("x"), 0o600).unwrap();
    put(&fx.store, "x", b"two");
    assert_eq!(fx.store.stat(&p("x"), true).unwrap().permissions, 0o600);
    let f = fx.store.open(&p("x"), create_trunc()).unwrap();
    f.write_at(0, b"three").unwrap();
    f.set_permissions(0o640).unwrap();
    f.set_times(1_000_000, 2_000_000).unwrap();
    assert_eq!(f.attributes().unwrap().permissions, 0o640);
    f.close().unwrap();
    let a = fx.store.stat(&p("x"), true).unwrap();
    assert_eq!(
        (a.permissions, a.atime, a.mtime),
        (0o640, 1_000_000, 2_000_000)
    );
    assert_bytes(&get(&fx.store, "x").unwrap(), b"three", "get");
}

// ---------------------------------------------------------------------------
// Crash safety: torn in-place writes, through a failing storage double
// ---------------------------------------------------------------------------

/// How the write that "crashes" behaves.
#[derive(Clone, Copy, Debug)]
enum CrashMode {
    /// The failing call writes nothing.
    Clean,
    /// The failing call writes the first half of its buffer (a torn write)
    /// or, for `set_len`, nothing.
    Torn,
}

/// Counts `write_all_at`/`set_len` calls; once `budget` calls have gone
/// through, every further one fails (the process has "crashed").
struct Budget {
    left: AtomicUsize,
    mode: CrashMode,
}

impl Budget {
    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn crash() -> io::Error {
    io::Error::other("simulated crash")
}

struct FailingStorage {
    inner: LocalStorage,
    budget: Arc<Budget>,
}

struct FailingBlob {
    inner: Box<dyn Blob>,
    budget: Arc<Budget>,
}

impl Blob for FailingBlob {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.budget.take() {
            return self.inner.write_all_at(buf, offset);
        }
        if let CrashMode::Torn = self.budget.mode
            && buf.len() > 1
        {
            self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
        }
        Err(crash())
    }
    fn meta(&self) -> io::Result<Meta> {
        self.inner.meta()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.budget.take() {
            return self.inner.set_len(len);
        }
        Err(crash())
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn set_permissions(&self, mode: u32) -> io::Result<()> {
        self.inner.set_permissions(mode)
    }
    fn set_times(&self, atime: i64, mtime: i64) -> io::Result<()> {
        self.inner.set_times(atime, mtime)
    }
}

impl Storage for FailingStorage {
    fn open(&self, path: &ObjectPath, access: Access) -> io::Result<Box<dyn Blob>> {
        Ok(Box::new(FailingBlob {
            inner: self.inner.open(path, access)?,
            budget: self.budget.clone(),
        }))
    }
    fn stage(&self, target: &ObjectPath) -> io::Result<Staged> {
        let s = self.inner.stage(target)?;
        Ok(Staged {
            blob: Box::new(FailingBlob {
                inner: s.blob,
                budget: self.budget.clone(),
            }),
            token: s.token,
        })
    }
    fn commit(&self, token: StagedToken, exclusive: bool) -> io::Result<()> {
        if self.budget.take() {
            return self.inner.commit(token, exclusive);
        }
        self.inner.discard(token);
        Err(crash())
    }
    fn discard(&self, token: StagedToken) {
        self.inner.discard(token)
    }
    fn meta(&self, path: &ObjectPath, follow: bool) -> io::Result<Meta> {
        self.inner.meta(path, follow)
    }
    fn read_dir(&self, path: &ObjectPath) -> io::Result<Vec<(String, Meta)>> {
        self.inner.read_dir(path)
    }
    fn open_dir(&self, path: &ObjectPath) -> io::Result<Box<dyn crate::store::storage::DirReader>> {
        self.inner.open_dir(path)
    }
    fn mkdir(&self, path: &ObjectPath, mode: u32) -> io::Result<()> {
        self.inner.mkdir(path, mode)
    }
    fn rmdir(&self, path: &ObjectPath) -> io::Result<()> {
        self.inner.rmdir(path)
    }
    fn remove(&self, path: &ObjectPath) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &ObjectPath, to: &ObjectPath, replace: bool) -> io::Result<()> {
        self.inner.rename(from, to, replace)
    }
    fn hard_link(&self, existing: &ObjectPath, link: &ObjectPath) -> io::Result<()> {
        self.inner.hard_link(existing, link)
    }
    fn symlink(&self, target: &str, link: &ObjectPath) -> io::Result<()> {
        self.inner.symlink(target, link)
    }
    fn read_link(&self, path: &ObjectPath) -> io::Result<String> {
        self.inner.read_link(path)
    }
    fn set_permissions(&self, path: &ObjectPath, mode: u32) -> io::Result<()> {
        self.inner.set_permissions(path, mode)
    }
    fn set_times(&self, path: &ObjectPath, atime: i64, mtime: i64) -> io::Result<()> {
        self.inner.set_times(path, atime, mtime)
    }
    fn space(&self, path: &ObjectPath) -> io::Result<SpaceInfo> {
        self.inner.space(path)
    }
}

/// What a reader may see after a crash.
#[derive(Clone, Copy)]
enum Accept {
    /// Exactly the old or the new content (or an integrity error).
    OldOrNew,
    /// Each 64 KiB chunk from the old or the new content (a write spanning
    /// several chunks rewrites them one by one, like a multi-block write to
    /// a plain file), or an integrity error.
    ChunkwiseOldOrNew,
}

fn chunkwise_mix(got: &[u8], old: &[u8], new: &[u8]) -> bool {
    if got.len() != old.len() && got.len() != new.len() {
        return false;
    }
    got.chunks(CHUNK_SIZE).enumerate().all(|(i, c)| {
        let s = i * CHUNK_SIZE;
        let e = s + c.len();
        old.get(s..e) == Some(c) || new.get(s..e) == Some(c)
    })
}

/// Runs `op` on a fresh copy of `old` opened in place, crashing after
/// 0, 1, 2, ... storage writes until it completes; after each crash, the
/// file read through the real storage must be acceptable.
fn crash_at_every_step(
    what: &str,
    old: &[u8],
    new: &[u8],
    accept: Accept,
    op: impl Fn(&EncryptedFile) -> Result<(), StoreError>,
) {
    for mode in [CrashMode::Clean, CrashMode::Torn] {
        let fx = Fixture::new();
        let mut outcomes = (0, 0, 0); // (old, new, integrity)
        let mut n = 0;
        loop {
            put(&fx.store, "c", old);
            let budget = Arc::new(Budget {
                left: AtomicUsize::new(n),
                mode,
            });
            let failing = UserStore::new(
                Arc::new(FailingStorage {
                    inner: LocalStorage::open_root(fx.dir.path()).unwrap(),
                    budget: budget.clone(),
                }),
                key(),
            );
            let result = failing
                .open(&p("c"), rw())
                .and_then(|f| op(&f).and_then(|()| f.close()));
            // Every handle of the failing store is gone here (dropped in the
            // closure), so the shared open-file state is gone too and the
            // real store reads the disk afresh.
            drop(failing);
            let completed = result.is_ok();

            let read = get(&fx.store, "c");
            let _ = fx.store.stat(&p("c"), true).unwrap();
            match &read {
                Ok(got) if got == old => outcomes.0 += 1,
                Ok(got) if got == new => outcomes.1 += 1,
                Ok(got)
                    if matches!(accept, Accept::ChunkwiseOldOrNew)
                        && chunkwise_mix(got, old, new) => {}
                Ok(got) => panic!(
                    "{what} ({mode:?}), crash after {n} writes: read {} bytes that are neither old ({}) nor new ({})",
                    got.len(),
                    old.len(),
                    new.len()
                ),
                Err(StoreError::Integrity(_)) => outcomes.2 += 1,
                Err(e) => panic!("{what} ({mode:?}), crash after {n} writes: unexpected error {e}"),
            }
            if completed {
                assert_eq!(
                    read.as_deref().ok(),
                    Some(new),
                    "{what}: completed but not new"
                );
                break;
            }
            n += 1;
            assert!(n < 100, "{what}: never completes");
        }
        // The old content must survive a crash before the first write (a
        // torn first write may instead damage it, detectably).
        assert!(
            matches!(mode, CrashMode::Torn) || outcomes.0 >= 1,
            "{what} ({mode:?}): no crash point kept the old content"
        );
        eprintln!(
            "{what} ({mode:?}): {} crash points: {} old, {} new, {} integrity errors",
            n, outcomes.0, outcomes.1, outcomes.2
        );
    }
}

#[test]
fn torn_append_across_a_chunk_boundary() {
    let old = bytes(CHUNK_SIZE - 100, 1);
    let data = bytes(300, 2);
    let mut new = old.clone();
    new.extend_from_slice(&data);
    crash_at_every_step(
        "append across a boundary",
        &old,
        &new,
        Accept::OldOrNew,
        |f| f.write_at(old.len() as u64, &data),
    );

    // Appending several chunks in 32 KiB writes.
    let old = bytes(CHUNK_SIZE + 50, 3);
    let data = bytes(2 * CHUNK_SIZE + 10, 4);
    let mut new = old.clone();
    new.extend_from_slice(&data);
    crash_at_every_step("append of two chunks", &old, &new, Accept::OldOrNew, |f| {
        for (i, piece) in data.chunks(32 * 1024).enumerate() {
            f.write_at((old.len() + i * 32 * 1024) as u64, piece)?;
        }
        Ok(())
    });

    // A small append within the last chunk that grows its record.
    let old = bytes(16, 5);
    let mut new = old.clone();
    new.push(9);
    crash_at_every_step(
        "append within the last chunk",
        &old,
        &new,
        Accept::OldOrNew,
        |f| f.write_at(16, &[9]),
    );
}

#[test]
fn torn_extend_via_set_len() {
    let old = bytes(1000, 1);
    let mut new = old.clone();
    new.resize(2 * CHUNK_SIZE + 5, 0);
    crash_at_every_step("extend across chunks", &old, &new, Accept::OldOrNew, |f| {
        f.set_len(new.len() as u64)
    });

    let old = bytes(10, 2);
    let mut new = old.clone();
    new.resize(40, 0);
    crash_at_every_step("extend within a chunk", &old, &new, Accept::OldOrNew, |f| {
        f.set_len(40)
    });

    let old = bytes(CHUNK_SIZE, 3);
    let mut new = old.clone();
    new.resize(CHUNK_SIZE + 1, 0);
    crash_at_every_step(
        "extend a full chunk by one",
        &old,
        &new,
        Accept::OldOrNew,
        |f| f.set_len(new.len() as u64),
    );
}

#[test]
fn torn_shrink_via_set_len() {
    let old = bytes(3 * CHUNK_SIZE + 7, 1);
    for n in [CHUNK_SIZE + 3, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE, 1, 0] {
        let new = old[..n].to_vec();
        crash_at_every_step(
            &format!("shrink to {n}"),
            &old,
            &new,
            Accept::OldOrNew,
            |f| f.set_len(n as u64),
        );
    }
    let old = bytes(1000, 2);
    for n in [999, 10] {
        let new = old[..n].to_vec();
        crash_at_every_step(
            &format!("shrink 1000 to {n}"),
            &old,
            &new,
            Accept::OldOrNew,
            |f| f.set_len(n as u64),
        );
    }
}

#[test]
fn torn_write_into_the_middle() {
    let old = bytes(3 * CHUNK_SIZE + 7, 1);
    let data = bytes(5000, 2);
    let at = CHUNK_SIZE + 1000;
    let mut new = old.clone();
    new[at..at + data.len()].copy_from_slice(&data);
    crash_at_every_step(
        "write inside one chunk",
        &old,
        &new,
        Accept::OldOrNew,
        |f| f.write_at(at as u64, &data),
    );

    // A write spanning chunks 0, 1 and 2: each chunk is old or new.
    let data = bytes(CHUNK_SIZE + 200, 3);
    let at = CHUNK_SIZE - 100;
    let mut new = old.clone();
    new[at..at + data.len()].copy_from_slice(&data);
    crash_at_every_step(
        "write spanning three chunks",
        &old,
        &new,
        Accept::ChunkwiseOldOrNew,
        |f| f.write_at(at as u64, &data),
    );
}

#[test]
fn failed_writes_are_reported_and_never_give_wrong_data_later() {
    // After an I/O error (e.g. a full disk) the session goes on with the same
    // handle; whatever it reads later is right or an error.
    let old = bytes(2 * CHUNK_SIZE + 100, 1);
    for n in 0..6 {
        let fx = Fixture::new();
        put(&fx.store, "c", &old);
        let budget = Arc::new(Budget {
            left: AtomicUsize::new(n),
            mode: CrashMode::Clean,
        });
        let failing = UserStore::new(
            Arc::new(FailingStorage {
                inner: LocalStorage::open_root(fx.dir.path()).unwrap(),
                budget,
            }),
            key(),
        );
        let f = failing.open(&p("c"), rw()).unwrap();
        let mut ok = true;
        ok &= f.write_at(10, b"first").is_ok();
        ok &= f.write_at(3 * C + 10, b"far").is_ok();
        ok &= f.set_len(C + 1).is_ok();
        let r = read_all(&f);
        if ok {
            let mut expect = old[..CHUNK_SIZE + 1].to_vec();
            expect[10..15].copy_from_slice(b"first");
            assert_bytes(&r.unwrap(), &expect, "after failed steps");
        } else if let Ok(got) = &r {
            // Some step failed: the content must still be one that the
            // successful steps could produce; at least never garbage the
            // length of which disagrees with size().
            assert_eq!(got.len() as u64, f.size(), "n={n}");
        }
        drop(f);
        drop(failing);
        let after = get(&fx.store, "c");
        assert!(after.is_ok() || is_integrity(&after), "n={n}");
    }
}

// ---------------------------------------------------------------------------
// Two handles, two sessions
// ---------------------------------------------------------------------------

#[test]
fn two_sessions_see_each_others_writes_before_close() {
    let fx = Fixture::new();
    let other = Fixture::store_on(&fx.dir);
    let base = bytes(CHUNK_SIZE + 10, 1);
    put(&fx.store, "s", &base);

    let w = fx.store.open(&p("s"), rw()).unwrap();
    let r = other.open(&p("s"), ro()).unwrap();
    assert_bytes(&read_all(&r).unwrap(), &base, "read_all");

    w.write_at(5, b"hello").unwrap();
    let tail = bytes(2 * CHUNK_SIZE, 2);
    w.write_at(base.len() as u64, &tail).unwrap();
    let mut expect = base.clone();
    expect[5..10].copy_from_slice(b"hello");
    expect.extend_from_slice(&tail);

    assert_eq!(r.size(), expect.len() as u64);
    assert_eq!(other.stat(&p("s"), true).unwrap().size, expect.len() as u64);
    assert_eq!(r.attributes().unwrap().size, expect.len() as u64);
    assert_bytes(&read_all(&r).unwrap(), &expect, "read_all");
    assert_eq!(r.read_at(5, 5).unwrap(), b"hello");

    // A write through the second session's own writable handle, read back
    // through the first.
    let w2 = other.open(&p("s"), rw()).unwrap();
    w2.set_len(100).unwrap();
    assert_eq!(w.size(), 100);
    w2.write_at(90, b"0123456789").unwrap();
    expect.truncate(90);
    expect.extend_from_slice(b"0123456789");
    let rw1 = fx.store.open(&p("s"), ro()).unwrap();
    assert_bytes(&read_all(&rw1).unwrap(), &expect, "read_all");

    w.close().unwrap();
    w2.close().unwrap();
    assert_bytes(&read_all(&r).unwrap(), &expect, "read_all");
    drop(r);
    drop(rw1);
    assert_bytes(&get(&other, "s").unwrap(), &expect, "get");
}

#[test]
fn concurrent_writers_to_disjoint_regions() {
    let fx = Fixture::new();
    let other = Fixture::store_on(&fx.dir);
    put(&fx.store, "cc", b"");
    // Interleaved 3000-byte blocks (so the writers share chunks): thread A
    // writes the even blocks, thread B the odd ones, both growing the file.
    const BLOCK: usize = 3000;
    const BLOCKS: usize = 200;
    let content = bytes(BLOCK * BLOCKS, 9);
    let a = fx.store.open(&p("cc"), rw()).unwrap();
    let b = other.open(&p("cc"), rw()).unwrap();
    std::thread::scope(|s| {
        for (f, parity) in [(&a, 0), (&b, 1)] {
            let content = &content;
            s.spawn(move || {
                for i in (parity..BLOCKS).step_by(2) {
                    let off = i * BLOCK;
                    f.write_at(off as u64, &content[off..off + BLOCK]).unwrap();
                }
            });
        }
    });
    assert_bytes(&read_all(&a).unwrap(), &content, "read_all");
    a.close().unwrap();
    b.close().unwrap();
    assert_bytes(&get(&fx.store, "cc").unwrap(), &content, "get");

    // Two threads on two regions far apart, in 32 KiB writes.
    let r1 = bytes(2 * CHUNK_SIZE + 123, 10);
    let r2 = bytes(3 * CHUNK_SIZE + 7, 11);
    let off2 = 5 * CHUNK_SIZE + 77;
    let a = fx.store.open(&p("cc"), rw()).unwrap();
    let b = other.open(&p("cc"), rw()).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for (i, piece) in r1.chunks(32 * 1024).enumerate() {
                a.write_at((i * 32 * 1024) as u64, piece).unwrap();
            }
        });
        s.spawn(|| {
            for (i, piece) in r2.chunks(32 * 1024).enumerate() {
                b.write_at((off2 + i * 32 * 1024) as u64, piece).unwrap();
            }
        });
    });
    a.close().unwrap();
    b.close().unwrap();
    let mut expect = content.clone();
    expect.resize(expect.len().max(off2 + r2.len()), 0);
    expect[..r1.len()].copy_from_slice(&r1);
    expect[off2..off2 + r2.len()].copy_from_slice(&r2);
    assert_bytes(&get(&fx.store, "cc").unwrap(), &expect, "get");
}

// ---------------------------------------------------------------------------
// Open modes and errors
// ---------------------------------------------------------------------------

#[test]
fn exclusive_create_fails_on_an_existing_file() {
    let fx = Fixture::new();
    put(&fx.store, "x", b"data");
    let excl = OpenOptions {
        write: true,
        create: true,
        exclusive: true,
        ..OpenOptions::default()
    };
    match fx.store.open(&p("x"), excl) {
        Err(StoreError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::AlreadyExists),
        other => panic!("expected AlreadyExists, got {:?}", other.err()),
    }
    assert_bytes(&get(&fx.store, "x").unwrap(), b"data", "get");
    // On a new name it works.
    let f = fx.store.open(&p("y"), excl).unwrap();
    f.write_at(0, b"y").unwrap();
    f.close().unwrap();
    assert_bytes(&get(&fx.store, "y").unwrap(), b"y", "get");

    // Two exclusive creates racing: the first takes the name at open (with
    // an empty file), so the second open fails.
    let f1 = fx.store.open(&p("z"), excl).unwrap();
    match fx.store.open(&p("z"), excl) {
        Err(StoreError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::AlreadyExists),
        other => panic!("expected AlreadyExists, got {:?}", other.err()),
    }
    f1.write_at(0, b"one").unwrap();
    f1.close().unwrap();
    assert_bytes(&get(&fx.store, "z").unwrap(), b"one", "get");
    assert_eq!(fx.raw_names(), vec!["x", "y", "z"]);
}

#[test]
fn opening_a_directory_as_a_file_fails() {
    let fx = Fixture::new();
    fx.store.mkdir(&p("d"), None).unwrap();
    for opts in [ro(), rw(), create_trunc()] {
        let r = fx.store.open(&p("d"), opts);
        match r {
            Err(StoreError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EISDIR), "{opts:?}"),
            other => panic!("{opts:?}: expected EISDIR, got {:?}", other.err()),
        }
    }
    assert_eq!(fx.store.stat(&p("d"), true).unwrap().kind, Kind::Dir);
}

#[test]
fn wrong_access_is_refused() {
    let fx = Fixture::new();
    put(&fx.store, "a", b"abc");
    let wo = OpenOptions {
        write: true,
        ..OpenOptions::default()
    };
    let f = fx.store.open(&p("a"), wo).unwrap();
    assert!(matches!(f.read_at(0, 10), Err(StoreError::WrongAccess(_))));
    f.write_at(3, b"d").unwrap();
    f.close().unwrap();

    let f = fx.store.open(&p("a"), ro()).unwrap();
    assert!(matches!(
        f.write_at(0, b"x"),
        Err(StoreError::WrongAccess(_))
    ));
    assert!(matches!(f.set_len(0), Err(StoreError::WrongAccess(_))));
    assert_bytes(&read_all(&f).unwrap(), b"abcd", "read_all");
    drop(f);

    // A write-only staged upload cannot be read either.
    let wo_new = OpenOptions {
        write: true,
        create: true,
        truncate: true,
        ..OpenOptions::default()
    };
    let f = fx.store.open(&p("b"), wo_new).unwrap();
    f.write_at(0, b"x").unwrap();
    assert!(matches!(f.read_at(0, 1), Err(StoreError::WrongAccess(_))));
    f.close().unwrap();

    // Creating needs write access.
    let create_ro = OpenOptions {
        read: true,
        create: true,
        ..OpenOptions::default()
    };
    assert!(matches!(
        fx.store.open(&p("c"), create_ro),
        Err(StoreError::WrongAccess(_))
    ));
    // Missing file without create.
    assert!(matches!(fx.store.open(&p("missing"), ro()), Err(e) if e.is_not_found()));
}

#[test]
fn read_past_the_end_is_empty() {
    let fx = Fixture::new();
    put(&fx.store, "r", &bytes(CHUNK_SIZE + 5, 1));
    let f = fx.store.open(&p("r"), ro()).unwrap();
    assert!(f.read_at(C + 5, 10).unwrap().is_empty());
    assert!(f.read_at(u64::MAX, 10).unwrap().is_empty());
    assert_eq!(f.read_at(C, 100).unwrap().len(), 5);
    let f = fx.store.open(&p("r"), rw()).unwrap();
    assert!(matches!(
        f.write_at(u64::MAX - 1, b"xyz"),
        Err(StoreError::TooLarge { .. })
    ));
}

#[test]
fn set_size_by_path() {
    let fx = Fixture::new();
    let data = bytes(2 * CHUNK_SIZE + 3, 1);
    put(&fx.store, "s", &data);
    fx.store.set_size(&p("s"), 100).unwrap();
    assert_bytes(&get(&fx.store, "s").unwrap(), &data[..100], "get");
    fx.store.set_size(&p("s"), 200).unwrap();
    let mut expect = data[..100].to_vec();
    expect.resize(200, 0);
    assert_bytes(&get(&fx.store, "s").unwrap(), &expect, "get");
    assert_eq!(fx.store.stat(&p("s"), true).unwrap().size, 200);
}

#[test]
fn size_cap_is_enforced_without_damage() {
    use super::file::MAX_FILE_SIZE;
    let fx = Fixture::new();
    put(&fx.store, "big", b"small");
    let f = fx.store.open(&p("big"), rw()).unwrap();
    // A write or extension past the cap fails before anything is written.
    let too_large = |r: Result<(), StoreError>| matches!(r, Err(StoreError::TooLarge { limit }) if limit == MAX_FILE_SIZE);
    assert!(too_large(f.write_at(MAX_FILE_SIZE, b"x")));
    assert!(too_large(f.write_at(MAX_FILE_SIZE - 1, b"xy")));
    assert!(too_large(f.write_at(u64::MAX, b"x")));
    assert!(too_large(f.set_len(MAX_FILE_SIZE + 1)));
    assert_eq!(f.size(), 5);
    f.close().unwrap();
    assert_bytes(
        &get(&fx.store, "big").unwrap(),
        b"small",
        "after refused writes",
    );
    assert_eq!(fx.raw_bytes("big").len() as u64, expected_stored_len(5));
}

// ---------------------------------------------------------------------------
// A failed write is sticky
// ---------------------------------------------------------------------------

/// A disk that is full for one write and then has room again (another file
/// was removed): the upload lost a chunk, so its close must fail and the
/// previous version stay, although the final flush alone would succeed.
#[test]
fn a_staged_upload_with_a_failed_write_is_never_committed() {
    let fx = Fixture::new();
    let old = bytes(1000, 9);
    put(&fx.store, "f", &old);
    let names_before = fx.raw_names();
    // Two writes succeed: the header and chunk 0; chunk 1 fails.
    let budget = Arc::new(Budget {
        left: AtomicUsize::new(2),
        mode: CrashMode::Clean,
    });
    let failing = UserStore::new(
        Arc::new(FailingStorage {
            inner: LocalStorage::open_root(fx.dir.path()).unwrap(),
            budget: budget.clone(),
        }),
        key(),
    );
    let f = failing.open(&p("f"), create_trunc()).unwrap();
    let _ = f.write_at(0, &bytes(3 * CHUNK_SIZE + 10, 10));
    assert!(f.sync().is_err(), "the failed write is not reported");
    budget.left.store(1000, Ordering::SeqCst);
    assert!(
        f.sync().is_err(),
        "the failure is forgotten by a later sync"
    );
    assert!(
        f.close().is_err(),
        "an upload that lost a chunk was committed"
    );
    drop(f);
    drop(failing);
    assert_bytes(
        &get(&fx.store, "f").unwrap(),
        &old,
        "after the failed upload",
    );
    assert_eq!(fx.raw_names(), names_before, "staged file left behind");
}

// ---------------------------------------------------------------------------
// Journal: an interrupted extension is rolled back at the next start
// ---------------------------------------------------------------------------

/// An append crashing after 0, 1, 2, ... storage writes: without recovery
/// the file may end in a chunk that is not final; after
/// `journal::recover` (what the server runs at start) it reads back whole,
/// as the old version or, once the append completed, the new one.
#[test]
fn an_interrupted_append_is_rolled_back_by_recovery() {
    let fx = Fixture::new();
    let old = bytes(CHUNK_SIZE + 5000, 20);
    let extra = bytes(3 * CHUNK_SIZE + 10, 21);
    let mut new = old.clone();
    new.extend_from_slice(&extra);
    let mut rolled_back = 0;
    for n in 0.. {
        put(&fx.store, "log", &old);
        let failing = UserStore::new(
            Arc::new(FailingStorage {
                inner: LocalStorage::open_root(fx.dir.path()).unwrap(),
                budget: Arc::new(Budget {
                    left: AtomicUsize::new(n),
                    mode: CrashMode::Clean,
                }),
            }),
            key(),
        );
        let append = OpenOptions {
            write: true,
            append: true,
            ..OpenOptions::default()
        };
        let result = failing
            .open(&p("log"), append)
            .and_then(|f| f.write_at(0, &extra).and_then(|()| f.close()));
        drop(failing);
        let r = super::journal::recover(fx.dir.path(), std::time::SystemTime::now()).unwrap();
        rolled_back += r.rolled_back;
        assert!(
            !fx.raw_names()
                .iter()
                .any(|n| n.starts_with(super::storage::RESERVED_PREFIX)),
            "crash after {n} writes: a journal or staged file is left"
        );
        let got = get(&fx.store, "log")
            .unwrap_or_else(|e| panic!("crash after {n} writes: unreadable after recovery: {e}"));
        if result.is_ok() {
            assert_bytes(&got, &new, "completed append");
            break;
        }
        assert!(
            got == old || got == new,
            "crash after {n} writes: {} bytes, neither old nor new",
            got.len()
        );
    }
    assert!(rolled_back > 0, "no crash point needed a rollback");
}

/// An append that fails (the disk is full for one write, then has room):
/// once its handle is gone the file is rolled back at once, without
/// waiting for a restart, and no journal is left.
#[test]
fn a_failed_append_is_rolled_back_when_its_last_handle_closes() {
    let fx = Fixture::new();
    let old = bytes(CHUNK_SIZE + 5000, 30);
    put(&fx.store, "log", &old);
    let names_before = fx.raw_names();
    // The journal and the sealed old last record are written; the next
    // write fails.
    let budget = Arc::new(Budget {
        left: AtomicUsize::new(2),
        mode: CrashMode::Clean,
    });
    let failing = UserStore::new(
        Arc::new(FailingStorage {
            inner: LocalStorage::open_root(fx.dir.path()).unwrap(),
            budget: budget.clone(),
        }),
        key(),
    );
    let append = OpenOptions {
        write: true,
        append: true,
        ..OpenOptions::default()
    };
    let f = failing.open(&p("log"), append).unwrap();
    let _ = f.write_at(0, &bytes(3 * CHUNK_SIZE, 31));
    assert!(f.sync().is_err(), "the failed write is not reported");
    budget.left.store(1000, Ordering::SeqCst);
    assert!(f.close().is_err(), "the failed append closed cleanly");
    drop(f);
    drop(failing);
    assert_bytes(
        &get(&fx.store, "log").unwrap(),
        &old,
        "after the failed append",
    );
    assert_eq!(fx.raw_names(), names_before, "journal left behind");
}

// ---------------------------------------------------------------------------
// Bounds: a per-store size limit, and long work stopped by `interrupt`
// ---------------------------------------------------------------------------

/// Names of journals and staged files left in the root.
fn leftovers(fx: &Fixture) -> Vec<String> {
    fx.raw_names()
        .into_iter()
        .filter(|n| n.starts_with(super::storage::RESERVED_PREFIX))
        .collect()
}

#[test]
fn the_size_limit_is_enforced_for_writes_and_extensions() {
    let limit = 3 * C + 10;
    let fx = Fixture::new();
    let store = Fixture::store_on(&fx.dir).with_max_file_size(limit);
    assert_eq!(store.max_file_size(), limit);
    let old = bytes(1000, 40);
    put(&store, "f", &old);
    let f = store.open(&p("f"), rw()).unwrap();
    let refused = |r: Result<(), StoreError>| match r {
        Err(e @ StoreError::TooLarge { .. }) => e.to_string(),
        other => panic!("not refused for its size: {other:?}"),
    };
    let message = refused(f.write_at(limit, b"x"));
    assert_eq!(
        message,
        "the file would exceed the server's 192.0 KiB size limit"
    );
    refused(f.write_at(1 << 30, b"x"));
    refused(f.set_len(limit + 1));
    refused(store.set_size(&p("f"), limit + 1));
    // Nothing was written for the refused requests.
    assert_eq!(f.size(), 1000);
    assert_eq!(fx.raw_bytes("f").len() as u64, expected_stored_len(1000));
    assert!(leftovers(&fx).is_empty());
    // Up to the limit is fine, by a write or an extension.
    f.write_at(limit - 1, b"y").unwrap();
    f.set_len(limit - 5).unwrap();
    f.set_len(limit).unwrap();
    f.close().unwrap();
    let mut want = old.clone();
    want.resize(limit as usize, 0);
    assert_bytes(&get(&store, "f").unwrap(), &want, "grown to the limit");

    // An upload past the limit fails at the write that crosses it, and the
    // previous version stays.
    let up = store.open(&p("f"), create_trunc()).unwrap();
    up.write_at(0, &bytes(3 * CHUNK_SIZE, 41)).unwrap();
    refused(up.write_at(3 * C, &bytes(CHUNK_SIZE, 42)));
    // Closing it does not store the cut-off rest.
    refused(up.close());
    drop(up);
    assert_bytes(&get(&store, "f").unwrap(), &want, "after a refused upload");

    // With the limit lowered below a file's size, the file can still be
    // written within its size and shrunk, not grown.
    let lower = Fixture::store_on(&fx.dir).with_max_file_size(100);
    let f = lower.open(&p("f"), rw()).unwrap();
    f.write_at(limit - 3, b"zzz").unwrap();
    refused(f.write_at(limit - 3, b"zzzz"));
    f.set_len(limit - 1).unwrap();
    f.close().unwrap();
    assert_eq!(lower.stat(&p("f"), true).unwrap().size, limit - 1);
    // A limit above the store's cap is the cap.
    let high = Fixture::store_on(&fx.dir).with_max_file_size(u64::MAX);
    assert_eq!(high.max_file_size(), super::file::MAX_FILE_SIZE);
}

/// A store whose work is stopped before a long extension starts: the
/// extension fails as interrupted, nothing of it is on disk, and the file
/// (and what was written through the handle before) is intact.
#[test]
fn an_interrupted_extension_leaves_the_file_as_it_was() {
    let fx = Fixture::new();
    let old = bytes(CHUNK_SIZE + 300, 50);
    for how in ["write", "set_len", "set_size"] {
        put(&fx.store, "f", &old);
        let names = fx.raw_names();
        let store = Fixture::store_on(&fx.dir);
        let f = store.open(&p("f"), rw()).unwrap();
        store.interrupt();
        let r = match how {
            "write" => f.write_at(1 << 30, b"x"),
            "set_len" => f.set_len(1 << 30),
            _ => store.set_size(&p("f"), 1 << 30),
        };
        assert!(matches!(r, Err(StoreError::Interrupted)), "{how}: {r:?}");
        assert_eq!(
            r.unwrap_err().to_string(),
            "operation interrupted: the session is ending"
        );
        assert_eq!(f.size(), old.len() as u64, "{how}");
        // Short work goes on: the stop is for gaps and copies.
        f.write_at(10, b"still writable").unwrap();
        f.close().unwrap();
        drop(f);
        let mut want = old.clone();
        want[10..24].copy_from_slice(b"still writable");
        assert_bytes(&get(&fx.store, "f").unwrap(), &want, how);
        assert_eq!(
            fx.raw_bytes("f").len() as u64,
            expected_stored_len(old.len()),
            "{how}: the gap was not cut off"
        );
        assert_eq!(fx.raw_names(), names, "{how}: a journal was left");
    }
}

/// An appending writer whose journal is active (its last chunk is only in
/// its cache) and an upload both get an interrupted gap: what they wrote
/// before stays, and closes cleanly.
#[test]
fn an_interrupted_gap_keeps_earlier_writes_of_the_handle() {
    let fx = Fixture::new();
    let old = bytes(CHUNK_SIZE + 300, 51);
    put(&fx.store, "log", &old);
    let store = Fixture::store_on(&fx.dir);
    let f = store
        .open(
            &p("log"),
            OpenOptions {
                read: true,
                write: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
    let extra = bytes(2 * CHUNK_SIZE + 7, 52);
    f.write_at(old.len() as u64, &extra).unwrap();
    let up = store.open(&p("new"), create_trunc()).unwrap();
    let fresh = bytes(CHUNK_SIZE + 9, 53);
    up.write_at(0, &fresh).unwrap();
    store.interrupt();
    assert!(matches!(
        f.write_at(1 << 30, b"x"),
        Err(StoreError::Interrupted)
    ));
    assert!(matches!(
        up.write_at(1 << 30, b"x"),
        Err(StoreError::Interrupted)
    ));
    f.close().unwrap();
    up.close().unwrap();
    drop((f, up));
    let mut want = old.clone();
    want.extend_from_slice(&extra);
    assert_bytes(&get(&fx.store, "log").unwrap(), &want, "append");
    assert_bytes(&get(&fx.store, "new").unwrap(), &fresh, "upload");
    assert!(leftovers(&fx).is_empty(), "{:?}", leftovers(&fx));
    let r = super::journal::recover(fx.dir.path(), std::time::SystemTime::now()).unwrap();
    assert_eq!(r.rolled_back, 0);
}

/// The stop signal reaches an extension already under way: a SETSTAT-like
/// extension to 16 GiB on another thread, interrupted once some of its gap
/// is on disk, stops there and cuts the gap off again; the file reads back
/// as before. Another store (another session of the same user) on the same
/// file is not stopped.
#[test]
fn interrupt_stops_an_extension_under_way() {
    let fx = Fixture::new();
    let old = bytes(5000, 54);
    put(&fx.store, "f", &old);
    let server = super::StopSignal::new();
    let store = Arc::new(Fixture::store_on(&fx.dir).with_stop_signal(server.child()));
    let other = Fixture::store_on(&fx.dir).with_stop_signal(server.child());
    let f = store.open(&p("f"), rw()).unwrap();
    let worker = std::thread::spawn(move || f.set_len(16 << 30));
    let raw = fx.raw("f");
    let grown = |at_least: u64| std::fs::metadata(&raw).unwrap().len() >= at_least;
    while !grown(4 << 20) {
        assert!(!worker.is_finished(), "the extension ended early");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    store.interrupt();
    let r = worker.join().unwrap();
    assert!(matches!(r, Err(StoreError::Interrupted)), "{r:?}");
    assert_eq!(
        std::fs::metadata(&raw).unwrap().len(),
        expected_stored_len(old.len())
    );
    assert_bytes(&get(&fx.store, "f").unwrap(), &old, "after the interrupt");
    assert!(leftovers(&fx).is_empty(), "{:?}", leftovers(&fx));
    // The other session's store still works, up to the server's stop.
    other.set_size(&p("f"), 3 * C).unwrap();
    server.raise();
    assert!(matches!(
        other.set_size(&p("f"), 1 << 30),
        Err(StoreError::Interrupted)
    ));
    let mut want = old.clone();
    want.resize(3 * CHUNK_SIZE, 0);
    assert_bytes(&get(&fx.store, "f").unwrap(), &want, "after the other");
}
