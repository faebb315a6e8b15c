//! Certificates made by `ssh-keygen -s`, checked against each rule.

use std::path::Path;
use std::process::Command;

use super::*;

const NOW: u64 = 1_800_000_000;

fn keygen(dir: &Path, args: &[&str]) {
    let out = Command::new("ssh-keygen")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("ssh-keygen is required");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Fixture {
    dir: tempfile::TempDir,
    cas: UserCas,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca", "other_ca", "u"] {
            keygen(dir.path(), &["-q", "-t", "ed25519", "-N", "", "-f", name]);
        }
        let text = std::fs::read_to_string(dir.path().join("ca.pub")).unwrap();
        let cas = UserCas::parse(&format!("# the CA\n\n{text}")).unwrap();
        Fixture { dir, cas }
    }

    /// Signs `u.pub` with `ca` and the extra `ssh-keygen` options.
    fn cert(&self, ca: &str, extra: &[&str]) -> Certificate {
        let _ = std::fs::remove_file(self.dir.path().join("u-cert.pub"));
        let mut args = vec!["-q", "-s", ca, "-I", "id-1", "-z", "7"];
        args.extend(extra);
        args.push("u.pub");
        keygen(self.dir.path(), &args);
        Certificate::read_file(&self.dir.path().join("u-cert.pub")).unwrap()
    }
}

fn expected<'a>(user: &'a str, principals: &'a [String]) -> Expected<'a> {
    Expected {
        user,
        principals,
        client: "192.0.2.10".parse().unwrap(),
        now: NOW,
    }
}

/// A window around NOW, as `ssh-keygen -V` takes it.
const WINDOW: &str = "20260101:20300101";

#[test]
fn a_valid_certificate_names_the_user() {
    let f = Fixture::new();
    let cert = f.cert("ca", &["-n", "alice,ops", "-V", WINDOW]);
    assert_eq!(check(&cert, &f.cas, &expected("alice", &[])), Ok(()));
    assert_eq!(
        check(&cert, &f.cas, &expected("bob", &[])),
        Err(CertRefusal::WrongPrincipal)
    );
    // A users-file user's principals replace the name.
    let ops = vec!["ops".to_owned()];
    assert_eq!(check(&cert, &f.cas, &expected("bob", &ops)), Ok(()));
    let other = vec!["dba".to_owned()];
    assert_eq!(
        check(&cert, &f.cas, &expected("alice", &other)),
        Err(CertRefusal::WrongPrincipal)
    );
    let id = identity(&cert);
    assert_eq!(id.key_id, "id-1");
    assert_eq!(id.serial, 7);
    assert!(id.ca.starts_with("SHA256:"), "{}", id.ca);
}

#[test]
fn no_principals_matches_nobody() {
    let f = Fixture::new();
    let cert = f.cert("ca", &["-V", WINDOW]);
    assert!(cert.valid_principals().is_empty());
    assert_eq!(
        check(&cert, &f.cas, &expected("alice", &[])),
        Err(CertRefusal::NoPrincipals)
    );
}

#[test]
fn the_window_is_enforced() {
    let f = Fixture::new();
    let cert = f.cert("ca", &["-n", "alice", "-V", "20200101:20250101"]);
    assert_eq!(
        check(&cert, &f.cas, &expected("alice", &[])),
        Err(CertRefusal::Expired)
    );
    let cert = f.cert("ca", &["-n", "alice", "-V", "20400101:20500101"]);
    assert_eq!(
        check(&cert, &f.cas, &expected("alice", &[])),
        Err(CertRefusal::NotYetValid)
    );
    // No -V: valid forever.
    let cert = f.cert("ca", &["-n", "alice"]);
    assert_eq!(check(&cert, &f.cas, &expected("alice", &[])), Ok(()));
}

#[test]
fn only_trusted_cas_and_user_certificates() {
    let f = Fixture::new();
    let cert = f.cert("other_ca", &["-n", "alice"]);
    assert_eq!(
        check(&cert, &f.cas, &expected("alice", &[])),
        Err(CertRefusal::UntrustedCa)
    );
    let cert = f.cert("ca", &["-h", "-n", "alice"]);
    assert_eq!(
        check(&cert, &f.cas, &expected("alice", &[])),
        Err(CertRefusal::NotUserCertificate)
    );
}

#[test]
fn critical_options() {
    let f = Fixture::new();
    let at = |list: &str| {
        let cert = f.cert(
            "ca",
            &["-n", "alice", "-O", &format!("source-address={list}")],
        );
        check(&cert, &f.cas, &expected("alice", &[]))
    };
    assert_eq!(at("192.0.2.0/24"), Ok(()));
    assert_eq!(at("10.0.0.1,192.0.2.10"), Ok(()));
    assert_eq!(at("10.0.0.0/8"), Err(CertRefusal::SourceAddress));
    assert_eq!(at("2001:db8::/32"), Err(CertRefusal::SourceAddress));
    let cert = f.cert("ca", &["-n", "alice", "-O", "force-command=/bin/true"]);
    assert_eq!(
        check(&cert, &f.cas, &expected("alice", &[])),
        Err(CertRefusal::ForceCommand)
    );
    let cert = f.cert("ca", &["-n", "alice", "-O", "verify-required"]);
    assert_eq!(
        check(&cert, &f.cas, &expected("alice", &[])),
        Err(CertRefusal::UnsupportedOption("verify-required".into()))
    );
    // Extensions are not critical: no-pty and friends are fine.
    let cert = f.cert(
        "ca",
        &["-n", "alice", "-O", "no-pty", "-O", "no-port-forwarding"],
    );
    assert_eq!(check(&cert, &f.cas, &expected("alice", &[])), Ok(()));
}

#[test]
fn source_address_lists_are_strict() {
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    assert_eq!(source_address_allows("192.0.2.10", ip), Ok(true));
    assert_eq!(source_address_allows("192.0.2.0/24", ip), Ok(true));
    let mapped: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
    assert_eq!(source_address_allows("192.0.2.0/24", mapped), Ok(true));
    for bad in [
        "*",
        "!10.0.0.1",
        "host.example",
        "10.0.0.0/33",
        "",
        "10.0.0.1,",
        "10.0.0.0/-1",
    ] {
        assert_eq!(
            source_address_allows(bad, ip),
            Err(CertRefusal::BadSourceAddress),
            "{bad}"
        );
    }
}

#[test]
fn revocation_is_part_of_the_check_and_fails_closed() {
    let f = Fixture::new();
    let cert = f.cert("ca", &["-n", "alice"]);
    let revoked = f.dir.path().join("revoked");
    std::fs::write(&revoked, "").unwrap();
    let trust = KeyTrust::load(Some(&f.dir.path().join("ca.pub")), Some(&revoked)).unwrap();
    assert!(trust.certificates_enabled());
    let now = expected("alice", &[]);
    let now = Expected {
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        ..now
    };
    assert_eq!(trust.check_certificate(&cert, &now), Ok(()));
    std::fs::copy(f.dir.path().join("u.pub"), &revoked).unwrap();
    assert_eq!(
        trust.check_certificate(&cert, &now),
        Err(CertRefusal::Revoked(Revocation::Key))
    );
    assert_eq!(trust.key_revoked(cert.public_key()), Ok(true));
    std::fs::write(&revoked, "not a key\n").unwrap();
    assert!(matches!(
        trust.check_certificate(&cert, &now),
        Err(CertRefusal::RevocationUnavailable(_))
    ));
    assert!(trust.key_revoked(cert.public_key()).is_err());
    // Without a CA file, certificates are off but revocation still applies.
    let trust = KeyTrust::load(None, None).unwrap();
    assert_eq!(
        trust.check_certificate(&cert, &now),
        Err(CertRefusal::NotEnabled)
    );
    assert_eq!(trust.key_revoked(cert.public_key()), Ok(false));
}

#[test]
fn ca_files() {
    assert!(
        UserCas::parse("# nothing\n")
            .unwrap_err()
            .contains("no CA key")
    );
    let e = UserCas::parse("ssh-ed25519 AAAA-not-base64\n").unwrap_err();
    assert!(e.contains("line 1"), "{e}");
    let e = UserCas::load(Path::new("/nonexistent/ca.pub")).unwrap_err();
    assert!(
        e.contains("trusted_user_ca_keys") && e.contains("/nonexistent/ca.pub"),
        "{e}"
    );
}
