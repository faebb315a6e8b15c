//! Reading Vault's replies: pure functions of the status and the body, so
//! unit tests exercise them without a server.
//!
//! A failure is one short line: the URL, the HTTP status and Vault's
//! `errors` array (Vault never puts key material there). Successful replies
//! are read into typed structs; the ones that carry secrets (a plaintext, a
//! token) hold them in zeroized strings and are never quoted.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::kms::KmsError;
use crate::kms::http::excerpt;

/// Whether a failed reply means the token was refused (HTTP 403): the
/// caller logs in again once and retries.
pub(crate) fn is_forbidden(status: u16) -> bool {
    status == 403
}

/// Whether `status` is a success.
pub(crate) fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// The error of a failed reply. Vault down for maintenance (5xx, sealed:
/// 503), rate limited (429) or not yet consistent (412) is
/// [`KmsError::Unavailable`]; any other refusal (400 bad ciphertext or
/// context, 403 permission denied, 404 no such key or mount) is
/// [`KmsError::Refused`].
pub(crate) fn failure(url: &str, status: u16, body: &[u8]) -> KmsError {
    let text = format!("{url} answered HTTP {status}: {}", errors(body));
    if status == 412 || status == 429 || status >= 500 {
        KmsError::Unavailable(text)
    } else {
        KmsError::Refused(text)
    }
}

/// Vault's `errors` array joined with "; ", or an excerpt of a body that
/// is not one (a proxy's error page).
pub(crate) fn errors(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if e.errors.is_empty() => "(no error text)".to_owned(),
        Ok(e) => excerpt(e.errors.join("; ").as_bytes()),
        Err(_) => excerpt(body),
    }
}

/// The `data` object of a successful reply, as `T`. The body is quoted
/// only when `T` carries no secret (`quote`).
pub(crate) fn data<T: DeserializeOwned>(
    url: &str,
    body: &[u8],
    quote: bool,
) -> Result<T, KmsError> {
    #[derive(Deserialize)]
    struct Data<T> {
        data: T,
    }
    serde_json::from_slice::<Data<T>>(body)
        .map(|d| d.data)
        .map_err(|e| unexpected(url, body, quote, &e))
}

/// The `auth` object of a login or renewal reply (never quoted: it holds
/// the token).
pub(crate) fn auth(url: &str, body: &[u8]) -> Result<Auth, KmsError> {
    #[derive(Deserialize)]
    struct Reply {
        auth: Auth,
    }
    serde_json::from_slice::<Reply>(body)
        .map(|r| r.auth)
        .map_err(|e| unexpected(url, body, false, &e))
}

fn unexpected(url: &str, body: &[u8], quote: bool, e: &serde_json::Error) -> KmsError {
    let shown = if quote {
        excerpt(body)
    } else {
        "(not shown)".to_owned()
    };
    // The parse error's line and column say where, not what: safe to show.
    KmsError::Refused(format!(
        "{url} answered with a reply this client does not understand ({}: line {} column {}): {shown}",
        classify(e),
        e.line(),
        e.column()
    ))
}

fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "missing or mistyped field",
        serde_json::error::Category::Eof => "truncated",
    }
}

/// `data` of `GET MOUNT/keys/NAME`: what this client checks of a key.
#[derive(Debug, Deserialize)]
pub(crate) struct KeyInfo {
    /// Whether each operation needs a context from which the key is
    /// derived (what binds a wrapped key to its user).
    pub(crate) derived: bool,
    /// The key type, e.g. `aes256-gcm96`.
    #[serde(rename = "type")]
    pub(crate) key_type: String,
    /// The newest version.
    pub(crate) latest_version: u64,
    /// Versions below this can no longer decrypt.
    #[serde(default)]
    pub(crate) min_decryption_version: u64,
    /// Whether the key can encrypt at all (signing keys cannot).
    #[serde(default)]
    pub(crate) supports_encryption: bool,
}

/// `data` of `encrypt` and `rewrap`.
#[derive(Debug, Deserialize)]
pub(crate) struct Ciphertext {
    /// `vault:vN:<base64>`.
    pub(crate) ciphertext: String,
}

/// `data` of `decrypt`: the base64 of the data key.
#[derive(Deserialize)]
pub(crate) struct Plaintext {
    /// Base64 of the key.
    pub(crate) plaintext: Zeroizing<String>,
}

/// `auth` of a login or a token renewal.
#[derive(Deserialize)]
pub(crate) struct Auth {
    /// The token (absent from a renewal reply of some versions; the
    /// renewed token is the one sent).
    #[serde(default)]
    pub(crate) client_token: Option<Zeroizing<String>>,
    /// Seconds the token is valid for; 0: no expiry (a root token).
    #[serde(default)]
    pub(crate) lease_duration: u64,
    /// Whether the token may be renewed.
    #[serde(default)]
    pub(crate) renewable: bool,
}

/// The key version a Transit ciphertext names: `N` of `vault:vN:<base64>`,
/// if `ciphertext` has that shape (1-9 digits, then base64).
pub(crate) fn ciphertext_version(ciphertext: &[u8]) -> Option<&str> {
    let rest = ciphertext.strip_prefix(b"vault:v")?;
    let colon = rest.iter().position(|&b| b == b':')?;
    let (digits, body) = (&rest[..colon], &rest[colon + 1..]);
    let digits_ok = (1..=9).contains(&digits.len())
        && digits.iter().all(u8::is_ascii_digit)
        && digits[0] != b'0';
    let body_ok = !body.is_empty()
        && body
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if digits_ok && body_ok {
        std::str::from_utf8(digits).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_show_status_and_vaults_errors() {
        let url = "http://v/v1/transit/decrypt/dz";
        let e = failure(
            url,
            400,
            br#"{"errors":["cipher: message authentication failed"]}"#,
        );
        assert!(
            matches!(&e, KmsError::Refused(m) if m == "http://v/v1/transit/decrypt/dz answered HTTP 400: cipher: message authentication failed"),
            "{e}"
        );
        let e = failure(url, 503, br#"{"errors":["Vault is sealed"]}"#);
        assert!(
            matches!(&e, KmsError::Unavailable(m) if m.contains("HTTP 503: Vault is sealed")),
            "{e}"
        );
        for status in [412, 429, 500, 502] {
            assert!(
                matches!(failure(url, status, b""), KmsError::Unavailable(_)),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 405] {
            assert!(
                matches!(failure(url, status, b"{}"), KmsError::Refused(_)),
                "{status}"
            );
        }
        assert_eq!(errors(br#"{"errors":["a","b"]}"#), "a; b");
        assert_eq!(errors(br#"{"errors":[]}"#), "(no error text)");
        assert_eq!(
            errors(b"<html>\n bad gateway</html>"),
            "<html> bad gateway</html>"
        );
        assert!(errors(&[b'x'; 5000]).len() < 300);
        assert!(is_forbidden(403) && !is_forbidden(400));
        assert!(is_success(200) && is_success(204) && !is_success(301));
    }

    #[test]
    fn replies_are_read_and_secret_ones_never_quoted() {
        let info: KeyInfo = data(
            "u",
            br#"{"data":{"derived":true,"type":"aes256-gcm96","latest_version":3,"min_decryption_version":2,"min_encryption_version":0,"supports_encryption":true,"keys":{}}}"#,
            true,
        )
        .unwrap();
        assert!(info.derived && info.supports_encryption);
        assert_eq!((info.latest_version, info.min_decryption_version), (3, 2));
        let secret = br#"{"data":{"plaintxt":"c2VjcmV0"}}"#;
        let Err(KmsError::Refused(m)) = data::<Plaintext>("u", secret, false) else {
            panic!("accepted");
        };
        assert!(
            m.contains("missing or mistyped field") && !m.contains("c2VjcmV0"),
            "{m}"
        );
        let Err(KmsError::Refused(m)) = data::<Ciphertext>("u", b"not json", true) else {
            panic!("accepted");
        };
        assert!(m.contains("not JSON") && m.contains("not json"), "{m}");
        let a = auth(
            "u",
            br#"{"auth":{"client_token":"s.abc","lease_duration":5,"renewable":true}}"#,
        )
        .unwrap();
        assert_eq!(a.client_token.as_deref().map(String::as_str), Some("s.abc"));
        assert_eq!((a.lease_duration, a.renewable), (5, true));
        let Err(KmsError::Refused(m)) = auth("u", br#"{"auth":null,"x":"s.secret"}"#) else {
            panic!("accepted");
        };
        assert!(!m.contains("s.secret"), "{m}");
    }

    #[test]
    fn ciphertext_versions() {
        assert_eq!(ciphertext_version(b"vault:v1:abc+/="), Some("1"));
        assert_eq!(
            ciphertext_version(b"vault:v123456789:QUJD"),
            Some("123456789")
        );
        for bad in [
            &b"vault:v1:"[..],
            b"vault:v:abc",
            b"vault:v01:abc",
            b"vault:v1234567890:abc",
            b"vault:vx:abc",
            b"vault:v1:ab c",
            b"vault:v1",
            b"vaulT:v1:abc",
            b"",
        ] {
            assert_eq!(
                ciphertext_version(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
