//! End-to-end tests: the real `dropzone` binary driven by real clients
//! (OpenSSH sftp/scp/ssh, sshpass, paramiko).
//!
//! Every test starts its own server in its own temporary directory, so the
//! tests run in parallel. The harness is in `it/harness.rs`.

// A test binary: panicking with context is how failures are reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod it;
