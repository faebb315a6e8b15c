//! KRLs and key lists made by `ssh-keygen`, and hostile ones made by hand.

use std::path::Path;
use std::process::Command;

use super::*;

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

/// A CA `ca`, a key `u` and its certificate `u-cert.pub` (serial 5, key id
/// `myid`) in a new directory.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ca", "u", "other"] {
        keygen(dir.path(), &["-q", "-t", "ed25519", "-N", "", "-f", name]);
    }
    keygen(
        dir.path(),
        &[
            "-q", "-s", "ca", "-I", "myid", "-n", "alice", "-z", "5", "u.pub",
        ],
    );
    dir
}

fn cert(dir: &Path, name: &str) -> Certificate {
    Certificate::read_file(&dir.join(name)).unwrap()
}

fn public(dir: &Path, name: &str) -> KeyData {
    PublicKey::read_openssh_file(dir.join(name))
        .unwrap()
        .key_data()
        .clone()
}

fn krl(dir: &Path, spec: &str, ca: bool) -> RevokedKeys {
    std::fs::write(dir.join("spec"), spec).unwrap();
    let mut args = vec!["-q", "-k", "-f", "krl"];
    if ca {
        args.extend(["-s", "ca.pub"]);
    }
    args.push("spec");
    let _ = std::fs::remove_file(dir.join("krl"));
    keygen(dir, &args);
    let bytes = std::fs::read(dir.join("krl")).unwrap();
    RevokedKeys::parse(&bytes, &dir.join("krl")).unwrap()
}

#[test]
fn revokes_by_serial_range_and_bitmap() {
    let dir = setup();
    let c = cert(dir.path(), "u-cert.pub");
    let list = krl(dir.path(), "serial: 5\nserial: 10-20\n", true);
    assert_eq!(list.certificate_revoked(&c), Some(Revocation::Serial));
    let list = krl(dir.path(), "serial: 6\nserial: 10-20\n", true);
    assert_eq!(list.certificate_revoked(&c), None);
    // Scattered serials: ssh-keygen writes a bitmap (and a range); every
    // serial must read back exactly as written.
    let revoked: Vec<u64> = vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 40, 42, 44, 46, 48, 300];
    let spec: String = revoked.iter().map(|s| format!("serial: {s}\n")).collect();
    let list = krl(dir.path(), &format!("{spec}serial: 1000-1100\n"), true);
    assert_eq!(list.certs.len(), 1);
    let section = &list.certs[0];
    assert!(
        !section.bitmaps.is_empty(),
        "expected a bitmap: {section:?}"
    );
    for serial in 0..1200 {
        let expected = revoked.contains(&serial) || (1000..=1100).contains(&serial);
        assert_eq!(section.serial_revoked(serial), expected, "serial {serial}");
    }
    assert!(!section.serial_revoked(u64::MAX));
}

#[test]
fn revokes_by_key_id_under_the_ca_or_any_ca() {
    let dir = setup();
    let c = cert(dir.path(), "u-cert.pub");
    let list = krl(dir.path(), "id: myid\n", true);
    assert_eq!(list.certificate_revoked(&c), Some(Revocation::KeyId));
    let list = krl(dir.path(), "id: someone-else\n", true);
    assert_eq!(list.certificate_revoked(&c), None);
    // An empty CA key: the key id is revoked under every CA (ssh-keygen
    // 9.2 cannot write it; newer ones and other tools may).
    let mut k = header();
    let mut section = Vec::new();
    put_string(&mut section, b"");
    put_string(&mut section, b"");
    section.push(CERT_KEY_ID);
    let mut ids = Vec::new();
    put_string(&mut ids, b"myid");
    put_string(&mut section, &ids);
    k.push(SECTION_CERTIFICATES);
    put_string(&mut k, &section);
    let list = RevokedKeys::parse(&k, Path::new("krl")).unwrap();
    assert!(list.certs[0].ca.is_none());
    assert_eq!(list.certificate_revoked(&c), Some(Revocation::KeyId));
    // Under another CA: not this certificate.
    std::fs::copy(dir.path().join("other.pub"), dir.path().join("ca.pub")).unwrap();
    let list = krl(dir.path(), "id: myid\nserial: 5\n", true);
    assert_eq!(list.certificate_revoked(&c), None);
}

#[test]
fn a_revoked_key_revokes_its_certificates_and_a_revoked_ca_its_own() {
    let dir = setup();
    let c = cert(dir.path(), "u-cert.pub");
    let _ = std::fs::remove_file(dir.path().join("krl"));
    keygen(dir.path(), &["-q", "-k", "-f", "krl", "u.pub"]);
    let list = RevokedKeys::parse(
        &std::fs::read(dir.path().join("krl")).unwrap(),
        Path::new("krl"),
    )
    .unwrap();
    assert!(list.key_revoked(&public(dir.path(), "u.pub")));
    assert!(!list.key_revoked(&public(dir.path(), "other.pub")));
    assert_eq!(list.certificate_revoked(&c), Some(Revocation::Key));
    // By hash: sha256 of the key, as `ssh-keygen -l` prints it.
    let fp =
        PublicKey::new(public(dir.path(), "u.pub"), "").fingerprint(russh::keys::HashAlg::Sha256);
    let list = krl(dir.path(), &format!("hash: {fp}\n"), false);
    assert_eq!(list.sha256.len(), 1);
    assert_eq!(list.certificate_revoked(&c), Some(Revocation::Key));
    // The CA key, as a plain key, revokes what it signed.
    let _ = std::fs::remove_file(dir.path().join("krl"));
    keygen(dir.path(), &["-q", "-k", "-f", "krl", "ca.pub"]);
    let list = RevokedKeys::parse(
        &std::fs::read(dir.path().join("krl")).unwrap(),
        Path::new("krl"),
    )
    .unwrap();
    assert_eq!(list.certificate_revoked(&c), Some(Revocation::CaKey));
}

#[test]
fn sha1_sections_are_read() {
    let dir = setup();
    let blob = PublicKey::read_openssh_file(dir.path().join("u.pub"))
        .unwrap()
        .to_bytes()
        .unwrap();
    let mut krl = header();
    let mut body = Vec::new();
    put_string(&mut body, Sha1::digest(&blob).as_slice());
    krl.push(SECTION_FINGERPRINT_SHA1);
    put_string(&mut krl, &body);
    let list = RevokedKeys::parse(&krl, Path::new("krl")).unwrap();
    assert!(list.key_revoked(&public(dir.path(), "u.pub")));
    assert!(!list.key_revoked(&public(dir.path(), "other.pub")));
}

#[test]
fn key_lists() {
    let dir = setup();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let text = format!("# revoked\n\n{}", read("other.pub"));
    let list = RevokedKeys::parse(text.as_bytes(), Path::new("list")).unwrap();
    assert!(list.key_revoked(&public(dir.path(), "other.pub")));
    assert_eq!(
        list.certificate_revoked(&cert(dir.path(), "u-cert.pub")),
        None
    );
    // A certificate line revokes its key (and so every certificate of it).
    let list = RevokedKeys::parse(read("u-cert.pub").as_bytes(), Path::new("list")).unwrap();
    assert!(list.key_revoked(&public(dir.path(), "u.pub")));
    assert_eq!(
        list.certificate_revoked(&cert(dir.path(), "u-cert.pub")),
        Some(Revocation::Key)
    );
    let text = format!("{}garbage line\n", read("other.pub"));
    let e = RevokedKeys::parse(text.as_bytes(), Path::new("list")).unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
    let e = RevokedKeys::parse(&[0xff, 0xfe, b'\n'], Path::new("list")).unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    // An empty list revokes nothing.
    let list = RevokedKeys::parse(b"", Path::new("list")).unwrap();
    assert!(!list.key_revoked(&public(dir.path(), "u.pub")));
}

fn header() -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(FORMAT_VERSION.to_be_bytes());
    out.extend([0u8; 24]);
    put_string(&mut out, b"");
    put_string(&mut out, b"comment");
    out
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u32).to_be_bytes());
    out.extend(s);
}

#[test]
fn every_truncation_of_a_real_krl_is_an_error_never_a_panic() {
    let dir = setup();
    krl(
        dir.path(),
        "serial: 5\nserial: 7\nserial: 10-20\nid: x\n",
        true,
    );
    let bytes = std::fs::read(dir.path().join("krl")).unwrap();
    assert!(RevokedKeys::parse(&bytes, Path::new("krl")).is_ok());
    for len in MAGIC.len()..bytes.len() {
        // A cut at a section boundary is a shorter valid KRL; anything else
        // must be refused with an offset.
        if let Err(e) = RevokedKeys::parse(&bytes[..len], Path::new("krl")) {
            assert!(e.to_string().contains("invalid KRL at byte"), "{e}");
        }
    }
    assert!(RevokedKeys::parse(&bytes[..bytes.len() - 1], Path::new("krl")).is_err());
}

#[test]
fn hostile_krls_are_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut k = header();
                k[11] = 2;
                k
            },
            "format version 2",
        ),
        (
            {
                let mut k = header();
                k.push(9);
                put_string(&mut k, b"");
                k
            },
            "unknown section type 9",
        ),
        (
            {
                let mut k = header();
                k.push(SECTION_EXPLICIT_KEY);
                put_string(&mut k, b"");
                k
            },
            "empty",
        ),
        (
            {
                let mut k = header();
                k.push(SECTION_FINGERPRINT_SHA256);
                let mut b = Vec::new();
                put_string(&mut b, &[1; 20]);
                put_string(&mut k, &b);
                k
            },
            "20 bytes",
        ),
        (
            {
                let mut k = header();
                let mut b = Vec::new();
                put_string(&mut b, b"x@example.org");
                b.push(1);
                put_string(&mut b, b"");
                k.push(SECTION_EXTENSION);
                put_string(&mut k, &b);
                k
            },
            "critical extension",
        ),
        (
            {
                let mut k = header();
                let mut b = Vec::new();
                put_string(&mut b, b"");
                put_string(&mut b, b"");
                b.push(CERT_SERIAL_RANGE);
                let mut r = Vec::new();
                r.extend(9u64.to_be_bytes());
                r.extend(3u64.to_be_bytes());
                put_string(&mut b, &r);
                k.push(SECTION_CERTIFICATES);
                put_string(&mut k, &b);
                k
            },
            "reversed",
        ),
        (
            {
                let mut k = header();
                let mut b = Vec::new();
                put_string(&mut b, b"not a key");
                put_string(&mut b, b"");
                k.push(SECTION_CERTIFICATES);
                put_string(&mut k, &b);
                k
            },
            "CA key",
        ),
        (
            {
                // A length far past the end of the file.
                let mut k = header();
                k.push(SECTION_EXPLICIT_KEY);
                k.extend(u32::MAX.to_be_bytes());
                k
            },
            "truncated",
        ),
        (
            {
                let mut k = header();
                k.push(SECTION_SIGNATURE);
                put_string(&mut k, b"k");
                put_string(&mut k, b"s");
                k.push(SECTION_EXPLICIT_KEY);
                put_string(&mut k, b"");
                k
            },
            "after a signature",
        ),
    ];
    for (bytes, expected) in cases {
        let e = RevokedKeys::parse(&bytes, Path::new("krl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "expected {expected:?} in {e}");
    }
    // A signature section at the end is read past.
    let mut k = header();
    k.push(SECTION_SIGNATURE);
    put_string(&mut k, b"k");
    put_string(&mut k, b"s");
    assert!(RevokedKeys::parse(&k, Path::new("krl")).is_ok());
}

#[test]
fn the_file_is_reread_when_it_changes_and_fails_closed_when_broken() {
    let dir = setup();
    let path = dir.path().join("revoked");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert!(
        RevokedKeysFile::open(&path).is_err(),
        "a missing file is an error at start"
    );
    std::fs::write(&path, read("other.pub")).unwrap();
    let file = RevokedKeysFile::open(&path).unwrap();
    let u = public(dir.path(), "u.pub");
    assert!(!file.current().unwrap().key_revoked(&u));
    // Replaced by rename (a new inode), as editors and config tools do.
    let tmp = dir.path().join("revoked.new");
    std::fs::write(&tmp, format!("{}{}", read("other.pub"), read("u.pub"))).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(file.current().unwrap().key_revoked(&u));
    // Rewritten in place with garbage: fail closed.
    std::fs::write(&path, "garbage\n").unwrap();
    let e = file.current().unwrap_err();
    assert!(e.contains("line 1"), "{e}");
    assert!(file.current().is_err());
    // Removed: still closed.
    std::fs::remove_file(&path).unwrap();
    assert!(file.current().is_err());
    // Back: used again.
    std::fs::write(&path, read("other.pub")).unwrap();
    assert!(!file.current().unwrap().key_revoked(&u));
}
