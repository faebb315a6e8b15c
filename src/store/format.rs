//! The on-disk format of an encrypted file, as pure functions on byte slices.
//!
//! Nothing here does I/O or knows about files; `docs/FORMAT.md` is the
//! normative description and `tests/vectors/` holds committed test vectors.
//!
//! ```text
//! file    = header record{1..}
//! header  = magic(8) version(2) chunk_log2(1) reserved(5) file_id(16) mac(32)   -- 64 bytes
//! record  = len(4) iv(16) ciphertext(round_up_16(len)) mac(32)
//! ```
//!
//! Every record but the last holds exactly [`CHUNK_SIZE`] plaintext bytes, so
//! chunk `i` starts at `HEADER_LEN + i * FULL_RECORD_LEN`. An empty file has
//! one record with `len = 0`, so that cutting every record off is detected.

use aes::Aes256;
use cbc::cipher::block_padding::{NoPadding, ZeroPadding};
use cbc::cipher::typenum::Unsigned;
use cbc::cipher::{
    BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockModeDecrypt,
    BlockModeEncrypt, BlockSizeUser, KeyIvInit, ParBlocks,
};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::mac_batch;

type HmacSha256 = Hmac<Sha256>;

/// First eight bytes of every encrypted file.
pub const MAGIC: [u8; 8] = *b"DZSTORE\0";
/// The only format version this code writes and reads.
pub const VERSION: u16 = 1;
/// log2 of [`CHUNK_SIZE`], as recorded in the header.
pub const CHUNK_LOG2: u8 = 16;
/// Plaintext bytes per chunk: 64 KiB keeps a read of OpenSSH's 32 KiB
/// requests within one chunk most of the time while bounding per-file memory.
pub const CHUNK_SIZE: usize = 1 << CHUNK_LOG2;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 64;
/// Bytes of the per-file random id.
pub const FILE_ID_LEN: usize = 16;
/// AES block size; also the IV size.
pub const BLOCK: usize = 16;
/// HMAC-SHA256 tag size.
pub const MAC_LEN: usize = 32;
/// Bytes of the plaintext-length field that starts every record.
pub const LEN_FIELD: usize = 4;
/// Bytes a record adds around its ciphertext.
pub const RECORD_OVERHEAD: usize = LEN_FIELD + BLOCK + MAC_LEN;
/// On-disk size of a record holding a full chunk.
pub const FULL_RECORD_LEN: usize = CHUNK_SIZE + RECORD_OVERHEAD;

/// Domain separation for the two derived per-file keys and the MACs.
const HKDF_INFO_ENC: &[u8] = b"dropzone v1 file encryption key";
const HKDF_INFO_MAC: &[u8] = b"dropzone v1 file mac key";
const MAC_DOMAIN_HEADER: &[u8] = b"dropzone v1 header";
const MAC_DOMAIN_CHUNK: &[u8] = b"dropzone v1 chunk";

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes do not start with [`MAGIC`]: not a Dropzone file.
    #[error("not a Dropzone encrypted file (bad magic)")]
    BadMagic,
    /// A format version this build does not know.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// A chunk size other than the one this build uses.
    #[error("unsupported chunk size 2^{0}")]
    UnsupportedChunkSize(u8),
    /// A MAC did not verify, or the layout is inconsistent: the file was
    /// modified, truncated, extended or assembled from other files' chunks.
    #[error("integrity check failed: {0}")]
    Integrity(&'static str),
}

/// The random identifier that makes each file's keys unique.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileId(pub [u8; FILE_ID_LEN]);

impl FileId {
    /// A fresh id from the OS random generator.
    pub fn random() -> Self {
        let mut id = [0u8; FILE_ID_LEN];
        fill_random(&mut id);
        FileId(id)
    }
}

/// Fills `buf` from the OS CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // Failure of the OS random source leaves no safe way to go on: without it
    // we can create neither IVs nor keys, so this is a process-level fault.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the OS random number generator failed");
}

/// The encryption and MAC keys of one file, derived from the owner's data key.
///
/// Not `Clone` or `Debug`; zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct FileKeys {
    enc: [u8; 32],
    mac: [u8; 32],
}

impl FileKeys {
    /// HKDF-SHA256 with the data key as input keying material and the file id
    /// as salt; two expansions with distinct `info` give independent keys.
    pub fn derive(data_key: &[u8; 32], id: &FileId) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(&id.0), data_key);
        let mut keys = FileKeys {
            enc: [0; 32],
            mac: [0; 32],
        };
        // Invariant: 32 bytes is far below HKDF-SHA256's 255 * 32 byte limit.
        #[allow(clippy::expect_used)]
        {
            hk.expand(HKDF_INFO_ENC, &mut keys.enc)
                .expect("32-byte HKDF output is valid");
            hk.expand(HKDF_INFO_MAC, &mut keys.mac)
                .expect("32-byte HKDF output is valid");
        }
        keys
    }

    fn mac(&self) -> HmacSha256 {
        // Invariant: HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        <HmacSha256 as KeyInit>::new_from_slice(&self.mac).expect("HMAC takes any key length")
    }
}

/// Encodes the 64-byte header of a file with id `id`.
pub fn encode_header(keys: &FileKeys, id: &FileId) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_be_bytes());
    h[10] = CHUNK_LOG2;
    h[16..32].copy_from_slice(&id.0);
    let tag = keys
        .mac()
        .chain_update(MAC_DOMAIN_HEADER)
        .chain_update(&h[..32])
        .finalize()
        .into_bytes();
    h[32..64].copy_from_slice(&tag);
    h
}

/// Reads the file id from a header without checking its MAC (the keys depend
/// on the id); call [`verify_header`] once the keys are derived.
pub fn parse_header(bytes: &[u8]) -> Result<FileId, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Integrity("file shorter than its header"));
    }
    if bytes[0..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    if bytes[10] != CHUNK_LOG2 {
        return Err(FormatError::UnsupportedChunkSize(bytes[10]));
    }
    if bytes[11..16].iter().any(|&b| b != 0) {
        return Err(FormatError::Integrity("reserved header bytes are not zero"));
    }
    let mut id = [0u8; FILE_ID_LEN];
    id.copy_from_slice(&bytes[16..32]);
    Ok(FileId(id))
}

/// Checks the header MAC in constant time.
pub fn verify_header(keys: &FileKeys, bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Integrity("file shorter than its header"));
    }
    keys.mac()
        .chain_update(MAC_DOMAIN_HEADER)
        .chain_update(&bytes[..32])
        .verify_slice(&bytes[32..64])
        .map_err(|_| FormatError::Integrity("header MAC mismatch"))
}

/// On-disk size of a record holding `plaintext_len` bytes.
pub const fn record_len(plaintext_len: usize) -> usize {
    RECORD_OVERHEAD + round_up_block(plaintext_len)
}

const fn round_up_block(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Byte offset of record `index` in the stored file.
pub const fn record_offset(index: u64) -> u64 {
    HEADER_LEN as u64 + index * FULL_RECORD_LEN as u64
}

/// Where the records of a stored file of `stored_len` bytes lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of records (at least 1).
    pub chunks: u64,
    /// On-disk size of the last record.
    pub last_record_len: usize,
}

impl Layout {
    /// Derives the layout from the stored size alone; rejects sizes no valid
    /// file can have.
    pub fn from_stored_len(stored_len: u64) -> Result<Self, FormatError> {
        let body = stored_len
            .checked_sub(HEADER_LEN as u64)
            .ok_or(FormatError::Integrity("file shorter than its header"))?;
        if body == 0 {
            return Err(FormatError::Integrity("file has no chunks (truncated)"));
        }
        let full = FULL_RECORD_LEN as u64;
        let chunks = body.div_ceil(full);
        let last = (body - (chunks - 1) * full) as usize;
        if last < RECORD_OVERHEAD || !(last - RECORD_OVERHEAD).is_multiple_of(BLOCK) {
            return Err(FormatError::Integrity(
                "file length is not a whole number of chunks",
            ));
        }
        Ok(Layout {
            chunks,
            last_record_len: last,
        })
    }

    /// Plaintext size, given the length field read from the last record.
    pub fn plaintext_len(&self, last_len_field: [u8; LEN_FIELD]) -> Result<u64, FormatError> {
        let last = u32::from_be_bytes(last_len_field) as usize;
        if last > CHUNK_SIZE || record_len(last) != self.last_record_len {
            return Err(FormatError::Integrity(
                "last chunk length field is inconsistent",
            ));
        }
        if last == 0 && self.chunks != 1 {
            return Err(FormatError::Integrity("empty chunk after data"));
        }
        Ok((self.chunks - 1) * CHUNK_SIZE as u64 + last as u64)
    }
}

/// Appends to `out` the record of chunk `index` holding `plaintext`, with the
/// given IV. `is_final` marks the file's last chunk; every chunk but the last
/// must be exactly [`CHUNK_SIZE`] bytes.
pub fn encode_chunk(
    keys: &FileKeys,
    id: &FileId,
    index: u64,
    is_final: bool,
    plaintext: &[u8],
    iv: &[u8; BLOCK],
    out: &mut Vec<u8>,
) {
    debug_assert!(plaintext.len() <= CHUNK_SIZE);
    debug_assert!(is_final || plaintext.len() == CHUNK_SIZE);
    let len = plaintext.len();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(iv);
    let ct_start = out.len();
    out.resize(ct_start + round_up_block(len), 0);
    let enc = cbc::Encryptor::<Aes256>::new(&keys.enc.into(), &(*iv).into());
    // Encrypting buffer to buffer saves a copy of the plaintext. Zero
    // padding is unambiguous here: the exact length is in the authenticated
    // length field, so trailing NUL bytes survive.
    // Invariant: the output holds round_up_block(len) bytes, what
    // ZeroPadding needs, so this cannot fail.
    #[allow(clippy::expect_used)]
    enc.encrypt_padded_b2b::<ZeroPadding>(plaintext, &mut out[ct_start..])
        .expect("output sized for the padded plaintext");
    let tag = chunk_mac(keys, id, index, is_final, &out[start..]);
    out.extend_from_slice(&tag);
}

/// One chunk of a batch for [`encode_chunks`].
pub struct ChunkToEncode<'a> {
    /// The chunk's index in the file.
    pub index: u64,
    /// Whether it is the file's last chunk.
    pub is_final: bool,
    /// Its plaintext: [`CHUNK_SIZE`] bytes unless it is the last.
    pub plaintext: &'a [u8],
    /// Its IV (fresh and random for each record written).
    pub iv: [u8; BLOCK],
    /// Receives the record, replacing what it held. A buffer reused from an
    /// earlier record of the same size is not zeroed first: every byte is
    /// written.
    pub out: &'a mut Vec<u8>,
}

/// Writes the record of each chunk into its `out`, byte for byte what
/// [`encode_chunk`] appends, but encrypts up to eight chunks at once.
///
/// CBC encryption is serial within a chunk: each block waits for the one
/// before it, so one chunk keeps the AES unit busy only a fraction of the
/// time (AES-NI rounds have a latency of several cycles but start one per
/// cycle). Chunks are independent of each other, so block `i` of eight
/// chunks goes through the cipher together: a little over twice the speed of
/// one chunk at a time on the 2-core machine (1046 against 462 MiB/s,
/// docs/PERFORMANCE.md "Store throughput"), whose AES-NI
/// backend takes 8 blocks at a time. (On CPUs where the `aes` crate picks
/// a VAES backend, which takes 30 or 64, the other slots are wasted work;
/// not measured.) Encryption
/// reads the plaintext and writes the record directly: copying the
/// plaintext into the record first ran at a fraction of memory speed here,
/// the record's data starting 20 bytes after the plaintext's modulo 4 KiB.
pub fn encode_chunks(keys: &FileKeys, id: &FileId, chunks: &mut [ChunkToEncode<'_>]) {
    for chunk in chunks.iter_mut() {
        let len = chunk.plaintext.len();
        debug_assert!(len <= CHUNK_SIZE);
        debug_assert!(chunk.is_final || len == CHUNK_SIZE);
        let ct_len = round_up_block(len);
        let total = LEN_FIELD + BLOCK + ct_len + MAC_LEN;
        if chunk.out.len() > total {
            chunk.out.truncate(total);
        } else {
            chunk.out.resize(total, 0);
        }
        chunk.out[..LEN_FIELD].copy_from_slice(&(len as u32).to_be_bytes());
        chunk.out[LEN_FIELD..LEN_FIELD + BLOCK].copy_from_slice(&chunk.iv);
    }
    {
        let mut lanes: Vec<Lane<'_>> = chunks
            .iter_mut()
            .map(|chunk| {
                let ct_len = round_up_block(chunk.plaintext.len());
                let ct = &mut chunk.out[LEN_FIELD + BLOCK..LEN_FIELD + BLOCK + ct_len];
                Lane::new(chunk.plaintext, ct.as_chunks_mut::<BLOCK>().0, chunk.iv)
            })
            .collect();
        Aes256::new(&keys.enc.into()).encrypt_with_backend(CbcLanes { lanes: &mut lanes });
    }
    // The MACs side by side too (`mac_batch`).
    let headers: Vec<[u8; CHUNK_MAC_HEADER_LEN]> = chunks
        .iter()
        .map(|chunk| chunk_mac_header(id, chunk.index, chunk.is_final))
        .collect();
    let mut tags = vec![[0u8; MAC_LEN]; chunks.len()];
    {
        let messages: Vec<mac_batch::Message<'_>> = chunks
            .iter()
            .zip(&headers)
            .map(|(chunk, header)| mac_batch::Message {
                header,
                body: &chunk.out[..chunk.out.len() - MAC_LEN],
            })
            .collect();
        mac_batch::tags(&keys.mac, &messages, &mut tags);
    }
    for (chunk, tag) in chunks.iter_mut().zip(&tags) {
        let body_len = chunk.out.len() - MAC_LEN;
        chunk.out[body_len..].copy_from_slice(tag);
    }
}

/// One chunk's CBC encryption: its plaintext in whole blocks and its last,
/// short block zero-padded (if any), where its ciphertext blocks go, its IV.
struct Lane<'a> {
    blocks: &'a [[u8; BLOCK]],
    padded_tail: Option<[u8; BLOCK]>,
    ciphertext: &'a mut [[u8; BLOCK]],
    iv: [u8; BLOCK],
}

impl<'a> Lane<'a> {
    fn new(plaintext: &'a [u8], ciphertext: &'a mut [[u8; BLOCK]], iv: [u8; BLOCK]) -> Self {
        let (blocks, tail) = plaintext.as_chunks::<BLOCK>();
        let padded_tail = (!tail.is_empty()).then(|| {
            let mut padded = [0u8; BLOCK];
            padded[..tail.len()].copy_from_slice(tail);
            padded
        });
        Lane {
            blocks,
            padded_tail,
            ciphertext,
            iv,
        }
    }

    /// Plaintext block `i` (below the number of ciphertext blocks).
    #[inline(always)]
    fn block(&self, i: usize) -> [u8; BLOCK] {
        match self.blocks.get(i) {
            Some(b) => *b,
            None => self.padded_tail.unwrap_or([0; BLOCK]),
        }
    }
}

/// CBC encryption of several lanes side by side, as many at a time as the
/// cipher backend encrypts in parallel.
struct CbcLanes<'a, 'b> {
    lanes: &'a mut [Lane<'b>],
}

impl BlockSizeUser for CbcLanes<'_, '_> {
    type BlockSize = <Aes256 as BlockSizeUser>::BlockSize;
}

impl BlockCipherEncClosure for CbcLanes<'_, '_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = Self::BlockSize>>(self, backend: &B) {
        let width = B::ParBlocksSize::USIZE;
        for group in self.lanes.chunks_mut(width) {
            // Slots beyond the group, or past the end of a shorter chunk,
            // encrypt whatever they hold: their output is not used.
            let mut state = ParBlocks::<B>::default();
            for (slot, lane) in group.iter().enumerate() {
                state[slot].0 = lane.iv;
            }
            // Block by block while every lane has a whole plaintext block
            // (all of a batch of full chunks), then the rest, lane by lane.
            let whole = group.iter().map(|l| l.blocks.len()).min().unwrap_or(0);
            for i in 0..whole {
                for (slot, lane) in group.iter().enumerate() {
                    let s = &mut state[slot].0;
                    let p = lane.blocks[i];
                    *s = (u128::from_ne_bytes(*s) ^ u128::from_ne_bytes(p)).to_ne_bytes();
                }
                backend.encrypt_par_blocks_inplace(&mut state);
                for (slot, lane) in group.iter_mut().enumerate() {
                    lane.ciphertext[i] = state[slot].0;
                }
            }
            let blocks = group.iter().map(|l| l.ciphertext.len()).max().unwrap_or(0);
            for i in whole..blocks {
                for (slot, lane) in group.iter().enumerate() {
                    if i < lane.ciphertext.len() {
                        let s = &mut state[slot].0;
                        let p = lane.block(i);
                        *s = (u128::from_ne_bytes(*s) ^ u128::from_ne_bytes(p)).to_ne_bytes();
                    }
                }
                backend.encrypt_par_blocks_inplace(&mut state);
                for (slot, lane) in group.iter_mut().enumerate() {
                    if let Some(block) = lane.ciphertext.get_mut(i) {
                        *block = state[slot].0;
                    }
                }
            }
        }
    }
}

/// Verifies (in constant time, before decrypting) and decrypts one record,
/// appending the plaintext to `out`.
pub fn decode_chunk(
    keys: &FileKeys,
    id: &FileId,
    index: u64,
    is_final: bool,
    record: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    let start = out.len();
    decode_chunk_at(keys, id, index, is_final, record, out, start)
}

/// As [`decode_chunk`], but `out` ends up holding only this chunk's
/// plaintext. The bytes `out` already holds are overwritten rather than
/// cleared and zero-filled again: a reused chunk buffer costs no memset.
pub fn decode_chunk_replacing(
    keys: &FileKeys,
    id: &FileId,
    index: u64,
    is_final: bool,
    record: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    let result = decode_chunk_at(keys, id, index, is_final, record, out, 0);
    if result.is_err() {
        out.clear();
    }
    result
}

/// Decodes consecutive records, chunk `first` and on (`last` is the index
/// of the file's last chunk), each into its buffer in `outs` as
/// [`decode_chunk_replacing`] does, verifying their MACs side by side
/// (`mac_batch`). Returns how many were decoded: it stops at the first
/// record that fails, whose buffer is then empty, and leaves the buffers
/// after it as they were.
pub fn decode_chunks_replacing(
    keys: &FileKeys,
    id: &FileId,
    first: u64,
    last: u64,
    records: &[&[u8]],
    outs: &mut [Vec<u8>],
) -> usize {
    debug_assert_eq!(records.len(), outs.len());
    let framed = records
        .iter()
        .take_while(|record| record.len() >= RECORD_OVERHEAD)
        .count();
    let headers: Vec<[u8; CHUNK_MAC_HEADER_LEN]> = (first..)
        .take(framed)
        .map(|index| chunk_mac_header(id, index, index == last))
        .collect();
    let messages: Vec<mac_batch::Message<'_>> = records[..framed]
        .iter()
        .zip(&headers)
        .map(|(record, header)| mac_batch::Message {
            header,
            body: &record[..record.len() - MAC_LEN],
        })
        .collect();
    let mut tags = vec![[0u8; MAC_LEN]; framed];
    mac_batch::tags(&keys.mac, &messages, &mut tags);
    let mut decoded = 0;
    for (((index, record), out), tag) in (first..).zip(records).zip(outs.iter_mut()).zip(&tags) {
        let (body, stored_tag) = record.split_at(record.len() - MAC_LEN);
        let good = bool::from(tag.ct_eq(stored_tag))
            && decrypt_verified(keys, index == last, body, out, 0).is_ok();
        if !good {
            out.clear();
            break;
        }
        decoded += 1;
    }
    if decoded == framed && framed < records.len() {
        outs[framed].clear();
    }
    decoded
}

/// Decodes into `out` from `start` on; `out` ends where the plaintext does.
fn decode_chunk_at(
    keys: &FileKeys,
    id: &FileId,
    index: u64,
    is_final: bool,
    record: &[u8],
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), FormatError> {
    if record.len() < RECORD_OVERHEAD {
        return Err(FormatError::Integrity("chunk shorter than its framing"));
    }
    let (body, tag) = record.split_at(record.len() - MAC_LEN);
    keys.mac()
        .chain_update(chunk_mac_header(id, index, is_final))
        .chain_update(body)
        .verify_slice(tag)
        .map_err(|_| FormatError::Integrity("chunk MAC mismatch"))?;
    decrypt_verified(keys, is_final, body, out, start)
}

/// Decrypts a record's `body` (its MAC already verified) into `out` from
/// `start` on, after checking its length field.
fn decrypt_verified(
    keys: &FileKeys,
    is_final: bool,
    body: &[u8],
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), FormatError> {
    let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    let ct = &body[LEN_FIELD + BLOCK..];
    if len > CHUNK_SIZE || ct.len() != round_up_block(len) || (!is_final && len != CHUNK_SIZE) {
        return Err(FormatError::Integrity("chunk length is inconsistent"));
    }
    let mut iv = [0u8; BLOCK];
    iv.copy_from_slice(&body[LEN_FIELD..LEN_FIELD + BLOCK]);
    // Only growth is zero-filled; bytes already there are overwritten.
    out.resize(start + ct.len(), 0);
    let dec = cbc::Decryptor::<Aes256>::new(&keys.enc.into(), &iv.into());
    dec.decrypt_padded_b2b::<NoPadding>(ct, &mut out[start..])
        .map_err(|_| FormatError::Integrity("ciphertext is not block aligned"))?;
    out.truncate(start + len);
    Ok(())
}

fn chunk_mac(
    keys: &FileKeys,
    id: &FileId,
    index: u64,
    is_final: bool,
    body: &[u8],
) -> [u8; MAC_LEN] {
    keys.mac()
        .chain_update(chunk_mac_header(id, index, is_final))
        .chain_update(body)
        .finalize()
        .into_bytes()
        .into()
}

/// Bytes a chunk's MAC covers before the record's body.
const CHUNK_MAC_HEADER_LEN: usize = MAC_DOMAIN_CHUNK.len() + FILE_ID_LEN + 8 + 1;

/// What a chunk's MAC covers before the record's body: the domain, the
/// file id, the chunk's index and whether it is the last.
fn chunk_mac_header(id: &FileId, index: u64, is_final: bool) -> [u8; CHUNK_MAC_HEADER_LEN] {
    let mut header = [0u8; CHUNK_MAC_HEADER_LEN];
    let (domain, rest) = header.split_at_mut(MAC_DOMAIN_CHUNK.len());
    domain.copy_from_slice(MAC_DOMAIN_CHUNK);
    let (file, rest) = rest.split_at_mut(FILE_ID_LEN);
    file.copy_from_slice(&id.0);
    rest[..8].copy_from_slice(&index.to_be_bytes());
    rest[8] = u8::from(is_final);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (FileKeys, FileId) {
        let id = FileId([7; 16]);
        (FileKeys::derive(&[42; 32], &id), id)
    }

    #[test]
    fn chunk_round_trip_at_edge_sizes() {
        let (k, id) = keys();
        for len in [0, 1, 15, 16, 17, CHUNK_SIZE - 1, CHUNK_SIZE] {
            let pt: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut rec = Vec::new();
            encode_chunk(&k, &id, 3, true, &pt, &[1; 16], &mut rec);
            assert_eq!(rec.len(), record_len(len));
            let mut out = Vec::new();
            decode_chunk(&k, &id, 3, true, &rec, &mut out).unwrap();
            assert_eq!(out, pt);
        }
    }

    #[test]
    fn decoding_into_a_reused_buffer_leaves_only_the_chunk() {
        let (k, id) = keys();
        // The buffer held a longer chunk, a shorter one, nothing.
        for held in [CHUNK_SIZE, 5, 0] {
            for len in [0, 1, 17, CHUNK_SIZE - 1, CHUNK_SIZE] {
                let pt: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
                let mut rec = Vec::new();
                encode_chunk(&k, &id, 3, true, &pt, &[2; 16], &mut rec);
                let mut out = vec![0xEE; held];
                decode_chunk_replacing(&k, &id, 3, true, &rec, &mut out).unwrap();
                assert_eq!(out, pt, "held {held}, chunk of {len}");
                // A record that fails to verify leaves nothing behind.
                let last = rec.len() - 1;
                rec[last] ^= 1;
                assert!(decode_chunk_replacing(&k, &id, 3, true, &rec, &mut out).is_err());
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn chunks_encoded_side_by_side_match_one_at_a_time() {
        let (k, id) = keys();
        // Batches smaller than, equal to and larger than the backend's
        // width, with last chunks of every kind of length.
        for count in [1usize, 2, 7, 8, 9, 17] {
            for last_len in [0, 1, 16, 100, CHUNK_SIZE] {
                let plaintexts: Vec<Vec<u8>> = (0..count)
                    .map(|c| {
                        let len = if c + 1 == count { last_len } else { CHUNK_SIZE };
                        (0..len).map(|i| ((i * 7 + c * 13) % 251) as u8).collect()
                    })
                    .collect();
                let iv = |c: usize| [c as u8 ^ 0x5a; BLOCK];
                // Reused buffers: too long, too short, empty.
                let mut outs: Vec<Vec<u8>> = (0..count)
                    .map(|c| vec![0xee; [FULL_RECORD_LEN + 100, 30, 0][c % 3]])
                    .collect();
                let mut batch: Vec<ChunkToEncode<'_>> = outs
                    .iter_mut()
                    .zip(&plaintexts)
                    .enumerate()
                    .map(|(c, (out, pt))| ChunkToEncode {
                        index: 40 + c as u64,
                        is_final: c + 1 == count,
                        plaintext: pt,
                        iv: iv(c),
                        out,
                    })
                    .collect();
                encode_chunks(&k, &id, &mut batch);
                for (c, (out, pt)) in outs.iter().zip(&plaintexts).enumerate() {
                    let mut alone = Vec::new();
                    encode_chunk(
                        &k,
                        &id,
                        40 + c as u64,
                        c + 1 == count,
                        pt,
                        &iv(c),
                        &mut alone,
                    );
                    assert!(
                        out == &alone,
                        "chunk {c} of {count} (last {last_len} bytes) differs"
                    );
                }
            }
        }
    }

    /// Records of chunks 40.. of a file whose last chunk is `40 + count - 1`
    /// with `last_len` bytes, and their plaintexts.
    fn records_of(count: usize, last_len: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (k, id) = keys();
        let plaintexts: Vec<Vec<u8>> = (0..count)
            .map(|c| {
                let len = if c + 1 == count { last_len } else { CHUNK_SIZE };
                (0..len).map(|i| ((i * 11 + c * 3) % 253) as u8).collect()
            })
            .collect();
        let records = plaintexts
            .iter()
            .enumerate()
            .map(|(c, pt)| {
                let mut record = Vec::new();
                let index = 40 + c as u64;
                encode_chunk(
                    &k,
                    &id,
                    index,
                    c + 1 == count,
                    pt,
                    &[c as u8; BLOCK],
                    &mut record,
                );
                record
            })
            .collect();
        (records, plaintexts)
    }

    #[test]
    fn chunks_decoded_side_by_side_match_their_plaintexts() {
        let (k, id) = keys();
        for count in [1usize, 2, 4, 5, 9] {
            for last_len in [0, 1, 100, CHUNK_SIZE] {
                let (records, plaintexts) = records_of(count, last_len);
                let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                let last = 40 + count as u64 - 1;
                // Reused buffers of every size.
                let mut outs: Vec<Vec<u8>> = (0..count)
                    .map(|c| vec![0xee; [CHUNK_SIZE + 100, 30, 0][c % 3]])
                    .collect();
                assert_eq!(
                    decode_chunks_replacing(&k, &id, 40, last, &slices, &mut outs),
                    count
                );
                assert!(outs == plaintexts, "{count} chunks, last {last_len} bytes");
            }
        }
    }

    #[test]
    fn chunks_decoded_side_by_side_stop_at_the_first_bad_record() {
        let (k, id) = keys();
        let (mut records, plaintexts) = records_of(6, 500);
        // One flipped ciphertext bit in the fourth record.
        records[3][LEN_FIELD + BLOCK + 7] ^= 0x10;
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let mut outs = vec![vec![0xee; 10]; 6];
        assert_eq!(
            decode_chunks_replacing(&k, &id, 40, 45, &slices, &mut outs),
            3
        );
        assert!(outs[..3] == plaintexts[..3]);
        assert!(outs[3].is_empty(), "nothing of the bad record is returned");
        assert_eq!(outs[4], vec![0xee; 10]);
        // The wrong position, the wrong last chunk, a truncated record.
        let (records, _) = records_of(3, 500);
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let mut outs = vec![Vec::new(); 3];
        assert_eq!(
            decode_chunks_replacing(&k, &id, 41, 43, &slices, &mut outs),
            0
        );
        assert_eq!(
            decode_chunks_replacing(&k, &id, 40, 41, &slices, &mut outs),
            1
        );
        let short: Vec<&[u8]> = vec![&records[0], &records[1][..RECORD_OVERHEAD - 1]];
        let mut outs = vec![vec![1u8]; 2];
        assert_eq!(
            decode_chunks_replacing(&k, &id, 40, 42, &short, &mut outs),
            1
        );
        assert!(outs[1].is_empty());
    }

    #[test]
    fn header_round_trip_and_tamper() {
        let (k, id) = keys();
        let h = encode_header(&k, &id);
        assert_eq!(parse_header(&h).unwrap(), id);
        verify_header(&k, &h).unwrap();
        for i in 0..HEADER_LEN {
            let mut t = h;
            t[i] ^= 1;
            let ok = parse_header(&t).is_ok() && verify_header(&k, &t).is_ok();
            assert!(!ok, "flip at header byte {i} went unnoticed");
        }
    }
}
