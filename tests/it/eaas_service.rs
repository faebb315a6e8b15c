//! The real `dropzone-eaas` binary on loopback, driven over HTTP with curl,
//! and its key files checked with OpenSSL.
//!
//! [`EaasServer`] starts a service in its own temporary directory; other
//! tests (the EaaS client's) may use it too.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::{describe, output_with_timeout, run, spawn_listening};

/// The `dropzone-eaas` binary under test.
pub const EAAS_BIN: &str = env!("CARGO_BIN_EXE_dropzone-eaas");

/// A data key as dropzone sends it: 64 lowercase hex characters.
const DEK: &str = "4f1c0de5a11ce0b0b5eedcafe00112233445566778899aabbccddeeff0011223";

/// How to start a service.
#[derive(Debug, Clone, Default)]
pub struct EaasOptions {
    /// Require this bearer token (written to `token` and named by `token_file`).
    pub token: Option<String>,
    /// Serve HTTPS with a self-signed certificate for 127.0.0.1 (`tls/cert.pem`).
    pub tls: bool,
    /// Set `DROPZONE_EAAS_PASSPHRASE`.
    pub passphrase_env: Option<String>,
    /// Extra lines for the configuration file.
    pub extra_config: String,
}

/// A running `dropzone-eaas serve`, killed when dropped.
pub struct EaasServer {
    dir: tempfile::TempDir,
    /// The port on 127.0.0.1.
    pub port: u16,
    child: Child,
    log: Arc<Mutex<String>>,
    opts: EaasOptions,
}

/// An HTTP reply as curl saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: String,
}

impl Reply {
    /// The body as JSON; panics if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "not JSON: {self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Asserts an error reply of the original's kind: 500, plain text that
    /// is not JSON, containing `needle`.
    #[track_caller]
    pub fn assert_500(&self, needle: &str) {
        assert_eq!(self.status, 500, "{self:?}");
        assert!(self.content_type.starts_with("text/plain"), "{self:?}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&self.body).is_err(),
            "{self:?}"
        );
        assert!(self.body.contains(needle), "{needle:?} not in {self:?}");
    }
}

impl EaasServer {
    /// A plain HTTP service without a token.
    pub fn start() -> EaasServer {
        EaasServer::start_with(EaasOptions::default())
    }

    /// A service with these options in a fresh directory.
    pub fn start_with(opts: EaasOptions) -> EaasServer {
        let dir = tempfile::Builder::new()
            .prefix("dropzone-eaas-it-")
            .tempdir()
            .expect("creating a temporary directory");
        EaasServer::start_in(dir, opts).unwrap_or_else(|(out, log)| {
            panic!("the service exited before listening ({out})\n--- log ---\n{log}")
        })
    }

    /// Starts in `dir` (reusing what a previous service left there).
    /// Returns the exit status and log if the service exits instead.
    fn start_in(dir: tempfile::TempDir, opts: EaasOptions) -> Result<EaasServer, (String, String)> {
        let root = dir.path();
        std::fs::create_dir_all(root.join("config")).expect("creating config/");
        let mut config = String::from(
            "# Written by the integration tests.\nlisten = \"127.0.0.1:0\"\nkeys_dir = \"keys\"\n",
        );
        if let Some(token) = &opts.token {
            std::fs::write(root.join("token"), format!("{token}\n")).expect("writing the token");
            config.push_str("token_file = \"token\"\n");
        }
        config.push_str(&opts.extra_config);
        if opts.tls {
            make_certificate(&root.join("tls"));
            config.push_str("[tls]\ncert_file = \"tls/cert.pem\"\nkey_file = \"tls/key.pem\"\n");
        }
        std::fs::write(root.join("config/eaas.toml"), config).expect("writing the config");

        let mut cmd = eaas_command(root, &opts);
        cmd.args(["serve", "--config", "config/eaas.toml"]);
        let log = Arc::new(Mutex::new(String::new()));
        let (child, port) = spawn_listening(&mut cmd, &log)?;
        Ok(EaasServer {
            dir,
            port,
            child,
            log,
            opts,
        })
    }

    /// Stops the service and starts it again in the same directory.
    pub fn restart(self) -> EaasServer {
        let opts = self.opts.clone();
        let dir = self.stop();
        EaasServer::start_in(dir, opts).unwrap_or_else(|(out, log)| {
            panic!("the restarted service exited ({out})\n--- log ---\n{log}")
        })
    }

    /// Stops the service, keeping its directory.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("temporary directory"),
        );
        drop(self);
        dir
    }

    /// The service's working directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `http(s)://127.0.0.1:PORT/...`
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Everything the service has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it contains `needle` (the reader thread may lag behind
    /// a reply by a moment); panics after a few seconds without it.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("{needle:?} not in the log:\n{log}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// curl with TLS trust and the bearer token (if the service has one).
    fn curl(&self, method: &str, path: &str, token: Option<&str>) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "-o", "-", "-X", method])
            .args(["-w", "\n%{http_code}\n%{content_type}"]);
        if self.opts.tls {
            cmd.arg("--cacert").arg(self.root().join("tls/cert.pem"));
        }
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        cmd.arg(self.url(path));
        cmd
    }

    /// `POST path` with a JSON body, with the service's token if it has one.
    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.post_with_token(path, body, self.opts.token.as_deref())
    }

    /// `POST path` with a JSON body and this token (or none).
    pub fn post_with_token(&self, path: &str, body: &str, token: Option<&str>) -> Reply {
        let mut cmd = self.curl("POST", path, token);
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
        let out = output_with_timeout(&mut cmd, Some(body.as_bytes()));
        self.reply(&cmd, &out)
    }

    /// `GET path` without a token.
    pub fn get(&self, path: &str) -> Reply {
        let mut cmd = self.curl("GET", path, None);
        let out = output_with_timeout(&mut cmd, None);
        self.reply(&cmd, &out)
    }

    fn reply(&self, cmd: &Command, out: &Output) -> Reply {
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.rsplitn(3, '\n');
        let (Some(content_type), Some(status), Some(body)) =
            (parts.next(), parts.next(), parts.next())
        else {
            panic!(
                "{}\n--- service log ---\n{}",
                describe("curl output", cmd, out),
                self.log()
            );
        };
        let Ok(status) = status.parse() else {
            panic!(
                "{}\n--- service log ---\n{}",
                describe("curl failed", cmd, out),
                self.log()
            );
        };
        Reply {
            status,
            content_type: content_type.to_owned(),
            body: body.to_owned(),
        }
    }

    /// Generates `path` version `version`; returns the `Info` text.
    pub fn generate(&self, path: &str, version: &str) -> String {
        let r = self.post(
            "/gen/key/rsa",
            &format!(r#"{{"secret_path": "{path}", "secret_version": "{version}"}}"#),
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["Info"].as_str().expect("Info").to_owned()
    }

    /// Encrypts `plaintext`; returns the ciphertext hex.
    pub fn encrypt(&self, path: &str, version: &str, plaintext: &str) -> String {
        let r = self.post(
            "/key/encrypt/rsa",
            &format!(
                r#"{{"secret_path": "{path}", "secret_version": "{version}", "plaintext": "{plaintext}"}}"#
            ),
        );
        assert_eq!(r.status, 200, "{r:?}\n--- log ---\n{}", self.log());
        r.json()["ciphertext"]
            .as_str()
            .expect("ciphertext")
            .to_owned()
    }

    /// Decrypts `ciphertext` (hex).
    pub fn decrypt(&self, path: &str, version: &str, ciphertext: &str) -> Reply {
        self.post(
            "/key/decrypt/rsa",
            &format!(
                r#"{{"secret_path": "{path}", "secret_version": "{version}", "ciphertext": "{ciphertext}"}}"#
            ),
        )
    }
}

impl Drop for EaasServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary in `dir`, with no inherited overrides.
fn eaas_command(dir: &Path, opts: &EaasOptions) -> Command {
    let mut cmd = Command::new(EAAS_BIN);
    cmd.current_dir(dir)
        .env_remove("DROPZONE_EAAS_CONFIG")
        .env_remove("DROPZONE_EAAS_LISTEN")
        .env_remove("DROPZONE_EAAS_PASSPHRASE")
        .env("RUST_LOG", "info");
    if let Some(p) = &opts.passphrase_env {
        cmd.env("DROPZONE_EAAS_PASSPHRASE", p);
    }
    cmd
}

/// A self-signed certificate for 127.0.0.1 in `dir/cert.pem`, `dir/key.pem`.
fn make_certificate(dir: &Path) {
    std::fs::create_dir_all(dir).expect("creating the TLS directory");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem")));
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every endpoint and error of the API over real HTTP, the files at rest,
/// the log, and a restart.
#[test]
fn eaas_api_over_http() {
    let server = EaasServer::start();
    let health = server.get("/");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["service"], "dropzone-eaas");
    assert_eq!(health.json()["status"], "ok");

    assert_eq!(
        server.generate("dropzone/rsa", "1"),
        "dropzone/rsa v1 Generated"
    );
    assert_eq!(server.generate("dropzone/rsa", "1"), "Key was exsits");
    let r = server.post(
        "/gen/key/rsa",
        r#"{"secret_path": "dropzone/rsa", "secret_version": 1}"#,
    );
    assert_eq!(r.json()["Info"], "Key was exsits");

    let c1 = server.encrypt("dropzone/rsa", "1", DEK);
    let c2 = server.encrypt("dropzone/rsa", "1", DEK);
    assert_eq!(c1.len(), 512);
    assert!(
        c1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{c1}"
    );
    assert_ne!(c1, c2);
    for c in [&c1, &c2] {
        let r = server.decrypt("dropzone/rsa", "1", c);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["plaintext"], DEK);
    }
    // The version as a number works for encrypt and decrypt too.
    let r = server.post(
        "/key/decrypt/rsa",
        &format!(r#"{{"secret_path": "dropzone/rsa", "secret_version": 1, "ciphertext": "{c1}"}}"#),
    );
    assert_eq!(r.json()["plaintext"], DEK);

    // Errors: 500 with a plain-text body, as the original.
    let mut tampered = hex::decode(&c1).unwrap();
    tampered[7] ^= 0x20;
    server
        .decrypt("dropzone/rsa", "1", &hex::encode(&tampered))
        .assert_500("does not decrypt");
    server
        .decrypt("dropzone/rsa", "2", &c1)
        .assert_500("dropzone/rsa v2 does not exist");
    server
        .decrypt("dropzone/rsa", "1", "not hex")
        .assert_500("not a hex string");
    server
        .post(
            "/key/encrypt/rsa",
            r#"{"secret_path": "dropzone/rsa", "secret_version": "1"}"#,
        )
        .assert_500("missing field `plaintext`");
    server
        .post("/gen/key/rsa", "{\"secret_path\": ")
        .assert_500("not valid JSON");
    server
        .post(
            "/gen/key/rsa",
            r#"{"secret_path": "../../etc", "secret_version": "1"}"#,
        )
        .assert_500("invalid secret_path");
    let long = "a".repeat(215);
    server
        .post(
            "/key/encrypt/rsa",
            &format!(
                r#"{{"secret_path": "dropzone/rsa", "secret_version": "1", "plaintext": "{long}"}}"#
            ),
        )
        .assert_500("at most 214 bytes");

    // Unsupported key type: 200 {"Error"}; unknown path 404; wrong method 405.
    let r = server.post(
        "/gen/key/aes",
        r#"{"secret_path": "dropzone/aes", "secret_version": "1"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["Error"].as_str().unwrap().contains("aes"), "{r:?}");
    assert_eq!(server.post("/no/such/path", "{}").status, 404);
    assert_eq!(server.get("/gen/key/rsa").status, 405);
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(70_000));
    assert_eq!(server.post("/gen/key/rsa", &big).status, 413);

    // At rest: encrypted PKCS#8, 0600; the generated passphrase 0600.
    let key_file = server.root().join("keys/dropzone/rsa/v1.p8");
    let pem = std::fs::read_to_string(&key_file).unwrap();
    assert!(pem.contains("ENCRYPTED"), "{pem}");
    assert!(!pem.contains("BEGIN PRIVATE KEY") && !pem.contains("BEGIN RSA PRIVATE KEY"));
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(mode(&server.root().join("keys")), 0o700);
    let passphrase_file = server.root().join("keys/.passphrase");
    assert_eq!(mode(&passphrase_file), 0o600);
    let passphrase = std::fs::read_to_string(&passphrase_file).unwrap();

    // The log has each request with its key and status, and no secrets.
    let log = server.wait_for_log("status=413");
    assert!(log.contains("created a random passphrase"), "{log}");
    assert!(
        log.contains("/key/decrypt/rsa") && log.contains("dropzone/rsa v1"),
        "{log}"
    );
    assert!(log.contains("status=500"), "{log}");
    for secret in [DEK, &c1[..64], &c2[..64], passphrase.trim()] {
        assert!(!log.contains(secret), "the log contains {secret}\n{log}");
    }

    // A restart reads the same key with the same generated passphrase.
    let server = server.restart();
    let r = server.decrypt("dropzone/rsa", "1", &c1);
    assert_eq!(r.json()["plaintext"], DEK);
    assert!(!server.log().contains("created a random passphrase"));
}

/// The key file is standard encrypted PKCS#8 and the ciphertexts standard
/// RSA-OAEP with SHA-1 and MGF1-SHA1: OpenSSL decrypts the service's
/// ciphertext, and the service decrypts OpenSSL's.
#[test]
fn eaas_interoperates_with_openssl() {
    let server = EaasServer::start_with(EaasOptions {
        passphrase_env: Some("an operator's passphrase".into()),
        ..EaasOptions::default()
    });
    server.generate("interop", "3");
    assert!(!server.root().join("keys/.passphrase").exists());
    let root = server.root();
    let work = root.join("openssl");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("pass"), "an operator's passphrase\n").unwrap();
    let openssl = |args: &[&str]| {
        let mut cmd = Command::new("openssl");
        cmd.current_dir(&work).args(args);
        run(&mut cmd)
    };
    openssl(&[
        "pkey",
        "-in",
        "../keys/interop/v3.p8",
        "-passin",
        "file:pass",
        "-out",
        "private.pem",
    ]);
    openssl(&[
        "pkey",
        "-in",
        "private.pem",
        "-pubout",
        "-out",
        "public.pem",
    ]);
    let oaep_sha1 = [
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha1",
        "-pkeyopt",
        "rsa_mgf1_md:sha1",
    ];

    // Service -> OpenSSL.
    let c = server.encrypt("interop", "3", DEK);
    std::fs::write(work.join("c.bin"), hex::decode(&c).unwrap()).unwrap();
    let mut args = vec![
        "pkeyutl",
        "-decrypt",
        "-inkey",
        "private.pem",
        "-in",
        "c.bin",
    ];
    args.extend(oaep_sha1);
    let out = openssl(&args);
    assert_eq!(String::from_utf8_lossy(&out.stdout), DEK);

    // OpenSSL -> service.
    std::fs::write(work.join("m.txt"), "from openssl").unwrap();
    let mut args = vec![
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        "public.pem",
        "-in",
        "m.txt",
        "-out",
        "o.bin",
    ];
    args.extend(oaep_sha1);
    openssl(&args);
    let theirs = hex::encode(std::fs::read(work.join("o.bin")).unwrap());
    let r = server.decrypt("interop", "3", &theirs);
    assert_eq!(r.json()["plaintext"], "from openssl", "{r:?}");
}

/// Ten concurrent requests for one new key create it once.
#[test]
fn eaas_concurrent_generation_over_http() {
    let server = EaasServer::start();
    let infos: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| s.spawn(|| server.generate("race/rsa", "9")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        infos.iter().filter(|i| i.ends_with("Generated")).count(),
        1,
        "{infos:?}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(server.root().join("keys/race/rsa"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

/// With a token file, everything but `GET /` needs the bearer token; over
/// TLS with a certificate the client trusts.
#[test]
fn eaas_token_and_tls() {
    let token = "b2b5a0f3-test-token-7c1d";
    let server = EaasServer::start_with(EaasOptions {
        token: Some(token.into()),
        tls: true,
        ..EaasOptions::default()
    });
    assert!(server.url("/").starts_with("https://"));
    assert!(server.log().contains("listening on 127.0.0.1:"));
    let health = server.get("/");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["status"], "ok");

    let body = r#"{"secret_path": "tok", "secret_version": "1"}"#;
    let r = server.post_with_token("/gen/key/rsa", body, None);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.content_type.starts_with("text/plain"));
    assert_eq!(
        server
            .post_with_token("/gen/key/rsa", body, Some("wrong-token"))
            .status,
        401
    );
    assert_eq!(server.post_with_token("/nope", "{}", None).status, 401);
    assert_eq!(server.generate("tok", "1"), "tok v1 Generated");
    let c = server.encrypt("tok", "1", DEK);
    assert_eq!(server.decrypt("tok", "1", &c).json()["plaintext"], DEK);
    assert!(!server.log().contains(token));

    // Plain HTTP to the TLS port fails; it never reaches the API.
    let out = output_with_timeout(
        Command::new("curl").args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{}/", server.port),
        ]),
        None,
    );
    assert!(
        !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("dropzone-eaas")
    );
}

/// Configuration errors exit 2 naming the key and line; a wrong passphrase
/// for existing keys is refused at start-up; `--help` everywhere.
#[test]
fn eaas_start_up_errors() {
    for (extra, needles) in [
        ("key_bits = 1000\n", ["line 4", "key_bits"]),
        (
            "passphrase_file = \"missing\"\n",
            ["line 4", "passphrase_file"],
        ),
        ("bogus = 1\n", ["line 4", "bogus"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = EaasOptions {
            extra_config: extra.into(),
            ..EaasOptions::default()
        };
        let Err((status, log)) = EaasServer::start_in(dir, opts) else {
            panic!("the service started with {extra:?}");
        };
        assert!(status.contains("exit status: 2"), "{status}\n{log}");
        for n in needles {
            assert!(log.contains(n), "{n:?} not in:\n{log}");
        }
    }
    // A missing token file (line 4 after listen and keys_dir and the comment).
    let dir = tempfile::tempdir().unwrap();
    let opts = EaasOptions {
        extra_config: "token_file = \"nope\"\n".into(),
        ..EaasOptions::default()
    };
    let Err((status, log)) = EaasServer::start_in(dir, opts) else {
        panic!("started without its token file");
    };
    assert!(
        status.contains("exit status: 2") && log.contains("token_file"),
        "{log}"
    );

    // Keys made under one passphrase; a start with another is refused.
    let server = EaasServer::start_with(EaasOptions {
        passphrase_env: Some("first passphrase".into()),
        ..EaasOptions::default()
    });
    server.generate("p", "1");
    let dir = server.stop();
    let Err((status, log)) = EaasServer::start_in(
        dir,
        EaasOptions {
            passphrase_env: Some("second passphrase".into()),
            ..EaasOptions::default()
        },
    ) else {
        panic!("started with the wrong passphrase");
    };
    assert!(status.contains("exit status: 2"), "{status}\n{log}");
    assert!(log.contains("does not open the existing keys"), "{log}");
    assert!(!log.contains("second passphrase") && !log.contains("first passphrase"));

    for args in [&["--help"][..], &["serve", "--help"]] {
        let out = run(Command::new(EAAS_BIN).args(args));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{text}");
    }
    let out = run(Command::new(EAAS_BIN).args(["serve", "--help"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}
