//! The sink (`scp -t`): the client uploads. Each file goes into a staged
//! upload that replaces the previous version only once all its bytes and
//! the client's final `\0` arrived; directories (`-r`) are created as
//! their `D` records come and get their final mode and times at their `E`.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::task::JoinHandle;
use tracing::debug;

use super::command::ScpCommand;
use super::records::{Conn, Entry, Stop, Times, parse_entry, parse_times, protocol};
use super::{PIECE, client_text, failed};
use crate::access::Permission;
use crate::jail;
use crate::observe::{EventKind, Transfer, escape};
use crate::outcome::{self, OpError, blocking, error_outcome, joined};
use crate::store::storage::{Kind, ObjectPath};
use crate::store::{EncryptedFile, OpenOptions, StoreError, UserStore};

/// Deepest directory nesting accepted in an upload.
const MAX_DEPTH: usize = 256;
/// Mode bits removed when the client does not ask to preserve modes, as a
/// usual umask would.
const UMASK: u32 = 0o022;

/// The mode a new file or directory gets: as sent with `-p`, else with the
/// usual umask applied. Special bits are never kept.
fn effective_mode(mode: u32, preserve: bool) -> u32 {
    if preserve {
        mode & 0o777
    } else {
        mode & 0o777 & !UMASK
    }
}

/// A directory entered with `D`, finished at its `E`.
struct OpenDir {
    path: ObjectPath,
    times: Option<Times>,
    /// Mode to set at the end (a new directory is created writable).
    mode: Option<u32>,
}

/// Receives what the client uploads to `cmd.path` (a directory, or the
/// file's name) until the client ends the stream.
pub(super) async fn sink<S>(
    conn: &mut Conn<S>,
    store: &Arc<UserStore>,
    cmd: &ScpCommand,
) -> Result<(), Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = jail::resolve(&cmd.path)
        .map_err(|e| Stop::Fatal(format!("{}: {}", cmd.path, client_text(&OpError::Jail(e)))))?;
    let (s, t) = (store.clone(), target.clone());
    let target_is_dir = match blocking(move || Ok(s.stat(&t, true)?)).await {
        Ok(attrs) => attrs.kind == Kind::Dir,
        Err(e) if cmd.target_should_be_dir => return Err(Stop::Fatal(failed(&target, &e))),
        Err(_) => false,
    };
    if cmd.target_should_be_dir && !target_is_dir {
        return Err(Stop::Fatal(format!(
            "{}: not a directory",
            target.to_client_string()
        )));
    }
    conn.ok().await?;

    let mut dirs: Vec<OpenDir> = Vec::new();
    let mut times: Option<Times> = None;
    loop {
        let Some(line) = conn.read_line().await? else {
            // A clean end between records; inside a directory the client
            // went away without finishing it.
            return if dirs.is_empty() {
                Ok(())
            } else {
                Err(Stop::Lost)
            };
        };
        let Some((&kind, body)) = line.split_first() else {
            return Err(protocol("unexpected <newline>"));
        };
        match kind {
            1 | 2 => {
                // The client could not read one of its files (or gives up).
                let msg = String::from_utf8_lossy(body);
                debug!(message = %escape(&msg), "scp client reported an error");
                conn.errors += 1;
                if kind == 2 {
                    return Err(Stop::ClientAbort);
                }
            }
            b'E' => {
                if !body.is_empty() {
                    return Err(protocol("bad end-of-directory record"));
                }
                let Some(dir) = dirs.pop() else {
                    conn.ok().await?;
                    return Ok(());
                };
                let path = dir.path.clone();
                let s = store.clone();
                let finished = blocking(move || {
                    if let Some(t) = dir.times {
                        s.set_times(&dir.path, t.atime, t.mtime)?;
                    }
                    if let Some(mode) = dir.mode {
                        s.set_permissions(&dir.path, mode)?;
                    }
                    Ok(())
                })
                .await;
                match finished {
                    Ok(()) => conn.ok().await?,
                    Err(e) => conn.warn(&failed(&path, &e)).await?,
                }
            }
            b'T' => {
                times = Some(parse_times(body)?);
                conn.ok().await?;
            }
            b'C' | b'D' => {
                let entry = parse_entry(body)?;
                let entry_times = times.take();
                let parent = match dirs.last() {
                    Some(dir) => Some(&dir.path),
                    None => target_is_dir.then_some(&target),
                };
                let path = match entry_path(parent, &target, &entry.name) {
                    Ok(path) => path,
                    Err(msg) => {
                        // Refusing the record makes the client skip the item.
                        conn.warn(&msg).await?;
                        continue;
                    }
                };
                if kind == b'C' {
                    receive_file(conn, store, cmd.preserve, path, &entry, entry_times).await?;
                    continue;
                }
                if !cmd.recursive {
                    return Err(protocol("received directory without -r"));
                }
                if dirs.len() >= MAX_DEPTH {
                    return Err(protocol("directories nested too deeply"));
                }
                if let Some(dir) =
                    enter_dir(conn, store, cmd.preserve, path, entry.mode, entry_times).await?
                {
                    dirs.push(dir);
                }
            }
            _ => return Err(protocol("expected control record")),
        }
    }
}

/// Where a `C`/`D` record's item goes: `parent/name` when the destination is
/// a directory, else the target itself. The name must be a single component
/// either way; the error is the warning to send.
fn entry_path(
    parent: Option<&ObjectPath>,
    target: &ObjectPath,
    name: &[u8],
) -> Result<ObjectPath, String> {
    let shown = String::from_utf8_lossy(name);
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(format!("error: unexpected filename: {shown}"));
    }
    let Ok(name) = std::str::from_utf8(name) else {
        return Err(format!("{shown}: file names must be valid UTF-8"));
    };
    match parent {
        None => Ok(target.clone()),
        Some(dir) => dir.join(name).map_err(|e| {
            let err = OpError::Jail(e.into());
            format!("{}: {}", shown, client_text(&err))
        }),
    }
}

/// Handles a `D` record: uses or creates the directory and acknowledges, or
/// warns (the client then skips the directory).
async fn enter_dir<S>(
    conn: &mut Conn<S>,
    store: &Arc<UserStore>,
    preserve: bool,
    path: ObjectPath,
    mode: u32,
    times: Option<Times>,
) -> Result<Option<OpenDir>, Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let final_mode = effective_mode(mode, preserve);
    let (s, p) = (store.clone(), path.clone());
    let access = conn.access.clone();
    let started = std::time::Instant::now();
    // Besides the step's result, whether a directory was to be created: a
    // `mkdir` event, reported whether or not that worked.
    let entered = blocking(move || {
        let mut creating = false;
        let step = (|| -> Result<Option<u32>, OpError> {
            match s.stat(&p, true) {
                Ok(attrs) if attrs.kind == Kind::Dir => {
                    if preserve {
                        s.set_permissions(&p, final_mode)?;
                    }
                    Ok(None)
                }
                Ok(_) => Err(io::Error::from_raw_os_error(libc::ENOTDIR).into()),
                Err(e) if e.is_not_found() => {
                    // Created writable so its contents can be written; the
                    // final mode is set at its `E`.
                    creating = true;
                    access.check(&[Permission::Mkdir])?;
                    let created = final_mode | 0o700;
                    s.mkdir(&p, Some(created))?;
                    Ok((created != final_mode).then_some(final_mode))
                }
                Err(e) => Err(e.into()),
            }
        })();
        Ok((step, creating))
    })
    .await;
    let (entered, creating) = match entered {
        Ok((step, creating)) => (step, creating),
        Err(e) => (Err(e), false),
    };
    if creating {
        conn.events.operation(
            EventKind::Mkdir,
            &path.to_client_string(),
            None,
            started.elapsed(),
            outcome::outcome_of(&entered),
        );
    }
    match entered {
        Ok(mode) => {
            conn.ok().await?;
            Ok(Some(OpenDir { path, times, mode }))
        }
        Err(e) => {
            conn.warn(&failed(&path, &e)).await?;
            Ok(None)
        }
    }
}

/// Handles a `C` record: receives the file into a staged upload that
/// replaces `path` only once every byte and the client's final `\0` arrived.
async fn receive_file<S>(
    conn: &mut Conn<S>,
    store: &Arc<UserStore>,
    preserve: bool,
    path: ObjectPath,
    entry: &Entry,
    times: Option<Times>,
) -> Result<(), Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mode = effective_mode(entry.mode, preserve);
    let opts = OpenOptions {
        write: true,
        create: true,
        truncate: true,
        mode: Some(mode),
        ..OpenOptions::default()
    };
    let (s, p) = (store.clone(), path.clone());
    // Dropped unfinished on an early return (a lost connection), it is
    // reported as aborted.
    let mut transfer = conn
        .events
        .transfer_started(EventKind::Upload, path.to_client_string());
    let access = conn.access.clone();
    let size = entry.size;
    let file = match blocking(move || {
        let mut opts = opts;
        // `upload` for a new file, `overwrite` for an existing one, checked
        // before anything is opened.
        let exists = || match s.stat(&p, true) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(OpError::from(e)),
        };
        opts.exclusive = access.check_write(exists)?;
        let file = s.open(&p, opts)?;
        // The size is known before the data: a file the size limit or the
        // quota has no room for is refused now (dropping it discards the
        // upload), not after the client has sent it all.
        file.check_growth(Some(size))?;
        Ok(file)
    })
    .await
    {
        Ok(file) => Arc::new(file),
        // The client skips the data of a refused file.
        Err(e) => {
            transfer.finish(error_outcome(&e));
            return conn.warn(&failed(&path, &e)).await;
        }
    };
    conn.ok().await?;
    // On any early return below, dropping `file` without close discards the
    // staged upload: the previous version stays.
    let write_failure = receive_data(conn, &file, entry.size, &mut transfer).await?;
    if let Err(msg) = conn.response().await? {
        debug!(path = %escape(&path.to_client_string()), message = %escape(&msg), "client abandoned an upload");
        drop(file);
        let warning = format!(
            "{}: not stored: the client reported an error",
            path.to_client_string()
        );
        transfer.finish(Err((crate::observe::ABORTED, warning.clone())));
        return conn.warn(&warning).await;
    }
    if let Some(e) = write_failure {
        drop(file);
        transfer.finish(error_outcome(&e));
        return conn.warn(&failed(&path, &e)).await;
    }
    let closed = blocking(move || {
        if preserve {
            file.set_permissions(mode)?;
        }
        if let Some(t) = times {
            file.set_times(t.atime, t.mtime)?;
        }
        Ok(file.close()?)
    })
    .await;
    match closed {
        Ok(()) => {
            transfer.finish(Ok(()));
            conn.ok().await
        }
        Err(e) => {
            if let OpError::Store(StoreError::Rejected { reason }) = &e {
                transfer.rejected(reason);
            }
            transfer.finish(error_outcome(&e));
            conn.warn(&failed(&path, &e)).await
        }
    }
}

/// Reads `size` bytes of file data from the client into `file`, one piece
/// at a time, encrypting a piece while the next one arrives. After a store
/// error the rest is read and dropped, to stay in step with the client; the
/// error is returned.
async fn receive_data<S>(
    conn: &mut Conn<S>,
    file: &Arc<EncryptedFile>,
    size: u64,
    transfer: &mut Transfer,
) -> Result<Option<OpError>, Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut failure: Option<OpError> = None;
    let mut writing: Option<JoinHandle<Result<(), StoreError>>> = None;
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(PIECE as u64) as usize;
        let mut buf = vec![0u8; len];
        if let Err(e) = conn.io.read_exact(&mut buf).await {
            // Let the write in flight end, so that the staged upload is
            // discarded by the time the session reports its end.
            if let Some(task) = writing.take() {
                let _ = task.await;
            }
            return Err(e.into());
        }
        transfer.received(len as u64);
        if let Some(task) = writing.take()
            && let Err(e) = joined(task.await)
        {
            failure = Some(e);
        }
        if failure.is_none() {
            let f = Arc::clone(file);
            writing = Some(tokio::task::spawn_blocking(move || {
                // A file's data moves here (see `thread_cache`).
                crate::thread_cache::resume();
                f.write_at(offset, &buf)
            }));
        }
        offset += len as u64;
    }
    if let Some(task) = writing.take()
        && let Err(e) = joined(task.await)
    {
        failure = Some(e);
    }
    Ok(failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scp::testing::{disk_names, env, finish, get, p, pattern, put, start};

    #[tokio::test]
    async fn upload_one_file_into_a_directory() {
        let env = env();
        let (mut c, task) = start(&env.store, "scp -t -- /");
        c.expect_ok().await;
        let data = pattern(200_000);
        c.upload("big.bin", &data).await;
        c.upload("empty", b"").await;
        assert_eq!(finish(c, task).await, 0);
        assert_eq!(get(&env.store, "/big.bin"), data);
        assert_eq!(get(&env.store, "/empty"), b"");
        assert_eq!(disk_names(&env.root), ["big.bin", "empty"]);
    }

    #[tokio::test]
    async fn upload_to_a_file_path_with_times_and_mode() {
        let env = env();
        put(&env.store, "/target.txt", b"old contents");
        let (mut c, task) = start(&env.store, "scp -p -t ~/target.txt");
        c.expect_ok().await;
        c.send(b"T1600000000 0 1600000100 0\n").await;
        c.expect_ok().await;
        c.send(b"C0600 5 whatever\n").await;
        c.expect_ok().await;
        c.send(b"hello\0").await;
        c.expect_ok().await;
        assert_eq!(finish(c, task).await, 0);
        // Stat before reading: reading may update the access time.
        let attrs = env.store.stat(&p("/target.txt"), true).unwrap();
        assert_eq!(attrs.mtime, 1_600_000_000);
        assert_eq!(attrs.atime, 1_600_000_100);
        assert_eq!(attrs.permissions & 0o777, 0o600);
        assert_eq!(get(&env.store, "/target.txt"), b"hello");
    }

    #[tokio::test]
    async fn recursive_upload_of_a_tree() {
        let env = env();
        let (mut c, task) = start(&env.store, "scp -r -p -d -t -- /");
        c.expect_ok().await;
        c.send(b"T1500000000 0 1500000000 0\n").await;
        c.expect_ok().await;
        c.send(b"D0750 0 top\n").await;
        c.expect_ok().await;
        c.upload("a.txt", b"alpha").await;
        c.send(b"D0755 0 sub\n").await;
        c.expect_ok().await;
        c.upload("b.txt", b"beta").await;
        c.send(b"E\n").await;
        c.expect_ok().await;
        c.send(b"E\n").await;
        c.expect_ok().await;
        assert_eq!(finish(c, task).await, 0);
        assert_eq!(get(&env.store, "/top/a.txt"), b"alpha");
        assert_eq!(get(&env.store, "/top/sub/b.txt"), b"beta");
        let top = env.store.stat(&p("/top"), true).unwrap();
        assert_eq!(top.kind, Kind::Dir);
        assert_eq!(top.permissions & 0o777, 0o750);
        assert_eq!(top.mtime, 1_500_000_000);
    }

    #[tokio::test]
    async fn recursive_upload_to_a_new_directory_name() {
        // `scp -r dir host:new` sends `scp -r -t new` and `D.... dir`.
        let env = env();
        let (mut c, task) = start(&env.store, "scp -r -t new");
        c.expect_ok().await;
        c.send(b"D0755 0 dir\n").await;
        c.expect_ok().await;
        c.upload("f", b"x").await;
        c.send(b"E\n").await;
        c.expect_ok().await;
        assert_eq!(finish(c, task).await, 0);
        assert_eq!(get(&env.store, "/new/f"), b"x");
    }

    #[tokio::test]
    async fn directory_without_r_is_a_protocol_error() {
        let env = env();
        let (mut c, task) = start(&env.store, "scp -t /");
        c.expect_ok().await;
        c.send(b"D0755 0 dir\n").await;
        let msg = c.expect_error(2).await;
        assert!(msg.contains("without -r"), "{msg}");
        c.expect_eof().await;
        assert_eq!(finish(c, task).await, 1);
    }

    #[tokio::test]
    async fn d_flag_needs_a_directory() {
        let env = env();
        put(&env.store, "/file", b"x");
        let (mut c, task) = start(&env.store, "scp -d -t /file");
        let msg = c.expect_error(2).await;
        assert_eq!(msg, "scp: /file: not a directory");
        assert_eq!(finish(c, task).await, 1);
        let (mut c, task) = start(&env.store, "scp -d -t /missing");
        let msg = c.expect_error(2).await;
        assert_eq!(msg, "scp: /missing: no such file or directory");
        assert_eq!(finish(c, task).await, 1);
    }

    #[tokio::test]
    async fn names_that_are_not_one_component_are_refused() {
        let env = env();
        std::fs::create_dir(env.root.join("d")).unwrap();
        let (mut c, task) = start(&env.store, "scp -r -t /d");
        c.expect_ok().await;
        for bad in [
            "../escape",
            "..",
            ".",
            "a/b",
            "/abs",
            "",
            ".dropzone-upload-1",
        ] {
            c.send(format!("C0644 3 {bad}\n").as_bytes()).await;
            let msg = c.expect_error(1).await;
            assert!(msg.starts_with("scp: "), "{msg}");
            c.send(format!("D0755 0 {bad}\n").as_bytes()).await;
            c.expect_error(1).await;
        }
        // The session goes on after the refusals.
        c.upload("fine", b"ok!").await;
        assert_eq!(finish(c, task).await, 1);
        assert_eq!(disk_names(&env.root), ["d"]);
        assert_eq!(disk_names(&env.root.join("d")), ["fine"]);
    }

    #[tokio::test]
    async fn truncated_upload_keeps_the_previous_version() {
        let env = env();
        put(&env.store, "/f", b"previous version");
        let (mut c, task) = start(&env.store, "scp -t /f");
        c.expect_ok().await;
        c.send(b"C0644 300000 f\n").await;
        c.expect_ok().await;
        c.send(&pattern(150_000)).await;
        assert_eq!(finish(c, task).await, 1);
        assert_eq!(get(&env.store, "/f"), b"previous version");
        assert_eq!(disk_names(&env.root), ["f"]);
    }

    #[tokio::test]
    async fn upload_is_not_stored_when_the_trailing_byte_is_missing_or_an_error() {
        let env = env();
        put(&env.store, "/f", b"previous version");
        // All the data, then the client reports a read error.
        let (mut c, task) = start(&env.store, "scp -t /");
        c.expect_ok().await;
        c.send(b"C0644 4 f\n").await;
        c.expect_ok().await;
        c.send(b"new!\x01scp: f: Input/output error\n").await;
        let msg = c.expect_error(1).await;
        assert!(msg.contains("not stored"), "{msg}");
        assert_eq!(finish(c, task).await, 1);
        assert_eq!(get(&env.store, "/f"), b"previous version");
        // All the data, then the connection ends.
        let (mut c, task) = start(&env.store, "scp -t /");
        c.expect_ok().await;
        c.send(b"C0644 4 f\n").await;
        c.expect_ok().await;
        c.send(b"new!").await;
        assert_eq!(finish(c, task).await, 1);
        assert_eq!(get(&env.store, "/f"), b"previous version");
        assert_eq!(disk_names(&env.root), ["f"]);
    }

    #[tokio::test]
    async fn malformed_records_are_fatal() {
        let env = env();
        for bad in [
            &b"C644 3 x\n"[..],
            b"C0648 3 x\n",
            b"C0644 x\n",
            b"C0644 -3 x\n",
            b"T1 2\n",
            b"X\n",
            b"\n",
        ] {
            let (mut c, task) = start(&env.store, "scp -t /");
            c.expect_ok().await;
            c.send(bad).await;
            let msg = c.expect_error(2).await;
            assert!(msg.starts_with("scp: protocol error"), "{msg}");
            assert_eq!(finish(c, task).await, 1);
        }
    }
}
