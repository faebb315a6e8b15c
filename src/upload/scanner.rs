//! Runs the operator's scan command on one upload.
//!
//! The command (no shell) gets the plaintext on its stdin through a pipe,
//! fed from a [`Read`] that decrypts the staged file chunk by chunk, so the
//! plaintext never touches the disk. Exit status 0 accepts; anything else
//! rejects, and so does everything that keeps the scanner from deciding:
//! it cannot be started, it crashes, or it runs past the timeout (it is
//! then killed with its whole process group). A scanner that exits without
//! reading all of its input is judged by its exit status.
//!
//! The child starts with an empty environment (no server secrets) plus a
//! fixed `PATH` and `DROPZONE_USER`, `DROPZONE_PATH` (as the user sees it)
//! and `DROPZONE_SIZE` (plaintext bytes). At most `max_concurrent` scans run
//! at once; further callers wait for a slot, so a burst of closes cannot
//! fork without bound. The wait counts against the timeout (a close that
//! gets no slot in time is rejected: the scanner is busy), one user holds
//! at most half of the slots (at least one), and a freed slot goes to the
//! waiting user served least recently: one user's burst of uploads can
//! neither hold every slot nor queue ahead of everyone else.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use crate::sync::lock;

/// The `PATH` a scanner runs with: the usual system directories, none
/// writable by ordinary users.
pub(crate) const SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes of the scanner's stderr kept; the rest is read and dropped so that
/// the scanner never blocks on a full pipe.
const STDERR_KEPT: usize = 4096;
/// Longest reason passed on to the client, in characters.
const MAX_REASON_CHARS: usize = 200;
/// Bytes written to the scanner per write call.
const FEED_BLOCK: usize = 64 * 1024;
/// Longest pause between two checks for the scanner's exit (the first checks
/// come sooner: a typical scanner exits right after its input ends).
const MAX_POLL: Duration = Duration::from_millis(20);
/// How long to wait for stderr's end after the scanner was reaped: only a
/// detached grandchild could still hold it open.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// Who uploaded what; becomes the scanner's environment.
#[derive(Debug, Clone, Copy)]
pub struct ScanRequest<'a> {
    /// The user's login name.
    pub user: &'a str,
    /// The file's path as the user sees it (`/dir/name`).
    pub path: &'a str,
    /// Plaintext size in bytes.
    pub size: u64,
}

/// The outcome of one scan.
#[derive(Debug)]
pub enum Verdict {
    /// Exit status 0.
    Clean,
    /// Anything else.
    Rejected(Refusal),
}

/// Why a scan did not accept an upload.
#[derive(Debug)]
pub enum Refusal {
    /// The scanner exited with a non-zero status.
    Refused {
        /// Its exit status.
        status: i32,
        /// The first non-blank line of its stderr.
        message: Option<String>,
    },
    /// The scanner was killed by a signal (it crashed).
    Crashed {
        /// The signal number.
        signal: i32,
        /// The first non-blank line of its stderr.
        message: Option<String>,
    },
    /// No scan slot came free within the timeout (every slot was busy,
    /// or this user already held its share).
    Busy {
        /// The timeout.
        after: Duration,
    },
    /// The scanner did not finish within the timeout and was killed.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The scanner could not be started (e.g. the program does not exist).
    Unavailable(io::Error),
    /// Feeding the scanner or waiting for it failed (not the scanner's
    /// doing: e.g. the upload could not be read back).
    Failed(io::Error),
}

impl Refusal {
    /// What the client is told: the scanner's own first line when it
    /// refused, else what kept the upload from being scanned. Never a host
    /// path or the scanner's command line.
    pub fn client_reason(&self) -> String {
        match self {
            Refusal::Refused {
                message: Some(m), ..
            } => m.clone(),
            Refusal::Refused {
                status,
                message: None,
            } => format!("rejected by the upload scanner (exit status {status})"),
            Refusal::Crashed { signal, .. } => {
                format!("the upload could not be scanned (the scanner died of signal {signal})")
            }
            Refusal::Busy { .. } => {
                "the upload scanner is busy; try again later (the upload was not stored)".into()
            }
            Refusal::TimedOut { after } => format!(
                "the upload could not be scanned in time ({} s)",
                after.as_secs()
            ),
            Refusal::Unavailable(_) => {
                "the upload could not be scanned (the scanner is unavailable)".into()
            }
            Refusal::Failed(_) => "the upload could not be scanned".into(),
        }
    }

    /// Whether the operator has to act (the scanner is missing, crashes or
    /// hangs), as opposed to a scanner that decided to refuse, or one too
    /// busy to take the upload in time (see [`Refusal::is_busy`]).
    pub fn is_scanner_fault(&self) -> bool {
        !matches!(self, Refusal::Refused { .. } | Refusal::Busy { .. })
    }

    /// Whether every scan slot stayed busy for the whole timeout.
    pub fn is_busy(&self) -> bool {
        matches!(self, Refusal::Busy { .. })
    }
}

impl std::fmt::Display for Refusal {
    /// The operator's view, for the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Refused { status, message } => write!(
                f,
                "scanner exited with status {status}: {}",
                message.as_deref().unwrap_or("(no message)")
            ),
            Refusal::Crashed { signal, message } => write!(
                f,
                "scanner killed by signal {signal}: {}",
                message.as_deref().unwrap_or("(no message)")
            ),
            Refusal::Busy { after } => write!(
                f,
                "no scan slot came free within {} s (max_concurrent_scans are all busy, \
                 or this user holds its share of them)",
                after.as_secs()
            ),
            Refusal::TimedOut { after } => {
                write!(
                    f,
                    "scanner still running after {} s; killed",
                    after.as_secs()
                )
            }
            Refusal::Unavailable(e) => write!(f, "scanner could not be started: {e}"),
            Refusal::Failed(e) => write!(f, "scanning failed: {e}"),
        }
    }
}

/// A configured scan command with its concurrency limit.
pub struct Scanner {
    command: Vec<String>,
    timeout: Duration,
    slots: Slots,
}

impl Scanner {
    /// A scanner running `command` (program and arguments; must not be
    /// empty) for at most `timeout` (waiting for a slot included),
    /// `max_concurrent` at a time, at most [`per_user_share`] of them for
    /// one user.
    pub fn new(command: Vec<String>, timeout: Duration, max_concurrent: usize) -> Self {
        let total = max_concurrent.max(1);
        Scanner {
            command,
            timeout,
            slots: Slots::new(total, per_user_share(total)),
        }
    }

    /// Scans one upload whose plaintext `content` yields. Blocks (waiting
    /// for a slot, then for the scanner); run it on a blocking thread.
    pub fn scan(&self, req: ScanRequest<'_>, content: &mut dyn Read) -> Verdict {
        let Some((program, args)) = self.command.split_first() else {
            return Verdict::Rejected(Refusal::Unavailable(io::Error::other(
                "no scan command configured",
            )));
        };
        // The timeout covers the wait for a slot too: a close never waits
        // longer than the operator allowed for a scan.
        let deadline = Instant::now() + self.timeout;
        let Some(_slot) = self.slots.acquire(req.user, deadline) else {
            return Verdict::Rejected(Refusal::Busy {
                after: self.timeout,
            });
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", SEARCH_PATH)
            .env("DROPZONE_USER", req.user)
            .env("DROPZONE_PATH", req.path)
            .env("DROPZONE_SIZE", req.size.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout kills what it started.
            .process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Verdict::Rejected(Refusal::Unavailable(e)),
        };
        let run = Run::new(&mut child);
        let stderr = child.stderr.take().map(collect_stderr);
        let fed = match child.stdin.take() {
            Some(stdin) => feed(stdin, content, deadline),
            None => Err(io::Error::other("the scanner's stdin is missing")),
        };
        let exited = match &fed {
            Ok(()) => run.wait_exit(deadline),
            Err(_) => false,
        };
        // Whatever happened, nothing of the scanner outlives the scan: the
        // group goes now, while the reaped-not-yet leader keeps its id.
        run.kill_group();
        let status = child.wait();
        let message = stderr.and_then(|rx| rx.recv_timeout(STDERR_GRACE).ok().flatten());
        let verdict = match (fed, exited, status) {
            (Err(e), _, _) if e.kind() == io::ErrorKind::TimedOut => Refusal::TimedOut {
                after: self.timeout,
            },
            (Err(e), _, _) => Refusal::Failed(e),
            (Ok(()), false, _) => Refusal::TimedOut {
                after: self.timeout,
            },
            (Ok(()), true, Err(e)) => Refusal::Failed(e),
            (Ok(()), true, Ok(status)) => return judge(status, message),
        };
        Verdict::Rejected(verdict)
    }
}

/// The verdict of a scanner that exited by itself.
fn judge(status: ExitStatus, message: Option<String>) -> Verdict {
    match (status.code(), status.signal()) {
        (Some(0), _) => Verdict::Clean,
        (Some(code), _) => Verdict::Rejected(Refusal::Refused {
            status: code,
            message,
        }),
        (None, signal) => Verdict::Rejected(Refusal::Crashed {
            signal: signal.unwrap_or(0),
            message,
        }),
    }
}

/// The scanner's process (group) id, for waiting without reaping and for
/// killing its group.
struct Run {
    pid: Pid,
}

impl Run {
    fn new(child: &mut Child) -> Self {
        Run {
            pid: Pid::from_child(child),
        }
    }

    /// Waits until the scanner exits (true) or the deadline passes (false),
    /// without reaping it: until [`Child::wait`], its id cannot be reused,
    /// so killing its group stays safe.
    fn wait_exit(&self, deadline: Instant) -> bool {
        let mut pause = Duration::from_millis(1);
        loop {
            match rustix::process::waitid(
                WaitId::Pid(self.pid),
                WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(_)) => return true,
                Ok(None) => {}
                // Not our child any more (cannot happen: only we reap it).
                Err(_) => return true,
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    fn kill_group(&self) {
        // ESRCH (the group is already gone) is the usual case.
        let _ = rustix::process::kill_process_group(self.pid, Signal::KILL);
    }
}

/// Writes all of `content` to the scanner's stdin, giving up at `deadline`
/// (an error of kind `TimedOut`). A scanner that closed its stdin (EPIPE)
/// is not an error: its exit status decides.
fn feed(stdin: ChildStdin, content: &mut dyn Read, deadline: Instant) -> io::Result<()> {
    // Non-blocking, so that a scanner that neither reads nor exits cannot
    // hold this thread past the deadline.
    let flags = rustix::fs::fcntl_getfl(&stdin)?;
    rustix::fs::fcntl_setfl(&stdin, flags | rustix::fs::OFlags::NONBLOCK)?;
    let mut stdin = stdin;
    let mut buf = vec![0u8; FEED_BLOCK];
    loop {
        // The timeout bounds the whole scan, streaming included.
        if Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let n = match content.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            match stdin.write(rest) {
                Ok(written) => rest = &rest[written..],
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_writable(&stdin, deadline)?,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits until the pipe takes more bytes, or fails with `TimedOut` at
/// `deadline`.
fn wait_writable(stdin: &ChildStdin, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    let timeout = Timespec::try_from(left).map_err(|_| io::Error::other("timeout out of range"))?;
    let mut fds = [PollFd::new(stdin, PollFlags::OUT)];
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads the scanner's stderr on its own thread: keeps the first bytes, and
/// sends the first non-blank line once the pipe ends.
fn collect_stderr(mut stderr: ChildStderr) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("scan-stderr".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = STDERR_KEPT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(first_line(&kept));
        });
    if spawned.is_err() {
        // No thread, no message; the verdict does not depend on it.
        tracing::warn!("cannot start a thread to read the scanner's stderr");
    }
    rx
}

/// The first non-blank line of `bytes`, trimmed, control characters
/// escaped (it reaches the log and the client, and the scanner may quote
/// the uploaded file), at most [`MAX_REASON_CHARS`] characters.
pub(crate) fn first_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = crate::observe::escape(line).to_string();
    let mut out: String = line.chars().take(MAX_REASON_CHARS).collect();
    if line.chars().count() > MAX_REASON_CHARS {
        out.push_str("...");
    }
    Some(out)
}

/// How many scan slots one user may hold at once: half of them, at
/// least one, so that with two or more slots another user always finds
/// one that a single user cannot take.
pub fn per_user_share(total: usize) -> usize {
    (total / 2).max(1)
}

/// Scan slots for blocking threads, handed out fairly between users: at
/// most `per_user` to one user at once, and a free slot goes to the first
/// waiter of the user served least recently.
struct Slots {
    state: Mutex<SlotState>,
    changed: Condvar,
    per_user: usize,
}

struct SlotState {
    free: usize,
    /// Numbers waiters in arrival order.
    next_ticket: u64,
    /// Counts grants, to know who was served least recently.
    grants: u64,
    /// Users holding or waiting for a slot (no others: the map stays as
    /// small as the number of users scanning).
    users: HashMap<String, UserSlots>,
}

#[derive(Default)]
struct UserSlots {
    held: usize,
    /// Tickets of this user's waiters, oldest first.
    waiting: VecDeque<u64>,
    /// `grants` at this user's last grant (0: never).
    last_served: u64,
}

/// A held slot, given back on drop.
struct Slot<'a> {
    slots: &'a Slots,
    user: String,
}

impl Slots {
    fn new(total: usize, per_user: usize) -> Self {
        Slots {
            state: Mutex::new(SlotState {
                free: total,
                next_ticket: 0,
                grants: 0,
                users: HashMap::new(),
            }),
            changed: Condvar::new(),
            per_user,
        }
    }

    /// Waits for a slot for `user` until `deadline`; `None` if none came.
    fn acquire(&self, user: &str, deadline: Instant) -> Option<Slot<'_>> {
        let mut state = lock(&self.state);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state
            .users
            .entry(user.to_owned())
            .or_default()
            .waiting
            .push_back(ticket);
        loop {
            if state.next_up(self.per_user) == Some(ticket) {
                state.grant(user);
                drop(state);
                // A further slot may be free for someone else.
                self.changed.notify_all();
                return Some(Slot {
                    slots: self,
                    user: user.to_owned(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                state.give_up(user, ticket);
                drop(state);
                // With this waiter gone, another may be next.
                self.changed.notify_all();
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl SlotState {
    /// The ticket to serve now: none while no slot is free; else the
    /// oldest waiter of the user served least recently among the users
    /// under their share (the oldest ticket breaks ties).
    fn next_up(&self, per_user: usize) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        self.users
            .values()
            .filter(|u| u.held < per_user)
            .filter_map(|u| u.waiting.front().map(|&t| (u.last_served, t)))
            .min()
            .map(|(_, ticket)| ticket)
    }

    fn grant(&mut self, user: &str) {
        self.free -= 1;
        self.grants += 1;
        let grants = self.grants;
        if let Some(u) = self.users.get_mut(user) {
            u.waiting.pop_front();
            u.held += 1;
            u.last_served = grants;
        }
    }

    fn give_up(&mut self, user: &str, ticket: u64) {
        if let Some(u) = self.users.get_mut(user) {
            u.waiting.retain(|&t| t != ticket);
        }
        self.forget_if_idle(user);
    }

    fn release(&mut self, user: &str) {
        self.free += 1;
        if let Some(u) = self.users.get_mut(user) {
            u.held = u.held.saturating_sub(1);
        }
        self.forget_if_idle(user);
    }

    fn forget_if_idle(&mut self, user: &str) {
        if self
            .users
            .get(user)
            .is_some_and(|u| u.held == 0 && u.waiting.is_empty())
        {
            self.users.remove(user);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.slots.state).release(&self.user);
        self.slots.changed.notify_all();
    }
}

#[cfg(test)]
#[path = "scanner_tests.rs"]
mod tests;
