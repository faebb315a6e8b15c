//! Feeds arbitrary replies to the EaaS client's reply parsing
//! (`dropzone::kms::eaas::reply`): the first byte picks the operation, the
//! next two the HTTP status, the rest is the body.
//!
//! Checked: no panic; every error message is one line of bounded length;
//! a decrypt reply is never quoted (the body's `plaintext`, which may be a
//! data key, never appears in a message); an accepted wrapped key or data
//! key is what the body's hex says.
#![no_main]

use dropzone::kms::KmsError;
use dropzone::kms::eaas::reply::{self, Op};
use libfuzzer_sys::fuzz_target;

const URL: &str = "http://eaas.test:8443/key/op";

fuzz_target!(|data: &[u8]| {
    let Some((&[which, hi, lo], body)) = data.split_first_chunk::<3>() else {
        return;
    };
    let op = match which % 3 {
        0 => Op::Generate,
        1 => Op::Encrypt,
        _ => Op::Decrypt,
    };
    // Mostly 200, so that the body parsing gets the time; any status else.
    let status = if which & 0x80 == 0 {
        200
    } else {
        u16::from_be_bytes([hi, lo])
    };
    let parsed = reply::parse(op, URL, status, body);
    let secret = secret_text(body);
    match parsed {
        Err(e) => check_message(&e, op, status, secret.as_deref()),
        Ok(r) => {
            assert!((200..300).contains(&status), "accepted HTTP {status}");
            let _ = r.info();
            match r.wrapped_key(URL) {
                Ok(wrapped) => {
                    assert!(!wrapped.is_empty() && wrapped.len() <= 8 * 1024);
                    let json: serde_json::Value =
                        serde_json::from_slice(body).expect("parsed before");
                    let hex_text = json["ciphertext"].as_str().expect("a string");
                    assert_eq!(hex::decode(hex_text).expect("hex"), wrapped);
                }
                Err(e) => check_message(&e, Op::Encrypt, status, None),
            }
            match r.data_key(URL) {
                Ok(key) => {
                    let text = secret.expect("a data key came from a plaintext string");
                    assert_eq!(hex::decode(text).expect("hex"), key.as_slice());
                }
                Err(e) => check_message(&e, Op::Decrypt, status, secret.as_deref()),
            }
        }
    }
});

/// The `plaintext` string of a JSON body if it looks like key material (at
/// least 16 hex digits, which no fixed part of a message contains) and the
/// body has no `Error` field (whose text is quoted by design).
fn secret_text(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    if json.get("Error").is_some_and(|e| !e.is_null()) {
        return None;
    }
    let text = json.get("plaintext")?.as_str()?;
    (text.len() >= 16 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.to_owned())
}

fn check_message(e: &KmsError, op: Op, status: u16, secret: Option<&str>) {
    let message = e.to_string();
    assert!(
        message.len() <= reply::max_message_len(URL.len()),
        "{} bytes: {message}",
        message.len()
    );
    assert!(
        !message.chars().any(char::is_control),
        "control character in {message:?}"
    );
    if op == Op::Decrypt && (200..300).contains(&status) {
        if let Some(secret) = secret {
            assert!(!message.contains(secret), "decrypt reply quoted: {message}");
        }
    }
}
