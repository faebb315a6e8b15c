//! Dropzone: an SFTP/SCP server that never keeps a user's file in plaintext
//! on disk.
//!
//! Every stored file is encrypted with a key derived from its owner's data
//! key (AES-256-CBC, HMAC-SHA256 per 64 KiB chunk, see `docs/FORMAT.md`);
//! data keys are stored only wrapped by a master key held in a key service.
//!
//! The crate is layered; each module uses only the ones listed below it
//! (the binaries in `src/bin/` use any of them):
//!
//! - [`ssh`]: the russh server: host keys, offered algorithms, login grace,
//!   connection and session caps, authentication, session and channel
//!   policy; hands the `sftp` subsystem to [`sftp`] and `scp` to [`scp`].
//! - [`legacy`]: `dropzone import-legacy`: the original Dropzone's files and
//!   keys, re-encrypted into the store (a tool above [`store`] and [`keys`]).
//! - [`auth`]: the users file, authorized keys and password hashes, and
//!   per-source failure penalties; Linux users through PAM and their
//!   `~/.ssh/authorized_keys` (feature `pam`).
//! - [`sftp`]: SFTP v3 request dispatch over the encrypted store, with the
//!   one place that turns errors into SFTP status replies.
//! - [`scp`]: legacy `scp -t`/`scp -f` (OpenSSH `scp -O`) over exec.
//! - [`upload`]: what happens around an upload's commit: the scan command
//!   that must accept it, and the notification POSTed once it is stored.
//! - [`outcome`]: what a failed file operation tells the client and the
//!   audit log (store and jail errors described once, for [`sftp`] and
//!   [`scp`]), and the blocking threads their store work runs on.
//! - [`observe`]: the one path for what happened: events from `ssh`, `sftp`
//!   and `scp` go to the audit log (JSON lines) and the Prometheus metrics;
//!   key-service calls are timed by a wrapper around the [`kms`] backend.
//! - [`config`]: the TOML configuration, parsed then validated into the
//!   settings the layers above are given.
//! - [`jail`]: turns a client's path into a normalised path inside the
//!   user's root; the storage backend resolves it without following links out.
//! - [`quota`]: each user's quota usage kept across restarts (records
//!   beside the wrapped keys), the server's one account per user, and
//!   `dropzone quota scan`.
//! - [`store`]: encrypted files: the pure on-disk [`store::format`], the
//!   random-access [`store::EncryptedFile`], and the [`store::storage`] trait
//!   that hides the filesystem.
//! - [`keys`]: per-user data keys: creation, wrapped key files, the
//!   in-memory cache that zeroizes keys after the last session.
//! - [`kms`]: the [`kms::KeyWrapper`] trait and its backends (a local RSA
//!   key file by default, or the EaaS HTTP client).
//! - [`eaas`]: the reference key service run by `dropzone-eaas` (a separate
//!   process; the HTTP API of the original EaaS).
//! - [`aws`]: what AWS and AWS-compatible services take: the credential
//!   chain, SigV4 signing, the HTTP client on rustls with ring, and the S3
//!   client the object store backend uses.
//! - [`daemon`]: logging, signal handling and exit statuses shared by both
//!   servers.
//! - [`username`]: the validated user name every layer shares.
//! - [`address_pattern`]: address lists (`from=`, `penalty_exempt`), shared
//!   by [`auth`] and [`config`].
//! - [`access`]: per-user permissions (roles such as `upload-only`) and the
//!   one check SFTP and scp requests pass before they touch the store.
//!
//! Below them all, `sync` holds the one poison-tolerant `lock` every module
//! uses for its mutexes, `atomic_file` the durable replacement of small
//! secret files, and `thread_cache` the switch of a thread's allocator
//! cache (off for a connection until its first transfer).
//!
//! What this crate does not do: it never decrypts a file to disk, never
//! writes a data key unwrapped, and never lets a client path reach the
//! filesystem without going through [`jail`] and [`store::storage`].

pub mod access;
pub mod address_pattern;
mod atomic_file;
pub mod auth;
pub mod aws;
pub mod config;
pub mod daemon;
pub mod eaas;
pub mod jail;
pub mod keys;
pub mod kms;
pub mod legacy;
pub mod observe;
pub mod outcome;
pub mod quota;
pub mod scp;
pub mod sftp;
pub mod ssh;
pub mod store;
mod sync;
pub mod thread_cache;
pub mod upload;
pub mod username;
