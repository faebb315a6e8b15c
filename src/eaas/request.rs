//! Request bodies of the wire API, parsed from JSON bytes into typed
//! requests (pure functions; no I/O).
//!
//! Unknown fields are ignored, as the original did. Errors say which field
//! is missing or malformed; they never echo a plaintext or ciphertext.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use zeroize::Zeroizing;

use super::secret::{InvalidSecret, KeyId, SecretPath, SecretVersion};

/// A request body that cannot be used; the message goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

impl From<InvalidSecret> for BadRequest {
    fn from(e: InvalidSecret) -> Self {
        BadRequest(e.to_string())
    }
}

/// `POST /gen/key/rsa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRequest {
    /// The key to create.
    pub key: KeyId,
}

/// `POST /key/encrypt/rsa`.
pub struct EncryptRequest {
    /// The key to encrypt under.
    pub key: KeyId,
    /// The text whose UTF-8 bytes are encrypted.
    pub plaintext: Zeroizing<String>,
}

/// `POST /key/decrypt/rsa`.
#[derive(Debug)]
pub struct DecryptRequest {
    /// The key to decrypt under.
    pub key: KeyId,
    /// The ciphertext, hex-decoded.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("key", &self.key)
            .field("plaintext_len", &self.plaintext.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object with secret_path and secret_version")]
struct RawGen {
    secret_path: String,
    secret_version: RawVersion,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object with secret_path, secret_version and plaintext")]
struct RawEncrypt {
    secret_path: String,
    secret_version: RawVersion,
    plaintext: String,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object with secret_path, secret_version and ciphertext")]
struct RawDecrypt {
    secret_path: String,
    secret_version: RawVersion,
    ciphertext: String,
}

/// `secret_version` as sent: a string or a non-negative integer.
enum RawVersion {
    Text(String),
    Number(u64),
}

impl<'de> Deserialize<'de> for RawVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("secret_version as a decimal string or a non-negative integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawVersion, E> {
                Ok(RawVersion::Text(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawVersion, E> {
                Ok(RawVersion::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawVersion, E> {
                u64::try_from(v)
                    .map(RawVersion::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

fn key_id(path: &str, version: RawVersion) -> Result<KeyId, BadRequest> {
    Ok(KeyId {
        path: SecretPath::parse(path)?,
        version: match version {
            RawVersion::Text(s) => SecretVersion::parse(&s)?,
            RawVersion::Number(n) => SecretVersion::from_number(n)?,
        },
    })
}

fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadRequest> {
    // Derived structs also accept JSON arrays (fields in order); the API
    // takes only objects.
    if body.trim_ascii_start().first() != Some(&b'{')
        && serde_json::from_slice::<de::IgnoredAny>(body).is_ok()
    {
        return Err(BadRequest("request body must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            BadRequest(format!("bad request: {e}"))
        } else {
            BadRequest(format!("request body is not valid JSON: {e}"))
        }
    })
}

/// Parses a `/gen/key/rsa` body.
pub fn parse_gen(body: &[u8]) -> Result<GenRequest, BadRequest> {
    let raw: RawGen = from_json(body)?;
    Ok(GenRequest {
        key: key_id(&raw.secret_path, raw.secret_version)?,
    })
}

/// Parses a `/key/encrypt/rsa` body.
pub fn parse_encrypt(body: &[u8]) -> Result<EncryptRequest, BadRequest> {
    let raw: RawEncrypt = from_json(body)?;
    // Moved, not copied, into the zeroizing wrapper.
    let plaintext = Zeroizing::new(raw.plaintext);
    Ok(EncryptRequest {
        key: key_id(&raw.secret_path, raw.secret_version)?,
        plaintext,
    })
}

/// Parses a `/key/decrypt/rsa` body.
pub fn parse_decrypt(body: &[u8]) -> Result<DecryptRequest, BadRequest> {
    let raw: RawDecrypt = from_json(body)?;
    let key = key_id(&raw.secret_path, raw.secret_version)?;
    let ciphertext = hex::decode(raw.ciphertext.trim())
        .map_err(|_| BadRequest("ciphertext is not a hex string".into()))?;
    if ciphertext.is_empty() {
        return Err(BadRequest("ciphertext is empty".into()));
    }
    Ok(DecryptRequest { key, ciphertext })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: fmt::Debug>(r: Result<T, BadRequest>) -> String {
        r.unwrap_err().0
    }

    #[test]
    fn version_may_be_a_string_or_a_number() {
        let a = parse_gen(br#"{"secret_path": "dropzone/rsa", "secret_version": "1"}"#).unwrap();
        let b = parse_gen(br#"{"secret_path": "dropzone/rsa", "secret_version": 1}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.key.to_string(), "dropzone/rsa v1");
        // Unknown fields are ignored, as by the original.
        let c = parse_gen(br#"{"secret_path":"dropzone/rsa","secret_version":1,"x":[1]}"#).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn bad_versions_are_refused() {
        for v in [
            r#""01""#,
            "-1",
            "1.5",
            "true",
            "null",
            r#""""#,
            "1000000000",
            "[1]",
        ] {
            let body = format!(r#"{{"secret_path": "p", "secret_version": {v}}}"#);
            let e = err(parse_gen(body.as_bytes()));
            assert!(e.contains("secret_version"), "{v}: {e}");
        }
    }

    #[test]
    fn missing_fields_and_bad_json_are_named() {
        let e = err(parse_gen(br#"{"secret_version": "1"}"#));
        assert!(e.contains("missing field `secret_path`"), "{e}");
        let e = err(parse_encrypt(
            br#"{"secret_path": "p", "secret_version": "1"}"#,
        ));
        assert!(e.contains("missing field `plaintext`"), "{e}");
        let e = err(parse_decrypt(
            br#"{"secret_path": "p", "secret_version": "1"}"#,
        ));
        assert!(e.contains("missing field `ciphertext`"), "{e}");
        let e = err(parse_gen(b"{not json"));
        assert!(e.contains("not valid JSON"), "{e}");
        let e = err(parse_gen(b""));
        assert!(e.contains("not valid JSON"), "{e}");
        let e = err(parse_gen(br#"["p", "1"]"#));
        assert!(e.contains("must be a JSON object"), "{e}");
        let e = err(parse_gen(b"5"));
        assert!(e.contains("must be a JSON object"), "{e}");
        let e = err(parse_gen(br#"{"secret_path": 5, "secret_version": "1"}"#));
        assert!(e.contains("bad request"), "{e}");
    }

    #[test]
    fn secret_paths_are_validated() {
        for p in ["../etc", "/abs", "a//b", ".passphrase", ""] {
            let body = format!(r#"{{"secret_path": "{p}", "secret_version": "1"}}"#);
            let e = err(parse_gen(body.as_bytes()));
            assert!(e.contains("invalid secret_path"), "{p}: {e}");
        }
    }

    #[test]
    fn encrypt_and_decrypt_bodies() {
        let r = parse_encrypt(
            br#"{"secret_path": "p", "secret_version": 2, "plaintext": "caf\u00e9"}"#,
        )
        .unwrap();
        assert_eq!(r.plaintext.as_bytes(), "café".as_bytes());
        assert!(!format!("{r:?}").contains("caf"));
        let r =
            parse_decrypt(br#"{"secret_path": "p", "secret_version": "2", "ciphertext": "00ff"}"#)
                .unwrap();
        assert_eq!(r.ciphertext, [0x00, 0xff]);
        for c in [r#""0g""#, r#""abc""#, r#""""#] {
            let body =
                format!(r#"{{"secret_path": "p", "secret_version": "1", "ciphertext": {c}}}"#);
            let e = err(parse_decrypt(body.as_bytes()));
            assert!(e.contains("ciphertext"), "{c}: {e}");
        }
    }
}
