//! Revoked keys (`[auth] revoked_keys`): an OpenSSH key revocation list
//! (KRL, as `ssh-keygen -k` makes it) or a text list of public keys, one a
//! line, as OpenSSH's `RevokedKeys` accepts.
//!
//! A KRL revokes certificates by serial number (lists, ranges, bitmaps) or
//! key id under a CA key (or under any CA), and plain keys by their blob or
//! their SHA-1 or SHA-256 hash. A revoked key also revokes every
//! certificate of that key, and a revoked CA key every certificate it
//! signed. The parser is written from OpenSSH's `PROTOCOL.krl`; it is
//! bounded by the file size ([`MAX_FILE_LEN`]), refuses critical extensions
//! and unknown sections (a list it cannot fully read is not used), and reads
//! past signature sections without checking them (the file is trusted as
//! the configuration is).
//!
//! [`RevokedKeysFile`] rereads the file when it changes (a cheap `stat` at
//! each login attempt). A file that cannot be read or parsed makes every
//! public key and certificate login fail, as OpenSSH does: a revocation that
//! cannot be checked must not let the revoked key in.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Certificate, PublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::sync::lock;

/// Largest revoked keys file read: room for about a million serials or a
/// hundred thousand keys, small enough that a wrong path cannot exhaust
/// memory.
pub const MAX_FILE_LEN: u64 = 64 * 1024 * 1024;

/// The KRL magic, `SSHKRL\n\0`.
const MAGIC: &[u8; 8] = b"SSHKRL\n\0";
/// The only KRL format version defined.
const FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;
const SECTION_EXTENSION: u8 = 255;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;
const CERT_EXTENSION: u8 = 0x39;

/// Why the revoked keys file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RevokedKeysError {
    /// The file cannot be opened or read.
    #[error("cannot read revoked keys file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is a KRL that is malformed or uses what this server does
    /// not understand.
    #[error("revoked keys file {}: invalid KRL at byte {offset}: {what}", path.display())]
    Krl {
        /// The file.
        path: PathBuf,
        /// Where in the file the problem was found.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// The file is a key list with a line that is not a public key.
    #[error("revoked keys file {}: line {line}: {what}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

/// Why a certificate is revoked, for the log and the audit reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Its serial number is revoked under its CA.
    Serial,
    /// Its key id is revoked under its CA (or any CA).
    KeyId,
    /// The certified key itself is revoked.
    Key,
    /// The CA key that signed it is revoked.
    CaKey,
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Revocation::Serial => "its serial number is revoked",
            Revocation::KeyId => "its key id is revoked",
            Revocation::Key => "its key is revoked",
            Revocation::CaKey => "its CA key is revoked",
        })
    }
}

/// Certificates revoked under one CA (or, `ca: None`, under any CA).
#[derive(Debug, Default)]
struct CertRevocations {
    ca: Option<KeyData>,
    /// Inclusive serial ranges (a listed serial is a range of one).
    ranges: Vec<(u64, u64)>,
    /// `(offset, big-endian bitmap)`: bit N set revokes serial offset + N.
    bitmaps: Vec<(u64, Vec<u8>)>,
    key_ids: HashSet<Vec<u8>>,
}

impl CertRevocations {
    fn applies_to(&self, ca: &KeyData) -> bool {
        self.ca.as_ref().is_none_or(|own| own == ca)
    }

    fn serial_revoked(&self, serial: u64) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| lo <= serial && serial <= hi)
            || self.bitmaps.iter().any(|(offset, bits)| {
                bit_set(bits, serial.wrapping_sub(*offset), serial >= *offset)
            })
    }
}

/// Whether bit `n` (counted from the least significant bit of the last
/// byte) of the big-endian `bits` is set; false unless `in_range`.
fn bit_set(bits: &[u8], n: u64, in_range: bool) -> bool {
    if !in_range {
        return false;
    }
    let Ok(byte_from_end) = usize::try_from(n / 8) else {
        return false;
    };
    let Some(index) = bits.len().checked_sub(byte_from_end + 1) else {
        return false;
    };
    bits.get(index).is_some_and(|b| b & (1 << (n % 8)) != 0)
}

/// A parsed revoked keys file: what it revokes.
#[derive(Debug, Default)]
pub struct RevokedKeys {
    certs: Vec<CertRevocations>,
    /// Public key blobs (plain keys, SSH wire encoding).
    blobs: HashSet<Vec<u8>>,
    sha1: HashSet<Vec<u8>>,
    sha256: HashSet<Vec<u8>>,
}

impl RevokedKeys {
    /// Parses the contents of a revoked keys file: a KRL if it starts with
    /// the KRL magic, a list of public keys otherwise. `path` names the file
    /// in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<RevokedKeys, RevokedKeysError> {
        if bytes.starts_with(MAGIC) {
            parse_krl(bytes).map_err(|(offset, what)| RevokedKeysError::Krl {
                path: path.to_owned(),
                offset,
                what,
            })
        } else {
            parse_key_list(bytes).map_err(|(line, what)| RevokedKeysError::Line {
                path: path.to_owned(),
                line,
                what,
            })
        }
    }

    /// Whether the plain key `key` is revoked (by blob or hash).
    pub fn key_revoked(&self, key: &KeyData) -> bool {
        let Ok(blob) = PublicKey::new(key.clone(), "").to_bytes() else {
            // A key that cannot be encoded cannot be checked: refuse it.
            return true;
        };
        self.blobs.contains(&blob)
            || (!self.sha1.is_empty() && self.sha1.contains(Sha1::digest(&blob).as_slice()))
            || (!self.sha256.is_empty() && self.sha256.contains(Sha256::digest(&blob).as_slice()))
    }

    /// Whether `cert` is revoked, and why: by serial or key id under its CA,
    /// or because its key or its CA key is revoked. Serial 0 (what a CA
    /// that assigns none writes) is never matched by serial, as in OpenSSH.
    pub fn certificate_revoked(&self, cert: &Certificate) -> Option<Revocation> {
        let ca = cert.signature_key();
        for section in self.certs.iter().filter(|s| s.applies_to(ca)) {
            if section.key_ids.contains(cert.key_id().as_bytes()) {
                return Some(Revocation::KeyId);
            }
            if cert.serial() != 0 && section.serial_revoked(cert.serial()) {
                return Some(Revocation::Serial);
            }
        }
        if self.key_revoked(cert.public_key()) {
            return Some(Revocation::Key);
        }
        if self.key_revoked(ca) {
            return Some(Revocation::CaKey);
        }
        None
    }
}

/// A KRL parse failure: the byte offset and what is wrong.
type KrlError = (usize, String);

/// A bounds-checked reader of SSH wire encoding over the whole file, which
/// knows its offset for error messages.
struct Wire<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Wire<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Wire {
            bytes,
            pos: 0,
            end: bytes.len(),
        }
    }

    fn fail<T>(&self, what: impl Into<String>) -> Result<T, KrlError> {
        Err((self.pos, what.into()))
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], KrlError> {
        match self.pos.checked_add(n).filter(|&e| e <= self.end) {
            Some(e) => {
                let out = self.bytes.get(self.pos..e).unwrap_or_default();
                self.pos = e;
                Ok(out)
            }
            None => self.fail(format!("truncated {what}")),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, KrlError> {
        Ok(self.take(1, what)?.first().copied().unwrap_or_default())
    }

    fn u32(&mut self, what: &str) -> Result<u32, KrlError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes(b.try_into().unwrap_or_default()))
    }

    fn u64(&mut self, what: &str) -> Result<u64, KrlError> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or_default()))
    }

    fn string(&mut self, what: &str) -> Result<&'a [u8], KrlError> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(len, what)
    }

    /// A reader over the next string's contents (offsets stay those of the
    /// file).
    fn sub(&mut self, what: &str) -> Result<Wire<'a>, KrlError> {
        let body = self.string(what)?;
        let start = self.pos - body.len();
        Ok(Wire {
            bytes: self.bytes,
            pos: start,
            end: self.pos,
        })
    }
}

fn parse_krl(bytes: &[u8]) -> Result<RevokedKeys, KrlError> {
    let mut r = Wire::new(bytes);
    r.take(MAGIC.len(), "magic")?;
    let version = r.u32("format version")?;
    if version != FORMAT_VERSION {
        return r.fail(format!(
            "format version {version} (only {FORMAT_VERSION} is known)"
        ));
    }
    r.u64("KRL version")?;
    r.u64("generation date")?;
    r.u64("flags")?;
    r.string("reserved field")?;
    r.string("comment")?;
    let mut out = RevokedKeys::default();
    let mut signed = false;
    while !r.is_empty() {
        let at = r.pos;
        let kind = r.u8("section type")?;
        if kind == SECTION_SIGNATURE {
            // Signatures come last; OpenSSH no longer checks them either.
            r.string("signature key")?;
            r.string("signature")?;
            signed = true;
            continue;
        }
        if signed {
            return Err((at, "section after a signature section".into()));
        }
        let mut body = r.sub("section")?;
        match kind {
            SECTION_CERTIFICATES => out.certs.push(parse_cert_section(&mut body)?),
            SECTION_EXPLICIT_KEY => {
                for blob in strings(&mut body, "revoked key")? {
                    out.blobs.insert(blob.to_vec());
                }
            }
            SECTION_FINGERPRINT_SHA1 => hashes(&mut body, 20, &mut out.sha1)?,
            SECTION_FINGERPRINT_SHA256 => hashes(&mut body, 32, &mut out.sha256)?,
            SECTION_EXTENSION => extension(&mut body)?,
            other => return Err((at, format!("unknown section type {other}"))),
        }
    }
    Ok(out)
}

/// The strings that fill `body` (at least one).
fn strings<'a>(body: &mut Wire<'a>, what: &str) -> Result<Vec<&'a [u8]>, KrlError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(body.string(what)?);
    }
    if out.is_empty() {
        return body.fail(format!("empty {what} section"));
    }
    Ok(out)
}

fn hashes(body: &mut Wire<'_>, len: usize, into: &mut HashSet<Vec<u8>>) -> Result<(), KrlError> {
    for hash in strings(body, "key hash")? {
        if hash.len() != len {
            return body.fail(format!("key hash of {} bytes (expected {len})", hash.len()));
        }
        into.insert(hash.to_vec());
    }
    Ok(())
}

/// An extension section or subsection: ignored unless critical.
fn extension(body: &mut Wire<'_>) -> Result<(), KrlError> {
    let name = body.string("extension name")?;
    let critical = body.u8("extension flag")?;
    body.string("extension contents")?;
    if critical != 0 {
        let name: String = String::from_utf8_lossy(name).chars().take(64).collect();
        return body.fail(format!("unsupported critical extension {name:?}"));
    }
    Ok(())
}

fn parse_cert_section(body: &mut Wire<'_>) -> Result<CertRevocations, KrlError> {
    let ca_blob = body.string("CA key")?;
    let ca = if ca_blob.is_empty() {
        None
    } else {
        match PublicKey::from_bytes(ca_blob) {
            Ok(key) => Some(key.key_data().clone()),
            Err(e) => return body.fail(format!("CA key: {e}")),
        }
    };
    body.string("reserved field")?;
    let mut out = CertRevocations {
        ca,
        ..CertRevocations::default()
    };
    while !body.is_empty() {
        let at = body.pos;
        let kind = body.u8("certificate subsection type")?;
        let mut sub = body.sub("certificate subsection")?;
        match kind {
            CERT_SERIAL_LIST => {
                while !sub.is_empty() {
                    let serial = sub.u64("serial")?;
                    out.ranges.push((serial, serial));
                }
            }
            CERT_SERIAL_RANGE => {
                let (lo, hi) = (sub.u64("serial range")?, sub.u64("serial range")?);
                if lo > hi {
                    return sub.fail(format!("serial range {lo}-{hi} is reversed"));
                }
                out.ranges.push((lo, hi));
            }
            CERT_SERIAL_BITMAP => {
                let offset = sub.u64("bitmap offset")?;
                let bits = sub.string("serial bitmap")?;
                if bits.first().is_some_and(|b| b & 0x80 != 0) {
                    return sub.fail("negative serial bitmap");
                }
                out.bitmaps.push((offset, bits.to_vec()));
            }
            CERT_KEY_ID => {
                for id in strings(&mut sub, "key id")? {
                    out.key_ids.insert(id.to_vec());
                }
            }
            CERT_EXTENSION => extension(&mut sub)?,
            other => {
                return Err((
                    at,
                    format!("unknown certificate subsection type {other:#x}"),
                ));
            }
        }
        if !sub.is_empty() {
            return sub.fail("trailing bytes in a certificate subsection");
        }
    }
    Ok(out)
}

/// A text list of public keys (certificate lines revoke their key).
fn parse_key_list(bytes: &[u8]) -> Result<RevokedKeys, (usize, String)> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        (
            1 + count_lines(&bytes[..e.valid_up_to()]),
            "not UTF-8 text nor a KRL".to_owned(),
        )
    })?;
    let mut out = RevokedKeys::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = parse_key_line(line).map_err(|what| (index + 1, what))?;
        let blob = PublicKey::new(key, "")
            .to_bytes()
            .map_err(|e| (index + 1, e.to_string()))?;
        out.blobs.insert(blob);
    }
    Ok(out)
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// One `type base64 [comment]` line: a public key, or a certificate (then
/// its key).
fn parse_key_line(line: &str) -> Result<KeyData, String> {
    let key_type = line.split_ascii_whitespace().next().unwrap_or_default();
    if key_type.ends_with("-cert-v01@openssh.com") {
        return Certificate::from_openssh(line)
            .map(|c| c.public_key().clone())
            .map_err(|e| format!("not a valid certificate: {e}"));
    }
    PublicKey::from_openssh(line)
        .map(|k| k.key_data().clone())
        .map_err(|e| {
            let shown: String = key_type.chars().take(40).collect();
            format!("not an OpenSSH public key ({shown:?}...): {e}")
        })
}

/// What identifies one version of the file: a change of any of these
/// (a rewrite, a rename over it, a touch) makes it be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The revoked keys file, reread when it changes.
#[derive(Debug)]
pub struct RevokedKeysFile {
    path: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// The version read (`None`: the file could not be examined).
    stamp: Option<Stamp>,
    /// What it revokes, or why it cannot be used.
    list: Result<Arc<RevokedKeys>, Arc<str>>,
}

impl RevokedKeysFile {
    /// Reads the file now: a missing, unreadable or malformed file is an
    /// error at start-up.
    pub fn open(path: &Path) -> Result<RevokedKeysFile, RevokedKeysError> {
        let (stamp, list) = read(path)?;
        Ok(RevokedKeysFile {
            path: path.to_owned(),
            state: Mutex::new(Loaded {
                stamp: Some(stamp),
                list: Ok(Arc::new(list)),
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file revokes now, read again if it changed since it was
    /// last read; `Err` with the reason when it cannot be read or parsed
    /// (every key login must then be refused). A failure is logged as an
    /// error once per change of the file.
    pub fn current(&self) -> Result<Arc<RevokedKeys>, Arc<str>> {
        let now = std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m));
        let mut state = lock(&self.state);
        if now.is_none() || now != state.stamp {
            match read(&self.path) {
                Ok((stamp, list)) => {
                    tracing::info!(path = %self.path.display(), "revoked keys file reloaded");
                    state.stamp = Some(stamp);
                    state.list = Ok(Arc::new(list));
                }
                Err(e) => {
                    if state.list.is_ok() || now != state.stamp {
                        tracing::error!(
                            error = %e,
                            "revoked keys file unusable: every public key and certificate login is refused until it is fixed"
                        );
                    }
                    state.stamp = now;
                    state.list = Err(e.to_string().into());
                }
            }
        }
        state.list.clone()
    }
}

/// Reads and parses the file, with the stamp of the version read.
fn read(path: &Path) -> Result<(Stamp, RevokedKeys), RevokedKeysError> {
    let fail = |source| RevokedKeysError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_LEN} bytes"),
        )));
    }
    Ok((Stamp::of(&meta), RevokedKeys::parse(&bytes, path)?))
}

#[cfg(test)]
mod tests;
