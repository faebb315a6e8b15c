//! Decoding and encoding SSH wire data by hand: the payloads of extended
//! requests, which russh-sftp hands over as raw bytes, and the two packets
//! that carry file data (WRITE and DATA), which are handled here without
//! copying the data the way a general decoder or encoder would.

use bytes::Bytes;
use russh_sftp::protocol::FileAttributes;

/// SSH_FXP_WRITE.
pub const FXP_WRITE: u8 = 6;
/// SSH_FXP_DATA.
pub const FXP_DATA: u8 = 103;

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

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
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

/// An SSH_FXP_WRITE request whose data shares the request's buffer.
#[derive(Debug)]
pub struct WriteRequest {
    /// Request id.
    pub id: u32,
    /// The file handle.
    pub handle: String,
    /// Where to write.
    pub offset: u64,
    /// What to write: a slice of the request packet, not a copy.
    pub data: Bytes,
}

/// Decodes an SSH_FXP_WRITE packet body (type byte first, no length).
pub fn parse_write(body: &Bytes) -> Result<WriteRequest, Malformed> {
    let mut r = Reader::new(body);
    if r.take(1)? != [FXP_WRITE] {
        return Err(Malformed);
    }
    let id = r.u32()?;
    let handle = r.string()?;
    let offset = r.u64()?;
    let len = r.u32()? as usize;
    let start = body.len() - r.remaining();
    // Trailing bytes after the data are ignored, as the general decoder did.
    r.take(len)?;
    Ok(WriteRequest {
        id,
        handle,
        offset,
        data: body.slice(start..start + len),
    })
}

/// Length, type, id and data length in front of a DATA reply's data.
const DATA_HEADER: usize = 4 + 1 + 4 + 4;

/// Builds a whole SSH_FXP_DATA packet (length prefix included) with `fill`
/// appending the data straight into it. `fill` returns how many bytes it
/// appended; `None` when that is 0 (end of file).
pub fn data_reply<E>(
    id: u32,
    max_len: usize,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<usize, E>,
) -> Result<Option<Bytes>, E> {
    let mut buf = super::buffers::take(DATA_HEADER + max_len);
    buf.resize(DATA_HEADER, 0);
    let n = fill(&mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    debug_assert_eq!(buf.len(), DATA_HEADER + n);
    let n = n as u32;
    buf[0..4].copy_from_slice(&(n + 9).to_be_bytes());
    buf[4] = FXP_DATA;
    buf[5..9].copy_from_slice(&id.to_be_bytes());
    buf[9..13].copy_from_slice(&n.to_be_bytes());
    Ok(Some(super::buffers::freeze(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh_sftp::protocol::{Data, Packet, Write};

    #[test]
    fn data_reply_matches_the_general_encoder() {
        let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let ours = data_reply::<()>(42, 80_000, |b| {
            b.extend_from_slice(&data);
            Ok(data.len())
        })
        .unwrap()
        .unwrap();
        let theirs = Bytes::try_from(Packet::Data(Data { id: 42, data })).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(data_reply::<()>(1, 10, |_| Ok(0)).unwrap(), None);
    }

    #[test]
    fn write_parses_as_the_general_decoder_does() {
        let packet = Bytes::try_from(Packet::Write(Write {
            id: 7,
            handle: "h1".into(),
            offset: 1 << 33,
            data: b"payload".to_vec(),
        }))
        .unwrap();
        // parse_write takes the body: without the length prefix.
        let body = packet.slice(4..);
        let w = parse_write(&body).unwrap();
        assert_eq!((w.id, w.handle.as_str(), w.offset), (7, "h1", 1 << 33));
        assert_eq!(&w.data[..], b"payload");
        // Every truncation is malformed; a trailing byte is ignored.
        for cut in 0..body.len() {
            assert!(parse_write(&body.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert_eq!(
            &parse_write(&Bytes::from(longer)).unwrap().data[..],
            b"payload"
        );
        // Another packet type is not a WRITE.
        let mut other = body.to_vec();
        other[0] = 5;
        assert!(parse_write(&Bytes::from(other)).is_err());
    }

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
