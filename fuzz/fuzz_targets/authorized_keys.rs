//! Parses arbitrary text as an `authorized_keys` file
//! (`dropzone::auth::authorized_keys`), and each line on its own.
//!
//! Checked: no panic; every line is either a key or a reason, and the
//! reason's message is one short line (it ends up in the server log and in
//! `dropzone user` output); a key that parses matches itself and survives a
//! round trip through its OpenSSH encoding; `permits` answers for any
//! address and time.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, UNIX_EPOCH};

use dropzone::auth::authorized_keys::{AuthorizedKey, parse_file};
use libfuzzer_sys::fuzz_target;

/// Generous bound on an error message: fixed text, an option or key type
/// echoed (at most 64 characters plus "..."), a decoder's reason.
const MAX_MESSAGE: usize = 600;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (keys, errors) = parse_file(&text);
    let counted = text
        .lines()
        .filter(|l| {
            let t = l.trim_start_matches([' ', '\t']);
            !t.trim_end().is_empty() && !t.starts_with('#')
        })
        .count();
    assert_eq!(keys.len() + errors.len(), counted, "a line was lost");
    for (line, e) in &errors {
        assert!(*line >= 1);
        let message = e.to_string();
        assert!(
            message.len() <= MAX_MESSAGE,
            "{} bytes: {message}",
            message.len()
        );
        assert!(
            !message.contains(['\n', '\r']),
            "multi-line message: {message:?}"
        );
    }
    // An address and a time from the input's first bytes.
    let ip = match data.first_chunk::<16>() {
        Some(b) if b[0] & 1 == 0 => IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4])),
        Some(b) => IpAddr::V6(Ipv6Addr::from(*b)),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let secs = data
        .first_chunk::<8>()
        .map_or(0, |b| u64::from_le_bytes(*b) % (1 << 40));
    let now = UNIX_EPOCH + Duration::from_secs(secs);
    for key in &keys {
        assert!(key.matches(&key.key));
        let _ = key.permits(Some(ip), now);
        let _ = key.permits(None, now);
        let line = key.key.to_openssh().expect("a parsed key encodes");
        let again = AuthorizedKey::parse(&line)
            .unwrap_or_else(|e| panic!("re-parsing {line:?} failed: {e}"));
        assert!(again.matches(&key.key), "round trip changed the key");
    }
});
