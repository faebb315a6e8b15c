//! Decoding and encoding the payloads of extended requests, which
//! russh-sftp hands over as raw bytes.

use russh_sftp::protocol::FileAttributes;

/// A payload that ended early or held invalid data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed request payload")]
pub struct Malformed;

/// Reads SSH wire types from a byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Result<String, Malformed> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| Malformed)
    }

    /// SFTP v3 ATTRS.
    pub fn attrs(&mut self) -> Result<FileAttributes, Malformed> {
        const SIZE: u32 = 0x1;
        const UIDGID: u32 = 0x2;
        const PERMISSIONS: u32 = 0x4;
        const ACMODTIME: u32 = 0x8;
        const EXTENDED: u32 = 0x8000_0000;
        let flags = self.u32()?;
        let mut a = FileAttributes::empty();
        if flags & SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & UIDGID != 0 {
            a.uid = Some(self.u32()?);
            a.gid = Some(self.u32()?);
        }
        if flags & PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ACMODTIME != 0 {
            a.atime = Some(self.u32()?);
            a.mtime = Some(self.u32()?);
        }
        if flags & EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Ok(a)
    }
}

/// Builds an SSH wire payload.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A big-endian u32.
    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A big-endian u64.
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A length-prefixed byte string.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(v);
        self
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_input() {
        let b = Writer::default().u32(7).u64(1 << 40).bytes(b"hi").finish();
        let mut r = Reader::new(&b);
        assert_eq!(r.u32(), Ok(7));
        assert_eq!(r.u64(), Ok(1 << 40));
        assert_eq!(r.string().as_deref(), Ok("hi"));
        assert_eq!(r.u32(), Err(Malformed));
        let mut r = Reader::new(&[0, 0, 0, 9, b'x']);
        assert_eq!(r.bytes(), Err(Malformed));
    }

    #[test]
    fn attrs_with_every_field() {
        let b = Writer::default()
            .u32(0x8000_000f)
            .u64(5)
            .u32(1)
            .u32(2)
            .u32(0o644)
            .u32(10)
            .u32(20)
            .u32(1)
            .bytes(b"k")
            .bytes(b"v")
            .finish();
        let a = Reader::new(&b).attrs().unwrap();
        assert_eq!(
            (a.size, a.uid, a.gid, a.permissions),
            (Some(5), Some(1), Some(2), Some(0o644))
        );
        assert_eq!((a.atime, a.mtime), (Some(10), Some(20)));
    }
}
