//! Legacy SCP: the RCP protocol OpenSSH's `scp -O` speaks when it runs
//! `scp -t` (upload: the server is the sink) or `scp -f` (download: the
//! server is the source) over an exec channel.
//!
//! The protocol is a lock-step exchange of one-line records, each answered
//! by one response: `\0` (ok), `\x01` and a message line (a warning: the
//! peer reports it and goes on with the next item) or `\x02` and a message
//! (fatal: the peer gives up).
//!
//! - `C<mode> <size> <name>` announces a file; `size` bytes and a `\0`
//!   follow once the receiver acknowledged the record.
//! - `D<mode> 0 <name>` enters a directory (with `-r`); `E` leaves it.
//! - `T<mtime> 0 <atime> 0` (with `-p`) gives the times of the next C or D.
//!
//! The command line is parsed here as a shell would parse what OpenSSH
//! generates; no shell ever runs it, and anything a shell would treat
//! specially (`;`, `|`, `$`, ...) makes the command unacceptable. Paths go
//! through [`crate::jail`]. File contents stream through the encrypted store
//! 64 KiB at a time; an upload replaces the previous version only once all
//! its bytes and the client's final `\0` arrived, so an interrupted upload
//! leaves the old file. Errors are worded as SFTP words them for its logs
//! ([`crate::outcome`]: scp has no status codes, its text is all the user
//! sees) and name client paths only.
//!
//! The parts: [`command`] parses the command line (the one place where a
//! client's text meets shell syntax); `records` is the record stream (each
//! record and its response); `sink` receives uploads (`scp -t`) and
//! `source` sends downloads (`scp -f`).

pub mod command;
mod records;
mod sink;
mod source;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::{debug, warn};

use crate::access::Access;
use crate::observe::{Reporter, escape};
use crate::outcome::{Failure, OpError, is_integrity};
use crate::store::UserStore;
use crate::store::storage::ObjectPath;
use command::Direction;
use records::{Conn, Stop};

/// Bytes per store read or write (one encrypted chunk).
const PIECE: usize = 64 * 1024;

/// Runs one legacy scp command (the exec request's command line) on
/// `stream`; returns the exit status to report. Uploads, downloads and
/// the directories it creates are reported to `events`. `access` says what
/// the user may do: an upload needs `upload` (a new file) or `overwrite`
/// (an existing one), a new directory `mkdir`, a download `download`, a
/// directory sent with `-r` `list` (see [`crate::access`]); a refused item
/// gets a warning naming the missing permission and touches nothing.
///
/// The status is 0 when every item was transferred, 1 otherwise (a refused
/// command, a warning sent to or received from the client, a protocol error
/// or a lost connection). The stream is flushed but not shut down: closing
/// the channel is the caller's business.
pub async fn serve<S>(
    stream: S,
    store: Arc<UserStore>,
    command: &str,
    events: Reporter,
    access: Access,
) -> u32
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Every scp command is a transfer (see `thread_cache`).
    crate::thread_cache::resume();
    let mut conn = Conn {
        io: BufReader::new(stream),
        errors: 0,
        events,
        access,
    };
    let result = match command::parse(command) {
        None => Err(Stop::Fatal("unsupported scp command".into())),
        Some(cmd) => {
            debug!(?cmd, "legacy scp");
            match cmd.direction {
                Direction::Sink => sink::sink(&mut conn, &store, &cmd).await,
                Direction::Source => source::source(&mut conn, &store, &cmd).await,
            }
        }
    };
    let finished = match result {
        Ok(()) => true,
        Err(Stop::Fatal(msg)) => {
            debug!(error = %escape(&msg), "scp ended with a fatal error");
            let _ = conn.send_line(2, &msg).await;
            false
        }
        Err(Stop::Lost) => {
            debug!("scp client went away");
            false
        }
        Err(Stop::ClientAbort) => false,
    };
    let _ = conn.io.flush().await;
    if finished && conn.errors == 0 { 0 } else { 1 }
}

/// Whether an exec command line is a legacy scp invocation we accept:
/// `scp` followed by options among `-t -f -r -p -d -v -q` (exactly one of
/// `-t` and `-f`), an optional `--`, and exactly one path. Anything else is
/// refused by the SSH layer.
pub fn is_scp_command(command: &str) -> bool {
    command::parse(command).is_some()
}

/// The client-facing wording of `err` (the detail SFTP logs), logged.
fn client_text(err: &OpError) -> String {
    if is_integrity(err) {
        warn!(error = %err, "integrity failure reported to scp client");
    } else {
        debug!(error = %err, "scp operation failed");
    }
    err.describe().1
}

/// `"<client path>: <what went wrong>"`.
fn failed(path: &ObjectPath, err: &OpError) -> String {
    format!("{}: {}", path.to_client_string(), client_text(err))
}

#[cfg(test)]
mod tests {
    use super::testing::{env, finish, get, put, start, start_with};
    use crate::access::{Access, Role};

    #[tokio::test]
    async fn permissions_are_checked_before_the_store() {
        let env = env();
        put(&env.store, "/old.txt", b"old");
        let drop_box = || Access::fixed(Role::UploadOnly.permissions());

        // Upload-only: a new file goes in, an existing one is not replaced.
        let (mut c, task) = start_with(&env.store, "scp -t /", drop_box());
        c.expect_ok().await;
        c.upload("new.txt", b"new").await;
        c.send(b"C0644 3 old.txt\n").await;
        let msg = c.expect_error(1).await;
        assert_eq!(
            msg,
            "scp: /old.txt: permission denied: this account may not replace or modify \
             existing files (it lacks the `overwrite` permission)"
        );
        assert_eq!(finish(c, task).await, 1);
        assert_eq!(get(&env.store, "/old.txt"), b"old");
        assert_eq!(get(&env.store, "/new.txt"), b"new");

        // ... and nothing comes out.
        let (mut c, task) = start_with(&env.store, "scp -f /old.txt", drop_box());
        c.send(b"\0").await;
        let msg = c.expect_error(1).await;
        assert!(msg.contains("lacks the `download` permission"), "{msg}");
        assert_eq!(finish(c, task).await, 1);

        // Read-only: no new directory, no directory listing without `list`.
        let read_only = Access::fixed(Role::ReadOnly.permissions());
        let (mut c, task) = start_with(&env.store, "scp -r -t /", read_only);
        c.expect_ok().await;
        c.send(b"D0755 0 dir\n").await;
        let msg = c.expect_error(1).await;
        assert!(msg.contains("lacks the `mkdir` permission"), "{msg}");
        assert_eq!(finish(c, task).await, 1);
        assert!(env.store.stat(&super::testing::p("/dir"), true).is_err());
        let download_only = Access::fixed(crate::access::Permissions::of(&[
            crate::access::Permission::Download,
        ]));
        let (mut c, task) = start_with(&env.store, "scp -r -f /", download_only);
        c.send(b"\0").await;
        let msg = c.expect_error(1).await;
        assert!(msg.contains("lacks the `list` permission"), "{msg}");
        assert_eq!(finish(c, task).await, 1);
    }

    #[tokio::test]
    async fn refused_commands_get_an_error() {
        let env = env();
        let (mut c, task) = start(&env.store, "scp -t; rm -rf /");
        assert_eq!(c.expect_error(2).await, "scp: unsupported scp command");
        assert_eq!(finish(c, task).await, 1);
    }
}
