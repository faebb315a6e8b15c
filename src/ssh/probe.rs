//! The health probe of `dropzone healthcheck`: connect, read the server's
//! identification line, and check that it is SSH 2.0.
//!
//! It is a client of the server, not part of it: blocking, standard library
//! only, and bounded by one deadline for connecting and reading together,
//! so that a container engine's check never hangs.

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Why the server is not healthy; says which address and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(String);

/// Connects to the first of `targets` that accepts and reads its SSH
/// identification line, all before `deadline` (`timeout` is the whole
/// allowance, named in messages). Returns the address that answered and
/// the line, without its CR LF.
pub fn check_ssh_banner(
    targets: &[SocketAddr],
    deadline: Instant,
    timeout: Duration,
) -> Result<(SocketAddr, String), ProbeError> {
    let fail = |message: String| ProbeError(message);
    let remaining = |what: &str, addr: &SocketAddr| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| fail(format!("{addr}: timed out after {timeout:?} {what}")))
    };
    let mut last_error = None;
    let mut connected = None;
    for addr in targets {
        let left = remaining("connecting", addr)?;
        match TcpStream::connect_timeout(addr, left) {
            Ok(stream) => {
                connected = Some((*addr, stream));
                break;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                last_error = Some(fail(format!(
                    "{addr}: timed out after {timeout:?} connecting"
                )));
            }
            Err(e) => last_error = Some(fail(format!("{addr}: cannot connect: {e}"))),
        }
    }
    let Some((addr, mut stream)) = connected else {
        return Err(last_error.unwrap_or_else(|| fail("no address to connect to".to_owned())));
    };
    // RFC 4253 4.2: the identification line is at most 255 bytes with CR LF.
    let mut line = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !line.contains(&b'\n') && line.len() < 255 {
        let left = remaining("waiting for the SSH identification", &addr)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| fail(format!("{addr}: setting a read timeout: {e}")))?;
        match stream.read(&mut buf[..255 - line.len()]) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(fail(format!(
                    "{addr}: timed out after {timeout:?} waiting for the SSH identification"
                )));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(format!("{addr}: reading the SSH identification: {e}"))),
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let text = String::from_utf8_lossy(&line[..end]);
    let text = text.trim_end_matches('\r');
    if line.is_empty() {
        return Err(fail(format!(
            "{addr}: connection closed without an SSH identification"
        )));
    }
    if !text.starts_with("SSH-2.0-") {
        let shown: String = text.chars().take(80).collect();
        return Err(fail(format!(
            "{addr}: not an SSH 2.0 server: it sent {shown:?}"
        )));
    }
    Ok((addr, text.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;

    use super::*;

    /// A listener on 127.0.0.1 that sends `reply` to its first connection.
    fn answering(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.write_all(reply);
        });
        addr
    }

    fn probe(addr: SocketAddr) -> Result<(SocketAddr, String), ProbeError> {
        let timeout = Duration::from_secs(30);
        check_ssh_banner(&[addr], Instant::now() + timeout, timeout)
    }

    #[test]
    fn an_ssh_identification_is_healthy() {
        let addr = answering(b"SSH-2.0-dropzone\r\nmore");
        assert_eq!(probe(addr).unwrap(), (addr, "SSH-2.0-dropzone".to_owned()));
    }

    #[test]
    fn anything_else_says_what_it_got() {
        let addr = answering(b"HTTP/1.1 400 Bad Request\r\n");
        let e = probe(addr).unwrap_err().to_string();
        assert!(
            e.contains("not an SSH 2.0 server") && e.contains("HTTP/1.1"),
            "{e}"
        );
        let addr = answering(b"");
        let e = probe(addr).unwrap_err().to_string();
        assert!(e.contains("closed without an SSH identification"), "{e}");
    }

    #[test]
    fn a_past_deadline_fails_before_connecting() {
        let addr = answering(b"SSH-2.0-x\r\n");
        let e = check_ssh_banner(&[addr], Instant::now(), Duration::from_secs(1));
        assert!(e.unwrap_err().to_string().contains("timed out"));
    }
}
