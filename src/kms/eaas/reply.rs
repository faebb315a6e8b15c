//! Reading the key service's replies: pure functions of the operation, the
//! HTTP status and the body, so that unit tests and the `eaas_reply` fuzz
//! target exercise them without a server.
//!
//! Every failure is a [`KmsError`] whose message is one short line: the
//! URL, the HTTP status and at most an excerpt of the body; replies to
//! decrypt requests are never quoted, since they may carry a data key.

use reqwest::StatusCode;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{EXCERPT_CHARS, MAX_WRAPPED_LEN, excerpt};
use crate::kms::KmsError;

/// Largest reply read: an RSA-16384 ciphertext is 4 KiB of hex; anything
/// much bigger is not a reply of this API.
pub const MAX_REPLY_LEN: u64 = 64 * 1024;

/// The three operations of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `POST /gen/key/rsa`
    Generate,
    /// `POST /key/encrypt/rsa`
    Encrypt,
    /// `POST /key/decrypt/rsa`
    Decrypt,
}

impl Op {
    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Op::Generate => "/gen/key/rsa",
            Op::Encrypt => "/key/encrypt/rsa",
            Op::Decrypt => "/key/decrypt/rsa",
        }
    }

    /// Whether a successful reply carries key material and must never be
    /// quoted.
    fn secret_reply(self) -> bool {
        self == Op::Decrypt
    }

    /// The field a successful reply must have.
    fn field(self) -> &'static str {
        match self {
            Op::Generate => "Info",
            Op::Encrypt => "ciphertext",
            Op::Decrypt => "plaintext",
        }
    }
}

/// A successful reply as far as this client reads it. Unknown fields are
/// ignored, as the original's clients did.
#[derive(Deserialize)]
pub struct Reply {
    #[serde(rename = "Error")]
    error: Option<serde_json::Value>,
    #[serde(rename = "Info")]
    info: Option<serde_json::Value>,
    ciphertext: Option<serde_json::Value>,
    plaintext: Option<Zeroizing<String>>,
}

/// Checks the reply of `op` at `url`: a 2xx status, a JSON object of at
/// most [`MAX_REPLY_LEN`] bytes without an `Error` field and with the
/// operation's field.
pub fn parse(op: Op, url: &str, status: u16, body: &[u8]) -> Result<Reply, KmsError> {
    // reqwest never hands out a status outside 100-999; anything else is
    // treated as an answer that is not a reply.
    let status = StatusCode::from_u16(status)
        .map_err(|_| KmsError::Refused(format!("{url} answered with HTTP status {status}")))?;
    if !status.is_success() {
        let message = format!(
            "{url} answered HTTP {}: {}",
            status_text(status),
            excerpt(body)
        );
        return Err(if transient_status(status) {
            KmsError::Unavailable(message)
        } else {
            KmsError::Refused(message)
        });
    }
    if body.len() as u64 > MAX_REPLY_LEN {
        return Err(KmsError::Refused(format!(
            "{url} answered HTTP {} with more than {MAX_REPLY_LEN} bytes",
            status_text(status)
        )));
    }
    // Quotes the reply unless it may hold key material.
    let quote = || {
        if op.secret_reply() {
            format!("({} bytes, not shown)", body.len())
        } else {
            excerpt(body)
        }
    };
    let parsed: Reply = serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "a JSON object of the expected shape",
            _ => "JSON",
        };
        KmsError::Refused(format!(
            "{url} answered HTTP {} with a body that is not {what}: {}",
            status_text(status),
            quote()
        ))
    })?;
    if let Some(error) = &parsed.error {
        return Err(KmsError::Refused(format!(
            "{url} answered HTTP {} with an error: {}",
            status_text(status),
            excerpt(json_text(error).as_bytes())
        )));
    }
    let present = match op {
        Op::Generate => parsed.info.is_some(),
        Op::Encrypt => parsed.ciphertext.is_some(),
        Op::Decrypt => parsed.plaintext.is_some(),
    };
    if !present {
        return Err(KmsError::Refused(format!(
            "{url} answered HTTP {} without a {:?} field: {}",
            status_text(status),
            op.field(),
            quote()
        )));
    }
    Ok(parsed)
}

impl Reply {
    /// The `Info` text of a generate reply, cut to an excerpt (for the log).
    pub fn info(&self) -> String {
        let info = self.info.as_ref().map(json_text).unwrap_or_default();
        excerpt(info.as_bytes())
    }

    /// The wrapped key of an encrypt reply from `url`: the hex-decoded
    /// `ciphertext`, 1 to 8 KiB (the key file format's limit).
    pub fn wrapped_key(&self, url: &str) -> Result<Vec<u8>, KmsError> {
        let bad = |why: &str| {
            KmsError::Refused(format!("{url} answered with an unusable ciphertext: {why}"))
        };
        let Some(serde_json::Value::String(hex_text)) = &self.ciphertext else {
            return Err(bad("not a string"));
        };
        let wrapped = hex::decode(hex_text).map_err(|_| bad("not hex"))?;
        if wrapped.is_empty() || wrapped.len() > MAX_WRAPPED_LEN {
            return Err(bad(&format!("{} bytes", wrapped.len())));
        }
        Ok(wrapped)
    }

    /// The data key of a decrypt reply from `url`: `plaintext` as 64 hex
    /// characters. The message of a refusal does not show the text.
    pub fn data_key(&self, url: &str) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let mut key = Zeroizing::new([0u8; 32]);
        let plaintext = self.plaintext.as_deref().map_or("", String::as_str);
        if plaintext.len() != 64 || hex::decode_to_slice(plaintext, &mut key[..]).is_err() {
            return Err(KmsError::Refused(format!(
                "{url} answered with a plaintext that is not a data key \
                 (want 64 hex characters, got {} characters; not shown)",
                plaintext.chars().count()
            )));
        }
        Ok(key)
    }
}

/// Statuses that say "try again later" rather than "no".
fn transient_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// `500 Internal Server Error`
pub(super) fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// A JSON value as text: a string without its quotes, anything else as JSON.
fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Longest message [`parse`] and the [`Reply`] methods produce for a URL of
/// `url_len` bytes: the fixed text, the excerpt (up to 4 bytes a
/// character) and numbers. The fuzz target checks messages against it.
pub fn max_message_len(url_len: usize) -> usize {
    url_len + 200 + EXCERPT_CHARS * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://eaas:8443/key/decrypt/rsa";

    fn refused(r: Result<impl Sized, KmsError>) -> String {
        match r {
            Err(KmsError::Refused(m)) => m,
            Err(e) => panic!("not refused: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_status_outside_the_http_range_is_refused() {
        let m = refused(parse(Op::Encrypt, URL, 42, b"{}"));
        assert!(m.contains("status 42"), "{m}");
    }

    #[test]
    fn decrypt_replies_are_never_quoted() {
        let secret = "00112233445566778899aabbccddeeff";
        for body in [
            format!("{{\"plaintext\": \"{secret}\""),
            format!("{{\"plaintext\": [\"{secret}\"]}}"),
            format!("{{\"Info\": \"{secret}\"}}"),
        ] {
            let m = refused(parse(Op::Decrypt, URL, 200, body.as_bytes()));
            assert!(!m.contains(secret), "{m}");
        }
        let reply = parse(
            Op::Decrypt,
            URL,
            200,
            format!("{{\"plaintext\": \"{secret}\"}}").as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let m = refused(reply.data_key(URL));
        assert!(
            !m.contains(secret) && m.contains("got 32 characters"),
            "{m}"
        );
    }

    #[test]
    fn a_good_decrypt_reply_gives_the_key() {
        let hex_key = "ab".repeat(32);
        let reply = parse(
            Op::Decrypt,
            URL,
            200,
            format!("{{\"plaintext\":\"{hex_key}\"}}").as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            *reply.data_key(URL).unwrap_or_else(|e| panic!("{e}")),
            [0xab; 32]
        );
    }

    #[test]
    fn wrapped_keys_are_hex_of_a_bounded_length() {
        for (body, ok) in [
            (r#"{"ciphertext":"00ff"}"#, true),
            (r#"{"ciphertext":""}"#, false),
            (r#"{"ciphertext":"0"}"#, false),
            (r#"{"ciphertext":[1]}"#, false),
        ] {
            let reply =
                parse(Op::Encrypt, URL, 200, body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(reply.wrapped_key(URL).is_ok(), ok, "{body}");
        }
    }
}
