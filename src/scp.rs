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

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::jail;
use crate::observe::{EventKind, Reporter, Transfer, escape};
use crate::outcome::{self, Failure, OpError, blocking, error_outcome, is_integrity, joined};
use crate::store::storage::{Kind, ObjectPath};
use crate::store::{Attributes, EncryptedFile, OpenOptions, StoreError, UserStore};

/// Bytes per store read or write (one encrypted chunk).
const PIECE: usize = 64 * 1024;
/// Longest record or message line accepted from the client.
const MAX_LINE: usize = 8 * 1024;
/// Deepest directory nesting accepted in an upload.
const MAX_DEPTH: usize = 256;
/// Mode bits removed when the client does not ask to preserve modes, as a
/// usual umask would.
const UMASK: u32 = 0o022;

/// Runs one legacy scp command (the exec request's command line) on
/// `stream`; returns the exit status to report. Uploads, downloads and
/// the directories it creates are reported to `events`.
///
/// The status is 0 when every item was transferred, 1 otherwise (a refused
/// command, a warning sent to or received from the client, a protocol error
/// or a lost connection). The stream is flushed but not shut down: closing
/// the channel is the caller's business.
pub async fn serve<S>(stream: S, store: Arc<UserStore>, command: &str, events: Reporter) -> u32
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut conn = Conn {
        io: BufReader::new(stream),
        errors: 0,
        events,
    };
    let result = match parse_command(command) {
        None => Err(Stop::Fatal("unsupported scp command".into())),
        Some(cmd) => {
            debug!(?cmd, "legacy scp");
            match cmd.direction {
                Direction::Sink => sink(&mut conn, &store, &cmd).await,
                Direction::Source => source(&mut conn, &store, &cmd).await,
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
    parse_command(command).is_some()
}

// ---------------------------------------------------------------------------
// Command line

/// Which way the files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// `-t`: the client uploads, the server writes.
    Sink,
    /// `-f`: the server reads and sends.
    Source,
}

/// A parsed scp command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScpCommand {
    direction: Direction,
    /// `-r`: directories are copied recursively.
    recursive: bool,
    /// `-p`: times and modes are preserved.
    preserve: bool,
    /// `-d`: the target must be a directory.
    target_should_be_dir: bool,
    /// The one path operand, as the client wrote it (after shell unquoting).
    path: String,
}

fn parse_command(command: &str) -> Option<ScpCommand> {
    let mut words = shell_words(command)?.into_iter();
    if words.next()? != "scp" {
        return None;
    }
    let (mut sink, mut source, mut recursive, mut preserve, mut dir) =
        (false, false, false, false, false);
    let mut operands = Vec::new();
    let mut options_done = false;
    for word in words {
        if !options_done {
            if word == "--" {
                options_done = true;
                continue;
            }
            if let Some(flags) = word.strip_prefix('-')
                && !flags.is_empty()
            {
                for flag in flags.chars() {
                    match flag {
                        't' => sink = true,
                        'f' => source = true,
                        'r' => recursive = true,
                        'p' => preserve = true,
                        'd' => dir = true,
                        'v' | 'q' => {}
                        _ => return None,
                    }
                }
                continue;
            }
            // Like getopt: the first operand ends the options.
            options_done = true;
        }
        operands.push(word);
    }
    let direction = match (sink, source) {
        (true, false) => Direction::Sink,
        (false, true) => Direction::Source,
        _ => return None,
    };
    let [path] = <[String; 1]>::try_from(operands).ok()?;
    Some(ScpCommand {
        direction,
        recursive,
        preserve,
        target_should_be_dir: dir,
        path,
    })
}

/// Splits a command line into words as a POSIX shell would for simple
/// commands: blanks separate words, single quotes, double quotes and
/// backslashes quote, a leading `~` (alone or before `/`) is the home
/// directory, which is the user's root. Returns `None` for anything that
/// would make a shell do more than run one command with literal words
/// (`;`, `&`, `|`, redirections, `$`, backquotes, braces, comments, `~user`,
/// an unterminated quote, a control character).
fn shell_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('$' | '`' | '"' | '\\') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        '$' | '`' => return None,
                        c => word.push(c),
                    }
                }
            }
            '\\' => match chars.next()? {
                '\n' => {}
                c => {
                    in_word = true;
                    word.push(c);
                }
            },
            '~' if !in_word => match chars.peek() {
                None | Some(' ' | '\t' | '/') => {
                    in_word = true;
                    word.push('/');
                }
                Some(_) => return None,
            },
            '#' if !in_word => return None,
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '$' | '`' | '{' | '}' => return None,
            c if c.is_control() => return None,
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

// ---------------------------------------------------------------------------
// Connection

/// Why a transfer ended early.
#[derive(Debug)]
enum Stop {
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

fn protocol(what: &str) -> Stop {
    Stop::Fatal(format!("protocol error: {what}"))
}

/// The client's answer to a record: ok, or the warning it sent.
type Response = Result<(), String>;

/// The scp stream and the count of warnings exchanged.
struct Conn<S> {
    io: BufReader<S>,
    errors: u32,
    events: Reporter,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Acknowledges the last record.
    async fn ok(&mut self) -> Result<(), Stop> {
        self.send(b"\0").await
    }

    /// Sends a warning: the client prints it and goes on.
    async fn warn(&mut self, msg: &str) -> Result<(), Stop> {
        self.errors += 1;
        debug!(message = msg, "scp warning sent to client");
        self.send_line(1, msg).await
    }

    /// Sends `\x01` (warning) or `\x02` (fatal) and `scp: <msg>`.
    async fn send_line(&mut self, code: u8, msg: &str) -> Result<(), Stop> {
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
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, Stop> {
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
    async fn response(&mut self) -> Result<Response, Stop> {
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

/// Times from a `T` record, seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    mtime: i64,
    atime: i64,
}

/// The fields of a `C` or `D` record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    mode: u32,
    size: u64,
    name: Vec<u8>,
}

/// Parses the body (after the `C`/`D`) of `<mode> <size> <name>`.
fn parse_entry(body: &[u8]) -> Result<Entry, Stop> {
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
fn parse_times(body: &[u8]) -> Result<Times, Stop> {
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

/// The mode a new file or directory gets: as sent with `-p`, else with the
/// usual umask applied. Special bits are never kept.
fn effective_mode(mode: u32, preserve: bool) -> u32 {
    if preserve {
        mode & 0o777
    } else {
        mode & 0o777 & !UMASK
    }
}

// ---------------------------------------------------------------------------
// Sink (`scp -t`): the client uploads

/// A directory entered with `D`, finished at its `E`.
struct OpenDir {
    path: ObjectPath,
    times: Option<Times>,
    /// Mode to set at the end (a new directory is created writable).
    mode: Option<u32>,
}

async fn sink<S>(conn: &mut Conn<S>, store: &Arc<UserStore>, cmd: &ScpCommand) -> Result<(), Stop>
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
    let file = match blocking(move || Ok(s.open(&p, opts)?)).await {
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

// ---------------------------------------------------------------------------
// Source (`scp -f`): the client downloads

/// The next thing to send.
enum Work {
    /// A file or directory; `linked` if it was listed as a symlink (which
    /// is followed to a file but never into a directory, so that no link
    /// loop can make a download endless).
    Send { path: ObjectPath, linked: bool },
    /// The `E` that closes a directory.
    EndDir,
}

async fn source<S>(conn: &mut Conn<S>, store: &Arc<UserStore>, cmd: &ScpCommand) -> Result<(), Stop>
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
    let opened = blocking(move || {
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
        tokio::task::spawn_blocking(move || f.read_at(offset, len))
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
    use super::*;
    use crate::keys::DataKey;
    use crate::store::storage::LocalStorage;
    use std::path::PathBuf;
    use tokio::io::DuplexStream;

    struct Env {
        _dir: tempfile::TempDir,
        root: PathBuf,
        store: Arc<UserStore>,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let storage = LocalStorage::open_root(&root).unwrap();
        let store = UserStore::new(Arc::new(storage), Arc::new(DataKey::from_bytes([7u8; 32])));
        Env {
            _dir: dir,
            root,
            store: Arc::new(store),
        }
    }

    fn p(s: &str) -> ObjectPath {
        jail::resolve(s).unwrap()
    }

    fn put(store: &UserStore, path: &str, data: &[u8]) {
        let opts = OpenOptions {
            write: true,
            create: true,
            truncate: true,
            ..OpenOptions::default()
        };
        let f = store.open(&p(path), opts).unwrap();
        f.write_at(0, data).unwrap();
        f.close().unwrap();
    }

    fn get(store: &UserStore, path: &str) -> Vec<u8> {
        let opts = OpenOptions {
            read: true,
            ..OpenOptions::default()
        };
        let f = store.open(&p(path), opts).unwrap();
        f.read_at(0, usize::MAX >> 1).unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// Names in the on-disk root directory (staged uploads included).
    fn disk_names(root: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// The client end of a session.
    struct Client {
        io: BufReader<DuplexStream>,
    }

    impl Client {
        async fn send(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
            self.io.flush().await.unwrap();
        }

        async fn byte(&mut self) -> u8 {
            self.io.read_u8().await.unwrap()
        }

        async fn line(&mut self) -> String {
            let mut line = Vec::new();
            self.io.read_until(b'\n', &mut line).await.unwrap();
            assert_eq!(line.pop(), Some(b'\n'), "line not terminated: {line:?}");
            String::from_utf8(line).unwrap()
        }

        async fn expect_ok(&mut self) {
            let b = self.byte().await;
            if b != 0 {
                let msg = self.line().await;
                panic!("expected ok, got {b} {msg:?}");
            }
        }

        /// Expects a warning (`\x01`) or fatal (`\x02`) response.
        async fn expect_error(&mut self, code: u8) -> String {
            assert_eq!(self.byte().await, code);
            self.line().await
        }

        async fn data(&mut self, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            self.io.read_exact(&mut buf).await.unwrap();
            buf
        }

        /// Uploads one file in sink mode after the initial handshake.
        async fn upload(&mut self, name: &str, data: &[u8]) {
            self.send(format!("C0644 {} {}\n", data.len(), name).as_bytes())
                .await;
            self.expect_ok().await;
            self.send(data).await;
            self.send(b"\0").await;
            self.expect_ok().await;
        }

        /// Receives one announced file in source mode: returns its record
        /// and data.
        async fn download(&mut self) -> (String, Vec<u8>) {
            let record = self.line().await;
            let size: usize = record.split(' ').nth(1).unwrap().parse().unwrap();
            self.send(b"\0").await;
            let data = self.data(size).await;
            self.expect_ok().await;
            self.send(b"\0").await;
            (record, data)
        }

        async fn expect_eof(&mut self) {
            let mut rest = Vec::new();
            self.io.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "unexpected trailing bytes {rest:?}");
        }
    }

    fn start(store: &Arc<UserStore>, command: &str) -> (Client, JoinHandle<u32>) {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let store = store.clone();
        let command = command.to_owned();
        let task = tokio::spawn(async move {
            serve(server, store, &command, crate::observe::Reporter::discard()).await
        });
        (
            Client {
                io: BufReader::new(client),
            },
            task,
        )
    }

    async fn finish(client: Client, task: JoinHandle<u32>) -> u32 {
        drop(client);
        task.await.unwrap()
    }

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

    #[tokio::test]
    async fn refused_commands_get_an_error() {
        let env = env();
        let (mut c, task) = start(&env.store, "scp -t; rm -rf /");
        assert_eq!(c.expect_error(2).await, "scp: unsupported scp command");
        assert_eq!(finish(c, task).await, 1);
    }

    fn parsed(command: &str) -> ScpCommand {
        parse_command(command).unwrap_or_else(|| panic!("refused: {command:?}"))
    }

    #[test]
    fn command_parsing() {
        let c = parsed("scp -t -- /path");
        assert_eq!(c.direction, Direction::Sink);
        assert_eq!(c.path, "/path");
        assert!(!c.recursive && !c.preserve && !c.target_should_be_dir);

        let c = parsed("scp -r -t dir");
        assert!(c.recursive);
        assert_eq!(c.path, "dir");

        let c = parsed("scp -p -f 'file name'");
        assert_eq!(c.direction, Direction::Source);
        assert!(c.preserve);
        assert_eq!(c.path, "file name");

        let c = parsed("scp -v -d -t -- target");
        assert!(c.target_should_be_dir);
        assert_eq!(c.path, "target");

        let c = parsed("scp -rpt -- -dash");
        assert!(c.recursive && c.preserve);
        assert_eq!(c.path, "-dash");

        assert_eq!(parsed(r#"scp -f "a \"b\" \$c \x""#).path, r#"a "b" $c \x"#);
        assert_eq!(parsed(r"scp -f a\ b\'c").path, "a b'c");
        assert_eq!(parsed(r"scp -f 'it'\''s'").path, "it's");
        assert_eq!(parsed("scp  -q\t-f   x  ").path, "x");
        assert_eq!(parsed("scp -t ''").path, "");
        assert_eq!(parsed("scp -t 'a;b|c$d'").path, "a;b|c$d");
        assert_eq!(jail::resolve(&parsed("scp -t ~/x").path).unwrap(), p("/x"));
        assert_eq!(
            jail::resolve(&parsed("scp -t ~").path).unwrap(),
            ObjectPath::root()
        );
        assert_eq!(parsed("scp -t a~b").path, "a~b");
    }

    #[test]
    fn commands_that_are_refused() {
        for bad in [
            "scp -t; rm -rf /",
            "scp -t x; rm -rf /",
            "scp -S evil -t x",
            "scp -3 -t x",
            "scp -t",
            "scp -t a b",
            "scp -t x -r",
            "scp -t -f x",
            "scp x",
            "scp",
            "",
            "rm -t x",
            "/usr/bin/scp -t x",
            "scp -t $(id)",
            "scp -t \"$(id)\"",
            "scp -t `id`",
            "scp -t x | cat",
            "scp -t x && id",
            "scp -t x > y",
            "scp -t 'unterminated",
            "scp -t \"unterminated",
            "scp -t x\\",
            "scp -t x\nid",
            "scp -t ~root/x",
            "scp -t {a,b}",
            "scp -t x #comment",
            "scp -t $HOME",
        ] {
            assert!(!is_scp_command(bad), "accepted: {bad:?}");
        }
        assert!(is_scp_command("scp -t -- /path"));
    }
}
