//! Test harness: a real `dropzone serve` in a temporary directory, users
//! added through the real CLI, and helpers to run client commands with
//! useful failure reports (in the spirit of ripgrep's `tests/util.rs`).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The `dropzone` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dropzone");

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long any one client command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Alice's password (she also has a key).
pub const ALICE_PASSWORD: &str = "secret";
/// Bob's password (he also has a key).
pub const BOB_PASSWORD: &str = "bob-has-another-secret";

/// The configuration up to its `[auth]` table.
const BASE_CONFIG: &str = r#"# Written by the integration test harness.
listen = "127.0.0.1:0"
host_keys_dir = "host_keys"
data_dir = "data"
keks_dir = "keks"

"#;

/// The default `[auth]` keys after `users_file`: no Linux users.
pub const DEFAULT_AUTH_CONFIG: &str = "pam = false\n";

/// The default `[kms]` part: the local backend, no key cache.
pub const LOCAL_KMS_CONFIG: &str = r#"[kms]
backend = "local"
key_cache_ttl_secs = 0

[kms.local]
key_dir = "master_key"
secret_version = "1"
"#;

/// How to start a [`Server`] (see [`Server::start_opts`]).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Replaces the `[kms]` tables of the configuration (default:
    /// [`LOCAL_KMS_CONFIG`]).
    pub kms_config: Option<String>,
    /// Appended to the configuration (further tables).
    pub extra_config: String,
    /// Keys of the `[auth]` table after `users_file` (default:
    /// [`DEFAULT_AUTH_CONFIG`]), e.g. `pam = true` and `pam_service`.
    pub auth_config: Option<String>,
    /// Mount a tmpfs of this many bytes as the data dir before the server
    /// starts (needs root; unmounted when the server is dropped), to run
    /// out of space for real.
    pub data_tmpfs_bytes: Option<u64>,
    /// Environment variables for every `dropzone` process of the server
    /// (`serve`, `user add`, [`Server::dropzone`]), e.g. AWS credentials.
    pub env: Vec<(String, String)>,
    /// `[auth] users_file` (default `config/users.toml`), e.g. an
    /// `s3://BUCKET/KEY` object.
    pub users_file: Option<String>,
}

/// A user of the test server.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Private ed25519 key (the `.pub` next to it is authorized).
    pub key: PathBuf,
    /// Password, if the user has one.
    pub password: Option<String>,
}

/// A running `dropzone serve`, killed when dropped.
pub struct Server {
    dir: tempfile::TempDir,
    /// The port the server listens on (127.0.0.1).
    pub port: u16,
    child: Child,
    log: Arc<Mutex<String>>,
    users: HashMap<String, User>,
    /// Mount points to unmount on drop.
    mounts: Vec<PathBuf>,
    /// [`ServerOptions::env`].
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts a server with two users: `alice` (key and password
    /// [`ALICE_PASSWORD`]) and `bob` (key and password [`BOB_PASSWORD`]).
    pub fn start() -> Server {
        Server::start_with(&[("alice", Some(ALICE_PASSWORD)), ("bob", Some(BOB_PASSWORD))])
    }

    /// Starts a server with these users (each gets an ed25519 key; a
    /// password when given).
    pub fn start_with(users: &[(&str, Option<&str>)]) -> Server {
        Server::start_opts(users, &ServerOptions::default())
    }

    /// Starts a server with these users and configuration options.
    pub fn start_opts(users: &[(&str, Option<&str>)], opts: &ServerOptions) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("dropzone-it-")
            .tempdir()
            .expect("creating a temporary directory");
        let root = dir.path().to_path_buf();
        for sub in ["config", "keys", "local"] {
            std::fs::create_dir_all(root.join(sub)).expect("creating test directories");
        }
        let config = format!(
            "{BASE_CONFIG}[auth]\nusers_file = \"{}\"\n{}\n{}\n{}",
            opts.users_file.as_deref().unwrap_or("config/users.toml"),
            opts.auth_config.as_deref().unwrap_or(DEFAULT_AUTH_CONFIG),
            opts.kms_config.as_deref().unwrap_or(LOCAL_KMS_CONFIG),
            opts.extra_config
        );
        std::fs::write(root.join("config/dropzone.toml"), config).expect("writing the config");
        let mut mounts = Vec::new();
        if let Some(bytes) = opts.data_tmpfs_bytes {
            let data = root.join("data");
            std::fs::create_dir_all(&data).expect("creating the data dir");
            mount_tmpfs(&data, bytes);
            mounts.push(data);
        }

        let mut added = HashMap::new();
        for &(name, password) in users {
            let key = root.join("keys").join(name);
            run(Command::new("ssh-keygen")
                .args(["-t", "ed25519", "-N", "", "-q", "-C"])
                .arg(format!("{name}@dropzone-test"))
                .arg("-f")
                .arg(&key));
            let mut cmd = dropzone_command(&root, &opts.env);
            cmd.args(["user", "add", name, "--authorized-key"])
                .arg(key.with_extension("pub"))
                .args(["--config", "config/dropzone.toml"]);
            match password {
                Some(pw) => {
                    cmd.arg("--password-stdin");
                    run_with_stdin(&mut cmd, format!("{pw}\n").as_bytes());
                }
                None => {
                    run(&mut cmd);
                }
            }
            added.insert(
                name.to_owned(),
                User {
                    name: name.to_owned(),
                    key,
                    password: password.map(str::to_owned),
                },
            );
        }

        let log = Arc::new(Mutex::new(String::new()));
        let (child, port) = spawn_serve(&root, &log, &opts.env);
        Server {
            dir,
            port,
            child,
            log,
            users: added,
            mounts,
            env: opts.env.clone(),
        }
    }

    /// Kills the server with SIGKILL, as a crash would: no destructor, no
    /// flush, no cleanup runs. Returns once the process is gone.
    pub fn kill9(&mut self) {
        // std's Child::kill sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again in the same directory after [`Server::kill9`]
    /// (on a new port, see [`Server::port`]).
    pub fn restart(&mut self) {
        assert!(!self.is_alive(), "restart: the server is still running");
        self.log
            .lock()
            .unwrap()
            .push_str("--- restarted by the test ---\n");
        let (child, port) = spawn_serve(self.dir.path(), &self.log, &self.env);
        self.child = child;
        self.port = port;
    }

    /// Starts another node of this server's deployment (for a shared
    /// store, see `s3_nodes`): in its own working directory, with copies of
    /// what nodes share besides the store (the configuration file, the
    /// users file, the host keys and the local master key, copied as an
    /// operator would distribute them), the same users and environment.
    /// Its data and key directories start empty. Later changes to this
    /// server's users file do not reach it.
    pub fn start_node(&self) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("dropzone-it-node-")
            .tempdir()
            .expect("creating a temporary directory");
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("local")).expect("creating the scratch directory");
        for shared in ["config", "host_keys", "master_key"] {
            let from = self.path(shared);
            if !from.is_dir() {
                continue;
            }
            std::fs::create_dir(root.join(shared)).expect("creating a shared directory");
            for entry in std::fs::read_dir(&from).expect("listing a shared directory") {
                let entry = entry.expect("listing a shared directory");
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    // fs::copy keeps the mode: host keys stay 0600.
                    std::fs::copy(entry.path(), root.join(shared).join(entry.file_name()))
                        .expect("copying a shared file");
                }
            }
        }
        let log = Arc::new(Mutex::new(String::new()));
        let (child, port) = spawn_serve(&root, &log, &self.env);
        Server {
            dir,
            port,
            child,
            log,
            users: self.users.clone(),
            mounts: Vec::new(),
            env: self.env.clone(),
        }
    }

    /// The server process's id (for `/proc/PID/status` and `/proc/PID/fd`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's working directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the server's working directory.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Where `user`'s files are stored (encrypted).
    pub fn data(&self, user: &str) -> PathBuf {
        self.dir.path().join("data").join(user)
    }

    /// A scratch directory for client-side files (the clients' working directory).
    pub fn local(&self) -> PathBuf {
        self.dir.path().join("local")
    }

    /// A path in the client scratch directory.
    pub fn local_path(&self, name: &str) -> PathBuf {
        self.local().join(name)
    }

    /// A new key pair for a user `name` this server does not know yet (the
    /// test adds them with `dropzone user add`), in its keys directory;
    /// the user is known to this [`Server`]'s client commands from now on.
    pub fn new_user_key(&mut self, name: &str) -> User {
        let key = self.dir.path().join("keys").join(name);
        std::fs::create_dir_all(self.dir.path().join("keys")).expect("creating the keys directory");
        run(Command::new("ssh-keygen")
            .args(["-t", "ed25519", "-N", "", "-q", "-C"])
            .arg(format!("{name}@dropzone-test"))
            .arg("-f")
            .arg(&key));
        let user = User {
            name: name.to_owned(),
            key,
            password: None,
        };
        self.know_user(user.clone());
        user
    }

    /// Makes `user` (of another node, see [`Server::new_user_key`]) known
    /// to this server's client commands.
    pub fn know_user(&mut self, user: User) {
        self.users.insert(user.name.clone(), user);
    }

    /// A user created by [`Server::start_with`].
    pub fn user(&self, name: &str) -> &User {
        self.users
            .get(name)
            .unwrap_or_else(|| panic!("no test user {name}"))
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// True while the server process is running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. `rustix::process::Signal::HUP`) to the server.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("the server's process id");
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("sending {signal:?} to the server: {e}"));
    }

    /// Waits (polling, up to [`COMMAND_TIMEOUT`]) until `ready` returns
    /// something; panics naming `what` with the server log otherwise.
    #[track_caller]
    pub fn wait_for<T>(&self, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(v) = ready() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {COMMAND_TIMEOUT:?} waiting for {what}\n--- server log (tail) ---\n{}",
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of the metrics endpoint (`[metrics] listen` on
    /// `127.0.0.1:0`), from the server's log.
    pub fn metrics_port(&self) -> u16 {
        const MARK: &str = "metrics served at http://127.0.0.1:";
        self.wait_for("the metrics endpoint's log line", || {
            let log = self.log();
            let rest = &log[log.find(MARK)? + MARK.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    }

    /// `GET path` on 127.0.0.1:`port` over plain HTTP/1.1: the status code
    /// and the body.
    pub fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .unwrap_or_else(|e| panic!("reading the reply to GET {path}: {e}"));
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in the reply to GET {path}:\n{reply}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in the reply to GET {path}:\n{head}"));
        (status, body.to_owned())
    }

    /// Options common to ssh, sftp and scp, without the port and key.
    pub fn common_opts() -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "ServerAliveInterval=0",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Options for a key login as `user` (BatchMode, only this key).
    pub fn key_opts(&self, user: &str) -> Vec<String> {
        let key = &self.user(user).key;
        let mut opts = Server::common_opts();
        opts.extend(
            [
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "PasswordAuthentication=no",
                "-o",
                "KbdInteractiveAuthentication=no",
                "-i",
            ]
            .map(str::to_owned),
        );
        opts.push(key.display().to_string());
        opts
    }

    /// A client command with the scratch directory as working directory and
    /// no agent.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.local()).env_remove("SSH_AUTH_SOCK");
        cmd
    }

    /// `user@127.0.0.1`
    pub fn dest(&self, user: &str) -> String {
        format!("{user}@127.0.0.1")
    }

    /// Writes an sftp batch file and returns its path.
    fn batch_file(&self, batch: &str) -> PathBuf {
        let mut f = tempfile::Builder::new()
            .prefix("batch-")
            .tempfile_in(self.dir.path())
            .expect("creating a batch file");
        f.write_all(batch.as_bytes())
            .expect("writing the batch file");
        let (_, path) = f.keep().expect("keeping the batch file");
        path
    }

    /// `sftp -b BATCH` as `user` with their key, in the scratch directory.
    pub fn sftp(&self, user: &str, batch: &str) -> Command {
        self.sftp_with(user, &[], batch)
    }

    /// [`Server::sftp`] with extra client options (`-R`, `-B`, ...).
    pub fn sftp_with(&self, user: &str, options: &[&str], batch: &str) -> Command {
        let file = self.batch_file(batch);
        let mut cmd = self.client("sftp");
        cmd.args(self.key_opts(user))
            .args(options)
            .args(["-P", &self.port.to_string(), "-b"])
            .arg(file)
            .arg(self.dest(user));
        cmd
    }

    /// `sshpass -p PASSWORD sftp -b BATCH` as `user`, password only.
    pub fn sftp_password(&self, user: &str, password: &str, batch: &str) -> Command {
        self.sftp_password_from("127.0.0.1", user, password, batch)
    }

    /// [`Server::sftp_password`] from another local address (`source`,
    /// e.g. `127.0.0.2`: Linux routes all of 127/8 to the loopback), to
    /// test per-source behaviour.
    pub fn sftp_password_from(
        &self,
        source: &str,
        user: &str,
        password: &str,
        batch: &str,
    ) -> Command {
        let file = self.batch_file(batch);
        let mut cmd = self.client("sshpass");
        cmd.args(["-p", password, "sftp"])
            .args(Server::common_opts())
            .args(["-o", &format!("BindAddress={source}")])
            .args([
                // Must come before -b, which adds "-oBatchMode yes" (first value wins).
                "-o",
                "BatchMode=no",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-P",
                &self.port.to_string(),
                "-b",
            ])
            .arg(file)
            .arg(self.dest(user));
        cmd
    }

    /// `scp -P PORT [extra] SRC DST` as `user` with their key; remote paths
    /// are written `user@127.0.0.1:path` by the caller (see [`Server::remote`]).
    pub fn scp(
        &self,
        user: &str,
        extra: &[&str],
        src: impl AsRef<OsStr>,
        dst: impl AsRef<OsStr>,
    ) -> Command {
        let mut cmd = self.client("scp");
        cmd.args(self.key_opts(user))
            .args(["-q", "-P", &self.port.to_string()])
            .args(extra)
            .arg(src)
            .arg(dst);
        cmd
    }

    /// `user@127.0.0.1:path`
    pub fn remote(&self, user: &str, path: &str) -> String {
        format!("{user}@127.0.0.1:{path}")
    }

    /// `ssh -p PORT user@127.0.0.1 ARGS...` with the user's key.
    pub fn ssh(&self, user: &str, args: &[&str]) -> Command {
        let mut cmd = self.client("ssh");
        cmd.args(self.key_opts(user))
            .args(["-T", "-p", &self.port.to_string()])
            .arg(self.dest(user))
            .args(args);
        cmd
    }

    /// The `dropzone` binary with the server's working directory (for
    /// `verify`, `decrypt`, ...); the caller adds `--config config/dropzone.toml`
    /// where needed (see [`Server::dropzone_tool`]).
    pub fn dropzone(&self) -> Command {
        dropzone_command(self.dir.path(), &self.env)
    }

    /// `dropzone ARGS... --config config/dropzone.toml` in the server's directory.
    pub fn dropzone_tool(&self, args: &[&str]) -> Command {
        let mut cmd = self.dropzone();
        cmd.args(args).args(["--config", "config/dropzone.toml"]);
        cmd
    }

    /// Runs `cmd`, which must succeed; panics with a full report otherwise.
    pub fn run(&self, cmd: &mut Command) -> Output {
        let out = output_with_timeout(cmd, None);
        if !out.status.success() {
            panic!("{}", self.report("command failed", cmd, &out));
        }
        out
    }

    /// Runs `cmd`, which must fail; panics with a full report if it succeeds.
    pub fn run_fail(&self, cmd: &mut Command) -> Output {
        let out = output_with_timeout(cmd, None);
        if out.status.success() {
            panic!(
                "{}",
                self.report("command succeeded but should have failed", cmd, &out)
            );
        }
        out
    }

    /// Runs `cmd` whatever its outcome.
    pub fn run_any(&self, cmd: &mut Command) -> Output {
        output_with_timeout(cmd, None)
    }

    /// A failure report about `cmd` and its output, with the server log tail.
    pub fn report(&self, what: &str, cmd: &Command, out: &Output) -> String {
        let mut s = describe(what, cmd, out);
        let _ = write!(s, "\n--- server log (tail) ---\n{}\n", self.log_tail(40));
        s
    }

    /// Asserts with a report: `cond` must hold about `cmd`'s output.
    #[track_caller]
    pub fn check(&self, cond: bool, what: &str, cmd: &Command, out: &Output) {
        if !cond {
            panic!("{}", self.report(what, cmd, out));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in self.mounts.drain(..) {
            // Lazy: a client still exiting must not keep the mount alive.
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if thread::panicking() && std::env::var_os("DROPZONE_TEST_KEEP").is_some() {
            let path = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("temporary directory"),
            )
            .keep();
            eprintln!("test directory kept at {}", path.display());
        }
    }
}

/// Spawns `dropzone serve` in `root`, appending its stderr to `log`, and
/// waits for its listening line.
fn spawn_serve(root: &Path, log: &Arc<Mutex<String>>, env: &[(String, String)]) -> (Child, u16) {
    let mut cmd = dropzone_command(root, env);
    cmd.args(["serve", "--config", "config/dropzone.toml"]);
    spawn_listening(&mut cmd, log).unwrap_or_else(|(status, log)| {
        panic!(
            "the server exited before listening ({status})\n\
             working dir: {}\n--- server log ---\n{log}",
            root.display()
        )
    })
}

/// Spawns a server command (`dropzone serve`, `dropzone-eaas serve`) with
/// its stderr appended to `log` line by line, and waits for its
/// `listening on 127.0.0.1:PORT` line. If it exits first: `Err` with its
/// exit status and log. No line within [`START_TIMEOUT`] panics.
pub fn spawn_listening(
    cmd: &mut Command,
    log: &Arc<Mutex<String>>,
) -> Result<(Child, u16), (String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    {
        let log = log.clone();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Logged before the port is announced, so that a test that
                // has the port also sees the line in the log.
                {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(port) = listening_port(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(port) = rx.recv_timeout(Duration::from_millis(50)) {
            return Ok((child, port));
        }
        if let Ok(Some(status)) = child.try_wait() {
            thread::sleep(Duration::from_millis(100)); // let the reader catch up
            return Err((status.to_string(), log.lock().unwrap().clone()));
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} printed no `listening on 127.0.0.1:PORT` line within {START_TIMEOUT:?}\n\
                 --- log ---\n{}",
                log.lock().unwrap()
            );
        }
    }
}

/// Mounts a tmpfs of `bytes` bytes on `dir`. Needs root (CI runs as root):
/// without it the test fails here, loudly, rather than skip.
fn mount_tmpfs(dir: &Path, bytes: u64) {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={bytes},mode=0700"))
        .arg("tmpfs")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
    assert!(
        out.status.success(),
        "mounting a {bytes}-byte tmpfs on {} failed (this test needs root, as in CI): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The port in a `listening on 127.0.0.1:PORT` log line.
fn listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on 127.0.0.1:")? + "listening on 127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The `dropzone` binary in `dir`, with no inherited overrides.
fn dropzone_command(dir: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("DROPZONE_CONFIG")
        .env_remove("DROPZONE_LISTEN")
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n... ({} more bytes)", &s[..cut], s.len() - cut)
}

/// A description of a command and its outcome.
pub fn describe(what: &str, cmd: &Command, out: &Output) -> String {
    let dir = cmd
        .get_current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "(inherited)".into());
    format!(
        "{what}\ncommand: {cmd:?}\nworking dir: {dir}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        truncate(&String::from_utf8_lossy(&out.stdout), 8000),
        truncate(&String::from_utf8_lossy(&out.stderr), 8000),
    )
}

/// Runs `cmd` (with `stdin` if given) to completion or [`COMMAND_TIMEOUT`],
/// capturing stdout and stderr.
pub fn output_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // A group of its own, so that a timeout kills the ssh an sftp or scp
    // started too: it holds the output pipes open.
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is the program installed?)"));
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let collect = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = collect(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_t = collect(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let status = child.wait().expect("waiting for a killed child");
            let out = Output {
                status,
                stdout: out_t.join().unwrap_or_default(),
                stderr: err_t.join().unwrap_or_default(),
            };
            panic!(
                "{}",
                describe(
                    &format!("command timed out after {COMMAND_TIMEOUT:?}"),
                    cmd,
                    &out
                )
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Runs `cmd`, which must succeed (no server involved).
pub fn run(cmd: &mut Command) -> Output {
    let out = output_with_timeout(cmd, None);
    if !out.status.success() {
        panic!("{}", describe("command failed", cmd, &out));
    }
    out
}

/// Runs `cmd` with `stdin`, which must succeed (no server involved).
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let out = output_with_timeout(cmd, Some(stdin));
    if !out.status.success() {
        panic!("{}", describe("command failed", cmd, &out));
    }
    out
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The lines of an `sftp -b` stdout without the echoed `sftp> ...` commands.
pub fn sftp_output_lines(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .map(str::to_owned)
        .collect()
}

/// Deterministic pseudo-random bytes (splitmix64), different per seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A seed that differs between runs (so content is random, not fixed).
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Asserts two files have identical content, with a short report otherwise.
#[track_caller]
pub fn assert_same_file(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap_or_else(|e| panic!("reading {}: {e}", a.display()));
    let y = std::fs::read(b).unwrap_or_else(|e| panic!("reading {}: {e}", b.display()));
    if x != y {
        let first = x
            .iter()
            .zip(&y)
            .position(|(p, q)| p != q)
            .unwrap_or(x.len().min(y.len()));
        panic!(
            "{} ({} bytes) and {} ({} bytes) differ (first difference at byte {first})",
            a.display(),
            x.len(),
            b.display(),
            y.len()
        );
    }
}

/// Length of the windows [`find_plaintext_window`] looks for.
pub const WINDOW: usize = 32;

/// Looks for any of the `WINDOW`-byte windows of `plain` starting at the
/// offsets `starts` inside `stored`; returns (plain offset, stored offset)
/// of the first found.
pub fn find_plaintext_window(
    plain: &[u8],
    starts: &[usize],
    stored: &[u8],
) -> Option<(usize, usize)> {
    if stored.len() < WINDOW {
        return None;
    }
    // A 2^24-bit filter on each window's first three bytes, then exact lookups.
    let mut filter = vec![0u64; 1 << 18];
    let mut by_prefix: HashMap<[u8; 4], Vec<usize>> = HashMap::new();
    for &s in starts {
        if s + WINDOW > plain.len() {
            continue;
        }
        let p = &plain[s..s + WINDOW];
        let bit = (usize::from(p[0]) << 16) | (usize::from(p[1]) << 8) | usize::from(p[2]);
        filter[bit >> 6] |= 1 << (bit & 63);
        by_prefix
            .entry([p[0], p[1], p[2], p[3]])
            .or_default()
            .push(s);
    }
    if by_prefix.is_empty() {
        return None;
    }
    for i in 0..=stored.len() - WINDOW {
        let bit = (usize::from(stored[i]) << 16)
            | (usize::from(stored[i + 1]) << 8)
            | usize::from(stored[i + 2]);
        if filter[bit >> 6] & (1 << (bit & 63)) == 0 {
            continue;
        }
        if let Some(candidates) =
            by_prefix.get(&[stored[i], stored[i + 1], stored[i + 2], stored[i + 3]])
        {
            for &s in candidates {
                if plain[s..s + WINDOW] == stored[i..i + WINDOW] {
                    return Some((s, i));
                }
            }
        }
    }
    None
}

/// Every regular file under `dir`, recursively (relative paths).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => found.push(p.strip_prefix(dir).unwrap_or(&p).to_path_buf()),
                Err(_) => {}
            }
        }
    }
    found.sort();
    found
}

/// Every entry (files, dirs, links) under `dir`, recursively.
pub fn entries_under(dir: &Path) -> HashSet<PathBuf> {
    let mut found = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if matches!(e.file_type(), Ok(t) if t.is_dir()) {
                stack.push(p.clone());
            }
            found.insert(p.strip_prefix(dir).unwrap_or(&p).to_path_buf());
        }
    }
    found
}
