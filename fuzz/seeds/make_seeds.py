#!/usr/bin/env python3
"""Writes the committed seed inputs of the fuzz targets into seeds/<target>/.

Seeds are small, hand-made starting points: well-formed requests, lines and
replies that get the fuzzer past the first checks quickly. Run it again after
changing it; the outputs are committed (a few KiB in all).
"""
import json
import os
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- sftp_requests: frames of (u16 length, packet body) ---------------------

def s(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


def u32(n):
    return struct.pack(">I", n)


def u64(n):
    return struct.pack(">Q", n)


def pkt(kind, body):
    return bytes([kind]) + body


def frames(*bodies):
    return b"".join(struct.pack(">H", len(b)) + b for b in bodies)


INIT = pkt(1, u32(3))
READ, WRITE, CREAT, TRUNC, EXCL, APPEND = 1, 2, 8, 0x10, 0x20, 4
NO_ATTRS = u32(0)
PERM_ATTRS = u32(4) + u32(0o600)
SIZE_ATTRS = u32(1) + u64(70000)
TIME_ATTRS = u32(8) + u32(1000) + u32(2000)


def open_(i, path, flags, attrs=NO_ATTRS):
    return pkt(3, u32(i) + s(path) + u32(flags) + attrs)


def close(i, h):
    return pkt(4, u32(i) + s(h))


def read(i, h, off, n):
    return pkt(5, u32(i) + s(h) + u64(off) + u32(n))


def wr(i, h, off, data):
    return pkt(6, u32(i) + s(h) + u64(off) + s(data))


def path_req(kind, i, *paths):
    return pkt(kind, u32(i) + b"".join(s(p) for p in paths))


def ext(i, name, payload=b""):
    return pkt(200, u32(i) + s(name) + payload)


LSTAT, FSTAT, SETSTAT, FSETSTAT, OPENDIR, READDIR, REMOVE, MKDIR, RMDIR = 7, 8, 9, 10, 11, 12, 13, 14, 15
REALPATH, STAT, RENAME, READLINK, SYMLINK = 16, 17, 18, 19, 20

write("sftp_requests", "write-read", frames(
    INIT,
    open_(1, "/f", WRITE | CREAT | TRUNC, PERM_ATTRS),
    wr(2, "1", 0, b"hello world" * 10),
    wr(3, "1", 70000, b"far"),
    pkt(FSTAT, u32(4) + s("1")),
    close(5, "1"),
    open_(6, "/f", READ),
    read(7, "2", 0, 4096),
    read(8, "2", 65530, 100),
    close(9, "2"),
))
write("sftp_requests", "dirs", frames(
    INIT,
    path_req(MKDIR, 1, "/d") + PERM_ATTRS,
    open_(2, "/d/x", WRITE | CREAT | EXCL),
    close(3, "1"),
    path_req(OPENDIR, 4, "/d"),
    pkt(READDIR, u32(5) + s("2")),
    pkt(READDIR, u32(6) + s("2")),
    close(7, "2"),
    path_req(RENAME, 8, "/d/x", "/d/y"),
    path_req(REMOVE, 9, "/d/y"),
    path_req(RMDIR, 10, "/d"),
    path_req(REALPATH, 11, "../../.."),
))
write("sftp_requests", "links", frames(
    INIT,
    path_req(SYMLINK, 1, "../../outside/secret", "/l"),
    path_req(READLINK, 2, "/l"),
    path_req(STAT, 3, "/l"),
    path_req(LSTAT, 4, "/l"),
    open_(5, "/l", READ),
    read(6, "1", 0, 100),
    open_(7, "/l", WRITE | CREAT | TRUNC),
    ext(8, "hardlink@openssh.com", s("/l") + s("/h")),
    path_req(MKDIR, 9, "/../outside/new") + NO_ATTRS,
))
write("sftp_requests", "setstat", frames(
    INIT,
    open_(1, "/f", WRITE | CREAT | APPEND),
    wr(2, "1", 0, b"x" * 1000),
    pkt(FSETSTAT, u32(3) + s("1") + SIZE_ATTRS),
    pkt(FSETSTAT, u32(4) + s("1") + TIME_ATTRS),
    close(5, "1"),
    pkt(SETSTAT, u32(6) + s("/f") + SIZE_ATTRS),
    pkt(SETSTAT, u32(7) + s("/f") + u32(2) + u32(0) + u32(0)),
    pkt(SETSTAT, u32(8) + s("/f") + PERM_ATTRS),
))
write("sftp_requests", "extensions", frames(
    INIT,
    open_(1, "/a", WRITE | CREAT | READ),
    wr(2, "1", 0, b"abc" * 100),
    open_(3, "/b", WRITE | CREAT),
    ext(4, "copy-data", s("1") + u64(0) + u64(0) + s("2") + u64(10)),
    ext(5, "fsync@openssh.com", s("2")),
    ext(6, "fstatvfs@openssh.com", s("1")),
    ext(7, "statvfs@openssh.com", s("/")),
    ext(8, "posix-rename@openssh.com", s("/a") + s("/c")),
    ext(9, "limits@openssh.com"),
    ext(10, "expand-path@openssh.com", s("~/x/../y")),
    ext(11, "home-directory", s("u")),
    ext(12, "users-groups-by-id@openssh.com", s(u32(0) + u32(1)) + s(u32(0))),
    ext(13, "lsetstat@openssh.com", s("/c") + TIME_ATTRS),
    close(14, "1"),
    close(15, "2"),
))

# --- authorized_keys: text lines ------------------------------------------

def keygen(kind, bits=None):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k")
        cmd = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "seed@host", "-f", path]
        if bits:
            cmd[4:4] = ["-b", str(bits)]
        subprocess.run(cmd, check=True)
        return open(path + ".pub").read().strip()


ed = keygen("ed25519")
ec = keygen("ecdsa", 256)
rsa = keygen("rsa", 1024)
write("authorized_keys", "plain", ed + "\n" + ec + "\n" + rsa + "\n")
write("authorized_keys", "options",
      'from="10.0.0.0/8,!10.1.2.3,*.example.com",expiry-time="20300101" ' + ed + "\n"
      "restrict,no-pty " + ec + "\n"
      'command="/bin/false" ' + ed + "\n"
      '# comment\n\n  expiry-time="203001011230Z",from="::1,fe80::/10" ' + ed + " x y z\n")
write("authorized_keys", "bad",
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBAD\n"
      "ssh-ed25519-cert-v01@openssh.com AAAA x\n"
      'from="1.2.3.4/40" ' + ed + "\n"
      'from="unterminated ' + ed + "\n"
      "cert-authority " + ed + "\n")

# --- users_file: TOML --------------------------------------------------------

PW = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$Jm3Do2o6Xzp9hkyXjXX5mK3nWRRUXWmmhnBr+0YKqJ0"
write("users_file", "two-users",
      '[[user]]\nname = "alice"\npassword = "' + PW + '"\n'
      'authorized_keys = ["' + ed + '"]\n\n'
      '[[user]]\nname = "bob"\nauthorized_keys = [\'restrict ' + ec + '\']\n')
write("users_file", "empty", "")
write("users_file", "bad", '[[user]]\nname = "../x"\nfoo = 1\n')

# --- eaas_reply: op byte, status (2 bytes), body ---------------------------

def reply(op, status, body, any_status=False):
    which = op | (0x80 if any_status else 0)
    return bytes([which]) + struct.pack(">H", status) + (
        body if isinstance(body, bytes) else json.dumps(body).encode())


write("eaas_reply", "generate", reply(0, 200, {"Info": "Key was exsits"}))
write("eaas_reply", "encrypt", reply(1, 200, {"ciphertext": "ab" * 384}))
write("eaas_reply", "decrypt", reply(2, 200, {"plaintext": "01" * 32}))
write("eaas_reply", "error", reply(2, 200, {"Error": "Key type is not supported"}))
write("eaas_reply", "http500", reply(1, 500, b"internal error\nat line 3", True))
write("eaas_reply", "http503", reply(2, 503, b"busy", True))

# --- scp_command: exec command lines -----------------------------------------

write("scp_command", "upload", "scp -t -- /incoming")
write("scp_command", "recursive", "scp -r -p -d -t -- ~/dir")
write("scp_command", "download-quoted", "scp -p -f '/dir/file name'\\''s.bin'")
write("scp_command", "double-quotes", 'scp -f "a \\"b\\" \\$c" ')
write("scp_command", "injection", "scp -t x; rm -rf / | cat $(id) `id` > y")
print("seeds written")
