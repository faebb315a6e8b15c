//! The record stream: the lock-step exchange of one-line records and
//! responses both directions share, and the fields of the records an
//! upload sends (`C`, `D`, `T`).

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::debug;

use crate::access::Access;
use crate::observe::{Reporter, escape};

/// Longest record or message line accepted from the client.
const MAX_LINE: usize = 8 * 1024;

/// Why a transfer ended early.
#[derive(Debug)]
pub(super) enum Stop {
    /// The connection failed or the client went away.
    Lost,
    /// The client sent a fatal error (`\x02`).
    ClientAbort,
    /// A fatal condition, reported to the client with `\x02`.
    Fatal(String),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        debug!(error = %e, "scp stream failed");
        Stop::Lost
    }
}

/// A malformed record or line: fatal.
pub(super) fn protocol(what: &str) -> Stop {
    Stop::Fatal(format!("protocol error: {what}"))
}

/// The client's answer to a record: ok, or the warning it sent.
pub(super) type Response = Result<(), String>;

/// The scp stream and the count of warnings exchanged.
pub(super) struct Conn<S> {
    /// The channel, buffered for reading lines.
    pub(super) io: BufReader<S>,
    /// Warnings sent or received, and errors the client reported.
    pub(super) errors: u32,
    /// Where uploads, downloads and new directories are reported.
    pub(super) events: Reporter,
    /// What the user may do, asked before each item touches the store.
    pub(super) access: Access,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Acknowledges the last record.
    pub(super) async fn ok(&mut self) -> Result<(), Stop> {
        self.send(b"\0").await
    }

    /// Sends a warning: the client prints it and goes on.
    pub(super) async fn warn(&mut self, msg: &str) -> Result<(), Stop> {
        self.errors += 1;
        debug!(message = msg, "scp warning sent to client");
        self.send_line(1, msg).await
    }

    /// Sends `\x01` (warning) or `\x02` (fatal) and `scp: <msg>`.
    pub(super) async fn send_line(&mut self, code: u8, msg: &str) -> Result<(), Stop> {
        let msg: String = msg
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let mut line = Vec::with_capacity(msg.len() + 7);
        line.push(code);
        line.extend_from_slice(b"scp: ");
        line.extend_from_slice(msg.as_bytes());
        line.push(b'\n');
        self.send(&line).await
    }

    /// Reads one line without its `\n`; `None` at a clean end of stream.
    pub(super) async fn read_line(&mut self) -> Result<Option<Vec<u8>>, Stop> {
        let mut line = Vec::new();
        (&mut self.io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if line.is_empty() {
            return Ok(None);
        }
        if line.pop() != Some(b'\n') {
            if line.len() + 1 >= MAX_LINE {
                return Err(protocol("line too long"));
            }
            return Err(Stop::Lost);
        }
        Ok(Some(line))
    }

    /// Reads the client's response to what was just sent. A warning is
    /// counted and returned; a fatal error or anything else ends the
    /// transfer.
    pub(super) async fn response(&mut self) -> Result<Response, Stop> {
        let mut byte = [0u8; 1];
        self.io.read_exact(&mut byte).await?;
        if byte[0] == 0 {
            return Ok(Ok(()));
        }
        let rest = self.read_line().await?.ok_or(Stop::Lost)?;
        let msg = String::from_utf8_lossy(&rest).into_owned();
        debug!(message = %escape(&msg), code = byte[0], "scp client reported an error");
        self.errors += 1;
        if byte[0] == 1 {
            Ok(Err(msg))
        } else {
            Err(Stop::ClientAbort)
        }
    }
}

/// Times from a `T` record, seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Times {
    pub(super) mtime: i64,
    pub(super) atime: i64,
}

/// The fields of a `C` or `D` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) mode: u32,
    pub(super) size: u64,
    pub(super) name: Vec<u8>,
}

/// Parses the body (after the `C`/`D`) of `<mode> <size> <name>`.
pub(super) fn parse_entry(body: &[u8]) -> Result<Entry, Stop> {
    let (Some(digits), Some(&b' ')) = (body.get(..4), body.get(4)) else {
        return Err(protocol("bad mode"));
    };
    let mut mode = 0u32;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return Err(protocol("bad mode"));
        }
        mode = (mode << 3) | u32::from(d - b'0');
    }
    let rest = &body[5..];
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        return Err(protocol("size not delimited"));
    };
    let size = parse_number(&rest[..space]).ok_or_else(|| protocol("bad size"))?;
    Ok(Entry {
        mode,
        size,
        name: rest[space + 1..].to_vec(),
    })
}

/// Parses the body (after the `T`) of `<mtime> <usec> <atime> <usec>`.
pub(super) fn parse_times(body: &[u8]) -> Result<Times, Stop> {
    let fields: Vec<Option<u64>> = body.split(|&b| b == b' ').map(parse_number).collect();
    let [Some(mtime), Some(mtime_usec), Some(atime), Some(atime_usec)] = fields[..] else {
        return Err(protocol("bad time record"));
    };
    if mtime_usec > 999_999 || atime_usec > 999_999 {
        return Err(protocol("bad time record"));
    }
    match (i64::try_from(mtime), i64::try_from(atime)) {
        (Ok(mtime), Ok(atime)) => Ok(Times { mtime, atime }),
        _ => Err(protocol("time out of range")),
    }
}

/// A non-empty run of decimal digits that fits in a `u64`.
fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
