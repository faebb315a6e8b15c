//! Reading the original Dropzone's tree: its key files and the files in its
//! home directories. Nothing here writes; files are opened read-only and
//! without following a symlink.
//!
//! Layout (the original's):
//! - `keks/.<sha224 hex of the user name>.secret`: the EaaS ciphertext, in
//!   hex, of the user's AES key (the key service's plaintext is the key as 64
//!   hex characters, as for Dropzone's own EaaS-wrapped keys);
//! - `homes/<user>/...`: `NAME.enc` files in the legacy format
//!   ([`super::format`]), and possibly plaintext files the original left
//!   while a session was open.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha224};

use super::format::{self, BLOCK, Decryptor, LegacyFormatError};
use crate::keys::DataKey;

/// Suffix of the original's encrypted files.
pub const ENC_SUFFIX: &str = ".enc";

/// Suffix of the original's key files.
pub const KEK_SUFFIX: &str = ".secret";

/// Bytes read (and decrypted) at a time: the store's chunk size, so that
/// each write fills exactly one chunk of the new file.
pub const PIECE: usize = crate::store::format::CHUNK_SIZE;

/// Largest key file read: a hex RSA-16384 ciphertext is 4 KiB; anything
/// much larger is not one of the original's key files.
const MAX_KEK_LEN: u64 = 64 * 1024;

/// The name of `user`'s key file in the original's `keks/` directory.
pub fn kek_file_name(user: &str) -> String {
    format!(
        ".{}{KEK_SUFFIX}",
        hex::encode(Sha224::digest(user.as_bytes()))
    )
}

/// Reads an original key file: hex text (surrounding white space allowed);
/// returns the ciphertext bytes to send to the key service. Errors say what
/// is wrong without the path (the caller names the file).
pub fn read_kek(path: &Path) -> Result<Vec<u8>, String> {
    let file = open_nofollow(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEK_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_KEK_LEN {
        return Err(format!(
            "larger than {MAX_KEK_LEN} bytes: not a key file of the original"
        ));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| "not text: expected the key service's ciphertext in hex".to_owned())?
        .trim();
    if text.is_empty() {
        return Err("empty: expected the key service's ciphertext in hex".into());
    }
    hex::decode(text).map_err(|e| {
        format!(
            "not hex ({e}): expected the key service's ciphertext in hex, {} characters found",
            text.len()
        )
    })
}

/// Opens a regular file read-only without following a symlink at its final
/// component.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// How a source file stores its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `NAME.enc`: the original's encrypted format.
    Encrypted,
    /// Plaintext the original left behind (an open or crashed session).
    Plain,
}

/// Why a source file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a valid legacy encrypted file.
    #[error("{0}")]
    Format(#[from] LegacyFormatError),
    /// An encrypted file but no key to read it with.
    #[error("no legacy key to decrypt it with")]
    NoKey,
}

/// An open source file that yields its content in pieces.
pub struct SourceReader {
    file: File,
    /// For an encrypted file; `None` for a plaintext one.
    decryptor: Option<Decryptor>,
    /// Where the next encrypted piece starts (reads are positional).
    offset: u64,
    buf: Vec<u8>,
}

impl SourceReader {
    /// Opens `path`; an encrypted file needs `key`, and its length and IV
    /// are checked now.
    pub fn open(path: &Path, kind: SourceKind, key: Option<&DataKey>) -> Result<Self, SourceError> {
        let file = open_nofollow(path)?;
        let decryptor = match kind {
            SourceKind::Plain => None,
            SourceKind::Encrypted => {
                let key = key.ok_or(SourceError::NoKey)?;
                let len = file.metadata()?.len();
                format::ciphertext_len(len)?;
                let mut iv = [0u8; BLOCK];
                file.read_exact_at(&mut iv, 0)?;
                Some(Decryptor::new(key.expose(), iv, len)?)
            }
        };
        Ok(SourceReader {
            file,
            decryptor,
            offset: BLOCK as u64,
            buf: vec![0; PIECE],
        })
    }

    /// The next piece of content; empty at the end.
    pub fn next_piece(&mut self) -> Result<&[u8], SourceError> {
        let Some(dec) = &mut self.decryptor else {
            let n = read_full(&mut self.file, &mut self.buf)?;
            return Ok(&self.buf[..n]);
        };
        let want = dec.remaining().min(PIECE as u64) as usize;
        let piece = &mut self.buf[..want];
        // The file's length was checked at open; a shorter read means it
        // changed since, which is reported rather than guessed around.
        match self.file.read_exact_at(piece, self.offset) {
            Ok(()) => self.offset += want as u64,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was read",
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        }
        let keep = dec.decrypt_piece(piece)?;
        Ok(&self.buf[..keep])
    }
}

impl Drop for SourceReader {
    fn drop(&mut self) {
        // The buffer held plaintext.
        zeroize::Zeroize::zeroize(&mut self.buf[..]);
    }
}

/// Reads until `buf` is full or the end of the file; returns the count.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The content length of a source file, reading at most its IV and last two
/// blocks.
pub fn content_len(
    path: &Path,
    kind: SourceKind,
    key: Option<&DataKey>,
) -> Result<u64, SourceError> {
    let file = open_nofollow(path)?;
    let len = file.metadata()?.len();
    if kind == SourceKind::Plain {
        return Ok(len);
    }
    let key = key.ok_or(SourceError::NoKey)?;
    let ct = format::ciphertext_len(len)?;
    if ct == 0 {
        return Ok(0);
    }
    let mut before_last = [0u8; BLOCK];
    let mut last = [0u8; BLOCK];
    file.read_exact_at(&mut before_last, len - 2 * BLOCK as u64)?;
    file.read_exact_at(&mut last, len - BLOCK as u64)?;
    Ok(format::content_len(key.expose(), ct, &before_last, &last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_names_are_the_sha224_of_the_user_name() {
        // sha224("alice"), as `printf alice | sha224sum` prints it.
        assert_eq!(
            kek_file_name("alice"),
            ".38b7e5d5651aaf85694a7a7c6d5db1275af86a6df93a36b8a4a2e771.secret"
        );
        assert_eq!(kek_file_name("alice").len(), 1 + 56 + KEK_SUFFIX.len());
        assert_ne!(kek_file_name("alice"), kek_file_name("bob"));
    }

    #[test]
    fn key_files_are_hex_with_white_space_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "  00ff10\n").unwrap();
        assert_eq!(read_kek(&p).unwrap(), vec![0, 0xff, 0x10]);
        std::fs::write(&p, "").unwrap();
        assert!(read_kek(&p).unwrap_err().contains("empty"));
        std::fs::write(&p, "xyz").unwrap();
        assert!(read_kek(&p).unwrap_err().contains("not hex"));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_kek(&p).unwrap_err().contains("not text"));
        std::fs::write(&p, "0".repeat(70_000)).unwrap();
        assert!(read_kek(&p).unwrap_err().contains("larger than"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read_kek(&link).unwrap_err().contains("cannot open"));
    }
}
