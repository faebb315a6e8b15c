//! The source (`scp -f`): the client downloads. Files are decrypted a
//! piece at a time while the previous piece is sent; directories (`-r`)
//! are walked depth first, in name order; a symlink is followed to a file
//! but never into a directory.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::command::ScpCommand;
use super::records::{Conn, Response, Stop};
use super::{PIECE, client_text, failed};
use crate::access::Permission;
use crate::jail;
use crate::observe::{EventKind, Transfer};
use crate::outcome::{OpError, blocking, error_outcome, is_integrity, joined};
use crate::store::storage::{Kind, ObjectPath};
use crate::store::{Attributes, EncryptedFile, OpenOptions, UserStore};

/// The next thing to send.
enum Work {
    /// A file or directory; `linked` if it was listed as a symlink (which
    /// is followed to a file but never into a directory, so that no link
    /// loop can make a download endless).
    Send { path: ObjectPath, linked: bool },
    /// The `E` that closes a directory.
    EndDir,
}

/// Sends `cmd.path` (a file, or with `-r` a directory tree) once the
/// client says it is ready.
pub(super) async fn source<S>(
    conn: &mut Conn<S>,
    store: &Arc<UserStore>,
    cmd: &ScpCommand,
) -> Result<(), Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The client signals it is ready (a warning here is only counted).
    let _ = conn.response().await?;
    let path = match jail::resolve(&cmd.path) {
        Ok(path) => path,
        Err(e) => {
            let msg = format!("{}: {}", cmd.path, client_text(&OpError::Jail(e)));
            return conn.warn(&msg).await;
        }
    };
    let mut work = vec![Work::Send {
        path,
        linked: false,
    }];
    while let Some(item) = work.pop() {
        let (path, linked) = match item {
            Work::EndDir => {
                conn.send(b"E\n").await?;
                let _ = conn.response().await?;
                continue;
            }
            Work::Send { path, linked } => (path, linked),
        };
        let (s, p) = (store.clone(), path.clone());
        let attrs = match blocking(move || Ok(s.stat(&p, true)?)).await {
            Ok(attrs) => attrs,
            Err(e) => {
                conn.warn(&failed(&path, &e)).await?;
                continue;
            }
        };
        match attrs.kind {
            Kind::File => send_file(conn, store, cmd.preserve, &path, &attrs).await?,
            Kind::Dir if cmd.recursive && linked => {
                let msg = format!(
                    "{}: not following a symbolic link to a directory",
                    path.to_client_string()
                );
                conn.warn(&msg).await?;
            }
            Kind::Dir if cmd.recursive => {
                if let Err(denied) = conn.access.check(&[Permission::List]) {
                    conn.warn(&failed(&path, &denied.into())).await?;
                    continue;
                }
                let (s, p) = (store.clone(), path.clone());
                let mut entries = match blocking(move || Ok(s.read_dir(&p)?)).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        conn.warn(&failed(&path, &e)).await?;
                        continue;
                    }
                };
                let Some(name) = wire_name(&path) else {
                    conn.warn(&bad_name(&path)).await?;
                    continue;
                };
                if cmd.preserve && conn_times(conn, &attrs).await?.is_err() {
                    continue;
                }
                let record = format!("D{:04o} 0 {}\n", attrs.permissions & 0o777, name);
                conn.send(record.as_bytes()).await?;
                if conn.response().await?.is_err() {
                    continue;
                }
                work.push(Work::EndDir);
                entries.sort_by(|a, b| b.0.cmp(&a.0));
                for (name, child) in entries {
                    if let Ok(child_path) = path.join(&name) {
                        work.push(Work::Send {
                            path: child_path,
                            linked: child.kind == Kind::Symlink,
                        });
                    }
                }
            }
            _ => {
                conn.warn(&format!("{}: not a regular file", path.to_client_string()))
                    .await?;
            }
        }
    }
    Ok(())
}

/// The name to put in a `C`/`D` record (`.` for the root), or `None` if it
/// cannot be sent (a newline would end the record).
fn wire_name(path: &ObjectPath) -> Option<&str> {
    let name = path.file_name().unwrap_or(".");
    (!name.contains('\n')).then_some(name)
}

fn bad_name(path: &ObjectPath) -> String {
    format!(
        "{}: the name contains a newline and cannot be sent",
        path.to_client_string()
    )
}

/// Sends a `T` record and returns the client's response.
async fn conn_times<S>(conn: &mut Conn<S>, attrs: &Attributes) -> Result<Response, Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let record = format!("T{} 0 {} 0\n", attrs.mtime.max(0), attrs.atime.max(0));
    conn.send(record.as_bytes()).await?;
    conn.response().await
}

/// Sends one file: `T` (with `-p`), `C`, the plaintext, then `\0` or the
/// warning for an error met while reading.
async fn send_file<S>(
    conn: &mut Conn<S>,
    store: &Arc<UserStore>,
    preserve: bool,
    path: &ObjectPath,
    attrs: &Attributes,
) -> Result<(), Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(name) = wire_name(path) else {
        return conn.warn(&bad_name(path)).await;
    };
    let (s, p) = (store.clone(), path.clone());
    let mut transfer = conn
        .events
        .transfer_started(EventKind::Download, path.to_client_string());
    let access = conn.access.clone();
    let opened = blocking(move || {
        access.check(&[Permission::Download])?;
        let opts = OpenOptions {
            read: true,
            ..OpenOptions::default()
        };
        let file = s.open(&p, opts)?;
        let size = file.size();
        Ok((Arc::new(file), size))
    })
    .await;
    let (file, size) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            if is_integrity(&e) {
                conn.events.integrity_failure();
            }
            transfer.finish(error_outcome(&e));
            return conn.warn(&failed(path, &e)).await;
        }
    };
    if preserve && conn_times(conn, attrs).await?.is_err() {
        return Ok(());
    }
    let record = format!("C{:04o} {} {}\n", attrs.permissions & 0o777, size, name);
    conn.send(record.as_bytes()).await?;
    if conn.response().await?.is_err() {
        return Ok(());
    }
    match send_data(conn, &file, size, &mut transfer).await? {
        None => {
            transfer.finish(Ok(()));
            conn.ok().await?
        }
        Some(msg) => {
            transfer.finish(Err(("failure", msg.clone())));
            conn.warn(&format!("{}: {}", path.to_client_string(), msg))
                .await?
        }
    }
    let _ = conn.response().await?;
    Ok(())
}

/// Sends `size` bytes of `file` in pieces, decrypting the next piece while
/// one is being sent. After an error the rest is sent as zeros, to stay in
/// step with the client; the error's wording is returned.
async fn send_data<S>(
    conn: &mut Conn<S>,
    file: &Arc<EncryptedFile>,
    size: u64,
    transfer: &mut Transfer,
) -> Result<Option<String>, Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let piece_len = |offset: u64| (size - offset).min(PIECE as u64) as usize;
    let read = |offset: u64| {
        let f = Arc::clone(file);
        let len = piece_len(offset);
        tokio::task::spawn_blocking(move || {
            // A file's data moves here (see `thread_cache`).
            crate::thread_cache::resume();
            f.read_at(offset, len)
        })
    };
    let mut failure: Option<String> = None;
    let mut next = (size > 0).then(|| read(0));
    let mut offset = 0u64;
    while offset < size {
        let len = piece_len(offset);
        let after = offset + len as u64;
        let data = match next.take() {
            None => vec![0u8; len],
            Some(task) => match joined(task.await) {
                Ok(data) if data.len() == len => {
                    if after < size {
                        next = Some(read(after));
                    }
                    transfer.sent(len as u64);
                    data
                }
                Ok(_) => {
                    failure = Some("the file changed size while it was being sent".into());
                    vec![0u8; len]
                }
                Err(e) => {
                    if is_integrity(&e) {
                        conn.events.integrity_failure();
                    }
                    failure = Some(client_text(&e));
                    vec![0u8; len]
                }
            },
        };
        conn.io.write_all(&data).await?;
        offset = after;
    }
    Ok(failure)
}

#[cfg(test)]
mod tests {
    use crate::scp::testing::{env, finish, p, pattern, put, start};

    #[tokio::test]
    async fn download_a_file() {
        let env = env();
        let data = pattern(150_001);
        env.store.mkdir(&p("/dir"), None).unwrap();
        put(&env.store, "/dir/file name.bin", &data);
        let (mut c, task) = start(&env.store, "scp -f '/dir/file name.bin'");
        c.send(b"\0").await;
        let (record, got) = c.download().await;
        assert_eq!(record, "C0644 150001 file name.bin");
        assert_eq!(got, data);
        c.expect_eof().await;
        assert_eq!(finish(c, task).await, 0);
    }

    #[tokio::test]
    async fn download_with_times() {
        let env = env();
        put(&env.store, "/f", b"abc");
        env.store
            .set_times(&p("/f"), 1_400_000_001, 1_400_000_000)
            .unwrap();
        let (mut c, task) = start(&env.store, "scp -p -f f");
        c.send(b"\0").await;
        assert_eq!(c.line().await, "T1400000000 0 1400000001 0");
        c.send(b"\0").await;
        let (record, got) = c.download().await;
        assert_eq!(record, "C0644 3 f");
        assert_eq!(got, b"abc");
        c.expect_eof().await;
        assert_eq!(finish(c, task).await, 0);
    }

    #[tokio::test]
    async fn recursive_download() {
        let env = env();
        env.store.mkdir(&p("/d"), Some(0o750)).unwrap();
        env.store.mkdir(&p("/d/sub"), Some(0o755)).unwrap();
        put(&env.store, "/d/b.txt", b"bee");
        put(&env.store, "/d/a.txt", b"ay");
        put(&env.store, "/d/sub/c.txt", b"sea");
        let (mut c, task) = start(&env.store, "scp -r -f -- /d/");
        c.send(b"\0").await;
        assert_eq!(c.line().await, "D0750 0 d");
        c.send(b"\0").await;
        assert_eq!(c.download().await, ("C0644 2 a.txt".into(), b"ay".to_vec()));
        assert_eq!(
            c.download().await,
            ("C0644 3 b.txt".into(), b"bee".to_vec())
        );
        assert_eq!(c.line().await, "D0755 0 sub");
        c.send(b"\0").await;
        assert_eq!(
            c.download().await,
            ("C0644 3 c.txt".into(), b"sea".to_vec())
        );
        assert_eq!(c.line().await, "E");
        c.send(b"\0").await;
        assert_eq!(c.line().await, "E");
        c.send(b"\0").await;
        c.expect_eof().await;
        assert_eq!(finish(c, task).await, 0);
    }

    #[tokio::test]
    async fn download_errors_are_warnings() {
        let env = env();
        env.store.mkdir(&p("/d"), None).unwrap();
        let (mut c, task) = start(&env.store, "scp -f /d");
        c.send(b"\0").await;
        assert_eq!(c.expect_error(1).await, "scp: /d: not a regular file");
        c.expect_eof().await;
        assert_eq!(finish(c, task).await, 1);
        let (mut c, task) = start(&env.store, "scp -f /nope");
        c.send(b"\0").await;
        assert_eq!(
            c.expect_error(1).await,
            "scp: /nope: no such file or directory"
        );
        assert_eq!(finish(c, task).await, 1);
    }

    #[tokio::test]
    async fn tampered_file_reports_the_integrity_failure() {
        let env = env();
        let data = pattern(200_000);
        put(&env.store, "/t.bin", &data);
        let on_disk = env.root.join("t.bin");
        let mut raw = std::fs::read(&on_disk).unwrap();
        raw[100] ^= 0x40; // inside the first chunk
        std::fs::write(&on_disk, &raw).unwrap();
        let (mut c, task) = start(&env.store, "scp -f /t.bin");
        c.send(b"\0").await;
        // Opening checks only the header and the length: the damage shows
        // while streaming, after the record went out.
        let record = c.line().await;
        assert_eq!(record, "C0644 200000 t.bin");
        c.send(b"\0").await;
        let got = c.data(data.len()).await;
        // From the damaged chunk on, zeros keep the client in step.
        assert!(got.iter().all(|&b| b == 0));
        let msg = c.expect_error(1).await;
        c.send(b"\0").await;
        assert!(msg.contains("failed its integrity check"), "{msg}");
        assert!(!msg.contains(env.root.to_str().unwrap()), "{msg}");
        c.expect_eof().await;
        assert_eq!(finish(c, task).await, 1);
    }
}
