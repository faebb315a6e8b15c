//! The real `dropzone-eaas` binary, built with the `pkcs11` feature, with
//! its keys in a SoftHSM2 token of each test's own (a temporary token
//! directory named by `SOFTHSM2_CONF`), driven over HTTP with curl.
//!
//! Needs Debian's softhsm2 (`softhsm2-util` and
//! `/usr/lib/softhsm/libsofthsm2.so`; `DROPZONE_TEST_PKCS11_MODULE` names
//! another module).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use super::eaas_service::{EAAS_BIN, Reply};
use super::harness::{describe, output_with_timeout, run, spawn_listening};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "dropzone";
/// The user PIN: distinctive, so that the log can be searched for it.
const PIN: &str = "pin-7d3f9a0c";
const SO_PIN: &str = "so-pin-1234";
/// A data key as dropzone sends it: 64 lowercase hex characters.
const DEK: &str = "9e3779b97f4a7c15f39cc0605cedc8341082276bf3a27251f86c6a11d0c18e95";

fn module() -> String {
    std::env::var("DROPZONE_TEST_PKCS11_MODULE").unwrap_or_else(|_| MODULE.to_owned())
}

/// A directory with a SoftHSM2 configuration (`softhsm2.conf`), its token
/// directory (`tokens/`) holding one token labelled `dropzone`, and the
/// service's files.
struct Hsm {
    dir: tempfile::TempDir,
}

impl Hsm {
    fn new() -> Hsm {
        let dir = tempfile::Builder::new()
            .prefix("dropzone-eaas-pkcs11-")
            .tempdir()
            .expect("creating a temporary directory");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let hsm = Hsm { dir };
        run(hsm
            .softhsm2_util()
            .args(["--init-token", "--free", "--label", TOKEN])
            .args(["--so-pin", SO_PIN, "--pin", PIN]));
        hsm
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn conf(&self) -> PathBuf {
        self.root().join("softhsm2.conf")
    }

    fn softhsm2_util(&self) -> Command {
        let mut cmd = Command::new("softhsm2-util");
        cmd.env("SOFTHSM2_CONF", self.conf());
        cmd
    }

    /// The token's objects (keys) on disk: SoftHSM2's file store keeps one
    /// `<uuid>.object` file per object beside `token.object`.
    fn object_files(&self) -> usize {
        let mut n = 0;
        for token in std::fs::read_dir(self.root().join("tokens")).unwrap() {
            let token = token.unwrap().path();
            if !token.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&token).unwrap() {
                let name = f.unwrap().file_name().into_string().unwrap();
                if name.ends_with(".object") && name != "token.object" {
                    n += 1;
                }
            }
        }
        n
    }

    /// Writes `config/eaas.toml` with `[pkcs11]` and these extra lines in
    /// the table.
    fn write_config(&self, pkcs11_lines: &str) {
        std::fs::create_dir_all(self.root().join("config")).unwrap();
        std::fs::write(
            self.root().join("config/eaas.toml"),
            format!(
                "# Written by the integration tests.\nlisten = \"127.0.0.1:0\"\nkeys_dir = \"keys\"\n\
                 [pkcs11]\nmodule = \"{}\"\ntoken_label = \"{TOKEN}\"\n{pkcs11_lines}",
                module()
            ),
        )
        .unwrap();
    }

    /// Starts the service on the current configuration, with the PIN in
    /// `DROPZONE_EAAS_PKCS11_PIN` if given. Returns the exit status and log
    /// if it exits instead.
    fn start(&self, env_pin: Option<&str>) -> Result<Eaas, (String, String)> {
        let mut cmd = Command::new(EAAS_BIN);
        cmd.current_dir(self.root())
            .args(["serve", "--config", "config/eaas.toml"])
            .env_remove("DROPZONE_EAAS_CONFIG")
            .env_remove("DROPZONE_EAAS_LISTEN")
            .env_remove("DROPZONE_EAAS_PASSPHRASE")
            .env_remove("DROPZONE_EAAS_PKCS11_PIN")
            .env("SOFTHSM2_CONF", self.conf())
            .env("RUST_LOG", "info");
        if let Some(pin) = env_pin {
            cmd.env("DROPZONE_EAAS_PKCS11_PIN", pin);
        }
        let log = Arc::new(Mutex::new(String::new()));
        let (child, port) = spawn_listening(&mut cmd, &log)?;
        Ok(Eaas { child, port, log })
    }

    /// Starts the service, which must fail with a configuration error
    /// (exit status 2); returns its log.
    #[track_caller]
    fn start_fails(&self, env_pin: Option<&str>) -> String {
        match self.start(env_pin) {
            Ok(eaas) => panic!("the service started\n--- log ---\n{}", eaas.log()),
            Err((status, log)) => {
                assert!(status.contains("exit status: 2"), "{status}\n{log}");
                log
            }
        }
    }
}

/// A running `dropzone-eaas serve`, killed when dropped.
struct Eaas {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Drop for Eaas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Eaas {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "-o", "-", "-X", method])
            .args(["-w", "\n%{http_code}\n%{content_type}"]);
        if body.is_some() {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ]);
        }
        cmd.arg(format!("http://127.0.0.1:{}{path}", self.port));
        let out = output_with_timeout(&mut cmd, body.map(str::as_bytes));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.rsplitn(3, '\n');
        let (Some(content_type), Some(Ok(status)), Some(body)) =
            (parts.next(), parts.next().map(str::parse), parts.next())
        else {
            panic!(
                "{}\n--- service log ---\n{}",
                describe("curl failed", &cmd, &out),
                self.log()
            );
        };
        Reply {
            status,
            content_type: content_type.to_owned(),
            body: body.to_owned(),
        }
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        self.request("POST", path, Some(body))
    }

    fn generate(&self, version: &str) -> String {
        let r = self.post(
            "/gen/key/rsa",
            &format!(r#"{{"secret_path": "dropzone/rsa", "secret_version": "{version}"}}"#),
        );
        assert_eq!(r.status, 200, "{r:?}\n--- log ---\n{}", self.log());
        r.json()["Info"].as_str().expect("Info").to_owned()
    }

    fn encrypt(&self, version: &str, plaintext: &str) -> Reply {
        self.post(
            "/key/encrypt/rsa",
            &format!(
                r#"{{"secret_path": "dropzone/rsa", "secret_version": "{version}", "plaintext": "{plaintext}"}}"#
            ),
        )
    }

    fn ciphertext(&self, version: &str, plaintext: &str) -> String {
        let r = self.encrypt(version, plaintext);
        assert_eq!(r.status, 200, "{r:?}\n--- log ---\n{}", self.log());
        r.json()["ciphertext"]
            .as_str()
            .expect("ciphertext")
            .to_owned()
    }

    fn decrypt(&self, version: &str, ciphertext: &str) -> Reply {
        self.post(
            "/key/decrypt/rsa",
            &format!(
                r#"{{"secret_path": "dropzone/rsa", "secret_version": "{version}", "ciphertext": "{ciphertext}"}}"#
            ),
        )
    }
}

/// gen, encrypt and decrypt with the key pair in the token, the errors of
/// the wire API as with key files, no key files; then a restart (with the
/// PIN from the environment this time) decrypts an earlier ciphertext.
#[test]
fn eaas_pkcs11_keys_live_in_the_token() {
    let hsm = Hsm::new();
    std::fs::write(hsm.root().join("pin"), format!("{PIN}\n")).unwrap();
    hsm.write_config("pin_file = \"pin\"\n");
    let eaas = hsm.start(None).unwrap_or_else(|(status, log)| {
        panic!("the service exited ({status})\n--- log ---\n{log}")
    });
    let health = eaas.request("GET", "/", None);
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["status"], "ok");

    assert_eq!(hsm.object_files(), 0);
    assert_eq!(eaas.generate("1"), "dropzone/rsa v1 Generated");
    assert_eq!(eaas.generate("1"), "Key was exsits");
    assert_eq!(hsm.object_files(), 2, "one key pair in the token");

    let c1 = eaas.ciphertext("1", DEK);
    let c2 = eaas.ciphertext("1", DEK);
    assert_eq!(c1.len(), 512);
    assert!(c1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_ne!(c1, c2);
    for c in [&c1, &c2] {
        let r = eaas.decrypt("1", c);
        assert_eq!(r.status, 200, "{r:?}\n--- log ---\n{}", eaas.log());
        assert_eq!(r.json()["plaintext"], DEK);
    }

    // The errors of the file store: 500, plain text, the same words.
    let mut tampered = hex::decode(&c1).unwrap();
    tampered[42] ^= 0x10;
    eaas.decrypt("1", &hex::encode(&tampered))
        .assert_500("does not decrypt");
    eaas.decrypt("1", &c1[..510]).assert_500("does not decrypt");
    eaas.decrypt("2", &c1)
        .assert_500("dropzone/rsa v2 does not exist");
    eaas.encrypt("2", DEK)
        .assert_500("dropzone/rsa v2 does not exist");
    eaas.encrypt("1", &"a".repeat(215))
        .assert_500("at most 214 bytes");
    let r = eaas.post(
        "/gen/key/aes",
        r#"{"secret_path": "dropzone/aes", "secret_version": "1"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["Error"].as_str().unwrap().contains("aes"));

    // Nothing on disk but the token: no key directory, no passphrase.
    assert!(!hsm.root().join("keys").exists());
    let log = eaas.log();
    assert!(log.contains("PKCS#11 token \"dropzone\""), "{log}");
    for secret in [PIN, DEK, &c1[..64], &c2[..64]] {
        assert!(!log.contains(secret), "the log contains {secret}\n{log}");
    }
    drop(eaas);

    // Restarted, with the PIN from the environment and no pin_file: the
    // key persisted in the token.
    std::fs::remove_file(hsm.root().join("pin")).unwrap();
    hsm.write_config("");
    let eaas = hsm.start(Some(PIN)).unwrap_or_else(|(status, log)| {
        panic!("the restarted service exited ({status})\n--- log ---\n{log}")
    });
    let r = eaas.decrypt("1", &c1);
    assert_eq!(r.status, 200, "{r:?}\n--- log ---\n{}", eaas.log());
    assert_eq!(r.json()["plaintext"], DEK);
    assert_eq!(eaas.generate("1"), "Key was exsits");
    assert_eq!(eaas.generate("2"), "dropzone/rsa v2 Generated");
    let c3 = eaas.ciphertext("2", DEK);
    assert_eq!(eaas.decrypt("2", &c3).json()["plaintext"], DEK);
    eaas.decrypt("1", &c3).assert_500("does not decrypt");
    assert_eq!(hsm.object_files(), 4);
    assert!(!eaas.log().contains(PIN));
}

/// A wrong or missing PIN, an unknown token and a missing module stop the
/// start with a configuration error (exit status 2) that says which.
#[test]
fn eaas_pkcs11_start_up_errors() {
    let hsm = Hsm::new();
    hsm.write_config("");
    let log = hsm.start_fails(None);
    assert!(
        log.contains("no user PIN") && log.contains("DROPZONE_EAAS_PKCS11_PIN"),
        "{log}"
    );
    let log = hsm.start_fails(Some("not-the-pin"));
    assert!(log.contains("refuses the user PIN"), "{log}");
    assert!(!log.contains("not-the-pin"), "{log}");

    hsm.write_config("pin_file = \"missing-pin\"\n");
    let log = hsm.start_fails(None);
    assert!(log.contains("line 7: pkcs11.pin_file"), "{log}");

    std::fs::write(hsm.root().join("pin"), PIN).unwrap();
    std::fs::write(
        hsm.root().join("config/eaas.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\n[pkcs11]\nmodule = \"{}\"\ntoken_label = \"nope\"\n\
             pin_file = \"pin\"\n",
            module()
        ),
    )
    .unwrap();
    let log = hsm.start_fails(None);
    assert!(
        log.contains("no initialised token labelled \"nope\"") && log.contains("\"dropzone\""),
        "{log}"
    );
    std::fs::write(
        hsm.root().join("config/eaas.toml"),
        "listen = \"127.0.0.1:0\"\n[pkcs11]\nmodule = \"/nonexistent/lib.so\"\n\
         token_label = \"dropzone\"\npin_file = \"pin\"\n",
    )
    .unwrap();
    let log = hsm.start_fails(None);
    assert!(log.contains("line 3: pkcs11.module"), "{log}");

    // And the right settings start.
    hsm.write_config("pin_file = \"pin\"\n");
    let eaas = hsm.start(None).unwrap_or_else(|(status, log)| {
        panic!("the service exited ({status})\n--- log ---\n{log}")
    });
    assert!(eaas.log().contains("key service ready"));
}
