//! A raw SFTP v3 client for tests that must send what no ordinary client
//! sends: pipelined floods, handles held open, writes far past the end,
//! hand-made symlink chains. It speaks through OpenSSH's `ssh -s sftp`, so
//! the transport is real; several channels can share one connection through
//! a control master ([`Master`]).

#![allow(dead_code)]

use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::harness::Server;

pub const FXP_INIT: u8 = 1;
pub const FXP_VERSION: u8 = 2;
pub const FXP_OPEN: u8 = 3;
pub const FXP_CLOSE: u8 = 4;
pub const FXP_READ: u8 = 5;
pub const FXP_WRITE: u8 = 6;
pub const FXP_LSTAT: u8 = 7;
pub const FXP_FSTAT: u8 = 8;
pub const FXP_SETSTAT: u8 = 9;
pub const FXP_FSETSTAT: u8 = 10;
pub const FXP_OPENDIR: u8 = 11;
pub const FXP_READDIR: u8 = 12;
pub const FXP_REMOVE: u8 = 13;
pub const FXP_MKDIR: u8 = 14;
pub const FXP_RMDIR: u8 = 15;
pub const FXP_REALPATH: u8 = 16;
pub const FXP_STAT: u8 = 17;
pub const FXP_RENAME: u8 = 18;
pub const FXP_READLINK: u8 = 19;
pub const FXP_SYMLINK: u8 = 20;
pub const FXP_STATUS: u8 = 101;
pub const FXP_HANDLE: u8 = 102;
pub const FXP_DATA: u8 = 103;
pub const FXP_NAME: u8 = 104;
pub const FXP_ATTRS: u8 = 105;
pub const FXP_EXTENDED: u8 = 200;
pub const FXP_EXTENDED_REPLY: u8 = 201;

pub const SSH_FXF_READ: u32 = 0x01;
pub const SSH_FXF_WRITE: u32 = 0x02;
pub const SSH_FXF_APPEND: u32 = 0x04;
pub const SSH_FXF_CREAT: u32 = 0x08;
pub const SSH_FXF_TRUNC: u32 = 0x10;
pub const SSH_FXF_EXCL: u32 = 0x20;

pub const ATTR_SIZE: u32 = 0x01;
pub const ATTR_PERMISSIONS: u32 = 0x04;
pub const ATTR_ACMODTIME: u32 = 0x08;

pub const FX_OK: u32 = 0;
pub const FX_EOF: u32 = 1;
pub const FX_NO_SUCH_FILE: u32 = 2;
pub const FX_PERMISSION_DENIED: u32 = 3;
pub const FX_FAILURE: u32 = 4;
pub const FX_OP_UNSUPPORTED: u32 = 8;

/// A request being built: its type, then fields; the id is filled in when
/// it is sent.
#[derive(Debug, Clone)]
pub struct Req {
    kind: u8,
    fields: Vec<u8>,
}

impl Req {
    pub fn new(kind: u8) -> Req {
        Req {
            kind,
            fields: Vec::new(),
        }
    }
    pub fn u32(mut self, v: u32) -> Req {
        self.fields.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Req {
        self.fields.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A length-prefixed string.
    pub fn string(mut self, s: impl AsRef<[u8]>) -> Req {
        let s = s.as_ref();
        self.fields
            .extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.fields.extend_from_slice(s);
        self
    }
    /// Raw bytes, no length.
    pub fn bytes(mut self, b: impl AsRef<[u8]>) -> Req {
        self.fields.extend_from_slice(b.as_ref());
        self
    }
    /// The fields alone (for an extension's payload).
    pub fn into_fields(self) -> Vec<u8> {
        self.fields
    }
}

/// A reply: its type, id and the bytes after the id.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: u8,
    pub id: u32,
    pub body: Vec<u8>,
}

/// A STATUS reply's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u32,
    pub message: String,
}

/// The attributes this client reads.
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    pub size: Option<u64>,
    pub permissions: Option<u32>,
}

/// Reads fields from a reply body.
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Fields(b)
    }
    pub fn u32(&mut self) -> u32 {
        let (v, rest) = self.0.split_at(4);
        self.0 = rest;
        u32::from_be_bytes(v.try_into().unwrap())
    }
    pub fn u64(&mut self) -> u64 {
        let (v, rest) = self.0.split_at(8);
        self.0 = rest;
        u64::from_be_bytes(v.try_into().unwrap())
    }
    pub fn string(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        let (v, rest) = self.0.split_at(n);
        self.0 = rest;
        v.to_vec()
    }
    pub fn attrs(&mut self) -> Attrs {
        let flags = self.u32();
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64());
        }
        if flags & 0x02 != 0 {
            self.u32();
            self.u32();
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32());
        }
        if flags & ATTR_ACMODTIME != 0 {
            self.u32();
            self.u32();
        }
        if flags & 0x8000_0000 != 0 {
            for _ in 0..self.u32() {
                self.string();
                self.string();
            }
        }
        a
    }
}

impl Reply {
    /// The status this reply carries, or a panic naming what came instead.
    pub fn status(&self) -> Status {
        assert_eq!(self.kind, FXP_STATUS, "expected a STATUS reply: {self:?}");
        let mut f = Fields::new(&self.body);
        let code = f.u32();
        let message = String::from_utf8_lossy(&f.string()).into_owned();
        Status { code, message }
    }

    /// `Ok(())` for an OK status, the status otherwise.
    pub fn ok(&self) -> Result<(), Status> {
        let s = self.status();
        if s.code == FX_OK { Ok(()) } else { Err(s) }
    }

    /// The reply's body if it is of `kind`, the status otherwise.
    fn expect(&self, kind: u8) -> Result<&[u8], Status> {
        if self.kind == kind {
            Ok(&self.body)
        } else {
            Err(self.status())
        }
    }
}

/// An OpenSSH control master: one SSH connection that [`Master::raw_sftp`]
/// opens further channels on. Killed when dropped.
pub struct Master {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    opts: Vec<String>,
    port: u16,
    dest: String,
}

impl Master {
    /// `ssh -s sftp` on this master's connection.
    fn channel_command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.opts)
            .arg("-S")
            .arg(&self.socket)
            .args(["-o", "ControlMaster=no", "-p", &self.port.to_string()])
            .args(["-s", &self.dest, "sftp"]);
        cmd
    }

    /// Another SFTP channel on this master's connection.
    pub fn raw_sftp(&self) -> RawSftp {
        RawSftp::spawn(self.channel_command())
    }

    /// Tries to open one more channel and closes it at once (no SFTP is
    /// spoken): what `ssh` printed tells whether the server refused it.
    pub fn try_channel(&self) -> (Command, std::process::Output) {
        let mut cmd = self.channel_command();
        let out = super::harness::output_with_timeout(&mut cmd, Some(b""));
        (cmd, out)
    }

    /// `sftp -b BATCH` on this master's connection (a new channel).
    pub fn sftp(&self, batch: &str) -> (Command, std::process::Output) {
        let mut cmd = Command::new("sftp");
        cmd.args(&self.opts)
            .arg("-o")
            .arg(format!("ControlPath={}", self.socket.display()))
            .args(["-o", "ControlMaster=no", "-P", &self.port.to_string()])
            .args(["-b", "-", &self.dest]);
        let out = super::harness::output_with_timeout(&mut cmd, Some(batch.as_bytes()));
        (cmd, out)
    }

    /// The master's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SFTP channel, `ssh -s sftp` underneath; the process is killed when
/// dropped (the connection then ends, unless it belongs to a [`Master`]).
pub struct RawSftp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u32,
    /// The extensions the server announced.
    pub extensions: Vec<(String, String)>,
}

impl Server {
    /// A raw SFTP channel as `user`, on a connection of its own.
    pub fn raw_sftp(&self, user: &str) -> RawSftp {
        let mut cmd = Command::new("ssh");
        cmd.args(self.key_opts(user))
            .args(["-p", &self.port.to_string()])
            .args(["-s", &self.dest(user), "sftp"]);
        RawSftp::spawn(cmd)
    }

    /// A control master logged in as `user`, waited for until ready.
    pub fn ssh_master(&self, user: &str) -> Master {
        let dir = tempfile::tempdir().expect("a directory for the control socket");
        let socket = dir.path().join("master.sock");
        let opts = self.key_opts(user);
        let port = self.port.to_string();
        let child = Command::new("ssh")
            .args(&opts)
            .arg("-S")
            .arg(&socket)
            .args(["-M", "-N", "-p", &port, &self.dest(user)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ssh -M");
        let master = Master {
            child,
            socket,
            _dir: dir,
            opts,
            port: self.port,
            dest: self.dest(user),
        };
        self.wait_for("the control master's socket", || {
            let ready = Command::new("ssh")
                .args(["-S"])
                .arg(&master.socket)
                .args(["-O", "check", "-p", &port, &self.dest(user)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ready.then_some(())
        });
        master
    }
}

impl RawSftp {
    fn spawn(mut cmd: Command) -> RawSftp {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("starting ssh -s sftp");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::with_capacity(256 * 1024, child.stdout.take().unwrap());
        let mut raw = RawSftp {
            child,
            stdin,
            stdout,
            next_id: 1,
            extensions: Vec::new(),
        };
        raw.write_packet(FXP_INIT, &3u32.to_be_bytes());
        let (kind, body) = raw.read_packet();
        assert_eq!(kind, FXP_VERSION, "the server's first reply is not VERSION");
        let mut f = Fields::new(&body[4..]);
        while !f.0.is_empty() {
            let name = String::from_utf8_lossy(&f.string()).into_owned();
            let version = String::from_utf8_lossy(&f.string()).into_owned();
            raw.extensions.push((name, version));
        }
        raw
    }

    fn write_packet(&mut self, kind: u8, body: &[u8]) {
        let mut packet = Vec::with_capacity(body.len() + 5);
        packet.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
        packet.push(kind);
        packet.extend_from_slice(body);
        self.stdin
            .write_all(&packet)
            .and_then(|()| self.stdin.flush())
            .expect("sending an SFTP request (did the server close the channel?)");
    }

    fn read_packet(&mut self) -> (u8, Vec<u8>) {
        let mut len = [0u8; 4];
        self.stdout
            .read_exact(&mut len)
            .expect("reading an SFTP reply (did the server close the channel?)");
        let len = u32::from_be_bytes(len) as usize;
        assert!(len >= 1, "an empty SFTP packet");
        let mut packet = vec![0u8; len];
        self.stdout
            .read_exact(&mut packet)
            .expect("reading an SFTP reply's body");
        let kind = packet[0];
        packet.remove(0);
        (kind, packet)
    }

    /// Sends `req` with the next id, which it returns.
    pub fn send(&mut self, req: Req) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&req.fields);
        self.write_packet(req.kind, &body);
        id
    }

    /// The next reply, whichever request it answers.
    pub fn recv(&mut self) -> Reply {
        let (kind, body) = self.read_packet();
        let id = u32::from_be_bytes(body[..4].try_into().unwrap());
        Reply {
            kind,
            id,
            body: body[4..].to_vec(),
        }
    }

    /// Sends `req` and waits for its reply (no other request in flight).
    pub fn request(&mut self, req: Req) -> Reply {
        let id = self.send(req);
        let reply = self.recv();
        assert_eq!(reply.id, id, "a reply to another request");
        reply
    }

    pub fn open(&mut self, path: &str, pflags: u32) -> Result<Vec<u8>, Status> {
        let r = self.request(Req::new(FXP_OPEN).string(path).u32(pflags).u32(0));
        r.expect(FXP_HANDLE).map(|b| Fields::new(b).string())
    }

    pub fn opendir(&mut self, path: &str) -> Result<Vec<u8>, Status> {
        let r = self.request(Req::new(FXP_OPENDIR).string(path));
        r.expect(FXP_HANDLE).map(|b| Fields::new(b).string())
    }

    /// One READDIR: the names of the batch, or the status (EOF at the end).
    pub fn readdir(&mut self, handle: &[u8]) -> Result<Vec<String>, Status> {
        let r = self.request(Req::new(FXP_READDIR).string(handle));
        let body = r.expect(FXP_NAME)?;
        let mut f = Fields::new(body);
        let count = f.u32();
        let mut names = Vec::with_capacity(count as usize);
        for _ in 0..count {
            names.push(String::from_utf8_lossy(&f.string()).into_owned());
            f.string();
            f.attrs();
        }
        Ok(names)
    }

    pub fn write(&mut self, handle: &[u8], offset: u64, data: &[u8]) -> Result<(), Status> {
        self.request(Req::new(FXP_WRITE).string(handle).u64(offset).string(data))
            .ok()
    }

    pub fn read(&mut self, handle: &[u8], offset: u64, len: u32) -> Result<Vec<u8>, Status> {
        let r = self.request(Req::new(FXP_READ).string(handle).u64(offset).u32(len));
        r.expect(FXP_DATA).map(|b| Fields::new(b).string())
    }

    pub fn close(&mut self, handle: &[u8]) -> Result<(), Status> {
        self.request(Req::new(FXP_CLOSE).string(handle)).ok()
    }

    pub fn stat(&mut self, path: &str) -> Result<Attrs, Status> {
        let r = self.request(Req::new(FXP_STAT).string(path));
        r.expect(FXP_ATTRS).map(|b| Fields::new(b).attrs())
    }

    pub fn lstat(&mut self, path: &str) -> Result<Attrs, Status> {
        let r = self.request(Req::new(FXP_LSTAT).string(path));
        r.expect(FXP_ATTRS).map(|b| Fields::new(b).attrs())
    }

    pub fn readlink(&mut self, path: &str) -> Result<String, Status> {
        let r = self.request(Req::new(FXP_READLINK).string(path));
        r.expect(FXP_NAME).map(|b| {
            let mut f = Fields::new(b);
            f.u32();
            String::from_utf8_lossy(&f.string()).into_owned()
        })
    }

    /// SYMLINK in OpenSSH's order: the target first, then the link's path.
    pub fn symlink(&mut self, target: &str, link: &str) -> Result<(), Status> {
        self.request(Req::new(FXP_SYMLINK).string(target).string(link))
            .ok()
    }

    pub fn mkdir(&mut self, path: &str) -> Result<(), Status> {
        self.request(Req::new(FXP_MKDIR).string(path).u32(0)).ok()
    }

    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), Status> {
        self.request(Req::new(FXP_RENAME).string(from).string(to))
            .ok()
    }

    pub fn setstat_size(&mut self, path: &str, size: u64) -> Result<(), Status> {
        self.request(Req::new(FXP_SETSTAT).string(path).u32(ATTR_SIZE).u64(size))
            .ok()
    }

    pub fn setstat_perms(&mut self, path: &str, mode: u32) -> Result<(), Status> {
        self.request(
            Req::new(FXP_SETSTAT)
                .string(path)
                .u32(ATTR_PERMISSIONS)
                .u32(mode),
        )
        .ok()
    }

    /// An extended request named `name` with `payload` (built with
    /// [`Req::into_fields`]).
    pub fn extended(&mut self, name: &str, payload: &[u8]) -> Reply {
        self.request(Req::new(FXP_EXTENDED).string(name).bytes(payload))
    }

    /// The ssh process's id (kill it to drop the connection abruptly).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the ssh process: the channel (and its connection, unless it
    /// belongs to a master) ends without a goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RawSftp {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn raw_client_round_trip_on_two_channels_of_one_connection() {
    let srv = Server::start();
    let master = srv.ssh_master("alice");
    let mut a = master.raw_sftp();
    let mut b = master.raw_sftp();
    let h = a
        .open("/f", SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC)
        .unwrap();
    // Pipelined: both writes in flight before either reply is read.
    let w1 = a.send(Req::new(FXP_WRITE).string(&h).u64(0).string(b"hello "));
    let w2 = a.send(Req::new(FXP_WRITE).string(&h).u64(6).string(b"world"));
    for id in [w1, w2] {
        let r = a.recv();
        assert_eq!(r.id, id);
        r.ok().unwrap();
    }
    a.close(&h).unwrap();
    let h = b.open("/f", SSH_FXF_READ).unwrap();
    assert_eq!(b.read(&h, 0, 100).unwrap(), b"hello world");
    assert_eq!(b.read(&h, 11, 100).unwrap_err().code, FX_EOF);
    b.close(&h).unwrap();
    assert_eq!(b.stat("/f").unwrap().size, Some(11));
    assert_eq!(
        a.open("/missing", SSH_FXF_READ).unwrap_err().code,
        FX_NO_SUCH_FILE
    );
}
