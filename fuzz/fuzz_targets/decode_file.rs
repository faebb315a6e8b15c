//! Feeds arbitrary bytes to the reader's decode algorithm (docs/FORMAT.md)
//! with a fixed data key, and arbitrary sizes to the layout arithmetic.
//! Nothing may panic; the layout invariants below must hold.
#![no_main]

use dropzone::store::format::{
    FULL_RECORD_LEN, FileKeys, FormatError, LEN_FIELD, Layout, decode_chunk, parse_header,
    record_offset, verify_header,
};
use libfuzzer_sys::fuzz_target;

/// The data key of `tests/vectors/format_v1.toml`, so that its files, used
/// as seeds (`corpus/decode_file/`), get past the MACs and the fuzzer's
/// mutations of them exercise every check.
const DATA_KEY: [u8; 32] = {
    let mut k = [0; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

fuzz_target!(|data: &[u8]| {
    if let Ok(pt) = decode_file(data) {
        // Only reachable from a seed made with DATA_KEY.
        assert!(data.len() > pt.len());
    }
    layout_arithmetic(data);
});

/// The reader's algorithm, as in `store::format_tests::decode_file`.
fn decode_file(bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let id = parse_header(bytes)?;
    let keys = FileKeys::derive(&DATA_KEY, &id);
    verify_header(&keys, bytes)?;
    let layout = Layout::from_stored_len(bytes.len() as u64)?;
    let last = usize::try_from(record_offset(layout.chunks - 1)).unwrap_or(usize::MAX);
    let field = bytes
        .get(last..)
        .and_then(|r| r.first_chunk::<LEN_FIELD>())
        .ok_or(FormatError::Integrity("layout points past the end"))?;
    let size = layout.plaintext_len(*field)?;
    let mut out = Vec::new();
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
    assert_eq!(out.len() as u64, size);
    Ok(out)
}

/// `Layout` on any 64-bit stored size (the first 8 input bytes) and length
/// field (the next 4): no overflow, and accepted layouts tile the file.
fn layout_arithmetic(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let stored = u64::from_le_bytes(*len);
    let Ok(layout) = Layout::from_stored_len(stored) else {
        return;
    };
    assert!(layout.chunks >= 1);
    let last = record_offset(layout.chunks - 1);
    assert_eq!(last + layout.last_record_len as u64, stored);
    if let Some(field) = rest.first_chunk::<LEN_FIELD>() {
        if let Ok(size) = layout.plaintext_len(*field) {
            assert!(size <= stored);
        }
    }
}
