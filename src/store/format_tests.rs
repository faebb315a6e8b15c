//! Whole-file tests of [`super::format`]: committed test vectors, round trips
//! and tampering, all through the same decode algorithm a reader uses.
//!
//! The vectors live in `tests/vectors/format_v1.toml`; to regenerate them
//! (only after a deliberate format change) run
//! `DROPZONE_REGEN_VECTORS=1 cargo test --lib store::format_tests`.

use super::format::*;
use proptest::prelude::*;

const DATA_KEY: [u8; 32] = [42; 32];

/// Reads a whole stored file the way a reader does: header, keys, header MAC,
/// layout from the stored length, size from the last record's length field,
/// then every record with its index and final flag.
fn decode_file(dk: &[u8; 32], bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let id = parse_header(bytes)?;
    let keys = FileKeys::derive(dk, &id);
    verify_header(&keys, bytes)?;
    let layout = Layout::from_stored_len(bytes.len() as u64)?;
    let last_start = record_offset(layout.chunks - 1) as usize;
    let mut field = [0u8; LEN_FIELD];
    field.copy_from_slice(&bytes[last_start..last_start + LEN_FIELD]);
    let size = layout.plaintext_len(field)?;
    let mut out = Vec::with_capacity(size as usize);
    for i in 0..layout.chunks {
        let start = record_offset(i) as usize;
        let is_final = i + 1 == layout.chunks;
        let end = if is_final {
            bytes.len()
        } else {
            start + FULL_RECORD_LEN
        };
        decode_chunk(&keys, &id, i, is_final, &bytes[start..end], &mut out)?;
    }
    assert_eq!(
        out.len() as u64,
        size,
        "decoded size differs from the size stat reports"
    );
    Ok(out)
}

/// Number of records of a file with `len` plaintext bytes.
fn chunk_count(len: usize) -> usize {
    len.div_ceil(CHUNK_SIZE).max(1)
}

/// Encodes a whole file; `iv_for(i)` gives the IV of chunk `i`.
fn encode_file_with(
    dk: &[u8; 32],
    id: &FileId,
    pt: &[u8],
    iv_for: impl Fn(u64) -> [u8; BLOCK],
) -> Vec<u8> {
    let keys = FileKeys::derive(dk, id);
    let mut out = encode_header(&keys, id).to_vec();
    let chunks = chunk_count(pt.len());
    for i in 0..chunks {
        let start = i * CHUNK_SIZE;
        let end = (start + CHUNK_SIZE).min(pt.len());
        let index = i as u64;
        encode_chunk(
            &keys,
            id,
            index,
            i + 1 == chunks,
            &pt[start..end],
            &iv_for(index),
            &mut out,
        );
    }
    out
}

/// Encodes a whole file with fresh random IVs, as a writer does.
fn encode_file(dk: &[u8; 32], id: &FileId, pt: &[u8]) -> Vec<u8> {
    encode_file_with(dk, id, pt, |_| {
        let mut iv = [0; BLOCK];
        fill_random(&mut iv);
        iv
    })
}

/// Deterministic plaintext: byte `i` is `i mod 251` (the vectors' rule).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Cheap deterministic pseudo-random bytes (splitmix64).
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn expected_stored_len(len: usize) -> usize {
    let chunks = chunk_count(len);
    HEADER_LEN + (chunks - 1) * FULL_RECORD_LEN + record_len(len - (chunks - 1) * CHUNK_SIZE)
}

/// Asserts that decoding fails with an integrity error.
#[track_caller]
fn assert_integrity(bytes: &[u8], what: &str) {
    match decode_file(&DATA_KEY, bytes) {
        Err(FormatError::Integrity(_)) => {}
        other => panic!("{what}: expected an integrity error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- round trips

#[test]
fn round_trip_at_edge_sizes() {
    let id = FileId([7; FILE_ID_LEN]);
    for len in [
        0,
        1,
        15,
        16,
        17,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 5,
    ] {
        let pt = pseudo_random(len, len as u64);
        let file = encode_file(&DATA_KEY, &id, &pt);
        assert_eq!(file.len(), expected_stored_len(len), "stored size of {len}");
        assert_eq!(
            decode_file(&DATA_KEY, &file).unwrap(),
            pt,
            "round trip of {len}"
        );

        // The size comes from the stored length and four bytes, not the body.
        let layout = Layout::from_stored_len(file.len() as u64).unwrap();
        assert_eq!(layout.chunks, chunk_count(len) as u64);
        let at = record_offset(layout.chunks - 1) as usize;
        let field: [u8; LEN_FIELD] = file[at..at + LEN_FIELD].try_into().unwrap();
        assert_eq!(layout.plaintext_len(field).unwrap(), len as u64);
    }
}

#[test]
fn trailing_zero_bytes_survive_zero_padding() {
    let id = FileId([8; FILE_ID_LEN]);
    for len in [1, 15, 16, 17, 31] {
        let pt = vec![0u8; len];
        let file = encode_file(&DATA_KEY, &id, &pt);
        assert_eq!(decode_file(&DATA_KEY, &file).unwrap(), pt);
    }
}

#[test]
fn every_write_uses_a_fresh_iv() {
    let id = FileId([9; FILE_ID_LEN]);
    let pt = pattern(100);
    let a = encode_file(&DATA_KEY, &id, &pt);
    let b = encode_file(&DATA_KEY, &id, &pt);
    assert_eq!(a[..HEADER_LEN], b[..HEADER_LEN]);
    assert_ne!(a[HEADER_LEN + LEN_FIELD..], b[HEADER_LEN + LEN_FIELD..]);
}

// ------------------------------------------------------------------ tampering

/// A small two-chunk file: one full chunk and a 17-byte last chunk.
fn two_chunk_file() -> (Vec<u8>, Vec<u8>) {
    let pt = pattern(CHUNK_SIZE + 17);
    let file = encode_file(&DATA_KEY, &FileId([1; FILE_ID_LEN]), &pt);
    (pt, file)
}

/// Byte positions to flip: every byte of the header and of every record's
/// length field, IV and MAC, plus the edges of and a stride through each
/// ciphertext.
fn flip_positions(file_len: usize) -> Vec<usize> {
    let mut at: Vec<usize> = (0..HEADER_LEN).collect();
    let layout = Layout::from_stored_len(file_len as u64).unwrap();
    for i in 0..layout.chunks {
        let start = record_offset(i) as usize;
        let end = if i + 1 == layout.chunks {
            file_len
        } else {
            start + FULL_RECORD_LEN
        };
        let ct = start + LEN_FIELD + BLOCK..end - MAC_LEN;
        at.extend(start..ct.start); // length field and IV
        at.extend(ct.start..(ct.start + 2 * BLOCK).min(ct.end));
        at.extend(ct.clone().step_by(61));
        at.extend(ct.end.saturating_sub(2 * BLOCK).max(ct.start)..ct.end);
        at.extend(ct.end..end); // MAC
    }
    at.sort_unstable();
    at.dedup();
    at
}

#[test]
fn single_bit_flip_anywhere_is_detected() {
    let (pt, file) = two_chunk_file();
    assert_eq!(decode_file(&DATA_KEY, &file).unwrap(), pt);
    let positions = flip_positions(file.len());
    assert!(
        positions.len() > 500,
        "sampled only {} positions",
        positions.len()
    );
    for pos in positions {
        // Every bit of the header, one bit (varying with the position) elsewhere.
        let bits: Vec<u8> = if pos < HEADER_LEN {
            (0..8).collect()
        } else {
            vec![(pos % 8) as u8]
        };
        for bit in bits {
            let mut t = file.clone();
            t[pos] ^= 1 << bit;
            let got = decode_file(&DATA_KEY, &t);
            let expected_kind = match pos {
                0..8 => matches!(got, Err(FormatError::BadMagic)),
                8..10 => matches!(got, Err(FormatError::UnsupportedVersion(_))),
                10 => matches!(got, Err(FormatError::UnsupportedChunkSize(_))),
                _ => matches!(got, Err(FormatError::Integrity(_))),
            };
            assert!(
                expected_kind,
                "flip of bit {bit} at byte {pos}: got {got:?}"
            );
        }
    }
}

#[test]
fn swapped_chunks_are_detected() {
    let pt = pseudo_random(3 * CHUNK_SIZE + 5, 1);
    let file = encode_file(&DATA_KEY, &FileId([2; FILE_ID_LEN]), &pt);
    let rec = |i: u64| {
        let s = record_offset(i) as usize;
        s..s + FULL_RECORD_LEN
    };
    // Two full middle chunks.
    let mut t = file.clone();
    let (r0, r1) = (file[rec(0)].to_vec(), file[rec(1)].to_vec());
    t[rec(0)].copy_from_slice(&r1);
    t[rec(1)].copy_from_slice(&r0);
    assert_integrity(&t, "swap of chunks 0 and 1");

    // A full chunk and the (final, full-size) last chunk of a 2-chunk file.
    let file = encode_file(
        &DATA_KEY,
        &FileId([2; FILE_ID_LEN]),
        &pseudo_random(2 * CHUNK_SIZE, 2),
    );
    let mut t = file.clone();
    let (r0, r1) = (file[rec(0)].to_vec(), file[rec(1)].to_vec());
    t[rec(0)].copy_from_slice(&r1);
    t[rec(1)].copy_from_slice(&r0);
    assert_integrity(&t, "swap of chunk 0 and the final chunk 1");

    // A chunk duplicated over its neighbour.
    let mut t = file.clone();
    t[rec(1)].copy_from_slice(&r0);
    assert_integrity(&t, "chunk 0 copied over chunk 1");
}

#[test]
fn chunk_or_header_from_another_file_is_detected() {
    let pt = pseudo_random(2 * CHUNK_SIZE + 100, 3);
    let a = encode_file(&DATA_KEY, &FileId([3; FILE_ID_LEN]), &pt);
    let b = encode_file(&DATA_KEY, &FileId([4; FILE_ID_LEN]), &pt);
    assert_eq!(a.len(), b.len());
    let layout = Layout::from_stored_len(a.len() as u64).unwrap();
    for i in 0..layout.chunks {
        let s = record_offset(i) as usize;
        let e = if i + 1 == layout.chunks {
            a.len()
        } else {
            s + FULL_RECORD_LEN
        };
        let mut t = a.clone();
        t[s..e].copy_from_slice(&b[s..e]);
        assert_integrity(&t, &format!("chunk {i} from another file"));
    }
    let mut t = a.clone();
    t[..HEADER_LEN].copy_from_slice(&b[..HEADER_LEN]);
    assert_integrity(&t, "header from another file");
}

#[test]
fn truncation_is_detected() {
    let pt = pseudo_random(3 * CHUNK_SIZE + 5, 4);
    let file = encode_file(&DATA_KEY, &FileId([5; FILE_ID_LEN]), &pt);
    let chunks = Layout::from_stored_len(file.len() as u64).unwrap().chunks;
    let mut cuts = vec![0, 1, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 1];
    // Every chunk boundary: the file then ends after a non-final record.
    cuts.extend((1..chunks).map(|i| record_offset(i) as usize));
    // Mid-chunk points, some of which leave a well-formed layout.
    for i in 0..chunks {
        let s = record_offset(i) as usize;
        let e = if i + 1 == chunks {
            file.len()
        } else {
            s + FULL_RECORD_LEN
        };
        for c in [
            s + 1,
            s + LEN_FIELD,
            s + LEN_FIELD + BLOCK,
            s + RECORD_OVERHEAD,
            s + RECORD_OVERHEAD + BLOCK,
            s + CHUNK_SIZE / 2,
            e - MAC_LEN,
            e - 2 * BLOCK,
            e - BLOCK,
            e - 1,
        ] {
            if c > s && c < e {
                cuts.push(c);
            }
        }
    }
    for cut in cuts {
        assert!(
            decode_file(&DATA_KEY, &file[..cut]).is_err(),
            "truncation to {cut} bytes"
        );
        if cut >= HEADER_LEN {
            assert_integrity(&file[..cut], &format!("truncation to {cut} bytes"));
        }
    }
}

#[test]
fn shortened_last_chunk_with_consistent_length_field_is_detected() {
    // Cut one ciphertext block out of the last record and fix the length
    // field so that the layout and the size check both pass: the MAC fails.
    let pt = pattern(CHUNK_SIZE + 17);
    let file = encode_file(&DATA_KEY, &FileId([6; FILE_ID_LEN]), &pt);
    let s = record_offset(1) as usize;
    let ct = s + LEN_FIELD + BLOCK;
    let mut t = file[..ct + BLOCK].to_vec();
    t.extend_from_slice(&file[ct + 2 * BLOCK..]);
    t[s..s + LEN_FIELD].copy_from_slice(&16u32.to_be_bytes());
    let layout = Layout::from_stored_len(t.len() as u64).unwrap();
    assert_eq!(
        layout.plaintext_len(16u32.to_be_bytes()).unwrap(),
        CHUNK_SIZE as u64 + 16
    );
    assert_integrity(&t, "last chunk shortened by a block");
}

#[test]
fn appended_bytes_are_detected() {
    let id = FileId([10; FILE_ID_LEN]);
    // A well-formed empty final record, as found at the end of another file.
    let other_empty = encode_file(&DATA_KEY, &FileId([11; FILE_ID_LEN]), &[]);
    let empty_record = other_empty[HEADER_LEN..].to_vec();
    assert_eq!(empty_record.len(), RECORD_OVERHEAD);
    for len in [0, 17, CHUNK_SIZE, CHUNK_SIZE + 17, 2 * CHUNK_SIZE] {
        let file = encode_file(&DATA_KEY, &id, &pseudo_random(len, len as u64));
        let layout = Layout::from_stored_len(file.len() as u64).unwrap();
        let first = record_offset(0) as usize;
        let first_end = if layout.chunks == 1 {
            file.len()
        } else {
            first + FULL_RECORD_LEN
        };
        let last = record_offset(layout.chunks - 1) as usize;
        let tails: Vec<(String, Vec<u8>)> = vec![
            ("1 byte".into(), vec![0]),
            ("16 bytes".into(), vec![0xAA; 16]),
            ("52 zero bytes".into(), vec![0; RECORD_OVERHEAD]),
            (
                "an empty record of another file".into(),
                empty_record.clone(),
            ),
            (
                "a copy of the first record".into(),
                file[first..first_end].to_vec(),
            ),
            ("a copy of the last record".into(), file[last..].to_vec()),
        ];
        for (what, tail) in tails {
            let mut t = file.clone();
            t.extend_from_slice(&tail);
            assert_integrity(&t, &format!("{len}-byte file + {what}"));
        }
    }
}

#[test]
fn empty_record_after_data_is_rejected_even_with_valid_macs() {
    // Only a holder of the keys can build this, but the format still has one
    // encoding per plaintext: a file never ends in an empty record after data.
    let id = FileId([12; FILE_ID_LEN]);
    let keys = FileKeys::derive(&DATA_KEY, &id);
    let mut t = encode_header(&keys, &id).to_vec();
    encode_chunk(
        &keys,
        &id,
        0,
        false,
        &pattern(CHUNK_SIZE),
        &[1; BLOCK],
        &mut t,
    );
    encode_chunk(&keys, &id, 1, true, &[], &[2; BLOCK], &mut t);
    assert_integrity(&t, "empty final record after a full chunk");
}

#[test]
fn wrong_data_key_is_detected() {
    let file = encode_file(&DATA_KEY, &FileId([13; FILE_ID_LEN]), &pattern(1000));
    let mut other = DATA_KEY;
    other[31] ^= 1;
    assert!(matches!(
        decode_file(&other, &file),
        Err(FormatError::Integrity(_))
    ));
}

#[test]
fn not_a_dropzone_file() {
    assert!(matches!(
        decode_file(&DATA_KEY, &[0u8; 200]),
        Err(FormatError::BadMagic)
    ));
    assert!(matches!(
        decode_file(&DATA_KEY, b""),
        Err(FormatError::Integrity(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_round_trip(
        len in prop_oneof![
            0..=3 * CHUNK_SIZE,
            (0usize..=3, 0usize..=34).prop_map(|(c, d)| (c * CHUNK_SIZE + d).saturating_sub(17)),
        ],
        seed in any::<u64>(),
        id in any::<[u8; FILE_ID_LEN]>(),
    ) {
        let pt = pseudo_random(len, seed);
        let file = encode_file(&DATA_KEY, &FileId(id), &pt);
        prop_assert_eq!(file.len(), expected_stored_len(len));
        prop_assert_eq!(decode_file(&DATA_KEY, &file).unwrap(), pt);
    }

    #[test]
    fn prop_bit_flip_fails(
        len in 0..=3 * CHUNK_SIZE,
        seed in any::<u64>(),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let pt = pseudo_random(len, seed);
        let mut file = encode_file(&DATA_KEY, &FileId([14; FILE_ID_LEN]), &pt);
        let at = pos.index(file.len());
        file[at] ^= 1 << bit;
        let got = decode_file(&DATA_KEY, &file);
        prop_assert!(got.is_err(), "flip of bit {} at byte {} of {} went unnoticed", bit, at, file.len());
    }
}

// --------------------------------------------------------------- test vectors

mod vectors {
    use super::*;
    use serde::Deserialize;
    use std::fmt::Write as _;

    const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/format_v1.toml");
    const REGEN_VAR: &str = "DROPZONE_REGEN_VECTORS";

    /// Inputs of the committed vectors; changing them changes the file.
    fn vector_data_key() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }
    fn vector_file_id() -> FileId {
        FileId(std::array::from_fn(|i| 0xA0 + i as u8))
    }
    const CASES: [(&str, usize); 6] = [
        ("empty", 0),
        ("one byte", 1),
        ("one block", 16),
        ("one block and a byte", 17),
        ("one full chunk", CHUNK_SIZE),
        ("two chunks", CHUNK_SIZE + 1),
    ];
    fn vector_iv(case: usize, chunk: u64) -> [u8; BLOCK] {
        std::array::from_fn(|k| (0x40 + case * 0x20 + chunk as usize * 0x10 + k) as u8)
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Vectors {
        format_version: u16,
        chunk_size: usize,
        plaintext_rule: String,
        data_key: String,
        file_id: String,
        enc_key: String,
        mac_key: String,
        case: Vec<Case>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        name: String,
        plaintext_len: usize,
        ivs: Vec<String>,
        file: String,
    }

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(s).expect("vector hex")
    }

    /// HKDF-SHA256 exactly as docs/FORMAT.md states it, independently of
    /// `FileKeys` (whose keys are private): (enc_key, mac_key).
    fn reference_keys(dk: &[u8; 32], id: &FileId) -> ([u8; 32], [u8; 32]) {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&id.0), dk);
        let (mut enc, mut mac) = ([0u8; 32], [0u8; 32]);
        hk.expand(b"dropzone v1 file encryption key", &mut enc)
            .unwrap();
        hk.expand(b"dropzone v1 file mac key", &mut mac).unwrap();
        (enc, mac)
    }

    fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> Vec<u8> {
        use hmac::{KeyInit, Mac};
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }

    /// A second decoder written from docs/FORMAT.md alone (no `format`
    /// functions), so the document and the code cannot drift apart.
    fn reference_decode(enc: &[u8; 32], mac: &[u8; 32], file: &[u8]) -> Vec<u8> {
        use aes::Aes256;
        use cbc::cipher::block_padding::NoPadding;
        use cbc::cipher::{BlockModeDecrypt, KeyIvInit};

        assert_eq!(&file[0..8], b"DZSTORE\0");
        assert_eq!(&file[8..11], &[0, 1, 16]);
        assert_eq!(&file[11..16], &[0; 5]);
        assert_eq!(
            hmac(mac, &[b"dropzone v1 header", &file[..32]]),
            &file[32..64]
        );
        let id = &file[16..32];
        let mut out = Vec::new();
        let mut at = 64;
        let mut index = 0u64;
        loop {
            let len = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
            let ct_len = len.div_ceil(16) * 16;
            let rec_end = at + 4 + 16 + ct_len + 32;
            let is_final = rec_end == file.len();
            assert!(is_final || len == 65536);
            let body = &file[at..at + 20 + ct_len];
            let tag = hmac(
                mac,
                &[
                    b"dropzone v1 chunk",
                    id,
                    &index.to_be_bytes(),
                    &[u8::from(is_final)],
                    body,
                ],
            );
            assert_eq!(
                tag,
                &file[at + 20 + ct_len..rec_end],
                "MAC of record {index}"
            );
            let iv: [u8; 16] = file[at + 4..at + 20].try_into().unwrap();
            let mut buf = body[20..].to_vec();
            cbc::Decryptor::<Aes256>::new(&(*enc).into(), &iv.into())
                .decrypt_padded::<NoPadding>(&mut buf)
                .unwrap();
            assert!(buf[len..].iter().all(|&b| b == 0), "zero padding");
            out.extend_from_slice(&buf[..len]);
            if is_final {
                return out;
            }
            at = rec_end;
            index += 1;
        }
    }

    /// One line per header half, then per record: length field and IV,
    /// ciphertext in lines of 64 bytes, MAC.
    fn hex_file(file: &[u8]) -> String {
        let mut lines = vec![&file[..32], &file[32..HEADER_LEN]];
        let mut at = HEADER_LEN;
        while at < file.len() {
            let len = u32::from_be_bytes(file[at..at + LEN_FIELD].try_into().unwrap()) as usize;
            let ct = at + LEN_FIELD + BLOCK;
            let mac = ct + len.div_ceil(BLOCK) * BLOCK;
            lines.push(&file[at..ct]);
            lines.extend(file[ct..mac].chunks(64));
            lines.push(&file[mac..mac + MAC_LEN]);
            at = mac + MAC_LEN;
        }
        lines.iter().map(|l| hex::encode(l) + "\n").collect()
    }

    fn generate() -> String {
        let dk = vector_data_key();
        let id = vector_file_id();
        let (enc, mac) = reference_keys(&dk, &id);
        let mut s = String::new();
        s.push_str(
            "# Test vectors of the Dropzone encrypted file format v1 (docs/FORMAT.md).\n\
             # Generated by src/store/format_tests.rs with DROPZONE_REGEN_VECTORS=1;\n\
             # do not edit by hand. Hex strings may contain whitespace (ignore it).\n\
             # enc_key and mac_key are the HKDF-SHA256 outputs, for implementers.\n\n",
        );
        writeln!(s, "format_version = {VERSION}").unwrap();
        writeln!(s, "chunk_size = {CHUNK_SIZE}").unwrap();
        s.push_str("plaintext_rule = \"byte i of the plaintext is i mod 251\"\n");
        writeln!(s, "data_key = \"{}\"", hex::encode(dk)).unwrap();
        writeln!(s, "file_id = \"{}\"", hex::encode(id.0)).unwrap();
        writeln!(s, "enc_key = \"{}\"", hex::encode(enc)).unwrap();
        writeln!(s, "mac_key = \"{}\"", hex::encode(mac)).unwrap();
        for (n, (name, len)) in CASES.iter().enumerate() {
            let file = encode_file_with(&dk, &id, &pattern(*len), |i| vector_iv(n, i));
            let ivs: Vec<String> = (0..chunk_count(*len) as u64)
                .map(|i| format!("\"{}\"", hex::encode(vector_iv(n, i))))
                .collect();
            s.push_str("\n[[case]]\n");
            writeln!(s, "name = \"{name}\"").unwrap();
            writeln!(s, "plaintext_len = {len}").unwrap();
            writeln!(s, "ivs = [{}]", ivs.join(", ")).unwrap();
            writeln!(s, "file = \"\"\"\n{}\"\"\"", hex_file(&file)).unwrap();
        }
        s
    }

    #[test]
    fn committed_vectors_decode_and_reencode() {
        if std::env::var_os(REGEN_VAR).is_some_and(|v| v == "1") {
            std::fs::create_dir_all(std::path::Path::new(PATH).parent().unwrap()).unwrap();
            std::fs::write(PATH, generate()).unwrap();
        }
        let text = std::fs::read_to_string(PATH)
            .unwrap_or_else(|e| panic!("{PATH}: {e}; run with {REGEN_VAR}=1 to generate"));
        let v: Vectors = toml::from_str(&text).expect("vector file parses");
        assert_eq!(v.format_version, VERSION);
        assert_eq!(v.chunk_size, CHUNK_SIZE);
        assert!(v.plaintext_rule.contains("mod 251"));
        let dk: [u8; 32] = unhex(&v.data_key).try_into().unwrap();
        let id = FileId(unhex(&v.file_id).try_into().unwrap());
        let (enc, mac) = reference_keys(&dk, &id);
        assert_eq!(unhex(&v.enc_key), enc, "HKDF encryption key");
        assert_eq!(unhex(&v.mac_key), mac, "HKDF MAC key");
        assert_eq!(v.case.len(), CASES.len());
        for c in &v.case {
            let file = unhex(&c.file);
            let pt = pattern(c.plaintext_len);
            assert_eq!(
                file.len(),
                expected_stored_len(c.plaintext_len),
                "{}",
                c.name
            );
            assert_eq!(decode_file(&dk, &file).unwrap(), pt, "{}: decode", c.name);
            assert_eq!(
                reference_decode(&enc, &mac, &file),
                pt,
                "{}: reference decode",
                c.name
            );

            let ivs: Vec<[u8; BLOCK]> =
                c.ivs.iter().map(|h| unhex(h).try_into().unwrap()).collect();
            assert_eq!(
                ivs.len(),
                chunk_count(c.plaintext_len),
                "{}: IV count",
                c.name
            );
            for (i, iv) in ivs.iter().enumerate() {
                let at = record_offset(i as u64) as usize + LEN_FIELD;
                assert_eq!(&file[at..at + BLOCK], iv, "{}: IV of chunk {i}", c.name);
            }
            let again = encode_file_with(&dk, &id, &pt, |i| ivs[i as usize]);
            assert!(
                again == file,
                "{}: re-encoding differs from the vector",
                c.name
            );
        }
    }
}
