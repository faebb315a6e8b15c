//! What the client checks before it talks to Vault. Exchanges with a real
//! OpenBao are in `tests/it/vault.rs`.

use std::io::Write;

use super::*;

fn token_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("token");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

fn options(dir: &tempfile::TempDir) -> VaultOptions {
    let mut o = VaultOptions::new(
        "http://127.0.0.1:1".into(),
        "dropzone".into(),
        Credentials::TokenFile(token_file(dir, "s.token\n")),
    );
    o.retry_delays = Vec::new();
    o
}

fn misconfigured(r: Result<VaultKms, KmsError>) -> String {
    match r {
        Err(KmsError::Misconfigured(m)) => m,
        Err(e) => panic!("not Misconfigured: {e}"),
        Ok(k) => panic!("accepted: {k:?}"),
    }
}

#[test]
fn settings_are_checked_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let kms = VaultKms::new(options(&dir)).unwrap();
    assert_eq!(kms.backend(), "vault");
    assert_eq!(kms.address(), "http://127.0.0.1:1");
    assert_eq!(
        kms.current(),
        MasterKeyRef {
            secret_path: "dropzone".into(),
            secret_version: "latest".into()
        }
    );
    // The token is never shown.
    assert!(!format!("{kms:?}").contains("s.token"));

    for (change, want) in [
        (
            (|o: &mut VaultOptions| o.mount = "../sys".into()) as fn(&mut VaultOptions),
            "mount",
        ),
        (|o| o.mount = "/transit".into(), "mount"),
        (|o| o.key_name = "a/b".into(), "key name"),
        (|o| o.key_name = String::new(), "key name"),
        (|o| o.address = "ftp://vault".into(), "http"),
        (
            |o| o.address = "http://user:pw@vault:8200".into(),
            "credentials",
        ),
        (|o| o.ca_file = Some("/ca.pem".into()), "not https"),
        (|o| o.namespace = Some("a\nb".into()), "namespace"),
        (
            |o| o.credentials = Credentials::TokenFile("/nonexistent/token".into()),
            "token file",
        ),
    ] {
        let mut o = options(&dir);
        change(&mut o);
        let m = misconfigured(VaultKms::new(o));
        assert!(m.contains(want), "{want}: {m}");
        assert!(!m.contains("pw"), "{m}");
    }
    let mut o = options(&dir);
    o.mount = "team-a/transit".into();
    VaultKms::new(o).unwrap();
}

#[test]
fn credential_files_must_hold_one_printable_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [("", "empty"), ("\n", "empty"), ("a b\n", "printable")] {
        let mut o = options(&dir);
        o.credentials = Credentials::TokenFile(token_file(&dir, text));
        let m = misconfigured(VaultKms::new(o));
        assert!(m.contains(want), "{text:?}: {m}");
    }
    let mut o = options(&dir);
    o.credentials = Credentials::AppRole {
        mount: DEFAULT_APPROLE_MOUNT.into(),
        role_id_file: token_file(&dir, "role\n"),
        secret_id_file: dir.path().join("missing"),
    };
    let m = misconfigured(VaultKms::new(o));
    assert!(m.contains("secret id file"), "{m}");
}

#[test]
fn versions_and_wrapped_keys_are_checked_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let kms = VaultKms::new(options(&dir)).unwrap();
    let ctx = WrapContext::for_user(&crate::username::UserName::parse("alice").unwrap());
    let under = |v: &str| MasterKeyRef {
        secret_path: "dropzone".into(),
        secret_version: v.into(),
    };
    assert!(matches!(
        kms.wrap(&[0; 32], &under("latest"), &ctx),
        Err(KmsError::Unavailable(m)) if m.contains("not known")
    ));
    for v in ["0", "x", ""] {
        assert!(
            matches!(
                kms.wrap(&[0; 32], &under(v), &ctx),
                Err(KmsError::InvalidVersion(_))
            ),
            "{v}"
        );
    }
    let refused = |wrapped: &[u8], v: &str| match kms.unwrap(wrapped, &under(v), &ctx) {
        Err(KmsError::Refused(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(refused(b"vault:v2:QUJD", "1").contains("vault:v2"));
    assert!(refused(b"garbage", "1").contains("not a Vault Transit ciphertext"));
    let long = format!("vault:v1:{}", "A".repeat(5000));
    assert!(refused(long.as_bytes(), "1").contains("not a Vault Transit ciphertext"));
    // Nothing listens at port 1: a well-formed request is unavailable.
    assert!(matches!(
        kms.unwrap(b"vault:v1:QUJD", &under("1"), &ctx),
        Err(KmsError::Unavailable(_))
    ));
}
