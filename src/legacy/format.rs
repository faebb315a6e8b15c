//! The original Dropzone's encrypted file format, as pure functions on bytes.
//!
//! A legacy `NAME.enc` file is a 16-byte IV followed by AES-256-CBC of the
//! content zero-padded to a multiple of 16 bytes. There is no header, no
//! length and no MAC: a damaged file or a wrong key cannot be told from a
//! good one, only a length that is not an IV plus whole blocks can.
//!
//! Zero padding cannot be told from content: a file whose content ended in
//! NUL bytes comes back without them. Padding never reaches beyond the last
//! 16-byte block (whether or not the original added a whole block of zeros
//! to content that was already aligned), so [`Decryptor`] strips the
//! trailing NULs of the last block only: at most 16 bytes, never content
//! that lies before the last block (see `docs/MIGRATION.md`).

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use zeroize::Zeroizing;

/// AES block size, and the length of the IV in front of the ciphertext.
pub const BLOCK: usize = 16;

/// What is wrong with a legacy encrypted file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyFormatError {
    /// Shorter than the IV.
    #[error(
        "{len} bytes is too short for a legacy encrypted file (at least the 16-byte IV is needed)"
    )]
    TooShort {
        /// The stored length.
        len: u64,
    },
    /// The ciphertext after the IV is not whole AES blocks (a truncated or
    /// extended file).
    #[error(
        "{len} bytes is not a 16-byte IV followed by whole 16-byte AES blocks \
         ({extra} byte(s) too many or {missing} missing: truncated or not a legacy file)"
    )]
    NotBlockAligned {
        /// The stored length.
        len: u64,
        /// Bytes past the last whole block.
        extra: u64,
        /// Bytes missing to the next whole block.
        missing: u64,
    },
    /// A caller handed the decryptor a piece that is not whole blocks, or
    /// more than the file holds (a bug, reported rather than panicking).
    #[error("internal error: {0}")]
    Misuse(&'static str),
}

/// Checks a stored length; returns the length of the ciphertext after the IV.
pub fn ciphertext_len(stored_len: u64) -> Result<u64, LegacyFormatError> {
    let block = BLOCK as u64;
    if stored_len < block {
        return Err(LegacyFormatError::TooShort { len: stored_len });
    }
    let ct = stored_len - block;
    let extra = ct % block;
    if extra != 0 {
        return Err(LegacyFormatError::NotBlockAligned {
            len: stored_len,
            extra,
            missing: block - extra,
        });
    }
    Ok(ct)
}

/// Length of the content in the final plaintext block: the block without
/// its trailing NUL bytes (the original's zero padding).
pub fn unpadded_len(last_block: &[u8]) -> usize {
    last_block
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

/// Decrypts one whole-block piece in place under `key` with the CBC chaining
/// value `iv` (the IV, or the ciphertext block before the piece); returns the
/// piece's last ciphertext block, the chaining value for the next piece.
///
/// `piece` must be whole blocks (the caller checks).
fn decrypt_in_place(key: &[u8; 32], iv: &[u8; BLOCK], piece: &mut [u8]) -> [u8; BLOCK] {
    let mut next = *iv;
    if let Some(last) = piece.rchunks_exact(BLOCK).next() {
        next.copy_from_slice(last);
    }
    let dec = cbc::Decryptor::<Aes256>::new(key.into(), iv.into());
    // Whole blocks and no padding to check: this cannot fail, and a failure
    // would leave ciphertext in `piece`, never wrong plaintext.
    let _ = dec.decrypt_padded::<NoPadding>(piece);
    next
}

/// A streaming decryptor of one legacy file: feed it the ciphertext after
/// the IV, in order, in pieces of whole blocks; it returns the content.
///
/// Memory is the caller's buffer; the key is zeroized on drop.
pub struct Decryptor {
    key: Zeroizing<[u8; 32]>,
    chain: [u8; BLOCK],
    /// Ciphertext bytes still to come.
    remaining: u64,
}

impl Decryptor {
    /// A decryptor for a file of `stored_len` bytes whose first 16 bytes are
    /// `iv`, under `key`.
    pub fn new(
        key: &[u8; 32],
        iv: [u8; BLOCK],
        stored_len: u64,
    ) -> Result<Self, LegacyFormatError> {
        Ok(Decryptor {
            key: Zeroizing::new(*key),
            chain: iv,
            remaining: ciphertext_len(stored_len)?,
        })
    }

    /// Ciphertext bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Decrypts the next `piece` in place (whole blocks, at most
    /// [`Decryptor::remaining`]) and returns how many of its bytes are
    /// content: all of them, except in the final piece, whose last block
    /// loses its trailing NULs.
    pub fn decrypt_piece(&mut self, piece: &mut [u8]) -> Result<usize, LegacyFormatError> {
        if !piece.len().is_multiple_of(BLOCK) {
            return Err(LegacyFormatError::Misuse(
                "a piece that is not whole blocks",
            ));
        }
        if piece.len() as u64 > self.remaining {
            return Err(LegacyFormatError::Misuse(
                "a piece past the end of the file",
            ));
        }
        self.chain = decrypt_in_place(&self.key, &self.chain, piece);
        self.remaining -= piece.len() as u64;
        if self.remaining > 0 || piece.is_empty() {
            return Ok(piece.len());
        }
        let last_start = piece.len() - BLOCK;
        Ok(last_start + unpadded_len(&piece[last_start..]))
    }
}

/// The content length of a legacy file from its last two blocks, without
/// reading the rest: `before_last` is the ciphertext block before the last
/// one (the IV if there is only one), `last` the last ciphertext block.
/// `ciphertext_len` is the checked length after the IV.
pub fn content_len(
    key: &[u8; 32],
    ciphertext_len: u64,
    before_last: &[u8; BLOCK],
    last: &[u8; BLOCK],
) -> u64 {
    if ciphertext_len == 0 {
        return 0;
    }
    let mut block = Zeroizing::new(*last);
    decrypt_in_place(key, before_last, &mut block[..]);
    ciphertext_len - BLOCK as u64 + unpadded_len(&block[..]) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbc::cipher::BlockModeEncrypt;

    /// Encrypts as the original did: IV, then AES-256-CBC of the content
    /// zero-padded to whole blocks. With `full_block_when_aligned`, aligned
    /// content gets a whole block of zeros (the other common reading of
    /// "zero padding").
    fn legacy_encrypt(
        key: &[u8; 32],
        iv: [u8; 16],
        content: &[u8],
        full_block_when_aligned: bool,
    ) -> Vec<u8> {
        let mut padded = content.to_vec();
        let pad = if content.len().is_multiple_of(BLOCK) && full_block_when_aligned {
            BLOCK
        } else {
            (BLOCK - content.len() % BLOCK) % BLOCK
        };
        padded.resize(content.len() + pad, 0);
        let enc = cbc::Encryptor::<Aes256>::new(key.into(), (&iv).into());
        let n = padded.len();
        enc.encrypt_padded::<NoPadding>(&mut padded, n).unwrap();
        let mut out = iv.to_vec();
        out.extend_from_slice(&padded);
        out
    }

    /// Decrypts a whole legacy file in pieces of `piece` bytes.
    fn decrypt_all(
        key: &[u8; 32],
        file: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, LegacyFormatError> {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(file.get(..16).ok_or(LegacyFormatError::TooShort {
            len: file.len() as u64,
        })?);
        let mut dec = Decryptor::new(key, iv, file.len() as u64)?;
        let mut out = Vec::new();
        let mut rest = &file[16..];
        while !rest.is_empty() {
            let n = piece.min(rest.len());
            let mut buf = rest[..n].to_vec();
            let keep = dec.decrypt_piece(&mut buf)?;
            out.extend_from_slice(&buf[..keep]);
            rest = &rest[n..];
        }
        assert_eq!(dec.remaining(), 0);
        Ok(out)
    }

    fn content(len: usize, seed: u8) -> Vec<u8> {
        // No NUL bytes, so that the padding is the only thing stripped.
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn round_trips_every_length_and_piece_size() {
        let key = [7u8; 32];
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 100, 4096, 70_000] {
            for full in [false, true] {
                let plain = content(len, len as u8);
                let file = legacy_encrypt(&key, [len as u8; 16], &plain, full);
                for piece in [16, 48, 4096, 65_536] {
                    let got = decrypt_all(&key, &file, piece).unwrap();
                    assert_eq!(got, plain, "len {len}, full {full}, piece {piece}");
                }
                let ct = ciphertext_len(file.len() as u64).unwrap();
                let (before, last) = if ct == 0 {
                    ([0u8; 16], [0u8; 16])
                } else {
                    let n = file.len();
                    (
                        file[n - 32..n - 16].try_into().unwrap(),
                        file[n - 16..].try_into().unwrap(),
                    )
                };
                assert_eq!(content_len(&key, ct, &before, &last), len as u64);
            }
        }
    }

    #[test]
    fn trailing_nuls_of_the_last_block_only_are_stripped() {
        let key = [1u8; 32];
        // 20 bytes of content then 20 NULs: 40 bytes, padded to 48. The last
        // block (bytes 32..48) is all NULs and goes; the NULs in bytes 20..32
        // belong to an earlier block and stay.
        let mut plain = content(20, 3);
        plain.resize(40, 0);
        let file = legacy_encrypt(&key, [9; 16], &plain, false);
        let got = decrypt_all(&key, &file, 16).unwrap();
        assert_eq!(got.len(), 32);
        assert_eq!(got, plain[..32]);

        // Content ending in a NUL inside its last block loses it: the
        // original's own limitation, documented.
        let mut plain = content(17, 4);
        plain.push(0);
        let file = legacy_encrypt(&key, [2; 16], &plain, false);
        assert_eq!(decrypt_all(&key, &file, 4096).unwrap(), plain[..17]);
    }

    #[test]
    fn bad_lengths_are_reported_precisely() {
        let key = [0u8; 32];
        assert_eq!(
            decrypt_all(&key, &[0u8; 5], 16).unwrap_err(),
            LegacyFormatError::TooShort { len: 5 }
        );
        let err = decrypt_all(&key, &[0u8; 16 + 35], 16).unwrap_err();
        assert_eq!(
            err,
            LegacyFormatError::NotBlockAligned {
                len: 51,
                extra: 3,
                missing: 13
            }
        );
        assert!(err.to_string().contains("51 bytes"), "{err}");
        // The IV alone is an empty file.
        assert_eq!(decrypt_all(&key, &[5u8; 16], 16).unwrap(), b"");
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let mut dec = Decryptor::new(&[0; 32], [0; 16], 48).unwrap();
        assert!(matches!(
            dec.decrypt_piece(&mut [0u8; 17]),
            Err(LegacyFormatError::Misuse(_))
        ));
        assert!(matches!(
            dec.decrypt_piece(&mut [0u8; 48]),
            Err(LegacyFormatError::Misuse(_))
        ));
        assert_eq!(dec.decrypt_piece(&mut [0u8; 32]).unwrap(), 32);
    }

    #[test]
    fn a_wrong_key_gives_other_bytes_of_the_same_layout() {
        // No MAC: the format cannot detect a wrong key; the import relies on
        // the key service handing back the right one. This pins that the
        // reader neither panics nor errors on it.
        let plain = content(100, 8);
        let file = legacy_encrypt(&[1; 32], [3; 16], &plain, false);
        let got = decrypt_all(&[2; 32], &file, 32).unwrap();
        assert_ne!(got, plain);
        assert!(got.len() <= 112);
    }
}
