//! Store throughput against the raw crypto it is built on.
//!
//! Run with `cargo bench --bench store` (release profile). In one run, on one
//! core, it measures:
//!
//! - raw: AES-256-CBC encrypt + HMAC-SHA256 over 64 KiB buffers with the
//!   `aes`/`cbc`/`hmac`/`sha2` crates directly, and HMAC verify + decrypt;
//! - format: `format::encode_chunk` / `format::decode_chunk` over the same
//!   buffers (adds framing, a copy, a fresh HMAC key schedule per record);
//! - store: a file written sequentially in 32 KiB writes through
//!   `UserStore`/`EncryptedFile` (as OpenSSH's sftp does), closed (staged,
//!   fsynced, renamed), then read back in 32 KiB reads, in a temporary
//!   directory on /dev/shm when it exists, so the disk is not what is timed.
//!
//! Each figure is the median of 3 repetitions. `DZ_BENCH_MIB` sets the data
//! size (default 256 MiB), e.g. for a quick profile under callgrind.

// A benchmark aborts on any failure; there is no peer to protect.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use dropzone::keys::DataKey;
use dropzone::store::format::{self, CHUNK_SIZE, FileId, FileKeys};
use dropzone::store::storage::{LocalStorage, ObjectPath};
use dropzone::store::{OpenOptions, UserStore};

type HmacSha256 = Hmac<Sha256>;

/// Size of one read or write request, as OpenSSH's sftp client sends them.
const IO_SIZE: usize = 32 * 1024;
const REPETITIONS: usize = 3;

fn total_bytes() -> usize {
    let mib = std::env::var("DZ_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(256);
    (mib << 20).max(CHUNK_SIZE)
}

/// Random-looking plaintext (xorshift), so nothing compresses or shortcuts.
fn plaintext(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// User and system CPU time of this process so far, in clock ticks (from
/// /proc/self/stat; `None` where there is no procfs).
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// Runs `f` (which returns the duration it measured) REPETITIONS times,
/// prints every run and the share of CPU time spent in the kernel, and
/// returns the median throughput for `bytes`.
fn measure(what: &str, bytes: usize, mut f: impl FnMut() -> Duration) -> f64 {
    let before = cpu_ticks();
    let runs: Vec<f64> = (0..REPETITIONS).map(|_| mib_per_s(bytes, f())).collect();
    let kernel = match (before, cpu_ticks()) {
        (Some((u0, s0)), Some((u1, s1))) if u1 + s1 > u0 + s0 => {
            format!(
                "{:>3.0}%",
                100.0 * (s1 - s0) as f64 / ((u1 - u0) + (s1 - s0)) as f64
            )
        }
        _ => "   ?".to_owned(),
    };
    let shown: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
    let m = median(runs);
    println!(
        "{what:<40} {m:>7.0} {kernel:>7}   (runs: {})",
        shown.join(", ")
    );
    m
}

/// Whether the phase `name` runs: `DZ_BENCH_ONLY` (comma-separated among
/// raw, format, store) restricts the run, e.g. to profile one phase.
fn enabled(name: &str) -> bool {
    match std::env::var("DZ_BENCH_ONLY") {
        Ok(only) => only.split(',').any(|p| p.trim() == name),
        Err(_) => true,
    }
}

fn raw_encrypt(total: usize, key: &[u8; 32], mac_key: &[u8; 32]) -> Duration {
    let mut buf = plaintext(CHUNK_SIZE);
    let mut iv = [7u8; 16];
    let start = Instant::now();
    for i in 0..total / CHUNK_SIZE {
        iv[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let enc = cbc::Encryptor::<Aes256>::new(key.into(), &iv.into());
        let n = buf.len();
        enc.encrypt_padded::<NoPadding>(&mut buf, n)
            .expect("block-aligned buffer");
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(mac_key).expect("any key length");
        mac.update(&iv);
        mac.update(&buf);
        black_box(mac.finalize().into_bytes());
    }
    start.elapsed()
}

fn raw_decrypt(total: usize, key: &[u8; 32], mac_key: &[u8; 32]) -> Duration {
    let mut buf = plaintext(CHUNK_SIZE);
    let tag = [0u8; 32];
    let iv = [7u8; 16];
    let start = Instant::now();
    for _ in 0..total / CHUNK_SIZE {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(mac_key).expect("any key length");
        mac.update(&iv);
        mac.update(&buf);
        // The tag is wrong on purpose (the buffer changes every round); the
        // constant-time comparison costs the same either way.
        black_box(mac.verify_slice(&tag).is_ok());
        let dec = cbc::Decryptor::<Aes256>::new(key.into(), &iv.into());
        dec.decrypt_padded::<NoPadding>(&mut buf)
            .expect("block-aligned buffer");
        black_box(&buf);
    }
    start.elapsed()
}

fn format_encode(total: usize, keys: &FileKeys, id: &FileId) -> Duration {
    let pt = plaintext(CHUNK_SIZE);
    let mut out = Vec::with_capacity(format::FULL_RECORD_LEN);
    let start = Instant::now();
    for i in 0..total / CHUNK_SIZE {
        let mut iv = [7u8; 16];
        iv[..8].copy_from_slice(&(i as u64).to_le_bytes());
        out.clear();
        format::encode_chunk(keys, id, i as u64, false, &pt, &iv, &mut out);
        black_box(&out);
    }
    start.elapsed()
}

fn format_encode_batched(total: usize, keys: &FileKeys, id: &FileId) -> Duration {
    let pt = plaintext(CHUNK_SIZE);
    let mut outs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| Vec::with_capacity(format::FULL_RECORD_LEN))
        .collect();
    let start = Instant::now();
    for first in (0..total / CHUNK_SIZE).step_by(BATCH) {
        let mut batch: Vec<format::ChunkToEncode<'_>> = outs
            .iter_mut()
            .enumerate()
            .map(|(j, out)| {
                out.clear();
                let mut iv = [7u8; 16];
                iv[..8].copy_from_slice(&((first + j) as u64).to_le_bytes());
                format::ChunkToEncode {
                    index: (first + j) as u64,
                    is_final: false,
                    plaintext: &pt,
                    iv,
                    out,
                }
            })
            .collect();
        format::encode_chunks(keys, id, &mut batch);
        black_box(&outs);
    }
    start.elapsed()
}

/// Chunks encoded together by `format_encode_batched`, as the store does.
const BATCH: usize = dropzone::store::file::BATCH;

fn format_decode(total: usize, keys: &FileKeys, id: &FileId) -> Duration {
    let pt = plaintext(CHUNK_SIZE);
    let mut record = Vec::new();
    format::encode_chunk(keys, id, 0, false, &pt, &[7u8; 16], &mut record);
    let mut out = Vec::with_capacity(CHUNK_SIZE);
    let start = Instant::now();
    for _ in 0..total / CHUNK_SIZE {
        out.clear();
        format::decode_chunk(keys, id, 0, false, &record, &mut out).expect("valid record");
        black_box(&out);
    }
    start.elapsed()
}

fn store_write(store: &UserStore, path: &ObjectPath, data: &[u8], total: usize) -> Duration {
    let opts = OpenOptions {
        write: true,
        create: true,
        truncate: true,
        ..OpenOptions::default()
    };
    let start = Instant::now();
    let f = store.open(path, opts).expect("open for writing");
    let mut off = 0usize;
    while off < total {
        // Cycle through the plaintext so every 32 KiB piece differs from its
        // neighbours.
        let src = off % data.len();
        let n = IO_SIZE.min(total - off).min(data.len() - src);
        f.write_at(off as u64, &data[src..src + n]).expect("write");
        off += n;
    }
    f.close().expect("close");
    start.elapsed()
}

fn store_read(store: &UserStore, path: &ObjectPath, total: usize) -> Duration {
    let opts = OpenOptions {
        read: true,
        ..OpenOptions::default()
    };
    let start = Instant::now();
    let f = store.open(path, opts).expect("open for reading");
    let mut off = 0u64;
    loop {
        let got = f.read_at(off, IO_SIZE).expect("read");
        if got.is_empty() {
            break;
        }
        off += got.len() as u64;
        black_box(&got);
    }
    assert_eq!(off as usize, total, "read back a different size");
    start.elapsed()
}

fn main() {
    let total = total_bytes();
    let data_key = [0x42u8; 32];
    let id = FileId([9; 16]);
    let keys = FileKeys::derive(&data_key, &id);
    let (enc_key, mac_key) = ([0x11u8; 32], [0x22u8; 32]);

    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("dropzone-bench-")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temporary directory");
    let storage = LocalStorage::open_root(&dir.path().join("root")).expect("storage root");
    let store = UserStore::new(Arc::new(storage), Arc::new(DataKey::from_bytes(data_key)));
    let path = ObjectPath::from_components(["bench.bin"]).expect("valid name");
    // A few MiB of distinct plaintext, cycled through for the whole file.
    let data = plaintext(8 << 20);

    println!(
        "store bench: {} MiB, {} KiB I/O, {} KiB chunks, median of {REPETITIONS}, dir {}",
        total >> 20,
        IO_SIZE >> 10,
        CHUNK_SIZE >> 10,
        dir.path().display()
    );

    // Warm up (CPU frequency, tmpfs pages, allocator).
    raw_encrypt(total.min(32 << 20), &enc_key, &mac_key);
    if enabled("store") {
        store_write(&store, &path, &data, total.min(32 << 20));
    }

    println!("{:<40} {:>7} {:>7}", "", "MiB/s", "kernel");
    let nan = f64::NAN;
    let (mut raw_enc, mut raw_dec, mut fmt_enc, mut fmt_dec) = (nan, nan, nan, nan);
    let (mut store_enc, mut store_dec) = (nan, nan);
    if enabled("raw") {
        raw_enc = measure("raw encrypt (AES-256-CBC + HMAC-SHA256)", total, || {
            raw_encrypt(total, &enc_key, &mac_key)
        });
        raw_dec = measure("raw decrypt (HMAC verify + AES-CBC)", total, || {
            raw_decrypt(total, &enc_key, &mac_key)
        });
    }
    if enabled("format") {
        fmt_enc = measure("format::encode_chunk", total, || {
            format_encode(total, &keys, &id)
        });
        measure("format::encode_chunks (8 at once)", total, || {
            format_encode_batched(total, &keys, &id)
        });
        fmt_dec = measure("format::decode_chunk", total, || {
            format_decode(total, &keys, &id)
        });
    }
    if enabled("store") {
        store_enc = measure("store write (32 KiB writes, close)", total, || {
            store_write(&store, &path, &data, total)
        });
        store_dec = measure("store read (open, 32 KiB reads)", total, || {
            store_read(&store, &path, total)
        });
    }
    println!(
        "ratio format/raw: encrypt {:.2}, decrypt {:.2}",
        fmt_enc / raw_enc,
        fmt_dec / raw_dec
    );
    println!(
        "ratio store/raw:  encrypt {:.2}, decrypt {:.2}",
        store_enc / raw_enc,
        store_dec / raw_dec
    );
}
